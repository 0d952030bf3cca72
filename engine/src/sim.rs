//! The deterministic simulator: virtual time, virtual CPUs, the real table.
//!
//! Packets enter at a virtual time, a [`Steering`] policy picks the CPU that
//! processes them, and each CPU handles one packet at a time through the
//! conntrack path: lookup, DNAT, SNAT, confirm, each stage taking a
//! configured time with seeded jitter. The table operations run at the end
//! of their stage, in virtual-time order, on the same [`Conntrack`] every
//! executor uses, so a race happens when two CPUs' stages interleave — not
//! because a formula says so. Two packets on one CPU are serialized and
//! never race, as on a real kernel where one softirq run carries a packet
//! from PREROUTING to POSTROUTING before the next.
//!
//! Everything random (jitter, steering, NAT choices, the chain limit) draws
//! from one seeded generator; ties in time are broken by the order events
//! were scheduled. The same seed gives the same run, event for event.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use serde::{Deserialize, Serialize};

use crate::nat::dnat::Dnat;
use crate::nat::snat::{Rovers, Snat};
use crate::table::{Confirm, Conntrack, Unconfirmed, Update};
use crate::{At, Hit, Nanos, TcpFlags, Tuple};

/// Which CPU processes a packet.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Steering {
    /// The CPU of the sending thread. One thread's packets are serialized:
    /// a single-threaded client sending A and AAAA with `sendmmsg` through a
    /// veth never races (observable on a real kernel).
    Sender,
    /// A hash of the tuple (RSS, RPS): packets of one flow always share a CPU.
    FlowHash,
    /// Any CPU, uniformly (softirq deferral to ksoftirqd, task migration,
    /// several sender threads sharing one socket).
    Random,
    /// The first packet of a burst on the sender's CPU; each later packet of
    /// the burst on another CPU with probability `split`, else the same one.
    Spread {
        /// Probability that a later packet of a burst lands on another CPU.
        split: f64,
    },
}

/// How long each stage of the conntrack path takes (virtual ns) before its
/// table operation runs. Each is scaled by `1 + jitter * u`, `u` uniform in
/// `[-1, 1]`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageTimes {
    /// Receive path up to the conntrack lookup.
    pub lookup: Nanos,
    /// Lookup to DNAT (PREROUTING nat).
    pub dnat: Nanos,
    /// DNAT to SNAT: routing, filter, POSTROUTING.
    pub snat: Nanos,
    /// SNAT to confirm.
    pub confirm: Nanos,
    /// Relative jitter, 0 to 1.
    pub jitter: f64,
}

impl Default for StageTimes {
    /// A few microseconds from lookup to confirm: the stack traversal that
    /// forms the race window.
    fn default() -> Self {
        Self { lookup: 1_000, dnat: 1_000, snat: 2_000, confirm: 1_000, jitter: 0.5 }
    }
}

/// Simulator settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    /// Virtual CPUs.
    pub cpus: usize,
    /// Stage durations.
    pub stages: StageTimes,
    /// CPU selection.
    pub steering: Steering,
    /// The seed of the one random generator.
    pub seed: u64,
    /// Run a GC step this often (virtual ns); 0 never.
    pub gc_interval: Nanos,
    /// Buckets a GC step scans.
    pub gc_buckets: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            cpus: 2,
            stages: StageTimes::default(),
            steering: Steering::Random,
            seed: 1,
            gc_interval: 1_000_000_000,
            gc_buckets: 1024,
        }
    }
}

/// The NAT rules a packet traverses (a topology registers them up front).
#[derive(Debug, Default)]
pub struct NatRules {
    /// DNAT in PREROUTING/OUTPUT.
    pub dnat: Option<Dnat>,
    /// SNAT/MASQUERADE in POSTROUTING.
    pub snat: Option<Snat>,
}

/// Index of a registered [`NatRules`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NatId(u16);

/// A packet a workload sends.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Packet {
    /// Its tuple as it enters the hooks.
    pub tuple: Tuple,
    /// TCP flags (ignored for UDP/ICMP).
    pub flags: TcpFlags,
    /// The CPU of the sending thread (for [`Steering::Sender`]).
    pub sender_cpu: usize,
    /// Packets sent together (one `sendmmsg`) share a burst id.
    pub burst: Option<u64>,
    /// The NAT rules it traverses, if any.
    pub nat: Option<NatId>,
    /// Exempt from conntrack (a NOTRACK rule in the raw table).
    pub notrack: bool,
    /// The workload's own identifier, handed back on delivery.
    pub tag: u64,
}

