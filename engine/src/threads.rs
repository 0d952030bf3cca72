//! The threads executor: real OS threads, one per CPU, hammering one table.
//!
//! The simulator predicts races deterministically; this shows the same
//! races with the hardware's own interleavings, and measures how fast the
//! table is. Each worker stands for a CPU (its index selects the per-CPU
//! counters). The `pair` workers are fed batches of rounds over a crossbeam
//! channel, so both race the same rounds; the other workloads run until a
//! stop flag is set, driven exactly as the baselines in `models::baseline`
//! are. The caller decides when to stop through a `keep_going` callback, so
//! this module reads no clock (the CLI times the run).
//!
//! Each worker keeps its own virtual clock, advanced a fixed step per
//! operation, so connections expire and GC and early drop run under load.

use std::net::{IpAddr, Ipv4Addr};

use crossbeam_channel::{bounded, Receiver, Sender};
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use serde::{Deserialize, Serialize};

use crate::nat::dnat::{Dnat, Endpoint, Selector};
use crate::nat::snat::{Allocator, Rovers, Snat, SnatFlags};
use crate::sync::{AtomicBool, AtomicU64, AtomicUsize, CachePadded, Ordering};
use crate::table::{Confirm, Conntrack};
use crate::{At, ConnRef, Hit, Nanos, TcpFlags, Tuple};

/// What the workers do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// The udpclash pattern: rounds in which two workers release the first
    /// packet of one new UDP flow at once, DNATed to one of the endpoints.
    Pair,
    /// Many new TCP flows to one destination through MASQUERADE.
    Snat,
    /// Established flows, read-mostly: lookups and refreshes.
    Lookup,
    /// 80 % packets of established flows, 15 % new flows, 5 % closing flows,
    /// with GC steps.
    Mixed,
}

/// Settings of a stress run.
#[derive(Clone, Debug, PartialEq)]
pub struct StressConfig {
    /// Worker threads (CPUs).
    pub threads: usize,
    /// What they do.
    pub workload: Workload,
    /// Busy work between lookup and confirm, in loop iterations (the rest of
    /// the packet path; the caller calibrates it from a time). 0 allowed.
    pub window_spins: u64,
    /// DNAT endpoints for `pair`.
    pub endpoints: u32,
    /// SNAT flags for `snat`.
    pub snat_flags: SnatFlags,
    /// Established flows for `lookup` and `mixed`; live flows per worker for `snat`.
    pub flows: u32,
    /// `pair`: rounds per batch the feeding thread hands each racing worker.
    /// The other workloads: operations a worker runs between two looks at
    /// the stop flag (and two updates of its published count).
    pub batch: u64,
    /// Seed for each worker's generator (worker `i` uses `seed + i`).
    pub seed: u64,
}

impl Default for StressConfig {
    fn default() -> Self {
        Self {
            threads: 2,
            workload: Workload::Pair,
            window_spins: 0,
            endpoints: 1,
            snat_flags: SnatFlags::default(),
            flows: 10_000,
            batch: 1024,
            seed: 1,
        }
    }
}

/// How the rounds of `pair` ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Races {
    /// Rounds run.
    pub rounds: u64,
    /// Rounds in which both packets missed the lookup and one clashed at confirm.
    pub clashed: u64,
    /// Of those, the second packet was merged into the first's entry.
    pub merged: u64,
    /// Inserted reply-only (NAT_CLASH).
    pub nat_clash: u64,
    /// Dropped.
    pub dropped: u64,
    /// Rounds in which the second packet found the first's entry (no race).
    pub found: u64,
}

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct StressOutcome {
    /// Operations (packets through the conntrack path) over all workers.
    pub ops: u64,
    /// Operations per worker.
    pub per_worker: Vec<u64>,
    /// `pair` rounds and their outcomes.
    pub races: Races,
}

/// A busy loop standing for the rest of the packet path.
///
/// Never inlined: callers time calls of this function to turn a duration
/// into iterations, and the window, the baselines' window and the
/// `--scaling` reference loop must then run the machine code that was timed.
/// Inlined copies compile to the same loop body but need not run at the same
/// speed (their placement differs): after an unrelated change to the engine,
/// one build's worker copy ran its windows about two thirds as long as other
/// builds did, while the calibration's copy was unchanged.
#[inline(never)]
pub fn spin_work(iterations: u64) -> u64 {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..iterations {
        x = std::hint::black_box(x.rotate_left(5) ^ i);
    }
    x
}

