//! `racetrack run --iptables-save/--resolv-conf/--sysctl` with files shaped like a real
//! node's: what reaches the scenario, what is reported as not modelled, and
//! how each kind of broken file is refused.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn fx(name: &str) -> String {
    fixture(name).to_str().unwrap().to_string()
}

fn text(name: &str) -> String {
    std::fs::read_to_string(fixture(name)).unwrap()
}

fn racetrack(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_racetrack")).args(args).output().expect("run racetrack")
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

/// A run with small load (these tests are about inputs, not races), as JSON.
fn run_json(args: &[&str]) -> (Value, String) {
    let mut all = vec!["run"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--format", "json"]);
    let o = racetrack(&all);
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    let line = String::from_utf8(o.stdout.clone()).unwrap();
    let v: Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(v["type"], "summary");
    (v["data"].clone(), stderr(&o))
}

/// 1-based number of the first line where two texts differ.
fn first_difference(a: &str, b: &str) -> usize {
    a.lines().zip(b.lines()).position(|(x, y)| x != y).expect("the texts differ") + 1
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).unwrap_or_else(|| panic!("no `{needle}`")) + 1
}

fn temp_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("racetrack-inputs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Exit 2, one line on stderr, starting with `racetrack: FILE:LINE: `.
fn assert_refused(args: &[&str], file: &str, line: usize) -> String {
    let mut all = vec!["run"];
    all.extend_from_slice(args);
    let o = racetrack(&all);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    let prefix = format!("racetrack: {file}:{line}: ");
    assert!(err.starts_with(&prefix), "expected `{prefix}…`, got {err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

const SEP_DNS_UDP: &str = "kube-dns:dns\" -m udp -j DNAT";

#[test]
fn a_real_node_reaches_the_dns_scenario() {
    let (nat, resolv, sysctl) = (fx("iptables-save.txt"), fx("resolv.conf"), fx("sysctl.txt"));
    let (d, err) = run_json(&["dns", "--iptables-save", &nat, "--resolv-conf", &resolv, "--sysctl", &sysctl]);
    let inputs = &d["inputs"];
    let nat_text = text("iptables-save.txt");
    // Endpoints: the DNAT rules of kube-dns's udp/53 chain.
    let endpoints: Vec<String> = nat_text
        .lines()
        .filter(|l| l.contains(SEP_DNS_UDP))
        .map(|l| l.rsplit(' ').next().unwrap().to_string())
        .collect();
    assert_eq!(endpoints.len(), 2, "the fixture has kube-dns with two endpoints");
    let mut got: Vec<String> =
        inputs["service"]["endpoints"].as_array().unwrap().iter().map(|e| e.as_str().unwrap().to_string()).collect();
    got.sort();
    let mut want = endpoints.clone();
    want.sort();
    assert_eq!(got, want);
    assert_eq!(inputs["service"]["address"], "10.96.0.10:53/udp");
    assert_eq!(inputs["service"]["line"], line_of(&nat_text, "kube-system/kube-dns:dns cluster IP\" -m udp"));
    let params = &inputs["parameters"];
    assert_eq!(params["service.endpoints"], endpoints.len());
    assert_eq!(params["service.selector"], "iptables");
    assert_eq!(params["service.probabilities"], serde_json::json!([]));
    // resolv.conf: three search domains and its ndots.
    let rc = text("resolv.conf");
    let search = rc.lines().find_map(|l| l.strip_prefix("search ")).unwrap().split_whitespace().count();
    let ndots: u64 = rc.split("ndots:").nth(1).unwrap().trim().parse().unwrap();
    assert_eq!((params["resolv.search"].as_u64(), params["resolv.ndots"].as_u64()), (Some(search as u64), Some(ndots)));
    // sysctl: the conntrack size and a timeout, with the count of keys applied.
    let sc = text("sysctl.txt");
    let value =
        |k: &str| -> u64 { sc.lines().find_map(|l| l.strip_prefix(&format!("{k} = "))).unwrap().parse().unwrap() };
    assert_eq!(params["kernel.conntrack.max"].as_u64(), Some(value("net.netfilter.nf_conntrack_max")));
    assert_eq!(params["kernel.conntrack.buckets"].as_u64(), Some(value("net.netfilter.nf_conntrack_buckets")));
    assert_eq!(value("net.netfilter.nf_conntrack_udp_timeout"), 30);
    assert_eq!(params["kernel.timeouts.udp"], "30s");
    let applied = inputs["sysctl_applied"].as_u64().unwrap();
    assert!(err.contains(&format!("racetrack: note: {sysctl}: {applied} sysctl keys applied")), "{err}");
    let kernel_keys = params.as_object().unwrap().keys().filter(|k| k.starts_with("kernel.")).count() as u64;
    assert_eq!(applied, kernel_keys, "on dns every applied sysctl key is a kernel profile key");
    // What is not modelled is said, with its line, on stderr and in the JSON.
    let redirect = format!("{nat}:{}: ignored -j REDIRECT (not modelled)", line_of(&nat_text, "-j REDIRECT"));
    assert!(err.contains(&format!("racetrack: note: {redirect}")), "{err}");
    let ignored: Vec<&str> = inputs["ignored"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(ignored.contains(&redirect.as_str()), "{ignored:?}");
    let tables = ignored.iter().filter(|n| n.contains("ignored table")).count();
    assert_eq!(tables, nat_text.lines().filter(|l| l.starts_with('*') && *l != "*nat").count());
}

#[test]
fn the_same_files_and_seed_give_the_same_bytes() {
    let args =
        ["run", "dns", "--iptables-save", &fx("iptables-save.txt"), "--sysctl", &fx("sysctl.txt"), "--format", "json"];
    let (a, b) = (racetrack(&args), racetrack(&args));
    assert!(a.status.success());
    assert_eq!(a.stdout, b.stdout);
}

#[test]
fn snat_takes_the_masquerade_flags_and_the_nodeport_backends() {
    let nat_text = text("iptables-save.txt");
    let web = nat_text.lines().filter(|l| l.contains("shop/web:http\" -m tcp -j DNAT")).count();
    for (file, random_fully) in [("iptables-save.txt", false), ("iptables-save-random-fully.txt", true)] {
        let (d, _) = run_json(&["snat", "--iptables-save", &fx(file), "--set", "load.connections=500"]);
        let p = &d["inputs"]["parameters"];
        assert_eq!(p["snat.random_fully"], random_fully, "{file}");
        assert_eq!(p["snat.random"], false, "{file}");
        assert_eq!(p["backends"], web, "{file}");
        let masq = text(file);
        let kube =
            masq.lines().position(|l| l.starts_with("-A KUBE-POSTROUTING") && l.contains("-j MASQUERADE")).unwrap();
        assert_eq!(d["inputs"]["snat"]["line"], kube + 1, "{file}: kube-proxy's rule is the one modelled");
    }
    // An SNAT rule's range reaches the port range.
    let snat = nat_text.replace(
        "requiring SNAT\" -j MASQUERADE",
        "requiring SNAT\" -j SNAT --to-source 198.51.100.1-198.51.100.4:1024-2047 --random",
    );
    let f = temp_file("snat-range.txt", &snat);
    let (d, _) = run_json(&["snat", "--iptables-save", f.to_str().unwrap(), "--set", "load.connections=500"]);
    let p = &d["inputs"]["parameters"];
    assert_eq!((p["snat.port_min"].as_u64(), p["snat.port_max"].as_u64()), (Some(1024), Some(2047)));
    assert_eq!((p["snat.random"].as_bool(), d["snat"]["range"].as_u64()), (Some(true), Some(1024)));
}

#[test]
fn set_wins_over_the_files() {
    let (d, _) = run_json(&[
        "dns",
        "--iptables-save",
        &fx("iptables-save.txt"),
        "--resolv-conf",
        &fx("resolv.conf"),
        "--set",
        "service.endpoints=3",
        "--set",
        "resolv.ndots=2",
    ]);
    let p = &d["inputs"]["parameters"];
    assert_eq!((p["service.endpoints"].as_u64(), p["resolv.ndots"].as_u64()), (Some(3), Some(2)));
    // The file's own reading is still shown.
    assert_eq!(d["inputs"]["service"]["endpoints"].as_array().unwrap().len(), 2);
}

#[test]
fn uneven_chains_are_modelled_with_their_probabilities() {
    let nat_text = text("iptables-save.txt");
    let l = line_of(&nat_text, "kube-dns:dns -> 10.244.0.3:53");
    let skewed: Vec<String> = nat_text
        .lines()
        .enumerate()
        .map(|(i, s)| if i + 1 == l { s.replace("0.50000000000", "0.80000000000") } else { s.to_string() })
        .collect();
    let f = temp_file("skewed.txt", &(skewed.join("\n") + "\n"));
    let (d, err) = run_json(&["dns", "--iptables-save", f.to_str().unwrap()]);
    assert_eq!(d["inputs"]["parameters"]["service.probabilities"], serde_json::json!([0.8]));
    assert_eq!(d["inputs"]["service"]["shares"], serde_json::json!([0.8, 0.2]));
    assert!(err.contains("not uniform"), "{err}");
    // nth chains are round robin.
    let nth = nat_text.replace(
        "-m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-PFT7V4SEH2KVJ72C",
        "-m statistic --mode nth --every 2 --packet 0 -j KUBE-SEP-PFT7V4SEH2KVJ72C",
    );
    assert_ne!(nth, nat_text, "the fixture's kube-dns rule was found");
    let f = temp_file("nth.txt", &nth);
    let (d, _) = run_json(&["dns", "--iptables-save", f.to_str().unwrap()]);
    assert_eq!(d["inputs"]["parameters"]["service.selector"], "iptables-nth");
}

#[test]
fn service_picks_another_service() {
    let (d, _) = run_json(&[
        "dns",
        "--iptables-save",
        &fx("iptables-save.txt"),
        "--service",
        "shop/web",
        "--set",
        "clients.lookups=200",
    ]);
    let web = text("iptables-save.txt").lines().filter(|l| l.contains("shop/web:http\" -m tcp -j DNAT")).count();
    assert_eq!(d["inputs"]["parameters"]["service.endpoints"], web);
    let o = racetrack(&["run", "dns", "--iptables-save", &fx("iptables-save.txt"), "--service", "nope/nope"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).starts_with("racetrack: --service: `nope/nope`: no such service"), "{}", stderr(&o));
}

#[test]
fn every_broken_iptables_save_is_refused_at_its_line() {
    let base = text("iptables-save.txt");
    for (file, what) in [
        ("iptables-save-truncated.txt", "`--probability` needs a value"),
        ("iptables-save-bad-probability.txt", "is not a number"),
        ("iptables-save-probability-range.txt", "is not between 0 and 1"),
        ("iptables-save-unknown-target.txt", "unknown target"),
        ("iptables-save-undefined-chain.txt", "which is not defined"),
    ] {
        let line = first_difference(&base, &text(file));
        let err = assert_refused(&["dns", "--iptables-save", &fx(file)], &fx(file), line);
        assert!(err.contains(what), "{file}: {err}");
    }
    let err = assert_refused(
        &["dns", "--iptables-save", &fx("iptables-save-outside-table.txt")],
        &fx("iptables-save-outside-table.txt"),
        1,
    );
    assert!(err.contains("outside a table"), "{err}");
    let no_commit = text("iptables-save-no-commit.txt");
    let last = no_commit.lines().count();
    let err = assert_refused(
        &["dns", "--iptables-save", &fx("iptables-save-no-commit.txt")],
        &fx("iptables-save-no-commit.txt"),
        last,
    );
    assert!(err.contains("missing COMMIT"), "{err}");
    let bytes = std::fs::read(fixture("iptables-save-binary.txt")).unwrap();
    let bad = bytes.iter().position(|&b| b == 0 || b >= 0x80).unwrap();
    let line = bytes[..bad].iter().filter(|&&b| b == b'\n').count() + 1;
    assert_refused(&["dns", "--iptables-save", &fx("iptables-save-binary.txt")], &fx("iptables-save-binary.txt"), line);
}

#[test]
fn resolv_conf_garbage_is_refused_and_out_of_range_values_clamped() {
    let err = assert_refused(
        &["dns", "--resolv-conf", &fx("resolv-bad-option.conf")],
        &fx("resolv-bad-option.conf"),
        line_of(&text("resolv-bad-option.conf"), "ndots:five"),
    );
    assert!(err.contains("`five` is not a whole number"), "{err}");
    let file = fx("resolv-bad-keyword.conf");
    let err = assert_refused(
        &["dns", "--resolv-conf", &file],
        &file,
        line_of(&text("resolv-bad-keyword.conf"), "nameservers"),
    );
    assert!(err.contains("unknown keyword `nameservers`"), "{err}");
    let (d, err) = run_json(&["dns", "--resolv-conf", &fx("resolv-clamped.conf")]);
    let p = &d["inputs"]["parameters"];
    assert_eq!(
        (p["resolv.ndots"].as_u64(), p["resolv.timeout"].as_u64(), p["resolv.attempts"].as_u64()),
        (Some(15), Some(30), Some(5))
    );
    assert_eq!(err.matches("clamped to").count(), 3, "{err}");
    assert!(err.contains("ignored option trust-ad"), "{err}");
    let (d, _) = run_json(&["dns", "--resolv-conf", &fx("resolv-alpine.conf")]);
    let p = &d["inputs"]["parameters"];
    assert_eq!(
        (p["resolv.ndots"].as_u64(), p["resolv.timeout"].as_u64(), p["resolv.attempts"].as_u64()),
        (Some(2), Some(2), Some(3))
    );
    assert_eq!(p["resolv.single_request_reopen"], true);
    assert!(d["inputs"]["ignored"].as_array().unwrap().iter().any(|n| n.as_str().unwrap().contains("2 nameservers")));
}

#[test]
fn sysctl_bad_values_and_tw_recycle_on_a_kernel_without_it() {
    let file = fx("sysctl-bad-value.txt");
    let line = first_difference(&text("sysctl.txt"), &text("sysctl-bad-value.txt"));
    let err = assert_refused(&["dns", "--sysctl", &file], &file, line);
    assert!(err.contains("key `net.core.somaxconn`:"), "{err}");
    let file = fx("sysctl-tw-recycle.txt");
    let line = line_of(&text("sysctl-tw-recycle.txt"), "net.ipv4.tcp_tw_recycle");
    for scenario in ["dns", "tw-recycle"] {
        let err = assert_refused(&[scenario, "--sysctl", &file, "--kernel", "4.19"], &file, line);
        assert!(err.contains("removed in 4.12"), "{err}");
    }
    // On a kernel that has it, it turns the scenario's server knob on.
    let (d, _) = run_json(&["tw-recycle", "--sysctl", &file, "--set", "server.tw_recycle=false", "--kernel", "4.9"]);
    assert_eq!(d["inputs"]["parameters"]["server.tw_recycle"], false, "--set wins");
    let (d, _) = run_json(&["syn-backlog", "--sysctl", &fx("sysctl.txt"), "--set", "load.connections=600"]);
    let value = |k: &str| -> u64 {
        text("sysctl.txt").lines().find_map(|l| l.strip_prefix(&format!("{k} = "))).unwrap().parse().unwrap()
    };
    let p = &d["inputs"]["parameters"];
    assert_eq!(p["listener.somaxconn"].as_u64(), Some(value("net.core.somaxconn")));
    assert_eq!(p["listener.tcp_max_syn_backlog"].as_u64(), Some(value("net.ipv4.tcp_max_syn_backlog")));
    assert_eq!(p["listener.tcp_syncookies"].as_u64(), Some(value("net.ipv4.tcp_syncookies")));
}

#[test]
fn a_file_that_does_not_apply_is_refused() {
    for (args, flag) in [
        (vec!["run", "snat", "--resolv-conf", "RESOLV"], "--resolv-conf"),
        (vec!["run", "tw-recycle", "--iptables-save", "NAT"], "--iptables-save"),
        (vec!["run", "syn-backlog", "--iptables-save", "NAT"], "--iptables-save"),
    ] {
        let (nat, resolv) = (fx("iptables-save.txt"), fx("resolv.conf"));
        let args: Vec<&str> = args
            .iter()
            .map(|a| {
                if *a == "NAT" {
                    nat.as_str()
                } else if *a == "RESOLV" {
                    resolv.as_str()
                } else {
                    a
                }
            })
            .collect();
        let o = racetrack(&args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with(&format!("racetrack: {flag}: does not apply to the {} scenario", args[1])), "{err}");
    }
}

#[test]
fn the_table_shows_what_the_files_set() {
    let o = racetrack(&["run", "dns", "--iptables-save", &fx("iptables-save.txt"), "--format", "table"]);
    assert!(o.status.success());
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(out.contains("kube-system/kube-dns:dns 10.96.0.10:53/udp → 2 endpoints"), "{out}");
    assert!(out.contains("  service.endpoints = 2"), "{out}");
}
