//! `iptables-save` output: the `nat` table kube-proxy (iptables mode) writes,
//! read into the services it implements and the SNAT rule of the node.
//!
//! A service is found where kube-proxy puts its entry: a rule in
//! `KUBE-SERVICES` (or a built-in `PREROUTING`/`OUTPUT` chain) that matches a
//! destination address and port, or a rule in `KUBE-NODEPORTS` that matches a
//! port. From there the chains are walked as the kernel walks them: a
//! `statistic` rule takes its share of the packets that reach it, a jump
//! returns the packets its chain did not DNAT, a `DNAT` ends the walk. What a
//! packet reaching the service ends up at is each endpoint's share.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use racetrack_engine::input::InputError;
use serde::Serialize;

use super::{Note, NoteKind};

/// Targets iptables has built in (extensions included), as opposed to chains.
const BUILTIN_TARGETS: &[&str] = &[
    "ACCEPT",
    "DROP",
    "RETURN",
    "QUEUE",
    "REJECT",
    "DNAT",
    "SNAT",
    "MASQUERADE",
    "REDIRECT",
    "NETMAP",
    "MARK",
    "CONNMARK",
    "LOG",
    "NFLOG",
    "NFQUEUE",
    "ULOG",
    "CT",
    "NOTRACK",
    "TRACE",
    "AUDIT",
    "CLASSIFY",
    "SET",
    "TPROXY",
    "TCPMSS",
    "TTL",
    "HL",
    "TOS",
    "DSCP",
    "CHECKSUM",
    "SECMARK",
    "CONNSECMARK",
    "TEE",
    "IDLETIMER",
    "SYNPROXY",
    "HMARK",
];

/// Built-in targets the walk understands; any other one is reported as not modelled.
const MODELLED_TARGETS: &[&str] = &["ACCEPT", "RETURN", "DNAT", "SNAT", "MASQUERADE", "MARK"];

/// Matches that only select the packets of the service being walked, or no packet
/// subset at all: a rule with only these is taken by every packet that reaches it.
const NEUTRAL_MATCHES: &[&str] = &["comment", "statistic", "tcp", "udp", "sctp", "multiport"];

/// Options that take no value.
const FLAG_OPTIONS: &[&str] = &[
    "--random",
    "--random-fully",
    "--persistent",
    "--rcheck",
    "--update",
    "--set",
    "--remove",
    "--rsource",
    "--rdest",
    "--reap",
    "--log-uid",
    "--log-ip-options",
    "--log-tcp-options",
    "--log-tcp-sequence",
    "--fragment",
    "-f",
    "--syn",
    "--notrack",
    "--queue-bypass",
];

/// How an endpoint-selection rule is written.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "mode")]
pub enum Statistic {
    /// `-m statistic --mode random --probability P`.
    Random {
        /// P.
        probability: f64,
    },
    /// `-m statistic --mode nth --every N --packet P`: one packet in N of
    /// those reaching the rule (its own counter).
    Nth {
        /// N.
        every: u32,
        /// P.
        packet: u32,
    },
}

impl Statistic {
    /// Long-run share of the packets reaching the rule that it takes.
    pub fn share(&self) -> f64 {
        match *self {
            Statistic::Random { probability } => probability,
            Statistic::Nth { every, .. } => 1.0 / f64::from(every),
        }
    }
}

/// One `-A` rule, as far as racetrack reads it.
#[derive(Clone, Debug, Default)]
struct Rule {
    line: usize,
    chain: String,
    dst: Option<IpAddr>,
    proto: Option<String>,
    dport: Option<String>,
    /// A match that selects some packets only (`-s`, `-m mark`, negations, …).
    conditional: bool,
    comment: Option<String>,
    statistic: Option<Statistic>,
    /// `--mode` seen, and its value.
    mode: Option<String>,
    target: Option<String>,
    /// Value options after the target (`--to-destination`, `--to-source`, `--to-ports`).
    target_opts: BTreeMap<String, String>,
    /// Flag options (`--random`, `--random-fully`).
    flags: BTreeSet<String>,
}

/// Whether a service is reached by its ClusterIP or by a node port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceKind {
    /// `-d CLUSTER_IP --dport PORT` in `KUBE-SERVICES` (or a built-in chain).
    ClusterIp,
    /// `--dport PORT` in `KUBE-NODEPORTS`.
    NodePort,
}

/// A DNAT destination and the share of the service's packets it gets.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NatEndpoint {
    /// `--to-destination` address.
    pub addr: IpAddr,
    /// `--to-destination` port (the service port when the rule gives none).
    pub port: u16,
    /// Share of the service's new connections, 0 to 1.
    pub share: f64,
    /// Line of the DNAT rule.
    pub line: usize,
}

