//! Calling a rollout's webhooks: the payload POSTed as JSON within the
//! hook's timeout, with its bounded retries; the answer is a 2xx or says
//! why not (the last status and the start of its body, or the failure).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use splitter_model::webhook::{Answer, Payload, Webhook};

use super::http::Outbound;

/// The most of a hook's answer read (its start is quoted when it says no).
const MAX_ANSWER: usize = 64 << 10;
/// How much of a refusal's body the answer quotes.
const QUOTED: usize = 160;
/// The pause before the first retry; each later one doubles it.
const FIRST_PAUSE: Duration = Duration::from_millis(250);

/// POSTs `payload` to the hook `name` until it answers 2xx, at most
/// `1 + retries` times.
pub async fn call(name: &str, hook: &Webhook, payload: &Payload) -> Answer {
    let client = match Outbound::new(&hook.url, hook.ca.as_deref()) {
        Ok(c) => c,
        Err(why) => return Answer { ok: false, why: format!("analysis.webhooks.{name}.{why}") },
    };
    let body = Bytes::from(serde_json::to_vec(payload).unwrap_or_default());
    let what = format!("webhook {name} ({})", hook.url);
    let mut pause = FIRST_PAUSE;
    let mut last = String::new();
    for attempt in 0..=hook.retries {
        if attempt > 0 {
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
        let req = http::Request::post(&hook.url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::USER_AGENT, concat!("splitter/", env!("CARGO_PKG_VERSION")))
            .body(Full::new(body.clone()));
        let req = match req {
            Ok(r) => r,
            Err(e) => return Answer { ok: false, why: format!("{what}: {e}") },
        };
        match client.send(&what, req, hook.timeout, MAX_ANSWER).await {
            Ok(r) if (200..300).contains(&r.status) => return Answer { ok: true, why: format!("HTTP {}", r.status) },
            Ok(r) => last = format!("HTTP {}{}", r.status, quote(&r.body)),
            Err(e) => last = e,
        }
    }
    let calls = hook.retries + 1;
    Answer { ok: false, why: if calls > 1 { format!("{last} ({calls} calls)") } else { last } }
}

/// `: the body's start` on one line, or nothing for an empty body.
fn quote(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(QUOTED)]);
    let line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.is_empty() {
        String::new()
    } else {
        format!(": {line}")
    }
}
