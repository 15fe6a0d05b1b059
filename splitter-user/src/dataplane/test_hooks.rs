//! What only the tests and benchmarks use (cargo feature `test-hooks`):
//! private loads, `BPF_PROG_TEST_RUN`, the empty-program floor.

use super::{load::load_programs, *};

/// Entry points only the tests and benchmarks call (cargo feature
/// `test-hooks`, off in the shipped agent): a private load, `BPF_PROG_TEST_RUN`
/// of any program, the floor program, and map writes the agent never makes.
impl Dataplane {
    /// Loads the embedded object and the ingress program into the kernel,
    /// with a flow table of `flow_table_size` entries.
    /// Nothing is pinned: dropping it removes everything (fixtures, benches).
    pub fn load(flow_table_size: u32) -> Result<Self, DataplaneError> {
        let mut ebpf = EbpfLoader::new().map_max_entries(MAP_FLOWS, flow_table_size).load(OBJECT)?;
        load_programs(&mut ebpf)?;
        Ok(Dataplane::new(ebpf, None))
    }

    /// Runs the ingress program once on `input` with `BPF_PROG_TEST_RUN`
    /// (`repeat` times; the kernel reports the mean duration). The program
    /// sees the calling thread's network namespace (FIB, neighbours).
    pub fn test_run(&self, input: &[u8], repeat: u32) -> Result<TestOutcome, DataplaneError> {
        self.test_run_program(PROG_INGRESS, input, repeat)
    }

    /// Loads the empty floor program ([`splitter_common::names::PROG_FLOOR`])
    /// next to the real one, for benchmarks.
    pub fn load_floor(&mut self) -> Result<(), DataplaneError> {
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(splitter_common::names::PROG_FLOOR)
            .ok_or(DataplaneError::Missing { kind: "program", name: splitter_common::names::PROG_FLOOR })?
            .try_into()?;
        prog.load()?;
        Ok(())
    }

    /// Attaches XDP program `name` (generic mode, unpinned, for as long as
    /// the dataplane lives) to `ifname` of the calling thread's namespace, an
    /// interface that carries no traffic, only so that test runs are cheap:
    /// `BPF_PROG_TEST_RUN` of an XDP program attached nowhere adds it to the
    /// kernel's XDP dispatcher and takes it out again on every call, each time
    /// waiting for an RCU grace period (tens of ms on an idle machine).
    pub fn hold_for_test_runs(&mut self, name: &'static str, ifname: &str) -> Result<(), DataplaneError> {
        let prog = xdp_program(&mut self.ebpf, name)?;
        prog.attach(ifname, XdpMode::Skb).map_err(|source| DataplaneError::Attach {
            what: "test-run holder",
            ifname: ifname.to_owned(),
            source,
        })?;
        Ok(())
    }

    /// Empties the kernel's shared next hops (`HOPS`) of every live service's
    /// endpoints, so the next new flow to each pays the FIB lookup again.
    /// Benchmark support: the agent never writes this map.
    pub fn forget_next_hops(&mut self) -> Result<(), DataplaneError> {
        let slots: Vec<u32> = self
            .live
            .values()
            .flat_map(|i| {
                (0..i.table.n_endpoints.min(MAX_ENDPOINTS as u16)).map(|e| endpoint_stats_index(i.slot as u16, e as u8))
            })
            .collect();
        use splitter_common::{names::MAP_HOPS, service::EndpointHop};
        let mut hops: Array<&mut MapData, EndpointHop> = Array::try_from(map_mut(&mut self.ebpf, MAP_HOPS)?)?;
        for slot in slots {
            hops.set(slot, <EndpointHop as bytemuck::Zeroable>::zeroed(), 0)?;
        }
        Ok(())
    }

    /// Instructions the verifier processed to accept program `name`.
    pub fn verified_instructions(&self, name: &'static str) -> Result<Option<u32>, DataplaneError> {
        let prog = self.ebpf.program(name).ok_or(DataplaneError::Missing { kind: "program", name })?;
        Ok(prog.info()?.verified_instruction_count())
    }

    /// [`Dataplane::test_run`] for any loaded XDP or TC program of the object.
    /// A TC program's verdict (`TC_ACT_*`, an `i32`) is returned as its bits.
    pub fn test_run_program(
        &self,
        name: &'static str,
        input: &[u8],
        repeat: u32,
    ) -> Result<TestOutcome, DataplaneError> {
        use aya::programs::{Program, TestRun, TestRunOptions};
        // Room for programs that grow the frame (encapsulation) later.
        let mut out = vec![0u8; input.len() + 256];
        let opts = TestRunOptions { data_in: Some(input), data_out: Some(&mut out), repeat, ..TestRunOptions::new() };
        let res = match self.ebpf.program(name).ok_or(DataplaneError::Missing { kind: "program", name })? {
            Program::Xdp(p) => p.test_run(opts)?,
            Program::SchedClassifier(p) => p.test_run(opts)?,
            _ => return Err(DataplaneError::Missing { kind: "XDP or TC program", name }),
        };
        out.truncate(res.data_size_out as usize);
        Ok(TestOutcome { action: res.return_value, output: out, duration: res.duration })
    }

    /// Runs the ingress program in `BPF_PROG_TEST_RUN`'s live-frames mode:
    /// `repeat` fresh copies of `input` arrive as if on `ingress_ifindex`
    /// (of the calling thread's namespace), and what the program redirects
    /// is really sent. Returns the kernel's mean time per frame.
    pub fn test_run_live(
        &self,
        input: &[u8],
        ingress_ifindex: u32,
        repeat: u32,
    ) -> Result<std::time::Duration, DataplaneError> {
        use aya::programs::{TestRun, TestRunAttrs, TestRunOptions};
        let prog: &Xdp = self
            .ebpf
            .program(PROG_INGRESS)
            .ok_or(DataplaneError::Missing { kind: "program", name: PROG_INGRESS })?
            .try_into()?;
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
        let md: [u32; 6] = [0, input.len() as u32, 0, ingress_ifindex, 0, 0];
        let ctx: Vec<u8> = md.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let res = prog.test_run(TestRunOptions {
            data_in: Some(input),
            ctx_in: Some(&ctx),
            repeat,
            attrs: TestRunAttrs::new().xdp_live_frames(64),
            ..TestRunOptions::new()
        })?;
        Ok(res.duration)
    }

    /// Writes `SERVICES[key] = value` bypassing the planner: for fixtures
    /// that need a state the agent never writes (a service pointing at a
    /// missing table).
    pub fn write_service_ref(&mut self, key: ServiceKey, value: ServiceRef) -> Result<(), DataplaneError> {
        let mut services: HashMap<&mut MapData, ServiceKey, ServiceRef> =
            HashMap::try_from(map_mut(&mut self.ebpf, MAP_SERVICES)?)?;
        Ok(services.insert(key, value, 0)?)
    }
}

/// What one `BPF_PROG_TEST_RUN` returned.
#[derive(Clone, Debug)]
pub struct TestOutcome {
    /// The XDP action.
    pub action: u32,
    /// The frame after the program.
    pub output: Vec<u8>,
    /// Mean run time per repetition, as the kernel measured it.
    pub duration: std::time::Duration,
}
