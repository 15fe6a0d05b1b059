//! The desired state an operator writes: its serde model and validation.
//!
//! The agent reads it from YAML (`splitter_user::config_file`), then
//! `Config::validate` either accepts a config that every later stage can
//! trust, or returns a `ConfigError` that names the field, quotes the value
//! and says what to change. Nothing is applied before validation passes.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::PathBuf,
};

use serde::{Deserialize, Serialize};
use splitter_common::service::{MAX_ENDPOINTS, MAX_SERVICES, MAX_SERVICES_PER_ENDPOINT, MAX_VERSIONS};
use thiserror::Error;

pub mod health;
pub mod l7;

/// Durations in the config as people write them (`10s`, `1m30s`, `250ms`),
/// parsed by humantime: no overflow, a clear error.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        // Refused inside the value's own deserialization, so that the error's
        // path names the key (`l7.idle_timeout`), not only its section.
        struct Text;
        impl serde::de::Visitor<'_> for Text {
            type Value = Duration;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a duration such as 10s, 1m30s or 250ms")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Duration, E> {
                humantime::parse_duration(text)
                    .map_err(|e| E::custom(format!("{text:?} is not a duration ({e}): write e.g. 10s, 1m30s or 250ms")))
            }
        }
        d.deserialize_str(Text)
    }
}

/// Default control socket (`control.socket`).
pub const DEFAULT_SOCKET: &str = "/run/splitter/splitter.sock";
/// Default directory for persisted runtime changes (`state_dir`).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/splitter";
/// Default bpffs directory for pinned programs, links and maps (`pin_path`).
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/splitter";
/// Version name → weight (relative; missing versions weigh 0).
pub type Weights = BTreeMap<String, u32>;

/// Linux interface names are at most 15 bytes (IFNAMSIZ - 1).
const IFNAME_MAX: usize = 15;

/// A config that does not validate: what is wrong (naming the field and
/// quoting the value) and what to change.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(msg.into())
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub interfaces: Interfaces,
    #[serde(default)]
    pub control: Control,
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    #[serde(default = "default_pin_path")]
    pub pin_path: PathBuf,
    /// Entries in the kernel flow table (LRU); a flow evicted early is placed
    /// again by the current tables when its next packet comes.
    #[serde(default = "default_flow_table_size")]
    pub flow_table_size: u32,
    /// When the agent removes idle and closed flows from the flow table.
    #[serde(default)]
    pub flow_aging: FlowAging,
    /// Prometheus metrics (GET /metrics) on this address; none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Metrics>,
    /// How the l7 listen addresses become local (`local_addrs.rs`).
    #[serde(default)]
    pub local_addresses: LocalAddresses,
    /// The VIPs this node announces (for a BGP daemon to export).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announce: Option<Announce>,
    /// The proxy's agent-wide settings.
    #[serde(default)]
    pub l7: l7::Settings,
    /// This node's name among the nodes sharing a `store` (the host name
    /// when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Where the desired state lives when several nodes share it; absent, the
    /// file and `state_dir` are the whole truth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<Store>,
    /// Release analysis from outside: Prometheus queries rollouts are judged on.
    #[serde(default, skip_serializing_if = "crate::analysis::Analysis::is_empty")]
    pub analysis: crate::analysis::Analysis,
    #[serde(default)]
    pub services: BTreeMap<String, Service>,
}

/// `store:` — the shared desired state.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Store {
    pub etcd: Etcd,
}

/// `store.etcd:` — an etcd v3 cluster holding the desired state under `prefix`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Etcd {
    /// Client URLs, e.g. `http://10.0.0.1:2379` (`https://` needs `tls.ca`).
    pub endpoints: Vec<String>,
    /// Key prefix of this deployment (`/splitter`).
    #[serde(default = "default_etcd_prefix")]
    pub prefix: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<EtcdTls>,
    /// etcd user; its password comes from `password_file` or the
    /// `SPLITTER_ETCD_PASSWORD` environment variable, never from this file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
}

/// `store.etcd.tls:` — PEM files: the CA that signed etcd's certificate, and
/// this client's certificate and key (both or neither).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdTls {
    pub ca: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
}

/// Default `store.etcd.prefix`.
pub const DEFAULT_ETCD_PREFIX: &str = "/splitter";

fn default_etcd_prefix() -> String {
    DEFAULT_ETCD_PREFIX.into()
}

