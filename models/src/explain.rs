//! Step-by-step interleavings of the four races, for teaching
//! (`racetrack explain RACE`).
//!
//! Each race is a script: which CPU runs which stage of which packet, and
//! when. The script drives the real engine — [`Conntrack::lookup`],
//! [`Conntrack::new_conn`], DNAT and SNAT on the packet's [`Unconfirmed`]
//! entry, [`Conntrack::confirm`], [`Conntrack::update`] — and the real
//! listener models ([`PeerCache`], [`Queues`]), and every [`Step`] records
//! what they answered: the outcome, the table's entries afterwards and the
//! counters that moved. The sentences around the facts are templates; the
//! facts (outcomes, ports, endpoints, counter deltas, entries) are read back
//! from the engine, so a change in a kernel profile changes the story.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use racetrack_engine::nat::dnat::{Dnat, Endpoint, Selector};
use racetrack_engine::nat::snat::{Allocator, Rovers, Snat, SnatFlags};
use racetrack_engine::profile::{preset, ClashPolicy, PortOffset};
use racetrack_engine::stats::CpuCounters;
use racetrack_engine::{
    At, ClashCause, Confirm, Conntrack, Dir, DropReason, Hit, KernelProfile, L4Proto, Nanos, Stat, TcpFlags, TcpState,
    Tuple, Unconfirmed, Update,
};
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use serde::Serialize;

use crate::syn_backlog::{Listener, Queues};
use crate::tcp::{Refusal, SynAnswer};
use crate::tw_recycle::{tsval, PawsCheck, PeerCache};

/// The races `explain` knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Race {
    /// glibc's A and AAAA from one socket to a ClusterIP, on two CPUs.
    DnsDnat,
    /// Two clients with the same source port through MASQUERADE, on two CPUs.
    SnatPort,
    /// Two hosts behind one NAT against a `tcp_tw_recycle` server.
    TwRecycle,
    /// A SYN burst larger than the listener's SYN queue.
    SynBacklog,
}

impl Race {
    /// Every race, in the order `explain` lists them.
    pub const ALL: [Race; 4] = [Race::DnsDnat, Race::SnatPort, Race::TwRecycle, Race::SynBacklog];

    /// The name on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            Race::DnsDnat => "dns-dnat",
            Race::SnatPort => "snat-port",
            Race::TwRecycle => "tw-recycle",
            Race::SynBacklog => "syn-backlog",
        }
    }

    /// The race with this name.
    pub fn from_name(name: &str) -> Option<Race> {
        Race::ALL.into_iter().find(|r| r.name() == name)
    }

    /// Every race's name.
    pub fn names() -> Vec<&'static str> {
        Race::ALL.iter().map(|r| r.name()).collect()
    }

    /// The kernel preset used without `--kernel`: one on which the race happens.
    pub const fn default_kernel(self) -> &'static str {
        match self {
            Race::DnsDnat => "4.14",
            Race::SnatPort => "4.19",
            // The newest preset that still has tcp_tw_recycle.
            Race::TwRecycle => "4.9",
            Race::SynBacklog => "5.10",
        }
    }
}

/// A race explained: the race itself on the chosen kernel, then each fix.
#[derive(Clone, Debug, Serialize)]
pub struct Explanation {
    /// The race's name.
    pub race: &'static str,
    /// The chosen kernel profile's name.
    pub kernel: String,
    /// What the race is, in two sentences.
    pub intro: String,
    /// The scripted runs: the race first, then the fixes.
    pub runs: Vec<Run>,
}

/// One scripted interleaving on a fresh table.
#[derive(Clone, Debug, Serialize)]
pub struct Run {
    /// Short name (`race, one endpoint`, `fix: single-request-reopen`).
    pub name: String,
    /// Whether this run shows a fix (or a kernel that does not have the race).
    pub fix: bool,
    /// The kernel profile the run used.
    pub kernel: String,
    /// What is set up before the first step.
    pub setup: String,
    /// The steps, in time order.
    pub steps: Vec<Step>,
    /// How it ended.
    pub outcome: Outcome,
}

/// Where a step happens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Place {
    /// The node whose conntrack table is shown.
    Node,
    /// The remote server (TCP listener).
    Server,
    /// The client (a resolver or TCP stack waiting).
    Client,
}

/// One step of a run.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    /// 1-based number within the run.
    pub step: usize,
    /// Virtual time (ns since the run started).
    pub at_ns: Nanos,
    /// Where it happens.
    pub place: Place,
    /// The node CPU that runs it (`None` for steps off the node or spread over both CPUs).
    pub cpu: Option<usize>,
    /// Who acts (`A`, `AAAA`, `client 1`, `host B`, `server`).
    pub actor: String,
    /// What happened, as data.
    pub event: Event,
    /// What happened, in words (built around the facts of `event`).
    pub text: String,
    /// The check that failed at this step, if one did.
    pub check: Option<String>,
    /// The table after the step (at most [`TABLE_SHOWN`] entries).
    pub table: Vec<Entry>,
    /// Entries in the table after the step.
    pub table_size: usize,
    /// Counters that moved during the step, summed over CPUs (`conntrack -S` names).
    pub counters: BTreeMap<&'static str, u64>,
}

/// Entries a step lists at most.
pub const TABLE_SHOWN: usize = 6;

/// A confirmed conntrack entry as a step shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// Original tuple.
    pub orig: String,
    /// Reply tuple (NAT applied).
    pub reply: String,
    /// Status bits (`CONFIRMED`, `DST_NAT`, `NAT_CLASH`, …).
    pub status: Vec<String>,
    /// TCP state for TCP entries (`SYN_SENT`, `TIME_WAIT`, …).
    pub tcp_state: Option<&'static str>,
    /// Time left before it expires.
    pub expires_in_ns: Nanos,
}

/// What confirm did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConfirmResult {
    /// Both tuples inserted.
    Inserted,
    /// Clash merged into the existing entry.
    Merged,
    /// Clash resolved by a reply-only NAT_CLASH entry.
    NatClash,
    /// The packet was dropped.
    Dropped,
}

/// What a listener answered to a SYN.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Answer {
    /// A SYN-ACK (request queued).
    SynAck,
    /// A SYN-ACK with a syncookie.
    Cookie,
    /// Dropped by PAWS against the per-peer cache (`PAWSPassive`).
    DroppedPaws,
    /// Dropped: SYN queue full, or the `tcp_max_syn_backlog` rule.
    DroppedSynQueue,
    /// Dropped: accept queue full (`ListenOverflows`).
    DroppedAcceptQueue,
}

impl Answer {
    fn of(a: SynAnswer) -> Answer {
        match a {
            SynAnswer::SynAck => Answer::SynAck,
            SynAnswer::Cookie => Answer::Cookie,
            SynAnswer::Drop(Refusal::Paws) => Answer::DroppedPaws,
            SynAnswer::Drop(Refusal::SynQueue) => Answer::DroppedSynQueue,
            SynAnswer::Drop(Refusal::AcceptQueue) => Answer::DroppedAcceptQueue,
        }
    }

    /// Whether the SYN was dropped.
    pub fn dropped(self) -> bool {
        !matches!(self, Answer::SynAck | Answer::Cookie)
    }
}

/// What a step did, as data.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Event {
    /// Conntrack lookup missed: the packet now owns a new unconfirmed entry.
    LookupMiss {
        /// The packet's tuple.
        tuple: String,
    },
    /// Conntrack lookup found a confirmed entry.
    LookupHit {
        /// The packet's tuple.
        tuple: String,
        /// `original` or `reply`: which of the entry's tuples matched.
        dir: &'static str,
        /// The entry's original tuple.
        entry: String,
        /// What the update did: `accepted`, `gone`, `clash-entry-consumed`, `reopen`.
        update: &'static str,
    },
    /// No room in the table: the packet is dropped.
    TableFull {
        /// The packet's tuple.
        tuple: String,
    },
    /// NOTRACK: the packet skips conntrack.
    Untracked {
        /// The packet's tuple.
        tuple: String,
    },
    /// DNAT chose an endpoint.
    Dnat {
        /// `addr:port` of the endpoint.
        endpoint: String,
        /// Its index among the service's endpoints.
        index: usize,
    },
    /// SNAT chose a source.
    Snat {
        /// `addr:port` the connection now leaves from.
        source: String,
        /// The source port chosen.
        port: u16,
        /// The client's own port was kept.
        kept_original: bool,
        /// Candidates checked against the table.
        probes: u32,
        /// No free port found.
        exhausted: bool,
    },
    /// Confirm ran.
    Confirm {
        /// What it did.
        result: ConfirmResult,
        /// With `dropped`: why (`policy`, `protocol`, `nat-differs`, `reply-taken`,
        /// `chain-too-long`, `table-full`).
        cause: Option<&'static str>,
        /// With a clash: `original` or `reply`, the tuple found taken.
        taken: Option<&'static str>,
    },
    /// A TCP listener answered a SYN.
    Listener {
        /// Its answer.
        answer: Answer,
        /// The PAWS check against the per-peer cache (tw-recycle).
        paws: Option<PawsCheck>,
        /// The SYN's timestamp (tw-recycle).
        tsval: Option<u32>,
    },
    /// The server closed first and cached the peer's timestamp.
    ServerClose {
        /// The peer address.
        peer: String,
        /// The timestamp now cached (`None`: no cache).
        cached_ts: Option<u32>,
    },
    /// A group of SYNs of a burst with the same fate.
    Syns {
        /// 1-based numbers of the first and last SYN of the group.
        first: u32,
        /// See `first`.
        last: u32,
        /// SYNs conntrack accepted.
        conntrack_accepted: u32,
        /// SYNs conntrack dropped.
        conntrack_dropped: u32,
        /// The listener's answer to the accepted ones.
        answer: Answer,
        /// Requests in the SYN queue after the group.
        syn_queue: usize,
        /// Connections waiting for accept() after the group.
        accept_queue: usize,
    },
    /// Handshakes completed (the clients' ACKs arrived).
    Established {
        /// How many.
        count: u32,
        /// Requests left in the SYN queue.
        syn_queue: usize,
        /// Connections waiting for accept().
        accept_queue: usize,
    },
    /// A client waited for a timeout.
    Timeout {
        /// How long it waited.
        waited_ns: Nanos,
    },
}

