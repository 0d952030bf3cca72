//! The `tw-recycle` scenario: several hosts behind one NAT connect to a
//! server that has `net.ipv4.tcp_tw_recycle = 1` and timestamps on.
//!
//! When the server closes a connection first it keeps, per peer address,
//! the last TCP timestamp that peer sent and when (`tcpm_ts`,
//! `tcpm_ts_stamp`); the entry only moves forward. A later SYN from the
//! same address whose timestamp is more than one tick behind the cached one,
//! within 60 s (`TCP_PAWS_MSL`) of caching it, is dropped silently
//! (`PAWSPassive`). Behind a NAT every host has the same address but its own
//! timestamp clock, so the SYNs of every host whose clock is behind the
//! leader's are dropped while the leader keeps connecting; the client sends
//! the SYN again after 1 s, 2 s, … with a timestamp still behind.
//!
//! The clients' kernel decides what their timestamps look like: one clock
//! per host (≤ 4.9), a random offset per connection (4.10, and mainline
//! again from 2026), or per address pair (28ee1b746f49), which behind a NAT
//! is one offset per host.
//!
//! The SYNs cross the NAT node's conntrack (MASQUERADE), so `conntrack`
//! shows that conntrack dropped nothing: the loss is on the server.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use racetrack_engine::nat::snat::{Allocator, Snat, SnatFlags};
use racetrack_engine::sim::NatRules;
use racetrack_engine::{KernelProfile, Nanos, Tuple};
use rand::Rng;
use rand_pcg::Pcg64Mcg;
use serde::{Deserialize, Serialize};

use crate::listener::{run_listener, HostStats, ListenerReport};
use crate::node::{Node, SteeringKind};
use crate::params::Validate;
use crate::report::Prediction;
use crate::tcp::{ArrivalKind, Conn, Load, Refusal, SynAnswer, Tcp, TcpStats, Timing};

/// The timestamp offsets the clients' kernel uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientOffsets {
    /// One clock per host, started at boot (≤ 4.9).
    PerHost,
    /// A random offset per connection (4.10; mainline again since 2026).
    PerConnection,
    /// An offset per (source, destination) address pair (28ee1b746f49):
    /// behind a NAT, each host still has its own.
    PerHostPair,
}

/// The hosts behind the NAT.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hosts {
    /// Hosts sharing the NAT address.
    pub count: u32,
    /// Their SYNs carry timestamps (`net.ipv4.tcp_timestamps` on the clients).
    pub timestamps: bool,
    /// Timestamp clock rate (Hz): the jiffies of ≤ 4.12 kernels (100 to 1000), 1000 since.
    pub ts_hz: u32,
    /// Per-host clocks count from boot: each host booted a random time up to this long ago.
    #[serde(with = "humantime_serde")]
    pub max_uptime: Duration,
    /// How their timestamps are offset.
    pub ts_offsets: ClientOffsets,
}

/// The server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    /// `net.ipv4.tcp_tw_recycle` (exists only up to 4.11).
    pub tw_recycle: bool,
    /// `net.ipv4.tcp_timestamps` on the server.
    pub timestamps: bool,
}

/// The whole scenario.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TwRecycleScenario {
    /// Always `"tw-recycle"`.
    pub scenario: String,
    /// Seed of the run's random generator.
    pub seed: u64,
    /// The NAT node in front of the hosts.
    pub node: Node,
    /// The hosts behind it.
    pub hosts: Hosts,
    /// Their connections, over all hosts (each opened by a host chosen at random).
    pub load: Load,
    /// Client TCP timing.
    pub tcp: Timing,
    /// The server (its kernel is `--kernel`).
    pub server: Server,
}

impl Default for TwRecycleScenario {
    fn default() -> Self {
        Self {
            scenario: "tw-recycle".into(),
            seed: 1,
            node: Node::new(2, SteeringKind::FlowHash),
            hosts: Hosts {
                count: 2,
                timestamps: true,
                ts_hz: 1000,
                max_uptime: Duration::from_secs(10 * 24 * 3600),
                ts_offsets: ClientOffsets::PerHost,
            },
            load: Load {
                connections: 2000,
                rate: 20.0,
                arrival: ArrivalKind::Poisson,
                burst: 1,
                burst_spread: Duration::ZERO,
            },
            tcp: Timing { rtt: Duration::from_millis(1), ..Timing::default() },
            server: Server { tw_recycle: true, timestamps: true },
        }
    }
}

