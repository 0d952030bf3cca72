//! `racetrack stress`: the threads executor, timed and reported.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use racetrack_engine::nat::SnatFlags;
use racetrack_engine::threads::{self, spin_work, Races, StressConfig, Workload};
use racetrack_engine::{Conntrack, KernelProfile};
use racetrack_models::baseline::{self, Dash, MutexMap, Speed};
use serde::Serialize;

use crate::cli::{Format, StressWorkload};
use crate::error::CliError;
use crate::output::json_line;
use crate::render;

/// Everything `racetrack stress` was asked.
pub struct Args {
    pub threads: usize,
    pub workload: StressWorkload,
    pub duration: Duration,
    pub ops: Option<u64>,
    pub kernel: String,
    pub window: Duration,
    pub endpoints: u32,
    pub random_fully: bool,
    pub flows: u32,
    pub seed: u64,
    pub baselines: bool,
    pub scaling: bool,
    pub format: Option<Format>,
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

#[derive(Serialize)]
struct ScalePoint {
    threads: usize,
    ops_per_s: f64,
    /// ops/s over the 1-thread run.
    speedup: f64,
    /// The reference loop's speed-up at this many threads, measured in the same run.
    reference_speedup: f64,
    /// speedup / reference_speedup.
    efficiency: f64,
}

/// Time `f`, which runs until its `keep_going(ops)` says stop: stops at
/// `duration`, at `ops`, or on Ctrl-C. Returns (ops, seconds).
fn timed(limit: &Limit, f: impl FnOnce(&mut dyn FnMut(u64) -> bool) -> u64) -> (u64, f64) {
    let start = Instant::now();
    let mut last_report = start;
    let mut keep_going = |done: u64| {
        let now = Instant::now();
        let elapsed = now.duration_since(start);
        if limit.progress
            && elapsed > Duration::from_secs(1)
            && now.duration_since(last_report) > Duration::from_millis(250)
        {
            last_report = now;
            let rate = done as f64 / elapsed.as_secs_f64();
            eprint!(
                "\r{}: {} ops, {:.2} M ops/s, {:.0} s left   ",
                limit.label,
                done,
                rate / 1e6,
                limit.duration.saturating_sub(elapsed).as_secs_f64()
            );
        }
        !limit.interrupted.load(Ordering::SeqCst) && elapsed < limit.duration && limit.ops.is_none_or(|n| done < n)
    };
    let ops = f(&mut keep_going);
    let secs = start.elapsed().as_secs_f64();
    if limit.progress && secs > 1.0 {
        eprint!("\r{:70}\r", "");
    }
    (ops, secs)
}

struct Limit {
    duration: Duration,
    ops: Option<u64>,
    interrupted: Arc<AtomicBool>,
    progress: bool,
    label: String,
}

/// The embarrassingly parallel reference: busy loops on `threads` threads.
fn reference(threads: usize, limit: &Limit) -> f64 {
    let (ops, secs) = timed(limit, |keep_going| {
        let done: Vec<AtomicU64> = (0..threads).map(|_| AtomicU64::new(0)).collect();
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
    });
    ops as f64 / secs
}

/// A workload run that stops when its `keep_going(ops)` says so; returns the ops done.
type Runner<'a> = dyn Fn(&mut dyn FnMut(u64) -> bool) -> u64 + 'a;

/// Busy-loop iterations per nanosecond on this machine, measured once.
fn spins_per_ns() -> f64 {
    let n = 2_000_000;
    let start = Instant::now();
    std::hint::black_box(spin_work(n));
    n as f64 / start.elapsed().as_nanos().max(1) as f64
}

pub fn run<W: Write>(out: &mut W, a: Args) -> Result<ExitCode, CliError> {
    if a.threads == 0 || a.threads > 1024 {
        return Err(CliError::Input(format!("--threads {}: must be 1 to 1024", a.threads)));
    }
    if a.endpoints == 0 || a.endpoints > 1000 {
        return Err(CliError::Input(format!("--endpoints {}: must be 1 to 1000", a.endpoints)));
    }
    if a.flows == 0 {
        return Err(CliError::Input("--flows 0: must be at least 1".into()));
    }
    let profile = KernelProfile::resolve(&a.kernel)?;
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
        endpoints: a.endpoints,
        snat_flags: SnatFlags { random: false, random_fully: a.random_fully },
        flows: a.flows,
        // Rounds per feed for `pair`; for the others, operations between two
        // looks at the stop flag, as many as the baselines run between theirs.
        batch: 1024,
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
    let engine_run = |threads: usize, label: &str| {
        let cfg = StressConfig { threads, ..cfg.clone() };
        let table = Conntrack::new(profile.clone(), threads, a.seed);
        let mut outcome = Default::default();
        let (_, secs) = timed(&limit(label), |keep_going| {
            outcome = threads::run(&table, &cfg, keep_going);
            outcome.ops
        });
        (table, outcome, secs)
    };
    let (table, outcome, secs) = engine_run(a.threads, "racetrack");
    threads::check_invariants(&table).map_err(|e| CliError::Input(format!("invariant broken after the run: {e}")))?;
    let snap = table.stats();
    let entries = table.count() as u64;
    let baselines = match baseline_workload.filter(|_| a.baselines) {
        None => None,
        Some(bw) => {
            let speed = |map: &Runner<'_>, label: &str| {
                let (ops, secs) = timed(&limit(label), |k| map(k));
                Speed { ops, ops_per_s: ops as f64 / secs }
            };
            let bc = baseline::Config {
                workload: bw,
                threads: a.threads,
                flows: a.flows,
                window_spins,
                seed: a.seed,
                hz: profile.conntrack.hz,
            };
            let dash = Dash::new(a.flows as usize);
            let dashmap = speed(&|k| baseline::run(&dash, &bc, k), "dashmap");
            let mutex = MutexMap::new(a.flows as usize);
            let mutex_hashmap = speed(&|k| baseline::run(&mutex, &bc, k), "mutex_hashmap");
            Some(Baselines { dashmap, mutex_hashmap })
        }
    };
    let mut scaling = Vec::new();
    if a.scaling {
        let mut base = (0.0, 0.0);
        for t in 1..=a.threads {
            let (_, o, secs) = engine_run(t, &format!("racetrack, {t} threads"));
            let rate = o.ops as f64 / secs;
            let reference = reference(t, &limit(&format!("reference, {t} threads")));
            if t == 1 {
                base = (rate, reference);
            }
            let (speedup, reference_speedup) = (rate / base.0, reference / base.1);
            scaling.push(ScalePoint {
                threads: t,
                ops_per_s: rate,
                speedup,
                reference_speedup,
                efficiency: speedup / reference_speedup,
            });
        }
    }
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
        elapsed_s: secs,
        ops_per_s: outcome.ops as f64 / secs.max(1e-9),
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
                writeln!(
                    out,
                    "baselines  dashmap {:.2} M ops/s ({:.2}x)   mutex_hashmap {:.2} M ops/s ({:.2}x)",
                    b.dashmap.ops_per_s / 1e6,
                    s.ops_per_s / b.dashmap.ops_per_s,
                    b.mutex_hashmap.ops_per_s / 1e6,
                    s.ops_per_s / b.mutex_hashmap.ops_per_s
                )?;
            }
            for p in &s.scaling {
                writeln!(
                    out,
                    "scaling  {} threads: {:.2} M ops/s, speed-up {:.2}, reference loop {:.2}, efficiency {:.0}%",
                    p.threads,
                    p.ops_per_s / 1e6,
                    p.speedup,
                    p.reference_speedup,
                    100.0 * p.efficiency
                )?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