impl Etcd {
    /// What `validate` checks of `store.etcd` (also used for `--etcd`).
    pub fn check(&self) -> Result<(), String> {
        if self.endpoints.is_empty() {
            return Err(
                "store.etcd.endpoints is empty: name at least one etcd client URL, e.g. http://10.0.0.1:2379".into()
            );
        }
        for e in &self.endpoints {
            let https = e.starts_with("https://");
            if !(https || e.starts_with("http://")) || e.split("://").nth(1).is_none_or(str::is_empty) {
                return Err(format!(
                    "store.etcd.endpoints: {e:?} is not an etcd client URL (http://HOST:PORT or https://HOST:PORT)"
                ));
            }
            if https && self.tls.is_none() {
                return Err(format!("store.etcd.endpoints: {e:?} is https: give store.etcd.tls.ca (the CA that signed etcd's certificate)"));
            }
        }
        let p = &self.prefix;
        if !p.starts_with('/') || p.len() < 2 || p.ends_with('/') || p.chars().any(char::is_whitespace) {
            return Err(format!("store.etcd.prefix {p:?}: use a key prefix like /splitter (leading slash, no trailing slash, no spaces)"));
        }
        if let Some(t) = &self.tls {
            if t.cert.is_some() != t.key.is_some() {
                return Err(
                    "store.etcd.tls: give both cert and key (a client certificate and its key), or neither".into()
                );
            }
        }
        if self.password_file.is_some() && self.username.is_none() {
            return Err("store.etcd.password_file without store.etcd.username: name the etcd user too".into());
        }
        Ok(())
    }
}

impl Config {
    /// A config of `services` alone: no interfaces, every other key its
    /// default. What runtime changes are checked against when the services
    /// come from a shared store rather than a node's file.
    pub fn of_services(services: BTreeMap<String, Service>) -> Config {
        Config {
            interfaces: Interfaces { clients: Vec::new(), backends: Vec::new() },
            control: Control::default(),
            state_dir: default_state_dir(),
            pin_path: default_pin_path(),
            flow_table_size: default_flow_table_size(),
            flow_aging: FlowAging::default(),
            analysis: Default::default(),
            metrics: None,
            local_addresses: LocalAddresses::default(),
            announce: None,
            l7: l7::Settings::default(),
            node: None,
            store: None,
            services,
        }
    }

    /// This node's name: `node`, else the host name.
    pub fn node_name(&self) -> String {
        self.node.clone().unwrap_or_else(Config::default_node_name)
    }

    /// The host name (what `node` defaults to).
    pub fn default_node_name() -> String {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "splitter".into())
    }
}

/// `metrics:` — where the agent serves Prometheus metrics.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// e.g. `127.0.0.1:9190` or `[::]:9190`.
    pub listen: SocketAddr,
}

/// `local_addresses:` — the l7 services' listen addresses must be local for
/// connections to reach the proxy. With `manage` the agent adds each one that
/// no interface of its namespace has to `interface`, tagged as its own, and
/// removes it when no service needs it (and on `down`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalAddresses {
    /// `false`: the agent adds no address; `check`, `run` and `status` name
    /// each l7 address that is not local.
    pub manage: bool,
    pub interface: String,
}

/// `announce:` — the VIPs this node should receive traffic for, kept as /32
/// and /128 addresses on a dummy interface the agent owns, where a BGP
/// daemon (BIRD, FRR) on the node picks them up and announces them. The
/// agent withdraws them on `splitter node drain`, before `down` removes the
/// data path, and for a service with no healthy endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Announce {
    /// The dummy interface (created when missing), e.g. `splitter0`.
    pub interface: String,
    /// How long `down` waits between withdrawing the VIPs and removing the
    /// data path, while the routers move the flows to other nodes.
    #[serde(default = "default_announce_settle", with = "duration")]
    pub settle: std::time::Duration,
}

fn default_announce_settle() -> std::time::Duration {
    std::time::Duration::from_secs(2)
}

/// The longest `announce.settle`.
pub const MAX_ANNOUNCE_SETTLE: std::time::Duration = std::time::Duration::from_secs(300);

/// Default `local_addresses.interface`.
pub const DEFAULT_LOCAL_INTERFACE: &str = "lo";

impl Default for LocalAddresses {
    fn default() -> Self {
        LocalAddresses { manage: true, interface: DEFAULT_LOCAL_INTERFACE.into() }
    }
}

