//! loom models of the table's concurrent protocols.
//!
//! Run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p racetrack-engine --release --test loom --target-dir target/loom`
//! (`scripts/test` does). Each model is small (two threads, a one- to four-bucket
//! table) and named after the interleaving it checks.
#![cfg(loom)]

use std::net::Ipv4Addr;

use loom::sync::atomic::{AtomicBool, Ordering};
use loom::sync::Arc;
use loom::thread;
use racetrack_engine::profile::preset;
use racetrack_engine::{At, Confirm, Conntrack, Dir, Hit, KernelProfile, Stat, Status, TcpFlags, Tuple};
use rand::SeedableRng;
use rand_pcg::Pcg64Mcg;

fn tiny(name: &str, max: u32) -> KernelProfile {
    let mut p = preset(name).unwrap();
    p.conntrack.buckets = 4;
    p.conntrack.max = max;
    p.conntrack.chain_limit = None;
    p
}

fn query(sport: u16) -> Tuple {
    Tuple::udp(Ipv4Addr::new(10, 0, 0, 1), sport, Ipv4Addr::new(10, 96, 0, 10), 53)
}

const ENDPOINT: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);

/// A two-CPU table of `kernel` with room for `max` entries, holding one
/// flow, `query(1)`, confirmed by CPU 0 at time 0: the table, that flow's
/// entry, and the generator that confirmed it (`seed`).
fn with_one_flow(kernel: &str, max: u32, seed: u64) -> (Arc<Conntrack>, Hit, Pcg64Mcg) {
    let t = Arc::new(Conntrack::new(tiny(kernel, max), 2, 1));
    let mut rng = Pcg64Mcg::seed_from_u64(seed);
    let ct = t.new_conn(query(1), TcpFlags::default(), At::new(0, 0)).unwrap();
    let Confirm::Inserted(hit) = t.confirm(ct, At::new(0, 0), &mut rng) else {
        panic!("the first flow was not inserted")
    };
    (t, hit, rng)
}

/// One packet's path: lookup; on a miss, DNAT to `ENDPOINT` and confirm.
/// `None` when the lookup found the connection.
fn packet(t: &Conntrack, cpu: usize, tuple: Tuple) -> Option<Confirm> {
    let at = At::new(cpu, 1_000);
    if t.lookup(&tuple, at).is_some() {
        return None;
    }
    let mut ct = t.new_conn(tuple, TcpFlags::default(), at).expect("room");
    ct.dnat(ENDPOINT.into(), 53);
    Some(t.confirm(ct, at, &mut Pcg64Mcg::seed_from_u64(cpu as u64)))
}

/// The table is consistent: `count` equals the live entries, and every
/// entry is found by both its tuples.
fn check_consistent(t: &Conntrack, now: u64) {
    let at = At::new(0, now);
    let entries = t.entries(at);
    assert_eq!(t.count(), entries.len());
    for e in &entries {
        assert_eq!(t.lookup(&e.orig, at).map(|h| h.conn), Some(e.conn));
        assert_eq!(t.lookup(&e.reply, at).map(|h| h.conn), Some(e.conn));
    }
}

/// Race the following: two CPUs confirm the same UDP tuple, DNATed to the
/// same endpoint, on a kernel that merges (5.10). Exactly one entry is
/// inserted; the other packet is merged into it or found it; counters add up.
#[test]
fn race_two_cpus_confirm_one_tuple_merge() {
    loom::model(|| {
        let t = Arc::new(Conntrack::new(tiny("5.10", 8), 2, 1));
        let t2 = t.clone();
        let h = thread::spawn(move || packet(&t2, 1, query(5353)));
        let a = packet(&t, 0, query(5353));
        let b = h.join().unwrap();
        let outcomes = [a, b];
        let inserted = outcomes.iter().filter(|o| matches!(o, Some(Confirm::Inserted(_)))).count();
        let merged = outcomes.iter().filter(|o| matches!(o, Some(Confirm::Merged(_)))).count();
        let found = outcomes.iter().filter(|o| o.is_none()).count();
        assert_eq!(inserted, 1, "{outcomes:?}");
        assert_eq!(merged + found, 1, "{outcomes:?}");
        let s = t.stats();
        // 5.10 does not count `insert`: the table's own tally says one entry was linked.
        assert_eq!((s.get(Stat::Insert), t.lifetime().0), (0, 1));
        assert_eq!(s.get(Stat::ClashResolve), merged as u64);
        assert_eq!(s.get(Stat::InsertFailed) + s.get(Stat::Drop), 0);
        check_consistent(&t, 1_000);
    });
}

