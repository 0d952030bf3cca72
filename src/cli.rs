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
