//! Serves the HTTP control API (`control.http`): each connection (over TLS
//! when configured) on its own task, each request's bearer token checked
//! before anything else is read, then routed (`control::http`) into the
//! same calls the control socket makes; the agent's loop answers both.

use std::{convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{body::Incoming, header, Request as HttpRequest, Response as HttpResponse, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use splitter_model::config::ControlHttp;
use tokio::{
    net::TcpListener,
    sync::{mpsc, oneshot, Semaphore},
};
use tracing::{debug, info, warn};

use super::{control_socket::Call, AgentError};
use crate::{
    control::{
        http::{route, status_of, Auth, Token},
        Response, MAX_REQUEST,
    },
    l7::tls::Terminator,
};

/// Connections served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 32;
/// How long a client has for its TLS handshake and each request head.
const READ_LIMIT: Duration = Duration::from_secs(10);

/// The API's listener, token and TLS, ready to serve.
pub(super) struct Listener {
    tcp: TcpListener,
    token: Arc<Token>,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

/// Reads the token and the certificates and binds the listener: a start
/// fails here, before anything is attached, on a bad file or a busy address.
pub(super) fn prepare(http: &ControlHttp) -> Result<Listener, AgentError> {
    let token = Token::read(&http.token_file).map_err(|e| AgentError::ControlHttp(e.to_string()))?;
    let tls = match &http.tls {
        Some(tls) => Some(
            Terminator::new(tls).map_err(|e| AgentError::ControlHttp(format!("control.http.tls: {e}")))?.acceptor(),
        ),
        None => None,
    };
    let tcp = crate::metrics::bind(http.listen)
        .map_err(|e| AgentError::ControlHttp(format!("control.http.listen {}: {e}", http.listen)))?;
    Ok(Listener { tcp, token: Arc::new(token), tls })
}

/// Serves the API until the loop stops listening.
pub(super) async fn serve(listener: Listener, calls: mpsc::Sender<Call>) {
    let Listener { tcp, token, tls } = listener;
    info!(
        listen = %tcp.local_addr().map_or_else(|e| e.to_string(), |a| a.to_string()),
        tls = tls.is_some(),
        "HTTP control API at /v1"
    );
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let stream = match tcp.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                warn!("control API: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if calls.is_closed() {
            return;
        }
        let (calls, token, tls) = (calls.clone(), token.clone(), tls.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let _ = stream.set_nodelay(true);
            let service = hyper::service::service_fn(move |req| answer(req, token.clone(), calls.clone()));
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder.http1().timer(TokioTimer::new()).header_read_timeout(READ_LIMIT);
            let served = match tls {
                Some(acceptor) => match tokio::time::timeout(READ_LIMIT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => builder.serve_connection(TokioIo::new(tls), service).await,
                    Ok(Err(e)) => return debug!("control API: TLS handshake failed: {e}"),
                    Err(_) => return debug!("control API: no TLS handshake in {READ_LIMIT:?}"),
                },
                None => builder.serve_connection(TokioIo::new(stream), service).await,
            };
            if let Err(e) = served {
                debug!("control API connection: {e}");
            }
        });
    }
}

/// One request: the token first, then the route, then the agent's answer.
async fn answer(
    req: HttpRequest<Incoming>,
    token: Arc<Token>,
    calls: mpsc::Sender<Call>,
) -> Result<HttpResponse<Full<Bytes>>, Infallible> {
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let reply = match token.check(req.headers().get(header::AUTHORIZATION)) {
        Auth::Missing => {
            let mut r = json(
                StatusCode::UNAUTHORIZED,
                &Response::fail("send the token from control.http.token_file as `Authorization: Bearer TOKEN`".into()),
            );
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer realm=\"splitter\""));
            r
        }
        Auth::Wrong => json(StatusCode::FORBIDDEN, &Response::fail("the bearer token is not this agent's".into())),
        Auth::Granted => granted(req, calls).await,
    };
    // Method, path and status only: never the headers (the token).
    debug!(%method, path, status = reply.status().as_u16(), "control API");
    Ok(reply)
}

async fn granted(req: HttpRequest<Incoming>, calls: mpsc::Sender<Call>) -> HttpResponse<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_REQUEST).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            let why = format!("the body is over {MAX_REQUEST} bytes");
            return json(StatusCode::PAYLOAD_TOO_LARGE, &Response::fail(why));
        }
        Err(e) => return json(StatusCode::BAD_REQUEST, &Response::fail(format!("reading the body: {e}"))),
    };
    let request = match route(&parts.method, parts.uri.path(), parts.uri.query(), &body) {
        Ok(r) => r,
        Err(e) => {
            let mut r = json(e.status(), &Response::fail(e.to_string()));
            if let Some(allow) = e.allow() {
                r.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static(allow));
            }
            return r;
        }
    };
    let (reply, answered) = oneshot::channel();
    let stopping = || json(StatusCode::SERVICE_UNAVAILABLE, &Response::fail("the agent is stopping".into()));
    if calls.send(Call::Ask { request: Ok(request), reply }).await.is_err() {
        return stopping();
    }
    match answered.await {
        Ok(response) => json(status_of(&response), &response),
        Err(_) => stopping(),
    }
}

fn json(status: StatusCode, response: &Response) -> HttpResponse<Full<Bytes>> {
    let mut body = serde_json::to_vec(response).expect("responses serialize");
    body.push(b'\n');
    let mut r = HttpResponse::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    r
}
