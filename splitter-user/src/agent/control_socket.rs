//! The control socket: one task accepts connections, and each connection's
//! own task reads its request (bounded in size and time) and writes the
//! answer, so a client that sends nothing, or slowly, never holds up the
//! agent's loop; the loop only sees whole requests.

use std::{path::Path, sync::Arc, time::Duration};

use tokio::{
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot, Semaphore},
};
use tracing::warn;

use super::AgentError;
use crate::control::{parse_request, Request, RequestError, Response, MAX_REQUEST};

/// Control connections served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 32;
/// How long a client has to send its whole request line.
const READ_LIMIT: Duration = Duration::from_secs(5);

/// What a control connection brings the agent's loop.
pub(super) enum Call {
    /// A request (or why it could not be read) and where its answer goes.
    Ask { request: Result<Request, RequestError>, reply: oneshot::Sender<Response> },
    /// `down`: answered on `stream` once the data path is gone.
    Down { stream: UnixStream },
    /// `handover`: answered on `stream` with the listeners themselves.
    Handover { stream: UnixStream, takeover: bool },
}

/// Accepts control connections until the loop stops listening.
pub(super) async fn serve(listener: UnixListener, calls: mpsc::Sender<Call>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let mut stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                warn!("control socket: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if calls.is_closed() {
            return;
        }
        let calls = calls.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let request = read_request(&mut stream).await;
            match request {
                Ok(Request::Down) => {
                    let _ = calls.send(Call::Down { stream }).await;
                    return;
                }
                Ok(Request::Handover { takeover }) => {
                    let _ = calls.send(Call::Handover { stream, takeover }).await;
                    return;
                }
                _ => {}
            }
            let (reply, answer) = oneshot::channel();
            if calls.send(Call::Ask { request, reply }).await.is_err() {
                return;
            }
            if let Ok(response) = answer.await {
                respond(&mut stream, &response).await;
            }
        });
    }
}

/// Binds the control socket (mode 0600), replacing a stale socket file but
/// refusing one another agent still listens on.
pub(super) fn bind(path: &Path) -> Result<tokio::net::UnixListener, AgentError> {
    let err = |source| AgentError::Control { path: path.to_owned(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(err(std::io::Error::other("another agent is listening there")));
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    // Created 0600 (a umask for the bind, restored right after): never
    // connectable by others, not even for a moment.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = tokio::net::UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = bound.map_err(err)?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).map_err(err)?;
    Ok(listener)
}

/// Reads one request line (bounded in size and time) from a control connection.
async fn read_request(stream: &mut UnixStream) -> Result<Request, RequestError> {
    use tokio::io::AsyncBufReadExt;
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(tokio::io::AsyncReadExt::take(&mut *stream, MAX_REQUEST as u64));
    match tokio::time::timeout(READ_LIMIT, reader.read_line(&mut line)).await {
        Err(_) => Err(RequestError::Timeout(READ_LIMIT)),
        Ok(Err(e)) => Err(e.into()),
        Ok(Ok(_)) => parse_request(&line),
    }
}

pub(super) async fn respond(stream: &mut UnixStream, response: &Response) {
    let mut line = serde_json::to_string(response).expect("responses serialize");
    line.push('\n');
    let _ = tokio::io::AsyncWriteExt::write_all(stream, line.as_bytes()).await;
}
