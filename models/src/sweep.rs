//! Parameter sweeps: a grid of scenario variants × kernels × seeds, run in
//! parallel, summarised per point as a mean with a 95 % confidence interval.
//!
//! Everything here is pure and deterministic: the runs are independent
//! simulations, and results are put back in grid order whatever order the
//! worker threads finish them in. Timing and progress display belong to the
//! caller (a progress callback is the only hook).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use racetrack_engine::KernelProfile;
use statrs::distribution::{ContinuousCDF, StudentsT};

use crate::params::ParamError;
use crate::scenario::{Report, Scenario};

/// Most values one `--over` range may expand to.
pub const MAX_AXIS_VALUES: usize = 10_000;

/// One `--over KEY=V1,V2,...`: a scenario key and the values it takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Axis {
    /// Dotted scenario key, as `--set` takes it.
    pub key: String,
    /// Values in the order given, each as `--set` would read it.
    pub values: Vec<String>,
}

fn over_error(key: Option<&str>, message: String) -> ParamError {
    ParamError { source: "--over".into(), line: None, key: key.map(str::to_string), message }
}

impl Axis {
    /// Parse `KEY=V1,V2,...`. A value may be a range `FROM..TO:STEP`
    /// (inclusive of `TO` when a step lands on it): `100..1000:100`.
    /// Commas inside `[...]` or quotes do not split values.
    pub fn parse(spec: &str) -> Result<Axis, ParamError> {
        let Some((key, list)) = spec.split_once('=') else {
            return Err(over_error(None, format!("`{spec}` is not KEY=V1,V2,...")));
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(over_error(None, format!("`{spec}` has no key before `=`")));
        }
        if key == "seed" {
            return Err(over_error(Some(key), "sweep seeds with --seeds K and --seed N, not --over".into()));
        }
        let mut values = Vec::new();
        for item in split_top_level(list) {
            let item = item.trim();
            if item.is_empty() {
                return Err(over_error(Some(key), format!("empty value in `{list}`")));
            }
            match parse_range(item) {
                Some(range) => values.extend(range.map_err(|m| over_error(Some(key), format!("`{item}`: {m}")))?),
                None => values.push(item.to_string()),
            }
            if values.len() > MAX_AXIS_VALUES {
                return Err(over_error(Some(key), format!("more than {MAX_AXIS_VALUES} values")));
            }
        }
        for (i, v) in values.iter().enumerate() {
            if values[..i].contains(v) {
                return Err(over_error(Some(key), format!("value `{v}` given twice")));
            }
        }
        Ok(Axis { key: key.to_string(), values })
    }

    /// The `KEY=VALUE` override for value `i`.
    pub fn set(&self, i: usize) -> String {
        format!("{}={}", self.key, self.values[i])
    }
}

/// Split on commas that are not inside brackets or quotes.
fn split_top_level(s: &str) -> Vec<&str> {
    let (mut out, mut depth, mut quote, mut start) = (Vec::new(), 0i32, None::<char>, 0);
    for (i, c) in s.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '[' | '{') => depth += 1,
            (None, ']' | '}') => depth -= 1,
            (None, ',') if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// `FROM..TO:STEP` → its values; `None` when `item` is not a range at all.
fn parse_range(item: &str) -> Option<Result<Vec<String>, String>> {
    let (from, rest) = item.split_once("..")?;
    let (to, step) = rest.split_once(':').unwrap_or((rest, "1"));
    let num = |s: &str| s.trim().parse::<f64>().ok().filter(|v| v.is_finite());
    let (Some(a), Some(b), Some(d)) = (num(from), num(to), num(step)) else {
        return Some(duration_range(from, to, step).unwrap_or_else(|| {
            Err("a range is FROM..TO:STEP with numbers (100..1000:100) or durations (100us..1ms:100us)".into())
        }));
    };
    if d <= 0.0 {
        return Some(Err("the step must be positive".into()));
    }
    if b < a {
        return Some(Err("TO is smaller than FROM".into()));
    }
    let steps = ((b - a) / d + 1e-9).floor();
    if steps >= MAX_AXIS_VALUES as f64 {
        return Some(Err(format!("more than {MAX_AXIS_VALUES} values")));
    }
    // Print with as many decimals as the bounds and step were written with,
    // so 0.1..0.3:0.1 gives 0.1, 0.2, 0.3 and not 0.30000000000000004.
    let decimals = [from, step].iter().map(|s| s.trim().split_once('.').map_or(0, |(_, f)| f.len())).max().unwrap_or(0);
    let values = (0..=steps as usize).map(|i| format!("{:.*}", decimals, a + i as f64 * d)).collect();
    Some(Ok(values))
}

