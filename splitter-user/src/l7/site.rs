//! One l7 listen address and the services on it: the listener and its
//! accept loop (connection limits, the TLS handshake with the certificate
//! the server name picks), and the host table that picks the service of
//! each request by its `Host` (or `:authority`) — 421 for a host another
//! service on the address serves when the TLS name picked a different
//! one, 404 for a host no service claims.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{atomic::Ordering::Relaxed, Arc, Mutex},
    time::Duration,
};

use arc_swap::ArcSwap;
use http::{header, Request, StatusCode};
use splitter_model::config::{l7::Settings, Service};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::warn;

use super::{conn, framing, proxy, tls, Refused, Shared};

/// The services on one address, by the hosts they claim.
pub struct HostTable {
    exact: HashMap<String, Arc<Shared>>,
    /// `(".example.com", service)` for `*.example.com`, longest first.
    wildcard: Vec<(String, Arc<Shared>)>,
    /// The service without `hosts`, if any: every host no other claims.
    default: Option<Arc<Shared>>,
    /// Counts what happens on the address before a service is known
    /// (refusals, head timeouts, failed handshakes, closes): the default
    /// service, else the first by name.
    pub first: Arc<Shared>,
}

impl HostTable {
    /// The table of `services` (by name, so `first` is stable).
    pub fn new(services: &[(&Service, Arc<Shared>)]) -> HostTable {
        let mut exact = HashMap::new();
        let mut wildcard = Vec::new();
        let mut default = None;
        for (svc, shared) in services {
            if svc.hosts.is_empty() {
                default = Some(shared.clone());
            }
            for host in &svc.hosts {
                let host = host.to_ascii_lowercase();
                match host.strip_prefix('*') {
                    Some(suffix) => wildcard.push((suffix.to_owned(), shared.clone())),
                    None => {
                        exact.insert(host, shared.clone());
                    }
                }
            }
        }
        wildcard.sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        let first = default.clone().unwrap_or_else(|| services[0].1.clone());
        HostTable { exact, wildcard, default, first }
    }

    /// The service of `host` (lower case, no port, no trailing dot), or
    /// of a request without one: an exact name, else the longest wildcard
    /// suffix, else the default.
    pub fn lookup(&self, host: Option<&str>) -> Option<&Arc<Shared>> {
        if let Some(host) = host {
            if let Some(s) = self.exact.get(host) {
                return Some(s);
            }
            if let Some((_, s)) = self.wildcard.iter().find(|(suffix, _)| host.ends_with(suffix.as_str())) {
                return Some(s);
            }
        }
        self.default.as_ref()
    }

    /// Whether any service on the address terminates TLS (then all do).
    fn tls(&self) -> bool {
        self.first.tls.terminator.load().is_some()
    }
}

/// A request's host, as the table matches it: the URI's authority (h2,
/// absolute form) or `Host`, lower case, without port or trailing dot.
pub fn request_host<B>(req: &Request<B>) -> Option<String> {
    let raw = match req.uri().authority() {
        Some(a) => a.host().to_owned(),
        None => {
            let h = req.headers().get(header::HOST)?.to_str().ok()?;
            let authority: http::uri::Authority = h.parse().ok()?;
            authority.host().to_owned()
        }
    };
    Some(raw.trim_end_matches('.').to_ascii_lowercase())
}

/// Which service answers a request.
pub enum Pick {
    Service(Arc<Shared>),
    /// Served here, but by another service than the one the connection's
    /// TLS server name chose (h2 connection reuse): 421, so the client
    /// retries on a new connection.
    Misdirected,
    /// No service on the address claims the host: 404.
    Unknown,
}

/// The service for `req` on a connection whose TLS server name chose
/// `by_sni` (`None`: plain, or a name no service claims).
pub fn pick<B>(table: &HostTable, req: &Request<B>, by_sni: Option<&Arc<Shared>>) -> Pick {
    if table.exact.is_empty() && table.wildcard.is_empty() {
        // One service, claiming every host: no need to read the host.
        return Pick::Service(table.first.clone());
    }
    let host = request_host(req);
    match table.lookup(host.as_deref()) {
        None => Pick::Unknown,
        Some(s) if by_sni.is_some_and(|chosen| !Arc::ptr_eq(chosen, s)) => Pick::Misdirected,
        Some(s) => Pick::Service(s.clone()),
    }
}

