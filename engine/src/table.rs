//! The conntrack table: hash chains of both tuples of every confirmed
//! connection, read without locks and changed under per-bucket locks.
//!
//! # Layout
//! As in the kernel, every connection is hashed twice, once by its original
//! and once by its reply tuple, and both hash nodes sit on singly linked
//! chains hanging off one bucket array. A chain ends in a *nulls* marker that
//! names its bucket (the kernel's `hlist_nulls`), so a lockless reader that
//! was carried onto another chain by a concurrent removal and reuse notices
//! and starts over (`search_restart`). IPv4 and IPv6 entries share the bucket
//! array and the locks but live in separate slabs, so an IPv4 entry is one
//! cache line.
//!
//! # Invariants
//! - A chain is only changed with its bucket's lock stripe held; confirm and
//!   removal hold the stripes of both of a connection's buckets, taken in
//!   index order (`nf_conntrack_double_lock`).
//! - A slot's tuples change only while its `seq` is odd, and only after the
//!   slot was unlinked from both chains and freed. A reader that reads `seq`,
//!   then the node, then `seq` again, and sees the same even value, has read
//!   a consistent node.
//! - The state word carries the low bits of the slot's generation, so a
//!   compare-and-swap through a stale [`ConnRef`] fails instead of touching
//!   the slot's next occupant.
//! - `count` is the number of connections allocated (unconfirmed ones owned
//!   by packets included, as the kernel's `nf_conntrack_count`); it never
//!   exceeds `max`. It is a pool of `max` units that CPUs take in batches
//!   (see `count.rs`), so a new connection does not write a line every CPU
//!   writes; a connection is refused only when every unit is in use, as the
//!   kernel's single counter would refuse it.
//!
//! # Links apart from the slot
//! A link word names the next node (low 32 bits: `NULLS | bucket` at a
//! chain's end, else `V6_BIT | idx << 1 | dir`) and carries that node's *hash
//! tag* (high 32 bits: the upper half of the hash its tuple was bucketed by).
//! The links of a slot's two nodes live in a separate array (`slab::Links`), not
//! in the slot's cache line. A walk compares the tag before touching a node:
//! a node that cannot match costs one load of its link word, and the walk
//! never reads the slot line that the node's owner writes on every refresh,
//! so two CPUs refreshing their own connections do not pull each other's
//! lines back and forth just by sharing chains. Only a node whose tag
//! matches is read in full, under its `seq`.
//!
//! Following a link without a `seq` check is what the kernel's
//! `hlist_nulls` readers do: a link word is one atomic, every link to a node
//! is a copy of the one written when the node was inserted, and a removed
//! node keeps its link, so a walk carried off its chain by a removal and
//! reuse ends on a foreign nulls marker and starts over. A stale tag can only
//! make a walk pass a node inserted after the walk read the link, which a
//! lookup racing that insert may miss anyway.
//!
//! # The lookup-hit path
//! Hash, one bucket-head load, then per node: the link word's tag, and for
//! the node that matches, `seq`, the tuple words, the state word, `seq`
//! again. No lock, no reference count, no store to shared memory.

use rand::Rng;

use crate::clock::{Jiffies, Spans};
use crate::conn::{ConnRef, Dir, Hit, Status, TcpFlags, TcpState};
use crate::count::Count;
use crate::profile::{ChainLimit, ClashPolicy, KernelProfile};
use crate::slab::{Slab, Slot};
use crate::stats::{Stat, Stats, StatsSnapshot, Tally};
use crate::sync::{spin_hint, AtomicU64, AtomicUsize, CachePadded, Mutex, MutexGuard, Ordering};
use crate::tuple::{Family, L4Proto, Packed, Tuple, V4Key, V6Key};
use crate::{At, Nanos};

const NULLS: u32 = 1 << 31;
const V6_BIT: u32 = 1 << 30;
/// A lockless walk longer than this starts over: it can only happen when the
/// nodes under it are being moved faster than it walks.
const WALK_LIMIT: u32 = 1 << 16;
const MAX_LOCKS: usize = 1024;

#[inline]
fn nulls(bucket: usize) -> u32 {
    NULLS | bucket as u32
}

#[inline]
fn decode(link: u32) -> (u32, usize) {
    ((link & !(NULLS | V6_BIT)) >> 1, (link & 1) as usize)
}

/// The node a link word names (or the nulls marker it ends on).
#[inline(always)]
fn target(link: u64) -> u32 {
    link as u32
}

/// The hash tag a link word carries for the node it names.
#[inline(always)]
fn link_tag(link: u64) -> u32 {
    (link >> 32) as u32
}

/// The tag of a node whose tuple hashes to `hash`: the half the bucket
/// index does not use.
#[inline(always)]
fn hash_tag(hash: u64) -> u32 {
    (hash >> 32) as u32
}

/// Whether the node `link` names may hold a key of family `K` whose hash
/// has tag `tag`; a node that may not is passed by its link alone.
#[inline(always)]
fn may_hold<K: FamilyKey>(link: u64, tag: u32) -> bool {
    target(link) & V6_BIT == K::BIT && link_tag(link) == tag
}

/// The link word naming node `node`, whose tuple hashes to `hash`.
#[inline]
fn link_to(node: u32, hash: u64) -> u64 {
    u64::from(hash_tag(hash)) << 32 | u64::from(node)
}

/// The link word ending chain `bucket`.
#[inline]
fn end_of(bucket: usize) -> u64 {
    u64::from(nulls(bucket))
}

/// The state word: `expires` (jiffies, 32 bits) | status (8) | TCP state (4) | generation tag (20).
mod state {
    use crate::conn::{Status, TcpState};

    const TAG_BITS: u32 = 20;

    pub fn pack(expires: u32, status: Status, tcp: TcpState, gen: u32) -> u64 {
        u64::from(expires) | u64::from(status.bits()) << 32 | u64::from(tcp as u8) << 40 | u64::from(tag_of(gen)) << 44
    }
    pub fn expires(w: u64) -> u32 {
        w as u32
    }
    pub fn status(w: u64) -> Status {
        Status::from_bits((w >> 32) as u8)
    }
    pub fn tcp(w: u64) -> TcpState {
        TcpState::from_bits(((w >> 40) & 0xf) as u8)
    }
    pub fn tag(w: u64) -> u32 {
        (w >> 44) as u32
    }
    pub fn tag_of(gen: u32) -> u32 {
        (gen >> 1) & ((1 << TAG_BITS) - 1)
    }
    pub fn with_status(w: u64, s: Status) -> u64 {
        (w & !(0xff << 32)) | u64::from(s.bits()) << 32
    }
}

