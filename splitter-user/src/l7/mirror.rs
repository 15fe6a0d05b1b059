//! Mirroring on the L7 path: a sample of a service's requests is also sent to
//! its mirror version, out of band. The primary request is never delayed or
//! failed by it: a mirrored request is queued (bounded; dropped and counted
//! when full), bodies are copied as they stream past (up to a cap; larger ones
//! are not mirrored, counted), and the shadow's answer is compared with the
//! primary's after both are complete, with a timeout.
//!
//! Comparison: status, the configured headers, and the body — as JSON with
//! ignored paths when both bodies parse as JSON, else byte for byte. Results
//! are counted (match / differ / shadow error / shadow timeout) and the last
//! differences are kept as samples for `splitter diffs`.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::proxy::MIRROR_HEADER;
use splitter_model::config::l7::Compare;

/// Differences kept for `splitter diffs`.
const MAX_SAMPLES: usize = 50;
/// Mirrored requests in flight to the shadow at once, per service.
const MAX_IN_FLIGHT: usize = 64;
/// Longest text of one difference.
const MAX_DIFF_TEXT: usize = 240;

/// A body copied as it streams past: the copy is delivered when the body
/// ends, or `None` when it was larger than the cap, failed or was dropped.
pub struct Tee<B> {
    inner: B,
    cap: usize,
    copy: Option<BytesMut>,
    trailers: HeaderMap,
    done: Option<oneshot::Sender<Option<Copied>>>,
}

/// A whole body copied by a [`Tee`], with its trailers (gRPC's status).
#[derive(Debug, PartialEq)]
pub struct Copied {
    pub body: Bytes,
    pub trailers: HeaderMap,
}

impl<B: Body> Tee<B> {
    pub fn new(inner: B, cap: usize) -> (Tee<B>, oneshot::Receiver<Option<Copied>>) {
        let (tx, rx) = oneshot::channel();
        let mut tee = Tee { inner, cap, copy: Some(BytesMut::new()), trailers: HeaderMap::new(), done: Some(tx) };
        // An empty body may never be polled (hyper sees it is over).
        if tee.inner.is_end_stream() {
            tee.finish(true);
        }
        (tee, rx)
    }
}

impl<B> Tee<B> {
    fn finish(&mut self, ok: bool) {
        if let Some(tx) = self.done.take() {
            let body = self.copy.take().filter(|_| ok).map(BytesMut::freeze);
            let trailers = std::mem::take(&mut self.trailers);
            let _ = tx.send(body.map(|body| Copied { body, trailers }));
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Tee<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let cap = self.cap;
                    let over = self.copy.as_ref().is_some_and(|c| c.len() + data.len() > cap);
                    if over {
                        self.copy = None;
                    } else if let Some(c) = self.copy.as_mut() {
                        c.extend_from_slice(data);
                    }
                }
                if let Some(t) = frame.trailers_ref() {
                    let t = t.clone();
                    self.trailers.extend(t);
                }
                if self.inner.is_end_stream() {
                    let ok = self.copy.is_some();
                    self.finish(ok);
                }
            }
            Poll::Ready(Some(Err(_))) => self.finish(false),
            Poll::Ready(None) => {
                let ok = self.copy.is_some();
                self.finish(ok);
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for Tee<B> {
    fn drop(&mut self) {
        self.finish(false);
    }
}

/// The primary's answer, as the comparison needs it: the head at once, the
/// body (a [`Tee`] copy) when it has streamed to the client.
pub struct Captured {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// `None` when larger than the cap or cut short: not compared.
    pub body: oneshot::Receiver<Option<Copied>>,
}

/// One request to copy to the shadow.
pub struct Job {
    pub parts: http::request::Parts,
    pub endpoint: SocketAddr,
    /// The request body, complete (or `None`: too large / aborted).
    pub body: oneshot::Receiver<Option<Copied>>,
    /// The primary's answer, when comparing.
    pub primary: Option<oneshot::Receiver<Captured>>,
}

/// Mirror counters of a service.
#[derive(Default)]
pub struct MirrorStats {
    /// Requests sampled for mirroring.
    sampled: AtomicU64,
    /// Copies sent to the shadow and answered.
    sent: AtomicU64,
    dropped_queue_full: AtomicU64,
    skipped_body_too_large: AtomicU64,
    shadow_errors: AtomicU64,
    shadow_timeouts: AtomicU64,
    compared: AtomicU64,
    matched: AtomicU64,
    differ: AtomicU64,
    /// Primary answers too large (or cut short) to compare.
    not_compared: AtomicU64,
    samples: Mutex<VecDeque<DiffSample>>,
}

/// Mirror counters as `status` and `diffs` show them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorCounts {
    pub sampled: u64,
    pub sent: u64,
    pub dropped_queue_full: u64,
    pub skipped_body_too_large: u64,
    pub shadow_errors: u64,
    pub shadow_timeouts: u64,
    pub compared: u64,
    pub matched: u64,
    pub differ: u64,
    pub not_compared: u64,
}

impl MirrorCounts {
    /// Whether every sampled request has an outcome: sent (and answered),
    /// dropped, skipped, failed or timed out. Copies settle out of band, so
    /// a reader waits for this before reading the comparisons.
    pub fn settled(&self) -> bool {
        self.sent + self.dropped_queue_full + self.skipped_body_too_large + self.shadow_errors + self.shadow_timeouts
            == self.sampled
    }
}

/// One recorded difference.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffSample {
    /// Milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    /// `METHOD /path?query`.
    pub request: String,
    pub primary_status: u16,
    pub shadow_status: u16,
    /// What differs first, shortened.
    pub diff: String,
}

