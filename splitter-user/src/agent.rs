//! `splitter run`: the agent. It starts (validate and plan, lock the state
//! dir, load and program the data path, attach, pin), then serves one event
//! at a time until SIGINT/SIGTERM or a `down` request: the [`Agent`] holds
//! everything it serves and has one method per event. Where its desired
//! state lives — this host's file and `state_dir`, or a store several nodes
//! share — is a [`backing::Backing`] of two implementations.

use std::{
    collections::BTreeMap,
    fs::File,
    path::Path,
    time::{Duration, Instant, SystemTime},
};

use splitter_common::names::{PROG_INGRESS, PROG_MIRROR};
use splitter_model::{
    aging,
    config::{Config, Mode},
    observe::{self, History},
    plan::{service_key, PlanError},
    rollout::{self, State},
    runtime::Runtime,
};
use thiserror::Error;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tracing::{debug, error, info, warn};

mod analysis;
mod backing;
mod control_http;
mod control_socket;
mod dashboard;
mod handover;
mod health;
mod measure;
mod metrics_http;
mod node;
mod serving;
mod standalone;
mod systemd;
mod webhooks;

use self::{
    backing::{Backing, Opened},
    measure::Sources,
    serving::{log_plans, AgentCounters, Serving},
};
use crate::{
    config_file::ConfigFile as _,
    control::{AgentInfo, Request, RequestError, Response},
    dataplane::{ensure_bpffs, AttachMode, Attached, Counters, Dataplane, DataplaneError, PinnedMaps},
    l7::L7,
    link_watch::{self, LinkAction, LinkEvent},
    metrics::Scrape,
};

