//! Diagnosis of a real node's conntrack statistics: parse `conntrack -S` output or
//! `/proc/net/stat/nf_conntrack`, read the counters with the semantics of the
//! kernel generation that printed them, and say what they point to.
//!
//! Parsing and analysis are pure (text in, [`Diagnosis`] out); [`verify`] then runs
//! the matching scenarios with and without each proposed mitigation and attaches
//! the figures.
//!
//! What each counter means per kernel version follows racetrack's kernel profiles
//! (`[counters]`): before 5.10 a resolved clash still counts `insert_failed`
//! (4.7–5.9) or no clash is ever resolved (3.10–4.6, where `drop` is not touched);
//! from 5.10 resolved clashes count `clash_resolve` and `insert_failed` only the
//! unresolved ones; from 5.15 `chaintoolong` also counts `insert_failed`.

use std::collections::BTreeMap;
use std::fmt;

use racetrack_engine::profile::ClashPolicy;
use racetrack_engine::KernelProfile;
use serde::Serialize;

use crate::dns::{self, DnsScenario};
use crate::snat::{self, SnatScenario};

/// Which text the statistics came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// `conntrack -S`: `cpu=N<TAB>name=value ...` per CPU.
    ConntrackS,
    /// `/proc/net/stat/nf_conntrack`: a header line, then hex columns per CPU.
    ProcStat,
}

/// One CPU's counters as read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CpuLine {
    /// CPU number (`cpu=` for `conntrack -S`, the line's position for /proc).
    pub cpu: u32,
    /// Counters by `conntrack -S` name.
    pub counters: BTreeMap<String, u64>,
}

/// Parsed statistics.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Sample {
    /// What was parsed.
    pub source: Source,
    /// The counters present, in the order they were printed (`conntrack -S` names;
    /// /proc columns are renamed: `clashres` → `clash_resolve`, `chainlength` →
    /// `chaintoolong`, `icmp_error` → `error`).
    pub fields: Vec<String>,
    /// One entry per CPU line.
    pub cpus: Vec<CpuLine>,
    /// Entries in the table (/proc's first column), when known.
    pub entries: Option<u64>,
}

impl Sample {
    /// A counter summed over CPUs (0 when absent).
    pub fn total(&self, name: &str) -> u64 {
        // Saturating: a corrupt file's huge values must not wrap (or panic in a debug build).
        self.cpus.iter().map(|c| c.counters.get(name).copied().unwrap_or(0)).fold(0, u64::saturating_add)
    }

    /// Whether the counter was printed.
    pub fn has(&self, name: &str) -> bool {
        self.fields.iter().any(|f| f == name)
    }
}

/// Text that is neither form, or a malformed line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// The file (or `-`).
    pub source: String,
    /// 1-based line.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.source, self.line, self.message)
    }
}

impl std::error::Error for ParseError {}

/// Statistics names `conntrack -S` prints, in netlink attribute order (the order
/// conntrack-tools prints them in); `unknown1..4` are what conntrack-tools 2020+
/// prints for attributes newer than itself.
const CONNTRACK_S_NAMES: [&str; 19] = [
    "searched",
    "found",
    "new",
    "invalid",
    "ignore",
    "delete",
    "delete_list",
    "insert",
    "insert_failed",
    "drop",
    "early_drop",
    "error",
    "search_restart",
    "clash_resolve",
    "chaintoolong",
    "unknown1",
    "unknown2",
    "unknown3",
    "unknown4",
];

/// Parse `conntrack -S` output or `/proc/net/stat/nf_conntrack`, whichever `text` is.
/// `source` names the input in errors.
pub fn parse(text: &str, source: &str) -> Result<Sample, ParseError> {
    let err = |line: usize, message: String| ParseError { source: source.to_string(), line, message };
    let mut lines =
        text.lines().enumerate().map(|(i, l)| (i + 1, l.trim_end_matches('\r'))).filter(|(_, l)| !l.trim().is_empty());
    let Some((first_no, first)) = lines.next() else {
        return Err(err(1, "empty: expected `conntrack -S` output or /proc/net/stat/nf_conntrack".into()));
    };
    let rest: Vec<(usize, &str)> = lines.collect();
    if first.trim_start().starts_with("cpu=") {
        parse_conntrack_s(std::iter::once((first_no, first)).chain(rest), &err)
    } else if first.split_whitespace().next() == Some("entries") {
        parse_proc(first_no, first, rest, &err)
    } else {
        Err(err(
            first_no,
            "neither `conntrack -S` output (lines `cpu=N found=...`) nor /proc/net/stat/nf_conntrack (a header starting with `entries`)"
                .into(),
        ))
    }
}

