//! The L7 path: services with `mode: l7` are served by an HTTP reverse proxy
//! inside the agent (hyper 1.x; HTTP/1.1, h2c and HTTPS with h2 from
//! clients; HTTP/1.1 or h2c to endpoints). XDP passes their packets to the
//! stack.
//!
//! Each listen address is a site (`site.rs`): a listener on the VIP:port
//! (bound with `IP_FREEBIND`, so the agent starts before the address is up;
//! the address must be local for packets to arrive) shared by the services
//! on it, told apart by host. Each service has a routing table behind an
//! `ArcSwap` (a change swaps the whole table; a request keeps the table it
//! started with) and counters. `route.rs` decides, `proxy.rs` forwards,
//! `tls.rs` terminates TLS, `conn.rs` serves one connection.

pub mod affine;
pub mod conn;
pub mod framing;
pub mod mirror;
pub mod origin;
pub mod proxy;
pub mod route;
pub mod site;
pub mod tls;
pub mod tunnel;
pub mod upstream;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::sync::Semaphore;
use tracing::{debug, info};

use route::RouteTable;
use splitter_model::config::{l7::Settings, Config, Mode, Service};
use splitter_model::health::Down;
use upstream::Upstreams;

#[derive(Debug, Error)]
pub enum L7Error {
    #[error("service {service}: cannot listen on {addr}: {source} (is another process on it?)")]
    Bind { service: String, addr: SocketAddr, source: std::io::Error },
    #[error("service {service}: {source}")]
    Route { service: String, source: regex::Error },
    #[error("services.{service}.tls.{source}")]
    Tls { service: String, source: tls::TlsError },
    #[error("services.{service}.upstream.tls.{source}")]
    UpstreamTls { service: String, source: upstream::CaError },
}

/// How long, once the agent stops, HTTP/1 answers carry `Connection: close`
/// before idle connections are closed (at most `l7.drain_timeout`): a
/// client about to reuse its connection learns first.
const DRAIN_GRACE: Duration = Duration::from_secs(1);

/// What a service's requests share: its live table, client pool and counters.
pub struct Shared {
    pub name: String,
    pub table: ArcSwap<RouteTable>,
    /// The connections towards the endpoints; replaced whole when the
    /// connect timeout or the protocol changes (the response timeout lives
    /// in the table).
    pub upstreams: ArcSwap<Upstreams>,
    pub stats: Stats,
    random: AtomicU64,
    /// The mirror's queue and sender, while `mirror:` is configured.
    pub mirror: arc_swap::ArcSwapOption<mirror::Mirror>,
    /// Mirror counters (kept across mirror reconfigurations).
    pub mirror_stats: Arc<mirror::MirrorStats>,
    /// Failures in a row of each endpoint's requests (`health.passive`).
    passive_runs: std::sync::Mutex<std::collections::HashMap<SocketAddr, u32>>,
    /// Where an endpoint whose requests failed too often is reported.
    ejections: Option<tokio::sync::mpsc::UnboundedSender<Ejection>>,
    /// TLS termination (none: plain HTTP) and its counters.
    pub tls: Arc<tls::ServiceTls>,
}

/// An endpoint whose requests failed `health.passive.consecutive_failures`
/// times in a row: the agent ejects it.
#[derive(Debug)]
pub struct Ejection {
    pub service: String,
    pub endpoint: SocketAddr,
    pub why: String,
}

impl Shared {
    /// The state of service `name` serving `table` through `upstreams`
    /// (`Upstreams::for_service`), its mirror started (so inside the tokio
    /// runtime). Cannot fail for a validated `svc`: the config fuzzer builds
    /// one for every config validation accepts.
    pub fn new(name: &str, svc: &Service, table: RouteTable, upstreams: Arc<Upstreams>) -> Shared {
        let shared = Shared {
            name: name.to_owned(),
            stats: Stats::new(&table.versions),
            table: ArcSwap::from_pointee(table),
            upstreams: ArcSwap::new(upstreams),
            random: AtomicU64::new(seed()),
            mirror: arc_swap::ArcSwapOption::empty(),
            mirror_stats: Arc::default(),
            passive_runs: Default::default(),
            ejections: None,
            tls: Arc::default(),
        };
        shared.configure_mirror(svc);
        shared
    }

