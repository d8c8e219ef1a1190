//! The metrics log: append and read back, a torn last line, resuming from a checkpoint, rejected
//! records, and the SVG loss plot.

mod common;

use std::fs;

use model::metrics::{read_metrics, series, write_loss_plot, MetricsLog, Record};
use serde_json::{json, Value};

use common::Scratch;

fn record(v: Value) -> Record {
    v.as_object().unwrap().clone()
}

fn steps(records: &[Record]) -> Vec<Option<u64>> {
    records.iter().map(|r| r.get("step").and_then(Value::as_u64)).collect()
}

#[test]
fn appended_records_read_back_in_order() {
    let dir = Scratch::new("metrics-roundtrip");
    let path = dir.path("metrics.jsonl");
    assert!(read_metrics(&path).unwrap().is_empty(), "an absent log has no records");
    let written = vec![
        json!({ "step": 1, "train_loss": 5.5, "lr": 1e-4 }),
        json!({ "step": 2, "train_loss": 5.25, "note": "line\nbreak \"quoted\"" }),
        json!({ "step": 2, "val_loss": 5.0, "nested": { "a": [1, 2] } }),
    ];
    {
        let mut log = MetricsLog::open(&path).unwrap();
        assert_eq!(log.path(), path);
        for r in &written[..2] {
            log.append(r).unwrap();
        }
    }
    // Reopening appends after what is there.
    MetricsLog::open(&path).unwrap().append(&written[2]).unwrap();
    let read = read_metrics(&path).unwrap();
    assert_eq!(read, written.iter().map(|v| record(v.clone())).collect::<Vec<_>>());
    let text = fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), 3, "one line per record: {text}");
    assert!(text.ends_with('\n'));
}

#[test]
fn a_torn_last_line_is_cut_on_open() {
    let dir = Scratch::new("metrics-torn");
    let path = dir.path("metrics.jsonl");
    let complete = "{\"step\":1,\"train_loss\":4.0}\n{\"step\":2,\"train_loss\":3.5}\n";
    fs::write(&path, format!("{complete}{{\"step\":3,\"train_lo")).unwrap();
    // Readers ignore it.
    assert_eq!(steps(&read_metrics(&path).unwrap()), [Some(1), Some(2)]);
    // Opening for appending cuts it, so the next record is a line of its own.
    let mut log = MetricsLog::open(&path).unwrap();
    assert_eq!(fs::read_to_string(&path).unwrap(), complete);
    log.append(&json!({ "step": 3, "train_loss": 3.25 })).unwrap();
    assert_eq!(steps(&read_metrics(&path).unwrap()), [Some(1), Some(2), Some(3)]);

    // A log holding only a torn line becomes empty.
    let only = dir.path("only.jsonl");
    fs::write(&only, "{\"step\":").unwrap();
    MetricsLog::open(&only).unwrap();
    assert_eq!(fs::read(&only).unwrap(), b"");
}

#[test]
fn resuming_drops_records_after_the_checkpoint() {
    let dir = Scratch::new("metrics-resume");
    let path = dir.path("metrics.jsonl");
    let mut log = MetricsLog::open(&path).unwrap();
    log.append(&json!({ "event": "start" })).unwrap();
    for step in [10, 20, 30, 40] {
        log.append(&json!({ "step": step, "train_loss": 1.0 / step as f64 })).unwrap();
    }
    drop(log);
    fs::write(&path, format!("{}{{\"step\":50", fs::read_to_string(&path).unwrap())).unwrap();

    let mut log = MetricsLog::open_resumed(&path, 20).unwrap();
    // Records without a step (run events) are kept; steps after 20 and the torn line are gone.
    assert_eq!(steps(&read_metrics(&path).unwrap()), [None, Some(10), Some(20)]);
    log.append(&json!({ "step": 30, "train_loss": 0.5 })).unwrap();
    let records = read_metrics(&path).unwrap();
    assert_eq!(steps(&records), [None, Some(10), Some(20), Some(30)]);
    assert_eq!(records[3]["train_loss"], 0.5);
    assert!(fs::read_dir(&dir.0).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().ends_with(".tmp")));

    // Resuming at step 0 keeps only step-less records; a missing log is created empty.
    MetricsLog::open_resumed(&path, 0).unwrap();
    assert_eq!(steps(&read_metrics(&path).unwrap()), [None]);
    let fresh = dir.path("fresh.jsonl");
    MetricsLog::open_resumed(&fresh, 5).unwrap();
    assert!(fresh.exists() && read_metrics(&fresh).unwrap().is_empty());
}