fn parse_conntrack_s<'a>(
    lines: impl Iterator<Item = (usize, &'a str)>,
    err: &dyn Fn(usize, String) -> ParseError,
) -> Result<Sample, ParseError> {
    let mut cpus: Vec<CpuLine> = Vec::new();
    let mut fields: Option<(usize, Vec<String>)> = None;
    for (no, line) in lines {
        let mut tokens = line.split_whitespace();
        let cpu_tok = tokens.next().unwrap_or_default();
        let cpu = cpu_tok
            .strip_prefix("cpu=")
            .and_then(|n| n.parse::<u32>().ok())
            .ok_or_else(|| err(no, format!("`{cpu_tok}`: expected `cpu=N` at the start of the line")))?;
        if cpus.iter().any(|c| c.cpu == cpu) {
            return Err(err(no, format!("cpu={cpu} appears twice")));
        }
        let mut counters = BTreeMap::new();
        let mut names = Vec::new();
        for tok in tokens {
            let (name, value) = tok.split_once('=').ok_or_else(|| err(no, format!("`{tok}`: expected name=value")))?;
            if !CONNTRACK_S_NAMES.contains(&name) {
                return Err(err(
                    no,
                    format!("unknown counter `{name}` (conntrack -S prints: {})", CONNTRACK_S_NAMES.join(", ")),
                ));
            }
            let value: u64 = value.parse().map_err(|_| err(no, format!("`{tok}`: `{value}` is not a count")))?;
            if counters.insert(name.to_string(), value).is_some() {
                return Err(err(no, format!("`{name}` appears twice")));
            }
            names.push(name.to_string());
        }
        if names.is_empty() {
            return Err(err(no, format!("cpu={cpu} has no counters")));
        }
        match &fields {
            None => fields = Some((no, names)),
            Some((first, f)) if *f != names => {
                return Err(err(no, format!("the counters differ from those of line {first} ({})", f.join(" "))));
            }
            Some(_) => {}
        }
        cpus.push(CpuLine { cpu, counters });
    }
    let (_, mut fields) = fields.expect("at least one line was parsed");
    // conntrack-tools that know clash_resolve but not chaintoolong print the
    // latter (the next netlink attribute) as `unknown1`.
    if fields.iter().any(|f| f == "clash_resolve") && !fields.iter().any(|f| f == "chaintoolong") {
        if let Some(f) = fields.iter_mut().find(|f| *f == "unknown1") {
            *f = "chaintoolong".into();
            for c in &mut cpus {
                if let Some(v) = c.counters.remove("unknown1") {
                    c.counters.insert("chaintoolong".into(), v);
                }
            }
        }
    }
    Ok(Sample { source: Source::ConntrackS, fields, cpus, entries: None })
}

fn parse_proc(
    header_no: usize,
    header: &str,
    rest: Vec<(usize, &str)>,
    err: &dyn Fn(usize, String) -> ParseError,
) -> Result<Sample, ParseError> {
    const KNOWN: [&str; 20] = [
        "entries",
        "searched",
        "clashres",
        "found",
        "new",
        "invalid",
        "ignore",
        "delete",
        "delete_list",
        "chainlength",
        "insert",
        "insert_failed",
        "drop",
        "early_drop",
        "icmp_error",
        "expect_new",
        "expect_create",
        "expect_delete",
        "search_restart",
        "error",
    ];
    let columns: Vec<&str> = header.split_whitespace().collect();
    for c in &columns {
        if !KNOWN.contains(c) {
            return Err(err(header_no, format!("unknown column `{c}` in the /proc/net/stat/nf_conntrack header")));
        }
    }
    let rename = |c: &str| -> String {
        match c {
            "clashres" => "clash_resolve",
            "chainlength" => "chaintoolong",
            "icmp_error" => "error",
            c => c,
        }
        .to_string()
    };
    let fields: Vec<String> = columns.iter().filter(|c| **c != "entries").map(|c| rename(c)).collect();
    let mut cpus = Vec::new();
    let mut entries = None;
    if rest.is_empty() {
        return Err(err(header_no, "a header but no CPU lines".into()));
    }
    for (i, (no, line)) in rest.into_iter().enumerate() {
        let values: Vec<&str> = line.split_whitespace().collect();
        if values.len() != columns.len() {
            return Err(err(no, format!("{} columns, the header has {}", values.len(), columns.len())));
        }
        let mut counters = BTreeMap::new();
        for (c, v) in columns.iter().zip(&values) {
            let n = u64::from_str_radix(v, 16).map_err(|_| err(no, format!("`{v}` ({c}) is not a hex count")))?;
            if *c == "entries" {
                entries = Some(n);
            } else {
                counters.insert(rename(c), n);
            }
        }
        cpus.push(CpuLine { cpu: i as u32, counters });
    }
    Ok(Sample { source: Source::ProcStat, fields, cpus, entries })
}

