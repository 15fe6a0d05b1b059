//! `cargo xtask fuzz`: builds the cargo-fuzz targets (`fuzz/`) once and runs
//! each for a bounded time from its committed seeds (`fuzz/seeds/TARGET`) and
//! the corpus earlier runs grew (`fuzz/corpus/TARGET`, not committed).
//! Reports the inputs run per target; fails at the first crash, whose input
//! libFuzzer leaves in `fuzz/artifacts/TARGET/`.

use std::{fs, process::Command, time::Instant};

use anyhow::{bail, Context as _, Result};

use crate::workspace_root;

/// Every target, with the longest input libFuzzer may make for it.
pub const TARGETS: [(&str, usize); 6] =
    [("framing", 8192), ("answer", 8192), ("route", 4096), ("cli_values", 256), ("config", 8192), ("packet", 2048)];

/// Options of one `cargo xtask fuzz`.
pub struct Options<'a> {
    pub seconds: u64,
    pub sanitizer: &'a str,
    /// Targets to run; all when empty.
    pub only: &'a [String],
}

pub fn run(opts: &Options<'_>) -> Result<()> {
    let unknown: Vec<&String> = opts.only.iter().filter(|t| !TARGETS.iter().any(|(n, _)| n == t)).collect();
    if !unknown.is_empty() {
        let names: Vec<&str> = TARGETS.iter().map(|(n, _)| *n).collect();
        bail!("no fuzz target {unknown:?}: the targets are {}", names.join(", "));
    }
    let selected: Vec<(&str, usize)> =
        TARGETS.into_iter().filter(|(n, _)| opts.only.is_empty() || opts.only.iter().any(|o| o == n)).collect();
    let root = workspace_root();
    cargo_fuzz(&["build", "--sanitizer", opts.sanitizer, "--debug-assertions"])?;
    let logs = root.join("target/fuzz-logs");
    fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let mut report = Vec::new();
    for (target, max_len) in selected {
        let corpus = root.join("fuzz/corpus").join(target);
        fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
        let seeds = root.join("fuzz/seeds").join(target);
        let log = logs.join(format!("{target}.log"));
        let log_file = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        eprintln!("xtask: fuzzing {target} for {} s (log: {})", opts.seconds, log.display());
        let started = Instant::now();
        let mut cmd = Command::new("cargo");
        cmd.current_dir(&root)
            .args(["+nightly", "fuzz", "run", target, "--sanitizer", opts.sanitizer, "--debug-assertions"])
            .arg(&corpus);
        if seeds.is_dir() {
            cmd.arg(&seeds);
        }
        cmd.arg("--")
            .arg(format!("-max_total_time={}", opts.seconds))
            .arg(format!("-max_len={max_len}"))
            // An input that takes this long is a hang (quadratic parsing, say).
            .arg("-timeout=10")
            .arg("-print_final_stats=1")
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        let status = cmd.status().context("running cargo fuzz")?;
        let text = fs::read_to_string(&log).unwrap_or_default();
        if !status.success() {
            let tail: Vec<&str> = text.lines().rev().take(60).collect::<Vec<_>>().into_iter().rev().collect();
            bail!(
                "fuzz target {target} failed ({status}); the input is in fuzz/artifacts/{target}/, the log in {}:\n{}",
                log.display(),
                tail.join("\n")
            );
        }
        let runs = stat(&text, "number_of_executed_units")
            .with_context(|| format!("{target}: libFuzzer printed no final stats (see {})", log.display()))?;
        let corpus_size = fs::read_dir(&corpus).map(|d| d.count()).unwrap_or(0);
        report.push(format!(
            "{target:>10}: {runs:>10} inputs in {:.0} s ({:.0}/s), corpus {corpus_size}",
            started.elapsed().as_secs_f64(),
            runs as f64 / opts.seconds.max(1) as f64
        ));
    }
    eprintln!("xtask: fuzzing found nothing:\n{}", report.join("\n"));
    Ok(())
}

fn cargo_fuzz(args: &[&str]) -> Result<()> {
    eprintln!("xtask: cargo +nightly fuzz {}", args.join(" "));
    let status = Command::new("cargo")
        .current_dir(workspace_root())
        .args(["+nightly", "fuzz"])
        .args(args)
        .status()
        .context("running cargo fuzz")?;
    if !status.success() {
        bail!("cargo fuzz {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// `stat::NAME: VALUE` from libFuzzer's final stats.
fn stat(log: &str, name: &str) -> Option<u64> {
    let key = format!("stat::{name}:");
    log.lines().rev().find_map(|l| l.trim().strip_prefix(&key)).and_then(|v| v.trim().parse().ok())
}
