//! Pieces every scenario report shares.

use std::collections::BTreeMap;

use racetrack_engine::stats::CpuCounters;
use serde::Serialize;

/// Counters by their `conntrack -S` names.
pub fn counters(c: &CpuCounters) -> BTreeMap<&'static str, u64> {
    c.iter().collect()
}

/// A closed-form expectation printed beside the simulated figure.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Prediction {
    /// What is predicted.
    pub name: &'static str,
    /// The formula, with the values it used.
    pub formula: String,
    /// The closed form's value.
    pub predicted: f64,
    /// What the simulation measured (absent where the quantity is not observable).
    pub simulated: Option<f64>,
}
