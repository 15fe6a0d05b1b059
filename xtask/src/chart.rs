//! BENCHMARKS.svg: one panel per benchmark that left `NAME.chart.json` in
//! `target/bench/` (see `splitter_tests::report`), a horizontal bar per path
//! or scenario at its median with a min–max whisker. splitter's bars are blue,
//! the peers' and baselines' grey.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use plotters::{coord::ranged1d::SegmentValue, prelude::*};
use serde_json::Value;

const WIDTH: u32 = 960;
const BAR_HEIGHT: u32 = 34;
const PANEL_EXTRA: u32 = 90;
const SPLITTER: RGBColor = RGBColor(31, 119, 180);
const PEER: RGBColor = RGBColor(150, 150, 150);

struct Bar {
    label: String,
    /// Measures splitter (blue), not a peer or a baseline (grey).
    splitter: bool,
    median: f64,
    min: f64,
    max: f64,
}

struct Panel {
    title: String,
    unit: String,
    higher_is_better: bool,
    bars: Vec<Bar>,
}

fn panel(name: &str, doc: &Value) -> Result<Panel> {
    let text = |key: &str| doc[key].as_str().map(str::to_owned).with_context(|| format!("{name}: no \"{key}\""));
    let num = |bar: &Value, key: &str| bar[key].as_f64().with_context(|| format!("{name}: a bar without \"{key}\""));
    let bars = doc["bars"]
        .as_array()
        .with_context(|| format!("{name}: no \"bars\""))?
        .iter()
        .map(|b| {
            Ok(Bar {
                label: b["label"].as_str().unwrap_or_default().to_owned(),
                splitter: b["splitter"].as_bool().unwrap_or(false),
                median: num(b, "median")?,
                min: num(b, "min")?,
                max: num(b, "max")?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Panel {
        title: text("title")?,
        unit: text("unit")?,
        higher_is_better: doc["higher_is_better"].as_bool().unwrap_or(true),
        bars,
    })
}

/// Draws the panels of `benches` found in `dir` into `out`; returns how many.
pub fn draw(dir: &Path, benches: &[&str], out: &Path) -> Result<usize> {
    let mut panels = Vec::new();
    for name in benches {
        let path = dir.join(format!("{name}.chart.json"));
        let Ok(text) = std::fs::read_to_string(&path) else { continue };
        let doc: Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        panels.push(panel(name, &doc)?);
    }
    if panels.is_empty() {
        return Ok(0);
    }
    let heights: Vec<u32> = panels.iter().map(|p| PANEL_EXTRA + BAR_HEIGHT * p.bars.len() as u32).collect();
    let root = SVGBackend::new(out, (WIDTH, heights.iter().sum())).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("drawing {}: {e}", out.display()))?;
    let mut breaks = Vec::new();
    let mut y = 0;
    for h in &heights[..heights.len() - 1] {
        y += *h as i32;
        breaks.push(y);
    }
    for (area, p) in root.split_by_breakpoints([] as [i32; 0], breaks).iter().zip(&panels) {
        draw_panel(area, p).map_err(|e| anyhow!("drawing {}: {e}", out.display()))?;
    }
    root.present().map_err(|e| anyhow!("writing {}: {e}", out.display()))?;
    Ok(panels.len())
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    p: &Panel,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let n = p.bars.len();
    let top = p.bars.iter().map(|b| b.max.max(b.median)).fold(0.0, f64::max).max(1.0) * 1.2;
    let mut chart = ChartBuilder::on(area)
        .caption(&p.title, ("sans-serif", 18))
        .margin(8)
        .x_label_area_size(34)
        .y_label_area_size(300)
        // Segments 0..=n-1, the first bar on top.
        .build_cartesian_2d(0.0..top, (0..n.saturating_sub(1)).into_segmented())?;
    let row = |i: usize| n - 1 - i;
    let better = if p.higher_is_better { "higher is better" } else { "lower is better" };
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(n)
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) if *i < n => p.bars[row(*i)].label.clone(),
            _ => String::new(),
        })
        .x_label_formatter(&|x| format!("{x:.0}"))
        .x_desc(format!("{} ({better})", p.unit))
        .label_style(("sans-serif", 13))
        .draw()?;
    for (i, b) in p.bars.iter().enumerate() {
        let i = row(i);
        let color = if b.splitter { SPLITTER } else { PEER };
        let mut bar =
            Rectangle::new([(0.0, SegmentValue::Exact(i)), (b.median, SegmentValue::Exact(i + 1))], color.filled());
        bar.set_margin(6, 6, 0, 0);
        chart.draw_series([bar])?;
        chart.draw_series([ErrorBar::new_horizontal(
            SegmentValue::CenterOf(i),
            b.min,
            b.median,
            b.max,
            BLACK.stroke_width(1),
            8,
        )])?;
        chart.draw_series([Text::new(
            format!("{:.0}", b.median),
            (b.max.max(b.median) + top * 0.01, SegmentValue::CenterOf(i)),
            ("sans-serif", 12),
        )])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_panel_per_chart_file_with_every_label() {
        let dir = std::env::temp_dir().join(format!("splitter-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let doc = serde_json::json!({
            "title": "L4 over veth: new connections/s", "unit": "connections/s", "higher_is_better": true,
            "bars": [
                { "label": "splitter (XDP)", "splitter": true, "median": 13500.0, "min": 12900.0, "max": 13600.0 },
                { "label": "nftables numgen DNAT", "splitter": false, "median": 13200.0, "min": 13100.0, "max": 13400.0 },
            ]
        });
        std::fs::write(dir.join("l4.chart.json"), doc.to_string()).unwrap();
        let out = dir.join("chart.svg");
        assert_eq!(draw(&dir, &["xdp", "l4"], &out).unwrap(), 1, "only l4 left a chart");
        let svg = std::fs::read_to_string(&out).unwrap();
        for text in
            ["L4 over veth: new connections/s", "splitter (XDP)", "nftables numgen DNAT", "13500", "higher is better"]
        {
            assert!(svg.contains(text), "{text:?} missing from the SVG");
        }
        std::fs::write(dir.join("l7.chart.json"), "{\"title\": 1}").unwrap();
        assert!(draw(&dir, &["l7"], &out).is_err(), "a malformed chart file is an error");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
