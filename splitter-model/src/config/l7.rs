//! The YAML model of what only `mode: l7` services have: routes (header,
//! cookie, query, path and method matches), mirroring, proxy timeouts and
//! TLS termination. Validated with the rest of the file; compiled by
//! `l7::route` (and `l7::tls`, which loads the certificates).

use std::{collections::BTreeMap, fmt, ops::RangeInclusive, path::PathBuf};

use super::{duration, Quoted};
use serde::{de, Deserialize, Serialize};

/// One routing rule: requests matching all of `match` go to `version`.
/// The first matching route wins; unmatched requests follow the weights.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    #[serde(rename = "match")]
    pub matches: RouteMatch,
    pub version: String,
}

/// Conditions of a route; all given ones must hold (an empty match matches all).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    /// Header name (case-insensitive) → value match. With several values of
    /// one header, any may match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, ValueMatch>,
    /// Cookie name → value match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cookies: BTreeMap<String, ValueMatch>,
    /// Query parameter name → value match (raw, not percent-decoded).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query: BTreeMap<String, ValueMatch>,
    /// The request path starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// The method is one of these (upper case).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
}

/// How a header, cookie or query value is matched: a plain string is exact;
/// `{ exact: S }`, `{ prefix: S }` and `{ regex: RE }` (Rust `regex` syntax,
/// unanchored unless the pattern has `^`/`$`) say so explicitly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(into = "ValueMatchRepr")]
pub enum ValueMatch {
    Exact(String),
    Prefix(String),
    Regex(String),
}

#[derive(Serialize)]
#[serde(untagged)]
enum ValueMatchRepr {
    Plain(String),
    Rule(BTreeMap<String, String>),
}

impl<'de> Deserialize<'de> for ValueMatch {
    /// Read in place (an untagged enum would buffer it), so an error names
    /// the value's own field and line.
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = ValueMatch;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, { exact: S }, { prefix: S } or { regex: RE }")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<ValueMatch, E> {
                Ok(ValueMatch::Exact(s.to_owned()))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<ValueMatch, A::Error> {
                let rule = BTreeMap::<String, String>::deserialize(de::value::MapAccessDeserializer::new(map))?;
                ValueMatch::from_rule(rule).map_err(de::Error::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl ValueMatch {
    /// `{ exact: S }`, `{ prefix: S }` or `{ regex: RE }`.
    fn from_rule(rule: BTreeMap<String, String>) -> Result<Self, String> {
        let kinds = rule.keys().map(String::as_str).collect::<Vec<_>>().join(", ");
        let mut entries = rule.into_iter();
        match (entries.next(), entries.next()) {
            (Some((kind, value)), None) => match kind.as_str() {
                "exact" => Ok(ValueMatch::Exact(value)),
                "prefix" => Ok(ValueMatch::Prefix(value)),
                "regex" => Ok(ValueMatch::Regex(value)),
                other => Err(format!(
                    "unknown value match {}: use a string, {{ exact: S }}, {{ prefix: S }} or {{ regex: RE }}",
                    Quoted(other)
                )),
            },
            _ => Err(format!(
                "a value match is a string or one of {{ exact: S }}, {{ prefix: S }}, {{ regex: RE }}, not {{ {kinds} }}"
            )),
        }
    }
}

impl From<ValueMatch> for ValueMatchRepr {
    fn from(m: ValueMatch) -> Self {
        match m {
            ValueMatch::Exact(s) => ValueMatchRepr::Plain(s),
            ValueMatch::Prefix(s) => ValueMatchRepr::Rule([("prefix".to_owned(), s)].into()),
            ValueMatch::Regex(s) => ValueMatchRepr::Rule([("regex".to_owned(), s)].into()),
        }
    }
}

/// `mirror:` of an l7 service: a sample of requests also goes to `version`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    /// The version that receives the copies (its answers never reach clients).
    pub version: String,
    /// Share of requests mirrored, in percent (fractions allowed; 0.01 steps).
    pub percent: f64,
    /// Compare the mirror's responses with the primary's.
    #[serde(default)]
    pub compare: Compare,
    /// Methods that are mirrored (default: the idempotent GET, HEAD, OPTIONS).
    #[serde(default = "default_mirror_methods")]
    pub methods: Vec<String>,
    /// Request (and, to compare, response) bodies larger than this are not
    /// mirrored (counted).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
    /// A mirrored request that has no complete answer after this is dropped (counted).
    #[serde(default = "default_mirror_timeout_ms")]
    pub timeout_ms: u64,
    /// Mirrored requests waiting to be sent; when full, new ones are dropped (counted).
    #[serde(default = "default_mirror_queue")]
    pub queue: usize,
}

impl Mirror {
    /// `percent` of requests to `version`, everything else the defaults.
    pub fn new(version: String, percent: f64) -> Mirror {
        Mirror {
            version,
            percent,
            compare: Compare::default(),
            methods: default_mirror_methods(),
            max_body_bytes: default_max_body_bytes(),
            timeout_ms: default_mirror_timeout_ms(),
            queue: default_mirror_queue(),
        }
    }
}

/// `compare:` — `false`, `true`, or what to compare beyond the status.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(into = "CompareRepr")]
pub struct Compare {
    pub enabled: bool,
    /// Response headers compared too (the status and body always are).
    pub headers: Vec<String>,
    /// Bodies that are JSON compare as JSON with these paths (`a.b.c`,
    /// `items.*.id`) left out; other bodies compare byte for byte.
    pub ignore_json: Vec<String>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum CompareRepr {
    Flag(bool),
    Spec { headers: Vec<String>, ignore_json: Vec<String> },
}

/// `compare: { headers, ignore_json }` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CompareSpec {
    #[serde(default)]
    headers: Vec<String>,
    #[serde(default)]
    ignore_json: Vec<String>,
}

impl<'de> Deserialize<'de> for Compare {
    /// Read in place, like `ValueMatch`.
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = Compare;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("true, false or { headers: [...], ignore_json: [...] }")
            }
            fn visit_bool<E: de::Error>(self, enabled: bool) -> Result<Compare, E> {
                Ok(Compare { enabled, ..Compare::default() })
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Compare, A::Error> {
                let spec = CompareSpec::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(Compare { enabled: true, headers: spec.headers, ignore_json: spec.ignore_json })
            }
        }
        d.deserialize_any(V)
    }
}

