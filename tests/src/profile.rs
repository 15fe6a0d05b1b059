//! Where a process spends its CPU under load, for the benches' reports:
//! `perf record` (Debian `linux-perf`) sampling the process while a load
//! runs, then `perf report` of the samples' own functions (self time),
//! grouped by where the code comes from (the kernel, hyper, tokio,
//! malloc/free, splitter's own functions...), and of the time spent under
//! each function (children, from the call graphs).

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

/// `SPLITTER_BENCH_PROFILE`: seconds to profile for, when set.
pub fn secs() -> Option<u64> {
    std::env::var("SPLITTER_BENCH_PROFILE").ok().map(|v| {
        v.parse().ok().filter(|s| *s > 0).unwrap_or_else(|| panic!("SPLITTER_BENCH_PROFILE={v}: seconds, above 0"))
    })
}

/// One line of a `perf report`: a share of the samples and a function.
pub struct Item {
    pub percent: f64,
    pub name: String,
    /// The [`group`] of a self-time item.
    pub group: &'static str,
}

/// What [`record`] found: the `perf record` command (to repeat it), the
/// sample count, every function's self time (with its [`group`], largest
/// first) and the functions with the most time spent in and under them.
pub struct Profile {
    pub command: String,
    pub samples: u64,
    pub by_self: Vec<Item>,
    pub by_children: Vec<Item>,
}

/// The group of splitter's own functions.
const OURS: &str = "splitter's own code";

/// Which group a function's self time counts to, from its name as perf
/// demangles it and the object it is in.
pub fn group(dso: &str, sym: &str) -> &'static str {
    let path = sym.trim_start_matches('<');
    let starts = |prefixes: &[&str]| prefixes.iter().any(|p| path.starts_with(p));
    if dso.contains("kernel") || dso.starts_with('[') && !dso.starts_with("[unknown") {
        "kernel (TCP/IP, syscalls, scheduling)"
    } else if starts(&["hyper::", "hyper_util::"]) {
        "hyper"
    } else if starts(&["h2::"]) {
        "h2"
    } else if starts(&["tokio::", "mio::"]) {
        "tokio and mio"
    } else if is_alloc(sym) {
        "malloc/free (glibc) and Rust's alloc glue"
    } else if starts(&["splitter", "splitter_user::", "splitter_model::", "splitter_common::"]) {
        OURS
    } else if starts(&["http::", "httparse::", "bytes::", "http_body"]) {
        "http, httparse, bytes"
    } else if dso.starts_with("libc") {
        "glibc (mem*, syscall wrappers, locks)"
    } else if starts(&["core::", "alloc::", "std::"]) {
        "Rust core/std (hashing, fmt, collections)"
    } else if starts(&["tracing", "metrics", "prometheus"]) {
        "tracing and metrics"
    } else {
        "other"
    }
}

fn is_alloc(sym: &str) -> bool {
    let base = sym.split('@').next().unwrap_or(sym);
    matches!(base, "free" | "realloc" | "calloc" | "cfree" | "__rust_alloc" | "__rust_dealloc" | "__rust_realloc")
        || ["malloc", "_int_", "tcache", "__libc_", "__rdl_", "alloc::alloc::"].iter().any(|p| base.contains(p))
}

/// Profiles `pids` with `perf record -g` for `secs` seconds while `load`
/// runs (it should last as long), keeps the data in `dir`.
pub fn record(pids: &[u32], secs: u64, dir: &Path, load: impl FnOnce()) -> Profile {
    std::fs::create_dir_all(dir).expect("profile dir");
    let data = dir.canonicalize().expect("profile dir").join("perf.data");
    let pid_list: Vec<String> = pids.iter().map(u32::to_string).collect();
    let args: Vec<String> = ["record", "-e", "cpu-clock", "-F", "999", "-g", "-p", &pid_list.join(","), "-o"]
        .iter()
        .map(|s| (*s).to_owned())
        .chain([data.display().to_string(), "--".into(), "sleep".into(), secs.to_string()])
        .collect();
    let command = format!("perf {}", args.join(" "));
    perf_during(&args, load);
    let by_self = report(&data, 0.0, &["--no-children", "--sort", "dso,sym"])
        .iter()
        .filter_map(|l| parse_self(l))
        .map(|(percent, dso, sym)| Item { percent, name: short(sym), group: group(dso, sym) })
        .collect();
    let by_children = report(&data, 0.3, &["--children", "--sort", "sym"])
        .iter()
        .filter_map(|l| parse_children(l))
        .filter(|i| i.percent < 99.5)
        .take(25)
        .collect();
    Profile { command, samples: samples(&data), by_self, by_children }
}