impl Validate for TwRecycleScenario {
    fn validate(&self) -> Result<(), (String, String)> {
        let bad = |k: &str, m: &str| Err((k.to_string(), m.to_string()));
        if self.scenario != "tw-recycle" {
            return bad("scenario", "must be \"tw-recycle\" in a tw-recycle scenario file");
        }
        self.node.validate()?;
        self.load.validate("load")?;
        self.tcp.validate("tcp")?;
        if self.hosts.count == 0 || self.hosts.count > 60_000 {
            return bad("hosts.count", "must be 1 to 60000");
        }
        if !(1..=1_000_000).contains(&self.hosts.ts_hz) {
            return bad("hosts.ts_hz", "must be 1 to 1000000");
        }
        if self.hosts.max_uptime.is_zero() || self.hosts.max_uptime > Duration::from_secs(10 * 365 * 24 * 3600) {
            return bad("hosts.max_uptime", "must be longer than 0s and at most 10 years");
        }
        Ok(())
    }
}

impl TwRecycleScenario {
    /// `tcp_tw_recycle` on a kernel that no longer has it is an error.
    pub fn check(&self, profile: &KernelProfile) -> Result<(), (String, String)> {
        if self.server.tw_recycle && !profile.tcp.tw_recycle_available {
            return Err((
                "server.tw_recycle".into(),
                format!(
                    "kernel {} has no net.ipv4.tcp_tw_recycle: it was removed in 4.12 (4396e46187ca); \
                     use a 4.11 or older profile, or set server.tw_recycle=false",
                    profile.name
                ),
            ));
        }
        Ok(())
    }
}

const NAT_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const SERVER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);

/// The timestamp a clock started at `offset` ticks and running at `hz` shows at `now`.
pub fn tsval(offset: u32, hz: u32, now: Nanos) -> u32 {
    let ticks = (u128::from(now) * u128::from(hz) / 1_000_000_000) as u32;
    offset.wrapping_add(ticks)
}

/// What the server's per-peer cache says about a SYN.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PawsCheck {
    /// Nothing cached for the peer: accepted.
    NotCached,
    /// The cached timestamp is older than `TCP_PAWS_MSL`: accepted.
    Stale,
    /// The SYN's timestamp is not behind the cached one: accepted.
    NotBehind,
    /// Behind the cached timestamp (or without one, on kernels that reject
    /// that) within `TCP_PAWS_MSL`: dropped (`PAWSPassive`).
    Rejected,
}

/// A `tcp_tw_recycle` server's per-peer timestamp cache (`tcpm_ts`,
/// `tcpm_ts_stamp`): one entry per peer address, moved only forward.
#[derive(Clone, Debug)]
pub struct PeerCache {
    paws_msl: Nanos,
    rejects_without_ts: bool,
    /// Per peer address: (timestamp, when cached).
    cache: HashMap<IpAddr, (u32, Nanos)>,
}

impl PeerCache {
    /// An empty cache with the server kernel's rules.
    pub fn new(profile: &KernelProfile) -> Self {
        Self {
            paws_msl: profile.tcp.paws_msl.as_nanos() as Nanos,
            rejects_without_ts: profile.tcp.paws_rejects_syn_without_timestamp,
            cache: HashMap::new(),
        }
    }

    /// Check a SYN from `peer` carrying timestamp `ts` (`None`: no timestamp option) at `now`.
    pub fn check(&self, peer: IpAddr, ts: Option<u32>, now: Nanos) -> PawsCheck {
        let Some(&(cached, stamp)) = self.cache.get(&peer) else { return PawsCheck::NotCached };
        if now.saturating_sub(stamp) >= self.paws_msl {
            return PawsCheck::Stale;
        }
        let reject = match ts {
            // More than one tick behind.
            Some(ts) => cached.wrapping_sub(ts) as i32 > 1,
            None => self.rejects_without_ts,
        };
        if reject {
            PawsCheck::Rejected
        } else {
            PawsCheck::NotBehind
        }
    }

    /// The server closed a connection with `peer` first and holds it in
    /// TIME_WAIT: remember the peer's last timestamp, only forward (or over
    /// a stale entry).
    pub fn remember(&mut self, peer: IpAddr, ts: u32, now: Nanos) {
        let e = self.cache.entry(peer).or_insert((ts, now));
        if e.0.wrapping_sub(ts) as i32 <= 0 || now.saturating_sub(e.1) > self.paws_msl {
            *e = (ts, now);
        }
    }

    /// What is cached for `peer`: (timestamp, when cached).
    pub fn get(&self, peer: IpAddr) -> Option<(u32, Nanos)> {
        self.cache.get(&peer).copied()
    }
}

struct Side<'s> {
    s: &'s TwRecycleScenario,
    /// Per host: its clock's offset.
    host_offset: Vec<u32>,
    /// Per connection: its own offset (per-connection clients).
    conn_offset: Vec<u32>,
    cache: PeerCache,
    first_dropped: Vec<bool>,
}

impl Side<'_> {
    /// The timestamp connection `id` from `host` sends at `now`.
    fn tsval(&self, host: u32, id: u32, now: Nanos) -> u32 {
        let offset = match self.s.hosts.ts_offsets {
            ClientOffsets::PerHost | ClientOffsets::PerHostPair => self.host_offset[host as usize],
            ClientOffsets::PerConnection => self.conn_offset[id as usize],
        };
        tsval(offset, self.s.hosts.ts_hz, now)
    }

    fn cache_on(&self) -> bool {
        self.s.server.tw_recycle && self.s.server.timestamps
    }
}