/// A service: how it is reached and where its connections go.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NatService {
    /// The kube-proxy comment's service name (`kube-system/kube-dns:dns`), if any.
    pub name: Option<String>,
    /// ClusterIP or NodePort.
    pub kind: ServiceKind,
    /// The ClusterIP (none for a node port).
    pub addr: Option<IpAddr>,
    /// Port matched.
    pub port: u16,
    /// `tcp`, `udp` or `sctp`.
    pub proto: String,
    /// Line of the entry rule.
    pub line: usize,
    /// Endpoints in rule order.
    pub endpoints: Vec<NatEndpoint>,
    /// All selection rules are `--mode nth`.
    pub nth: bool,
}

impl NatService {
    /// `10.96.0.10:53/udp`, or `nodeport 30080/tcp`.
    pub fn address(&self) -> String {
        match self.addr {
            Some(a) => format!("{a}:{}/{}", self.port, self.proto),
            None => format!("nodeport {}/{}", self.port, self.proto),
        }
    }

    /// The shares are equal (what kube-proxy writes), to within its 10 printed decimals.
    pub fn uniform(&self) -> bool {
        let n = self.endpoints.len() as f64;
        self.endpoints.iter().all(|e| (e.share - 1.0 / n).abs() < 1e-6)
    }

    /// The `--probability` values of a kube-proxy-style chain with these
    /// shares: rule `i` takes `share_i / (what is left)`; one per endpoint but the last.
    pub fn rule_probabilities(&self) -> Vec<f64> {
        // What is left at rule `i` is the sum of the shares from `i` on:
        // summing those keeps full relative precision however small it gets,
        // where `1 - shares so far` cancels to noise after a dozen rules.
        let mut left: Vec<f64> = self
            .endpoints
            .iter()
            .rev()
            .scan(0.0, |acc, e| {
                *acc += e.share;
                Some(*acc)
            })
            .collect();
        left.reverse();
        let mut out = Vec::new();
        for (e, &rest) in self.endpoints.iter().zip(&left).take(self.endpoints.len().saturating_sub(1)) {
            let p = if rest > 0.0 { (e.share / rest).clamp(0.0, 1.0) } else { 0.0 };
            out.push((p * 1e10).round() / 1e10);
        }
        out
    }

    /// Whether `spec` names this service: its name (`ns/name` or
    /// `ns/name:port`), its ClusterIP, `IP:PORT`, `IP:PORT/PROTO`, or
    /// `nodeport:PORT`.
    pub fn matches(&self, spec: &str) -> bool {
        if let Some(name) = &self.name {
            if name == spec || name.split_once(':').is_some_and(|(n, _)| n == spec) {
                return true;
            }
        }
        match self.addr {
            Some(a) => {
                let ip = a.to_string();
                spec == ip || spec == format!("{ip}:{}", self.port) || spec == self.address()
            }
            None => {
                spec == format!("nodeport:{}", self.port) || spec == format!("nodeport:{}/{}", self.port, self.proto)
            }
        }
    }
}

/// The MASQUERADE or SNAT rule of the node.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NatSnat {
    /// `MASQUERADE` or `SNAT`.
    pub target: String,
    /// Line of the rule.
    pub line: usize,
    /// `--random`.
    pub random: bool,
    /// `--random-fully`.
    pub random_fully: bool,
    /// `--to-ports` / the port part of `--to-source`, if given.
    pub ports: Option<(u16, u16)>,
    /// Addresses of `--to-source` (MASQUERADE: 1, the interface's).
    pub addresses: u64,
}

/// What the `nat` table says.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct NatTable {
    /// Services, in the order of their entry rules.
    pub services: Vec<NatService>,
    /// The SNAT rule, if there is one.
    pub snat: Option<NatSnat>,
    /// Rules and tables not modelled, and other remarks.
    #[serde(skip)]
    pub notes: Vec<Note>,
}

struct Parser<'a> {
    source: &'a str,
    notes: Vec<Note>,
}

impl Parser<'_> {
    fn err(&self, line: usize, message: impl Into<String>) -> InputError {
        InputError { source: self.source.to_string(), line: Some(line), key: None, message: message.into() }
    }

    fn note(&mut self, kind: NoteKind, line: Option<usize>, message: String) {
        self.notes.push(Note { source: self.source.to_string(), line, kind, message });
    }
}

/// Split a rule into words, as a shell would: `"…"` groups, `\"` escapes.
fn words(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        None => return Err("unterminated quote".into()),
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(e) => cur.push(e),
                            None => return Err("unterminated quote".into()),
                        },
                        Some(ch) => cur.push(ch),
                    }
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

/// `10.96.0.10`, `10.96.0.10/32`, `10.244.0.0/255.255.0.0`.
fn parse_addr(v: &str) -> Option<(IpAddr, bool)> {
    let (a, mask) = match v.split_once('/') {
        Some((a, m)) => (a, Some(m)),
        None => (v, None),
    };
    let addr: IpAddr = a.parse().ok()?;
    let host_bits = if addr.is_ipv4() { 32 } else { 128 };
    let single = match mask {
        None => true,
        Some(m) => match m.parse::<u32>() {
            Ok(bits) if bits <= host_bits => bits == host_bits,
            Ok(_) => return None,
            Err(_) => m.parse::<IpAddr>().ok()? == "255.255.255.255".parse::<IpAddr>().ok()?,
        },
    };
    Some((addr, single))
}

