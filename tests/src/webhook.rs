//! A webhook receiver for the rollout tests: a hyper server (HTTP, or HTTPS
//! with a certificate of the test's CA) in a test namespace that records
//! every call (path, JSON body) and answers each path with the status the
//! test sets (200 until it says otherwise).

use std::{
    collections::BTreeMap,
    convert::Infallible,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use splitter_testkit::{netns::NetNs, serve::spawn_tokio_server};

use crate::tls::Issued;

/// One call: its path and its body as JSON (`null` if it was not JSON).
#[derive(Clone, Debug)]
pub struct Call {
    pub path: String,
    pub content_type: String,
    pub body: serde_json::Value,
}

#[derive(Clone, Default)]
pub struct HookServer {
    calls: Arc<Mutex<Vec<Call>>>,
    answers: Arc<Mutex<BTreeMap<String, u16>>>,
}

impl HookServer {
    /// Serves on `[::]:port` in `ns`, over TLS with `tls`, until the
    /// process ends.
    pub fn start(ns: &NetNs, port: u16, tls: Option<&Issued>) -> HookServer {
        let server = HookServer::default();
        let acceptor = tls.map(|issued| {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes()).collect::<Result<_, _>>().expect("chain");
            let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).expect("key");
            let config =
                rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                    .with_safe_default_protocol_versions()
                    .expect("TLS versions")
                    .with_no_client_auth()
                    .with_single_cert(chain, key)
                    .expect("server config");
            tokio_rustls::TlsAcceptor::from(Arc::new(config))
        });
        let s = server.clone();
        spawn_tokio_server(ns, port, move |listener| async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                let (s, acceptor) = (s.clone(), acceptor.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let s = s.clone();
                        async move { Ok::<_, Infallible>(s.answer(req).await) }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    match acceptor {
                        Some(a) => {
                            let Ok(tls) = a.accept(tcp).await else { return };
                            let _ = http.serve_connection(TokioIo::new(tls), svc).await;
                        }
                        None => {
                            let _ = http.serve_connection(TokioIo::new(tcp), svc).await;
                        }
                    }
                });
            }
        })
        .expect("bind the webhook receiver");
        server
    }

    async fn answer(&self, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_owned();
        let content_type =
            req.headers().get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let body = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        self.calls.lock().expect("calls").push(Call { path: path.clone(), content_type, body });
        let status = self.answers.lock().expect("answers").get(&path).copied().unwrap_or(200);
        Response::builder().status(status).body(Full::new(Bytes::from(format!("answer {status} for {path}")))).unwrap()
    }

    /// From now on `path` is answered with `status`.
    pub fn answer_with(&self, path: &str, status: u16) {
        self.answers.lock().expect("answers").insert(path.to_owned(), status);
    }

    /// Every call so far, in the order they came.
    pub fn all_calls(&self) -> Vec<Call> {
        self.calls.lock().expect("calls").clone()
    }

    /// Every call to `path` so far.
    pub fn calls(&self, path: &str) -> Vec<Call> {
        self.calls.lock().expect("calls").iter().filter(|c| c.path == path).cloned().collect()
    }

    /// Waits (at most `limit`) for a call to `path` that `want` accepts.
    pub fn wait_for(&self, path: &str, limit: Duration, want: impl Fn(&Call) -> bool) -> Option<Call> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(c) = self.calls(path).into_iter().find(&want) {
                return Some(c);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}
