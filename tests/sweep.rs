//! `racetrack sweep` as a user runs it: grid order, determinism across
//! thread counts, exit-2 errors, the per-seed values behind each interval,
//! CSV and the SVG plot.

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

/// Small enough for a debug build: 200 lookups per run.
const SMALL: &[&str] = &["--set", "clients.lookups=200", "--seeds", "2"];

fn racetrack(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_racetrack")).args(args).output().expect("run racetrack")
}

fn sweep(args: &[&str]) -> Output {
    let all: Vec<&str> = ["sweep"].iter().chain(args).chain(SMALL).copied().collect();
    racetrack(&all)
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

fn records(o: &Output) -> Vec<Value> {
    assert!(o.status.success(), "{}", stderr(o));
    stdout(o).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("racetrack-sweep-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn grid_is_the_cartesian_product_in_order() {
    let o = sweep(&[
        "dns",
        "--over",
        "clients.rate=100..300:200",
        "--over",
        "service.endpoints=1,3",
        "--kernel",
        "4.14,6.6",
        "--format",
        "json",
    ]);
    let recs = records(&o);
    let (points, summary) = recs.split_at(recs.len() - 1);
    assert_eq!(points.len(), 2 * 2 * 2);
    let order: Vec<(i64, i64, &str)> = points
        .iter()
        .map(|p| {
            assert_eq!(p["type"], "point");
            let d = &p["data"];
            (
                d["over"]["clients.rate"].as_i64().unwrap(),
                d["over"]["service.endpoints"].as_i64().unwrap(),
                d["kernel"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        order,
        [
            (100, 1, "4.14"),
            (100, 1, "6.6"),
            (100, 3, "4.14"),
            (100, 3, "6.6"),
            (300, 1, "4.14"),
            (300, 1, "6.6"),
            (300, 3, "4.14"),
            (300, 3, "6.6"),
        ]
    );
    let s = &summary[0];
    assert_eq!(s["type"], "sweep");
    assert_eq!((s["data"]["points"].as_u64(), s["data"]["runs"].as_u64()), (Some(8), Some(16)));
    assert_eq!(s["data"]["seeds"], serde_json::json!([1, 2]));
    assert_eq!(s["data"]["metrics"][0], "clients.retried_share", "dns plots the retried share first");
    // The estimate comes first on stderr.
    let err = stderr(&o);
    assert!(err.contains("8 points × 2 seeds = 16 runs, about "), "{err}");
}

#[test]
fn output_does_not_depend_on_threads() {
    let args = ["dns", "--over", "clients.pods=5,20,40", "--kernel", "4.14,4.19", "--format", "json"];
    let one = sweep(&[&args[..], &["--threads", "1"]].concat());
    let two = sweep(&[&args[..], &["--threads", "2"]].concat());
    let again = sweep(&[&args[..], &["--threads", "2"]].concat());
    assert!(one.status.success(), "{}", stderr(&one));
    assert_eq!(stdout(&one), stdout(&two));
    assert_eq!(stdout(&two), stdout(&again));
}

#[test]
fn each_interval_is_built_from_the_runs_of_its_seeds() {
    let o = sweep(&["dns", "--over", "clients.rate=100,400", "--kernel", "4.14", "--seed", "7", "--format", "json"]);
    let recs = records(&o);
    let p = &recs[1]["data"];
    assert_eq!(p["over"]["clients.rate"], 400);
    assert_eq!(p["seeds"], serde_json::json!([7, 8]));
    let m = &p["metrics"]["clients.retried_share"];
    let values: Vec<f64> = m["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    // Each value is what `run` reports for that seed.
    for (seed, v) in [7, 8].iter().zip(&values) {
        let r = racetrack(&[
            "run",
            "dns",
            "--kernel",
            "4.14",
            "--set",
            "clients.lookups=200",
            "--set",
            "clients.rate=400",
            "--seed",
            &seed.to_string(),
            "--format",
            "json",
        ]);
        let summary: Value = serde_json::from_str(stdout(&r).trim()).unwrap();
        let c = &summary["data"]["clients"];
        assert_eq!(*v, c["retried"].as_f64().unwrap() / c["requests"].as_f64().unwrap(), "seed {seed}");
    }
    assert!(values.iter().any(|&v| v > 0.0), "4.14 delays some lookups: {values:?}");
    assert!((m["mean"].as_f64().unwrap() - (values[0] + values[1]) / 2.0).abs() < 1e-12, "{m}");
    let (lo, hi, hw) = (m["low"].as_f64().unwrap(), m["high"].as_f64().unwrap(), m["half_width"].as_f64().unwrap());
    assert!(lo <= values[0].min(values[1]) && hi >= values[0].max(values[1]), "{m}");
    assert!((hi - lo - 2.0 * hw).abs() < 1e-12);
}

#[test]
fn one_seed_has_no_interval() {
    let o = racetrack(&[
        "sweep",
        "dns",
        "--over",
        "clients.rate=100",
        "--seeds",
        "1",
        "--set",
        "clients.lookups=100",
        "--format",
        "json",
    ]);
    let recs = records(&o);
    let m = &recs[0]["data"]["metrics"]["clients.retried_share"];
    assert!(m["half_width"].is_null() && m["low"].is_null(), "{m}");
    assert!(m["mean"].is_number());
}

#[test]
fn bad_input_exits_2_with_one_line_naming_it() {
    for (args, names) in [
        (vec!["dns", "--over", "clients.rat=1,2"], "key `clients.rat`"),
        (vec!["dns", "--over", "clients.lookups=10,many"], "at clients.lookups=many"),
        (vec!["dns", "--over", "clients.rate=9..1:1"], "key `clients.rate`"),
        (vec!["dns", "--over", "clients.rate"], "KEY=V1"),
        (vec!["dns", "--over", "clients.rate=1", "--over", "clients.rate=2"], "swept twice"),
        (vec!["dns", "--over", "clients.rate=1", "--kernel", "4.14,9.99"], "9.99"),
        (vec!["dns", "--over", "clients.rate=1", "--metric", "clients.p98_ms"], "key `clients.p98_ms`"),
        (vec!["dns", "--over", "clients.rate=1", "--seeds", "0"], "--seeds"),
        (vec!["dns", "--over", "clients.rate=1", "--set", "clients.podz=1"], "key `clients.podz`"),
        (vec!["tw-recycle", "--over", "load.rate=10", "--kernel", "6.6"], "tw_recycle"),
        (vec!["dns", "--over", "clients.rate=1", "--plot", "/nonexistent-dir/x.svg"], "/nonexistent-dir/x.svg"),
    ] {
        let o = racetrack(&[&["sweep"], &args[..]].concat());
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        let err = stderr(&o);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(names), "{args:?}: {err}");
        assert!(o.stdout.is_empty(), "{args:?}: nothing runs");
    }
}

/// A sweep that fails after its runs leaves an existing plot as it was,
/// and no partial file beside it.
#[test]
fn a_failed_sweep_keeps_the_plot_it_would_have_replaced() {
    let svg_path = temp("kept.svg");
    std::fs::write(&svg_path, "the old plot").unwrap();
    let args = ["dns", "--over", "clients.rate=100", "--seeds", "2", "--metric", "clients.p98_ms", "--plot"];
    let o = racetrack(&[&["sweep"], &args[..], &[svg_path.to_str().unwrap()]].concat());
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&svg_path).unwrap(), "the old plot");
    assert!(!svg_path.with_file_name(".kept.svg.partial").exists());
}

#[test]
fn csv_has_a_header_and_one_row_per_point() {
    let o = racetrack(&[
        "sweep",
        "snat",
        "--seeds",
        "2",
        "--over",
        "load.rate=100,300",
        "--set",
        "load.connections=300",
        "--metric",
        "conntrack.insert_failed",
        "--metric",
        "clients.p99_ms",
        "--format",
        "csv",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        "load.rate,kernel,conntrack.insert_failed.mean,conntrack.insert_failed.half_width,clients.p99_ms.mean,clients.p99_ms.half_width"
    );
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[1].starts_with("100,4.19,") && lines[2].starts_with("300,4.19,"), "{out}");
    assert!(lines[1].split(',').skip(2).all(|c| c.parse::<f64>().is_ok()), "{out}");
}

#[test]
fn plot_has_one_line_per_kernel_a_legend_and_labels() {
    let svg_path = temp("dns.svg");
    let o = sweep(&[
        "dns",
        "--over",
        "clients.rate=100,200,400",
        "--kernel",
        "4.14,4.19,6.6",
        "--plot",
        svg_path.to_str().unwrap(),
        "--format",
        "table",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&svg_path).unwrap();
    let doc = roxmltree::Document::parse(&text).expect("the plot is well-formed XML");
    // Series lines are the 2-px polylines; each has a vertex per swept value.
    let lines: Vec<_> =
        doc.descendants().filter(|n| n.has_tag_name("polyline") && n.attribute("stroke-width") == Some("2")).collect();
    assert_eq!(lines.len(), 3, "one line per kernel");
    for l in &lines {
        assert_eq!(l.attribute("points").unwrap().split_whitespace().count(), 3);
    }
    let colours: std::collections::BTreeSet<_> = lines.iter().map(|l| l.attribute("stroke").unwrap()).collect();
    assert_eq!(colours.len(), 3, "distinct colours");
    let texts: Vec<String> = doc
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .map(|n| n.text().unwrap_or("").trim().to_string())
        .collect();
    for want in [
        "kernel 4.14",
        "kernel 4.19",
        "kernel 6.6",
        "clients.rate (per second)",
        "share of lookups retried, %",
        "dns: share of lookups retried (clients.retried_share) by clients.rate",
        "100",
        "400",
    ] {
        assert!(texts.iter().any(|t| t == want), "no text {want:?} in {texts:?}");
    }
    assert!(texts.iter().any(|t| t.contains("clients.lookups=200") && t.contains("2 seeds")), "{texts:?}");
    // Two seeds: every point has an error bar in its line's colour (a
    // vertical segment and two caps), where the interval is not empty.
    for l in &lines {
        let colour = l.attribute("stroke");
        let vertical = doc
            .descendants()
            .filter(|n| {
                n.has_tag_name("line") && n.attribute("stroke") == colour && n.attribute("x1") == n.attribute("x2")
            })
            .count();
        assert!(vertical <= 3, "at most one bar per point");
    }
    let bars = doc.descendants().filter(|n| {
        n.has_tag_name("line")
            && n.attribute("stroke") == lines[0].attribute("stroke")
            && n.attribute("x1") == n.attribute("x2")
    });
    assert_eq!(bars.count(), 3, "4.14 retries vary by seed: a bar at each point");
}

#[test]
fn a_second_over_key_splits_the_lines() {
    let svg_path = temp("two.svg");
    let o = sweep(&[
        "dns",
        "--over",
        "clients.resolver=glibc,musl",
        "--over",
        "service.endpoints=1,3",
        "--kernel",
        "4.14",
        "--plot",
        svg_path.to_str().unwrap(),
        "--format",
        "csv",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = std::fs::read_to_string(&svg_path).unwrap();
    let doc = roxmltree::Document::parse(&text).unwrap();
    let lines =
        doc.descendants().filter(|n| n.has_tag_name("polyline") && n.attribute("stroke-width") == Some("2")).count();
    assert_eq!(lines, 2);
    let texts: Vec<&str> = doc.descendants().filter(|n| n.has_tag_name("text")).filter_map(|n| n.text()).collect();
    for want in ["service.endpoints=1", "service.endpoints=3", "glibc", "musl"] {
        assert!(texts.iter().any(|t| t.trim() == want), "no {want:?} in {texts:?}");
    }
}

#[test]
fn node_files_apply_to_every_point_and_every_kernel() {
    let fixture = |f: &str| format!("{}/tests/fixtures/{f}", env!("CARGO_MANIFEST_DIR"));
    let (nat, sysctl) = (fixture("iptables-save.txt"), fixture("sysctl.txt"));
    let o = sweep(&[
        "dns",
        "--over",
        "clients.rate=100,400",
        "--kernel",
        "4.14,4.19",
        "--iptables-save",
        &nat,
        "--sysctl",
        &sysctl,
        "--metric",
        "conntrack.drop",
        "--format",
        "json",
    ]);
    let recs = records(&o);
    assert!(stderr(&o).contains("ignored"), "the files' notes are shown: {}", stderr(&o));
    assert_eq!(recs.len(), 5, "4 points and the summary");
    for p in &recs[..4] {
        let p = &p["data"];
        let (rate, kernel) = (p["over"]["clients.rate"].to_string(), p["kernel"].as_str().unwrap());
        let values = p["metrics"]["conntrack.drop"]["values"].as_array().unwrap();
        // Each value is what `run` reports with the same files for that seed.
        for (seed, v) in [1, 2].iter().zip(values) {
            let r = racetrack(&[
                "run",
                "dns",
                "--kernel",
                kernel,
                "--iptables-save",
                &nat,
                "--sysctl",
                &sysctl,
                "--set",
                "clients.lookups=200",
                "--set",
                &format!("clients.rate={rate}"),
                "--seed",
                &seed.to_string(),
                "--format",
                "json",
            ]);
            assert!(r.status.success(), "{}", stderr(&r));
            let summary: Value = serde_json::from_str(stdout(&r).trim()).unwrap();
            assert_eq!(summary["data"]["inputs"]["parameters"]["service.endpoints"], 2);
            assert_eq!(
                v.as_f64().unwrap(),
                summary["data"]["conntrack"]["drop"].as_f64().unwrap(),
                "{kernel} {rate} {seed}"
            );
        }
    }
}

#[test]
fn prom_has_a_mean_and_a_half_width_per_point_and_metric() {
    let grid = ["dns", "--over", "service.endpoints=1,3", "--kernel", "4.14"];
    let metrics = ["--metric", "conntrack.drop", "--metric", "clients.p99_ms"];
    let with_format = |f: &str| sweep(&[&grid[..], &metrics[..], &["--format", f]].concat());
    let o = with_format("prom");
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("valid exposition");
    let json = records(&with_format("json"));
    // 2 points × 2 metrics, for each of the two families.
    assert_eq!(scrape.samples.len(), 8, "{text}");
    for s in &scrape.samples {
        let prometheus_parse::Value::Gauge(v) = s.value else { panic!("{:?}", s.value) };
        let endpoints: i64 = s.labels.get("over_service_endpoints").unwrap().parse().unwrap();
        let point = json.iter().find(|r| r["data"]["over"]["service.endpoints"] == endpoints).unwrap();
        let field = if s.metric == "racetrack_sweep_mean" { "mean" } else { "half_width" };
        let want = point["data"]["metrics"][s.labels.get("metric").unwrap()][field].as_f64().unwrap();
        assert!((v - want).abs() <= 1e-9 * want.abs().max(1.0), "{} {v} vs {want}", s.metric);
        assert_eq!(s.labels.get("kernel"), Some("4.14"));
    }
    let o = sweep(&["dns", "--over", "service.endpoints=1,3", "--format", "conntrack"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("possible values: table, json, csv, prom"), "{}", stderr(&o));
}