/// What `splitter diffs` prints.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffReport {
    pub compared: u64,
    pub matched: u64,
    pub differ: u64,
    pub shadow_errors: u64,
    pub shadow_timeouts: u64,
    pub samples: Vec<DiffSample>,
}

impl MirrorStats {
    pub fn sampled(&self) {
        self.sampled.fetch_add(1, Relaxed);
    }
    pub fn dropped_queue_full(&self) {
        self.dropped_queue_full.fetch_add(1, Relaxed);
    }
    pub fn skipped_body_too_large(&self) {
        self.skipped_body_too_large.fetch_add(1, Relaxed);
    }

    pub fn counts(&self) -> MirrorCounts {
        let l = |a: &AtomicU64| a.load(Relaxed);
        MirrorCounts {
            sampled: l(&self.sampled),
            sent: l(&self.sent),
            dropped_queue_full: l(&self.dropped_queue_full),
            skipped_body_too_large: l(&self.skipped_body_too_large),
            shadow_errors: l(&self.shadow_errors),
            shadow_timeouts: l(&self.shadow_timeouts),
            compared: l(&self.compared),
            matched: l(&self.matched),
            differ: l(&self.differ),
            not_compared: l(&self.not_compared),
        }
    }

    pub fn report(&self) -> DiffReport {
        let c = self.counts();
        DiffReport {
            compared: c.compared,
            matched: c.matched,
            differ: c.differ,
            shadow_errors: c.shadow_errors,
            shadow_timeouts: c.shadow_timeouts,
            samples: self.samples.lock().expect("not poisoned").iter().cloned().collect(),
        }
    }

    fn record(&self, sample: DiffSample) {
        let mut s = self.samples.lock().expect("not poisoned");
        if s.len() == MAX_SAMPLES {
            s.pop_front();
        }
        s.push_back(sample);
    }
}

/// The running mirror of one service: a bounded queue and its sender task.
pub struct Mirror {
    tx: mpsc::Sender<Job>,
    task: tokio::task::JoinHandle<()>,
}

/// What the sender needs besides the jobs.
pub struct Settings {
    /// The service's connections towards its endpoints (the shadow's are among them).
    pub upstreams: Arc<super::upstream::Upstreams>,
    pub timeout: Duration,
    pub cap: usize,
    pub compare: Compare,
    pub stats: Arc<MirrorStats>,
}

impl Mirror {
    /// Starts the sender for a queue of `queue` jobs.
    pub fn start(queue: usize, settings: Settings) -> Mirror {
        let (tx, rx) = mpsc::channel(queue);
        let task = tokio::spawn(send_all(rx, Arc::new(settings)));
        Mirror { tx, task }
    }