/// How a run ended.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    /// Packets lost (by conntrack or the listener).
    pub lost: u32,
    /// Of those, dropped by conntrack.
    pub conntrack_drops: u32,
    /// The longest time a client waited for its answer (lookup or connect),
    /// from its first packet; `None` if one never got through.
    pub latency_ns: Option<Nanos>,
    /// Counters at the end of the run, summed over CPUs (non-zero ones).
    pub counters: BTreeMap<&'static str, u64>,
    /// What happened.
    pub summary: String,
    /// Why this kernel or fix behaves so.
    pub why: String,
}

/// Explain `race` on `profile`: the race, then each fix.
pub fn explain(race: Race, profile: &KernelProfile) -> Explanation {
    let (intro, runs) = match race {
        Race::DnsDnat => dns::runs(profile),
        Race::SnatPort => snat::runs(profile),
        Race::TwRecycle => tw::runs(profile),
        Race::SynBacklog => backlog::runs(profile),
    };
    Explanation { race: race.name(), kernel: profile.name.clone(), intro, runs }
}

// ----- the scripted packet path ------------------------------------------------

/// A fresh table for a script on two CPUs.
fn table(profile: &KernelProfile) -> Conntrack {
    let mut p = profile.clone();
    // A script holds a handful of entries (a burst: a few thousand); a small
    // bucket array keeps the table walk of every step cheap and changes no
    // outcome.
    p.conntrack.buckets = p.conntrack.buckets.min(4096);
    Conntrack::new(p, 2, 7)
}

/// A packet between lookup and confirm.
enum Pkt<'t> {
    /// A new connection only this packet holds.
    New(Unconfirmed<'t>),
    /// It belongs to a confirmed entry.
    Hit(Hit),
    /// Dropped before confirm.
    Lost,
}

const SEED: u64 = 1;
const NAT_SECRET: u64 = 0x5eed;

fn ms(n: u64) -> Nanos {
    n * 1_000_000
}

fn secs(n: u64) -> Nanos {
    n * 1_000_000_000
}

fn ep(addr: IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

/// `1.25 s`, `300 ms`, `2.3 us`, for the sentences.
pub fn human(ns: Nanos) -> String {
    if ns >= secs(3600) {
        format!("{:.1} h", ns as f64 / 3.6e12)
    } else if ns >= 999_999_500 {
        let s = ns as f64 / 1e9;
        if ns % secs(1) == 0 {
            format!("{s:.0} s")
        } else {
            format!("{s:.3} s")
        }
    } else if ns >= ms(1) {
        format!("{:.3} ms", ns as f64 / 1e6)
    } else {
        format!("{:.1} us", ns as f64 / 1e3)
    }
}

fn tcp_state_name(s: TcpState) -> &'static str {
    match s {
        TcpState::None => "NONE",
        TcpState::SynSent => "SYN_SENT",
        TcpState::SynRecv => "SYN_RECV",
        TcpState::Established => "ESTABLISHED",
        TcpState::FinWait => "FIN_WAIT",
        TcpState::LastAck => "LAST_ACK",
        TcpState::TimeWait => "TIME_WAIT",
        TcpState::Close => "CLOSE",
    }
}

fn entry(h: &Hit, now: Nanos) -> Entry {
    let bits = format!("{:?}", h.status);
    Entry {
        orig: h.orig.to_string(),
        reply: h.reply.to_string(),
        status: bits.trim_matches(['[', ']']).split('|').filter(|s| !s.is_empty()).map(String::from).collect(),
        tcp_state: (h.orig.proto == L4Proto::Tcp).then(|| tcp_state_name(h.tcp_state)),
        expires_in_ns: h.expires.saturating_sub(now),
    }
}

fn delta(now: &CpuCounters, before: &CpuCounters) -> BTreeMap<&'static str, u64> {
    now.iter().zip(before.iter()).filter(|((_, a), (_, b))| a != b).map(|((n, a), (_, b))| (n, a - b)).collect()
}

fn nonzero(c: &CpuCounters) -> BTreeMap<&'static str, u64> {
    c.iter().filter(|(_, v)| *v != 0).collect()
}

/// `client 2` → `Client 2`, to start a sentence.
fn cap(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
}

fn dir_name(d: Dir) -> &'static str {
    match d {
        Dir::Original => "original",
        Dir::Reply => "reply",
    }
}

fn update_name(u: Update) -> &'static str {
    match u {
        Update::Accepted => "accepted",
        Update::Gone => "gone",
        Update::ClashEntryConsumed => "clash-entry-consumed",
        Update::Reopen => "reopen",
    }
}

/// Runs a script's stages on one table and records each as a [`Step`].
struct Lab<'t> {
    t: &'t Conntrack,
    rng: Pcg64Mcg,
    rovers: Rovers,
    last: CpuCounters,
    steps: Vec<Step>,
    /// While set, stages run but are not recorded (their counters go to the next recorded step).
    quiet: bool,
    lost: u32,
    conntrack_drops: u32,
}