/// The 128-bit product of `a` and `b`, its two halves xored.
#[inline(always)]
fn fold(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

/// `(s32)(expires - now) <= 0`, as the kernel's `nf_ct_is_expired`.
#[inline]
fn is_expired(expires: u32, now: u32) -> bool {
    (expires.wrapping_sub(now) as i32) <= 0
}

/// A per-family view of the table, for code generic over the key width.
trait FamilyKey: Packed {
    const FAMILY: Family;
    const BIT: u32;
    fn slab(ct: &Conntrack) -> &Slab<Self>;
}

impl FamilyKey for V4Key {
    const FAMILY: Family = Family::V4;
    const BIT: u32 = 0;
    fn slab(ct: &Conntrack) -> &Slab<Self> {
        &ct.v4
    }
}

impl FamilyKey for V6Key {
    const FAMILY: Family = Family::V6;
    const BIT: u32 = V6_BIT;
    fn slab(ct: &Conntrack) -> &Slab<Self> {
        &ct.v6
    }
}

/// The walk met a slot being rewritten or a foreign nulls marker: start over.
struct Restart;

/// A node read consistently.
struct Node {
    /// The link word to the next node; not read (0) for a node that matched a key.
    next: u64,
    conn: ConnRef,
    dir: Dir,
    state: u64,
}

/// A node whose tuple matched the key, with the rest of its entry.
struct Matched<K> {
    node: Node,
    created: Nanos,
    /// The entry's tuple in the other direction.
    other: K,
}

/// Why confirm dropped a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// A tuple was already in the table and the clash could not be resolved.
    Clash {
        /// Which of the loser's tuples was found taken first.
        found: Dir,
        /// Why it was not resolved.
        cause: ClashCause,
    },
    /// A bucket chain was longer than the profile's limit (5.15+).
    ChainTooLong,
    /// No room for the entry.
    TableFull,
}

/// Why a clash was not resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClashCause {
    /// The kernel never resolves clashes (3.10 – 4.7).
    Policy,
    /// The protocol does not allow clash resolution (TCP).
    Protocol,
    /// The winner was NATed and is not identical to the loser.
    NatDiffers,
    /// The loser's reply tuple is taken by an entry it cannot merge with.
    ReplyTaken,
}

/// What confirm did with a packet's new connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Confirm {
    /// Inserted: both tuples are now in the table.
    Inserted(Hit),
    /// Clash resolved by merging: the packet now belongs to this existing
    /// connection and is translated by its NAT mapping.
    Merged(Hit),
    /// Clash resolved by inserting the loser reply-only (5.6+ NAT_CLASH).
    NatClash(Hit),
    /// The packet is dropped.
    Dropped(DropReason),
}

impl Confirm {
    /// Whether the packet continues (everything but [`Confirm::Dropped`]).
    pub fn accepted(&self) -> bool {
        !matches!(self, Confirm::Dropped(_))
    }
}

/// The table could not make room for a new connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableFull;

/// What happened to a connection when a packet updated it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Update {
    /// State and timeout updated (or nothing needed changing).
    Accepted,
    /// The connection was removed meanwhile (expired, killed).
    Gone,
    /// A reply consumed a NAT_CLASH entry, which is now removed.
    ClashEntryConsumed,
    /// A SYN hit a closed TCP connection, which was removed: look up again
    /// to create a new one (the kernel's `-NF_REPEAT`).
    Reopen,
}

/// What [`Conntrack::track`] did with a packet of a confirmed connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tracked {
    /// The connection.
    pub conn: ConnRef,
    /// The direction the packet's tuple matched.
    pub dir: Dir,
    /// What the update did.
    pub update: Update,
}

/// What the protocol tracker needs to know of a packet and its connection.
#[derive(Clone, Copy)]
struct Packet {
    conn: ConnRef,
    dir: Dir,
    proto: L4Proto,
    created: Nanos,
}

/// Outcome of a GC pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Buckets scanned.
    pub buckets: usize,
    /// Expired connections removed.
    pub reaped: usize,
}

/// A new connection owned by the packet that created it: not in the table,
/// invisible to every other CPU until [`Conntrack::confirm`].
///
/// It holds one unit of `nf_conntrack_count`; dropping it without confirming
/// (the packet was dropped) gives the unit back.
#[derive(Debug)]
pub struct Unconfirmed<'t> {
    table: &'t Conntrack,
    orig: Tuple,
    reply: Tuple,
    status: Status,
    tcp_state: TcpState,
    created: Nanos,
    /// Initial timeout, in jiffies.
    timeout: u32,
    reserved: bool,
    /// The CPU whose unit of `count` it holds.
    cpu: usize,
}

impl Unconfirmed<'_> {
    /// The original tuple.
    pub fn orig(&self) -> &Tuple {
        &self.orig
    }
    /// The reply tuple, with the NAT applied so far.
    pub fn reply(&self) -> &Tuple {
        &self.reply
    }
    /// Status bits (NAT bits once NAT ran).
    pub fn status(&self) -> Status {
        self.status
    }
    /// When the packet that created it arrived.
    pub fn created(&self) -> Nanos {
        self.created
    }

    /// Destination NAT: the connection now goes to `addr:port`, so replies
    /// come from there.
    pub fn dnat(&mut self, addr: std::net::IpAddr, port: u16) {
        assert_eq!(addr.is_ipv4(), self.orig.src.is_ipv4(), "DNAT must keep the address family");
        self.reply.src = addr;
        self.reply.sport = port;
        self.status.insert(Status::DST_NAT);
    }

    /// Source NAT: the connection now leaves from `addr:port`, so replies go there.
    pub fn snat(&mut self, addr: std::net::IpAddr, port: u16) {
        assert_eq!(addr.is_ipv4(), self.orig.src.is_ipv4(), "SNAT must keep the address family");
        self.reply = crate::nat::snat::candidate(&self.reply, addr, port);
        self.status.insert(Status::SRC_NAT);
    }
}

impl Drop for Unconfirmed<'_> {
    fn drop(&mut self) {
        if self.reserved {
            self.table.count.give(self.cpu);
        }
    }
}

/// A connection tracking table with the behaviour of one kernel profile.
pub struct Conntrack {
    profile: KernelProfile,
    /// Bucket heads: the link word of each chain's first node.
    heads: Box<[AtomicU64]>,
    locks: Box<[CachePadded<Mutex<()>>]>,
    v4: Slab<V4Key>,
    v6: Slab<V6Key>,
    count: Count,
    gc_cursor: CachePadded<AtomicUsize>,
    stats: Stats,
    /// The hash key, drawn from the seed (the kernel's `nf_conntrack_hash_rnd`).
    hash_key: [u64; 4],
    max: usize,
    jiffies: Jiffies,
    spans: Spans,
    chain_limit: Option<ChainLimit>,
}

