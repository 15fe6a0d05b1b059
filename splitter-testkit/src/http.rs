//! Real HTTP for the demo and the L7 tests: hyper backends in namespaces
//! that answer with their identity (and what they saw), and a hyper client
//! that sends many requests from a namespace. Nothing is mocked: requests
//! cross veth pairs and the agent's proxy.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::atomic::{AtomicU16, Ordering::Relaxed},
    time::Duration,
};

use crate::netns::NetNs;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// Header a backend answers with: its name.
pub const BACKEND: &str = "x-backend";

/// Starts an HTTP/1.1 backend named `name` on `[::]:port` in `ns` (both
/// families), on its own thread. Paths:
/// * `/status/N` answers status N;
/// * `/slow/MS` answers after MS milliseconds;
/// * `/stream/N/MS` sends N chunks of 1 KiB, MS milliseconds apart;
/// * anything else answers 200 with body `name`.
///
/// Every answer carries `x-backend: name` and echoes what the proxy sent:
/// `x-seen-xff`, `x-seen-forwarded`, `x-seen-proto` (`x-forwarded-proto`),
/// `x-seen-host`, `x-seen-mirror`, and
/// `x-seen-secret` when a header `x-secret` arrived (it must not: the client
/// names it in `Connection`).
pub fn serve_http(ns: &NetNs, port: u16, name: &'static str) -> std::io::Result<()> {
    serve_http_after(ns, port, name, Duration::ZERO)
}

/// [`serve_http`] that waits `delay` before every answer (a slow shadow).
pub fn serve_http_after(ns: &NetNs, port: u16, name: &'static str, delay: Duration) -> std::io::Result<()> {
    serve(ns, port, name, delay, Switch::default())
}

/// [`serve_http`] whose every answer is 500 (a broken canary).
pub fn serve_http_failing(ns: &NetNs, port: u16, name: &'static str) -> std::io::Result<()> {
    let switch = Switch::default();
    switch.all(500);
    serve(ns, port, name, Duration::ZERO, switch)
}

/// [`serve_http`] whose answers a test changes while it runs, through the
/// [`Switch`] returned.
pub fn serve_http_switched(ns: &NetNs, port: u16, name: &'static str) -> std::io::Result<Switch> {
    let switch = Switch::default();
    serve(ns, port, name, Duration::ZERO, switch.clone())?;
    Ok(switch)
}

/// What a [`serve_http_switched`] backend answers: the status of
/// `/healthz` (200 unless set), and a status every other request gets
/// instead of its usual answer's (none unless set).
#[derive(Clone, Default)]
pub struct Switch(std::sync::Arc<(AtomicU16, AtomicU16)>);

impl Switch {
    /// `/healthz` answers `status` from now on.
    pub fn healthz(&self, status: u16) {
        self.0 .0.store(status, Relaxed);
    }

    /// Every other request answers `status` from now on (0: as usual).
    pub fn all(&self, status: u16) {
        self.0 .1.store(status, Relaxed);
    }

    fn status(&self, path: &str) -> Option<StatusCode> {
        let s = if path == "/healthz" { self.0 .0.load(Relaxed) } else { self.0 .1.load(Relaxed) };
        StatusCode::from_u16(s).ok()
    }
}

fn serve(ns: &NetNs, port: u16, name: &'static str, delay: Duration, switch: Switch) -> std::io::Result<()> {
    crate::serve::spawn_tokio_server(ns, port, move |listener| async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let switch = switch.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let forced = switch.status(req.uri().path());
                    async move {
                        tokio::time::sleep(delay).await;
                        let mut resp = answer(name, req).await?;
                        if let Some(status) = forced {
                            *resp.status_mut() = status;
                        }
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    })
}

type Body = BoxBody<Bytes, Infallible>;

