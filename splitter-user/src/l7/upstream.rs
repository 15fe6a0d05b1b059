//! The connections towards a service's endpoints: HTTP/1.1 on the
//! connections a client's HTTP/1 connection holds ([`super::affine`]), a
//! pooled HTTP/1.1 keep-alive client (for HTTP/2 clients' requests,
//! upgrades and mirror copies), and one multiplexed HTTP/2 connection per endpoint
//! (our own small pool: the request keeps the client's `:authority`, and a
//! failed connect is told from a failed request). `upstream.protocol` and
//! the client's version choose one per request.
//!
//! With `upstream.tls` both speak TLS (rustls on ring, verifying the
//! endpoints against the configured CA only): the HTTP/1.1 pool through
//! [`TlsConnect`] (ALPN `http/1.1`), the HTTP/2 pool with ALPN `h2`. A
//! failed handshake is a failed connect: the next endpoint is tried and
//! passive health counts it.

use std::{
    collections::{BTreeMap, HashMap},
    future::Future,
    net::SocketAddr,
    path::PathBuf,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use http::{
    header,
    request::Parts,
    uri::{Authority, PathAndQuery, Scheme},
    HeaderValue, Request, Response, Uri, Version,
};
use http_body_util::BodyExt;
use hyper::{body::Incoming, client::conn::http2::SendRequest};
use hyper_util::{
    client::legacy::{
        connect::{Connected, Connection, HttpConnector},
        Client,
    },
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use rustls::{
    pki_types::{pem::PemObject, CertificateDer, ServerName},
    ClientConfig, RootCertStore,
};
use splitter_model::config::{
    l7::{ProxyOptions, Upstream, UpstreamProtocol, UpstreamTls},
    Config, Mode, Service,
};
use thiserror::Error;
use tokio::net::TcpStream;

use super::{
    origin::{Io, OriginConn},
    proxy::ProxyBody,
    tls::TlsError,
};

/// Why a request got no response from an endpoint.
#[derive(Debug, Error)]
pub enum UpstreamError {
    #[error("connect failed: {0}")]
    Connect(String),
    #[error("{0}")]
    Request(String),
}

impl UpstreamError {
    /// The endpoint could not be reached (nothing was sent): another
    /// endpoint may be tried.
    pub fn is_connect(&self) -> bool {
        matches!(self, UpstreamError::Connect(_))
    }
}

/// How one request goes to its endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Http1,
    H2,
}

/// What is wrong with `upstream.tls`; every message starts with the key
/// (`ca: ...`) and names the file.
#[derive(Debug, Error)]
pub enum CaError {
    /// Missing, unreadable, not a regular file, too large.
    #[error("ca: {0}")]
    File(TlsError),
    #[error("ca: {path} is not valid PEM ({why})")]
    BadPem { path: PathBuf, why: String },
    #[error(
        "ca: no CERTIFICATE in {path}: give the PEM certificate(s) of the CA that signed the servers' \
         certificates (-----BEGIN CERTIFICATE-----); with ca: given, system roots are not used"
    )]
    NoCertificate { path: PathBuf },
    #[error("ca: none of the {count} certificates in {path} can be a trust anchor (not X.509 DER inside the PEM?)")]
    NoAnchor { path: PathBuf, count: usize },
    #[error("server_name: {name:?} is neither a DNS name nor an IP address")]
    ServerName { name: String },
    #[error("cannot set up TLS towards the endpoints: {0}")]
    Setup(rustls::Error),
}

/// TLS towards a service's endpoints: one client config per ALPN use, both
/// trusting only `upstream.tls.ca`, and the name endpoints are verified as.
pub struct TlsTo {
    /// ALPN `h2`, for the HTTP/2 pool.
    h2: tokio_rustls::TlsConnector,
    /// ALPN `http/1.1`, for the HTTP/1.1 pool (and upgrades).
    http1: tokio_rustls::TlsConnector,
    /// `None`: each endpoint is verified as its IP address.
    server_name: Option<ServerName<'static>>,
    /// Trust anchors read from the CA file.
    pub roots: usize,
}

/// Which ALPN protocol a TLS connection to an endpoint offers (and needs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alpn {
    H2,
    Http1,
}

impl Alpn {
    fn id(self) -> &'static [u8] {
        match self {
            Alpn::H2 => b"h2",
            Alpn::Http1 => b"http/1.1",
        }
    }
}

