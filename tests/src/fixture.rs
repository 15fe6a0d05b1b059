//! `BPF_PROG_TEST_RUN` fixtures, Katran style: an input frame, the verdict the
//! program must return, the bytes it must leave, and the counters it must move.
//!
//! The program is the real object the `splitter` binary embeds, loaded and
//! programmed by the agent's own `Dataplane` code. Runs happen inside a
//! private network namespace whose routes and permanent neighbour entries are
//! fixed ([`FixtureNet`]), so FIB lookups and the MACs they return are exact.

use std::fmt::Write as _;

use splitter_common::{
    names::{PROG_FLOOR, PROG_INGRESS},
    stats::Stat,
};
use splitter_model::plan::ServicePlan;
use splitter_testkit::{config::Config, netns::NetNs};
use splitter_user::{config_file::ConfigFile as _, dataplane::Dataplane};

use crate::netns::netns;

/// XDP verdicts (`enum xdp_action`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Verdict {
    Aborted = 0,
    Drop = 1,
    Pass = 2,
    Tx = 3,
    Redirect = 4,
}

impl Verdict {
    fn from_raw(v: u32) -> Result<Verdict, u32> {
        Ok(match v {
            0 => Verdict::Aborted,
            1 => Verdict::Drop,
            2 => Verdict::Pass,
            3 => Verdict::Tx,
            4 => Verdict::Redirect,
            other => return Err(other),
        })
    }
}

/// What the frame must look like after the program ran.
#[derive(Clone, Debug)]
pub enum Output {
    /// Exactly the input bytes.
    Unchanged,
    /// Exactly these bytes.
    Bytes(Vec<u8>),
}

/// One table row.
#[derive(Clone, Debug)]
pub struct Case {
    pub description: &'static str,
    pub input: Vec<u8>,
    pub verdict: Verdict,
    pub output: Output,
    /// Counters this packet must move by one each (a counter listed twice
    /// must move by two), besides `rx_packets` (+1), `rx_bytes` (+input
    /// length) and `passed`/`dropped` (from the verdict). Every other counter
    /// must stay where it was.
    pub counts: Vec<Stat>,
}

/// The fixture namespace's addresses. Backend-side interface `fxa`, client
/// side `fxb`, both with fixed MACs and permanent neighbours.
pub mod net {
    pub const FXA_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xfa, 0xaa];
    pub const FXB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xfb, 0xbb];
    /// The mirror interface `fxm` (copies leave here) and its peer `fxn`.
    pub const FXM_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xfc, 0xcc];
    pub const FXN_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xfd, 0xdd];
    /// Neighbour MAC of backend 198.51.100.N (`N`) or 2001:db8:1::X (`0xX`).
    pub const fn backend_mac(last: u8) -> [u8; 6] {
        [0x02, 0, 0, 0, 0xbe, last]
    }
    pub const CLIENT_NEIGH_MAC: [u8; 6] = [0x02, 0, 0, 0, 0xc1, 0x01];
    pub const CLIENT4: [u8; 4] = [192, 0, 2, 1];
    pub const VIP4: [u8; 4] = [203, 0, 113, 10];
    pub const BLUE4: [u8; 4] = [198, 51, 100, 10];
    pub const GREEN4: [u8; 4] = [198, 51, 100, 20];
    pub const CLIENT6: [u8; 16] = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    pub const VIP6: [u8; 16] = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10];
    pub const BLUE6: [u8; 16] = [0x20, 1, 0xd, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10];
    /// The namespace's own addresses: on `fxa` (the backends' side) and
    /// `fxb` (the clients').
    pub const FXA4: [u8; 4] = [198, 51, 100, 1];
    pub const FXA6: [u8; 16] = [0x20, 1, 0xd, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    pub const FXB4: [u8; 4] = [192, 0, 2, 254];
    pub const FXB6: [u8; 16] = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xfe];
}

/// A namespace where FIB lookups have fixed answers:
/// 198.51.100.0/24 and 2001:db8:1::/64 via `fxa`, 192.0.2.0/24 and
/// 2001:db8::/64 via `fxb`, with permanent neighbours for every host the
/// fixtures use, and forwarding on. A second pair `fxm`/`fxn` is the mirror
/// link: copies sent out of `fxm` can be captured on `fxn`.
pub struct FixtureNet {
    pub ns: NetNs,
    pub fxa_ifindex: u32,
    pub fxb_ifindex: u32,
}

