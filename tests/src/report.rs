//! What a benchmark leaves in `target/bench/` for `cargo xtask bench`: its
//! markdown section (`NAME.md`), its lines of the headline list
//! (`NAME.headline.md`) and the numbers to chart (`NAME.chart.json`), one bar
//! per path or scenario.

use std::path::PathBuf;

/// `target/bench/`, created.
pub fn dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&dir).expect("create target/bench");
    dir
}

/// One bar: a median and the min–max over the rounds; `splitter` when it
/// measures splitter (drawn in its colour), not a peer or a baseline.
pub struct Bar {
    pub label: String,
    pub splitter: bool,
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Bar {
    /// A bar from `(median, min, max)`.
    pub fn new(label: &str, splitter: bool, (median, min, max): (f64, f64, f64)) -> Bar {
        Bar { label: label.to_owned(), splitter, median, min, max }
    }
}

/// Writes `target/bench/FILE`.
fn write(file: &str, contents: &str) {
    let path = dir().join(file);
    std::fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Writes `target/bench/NAME.md` and prints it.
pub fn write_md(name: &str, md: &str) {
    print!("{md}");
    write(&format!("{name}.md"), md);
}

/// Writes one chart panel, `target/bench/NAME.chart.json`: `title`, the
/// `unit` of the values, whether higher is better, and the bars in order.
pub fn write_chart(name: &str, title: &str, unit: &str, higher_is_better: bool, bars: &[Bar]) {
    let bars: Vec<_> = bars
        .iter()
        .map(|b| {
            serde_json::json!({ "label": b.label, "splitter": b.splitter, "median": b.median, "min": b.min, "max": b.max })
        })
        .collect();
    let doc = serde_json::json!({ "title": title, "unit": unit, "higher_is_better": higher_is_better, "bars": bars });
    write(&format!("{name}.chart.json"), &serde_json::to_string_pretty(&doc).expect("json"));
}

/// Writes the bench's lines for the headline list at the top of
/// BENCHMARKS.md, `target/bench/NAME.headline.md` (one markdown bullet each).
pub fn write_headline(name: &str, lines: &[String]) {
    let text: String = lines.iter().map(|l| format!("- {l}\n")).collect();
    write(&format!("{name}.headline.md"), &text);
}