/// Idle and closing timeouts of kernel flow entries, enforced by the agent's
/// sweep. The LRU also evicts the least recently used entries when full.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlowAging {
    /// A TCP flow with no packet from the client for this long is removed.
    pub tcp_idle_secs: u64,
    /// A UDP flow with no packet from the client for this long is removed.
    pub udp_idle_secs: u64,
    /// A TCP flow whose client sent a FIN is removed after this much quiet.
    pub closing_secs: u64,
    /// How often the agent sweeps the flow table.
    pub sweep_secs: u64,
}

impl Default for FlowAging {
    fn default() -> Self {
        FlowAging { tcp_idle_secs: 900, udp_idle_secs: 120, closing_secs: 10, sweep_secs: 5 }
    }
}

/// Bounds for `flow_table_size`.
pub const FLOW_TABLE_MIN: u32 = 1024;
pub const FLOW_TABLE_MAX: u32 = 1 << 24;

fn default_flow_table_size() -> u32 {
    splitter_common::service::DEFAULT_FLOW_TABLE_SIZE
}

/// What keeps a client on one version. YAML: `client-ip`, `{ cookie: NAME }`
/// or `{ header: NAME }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(into = "AffinityRepr")]
pub enum Affinity {
    /// Hash the client address only: one client, one version (L4 and L7).
    ClientIp,
    /// L7: hash this cookie's value.
    Cookie(String),
    /// L7: hash this header's value.
    Header(String),
}

#[derive(Serialize)]
#[serde(untagged)]
enum AffinityRepr {
    Name(String),
    Cookie { cookie: String },
    Header { header: String },
}

/// `affinity: { cookie: NAME }` or `{ header: NAME }` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AffinityRule {
    cookie: Option<String>,
    header: Option<String>,
}

