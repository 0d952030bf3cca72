//! Two packets, an explicit interleaving of their packet-path stages, every
//! preset: the outcome of each packet and every counter.
//!
//! The expectations are written from the kernel's behaviour as
//! `reference/kernel.md` §1a and §3 describe it, grouped by generation, not
//! computed from the profile fields the engine reads, so a preset with a
//! wrong field fails here.

use std::net::{IpAddr, Ipv4Addr};

use racetrack_engine::profile::{preset, preset_names};
use racetrack_engine::{At, ClashCause, Confirm, Conntrack, DropReason, Hit, Stat, TcpFlags, Tuple, Unconfirmed};
use rand::SeedableRng;
use rand_pcg::Pcg64Mcg;

/// How a kernel generation handles a confirm-time clash and counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Gen {
    /// 3.10, 4.4: always drop; only `insert_failed` moves.
    DropAlways,
    /// 4.9, 4.14, RHEL 7.8: merge UDP only if the winner has no NAT; `drop` on failure.
    MergeNoNat,
    /// 4.19, 4.14.173, 5.0 – 5.4: merge identical NATed entries too.
    MergeMatching,
    /// 5.6 – 5.9: NAT_CLASH insert; a merge counts `insert_failed`, a NAT_CLASH insert nothing.
    NatClashOldCounters,
    /// 5.10+: `clash_resolve` counts both resolutions.
    NatClash,
}

fn generation(kernel: &str) -> Gen {
    match kernel {
        "3.10" | "4.4" => Gen::DropAlways,
        "4.9" | "4.14" => Gen::MergeNoNat,
        "rhel-7.8" | "4.14.173" | "4.19" | "5.0" | "5.4" | "5.4.172" => Gen::MergeMatching,
        "5.6" => Gen::NatClashOldCounters,
        "5.10" | "5.15" | "6.1" | "6.6" | "6.12" => Gen::NatClash,
        other => panic!("preset {other} has no expectation: add it to this test"),
    }
}

/// 4e35c1cb9460 (5.0) and its backports (4.14.173, RHEL 7.8): a NAT probe ignores the same flow's entry.
fn same_origin_rule(kernel: &str) -> bool {
    matches!(
        kernel,
        "rhel-7.8" | "4.14.173" | "5.0" | "5.4" | "5.4.172" | "5.6" | "5.10" | "5.15" | "6.1" | "6.6" | "6.12"
    )
}

/// Kernels that count `found` on every lookup hit.
fn found_on_lookup(kernel: &str) -> bool {
    matches!(kernel, "3.10" | "rhel-7.8" | "4.4")
}

/// From 4.9 confirm no longer counts `insert` (4.8.15 against 4.9.0).
fn counts_insert(kernel: &str) -> bool {
    matches!(kernel, "3.10" | "rhel-7.8" | "4.4")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Found,
    Inserted,
    Merged,
    NatClash,
    Dropped(ClashCause),
}

fn outcome(c: &Confirm) -> Outcome {
    match c {
        Confirm::Inserted(_) => Outcome::Inserted,
        Confirm::Merged(_) => Outcome::Merged,
        Confirm::NatClash(_) => Outcome::NatClash,
        Confirm::Dropped(DropReason::Clash { cause, .. }) => Outcome::Dropped(*cause),
        Confirm::Dropped(other) => panic!("unexpected drop {other:?}"),
    }
}

