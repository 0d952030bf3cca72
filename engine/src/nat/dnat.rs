//! DNAT endpoint selection, as kube-proxy (iptables and IPVS modes) and
//! nftables rules choose a backend for a new connection.
//!
//! Selection is per new connection, independently on each CPU: two packets
//! of one flow that race through conntrack may be sent to different
//! endpoints, which is what keeps 4.19 – 5.5 from merging their clash.

use std::net::IpAddr;

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::sync::{AtomicU64, Ordering};
use crate::tuple::Tuple;

/// A backend the service forwards to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Its address.
    pub addr: IpAddr,
    /// Its port.
    pub port: u16,
    /// Weight for the weighted IPVS schedulers (1 otherwise).
    pub weight: u32,
}

/// How a rule set picks the endpoint of a new connection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Selector {
    /// iptables `-m statistic --mode random --probability p` rules, one per
    /// endpoint but the last (which takes what falls through), as kube-proxy
    /// writes them: `p_i = 1 / (n - i)`.
    StatisticRandom {
        /// `p_0 … p_{n-2}`.
        probabilities: Vec<f64>,
    },
    /// iptables `-m statistic --mode nth` rules: every `every`-th packet to each
    /// endpoint in turn (one shared counter: round robin).
    StatisticNth {
        /// The cycle length (the number of endpoints).
        every: u32,
    },
    /// nftables `numgen random mod N`.
    NumgenRandom {
        /// N, the number of endpoints.
        modulus: u32,
    },
    /// nftables `numgen inc mod N`: a shared counter.
    NumgenInc {
        /// N, the number of endpoints.
        modulus: u32,
    },
    /// nftables `jhash ip saddr . sport mod N`: a keyed hash of the source.
    Jhash {
        /// N, the number of endpoints.
        modulus: u32,
    },
    /// IPVS round robin.
    IpvsRr,
    /// IPVS weighted round robin (the classic gcd-stepping scheduler).
    IpvsWrr,
    /// IPVS source hashing: the source address picks one of 256 slots filled by weight.
    IpvsSh,
}

impl Selector {
    /// The probabilities kube-proxy writes for `n` endpoints, printed to 10
    /// decimals as iptables-save shows them.
    pub fn kube_proxy_random(n: usize) -> Selector {
        let probabilities = (0..n.saturating_sub(1)).map(|i| (1e10 / (n - i) as f64).round() / 1e10).collect();
        Selector::StatisticRandom { probabilities }
    }
}

/// Slots of the IPVS source-hashing table (`IP_VS_SH_TAB_SIZE`).
const SH_SLOTS: usize = 256;

