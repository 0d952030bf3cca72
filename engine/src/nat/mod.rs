//! NAT: destination endpoint selection (DNAT) and source port allocation (SNAT).
//!
//! NAT runs on a packet's *unconfirmed* connection, between lookup and
//! confirm, and asks the table which tuples are taken; only confirmed
//! connections answer. Both races racetrack models live in that gap:
//! two packets of one flow DNATed to different endpoints on two CPUs, and two
//! flows SNATed to the same port on two CPUs.
//!
//! - [`dnat`]: kube-proxy's iptables `statistic` chains, nftables `numgen`
//!   and `jhash`, IPVS rr/wrr/sh.
//! - [`snat`]: keep the original port, the shared rover (before 2022),
//!   `--random` (a keyed hash on 4.x), `--random-fully`, the 128-probe cap
//!   with halving rounds, explicit ranges, and what-if allocators: per-CPU
//!   port slices (VPP) and a few random retries (Calico).

pub mod dnat;
pub mod snat;

pub use dnat::{Dnat, Endpoint, Selector};
pub use snat::{Allocator, PortRange, Rovers, Snat, SnatFlags, SnatOutcome};
