//! Listeners handed from a stopping agent to the one replacing it, over the
//! control socket: the new agent asks (`{"op":"handover"}`), the old one
//! answers with the addresses and, in the same message, the listening
//! sockets themselves (`SCM_RIGHTS`). The kernel keeps queueing connections
//! on them throughout, so a restart refuses none.

use std::{
    io::{IoSlice, IoSliceMut, Read, Write},
    net::SocketAddr,
    os::{
        fd::{AsRawFd, FromRawFd, RawFd},
        unix::net::UnixStream,
    },
    path::Path,
    time::Duration,
};

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags, UnixAddr};
use thiserror::Error;

use crate::control::Response;

/// How a running agent (not stopping, asked without `takeover`) begins its
/// refusal: a new agent started right after SIGTERM asks again meanwhile.
pub const RUNNING: &str = "this agent is running, not stopping";

/// Most listeners one hand-over carries (the kernel's `SCM_MAX_FD`).
pub const MAX_LISTENERS: usize = 253;
/// How long the new agent waits for the old one's answer.
const ANSWER_LIMIT: Duration = Duration::from_secs(10);

#[derive(Debug, Error)]
pub enum HandoverError {
    #[error("asking the running agent at {path} for its listeners: {source}")]
    Io { path: std::path::PathBuf, source: std::io::Error },
    #[error("the running agent at {path} did not hand over its listeners: {message}")]
    Refused { path: std::path::PathBuf, message: String },
    #[error("the agent at {path} is running and not stopping: stop it first (SIGTERM), or start this one with `splitter run --takeover`")]
    Running { path: std::path::PathBuf },
    #[error("the running agent at {path} answered the hand-over with {addrs} listeners but {fds} sockets")]
    Mismatch { path: std::path::PathBuf, addrs: usize, fds: usize },
}

/// Asks the agent on control socket `path` for its l7 listeners (with
/// `takeover`, even if it is not stopping: it then stops). The sockets
/// come back open, with whatever connections the kernel queued on them.
pub fn take(path: &Path, takeover: bool) -> Result<Vec<(SocketAddr, std::net::TcpListener)>, HandoverError> {
    let io = |source| HandoverError::Io { path: path.to_owned(), source };
    let mut stream = UnixStream::connect(path).map_err(io)?;
    stream.set_read_timeout(Some(ANSWER_LIMIT)).map_err(io)?;
    stream.set_write_timeout(Some(ANSWER_LIMIT)).map_err(io)?;
    let request = serde_json::json!({ "op": "handover", "takeover": takeover });
    stream.write_all(format!("{request}\n").as_bytes()).map_err(io)?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut space = nix::cmsg_space!([RawFd; MAX_LISTENERS]);
    let (read, fds) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<UnixAddr>(stream.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
            .map_err(|e| io(e.into()))?;
        let mut fds = Vec::new();
        for cmsg in msg.cmsgs().map_err(|e| io(e.into()))? {
            if let ControlMessageOwned::ScmRights(received) = cmsg {
                fds.extend(received);
            }
        }
        (msg.bytes, fds)
    };
    // SAFETY: each descriptor was just received with SCM_RIGHTS: it is
    // ours alone, and open.
    let owned: Vec<std::os::fd::OwnedFd> =
        fds.into_iter().map(|fd| unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }).collect();
    let mut text = buf[..read].to_vec();
    // The rest of the line, if it came in more than one piece.
    while !text.contains(&b'\n') && read > 0 {
        let mut more = [0u8; 4096];
        let n = stream.read(&mut more).map_err(io)?;
        if n == 0 {
            break;
        }
        text.extend_from_slice(&more[..n]);
    }
    let response: Response = serde_json::from_slice(text.split(|b| *b == b'\n').next().unwrap_or_default())
        .map_err(|e| io(std::io::Error::other(format!("a bad answer: {e}"))))?;
    if !response.ok && response.message.starts_with(RUNNING) {
        return Err(HandoverError::Running { path: path.to_owned() });
    }
    if !response.ok {
        return Err(HandoverError::Refused { path: path.to_owned(), message: response.message });
    }
    let addrs = response.handover.unwrap_or_default();
    if addrs.len() != owned.len() {
        return Err(HandoverError::Mismatch { path: path.to_owned(), addrs: addrs.len(), fds: owned.len() });
    }
    Ok(addrs.into_iter().zip(owned).map(|(a, fd)| (a, std::net::TcpListener::from(fd))).collect())
}

/// Answers a hand-over on `stream`: `listeners`' addresses and sockets in
/// one message. The caller closes its own copies afterwards.
pub async fn give(
    stream: tokio::net::UnixStream,
    listeners: &[(SocketAddr, std::net::TcpListener)],
) -> std::io::Result<()> {
    let given = &listeners[..listeners.len().min(MAX_LISTENERS)];
    let response = Response {
        handover: Some(given.iter().map(|(a, _)| *a).collect()),
        ..Response::ok(format!("handed over {} l7 listeners", given.len()))
    };
    let mut line = serde_json::to_string(&response).expect("responses serialize");
    line.push('\n');
    let stream = stream.into_std()?;
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(ANSWER_LIMIT))?;
    let fds: Vec<RawFd> = given.iter().map(|(_, l)| l.as_raw_fd()).collect();
    let cmsgs = [ControlMessage::ScmRights(&fds)];
    let sent =
        sendmsg::<UnixAddr>(stream.as_raw_fd(), &[IoSlice::new(line.as_bytes())], &cmsgs, MsgFlags::empty(), None)
            .map_err(std::io::Error::from)?;
    if sent < line.len() {
        (&stream).write_all(&line.as_bytes()[sent..])?;
    }
    Ok(())
}