/// Kernel generations whose counters mean different things (kernel.md §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Generation {
    /// 3.10–4.6 (and RHEL 7 before 7.8): no clash resolution; a clash counts
    /// `insert_failed` and drops the packet without touching `drop`.
    #[serde(rename = "3.10-4.6")]
    DropOnly,
    /// 4.7–5.9: `insert_failed` counts every clash, resolved or not; `drop` the unresolved.
    #[serde(rename = "4.7-5.9")]
    MergeCountsFailed,
    /// Before 5.10, not known which of the two above.
    #[serde(rename = "before-5.10")]
    Before5_10,
    /// 5.10–5.14: resolved clashes count `clash_resolve`; `insert_failed` ≈ `drop`.
    #[serde(rename = "5.10-5.14")]
    ClashResolve,
    /// 5.10 or later, printed by a conntrack-tools that does not show
    /// `clash_resolve` (so neither it nor `chaintoolong` is visible).
    #[serde(rename = "5.10+")]
    From5_10,
    /// 5.15+: as 5.10, and a too long chain counts `chaintoolong` and `insert_failed`.
    #[serde(rename = "5.15+")]
    ChainLimit,
}

impl Generation {
    /// The generation whose counter semantics a profile has.
    pub fn of(p: &KernelProfile) -> Generation {
        if p.counters.clash_resolve {
            if p.conntrack.chain_limit.is_some() {
                Generation::ChainLimit
            } else {
                Generation::ClashResolve
            }
        } else if p.counters.drop_on_clash {
            Generation::MergeCountsFailed
        } else {
            Generation::DropOnly
        }
    }

    /// The preset racetrack reproduces this generation with.
    pub fn preset(self) -> &'static str {
        match self {
            Generation::DropOnly => "4.4",
            Generation::MergeCountsFailed | Generation::Before5_10 => "4.14",
            Generation::ClashResolve | Generation::From5_10 => "5.10",
            Generation::ChainLimit => "5.15",
        }
    }

    fn counts_clash_resolve(self) -> bool {
        matches!(self, Generation::ClashResolve | Generation::From5_10 | Generation::ChainLimit)
    }
}

/// The kernel the statistics are read as coming from.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Kernel {
    /// Counter semantics used.
    pub generation: Generation,
    /// `--kernel`, when given (then nothing was inferred).
    pub profile: Option<String>,
    /// In plain words: how the generation was decided.
    pub basis: String,
    /// The kernel merges identical entries (4.19 and the like), so a DNS race
    /// drops only when the two queries were sent to different endpoints.
    #[serde(skip)]
    merges_identical: bool,
}

impl Kernel {
    /// From a `--kernel` profile; `spec` is how it was named (a preset or a file).
    pub fn given(p: &KernelProfile, spec: &str) -> Kernel {
        let g = Generation::of(p);
        Kernel {
            generation: g,
            profile: Some(spec.to_string()),
            basis: format!("--kernel {spec}: read with the counter semantics of {}", label(g)),
            merges_identical: merges_identical(p),
        }
    }

    /// Why the counters `s` prints cannot come from this given kernel, if
    /// they cannot: a field its generation does not have, or lacks one it
    /// always prints. The reading follows `--kernel` anyway (a vendor kernel
    /// may carry a backport), and says so.
    pub fn contradiction(&self, s: &Sample) -> Option<String> {
        let g = self.generation;
        let has_chain_limit = g == Generation::ChainLimit;
        let counts_resolve = g.counts_clash_resolve();
        let why = if s.has("chaintoolong") && !has_chain_limit {
            "chaintoolong is printed, which kernels before 5.15 do not have"
        } else if s.has("clash_resolve") && !counts_resolve {
            "clash_resolve is printed, which kernels before 5.10 do not have"
        } else if s.has("ignore") && counts_resolve {
            "ignore is printed, which kernels from 5.10 no longer send"
        } else {
            return None;
        };
        Some(format!("{why}, but the counters are read as {} as --kernel asks", label(g)))
    }