/// A reusable spin barrier: all parties arrive, the last releases them.
struct SpinBarrier {
    parties: usize,
    arrived: CachePadded<AtomicUsize>,
    generation: CachePadded<AtomicUsize>,
}

impl SpinBarrier {
    fn new(parties: usize) -> Self {
        Self {
            parties,
            arrived: CachePadded::new(AtomicUsize::new(0)),
            generation: CachePadded::new(AtomicUsize::new(0)),
        }
    }

    fn wait(&self) {
        let gen = self.generation.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.parties {
            self.arrived.store(0, Ordering::Relaxed);
            self.generation.store(gen.wrapping_add(1), Ordering::Release);
        } else {
            let mut spins = 0u32;
            while self.generation.load(Ordering::Acquire) == gen {
                spins += 1;
                if spins < 1 << 14 {
                    std::hint::spin_loop();
                } else {
                    // More threads than cores: let the other party run.
                    std::thread::yield_now();
                }
            }
        }
    }
}

/// Virtual time advanced per operation on each worker (ns).
pub const STEP: Nanos = 1_000;

const SERVICE: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const SERVER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 80);
const NODE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

fn endpoint(i: u32) -> Endpoint {
    Endpoint { addr: Ipv4Addr::new(10, 245, (i >> 8) as u8, (i & 0xff) as u8 + 2).into(), port: 53, weight: 1 }
}

/// The `i`-th client flow of worker `w` (distinct across workers), to port `dport`.
fn flow_to(w: usize, i: u64, dport: u16) -> Tuple {
    let client = Ipv4Addr::from(0x0a00_0000 | ((w as u32 & 0xff) << 16) | ((i >> 14) as u32 & 0xffff));
    Tuple::udp(client, 1024 + (i & 0x3fff) as u16, SERVICE, dport)
}

/// An established (or `pair`) flow.
fn flow(w: usize, i: u64) -> Tuple {
    flow_to(w, i, 53)
}

/// Run `cfg` on `table` until `keep_going(ops so far)` says stop. The table
/// must count at least `cfg.threads` CPUs.
pub fn run(table: &Conntrack, cfg: &StressConfig, mut keep_going: impl FnMut(u64) -> bool) -> StressOutcome {
    let threads = cfg.threads.max(1);
    let done: Vec<CachePadded<AtomicU64>> = (0..threads).map(|_| CachePadded::new(AtomicU64::new(0))).collect();
    let barrier = SpinBarrier::new(threads.min(2));
    let dnat = Dnat::new(
        (0..cfg.endpoints.max(1)).map(endpoint).collect(),
        Selector::kube_proxy_random(cfg.endpoints.max(1) as usize),
        cfg.seed,
    )
    .expect("valid endpoints");
    let rovers = Rovers::default();
    let races: Vec<CachePadded<[AtomicU64; 6]>> = (0..threads).map(|_| CachePadded::new(Default::default())).collect();
    if matches!(cfg.workload, Workload::Lookup | Workload::Mixed) {
        preload(table, cfg);
    }
    let mut outcome = StressOutcome::default();
    if cfg.workload == Workload::Pair {
        run_fed(cfg, &done, &mut keep_going, |w| {
            let mut worker = Worker::new(table, cfg, w, threads);
            let (barrier, dnat, races) = (&barrier, &dnat, &races[w]);
            move |rounds: u64| match (threads >= 2, w < 2) {
                (true, true) => worker.pair(rounds, barrier, dnat, races),
                // Only the first two workers race; the others stay idle.
                (true, false) => 0,
                (false, _) => worker.pair_alone(rounds, dnat, races),
            }
        });
    } else {
        run_until_stopped(cfg, &done, &mut keep_going, |w| {
            let mut worker = Worker::new(table, cfg, w, threads);
            let rovers = &rovers;
            move |n: u64| match cfg.workload {
                Workload::Snat => worker.snat(n, rovers),
                Workload::Lookup => worker.lookup(n),
                Workload::Mixed => worker.mixed(n),
                Workload::Pair => unreachable!("pair is fed"),
            }
        });
    }
    outcome.per_worker = done.iter().map(|d| d.load(Ordering::Relaxed)).collect();
    outcome.ops = outcome.per_worker.iter().sum();
    let sum = |i: usize| races.iter().map(|r| r[i].load(Ordering::Relaxed)).sum::<u64>();
    outcome.races =
        Races { rounds: sum(0), clashed: sum(1), merged: sum(2), nat_clash: sum(3), dropped: sum(4), found: sum(5) };
    outcome
}

