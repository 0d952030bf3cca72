//! Connection tuples: what conntrack hashes and compares.
//!
//! A [`Tuple`] is the kernel's `nf_conntrack_tuple` restricted to what
//! racetrack models: layer-3 source and destination, the layer-4 protocol,
//! and two 16-bit layer-4 fields (ports for TCP and UDP; for ICMP the echo
//! identifier and the type/code, as the kernel stores them).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use crate::sync::AtomicU64;

/// The layer-4 protocol of a tuple.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum L4Proto {
    /// TCP (6). Clashes are never resolved for TCP: the kernel's `allow_clash` is false.
    Tcp,
    /// UDP (17). The protocol whose clashes the kernel learned to resolve.
    Udp,
    /// ICMP echo (1, or 58 for ICMPv6).
    Icmp,
}

impl L4Proto {
    /// The IANA protocol number (ICMP as 1 whatever the family).
    pub const fn number(self) -> u8 {
        match self {
            L4Proto::Tcp => 6,
            L4Proto::Udp => 17,
            L4Proto::Icmp => 1,
        }
    }

    /// The name `conntrack -L` prints.
    pub const fn name(self) -> &'static str {
        match self {
            L4Proto::Tcp => "tcp",
            L4Proto::Udp => "udp",
            L4Proto::Icmp => "icmp",
        }
    }
}

/// ICMP echo request type; its reply is [`ICMP_ECHO_REPLY`].
pub const ICMP_ECHO_REQUEST: u8 = 8;
/// ICMP echo reply type.
pub const ICMP_ECHO_REPLY: u8 = 0;

/// One direction of a connection: who talks to whom, over what.
///
/// For TCP and UDP, `sport`/`dport` are the ports. For ICMP, `sport` is the
/// echo identifier and `dport` is `type << 8 | code`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Tuple {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Layer-4 protocol.
    pub proto: L4Proto,
    /// Source port (ICMP: echo identifier).
    pub sport: u16,
    /// Destination port (ICMP: type and code).
    pub dport: u16,
}

/// The address family of a tuple.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Tuple {
    /// A TCP or UDP tuple.
    pub fn new(proto: L4Proto, src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> Self {
        Self { src, dst, proto, sport, dport }
    }

    /// A UDP tuple.
    pub fn udp(src: impl Into<IpAddr>, sport: u16, dst: impl Into<IpAddr>, dport: u16) -> Self {
        Self::new(L4Proto::Udp, src.into(), sport, dst.into(), dport)
    }

    /// A TCP tuple.
    pub fn tcp(src: impl Into<IpAddr>, sport: u16, dst: impl Into<IpAddr>, dport: u16) -> Self {
        Self::new(L4Proto::Tcp, src.into(), sport, dst.into(), dport)
    }

    /// An ICMP echo request from `src` to `dst` with identifier `id`.
    pub fn icmp_echo(src: impl Into<IpAddr>, dst: impl Into<IpAddr>, id: u16) -> Self {
        Self::new(L4Proto::Icmp, src.into(), id, dst.into(), u16::from(ICMP_ECHO_REQUEST) << 8)
    }

    /// The address family. Both addresses of a valid tuple share it.
    pub fn family(&self) -> Family {
        match self.src {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// Whether both addresses belong to the same family.
    pub fn is_well_formed(&self) -> bool {
        self.src.is_ipv4() == self.dst.is_ipv4()
    }

    /// The tuple of the answer this direction expects, before any NAT
    /// (`nf_ct_invert_tuple`): addresses and ports swapped; for ICMP the
    /// identifier kept and an echo request turned into an echo reply.
    pub fn invert(&self) -> Tuple {
        match self.proto {
            L4Proto::Icmp => {
                let (ty, code) = ((self.dport >> 8) as u8, self.dport as u8);
                let ty = match ty {
                    ICMP_ECHO_REQUEST => ICMP_ECHO_REPLY,
                    ICMP_ECHO_REPLY => ICMP_ECHO_REQUEST,
                    other => other,
                };
                Tuple {
                    src: self.dst,
                    dst: self.src,
                    proto: self.proto,
                    sport: self.sport,
                    dport: u16::from(ty) << 8 | u16::from(code),
                }
            }
            _ => Tuple { src: self.dst, dst: self.src, proto: self.proto, sport: self.dport, dport: self.sport },
        }
    }

    /// This tuple with another source address and port (what SNAT does).
    pub fn with_src(self, src: IpAddr, sport: u16) -> Tuple {
        Tuple { src, sport, ..self }
    }

    /// This tuple with another destination address and port (what DNAT does).
    pub fn with_dst(self, dst: IpAddr, dport: u16) -> Tuple {
        Tuple { dst, dport, ..self }
    }
}

impl fmt::Debug for Tuple {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Tuple {
    /// `udp 10.0.0.1:5353 -> 10.96.0.10:53`, IPv6 addresses in brackets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ep = |ip: &IpAddr, port: u16| match ip {
            IpAddr::V4(a) => format!("{a}:{port}"),
            IpAddr::V6(a) => format!("[{a}]:{port}"),
        };
        write!(f, "{} {} -> {}", self.proto.name(), ep(&self.src, self.sport), ep(&self.dst, self.dport))
    }
}

/// A tuple packed into machine words, the form the table stores and compares.
///
/// `W` is 2 for IPv4 (both addresses in one word, ports and protocol in the
/// other) and 5 for IPv6. Packing is lossless: [`Packed::unpack`] returns the
/// original tuple.
pub(crate) trait Packed: Sized + Copy + Eq + Send + Sync + 'static {
    /// The words as the table stores them: one atomic per word.
    type Stored: Default + AsRef<[AtomicU64]> + Send + Sync;
    /// The words, as an array reference.
    fn words(&self) -> &[u64];
    /// Rebuild from words written by [`Packed::words`].
    fn from_words(words: &[u64]) -> Self;
    /// Pack; `None` if the tuple is of the other family.
    fn pack(t: &Tuple) -> Option<Self>;
    /// Unpack.
    fn unpack(&self) -> Tuple;
}

