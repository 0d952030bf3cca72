//! The node whose conntrack a scenario drives: CPUs, steering, stage times.

use std::time::Duration;

use racetrack_engine::sim::{SimConfig, StageTimes, Steering};
use racetrack_engine::Nanos;
use serde::{Deserialize, Serialize};

/// The node: CPUs, how packets are spread over them, how long the stack takes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// CPUs handling packets.
    pub cpus: usize,
    /// `sender`, `flow-hash`, `random`, or `spread` (see `split`).
    pub steering: SteeringKind,
    /// With `spread`: probability that the second packet of a burst lands on another CPU.
    pub split: f64,
    /// Stage durations of the conntrack path.
    pub stages: Stages,
}

/// Steering policy names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SteeringKind {
    /// The sending thread's CPU.
    Sender,
    /// RSS/RPS hash of the tuple.
    FlowHash,
    /// Uniformly random.
    Random,
    /// Bursts split across CPUs with probability `split`.
    Spread,
}

/// Stage durations, human-readable.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stages {
    /// Receive path up to the conntrack lookup.
    #[serde(with = "humantime_serde")]
    pub lookup: Duration,
    /// Lookup to DNAT.
    #[serde(with = "humantime_serde")]
    pub dnat: Duration,
    /// DNAT to SNAT.
    #[serde(with = "humantime_serde")]
    pub snat: Duration,
    /// SNAT to confirm.
    #[serde(with = "humantime_serde")]
    pub confirm: Duration,
    /// Relative jitter of each stage, 0 to 1.
    pub jitter: f64,
}

impl Node {
    /// A node with `cpus` CPUs, the given steering, and the default stage
    /// times: a few microseconds from lookup to confirm.
    pub fn new(cpus: usize, steering: SteeringKind) -> Self {
        Self {
            cpus,
            steering,
            split: 0.1,
            stages: Stages {
                lookup: Duration::from_micros(1),
                dnat: Duration::from_micros(1),
                snat: Duration::from_micros(2),
                confirm: Duration::from_micros(1),
                jitter: 0.5,
            },
        }
    }

    /// The simulator settings for this node.
    pub fn sim_config(&self, seed: u64) -> SimConfig {
        let st = &self.stages;
        SimConfig {
            cpus: self.cpus,
            stages: StageTimes {
                lookup: st.lookup.as_nanos() as Nanos,
                dnat: st.dnat.as_nanos() as Nanos,
                snat: st.snat.as_nanos() as Nanos,
                confirm: st.confirm.as_nanos() as Nanos,
                jitter: st.jitter,
            },
            steering: match self.steering {
                SteeringKind::Sender => Steering::Sender,
                SteeringKind::FlowHash => Steering::FlowHash,
                SteeringKind::Random => Steering::Random,
                SteeringKind::Spread => Steering::Spread { split: self.split },
            },
            seed,
            ..SimConfig::default()
        }
    }

    /// Check the values; keys are prefixed with `node.`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |k: &str, m: &str| Err((format!("node.{k}"), m.to_string()));
        if self.cpus == 0 || self.cpus > 4096 {
            return bad("cpus", "must be 1 to 4096");
        }
        if !(0.0..=1.0).contains(&self.split) {
            return bad("split", "must be between 0 and 1");
        }
        if !(0.0..=1.0).contains(&self.stages.jitter) {
            return bad("stages.jitter", "must be between 0 and 1");
        }
        let s = &self.stages;
        for (k, d) in [("lookup", s.lookup), ("dnat", s.dnat), ("snat", s.snat), ("confirm", s.confirm)] {
            if d > Duration::from_secs(1) {
                return Err((format!("node.stages.{k}"), "must be at most 1s (a stage of one packet's path)".into()));
            }
        }
        Ok(())
    }
}