/// A listener on `addr` with `IP_FREEBIND` (the address need not exist yet)
/// and `SO_REUSEADDR`.
pub fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
        socket.set_freebind_v6(true)?;
    } else {
        socket.set_freebind_v4(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    // Room for the connections that queue while a new agent takes the
    // listener over (the kernel caps it at net.core.somaxconn).
    socket.listen(4096)?;
    tokio::net::TcpListener::from_std(socket.into())
}

/// Who may hold a connection to one listener: its own limit, one per client
/// address, and the l7 side's share of the agent's descriptors.
pub struct Limits {
    listener: Arc<Semaphore>,
    per_client: u32,
    clients: Arc<Mutex<HashMap<IpAddr, u32>>>,
    budget: Arc<Semaphore>,
}

/// A served connection's place under every limit, given back when it ends.
struct Admitted {
    _listener: OwnedSemaphorePermit,
    _budget: OwnedSemaphorePermit,
    client: IpAddr,
    clients: Arc<Mutex<HashMap<IpAddr, u32>>>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut clients = self.clients.lock().expect("not poisoned");
        if let Some(n) = clients.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                clients.remove(&self.client);
            }
        }
    }
}

impl Limits {
    pub fn new(settings: &Settings, budget: Arc<Semaphore>) -> Limits {
        Limits {
            listener: Arc::new(Semaphore::new(settings.max_connections as usize)),
            per_client: settings.max_connections_per_client,
            clients: Arc::default(),
            budget,
        }
    }

    /// A place for a connection from `client`, or the limit that refuses it.
    fn admit(&self, client: IpAddr) -> Result<Admitted, Refused> {
        let budget = self.budget.clone().try_acquire_owned().map_err(|_| Refused::Budget)?;
        let listener = self.listener.clone().try_acquire_owned().map_err(|_| Refused::Listener)?;
        let mut clients = self.clients.lock().expect("not poisoned");
        let n = clients.entry(client).or_default();
        if *n >= self.per_client {
            return Err(Refused::Client);
        }
        *n += 1;
        Ok(Admitted { _listener: listener, _budget: budget, client, clients: self.clients.clone() })
    }
}

/// How often a listener may log that it refuses connections.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// What tells a listener and its connections that the agent stops.
#[derive(Clone)]
pub struct Stopping {
    /// Set: stop accepting (the listener is handed back, still open).
    pub accept: tokio::sync::watch::Receiver<bool>,
    /// Set: finish what is in flight and close (see [`conn::serve`]).
    pub drain: tokio::sync::watch::Receiver<bool>,
    /// How long responses carry `Connection: close` before idle
    /// connections are closed.
    pub grace: Duration,
}

