//! The metrics listener (`metrics.listen`): `GET /metrics` for scrapers,
//! and the read-only live dashboard beside it (`GET /`, its script and
//! style, and `GET /dashboard.json`). Each request asks the agent's loop for
//! a fresh snapshot ([`Look`]); encoding and reading the pinned maps happen
//! off the loop. Nothing here changes the agent.

use std::{collections::BTreeMap, convert::Infallible, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, header, Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::TcpListener,
    sync::{mpsc, oneshot},
};
use tracing::debug;

use super::dashboard;
use crate::{
    control::AgentInfo,
    l7::mirror::DiffReport,
    metrics::{Format, Scrape},
};

/// What a request on the metrics listener asks the agent's loop for.
pub(super) enum Look {
    /// `/metrics`.
    Scrape(oneshot::Sender<Scrape>),
    /// `/dashboard.json`: what `status` asks (not counted as a control
    /// request) and the l7 services' mirror comparisons.
    Dashboard(oneshot::Sender<(AgentInfo, BTreeMap<String, DiffReport>)>),
}

/// How long a client has to send its request head.
const READ_LIMIT: Duration = Duration::from_secs(10);

/// The page may run only its own script and style and talk only to this
/// listener.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; \
                   frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// Serves the listener until the process exits.
pub(super) async fn serve(listener: TcpListener, looks: mpsc::Sender<Look>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let looks = looks.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| answer(req, looks.clone()));
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(READ_LIMIT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                debug!("metrics listener connection: {e}");
            }
        });
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, header::HeaderValue::from_static("nosniff"));
    r
}

fn stopping() -> Response<Full<Bytes>> {
    reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "the agent is stopping\n")
}

async fn answer(req: Request<Incoming>, looks: mpsc::Sender<Look>) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::GET {
        let mut r = reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "the metrics listener is read-only: GET\n");
        r.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static("GET"));
        return Ok(r);
    }
    Ok(match req.uri().path() {
        "/metrics" => {
            let format = Format::negotiate(req.headers().get(header::ACCEPT).and_then(|a| a.to_str().ok()));
            let (tx, rx) = oneshot::channel();
            match ask(&looks, Look::Scrape(tx), rx).await {
                Some(s) => {
                    let text = tokio::task::spawn_blocking(move || s.render(format)).await.unwrap_or_default();
                    reply(StatusCode::OK, format.content_type(), text)
                }
                None => stopping(),
            }
        }
        "/" => {
            let mut r = reply(StatusCode::OK, "text/html; charset=utf-8", dashboard::PAGE);
            r.headers_mut().insert(header::CONTENT_SECURITY_POLICY, header::HeaderValue::from_static(CSP));
            r
        }
        "/dashboard.js" => reply(StatusCode::OK, "text/javascript; charset=utf-8", dashboard::SCRIPT),
        "/dashboard.css" => reply(StatusCode::OK, "text/css; charset=utf-8", dashboard::STYLE),
        "/dashboard.json" => {
            let (tx, rx) = oneshot::channel();
            match ask(&looks, Look::Dashboard(tx), rx).await {
                Some((info, diffs)) => {
                    // The same report `splitter status --json` builds, from the pins.
                    let built = tokio::task::spawn_blocking(move || {
                        let services = info.services.clone();
                        crate::status::report(info.pin_path.clone(), &services, Some(info))
                            .map(|report| dashboard::view(report, &diffs, crate::status::now_unix_ms()))
                    })
                    .await;
                    match built {
                        Ok(Ok(view)) => {
                            let body = serde_json::to_vec(&view).expect("the view serializes");
                            reply(StatusCode::OK, "application/json", body)
                        }
                        Ok(Err(e)) => reply(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "text/plain",
                            format!("reading the pinned maps: {e}\n"),
                        ),
                        Err(_) => stopping(),
                    }
                }
                None => stopping(),
            }
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "splitter serves GET /metrics, and the dashboard at GET / (data: /dashboard.json)\n",
        ),
    })
}

/// Sends `look` to the loop and waits for its answer (`None`: the agent is
/// stopping).
async fn ask<T>(looks: &mpsc::Sender<Look>, look: Look, answer: oneshot::Receiver<T>) -> Option<T> {
    looks.send(look).await.ok()?;
    answer.await.ok()
}