/// The counters a kernel generation moves for a list of packet outcomes plus
/// `taken` NAT probes that found their tuple in use.
fn expected_counters(kernel: &str, outcomes: &[Outcome], taken: u64) -> Vec<(Stat, u64)> {
    let g = generation(kernel);
    let (mut insert, mut found, mut failed, mut drop, mut resolve) = (0, taken, 0, 0, 0);
    for o in outcomes {
        match o {
            Outcome::Found if found_on_lookup(kernel) => found += 1,
            Outcome::Found => {}
            Outcome::Inserted => insert += u64::from(counts_insert(kernel)),
            Outcome::Merged if g == Gen::NatClash => resolve += 1,
            Outcome::Merged => failed += 1,
            Outcome::NatClash if g == Gen::NatClash => resolve += 1,
            Outcome::NatClash => {}
            Outcome::Dropped(_) => {
                failed += 1;
                drop += u64::from(g != Gen::DropAlways);
            }
        }
    }
    vec![
        (Stat::Found, found),
        (Stat::Invalid, 0),
        (Stat::Insert, insert),
        (Stat::InsertFailed, failed),
        (Stat::Drop, drop),
        (Stat::EarlyDrop, 0),
        (Stat::Error, 0),
        (Stat::SearchRestart, 0),
        (Stat::ClashResolve, resolve),
        (Stat::ChainTooLong, 0),
    ]
}

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const CLIENT2: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const SERVICE: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const ENDPOINTS: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 1, 0, 2), Ipv4Addr::new(10, 1, 0, 3)];
const NODE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const SERVER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 80);

/// A stage of one packet's path.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// Conntrack in: lookup, and on a miss a new unconfirmed entry.
    Lookup(usize),
    /// NAT on the unconfirmed entry.
    Nat(usize),
    /// Confirm.
    Confirm(usize),
}
use Step::{Confirm as C, Lookup as L, Nat as N};

/// What NAT each packet gets.
#[derive(Clone, Copy, Debug)]
enum Nat {
    /// DNAT to `ENDPOINTS[i]`.
    Dnat([usize; 2]),
    /// MASQUERADE to `NODE`, keeping the source port if free, else the next free one.
    Masquerade,
}

struct Packet<'t> {
    tuple: Tuple,
    cpu: usize,
    ct: Option<Unconfirmed<'t>>,
    result: Option<Outcome>,
    hit: Option<Hit>,
}

/// Run `steps` on a fresh table; return each packet's outcome, the number of
/// NAT probes that found a tuple taken, and the table.
fn run(kernel: &str, tuples: [Tuple; 2], nat: Nat, steps: &[Step]) -> (Vec<Outcome>, u64, Vec<Option<Hit>>, Conntrack) {
    let t = Conntrack::new(preset(kernel).unwrap(), 2, 7);
    let mut rng = Pcg64Mcg::seed_from_u64(1);
    let mut taken = 0;
    let outcomes;
    let hits;
    {
        let mut pkts: Vec<Packet<'_>> =
            (0..2).map(|i| Packet { tuple: tuples[i], cpu: i, ct: None, result: None, hit: None }).collect();
        for (time, step) in steps.iter().enumerate() {
            let time = 1_000 + time as u64 * 100;
            match *step {
                L(i) => {
                    let p = &mut pkts[i];
                    let at = At::new(p.cpu, time);
                    match t.lookup(&p.tuple, at) {
                        Some(h) => {
                            p.result = Some(Outcome::Found);
                            p.hit = Some(h);
                        }
                        None => p.ct = Some(t.new_conn(p.tuple, TcpFlags::SYN, at).unwrap()),
                    }
                }
                N(i) => {
                    let p = &mut pkts[i];
                    let at = At::new(p.cpu, time);
                    let Some(ct) = p.ct.as_mut() else { continue };
                    match nat {
                        Nat::Dnat(eps) => ct.dnat(ENDPOINTS[eps[i]].into(), 53),
                        Nat::Masquerade => {
                            let orig = *ct.orig();
                            let mut port = orig.sport;
                            while t.tuple_taken(&ct.reply().with_dst(NODE.into(), port), &orig, false, at) {
                                taken += 1;
                                port += 1;
                            }
                            ct.snat(NODE.into(), port);
                        }
                    }
                }
                C(i) => {
                    let p = &mut pkts[i];
                    let Some(ct) = p.ct.take() else { continue };
                    let c = t.confirm(ct, At::new(p.cpu, time), &mut rng);
                    p.result = Some(outcome(&c));
                    p.hit = match c {
                        Confirm::Inserted(h) | Confirm::Merged(h) | Confirm::NatClash(h) => Some(h),
                        Confirm::Dropped(_) => None,
                    };
                }
            }
        }
        outcomes = pkts.iter().map(|p| p.result.expect("every packet finishes")).collect();
        hits = pkts.iter().map(|p| p.hit).collect();
    }
    (outcomes, taken, hits, t)
}

