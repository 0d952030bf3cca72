//! `nf_conntrack_count` and its limit, without a line every CPU writes.
//!
//! The kernel keeps one atomic counter: every new connection increments it
//! and every removal decrements it, and an increment past `nf_conntrack_max`
//! sends the packet to early drop. Two CPUs creating and closing flows then
//! bounce that line between them on most new connections; on a machine whose
//! cores are far apart (a virtual machine's vCPUs on distant host cores) one
//! hand-off costs hundreds of nanoseconds, as much as the rest of the packet.
//!
//! Here the limit is a pool of `max` units. Each CPU holds a few units for
//! its next connections and takes more from the shared pool a batch at a
//! time, so most new connections and removals touch only the CPU's own line.
//! The rule stays exact: a connection is refused only when every unit is in
//! use. Near the limit a CPU takes one unit at a time, and a CPU that finds
//! the pool empty first takes back what the other CPUs hold. On one thread
//! (the simulator) this refuses exactly the connections a single counter
//! would; under real concurrency a CPU may lose a unit another CPU just
//! freed, as it may lose the race for the kernel's counter.

use crate::sync::{AtomicUsize, CachePadded, Ordering};

/// Units a CPU takes from the pool at once while the pool is far from empty.
#[cfg(not(loom))]
const BATCH: usize = 32;
#[cfg(loom)]
const BATCH: usize = 1;

/// Connections in use against a limit, per-CPU in the common case.
pub(crate) struct Count {
    /// Units no CPU holds.
    pool: CachePadded<AtomicUsize>,
    /// Units each CPU holds for its next connections, at most `2 * BATCH`.
    held: Box<[CachePadded<AtomicUsize>]>,
    max: usize,
}

impl Count {
    /// `max` units, none in use, for `ncpus` CPUs.
    pub(crate) fn new(max: usize, ncpus: usize) -> Self {
        Self {
            pool: CachePadded::new(AtomicUsize::new(max)),
            held: (0..ncpus.max(1)).map(|_| CachePadded::new(AtomicUsize::new(0))).collect(),
            max,
        }
    }

    #[inline]
    fn held(&self, cpu: usize) -> &AtomicUsize {
        crate::of_cpu::<CachePadded<AtomicUsize>>(&self.held, cpu)
    }

    /// Connections in use: exact whenever no CPU is between two steps.
    pub(crate) fn get(&self) -> usize {
        let free =
            self.pool.load(Ordering::Relaxed) + self.held.iter().map(|h| h.load(Ordering::Relaxed)).sum::<usize>();
        self.max.saturating_sub(free)
    }

    /// A unit for a new connection on `cpu`; `false` when all are in use.
    #[inline]
    pub(crate) fn take(&self, cpu: usize) -> bool {
        let held = self.held(cpu);
        let mut h = held.load(Ordering::Relaxed);
        // Another CPU may take these back at any moment: compare-and-swap.
        while h > 0 {
            match held.compare_exchange_weak(h, h - 1, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(now) => h = now,
            }
        }
        self.take_slow(cpu)
    }

    #[cold]
    fn take_slow(&self, cpu: usize) -> bool {
        if self.take_from_pool(cpu) {
            return true;
        }
        // The pool is empty: take back what the other CPUs hold, then try once more.
        let mine = self.held(cpu);
        for other in self.held.iter() {
            if !std::ptr::eq(&**other, mine) {
                let back = other.swap(0, Ordering::Relaxed);
                if back > 0 {
                    self.pool.fetch_add(back, Ordering::Relaxed);
                }
            }
        }
        self.take_from_pool(cpu)
    }

    /// One unit from the pool, and a batch more for `cpu` while the pool
    /// could still give every CPU two batches.
    fn take_from_pool(&self, cpu: usize) -> bool {
        let plenty = 2 * BATCH * self.held.len();
        let mut p = self.pool.load(Ordering::Relaxed);
        while p > 0 {
            let n = if p > plenty { BATCH + 1 } else { 1 };
            match self.pool.compare_exchange_weak(p, p - n, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => {
                    if n > 1 {
                        self.held(cpu).fetch_add(n - 1, Ordering::Relaxed);
                    }
                    return true;
                }
                Err(now) => p = now,
            }
        }
        false
    }

    /// A connection on `cpu` is gone: its unit is free again.
    #[inline]
    pub(crate) fn give(&self, cpu: usize) {
        let held = self.held(cpu);
        let mut h = held.fetch_add(1, Ordering::Relaxed) + 1;
        // Holding more than two batches: the surplus goes back to the pool
        // (unless another CPU took the units back first).
        while h > 2 * BATCH {
            match held.compare_exchange_weak(h, BATCH, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => {
                    self.pool.fetch_add(h - BATCH, Ordering::Relaxed);
                    return;
                }
                Err(now) => h = now,
            }
        }
    }
}

impl std::fmt::Debug for Count {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Count").field("in_use", &self.get()).field("max", &self.max).finish()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn refuses_exactly_at_max_whichever_cpu_holds_the_units() {
        let max = 10 * BATCH + 7;
        let c = Count::new(max, 3);
        // Fill the pool from three CPUs in turn: all succeed up to max.
        for i in 0..max {
            assert!(c.take(i % 3), "unit {i} of {max} refused");
            assert_eq!(c.get(), i + 1);
        }
        for cpu in 0..3 {
            assert!(!c.take(cpu), "cpu {cpu} got a unit past max");
        }
        assert_eq!(c.get(), max);
        // One connection closes on CPU 2; CPU 0 finds the pool empty and
        // takes the unit back from CPU 2.
        c.give(2);
        assert_eq!(c.get(), max - 1);
        assert!(c.take(0));
        assert!(!c.take(1));
        // Close everything on CPU 1: surplus flows back to the pool, and
        // the count returns to zero.
        for _ in 0..max {
            c.give(1);
        }
        assert_eq!(c.get(), 0);
        assert!(c.held(1).load(Ordering::Relaxed) <= 2 * BATCH);
        // Every unit can be taken again, from one CPU.
        assert!((0..max).all(|_| c.take(2)));
        assert!(!c.take(2));
    }

    #[test]
    fn a_cpu_mostly_touches_only_its_own_units() {
        let c = Count::new(1 << 20, 2);
        assert!(c.take(0));
        let pool = c.pool.load(Ordering::Relaxed);
        // The next BATCH connections and their removals come from CPU 0's own units.
        for _ in 0..BATCH {
            assert!(c.take(0));
        }
        for _ in 0..BATCH {
            c.give(0);
        }
        assert_eq!(c.pool.load(Ordering::Relaxed), pool);
        assert_eq!(c.get(), 1);
    }
}
