//! The real `splitter` binary as a child process inside a test namespace
//! (`splitter_testkit::agent_process`), with unique paths, and helpers to
//! read its state through the CLI (as an operator would) and the control
//! socket's typed answer.

use std::{
    fmt::Debug,
    ops::{Deref, DerefMut},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use splitter_common::stats::Stat;
use splitter_testkit::{agent_process::AgentProcess, netns::NetNs, wait::wait_until};
use splitter_user::{
    control::{request, AgentInfo, Request},
    status::Report,
};

/// Path of the `splitter` binary built next to the test executables
/// (`target/<profile>/splitter`), or `$SPLITTER_BIN`.
pub fn splitter_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SPLITTER_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe.parent().and_then(Path::parent).expect("test binary lives in target/<profile>/deps");
    let bin = profile_dir.join("splitter");
    assert!(
        bin.exists(),
        "{} does not exist: build it first (`cargo build -p splitter-user`; `cargo xtask test` does)",
        bin.display()
    );
    bin
}

/// The release `splitter` binary the benchmarks drive (`cargo xtask bench`
/// builds it).
pub fn release_bin() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/splitter");
    assert!(bin.exists(), "{} missing: `cargo xtask bench` builds it", bin.display());
    bin
}

/// A running agent; panics with the agent's log when it cannot start.
pub struct Agent(AgentProcess);

impl Deref for Agent {
    type Target = AgentProcess;
    fn deref(&self) -> &AgentProcess {
        &self.0
    }
}

impl DerefMut for Agent {
    fn deref_mut(&mut self) -> &mut AgentProcess {
        &mut self.0
    }
}

impl Agent {
    /// Starts `splitter run` in `ns` with `body` (YAML: interfaces,
    /// services...) and a unique pin path, state dir and control socket.
    pub fn start(ns: &NetNs, body: &str) -> Agent {
        crate::require_root("running the agent");
        Agent(AgentProcess::start_unique(&splitter_bin(), ns, "spt", body, &[]).unwrap_or_else(|e| panic!("{e}")))
    }

    /// [`Agent::start`] with `args` added to `splitter run`'s.
    pub fn start_args(ns: &NetNs, body: &str, args: &[&str]) -> Agent {
        crate::require_root("running the agent");
        Agent(AgentProcess::start_unique(&splitter_bin(), ns, "spt", body, args).unwrap_or_else(|e| panic!("{e}")))
    }

    /// [`Agent::start`] with `env` added to the agent's environment.
    pub fn start_env(ns: &NetNs, body: &str, env: &[(&str, &str)]) -> Agent {
        crate::require_root("running the agent");
        Agent(AgentProcess::start_unique_env(&splitter_bin(), ns, "spt", body, env).unwrap_or_else(|e| panic!("{e}")))
    }

    /// [`Agent::start`] under an open-file limit of `open_files` (soft and
    /// hard: the agent cannot raise it), as systemd's default soft limit
    /// would leave an agent that did not raise its own.
    pub fn start_limited(ns: &NetNs, body: &str, open_files: u64) -> Agent {
        crate::require_root("running the agent");
        Agent(
            AgentProcess::start_unique_limited(&splitter_bin(), ns, "spt", body, open_files)
                .unwrap_or_else(|e| panic!("{e}")),
        )
    }

    /// What the agent says about itself on its control socket (`None` when
    /// nothing answers).
    pub fn info(&self) -> Option<AgentInfo> {
        request(&self.control_socket, &Request::Status).ok()?.agent
    }

    /// Waits (bounded by `limit`) until `done` accepts what `probe` sees of
    /// this agent, and returns that; panics with what it awaited, what it saw
    /// last and the agent's log.
    #[track_caller]
    pub fn eventually<V: Debug>(
        &self,
        what: &str,
        limit: Duration,
        probe: impl FnMut() -> V,
        done: impl FnMut(&V) -> bool,
    ) -> V {
        wait_until(what, limit, probe, done).unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", self.log()))
    }

    /// Writes `body` as the agent's config (keeping the paths the harness
    /// put before it), sends SIGHUP and waits (bounded) until the agent
    /// logged the outcome of this reload; returns that log line (`reloaded`
    /// or `reload refused`).
    #[track_caller]
    pub fn reload_with(&self, body: &str) -> String {
        let outcomes = |log: &str| {
            log.lines()
                .filter(|l| l.contains(": reloaded") || l.contains("reload refused"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        let before = outcomes(&self.log()).len();
        let text = std::fs::read_to_string(&self.config_path).expect("the agent's config");
        let start = text.find("interfaces:").expect("the agent's config has its interfaces");
        std::fs::write(&self.config_path, format!("{}{}", &text[..start], body.trim_start())).expect("config written");
        self.reload().expect("SIGHUP");
        let log = self.eventually(
            &format!("the outcome of reload {}", before + 1),
            Duration::from_secs(10),
            || self.log(),
            |log| outcomes(log).len() > before,
        );
        outcomes(&log)[before].clone()
    }

    /// A `splitter` CLI command.
    pub fn cli(&self) -> Command {
        let mut cmd = Command::new(splitter_bin());
        cmd.env("SPLITTER_LOG", "warn");
        cmd
    }

    /// Runs `splitter ARGS --socket SOCKET` against this agent: whether it
    /// succeeded, its stdout and its stderr.
    pub fn control(&self, args: &[&str]) -> (bool, String, String) {
        let out = self.cli().args(args).arg("--socket").arg(&self.control_socket).output().expect("run splitter");
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
    }

    /// `splitter status --json --config FILE` for this agent, parsed.
    pub fn status(&self) -> Report {
        self.try_status().unwrap_or_else(|e| panic!("{e}\nagent log:\n{}", self.log()))
    }

    /// [`Agent::status`], or what went wrong.
    pub fn try_status(&self) -> Result<Report, String> {
        let out = self
            .cli()
            .args(["status", "--json", "--config"])
            .arg(&self.config_path)
            .output()
            .map_err(|e| format!("running splitter status: {e}"))?;
        if !out.status.success() {
            return Err(format!("splitter status failed: {}", String::from_utf8_lossy(&out.stderr)));
        }
        serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("status --json prints a Report ({e}): {}", String::from_utf8_lossy(&out.stdout)))
    }

    /// The live basis points of each version of `service` (in the file's
    /// order) from `status --json`; panics unless the service is live.
    pub fn live_bps(&self, service: &str) -> Vec<u32> {
        let s = self.status();
        let svc = s.service(service).unwrap_or_else(|| panic!("no service {service} in {s:?}"));
        svc.live_bps().into_iter().map(|bps| bps.unwrap_or_else(|| panic!("{service} is not live: {svc:?}"))).collect()
    }

    /// One data-path counter from `status --json`.
    pub fn counter(&self, stat: Stat) -> u64 {
        let s = self.status();
        s.counter(stat).unwrap_or_else(|| panic!("no counter {} in {:?}", stat.name(), s.counters))
    }

    /// Stops the agent with SIGTERM and returns whether it exited cleanly.
    pub fn stop_ok(&mut self) -> bool {
        let status = self.0.stop().unwrap_or_else(|e| panic!("{e}"));
        status.success()
    }
}
