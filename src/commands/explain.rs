//! `racetrack explain RACE [--kernel P] [--format F]`: a race step by step,
//! on two CPUs side by side, then each fix.

use std::io::Write;
use std::process::ExitCode;

use racetrack_engine::KernelProfile;
use racetrack_models::explain::{explain, human, Entry, Explanation, Outcome, Race, Run, Step};
use serde::Serialize;

use crate::cli::Format;
use crate::commands::run::default_format;
use crate::error::CliError;
use crate::output::json_line;

/// Width of one CPU column.
const COL: usize = 40;
/// Step number and time, before the columns.
const LEAD: usize = 16;
/// Widest line printed.
const WIDTH: usize = 100;

pub fn run<W: Write>(
    out: &mut W,
    race: &str,
    kernel: Option<&str>,
    format: Option<Format>,
) -> Result<ExitCode, CliError> {
    let Some(r) = Race::from_name(race) else {
        return Err(CliError::Input(format!("explain: no such race `{race}` (known: {})", Race::names().join(", "))));
    };
    let format = format.unwrap_or_else(default_format);
    if !matches!(format, Format::Json | Format::Table) {
        return Err(format.unsupported("explain", &[Format::Table, Format::Json]));
    }
    let profile = KernelProfile::resolve(kernel.unwrap_or(r.default_kernel()))?;
    let e = explain(r, &profile);
    match format {
        Format::Table => write_table(out, &e)?,
        _ => write_json(out, &e)?,
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct StepRecord<'a> {
    race: &'a str,
    run: &'a str,
    kernel: &'a str,
    fix: bool,
    #[serde(flatten)]
    step: &'a Step,
}

#[derive(Serialize)]
struct OutcomeRecord<'a> {
    race: &'a str,
    run: &'a str,
    kernel: &'a str,
    fix: bool,
    setup: &'a str,
    steps: usize,
    #[serde(flatten)]
    outcome: &'a Outcome,
}

fn write_json<W: Write>(out: &mut W, e: &Explanation) -> std::io::Result<()> {
    for r in &e.runs {
        for s in &r.steps {
            json_line(out, "step", &StepRecord { race: e.race, run: &r.name, kernel: &r.kernel, fix: r.fix, step: s })?;
        }
        let o = OutcomeRecord {
            race: e.race,
            run: &r.name,
            kernel: &r.kernel,
            fix: r.fix,
            setup: &r.setup,
            steps: r.steps.len(),
            outcome: &r.outcome,
        };
        json_line(out, "outcome", &o)?;
    }
    Ok(())
}

/// Word-wrap `text` to lines of at most `width` characters.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut cur = String::new();
    for word in text.split_whitespace() {
        let mut word = word.to_string();
        while word.chars().count() > width {
            if !cur.is_empty() {
                lines.push(std::mem::take(&mut cur));
            }
            let head: String = word.chars().take(width).collect();
            word = word.chars().skip(width).collect();
            lines.push(head);
        }
        let len = cur.chars().count();
        if len > 0 && len + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push(' ');
        }
        cur.push_str(&word);
    }
    if !cur.is_empty() {
        lines.push(cur);
    }
    if lines.is_empty() {
        lines.push(String::new());
    }
    lines
}

fn paragraph<W: Write>(out: &mut W, label: &str, text: &str) -> std::io::Result<()> {
    let indent = " ".repeat(label.chars().count());
    for (i, l) in wrap(text, WIDTH - indent.len()).iter().enumerate() {
        writeln!(out, "{}{l}", if i == 0 { label } else { &indent })?;
    }
    Ok(())
}

fn write_table<W: Write>(out: &mut W, e: &Explanation) -> std::io::Result<()> {
    writeln!(out, "explain {}   kernel {}", e.race, e.kernel)?;
    paragraph(out, "", &e.intro)?;
    for r in &e.runs {
        writeln!(out)?;
        write_run(out, r)?;
    }
    Ok(())
}

/// The parts of an entry that a step changes (not the time left).
fn same_entries(a: &[Entry], b: &[Entry]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| (&x.orig, &x.reply, &x.status, x.tcp_state) == (&y.orig, &y.reply, &y.status, y.tcp_state))
}

