//! racetrack-models: workloads, clients, topologies, mitigations and scenarios
//! built on the engine. Nothing here parses arguments or prints.

pub mod baseline;
pub mod clients;
pub mod diagnose;
pub mod dns;
pub mod explain;
pub mod inputs;
pub mod listener;
pub mod node;
pub mod params;
pub mod report;
pub mod scenario;
pub mod snat;
pub mod sweep;
pub mod syn_backlog;
pub mod tcp;
pub mod tw_recycle;