impl<'t> Lab<'t> {
    fn new(t: &'t Conntrack) -> Self {
        Lab {
            t,
            rng: Pcg64Mcg::seed_from_u64(SEED),
            rovers: Rovers::default(),
            last: t.stats().total(),
            steps: Vec::new(),
            quiet: false,
            lost: 0,
            conntrack_drops: 0,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn record(
        &mut self,
        now: Nanos,
        place: Place,
        cpu: Option<usize>,
        actor: &str,
        event: Event,
        text: String,
        check: Option<String>,
    ) {
        if self.quiet {
            return;
        }
        let at = At::new(cpu.unwrap_or(0), now);
        let all: Vec<Entry> = self.t.entries(at).iter().filter(|h| h.expires > now).map(|h| entry(h, now)).collect();
        let stats = self.t.stats().total();
        let counters = delta(&stats, &self.last);
        self.last = stats;
        self.steps.push(Step {
            step: self.steps.len() + 1,
            at_ns: now,
            place,
            cpu,
            actor: actor.to_string(),
            event,
            text,
            check,
            table_size: all.len(),
            table: all.into_iter().take(TABLE_SHOWN).collect(),
            counters,
        });
    }

    fn note(&mut self, now: Nanos, place: Place, actor: &str, event: Event, text: String, check: Option<String>) {
        self.record(now, place, None, actor, event, text, check);
    }

    /// Conntrack in: a hit updates the entry; a miss makes a new unconfirmed one.
    fn lookup(&mut self, cpu: usize, now: Nanos, actor: &str, tuple: Tuple, flags: TcpFlags) -> Pkt<'t> {
        let at = At::new(cpu, now);
        let t = self.t;
        if let Some(hit) = t.lookup(&tuple, at) {
            let update = t.update(&hit, flags, at);
            let what = match update {
                Update::Accepted => "entry updated".to_string(),
                Update::Gone => "but it went away meanwhile".to_string(),
                Update::ClashEntryConsumed => "a reply consumes a NAT_CLASH entry: removed".to_string(),
                Update::Reopen => "a SYN on a closed entry: removed, to be looked up again".to_string(),
            };
            let text = format!("{actor}: lookup {tuple}: found ({} direction); {what}", dir_name(hit.dir));
            let event = Event::LookupHit {
                tuple: tuple.to_string(),
                dir: dir_name(hit.dir),
                entry: hit.orig.to_string(),
                update: update_name(update),
            };
            self.record(now, Place::Node, Some(cpu), actor, event, text, None);
            return Pkt::Hit(hit);
        }
        match t.new_conn(tuple, flags, at) {
            Ok(ct) => {
                let text = format!("{actor}: lookup {tuple}: miss; new unconfirmed entry, seen by this CPU only");
                self.record(
                    now,
                    Place::Node,
                    Some(cpu),
                    actor,
                    Event::LookupMiss { tuple: tuple.to_string() },
                    text,
                    None,
                );
                Pkt::New(ct)
            }
            Err(_) => {
                self.lost += 1;
                self.conntrack_drops += 1;
                let text = format!("{actor}: lookup {tuple}: miss, and the table is full: dropped");
                let check = Some("room for a new entry (nf_conntrack_max)".to_string());
                self.record(
                    now,
                    Place::Node,
                    Some(cpu),
                    actor,
                    Event::TableFull { tuple: tuple.to_string() },
                    text,
                    check,
                );
                Pkt::Lost
            }
        }
    }

    /// NOTRACK: conntrack is skipped.
    fn untracked(&mut self, cpu: usize, now: Nanos, actor: &str, tuple: Tuple) {
        let text = format!("{actor}: {tuple}: raw table NOTRACK, conntrack skipped: no lookup, no entry");
        self.record(now, Place::Node, Some(cpu), actor, Event::Untracked { tuple: tuple.to_string() }, text, None);
    }

    fn dnat(&mut self, cpu: usize, now: Nanos, actor: &str, pkt: &mut Pkt<'t>, rules: &Dnat) {
        let Pkt::New(ct) = pkt else { return };
        let i = rules.select(ct.orig(), &mut self.rng);
        let (addr, port) = rules.translate(ct.orig(), i);
        ct.dnat(addr, port);
        let n = rules.endpoints().len();
        let text =
            format!("{actor}: DNAT to endpoint {} of {n}, {}; reply tuple now {}", i + 1, ep(addr, port), ct.reply());
        self.record(now, Place::Node, Some(cpu), actor, Event::Dnat { endpoint: ep(addr, port), index: i }, text, None);
    }

    fn snat(&mut self, cpu: usize, now: Nanos, actor: &str, pkt: &mut Pkt<'t>, rule: &Snat) -> Option<u16> {
        let Pkt::New(ct) = pkt else { return None };
        let at = At::new(cpu, now);
        let (orig, reply) = (*ct.orig(), *ct.reply());
        let t = self.t;
        let o = rule.allocate(
            &orig,
            &reply,
            &t.profile().nat,
            &self.rovers,
            NAT_SECRET,
            cpu,
            2,
            &mut self.rng,
            |c: &Tuple, harder: bool| t.tuple_taken(c, &orig, harder, at),
        );
        ct.snat(o.addr, o.port);
        let source = ep(o.addr, o.port);
        let text = if o.kept_original {
            format!(
                "{actor}: MASQUERADE keeps port {}: no confirmed entry uses {source} (unconfirmed ones are not seen)",
                o.port
            )
        } else {
            let start = if rule.flags.random_fully {
                "random start (--random-fully)"
            } else {
                match t.profile().nat.default_offset {
                    PortOffset::Rover => "start at the shared rover",
                    PortOffset::SecureHash => "start at a hash of the addresses",
                    PortOffset::Random => "random start",
                }
            };
            let probes = if o.probes == 1 { "1 probe".to_string() } else { format!("{} probes", o.probes) };
            let full = if o.exhausted { ", none free: uses it anyway" } else { "" };
            let first = if rule.flags.random_all() { String::new() } else { format!("port {} taken, ", orig.sport) };
            format!("{actor}: MASQUERADE to {source}: {first}{start}, {probes} in all{full}")
        };
        let event = Event::Snat {
            source,
            port: o.port,
            kept_original: o.kept_original,
            probes: o.probes,
            exhausted: o.exhausted,
        };
        self.record(now, Place::Node, Some(cpu), actor, event, text, None);
        Some(o.port)
    }

    /// Confirm a new connection; a hit or lost packet has nothing to confirm.
    fn confirm(&mut self, cpu: usize, now: Nanos, actor: &str, pkt: Pkt<'t>) -> Option<Confirm> {
        let Pkt::New(ct) = pkt else { return None };
        let policy = self.t.profile().conntrack.clash;
        let c = self.t.confirm(ct, At::new(cpu, now), &mut self.rng);
        let (result, cause, taken, text, check) = match &c {
            Confirm::Inserted(_) => (
                ConfirmResult::Inserted,
                None,
                None,
                format!("{actor}: confirm: no clash; inserted, both tuples in the table"),
                None,
            ),
            Confirm::Merged(h) => (
                ConfirmResult::Merged,
                None,
                Some("original"),
                format!(
                    "{actor}: confirm: clash with {}; identical both ways, so merged: the packet goes on \
                     with that entry's NAT (replies from {})",
                    h.orig,
                    ep(h.reply.src, h.reply.sport)
                ),
                None,
            ),
            Confirm::NatClash(h) => (
                ConfirmResult::NatClash,
                None,
                Some("original"),
                format!(
                    "{actor}: confirm: clash, entries differ; reply tuple {} is free: inserted reply-only \
                     (NAT_CLASH), expires in {}",
                    h.reply,
                    human(h.expires.saturating_sub(now))
                ),
                None,
            ),
            Confirm::Dropped(reason) => {
                self.lost += 1;
                self.conntrack_drops += 1;
                let (cause, taken, why) = match reason {
                    DropReason::Clash { found, cause } => {
                        let why = match cause {
                            ClashCause::Policy => "this kernel never resolves a clash",
                            ClashCause::Protocol => "TCP clashes are never resolved",
                            ClashCause::NatDiffers if policy == ClashPolicy::MergeWithoutNat => {
                                "the winner was NATed, and this kernel merges only NAT-free winners"
                            }
                            ClashCause::NatDiffers => "the two entries differ (NAT to different places)",
                            ClashCause::ReplyTaken => "its reply tuple is taken too",
                        };
                        let name = match cause {
                            ClashCause::Policy => "policy",
                            ClashCause::Protocol => "protocol",
                            ClashCause::NatDiffers => "nat-differs",
                            ClashCause::ReplyTaken => "reply-taken",
                        };
                        (name, Some(dir_name(*found)), why)
                    }
                    DropReason::ChainTooLong => ("chain-too-long", None, "the bucket chain is over the limit"),
                    DropReason::TableFull => ("table-full", None, "no room in the table"),
                };
                let check = match taken {
                    Some(d) => format!("the {d} tuple must be free to insert: it is taken (a clash), and {why}"),
                    None => why.to_string(),
                };
                (
                    ConfirmResult::Dropped,
                    Some(cause),
                    taken,
                    format!(
                        "{actor}: confirm: {} tuple already in the table; {why}: packet dropped",
                        taken.unwrap_or("a")
                    ),
                    Some(check),
                )
            }
        };
        self.record(now, Place::Node, Some(cpu), actor, Event::Confirm { result, cause, taken }, text, check);
        Some(c)
    }

    fn finish(
        self,
        name: String,
        fix: bool,
        setup: String,
        latency: Option<Nanos>,
        summary: String,
        why: String,
    ) -> Run {
        Run {
            name,
            fix,
            kernel: self.t.profile().name.clone(),
            setup,
            outcome: Outcome {
                lost: self.lost,
                conntrack_drops: self.conntrack_drops,
                latency_ns: latency,
                counters: nonzero(&self.t.stats().total()),
                summary,
                why,
            },
            steps: self.steps,
        }
    }
}

/// The tuple the answer to a packet comes back on, if the packet got through.
fn answer_tuple(pkt: &Pkt<'_>, confirmed: Option<&Confirm>) -> Option<Tuple> {
    match (pkt, confirmed) {
        (Pkt::Hit(h), _) if h.dir == Dir::Original => Some(h.reply),
        (_, Some(Confirm::Inserted(h) | Confirm::Merged(h) | Confirm::NatClash(h))) => Some(h.reply),
        _ => None,
    }
}

fn clash_rule(profile: &KernelProfile) -> String {
    let k = &profile.name;
    let lose = if profile.counters.drop_on_clash {
        "a dropped loser counts insert_failed and drop"
    } else {
        "a dropped loser counts insert_failed only"
    };
    let counting = match profile.conntrack.clash {
        ClashPolicy::Drop => lose.to_string(),
        _ if profile.counters.clash_resolve => format!("{lose}; a resolved clash counts clash_resolve instead"),
        ClashPolicy::MergeOrNatClash => {
            format!("{lose}; a NAT_CLASH insert counts nothing, a merge insert_failed (nothing is lost)")
        }
        _ => format!("{lose}; a merge counts insert_failed too, though nothing is lost"),
    };
    let rule = match profile.conntrack.clash {
        ClashPolicy::Drop => "never resolves a clash: the loser of the insert race is always dropped".to_string(),
        ClashPolicy::MergeWithoutNat => {
            "merges a clashing UDP packet only into a winner without NAT: a DNATed loser is dropped".to_string()
        }
        ClashPolicy::MergeMatching => "merges the loser when both entries are identical (same endpoint); \
                                       when they differ the loser is dropped"
            .to_string(),
        ClashPolicy::MergeOrNatClash => format!(
            "merges identical entries and otherwise inserts the loser reply-only (NAT_CLASH, {}), \
             so it still reaches its own endpoint",
            human(profile.conntrack.nat_clash_timeout.as_nanos() as Nanos)
        ),
    };
    format!("Kernel {k} {rule}; {counting}.")
}

// ----- dns-dnat ------------------------------------------------------------------

mod dns {
    use super::*;

