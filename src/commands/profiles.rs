//! `racetrack profiles [--show NAME|FILE] [--format F]`.

use std::io::Write;
use std::process::ExitCode;

use racetrack_engine::profile::{presets, ClashPolicy, KernelProfile, PortOffset, PortSearch};
use serde::Serialize;

use crate::cli::Format;
use crate::error::CliError;
use crate::output::{json_line, Table};

pub fn run<W: Write>(out: &mut W, show: Option<&str>, format: Format) -> Result<ExitCode, CliError> {
    if let Some(spec) = show {
        let p = KernelProfile::resolve(spec)?;
        match format {
            Format::Table => write!(out, "{}", p.to_toml())?,
            Format::Json => json_line(out, "profile", &p)?,
            f => return Err(f.unsupported("profiles", &[Format::Table, Format::Json])),
        }
        return Ok(ExitCode::SUCCESS);
    }
    let all = presets();
    match format {
        Format::Json => {
            for p in &all {
                json_line(out, "profile_summary", &Summary::of(p))?;
            }
        }
        Format::Table => {
            let mut t = Table::new(["kernel", "clash", "snat port search", "counters", "summary"]);
            for p in &all {
                let s = Summary::of(p);
                t.row([s.name, s.clash, s.snat, s.counters, s.summary]);
            }
            t.write(out)?;
        }
        f => return Err(f.unsupported("profiles", &[Format::Table, Format::Json])),
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct Summary {
    name: String,
    clash: String,
    snat: String,
    counters: String,
    summary: String,
}

impl Summary {
    fn of(p: &KernelProfile) -> Self {
        let clash = match p.conntrack.clash {
            ClashPolicy::Drop => "drop",
            ClashPolicy::MergeWithoutNat => "merge if no NAT",
            ClashPolicy::MergeMatching => "merge identical",
            ClashPolicy::MergeOrNatClash => "merge or NAT_CLASH",
        };
        let start = match p.nat.default_offset {
            PortOffset::Rover => "rover",
            PortOffset::SecureHash => "hash",
            PortOffset::Random => "random",
        };
        let snat = match p.nat.search {
            PortSearch::Exhaustive => format!("{start}, exhaustive"),
            PortSearch::Bounded { attempts, .. } => format!("{start}, bounded {attempts}"),
        };
        let c = &p.counters;
        let mut counters = vec![];
        if !c.insert {
            counters.push("no insert");
        }
        if c.clash_resolve {
            counters.push("clash_resolve");
        }
        if p.conntrack.chain_limit.is_some() {
            counters.push("chaintoolong");
        }
        if !c.drop_on_clash {
            counters.push("no drop on clash");
        }
        Summary {
            name: p.name.clone(),
            clash: clash.into(),
            snat,
            counters: if counters.is_empty() { "-".into() } else { counters.join(", ") },
            summary: p.summary.clone(),
        }
    }
}
