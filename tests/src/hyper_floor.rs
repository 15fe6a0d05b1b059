//! The floor under splitter's l7 proxy, for the L7 bench: a bare reverse
//! proxy built of off-the-shelf parts (hyper-util's server and pooled
//! client, on tokio's current-thread runtime, as `splitter run --workers
//! 1`), doing none of splitter's own work (framing guard, routing, limits,
//! statistics, forwarding headers, mirroring). What splitter spends above
//! it is splitter's layer; what it spends above HAProxy is hyper's and
//! tokio's. splitter's own HTTP/1.1 path to the endpoints (each client
//! connection holding its endpoint connections, driven by its own client in
//! the client connection's task) skips the pool lookup and the hand-off to
//! a connection task that this floor pays per request.
//!
//! The bench runs it as a child process (itself, with [`ARG`]), so that its
//! CPU time and pinning are measured like every other proxy's.

use std::{convert::Infallible, net::SocketAddr, path::Path, process::Child};

use http_body_util::{combinators::BoxBody, BodyExt};
use hyper::{body::Incoming, Request, Response, StatusCode};
use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioIo},
    server::conn::auto::Builder,
};
use splitter_testkit::netns::NetNs;

use crate::peers::spawn_peer;

/// The first argument that makes a bench binary run the floor proxy:
/// `BENCH hyper-floor LISTEN BACKEND`.
pub const ARG: &str = "hyper-floor";

/// Runs the floor proxy if this process was started as one (see [`ARG`]);
/// returns otherwise.
pub fn run_if_asked() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) != Some(ARG) {
        return;
    }
    let addr = |i: usize| -> SocketAddr {
        args.get(i).and_then(|a| a.parse().ok()).unwrap_or_else(|| panic!("usage: {ARG} LISTEN BACKEND"))
    };
    serve(addr(2), addr(3));
    std::process::exit(0);
}

fn serve(listen: SocketAddr, backend: SocketAddr) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio");
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await.expect("bind the floor proxy's address");
        let client = Client::builder(TokioExecutor::new()).build_http::<Incoming>();
        let server = Builder::new(TokioExecutor::new());
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            let (client, server) = (client.clone(), server.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| forward(client.clone(), backend, req));
                let _ = server.serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
}

async fn forward(
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Incoming>,
    backend: SocketAddr,
    mut req: Request<Incoming>,
) -> Result<Response<BoxBody<bytes::Bytes, hyper::Error>>, Infallible> {
    let pq = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    *req.uri_mut() = format!("http://{backend}{pq}").parse().expect("a valid URI");
    Ok(match client.request(req).await {
        Ok(resp) => resp.map(BodyExt::boxed),
        Err(_) => {
            let mut resp = Response::new(http_body_util::Empty::new().map_err(|never| match never {}).boxed());
            *resp.status_mut() = StatusCode::BAD_GATEWAY;
            resp
        }
    })
}

/// The floor proxy running in `ns` on `listen`, in front of `backend`;
/// killed on drop.
pub struct HyperFloor(pub Child);

impl HyperFloor {
    pub fn start(ns: &NetNs, exe: &Path, listen: SocketAddr, backend: SocketAddr) -> HyperFloor {
        let mut cmd = ns.command(exe);
        cmd.args([ARG, &listen.to_string(), &backend.to_string()]);
        HyperFloor(spawn_peer(&mut cmd, "the hyper floor proxy", || format!("it could not listen on {listen}")))
    }
}

impl Drop for HyperFloor {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