impl From<Compare> for CompareRepr {
    fn from(c: Compare) -> Self {
        if c.headers.is_empty() && c.ignore_json.is_empty() {
            CompareRepr::Flag(c.enabled)
        } else {
            CompareRepr::Spec { headers: c.headers, ignore_json: c.ignore_json }
        }
    }
}

fn default_mirror_methods() -> Vec<String> {
    ["GET", "HEAD", "OPTIONS"].map(String::from).to_vec()
}
const fn default_max_body_bytes() -> u64 {
    64 * 1024
}
const fn default_mirror_timeout_ms() -> u64 {
    2_000
}
const fn default_mirror_queue() -> usize {
    1_024
}

/// `proxy:` of an l7 service: timeouts towards the endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyOptions {
    /// Connecting to an endpoint; past it the next endpoint is tried
    /// (idempotent requests without a body), else 502.
    #[serde(default = "default_connect_ms")]
    pub connect_timeout_ms: u64,
    /// From sending the request to the response head; past it, 504.
    #[serde(default = "default_response_ms")]
    pub response_timeout_ms: u64,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions { connect_timeout_ms: default_connect_ms(), response_timeout_ms: default_response_ms() }
    }
}

/// `upstream:` of an l7 service: how the proxy talks to its endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// TLS towards the endpoints (none: clear text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
}

/// `upstream.tls:` — the proxy speaks TLS to the endpoints and verifies
/// their certificates against `ca` only (no system roots).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// The PEM certificate(s) of the CA that signed the endpoints'
    /// certificates: an absolute path read by the agent. Required (an
    /// empty path is refused by `check`, saying so).
    #[serde(default)]
    pub ca: PathBuf,
    /// The name the endpoints' certificates are verified against and sent
    /// as SNI (a DNS name or an IP address); default: each endpoint's IP
    /// address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

/// The protocol towards the endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive (a pool of connections per endpoint); over
    /// TLS (ALPN http/1.1) with `tls:`.
    #[default]
    Http1,
    /// HTTP/2 in clear text with prior knowledge: one multiplexed
    /// connection per endpoint. gRPC needs it (or `h2`, or `auto`).
    H2c,
    /// HTTP/2 over TLS (ALPN h2; needs `tls:`): one multiplexed connection
    /// per endpoint.
    H2,
    /// Follow the client: HTTP/2 requests (gRPC among them) go over h2c
    /// (h2 with `tls:`), HTTP/1.x requests (and upgrades) over HTTP/1.1
    /// (over TLS with `tls:`).
    Auto,
}

