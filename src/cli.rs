//! Command-line arguments (clap derive): the low-level form, turned into a
//! validated plan by `commands`.

use clap::{Parser, Subcommand, ValueEnum};

/// A userspace model of Linux conntrack and NAT races: why DNS lookups take
/// 5 s, why insert_failed climbs, why SYNs vanish behind NAT.
///
/// With no command, prints the demo.
#[derive(Debug, Parser)]
#[command(name = "racetrack", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a scenario (built-in name or TOML file) on the simulator.
    Run {
        /// A built-in scenario (`racetrack scenarios`) or a scenario TOML file.
        #[arg(value_name = "SCENARIO|FILE")]
        scenario: String,
        /// Kernel preset or profile TOML file.
        #[arg(long, value_name = "NAME|FILE", default_value = "4.19")]
        kernel: String,
        /// Override a scenario parameter, e.g. `--set clients.resolver=musl`
        /// (`racetrack scenarios --show NAME` lists every key).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Seed of the run (the same seed gives the same output).
        #[arg(long)]
        seed: Option<u64>,
        /// Output format (default: table on a terminal, json otherwise).
        #[arg(long, value_enum)]
        format: Option<Format>,
    },
    /// List the built-in scenarios, or print one as TOML.
    Scenarios {
        /// Print this scenario as TOML: every parameter `--set` accepts.
        #[arg(long, value_name = "NAME")]
        show: Option<String>,
    },
    /// List the kernel profiles, or print one as TOML.
    Profiles {
        /// Print this preset (or TOML file) as TOML, ready to copy and edit.
        #[arg(long, value_name = "NAME|FILE")]
        show: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
}

/// How results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned text for a person.
    Table,
    /// JSON Lines: one `{"type": ..., "data": ...}` object per line.
    Json,
}
