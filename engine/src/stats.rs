//! Per-CPU conntrack statistics, named as `conntrack -S` prints them.
//!
//! Each CPU's counters live on their own cache lines (as the kernel's
//! `this_cpu_inc` per-cpu data does), so two CPUs counting never write the
//! same line. A counter is only ever incremented by the CPU index the caller
//! passes; summing is done when a report is made.

use serde::Serialize;

use crate::sync::{AtomicU64, CachePadded, Ordering};

/// A conntrack statistic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stat {
    /// A lookup found its connection (old kernels), or a NAT probe found its tuple taken.
    Found,
    /// A packet conntrack could not track.
    Invalid,
    /// A connection was inserted at confirm.
    Insert,
    /// Confirm could not insert the connection (clash, chain too long).
    InsertFailed,
    /// A packet was dropped by conntrack.
    Drop,
    /// Connections evicted to make room when the table was full.
    EarlyDrop,
    /// A packet with an error (bad checksum, truncated).
    Error,
    /// A lockless lookup ended on another bucket's chain and started over.
    SearchRestart,
    /// A confirm-time clash was resolved (5.10+).
    ClashResolve,
    /// A confirm walked a chain longer than the profile's limit (5.15+).
    ChainTooLong,
}

impl Stat {
    /// Every statistic, in `conntrack -S` order.
    pub const ALL: [Stat; 10] = [
        Stat::Found,
        Stat::Invalid,
        Stat::Insert,
        Stat::InsertFailed,
        Stat::Drop,
        Stat::EarlyDrop,
        Stat::Error,
        Stat::SearchRestart,
        Stat::ClashResolve,
        Stat::ChainTooLong,
    ];

    /// The name `conntrack -S` uses.
    pub const fn name(self) -> &'static str {
        match self {
            Stat::Found => "found",
            Stat::Invalid => "invalid",
            Stat::Insert => "insert",
            Stat::InsertFailed => "insert_failed",
            Stat::Drop => "drop",
            Stat::EarlyDrop => "early_drop",
            Stat::Error => "error",
            Stat::SearchRestart => "search_restart",
            Stat::ClashResolve => "clash_resolve",
            Stat::ChainTooLong => "chaintoolong",
        }
    }

    /// The statistic with this `conntrack -S` name.
    pub fn from_name(name: &str) -> Option<Stat> {
        Stat::ALL.into_iter().find(|s| s.name() == name)
    }
}

const N: usize = Stat::ALL.len();

/// Lifetime tallies the kernel does not print, kept beside the statistics so
/// tests can check `count == inserted - removed` without trusting the chains.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tally {
    /// Entries linked into the table (clean inserts and NAT_CLASH inserts).
    Inserted = N as isize,
    /// Entries unlinked (expiry, GC, early drop, explicit removal).
    Removed = N as isize + 1,
}

#[derive(Default)]
struct CpuStats([AtomicU64; N + 2]);

/// Add to a counter only its own CPU writes, as the kernel's `this_cpu_inc`
/// does: a plain load and store, no locked read-modify-write. Callers pass
/// each CPU index from one thread at a time (every executor does); readers
/// may see a slightly stale value, never a torn one.
#[inline]
fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

/// The per-CPU counters of one conntrack table.
pub struct Stats {
    cpus: Box<[CachePadded<CpuStats>]>,
}

impl Stats {
    /// Counters for `ncpus` CPUs (at least one).
    pub(crate) fn new(ncpus: usize) -> Self {
        Self { cpus: (0..ncpus.max(1)).map(|_| CachePadded::new(CpuStats::default())).collect() }
    }

    /// Number of CPUs.
    pub fn cpus(&self) -> usize {
        self.cpus.len()
    }

    #[inline]
    pub(crate) fn inc(&self, cpu: usize, stat: Stat) {
        self.add(cpu, stat, 1);
    }

    #[inline]
    pub(crate) fn add(&self, cpu: usize, stat: Stat, n: u64) {
        debug_assert!(cpu < self.cpus.len(), "cpu {cpu} out of range 0..{}", self.cpus.len());
        bump(&crate::of_cpu(&self.cpus, cpu).0[stat as usize], n);
    }

    #[inline]
    pub(crate) fn tally(&self, cpu: usize, t: Tally) {
        bump(&crate::of_cpu(&self.cpus, cpu).0[t as usize], 1);
    }

    /// `(inserted, removed)` over the table's life, summed over CPUs.
    pub(crate) fn tallies(&self) -> (u64, u64) {
        let sum = |t: Tally| self.cpus.iter().map(|c| c.0[t as usize].load(Ordering::Relaxed)).sum();
        (sum(Tally::Inserted), sum(Tally::Removed))
    }

    /// A copy of every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            per_cpu: self
                .cpus
                .iter()
                .map(|c| CpuCounters(std::array::from_fn(|i| c.0[i].load(Ordering::Relaxed))))
                .collect(),
        }
    }
}

/// One CPU's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuCounters(pub [u64; N]);

impl CpuCounters {
    /// One counter.
    pub fn get(&self, stat: Stat) -> u64 {
        self.0[stat as usize]
    }

    /// `(name, value)` pairs in `conntrack -S` order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Stat::ALL.iter().map(move |s| (s.name(), self.get(*s)))
    }
}

impl std::ops::AddAssign for CpuCounters {
    fn add_assign(&mut self, rhs: Self) {
        for (a, b) in self.0.iter_mut().zip(rhs.0) {
            *a += b;
        }
    }
}

/// Counters of every CPU at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Index = CPU.
    pub per_cpu: Vec<CpuCounters>,
}

impl StatsSnapshot {
    /// Counters summed over CPUs (what node_exporter reports).
    pub fn total(&self) -> CpuCounters {
        let mut t = CpuCounters::default();
        for c in &self.per_cpu {
            t += *c;
        }
        t
    }

    /// One counter summed over CPUs.
    pub fn get(&self, stat: Stat) -> u64 {
        self.per_cpu.iter().map(|c| c.get(stat)).sum()
    }
}