    /// Inferred from which counters were printed.
    pub fn infer(s: &Sample) -> Kernel {
        let (generation, basis) = if s.has("chaintoolong") {
            (Generation::ChainLimit, "chaintoolong is printed, so the kernel is 5.15 or later".to_string())
        } else if s.has("clash_resolve") {
            (Generation::ClashResolve, "clash_resolve is printed but chaintoolong is not: 5.10 to 5.14".to_string())
        } else if (s.has("searched") || s.has("ignore"))
            && s.has("insert")
            && s.total("insert") == 0
            && s.total("insert_failed") > 0
        {
            // A clash needs a winner that was inserted, and up to 4.8 every
            // insert was counted: insert = 0 beside insert_failed is 4.9+.
            (
                Generation::MergeCountsFailed,
                "ignore or searched is printed and clash_resolve is not: before 5.10; insert is 0 beside \
                 insert_failed, and kernels up to 4.8 count every insert: 4.9 to 5.9"
                    .to_string(),
            )
        } else if s.has("searched") || s.has("ignore") {
            let which = if s.has("searched") { "searched" } else { "ignore" };
            (
                Generation::Before5_10,
                format!(
                    "{which} is printed and clash_resolve is not: a kernel before 5.10; whether it resolves \
                     clashes (4.7+) cannot be told from the counters, pass --kernel"
                ),
            )
        } else {
            (
                Generation::From5_10,
                "neither ignore nor clash_resolve is printed: a 5.10+ kernel (it no longer sends ignore) with a \
                 conntrack-tools too old to show clash_resolve and chaintoolong"
                    .to_string(),
            )
        };
        Kernel { generation, profile: None, basis, merges_identical: false }
    }
}

fn merges_identical(p: &KernelProfile) -> bool {
    p.conntrack.clash == ClashPolicy::MergeMatching
}

/// The `--set` that makes the DNS scenario race on `p`: with one endpoint a
/// kernel that merges identical entries loses nothing.
fn dns_endpoints(merges: bool) -> &'static str {
    if merges {
        " --set service.endpoints=3"
    } else {
        ""
    }
}

fn label(g: Generation) -> &'static str {
    match g {
        Generation::DropOnly => "3.10–4.6",
        Generation::MergeCountsFailed => "4.7–5.9",
        Generation::Before5_10 => "a kernel before 5.10",
        Generation::ClashResolve => "5.10–5.14",
        Generation::From5_10 => "5.10+",
        Generation::ChainLimit => "5.15+",
    }
}

/// What a finding is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FindingKind {
    /// Insert races that lost packets.
    ClashDrops,
    /// `insert_failed` that may be dropped packets or harmless merges,
    /// depending on a kernel generation the counters do not reveal.
    ClashesAmbiguous,
    /// Insert races the kernel resolved: no packet lost.
    ResolvedClashes,
    /// The table was full: entries evicted, or packets dropped for want of room.
    TableFull,
    /// Inserts refused because a hash chain was too long.
    LongChains,
    /// `insert` reads 0: kernels from 4.9 count it only for ctnetlink inserts.
    InsertNotCounted,
    /// Nothing points to a problem.
    Healthy,
}

/// How much a finding matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Severity {
    /// Packets are being lost.
    Problem,
    /// Worth knowing; nothing lost, or not much.
    Notice,
    /// All is well.
    Ok,
}

/// A scenario run with and without a mitigation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Check {
    /// The command that reproduces the finding.
    pub without: String,
    /// The same with the mitigation.
    pub with: String,
    /// Figures; the first is what the clients saw.
    pub figures: Vec<Figure>,
    /// The mitigation lowered the first figure in racetrack's model.
    pub helps: bool,
}

/// One figure of a [`Check`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Figure {
    /// What is measured.
    pub name: String,
    /// Without the mitigation.
    pub without: f64,
    /// With it.
    pub with: f64,
}