fn parse_port(v: &str) -> Option<u16> {
    v.parse::<u16>().ok().filter(|&p| p > 0)
}

/// `P` or `P-Q` (also `P:Q`).
fn parse_port_range(v: &str) -> Option<(u16, u16)> {
    match v.split_once(['-', ':']) {
        Some((a, b)) => {
            let (a, b) = (parse_port(a)?, parse_port(b)?);
            Some((a.min(b), a.max(b)))
        }
        None => parse_port(v).map(|p| (p, p)),
    }
}

/// `ADDR[:PORT]` or `[V6]:PORT` of `--to-destination`.
fn parse_destination(v: &str) -> Option<(IpAddr, Option<u16>)> {
    if let Some(rest) = v.strip_prefix('[') {
        let (a, p) = rest.split_once(']')?;
        let port = match p.strip_prefix(':') {
            Some(p) => Some(parse_port_range(p)?.0),
            None if p.is_empty() => None,
            None => return None,
        };
        return Some((a.parse().ok()?, port));
    }
    if let Ok(a) = v.parse::<IpAddr>() {
        return Some((a, None));
    }
    let (a, p) = v.rsplit_once(':')?;
    let first = a.split_once('-').map_or(a, |(x, _)| x);
    Some((first.parse().ok()?, Some(parse_port_range(p)?.0)))
}

/// `A[-B][:P[-Q]]` of `--to-source`: address count and port range.
fn parse_to_source(v: &str) -> Option<(u64, Option<(u16, u16)>)> {
    let (addrs, ports) = match v.rsplit_once(':') {
        Some((a, p)) if !a.contains(':') => (a, Some(parse_port_range(p)?)),
        _ => (v, None),
    };
    let count = match addrs.split_once('-') {
        Some((lo, hi)) => {
            let (lo, hi): (std::net::Ipv4Addr, std::net::Ipv4Addr) = (lo.parse().ok()?, hi.parse().ok()?);
            u64::from(u32::from(hi).checked_sub(u32::from(lo))?) + 1
        }
        None => {
            addrs.parse::<IpAddr>().ok()?;
            1
        }
    };
    Some((count, ports))
}

fn value_needed(opt: &str) -> bool {
    !FLAG_OPTIONS.contains(&opt)
}

