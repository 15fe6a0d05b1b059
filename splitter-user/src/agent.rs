//! `splitter run`: validate and plan, lock the state dir, load and program the
//! data path, attach, pin, then serve until SIGINT/SIGTERM.

use std::{fs::File, path::Path, time::Duration};

use thiserror::Error;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{debug, error, info, warn};

use splitter_common::names::{PROG_INGRESS, PROG_MIRROR};

mod node;

use crate::{
    control::{parse_request, AgentInfo, Request, Response, MAX_REQUEST},
    dataplane::{ensure_bpffs, AttachMode, Attached, Dataplane, DataplaneError, PinnedMaps},
    l7::L7,
};
use splitter_model::{
    config::{Config, Mode},
    plan::{plan_all, service_key, PlanError, ServicePlan},
    runtime::Runtime,
};

use crate::{config_file::ConfigFile as _, state::RuntimeFile as _};

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
    #[error("{0}")]
    Store(String),
    #[error(transparent)]
    LocalAddrs(#[from] crate::local_addrs::LocalAddrError),
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
    #[error("{0}")]
    Store(String),
}

/// Re-reads the config file and applies its services: each table is planned
/// from the live one (fewest flows moved) and swapped in atomically.
async fn reload(
    current: &Config,
    runtime: &mut Runtime,
    serving: &mut Serving,
    opts: &RunOptions,
) -> Result<(Config, Vec<ServicePlan>), ReloadError> {
    let mut next = Config::load(&opts.config_path)?;
    if let Some(socket) = &opts.socket_override {
        next.control.socket = socket.clone();
    }
    for (what, same) in [
        ("interfaces", next.interfaces == current.interfaces),
        ("pin_path", next.pin_path == current.pin_path),
        ("state_dir", next.state_dir == current.state_dir),
        ("flow_table_size", next.flow_table_size == current.flow_table_size),
        ("flow_aging", next.flow_aging == current.flow_aging),
        ("control.socket", next.control == current.control),
        ("metrics", next.metrics == current.metrics),
        ("local_addresses", next.local_addresses == current.local_addresses),
        ("store", next.store == current.store),
        ("node", next.node == current.node),
    ] {
        if !same {
            return Err(ReloadError::NeedsRestart(what));
        }
    }
    if serving.cluster.is_some() {
        return node::publish_services(next, current, runtime, serving, opts).await;
    }
    let mut next_runtime = runtime.clone();
    let (effective, dropped) = next_runtime.effective(&next);
    for name in dropped {
        warn!(service = %name, "runtime weights no longer fit the file's versions; the file's weights apply");
    }
    let new_plans = serving.apply(&effective)?;
    if next_runtime != *runtime {
        next_runtime.save(&next.state_dir).map_err(AgentError::from)?;
    }
    *runtime = next_runtime;
    Ok((next, new_plans))
}

