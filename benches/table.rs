//! Benchmarks of the conntrack table, with the baselines in the same
//! criterion group so a ratio is read from one run:
//! - `mutex_hashmap`: `parking_lot::Mutex<HashMap>` with the same hasher (ahash);
//! - `dashmap`: a sharded `DashMap`, the usual concurrent-map baseline.
//!
//! Both baselines index both tuples of every connection, as the table does.
//! Run with `cargo bench --bench table`; figures are in `docs/performance.md`.

#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::collections::HashMap;
use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dashmap::DashMap;
use parking_lot::Mutex;
use racetrack_engine::nat::{Allocator, Rovers, Snat, SnatFlags};
use racetrack_engine::profile::preset;
use racetrack_engine::{At, Confirm, ConnRef, Conntrack, KernelProfile, TcpFlags, Tuple};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_pcg::Pcg64Mcg;

type Hasher = ahash::RandomState;

fn hasher() -> Hasher {
    ahash::RandomState::with_seeds(1, 2, 3, 4)
}

/// What a baseline stores per connection: about what a conntrack entry holds.
#[derive(Clone, Copy)]
#[allow(dead_code)]
struct Entry {
    orig: Tuple,
    reply: Tuple,
    status: u32,
    timeout: u64,
}

const SERVICE: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

/// The i-th distinct flow: a UDP query from one of 2^16 clients, DNATed.
fn flow(i: u32) -> (Tuple, Tuple) {
    let client = Ipv4Addr::from(0x0a00_0000 | (i >> 14));
    let sport = 1024 + (i & 0x3fff) as u16;
    let orig = Tuple::udp(client, sport, SERVICE, 53);
    let endpoint = Ipv4Addr::new(10, 245, 0, 2 + (i % 3) as u8);
    let reply = orig.invert().with_src(endpoint.into(), 53);
    (orig, reply)
}

fn profile(entries: u32) -> KernelProfile {
    let mut p = preset("6.1").unwrap();
    p.conntrack.buckets = entries.next_power_of_two();
    p.conntrack.max = entries + entries / 4;
    p.conntrack.chain_limit = None;
    p
}

fn at(cpu: usize) -> At {
    At::new(cpu, 1_000_000)
}

fn filled_table(n: u32) -> Conntrack {
    let t = Conntrack::new(profile(n), 2, 7);
    let mut rng = Pcg64Mcg::seed_from_u64(1);
    for i in 0..n {
        let (orig, reply) = flow(i);
        let mut ct = t.new_conn(orig, TcpFlags::default(), at(0)).unwrap();
        ct.dnat(reply.src, reply.sport);
        assert!(matches!(t.confirm(ct, at(0), &mut rng), Confirm::Inserted(_)));
    }
    t
}

fn filled_mutex(n: u32) -> Mutex<HashMap<Tuple, Entry, Hasher>> {
    let mut m = HashMap::with_capacity_and_hasher(2 * n as usize, hasher());
    for i in 0..n {
        let (orig, reply) = flow(i);
        let e = Entry { orig, reply, status: 0, timeout: 0 };
        m.insert(orig, e);
        m.insert(reply, e);
    }
    Mutex::new(m)
}

fn filled_dashmap(n: u32) -> DashMap<Tuple, Entry, Hasher> {
    let m = DashMap::with_capacity_and_hasher(2 * n as usize, hasher());
    for i in 0..n {
        let (orig, reply) = flow(i);
        let e = Entry { orig, reply, status: 0, timeout: 0 };
        m.insert(orig, e);
        m.insert(reply, e);
    }
    m
}

/// Keys to look up, in a random order (both directions), fixed before timing.
fn keys(n: u32) -> Vec<Tuple> {
    let mut k: Vec<Tuple> = (0..n.min(1 << 16) * 2)
        .map(|j| {
            let i = (j / 2).wrapping_mul(2_654_435_761) % n;
            let (o, r) = flow(i);
            if j % 2 == 0 {
                o
            } else {
                r
            }
        })
        .collect();
    k.shuffle(&mut Pcg64Mcg::seed_from_u64(9));
    k
}