impl Parser<'_> {
    fn rule(&mut self, line: usize, chain: &str, args: &[String]) -> Result<Rule, InputError> {
        let mut r = Rule { line, chain: chain.to_string(), ..Rule::default() };
        let mut i = 0;
        let mut negate = false;
        let mut probability: Option<f64> = None;
        let mut every: Option<u32> = None;
        let mut packet: Option<u32> = None;
        while i < args.len() {
            let opt = args[i].as_str();
            i += 1;
            if opt == "!" {
                negate = true;
                continue;
            }
            if !opt.starts_with('-') || opt == "-" {
                return Err(self.err(line, format!("unexpected `{opt}` (an option was expected)")));
            }
            let takes_value = value_needed(opt);
            let value = if takes_value {
                // `--opt` at the end of the line, or followed by another option: truncated.
                match args.get(i) {
                    Some(v) if !v.starts_with('-') || v.parse::<f64>().is_ok() => {
                        i += 1;
                        Some(v.clone())
                    }
                    _ => None,
                }
            } else {
                None
            };
            let need = |v: &Option<String>| -> Result<String, InputError> {
                v.clone().ok_or_else(|| self.err(line, format!("`{opt}` needs a value (truncated line?)")))
            };
            let neg = std::mem::take(&mut negate);
            match opt {
                "-s" | "--source" | "-i" | "--in-interface" | "-o" | "--out-interface" | "--sport"
                | "--source-port" | "--sports" | "--mark" | "--dst-type" | "--src-type" => {
                    need(&value)?;
                    r.conditional = true;
                }
                "-d" | "--destination" => {
                    let v = need(&value)?;
                    let (addr, single) =
                        parse_addr(&v).ok_or_else(|| self.err(line, format!("`-d {v}` is not an address")))?;
                    if neg || !single {
                        r.conditional = true;
                    } else {
                        r.dst = Some(addr);
                    }
                }
                "-p" | "--protocol" => {
                    let v = need(&value)?;
                    if neg {
                        r.conditional = true;
                    } else {
                        r.proto = Some(v.to_ascii_lowercase());
                    }
                }
                "-m" | "--match" => {
                    let v = need(&value)?;
                    if !NEUTRAL_MATCHES.contains(&v.as_str()) {
                        r.conditional = true;
                    }
                }
                "--dport" | "--destination-port" | "--dports" => {
                    let v = need(&value)?;
                    if neg {
                        r.conditional = true;
                    } else {
                        r.dport = Some(v);
                    }
                }
                "--comment" => r.comment = Some(need(&value)?),
                "--mode" => {
                    let v = need(&value)?;
                    if v != "random" && v != "nth" {
                        return Err(self.err(line, format!("`--mode {v}`: statistic modes are random and nth")));
                    }
                    r.mode = Some(v);
                }
                "--probability" => {
                    let v = need(&value)?;
                    let p: f64 =
                        v.parse().map_err(|_| self.err(line, format!("`--probability {v}` is not a number")))?;
                    if !(0.0..=1.0).contains(&p) {
                        return Err(self.err(line, format!("`--probability {v}` is not between 0 and 1")));
                    }
                    probability = Some(p);
                }
                "--every" => {
                    let v = need(&value)?;
                    every =
                        Some(v.parse().ok().filter(|&n: &u32| n >= 1).ok_or_else(|| {
                            self.err(line, format!("`--every {v}` is not a whole number of at least 1"))
                        })?);
                }
                "--packet" => {
                    let v = need(&value)?;
                    packet =
                        Some(v.parse().map_err(|_| self.err(line, format!("`--packet {v}` is not a whole number")))?);
                }
                "-j" | "--jump" | "-g" | "--goto" => {
                    if r.target.is_some() {
                        return Err(self.err(line, "two targets in one rule"));
                    }
                    r.target = Some(need(&value)?);
                }
                _ if !takes_value => {
                    r.flags.insert(opt.to_string());
                }
                _ => {
                    let v = need(&value)?;
                    // Some options take several words (`--match-set NAME src`).
                    while args.get(i).is_some_and(|w| !w.starts_with('-') && w != "!") {
                        i += 1;
                    }
                    if r.target.is_some() {
                        r.target_opts.insert(opt.to_string(), v);
                    } else {
                        // A match option racetrack does not read: it narrows the rule.
                        r.conditional = true;
                    }
                }
            }
        }
        if negate {
            return Err(self.err(line, "`!` at the end of the rule (truncated line?)"));
        }
        r.statistic = match r.mode.as_deref() {
            Some("random") => Some(Statistic::Random {
                probability: probability
                    .ok_or_else(|| self.err(line, "`--mode random` without `--probability` (truncated line?)"))?,
            }),
            Some(_) => {
                let every = every.ok_or_else(|| self.err(line, "`--mode nth` without `--every` (truncated line?)"))?;
                let packet = packet.unwrap_or(0);
                if packet >= every {
                    return Err(self.err(line, format!("`--packet {packet}` must be less than `--every {every}`")));
                }
                Some(Statistic::Nth { every, packet })
            }
            None if probability.is_some() || every.is_some() => {
                return Err(self.err(line, "`--probability`/`--every` without `-m statistic --mode`"))
            }
            None => None,
        };
        Ok(r)
    }
}

/// The parsed `nat` table: chains in order, with their rules.
struct Table {
    chains: BTreeMap<String, Vec<Rule>>,
    /// Walks already made, by chain and port, with the lines they used: a
    /// chain reached many ways is walked once (no blow-up on deep fan-out).
    memo: RefCell<HashMap<(String, u16), Walked>>,
}

/// A walk and the rule lines it used.
type Walked = (Walk, BTreeSet<usize>);

/// What a walk of a chain found.
#[derive(Clone)]
struct Walk {
    endpoints: Vec<NatEndpoint>,
    /// Share of the packets entering the chain that return from it un-DNATed.
    returned: f64,
    nth_only: Option<bool>,
}

impl Table {
    /// Walk `chain` for packets of a service on `port`, remembering the
    /// lines used.
    fn walk(&self, chain: &str, port: u16, depth: u32, used: &mut BTreeSet<usize>) -> Walk {
        let key = (chain.to_string(), port);
        if let Some((w, lines)) = self.memo.borrow().get(&key) {
            used.extend(lines);
            return w.clone();
        }
        let mut mine = BTreeSet::new();
        let w = self.walk_uncached(chain, port, depth, &mut mine);
        used.extend(&mine);
        self.memo.borrow_mut().insert(key, (w.clone(), mine));
        w
    }

