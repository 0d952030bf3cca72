//! TCP connections through one node's conntrack: handshake, hold, close and
//! SYN retransmission, shared by the `snat`, `tw-recycle` and `syn-backlog`
//! scenarios.
//!
//! A connection is six packets through the simulated node: SYN, SYN-ACK,
//! ACK, then after the hold time the server's FIN, the client's FIN and the
//! server's last ACK (the server closes first, so it is the side that keeps
//! TIME_WAIT). A SYN that conntrack drops, or that the listener refuses, is
//! silently lost; the client sends it again after its retransmission timeout
//! (1 s, doubling, as Linux since 3.1 — RFC 6298), so connect latency shows
//! the damage in whole seconds: 1 s, 3 s, 7 s, …
//!
//! What a scenario adds (which connection to open, what the listener does
//! with a SYN) comes through the [`Tcp`] trait.

use std::collections::BTreeMap;
use std::time::Duration;

use racetrack_engine::sim::{Confirmed, Cx, Delivered, NatId, Packet, SnatDone, Verdict, Workload};
use racetrack_engine::{Nanos, TcpFlags, Tuple, Update};
use rand::Rng;
use rand_pcg::Pcg64Mcg;
use serde::{Deserialize, Serialize};

use crate::clients::ClientStats;

/// How connections arrive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ArrivalKind {
    /// Open loop, exponential gaps (many independent clients).
    Poisson,
    /// `burst` connections at once, bursts evenly spaced (a connection pool
    /// filling up, a batch job, a load test).
    Bursts,
}

/// The offered load.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Load {
    /// Connections in the run.
    pub connections: u32,
    /// Mean new connections per second.
    pub rate: f64,
    /// `poisson` or `bursts`.
    pub arrival: ArrivalKind,
    /// With `bursts`: connections per burst.
    pub burst: u32,
    /// With `bursts`: the SYNs of one burst go out spread evenly at random over this time.
    #[serde(with = "humantime_serde")]
    pub burst_spread: Duration,
}

impl Load {
    /// Check the values; keys are prefixed with `prefix`.
    pub fn validate(&self, prefix: &str) -> Result<(), (String, String)> {
        let bad = |k: &str, m: &str| Err((format!("{prefix}.{k}"), m.to_string()));
        if self.connections == 0 || self.connections > 5_000_000 {
            return bad("connections", "must be 1 to 5000000");
        }
        // The simulator's periodic work (GC) runs per virtual second, so a
        // run that lasts years of virtual time would take hours.
        if !(self.rate >= MIN_RATE && self.rate <= 1e7) {
            return bad("rate", "must be 0.01 to 1e7 connections per second");
        }
        if self.burst == 0 || self.burst > 1_000_000 {
            return bad("burst", "must be 1 to 1000000");
        }
        if self.burst_spread > Duration::from_secs(60) {
            return bad("burst_spread", "must be at most 60s");
        }
        Ok(())
    }
}

/// The lowest request rate a scenario accepts (per second).
pub const MIN_RATE: f64 = 0.01;

/// Client-side TCP timing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timing {
    /// Round trip between client and server.
    #[serde(with = "humantime_serde")]
    pub rtt: Duration,
    /// How long a connection stays open before the server closes it.
    #[serde(with = "humantime_serde")]
    pub hold: Duration,
    /// First SYN retransmission timeout (Linux: 1 s since 3.1; 3 s before).
    #[serde(with = "humantime_serde")]
    pub syn_rto: Duration,
    /// `net.ipv4.tcp_syn_retries`: retransmissions before connect() fails.
    pub syn_retries: u32,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            rtt: Duration::from_micros(200),
            hold: Duration::from_millis(100),
            syn_rto: Duration::from_secs(1),
            syn_retries: 6,
        }
    }
}

impl Timing {
    /// Check the values; keys are prefixed with `prefix`.
    pub fn validate(&self, prefix: &str) -> Result<(), (String, String)> {
        let bad = |k: &str, m: &str| Err((format!("{prefix}.{k}"), m.to_string()));
        if self.syn_rto.is_zero() || self.syn_rto > Duration::from_secs(120) {
            return bad("syn_rto", "must be longer than 0s and at most 120s");
        }
        if self.syn_retries > 10 {
            return bad("syn_retries", "must be 0 to 10");
        }
        if self.rtt > Duration::from_secs(10) {
            return bad("rtt", "must be at most 10s");
        }
        if self.hold > Duration::from_secs(3600) {
            return bad("hold", "must be at most 1h");
        }
        Ok(())
    }
}

