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
use std::collections::{BTreeMap, BinaryHeap, VecDeque};

use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use serde::{Deserialize, Serialize};

use crate::draw::UniformU32;
use crate::nat::dnat::Dnat;
use crate::nat::snat::{Rovers, Snat, SnatOutcome};
use crate::table::{Confirm, Conntrack, DropReason, Unconfirmed, Update};
use crate::{At, Nanos, TcpFlags, Tuple};

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

/// What conntrack did with a packet: the outcome only. The entry itself
/// stays in the table (a workload that needs it looks it up); leaving its
/// copy out keeps the value every finished packet carries small.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Verdict {
    /// It belongs to a confirmed connection, which was updated.
    Established(Update),
    /// It started a new connection; confirm decided.
    New(Confirmed),
    /// No room for a new connection: dropped.
    TableFull,
    /// Not tracked (NOTRACK).
    Untracked,
}

impl Verdict {
    /// Whether the packet continues on its way.
    pub fn accepted(&self) -> bool {
        match self {
            Verdict::Established(u) => !matches!(u, Update::Gone),
            Verdict::New(c) => c.accepted(),
            Verdict::TableFull => false,
            Verdict::Untracked => true,
        }
    }
}

/// How [`Conntrack::confirm`] ended for a new connection: [`Confirm`]
/// without the entry's copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Confirmed {
    /// Inserted: both tuples are now in the table.
    Inserted,
    /// Clash resolved by merging into the existing connection.
    Merged,
    /// Clash resolved by inserting the loser reply-only (5.6+ NAT_CLASH).
    NatClash,
    /// The packet is dropped.
    Dropped(DropReason),
}

impl Confirmed {
    /// Whether the packet continues (everything but [`Confirmed::Dropped`]).
    pub fn accepted(&self) -> bool {
        !matches!(self, Confirmed::Dropped(_))
    }
}

impl From<&Confirm> for Confirmed {
    fn from(c: &Confirm) -> Self {
        match c {
            Confirm::Inserted(_) => Confirmed::Inserted,
            Confirm::Merged(_) => Confirmed::Merged,
            Confirm::NatClash(_) => Confirmed::NatClash,
            Confirm::Dropped(r) => Confirmed::Dropped(*r),
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
    /// For a new connection through SNAT: what the port search did.
    pub snat: Option<SnatDone>,
}

/// An SNAT port allocation, as the simulator saw it happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnatDone {
    /// What the allocator chose and how many ports it probed.
    pub outcome: SnatOutcome,
    /// Allocations on other CPUs that had chosen a port but not yet
    /// confirmed when this one searched: the ones it could not see.
    pub racing: u32,
}

/// What a workload can do when called back.
pub struct Cx<'a> {
    now: Nanos,
    rng: &'a mut Pcg64Mcg,
    events: &'a mut Events,
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
        self.events.send(at.max(self.now), packet);
    }
    /// Be called back with `token` at time `at`.
    pub fn timer(&mut self, at: Nanos, token: u64) {
        self.events.push(at.max(self.now), Ev::Timer(token));
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
#[repr(usize)]
enum Stage {
    Lookup,
    Dnat,
    Snat,
    Confirm,
}

/// Where a packet is on its CPU, and the connection it created.
struct Flight<'t> {
    stage: Stage,
    ct: Option<Unconfirmed<'t>>,
    snat: Option<SnatDone>,
}

/// Every pending event, and the packets they refer to.
///
/// Events come in a few streams whose times only grow: answers a fixed
/// latency after their queries, one stage after another on each CPU,
/// timeouts a fixed interval after their tries, arrivals one gap after the
/// last. The main streams keep to FIFO lanes ([`Lanes`]), where a push and a
/// pop cost a few instructions; what fits no lane goes to a heap (packet
/// events) or to the slotted [`TimerQueue`] (timers). A pop takes the earliest
/// head of all of them, so the order stays exactly (time, scheduling order).
struct Events {
    /// Packet events in increasing runs. Packed keys (see [`pack`]).
    lanes: Lanes<u128>,
    /// Packet events that fit no lane.
    heap: BinaryHeap<Reverse<u128>>,
    /// Workload timers in increasing runs.
    timer_lanes: Lanes<Timer>,
    /// Timers that fit no lane (resolver timeouts and the like: many, far
    /// ahead), kept apart so packet events never sift through them.
    timers: TimerQueue,
    /// The earliest timer of `timer_lanes` and `timers`, cached: every pop
    /// compares with it, and timers change far less often than packet events.
    /// Its key is packed like a packet event's (see [`timer_key`]), `u128::MAX`
    /// when there is no timer.
    timer_first: (u128, TimerAt),
    /// The lane each stream last went to, tried first: arrivals, each CPU's
    /// stages, timers. A miss costs the full scan.
    arrive_lane: usize,
    stage_lane: Vec<u8>,
    timer_lane: usize,
    seq: u64,
    /// Packets in flight, by id; ids are reused through `free`.
    packets: Vec<Packet>,
    free: Vec<u32>,
}