    /// Queues `job`; `false` (and the job dropped) when the queue is full.
    pub fn offer(&self, job: Job) -> bool {
        self.tx.try_send(job).is_ok()
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn send_all(mut rx: mpsc::Receiver<Job>, settings: Arc<Settings>) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    while let Some(job) = rx.recv().await {
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let settings = settings.clone();
        tokio::spawn(async move {
            send_one(job, &settings).await;
            drop(permit);
        });
    }
}

/// What became of the copy.
enum Shadow {
    Answered {
        status: StatusCode,
        headers: HeaderMap,
        body: Option<Bytes>,
    },
    Failed,
    TimedOut,
    /// Not sent: the request body was too large or never completed.
    NotSent,
}

async fn send_one(job: Job, s: &Settings) {
    let request_line = format!("{} {}", job.parts.method, job.parts.uri.path_and_query().map_or("/", |p| p.as_str()));
    let outcome = match tokio::time::timeout(s.timeout, shadow(job.parts, job.endpoint, job.body, s)).await {
        Ok(outcome) => outcome,
        Err(_) => Shadow::TimedOut,
    };
    let stats = &s.stats;
    match &outcome {
        Shadow::NotSent => {
            stats.skipped_body_too_large.fetch_add(1, Relaxed);
            return;
        }
        Shadow::Failed => stats.shadow_errors.fetch_add(1, Relaxed),
        Shadow::TimedOut => stats.shadow_timeouts.fetch_add(1, Relaxed),
        Shadow::Answered { .. } => stats.sent.fetch_add(1, Relaxed),
    };
    let (Some(primary), Shadow::Answered { status, headers, body }) = (job.primary, outcome) else { return };
    // The primary finishes on its own schedule; give it the same time.
    let primary = tokio::time::timeout(s.timeout, async {
        let head = primary.await.ok()?;
        let copied = head.body.await.ok().flatten()?;
        // Trailers are compared as headers (gRPC's status is one).
        let mut headers = head.headers;
        headers.extend(copied.trailers);
        Some((head.status, headers, copied.body))
    })
    .await;
    let (Ok(Some((pstatus, pheaders, pbody))), Some(sbody)) = (primary, &body) else {
        stats.not_compared.fetch_add(1, Relaxed);
        return;
    };
    stats.compared.fetch_add(1, Relaxed);
    match compare(&s.compare, (pstatus, &pheaders, &pbody), (status, &headers, sbody)) {
        None => {
            stats.matched.fetch_add(1, Relaxed);
        }
        Some(diff) => {
            stats.differ.fetch_add(1, Relaxed);
            let at_unix_ms =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
            stats.record(DiffSample {
                at_unix_ms,
                request: request_line,
                primary_status: pstatus.as_u16(),
                shadow_status: status.as_u16(),
                diff,
            });
        }
    }
}

/// Sends the copy once its body is complete and collects the answer.
async fn shadow(
    mut parts: http::request::Parts,
    endpoint: SocketAddr,
    body: oneshot::Receiver<Option<Copied>>,
    s: &Settings,
) -> Shadow {
    let Ok(Some(Copied { body, .. })) = body.await else { return Shadow::NotSent };
    parts.headers.insert(MIRROR_HEADER, HeaderValue::from_static("1"));
    let via = s.upstreams.via(parts.version, false);
    let body = Full::new(body).map_err(|n| match n {}).boxed();
    let Ok(resp) = s.upstreams.send(via, endpoint, parts, body, None).await else { return Shadow::Failed };
    let (mut parts, incoming) = resp.into_parts();
    let body = match http_body_util::Limited::new(incoming, s.cap).collect().await {
        Ok(b) => {
            if let Some(t) = b.trailers() {
                parts.headers.extend(t.clone());
            }
            Some(b.to_bytes())
        }
        // Larger than the cap: answered, but the body is not compared.
        Err(e) if e.is::<http_body_util::LengthLimitError>() => None,
        Err(_) => return Shadow::Failed,
    };
    Shadow::Answered { status: parts.status, headers: parts.headers, body }
}

/// The first difference between the primary's and the shadow's answers, or
/// `None` when they match.
pub fn compare(
    spec: &Compare,
    primary: (StatusCode, &HeaderMap, &Bytes),
    shadow: (StatusCode, &HeaderMap, &Bytes),
) -> Option<String> {
    if primary.0 != shadow.0 {
        return Some(format!("status {} vs {}", primary.0.as_u16(), shadow.0.as_u16()));
    }
    let (a, b) = (super::proxy::grpc_status(primary.1), super::proxy::grpc_status(shadow.1));
    if a != b {
        let show = |c: Option<u32>| c.map_or("(none)".into(), |c| c.to_string());
        return Some(format!("grpc-status {} vs {}", show(a), show(b)));
    }
    for name in &spec.headers {
        let (a, b) = (primary.1.get(name.as_str()), shadow.1.get(name.as_str()));
        if a != b {
            let show = |v: Option<&HeaderValue>| {
                v.map_or("(none)".into(), |v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            };
            return Some(short(format!("header {name}: {} vs {}", show(a), show(b))));
        }
    }
    let (a, b) = (primary.2, shadow.2);
    if let (Ok(mut ja), Ok(mut jb)) =
        (serde_json::from_slice::<serde_json::Value>(a), serde_json::from_slice::<serde_json::Value>(b))
    {
        for path in &spec.ignore_json {
            let segments: Vec<&str> = path.split('.').collect();
            remove_path(&mut ja, &segments);
            remove_path(&mut jb, &segments);
        }
        return json_diff(&ja, &jb, "$").map(short);
    }
    if a == b {
        return None;
    }
    let at = a.iter().zip(b.iter()).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()));
    let around = |v: &Bytes| String::from_utf8_lossy(&v[at.saturating_sub(16)..(at + 32).min(v.len())]).into_owned();
    Some(short(format!(
        "body differs at byte {at} ({} vs {} bytes): {:?} vs {:?}",
        a.len(),
        b.len(),
        around(a),
        around(b)
    )))
}