/// `100us..1ms:100us` → `100us`, `200us`, …, `1000us`, in the largest unit
/// that writes every value as a whole number.
fn duration_range(from: &str, to: &str, step: &str) -> Option<Result<Vec<String>, String>> {
    let ns = |s: &str| {
        humantime_serde::re::humantime::parse_duration(s.trim()).ok().and_then(|d| u64::try_from(d.as_nanos()).ok())
    };
    let (a, b, d) = (ns(from)?, ns(to)?, ns(step)?);
    if d == 0 {
        return Some(Err("the step must be positive".into()));
    }
    if b < a {
        return Some(Err("TO is smaller than FROM".into()));
    }
    if (b - a) / d >= MAX_AXIS_VALUES as u64 {
        return Some(Err(format!("more than {MAX_AXIS_VALUES} values")));
    }
    let (unit, scale) = [("s", 1_000_000_000), ("ms", 1_000_000), ("us", 1_000), ("ns", 1)]
        .into_iter()
        .find(|(_, k)| a % k == 0 && d % k == 0)
        .expect("every duration is whole nanoseconds");
    Some(Ok((0..=(b - a) / d).map(|i| format!("{}{unit}", (a + i * d) / scale)).collect()))
}

/// One grid point: a value of every axis, and a kernel.
#[derive(Clone, Debug)]
pub struct Point {
    /// Index into each axis's values, in axis order.
    pub values: Vec<usize>,
    /// Index into [`Sweep::kernels`].
    pub kernel: usize,
    /// The scenario with every override of this point applied (its seed is
    /// replaced per run).
    pub scenario: Scenario,
}

/// A kernel of the sweep: how the user named it, and the profile.
#[derive(Clone, Debug)]
pub struct SweepKernel {
    /// As given to `--kernel` (a preset name or a file).
    pub label: String,
    /// The loaded profile.
    pub profile: KernelProfile,
}

/// A validated sweep, ready to run.
#[derive(Clone, Debug)]
pub struct Sweep {
    /// The `--over` axes, first one outermost.
    pub axes: Vec<Axis>,
    /// Kernels, innermost loop of the grid.
    pub kernels: Vec<SweepKernel>,
    /// Seeds of every point, in order.
    pub seeds: Vec<u64>,
    /// Points in grid order: the first axis varies slowest, the kernel fastest.
    pub points: Vec<Point>,
}

impl Sweep {
    /// Expand the grid and check every point before anything runs: each
    /// axis value through the same rules as `--set`, and each point against
    /// each kernel. `base` already carries the user's `--set` overrides.
    pub fn new(
        base: &Scenario,
        axes: Vec<Axis>,
        kernels: Vec<SweepKernel>,
        first_seed: u64,
        seed_count: usize,
    ) -> Result<Sweep, ParamError> {
        if axes.is_empty() {
            return Err(over_error(None, "a sweep needs at least one --over KEY=V1,V2,...".into()));
        }
        for (i, a) in axes.iter().enumerate() {
            if axes[..i].iter().any(|b| b.key == a.key) {
                return Err(over_error(Some(&a.key), "swept twice; give all its values in one --over".into()));
            }
        }
        if seed_count == 0 {
            return Err(ParamError {
                source: "--seeds".into(),
                line: None,
                key: None,
                message: "must be at least 1".into(),
            });
        }
        let seeds = (0..seed_count as u64).map(|i| first_seed.wrapping_add(i)).collect();
        let mut points = Vec::new();
        for combo in cartesian(&axes.iter().map(|a| a.values.len()).collect::<Vec<_>>()) {
            let sets: Vec<String> = axes.iter().zip(&combo).map(|(a, &i)| a.set(i)).collect();
            let at = sets.join(", ");
            let scenario = base.with_sets(&sets).map_err(|e| ParamError {
                source: "--over".into(),
                message: format!("{} (at {at})", e.message),
                ..e
            })?;
            for (k, kernel) in kernels.iter().enumerate() {
                scenario.check(&kernel.profile).map_err(|(key, why)| ParamError {
                    source: format!("--kernel {}", kernel.label),
                    line: None,
                    key: Some(key),
                    message: format!("{why} (at {at})"),
                })?;
                points.push(Point { values: combo.clone(), kernel: k, scenario: scenario.clone() });
            }
        }
        Ok(Sweep { axes, kernels, seeds, points })
    }

