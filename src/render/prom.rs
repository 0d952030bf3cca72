//! `--format prom`: the Prometheus text exposition format.
//!
//! The summed counters carry node_exporter's names, types and help texts (its
//! `conntrack` collector), so a dashboard or alert written for real nodes reads a
//! racetrack run unchanged. racetrack's own metrics add the per-CPU counters and,
//! for client-driven scenarios, the clients' latency histogram.

use std::fmt::Write as _;
use std::io::{self, Write};

use racetrack_models::clients::ClientStats;

use super::Counters;

/// node_exporter's summed statistics: (counter, help text).
const NODE_STATS: [(&str, &str); 7] = [
    ("found", "Number of searched entries which were successful."),
    ("invalid", "Number of packets seen which can not be tracked."),
    ("insert", "Number of entries inserted into the list."),
    ("insert_failed", "Number of entries for which list insertion was attempted but failed."),
    ("drop", "Number of packets dropped due to conntrack failure."),
    ("early_drop", "Number of dropped conntrack entries to make room for new ones, if maximum table size was reached."),
    ("search_restart", "Number of conntrack table lookups which had to be restarted due to hashtable resizes."),
];

/// Everything one exposition holds.
pub struct Exposition<'a> {
    /// The counters.
    pub counters: Counters<'a>,
    /// Labels of `racetrack_run_info` (`scenario`, `kernel`, `seed`, …).
    pub info: Vec<(&'static str, String)>,
    /// The clients, for client-driven scenarios.
    pub clients: Option<&'a ClientStats>,
}

/// Escape a label value (backslash, double quote, newline).
pub(crate) fn label(v: &str) -> String {
    v.replace('\\', r"\\").replace('"', "\\\"").replace('\n', r"\n")
}

/// `# HELP` and `# TYPE` of a metric family.
pub(crate) fn family(s: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(s, "# HELP {name} {help}");
    let _ = writeln!(s, "# TYPE {name} {kind}");
}

/// Render the exposition.
pub fn render(e: &Exposition<'_>) -> String {
    let c = &e.counters;
    let mut s = String::new();
    family(
        &mut s,
        "node_nf_conntrack_entries",
        "gauge",
        "Number of currently allocated flow entries for connection tracking.",
    );
    let _ = writeln!(s, "node_nf_conntrack_entries {}", c.entries);
    family(&mut s, "node_nf_conntrack_entries_limit", "gauge", "Maximum size of connection tracking table.");
    let _ = writeln!(s, "node_nf_conntrack_entries_limit {}", c.profile.conntrack.max);
    for (stat, help) in NODE_STATS {
        // node_exporter exposes these sums as gauges; keep its type so queries match.
        let name = format!("node_nf_conntrack_stat_{stat}");
        family(&mut s, &name, "gauge", help);
        let _ = writeln!(s, "{name} {}", c.total(stat));
    }
    let info: Vec<String> = e.info.iter().map(|(k, v)| format!("{k}=\"{}\"", label(v))).collect();
    family(&mut s, "racetrack_run_info", "gauge", "What ran: scenario or workload, kernel profile, seed. Always 1.");
    let _ = writeln!(s, "racetrack_run_info{{{}}} 1", info.join(","));
    for stat in c.printed() {
        if stat == "ignore" {
            continue; // not modelled
        }
        let name = format!("racetrack_conntrack_stat_{stat}_total");
        family(&mut s, &name, "counter", &format!("The conntrack -S {stat} counter, per CPU."));
        for (cpu, m) in c.per_cpu.iter().enumerate() {
            let _ = writeln!(s, "{name}{{cpu=\"{cpu}\"}} {}", m.get(stat).copied().unwrap_or(0));
        }
    }
    if let Some(cl) = e.clients {
        for (name, help, v) in [
            ("racetrack_client_requests_total", "Requests the clients started (lookups or connections).", cl.requests),
            ("racetrack_client_requests_failed_total", "Requests that failed after every retry.", cl.failed),
            ("racetrack_client_requests_retried_total", "Requests that waited at least one timeout.", cl.retried),
        ] {
            family(&mut s, name, "counter", help);
            let _ = writeln!(s, "{name} {v}");
        }
        let h = &cl.latency_histogram;
        let name = "racetrack_client_request_duration_seconds";
        family(&mut s, name, "histogram", "Latency of the answered requests, timeouts and retries included.");
        for (le, n) in &h.buckets {
            let _ = writeln!(s, "{name}_bucket{{le=\"{le}\"}} {n}");
        }
        let _ = writeln!(s, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(s, "{name}_sum {}", h.sum_s);
        let _ = writeln!(s, "{name}_count {}", h.count);
    }
    s
}

/// Write the exposition.
pub fn write<W: Write>(out: &mut W, e: &Exposition<'_>) -> io::Result<()> {
    out.write_all(render(e).as_bytes())
}