/// Accepts connections on `listener` and serves HTTP/1.1 and h2 (h2c, or
/// over TLS when its services terminate it) on each, each request by the
/// service `hosts` picks, until `stop.accept` is set: then it hands the
/// listener back (still open: the kernel keeps queueing connections for
/// whoever takes it). A connection over a limit is closed at once and
/// counted; the listener says so in the log at most every
/// [`REFUSAL_LOG_EVERY`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    hosts: Arc<ArcSwap<HostTable>>,
    limits: Limits,
    settings: Settings,
    stop: Stopping,
) -> tokio::net::TcpListener {
    let builder = Arc::new(conn::builder(&settings));
    let mut last_log: Option<std::time::Instant> = None;
    let mut unlogged = 0u64;
    let mut stop_accepting = stop.accept.clone();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop_accepting.wait_for(|s| *s) => return listener,
            accepted = listener.accept() => accepted,
        };
        let (stream, client) = match accepted {
            Ok(c) => c,
            Err(e) => {
                // Out of fds and the like: back off rather than spin.
                warn!(listen = ?listener.local_addr().ok(), "l7: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let table = hosts.load_full();
        let first = table.first.clone();
        let admitted = match limits.admit(client.ip()) {
            Ok(a) => a,
            Err(why) => {
                drop(stream);
                first.stats.refused[why as usize].fetch_add(1, Relaxed);
                unlogged += 1;
                if last_log.is_none_or(|t| t.elapsed() >= REFUSAL_LOG_EVERY) {
                    warn!(service = %first.name, %client, refused = unlogged, "l7: refusing connections: at {}", why.why());
                    last_log = Some(std::time::Instant::now());
                    unlogged = 0;
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (hosts, builder, stop) = (hosts.clone(), builder.clone(), stop.clone());
        let (head_limit, idle, max_head) =
            (settings.header_read_timeout, settings.idle_timeout, settings.max_header_bytes as usize);
        tokio::spawn(async move {
            // The socket, or TLS over it (the handshake bounded like a head),
            // with the certificates of the service the server name picks.
            let (stream, by_sni) = if table.tls() {
                let normal = |n: &str| n.trim_end_matches('.').to_ascii_lowercase();
                let choose = |sni: Option<&str>| {
                    let sni = sni.map(normal);
                    table.lookup(sni.as_deref()).unwrap_or(&table.first).tls.terminator.load_full()
                };
                let accepted = tls::accept(&first.tls.counters, stream, head_limit, client, choose).await;
                let Some((stream, sni)) = accepted else { return };
                let by_sni = sni.and_then(|n| table.lookup(Some(&normal(&n))).cloned());
                (stream, by_sni)
            } else {
                (tls::ClientIo::Plain(stream), None)
            };
            let scheme = stream.scheme();
            let switch = framing::Switch::default();
            let activity = conn::Activity::new(idle);
            let timeouts = first.stats.head_timeouts.clone();
            let io = framing::Guarded::new(stream, head_limit, max_head, timeouts, switch.clone(), activity.clone());
            let forwarding = proxy::Forwarding::new(client, scheme);
            let hold = Arc::new(admitted);
            let info = Arc::new(proxy::ClientConn {
                addr: client,
                switch,
                hold,
                idle,
                scheme,
                forwarding,
                affinity: Default::default(),
            });
            let draining = stop.drain.clone();
            let service = |activity: conn::Activity| {
                hyper::service::service_fn(move |req| {
                    let busy = activity.begin();
                    let picked = pick(&hosts.load(), &req, by_sni.as_ref());
                    let info = info.clone();
                    let http1 = req.version() < http::Version::HTTP_2;
                    let draining = draining.clone();
                    // Boxed: hyper moves the future it gets into its
                    // connection's state, and ours (the whole proxying,
                    // timers and upstream futures inside) is large.
                    Box::pin(async move {
                        let mut answer = match picked {
                            Pick::Service(shared) => proxy::handle(shared, info, req).await?,
                            Pick::Misdirected => proxy::error(
                                StatusCode::MISDIRECTED_REQUEST,
                                "this connection's TLS name is another service's: retry on a new connection",
                            ),
                            Pick::Unknown => proxy::error(StatusCode::NOT_FOUND, "no service here serves this host"),
                        };
                        // Stopping: an HTTP/1 client is told not to send
                        // more on this connection.
                        if http1 && *draining.borrow() && answer.status() != StatusCode::SWITCHING_PROTOCOLS {
                            answer.headers_mut().insert(header::CONNECTION, http::HeaderValue::from_static("close"));
                        }
                        Ok(answer.map(|body| conn::Tracked::new(body, busy)))
                    })
                })
            };
            let drain = conn::Drain { signal: stop.drain, grace: stop.grace };
            conn::serve(&builder, io, drain, &first.stats.closes, client, activity, service).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_requests_host_comes_from_its_authority_or_host_without_port_or_dot() {
        let req = |uri: &str, host: Option<&str>| {
            let mut b = Request::builder().uri(uri);
            if let Some(h) = host {
                b = b.header(header::HOST, h);
            }
            b.body(()).unwrap()
        };
        assert_eq!(request_host(&req("/", Some("API.Example.com:8443"))).as_deref(), Some("api.example.com"));
        assert_eq!(request_host(&req("/", Some("api.example.com."))).as_deref(), Some("api.example.com"));
        assert_eq!(request_host(&req("https://b.test/x", Some("a.test"))).as_deref(), Some("b.test"));
        assert_eq!(request_host(&req("/", Some("[2001:db8::1]:80"))).as_deref(), Some("[2001:db8::1]"));
        assert_eq!(request_host(&req("/", None)), None);
        assert_eq!(request_host(&req("/", Some("bad host"))), None);
    }
}
