//! SNAT / MASQUERADE source port allocation (`get_unique_tuple` and
//! `nf_nat_l4proto_unique_tuple`).
//!
//! Whether a candidate is free is asked of the conntrack table, which sees
//! only *confirmed* connections: two CPUs allocating at once do not see each
//! other's choice. Keeping the original port, a shared rover, or a hash of
//! the addresses all make two racing flows pick the same port; a random
//! start per attempt (`--random-fully`) makes it unlikely.

use std::net::IpAddr;

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::profile::{NatProfile, PortOffset, PortSearch};
use crate::sync::{AtomicU32, Ordering};
use crate::tuple::{L4Proto, Tuple};

/// A port (or ICMP identifier) range, inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRange {
    /// Lowest port.
    pub min: u16,
    /// Highest port.
    pub max: u16,
}

impl PortRange {
    /// The range the kernel uses when a rule gives none, by the class of the
    /// original port: below 512, 512–1023 (from 600), or unprivileged.
    pub fn default_for(proto: L4Proto, port: u16) -> PortRange {
        match (proto, port) {
            (L4Proto::Icmp, _) => PortRange { min: 0, max: u16::MAX },
            (_, 0..=511) => PortRange { min: 1, max: 511 },
            (_, 512..=1023) => PortRange { min: 600, max: 1023 },
            _ => PortRange { min: 1024, max: u16::MAX },
        }
    }

    /// Ports in the range (a reversed range counts as its swap, as 5.x does).
    pub fn size(&self) -> u32 {
        u32::from(self.max.abs_diff(self.min)) + 1
    }

    fn lo(&self) -> u16 {
        self.min.min(self.max)
    }

    fn contains(&self, port: u16) -> bool {
        (self.lo()..=self.min.max(self.max)).contains(&port)
    }

    /// Port number `off` of the range, wrapping.
    fn nth(&self, off: u32) -> u16 {
        (u32::from(self.lo()) + off % self.size()) as u16
    }
}

/// How the port search runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Allocator {
    /// As the kernel profile says (`nat.default_offset`, `nat.search`).
    Kernel,
    /// What-if: a random start and every port of the range.
    Exhaustive,
    /// What-if (VPP-style): each CPU owns a contiguous slice of the range and
    /// searches only its own, from a random start, bounded as the kernel is.
    /// Two CPUs can never pick the same port.
    PerCpuSlices,
    /// What-if (Calico-style): up to `tries` independent random ports.
    RandomRetries {
        /// Ports tried at most.
        tries: u32,
    },
}

/// The `--random` and `--random-fully` flags of an SNAT/MASQUERADE rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnatFlags {
    /// `--random` (NF_NAT_RANGE_PROTO_RANDOM).
    pub random: bool,
    /// `--random-fully` (NF_NAT_RANGE_PROTO_RANDOM_FULLY).
    pub random_fully: bool,
}

impl SnatFlags {
    /// Either flag: the kernel's RANDOM_ALL, which skips "keep the original port".
    pub fn random_all(&self) -> bool {
        self.random || self.random_fully
    }
}

/// An SNAT or MASQUERADE rule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snat {
    /// Source addresses to use (MASQUERADE: the outgoing interface's).
    pub to_source: Vec<IpAddr>,
    /// Port range; `None` uses the kernel's default for the original port.
    pub range: Option<PortRange>,
    /// `--random` / `--random-fully`.
    pub flags: SnatFlags,
    /// The port search.
    pub allocator: Allocator,
}

/// The kernel's shared static port rovers, one per layer-4 protocol
/// (`tcp_port_rover`, `udp_port_rover`, …; removed by 6ed5943f8735).
#[derive(Debug, Default)]
pub struct Rovers([AtomicU32; 3]);

impl Rovers {
    fn of(&self, proto: L4Proto) -> &AtomicU32 {
        &self.0[match proto {
            L4Proto::Tcp => 0,
            L4Proto::Udp => 1,
            L4Proto::Icmp => 2,
        }]
    }
}

/// What an allocation chose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnatOutcome {
    /// Source address.
    pub addr: IpAddr,
    /// Source port (ICMP: identifier).
    pub port: u16,
    /// Candidates checked against the table.
    pub probes: u32,
    /// The original port was free and kept.
    pub kept_original: bool,
    /// No free port was found; `port` is used anyway and may clash at confirm.
    pub exhausted: bool,
}

/// In a bounded search, a probe is "harder" (may evict a closing TCP entry,
/// 6.5+) when at most this many attempts are left (`NF_NAT_HARDER_THRESH`).
pub const HARDER_THRESHOLD: u32 = 32;