/// Reloads the file and, when it is good, makes it the running config.
async fn apply_reload(why: &str, config: &mut Config, runtime: &mut Runtime, serving: &mut Serving, opts: &RunOptions) {
    match reload(config, runtime, serving, opts).await {
        Ok((next, next_plans)) => {
            info!(config = %opts.config_path.display(), "{why}: reloaded");
            log_plans(&next_plans);
            *config = next;
            serving.counters.reloads_ok += 1;
        }
        Err(e) => {
            error!(
                config = %opts.config_path.display(),
                "{why}: reload refused, still running the previous configuration: {e}"
            );
            serving.counters.reloads_failed += 1;
        }
    }
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

/// Applies one control request: the runtime change, then the service's new
/// table. On any failure the runtime and the kernel stay as they were.
async fn handle_request(req: Request, file: &Config, runtime: &mut Runtime, serving: &mut Serving) -> Response {
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
    let outcome = match splitter_model::change::apply(&change, file, runtime) {
        Ok(o) => o,
        Err(e) => return Response::fail(e),
    };
    if let Err(message) = commit(outcome.next, &outcome.message, file, runtime, serving).await {
        return Response::fail(message);
    }
    info!("control: {} -> {}", req.op(), outcome.message);
    Response { weights: outcome.weights, ..Response::ok(outcome.message) }
}

/// Makes `next` the runtime state: plans it, saves it, then serves it. On
/// any failure the runtime and the kernel stay as they were. With a shared
/// store, "saves" is a compare-and-swap on the store's desired state, and
/// every node (this one at once) serves it.
async fn commit(
    mut next: Runtime,
    what: &str,
    file: &Config,
    runtime: &mut Runtime,
    serving: &mut Serving,
) -> Result<(), String> {
    if serving.cluster.is_some() {
        return node::commit(next, what, file, runtime, serving).await;
    }
    let (effective, _) = next.effective(file);
    // Planned before anything is saved: a change that cannot be planned is refused.
    let plans = plan_all(&effective, |n| serving.dp.previous(n)).map_err(|e| e.to_string())?;
    // Saved first, so a change that is live is never lost on a restart.
    next.save(&file.state_dir).map_err(|e| format!("could not save the change, nothing changed: {e}"))?;
    // Only the changed service's table differs; apply leaves the others alone.
    if let Err(e) = serving.install(&effective, &plans) {
        if let Err(e) = runtime.save(&file.state_dir) {
            error!("restoring the saved runtime state failed: {e}");
        }
        return Err(format!("applying the change failed, nothing changed: {e}"));
    }
    *runtime = next;
    Ok(())
}

/// What a rollout of `service` judges now: cumulative counts of the canary
/// and of the baseline (the versions that had weight before), resets (l4)
/// and mirror comparisons (l7).
fn rollout_counts(
    service: &str,
    svc: &splitter_model::config::Service,
    canary: &str,
    before: &splitter_model::runtime::Weights,
    counts: &splitter_model::observe::Counts,
    l7: &std::collections::BTreeMap<String, crate::l7::ServiceStats>,
) -> splitter_model::rollout::Counts {
    let versions = counts.get(service).cloned().unwrap_or_default();
    let mut baseline = splitter_model::observe::VersionSample::default();
    for (_, c) in versions.iter().filter(|(v, _)| *v != canary && before.get(*v).is_some_and(|w| *w > 0)) {
        baseline.add(c);
    }
    let canary = versions.get(canary).cloned().unwrap_or_default();
    let mirror = l7.get(service).and_then(|s| s.mirror.clone()).unwrap_or_default();
    splitter_model::rollout::Counts {
        l4: svc.mode == Mode::L4,
        canary,
        baseline,
        compared: mirror.compared,
        differ: mirror.differ,
    }
}

/// Answers a `rollout` request: starts, steers or reads the rollout of
/// `service`. `counts` are the agent's cumulative counts now.
async fn handle_rollout(
    service: &str,
    action: crate::control::RolloutAction,
    file: &Config,
    runtime: &mut Runtime,
    serving: &mut Serving,
    counts: &splitter_model::observe::Counts,
) -> Response {
    if action == crate::control::RolloutAction::Status {
        return Response::rollout_status(runtime, service);
    }
    let l7 = serving.l7.stats();
    let outcome = splitter_model::change::rollout(service, action, file, runtime, |svc, canary, before| {
        rollout_counts(service, svc, canary, before, counts, &l7)
    });
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => return Response::fail(e),
    };
    if let Err(m) = commit(outcome.next, &outcome.message, file, runtime, serving).await {
        return Response::fail(m);
    }
    info!("rollout: {}", outcome.message);
    Response { rollout: runtime.rollouts.get(service).cloned(), ..Response::ok(outcome.message) }
}