    const POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 5);
    const SERVICE: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
    const COREDNS: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 244, 2, 10), Ipv4Addr::new(10, 244, 3, 10)];
    const CACHE: Ipv4Addr = Ipv4Addr::new(169, 254, 20, 10);
    const SPORT: u16 = 40000;
    /// glibc's default `options timeout:5`.
    const RESOLV_TIMEOUT: Nanos = 5_000_000_000;
    /// Round trip to CoreDNS.
    const RTT: Nanos = 300_000;

    #[derive(Clone, Copy, PartialEq, Eq)]
    pub(super) enum Mode {
        /// A and AAAA in parallel from one socket, one on each CPU.
        Parallel,
        /// `single-request-reopen`: AAAA from a new socket.
        Reopen,
        /// Both on CPU 0 (steering by sender).
        OneCpu,
        /// A node-local cache behind NOTRACK.
        NodeLocalCache,
    }

    pub(super) fn runs(profile: &KernelProfile) -> (String, Vec<Run>) {
        let intro = "glibc sends the A and AAAA queries of one lookup together from one UDP socket, so both \
                     packets have the same tuple. When two CPUs handle them at once, both miss the table, both \
                     create an entry and are DNATed, and the second confirm finds the tuple taken."
            .to_string();
        let k = &profile.name;
        let mut runs = vec![
            run(profile, 1, Mode::Parallel, format!("race, one endpoint (kernel {k})"), false),
            run(profile, 2, Mode::Parallel, format!("race, two endpoints (kernel {k})"), false),
            run(profile, 2, Mode::Reopen, "fix: options single-request-reopen".into(), true),
            run(profile, 2, Mode::OneCpu, "fix: both queries on one CPU (sender steering)".into(), true),
        ];
        for name in ["5.6", "6.6"] {
            if *k != name {
                let p = preset(name).expect("a preset");
                runs.push(run(&p, 2, Mode::Parallel, format!("fix: kernel {name}, two endpoints"), true));
            }
        }
        runs.push(run(profile, 2, Mode::NodeLocalCache, "fix: node-local DNS cache (NOTRACK)".into(), true));
        (intro, runs)
    }

    pub(super) fn run(profile: &KernelProfile, endpoints: usize, mode: Mode, name: String, fix: bool) -> Run {
        let t = table(profile);
        let mut lab = Lab::new(&t);
        let eps: Vec<Endpoint> =
            COREDNS[..endpoints].iter().map(|&a| Endpoint { addr: a.into(), port: 53, weight: 1 }).collect();
        // One endpoint: kube-proxy's rule. Two: `--mode nth`, so the two
        // packets certainly go to different endpoints (kube-proxy's random
        // rules do so half the time).
        let selector =
            if endpoints == 1 { Selector::kube_proxy_random(1) } else { Selector::StatisticNth { every: 2 } };
        let rules = Dnat::new(eps, selector, NAT_SECRET).expect("a valid rule set");
        let dst = if mode == Mode::NodeLocalCache { CACHE } else { SERVICE };
        let a = Tuple::udp(POD, SPORT, dst, 53);
        let aaaa = if mode == Mode::Reopen { Tuple::udp(POD, SPORT + 1, dst, 53) } else { a };
        let ends = if endpoints == 1 { "one CoreDNS endpoint" } else { "two CoreDNS endpoints" };
        let setup = match mode {
            Mode::Parallel => format!(
                "Pod {POD} looks up a name: A and AAAA from port {SPORT} to the ClusterIP {SERVICE}:53, \
                 which kube-proxy DNATs to {ends}. A is handled on CPU 0, AAAA on CPU 1."
            ),
            Mode::Reopen => format!(
                "As the race with {ends}, but resolv.conf has `options single-request-reopen`: \
                 AAAA leaves from a new socket (port {}), a tuple of its own.",
                SPORT + 1
            ),
            Mode::OneCpu => format!(
                "As the race with {ends}, but both queries are handled on CPU 0, one after the other \
                 (the sending thread's CPU, as with sendmmsg through a veth)."
            ),
            Mode::NodeLocalCache => format!(
                "The pod's resolver is a node-local cache at {CACHE}:53; a raw-table NOTRACK rule exempts \
                 its traffic from conntrack (the cache asks CoreDNS over TCP)."
            ),
        };

        let mut answered: Vec<(usize, &str, Tuple)> = Vec::new();
        let mut lost: Vec<(usize, &str, Tuple)> = Vec::new();
        match mode {
            Mode::NodeLocalCache => {
                lab.untracked(0, 0, "A", a);
                lab.untracked(1, 200, "AAAA", aaaa);
                let latency = RTT;
                let n = t.entries(At::new(0, latency)).len();
                let summary = format!("Both queries answered after {}; the table holds {n} entries.", human(latency));
                let why = "Untracked packets never reach lookup or confirm: there is no entry to race for, \
                           whatever the kernel."
                    .to_string();
                return lab.finish(name, fix, setup, Some(latency), summary, why);
            }
            Mode::Parallel | Mode::Reopen => {
                let mut p0 = lab.lookup(0, 0, "A", a, TcpFlags::default());
                let mut p1 = lab.lookup(1, 200, "AAAA", aaaa, TcpFlags::default());
                lab.dnat(0, 1_000, "A", &mut p0, &rules);
                lab.dnat(1, 1_200, "AAAA", &mut p1, &rules);
                let (k0, k1) = (keep(&p0), keep(&p1));
                let c0 = lab.confirm(0, 2_000, "A", p0);
                let c1 = lab.confirm(1, 2_300, "AAAA", p1);
                for (cpu, who, q, k, c) in [(0, "A", a, k0, c0), (1, "AAAA", aaaa, k1, c1)] {
                    match answer_tuple(&k, c.as_ref()) {
                        Some(r) => answered.push((cpu, who, r)),
                        None => lost.push((cpu, who, q)),
                    }
                }
            }
            Mode::OneCpu => {
                let mut p0 = lab.lookup(0, 0, "A", a, TcpFlags::default());
                lab.dnat(0, 1_000, "A", &mut p0, &rules);
                let k0 = keep(&p0);
                let c0 = lab.confirm(0, 2_000, "A", p0);
                let mut p1 = lab.lookup(0, 2_200, "AAAA", aaaa, TcpFlags::default());
                lab.dnat(0, 3_200, "AAAA", &mut p1, &rules);
                let k1 = keep(&p1);
                let c1 = lab.confirm(0, 4_200, "AAAA", p1);
                for (who, q, k, c) in [("A", a, k0, c0), ("AAAA", aaaa, k1, c1)] {
                    match answer_tuple(&k, c.as_ref()) {
                        Some(r) => answered.push((0, who, r)),
                        None => lost.push((0, who, q)),
                    }
                }
            }
        }
        // The answers come back through the node: their lookup hits the reply tuple.
        let mut latency = 0;
        for (i, &(cpu, who, reply)) in answered.iter().enumerate() {
            let now = RTT + i as Nanos * 100_000;
            let _ = lab.lookup(cpu, now, &format!("answer to {who}"), reply, TcpFlags::default());
            latency = now;
        }
        // A lost query: glibc waits out its timeout and asks again.
        for (i, &(cpu, who, q)) in lost.iter().enumerate() {
            let now = RESOLV_TIMEOUT + i as Nanos * 1_000;
            let text = format!("{who}: no answer within the resolver's timeout ({}); glibc asks again", human(now));
            lab.note(now, Place::Client, "resolver", Event::Timeout { waited_ns: now }, text, None);
            let mut p = lab.lookup(cpu, now + 1_000, who, q, TcpFlags::default());
            lab.dnat(cpu, now + 2_000, who, &mut p, &rules);
            let k = keep(&p);
            let c = lab.confirm(cpu, now + 3_000, who, p);
            if let Some(r) = answer_tuple(&k, c.as_ref()) {
                latency = now + RTT;
                let _ = lab.lookup(cpu, latency, &format!("answer to {who}"), r, TcpFlags::default());
            }
        }
        let size = t.entries(At::new(0, latency)).iter().filter(|h| h.expires > latency).count();
        let summary = if lost.is_empty() {
            let left = if size == 1 { "1 entry".to_string() } else { format!("{size} entries") };
            format!("Both queries answered; the lookup took {}; {left} left in the table.", human(latency))
        } else {
            let who: Vec<&str> = lost.iter().map(|l| l.1).collect();
            format!(
                "{} lost in conntrack: the lookup took {} instead of {}.",
                who.join(" and "),
                human(latency),
                human(RTT + 100_000)
            )
        };
        let why = match mode {
            Mode::Parallel => clash_rule(profile),
            Mode::Reopen => "A and AAAA now have different source ports: two connections, two tuples, \
                             nothing to clash over, on any kernel."
                .to_string(),
            Mode::OneCpu => "On one CPU the stages of the two packets cannot interleave: A is confirmed before \
                             AAAA is looked up, so AAAA finds A's entry and never creates one."
                .to_string(),
            Mode::NodeLocalCache => unreachable!("returned above"),
        };
        lab.finish(name, fix, setup, Some(latency), summary, why)
    }

    /// What an answer needs to know of a packet once it is confirmed (the packet is moved into confirm).
    fn keep<'t>(p: &Pkt<'t>) -> Pkt<'t> {
        match p {
            Pkt::Hit(h) => Pkt::Hit(*h),
            _ => Pkt::Lost,
        }
    }
}

