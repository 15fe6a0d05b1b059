//! A real WebSocket echo service (tokio-tungstenite) for the l7 upgrade
//! tests: served in a namespace, it answers each text message with
//! `NAME: TEXT`, so a client sees which backend holds its tunnel.

use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use splitter_testkit::{netns::NetNs, serve::spawn_tokio_server};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

/// Serves the echo as backend `name` on `[::]:port` in `ns`, until the
/// process ends.
pub fn serve_ws(ns: &NetNs, port: u16, name: &'static str) -> std::io::Result<()> {
    spawn_tokio_server(ns, port, move |listener| async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else { return };
                while let Some(Ok(msg)) = ws.next().await {
                    let answer = match msg {
                        Message::Text(t) => Message::text(format!("{name}: {}", t.as_str())),
                        Message::Close(_) => break,
                        _ => continue,
                    };
                    if ws.send(answer).await.is_err() {
                        break;
                    }
                }
            });
        }
    })
}

/// A WebSocket client session from a namespace, on its own runtime.
pub struct WsClient {
    rt: tokio::runtime::Runtime,
    ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    /// The handshake's response status and headers.
    pub status: http::StatusCode,
}

impl WsClient {
    /// Opens `ws://addr/path` from `ns` with the extra headers given.
    pub fn connect(
        ns: &NetNs,
        addr: SocketAddr,
        path: &str,
        headers: &[(&'static str, &str)],
    ) -> Result<WsClient, String> {
        let rt = ns.run(|| tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio"));
        let mut req = format!("ws://{addr}{path}").into_client_request().map_err(|e| e.to_string())?;
        for (k, v) in headers {
            req.headers_mut().insert(*k, v.parse().map_err(|_| format!("header {k}"))?);
        }
        let (ws, resp) = ns.run(|| {
            rt.block_on(async {
                tokio::time::timeout(std::time::Duration::from_secs(5), tokio_tungstenite::connect_async(req))
                    .await
                    .map_err(|_| "no handshake in 5 s".to_owned())?
                    .map_err(|e| format!("handshake: {e}"))
            })
        })?;
        Ok(WsClient { rt, ws, status: resp.status() })
    }

    /// Sends `text` and returns the next text message (5 s at most).
    pub fn echo(&mut self, text: &str) -> Result<String, String> {
        let ws = &mut self.ws;
        self.rt.block_on(async {
            ws.send(Message::text(text)).await.map_err(|e| format!("send: {e}"))?;
            loop {
                match tokio::time::timeout(std::time::Duration::from_secs(5), ws.next()).await {
                    Err(_) => return Err("no answer in 5 s".into()),
                    Ok(None) => return Err("closed".into()),
                    Ok(Some(Err(e))) => return Err(format!("receive: {e}")),
                    Ok(Some(Ok(Message::Text(t)))) => return Ok(t.as_str().to_owned()),
                    Ok(Some(Ok(_))) => continue,
                }
            }
        })
    }

    /// Waits up to `limit` for the other side to close; whether it did.
    pub fn closed_within(&mut self, limit: std::time::Duration) -> bool {
        let ws = &mut self.ws;
        self.rt.block_on(async {
            let until = tokio::time::Instant::now() + limit;
            loop {
                match tokio::time::timeout_at(until, ws.next()).await {
                    Err(_) => return false,
                    Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => return true,
                    Ok(Some(Ok(_))) => continue,
                }
            }
        })
    }
}
