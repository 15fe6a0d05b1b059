//! The HTTP/1.1 path to endpoints for requests of a client's HTTP/1
//! connection: the client connection keeps the endpoint connections it
//! used ([`Affinity`]), so a keep-alive client's next request goes out on
//! the same one without a pool lookup, a lock held across services or a
//! task hand-off; when the client connection closes they go to the
//! service's idle list ([`Idle`]), where the next client connection finds
//! them. A kept connection that the endpoint closed meanwhile is noticed
//! before the request is written, and the request goes on a fresh one.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use http::{Request, Response};
use hyper::{body::Incoming, client::conn::http1::SendRequest};

use super::{proxy::ProxyBody, upstream::UpstreamError};

/// One HTTP/1.1 connection to an endpoint, as its sender.
pub type Sender = SendRequest<ProxyBody>;

/// How long an endpoint connection may wait unused in the idle list.
const IDLE_FOR: Duration = Duration::from_secs(90);
/// Idle connections kept per endpoint; the oldest go beyond it.
const IDLE_PER_ENDPOINT: usize = 256;
/// Endpoint connections one client connection keeps; more go to the idle list.
const HELD_PER_CLIENT: usize = 8;
/// How long a connection handed back while its last answer is still being
/// read may take to become reusable before it is closed instead.
const SETTLE: Duration = Duration::from_secs(5);
/// How often, at most, a hand-back also looks through every endpoint's
/// list for connections that waited too long or were closed (a hand-back
/// per closing client connection must not cost a walk of every idle one).
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// A service's idle HTTP/1.1 connections to its endpoints.
#[derive(Default)]
pub struct Idle {
    lists: Mutex<Lists>,
}

/// Per endpoint its idle connections, oldest first, and when they were
/// last all looked through.
#[derive(Default)]
struct Lists {
    conns: HashMap<SocketAddr, VecDeque<(Sender, Instant)>>,
    swept: Option<Instant>,
}

impl Idle {
    /// The newest usable idle connection to `endpoint`; stale and closed
    /// ones met on the way are dropped.
    fn take(&self, endpoint: SocketAddr) -> Option<Sender> {
        let mut lists = self.lists.lock().unwrap_or_else(PoisonError::into_inner);
        let list = lists.conns.get_mut(&endpoint)?;
        while let Some((sender, since)) = list.pop_back() {
            if !sender.is_closed() && since.elapsed() < IDLE_FOR {
                return Some(sender);
            }
        }
        None
    }

    /// Keeps `sender` for the next request to `endpoint`, once it can take
    /// one (its last answer read to the end); a closed one is dropped.
    fn put(self: &Arc<Self>, endpoint: SocketAddr, mut sender: Sender) {
        if sender.is_closed() {
            return;
        }
        if sender.is_ready() {
            self.keep(endpoint, sender);
            return;
        }
        let idle = Arc::downgrade(self);
        tokio::spawn(async move {
            if let Ok(Ok(())) = tokio::time::timeout(SETTLE, sender.ready()).await {
                if let Some(idle) = idle.upgrade() {
                    idle.keep(endpoint, sender);
                }
            }
        });
    }

    fn keep(&self, endpoint: SocketAddr, sender: Sender) {
        let mut lists = self.lists.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        // Whatever waited too long anywhere goes, so an endpoint no longer
        // used does not keep its connections open.
        if lists.swept.is_none_or(|at| now.duration_since(at) >= SWEEP_EVERY) {
            lists.conns.retain(|_, list| {
                list.retain(|(s, since)| !s.is_closed() && now.duration_since(*since) < IDLE_FOR);
                !list.is_empty()
            });
            lists.swept = Some(now);
        }
        let list = lists.conns.entry(endpoint).or_default();
        if list.len() >= IDLE_PER_ENDPOINT {
            list.pop_front();
        }
        list.push_back((sender, now));
    }

    /// How many idle connections wait, over all endpoints.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lists.lock().unwrap_or_else(PoisonError::into_inner).conns.values().map(VecDeque::len).sum()
    }
}

/// The endpoint connections one client connection holds, each with the
/// idle list of the service it belongs to (a reload makes a new one, so an
/// old connection is not used for the new settings).
#[derive(Default)]
pub struct Affinity {
    held: Mutex<Vec<(Arc<Idle>, SocketAddr, Sender)>>,
}

impl Affinity {
    fn take(&self, idle: &Arc<Idle>, endpoint: SocketAddr) -> Option<Sender> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let at = held.iter().position(|(i, e, _)| *e == endpoint && Arc::ptr_eq(i, idle))?;
        Some(held.swap_remove(at).2)
    }

    fn hold(&self, idle: &Arc<Idle>, endpoint: SocketAddr, sender: Sender) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if held.len() < HELD_PER_CLIENT {
            held.push((idle.clone(), endpoint, sender));
        } else {
            drop(held);
            idle.put(endpoint, sender);
        }
    }
}