/// Race the following: the same two confirms on a kernel that drops DNATed
/// clashes (4.14): one inserted, the other dropped with `insert_failed` and
/// `drop`, or it found the entry.
#[test]
fn race_two_cpus_confirm_one_tuple_drop() {
    loom::model(|| {
        let t = Arc::new(Conntrack::new(tiny("4.14", 8), 2, 1));
        let t2 = t.clone();
        let h = thread::spawn(move || packet(&t2, 1, query(5353)));
        let a = packet(&t, 0, query(5353));
        let b = h.join().unwrap();
        let outcomes = [a, b];
        let inserted = outcomes.iter().filter(|o| matches!(o, Some(Confirm::Inserted(_)))).count();
        let dropped = outcomes.iter().filter(|o| matches!(o, Some(Confirm::Dropped(_)))).count() as u64;
        assert_eq!(inserted, 1, "{outcomes:?}");
        let s = t.stats();
        assert_eq!((s.get(Stat::InsertFailed), s.get(Stat::Drop)), (dropped, dropped));
        check_consistent(&t, 1_000);
    });
}

/// Race the following: GC reaps an expired entry while another CPU creates
/// and confirms a new connection with the same tuple. Whatever the order, at
/// most one live entry remains, it is the new one if that was inserted, and
/// `count` matches the entries.
#[test]
fn race_confirm_against_gc_expiry() {
    loom::model(|| {
        let (t, _, mut rng) = with_one_flow("6.1", 8, 9);
        let later = 31_000_000_000; // past the 30 s UDP timeout
        let t2 = t.clone();
        let gc = thread::spawn(move || t2.gc(At::new(1, later), 4).reaped);
        let at = At::new(0, later);
        let ct = t.new_conn(query(1), TcpFlags::default(), at).unwrap();
        let outcome = t.confirm(ct, at, &mut rng);
        let reaped = gc.join().unwrap();
        assert!(reaped <= 1);
        let entries = t.entries(at);
        match outcome {
            Confirm::Inserted(h) => {
                assert_eq!(entries.iter().filter(|e| e.expires > at.now).map(|e| e.conn).collect::<Vec<_>>(), [h.conn])
            }
            // The expired entry was still there at confirm (the kernel
            // clashes with it too) and the new packet merged into it.
            Confirm::Merged(_) => assert!(entries.iter().all(|e| e.expires <= at.now)),
            other => panic!("{other:?}"),
        }
        assert_eq!(t.count(), entries.len());
    });
}

/// Race the following: the table is full (max 1) with one unassured entry;
/// two CPUs each need room for a new connection. Early drop evicts the old
/// entry; the table never ends with more than `max` entries, and the
/// counters agree with what each CPU saw.
#[test]
fn race_new_conns_against_early_drop_at_max() {
    loom::model(|| {
        let (t, _, mut rng) = with_one_flow("6.1", 1, 3);
        let t2 = t.clone();
        let h = thread::spawn(move || {
            let at = At::new(1, 10);
            match t2.new_conn(query(2), TcpFlags::default(), at) {
                Ok(ct) => t2.confirm(ct, at, &mut Pcg64Mcg::seed_from_u64(1)).accepted(),
                Err(_) => false,
            }
        });
        let at = At::new(0, 10);
        let mine = match t.new_conn(query(3), TcpFlags::default(), at) {
            Ok(ct) => t.confirm(ct, at, &mut rng).accepted(),
            Err(_) => false,
        };
        let theirs = h.join().unwrap();
        let s = t.stats();
        assert!(t.count() <= 1, "count {} over max", t.count());
        assert!(s.get(Stat::EarlyDrop) >= 1, "the old entry must have been evicted");
        // Entries linked: the preloaded one and each accepted new connection.
        assert_eq!(u64::from(mine) + u64::from(theirs), t.lifetime().0 - 1);
        check_consistent(&t, 10);
    });
}

/// Race the following: a lockless lookup of tuple A while another CPU
/// removes A's entry and a new connection B reuses its slot. The reader sees
/// A whole, or nothing: never B's data under A's key.
#[test]
fn race_lookup_against_remove_and_slot_reuse() {
    loom::model(|| {
        let (t, a, _) = with_one_flow("6.1", 8, 5);
        let t2 = t.clone();
        let h = thread::spawn(move || {
            let at = At::new(1, 5);
            assert!(t2.kill(a.conn, at));
            let b = t2.new_conn(query(2), TcpFlags::default(), at).unwrap();
            t2.confirm(b, at, &mut Pcg64Mcg::seed_from_u64(2)).accepted()
        });
        if let Some(hit) = t.lookup(&query(1), At::new(0, 5)) {
            assert_eq!(hit.orig, query(1));
            assert_eq!(hit.conn, a.conn);
        }
        assert!(h.join().unwrap());
        assert!(t.lookup(&query(1), At::new(0, 5)).is_none());
        check_consistent(&t, 5);
    });
}

