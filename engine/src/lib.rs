//! racetrack-engine: a userspace model of Linux netfilter connection tracking and NAT.
//!
//! The engine is driven from outside: every call says which (virtual) CPU
//! runs it and at what time (an [`At`]), and anything random draws from an RNG
//! the caller passes in. It never reads a clock or a global RNG, so a
//! simulator that feeds it seeded inputs gets byte-identical results.
//!
//! The packet path follows the kernel's hooks:
//! [`Conntrack::lookup`] / [`Conntrack::new_conn`] (conntrack in),
//! NAT on the [`Unconfirmed`] entry the packet owns, then [`Conntrack::confirm`].

mod clock;
pub mod conn;
mod count;
pub mod draw;
pub mod input;
pub mod nat;
pub mod profile;
pub mod sim;
mod slab;
pub mod stats;
pub(crate) mod sync;
pub mod table;
#[cfg(not(loom))]
pub mod threads;
pub mod tuple;

pub use conn::{ConnRef, Dir, Hit, Status, TcpFlags, TcpState};
pub use profile::KernelProfile;
pub use stats::{Stat, StatsSnapshot};
pub use table::{ClashCause, Confirm, Conntrack, DropReason, GcReport, TableFull, Tracked, Unconfirmed, Update};
pub use tuple::{L4Proto, Tuple};

/// Virtual time in nanoseconds.
pub type Nanos = u64;

/// Where and when a stage of the packet path runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct At {
    /// The CPU handling the packet; selects the per-CPU counters.
    pub cpu: usize,
    /// The current virtual time.
    pub now: Nanos,
}

/// The per-CPU item of `cpu`. A CPU index past the items wraps (every
/// per-CPU array of a table does the same); the comparison spares the
/// common case a division.
#[inline]
pub(crate) fn of_cpu<T>(items: &[T], cpu: usize) -> &T {
    let n = items.len();
    &items[if cpu < n { cpu } else { cpu % n }]
}

impl At {
    /// A stage on `cpu` at `now`.
    pub const fn new(cpu: usize, now: Nanos) -> Self {
        Self { cpu, now }
    }
}