impl std::fmt::Debug for Conntrack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conntrack")
            .field("profile", &self.profile.name)
            .field("buckets", &self.heads.len())
            .field("count", &self.count())
            .field("max", &self.max)
            .finish()
    }
}

enum Scan<K> {
    Free,
    Found(Matched<K>),
    TooLong,
}

impl Conntrack {
    /// An empty table for `profile`, with counters for `ncpus` CPUs and the
    /// hash keyed from `seed` (the kernel keys it randomly at boot).
    pub fn new(profile: KernelProfile, ncpus: usize, seed: u64) -> Self {
        let nbuckets = profile.conntrack.buckets.max(1) as usize;
        let max = profile.conntrack.max.max(1) as usize;
        let nlocks = nbuckets.next_power_of_two().min(MAX_LOCKS);
        let ncpus = ncpus.max(1);
        // Room for `max` entries plus those whose unit of `count` was
        // returned a moment before their slot (see `kill`), plus the free
        // slots the CPUs' caches may hold out of each other's reach.
        let cap = (max + 2 * ncpus + 16 + ncpus * crate::slab::CPU_CACHE) as u32;
        let mut s = seed;
        let mut next = || {
            // splitmix64: spreads one seed over four hash keys.
            s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let hash_key = [next(), next(), next(), next()];
        let jiffies = Jiffies::new(profile.conntrack.hz);
        let spans =
            Spans::new(&jiffies, &profile.timeouts, profile.conntrack.nat_clash_timeout, profile.conntrack.refresh_min);
        Self {
            jiffies,
            spans,
            chain_limit: profile.conntrack.chain_limit,
            heads: (0..nbuckets).map(|b| AtomicU64::new(end_of(b))).collect(),
            locks: (0..nlocks).map(|_| CachePadded::new(Mutex::new(()))).collect(),
            v4: Slab::new(cap, ncpus),
            v6: Slab::new(cap, ncpus),
            count: Count::new(max, ncpus),
            gc_cursor: CachePadded::new(AtomicUsize::new(0)),
            stats: Stats::new(ncpus),
            hash_key,
            max,
            profile,
        }
    }

    /// The profile this table behaves as.
    pub fn profile(&self) -> &KernelProfile {
        &self.profile
    }

    /// Connections allocated, unconfirmed ones included (`nf_conntrack_count`).
    pub fn count(&self) -> usize {
        self.count.get()
    }

    /// `nf_conntrack_max`.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Number of buckets.
    pub fn buckets(&self) -> usize {
        self.heads.len()
    }

    /// The per-CPU counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// Entries ever linked into the table and entries ever removed, summed
    /// over CPUs. With no unconfirmed connection alive,
    /// `count() == inserted - removed`.
    pub fn lifetime(&self) -> (u64, u64) {
        self.stats.tallies()
    }

    /// Count a statistic on a CPU (for packet-path outcomes decided outside
    /// the table, such as `invalid`).
    pub fn count_stat(&self, at: At, stat: Stat) {
        self.stats.inc(at.cpu, stat);
    }

    /// Bytes of memory the table holds: buckets, locks, counters, slot chunks.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of_val(&*self.heads)
            + std::mem::size_of_val(&*self.locks)
            + self.stats.cpus() * std::mem::size_of::<CachePadded<[u64; 10]>>()
            + self.v4.allocated_bytes()
            + self.v6.allocated_bytes()
    }

    #[inline]
    fn jiffies(&self, now: Nanos) -> u32 {
        self.jiffies.of(now) as u32
    }

    /// The time at which a connection expiring at jiffy `expires` expires, seen at `now`.
    #[inline]
    fn expires_ns(&self, expires: u32, now: Nanos) -> Nanos {
        self.jiffies.expiry_ns(expires, now)
    }

    /// The keyed hash of a packed tuple: its words folded in pairs by
    /// 64×64→128-bit multiplies (the high and low halves xored, as ahash's
    /// fallback and wyhash mix), then once more with the last two key words.
    /// Two multiplies for an IPv4 tuple, four for IPv6, no hasher state to
    /// set up: it runs once per lookup and twice per insert or removal.
    #[inline]
    fn hash<K: Packed>(&self, key: &K) -> u64 {
        let [k0, k1, k2, k3] = self.hash_key;
        let mut h = 0u64;
        for pair in key.words().chunks(2) {
            let hi = pair.get(1).copied().unwrap_or(0);
            h = fold(pair[0] ^ k0 ^ h, hi ^ k1);
        }
        fold(h ^ k2, k3)
    }

    /// `reciprocal_scale`, as the kernel maps a hash onto its buckets.
    #[inline]
    fn bucket(&self, hash: u64) -> usize {
        ((hash as u32 as u64 * self.heads.len() as u64) >> 32) as usize
    }

    fn lock_pair(&self, a: usize, b: usize) -> (MutexGuard<'_, ()>, Option<MutexGuard<'_, ()>>) {
        let mask = self.locks.len() - 1;
        let (la, lb) = (a & mask, b & mask);
        if la == lb {
            (self.locks[la].lock(), None)
        } else {
            let (lo, hi) = (la.min(lb), la.max(lb));
            let g = self.locks[lo].lock();
            (g, Some(self.locks[hi].lock()))
        }
    }

    fn conn<K: FamilyKey>(idx: u32, gen: u32) -> ConnRef {
        ConnRef { family: K::FAMILY, idx, gen }
    }

    // ----- lockless node reads -------------------------------------------------

    /// The word holding node `node`'s link to its successor.
    #[inline(always)]
    fn links_of(&self, node: u32) -> &AtomicU64 {
        let (idx, dir) = decode(node);
        if node & V6_BIT == 0 {
            &self.v4.links(idx).0[dir]
        } else {
            &self.v6.links(idx).0[dir]
        }
    }

