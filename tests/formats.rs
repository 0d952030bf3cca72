//! `--format csv|conntrack|prom`: each parses with a real parser and carries the
//! same numbers as the JSON summary.

use std::process::{Command, Output};

use serde_json::Value;

fn racetrack(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_racetrack")).args(args).output().expect("run racetrack")
}

fn stdout(args: &[&str]) -> String {
    let o = racetrack(args);
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

fn summary(args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["--format", "json"]);
    let v: Value = serde_json::from_str(stdout(&a).trim()).unwrap();
    assert_eq!(v["type"], "summary");
    v["data"].clone()
}

fn with_format<'a>(args: &[&'a str], f: &'a str) -> Vec<&'a str> {
    let mut a = args.to_vec();
    a.extend(["--format", f]);
    a
}

/// The value at a CSV column's key path; keys may contain dots themselves
/// (histogram bounds such as `0.005`), so every way of splitting is tried.
fn at<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    match v {
        Value::Object(m) => m.iter().find_map(|(k, child)| {
            if path == k {
                Some(child)
            } else {
                path.strip_prefix(k.as_str()).and_then(|r| r.strip_prefix('.')).and_then(|r| at(child, r))
            }
        }),
        Value::Array(a) => {
            let (i, rest) = path.split_once('.').map_or((path, None), |(i, r)| (i, Some(r)));
            let child = a.get(i.parse::<usize>().ok()?)?;
            match rest {
                None => Some(child),
                Some(r) => at(child, r),
            }
        }
        _ => None,
    }
}

fn leaves(v: &Value) -> usize {
    match v {
        Value::Object(m) => m.values().map(leaves).sum(),
        Value::Array(a) => a.iter().map(leaves).sum(),
        _ => 1,
    }
}

#[test]
fn csv_has_one_column_per_json_leaf_with_the_same_values() {
    // snat: its analytic formulas hold commas and quotes need RFC 4180 quoting.
    for args in [&["run", "snat", "--seed", "3"][..], &["run", "dns", "--kernel", "4.14"][..]] {
        let json = summary(args);
        let text = stdout(&with_format(args, "csv"));
        let mut r = csv::Reader::from_reader(text.as_bytes());
        let header = r.headers().unwrap().clone();
        let rows: Vec<csv::StringRecord> = r.records().map(|r| r.unwrap()).collect();
        assert_eq!(rows.len(), 1, "{args:?}: one data row");
        assert_eq!(header.len(), leaves(&json), "{args:?}: every leaf is a column");
        assert_eq!(header.iter().take(3).collect::<Vec<_>>(), ["scenario", "kernel", "seed"]);
        for (col, cell) in header.iter().zip(rows[0].iter()) {
            let v = at(&json, col).unwrap_or_else(|| panic!("{args:?}: column {col} is not a JSON key path"));
            let want = match v {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                v => v.to_string(),
            };
            assert_eq!(cell, want, "{args:?}: {col}");
        }
        assert!(header.iter().any(|h| h == "conntrack.insert_failed"));
        assert!(header.iter().any(|h| h == "per_cpu.1.drop"));
    }
}

#[test]
fn conntrack_format_is_conntrack_tools_layout_with_the_kernel_s_counters() {
    for (kernel, fields) in [
        (
            "4.14",
            &["found", "invalid", "ignore", "insert", "insert_failed", "drop", "early_drop", "error", "search_restart"]
                [..],
        ),
        (
            "5.10",
            &[
                "found",
                "invalid",
                "insert",
                "insert_failed",
                "drop",
                "early_drop",
                "error",
                "search_restart",
                "clash_resolve",
            ][..],
        ),
        (
            "6.12",
            &[
                "found",
                "invalid",
                "insert",
                "insert_failed",
                "drop",
                "early_drop",
                "error",
                "search_restart",
                "clash_resolve",
                "chaintoolong",
            ][..],
        ),
    ] {
        let args = ["run", "dns", "--kernel", kernel];
        let json = summary(&args);
        let text = stdout(&with_format(&args, "conntrack"));
        let per_cpu = json["per_cpu"].as_array().unwrap();
        assert_eq!(text.lines().count(), per_cpu.len());
        for (cpu, line) in text.lines().enumerate() {
            // conntrack-tools: "cpu=%-4u\t" then "name=%u " per counter.
            let head = format!("cpu={cpu:<4}\t");
            let rest = line.strip_prefix(&head).unwrap_or_else(|| panic!("{kernel}: {line:?}"));
            assert!(rest.ends_with(' '), "{kernel}: a trailing space, as conntrack-tools prints");
            let pairs: Vec<(&str, u64)> = rest
                .split_whitespace()
                .map(|t| {
                    let (k, v) = t.split_once('=').unwrap();
                    (k, v.parse().unwrap())
                })
                .collect();
            let names: Vec<&str> = pairs.iter().map(|p| p.0).collect();
            assert_eq!(names, fields, "{kernel}");
            for (k, v) in pairs {
                let want = per_cpu[cpu].get(k).and_then(Value::as_u64).unwrap_or(0);
                assert_eq!(v, want, "{kernel} cpu {cpu} {k}");
            }
        }
    }
}