impl FixtureNet {
    pub fn new() -> FixtureNet {
        use net::*;
        let ns = netns("fx");
        let ip = |args: &[&str]| {
            ns.ip(args).unwrap_or_else(|e| panic!("fixture namespace setup: {e}"));
        };
        let mac = |m: [u8; 6]| m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
        ip(&[
            "link",
            "add",
            "name",
            "fxa",
            "address",
            &mac(FXA_MAC),
            "type",
            "veth",
            "peer",
            "name",
            "fxb",
            "address",
            &mac(FXB_MAC),
        ]);
        ip(&["link", "set", "dev", "fxa", "up"]);
        ip(&["link", "set", "dev", "fxb", "up"]);
        ip(&[
            "link",
            "add",
            "name",
            "fxm",
            "address",
            &mac(FXM_MAC),
            "type",
            "veth",
            "peer",
            "name",
            "fxn",
            "address",
            &mac(FXN_MAC),
        ]);
        // Carries no traffic: it only holds the programs (see
        // `Dataplane::hold_for_test_runs`).
        ip(&["link", "add", "name", "fxh0", "type", "veth", "peer", "name", "fxh1"]);
        ip(&["link", "set", "dev", "fxm", "up"]);
        ip(&["link", "set", "dev", "fxn", "up"]);
        let a4 = |a: [u8; 4]| std::net::Ipv4Addr::from(a).to_string();
        let a6 = |a: [u8; 16]| std::net::Ipv6Addr::from(a).to_string();
        ip(&["addr", "add", &format!("{}/24", a4(FXA4)), "dev", "fxa"]);
        ip(&["addr", "add", &format!("{}/64", a6(FXA6)), "dev", "fxa", "nodad"]);
        ip(&["addr", "add", &format!("{}/24", a4(FXB4)), "dev", "fxb"]);
        ip(&["addr", "add", &format!("{}/64", a6(FXB6)), "dev", "fxb", "nodad"]);
        // 198.51.100.N has MAC backend_mac(N); 2001:db8:1::X (hex) has backend_mac(0xX).
        for (v4_last, v6_last) in [(10u8, 0x10u8), (11, 0x11), (20, 0x20)] {
            let v4 = format!("198.51.100.{v4_last}");
            let v6 = format!("2001:db8:1::{v6_last:x}");
            ip(&["neigh", "add", &v4, "lladdr", &mac(backend_mac(v4_last)), "dev", "fxa", "nud", "permanent"]);
            ip(&["neigh", "add", &v6, "lladdr", &mac(backend_mac(v6_last)), "dev", "fxa", "nud", "permanent"]);
        }
        ip(&["neigh", "add", "192.0.2.1", "lladdr", &mac(CLIENT_NEIGH_MAC), "dev", "fxb", "nud", "permanent"]);
        ip(&["neigh", "add", "2001:db8::1", "lladdr", &mac(CLIENT_NEIGH_MAC), "dev", "fxb", "nud", "permanent"]);
        ns.sysctl("net.ipv4.ip_forward=1").expect("ipv4 forwarding");
        ns.sysctl("net.ipv6.conf.all.forwarding=1").expect("ipv6 forwarding");
        let ifindex = |dev: &str| -> u32 {
            let out = ns.ip(&["-o", "link", "show", "dev", dev]).expect("link show");
            out.split(':').next().and_then(|n| n.trim().parse().ok()).expect("ifindex")
        };
        let (fxa_ifindex, fxb_ifindex) = (ifindex("fxa"), ifindex("fxb"));
        FixtureNet { ns, fxa_ifindex, fxb_ifindex }
    }

    /// A config for this namespace: clients on `fxb` (where the program
    /// serves both directions), no services yet.
    pub fn config() -> Config {
        Config::new(&["fxb"], &[])
    }
}

impl Default for FixtureNet {
    fn default() -> Self {
        Self::new()
    }
}

/// The ingress program, loaded and programmed as the agent does it.
pub struct Harness {
    pub dp: Dataplane,
    pub net: FixtureNet,
    /// The plans last applied, by service name (for the next plan's slots).
    pub plans: Vec<ServicePlan>,
}

impl Harness {
    /// Loads the embedded object (root needed) with no services.
    pub fn new() -> Harness {
        Harness::with_config(&FixtureNet::config())
    }