// ----- snat-port -----------------------------------------------------------------

mod snat {
    use super::*;

    const PODS: [Ipv4Addr; 3] =
        [Ipv4Addr::new(10, 244, 0, 5), Ipv4Addr::new(10, 244, 0, 6), Ipv4Addr::new(10, 244, 0, 7)];
    const NODE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const WEB: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 80);
    const SPORT: u16 = 40000;
    /// The first SYN retransmission (Linux since 3.1).
    const SYN_RTO: Nanos = 1_000_000_000;

    #[derive(Clone, Copy, PartialEq, Eq)]
    pub(super) enum Mode {
        /// One client on each CPU, both allocations before either confirm.
        Parallel,
        /// As `Parallel` with `--random-fully`.
        RandomFully,
        /// Both on CPU 0.
        OneCpu,
    }

    pub(super) fn runs(profile: &KernelProfile) -> (String, Vec<Run>) {
        let intro = "Two pods open connections to the same server from the same source port; MASQUERADE \
                     rewrites both to the node's address. The check whether a port is in use sees only \
                     confirmed entries, so two allocations on two CPUs do not see each other."
            .to_string();
        let k = &profile.name;
        let mut runs = vec![
            run(profile, Mode::Parallel, false, format!("race (kernel {k})"), false),
            run(profile, Mode::RandomFully, false, "fix: MASQUERADE --random-fully".into(), true),
            run(profile, Mode::OneCpu, false, "fix: both connections on one CPU".into(), true),
            run(profile, Mode::Parallel, true, format!("race, port {SPORT} already in use (kernel {k})"), false),
        ];
        if profile.nat.default_offset == PortOffset::Rover {
            let p = preset("6.1").expect("a preset");
            runs.push(run(
                &p,
                Mode::Parallel,
                true,
                format!("fix: kernel 6.1 (no shared rover), port {SPORT} in use"),
                true,
            ));
        }
        (intro, runs)
    }

    fn run(profile: &KernelProfile, mode: Mode, held: bool, name: String, fix: bool) -> Run {
        let t = table(profile);
        let mut lab = Lab::new(&t);
        let rule = Snat {
            to_source: vec![NODE.into()],
            range: None,
            flags: SnatFlags { random: false, random_fully: mode == Mode::RandomFully },
            allocator: Allocator::Kernel,
        };
        let syn = |pod: Ipv4Addr| Tuple::tcp(pod, SPORT, WEB, 80);
        let mut setup = format!(
            "Pods {} and {} both connect from port {SPORT} to {WEB}:80; MASQUERADE to {NODE}{}.",
            PODS[0],
            PODS[1],
            if mode == Mode::RandomFully { " with --random-fully" } else { "" }
        );
        setup.push_str(match mode {
            Mode::OneCpu => " Both SYNs are handled on CPU 0, one after the other.",
            _ => " Client 1's SYN is handled on CPU 0, client 2's on CPU 1.",
        });
        let mut t0 = 0;
        if held {
            setup.push_str(&format!(" Pod {} already holds {NODE}:{SPORT} toward the server.", PODS[2]));
            let mut p = lab.lookup(0, 0, "client 3", syn(PODS[2]), TcpFlags::SYN);
            lab.snat(0, 1_000, "client 3", &mut p, &rule);
            lab.confirm(0, 2_000, "client 3", p);
            t0 = ms(1);
        }
        let cpu1 = if mode == Mode::OneCpu { 0 } else { 1 };
        let (c0, c1, port0, port1);
        if mode == Mode::OneCpu {
            let mut p0 = lab.lookup(0, t0, "client 1", syn(PODS[0]), TcpFlags::SYN);
            port0 = lab.snat(0, t0 + 2_000, "client 1", &mut p0, &rule);
            c0 = lab.confirm(0, t0 + 3_000, "client 1", p0);
            let mut p1 = lab.lookup(0, t0 + 3_200, "client 2", syn(PODS[1]), TcpFlags::SYN);
            port1 = lab.snat(0, t0 + 5_200, "client 2", &mut p1, &rule);
            c1 = lab.confirm(0, t0 + 6_200, "client 2", p1);
        } else {
            let mut p0 = lab.lookup(0, t0, "client 1", syn(PODS[0]), TcpFlags::SYN);
            let mut p1 = lab.lookup(1, t0 + 200, "client 2", syn(PODS[1]), TcpFlags::SYN);
            port0 = lab.snat(0, t0 + 2_000, "client 1", &mut p0, &rule);
            port1 = lab.snat(1, t0 + 2_200, "client 2", &mut p1, &rule);
            c0 = lab.confirm(0, t0 + 3_000, "client 1", p0);
            c1 = lab.confirm(1, t0 + 3_300, "client 2", p1);
        }
        // Until the last SYN passed confirm, from the clients' first SYN.
        let mut latency = if mode == Mode::OneCpu { 6_200 } else { 3_300 };
        let mut retried = Vec::new();
        for (cpu, who, pod, c) in [(0, "client 1", PODS[0], &c0), (cpu1, "client 2", PODS[1], &c1)] {
            if !matches!(c, Some(c) if c.accepted()) {
                // The SYN was dropped: the client sends it again after its RTO.
                let now = t0 + SYN_RTO;
                let text = format!("{who}: no SYN-ACK within {}: the SYN is sent again", human(SYN_RTO));
                lab.note(now, Place::Client, who, Event::Timeout { waited_ns: SYN_RTO }, text, None);
                let mut p = lab.lookup(cpu, now + 1_000, who, syn(pod), TcpFlags::SYN);
                let port = lab.snat(cpu, now + 3_000, who, &mut p, &rule);
                let c = lab.confirm(cpu, now + 4_000, who, p);
                latency = SYN_RTO + 4_000;
                retried.push((who, port, c.is_some_and(|c| c.accepted())));
            }
        }
        let (p0, p1) = (port0.unwrap_or(0), port1.unwrap_or(0));
        let same = p0 == p1;
        let summary = if retried.is_empty() {
            format!("Both SYNs got through, from ports {p0} and {p1}.")
        } else {
            let r: Vec<String> = retried
                .iter()
                .map(|(who, port, ok)| {
                    format!(
                        "{}'s SYN was dropped; its retransmission {} from port {}",
                        cap(who),
                        if *ok { "got through" } else { "was dropped again" },
                        port.map_or("?".into(), |p| p.to_string())
                    )
                })
                .collect();
            let chose = if same {
                format!("Both allocations chose port {p0}")
            } else {
                format!("They chose ports {p0} and {p1}")
            };
            format!("{chose}. {}, {} after the first SYN.", r.join("; "), human(SYN_RTO))
        };
        let why = match mode {
            Mode::Parallel if same && held && profile.nat.default_offset == PortOffset::Rover => format!(
                "Port {SPORT} was taken, so both searched. Kernel {} starts the search at a shared rover that \
                 both CPUs read before either was confirmed: same start, same first free port, and the second \
                 confirm finds the reply tuple taken.",
                profile.name
            ),
            Mode::Parallel if same => format!(
                "Both allocations asked whether {NODE}:{p0} was in use before either connection was confirmed; \
                 unconfirmed entries are invisible to that check, so both chose it. TCP clashes are never \
                 resolved: the second SYN is dropped (the 5.0 rule that a probe ignores the same flow's entry \
                 does not apply: these are two flows)."
            ),
            Mode::Parallel => format!(
                "Kernel {} starts each search at a random offset instead of a shared rover, so the two \
                 racing searches chose different ports ({p0}, {p1}).",
                profile.name
            ),
            Mode::RandomFully => format!(
                "--random-fully never keeps the client's port and starts every search at a random port, so \
                 two racing allocations meet only by chance: here {p0} and {p1}{}.",
                if same { " (the same: a rare coincidence)" } else { "" }
            ),
            Mode::OneCpu => format!(
                "Client 1 was confirmed before client 2's allocation ran, so the check saw {NODE}:{p0} taken \
                 (the probe that found it counts `found`) and moved on to {p1}."
            ),
        };
        lab.finish(name, fix, setup, Some(latency), summary, why)
    }
}

