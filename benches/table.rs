//! Benchmarks of the conntrack table (being written).
fn main() {}