impl Default for Events {
    fn default() -> Self {
        Self {
            lanes: Lanes::default(),
            heap: BinaryHeap::new(),
            timer_lanes: Lanes::default(),
            timers: TimerQueue::default(),
            timer_first: (u128::MAX, TimerAt::Queue),
            arrive_lane: 0,
            stage_lane: Vec::new(),
            timer_lane: 0,
            seq: 0,
            packets: Vec::new(),
            free: Vec::new(),
        }
    }
}

/// Where the earliest timer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TimerAt {
    Lane(usize),
    Queue,
}

impl Events {
    #[inline(always)]
    fn push(&mut self, at: Nanos, ev: Ev) {
        self.seq += 1;
        self.requeue(at, self.seq, ev);
    }

    #[inline(always)]
    fn requeue(&mut self, at: Nanos, seq: u64, ev: Ev) {
        match ev {
            Ev::Timer(token) => {
                let lane = self.timer_lanes.push((at, seq, token), self.timer_lane);
                match lane {
                    Some(i) => self.timer_lane = i,
                    None => self.timers.push(at, seq, token),
                }
                let k = timer_key(at, seq);
                if k < self.timer_first.0 {
                    self.timer_first = (k, lane.map_or(TimerAt::Queue, TimerAt::Lane));
                }
            }
            ev => {
                let k = pack(at, seq, ev);
                let hint = match ev {
                    Ev::Arrive(_) => self.arrive_lane,
                    Ev::Stage(cpu) => self.stage_lane.get(cpu as usize).map_or(0, |&l| usize::from(l)),
                    _ => 0,
                };
                match self.lanes.push(k, hint) {
                    Some(i) => match ev {
                        Ev::Arrive(_) => self.arrive_lane = i,
                        Ev::Stage(cpu) => {
                            let cpu = cpu as usize;
                            if cpu >= self.stage_lane.len() {
                                self.stage_lane.resize(cpu + 1, 0);
                            }
                            self.stage_lane[cpu] = i as u8;
                        }
                        _ => {}
                    },
                    None => self.heap.push(Reverse(k)),
                }
            }
        }
    }

    fn send(&mut self, at: Nanos, packet: Packet) {
        let id = match self.free.pop() {
            Some(id) => {
                self.packets[id as usize] = packet;
                id
            }
            None => {
                self.packets.push(packet);
                (self.packets.len() - 1) as u32
            }
        };
        self.push(at, Ev::Arrive(id));
    }

    /// The earliest event of every lane and queue: one total order by (time, scheduling order).
    #[inline(always)]
    fn pop(&mut self) -> Option<(Nanos, u64, Ev)> {
        // Absent heads count as `u128::MAX`, above every key.
        let (lane, k) = self.lanes.first();
        let h = self.heap.peek().map_or(u128::MAX, |r| r.0);
        let (t, from) = self.timer_first;
        if t < k && t < h {
            let (at, seq, token) = match from {
                TimerAt::Lane(i) => self.timer_lanes.pop(i),
                TimerAt::Queue => self.timers.pop()?,
            };
            self.timer_first = self.next_timer();
            Some((at, seq, Ev::Timer(token)))
        } else if h < k {
            self.heap.pop().map(|Reverse(k)| unpack(k))
        } else if k != u128::MAX {
            Some(unpack(self.lanes.pop(lane)))
        } else {
            None
        }
    }

    /// The earliest timer of the lanes and the queue.
    fn next_timer(&self) -> (u128, TimerAt) {
        let (lane, l) = self.timer_lanes.first();
        let lk = if l == Timer::NONE_HEAD { u128::MAX } else { timer_key(l.0, l.1) };
        let qk = self.timers.peek().map_or(u128::MAX, |q| timer_key(q.0, q.1));
        if qk < lk {
            (qk, TimerAt::Queue)
        } else {
            (lk, TimerAt::Lane(lane))
        }
    }