    /// One request's outcome at `endpoint` for the passive check of
    /// `table` (nothing without one): a failure adds to the endpoint's run,
    /// a success ends it; a run reaching the threshold is reported, saying
    /// what the last failure was (`what`).
    pub fn passive(&self, table: &RouteTable, endpoint: SocketAddr, failed: bool, what: impl FnOnce() -> String) {
        let (Some(threshold), Some(tx)) = (table.passive_failures, &self.ejections) else { return };
        let eject = {
            let mut runs = self.passive_runs.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let run = runs.entry(endpoint).or_default();
            splitter_model::health::passive_step(run, failed, threshold)
        };
        if eject {
            let why = format!("{threshold} requests failed in a row, the last: {}", what());
            let _ = tx.send(Ejection { service: self.name.clone(), endpoint, why });
        }
    }

    /// Starts, restarts or stops the mirror sender for `svc.mirror`.
    fn configure_mirror(&self, svc: &Service) {
        let runtime = svc.l7_mirror().map(|m| {
            Arc::new(mirror::Mirror::start(
                m.queue,
                mirror::Settings {
                    upstreams: self.upstreams.load_full(),
                    timeout: Duration::from_millis(m.timeout_ms),
                    cap: usize::try_from(m.max_body_bytes).unwrap_or(usize::MAX),
                    compare: m.compare.clone(),
                    stats: self.mirror_stats.clone(),
                },
            ))
        });
        self.mirror.store(runtime);
    }

    /// A fresh pseudo-random number (splitmix64 over a shared counter).
    pub fn random(&self) -> u64 {
        let mut z = self.random.fetch_add(0x9e37_79b9_7f4a_7c15, Relaxed).wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn seed() -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    t.as_nanos() as u64 ^ u64::from(std::process::id()).rotate_left(32)
}

/// Counters of one service, per version.
pub struct Stats {
    /// By version name: a reload that adds or removes versions re-indexes
    /// the table, not the counters.
    versions: std::sync::RwLock<BTreeMap<String, Arc<VersionStats>>>,
    /// Client connections closed at accept, by the limit that was hit.
    refused: [AtomicU64; 3],
    /// Client connections closed because a request head did not arrive in time.
    pub head_timeouts: Arc<AtomicU64>,
    /// Requests refused before routing through the client's fault.
    client_errors: AtomicU64,
    /// Connections a limit or the idle bound ended.
    pub closes: conn::Closes,
}

/// Which limit closed a connection at accept.
#[derive(Clone, Copy, Debug)]
pub enum Refused {
    /// The listener's `l7.max_connections`.
    Listener = 0,
    /// The client address's `l7.max_connections_per_client`.
    Client = 1,
    /// The agent's file-descriptor budget for the l7 side (the rest is kept
    /// for the control socket, `/metrics` and the data path).
    Budget = 2,
}

impl Refused {
    fn why(self) -> &'static str {
        match self {
            Refused::Listener => "the listener's l7.max_connections",
            Refused::Client => "l7.max_connections_per_client",
            Refused::Budget => "the agent's file-descriptor budget (raise LimitNOFILE / ulimit -n)",
        }
    }
}

/// Counters of one version.
#[derive(Default)]
pub struct VersionStats {
    requests: AtomicU64,
    /// Responses from endpoints by class: 1xx..5xx.
    classes: [AtomicU64; 5],
    /// 502s the proxy answered (endpoint unreachable or failed).
    bad_gateway: AtomicU64,
    /// 504s the proxy answered (no response head in time).
    timeouts: AtomicU64,
    /// Requests routed here that failed through the client's fault (a
    /// malformed or late body): 400/408, never the version's errors.
    client_errors: AtomicU64,
    /// Arrival to response head (or the proxy's error answer).
    latency: crate::metrics::Latency,
    /// gRPC answers (HTTP 2xx) by `grpc-status`, 0..=16 (others count as 2).
    grpc: [AtomicU64; GRPC_CODES],
}

