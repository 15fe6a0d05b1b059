//! A real gRPC service (tonic) for the l7 tests and benches: `echo.Echo`
//! with a unary and a bidirectional streaming method, served in a namespace,
//! each answer saying which backend gave it (in clear text, or over TLS).
//! Text `fail` fails everywhere with INTERNAL (13); `fail-on-NAME` fails
//! only on backend NAME.

use std::{net::SocketAddr, pin::Pin};

use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use splitter_testkit::{netns::NetNs, serve::spawn_tokio_server};

/// The generated messages, server and client.
pub mod pb {
    tonic::include_proto!("echo");
}

use pb::{
    echo_server::{Echo, EchoServer},
    Msg,
};

struct Backend {
    name: &'static str,
}

impl Backend {
    fn answer(&self, msg: Msg, canary: &str) -> Result<Msg, Status> {
        if msg.text == "fail" || msg.text == format!("fail-on-{}", self.name) {
            return Err(Status::internal(format!("{} was asked to fail", self.name)));
        }
        Ok(Msg { text: msg.text, served_by: self.name.to_owned(), canary: canary.to_owned() })
    }
}

fn canary<T>(req: &Request<T>) -> String {
    req.metadata().get("x-canary").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned()
}

#[tonic::async_trait]
impl Echo for Backend {
    async fn unary(&self, req: Request<Msg>) -> Result<Response<Msg>, Status> {
        let canary = canary(&req);
        self.answer(req.into_inner(), &canary).map(Response::new)
    }

    type ChatStream = Pin<Box<dyn Stream<Item = Result<Msg, Status>> + Send>>;

    async fn chat(&self, req: Request<Streaming<Msg>>) -> Result<Response<Self::ChatStream>, Status> {
        let canary = canary(&req);
        let name = self.name;
        let answers = req.into_inner().map(move |m| m.and_then(|m| Backend { name }.answer(m, &canary)));
        Ok(Response::new(Box::pin(answers)))
    }
}

/// Serves `echo.Echo` as backend `name` on `[::]:port` in `ns` (plain
/// HTTP/2, as gRPC endpoints are), until the process ends.
pub fn serve_grpc(ns: &NetNs, port: u16, name: &'static str) -> std::io::Result<()> {
    serve(ns, port, name, None)
}

/// [`serve_grpc`] over TLS only (tonic's rustls, ALPN h2) with the PEM
/// certificate chain `cert` and its key `key`.
pub fn serve_grpc_tls(ns: &NetNs, port: u16, name: &'static str, cert: &str, key: &str) -> std::io::Result<()> {
    serve(ns, port, name, Some(tonic::transport::Identity::from_pem(cert, key)))
}

fn serve(ns: &NetNs, port: u16, name: &'static str, tls: Option<tonic::transport::Identity>) -> std::io::Result<()> {
    let mut server = tonic::transport::Server::builder();
    if let Some(identity) = tls {
        let config = tonic::transport::ServerTlsConfig::new().identity(identity);
        server = server.tls_config(config).map_err(std::io::Error::other)?;
    }
    spawn_tokio_server(ns, port, move |listener| async move {
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let _ = server.add_service(EchoServer::new(Backend { name })).serve_with_incoming(incoming).await;
    })
}

/// A gRPC client whose connection starts in `ns`, with its own runtime.
pub struct GrpcClient {
    pub rt: tokio::runtime::Runtime,
    pub echo: pb::echo_client::EchoClient<tonic::transport::Channel>,
}

impl GrpcClient {
    /// Connects (h2c) to `addr` from `ns`.
    pub fn connect(ns: &NetNs, addr: SocketAddr) -> GrpcClient {
        let rt = ns.run(|| tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio"));
        let echo = ns.run(|| {
            rt.block_on(async {
                let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                    .expect("an endpoint URI")
                    .connect_timeout(std::time::Duration::from_secs(3))
                    .timeout(std::time::Duration::from_secs(10))
                    .connect()
                    .await
                    .unwrap_or_else(|e| panic!("gRPC connect to {addr}: {e}"));
                pb::echo_client::EchoClient::new(channel)
            })
        });
        GrpcClient { rt, echo }
    }

    /// One unary call with `text` and the metadata given.
    pub fn unary(&mut self, text: &str, metadata: &[(&'static str, &str)]) -> Result<Msg, Status> {
        let mut req = Request::new(Msg { text: text.to_owned(), ..Msg::default() });
        for (k, v) in metadata {
            req.metadata_mut().insert(*k, v.parse().expect("ASCII metadata"));
        }
        let echo = &mut self.echo;
        self.rt.block_on(async { echo.unary(req).await.map(Response::into_inner) })
    }

    /// A bidirectional stream: sends `texts` one at a time, each after the
    /// answer to the one before, and returns the answers and how the
    /// stream ended (its trailers' status).
    pub fn chat(&mut self, texts: &[String], metadata: &[(&'static str, &str)]) -> (Vec<Msg>, Result<(), Status>) {
        let echo = &mut self.echo;
        self.rt.block_on(async {
            let (tx, rx) = tokio::sync::mpsc::channel::<Msg>(1);
            let mut req = Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
            for (k, v) in metadata {
                req.metadata_mut().insert(*k, v.parse().expect("ASCII metadata"));
            }
            let mut answers = Vec::new();
            let first = texts.first().cloned().unwrap_or_default();
            tx.send(Msg { text: first, ..Msg::default() }).await.expect("queued");
            let mut inbound = match echo.chat(req).await {
                Ok(r) => r.into_inner(),
                Err(s) => return (answers, Err(s)),
            };
            let mut next = texts.iter().skip(1);
            loop {
                match inbound.message().await {
                    Ok(Some(m)) => {
                        answers.push(m);
                        match next.next() {
                            Some(t) => tx.send(Msg { text: t.clone(), ..Msg::default() }).await.expect("queued"),
                            None => break,
                        }
                    }
                    Ok(None) => return (answers, Ok(())),
                    Err(s) => return (answers, Err(s)),
                }
            }
            drop(tx);
            // The end of the stream, with the trailers' status.
            loop {
                match inbound.message().await {
                    Ok(Some(m)) => answers.push(m),
                    Ok(None) => return (answers, Ok(())),
                    Err(s) => return (answers, Err(s)),
                }
            }
        })
    }
}
