//! The SNAT scenario: new TCP connections whose source is rewritten by
//! MASQUERADE on one node, so their source ports come from one allocator.
//!
//! Two topologies:
//! - `nodeport`: external clients → load balancer → NodePort on this node
//!   → DNAT to a pod on another node → MASQUERADE to this node's address.
//!   Different clients may use the same source port; "keep the original
//!   port if free" makes both keep it when they race.
//! - `egress`: many pods on this node → one external destination, SNATed to
//!   the node's address.
//!
//! The "is this port free" check sees only confirmed connections, so two
//! allocations on two CPUs that overlap in time can choose the same port;
//! the later confirm finds the reply tuple taken and drops the SYN
//! (`insert_failed`, `drop`), and the client sends it again after its
//! retransmission timeout. Nothing here decides that a clash happens: the
//! allocator runs on the simulated table, and the report's `analytic`
//! section sets the closed-form expectation beside what happened.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use racetrack_engine::nat::dnat::{Dnat, Endpoint, Selector};
use racetrack_engine::nat::snat::{Allocator, PortRange, Snat, SnatFlags};
use racetrack_engine::profile::{PortOffset, PortSearch};
use racetrack_engine::sim::{NatRules, RunStats, Sim};
use racetrack_engine::{Conntrack, KernelProfile, Nanos, Tuple};
use rand::Rng;
use rand_pcg::Pcg64Mcg;
use serde::{Deserialize, Serialize};

use crate::clients::ClientStats;
use crate::node::{Node, SteeringKind};
use crate::params::Validate;
use crate::report::{counters, Prediction};
use crate::tcp::{ArrivalKind, Conn, Load, SnatStats, SynAnswer, Tcp, TcpStats, TcpWorkload, Timing};

/// Where the SNATed connections come from and go to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Topology {
    /// External clients → NodePort → DNAT to a pod elsewhere → MASQUERADE.
    Nodeport,
    /// Pods on the node → one external destination → SNAT to the node address.
    Egress,
}

/// How a client picks its source port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientPorts {
    /// Uniformly from `ip_local_port_range` (32768–60999) for every connection.
    Random,
    /// Each host counts up from a random start (wrapping in the same range).
    Sequential,
}

/// The client hosts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Clients {
    /// Client hosts (`nodeport`) or pods (`egress`), each with its own address.
    pub hosts: u32,
    /// `random` or `sequential` source ports.
    pub ports: ClientPorts,
}

/// Port search names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AllocatorKind {
    /// What the kernel profile does (with `random` / `random_fully`).
    Kernel,
    /// What-if: random start, every port of the range.
    Exhaustive,
    /// What-if: each CPU owns a slice of the range.
    PerCpuSlices,
    /// What-if: up to `tries` independent random ports.
    RandomRetries,
}

/// The MASQUERADE / SNAT rule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnatRule {
    /// The port search.
    pub allocator: AllocatorKind,
    /// With `random-retries`: ports tried.
    pub tries: u32,
    /// `--random`.
    pub random: bool,
    /// `--random-fully`.
    pub random_fully: bool,
    /// Lowest port of the range (`--to-ports`; the kernel's default is 1024–65535).
    pub port_min: u16,
    /// Highest port of the range.
    pub port_max: u16,
}

/// The whole SNAT scenario.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnatScenario {
    /// Always `"snat"`.
    pub scenario: String,
    /// Seed of the run's random generator.
    pub seed: u64,
    /// `nodeport` or `egress`.
    pub topology: Topology,
    /// With `nodeport`: pods behind the service (each a separate destination).
    pub backends: u32,
    /// The node doing SNAT.
    pub node: Node,
    /// The clients.
    pub clients: Clients,
    /// The offered load.
    pub load: Load,
    /// Client TCP timing.
    pub tcp: Timing,
    /// The SNAT rule.
    pub snat: SnatRule,
}

impl Default for SnatScenario {
    fn default() -> Self {
        Self {
            scenario: "snat".into(),
            seed: 1,
            topology: Topology::Nodeport,
            backends: 1,
            node: Node::new(2, SteeringKind::FlowHash),
            clients: Clients { hosts: 200, ports: ClientPorts::Random },
            load: Load {
                connections: 20_000,
                rate: 300.0,
                arrival: ArrivalKind::Bursts,
                burst: 8,
                burst_spread: Duration::from_micros(20),
            },
            tcp: Timing::default(),
            snat: SnatRule {
                allocator: AllocatorKind::Kernel,
                tries: 8,
                random: false,
                random_fully: false,
                port_min: 1024,
                port_max: 65535,
            },
        }
    }
}

