//! `racetrack stress`: the threads executor, timed and reported.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;

use racetrack_engine::nat::SnatFlags;
use racetrack_engine::threads::{self, spin_work, Races, StressConfig, Workload};
use racetrack_engine::{Conntrack, KernelProfile};
use racetrack_models::baseline::{self, Dash, MutexMap, Speed};
use serde::Serialize;

use crate::cli::{Format, StressArgs as Args, StressWorkload};
use crate::error::CliError;
use crate::output::json_line;
use crate::render;

/// Operations (or `pair` rounds) a worker runs between two looks at the
/// stop: 1024, unless that would take more than about 10 ms of windows, or
/// overshoot a small `--ops` by more than an eighth.
fn batch_size(window: Duration, ops: Option<u64>, threads: usize) -> u64 {
    let by_window = 10_000_000 / window.as_nanos().max(1);
    let by_ops = ops.map_or(u64::MAX, |n| n / (8 * threads.max(1) as u64));
    u64::try_from(by_window).unwrap_or(u64::MAX).min(by_ops).clamp(1, 1024)
}

#[derive(Serialize)]
struct Summary {
    workload: &'static str,
    threads: usize,
    kernel: String,
    ops: u64,
    elapsed_s: f64,
    ops_per_s: f64,
    window_ns: u64,
    conntrack: std::collections::BTreeMap<&'static str, u64>,
    per_cpu: Vec<std::collections::BTreeMap<&'static str, u64>>,
    races: Races,
    #[serde(skip_serializing_if = "Option::is_none")]
    baselines: Option<Baselines>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    scaling: Vec<ScalePoint>,
    interrupted: bool,
}

#[derive(Serialize)]
struct Baselines {
    dashmap: Speed,
    mutex_hashmap: Speed,
}

/// Rounds of `--scaling`: each runs every thread count and the reference
/// loop for `--duration / SCALING_ROUNDS`.
const SCALING_ROUNDS: u32 = 5;

