//! The DNS scenario: pods resolve names through a ClusterIP service whose
//! queries kube-proxy DNATs to CoreDNS endpoints, on one node's conntrack.
//!
//! A lookup's latency includes every timeout and retry its resolver goes
//! through, so the 5 s (and 10 s …) classes appear by themselves when a
//! query is lost in a conntrack insert race.
//!
//! Resolvers, as their code behaves:
//! - **glibc** (`send_dg`): A and AAAA in parallel from one socket with
//!   `sendmmsg` (one tuple). If the try times out with one answer, it falls
//!   back to `single-request` for the rest of the lookup and sends both again
//!   on the same socket (whose conntrack entry now exists, so they pass); if
//!   that times out with one answer too, to `single-request-reopen`. With no
//!   answer, the next attempt uses the same socket. `single-request` sends
//!   AAAA after A's answer; `single-request-reopen` also opens a new socket
//!   (a new tuple) for it; `use-vc` sends both on one TCP connection per
//!   try, so its SYN is the only new packet. The socket is closed after each
//!   name of the search list.
//! - **musl**: A and AAAA in parallel from one socket per name; unanswered
//!   queries are sent again every `timeout / attempts`, and the name fails
//!   after `timeout`. It ignores `single-request*`, `use-vc` and `rotate`.
//! - **go** (pure Go): A and AAAA concurrently, each from its own socket
//!   (two tuples), a new socket per attempt. **go-cgo** calls glibc.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use racetrack_engine::nat::dnat::{Dnat, Endpoint, Selector};
use racetrack_engine::sim::{Cx, Delivered, NatId, NatRules, Packet, RunStats, Sim, Verdict, Workload};
use racetrack_engine::{Conntrack, KernelProfile, Nanos, TcpFlags, Tuple, Update};
use rand::Rng;
use serde::{Deserialize, Serialize};

pub use crate::clients::ClientStats;
pub use crate::node::{Node, Stages, SteeringKind};
use crate::params::Validate;
use crate::report::counters;

/// Which resolver library the pods use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Resolver {
    /// glibc's stub resolver.
    Glibc,
    /// musl (Alpine images).
    Musl,
    /// Go's pure resolver.
    Go,
    /// Go with cgo: glibc underneath.
    GoCgo,
}

/// What the looked-up name is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NameKind {
    /// A service in the pod's namespace: the first search domain answers.
    Service,
    /// An external name with fewer dots than `ndots`: every search domain
    /// answers NXDOMAIN before the name itself is tried.
    External,
}

/// The DNS service.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// CoreDNS endpoints behind the ClusterIP.
    pub endpoints: u32,
    /// `iptables` (statistic random chains, as kube-proxy writes them),
    /// `iptables-nth` (statistic nth chains: round robin) or `ipvs-rr`.
    pub selector: SelectorKind,
    /// With `iptables`: explicit `--probability` values of the endpoint rules
    /// but the last (one fewer than `endpoints`), for chains that are not the
    /// uniform ones kube-proxy writes. Empty: kube-proxy's `1 / (n - i)`.
    #[serde(default)]
    pub probabilities: Vec<f64>,
    /// Time for an endpoint to answer.
    #[serde(with = "humantime_serde")]
    pub latency: Duration,
}

/// kube-proxy modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SelectorKind {
    /// iptables `-m statistic --mode random` chains.
    Iptables,
    /// iptables `-m statistic --mode nth` chains: each endpoint in turn.
    IptablesNth,
    /// IPVS round robin.
    IpvsRr,
}

/// The pods doing lookups.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Clients {
    /// Client pods (each with its own address, its sending thread on CPU `pod % cpus`).
    pub pods: u32,
    /// Lookups in the run.
    pub lookups: u32,
    /// Lookups per second over all pods (Poisson arrivals).
    pub rate: f64,
    /// Resolver library.
    pub resolver: Resolver,
    /// What is looked up.
    pub name: NameKind,
}

/// The pods' `/etc/resolv.conf`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolvConf {
    /// Search domains (Kubernetes writes three).
    pub search: u32,
    /// `options ndots:N`.
    pub ndots: u32,
    /// `options timeout:N` (seconds).
    pub timeout: u32,
    /// `options attempts:N`.
    pub attempts: u32,
    /// `options single-request`.
    pub single_request: bool,
    /// `options single-request-reopen`.
    pub single_request_reopen: bool,
    /// `options use-vc` (TCP).
    pub use_vc: bool,
}