/// Every certificate of the PEM file `path` as a trust anchor, and how many.
pub fn load_roots(path: &std::path::Path) -> Result<(RootCertStore, usize), CaError> {
    let pem = super::tls::read_capped(path).map_err(CaError::File)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CaError::BadPem { path: path.to_owned(), why: e.to_string() })?;
    if certs.is_empty() {
        return Err(CaError::NoCertificate { path: path.to_owned() });
    }
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs.iter().cloned());
    if added == 0 {
        return Err(CaError::NoAnchor { path: path.to_owned(), count: certs.len() });
    }
    Ok((roots, added))
}

/// `name` as rustls verifies a server: a DNS name or an IP address.
pub fn server_name(name: &str) -> Result<ServerName<'static>, CaError> {
    ServerName::try_from(name.to_owned()).map_err(|_| CaError::ServerName { name: name.to_owned() })
}

impl TlsTo {
    /// Reads the CA file of `tls` (every certificate in it a trust anchor)
    /// and builds the client configs; nothing connects yet.
    pub fn load(tls: &UpstreamTls) -> Result<TlsTo, CaError> {
        let (roots, added) = load_roots(&tls.ca)?;
        let server_name = tls.server_name.as_deref().map(server_name).transpose()?;
        let config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(CaError::Setup)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let with_alpn = |alpn: Alpn| {
            let mut c = config.clone();
            c.alpn_protocols = vec![alpn.id().to_vec()];
            tokio_rustls::TlsConnector::from(Arc::new(c))
        };
        Ok(TlsTo { h2: with_alpn(Alpn::H2), http1: with_alpn(Alpn::Http1), server_name, roots: added })
    }

    /// The name `endpoint`'s certificate must carry.
    fn name(&self, endpoint: SocketAddr) -> ServerName<'static> {
        self.server_name.clone().unwrap_or_else(|| ServerName::from(endpoint.ip()))
    }

    /// A TLS handshake over `tcp` to `endpoint` offering `alpn`, bounded by
    /// `limit`; an endpoint that does not choose h2 when asked is refused.
    async fn handshake(
        &self,
        alpn: Alpn,
        tcp: TcpStream,
        endpoint: SocketAddr,
        limit: Duration,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
        let name = self.name(endpoint);
        let connector = match alpn {
            Alpn::H2 => &self.h2,
            Alpn::Http1 => &self.http1,
        };
        let shown = name.to_str().into_owned();
        let tls = tokio::time::timeout(limit, connector.connect(name, tcp))
            .await
            .map_err(|_| format!("no TLS handshake with {endpoint} within {limit:?}"))?
            .map_err(|e| format!("TLS handshake with {endpoint} as {shown:?}: {e}"))?;
        if alpn == Alpn::H2 && tls.get_ref().1.alpn_protocol() != Some(Alpn::H2.id()) {
            let chose = match tls.get_ref().1.alpn_protocol() {
                Some(p) => format!("ALPN {:?}", String::from_utf8_lossy(p)),
                None => "no ALPN protocol".to_owned(),
            };
            return Err(format!(
                "{endpoint} chose {chose} where protocol h2 needs \"h2\": it does not serve HTTP/2 over TLS \
                 (upstream.protocol http1 speaks HTTP/1.1 over TLS)"
            ));
        }
        Ok(tls)
    }
}

/// The upstream TLS of every l7 service of `config` that has it, loaded as
/// `run` loads it (what `splitter check` reports).
pub fn load_all(config: &Config) -> Result<BTreeMap<String, TlsTo>, super::L7Error> {
    let tls = config
        .services
        .iter()
        .filter(|(_, s)| s.mode == Mode::L7)
        .filter_map(|(name, svc)| svc.upstream.as_ref().and_then(|u| u.tls.as_ref()).map(|t| (name, t)));
    tls.map(|(name, t)| {
        TlsTo::load(t)
            .map(|loaded| (name.clone(), loaded))
            .map_err(|source| super::L7Error::UpstreamTls { service: name.clone(), source })
    })
    .collect()
}

/// The HTTP/1.1 pool: clear text, or TLS through [`TlsConnect`].
enum Http1 {
    Plain(Client<HttpConnector, ProxyBody>),
    Tls(Client<TlsConnect, ProxyBody>),
}

