//! The HTTP control API's protocol (`control.http`): the bearer token, the
//! routes from method, path, query and body to a control [`Request`], and
//! the status each answer gets. Pure but for reading the token file; the
//! agent serves it (`agent/control_http.rs`).

use std::{collections::BTreeMap, path::Path, path::PathBuf, time::Duration};

use http::{HeaderValue, Method, StatusCode};
use serde::Deserialize;
use splitter_model::{
    config::{L4Mirror, MIN_TOKEN_LEN},
    observe::MAX_WINDOW,
};
use subtle::ConstantTimeEq;
use thiserror::Error;

use super::{NodeAction, Request, Response, RolloutAction};

/// The window an analysis reads when the query names none.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);

/// The bearer token every request must carry. Never printed: its `Debug`
/// says so, and nothing logs the `Authorization` header.
pub struct Token(Vec<u8>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<not shown>)")
    }
}

#[derive(Debug, Error)]
pub enum TokenError {
    #[error(
        "control.http.token_file {path:?} cannot be read (create it, e.g. `head -c 32 /dev/urandom | base64 > \
         {path:?}` and `chmod 600` it)"
    )]
    Read { path: PathBuf, source: std::io::Error },
    #[error("control.http.token_file {path:?}: the token (its first line) has {len} characters: use at least {MIN_TOKEN_LEN}")]
    Short { path: PathBuf, len: usize },
    #[error(
        "control.http.token_file {path:?}: the token has characters an HTTP header cannot carry: use printable \
         ASCII without spaces (base64, hex)"
    )]
    Unprintable { path: PathBuf },
}

/// What a request's `Authorization` header makes of it.
#[derive(Debug, PartialEq, Eq)]
pub enum Auth {
    Granted,
    /// No `Authorization: Bearer ...`: 401.
    Missing,
    /// A bearer token, not this one: 403.
    Wrong,
}

impl Token {
    /// The token in `path`: its first line, trimmed.
    pub fn read(path: &Path) -> Result<Token, TokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read { path: path.into(), source })?;
        Token::new(text.lines().next().unwrap_or("").trim()).map_err(|e| match e {
            TokenError::Short { len, .. } => TokenError::Short { path: path.into(), len },
            _ => TokenError::Unprintable { path: path.into() },
        })
    }

    fn new(token: &str) -> Result<Token, TokenError> {
        if token.len() < MIN_TOKEN_LEN {
            return Err(TokenError::Short { path: PathBuf::new(), len: token.chars().count() });
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::Unprintable { path: PathBuf::new() });
        }
        Ok(Token(token.as_bytes().to_vec()))
    }

    /// Whether `authorization` (the header) carries this token; compared
    /// in constant time, so the answer's timing tells nothing of it.
    pub fn check(&self, authorization: Option<&HeaderValue>) -> Auth {
        let Some(value) = authorization.map(HeaderValue::as_bytes) else { return Auth::Missing };
        let scheme = b"bearer ";
        if value.len() <= scheme.len() || !value[..scheme.len()].eq_ignore_ascii_case(scheme) {
            return Auth::Missing;
        }
        let given = value[scheme.len()..].trim_ascii();
        if bool::from(given.ct_eq(&self.0)) {
            Auth::Granted
        } else {
            Auth::Wrong
        }
    }
}