/// Mitigations that are not resolver options.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mitigations {
    /// NodeLocal DNSCache: pods query a link-local cache exempt from
    /// conntrack (NOTRACK); the cache talks TCP upstream.
    pub node_local_cache: bool,
    /// Share of queries the node-local cache answers itself.
    pub cache_hit_ratio: f64,
    /// Delay the AAAA query by this much (tc netem), narrowing the race.
    #[serde(with = "humantime_serde")]
    pub aaaa_delay: Duration,
}

/// The whole DNS scenario.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsScenario {
    /// Always `"dns"`: lets `racetrack run FILE.toml` tell scenarios apart.
    pub scenario: String,
    /// Seed of the run's random generator.
    pub seed: u64,
    /// The node.
    pub node: Node,
    /// The DNS service.
    pub service: Service,
    /// The client pods.
    pub clients: Clients,
    /// Their resolv.conf.
    pub resolv: ResolvConf,
    /// Other mitigations.
    pub mitigations: Mitigations,
}

impl Default for DnsScenario {
    fn default() -> Self {
        Self {
            scenario: "dns".into(),
            seed: 1,
            node: Node::new(2, SteeringKind::Spread),
            service: Service {
                endpoints: 1,
                selector: SelectorKind::Iptables,
                probabilities: Vec::new(),
                latency: Duration::from_micros(500),
            },
            clients: Clients {
                pods: 20,
                lookups: 2000,
                rate: 200.0,
                resolver: Resolver::Glibc,
                name: NameKind::Service,
            },
            resolv: ResolvConf {
                search: 3,
                ndots: 5,
                timeout: 5,
                attempts: 2,
                single_request: false,
                single_request_reopen: false,
                use_vc: false,
            },
            mitigations: Mitigations { node_local_cache: false, cache_hit_ratio: 0.9, aaaa_delay: Duration::ZERO },
        }
    }
}

impl Validate for DnsScenario {
    fn validate(&self) -> Result<(), (String, String)> {
        let bad = |k: &str, m: &str| Err((k.to_string(), m.to_string()));
        if self.scenario != "dns" {
            return bad("scenario", "must be \"dns\" in a DNS scenario file");
        }
        self.node.validate()?;
        if self.service.endpoints == 0 || self.service.endpoints > 1000 {
            return bad("service.endpoints", "must be 1 to 1000");
        }
        let p = &self.service.probabilities;
        if !p.is_empty() {
            if self.service.selector != SelectorKind::Iptables {
                return bad("service.probabilities", "applies only to selector \"iptables\"");
            }
            if p.len() + 1 != self.service.endpoints as usize {
                return Err((
                    "service.probabilities".into(),
                    format!(
                        "has {} values for {} endpoints: give one per endpoint but the last, or none",
                        p.len(),
                        self.service.endpoints
                    ),
                ));
            }
            if p.iter().any(|v| !(0.0..=1.0).contains(v)) {
                return bad("service.probabilities", "each must be between 0 and 1");
            }
        }
        if self.clients.pods == 0 || self.clients.pods > 60000 {
            return bad("clients.pods", "must be 1 to 60000");
        }
        if self.clients.lookups == 0 || self.clients.lookups > 10_000_000 {
            return bad("clients.lookups", "must be 1 to 10000000");
        }
        if !(self.clients.rate >= crate::tcp::MIN_RATE && self.clients.rate <= 1e7) {
            return bad("clients.rate", "must be 0.01 to 1e7 lookups per second");
        }
        if self.service.latency > Duration::from_secs(30) {
            return bad("service.latency", "must be at most 30s");
        }
        if self.mitigations.aaaa_delay > Duration::from_secs(30) {
            return bad("mitigations.aaaa_delay", "must be at most 30s");
        }
        if self.resolv.timeout == 0 || self.resolv.timeout > 30 {
            return bad("resolv.timeout", "must be 1 to 30 seconds (glibc caps it at 30)");
        }
        if self.resolv.attempts == 0 || self.resolv.attempts > 5 {
            return bad("resolv.attempts", "must be 1 to 5 (glibc caps it at 5)");
        }
        if self.resolv.ndots > 15 {
            return bad("resolv.ndots", "must be 0 to 15 (glibc caps it at 15)");
        }
        if self.resolv.search > 6 {
            return bad("resolv.search", "must be 0 to 6 search domains");
        }
        if !(0.0..=1.0).contains(&self.mitigations.cache_hit_ratio) {
            return bad("mitigations.cache_hit_ratio", "must be between 0 and 1");
        }
        Ok(())
    }
}