/// A service's connections towards its endpoints.
pub struct Upstreams {
    protocol: UpstreamProtocol,
    /// `https` with `upstream.tls`, else `http`.
    scheme: &'static str,
    http1: Http1,
    /// Opens the HTTP/2 pool's connections and the [`super::affine`] path's.
    dial: Dialer,
    h2: H2Pool,
    /// Idle HTTP/1.1 connections for the requests of clients' HTTP/1
    /// connections (the [`super::affine`] path).
    idle: Arc<super::affine::Idle>,
}

impl Upstreams {
    /// The connections `svc` configures, its CA file read (the only part
    /// that can fail: the rest is validated).
    pub fn for_service(svc: &Service) -> Result<Upstreams, CaError> {
        let upstream = svc.upstream.clone().unwrap_or_default();
        let tls = upstream.tls.as_ref().map(TlsTo::load).transpose()?;
        Ok(Upstreams::new(&svc.proxy.clone().unwrap_or_default(), &upstream, tls.map(Arc::new)))
    }

    /// Connections with `options` and `upstream`, over `tls` when given
    /// (loaded from `upstream.tls`).
    pub fn new(options: &ProxyOptions, upstream: &Upstream, tls: Option<Arc<TlsTo>>) -> Upstreams {
        let connect_timeout = Duration::from_millis(options.connect_timeout_ms);
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        let mut builder = Client::builder(TokioExecutor::new());
        builder.pool_idle_timeout(Duration::from_secs(90)).pool_timer(TokioTimer::new());
        let http1 = match &tls {
            None => {
                connector.enforce_http(true);
                Http1::Plain(builder.build(connector))
            }
            Some(tls) => {
                connector.enforce_http(false);
                Http1::Tls(builder.build(TlsConnect { http: connector, tls: tls.clone(), limit: connect_timeout }))
            }
        };
        Upstreams {
            protocol: upstream.protocol,
            scheme: if tls.is_some() { "https" } else { "http" },
            http1,
            dial: Dialer { connect_timeout, tls },
            h2: H2Pool::default(),
            idle: Arc::default(),
        }
    }

    /// How a request that came in as `version` goes (`upgrade`: it asks
    /// for a protocol switch, which only HTTP/1.1 carries).
    pub fn via(&self, version: Version, upgrade: bool) -> Via {
        if !upgrade && self.protocol.h2_for(version == Version::HTTP_2) {
            Via::H2
        } else {
            Via::Http1
        }
    }

    /// Sends `head` and `body` to `endpoint` over `via`. With `affinity`
    /// (a request of a client's HTTP/1 connection, not an upgrade), HTTP/1.1
    /// goes on the connections that client connection holds.
    pub async fn send(
        &self,
        via: Via,
        endpoint: SocketAddr,
        mut head: Parts,
        body: ProxyBody,
        affinity: Option<&Arc<super::affine::Affinity>>,
    ) -> Result<Response<ProxyBody>, UpstreamError> {
        // The client's path and query, moved (not parsed again) into the
        // endpoint's URI.
        let pq =
            std::mem::take(&mut head.uri).into_parts().path_and_query.unwrap_or_else(|| PathAndQuery::from_static("/"));
        match via {
            Via::Http1 if affinity.is_some() => {
                head.version = Version::HTTP_11;
                // Origin form on the wire; a request without `host` (only
                // HTTP/1.0 may lack it) gets the endpoint's, as the pooled
                // client does.
                head.uri = Uri::from(pq);
                head.headers.entry(header::HOST).or_insert_with(|| {
                    HeaderValue::from_str(endpoint_authority(endpoint).as_str()).expect("an address is a header value")
                });
                let affinity = affinity.expect("matched");
                // Boxed: the connect and TLS handshake inside would make
                // every request's future (moved into its box) kilobytes
                // larger, for the few requests that dial.
                let dial = || Box::pin(self.dial.http1(endpoint));
                super::affine::send(&self.idle, affinity, endpoint, head, body, dial).await
            }
            Via::Http1 => {
                head.version = Version::HTTP_11;
                head.uri = uri(self.scheme, endpoint_authority(endpoint), pq);
                let req = Request::from_parts(head, body);
                let sent = match &self.http1 {
                    Http1::Plain(client) => client.request(req).await,
                    Http1::Tls(client) => client.request(req).await,
                };
                sent.map(boxed).map_err(|e| {
                    if e.is_connect() {
                        UpstreamError::Connect(describe(&e))
                    } else {
                        UpstreamError::Request(describe(&e))
                    }
                })
            }
            Via::H2 => {
                // The client's authority is `:authority`; `host` is not
                // sent beside it (RFC 9113 §8.3.1).
                let authority = head
                    .headers
                    .remove(header::HOST)
                    .and_then(|h| Authority::try_from(h.as_bytes()).ok())
                    .unwrap_or_else(|| endpoint_authority(endpoint));
                head.version = Version::HTTP_2;
                head.uri = uri(self.scheme, authority, pq);
                // Boxed: the connect and handshake inside would make every
                // request's future (moved several times) kilobytes larger.
                let mut sender = Box::pin(self.h2.sender(&self.dial, endpoint)).await?;
                sender.ready().await.map_err(|e| UpstreamError::Request(describe(&e)))?;
                sender
                    .send_request(Request::from_parts(head, body))
                    .await
                    .map(boxed)
                    .map_err(|e| UpstreamError::Request(describe(&e)))
            }
        }
    }
}