/// Drive `pair`: the feeding thread hands every worker the same batches of
/// rounds over a channel, so the two racing workers always run the same
/// number of rounds and meet at the same barriers.
fn run_fed<F: FnMut(u64) -> u64>(
    cfg: &StressConfig,
    done: &[CachePadded<AtomicU64>],
    keep_going: &mut impl FnMut(u64) -> bool,
    make: impl Fn(usize) -> F + Sync,
) {
    std::thread::scope(|s| {
        let mut feeds: Vec<Sender<u64>> = Vec::with_capacity(done.len());
        for (w, done) in done.iter().enumerate() {
            let (tx, rx): (Sender<u64>, Receiver<u64>) = bounded(2);
            feeds.push(tx);
            let make = &make;
            s.spawn(move || {
                let mut step = make(w);
                for batch in rx {
                    done.fetch_add(step(batch), Ordering::Relaxed);
                }
            });
        }
        loop {
            let total: u64 = done.iter().map(|d| d.load(Ordering::Relaxed)).sum();
            if !keep_going(total) {
                break;
            }
            for f in &feeds {
                // A full feed means the worker is busy with two batches: wait for it.
                if f.send(cfg.batch).is_err() {
                    break;
                }
            }
        }
        drop(feeds);
    });
}

/// Drive the other workloads as the baselines (`models::baseline`) are
/// driven: every worker runs batches of `cfg.batch` operations until a stop
/// flag is set, publishing its count after each; this thread looks at the
/// count every millisecond. No worker ever waits for this thread: with a
/// feed, a worker that had emptied it waited until a busy machine got round
/// to scheduling the feeding thread again.
fn run_until_stopped<F: FnMut(u64) -> u64>(
    cfg: &StressConfig,
    done: &[CachePadded<AtomicU64>],
    keep_going: &mut impl FnMut(u64) -> bool,
    make: impl Fn(usize) -> F + Sync,
) {
    let stop = AtomicBool::new(false);
    let batch = cfg.batch.max(1);
    std::thread::scope(|s| {
        for (w, done) in done.iter().enumerate() {
            let (make, stop) = (&make, &stop);
            s.spawn(move || {
                let mut step = make(w);
                while !stop.load(Ordering::Relaxed) {
                    done.fetch_add(step(batch), Ordering::Relaxed);
                }
            });
        }
        while keep_going(done.iter().map(|d| d.load(Ordering::Relaxed)).sum()) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        stop.store(true, Ordering::Relaxed);
    });
}

/// The order in which `flows` established flows are created for `threads`
/// workers: `(worker, its j-th flow)`, worker after worker. Flow `i` of the
/// whole set belongs to worker `i % threads`; the baselines
/// (`models::baseline`) preload theirs in the same order, so both lay a
/// worker's entries out side by side.
pub fn preload_order(flows: u32, threads: usize) -> impl Iterator<Item = (usize, u64)> {
    let (flows, threads) = (u64::from(flows), threads.max(1) as u64);
    (0..threads).flat_map(move |w| (0..flows / threads + u64::from(w < flows % threads)).map(move |j| (w as usize, j)))
}

/// Established flows for `lookup` and `mixed`, spread over the workers:
/// flow `i` goes to worker `i % threads`. Each worker's share is created
/// on that worker's CPU, one worker after the other, as the flows a NIC
/// steers to a CPU are created there: their slots come from its cache, side
/// by side, and no line holds two workers' entries.
fn preload(table: &Conntrack, cfg: &StressConfig) {
    let mut rng = Pcg64Mcg::seed_from_u64(cfg.seed);
    for (w, j) in preload_order(cfg.flows, cfg.threads) {
        let at = At::new(w, 0);
        let t = flow(w, j);
        if let Ok(ct) = table.new_conn(t, TcpFlags::default(), at) {
            if let Confirm::Inserted(h) = table.confirm(ct, at, &mut rng) {
                // Seen both ways and assured: an established flow.
                table.update(&Hit { dir: crate::Dir::Reply, ..h }, TcpFlags::default(), at);
            }
        }
    }
}