/// Advances every running rollout by `dt`: judges each against the counts
/// now, and applies the weights a step, a rollback or the end asks for.
async fn tick_rollouts(
    dt: Duration,
    file: &Config,
    runtime: &mut Runtime,
    serving: &mut Serving,
    counts: &splitter_model::observe::Counts,
) {
    let running: Vec<String> = runtime
        .rollouts
        .iter()
        .filter(|(_, r)| r.state == splitter_model::rollout::State::Running)
        .map(|(n, _)| n.clone())
        .collect();
    if running.is_empty() {
        return;
    }
    let (effective, _) = runtime.clone().effective(file);
    let l7 = serving.l7.stats();
    for service in running {
        let Some(svc) = effective.services.get(&service) else { continue };
        let mut next = runtime.clone();
        let r = next.rollouts.get_mut(&service).expect("listed above");
        let now = rollout_counts(&service, svc, &r.plan.to, &r.before, counts, &l7);
        // With a shared store, the leader judges on its own counts: a
        // rollout started (or last driven) elsewhere starts from them now.
        if let Some(c) = &serving.cluster {
            if r.driver.as_deref() != Some(c.node.as_str()) {
                info!(service, "rollout: this node ({}) drives it from now on", c.node);
                r.driver = Some(c.node.clone());
                r.base = now.clone();
            }
        }
        let before_state = r.state.clone();
        let step = r.step;
        let action = r.tick(dt, &now);
        let (state, percent) = (r.state.clone(), r.percent());
        match action {
            splitter_model::rollout::Action::SetWeights(w) => {
                if let Err(e) = next.set_weights(file, &service, w) {
                    error!(service, "rollout: {e}");
                    continue;
                }
                match commit(next, &format!("rollout of {service}: {state:?} at {percent}%"), file, runtime, serving)
                    .await
                {
                    Ok(()) => match &state {
                        splitter_model::rollout::State::RolledBack { reason } => {
                            warn!(service, "rollout ROLLED BACK: {reason}")
                        }
                        _ => info!(service, "rollout: step {} of the plan, canary at {percent}%", step + 2),
                    },
                    Err(e) => {
                        error!(service, "rollout: applying the weights failed ({e}); pausing it");
                        if let Some(r) = runtime.rollouts.get_mut(&service) {
                            r.pause(&format!("applying a step failed: {e}"));
                        }
                    }
                }
            }
            splitter_model::rollout::Action::Nothing => {
                if state != before_state {
                    info!(service, "rollout: {state:?}");
                }
                if serving.cluster.is_some() {
                    // The step's progress goes to the store, so every node's
                    // status shows it and another leader goes on from it.
                    let what = format!("rollout of {service}: progress");
                    if let Err(e) = commit(next, &what, file, runtime, serving).await {
                        warn!(service, "rollout: {e}");
                    }
                    continue;
                }
                if state != before_state {
                    if let Err(e) = next.save(&file.state_dir) {
                        error!("saving the rollout state: {e}");
                    }
                }
                *runtime = next;
            }
        }
    }
}

/// What `status` asks the agent: who it is and the weights it serves.
fn agent_info(
    config: &Config,
    runtime: &Runtime,
    opts: &RunOptions,
    started: std::time::SystemTime,
    l7: &L7,
    observed: Option<(Duration, splitter_model::observe::Counts)>,
) -> AgentInfo {
    let (effective, _) = runtime.clone().effective(config);
    let (observed_secs, observed) = observed.map_or((0, Default::default()), |(span, counts)| {
        let placed = counts
            .into_iter()
            .map(|(svc, versions)| (svc, versions.into_iter().map(|(v, c)| (v, c.placed)).collect()))
            .collect();
        (span.as_secs(), placed)
    });
    AgentInfo {
        observed,
        observed_secs,
        rollouts: runtime.rollouts.clone(),
        pid: std::process::id(),
        config: opts.config_path.clone(),
        services: config.services.clone(),
        not_local: crate::local_addrs::not_local(&effective),
        pin_path: config.pin_path.clone(),
        state_dir: config.state_dir.clone(),
        started_unix: started.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        l7: l7.stats(),
        cluster: None,
        mirrors: effective.services.iter().filter_map(|(n, s)| Some((n.clone(), s.l4_mirror()?.clone()))).collect(),
        weights: effective
            .services
            .iter()
            .map(|(name, svc)| {
                (name.clone(), svc.version_weights().iter().map(|(v, w)| ((*v).to_owned(), *w)).collect())
            })
            .collect(),
    }
}

