//! Type-stable storage for confirmed entries.
//!
//! Like the kernel's `SLAB_TYPESAFE_BY_RCU` conntrack cache, a slot freed by
//! one connection may be reused by another while a lockless reader is still
//! looking at it; memory is never returned to the allocator while the table
//! lives. Readers detect reuse with the slot's sequence number (see
//! `table.rs`). Slots are allocated in chunks on demand, so a table sized for
//! millions of entries costs memory in proportion to the entries it has held.

use std::marker::PhantomData;

use crate::sync::{zeroed_slice, AtomicPtr, AtomicU32, AtomicU64, CachePadded, Mutex, Ordering, ZeroDefault};
use crate::tuple::Packed;

#[cfg(not(loom))]
const CHUNK_SHIFT: u32 = 12;
#[cfg(loom)]
const CHUNK_SHIFT: u32 = 2;
const CHUNK: usize = 1 << CHUNK_SHIFT;

/// Free slots each CPU keeps for itself, at most (see [`Slab::alloc`]).
#[cfg(not(loom))]
pub(crate) const CPU_CACHE: usize = 32;
/// Free slots each CPU keeps for itself, at most (see [`Slab::alloc`]).
#[cfg(loom)]
pub(crate) const CPU_CACHE: usize = 1;

/// Fresh slots a CPU takes at once, consecutive: a CPU's new connections
/// sit side by side, as SLUB hands a CPU a whole slab page, so a line (or
/// the pair of lines the adjacent-line prefetcher fetches together) is
/// written by one CPU only. Interleaved slots made every refresh
/// invalidate a copy the other CPU's prefetcher had pulled in.
const FRESH_BATCH: u32 = CPU_CACHE.div_ceil(2) as u32;

/// One connection: both tuples, the state word, the creation time. Its two
/// chain links live apart, in [`Links`].
///
/// An IPv4 slot is exactly one 64-byte cache line.
#[repr(C, align(64))]
pub(crate) struct Slot<K: Packed> {
    /// Even while stable; odd while the slot is being (re)written for a new
    /// connection. Bumped by 2 per reuse, so it doubles as the generation.
    pub seq: AtomicU32,
    /// Expiry, status, TCP state and generation tag: see `table::state`.
    pub state: AtomicU64,
    /// Creation time (ns). While the slot is free: the free-list link.
    pub created: AtomicU64,
    /// Original (0) and reply (1) tuples.
    pub tuples: [K::Stored; 2],
    _k: PhantomData<K>,
}

impl<K: Packed> Default for Slot<K> {
    fn default() -> Self {
        Self {
            seq: AtomicU32::default(),
            state: AtomicU64::default(),
            created: AtomicU64::default(),
            tuples: Default::default(),
            _k: PhantomData,
        }
    }
}

// SAFETY: a slot is atomics only (the tuple words are `[AtomicU64; W]`), all
// zero by default; `PhantomData` has no bytes.
unsafe impl<K: Packed> ZeroDefault for Slot<K> {}

impl<K: Packed> Slot<K> {
    /// Compare a stored tuple with a key.
    #[inline]
    pub fn tuple_eq(&self, dir: usize, key: &K) -> bool {
        let stored = self.tuples[dir].as_ref();
        key.words().iter().zip(stored).all(|(w, a)| a.load(Ordering::Acquire) == *w)
    }

    /// Read a stored tuple.
    #[inline]
    pub fn tuple(&self, dir: usize) -> K {
        let mut words = [0u64; 5];
        let stored = self.tuples[dir].as_ref();
        for (w, a) in words.iter_mut().zip(stored) {
            *w = a.load(Ordering::Acquire);
        }
        K::from_words(&words[..stored.len()])
    }

    /// Write a stored tuple (slot owned by the writer: seq odd).
    #[inline]
    pub fn set_tuple(&self, dir: usize, key: &K) {
        for (a, w) in self.tuples[dir].as_ref().iter().zip(key.words()) {
            a.store(*w, Ordering::Release);
        }
    }
}

/// The chain links of a slot's original (0) and reply (1) hash nodes: the
/// next node's link word (see `table.rs`). Kept out of the slot's cache line
/// so that a walk passing a node reads only these words, never the line the
/// node's owner writes on every refresh.
#[derive(Default)]
pub(crate) struct Links(pub [AtomicU64; 2]);

