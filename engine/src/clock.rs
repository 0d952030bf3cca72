//! Virtual time as conntrack keeps it: in jiffies.
//!
//! The kernel stores a connection's expiry in jiffies (`HZ` ticks per
//! second), so a refresh within the same tick writes nothing. Converting
//! virtual nanoseconds to jiffies is on the lookup-hit path, so it is a
//! multiply by a precomputed reciprocal, not a division.

use std::time::Duration;

use crate::profile::Timeouts;
use crate::{Nanos, TcpState};

/// Nanoseconds ↔ jiffies for one timer frequency.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Jiffies {
    ns: u64,
    /// `ceil(2^64 / ns)`.
    recip: u64,
}

impl Jiffies {
    pub fn new(hz: u32) -> Self {
        let ns = (1_000_000_000 / u64::from(hz.max(1))).max(1);
        Self { ns, recip: (u64::MAX / ns).wrapping_add(1) }
    }

    /// `now / jiffy`, by multiply-high. Exact while `now · (recip·ns − 2^64) < 2^64`
    /// relative to the jiffy (the first ~18 virtual minutes at HZ 250); after
    /// that it may round up within a few hundred ns of a tick boundary —
    /// always the same way, so runs stay deterministic.
    #[inline]
    pub fn of(&self, now: Nanos) -> u64 {
        ((u128::from(now) * u128::from(self.recip)) >> 64) as u64
    }

    /// A duration in whole jiffies (setup only: this one divides).
    pub fn span(&self, d: Duration) -> u32 {
        (d.as_nanos() / u128::from(self.ns)).min(i32::MAX as u128) as u32
    }

    /// The virtual time of jiffy `expires` (32-bit, wrapping), seen from `now`.
    #[inline]
    pub fn expiry_ns(self, expires: u32, now: Nanos) -> Nanos {
        self.expiry_ns_at(expires, self.of(now))
    }

    /// [`Jiffies::expiry_ns`] with `nj = self.of(now)` already computed (the
    /// lookup-hit path has it from its expiry check).
    #[inline]
    pub fn expiry_ns_at(self, expires: u32, nj: u64) -> Nanos {
        let delta = i64::from(expires.wrapping_sub(nj as u32) as i32);
        (nj as i64).saturating_add(delta).max(0) as u64 * self.ns
    }
}

/// A profile's timeouts, converted to jiffies once.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Spans {
    pub udp: u32,
    pub udp_stream: u32,
    pub udp_stream_after: Option<Nanos>,
    pub icmp: u32,
    pub nat_clash: u32,
    /// `refresh_min`, in jiffies.
    pub refresh_min: u32,
    tcp: [u32; 8],
}

impl Spans {
    pub fn new(j: &Jiffies, t: &Timeouts, nat_clash: Duration, refresh_min: Duration) -> Self {
        let tcp = [
            t.tcp_established, // None: picked up mid-stream
            t.tcp_syn_sent,
            t.tcp_syn_recv,
            t.tcp_established,
            t.tcp_fin_wait,
            t.tcp_last_ack,
            t.tcp_time_wait,
            t.tcp_close,
        ];
        Self {
            udp: j.span(t.udp),
            udp_stream: j.span(t.udp_stream),
            udp_stream_after: t.udp_stream_after.map(|d| d.as_nanos() as Nanos),
            icmp: j.span(t.icmp),
            nat_clash: j.span(nat_clash),
            refresh_min: j.span(refresh_min),
            tcp: tcp.map(|d| j.span(d)),
        }
    }

    #[inline]
    pub fn tcp(&self, s: TcpState) -> u32 {
        self.tcp[s as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multiply_high_matches_division() {
        for hz in [100, 250, 300, 1000] {
            let j = Jiffies::new(hz);
            let ns = 1_000_000_000 / u64::from(hz);
            // Every tick boundary in the first 20 virtual minutes, and either side of it.
            for k in (0..(1_200 * u64::from(hz))).step_by(997) {
                for now in [k * ns, (k * ns).saturating_sub(1), k * ns + 1, k * ns + ns / 2] {
                    assert_eq!(j.of(now), now / ns, "hz {hz} now {now}");
                }
            }
        }
    }

    #[test]
    fn expiry_ns_round_trips() {
        let j = Jiffies::new(250);
        let now = 12_345_678_901;
        let exp = (j.of(now) as u32).wrapping_add(j.span(Duration::from_secs(30)));
        let t = j.expiry_ns(exp, now);
        assert!(t > now + 29_990_000_000 && t <= now + 30_000_000_000, "{t}");
        // An expiry in the past maps before now.
        assert!(j.expiry_ns((j.of(now) as u32).wrapping_sub(5), now) < now);
    }
}
