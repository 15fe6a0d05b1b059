//! The agent as a child process inside a network namespace, started the way a
//! user starts it (`splitter run --config FILE`); dropped, it is stopped and
//! its data path removed with `splitter down`. Used by `splitter demo`, the
//! end-to-end tests and the benches.
//!
//! It knows the agent only from the outside: the binary, the config file it
//! writes, and one raw `status` exchange on the control socket (readiness).
//! [`Rss`] reads a process's resident memory from the outside too (the
//! agent's, a peer proxy's, a test's own).

use std::{
    fs,
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, ExitStatus, Stdio},
    time::Duration,
};

use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};
use thiserror::Error;

use crate::{
    netns::{unique_name, NetNs},
    wait::{wait_until, wait_until_every},
};

/// How long a `status` exchange on the control socket may take.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a stopping agent is looked at (it usually exits within a few ms).
const EXIT_POLL: Duration = Duration::from_millis(20);

#[derive(Debug, Error)]
pub enum AgentProcessError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("splitter run exited ({status}) before it was ready:\n{log}")]
    Exited { status: ExitStatus, log: String },
    #[error("splitter run was not ready after {limit:?}:\n{log}")]
    NotReady { limit: Duration, log: String },
    #[error("splitter run ignored SIGTERM for {0:?}")]
    Hung(Duration),
}

/// A running agent with its own pin path, state dir and control socket under
/// a private directory; everything is removed when it is dropped.
pub struct AgentProcess {
    child: Option<Child>,
    exe: PathBuf,
    /// Extra `splitter run` arguments (e.g. `--workers 1`).
    args: Vec<String>,
    pub pin_path: PathBuf,
    pub config_path: PathBuf,
    /// The agent's control socket.
    pub control_socket: PathBuf,
    log_path: PathBuf,
    dir: PathBuf,
    /// The agent's network namespace (`down` without the agent works there).
    netns: PathBuf,
    /// How the agent is started (limits, environment), each time.
    launch: Launch,
    /// The agent a [`AgentProcess::replace`] stopped, while it drains.
    replaced: Option<Child>,
}

impl AgentProcess {
    /// Writes `body` (interfaces, services...) plus `pin_path`, `state_dir`
    /// and `control.socket` under `dir` into a config file and starts
    /// `exe run` in `ns`. Returns once the agent has pinned its maps.
    pub fn start(exe: &Path, ns: &NetNs, dir: &Path, pin_path: &Path, body: &str) -> Result<Self, AgentProcessError> {
        Self::start_with(exe, ns, dir, pin_path, body, &[])
    }

    /// [`AgentProcess::start_with`] under a name of its own,
    /// `unique_name(prefix)`: its files in `$TMPDIR/splitter-NAME`, its pins
    /// in `/sys/fs/bpf/NAME`.
    pub fn start_unique(
        exe: &Path,
        ns: &NetNs,
        prefix: &str,
        body: &str,
        args: &[&str],
    ) -> Result<Self, AgentProcessError> {
        let (dir, pin_path) = unique_paths(prefix);
        Self::start_with(exe, ns, &dir, &pin_path, body, args)
    }

    /// [`AgentProcess::start_unique`] under an open-file limit of
    /// `open_files` (soft and hard, as `prlimit --nofile` sets it): the
    /// agent cannot raise it.
    pub fn start_unique_limited(
        exe: &Path,
        ns: &NetNs,
        prefix: &str,
        body: &str,
        open_files: u64,
    ) -> Result<Self, AgentProcessError> {
        let (dir, pin_path) = unique_paths(prefix);
        Self::start_inner(exe, ns, &dir, &pin_path, body, &[], Launch { open_files: Some(open_files), env: Vec::new() })
    }

    /// [`AgentProcess::start_unique`] with `env` added to the agent's
    /// environment (each start, restarts too).
    pub fn start_unique_env(
        exe: &Path,
        ns: &NetNs,
        prefix: &str,
        body: &str,
        env: &[(&str, &str)],
    ) -> Result<Self, AgentProcessError> {
        let (dir, pin_path) = unique_paths(prefix);
        let env = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        Self::start_inner(exe, ns, &dir, &pin_path, body, &[], Launch { open_files: None, env })
    }

    /// [`AgentProcess::start`] with extra `splitter run` arguments.
    pub fn start_with(
        exe: &Path,
        ns: &NetNs,
        dir: &Path,
        pin_path: &Path,
        body: &str,
        args: &[&str],
    ) -> Result<Self, AgentProcessError> {
        Self::start_inner(exe, ns, dir, pin_path, body, args, Launch::default())
    }