impl<'de> Deserialize<'de> for Affinity {
    /// Read in place (an untagged enum would buffer it), so an error names
    /// `affinity` and its line.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de;
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = Affinity;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("client-ip, { cookie: NAME } or { header: NAME }")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Affinity, E> {
                match s {
                    "client-ip" => Ok(Affinity::ClientIp),
                    n => Err(E::custom(format!(
                        "unknown variant affinity {n:?}: use client-ip, {{ cookie: NAME }} or {{ header: NAME }}"
                    ))),
                }
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Affinity, A::Error> {
                match AffinityRule::deserialize(de::value::MapAccessDeserializer::new(map))? {
                    AffinityRule { cookie: Some(cookie), header: None } => Ok(Affinity::Cookie(cookie)),
                    AffinityRule { cookie: None, header: Some(header) } => Ok(Affinity::Header(header)),
                    _ => Err(de::Error::custom("give one of { cookie: NAME } or { header: NAME }")),
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl From<Affinity> for AffinityRepr {
    fn from(a: Affinity) -> Self {
        match a {
            Affinity::ClientIp => AffinityRepr::Name("client-ip".into()),
            Affinity::Cookie(cookie) => AffinityRepr::Cookie { cookie },
            Affinity::Header(header) => AffinityRepr::Header { header },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Interfaces {
    /// Where clients arrive; the ingress XDP program attaches here.
    pub clients: Vec<String>,
    /// Where backends live (may repeat a client interface).
    #[serde(default)]
    pub backends: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Control {
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// The HTTP control API: off unless set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<ControlHttp>,
}

impl Default for Control {
    fn default() -> Self {
        Control { socket: default_socket(), http: None }
    }
}

/// `control.http`: the control socket's operations as REST/JSON on a TCP
/// listener, for automation off the host (Argo Rollouts, Flagger, CI).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ControlHttp {
    pub listen: SocketAddr,
    /// A file holding the bearer token every request must carry (its
    /// first line; at least [`MIN_TOKEN_LEN`] characters).
    pub token_file: PathBuf,
    /// HTTPS instead of HTTP, with these certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<l7::Tls>,
}

/// The shortest bearer token `control.http` accepts.
pub const MIN_TOKEN_LEN: usize = 16;

fn default_socket() -> PathBuf {
    DEFAULT_SOCKET.into()
}
fn default_state_dir() -> PathBuf {
    DEFAULT_STATE_DIR.into()
}
fn default_pin_path() -> PathBuf {
    DEFAULT_PIN_PATH.into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl std::fmt::Display for Protocol {
    /// As the config writes it: `tcp`, `udp`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

impl std::fmt::Display for Mode {
    /// As the config writes it: `l4`, `l7`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::L4 => "l4",
            Mode::L7 => "l7",
        })
    }
}

impl Protocol {
    /// IP protocol number.
    pub const fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Split in the kernel, per connection.
    #[default]
    L4,
    /// Proxy through the agent's HTTP path.
    L7,
}

/// One service: a VIP:port/protocol split over named versions.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub listen: SocketAddr,
    pub protocol: Protocol,
    #[serde(default)]
    pub mode: Mode,
    /// Version name → endpoints. Ordered by name, so every node lays out the
    /// selection tables identically.
    pub versions: BTreeMap<String, Vec<SocketAddr>>,
    /// Relative weights; versions missing here weigh 0.
    #[serde(default)]
    pub weights: Weights,
    /// Default: each connection (L4) or request (L7) is placed on its own.
    #[serde(default)]
    pub affinity: Option<Affinity>,
    /// L7: routing rules, first match wins; unmatched requests use the weights.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<l7::Route>,
    /// Copies of a sample of the traffic: whole flows out of an interface
    /// (l4) or requests to a shadow version (l7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Mirror>,
    /// L7: timeouts towards the endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<l7::ProxyOptions>,
    /// L7: the protocol towards the endpoints (default HTTP/1.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<l7::Upstream>,
    /// Endpoint health checks; without them every endpoint counts as up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<health::Health>,
    /// L7: terminate TLS on the listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<l7::Tls>,
    /// L7: the hosts this service answers on its address (`name` or
    /// `*.name`, any depth); several l7 services may then share `listen`.
    /// Without: every host not claimed by another service on the address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// A rollout declared here: started when this appears or changes,
    /// aborted when it goes (GitOps); the CLI's rollouts work beside it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<crate::rollout::Declared>,
}

/// `mirror:` of a service. Mode l4 takes `{ interface, percent }` (whole
/// flows copied out of an interface, in the kernel); mode l7 takes
/// `{ version, percent, ... }` (requests copied to a version, compared).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Mirror {
    L4(L4Mirror),
    L7(l7::Mirror),
}

impl<'de> Deserialize<'de> for Mirror {
    /// The shape picks the kind: a mapping with `interface` is l4 mirroring,
    /// anything else must be the l7 form. Every field is read straight from
    /// the YAML, so an error names it and quotes the value written.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de;
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = Mirror;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("{ interface, percent } (l4) or { version, percent, ... } (l7)")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Mirror, A::Error> {
                MirrorRepr::deserialize(de::value::MapAccessDeserializer::new(map))?.into_mirror()
            }
        }
        d.deserialize_map(V)
    }
}

/// `mirror:` as written: the fields of both forms (`L4Mirror`, `l7::Mirror`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MirrorRepr {
    interface: Option<String>,
    version: Option<String>,
    percent: f64,
    compare: Option<l7::Compare>,
    methods: Option<Vec<String>>,
    max_body_bytes: Option<u64>,
    timeout_ms: Option<u64>,
    queue: Option<usize>,
}

impl MirrorRepr {
    fn into_mirror<E: serde::de::Error>(self) -> Result<Mirror, E> {
        let r = self;
        if let Some(interface) = r.interface {
            let l7_field = [
                ("version", r.version.is_some()),
                ("compare", r.compare.is_some()),
                ("methods", r.methods.is_some()),
                ("max_body_bytes", r.max_body_bytes.is_some()),
                ("timeout_ms", r.timeout_ms.is_some()),
                ("queue", r.queue.is_some()),
            ]
            .into_iter()
            .find_map(|(name, set)| set.then_some(name));
            if let Some(name) = l7_field {
                return Err(E::unknown_field(name, &["interface", "percent"]));
            }
            return Ok(Mirror::L4(L4Mirror { interface, percent: r.percent }));
        }
        let version = r.version.ok_or_else(|| E::missing_field("version"))?;
        let mut m = l7::Mirror::new(version, r.percent);
        m.compare = r.compare.unwrap_or(m.compare);
        m.methods = r.methods.unwrap_or(m.methods);
        m.max_body_bytes = r.max_body_bytes.unwrap_or(m.max_body_bytes);
        m.timeout_ms = r.timeout_ms.unwrap_or(m.timeout_ms);
        m.queue = r.queue.unwrap_or(m.queue);
        Ok(Mirror::L7(m))
    }
}

impl Mirror {
    pub fn l4(&self) -> Option<&L4Mirror> {
        match self {
            Mirror::L4(m) => Some(m),
            Mirror::L7(_) => None,
        }
    }

