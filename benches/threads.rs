//! Real threads on one table: group `threads`, with the baselines in the
//! same group (`racetrack stress --baselines` measures the same from the CLI).
//! Each iteration is one operation; with two threads, both run `iters`.
//! `reference` is the busy loop `stress --scaling` divides speed-ups by.
//! The clock starts once the table is preloaded and the threads started.
//! Run with `cargo bench --bench threads`; figures are in `docs/performance.md`.
#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use racetrack_engine::profile::preset;
use racetrack_engine::threads::{run, spin_work, StressConfig, Workload};
use racetrack_engine::Conntrack;
use racetrack_models::baseline::{self, Dash, MutexMap};

const FLOWS: u32 = 10_000;
/// Busy-loop steps per reference iteration (about the length of one table operation).
const REFERENCE_SPINS: u64 = 200;

/// Time `run` from its first look at the count (after the preload and the
/// threads' start, which are not the workload) to the stop at `iters`
/// operations per thread.
fn measure(iters: u64, n: usize, run: impl FnOnce(&mut dyn FnMut(u64) -> bool)) -> Duration {
    let (mut start, mut took) = (None, Duration::ZERO);
    run(&mut |done| {
        let now = Instant::now();
        let first = *start.get_or_insert(now);
        let go = done < iters * n as u64;
        if !go {
            took = now.duration_since(first);
        }
        go
    });
    took
}

fn threads(c: &mut Criterion) {
    let mut g = c.benchmark_group("threads");
    g.sample_size(10).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_millis(500));
    for (name, workload, bw) in [
        ("lookup", Workload::Lookup, baseline::Workload::Lookup),
        ("mixed", Workload::Mixed, baseline::Workload::Mixed),
    ] {
        for n in [1usize, 2] {
            g.throughput(Throughput::Elements(n as u64));
            let cfg = StressConfig { threads: n, workload, flows: FLOWS, batch: 1024, ..StressConfig::default() };
            let hz = preset("6.1").unwrap().conntrack.hz;
            let bcfg =
                baseline::Config { workload: bw, threads: n, flows: FLOWS, window_spins: 0, seed: 1, hz, batch: 1024 };
            g.bench_function(BenchmarkId::new(format!("{name}/racetrack"), format!("{n}t")), |b| {
                b.iter_custom(|iters| {
                    let t = Conntrack::new(preset("6.1").unwrap(), n, 1);
                    measure(iters, n, |k| {
                        run(&t, &cfg, k);
                    })
                })
            });
            g.bench_function(BenchmarkId::new(format!("{name}/dashmap"), format!("{n}t")), |b| {
                b.iter_custom(|iters| {
                    let m = Dash::new(FLOWS as usize);
                    measure(iters, n, |k| {
                        baseline::run(&m, &bcfg, k);
                    })
                })
            });
            g.bench_function(BenchmarkId::new(format!("{name}/mutex_hashmap"), format!("{n}t")), |b| {
                b.iter_custom(|iters| {
                    let m = MutexMap::new(FLOWS as usize);
                    measure(iters, n, |k| {
                        baseline::run(&m, &bcfg, k);
                    })
                })
            });
        }
    }
    // The embarrassingly parallel reference `racetrack stress --scaling` runs
    // beside the workload (a busy loop per thread, sharing nothing): a
    // workload's speed-up from 1 to 2 threads divided by this one's is its
    // scaling efficiency on this machine. Each iteration is one short loop per thread.
    for n in [1usize, 2] {
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::new("reference", format!("{n}t")), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                std::thread::scope(|s| {
                    for _ in 0..n {
                        s.spawn(move || {
                            (0..iters).fold(0, |x, _| x ^ std::hint::black_box(spin_work(REFERENCE_SPINS)))
                        });
                    }
                });
                start.elapsed()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, threads);
criterion_main!(benches);