// SAFETY: two atomics, zero by default.
unsafe impl ZeroDefault for Links {}

/// Chunked, type-stable slot storage: per-CPU caches of free slots in front
/// of a lock-free shared free list.
pub(crate) struct Slab<K: Packed> {
    /// Chunk directory; a null entry is a chunk not yet allocated.
    chunks: Box<[AtomicPtr<Slot<K>>]>,
    /// The links of the same slots, chunk by chunk; a chunk's links are
    /// published before its slots.
    links: Box<[AtomicPtr<Links>]>,
    grow: Mutex<()>,
    /// Slots below this index have been handed to a CPU at least once.
    fresh: AtomicU32,
    /// Treiber stack of free slots: `tag << 32 | (idx + 1)`, 0 when empty.
    /// The tag defeats ABA.
    free: AtomicU64,
    /// Free slots kept per CPU, as SLUB keeps per-CPU slabs: a CPU's
    /// removals feed its own new connections, and only an empty or full
    /// cache touches the shared list, whose head every CPU would otherwise
    /// write on every insert and removal.
    caches: Box<[CachePadded<Mutex<Vec<u32>>>]>,
    cap: u32,
}

impl<K: Packed> Slab<K> {
    /// Storage for at most `cap` slots, used by `ncpus` CPUs. Up to
    /// `ncpus * CPU_CACHE` free slots may sit in CPU caches, out of reach of
    /// the other CPUs: the caller sizes `cap` with that room.
    pub fn new(cap: u32, ncpus: usize) -> Self {
        let nchunks = (cap as usize).div_ceil(CHUNK);
        Self {
            chunks: (0..nchunks).map(|_| AtomicPtr::new(std::ptr::null_mut())).collect(),
            links: (0..nchunks).map(|_| AtomicPtr::new(std::ptr::null_mut())).collect(),
            grow: Mutex::new(()),
            fresh: AtomicU32::new(0),
            free: AtomicU64::new(0),
            caches: (0..ncpus.max(1))
                .map(|_| CachePadded::new(Mutex::new(Vec::with_capacity(CPU_CACHE + 1))))
                .collect(),
            cap,
        }
    }

    #[inline]
    fn cache(&self, cpu: usize) -> &Mutex<Vec<u32>> {
        crate::of_cpu::<CachePadded<Mutex<Vec<u32>>>>(&self.caches, cpu)
    }

    /// The slot at `idx`.
    ///
    /// `idx` must have come from [`Slab::alloc`] (directly, or through a chain
    /// link published after the allocation): its chunk then exists.
    #[inline]
    pub fn slot(&self, idx: u32) -> &Slot<K> {
        let chunk = self.chunks[(idx >> CHUNK_SHIFT) as usize].load(Ordering::Acquire);
        assert!(!chunk.is_null(), "slot {idx} was never allocated");
        // SAFETY: a non-null chunk pointer came from `Box::into_raw` of a
        // boxed slice of `CHUNK` slots (see `ensure_chunk`); chunks are freed
        // only in `Drop`, which needs `&mut self`, so the borrow of `self`
        // keeps the chunk alive. The offset is below `CHUNK`.
        unsafe { &*chunk.add(idx as usize & (CHUNK - 1)) }
    }

    /// The links of slot `idx` (same contract as [`Slab::slot`]).
    #[inline]
    pub fn links(&self, idx: u32) -> &Links {
        let chunk = self.links[(idx >> CHUNK_SHIFT) as usize].load(Ordering::Acquire);
        assert!(!chunk.is_null(), "slot {idx} was never allocated");
        // SAFETY: as in `slot`: the chunk came from `Box::into_raw` of
        // `CHUNK` links, freed only in `Drop`; the offset is below `CHUNK`.
        unsafe { &*chunk.add(idx as usize & (CHUNK - 1)) }
    }

    /// Take a free slot for `cpu`: from its cache, else from the shared
    /// list, else a fresh batch; `None` if none is left.
    pub fn alloc(&self, cpu: usize) -> Option<u32> {
        if let Some(idx) = self.cache(cpu).lock().pop() {
            return Some(idx);
        }
        self.alloc_shared(cpu)
    }