/// The result of one DNS run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DnsReport {
    /// Scenario name.
    pub scenario: String,
    /// Kernel profile name.
    pub kernel: String,
    /// Seed.
    pub seed: u64,
    /// Conntrack counters summed over CPUs, by `conntrack -S` name.
    pub conntrack: BTreeMap<&'static str, u64>,
    /// Per-CPU counters.
    pub per_cpu: Vec<BTreeMap<&'static str, u64>>,
    /// What the clients saw.
    pub clients: ClientStats,
    /// Conntrack entries created for client queries (0 with a NOTRACK cache).
    pub conntrack_entries_created: u64,
    /// Conntrack entries in the table when the run ended (`nf_conntrack_count`).
    pub conntrack_entries: u64,
    /// Simulator totals.
    pub sim: RunStats,
}

const SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const CACHE_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 20, 10);
/// Extra latency of a cache miss: the cache's TCP round trip upstream.
const CACHE_MISS_EXTRA: Nanos = 1_000_000;
const CACHE_LATENCY: Nanos = 100_000;

fn pod_ip(pod: u32) -> Ipv4Addr {
    let n = pod + 2;
    Ipv4Addr::new(10, 244, (n >> 8) as u8, n as u8)
}

fn endpoint_ip(i: u32) -> Ipv4Addr {
    let n = i + 2;
    Ipv4Addr::new(10, 245, (n >> 8) as u8, n as u8)
}

/// Run the scenario on a kernel profile.
pub fn run(s: &DnsScenario, profile: KernelProfile) -> DnsReport {
    let kernel = profile.name.clone();
    let table = Conntrack::new(profile, s.node.cpus, s.seed ^ 0x5eed);
    let cfg = s.node.sim_config(s.seed);
    let mut sim = Sim::new(&table, cfg);
    let endpoints: Vec<Endpoint> =
        (0..s.service.endpoints).map(|i| Endpoint { addr: endpoint_ip(i).into(), port: 53, weight: 1 }).collect();
    let selector = match s.service.selector {
        SelectorKind::Iptables if !s.service.probabilities.is_empty() => {
            Selector::StatisticRandom { probabilities: s.service.probabilities.clone() }
        }
        SelectorKind::Iptables => Selector::kube_proxy_random(endpoints.len()),
        SelectorKind::IptablesNth => Selector::StatisticNth { every: s.service.endpoints },
        SelectorKind::IpvsRr => Selector::IpvsRr,
    };
    let dnat = Dnat::new(endpoints, selector, s.seed).expect("a valid service");
    let nat = sim.add_nat(NatRules { dnat: Some(dnat), snat: None });
    let mut w = DnsWorkload::new(s, nat);
    let stats = sim.run(&mut w, Nanos::MAX);
    let snap = table.stats();
    let (created, _) = table.lifetime();
    DnsReport {
        scenario: "dns".into(),
        kernel,
        seed: s.seed,
        conntrack: counters(&snap.total()),
        per_cpu: snap.per_cpu.iter().map(counters).collect(),
        clients: w.summary(),
        conntrack_entries_created: created,
        conntrack_entries: table.count() as u64,
        sim: stats,
    }
}

// ----- the workload ---------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Parallel,
    Single,
    SingleReopen,
}

#[derive(Debug)]
struct Lookup {
    pod: u32,
    start: Nanos,
    /// Index of the name being tried, and of the one that answers.
    name: u32,
    answer_name: u32,
    names: u32,
    attempt: u32,
    mode: Mode,
    /// Source ports of the A and AAAA sockets (equal when one socket is shared).
    ports: [u16; 2],
    got: [bool; 2],
    sent: [bool; 2],
    /// Bumped on every new try, so stale timers are ignored.
    epoch: u32,
    /// Timeouts waited.
    timeouts: u32,
    /// Resend interval for musl (ns); the try's deadline otherwise.
    deadline: Nanos,
    done: bool,
}

/// Timer and packet tags: `kind << 56 | epoch << 32 | lookup << 1 | qtype`.
mod tag {
    pub const ARRIVAL: u64 = 1;
    pub const TIMEOUT: u64 = 2;
    pub const REPLY: u64 = 3;
    pub const QUERY: u64 = 4;