/// Where the agent's measurements come from besides what it serves: the
/// pinned maps (as `status` reads them), the last sweep's flow counts, and
/// its start time.
struct Sources {
    pinned: PinnedMaps,
    active_flows: std::collections::BTreeMap<String, u64>,
    started: std::time::SystemTime,
}

impl Sources {
    /// Per service and version counts now, of the services `wanted` picks.
    fn counts(
        &self,
        config: &Config,
        runtime: &Runtime,
        serving: &Serving,
        wanted: impl Fn(&str) -> bool,
    ) -> splitter_model::observe::Counts {
        self.scrape(config, runtime, serving, wanted).counts()
    }

    /// What one metrics scrape shows (of the services `wanted` picks), from
    /// the kernel maps, the proxy and the agent's own counters.
    fn scrape(
        &self,
        config: &Config,
        runtime: &Runtime,
        serving: &Serving,
        wanted: impl Fn(&str) -> bool,
    ) -> crate::metrics::Scrape {
        scrape(config, runtime, serving, self, wanted)
    }
}

fn scrape(
    config: &Config,
    runtime: &Runtime,
    serving: &Serving,
    sources: &Sources,
    wanted: impl Fn(&str) -> bool,
) -> crate::metrics::Scrape {
    use crate::metrics::{AgentMetrics, Scrape, ServiceMetrics, VersionMetrics};
    let Sources { pinned, active_flows, started } = sources;
    let (effective, _) = runtime.clone().effective(config);
    let l7 = serving.l7.stats();
    let mut services = Vec::new();
    for (name, svc) in effective.services.iter().filter(|(n, _)| wanted(n)) {
        let weights = svc.version_weights();
        let bps = splitter_model::plan::basis_points(&weights.iter().map(|(_, w)| *w).collect::<Vec<_>>());
        let live = match svc.mode {
            Mode::L4 => pinned.service(&splitter_model::plan::service_key(svc)).ok().flatten(),
            Mode::L7 => None,
        };
        // Endpoints sit in the kernel table in version order, as the file lists them.
        let mut next_endpoint = 0;
        let versions = weights
            .iter()
            .zip(&bps)
            .map(|((v, w), b)| VersionMetrics {
                name: (*v).to_owned(),
                weight: *w,
                share: f64::from(*b) / splitter_common::service::BPS as f64,
                endpoints: svc.versions[*v]
                    .iter()
                    .filter_map(|addr| {
                        let st = live.as_ref()?.endpoint_stats.get(next_endpoint).copied();
                        next_endpoint += 1;
                        Some((addr.to_string(), st?))
                    })
                    .collect(),
                l7: l7.get(name).and_then(|s| s.versions.get(*v)).map(|c| (c.clone(), c.latency.clone())),
            })
            .collect();
        services.push(ServiceMetrics {
            name: name.clone(),
            mode: if svc.mode == Mode::L4 { "l4" } else { "l7" },
            versions,
            l7_mirror: l7.get(name).and_then(|s| s.mirror.clone()),
        });
    }
    let c = &serving.counters;
    Scrape {
        services,
        datapath: pinned.counters().map(|c| c.iter().collect()).unwrap_or_default(),
        active_flows: active_flows.clone(),
        rollouts: runtime.rollouts.clone(),
        agent: AgentMetrics {
            started_unix: started.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            reloads_ok: c.reloads_ok,
            reloads_failed: c.reloads_failed,
            control: c.control.clone(),
            apply: c.apply.snapshot(),
        },
    }
}