// ----- tw-recycle ----------------------------------------------------------------

mod tw {
    use super::*;

    const HOSTS: [Ipv4Addr; 2] = [Ipv4Addr::new(192, 168, 0, 2), Ipv4Addr::new(192, 168, 0, 3)];
    const NAT_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
    const SERVER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
    /// Timestamp clock rate of the hosts.
    const TS_HZ: u32 = 1000;
    /// Host A booted 5 days ago, host B 1 day ago: A's clock is ahead.
    const UPTIME_S: [u32; 2] = [5 * 86_400, 86_400];
    const RTT: Nanos = 1_000_000;
    const SYN_RTO: Nanos = 1_000_000_000;
    /// `net.ipv4.tcp_syn_retries` default.
    const SYN_RETRIES: u32 = 6;

    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Clocks {
        PerHost,
        PerConnection,
    }

    pub(super) fn runs(profile: &KernelProfile) -> (String, Vec<Run>) {
        let intro = "A server with tcp_tw_recycle remembers, per peer address, the last TCP timestamp of a \
                     connection it closed, and drops SYNs from that address whose timestamp is behind. \
                     Hosts behind one NAT share an address but not a clock."
            .to_string();
        let k = &profile.name;
        let mut runs = vec![
            run(profile, true, Clocks::PerHost, format!("race (server kernel {k})"), false),
            run(profile, false, Clocks::PerHost, "fix: net.ipv4.tcp_tw_recycle = 0".into(), true),
            run(
                profile,
                true,
                Clocks::PerConnection,
                "what-if: clients offset timestamps per connection (4.10)".into(),
                true,
            ),
        ];
        if profile.tcp.tw_recycle_available {
            let p = preset("4.14").expect("a preset");
            runs.push(run(
                &p,
                true,
                Clocks::PerHost,
                "fix: server kernel 4.14 (no tcp_tw_recycle since 4.12)".into(),
                true,
            ));
        }
        (intro, runs)
    }

    fn run(profile: &KernelProfile, recycle: bool, clocks: Clocks, name: String, fix: bool) -> Run {
        let t = table(profile);
        let mut lab = Lab::new(&t);
        let cache_on = recycle && profile.tcp.tw_recycle_available;
        let mut cache = PeerCache::new(profile);
        let rule = Snat {
            to_source: vec![NAT_IP.into()],
            range: None,
            flags: SnatFlags::default(),
            allocator: Allocator::Kernel,
        };
        let offsets: [u32; 2] = match clocks {
            Clocks::PerHost => UPTIME_S.map(|s| s * TS_HZ),
            Clocks::PerConnection => [lab.rng.random(), lab.rng.random()],
        };
        let ts = |host: usize, now: Nanos| tsval(offsets[host], TS_HZ, now);
        let mut setup = format!(
            "Hosts A ({}) and B ({}) sit behind a NAT node that MASQUERADEs them to {NAT_IP}; both connect to \
             {SERVER}:80. ",
            HOSTS[0], HOSTS[1]
        );
        setup.push_str(&match clocks {
            Clocks::PerHost => format!(
                "Their timestamp clocks run at {TS_HZ} Hz from boot: A booted {} days ago, B {} day ago.",
                UPTIME_S[0] / 86_400,
                UPTIME_S[1] / 86_400
            ),
            Clocks::PerConnection => "Their kernels add a random offset per connection to the timestamps.".into(),
        });
        setup.push_str(&if cache_on {
            " The server has tcp_tw_recycle = 1.".to_string()
        } else if !profile.tcp.tw_recycle_available {
            format!(" Server kernel {} has no tcp_tw_recycle (removed in 4.12): no per-peer cache.", profile.name)
        } else {
            " The server has tcp_tw_recycle = 0: no per-peer cache.".to_string()
        });
        let a = Tuple::tcp(HOSTS[0], 50000, SERVER, 80);
        let b = Tuple::tcp(HOSTS[1], 50001, SERVER, 80);

        // Host A connects on CPU 0.
        let mut p = lab.lookup(0, 0, "host A", a, TcpFlags::SYN);
        lab.snat(0, 2_000, "host A", &mut p, &rule);
        let a_out = match lab.confirm(0, 3_000, "host A", p) {
            Some(Confirm::Inserted(h)) => h.reply.invert(),
            // Conntrack lost A's SYN (only with a tiny table): no connection to close.
            _ => {
                return lab.finish(name, fix, setup, None, "Host A's SYN was lost in conntrack.".into(), String::new())
            }
        };
        server_syn(&mut lab, &cache, cache_on, RTT / 2, "host A", a_out.src, ts(0, RTT / 2));
        let _ = lab.lookup(0, RTT, "server SYN-ACK", a_out.invert(), TcpFlags::SYN_ACK);
        let _ = lab.lookup(0, RTT + RTT / 2, "host A ACK", a, TcpFlags::ACK);
        // The server closes first (FIN), A answers FIN, the server's last ACK.
        let close = ms(100);
        let _ = lab.lookup(0, close, "server FIN", a_out.invert(), TcpFlags::FIN);
        let _ = lab.lookup(0, close + RTT / 2, "host A FIN", a, TcpFlags::FIN);
        let _ = lab.lookup(0, close + RTT, "server last ACK", a_out.invert(), TcpFlags::ACK);
        let closed = close + RTT;
        let cached = if cache_on {
            cache.remember(a_out.src, ts(0, closed), closed);
            cache.get(a_out.src).map(|c| c.0)
        } else {
            None
        };
        let text = match cached {
            Some(c) => format!("server: closed first, TIME_WAIT; caches TSval {c} of peer {}", a_out.src),
            None => "server: closed first, TIME_WAIT; no per-peer timestamp cache".to_string(),
        };
        lab.note(
            closed,
            Place::Server,
            "server",
            Event::ServerClose { peer: a_out.src.to_string(), cached_ts: cached },
            text,
            None,
        );

        // Host B connects on CPU 1, and retransmits while the server drops its SYN.
        let start = ms(200);
        let mut p = lab.lookup(1, start, "host B", b, TcpFlags::SYN);
        lab.snat(1, start + 2_000, "host B", &mut p, &rule);
        let mut b_out = match lab.confirm(1, start + 3_000, "host B", p) {
            Some(Confirm::Inserted(h)) => Some(h.reply.invert()),
            _ => None,
        };
        let mut attempt = 0;
        let mut now = start + RTT / 2;
        let mut server_drops = 0;
        let connected = loop {
            // A SYN conntrack dropped never reaches the server.
            if let Some(b_out) = b_out {
                if server_syn(&mut lab, &cache, cache_on, now, "host B", b_out.src, ts(1, now)) {
                    let _ = lab.lookup(1, now + RTT / 2, "server SYN-ACK", b_out.invert(), TcpFlags::SYN_ACK);
                    break Some(now + RTT / 2);
                }
                server_drops += 1;
            }
            if attempt == SYN_RETRIES {
                break None;
            }
            attempt += 1;
            let wait = SYN_RTO << (attempt - 1);
            let sent = start + SYN_RTO * ((1 << attempt) - 1);
            let text = format!("host B: no SYN-ACK within {}: SYN sent again (retry {attempt})", human(wait));
            lab.note(sent, Place::Client, "host B", Event::Timeout { waited_ns: wait }, text, None);
            let mut p = lab.lookup(1, sent + 1_000, "host B", b, TcpFlags::SYN);
            if let Pkt::New(_) = p {
                // The entry is gone (conntrack dropped the first SYN): a new one.
                lab.snat(1, sent + 2_000, "host B", &mut p, &rule);
                if let Some(Confirm::Inserted(h)) = lab.confirm(1, sent + 3_000, "host B", p) {
                    b_out = Some(h.reply.invert());
                }
            } else if let Pkt::Lost = p {
                b_out = None;
            }
            now = sent + RTT / 2;
        };
        let latency = connected.map(|c| c - start);
        let ct = match lab.conntrack_drops {
            0 => "conntrack dropped nothing".to_string(),
            n => format!("conntrack dropped {n}"),
        };
        let summary = match latency {
            Some(l) if attempt == 0 => format!("Host B connected at once ({}); {ct}.", human(l)),
            Some(l) => format!(
                "Host B's SYN was dropped by the server {server_drops} times; it connected after {}; {ct}.",
                human(l)
            ),
            None => format!("Host B's SYN was dropped by the server {server_drops} times, connect() fails; {ct}."),
        };
        let why = if !cache_on {
            "Without the per-peer cache the server checks timestamps only within a connection (PAWS \
             per connection), so the hosts' different clocks do not matter."
                .to_string()
        } else if clocks == Clocks::PerConnection {
            "With a random offset per connection, a SYN is behind the cached timestamp about half the time, \
             for any host, NAT or not: this is why 4.12 removed tcp_tw_recycle. Here the seed decided."
                .to_string()
        } else {
            format!(
                "B's clock is behind A's, so every SYN B sends is behind the timestamp cached for the shared \
                 address; the server accepts it only once the cache entry is older than {} (TCP_PAWS_MSL) \
                 or a newer timestamp replaces it.",
                human(profile.tcp.paws_msl.as_nanos() as Nanos)
            )
        };
        lab.finish(name, fix, setup, latency, summary, why)
    }