#[test]
fn prom_parses_and_matches_the_json_summary() {
    let args = ["run", "dns", "--kernel", "4.14"];
    let json = summary(&args);
    let text = stdout(&with_format(&args, "prom"));
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("valid exposition");
    let value = |name: &str, label: Option<(&str, &str)>| -> f64 {
        let s = scrape
            .samples
            .iter()
            .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
            .unwrap_or_else(|| panic!("no sample {name} {label:?}"));
        match s.value {
            prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Untyped(v) => v,
            ref other => panic!("{name}: {other:?}"),
        }
    };
    let c = &json["conntrack"];
    for stat in ["found", "invalid", "insert", "insert_failed", "drop", "early_drop", "search_restart"] {
        assert_eq!(value(&format!("node_nf_conntrack_stat_{stat}"), None), c[stat].as_f64().unwrap(), "{stat}");
        assert!(scrape.docs.contains_key(&format!("node_nf_conntrack_stat_{stat}")), "HELP for {stat}");
    }
    assert_eq!(value("node_nf_conntrack_entries", None), json["conntrack_entries"].as_f64().unwrap());
    let profile: Value =
        serde_json::from_str(stdout(&["profiles", "--show", "4.14", "--format", "json"]).trim()).unwrap();
    assert_eq!(value("node_nf_conntrack_entries_limit", None), profile["data"]["conntrack"]["max"].as_f64().unwrap());
    for (cpu, m) in json["per_cpu"].as_array().unwrap().iter().enumerate() {
        let cpu = cpu.to_string();
        for stat in ["insert_failed", "drop", "insert"] {
            let v = value(&format!("racetrack_conntrack_stat_{stat}_total"), Some(("cpu", &cpu)));
            assert_eq!(v, m[stat].as_f64().unwrap(), "cpu {cpu} {stat}");
        }
    }
    assert!(!text.contains("racetrack_conntrack_stat_clash_resolve_total"), "4.14 has no clash_resolve");
    assert_eq!(value("racetrack_client_requests_total", None), json["clients"]["requests"].as_f64().unwrap());
    assert_eq!(value("racetrack_client_requests_retried_total", None), json["clients"]["retried"].as_f64().unwrap());
    let info = scrape.samples.iter().find(|s| s.metric == "racetrack_run_info").unwrap();
    assert_eq!(info.labels.get("kernel"), Some("4.14"));
    // The histogram: the parser groups _bucket/_sum/_count into one.
    let h = scrape.samples.iter().find(|s| s.metric == "racetrack_client_request_duration_seconds").unwrap();
    let prometheus_parse::Value::Histogram(buckets) = &h.value else { panic!("{:?}", h.value) };
    let hist = &json["clients"]["latency_histogram"];
    assert_eq!(buckets.len(), hist["buckets"].as_object().unwrap().len() + 1, "every bound and +Inf");
    for b in buckets {
        let want = if b.less_than.is_infinite() {
            hist["count"].as_f64().unwrap()
        } else {
            let (_, n) = hist["buckets"]
                .as_object()
                .unwrap()
                .iter()
                .find(|(le, _)| le.parse::<f64>().unwrap() == b.less_than)
                .unwrap_or_else(|| panic!("bound {}", b.less_than));
            n.as_f64().unwrap()
        };
        assert_eq!(b.count, want, "le={}", b.less_than);
    }
    assert_eq!(hist["count"], json["clients"]["ok"]);
    // 4.14 delays ~10% of lookups by 5 s: they sit above the 5 s bound.
    let le5 = buckets.iter().find(|b| b.less_than == 5.0).unwrap().count;
    assert_eq!(hist["count"].as_f64().unwrap() - le5, json["clients"]["retry_classes"]["5s"].as_f64().unwrap());
    let sum = scrape.samples.iter().find(|s| s.metric == "racetrack_client_request_duration_seconds_sum");
    let sum = sum.map(|s| match s.value {
        prometheus_parse::Value::Untyped(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Counter(v) => v,
        _ => f64::NAN,
    });
    if let Some(sum) = sum {
        assert!((sum - hist["sum_s"].as_f64().unwrap()).abs() < 1e-9);
    } else {
        assert!(text.contains(&format!("racetrack_client_request_duration_seconds_sum {}", hist["sum_s"])));
    }
}

#[test]
fn stress_speaks_every_format() {
    let args = ["stress", "--ops", "4000", "--duration", "2s", "--threads", "2"];
    let lines = stdout(&with_format(&args, "conntrack"));
    assert_eq!(lines.lines().count(), 2);
    assert!(lines.lines().all(|l| l.starts_with("cpu=") && l.contains("insert_failed=")));
    let text = stdout(&with_format(&args, "prom"));
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    assert!(scrape.samples.iter().any(|s| s.metric == "node_nf_conntrack_stat_insert_failed"));
    assert!(scrape.samples.iter().all(|s| !s.metric.starts_with("racetrack_client")), "no clients in stress");
    let csv_text = stdout(&with_format(&args, "csv"));
    let mut r = csv::Reader::from_reader(csv_text.as_bytes());
    assert!(r.headers().unwrap().iter().any(|h| h == "races.clashed"));
    assert_eq!(r.records().count(), 1);
}

#[test]
fn commands_without_a_format_exit_2() {
    for args in [&["profiles", "--format", "prom"][..], &["profiles", "--show", "4.19", "--format", "conntrack"][..]] {
        let o = racetrack(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(err.lines().count(), 1);
        // --help lists only what the command prints, and the error says the same.
        assert!(err.contains("possible values: table, json;"), "{err}");
    }
}