    /// Number of scenario runs: points × seeds.
    pub fn runs(&self) -> usize {
        self.points.len() * self.seeds.len()
    }

    /// Run number `i` (point `i / seeds`, seed `i % seeds`) and take its metrics.
    pub fn run_one(&self, i: usize) -> Sample {
        let point = &self.points[i / self.seeds.len()];
        let mut s = point.scenario.clone();
        s.set_seed(self.seeds[i % self.seeds.len()]);
        metrics(&s.run(self.kernels[point.kernel].profile.clone()))
    }

    /// Run every run not already in `done` (run index → sample) on
    /// `threads` threads; `progress` is called once per finished run, from
    /// the worker thread. Returns the samples in run order.
    pub fn run_all(
        &self,
        threads: usize,
        mut done: BTreeMap<usize, Sample>,
        progress: &(dyn Fn() + Sync),
    ) -> Vec<Sample> {
        let todo: Vec<usize> = (0..self.runs()).filter(|i| !done.contains_key(i)).collect();
        // Workers take the next run from a shared index, so a slow point
        // does not hold up a whole chunk; order is restored by run index.
        let next = AtomicUsize::new(0);
        let threads = threads.clamp(1, todo.len().max(1));
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    scope.spawn(|| {
                        let mut mine = Vec::new();
                        loop {
                            let j = next.fetch_add(1, Ordering::Relaxed);
                            let Some(&i) = todo.get(j) else { break };
                            mine.push((i, self.run_one(i)));
                            progress();
                        }
                        mine
                    })
                })
                .collect();
            for w in workers {
                done.extend(w.join().expect("a sweep run panicked"));
            }
        });
        done.into_values().collect()
    }

    /// Aggregate samples (in run order) per point for the metric keys.
    pub fn aggregate(&self, samples: &[Sample], keys: &[String]) -> Vec<PointStats> {
        let k = self.seeds.len();
        samples
            .chunks(k)
            .map(|runs| PointStats {
                metrics: keys
                    .iter()
                    .map(|key| {
                        let values: Vec<f64> = runs.iter().map(|s| s.get(key)).collect();
                        (key.clone(), Interval::t95(&values))
                    })
                    .collect(),
            })
            .collect()
    }
}

/// Index tuples of the cartesian product, the first dimension slowest.
pub fn cartesian(sizes: &[usize]) -> Vec<Vec<usize>> {
    let mut out = vec![Vec::new()];
    for &n in sizes {
        out = out.into_iter().flat_map(|prefix| (0..n).map(move |i| [prefix.clone(), vec![i]].concat())).collect();
    }
    out
}

/// The numbers of one run: every numeric key of its JSON summary (dotted,
/// arrays left out), plus the derived shares of [`DERIVED`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample(pub BTreeMap<String, f64>);

/// Keys whose absence in a run means zero: histograms that only list what occurred.
pub const ZERO_WHEN_ABSENT: &[&str] = &["clients.retry_classes.", "snat.probes."];

/// Derived metrics: key, numerator, denominator (all keys of the summary).
pub const DERIVED: &[(&str, &str, &str)] = &[
    ("clients.retried_share", "clients.retried", "clients.requests"),
    ("clients.failed_share", "clients.failed", "clients.requests"),
    ("conntrack.insert_failed_share", "conntrack.insert_failed", "clients.requests"),
];