impl Packet {
    /// A tracked packet with no NAT.
    pub fn new(tuple: Tuple, tag: u64) -> Self {
        Self { tuple, flags: TcpFlags::default(), sender_cpu: 0, burst: None, nat: None, notrack: false, tag }
    }
}

/// What conntrack did with a packet.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Verdict {
    /// It belongs to a confirmed connection, which was updated.
    Established(Hit, Update),
    /// It started a new connection; confirm decided.
    New(Confirm),
    /// No room for a new connection: dropped.
    TableFull,
    /// Not tracked (NOTRACK).
    Untracked,
}

impl Verdict {
    /// Whether the packet continues on its way.
    pub fn accepted(&self) -> bool {
        match self {
            Verdict::Established(_, u) => !matches!(u, Update::Gone),
            Verdict::New(c) => c.accepted(),
            Verdict::TableFull => false,
            Verdict::Untracked => true,
        }
    }
}

/// A packet that finished the conntrack path.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Delivered {
    /// The workload's tag.
    pub tag: u64,
    /// The CPU that processed it.
    pub cpu: usize,
    /// What conntrack did.
    pub verdict: Verdict,
    /// The tuple as it leaves, NAT applied (meaningful when accepted).
    pub out: Tuple,
}

/// What a workload can do when called back.
pub struct Cx<'a> {
    now: Nanos,
    rng: &'a mut Pcg64Mcg,
    cmds: &'a mut Vec<Cmd>,
}

enum Cmd {
    Send(Nanos, Packet),
    Timer(Nanos, u64),
}

impl Cx<'_> {
    /// The current virtual time.
    pub fn now(&self) -> Nanos {
        self.now
    }
    /// The simulation's random generator.
    pub fn rng(&mut self) -> &mut Pcg64Mcg {
        self.rng
    }
    /// Send a packet into the hooks at time `at` (not before now).
    pub fn send(&mut self, at: Nanos, packet: Packet) {
        self.cmds.push(Cmd::Send(at.max(self.now), packet));
    }
    /// Be called back with `token` at time `at`.
    pub fn timer(&mut self, at: Nanos, token: u64) {
        self.cmds.push(Cmd::Timer(at.max(self.now), token));
    }
}

/// Something that sends packets and reacts to what conntrack did with them.
pub trait Workload {
    /// Called once at time 0.
    fn start(&mut self, cx: &mut Cx<'_>);
    /// A packet finished the conntrack path.
    fn delivered(&mut self, cx: &mut Cx<'_>, d: Delivered);
    /// A timer set with [`Cx::timer`] fired.
    fn timer(&mut self, cx: &mut Cx<'_>, token: u64);
}

/// Totals of one run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RunStats {
    /// Packets that went through the conntrack path.
    pub packets: u64,
    /// Events processed.
    pub events: u64,
    /// Virtual time at the end.
    pub end: Nanos,
    /// Packets that found their CPU busy and waited.
    pub queued: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Arrive(u32),
    Stage(u32),
    Timer(u64),
    Gc,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Lookup,
    Dnat,
    Snat,
    Confirm,
}

struct InFlight<'t> {
    pkt: Packet,
    cpu: usize,
    stage: Stage,
    ct: Option<Unconfirmed<'t>>,
}

#[derive(Default)]
struct Cpu {
    current: Option<u32>,
    queue: VecDeque<u32>,
}

/// A simulation over one table.
pub struct Sim<'t> {
    table: &'t Conntrack,
    cfg: SimConfig,
    rules: Vec<NatRules>,
    rovers: Rovers,
    nat_secret: u64,
    rng: Pcg64Mcg,
    heap: BinaryHeap<Reverse<(Nanos, u64, Ev)>>,
    seq: u64,
    now: Nanos,
    cpus: Vec<Cpu>,
    flights: Vec<Option<InFlight<'t>>>,
    free: Vec<u32>,
    bursts: Vec<(u64, usize)>,
    cmds: Vec<Cmd>,
    stats: RunStats,
}

impl<'t> Sim<'t> {
    /// A simulation driving `table`. The table should count at least `cfg.cpus` CPUs.
    pub fn new(table: &'t Conntrack, cfg: SimConfig) -> Self {
        let mut rng = Pcg64Mcg::seed_from_u64(cfg.seed);
        let nat_secret = rng.random();
        let cpus = (0..cfg.cpus.max(1)).map(|_| Cpu::default()).collect();
        Self {
            table,
            rules: Vec::new(),
            rovers: Rovers::default(),
            nat_secret,
            rng,
            heap: BinaryHeap::new(),
            seq: 0,
            now: 0,
            cpus,
            flights: Vec::new(),
            free: Vec::new(),
            bursts: Vec::new(),
            cmds: Vec::new(),
            stats: RunStats::default(),
            cfg,
        }
    }