fn short(mut s: String) -> String {
    if s.len() > MAX_DIFF_TEXT {
        let mut cut = MAX_DIFF_TEXT;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// Removes `path` (`*` = every key or element) from `v`.
fn remove_path(v: &mut serde_json::Value, path: &[&str]) {
    use serde_json::Value;
    let Some((first, rest)) = path.split_first() else { return };
    match v {
        Value::Object(map) => {
            if rest.is_empty() {
                if *first == "*" {
                    map.clear();
                } else {
                    map.remove(*first);
                }
            } else if *first == "*" {
                map.values_mut().for_each(|c| remove_path(c, rest));
            } else if let Some(c) = map.get_mut(*first) {
                remove_path(c, rest);
            }
        }
        Value::Array(items) => {
            if *first == "*" {
                if rest.is_empty() {
                    items.clear();
                } else {
                    items.iter_mut().for_each(|c| remove_path(c, rest));
                }
            } else if let Ok(i) = first.parse::<usize>() {
                if rest.is_empty() {
                    if i < items.len() {
                        items.remove(i);
                    }
                } else if let Some(c) = items.get_mut(i) {
                    remove_path(c, rest);
                }
            }
        }
        _ => {}
    }
}

/// The path and values of the first difference between two JSON values.
fn json_diff(a: &serde_json::Value, b: &serde_json::Value, at: &str) -> Option<String> {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, va) in x {
                match y.get(k) {
                    Some(vb) => {
                        if let Some(d) = json_diff(va, vb, &format!("{at}.{k}")) {
                            return Some(d);
                        }
                    }
                    None => return Some(format!("{at}.{k}: only in the primary")),
                }
            }
            y.keys().find(|k| !x.contains_key(*k)).map(|k| format!("{at}.{k}: only in the shadow"))
        }
        (Value::Array(x), Value::Array(y)) => {
            for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                if let Some(d) = json_diff(va, vb, &format!("{at}[{i}]")) {
                    return Some(d);
                }
            }
            (x.len() != y.len()).then(|| format!("{at}: {} vs {} elements", x.len(), y.len()))
        }
        _ if a == b => None,
        _ => Some(format!("{at}: {a} vs {b}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmp(spec: &Compare, a: &str, b: &str) -> Option<String> {
        let h = HeaderMap::new();
        compare(
            spec,
            (StatusCode::OK, &h, &Bytes::from(a.to_owned())),
            (StatusCode::OK, &h, &Bytes::from(b.to_owned())),
        )
    }

    #[test]
    fn json_bodies_compare_as_json_with_ignored_paths() {
        let spec = Compare { enabled: true, headers: vec![], ignore_json: vec!["ts".into(), "items.*.id".into()] };
        assert_eq!(cmp(&spec, r#"{"a":1,"ts":5}"#, r#"{ "ts": 9, "a": 1 }"#), None, "key order and ignored paths");
        assert_eq!(cmp(&spec, r#"{"items":[{"id":1,"p":2}]}"#, r#"{"items":[{"id":7,"p":2}]}"#), None);
        let d = cmp(&spec, r#"{"items":[{"id":1,"p":2}]}"#, r#"{"items":[{"id":1,"p":3}]}"#).unwrap();
        assert_eq!(d, "$.items[0].p: 2 vs 3");
        let d = cmp(&Compare::default(), "hello world", "hello there").unwrap();
        assert!(d.starts_with("body differs at byte 6"), "{d}");
        assert_eq!(cmp(&Compare::default(), "same", "same"), None);
    }

    #[test]
    fn status_and_configured_headers_compare_first() {
        let spec = Compare { enabled: true, headers: vec!["content-type".into()], ignore_json: vec![] };
        let mut h1 = HeaderMap::new();
        h1.insert("content-type", "text/plain".parse().unwrap());
        let h2 = HeaderMap::new();
        let body = Bytes::from_static(b"x");
        assert_eq!(
            compare(&spec, (StatusCode::OK, &h1, &body), (StatusCode::INTERNAL_SERVER_ERROR, &h1, &body)).unwrap(),
            "status 200 vs 500"
        );
        assert_eq!(
            compare(&spec, (StatusCode::OK, &h1, &body), (StatusCode::OK, &h2, &body)).unwrap(),
            "header content-type: text/plain vs (none)"
        );
        let grpc = |code: &str| {
            let mut h = h1.clone();
            h.insert("grpc-status", code.parse().unwrap());
            h
        };
        let spec = Compare::default();
        assert_eq!(
            compare(&spec, (StatusCode::OK, &grpc("0"), &body), (StatusCode::OK, &grpc("13"), &body)).unwrap(),
            "grpc-status 0 vs 13",
            "a gRPC answer's status is always compared"
        );
        assert_eq!(compare(&spec, (StatusCode::OK, &grpc("0"), &body), (StatusCode::OK, &grpc("0"), &body)), None);
    }

    #[tokio::test]
    async fn a_tee_copies_up_to_its_cap_and_passes_everything_through() {
        let (_tee, rx) = Tee::new(http_body_util::Empty::<Bytes>::new(), 16);
        assert_eq!(rx.await.unwrap().unwrap().body, "", "an empty body is complete without being polled");
        let (tee, rx) = Tee::new(Full::new(Bytes::from_static(b"0123456789")), 16);
        assert_eq!(tee.collect().await.unwrap().to_bytes(), "0123456789");
        assert_eq!(rx.await.unwrap().unwrap().body, "0123456789");
        // Trailers pass through and are copied.
        let mut t = HeaderMap::new();
        t.insert("grpc-status", "5".parse().unwrap());
        let frames =
            vec![Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"ab"))), Ok(Frame::trailers(t))];
        let (tee, rx) = Tee::new(http_body_util::StreamBody::new(futures_util::stream::iter(frames)), 16);
        let got = tee.collect().await.unwrap();
        assert_eq!(got.trailers().unwrap()["grpc-status"], "5", "the client gets the trailers");
        let copied = rx.await.unwrap().unwrap();
        assert_eq!(copied.body, "ab");
        assert_eq!(copied.trailers["grpc-status"], "5");
        let (tee, rx) = Tee::new(Full::new(Bytes::from_static(b"0123456789")), 4);
        assert_eq!(tee.collect().await.unwrap().to_bytes(), "0123456789", "the primary gets it all");
        assert_eq!(rx.await.unwrap(), None, "over the cap: no copy");
    }
}
