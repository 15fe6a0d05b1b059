//! One request through the proxy: check it, decide its version on the table it
//! arrived with, rewrite the headers a proxy must (hop-by-hop out,
//! `X-Forwarded-For`/`Forwarded` in), forward it to an endpoint with the
//! pooled client and stream the answer back. Failures become 400/502/504.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering::Relaxed},
        Arc,
    },
};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};
use hyper::body::{Body, Incoming};

use splitter_common::service::BPS;
use tokio::sync::oneshot;

use super::{
    mirror::{Captured, Job, Tee},
    route::RequestView,
    tls::Scheme,
    upstream::{is_grpc, Via},
    Shared, VersionStats,
};

/// The body every response and upstream request carries.
pub type ProxyBody = BoxBody<Bytes, BodyError>;

/// Why a body failed: hyper's error, or the proxy's own HTTP/1.1 client's
/// ([`super::origin`]). A type of its own: with a boxed error as the
/// body's, spawned futures fail the compiler's `Send` check.
#[derive(Debug)]
pub struct BodyError(Box<dyn std::error::Error + Send + Sync>);

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for BodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

impl From<hyper::Error> for BodyError {
    fn from(e: hyper::Error) -> Self {
        BodyError(Box::new(e))
    }
}

impl From<std::io::Error> for BodyError {
    fn from(e: std::io::Error) -> Self {
        BodyError(Box::new(e))
    }
}

impl From<&'static str> for BodyError {
    fn from(why: &'static str) -> Self {
        BodyError(why.into())
    }
}

/// Headers that describe one hop only (RFC 9110 §7.6.1), never forwarded
/// (`TE: trailers` is put back: it says the client takes trailers, which
/// gRPC needs). `Trailer` is end-to-end (RFC 9110 §6.6.2) and kept.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
];

/// End-to-end headers a `Connection` list never removes: naming them there
/// would let a client strip what the endpoint relies on.
const END_TO_END: [HeaderName; 5] =
    [header::HOST, header::CONTENT_LENGTH, header::CONTENT_TYPE, header::AUTHORIZATION, header::COOKIE];

/// The mirror marker header on copies sent to a shadow version.
pub const MIRROR_HEADER: &str = "x-splitter-mirror";

/// The client connection a request came on.
pub struct ClientConn {
    pub addr: SocketAddr,
    /// Set when the connection switches protocols (a 101).
    pub switch: super::framing::Switch,
    /// The connection's place under the limits, kept by a tunnel that
    /// outlives hyper's connection.
    pub hold: Arc<dyn std::any::Any + Send + Sync>,
    /// `l7.idle_timeout`: how long a tunnel may carry nothing.
    pub idle: std::time::Duration,
    /// How the client reached us (plain HTTP or TLS).
    pub scheme: Scheme,
    /// What its requests add to the forwarding headers.
    pub forwarding: Forwarding,
    /// The endpoint connections its HTTP/1 requests went out on.
    pub affinity: Arc<super::affine::Affinity>,
}

/// Handles one request from `conn`. A gRPC request that the proxy
/// itself answers (no endpoint reachable, a timeout, a refused request)
/// gets the answer as gRPC: a trailers-only response whose `grpc-status`
/// is the HTTP status's (as the gRPC spec maps them) and `grpc-message` the
/// reason, which every gRPC client reads.
pub async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ClientConn>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let grpc = is_grpc(req.headers());
    let resp = forward(shared, conn, req).await?;
    Ok(if grpc { as_grpc(resp) } else { resp })
}

/// The protocol an HTTP/1.1 request asks to switch to (`Upgrade`, with
/// `upgrade` among its `Connection` options), if any.
pub fn wants_upgrade<B>(req: &Request<B>) -> Option<HeaderValue> {
    if req.version() != http::Version::HTTP_11 {
        return None;
    }
    let asked = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|o| o.trim().eq_ignore_ascii_case("upgrade"));
    asked.then(|| req.headers().get(header::UPGRADE).cloned()).flatten()
}

