//! Baseline tables for `racetrack stress --baselines`: the `lookup` and
//! `mixed` workloads on a `DashMap` and on a `Mutex<HashMap>`, in the same
//! process and the same run as the engine, so a ratio is read at once.
//!
//! Each baseline is the plainest conntrack table one would build on that
//! map: both tuples of every flow are keys (ahash), both leading to one
//! shared [`Conn`] that holds the flow's tuples and its expiry. A packet of
//! a known flow looks its tuple up and refreshes the expiry in place, as the
//! engine's packet does, and under the same rule: the expiry is counted in
//! jiffies of the workers' virtual clock, and it is written only when it
//! changes. They model nothing else of conntrack (no races, no NAT, no
//! counters): they are the speed a plain concurrent map gives for the same
//! access pattern.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_utils::CachePadded;
use dashmap::DashMap;
use parking_lot::Mutex;
use racetrack_engine::threads::{self, spin_work, STEP};
use racetrack_engine::Tuple;
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use serde::Serialize;

type Hasher = ahash::RandomState;

/// A flow, shared by its two keys as a conntrack entry is by its two hash nodes.
#[derive(Debug)]
pub struct Conn {
    /// Original tuple.
    pub orig: Tuple,
    /// Reply tuple.
    pub reply: Tuple,
    /// When it expires, in jiffies.
    pub expires: AtomicU64,
}

impl Conn {
    /// Move the expiry to `expires`; no store when it is there already.
    #[inline]
    fn refresh(&self, expires: u64) {
        if self.expires.load(Ordering::Relaxed) != expires {
            self.expires.store(expires, Ordering::Relaxed);
        }
    }
}

/// The operations the baseline workloads need.
pub trait Map: Sync {
    /// A packet of tuple `t`: if a flow holds it, refresh the flow's expiry
    /// to `expires` and say so.
    fn refresh(&self, t: &Tuple, expires: u64) -> bool;
    /// Insert both tuples of a flow.
    fn insert(&self, c: Arc<Conn>);
    /// Remove both tuples of a flow.
    fn remove(&self, c: &Conn);
    /// The expiry of the flow holding `t`, if any.
    fn expires(&self, t: &Tuple) -> Option<u64>;
}

/// `parking_lot::Mutex<HashMap>`.
pub struct MutexMap(Mutex<HashMap<Tuple, Arc<Conn>, Hasher>>);

/// `DashMap`.
pub struct Dash(DashMap<Tuple, Arc<Conn>, Hasher>);

fn hasher() -> Hasher {
    ahash::RandomState::with_seeds(1, 2, 3, 4)
}

impl MutexMap {
    /// Empty, with room for `n` flows.
    pub fn new(n: usize) -> Self {
        MutexMap(Mutex::new(HashMap::with_capacity_and_hasher(2 * n, hasher())))
    }
}

impl Dash {
    /// Empty, with room for `n` flows.
    pub fn new(n: usize) -> Self {
        Dash(DashMap::with_capacity_and_hasher(2 * n, hasher()))
    }
}

impl Map for MutexMap {
    fn refresh(&self, t: &Tuple, expires: u64) -> bool {
        self.0.lock().get(t).map(|c| c.refresh(expires)).is_some()
    }
    fn insert(&self, c: Arc<Conn>) {
        let mut m = self.0.lock();
        m.insert(c.orig, c.clone());
        m.insert(c.reply, c);
    }
    fn remove(&self, c: &Conn) {
        let mut m = self.0.lock();
        m.remove(&c.orig);
        m.remove(&c.reply);
    }
    fn expires(&self, t: &Tuple) -> Option<u64> {
        self.0.lock().get(t).map(|c| c.expires.load(Ordering::Relaxed))
    }
}

