//! `--format conntrack`: the per-CPU lines `conntrack -S` (conntrack-tools) prints.
//!
//! conntrack-tools prints `cpu=%-4u\t`, then `name=%u ` for every statistic the
//! kernel sent, in netlink attribute order, then a newline (so each line ends in
//! a space). Which statistics are sent depends on the kernel: see
//! [`super::printed_counters`].

use std::io::{self, Write};

use super::Counters;

/// Write one line per CPU.
pub fn write<W: Write>(out: &mut W, c: &Counters<'_>) -> io::Result<()> {
    let fields = c.printed();
    for (cpu, m) in c.per_cpu.iter().enumerate() {
        let mut line = format!("cpu={cpu:<4}\t");
        for f in &fields {
            line.push_str(&format!("{f}={} ", m.get(f).copied().unwrap_or(0)));
        }
        writeln!(out, "{line}")?;
    }
    Ok(())
}