/// One connection.
#[derive(Clone, Debug)]
pub struct Conn {
    /// The client host that opened it.
    pub host: u32,
    /// Its tuple as the client sends it.
    pub orig: Tuple,
    /// When the first SYN went out.
    pub first_syn: Nanos,
    /// SYNs sent so far minus one.
    pub attempt: u32,
    /// The SYN's tuple after NAT, once conntrack let one through.
    pub out: Option<Tuple>,
    /// The handshake completed at the client.
    pub connected: bool,
    /// connect() gave up.
    pub failed: bool,
}

/// Why a listener refused a SYN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// PAWS against the per-peer timestamp cache (`tcp_tw_recycle`): `PAWSPassive`.
    Paws,
    /// The SYN queue, or the `tcp_max_syn_backlog` rule without syncookies.
    SynQueue,
    /// The accept queue is full: `ListenOverflows`.
    AcceptQueue,
}

/// What the listener does with a SYN that conntrack let through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SynAnswer {
    /// A SYN-ACK from a queued request.
    SynAck,
    /// A SYN-ACK carrying a syncookie (the SYN queue was full).
    Cookie,
    /// Dropped silently.
    Drop(Refusal),
}

/// The scenario's side of the connections.
pub trait Tcp {
    /// Open connection number `i`: the client host and the tuple it sends.
    fn open(&mut self, i: u32, now: Nanos, rng: &mut Pcg64Mcg) -> (u32, Tuple);
    /// A SYN of connection `id` reached the server (conntrack accepted it).
    fn syn(&mut self, now: Nanos, id: u32, c: &Conn) -> SynAnswer {
        let _ = (now, id, c);
        SynAnswer::SynAck
    }
    /// The client's ACK completed the handshake at the server.
    fn established(&mut self, now: Nanos, id: u32, c: &Conn) {
        let _ = (now, id, c);
    }
    /// The server closed the connection and holds it in TIME_WAIT.
    fn closed(&mut self, now: Nanos, id: u32, c: &Conn) {
        let _ = (now, id, c);
    }
}

/// Listener-side TCP counters (the `tcp` output key).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TcpStats {
    /// SYNs the listener dropped by PAWS (`tcp_tw_recycle`; netstat `PAWSPassive`).
    pub syn_dropped_paws: u64,
    /// SYNs the listener dropped for a full SYN or accept queue.
    pub syn_dropped_backlog: u64,
    /// Of those, for a full accept queue (netstat `ListenOverflows`).
    pub listen_overflows: u64,
    /// SYN-ACKs sent with a syncookie because the SYN queue was full.
    pub syncookies_sent: u64,
    /// SYNs the clients sent again after a timeout.
    pub syn_retransmits: u64,
}

/// SNAT port allocation, summed over the run (the `snat` output key).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SnatStats {
    /// Allocations made (one per SYN that reached SNAT as a new connection).
    pub allocations: u64,
    /// Allocations that kept the client's own source port.
    pub kept_original: u64,
    /// Histogram: ports probed per allocation → allocations.
    pub probes: BTreeMap<u32, u64>,
    /// Most ports probed by one allocation.
    pub probes_max: u32,
    /// Allocations that found no free port and used a taken one anyway.
    pub exhausted: u64,
    /// Sum over allocations of the unconfirmed allocations racing it on other CPUs.
    pub racing_pairs: u64,
    /// Allocations whose connection then lost at confirm (the mapped tuple was taken).
    pub dropped_at_confirm: u64,
    /// Of those, allocations that had found no free port.
    pub dropped_exhausted: u64,
    /// Recent share of allocations that could not keep the client port
    /// (moving average over about 256 allocations).
    #[serde(skip)]
    pub fallback_share: f64,
    /// Σ racing × fallback_share², at each allocation: racing pairs in which
    /// both sides (probably) searched.
    #[serde(skip)]
    pub racing_both_searched: f64,
    /// Σ racing × (1 − fallback_share)²: racing pairs in which both kept the client port.
    #[serde(skip)]
    pub racing_both_kept: f64,
}

impl SnatStats {
    /// Count one allocation.
    pub fn add(&mut self, d: &SnatDone, dropped: bool) {
        let o = &d.outcome;
        self.dropped_at_confirm += u64::from(dropped);
        self.dropped_exhausted += u64::from(dropped && o.exhausted);
        self.allocations += 1;
        self.kept_original += u64::from(o.kept_original);
        *self.probes.entry(o.probes).or_default() += 1;
        self.probes_max = self.probes_max.max(o.probes);
        self.exhausted += u64::from(o.exhausted);
        self.racing_pairs += u64::from(d.racing);
        let x = if o.kept_original { 0.0 } else { 1.0 };
        self.fallback_share += (x - self.fallback_share) / self.allocations.min(256) as f64;
        let q = self.fallback_share;
        self.racing_both_searched += f64::from(d.racing) * q * q;
        self.racing_both_kept += f64::from(d.racing) * (1.0 - q) * (1.0 - q);
    }
}

