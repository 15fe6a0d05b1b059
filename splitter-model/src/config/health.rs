//! `health:` of a service: how its endpoints are checked (a TCP connect or an
//! HTTP request, from the agent), how many results flip an endpoint, how
//! real traffic ejects one (passive), and what happens to a version none of
//! whose endpoints is healthy. Validated with the rest of the file; judged
//! by `crate::health`.

use std::{ops::RangeInclusive, time::Duration};

use serde::{Deserialize, Serialize};

use super::{duration, Quoted};

/// `health:` — without it, a service's endpoints are never checked.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// What one check does.
    #[serde(default)]
    pub check: CheckKind,
    /// The request of `check: http`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpCheck>,
    /// The port checked; each endpoint's own port when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Time between two checks of one endpoint.
    #[serde(default = "default_interval", with = "duration")]
    pub interval: Duration,
    /// How long one check may take; a slower answer is a failure.
    #[serde(default = "default_timeout", with = "duration")]
    pub timeout: Duration,
    /// Consecutive failed checks that make a healthy endpoint unhealthy.
    #[serde(default = "default_unhealthy_after")]
    pub unhealthy_after: u32,
    /// Consecutive passed checks that make an unhealthy endpoint healthy.
    #[serde(default = "default_healthy_after")]
    pub healthy_after: u32,
    /// Ejection judged on real traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passive: Option<Passive>,
    /// What a version with no healthy endpoint does with its share.
    #[serde(default)]
    pub when_version_down: WhenVersionDown,
}

/// `health.check`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// A TCP connect (closed at once).
    #[default]
    Tcp,
    /// An HTTP/1.1 GET whose status must be one of `http.expect`.
    Http,
}

/// `health.http`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpCheck {
    #[serde(default = "default_path")]
    pub path: String,
    /// The statuses that pass.
    #[serde(default = "default_expect")]
    pub expect: Vec<u16>,
    /// The `Host` header; the endpoint's address when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

impl Default for HttpCheck {
    fn default() -> Self {
        HttpCheck { path: default_path(), expect: default_expect(), host: None }
    }
}

/// `health.passive`: an endpoint whose traffic fails this many times in a
/// row (l7: 5xx answers, connect failures, resets; l4: resets, and new
/// connections that got no answer at all) is ejected for `eject_for`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Passive {
    #[serde(default = "default_consecutive_failures")]
    pub consecutive_failures: u32,
    #[serde(default = "default_eject_for", with = "duration")]
    pub eject_for: Duration,
}

/// `health.when_version_down`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WhenVersionDown {
    /// Its share goes to the versions with a healthy endpoint, in
    /// proportion to their weights (equally when they all weigh 0).
    #[default]
    Redistribute,
    /// Nothing changes: its new connections fail, as without checks.
    Keep,
}

impl WhenVersionDown {
    pub fn as_str(self) -> &'static str {
        match self {
            WhenVersionDown::Redistribute => "redistribute",
            WhenVersionDown::Keep => "keep",
        }
    }
}

/// `health.interval`: 100 ms to 1 hour.
pub const INTERVAL: RangeInclusive<Duration> = Duration::from_millis(100)..=Duration::from_secs(3600);
/// `health.timeout`: 10 ms up to the interval.
pub const TIMEOUT_MIN: Duration = Duration::from_millis(10);
/// `health.unhealthy_after`, `health.healthy_after`: 1 to 100 results.
pub const THRESHOLD: RangeInclusive<u32> = 1..=100;
/// `health.passive.consecutive_failures`: 1 to 10,000.
pub const PASSIVE_FAILURES: RangeInclusive<u32> = 1..=10_000;
/// `health.passive.eject_for`: 1 s to 1 hour.
pub const EJECT_FOR: RangeInclusive<Duration> = Duration::from_secs(1)..=Duration::from_secs(3600);
/// `health.http.path` and `host` are at most this long.
const TEXT_MAX: usize = 1024;
/// `health.http.expect` lists at most this many statuses.
const EXPECT_MAX: usize = 32;

