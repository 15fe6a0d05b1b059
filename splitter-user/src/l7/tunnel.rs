//! Upgraded connections (WebSocket and any other `Upgrade`): once the
//! endpoint answered 101, the client's connection and the endpoint's are
//! joined and bytes are copied both ways until either side closes, or no
//! byte has moved either way for `l7.idle_timeout`.

use std::{
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tracing::debug;

/// When bytes last moved through a tunnel.
struct Clock {
    born: Instant,
    last_ms: AtomicU64,
}

impl Clock {
    fn stamp(&self) {
        self.last_ms.store(self.born.elapsed().as_millis() as u64, Relaxed);
    }
    fn idle_until(&self, idle: Duration) -> Instant {
        self.born + Duration::from_millis(self.last_ms.load(Relaxed)) + idle
    }
}

/// One end of a tunnel, stamping the clock whenever bytes move.
struct Stamped<T> {
    inner: T,
    clock: Arc<Clock>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Stamped<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.clock.stamp();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Stamped<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.clock.stamp();
        }
        polled
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// How a tunnel ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// A side closed (or failed).
    Closed,
    /// No byte either way for the idle bound.
    Idle,
    /// An upgrade did not complete on one side.
    NotUpgraded,
}

/// Joins the client's and the endpoint's upgraded connections until one
/// side closes or `idle` passes with no byte either way; `hold` (the
/// client connection's place under the limits) is kept meanwhile.
pub async fn run<H: Send>(client: OnUpgrade, endpoint: OnUpgrade, idle: Duration, hold: H) -> Ended {
    let _hold = hold;
    let (client, endpoint) = match tokio::try_join!(client, endpoint) {
        Ok(both) => both,
        Err(e) => {
            debug!("l7: an upgrade did not complete: {e}");
            return Ended::NotUpgraded;
        }
    };
    let clock = Arc::new(Clock { born: Instant::now(), last_ms: AtomicU64::new(0) });
    let mut client = Stamped { inner: TokioIo::new(client), clock: clock.clone() };
    let mut endpoint = Stamped { inner: TokioIo::new(endpoint), clock: clock.clone() };
    let copy = tokio::io::copy_bidirectional(&mut client, &mut endpoint);
    tokio::pin!(copy);
    loop {
        tokio::select! {
            copied = &mut copy => {
                if let Err(e) = copied {
                    debug!("l7: tunnel ended: {e}");
                }
                return Ended::Closed;
            }
            () = tokio::time::sleep_until(clock.idle_until(idle)) => {
                if clock.idle_until(idle) <= Instant::now() {
                    return Ended::Idle;
                }
            }
        }
    }
}
