//! Webhooks of `analysis.webhooks` (Flagger's kinds): which gate a rollout
//! asks them at, what they are sent, and the check of their config. Pure:
//! the agent's caller (`splitter-user/src/analysis/webhook.rs`) posts them
//! and hands the answers to the rollout (`rollout::Counts::hooks`).

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

/// When a hook is called, and whether its answer gates the rollout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Before the canary gets any traffic: a 2xx lets the first step start.
    PreRollout,
    /// Before each later step's weights are raised.
    ConfirmStep,
    /// Before the step that gives the canary everything (100 %); a waiting
    /// one can also be answered by hand (`splitter rollout --approve`).
    ConfirmPromotion,
    /// Told of each step, the promotion, a rollback, an abort; never gates.
    Event,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::PreRollout => "pre-rollout",
            Kind::ConfirmStep => "confirm-step",
            Kind::ConfirmPromotion => "confirm-promotion",
            Kind::Event => "event",
        }
    }

    pub fn gates(self) -> bool {
        self != Kind::Event
    }
}

/// One entry of `analysis.webhooks`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    pub kind: Kind,
    /// `http://` or `https://` (verified against `ca`, or the system's roots).
    pub url: String,
    /// How long one call may take.
    #[serde(default = "default_timeout", with = "crate::config::duration")]
    pub timeout: Duration,
    /// Further calls after a failed one (no answer, or not 2xx), 0 to 10,
    /// each after a pause twice as long as the last (from 250ms).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// https: the PEM certificate(s) of the CA that signed the hook's
    /// certificate (default: the system's roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
}

fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_retries() -> u32 {
    2
}

/// The most `retries` a hook may have.
pub const MAX_RETRIES: u32 = 10;

/// What a hook is POSTed, as JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Payload {
    pub service: String,
    pub canary: String,
    pub baseline: String,
    /// The step (from 1) the rollout is at, or is about to enter.
    pub step: usize,
    /// The canary's share at that step, in percent.
    pub weight: u32,
    /// The gate asked (`pre-rollout`, `confirm-step`, `confirm-promotion`)
    /// or what happened (`started`, `step`, `waiting`, `promoted`,
    /// `rolled-back`, `aborted`, `paused`, `resumed`).
    pub phase: String,
    /// Why, in words.
    pub reason: String,
    /// Event hooks: one line for people, as Slack's incoming webhooks read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// A URL the agent calls out to (a webhook's, Prometheus's): `http://` or
/// `https://`, a host, no credentials in it. The error starts with `url:`.
pub fn check_url(url: &str) -> Result<bool, String> {
    let (https, rest) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
        (Some(rest), _) => (false, rest),
        (_, Some(rest)) => (true, rest),
        _ => return Err(format!("url: {url:?} must start with http:// or https://")),
    };
    let host = rest.split(['/', '?']).next().unwrap_or("");
    if host.is_empty() || host.contains(['#', ' ', '@']) || url.contains(char::is_whitespace) {
        return Err(format!("url: {url:?} has no host[:port] (and must hold no credentials or spaces)"));
    }
    Ok(https)
}

/// A CA file for an https URL: absolute, and only with https. The error
/// starts with `ca:`.
pub fn check_ca(ca: &Option<PathBuf>, https: bool) -> Result<(), String> {
    match ca {
        Some(path) if !https => Err(format!("ca: {path:?} is only for an https:// url")),
        Some(path) if !path.is_absolute() => Err(format!("ca: {path:?} is not an absolute path: write it from /")),
        _ => Ok(()),
    }
}

impl Webhook {
    /// What `validate` checks; the error starts with the key under the hook.
    pub fn check(&self) -> Result<(), String> {
        let https = check_url(&self.url)?;
        check_ca(&self.ca, https)?;
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(60) {
            return Err("timeout: use 1ms to 60s".into());
        }
        if self.retries > MAX_RETRIES {
            return Err(format!("retries: {} is too many: use 0 to {MAX_RETRIES}", self.retries));
        }
        Ok(())
    }
}

/// One hook's answer at a gate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    /// A 2xx.
    pub ok: bool,
    /// `HTTP 200`, `HTTP 503: busy`, `no answer in 5s`.
    pub why: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hooks_are_read_with_their_kinds_and_checked_naming_the_key() {
        let hook: Webhook =
            serde_yaml_ng::from_str("{ kind: confirm-promotion, url: \"http://10.0.0.5:8000/approve\" }").unwrap();
        assert_eq!((hook.kind, hook.timeout, hook.retries), (Kind::ConfirmPromotion, default_timeout(), 2));
        assert_eq!(hook.check(), Ok(()));
        let bad = serde_yaml_ng::from_str::<Webhook>("{ kind: confirm-rollout, url: http://h/ }").unwrap_err();
        assert!(bad.to_string().contains("unknown variant `confirm-rollout`"), "{bad}");
        let check = |yaml: &str| serde_yaml_ng::from_str::<Webhook>(yaml).unwrap().check();
        assert!(check("{ kind: event, url: ftp://h/ }").unwrap_err().starts_with("url: \"ftp://h/\" must start"));
        assert!(check("{ kind: event, url: \"http://u:p@h/\" }").unwrap_err().contains("no credentials"));
        assert!(check("{ kind: event, url: \"http:///x\" }").unwrap_err().contains("no host"));
        assert!(check("{ kind: event, url: \"http://h/\", ca: /ca.pem }").unwrap_err().starts_with("ca: "));
        assert!(check("{ kind: event, url: \"https://h/\", ca: ca.pem }").unwrap_err().contains("absolute"));
        assert_eq!(check("{ kind: event, url: \"https://hooks.example/x\", ca: /ca.pem }"), Ok(()));
        assert!(check("{ kind: event, url: \"http://h/\", retries: 11 }").unwrap_err().starts_with("retries: 11"));
        assert!(check("{ kind: event, url: \"http://h/\", timeout: 2m }").unwrap_err().starts_with("timeout:"));
    }

    #[test]
    fn the_payload_has_the_documented_fields_and_text_only_for_events() {
        let p = Payload {
            service: "shop".into(),
            canary: "green".into(),
            baseline: "blue".into(),
            step: 2,
            weight: 25,
            phase: "confirm-step".into(),
            reason: "step 1 passed".into(),
            text: None,
        };
        let json = serde_json::to_value(&p).unwrap();
        let keys: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["baseline", "canary", "phase", "reason", "service", "step", "weight"]);
        let with_text = serde_json::to_value(Payload { text: Some("shop: step 2".into()), ..p }).unwrap();
        assert_eq!(with_text["text"], "shop: step 2");
    }
}