impl UpstreamProtocol {
    /// Whether a request that came in as HTTP/2 (`client_h2`) goes to the
    /// endpoint over HTTP/2.
    pub fn h2_for(self, client_h2: bool) -> bool {
        match self {
            UpstreamProtocol::Http1 => false,
            UpstreamProtocol::H2c | UpstreamProtocol::H2 => true,
            UpstreamProtocol::Auto => client_h2,
        }
    }

    /// As the config writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamProtocol::Http1 => "http1",
            UpstreamProtocol::H2c => "h2c",
            UpstreamProtocol::H2 => "h2",
            UpstreamProtocol::Auto => "auto",
        }
    }
}

impl Upstream {
    /// What `validate` checks of `upstream:`; the error starts with the key
    /// under `upstream.` (`tls.ca: ...`).
    pub fn check(&self) -> Result<(), String> {
        match (self.protocol, &self.tls) {
            (UpstreamProtocol::H2, None) => {
                return Err("protocol: h2 is HTTP/2 over TLS and needs tls: { ca: /path/ca.pem }; \
                     for HTTP/2 in clear text use protocol: h2c"
                    .into())
            }
            (UpstreamProtocol::H2c, Some(_)) => {
                return Err("protocol: h2c is HTTP/2 in clear text (prior knowledge), which cannot go over tls:; \
                     use protocol: h2 for HTTP/2 over TLS (ALPN h2), or drop tls:"
                    .into())
            }
            _ => {}
        }
        if let Some(tls) = &self.tls {
            if tls.ca.as_os_str().is_empty() {
                return Err("tls.ca: missing: give the PEM certificate(s) of the CA that signed the endpoints' \
                     certificates (system roots are not used)"
                    .into());
            }
            if !tls.ca.is_absolute() {
                return Err(format!(
                    "tls.ca: {} is not an absolute path: write it from / (the agent's working directory is no anchor)",
                    Quoted(&tls.ca.to_string_lossy())
                ));
            }
            if let Some(name) = &tls.server_name {
                if !is_server_name(name) {
                    return Err(format!(
                        "tls.server_name: {} is neither a DNS name (labels of letters, digits, '-' and '_', \
                         the last starting with a letter) nor an IP address",
                        Quoted(name)
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A name a TLS client may verify a server as: an IP address, or a DNS name
/// (at most 253 bytes, one trailing dot allowed; labels of 1 to 63 letters,
/// digits, `-` and `_`, not starting or ending with `-`; the last starting
/// with a letter, so it is never mistaken for an IPv4 address).
pub fn is_server_name(name: &str) -> bool {
    if name.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let bare = name.strip_suffix('.').unwrap_or(name);
    if bare.is_empty() || bare.len() > 253 {
        return false;
    }
    let label_ok = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    bare.split('.').all(label_ok)
        && bare.rsplit('.').next().is_some_and(|l| l.starts_with(|c: char| c.is_ascii_alphabetic()))
}

/// Checks one `hosts:` pattern: a DNS name (letters, digits, `-`, dots
/// between labels) or `*.` and one, without a port.
pub fn check_host_pattern(host: &str) -> Result<(), String> {
    let name = host.strip_prefix("*.").unwrap_or(host);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if host.contains(':') {
        return Err("a host is matched without its port: leave the port out".into());
    }
    if name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(
            "is not a host name: write a DNS name such as api.example.com, or *.example.com for its subdomains".into(),
        );
    }
    Ok(())
}

/// The rules for services sharing one `listen` address: all l7 (checked
/// before), all with TLS or none, at most one without `hosts` (the default
/// for hosts no other claims), and no host claimed twice.
pub fn check_shared_address(
    listen: std::net::SocketAddr,
    sharing: &[(&String, &super::Service)],
) -> Result<(), String> {
    let Some((first, f)) = sharing.first() else { return Ok(()) };
    if sharing.len() == 1 {
        return Ok(());
    }
    let mut default: Option<&String> = None;
    let mut claimed: BTreeMap<String, &String> = BTreeMap::new();
    for (name, svc) in sharing {
        if svc.tls.is_some() != f.tls.is_some() {
            return Err(format!(
                "services.{name}: listen {listen} is shared with service {first:?}, and one terminates TLS while the other does not: give them the same tls: (or other addresses)"
            ));
        }
        if svc.hosts.is_empty() {
            if let Some(d) = default {
                return Err(format!(
                    "services.{name}: listen {listen} is shared with service {d:?}, and neither names its hosts: give one of them hosts: [...]"
                ));
            }
            default = Some(name);
        }
        for host in &svc.hosts {
            let key = host.trim_end_matches('.').to_ascii_lowercase();
            if let Some(other) = claimed.insert(key, name) {
                return Err(format!(
                    "services.{name}: host {} on {listen} is already claimed by service {other:?}",
                    Quoted(host)
                ));
            }
        }
    }
    Ok(())
}

/// Bounds of the l7 timeouts (`mirror.timeout_ms`, `proxy.connect_timeout_ms`,
/// `proxy.response_timeout_ms`): 1 ms to 1 hour.
pub const TIMEOUT_MS: RangeInclusive<u64> = 1..=3_600_000;
/// Bounds of `mirror.queue` (jobs waiting to be sent).
pub const MIRROR_QUEUE: RangeInclusive<usize> = 1..=1_000_000;

/// `field` is `value` milliseconds: within `TIMEOUT_MS`, or an error naming
/// both and giving the range.
fn check_timeout(field: &str, value: u64) -> Result<(), String> {
    if TIMEOUT_MS.contains(&value) {
        return Ok(());
    }
    Err(format!(
        "{field} {value} is out of range: use {} to {} (milliseconds, at most an hour)",
        TIMEOUT_MS.start(),
        TIMEOUT_MS.end()
    ))
}

impl ProxyOptions {
    /// Checks both timeouts against `TIMEOUT_MS`.
    pub fn check(&self) -> Result<(), String> {
        check_timeout("proxy.connect_timeout_ms", self.connect_timeout_ms)?;
        check_timeout("proxy.response_timeout_ms", self.response_timeout_ms)
    }
}

const fn default_connect_ms() -> u64 {
    1_000
}
const fn default_response_ms() -> u64 {
    30_000
}

/// Methods a route or mirror may name.
const METHODS: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"];

fn check_methods(what: &str, methods: &[String]) -> Result<(), String> {
    match methods.iter().find(|m| !METHODS.contains(&m.as_str())) {
        Some(m) => Err(format!("{what}: unknown method {} (use upper case: {})", Quoted(m), METHODS.join(", "))),
        None => Ok(()),
    }
}

fn check_value(what: &str, m: &ValueMatch) -> Result<(), String> {
    if let ValueMatch::Regex(re) = m {
        regex::Regex::new(re).map_err(|e| format!("{what}: bad regex {}: {}", Quoted(re), regex_problem(&e)))?;
    }
    Ok(())
}

/// What is wrong with a regex, in one line: the regex crate's syntax errors
/// print the whole pattern again, over several lines, before the reason.
fn regex_problem(e: &regex::Error) -> String {
    match e {
        regex::Error::Syntax(msg) => {
            msg.lines().rev().find_map(|l| l.trim().strip_prefix("error: ")).unwrap_or("invalid syntax").to_owned()
        }
        regex::Error::CompiledTooBig(limit) => format!("it compiles to more than the {limit}-byte limit"),
        other => other.to_string().lines().next().unwrap_or_default().to_owned(),
    }
}

/// Checks the l7-only parts of a service against its versions.
pub fn check(
    versions: &BTreeMap<String, Vec<std::net::SocketAddr>>,
    routes: &[Route],
    mirror: Option<&Mirror>,
) -> Result<(), String> {
    let known = || versions.keys().map(String::as_str).collect::<Vec<_>>();
    for (i, route) in routes.iter().enumerate() {
        let at = format!("routes[{i}]");
        if !versions.contains_key(&route.version) {
            return Err(format!("{at}: version {} is not one of the versions {:?}", Quoted(&route.version), known()));
        }
        let m = &route.matches;
        check_methods(&at, &m.methods)?;
        for (kind, map) in [("headers", &m.headers), ("cookies", &m.cookies), ("query", &m.query)] {
            for (name, value) in map {
                if name.is_empty() {
                    return Err(format!("{at}.match.{kind}: empty name"));
                }
                if kind == "headers" && !is_header_name(name) {
                    return Err(format!("{at}.match.headers: {} is not a valid header name", Quoted(name)));
                }
                check_value(&format!("{at}.match.{kind}.{}", Quoted(name)), value)?;
            }
        }
        if let Some(p) = &m.path_prefix {
            if !p.starts_with('/') {
                return Err(format!("{at}.match.path_prefix {} must start with '/'", Quoted(p)));
            }
        }
    }
    if let Some(mirror) = mirror {
        if !versions.contains_key(&mirror.version) {
            return Err(format!("mirror.version {} is not one of the versions {:?}", Quoted(&mirror.version), known()));
        }
        if !(mirror.percent > 0.0 && mirror.percent <= 100.0) {
            return Err(format!("mirror.percent {} is out of range: use more than 0 and at most 100", mirror.percent));
        }
        check_methods("mirror.methods", &mirror.methods)?;
        check_timeout("mirror.timeout_ms", mirror.timeout_ms)?;
        if !MIRROR_QUEUE.contains(&mirror.queue) {
            return Err(format!(
                "mirror.queue {} is out of range: use {} to {} (mirrored requests waiting to be sent)",
                mirror.queue,
                MIRROR_QUEUE.start(),
                MIRROR_QUEUE.end()
            ));
        }
        for h in &mirror.compare.headers {
            if !is_header_name(h) {
                return Err(format!("mirror.compare.headers: {} is not a valid header name", Quoted(h)));
            }
        }
    }
    Ok(())
}

/// `l7:` — how the proxy treats client connections, agent-wide.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// From accept (or a request head's first byte) to the complete head;
    /// a client that takes longer is disconnected (slow clients hold a
    /// connection and a file descriptor each).
    #[serde(with = "duration")]
    pub header_read_timeout: std::time::Duration,
    /// Client connections one l7 listener serves at once; more are closed
    /// at accept (counted).
    pub max_connections: u32,
    /// Client connections one client address holds at once on one listener.
    pub max_connections_per_client: u32,
    /// On SIGTERM (and when a new agent takes the listeners over), how long
    /// in-flight requests may take to finish before their connections are cut.
    #[serde(with = "duration")]
    pub drain_timeout: std::time::Duration,
    /// A client connection with no request in flight this long is closed
    /// politely (HTTP/1.1: closed between requests; h2: GOAWAY); an upgraded
    /// connection (WebSocket) with no byte either way this long is cut.
    #[serde(with = "duration")]
    pub idle_timeout: std::time::Duration,
    /// Largest request head (HTTP/1.1 request line and headers, or an h2
    /// header list); larger → 431.
    pub max_header_bytes: u32,
    /// Streams one h2 client connection may have open at once.
    pub max_concurrent_streams: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            header_read_timeout: std::time::Duration::from_secs(10),
            max_connections: 10_000,
            max_connections_per_client: 256,
            drain_timeout: std::time::Duration::from_secs(30),
            idle_timeout: std::time::Duration::from_secs(60),
            max_header_bytes: 65536,
            max_concurrent_streams: 256,
        }
    }
}

/// Bounds of the `l7:` settings.
const HEADER_READ_TIMEOUT: RangeInclusive<std::time::Duration> =
    std::time::Duration::from_millis(100)..=std::time::Duration::from_secs(300);
const MAX_CONNECTIONS: RangeInclusive<u32> = 1..=1_000_000;
const DRAIN_TIMEOUT: RangeInclusive<std::time::Duration> =
    std::time::Duration::ZERO..=std::time::Duration::from_secs(600);
const IDLE_TIMEOUT: RangeInclusive<std::time::Duration> =
    std::time::Duration::from_secs(1)..=std::time::Duration::from_secs(3600);
const MAX_HEADER_BYTES: RangeInclusive<u32> = 8192..=1024 * 1024;
const MAX_CONCURRENT_STREAMS: RangeInclusive<u32> = 1..=10_000;
/// Most header fields one HTTP/1.1 request head may have (more → 431).
pub const MAX_HEADERS: usize = 100;

impl Settings {
    /// What `validate` checks of `l7:`; the error names the key.
    pub fn check(&self) -> Result<(), String> {
        if !HEADER_READ_TIMEOUT.contains(&self.header_read_timeout) {
            return Err(format!(
                "header_read_timeout {} is out of range: use 100ms to 5m",
                humantime::format_duration(self.header_read_timeout)
            ));
        }
        if !MAX_CONNECTIONS.contains(&self.max_connections) {
            return Err(format!("max_connections {} is out of range: use 1 to 1000000", self.max_connections));
        }
        if !(1..=self.max_connections).contains(&self.max_connections_per_client) {
            return Err(format!(
                "max_connections_per_client {} is out of range: use 1 to max_connections ({})",
                self.max_connections_per_client, self.max_connections
            ));
        }
        let span = |name: &str, d: std::time::Duration, range: &RangeInclusive<std::time::Duration>| {
            if range.contains(&d) {
                return Ok(());
            }
            Err(format!(
                "{name} {} is out of range: use {} to {}",
                humantime::format_duration(d),
                humantime::format_duration(*range.start()),
                humantime::format_duration(*range.end())
            ))
        };
        span("drain_timeout", self.drain_timeout, &DRAIN_TIMEOUT)?;
        span("idle_timeout", self.idle_timeout, &IDLE_TIMEOUT)?;
        if !MAX_HEADER_BYTES.contains(&self.max_header_bytes) {
            return Err(format!("max_header_bytes {} is out of range: use 8192 to 1048576", self.max_header_bytes));
        }
        if !MAX_CONCURRENT_STREAMS.contains(&self.max_concurrent_streams) {
            return Err(format!(
                "max_concurrent_streams {} is out of range: use 1 to 10000",
                self.max_concurrent_streams
            ));
        }
        Ok(())
    }
}

/// `tls:` of an l7 service: the proxy terminates TLS on its listener.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// Certificate and key pairs; the client's SNI picks one by the names
    /// its certificate covers, and the first is the default (no SNI, or a
    /// name none covers).
    pub certificates: Vec<CertPair>,
    /// The oldest protocol version offered.
    #[serde(default)]
    pub min_version: TlsVersion,
}

/// One certificate chain (PEM, end-entity first) and its private key (PEM:
/// PKCS#8, PKCS#1 or SEC1), both absolute paths read by the agent.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `min_version`: `"1.2"` (TLS 1.2 and 1.3, the default) or `"1.3"` (1.3
/// only). Read from a string or, as YAML reads an unquoted `1.2`, a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsVersion {
    #[default]
    V1_2,
    V1_3,
}

impl TlsVersion {
    /// As the config writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsVersion::V1_2 => "1.2",
            TlsVersion::V1_3 => "1.3",
        }
    }
}

