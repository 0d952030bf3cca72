//! Bytes per live IPv4 connection, measured with a counting allocator.
//!
//! The kernel's `struct nf_conn` is about 320 bytes before extensions; the
//! target here is at most 128 bytes per entry, table overhead included.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};

use racetrack_engine::profile::preset;
use racetrack_engine::{At, Confirm, Conntrack, TcpFlags, Tuple};
use rand::SeedableRng;
use rand_pcg::Pcg64Mcg;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call forwards to the system allocator with the same layout;
// the counter only observes sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` was allocated by `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[test]
fn bytes_per_live_ipv4_entry_at_one_million() {
    const N: u32 = 1_000_000;
    let mut profile = preset("6.1").unwrap();
    profile.conntrack.buckets = 1 << 20;
    profile.conntrack.max = N + N / 8;
    let mut rng = Pcg64Mcg::seed_from_u64(1);
    let before = LIVE.load(Ordering::Relaxed);
    let t = Conntrack::new(profile, 2, 1);
    let at = At::new(0, 1);
    for i in 0..N {
        let client = Ipv4Addr::from(0x0a00_0000 | (i >> 14));
        let orig = Tuple::udp(client, 1024 + (i & 0x3fff) as u16, Ipv4Addr::new(10, 96, 0, 10), 53);
        let mut ct = t.new_conn(orig, TcpFlags::default(), at).unwrap();
        ct.dnat(Ipv4Addr::new(10, 245, 0, 2).into(), 53);
        assert!(matches!(t.confirm(ct, at, &mut rng), Confirm::Inserted(_)));
    }
    let bytes = LIVE.load(Ordering::Relaxed) - before;
    let per_entry = bytes as f64 / f64::from(N);
    println!("{N} live IPv4 entries: {bytes} bytes, {per_entry:.1} bytes per entry");
    assert_eq!(t.count(), N as usize);
    assert!(per_entry <= 128.0, "{per_entry:.1} bytes per entry is over the 128-byte target");
    assert!(per_entry >= 64.0, "{per_entry:.1} bytes per entry: below one cache line, the count is broken");
    let reported = t.memory_bytes() as f64 / f64::from(N);
    assert!(
        (reported - per_entry).abs() <= per_entry * 0.1,
        "memory_bytes() says {reported:.1}, allocator {per_entry:.1}"
    );
}