fn check(
    kernel: &str,
    case: &str,
    steps: &[Step],
    got: (Vec<Outcome>, u64, Vec<Option<Hit>>, Conntrack),
    want: [Outcome; 2],
) {
    let (outcomes, taken, hits, t) = got;
    assert_eq!(outcomes, want, "{kernel} {case} {steps:?}");
    let stats = t.stats();
    for (stat, n) in expected_counters(kernel, &outcomes, taken) {
        assert_eq!(stats.get(stat), n, "{kernel} {case} {steps:?}: counter {}", stat.name());
    }
    // The table holds what the outcomes say, and nothing leaked.
    let linked = outcomes.iter().filter(|o| matches!(o, Outcome::Inserted | Outcome::NatClash)).count();
    let at = At::new(0, 10_000);
    assert_eq!(t.entries(at).len(), linked, "{kernel} {case}");
    assert_eq!(t.count(), linked, "{kernel} {case}: count");
    if outcomes[1] == Outcome::Merged || outcomes[1] == Outcome::Found {
        assert_eq!(hits[1].unwrap().conn, hits[0].unwrap().conn, "{kernel} {case}: joined the first packet's entry");
    }
}

/// Both lookups miss before either confirms: the race.
const RACE: [Step; 6] = [L(0), L(1), N(0), N(1), C(0), C(1)];
/// The same race, the second packet confirming first.
const RACE_REVERSED: [Step; 6] = [L(0), L(1), N(1), N(0), C(1), C(0)];
/// The first packet is confirmed before the second is looked up: no race.
const SERIAL: [Step; 6] = [L(0), N(0), C(0), L(1), N(1), C(1)];
/// Both miss, but the first confirms before the second reaches NAT.
const RACE_NAT_AFTER_CONFIRM: [Step; 6] = [L(0), L(1), N(0), C(0), N(1), C(1)];

fn dns_query() -> Tuple {
    Tuple::udp(CLIENT, 40000, SERVICE, 53)
}

fn swap(o: [Outcome; 2]) -> [Outcome; 2] {
    [o[1], o[0]]
}

#[test]
fn same_tuple_same_dnat_endpoint() {
    for k in preset_names() {
        let loser = match generation(&k) {
            Gen::DropAlways => Outcome::Dropped(ClashCause::Policy),
            // The winner was DNATed: 4.9 merges only NAT-free winners.
            Gen::MergeNoNat => Outcome::Dropped(ClashCause::NatDiffers),
            _ => Outcome::Merged,
        };
        let nat = Nat::Dnat([0, 0]);
        let want = [Outcome::Inserted, loser];
        check(&k, "same endpoint", &RACE, run(&k, [dns_query(); 2], nat, &RACE), want);
        check(&k, "same endpoint", &RACE_REVERSED, run(&k, [dns_query(); 2], nat, &RACE_REVERSED), swap(want));
        let serial = [Outcome::Inserted, Outcome::Found];
        check(&k, "same endpoint", &SERIAL, run(&k, [dns_query(); 2], nat, &SERIAL), serial);
    }
}

#[test]
fn same_tuple_different_dnat_endpoints() {
    for k in preset_names() {
        let loser = match generation(&k) {
            Gen::DropAlways => Outcome::Dropped(ClashCause::Policy),
            Gen::MergeNoNat | Gen::MergeMatching => Outcome::Dropped(ClashCause::NatDiffers),
            Gen::NatClashOldCounters | Gen::NatClash => Outcome::NatClash,
        };
        let nat = Nat::Dnat([0, 1]);
        let want = [Outcome::Inserted, loser];
        check(&k, "different endpoints", &RACE, run(&k, [dns_query(); 2], nat, &RACE), want);
        check(&k, "different endpoints", &RACE_REVERSED, run(&k, [dns_query(); 2], nat, &RACE_REVERSED), swap(want));
        let serial = [Outcome::Inserted, Outcome::Found];
        check(&k, "different endpoints", &SERIAL, run(&k, [dns_query(); 2], nat, &SERIAL), serial);
    }
}