/// Run `per_thread(thread, iters)` on `threads` threads at once; the wall time.
fn parallel(threads: usize, iters: u64, per_thread: &(impl Fn(usize, u64) + Sync)) -> Duration {
    let barrier = std::sync::Barrier::new(threads + 1);
    std::thread::scope(|s| {
        for t in 0..threads {
            let barrier = &barrier;
            s.spawn(move || {
                barrier.wait();
                per_thread(t, iters);
            });
        }
        barrier.wait();
        let start = Instant::now();
        // Scoped threads are joined when the scope ends.
        start
    })
    .elapsed()
}

fn lookup_hit(c: &mut Criterion) {
    let mut g = c.benchmark_group("table");
    g.sample_size(20).measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    for (label, n) in [("10k", 10_000u32), ("1M", 1_000_000)] {
        let keys = keys(n);
        let table = filled_table(n);
        let mutex = filled_mutex(n);
        let dash = filled_dashmap(n);
        for threads in [1usize, 2] {
            g.throughput(Throughput::Elements(threads as u64));
            let id = |imp: &str| BenchmarkId::new(format!("lookup_hit/{imp}"), format!("{label}/{threads}t"));
            g.bench_function(id("racetrack"), |b| {
                b.iter_custom(|iters| {
                    parallel(threads, iters, &|t, iters| {
                        let a = at(t);
                        for i in 0..iters as usize {
                            black_box(table.lookup(&keys[(i + t * 7919) % keys.len()], a));
                        }
                    })
                })
            });
            g.bench_function(id("mutex_hashmap"), |b| {
                b.iter_custom(|iters| {
                    parallel(threads, iters, &|t, iters| {
                        for i in 0..iters as usize {
                            let k = &keys[(i + t * 7919) % keys.len()];
                            black_box(mutex.lock().get(k).copied());
                        }
                    })
                })
            });
            g.bench_function(id("dashmap"), |b| {
                b.iter_custom(|iters| {
                    parallel(threads, iters, &|t, iters| {
                        for i in 0..iters as usize {
                            let k = &keys[(i + t * 7919) % keys.len()];
                            black_box(dash.get(k).map(|e| *e));
                        }
                    })
                })
            });
        }
    }
    g.finish();
}

