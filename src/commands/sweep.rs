//! `racetrack sweep SCENARIO|FILE --over KEY=V1,V2,... [--kernel P1,P2] [--seeds K]
//! [--set K=V]... [--seed N] [--metric KEY]... [--plot FILE.svg] [--format F]`.
//!
//! The grid, the runs and the statistics are `racetrack_models::sweep`; this
//! module validates the arguments, times a calibration run for the estimate,
//! drives the progress bar and renders.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use racetrack_engine::KernelProfile;
use racetrack_models::scenario::Scenario;
use racetrack_models::sweep::{self, Axis, Interval, PointStats, Sample, Sweep, SweepKernel, Unit};
use serde_json::{json, Value};

use super::inputs;
use super::run::{default_format, load_scenario};
use crate::cli::{Format, SweepArgs as Args};
use crate::error::CliError;
use crate::output::{json_line, Table};
use crate::plot;

/// What to print.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Output {
    Table,
    Json,
    Csv,
    Prom,
}

fn input<E: ToString>(e: E) -> CliError {
    CliError::Input(e.to_string())
}

pub fn run<W: Write>(out: &mut W, a: Args) -> Result<ExitCode, CliError> {
    // Everything is checked before the first run.
    output_of(a.format)?;
    // Scenario defaults, then the node's files, then `--set`, then `--over`.
    let loaded = load_scenario(&a.scenario)?;
    let axes = a.over.iter().map(|o| Axis::parse(o)).collect::<Result<Vec<_>, _>>().map_err(input)?;
    let specs = if a.kernel.is_empty() { vec![loaded.default_kernel().to_string()] } else { a.kernel.clone() };
    let files = inputs::load(&a.inputs)?;
    let mut with_files = None;
    let mut kernels = Vec::new();
    for spec in specs {
        let spec = spec.trim().to_string();
        if kernels.iter().any(|k: &SweepKernel| k.label == spec) {
            return Err(CliError::Input(format!("--kernel: `{spec}` given twice")));
        }
        let mut profile = KernelProfile::resolve(&spec)?;
        // The files set the same scenario keys whatever the kernel; their
        // sysctls change each kernel's profile. Notes are printed once.
        let mut s = loaded.clone();
        if with_files.is_none() {
            inputs::apply(&mut s, &mut profile, &a.inputs)?;
            with_files = Some(s);
        } else if !files.is_empty() {
            racetrack_models::inputs::apply_inputs(&mut s, &mut profile, &files).map_err(input)?;
        }
        kernels.push(SweepKernel { profile, label: spec });
    }
    let base = with_files.unwrap_or(loaded).with_sets(&a.sets).map_err(input)?;
    if a.threads == Some(0) {
        return Err(CliError::Input("--threads: must be at least 1".into()));
    }
    let first_seed = a.seed.unwrap_or(base.seed());
    let grid = Sweep::new(&base, axes, kernels, first_seed, a.seeds).map_err(input)?;
    // Create the plot's file now, beside the one asked for, so a directory
    // that cannot be written fails before hours of runs. The chart goes
    // there and replaces the asked-for file only once it is complete: a
    // sweep that fails, or is stopped, leaves an existing plot as it was.
    let plot_file = match &a.plot {
        Some(path) => {
            let tmp = partial_name(path);
            let file = std::fs::File::create(&tmp)
                .map_err(|e| CliError::Input(format!("{}: cannot write: {e}", path.display())))?;
            Some(PlotFile { path, tmp, file })
        }
        None => None,
    };
    let tmp = plot_file.as_ref().map(|p| p.tmp.clone());
    {
        // Ctrl-C: say so, and leave no partial plot behind. (The finished
        // runs are not summed up: a point's interval needs all its seeds.)
        let tmp = tmp.clone();
        let _ = ctrlc::set_handler(move || {
            if let Some(t) = &tmp {
                let _ = std::fs::remove_file(t);
            }
            eprintln!("racetrack: sweep interrupted; nothing printed");
            std::process::exit(130);
        });
    }
    let result = run_grid(out, &a, &base, &grid, plot_file);
    if let (Err(_), Some(tmp)) = (&result, tmp) {
        let _ = std::fs::remove_file(tmp);
    }
    result
}

/// Where `--plot`'s chart is written before it replaces the file asked for.
struct PlotFile<'a> {
    path: &'a std::path::Path,
    tmp: std::path::PathBuf,
    file: std::fs::File,
}

/// `dir/.name.svg.partial` for `dir/name.svg`: in the same directory, so
/// the rename that completes the plot does not cross file systems.
fn partial_name(path: &std::path::Path) -> std::path::PathBuf {
    let name = path.file_name().map_or_else(|| "plot".into(), |n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(".{name}.partial"))
}