    /// Loads the object and applies the L4 services of `config` (a whole
    /// config, from [`FixtureNet::config`]).
    pub fn with_config(config: &Config) -> Harness {
        crate::require_root("BPF_PROG_TEST_RUN fixtures");
        let flow_table_size = parse(config).flow_table_size;
        let dp = Dataplane::load(flow_table_size).expect("loading and verifying the embedded eBPF object");
        let mut h = Harness { dp, net: FixtureNet::new(), plans: Vec::new() };
        let dp = &mut h.dp;
        h.net.ns.run(|| dp.hold_for_test_runs(PROG_INGRESS, "fxh0")).expect("hold the ingress program");
        h.apply(config);
        h
    }

    /// Loads the empty program the benchmarks measure against.
    pub fn load_floor(&mut self) {
        self.dp.load_floor().expect("load the floor program");
        let dp = &mut self.dp;
        self.net.ns.run(|| dp.hold_for_test_runs(PROG_FLOOR, "fxh1")).expect("hold the floor program");
    }

    /// Plans `config` from the current tables and applies it, as a reload does.
    pub fn apply(&mut self, config: &Config) {
        let plans = splitter_model::plan::plan_all(&parse(config), |n| {
            self.plans.iter().find(|p| p.name == n).map(splitter_model::plan::ServicePlan::as_previous)
        })
        .expect("plan");
        // Inside the namespace, where mirror interfaces resolve.
        let dp = &mut self.dp;
        self.net.ns.run(|| dp.apply(&plans)).expect("apply plans");
        self.plans = plans;
    }

    /// Counters summed over CPUs.
    pub fn stats(&self) -> Vec<u64> {
        let c = self.dp.stats().expect("read counters");
        Stat::ALL.iter().map(|s| c.get(*s)).collect()
    }

    /// Runs `input` once inside the fixture namespace; returns the raw verdict
    /// and the output frame.
    pub fn run(&self, input: &[u8]) -> (u32, Vec<u8>) {
        let out = self.net.ns.run(|| self.dp.test_run(input, 1)).expect("BPF_PROG_TEST_RUN");
        (out.action, out.output)
    }

    /// Runs `input` once through the TC mirror program inside the fixture
    /// namespace; returns its `TC_ACT_*` verdict and the output frame.
    pub fn run_mirror(&self, input: &[u8]) -> (i32, Vec<u8>) {
        let out = self
            .net
            .ns
            .run(|| self.dp.test_run_program(splitter_common::names::PROG_MIRROR, input, 1))
            .expect("BPF_PROG_TEST_RUN of the TC program");
        (out.action as i32, out.output)
    }

    /// Checks one case; `Err` says everything that was wrong with it.
    pub fn check(&self, case: &Case) -> Result<(), String> {
        let before = self.stats();
        let (raw, out) = self.run(&case.input);
        let after = self.stats();
        let mut problems = String::new();
        match Verdict::from_raw(raw) {
            Ok(v) if v == case.verdict => {}
            Ok(v) => writeln!(problems, "  verdict {v:?}, expected {:?}", case.verdict).unwrap(),
            Err(v) => writeln!(problems, "  verdict {v} is not an XDP action").unwrap(),
        }
        let want = match &case.output {
            Output::Unchanged => &case.input,
            Output::Bytes(b) => b,
        };
        if &out != want {
            writeln!(problems, "  output differs:\n    got  {}\n    want {}", hex(&out), hex(want)).unwrap();
        }
        for stat in Stat::ALL {
            let delta = after[stat as usize] - before[stat as usize];
            let expected = match stat {
                Stat::RxPackets => 1,
                Stat::RxBytes => case.input.len() as u64,
                // A packet left to the TC program (mirrored flow) passes uncounted.
                Stat::Passed => u64::from(case.verdict == Verdict::Pass && !case.counts.contains(&Stat::MirrorHandoff)),
                Stat::Dropped => u64::from(case.verdict == Verdict::Drop),
                s => case.counts.iter().filter(|c| **c == s).count() as u64,
            };
            if delta != expected {
                writeln!(problems, "  counter {} moved by {delta}, expected {expected}", stat.name()).unwrap();
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!("{}:\n{problems}", case.description))
        }
    }

    /// Runs every case in order (state carries over: flows created by one
    /// row are seen by the next) and panics listing all that failed.
    pub fn check_table(&self, cases: &[Case]) {
        let failures: Vec<String> = cases.iter().filter_map(|c| self.check(c).err()).collect();
        if !failures.is_empty() {
            panic!("{} of {} fixtures failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
        }
    }
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

/// `config` as the agent reads it (validated).
fn parse(config: &Config) -> splitter_model::config::Config {
    splitter_model::config::Config::from_yaml(&config.to_string()).expect("fixture config")
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