    pub fn l7(&self) -> Option<&l7::Mirror> {
        match self {
            Mirror::L7(m) => Some(m),
            Mirror::L4(_) => None,
        }
    }
}

/// L4 mirroring: a sample of the service's flows, chosen per flow when it
/// starts, copied whole (both directions) out of `interface`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct L4Mirror {
    /// Where the copies leave. Not a clients/backends interface.
    pub interface: String,
    /// Share of new flows copied, in percent (0.01 steps).
    pub percent: f64,
}

impl L4Mirror {
    /// The share in basis points (what the kernel table holds).
    pub fn bps(&self) -> u16 {
        (self.percent * 100.0).round() as u16
    }

    /// Checks the interface name and the share.
    pub fn check(&self) -> Result<(), String> {
        check_ifname(&self.interface).map_err(|why| format!("mirror.interface: {why}"))?;
        if !(self.percent > 0.0 && self.percent <= 100.0) || self.bps() == 0 {
            return Err(format!(
                "mirror.percent {} is out of range: use 0.01 to 100 (percent of new flows copied)",
                self.percent
            ));
        }
        Ok(())
    }
}

impl Service {
    /// The l4 mirror, if this service has one.
    pub fn l4_mirror(&self) -> Option<&L4Mirror> {
        self.mirror.as_ref().and_then(Mirror::l4)
    }

    /// The l7 mirror, if this service has one.
    pub fn l7_mirror(&self) -> Option<&l7::Mirror> {
        self.mirror.as_ref().and_then(Mirror::l7)
    }

    /// Weight of every version, in version order (missing ones are 0).
    pub fn version_weights(&self) -> Vec<(&str, u32)> {
        self.versions.keys().map(|v| (v.as_str(), self.weights.get(v).copied().unwrap_or(0))).collect()
    }
}

