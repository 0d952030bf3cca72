//! `racetrack diagnose`: each fixture (real `conntrack -S` and /proc/net/stat
//! layouts from several kernel generations) gets the right reading, bad input
//! exits 2 naming the line, and `run --format conntrack` parses back.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use racetrack_engine::profile::preset;
use racetrack_models::diagnose::{self, Diagnosis, FindingKind, Generation, Kernel, Sample, Severity, Source};
use racetrack_models::dns::{self, DnsScenario};

use FindingKind::*;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/conntrack").join(name)
}

fn sample(name: &str) -> Sample {
    let text = std::fs::read_to_string(fixture(name)).unwrap();
    diagnose::parse(&text, name).unwrap_or_else(|e| panic!("{e}"))
}

fn read(name: &str, kernel: Option<&str>) -> Diagnosis {
    let s = sample(name);
    let k = match kernel {
        Some(k) => Kernel::given(&preset(k).unwrap(), k),
        None => Kernel::infer(&s),
    };
    diagnose::diagnose(&s, k)
}

fn kinds(d: &Diagnosis) -> BTreeSet<FindingKind> {
    d.findings.iter().map(|f| f.kind).collect()
}

fn set<const N: usize>(k: [FindingKind; N]) -> BTreeSet<FindingKind> {
    k.into_iter().collect()
}

#[test]
fn old_kernel_without_drop_is_ambiguous_until_the_kernel_is_given() {
    let d = read("3.10-clash-drops.txt", None);
    assert_eq!(d.kernel.generation, Generation::Before5_10);
    assert_eq!(kinds(&d), set([ClashesAmbiguous]));
    let s = sample("3.10-clash-drops.txt");
    assert!(s.has("searched") && s.has("delete_list"), "the oldest layout: {:?}", s.fields);
    let d = read("3.10-clash-drops.txt", Some("3.10"));
    assert_eq!(d.kernel.generation, Generation::DropOnly);
    assert_eq!(kinds(&d), set([ClashDrops]));
    // On 3.10 every insert_failed is a lost packet.
    let lost = s.total("insert_failed");
    assert!(lost > 0 && s.total("drop") == 0);
    assert!(d.findings[0].reading.contains(&format!("{lost} packets lost")), "{}", d.findings[0].reading);
    assert_eq!(d.findings[0].severity, Severity::Problem);
}

#[test]
fn merges_on_4_19_are_insert_failed_minus_drop() {
    let s = sample("4.19-merges.txt");
    assert!(s.has("ignore") && !s.has("searched") && !s.has("clash_resolve"));
    // insert = 0 beside insert_failed: a 4.9+ kernel (up to 4.8 every insert
    // was counted), so the generation is known without --kernel.
    let d = read("4.19-merges.txt", None);
    assert_eq!(d.kernel.generation, Generation::MergeCountsFailed, "{}", d.kernel.basis);
    assert_eq!(kinds(&d), set([ClashDrops, ResolvedClashes, InsertNotCounted]));
    let d = read("4.19-merges.txt", Some("4.19"));
    assert_eq!(d.kernel.generation, Generation::MergeCountsFailed);
    assert_eq!(kinds(&d), set([ClashDrops, ResolvedClashes, InsertNotCounted]));
    let (ifail, drop) = (s.total("insert_failed"), s.total("drop"));
    let merged = d.findings.iter().find(|f| f.kind == ResolvedClashes).unwrap();
    assert!(merged.evidence.ends_with(&format!("= {}", ifail - drop)), "{}", merged.evidence);
    let lost = d.findings.iter().find(|f| f.kind == ClashDrops).unwrap();
    assert!(lost.reading.contains(&format!("{drop} packets lost")), "{}", lost.reading);
}

#[test]
fn a_healthy_node_is_healthy() {
    let d = read("4.x-healthy.txt", Some("4.19"));
    assert_eq!(kinds(&d), set([ResolvedClashes, Healthy]));
    assert!(d.findings.iter().all(|f| f.severity != Severity::Problem));
    // Inferred: ambiguous but tiny (3e-6 per insert), so only a notice beside healthy.
    let d = read("4.x-healthy.txt", None);
    assert_eq!(kinds(&d), set([ClashesAmbiguous, Healthy]));
    assert!(d.findings.iter().all(|f| f.severity != Severity::Problem));
    let d = read("proc-4.x-healthy.txt", None);
    assert_eq!(d.source, Source::ProcStat);
    assert_eq!(kinds(&d), set([ClashesAmbiguous, Healthy]));
}