    /// Read node `node` of family `K`, and the rest of its entry if its
    /// tuple equals `key`. `seq` and the tuple words first; on a match the
    /// state word, the creation time and the other tuple (not the link:
    /// `Node::next` is 0), otherwise the link (and, with no key, the state
    /// word); then `seq` again.
    #[inline(always)]
    fn read_node<K: FamilyKey>(&self, node: u32, key: Option<&K>) -> Result<(Node, Option<(Nanos, K)>), Restart> {
        let (idx, dir) = decode(node);
        let slab = K::slab(self);
        let slot = slab.slot(idx);
        let s1 = slot.seq.load(Ordering::Acquire);
        if s1 & 1 != 0 {
            return Err(Restart);
        }
        let node = |next, state| Node {
            next,
            conn: Self::conn::<K>(idx, s1),
            dir: if dir == 0 { Dir::Original } else { Dir::Reply },
            state,
        };
        if key.is_some_and(|k| slot.tuple_eq(dir, k)) {
            // The link is not read here: a lookup that stops at this node
            // never needs it, and it lives on another cache line. A walk
            // that goes on reads it then (see `walk_at`).
            let next = 0;
            let state = slot.state.load(Ordering::Acquire);
            let created = slot.created.load(Ordering::Acquire);
            let other = slot.tuple(1 - dir);
            // Every load above is Acquire, so this one cannot move before them.
            if slot.seq.load(Ordering::Relaxed) != s1 {
                return Err(Restart);
            }
            return Ok((node(next, state), Some((created, other))));
        }
        let next = slab.links(idx).0[dir].load(Ordering::Acquire);
        // A walk that only passes this node needs its link, not its state.
        let state = if key.is_some() { 0 } else { slot.state.load(Ordering::Acquire) };
        if slot.seq.load(Ordering::Relaxed) != s1 {
            return Err(Restart);
        }
        Ok((node(next, state), None))
    }

    /// Read any node, whatever its family.
    #[inline]
    fn read_any(&self, link: u32) -> Result<Node, Restart> {
        if link & V6_BIT == 0 {
            self.read_node::<V4Key>(link, None).map(|n| n.0)
        } else {
            self.read_node::<V6Key>(link, None).map(|n| n.0)
        }
    }

    /// Walk the chain of `hash` without locks, calling `visit` on each
    /// live, unexpired node whose tuple equals `key` until it returns
    /// `true`. Expired connections met on the way are removed
    /// (`nf_ct_gc_expired`).
    #[inline(always)]
    fn walk<K: FamilyKey>(&self, hash: u64, key: &K, at: At, visit: impl FnMut(Matched<K>) -> bool) {
        self.walk_at(hash, key, at, self.jiffies(at.now), visit);
    }

