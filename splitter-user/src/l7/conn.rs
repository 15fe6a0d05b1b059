//! One client connection of an l7 listener, from accept to close: hyper's
//! server settings from `l7:` (head and stream limits), the idle bound
//! (`l7.idle_timeout`: a connection with no request in flight that long is
//! closed politely) and why a connection ended, counted.

use std::{
    pin::{pin, Pin},
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto::Builder,
};
use splitter_model::config::l7::{Settings, MAX_HEADERS};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use super::proxy::ProxyBody;

/// hyper's server for one listener's connections, built once from `l7:`.
pub fn builder(settings: &Settings) -> Builder<TokioExecutor> {
    let max_head = settings.max_header_bytes as usize;
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // The framing guard bounds a head's arrival, and `Activity` the
        // wait between requests: hyper's own head timer (which also runs
        // while a keep-alive connection idles) is not wanted.
        .header_read_timeout(None)
        .max_buf_size(max_head.max(8192));
    // hyper's own bound on header fields is MAX_HEADERS (100) when none is
    // set, kept in an array on the stack; setting it, even to 100, makes
    // hyper fill a vector of that many per request. l7_limits checks that
    // 101 fields get 431.
    const _: () = assert!(MAX_HEADERS == 100, "hyper's default bound on header fields");
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(settings.max_header_bytes)
        .max_concurrent_streams(settings.max_concurrent_streams)
        // The bound on streams a client opens and resets at once (the
        // "rapid reset" flood, CVE-2023-44487): past it, GOAWAY.
        .max_pending_accept_reset_streams(20);
    builder
}

/// Counters of why client connections ended, other than normally.
#[derive(Default)]
pub struct Closes {
    /// Closed after `l7.idle_timeout` with no request in flight.
    pub idle: AtomicU64,
    /// A request head larger than `l7.max_header_bytes` or with more than
    /// [`MAX_HEADERS`] fields: answered 431 and closed.
    pub too_large: AtomicU64,
    /// An h2 client that broke the stream limits (GOAWAY
    /// `ENHANCE_YOUR_CALM`, e.g. streams opened and reset in a flood).
    pub h2_flood: AtomicU64,
}

/// What a connection is doing: requests in flight, and when the last one
/// ended (milliseconds on the connection's clock).
#[derive(Clone)]
pub struct Activity(Arc<ActivityState>);

pub struct ActivityState {
    /// `l7.idle_timeout`: how long the connection may idle.
    idle: Duration,
    in_flight: AtomicUsize,
    /// A request head is awaited (the framing guard bounds it).
    awaiting_head: AtomicBool,
    last_ms: AtomicU64,
    born: tokio::time::Instant,
}

impl Activity {
    /// A new connection's, which may idle `idle`.
    pub fn new(idle: Duration) -> Activity {
        Activity(Arc::new(ActivityState {
            idle,
            in_flight: AtomicUsize::new(0),
            awaiting_head: AtomicBool::new(false),
            last_ms: AtomicU64::new(0),
            born: tokio::time::Instant::now(),
        }))
    }

    /// A request begins; it is in flight until the returned guard drops
    /// (with its response body).
    pub fn begin(&self) -> Busy {
        self.0.in_flight.fetch_add(1, Relaxed);
        Busy(self.0.clone())
    }

    /// Whether a request head is awaited: meanwhile the connection is not
    /// idle (`l7.header_read_timeout` bounds it instead).
    pub fn awaiting_head(&self, awaiting: bool) {
        self.0.awaiting_head.store(awaiting, Relaxed);
    }

    /// When the connection may be closed as idle, or `None` while a request
    /// is in flight or its head is arriving.
    fn idle_deadline(&self) -> Option<tokio::time::Instant> {
        if self.0.in_flight.load(Relaxed) > 0 || self.0.awaiting_head.load(Relaxed) {
            return None;
        }
        Some(self.0.born + Duration::from_millis(self.0.last_ms.load(Relaxed)) + self.0.idle)
    }
}

/// One request in flight on a connection.
pub struct Busy(Arc<ActivityState>);

impl Drop for Busy {
    fn drop(&mut self) {
        let now = self.0.born.elapsed().as_millis() as u64;
        self.0.last_ms.fetch_max(now, Relaxed);
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

/// A response body that keeps its request in flight until it is sent (or
/// dropped).
pub struct Tracked {
    inner: ProxyBody,
    _busy: Busy,
}

impl Tracked {
    pub fn new(inner: ProxyBody, busy: Busy) -> Tracked {
        Tracked { inner, _busy: busy }
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = super::proxy::BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, super::proxy::BodyError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The agent stopping, as a connection sees it.
pub struct Drain {
    /// Set when the agent stops: the connection finishes what is in flight
    /// and closes.
    pub signal: tokio::sync::watch::Receiver<bool>,
    /// How long after the signal the connection still serves (its HTTP/1
    /// answers carrying `Connection: close`) before it is shut down
    /// politely: HTTP/1.1 closes once idle, h2 sends GOAWAY.
    pub grace: Duration,
}

/// Serves HTTP/1.1 (with upgrades) or h2 on `io` until the client goes, a
/// limit closes it, it idles (see [`Activity`]) with no request in flight, or the agent
/// stops ([`Drain`]); each ending is polite (HTTP/1.1 closes between
/// requests, h2 sends GOAWAY and finishes its streams). `make` builds the
/// connection's service from its `activity`.
pub async fn serve<I, S, F>(
    builder: &Builder<TokioExecutor>,
    io: I,
    mut drain: Drain,
    closes: &Closes,
    client: std::net::SocketAddr,
    activity: Activity,
    make: F,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: FnOnce(Activity) -> S,
    S: hyper::service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<Tracked>,
            Error = std::convert::Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), make(activity.clone()));
    let mut conn = pin!(conn);
    let mut closing = false;
    let mut shut_at: Option<tokio::time::Instant> = None;
    let ended = loop {
        // While a request is in flight, look again after `idle`.
        let idle = activity.0.idle;
        let wake = activity.idle_deadline().unwrap_or_else(|| tokio::time::Instant::now() + idle);
        tokio::select! {
            ended = conn.as_mut() => break ended,
            () = tokio::time::sleep_until(wake), if !closing => {
                if activity.idle_deadline().is_some_and(|d| d <= tokio::time::Instant::now()) {
                    closes.idle.fetch_add(1, Relaxed);
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
            _ = drain.signal.wait_for(|d| *d), if shut_at.is_none() && !closing => {
                shut_at = Some(tokio::time::Instant::now() + drain.grace);
            }
            () = async { tokio::time::sleep_until(shut_at.expect("guarded")).await }, if shut_at.is_some() && !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    };
    if let Err(e) = ended {
        match classify(&*e) {
            Some(Ended::TooLarge) => {
                closes.too_large.fetch_add(1, Relaxed);
            }
            Some(Ended::Flood) => {
                closes.h2_flood.fetch_add(1, Relaxed);
            }
            None => {}
        }
        debug!(%client, "connection ended: {e}");
    }
}

/// Why a connection ended with an error, when it was a limit.
enum Ended {
    TooLarge,
    Flood,
}

fn classify(e: &(dyn std::error::Error + 'static)) -> Option<Ended> {
    let mut at: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = at {
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_parse_too_large() {
                return Some(Ended::TooLarge);
            }
        }
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            if h2.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM) {
                return Some(Ended::Flood);
            }
        }
        at = err.source();
    }
    None
}