impl Map for Dash {
    fn refresh(&self, t: &Tuple, expires: u64) -> bool {
        self.0.get(t).map(|c| c.refresh(expires)).is_some()
    }
    fn insert(&self, c: Arc<Conn>) {
        self.0.insert(c.orig, c.clone());
        self.0.insert(c.reply, c);
    }
    fn remove(&self, c: &Conn) {
        self.0.remove(&c.orig);
        self.0.remove(&c.reply);
    }
    fn expires(&self, t: &Tuple) -> Option<u64> {
        self.0.get(t).map(|c| c.expires.load(Ordering::Relaxed))
    }
}

/// The baseline workloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Packets of established flows.
    Lookup,
    /// 80 % packets of established flows, 15 % new flows, 5 % removals.
    Mixed,
}

/// One baseline's speed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Speed {
    /// Operations.
    pub ops: u64,
    /// Operations per second (set by the caller, who owns the clock).
    pub ops_per_s: f64,
}

/// One baseline run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// What the workers do.
    pub workload: Workload,
    /// Worker threads.
    pub threads: usize,
    /// Established flows.
    pub flows: u32,
    /// Busy work before a new flow's insert, as the engine's between lookup and confirm.
    pub window_spins: u64,
    /// Worker `i` draws its flows with seed `seed + i`.
    pub seed: u64,
    /// The kernel profile's timer frequency: expiries are in jiffies of `1/hz` s.
    pub hz: u32,
    /// Operations a worker runs between two looks at the stop flag (as the
    /// engine's `StressConfig::batch`).
    pub batch: u64,
}

/// A refreshed flow's timeout, in seconds (the UDP stream timeout). Only
/// whether the expiry moved matters to the speed, not how far.
const TIMEOUT_S: u64 = 120;

/// The original tuple of worker `w`'s `i`-th flow to port `dport`, as the
/// engine's workers number theirs.
fn orig(w: usize, i: u64, dport: u16) -> Tuple {
    let client = Ipv4Addr::from(0x0a00_0000 | ((w as u32 & 0xff) << 16) | ((i >> 14) as u32 & 0xffff));
    Tuple::udp(client, 1024 + (i & 0x3fff) as u16, Ipv4Addr::new(10, 96, 0, 10), dport)
}

/// Worker `w`'s `i`-th flow to port `dport`.
fn flow(w: usize, i: u64, dport: u16) -> Conn {
    let orig = orig(w, i, dport);
    let reply = orig.invert().with_src(Ipv4Addr::new(10, 245, 0, 2).into(), dport);
    Conn { orig, reply, expires: AtomicU64::new(0) }
}