/// Runs `perf ARGS` while `load` runs; panics unless it succeeds, returns
/// what it wrote to stderr (where `perf stat` reports).
fn perf_during(args: &[String], load: impl FnOnce()) -> String {
    let perf = Command::new("perf")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("perf (Debian package linux-perf): {e}"));
    load();
    let out = perf.wait_with_output().expect("perf");
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "perf {}: {}: {text}", args.join(" "), out.status);
    text
}

/// The lines of `perf report --stdio` on `data` with `args`, no call
/// graphs, the items of at least `limit` %.
fn report(data: &Path, limit: f64, args: &[&str]) -> Vec<String> {
    let out = Command::new("perf")
        .args(["report", "--stdio", "-q", "-g", "none", "--percent-limit", &limit.to_string(), "-i"])
        .arg(data)
        .args(args)
        .output()
        .expect("perf report");
    assert!(out.status.success(), "perf report: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect()
}

/// How many samples `data` holds: one line each from `perf script`.
fn samples(data: &Path) -> u64 {
    let out = Command::new("perf").args(["script", "-F", "ip", "--hide-call-graph", "-i"]).arg(data).output();
    out.map(|o| o.stdout.iter().filter(|b| **b == b'\n').count() as u64).unwrap_or(0)
}

/// `  12.34%  splitter  [.] hyper::proto::...` → (12.34, dso, symbol).
fn parse_self(line: &str) -> Option<(f64, &str, &str)> {
    let line = line.trim();
    let (pct, rest) = line.split_once('%')?;
    let rest = rest.trim_start();
    let (dso, rest) = rest.split_once(char::is_whitespace)?;
    let sym = rest.trim_start().split_once("] ")?.1.trim();
    Some((pct.trim().parse().ok()?, dso, sym))
}

/// `  45.00%  0.10%  [.] tokio::...` → the children share and the symbol.
fn parse_children(line: &str) -> Option<Item> {
    let line = line.trim();
    let (pct, rest) = line.split_once('%')?;
    let sym = rest.split_once("] ")?.1.trim();
    Some(Item { percent: pct.trim().parse().ok()?, name: short(sym), group: "" })
}

/// A function's name without its generic arguments' paths, at most 110
/// characters.
fn short(sym: &str) -> String {
    let mut s = sym.to_owned();
    if s.len() > 110 {
        let mut end = 107;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s += "...";
    }
    s.replace('|', "\\|")
}

/// Events of a process while a load ran, from `perf stat`.
pub struct Counts {
    /// `(event, count)` in the order asked.
    pub events: Vec<(&'static str, u64)>,
    /// User and system CPU time of the processes meanwhile, from `/proc`.
    pub user: Duration,
    pub system: Duration,
}

/// The system calls and context switches [`count`] reads.
pub const COUNTED: [&str; 7] = [
    "raw_syscalls:sys_enter",
    "syscalls:sys_enter_writev",
    "syscalls:sys_enter_sendto",
    "syscalls:sys_enter_recvfrom",
    "syscalls:sys_enter_read",
    "syscalls:sys_enter_epoll_wait",
    "context-switches",
];

/// Counts [`COUNTED`] of `pids` with `perf stat` for `secs` seconds while
/// `load` runs (it should last as long).
pub fn count(pids: &[u32], secs: u64, load: impl FnOnce()) -> Counts {
    let pid_list: Vec<String> = pids.iter().map(u32::to_string).collect();
    let args =
        ["stat", "-x", ",", "-e", &COUNTED.join(","), "-p", &pid_list.join(","), "--", "sleep", &secs.to_string()]
            .map(str::to_owned);
    let cpu = || {
        pids.iter()
            .map(|p| crate::process_user_system(*p))
            .fold((Duration::ZERO, Duration::ZERO), |a, b| (a.0 + b.0, a.1 + b.1))
    };
    let before = cpu();
    let text = perf_during(&args, load);
    let after = cpu();
    // CSV: value,unit,event,...
    let events = COUNTED
        .iter()
        .map(|e| {
            let n = text.lines().find_map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                (f.get(2) == Some(e)).then(|| f[0].parse().ok()).flatten()
            });
            (*e, n.unwrap_or_else(|| panic!("no {e} in perf stat's output: {text}")))
        })
        .collect();
    Counts { events, user: after.0 - before.0, system: after.1 - before.1 }
}