    fn pending(&self) -> bool {
        !self.lanes.is_empty() || !self.heap.is_empty() || self.timer_first.0 != u128::MAX
    }
}

/// A few FIFO lanes, each holding keys in increasing order: a key joins the
/// lane whose last key is the largest one below it (or an empty lane), so
/// every stream of increasing keys keeps to a lane of its own. With the
/// simulator's streams a push and a pop cost a few comparisons instead of a
/// heap's sift. Each lane's head and last key are mirrored in small arrays
/// (an empty lane's as [`LaneKey::NONE_HEAD`] and [`LaneKey::NONE_BACK`]), so
/// the scans touch one cache line and no lane buffer.
struct Lanes<T> {
    lanes: [VecDeque<T>; LANES],
    heads: [T; LANES],
    backs: [T; LANES],
}

/// Lanes per [`Lanes`]. Every push and pop scans them all, so fewer are
/// cheaper as long as the main streams keep a lane each: two hold the DNS
/// scenario's answers and stages (and its arrivals and timeouts among
/// timers), the few queries in between wait in the small heap. Measured on
/// the `sim` bench's 4.14 run: 1 lane 219 M instructions, 2: 188 M, 3: 198 M, 4: 205 M.
const LANES: usize = 2;

/// A key [`Lanes`] can hold: ordered, with a value above and one below every real key.
trait LaneKey: Ord + Copy {
    /// Above every key: the head of an empty lane.
    const NONE_HEAD: Self;
    /// Below every key: the last key of an empty lane.
    const NONE_BACK: Self;
}

impl LaneKey for u128 {
    const NONE_HEAD: u128 = u128::MAX;
    // Real keys carry a scheduling order of at least 1 (see `pack`).
    const NONE_BACK: u128 = 0;
}

impl LaneKey for Timer {
    const NONE_HEAD: Timer = (Nanos::MAX, u64::MAX, u64::MAX);
    // Real timers carry a scheduling order of at least 1.
    const NONE_BACK: Timer = (0, 0, 0);
}

impl<T: LaneKey> Default for Lanes<T> {
    fn default() -> Self {
        Self {
            lanes: std::array::from_fn(|_| VecDeque::new()),
            heads: [T::NONE_HEAD; LANES],
            backs: [T::NONE_BACK; LANES],
        }
    }
}

impl<T: LaneKey> Lanes<T> {
    /// Append `k` to a lane: to lane `hint` if it holds keys and they are all
    /// below `k` (a stream keeping to its lane), else to the one whose last
    /// key is the largest below `k`, else to an empty one; `None` if every
    /// lane's last key is above `k`.
    #[inline(always)]
    fn push(&mut self, k: T, hint: usize) -> Option<usize> {
        let h = self.backs[hint];
        if h < k && h != T::NONE_BACK {
            self.backs[hint] = k;
            self.lanes[hint].push_back(k);
            return Some(hint);
        }
        // The largest last key below `k`; an empty lane's counts as the smallest.
        let mut best = None;
        let mut best_back = T::NONE_BACK;
        for (i, &b) in self.backs.iter().enumerate() {
            if b < k && (best.is_none() || b > best_back) {
                best = Some(i);
                best_back = b;
            }
        }
        let i = best?;
        if self.backs[i] == T::NONE_BACK {
            self.heads[i] = k;
        }
        self.backs[i] = k;
        self.lanes[i].push_back(k);
        Some(i)
    }

    /// The smallest key and its lane: the smallest head ([`LaneKey::NONE_HEAD`] if all are empty).
    #[inline(always)]
    fn first(&self) -> (usize, T) {
        let mut i = 0;
        let mut m = self.heads[0];
        for (j, &h) in self.heads.iter().enumerate().skip(1) {
            if h < m {
                i = j;
                m = h;
            }
        }
        (i, m)
    }

    /// Take the head of lane `i` (from [`Lanes::first`]).
    #[inline(always)]
    fn pop(&mut self, i: usize) -> T {
        let l = &mut self.lanes[i];
        let k = l.pop_front().expect("a lane with a head");
        match l.front() {
            Some(&h) => self.heads[i] = h,
            None => {
                self.heads[i] = T::NONE_HEAD;
                self.backs[i] = T::NONE_BACK;
            }
        }
        k
    }