/// On 5.10+ an insert_failed without drop is a refused insert (a too long
/// chain the tools do not print, or an extension's check): a lost packet,
/// so a node with many of them per insert is not healthy.
#[test]
fn many_insert_failed_without_drop_on_5_10_is_a_problem_not_healthy() {
    let line = |ifail: u64| {
        format!(
            "cpu=0 found=0 invalid=0 insert=1000000 insert_failed={ifail} drop=0 early_drop=0 error=0 \
             search_restart=0 clash_resolve=3\n"
        )
    };
    let read = |ifail: u64| {
        let s = diagnose::parse(&line(ifail), "stdin").unwrap();
        diagnose::diagnose(&s, Kernel::infer(&s))
    };
    let d = read(4000);
    assert_eq!(d.kernel.generation, Generation::ClashResolve, "{}", d.kernel.basis);
    assert_eq!(kinds(&d), set([ClashesAmbiguous, ResolvedClashes]));
    let ambiguous = d.findings.iter().find(|f| f.kind == ClashesAmbiguous).unwrap();
    assert_eq!(ambiguous.severity, Severity::Problem, "{}", ambiguous.evidence);
    // At 1e-5 per insert or below it is a notice beside healthy.
    let d = read(10);
    assert_eq!(kinds(&d), set([ClashesAmbiguous, ResolvedClashes, Healthy]));
    assert!(d.findings.iter().all(|f| f.severity != Severity::Problem));
}

#[test]
fn a_kernel_the_counters_contradict_is_followed_with_a_note() {
    for (file, kernel, says) in [
        ("5.15-chaintoolong.txt", "4.19", "chaintoolong is printed"),
        ("3.10-clash-drops.txt", "6.12", "ignore is printed"),
        ("proc-5.15-clash-resolve.txt", "4.14", "printed"),
    ] {
        let d = read(file, Some(kernel));
        assert!(d.kernel.basis.contains(says), "{file} --kernel {kernel}: {}", d.kernel.basis);
    }
    // A kernel that fits its counters gets no note.
    for (file, kernel) in
        [("5.15-chaintoolong.txt", "6.6"), ("4.19-merges.txt", "4.19"), ("3.10-clash-drops.txt", "3.10")]
    {
        assert!(!read(file, Some(kernel)).kernel.basis.contains("note"), "{file} --kernel {kernel}");
    }
    let o =
        racetrack(&["diagnose", fixture("5.15-chaintoolong.txt").to_str().unwrap(), "--kernel", "4.19", "--no-verify"]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).starts_with("racetrack: note: "), "{o:?}");
}

#[test]
fn huge_counters_sum_without_wrapping() {
    let line = |cpu: u32| {
        format!(
            "cpu={cpu} found=0 invalid=0 insert=0 insert_failed=18446744073709551615 drop=0 early_drop=0 error=0 \
             search_restart=0\n"
        )
    };
    let s = diagnose::parse(&(line(0) + &line(1)), "stdin").unwrap();
    assert_eq!(s.total("insert_failed"), u64::MAX);
}

#[test]
fn table_full_on_5_10_with_old_tools() {
    let s = sample("5.10-table-full.txt");
    let d = read("5.10-table-full.txt", None);
    assert_eq!(d.kernel.generation, Generation::From5_10, "{}", d.kernel.basis);
    assert_eq!(kinds(&d), set([ClashDrops, TableFull, InsertNotCounted]));
    let full = d.findings.iter().find(|f| f.kind == TableFull).unwrap();
    assert!(full.evidence.contains(&format!("early_drop={}", s.total("early_drop"))));
    // The extra drops are drop minus the unresolved clashes (insert_failed on 5.10+).
    let extra = s.total("drop") - s.total("insert_failed");
    assert!(full.reading.contains(&format!("{extra} packets")), "{}", full.reading);
}

#[test]
fn long_chains_on_5_15_and_unknown1() {
    for name in ["5.15-chaintoolong.txt", "5.15-unknown1.txt"] {
        let s = sample(name);
        assert!(s.has("chaintoolong") && !s.has("unknown1"), "{name}: {:?}", s.fields);
        let d = read(name, None);
        assert_eq!(d.kernel.generation, Generation::ChainLimit, "{name}");
        // insert_failed here is all chaintoolong: no clash drops.
        assert_eq!(kinds(&d), set([LongChains, ResolvedClashes, InsertNotCounted]), "{name}");
        assert_eq!(d.findings[0].kind, LongChains, "problems first");
    }
}

#[test]
fn current_kernel_with_snat_drops_and_no_insert_count() {
    let d = read("6.x-insert0.txt", None);
    assert_eq!(d.kernel.generation, Generation::ChainLimit);
    assert_eq!(kinds(&d), set([ClashDrops, ResolvedClashes, InsertNotCounted]));
    let drops = d.findings.iter().find(|f| f.kind == ClashDrops).unwrap();
    assert!(drops.reproduce.iter().all(|c| c.contains("snat")), "5.10+: UDP does not drop: {:?}", drops.reproduce);
}