    /// The server receives a SYN; `true` if it answers.
    fn server_syn(
        lab: &mut Lab<'_>,
        cache: &PeerCache,
        on: bool,
        now: Nanos,
        who: &str,
        peer: IpAddr,
        ts: u32,
    ) -> bool {
        let (paws, answer) = if on {
            let check = cache.check(peer, Some(ts), now);
            let answer = if check == PawsCheck::Rejected { Answer::DroppedPaws } else { Answer::SynAck };
            (Some(check), answer)
        } else {
            (None, Answer::SynAck)
        };
        let cached = if on { cache.get(peer) } else { None };
        let (text, check) = match (paws, cached) {
            (Some(PawsCheck::Rejected), Some((c, stamp))) => (
                format!("server: SYN of {who} from {peer}, TSval {ts}: behind the cached {c}: dropped (PAWSPassive)"),
                Some(format!(
                    "PAWS: TSval {ts} is {} ticks behind the {c} cached {} ago for {peer}",
                    c.wrapping_sub(ts),
                    human(now - stamp)
                )),
            ),
            (Some(PawsCheck::Stale), Some((c, stamp))) => (
                format!(
                    "server: SYN of {who} from {peer}, TSval {ts}: cached {c} is {} old, too old to trust: SYN-ACK",
                    human(now - stamp)
                ),
                None,
            ),
            (Some(PawsCheck::NotBehind), Some((c, _))) => {
                (format!("server: SYN of {who} from {peer}, TSval {ts}: not behind the cached {c} (32-bit wrapping order): SYN-ACK"), None)
            }
            (Some(_), _) => (format!("server: SYN of {who} from {peer}, TSval {ts}: nothing cached: SYN-ACK"), None),
            (None, _) => (format!("server: SYN of {who} from {peer}: no per-peer cache: SYN-ACK"), None),
        };
        lab.note(now, Place::Server, "server", Event::Listener { answer, paws, tsval: Some(ts) }, text, check);
        if answer.dropped() {
            lab.lost += 1;
        }
        !answer.dropped()
    }
}

// ----- syn-backlog ---------------------------------------------------------------

mod backlog {
    use super::*;

    const SERVER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
    const RTT: Nanos = 5_000_000;
    const SYN_RTO: Nanos = 1_000_000_000;
    const SYN_RETRIES: u32 = 6;
    /// Gap between two SYNs of the burst.
    const GAP: Nanos = 1_000;
    const LISTEN_BACKLOG: u32 = 4096;

    pub(super) fn runs(profile: &KernelProfile) -> (String, Vec<Run>) {
        let intro = "A burst of new connections reaches one listener faster than handshakes complete. Conntrack \
                     accepts every SYN; the listener drops those its SYN queue has no room for, and their \
                     clients wait for the SYN retransmission."
            .to_string();
        let base = Listener {
            backlog: LISTEN_BACKLOG,
            somaxconn: profile.tcp.somaxconn,
            tcp_max_syn_backlog: profile.tcp.max_syn_backlog,
            tcp_syncookies: 0,
            accept_rate: 50_000.0,
        };
        let burst = profile.tcp.max_syn_backlog + profile.tcp.max_syn_backlog / 4;
        let k = &profile.name;
        let runs = vec![
            run(profile, &base, burst, format!("race (kernel {k})"), false),
            run(
                profile,
                &Listener { tcp_max_syn_backlog: 8096, ..base.clone() },
                burst,
                "fix: net.ipv4.tcp_max_syn_backlog = 8096".into(),
                true,
            ),
            run(
                profile,
                &Listener { tcp_syncookies: 1, ..base.clone() },
                burst,
                "fix: net.ipv4.tcp_syncookies = 1".into(),
                true,
            ),
            run(
                profile,
                &Listener { somaxconn: 4096, backlog: 4096, ..base.clone() },
                burst,
                if profile.tcp.somaxconn >= 4096 {
                    format!("fix: net.core.somaxconn = 4096, listen(4096) (already {k}'s default)")
                } else {
                    "fix: net.core.somaxconn = 4096, listen(4096)".into()
                },
                true,
            ),
        ];
        (intro, runs)
    }

    fn syn_of(i: u32) -> Tuple {
        let n = i + 2;
        Tuple::tcp(Ipv4Addr::new(100, 64 + (n >> 16) as u8, (n >> 8) as u8, n as u8), 40000, SERVER, 80)
    }

    /// A group of SYNs with the same fate, not yet recorded.
    struct Group {
        first: u32,
        last: u32,
        accepted: u32,
        dropped: u32,
        answer: Answer,
        at: Nanos,
    }