impl Serialize for TlsVersion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for TlsVersion {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = TlsVersion;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"1.2\" or \"1.3\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<TlsVersion, E> {
                match s {
                    "1.2" => Ok(TlsVersion::V1_2),
                    "1.3" => Ok(TlsVersion::V1_3),
                    other => Err(E::custom(format!(
                        "TLS version {} is not supported: use \"1.2\" (1.2 and 1.3) or \"1.3\" (1.3 only)",
                        Quoted(other)
                    ))),
                }
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<TlsVersion, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<TlsVersion, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<TlsVersion, E> {
                self.visit_str(&v.to_string())
            }
        }
        d.deserialize_any(V)
    }
}

impl Tls {
    /// Every file it names, each with the key that names it
    /// (`certificates[0].cert`).
    pub fn files(&self) -> impl Iterator<Item = (String, &PathBuf)> {
        self.certificates.iter().enumerate().flat_map(|(i, p)| {
            [(format!("certificates[{i}].cert"), &p.cert), (format!("certificates[{i}].key"), &p.key)]
        })
    }

    /// What `validate` checks of `tls:`; the error starts with the key
    /// under `tls.` (`certificates[0].cert: ...`).
    pub fn check(&self) -> Result<(), String> {
        if self.certificates.is_empty() {
            return Err(
                "certificates: the list is empty: give at least one { cert: /path/cert.pem, key: /path/key.pem }"
                    .into(),
            );
        }
        for (key, path) in self.files() {
            if !path.is_absolute() {
                return Err(format!(
                    "{key}: {} is not an absolute path: write it from / (the agent's working directory is no anchor)",
                    Quoted(&path.to_string_lossy())
                ));
            }
        }
        Ok(())
    }
}

