//! The HTTP/1.1 path to endpoints for requests of a client's HTTP/1
//! connection: the client connection keeps the endpoint connections it
//! used ([`Affinity`]), so a keep-alive client's next request goes out on
//! the same one without a pool lookup or a lock held across services; when
//! the client connection closes they go to the service's idle list
//! ([`Idle`]), where the next client connection finds them. Each exchange
//! runs in the client connection's task ([`super::origin`]); a connection
//! comes back once its answer was read to the end. A kept connection that
//! the endpoint closed meanwhile is noticed before the request is written,
//! and the request goes on a fresh one; one that closes as a bodiless
//! idempotent request goes out is replaced once.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use http::{request::Parts, Response};
use http_body_util::{BodyExt, Empty};
use hyper::body::Body;

use super::{
    origin::{self, OriginConn, OriginError},
    proxy::ProxyBody,
    upstream::UpstreamError,
};

/// How long an endpoint connection may wait unused in the idle list.
const IDLE_FOR: Duration = Duration::from_secs(90);
/// Idle connections kept per endpoint; the oldest go beyond it.
const IDLE_PER_ENDPOINT: usize = 256;
/// Endpoint connections one client connection keeps; more go to the idle list.
const HELD_PER_CLIENT: usize = 8;
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
    conns: HashMap<SocketAddr, VecDeque<(OriginConn, Instant)>>,
    swept: Option<Instant>,
}

impl Idle {
    /// The newest usable idle connection to `endpoint`; stale and closed
    /// ones met on the way are dropped.
    fn take(&self, endpoint: SocketAddr) -> Option<OriginConn> {
        let mut lists = self.lists.lock().unwrap_or_else(PoisonError::into_inner);
        let list = lists.conns.get_mut(&endpoint)?;
        while let Some((mut conn, since)) = list.pop_back() {
            if since.elapsed() < IDLE_FOR && conn.usable() {
                return Some(conn);
            }
        }
        None
    }

    /// Keeps `conn` for the next request to `endpoint`.
    fn put(&self, endpoint: SocketAddr, conn: OriginConn) {
        let mut lists = self.lists.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        // Whatever waited too long anywhere goes, so an endpoint no longer
        // used does not keep its connections open.
        if lists.swept.is_none_or(|at| now.duration_since(at) >= SWEEP_EVERY) {
            lists.conns.retain(|_, list| {
                list.retain_mut(|(c, since)| now.duration_since(*since) < IDLE_FOR && c.usable());
                !list.is_empty()
            });
            lists.swept = Some(now);
        }
        let list = lists.conns.entry(endpoint).or_default();
        if list.len() >= IDLE_PER_ENDPOINT {
            list.pop_front();
        }
        list.push_back((conn, now));
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
    held: Mutex<Vec<(Arc<Idle>, SocketAddr, OriginConn)>>,
}

impl Affinity {
    fn take(&self, idle: &Arc<Idle>, endpoint: SocketAddr) -> Option<OriginConn> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let at = held.iter().position(|(i, e, _)| *e == endpoint && Arc::ptr_eq(i, idle))?;
        Some(held.swap_remove(at).2)
    }

    fn hold(&self, idle: &Arc<Idle>, endpoint: SocketAddr, conn: OriginConn) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if held.len() < HELD_PER_CLIENT {
            held.push((idle.clone(), endpoint, conn));
        } else {
            drop(held);
            idle.put(endpoint, conn);
        }
    }
}

impl Drop for Affinity {
    fn drop(&mut self) {
        let held = std::mem::take(self.held.get_mut().unwrap_or_else(PoisonError::into_inner));
        for (idle, endpoint, conn) in held {
            idle.put(endpoint, conn);
        }
    }
}

