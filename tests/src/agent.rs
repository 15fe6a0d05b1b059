//! The real `splitter` binary as a child process inside a test namespace,
//! started the way a user starts it (`splitter run --config FILE`), stopped
//! with SIGTERM on drop.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};

use crate::netns::{unique_name, NetNs};

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

/// A running agent. Its pin path, control socket and state dir are unique.
pub struct Agent {
    child: Option<Child>,
    pub pin_path: PathBuf,
    pub config_path: PathBuf,
    log_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Agent {
    /// Starts `splitter run` in `ns` with `body` (YAML: interfaces, services...)
    /// plus a unique `pin_path`, `state_dir` and `control.socket`. Returns once
    /// the agent has pinned its counters, or panics with the agent's log.
    pub fn start(ns: &NetNs, body: &str) -> Agent {
        crate::require_root("running the agent");
        let dir = tempfile::tempdir().expect("tempdir");
        let pin_path = PathBuf::from("/sys/fs/bpf").join(unique_name("spt"));
        let config = format!(
            "pin_path: {}\nstate_dir: {}\ncontrol: {{ socket: {} }}\n{body}",
            pin_path.display(),
            dir.path().join("state").display(),
            dir.path().join("splitter.sock").display()
        );
        let config_path = dir.path().join("splitter.yaml");
        fs::write(&config_path, config).expect("write config");
        let log_path = dir.path().join("agent.log");
        let log = fs::File::create(&log_path).expect("agent log");
        let child = ns
            .command(splitter_bin())
            .args(["run", "--config"])
            .arg(&config_path)
            .args(["--stats-every", "0"])
            .env("SPLITTER_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("spawn splitter run");
        let mut agent = Agent { child: Some(child), pin_path, config_path, log_path, _dir: dir };
        agent.wait_ready(Duration::from_secs(20));
        agent
    }

    fn wait_ready(&mut self, limit: Duration) {
        let stats = self.pin_path.join(splitter_common::names::MAP_STATS);
        let start = Instant::now();
        while !stats.exists() {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().expect("try_wait")) {
                panic!("splitter run exited with {status} before it was ready:\n{}", self.log());
            }
            if start.elapsed() > limit {
                panic!("splitter run not ready after {limit:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Everything the agent logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// A `splitter` CLI command aimed at this agent's config.
    pub fn cli(&self) -> Command {
        let mut cmd = Command::new(splitter_bin());
        cmd.env("SPLITTER_LOG", "warn");
        cmd
    }

    /// `splitter status --json` for this agent, parsed.
    pub fn status(&self) -> serde_json::Value {
        let out = self
            .cli()
            .args(["status", "--json", "--config"])
            .arg(&self.config_path)
            .output()
            .expect("run splitter status");
        assert!(
            out.status.success(),
            "splitter status failed: {}\nagent log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        serde_json::from_slice(&out.stdout).expect("status --json prints JSON")
    }

    /// One counter from `status --json`.
    pub fn counter(&self, name: &str) -> u64 {
        let s = self.status();
        s["counters"][name].as_u64().unwrap_or_else(|| panic!("no counter {name} in {s}"))
    }

    /// SIGTERM, then wait (bounded); returns the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("agent already stopped");
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if start.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("splitter run ignored SIGTERM for 10 s:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_dir_all(&self.pin_path);
    }
}