impl Config {
    /// Checks everything serde cannot: names, families, references, duplicates.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.interfaces.clients.is_empty() {
            return Err(invalid("interfaces.clients is empty: name at least one interface where clients arrive"));
        }
        for (field, list) in [("clients", &self.interfaces.clients), ("backends", &self.interfaces.backends)] {
            for name in list {
                check_ifname(name).map_err(|why| invalid(format!("interfaces.{field}: {why}")))?;
            }
        }
        if !(FLOW_TABLE_MIN..=FLOW_TABLE_MAX).contains(&self.flow_table_size) {
            return Err(invalid(format!(
                "flow_table_size {} is out of range: use {FLOW_TABLE_MIN} to {FLOW_TABLE_MAX} entries",
                self.flow_table_size
            )));
        }
        let a = &self.flow_aging;
        for (name, v) in [
            ("tcp_idle_secs", a.tcp_idle_secs),
            ("udp_idle_secs", a.udp_idle_secs),
            ("closing_secs", a.closing_secs),
            ("sweep_secs", a.sweep_secs),
        ] {
            if !(1..=7 * 24 * 3600).contains(&v) {
                return Err(invalid(format!("flow_aging.{name} is {v}: use 1 to 604800 seconds")));
            }
        }
        if let Some(store) = &self.store {
            store.etcd.check().map_err(invalid)?;
        }
        self.analysis.check().map_err(|why| invalid(format!("analysis.{why}")))?;
        if let Some(http) = &self.control.http {
            if !http.token_file.is_absolute() {
                return Err(invalid(format!(
                    "control.http.token_file: {:?} is not an absolute path: write it from /",
                    http.token_file
                )));
            }
            if let Some(tls) = &http.tls {
                tls.check().map_err(|why| invalid(format!("control.http.tls.{why}")))?;
            }
            if self.metrics.as_ref().is_some_and(|m| m.listen == http.listen) {
                return Err(invalid(format!(
                    "control.http.listen: {} is also metrics.listen: give each its own address",
                    http.listen
                )));
            }
        }
        self.l7.check().map_err(|why| invalid(format!("l7.{why}")))?;
        let local = &self.local_addresses.interface;
        check_ifname(local).map_err(|why| invalid(format!("local_addresses.interface: {why}")))?;
        if self
            .interfaces
            .clients
            .iter()
            .chain(&self.interfaces.backends)
            .chain(&self.mirror_interfaces())
            .any(|i| i == local)
        {
            return Err(invalid(format!(
                "local_addresses.interface {local:?} is a clients/backends/mirror interface; use {DEFAULT_LOCAL_INTERFACE} (the default) or a dummy interface"
            )));
        }
        if let Some(announce) = &self.announce {
            let name = &announce.interface;
            check_ifname(name).map_err(|why| invalid(format!("announce.interface: {why}")))?;
            if name == "lo"
                || name == local
                || self
                    .interfaces
                    .clients
                    .iter()
                    .chain(&self.interfaces.backends)
                    .chain(&self.mirror_interfaces())
                    .any(|i| i == name)
            {
                return Err(invalid(format!(
                    "announce.interface {name:?} is lo, local_addresses.interface or a served interface: name a dummy interface of its own, e.g. splitter0 (the agent creates it)"
                )));
            }
            if announce.settle > MAX_ANNOUNCE_SETTLE {
                return Err(invalid(format!(
                    "announce.settle {:?} is over {MAX_ANNOUNCE_SETTLE:?}: `down` waits this long after withdrawing",
                    announce.settle
                )));
            }
        }
        if let Some(node) = &self.node {
            check_name("node", node).map_err(invalid)?;
        }
        let l4 = self.services.values().filter(|s| s.mode == Mode::L4).count();
        if l4 > MAX_SERVICES as usize {
            return Err(invalid(format!(
                "{l4} l4 services; the kernel's tables hold at most {MAX_SERVICES}: move some to another agent (or pin_path)"
            )));
        }
        let mut listeners: BTreeMap<(SocketAddr, Protocol), Vec<(&String, &Service)>> = BTreeMap::new();
        for (name, svc) in &self.services {
            check_service(name, svc)?;
            if let Some(m) = svc.l4_mirror() {
                self.check_mirror_interface(&m.interface).map_err(|why| invalid(format!("services.{name}: {why}")))?;
            }
            let sharing = listeners.entry((svc.listen, svc.protocol)).or_default();
            if let Some((other, o)) = sharing.first() {
                if svc.mode == Mode::L4 || o.mode == Mode::L4 {
                    return Err(invalid(format!(
                        "services.{name}: listen {} ({:?}) is already used by service {other:?} (only l7 services may share an address, told apart by hosts)",
                        svc.listen, svc.protocol
                    )));
                }
            }
            sharing.push((name, svc));
        }
        for (name, svc) in &self.services {
            if let Some(r) = &svc.rollout {
                self.check_declared_rollout(svc, r).map_err(|why| invalid(format!("services.{name}.rollout.{why}")))?;
            }
        }
        for ((listen, _), sharing) in &listeners {
            l7::check_shared_address(*listen, sharing).map_err(invalid)?;
        }
        self.check_shared_endpoints()
    }

    /// `services.NAME.rollout`: a plan `splitter rollout` would accept, to
    /// a version the service has, naming metrics and hooks this config
    /// has. The error starts with the key under `rollout.`.
    fn check_declared_rollout(&self, svc: &Service, r: &crate::rollout::Declared) -> Result<(), String> {
        if !svc.versions.contains_key(&r.to) {
            let known: Vec<&str> = svc.versions.keys().map(String::as_str).collect();
            return Err(format!("to: {:?} is not a version of the service (versions: {})", r.to, known.join(", ")));
        }
        r.plan().check().map_err(|e| format!("steps, interval or gates: {e}"))?;
        if let Some(name) = r.analysis.iter().find(|n| !self.analysis.metrics.contains_key(*n)) {
            let known: Vec<&str> = self.analysis.metrics.keys().map(String::as_str).collect();
            return Err(format!("analysis: {name:?} is not in analysis.metrics (metrics: {})", known.join(", ")));
        }
        if let Some(name) = r.webhooks.iter().find(|n| !self.analysis.webhooks.contains_key(*n)) {
            let known: Vec<&str> = self.analysis.webhooks.keys().map(String::as_str).collect();
            return Err(format!("webhooks: {name:?} is not in analysis.webhooks (webhooks: {})", known.join(", ")));
        }
        Ok(())
    }

    /// The kernel matches an endpoint's replies to each service it serves
    /// (one lookup per service): at most `MAX_SERVICES_PER_ENDPOINT` l4
    /// services can share one endpoint.
    fn check_shared_endpoints(&self) -> Result<(), ConfigError> {
        let mut served: BTreeMap<(SocketAddr, Protocol), Vec<&str>> = BTreeMap::new();
        for (name, svc) in self.services.iter().filter(|(_, s)| s.mode == Mode::L4) {
            let endpoints: BTreeSet<&SocketAddr> = svc.versions.values().flatten().collect();
            for ep in endpoints {
                served.entry((*ep, svc.protocol)).or_default().push(name);
            }
        }
        match served.into_iter().find(|(_, names)| names.len() > MAX_SERVICES_PER_ENDPOINT) {
            Some(((ep, proto), names)) => Err(invalid(format!(
                "endpoint {ep} ({proto:?}) is an endpoint of {} l4 services ({}); at most {MAX_SERVICES_PER_ENDPOINT} can share one endpoint: give some of them another port",
                names.len(),
                names.join(", ")
            ))),
            None => Ok(()),
        }
    }
}

