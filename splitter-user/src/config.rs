//! The YAML desired state: its serde model and validation.
//!
//! Only this module knows YAML. `Config::from_yaml` either returns a config
//! that every later stage can trust, or a `ConfigError` that names the field
//! and says what to change. Nothing is applied before validation passes.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use splitter_common::service::{MAX_ENDPOINTS, MAX_SERVICES_PER_ENDPOINT, MAX_VERSIONS};
use thiserror::Error;

pub mod l7;

/// Default control socket (`control.socket`).
pub const DEFAULT_SOCKET: &str = "/run/splitter/splitter.sock";
/// Default directory for persisted runtime changes (`state_dir`).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/splitter";
/// Default bpffs directory for pinned programs, links and maps (`pin_path`).
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/splitter";
/// Linux interface names are at most 15 bytes (IFNAMSIZ - 1).
const IFNAME_MAX: usize = 15;

/// Each variant's message is whole: none carries a `source`, so printing the
/// error chain (`{e:#}`) does not repeat it.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {error}")]
    Read { path: PathBuf, error: std::io::Error },
    /// The text is not YAML, or does not fit the model: serde's message, with
    /// the value written quoted (see `describe_yaml_error`).
    #[error("config is not valid YAML for splitter: {0}")]
    Syntax(String),
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
    /// This node's name among the nodes sharing a `store` (the host name
    /// when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Where the desired state lives when several nodes share it; absent, the
    /// file and `state_dir` are the whole truth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<Store>,
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
}

impl Default for Control {
    fn default() -> Self {
        Control { socket: default_socket() }
    }
}

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
    pub weights: BTreeMap<String, u32>,
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
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read { path: path.to_owned(), error })?;
        Config::from_yaml(&text)
    }

    /// Parses and validates YAML text.
    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        let config: Config =
            serde_yaml_ng::from_str(text).map_err(|e| ConfigError::Syntax(describe_yaml_error(text, &e)))?;
        config.validate()?;
        Ok(config)
    }

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
        if let Some(node) = &self.node {
            check_name("node", node).map_err(invalid)?;
        }
        let mut listeners = BTreeMap::new();
        for (name, svc) in &self.services {
            check_service(name, svc)?;
            if let Some(m) = svc.l4_mirror() {
                self.check_mirror_interface(&m.interface).map_err(|why| invalid(format!("services.{name}: {why}")))?;
            }
            if let Some(other) = listeners.insert((svc.listen, svc.protocol), name) {
                return Err(invalid(format!(
                    "services.{name}: listen {} ({:?}) is already used by service {other:?}",
                    svc.listen, svc.protocol
                )));
            }
        }
        self.check_shared_endpoints()
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

/// serde_yaml_ng's message for `err` on `text`, with the location as
/// `(line L, column C)` and, for a value that did not parse, the value as
/// written: `services.web.versions.v1[0]: invalid socket address syntax:
/// "10.78.1.300:7001" (line 7, column 12)`. Not quoted: unknown, missing or
/// duplicate fields, mappings and sequences, and text that is not YAML at all
/// (libyaml's message is kept whole).
fn describe_yaml_error(text: &str, err: &serde_yaml_ng::Error) -> String {
    let msg = err.to_string();
    let Some(loc) = err.location() else { return msg };
    if serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text).is_err() {
        return msg;
    }
    let body = msg.strip_suffix(&format!(" at line {} column {}", loc.line(), loc.column())).unwrap_or(&msg);
    let at = format!("(line {}, column {})", loc.line(), loc.column());
    let not_a_value = ["unknown field `", "missing field `", "duplicate field `", "duplicate entry"]
        .iter()
        .any(|p| body.starts_with(p) || body.contains(&format!(": {p}")));
    match written_scalar(text, loc.index()).filter(|_| !not_a_value) {
        // serde already quoted it (`invalid type: string "abc", ...`).
        Some(v) if body.contains(&format!("{v:?}")) => format!("{body} {at}"),
        Some(v) => format!("{body}: {v:?} {at}"),
        None => format!("{body} {at}"),
    }
}

