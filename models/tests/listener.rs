//! The listener scenarios: `tw-recycle` (PAWS against a per-peer timestamp
//! cache) and `syn-backlog` (SYN and accept queue overflow), fixed seeds,
//! assertions on counts and bounds.

use racetrack_engine::profile::preset;
use racetrack_models::listener::ListenerReport;
use racetrack_models::syn_backlog::{self, SynBacklogScenario};
use racetrack_models::tw_recycle::{self, ClientOffsets, TwRecycleScenario};

fn tw(hosts: u32, f: impl FnOnce(&mut TwRecycleScenario)) -> ListenerReport {
    let mut s = TwRecycleScenario::default();
    s.hosts.count = hosts;
    f(&mut s);
    let p = preset("4.9").unwrap();
    s.check(&p).expect("4.9 has tcp_tw_recycle");
    tw_recycle::run(&s, p)
}

fn first_dropped_share(r: &ListenerReport) -> f64 {
    let dropped: u64 = r.hosts.iter().map(|h| h.first_syn_dropped).sum();
    dropped as f64 / r.clients.requests as f64
}

#[test]
fn one_host_behind_the_nat_loses_nothing() {
    let r = tw(1, |_| {});
    assert_eq!(r.tcp.syn_dropped_paws, 0);
    assert_eq!((r.clients.failed, r.clients.retried), (0, 0));
    assert_eq!(r.clients.ok, r.clients.requests);
}

#[test]
fn behind_one_nat_every_host_but_the_leading_clock_loses_its_syns() {
    for hosts in [2u32, 4] {
        let r = tw(hosts, |_| {});
        assert!(r.tcp.syn_dropped_paws > 0);
        // Conntrack on the NAT node let every SYN through: the loss is the server's.
        assert_eq!(r.conntrack["drop"], 0);
        let expected = f64::from(hosts - 1) / f64::from(hosts);
        let share = first_dropped_share(&r);
        // Hosts are picked at random per connection: allow sampling noise.
        assert!((share - expected).abs() < 0.06, "{hosts} hosts: share {share}, expected {expected}");
        let p = &r.analytic[0];
        assert!((p.predicted - expected).abs() < 1e-9 && (p.simulated.unwrap() - share).abs() < 1e-9);
        // Exactly one host (the leading clock) loses nothing; the others lose nearly all.
        let clean = r.hosts.iter().filter(|h| h.first_syn_dropped == 0).count();
        assert_eq!(clean, 1, "{:?}", r.hosts);
        for h in r.hosts.iter().filter(|h| h.first_syn_dropped > 0) {
            assert!(h.first_syn_dropped as f64 > 0.9 * h.connections as f64, "{h:?}");
        }
        // Their retransmitted SYNs are still behind: connections fail or wait a minute.
        assert!(r.clients.failed > 0);
        assert!(r.tcp.syn_retransmits >= r.tcp.syn_dropped_paws - r.clients.failed);
    }
}

#[test]
fn without_tw_recycle_or_timestamps_nothing_is_lost() {
    for r in [tw(4, |s| s.server.tw_recycle = false), tw(4, |s| s.server.timestamps = false)] {
        assert_eq!(r.tcp.syn_dropped_paws, 0);
        assert_eq!(r.clients.ok, r.clients.requests);
    }
}

#[test]
fn hosts_without_timestamps_leave_nothing_cached_and_the_analytic_agrees() {
    let r = tw(4, |s| s.hosts.timestamps = false);
    assert_eq!(r.tcp.syn_dropped_paws, 0);
    let p = &r.analytic[0];
    assert_eq!((p.predicted, p.simulated), (0.0, Some(0.0)), "{}", p.formula);
}

#[test]
fn per_connection_offsets_make_even_one_host_lose_half() {
    // 95a22caee396 (4.10) randomised the offset per connection; as the
    // commit removing tcp_tw_recycle says, the cache then breaks for every
    // client, NAT or not: each SYN is behind the cached stamp half the time.
    let r = tw(1, |s| s.hosts.ts_offsets = ClientOffsets::PerConnection);
    let share = first_dropped_share(&r);
    assert!((share - 0.5).abs() < 0.1, "share {share}");
    // Per address pair (28ee1b746f49) is one offset per host behind a NAT: as per host.
    let r = tw(1, |s| s.hosts.ts_offsets = ClientOffsets::PerHostPair);
    assert_eq!(r.tcp.syn_dropped_paws, 0);
}