impl Config {
    /// A mirror interface must not carry service traffic: copies would mix
    /// with it, and the guard there drops answers from service addresses.
    pub fn check_mirror_interface(&self, ifname: &str) -> Result<(), String> {
        if self.interfaces.clients.iter().chain(&self.interfaces.backends).any(|i| i == ifname) {
            return Err(format!(
                "mirror.interface {ifname:?} is a clients/backends interface; copies need an interface of their own"
            ));
        }
        Ok(())
    }

    /// Interfaces the l4 services mirror to, each once.
    pub fn mirror_interfaces(&self) -> BTreeSet<String> {
        self.services.values().filter_map(|s| s.l4_mirror()).map(|m| m.interface.clone()).collect()
    }
}

/// Why `ip` cannot be a service's or an endpoint's address (`None`: it can).
fn not_unicast(ip: std::net::IpAddr) -> Option<&'static str> {
    match ip {
        _ if ip.is_unspecified() => Some("the unspecified address is no single host's"),
        _ if ip.is_multicast() => Some("a multicast address is no single host's"),
        std::net::IpAddr::V4(a) if a.is_broadcast() => Some("the broadcast address is no single host's"),
        _ => None,
    }
}

/// A value as written, for an error message: quoted, and cut after
/// [`QUOTE_MAX`] characters with its length said, so a huge value cannot
/// make a huge message.
pub struct Quoted<'a>(pub &'a str);

/// Characters of a value an error message quotes.
pub const QUOTE_MAX: usize = 64;

impl std::fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.char_indices().nth(QUOTE_MAX) {
            None => write!(f, "{:?}", self.0),
            Some((cut, _)) => write!(f, "{:?}… ({} bytes)", &self.0[..cut], self.0.len()),
        }
    }
}

fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > IFNAME_MAX {
        return Err(format!("interface name {} must be 1 to {IFNAME_MAX} bytes long", Quoted(name)));
    }
    if name.bytes().any(|b| b == b'/' || b.is_ascii_whitespace() || b == b':') {
        return Err(format!("interface name {} contains '/', ':' or whitespace", Quoted(name)));
    }
    Ok(())
}

fn check_name(what: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!("{what} name {} must be 1-63 characters of [A-Za-z0-9._-]", Quoted(name)))
    }
}