#[derive(Debug, Error)]
pub enum AgentError {
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("state dir {path}: {source}")]
    StateDir { path: std::path::PathBuf, source: std::io::Error },
    #[error("another splitter agent holds {path}; give each agent its own state_dir (and pin_path, control.socket)")]
    Locked { path: std::path::PathBuf },
    #[error(transparent)]
    L7(#[from] crate::l7::L7Error),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error("interfaces {0:?} do not exist in this network namespace; nothing was loaded or attached")]
    NoSuchInterfaces(Vec<String>),
    #[error("control socket {path}: {source}")]
    Control { path: std::path::PathBuf, source: std::io::Error },
    #[error("installing signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("metrics.listen {addr}: {source} (is another process listening there?)")]
    Metrics { addr: std::net::SocketAddr, source: std::io::Error },
    /// `control.http`: its token, certificates or listener.
    #[error("{0}")]
    ControlHttp(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Desired(#[from] splitter_model::cluster::DesiredError),
    #[error(transparent)]
    LocalAddrs(#[from] crate::local_addrs::LocalAddrError),
    #[error(transparent)]
    Announce(#[from] crate::announce::AnnounceError),
    #[error("another splitter agent holds {path}, and {source}; give each agent its own state_dir (and pin_path, control.socket), or stop the running one first")]
    Handover { path: std::path::PathBuf, source: handover::HandoverError },
}

/// Why a runtime change was not made. In every case nothing changed.
#[derive(Debug, Error)]
pub enum CommitError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Desired(#[from] splitter_model::cluster::DesiredError),
    #[error("could not save the change, nothing changed: {0}")]
    Save(crate::state::StateError),
    #[error("applying the change failed, nothing changed: {0}")]
    Apply(Box<AgentError>),
    #[error(
        "another change reached the store at {endpoints} first{by}; nothing of this one changed: look (`splitter status`) and try again"
    )]
    Lost { endpoints: String, by: String },
    #[error("{0}; nothing changed (every node keeps serving the last applied state)")]
    Store(crate::store::StoreError),
}

/// Options of `splitter run` that are not in the config file.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub xdp_mode: AttachMode,
    pub stats_every: Duration,
    /// Where the config came from: SIGHUP reads it again.
    pub config_path: std::path::PathBuf,
    /// `--socket` from the command line, which outlives reloads.
    pub socket_override: Option<std::path::PathBuf>,
    /// `--takeover`: if an agent runs on this state dir, ask it for its l7
    /// listeners and to stop (a stopping one hands them over anyway).
    pub takeover: bool,
}

/// Why a reload was refused (the running configuration stays as it was).
#[derive(Debug, Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] crate::config_file::ConfigFileError),
    #[error("{0} changed; that takes a restart (the reload changed nothing)")]
    NeedsRestart(&'static str),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error(transparent)]
    Desired(#[from] splitter_model::cluster::DesiredError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("another change reached the store first; save the file again")]
    Lost,
    #[error("the config file's reader failed: {0}")]
    Reader(#[from] tokio::task::JoinError),
}

/// The running agent: what it serves, where its desired state lives, and
/// what it measures. Each event the loop receives is one method call.
struct Agent<B: Backing> {
    /// The config served (the file, or the file with a store's services),
    /// before runtime changes.
    config: Config,
    runtime: Runtime,
    opts: RunOptions,
    serving: Serving,
    backing: B,
    sources: Sources,
    /// Counts sampled every few seconds: the observed split `status` shows.
    history: History,
    /// The data-path counters at the last periodic log line.
    last_stats: Counters,
    /// The config file's text as last applied (an edit that changes
    /// nothing is not a reload).
    last_text: String,
    last_rollout_tick: Instant,
    /// Index of each interface the agent serves (clients, backends, mirror
    /// interfaces) when it last attached there; `None` while it is missing.
    links: BTreeMap<String, Option<u32>>,
    /// Endpoint health: trackers, checks, passive counts.
    health: health::HealthState,
    /// The state dir's lock: given up when the listeners are handed over.
    lock: Option<nix::fcntl::Flock<File>>,
    /// The control socket's accept loop (stopped at a hand-over, so the
    /// new agent can bind the path).
    control_task: Option<tokio::task::JoinHandle<()>>,
    /// `/metrics` (stopped when the agent stops: the new one binds it).
    metrics_task: Option<tokio::task::JoinHandle<()>>,
    /// Rollout steps' analysis verdicts (`analysis:`), and the asking.
    step_analysis: analysis::Steps,
    /// Rollout gates' webhook answers, and the asking.
    gate_hooks: webhooks::Hooks,
    /// The HTTP control API (`control.http`), while it serves.
    control_http_task: Option<tokio::task::JoinHandle<()>>,
}

/// Why the loop ended.
enum Exit {
    /// SIGTERM/SIGINT: the data path stays; l7 connections drain.
    Stop,
    /// `down`: the data path goes, then the request is answered.
    Down(tokio::net::UnixStream),
    /// A new agent takes the l7 listeners over (`--takeover`).
    Handover(tokio::net::UnixStream),
}

/// How long a stopping agent with no l7 connection left still keeps its
/// listeners for a new agent to take (at most `l7.drain_timeout`).
const HANDOVER_WAIT: Duration = Duration::from_secs(2);

/// The event sources the loop waits on that are not the agent's own state.
struct Events {
    /// Whole control requests, from the socket's own tasks.
    calls: tokio::sync::mpsc::Receiver<control_socket::Call>,
    sigterm: Signal,
    sigint: Signal,
    sighup: Signal,
    /// Kept alive for the file events it sends.
    _watcher: Option<notify::RecommendedWatcher>,
    file_events: tokio::sync::mpsc::UnboundedReceiver<()>,
    /// When a burst of file events has settled.
    reload_due: Option<tokio::time::Instant>,
    kernel_log: Option<tokio::io::unix::AsyncFd<crate::dataplane::KernelLog>>,
    /// Interfaces created and deleted in the agent's namespace.
    links: Option<tokio::sync::mpsc::UnboundedReceiver<LinkEvent>>,
    /// Requests on the metrics listener: scrapes and dashboard polls.
    looks: tokio::sync::mpsc::Receiver<metrics_http::Look>,
    stats: tokio::time::Interval,
    stats_every: Duration,
    sweep: tokio::time::Interval,
    rollout_tick: tokio::time::Interval,
    sampling: tokio::time::Interval,
    /// Active checks' results.
    probes: tokio::sync::mpsc::Receiver<crate::health::Probe>,
    /// Endpoints the proxy's passive checks eject.
    ejections: tokio::sync::mpsc::UnboundedReceiver<crate::l7::Ejection>,
    /// Ejections ending, trackers kept to the config, l4 passive checks.
    health_tick: tokio::time::Interval,
    /// Rollout steps' analysis, asked off the loop.
    analysis: tokio::sync::mpsc::UnboundedReceiver<analysis::Done>,
    /// Rollout gates' webhooks, asked off the loop.
    hooks: tokio::sync::mpsc::UnboundedReceiver<webhooks::Done>,
    /// systemd's watchdog, pinged from the loop (`WatchdogSec`).
    watchdog: Option<tokio::time::Interval>,
}

/// Runs the agent until SIGINT/SIGTERM (it exits and the pinned data path
/// keeps serving) or a `down` request (it removes the data path, then exits).
pub async fn run(config: Config, opts: RunOptions) -> Result<(), AgentError> {
    let (lock, inherited) = acquire(&config, opts.takeover).await?;
    if config.store.is_some() {
        let (agent, events) = Agent::<node::StoreNode>::start(config, opts, lock, inherited).await?;
        agent.serve(events).await
    } else {
        let (agent, events) = Agent::<standalone::Standalone>::start(config, opts, lock, inherited).await?;
        agent.serve(events).await
    }
}

/// The state dir's lock, and the l7 listeners of the agent this one
/// replaces: when another agent holds the lock and is stopping (or with
/// `takeover`), it hands its listeners over and gives the lock up.
async fn acquire(
    config: &Config,
    takeover: bool,
) -> Result<(nix::fcntl::Flock<File>, Vec<(std::net::SocketAddr, std::net::TcpListener)>), AgentError> {
    // An agent sent SIGTERM a moment ago may not have begun stopping yet,
    // or may be exiting (one with nothing to drain): ask, and try the lock,
    // again for a little while.
    let asking_until = Instant::now() + HANDOVER_WAIT;
    let listeners = loop {
        let path = match lock_state_dir(&config.state_dir) {
            Ok(lock) => return Ok((lock, Vec::new())),
            Err(AgentError::Locked { path }) => path,
            Err(e) => return Err(e),
        };
        let socket = config.control.socket.clone();
        let taken = tokio::task::spawn_blocking(move || handover::take(&socket, takeover))
            .await
            .expect("the hand-over task does not panic");
        match taken {
            Ok(listeners) => break listeners,
            Err(handover::HandoverError::Running { .. } | handover::HandoverError::Io { .. })
                if Instant::now() < asking_until =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(source) => return Err(AgentError::Handover { path, source }),
        }
    };
    // The old agent gives the lock up right after handing over.
    let deadline = Instant::now() + Duration::from_secs(5);
    let lock = loop {
        match lock_state_dir(&config.state_dir) {
            Ok(lock) => break lock,
            Err(AgentError::Locked { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e),
        }
    };
    info!(listeners = listeners.len(), "took the l7 listeners over from the agent that is stopping");
    Ok((lock, listeners))
}

impl<B: Backing> Agent<B> {
    /// Everything before serving: the backing's state, checks, listeners,
    /// the data path loaded (adopting what is pinned), programmed and
    /// attached, the l7 side bound.
    async fn start(
        file: Config,
        opts: RunOptions,
        lock: nix::fcntl::Flock<File>,
        inherited: Vec<(std::net::SocketAddr, std::net::TcpListener)>,
    ) -> Result<(Agent<B>, Events), AgentError> {
        let started = SystemTime::now();
        let started_unix = started.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let Opened { backing, config, runtime } = B::open(&file, started_unix).await?;
        let (effective, dropped) = runtime.clone().effective(&config);
        for name in &dropped {
            warn!(service = %name, "saved runtime changes no longer fit the file's service; the file applies");
        }
        check_interfaces(&effective)?;
        let control = control_socket::bind(&config.control.socket)?;
        let metrics_listener = match &config.metrics {
            Some(m) => {
                Some(crate::metrics::bind(m.listen).map_err(|source| AgentError::Metrics { addr: m.listen, source })?)
            }
            None => None,
        };
        let control_http = config.control.http.as_ref().map(control_http::prepare).transpose()?;
        ensure_bpffs(&config.pin_path)?;
        let services: Vec<_> = effective
            .services
            .iter()
            .map(|(name, svc)| (name.clone(), service_key(svc), svc.versions.keys().cloned().collect()))
            .collect();
        let (dp, adoption) = Dataplane::load_pinned(config.flow_table_size, &config.pin_path, &services)?;
        if !adoption.reused.is_empty() {
            info!(
                maps = adoption.reused.join(","),
                services = adoption.services,
                "adopted the pinned data path: flows, counters and live tables carry over"
            );
        }
        for (map, why) in &adoption.replaced {
            warn!(map, "pinned map does not fit this build ({why}); replaced with a fresh one");
        }
        if let Some(r) = adoption.resized {
            info!(from = r.from, to = r.to, copied = r.copied, "flow table resized: its flows copied into the new one");
        }
        for map in &adoption.retired {
            info!(map, "removed a map an earlier build pinned and this one no longer uses");
        }
        // Planned from what the kernel (or the store) has now, so a restart moves no flow.
        let plans = backing.first_plans(&effective, &dp)?;
        // Endpoints the kernel's tables have out of service stay out until
        // their checks bring them back: a restart does not flap.
        let (health, probes) = health::HealthState::start(&effective, &dp);
        let mut l7 = L7::new(config.l7.clone(), l7_connection_budget());
        l7.inherit(inherited);
        let ejections = l7.take_ejections().expect("a new proxy's");
        let mut serving = Serving {
            dp,
            l7,
            local: crate::local_addrs::Keeper::new(config.local_addresses.clone()),
            announce: None,
            announcing: false,
            counters: AgentCounters::default(),
            down: health.down(),
            installed: None,
        };
        // The same all-or-nothing install as every later change.
        serving.install(&effective, &plans)?;
        log_plans(&plans);
        // Subscribed before attaching: an interface that comes back while
        // the agent starts is not missed.
        let links = match link_watch::watch() {
            Ok(rx) => Some(rx),
            Err(e) => {
                warn!("not watching interfaces ({e}): one that is deleted and comes back needs an agent restart");
                None
            }
        };
        let dp = &mut serving.dp;
        attach(dp, &config, opts.xdp_mode)?;
        let served_links = data_interfaces(&config)
            .into_iter()
            .chain(effective.mirror_interfaces())
            .map(|i| {
                let index = nix::net::if_::if_nametoindex(i.as_str()).ok();
                (i, index)
            })
            .collect();
        check_forwarding(&config);
        let kernel_log = match dp.kernel_log().and_then(|l| {
            // SAFETY: the fd is the ring buffer map's, owned by the logger, which
            // the AsyncFd owns until it is dropped; it always returns that fd.
            unsafe { tokio::io::unix::AsyncFd::register_with_interest(l, tokio::io::Interest::READABLE) }
                .map_err(|e| DataplaneError::KernelLog(e.to_string()))
        }) {
            Ok(l) => Some(l),
            Err(e) => {
                warn!("kernel events will not be logged (they are still counted): {e}");
                None
            }
        };
        let l7_services = effective.services.values().filter(|s| s.mode == Mode::L7).count();
        info!(
            pin_path = %config.pin_path.display(),
            services = effective.services.len(),
            l4 = effective.services.len() - l7_services,
            l7 = l7_services,
            "splitter running"
        );
        let (watcher, file_events) = watch_config(&opts.config_path);
        let last_text = std::fs::read_to_string(&opts.config_path).unwrap_or_default();
        let stats_every =
            if opts.stats_every.is_zero() { Duration::from_secs(365 * 24 * 3600) } else { opts.stats_every };
        let last_stats = dp.stats()?;
        let (looks_tx, looks) = tokio::sync::mpsc::channel(16);
        let (calls_tx, calls) = tokio::sync::mpsc::channel(8);
        let (step_analysis, analysis_done) = analysis::Steps::new();
        let (gate_hooks, hooks_done) = webhooks::Hooks::new();
        let control_http_task = control_http.map(|l| tokio::spawn(control_http::serve(l, calls_tx.clone())));
        let control_task = tokio::spawn(control_socket::serve(control, calls_tx));
        let mut events = Events {
            calls,
            sigterm: signal(SignalKind::terminate()).map_err(AgentError::Signals)?,
            sigint: signal(SignalKind::interrupt()).map_err(AgentError::Signals)?,
            sighup: signal(SignalKind::hangup()).map_err(AgentError::Signals)?,
            _watcher: watcher,
            file_events,
            reload_due: None,
            kernel_log,
            links,
            looks,
            stats: tokio::time::interval(stats_every),
            stats_every,
            sweep: tokio::time::interval(Duration::from_secs(config.flow_aging.sweep_secs)),
            // Rollouts are judged every second.
            rollout_tick: tokio::time::interval(Duration::from_secs(1)),
            sampling: tokio::time::interval(observe::SAMPLE_EVERY),
            probes,
            ejections,
            health_tick: tokio::time::interval(Duration::from_secs(1)),
            analysis: analysis_done,
            hooks: hooks_done,
            watchdog: systemd::watchdog_every().map(tokio::time::interval),
        };
        // Every interval's first tick is now: skip it.
        events.stats.tick().await;
        events.sweep.tick().await;
        events.sampling.tick().await;
        events.health_tick.tick().await;
        if health.checked() > 0 {
            info!(endpoints = health.checked(), "checking endpoint health");
        }
        let mut agent = Agent {
            sources: Sources {
                pinned: PinnedMaps::open(&config.pin_path)?,
                active_flows: Default::default(),
                flow_entries: None,
                started,
            },
            config,
            runtime,
            opts,
            serving,
            backing,
            history: History::new(observe::MAX_WINDOW),
            last_stats,
            last_text,
            last_rollout_tick: Instant::now(),
            links: served_links,
            health,
            lock: Some(lock),
            control_task: Some(control_task),
            metrics_task: None,
            control_http_task,
            step_analysis,
            gate_hooks,
        };
        // Attached and serving: now the VIPs may be routed here.
        agent.serving.announcing = true;
        let (effective, _) = agent.runtime.clone().effective(&agent.config);
        agent.serving.announce(&effective)?;
        // The first sample before the control socket answers anything: the
        // window then covers everything since the start.
        agent.on_sample();
        agent.rebase_rollouts();
        // Detached: it stops with the runtime.
        crate::heap::spawn_trimmer();
        match metrics_listener {
            Some(listener) => {
                info!(listen = %listener.local_addr().map_or_else(|e| e.to_string(), |a| a.to_string()), "metrics at /metrics, the dashboard at /");
                agent.metrics_task = Some(tokio::spawn(metrics_http::serve(listener, looks_tx)));
            }
            None => drop(looks_tx),
        }
        Ok((agent, events))
    }

    /// The loop: one event at a time, each handled by one method.
    async fn serve(mut self, mut ev: Events) -> Result<(), AgentError> {
        let mut probes = Vec::new();
        let keeps_serving = "the data path keeps serving the last state from the pins; `splitter down` removes it";
        systemd::ready(&format!("serving {} services", self.config.services.len()));
        let exit = loop {
            tokio::select! {
                _ = ev.sigterm.recv() => { info!("SIGTERM: agent exiting; {keeps_serving}"); break Exit::Stop; }
                _ = ev.sigint.recv() => { info!("SIGINT: agent exiting; {keeps_serving}"); break Exit::Stop; }
                Some(call) = ev.calls.recv() => match call {
                    control_socket::Call::Ask { request, reply } => {
                        let _ = reply.send(self.on_control(request).await);
                    }
                    control_socket::Call::Down { stream } => break Exit::Down(stream),
                    control_socket::Call::Handover { stream, takeover: true } => {
                        info!("a new agent takes over: stopping; {keeps_serving}");
                        break Exit::Handover(stream);
                    }
                    control_socket::Call::Handover { mut stream, takeover: false } => {
                        let refuse = Response::fail(format!(
                            "{}: stop it first (SIGTERM), or start the new one with `splitter run --takeover`",
                            handover::RUNNING
                        ));
                        control_socket::respond(&mut stream, &refuse).await;
                    }
                },
                Ok(mut guard) = async { ev.kernel_log.as_mut().expect("guarded").readable_mut().await }, if ev.kernel_log.is_some() => {
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
                Some(event) = async { ev.links.as_mut().expect("guarded").recv().await }, if ev.links.is_some() => {
                    self.on_link(event).await;
                }
                event = self.backing.event() => {
                    self.backing.on_event(event, &mut self.config, &mut self.runtime, &mut self.serving);
                }
                _ = ev.sighup.recv() => {
                    self.last_text = std::fs::read_to_string(&self.opts.config_path).unwrap_or_default();
                    self.on_reload("SIGHUP").await;
                }
                Some(()) = ev.file_events.recv() => {
                    // Editors write in bursts (truncate, write, rename): settle
                    // first, without holding up the loop.
                    ev.reload_due = Some(tokio::time::Instant::now() + Duration::from_millis(200));
                }
                _ = async { tokio::time::sleep_until(ev.reload_due.expect("guarded")).await }, if ev.reload_due.is_some() => {
                    ev.reload_due = None;
                    self.on_file_changed().await;
                }
                _ = ev.sweep.tick() => self.on_sweep(),
                _ = ev.rollout_tick.tick() => self.on_rollout_tick().await,
                _ = ev.sampling.tick() => self.on_sample(),
                n = ev.probes.recv_many(&mut probes, 1024) => {
                    if n > 0 {
                        self.on_probes(probes.drain(..));
                    }
                }
                Some(ejection) = ev.ejections.recv() => self.on_ejection(ejection),
                _ = ev.health_tick.tick() => self.on_health_tick(),
                Some(done) = ev.analysis.recv() => self.step_analysis.done(done),
                Some(done) = ev.hooks.recv() => self.gate_hooks.done(done),
                Some(look) = ev.looks.recv() => match look {
                    metrics_http::Look::Scrape(reply) => {
                        let _ = reply.send(self.on_scrape());
                    }
                    metrics_http::Look::Dashboard(reply) => {
                        let _ = reply.send((self.agent_info(), self.serving.l7.all_diffs()));
                    }
                },
                _ = ev.stats.tick() => self.on_stats_tick(ev.stats_every)?,
                _ = async { ev.watchdog.as_mut().expect("guarded").tick().await }, if ev.watchdog.is_some() => systemd::watchdog(),
            }
        };
        systemd::stopping(match exit {
            Exit::Stop => "stopping; the data path keeps serving",
            Exit::Down(_) => "removing the data path",
            Exit::Handover(_) => "handing the l7 listeners over",
        });
        self.stop(exit, ev).await
    }

    /// A control request: a read (status, diffs) or a change (weight,
    /// flip, rollback, mirror, rollout). (`down` ends the loop.)
    async fn on_control(&mut self, request: Result<Request, RequestError>) -> Response {
        let op = request.as_ref().map_or("bad_request", Request::op);
        let response = match request {
            Ok(Request::Status) => self.status(),
            Ok(Request::Down) => Response::fail("`down` is answered by the loop".into()),
            Ok(Request::Diffs { service }) => match self.serving.l7.diffs(&service) {
                Some(report) => Response { diffs: Some(report), ..Response::ok(service) },
                None => Response::fail(format!("{service:?} is not an l7 service of this agent")),
            },
            Ok(Request::Analysis { service, window_secs }) => self.analysis(&service, window_secs),
            Ok(Request::Rollout { service, action }) => self.on_rollout(&service, action).await,
            Ok(Request::Node { action }) => self.on_node(action),
            Ok(req) => self.on_change(req).await,
            Err(e) => {
                warn!("{e}");
                Response::fail(e.to_string())
            }
        };
        self.serving.counters.control(op, &response);
        response
    }

    /// What `status` asks the agent: who it is, what it serves, the
    /// observed split.
    fn status(&self) -> Response {
        Response { agent: Some(self.agent_info()), ..Response::ok("running".into()) }
    }

    /// Who is running and what it serves: what `status` answers.
    fn agent_info(&self) -> AgentInfo {
        let now = self.counts(|_| true);
        let observed = self.history.window(Instant::now(), &now, observe::STATUS_WINDOW);
        let mut info = measure::agent_info(
            &self.config,
            &self.runtime,
            &self.opts,
            self.sources.started,
            &self.serving.l7,
            observed,
        );
        info.cluster = self.backing.info();
        let (effective, _) = self.runtime.clone().effective(&self.config);
        info.health = self.health.report(&effective);
        info.announce = self.serving.announce.as_ref().map(|a| a.info());
        info
    }

    /// `splitter node drain|undrain`: recorded first (a restart keeps it),
    /// then the VIPs withdrawn or announced.
    fn on_node(&mut self, action: crate::control::NodeAction) -> Response {
        let drain = action == crate::control::NodeAction::Drain;
        let Some(announcer) = self.serving.announce.as_mut() else {
            return Response::fail("this agent announces nothing: its config has no `announce:` section".into());
        };
        if announcer.drained() == drain {
            let state = if drain { "already drained" } else { "not drained" };
            return Response { agent: Some(self.agent_info()), ..Response::ok(format!("node {state}; nothing to do")) };
        }
        if let Err(e) = announcer.set_drained(drain) {
            return Response::fail(format!("{e}; nothing changed"));
        }
        let (effective, _) = self.runtime.clone().effective(&self.config);
        let result = self.serving.announce(&effective);
        let info = self.agent_info();
        let vips = |list: Vec<String>| if list.is_empty() { "none".to_owned() } else { list.join(", ") };
        let a = info.announce.clone().expect("announcing");
        let message = match (&result, drain) {
            (Ok(()), true) => {
                info!(withdrawn = a.withheld.len(), "node drained");
                format!("node drained: withdrew {}", vips(a.withheld.keys().map(|ip| ip.to_string()).collect()))
            }
            (Ok(()), false) => {
                info!(announced = a.announced.len(), "node undrained");
                format!("node undrained: announcing {}", vips(a.announced.iter().map(|ip| ip.to_string()).collect()))
            }
            (Err(e), _) => format!("recorded, but the interface did not follow: {e}"),
        };
        let ok = result.is_ok();
        Response { agent: Some(info), ..if ok { Response::ok(message) } else { Response::fail(message) } }
    }

    /// Applies one runtime change: the change, then the service's new
    /// table. On any failure the runtime and the kernel stay as they were.
    async fn on_change(&mut self, req: Request) -> Response {
        if let Request::Mirror { mirror: Some(m), .. } = &req {
            if nix::net::if_::if_nametoindex(m.interface.as_str()).is_err() {
                return Response::fail(format!(
                    "mirror interface {:?} does not exist in the agent's network namespace; nothing changed",
                    m.interface
                ));
            }
        }
        let Some(change) = req.change() else {
            return Response::fail(format!("`{}` changes nothing", req.op()));
        };
        let outcome = match splitter_model::change::apply(&change, &self.config, &self.runtime) {
            Ok(o) => o,
            Err(e) => return Response::fail(e.to_string()),
        };
        if let Err(e) = self.commit(outcome.next, &outcome.message).await {
            return Response::fail(e.to_string());
        }
        info!("control: {} -> {}", req.op(), outcome.message);
        Response { weights: outcome.weights, ..Response::ok(outcome.message) }
    }

    /// Starts, steers or reads the rollout of `service`.
    async fn on_rollout(&mut self, service: &str, action: crate::control::RolloutAction) -> Response {
        use crate::control::RolloutAction as A;
        if action == A::Status {
            return Response::rollout_status(&self.runtime, service);
        }
        let counts = self.counts(|n| n == service);
        let l7 = self.serving.l7.stats();
        let outcome = splitter_model::change::rollout(
            service,
            action.clone(),
            &self.config,
            &self.runtime,
            |svc, canary, before| {
                measure::rollout_counts(service, svc, canary, before, &counts, &l7, &self.serving.down)
            },
        );
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => return Response::fail(e.to_string()),
        };
        let before = self.runtime.rollouts.get(service).filter(|_| !matches!(action, A::Start { .. })).cloned();
        if let Err(e) = self.commit(outcome.next, &outcome.message).await {
            return Response::fail(e.to_string());
        }
        info!("rollout: {}", outcome.message);
        if let Some(after) = self.runtime.rollouts.get(service) {
            let told = match (&action, before) {
                (A::Start { .. }, _) => Some(("started", outcome.message.clone())),
                (A::Approve, _) => Some(("approved", "promotion approved by hand".to_owned())),
                (_, Some(before)) => webhooks::what_happened(&before, after),
                _ => None,
            };
            if let Some((phase, reason)) = told {
                self.gate_hooks.tell(service, after, phase, reason, &self.config.analysis);
            }
        }
        Response { rollout: self.runtime.rollouts.get(service).cloned(), ..Response::ok(outcome.message) }
    }

    /// Makes `next` the runtime state through the backing.
    async fn commit(&mut self, next: Runtime, what: &str) -> Result<(), CommitError> {
        self.backing.commit(next, what, &self.config, &mut self.runtime, &mut self.serving).await
    }

    /// An interface appeared, changed or went: a served one that is back
    /// gets the programs again (its links died with it); a mirror interface
    /// that is back gets its guard, and the tables that copy to it its new
    /// index. Logged and counted either way.
    async fn on_link(&mut self, event: LinkEvent) {
        let (effective, _) = self.runtime.clone().effective(&self.config);
        let data = data_interfaces(&self.config);
        let mirrors = effective.mirror_interfaces();
        // Mirror interfaces named since the start are served too.
        for m in &mirrors {
            self.links.entry(m.clone()).or_insert(None);
        }
        let served: BTreeMap<String, Option<u32>> = self
            .links
            .iter()
            .filter(|(n, _)| data.contains(*n) || mirrors.contains(*n))
            .map(|(n, i)| (n.clone(), *i))
            .collect();
        match link_watch::decide(&event, &served) {
            LinkAction::None => {}
            LinkAction::Lost { name, index } => {
                warn!(interface = %name, index, "interface deleted: nothing is served there until it comes back");
                self.links.insert(name.clone(), None);
                self.serving.counters.link(&name, "lost");
            }
            LinkAction::Attach { name, index } => {
                match self.reattach(&name, data.contains(&name), mirrors.contains(&name), &effective) {
                    Ok(()) => {
                        info!(interface = %name, index, "interface (re)appeared: programs attached");
                        self.links.insert(name.clone(), Some(index));
                        self.serving.counters.link(&name, "attached");
                    }
                    Err(e) => {
                        error!(interface = %name, index, "interface (re)appeared, attaching failed: {e}");
                        self.serving.counters.link(&name, "attach_failed");
                    }
                }
            }
        }
    }

    /// Puts the programs back on interface `name`: the ingress programs on a
    /// client or backend interface, the guard on a mirror interface (and the
    /// mirroring tables rewritten with its new index).
    fn reattach(&mut self, name: &str, data: bool, mirror: bool, effective: &Config) -> Result<(), AgentError> {
        if data {
            self.serving.dp.attach_ingress(name, self.opts.xdp_mode)?;
        }
        if mirror {
            self.serving.dp.forget_guard(name);
            // Planned from the live tables: the same tables, with the
            // interface's index resolved again.
            let plans = splitter_model::plan::plan_all(effective, |n| self.serving.dp.previous(n))?;
            self.serving.install(effective, &plans)?;
        }
        Ok(())
    }

    /// The file changed on disk: reload when its text did.
    async fn on_file_changed(&mut self) {
        let text = std::fs::read_to_string(&self.opts.config_path).unwrap_or_default();
        if text != self.last_text {
            self.last_text = text;
            self.on_reload("file changed").await;
        }
    }

    /// Reloads the file and, when it is good, makes it the running config;
    /// otherwise the running configuration stays as it was.
    async fn on_reload(&mut self, why: &str) {
        systemd::reloading();
        let outcome = self.reload().await;
        systemd::ready(&match &outcome {
            Ok(_) => format!("serving {} services (reloaded)", self.config.services.len()),
            Err(_) => format!("serving {} services (the last reload was refused)", self.config.services.len()),
        });
        match outcome {
            Ok(plans) => {
                info!(config = %self.opts.config_path.display(), "{why}: reloaded");
                log_plans(&plans);
                self.serving.counters.reloads_ok += 1;
            }
            Err(e) => {
                error!(
                    config = %self.opts.config_path.display(),
                    "{why}: reload refused, still running the previous configuration: {e}"
                );
                self.serving.counters.reloads_failed += 1;
            }
        }
    }

    /// Re-reads the config file and applies its services: each table is
    /// planned from the live one (fewest flows moved) and swapped in
    /// atomically. Keys that need a restart refuse the reload.
    async fn reload(&mut self) -> Result<Vec<splitter_model::plan::ServicePlan>, ReloadError> {
        // Read off the loop: control and metrics keep answering meanwhile.
        let path = self.opts.config_path.clone();
        let mut next = tokio::task::spawn_blocking(move || Config::load(&path)).await??;
        if let Some(socket) = &self.opts.socket_override {
            next.control.socket = socket.clone();
        }
        let current = &self.config;
        for (what, same) in [
            ("interfaces", next.interfaces == current.interfaces),
            ("pin_path", next.pin_path == current.pin_path),
            ("state_dir", next.state_dir == current.state_dir),
            ("flow_table_size", next.flow_table_size == current.flow_table_size),
            ("flow_aging", next.flow_aging == current.flow_aging),
            ("control.socket", next.control == current.control),
            ("metrics", next.metrics == current.metrics),
            ("local_addresses", next.local_addresses == current.local_addresses),
            ("l7", next.l7 == current.l7),
            ("store", next.store == current.store),
            ("node", next.node == current.node),
        ] {
            if !same {
                return Err(ReloadError::NeedsRestart(what));
            }
        }
        let (config, plans) =
            self.backing.publish(next, &self.config, &mut self.runtime, &mut self.serving, &self.opts).await?;
        self.config = config;
        Ok(plans)
    }

    /// Removes expired flows; remembers how many each service has left.
    fn on_sweep(&mut self) {
        match self.serving.dp.sweep_flows(&self.config.flow_aging) {
            Ok(s) => {
                if s.removed > 0 {
                    debug!(examined = s.examined, removed = s.removed, "flow sweep");
                }
                self.sources.active_flows = s.remaining;
                let entries = s.examined - s.removed;
                let capacity = self.sources.pinned.flow_capacity();
                let level = aging::FLOW_TABLE_WARN * 100.0;
                match aging::flow_table_crossed(self.sources.flow_entries, entries, capacity) {
                    Some(true) => warn!(
                        entries,
                        capacity,
                        "the flow table is above {level:.0}% full: when it is full, new flows evict the least \
                         recently used (their next packets are placed again); raise flow_table_size"
                    ),
                    Some(false) => info!(entries, capacity, "the flow table is below {level:.0}% full again"),
                    None => {}
                }
                self.sources.flow_entries = Some(entries);
            }
            Err(e) => warn!("flow sweep failed: {e}"),
        }
    }

    /// Advances every running rollout by the time since the last tick:
    /// judges each against the counts now, and applies the weights a step,
    /// a rollback or the end asks for. Only where the backing drives them.
    async fn on_rollout_tick(&mut self) {
        let dt = self.last_rollout_tick.elapsed();
        self.last_rollout_tick = Instant::now();
        if self.backing.drives_rollouts() {
            self.on_declared_rollouts().await;
        }
        let running: Vec<String> =
            self.runtime.rollouts.iter().filter(|(_, r)| r.state == State::Running).map(|(n, _)| n.clone()).collect();
        if running.is_empty() || !self.backing.drives_rollouts() {
            return;
        }
        // Only the services being rolled out: their tables, not all.
        let counts = self.counts(|n| running.iter().any(|r| r == n));
        let (effective, _) = self.runtime.clone().effective(&self.config);
        let l7 = self.serving.l7.stats();
        for service in running {
            let Some(svc) = effective.services.get(&service) else { continue };
            let mut next = self.runtime.clone();
            let r = next.rollouts.get_mut(&service).expect("listed above");
            let mut now =
                measure::rollout_counts(&service, svc, &r.plan.to, &r.before, &counts, &l7, &self.serving.down);
            self.backing.claim(&service, r, &now);
            self.step_analysis.ask_if_due(&service, r, dt, &self.config.analysis);
            now.analysis = self.step_analysis.verdicts(&service, r);
            now.hooks = self.gate_hooks.answers(&service, r);
            let earlier = r.clone();
            let action = r.tick(dt, &now);
            // A gate it waits at now is asked at once (answered by a later tick).
            self.gate_hooks.ask_if_due(&service, r, &self.config.analysis);
            if let Some((phase, reason)) = webhooks::what_happened(&earlier, r) {
                self.gate_hooks.tell(&service, r, phase, reason, &self.config.analysis);
            }
            // A new gate is saved at once (its wait shows after a restart).
            let gate_changed = earlier.awaiting.as_ref().map(|a| a.step) != r.awaiting.as_ref().map(|a| a.step);
            let (before_state, step) = (earlier.state, earlier.step);
            let (state, percent) = (r.state.clone(), r.percent());
            match action {
                rollout::Action::SetWeights(w) => {
                    if let Err(e) = next.set_weights(&self.config, &service, w) {
                        error!(service, "rollout: {e}");
                        continue;
                    }
                    match self.commit(next, &format!("rollout of {service}: {state:?} at {percent}%")).await {
                        Ok(()) => match &state {
                            State::RolledBack { reason } => warn!(service, "rollout ROLLED BACK: {reason}"),
                            _ => info!(service, "rollout: step {} of the plan, canary at {percent}%", step + 2),
                        },
                        Err(e) => {
                            error!(service, "rollout: applying the weights failed ({e}); pausing it");
                            if let Some(r) = self.runtime.rollouts.get_mut(&service) {
                                r.pause(&format!("applying a step failed: {e}"));
                            }
                        }
                    }
                }
                rollout::Action::Nothing => {
                    let changed = state != before_state || gate_changed;
                    if state != before_state {
                        info!(service, "rollout: {state:?}");
                    }
                    self.backing
                        .keep_progress(&service, next, changed, &self.config, &mut self.runtime, &mut self.serving)
                        .await;
                }
            }
        }
    }

    /// Starts, restarts or aborts the rollouts the config declares
    /// (`services.NAME.rollout`) where they differ from those last acted on.
    async fn on_declared_rollouts(&mut self) {
        use splitter_model::change::{apply_declared, declared, Declared};
        let changes = declared(&self.config, &self.runtime);
        let origin = if self.backing.info().is_some() { rollout::Origin::Store } else { rollout::Origin::File };
        for change in changes {
            let (Declared::Start { service, .. } | Declared::Withdraw { service }) = &change;
            let service = service.clone();
            let was_active = self.runtime.rollout_active(&service);
            let counts = self.counts(|n| n == service);
            let l7 = self.serving.l7.stats();
            let (recorded, outcome) =
                apply_declared(&change, origin, &self.config, &self.runtime, |svc, canary, before| {
                    measure::rollout_counts(&service, svc, canary, before, &counts, &l7, &self.serving.down)
                });
            let (next, message) = match outcome {
                Ok(o) => (o.next, o.message),
                Err(e) => {
                    error!(service, "the declared rollout cannot start: {e}");
                    (recorded, format!("{service}: declared rollout recorded, not started"))
                }
            };
            if let Err(e) = self.commit(next, &message).await {
                error!(service, "declared rollout: {e}");
                continue;
            }
            info!("rollout: {message}");
            if let Some(r) = self.runtime.rollouts.get(&service) {
                let phase = match change {
                    Declared::Start { .. } if r.state == State::Running || !r.started() => Some("started"),
                    Declared::Withdraw { .. } if was_active && r.state == State::Aborted => Some("aborted"),
                    _ => None,
                };
                if let Some(phase) = phase {
                    self.gate_hooks.tell(&service, r, phase, message.clone(), &self.config.analysis);
                }
            }
        }
    }

    /// A rollout that outlived the agent before this one (paused, or
    /// driven from a store) counts its step from this agent's counters: the
    /// proxy's start again at 0, so the old base would hide every request
    /// until this agent had counted past it.
    fn rebase_rollouts(&mut self) {
        let open: Vec<String> =
            self.runtime.rollouts.iter().filter(|(_, r)| !r.state.is_over()).map(|(n, _)| n.clone()).collect();
        if open.is_empty() {
            return;
        }
        let counts = self.counts(|n| open.iter().any(|o| o == n));
        let (effective, _) = self.runtime.clone().effective(&self.config);
        let l7 = self.serving.l7.stats();
        for service in open {
            let Some(svc) = effective.services.get(&service) else { continue };
            let Some(r) = self.runtime.rollouts.get_mut(&service) else { continue };
            r.base = measure::rollout_counts(&service, svc, &r.plan.to, &r.before, &counts, &l7, &self.serving.down);
            info!(service, "rollout: its step is judged on this agent's counts from now on");
        }
    }

    /// What each version of `service` did over the last `window_secs`.
    fn analysis(&self, service: &str, window_secs: u64) -> Response {
        let max = observe::MAX_WINDOW.as_secs();
        if !(1..=max).contains(&window_secs) {
            return Response::fail(format!("window {window_secs}s is out of range: use 1 to {max} seconds"));
        }
        let (effective, _) = self.runtime.clone().effective(&self.config);
        let Some(svc) = effective.services.get(service) else {
            return Response::fail(format!("no service {service:?} in this agent"));
        };
        let current = self.counts(|n| n == service);
        let window = Duration::from_secs(window_secs);
        let (span, counts) = self.history.window(Instant::now(), &current, window).unwrap_or_default();
        let health = self.health.report(&effective).remove(service);
        let versions: Vec<_> = svc
            .version_weights()
            .into_iter()
            .map(|(v, weight)| {
                let endpoints = u32::try_from(svc.versions[v].len()).unwrap_or(u32::MAX);
                let up = health.as_ref().map(|h| {
                    let up = h.endpoints.iter().filter(|e| e.version == v && e.up && !e.ejected).count();
                    u32::try_from(up).unwrap_or(u32::MAX)
                });
                (v.to_owned(), weight, endpoints, up)
            })
            .collect();
        let l4 = svc.mode == Mode::L4;
        let analysis =
            observe::analyse(service, l4, window, span, &counts.get(service).cloned().unwrap_or_default(), &versions);
        Response { analysis: Some(analysis), ..Response::ok(format!("{service}: analysis")) }
    }

    /// Samples the counts for the observed split.
    fn on_sample(&mut self) {
        let counts = self.counts(|_| true);
        self.history.push(Instant::now(), counts);
    }

    /// What one `/metrics` scrape shows.
    fn on_scrape(&self) -> Scrape {
        let mut scrape = measure::scrape(&self.config, &self.runtime, &self.serving, &self.sources, |_| true);
        let (effective, _) = self.runtime.clone().effective(&self.config);
        scrape.endpoints_up = self
            .health
            .report(&effective)
            .into_iter()
            .flat_map(|(service, h)| {
                h.endpoints.into_iter().map(move |e| (service.clone(), e.version, e.endpoint, e.up))
            })
            .collect();
        scrape.health_transitions = self.health.transitions.clone();
        scrape
    }

    /// The periodic log line of what the data path did.
    fn on_stats_tick(&mut self, every: Duration) -> Result<(), AgentError> {
        let now = self.serving.dp.stats()?;
        let d = now.since(&self.last_stats);
        let summary: Vec<String> = d.iter().filter(|(_, v)| *v > 0).map(|(n, v)| format!("{n}={v}")).collect();
        info!(
            "last {}s: {}",
            every.as_secs(),
            if summary.is_empty() { "no packets".into() } else { summary.join(" ") }
        );
        self.last_stats = now;
        Ok(())
    }

    /// Per service and version counts now, of the services `wanted` picks.
    fn counts(&self, wanted: impl Fn(&str) -> bool) -> observe::Counts {
        measure::scrape(&self.config, &self.runtime, &self.serving, &self.sources, wanted).counts()
    }

    /// Stops the l7 side politely: no more accepting (the listeners stay
    /// open, queueing), every connection finishes what is in flight and
    /// closes (HTTP/1.1 `Connection: close`, h2 GOAWAY), and a new agent may
    /// take the listeners over (`handover`, or one asking meanwhile). Ends
    /// when no connection is left (and the listeners were handed over, or
    /// [`HANDOVER_WAIT`] passed), at `l7.drain_timeout`, or at a second signal.
    async fn drain(&mut self, ev: &mut Events, mut handover: Option<tokio::net::UnixStream>) {
        // Their addresses are a new agent's to bind.
        for task in [self.metrics_task.take(), self.control_http_task.take()].into_iter().flatten() {
            task.abort();
        }
        let mut listeners = self.serving.l7.stop_accepting().await;
        self.serving.l7.drain();
        let limit = self.config.l7.drain_timeout;
        let started = tokio::time::Instant::now();
        let deadline = started + limit;
        let keep_for_handover = started + limit.min(HANDOVER_WAIT);
        if !listeners.is_empty() || self.serving.l7.open_connections() > 0 {
            info!(
                open = self.serving.l7.open_connections(),
                listeners = listeners.len(),
                "stopping: l7 connections finish what is in flight (up to l7.drain_timeout, {}); a new `splitter run` takes the listeners over now",
                humantime::format_duration(limit)
            );
        }
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            if let Some(stream) = handover.take() {
                self.hand_over(stream, &mut listeners).await;
            }
            let now = tokio::time::Instant::now();
            let idle = self.serving.l7.open_connections() == 0;
            if idle && (listeners.is_empty() || now >= keep_for_handover) {
                break;
            }
            if now >= deadline {
                warn!(
                    open = self.serving.l7.open_connections(),
                    "l7.drain_timeout passed: closing the connections still open"
                );
                break;
            }
            tokio::select! {
                Some(call) = ev.calls.recv() => match call {
                    control_socket::Call::Ask { request: Ok(Request::Status), reply } => {
                        let mut answer = self.status();
                        answer.message = format!("stopping: {} l7 connections draining", self.serving.l7.open_connections());
                        let _ = reply.send(answer);
                    }
                    control_socket::Call::Ask { reply, .. } => {
                        let _ = reply.send(Response::fail(
                            "this agent is stopping (its l7 connections drain): ask the agent that replaces it".into(),
                        ));
                    }
                    control_socket::Call::Handover { stream, .. } => handover = Some(stream),
                    control_socket::Call::Down { mut stream } => {
                        let refuse = Response::fail("this agent is stopping: run `splitter down` once it has exited, or against the agent that replaces it".into());
                        control_socket::respond(&mut stream, &refuse).await;
                    }
                },
                _ = ev.sigterm.recv() => { info!("SIGTERM again: exiting now"); break; }
                _ = ev.sigint.recv() => { info!("SIGINT again: exiting now"); break; }
                _ = tick.tick() => {}
            }
        }
    }

    /// Hands `listeners` over on `stream`, then gives up the control socket
    /// and the state dir's lock for the new agent. On failure the
    /// listeners stay here (and close when this agent exits).
    async fn hand_over(
        &mut self,
        stream: tokio::net::UnixStream,
        listeners: &mut Vec<(std::net::SocketAddr, std::net::TcpListener)>,
    ) {
        if self.lock.is_none() {
            let mut stream = stream;
            control_socket::respond(&mut stream, &Response::fail("the listeners were handed over already".into()))
                .await;
            return;
        }
        match handover::give(stream, listeners).await {
            Ok(()) => {
                info!(
                    listeners = listeners.len(),
                    "handed the l7 listeners over to the new agent; finishing in-flight requests"
                );
                listeners.clear();
                // The control socket's path and the lock are the new agent's now.
                if let Some(task) = self.control_task.take() {
                    task.abort();
                    let _ = task.await;
                }
                self.lock = None;
            }
            Err(e) => warn!("handing the l7 listeners over failed ({e}); they close when this agent exits"),
        }
    }

    /// The way out: on SIGINT/SIGTERM (or a hand-over) the data path stays
    /// pinned and serving, and l7 connections drain (a new agent may take
    /// the listeners over meanwhile); on `down` it is removed (and the l7
    /// addresses the agent added), then the request is answered.
    async fn stop(mut self, exit: Exit, mut ev: Events) -> Result<(), AgentError> {
        let down = match exit {
            Exit::Down(stream) => Some(stream),
            Exit::Stop => {
                self.drain(&mut ev, None).await;
                None
            }
            Exit::Handover(stream) => {
                self.drain(&mut ev, Some(stream)).await;
                None
            }
        };
        let config = self.config.clone();
        // After a hand-over the socket path is the new agent's.
        let handed_over = self.lock.is_none();
        drop(self);
        let Some(mut stream) = down else {
            if !handed_over {
                let _ = std::fs::remove_file(&config.control.socket);
            }
            return Ok(());
        };
        info!("down requested: detaching, unpinning and exiting");
        // Withdrawn first: the routers move the flows to the other nodes
        // while this one still serves them.
        if let Some(announce) = &config.announce {
            match crate::announce::withdraw_all(announce) {
                Ok(withdrawn) => {
                    info!(withdrawn, settle = ?announce.settle, "VIPs withdrawn; waiting for the routers before removing the data path");
                    tokio::time::sleep(announce.settle).await;
                }
                Err(e) => error!("withdrawing the VIPs: {e}; removing the data path all the same"),
            }
        }
        let result = crate::dataplane::down(&config.pin_path);
        let local = crate::local_addrs::down(&config.local_addresses);
        let response = match (&result, &local) {
            (Ok(removed), Ok(removed_addrs)) => {
                info!(pins = removed.len(), "data path removed");
                Response::ok(format!(
                    "removed the data path at {} ({} pins; XDP detached){}; the agent exits",
                    config.pin_path.display(),
                    removed.len(),
                    if *removed_addrs > 0 { format!("; removed {removed_addrs} l7 addresses") } else { String::new() }
                ))
            }
            (Err(e), _) => Response::fail(format!("removing the data path failed: {e}")),
            (Ok(_), Err(e)) => Response::fail(format!("removed the data path, but not the l7 addresses: {e}")),
        };
        let _ = std::fs::remove_file(&config.control.socket);
        control_socket::respond(&mut stream, &response).await;
        result?;
        local.map(drop).map_err(AgentError::from)
    }
}

/// Descriptors kept for everything but l7 client connections: the control
/// socket and its clients, `/metrics` and its scrapes, the data path's maps,
/// programs and links, etcd, netlink and files.
const FD_RESERVE: u64 = 512;

/// Raises the soft open-file limit to the hard one (systemd's default soft
/// limit is 1024) and returns how many client connections the l7 side may
/// hold: half of what is left after [`FD_RESERVE`] (each may take a second
/// descriptor towards an endpoint).
fn l7_connection_budget() -> usize {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else { return 1024 };
    let target = hard.min(1 << 20);
    let limit = if soft < target {
        match setrlimit(Resource::RLIMIT_NOFILE, target, hard) {
            Ok(()) => {
                info!(from = soft, to = target, "raised the open-file limit (RLIMIT_NOFILE) to the hard limit");
                target
            }
            Err(e) => {
                warn!(limit = soft, "could not raise the open-file limit: {e}");
                soft
            }
        }
    } else {
        soft
    };
    let budget = (limit.saturating_sub(FD_RESERVE) / 2).max(16);
    info!(
        open_files = limit,
        l7_connections = budget,
        "l7 connection budget ({FD_RESERVE} descriptors kept for the agent)"
    );
    usize::try_from(budget).unwrap_or(usize::MAX)
}

/// Puts XDP (and TC) on every client and backend interface, swapping the
/// program into pinned links where they exist; detaches interfaces no
/// longer configured.
fn attach(dp: &mut Dataplane, config: &Config, mode: AttachMode) -> Result<(), AgentError> {
    let interfaces = data_interfaces(config);
    for ifname in &interfaces {
        match dp.attach_ingress(ifname, mode)? {
            Attached::New => {
                info!(interface = %ifname, mode = ?mode, "attached {PROG_INGRESS} (XDP) and {PROG_MIRROR} (TC)")
            }
            Attached::Replaced => {
                info!(interface = %ifname, "replaced {PROG_INGRESS} and {PROG_MIRROR} in the pinned links (atomic)")
            }
        }
    }
    let keep: Vec<&str> = interfaces.iter().map(String::as_str).collect();
    for gone in dp.detach_others(&keep)? {
        info!(interface = %gone, "detached: no longer in the config");
    }
    Ok(())
}

/// The client and backend interfaces, each once: where the programs go.
fn data_interfaces(config: &Config) -> std::collections::BTreeSet<String> {
    config.interfaces.clients.iter().chain(&config.interfaces.backends).cloned().collect()
}

/// Watches the config file's directory (editors replace files by renaming)
/// and reports events that touch the file. Without a watcher (inotify
/// limits), SIGHUP still reloads.
fn watch_config(path: &Path) -> (Option<notify::RecommendedWatcher>, tokio::sync::mpsc::UnboundedReceiver<()>) {
    use notify::Watcher as _;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let name = path.file_name().map(ToOwned::to_owned);
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_owned();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            // Only writes, creations, renames and removals: reading the file
            // (as a reload does) must not look like a change.
            let changes = matches!(
                event.kind,
                notify::EventKind::Modify(_) | notify::EventKind::Create(_) | notify::EventKind::Remove(_)
            );
            if changes && event.paths.iter().any(|p| p.file_name() == name.as_deref()) {
                let _ = tx.send(());
            }
        }
    })
    .and_then(|mut w| w.watch(&dir, notify::RecursiveMode::NonRecursive).map(|()| w));
    match watcher {
        Ok(w) => (Some(w), rx),
        Err(e) => {
            warn!("not watching {}: {e}; send SIGHUP to reload", path.display());
            (None, rx)
        }
    }
}