impl Validate for SnatScenario {
    fn validate(&self) -> Result<(), (String, String)> {
        let bad = |k: &str, m: &str| Err((k.to_string(), m.to_string()));
        if self.scenario != "snat" {
            return bad("scenario", "must be \"snat\" in an SNAT scenario file");
        }
        self.node.validate()?;
        self.load.validate("load")?;
        self.tcp.validate("tcp")?;
        if self.backends == 0 || self.backends > 1000 {
            return bad("backends", "must be 1 to 1000");
        }
        if self.clients.hosts == 0 || self.clients.hosts > 1 << 20 {
            return bad("clients.hosts", "must be 1 to 1048576");
        }
        if self.snat.port_min == 0 {
            return bad("snat.port_min", "must be 1 to 65535");
        }
        if self.snat.port_max < self.snat.port_min {
            return bad("snat.port_max", "must be at least snat.port_min");
        }
        if self.snat.allocator == AllocatorKind::RandomRetries && !(1..=65535).contains(&self.snat.tries) {
            return bad("snat.tries", "must be 1 to 65535");
        }
        if self.snat.random && self.snat.random_fully {
            return bad("snat.random", "set `random` or `random_fully`, not both (--random-fully wins in the kernel)");
        }
        Ok(())
    }
}

/// The result of one SNAT run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SnatReport {
    /// Scenario name.
    pub scenario: String,
    /// Kernel profile name.
    pub kernel: String,
    /// Seed.
    pub seed: u64,
    /// Conntrack counters summed over CPUs, by `conntrack -S` name.
    pub conntrack: BTreeMap<&'static str, u64>,
    /// Per-CPU counters.
    pub per_cpu: Vec<BTreeMap<&'static str, u64>>,
    /// Connections as the clients saw them (`requests` = connections).
    pub clients: ClientStats,
    /// Conntrack entries in the table when the run ended (`nf_conntrack_count`).
    pub conntrack_entries: u64,
    /// The port allocator.
    pub snat: SnatSection,
    /// Listener-side TCP counters.
    pub tcp: TcpStats,
    /// Closed-form expectations beside the simulated figures.
    pub analytic: Vec<Prediction>,
    /// Simulator totals.
    pub sim: RunStats,
}

/// The `snat` output key.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SnatSection {
    /// Allocation counts and the probe histogram.
    #[serde(flatten)]
    pub stats: SnatStats,
    /// Ports in the range.
    pub range: u32,
    /// Most ports held at once toward one destination (connections not yet out of TIME_WAIT).
    pub ports_in_use_max: u64,
    /// Mean ports held at an allocation.
    pub ports_in_use_mean: f64,
}

const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const NODE_PORT: u16 = 30080;
const POD_PORT: u16 = 8080;
const EGRESS_DST: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// Linux's default `ip_local_port_range`.
pub const EPHEMERAL: (u16, u16) = (32768, 60999);

fn host_ip(topology: Topology, h: u32) -> Ipv4Addr {
    let n = h + 2;
    match topology {
        Topology::Nodeport => Ipv4Addr::new(100, 64 + ((n >> 16) & 0x3f) as u8, (n >> 8) as u8, n as u8),
        Topology::Egress => Ipv4Addr::new(10, 244 + ((n >> 16) & 0x3) as u8, (n >> 8) as u8, n as u8),
    }
}

fn pod_ip(i: u32) -> Ipv4Addr {
    let n = i + 2;
    Ipv4Addr::new(10, 245, (n >> 8) as u8, n as u8)
}

/// The scenario's side of the connections: who connects where, and how
/// many ports are held at each moment.
struct Side<'s> {
    s: &'s SnatScenario,
    next_port: Vec<u16>,
    time_wait: Nanos,
    half_rtt: Nanos,
    in_use: u64,
    expiries: BinaryHeap<Reverse<Nanos>>,
    in_use_max: u64,
    in_use_sum: f64,
    samples: u64,
}

impl Side<'_> {
    fn expire(&mut self, now: Nanos) {
        while self.expiries.peek().is_some_and(|Reverse(t)| *t <= now) {
            self.expiries.pop();
            self.in_use -= 1;
        }
    }
}

