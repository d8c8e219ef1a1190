//! What every experiment writes into `OUT/<experiment>/`: `results.json` (the numbers the report's
//! claims are computed from), `table.md` (the paper's table in markdown) and SVG plots, each
//! written atomically so an interrupted reproduction never leaves half a file.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use model::checkpoint::write_atomic;
use model::metrics::{chart_svg, Chart, Curve};
use serde_json::Value;

/// Colours of successive curves in a plot.
pub const COLORS: [&str; 6] = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"];

/// An experiment's output directory, created on first use.
pub struct ExperimentDir {
    pub dir: PathBuf,
}

impl ExperimentDir {
    pub fn new(out: &Path, experiment: &str) -> Result<ExperimentDir> {
        let dir = out.join(experiment);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(ExperimentDir { dir })
    }

    pub fn write_results(&self, results: &Value) -> Result<()> {
        self.write("results.json", &serde_json::to_string_pretty(results)?)
    }

    pub fn write_table(&self, markdown: &str) -> Result<()> {
        self.write("table.md", markdown)
    }

    /// A line chart with a marker on every point, as `name`.
    pub fn write_plot(&self, name: &str, chart: &Chart, curves: &[Curve]) -> Result<()> {
        self.write(name, &chart_svg(chart, curves))
    }

    fn write(&self, name: &str, text: &str) -> Result<()> {
        let path = self.dir.join(name);
        write_atomic(&path, text.as_bytes()).with_context(|| format!("writing {}", path.display()))
    }
}

/// A markdown table of `headers` and `rows`.
pub fn markdown_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = format!("| {} |\n|{}\n", headers.join(" | "), " --- |".repeat(headers.len()));
    for r in rows {
        s.push_str(&format!("| {} |\n", r.join(" | ")));
    }
    s
}

/// A parameter count for tables: 695.4K, 1.07B.
pub fn params(n: f64) -> String {
    super::super::info::millions(n)
}

/// A percentage with one decimal.
pub fn pct(fraction: f64) -> String {
    format!("{:.1}%", 100.0 * fraction)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_tables_have_a_rule_and_one_line_per_row() {
        let t = markdown_table(&["a", "b"], &[vec!["1".into(), "2".into()]]);
        assert_eq!(t, "| a | b |\n| --- | --- |\n| 1 | 2 |\n");
    }
}