    pub fn make(kind: u64, epoch: u32, lookup: u32, q: usize) -> u64 {
        kind << 56 | u64::from(epoch & 0xff_ffff) << 32 | u64::from(lookup) << 1 | q as u64
    }
    pub fn split(t: u64) -> (u64, u32, u32, usize) {
        (t >> 56, (t >> 32) as u32 & 0xff_ffff, (t as u32) >> 1, (t & 1) as usize)
    }
}

struct DnsWorkload<'s> {
    s: &'s DnsScenario,
    nat: NatId,
    lookups: Vec<Lookup>,
    started: u32,
    latencies: Vec<Nanos>,
    failed: u64,
    retried: u64,
    classes: BTreeMap<u32, u64>,
    burst: u64,
}

impl<'s> DnsWorkload<'s> {
    fn new(s: &'s DnsScenario, nat: NatId) -> Self {
        DnsWorkload {
            s,
            nat,
            lookups: Vec::with_capacity(s.clients.lookups as usize),
            started: 0,
            latencies: Vec::with_capacity(s.clients.lookups as usize),
            failed: 0,
            retried: 0,
            classes: BTreeMap::new(),
            burst: 0,
        }
    }
}

fn secs(n: u32) -> Nanos {
    u64::from(n) * 1_000_000_000
}

