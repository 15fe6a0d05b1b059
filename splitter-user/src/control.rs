//! The control socket: a Unix stream socket where the CLI sends the running
//! agent one JSON request per connection and reads one JSON response.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use splitter_model::{
    change::{self, Change},
    config::Config,
    runtime::ChangeError,
    runtime::Runtime,
};
use thiserror::Error;

pub mod http;

/// What the CLI asks the agent.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Set the named versions' weights; the others keep theirs.
    Weight { service: String, weights: BTreeMap<String, u32> },
    /// All new connections of `service` to version `to`.
    Flip { service: String, to: String },
    /// Undo the last change to `service`.
    Rollback { service: String },
    /// Copy a sample of an l4 service's new flows out of an interface
    /// (`mirror: null` turns it off).
    Mirror { service: String, mirror: Option<splitter_model::config::L4Mirror> },
    /// Start, steer or read a rollout of `service`.
    Rollout { service: String, action: RolloutAction },
    /// Who is running and the weights it serves (also a readiness probe).
    Status,
    /// The mirror comparison report of an l7 service.
    Diffs { service: String },
    /// What each version of `service` did over the last `window_secs`
    /// seconds (up to [`splitter_model::observe::MAX_WINDOW`]).
    Analysis { service: String, window_secs: u64 },
    /// Drain or undrain this node: withdraw or announce its VIPs
    /// (`announce:`).
    Node { action: NodeAction },
    /// Detach, unpin everything and exit (`splitter down`).
    Down,
    /// Hand the l7 listeners over to the agent that asks (a new `splitter
    /// run` on the same state dir): answered with the sockets themselves.
    /// A running agent hands over only with `takeover` (then stops); a
    /// stopping one always.
    Handover {
        #[serde(default)]
        takeover: bool,
    },
}

impl Request {
    /// The request's `op`, for logs.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Weight { .. } => "weight",
            Request::Flip { .. } => "flip",
            Request::Rollback { .. } => "rollback",
            Request::Mirror { .. } => "mirror",
            Request::Rollout { .. } => "rollout",
            Request::Status => "status",
            Request::Diffs { .. } => "diffs",
            Request::Analysis { .. } => "analysis",
            Request::Node { .. } => "node",
            Request::Down => "down",
            Request::Handover { .. } => "handover",
        }
    }
}

pub use splitter_model::change::RolloutAction;

/// What `splitter node` asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeAction {
    /// Withdraw every VIP (kept across restarts until undrained).
    Drain,
    /// Announce them again.
    Undrain,
}

impl Request {
    /// The domain change a `weight`, `flip`, `rollback` or `mirror` request
    /// asks for (`None` for the others).
    pub fn change(&self) -> Option<Change> {
        Some(match self.clone() {
            Request::Weight { service, weights } => Change::Weight { service, weights },
            Request::Flip { service, to } => Change::Flip { service, to },
            Request::Rollback { service } => Change::Rollback { service },
            Request::Mirror { service, mirror } => Change::Mirror { service, mirror },
            Request::Rollout { .. }
            | Request::Status
            | Request::Diffs { .. }
            | Request::Analysis { .. }
            | Request::Node { .. }
            | Request::Down
            | Request::Handover { .. } => return None,
        })
    }

    /// What a changing request makes of `runtime` (pure; a new rollout
    /// starts from zero counts: the CLI's `--etcd` path, which has none).
    pub fn outcome(&self, file: &Config, runtime: &Runtime) -> Result<change::Outcome, ChangeError> {
        match (self, self.change()) {
            (_, Some(c)) => change::apply(&c, file, runtime),
            (Request::Rollout { service, action }, None) => {
                change::rollout(service, action.clone(), file, runtime, |_, _, _| Default::default())
            }
            (other, None) => Err(ChangeError::NotAChange(other.op())),
        }
    }
}

/// The agent's answer.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct Response {
    pub ok: bool,
    /// What happened, or why nothing did.
    pub message: String,
    /// The service's weights after the request (when it succeeded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<BTreeMap<String, u32>>,
    /// The agent itself (answer to `status`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentInfo>,
    /// Mirror comparisons (answer to `diffs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diffs: Option<crate::l7::mirror::DiffReport>,
    /// Each version over a window (answer to `analysis`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<splitter_model::observe::Analysis>,
    /// The service's rollout (answer to `rollout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<splitter_model::rollout::Rollout>,
    /// The addresses of the listeners handed over (answer to `handover`;
    /// the sockets come with the message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handover: Option<Vec<std::net::SocketAddr>>,
}

impl Response {
    pub fn ok(message: String) -> Response {
        Response { ok: true, ..Response::fail(message) }
    }

    pub fn fail(message: String) -> Response {
        Response {
            ok: false,
            message,
            weights: None,
            agent: None,
            diffs: None,
            analysis: None,
            rollout: None,
            handover: None,
        }
    }

    /// The answer to `rollout SERVICE --status`.
    pub fn rollout_status(runtime: &Runtime, service: &str) -> Response {
        match change::rollout_status(runtime, service) {
            Ok(r) => Response { rollout: Some(r), ..Response::ok(format!("{service}: rollout")) },
            Err(e) => Response::fail(e.to_string()),
        }
    }
}