/// A new flow at steady state: lookup miss, create, confirm, and the oldest
/// flow expires (is removed), so 10k stay live.
fn new_flow(c: &mut Criterion) {
    let mut g = c.benchmark_group("table");
    g.sample_size(20).measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    g.throughput(Throughput::Elements(1));
    const LIVE: u32 = 10_000;
    const SPACE: u32 = 1 << 20;
    g.bench_function(BenchmarkId::new("new_flow/racetrack", "10k"), |b| {
        let t = Conntrack::new(profile(LIVE * 2), 1, 7);
        let mut rng = Pcg64Mcg::seed_from_u64(1);
        let mut ring: Vec<Option<ConnRef>> = vec![None; LIVE as usize];
        let mut next = 0u32;
        b.iter(|| {
            let (orig, reply) = flow(next % SPACE);
            let slot = (next % LIVE) as usize;
            next = next.wrapping_add(1);
            if let Some(old) = ring[slot].take() {
                t.kill(old, at(0));
            }
            if t.lookup(&orig, at(0)).is_none() {
                let mut ct = t.new_conn(orig, TcpFlags::default(), at(0)).unwrap();
                ct.dnat(reply.src, reply.sport);
                if let Confirm::Inserted(h) = t.confirm(ct, at(0), &mut rng) {
                    ring[slot] = Some(h.conn);
                }
            }
        })
    });
    g.bench_function(BenchmarkId::new("new_flow/mutex_hashmap", "10k"), |b| {
        let m = Mutex::new(HashMap::with_capacity_and_hasher(4 * LIVE as usize, hasher()));
        let mut ring: Vec<Option<(Tuple, Tuple)>> = vec![None; LIVE as usize];
        let mut next = 0u32;
        b.iter(|| {
            let (orig, reply) = flow(next % SPACE);
            let slot = (next % LIVE) as usize;
            next = next.wrapping_add(1);
            if let Some((o, r)) = ring[slot].take() {
                let mut g = m.lock();
                g.remove(&o);
                g.remove(&r);
            }
            if m.lock().get(&orig).is_none() {
                let e = Entry { orig, reply, status: 0, timeout: 0 };
                let mut g = m.lock();
                g.insert(orig, e);
                g.insert(reply, e);
                ring[slot] = Some((orig, reply));
            }
        })
    });
    g.bench_function(BenchmarkId::new("new_flow/dashmap", "10k"), |b| {
        let m: DashMap<Tuple, Entry, Hasher> = DashMap::with_capacity_and_hasher(4 * LIVE as usize, hasher());
        let mut ring: Vec<Option<(Tuple, Tuple)>> = vec![None; LIVE as usize];
        let mut next = 0u32;
        b.iter(|| {
            let (orig, reply) = flow(next % SPACE);
            let slot = (next % LIVE) as usize;
            next = next.wrapping_add(1);
            if let Some((o, r)) = ring[slot].take() {
                m.remove(&o);
                m.remove(&r);
            }
            if m.get(&orig).is_none() {
                let e = Entry { orig, reply, status: 0, timeout: 0 };
                m.insert(orig, e);
                m.insert(reply, e);
                ring[slot] = Some((orig, reply));
            }
        })
    });
    g.finish();
}

/// One SNAT allocation against a table where a share of the 64512 ports to
/// one destination is held by confirmed connections.
fn snat_allocation(c: &mut Criterion) {
    let mut g = c.benchmark_group("table");
    g.sample_size(20).measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    g.throughput(Throughput::Elements(1));
    let node = Ipv4Addr::new(192, 0, 2, 1);
    let server = Ipv4Addr::new(203, 0, 113, 80);
    for occupancy in [50u32, 95] {
        let t = Conntrack::new(profile(70_000), 1, 7);
        let mut rng = Pcg64Mcg::seed_from_u64(1);
        let mut ports: Vec<u16> = (1024..=65535).collect();
        ports.shuffle(&mut rng);
        for (i, &port) in ports.iter().take(ports.len() * occupancy as usize / 100).enumerate() {
            let orig = Tuple::tcp(Ipv4Addr::from(0x0a00_0000 + i as u32), 40000, server, 80);
            let mut ct = t.new_conn(orig, TcpFlags::SYN, at(0)).unwrap();
            ct.snat(node.into(), port);
            assert!(t.confirm(ct, at(0), &mut rng).accepted());
        }
        for (name, flags) in
            [("default", SnatFlags::default()), ("random_fully", SnatFlags { random: false, random_fully: true })]
        {
            let snat = Snat { to_source: vec![node.into()], range: None, flags, allocator: Allocator::Kernel };
            let rovers = Rovers::default();
            let nat = t.profile().nat.clone();
            let mut i = 0u32;
            g.bench_function(BenchmarkId::new(format!("snat_allocation/{name}"), format!("{occupancy}%")), |b| {
                b.iter(|| {
                    i = i.wrapping_add(1);
                    let orig = Tuple::tcp(Ipv4Addr::new(172, 16, (i >> 8) as u8, i as u8), 40000, server, 80);
                    let reply = orig.invert();
                    black_box(snat.allocate(&orig, &reply, &nat, &rovers, 1, 0, 1, &mut rng, |cand, harder| {
                        t.tuple_taken(cand, &orig, harder, at(0))
                    }))
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, lookup_hit, new_flow, snat_allocation);
criterion_main!(benches);