struct Worker<'t> {
    table: &'t Conntrack,
    cfg: &'t StressConfig,
    w: usize,
    threads: usize,
    rng: Pcg64Mcg,
    now: Nanos,
    next: u64,
    /// This worker's share of the established flows (computed once: a
    /// division per packet was a tenth of the `lookup` loop).
    per: u64,
    /// Flows this worker created and will close (snat, mixed).
    ring: Vec<Option<ConnRef>>,
    ring_at: usize,
}

impl<'t> Worker<'t> {
    fn new(table: &'t Conntrack, cfg: &'t StressConfig, w: usize, threads: usize) -> Self {
        let ring = vec![None; (cfg.flows as usize / threads.max(1)).max(1)];
        Self {
            table,
            cfg,
            w,
            threads,
            rng: Pcg64Mcg::seed_from_u64(cfg.seed + w as u64),
            now: 0,
            next: 0,
            per: u64::from(cfg.flows) / threads.max(1) as u64,
            ring,
            ring_at: 0,
        }
    }

    fn at(&mut self) -> At {
        self.now += STEP;
        At::new(self.w, self.now)
    }

    /// The packet path for a new flow with DNAT: lookup, create, DNAT,
    /// the window, confirm. `None` if the lookup found it.
    fn new_flow(&mut self, t: Tuple, dnat: Option<&Dnat>) -> Option<Confirm> {
        let at = self.at();
        if self.table.lookup(&t, at).is_some() {
            return None;
        }
        let Ok(mut ct) = self.table.new_conn(t, TcpFlags::default(), at) else {
            return Some(Confirm::Dropped(crate::DropReason::TableFull));
        };
        if let Some(d) = dnat {
            let (addr, port) = d.translate(&t, d.select(&t, &mut self.rng));
            ct.dnat(addr, port);
        }
        spin_work(self.cfg.window_spins);
        Some(self.table.confirm(ct, at, &mut self.rng))
    }

    fn record(races: &[AtomicU64; 6], mine: Option<Confirm>) {
        races[0].fetch_add(1, Ordering::Relaxed);
        let slot = match mine {
            None => 5,
            Some(Confirm::Inserted(_)) => return,
            Some(Confirm::Merged(_)) => 2,
            Some(Confirm::NatClash(_)) => 3,
            Some(Confirm::Dropped(_)) => 4,
        };
        if slot != 5 {
            races[1].fetch_add(1, Ordering::Relaxed);
        }
        races[slot].fetch_add(1, Ordering::Relaxed);
    }

    /// `pair` rounds on two workers: both release the same new flow at once.
    fn pair(&mut self, rounds: u64, barrier: &SpinBarrier, dnat: &Dnat, races: &[AtomicU64; 6]) -> u64 {
        for _ in 0..rounds {
            // Both workers walk the same sequence of flows.
            let t = flow(0, self.next);
            self.next += 1;
            barrier.wait();
            let mine = self.new_flow(t, Some(dnat));
            barrier.wait();
            // Each round is counted once, by the worker that did not insert.
            if !matches!(mine, Some(Confirm::Inserted(_))) {
                Self::record(races, mine);
            }
            if let Some(Confirm::Inserted(h)) = mine {
                // Clean up for the next round once the other worker is done with it.
                let at = self.at();
                self.table.kill(h.conn, at);
            }
            barrier.wait();
        }
        rounds
    }

    /// `pair` with one worker: both packets on one CPU, one after the other.
    fn pair_alone(&mut self, rounds: u64, dnat: &Dnat, races: &[AtomicU64; 6]) -> u64 {
        for _ in 0..rounds {
            let t = flow(0, self.next);
            self.next += 1;
            let first = self.new_flow(t, Some(dnat));
            let second = self.new_flow(t, Some(dnat));
            Self::record(races, second);
            if let Some(Confirm::Inserted(h)) = first {
                let at = self.at();
                self.table.kill(h.conn, at);
            }
        }
        2 * rounds
    }