#[derive(Serialize, Debug, PartialEq)]
struct ScalePoint {
    threads: usize,
    /// Median over the rounds of the workload's ops/s.
    ops_per_s: f64,
    /// Median over the rounds of ops/s over the same round's 1-thread run.
    speedup: f64,
    /// The reference loop's speed-up at this many threads (median over rounds).
    reference_speedup: f64,
    /// Median over the rounds of speedup / reference_speedup, each from one round.
    efficiency: f64,
    /// Lowest and highest of the rounds' efficiencies.
    efficiency_range: [f64; 2],
    /// The same ratio from the best rate each run reached over the rounds:
    /// a busy machine only ever slows a run down, so the best is the
    /// closest to an undisturbed one (and the 2-thread best, which needs
    /// both threads undisturbed at once, is the harder to reach).
    best_efficiency: f64,
    /// The same ratio from operations per CPU second of the process: what
    /// the threads did with the CPU time they got, so time the machine gave
    /// to other work does not count (it still counts contention: a thread
    /// spinning on a cache line another CPU holds is using CPU time).
    cpu_efficiency: f64,
    /// Nanoseconds for a cache line written on one CPU to reach the next,
    /// among this many threads (median over rounds; none for 1 thread).
    line_handoff_ns: Option<f64>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => v[n / 2],
        _ => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Fold `rounds[r][t - 1] = (workload, reference)` into one point per
/// thread count, each ratio taken within a round.
fn scale_points(rounds: &[Vec<(Timing, Timing, Option<f64>)>]) -> Vec<ScalePoint> {
    let threads = rounds.first().map_or(0, Vec::len);
    (0..threads)
        .map(|i| {
            type Round = [(Timing, Timing, Option<f64>)];
            let per_round = |f: &dyn Fn(&Round) -> f64| median(rounds.iter().map(|r| f(r)).collect());
            let speedup = |r: &Round| r[i].0.rate() / r[0].0.rate();
            let reference = |r: &Round| r[i].1.rate() / r[0].1.rate();
            let efficiency = |r: &Round| speedup(r) / reference(r);
            let cpu_efficiency =
                |r: &Round| (r[i].0.cpu_rate() / r[0].0.cpu_rate()) / (r[i].1.cpu_rate() / r[0].1.cpu_rate());
            let effs: Vec<f64> = rounds.iter().map(|r| efficiency(r)).collect();
            ScalePoint {
                threads: i + 1,
                ops_per_s: per_round(&|r| r[i].0.rate()),
                speedup: per_round(&speedup),
                reference_speedup: per_round(&reference),
                efficiency: median(effs.clone()),
                efficiency_range: [
                    effs.iter().copied().fold(f64::INFINITY, f64::min),
                    effs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                ],
                cpu_efficiency: per_round(&cpu_efficiency),
                best_efficiency: {
                    let best = |f: &dyn Fn(&Round) -> f64| rounds.iter().map(|r| f(r)).fold(0.0, f64::max);
                    (best(&|r| r[i].0.rate()) / best(&|r| r[0].0.rate()))
                        / (best(&|r| r[i].1.rate()) / best(&|r| r[0].1.rate()))
                },
                line_handoff_ns: rounds[0][i].2.map(|_| median(rounds.iter().filter_map(|r| r[i].2).collect())),
            }
        })
        .collect()
}

/// What [`timed`] measured.
#[derive(Clone, Copy, Debug, Default)]
struct Timing {
    /// Every operation `f` reported, set-up included.
    ops: u64,
    /// Operations within the timed interval.
    timed_ops: u64,
    /// Wall seconds of the timed interval.
    secs: f64,
    /// Wall seconds from the first call of `keep_going` to the stop.
    total_secs: f64,
    /// CPU seconds the process used in the timed interval (every thread).
    cpu_secs: f64,
}

impl Timing {
    /// Operations per wall second.
    fn rate(&self) -> f64 {
        self.timed_ops as f64 / self.secs.max(1e-9)
    }
    /// Operations per CPU second: what the threads did with the time they
    /// were given, whatever else the machine ran.
    fn cpu_rate(&self) -> f64 {
        self.timed_ops as f64 / self.cpu_secs.max(1e-9)
    }
}

/// CPU time used by this process so far, every thread included.
fn process_cpu_secs() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_PROCESS_CPUTIME_ID
    // is supported on every Linux and macOS the CLI builds for.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0.0;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Time `f`, which runs until its `keep_going(ops)` says stop: stops at
/// `duration`, at `ops`, or on Ctrl-C. The clock starts at the first call
/// of `keep_going`, which `f` makes once its set-up (preload, threads) is
/// done. The rate leaves out a warm-up at the start (a tenth of the
/// duration, at most 100 ms) while each thread pulls its share of the
/// table into its own caches; a run too short for that is measured whole.
fn timed(limit: &Limit, f: impl FnOnce(&mut dyn FnMut(u64) -> bool) -> u64) -> Timing {
    let warm_up = (limit.duration / 10).min(Duration::from_millis(100));
    let mut first: Option<(Instant, u64, f64)> = None;
    let mut warm: Option<(Instant, u64, f64)> = None;
    let mut last_report = Instant::now();
    let mut end = (Instant::now(), 0u64, 0.0f64);
    let mut keep_going = |done: u64| {
        let now = Instant::now();
        let (t0, ops0, _) = *first.get_or_insert_with(|| (now, done, process_cpu_secs()));
        let elapsed = now.duration_since(t0);
        if warm.is_none() && elapsed >= warm_up {
            warm = Some((now, done, process_cpu_secs()));
        }
        if limit.progress
            && elapsed > Duration::from_secs(1)
            && now.duration_since(last_report) > Duration::from_millis(250)
        {
            last_report = now;
            let rate = (done - ops0) as f64 / elapsed.as_secs_f64();
            eprint!(
                "\r{}: {} ops, {:.2} M ops/s, {:.0} s left   ",
                limit.label,
                done,
                rate / 1e6,
                limit.duration.saturating_sub(elapsed).as_secs_f64()
            );
        }
        let go =
            !limit.interrupted.load(Ordering::SeqCst) && elapsed < limit.duration && limit.ops.is_none_or(|n| done < n);
        if !go {
            end = (now, done, process_cpu_secs());
        }
        go
    };
    let ops = f(&mut keep_going);
    let whole = first.unwrap_or((end.0, 0, end.2));
    let from = warm.filter(|w| w.0 < end.0 && w.1 < end.1).unwrap_or(whole);
    if limit.progress && end.0.duration_since(whole.0).as_secs_f64() > 1.0 {
        eprint!("\r{:70}\r", "");
    }
    // Operations finished between the stop and the workers seeing it count
    // in `ops`, not in the rate.
    Timing {
        ops,
        timed_ops: end.1.saturating_sub(from.1),
        secs: end.0.duration_since(from.0).as_secs_f64(),
        total_secs: end.0.duration_since(whole.0).as_secs_f64(),
        cpu_secs: end.2 - from.2,
    }
}

struct Limit {
    duration: Duration,
    ops: Option<u64>,
    interrupted: Arc<AtomicBool>,
    progress: bool,
    label: String,
}

/// The embarrassingly parallel reference: busy loops on `threads` threads.
fn reference(threads: usize, limit: &Limit) -> Timing {
    timed(limit, |keep_going| {
        let done: Vec<CachePadded<AtomicU64>> = (0..threads).map(|_| CachePadded::new(AtomicU64::new(0))).collect();
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            for d in &done {
                let stop = &stop;
                s.spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::hint::black_box(spin_work(10_000));
                        d.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            while keep_going(done.iter().map(|d| d.load(Ordering::Relaxed)).sum()) {
                std::thread::sleep(Duration::from_millis(1));
            }
            stop.store(true, Ordering::Relaxed);
        });
        done.iter().map(|d| d.load(Ordering::Relaxed)).sum()
    })
}