impl Sample {
    /// The value of `key`; 0 for a histogram bucket this run did not have.
    pub fn get(&self, key: &str) -> f64 {
        self.0.get(key).copied().unwrap_or(0.0)
    }
}

/// Flatten a run's report into a [`Sample`].
pub fn metrics(report: &Report) -> Sample {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, f64>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    walk(&key, v, out);
                }
            }
            serde_json::Value::Number(n) => {
                if let Some(x) = n.as_f64() {
                    out.insert(prefix.to_string(), x);
                }
            }
            _ => {}
        }
    }
    let mut out = BTreeMap::new();
    walk("", &serde_json::to_value(report).expect("reports serialise"), &mut out);
    out.remove("seed");
    for (key, num, den) in DERIVED {
        if let (Some(n), Some(d)) = (out.get(*num), out.get(*den)) {
            let share = if *d == 0.0 { 0.0 } else { n / d };
            out.insert(key.to_string(), share);
        }
    }
    Sample(out)
}

/// Check a `--metric` key against a sample run; the error lists what exists.
pub fn check_metric(key: &str, sample: &Sample) -> Result<(), String> {
    if sample.0.contains_key(key) || ZERO_WHEN_ABSENT.iter().any(|p| key.starts_with(p) && key.len() > p.len()) {
        return Ok(());
    }
    // Families of numbered keys are shown once each, as a pattern.
    const FAMILIES: &[(&str, &str)] = &[
        ("snat.probes.", "snat.probes.N"),
        ("clients.latency_histogram.buckets.", "clients.latency_histogram.buckets.BOUND"),
    ];
    let mut known: Vec<&str> = sample
        .0
        .keys()
        .map(String::as_str)
        .filter(|k| !FAMILIES.iter().any(|(prefix, _)| k.starts_with(prefix)))
        .collect();
    for (prefix, pattern) in FAMILIES {
        if sample.0.keys().any(|k| k.starts_with(prefix)) {
            known.push(pattern);
        }
    }
    known.push("clients.retry_classes.CLASS");
    Err(format!("unknown metric; this scenario has: {}", known.join(", ")))
}

/// The metric plotted (and shown first) when `--metric` is not given.
pub fn default_metric(scenario: &Scenario) -> &'static str {
    match scenario {
        Scenario::Dns(_) => "clients.retried_share",
        Scenario::Snat(_) => "conntrack.insert_failed_share",
        Scenario::TwRecycle(_) => "tcp.syn_dropped_paws",
        Scenario::SynBacklog(_) => "tcp.syn_dropped_backlog",
    }
}

/// The metrics a sweep reports by default: the scenario's default metric,
/// then what every client-driven scenario has.
pub fn default_metrics(scenario: &Scenario) -> Vec<String> {
    let mut keys = vec![default_metric(scenario)];
    for k in [
        "clients.retried_share",
        "clients.failed",
        "clients.p99_ms",
        "conntrack.insert_failed",
        "conntrack.drop",
        "conntrack.clash_resolve",
    ] {
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys.into_iter().map(str::to_string).collect()
}

/// A few words on what a well-known metric counts, for chart labels.
pub fn describe(key: &str, scenario: &str) -> Option<&'static str> {
    let dns = scenario == "dns";
    Some(match key {
        "clients.retried_share" if dns => "share of lookups retried",
        "clients.retried_share" => "share of connections retried",
        "clients.failed_share" if dns => "share of lookups failed",
        "clients.failed_share" => "share of connections failed",
        "conntrack.insert_failed_share" if dns => "insert_failed per lookup",
        "conntrack.insert_failed_share" => "share of connections with insert_failed",
        "clients.p50_ms" => "median latency",
        "clients.p99_ms" => "99th percentile latency",
        "clients.max_ms" => "worst latency",
        "tcp.syn_dropped_paws" => "SYNs dropped by PAWS",
        "tcp.syn_dropped_backlog" => "SYNs dropped by the backlog",
        _ => return None,
    })
}

/// How a metric's values read: a share (0..1), milliseconds, or a count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// A fraction, shown as a percentage.
    Share,
    /// Milliseconds.
    Millis,
    /// Anything else: a count or a plain number.
    Number,
}