/// A request the API does not take; nothing reaches the agent.
#[derive(Debug, Error, PartialEq)]
pub enum ApiError {
    #[error("no such route {0:?}: see `GET /v1/status` and the README's HTTP API reference")]
    NotFound(String),
    #[error("{path} takes {allowed}")]
    Method { path: String, allowed: &'static str },
    #[error("the body is not what {path} takes ({why}); it takes {takes}")]
    Body { path: String, why: String, takes: &'static str },
    #[error("{0}")]
    Query(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Method { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Body { .. } | ApiError::Query(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// The `Allow` header of a 405.
    pub fn allow(&self) -> Option<&'static str> {
        match self {
            ApiError::Method { allowed, .. } => Some(allowed),
            _ => None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightsBody {
    weights: BTreeMap<String, u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FlipBody {
    to: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MirrorBody {
    mirror: Option<L4Mirror>,
}

/// The control request `method path?query` with `body` asks for.
pub fn route(method: &Method, path: &str, query: Option<&str>, body: &[u8]) -> Result<Request, ApiError> {
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let allow = |allowed: &'static str| {
        let ok = allowed.split(", ").any(|m| m == method.as_str());
        if ok {
            Ok(())
        } else {
            Err(ApiError::Method { path: path.to_owned(), allowed })
        }
    };
    fn parse<'a, T: Deserialize<'a>>(path: &str, body: &'a [u8], takes: &'static str) -> Result<T, ApiError> {
        serde_json::from_slice(body).map_err(|e| ApiError::Body { path: path.to_owned(), why: e.to_string(), takes })
    }
    match segments.as_slice() {
        ["v1", "status"] => allow("GET").map(|()| Request::Status),
        ["v1", "node", "drain"] => allow("POST").map(|()| Request::Node { action: NodeAction::Drain }),
        ["v1", "node", "undrain"] => allow("POST").map(|()| Request::Node { action: NodeAction::Undrain }),
        ["v1", "services", service, op] if is_name(service) => {
            let service = (*service).to_owned();
            match *op {
                "weights" => {
                    allow("POST")?;
                    let b: WeightsBody = parse(path, body, r#"{"weights": {"VERSION": WEIGHT, ...}}"#)?;
                    Ok(Request::Weight { service, weights: b.weights })
                }
                "flip" => {
                    allow("POST")?;
                    let b: FlipBody = parse(path, body, r#"{"to": "VERSION"}"#)?;
                    Ok(Request::Flip { service, to: b.to })
                }
                "rollback" => allow("POST").map(|()| Request::Rollback { service }),
                "mirror" => {
                    allow("POST")?;
                    let takes = r#"{"mirror": {"interface": "IFNAME", "percent": N}} or {"mirror": null}"#;
                    let b: MirrorBody = parse(path, body, takes)?;
                    Ok(Request::Mirror { service, mirror: b.mirror })
                }
                "rollout" => {
                    // GET reads it; POST steers it as the socket's rollout actions.
                    allow("GET, POST")?;
                    let action = if method == Method::GET {
                        RolloutAction::Status
                    } else {
                        let takes = r#"{"action": "start", "plan": {...}} or {"action": "pause" | "resume" | "abort" | "promote" | "status"}"#;
                        parse(path, body, takes)?
                    };
                    Ok(Request::Rollout { service, action })
                }
                "diffs" => allow("GET").map(|()| Request::Diffs { service }),
                // POST too: a webhook caller (Flagger) posts.
                "analysis" => {
                    allow("GET, POST")?;
                    Ok(Request::Analysis { service, window_secs: window(query)?.as_secs() })
                }
                _ => Err(ApiError::NotFound(path.to_owned())),
            }
        }
        _ => Err(ApiError::NotFound(path.to_owned())),
    }
}

/// A service name as a path segment: what the config allows, nothing to decode.
fn is_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// The analysis window from `window=60s` (humantime; whole seconds, 1 s
/// to [`MAX_WINDOW`]); [`DEFAULT_WINDOW`] without one.
fn window(query: Option<&str>) -> Result<Duration, ApiError> {
    let mut window = DEFAULT_WINDOW;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key != "window" {
            return Err(ApiError::Query(format!(
                "unknown query parameter {key:?}: the analysis takes window=DURATION"
            )));
        }
        window = humantime::parse_duration(value).map_err(|e| {
            ApiError::Query(format!("window={value:?} is not a duration ({e}): write e.g. window=60s or window=5m"))
        })?;
    }
    let max = MAX_WINDOW.as_secs();
    if window.as_secs() < 1 || window.as_secs() > max || window.subsec_nanos() != 0 {
        return Err(ApiError::Query(format!("window={}s: use whole seconds from 1s to {max}s", window.as_secs_f64())));
    }
    Ok(window)
}

/// The status of the agent's answer: 200 when done, 409 when it refused
/// (its message says why: no such service, a rollout holds the weights...).
pub fn status_of(response: &Response) -> StatusCode {
    if response.ok {
        StatusCode::OK
    } else {
        StatusCode::CONFLICT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> Token {
        Token::new("s3cret-token-0123456789").unwrap()
    }

    fn header(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    #[test]
    fn the_token_is_checked_by_scheme_and_value() {
        let t = token();
        assert_eq!(t.check(None), Auth::Missing);
        assert_eq!(t.check(Some(&header("Basic czNjcmV0"))), Auth::Missing);
        assert_eq!(t.check(Some(&header("Bearer"))), Auth::Missing);
        assert_eq!(t.check(Some(&header("Bearer s3cret-token-0123456789"))), Auth::Granted);
        assert_eq!(t.check(Some(&header("bearer  s3cret-token-0123456789 "))), Auth::Granted);
        assert_eq!(t.check(Some(&header("Bearer s3cret-token-012345678"))), Auth::Wrong);
        assert_eq!(t.check(Some(&header("Bearer s3cret-token-01234567890"))), Auth::Wrong);
        assert_eq!(t.check(Some(&header("Bearer S3CRET-TOKEN-0123456789"))), Auth::Wrong);
        assert_eq!(format!("{t:?}"), "Token(<not shown>)");
        assert!(matches!(Token::new("short"), Err(TokenError::Short { len: 5, .. })));
        assert!(matches!(Token::new("has a space in the token"), Err(TokenError::Unprintable { .. })));
    }

    #[test]
    fn every_socket_operation_has_a_route() {
        let post = |path: &str, body: &str| route(&Method::POST, path, None, body.as_bytes());
        let get = |path: &str, query: Option<&str>| route(&Method::GET, path, query, b"");
        assert_eq!(get("/v1/status", None), Ok(Request::Status));
        assert_eq!(
            post("/v1/services/shop/weights", r#"{"weights": {"v2": 5}}"#),
            Ok(Request::Weight { service: "shop".into(), weights: [("v2".into(), 5)].into() })
        );
        assert_eq!(
            post("/v1/services/shop/flip", r#"{"to": "green"}"#),
            Ok(Request::Flip { service: "shop".into(), to: "green".into() })
        );
        assert_eq!(post("/v1/services/shop/rollback", ""), Ok(Request::Rollback { service: "shop".into() }));
        assert_eq!(post("/v1/node/drain", ""), Ok(Request::Node { action: NodeAction::Drain }));
        assert_eq!(post("/v1/node/undrain", ""), Ok(Request::Node { action: NodeAction::Undrain }));
        assert!(get("/v1/node/drain", None).is_err(), "draining is a POST");
        assert_eq!(
            post("/v1/services/db/mirror", r#"{"mirror": null}"#),
            Ok(Request::Mirror { service: "db".into(), mirror: None })
        );
        assert_eq!(
            post("/v1/services/shop/rollout", r#"{"action": "pause"}"#),
            Ok(Request::Rollout { service: "shop".into(), action: RolloutAction::Pause })
        );
        assert_eq!(
            get("/v1/services/shop/rollout", None),
            Ok(Request::Rollout { service: "shop".into(), action: RolloutAction::Status })
        );
        assert_eq!(get("/v1/services/shop/diffs", None), Ok(Request::Diffs { service: "shop".into() }));
        assert_eq!(
            get("/v1/services/shop/analysis", Some("window=5m")),
            Ok(Request::Analysis { service: "shop".into(), window_secs: 300 })
        );
        assert_eq!(
            route(&Method::POST, "/v1/services/shop/analysis", None, b"{\"phase\": \"Progressing\"}"),
            Ok(Request::Analysis { service: "shop".into(), window_secs: 60 })
        );
    }

    #[test]
    fn bad_requests_are_refused_with_the_reason_and_never_reach_the_agent() {
        let e = route(&Method::GET, "/v1/services/shop/weights", None, b"").unwrap_err();
        assert_eq!((e.status(), e.allow()), (StatusCode::METHOD_NOT_ALLOWED, Some("POST")));
        let e = route(&Method::POST, "/v1/services/shop/weights", None, br#"{"weights": {"v2": -1}}"#).unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert!(e.to_string().contains(r#"{"weights": {"VERSION": WEIGHT, ...}}"#), "{e}");
        let e = route(&Method::POST, "/v1/services/shop/flip", None, br#"{"to": "g", "extra": 1}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
        for (query, says) in [
            ("window=soon", "not a duration"),
            ("window=0s", "from 1s to 3600s"),
            ("window=2h", "from 1s to 3600s"),
            ("window=1500ms", "whole seconds"),
            ("step=2", "unknown query parameter \"step\""),
        ] {
            let e = route(&Method::GET, "/v1/services/shop/analysis", Some(query), b"").unwrap_err();
            assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{query}");
            assert!(e.to_string().contains(says), "{query}: {e}");
        }
        for path in
            ["/", "/v1", "/v2/status", "/v1/services/shop", "/v1/services/shop/teleport", "/v1/services/a%2Fb/diffs"]
        {
            assert_eq!(route(&Method::GET, path, None, b"").unwrap_err().status(), StatusCode::NOT_FOUND, "{path}");
        }
    }
}