impl Tcp for Side<'_> {
    fn open(&mut self, _i: u32, _now: Nanos, rng: &mut Pcg64Mcg) -> (u32, Tuple) {
        let s = self.s;
        let h = rng.random_range(0..s.clients.hosts);
        let (lo, hi) = EPHEMERAL;
        let sport = match s.clients.ports {
            ClientPorts::Random => rng.random_range(lo..=hi),
            ClientPorts::Sequential => {
                let p = &mut self.next_port[h as usize];
                if *p == 0 {
                    *p = rng.random_range(lo..=hi);
                }
                let port = *p;
                *p = if port >= hi { lo } else { port + 1 };
                port
            }
        };
        let src = host_ip(s.topology, h);
        let tuple = match s.topology {
            Topology::Nodeport => Tuple::tcp(src, sport, NODE_IP, NODE_PORT),
            Topology::Egress => Tuple::tcp(src, sport, EGRESS_DST, 443),
        };
        (h, tuple)
    }

    fn syn(&mut self, now: Nanos, _id: u32, c: &Conn) -> SynAnswer {
        // conntrack accepted the SYN (this listener never refuses one, so
        // once per connection): it holds its port from now on.
        let _ = c;
        self.expire(now);
        self.in_use += 1;
        self.in_use_max = self.in_use_max.max(self.in_use);
        self.in_use_sum += self.in_use as f64;
        self.samples += 1;
        SynAnswer::SynAck
    }

    fn closed(&mut self, now: Nanos, _id: u32, _c: &Conn) {
        // The last ACK puts the conntrack entry in TIME_WAIT; it frees the port when that ends.
        self.expiries.push(Reverse(now + self.half_rtt + self.time_wait));
    }
}

/// Run the scenario on a kernel profile.
pub fn run(s: &SnatScenario, profile: KernelProfile) -> SnatReport {
    let kernel = profile.name.clone();
    let nat_profile = profile.nat.clone();
    let time_wait = profile.timeouts.tcp_time_wait.as_nanos() as Nanos;
    let table = Conntrack::new(profile, s.node.cpus, s.seed ^ 0x5eed);
    let mut sim = Sim::new(&table, s.node.sim_config(s.seed));
    let dnat = match s.topology {
        Topology::Nodeport => {
            let endpoints: Vec<Endpoint> =
                (0..s.backends).map(|i| Endpoint { addr: pod_ip(i).into(), port: POD_PORT, weight: 1 }).collect();
            let n = endpoints.len();
            Some(Dnat::new(endpoints, Selector::kube_proxy_random(n), s.seed).expect("valid backends"))
        }
        Topology::Egress => None,
    };
    let rule = Snat {
        to_source: vec![IpAddr::V4(NODE_IP)],
        range: Some(PortRange { min: s.snat.port_min, max: s.snat.port_max }),
        flags: SnatFlags { random: s.snat.random, random_fully: s.snat.random_fully },
        allocator: match s.snat.allocator {
            AllocatorKind::Kernel => Allocator::Kernel,
            AllocatorKind::Exhaustive => Allocator::Exhaustive,
            AllocatorKind::PerCpuSlices => Allocator::PerCpuSlices,
            AllocatorKind::RandomRetries => Allocator::RandomRetries { tries: s.snat.tries },
        },
    };
    let nat = sim.add_nat(NatRules { dnat, snat: Some(rule) });
    let side = Side {
        s,
        next_port: vec![0; s.clients.hosts as usize],
        time_wait,
        half_rtt: s.tcp.rtt.as_nanos() as Nanos / 2,
        in_use: 0,
        expiries: BinaryHeap::new(),
        in_use_max: 0,
        in_use_sum: 0.0,
        samples: 0,
    };
    let mut w = TcpWorkload::new(side, &s.load, &s.tcp, Some(nat), s.node.cpus);
    let stats = sim.run(&mut w, Nanos::MAX);
    let snap = table.stats();
    let range = u32::from(s.snat.port_max - s.snat.port_min) + 1;
    let side = &w.tcp;
    // Each backend is its own destination with its own port space.
    let destinations = match s.topology {
        Topology::Nodeport => f64::from(s.backends),
        Topology::Egress => 1.0,
    };
    let section = SnatSection {
        stats: w.snat.clone(),
        range,
        ports_in_use_max: side.in_use_max,
        ports_in_use_mean: if side.samples == 0 { 0.0 } else { side.in_use_sum / side.samples as f64 },
    };
    let analytic = predictions(s, &nat_profile, &section, destinations, time_wait);
    SnatReport {
        scenario: "snat".into(),
        kernel,
        seed: s.seed,
        conntrack: counters(&snap.total()),
        per_cpu: snap.per_cpu.iter().map(counters).collect(),
        clients: w.summary(),
        conntrack_entries: table.count() as u64,
        snat: section,
        tcp: w.stats.clone(),
        analytic,
        sim: stats,
    }
}