    fn walk_uncached(&self, chain: &str, port: u16, depth: u32, used: &mut BTreeSet<usize>) -> Walk {
        let mut w = Walk { endpoints: Vec::new(), returned: 1.0, nth_only: None };
        // iptables refuses loops and more than a few dozen levels; so does the walk.
        if depth > 32 {
            return w;
        }
        let Some(rules) = self.chains.get(chain) else { return w };
        let mut left = 1.0f64;
        for r in rules {
            if left <= 0.0 {
                break;
            }
            used.insert(r.line);
            let Some(target) = r.target.as_deref() else { continue };
            let taken = if r.conditional { 0.0 } else { left * r.statistic.map_or(1.0, |s| s.share()) };
            if let Some(s) = r.statistic {
                let nth = matches!(s, Statistic::Nth { .. });
                w.nth_only = Some(w.nth_only.unwrap_or(true) && nth);
            }
            match target {
                "DNAT" => {
                    if let Some((addr, p)) = r.target_opts.get("--to-destination").and_then(|v| parse_destination(v)) {
                        if taken > 0.0 {
                            merge(
                                &mut w.endpoints,
                                NatEndpoint { addr, port: p.unwrap_or(port), share: taken, line: r.line },
                            );
                        }
                        left -= taken;
                    }
                }
                "RETURN" | "ACCEPT" | "DROP" | "REJECT" | "REDIRECT" => left -= taken,
                t if self.chains.contains_key(t) => {
                    // A conditional jump into a chain that DNATs is not followed: which
                    // packets it selects is not known here.
                    let sub = self.walk(t, port, depth + 1, used);
                    if taken > 0.0 {
                        for mut e in sub.endpoints {
                            e.share *= taken;
                            merge(&mut w.endpoints, e);
                        }
                        if let Some(n) = sub.nth_only {
                            w.nth_only = Some(w.nth_only.unwrap_or(true) && n);
                        }
                        left -= taken * (1.0 - sub.returned);
                    }
                }
                _ => {}
            }
        }
        w.returned = left.max(0.0);
        w
    }
}

/// Add an endpoint's share; one reached by several paths (the same DNAT rule) is one endpoint.
fn merge(endpoints: &mut Vec<NatEndpoint>, e: NatEndpoint) {
    match endpoints.iter_mut().find(|x| x.line == e.line) {
        Some(x) => x.share += e.share,
        None => endpoints.push(e),
    }
}

fn service_name(comment: Option<&str>) -> Option<String> {
    comment.and_then(|c| c.split_whitespace().next()).map(str::to_string)
}