/// Tags: `kind << 56 | attempt << 48 | connection`.
mod tag {
    pub const SYN: u64 = 1;
    pub const SYN_ACK: u64 = 2;
    pub const ACK: u64 = 3;
    pub const SERVER_FIN: u64 = 4;
    pub const CLIENT_FIN: u64 = 5;
    pub const LAST_ACK: u64 = 6;
    pub const ARRIVAL: u64 = 10;
    pub const RTO: u64 = 11;
    pub const CLOSE: u64 = 12;

    pub fn make(kind: u64, attempt: u32, id: u32) -> u64 {
        kind << 56 | u64::from(attempt & 0xff) << 48 | u64::from(id)
    }
    pub fn split(t: u64) -> (u64, u32, u32) {
        (t >> 56, (t >> 48) as u32 & 0xff, t as u32)
    }
}

/// Drives connections through the simulator for a [`Tcp`] scenario.
pub struct TcpWorkload<'a, T: Tcp> {
    /// The scenario's side.
    pub tcp: T,
    load: &'a Load,
    timing: &'a Timing,
    nat: Option<NatId>,
    cpus: usize,
    conns: Vec<Conn>,
    latencies: Vec<Nanos>,
    waited: BTreeMap<Nanos, u64>,
    failed: u64,
    retried: u64,
    /// Listener counters.
    pub stats: TcpStats,
    /// SNAT allocations.
    pub snat: SnatStats,
}

fn ns(d: Duration) -> Nanos {
    d.as_nanos().min(u128::from(Nanos::MAX)) as Nanos
}

impl<'a, T: Tcp> TcpWorkload<'a, T> {
    /// Connections per `load`, with `timing`, through `nat` (if any), on a node of `cpus` CPUs.
    pub fn new(tcp: T, load: &'a Load, timing: &'a Timing, nat: Option<NatId>, cpus: usize) -> Self {
        Self {
            tcp,
            load,
            timing,
            nat,
            cpus: cpus.max(1),
            conns: Vec::with_capacity(load.connections as usize),
            latencies: Vec::with_capacity(load.connections as usize),
            waited: BTreeMap::new(),
            failed: 0,
            retried: 0,
            stats: TcpStats::default(),
            snat: SnatStats::default(),
        }
    }

    /// The connections, in the order they were opened.
    pub fn conns(&self) -> &[Conn] {
        &self.conns
    }

    /// What the clients saw.
    pub fn summary(&self) -> ClientStats {
        ClientStats::summarize(
            self.conns.len() as u64,
            self.latencies.clone(),
            self.failed,
            self.retried,
            self.waited.iter().map(|(&k, &v)| (k, v)),
        )
    }

    fn packet(&self, id: u32, kind: u64, tuple: Tuple, flags: TcpFlags, burst: Option<u64>) -> Packet {
        let c = &self.conns[id as usize];
        Packet {
            flags,
            sender_cpu: c.host as usize % self.cpus,
            burst,
            nat: self.nat,
            ..Packet::new(tuple, tag::make(kind, c.attempt, id))
        }
    }

    fn send_syn(&mut self, cx: &mut Cx<'_>, id: u32, at: Nanos, burst: Option<u64>) {
        let c = &self.conns[id as usize];
        let p = self.packet(id, tag::SYN, c.orig, TcpFlags::SYN, burst);
        cx.send(at, p);
        let rto = ns(self.timing.syn_rto) << c.attempt.min(20);
        cx.timer(at + rto, tag::make(tag::RTO, c.attempt, id));
    }

    fn open(&mut self, cx: &mut Cx<'_>, at: Nanos, burst: Option<u64>) {
        let i = self.conns.len() as u32;
        let (host, orig) = self.tcp.open(i, at, cx.rng());
        self.conns.push(Conn { host, orig, first_syn: at, attempt: 0, out: None, connected: false, failed: false });
        self.send_syn(cx, i, at, burst);
    }

    /// Open the next connections and schedule the arrival after them.
    fn arrive(&mut self, cx: &mut Cx<'_>, n: u32) {
        let now = cx.now();
        let left = self.load.connections - self.conns.len() as u32;
        let gap = match self.load.arrival {
            ArrivalKind::Poisson => {
                self.open(cx, now, None);
                let u: f64 = cx.rng().random();
                (-(1.0 - u).ln() / self.load.rate * 1e9) as Nanos
            }
            ArrivalKind::Bursts => {
                let spread = ns(self.load.burst_spread);
                for _ in 0..self.load.burst.min(left) {
                    let off = if spread == 0 { 0 } else { cx.rng().random_range(0..spread) };
                    self.open(cx, now + off, Some(u64::from(n)));
                }
                (f64::from(self.load.burst) / self.load.rate * 1e9) as Nanos
            }
        };
        if (self.conns.len() as u32) < self.load.connections {
            cx.timer(now + gap.max(1), tag::make(tag::ARRIVAL, 0, n + 1));
        }
    }