impl Tcp for Side<'_> {
    fn open(&mut self, i: u32, _now: Nanos, rng: &mut Pcg64Mcg) -> (u32, Tuple) {
        let h = rng.random_range(0..self.s.hosts.count);
        self.conn_offset.push(rng.random());
        self.first_dropped.push(false);
        debug_assert_eq!(self.conn_offset.len(), i as usize + 1);
        let n = h + 2;
        let src = Ipv4Addr::new(192, 168, (n >> 8) as u8, n as u8);
        (h, Tuple::tcp(src, rng.random_range(32768..=60999), SERVER, 80))
    }

    fn syn(&mut self, now: Nanos, id: u32, c: &Conn) -> SynAnswer {
        if !self.cache_on() {
            return SynAnswer::SynAck;
        }
        let peer = c.out.expect("a SYN that reached the server").src;
        let with_ts = self.s.hosts.timestamps;
        let ts = self.tsval(c.host, id, now);
        if self.cache.check(peer, with_ts.then_some(ts), now) == PawsCheck::Rejected {
            if c.attempt == 0 {
                self.first_dropped[id as usize] = true;
            }
            return SynAnswer::Drop(Refusal::Paws);
        }
        SynAnswer::SynAck
    }

    fn closed(&mut self, now: Nanos, id: u32, c: &Conn) {
        if !self.cache_on() || !self.s.hosts.timestamps {
            return;
        }
        // The server enters TIME_WAIT and remembers the peer's last
        // timestamp, only forward (or over a stale entry).
        let peer = c.out.expect("an established connection").src;
        let ts = self.tsval(c.host, id, now);
        self.cache.remember(peer, ts, now);
    }
}

/// Run the scenario on the server's kernel profile. Call
/// [`TwRecycleScenario::check`] first: this runs whatever it is given.
pub fn run(s: &TwRecycleScenario, profile: KernelProfile) -> ListenerReport {
    let mut rng = <Pcg64Mcg as rand::SeedableRng>::seed_from_u64(s.seed ^ 0x7157);
    let side = Side {
        s,
        host_offset: (0..s.hosts.count)
            .map(|_| {
                let up = rng.random_range(0..s.hosts.max_uptime.as_nanos().max(1));
                (up * u128::from(s.hosts.ts_hz) / 1_000_000_000) as u32
            })
            .collect(),
        conn_offset: Vec::with_capacity(s.load.connections as usize),
        cache: PeerCache::new(&profile),
        first_dropped: Vec::with_capacity(s.load.connections as usize),
    };
    let nat = NatRules {
        dnat: None,
        snat: Some(Snat {
            to_source: vec![IpAddr::V4(NAT_IP)],
            range: None,
            flags: SnatFlags::default(),
            allocator: Allocator::Kernel,
        }),
    };
    run_listener(
        "tw-recycle",
        s.seed,
        profile,
        &s.node,
        &s.load,
        &s.tcp,
        Some(nat),
        side,
        |side, id| side.first_dropped[id as usize],
        |side, _stats: &TcpStats, hosts: &[HostStats]| predictions(side, hosts),
    )
}

fn predictions(side: &Side<'_>, hosts: &[HostStats]) -> Vec<Prediction> {
    let s = side.s;
    let total: u64 = hosts.iter().map(|h| h.connections).sum();
    let dropped: u64 = hosts.iter().map(|h| h.first_syn_dropped).sum();
    let h = f64::from(s.hosts.count);
    let (predicted, formula) = if !side.cache_on() {
        (0.0, "0: no per-peer timestamp cache without tcp_tw_recycle and timestamps".to_string())
    } else if !s.hosts.timestamps {
        // The cache keeps a peer's last TSval; hosts that send none leave
        // nothing to compare with (4.x's rejection of a SYN without a
        // timestamp needs a cached one from another host of the address).
        (0.0, "0: the hosts send no timestamps, so no peer's TSval is ever cached".to_string())
    } else {
        match s.hosts.ts_offsets {
            ClientOffsets::PerConnection => {
                (0.5, "1/2: every connection's clock is random, so half the SYNs are behind the cache".to_string())
            }
            // With clocks less than 2^31 ticks apart they are totally ordered.
            _ => (
                (h - 1.0) / h,
                format!("(H−1)/H = {:.3}: every host but the one with the leading clock is behind", (h - 1.0) / h),
            ),
        }
    };
    vec![Prediction {
        name: "share of connections whose first SYN PAWS rejects",
        formula,
        predicted,
        simulated: Some(if total == 0 { 0.0 } else { dropped as f64 / total as f64 }),
    }]
}