/// Binds the control socket (mode 0600), replacing a stale socket file but
/// refusing one another agent still listens on.
fn bind_control(path: &Path) -> Result<tokio::net::UnixListener, AgentError> {
    let err = |source| AgentError::Control { path: path.to_owned(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(err(std::io::Error::other("another agent is listening there")));
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

/// Reads one request line (bounded in size and time) from a control connection.
async fn read_request(stream: &mut tokio::net::UnixStream) -> Result<Request, String> {
    use tokio::io::AsyncBufReadExt;
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(tokio::io::AsyncReadExt::take(&mut *stream, MAX_REQUEST as u64));
    match tokio::time::timeout(Duration::from_secs(5), reader.read_line(&mut line)).await {
        Err(_) => Err("bad control request: no complete line within 5 s".into()),
        Ok(Err(e)) => Err(format!("bad control request: {e}")),
        Ok(Ok(_)) => parse_request(&line),
    }
}

/// What serves the services: the kernel data path (l4) and the proxy (l7),
/// and the agent's own counters.
struct Serving {
    dp: Dataplane,
    l7: L7,
    /// The l7 listen addresses made local.
    local: crate::local_addrs::Keeper,
    counters: AgentCounters,
    /// This node's part in a shared store (`store:`), if any.
    cluster: Option<node::Cluster>,
}

/// What the agent counts of its own work (exported as metrics).
#[derive(Default)]
struct AgentCounters {
    reloads_ok: u64,
    reloads_failed: u64,
    /// Control requests by (op, "ok" | "failed").
    control: std::collections::BTreeMap<(&'static str, &'static str), u64>,
    /// Time to apply a change to the data path and proxy.
    apply: crate::metrics::Latency,
}

impl AgentCounters {
    fn control(&mut self, op: &'static str, response: &Response) {
        *self.control.entry((op, if response.ok { "ok" } else { "failed" })).or_default() += 1;
    }
}

impl Serving {
    /// Makes `effective` (file plus runtime changes) the served state: l4
    /// tables planned from the live ones and swapped in, l7 routing tables
    /// swapped whole. L7 listeners are bound first, so a bind failure
    /// changes nothing.
    fn apply(&mut self, effective: &Config) -> Result<Vec<ServicePlan>, AgentError> {
        let plans = plan_all(effective, |n| self.dp.previous(n))?;
        self.install(effective, &plans)?;
        Ok(plans)
    }

    /// [`Serving::apply`] with the l4 plans already made from the live tables.
    /// A new mirror interface gets its guard before any table sends copies
    /// there; an interface no longer mirrored to loses it afterwards.
    fn install(&mut self, effective: &Config, plans: &[ServicePlan]) -> Result<(), AgentError> {
        let started = std::time::Instant::now();
        let result = self.install_timed(effective, plans);
        self.counters.apply.observe(started.elapsed());
        result
    }

    fn install_timed(&mut self, effective: &Config, plans: &[ServicePlan]) -> Result<(), AgentError> {
        self.local.update(effective)?;
        self.l7.apply(effective)?;
        let wanted = effective.mirror_interfaces();
        let mut both = wanted.clone();
        both.extend(self.dp.guarded().map(str::to_owned));
        self.dp.guard_mirrors(&both)?;
        self.dp.apply(plans)?;
        self.dp.guard_mirrors(&wanted)?;
        Ok(())
    }
}

fn log_plans(plans: &[ServicePlan]) {
    for plan in plans {
        let split: Vec<String> =
            plan.versions.iter().zip(&plan.bps).map(|(v, b)| format!("{v}={:.2}%", *b as f64 / 100.0)).collect();
        let mirror = match &plan.mirror_interface {
            Some(i) => format!("; mirroring {:.2}% of new flows to {i}", f64::from(plan.table.mirror_bps) / 100.0),
            None => String::new(),
        };
        info!(service = %plan.name, "programmed: {}{mirror}", split.join(" "));
    }
}

/// Takes the agent lock in `state_dir`: one agent per state dir.
pub fn lock_state_dir(dir: &Path) -> Result<nix::fcntl::Flock<File>, AgentError> {
    let err = |source| AgentError::StateDir { path: dir.to_owned(), source };
    std::fs::create_dir_all(dir).map_err(err)?;
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

/// Runs the agent until SIGINT or SIGTERM. Everything it attached or pinned is
/// removed on the way out (the `Dataplane` guard).
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

/// Runs the agent until SIGINT/SIGTERM (it exits and the pinned data path
/// keeps serving) or a `down` request (it removes the data path, then exits).
pub async fn run(mut config: Config, opts: RunOptions) -> Result<(), AgentError> {
    let started = std::time::SystemTime::now();
    let _lock = lock_state_dir(&config.state_dir)?;
    let started_unix = started.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    // A node of a shared store serves the store's state; otherwise runtime
    // changes made before a restart apply again.
    let (mut cluster, mut store_events) = (None, None);
    let mut runtime = if config.store.is_some() {
        let (c, served, rt, events) = node::start(&config, started_unix).await?;
        config = served;
        cluster = Some(c);
        store_events = Some(events);
        rt
    } else {
        Runtime::load(&config.state_dir)?
    };
    // A rollout that was running when the agent stopped waits for the
    // operator (`--resume`): its step's weights are served as they were.
    let mut interrupted = false;
    for (service, r) in runtime.rollouts.iter_mut().filter(|_| cluster.is_none()) {
        if r.pause("the agent restarted; `splitter rollout SERVICE --resume` goes on") {
            warn!(service = %service, "rollout paused at {}%: the agent restarted", r.percent());
            interrupted = true;
        }
    }
    if interrupted {
        runtime.save(&config.state_dir)?;
    }
    let (effective, dropped) = runtime.effective(&config);
    for name in &dropped {
        warn!(service = %name, "saved runtime changes no longer fit the file's service; the file applies");
    }
    check_interfaces(&effective)?;
    let control = bind_control(&config.control.socket)?;
    let metrics_listener = match &config.metrics {
        Some(m) => {
            Some(crate::metrics::bind(m.listen).map_err(|source| AgentError::Metrics { addr: m.listen, source })?)
        }
        None => None,
    };
    ensure_bpffs(&config.pin_path)?;
    let services: Vec<_> = effective
        .services
        .iter()
        .map(|(name, svc)| (name.clone(), service_key(svc), svc.versions.keys().cloned().collect()))
        .collect();
    let (mut dp, adoption) = Dataplane::load_pinned(config.flow_table_size, &config.pin_path, &services)?;
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
    for map in &adoption.retired {
        info!(map, "removed a map an earlier build pinned and this one no longer uses");
    }
    // Planned from what the kernel serves now, so a restart moves no flow.
    let plans = match &cluster {
        Some(c) => c.desired.plan(&effective)?,
        None => plan_all(&effective, |n| dp.previous(n))?,
    };
    dp.guard_mirrors(&effective.mirror_interfaces())?;
    dp.apply(&plans)?;
    log_plans(&plans);
    let mut local = crate::local_addrs::Keeper::new(config.local_addresses.clone());
    local.update(&effective)?;
    let mut l7 = L7::default();
    l7.apply(&effective)?;
    let interfaces: Vec<&String> = config.interfaces.clients.iter().chain(&config.interfaces.backends).collect();
    let mut seen = std::collections::BTreeSet::new();
    for ifname in interfaces.into_iter().filter(|i| seen.insert(*i)) {
        match dp.attach_ingress(ifname, opts.xdp_mode)? {
            Attached::New => {
                info!(interface = %ifname, mode = ?opts.xdp_mode, "attached {PROG_INGRESS} (XDP) and {PROG_MIRROR} (TC)")
            }
            Attached::Replaced => {
                info!(interface = %ifname, "replaced {PROG_INGRESS} and {PROG_MIRROR} in the pinned links (atomic)")
            }
        }
    }
    let keep: Vec<&str> = seen.iter().map(|s| s.as_str()).collect();
    for gone in dp.detach_others(&keep)? {
        info!(interface = %gone, "detached: no longer in the config");
    }
    check_forwarding(&config);
    let mut kernel_log = match dp.kernel_log().and_then(|l| {
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

    let (_watcher, mut file_events) = watch_config(&opts.config_path);
    let mut last_text = std::fs::read_to_string(&opts.config_path).unwrap_or_default();
    let mut reload_due: Option<tokio::time::Instant> = None;
    let mut sigterm = signal(SignalKind::terminate()).map_err(AgentError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(AgentError::Signals)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(AgentError::Signals)?;
    let every = if opts.stats_every.is_zero() { Duration::from_secs(365 * 24 * 3600) } else { opts.stats_every };
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    let mut sweep = tokio::time::interval(Duration::from_secs(config.flow_aging.sweep_secs));
    sweep.tick().await;
    let mut last = dp.stats()?;
    let mut serving = Serving { dp, l7, local, counters: AgentCounters::default(), cluster };
    // What scrapes read of the kernel: the same pinned maps `status` reads.
    let mut sources = Sources {
        pinned: PinnedMaps::open(&config.pin_path)?,
        active_flows: std::collections::BTreeMap::new(),
        started,
    };
    let all = |_: &str| true;
    let (scrape_tx, mut scrapes) = tokio::sync::mpsc::channel(16);
    // Counts sampled every few seconds: the observed split `status` shows.
    let mut history = splitter_model::observe::History::new(splitter_model::observe::STATUS_WINDOW);
    let mut sampling = tokio::time::interval(splitter_model::observe::SAMPLE_EVERY);
    // The first sample before the control socket answers anything: the
    // window then covers everything since the start.
    sampling.tick().await;
    history.push(std::time::Instant::now(), sources.counts(&config, &runtime, &serving, all));
    // Rollouts are judged every second.
    let mut rollout_tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_rollout_tick = std::time::Instant::now();
    if let Some(listener) = metrics_listener {
        info!(listen = %listener.local_addr().map_or_else(|e| e.to_string(), |a| a.to_string()), "metrics at /metrics");
        tokio::spawn(crate::metrics::serve(listener, scrape_tx));
    } else {
        drop(scrape_tx);
    }
    let keeps_serving = "the data path keeps serving the last state from the pins; `splitter down` removes it";
    let down = loop {
        tokio::select! {
            _ = sigterm.recv() => { info!("SIGTERM: agent exiting; {keeps_serving}"); break None; }
            _ = sigint.recv() => { info!("SIGINT: agent exiting; {keeps_serving}"); break None; }
            conn = control.accept() => {
                let Ok((mut stream, _)) = conn else { continue };
                let request = read_request(&mut stream).await;
                let op = request.as_ref().map_or("bad_request", Request::op);
                let response = match request {
                    Ok(Request::Status) => {
                        let now = sources.counts(&config, &runtime, &serving, all);
                        let observed = history.window(std::time::Instant::now(), &now, splitter_model::observe::STATUS_WINDOW);
                        let mut info = agent_info(&config, &runtime, &opts, started, &serving.l7, observed);
                        info.cluster = serving.cluster.as_ref().map(node::Cluster::info);
                        Response { agent: Some(info), ..Response::ok("running".into()) }
                    }
                    // Answered once the data path is gone.
                    Ok(Request::Down) => break Some(stream),
                    Ok(Request::Diffs { service }) => match serving.l7.diffs(&service) {
                        Some(report) => Response { diffs: Some(report), ..Response::ok(service) },
                        None => Response::fail(format!("{service:?} is not an l7 service of this agent")),
                    },
                    Ok(Request::Rollout { service, action }) => {
                        let counts = sources.counts(&config, &runtime, &serving, |n| n == service);
                        handle_rollout(&service, action, &config, &mut runtime, &mut serving, &counts).await
                    }
                    Ok(req) => handle_request(req, &config, &mut runtime, &mut serving).await,
                    Err(message) => {
                        warn!("{message}");
                        Response::fail(message)
                    }
                };
                serving.counters.control(op, &response);
                respond(&mut stream, &response).await;
            },
            Ok(mut guard) = async { kernel_log.as_mut().expect("guarded").readable_mut().await }, if kernel_log.is_some() => {
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            Some(event) = async { store_events.as_mut().expect("guarded").recv().await }, if store_events.is_some() => {
                node::on_event(event, &mut config, &mut runtime, &mut serving);
            }
            _ = sighup.recv() => {
                last_text = std::fs::read_to_string(&opts.config_path).unwrap_or_default();
                apply_reload("SIGHUP", &mut config, &mut runtime, &mut serving, &opts).await;
            }
            Some(()) = file_events.recv() => {
                // Editors write in bursts (truncate, write, rename): settle
                // first, without holding up the loop.
                reload_due = Some(tokio::time::Instant::now() + Duration::from_millis(200));
            }
            _ = async { tokio::time::sleep_until(reload_due.expect("guarded")).await }, if reload_due.is_some() => {
                reload_due = None;
                let text = std::fs::read_to_string(&opts.config_path).unwrap_or_default();
                if text != last_text {
                    last_text = text;
                    apply_reload("file changed", &mut config, &mut runtime, &mut serving, &opts).await;
                }
            }
            _ = sweep.tick() => match serving.dp.sweep_flows(&config.flow_aging) {
                Ok(s) => {
                    if s.removed > 0 {
                        debug!(examined = s.examined, removed = s.removed, "flow sweep");
                    }
                    sources.active_flows = s.remaining;
                }
                Err(e) => warn!("flow sweep failed: {e}"),
            },
            _ = rollout_tick.tick() => {
                let dt = last_rollout_tick.elapsed();
                last_rollout_tick = std::time::Instant::now();
                // With a shared store only the leader drives rollouts.
                let drives = serving.cluster.as_ref().is_none_or(|c| c.leader);
                if drives && runtime.rollouts.values().any(|r| r.state == splitter_model::rollout::State::Running) {
                    // Only the services being rolled out: their tables, not all.
                    let counts = sources.counts(&config, &runtime, &serving, |n| {
                        runtime.rollouts.get(n).is_some_and(|r| r.state == splitter_model::rollout::State::Running)
                    });
                    tick_rollouts(dt, &config, &mut runtime, &mut serving, &counts).await;
                }
            }
            _ = sampling.tick() => {
                let counts = sources.counts(&config, &runtime, &serving, all);
                history.push(std::time::Instant::now(), counts);
            }
            Some(reply) = scrapes.recv() => {
                let _ = reply.send(sources.scrape(&config, &runtime, &serving, all));
            }
            _ = tick.tick() => {
                let now = serving.dp.stats()?;
                let d = now.since(&last);
                let summary: Vec<String> = d.iter().filter(|(_, v)| *v > 0).map(|(n, v)| format!("{n}={v}")).collect();
                info!("last {}s: {}", every.as_secs(), if summary.is_empty() { "no packets".into() } else { summary.join(" ") });
                last = now;
            }
        }
    };
    drop(serving);
    if let Some(mut stream) = down {
        info!("down requested: detaching, unpinning and exiting");
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
        respond(&mut stream, &response).await;
        result?;
        return local.map(drop).map_err(AgentError::from);
    }
    let _ = std::fs::remove_file(&config.control.socket);
    Ok(())
}

async fn respond(stream: &mut tokio::net::UnixStream, response: &Response) {
    let mut line = serde_json::to_string(response).expect("responses serialize");
    line.push('\n');
    let _ = tokio::io::AsyncWriteExt::write_all(stream, line.as_bytes()).await;
}
