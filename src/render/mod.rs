//! Renderers for the machine formats (`csv`, `conntrack`, `prom`), shared by every
//! command that reports conntrack counters. Each takes the counters, the per-CPU
//! vector and (where there are clients) the client stats, never a command's types.

pub mod conntrack;
pub mod csv;
pub mod prom;

use std::collections::BTreeMap;

use racetrack_engine::KernelProfile;

/// The counters of one run, as the renderers need them.
pub struct Counters<'a> {
    /// One map per CPU (index = CPU), keyed by `conntrack -S` name.
    pub per_cpu: &'a [BTreeMap<&'static str, u64>],
    /// The kernel profile the run used: it decides which counters a kernel prints.
    pub profile: &'a KernelProfile,
    /// Entries in the table at the end (`nf_conntrack_count`).
    pub entries: u64,
}

impl Counters<'_> {
    /// One counter summed over CPUs (0 if no CPU has it).
    pub fn total(&self, name: &str) -> u64 {
        self.per_cpu.iter().map(|c| c.get(name).copied().unwrap_or(0)).sum()
    }

    /// The counters this kernel has, in the order conntrack-tools prints them
    /// (the netlink attribute order). `ignore` is listed for kernels before
    /// 5.10, which still sent it; racetrack does not model it (always 0).
    pub fn printed(&self) -> Vec<&'static str> {
        printed_counters(self.profile)
    }
}

/// See [`Counters::printed`]. Which kernel generation a profile stands for is
/// read from its counter semantics: `clash_resolve` (5.10+) came in the same
/// release that stopped sending `ignore`; `chaintoolong` with the chain limit (5.15+).
pub fn printed_counters(p: &KernelProfile) -> Vec<&'static str> {
    let mut v = vec!["found", "invalid"];
    if !p.counters.clash_resolve {
        v.push("ignore");
    }
    v.extend(["insert", "insert_failed", "drop", "early_drop", "error", "search_restart"]);
    if p.counters.clash_resolve {
        v.push("clash_resolve");
    }
    if p.conntrack.chain_limit.is_some() {
        v.push("chaintoolong");
    }
    v
}