/// A DNAT rule set: endpoints and how one is chosen.
#[derive(Debug)]
pub struct Dnat {
    endpoints: Vec<Endpoint>,
    selector: Selector,
    /// Shared counter of the counting selectors (nth, inc, rr, wrr).
    counter: AtomicU64,
    /// iptables' probability thresholds, in the 31-bit scale xt_statistic uses.
    thresholds: Vec<u32>,
    /// The weighted round-robin cycle, precomputed.
    wrr: Vec<u16>,
    /// The source-hashing table.
    sh: Vec<u16>,
    hasher: ahash::RandomState,
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl Dnat {
    /// A rule set over `endpoints`, keyed by `secret` for the hashing selectors.
    pub fn new(endpoints: Vec<Endpoint>, selector: Selector, secret: u64) -> Result<Dnat, String> {
        let n = endpoints.len();
        if n == 0 {
            return Err("a service needs at least one endpoint".into());
        }
        if n > u16::MAX as usize {
            return Err(format!("{n} endpoints is more than racetrack supports (65535)"));
        }
        let mut thresholds = Vec::new();
        let mut wrr = Vec::new();
        let mut sh = Vec::new();
        let modulus_ok = |m: u32, what: &str| {
            if m as usize == n {
                Ok(())
            } else {
                Err(format!("{what} {m} does not match the {n} endpoints"))
            }
        };
        match &selector {
            Selector::StatisticRandom { probabilities } => {
                if probabilities.len() + 1 != n {
                    return Err(format!(
                        "{} probabilities for {n} endpoints: kube-proxy writes one per endpoint but the last",
                        probabilities.len()
                    ));
                }
                for p in probabilities {
                    if !(0.0..=1.0).contains(p) {
                        return Err(format!("probability {p} is not between 0 and 1"));
                    }
                    // xt_statistic: match if (random & 0x7fffffff) < lround(p * 2^31).
                    thresholds.push((p * f64::from(0x8000_0000u32)).round() as u32);
                }
            }
            Selector::StatisticNth { every } => modulus_ok(*every, "--every")?,
            Selector::NumgenRandom { modulus } | Selector::NumgenInc { modulus } | Selector::Jhash { modulus } => {
                modulus_ok(*modulus, "mod")?
            }
            Selector::IpvsRr => {}
            Selector::IpvsWrr | Selector::IpvsSh => {
                if endpoints.iter().any(|e| e.weight == 0) {
                    return Err("weighted IPVS schedulers need weights above 0".into());
                }
                let total: u64 = endpoints.iter().map(|e| u64::from(e.weight)).sum();
                if total > 1 << 16 {
                    return Err(format!("weights add up to {total}; racetrack supports up to 65536"));
                }
            }
        }
        if selector == Selector::IpvsWrr {
            // ip_vs_wrr_schedule: step the current weight down by the gcd; pick
            // the next server whose weight reaches it. One full cycle, stored.
            let weights: Vec<u32> = endpoints.iter().map(|e| e.weight).collect();
            let g = weights.iter().copied().fold(0, gcd);
            let max = weights.iter().copied().max().unwrap_or(1);
            let cycle: u32 = weights.iter().map(|w| w / g).sum();
            let (mut i, mut cw) = (n - 1, 0i64);
            while wrr.len() < cycle as usize {
                i = (i + 1) % n;
                if i == 0 {
                    cw -= i64::from(g);
                    if cw <= 0 {
                        cw = i64::from(max);
                    }
                }
                if i64::from(weights[i]) >= cw {
                    wrr.push(i as u16);
                }
            }
        }
        if selector == Selector::IpvsSh {
            // ip_vs_sh_reassign: walk the slots, giving each server `weight`
            // consecutive ones, round and round.
            let (mut e, mut left) = (0usize, endpoints[0].weight);
            for _ in 0..SH_SLOTS {
                sh.push(e as u16);
                left -= 1;
                if left == 0 {
                    e = (e + 1) % n;
                    left = endpoints[e].weight;
                }
            }
        }
        let s = secret;
        Ok(Dnat {
            endpoints,
            selector,
            counter: AtomicU64::new(0),
            thresholds,
            wrr,
            sh,
            hasher: ahash::RandomState::with_seeds(s, s.rotate_left(17), s.rotate_left(31), s ^ 0x9e37_79b9),
        })
    }

    /// The endpoints.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// The selector.
    pub fn selector(&self) -> &Selector {
        &self.selector
    }

    fn next(&self) -> u64 {
        self.counter.fetch_add(1, Ordering::Relaxed)
    }

    /// Pick the endpoint (index) for a new connection with original tuple `orig`.
    pub fn select<R: Rng + ?Sized>(&self, orig: &Tuple, rng: &mut R) -> usize {
        let n = self.endpoints.len();
        match &self.selector {
            Selector::StatisticRandom { .. } => {
                for (i, t) in self.thresholds.iter().enumerate() {
                    if rng.random::<u32>() & 0x7fff_ffff < *t {
                        return i;
                    }
                }
                n - 1
            }
            Selector::StatisticNth { .. } | Selector::NumgenInc { .. } | Selector::IpvsRr => {
                (self.next() % n as u64) as usize
            }
            Selector::NumgenRandom { .. } => rng.random_range(0..n),
            Selector::Jhash { .. } => {
                let h = self.hasher.hash_one((orig.src, orig.sport));
                ((h as u32 as u64 * n as u64) >> 32) as usize
            }
            Selector::IpvsWrr => self.wrr[(self.next() % self.wrr.len() as u64) as usize] as usize,
            Selector::IpvsSh => {
                // ip_vs_sh_hashkey: multiplicative hash of the source address.
                let key = match orig.src {
                    IpAddr::V4(a) => u32::from(a),
                    IpAddr::V6(a) => {
                        let o = a.octets();
                        u32::from_be_bytes([o[12], o[13], o[14], o[15]])
                    }
                };
                let slot = (key.wrapping_mul(2_654_435_761) >> 24) as usize;
                self.sh[slot] as usize
            }
        }
    }

    /// Where endpoint `idx` sends the connection: its address and port.
    pub fn translate(&self, _orig: &Tuple, idx: usize) -> (IpAddr, u16) {
        let e = &self.endpoints[idx];
        (e.addr, e.port)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::net::Ipv4Addr;

    use rand::SeedableRng;
    use rand_pcg::Pcg64Mcg;

    use super::*;

    fn eps(weights: &[u32]) -> Vec<Endpoint> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| Endpoint { addr: Ipv4Addr::new(10, 1, 0, i as u8 + 2).into(), port: 53, weight: w })
            .collect()
    }