fn pack_l4(t: &Tuple) -> u64 {
    u64::from(t.sport) | u64::from(t.dport) << 16 | u64::from(t.proto.number()) << 32
}

/// The protocol for each number [`pack_l4`] may store: a table, because
/// every lookup hit unpacks a tuple.
const PROTO_BY_NUMBER: [L4Proto; 256] = {
    let mut t = [L4Proto::Icmp; 256];
    t[L4Proto::Tcp.number() as usize] = L4Proto::Tcp;
    t[L4Proto::Udp.number() as usize] = L4Proto::Udp;
    t
};

fn unpack_l4(w: u64) -> (L4Proto, u16, u16) {
    (PROTO_BY_NUMBER[usize::from((w >> 32) as u8)], w as u16, (w >> 16) as u16)
}

/// An IPv4 tuple in two words.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct V4Key(pub [u64; 2]);

impl Packed for V4Key {
    type Stored = [AtomicU64; 2];
    fn words(&self) -> &[u64] {
        &self.0
    }
    fn from_words(w: &[u64]) -> Self {
        V4Key([w[0], w[1]])
    }
    fn pack(t: &Tuple) -> Option<Self> {
        match (t.src, t.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                Some(V4Key([u64::from(u32::from(s)) << 32 | u64::from(u32::from(d)), pack_l4(t)]))
            }
            _ => None,
        }
    }
    fn unpack(&self) -> Tuple {
        let (proto, sport, dport) = unpack_l4(self.0[1]);
        Tuple {
            src: IpAddr::V4(Ipv4Addr::from((self.0[0] >> 32) as u32)),
            dst: IpAddr::V4(Ipv4Addr::from(self.0[0] as u32)),
            proto,
            sport,
            dport,
        }
    }
}

/// An IPv6 tuple in five words.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct V6Key(pub [u64; 5]);

impl Packed for V6Key {
    type Stored = [AtomicU64; 5];
    fn words(&self) -> &[u64] {
        &self.0
    }
    fn from_words(w: &[u64]) -> Self {
        V6Key([w[0], w[1], w[2], w[3], w[4]])
    }
    fn pack(t: &Tuple) -> Option<Self> {
        match (t.src, t.dst) {
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let (s, d) = (u128::from(s), u128::from(d));
                Some(V6Key([(s >> 64) as u64, s as u64, (d >> 64) as u64, d as u64, pack_l4(t)]))
            }
            _ => None,
        }
    }
    fn unpack(&self) -> Tuple {
        let w = &self.0;
        let (proto, sport, dport) = unpack_l4(w[4]);
        let s = u128::from(w[0]) << 64 | u128::from(w[1]);
        let d = u128::from(w[2]) << 64 | u128::from(w[3]);
        Tuple { src: IpAddr::V6(Ipv6Addr::from(s)), dst: IpAddr::V6(Ipv6Addr::from(d)), proto, sport, dport }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invert_swaps_endpoints_and_is_an_involution() {
        let t = Tuple::udp(Ipv4Addr::new(10, 0, 0, 1), 40000, Ipv4Addr::new(10, 96, 0, 10), 53);
        let r = t.invert();
        assert_eq!((r.src, r.sport, r.dst, r.dport), (t.dst, 53, t.src, 40000));
        assert_eq!(r.invert(), t);
    }

    #[test]
    fn icmp_echo_inverts_to_reply_with_same_id() {
        let t = Tuple::icmp_echo(Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 2), 77);
        let r = t.invert();
        assert_eq!(r.sport, 77);
        assert_eq!(r.dport >> 8, u16::from(ICMP_ECHO_REPLY));
        assert_eq!(r.invert(), t);
    }

    #[test]
    fn packing_round_trips_both_families() {
        let v4 = Tuple::tcp(Ipv4Addr::new(198, 51, 100, 7), 1, Ipv4Addr::new(203, 0, 113, 9), 65535);
        assert_eq!(V4Key::pack(&v4).unwrap().unpack(), v4);
        assert!(V6Key::pack(&v4).is_none());
        let v6 = Tuple::udp(
            "2001:db8::1".parse::<Ipv6Addr>().unwrap(),
            5353,
            "2001:db8::53".parse::<Ipv6Addr>().unwrap(),
            53,
        );
        assert_eq!(V6Key::pack(&v6).unwrap().unpack(), v6);
        assert!(V4Key::pack(&v6).is_none());
    }

    #[test]
    fn display_is_conntrack_like() {
        let t = Tuple::udp(Ipv4Addr::new(10, 0, 0, 1), 5353, Ipv4Addr::new(10, 96, 0, 10), 53);
        assert_eq!(t.to_string(), "udp 10.0.0.1:5353 -> 10.96.0.10:53");
    }
}