impl DnsWorkload<'_> {
    fn resolver(&self) -> Resolver {
        match self.s.clients.resolver {
            Resolver::GoCgo => Resolver::Glibc,
            r => r,
        }
    }

    /// glibc's `options use-vc`: each try is one TCP connection (musl and
    /// pure Go ignore the option).
    fn use_vc(&self) -> bool {
        self.resolver() == Resolver::Glibc && self.s.resolv.use_vc
    }

    /// The retry interval a timeout costs (for the latency classes).
    fn interval(&self) -> Nanos {
        match self.resolver() {
            Resolver::Musl => secs(self.s.resolv.timeout) / u64::from(self.s.resolv.attempts),
            _ => secs(self.s.resolv.timeout),
        }
    }

    fn ephemeral(cx: &mut Cx<'_>) -> u16 {
        // net.ipv4.ip_local_port_range default
        cx.rng().random_range(32768..=60999)
    }

    fn start_lookup(&mut self, cx: &mut Cx<'_>) {
        let r = &self.s.resolv;
        let pod = cx.rng().random_range(0..self.s.clients.pods);
        // Search expansion: a name with fewer dots than ndots tries every
        // search domain first. Both kinds here have fewer dots than 5.
        let expands = r.ndots > 1 && r.search > 0;
        let (names, answer_name) = match (self.s.clients.name, expands) {
            (_, false) => (1, 0),
            (NameKind::Service, true) => (r.search + 1, 0),
            (NameKind::External, true) => (r.search + 1, r.search),
        };
        let mode = match self.resolver() {
            Resolver::Glibc if r.single_request_reopen => Mode::SingleReopen,
            Resolver::Glibc if r.single_request => Mode::Single,
            _ => Mode::Parallel,
        };
        let id = self.lookups.len() as u32;
        self.lookups.push(Lookup {
            pod,
            start: cx.now(),
            name: 0,
            answer_name,
            names,
            attempt: 0,
            mode,
            ports: [0, 0],
            got: [false; 2],
            sent: [false; 2],
            epoch: 0,
            timeouts: 0,
            deadline: 0,
            done: false,
        });
        self.new_name(cx, id);
    }

    /// Open the socket(s) for the current name and send.
    fn new_name(&mut self, cx: &mut Cx<'_>, id: u32) {
        let resolver = self.resolver();
        let port = Self::ephemeral(cx);
        let other = if resolver == Resolver::Go { Self::ephemeral(cx) } else { port };
        let l = &mut self.lookups[id as usize];
        l.ports = [port, other];
        l.attempt = 0;
        self.new_try(cx, id);
    }

    /// Start a try of the current name: send per the mode, arm the timeout.
    fn new_try(&mut self, cx: &mut Cx<'_>, id: u32) {
        let timeout = secs(self.s.resolv.timeout);
        let interval = self.interval();
        let l = &mut self.lookups[id as usize];
        l.epoch += 1;
        l.got = [false; 2];
        l.sent = [false; 2];
        let epoch = l.epoch;
        let parallel = l.mode == Mode::Parallel || self.s.clients.resolver == Resolver::Musl;
        l.deadline = cx.now() + timeout;
        let burst = self.burst;
        self.burst += 1;
        self.send_query(cx, id, 0, Some(burst));
        // `use-vc`: one TCP connection carries both queries (`send_vc`
        // connects, then writes A and AAAA in one `writev`), so conntrack
        // sees one SYN and no racing pair.
        if parallel && !self.use_vc() {
            self.send_query(cx, id, 1, Some(burst));
        }
        let wait = if self.resolver() == Resolver::Musl { interval } else { timeout };
        cx.timer(cx.now() + wait, tag::make(tag::TIMEOUT, epoch, id, 0));
    }

    fn send_query(&mut self, cx: &mut Cx<'_>, id: u32, q: usize, burst: Option<u64>) {
        let l = &mut self.lookups[id as usize];
        l.sent[q] = true;
        let epoch = l.epoch;
        let (pod, port) = (l.pod, l.ports[q]);
        let cache = self.s.mitigations.node_local_cache;
        let dst = if cache { CACHE_IP } else { SERVICE_IP };
        let use_vc = self.use_vc();
        let mut pkt = Packet::new(
            if use_vc { Tuple::tcp(pod_ip(pod), port, dst, 53) } else { Tuple::udp(pod_ip(pod), port, dst, 53) },
            tag::make(tag::QUERY, epoch, id, q),
        );
        pkt.sender_cpu = pod as usize;
        pkt.burst = burst;
        pkt.notrack = cache;
        pkt.nat = (!cache).then_some(self.nat);
        if use_vc {
            // The try's TCP connection; its SYN is what conntrack sees.
            pkt.flags = TcpFlags::SYN;
        }
        let delay = if q == 1 { self.s.mitigations.aaaa_delay.as_nanos() as Nanos } else { 0 };
        cx.send(cx.now() + delay, pkt);
    }

    /// An answer reached the client.
    fn answered(&mut self, cx: &mut Cx<'_>, id: u32, epoch: u32, q: usize) {
        let resolver = self.resolver();
        let use_vc = self.use_vc();
        let l = &mut self.lookups[id as usize];
        if l.done || l.got[q] || (epoch != l.epoch && resolver != Resolver::Musl) {
            return;
        }
        l.got[q] = true;
        if use_vc {
            // Both answers come back on the try's one connection.
            l.got = [true, true];
        }
        if l.got == [true, true] {
            return self.name_done(cx, id);
        }
        // Serial modes send AAAA once A is answered.
        if !l.sent[1] {
            if l.mode == Mode::SingleReopen {
                l.ports[1] = Self::ephemeral(cx);
            } else {
                let p = l.ports[0];
                l.ports[1] = p;
            }
            self.send_query(cx, id, 1, None);
        }
    }

    fn name_done(&mut self, cx: &mut Cx<'_>, id: u32) {
        let l = &mut self.lookups[id as usize];
        if l.name == l.answer_name {
            return self.finish(cx, id, true);
        }
        l.name += 1;
        if l.name >= l.names {
            return self.finish(cx, id, false);
        }
        self.new_name(cx, id);
    }

    fn timeout(&mut self, cx: &mut Cx<'_>, id: u32, epoch: u32) {
        let attempts = self.s.resolv.attempts;
        let interval = self.interval();
        let resolver = self.resolver();
        let l = &mut self.lookups[id as usize];
        if l.done || epoch != l.epoch {
            return;
        }
        l.timeouts += 1;
        match resolver {
            Resolver::Musl => {
                if cx.now() >= l.deadline {
                    return self.finish(cx, id, false);
                }
                // Resend what is unanswered, on the same socket.
                l.epoch += 1;
                let epoch = l.epoch;
                let missing: Vec<usize> = (0..2).filter(|&q| !l.got[q]).collect();
                let burst = self.burst;
                self.burst += 1;
                for q in missing {
                    self.send_query(cx, id, q, Some(burst));
                }
                cx.timer(cx.now() + interval, tag::make(tag::TIMEOUT, epoch, id, 0));
            }
            Resolver::Glibc | Resolver::GoCgo => {
                let one = l.got[0] != l.got[1];
                if one && l.mode != Mode::SingleReopen {
                    // send_dg: switch to single-request (then -reopen) and retry.
                    if l.mode == Mode::Parallel {
                        l.mode = Mode::Single;
                    } else {
                        l.mode = Mode::SingleReopen;
                        l.ports[0] = Self::ephemeral(cx);
                    }
                    return self.new_try(cx, id);
                }
                if one {
                    // Gave up waiting for the second answer: use what came.
                    return self.name_done(cx, id);
                }
                l.attempt += 1;
                if l.attempt >= attempts {
                    return self.finish(cx, id, false);
                }
                self.new_try(cx, id);
            }
            Resolver::Go => {
                l.attempt += 1;
                if l.attempt >= attempts {
                    return self.finish(cx, id, false);
                }
                // A new socket per attempt.
                l.ports = [Self::ephemeral(cx), Self::ephemeral(cx)];
                self.new_try(cx, id);
            }
        }
    }

    fn finish(&mut self, cx: &mut Cx<'_>, id: u32, ok: bool) {
        let interval = self.interval();
        let l = &mut self.lookups[id as usize];
        l.done = true;
        l.epoch += 1;
        let latency = cx.now() - l.start;
        if ok {
            self.latencies.push(latency);
        } else {
            self.failed += 1;
        }
        // `retried` counts answered lookups that waited first, as the TCP
        // scenarios count connections; a failed one is in `failed` only.
        if ok && l.timeouts > 0 {
            self.retried += 1;
            let class = (latency / interval).max(1) as u32;
            *self.classes.entry(class).or_default() += 1;
        }
    }

    fn summary(&self) -> ClientStats {
        let interval = self.interval();
        let classes = self.classes.iter().map(|(k, v)| (u64::from(*k) * interval, *v));
        ClientStats::summarize(self.lookups.len() as u64, self.latencies.clone(), self.failed, self.retried, classes)
    }
}