/// gRPC status codes: OK (0) to UNAUTHENTICATED (16).
const GRPC_CODES: usize = 17;

impl VersionStats {
    pub fn request(&self) {
        self.requests.fetch_add(1, Relaxed);
    }
    /// An endpoint's response head, `took` after the request arrived.
    pub fn response(&self, status: http::StatusCode, took: Duration) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.classes[class].fetch_add(1, Relaxed);
        self.latency.observe(took);
    }
    pub fn bad_gateway(&self, took: Duration) {
        self.bad_gateway.fetch_add(1, Relaxed);
        self.latency.observe(took);
    }
    pub fn timeout(&self, took: Duration) {
        self.timeouts.fetch_add(1, Relaxed);
        self.latency.observe(took);
    }
    pub fn client_error(&self) {
        self.client_errors.fetch_add(1, Relaxed);
    }
    /// A gRPC answer's `grpc-status`.
    pub fn grpc(&self, code: u32) {
        let at = if (code as usize) < GRPC_CODES { code as usize } else { 2 };
        self.grpc[at].fetch_add(1, Relaxed);
    }
}

impl Stats {
    fn new(versions: &[String]) -> Stats {
        Stats {
            versions: std::sync::RwLock::new(versions.iter().map(|v| (v.clone(), Arc::default())).collect()),
            refused: Default::default(),
            head_timeouts: Arc::default(),
            client_errors: AtomicU64::new(0),
            closes: conn::Closes::default(),
        }
    }

    /// A request refused before routing through the client's fault.
    pub fn client_error(&self) {
        self.client_errors.fetch_add(1, Relaxed);
    }

    /// The counters of version `name`.
    pub fn version(&self, name: &str) -> Arc<VersionStats> {
        if let Some(s) = self.versions.read().expect("not poisoned").get(name) {
            return s.clone();
        }
        self.versions.write().expect("not poisoned").entry(name.to_owned()).or_default().clone()
    }

    pub fn snapshot(&self) -> ServiceStats {
        ServiceStats {
            mirror: None,
            tls: None,
            connections: ConnectionCounts {
                refused_listener: self.refused[Refused::Listener as usize].load(Relaxed),
                refused_client: self.refused[Refused::Client as usize].load(Relaxed),
                refused_budget: self.refused[Refused::Budget as usize].load(Relaxed),
                head_timeouts: self.head_timeouts.load(Relaxed),
                idle_closed: self.closes.idle.load(Relaxed),
                too_large: self.closes.too_large.load(Relaxed),
                h2_flood: self.closes.h2_flood.load(Relaxed),
                ..ConnectionCounts::default()
            },
            client_errors: self.client_errors.load(Relaxed),
            versions: self
                .versions
                .read()
                .expect("not poisoned")
                .iter()
                .map(|(name, s)| {
                    let c = |i: usize| s.classes[i].load(Relaxed);
                    let v = VersionCounts {
                        requests: s.requests.load(Relaxed),
                        responses_1xx: c(0),
                        responses_2xx: c(1),
                        responses_3xx: c(2),
                        responses_4xx: c(3),
                        responses_5xx: c(4),
                        bad_gateway: s.bad_gateway.load(Relaxed),
                        timeouts: s.timeouts.load(Relaxed),
                        client_errors: s.client_errors.load(Relaxed),
                        latency: s.latency.snapshot(),
                        grpc: (0..GRPC_CODES)
                            .map(|code| (code as u32, s.grpc[code].load(Relaxed)))
                            .filter(|(_, n)| *n > 0)
                            .collect(),
                    };
                    (name.clone(), v)
                })
                .collect(),
        }
    }
}

/// Counters of one l7 service, as `status` shows them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceStats {
    /// Mirror counters, when the service mirrors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<mirror::MirrorCounts>,
    pub versions: BTreeMap<String, VersionCounts>,
    /// What became of client connections the proxy did not serve.
    #[serde(default)]
    pub connections: ConnectionCounts,
    /// Requests refused before routing through the client's fault (400/405).
    #[serde(default)]
    pub client_errors: u64,
    /// TLS services: the certificates served and their reloads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsCounts>,
}