    /// [`Conntrack::walk`] with `now`, the jiffy of `at.now`, computed by the caller.
    #[inline(always)]
    fn walk_at<K: FamilyKey>(&self, hash: u64, key: &K, at: At, now: u32, mut visit: impl FnMut(Matched<K>) -> bool) {
        let b = self.bucket(hash);
        let tag = hash_tag(hash);
        'restart: loop {
            let mut link = self.heads[b].load(Ordering::Acquire);
            let mut steps = 0;
            while target(link) & NULLS == 0 {
                steps += 1;
                if steps > WALK_LIMIT {
                    spin_hint();
                    continue 'restart;
                }
                let at_node = target(link);
                if !may_hold::<K>(link, tag) {
                    // It cannot hold `key`: pass it by its link alone.
                    link = self.links_of(at_node).load(Ordering::Acquire);
                    continue;
                }
                let Ok((node, rest)) = self.read_node::<K>(at_node, Some(key)) else {
                    spin_hint();
                    continue 'restart;
                };
                let Some((created, other)) = rest else {
                    link = node.next;
                    continue;
                };
                // Read only if the walk goes on past this node.
                let next = || self.links_of(at_node).load(Ordering::Acquire);
                let status = state::status(node.state);
                if !status.contains(Status::CONFIRMED) || status.contains(Status::DYING) {
                    link = next();
                    continue;
                }
                if is_expired(state::expires(node.state), now) {
                    link = next();
                    self.kill_then(node.conn, at, ());
                    continue;
                }
                if visit(Matched { node, created, other }) {
                    return;
                }
                link = next();
            }
            if target(link) != nulls(b) {
                self.stats.inc(at.cpu, Stat::SearchRestart);
                continue 'restart;
            }
            return;
        }
    }

    /// The caller's `matched` is the tuple that was looked up, unpacked already.
    #[inline(always)]
    fn hit<K: FamilyKey>(&self, m: &Matched<K>, matched: Tuple, nj: u64) -> Hit {
        let (orig, reply) = match m.node.dir {
            Dir::Original => (matched, m.other.unpack()),
            Dir::Reply => (m.other.unpack(), matched),
        };
        Hit {
            conn: m.node.conn,
            dir: m.node.dir,
            orig,
            reply,
            status: state::status(m.node.state),
            tcp_state: state::tcp(m.node.state),
            expires: self.jiffies.expiry_ns_at(state::expires(m.node.state), nj),
            created: m.created,
        }
    }

    // ----- lookup ----------------------------------------------------------------

    /// Conntrack-in lookup: the confirmed connection `tuple` belongs to, in
    /// either direction. Takes no lock and writes no shared memory.
    pub fn lookup(&self, tuple: &Tuple, at: At) -> Option<Hit> {
        match tuple.family() {
            Family::V4 => self.lookup_k(tuple, &V4Key::pack(tuple)?, at),
            Family::V6 => self.lookup_k(tuple, &V6Key::pack(tuple)?, at),
        }
    }

    #[inline]
    fn lookup_k<K: FamilyKey>(&self, tuple: &Tuple, key: &K, at: At) -> Option<Hit> {
        let mut found = None;
        let nj = self.jiffies.of(at.now);
        self.walk_at(self.hash(key), key, at, nj as u32, |m| {
            found = Some(m);
            true
        });
        // Build the `Hit` once, outside the walk: it is the largest value on
        // this path and every move of it costs.
        let m = found?;
        if self.profile.counters.found_on_lookup {
            self.stats.inc(at.cpu, Stat::Found);
        }
        Some(self.hit(&m, *tuple, nj))
    }

    /// The conntrack-in path of a packet of a confirmed connection: the
    /// lookup and, on a hit, the protocol tracker's update, in one pass, as
    /// `nf_conntrack_in` resolves the connection and hands it to the L4
    /// handler. The same effects and counters as [`Conntrack::lookup`]
    /// followed by [`Conntrack::update`], without copying the entry out:
    /// the state word read by the walk is the one the update starts from.
    /// `None` on a miss.
    #[inline]
    pub fn track(&self, tuple: &Tuple, flags: TcpFlags, at: At) -> Option<Tracked> {
        match tuple.family() {
            Family::V4 => self.track_k(&V4Key::pack(tuple)?, tuple.proto, flags, at),
            Family::V6 => self.track_k(&V6Key::pack(tuple)?, tuple.proto, flags, at),
        }
    }

    #[inline]
    fn track_k<K: FamilyKey>(&self, key: &K, proto: L4Proto, flags: TcpFlags, at: At) -> Option<Tracked> {
        let mut found = None;
        let now = self.jiffies(at.now);
        self.walk_at(self.hash(key), key, at, now, |m| {
            found = Some((m.node.conn, m.node.dir, m.node.state, m.created));
            true
        });
        let (conn, dir, w, created) = found?;
        if self.profile.counters.found_on_lookup {
            self.stats.inc(at.cpu, Stat::Found);
        }
        let slot = K::slab(self).slot(conn.idx);
        let update = self.refresh(slot, Packet { conn, dir, proto, created }, w, flags, at, now);
        Some(Tracked { conn, dir, update })
    }

    /// Allocate a new, unconfirmed connection for a packet whose tuple
    /// missed (`init_conntrack`). When the table is full, first tries to
    /// evict unassured connections near the new one's bucket (`early_drop`).
    pub fn new_conn(&self, orig: Tuple, flags: TcpFlags, at: At) -> Result<Unconfirmed<'_>, TableFull> {
        assert!(orig.is_well_formed(), "tuple mixes address families: {orig}");
        if !self.count.take(at.cpu) {
            let hash = match orig.family() {
                Family::V4 => V4Key::pack(&orig).map(|k| self.hash(&k)),
                Family::V6 => V6Key::pack(&orig).map(|k| self.hash(&k)),
            }
            .unwrap_or(0);
            // Early drop frees units on this CPU; take one of them.
            if !(self.early_drop(hash, at) && self.count.take(at.cpu)) {
                if self.profile.counters.drop_on_table_full {
                    self.stats.inc(at.cpu, Stat::Drop);
                }
                return Err(TableFull);
            }
        }
        let sp = &self.spans;
        let (tcp_state, timeout) = match orig.proto {
            L4Proto::Udp => (TcpState::None, sp.udp),
            L4Proto::Icmp => (TcpState::None, sp.icmp),
            L4Proto::Tcp if flags.syn && !flags.ack => (TcpState::SynSent, sp.tcp(TcpState::SynSent)),
            // Picked up mid-stream (nf_conntrack_tcp_loose).
            L4Proto::Tcp => (TcpState::Established, sp.tcp(TcpState::Established)),
        };
        Ok(Unconfirmed {
            table: self,
            reply: orig.invert(),
            orig,
            status: Status::empty(),
            tcp_state,
            created: at.now,
            timeout,
            reserved: true,
            cpu: at.cpu,
        })
    }

    /// Is `candidate` (a reply tuple a NAT rule considers) already used by a
    /// confirmed connection (`nf_conntrack_tuple_taken`)? Unconfirmed
    /// connections on other CPUs are invisible here: that is the SNAT race.
    ///
    /// `my_orig` is the asking connection's original tuple: on profiles with
    /// `nat_same_origin_not_taken` an entry with the same original tuple does
    /// not count. With `harder` (the last quarter of a bounded port search)
    /// and `nat.evict_closing_tcp`, a closing SNATed TCP entry holding the
    /// tuple is removed and the tuple reported free.
    pub fn tuple_taken(&self, candidate: &Tuple, my_orig: &Tuple, harder: bool, at: At) -> bool {
        match candidate.family() {
            Family::V4 => self.tuple_taken_k(&V4Key::pack(candidate).expect("v4"), my_orig, harder, at),
            Family::V6 => self.tuple_taken_k(&V6Key::pack(candidate).expect("v6"), my_orig, harder, at),
        }
    }

    fn tuple_taken_k<K: FamilyKey>(&self, key: &K, my_orig: &Tuple, harder: bool, at: At) -> bool {
        let mut taken = false;
        let skip_same_origin = self.profile.conntrack.nat_same_origin_not_taken;
        let evict = harder && self.profile.nat.evict_closing_tcp;
        self.walk(self.hash(key), key, at, |m| {
            let orig = match m.node.dir {
                Dir::Original => key.unpack(),
                Dir::Reply => m.other.unpack(),
            };
            if skip_same_origin && orig == *my_orig {
                return false;
            }
            let status = state::status(m.node.state);
            if evict
                && orig.proto == L4Proto::Tcp
                && status.contains(Status::SRC_NAT)
                && !status.contains(Status::FIXED_TIMEOUT)
                && state::tcp(m.node.state) >= TcpState::TimeWait
                && self.kill(m.node.conn, at)
            {
                return false;
            }
            taken = true;
            true
        });
        if taken {
            self.stats.inc(at.cpu, Stat::Found);
        }
        taken
    }

    // ----- confirm ---------------------------------------------------------------

    /// Insert a packet's new connection (`__nf_conntrack_confirm`). If either
    /// tuple is already present, the profile decides: drop, merge into the
    /// existing connection, or insert reply-only (NAT_CLASH).
    pub fn confirm<R: Rng + ?Sized>(&self, ct: Unconfirmed<'_>, at: At, rng: &mut R) -> Confirm {
        assert!(std::ptr::eq(ct.table, self), "an unconfirmed entry belongs to the table that made it");
        match ct.orig.family() {
            Family::V4 => {
                let (o, r) = (V4Key::pack(&ct.orig), V4Key::pack(&ct.reply));
                self.confirm_k(ct, o.expect("v4"), r.expect("NAT kept the family"), at, rng)
            }
            Family::V6 => {
                let (o, r) = (V6Key::pack(&ct.orig), V6Key::pack(&ct.reply));
                self.confirm_k(ct, o.expect("v6"), r.expect("NAT kept the family"), at, rng)
            }
        }
    }

    fn confirm_k<K: FamilyKey, R: Rng + ?Sized>(
        &self,
        ct: Unconfirmed<'_>,
        ko: K,
        kr: K,
        at: At,
        rng: &mut R,
    ) -> Confirm {
        let (ho, hr) = (self.hash(&ko), self.hash(&kr));
        let _guards = self.lock_pair(self.bucket(ho), self.bucket(hr));
        let limit = self.chain_limit.map(|l| l.min + rng.random_range(0..l.spread));
        for (h, key, dir) in [(ho, &ko, Dir::Original), (hr, &kr, Dir::Reply)] {
            match self.scan_locked(h, key, limit) {
                Scan::Free => {}
                Scan::TooLong => {
                    self.stats.inc(at.cpu, Stat::ChainTooLong);
                    self.stats.inc(at.cpu, Stat::InsertFailed);
                    return Confirm::Dropped(DropReason::ChainTooLong);
                }
                Scan::Found(winner) => return self.clash_locked(ct, &ko, &kr, key, winner, dir, (ho, hr), at),
            }
        }
        match self.insert_locked(ct, &ko, &kr, (ho, hr), false, at) {
            Some(hit) => {
                if self.profile.counters.insert {
                    self.stats.inc(at.cpu, Stat::Insert);
                }
                Confirm::Inserted(hit)
            }
            None => Confirm::Dropped(DropReason::TableFull),
        }
    }

    /// Walk the chain of `hash` with its lock held: find `key`, or find the
    /// chain longer than `limit`.
    fn scan_locked<K: FamilyKey>(&self, hash: u64, key: &K, limit: Option<u32>) -> Scan<K> {
        let tag = hash_tag(hash);
        let mut link = self.heads[self.bucket(hash)].load(Ordering::Acquire);
        let mut len = 0u32;
        while target(link) & NULLS == 0 {
            if limit.is_some_and(|l| len > l) {
                return Scan::TooLong;
            }
            len += 1;
            let at_node = target(link);
            if !may_hold::<K>(link, tag) {
                link = self.links_of(at_node).load(Ordering::Acquire);
                continue;
            }
            // With the lock held no node in this chain can be rewritten, so
            // a read cannot fail.
            let Ok((node, rest)) = self.read_node::<K>(at_node, Some(key)) else {
                unreachable!("a locked chain changed under us")
            };
            if let Some((created, other)) = rest {
                return Scan::Found(Matched { node, created, other });
            }
            link = node.next;
        }
        Scan::Free
    }

    #[allow(clippy::too_many_arguments)]
    fn clash_locked<K: FamilyKey>(
        &self,
        ct: Unconfirmed<'_>,
        ko: &K,
        kr: &K,
        found_key: &K,
        winner: Matched<K>,
        found: Dir,
        (ho, hr): (u64, u64),
        at: At,
    ) -> Confirm {
        let policy = self.profile.conntrack.clash;
        let cause = if policy == ClashPolicy::Drop {
            ClashCause::Policy
        } else if !self.profile.conntrack.allow_clash.contains(&ct.orig.proto) {
            ClashCause::Protocol
        } else if self.mergeable(&winner, found_key, ko, kr) {
            return self.merged(ct, &winner, found_key, at);
        } else if policy == ClashPolicy::MergeOrNatClash {
            // nf_ct_resolve_clash_harder: is the loser's reply tuple free?
            match self.scan_locked(hr, kr, None) {
                Scan::Found(r) if self.mergeable(&r, kr, ko, kr) => return self.merged(ct, &r, kr, at),
                Scan::Found(_) => ClashCause::ReplyTaken,
                Scan::TooLong => unreachable!("no limit"),
                Scan::Free => {
                    return match self.insert_locked(ct, ko, kr, (ho, hr), true, at) {
                        Some(hit) => {
                            if self.profile.counters.clash_resolve {
                                self.stats.inc(at.cpu, Stat::ClashResolve);
                            }
                            Confirm::NatClash(hit)
                        }
                        None => Confirm::Dropped(DropReason::TableFull),
                    };
                }
            }
        } else {
            ClashCause::NatDiffers
        };
        self.stats.inc(at.cpu, Stat::InsertFailed);
        if self.profile.counters.drop_on_clash {
            self.stats.inc(at.cpu, Stat::Drop);
        }
        drop(ct);
        Confirm::Dropped(DropReason::Clash { found, cause })
    }

    /// `__nf_ct_resolve_clash`'s test: the winner is alive and either has no
    /// NAT, or (4.19+) is identical to the loser in both directions.
    fn mergeable<K: FamilyKey>(&self, w: &Matched<K>, w_key: &K, ko: &K, kr: &K) -> bool {
        let status = state::status(w.node.state);
        if status.contains(Status::DYING) {
            return false;
        }
        if !status.intersects(Status::NAT_MASK) {
            return true;
        }
        let (w_orig, w_reply) = match w.node.dir {
            Dir::Original => (w_key, &w.other),
            Dir::Reply => (&w.other, w_key),
        };
        matches!(self.profile.conntrack.clash, ClashPolicy::MergeMatching | ClashPolicy::MergeOrNatClash)
            && w_orig == ko
            && w_reply == kr
    }

    fn merged<K: FamilyKey>(&self, ct: Unconfirmed<'_>, w: &Matched<K>, w_key: &K, at: At) -> Confirm {
        let stat = if self.profile.counters.clash_resolve { Stat::ClashResolve } else { Stat::InsertFailed };
        self.stats.inc(at.cpu, stat);
        drop(ct);
        Confirm::Merged(self.hit(w, w_key.unpack(), self.jiffies.of(at.now)))
    }

    /// Write `ct` into a fresh slot and link it: both nodes, or the reply
    /// node only for a NAT_CLASH entry. Both bucket locks are held.
    #[allow(clippy::too_many_arguments)]
    fn insert_locked<K: FamilyKey>(
        &self,
        mut ct: Unconfirmed<'_>,
        ko: &K,
        kr: &K,
        (ho, hr): (u64, u64),
        reply_only: bool,
        at: At,
    ) -> Option<Hit> {
        let (bo, br) = (self.bucket(ho), self.bucket(hr));
        let slab = K::slab(self);
        let idx = slab.alloc(at.cpu)?;
        let slot = slab.slot(idx);
        let now = self.jiffies(at.now);
        let mut status = ct.status | Status::CONFIRMED;
        let expires = if reply_only {
            status.insert(Status::NAT_CLASH | Status::FIXED_TIMEOUT);
            now.wrapping_add(self.spans.nat_clash)
        } else {
            now.wrapping_add(ct.timeout)
        };
        let s = slot.seq.load(Ordering::Relaxed);
        let gen = s.wrapping_add(2);
        // Odd: readers still looking at this slot's previous life restart.
        // Every store below is Release, so none can become visible before it.
        slot.seq.store(s.wrapping_add(1), Ordering::Relaxed);
        slot.set_tuple(0, ko);
        slot.set_tuple(1, kr);
        slot.created.store(ct.created, Ordering::Release);
        slot.state.store(state::pack(expires, status, ct.tcp_state, gen), Ordering::Release);
        let node_o = K::BIT | idx << 1;
        let (link_o, link_r) = (link_to(node_o, ho), link_to(node_o | 1, hr));
        let next_o = if reply_only { end_of(bo) } else { self.heads[bo].load(Ordering::Relaxed) };
        let next_r = if br == bo && !reply_only { link_o } else { self.heads[br].load(Ordering::Relaxed) };
        let links = &slab.links(idx).0;
        links[0].store(next_o, Ordering::Release);
        links[1].store(next_r, Ordering::Release);
        slot.seq.store(gen, Ordering::Release);
        if !reply_only {
            self.heads[bo].store(link_o, Ordering::Release);
        }
        self.heads[br].store(link_r, Ordering::Release);
        // The unit of `count` now belongs to the table entry.
        ct.reserved = false;
        self.stats.tally(at.cpu, Tally::Inserted);
        let (orig, reply) = (ko.unpack(), kr.unpack());
        Some(Hit {
            conn: Self::conn::<K>(idx, gen),
            dir: Dir::Original,
            orig,
            reply,
            status,
            tcp_state: ct.tcp_state,
            expires: self.expires_ns(expires, at.now),
            created: ct.created,
        })
    }

    // ----- removal -------------------------------------------------------------

    /// Remove a connection (`nf_ct_delete`). Returns `false` if it was already
    /// gone (removed by someone else, or the handle is stale).
    pub fn kill(&self, conn: ConnRef, at: At) -> bool {
        match conn.family {
            Family::V4 => self.kill_k::<V4Key>(conn, at),
            Family::V6 => self.kill_k::<V6Key>(conn, at),
        }
    }

    /// `kill`, kept out of line: the packet paths that call it (expiry met
    /// on a lookup, a reply consuming a NAT_CLASH entry, a SYN reopening a
    /// closed connection) are rare, and inlined it made every lookup and
    /// update save and restore more registers.
    #[cold]
    #[inline(never)]
    fn kill_then<T>(&self, conn: ConnRef, at: At, then: T) -> T {
        self.kill(conn, at);
        then
    }

    fn kill_k<K: FamilyKey>(&self, conn: ConnRef, at: At) -> bool {
        let slab = K::slab(self);
        let slot = slab.slot(conn.idx);
        if slot.seq.load(Ordering::Acquire) != conn.gen {
            return false;
        }
        let (ko, kr) = (slot.tuple(0), slot.tuple(1));
        if slot.seq.load(Ordering::Relaxed) != conn.gen {
            return false;
        }
        let bo = self.bucket(self.hash(&ko));
        let br = self.bucket(self.hash(&kr));
        let guards = self.lock_pair(bo, br);
        // Under these locks nobody else can remove this connection, so if it
        // is still the same and not dying, it is ours to remove.
        if slot.seq.load(Ordering::Relaxed) != conn.gen {
            return false;
        }
        // The slot may be freed and reused by a confirm holding other locks
        // at any moment, so "still ours" and "now dying" must be one atomic
        // step: a compare-and-swap that also checks the generation tag (a
        // freed slot is always DYING; a reused one has a new tag).
        let mut w = slot.state.load(Ordering::Acquire);
        let status = loop {
            let status = state::status(w);
            if state::tag(w) != state::tag_of(conn.gen)
                || status.contains(Status::DYING)
                || !status.contains(Status::CONFIRMED)
            {
                return false;
            }
            let dying = state::with_status(w, status | Status::DYING);
            match slot.state.compare_exchange_weak(w, dying, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break status,
                Err(cur) => w = cur,
            }
        };
        let link_o = K::BIT | conn.idx << 1;
        if !status.contains(Status::NAT_CLASH) {
            self.unlink_locked(bo, link_o);
        }
        self.unlink_locked(br, link_o | 1);
        drop(guards);
        self.count.give(at.cpu);
        self.stats.tally(at.cpu, Tally::Removed);
        slab.free(at.cpu, conn.idx);
        true
    }

    /// Unlink node `node` from chain `b` (lock held). The removed node
    /// keeps its link, so a reader standing on it walks on down the chain.
    fn unlink_locked(&self, b: usize, node: u32) {
        let next = self.links_of(node).load(Ordering::Relaxed);
        let mut prev: Option<u32> = None;
        let mut link = self.heads[b].load(Ordering::Relaxed);
        while target(link) != node {
            assert!(target(link) & NULLS == 0, "node {node:#x} missing from its chain {b}");
            prev = Some(target(link));
            link = self.links_of(target(link)).load(Ordering::Relaxed);
        }
        match prev {
            None => self.heads[b].store(next, Ordering::Release),
            Some(p) => self.links_of(p).store(next, Ordering::Release),
        }
    }

    /// `early_drop`: scan up to `early_drop_buckets` chains from the new
    /// connection's bucket and evict every unassured connection of the first
    /// chain that has one. Expired connections met on the way are reaped but
    /// do not count.
    fn early_drop(&self, hash: u64, at: At) -> bool {
        let now = self.jiffies(at.now);
        let start = self.bucket(hash);
        let range = (self.profile.conntrack.early_drop_buckets as usize).min(self.heads.len());
        for i in 0..range {
            let b = (start + i) % self.heads.len();
            let mut drops = 0;
            self.for_each_node(b, |node| {
                let status = state::status(node.state);
                if !status.contains(Status::CONFIRMED) || status.contains(Status::DYING) {
                    return;
                }
                if is_expired(state::expires(node.state), now) {
                    self.kill(node.conn, at);
                } else if !status.contains(Status::ASSURED) && self.kill(node.conn, at) {
                    drops += 1;
                }
            });
            if drops > 0 {
                self.stats.add(at.cpu, Stat::EarlyDrop, drops);
                return true;
            }
        }
        false
    }

    /// Call `f` on every node of chain `b`, read without locks. On a restart
    /// the walk begins again, so `f` may see a node twice.
    fn for_each_node(&self, b: usize, mut f: impl FnMut(&Node)) {
        'restart: loop {
            let mut link = self.heads[b].load(Ordering::Acquire);
            let mut steps = 0;
            while target(link) & NULLS == 0 {
                steps += 1;
                let Ok(node) = self.read_any(target(link)) else {
                    spin_hint();
                    continue 'restart;
                };
                if steps > WALK_LIMIT {
                    spin_hint();
                    continue 'restart;
                }
                f(&node);
                link = node.next;
            }
            if target(link) != nulls(b) {
                continue 'restart;
            }
            return;
        }
    }

    /// One step of the garbage collector (`gc_worker`): scan `buckets`
    /// buckets from where the last step stopped and remove what expired.
    pub fn gc(&self, at: At, buckets: usize) -> GcReport {
        let now = self.jiffies(at.now);
        let n = self.heads.len();
        let buckets = buckets.min(n);
        let start = self.gc_cursor.fetch_add(buckets, Ordering::Relaxed);
        let mut reaped = 0;
        for i in 0..buckets {
            self.for_each_node((start + i) % n, |node| {
                if is_expired(state::expires(node.state), now) && self.kill(node.conn, at) {
                    reaped += 1;
                }
            });
        }
        GcReport { buckets, reaped }
    }

    // ----- packets on existing connections ------------------------------------

    /// A packet of an existing connection: update status, TCP state and
    /// timeout, as the protocol tracker does (`nf_conntrack_{udp,tcp}_packet`).
    /// Writes nothing when nothing changes (same jiffy, same state).
    pub fn update(&self, hit: &Hit, flags: TcpFlags, at: At) -> Update {
        match hit.conn.family {
            Family::V4 => self.update_k::<V4Key>(hit, flags, at),
            Family::V6 => self.update_k::<V6Key>(hit, flags, at),
        }
    }

    fn update_k<K: FamilyKey>(&self, hit: &Hit, flags: TcpFlags, at: At) -> Update {
        let slot = K::slab(self).slot(hit.conn.idx);
        let w = slot.state.load(Ordering::Acquire);
        let packet = Packet { conn: hit.conn, dir: hit.dir, proto: hit.orig.proto, created: hit.created };
        self.refresh(slot, packet, w, flags, at, self.jiffies(at.now))
    }

    /// The protocol tracker's step on `slot`, whose state word was last
    /// read as `w`: a compare-and-swap loop that writes only when the word
    /// changes (same jiffy, same state: no store, as 4.7 and later kernels).
    #[inline(always)]
    fn refresh<K: FamilyKey>(
        &self,
        slot: &Slot<K>,
        p: Packet,
        mut w: u64,
        flags: TcpFlags,
        at: At,
        now: u32,
    ) -> Update {
        let reply = p.dir == Dir::Reply;
        let sp = &self.spans;
        loop {
            let mut status = state::status(w);
            if state::tag(w) != state::tag_of(p.conn.gen)
                || status.contains(Status::DYING)
                || !status.contains(Status::CONFIRMED)
            {
                return Update::Gone;
            }
            if reply && status.contains(Status::NAT_CLASH) {
                // The first reply consumes a NAT_CLASH entry.
                return self.kill_then(p.conn, at, Update::ClashEntryConsumed);
            }
            if reply {
                status.insert(Status::SEEN_REPLY);
            }
            let mut tcp = state::tcp(w);
            let timeout = match p.proto {
                L4Proto::Udp => {
                    if status.contains(Status::SEEN_REPLY) {
                        let stream = sp.udp_stream_after.is_none_or(|d| at.now.saturating_sub(p.created) > d);
                        if stream {
                            status.insert(Status::ASSURED);
                            sp.udp_stream
                        } else {
                            sp.udp
                        }
                    } else {
                        sp.udp
                    }
                }
                L4Proto::Icmp => sp.icmp,
                L4Proto::Tcp => match self.tcp_step(tcp, &mut status, reply, flags) {
                    Some((next, timeout)) => {
                        tcp = next;
                        timeout
                    }
                    None => return self.kill_then(p.conn, at, Update::Reopen),
                },
            };
            let old = state::expires(w);
            let new = now.wrapping_add(timeout);
            // A new expiry less than `refresh_min` past the old one leaves it
            // (an earlier one wraps to a large difference and is taken), as
            // the timer-based kernels' `newtime - expires >= HZ`.
            let expires = if status.contains(Status::FIXED_TIMEOUT) || new.wrapping_sub(old) < sp.refresh_min {
                old
            } else {
                new
            };
            let nw = state::pack(expires, status, tcp, p.conn.gen);
            if nw == w {
                return Update::Accepted;
            }
            match slot.state.compare_exchange_weak(w, nw, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Update::Accepted,
                Err(cur) => w = cur,
            }
        }
    }

    /// The TCP tracker's step for one packet: the next state and its
    /// timeout, or `None` when a SYN meets a closed connection, which must be
    /// removed and created again. Out of line so the UDP refresh, the common
    /// case, does not pay for the TCP flag logic.
    #[inline(never)]
    fn tcp_step(&self, tcp: TcpState, status: &mut Status, reply: bool, flags: TcpFlags) -> Option<(TcpState, u32)> {
        if flags.syn && !flags.ack && !reply && matches!(tcp, TcpState::TimeWait | TcpState::Close) {
            return None;
        }
        let tcp = tcp_transition(tcp, reply, flags);
        if tcp == TcpState::Established {
            status.insert(Status::ASSURED);
        }
        Some((tcp, self.spans.tcp(tcp)))
    }

    /// Every confirmed connection, each once (for reports and invariant checks).
    pub fn entries(&self, at: At) -> Vec<Hit> {
        let mut out = Vec::new();
        for b in 0..self.heads.len() {
            self.for_each_node(b, |node| {
                let status = state::status(node.state);
                // One node per connection: the original one, or the reply node of a
                // reply-only NAT_CLASH entry.
                let own = node.dir == Dir::Original || status.contains(Status::NAT_CLASH);
                if own && status.contains(Status::CONFIRMED) && !status.contains(Status::DYING) {
                    if let Some(h) = self.snapshot(node.conn, at) {
                        out.push(h);
                    }
                }
            });
        }
        out.sort_by_key(|h| (h.orig, h.reply));
        out.dedup_by_key(|h| h.conn);
        out
    }

    /// A consistent copy of a connection, or `None` if it is gone.
    pub fn snapshot(&self, conn: ConnRef, at: At) -> Option<Hit> {
        match conn.family {
            Family::V4 => self.snapshot_k::<V4Key>(conn, at),
            Family::V6 => self.snapshot_k::<V6Key>(conn, at),
        }
    }

    fn snapshot_k<K: FamilyKey>(&self, conn: ConnRef, at: At) -> Option<Hit> {
        let slot = K::slab(self).slot(conn.idx);
        loop {
            let s1 = slot.seq.load(Ordering::Acquire);
            if s1 != conn.gen {
                return None;
            }
            let (o, r) = (slot.tuple(0), slot.tuple(1));
            let w = slot.state.load(Ordering::Acquire);
            let created = slot.created.load(Ordering::Acquire);
            if slot.seq.load(Ordering::Relaxed) != s1 {
                continue;
            }
            let status = state::status(w);
            if status.contains(Status::DYING) || !status.contains(Status::CONFIRMED) {
                return None;
            }
            return Some(Hit {
                conn,
                dir: Dir::Original,
                orig: o.unpack(),
                reply: r.unpack(),
                status,
                tcp_state: state::tcp(w),
                expires: self.expires_ns(state::expires(w), at.now),
                created,
            });
        }
    }
}

/// Conntrack's TCP state machine, reduced to the transitions the modelled
/// races depend on (the kernel's `tcp_conntracks` table has many more).
fn tcp_transition(s: TcpState, reply: bool, f: TcpFlags) -> TcpState {
    use TcpState::*;
    if f.rst {
        return Close;
    }
    match (s, reply) {
        (SynSent, true) if f.syn && f.ack => SynRecv,
        (SynRecv, false) if f.ack && !f.syn => Established,
        (Established, _) if f.fin => FinWait,
        (FinWait, _) if f.fin => LastAck,
        (LastAck, _) if f.ack => TimeWait,
        (None, _) => Established,
        (s, _) => s,
    }
}
