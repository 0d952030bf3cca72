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
    for kernel in ["3.10", "4.14", "4.19", "5.6", "6.1"] {
        assert!(out.lines().any(|l| l.starts_with(kernel)), "demo lacks {kernel}:\n{out}");
    }
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