    /// Return a slot on `cpu`. The caller has unlinked it from every chain.
    /// A full cache first gives its oldest half back to the shared list.
    pub fn free(&self, cpu: usize, idx: u32) {
        let mut cache = self.cache(cpu).lock();
        if cache.len() >= CPU_CACHE {
            for old in cache.drain(..CPU_CACHE.div_ceil(2)) {
                self.free_shared(old);
            }
        }
        cache.push(idx);
    }

    /// Take a slot from the shared list, or fresh ones for `cpu`: the first
    /// is returned, the rest of the batch goes into its cache.
    fn alloc_shared(&self, cpu: usize) -> Option<u32> {
        let mut head = self.free.load(Ordering::Acquire);
        while head as u32 != 0 {
            let idx = head as u32 - 1;
            // A racing pop may already have reused this slot and overwritten
            // the link; the tag makes our compare-exchange fail in that case.
            let next = self.slot(idx).created.load(Ordering::Relaxed) as u32;
            let new = ((head >> 32).wrapping_add(1) << 32) | u64::from(next);
            match self.free.compare_exchange_weak(head, new, Ordering::Acquire, Ordering::Acquire) {
                Ok(_) => return Some(idx),
                Err(h) => head = h,
            }
        }
        let first = self.fresh.fetch_add(FRESH_BATCH, Ordering::Relaxed);
        if first >= self.cap {
            // Leave `fresh` past the end: later callers fail the same way
            // until a slot is freed.
            self.fresh.store(self.cap, Ordering::Relaxed);
            return None;
        }
        let end = first.saturating_add(FRESH_BATCH).min(self.cap);
        // A batch spans at most two chunks (it is never longer than one).
        self.ensure_chunk((first >> CHUNK_SHIFT) as usize);
        self.ensure_chunk(((end - 1) >> CHUNK_SHIFT) as usize);
        if end > first + 1 {
            // Popped from the end: the CPU hands them out in order.
            self.cache(cpu).lock().extend((first + 1..end).rev());
        }
        Some(first)
    }

    /// Put a slot on the shared list.
    fn free_shared(&self, idx: u32) {
        let slot = self.slot(idx);
        let mut head = self.free.load(Ordering::Relaxed);
        loop {
            slot.created.store(u64::from(head as u32), Ordering::Relaxed);
            let new = ((head >> 32).wrapping_add(1) << 32) | u64::from(idx + 1);
            match self.free.compare_exchange_weak(head, new, Ordering::Release, Ordering::Relaxed) {
                Ok(_) => return,
                Err(h) => head = h,
            }
        }
    }

    fn ensure_chunk(&self, c: usize) {
        if !self.chunks[c].load(Ordering::Acquire).is_null() {
            return;
        }
        let _g = self.grow.lock();
        if self.chunks[c].load(Ordering::Relaxed).is_null() {
            // The links first: whoever sees the slots' chunk sees them too.
            let links: Box<[Links]> = zeroed_slice(CHUNK);
            self.links[c].store(Box::into_raw(links) as *mut Links, Ordering::Release);
            let chunk: Box<[Slot<K>]> = zeroed_slice(CHUNK);
            let ptr = Box::into_raw(chunk) as *mut Slot<K>;
            self.chunks[c].store(ptr, Ordering::Release);
        }
    }

    /// Slots handed out at least once (the high-water mark).
    #[cfg(test)]
    pub fn high_water(&self) -> u32 {
        self.fresh.load(Ordering::Relaxed).min(self.cap)
    }

    /// Bytes of slot memory allocated so far.
    pub fn allocated_bytes(&self) -> usize {
        let chunks = self.chunks.iter().filter(|c| !c.load(Ordering::Relaxed).is_null()).count();
        chunks * CHUNK * (std::mem::size_of::<Slot<K>>() + std::mem::size_of::<Links>())
            + 2 * self.chunks.len() * std::mem::size_of::<usize>()
    }
}

