//! The SVG line chart of `sweep --plot`: plotters with only its SVG backend,
//! so text is SVG `<text>` (the viewer's fonts render it) and nothing needs
//! system fonts to build or run.

use plotters::prelude::*;

/// Where the values of the swept key go on the x axis.
pub struct XAxis {
    /// Position of each value, in the order of the `--over` list.
    pub x: Vec<f64>,
    /// For values that are not numbers: their labels, at x = 0, 1, 2, …
    pub categories: Option<Vec<String>>,
}

/// The axis label and positions for an `--over` key and its values: numbers
/// as they are (rates "per second"), durations in one unit, anything else as
/// evenly spaced categories.
pub fn x_axis(key: &str, values: &[String]) -> (String, XAxis) {
    let last = key.rsplit('.').next().unwrap_or(key);
    if let Some(xs) = values.iter().map(|v| v.parse::<f64>().ok().filter(|x| x.is_finite())).collect() {
        let label = if last.ends_with("rate") { format!("{key} (per second)") } else { key.to_string() };
        return (label, XAxis { x: xs, categories: None });
    }
    let durations: Option<Vec<f64>> =
        values.iter().map(|v| humantime::parse_duration(v.trim_matches('"')).ok().map(|d| d.as_secs_f64())).collect();
    if let Some(secs) = durations {
        let top = secs.iter().cloned().fold(0.0, f64::max);
        let (unit, k) = if top >= 1.0 {
            ("s", 1.0)
        } else if top >= 1e-3 {
            ("ms", 1e3)
        } else {
            ("µs", 1e6)
        };
        return (format!("{key} ({unit})"), XAxis { x: secs.iter().map(|s| s * k).collect(), categories: None });
    }
    let x = (0..values.len()).map(|i| i as f64).collect();
    (key.to_string(), XAxis { x, categories: Some(values.to_vec()) })
}

/// One point of a series: the mean and, with two or more seeds, its interval.
pub struct Dot {
    /// Position on the x axis.
    pub x: f64,
    /// Mean over the seeds.
    pub mean: f64,
    /// Lower end of the 95 % interval.
    pub low: Option<f64>,
    /// Upper end of the 95 % interval.
    pub high: Option<f64>,
}

/// One line: a kernel (and a value of the other swept keys).
pub struct Series {
    /// Legend text.
    pub label: String,
    /// Points in x order.
    pub points: Vec<Dot>,
}

/// Everything the chart shows.
pub struct Chart {
    /// First line of the title.
    pub title: String,
    /// Second line: fixed parameters, seeds.
    pub subtitle: String,
    /// x axis description.
    pub x_label: String,
    /// y axis description.
    pub y_label: String,
    /// x positions (and category labels).
    pub x: XAxis,
    /// The lines.
    pub series: Vec<Series>,
}

/// Tableau 10: distinguishable, and readable by most colour-blind readers.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Width of the plotting area (axes included), and the least height.
const PLOT_WIDTH: u32 = 720;
const MIN_HEIGHT: u32 = 560;
const TITLE_HEIGHT: u32 = 72;
const LEGEND_ROW: u32 = 24;

/// Rough width of `text` in pixels at a rendered font size: SVG text is laid
/// out by the viewer, so this only has to be generous enough not to clip.
fn text_width(text: &str, font_px: f64) -> u32 {
    (text.chars().count() as f64 * font_px * 0.6).ceil() as u32
}

/// A tick label: no trailing zeros.
fn tick(v: f64) -> String {
    let s = if v.abs() >= 100.0 || v == v.round() { format!("{v:.0}") } else { format!("{v:.3}") };
    let s = if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s };
    if s == "-0" {
        "0".into()
    } else {
        s
    }
}

/// Render the chart as an SVG document.
pub fn svg(c: &Chart) -> Result<String, String> {
    let mut buf = String::new();
    draw(c, &mut buf).map_err(|e| format!("cannot draw the plot: {e}"))?;
    Ok(buf)
}

