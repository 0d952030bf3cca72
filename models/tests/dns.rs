//! The DNS 5-second race, end to end on the simulator: fixed seeds, counts
//! and bounds (never timings of this machine).

use racetrack_engine::profile::preset;
use racetrack_models::dns::{run, DnsReport, DnsScenario, Resolver, SteeringKind};

fn scenario() -> DnsScenario {
    let mut s = DnsScenario::default();
    s.clients.lookups = 1500;
    s.node.steering = SteeringKind::Random;
    s
}

fn go(s: &DnsScenario, kernel: &str) -> DnsReport {
    run(s, preset(kernel).unwrap())
}

fn c(r: &DnsReport, name: &str) -> u64 {
    r.conntrack[name]
}

#[test]
fn kernel_4_14_drops_the_racing_query_and_the_lookup_waits_the_timeout() {
    let r = go(&scenario(), "4.14");
    assert!(c(&r, "insert_failed") > 0, "{:?}", r.conntrack);
    assert_eq!(c(&r, "drop"), c(&r, "insert_failed"), "4.14 cannot merge a DNATed clash");
    assert!(r.clients.retried > 0);
    // A retried lookup waited at least one resolver timeout (5 s).
    assert!(r.clients.max_ms >= 5000.0, "{:?}", r.clients);
    assert!(r.clients.retry_classes.get("5s").copied().unwrap_or(0) > 0, "{:?}", r.clients.retry_classes);
    // Every lookup still ends: the retry on the same socket finds the entry.
    assert_eq!(r.clients.ok + r.clients.failed, r.clients.requests);
    assert_eq!(r.clients.failed, 0);
}

#[test]
fn one_cpu_per_sender_or_per_flow_never_races() {
    for steering in [SteeringKind::Sender, SteeringKind::FlowHash] {
        let mut s = scenario();
        s.node.steering = steering;
        let r = go(&s, "4.14");
        assert_eq!(c(&r, "insert_failed"), 0, "{steering:?}");
        assert_eq!(r.clients.retried, 0, "{steering:?}");
        assert!(r.conntrack_entries_created > 0);
    }
}

#[test]
fn kernel_4_19_merges_same_endpoint_clashes_without_dropping() {
    let r = go(&scenario(), "4.19");
    // 4.19 has no clash_resolve counter: a merge counts insert_failed, not drop.
    assert!(c(&r, "insert_failed") > 0);
    assert_eq!(c(&r, "drop"), 0);
    assert_eq!(c(&r, "clash_resolve"), 0);
    assert_eq!(r.clients.retried, 0, "no lookup waits for a clash");
    assert_eq!(r.clients.ok, r.clients.requests);
}

#[test]
fn kernel_4_19_with_three_endpoints_drops_two_thirds_of_clashes() {
    let mut s = scenario();
    s.service.endpoints = 3;
    s.clients.lookups = 4000;
    let r = go(&s, "4.19");
    let clashes = c(&r, "insert_failed") as f64;
    let drops = c(&r, "drop") as f64;
    assert!(clashes >= 200.0, "need enough clashes for the bound: {clashes}");
    // Given a clash, the two packets were DNATed independently by the
    // statistic chain: different endpoints (dropped) with probability 2/3.
    // Binomial(n, 2/3): allow 4 standard deviations.
    let expected = clashes * 2.0 / 3.0;
    let sigma = (clashes * (2.0 / 3.0) * (1.0 / 3.0)).sqrt();
    assert!(
        (drops - expected).abs() <= 4.0 * sigma,
        "drops {drops} of {clashes} clashes, expected {expected} ± {}",
        4.0 * sigma
    );
}

#[test]
fn kernel_5_6_and_later_never_drop_and_answer_every_lookup() {
    let mut s = scenario();
    s.service.endpoints = 3;
    for k in ["5.6", "5.10", "6.1", "6.6", "6.12"] {
        let r = go(&s, k);
        assert_eq!(c(&r, "drop"), 0, "{k}");
        assert_eq!(r.clients.retried, 0, "{k}");
        assert_eq!(r.clients.ok, r.clients.requests, "{k}");
    }
    // From 5.10 the resolved clashes are visible in clash_resolve.
    let r = go(&s, "6.1");
    assert!(c(&r, "clash_resolve") > 0);
    assert_eq!(c(&r, "insert_failed"), 0);
}

