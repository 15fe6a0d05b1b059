//! BGP announce timing, run by `cargo xtask bench` (root): three nodes
//! behind a BIRD 2 router (the ECMP test's topology, `splitter_tests::ecmp`),
//! with the release `splitter`. For each of 10 trials: the time from
//! `splitter node drain` on node 2 (the CLI call) until the router's kernel
//! route to the VIP no longer goes through it, and from `undrain` until it
//! does again. The router's FIB is read with `ip route` in a loop (each
//! read takes a few milliseconds: the resolution).
//!
//! Writes `target/bench/bgp.md` and its headline.

use std::{
    fmt::Write as _,
    time::{Duration, Instant},
};

use splitter_tests::{agent::release_bin, ecmp::Ecmp, load::percentile};

const TRIALS: usize = 10;

fn main() {
    splitter_tests::require_root("the BGP benchmark");
    let bin = release_bin();
    let t = Ecmp::build(&bin, "spb");
    t.wait_hops(&[1, 2, 3], Duration::from_secs(30));
    let mut drain = Vec::new();
    let mut undrain = Vec::new();
    for _ in 0..TRIALS {
        for (action, want, out) in [("drain", &[1, 3][..], &mut drain), ("undrain", &[1, 2, 3][..], &mut undrain)] {
            let started = Instant::now();
            let (ok, stdout, stderr) = t.cli(&bin, 2, &["node", action]);
            assert!(ok, "node {action}: {stdout}{stderr}");
            t.wait_hops(want, Duration::from_secs(20));
            out.push(started.elapsed().as_secs_f64() * 1e3);
        }
        // Both sessions settle before the next trial.
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut md = String::new();
    writeln!(md, "### BGP: draining a node ({TRIALS} trials, release binary)\n").unwrap();
    writeln!(
        md,
        "Three nodes, each with BIRD 2 on the shipped example (`packaging/bgp/bird.conf`: eBGP, hold time 9 s, \
         keepalive 3 s, connect retry 2 s), announce the VIP to a BIRD 2 router that installs it over all three \
         (`merge paths`). Measured from the `splitter node` call on node 2 until the router's kernel route (read \
         with `ip route` in a loop) has or lacks node 2. A withdrawal is a BGP UPDATE sent at once: the timers \
         bound only a dead node (the router drops it after the hold time, 9 s).\n"
    )
    .unwrap();
    writeln!(md, "| change | p50 | p99 | min | max |").unwrap();
    writeln!(md, "|---|---|---|---|---|").unwrap();
    for (what, v) in
        [("`node drain` → route without the node", &drain), ("`node undrain` → route with it again", &undrain)]
    {
        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
        let max = v.iter().copied().fold(0.0, f64::max);
        writeln!(
            md,
            "| {what} | {:.1} ms | {:.1} ms | {min:.1} ms | {max:.1} ms |",
            percentile(v.clone(), 0.5),
            percentile(v.clone(), 0.99)
        )
        .unwrap();
    }
    splitter_tests::report::write_md("bgp", &md);
    splitter_tests::report::write_headline(
        "bgp",
        &[format!(
            "BGP: `splitter node drain` takes the node out of the router's FIB in {:.1} ms (p50; p99 {:.1} ms), `undrain` puts it back in {:.1} ms (p50), BIRD 2 with hold time 9 s.",
            percentile(drain.clone(), 0.5),
            percentile(drain.clone(), 0.99),
            percentile(undrain.clone(), 0.5)
        )],
    );
}
