//! The `racetrack` binary as a user runs it: exit codes, one-line errors,
//! machine-readable output.

use std::path::PathBuf;
use std::process::{Command, Output};

fn racetrack(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_racetrack")).args(args).output().expect("run racetrack")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

fn temp_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("racetrack-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn no_arguments_prints_the_demo() {
    let o = racetrack(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let header = out.lines().find(|l| l.starts_with("kernel")).expect("a table header");
    for m in ["none", "single-request-reopen", "node-local cache", "3 endpoints"] {
        assert!(header.contains(m), "{header}");
    }
    // Each row: kernel, then per mitigation "D% / N" (delayed share / insert_failed).
    let row = |k: &str| -> Vec<(f64, u64)> {
        let line =
            out.lines().find(|l| l.starts_with(&format!("{k} "))).unwrap_or_else(|| panic!("no {k} row:\n{out}"));
        line.split("  ")
            .filter_map(|c| c.trim().split_once("% / "))
            .map(|(d, n)| (d.trim().parse().unwrap(), n.trim().parse().unwrap()))
            .collect()
    };
    let r414 = row("4.14");
    assert_eq!(r414.len(), 4, "{out}");
    assert!(r414[0].0 > 0.0 && r414[0].1 > 0, "4.14 without mitigation delays lookups: {out}");
    assert_eq!(r414[1], (0.0, 0), "single-request-reopen: no clash");
    assert_eq!(r414[2], (0.0, 0), "node-local cache: no conntrack");
    for k in ["5.6", "6.6"] {
        assert!(row(k).iter().all(|c| c.0 == 0.0), "{k} never delays: {out}");
    }
    assert!(out.contains("Try: "), "a hint on what to try next");
}

#[test]
fn profiles_lists_every_preset_once() {
    let o = racetrack(&["profiles", "--format", "json"]);
    assert!(o.status.success());
    let names: Vec<String> = stdout(&o)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["type"], "profile_summary");
            v["data"]["name"].as_str().unwrap().to_string()
        })
        .collect();
    let presets: Vec<String> = racetrack_engine::profile::preset_names();
    assert_eq!(names, presets);
}