/// An answer of hyper's clients, with the body every answer carries.
fn boxed(resp: Response<Incoming>) -> Response<ProxyBody> {
    resp.map(|body| body.map_err(Into::into).boxed())
}

/// The HTTP/1.1 pool's connector with `upstream.tls`: TCP (hyper-util's
/// `HttpConnector`), then a TLS handshake offering ALPN `http/1.1`, within
/// the connect timeout; any failure is a connect error of the pool.
#[derive(Clone)]
pub struct TlsConnect {
    http: HttpConnector,
    tls: Arc<TlsTo>,
    limit: Duration,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Uri> for TlsConnect {
    type Response = TlsConn;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<TlsConn, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let (mut http, tls, limit) = (self.http.clone(), self.tls.clone(), self.limit);
        Box::pin(async move {
            // The pool's URIs name the endpoint by address.
            let endpoint: SocketAddr = uri
                .authority()
                .and_then(|a| a.as_str().parse().ok())
                .ok_or_else(|| format!("{uri} does not name an endpoint address"))?;
            let tcp = tower_service::Service::call(&mut http, uri).await?.into_inner();
            let stream = tls.handshake(Alpn::Http1, tcp, endpoint, limit).await?;
            Ok(TlsConn(TokioIo::new(stream)))
        })
    }
}

/// A TLS connection of the HTTP/1.1 pool.
pub struct TlsConn(TokioIo<tokio_rustls::client::TlsStream<TcpStream>>);

impl Connection for TlsConn {
    fn connected(&self) -> Connected {
        self.0.inner().get_ref().0.connected()
    }
}

impl hyper::rt::Read for TlsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for TlsConn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }
}

/// `SCHEME://AUTHORITY/path?query`.
fn uri(scheme: &str, authority: Authority, pq: PathAndQuery) -> Uri {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(if scheme == "https" { Scheme::HTTPS } else { Scheme::HTTP });
    parts.authority = Some(authority);
    parts.path_and_query = Some(pq);
    Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("http://invalid/"))
}

/// `endpoint` as a URI authority (`192.0.2.1:80`, `[2001:db8::1]:80`);
/// should http refuse one, it becomes `invalid` (the request then fails to
/// connect, as before) rather than a panic.
fn endpoint_authority(endpoint: SocketAddr) -> Authority {
    use std::io::Write as _;
    const ROOM: usize = 80;
    let mut text = [0u8; ROOM];
    let mut at = &mut text[..];
    let _ = write!(at, "{endpoint}");
    let len = ROOM - at.len();
    Authority::try_from(&text[..len]).unwrap_or_else(|_| Authority::from_static("invalid"))
}

/// An error with its causes, on one line (hyper-util's client errors say
/// only "client error (Connect)" on top; the Prometheus client uses it too).
pub(crate) fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut at = e.source();
    while let Some(cause) = at {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        at = cause.source();
    }
    out
}

/// One HTTP/2 connection per endpoint (h2c, or h2 over TLS), opened on
/// first use and replaced once closed; concurrent first requests share one
/// connect.
#[derive(Default)]
struct H2Pool {
    ready: std::sync::Mutex<HashMap<SocketAddr, SendRequest<ProxyBody>>>,
    connecting: std::sync::Mutex<HashMap<SocketAddr, Arc<tokio::sync::Mutex<()>>>>,
}

impl H2Pool {
    fn open(&self, endpoint: SocketAddr) -> Option<SendRequest<ProxyBody>> {
        let ready = self.ready.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        ready.get(&endpoint).filter(|s| !s.is_closed()).cloned()
    }