/// Client connections an l7 listener closed without serving them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ConnectionCounts {
    /// At accept: the listener was at `l7.max_connections`.
    pub refused_listener: u64,
    /// At accept: the client address was at `l7.max_connections_per_client`.
    pub refused_client: u64,
    /// At accept: the l7 side was at the agent's file-descriptor budget.
    pub refused_budget: u64,
    /// A request head did not arrive within `l7.header_read_timeout`.
    pub head_timeouts: u64,
    /// Closed after `l7.idle_timeout` with no request in flight.
    #[serde(default)]
    pub idle_closed: u64,
    /// A request head over `l7.max_header_bytes` or with too many fields (431).
    #[serde(default)]
    pub too_large: u64,
    /// An h2 client over the stream limits (GOAWAY `ENHANCE_YOUR_CALM`).
    #[serde(default)]
    pub h2_flood: u64,
    /// TLS listeners: handshakes that failed (no common version or ALPN
    /// protocol, not TLS, the client hung up)...
    #[serde(default)]
    pub tls_handshake_failures: u64,
    /// ... or were not done within `l7.header_read_timeout`.
    #[serde(default)]
    pub tls_handshake_timeouts: u64,
}

/// The certificates of a TLS service and their reloads, as `status` shows them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TlsCounts {
    /// The DNS names of each pair served, in `certificates[]` order.
    pub certificates: Vec<Vec<String>>,
    /// Certificate file changes loaded and served.
    pub reloads_ok: u64,
    /// Certificate file changes refused (the previous certificates stayed).
    pub reloads_refused: u64,
}

/// Counters of one version of an l7 service.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct VersionCounts {
    pub requests: u64,
    pub responses_1xx: u64,
    pub responses_2xx: u64,
    pub responses_3xx: u64,
    pub responses_4xx: u64,
    pub responses_5xx: u64,
    pub bad_gateway: u64,
    pub timeouts: u64,
    /// Requests routed here that failed through the client's fault (400/408):
    /// not this version's errors, and not counted in its rollout gates.
    #[serde(default)]
    pub client_errors: u64,
    /// Response latency histogram (see `metrics::LATENCY_BUCKETS`).
    #[serde(default)]
    pub latency: crate::metrics::LatencySnapshot,
    /// gRPC answers by `grpc-status` (codes seen only); a non-zero status
    /// is an error in the rollout gates.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub grpc: BTreeMap<u32, u64>,
}

impl VersionCounts {
    /// gRPC answers with a non-zero `grpc-status`.
    pub fn grpc_errors(&self) -> u64 {
        self.grpc.iter().filter(|(code, _)| **code != 0).map(|(_, n)| n).sum()
    }
}

/// The l7 side's next state, made without changing anything: listeners
/// bound for new addresses, every table built, the certificates of new or
/// changed `tls:` loaded, and the connections towards the endpoints of new
/// or changed `proxy:`/`upstream:` made (their CA files read).
pub struct Prepared {
    wanted: BTreeMap<String, Service>,
    bound: BTreeMap<SocketAddr, tokio::net::TcpListener>,
    tables: BTreeMap<String, RouteTable>,
    down: BTreeMap<String, BTreeSet<SocketAddr>>,
    tls: BTreeMap<String, Option<Arc<tls::Terminator>>>,
    upstreams: BTreeMap<String, Arc<Upstreams>>,
}

/// One running l7 service.
struct Running {
    service: Service,
    shared: Arc<Shared>,
    /// Its endpoints out of service, as its table was built.
    down: BTreeSet<SocketAddr>,
}

/// One listen address: its accept loop (which hands its listener back when
/// told to stop) and the services on it.
struct Site {
    accept: tokio::task::JoinHandle<tokio::net::TcpListener>,
    hosts: Arc<ArcSwap<site::HostTable>>,
}

