//! racetrack-models: workloads, clients, topologies, mitigations and scenarios
//! built on the engine. Nothing here parses arguments or prints.

pub mod baseline;
pub mod dns;
pub mod params;
pub mod scenario;