    /// The open connection to `endpoint`, or a new one `dial` opens.
    async fn sender(&self, dial: &Dialer, endpoint: SocketAddr) -> Result<SendRequest<ProxyBody>, UpstreamError> {
        if let Some(s) = self.open(endpoint) {
            return Ok(s);
        }
        let gate = {
            let mut connecting = self.connecting.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            connecting.entry(endpoint).or_default().clone()
        };
        let _turn = gate.lock().await;
        // Someone else may have connected meanwhile.
        if let Some(s) = self.open(endpoint) {
            return Ok(s);
        }
        let sender = dial.h2(endpoint).await?;
        self.ready.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(endpoint, sender.clone());
        Ok(sender)
    }
}

/// Opens connections to a service's endpoints: TCP within the connect
/// timeout, then TLS with `upstream.tls` (ALPN per protocol), then the
/// HTTP handshake, each connection driven by a task of its own.
struct Dialer {
    connect_timeout: Duration,
    tls: Option<Arc<TlsTo>>,
}

impl Dialer {
    /// A TCP connection to `endpoint` within the connect timeout.
    async fn tcp(&self, endpoint: SocketAddr) -> Result<TcpStream, UpstreamError> {
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(endpoint))
            .await
            .map_err(|_| UpstreamError::Connect(format!("no connection within {:?}", self.connect_timeout)))?
            .map_err(|e| UpstreamError::Connect(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        Ok(tcp)
    }

    /// A new HTTP/1.1 connection to `endpoint` (over TLS with ALPN
    /// `http/1.1` when configured), for [`super::origin`].
    async fn http1(&self, endpoint: SocketAddr) -> Result<OriginConn, UpstreamError> {
        let tcp = self.tcp(endpoint).await?;
        let io = match &self.tls {
            None => Io::Plain(tcp),
            Some(tls) => Io::Tls(Box::new(
                tls.handshake(Alpn::Http1, tcp, endpoint, self.connect_timeout)
                    .await
                    .map_err(UpstreamError::Connect)?,
            )),
        };
        Ok(OriginConn::new(io))
    }

    /// A new HTTP/2 connection to `endpoint` (h2c, or TLS with ALPN `h2`).
    async fn h2(&self, endpoint: SocketAddr) -> Result<SendRequest<ProxyBody>, UpstreamError> {
        let tcp = self.tcp(endpoint).await?;
        match &self.tls {
            None => h2_handshake(TokioIo::new(tcp), endpoint).await,
            Some(tls) => {
                let stream = tls
                    .handshake(Alpn::H2, tcp, endpoint, self.connect_timeout)
                    .await
                    .map_err(UpstreamError::Connect)?;
                h2_handshake(TokioIo::new(stream), endpoint).await
            }
        }
    }
}

/// The HTTP/2 handshake over `io` (a socket, or TLS over one), its
/// connection driven by a task of its own.
async fn h2_handshake<T>(io: T, endpoint: SocketAddr) -> Result<SendRequest<ProxyBody>, UpstreamError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .adaptive_window(true)
        .handshake(io)
        .await
        .map_err(|e| UpstreamError::Connect(format!("h2 handshake: {}", describe(&e))))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(%endpoint, "h2 connection to the endpoint ended: {e}");
        }
    });
    Ok(sender)
}

/// Whether `headers` are a gRPC request's or response's.
pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|ct| {
        ct == "application/grpc" || ct.starts_with("application/grpc+") || ct.starts_with("application/grpc;")
    })
}

/// `te: trailers` (the only `TE` HTTP/2 allows, which gRPC requires).
pub fn te_trailers() -> HeaderValue {
    HeaderValue::from_static("trailers")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoints_uri_keeps_the_clients_path_and_query() {
        let v4 = uri("http", endpoint_authority("192.0.2.1:8080".parse().unwrap()), "/a/b?x=1".parse().unwrap());
        assert_eq!(v4.to_string(), "http://192.0.2.1:8080/a/b?x=1");
        let v6 = uri("https", endpoint_authority("[2001:db8::1]:443".parse().unwrap()), PathAndQuery::from_static("/"));
        assert_eq!(v6.to_string(), "https://[2001:db8::1]:443/");
        assert_eq!(v6.host(), Some("[2001:db8::1]"));
        // The longest an address can be written fits, whole.
        let ip = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255".parse().unwrap();
        let longest = SocketAddr::from(std::net::SocketAddrV6::new(ip, 65535, 0, u32::MAX));
        assert_eq!(endpoint_authority(longest).as_str(), longest.to_string());
    }
}