    fn q(src: u8, sport: u16) -> Tuple {
        Tuple::udp(Ipv4Addr::new(10, 0, 0, src), sport, Ipv4Addr::new(10, 96, 0, 10), 53)
    }

    #[test]
    fn kube_proxy_probabilities_spread_evenly() {
        let mut rng = Pcg64Mcg::seed_from_u64(1);
        for n in 1..=5usize {
            let d = Dnat::new(eps(&vec![1; n]), Selector::kube_proxy_random(n), 1).unwrap();
            let draws = 60_000;
            let mut counts = vec![0u32; n];
            for _ in 0..draws {
                counts[d.select(&q(1, 1), &mut rng)] += 1;
            }
            let p = 1.0 / n as f64;
            let sigma = (draws as f64 * p * (1.0 - p)).sqrt();
            for c in counts {
                assert!((f64::from(c) - draws as f64 * p).abs() <= 4.0 * sigma.max(1.0), "n={n}: {c}");
            }
        }
        assert_eq!(
            Selector::kube_proxy_random(3),
            Selector::StatisticRandom { probabilities: vec![0.3333333333, 0.5] }
        );
    }

    #[test]
    fn counting_selectors_cycle_exactly() {
        let mut rng = Pcg64Mcg::seed_from_u64(1);
        for sel in [Selector::StatisticNth { every: 3 }, Selector::NumgenInc { modulus: 3 }, Selector::IpvsRr] {
            let d = Dnat::new(eps(&[1, 1, 1]), sel, 1).unwrap();
            let picks: Vec<usize> = (0..6).map(|_| d.select(&q(1, 1), &mut rng)).collect();
            assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        }
    }

    #[test]
    fn wrr_respects_weights_over_a_cycle() {
        let d = Dnat::new(eps(&[4, 3, 2]), Selector::IpvsWrr, 1).unwrap();
        let mut rng = Pcg64Mcg::seed_from_u64(1);
        let mut counts = [0; 3];
        for _ in 0..9 * 10 {
            counts[d.select(&q(1, 1), &mut rng)] += 1;
        }
        assert_eq!(counts, [40, 30, 20]);
        // The classic sequence for weights 4, 3, 2.
        let d = Dnat::new(eps(&[4, 3, 2]), Selector::IpvsWrr, 1).unwrap();
        let seq: Vec<usize> = (0..9).map(|_| d.select(&q(1, 1), &mut rng)).collect();
        assert_eq!(seq, [0, 0, 1, 0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn source_hashing_is_sticky_and_weighted() {
        let d = Dnat::new(eps(&[1, 3]), Selector::IpvsSh, 1).unwrap();
        let mut rng = Pcg64Mcg::seed_from_u64(1);
        for src in 1..50u8 {
            let first = d.select(&q(src, 1), &mut rng);
            for port in 2..10 {
                assert_eq!(d.select(&q(src, port), &mut rng), first);
            }
        }
        assert_eq!(d.sh.iter().filter(|&&e| e == 1).count(), 192, "weight 3 of 4 → 3/4 of the slots");
    }

    #[test]
    fn jhash_and_numgen_random_stay_in_range_and_jhash_is_stable() {
        let mut rng = Pcg64Mcg::seed_from_u64(1);
        let j = Dnat::new(eps(&[1, 1, 1, 1]), Selector::Jhash { modulus: 4 }, 9).unwrap();
        let r = Dnat::new(eps(&[1, 1, 1, 1]), Selector::NumgenRandom { modulus: 4 }, 9).unwrap();
        let mut seen = [false; 4];
        for s in 0..200u16 {
            let a = j.select(&q(1, s), &mut rng);
            assert_eq!(a, j.select(&q(1, s), &mut rng));
            seen[r.select(&q(1, s), &mut rng)] = true;
        }
        assert_eq!(seen, [true; 4]);
    }

    #[test]
    fn bad_rule_sets_are_refused() {
        assert!(Dnat::new(vec![], Selector::IpvsRr, 1).is_err());
        assert!(Dnat::new(eps(&[1, 1]), Selector::StatisticRandom { probabilities: vec![] }, 1).is_err());
        assert!(Dnat::new(eps(&[1, 1]), Selector::StatisticRandom { probabilities: vec![1.5] }, 1).is_err());
        assert!(Dnat::new(eps(&[1, 1]), Selector::NumgenInc { modulus: 3 }, 1).is_err());
        assert!(Dnat::new(eps(&[1, 0]), Selector::IpvsWrr, 1).is_err());
    }
}
