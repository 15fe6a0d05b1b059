//! Active health checks: one tokio task per checked endpoint — a timer, no
//! thread, and a socket only while a check runs — started at an offset
//! spread over the interval, sending each result to the agent, which
//! judges them (`splitter_model::health`). The probes: a TCP connect, or an
//! HTTP/1.1 GET whose status must be one of those expected.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use splitter_model::config::{
    health::{CheckKind, Health},
    Config,
};
use tokio::{net::TcpStream, sync::mpsc, task::JoinHandle};

/// One check's result.
#[derive(Debug)]
pub struct Probe {
    pub service: String,
    pub endpoint: SocketAddr,
    /// What failed, in a few words (refused, timed out, status 503...).
    pub result: Result<(), String>,
}

/// Results waiting for the agent; a checker whose result finds the queue
/// full waits (its next check is late, none is lost).
const QUEUE: usize = 4096;

/// The running checks, one task per (service, endpoint) of every service
/// with `health:`.
pub struct Checker {
    tx: mpsc::Sender<Probe>,
    tasks: BTreeMap<(String, SocketAddr), (Health, JoinHandle<()>)>,
}

impl Checker {
    /// No checks yet, and where their results will arrive.
    pub fn new() -> (Checker, mpsc::Receiver<Probe>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (Checker { tx, tasks: BTreeMap::new() }, rx)
    }

    /// Checks exactly the endpoints of `config`'s services with `health:`:
    /// new ones start, gone ones stop, changed settings restart theirs.
    /// Must run inside the tokio runtime.
    pub fn reconcile(&mut self, config: &Config) {
        let mut wanted = BTreeMap::new();
        for (name, svc) in &config.services {
            let Some(h) = &svc.health else { continue };
            let endpoints: BTreeSet<&SocketAddr> = svc.versions.values().flatten().collect();
            for ep in endpoints {
                wanted.insert((name.clone(), *ep), h);
            }
        }
        self.tasks.retain(|key, (h, task)| {
            let keep = wanted.get(key).is_some_and(|w| *w == h);
            if !keep {
                task.abort();
            }
            keep
        });
        for ((service, endpoint), h) in wanted {
            if self.tasks.contains_key(&(service.clone(), endpoint)) {
                continue;
            }
            let task = tokio::spawn(check_forever(service.clone(), endpoint, h.clone(), self.tx.clone()));
            self.tasks.insert((service, endpoint), (h.clone(), task));
        }
    }

    /// How many endpoints are being checked.
    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        for (_, task) in self.tasks.values() {
            task.abort();
        }
    }
}

/// Slots of an interval that checks start in: thousands of endpoints are
/// not checked in one burst, and the checks of one slot wake the runtime
/// (and their results the agent) together rather than one by one.
const SLOTS: u64 = 16;

/// Where in the interval an endpoint's checks fall: one of [`SLOTS`] by an
/// FNV-1a hash of its identity.
fn offset(service: &str, endpoint: SocketAddr, interval: Duration) -> Duration {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in service.bytes().chain(endpoint.to_string().bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    interval * u32::try_from(h % SLOTS).unwrap_or(0) / SLOTS as u32
}

/// Checks `endpoint` every `h.interval` until aborted (or the agent is gone).
async fn check_forever(service: String, endpoint: SocketAddr, h: Health, tx: mpsc::Sender<Probe>) {
    let target = SocketAddr::new(endpoint.ip(), h.port.unwrap_or(endpoint.port()));
    let start = tokio::time::Instant::now() + offset(&service, endpoint, h.interval);
    let mut ticks = tokio::time::interval_at(start, h.interval);
    // A late check is not made up for with a burst.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let result = probe(target, &h).await;
        if tx.send(Probe { service: service.clone(), endpoint, result }).await.is_err() {
            return;
        }
    }
}

/// One check of `target`, bounded by `h.timeout`.
pub async fn probe(target: SocketAddr, h: &Health) -> Result<(), String> {
    match tokio::time::timeout(h.timeout, probe_once(target, h)).await {
        Ok(result) => result,
        Err(_) => Err(format!("timed out after {}", humantime::format_duration(h.timeout))),
    }
}

async fn probe_once(target: SocketAddr, h: &Health) -> Result<(), String> {
    let stream = TcpStream::connect(target).await.map_err(|e| connect_error(&e))?;
    // Closed with a reset, as HAProxy's checks are: no TIME_WAIT left on
    // the load balancer per check (thousands a second would hold its
    // ephemeral ports), and two packets fewer.
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    if h.check == CheckKind::Tcp {
        return Ok(());
    }
    let http = h.http_check().unwrap_or_default();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| format!("http: {e}"))?;
    let driver = tokio::spawn(conn);
    let host = http.host.clone().unwrap_or_else(|| target.to_string());
    let request = http::Request::get(http.path.as_str())
        .header(http::header::HOST, host)
        .header(http::header::USER_AGENT, "splitter-health")
        .header(http::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("http request: {e}"))?;
    let answer = sender.send_request(request).await;
    driver.abort();
    let status = answer.map_err(|e| format!("http: {e}"))?.status().as_u16();
    if http.expect.contains(&status) {
        Ok(())
    } else {
        let expected: Vec<String> = http.expect.iter().map(ToString::to_string).collect();
        Err(format!("status {status} (expected {})", expected.join(" or ")))
    }
}

/// A connect error in a few words.
fn connect_error(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        std::io::ErrorKind::ConnectionReset => "connection reset".into(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(yaml: &str) -> Health {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[tokio::test]
    async fn tcp_and_http_probes_tell_what_failed() {
        let tcp = health("{timeout: 500ms}");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listener.local_addr().unwrap();
        assert_eq!(probe(open, &tcp).await, Ok(()));
        drop(listener);
        assert_eq!(probe(open, &tcp).await, Err("connection refused".into()));

        // An HTTP endpoint answering 200 on /healthz and 503 elsewhere.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                        let status = if req.uri().path() == "/healthz" && req.headers()["host"] == "shop.internal" {
                            200
                        } else {
                            503
                        };
                        http::Response::builder().status(status).body(Empty::<Bytes>::new())
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        let good = health("{check: http, timeout: 500ms, http: {host: shop.internal}}");
        assert_eq!(probe(addr, &good).await, Ok(()));
        let bad = health("{check: http, timeout: 500ms, http: {path: /other, expect: [200, 204]}}");
        assert_eq!(probe(addr, &bad).await, Err("status 503 (expected 200 or 204)".into()));
        // Connected, but nothing ever answers.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let slow = health("{check: http, interval: 1s, timeout: 200ms}");
        assert_eq!(probe(silent.local_addr().unwrap(), &slow).await, Err("timed out after 200ms".into()));
    }

    #[test]
    fn offsets_spread_over_the_interval() {
        let interval = Duration::from_secs(1);
        let offsets: BTreeSet<u128> = (0..100)
            .map(|i| offset("shop", SocketAddr::from(([198, 51, 100, i], 8080)), interval).as_millis())
            .collect();
        assert!(offsets.len() >= 12, "100 endpoints fell into {} of {SLOTS} slots", offsets.len());
        let slots: BTreeSet<u128> = (0..SLOTS as u32).map(|k| (interval * k / SLOTS as u32).as_millis()).collect();
        assert!(offsets.is_subset(&slots), "{offsets:?} are not slot starts {slots:?}");
    }
}