/// The scalar written at byte `index` of `text`, unquoted; `None` when a
/// mapping, a sequence, a mapping key, an anchor, alias, tag or block scalar
/// starts there.
fn written_scalar(text: &str, index: usize) -> Option<String> {
    let rest = text.get(index..)?;
    let line = rest.split('\n').next()?.trim_end_matches('\r');
    let is_key = |after: &str| after.trim_start_matches([' ', '\t']).starts_with(':');
    match *rest.as_bytes().first()? {
        q @ (b'"' | b'\'') => {
            let end = quoted_end(rest.as_bytes(), q)?;
            if is_key(&rest[end..]) {
                return None;
            }
            serde_yaml_ng::from_str::<String>(&rest[..end]).ok()
        }
        b'{' | b'[' | b'&' | b'*' | b'!' | b'|' | b'>' | b'?' => None,
        b'-' if matches!(line.as_bytes().get(1), None | Some(b' ' | b'\t')) => None,
        _ => {
            let flow = in_flow(&text.as_bytes()[..index]);
            let b = line.as_bytes();
            let mut end = b.len();
            for (i, &c) in b.iter().enumerate() {
                let blank_next = matches!(b.get(i + 1), None | Some(b' ' | b'\t'));
                if c == b':' && (blank_next || (flow && matches!(b.get(i + 1), Some(b',' | b'}' | b']')))) {
                    return None; // `key: value`: a mapping
                }
                if (flow && matches!(c, b',' | b']' | b'}')) || (c == b'#' && i > 0 && matches!(b[i - 1], b' ' | b'\t'))
                {
                    end = i;
                    break;
                }
            }
            Some(line[..end].trim_end().to_owned()).filter(|v| !v.is_empty())
        }
    }
}

/// The byte just past the quoted scalar that opens `s` with quote `q`.
fn quoted_end(s: &[u8], q: u8) -> Option<usize> {
    let mut i = 1;
    while i < s.len() {
        match s[i] {
            b'\\' if q == b'"' => i += 1,
            b'\'' if q == b'\'' && s.get(i + 1) == Some(&b'\'') => i += 1,
            c if c == q => return Some(i + 1),
            _ => {}
        }
        i += 1;
    }
    None
}