#[test]
fn tw_recycle_on_a_kernel_without_it_is_an_error_naming_the_release() {
    let s = TwRecycleScenario::default();
    let (key, why) = s.check(&preset("4.14").unwrap()).unwrap_err();
    assert_eq!(key, "server.tw_recycle");
    assert!(why.contains("4.12"), "{why}");
    let mut off = s.clone();
    off.server.tw_recycle = false;
    assert!(off.check(&preset("6.6").unwrap()).is_ok());
}

fn backlog(f: impl FnOnce(&mut SynBacklogScenario)) -> ListenerReport {
    let mut s = SynBacklogScenario::default();
    f(&mut s);
    syn_backlog::run(&s, preset("5.10").unwrap())
}

#[test]
fn bursts_over_the_syn_backlog_drop_syns_and_8096_ends_it() {
    let r = backlog(|_| {});
    assert!(r.tcp.syn_dropped_backlog > 0);
    // Conntrack accepted those SYNs: the two causes are told apart.
    assert_eq!(r.conntrack["drop"], 0);
    assert_eq!(r.conntrack["insert_failed"], 0);
    assert!(r.clients.retried > 0 && r.clients.max_ms >= 1000.0);
    let p = &r.analytic[0];
    let sim = p.simulated.unwrap();
    assert!((sim - p.predicted).abs() <= 0.1 * p.predicted, "simulated {sim}, predicted {}", p.predicted);

    let fixed = backlog(|s| s.listener.tcp_max_syn_backlog = 8096);
    assert_eq!(fixed.tcp.syn_dropped_backlog, 0);
    assert_eq!((fixed.clients.ok, fixed.clients.retried), (fixed.clients.requests, 0));
}

#[test]
fn a_burst_under_the_threshold_passes() {
    // Without syncookies a SYN is refused once fewer than a quarter of
    // tcp_max_syn_backlog (1024) is free: the 769th still finds 256 free.
    let r = backlog(|s| s.load.burst = 700);
    assert_eq!(r.tcp.syn_dropped_backlog, 0);
    let r = backlog(|s| s.load.burst = 900);
    assert!(r.tcp.syn_dropped_backlog > 0);
    for (burst, lost) in [(769, 0.0), (770, 1.0)] {
        let r = backlog(|s| {
            s.load.burst = burst;
            s.load.connections = burst;
        });
        assert_eq!(r.tcp.syn_dropped_backlog as f64, lost, "burst {burst}");
        assert_eq!(r.analytic[0].predicted, lost, "burst {burst}: {}", r.analytic[0].formula);
    }
}

#[test]
fn syncookies_answer_a_full_syn_queue_instead_of_dropping() {
    let r = backlog(|s| {
        s.listener.tcp_syncookies = 1;
        s.listener.somaxconn = 512;
    });
    assert_eq!(r.tcp.syn_dropped_backlog, 0);
    assert!(r.tcp.syncookies_sent > 0);
    // Without cookies the same small somaxconn drops.
    let r = backlog(|s| s.listener.somaxconn = 512);
    assert!(r.tcp.syn_dropped_backlog > 0);
}

#[test]
fn a_slow_application_overflows_the_accept_queue() {
    let r = backlog(|s| {
        s.listener.tcp_max_syn_backlog = 8096;
        s.listener.somaxconn = 1024;
        s.listener.backlog = 1024;
        s.listener.accept_rate = 500.0;
    });
    assert!(r.tcp.listen_overflows > 0, "{:?}", r.tcp);
}

#[test]
fn listener_runs_are_deterministic() {
    assert_eq!(backlog(|_| {}), backlog(|_| {}));
    assert_eq!(tw(3, |_| {}), tw(3, |_| {}));
}
