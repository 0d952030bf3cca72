//! What clients saw, summed up the same way in every scenario.

use std::collections::BTreeMap;

use racetrack_engine::Nanos;
use serde::Serialize;

/// What the clients saw (the `clients` output key).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ClientStats {
    /// Requests started: lookups, or connections.
    pub requests: u64,
    /// Requests answered.
    pub ok: u64,
    /// Requests that failed (every retry timed out).
    pub failed: u64,
    /// Requests that needed at least one retry.
    pub retried: u64,
    /// Median latency of the answered ones (ms).
    pub p50_ms: f64,
    /// 99th percentile latency (ms).
    pub p99_ms: f64,
    /// Worst latency (ms).
    pub max_ms: f64,
    /// Requests by the time they spent waiting for timeouts: `"1s"`, `"5s"`, …
    pub retry_classes: BTreeMap<String, u64>,
}

impl ClientStats {
    /// Sum up: `latencies` of the answered requests (ns, any order), and the
    /// retried ones by the time they waited (ns) for timeouts.
    pub fn summarize(
        requests: u64,
        mut latencies: Vec<Nanos>,
        failed: u64,
        retried: u64,
        waited: impl IntoIterator<Item = (Nanos, u64)>,
    ) -> ClientStats {
        latencies.sort_unstable();
        let pct = |p: f64| -> f64 {
            if latencies.is_empty() {
                return 0.0;
            }
            let i = ((p * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len()) - 1;
            latencies[i] as f64 / 1e6
        };
        let mut retry_classes = BTreeMap::new();
        for (ns, n) in waited {
            *retry_classes.entry(format_secs(ns)).or_default() += n;
        }
        ClientStats {
            requests,
            ok: latencies.len() as u64,
            failed,
            retried,
            p50_ms: pct(0.50),
            p99_ms: pct(0.99),
            max_ms: latencies.last().map_or(0.0, |&l| l as f64 / 1e6),
            retry_classes,
        }
    }
}

/// `5s`, `0.5s`.
pub fn format_secs(ns: Nanos) -> String {
    let s = ns as f64 / 1e9;
    if s.fract() == 0.0 {
        format!("{s:.0}s")
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_classes() {
        let lat: Vec<Nanos> = (1..=100).rev().map(|ms| ms * 1_000_000).collect();
        let s = ClientStats::summarize(101, lat, 1, 2, [(5_000_000_000, 1), (500_000_000, 1), (5_000_000_000, 2)]);
        assert_eq!((s.requests, s.ok, s.failed, s.retried), (101, 100, 1, 2));
        assert_eq!((s.p50_ms, s.p99_ms, s.max_ms), (50.0, 99.0, 100.0));
        assert_eq!(s.retry_classes.get("5s"), Some(&3));
        assert_eq!(s.retry_classes.get("0.5s"), Some(&1));
        let empty = ClientStats::summarize(0, vec![], 0, 0, []);
        assert_eq!(empty.p99_ms, 0.0);
    }
}