fn run_grid<W: Write>(
    out: &mut W,
    a: &Args,
    base: &Scenario,
    grid: &Sweep,
    plot_file: Option<PlotFile<'_>>,
) -> Result<ExitCode, CliError> {
    let output = output_of(a.format)?;

    // Calibrate on the first and the last run (the grid's two extremes), in
    // parallel as the sweep will run; both results are kept.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = a.threads.unwrap_or(cores).min(grid.runs()).max(1);
    let runs = grid.runs();
    let calibration: Vec<usize> = if runs > 1 && threads > 1 { vec![0, runs - 1] } else { vec![0] };
    let started = Instant::now();
    let timed: Vec<(usize, Sample, Duration)> = std::thread::scope(|s| {
        let handles: Vec<_> = calibration
            .iter()
            .map(|&i| {
                s.spawn(move || {
                    let t = Instant::now();
                    let sample = grid.run_one(i);
                    (i, sample, t.elapsed())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("a calibration run panicked")).collect()
    });
    let first = &timed[0].1;
    let metric_keys: Vec<String> = if a.metrics.is_empty() { sweep::default_metrics(base) } else { a.metrics.clone() };
    for key in &metric_keys {
        sweep::check_metric(key, first).map_err(|m| CliError::Input(format!("--metric: key `{key}`: {m}")))?;
    }
    let per_run = timed.iter().map(|t| t.2).sum::<Duration>() / timed.len() as u32;
    let left = runs - timed.len();
    let estimate = started.elapsed() + per_run * left.div_ceil(threads) as u32;
    eprintln!(
        "racetrack: sweep {}: {} × {} = {}, about {} on {}",
        base.name(),
        count(grid.points.len(), "point"),
        count(grid.seeds.len(), "seed"),
        count(runs, "run"),
        human(estimate),
        count(threads, "core"),
    );

    let bar = if std::io::stderr().is_terminal() {
        ProgressBar::with_draw_target(Some(runs as u64), ProgressDrawTarget::stderr())
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} runs  {elapsed} elapsed, {eta} left")
            .expect("a valid template"),
    );
    bar.set_position(timed.len() as u64);
    let done: BTreeMap<usize, Sample> = timed.into_iter().map(|(i, s, _)| (i, s)).collect();
    let samples = grid.run_all(threads, done, &|| bar.inc(1));
    bar.finish_and_clear();
    let stats = grid.aggregate(&samples, &metric_keys);

    let view = View { scenario: base.name(), grid, stats: &stats, keys: &metric_keys, sets: &a.sets };
    match output {
        Output::Table => view.table(out)?,
        Output::Json => view.json(out)?,
        Output::Csv => view.csv(out)?,
        Output::Prom => out.write_all(view.prom().as_bytes())?,
    }
    if let Some(PlotFile { path, tmp, mut file }) = plot_file {
        let svg = plot::svg(&view.chart()).map_err(|m| CliError::Io(std::io::Error::other(m)))?;
        let cannot = |e: std::io::Error| CliError::Input(format!("{}: cannot write: {e}", path.display()));
        file.write_all(svg.as_bytes()).and_then(|()| file.sync_all()).map_err(cannot)?;
        std::fs::rename(&tmp, path).map_err(cannot)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The output for `--format`; `conntrack` and `prom` mean nothing for a grid.
fn output_of(format: Option<Format>) -> Result<Output, CliError> {
    let format = format.unwrap_or_else(default_format);
    match format {
        Format::Table => Ok(Output::Table),
        Format::Json => Ok(Output::Json),
        Format::Csv => Ok(Output::Csv),
        Format::Prom => Ok(Output::Prom),
        // `conntrack -S` describes one node's counters, not a grid of runs.
        f => Err(f.unsupported("sweep", &[Format::Table, Format::Json, Format::Csv, Format::Prom])),
    }
}

/// "1 run", "2 runs".
fn count(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// "0.4 s", "40 s", "3 min 20 s".
fn human(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 0.1 {
        "0.1 s or less".to_string()
    } else if s < 10.0 {
        format!("{s:.1} s")
    } else if s < 120.0 {
        format!("{s:.0} s")
    } else {
        format!("{} min {} s", s as u64 / 60, s as u64 % 60)
    }
}

/// A finished sweep, ready to render.
struct View<'a> {
    scenario: &'static str,
    grid: &'a Sweep,
    stats: &'a [PointStats],
    keys: &'a [String],
    sets: &'a [String],
}

/// A number with a precision that suits its size.
fn number(v: f64, scale: f64) -> String {
    let a = v.abs().max(scale.abs());
    if v == 0.0 {
        "0".to_string()
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

/// `mean ± half-width` in the metric's display unit (shares in percent).
fn cell(key: &str, iv: &Interval) -> String {
    let k = if sweep::unit_of(key) == Unit::Share { 100.0 } else { 1.0 };
    let mean = iv.mean * k;
    match iv.half_width {
        Some(h) => format!("{} ± {}", number(mean, mean), number(h * k, mean)),
        None => number(mean, mean),
    }
}

fn heading(key: &str) -> String {
    match sweep::unit_of(key) {
        Unit::Share => format!("{key} (%)"),
        _ => key.to_string(),
    }
}

/// An over-value as JSON: numbers and booleans typed, as `--set` reads them.
fn typed(raw: &str) -> Value {
    match toml::from_str::<toml::Table>(&format!("v = {raw}")).ok().and_then(|mut t| t.remove("v")) {
        Some(toml::Value::Integer(i)) => json!(i),
        Some(toml::Value::Float(f)) => json!(f),
        Some(toml::Value::Boolean(b)) => json!(b),
        Some(toml::Value::String(s)) => json!(s),
        _ => json!(raw),
    }
}

impl View<'_> {
    fn over_values(&self, p: usize) -> impl Iterator<Item = (&str, &str)> {
        let point = &self.grid.points[p];
        self.grid.axes.iter().zip(&point.values).map(|(a, &i)| (a.key.as_str(), a.values[i].as_str()))
    }

    fn kernel(&self, p: usize) -> &str {
        &self.grid.kernels[self.grid.points[p].kernel].label
    }

    fn seeds_text(&self) -> String {
        let s = &self.grid.seeds;
        if s.len() == 1 {
            format!("seed {}", s[0])
        } else {
            format!("{} seeds ({}..{})", s.len(), s[0], s[s.len() - 1])
        }
    }

    fn table<W: Write>(&self, out: &mut W) -> Result<(), CliError> {
        let k = self.grid.seeds.len();
        let interval = if k < 2 {
            "one seed: no interval".to_string()
        } else {
            format!("mean ± half-width of the 95 % interval (Student t, {} df)", k - 1)
        };
        writeln!(
            out,
            "sweep {}   {} points   {}   {interval}",
            self.scenario,
            self.grid.points.len(),
            self.seeds_text()
        )?;
        if !self.sets.is_empty() {
            writeln!(out, "fixed    {}", self.sets.join("   "))?;
        }
        let header = self
            .grid
            .axes
            .iter()
            .map(|a| a.key.clone())
            .chain(["kernel".to_string()])
            .chain(self.keys.iter().map(|k| heading(k)));
        let mut t = Table::new(header);
        for (p, stats) in self.stats.iter().enumerate() {
            let row = self
                .over_values(p)
                .map(|(_, v)| v.to_string())
                .chain([self.kernel(p).to_string()])
                .chain(stats.metrics.iter().map(|(key, iv)| cell(key, iv)));
            t.row(row);
        }
        t.write(out)?;
        Ok(())
    }

    fn json<W: Write>(&self, out: &mut W) -> Result<(), CliError> {
        for (p, stats) in self.stats.iter().enumerate() {
            let over: serde_json::Map<String, Value> =
                self.over_values(p).map(|(k, v)| (k.to_string(), typed(v))).collect();
            let metrics: serde_json::Map<String, Value> = stats
                .metrics
                .iter()
                .map(|(key, iv)| {
                    let v = json!({
                        "mean": iv.mean,
                        "half_width": iv.half_width,
                        "low": iv.half_width.map(|_| iv.low()),
                        "high": iv.half_width.map(|_| iv.high()),
                        "std_dev": iv.std_dev,
                        "values": iv.values,
                    });
                    (key.clone(), v)
                })
                .collect();
            let data = json!({
                "index": p,
                "over": over,
                "kernel": self.kernel(p),
                "seeds": self.grid.seeds,
                "metrics": metrics,
            });
            json_line(out, "point", &data)?;
        }
        let axes: Vec<Value> = self
            .grid
            .axes
            .iter()
            .map(|a| json!({ "key": a.key, "values": a.values.iter().map(|v| typed(v)).collect::<Vec<_>>() }))
            .collect();
        let data = json!({
            "scenario": self.scenario,
            "over": axes,
            "kernels": self.grid.kernels.iter().map(|k| &k.label).collect::<Vec<_>>(),
            "seeds": self.grid.seeds,
            "sets": self.sets,
            "metrics": self.keys,
            "points": self.grid.points.len(),
            "runs": self.grid.runs(),
            "confidence": 0.95,
        });
        json_line(out, "sweep", &data)?;
        Ok(())
    }

    fn csv<W: Write>(&self, out: &mut W) -> Result<(), CliError> {
        let mut w = csv::Writer::from_writer(out);
        let csv_err = |e: csv::Error| match e.into_kind() {
            csv::ErrorKind::Io(e) => CliError::Io(e),
            other => CliError::Io(std::io::Error::other(format!("{other:?}"))),
        };
        let header: Vec<String> = self
            .grid
            .axes
            .iter()
            .map(|a| a.key.clone())
            .chain(["kernel".to_string()])
            .chain(self.keys.iter().flat_map(|k| [format!("{k}.mean"), format!("{k}.half_width")]))
            .collect();
        w.write_record(&header).map_err(csv_err)?;
        for (p, stats) in self.stats.iter().enumerate() {
            let row: Vec<String> =
                self.over_values(p)
                    .map(|(_, v)| v.to_string())
                    .chain([self.kernel(p).to_string()])
                    .chain(stats.metrics.iter().flat_map(|(_, iv)| {
                        [iv.mean.to_string(), iv.half_width.map_or(String::new(), |h| h.to_string())]
                    }))
                    .collect();
            w.write_record(&row).map_err(csv_err)?;
        }
        w.flush()?;
        Ok(())
    }

    /// Prometheus exposition: per point and metric, the mean and the
    /// interval's half-width as gauges, labelled with the point's values.
    fn prom(&self) -> String {
        use crate::render::prom::{family, label};
        use std::fmt::Write as _;
        let mut s = String::new();
        let families = [
            ("racetrack_sweep_mean", "Mean over the seeds of a sweep metric, per grid point."),
            ("racetrack_sweep_half_width", "Half-width of the 95 % interval of that mean (absent with one seed)."),
        ];
        for (i, (name, help)) in families.iter().enumerate() {
            family(&mut s, name, "gauge", help);
            for (p, stats) in self.stats.iter().enumerate() {
                let mut labels = format!("scenario=\"{}\",kernel=\"{}\"", self.scenario, label(self.kernel(p)));
                for (k, v) in self.over_values(p) {
                    let k: String = k.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
                    let _ = write!(labels, ",over_{k}=\"{}\"", label(v));
                }
                for (key, iv) in &stats.metrics {
                    let value = if i == 0 { Some(iv.mean) } else { iv.half_width };
                    if let Some(v) = value {
                        let _ = writeln!(s, "{name}{{{labels},metric=\"{}\"}} {v}", label(key));
                    }
                }
            }
        }
        s
    }

    /// The first metric against the first axis: one series per kernel and
    /// per value of the other axes.
    fn chart(&self) -> plot::Chart {
        let key = &self.keys[0];
        let axis = &self.grid.axes[0];
        let (x_label, xs) = plot::x_axis(&axis.key, &axis.values);
        let scale = if sweep::unit_of(key) == Unit::Share { 100.0 } else { 1.0 };
        // The title names the key; the axis says what it counts, briefly.
        let what = sweep::describe(key, self.scenario).map_or(key.clone(), str::to_string);
        let y_label = match sweep::unit_of(key) {
            Unit::Share => format!("{what}, %"),
            Unit::Millis => format!("{what}, ms"),
            Unit::Number => what.clone(),
        };
        let mut series: Vec<plot::Series> = Vec::new();
        let mut index: BTreeMap<(Vec<usize>, usize), usize> = BTreeMap::new();
        for (p, stats) in self.stats.iter().enumerate() {
            let point = &self.grid.points[p];
            let id = (point.values[1..].to_vec(), point.kernel);
            let s = *index.entry(id).or_insert_with(|| {
                // Name what tells the lines apart: the kernel (when there is
                // more than one, or nothing else), then the other swept keys.
                let mut parts = Vec::new();
                if self.grid.kernels.len() > 1 || self.grid.axes.len() == 1 {
                    parts.push(format!("kernel {}", self.kernel(p)));
                }
                parts.extend(self.over_values(p).skip(1).map(|(k, v)| format!("{k}={v}")));
                series.push(plot::Series { label: parts.join(", "), points: Vec::new() });
                series.len() - 1
            });
            let iv = &stats.metrics[0].1;
            series[s].points.push(plot::Dot {
                x: xs.x[point.values[0]],
                mean: iv.mean * scale,
                low: iv.half_width.map(|_| iv.low() * scale),
                high: iv.half_width.map(|_| iv.high() * scale),
            });
        }
        let mut fixed = self.sets.to_vec();
        if self.grid.kernels.len() == 1 {
            fixed.push(format!("kernel {}", self.grid.kernels[0].label));
        }
        let interval = if self.grid.seeds.len() > 1 { ", error bars: 95 % interval" } else { "" };
        plot::Chart {
            title: match sweep::describe(key, self.scenario) {
                Some(d) => format!("{}: {d} ({key}) by {}", self.scenario, axis.key),
                None => format!("{}: {key} by {}", self.scenario, axis.key),
            },
            subtitle: format!(
                "{}{}{interval}",
                if fixed.is_empty() { String::new() } else { format!("{}; ", fixed.join(", ")) },
                self.seeds_text()
            ),
            x_label,
            y_label,
            x: xs,
            series,
        }
    }
}