/// The unit of a metric key, from its name.
pub fn unit_of(key: &str) -> Unit {
    if key.ends_with("_share") {
        Unit::Share
    } else if key.ends_with("_ms") {
        Unit::Millis
    } else {
        Unit::Number
    }
}

/// Mean of a sample with its two-sided 95 % Student t interval.
#[derive(Clone, Debug, PartialEq)]
pub struct Interval {
    /// The per-seed values.
    pub values: Vec<f64>,
    /// Their mean.
    pub mean: f64,
    /// Sample standard deviation (n − 1 in the denominator); `None` for n < 2.
    pub std_dev: Option<f64>,
    /// Half-width of the interval, t(0.975, n − 1) · s / √n; `None` for n < 2.
    pub half_width: Option<f64>,
}

impl Interval {
    /// The 95 % interval of `values` (n − 1 degrees of freedom).
    pub fn t95(values: &[f64]) -> Interval {
        let n = values.len();
        let mean = if n == 0 { f64::NAN } else { values.iter().sum::<f64>() / n as f64 };
        let (std_dev, half_width) = if n < 2 {
            (None, None)
        } else {
            let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            let s = var.sqrt();
            (Some(s), Some(t_quantile_975(n - 1) * s / (n as f64).sqrt()))
        };
        Interval { values: values.to_vec(), mean, std_dev, half_width }
    }

    /// Lower end (the mean when there is no interval).
    pub fn low(&self) -> f64 {
        self.mean - self.half_width.unwrap_or(0.0)
    }

    /// Upper end (the mean when there is no interval).
    pub fn high(&self) -> f64 {
        self.mean + self.half_width.unwrap_or(0.0)
    }
}

/// The 97.5 % quantile of Student's t with `df` degrees of freedom: the
/// factor of a two-sided 95 % interval.
pub fn t_quantile_975(df: usize) -> f64 {
    StudentsT::new(0.0, 1.0, df as f64).expect("df ≥ 1").inverse_cdf(0.975)
}