#[test]
fn show_prints_toml_that_loads_back() {
    let o = racetrack(&["profiles", "--show", "4.19"]);
    assert!(o.status.success());
    let text = stdout(&o);
    let p = temp_file("copy-of-4.19.toml", &text);
    let again = racetrack(&["profiles", "--show", p.to_str().unwrap()]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(stdout(&again), text);
}

#[test]
fn a_profile_with_one_field_changed_loads() {
    let text = stdout(&racetrack(&["profiles", "--show", "4.19"]));
    let changed = text.replace("clash = \"merge-matching\"", "clash = \"merge-or-nat-clash\"");
    assert_ne!(changed, text);
    let p = temp_file("proposed.toml", &changed);
    let o = racetrack(&["profiles", "--show", p.to_str().unwrap(), "--format", "json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(v["data"]["conntrack"]["clash"], "merge-or-nat-clash");
}

fn assert_one_line_error(o: &Output, needles: &[&str]) {
    assert_eq!(o.status.code(), Some(2), "stdout: {}\nstderr: {}", stdout(o), stderr(o));
    let err = stderr(o);
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    for n in needles {
        assert!(err.contains(n), "{err:?} lacks {n:?}");
    }
    assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE"), "{err}");
}

#[test]
fn bad_profiles_exit_2_with_file_line_and_key() {
    let text = stdout(&racetrack(&["profiles", "--show", "5.15"]));
    let cases = [
        ("unknown.toml", text.replacen("[conntrack]\n", "[conntrack]\nbukets = 4\n", 1), "conntrack.bukets"),
        ("type.toml", text.replace("hz = 250", "hz = \"fast\""), "conntrack.hz"),
        ("zero.toml", text.replace("hz = 250", "hz = 0"), "conntrack.hz"),
        ("duration.toml", text.replace("udp = \"30s\"", "udp = \"soon\""), "timeouts.udp"),
        ("garbage.toml", "\u{0}\u{1}binary\u{ff}garbage".to_string(), "garbage.toml"),
    ];
    for (name, body, key) in cases {
        let p = temp_file(name, &body);
        let o = racetrack(&["profiles", "--show", p.to_str().unwrap()]);
        assert_one_line_error(&o, &[name, key]);
    }
    // Bytes that are not UTF-8 are named by their line, as in every other input file.
    let p = temp_file("latin1.toml", "");
    std::fs::write(&p, [&text.as_bytes()[..text.find("[conntrack]").unwrap()], b"# caf\xe9\n"].concat()).unwrap();
    assert_one_line_error(
        &racetrack(&["profiles", "--show", p.to_str().unwrap()]),
        &["latin1.toml:", "not UTF-8 text"],
    );
}

#[test]
fn unknown_preset_and_missing_file_exit_2() {
    assert_one_line_error(&racetrack(&["profiles", "--show", "9.99"]), &["9.99", "no such kernel preset"]);
    assert_one_line_error(&racetrack(&["profiles", "--show", "/nonexistent/k.toml"]), &["/nonexistent/k.toml"]);
}

#[test]
fn usage_errors_exit_2() {
    let o = racetrack(&["profiles", "--format", "yaml"]);
    assert_eq!(o.status.code(), Some(2));
    let o = racetrack(&["frobnicate"]);
    assert_eq!(o.status.code(), Some(2));
}

fn summary(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", stderr(o));
    let line = stdout(o);
    let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(v["type"], "summary");
    v["data"].clone()
}

#[test]
fn run_dns_prints_the_documented_json_keys() {
    let d =
        summary(&racetrack(&["run", "dns", "--kernel", "4.14", "--format", "json", "--set", "clients.lookups=300"]));
    for key in ["scenario", "kernel", "seed", "conntrack", "per_cpu", "clients"] {
        assert!(d.get(key).is_some(), "missing {key}: {d}");
    }
    for key in ["requests", "ok", "failed", "retried", "p50_ms", "p99_ms", "max_ms", "retry_classes"] {
        assert!(d["clients"].get(key).is_some(), "missing clients.{key}");
    }
    for key in ["found", "insert", "insert_failed", "drop", "early_drop", "clash_resolve", "chaintoolong"] {
        assert!(d["conntrack"].get(key).is_some(), "missing conntrack.{key}");
    }
    assert_eq!(d["kernel"], "4.14");
    assert_eq!(d["clients"]["requests"], 300);
    assert_eq!(d["per_cpu"].as_array().unwrap().len(), 2);
}

#[test]
fn run_is_deterministic_per_seed() {
    let args = ["run", "dns", "--kernel", "4.14", "--format", "json", "--set", "clients.lookups=300", "--seed", "7"];
    let a = stdout(&racetrack(&args));
    assert_eq!(a, stdout(&racetrack(&args)));
    let mut other = args;
    other[9] = "8";
    assert_ne!(a, stdout(&racetrack(&other)));
    assert_eq!(summary(&racetrack(&args))["seed"], 7);
}

#[test]
fn scenarios_show_prints_a_file_that_runs() {
    let o = racetrack(&["scenarios", "--show", "dns"]);
    assert!(o.status.success());
    let text = stdout(&o).replace("lookups = 2000", "lookups = 250");
    let p = temp_file("dns.toml", &text);
    let d = summary(&racetrack(&["run", p.to_str().unwrap(), "--format", "json"]));
    assert_eq!(d["clients"]["requests"], 250);
    let listing = stdout(&racetrack(&["scenarios"]));
    assert!(listing.lines().any(|l| l.starts_with("dns ")), "{listing}");
}

#[test]
fn bad_run_input_exits_2_naming_the_key() {
    assert_one_line_error(&racetrack(&["run", "dns", "--set", "clients.lookupz=3"]), &["clients.lookupz", "lookups"]);
    assert_one_line_error(&racetrack(&["run", "dns", "--set", "resolv.timeout=0"]), &["resolv.timeout"]);
    assert_one_line_error(&racetrack(&["run", "dns", "--set", "clients.resolver=bind"]), &["clients.resolver"]);
    assert_one_line_error(&racetrack(&["run", "dns", "--set", "node.cpus=two"]), &["node.cpus"]);
    assert_one_line_error(&racetrack(&["run", "nosuch"]), &["nosuch", "no such scenario"]);
    assert_one_line_error(&racetrack(&["run", "dns", "--kernel", "2.6"]), &["2.6"]);
    let p = temp_file("broken.toml", "scenario = \"dns\"\nseed = 1\n[node]\ncpus = 2\nsteering = 3\n");
    assert_one_line_error(&racetrack(&["run", p.to_str().unwrap()]), &["broken.toml:5:", "node.steering"]);
    // A file need hold only what it changes.
    let p = temp_file("partial.toml", "scenario = \"dns\"\n[node]\ncpus = 4\n");
    let o = racetrack(&["run", p.to_str().unwrap(), "--format", "json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(summary(&o)["per_cpu"].as_array().unwrap().len(), 4);
    let p = temp_file("binary.toml", "\u{0}\u{1}\u{2}garbage");
    assert_one_line_error(&racetrack(&["run", p.to_str().unwrap()]), &["binary.toml"]);
    // Values that would make a run last (virtual) years, or wrap, are refused.
    for (scenario, set, key) in [
        ("dns", "clients.rate=1e-9", "clients.rate"),
        ("dns", "service.latency=18446744073709551615ns", "service.latency"),
        ("dns", "mitigations.aaaa_delay=1years", "mitigations.aaaa_delay"),
        ("dns", "node.stages.lookup=1years", "node.stages.lookup"),
        ("snat", "load.rate=1e-6", "load.rate"),
        ("snat", "load.burst_spread=1years", "load.burst_spread"),
        ("syn-backlog", "listener.accept_rate=1e-9", "listener.accept_rate"),
        ("dns", "clients=3", "is a group: set one of its keys"),
        ("dns", "scenario=snat", "pick it on the command line"),
    ] {
        assert_one_line_error(&racetrack(&["run", scenario, "--set", set]), &[key]);
    }
}

#[test]
fn stress_reports_races_and_the_documented_keys() {
    let d =
        summary(&racetrack(&["stress", "--kernel", "4.14", "--ops", "20000", "--duration", "30s", "--format", "json"]));
    for key in ["workload", "threads", "kernel", "ops", "ops_per_s", "conntrack", "per_cpu", "races", "elapsed_s"] {
        assert!(d.get(key).is_some(), "missing {key}: {d}");
    }
    assert!(d["ops"].as_u64().unwrap() >= 20000);
    assert_eq!(d["per_cpu"].as_array().unwrap().len(), 2);
    let r = &d["races"];
    assert_eq!(r["clashed"], r["dropped"], "4.14 drops every clash it sees: {r}");
    assert_eq!(d["conntrack"]["insert_failed"], r["dropped"]);
    if std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2 {
        assert!(r["clashed"].as_u64().unwrap() > 0, "two threads on two cores race: {r}");
    }
}

#[test]
fn stress_rejects_bad_arguments() {
    assert_one_line_error(&racetrack(&["stress", "--threads", "0"]), &["--threads"]);
    assert_one_line_error(&racetrack(&["stress", "--endpoints", "0"]), &["--endpoints"]);
    assert_one_line_error(&racetrack(&["stress", "--kernel", "nope"]), &["nope"]);
    assert_eq!(racetrack(&["stress", "--duration", "soon"]).status.code(), Some(2));
    assert_one_line_error(&racetrack(&["stress", "--workload", "lookup", "--random-fully"]), &["--random-fully"]);
    assert_one_line_error(&racetrack(&["stress", "--scaling", "--threads", "1"]), &["--scaling"]);
    assert_one_line_error(&racetrack(&["stress", "--workload", "lookup", "--flows", "300000"]), &["--flows 300000"]);
    assert_one_line_error(&racetrack(&["stress", "--workload", "lookup", "--endpoints", "3"]), &["--endpoints"]);
    assert_one_line_error(&racetrack(&["stress", "--workload", "pair", "--flows", "5"]), &["--flows"]);
}

#[test]
fn stress_baselines_and_scaling_report_their_keys() {
    let d = summary(&racetrack(&[
        "stress",
        "--workload",
        "mixed",
        "--ops",
        "200000",
        "--duration",
        "20s",
        "--baselines",
        "--scaling",
        "--format",
        "json",
    ]));
    for b in ["dashmap", "mutex_hashmap"] {
        assert!(d["baselines"][b]["ops_per_s"].as_f64().unwrap() > 0.0, "{d}");
    }
    let s = d["scaling"].as_array().unwrap();
    assert_eq!(s.len(), 2);
    assert_eq!(s[0]["threads"], 1);
    assert_eq!(s[0]["speedup"], 1.0);
    for key in [
        "ops_per_s",
        "speedup",
        "reference_speedup",
        "efficiency",
        "efficiency_range",
        "best_efficiency",
        "cpu_efficiency",
    ] {
        assert!(s[1].get(key).is_some(), "missing scaling.{key}");
    }
    let handoff = s[1]["line_handoff_ns"].as_f64().unwrap();
    assert!(handoff > 0.0, "{d}");
    assert!(s[0]["line_handoff_ns"].is_null(), "{d}");
    let range = &s[1]["efficiency_range"];
    let e = s[1]["efficiency"].as_f64().unwrap();
    assert!(range[0].as_f64().unwrap() <= e && e <= range[1].as_f64().unwrap(), "{d}");
    // A plain map has no conntrack races: baselines make no sense for pair.
    assert_one_line_error(&racetrack(&["stress", "--workload", "pair", "--baselines"]), &["--baselines"]);
}

/// Dotted keys of every leaf in a TOML document.
fn leaf_keys(prefix: &str, t: &toml::Table, out: &mut Vec<String>) {
    for (k, v) in t {
        let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        match v {
            toml::Value::Table(inner) => leaf_keys(&key, inner, out),
            _ => out.push(key),
        }
    }
}

#[test]
fn every_scenario_parameter_is_shown_and_documented() {
    let listing = stdout(&racetrack(&["scenarios"]));
    for name in ["dns", "snat", "tw-recycle", "syn-backlog"] {
        assert!(listing.lines().any(|l| l.starts_with(&format!("{name} "))), "{listing}");
        let o = racetrack(&["scenarios", "--show", name]);
        assert!(o.status.success(), "{}", stderr(&o));
        let table: toml::Table = toml::from_str(&stdout(&o)).unwrap();
        let mut keys = Vec::new();
        leaf_keys("", &table, &mut keys);
        let doc = std::fs::read_to_string(format!("{}/docs/reference/scenarios/{name}.md", env!("CARGO_MANIFEST_DIR")))
            .unwrap_or_else(|e| panic!("docs for {name}: {e}"));
        for k in keys {
            // Under a `## [section]` heading a key may be written relative to it.
            let relative = k.split_once('.').map_or(k.as_str(), |(_, rest)| rest);
            assert!(
                doc.contains(&format!("`{k}`")) || doc.contains(&format!("`{relative}`")),
                "docs/reference/scenarios/{name}.md does not document `{k}`"
            );
        }
    }
}

#[test]
fn run_snat_reports_the_allocator_and_tcp_keys() {
    let d = summary(&racetrack(&[
        "run",
        "snat",
        "--kernel",
        "4.14",
        "--format",
        "json",
        "--set",
        "load.connections=3000",
        "--set",
        "load.rate=400",
    ]));
    for key in ["scenario", "kernel", "seed", "conntrack", "per_cpu", "clients", "snat", "tcp", "analytic"] {
        assert!(d.get(key).is_some(), "missing {key}: {d}");
    }
    for key in ["probes", "probes_max", "ports_in_use_max", "exhausted", "allocations", "kept_original"] {
        assert!(d["snat"].get(key).is_some(), "missing snat.{key}");
    }
    for key in ["syn_dropped_paws", "syn_dropped_backlog", "syn_retransmits"] {
        assert!(d["tcp"].get(key).is_some(), "missing tcp.{key}");
    }
    assert_eq!(d["clients"]["requests"], 3000);
    let probes: u64 = d["snat"]["probes"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(probes, d["snat"]["allocations"].as_u64().unwrap());
    let a = d["analytic"].as_array().unwrap();
    assert!(a.iter().all(|p| p["predicted"].is_number() && p["formula"].is_string()), "{a:?}");
}

#[test]
fn listener_scenarios_run_with_their_default_kernels() {
    let d = summary(&racetrack(&["run", "tw-recycle", "--format", "json"]));
    assert_eq!(d["kernel"], "4.9");
    assert!(d["tcp"]["syn_dropped_paws"].as_u64().unwrap() > 0);
    let d = summary(&racetrack(&["run", "syn-backlog", "--format", "json"]));
    assert!(d["tcp"]["syn_dropped_backlog"].as_u64().unwrap() > 0);
    assert_eq!(d["conntrack"]["drop"], 0);
    let table = stdout(&racetrack(&["run", "syn-backlog", "--format", "table"]));
    assert!(table.contains("syn_dropped_backlog=") && table.contains("analytic"), "{table}");
}

#[test]
fn tcp_scenarios_reject_bad_values_naming_the_key() {
    assert_one_line_error(&racetrack(&["run", "snat", "--set", "load.rate=-1"]), &["load.rate"]);
    assert_one_line_error(&racetrack(&["run", "snat", "--set", "snat.port_max=10"]), &["snat.port_max"]);
    assert_one_line_error(&racetrack(&["run", "snat", "--set", "snat.allocator=magic"]), &["snat.allocator"]);
    assert_one_line_error(
        &racetrack(&["run", "syn-backlog", "--set", "listener.tcp_syncookies=3"]),
        &["listener.tcp_syncookies"],
    );
    assert_one_line_error(&racetrack(&["run", "tw-recycle", "--set", "hosts.count=0"]), &["hosts.count"]);
    // The knob is gone since 4.12: say so.
    assert_one_line_error(&racetrack(&["run", "tw-recycle", "--kernel", "4.14"]), &["server.tw_recycle", "4.12"]);
}