impl Drop for Affinity {
    fn drop(&mut self) {
        let held = std::mem::take(self.held.get_mut().unwrap_or_else(PoisonError::into_inner));
        for (idle, endpoint, sender) in held {
            idle.put(endpoint, sender);
        }
    }
}

/// Sends `req` to `endpoint` on a connection `affinity` holds, else on an
/// idle one of the service, else on a new one from `dial` (whose failure is
/// the connect error). The connection is held again once the answer's head
/// is in.
pub async fn send<D, F>(
    idle: &Arc<Idle>,
    affinity: &Affinity,
    endpoint: SocketAddr,
    mut req: Request<ProxyBody>,
    dial: D,
) -> Result<Response<Incoming>, UpstreamError>
where
    D: FnOnce() -> F,
    F: std::future::Future<Output = Result<Sender, UpstreamError>>,
{
    let mut held = affinity.take(idle, endpoint);
    // A kept connection first; one that the endpoint closed meanwhile gives
    // the request back unsent, and the next is tried.
    loop {
        let Some(mut sender) = held.take().or_else(|| idle.take(endpoint)) else { break };
        if sender.ready().await.is_err() {
            continue;
        }
        match sender.try_send_request(req).await {
            Ok(resp) => {
                affinity.hold(idle, endpoint, sender);
                return Ok(resp);
            }
            Err(mut e) => match e.take_message() {
                Some(unsent) => req = unsent,
                None => return Err(UpstreamError::Request(super::upstream::describe(e.error()))),
            },
        }
    }
    let mut sender = dial().await?;
    sender.ready().await.map_err(|e| UpstreamError::Connect(super::upstream::describe(&e)))?;
    let resp = sender.send_request(req).await.map_err(|e| UpstreamError::Request(super::upstream::describe(&e)))?;
    affinity.hold(idle, endpoint, sender);
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::TokioIo;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// An endpoint counting its connections, answering each request with
    /// the connection's number; with `close_after`, it closes each
    /// connection after that many answers.
    async fn endpoint(close_after: Option<usize>) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                let served = Arc::new(AtomicUsize::new(0));
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_req| {
                        let k = served.fetch_add(1, Ordering::SeqCst) + 1;
                        let mut resp = Response::new(http_body_util::Full::new(bytes::Bytes::from(n.to_string())));
                        if close_after.is_some_and(|c| k >= c) {
                            resp.headers_mut().insert(http::header::CONNECTION, "close".parse().unwrap());
                        }
                        async move { Ok::<_, std::convert::Infallible>(resp) }
                    });
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        (addr, accepted)
    }

    async fn dial(endpoint: SocketAddr) -> Result<Sender, UpstreamError> {
        let tcp = tokio::net::TcpStream::connect(endpoint).await.map_err(|e| UpstreamError::Connect(e.to_string()))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| UpstreamError::Connect(e.to_string()))?;
        tokio::spawn(conn);
        Ok(sender)
    }

    fn get() -> Request<ProxyBody> {
        Request::builder()
            .uri("/")
            .header(http::header::HOST, "x")
            .body(Empty::new().map_err(|never| match never {}).boxed())
            .unwrap()
    }

    async fn body(resp: Response<Incoming>) -> String {
        String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn a_client_connection_keeps_its_endpoint_connection_and_hands_it_on_when_it_closes() {
        let (ep, accepted) = endpoint(None).await;
        let idle = Arc::new(Idle::default());
        let first = Affinity::default();
        for _ in 0..5 {
            let resp = send(&idle, &first, ep, get(), || dial(ep)).await.unwrap();
            assert_eq!(body(resp).await, "1", "every request on the first connection");
        }
        // A second client connection at the same time gets its own.
        let second = Affinity::default();
        assert_eq!(body(send(&idle, &second, ep, get(), || dial(ep)).await.unwrap()).await, "2");
        drop(first);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(idle.len(), 1, "the closed client's endpoint connection is idle");
        let third = Affinity::default();
        assert_eq!(body(send(&idle, &third, ep, get(), || dial(ep)).await.unwrap()).await, "1", "reused");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_the_endpoint_closed_is_replaced_without_failing_the_request() {
        let (ep, accepted) = endpoint(Some(1)).await;
        let idle = Arc::new(Idle::default());
        let client = Affinity::default();
        for i in 1..=4 {
            let resp = send(&idle, &client, ep, get(), || dial(ep)).await.unwrap();
            assert_eq!(body(resp).await, i.to_string());
            // Let the connection see the endpoint's close.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_failed_dial_is_a_connect_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let ep = listener.local_addr().unwrap();
        drop(listener);
        let idle = Arc::new(Idle::default());
        let err = send(&idle, &Affinity::default(), ep, get(), || dial(ep)).await.unwrap_err();
        assert!(err.is_connect(), "{err}");
    }
}