#[test]
fn nat_clash_entry_is_reply_only_and_short_lived() {
    for k in preset_names().into_iter().filter(|k| matches!(generation(k), Gen::NatClash | Gen::NatClashOldCounters)) {
        let (_, _, hits, t) = run(&k, [dns_query(); 2], Nat::Dnat([0, 1]), &RACE);
        let clash = hits[1].unwrap();
        assert!(clash.status.contains(racetrack_engine::Status::NAT_CLASH), "{k}");
        // Its original tuple leads to the winner; its reply tuple to itself.
        let at = At::new(0, 2_000);
        assert_eq!(t.lookup(&dns_query(), at).unwrap().conn, hits[0].unwrap().conn, "{k}");
        assert_eq!(t.lookup(&clash.reply, at).unwrap().conn, clash.conn, "{k}");
        // It lives one second (profile nat_clash_timeout), then lazy expiry removes it.
        let later = At::new(0, 1_000 + 1_100_000_000);
        assert!(t.lookup(&clash.reply, later).is_none(), "{k}");
        assert_eq!(t.count(), 1, "{k}");
    }
}

#[test]
fn different_origins_pick_the_same_snat_port() {
    let syn = |client| Tuple::tcp(client, 40000, SERVER, 80);
    for k in preset_names() {
        let tuples = [syn(CLIENT), syn(CLIENT2)];
        // Neither sees the other's unconfirmed entry, both keep port 40000:
        // the second confirm finds its reply tuple taken. TCP never merges.
        let cause = if generation(&k) == Gen::DropAlways { ClashCause::Policy } else { ClashCause::Protocol };
        let want = [Outcome::Inserted, Outcome::Dropped(cause)];
        check(&k, "snat tcp", &RACE, run(&k, tuples, Nat::Masquerade, &RACE), want);
        check(&k, "snat tcp", &RACE_REVERSED, run(&k, tuples, Nat::Masquerade, &RACE_REVERSED), swap(want));
        // Once the first is confirmed the second's NAT sees the port taken
        // (one probe counted as `found`) and moves to another.
        let both = [Outcome::Inserted, Outcome::Inserted];
        let got = run(&k, tuples, Nat::Masquerade, &SERIAL);
        assert_eq!(got.1, 1, "{k}: one probe found the port taken");
        check(&k, "snat tcp", &SERIAL, got, both);
        check(&k, "snat tcp", &RACE_NAT_AFTER_CONFIRM, run(&k, tuples, Nat::Masquerade, &RACE_NAT_AFTER_CONFIRM), both);

        // The same with UDP: the merge rules do not apply either (the
        // origins differ), and on 5.6+ the reply tuple is the one taken.
        let udp = [Tuple::udp(CLIENT, 40000, SERVER, 53), Tuple::udp(CLIENT2, 40000, SERVER, 53)];
        let cause = match generation(&k) {
            Gen::DropAlways => ClashCause::Policy,
            Gen::MergeNoNat | Gen::MergeMatching => ClashCause::NatDiffers,
            Gen::NatClashOldCounters | Gen::NatClash => ClashCause::ReplyTaken,
        };
        check(
            &k,
            "snat udp",
            &RACE,
            run(&k, udp, Nat::Masquerade, &RACE),
            [Outcome::Inserted, Outcome::Dropped(cause)],
        );
    }
}