/// Takes the agent lock in `state_dir`: one agent per state dir.
pub fn lock_state_dir(dir: &Path) -> Result<nix::fcntl::Flock<File>, AgentError> {
    let err = |source| AgentError::StateDir { path: dir.to_owned(), source };
    crate::state::create_state_dir(dir).map_err(err)?;
    let path = dir.join("agent.lock");
    let file = File::create(&path).map_err(err)?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|_| AgentError::Locked { path })
}

/// Warns when the namespace does not forward a family a service uses: the
/// XDP FIB lookup then fails and packets fall back to a stack that drops them.
fn check_forwarding(config: &Config) {
    for (v6, key) in [(false, "/proc/sys/net/ipv4/ip_forward"), (true, "/proc/sys/net/ipv6/conf/all/forwarding")] {
        let used = config.services.values().any(|s| s.listen.is_ipv6() == v6);
        let on = std::fs::read_to_string(key).map(|s| s.trim() == "1").unwrap_or(false);
        if used && !on {
            warn!(
                "{key} is not 1: {} services cannot be forwarded; enable it (sysctl -w)",
                if v6 { "IPv6" } else { "IPv4" }
            );
        }
    }
}

/// Every interface the config names must exist here (asked through the
/// kernel, not /sys, so it works however the namespace was entered).
fn check_interfaces(config: &Config) -> Result<(), AgentError> {
    let mirrors = config.mirror_interfaces();
    let missing: Vec<String> = config
        .interfaces
        .clients
        .iter()
        .chain(&config.interfaces.backends)
        .chain(&mirrors)
        .filter(|i| nix::net::if_::if_nametoindex(i.as_str()).is_err())
        .cloned()
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(AgentError::NoSuchInterfaces(missing))
    }
}