#[test]
fn proc_stat_hex_columns_are_read_by_the_header() {
    let s = sample("proc-5.15-clash-resolve.txt");
    assert_eq!(s.source, Source::ProcStat);
    assert_eq!(s.entries, Some(0x3a21));
    assert_eq!(s.total("clash_resolve"), 0x8d1 + 0x902);
    assert_eq!(s.total("insert_failed"), 0x1c + 0x17);
    assert_eq!(s.total("search_restart"), 0x2c11 + 0x2b90);
    let d = read("proc-5.15-clash-resolve.txt", None);
    assert_eq!(d.kernel.generation, Generation::ChainLimit);
    assert_eq!(kinds(&d), set([ClashDrops, ResolvedClashes, InsertNotCounted]));
}

#[test]
fn a_check_quotes_the_scenario_with_and_without_the_mitigation() {
    let profile = preset("4.14").unwrap();
    let mut d = read("4.19-merges.txt", Some("4.14"));
    diagnose::verify(&mut d, &profile);
    let drops = d.findings.iter().find(|f| f.kind == ClashDrops).unwrap();
    let checks = &drops.mitigation.as_ref().unwrap().checks;
    assert_eq!(checks.len(), 2, "DNS and SNAT");
    let dns_check = &checks[0];
    assert!(dns_check.with.contains("single_request_reopen"));
    let base = DnsScenario::default();
    let mut reopen = base.clone();
    reopen.resolv.single_request_reopen = true;
    let (a, b) = (dns::run(&base, profile.clone()), dns::run(&reopen, profile));
    let fig = dns_check.figures.iter().find(|f| f.name == "insert_failed").unwrap();
    assert_eq!((fig.without, fig.with), (a.conntrack["insert_failed"] as f64, b.conntrack["insert_failed"] as f64));
    assert!(fig.without > 0.0, "4.14 drops DNAT races");
    assert_eq!(dns_check.helps, b.clients.retried < a.clients.retried);
    assert!(dns_check.helps);
}

// ----- the binary -----------------------------------------------------------------

fn racetrack(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_racetrack")).args(args).output().expect("run racetrack")
}