#[test]
fn same_origin_through_snat() {
    let q = Tuple::udp(CLIENT, 40000, SERVER, 53);
    for k in preset_names() {
        let g = generation(&k);
        // Both NATed before either confirms: both keep the port, the two
        // entries are identical, and kernels that merge identical entries do.
        let identical = match g {
            Gen::DropAlways => Outcome::Dropped(ClashCause::Policy),
            Gen::MergeNoNat => Outcome::Dropped(ClashCause::NatDiffers),
            _ => Outcome::Merged,
        };
        check(&k, "same origin", &RACE, run(&k, [q; 2], Nat::Masquerade, &RACE), [Outcome::Inserted, identical]);

        // The second is NATed after the first confirmed. With the
        // same-origin rule the first's entry does not make the port taken, so
        // the mapping stays identical and merges; without it the second moves
        // to another port, the entries differ, and it is dropped.
        let got = run(&k, [q; 2], Nat::Masquerade, &RACE_NAT_AFTER_CONFIRM);
        let (loser, taken) = if same_origin_rule(&k) {
            (Outcome::Merged, 0)
        } else if g == Gen::DropAlways {
            (Outcome::Dropped(ClashCause::Policy), 1)
        } else {
            (Outcome::Dropped(ClashCause::NatDiffers), 1)
        };
        assert_eq!(got.1, taken, "{k}: NAT probes that found the port taken");
        check(&k, "same origin", &RACE_NAT_AFTER_CONFIRM, got, [Outcome::Inserted, loser]);
    }
}

#[test]
fn ipv6_races_like_ipv4() {
    let c: IpAddr = "2001:db8::1".parse().unwrap();
    let s: IpAddr = "2001:db8::53".parse().unwrap();
    let q = Tuple::udp(c, 40000, s, 53);
    for k in ["4.14", "4.19", "6.1"] {
        let t = Conntrack::new(preset(k).unwrap(), 2, 7);
        let mut rng = Pcg64Mcg::seed_from_u64(1);
        let at = At::new(0, 1);
        let a = t.new_conn(q, TcpFlags::default(), at).unwrap();
        let b = t.new_conn(q, TcpFlags::default(), At::new(1, 1)).unwrap();
        assert!(matches!(t.confirm(a, at, &mut rng), Confirm::Inserted(_)));
        let second = t.confirm(b, At::new(1, 2), &mut rng);
        // No NAT: every kernel with clash resolution merges; 3.x-style would drop.
        assert!(matches!(second, Confirm::Merged(_)), "{k}: {second:?}");
        assert_eq!(t.lookup(&q.invert(), at).unwrap().orig, q);
    }
}

/// Timer-based conntrack (before 4.7) re-armed an entry's timer only when
/// the packet moved the expiry at least `HZ` jiffies (1 s) later; 4.7 and
/// later store the new expiry whenever it changes. Written from the kernel
/// versions, not from the profile field.
#[test]
fn a_refresh_moves_the_expiry_by_at_least_a_second_before_4_7() {
    for kernel in preset_names() {
        let kernel = kernel.as_str();
        let timer_based = matches!(kernel, "3.10" | "rhel-7.8" | "4.4");
        let t = Conntrack::new(preset(kernel).unwrap(), 1, 1);
        let q = dns_query();
        let at = |ms: u64| At::new(0, ms * 1_000_000);
        let ct = t.new_conn(q, TcpFlags::default(), at(0)).unwrap();
        let Confirm::Inserted(first) = t.confirm(ct, at(0), &mut Pcg64Mcg::seed_from_u64(1)) else {
            panic!("{kernel}: not inserted")
        };
        // A packet half a second later, then one a second and a half after the insert.
        for (ms, moves) in [(500, !timer_based), (1_500, true)] {
            let hit = t.lookup(&q, at(ms)).expect("live");
            t.update(&hit, TcpFlags::default(), at(ms));
            let now = t.lookup(&q, at(ms)).expect("live").expires;
            let moved = now > first.expires;
            assert_eq!(moved, moves, "{kernel}: a packet at {ms} ms moved the expiry {} -> {now}", first.expires);
            if moved {
                // Moved to the packet's time plus the UDP timeout, to the jiffy.
                let want = first.expires + ms * 1_000_000;
                assert!(now.abs_diff(want) <= 4_000_000, "{kernel}: {now} vs {want}");
            }
        }
    }
}