/// A proposed mitigation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Mitigation {
    /// What to change, in plain words.
    pub advice: String,
    /// Set by [`verify`]: the figures racetrack measured.
    pub checks: Vec<Check>,
    #[serde(skip)]
    plan: Vec<Plan>,
}

/// A scenario pair [`verify`] runs.
#[derive(Clone, Debug, PartialEq)]
enum Plan {
    /// DNS lookups, with glibc `single-request-reopen`.
    DnsSingleRequestReopen,
    /// TCP through MASQUERADE with `--random-fully`.
    SnatRandomFully,
    /// DNS on a profile with `conntrack.max` lowered, against the preset's.
    DnsTableMax { max: u32 },
    /// DNS on a profile with few buckets, against the preset's.
    DnsBuckets { buckets: u32 },
}

/// One thing the counters point to.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Finding {
    /// What it is about.
    pub kind: FindingKind,
    /// How much it matters.
    pub severity: Severity,
    /// The numbers it rests on.
    pub evidence: String,
    /// What they mean.
    pub reading: String,
    /// Commands that reproduce it in racetrack.
    pub reproduce: Vec<String>,
    /// What racetrack predicts helps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mitigation: Option<Mitigation>,
}

/// The whole reading.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Diagnosis {
    /// What was parsed.
    pub source: Source,
    /// CPU lines read.
    pub cpus: usize,
    /// Table entries, when the input has them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entries: Option<u64>,
    /// Counters summed over CPUs, those printed.
    pub totals: BTreeMap<String, u64>,
    /// The kernel generation used to read them.
    pub kernel: Kernel,
    /// The findings, most serious first.
    pub findings: Vec<Finding>,
}

/// insert_failed per insert at or below which a node is healthy (field reports:
/// production clusters with the DNS mitigations see about 1e-5, with drop = 0).
pub const HEALTHY_RATIO: f64 = 1e-5;