/// The machine's price of sharing: `threads` threads pass a token around
/// a ring through one cache line, each waiting for its turn, for `span`.
/// Returns wall nanoseconds per hand-off, the time one CPU's write takes to
/// reach the next CPU (what every contended line in the table costs).
fn line_handoff_ns(threads: usize, span: Duration) -> f64 {
    let token = CachePadded::new(AtomicU64::new(0));
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    std::thread::scope(|s| {
        for k in 0..threads as u64 {
            let (token, stop) = (&token, &stop);
            s.spawn(move || {
                let n = threads as u64;
                let mut spins = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let v = token.load(Ordering::Acquire);
                    if v % n == k {
                        token.store(v + 1, Ordering::Release);
                    } else {
                        std::hint::spin_loop();
                        spins = spins.wrapping_add(1);
                        // A waiter whose turn never comes (more threads than
                        // CPUs) still lets the others run now and then.
                        if spins % 4096 == 0 {
                            std::thread::yield_now();
                        }
                    }
                }
            });
        }
        std::thread::sleep(span);
        stop.store(true, Ordering::Relaxed);
    });
    let secs = start.elapsed().as_secs_f64();
    secs * 1e9 / token.load(Ordering::Relaxed).max(1) as f64
}

/// A workload run that stops when its `keep_going(ops)` says so; returns the ops done.
type Runner<'a> = dyn Fn(&mut dyn FnMut(u64) -> bool) -> u64 + 'a;

/// Busy-loop iterations per nanosecond on this machine: the fastest of 16
/// short trials (about 70 µs each), so that a trial the host preempted or
/// slowed does not shorten every window of the run.
fn spins_per_ns() -> f64 {
    let n = 125_000;
    (0..16)
        .map(|_| {
            let start = Instant::now();
            std::hint::black_box(spin_work(n));
            n as f64 / start.elapsed().as_nanos().max(1) as f64
        })
        .fold(0.0, f64::max)
}

