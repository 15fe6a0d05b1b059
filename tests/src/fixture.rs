//! `BPF_PROG_TEST_RUN` fixtures, Katran style: an input frame, the verdict the
//! program must return, the bytes it must leave, and the counters it must move.
//!
//! The program runs in the kernel on the real object the `splitter` binary
//! embeds; only the packet source is synthetic.

use std::fmt::Write as _;

use aya::{
    maps::{MapData, PerCpuArray},
    programs::{TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use splitter_common::{
    names::{MAP_STATS, PROG_INGRESS},
    stats::Stat,
};
use splitter_user::dataplane::OBJECT;

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
    /// Counters this packet must move, besides `rx_packets` (+1), `rx_bytes`
    /// (+input length) and `passed`/`dropped` (from the verdict). Every other
    /// counter must stay where it was.
    pub counts: Vec<Stat>,
}

/// The ingress program loaded for test runs, with its counters.
pub struct Harness {
    ebpf: Ebpf,
}

impl Default for Harness {
    fn default() -> Self {
        Self::new()
    }
}

impl Harness {
    /// Loads the embedded object (root needed) and its ingress program.
    pub fn new() -> Harness {
        crate::require_root("BPF_PROG_TEST_RUN fixtures");
        let mut ebpf = Ebpf::load(OBJECT).expect("loading the embedded eBPF object");
        let prog: &mut Xdp = ebpf
            .program_mut(PROG_INGRESS)
            .unwrap_or_else(|| panic!("no program {PROG_INGRESS} in the object"))
            .try_into()
            .expect("ingress is an XDP program");
        prog.load().expect("the verifier rejected the ingress program");
        Harness { ebpf }
    }

    fn prog(&self) -> &Xdp {
        self.ebpf.program(PROG_INGRESS).expect("program").try_into().expect("xdp")
    }

    /// Counters summed over CPUs.
    pub fn stats(&self) -> Vec<u64> {
        let map = self.ebpf.map(MAP_STATS).expect("stats map");
        let array: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map).expect("per-cpu array");
        Stat::ALL.iter().map(|s| array.get(&(*s as u32), 0).expect("read counter").iter().sum()).collect()
    }

    /// Runs `input` once; returns the raw verdict and the output frame.
    pub fn run(&self, input: &[u8]) -> (u32, Vec<u8>) {
        // Room for programs that grow the frame (encapsulation) later.
        let mut out = vec![0u8; input.len() + 256];
        let res = self
            .prog()
            .test_run(TestRunOptions { data_in: Some(input), data_out: Some(&mut out), ..TestRunOptions::new() })
            .expect("BPF_PROG_TEST_RUN");
        out.truncate(res.data_size_out as usize);
        (res.return_value, out)
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
                Stat::Passed => u64::from(case.verdict == Verdict::Pass),
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

    /// Runs every case and panics with the list of all that failed.
    pub fn check_table(&self, cases: &[Case]) {
        let failures: Vec<String> = cases.iter().filter_map(|c| self.check(c).err()).collect();
        if !failures.is_empty() {
            panic!("{} of {} fixtures failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
