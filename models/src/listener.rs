//! The report of the scenarios about a TCP listener (`tw-recycle`,
//! `syn-backlog`): SYNs that conntrack let through but the server dropped.

use std::collections::BTreeMap;

use racetrack_engine::sim::{NatRules, RunStats, Sim};
use racetrack_engine::{Conntrack, KernelProfile, Nanos};
use serde::Serialize;

use crate::clients::ClientStats;
use crate::node::Node;
use crate::report::{counters, Prediction};
use crate::tcp::{Load, Tcp, TcpStats, TcpWorkload, Timing};

/// Per client host.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HostStats {
    /// Connections it opened.
    pub connections: u64,
    /// Connections whose first SYN the listener dropped.
    pub first_syn_dropped: u64,
    /// Connections that needed a SYN retransmission.
    pub retried: u64,
    /// Connections that never got through.
    pub failed: u64,
}

/// The result of a `tw-recycle` or `syn-backlog` run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ListenerReport {
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
    /// Listener-side TCP counters (separate from conntrack's `drop`).
    pub tcp: TcpStats,
    /// Per client host.
    pub hosts: Vec<HostStats>,
    /// Closed-form expectations beside the simulated figures.
    pub analytic: Vec<Prediction>,
    /// Simulator totals.
    pub sim: RunStats,
}

/// Run connections for a listener scenario and collect the common report;
/// `first_dropped(side, id)` says whether connection `id`'s first SYN was
/// dropped by the listener, `analytic` adds the closed forms.
#[allow(clippy::too_many_arguments)]
pub fn run_listener<T: Tcp>(
    name: &str,
    seed: u64,
    profile: KernelProfile,
    node: &Node,
    load: &Load,
    timing: &Timing,
    nat: Option<NatRules>,
    side: T,
    first_dropped: impl Fn(&T, u32) -> bool,
    analytic: impl FnOnce(&T, &TcpStats, &[HostStats]) -> Vec<Prediction>,
) -> ListenerReport {
    let kernel = profile.name.clone();
    let table = Conntrack::new(profile, node.cpus, seed ^ 0x5eed);
    let mut sim = Sim::new(&table, node.sim_config(seed));
    let nat = nat.map(|rules| sim.add_nat(rules));
    let mut w = TcpWorkload::new(side, load, timing, nat, node.cpus);
    let stats = sim.run(&mut w, Nanos::MAX);
    let mut hosts: Vec<HostStats> = Vec::new();
    for (id, c) in w.conns().iter().enumerate() {
        let h = c.host as usize;
        if hosts.len() <= h {
            hosts.resize(h + 1, HostStats::default());
        }
        let s = &mut hosts[h];
        s.connections += 1;
        s.first_syn_dropped += u64::from(first_dropped(&w.tcp, id as u32));
        s.retried += u64::from(c.connected && c.attempt > 0);
        s.failed += u64::from(c.failed);
    }
    let snap = table.stats();
    let analytic = analytic(&w.tcp, &w.stats, &hosts);
    ListenerReport {
        scenario: name.into(),
        kernel,
        seed,
        conntrack: counters(&snap.total()),
        per_cpu: snap.per_cpu.iter().map(counters).collect(),
        clients: w.summary(),
        conntrack_entries: table.count() as u64,
        tcp: w.stats.clone(),
        hosts,
        analytic,
        sim: stats,
    }
}