fn write_run<W: Write>(out: &mut W, r: &Run) -> std::io::Result<()> {
    writeln!(out, "== {} ==", r.name)?;
    paragraph(out, "", &r.setup)?;
    writeln!(out, "{:>2}  {:<10}  {:<COL$} | CPU 1", "#", "time", "CPU 0")?;
    let mut prev: Option<(&[Entry], usize)> = None;
    for s in &r.steps {
        let time = human(s.at_ns);
        let lead = |i: usize| if i == 0 { format!("{:>2}  {:<10}  ", s.step, time) } else { " ".repeat(LEAD) };
        match s.cpu {
            Some(cpu) => {
                for (i, l) in wrap(&s.text, COL).iter().enumerate() {
                    let (c0, c1) = if cpu == 0 { (l.as_str(), "") } else { ("", l.as_str()) };
                    writeln!(out, "{}{}", lead(i), format!("{c0:<COL$} | {c1}").trim_end())?;
                }
            }
            None => {
                for (i, l) in wrap(&s.text, WIDTH - LEAD).iter().enumerate() {
                    writeln!(out, "{}{l}", lead(i))?;
                }
            }
        }
        if let Some(check) = &s.check {
            paragraph(out, "    check failed: ", check)?;
        }
        match prev {
            Some((t, n)) if n == s.table_size && same_entries(t, &s.table) => {
                writeln!(out, "    table: unchanged ({})", entries(s.table_size))?;
            }
            _ => write_entries(out, s)?,
        }
        prev = Some((&s.table, s.table_size));
        writeln!(out, "    counters: {}", moved(s))?;
    }
    paragraph(out, "outcome: ", &r.outcome.summary)?;
    paragraph(out, "why: ", &r.outcome.why)?;
    let end: Vec<String> = r.outcome.counters.iter().map(|(k, v)| format!("{k}={v}")).collect();
    paragraph(out, "counters at the end: ", &if end.is_empty() { "all 0".to_string() } else { end.join(" ") })
}

fn entries(n: usize) -> String {
    match n {
        0 => "empty".into(),
        1 => "1 entry".into(),
        n => format!("{n} entries"),
    }
}

fn write_entries<W: Write>(out: &mut W, s: &Step) -> std::io::Result<()> {
    writeln!(out, "    table: {}", entries(s.table_size))?;
    // A big table (a burst) shows its first two entries only.
    let shown = if s.table_size > s.table.len() { 2 } else { s.table.len() };
    for e in &s.table[..shown] {
        let one = format!("      {}  =>  {}", e.orig, e.reply);
        if one.chars().count() <= WIDTH {
            writeln!(out, "{one}")?;
        } else {
            writeln!(out, "      {}", e.orig)?;
            writeln!(out, "        => {}", e.reply)?;
        }
        let state = e.tcp_state.map(|t| format!(" {t}")).unwrap_or_default();
        // A NAT_CLASH entry is linked by its reply tuple alone (5.6+).
        let only = if e.status.iter().any(|b| b == "NAT_CLASH") { ", found by its reply tuple only" } else { "" };
        let line = format!("{}{state}, expires in {}{only}", e.status.join(" "), human(e.expires_in_ns));
        paragraph(out, "        ", &line)?;
    }
    if s.table_size > shown {
        writeln!(out, "      ... and {} more", s.table_size - shown)?;
    }
    Ok(())
}

fn moved(s: &Step) -> String {
    if s.counters.is_empty() {
        return "none moved".into();
    }
    s.counters.iter().map(|(k, v)| format!("{k} +{v}")).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_keeps_lines_within_width_and_loses_no_word() {
        let text = "confirm: reply tuple udp 10.244.2.10:53 -> 10.244.1.5:40000 already in the table; averyveryverylongwordthatmustbesplit";
        let lines = wrap(text, 20);
        assert!(lines.iter().all(|l| l.chars().count() <= 20), "{lines:?}");
        assert_eq!(lines.concat().replace(' ', ""), text.replace(' ', ""));
    }
}