    fn syn_delivered(&mut self, cx: &mut Cx<'_>, id: u32, d: &Delivered) {
        if let Some(s) = &d.snat {
            self.snat.add(s, matches!(d.verdict, Verdict::New(Confirmed::Dropped(_))));
        }
        let now = cx.now();
        if let Verdict::Established(Update::Reopen) = d.verdict {
            // A SYN on a TIME_WAIT/CLOSE entry: conntrack killed it and the
            // packet goes through the hooks again (NF_REPEAT).
            let p = self.packet(id, tag::SYN, self.conns[id as usize].orig, TcpFlags::SYN, None);
            cx.send(now, p);
            return;
        }
        let c = &mut self.conns[id as usize];
        if !d.verdict.accepted() || c.connected || c.failed {
            return; // lost in conntrack (counted there), or a stale duplicate
        }
        c.out = Some(d.out);
        match self.tcp.syn(now, id, &self.conns[id as usize]) {
            SynAnswer::Drop(r) => match r {
                Refusal::Paws => self.stats.syn_dropped_paws += 1,
                Refusal::SynQueue => self.stats.syn_dropped_backlog += 1,
                Refusal::AcceptQueue => {
                    self.stats.syn_dropped_backlog += 1;
                    self.stats.listen_overflows += 1;
                }
            },
            answer => {
                self.stats.syncookies_sent += u64::from(answer == SynAnswer::Cookie);
                let p = self.packet(id, tag::SYN_ACK, d.out.invert(), TcpFlags::SYN_ACK, None);
                cx.send(now + ns(self.timing.rtt) / 2, p);
            }
        }
    }

    fn rto(&mut self, cx: &mut Cx<'_>, id: u32, attempt: u32) {
        let c = &mut self.conns[id as usize];
        if c.connected || c.failed || c.attempt != attempt {
            return;
        }
        if attempt >= self.timing.syn_retries {
            c.failed = true;
            self.failed += 1;
            return;
        }
        c.attempt += 1;
        self.stats.syn_retransmits += 1;
        self.send_syn(cx, id, cx.now(), None);
    }
}

impl<T: Tcp> Workload for TcpWorkload<'_, T> {
    fn start(&mut self, cx: &mut Cx<'_>) {
        cx.timer(0, tag::make(tag::ARRIVAL, 0, 0));
    }

    fn delivered(&mut self, cx: &mut Cx<'_>, d: Delivered) {
        let (kind, _, id) = tag::split(d.tag);
        let now = cx.now();
        let half_rtt = ns(self.timing.rtt) / 2;
        if kind == tag::SYN {
            return self.syn_delivered(cx, id, &d);
        }
        if !d.verdict.accepted() {
            return;
        }
        let c = &self.conns[id as usize];
        let Some(out) = c.out else { return };
        match kind {
            tag::SYN_ACK => {
                if c.connected || c.failed {
                    return; // a second SYN-ACK for a retransmitted SYN
                }
                let latency = now - c.first_syn;
                let (attempt, orig) = (c.attempt, c.orig);
                let c = &mut self.conns[id as usize];
                c.connected = true;
                self.latencies.push(latency);
                if attempt > 0 {
                    self.retried += 1;
                    // Timeouts waited: rto · (2^attempt − 1).
                    *self.waited.entry(ns(self.timing.syn_rto) * ((1 << attempt.min(20)) - 1)).or_default() += 1;
                }
                let p = self.packet(id, tag::ACK, orig, TcpFlags::ACK, None);
                cx.send(now + half_rtt, p);
            }
            tag::ACK => {
                self.tcp.established(now, id, c);
                cx.timer(now + ns(self.timing.hold), tag::make(tag::CLOSE, 0, id));
            }
            tag::SERVER_FIN => {
                let p = self.packet(id, tag::CLIENT_FIN, c.orig, TcpFlags::FIN, None);
                cx.send(now + half_rtt, p);
            }
            tag::CLIENT_FIN => {
                self.tcp.closed(now, id, c);
                let p = self.packet(id, tag::LAST_ACK, out.invert(), TcpFlags::ACK, None);
                cx.send(now + half_rtt, p);
            }
            _ => {}
        }
    }

    fn timer(&mut self, cx: &mut Cx<'_>, token: u64) {
        let (kind, attempt, id) = tag::split(token);
        match kind {
            tag::ARRIVAL => self.arrive(cx, id),
            tag::RTO => self.rto(cx, id, attempt),
            tag::CLOSE => {
                let c = &self.conns[id as usize];
                if let Some(out) = c.out {
                    let p = self.packet(id, tag::SERVER_FIN, out.invert(), TcpFlags::FIN, None);
                    cx.send(cx.now(), p);
                }
            }
            _ => unreachable!("unknown timer kind {kind}"),
        }
    }
}