/// Parse `iptables-save` output; `source` names the file in errors and notes.
pub fn parse(text: &str, source: &str) -> Result<NatTable, InputError> {
    let mut p = Parser { source, notes: Vec::new() };
    // (name, line) of the open table.
    let mut open: Option<(String, usize)> = None;
    let mut nat_seen: Option<usize> = None;
    let mut declared: BTreeMap<String, usize> = BTreeMap::new();
    let mut rules: Vec<Rule> = Vec::new();
    let mut last_line = 0;
    for (i, raw) in text.split('\n').enumerate() {
        let line = i + 1;
        let l = raw.trim();
        if l.is_empty() {
            continue;
        }
        last_line = line;
        if l.starts_with('#') {
            continue;
        }
        if let Some(name) = l.strip_prefix('*') {
            if let Some((t, at)) = &open {
                return Err(p.err(line, format!("table `*{name}` starts before `*{t}` (line {at}) has its COMMIT")));
            }
            let name = name.trim();
            if name.is_empty() || name.contains(char::is_whitespace) {
                return Err(p.err(line, format!("`{l}` is not a table name")));
            }
            if name == "nat" {
                if let Some(at) = nat_seen {
                    return Err(p.err(line, format!("a second `*nat` table (the first is on line {at})")));
                }
                nat_seen = Some(line);
            } else {
                p.note(NoteKind::Ignored, Some(line), format!("ignored table `*{name}` (only *nat is modelled)"));
            }
            open = Some((name.to_string(), line));
            continue;
        }
        let Some((table, _)) = &open else {
            return Err(p.err(line, format!("`{}` outside a table (no `*nat` before it)", first_word(l))));
        };
        let in_nat = table == "nat";
        if l == "COMMIT" {
            open = None;
            continue;
        }
        if !in_nat {
            continue;
        }
        if let Some(decl) = l.strip_prefix(':') {
            let mut it = decl.split_whitespace();
            let name = it.next().unwrap_or("");
            if name.is_empty() {
                return Err(p.err(line, "chain line without a chain name"));
            }
            if it.next().is_none() {
                return Err(p.err(line, format!("chain `{name}` has no policy (truncated line?)")));
            }
            if let Some(at) = declared.insert(name.to_string(), line) {
                return Err(p.err(line, format!("chain `{name}` declared twice (also on line {at})")));
            }
            continue;
        }
        // `iptables-save -c` prefixes rules with their counters.
        let body = match l.strip_prefix('[') {
            Some(rest) => rest.split_once(']').map(|(_, r)| r.trim()).unwrap_or(""),
            None => l,
        };
        let args = words(body).map_err(|e| p.err(line, e))?;
        match args.first().map(String::as_str) {
            Some("-A") | Some("--append") => {}
            Some(w) => return Err(p.err(line, format!("`{w}`: expected `-A CHAIN …`, `:CHAIN POLICY`, or COMMIT"))),
            None => return Err(p.err(line, "an empty rule")),
        }
        let Some(chain) = args.get(1) else { return Err(p.err(line, "`-A` without a chain (truncated line?)")) };
        if !declared.contains_key(chain) {
            return Err(p.err(line, format!("rule in chain `{chain}`, which has no `:{chain}` line")));
        }
        let rule = p.rule(line, chain, &args[2..])?;
        rules.push(rule);
    }
    if let Some((t, at)) = open {
        return Err(p.err(last_line.max(1), format!("end of file inside `*{t}` (opened on line {at}): missing COMMIT")));
    }
    if nat_seen.is_none() {
        return Err(p.err(last_line.max(1), "no `*nat` table in the file"));
    }
    // Every target is a built-in target or a chain of the table.
    for r in &rules {
        if let Some(t) = &r.target {
            if !BUILTIN_TARGETS.contains(&t.as_str()) && !declared.contains_key(t) {
                let msg = if t.chars().any(|c| c == '-' || c.is_ascii_lowercase()) {
                    format!("`-j {t}`: jump to chain `{t}`, which is not defined (no `:{t}` line)")
                } else {
                    format!("`-j {t}`: unknown target (neither a built-in target nor a chain of *nat)")
                };
                return Err(p.err(r.line, msg));
            }
        }
        if let (Some(t), Some(v)) = (r.target.as_deref(), r.target_opts.get("--to-destination")) {
            if t == "DNAT" && parse_destination(v).is_none() {
                return Err(p.err(r.line, format!("`--to-destination {v}` is not ADDR[:PORT]")));
            }
        }
    }
    let mut table =
        Table { chains: declared.keys().map(|k| (k.clone(), Vec::new())).collect(), memo: RefCell::default() };
    for r in &rules {
        table.chains.get_mut(&r.chain).expect("declared").push(r.clone());
    }
    let mut used = BTreeSet::new();
    let mut out = NatTable::default();
    for r in &rules {
        let entry_chain = matches!(r.chain.as_str(), "KUBE-SERVICES" | "PREROUTING" | "OUTPUT");
        let nodeport_chain = r.chain == "KUBE-NODEPORTS";
        let kind = match (entry_chain, nodeport_chain, r.dst) {
            (true, _, Some(_)) => ServiceKind::ClusterIp,
            // With `--nodeport-addresses` kube-proxy also matches `-d NODE_IP` here.
            (_, true, _) => ServiceKind::NodePort,
            _ => continue,
        };
        let (Some(target), Some(dport)) = (&r.target, &r.dport) else { continue };
        if r.conditional {
            continue;
        }
        let Some(port) = parse_port(dport) else {
            // A port list or range: not one service port.
            continue;
        };
        let proto = r.proto.clone().unwrap_or_else(|| "tcp".into());
        let mut lines = BTreeSet::new();
        let endpoints = if target == "DNAT" {
            match r.target_opts.get("--to-destination").and_then(|v| parse_destination(v)) {
                Some((addr, p)) => vec![NatEndpoint { addr, port: p.unwrap_or(port), share: 1.0, line: r.line }],
                None => continue,
            }
        } else {
            let w = table.walk(target, port, 0, &mut lines);
            let svc = NatService {
                name: None,
                kind,
                addr: if kind == ServiceKind::NodePort { None } else { r.dst },
                port,
                proto: proto.clone(),
                line: r.line,
                endpoints: w.endpoints,
                nth: w.nth_only == Some(true),
            };
            if svc.endpoints.is_empty() {
                continue;
            }
            let total: f64 = svc.endpoints.iter().map(|e| e.share).sum();
            if total < 1.0 - 1e-6 {
                p.note(
                    NoteKind::Info,
                    Some(r.line),
                    format!(
                        "{}: {:.1}% of its packets reach no DNAT rule (conditional rules are assumed not to match)",
                        svc.address(),
                        100.0 * (1.0 - total)
                    ),
                );
            }
            used.extend(lines);
            used.insert(r.line);
            out.services.push(NatService {
                name: service_name(r.comment.as_deref()),
                endpoints: svc.endpoints.into_iter().map(|e| NatEndpoint { share: e.share / total, ..e }).collect(),
                ..svc
            });
            continue;
        };
        used.insert(r.line);
        out.services.push(NatService {
            name: service_name(r.comment.as_deref()),
            kind,
            addr: if kind == ServiceKind::NodePort { None } else { r.dst },
            port,
            proto,
            line: r.line,
            endpoints,
            nth: false,
        });
    }
    // The SNAT rule: kube-proxy's MASQUERADE if there is one, else the first.
    let snat_rules: Vec<&Rule> =
        rules.iter().filter(|r| matches!(r.target.as_deref(), Some("MASQUERADE") | Some("SNAT"))).collect();
    let chosen = snat_rules.iter().find(|r| r.chain == "KUBE-POSTROUTING").or(snat_rules.first()).copied();
    if let Some(r) = chosen {
        let target = r.target.clone().expect("filtered");
        let (addresses, ports) = if target == "SNAT" {
            let v = r.target_opts.get("--to-source").ok_or_else(|| p.err(r.line, "`-j SNAT` without `--to-source`"))?;
            parse_to_source(v)
                .ok_or_else(|| p.err(r.line, format!("`--to-source {v}` is not ADDR[-ADDR][:PORT[-PORT]]")))?
        } else {
            let ports = match r.target_opts.get("--to-ports") {
                Some(v) => Some(
                    parse_port_range(v).ok_or_else(|| p.err(r.line, format!("`--to-ports {v}` is not PORT[-PORT]")))?,
                ),
                None => None,
            };
            (1, ports)
        };
        let random_fully = r.flags.contains("--random-fully");
        let random = r.flags.contains("--random");
        if random && random_fully {
            p.note(NoteKind::Info, Some(r.line), "both --random and --random-fully: --random-fully wins".into());
        }
        if addresses > 1 {
            p.note(
                NoteKind::Info,
                Some(r.line),
                format!("--to-source has {addresses} addresses; racetrack models the port search of one"),
            );
        }
        used.insert(r.line);
        out.snat =
            Some(NatSnat { target, line: r.line, random: random && !random_fully, random_fully, ports, addresses });
        for other in snat_rules.iter().filter(|o| o.line != r.line) {
            used.insert(other.line);
            p.note(
                NoteKind::Ignored,
                Some(other.line),
                format!(
                    "ignored -j {} (racetrack models one SNAT rule, the one on line {})",
                    other.target.as_deref().unwrap_or(""),
                    r.line
                ),
            );
        }
    }
    // Everything else: plumbing the walk understands, or reported.
    for r in &rules {
        if used.contains(&r.line) {
            continue;
        }
        let t = r.target.as_deref().unwrap_or("");
        let plumbing = MODELLED_TARGETS.contains(&t) && t != "DNAT"
            || (table.chains.contains_key(t) && !t.is_empty())
            || t.is_empty();
        if t == "DNAT" {
            p.note(NoteKind::Ignored, Some(r.line), "ignored -j DNAT (not reached from a service entry rule)".into());
        } else if !plumbing {
            p.note(NoteKind::Ignored, Some(r.line), format!("ignored -j {t} (not modelled)"));
        }
    }
    p.notes.sort_by_key(|n| n.line);
    out.notes = p.notes;
    Ok(out)
}

