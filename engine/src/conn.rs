//! What the table knows about a connection: status bits, TCP state, and the
//! views of an entry handed to callers.

use std::fmt;

use crate::tuple::{Family, Tuple};
use crate::Nanos;

/// Connection status bits, after the kernel's `IPS_*` flags.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Status(u8);

impl Status {
    /// A packet was seen in the reply direction (`IPS_SEEN_REPLY`).
    pub const SEEN_REPLY: Status = Status(1 << 0);
    /// Protected from early drop (`IPS_ASSURED`).
    pub const ASSURED: Status = Status(1 << 1);
    /// In the table (`IPS_CONFIRMED`).
    pub const CONFIRMED: Status = Status(1 << 2);
    /// Source NAT applied (`IPS_SRC_NAT`).
    pub const SRC_NAT: Status = Status(1 << 3);
    /// Destination NAT applied (`IPS_DST_NAT`).
    pub const DST_NAT: Status = Status(1 << 4);
    /// Being removed (`IPS_DYING`).
    pub const DYING: Status = Status(1 << 5);
    /// Timeout is not refreshed by packets (`IPS_FIXED_TIMEOUT`).
    pub const FIXED_TIMEOUT: Status = Status(1 << 6);
    /// A reply-only entry inserted to resolve a clash (`IPS_NAT_CLASH`, 5.6+).
    pub const NAT_CLASH: Status = Status(1 << 7);

    /// Both NAT bits (`IPS_NAT_DONE_MASK` in spirit).
    pub const NAT_MASK: Status = Status(Self::SRC_NAT.0 | Self::DST_NAT.0);

    const NAMES: [(Status, &'static str); 8] = [
        (Status::SEEN_REPLY, "SEEN_REPLY"),
        (Status::ASSURED, "ASSURED"),
        (Status::CONFIRMED, "CONFIRMED"),
        (Status::SRC_NAT, "SRC_NAT"),
        (Status::DST_NAT, "DST_NAT"),
        (Status::DYING, "DYING"),
        (Status::FIXED_TIMEOUT, "FIXED_TIMEOUT"),
        (Status::NAT_CLASH, "NAT_CLASH"),
    ];

    /// No bits.
    pub const fn empty() -> Self {
        Status(0)
    }
    /// The raw bits.
    pub const fn bits(self) -> u8 {
        self.0
    }
    pub(crate) const fn from_bits(b: u8) -> Self {
        Status(b)
    }
    /// Whether every bit of `other` is set.
    pub const fn contains(self, other: Status) -> bool {
        self.0 & other.0 == other.0
    }
    /// Whether any bit of `other` is set.
    pub const fn intersects(self, other: Status) -> bool {
        self.0 & other.0 != 0
    }
    /// Set the bits of `other`.
    pub fn insert(&mut self, other: Status) {
        self.0 |= other.0;
    }
}

impl std::ops::BitOr for Status {
    type Output = Status;
    fn bitor(self, rhs: Status) -> Status {
        Status(self.0 | rhs.0)
    }
}

impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<_> = Self::NAMES.iter().filter(|(s, _)| self.contains(*s)).map(|(_, n)| *n).collect();
        write!(f, "[{}]", names.join("|"))
    }
}

/// Conntrack's view of a TCP connection (`enum tcp_conntrack`, simplified).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum TcpState {
    /// Not TCP, or no state yet.
    #[default]
    None = 0,
    /// SYN seen in the original direction.
    SynSent = 1,
    /// SYN/ACK seen in reply.
    SynRecv = 2,
    /// Three-way handshake done.
    Established = 3,
    /// A FIN was seen.
    FinWait = 4,
    /// FIN seen from the other side too.
    LastAck = 5,
    /// Closed cleanly; the tuple is held for `tcp_time_wait`.
    TimeWait = 6,
    /// Reset.
    Close = 7,
}

impl TcpState {
    pub(crate) fn from_bits(b: u8) -> Self {
        // A table, not a match: this is on the lookup-hit path. Only 0..=7 are
        // ever stored.
        const BY_BITS: [TcpState; 8] = [
            TcpState::None,
            TcpState::SynSent,
            TcpState::SynRecv,
            TcpState::Established,
            TcpState::FinWait,
            TcpState::LastAck,
            TcpState::TimeWait,
            TcpState::Close,
        ];
        BY_BITS[usize::from(b & 7)]
    }
}

/// TCP flags a packet carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TcpFlags {
    /// SYN.
    pub syn: bool,
    /// ACK.
    pub ack: bool,
    /// FIN.
    pub fin: bool,
    /// RST.
    pub rst: bool,
}

impl TcpFlags {
    /// A bare SYN.
    pub const SYN: TcpFlags = TcpFlags { syn: true, ack: false, fin: false, rst: false };
    /// SYN/ACK.
    pub const SYN_ACK: TcpFlags = TcpFlags { syn: true, ack: true, fin: false, rst: false };
    /// A bare ACK.
    pub const ACK: TcpFlags = TcpFlags { syn: false, ack: true, fin: false, rst: false };
    /// FIN/ACK.
    pub const FIN: TcpFlags = TcpFlags { syn: false, ack: true, fin: true, rst: false };
    /// RST.
    pub const RST: TcpFlags = TcpFlags { syn: false, ack: false, fin: false, rst: true };
}

/// Which of a connection's two tuples a packet matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dir {
    /// The original direction (the first packet's tuple).
    Original = 0,
    /// The reply direction.
    Reply = 1,
}

/// A handle on a confirmed connection.
///
/// It stays valid until the connection is removed; afterwards operations on
/// it report the connection as gone (the slot's generation has moved on), so
/// a stale handle can never touch a newer connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnRef {
    pub(crate) family: Family,
    pub(crate) idx: u32,
    pub(crate) gen: u32,
}

/// A consistent copy of a confirmed connection, taken without locks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hit {
    /// The connection.
    pub conn: ConnRef,
    /// The direction the looked-up tuple matched.
    pub dir: Dir,
    /// Original tuple.
    pub orig: Tuple,
    /// Reply tuple (NAT applied).
    pub reply: Tuple,
    /// Status bits.
    pub status: Status,
    /// TCP state.
    pub tcp_state: TcpState,
    /// When it expires (virtual ns, jiffy resolution).
    pub expires: Nanos,
    /// When its first packet was seen.
    pub created: Nanos,
}