/// Sends `head` and `body` to `endpoint` on a connection `affinity` holds,
/// else on an idle one of the service, else on a new one from `dial` (whose
/// failure is the connect error). `affinity` holds the connection again
/// once the answer was read to the end.
pub async fn send<D, F>(
    idle: &Arc<Idle>,
    affinity: &Arc<Affinity>,
    endpoint: SocketAddr,
    head: Parts,
    body: ProxyBody,
    dial: D,
) -> Result<Response<ProxyBody>, UpstreamError>
where
    D: Fn() -> F,
    F: std::future::Future<Output = Result<OriginConn, UpstreamError>>,
{
    let kept = affinity.take(idle, endpoint).and_then(|mut c| c.usable().then_some(c)).or_else(|| idle.take(endpoint));
    let again = body.is_end_stream() && super::proxy::is_idempotent(&head.method);
    let keep = {
        let (idle, affinity) = (idle.clone(), affinity.clone());
        move |conn| affinity.hold(&idle, endpoint, conn)
    };
    let conn = match kept {
        Some(conn) => conn,
        None => dial().await?,
    };
    match origin::exchange(conn, &head, body, keep.clone()).await {
        // Closed by the endpoint as the request went out: once more, on a
        // new connection.
        Err(OriginError::ClosedUnanswered) if again => {
            let conn = dial().await?;
            origin::exchange(conn, &head, Empty::new().map_err(|never| match never {}).boxed(), keep)
                .await
                .map_err(|e| UpstreamError::Request(e.to_string()))
        }
        sent => sent.map_err(|e| UpstreamError::Request(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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

    async fn dial(endpoint: SocketAddr) -> Result<OriginConn, UpstreamError> {
        let tcp = tokio::net::TcpStream::connect(endpoint).await.map_err(|e| UpstreamError::Connect(e.to_string()))?;
        Ok(OriginConn::new(super::origin::Io::Plain(tcp)))
    }

    async fn send_get(
        idle: &Arc<Idle>,
        affinity: &Arc<Affinity>,
        ep: SocketAddr,
    ) -> Result<Response<ProxyBody>, UpstreamError> {
        let (head, ()) =
            http::Request::builder().uri("/").header(http::header::HOST, "x").body(()).unwrap().into_parts();
        send(idle, affinity, ep, head, Empty::new().map_err(|never| match never {}).boxed(), || dial(ep)).await
    }

    async fn body(resp: Response<ProxyBody>) -> String {
        String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn a_client_connection_keeps_its_endpoint_connection_and_hands_it_on_when_it_closes() {
        let (ep, accepted) = endpoint(None).await;
        let idle = Arc::new(Idle::default());
        let first = Arc::new(Affinity::default());
        for _ in 0..5 {
            let resp = send_get(&idle, &first, ep).await.unwrap();
            assert_eq!(body(resp).await, "1", "every request on the first connection");
        }
        // A second client connection at the same time gets its own.
        let second = Arc::new(Affinity::default());
        assert_eq!(body(send_get(&idle, &second, ep).await.unwrap()).await, "2");
        drop(first);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(idle.len(), 1, "the closed client's endpoint connection is idle");
        let third = Arc::new(Affinity::default());
        assert_eq!(body(send_get(&idle, &third, ep).await.unwrap()).await, "1", "reused");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_the_endpoint_closed_is_replaced_without_failing_the_request() {
        let (ep, accepted) = endpoint(Some(1)).await;
        let idle = Arc::new(Idle::default());
        let client = Arc::new(Affinity::default());
        for i in 1..=4 {
            let resp = send_get(&idle, &client, ep).await.unwrap();
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
        let err = send_get(&idle, &Arc::default(), ep).await.unwrap_err();
        assert!(err.is_connect(), "{err}");
    }

    /// An endpoint whose first connection answers one request ("1") and
    /// closes at the next without answering; later connections answer
    /// every request with their number.
    async fn closes_unanswered() -> SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            for n in 1.. {
                let (mut s, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    for answered in 0.. {
                        // A GET's head comes in one read here.
                        if !matches!(s.read(&mut buf).await, Ok(k) if k > 0) || n == 1 && answered == 1 {
                            return;
                        }
                        let answer = format!("HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n{n}");
                        s.write_all(answer.as_bytes()).await.unwrap();
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_kept_connection_closed_as_a_get_goes_out_is_replaced_once() {
        let ep = closes_unanswered().await;
        let idle = Arc::new(Idle::default());
        let client = Arc::new(Affinity::default());
        assert_eq!(body(send_get(&idle, &client, ep).await.unwrap()).await, "1");
        // The kept connection looks fine; the endpoint closes it unanswered.
        let resp = send_get(&idle, &client, ep).await.expect("sent again on a new connection");
        assert_eq!(body(resp).await, "2");
    }
}