/// Race the following: a lockless lookup of C, which stays in the table,
/// while another CPU removes A, C's neighbour on the table's one chain, and
/// a new connection B reuses A's slot and goes to the chain's head. The walk
/// passes A's nodes by their link words alone (their hash tags differ from
/// C's), without reading A's slot or its `seq`: it must still find C every
/// time, and `track` must refresh C, not B.
#[test]
fn race_lookup_past_a_neighbour_removed_and_reused() {
    loom::model(|| {
        let mut p = tiny("6.1", 8);
        p.conntrack.buckets = 1;
        let t = Arc::new(Conntrack::new(p, 2, 1));
        let at = At::new(0, 0);
        let insert = |sport| {
            let ct = t.new_conn(query(sport), TcpFlags::default(), at).unwrap();
            let Confirm::Inserted(h) = t.confirm(ct, at, &mut Pcg64Mcg::seed_from_u64(1)) else {
                panic!("not inserted")
            };
            h
        };
        let c = insert(3);
        // Inserted last, so its nodes come first on the chain: head → A → C.
        let a = insert(1);
        // The walker is the spawned thread, so that loom, which backtracks
        // from a load to the stores before it, interleaves the walk's loads
        // with every store of the removal and the reuse.
        let t2 = t.clone();
        let h = thread::spawn(move || t2.track(&query(3), TcpFlags::default(), At::new(1, 5)).map(|f| f.conn));
        assert!(t.kill(a.conn, At::new(0, 5)));
        let b = t.new_conn(query(2), TcpFlags::default(), At::new(0, 5)).unwrap();
        assert!(t.confirm(b, At::new(0, 5), &mut Pcg64Mcg::seed_from_u64(2)).accepted());
        assert_eq!(h.join().unwrap(), Some(c.conn), "C was in the table throughout");
        check_consistent(&t, 5);
    });
}

/// Race the following: at `nf_conntrack_max`, one CPU's free unit of the
/// count sits with the other CPU (a connection it created and dropped)
/// while both CPUs ask for room: CPU 0 twice, CPU 1 once, for two units.
/// CPU 0 must take the unit back from CPU 1 or lose it to CPU 1 itself;
/// either way exactly two connections get room, and none is refused while
/// a unit is free.
#[test]
fn race_two_cpus_for_the_last_units_of_the_count() {
    loom::model(|| {
        let t = Arc::new(Conntrack::new(tiny("6.1", 2), 2, 1));
        // CPU 1 creates and drops a connection: its unit stays with CPU 1.
        drop(t.new_conn(query(9), TcpFlags::default(), At::new(1, 0)).unwrap());
        assert_eq!(t.count(), 0);
        let t2 = t.clone();
        // Unconfirmed connections are in no chain, so early drop finds
        // nothing to evict: a refusal is the count's alone.
        // CPU 1 keeps its connection (if it got room) until CPU 0 is done.
        let flags = Arc::new([AtomicBool::new(false), AtomicBool::new(false), AtomicBool::new(false)]);
        let f2 = flags.clone();
        let h = thread::spawn(move || {
            let c = t2.new_conn(query(1), TcpFlags::default(), At::new(1, 1));
            f2[0].store(c.is_ok(), Ordering::Relaxed);
            f2[1].store(true, Ordering::Release);
            while !f2[2].load(Ordering::Acquire) {
                thread::yield_now();
            }
            drop(c);
        });
        let mine: Vec<_> =
            (2..4).filter_map(|p| t.new_conn(query(p), TcpFlags::default(), At::new(0, 1)).ok()).collect();
        while !flags[1].load(Ordering::Acquire) {
            thread::yield_now();
        }
        let theirs = flags[0].load(Ordering::Relaxed);
        assert_eq!(mine.len() + usize::from(theirs), 2, "two units, two connections");
        assert_eq!(t.count(), 2);
        flags[2].store(true, Ordering::Release);
        h.join().unwrap();
        drop(mine);
        assert_eq!(t.count(), 0);
    });
}

/// Race the following: at `nf_conntrack_max`, every free unit of the count
/// sits with CPU 1, which closes one more connection while CPU 0 asks for
/// room twice. CPU 0's first connection must get room (by taking the unit
/// back from CPU 1); the second gets it only if the closing came first;
/// the count is exact at the end.
#[test]
fn race_take_back_units_while_their_cpu_frees_more() {
    loom::model(|| {
        let t = Arc::new(Conntrack::new(tiny("6.1", 2), 2, 1));
        // A: an assured connection of CPU 1 (early drop spares it).
        let mut rng = Pcg64Mcg::seed_from_u64(1);
        let a = t.new_conn(query(8), TcpFlags::default(), At::new(1, 0)).unwrap();
        let Confirm::Inserted(a) = t.confirm(a, At::new(1, 0), &mut rng) else { panic!("not inserted") };
        // A reply long after the first packet: a UDP stream.
        t.update(&Hit { dir: Dir::Reply, ..a }, TcpFlags::default(), At::new(1, 10_000_000_000));
        assert!(t.entries(At::new(1, 0))[0].status.contains(Status::ASSURED));
        drop(t.new_conn(query(9), TcpFlags::default(), At::new(1, 0)).unwrap());
        assert_eq!(t.count(), 1);
        // CPU 1 closes A, giving its unit to CPU 1.
        let t2 = t.clone();
        let h = thread::spawn(move || assert!(t2.kill(a.conn, At::new(1, 1))));
        let first = t.new_conn(query(1), TcpFlags::default(), At::new(0, 1));
        assert!(first.is_ok(), "a unit was free, held by CPU 1");
        let second = t.new_conn(query(2), TcpFlags::default(), At::new(0, 1));
        h.join().unwrap();
        assert_eq!(t.count(), 1 + usize::from(second.is_ok()));
        drop((first, second));
        assert_eq!(t.count(), 0);
    });
}
