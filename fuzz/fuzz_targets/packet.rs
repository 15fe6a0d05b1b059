//! The XDP program's packet parser, differentially: every frame libFuzzer
//! makes up runs through the real program (`BPF_PROG_TEST_RUN`, root needed),
//! and its verdict, output and counters must be what the host-side mirror
//! (`splitter_common::packet`) implies (`splitter_tests::differential`,
//! compiled in here from its file: it needs only splitter-common and
//! splitter-model, and depending on splitter-tests would have the fuzz build
//! instrument every test harness too).
//!
//! The process moves into a network namespace of its own at the first input,
//! so the interface holding the program vanishes with it, however it ends.
#![no_main]

#[path = "../../tests/src/differential.rs"]
#[allow(dead_code)] // The tier-2 test uses parts this target does not.
mod differential;

use std::{process::Command, sync::OnceLock};

use differential::{judge, Run, Services, RUNNABLE};
use libfuzzer_sys::fuzz_target;
use splitter_common::{names::PROG_INGRESS, stats::Stat};
use splitter_model::{config::Config, plan::plan_all};
use splitter_user::{config_file::ConfigFile as _, dataplane::Dataplane};

/// A TCP service on IPv4 and a UDP one on IPv6, two versions each.
const CONFIG: &str = "\
interfaces:
  clients: [fz0]
services:
  web:
    listen: 203.0.113.10:80
    protocol: tcp
    versions:
      blue: [198.51.100.10:8080]
      green: [198.51.100.20:8080, 198.51.100.21:8080]
    weights: { blue: 50, green: 50 }
  dns:
    listen: '[2001:db8::10]:53'
    protocol: udp
    versions:
      blue: ['[2001:db8:1::10]:5353']
      green: ['[2001:db8:1::20]:5353']
    weights: { blue: 90, green: 10 }
";

struct Rig {
    dp: Dataplane,
    services: Services,
}

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("running ip (Debian package iproute2)");
    assert!(status.success(), "ip {args:?} failed");
}

fn rig() -> &'static Rig {
    static RIG: OnceLock<Rig> = OnceLock::new();
    RIG.get_or_init(|| {
        // SAFETY: no preconditions.
        assert!(unsafe { libc::geteuid() } == 0, "the packet target loads the XDP program: run it as root");
        // SAFETY: moves only this (libFuzzer's) thread; the `ip` children
        // below are forked from it and share its new namespace.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare(CLONE_NEWNET)");
        // Left down: it only holds the program (see
        // `Dataplane::hold_for_test_runs`), and a link that is up sends
        // packets of its own (IPv6 MLD, router solicitations) through it,
        // which would move the counters under the fuzzer.
        ip(&["link", "add", "fz0", "type", "veth", "peer", "name", "fz1"]);
        let config = Config::from_yaml(CONFIG).expect("the target's config");
        let plans = plan_all(&config, |_| None).expect("plan");
        let mut dp = Dataplane::load(config.flow_table_size).expect("load the embedded eBPF object");
        dp.hold_for_test_runs(PROG_INGRESS, "fz0").expect("hold the ingress program");
        dp.apply(&plans).expect("program the services");
        Rig { dp, services: Services::of(&plans) }
    })
}

fn counters(dp: &Dataplane) -> Vec<u64> {
    let c = dp.stats().expect("read the counters");
    Stat::ALL.iter().map(|s| c.get(*s)).collect()
}

fuzz_target!(|frame: &[u8]| {
    if !RUNNABLE.contains(&frame.len()) {
        return;
    }
    let rig = rig();
    let before = counters(&rig.dp);
    let out = rig.dp.test_run(frame, 1).expect("BPF_PROG_TEST_RUN");
    let after = counters(&rig.dp);
    let deltas: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    let run = Run { action: out.action, output: &out.output, deltas: &deltas };
    if let Err(e) = judge(frame, &rig.services, &run) {
        panic!("the XDP program and the host-side parser disagree: {e}");
    }
});