/// Run `cfg` on `map` until `keep_going(ops so far)` is false. Returns the
/// ops done.
pub fn run<M: Map>(map: &M, cfg: &Config, keep_going: impl FnMut(u64) -> bool) -> u64 {
    let threads = cfg.threads.max(1);
    // Worker after worker, as the engine's preload: each worker's entries
    // are allocated side by side.
    for (w, j) in threads::preload_order(cfg.flows, threads) {
        map.insert(Arc::new(flow(w, j, 53)));
    }
    let per = u64::from(cfg.flows) / threads as u64;
    let jiffy_ns = 1_000_000_000 / u64::from(cfg.hz.max(1));
    let timeout = TIMEOUT_S * u64::from(cfg.hz);
    let done: Vec<CachePadded<AtomicU64>> = (0..threads).map(|_| CachePadded::new(AtomicU64::new(0))).collect();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let mut keep_going = keep_going;
    std::thread::scope(|s| {
        for (w, done) in done.iter().enumerate() {
            let stop = &stop;
            s.spawn(move || {
                let mut rng = Pcg64Mcg::seed_from_u64(cfg.seed + w as u64);
                let mut ring: Vec<Option<Arc<Conn>>> = vec![None; (cfg.flows as usize / threads).max(1)];
                let (mut at, mut next, mut ops, mut now) = (0usize, 0u64, 0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..cfg.batch.max(1) {
                        // The engine's workers advance their clocks by the same step.
                        now += STEP;
                        let expires = now / jiffy_ns + timeout;
                        let r = if cfg.workload == Workload::Lookup { 0 } else { rng.random_range(0..100) };
                        if r < 80 {
                            if per > 0 {
                                // A packet needs only its own tuple, as the engine's worker builds only that.
                                let t = orig(w, rng.random_range(0..per), 53);
                                std::hint::black_box(map.refresh(&t, expires));
                            }
                        } else {
                            let new = (r < 95).then(|| {
                                let c = flow(w, next, 5353);
                                next += 1;
                                c.expires.store(expires, Ordering::Relaxed);
                                let c = Arc::new(c);
                                if !map.refresh(&c.orig, expires) {
                                    spin_work(cfg.window_spins);
                                    map.insert(c.clone());
                                }
                                c
                            });
                            if let Some(old) = std::mem::replace(&mut ring[at], new) {
                                map.remove(&old);
                            }
                            at = (at + 1) % ring.len();
                        }
                        ops += 1;
                    }
                    done.store(ops, Ordering::Relaxed);
                }
            });
        }
        while keep_going(done.iter().map(|d| d.load(Ordering::Relaxed)).sum()) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        stop.store(true, Ordering::Relaxed);
    });
    done.iter().map(|d| d.load(Ordering::Relaxed)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(workload: Workload) -> Config {
        Config { workload, threads: 2, flows: 1000, window_spins: 0, seed: 1, hz: 250, batch: 1024 }
    }

    fn check<M: Map>(m: &M, workload: Workload) {
        let c = cfg(workload);
        assert!(run(m, &c, |n| n < 20_000) >= 20_000);
        // The scheduler may have run one worker far longer than the other
        // (even alone, if the first finished the 20 000 before the second
        // started), so nothing below assumes a given worker ran: only that
        // one of the two did at least half of the operations.
        let workers = 0..c.threads;
        let per = u64::from(c.flows) / c.threads as u64;
        // Established flows are never removed: both tuples of each stay,
        // and both lead to the one shared flow.
        let mut expiries = Vec::new();
        for f in workers.clone().flat_map(|w| (0..per).map(move |i| flow(w, i, 53))) {
            let (o, r) = (m.expires(&f.orig), m.expires(&f.reply));
            assert!(o.is_some() && o == r, "{}: {o:?} {r:?}", f.orig);
            expiries.extend(o);
        }
        // Packets refreshed the flows: some expiry moved past the preload's 0,
        // to the jiffy of the clock then plus the timeout.
        assert!(expiries.iter().any(|&e| e > 0), "no flow was refreshed");
        assert!(expiries.iter().all(|&e| e == 0 || e >= TIMEOUT_S * u64::from(c.hz)));
        // New flows of `mixed` live on port 5353 and are removed in turn:
        // the worker that did half of the 20 000 operations moved round its
        // 500-entry ring about 2 000 times (a fifth of its operations), so
        // its first new flow has been replaced and removed.
        // `lookup` never makes one.
        let first_new = |w| m.expires(&flow(w, 0, 5353).orig);
        match workload {
            Workload::Lookup => assert!(workers.clone().all(|w| first_new(w).is_none())),
            Workload::Mixed => assert!(workers.clone().any(|w| first_new(w).is_none())),
        }
    }

    #[test]
    fn both_baselines_run_both_workloads_refresh_and_keep_their_flows() {
        for workload in [Workload::Lookup, Workload::Mixed] {
            check(&MutexMap::new(1000), workload);
            check(&Dash::new(1000), workload);
        }
    }

    #[test]
    fn a_refresh_moves_the_shared_expiry_and_ignores_unknown_tuples() {
        let m = Dash::new(1);
        let c = Arc::new(flow(0, 0, 53));
        m.insert(c.clone());
        assert!(m.refresh(&c.reply, 7));
        assert_eq!(m.expires(&c.orig), Some(7));
        assert!(!m.refresh(&flow(0, 1, 53).orig, 9), "an unknown tuple is not refreshed");
        assert_eq!(m.expires(&c.orig), Some(7));
    }
}