fn draw(c: &Chart, buf: &mut String) -> Result<(), Box<dyn std::error::Error>> {
    // Size the canvas to its text: a legend column as wide as its longest
    // label, a title that fits, and a row per series.
    let longest = c.series.iter().map(|s| text_width(&s.label, 11.3)).max().unwrap_or(0);
    let legend_width = (longest + 56).clamp(160, 560);
    let width =
        (PLOT_WIDTH + legend_width).max(text_width(&c.title, 17.7) + 48).max(text_width(&c.subtitle, 11.3) + 48);
    let height = MIN_HEIGHT.max(TITLE_HEIGHT + LEGEND_ROW * (c.series.len() as u32 + 1));
    let root = SVGBackend::with_string(buf, (width, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, body) = root.split_vertically(TITLE_HEIGHT);
    top.draw(&Text::new(c.title.clone(), (24, 14), ("sans-serif", 22).into_font().color(&BLACK)))?;
    top.draw(&Text::new(c.subtitle.clone(), (24, 46), ("sans-serif", 14).into_font().color(&RGBColor(70, 70, 70))))?;
    let (plot_area, legend) = body.split_horizontally(width - legend_width);

    let (mut x0, mut x1) = c.x.x.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
    let pad = if c.x.categories.is_some() || x1 == x0 { 0.5 } else { (x1 - x0) * 0.04 };
    x0 -= pad;
    x1 += pad;
    // Counts and shares cannot be negative: cut their intervals at 0.
    let floor = if c.series.iter().flat_map(|s| &s.points).all(|d| d.mean >= 0.0) { 0.0 } else { f64::NEG_INFINITY };
    let low = |d: &Dot| d.low.map(|l| l.max(floor));
    let all = c.series.iter().flat_map(|s| &s.points);
    let (lo, hi) = all.fold((0.0f64, f64::NEG_INFINITY), |(a, b), d| {
        (a.min(low(d).unwrap_or(d.mean)), b.max(d.high.unwrap_or(d.mean)))
    });
    let hi = if hi.is_finite() && hi > lo { hi + (hi - lo) * 0.08 } else { lo + 1.0 };

    let mut chart = ChartBuilder::on(&plot_area)
        .margin_left(16)
        .margin_right(16)
        .margin_bottom(12)
        .margin_top(8)
        .x_label_area_size(56)
        .y_label_area_size(84)
        .build_cartesian_2d(x0..x1, lo..hi)?;
    let categories = c.x.categories.clone();
    let x_fmt = move |v: &f64| match &categories {
        Some(names) => {
            let i = v.round();
            if (v - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < names.len() {
                names[i as usize].clone()
            } else {
                String::new()
            }
        }
        None => tick(*v),
    };
    let x_ticks = match &c.x.categories {
        Some(names) => names.len() * 2 + 1,
        None => 10,
    };
    chart
        .configure_mesh()
        .x_desc(c.x_label.as_str())
        .y_desc(c.y_label.as_str())
        .x_labels(x_ticks)
        .y_labels(8)
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&|v| tick(*v))
        .axis_desc_style(("sans-serif", 16))
        .label_style(("sans-serif", 13))
        .bold_line_style(RGBColor(225, 225, 225))
        .light_line_style(RGBColor(245, 245, 245))
        .draw()?;

    let n = c.series.len();
    for (i, s) in c.series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        // Nudge the lines apart a little so equal values do not hide each other.
        let dx = (x1 - x0) * 0.006 * (i as f64 - (n as f64 - 1.0) / 2.0);
        chart.draw_series(LineSeries::new(s.points.iter().map(|d| (d.x + dx, d.mean)), color.stroke_width(2)))?;
        chart.draw_series(s.points.iter().filter_map(|d| {
            Some(ErrorBar::new_vertical(d.x + dx, low(d)?, d.mean, d.high?, color.stroke_width(1), 10))
        }))?;
        chart.draw_series(s.points.iter().map(|d| Circle::new((d.x + dx, d.mean), 3, color.filled())))?;
    }

    // The legend sits beside the plot, so it never covers a line.
    for (i, s) in c.series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let y = 24 + (LEGEND_ROW * i as u32) as i32;
        legend.draw(&Rectangle::new([(8, y - 6), (32, y + 6)], color.filled()))?;
        legend.draw(&Text::new(s.label.clone(), (40, y - 8), ("sans-serif", 14).into_font().color(&BLACK)))?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x_axes_know_numbers_durations_and_categories() {
        let (label, x) = x_axis("clients.rate", &["100".into(), "250.5".into()]);
        assert_eq!((label.as_str(), x.x.as_slice()), ("clients.rate (per second)", [100.0, 250.5].as_slice()));
        let (label, x) = x_axis("service.latency", &["500us".into(), "2ms".into()]);
        assert_eq!((label.as_str(), x.x.as_slice()), ("service.latency (ms)", [0.5, 2.0].as_slice()));
        let (label, x) = x_axis("clients.resolver", &["glibc".into(), "musl".into()]);
        assert_eq!(label, "clients.resolver");
        assert_eq!(x.x, [0.0, 1.0]);
        assert_eq!(x.categories.unwrap(), ["glibc", "musl"]);
    }

    #[test]
    fn ticks_drop_trailing_zeros() {
        assert_eq!(tick(200.0), "200");
        assert_eq!(tick(0.25), "0.25");
        assert_eq!(tick(-0.0), "0");
        assert_eq!(tick(12.5), "12.5");
    }
}