impl Workload for DnsWorkload<'_> {
    fn start(&mut self, cx: &mut Cx<'_>) {
        cx.timer(0, tag::make(tag::ARRIVAL, 0, 0, 0));
    }

    fn delivered(&mut self, cx: &mut Cx<'_>, d: Delivered) {
        let (kind, epoch, id, q) = tag::split(d.tag);
        match kind {
            tag::QUERY => {
                // The query reached the server (or the cache) if conntrack let it through.
                if !d.verdict.accepted() {
                    return;
                }
                let latency = if self.s.mitigations.node_local_cache {
                    let hit = cx.rng().random_bool(self.s.mitigations.cache_hit_ratio);
                    CACHE_LATENCY + if hit { 0 } else { CACHE_MISS_EXTRA }
                } else {
                    self.s.service.latency.as_nanos() as Nanos
                };
                // Remember where it went: the answer comes back from there.
                let answer = Packet {
                    tuple: d.out.invert(),
                    flags: if d.out.proto == racetrack_engine::L4Proto::Tcp {
                        TcpFlags::SYN_ACK
                    } else {
                        TcpFlags::default()
                    },
                    sender_cpu: d.cpu,
                    burst: None,
                    nat: None,
                    notrack: self.s.mitigations.node_local_cache,
                    tag: tag::make(tag::REPLY, epoch, id, q),
                };
                cx.send(cx.now() + latency, answer);
            }
            tag::REPLY => {
                // The answer made it back to the pod only if conntrack matched
                // it to the query's connection (and un-DNATed it).
                let ok = match d.verdict {
                    Verdict::Untracked => true,
                    Verdict::Established(u) => !matches!(u, Update::Gone),
                    _ => false,
                };
                if ok {
                    self.answered(cx, id, epoch, q);
                }
            }
            _ => {}
        }
    }

    fn timer(&mut self, cx: &mut Cx<'_>, token: u64) {
        let (kind, epoch, id, _) = tag::split(token);
        match kind {
            tag::ARRIVAL => {
                self.start_lookup(cx);
                self.started += 1;
                if self.started < self.s.clients.lookups {
                    let u: f64 = cx.rng().random_range(f64::MIN_POSITIVE..1.0);
                    let gap = (-u.ln() / self.s.clients.rate * 1e9) as Nanos;
                    cx.timer(cx.now() + gap, tag::make(tag::ARRIVAL, 0, 0, 0));
                }
            }
            tag::TIMEOUT => self.timeout(cx, id, epoch),
            _ => {}
        }
    }
}