async fn answer(name: &'static str, req: Request<hyper::body::Incoming>) -> Result<Response<Body>, Infallible> {
    let path: Vec<String> = req.uri().path().split('/').skip(1).map(String::from).collect();
    let echo = |h: &str| req.headers().get(h).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let seen = [
        ("x-seen-xff", echo("x-forwarded-for")),
        ("x-seen-forwarded", echo("forwarded")),
        ("x-seen-proto", echo("x-forwarded-proto")),
        ("x-seen-host", echo("host")),
        ("x-seen-mirror", echo("x-splitter-mirror")),
        ("x-seen-secret", echo("x-secret")),
    ];
    let _ = req.into_body().collect().await;
    let num = |i: usize| path.get(i).and_then(|s| s.parse::<u64>().ok());
    let (status, body): (StatusCode, Body) = match path.first().map(String::as_str) {
        Some("status") => {
            let code = num(1).and_then(|c| StatusCode::from_u16(c as u16).ok()).unwrap_or(StatusCode::OK);
            (code, Full::new(Bytes::from(name)).boxed())
        }
        Some("slow") => {
            tokio::time::sleep(Duration::from_millis(num(1).unwrap_or(1000))).await;
            (StatusCode::OK, Full::new(Bytes::from(name)).boxed())
        }
        Some("stream") => {
            let (n, ms) = (num(1).unwrap_or(4), num(2).unwrap_or(100));
            let chunks = paced_chunks(n, ms);
            (StatusCode::OK, chunks.boxed())
        }
        _ => (StatusCode::OK, Full::new(Bytes::from(name)).boxed()),
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut().insert(BACKEND, name.parse().unwrap());
    for (k, v) in seen {
        if let Ok(v) = v.parse() {
            resp.headers_mut().insert(k, v);
        }
    }
    Ok(resp)
}

/// A body of `n` frames of 1 KiB, `ms` apart, fed through a channel.
fn paced_chunks(
    n: u64,
    ms: u64,
) -> impl hyper::body::Body<Data = Bytes, Error = Infallible> + Send + Sync + Unpin + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<hyper::body::Frame<Bytes>, Infallible>>(1);
    tokio::spawn(async move {
        for _ in 0..n {
            if tx.send(Ok(hyper::body::Frame::data(Bytes::from(vec![b'x'; 1024])))).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    });
    ChannelBody(rx)
}

struct ChannelBody(tokio::sync::mpsc::Receiver<Result<hyper::body::Frame<Bytes>, Infallible>>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx)
    }
}

/// One answer as a test sees it.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: StatusCode,
    /// From sending the request to the whole body received.
    pub elapsed: Duration,
    /// `x-backend`, or "" when the proxy answered itself.
    pub backend: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// A hyper client living in a namespace (its own runtime thread there).
pub struct Client {
    rt: tokio::runtime::Runtime,
    http1: hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    http2: hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

impl Client {
    /// A client whose connections start in `ns`.
    pub fn new(ns: &NetNs) -> Client {
        // A runtime whose worker is created in the namespace: its sockets are.
        let rt = ns.run(|| tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio"));
        let connector = || {
            let mut c = hyper_util::client::legacy::connect::HttpConnector::new();
            c.set_connect_timeout(Some(Duration::from_secs(3)));
            c
        };
        let http1 = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(connector());
        let http2 =
            hyper_util::client::legacy::Client::builder(TokioExecutor::new()).http2_only(true).build(connector());
        Client { rt, http1, http2 }
    }

    /// Sends every request (at most `parallel` at a time, 10 s each) and
    /// returns the answers in order; `Err` says why one got none.
    pub fn send_all(
        &self,
        ns: &NetNs,
        reqs: Vec<Request<Full<Bytes>>>,
        parallel: usize,
        h2: bool,
    ) -> Vec<Result<Answer, String>> {
        let client = if h2 { self.http2.clone() } else { self.http1.clone() };
        ns.run(|| {
            self.rt.block_on(async move {
                let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
                let mut tasks = Vec::new();
                for req in reqs {
                    let (client, sem) = (client.clone(), sem.clone());
                    tasks.push(tokio::spawn(async move {
                        let _permit = sem.acquire().await.expect("open");
                        let start = std::time::Instant::now();
                        let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
                            .await
                            .map_err(|_| "no answer in 10 s".to_owned())?
                            .map_err(|e| format!("request failed: {e:?}"))?;
                        let (parts, body) = resp.into_parts();
                        let body = body.collect().await.map_err(|e| format!("body: {e}"))?.to_bytes();
                        let backend = parts.headers.get(BACKEND).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                        Ok(Answer {
                            status: parts.status,
                            elapsed: start.elapsed(),
                            backend,
                            headers: parts.headers,
                            body,
                        })
                    }));
                }
                let mut out = Vec::new();
                for t in tasks {
                    out.push(t.await.map_err(|e| format!("task: {e}")).and_then(|r| r));
                }
                out
            })
        })
    }
}

/// `GET http://vip{path}` with extra headers.
pub fn get(vip: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    request("GET", vip, path, headers)
}

/// `METHOD http://vip{path}` with extra headers and no body.
pub fn request(method: &str, vip: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    request_with_body(method, vip, path, headers, Bytes::new())
}

/// `METHOD http://vip{path}` with extra headers and `body`.
pub fn request_with_body(
    method: &str,
    vip: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Request<Full<Bytes>> {
    let mut b = Request::builder().method(method).uri(format!("http://{vip}{path}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(body)).expect("valid request")
}

/// One raw exchange from `ns`: `request` (bytes as given, on a new
/// connection to `addr`) and everything the other side sent before it
/// closed, or 5 s passed.
pub fn raw_exchange(ns: &NetNs, addr: std::net::SocketAddr, request: &[u8]) -> String {
    use std::io::{Read, Write};
    ns.run(|| {
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5))).expect("a read timeout");
        // A write the peer refuses part-way still leaves its answer to read.
        let _ = s.write_all(request);
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    })
}
