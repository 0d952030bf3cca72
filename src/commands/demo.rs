//! The demo `racetrack` prints with no arguments: the DNS race across kernel
//! presets and mitigations, in one table.

use std::io::Write;
use std::process::ExitCode;

use racetrack_engine::profile::preset;
use racetrack_models::dns::{self, DnsReport, DnsScenario};

use crate::error::CliError;
use crate::output::Table;

const KERNELS: [&str; 4] = ["4.14", "4.19", "5.6", "6.6"];

struct Mitigation {
    name: &'static str,
    apply: fn(&mut DnsScenario),
}

const MITIGATIONS: [Mitigation; 4] = [
    Mitigation { name: "none", apply: |_| {} },
    Mitigation { name: "single-request-reopen", apply: |s| s.resolv.single_request_reopen = true },
    Mitigation { name: "node-local cache", apply: |s| s.mitigations.node_local_cache = true },
    Mitigation { name: "3 endpoints", apply: |s| s.service.endpoints = 3 },
];

pub fn run<W: Write>(out: &mut W) -> Result<ExitCode, CliError> {
    let base = DnsScenario::default();
    let cells: Vec<(usize, usize)> =
        (0..KERNELS.len()).flat_map(|k| (0..MITIGATIONS.len()).map(move |m| (k, m))).collect();
    // Each cell is an independent deterministic run: spread them over the cores.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(cells.len());
    let mut reports: Vec<Option<DnsReport>> = vec![None; cells.len()];
    std::thread::scope(|scope| {
        let chunks: Vec<_> = reports.chunks_mut(cells.len().div_ceil(threads)).collect();
        for (ci, chunk) in chunks.into_iter().enumerate() {
            let cells = &cells;
            let base = &base;
            let start = ci * cells.len().div_ceil(threads);
            scope.spawn(move || {
                for (j, slot) in chunk.iter_mut().enumerate() {
                    let (k, m) = cells[start + j];
                    let mut s = base.clone();
                    (MITIGATIONS[m].apply)(&mut s);
                    *slot = Some(dns::run(&s, preset(KERNELS[k]).expect("demo presets exist")));
                }
            });
        }
    });
    let c = &base.clients;
    writeln!(
        out,
        "racetrack demo: {} DNS lookups (glibc, A+AAAA in parallel) from {} pods through a ClusterIP,",
        c.lookups, c.pods
    )?;
    writeln!(
        out,
        "{} CPUs, {:.0}% of query pairs split across CPUs, seed {}. Each cell: lookups delayed by a retry / insert_failed.\n",
        base.node.cpus,
        base.node.split * 100.0,
        base.seed
    )?;
    let mut t = Table::new(std::iter::once("kernel").chain(MITIGATIONS.iter().map(|m| m.name)));
    for (k, kernel) in KERNELS.iter().enumerate() {
        let mut row = vec![kernel.to_string()];
        for m in 0..MITIGATIONS.len() {
            let r = reports[k * MITIGATIONS.len() + m].as_ref().expect("every cell ran");
            let delayed = 100.0 * r.clients.retried as f64 / r.clients.requests.max(1) as f64;
            row.push(format!("{delayed:5.1}% / {}", r.conntrack["insert_failed"]));
        }
        t.row(row);
    }
    t.write(out)?;
    writeln!(
        out,
        "\nRead: 4.14 drops the second query of a racing pair, so the lookup waits glibc's 5 s timeout; 4.19 merges\n\
         identical entries (insert_failed still counts them) but not pairs sent to different endpoints; 5.6+ never\n\
         drops, and from 5.10 resolved clashes move clash_resolve instead of insert_failed.\n\
         Try: racetrack run dns --kernel 4.14 --set clients.resolver=musl   |   racetrack scenarios --show dns"
    )?;
    Ok(ExitCode::SUCCESS)
}