    fn start_inner(
        exe: &Path,
        ns: &NetNs,
        dir: &Path,
        pin_path: &Path,
        body: &str,
        args: &[&str],
        launch: Launch,
    ) -> Result<Self, AgentProcessError> {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        fs::create_dir_all(dir)?;
        // The body's own `control: { ... }` (one line) joins the socket's.
        let (control, body) = match body.lines().find_map(|l| l.strip_prefix("control: {")) {
            Some(rest) => {
                let line = format!("control: {{{rest}");
                (format!(", {}", rest.trim().trim_end_matches('}').trim()), body.replacen(&line, "", 1))
            }
            None => (String::new(), body.to_owned()),
        };
        let config = format!(
            "pin_path: {}\nstate_dir: {}\ncontrol: {{ socket: {}{control} }}\n{body}",
            pin_path.display(),
            dir.join("state").display(),
            dir.join("splitter.sock").display()
        );
        let config_path = dir.join("splitter.yaml");
        fs::write(&config_path, config)?;
        let log_path = dir.join("agent.log");
        let log = fs::File::create(&log_path)?;
        let child = spawn(exe, ns, &config_path, &args, &launch, log)?;
        let mut agent = AgentProcess {
            child: Some(child),
            exe: exe.to_owned(),
            args,
            pin_path: pin_path.to_owned(),
            config_path,
            control_socket: dir.join("splitter.sock"),
            log_path,
            dir: dir.to_owned(),
            netns: ns.path(),
            launch,
            replaced: None,
        };
        agent.wait_ready(Duration::from_secs(20))?;
        Ok(agent)
    }