#[test]
fn single_request_reopen_avoids_the_clash_for_glibc_but_not_musl() {
    let mut s = scenario();
    s.resolv.single_request_reopen = true;
    let r = go(&s, "4.14");
    assert_eq!(c(&r, "insert_failed"), 0);
    assert_eq!(r.clients.retried, 0);

    s.clients.resolver = Resolver::Musl;
    let r = go(&s, "4.14");
    assert!(c(&r, "insert_failed") > 0, "musl ignores single-request-reopen");
    // musl resends after timeout/attempts = 2.5 s.
    assert!(r.clients.retry_classes.contains_key("2.5s"), "{:?}", r.clients.retry_classes);
}

#[test]
fn use_vc_sends_one_syn_per_try_so_nothing_races_and_musl_ignores_it() {
    let mut s = scenario();
    s.resolv.use_vc = true;
    for kernel in ["4.14", "6.6"] {
        let r = go(&s, kernel);
        assert_eq!(c(&r, "insert_failed") + c(&r, "drop") + c(&r, "clash_resolve"), 0, "{kernel}: {:?}", r.conntrack);
        assert_eq!(r.clients.retried, 0, "{kernel}");
        assert_eq!(r.clients.ok, r.clients.requests, "{kernel}");
        // One connection per lookup (each tries one name here), whose SYN is inserted.
        assert!(r.conntrack_entries_created <= u64::from(s.clients.lookups), "{kernel}");
        assert!(r.conntrack_entries_created > 0, "{kernel}");
    }
    s.clients.resolver = Resolver::Musl;
    assert!(c(&go(&s, "4.14"), "insert_failed") > 0, "musl ignores use-vc");
}

#[test]
fn node_local_cache_creates_no_conntrack_entries_for_queries() {
    let mut s = scenario();
    s.mitigations.node_local_cache = true;
    let r = go(&s, "4.14");
    assert_eq!(r.conntrack_entries_created, 0);
    assert_eq!(c(&r, "insert") + c(&r, "insert_failed"), 0);
    assert_eq!(r.clients.retried, 0);
    assert_eq!(r.clients.ok, r.clients.requests);
}

#[test]
fn delaying_aaaa_shrinks_the_race() {
    let mut last = u64::MAX;
    let mut first = 0;
    for delay_us in [0u64, 2, 4, 8] {
        let mut s = scenario();
        s.mitigations.aaaa_delay = std::time::Duration::from_micros(delay_us);
        let clashes = c(&go(&s, "4.14"), "insert_failed");
        if delay_us == 0 {
            first = clashes;
        }
        assert!(clashes <= last, "{delay_us} us: {clashes} clashes, more than with less delay ({last})");
        last = clashes;
    }
    assert!(last * 4 < first, "an 8 us delay should remove most clashes: {first} -> {last}");
}

#[test]
fn go_pure_resolver_uses_two_sockets_and_never_clashes() {
    let mut s = scenario();
    s.clients.resolver = Resolver::Go;
    let r = go(&s, "4.14");
    assert_eq!(c(&r, "insert_failed"), 0);
    s.clients.resolver = Resolver::GoCgo;
    assert!(c(&go(&s, "4.14"), "insert_failed") > 0, "cgo is glibc");
}

#[test]
fn same_seed_same_report_other_seed_other_report() {
    let s = scenario();
    let a = serde_json::to_string(&go(&s, "4.14")).unwrap();
    let b = serde_json::to_string(&go(&s, "4.14")).unwrap();
    assert_eq!(a, b);
    let mut s2 = s.clone();
    s2.seed = 2;
    assert_ne!(a, serde_json::to_string(&go(&s2, "4.14")).unwrap());
}
