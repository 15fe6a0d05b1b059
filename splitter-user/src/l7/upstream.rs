//! The connections towards a service's endpoints: a pooled HTTP/1.1
//! keep-alive client, and one multiplexed h2c connection per endpoint (our
//! own small pool: the request keeps the client's `:authority`, and a
//! failed connect is told from a failed request). `upstream.protocol` and
//! the client's version choose one per request.

use std::{collections::HashMap, net::SocketAddr, sync::Arc, time::Duration};

use http::{header, request::Parts, HeaderValue, Request, Response, Uri, Version};
use hyper::{body::Incoming, client::conn::http2::SendRequest};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use splitter_model::config::l7::{ProxyOptions, Upstream, UpstreamProtocol};
use thiserror::Error;

use super::proxy::ProxyBody;

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

/// A service's connections towards its endpoints.
pub struct Upstreams {
    protocol: UpstreamProtocol,
    http1: Client<HttpConnector, ProxyBody>,
    h2: H2Pool,
}

impl Upstreams {
    pub fn new(options: &ProxyOptions, upstream: &Upstream) -> Upstreams {
        let connect_timeout = Duration::from_millis(options.connect_timeout_ms);
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let http1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_timer(TokioTimer::new())
            .build(connector);
        Upstreams { protocol: upstream.protocol, http1, h2: H2Pool::new(connect_timeout) }
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

    /// Sends `head` and `body` to `endpoint` over `via`.
    pub async fn send(
        &self,
        via: Via,
        endpoint: SocketAddr,
        mut head: Parts,
        body: ProxyBody,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let pq = head.uri.path_and_query().map_or("/", |pq| pq.as_str()).to_owned();
        match via {
            Via::Http1 => {
                head.version = Version::HTTP_11;
                head.uri = uri(&endpoint.to_string(), &pq);
                self.http1.request(Request::from_parts(head, body)).await.map_err(|e| {
                    if e.is_connect() {
                        UpstreamError::Connect(e.to_string())
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
                    .and_then(|h| h.to_str().ok().map(str::to_owned))
                    .filter(|h| h.parse::<http::uri::Authority>().is_ok())
                    .unwrap_or_else(|| endpoint.to_string());
                head.version = Version::HTTP_2;
                head.uri = uri(&authority, &pq);
                let mut sender = self.h2.sender(endpoint).await?;
                sender.ready().await.map_err(|e| UpstreamError::Request(describe(&e)))?;
                sender
                    .send_request(Request::from_parts(head, body))
                    .await
                    .map_err(|e| UpstreamError::Request(describe(&e)))
            }
        }
    }
}

/// `http://AUTHORITY/path?query`.
fn uri(authority: &str, pq: &str) -> Uri {
    Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(pq)
        .build()
        .unwrap_or_else(|_| Uri::from_static("http://invalid/"))
}

/// An error with its causes, on one line.
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut at = e.source();
    while let Some(cause) = at {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        at = cause.source();
    }
    out
}

/// One h2c connection per endpoint, opened on first use and replaced once
/// closed; concurrent first requests share one connect.
struct H2Pool {
    connect_timeout: Duration,
    ready: std::sync::Mutex<HashMap<SocketAddr, SendRequest<ProxyBody>>>,
    connecting: std::sync::Mutex<HashMap<SocketAddr, Arc<tokio::sync::Mutex<()>>>>,
}

impl H2Pool {
    fn new(connect_timeout: Duration) -> H2Pool {
        H2Pool { connect_timeout, ready: Default::default(), connecting: Default::default() }
    }

    fn open(&self, endpoint: SocketAddr) -> Option<SendRequest<ProxyBody>> {
        let ready = self.ready.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        ready.get(&endpoint).filter(|s| !s.is_closed()).cloned()
    }

    async fn sender(&self, endpoint: SocketAddr) -> Result<SendRequest<ProxyBody>, UpstreamError> {
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
        let sender = self.connect(endpoint).await?;
        self.ready.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(endpoint, sender.clone());
        Ok(sender)
    }

    async fn connect(&self, endpoint: SocketAddr) -> Result<SendRequest<ProxyBody>, UpstreamError> {
        let tcp = tokio::time::timeout(self.connect_timeout, tokio::net::TcpStream::connect(endpoint))
            .await
            .map_err(|_| UpstreamError::Connect(format!("no connection within {:?}", self.connect_timeout)))?
            .map_err(|e| UpstreamError::Connect(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .adaptive_window(true)
            .handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| UpstreamError::Connect(format!("h2 handshake: {}", describe(&e))))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%endpoint, "h2 connection to the endpoint ended: {e}");
            }
        });
        Ok(sender)
    }
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
