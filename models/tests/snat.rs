//! The SNAT scenario: source-port collisions under load, per allocator and
//! kernel, with fixed seeds. Assertions are on counts and bounds.

use racetrack_engine::profile::preset;
use racetrack_models::snat::{run, SnatReport, SnatScenario};

/// `rate` new connections per second for 60 virtual seconds.
fn scenario(rate: f64) -> SnatScenario {
    let mut s = SnatScenario::default();
    s.load.rate = rate;
    s.load.connections = (rate * 60.0) as u32;
    s
}

fn go(s: &SnatScenario, kernel: &str) -> SnatReport {
    run(s, preset(kernel).unwrap())
}

fn failed(r: &SnatReport) -> u64 {
    r.conntrack["insert_failed"]
}

fn analytic<'r>(r: &'r SnatReport, name: &str) -> &'r racetrack_models::report::Prediction {
    r.analytic.iter().find(|p| p.name.starts_with(name)).unwrap_or_else(|| panic!("no prediction {name}"))
}

#[test]
fn default_allocator_clashes_grow_with_rate_and_random_fully_cuts_them_tenfold() {
    let low = go(&scenario(100.0), "4.14");
    let high = go(&scenario(400.0), "4.14");
    for r in [&low, &high] {
        assert!(failed(r) > 0, "{:?}", r.conntrack);
        // A TCP clash is never resolved: every insert_failed is a dropped SYN.
        assert_eq!(failed(r), r.conntrack["drop"]);
        assert_eq!(failed(r), r.snat.stats.dropped_at_confirm);
        // The dropped SYNs come back after the 1 s retransmission timeout.
        assert!(r.clients.retried > 0 && r.clients.max_ms >= 1000.0, "{:?}", r.clients);
        assert_eq!(r.tcp.syn_retransmits, failed(r), "one retransmission per drop");
    }
    let share = |r: &SnatReport| failed(r) as f64 / r.clients.requests as f64;
    assert!(share(&high) > 1.5 * share(&low), "low {} high {}", share(&low), share(&high));

    let mut fully = scenario(400.0);
    fully.snat.random_fully = true;
    let fully = go(&fully, "4.14");
    assert_eq!(fully.clients.requests, high.clients.requests);
    assert!(failed(&high) >= 10 * failed(&fully).max(1), "default {} random-fully {}", failed(&high), failed(&fully));
    // random-fully never keeps the client's port.
    assert_eq!(fully.snat.stats.kept_original, 0);
}

#[test]
fn both_allocators_clash_more_near_port_exhaustion() {
    for random_fully in [false, true] {
        let mut roomy = scenario(20.0);
        roomy.snat.random_fully = random_fully;
        let mut tight = roomy.clone();
        // 512 ports held 120 s in TIME_WAIT: exhausted after about 26 s at 20/s.
        tight.snat.port_max = 1024 + 511;
        let (roomy, tight) = (go(&roomy, "4.14"), go(&tight, "4.14"));
        assert!(tight.snat.ports_in_use_max >= 500, "{}", tight.snat.ports_in_use_max);
        assert!(tight.snat.stats.exhausted > 0);
        assert!(
            failed(&tight) > 10 * failed(&roomy).max(1),
            "random_fully={random_fully}: {} vs {}",
            failed(&tight),
            failed(&roomy)
        );
        assert!(tight.clients.retried > roomy.clients.retried);
    }
}

#[test]
fn the_probe_histogram_respects_the_attempt_cap() {
    let mut s = scenario(20.0);
    s.snat.port_max = 1024 + 511;
    // 6.1: at most 128 + 64 + 32 + 16 + 8 = 248 probes (the client's own
    // port lies outside this range, so it is never probed).
    let bounded = go(&s, "6.1");
    let h = &bounded.snat.stats.probes;
    assert!(bounded.snat.stats.probes_max <= 248, "{:?}", h.keys().last());
    assert!(h.keys().any(|&p| p > 128), "the halving rounds never ran: {h:?}");
    assert_eq!(h.values().sum::<u64>(), bounded.snat.stats.allocations);
    assert!(bounded.snat.stats.exhausted > 0);
    // 4.14 searches the whole range: thousands of probes near exhaustion.
    let exhaustive = go(&s, "4.14");
    assert!(exhaustive.snat.stats.probes_max > 248, "{}", exhaustive.snat.stats.probes_max);
    assert!(exhaustive.snat.stats.probes_max <= 512);
}

#[test]
fn simulated_collisions_agree_with_the_closed_form_at_three_loads() {
    // The closed form: each racing pair clashes with the probability that
    // both searched (shared rover → same port) or both kept the same client
    // port. The bound allows 25 % model error plus 3 Poisson sigmas.
    for rate in [200.0, 400.0, 800.0] {
        let r = go(&scenario(rate), "4.14");
        let p = analytic(&r, "SYNs dropped by racing");
        let sim = p.simulated.unwrap();
        let slack = 0.25 * p.predicted + 3.0 * p.predicted.sqrt();
        assert!(
            (sim - p.predicted).abs() <= slack,
            "rate {rate}: simulated {sim}, predicted {:.1} ± {slack:.1}",
            p.predicted
        );
        assert!(sim >= 20.0, "too few clashes to compare at rate {rate}: {sim}");
    }
}

#[test]
fn kernels_without_the_rover_rarely_clash_even_without_random_fully() {
    // 6ed5943f8735 removed the shared rover: two searches start at random offsets.
    let old = go(&scenario(400.0), "4.14");
    let new = go(&scenario(400.0), "6.1");
    assert!(failed(&old) >= 10 * failed(&new).max(1), "4.14 {} 6.1 {}", failed(&old), failed(&new));
}

#[test]
fn per_cpu_slices_never_clash_between_cpus() {
    let mut s = scenario(400.0);
    s.snat.allocator = racetrack_models::snat::AllocatorKind::PerCpuSlices;
    s.snat.random_fully = true;
    let r = go(&s, "4.14");
    assert!(r.snat.stats.racing_pairs > 0);
    assert_eq!(failed(&r), 0);
}

#[test]
fn same_seed_same_report() {
    let s = scenario(200.0);
    assert_eq!(go(&s, "4.14"), go(&s, "4.14"));
    let mut other = s.clone();
    other.seed = 2;
    assert_ne!(go(&s, "4.14").conntrack, go(&other, "4.14").conntrack);
}