#[test]
fn records_that_are_not_objects_are_rejected() {
    let dir = Scratch::new("metrics-objects");
    let path = dir.path("metrics.jsonl");
    let mut log = MetricsLog::open(&path).unwrap();
    log.append(&json!({ "step": 1 })).unwrap();
    for bad in [json!([1, 2]), json!(3.5), json!("step"), Value::Null] {
        let msg = log.append(&bad).unwrap_err().to_string();
        assert!(msg.contains("JSON object") && msg.contains(&path.display().to_string()), "{msg}");
    }
    assert_eq!(read_metrics(&path).unwrap().len(), 1, "a rejected record was written");

    // A complete line that is not an object (a damaged log) is passed over and reported, so it
    // blocks neither the plot nor a resume.
    fs::write(&path, "{\"step\":1}\n[1,2]\n{\"step\":3}\n").unwrap();
    assert_eq!(steps(&read_metrics(&path).unwrap()), [Some(1), Some(3)]);
    assert_eq!(MetricsLog::open(&path).unwrap().skipped_lines(), [2]);
}

#[test]
fn series_takes_finite_points_with_a_step() {
    let records: Vec<Record> = [
        json!({ "step": 1, "train_loss": 3.0 }),
        json!({ "train_loss": 2.0 }),
        json!({ "step": 2, "val_loss": 2.5 }),
        json!({ "step": 3, "train_loss": null }),
        json!({ "step": 4, "train_loss": "2.0" }),
        json!({ "step": 5, "train_loss": 1.5 }),
    ]
    .into_iter()
    .map(record)
    .collect();
    assert_eq!(series(&records, "train_loss"), [(1.0, 3.0), (5.0, 1.5)]);
    assert_eq!(series(&records, "val_loss"), [(2.0, 2.5)]);
}

/// The `points` attribute of every polyline in `svg`, parsed.
fn polylines(svg: &str) -> Vec<Vec<(f64, f64)>> {
    let point = |xy: &str| {
        let (x, y) = xy.split_once(',').unwrap();
        (x.parse().unwrap(), y.parse().unwrap())
    };
    svg.split("<polyline")
        .skip(1)
        .map(|p| p.split("points=\"").nth(1).unwrap().split('"').next().unwrap().split(' ').map(point).collect())
        .collect()
}

#[test]
fn the_loss_plot_has_a_polyline_per_nonempty_curve() {
    let dir = Scratch::new("metrics-plot");
    let path = dir.path("metrics.jsonl");
    let svg_path = dir.path("loss.svg");
    let mut log = MetricsLog::open(&path).unwrap();
    for step in 1..=10u64 {
        log.append(&json!({ "step": step, "train_loss": 5.0 - step as f64 * 0.3 })).unwrap();
    }

    // Train loss only: one curve.
    write_loss_plot(&path, &svg_path, "run <a & b>").unwrap();
    let svg = fs::read_to_string(&svg_path).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("run &lt;a &amp; b&gt;"));
    let lines = polylines(&svg);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0].len(), 10);
    // Steps go right; a falling loss goes down the chart (SVG y grows downwards); all inside the canvas.
    assert!(lines[0].windows(2).all(|w| w[1].0 > w[0].0 && w[1].1 > w[0].1), "{:?}", lines[0]);
    assert!(lines[0].iter().all(|&(x, y)| (0.0..=720.0).contains(&x) && (0.0..=420.0).contains(&y)));

    // With validation loss: two curves, the validation one with its own points.
    log.append(&json!({ "step": 5, "val_loss": 3.9 })).unwrap();
    log.append(&json!({ "step": 10, "val_loss": 2.4 })).unwrap();
    write_loss_plot(&path, &svg_path, "run").unwrap();
    let lines = polylines(&fs::read_to_string(&svg_path).unwrap());
    assert_eq!(lines.iter().map(Vec::len).collect::<Vec<_>>(), [10, 2]);

    // No records at all: a valid, empty chart.
    let empty = dir.path("empty.jsonl");
    write_loss_plot(&empty, &svg_path, "nothing yet").unwrap();
    let svg = fs::read_to_string(&svg_path).unwrap();
    assert!(polylines(&svg).is_empty() && svg.contains("</svg>"));
    assert!(fs::read_dir(&dir.0).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().ends_with(".tmp")));
}