/// Every l7 service the agent serves.
pub struct L7 {
    running: BTreeMap<String, Running>,
    sites: BTreeMap<SocketAddr, Site>,
    settings: Settings,
    /// Client connections the whole l7 side may hold (each may take a second
    /// descriptor towards an endpoint); what is left of the agent's open-file
    /// limit is kept for the control socket, `/metrics` and the data path.
    budget: Arc<Semaphore>,
    /// Endpoints ejected by their requests (passive checks) are sent here...
    ejections: tokio::sync::mpsc::UnboundedSender<Ejection>,
    /// ... and read by the agent ([`L7::take_ejections`]).
    ejections_rx: Option<tokio::sync::mpsc::UnboundedReceiver<Ejection>>,
    /// The TLS services' certificate files, reloaded when they change.
    certs: tls::CertWatch,
    /// All of `budget`: when every permit is back, no connection is open.
    budget_total: usize,
    /// Set to stop accepting (listeners are handed back)...
    stop_accepting: tokio::sync::watch::Sender<bool>,
    /// ... and to finish what is in flight and close every connection.
    drain: tokio::sync::watch::Sender<bool>,
    /// Listeners another agent handed over, taken by address when bound.
    inherited: std::sync::Mutex<std::collections::HashMap<SocketAddr, std::net::TcpListener>>,
}

impl L7 {
    /// The l7 side with the agent-wide `settings` and room for `budget`
    /// client connections in all.
    pub fn new(settings: Settings, budget: usize) -> L7 {
        let (ejections, rx) = tokio::sync::mpsc::unbounded_channel();
        L7 {
            running: BTreeMap::new(),
            sites: BTreeMap::new(),
            settings,
            budget: Arc::new(Semaphore::new(budget)),
            ejections,
            ejections_rx: Some(rx),
            certs: tls::CertWatch::default(),
            budget_total: budget,
            stop_accepting: tokio::sync::watch::Sender::new(false),
            drain: tokio::sync::watch::Sender::new(false),
            inherited: Default::default(),
        }
    }