    /// Waits until the agent answers `status` on its control socket, which it
    /// serves once the data path is programmed and attached.
    fn wait_ready(&mut self, limit: Duration) -> Result<(), AgentProcessError> {
        let pid = self.pid();
        let seen = wait_until(
            "the agent to answer `status` on its control socket",
            limit,
            || (self.serving_pid(), self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())),
            |(serving, exited)| (serving.is_some() && *serving == pid) || exited.is_some(),
        );
        match seen {
            Ok((serving, _)) if serving.is_some() && serving == pid => Ok(()),
            Ok((_, Some(status))) => Err(AgentProcessError::Exited { status, log: self.log() }),
            Ok((_, None)) | Err(_) => Err(AgentProcessError::NotReady { limit, log: self.log() }),
        }
    }

    /// Stops the agent (SIGTERM) and starts it again on the same config,
    /// state dir and pin path, as an operator's restart does.
    pub fn restart(&mut self, ns: &NetNs) -> Result<(), AgentProcessError> {
        self.stop()?;
        self.start_again(ns)
    }

    /// Starts a stopped (or killed) agent again on the same config, state
    /// dir and pin path; returns once it serves.
    pub fn start_again(&mut self, ns: &NetNs) -> Result<(), AgentProcessError> {
        if self.is_running() {
            return Err(AgentProcessError::Io(std::io::Error::other("the agent is still running")));
        }
        let log = fs::OpenOptions::new().append(true).open(&self.log_path)?;
        self.child = Some(spawn(&self.exe, ns, &self.config_path, &self.args, &self.launch, log)?);
        self.wait_ready(Duration::from_secs(20))
    }

    /// SIGTERM, and at once a new agent on the same config, state dir and
    /// pin path, which takes the l7 listeners over from the stopping one
    /// (as `splitter run` during a drain does); returns once the new agent
    /// serves. The old one drains meanwhile: [`AgentProcess::wait_replaced`].
    pub fn replace(&mut self, ns: &NetNs) -> Result<(), AgentProcessError> {
        let old = self.child.take().ok_or_else(|| AgentProcessError::Io(std::io::Error::other("agent not running")))?;
        let _ = kill(Pid::from_raw(old.id() as i32), Signal::SIGTERM);
        self.replaced = Some(old);
        let log = fs::OpenOptions::new().append(true).open(&self.log_path)?;
        self.child = Some(spawn(&self.exe, ns, &self.config_path, &self.args, &self.launch, log)?);
        self.wait_ready(Duration::from_secs(20))
    }

    /// Waits up to `limit` for the agent [`AgentProcess::replace`] stopped
    /// to finish draining and exit.
    pub fn wait_replaced(&mut self, limit: Duration) -> Result<ExitStatus, AgentProcessError> {
        let old = self.replaced.take().ok_or_else(|| AgentProcessError::Io(std::io::Error::other("none replaced")))?;
        wait_exit(old, limit)
    }

    /// `kill -9`: the agent dies without any cleanup.
    pub fn kill(&mut self) -> Result<ExitStatus, AgentProcessError> {
        let mut child =
            self.child.take().ok_or_else(|| AgentProcessError::Io(std::io::Error::other("agent already stopped")))?;
        child.kill()?;
        Ok(child.wait()?)
    }

    /// The process id the agent on the control socket gives in its answer
    /// to `status` (`None` when nothing answers, or not with a pid): one
    /// JSON line each way, `{"op":"status"}` and `{..., "agent": {"pid": N, ...}}`.
    pub fn serving_pid(&self) -> Option<u32> {
        let mut stream = UnixStream::connect(&self.control_socket).ok()?;
        stream.set_read_timeout(Some(STATUS_TIMEOUT)).ok()?;
        stream.write_all(b"{\"op\":\"status\"}\n").ok()?;
        let mut answer = String::new();
        BufReader::new(&stream).read_line(&mut answer).ok()?;
        let answer: serde_json::Value = serde_json::from_str(&answer).ok()?;
        answer["agent"]["pid"].as_u64().and_then(|pid| u32::try_from(pid).ok())
    }

    /// `splitter down --config FILE` in the agent's namespace: through the
    /// agent if it runs, else from the pins (and the namespace's interface
    /// holding l7 addresses). Returns the command's output when it fails.
    pub fn down(&mut self) -> Result<(), AgentProcessError> {
        let out = std::process::Command::new("nsenter")
            .arg(format!("--net={}", self.netns.display()))
            .arg("--")
            .arg(&self.exe)
            .args(["down", "--config"])
            .arg(&self.config_path)
            .env("SPLITTER_LOG", "warn")
            .output()?;
        if !out.status.success() {
            return Err(AgentProcessError::Io(std::io::Error::other(format!(
                "splitter down failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ))));
        }
        if let Some(child) = self.child.take() {
            // The agent exits once the data path is gone.
            wait_exit(child, Duration::from_secs(10))?;
        }
        Ok(())
    }

    /// Everything the agent logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Sends SIGHUP: the agent re-reads its config file.
    pub fn reload(&self) -> Result<(), AgentProcessError> {
        let child = self.child.as_ref().ok_or_else(|| std::io::Error::other("agent not running"))?;
        kill(Pid::from_raw(child.id() as i32), Signal::SIGHUP).map_err(std::io::Error::from)?;
        Ok(())
    }

    /// The agent's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the agent process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGTERM, then wait up to 10 s; returns the exit status.
    pub fn stop(&mut self) -> Result<ExitStatus, AgentProcessError> {
        let Some(child) = self.child.take() else {
            return Err(AgentProcessError::Io(std::io::Error::other("agent already stopped")));
        };
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        wait_exit(child, Duration::from_secs(10))
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if let Some(mut old) = self.replaced.take() {
            let _ = old.kill();
            let _ = old.wait();
        }
        if self.down().is_err() {
            if self.child.is_some() {
                let _ = self.stop();
            }
            // Unpinning the links detaches them; the rest are maps.
            let _ = fs::remove_dir_all(&self.pin_path);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Waits up to `limit` for `child` to exit; one that does not is killed
/// (and reaped) and reported as hung.
fn wait_exit(mut child: Child, limit: Duration) -> Result<ExitStatus, AgentProcessError> {
    let exited =
        wait_until_every("the agent to exit", limit, EXIT_POLL, || child.try_wait(), |r| !matches!(r, Ok(None)));
    match exited {
        Ok(Ok(Some(status))) => Ok(status),
        Ok(Err(e)) => Err(e.into()),
        Ok(Ok(None)) | Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(AgentProcessError::Hung(limit))
        }
    }
}

/// A private directory and pin path named `unique_name(prefix)`:
/// `$TMPDIR/splitter-NAME` and `/sys/fs/bpf/NAME`.
/// How an agent is started.
#[derive(Clone, Debug, Default)]
struct Launch {
    /// The open-file limit it runs under (soft and hard), when set.
    open_files: Option<u64>,
    /// Added to its environment.
    env: Vec<(String, String)>,
}

fn unique_paths(prefix: &str) -> (PathBuf, PathBuf) {
    let name = unique_name(prefix);
    (std::env::temp_dir().join(format!("splitter-{name}")), PathBuf::from("/sys/fs/bpf").join(&name))
}

fn spawn(
    exe: &Path,
    ns: &NetNs,
    config_path: &Path,
    args: &[String],
    launch: &Launch,
    log: fs::File,
) -> Result<Child, AgentProcessError> {
    let mut cmd = match launch.open_files {
        Some(n) => {
            let mut c = ns.command("prlimit");
            c.arg(format!("--nofile={n}:{n}")).arg("--").arg(exe);
            c
        }
        None => ns.command(exe),
    };
    Ok(cmd
        .args(["run", "--stats-every", "0", "--config"])
        .arg(config_path)
        .args(args)
        .env("SPLITTER_LOG", std::env::var("SPLITTER_LOG").unwrap_or_else(|_| "info".into()))
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?)
}

/// A process's resident memory, KiB: all of it, and the anonymous part
/// (heap, stacks: what the process allocated, where the rest is its
/// binary's and libraries' pages, shared with every copy and given back
/// under pressure).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rss {
    pub total: u64,
    pub anon: u64,
}

impl Rss {
    /// From `/proc/PID/status` (`VmRSS`, `RssAnon`).
    pub fn of(pid: u32) -> Rss {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"))
        };
        Rss { total: field("VmRSS:"), anon: field("RssAnon:") }
    }
}

impl std::ops::Add for Rss {
    type Output = Rss;
    fn add(self, o: Rss) -> Rss {
        Rss { total: self.total + o.total, anon: self.anon + o.anon }
    }
}
