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
    pub retry_classes: RetryClasses,
    /// Latency of the answered requests in fixed buckets (the `prom` format's histogram).
    pub latency_histogram: LatencyHistogram,
}

/// Upper bounds of the latency histogram's buckets: the bound as printed (seconds) and in ns.
///
/// Sub-millisecond bounds resolve a clean lookup; the bounds above 1 s put each retry
/// class in its own bucket (SYN retransmissions after 1, 3, 7 s; resolver timeouts of
/// 2.5 s (musl), 5, 10, 15 s), since a retried request takes the wait plus a little more.
pub const LATENCY_BUCKETS: [(&str, Nanos); 19] = [
    ("0.00025", 250_000),
    ("0.0005", 500_000),
    ("0.001", 1_000_000),
    ("0.0025", 2_500_000),
    ("0.005", 5_000_000),
    ("0.01", 10_000_000),
    ("0.025", 25_000_000),
    ("0.05", 50_000_000),
    ("0.1", 100_000_000),
    ("0.25", 250_000_000),
    ("0.5", 500_000_000),
    ("1", 1_000_000_000),
    ("2.5", 2_500_000_000),
    ("5", 5_000_000_000),
    ("7.5", 7_500_000_000),
    ("10", 10_000_000_000),
    ("15", 15_000_000_000),
    ("30", 30_000_000_000),
    ("60", 60_000_000_000),
];

/// A cumulative latency histogram with the fixed bounds of [`LATENCY_BUCKETS`], as
/// Prometheus histograms are: each bucket counts the requests at or below its bound.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LatencyHistogram {
    /// Answered requests with latency ≤ the bound, keyed by the bound in seconds, in
    /// ascending order (the `+Inf` bucket is `count`).
    #[serde(serialize_with = "ordered_map")]
    pub buckets: Vec<(&'static str, u64)>,
    /// Sum of the latencies (s).
    pub sum_s: f64,
    /// Answered requests.
    pub count: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::of(&[])
    }
}

impl LatencyHistogram {
    /// The histogram of `latencies` (ns), in any order.
    pub fn of(latencies: &[Nanos]) -> Self {
        // Each latency counts in the first bucket whose bound it does not
        // exceed (index 19: above every bound); the running sum makes them cumulative.
        let mut first = [0u64; LATENCY_BUCKETS.len() + 1];
        for &l in latencies {
            first[LATENCY_BUCKETS.partition_point(|b| b.1 < l)] += 1;
        }
        let mut below = 0;
        let buckets = LATENCY_BUCKETS
            .iter()
            .zip(first)
            .map(|(&(le, _), n)| {
                below += n;
                (le, below)
            })
            .collect();
        let sum_ns: u128 = latencies.iter().map(|&l| u128::from(l)).sum();
        Self { buckets, sum_s: sum_ns as f64 / 1e9, count: latencies.len() as u64 }
    }
}