/// A table of [`Counts`] per operation: one row per `(name, counts,
/// operations)`.
pub fn counts_table(rows: &[(String, Counts, f64)]) -> String {
    let names: Vec<String> = COUNTED
        .iter()
        .map(|e| e.trim_start_matches("syscalls:sys_enter_").replace("raw_syscalls:sys_enter", "all syscalls"))
        .collect();
    let mut md = format!(
        "| per request | user CPU µs | system CPU µs | {} |\n|---|---|---|{}\n",
        names.join(" | "),
        "---|".repeat(names.len())
    );
    for (name, counts, ops) in rows {
        let ops = ops.max(1.0);
        let cells: Vec<String> = counts.events.iter().map(|(_, n)| format!("{:.2}", *n as f64 / ops)).collect();
        let us = |d: Duration| d.as_secs_f64() * 1e6 / ops;
        writeln!(md, "| {name} | {:.1} | {:.1} | {} |", us(counts.user), us(counts.system), cells.join(" | ")).unwrap();
    }
    md
}

impl Profile {
    /// The report's section: groups, the top functions by self time,
    /// splitter's own, and by time under them.
    pub fn markdown(&self, what: &str) -> String {
        let mut md = format!(
            "#### Where the time goes ({what})\n\n`{}` ({} samples of the process's on-CPU time; no hardware counters on this VM, so `cpu-clock` timer samples, which land where interrupts are enabled again: much of `_raw_spin_unlock_irqrestore` is time spent with them off). Self time by group:\n\n| group | self % |\n|---|---|\n",
            self.command, self.samples
        );
        let mut groups: Vec<(&str, f64)> = Vec::new();
        for i in &self.by_self {
            match groups.iter_mut().find(|(g, _)| *g == i.group) {
                Some((_, p)) => *p += i.percent,
                None => groups.push((i.group, i.percent)),
            }
        }
        groups.sort_by(|a, b| b.1.total_cmp(&a.1));
        for (g, p) in groups {
            writeln!(md, "| {g} | {p:.1} |").unwrap();
        }
        let list = |md: &mut String, title: &str, items: &[Item]| {
            writeln!(md, "\n{title}\n\n| % | function | group |\n|---|---|---|").unwrap();
            for i in items {
                writeln!(md, "| {:.1} | `{}` | {} |", i.percent, i.name, i.group).unwrap();
            }
        };
        list(&mut md, "Top functions by self time:", &self.by_self[..self.by_self.len().min(15)]);
        let ours: Vec<&Item> = self.by_self.iter().filter(|i| i.group == OURS).take(10).collect();
        writeln!(
            md,
            "\nsplitter's own functions by self time: {}.",
            ours.iter().map(|i| format!("`{}` {:.1} %", i.name, i.percent)).collect::<Vec<_>>().join(", ")
        )
        .unwrap();
        list(
            &mut md,
            "Top by time in and under them (children; from frame-pointer call graphs, which Rust code built without frame pointers breaks: trust the kernel's and the outer frames'):",
            &self.by_children,
        );
        md
    }
}

/// Where the profile's data goes: `target/bench/profile-NAME/`.
pub fn dir(name: &str) -> PathBuf {
    crate::report::dir().join(format!("profile-{name}"))
}
