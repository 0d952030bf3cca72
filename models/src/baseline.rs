//! Baseline tables for `racetrack stress --baselines`: the `lookup` and
//! `mixed` workloads on a `DashMap` and on a `Mutex<HashMap>`, in the same
//! process and the same run as the engine, so a ratio is read at once.
//!
//! Like the table, each baseline indexes both tuples of every flow and uses
//! ahash. They model nothing of conntrack: they are the speed a plain
//! concurrent map gives for the same access pattern.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_utils::CachePadded;
use dashmap::DashMap;
use parking_lot::Mutex;
use racetrack_engine::Tuple;
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;
use serde::Serialize;

type Hasher = ahash::RandomState;

/// What a baseline stores per flow: about what a conntrack entry holds.
#[derive(Clone, Copy, Debug)]
pub struct Entry {
    /// Original tuple.
    pub orig: Tuple,
    /// Reply tuple.
    pub reply: Tuple,
    /// Last time seen (an op counter).
    pub seen: u64,
}

/// The operations the baseline workloads need.
pub trait Map: Sync {
    /// Look a tuple up; a copy of the entry.
    fn get(&self, t: &Tuple) -> Option<Entry>;
    /// Insert both tuples of a flow.
    fn insert(&self, e: Entry);
    /// Remove both tuples of a flow.
    fn remove(&self, e: &Entry);
}

/// `parking_lot::Mutex<HashMap>`.
pub struct MutexMap(Mutex<HashMap<Tuple, Entry, Hasher>>);

/// `DashMap`.
pub struct Dash(DashMap<Tuple, Entry, Hasher>);

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
    fn get(&self, t: &Tuple) -> Option<Entry> {
        self.0.lock().get(t).copied()
    }
    fn insert(&self, e: Entry) {
        let mut m = self.0.lock();
        m.insert(e.orig, e);
        m.insert(e.reply, e);
    }
    fn remove(&self, e: &Entry) {
        let mut m = self.0.lock();
        m.remove(&e.orig);
        m.remove(&e.reply);
    }
}

impl Map for Dash {
    fn get(&self, t: &Tuple) -> Option<Entry> {
        self.0.get(t).map(|e| *e)
    }
    fn insert(&self, e: Entry) {
        self.0.insert(e.orig, e);
        self.0.insert(e.reply, e);
    }
    fn remove(&self, e: &Entry) {
        self.0.remove(&e.orig);
        self.0.remove(&e.reply);
    }
}

/// The baseline workloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Lookups of established flows.
    Lookup,
    /// 80 % lookups, 15 % new flows, 5 % removals.
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

fn flow(w: usize, i: u64, dport: u16) -> (Tuple, Tuple) {
    let client = Ipv4Addr::from(0x0a00_0000 | ((w as u32 & 0xff) << 16) | ((i >> 14) as u32 & 0xffff));
    let orig = Tuple::udp(client, 1024 + (i & 0x3fff) as u16, Ipv4Addr::new(10, 96, 0, 10), dport);
    let reply = orig.invert().with_src(Ipv4Addr::new(10, 245, 0, 2).into(), dport);
    (orig, reply)
}

/// Run `workload` on `map` with `threads` threads, `flows` established
/// flows, until `keep_going(ops so far)` is false. A new flow does
/// `window_spins` of busy work before its insert, as the engine's does
/// between lookup and confirm. Returns the ops done.
pub fn run<M: Map>(
    map: &M,
    workload: Workload,
    threads: usize,
    flows: u32,
    window_spins: u64,
    seed: u64,
    keep_going: impl FnMut(u64) -> bool,
) -> u64 {
    let threads = threads.max(1);
    for i in 0..u64::from(flows) {
        let w = (i % threads as u64) as usize;
        let (orig, reply) = flow(w, i / threads as u64, 53);
        map.insert(Entry { orig, reply, seen: 0 });
    }
    let per = u64::from(flows) / threads as u64;
    let done: Vec<CachePadded<AtomicU64>> = (0..threads).map(|_| CachePadded::new(AtomicU64::new(0))).collect();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let mut keep_going = keep_going;
    std::thread::scope(|s| {
        for (w, done) in done.iter().enumerate() {
            let stop = &stop;
            s.spawn(move || {
                let mut rng = Pcg64Mcg::seed_from_u64(seed + w as u64);
                let mut ring: Vec<Option<Entry>> = vec![None; (flows as usize / threads).max(1)];
                let (mut at, mut next, mut ops) = (0usize, 0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    for _ in 0..1024 {
                        let r = if workload == Workload::Lookup { 0 } else { rng.random_range(0..100) };
                        if r < 80 {
                            if per > 0 {
                                let (t, _) = flow(w, rng.random_range(0..per), 53);
                                std::hint::black_box(map.get(&t));
                            }
                        } else {
                            let new = (r < 95).then(|| {
                                let (orig, reply) = flow(w, next, 5353);
                                next += 1;
                                if map.get(&orig).is_none() {
                                    racetrack_engine::threads::spin_work(window_spins);
                                    map.insert(Entry { orig, reply, seen: ops });
                                }
                                Entry { orig, reply, seen: ops }
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

    #[test]
    fn both_baselines_run_both_workloads_and_keep_their_flows() {
        for workload in [Workload::Lookup, Workload::Mixed] {
            let m = MutexMap::new(1000);
            assert!(run(&m, workload, 2, 1000, 0, 1, |n| n < 20_000) >= 20_000);
            // Established flows are never removed: both tuples of each stay.
            let (o, r) = flow(0, 3, 53);
            assert!(m.get(&o).is_some() && m.get(&r).is_some());
            let d = Dash::new(1000);
            assert!(run(&d, workload, 2, 1000, 0, 1, |n| n < 20_000) >= 20_000);
            assert!(d.get(&o).is_some());
        }
    }
}