    /// Register NAT rules; packets name them by the returned id.
    pub fn add_nat(&mut self, rules: NatRules) -> NatId {
        self.rules.push(rules);
        NatId((self.rules.len() - 1) as u16)
    }

    /// The table being driven.
    pub fn table(&self) -> &'t Conntrack {
        self.table
    }

    fn push(&mut self, at: Nanos, ev: Ev) {
        self.seq += 1;
        self.heap.push(Reverse((at, self.seq, ev)));
    }

    /// Run `w` until no event is left or virtual time passes `until`.
    pub fn run<W: Workload>(&mut self, w: &mut W, until: Nanos) -> RunStats {
        self.with_cx(|cx| w.start(cx));
        if self.cfg.gc_interval > 0 {
            self.push(self.cfg.gc_interval, Ev::Gc);
        }
        while let Some(Reverse((at, _, ev))) = self.heap.pop() {
            if at > until {
                self.heap.push(Reverse((at, 0, ev)));
                break;
            }
            self.now = at;
            self.stats.events += 1;
            match ev {
                Ev::Arrive(id) => self.arrive(id),
                Ev::Stage(cpu) => {
                    if let Some(d) = self.stage(cpu as usize) {
                        self.with_cx(|cx| w.delivered(cx, d));
                    }
                }
                Ev::Timer(token) => self.with_cx(|cx| w.timer(cx, token)),
                Ev::Gc => {
                    // The GC worker is a kworker, not a softirq: it does not occupy a packet CPU.
                    self.table.gc(At::new(0, self.now), self.cfg.gc_buckets);
                    // Keep ticking only while something else is scheduled.
                    if !self.heap.is_empty() {
                        self.push(self.now + self.cfg.gc_interval, Ev::Gc);
                    }
                }
            }
        }
        self.stats.end = self.now;
        self.stats
    }

    fn with_cx(&mut self, f: impl FnOnce(&mut Cx<'_>)) {
        let mut cmds = std::mem::take(&mut self.cmds);
        f(&mut Cx { now: self.now, rng: &mut self.rng, cmds: &mut cmds });
        for cmd in cmds.drain(..) {
            match cmd {
                Cmd::Send(at, pkt) => {
                    let id = match self.free.pop() {
                        Some(id) => id,
                        None => {
                            self.flights.push(None);
                            (self.flights.len() - 1) as u32
                        }
                    };
                    self.flights[id as usize] = Some(InFlight { pkt, cpu: 0, stage: Stage::Lookup, ct: None });
                    self.push(at, Ev::Arrive(id));
                }
                Cmd::Timer(at, token) => self.push(at, Ev::Timer(token)),
            }
        }
        self.cmds = cmds;
    }

    fn steer(&mut self, pkt: &Packet) -> usize {
        let n = self.cpus.len();
        match self.cfg.steering {
            Steering::Sender => pkt.sender_cpu % n,
            Steering::FlowHash => {
                // Symmetric in the two endpoints, as RSS with a symmetric key is.
                let t = &pkt.tuple;
                let mut h = 0xcbf2_9ce4_8422_2325u64;
                for x in [ip_bits(&t.src) ^ ip_bits(&t.dst), u64::from(t.sport ^ t.dport), u64::from(t.proto.number())]
                {
                    h = (h ^ x).wrapping_mul(0x0100_0000_01b3);
                }
                (h % n as u64) as usize
            }
            Steering::Random => self.rng.random_range(0..n),
            Steering::Spread { split } => {
                let home = pkt.sender_cpu % n;
                let Some(burst) = pkt.burst else { return home };
                // Bursts are short-lived: keep the last few.
                if let Some(&(_, first)) = self.bursts.iter().find(|(b, _)| *b == burst) {
                    if n > 1 && self.rng.random_bool(split.clamp(0.0, 1.0)) {
                        let other = self.rng.random_range(0..n - 1);
                        return if other >= first { other + 1 } else { other };
                    }
                    return first;
                }
                if self.bursts.len() >= 64 {
                    self.bursts.remove(0);
                }
                self.bursts.push((burst, home));
                home
            }
        }
    }

    fn arrive(&mut self, id: u32) {
        let pkt = self.flights[id as usize].as_ref().expect("in flight").pkt;
        let cpu = self.steer(&pkt);
        self.flights[id as usize].as_mut().expect("in flight").cpu = cpu;
        let c = &mut self.cpus[cpu];
        if c.current.is_none() {
            c.current = Some(id);
            self.schedule_stage(cpu, Stage::Lookup);
        } else {
            c.queue.push_back(id);
            self.stats.queued += 1;
        }
    }

    fn jittered(&mut self, d: Nanos) -> Nanos {
        let j = self.cfg.stages.jitter;
        if j <= 0.0 || d == 0 {
            return d;
        }
        let u: f64 = self.rng.random_range(-1.0..=1.0);
        (d as f64 * (1.0 + j.min(1.0) * u)).round() as Nanos
    }

    fn schedule_stage(&mut self, cpu: usize, stage: Stage) {
        let id = self.cpus[cpu].current.expect("busy cpu");
        self.flights[id as usize].as_mut().expect("in flight").stage = stage;
        let s = self.cfg.stages;
        let d = match stage {
            Stage::Lookup => s.lookup,
            Stage::Dnat => s.dnat,
            Stage::Snat => s.snat,
            Stage::Confirm => s.confirm,
        };
        let d = self.jittered(d);
        self.push(self.now + d, Ev::Stage(cpu as u32));
    }

    /// Run the current packet's stage on `cpu`; `Some` when the packet is done.
    fn stage(&mut self, cpu: usize) -> Option<Delivered> {
        let id = self.cpus[cpu].current.expect("stage on an idle cpu");
        let at = At::new(cpu, self.now);
        let table = self.table;
        let f = self.flights[id as usize].as_mut().expect("in flight");
        let pkt = f.pkt;
        let done = match f.stage {
            Stage::Lookup => {
                if pkt.notrack {
                    Some((Verdict::Untracked, pkt.tuple))
                } else if let Some(hit) = table.lookup(&pkt.tuple, at) {
                    let update = table.update(&hit, pkt.flags, at);
                    let out = match hit.dir {
                        crate::Dir::Original => hit.reply.invert(),
                        crate::Dir::Reply => hit.orig.invert(),
                    };
                    Some((Verdict::Established(hit, update), out))
                } else {
                    match table.new_conn(pkt.tuple, pkt.flags, at) {
                        Ok(ct) => {
                            f.ct = Some(ct);
                            None
                        }
                        Err(_) => Some((Verdict::TableFull, pkt.tuple)),
                    }
                }
            }
            Stage::Dnat => {
                if let (Some(rules), Some(ct)) = (pkt.nat.map(|n| &self.rules[n.0 as usize]), f.ct.as_mut()) {
                    if let Some(dnat) = &rules.dnat {
                        let i = dnat.select(ct.orig(), &mut self.rng);
                        let (addr, port) = dnat.translate(ct.orig(), i);
                        ct.dnat(addr, port);
                    }
                }
                None
            }
            Stage::Snat => {
                if let (Some(rules), Some(ct)) = (pkt.nat.map(|n| &self.rules[n.0 as usize]), f.ct.as_mut()) {
                    if let Some(snat) = &rules.snat {
                        let (orig, reply) = (*ct.orig(), *ct.reply());
                        let o = snat.allocate(
                            &orig,
                            &reply,
                            &table.profile().nat,
                            &self.rovers,
                            self.nat_secret,
                            cpu,
                            self.cpus.len(),
                            &mut self.rng,
                            |cand: &Tuple, harder: bool| table.tuple_taken(cand, &orig, harder, at),
                        );
                        ct.snat(o.addr, o.port);
                    }
                }
                None
            }
            Stage::Confirm => {
                let ct = f.ct.take().expect("confirm without an entry");
                let c = table.confirm(ct, at, &mut self.rng);
                let out = match &c {
                    Confirm::Inserted(h) | Confirm::Merged(h) | Confirm::NatClash(h) => h.reply.invert(),
                    Confirm::Dropped(_) => pkt.tuple,
                };
                Some((Verdict::New(c), out))
            }
        };
        let Some((verdict, out)) = done else {
            let next = match self.flights[id as usize].as_ref().expect("in flight").stage {
                Stage::Lookup => Stage::Dnat,
                Stage::Dnat => Stage::Snat,
                Stage::Snat | Stage::Confirm => Stage::Confirm,
            };
            self.schedule_stage(cpu, next);
            return None;
        };
        self.flights[id as usize] = None;
        self.free.push(id);
        self.stats.packets += 1;
        let c = &mut self.cpus[cpu];
        c.current = c.queue.pop_front();
        if c.current.is_some() {
            self.schedule_stage(cpu, Stage::Lookup);
        }
        Some(Delivered { tag: pkt.tag, cpu, verdict, out })
    }
}

fn ip_bits(ip: &std::net::IpAddr) -> u64 {
    match ip {
        std::net::IpAddr::V4(a) => u64::from(u32::from(*a)),
        std::net::IpAddr::V6(a) => {
            let x = u128::from(*a);
            (x >> 64) as u64 ^ x as u64
        }
    }
}
