//! `racetrack diagnose FILE [--kernel P] [--no-verify] [--check] [--format table|json]`.

use std::io::{Read, Write};
use std::process::ExitCode;

use racetrack_engine::input::utf8_text;
use racetrack_engine::profile::preset;
use racetrack_engine::KernelProfile;
use racetrack_models::diagnose::{self, Diagnosis, Kernel, Severity, Source};

use crate::cli::Format;
use crate::error::CliError;
use crate::output::json_line;

/// Everything `racetrack diagnose` was asked.
pub struct Args {
    pub file: String,
    pub kernel: Option<String>,
    pub no_verify: bool,
    pub check: bool,
    pub format: Option<Format>,
}

fn read_input(file: &str) -> Result<String, CliError> {
    let mut bytes = Vec::new();
    if file == "-" {
        std::io::stdin().read_to_end(&mut bytes).map_err(|e| CliError::Input(format!("-: cannot read stdin: {e}")))?;
    } else {
        bytes = std::fs::read(file).map_err(|e| CliError::Input(format!("{file}: cannot read: {e}")))?;
    }
    utf8_text(file, &bytes).map(str::to_string).map_err(|e| CliError::Input(e.to_string()))
}

pub fn run<W: Write>(out: &mut W, a: Args) -> Result<ExitCode, CliError> {
    let format = a.format.unwrap_or_else(super::run::default_format);
    if !matches!(format, Format::Table | Format::Json) {
        return Err(format.unsupported("diagnose", &[Format::Table, Format::Json]));
    }
    let given = a.kernel.as_deref().map(KernelProfile::resolve).transpose()?;
    let text = read_input(&a.file)?;
    let sample = diagnose::parse(&text, &a.file).map_err(|e| CliError::Input(e.to_string()))?;
    let kernel = match (&given, &a.kernel) {
        // A profile file is named by its path in the commands printed, not by the name inside it.
        (Some(p), Some(spec)) => Kernel::given(p, spec),
        _ => Kernel::infer(&sample),
    };
    if let (Some(_), Some(why)) = (&given, kernel.contradiction(&sample)) {
        eprintln!("racetrack: note: {}: {why}", a.file);
    }
    let generation = kernel.generation;
    let mut d = diagnose::diagnose(&sample, kernel);
    if !a.no_verify {
        let profile = given.unwrap_or_else(|| preset(generation.preset()).expect("generation presets exist"));
        diagnose::verify(&mut d, &profile);
    }
    match format {
        Format::Json => json_line(out, "diagnosis", &d)?,
        _ => write_table(out, &d)?,
    }
    let problem = d.findings.iter().any(|f| f.severity == Severity::Problem);
    Ok(if a.check && problem { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

fn write_table<W: Write>(out: &mut W, d: &Diagnosis) -> std::io::Result<()> {
    let source = match d.source {
        Source::ConntrackS => "conntrack -S",
        Source::ProcStat => "/proc/net/stat/nf_conntrack",
    };
    let entries = d.entries.map_or(String::new(), |e| format!(", {e} entries"));
    writeln!(out, "input    {source}, {} CPUs{entries}", d.cpus)?;
    let how = if d.kernel.profile.is_some() { "given" } else { "inferred" };
    writeln!(out, "kernel   {how}: {}", d.kernel.basis)?;
    let totals: Vec<String> = d.totals.iter().map(|(k, v)| format!("{k}={v}")).collect();
    writeln!(out, "totals   {}", totals.join(" "))?;
    for f in &d.findings {
        let sev = match f.severity {
            Severity::Problem => "problem",
            Severity::Notice => "notice",
            Severity::Ok => "ok",
        };
        let kind = serde_json::to_value(f.kind).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
        writeln!(out, "\n[{sev}] {kind}: {}", f.evidence)?;
        writeln!(out, "  reading     {}", f.reading)?;
        for r in &f.reproduce {
            writeln!(out, "  reproduce   {r}")?;
        }
        if let Some(m) = &f.mitigation {
            writeln!(out, "  mitigation  {}", m.advice)?;
            for c in &m.checks {
                let verdict = if c.helps { "racetrack predicts it helps" } else { "no gain in racetrack's model" };
                writeln!(out, "  checked     {}   ({verdict})", c.without)?;
                writeln!(out, "         vs   {}", c.with)?;
                for fig in &c.figures {
                    writeln!(
                        out,
                        "              {:<40} {:>10} → {}",
                        fig.name,
                        fmt_num(fig.without),
                        fmt_num(fig.with)
                    )?;
                }
            }
        }
    }
    Ok(())
}

fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}