fn racetrack_stdin(args: &[&str], input: &str) -> Output {
    use std::io::Write;
    let mut c = Command::new(env!("CARGO_BIN_EXE_racetrack"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    c.wait_with_output().unwrap()
}

fn temp(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("racetrack-diagnose-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v
}

fn one_line_error(o: &Output, starts: &str) {
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with(&format!("racetrack: {starts}")), "{err}");
}

#[test]
fn bad_input_names_the_file_and_line() {
    let cases = [
        ("garbage.txt", "hello\n", "garbage.txt:1: neither"),
        ("badnum.txt", "cpu=0   \tfound=0 invalid=x \n", "badnum.txt:1: `invalid=x`"),
        ("unknown.txt", "\ncpu=0   \tfound=0 bogus=1 \n", "unknown.txt:2: unknown counter `bogus`"),
        ("mixed.txt", "cpu=0   \tfound=0 drop=1 \ncpu=1   \tfound=0 \n", "mixed.txt:2: the counters differ"),
        ("dup.txt", "cpu=0   \tfound=0 \ncpu=0   \tfound=1 \n", "dup.txt:2: cpu=0 appears twice"),
        ("empty.txt", "", "empty.txt:1: empty"),
        ("proc.txt", "entries  found insert\n00000001 00000002\n", "proc.txt:2: 2 columns, the header has 3"),
        ("prochex.txt", "entries  found\n0000000g 00000002\n", "prochex.txt:2: `0000000g`"),
    ];
    for (name, text, want) in cases {
        let p = temp(name, text);
        let o = racetrack(&["diagnose", p.to_str().unwrap(), "--no-verify"]);
        let want = want.replacen(name, p.to_str().unwrap(), 1);
        one_line_error(&o, &want);
    }
    one_line_error(&racetrack(&["diagnose", "/nonexistent/stats"]), "/nonexistent/stats: cannot read");
    let f = fixture("4.x-healthy.txt");
    one_line_error(
        &racetrack(&["diagnose", f.to_str().unwrap(), "--format", "csv"]),
        "invalid value 'csv' for '--format",
    );
    one_line_error(&racetrack(&["diagnose", f.to_str().unwrap(), "--kernel", "9.99"]), "9.99");
}

#[test]
fn exit_code_is_0_unless_check_is_asked() {
    let bad = fixture("3.10-clash-drops.txt");
    let good = fixture("4.x-healthy.txt");
    let o = racetrack(&["diagnose", bad.to_str().unwrap(), "--kernel", "3.10", "--no-verify"]);
    assert_eq!(o.status.code(), Some(0));
    let o = racetrack(&["diagnose", bad.to_str().unwrap(), "--kernel", "3.10", "--no-verify", "--check"]);
    assert_eq!(o.status.code(), Some(1));
    let o = racetrack(&["diagnose", good.to_str().unwrap(), "--no-verify", "--check"]);
    assert_eq!(o.status.code(), Some(0));
}

#[test]
fn stdin_and_json() {
    let text = std::fs::read_to_string(fixture("6.x-insert0.txt")).unwrap();
    let v = json(&racetrack_stdin(&["diagnose", "-", "--no-verify", "--format", "json"], &text));
    assert_eq!(v["type"], "diagnosis");
    assert_eq!(v["data"]["kernel"]["generation"], "5.15+");
    assert_eq!(v["data"]["source"], "conntrack-s");
    let kinds: Vec<&str> =
        v["data"]["findings"].as_array().unwrap().iter().map(|f| f["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["clash-drops", "resolved-clashes", "insert-not-counted"]);
}

/// `run --format conntrack` → `diagnose` gives back the run's counters.
#[test]
fn run_output_in_conntrack_format_parses_back() {
    for (kernel, generation, kind) in [("4.14", "4.7-5.9", "clash-drops"), ("6.12", "5.15+", "resolved-clashes")] {
        let summary = json(&racetrack(&["run", "dns", "--kernel", kernel, "--format", "json"]));
        let o = racetrack(&["run", "dns", "--kernel", kernel, "--format", "conntrack"]);
        assert!(o.status.success());
        let p = temp(&format!("run-{kernel}.txt"), &String::from_utf8(o.stdout).unwrap());
        let v = json(&racetrack(&["diagnose", p.to_str().unwrap(), "--no-verify", "--format", "json"]));
        let d = &v["data"];
        assert_eq!(d["kernel"]["generation"], generation, "{kernel}");
        assert_eq!(d["cpus"], summary["data"]["per_cpu"].as_array().unwrap().len());
        for (name, value) in d["totals"].as_object().unwrap() {
            let want = summary["data"]["conntrack"].get(name).cloned().unwrap_or(0.into());
            assert_eq!(value, &want, "{kernel}: {name}");
        }
        let kinds: Vec<&str> = d["findings"].as_array().unwrap().iter().map(|f| f["kind"].as_str().unwrap()).collect();
        assert!(kinds.contains(&kind), "{kernel}: {kinds:?}");
        // Given the kernel, the run's own profile reads it.
        let v =
            json(&racetrack(&["diagnose", p.to_str().unwrap(), "--kernel", kernel, "--no-verify", "--format", "json"]));
        assert_eq!(v["data"]["kernel"]["profile"], kernel);
    }
}

/// For every preset: the simulated node's counters, printed as `conntrack -S` and
/// read back with that preset, give `clash-drops` exactly when the simulated
/// clients lost queries, and the inferred generation agrees with the profile's.
#[test]
fn the_reading_of_simulated_counters_agrees_with_what_the_clients_saw() {
    for name in racetrack_engine::profile::preset_names() {
        let p = preset(&name).unwrap();
        let args = ["run", "dns", "--kernel", &name, "--set", "service.endpoints=3", "--format"];
        let summary = json(&racetrack(&[&args[..], &["json"]].concat()));
        let o = racetrack(&[&args[..], &["conntrack"]].concat());
        let file = temp(&format!("preset-{name}.txt"), &String::from_utf8(o.stdout).unwrap());
        let file = file.to_str().unwrap();
        let given = json(&racetrack(&["diagnose", file, "--kernel", &name, "--no-verify", "--format", "json"]));
        let kinds: Vec<String> = given["data"]["findings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["kind"].as_str().unwrap().to_string())
            .collect();
        let lost = summary["data"]["clients"]["retried"].as_u64().unwrap() > 0;
        assert_eq!(
            kinds.contains(&"clash-drops".to_string()),
            lost,
            "{name}: {kinds:?} {}",
            summary["data"]["clients"]
        );
        assert_eq!(kinds.contains(&"healthy".to_string()), !lost, "{name}: {kinds:?}");
        let inferred = json(&racetrack(&["diagnose", file, "--no-verify", "--format", "json"]));
        let want = match Generation::of(&p) {
            // insert = 0 beside insert_failed tells 4.9+ from the kernels that count inserts.
            Generation::MergeCountsFailed if !p.counters.insert => "4.7-5.9",
            Generation::DropOnly | Generation::MergeCountsFailed => "before-5.10",
            Generation::ClashResolve => "5.10-5.14",
            Generation::ChainLimit => "5.15+",
            g => panic!("{name}: a profile has no {g:?}"),
        };
        assert_eq!(inferred["data"]["kernel"]["generation"], want, "{name}");
    }
}