fn first_word(l: &str) -> &str {
    l.split_whitespace().next().unwrap_or(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAVE: &str = r#"# Generated by iptables-save v1.8.7
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-DNS - [0:0]
:KUBE-SEP-A - [0:0]
:KUBE-SEP-B - [0:0]
:KUBE-SEP-C - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-POSTROUTING - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -j KUBE-POSTROUTING
-A KUBE-SERVICES -d 10.96.0.10/32 -p udp -m comment --comment "kube-system/kube-dns:dns cluster IP" -m udp --dport 53 -j KUBE-SVC-DNS
-A KUBE-SVC-DNS ! -s 10.244.0.0/16 -d 10.96.0.10/32 -p udp -m udp --dport 53 -j KUBE-MARK-MASQ
-A KUBE-SVC-DNS -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-A
-A KUBE-SVC-DNS -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-B
-A KUBE-SVC-DNS -j KUBE-SEP-C
-A KUBE-SEP-A -s 10.244.1.5/32 -j KUBE-MARK-MASQ
-A KUBE-SEP-A -p udp -m udp -j DNAT --to-destination 10.244.1.5:53
-A KUBE-SEP-B -p udp -m udp -j DNAT --to-destination 10.244.2.5:53
-A KUBE-SEP-C -p udp -m udp -j DNAT --to-destination 10.244.3.5:53
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-POSTROUTING -m mark --mark 0x4000/0x4000 -j MASQUERADE --random-fully
-A OUTPUT -p tcp --dport 8080 -j REDIRECT --to-ports 9090
COMMIT
"#;

    #[test]
    fn walks_the_chains_into_shares() {
        let t = parse(SAVE, "nat.txt").unwrap();
        assert_eq!(t.services.len(), 1);
        let s = &t.services[0];
        assert_eq!(s.name.as_deref(), Some("kube-system/kube-dns:dns"));
        assert_eq!(s.address(), "10.96.0.10:53/udp");
        let shares: Vec<f64> = s.endpoints.iter().map(|e| e.share).collect();
        // 0.5, then 0.5 of the other half, then the rest.
        assert_eq!(shares, vec![0.5, 0.25, 0.25]);
        assert!(!s.uniform());
        assert_eq!(s.rule_probabilities(), vec![0.5, 0.5]);
        let snat = t.snat.unwrap();
        assert!(snat.random_fully && !snat.random);
        assert_eq!(snat.line, 25);
        let ignored: Vec<String> = t.notes.iter().map(|n| n.to_string()).collect();
        assert_eq!(ignored, vec!["nat.txt:26: ignored -j REDIRECT (not modelled)".to_string()]);
    }

    #[test]
    fn kube_proxy_probabilities_are_uniform() {
        let three = SAVE.replace("0.50000000000 -j KUBE-SEP-A", "0.33333333349 -j KUBE-SEP-A");
        let s = &parse(&three, "f").unwrap().services[0];
        assert!(s.uniform(), "{:?}", s.endpoints);
        let nth = SAVE
            .replace(
                "--mode random --probability 0.50000000000 -j KUBE-SEP-A",
                "--mode nth --every 3 --packet 0 -j KUBE-SEP-A",
            )
            .replace(
                "--mode random --probability 0.50000000000 -j KUBE-SEP-B",
                "--mode nth --every 2 --packet 0 -j KUBE-SEP-B",
            );
        let s = &parse(&nth, "f").unwrap().services[0];
        assert!(s.uniform() && s.nth, "{:?}", s);
    }

    #[test]
    fn bad_rules_name_their_line() {
        let cases = [
            ("--probability 0.50000000000 -j KUBE-SEP-A", "--probability", 17, "needs a value"),
            ("--probability 0.50000000000 -j KUBE-SEP-A", "--probability abc -j KUBE-SEP-A", 17, "not a number"),
            ("--probability 0.50000000000 -j KUBE-SEP-A", "--probability 1.5 -j KUBE-SEP-A", 17, "between 0 and 1"),
            ("-j KUBE-SEP-C", "-j FOO", 19, "unknown target"),
            ("-j KUBE-SEP-C", "-j KUBE-SEP-ZZZ", 19, "not defined"),
            ("COMMIT\n", "", 26, "missing COMMIT"),
        ];
        for (from, to, line, what) in cases {
            let text = SAVE.replacen(from, to, 1);
            let e = parse(&text, "nat.txt").unwrap_err();
            assert_eq!(e.line, Some(line), "{to}: {e}");
            assert!(e.message.contains(what), "{to}: {e}");
        }
        let e = parse("-A X -j ACCEPT\n", "f").unwrap_err();
        assert_eq!(e.to_string(), "f:1: `-A` outside a table (no `*nat` before it)");
    }

    #[test]
    fn other_tables_are_skipped_with_one_note() {
        let text = format!("*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j DROP\nCOMMIT\n{SAVE}");
        let t = parse(&text, "f").unwrap();
        assert_eq!(t.services.len(), 1);
        assert_eq!(t.notes[0].to_string(), "f:1: ignored table `*filter` (only *nat is modelled)");
    }

    #[test]
    fn snat_ranges() {
        let text = SAVE.replace(
            "-j MASQUERADE --random-fully",
            "-j SNAT --to-source 198.51.100.1-198.51.100.4:1024-2047 --random",
        );
        let s = parse(&text, "f").unwrap().snat.unwrap();
        assert_eq!((s.addresses, s.ports, s.random, s.random_fully), (4, Some((1024, 2047)), true, false));
    }

    #[test]
    fn deep_fan_out_is_walked_once_per_chain() {
        // 30 levels, each jumping 8 times into the next: 8^30 paths, 30 chains.
        let mut t = String::from("*nat\n:KUBE-SERVICES - [0:0]\n");
        for i in 0..=30 {
            t += &format!(":C{i} - [0:0]\n");
        }
        t += "-A KUBE-SERVICES -d 10.96.0.10/32 -p udp --dport 53 -j C0\n";
        for i in 0..30 {
            for _ in 0..8 {
                t += &format!("-A C{i} -m statistic --mode random --probability 0.1 -j C{}\n", i + 1);
            }
        }
        t += "-A C30 -j DNAT --to-destination 10.244.0.2:53\nCOMMIT\n";
        let s = &parse(&t, "f").unwrap().services[0];
        assert_eq!(s.endpoints.len(), 1, "one DNAT rule, however many paths reach it");
        assert!((s.endpoints[0].share - 1.0).abs() < 1e-9);
    }

    #[test]
    fn nodeports_with_addresses_and_negative_values() {
        let text = SAVE
            .replace(":KUBE-POSTROUTING - [0:0]", ":KUBE-POSTROUTING - [0:0]\n:KUBE-NODEPORTS - [0:0]")
            .replace("COMMIT", "-A KUBE-NODEPORTS -d 192.0.2.5/32 -p udp -m udp --dport 30053 -j KUBE-SVC-DNS\nCOMMIT");
        let t = parse(&text, "f").unwrap();
        let np: Vec<&NatService> = t.services.iter().filter(|s| s.kind == ServiceKind::NodePort).collect();
        assert_eq!(np.len(), 1);
        assert_eq!((np[0].address(), np[0].endpoints.len()), ("nodeport 30053/udp".to_string(), 3));
        assert!(np[0].matches("nodeport:30053"));
        let e = parse(&SAVE.replacen("0.50000000000", "-0.5", 1), "f").unwrap_err();
        assert!(e.message.contains("not between 0 and 1"), "{e}");
    }
}