    /// Listeners handed over by the agent this one replaces: an address the
    /// config listens on takes its listener (and its queued connections)
    /// instead of binding anew; the rest are closed after the first install.
    pub fn inherit(&mut self, listeners: Vec<(SocketAddr, std::net::TcpListener)>) {
        self.inherited.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner).extend(listeners);
    }

    /// Stops accepting on every address and hands the listeners back, still
    /// open (connections keep queueing in the kernel for whoever takes them).
    pub async fn stop_accepting(&mut self) -> Vec<(SocketAddr, std::net::TcpListener)> {
        self.stop_accepting.send_replace(true);
        let mut listeners = Vec::new();
        for (addr, site) in std::mem::take(&mut self.sites) {
            match site.accept.await.map(|l| l.into_std()) {
                Ok(Ok(l)) => listeners.push((addr, l)),
                Ok(Err(e)) => tracing::warn!(listen = %addr, "l7: listener not kept: {e}"),
                Err(e) => tracing::warn!(listen = %addr, "l7: listener lost: {e}"),
            }
        }
        listeners
    }

    /// Tells every connection to finish what is in flight and close
    /// politely (HTTP/1 answers carry `Connection: close` for the grace,
    /// then idle HTTP/1.1 connections close and h2 ones get GOAWAY).
    pub fn drain(&self) {
        self.drain.send_replace(true);
    }

    /// Client connections still open (tunnels included).
    pub fn open_connections(&self) -> usize {
        self.budget_total.saturating_sub(self.budget.available_permits())
    }

    /// Where endpoints that the passive checks eject are reported (once).
    pub fn take_ejections(&mut self) -> Option<tokio::sync::mpsc::UnboundedReceiver<Ejection>> {
        self.ejections_rx.take()
    }

    /// Makes the l7 services of `config` (the effective one: file plus
    /// runtime changes) the served ones, every endpoint healthy:
    /// [`L7::prepare`], then [`L7::commit`]. Must run inside the tokio runtime.
    pub fn apply(&mut self, config: &Config) -> Result<(), L7Error> {
        let prepared = self.prepare(config, &Down::new())?;
        self.commit(prepared);
        Ok(())
    }

    /// Everything that can fail, with nothing changed: the listeners that
    /// must be opened are bound, and every table is rebuilt from the live
    /// one (so a weight change moves the fewest sticky users), served
    /// around the endpoints `down` has out of service.
    pub fn prepare(&self, config: &Config, down: &Down) -> Result<Prepared, L7Error> {
        let wanted: BTreeMap<&String, &Service> = config.services.iter().filter(|(_, s)| s.mode == Mode::L7).collect();
        // Bind the new addresses, before touching anything.
        let mut bound = BTreeMap::new();
        for (name, svc) in &wanted {
            if !self.sites.contains_key(&svc.listen) && !bound.contains_key(&svc.listen) {
                let listener = self.take_inherited(svc.listen).unwrap_or_else(|| site::bind(svc.listen));
                let listener =
                    listener.map_err(|source| L7Error::Bind { service: (*name).clone(), addr: svc.listen, source })?;
                bound.insert(svc.listen, listener);
            }
        }
        let mut tables = BTreeMap::new();
        let mut downs = BTreeMap::new();
        for (name, svc) in &wanted {
            let previous = self.running.get(*name).map(|r| r.shared.table.load_full());
            let out = down.get(*name).cloned().unwrap_or_default();
            let table = RouteTable::build_served(svc, previous.as_ref().map(|t| t.as_previous()), &|e| out.contains(e))
                .map_err(|source| L7Error::Route { service: (*name).clone(), source })?;
            tables.insert((*name).clone(), table);
            downs.insert((*name).clone(), out);
        }
        // Certificates are read when `tls:` is new or changed: a bad pair
        // refuses the change here. Later changes to the files are the
        // certificate watch's.
        let mut terminators = BTreeMap::new();
        for (name, svc) in &wanted {
            if self.running.get(*name).is_none_or(|r| r.service.tls != svc.tls) {
                let t = svc.tls.as_ref().map(tls::Terminator::new).transpose();
                let t = t.map_err(|source| L7Error::Tls { service: (*name).clone(), source })?;
                terminators.insert((*name).clone(), t.map(Arc::new));
            }
        }
        // The connections towards the endpoints are made anew when
        // `proxy:` or `upstream:` is new or changed:
        // a missing or bad CA file refuses the change here.
        let mut upstreams = BTreeMap::new();
        for (name, svc) in &wanted {
            let changed = |r: &Running| r.service.proxy != svc.proxy || r.service.upstream != svc.upstream;
            if self.running.get(*name).is_none_or(changed) {
                let u = Upstreams::for_service(svc)
                    .map_err(|source| L7Error::UpstreamTls { service: (*name).clone(), source })?;
                upstreams.insert((*name).clone(), Arc::new(u));
            }
        }
        let wanted = wanted.into_iter().map(|(n, s)| (n.clone(), s.clone())).collect();
        Ok(Prepared { wanted, bound, tables, down: downs, tls: terminators, upstreams })
    }

    /// The listener another agent handed over for `addr`, if any.
    fn take_inherited(&self, addr: SocketAddr) -> Option<std::io::Result<tokio::net::TcpListener>> {
        let l = self.inherited.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&addr)?;
        info!(listen = %addr, "l7: serving the listener handed over (with its queued connections)");
        Some(l.set_nonblocking(true).and_then(|()| tokio::net::TcpListener::from_std(l)))
    }

    /// Swaps in what [`L7::prepare`] made; cannot fail.
    pub fn commit(&mut self, prepared: Prepared) {
        let Prepared { wanted, mut bound, mut tables, mut down, tls: mut terminators, mut upstreams } = prepared;
        self.running.retain(|name, _| wanted.contains_key(name));
        for (name, svc) in &wanted {
            let table = tables.remove(name).expect("built above");
            let out = down.remove(name).unwrap_or_default();
            match self.running.get_mut(name) {
                Some(r) => {
                    if r.service != *svc || r.down != out {
                        if let Some(t) = terminators.remove(name) {
                            r.shared.tls.terminator.store(t);
                        }
                        let renewed = upstreams.remove(name);
                        if let Some(u) = &renewed {
                            r.shared.upstreams.store(u.clone());
                        }
                        // The mirror sends with them too.
                        if r.service.mirror != svc.mirror || renewed.is_some() {
                            r.shared.configure_mirror(svc);
                        }
                        r.shared.table.store(Arc::new(table));
                        r.service = svc.clone();
                        r.down = out;
                        debug!(service = %name, "l7: table swapped");
                    }
                }
                None => {
                    let made = upstreams.remove(name).expect("made for every new service");
                    let mut shared = Shared::new(name, svc, table, made);
                    shared.ejections = Some(self.ejections.clone());
                    shared.tls.terminator.store(terminators.remove(name).flatten());
                    self.running
                        .insert(name.clone(), Running { service: svc.clone(), shared: Arc::new(shared), down: out });
                }
            }
        }
        // Each address's services, by name.
        let mut by_address: BTreeMap<SocketAddr, Vec<(&Service, Arc<Shared>)>> = BTreeMap::new();
        for r in self.running.values() {
            by_address.entry(r.service.listen).or_default().push((&r.service, r.shared.clone()));
        }
        self.sites.retain(|addr, site| {
            let keep = by_address.contains_key(addr);
            if !keep {
                site.accept.abort();
                info!(listen = %addr, "l7: stopped listening");
            }
            keep
        });
        for (addr, services) in &by_address {
            let hosts = site::HostTable::new(services);
            let names: Vec<&str> = services.iter().map(|(_, s)| s.name.as_str()).collect();
            match (self.sites.get(addr), bound.remove(addr)) {
                (Some(site), _) => site.hosts.store(Arc::new(hosts)),
                (None, Some(listener)) => {
                    let hosts = Arc::new(ArcSwap::from_pointee(hosts));
                    let limits = site::Limits::new(&self.settings, self.budget.clone());
                    let stop = site::Stopping {
                        accept: self.stop_accepting.subscribe(),
                        drain: self.drain.subscribe(),
                        grace: self.settings.drain_timeout.min(DRAIN_GRACE),
                    };
                    let accept =
                        tokio::spawn(site::serve(listener, hosts.clone(), limits, self.settings.clone(), stop));
                    info!(listen = %addr, services = ?names, "l7: proxying");
                    self.sites.insert(*addr, Site { accept, hosts });
                }
                (None, None) => unreachable!("a new address is always bound in prepare"),
            }
        }
        let tls = self.running.iter().filter(|(_, r)| r.service.tls.is_some());
        self.certs.update(tls.map(|(n, r)| (n.clone(), r.shared.tls.clone())).collect());
        // Handed-over listeners no service here wants any more.
        let mut left = self.inherited.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for (addr, _) in left.drain() {
            info!(listen = %addr, "l7: closed a listener handed over that this config does not use");
        }
    }

    /// Counters of every l7 service.
    pub fn stats(&self) -> BTreeMap<String, ServiceStats> {
        self.running
            .iter()
            .map(|(n, r)| {
                let mut s = r.shared.stats.snapshot();
                s.mirror = r.service.mirror.as_ref().map(|_| r.shared.mirror_stats.counts());
                let c = &r.shared.tls.counters;
                s.connections.tls_handshake_failures = c.handshake_failures.load(Relaxed);
                s.connections.tls_handshake_timeouts = c.handshake_timeouts.load(Relaxed);
                s.tls = r.shared.tls.terminator.load_full().map(|t| TlsCounts {
                    certificates: t.certs().names.clone(),
                    reloads_ok: c.reloads_ok.load(Relaxed),
                    reloads_refused: c.reloads_refused.load(Relaxed),
                });
                (n.clone(), s)
            })
            .collect()
    }

    /// The mirror comparison report of l7 service `name` (`None`: no such
    /// l7 service).
    pub fn diffs(&self, name: &str) -> Option<mirror::DiffReport> {
        self.running.get(name).map(|r| r.shared.mirror_stats.report())
    }

    /// The mirror comparisons of every l7 service.
    pub fn all_diffs(&self) -> BTreeMap<String, mirror::DiffReport> {
        self.running.iter().map(|(name, r)| (name.clone(), r.shared.mirror_stats.report())).collect()
    }
}

impl Drop for L7 {
    fn drop(&mut self) {
        for site in self.sites.values() {
            site.accept.abort();
        }
    }
}
