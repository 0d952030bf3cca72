//! `racetrack run SCENARIO|FILE [--kernel P] [--set K=V]... [--seed N] [--format F]`.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;

use racetrack_engine::input::utf8_text;
use racetrack_engine::KernelProfile;
use racetrack_models::clients::ClientStats;
use racetrack_models::dns::DnsReport;
use racetrack_models::listener::ListenerReport;
use racetrack_models::report::Prediction;
use racetrack_models::scenario::{names, Report, Scenario};
use racetrack_models::snat::SnatReport;
use racetrack_models::tcp::TcpStats;

use crate::cli::{Format, InputArgs};
use crate::commands::inputs;
use crate::error::CliError;
use crate::output::json_line;
use crate::render;

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
    let text = utf8_text(spec, &text).map_err(|e| CliError::Input(e.to_string()))?;
    Scenario::from_toml(text, spec).map_err(|e| CliError::Input(e.to_string()))
}

pub fn run<W: Write>(
    out: &mut W,
    scenario: &str,
    kernel: Option<&str>,
    sets: &[String],
    seed: Option<u64>,
    input_args: &InputArgs,
    format: Option<Format>,
) -> Result<ExitCode, CliError> {
    // Scenario defaults, then the node's files, then `--set`.
    let mut s = load_scenario(scenario)?;
    let mut profile = KernelProfile::resolve(kernel.unwrap_or(s.default_kernel()))?;
    let mut applied = inputs::apply(&mut s, &mut profile, input_args)?;
    let mut s = s.with_sets(sets).map_err(|e| CliError::Input(e.to_string()))?;
    if let Some(seed) = seed {
        s.set_seed(seed);
    }
    s.check(&profile).map_err(|(key, why)| {
        inputs::locate(applied.as_ref(), sets, &key, &why)
            .unwrap_or_else(|| CliError::Input(format!("{scenario}: key `{key}`: {why}")))
    })?;
    if let Some(a) = &mut applied {
        a.refresh(&s, &profile);
    }
    let report = s.run(profile.clone());
    let format = format.unwrap_or_else(default_format);
    match format {
        Format::Json => match &applied {
            None => json_line(out, "summary", &report)?,
            Some(inputs) => {
                /// The report's keys in their order, then `inputs`.
                #[derive(serde::Serialize)]
                struct WithInputs<'a> {
                    #[serde(flatten)]
                    report: &'a Report,
                    inputs: &'a racetrack_models::inputs::Applied,
                }
                json_line(out, "summary", &WithInputs { report: &report, inputs })?
            }
        },
        Format::Table => match &report {
            Report::Dns(r) => write_dns(out, r)?,
            Report::Snat(r) => write_snat(out, r)?,
            Report::Listener(r) => write_listener(out, r)?,
        },
        Format::Csv => render::csv::write(out, &report)?,
        Format::Conntrack => render::conntrack::write(out, &counters_of(&report, &profile))?,
        Format::Prom => {
            let (scenario, kernel, seed) = report.header();
            let e = render::prom::Exposition {
                counters: counters_of(&report, &profile),
                info: vec![
                    ("scenario", scenario.to_string()),
                    ("kernel", kernel.to_string()),
                    ("seed", seed.to_string()),
                ],
                clients: Some(report.clients()),
            };
            render::prom::write(out, &e)?
        }
    }
    if let (Some(a), Format::Table) = (&applied, format) {
        write_inputs(out, a)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The counters of a run's report, for the machine renderers.
fn counters_of<'a>(report: &'a Report, profile: &'a KernelProfile) -> render::Counters<'a> {
    render::Counters { per_cpu: report.per_cpu(), profile, entries: report.conntrack_entries() }
}

/// Table for a person at a terminal, JSON Lines for a pipe.
pub fn default_format() -> Format {
    if std::io::stdout().is_terminal() {
        Format::Table
    } else {
        Format::Json
    }
}

fn write_inputs<W: Write>(out: &mut W, a: &racetrack_models::inputs::Applied) -> std::io::Result<()> {
    let files: Vec<&str> = a.files.values().map(String::as_str).collect();
    writeln!(out, "\ninputs   {}", files.join(", "))?;
    if let Some(svc) = &a.service {
        let name = svc.name.as_deref().unwrap_or("service");
        writeln!(out, "  {name} {} → {} endpoints ({})", svc.address, svc.endpoints.len(), svc.endpoints.join(", "))?;
    }
    for (k, v) in &a.parameters {
        writeln!(out, "  {k} = {v}")?;
    }
    writeln!(
        out,
        "  {} ignored, {} notes (stderr; all under `inputs` with --format json)",
        a.ignored.len(),
        a.notes.len()
    )
}

fn write_dns<W: Write>(out: &mut W, r: &DnsReport) -> std::io::Result<()> {
    writeln!(out, "scenario {}   kernel {}   seed {}", r.scenario, r.kernel, r.seed)?;
    write_clients(out, "lookups", &r.clients)?;
    write_counters(out, &r.conntrack)
}

fn write_snat<W: Write>(out: &mut W, r: &SnatReport) -> std::io::Result<()> {
    writeln!(out, "scenario {}   kernel {}   seed {}", r.scenario, r.kernel, r.seed)?;
    write_clients(out, "connections", &r.clients)?;
    write_counters(out, &r.conntrack)?;
    let s = &r.snat;
    writeln!(
        out,
        "snat     {} allocations, {} kept the client port, {} exhausted; probes max {}; ports in use max {} of {}",
        s.stats.allocations, s.stats.kept_original, s.stats.exhausted, s.stats.probes_max, s.ports_in_use_max, s.range
    )?;
    write_tcp(out, &r.tcp)?;
    write_analytic(out, &r.analytic)
}

fn write_listener<W: Write>(out: &mut W, r: &ListenerReport) -> std::io::Result<()> {
    writeln!(out, "scenario {}   kernel {}   seed {}", r.scenario, r.kernel, r.seed)?;
    write_clients(out, "connections", &r.clients)?;
    write_counters(out, &r.conntrack)?;
    write_tcp(out, &r.tcp)?;
    if r.hosts.len() <= 16 {
        for (i, h) in r.hosts.iter().enumerate() {
            writeln!(
                out,
                "host {i:<3} {} connections, first SYN dropped {}, retried {}, failed {}",
                h.connections, h.first_syn_dropped, h.retried, h.failed
            )?;
        }
    }
    write_analytic(out, &r.analytic)
}

fn write_clients<W: Write>(out: &mut W, what: &str, c: &ClientStats) -> std::io::Result<()> {
    let share = |n: u64| if c.requests == 0 { 0.0 } else { 100.0 * n as f64 / c.requests as f64 };
    writeln!(
        out,
        "{what:<8} {}: ok {}, failed {}, retried {} ({:.2}%)",
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
    Ok(())
}

fn write_counters<W: Write>(out: &mut W, c: &std::collections::BTreeMap<&str, u64>) -> std::io::Result<()> {
    let counters: Vec<String> = c.iter().map(|(k, v)| format!("{k}={v}")).collect();
    writeln!(out, "conntrack  {}", counters.join(" "))
}

fn write_tcp<W: Write>(out: &mut W, t: &TcpStats) -> std::io::Result<()> {
    writeln!(
        out,
        "tcp      syn_dropped_paws={} syn_dropped_backlog={} listen_overflows={} syncookies_sent={} syn_retransmits={}",
        t.syn_dropped_paws, t.syn_dropped_backlog, t.listen_overflows, t.syncookies_sent, t.syn_retransmits
    )
}

fn write_analytic<W: Write>(out: &mut W, preds: &[Prediction]) -> std::io::Result<()> {
    writeln!(out, "\nanalytic (closed form beside the simulation)")?;
    // Wide enough for the longest name, so the columns line up.
    let w = preds.iter().map(|p| p.name.chars().count()).max().unwrap_or(0).max(48);
    for p in preds {
        let sim = p.simulated.map_or("-".to_string(), |v| format!("{v:.4}"));
        writeln!(out, "  {:<w$} predicted {:<12.4} simulated {sim}", p.name, p.predicted)?;
        writeln!(out, "  {:<w$} {}", "", p.formula)?;
    }
    Ok(())
}