/// Read the counters of `s` with the semantics of `kernel`.
pub fn diagnose(s: &Sample, mut kernel: Kernel) -> Diagnosis {
    if let Some(why) = kernel.profile.as_ref().and(kernel.contradiction(s)) {
        kernel.basis = format!("{}; note: {why}", kernel.basis);
    }
    let t = |n: &str| s.total(n);
    let (insert, ifail, drop, cr, ctl, ed) =
        (t("insert"), t("insert_failed"), t("drop"), t("clash_resolve"), t("chaintoolong"), t("early_drop"));
    let g = kernel.generation;
    let preset = kernel.profile.clone().unwrap_or_else(|| g.preset().to_string());
    let k = format!("--kernel {preset}");
    let ratio = |n: u64| if insert == 0 { None } else { Some(n as f64 / insert as f64) };
    let per_insert = |n: u64| ratio(n).map_or(String::new(), |r| format!(" ({r:.1e} per insert)"));
    let severity =
        |lost: u64| if ratio(lost).is_some_and(|r| r <= HEALTHY_RATIO) { Severity::Notice } else { Severity::Problem };
    let mut f: Vec<Finding> = Vec::new();
    let dns_cmd = |extra: &str| format!("racetrack run dns {k}{}{extra}", dns_endpoints(kernel.merges_identical));
    let snat_cmd = |extra: &str| format!("racetrack run snat {k}{extra}");
    let clash_mitigation = |udp: bool| {
        let mut plan = vec![Plan::SnatRandomFully];
        let mut advice =
            "TCP/SNAT: MASQUERADE with --random-fully (each allocation starts at a random port)".to_string();
        if udp {
            plan.insert(0, Plan::DnsSingleRequestReopen);
            advice = format!(
                "DNS: glibc `options single-request-reopen` (or a NOTRACK node-local DNS cache, or a 5.6+ kernel); {advice}"
            );
        }
        Mitigation { advice, checks: vec![], plan }
    };

    // Unresolved clashes and what is left of drop.
    let ifail_clash = ifail.saturating_sub(ctl);
    let (lost, extra_drop) = match g {
        Generation::DropOnly => (ifail, drop),
        Generation::MergeCountsFailed | Generation::Before5_10 => (drop.min(ifail), drop.saturating_sub(ifail)),
        _ => (drop.min(ifail_clash), drop.saturating_sub(ifail_clash)),
    };
    if lost > 0 {
        let udp = !g.counts_clash_resolve();
        let reading = match g {
            Generation::DropOnly => format!(
                "on {} every insert race drops its packet and counts only insert_failed: {lost} packets lost \
                 (a DNS query that waits out the resolver timeout, 5 s; a SYN retransmitted after 1 s)",
                label(g)
            ),
            Generation::MergeCountsFailed | Generation::Before5_10 => format!(
                "drop counts the insert races the kernel could not merge: {lost} packets lost. UDP races through a \
                 DNAT (DNS to a ClusterIP: 5 s lookups) and TCP SNAT port collisions (1 s connects) both end here"
            ),
            _ => format!(
                "from 5.10 insert_failed counts only the insert races the kernel could not resolve, each also \
                 counted by drop: {lost} packets lost. UDP races are merged or NAT_CLASHed on these kernels, so \
                 these are most likely TCP connections racing for one SNAT source port (1 s connect delays)"
            ),
        };
        let mut reproduce = vec![];
        if udp {
            reproduce.push(dns_cmd(""));
        }
        reproduce.push(snat_cmd(""));
        f.push(Finding {
            kind: FindingKind::ClashDrops,
            severity: severity(lost),
            evidence: format!("insert_failed={ifail} drop={drop}{}", per_insert(lost)),
            reading,
            reproduce,
            mitigation: Some(clash_mitigation(udp)),
        });
    }
    match g {
        Generation::MergeCountsFailed if ifail > drop => f.push(Finding {
            kind: FindingKind::ResolvedClashes,
            severity: Severity::Notice,
            evidence: format!("insert_failed − drop = {ifail} − {drop} = {}", ifail - drop),
            reading: format!(
                "on {} a clash merged into the winning entry still counts insert_failed: {} races were resolved and \
                 lost nothing",
                label(g),
                ifail - drop
            ),
            // 4.19 merges identical entries; 4.14 merges only entries without NAT.
            reproduce: vec![if kernel.profile.is_some() {
                dns_cmd("")
            } else {
                "racetrack run dns --kernel 4.19".into()
            }],
            mitigation: None,
        }),
        Generation::Before5_10 if ifail > drop => f.push(Finding {
            kind: FindingKind::ClashesAmbiguous,
            severity: severity(ifail - drop),
            evidence: format!("insert_failed={ifail} drop={drop}: {} insert_failed without drop", ifail - drop),
            reading: "on 3.10–4.6 (RHEL 7 before 7.8 too) each of these is a dropped packet; on 4.7–5.9 they are \
                      clashes merged into the winning entry, harmless. Which kernel is it? Pass --kernel"
                .into(),
            reproduce: vec!["racetrack run dns --kernel 4.4".into(), "racetrack run dns --kernel 4.19".into()],
            mitigation: None,
        }),
        Generation::ClashResolve | Generation::From5_10 | Generation::ChainLimit if ifail_clash > drop => {
            f.push(Finding {
                kind: FindingKind::ClashesAmbiguous,
                // A refused insert drops its packet whatever the cause, so
                // these count as lost once above the healthy ratio.
                severity: severity(ifail_clash - drop),
                evidence: format!(
                    "insert_failed={ifail} chaintoolong={ctl} drop={drop}{}",
                    per_insert(ifail_clash - drop)
                ),
                reading: format!(
                    "insert_failed without drop on 5.10+ is an insert refused without a clash, and its packet is \
                     dropped: an entry destroyed while it was being confirmed (conntrack -F, a module unload){}",
                    if g == Generation::From5_10 {
                        ", or on 5.15+ a too long chain (chaintoolong, which these conntrack-tools do not print)"
                    } else {
                        ""
                    }
                ),
                reproduce: vec![],
                mitigation: None,
            })
        }
        _ => {}
    }
    if g.counts_clash_resolve() && cr > 0 {
        f.push(Finding {
            kind: FindingKind::ResolvedClashes,
            severity: Severity::Notice,
            evidence: format!("clash_resolve={cr}{}", per_insert(cr)),
            reading: "insert races the kernel resolved (merged into the identical entry, or inserted reply-only as \
                      NAT_CLASH): no packet was lost, harmless on 5.6+ kernels"
                .into(),
            reproduce: vec![dns_cmd("")],
            mitigation: None,
        });
    }
    if ed > 0 || extra_drop > 0 {
        let evidence = format!(
            "early_drop={ed} drop={drop} insert_failed={ifail}{}",
            s.entries.map_or(String::new(), |e| format!(" entries={e}"))
        );
        let reading = if ed > 0 {
            format!(
                "the table reached nf_conntrack_max: {ed} unassured entries were evicted to make room{}",
                if extra_drop > 0 {
                    format!(", and {extra_drop} packets were dropped beyond what clashes explain")
                } else {
                    String::new()
                }
            )
        } else {
            format!(
                "{extra_drop} packets dropped beyond what clashes explain: new connections refused for a full table \
                 with nothing to evict (dmesg: \"nf_conntrack: table full, dropping packet\"), or a helper's drop"
            )
        };
        f.push(Finding {
            kind: FindingKind::TableFull,
            severity: Severity::Problem,
            evidence,
            reading,
            reproduce: vec![format!(
                "racetrack profiles --show {preset} > small.toml && sed -i 's/^max = .*/max = 1024/' small.toml && \
                 racetrack run dns --kernel small.toml"
            )],
            mitigation: Some(Mitigation {
                advice: "raise net.netfilter.nf_conntrack_max (and nf_conntrack_buckets with it), or keep DNS out of \
                         conntrack (NOTRACK node-local cache); compare node_nf_conntrack_entries with _entries_limit"
                    .into(),
                checks: vec![],
                plan: vec![Plan::DnsTableMax { max: 1024 }],
            }),
        });
    }
    if ctl > 0 {
        f.push(Finding {
            kind: FindingKind::LongChains,
            severity: Severity::Problem,
            evidence: format!("chaintoolong={ctl} insert_failed={ifail}"),
            reading: "inserts refused because a hash bucket's chain was longer than 50–79 entries (5.15+): too few \
                      buckets for the number of entries (or a flood aimed at one bucket); each is a dropped packet"
                .into(),
            reproduce: vec![format!(
                "racetrack profiles --show {} > few.toml && sed -i 's/^buckets = .*/buckets = 64/' few.toml && \
                 racetrack run dns --kernel few.toml",
                if g == Generation::ChainLimit { preset.as_str() } else { "5.15" }
            )],
            mitigation: Some(Mitigation {
                advice: "raise nf_conntrack_buckets (/sys/module/nf_conntrack/parameters/hashsize) toward \
                         nf_conntrack_max"
                    .into(),
                checks: vec![],
                plan: vec![Plan::DnsBuckets { buckets: 64 }],
            }),
        });
    }
    let active =
        ["found", "invalid", "insert_failed", "drop", "clash_resolve", "search_restart"].iter().any(|n| t(n) > 0);
    if insert == 0 && (active || s.entries.is_some_and(|e| e > 0)) && s.has("insert") {
        f.push(Finding {
            kind: FindingKind::InsertNotCounted,
            severity: Severity::Notice,
            evidence: "insert=0 on every CPU while other counters move".into(),
            reading: "kernels from 4.9 on count insert only for entries added through ctnetlink, so no ratio to \
                      inserts can be given; watch insert_failed and drop themselves (their rate), and \
                      node_nf_conntrack_entries"
                .into(),
            reproduce: vec![format!("racetrack run dns {k}")],
            mitigation: None,
        });
    }
    let problems = f.iter().any(|x| x.severity == Severity::Problem);
    // insert_failed that may stand for lost packets: all of it, except the
    // merges 4.7–5.9 count there.
    let maybe_lost = if g == Generation::MergeCountsFailed { drop.min(ifail) } else { ifail };
    let within = maybe_lost == 0 || ratio(maybe_lost).is_some_and(|r| r <= HEALTHY_RATIO);
    if !problems && drop == 0 && ed == 0 && ctl == 0 && within {
        f.push(Finding {
            kind: FindingKind::Healthy,
            severity: Severity::Ok,
            evidence: format!("drop=0 early_drop=0 insert_failed={ifail}{}", per_insert(ifail)),
            reading: format!(
                "nothing lost to conntrack: no drops, no evictions{}",
                if maybe_lost > 0 {
                    format!("; insert_failed per insert is at or below {HEALTHY_RATIO:.0e}, normal")
                } else if ifail > 0 {
                    "; insert_failed counts the clashes merged into the winning entry here, which lose nothing".into()
                } else {
                    String::new()
                }
            ),
            reproduce: vec![],
            mitigation: None,
        });
    }
    f.sort_by_key(|x| (x.severity, x.kind));
    Diagnosis {
        source: s.source,
        cpus: s.cpus.len(),
        entries: s.entries,
        totals: s.fields.iter().map(|n| (n.clone(), s.total(n))).collect(),
        kernel,
        findings: f,
    }
}