/// Whether the text `before` leaves an open flow collection (`{`, `[`), so a
/// plain scalar there ends at `,`, `]` or `}`. Skips comments and quoted scalars.
fn in_flow(before: &[u8]) -> bool {
    let mut depth = 0usize;
    let mut i = 0;
    while i < before.len() {
        match before[i] {
            b'#' if i == 0 || before[i - 1].is_ascii_whitespace() => {
                while i < before.len() && before[i] != b'\n' {
                    i += 1;
                }
            }
            q @ (b'"' | b'\'') if opens_quoted(&before[..i]) => {
                i += quoted_end(&before[i..], q).map_or(before.len(), |end| end - 1);
            }
            b'[' | b'{' => depth += 1,
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    depth > 0
}

/// Whether a quote after `before` opens a quoted scalar rather than sitting
/// inside a plain one (`don't`).
fn opens_quoted(before: &[u8]) -> bool {
    let line = &before[before.iter().rposition(|&c| c == b'\n').map_or(0, |n| n + 1)..];
    match line.iter().rposition(|c| !matches!(c, b' ' | b'\t')) {
        None => true,
        Some(p) => {
            matches!(line[p], b'[' | b'{' | b',') || (p + 1 < line.len() && matches!(line[p], b':' | b'-' | b'?'))
        }
    }
}

fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > IFNAME_MAX {
        return Err(format!("interface name {name:?} must be 1 to {IFNAME_MAX} bytes long"));
    }
    if name.bytes().any(|b| b == b'/' || b.is_ascii_whitespace() || b == b':') {
        return Err(format!("interface name {name:?} contains '/', ':' or whitespace"));
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
        Err(format!("{what} name {name:?} must be 1-63 characters of [A-Za-z0-9._-]"))
    }
}

fn check_service(name: &str, svc: &Service) -> Result<(), ConfigError> {
    let ctx = |msg: String| invalid(format!("services.{name}: {msg}"));
    check_name("service", name).map_err(ctx)?;
    if svc.listen.port() == 0 {
        return Err(ctx(format!("listen {} needs a port other than 0", svc.listen)));
    }
    if svc.mode == Mode::L7 && svc.protocol == Protocol::Udp {
        return Err(ctx("protocol udp: mode l7 proxies HTTP and needs protocol tcp".into()));
    }
    if svc.mode == Mode::L4 {
        let written = match &svc.affinity {
            Some(Affinity::Cookie(name)) => Some(format!("{{ cookie: {name:?} }}")),
            Some(Affinity::Header(name)) => Some(format!("{{ header: {name:?} }}")),
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
        }
    }
    for version in svc.weights.keys() {
        if !svc.versions.contains_key(version) {
            let known: Vec<_> = svc.versions.keys().map(String::as_str).collect();
            return Err(ctx(format!("weights names version {version:?}, which is not one of the versions {known:?}")));
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
    l7::check(&svc.versions, &svc.routes, svc.l7_mirror()).map_err(ctx)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The agent issue's example file, verbatim.
    const EXAMPLE: &str = r#"
interfaces:
  clients: [eth0]            # where clients arrive: XDP attaches here
  backends: [eth1, eth2]     # where backends live (may repeat a client interface)
control:
  socket: /run/splitter/splitter.sock
state_dir: /var/lib/splitter          # persisted runtime changes (weights, flips, rollback history)
pin_path: /sys/fs/bpf/splitter        # where programs, links and maps are pinned
services:
  shop:
    listen: 203.0.113.10:80
    protocol: tcp
    mode: l4
    versions:
      blue:  [198.51.100.10:8080, 198.51.100.11:8080]
      green: [198.51.100.20:8080]
    weights: { blue: 100, green: 0 }
  shop6:
    listen: "[2001:db8::10]:80"
    protocol: tcp
    mode: l4
    versions:
      blue:  ["[2001:db8:1::10]:8080"]
      green: ["[2001:db8:2::10]:8080"]
    weights: { blue: 95, green: 5 }
"#;

    fn err(yaml: &str) -> String {
        Config::from_yaml(yaml).expect_err("config should be rejected").to_string()
    }

    #[test]
    fn accepts_the_documented_example() {
        let c = Config::from_yaml(EXAMPLE).expect("example config");
        assert_eq!(c.interfaces.backends, ["eth1", "eth2"]);
        let shop = &c.services["shop"];
        assert_eq!(shop.listen, "203.0.113.10:80".parse().unwrap());
        assert_eq!(shop.versions["blue"].len(), 2);
        assert_eq!(shop.version_weights(), [("blue", 100), ("green", 0)]);
        assert!(c.services["shop6"].listen.is_ipv6());
    }

    #[test]
    fn defaults_fill_missing_sections() {
        let c = Config::from_yaml(
            "interfaces: {clients: [eth0]}\nservices:\n  s: {listen: 10.0.0.1:53, protocol: udp, versions: {a: [10.0.1.1:53], b: [10.0.1.2:53]}, weights: {a: 1}}\n",
        )
        .unwrap();
        assert_eq!(c.control.socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(c.pin_path, PathBuf::from(DEFAULT_PIN_PATH));
        assert_eq!(c.services["s"].mode, Mode::L4);
        assert_eq!(c.services["s"].version_weights(), [("a", 1), ("b", 0)], "missing weights are 0");
    }

    #[test]
    fn rejects_bad_input_with_a_pointed_message() {
        let base = |svc: &str| format!("interfaces: {{clients: [eth0]}}\nservices:\n  s: {svc}\n");
        let cases = [
            (
                base("{listen: 10.0.0.1:80, protocol: tcp, versions: {a: [10.0.1.1:80]}, weights: {b: 1}}"),
                "not one of the versions",
            ),
            (
                base("{listen: 10.0.0.1:80, protocol: tcp, versions: {a: ['[2001:db8::1]:80']}, weights: {a: 1}}"),
                "address family",
            ),
            (base("{listen: 10.0.0.1:80, protocol: tcp, versions: {a: []}, weights: {a: 1}}"), "has no endpoints"),
            (base("{listen: 10.0.0.1:80, protocol: tcp, versions: {a: [10.0.1.1:80]}, weights: {a: 0}}"), "weighs 0"),
            (base("{listen: 10.0.0.1:80, protocol: sctp, versions: {a: [10.0.1.1:80]}}"), "unknown variant"),
            (
                base("{listen: 10.0.0.1:80, protocol: udp, mode: l7, versions: {a: [10.0.1.1:80]}, weights: {a: 1}}"),
                "needs protocol tcp",
            ),
            (base("{listen: 10.0.0.1, protocol: tcp, versions: {a: [10.0.1.1:80]}}"), "socket address"),
            (
                base(
                    "{listen: 10.0.0.1:80, protocol: tcp, versions: {a: [10.0.1.1:80, 10.0.1.1:80]}, weights: {a: 1}}",
                ),
                "listed twice",
            ),
            (
                base(
                    "{listen: 10.0.0.1:80, protocol: tcp, versions: {a: [10.0.1.1:80]}, weights: {a: 1}, colour: red}",
                ),
                "unknown field",
            ),
            (base("{listen: 10.0.0.1:80, protocol: tcp, versions: {a: [10.0.1.1:80]}, weights: {a: 1}, affinity: {cookie: user}}"), "need mode l7"),
            (base("{listen: 10.0.0.1:80, protocol: tcp, versions: {a: [10.0.1.1:80]}, weights: {a: 1}, affinity: sticky}"), "unknown variant"),
            ("interfaces: {clients: [eth0]}\nflow_table_size: 10\n".to_string(), "flow_table_size 10 is out of range"),
            ("interfaces: {clients: []}\n".to_string(), "interfaces.clients is empty"),
            ("interfaces: {clients: [averyveryverylongname0]}\n".to_string(), "1 to 15 bytes"),
            ("interfaces: {clients: [eth0]}\nservices: [\n".to_string(), "not valid YAML"),
        ];
        for (yaml, want) in cases {
            let msg = err(&yaml);
            assert!(msg.contains(want), "for\n{yaml}\nexpected an error mentioning {want:?}, got: {msg}");
        }
    }

    #[test]
    fn accepts_the_l7_example_and_refuses_bad_l7_parts() {
        let c = Config::from_yaml(l7::EXAMPLE).expect("L7 example");
        let api = &c.services["api"];
        assert_eq!(api.routes.len(), 3);
        assert_eq!(api.affinity, Some(Affinity::Cookie("user".into())));
        let m = api.l7_mirror().unwrap();
        assert_eq!((m.version.as_str(), m.percent, m.compare.enabled), ("shadow", 10.0, true));
        assert_eq!(m.methods, ["GET", "HEAD", "OPTIONS"]);
        let cases = [
            (
                l7::EXAMPLE.replace("version: v2\n      - match: { cookies", "version: v9\n      - match: { cookies"),
                "routes[0]: version \"v9\"",
            ),
            (l7::EXAMPLE.replace("x-canary: \"true\"", "x-canary: { regex: \"(\" }"), "bad regex"),
            (l7::EXAMPLE.replace("x-canary: \"true\"", "x-canary: { glob: \"*\" }"), "unknown value match \"glob\""),
            (l7::EXAMPLE.replace("methods: [GET]", "methods: [get]"), "unknown method \"get\""),
            (l7::EXAMPLE.replace("path_prefix: /checkout", "path_prefix: checkout"), "must start with '/'"),
            (l7::EXAMPLE.replace("percent: 10", "percent: 0"), "mirror.percent 0 is out of range"),
            (l7::EXAMPLE.replace("version: shadow,", "version: ghost,"), "mirror.version \"ghost\""),
            (l7::EXAMPLE.replace("mode: l7", "mode: l4"), "need mode l7"),
            (
                l7::EXAMPLE.replace("mode: l7", "mode: l4").replace("    affinity: { cookie: user }", ""),
                "routes: these need mode l7",
            ),
        ];
        for (yaml, want) in cases {
            let msg = err(&yaml);
            assert!(msg.contains("services.api") && msg.contains(want), "want {want:?} in: {msg}");
        }
    }

    #[test]
    fn l7_timeouts_out_of_range_are_refused_with_field_value_and_range() {
        let mirror = |opts: &str| l7::EXAMPLE.replace("compare: true }", &format!("compare: true, {opts} }}"));
        let proxy = |opts: &str| format!("{}    proxy: {{ {opts} }}\n", l7::EXAMPLE);
        for (yaml, want) in [
            (mirror("timeout_ms: 0"), "mirror.timeout_ms 0 is out of range: use 1 to 3600000 (milliseconds"),
            (mirror("timeout_ms: 3600001"), "mirror.timeout_ms 3600001 is out of range: use 1 to 3600000"),
            (mirror("queue: 0"), "mirror.queue 0 is out of range: use 1 to 1000000"),
            (mirror("queue: 18446744073709551615"), "mirror.queue 18446744073709551615 is out of range"),
            (proxy("connect_timeout_ms: 0"), "proxy.connect_timeout_ms 0 is out of range: use 1 to 3600000"),
            (proxy("response_timeout_ms: 86400000"), "proxy.response_timeout_ms 86400000 is out of range"),
            (proxy("response_timeout_ms: 18446744073709551615"), "proxy.response_timeout_ms 18446744073709551615 is"),
        ] {
            let msg = err(&yaml);
            assert!(msg.contains("services.api: ") && msg.contains(want), "want {want:?} in: {msg}");
        }
        let c = Config::from_yaml(&proxy("connect_timeout_ms: 1, response_timeout_ms: 3600000")).unwrap();
        assert_eq!(c.services["api"].proxy.as_ref().map(|p| p.response_timeout_ms), Some(3_600_000));
        let c = Config::from_yaml(&mirror("timeout_ms: 3600000, queue: 1000000")).unwrap();
        let m = c.services["api"].l7_mirror().unwrap();
        assert_eq!((m.timeout_ms, m.queue, m.max_body_bytes), (3_600_000, 1_000_000, 64 * 1024));
    }

    #[test]
    fn l4_mirroring_is_accepted_and_bad_forms_are_explained() {
        let yaml = |mode: &str, mirror: &str| {
            format!(
                "interfaces: {{clients: [eth0], backends: [eth1]}}\nservices:\n  s: {{listen: 10.0.0.1:80, protocol: tcp, mode: {mode}, versions: {{a: [10.0.1.1:80]}}, weights: {{a: 1}}, mirror: {mirror}}}\n"
            )
        };
        let c = Config::from_yaml(&yaml("l4", "{ interface: eth3, percent: 2.5 }")).unwrap();
        let m = c.services["s"].l4_mirror().unwrap();
        assert_eq!((m.interface.as_str(), m.bps()), ("eth3", 250));
        assert_eq!(c.mirror_interfaces().into_iter().collect::<Vec<_>>(), ["eth3"]);
        for (mode, mirror, want) in [
            ("l7", "{ interface: eth3, percent: 5 }", "copies flows in the kernel (mode l4)"),
            ("l4", "{ version: a, percent: 5 }", "need mode l7"),
            ("l4", "{ interface: eth1, percent: 5 }", "is a clients/backends interface"),
            ("l4", "{ interface: eth3, percent: 0 }", "mirror.percent 0 is out of range"),
            ("l4", "{ interface: eth3, percent: 0.001 }", "out of range"),
            ("l4", "{ interface: eth3, percent: 101 }", "out of range"),
            ("l4", "{ interface: eth3 }", "missing field `percent`"),
            ("l4", "{ interface: eth3, percent: 5, port: 9 }", "unknown field `port`"),
            ("l4", "{ interface: \"bad/name\", percent: 5 }", "mirror.interface"),
        ] {
            let msg = err(&yaml(mode, mirror));
            assert!(msg.contains(want), "{mode} {mirror}: want {want:?} in: {msg}");
        }
    }

    /// The example of issue 17: a bad endpoint address at line 7, column 12.
    const BAD_ADDRESS: &str = "interfaces: {clients: [eth0]}
services:
  web:
    listen: 10.78.0.1:80
    protocol: tcp
    versions:
      v1: [10.78.1.300:7001]
    weights: {v1: 1}
";

    #[test]
    fn a_value_error_quotes_what_was_written_and_says_it_once() {
        assert_eq!(
            err(BAD_ADDRESS),
            r#"config is not valid YAML for splitter: services.web.versions.v1[0]: invalid socket address syntax: "10.78.1.300:7001" (line 7, column 12)"#
        );
        // As `splitter check` prints it: the error and its chain of causes.
        let printed = format!("{:#}", anyhow::Error::from(Config::from_yaml(BAD_ADDRESS).unwrap_err()));
        assert_eq!(printed.matches("invalid socket address syntax").count(), 1, "{printed}");
        let missing = Config::load(Path::new("/nonexistent/splitter.yaml")).unwrap_err();
        let printed = format!("{:#}", anyhow::Error::from(missing));
        assert_eq!(printed.matches("No such file").count(), 1, "{printed}");
    }

    #[test]
    fn value_errors_quote_the_value_and_field_errors_do_not() {
        let svc = |from: &str, to: &str| {
            "interfaces: {clients: [eth0]}\nservices:\n  s: {listen: 10.0.0.1:80, protocol: tcp, versions: {a: [10.0.1.1:80]}, weights: {a: 1}}\n"
                .replace(from, to)
        };
        let w = "weights: {a: 1}";
        let l7 = |fields: &str| svc(w, &format!("{w}, mode: l7, {fields}"));
        for (yaml, want) in [
            (
                svc("10.0.0.1:80", "\"10.0.0.1:http\""),
                r#"services.s.listen: invalid socket address syntax: "10.0.0.1:http" (line 3, column"#,
            ),
            (
                svc("10.0.0.1:80", "'10.0.0.1:99999'"),
                r#"services.s.listen: invalid socket address syntax: "10.0.0.1:99999""#,
            ),
            (svc(w, "weights: {a: -1}"), r#"services.s.weights.a: invalid type: integer `-1`, expected u32: "-1""#),
            (svc(w, "weights: {a: abc}"), r#"services.s.weights.a: invalid type: string "abc", expected u32 (line 3"#),
            (svc("{a: 1}}\n", "{a: 1.5}}  # half\n"), r#"expected u32: "1.5" (line 3"#),
            (svc("tcp", "tcpx"), r#"services.s.protocol: unknown variant `tcpx`, expected `tcp` or `udp`: "tcpx""#),
            (
                svc(w, "weights: {a: 1}, mode: l8"),
                r#"services.s.mode: unknown variant `l8`, expected `l4` or `l7`: "l8""#,
            ),
            (
                l7("proxy: {connect_timeout_ms: 5s}"),
                r#"services.s.proxy.connect_timeout_ms: invalid type: string "5s""#,
            ),
            (
                l7("proxy: {response_timeout_ms: -1}"),
                r#"services.s.proxy.response_timeout_ms: invalid type: integer `-1`, expected u64: "-1""#,
            ),
            (
                l7("mirror: {version: a, percent: 5, timeout_ms: 2 seconds}"),
                r#"services.s.mirror.timeout_ms: invalid type: string "2 seconds", expected u64 (line 3"#,
            ),
            (l7("mirror: {version: a, percent: lots}"), r#"services.s.mirror.percent: invalid type: string "lots""#),
            (
                l7("mirror: {version: a, percent: 5, compare: maybe}"),
                r#"services.s.mirror.compare: invalid type: string "maybe", expected true, false or {"#,
            ),
            (
                svc(w, "weights: {a: 1}, affinity: sticky"),
                r#"services.s.affinity: unknown variant affinity "sticky": use"#,
            ),
            (
                l7("routes: [{match: {headers: {x-canary: 1}}, version: a}]"),
                r#"services.s.routes[0].match.headers.x-canary: invalid type: integer `1`, expected a string, { exact: S }, { prefix: S } or { regex: RE }: "1" (line 3"#,
            ),
        ] {
            let msg = err(&yaml);
            assert!(msg.contains(want), "for\n{yaml}\nwant {want:?} in: {msg}");
            assert_eq!(msg.matches(" (line ").count(), 1, "{msg}");
        }
        for (yaml, whole) in [
            (svc(w, "weights: {a: 1}, colour: red"), "services.s: unknown field `colour`"),
            (
                svc("versions: {a: [10.0.1.1:80]}", "versions: [a]"),
                "services.s.versions: invalid type: sequence, expected a map (line 3, column",
            ),
            (svc(w, "weights: {a: {b: 1}}"), "services.s.weights.a: invalid type: map, expected u32 (line 3, column"),
            (
                l7("mirror: {interface: eth3, percent: 5, timeout_ms: 9}"),
                "services.s.mirror: unknown field `timeout_ms`",
            ),
            (l7("mirror: {percent: 5}"), "services.s.mirror: missing field `version`"),
            (
                l7("mirror: {version: a, percent: 5, compare: {header: [x]}}"),
                "services.s.mirror.compare: unknown field `header`",
            ),
            (
                l7("affinity: {cookie: a, header: b}"),
                "services.s.affinity: give one of { cookie: NAME } or { header: NAME }",
            ),
            (
                l7("routes: [{match: {headers: {x-canary: {glob: a}}}, version: a}]"),
                r#"services.s.routes[0].match.headers.x-canary: unknown value match "glob""#,
            ),
        ] {
            let msg = err(&yaml);
            assert!(msg.contains(whole) && !msg.contains(": \""), "for\n{yaml}\nwant {whole:?} and no value in: {msg}");
        }
    }

    #[test]
    fn validation_errors_quote_the_value() {
        let svc = |fields: &str| {
            format!("interfaces: {{clients: [eth0]}}\nservices:\n  s: {{listen: 10.0.0.1:80, {fields}}}\n")
        };
        for (yaml, want) in [
            (
                svc("protocol: udp, mode: l7, versions: {a: [10.0.1.1:80]}, weights: {a: 1}"),
                "services.s: protocol udp: mode l7 proxies HTTP and needs protocol tcp",
            ),
            (
                svc("protocol: tcp, versions: {a: [10.0.1.1:80]}, weights: {a: 1}, affinity: {header: x-user}"),
                r#"services.s: affinity { header: "x-user" }: cookie and header affinity need mode l7"#,
            ),
            (
                svc("protocol: tcp, versions: {a: [10.0.1.1:80], b: [10.0.1.2:80]}, weights: {a: 0, b: 0}"),
                r#"services.s: every version weighs 0 (weights {"a": 0, "b": 0})"#,
            ),
            (
                l7::EXAMPLE.replace(r#"x-canary: "true""#, "x-canary: { exact: a, prefix: b }"),
                "services.api.routes[0].match.headers.x-canary: a value match is a string or one of { exact: S }, { prefix: S }, { regex: RE }, not { exact, prefix }",
            ),
        ] {
            let msg = err(&yaml);
            assert!(msg.contains(want), "for\n{yaml}\nwant {want:?} in: {msg}");
        }
    }

    #[test]
    fn the_value_at_an_error_is_read_as_written() {
        let at = |text: &str, from: &str| written_scalar(text, text.find(from).unwrap());
        assert_eq!(at("a: [x, 10.0.0.1:80x, y]", "10."), Some("10.0.0.1:80x".into()));
        assert_eq!(at("a: {b: tcpx}", "tcpx"), Some("tcpx".into()));
        assert_eq!(at("a: 10.0.0.1:80x   # the shop\n", "10."), Some("10.0.0.1:80x".into()));
        assert_eq!(at("a: x,y]z\n", "x"), Some("x,y]z".into()), "block context: `,` and `]` are text");
        assert_eq!(at("a: [\"x, y\", 'it''s', \"t\\\"q\"]", "'it"), Some("it's".into()));
        assert_eq!(at("a: [\"x, y\", 'it''s', \"t\\\"q\"]", "\"t"), Some("t\"q".into()));
        assert_eq!(at("a: # not [ a flow\n  b: c, d\n", "c,"), Some("c, d".into()));
        assert_eq!(at("a: [don't, x]", "x]"), Some("x".into()));
        assert_eq!(at("a:\n  b: 1\n", "b:"), None, "a mapping");
        assert_eq!(at("a:\n  - 1\n", "- 1"), None, "a sequence");
        assert_eq!(at("a: {b: 1}", "{"), None);
        assert_eq!(at("a: [1]", "["), None);
        assert_eq!(at("a:\n  \"b\": 1\n", "\"b"), None, "a quoted key");
        assert_eq!(at("a: -1", "-1"), Some("-1".into()));
    }

    #[test]
    fn rejects_two_services_on_one_listener() {
        let msg = err(
            "interfaces: {clients: [eth0]}\nservices:\n  a: {listen: 10.0.0.1:80, protocol: tcp, versions: {x: [10.0.1.1:80]}, weights: {x: 1}}\n  b: {listen: 10.0.0.1:80, protocol: tcp, versions: {x: [10.0.1.2:80]}, weights: {x: 1}}\n",
        );
        assert!(msg.contains("already used by service"), "{msg}");
        // Same address, other protocol, is a different service.
        Config::from_yaml(
            "interfaces: {clients: [eth0]}\nservices:\n  a: {listen: 10.0.0.1:80, protocol: tcp, versions: {x: [10.0.1.1:80]}, weights: {x: 1}}\n  b: {listen: 10.0.0.1:80, protocol: udp, versions: {x: [10.0.1.2:80]}, weights: {x: 1}}\n",
        )
        .unwrap();
    }

    #[test]
    fn at_most_four_l4_services_share_an_endpoint() {
        let services = |n: usize, mode: &str| {
            let mut text = String::from("interfaces: {clients: [eth0]}\nservices:\n");
            for i in 0..n {
                text += &format!(
                    "  s{i}: {{listen: 10.0.0.{i}:80, protocol: tcp, mode: {mode}, versions: {{x: [10.0.1.1:80]}}, weights: {{x: 1}}}}\n"
                );
            }
            text
        };
        Config::from_yaml(&services(4, "l4")).expect("four services may share an endpoint");
        let msg = err(&services(5, "l4"));
        assert!(msg.contains("10.0.1.1:80") && msg.contains("5 l4 services") && msg.contains("s0, s1"), "{msg}");
        // The proxy's services are not matched in the kernel.
        Config::from_yaml(&services(5, "l7")).expect("l7 services share endpoints freely");
    }
}

#[cfg(test)]
mod local_address_tests {
    use super::*;

    const SVC: &str = "services:\n  api: {listen: 203.0.113.10:8080, protocol: tcp, mode: l7, versions: {a: [10.0.1.1:80]}, weights: {a: 1}}\n";

    #[test]
    fn local_addresses_default_to_managed_on_lo_and_bad_interfaces_are_refused() {
        let c = Config::from_yaml(&format!("interfaces: {{clients: [eth0]}}\n{SVC}")).unwrap();
        assert_eq!(c.local_addresses, LocalAddresses { manage: true, interface: "lo".into() });
        let c =
            Config::from_yaml(&format!("interfaces: {{clients: [eth0]}}\nlocal_addresses: {{manage: false}}\n{SVC}"))
                .unwrap();
        assert!(!c.local_addresses.manage);
        let err = |extra: &str| {
            Config::from_yaml(&format!("interfaces: {{clients: [eth0], backends: [eth1]}}\n{extra}\n{SVC}"))
                .unwrap_err()
                .to_string()
        };
        let e = err("local_addresses: {interface: eth1}");
        assert!(e.contains("local_addresses.interface \"eth1\" is a clients/backends/mirror interface"), "{e}");
        let e = err("local_addresses: {interface: \"much-too-long-name\"}");
        assert!(e.contains("local_addresses.interface") && e.contains("much-too-long-name"), "{e}");
        let e = err("local_addresses: {manage: yes-please}");
        assert!(e.contains("local_addresses.manage"), "{e}");
    }
}