    fn run(profile: &KernelProfile, l: &Listener, burst: u32, name: String, fix: bool) -> Run {
        let t = table(profile);
        let mut lab = Lab::new(&t);
        let mut q = Queues::new(l);
        let setup = format!(
            "{burst} clients each send one SYN to {SERVER}:80, {} apart, within one round trip ({}). The \
             listener: listen({}), somaxconn {}, tcp_max_syn_backlog {}, tcp_syncookies {}; the \
             application accepts {} connections/s. No NAT: conntrack only tracks.",
            human(GAP),
            human(RTT),
            l.backlog,
            l.somaxconn,
            l.tcp_max_syn_backlog,
            l.tcp_syncookies,
            l.accept_rate
        );
        let mut pending: Vec<u32> = (0..burst).collect();
        let mut queued = vec![false; burst as usize];
        let mut done_at: Vec<Option<Nanos>> = vec![None; burst as usize];
        let mut attempt = 0;
        let mut first_dropped = 0;
        let mut first_ct_dropped = 0;
        let mut peak = 0;
        loop {
            let start = if attempt == 0 { 0 } else { SYN_RTO * ((1 << attempt) - 1) };
            if attempt > 0 {
                let text = format!(
                    "{} clients: no SYN-ACK within {}: SYN sent again (retry {attempt})",
                    pending.len(),
                    human(SYN_RTO << (attempt - 1))
                );
                lab.note(
                    start,
                    Place::Client,
                    "clients",
                    Event::Timeout { waited_ns: SYN_RTO << (attempt - 1) },
                    text,
                    None,
                );
            }
            let mut dropped = Vec::new();
            let mut answered = Vec::new();
            let mut group: Option<Group> = None;
            for (n, &i) in pending.iter().enumerate() {
                let now = start + n as Nanos * GAP;
                // The listener's answer decides the group; peek it on a copy so a group
                // is recorded before the next one's first SYN runs.
                let peek = Answer::of(q.clone().syn(now));
                if group.as_ref().is_some_and(|g| g.answer != peek) {
                    flush(&mut lab, group.take(), &q, attempt);
                }
                lab.quiet = true;
                let cpu = (i % 2) as usize;
                let p = lab.lookup(cpu, now, "client", syn_of(i), TcpFlags::SYN);
                let through = match p {
                    Pkt::New(_) => lab.confirm(cpu, now + 500, "client", p).is_some_and(|c| c.accepted()),
                    Pkt::Hit(_) => true,
                    Pkt::Lost => false,
                };
                lab.quiet = false;
                let g = group.get_or_insert(Group {
                    first: i + 1,
                    last: i + 1,
                    accepted: 0,
                    dropped: 0,
                    answer: peek,
                    at: now,
                });
                g.last = i + 1;
                g.at = now;
                if !through {
                    g.dropped += 1;
                    dropped.push(i);
                    continue;
                }
                g.accepted += 1;
                let a = Answer::of(q.syn(now));
                debug_assert_eq!(a, peek);
                if a.dropped() {
                    lab.lost += 1;
                    dropped.push(i);
                } else {
                    queued[i as usize] = a == Answer::SynAck;
                    answered.push((i, now));
                    peak = peak.max(q.syn_queue());
                }
            }
            flush(&mut lab, group.take(), &q, attempt);
            if attempt == 0 {
                first_dropped = dropped.len();
                first_ct_dropped = lab.conntrack_drops as usize;
            }
            // The answered handshakes complete one round trip later.
            if !answered.is_empty() {
                lab.quiet = true;
                let mut last = 0;
                for &(i, sent) in &answered {
                    let cpu = (i % 2) as usize;
                    let tuple = syn_of(i);
                    let _ = lab.lookup(cpu, sent + RTT / 2, "server", tuple.invert(), TcpFlags::SYN_ACK);
                    last = sent + RTT;
                    let _ = lab.lookup(cpu, last, "client", tuple, TcpFlags::ACK);
                    q.established(last, std::mem::take(&mut queued[i as usize]));
                    done_at[i as usize] = Some(last);
                }
                lab.quiet = false;
                let event = Event::Established {
                    count: answered.len() as u32,
                    syn_queue: q.syn_queue(),
                    accept_queue: q.accept_queue(),
                };
                let text = format!(
                    "{} handshakes complete (SYN-ACK, ACK through conntrack); SYN queue {}, accept queue {}",
                    answered.len(),
                    q.syn_queue(),
                    q.accept_queue()
                );
                lab.note(last, Place::Server, "server", event, text, None);
            }
            if dropped.is_empty() || attempt == SYN_RETRIES {
                pending = dropped;
                break;
            }
            pending = dropped;
            attempt += 1;
        }
        let latency = if pending.is_empty() { done_at.iter().flatten().max().copied() } else { None };
        let late = done_at.iter().flatten().filter(|&&d| d > RTT + Nanos::from(burst) * GAP).count();
        let summary = if first_dropped == 0 {
            format!(
                "All {burst} SYNs answered at once; every connection was up within {}.",
                human(latency.unwrap_or(0))
            )
        } else {
            let totals = t.stats().total();
            let ct = match lab.conntrack_drops {
                0 => format!(
                    "Conntrack dropped none: drop {} and insert_failed {}, insert {}.",
                    totals.get(Stat::Drop),
                    totals.get(Stat::InsertFailed),
                    totals.get(Stat::Insert)
                ),
                n => format!("Conntrack dropped {n}."),
            };
            format!(
                "The listener dropped {} of {burst} first SYNs; {late} connections waited for a \
                 retransmission{}. {ct}",
                first_dropped - first_ct_dropped,
                if pending.is_empty() { String::new() } else { format!(", {} never connected", pending.len()) }
            )
        };
        let limit = q.limit();
        let why = if l.tcp_syncookies != 0 {
            format!(
                "With syncookies a full SYN queue (limit {limit}) answers with a cookie instead of dropping, \
                 and the tcp_max_syn_backlog rule does not apply."
            )
        } else if first_dropped == 0 {
            format!(
                "The {burst} requests of one round trip fit: the SYN queue peaked at {peak}, below the \
                 socket's limit min(listen backlog, somaxconn) = {limit}, with more than a quarter of \
                 tcp_max_syn_backlog ({}) still free.",
                l.tcp_max_syn_backlog
            )
        } else {
            format!(
                "Without syncookies a SYN is dropped when the SYN queue is at min(listen backlog, somaxconn) \
                 = {limit}, or when less than a quarter of tcp_max_syn_backlog ({}) is free; here the queue \
                 stopped at {peak}. Those drops are the listener's, not conntrack's.",
                l.tcp_max_syn_backlog
            )
        };
        lab.finish(name, fix, setup, latency, summary, why)
    }

    fn flush(lab: &mut Lab<'_>, group: Option<Group>, q: &Queues, attempt: u32) {
        let Some(g) = group else { return };
        let what = match g.answer {
            Answer::SynAck => "request queued, SYN-ACK".to_string(),
            Answer::Cookie => "SYN queue full: SYN-ACK with a syncookie, nothing queued".to_string(),
            Answer::DroppedSynQueue => "no room in the SYN queue: dropped".to_string(),
            Answer::DroppedAcceptQueue => "accept queue full: dropped".to_string(),
            Answer::DroppedPaws => "dropped by PAWS".to_string(),
        };
        let syns = if g.first == g.last { format!("SYN {}", g.first) } else { format!("SYNs {}-{}", g.first, g.last) };
        let again = if attempt > 0 { " (again)" } else { "" };
        let ct = if g.dropped == 0 && attempt > 0 {
            "conntrack: their entries found".to_string()
        } else if g.dropped == 0 {
            "conntrack: new entries confirmed".to_string()
        } else {
            format!("conntrack: {} confirmed, {} dropped", g.accepted, g.dropped)
        };
        let text = format!(
            "{syns}{again}, CPUs 0 and 1: {ct}; listener: {what} (SYN queue {}, accept queue {})",
            q.syn_queue(),
            q.accept_queue()
        );
        let max = q.max_syn_backlog() as usize;
        let check = g.answer.dropped().then(|| match g.answer {
            Answer::DroppedSynQueue if q.syn_queue() >= q.limit() => format!(
                "SYN queue below the socket's limit: it holds {}, min(backlog, somaxconn) = {}",
                q.syn_queue(),
                q.limit()
            ),
            Answer::DroppedSynQueue => format!(
                "without syncookies, a quarter of tcp_max_syn_backlog free in the SYN queue: \
                 {max} - {} = {} free, less than {max}/4 = {}",
                q.syn_queue(),
                max.saturating_sub(q.syn_queue()),
                max / 4
            ),
            _ => format!("accept queue within the socket's limit: it holds {}, limit {}", q.accept_queue(), q.limit()),
        });
        let event = Event::Syns {
            first: g.first,
            last: g.last,
            conntrack_accepted: g.accepted,
            conntrack_dropped: g.dropped,
            answer: g.answer,
            syn_queue: q.syn_queue(),
            accept_queue: q.accept_queue(),
        };
        lab.note(g.at, Place::Node, "clients", event, text, check);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_race_has_a_default_kernel_preset_and_a_name_round_trip() {
        for r in Race::ALL {
            assert!(preset(r.default_kernel()).is_some(), "{}", r.name());
            assert_eq!(Race::from_name(r.name()), Some(r));
        }
        assert_eq!(Race::from_name("dns"), None);
    }

    #[test]
    fn counter_deltas_list_only_what_moved() {
        let mut a = CpuCounters::default();
        let mut b = CpuCounters::default();
        a.0[3] = 2;
        b.0[3] = 3;
        b.0[4] = 1;
        let d = delta(&b, &a);
        assert_eq!(d.into_iter().collect::<Vec<_>>(), vec![("drop", 1), ("insert_failed", 1)]);
    }

    #[test]
    fn step_deltas_add_up_to_the_final_counters_and_tables_match_the_engine() {
        for race in Race::ALL {
            for k in [race.default_kernel(), "3.10", "6.12"] {
                let e = explain(race, &preset(k).unwrap());
                for r in &e.runs {
                    let mut sum: BTreeMap<&str, u64> = BTreeMap::new();
                    for s in &r.steps {
                        for (n, v) in &s.counters {
                            *sum.entry(n).or_default() += v;
                        }
                        assert!(s.table.len() <= TABLE_SHOWN && s.table.len() <= s.table_size);
                        assert!(s.counters.values().all(|&v| v > 0), "only counters that moved");
                    }
                    assert_eq!(sum, r.outcome.counters, "{} / {} / {k}", race.name(), r.name);
                    // Every packet conntrack dropped is a dropped confirm or a full table.
                    let dropped = r
                        .steps
                        .iter()
                        .filter(|s| {
                            matches!(
                                s.event,
                                Event::Confirm { result: ConfirmResult::Dropped, .. } | Event::TableFull { .. }
                            )
                        })
                        .count() as u32;
                    let in_groups: u32 = r
                        .steps
                        .iter()
                        .map(
                            |s| if let Event::Syns { conntrack_dropped, .. } = s.event { conntrack_dropped } else { 0 },
                        )
                        .sum();
                    assert_eq!(dropped + in_groups, r.outcome.conntrack_drops, "{} / {}", race.name(), r.name);
                    assert!(r.outcome.conntrack_drops <= r.outcome.lost);
                }
            }
        }
    }

    #[test]
    fn a_tiny_table_drops_at_new_conn_instead_of_panicking() {
        let mut p = preset("4.19").unwrap();
        p.conntrack.max = 1;
        for race in Race::ALL {
            let e = explain(race, &p);
            assert!(e.runs.iter().any(|r| r.outcome.conntrack_drops > 0), "{}", race.name());
        }
    }

    #[test]
    fn human_times() {
        assert_eq!(human(5_000_000_000), "5 s");
        assert_eq!(human(1_250_000_000), "1.250 s");
        assert_eq!(human(300_000), "300.0 us");
        assert_eq!(human(1_500_000), "1.500 ms");
        assert_eq!(human(999_999_900), "1.000 s");
        assert_eq!(human(secs(7200)), "2.0 h");
    }
}