fn ordered_map<S: serde::Serializer>(pairs: &[(&'static str, u64)], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(Some(pairs.len()))?;
    for (k, v) in pairs {
        m.serialize_entry(k, v)?;
    }
    m.end()
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
        // The percentiles are order statistics: selecting them costs a few
        // passes where sorting 10^4..10^7 latencies cost most of a summary.
        let n = latencies.len();
        let rank = |p: f64| ((p * n as f64).ceil() as usize).clamp(1, n) - 1;
        let (p50_ms, p99_ms, max_ms) = if n == 0 {
            (0.0, 0.0, 0.0)
        } else {
            let (i50, i99) = (rank(0.50), rank(0.99));
            let p99 = *latencies.select_nth_unstable(i99).1;
            // The first i99 + 1 are now the smallest ones, and i50 <= i99.
            let p50 = *latencies[..=i99].select_nth_unstable(i50).1;
            let max = latencies.iter().copied().max().unwrap_or(0);
            (p50 as f64 / 1e6, p99 as f64 / 1e6, max as f64 / 1e6)
        };
        let mut retry_classes = RetryClasses::default();
        for (ns, n) in waited {
            *retry_classes.0.entry(ns).or_default() += n;
        }
        ClientStats {
            requests,
            ok: n as u64,
            failed,
            retried,
            p50_ms,
            p99_ms,
            max_ms,
            retry_classes,
            latency_histogram: LatencyHistogram::of(&latencies),
        }
    }
}

/// Retried requests by the time they waited, shortest wait first: named
/// `"5s"`, `"10s"`, … but kept in time order (as strings `"10s"` would sort
/// before `"5s"`), in the table, JSON and CSV alike.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RetryClasses(BTreeMap<Nanos, u64>);

impl RetryClasses {
    /// The requests of one class, by its name (`"5s"`).
    pub fn get(&self, class: &str) -> Option<&u64> {
        self.0.iter().find(|(ns, _)| format_secs(**ns) == class).map(|(_, n)| n)
    }

    /// Whether any request waited this long.
    pub fn contains_key(&self, class: &str) -> bool {
        self.get(class).is_some()
    }

    /// No request was retried.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Each class's name and requests, shortest wait first.
    pub fn iter(&self) -> impl Iterator<Item = (String, u64)> + '_ {
        self.0.iter().map(|(ns, n)| (format_secs(*ns), *n))
    }
}

impl Serialize for RetryClasses {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
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
        let names: Vec<String> = s.retry_classes.iter().map(|(k, _)| k).collect();
        assert_eq!(names, ["0.5s", "5s"], "shortest wait first");
        let more =
            ClientStats::summarize(3, vec![], 0, 3, [(10_000_000_000, 1), (5_000_000_000, 1), (15_000_000_000, 1)]);
        let json = serde_json::to_string(&more.retry_classes).unwrap();
        assert_eq!(json, r#"{"5s":1,"10s":1,"15s":1}"#);
        let empty = ClientStats::summarize(0, vec![], 0, 0, []);
        assert_eq!(empty.p99_ms, 0.0);
        assert_eq!(empty.latency_histogram.count, 0);
    }

    proptest::proptest! {
        /// Selecting the percentiles and bucketing unsorted latencies gives what
        /// sorting them and reading positions gives.
        #[test]
        fn summary_equals_the_sorted_reading(lat in proptest::collection::vec(0u64..20_000_000_000, 1..500)) {
            let s = ClientStats::summarize(lat.len() as u64, lat.clone(), 0, 0, []);
            let mut sorted = lat.clone();
            sorted.sort_unstable();
            let at = |p: f64| sorted[((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1] as f64 / 1e6;
            proptest::prop_assert_eq!((s.p50_ms, s.p99_ms), (at(0.50), at(0.99)));
            proptest::prop_assert_eq!(s.max_ms, *sorted.last().unwrap() as f64 / 1e6);
            for (&(le, count), &(_, ns)) in s.latency_histogram.buckets.iter().zip(LATENCY_BUCKETS.iter()) {
                proptest::prop_assert_eq!(count, sorted.iter().filter(|&&l| l <= ns).count() as u64, "bucket {}", le);
            }
        }
    }

    #[test]
    fn histogram_is_cumulative_and_bounds_are_inclusive() {
        // 1 ms exactly (on a bound), 5.0005 s (a 5 s retry), 70 s (past every bound).
        let lat = vec![70_000_000_000, 1_000_000, 5_000_500_000];
        let h = ClientStats::summarize(3, lat, 0, 1, []).latency_histogram;
        assert_eq!(h.count, 3);
        assert!((h.sum_s - 75.0015).abs() < 1e-9, "{}", h.sum_s);
        let at = |le: &str| h.buckets.iter().find(|b| b.0 == le).unwrap().1;
        assert_eq!((at("0.0005"), at("0.001"), at("5"), at("7.5"), at("60")), (0, 1, 1, 2, 2));
        assert!(h.buckets.windows(2).all(|w| w[0].1 <= w[1].1));
        // The printed bounds and the ns bounds agree.
        for (le, ns) in LATENCY_BUCKETS {
            assert_eq!((le.parse::<f64>().unwrap() * 1e9).round() as Nanos, ns);
        }
    }
}