/// A response the proxy made itself, and why.
#[derive(Clone, Copy, Debug)]
struct LocalReply(&'static str);

/// `resp` for a gRPC client: the proxy's own answers become trailers-only
/// gRPC errors; an endpoint's pass as they are.
fn as_grpc(resp: Response<ProxyBody>) -> Response<ProxyBody> {
    let Some(LocalReply(why)) = resp.extensions().get::<LocalReply>().copied() else { return resp };
    let code = grpc_code_for(resp.status());
    let mut out = Response::new(Empty::new().map_err(|never| match never {}).boxed());
    let h = out.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert("grpc-status", HeaderValue::from(code));
    h.insert("grpc-message", HeaderValue::from_static(why));
    out.extensions_mut().insert(LocalReply(why));
    out
}

/// The gRPC status for an HTTP status, as gRPC's HTTP mapping says: 400
/// INTERNAL, 401 UNAUTHENTICATED, 403 PERMISSION_DENIED, 404 UNIMPLEMENTED,
/// 429/502/503/504 UNAVAILABLE, anything else UNKNOWN.
pub fn grpc_code_for(status: StatusCode) -> u32 {
    match status.as_u16() {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

/// Routes and forwards one request (see [`handle`]).
async fn forward(
    shared: Arc<Shared>,
    conn: Arc<ClientConn>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let client = conn.addr;
    // Framing was settled by hyper's parser: differing Content-Lengths are
    // refused (400); with Transfer-Encoding and Content-Length, chunked wins
    // and the connection closes after this answer, so nothing smuggled behind
    // the body is ever read. Upstream, the request is framed anew.
    let arrived = std::time::Instant::now();
    let mut req = req;
    if let Err(why) = check_request(&mut req) {
        shared.stats.client_error();
        return Ok(why.answer());
    }
    // The table this request started with, even if a flip swaps it meanwhile.
    let table = shared.table.load_full();
    let decision = {
        let view = RequestView {
            method: req.method(),
            path: req.uri().path(),
            query: req.uri().query(),
            headers: req.headers(),
            client: client.ip(),
        };
        table.decide(&view, shared.random())
    };
    let stats = shared.stats.version(&table.versions[decision.version]);
    stats.request();
    let target = &table.targets[decision.version];
    // An upgrade (WebSocket...) goes to the version chosen like any request;
    // after a 101 the connection becomes a tunnel to that endpoint.
    let upgrade = wants_upgrade(&req);
    let mut client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    forward_headers(&mut parts.headers, &parts.uri, &conn.forwarding);
    if let Some(protocol) = &upgrade {
        parts.headers.insert(header::UPGRADE, protocol.clone());
        parts.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    let retriable = is_idempotent(&parts.method) && body.is_end_stream();
    // Whether the client's own body failed (or is still coming): then a
    // failed request is the client's fault, not the version's.
    let (body, client_body) = Watched::new(body);
    let mut body = body.boxed();
    // A sampled request is copied to the mirror; `compare` gets the primary's answer.
    let mut compare: Option<(oneshot::Sender<Captured>, usize)> = None;
    if let Some(m) = table.mirror.as_ref().filter(|m| m.methods.contains(&parts.method)) {
        if shared.random() % (BPS as u64) < u64::from(m.bps) {
            if let Some(runtime) = shared.mirror.load_full() {
                shared.mirror_stats.sampled();
                if body.size_hint().lower() > m.cap as u64 {
                    shared.mirror_stats.skipped_body_too_large();
                } else {
                    let (tee, body_copy) = Tee::new(body, m.cap);
                    body = tee.boxed();
                    let (tx, rx) = oneshot::channel();
                    let shadow = &table.targets[m.version];
                    let pick = shadow.endpoint_for(shared.random());
                    let job =
                        Job { parts: parts.clone(), endpoint: pick, body: body_copy, primary: m.compare.then_some(rx) };
                    if runtime.offer(job) {
                        compare = m.compare.then_some((tx, m.cap));
                    } else {
                        shared.mirror_stats.dropped_queue_full();
                    }
                }
            }
        }
    }
    // Only an idempotent request without a body is sent again, to the next
    // endpoint (a healthy one first).
    let attempts = if retriable { target.endpoints.len() } else { 1 };
    let upstreams = shared.upstreams.load_full();
    let via = upstreams.via(parts.version, upgrade.is_some());
    if via == Via::Http1 && is_grpc(&parts.headers) {
        tracing::debug!(service = %shared.name, "a gRPC request, and upstream.protocol sends HTTP/1.1: 502");
        stats.bad_gateway(arrived.elapsed());
        return Ok(error(
            StatusCode::BAD_GATEWAY,
            "gRPC needs HTTP/2 to the endpoints: set upstream.protocol to h2c, h2 or auto",
        ));
    }
    // A client's HTTP/1 requests come one at a time: they go on the
    // endpoint connections its connection holds. HTTP/2 streams and
    // upgrades take the shared pool.
    let affinity = (parts.version < Version::HTTP_2 && upgrade.is_none()).then_some(&conn.affinity);
    let mut body = Some(body);
    let mut parts = Some(parts);
    for (attempt, endpoint) in target.attempts(decision.endpoint, attempts).enumerate() {
        let last = attempt + 1 == attempts;
        // Copied only while another attempt may follow.
        let head = if last { parts.take() } else { parts.clone() }.expect("kept until the last attempt");
        let upstream_body = body.take().unwrap_or_else(|| Empty::new().map_err(|never| match never {}).boxed());
        let sent =
            tokio::time::timeout(table.response_timeout, upstreams.send(via, endpoint, head, upstream_body, affinity))
                .await;
        match sent {
            Ok(Ok(mut resp)) => {
                let switched = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
                let endpoint_upgrade = switched.then(|| hyper::upgrade::on(&mut resp));
                let (mut rparts, rbody) = resp.into_parts();
                shared.passive(&table, endpoint, rparts.status.is_server_error(), || {
                    format!("answered {}", rparts.status.as_u16())
                });
                let protocol = rparts.headers.get(header::UPGRADE).cloned();
                strip_hop_by_hop(&mut rparts.headers);
                stats.response(rparts.status, arrived.elapsed());
                if let (Some(theirs), Some(ours), Some(protocol)) = (endpoint_upgrade, client_upgrade.take(), protocol)
                {
                    rparts.headers.insert(header::UPGRADE, protocol);
                    rparts.headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                    // The framing guard steps aside before the 101 is written.
                    conn.switch.switch();
                    let (idle, hold, shared) = (conn.idle, conn.hold.clone(), shared.clone());
                    tokio::spawn(async move {
                        if super::tunnel::run(ours, theirs, idle, hold).await == super::tunnel::Ended::Idle {
                            shared.stats.closes.idle.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    });
                    return Ok(Response::from_parts(rparts, Empty::new().map_err(|never| match never {}).boxed()));
                }
                let mut rbody = rbody.boxed();
                if rparts.status.is_success() && is_grpc(&rparts.headers) {
                    match grpc_status(&rparts.headers) {
                        // Trailers-only: the status is in the head.
                        Some(code) => stats.grpc(code),
                        None => rbody = GrpcWatch { inner: rbody, stats: Some(stats.clone()) }.boxed(),
                    }
                }
                let rbody = match compare.take() {
                    Some((tx, cap)) => {
                        let (tee, copy) = Tee::new(rbody, cap);
                        let _ =
                            tx.send(Captured { status: rparts.status, headers: rparts.headers.clone(), body: copy });
                        tee.boxed()
                    }
                    None => rbody,
                };
                return Ok(Response::from_parts(rparts, rbody));
            }
            Ok(Err(e)) if e.is_connect() && !last => {
                shared.passive(&table, endpoint, true, || "connect failed".into());
                tracing::debug!(%endpoint, "connect failed ({e}); trying the next endpoint");
            }
            Ok(Err(_)) if client_body.failed() => {
                stats.client_error();
                return Ok(error(StatusCode::BAD_REQUEST, "the request body is malformed"));
            }
            Ok(Err(e)) => {
                let what = if e.is_connect() { "connect failed" } else { "the connection failed" };
                shared.passive(&table, endpoint, true, || what.into());
                tracing::debug!(%endpoint, "upstream failed: {e}");
                stats.bad_gateway(arrived.elapsed());
                return Ok(error(StatusCode::BAD_GATEWAY, "the endpoint could not be reached or failed"));
            }
            Err(_) if client_body.failed() || !client_body.done() => {
                stats.client_error();
                return Ok(error(StatusCode::REQUEST_TIMEOUT, "the request body did not arrive in time"));
            }
            Err(_) => {
                shared.passive(&table, endpoint, true, || "no answer in time".into());
                stats.timeout(arrived.elapsed());
                return Ok(error(StatusCode::GATEWAY_TIMEOUT, "the endpoint did not answer in time"));
            }
        }
    }
    unreachable!("the last attempt always answers (a version has at least one endpoint)")
}

/// The `grpc-status` of a gRPC answer's head or trailers: its number, or
/// `UNKNOWN` (2) when it is not one.
pub fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    let v = headers.get("grpc-status")?;
    Some(v.to_str().ok().and_then(|s| s.trim().parse().ok()).unwrap_or(2))
}

/// A gRPC response body on its way to the client: its `grpc-status`
/// (from the trailers) is counted for the version once it passes; a stream
/// that ends without one counts as `UNKNOWN` (2), as gRPC clients see it.
struct GrpcWatch {
    inner: ProxyBody,
    stats: Option<Arc<VersionStats>>,
}

impl Body for GrpcWatch {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BodyError>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            std::task::Poll::Ready(Some(Ok(frame))) => {
                let code = match frame.trailers_ref() {
                    Some(t) => Some(grpc_status(t).unwrap_or(2)),
                    None if self.inner.is_end_stream() => Some(2),
                    None => None,
                };
                if let Some(code) = code {
                    if let Some(stats) = self.stats.take() {
                        stats.grpc(code);
                    }
                }
            }
            std::task::Poll::Ready(None) => {
                if let Some(stats) = self.stats.take() {
                    stats.grpc(2);
                }
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// What the client's body did: failed (malformed, cut off) or ended.
#[derive(Clone, Default)]
pub struct BodyWatch(Arc<BodyState>);

#[derive(Default)]
pub struct BodyState {
    failed: AtomicBool,
    done: AtomicBool,
}

impl BodyWatch {
    pub fn failed(&self) -> bool {
        self.0.failed.load(Relaxed)
    }
    pub fn done(&self) -> bool {
        self.0.done.load(Relaxed)
    }
}

/// The client's request body, watched on its way to the endpoint.
pub struct Watched {
    inner: Incoming,
    watch: BodyWatch,
}

impl Watched {
    pub fn new(inner: Incoming) -> (Watched, BodyWatch) {
        let watch = BodyWatch::default();
        if inner.is_end_stream() {
            watch.0.done.store(true, Relaxed);
        }
        (Watched { inner, watch: watch.clone() }, watch)
    }
}

impl Body for Watched {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BodyError>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx).map_err(BodyError::from);
        match &polled {
            std::task::Poll::Ready(Some(Err(_))) => self.watch.0.failed.store(true, Relaxed),
            std::task::Poll::Ready(None) => self.watch.0.done.store(true, Relaxed),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Why a request is refused before it is routed: the client got it wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientError {
    /// `Host` more than once.
    TwoHosts,
    /// HTTP/1.1 without `Host` (RFC 9112 §3.2).
    NoHost,
    /// HTTP/2: `host` and `:authority` differ (RFC 9113 §8.3.1).
    HostAuthorityDiffer,
    /// A method longer than [`MAX_METHOD`].
    LongMethod,
    /// `CONNECT`: the proxy does not tunnel.
    Connect,
}

/// Longest method accepted (the standard ones are at most 7 characters).
pub const MAX_METHOD: usize = 32;

impl ClientError {
    /// The answer: 400, or 405 for `CONNECT`.
    pub fn answer(self) -> Response<ProxyBody> {
        let (status, why) = match self {
            ClientError::TwoHosts => (StatusCode::BAD_REQUEST, "more than one Host header"),
            ClientError::NoHost => (StatusCode::BAD_REQUEST, "an HTTP/1.1 request needs a Host header"),
            ClientError::HostAuthorityDiffer => (StatusCode::BAD_REQUEST, "host and :authority differ"),
            ClientError::LongMethod => (StatusCode::BAD_REQUEST, "method too long"),
            ClientError::Connect => (StatusCode::METHOD_NOT_ALLOWED, "CONNECT is not served here"),
        };
        let mut resp = error(status, why);
        if self == ClientError::Connect {
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH, TRACE"));
        }
        resp
    }
}

/// Checks a request's head and puts it in order before it is routed:
/// refuses what no endpoint should see (see [`ClientError`]), makes an
/// absolute-form request's authority its `Host`, drops header names with an
/// underscore (as nginx does: they alias dashed names in CGI-style
/// environments) and a client's own mirror marker.
pub fn check_request<B>(req: &mut Request<B>) -> Result<(), ClientError> {
    if req.method().as_str().len() > MAX_METHOD {
        return Err(ClientError::LongMethod);
    }
    if req.method() == Method::CONNECT {
        return Err(ClientError::Connect);
    }
    let hosts = req.headers().get_all(header::HOST).iter().count();
    if hosts > 1 {
        return Err(ClientError::TwoHosts);
    }
    let authority = req.uri().authority().map(|a| a.as_str().to_owned());
    match (req.version(), authority) {
        (http::Version::HTTP_2 | http::Version::HTTP_3, Some(a))
            if req.headers().get(header::HOST).is_some_and(|h| h.as_bytes() != a.as_bytes()) =>
        {
            return Err(ClientError::HostAuthorityDiffer);
        }
        (http::Version::HTTP_2 | http::Version::HTTP_3, Some(_)) => {}
        // Absolute form: the authority is the host (RFC 9112 §3.2.2).
        (_, Some(a)) => {
            let v = HeaderValue::from_str(&a).map_err(|_| ClientError::NoHost)?;
            req.headers_mut().insert(header::HOST, v);
        }
        (http::Version::HTTP_11, None) if hosts == 0 => return Err(ClientError::NoHost),
        _ => {}
    }
    let underscored: Vec<HeaderName> = req.headers().keys().filter(|n| n.as_str().contains('_')).cloned().collect();
    for name in underscored {
        req.headers_mut().remove(&name);
    }
    req.headers_mut().remove(MIRROR_HEADER);
    Ok(())
}

/// GET, HEAD, OPTIONS, TRACE, PUT, DELETE (RFC 9110 §9.2.2).
pub fn is_idempotent(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE)
}

/// Removes hop-by-hop headers, including those `Connection` names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(named.iter().filter(|n| !END_TO_END.contains(n))) {
        headers.remove(name);
    }
    // `Upgrade` only means something with `Connection: upgrade`, which is gone.
    headers.remove(header::UPGRADE);
}

/// What a client connection adds to each request's forwarding headers,
/// written once per connection.
pub struct Forwarding {
    /// The client's address, as `X-Forwarded-For` lists it.
    client: HeaderValue,
    /// `for=...;proto=...`, `Forwarded`'s element for the client.
    element: String,
    scheme: Scheme,
}

impl Forwarding {
    pub fn new(client: SocketAddr, scheme: Scheme) -> Forwarding {
        let ip = client.ip();
        let element = match ip {
            std::net::IpAddr::V4(ip) => format!("for={ip};proto={}", scheme.as_str()),
            std::net::IpAddr::V6(ip) => format!("for=\"[{ip}]\";proto={}", scheme.as_str()),
        };
        let client = HeaderValue::from_str(&ip.to_string()).expect("addresses are valid header text");
        Forwarding { client, element, scheme }
    }
}

/// The request headers as the endpoint sees them: hop-by-hop removed, the
/// client appended to `X-Forwarded-For` and `Forwarded`, `Host` kept (set
/// from the HTTP/2 authority when the client sent none), the client's
/// scheme in `Forwarded` and `X-Forwarded-Proto`.
pub fn forward_headers(headers: &mut HeaderMap, uri: &Uri, from: &Forwarding) {
    use std::fmt::Write as _;
    let trailers = headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
    strip_hop_by_hop(headers);
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if !headers.contains_key(header::HOST) {
        if let Some(v) = uri.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()) {
            headers.insert(header::HOST, v);
        }
    }
    // A value written here goes into its own buffer, which the header then
    // owns (no copy).
    let xff = match headers.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) => owned_value(format!("{prev}, {}", from.client.to_str().unwrap_or_default())),
        None => Some(from.client.clone()),
    };
    headers.insert(X_FORWARDED_FOR, xff.expect("addresses are valid header text"));
    let mut fwd = String::with_capacity(96);
    if let Some(prev) = headers.get(header::FORWARDED).and_then(|v| v.to_str().ok()) {
        let _ = write!(fwd, "{prev}, ");
    }
    fwd.push_str(&from.element);
    if let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) {
        if !host.contains(['"', ';', ',']) {
            let _ = write!(fwd, ";host=\"{host}\"");
        }
    }
    if let Some(v) = owned_value(fwd) {
        headers.insert(header::FORWARDED, v);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(from.scheme.as_str()));
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// `text` as a header value that owns its buffer, if it is valid header text.
fn owned_value(text: String) -> Option<HeaderValue> {
    HeaderValue::from_maybe_shared(Bytes::from(text)).ok()
}

/// A short plain-text error answer from the proxy itself.
pub fn error(status: StatusCode, why: &'static str) -> Response<ProxyBody> {
    let mut resp = Response::new(Full::new(Bytes::from(format!("{status}: {why}\n"))).map_err(|n| match n {}).boxed());
    *resp.status_mut() = status;
    resp.extensions_mut().insert(LocalReply(why));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_and_the_client_is_appended() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, x-secret".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert(header::TE, "gzip, Trailers".parse().unwrap());
        h.insert(header::UPGRADE, "h2c".parse().unwrap());
        h.insert("x-forwarded-for", "192.0.2.7".parse().unwrap());
        h.insert("x-kept", "yes".parse().unwrap());
        let uri: Uri = "http://api.example/x".parse().unwrap();
        forward_headers(&mut h, &uri, &Forwarding::new("198.51.100.1:5000".parse().unwrap(), Scheme::Http));
        for gone in ["connection", "keep-alive", "x-secret", "upgrade"] {
            assert!(!h.contains_key(gone), "{gone} was forwarded");
        }
        assert_eq!(h[header::TE], "trailers", "only TE: trailers is forwarded");
        let mut gzip = HeaderMap::new();
        gzip.insert(header::TE, "gzip".parse().unwrap());
        gzip.insert(header::TRAILER, "grpc-status".parse().unwrap());
        forward_headers(&mut gzip, &uri, &Forwarding::new("198.51.100.1:5000".parse().unwrap(), Scheme::Https));
        assert!(!gzip.contains_key(header::TE));
        assert_eq!(gzip[header::TRAILER], "grpc-status", "Trailer is end-to-end");
        assert_eq!(h["x-kept"], "yes");
        assert_eq!(h["x-forwarded-for"], "192.0.2.7, 198.51.100.1");
        assert_eq!(h[header::HOST], "api.example");
        assert_eq!(h[header::FORWARDED], "for=198.51.100.1;proto=http;host=\"api.example\"");
        assert_eq!(h["x-forwarded-proto"], "http");
        let mut h6 = HeaderMap::new();
        let from = Forwarding::new("[2001:db8::1]:5000".parse().unwrap(), Scheme::Https);
        forward_headers(&mut h6, &"/".parse().unwrap(), &from);
        assert_eq!(h6[header::FORWARDED], "for=\"[2001:db8::1]\";proto=https");
        assert_eq!(h6["x-forwarded-proto"], "https");
    }

    #[test]
    fn requests_the_client_got_wrong_are_refused_and_the_rest_put_in_order() {
        let req = |method: &str, uri: &str, version: http::Version, headers: &[(&str, &str)]| {
            let mut b = Request::builder().method(method).uri(uri).version(version);
            for (k, v) in headers {
                b = b.header(*k, *v);
            }
            b.body(()).unwrap()
        };
        use http::Version as V;
        let refused = [
            (req("GET", "/", V::HTTP_11, &[("host", "a"), ("host", "b")]), ClientError::TwoHosts),
            (req("GET", "/", V::HTTP_11, &[]), ClientError::NoHost),
            (req("GET", "https://a.example/x", V::HTTP_2, &[("host", "b.example")]), ClientError::HostAuthorityDiffer),
            (req(&"X".repeat(33), "/", V::HTTP_11, &[("host", "a")]), ClientError::LongMethod),
            (req("CONNECT", "a.example:443", V::HTTP_11, &[("host", "a.example:443")]), ClientError::Connect),
        ];
        for (mut r, want) in refused {
            assert_eq!(check_request(&mut r), Err(want));
        }
        assert_eq!(ClientError::Connect.answer().status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(ClientError::NoHost.answer().status(), StatusCode::BAD_REQUEST);
        // HTTP/1.0 needs no Host; h2 may repeat its authority in host.
        assert_eq!(check_request(&mut req("GET", "/", V::HTTP_10, &[])), Ok(()));
        assert_eq!(check_request(&mut req("GET", "https://a.example/", V::HTTP_2, &[("host", "a.example")])), Ok(()));
        // The absolute form's authority becomes Host; underscores and the
        // mirror marker go.
        let mut r = req(
            "GET",
            "http://real.example/x",
            V::HTTP_11,
            &[("host", "fake.example"), ("x_user", "admin"), ("x-user", "me"), (MIRROR_HEADER, "1")],
        );
        assert_eq!(check_request(&mut r), Ok(()));
        assert_eq!(r.headers()[header::HOST], "real.example");
        assert!(!r.headers().contains_key("x_user") && !r.headers().contains_key(MIRROR_HEADER));
        assert_eq!(r.headers()["x-user"], "me");
    }

    #[test]
    fn a_connection_list_never_strips_end_to_end_essentials() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "host, content-type, cookie, x-drop".parse().unwrap());
        h.insert(header::HOST, "a.example".parse().unwrap());
        h.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
        h.insert(header::COOKIE, "s=1".parse().unwrap());
        h.insert("x-drop", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h[header::HOST], "a.example");
        assert!(h.contains_key(header::CONTENT_TYPE) && h.contains_key(header::COOKIE));
        assert!(!h.contains_key("x-drop") && !h.contains_key(header::CONNECTION));
    }

    #[test]
    fn the_proxys_own_answers_to_grpc_clients_are_grpc_errors() {
        let reply = as_grpc(error(StatusCode::BAD_GATEWAY, "the endpoint could not be reached or failed"));
        assert_eq!(reply.status(), StatusCode::OK);
        assert_eq!(reply.headers()[header::CONTENT_TYPE], "application/grpc");
        assert_eq!(reply.headers()["grpc-status"], "14");
        assert_eq!(reply.headers()["grpc-message"], "the endpoint could not be reached or failed");
        assert!(reply.body().is_end_stream(), "trailers-only");
        assert_eq!(as_grpc(ClientError::NoHost.answer()).headers()["grpc-status"], "13");
        // An endpoint's answer is left as it is.
        let endpoint = Response::builder().status(503).body(Empty::new().map_err(|n| match n {}).boxed()).unwrap();
        assert_eq!(as_grpc(endpoint).status(), StatusCode::SERVICE_UNAVAILABLE);
        let codes: Vec<u32> = [400, 401, 403, 404, 408, 429, 500, 502, 503, 504]
            .iter()
            .map(|s| grpc_code_for(StatusCode::from_u16(*s).unwrap()))
            .collect();
        assert_eq!(codes, [13, 16, 7, 12, 2, 14, 2, 14, 14, 14]);
    }

    #[test]
    fn idempotent_methods() {
        assert!(is_idempotent(&Method::GET) && is_idempotent(&Method::PUT));
        assert!(!is_idempotent(&Method::POST) && !is_idempotent(&Method::PATCH));
    }
}