pub fn run<W: Write>(out: &mut W, a: Args) -> Result<ExitCode, CliError> {
    if a.threads == 0 || a.threads > 1024 {
        return Err(CliError::Input(format!("--threads {}: must be 1 to 1024", a.threads)));
    }
    // Flags a workload does not use are refused, not ignored.
    if a.endpoints.is_some() && a.workload != StressWorkload::Pair {
        return Err(CliError::Input("--endpoints: applies to --workload pair (the others do no DNAT)".into()));
    }
    if a.flows.is_some() && a.workload == StressWorkload::Pair {
        return Err(CliError::Input(
            "--flows: applies to snat, lookup and mixed (pair races one new flow at a time)".into(),
        ));
    }
    let (endpoints, flows) = (a.endpoints.unwrap_or(1), a.flows.unwrap_or(10_000));
    if endpoints == 0 || endpoints > 1000 {
        return Err(CliError::Input(format!("--endpoints {endpoints}: must be 1 to 1000")));
    }
    if flows == 0 {
        return Err(CliError::Input("--flows 0: must be at least 1".into()));
    }
    if a.random_fully && a.workload != StressWorkload::Snat {
        return Err(CliError::Input("--random-fully: applies to --workload snat (the others do no SNAT)".into()));
    }
    if a.scaling && a.threads < 2 {
        return Err(CliError::Input(
            "--scaling: compares 1 to --threads threads, so it needs --threads 2 or more".into(),
        ));
    }
    let profile = KernelProfile::resolve(&a.kernel)?;
    // `mixed` holds its established flows and up to as many new ones.
    let held = u64::from(flows) * if a.workload == StressWorkload::Mixed { 2 } else { 1 };
    if a.workload != StressWorkload::Pair && held > u64::from(profile.conntrack.max) {
        return Err(CliError::Input(format!(
            "--flows {}: the workload holds up to {held} entries, more than {}'s table takes (max {}); lower \
             --flows, or raise max in a profile file",
            flows, profile.name, profile.conntrack.max
        )));
    }
    let kernel = profile.name.clone();
    let workload = match a.workload {
        StressWorkload::Pair => Workload::Pair,
        StressWorkload::Snat => Workload::Snat,
        StressWorkload::Lookup => Workload::Lookup,
        StressWorkload::Mixed => Workload::Mixed,
    };
    let window_spins = (a.window.as_nanos() as f64 * spins_per_ns()) as u64;
    let cfg = StressConfig {
        threads: a.threads,
        workload,
        window_spins,
        endpoints,
        snat_flags: SnatFlags { random: false, random_fully: a.random_fully },
        flows,
        // Rounds per feed for `pair`; for the others, operations between two
        // looks at the stop flag, as many as the baselines run between theirs.
        batch: batch_size(a.window, a.ops, a.threads),
        seed: a.seed,
    };
    let baseline_workload = match workload {
        Workload::Lookup => Some(baseline::Workload::Lookup),
        Workload::Mixed => Some(baseline::Workload::Mixed),
        _ => None,
    };
    if a.baselines && baseline_workload.is_none() {
        return Err(CliError::Input(
            "--baselines: applies to --workload lookup or mixed (a plain map has no conntrack races to run)".into(),
        ));
    }
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupted.clone();
        // Only one handler per process; without one, Ctrl-C just ends the process.
        let _ = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst));
    }
    let limit = |label: &str| Limit {
        duration: a.duration,
        ops: a.ops,
        interrupted: interrupted.clone(),
        progress: std::io::stderr().is_terminal(),
        label: label.to_string(),
    };
    let engine_run = |threads: usize, limit: Limit| {
        let cfg = StressConfig { threads, ..cfg.clone() };
        let table = Conntrack::new(profile.clone(), threads, a.seed);
        let mut outcome = Default::default();
        let timing = timed(&limit, |keep_going| {
            outcome = threads::run(&table, &cfg, keep_going);
            outcome.ops
        });
        (table, outcome, timing)
    };
    let (table, outcome, timing) = engine_run(a.threads, limit("racetrack"));
    threads::check_invariants(&table).map_err(|e| CliError::Input(format!("invariant broken after the run: {e}")))?;
    let snap = table.stats();
    let entries = table.count() as u64;
    let baselines = match baseline_workload.filter(|_| a.baselines) {
        None => None,
        Some(bw) => {
            let speed = |map: &Runner<'_>, label: &str| {
                let t = timed(&limit(label), |k| map(k));
                Speed { ops: t.ops, ops_per_s: t.rate() }
            };
            let bc = baseline::Config {
                workload: bw,
                threads: a.threads,
                flows,
                window_spins,
                seed: a.seed,
                hz: profile.conntrack.hz,
                batch: cfg.batch,
            };
            let dash = Dash::new(flows as usize);
            let dashmap = speed(&|k| baseline::run(&dash, &bc, k), "dashmap");
            let mutex = MutexMap::new(flows as usize);
            let mutex_hashmap = speed(&|k| baseline::run(&mutex, &bc, k), "mutex_hashmap");
            Some(Baselines { dashmap, mutex_hashmap })
        }
    };
    let scaling = if a.scaling {
        // Short slices, the workload and the reference loop side by side,
        // repeated: a neighbour that steals the CPUs for a moment spoils one
        // round's ratio, not the median.
        let slice = |label: String| Limit {
            duration: a.duration / SCALING_ROUNDS,
            ops: a.ops.map(|n| (n / u64::from(SCALING_ROUNDS)).max(1)),
            ..limit(&label)
        };
        let rounds: Vec<Vec<(Timing, Timing, Option<f64>)>> = (0..SCALING_ROUNDS)
            .map(|r| {
                (1..=a.threads)
                    .map(|t| {
                        let (_, _, engine) = engine_run(t, slice(format!("racetrack, {t} threads, round {}", r + 1)));
                        let reference = reference(t, &slice(format!("reference, {t} threads, round {}", r + 1)));
                        let handoff = (t > 1).then(|| {
                            line_handoff_ns(t, (a.duration / SCALING_ROUNDS / 4).min(Duration::from_millis(50)))
                        });
                        (engine, reference, handoff)
                    })
                    .collect()
            })
            .collect();
        scale_points(&rounds)
    } else {
        Vec::new()
    };
    let s = Summary {
        workload: match workload {
            Workload::Pair => "pair",
            Workload::Snat => "snat",
            Workload::Lookup => "lookup",
            Workload::Mixed => "mixed",
        },
        threads: a.threads,
        kernel,
        ops: outcome.ops,
        elapsed_s: timing.total_secs,
        ops_per_s: timing.rate(),
        window_ns: a.window.as_nanos() as u64,
        conntrack: snap.total().iter().collect(),
        per_cpu: snap.per_cpu.iter().map(|c| c.iter().collect()).collect(),
        races: outcome.races,
        baselines,
        scaling,
        interrupted: interrupted.load(Ordering::SeqCst),
    };
    let counters = || render::Counters { per_cpu: &s.per_cpu, profile: &profile, entries };
    match a.format.unwrap_or_else(super::run::default_format) {
        Format::Json => json_line(out, "summary", &s)?,
        Format::Csv => render::csv::write(out, &s)?,
        Format::Conntrack => render::conntrack::write(out, &counters())?,
        Format::Prom => {
            let info = vec![
                ("workload", s.workload.to_string()),
                ("threads", s.threads.to_string()),
                ("kernel", s.kernel.clone()),
                ("seed", a.seed.to_string()),
            ];
            render::prom::write(out, &render::prom::Exposition { counters: counters(), info, clients: None })?
        }
        Format::Table => {
            writeln!(
                out,
                "workload {}   threads {}   kernel {}   window {} ns",
                s.workload, s.threads, s.kernel, s.window_ns
            )?;
            writeln!(out, "ops      {} in {:.2} s: {:.2} M ops/s", s.ops, s.elapsed_s, s.ops_per_s / 1e6)?;
            if s.interrupted {
                writeln!(out, "interrupted (Ctrl-C): the figures are what was counted until then")?;
            }
            if workload == Workload::Pair {
                let r = &s.races;
                let share = if r.rounds == 0 { 0.0 } else { 100.0 * r.clashed as f64 / r.rounds as f64 };
                writeln!(
                    out,
                    "races    {} rounds, {} clashed ({share:.1}%): {} merged, {} NAT_CLASH, {} dropped; {} found the entry",
                    r.rounds, r.clashed, r.merged, r.nat_clash, r.dropped, r.found
                )?;
            }
            let counters: Vec<String> = s.conntrack.iter().map(|(k, v)| format!("{k}={v}")).collect();
            writeln!(out, "conntrack  {}", counters.join(" "))?;
            if let Some(b) = &s.baselines {
                // A baseline that did not run (Ctrl-C came first) has no ratio.
                let ratio = |base: f64| {
                    if base > 0.0 {
                        format!("{:.2}x", s.ops_per_s / base)
                    } else {
                        "not run".to_string()
                    }
                };
                writeln!(
                    out,
                    "baselines  dashmap {:.2} M ops/s ({})   mutex_hashmap {:.2} M ops/s ({})",
                    b.dashmap.ops_per_s / 1e6,
                    ratio(b.dashmap.ops_per_s),
                    b.mutex_hashmap.ops_per_s / 1e6,
                    ratio(b.mutex_hashmap.ops_per_s)
                )?;
            }
            for p in &s.scaling {
                writeln!(
                    out,
                    "scaling  {} threads: {:.2} M ops/s, speed-up {:.2}, reference loop {:.2}, efficiency {:.0}% ({:.0}–{:.0}% over {} rounds, {:.0}% from the best rates), per CPU second {:.0}%{}",
                    p.threads,
                    p.ops_per_s / 1e6,
                    p.speedup,
                    p.reference_speedup,
                    100.0 * p.efficiency,
                    100.0 * p.efficiency_range[0],
                    100.0 * p.efficiency_range[1],
                    SCALING_ROUNDS,
                    100.0 * p.best_efficiency,
                    100.0 * p.cpu_efficiency,
                    p.line_handoff_ns.map(|ns| format!(", line hand-off {ns:.0} ns")).unwrap_or_default()
                )?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing(ops: u64, secs: f64, cpu_secs: f64) -> Timing {
        Timing { ops, timed_ops: ops, secs, total_secs: secs, cpu_secs }
    }

    #[test]
    fn scaling_ratios_are_taken_within_a_round_and_folded_by_median() {
        // Three rounds of (workload, reference) at 1 and 2 threads. Round 1
        // ran while the machine was busy: everything at half speed, which a
        // ratio within the round cancels.
        let round = |k: f64, two: f64, ref_two: f64, handoff: f64| {
            vec![
                (timing((100.0 * k) as u64, 1.0, 1.0), timing((10.0 * k) as u64, 1.0, 1.0), None),
                (timing((two * k) as u64, 1.0, 2.0), timing((ref_two * k) as u64, 1.0, 2.0), Some(handoff)),
            ]
        };
        let rounds =
            vec![round(2.0, 180.0, 20.0, 300.0), round(1.0, 180.0, 20.0, 100.0), round(2.0, 100.0, 20.0, 200.0)];
        let p = scale_points(&rounds);
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].threads, p[0].speedup, p[0].efficiency, p[0].line_handoff_ns), (1, 1.0, 1.0, None));
        assert_eq!(p[1].threads, 2);
        // Efficiencies per round: 0.9, 0.9, 0.5.
        assert!((p[1].efficiency - 0.9).abs() < 1e-9, "{p:?}");
        assert!((p[1].efficiency_range[0] - 0.5).abs() < 1e-9 && (p[1].efficiency_range[1] - 0.9).abs() < 1e-9);
        assert!((p[1].reference_speedup - 2.0).abs() < 1e-9);
        // Per CPU second: twice the CPU time for (nearly) twice the work.
        assert!((p[1].cpu_efficiency - 0.9).abs() < 1e-9, "{p:?}");
        assert_eq!(p[1].line_handoff_ns, Some(200.0));
        // Best rates: 1 thread 200, 2 threads 360; reference 20 and 40.
        assert!((p[1].best_efficiency - 0.9).abs() < 1e-9, "{p:?}");
        assert!((p[0].best_efficiency - 1.0).abs() < 1e-9, "{p:?}");
    }

    #[test]
    fn the_rate_leaves_out_set_up_and_the_stragglers_after_the_stop() {
        let limit = Limit {
            duration: Duration::from_millis(30),
            ops: None,
            interrupted: Arc::new(AtomicBool::new(false)),
            progress: false,
            label: "test".into(),
        };
        let t = timed(&limit, |keep_going| {
            // 1000 operations of set-up before the first call.
            let mut done = 1000;
            while keep_going(done) {
                done += 1;
                std::thread::sleep(Duration::from_micros(100));
            }
            // Work finished after the stop counts in `ops` only.
            done + 500
        });
        assert!(t.ops >= 1500 && t.timed_ops + 1500 <= t.ops, "{t:?}");
        assert!(t.timed_ops > 0 && t.secs > 0.0 && t.secs <= t.total_secs, "{t:?}");
    }

    #[test]
    fn a_token_passes_between_threads() {
        let ns = line_handoff_ns(2, Duration::from_millis(5));
        assert!(ns.is_finite() && ns > 0.0, "{ns}");
    }
}