/// Run each finding's mitigation plan on `profile` (the `--kernel` one, or the
/// generation's preset) and attach the figures.
pub fn verify(d: &mut Diagnosis, profile: &KernelProfile) {
    let k = d.kernel.profile.clone().unwrap_or_else(|| profile.name.clone());
    for finding in &mut d.findings {
        let Some(m) = finding.mitigation.as_mut() else { continue };
        for plan in m.plan.clone() {
            let mut c = run_plan(&plan, profile, &k);
            c.helps = c.figures.first().is_some_and(|f| f.with < f.without);
            m.checks.push(c);
        }
    }
}

fn dns_figures(a: &dns::DnsReport, b: &dns::DnsReport, extra: &[&str]) -> Vec<Figure> {
    let delayed = |r: &dns::DnsReport| 100.0 * r.clients.retried as f64 / r.clients.requests.max(1) as f64;
    let mut v = vec![Figure { name: "lookups delayed by a retry (%)".into(), without: delayed(a), with: delayed(b) }];
    for name in ["insert_failed", "drop"].iter().chain(extra) {
        v.push(Figure { name: (*name).into(), without: a.conntrack[name] as f64, with: b.conntrack[name] as f64 });
    }
    v
}

fn run_plan(plan: &Plan, profile: &KernelProfile, k: &str) -> Check {
    match plan {
        Plan::DnsSingleRequestReopen => {
            let mut base = DnsScenario::default();
            let set = dns_endpoints(merges_identical(profile));
            if !set.is_empty() {
                base.service.endpoints = 3;
            }
            let mut with = base.clone();
            with.resolv.single_request_reopen = true;
            let (a, b) = (dns::run(&base, profile.clone()), dns::run(&with, profile.clone()));
            Check {
                without: format!("racetrack run dns --kernel {k}{set}"),
                with: format!("racetrack run dns --kernel {k}{set} --set resolv.single_request_reopen=true"),
                figures: dns_figures(&a, &b, &[]),
                helps: false,
            }
        }
        Plan::SnatRandomFully => {
            let base = SnatScenario::default();
            let mut with = base.clone();
            with.snat.random_fully = true;
            let (a, b) = (snat::run(&base, profile.clone()), snat::run(&with, profile.clone()));
            let delayed = |r: &snat::SnatReport| 100.0 * r.clients.retried as f64 / r.clients.requests.max(1) as f64;
            Check {
                without: format!("racetrack run snat --kernel {k}"),
                with: format!("racetrack run snat --kernel {k} --set snat.random_fully=true"),
                figures: vec![
                    Figure {
                        name: "connections delayed by a SYN retry (%)".into(),
                        without: delayed(&a),
                        with: delayed(&b),
                    },
                    Figure {
                        name: "insert_failed".into(),
                        without: a.conntrack["insert_failed"] as f64,
                        with: b.conntrack["insert_failed"] as f64,
                    },
                ],
                helps: false,
            }
        }
        Plan::DnsTableMax { max } => {
            let mut small = profile.clone();
            small.conntrack.max = *max;
            let s = DnsScenario::default();
            let (a, b) = (dns::run(&s, small), dns::run(&s, profile.clone()));
            Check {
                without: format!("racetrack run dns --kernel small.toml   (conntrack.max = {max})"),
                with: format!("racetrack run dns --kernel {k}   (conntrack.max = {})", profile.conntrack.max),
                figures: dns_figures(&a, &b, &["early_drop"]),
                helps: false,
            }
        }
        Plan::DnsBuckets { buckets } => {
            let mut base = profile.clone();
            if base.conntrack.chain_limit.is_none() {
                base = racetrack_engine::profile::preset("5.15").expect("5.15 is a preset");
            }
            let mut few = base.clone();
            few.conntrack.buckets = *buckets;
            let s = DnsScenario::default();
            let (a, b) = (dns::run(&s, few), dns::run(&s, base.clone()));
            Check {
                without: format!("racetrack run dns --kernel few.toml   (conntrack.buckets = {buckets})"),
                with: format!(
                    "racetrack run dns --kernel {}   (conntrack.buckets = {})",
                    base.name, base.conntrack.buckets
                ),
                figures: dns_figures(&a, &b, &["chaintoolong"]),
                helps: false,
            }
        }
    }
}