    /// Close the oldest of this worker's flows to make room for a new one.
    fn rotate(&mut self, new: Option<ConnRef>) {
        let at = self.at();
        if let Some(old) = std::mem::replace(&mut self.ring[self.ring_at], new) {
            self.table.kill(old, at);
        }
        self.ring_at = (self.ring_at + 1) % self.ring.len();
    }

    fn snat(&mut self, n: u64, rovers: &Rovers) -> u64 {
        let snat = Snat {
            to_source: vec![IpAddr::V4(NODE)],
            range: None,
            flags: self.cfg.snat_flags,
            allocator: Allocator::Kernel,
        };
        for _ in 0..n {
            // Clients behind the node, each using its own ephemeral ports.
            let client = Ipv4Addr::new(10, 244, self.w as u8, self.rng.random_range(2..250));
            let t = Tuple::tcp(client, self.rng.random_range(32768..=60999), SERVER, 80);
            let at = self.at();
            if self.table.lookup(&t, at).is_some() {
                continue;
            }
            let Ok(mut ct) = self.table.new_conn(t, TcpFlags::SYN, at) else { continue };
            let (orig, reply) = (*ct.orig(), *ct.reply());
            let table = self.table;
            let o = snat.allocate(
                &orig,
                &reply,
                &table.profile().nat,
                rovers,
                self.cfg.seed,
                self.w,
                self.threads,
                &mut self.rng,
                |c, h| table.tuple_taken(c, &orig, h, at),
            );
            ct.snat(o.addr, o.port);
            spin_work(self.cfg.window_spins);
            let conn = match self.table.confirm(ct, at, &mut self.rng) {
                Confirm::Inserted(h) => Some(h.conn),
                _ => None,
            };
            self.rotate(conn);
        }
        n
    }

    /// A packet of one of the established flows (this worker's share).
    fn established(&mut self) {
        if self.per == 0 {
            return;
        }
        let t = flow(self.w, self.rng.random_range(0..self.per));
        let at = self.at();
        // Lookup and refresh in one pass: no copy of the entry.
        std::hint::black_box(self.table.track(&t, TcpFlags::default(), at));
    }

    fn lookup(&mut self, n: u64) -> u64 {
        for _ in 0..n {
            self.established();
        }
        n
    }

    fn mixed(&mut self, n: u64) -> u64 {
        for i in 0..n {
            let r = self.rng.random_range(0..100);
            if r < 80 {
                self.established();
            } else if r < 95 {
                // New flows live in their own space, apart from the established ones.
                let t = flow_to(self.w, self.next, 5353);
                self.next += 1;
                let conn = match self.new_flow(t, None) {
                    Some(Confirm::Inserted(h)) => Some(h.conn),
                    _ => None,
                };
                self.rotate(conn);
            } else {
                self.rotate(None);
            }
            if self.w == 0 && i % 1024 == 0 {
                let at = self.at();
                self.table.gc(at, 64);
            }
        }
        n
    }
}

/// What must hold after any run, whatever the interleaving: the table's
/// count matches its entries and its inserts − removals, stays within
/// `max`, and every entry is found by its tuples (a NAT_CLASH entry by its
/// reply tuple only), no tuple held twice.
pub fn check_invariants(table: &Conntrack) -> Result<(), String> {
    let at = At::new(0, 0);
    let entries = table.entries(at);
    let (inserted, removed) = table.lifetime();
    if table.count() != entries.len() {
        return Err(format!("count {} but {} entries in the table", table.count(), entries.len()));
    }
    if inserted - removed != table.count() as u64 {
        return Err(format!("{inserted} inserted - {removed} removed != count {}", table.count()));
    }
    if table.count() > table.max() {
        return Err(format!("count {} over max {}", table.count(), table.max()));
    }
    let mut seen = std::collections::HashSet::new();
    for e in &entries {
        let clash = e.status.contains(crate::Status::NAT_CLASH);
        if (!clash && !seen.insert(e.orig)) || !seen.insert(e.reply) {
            return Err(format!("a tuple of {} is held twice", e.orig));
        }
        if table.lookup(&e.reply, at).map(|h| h.conn) != Some(e.conn)
            || (!clash && table.lookup(&e.orig, at).map(|h| h.conn) != Some(e.conn))
        {
            return Err(format!("{} is not found by its tuples", e.orig));
        }
    }
    Ok(())
}
