//! Command-line arguments (clap derive): the low-level form, turned into a
//! validated plan by `commands`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

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
        /// Files from a real node that set the scenario's parameters.
        #[command(flatten)]
        inputs: InputArgs,
        /// Output format (default: table on a terminal, json otherwise).
        #[arg(long, value_enum)]
        format: Option<Format>,
    },
    /// Run a scenario over a grid of parameter values, kernels and seeds, in
    /// parallel; report each point's mean and 95 % confidence interval.
    Sweep(SweepArgs),
    /// Hammer one table with real threads: race counting under real
    /// concurrency, and the table's speed.
    Stress(StressArgs),
    /// Show a race step by step on two CPUs, then each fix (for teaching).
    Explain {
        /// `dns-dnat`, `snat-port`, `tw-recycle` or `syn-backlog`.
        race: String,
        /// Kernel preset or profile TOML file (default per race: 4.14 for
        /// `dns-dnat`, 4.19 `snat-port`, 4.9 `tw-recycle`, 5.10 `syn-backlog`).
        #[arg(long, value_name = "NAME|FILE")]
        kernel: Option<String>,
        /// Output format (default: table on a terminal, json otherwise).
        #[arg(long, value_parser = formats(&[Format::Table, Format::Json]))]
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
        #[arg(long, value_parser = formats(&[Format::Table, Format::Json]))]
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
        #[arg(long, value_parser = formats(&[Format::Table, Format::Json]), default_value = "table")]
        format: Format,
    },
}

/// Files from a real node: applied after the scenario's defaults and
/// before `--set`, so `--set` wins.
#[derive(Debug, Clone, Default, Args)]
pub struct InputArgs {
    /// `iptables-save` output (its nat table): the DNS service's endpoints
    /// for `dns`, the MASQUERADE/SNAT flags and ports for `snat`.
    #[arg(long, value_name = "FILE")]
    pub iptables_save: Option<PathBuf>,
    /// A pod's `/etc/resolv.conf`: the `dns` scenario's `[resolv]` section.
    #[arg(long, value_name = "FILE")]
    pub resolv_conf: Option<PathBuf>,
    /// `sysctl -a` output: conntrack sizes and timeouts, TCP listener and
    /// `tcp_tw_recycle` settings.
    #[arg(long, value_name = "FILE")]
    pub sysctl: Option<PathBuf>,
    /// Which service of `--iptables-save` to model: `NAMESPACE/NAME[:PORT]`,
    /// `IP`, `IP:PORT`, `IP:PORT/PROTO` or `nodeport:PORT`.
    #[arg(long, value_name = "SPEC")]
    pub service: Option<String>,
}

/// Everything `racetrack sweep` is asked.
#[derive(Debug, clap::Args)]
pub struct SweepArgs {
    /// A built-in scenario (`racetrack scenarios`) or a scenario TOML file.
    #[arg(value_name = "SCENARIO|FILE")]
    pub scenario: String,
    /// A parameter and its values: `clients.rate=100,200,400`, or a range
    /// `FROM..TO:STEP` (`clients.rate=100..1000:100`). Repeat for a grid.
    #[arg(long = "over", value_name = "KEY=V1,V2,...", required = true)]
    pub over: Vec<String>,
    /// Kernel presets or profile files, comma-separated (default: the
    /// scenario's, as for `run`).
    #[arg(long, value_name = "P1,P2,...", value_delimiter = ',')]
    pub kernel: Vec<String>,
    /// Seeds per point: N, N+1, … (the interval needs at least 2).
    #[arg(long, default_value_t = 5, value_name = "K")]
    pub seeds: usize,
    /// Override a scenario parameter for every point, as for `run`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// First seed (default: the scenario's).
    #[arg(long)]
    pub seed: Option<u64>,
    /// A metric to report: a dotted key of `run`'s JSON summary, or a
    /// derived share (`clients.retried_share`). Repeatable; the first is
    /// plotted. Default: the scenario's headline metric and a few more.
    #[arg(long = "metric", value_name = "KEY")]
    pub metrics: Vec<String>,
    /// Also draw the first metric as an SVG line chart into this file.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<std::path::PathBuf>,
    /// Worker threads (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Files from a real node, applied to every point (before `--set` and `--over`).
    #[command(flatten)]
    pub inputs: InputArgs,
    /// Output format: table, json, csv or prom (default: table on a
    /// terminal, json otherwise).
    #[arg(long, value_parser = formats(&[Format::Table, Format::Json, Format::Csv, Format::Prom]))]
    pub format: Option<Format>,
}

/// Everything `racetrack stress` is asked.
#[derive(Debug, clap::Args)]
pub struct StressArgs {
    /// Worker threads, one per CPU.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// `pair` (two threads release one new flow at once), `snat`, `lookup`, `mixed`.
    #[arg(long, value_enum, default_value_t = StressWorkload::Pair)]
    pub workload: StressWorkload,
    /// Stop after this long (`2s`, `500ms`).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub duration: std::time::Duration,
    /// Stop after this many operations (whichever comes first).
    #[arg(long)]
    pub ops: Option<u64>,
    /// Kernel preset or profile TOML file.
    #[arg(long, value_name = "NAME|FILE", default_value = "4.19")]
    pub kernel: String,
    /// Busy work between lookup and confirm, standing for the rest of the
    /// packet path (the real race window). `0s` allowed.
    #[arg(long, default_value = "2us", value_parser = humantime::parse_duration)]
    pub window: std::time::Duration,
    /// DNAT endpoints for `pair` (default 1).
    #[arg(long)]
    pub endpoints: Option<u32>,
    /// `snat`: MASQUERADE with `--random-fully`.
    #[arg(long)]
    pub random_fully: bool,
    /// Established flows for `lookup` and `mixed`; live flows for `snat`
    /// (default 10000).
    #[arg(long)]
    pub flows: Option<u32>,
    /// Seed of the workers' generators.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Also run the workload on a `DashMap` and a `Mutex<HashMap>` (lookup, mixed).
    #[arg(long)]
    pub baselines: bool,
    /// Run with 1..=N threads, beside an embarrassingly parallel reference loop.
    #[arg(long)]
    pub scaling: bool,
    /// Output format (default: table on a terminal, json otherwise).
    #[arg(long, value_enum)]
    pub format: Option<Format>,
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

/// A `--format` parser that takes only `allowed`, so that `--help` lists
/// what the command can print.
fn formats(allowed: &'static [Format]) -> impl clap::builder::TypedValueParser<Value = Format> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(allowed.iter().filter_map(ValueEnum::to_possible_value))
        .map(|name| <Format as ValueEnum>::from_str(&name, true).expect("a format it listed"))
}

impl Format {
    /// The name `--format` takes.
    pub fn name(self) -> String {
        self.to_possible_value().map_or_else(|| format!("{self:?}"), |v| v.get_name().to_string())
    }

    /// The exit-2 error for a format `command` cannot print; `supported` are those it can.
    pub fn unsupported(self, command: &str, supported: &[Format]) -> crate::error::CliError {
        let list: Vec<String> = supported.iter().map(|f| f.name()).collect();
        crate::error::CliError::Input(format!(
            "{command}: --format {} is not supported here (use {})",
            self.name(),
            list.join(" or ")
        ))
    }
}
