//! `racetrack stress`: the threads executor, timed and reported.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use racetrack_engine::nat::SnatFlags;
use racetrack_engine::threads::{self, spin_work, Races, StressConfig, Workload};
use racetrack_engine::{Conntrack, KernelProfile};
use serde::Serialize;

use crate::cli::{Format, StressWorkload};
use crate::error::CliError;
use crate::output::json_line;

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
    interrupted: bool,
}

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
        batch: if workload == Workload::Pair { 64 } else { 1024 },
        seed: a.seed,
    };
    let table = Conntrack::new(profile, a.threads, a.seed);

    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupted.clone();
        // A second handler cannot be installed in one process (tests run
        // several commands): keep going without one.
        let _ = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst));
    }
    let progress = std::io::stderr().is_terminal();
    let start = Instant::now();
    let mut last_report = start;
    let outcome = threads::run(&table, &cfg, |done| {
        let now = Instant::now();
        if progress
            && now.duration_since(start) > Duration::from_secs(1)
            && now.duration_since(last_report) > Duration::from_millis(250)
        {
            last_report = now;
            let rate = done as f64 / now.duration_since(start).as_secs_f64();
            eprint!(
                "\r{} ops, {:.2} M ops/s, {:.0} s left   ",
                done,
                rate / 1e6,
                a.duration.saturating_sub(now - start).as_secs_f64()
            );
        }
        !interrupted.load(Ordering::SeqCst) && now.duration_since(start) < a.duration && a.ops.is_none_or(|n| done < n)
    });
    let elapsed = start.elapsed();
    if progress && elapsed > Duration::from_secs(1) {
        eprint!("\r{:60}\r", "");
    }
    threads::check_invariants(&table).map_err(|e| CliError::Input(format!("invariant broken after the run: {e}")))?;
    let snap = table.stats();
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
        elapsed_s: elapsed.as_secs_f64(),
        ops_per_s: outcome.ops as f64 / elapsed.as_secs_f64().max(1e-9),
        window_ns: a.window.as_nanos() as u64,
        conntrack: snap.total().iter().collect(),
        per_cpu: snap.per_cpu.iter().map(|c| c.iter().collect()).collect(),
        races: outcome.races,
        interrupted: interrupted.load(Ordering::SeqCst),
    };
    match a.format.unwrap_or_else(super::run::default_format) {
        Format::Json => json_line(out, "summary", &s)?,
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
        }
    }
    Ok(ExitCode::SUCCESS)
}