    fn is_empty(&self) -> bool {
        self.heads.iter().all(|&h| h == T::NONE_HEAD)
    }
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
    events: Events,
    now: Nanos,
    cpus: Vec<Cpu>,
    /// By packet id, parallel to `events.packets`.
    flights: Vec<Flight<'t>>,
    bursts: Vec<(u64, usize)>,
    /// A uniform CPU, for [`Steering::Random`].
    any_cpu: UniformU32,
    /// Per stage: (duration, jitter span), computed once.
    stage_spans: [(Nanos, Nanos); 4],
    stats: RunStats,
}

impl<'t> Sim<'t> {
    /// A simulation driving `table`. The table should count at least `cfg.cpus` CPUs.
    pub fn new(table: &'t Conntrack, cfg: SimConfig) -> Self {
        let mut rng = Pcg64Mcg::seed_from_u64(cfg.seed);
        let nat_secret = rng.random();
        let cpus: Vec<Cpu> = (0..cfg.cpus.max(1)).map(|_| Cpu::default()).collect();
        let st = cfg.stages;
        let span = |d: Nanos| (d, (d as f64 * st.jitter.clamp(0.0, 1.0)) as Nanos);
        let stage_spans = [span(st.lookup), span(st.dnat), span(st.snat), span(st.confirm)];
        let any_cpu = UniformU32::new(0, u32::try_from(cpus.len()).expect("fewer than 2^32 CPUs"));
        Self {
            stage_spans,
            any_cpu,
            table,
            rules: Vec::new(),
            rovers: Rovers::default(),
            nat_secret,
            rng,
            events: Events::default(),
            now: 0,
            cpus,
            flights: Vec::new(),
            bursts: Vec::new(),
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

    #[inline(always)]
    fn push(&mut self, at: Nanos, ev: Ev) {
        self.events.push(at, ev);
    }

    /// Run `w` until no event is left or virtual time passes `until`.
    pub fn run<W: Workload>(&mut self, w: &mut W, until: Nanos) -> RunStats {
        self.with_cx(|cx| w.start(cx));
        if self.cfg.gc_interval > 0 {
            self.push(self.cfg.gc_interval, Ev::Gc);
        }
        while let Some((at, seq, ev)) = self.events.pop() {
            if at > until {
                self.events.requeue(at, seq, ev);
                break;
            }
            self.now = at;
            self.stats.events += 1;
            match ev {
                Ev::Arrive(id) => self.arrive(id),
                Ev::Stage(cpu) => {
                    self.stage(cpu as usize, w);
                }
                Ev::Timer(token) => self.with_cx(|cx| w.timer(cx, token)),
                Ev::Gc => {
                    // The GC worker is a kworker, not a softirq: it does not occupy a packet CPU.
                    self.table.gc(At::new(0, self.now), self.cfg.gc_buckets);
                    // Keep ticking only while something else is scheduled.
                    if self.events.pending() {
                        self.push(self.now + self.cfg.gc_interval, Ev::Gc);
                    }
                }
            }
        }
        self.stats.end = self.now;
        self.stats
    }

    fn with_cx(&mut self, f: impl FnOnce(&mut Cx<'_>)) {
        f(&mut Cx { now: self.now, rng: &mut self.rng, events: &mut self.events });
    }

    /// The CPU `pkt` lands on (of `n`); `bursts` remembers where recent bursts began.
    fn steer(
        steering: Steering,
        n: usize,
        any_cpu: UniformU32,
        rng: &mut Pcg64Mcg,
        bursts: &mut Vec<(u64, usize)>,
        pkt: &Packet,
    ) -> usize {
        match steering {
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
            Steering::Random => any_cpu.sample(rng) as usize,
            Steering::Spread { split } => {
                let home = pkt.sender_cpu % n;
                let Some(burst) = pkt.burst else { return home };
                // A burst's packets arrive together: the last few bursts suffice,
                // newest first.
                if let Some(&(_, first)) = bursts.iter().rev().find(|(b, _)| *b == burst) {
                    if n > 1 && rng.random_bool(split.clamp(0.0, 1.0)) {
                        let other = rng.random_range(0..n - 1);
                        return if other >= first { other + 1 } else { other };
                    }
                    return first;
                }
                if bursts.len() >= 16 {
                    bursts.remove(0);
                }
                bursts.push((burst, home));
                home
            }
        }
    }

    fn arrive(&mut self, id: u32) {
        let pkt = &self.events.packets[id as usize];
        let cpu = Self::steer(self.cfg.steering, self.cpus.len(), self.any_cpu, &mut self.rng, &mut self.bursts, pkt);
        let i = id as usize;
        if i >= self.flights.len() {
            self.flights.resize_with(i + 1, || Flight { stage: Stage::Lookup, ct: None, snat: None });
        }
        let c = &mut self.cpus[cpu];
        if c.current.is_none() {
            c.current = Some(id);
            self.schedule_stage(cpu, Stage::Lookup);
        } else {
            c.queue.push_back(id);
            self.stats.queued += 1;
        }
    }

    /// A stage's duration `d` scaled by `1 + jitter·u`, `u` uniform in
    /// [−1, 1], in integers: uniform over `[d − s, d + s]`, `s = jitter·d`.
    fn stage_time(&mut self, stage: Stage) -> Nanos {
        let (d, span) = self.stage_spans[stage as usize];
        if span == 0 {
            return d;
        }
        let r = u64::from(self.rng.random::<u32>());
        d - span + ((r * (2 * span + 1)) >> 32)
    }

    fn schedule_stage(&mut self, cpu: usize, stage: Stage) {
        self.schedule_stage_after(cpu, stage, 0);
    }

    /// Schedule `stage` of the packet on `cpu`, `extra` ns later than its own duration.
    #[inline(always)]
    fn schedule_stage_after(&mut self, cpu: usize, stage: Stage, extra: Nanos) {
        let id = self.cpus[cpu].current.expect("busy cpu");
        self.flights[id as usize].stage = stage;
        let d = extra + self.stage_time(stage);
        self.push(self.now + d, Ev::Stage(cpu as u32));
    }

    /// Run the current packet's stage on `cpu`; when the packet is done, hand it to `w`.
    fn stage<W: Workload>(&mut self, cpu: usize, w: &mut W) {
        let id = self.cpus[cpu].current.expect("stage on an idle cpu");
        let at = At::new(cpu, self.now);
        let table = self.table;
        let pkt = &self.events.packets[id as usize];
        let (nat, tag) = (pkt.nat, pkt.tag);
        // A stage that finishes the packet returns through `finish`; the others
        // fall through to scheduling the next stage.
        match self.flights[id as usize].stage {
            Stage::Lookup => {
                let tuple = pkt.tuple;
                if pkt.notrack {
                    return self.finish(
                        id,
                        w,
                        Delivered { tag, cpu, verdict: Verdict::Untracked, out: tuple, snat: None },
                    );
                } else if let Some(hit) = table.lookup(&tuple, at) {
                    let update = table.update(&hit, pkt.flags, at);
                    let out = match hit.dir {
                        crate::Dir::Original => hit.reply.invert(),
                        crate::Dir::Reply => hit.orig.invert(),
                    };
                    return self.finish(
                        id,
                        w,
                        Delivered { tag, cpu, verdict: Verdict::Established(update), out, snat: None },
                    );
                } else {
                    match table.new_conn(tuple, pkt.flags, at) {
                        Ok(ct) => self.flights[id as usize].ct = Some(ct),
                        Err(_) => {
                            let d = Delivered { tag, cpu, verdict: Verdict::TableFull, out: tuple, snat: None };
                            return self.finish(id, w, d);
                        }
                    }
                }
            }
            Stage::Dnat => {
                let f = &mut self.flights[id as usize];
                if let (Some(rules), Some(ct)) = (pkt.nat.map(|n| &self.rules[n.0 as usize]), f.ct.as_mut()) {
                    if let Some(dnat) = &rules.dnat {
                        let i = dnat.select(ct.orig(), &mut self.rng);
                        let (addr, port) = dnat.translate(ct.orig(), i);
                        ct.dnat(addr, port);
                    }
                }
            }
            Stage::Snat => {
                // Allocations made on other CPUs and not yet confirmed: invisible to this search.
                let racing = self
                    .cpus
                    .iter()
                    .enumerate()
                    .filter(|&(c, cpu_state)| {
                        c != cpu
                            && cpu_state.current.is_some_and(|o| {
                                let o = &self.flights[o as usize];
                                o.snat.is_some() && o.ct.is_some()
                            })
                    })
                    .count() as u32;
                let f = &mut self.flights[id as usize];
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
                        f.snat = Some(SnatDone { outcome: o, racing });
                    }
                }
            }
            Stage::Confirm => {
                let ct = self.flights[id as usize].ct.take().expect("confirm without an entry");
                let c = table.confirm(ct, at, &mut self.rng);
                let out = match &c {
                    Confirm::Inserted(h) | Confirm::Merged(h) | Confirm::NatClash(h) => h.reply.invert(),
                    Confirm::Dropped(_) => pkt.tuple,
                };
                let verdict = Verdict::New(Confirmed::from(&c));
                return self.finish(id, w, Delivered { tag, cpu, verdict, out, snat: None });
            }
        }
        {
            // Skip stages with nothing to do for this packet, keeping their time.
            let (has_dnat, has_snat) = nat.map_or((false, false), |n| {
                (self.rules[n.0 as usize].dnat.is_some(), self.rules[n.0 as usize].snat.is_some())
            });
            let mut next = match self.flights[id as usize].stage {
                Stage::Lookup => Stage::Dnat,
                Stage::Dnat => Stage::Snat,
                Stage::Snat | Stage::Confirm => Stage::Confirm,
            };
            let mut extra = 0;
            if next == Stage::Dnat && !has_dnat {
                extra += self.stage_time(Stage::Dnat);
                next = Stage::Snat;
            }
            if next == Stage::Snat && !has_snat {
                extra += self.stage_time(Stage::Snat);
                next = Stage::Confirm;
            }
            self.schedule_stage_after(cpu, next, extra);
        }
    }

    /// The packet `id` is done on `d.cpu`: free its slot, start the CPU's
    /// next packet, then hand `d` to `w`. The caller builds `d` where the
    /// verdict is made; only the SNAT outcome is filled in here.
    #[inline(always)]
    fn finish<W: Workload>(&mut self, id: u32, w: &mut W, mut d: Delivered) {
        debug_assert!(self.flights[id as usize].ct.is_none());
        d.snat = self.flights[id as usize].snat.take();
        self.events.free.push(id);
        self.stats.packets += 1;
        let cpu = d.cpu;
        let c = &mut self.cpus[cpu];
        c.current = c.queue.pop_front();
        if c.current.is_some() {
            self.schedule_stage(cpu, Stage::Lookup);
        }
        w.delivered(&mut Cx { now: self.now, rng: &mut self.rng, events: &mut self.events }, d);
    }
}

/// A packet event as one integer: time (64 bits) | scheduling order (40) |
/// kind (2) | payload (22: a packet slot or a CPU). Ordering the integers
/// orders the events by (time, scheduling order).
fn pack(at: Nanos, seq: u64, ev: Ev) -> u128 {
    let (kind, payload) = match ev {
        Ev::Arrive(id) => (0u64, u64::from(id)),
        Ev::Stage(cpu) => (1, u64::from(cpu)),
        Ev::Gc => (2, 0),
        Ev::Timer(_) => unreachable!("timers live in the timer queue"),
    };
    debug_assert!(seq < 1 << 40 && payload < 1 << 22, "simulation too large to pack");
    u128::from(at) << 64 | u128::from(seq << 24 | kind << 22 | payload)
}

/// A timer's key, packed as a packet event's with kind and payload 0: it
/// compares with packet events' keys by (time, scheduling order), scheduling
/// orders being distinct.
fn timer_key(at: Nanos, seq: u64) -> u128 {
    u128::from(at) << 64 | u128::from(seq << 24)
}

fn unpack(k: u128) -> (Nanos, u64, Ev) {
    let lo = k as u64;
    let payload = (lo & ((1 << 22) - 1)) as u32;
    let ev = match (lo >> 22) & 3 {
        0 => Ev::Arrive(payload),
        1 => Ev::Stage(payload),
        _ => Ev::Gc,
    };
    ((k >> 64) as u64, lo >> 24, ev)
}

/// Timers in coarse time slots (2^20 ns, about 1 ms). A slot is sorted once,
/// when it becomes the earliest; timers added to it afterwards are inserted
/// in order. Pops come out in exact (time, scheduling order).
#[derive(Default)]
struct TimerQueue {
    /// Slot → timers, sorted descending (next to fire last) once `sorted`.
    slots: BTreeMap<u64, (bool, Vec<Timer>)>,
    /// The earliest timer, cached: every event pop peeks at it.
    first: Option<Timer>,
}

/// (time, scheduling order, token).
type Timer = (Nanos, u64, u64);

impl TimerQueue {
    const SLOT_SHIFT: u32 = 20;

