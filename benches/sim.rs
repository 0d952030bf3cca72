//! Simulator speed: simulated packets per second through the conntrack path,
//! on the DNS scenario (queries and answers, DNAT, races on 4.14).
//! Run with `cargo bench --bench sim`; figures are in `docs/performance.md`.
#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use racetrack_engine::profile::preset;
use racetrack_models::dns::{run, DnsScenario, SteeringKind};

fn sim(c: &mut Criterion) {
    let mut g = c.benchmark_group("sim");
    g.sample_size(10).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_millis(500));
    for (name, kernel, steering) in
        [("dns_4.14_random", "4.14", SteeringKind::Random), ("dns_6.1_spread", "6.1", SteeringKind::Spread)]
    {
        let mut s = DnsScenario::default();
        s.clients.lookups = 20_000;
        s.clients.rate = 20_000.0;
        s.node.steering = steering;
        let profile = preset(kernel).unwrap();
        // Packets per run are fixed by the seed: measure once for the throughput.
        let packets = run(&s, profile.clone()).sim.packets;
        g.throughput(Throughput::Elements(packets));
        g.bench_function(BenchmarkId::new("packets", name), |b| b.iter(|| run(&s, profile.clone())));
    }
    g.finish();
}

criterion_group!(benches, sim);
criterion_main!(benches);
