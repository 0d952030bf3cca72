//! `--format csv`: a header line and one data row, the columns being the leaves
//! of the JSON summary, named by their key path (`conntrack.insert_failed`,
//! `per_cpu.0.drop`, `clients.latency_histogram.buckets.0.005`) in JSON order.

use std::io::{self, Write};

use serde::Serialize;
use serde_json::Value;

/// Write `summary` (what `--format json` prints as `data`) as CSV (RFC 4180 quoting).
pub fn write<W: Write, T: Serialize>(out: &mut W, summary: &T) -> io::Result<()> {
    let value = serde_json::to_value(summary).map_err(io::Error::other)?;
    let mut cells = Vec::new();
    flatten(&value, String::new(), &mut cells);
    let mut w = csv::Writer::from_writer(out);
    w.write_record(cells.iter().map(|c| c.0.as_str()))?;
    w.write_record(cells.iter().map(|c| c.1.as_str()))?;
    w.flush()
}

/// Leaves of `v` as (key path, text); null is an empty cell, an empty map or list has no column.
pub fn flatten(v: &Value, path: String, cells: &mut Vec<(String, String)>) {
    let join = |k: &str| if path.is_empty() { k.to_string() } else { format!("{path}.{k}") };
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                flatten(v, join(k), cells);
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                flatten(v, join(&i.to_string()), cells);
            }
        }
        Value::Null => cells.push((path, String::new())),
        Value::String(s) => cells.push((path, s.clone())),
        Value::Bool(b) => cells.push((path, b.to_string())),
        Value::Number(n) => cells.push((path, n.to_string())),
    }
}