/// The reply tuple of a candidate: replies come back to `addr:port`.
pub fn candidate(reply: &Tuple, addr: IpAddr, port: u16) -> Tuple {
    match reply.proto {
        // The echo identifier travels in both directions.
        L4Proto::Icmp => Tuple { dst: addr, sport: port, ..*reply },
        _ => reply.with_dst(addr, port),
    }
}

impl Snat {
    /// Choose the source address and port for a new connection.
    ///
    /// `orig` is its original tuple, `reply` its reply tuple so far (DNAT
    /// applied). `used(candidate_reply, harder)` asks the table whether a
    /// confirmed connection holds the candidate.
    #[allow(clippy::too_many_arguments)]
    pub fn allocate<R, F>(
        &self,
        orig: &Tuple,
        reply: &Tuple,
        nat: &NatProfile,
        rovers: &Rovers,
        secret: u64,
        cpu: usize,
        ncpus: usize,
        rng: &mut R,
        mut used: F,
    ) -> SnatOutcome
    where
        R: Rng + ?Sized,
        F: FnMut(&Tuple, bool) -> bool,
    {
        let addr = self.pick_addr(orig, secret);
        let orig_port = orig.sport;
        let range = self.range.unwrap_or_else(|| PortRange::default_for(orig.proto, orig_port));
        let mut probes = 0u32;
        let mut probe = |port: u16, harder: bool| {
            probes += 1;
            used(&candidate(reply, addr, port), harder)
        };
        let done =
            |port, probes, kept_original, exhausted| SnatOutcome { addr, port, probes, kept_original, exhausted };

        if !self.flags.random_all() && range.contains(orig_port) && !probe(orig_port, false) {
            return done(orig_port, probes, true, false);
        }
        let size = range.size();
        let (port, exhausted) = match self.allocator {
            Allocator::Kernel => {
                let start = if self.flags.random_fully {
                    PortOffset::Random
                } else if self.flags.random {
                    nat.random_offset
                } else {
                    nat.default_offset
                };
                let rover = rovers.of(orig.proto);
                let offset = |rng: &mut R| match start {
                    // Read without a lock: two CPUs can read the same value.
                    PortOffset::Rover => rover.load(Ordering::Relaxed),
                    PortOffset::SecureHash => secure_port(addr, reply, secret),
                    PortOffset::Random => rng.random(),
                };
                let (off, port, exhausted) = match nat.search {
                    PortSearch::Exhaustive => {
                        // 4.x: walk the whole range; the last candidate is
                        // returned unchecked if every other one was taken.
                        let off = offset(rng);
                        let mut i = 0;
                        loop {
                            let port = range.nth(off.wrapping_add(i));
                            i += 1;
                            if i == size {
                                break (off.wrapping_add(i - 1), port, true);
                            }
                            if !probe(port, false) {
                                break (off.wrapping_add(i - 1), port, false);
                            }
                        }
                    }
                    PortSearch::Bounded { attempts, min_round } => {
                        let mut attempts = attempts.min(size);
                        let mut off = offset(rng);
                        'rounds: loop {
                            for i in 0..attempts {
                                let port = range.nth(off.wrapping_add(i));
                                if !probe(port, attempts - i <= HARDER_THRESHOLD) {
                                    break 'rounds (off.wrapping_add(i), port, false);
                                }
                            }
                            if attempts >= size || attempts < min_round {
                                // Keep the last probed port; confirm will likely drop it.
                                let last = off.wrapping_add(attempts - 1);
                                break 'rounds (last, range.nth(last), true);
                            }
                            attempts /= 2;
                            off = rng.random();
                        }
                    }
                };
                if start == PortOffset::Rover && !self.flags.random_all() {
                    rover.store(off, Ordering::Relaxed);
                }
                (port, exhausted)
            }
            Allocator::Exhaustive => {
                let off: u32 = rng.random();
                let mut found = None;
                for i in 0..size {
                    let port = range.nth(off.wrapping_add(i));
                    if !probe(port, false) {
                        found = Some(port);
                        break;
                    }
                }
                found.map_or((range.nth(off.wrapping_add(size - 1)), true), |p| (p, false))
            }
            Allocator::PerCpuSlices => {
                let n = ncpus.max(1) as u32;
                let slice = (size / n).max(1);
                let cpu = (cpu as u32 % n).min(size - 1);
                let base = cpu * slice;
                let len = if cpu + 1 == n { size - base } else { slice };
                let cap = match nat.search {
                    PortSearch::Exhaustive => len,
                    PortSearch::Bounded { attempts, .. } => attempts.min(len),
                };
                let start: u32 = rng.random_range(0..len);
                let mut found = None;
                for i in 0..cap {
                    let port = range.nth(base + (start + i) % len);
                    if !probe(port, false) {
                        found = Some(port);
                        break;
                    }
                }
                found.map_or((range.nth(base + (start + cap - 1) % len), true), |p| (p, false))
            }
            Allocator::RandomRetries { tries } => {
                let mut last = range.nth(0);
                let mut found = None;
                for _ in 0..tries.max(1) {
                    last = range.nth(rng.random());
                    if !probe(last, false) {
                        found = Some(last);
                        break;
                    }
                }
                found.map_or((last, true), |p| (p, false))
            }
        };
        done(port, probes, false, exhausted)
    }

    /// `find_best_ips_proto`: one address per (source, destination) pair.
    fn pick_addr(&self, orig: &Tuple, secret: u64) -> IpAddr {
        match self.to_source.len() {
            0 => orig.src,
            1 => self.to_source[0],
            n => {
                let h = ahash::RandomState::with_seeds(secret, 1, 2, 3).hash_one((orig.src, orig.dst));
                self.to_source[((h as u32 as u64 * n as u64) >> 32) as usize]
            }
        }
    }
}