fn human(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

impl Health {
    /// Checks every value; the error names the field (below `health.`) and
    /// quotes the value.
    pub fn check(&self) -> Result<(), String> {
        if !INTERVAL.contains(&self.interval) {
            return Err(format!(
                "interval {} is out of range: use {} to {}",
                human(self.interval),
                human(*INTERVAL.start()),
                human(*INTERVAL.end())
            ));
        }
        if self.timeout < TIMEOUT_MIN || self.timeout > self.interval {
            return Err(format!(
                "timeout {} is out of range: use {} up to the interval ({})",
                human(self.timeout),
                human(TIMEOUT_MIN),
                human(self.interval)
            ));
        }
        for (field, n) in [("unhealthy_after", self.unhealthy_after), ("healthy_after", self.healthy_after)] {
            if !THRESHOLD.contains(&n) {
                return Err(format!(
                    "{field} {n} is out of range: use {} to {} consecutive checks",
                    THRESHOLD.start(),
                    THRESHOLD.end()
                ));
            }
        }
        if self.port == Some(0) {
            return Err("port 0 is not a port: use 1 to 65535, or leave it out to check each endpoint's own".into());
        }
        match (self.check, &self.http) {
            (CheckKind::Tcp, Some(_)) => {
                return Err("http is set but check is tcp: write check: http, or remove http".into());
            }
            (CheckKind::Http, Some(h)) => h.check()?,
            _ => {}
        }
        if let Some(p) = &self.passive {
            if !PASSIVE_FAILURES.contains(&p.consecutive_failures) {
                return Err(format!(
                    "passive.consecutive_failures {} is out of range: use {} to {}",
                    p.consecutive_failures,
                    PASSIVE_FAILURES.start(),
                    PASSIVE_FAILURES.end()
                ));
            }
            if !EJECT_FOR.contains(&p.eject_for) {
                return Err(format!(
                    "passive.eject_for {} is out of range: use {} to {}",
                    human(p.eject_for),
                    human(*EJECT_FOR.start()),
                    human(*EJECT_FOR.end())
                ));
            }
        }
        Ok(())
    }

    /// The HTTP request of an http check (the defaults when `http` is absent).
    pub fn http_check(&self) -> Option<HttpCheck> {
        (self.check == CheckKind::Http).then(|| self.http.clone().unwrap_or_default())
    }
}

impl HttpCheck {
    fn check(&self) -> Result<(), String> {
        let p = &self.path;
        if !p.starts_with('/') || p.len() > TEXT_MAX || !p.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "http.path {} is not a request path: start it with / and use at most {TEXT_MAX} visible ASCII characters (no spaces; percent-encode the rest)",
                Quoted(p)
            ));
        }
        if self.expect.is_empty() || self.expect.len() > EXPECT_MAX {
            return Err(format!("http.expect lists {} statuses: list 1 to {EXPECT_MAX}", self.expect.len()));
        }
        if let Some(s) = self.expect.iter().find(|s| !(100..=599).contains(*s)) {
            return Err(format!("http.expect: {s} is not an HTTP status (100 to 599)"));
        }
        if let Some(h) = &self.host {
            let ok = !h.is_empty() && h.len() <= TEXT_MAX && h.bytes().all(|b| b.is_ascii_graphic());
            if !ok {
                return Err(format!(
                    "http.host {} is not a host name: use 1 to {TEXT_MAX} visible ASCII characters, no spaces",
                    Quoted(h)
                ));
            }
        }
        Ok(())
    }
}

fn default_interval() -> Duration {
    Duration::from_secs(2)
}
fn default_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_unhealthy_after() -> u32 {
    3
}
fn default_healthy_after() -> u32 {
    2
}
fn default_path() -> String {
    "/healthz".into()
}
fn default_expect() -> Vec<u16> {
    vec![200]
}
fn default_consecutive_failures() -> u32 {
    5
}
fn default_eject_for() -> Duration {
    Duration::from_secs(30)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Health, String> {
        let h: Health = serde_yaml_ng::from_str(yaml).map_err(|e| e.to_string())?;
        h.check().map(|()| h)
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let h = parse("{}").unwrap();
        assert_eq!(h.check, CheckKind::Tcp);
        assert_eq!((h.interval, h.timeout), (Duration::from_secs(2), Duration::from_secs(1)));
        assert_eq!((h.unhealthy_after, h.healthy_after), (3, 2));
        assert_eq!(h.when_version_down, WhenVersionDown::Redistribute);
        assert!(h.passive.is_none() && h.http_check().is_none());
        let h = parse("{check: http, passive: {}}").unwrap();
        assert_eq!(h.http_check(), Some(HttpCheck { path: "/healthz".into(), expect: vec![200], host: None }));
        assert_eq!(h.passive, Some(Passive { consecutive_failures: 5, eject_for: Duration::from_secs(30) }));
    }

    #[test]
    fn bad_values_are_refused_naming_the_field_and_value() {
        for (yaml, says) in [
            ("{interval: 10ms}", "interval 10ms"),
            ("{interval: 2h}", "interval 2h"),
            ("{interval: 1s, timeout: 2s}", "timeout 2s"),
            ("{timeout: 1ms}", "timeout 1ms"),
            ("{unhealthy_after: 0}", "unhealthy_after 0"),
            ("{healthy_after: 101}", "healthy_after 101"),
            ("{port: 0}", "port 0"),
            ("{http: {path: /x}}", "check is tcp"),
            ("{check: http, http: {path: healthz}}", "http.path \"healthz\""),
            ("{check: http, http: {path: '/a b'}}", "http.path \"/a b\""),
            ("{check: http, http: {expect: []}}", "http.expect lists 0"),
            ("{check: http, http: {expect: [200, 700]}}", "700 is not an HTTP status"),
            ("{check: http, http: {host: 'a b'}}", "http.host \"a b\""),
            ("{passive: {consecutive_failures: 0}}", "passive.consecutive_failures 0"),
            ("{passive: {eject_for: 100ms}}", "passive.eject_for 100ms"),
        ] {
            let err = parse(yaml).expect_err(yaml);
            assert!(err.contains(says), "{yaml}: {err:?} does not say {says:?}");
        }
        // What serde refuses, it names too.
        for (yaml, says) in [
            ("{check: udp}", "udp"),
            ("{when_version_down: drop}", "drop"),
            ("{interval: soon}", "soon"),
            ("{intervall: 1s}", "intervall"),
            ("{port: 70000}", "70000"),
        ] {
            let err = parse(yaml).expect_err(yaml);
            assert!(err.contains(says), "{yaml}: {err:?} does not say {says:?}");
        }
    }
}
