//! `racetrack run SCENARIO|FILE [--kernel P] [--set K=V]... [--seed N] [--format F]`.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;

use racetrack_engine::KernelProfile;
use racetrack_models::dns::DnsReport;
use racetrack_models::scenario::{names, Report, Scenario};

use crate::cli::Format;
use crate::error::CliError;
use crate::output::json_line;

/// Resolve a scenario argument: a built-in name, or a TOML file.
pub fn load_scenario(spec: &str) -> Result<Scenario, CliError> {
    if let Some(s) = Scenario::builtin(spec) {
        return Ok(s);
    }
    let path = Path::new(spec);
    if !(spec.ends_with(".toml") || spec.contains('/') || path.exists()) {
        return Err(CliError::Input(format!("{spec}: no such scenario (built-in: {})", names().join(", "))));
    }
    let text = std::fs::read(path).map_err(|e| CliError::Input(format!("{spec}: cannot read: {e}")))?;
    let text = String::from_utf8(text).map_err(|e| {
        let line = e.as_bytes()[..e.utf8_error().valid_up_to()].iter().filter(|&&b| b == b'\n').count() + 1;
        CliError::Input(format!("{spec}:{line}: not UTF-8 text"))
    })?;
    Scenario::from_toml(&text, spec).map_err(|e| CliError::Input(e.to_string()))
}

pub fn run<W: Write>(
    out: &mut W,
    scenario: &str,
    kernel: &str,
    sets: &[String],
    seed: Option<u64>,
    format: Option<Format>,
) -> Result<ExitCode, CliError> {
    let profile = KernelProfile::resolve(kernel)?;
    let mut s = load_scenario(scenario)?.with_sets(sets).map_err(|e| CliError::Input(e.to_string()))?;
    if let Some(seed) = seed {
        s.set_seed(seed);
    }
    let report = s.run(profile);
    match format.unwrap_or_else(default_format) {
        Format::Json => json_line(out, "summary", &report)?,
        Format::Table => match &report {
            Report::Dns(r) => write_dns(out, r)?,
        },
    }
    Ok(ExitCode::SUCCESS)
}

/// Table for a person at a terminal, JSON Lines for a pipe.
pub fn default_format() -> Format {
    if std::io::stdout().is_terminal() {
        Format::Table
    } else {
        Format::Json
    }
}

fn write_dns<W: Write>(out: &mut W, r: &DnsReport) -> std::io::Result<()> {
    let c = &r.clients;
    let share = |n: u64| if c.requests == 0 { 0.0 } else { 100.0 * n as f64 / c.requests as f64 };
    writeln!(out, "scenario {}   kernel {}   seed {}", r.scenario, r.kernel, r.seed)?;
    writeln!(
        out,
        "lookups  {}: ok {}, failed {}, retried {} ({:.2}%)",
        c.requests,
        c.ok,
        c.failed,
        c.retried,
        share(c.retried)
    )?;
    writeln!(out, "latency  p50 {:.2} ms   p99 {:.2} ms   max {:.2} ms", c.p50_ms, c.p99_ms, c.max_ms)?;
    if !c.retry_classes.is_empty() {
        let classes: Vec<String> = c.retry_classes.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        writeln!(out, "delayed  {}", classes.join("   "))?;
    }
    let counters: Vec<String> = r.conntrack.iter().map(|(k, v)| format!("{k}={v}")).collect();
    writeln!(out, "conntrack  {}", counters.join(" "))?;
    Ok(())
}
