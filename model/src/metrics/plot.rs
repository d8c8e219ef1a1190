//! Line charts as self-contained SVG (the loss curve against the step, and the reproduction's plots),
//! on linear axes with "nice" tick values. Hand-written because a plotting crate would dwarf the rest of the
//! dependencies for one chart; it only needs polylines, ticks and a legend, and renders in any
//! browser.

use std::fmt::Write as _;
use std::path::Path;

use super::{read_metrics, series, TRAIN_LOSS, VAL_LOSS};
use crate::checkpoint::write_atomic;
use crate::Result;

/// One named series of (x, y) points.
pub struct Curve {
    pub label: String,
    pub color: &'static str,
    pub points: Vec<(f64, f64)>,
}

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 420.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 36.0;
const BOTTOM: f64 = 48.0;

/// Tick values covering `[lo, hi]` with a step of 1, 2 or 5 times a power of ten, about `target` of them.
fn ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    let span = (hi - lo).max(f64::EPSILON);
    let raw = span / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|i| i as f64 * step).collect()
}

fn label(v: f64) -> String {
    if v.abs() >= 1000.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// The SVG text of a loss curve against the step (see `chart_svg`).
pub fn loss_plot_svg(title: &str, curves: &[Curve]) -> String {
    chart_svg(&Chart { title, x_label: "step", y_label: "loss (nats/token)", markers: false }, curves)
}

/// A chart's labels, and whether each point gets a marker (for sparse series such as sweeps).
pub struct Chart<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub markers: bool,
}

/// The SVG text of `curves` on `chart`'s axes (empty curves are skipped; with no points at all, an
/// empty chart).
pub fn chart_svg(chart: &Chart, curves: &[Curve]) -> String {
    let title = chart.title;
    let all: Vec<(f64, f64)> = curves.iter().flat_map(|c| c.points.iter().copied()).collect();
    let (mut x0, mut x1, mut y0, mut y1) = (0.0f64, 1.0f64, 0.0f64, 1.0f64);
    if !all.is_empty() {
        x0 = all.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
        x1 = all.iter().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
        y0 = all.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
        y1 = all.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
        if x1 <= x0 {
            x1 = x0 + 1.0;
        }
        let pad = ((y1 - y0) * 0.05).max(1e-3);
        y0 -= pad;
        y1 += pad;
    }
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let sx = |x: f64| LEFT + (x - x0) / (x1 - x0) * plot_w;
    let sy = |y: f64| TOP + (1.0 - (y - y0) / (y1 - y0)) * plot_h;

    let mut svg = String::new();
    let _ = writeln!(svg, r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#);
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(svg, r#"<text x="{}" y="22" text-anchor="middle" font-size="14">{}</text>"#, WIDTH / 2.0, escape(title));
    for t in ticks(x0, x1, 8) {
        let x = sx(t);
        let _ = writeln!(svg, r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#eee"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##, TOP + plot_h, TOP + plot_h + 16.0, label(t));
    }
    for t in ticks(y0, y1, 6) {
        let y = sy(t);
        let _ = writeln!(svg, r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##, LEFT + plot_w, LEFT - 6.0, y + 4.0, label(t));
    }
    let _ = writeln!(svg, r#"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="black"/>"#);
    let _ = writeln!(svg, r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#, LEFT + plot_w / 2.0, HEIGHT - 10.0, escape(chart.x_label));
    let _ = writeln!(svg, r#"<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">{}</text>"#, TOP + plot_h / 2.0, TOP + plot_h / 2.0, escape(chart.y_label));
    for (i, c) in curves.iter().filter(|c| !c.points.is_empty()).enumerate() {
        let pts: Vec<String> = c.points.iter().map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y))).collect();
        let _ = writeln!(svg, r#"<polyline fill="none" stroke="{}" stroke-width="1.5" points="{}"/>"#, c.color, pts.join(" "));
        if chart.markers {
            for &(x, y) in &c.points {
                let _ = writeln!(svg, r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"/>"#, sx(x), sy(y), c.color);
            }
        }
        let ly = TOP + 16.0 + 16.0 * i as f64;
        let lx = LEFT + plot_w - 210.0;
        let _ = writeln!(svg, r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{}" stroke-width="2"/><text x="{}" y="{}">{}</text>"#, lx + 20.0, c.color, lx + 26.0, ly + 4.0, escape(&c.label));
    }
    svg.push_str("</svg>\n");
    svg
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Reads the metrics log at `metrics` and writes its train and validation loss curves to `svg`.
pub fn write_loss_plot(metrics: &Path, svg: &Path, title: &str) -> Result<()> {
    let records = read_metrics(metrics)?;
    let curves = [
        Curve { label: "train".into(), color: "#1f77b4", points: series(&records, TRAIN_LOSS) },
        Curve { label: "validation".into(), color: "#d62728", points: series(&records, VAL_LOSS) },
    ];
    write_atomic(svg, loss_plot_svg(title, &curves).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(ticks(0.0, 10.0, 5), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        let t = ticks(1.3, 2.6, 6);
        assert_eq!(t, vec![1.5, 2.0, 2.5]);
        assert!(t.first().is_some_and(|&v| v >= 1.3) && t.last().is_some_and(|&v| v <= 2.6 + 1e-9));
    }

    #[test]
    fn svg_has_one_polyline_per_nonempty_curve() {
        let curves = [
            Curve { label: "a".into(), color: "red", points: vec![(0.0, 3.0), (10.0, 2.0)] },
            Curve { label: "b<".into(), color: "blue", points: vec![] },
        ];
        let svg = loss_plot_svg("t & u", &curves);
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert!(svg.contains("t &amp; u") && svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches("<circle").count(), 0);
        let chart = Chart { title: "sweep", x_label: "active params", y_label: "loss", markers: true };
        let svg = chart_svg(&chart, &curves);
        assert_eq!(svg.matches("<circle").count(), 2, "one marker per point");
        assert!(svg.contains(">active params</text>"));
    }
}