/// Whether two racing allocations that both skip "keep the original port"
/// start their search at the same place (a shared rover, or a hash of the
/// same addresses): then they pick the same port.
fn deterministic_start(s: &SnatScenario, nat: &racetrack_engine::profile::NatProfile) -> Option<bool> {
    match s.snat.allocator {
        AllocatorKind::Kernel => {
            let start = if s.snat.random_fully {
                PortOffset::Random
            } else if s.snat.random {
                nat.random_offset
            } else {
                nat.default_offset
            };
            Some(start != PortOffset::Random)
        }
        AllocatorKind::Exhaustive | AllocatorKind::RandomRetries => Some(false),
        AllocatorKind::PerCpuSlices => None,
    }
}

/// The closed forms (see docs/reference/scenarios/snat.md for the derivations).
fn predictions(
    s: &SnatScenario,
    nat: &racetrack_engine::profile::NatProfile,
    sec: &SnatSection,
    destinations: f64,
    time_wait: Nanos,
) -> Vec<Prediction> {
    let st = &sec.stats;
    let r = f64::from(sec.range);
    let allocs = st.allocations.max(1) as f64;
    // Occupancy of one destination's port space.
    let rho = (sec.ports_in_use_mean / destinations / r).clamp(0.0, 0.999);
    let free_collide = |rho: f64| (1.0 + rho) / (r * (1.0 - rho));
    let q = 1.0 - st.kept_original as f64 / allocs;
    let eph = f64::from(EPHEMERAL.1 - EPHEMERAL.0) + 1.0;
    let fallback_same = match deterministic_start(s, nat) {
        Some(true) => 1.0,
        Some(false) if s.snat.allocator == AllocatorKind::RandomRetries => 1.0 / (r * (1.0 - rho)),
        Some(false) => free_collide(rho),
        None => 0.0,
    };
    let p_same = q * q * fallback_same + (1.0 - q) * (1.0 - q) / eph / destinations;
    let racing_clashes = st.racing_both_searched * fallback_same + st.racing_both_kept / eph / destinations;
    let hold_total = (s.tcp.hold + 2 * s.tcp.rtt).as_secs_f64() + time_wait as f64 / 1e9;
    let duration = f64::from(s.load.connections) / s.load.rate;
    let attempts = match (s.snat.allocator, nat.search) {
        (AllocatorKind::Kernel | AllocatorKind::PerCpuSlices, PortSearch::Bounded { attempts, min_round }) => {
            let mut total = 0u32;
            let mut a = attempts.min(sec.range);
            loop {
                total += a;
                if a >= sec.range || a < min_round {
                    break;
                }
                a /= 2;
            }
            total
        }
        (AllocatorKind::RandomRetries, _) => s.snat.tries,
        _ => sec.range,
    };
    let rho_max = (sec.ports_in_use_max as f64 / destinations / r).min(1.0);
    vec![
        Prediction {
            name: "same port for two racing allocations (run mean)",
            formula: if fallback_same == 1.0 {
                "q² + (1−q)²/E  (q: share not keeping the client port; shared start → same port)".into()
            } else {
                "q²·(1+ρ)/(R(1−ρ)) + (1−q)²/E  (random start, then the next free port)".into()
            },
            predicted: p_same,
            simulated: None,
        },
        Prediction {
            name: "SYNs dropped by racing allocations",
            formula: format!(
                "Σ over allocations of racing × P(same port), with q as it was then ({} racing pairs)",
                st.racing_pairs
            ),
            predicted: racing_clashes,
            simulated: Some((st.dropped_at_confirm - st.dropped_exhausted) as f64),
        },
        Prediction {
            name: "ports in use, most",
            formula: format!(
                "min(rate × min(hold + TIME_WAIT, run), R) = min({} × {:.1} s, {})",
                s.load.rate,
                hold_total.min(duration),
                sec.range
            ),
            predicted: (s.load.rate / destinations * hold_total.min(duration)).min(r),
            simulated: Some(sec.ports_in_use_max as f64 / destinations),
        },
        Prediction {
            name: "sustainable new connections/s per destination",
            // What the run offered is an input, not a measurement: it goes
            // in the formula line, and the simulated column stays empty.
            formula: format!(
                "R / (hold + TIME_WAIT) = {} / {:.1} s; this run offers {} per destination",
                sec.range,
                hold_total,
                s.load.rate / destinations
            ),
            predicted: r / hold_total,
            simulated: None,
        },
        Prediction {
            name: "share of allocations finding no free port",
            formula: format!("ρ_max^attempts, attempts = {attempts} (ρ_max = {rho_max:.3})"),
            predicted: rho_max.powf(f64::from(attempts)),
            simulated: Some(st.exhausted as f64 / allocs),
        },
    ]
}