/// Per point: each reported metric's interval, in the order asked for.
#[derive(Clone, Debug, PartialEq)]
pub struct PointStats {
    /// Metric key → interval over the seeds.
    pub metrics: Vec<(String, Interval)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_parse_lists_and_ranges() {
        let a = Axis::parse("clients.rate=100..500:200,1000").unwrap();
        assert_eq!(a.key, "clients.rate");
        assert_eq!(a.values, ["100", "300", "500", "1000"]);
        let a = Axis::parse("node.split=0.1..0.3:0.1").unwrap();
        assert_eq!(a.values, ["0.1", "0.2", "0.3"]);
        assert_eq!(Axis::parse("k=500us..2ms:500us").unwrap().values, ["500us", "1000us", "1500us", "2000us"]);
        assert_eq!(Axis::parse("k=1s..3s:1s").unwrap().values, ["1s", "2s", "3s"]);
        // The step need not land on TO.
        assert_eq!(Axis::parse("k=1..10:4").unwrap().values, ["1", "5", "9"]);
        assert_eq!(Axis::parse("k=1..3").unwrap().values, ["1", "2", "3"]);
        // Brackets and quotes keep their commas.
        assert_eq!(Axis::parse(r#"k=[1,2],"a,b",x"#).unwrap().values, ["[1,2]", r#""a,b""#, "x"]);
    }

    #[test]
    fn bad_axes_name_the_key() {
        for (spec, key, what) in [
            ("k=1,,2", Some("k"), "empty value"),
            ("k=1,1", Some("k"), "twice"),
            ("k=5..1:1", Some("k"), "smaller"),
            ("k=1..5:0", Some("k"), "positive"),
            ("k=a..b:1", Some("k"), "FROM..TO:STEP"),
            ("k=0..1e9:1", Some("k"), "more than"),
            ("seed=1,2", Some("seed"), "--seeds"),
            ("novalue", None, "KEY=V1"),
        ] {
            let e = Axis::parse(spec).unwrap_err();
            assert_eq!(e.source, "--over", "{spec}");
            assert_eq!(e.key.as_deref(), key, "{spec}");
            assert!(e.message.contains(what), "{spec}: {e}");
        }
    }

    #[test]
    fn cartesian_order_is_first_axis_slowest() {
        assert_eq!(cartesian(&[2, 3]), vec![vec![0, 0], vec![0, 1], vec![0, 2], vec![1, 0], vec![1, 1], vec![1, 2]]);
        assert_eq!(cartesian(&[]), vec![Vec::<usize>::new()]);
        assert_eq!(cartesian(&[3, 0]).len(), 0);
    }

    #[test]
    fn t_interval_matches_the_formula_by_hand() {
        // Sample 2, 4, 4, 5: mean 15/4 = 3.75; squared deviations
        // 3.0625 + 0.0625 + 0.0625 + 1.5625 = 4.75; s² = 4.75 / 3;
        // t(0.975, 3) = 3.182446 (printed tables: 3.182);
        // half-width = 3.182446 · sqrt(4.75 / 3) / 2.
        let iv = Interval::t95(&[2.0, 4.0, 4.0, 5.0]);
        assert_eq!(iv.mean, 3.75);
        let s = (4.75f64 / 3.0).sqrt();
        assert!((iv.std_dev.unwrap() - s).abs() < 1e-12);
        let by_hand = 3.182446 * s / 2.0;
        assert!((iv.half_width.unwrap() - by_hand).abs() < 1e-5, "{iv:?} vs {by_hand}");
        assert!((iv.low() - (3.75 - by_hand)).abs() < 1e-5);
        assert!((iv.high() - (3.75 + by_hand)).abs() < 1e-5);
    }

    #[test]
    fn t_quantiles_match_printed_tables() {
        // Two-sided 95 % critical values from any statistics table.
        for (df, t) in [(1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (29, 2.045), (1000, 1.962)] {
            assert!((t_quantile_975(df) - t).abs() < 1e-3, "df {df}: {}", t_quantile_975(df));
        }
    }

    #[test]
    fn one_seed_has_no_interval_and_constant_samples_have_zero_width() {
        let iv = Interval::t95(&[7.0]);
        assert_eq!((iv.mean, iv.std_dev, iv.half_width), (7.0, None, None));
        assert_eq!((iv.low(), iv.high()), (7.0, 7.0));
        let iv = Interval::t95(&[3.0, 3.0, 3.0]);
        assert_eq!(iv.half_width, Some(0.0));
    }

    #[test]
    fn grid_is_points_times_kernels_in_order_and_checked() {
        let base = Scenario::builtin("dns").unwrap();
        let kernels: Vec<SweepKernel> = ["4.14", "6.6"]
            .iter()
            .map(|k| SweepKernel { label: k.to_string(), profile: KernelProfile::resolve(k).unwrap() })
            .collect();
        let axes =
            vec![Axis::parse("clients.rate=100,200,300").unwrap(), Axis::parse("clients.resolver=glibc,musl").unwrap()];
        let sweep = Sweep::new(&base, axes, kernels.clone(), 7, 3).unwrap();
        assert_eq!(sweep.points.len(), 3 * 2 * 2);
        assert_eq!(sweep.runs(), 36);
        assert_eq!(sweep.seeds, [7, 8, 9]);
        let order: Vec<(Vec<usize>, usize)> = sweep.points.iter().map(|p| (p.values.clone(), p.kernel)).collect();
        assert_eq!(order[0], (vec![0, 0], 0));
        assert_eq!(order[1], (vec![0, 0], 1));
        assert_eq!(order[2], (vec![0, 1], 0));
        assert_eq!(order[11], (vec![2, 1], 1));
        // Each point carries its overrides.
        let Scenario::Dns(s) = &sweep.points[11].scenario else { panic!() };
        assert_eq!((s.clients.rate, s.clients.resolver), (300.0, crate::dns::Resolver::Musl));

        let e = Sweep::new(&base, vec![Axis::parse("clients.rat=1,2").unwrap()], kernels.clone(), 1, 2).unwrap_err();
        assert_eq!((e.source.as_str(), e.key.as_deref()), ("--over", Some("clients.rat")), "{e}");
        let e = Sweep::new(&base, vec![Axis::parse("clients.lookups=10,x").unwrap()], kernels, 1, 2).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("clients.lookups"), "{e}");
        assert!(e.message.contains("at clients.lookups=x"), "{e}");
    }

    fn small_sweep(seeds: usize) -> Sweep {
        let base = Scenario::builtin("dns").unwrap().with_sets(&["clients.lookups=40".into()]).unwrap();
        let kernels = vec![SweepKernel { label: "4.14".into(), profile: KernelProfile::resolve("4.14").unwrap() }];
        Sweep::new(&base, vec![Axis::parse("clients.pods=2,5,9").unwrap()], kernels, 1, seeds).unwrap()
    }

    #[test]
    fn results_come_back_in_run_order_whatever_the_threads() {
        let sweep = small_sweep(2);
        let calls = AtomicUsize::new(0);
        let one = sweep.run_all(1, BTreeMap::new(), &|| {
            calls.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(calls.load(Ordering::Relaxed), 6, "one progress call per run");
        let three = sweep.run_all(3, BTreeMap::new(), &|| {});
        assert_eq!(one, three);
        let by_hand: Vec<Sample> = (0..sweep.runs()).map(|i| sweep.run_one(i)).collect();
        assert_eq!(one, by_hand);
        // Runs handed in are kept and not run again.
        let mut marked = Sample::default();
        marked.0.insert("marker".into(), 1.0);
        let calls = AtomicUsize::new(0);
        let out = sweep.run_all(2, BTreeMap::from([(4, marked.clone())]), &|| {
            calls.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!((out.len(), calls.load(Ordering::Relaxed)), (6, 5));
        assert_eq!(out[4], marked);
        assert_eq!(out[5], by_hand[5]);
        // Each run carries the sweep's fixed overrides.
        assert_eq!(sweep.run_one(0).get("clients.requests"), 40.0);
    }

    #[test]
    fn aggregation_takes_each_points_seeds_in_order() {
        let sweep = small_sweep(2);
        let sample = |v: f64| Sample(BTreeMap::from([("m".to_string(), v)]));
        let samples: Vec<Sample> = [1.0, 3.0, 10.0, 10.0, 0.0, 4.0].into_iter().map(sample).collect();
        let stats = sweep.aggregate(&samples, &["m".into(), "clients.retry_classes.5s".into()]);
        assert_eq!(stats.len(), 3);
        let means: Vec<f64> = stats.iter().map(|p| p.metrics[0].1.mean).collect();
        assert_eq!(means, [2.0, 10.0, 2.0]);
        assert_eq!(stats[0].metrics[0].1.values, [1.0, 3.0]);
        // Two values a and b: s = |a − b| / √2, half-width = t(0.975, 1) · s / √2 = 12.706 · |a − b| / 2.
        assert!((stats[0].metrics[0].1.half_width.unwrap() - 12.7062 * 2.0 / 2.0).abs() < 1e-3);
        assert_eq!(stats[1].metrics[0].1.half_width, Some(0.0));
        // A histogram bucket no run had is 0.
        assert_eq!(stats[2].metrics[1].1.mean, 0.0);
    }

    #[test]
    fn samples_flatten_the_summary_and_derive_shares() {
        let mut s = Scenario::builtin("dns").unwrap().with_sets(&["clients.lookups=50".into()]).unwrap();
        s.set_seed(3);
        let sample = metrics(&s.run(KernelProfile::resolve("4.14").unwrap()));
        let requests = sample.get("clients.requests");
        assert_eq!(requests, 50.0);
        assert_eq!(sample.get("clients.retried_share"), sample.get("clients.retried") / requests);
        assert!(sample.0.contains_key("conntrack.insert_failed"));
        assert!(!sample.0.contains_key("seed"), "the seed is not a metric");
        assert!(!sample.0.keys().any(|k| k.starts_with("per_cpu")), "arrays are left out");
        assert!(check_metric("clients.p99_ms", &sample).is_ok());
        assert!(check_metric("clients.retry_classes.10s", &sample).is_ok());
        let e = check_metric("clients.p98_ms", &sample).unwrap_err();
        assert!(e.contains("clients.p99_ms"), "{e}");
    }
}