fn check_service(name: &str, svc: &Service) -> Result<(), ConfigError> {
    // The name first: every later message starts with it.
    check_name("service", name).map_err(|why| invalid(format!("services: {why}")))?;
    let ctx = |msg: String| invalid(format!("services.{name}: {msg}"));
    if svc.listen.port() == 0 {
        return Err(ctx(format!("listen {} needs a port other than 0", svc.listen)));
    }
    if let Some(why) = not_unicast(svc.listen.ip()) {
        return Err(ctx(format!("listen {}: {why}; a service needs an address of its own", svc.listen)));
    }
    if svc.mode == Mode::L7 && svc.protocol == Protocol::Udp {
        return Err(ctx("protocol udp: mode l7 proxies HTTP and needs protocol tcp".into()));
    }
    if svc.mode == Mode::L4 {
        let written = match &svc.affinity {
            Some(Affinity::Cookie(name)) => Some(format!("{{ cookie: {} }}", Quoted(name))),
            Some(Affinity::Header(name)) => Some(format!("{{ header: {} }}", Quoted(name))),
            _ => None,
        };
        if let Some(written) = written {
            return Err(ctx(format!(
                "affinity {written}: cookie and header affinity need mode l7; mode l4 supports affinity: client-ip"
            )));
        }
    }
    if svc.versions.len() > MAX_VERSIONS {
        return Err(ctx(format!("{} versions; at most {MAX_VERSIONS} are supported", svc.versions.len())));
    }
    let endpoints: usize = svc.versions.values().map(Vec::len).sum();
    if endpoints > MAX_ENDPOINTS {
        return Err(ctx(format!("{endpoints} endpoints over all versions; at most {MAX_ENDPOINTS} are supported")));
    }
    if svc.versions.is_empty() {
        return Err(ctx("versions is empty: name at least one version with its endpoints".into()));
    }
    for (version, endpoints) in &svc.versions {
        check_name("version", version).map_err(ctx)?;
        if endpoints.is_empty() {
            return Err(ctx(format!("version {version:?} has no endpoints")));
        }
        let mut seen = BTreeSet::new();
        for ep in endpoints {
            if ep.is_ipv4() != svc.listen.is_ipv4() {
                return Err(ctx(format!(
                    "version {version:?}: endpoint {ep} is not in the address family of listen {}",
                    svc.listen
                )));
            }
            if ep.port() == 0 {
                return Err(ctx(format!("version {version:?}: endpoint {ep} needs a port other than 0")));
            }
            if !seen.insert(ep) {
                return Err(ctx(format!("version {version:?}: endpoint {ep} is listed twice")));
            }
            if let Some(why) = not_unicast(ep.ip()) {
                return Err(ctx(format!("version {version:?}: endpoint {ep}: {why}")));
            }
            if *ep == svc.listen {
                return Err(ctx(format!(
                    "version {version:?}: endpoint {ep} is the service's own listen address (requests would loop back into it)"
                )));
            }
        }
    }
    for version in svc.weights.keys() {
        if !svc.versions.contains_key(version) {
            let known: Vec<_> = svc.versions.keys().map(String::as_str).collect();
            return Err(ctx(format!(
                "weights names version {}, which is not one of the versions {known:?}",
                Quoted(version)
            )));
        }
    }
    if svc.weights.values().all(|w| *w == 0) {
        return Err(ctx(format!(
            "every version weighs 0 (weights {:?}): give at least one version a positive weight",
            svc.weights
        )));
    }
    if svc.mode == Mode::L4 {
        for (field, set) in [
            ("routes", !svc.routes.is_empty()),
            ("mirror: { version, ... }", svc.l7_mirror().is_some()),
            ("proxy", svc.proxy.is_some()),
            ("upstream", svc.upstream.is_some()),
            ("tls", svc.tls.is_some()),
            ("hosts", !svc.hosts.is_empty()),
        ] {
            if set {
                return Err(ctx(format!(
                    "{field}: these need mode l7 (HTTP); this service is mode l4 (which mirrors whole flows with mirror: {{ interface, percent }})"
                )));
            }
        }
    }
    match &svc.mirror {
        Some(Mirror::L4(_)) if svc.mode == Mode::L7 => {
            return Err(ctx(
                "mirror: { interface, percent } copies flows in the kernel (mode l4); an l7 service mirrors requests with mirror: { version, percent }"
                    .into(),
            ))
        }
        Some(Mirror::L4(m)) => m.check().map_err(ctx)?,
        _ => {}
    }
    if let Some(proxy) = &svc.proxy {
        proxy.check().map_err(ctx)?;
    }
    for (i, host) in svc.hosts.iter().enumerate() {
        l7::check_host_pattern(host).map_err(|why| ctx(format!("hosts[{i}] {}: {why}", Quoted(host))))?;
    }
    if let Some(tls) = &svc.tls {
        tls.check().map_err(|why| invalid(format!("services.{name}.tls.{why}")))?;
    }
    if let Some(upstream) = &svc.upstream {
        upstream.check().map_err(|why| invalid(format!("services.{name}.upstream.{why}")))?;
    }
    if let Some(h) = &svc.health {
        h.check().map_err(|why| ctx(format!("health.{why}")))?;
        if svc.protocol == Protocol::Udp && h.port.is_none() {
            return Err(ctx(format!(
                "health.check {}: a udp service's endpoints cannot be checked on their own (udp) port; set health.port to a TCP port they answer on",
                if h.check == health::CheckKind::Http { "http" } else { "tcp" }
            )));
        }
    }
    l7::check(&svc.versions, &svc.routes, svc.l7_mirror()).map_err(ctx)?;
    Ok(())
}

/// Tests write configs as users do: YAML, validated.
#[cfg(test)]
pub(crate) fn from_yaml(text: &str) -> Result<Config, String> {
    let config: Config = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}