/// A running agent, as it describes itself.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct AgentInfo {
    pub pid: u32,
    pub config: PathBuf,
    /// The services the agent serves, as configured (before runtime
    /// changes): what `status --socket` shows without the file.
    #[serde(default)]
    pub services: BTreeMap<String, splitter_model::config::Service>,
    /// L7 services whose listen address is not local in the agent's
    /// namespace (connections to them never arrive), with that address.
    #[serde(default)]
    pub not_local: BTreeMap<String, std::net::IpAddr>,
    pub pin_path: PathBuf,
    pub state_dir: PathBuf,
    /// Start time, seconds since the Unix epoch.
    pub started_unix: u64,
    /// Weights each service is served with now (file plus runtime changes).
    pub weights: BTreeMap<String, BTreeMap<String, u32>>,
    /// Counters of the l7 services (the proxy's; l4 counters are in the maps).
    #[serde(default)]
    pub l7: BTreeMap<String, crate::l7::ServiceStats>,
    /// L4 flow mirroring each service runs with now (file plus runtime changes).
    #[serde(default)]
    pub mirrors: BTreeMap<String, splitter_model::config::L4Mirror>,
    /// New flows (l4) or requests (l7) per service and version over the last
    /// `observed_secs` seconds (up to a minute; less just after the start).
    #[serde(default)]
    pub observed: BTreeMap<String, BTreeMap<String, u64>>,
    #[serde(default)]
    pub observed_secs: u64,
    /// Each service's last rollout.
    #[serde(default)]
    pub rollouts: BTreeMap<String, splitter_model::rollout::Rollout>,
    /// This node's place in a shared store (`store:`), if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterInfo>,
    /// Endpoint health of the services with `health:` (this node's own).
    #[serde(default)]
    pub health: BTreeMap<String, ServiceHealth>,
    /// The VIPs this node announces (`announce:`), and whether it is drained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announce: Option<crate::announce::AnnounceInfo>,
}

/// A service's endpoint health and what it makes of each version's share.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct ServiceHealth {
    pub versions: Vec<splitter_model::health::VersionServed>,
    pub endpoints: Vec<EndpointHealth>,
}

/// One endpoint's health.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct EndpointHealth {
    pub version: String,
    pub endpoint: std::net::SocketAddr,
    pub up: bool,
    /// Out because its traffic failed (passive), until its time is over.
    pub ejected: bool,
    /// Since when the verdict holds (Unix milliseconds).
    pub since_unix_ms: u64,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// A node of a shared store, as it describes itself.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct ClusterInfo {
    pub node: String,
    /// The store's endpoints.
    pub store: String,
    /// The store revision this node serves.
    pub applied_revision: i64,
    pub reachable: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_error: Option<String>,
    /// Whether this node drives the rollouts.
    pub leader: bool,
    /// Why the latest revision could not be served here, if so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply_error: Option<String>,
    /// Who made the change served now, and what it was.
    pub changed_by: String,
    pub change: String,
}

#[derive(Debug, Error)]
pub enum ControlError {
    #[error("cannot reach the agent at {path}: {source} (is `splitter run` running with this control.socket? pass --socket or --config)")]
    Connect { path: PathBuf, source: std::io::Error },
    #[error("talking to the agent at {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the agent at {path} sent an answer that is not a response: {source}")]
    Protocol { path: PathBuf, source: serde_json::Error },
}

/// Sends `req` to the agent listening on `socket` and returns its response.
pub fn request(socket: &Path, req: &Request) -> Result<Response, ControlError> {
    let io = |source| ControlError::Io { path: socket.to_owned(), source };
    let mut stream =
        UnixStream::connect(socket).map_err(|source| ControlError::Connect { path: socket.to_owned(), source })?;
    stream.set_read_timeout(Some(Duration::from_secs(30))).map_err(io)?;
    let mut line = serde_json::to_string(req).expect("requests serialize");
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer).map_err(io)?;
    serde_json::from_str(&answer).map_err(|source| ControlError::Protocol { path: socket.to_owned(), source })
}

/// Largest request the agent reads (a weight change is far smaller).
pub const MAX_REQUEST: usize = 64 * 1024;

/// Why a control connection's request was not read; the agent answers
/// with this and changes nothing.
#[derive(Debug, Error)]
pub enum RequestError {
    #[error("bad control request: {0}")]
    Json(#[from] serde_json::Error),
    #[error("bad control request: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad control request: no complete line within {0:?}")]
    Timeout(Duration),
}

/// Parses one request line, or explains what is wrong with it.
pub fn parse_request(line: &str) -> Result<Request, RequestError> {
    Ok(serde_json::from_str(line.trim())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_bad_ones_are_explained() {
        let r = Request::Weight { service: "shop".into(), weights: [("green".to_owned(), 5)].into() };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(text, r#"{"op":"weight","service":"shop","weights":{"green":5}}"#);
        assert_eq!(parse_request(&text).unwrap(), r);
        let err = |line: &str| parse_request(line).unwrap_err().to_string();
        assert!(err(r#"{"op":"explode"}"#).contains("unknown variant"));
        assert!(err("not json").starts_with("bad control request"));
        assert!(err(r#"{"op":"flip","service":"s"}"#).contains("missing field `to`"));
        let m = parse_request(r#"{"op":"mirror","service":"s","mirror":{"interface":"mir0","percent":2.5}}"#).unwrap();
        assert_eq!(
            m,
            Request::Mirror {
                service: "s".into(),
                mirror: Some(splitter_model::config::L4Mirror { interface: "mir0".into(), percent: 2.5 })
            }
        );
        assert_eq!(
            parse_request(r#"{"op":"mirror","service":"s","mirror":null}"#).unwrap(),
            Request::Mirror { service: "s".into(), mirror: None }
        );
    }
}