impl<K: Packed> Drop for Slab<K> {
    fn drop(&mut self) {
        for c in self.chunks.iter() {
            let ptr = c.load(Ordering::Relaxed);
            if !ptr.is_null() {
                // SAFETY: `ptr` came from `Box::into_raw` of a `Box<[Slot<K>]>`
                // of length `CHUNK` and is dropped exactly once, here.
                drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, CHUNK)) });
            }
        }
        for c in self.links.iter() {
            let ptr = c.load(Ordering::Relaxed);
            if !ptr.is_null() {
                // SAFETY: as above, for a `Box<[Links]>` of length `CHUNK`.
                drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, CHUNK)) });
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::tuple::{V4Key, V6Key};

    #[test]
    fn ipv4_slot_is_one_cache_line() {
        assert_eq!(std::mem::size_of::<Slot<V4Key>>(), 64);
        assert_eq!(std::mem::size_of::<Slot<V6Key>>(), 128);
    }

    #[test]
    fn alloc_reuses_freed_slots_and_respects_cap() {
        let s: Slab<V4Key> = Slab::new(3, 1);
        let a = s.alloc(0).unwrap();
        let b = s.alloc(0).unwrap();
        let c = s.alloc(0).unwrap();
        assert_eq!(s.alloc(0), None);
        s.free(0, b);
        assert_eq!(s.alloc(0), Some(b));
        s.free(0, a);
        s.free(0, c);
        let mut got = [s.alloc(0).unwrap(), s.alloc(0).unwrap()];
        got.sort();
        assert_eq!(got, [a, c]);
        assert_eq!(s.alloc(0), None);
        assert_eq!(s.high_water(), 3);
    }

    #[test]
    fn each_cpu_takes_fresh_slots_in_runs_of_its_own() {
        let s: Slab<V4Key> = Slab::new(4 * FRESH_BATCH + 3, 2);
        // Two CPUs allocating in turn still get consecutive slots each.
        let mut got = [Vec::new(), Vec::new()];
        for _ in 0..2 * FRESH_BATCH {
            for (cpu, v) in got.iter_mut().enumerate() {
                v.push(s.alloc(cpu).unwrap());
            }
        }
        for v in &got {
            for run in v.chunks(FRESH_BATCH as usize) {
                let first = run[0];
                assert_eq!(first % FRESH_BATCH, 0, "{v:?}");
                assert!(run.iter().enumerate().all(|(k, &i)| i == first + k as u32), "{v:?}");
            }
        }
        // The last, short batch stops at `cap` and every slot is handed out once.
        let mut all: Vec<u32> = got.concat();
        while let Some(i) = s.alloc(0).or_else(|| s.alloc(1)) {
            all.push(i);
        }
        all.sort();
        all.dedup();
        assert_eq!(all.len(), (4 * FRESH_BATCH + 3) as usize);
        assert_eq!(s.high_water(), 4 * FRESH_BATCH + 3);
    }

    #[test]
    fn a_cpu_reuses_its_own_freed_slots_and_spills_a_full_cache() {
        let n = 2 * CPU_CACHE as u32 + 4;
        let s: Slab<V4Key> = Slab::new(n, 2);
        let mine: Vec<u32> = (0..=CPU_CACHE).map(|_| s.alloc(0).unwrap()).collect();
        // The rest of the last fresh batch waits in CPU 0's cache: take it too.
        let extra: Vec<u32> = std::iter::from_fn(|| s.cache(0).lock().pop()).collect();
        // CPU 0 frees one more slot than its cache holds: the oldest half
        // goes to the shared list, the rest stays cached.
        for &i in &mine {
            s.free(0, i);
        }
        assert_eq!(s.cache(0).lock().len(), CPU_CACHE + 1 - CPU_CACHE.div_ceil(2));
        // CPU 0 gets its own last-freed slot back first.
        assert_eq!(s.alloc(0), Some(mine[CPU_CACHE]));
        // CPU 1 has no cache: it takes a spilled slot from the shared list.
        let spilled = s.alloc(1).unwrap();
        assert!(mine[..CPU_CACHE.div_ceil(2)].contains(&spilled), "{spilled} was not spilled");
        // Everything can still be handed out, each slot once, and no more than `cap`.
        let mut all: Vec<u32> = [vec![mine[CPU_CACHE], spilled], extra].concat();
        while let Some(i) = s.alloc(1).or_else(|| s.alloc(0)) {
            all.push(i);
        }
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n as usize);
    }
}