/// An HTTP field name: one or more `tchar`s (RFC 9110 §5.1, §5.6.2); any case.
fn is_header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A whole config with service `api` in `mode` carrying `tls` (YAML
    /// flow text), validated.
    fn config(mode: &str, tls: &str) -> Result<crate::config::Config, String> {
        crate::config::from_yaml(&format!(
            "interfaces: {{ clients: [eth0] }}\nservices:\n  api:\n    listen: 203.0.113.10:443\n    protocol: tcp\n    mode: {mode}\n    versions: {{ v1: [10.0.0.1:8080] }}\n    weights: {{ v1: 1 }}\n    tls: {tls}\n"
        ))
    }

    #[test]
    fn tls_is_read_with_its_default_version_and_both_spellings_of_one() {
        let c = config("l7", "{ certificates: [{ cert: /etc/s/a.pem, key: /etc/s/a.key }] }").unwrap();
        let tls = c.services["api"].tls.clone().unwrap();
        assert_eq!(tls.min_version, TlsVersion::V1_2);
        assert_eq!(
            tls.certificates,
            [CertPair { cert: "/etc/s/a.pem".into(), key: "/etc/s/a.key".into() }],
            "the first pair is the default"
        );
        let files: Vec<String> = tls.files().map(|(k, p)| format!("{k}={}", p.display())).collect();
        assert_eq!(files, ["certificates[0].cert=/etc/s/a.pem", "certificates[0].key=/etc/s/a.key"]);
        for (written, want) in [("\"1.3\"", TlsVersion::V1_3), ("1.3", TlsVersion::V1_3), ("1.2", TlsVersion::V1_2)] {
            let c = config("l7", &format!("{{ certificates: [{{ cert: /a, key: /b }}], min_version: {written} }}"))
                .unwrap_or_else(|e| panic!("{written}: {e}"));
            assert_eq!(c.services["api"].tls.as_ref().unwrap().min_version, want, "{written}");
        }
        // It survives the store's JSON round trip as written.
        let json = serde_json::to_string(&tls).unwrap();
        assert!(json.contains(r#""min_version":"1.2""#), "{json}");
        assert_eq!(serde_json::from_str::<Tls>(&json).unwrap(), tls);
    }

    #[test]
    fn bad_tls_is_refused_naming_the_key() {
        let pair = "{ cert: /etc/s/a.pem, key: /etc/s/a.key }";
        for (mode, tls, says) in [
            ("l4", format!("{{ certificates: [{pair}] }}"), "services.api: tls: these need mode l7"),
            ("l7", "{ certificates: [] }".into(), "services.api.tls.certificates: the list is empty"),
            (
                "l7",
                format!("{{ certificates: [{pair}, {{ cert: certs/b.pem, key: /etc/s/b.key }}] }}"),
                "services.api.tls.certificates[1].cert: \"certs/b.pem\" is not an absolute path",
            ),
            (
                "l7",
                "{ certificates: [{ cert: /etc/s/a.pem, key: a.key }] }".into(),
                "services.api.tls.certificates[0].key: \"a.key\" is not an absolute path",
            ),
            (
                "l7",
                format!("{{ certificates: [{pair}], min_version: \"1.1\" }}"),
                "TLS version \"1.1\" is not supported",
            ),
            ("l7", format!("{{ certificates: [{pair}], min_version: 1.4 }}"), "TLS version \"1.4\" is not supported"),
            ("l7", format!("{{ certificates: [{pair}], min_version: tls13 }}"), "\"tls13\" is not supported"),
            ("l7", "{ certificates: [{ cert: /a }] }".into(), "missing field `key`"),
            ("l7", "{ certificates: [{ cert: /a, key: /b, chain: /c }] }".into(), "unknown field `chain`"),
            ("l7", format!("{{ certificate: [{pair}] }}"), "unknown field `certificate`"),
            ("l7", "{}".into(), "missing field `certificates`"),
        ] {
            let err = config(mode, &tls).expect_err(&tls);
            assert!(err.contains(says), "{mode} {tls}: {err:?} does not say {says:?}");
        }
        // serde's errors name the key too.
        let err = config("l7", &format!("{{ certificates: [{pair}], min_version: \"1.1\" }}")).unwrap_err();
        assert!(err.contains("services.api.tls.min_version"), "{err}");
    }

    /// A whole config with service `api` in `mode` carrying `upstream`
    /// (YAML flow text), validated.
    fn with_upstream(mode: &str, upstream: &str) -> Result<crate::config::Config, String> {
        crate::config::from_yaml(&format!(
            "interfaces: {{ clients: [eth0] }}\nservices:\n  api:\n    listen: 203.0.113.10:443\n    protocol: tcp\n    mode: {mode}\n    versions: {{ v1: [10.0.0.1:8443] }}\n    weights: {{ v1: 1 }}\n    upstream: {upstream}\n"
        ))
    }

    #[test]
    fn upstream_tls_is_read_with_each_protocol_that_may_carry_it() {
        for (written, protocol, server_name) in [
            (
                "{ protocol: h2, tls: { ca: /etc/s/ca.pem, server_name: api.internal } }",
                UpstreamProtocol::H2,
                Some("api.internal"),
            ),
            ("{ protocol: http1, tls: { ca: /etc/s/ca.pem } }", UpstreamProtocol::Http1, None),
            ("{ tls: { ca: /etc/s/ca.pem } }", UpstreamProtocol::Http1, None),
            (
                "{ protocol: auto, tls: { ca: /etc/s/ca.pem, server_name: 10.0.0.1 } }",
                UpstreamProtocol::Auto,
                Some("10.0.0.1"),
            ),
            (
                "{ protocol: auto, tls: { ca: /etc/s/ca.pem, server_name: \"fd00::1\" } }",
                UpstreamProtocol::Auto,
                Some("fd00::1"),
            ),
            (
                "{ protocol: h2, tls: { ca: /etc/s/ca.pem, server_name: my_svc.internal. } }",
                UpstreamProtocol::H2,
                Some("my_svc.internal."),
            ),
        ] {
            let c = with_upstream("l7", written).unwrap_or_else(|e| panic!("{written}: {e}"));
            let up = c.services["api"].upstream.clone().unwrap();
            assert_eq!(up.protocol, protocol, "{written}");
            let tls = up.tls.clone().expect("tls");
            assert_eq!((tls.ca.to_str().unwrap(), tls.server_name.as_deref()), ("/etc/s/ca.pem", server_name));
            // The store's JSON round trip keeps it as written.
            let json = serde_json::to_string(&up).unwrap();
            assert_eq!(serde_json::from_str::<Upstream>(&json).unwrap(), up, "{json}");
        }
        // Without tls: as before.
        let c = with_upstream("l7", "{ protocol: h2c }").unwrap();
        assert_eq!(c.services["api"].upstream.as_ref().unwrap().tls, None);
        assert!(UpstreamProtocol::H2.h2_for(false) && UpstreamProtocol::H2.h2_for(true));
    }

    #[test]
    fn bad_upstream_tls_is_refused_naming_the_key_and_saying_why() {
        for (mode, upstream, says) in [
            ("l4", "{ tls: { ca: /etc/s/ca.pem } }", "services.api: upstream: these need mode l7"),
            ("l7", "{ protocol: h2 }", "services.api.upstream.protocol: h2 is HTTP/2 over TLS and needs tls: { ca: /path/ca.pem }"),
            (
                "l7",
                "{ protocol: h2c, tls: { ca: /etc/s/ca.pem } }",
                "services.api.upstream.protocol: h2c is HTTP/2 in clear text (prior knowledge), which cannot go over tls:; use protocol: h2",
            ),
            ("l7", "{ protocol: h2, tls: {} }", "services.api.upstream.tls.ca: missing: give the PEM certificate(s) of the CA"),
            ("l7", "{ protocol: h2, tls: { server_name: api.internal } }", "services.api.upstream.tls.ca: missing"),
            ("l7", "{ tls: { ca: ca.pem } }", "services.api.upstream.tls.ca: \"ca.pem\" is not an absolute path"),
            ("l7", "{ tls: { ca: /ca.pem, server_name: \"api internal\" } }", "services.api.upstream.tls.server_name: \"api internal\" is neither a DNS name"),
            ("l7", "{ tls: { ca: /ca.pem, server_name: \"\" } }", "services.api.upstream.tls.server_name: \"\" is neither"),
            ("l7", "{ tls: { ca: /ca.pem, server_name: -api.internal } }", "tls.server_name: \"-api.internal\""),
            ("l7", "{ tls: { ca: /ca.pem, server_name: api..internal } }", "tls.server_name: \"api..internal\""),
            ("l7", "{ tls: { ca: /ca.pem, server_name: 10.0.0.300 } }", "tls.server_name: \"10.0.0.300\""),
            ("l7", "{ tls: { ca: /ca.pem, roots: system } }", "unknown field `roots`"),
            ("l7", "{ protocol: h3 }", "unknown variant `h3`"),
        ] {
            let err = with_upstream(mode, upstream).expect_err(upstream);
            assert!(err.contains(says), "{mode} {upstream}: {err:?} does not say {says:?}");
        }
    }

    #[test]
    fn a_server_name_is_a_dns_name_or_an_ip_address() {
        for ok in ["api.internal", "API.Internal.", "localhost", "a_b.c-d.e", "10.0.0.1", "::1", "x.y2"] {
            assert!(is_server_name(ok), "{ok}");
        }
        let long_label = "a".repeat(64);
        let long_name = format!("{}.internal", ["a"; 125].join("."));
        for bad in [
            "",
            ".",
            "a b",
            "api.-x",
            "x-.internal",
            "a..b",
            "1.2.3",
            "api.123",
            "api.0x1f",
            &long_label,
            &long_name,
            "ä.internal",
        ] {
            assert!(!is_server_name(bad), "{bad:?}");
        }
    }
}
