//! The statistics parser: never panics on any text, and reads back exactly what
//! a well-formed `conntrack -S` or /proc/net/stat/nf_conntrack text holds.

use proptest::prelude::*;
use racetrack_models::diagnose::{self, Source};

const NAMES: [&str; 10] = [
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
];

/// Pieces real files are made of, shuffled into nonsense.
fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("cpu=".to_string()),
        Just("entries".to_string()),
        Just("=".to_string()),
        Just("\t".to_string()),
        Just(" ".to_string()),
        Just("\n".to_string()),
        Just("\r\n".to_string()),
        proptest::sample::select(NAMES.to_vec()).prop_map(str::to_string),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<u32>().prop_map(|n| format!("{n:08x}")),
        "[ -~]{0,6}",
        "\\PC{0,3}",
    ]
}

proptest! {
    #[test]
    fn never_panics(parts in proptest::collection::vec(piece(), 0..40)) {
        let text: String = parts.concat();
        if let Err(e) = diagnose::parse(&text, "x.txt") {
            let line = e.line;
            prop_assert!(line >= 1 && line <= text.lines().count().max(1), "line {line} of {text:?}");
            let prefix = format!("x.txt:{line}: ");
            prop_assert!(e.to_string().starts_with(&prefix), "{}", e);
        }
    }

    #[test]
    fn conntrack_s_reads_back(rows in proptest::collection::vec(proptest::collection::vec(0u64..u32::MAX as u64, NAMES.len()), 1..8)) {
        let mut text = String::new();
        for (cpu, r) in rows.iter().enumerate() {
            text.push_str(&format!("cpu={cpu:<4}\t"));
            for (n, v) in NAMES.iter().zip(r) {
                text.push_str(&format!("{n}={v} "));
            }
            text.push('\n');
        }
        let s = diagnose::parse(&text, "s").unwrap();
        prop_assert_eq!(s.source, Source::ConntrackS);
        prop_assert_eq!(s.cpus.len(), rows.len());
        for (i, n) in NAMES.iter().enumerate() {
            prop_assert_eq!(s.total(n), rows.iter().map(|r| r[i]).sum::<u64>());
        }
    }

    #[test]
    fn proc_reads_back(rows in proptest::collection::vec(proptest::collection::vec(0u64..u32::MAX as u64, 17), 1..8)) {
        let header = "entries  clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop icmp_error  expect_new expect_create expect_delete search_restart";
        let mut text = format!("{header}\n");
        for r in &rows {
            let cells: Vec<String> = r.iter().map(|v| format!("{v:08x}")).collect();
            text.push_str(&cells.join(" "));
            text.push('\n');
        }
        let s = diagnose::parse(&text, "p").unwrap();
        prop_assert_eq!(s.source, Source::ProcStat);
        prop_assert_eq!(s.entries, Some(rows.last().unwrap()[0]));
        let col = |i: usize| rows.iter().map(|r| r[i]).sum::<u64>();
        prop_assert_eq!(s.total("clash_resolve"), col(1));
        prop_assert_eq!(s.total("chaintoolong"), col(7));
        prop_assert_eq!(s.total("insert_failed"), col(9));
        prop_assert_eq!(s.total("error"), col(12));
        prop_assert_eq!(s.total("search_restart"), col(16));
    }
}