/// `secure_port`: a keyed hash of the tuple being built — the chosen source
/// address, the destination address and port (DNAT applied) — so every flow
/// from one NAT address to one destination starts its search at the same port.
fn secure_port(addr: IpAddr, reply: &Tuple, secret: u64) -> u32 {
    ahash::RandomState::with_seeds(secret, secret ^ 0x5bd1_e995, 7, 11).hash_one((addr, reply.src, reply.sport)) as u32
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::collections::HashSet;
    use std::net::Ipv4Addr;

    use rand::SeedableRng;
    use rand_pcg::Pcg64Mcg;

    use super::*;
    use crate::profile::preset;

    const NODE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

    fn syn(client: u8, sport: u16) -> Tuple {
        Tuple::tcp(Ipv4Addr::new(10, 0, 0, client), sport, Ipv4Addr::new(203, 0, 113, 80), 80)
    }

    fn masq(flags: SnatFlags, allocator: Allocator) -> Snat {
        Snat { to_source: vec![NODE.into()], range: None, flags, allocator }
    }

    fn nat(kernel: &str) -> NatProfile {
        preset(kernel).unwrap().nat
    }

    /// Allocate with a set of taken reply tuples.
    fn alloc(snat: &Snat, orig: &Tuple, nat: &NatProfile, rovers: &Rovers, taken: &HashSet<Tuple>) -> SnatOutcome {
        let mut rng = Pcg64Mcg::seed_from_u64(u64::from(orig.sport));
        snat.allocate(orig, &orig.invert(), nat, rovers, 42, 0, 2, &mut rng, |c, _| taken.contains(c))
    }

    /// Allocate for `orig` alone on `cpu` of `ncpus`: fresh rovers, secret 1,
    /// `used` answering whether a candidate is taken.
    fn probe(
        snat: &Snat,
        orig: &Tuple,
        kernel: &str,
        (cpu, ncpus): (usize, usize),
        rng: &mut Pcg64Mcg,
        used: impl FnMut(&Tuple, bool) -> bool,
    ) -> SnatOutcome {
        snat.allocate(orig, &orig.invert(), &nat(kernel), &Rovers::default(), 1, cpu, ncpus, rng, used)
    }

    #[test]
    fn keeps_the_original_port_when_free() {
        let o = alloc(
            &masq(SnatFlags::default(), Allocator::Kernel),
            &syn(1, 40000),
            &nat("4.14"),
            &Rovers::default(),
            &HashSet::new(),
        );
        assert_eq!((o.port, o.kept_original, o.probes, o.exhausted), (40000, true, 1, false));
        // --random-fully never keeps it.
        let f = SnatFlags { random: false, random_fully: true };
        let o = alloc(&masq(f, Allocator::Kernel), &syn(1, 40000), &nat("4.14"), &Rovers::default(), &HashSet::new());
        assert!(!o.kept_original);
    }

    #[test]
    fn the_rover_races_two_cpus_onto_one_port() {
        let snat = masq(SnatFlags::default(), Allocator::Kernel);
        let rovers = Rovers::default();
        let n = nat("4.14");
        // Port 40000 is held (confirmed) by client 1: client 2 and 3 must search.
        let mut taken = HashSet::new();
        taken.insert(candidate(&syn(1, 40000).invert(), NODE.into(), 40000));
        taken.insert(candidate(&syn(2, 40000).invert(), NODE.into(), 40000));
        taken.insert(candidate(&syn(3, 40000).invert(), NODE.into(), 40000));
        // Both read the same rover before either writes it back: same port.
        let start = rovers.of(L4Proto::Tcp).load(Ordering::Relaxed);
        let a = alloc(&snat, &syn(2, 40000), &n, &rovers, &taken);
        rovers.of(L4Proto::Tcp).store(start, Ordering::Relaxed);
        let b = alloc(&snat, &syn(3, 40000), &n, &rovers, &taken);
        assert_eq!(a.port, b.port);
        // Sequentially, the second sees the first's (now confirmed) port taken and moves on.
        taken.insert(candidate(&syn(2, 40000).invert(), NODE.into(), a.port));
        taken.insert(candidate(&syn(3, 40000).invert(), NODE.into(), a.port));
        let c = alloc(&snat, &syn(3, 40000), &n, &rovers, &taken);
        assert_ne!(c.port, a.port);
    }

    #[test]
    fn random_fully_spreads_ports() {
        let f = SnatFlags { random: false, random_fully: true };
        let snat = masq(f, Allocator::Kernel);
        let ports: HashSet<u16> = (0..200u16)
            .map(|s| {
                let mut rng = Pcg64Mcg::seed_from_u64(u64::from(s));
                probe(&snat, &syn(1, 40000), "6.1", (0, 1), &mut rng, |_, _| false).port
            })
            .collect();
        assert!(ports.len() > 190, "{}", ports.len());
    }

    #[test]
    fn bounded_search_probes_at_most_248_and_marks_the_last_32_harder() {
        let f = SnatFlags { random: false, random_fully: true };
        let snat = masq(f, Allocator::Kernel);
        let mut rng = Pcg64Mcg::seed_from_u64(3);
        let mut harder = Vec::new();
        let o = probe(&snat, &syn(1, 40000), "6.6", (0, 1), &mut rng, |_, h| {
            harder.push(h);
            true
        });
        assert_eq!(o.probes, 128 + 64 + 32 + 16 + 8);
        assert!(o.exhausted);
        // Round by round: the probes with at most 32 attempts left are "harder".
        let mut expect = Vec::new();
        for round in [128u32, 64, 32, 16, 8] {
            expect.extend((0..round).map(|i| round - i <= HARDER_THRESHOLD));
        }
        assert_eq!(harder, expect);
    }

    #[test]
    fn exhaustive_search_walks_the_whole_range_when_full() {
        let snat =
            Snat { range: Some(PortRange { min: 5000, max: 5099 }), ..masq(SnatFlags::default(), Allocator::Kernel) };
        let mut rng = Pcg64Mcg::seed_from_u64(3);
        let o = probe(&snat, &syn(1, 40000), "4.14", (0, 1), &mut rng, |_, _| true);
        // The original port is outside the range: no keep probe; 99 probes, the 100th returned unchecked.
        assert_eq!((o.probes, o.exhausted), (99, true));
        let snat = Snat { allocator: Allocator::Exhaustive, ..snat };
        let o = probe(&snat, &syn(1, 40000), "4.14", (0, 1), &mut rng, |_, _| true);
        assert_eq!((o.probes, o.exhausted), (100, true));
        assert!((5000..5100).contains(&o.port));
    }

    #[test]
    fn per_cpu_slices_stay_in_their_slice_and_random_retries_respect_the_cap() {
        let f = SnatFlags { random: false, random_fully: true };
        let snat = Snat { range: Some(PortRange { min: 10000, max: 10999 }), ..masq(f, Allocator::PerCpuSlices) };
        for cpu in 0..4 {
            for s in 0..50u64 {
                let mut rng = Pcg64Mcg::seed_from_u64(s);
                let o = probe(&snat, &syn(1, 1), "6.1", (cpu, 4), &mut rng, |_, _| false);
                let lo = 10000 + 250 * cpu as u16;
                assert!((lo..lo + 250).contains(&o.port), "cpu {cpu}: {}", o.port);
            }
        }
        let snat = Snat { allocator: Allocator::RandomRetries { tries: 3 }, ..snat };
        let mut rng = Pcg64Mcg::seed_from_u64(1);
        let o = probe(&snat, &syn(1, 1), "6.1", (0, 1), &mut rng, |_, _| true);
        assert_eq!((o.probes, o.exhausted), (3, true));
    }

    #[test]
    fn default_ranges_follow_the_original_port_class() {
        assert_eq!(PortRange::default_for(L4Proto::Udp, 53), PortRange { min: 1, max: 511 });
        assert_eq!(PortRange::default_for(L4Proto::Tcp, 700), PortRange { min: 600, max: 1023 });
        assert_eq!(PortRange::default_for(L4Proto::Tcp, 40000).size(), 64512);
        assert_eq!(PortRange::default_for(L4Proto::Icmp, 7).size(), 65536);
        assert_eq!(PortRange { min: 20, max: 10 }.size(), 11);
    }
}
