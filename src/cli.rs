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
        /// Kernel preset or profile TOML file (default: 4.19; 4.9 for
        /// `tw-recycle`, which needs a kernel that still has `tcp_tw_recycle`).
        #[arg(long, value_name = "NAME|FILE")]
        kernel: Option<String>,
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
    /// Hammer one table with real threads: race counting under real
    /// concurrency, and the table's speed.
    Stress {
        /// Worker threads, one per CPU.
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// `pair` (two threads release one new flow at once), `snat`, `lookup`, `mixed`.
        #[arg(long, value_enum, default_value_t = StressWorkload::Pair)]
        workload: StressWorkload,
        /// Stop after this long (`2s`, `500ms`).
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        duration: std::time::Duration,
        /// Stop after this many operations (whichever comes first).
        #[arg(long)]
        ops: Option<u64>,
        /// Kernel preset or profile TOML file.
        #[arg(long, value_name = "NAME|FILE", default_value = "4.19")]
        kernel: String,
        /// Busy work between lookup and confirm, standing for the rest of the
        /// packet path (the real race window). `0s` allowed.
        #[arg(long, default_value = "2us", value_parser = humantime::parse_duration)]
        window: std::time::Duration,
        /// DNAT endpoints for `pair`.
        #[arg(long, default_value_t = 1)]
        endpoints: u32,
        /// `snat`: MASQUERADE with `--random-fully`.
        #[arg(long)]
        random_fully: bool,
        /// Established flows for `lookup` and `mixed`; live flows for `snat`.
        #[arg(long, default_value_t = 10_000)]
        flows: u32,
        /// Seed of the workers' generators.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Also run the workload on a `DashMap` and a `Mutex<HashMap>` (lookup, mixed).
        #[arg(long)]
        baselines: bool,
        /// Run with 1..=N threads, beside an embarrassingly parallel reference loop.
        #[arg(long)]
        scaling: bool,
        /// Output format (default: table on a terminal, json otherwise).
        #[arg(long, value_enum)]
        format: Option<Format>,
    },
    /// Read a node's `conntrack -S` output (or /proc/net/stat/nf_conntrack) and
    /// say what the counters point to, with a scenario that reproduces each finding.
    Diagnose {
        /// The file to read; `-` for stdin.
        #[arg(value_name = "FILE")]
        file: String,
        /// The node's kernel: a preset or profile TOML file (default: inferred
        /// from which counters are printed).
        #[arg(long, value_name = "NAME|FILE")]
        kernel: Option<String>,
        /// Skip running the scenarios that check each proposed mitigation.
        #[arg(long)]
        no_verify: bool,
        /// Exit 1 if any finding is a problem (packets lost).
        #[arg(long)]
        check: bool,
        /// Output format: table or json (default: table on a terminal, json otherwise).
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

/// The stress workloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StressWorkload {
    /// Two threads release the first packet of one new UDP flow at once (udpclash).
    Pair,
    /// New TCP flows to one destination through MASQUERADE.
    Snat,
    /// Established flows, read-mostly.
    Lookup,
    /// Established, new and closing flows, with GC.
    Mixed,
}

/// How results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned text for a person.
    Table,
    /// JSON Lines: one `{"type": ..., "data": ...}` object per line.
    Json,
    /// A header line and one row: the JSON summary's leaves by key path.
    Csv,
    /// The per-CPU lines `conntrack -S` prints.
    Conntrack,
    /// Prometheus text exposition, node_exporter's names for the summed counters.
    Prom,
}