    fn push(&mut self, at: Nanos, seq: u64, token: u64) {
        let t = (at, seq, token);
        if self.first.is_none_or(|f| (at, seq) < (f.0, f.1)) {
            self.first = Some(t);
        }
        let (sorted, v) = self.slots.entry(at >> Self::SLOT_SHIFT).or_default();
        if *sorted {
            let i = v.partition_point(|e| (e.0, e.1) > (at, seq));
            v.insert(i, t);
        } else {
            v.push(t);
        }
    }

    fn head(&mut self) -> Option<&mut Vec<Timer>> {
        let (sorted, v) = self.slots.first_entry()?.into_mut();
        if !*sorted {
            v.sort_unstable_by_key(|t| std::cmp::Reverse((t.0, t.1)));
            *sorted = true;
        }
        Some(v)
    }

    fn peek(&self) -> Option<Timer> {
        self.first
    }

    fn pop(&mut self) -> Option<Timer> {
        let head = self.head()?;
        let t = head.pop();
        if head.is_empty() {
            self.slots.pop_first();
        }
        self.first = self.head().and_then(|v| v.last().copied());
        t
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

#[cfg(all(test, not(loom)))]
mod tests {
    use std::net::Ipv4Addr;

    use proptest::prelude::*;

    use super::*;
    use crate::profile::preset;
    use crate::Stat;

    /// Sends `pairs` bursts of two packets of one new UDP flow each, from CPU 0.
    struct Pairs {
        pairs: u32,
        delivered: Vec<(u64, Nanos, usize)>,
        verdicts: Vec<Verdict>,
    }

    impl Workload for Pairs {
        fn start(&mut self, cx: &mut Cx<'_>) {
            for i in 0..self.pairs {
                let t = Tuple::udp(Ipv4Addr::new(10, 0, 0, 1), 10_000 + i as u16, Ipv4Addr::new(10, 96, 0, 10), 53);
                for k in 0..2 {
                    let mut p = Packet::new(t, u64::from(i * 2 + k));
                    p.burst = Some(u64::from(i));
                    cx.send(u64::from(i) * 1_000_000, p);
                }
            }
        }
        fn delivered(&mut self, cx: &mut Cx<'_>, d: Delivered) {
            self.delivered.push((d.tag, cx.now(), d.cpu));
            self.verdicts.push(d.verdict);
        }
        fn timer(&mut self, _: &mut Cx<'_>, _: u64) {}
    }

    /// 300 pairs on 4.14 with four CPUs: the workload as it ended, and the counters.
    /// The workload, the counters, and the entries linked into the table
    /// (4.14 does not count `insert`).
    fn run_pairs(steering: Steering, seed: u64) -> (Pairs, crate::StatsSnapshot, u64) {
        let t = Conntrack::new(preset("4.14").unwrap(), 4, 1);
        let cfg = SimConfig { cpus: 4, steering, seed, ..SimConfig::default() };
        let mut sim = Sim::new(&t, cfg);
        let mut w = Pairs { pairs: 300, delivered: vec![], verdicts: vec![] };
        sim.run(&mut w, Nanos::MAX);
        assert_eq!(t.stats().get(Stat::Insert), 0);
        (w, t.stats(), t.lifetime().0)
    }

    fn run(steering: Steering, seed: u64) -> (Vec<(u64, Nanos, usize)>, crate::StatsSnapshot, u64) {
        let (w, stats, inserted) = run_pairs(steering, seed);
        (w.delivered, stats, inserted)
    }

    #[test]
    fn verdicts_tell_each_packet_what_the_counters_count() {
        let (w, stats, inserted) = run_pairs(Steering::Random, 1);
        let count = |f: fn(&Verdict) -> bool| w.verdicts.iter().filter(|v| f(v)).count() as u64;
        assert_eq!(w.verdicts.len(), 600);
        assert_eq!(count(|v| matches!(v, Verdict::New(Confirmed::Inserted))), inserted);
        // Without NAT, 4.14 merges a clash of identical entries, counted as insert_failed.
        let merged = count(|v| matches!(v, Verdict::New(Confirmed::Merged)));
        assert!(merged > 0);
        assert_eq!(merged, stats.get(Stat::InsertFailed));
        assert_eq!(count(|v| !v.accepted()), 0);
        // The rest found the first packet's entry confirmed already.
        let established = count(|v| matches!(v, Verdict::Established(Update::Accepted)));
        assert_eq!(established + merged + inserted, 600);
    }

    #[test]
    fn one_cpu_serializes_a_burst_and_never_races() {
        let (d, stats, inserted) = run(Steering::Sender, 1);
        assert_eq!(d.len(), 600);
        assert!(d.iter().all(|x| x.2 == 0));
        assert_eq!(stats.get(Stat::InsertFailed), 0);
        assert_eq!(inserted, 300);
        let (_, stats, _) = run(Steering::FlowHash, 1);
        assert_eq!(stats.get(Stat::InsertFailed), 0);
    }

    #[test]
    fn spreading_a_burst_over_cpus_races() {
        let (_, stats, inserted) = run(Steering::Random, 1);
        // Two packets land on different CPUs 3 times in 4: most pairs clash.
        let clashes = stats.get(Stat::InsertFailed);
        assert!((150..=300).contains(&clashes), "{clashes}");
        // One insert per pair; the other packet clashed or found the entry.
        assert_eq!(inserted, 300);
        let (_, stats, _) = run(Steering::Spread { split: 0.0 }, 1);
        assert_eq!(stats.get(Stat::InsertFailed), 0);
        let (_, stats, _) = run(Steering::Spread { split: 1.0 }, 1);
        assert!(stats.get(Stat::InsertFailed) > 250, "{:?}", stats.total());
    }

    #[test]
    fn same_seed_same_events() {
        assert_eq!(run(Steering::Random, 5).0, run(Steering::Random, 5).0);
        assert_ne!(run(Steering::Random, 5).0, run(Steering::Random, 6).0);
    }

    proptest! {
        /// Packet events and timers from several increasing streams and some
        /// scattered ones (more than the lanes hold): pops come out in exact
        /// (time, scheduling order), whichever lane, heap or queue holds them.
        #[test]
        fn events_pop_in_time_then_scheduling_order(
            ops in prop::collection::vec((0u8..8, 0u64..3_000_000_000, any::<bool>()), 1..400),
        ) {
            let mut q = Events::default();
            let mut reference = std::collections::BTreeSet::new();
            let mut streams = [0u64; 6];
            let mut now = 0;
            for (i, &(kind, gap, pop)) in ops.iter().enumerate() {
                // Kinds 0-5: a stream whose times only grow; 6-7: anywhere from now on.
                let at = match kind {
                    0..=5 => {
                        let k = kind as usize;
                        streams[k] = streams[k].max(now) + gap % (1_000 << k);
                        streams[k]
                    }
                    _ => now + gap,
                };
                let ev = match (kind, i % 3) {
                    (_, 0) | (6, _) => Ev::Timer(i as u64),
                    (_, 1) => Ev::Arrive(i as u32),
                    _ => Ev::Stage(i as u32),
                };
                q.push(at, ev);
                reference.insert((at, q.seq, ev));
                if pop {
                    let p = q.pop().unwrap();
                    prop_assert_eq!(Some(p), reference.pop_first());
                    now = p.0;
                }
            }
            while let Some(p) = q.pop() {
                prop_assert_eq!(Some(p), reference.pop_first());
            }
            prop_assert!(reference.is_empty());
            prop_assert!(!q.pending());
        }

        #[test]
        fn timer_queue_pops_in_time_then_scheduling_order(
            times in prop::collection::vec(0u64..5_000_000_000, 1..300),
            interleave in prop::collection::vec(any::<bool>(), 1..300),
        ) {
            let mut q = TimerQueue::default();
            let mut reference = Vec::new();
            let mut popped = Vec::new();
            let mut seq = 0;
            let mut floor = 0;
            for (i, t) in times.iter().enumerate() {
                seq += 1;
                // Like the simulator: nothing is scheduled before the last pop.
                let at = floor + t;
                q.push(at, seq, seq);
                reference.push((at, seq, seq));
                if interleave.get(i).copied().unwrap_or(false) {
                    let p = q.pop().unwrap();
                    floor = p.0;
                    popped.push(p);
                }
            }
            while let Some(p) = q.pop() {
                popped.push(p);
            }
            for w in popped.windows(2) {
                prop_assert!((w[0].0, w[0].1) < (w[1].0, w[1].1));
            }
            reference.sort();
            popped.sort();
            prop_assert_eq!(popped, reference);
        }
    }
}
