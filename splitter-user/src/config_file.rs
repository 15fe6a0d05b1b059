//! The config file: YAML text → a validated `splitter_model::config::Config`.
//! The only place that knows YAML. A value that does not parse is reported
//! with the field, the value as written and where it is.

use std::path::{Path, PathBuf};

use splitter_common::service::MAX_SERVICES;
use splitter_model::config::{Config, ConfigError, Quoted};
use thiserror::Error;

/// Each variant's message is whole: none carries a `source`, so printing the
/// error chain (`{e:#}`) does not repeat it.
#[derive(Debug, Error)]
pub enum ConfigFileError {
    #[error("cannot read config file {path}: {error}")]
    Read { path: PathBuf, error: std::io::Error },
    #[error("config file {path} is {what}, not a regular file: name the YAML file itself")]
    NotAFile { path: PathBuf, what: &'static str },
    #[error("config file {path} is over {MAX_CONFIG_BYTES} bytes; a config of {MAX_SERVICES} services is far smaller")]
    TooLarge { path: PathBuf },
    #[error("config is nested {MAX_NESTING} levels deep at line {line} (in [ ] and {{ }}); splitter's configs need a handful")]
    TooDeep { line: usize },
    /// The text is not YAML, or does not fit the model: serde's message, with
    /// the value written quoted (see `describe_yaml_error`).
    #[error("config is not valid YAML for splitter: {0}")]
    Syntax(String),
    #[error("{0}")]
    Invalid(String),
}

impl From<ConfigError> for ConfigFileError {
    fn from(e: ConfigError) -> Self {
        ConfigFileError::Invalid(e.to_string())
    }
}

/// Reading a config from its file or its text (`Config::load(path)` with
/// this trait in scope).
pub trait ConfigFile: Sized {
    /// Reads and validates a config file.
    fn load(path: &Path) -> Result<Self, ConfigFileError>;
    /// Parses and validates YAML text.
    fn from_yaml(text: &str) -> Result<Self, ConfigFileError>;
}

/// Largest config file read.
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;
/// Deepest nesting of flow collections (`[ ]`, `{ }`) a config may have:
/// the YAML parser's time grows with the square of it.
pub const MAX_NESTING: usize = 16;

impl ConfigFile for Config {
    /// Only a regular file (symlinks followed) of at most
    /// [`MAX_CONFIG_BYTES`] is read: a FIFO would block, `/dev/zero` never end.
    fn load(path: &Path) -> Result<Config, ConfigFileError> {
        use std::io::Read as _;
        let read = |error| ConfigFileError::Read { path: path.to_owned(), error };
        let meta = std::fs::metadata(path).map_err(read)?;
        if !meta.is_file() {
            let what = if meta.is_dir() { "a directory" } else { "a device, FIFO or socket" };
            return Err(ConfigFileError::NotAFile { path: path.to_owned(), what });
        }
        let mut text = String::new();
        let file = std::fs::File::open(path).map_err(read)?;
        file.take(MAX_CONFIG_BYTES + 1).read_to_string(&mut text).map_err(read)?;
        if text.len() as u64 > MAX_CONFIG_BYTES {
            return Err(ConfigFileError::TooLarge { path: path.to_owned() });
        }
        Config::from_yaml(&text)
    }

    fn from_yaml(text: &str) -> Result<Config, ConfigFileError> {
        check_nesting(text)?;
        let config: Config =
            serde_yaml_ng::from_str(text).map_err(|e| ConfigFileError::Syntax(describe_yaml_error(text, &e)))?;
        // A key written twice in a mapping (services, versions, weights...)
        // would silently take the later value: refused, as YAML says.
        if let Err(e) = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text) {
            return Err(ConfigFileError::Syntax(describe_yaml_error(text, &e)));
        }
        config.validate()?;
        Ok(config)
    }
}

/// Refuses flow collections nested deeper than [`MAX_NESTING`] before the
/// parser sees them.
fn check_nesting(text: &str) -> Result<(), ConfigFileError> {
    match flow_nesting(text.as_bytes(), MAX_NESTING) {
        (_, Some(at)) => {
            Err(ConfigFileError::TooDeep { line: 1 + text.as_bytes()[..at].iter().filter(|b| **b == b'\n').count() })
        }
        (_, None) => Ok(()),
    }
}

/// serde_yaml_ng's message for `err` on `text`, with the location as
/// `(line L, column C)` and, for a value that did not parse, the value as
/// written: `services.web.versions.v1[0]: invalid socket address syntax:
/// "10.78.1.300:7001" (line 7, column 12)`. Not quoted: unknown, missing or
/// duplicate fields, mappings and sequences, and text that is not YAML at all
/// (libyaml's message is kept whole).
fn describe_yaml_error(text: &str, err: &serde_yaml_ng::Error) -> String {
    // serde quotes the values it complains about whole: cut each short.
    let msg = shorten_quoted(&err.to_string());
    let Some(loc) = err.location() else { return cut(&msg, 300) };
    if serde_yaml_ng::from_str::<serde_yaml_ng::Value>(text).is_err() {
        return cut(&msg, 300);
    }
    let body = msg.strip_suffix(&format!(" at line {} column {}", loc.line(), loc.column())).unwrap_or(&msg);
    let body = &cut(body, 300);
    let at = format!("(line {}, column {})", loc.line(), loc.column());
    let not_a_value = ["unknown field `", "missing field `", "duplicate field `", "duplicate entry"]
        .iter()
        .any(|p| body.starts_with(p) || body.contains(&format!(": {p}")));
    match written_scalar(text, loc.index()).filter(|_| !not_a_value) {
        // serde already quoted it (`invalid type: string "abc", ...`).
        Some(v) if body.contains(&format!("{v:?}")) => format!("{body} {at}"),
        Some(v) => format!("{body}: {} {at}", Quoted(&v)),
        None => format!("{body} {at}"),
    }
}

/// Longest quoted value (in characters) an error message keeps whole.
const QUOTE_MAX: usize = 64;

/// `msg` with every double-quoted string in it (as serde writes values,
/// escapes and all) longer than [`QUOTE_MAX`] characters cut, saying how
/// long it was.
fn shorten_quoted(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len().min(1024));
    let mut rest = msg;
    while let Some(open) = rest.find('"') {
        out.push_str(&rest[..=open]);
        let after = &rest[open + 1..];
        // The closing quote: the first one no backslash escapes.
        let mut escaped = false;
        let close = after.char_indices().find_map(|(i, c)| {
            let end = c == '"' && !escaped;
            escaped = c == '\\' && !escaped;
            end.then_some(i)
        });
        let Some(close) = close else {
            out.push_str(after);
            return out;
        };
        let inner = &after[..close];
        match inner.char_indices().nth(QUOTE_MAX) {
            Some((at, _)) => {
                out.push_str(&inner[..at]);
                out.push_str(&format!("…\" ({} bytes)", inner.len()));
            }
            None => {
                out.push_str(inner);
                out.push('"');
            }
        }
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    out
}

/// `s` cut after `max` characters, saying how long it was.
fn cut(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_owned(),
        Some((at, _)) => format!("{}… ({} bytes)", &s[..at], s.len()),
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
/// plain scalar there ends at `,`, `]` or `}`.
fn in_flow(before: &[u8]) -> bool {
    flow_nesting(before, usize::MAX).0 > 0
}

/// Walks the flow collections (`[ ]`, `{ }`) of `text`, skipping comments
/// and quoted scalars, in one pass: the depth open at its end, and where the
/// depth first went past `limit` (if it did).
fn flow_nesting(text: &[u8], limit: usize) -> (usize, Option<usize>) {
    let mut depth = 0usize;
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'#' if i == 0 || text[i - 1].is_ascii_whitespace() => {
                while i < text.len() && text[i] != b'\n' {
                    i += 1;
                }
            }
            q @ (b'"' | b'\'') if opens_quoted(&text[..i]) => {
                i += quoted_end(&text[i..], q).map_or(text.len(), |end| end - 1);
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return (depth, Some(i));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    (depth, None)
}

/// Whether a quote after `before` opens a quoted scalar rather than sitting
/// inside a plain one (`don't`). Looks back only over the blanks before it.
fn opens_quoted(before: &[u8]) -> bool {
    let blanks = before.iter().rev().take_while(|c| matches!(c, b' ' | b'\t')).count();
    match before.len().checked_sub(blanks + 1).map(|p| before[p]) {
        None | Some(b'\n') => true,
        Some(c) => matches!(c, b'[' | b'{' | b',') || (blanks > 0 && matches!(c, b':' | b'-' | b'?')),
    }
}

/// The L7 issue's example service, verbatim (a whole file), for tests.
#[cfg(test)]
pub(crate) const L7_EXAMPLE: &str = r#"
interfaces: { clients: [eth0] }
services:
  api:
    listen: 203.0.113.10:8080
    protocol: tcp
    mode: l7
    versions:
      v1: [198.51.100.10:8081]
      v2: [198.51.100.20:8081]
      shadow: [198.51.100.30:8081]
    weights: { v1: 95, v2: 5 }
    routes:                          # first match wins; unmatched requests use the weights
      - match: { headers: { x-canary: "true" } }
        version: v2
      - match: { cookies: { beta: "1" }, path_prefix: /checkout }
        version: v2
      - match: { query: { preview: "on" }, methods: [GET] }
        version: v2
    affinity: { cookie: user }        # or { header: NAME } or client-ip; default: per request
    mirror: { version: shadow, percent: 10, compare: true }
"#;

#[cfg(test)]
mod tests {
    use std::{path::PathBuf, time::Duration};

    use splitter_model::config::*;

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
        let c = Config::from_yaml(L7_EXAMPLE).expect("L7 example");
        let api = &c.services["api"];
        assert_eq!(api.routes.len(), 3);
        assert_eq!(api.affinity, Some(Affinity::Cookie("user".into())));
        let m = api.l7_mirror().unwrap();
        assert_eq!((m.version.as_str(), m.percent, m.compare.enabled), ("shadow", 10.0, true));
        assert_eq!(m.methods, ["GET", "HEAD", "OPTIONS"]);
        let cases = [
            (
                L7_EXAMPLE.replace("version: v2\n      - match: { cookies", "version: v9\n      - match: { cookies"),
                "routes[0]: version \"v9\"",
            ),
            (L7_EXAMPLE.replace("x-canary: \"true\"", "x-canary: { regex: \"(\" }"), "bad regex"),
            (L7_EXAMPLE.replace("x-canary: \"true\"", "x-canary: { glob: \"*\" }"), "unknown value match \"glob\""),
            (L7_EXAMPLE.replace("methods: [GET]", "methods: [get]"), "unknown method \"get\""),
            (L7_EXAMPLE.replace("path_prefix: /checkout", "path_prefix: checkout"), "must start with '/'"),
            (L7_EXAMPLE.replace("percent: 10", "percent: 0"), "mirror.percent 0 is out of range"),
            (L7_EXAMPLE.replace("version: shadow,", "version: ghost,"), "mirror.version \"ghost\""),
            (L7_EXAMPLE.replace("mode: l7", "mode: l4"), "need mode l7"),
            (
                L7_EXAMPLE.replace("mode: l7", "mode: l4").replace("    affinity: { cookie: user }", ""),
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
        let mirror = |opts: &str| L7_EXAMPLE.replace("compare: true }", &format!("compare: true, {opts} }}"));
        let proxy = |opts: &str| format!("{}    proxy: {{ {opts} }}\n", L7_EXAMPLE);
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
    fn l7_settings_out_of_range_are_refused_and_defaults_filled() {
        let with = |l7: &str| format!("l7: {{ {l7} }}\n{L7_EXAMPLE}");
        for (l7, want) in [
            ("header_read_timeout: 10ms", "header_read_timeout 10ms is out of range: use 100ms to 5m"),
            ("drain_timeout: 11m", "drain_timeout 11m is out of range: use 0s to 10m"),
            ("idle_timeout: 500ms", "idle_timeout 500ms is out of range: use 1s to 1h"),
            ("max_header_bytes: 4096", "max_header_bytes 4096 is out of range: use 8192 to 1048576"),
            ("max_concurrent_streams: 0", "max_concurrent_streams 0 is out of range: use 1 to 10000"),
            ("idle_timeout: soon", "is not a duration"),
        ] {
            let msg = err(&with(l7));
            assert!(msg.contains("l7") && msg.contains(want), "want {want:?} in: {msg}");
        }
        let c = Config::from_yaml(L7_EXAMPLE).unwrap();
        assert_eq!(
            (c.l7.drain_timeout, c.l7.idle_timeout, c.l7.max_header_bytes, c.l7.max_concurrent_streams),
            (Duration::from_secs(30), Duration::from_secs(60), 65536, 256)
        );
        let c = Config::from_yaml(&with("drain_timeout: 0s, idle_timeout: 1h, max_concurrent_streams: 10000")).unwrap();
        assert_eq!((c.l7.drain_timeout, c.l7.idle_timeout), (Duration::ZERO, Duration::from_secs(3600)));
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
                L7_EXAMPLE.replace(r#"x-canary: "true""#, "x-canary: { exact: a, prefix: b }"),
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
    fn l7_services_share_an_address_only_told_apart_by_hosts() {
        let svc = |name: &str, more: &str| {
            format!("  {name}: {{listen: 10.0.0.1:80, protocol: tcp, mode: l7, versions: {{x: [10.0.1.1:80]}}, weights: {{x: 1}}{more}}}\n")
        };
        let file = |services: &[String]| format!("interfaces: {{clients: [eth0]}}\nservices:\n{}", services.concat());
        let tls = ", tls: {certificates: [{cert: /c.pem, key: /k.pem}]}";
        let ok = Config::from_yaml(&file(&[
            svc("a", ", hosts: [a.example.com, \"*.a.example.com\"]"),
            svc("b", ", hosts: [b.example.com]"),
            svc("c", ""),
        ]))
        .unwrap();
        assert_eq!(ok.services["a"].hosts, ["a.example.com", "*.a.example.com"]);
        for (services, want) in [
            (
                vec![svc("a", ", hosts: [a.example.com]"), svc("b", ", hosts: [A.example.com]")],
                "services.b: host \"A.example.com\" on 10.0.0.1:80 is already claimed by service \"a\"",
            ),
            (
                vec![svc("a", ""), svc("b", "")],
                "services.b: listen 10.0.0.1:80 is shared with service \"a\", and neither names its hosts",
            ),
            (
                vec![svc("a", ", hosts: [a.example.com]"), svc("b", &format!(", hosts: [b.example.com]{tls}"))],
                "one terminates TLS while the other does not",
            ),
            (
                vec![svc("a", ", hosts: [\"a.example.com:80\"]")],
                "services.a: hosts[0] \"a.example.com:80\": a host is matched without its port",
            ),
            (vec![svc("a", ", hosts: [\"*\"]")], "is not a host name"),
            (vec![svc("a", ", hosts: [\"a..b\"]")], "is not a host name"),
        ] {
            let msg = err(&file(&services));
            assert!(msg.contains(want), "want {want:?} in: {msg}");
        }
        // An l4 service never shares its address, and hosts need l7.
        let l4 =
            "  d: {listen: 10.0.0.1:80, protocol: tcp, versions: {x: [10.0.1.2:80]}, weights: {x: 1}}\n".to_string();
        let msg = err(&file(&[svc("a", ", hosts: [a.example.com]"), l4.clone()]));
        assert!(msg.contains("is already used by service \"a\" (only l7 services may share an address"), "{msg}");
        let msg = err(&file(&[l4.replace("weights: {x: 1}", "weights: {x: 1}, hosts: [d.example.com]")]));
        assert!(msg.contains("hosts: these need mode l7"), "{msg}");
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
    use splitter_model::config::*;

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

    #[test]
    fn announce_takes_an_interface_of_its_own_and_a_bounded_settle() {
        let ok =
            Config::from_yaml(&format!("interfaces: {{clients: [eth0]}}\nannounce: {{interface: splitter0}}\n{SVC}"))
                .unwrap();
        let a = ok.announce.expect("announce");
        assert_eq!((a.interface.as_str(), a.settle), ("splitter0", std::time::Duration::from_secs(2)));
        let err = |extra: &str| {
            Config::from_yaml(&format!("interfaces: {{clients: [eth0], backends: [eth1]}}\n{extra}\n{SVC}"))
                .unwrap_err()
                .to_string()
        };
        for (bad, want) in [
            ("announce: {interface: eth1}", "announce.interface \"eth1\" is lo, local_addresses.interface or a served"),
            ("announce: {interface: lo}", "announce.interface \"lo\""),
            ("announce: {interface: \"much-too-long-name\"}", "announce.interface"),
            ("announce: {interface: s0, settle: 10m}", "announce.settle"),
            ("announce: {interface: s0, settle: soon}", "announce.settle"),
            ("announce: {}", "interface"),
            ("announce: {interface: s0, bgp: true}", "unknown field `bgp`"),
        ] {
            let e = err(bad);
            assert!(e.contains(want), "{bad}: {e}");
        }
    }
}

#[cfg(test)]
mod hostile_tests {
    use super::*;

    const HEAD: &str = "interfaces: {clients: [eth0]}\nservices:\n";

    fn svc(name: &str, listen: &str, mode: &str, endpoint: &str) -> String {
        format!("  {name}: {{listen: \"{listen}\", protocol: tcp, mode: {mode}, versions: {{a: [\"{endpoint}\"]}}, weights: {{a: 1}}}}\n")
    }

    fn err(yaml: &str) -> String {
        Config::from_yaml(yaml).expect_err("refused").to_string()
    }

    /// `analysis:` and `control.http`: bad queries, URLs, durations and
    /// shares are refused naming the field.
    #[test]
    fn analysis_and_the_http_api_are_refused_naming_the_field() {
        let analysis = |metrics: &str, prometheus: &str| {
            err(&format!("interfaces: {{clients: [eth0]}}\nanalysis:\n  prometheus: {prometheus}\n  metrics:\n    conv: {metrics}\n"))
        };
        let prom = "{ url: \"http://127.0.0.1:9090\" }";
        for (metrics, prometheus, says) in [
            (
                "{ query: 'kpi{v=\"{{version}}\"}', min: 0.1 }",
                prom,
                "analysis.metrics.conv.query: {{version}} is not a variable",
            ),
            ("{ query: 'kpi{v=\"{{canary\"}', min: 0.1 }", prom, "analysis.metrics.conv.query: an unclosed {{"),
            ("{ query: '  ', min: 0.1 }", prom, "analysis.metrics.conv.query: it is empty"),
            ("{ query: 'kpi' }", prom, "analysis.metrics.conv.give min, max or baseline"),
            ("{ query: 'kpi', min: 2, max: 1 }", prom, "analysis.metrics.conv.min 2 is above max 1"),
            ("{ query: 'kpi', baseline: { max_drop: 150% } }", prom, "max_drop: 150% is out of range"),
            ("{ query: 'kpi', baseline: { max_drop: lots } }", prom, "max_drop: lots is not a share"),
            (
                "{ query: 'kpi', min: 1 }",
                "{ url: \"prom:9090\" }",
                "analysis.prometheus.url: \"prom:9090\" must start with http://",
            ),
            (
                "{ query: 'kpi', min: 1 }",
                "{ url: \"http://p:9090\", timeout: soon }",
                "analysis.prometheus.timeout: \"soon\" is not a duration",
            ),
            (
                "{ query: 'kpi', min: 1 }",
                "{ url: \"http://p:9090\", timeout: 5m }",
                "analysis.prometheus.timeout: use 1ms to 60s",
            ),
            ("{ query: 'kpi', min: 1, mx: 2 }", prom, "unknown field `mx`"),
        ] {
            let e = analysis(metrics, prometheus);
            assert!(e.contains(says), "{metrics} / {prometheus}: {e}");
        }
        let e = err("interfaces: {clients: [eth0]}\nanalysis: { metrics: { c: { query: x, min: 1 } } }\n");
        assert!(e.contains("analysis.metrics: they need prometheus"), "{e}");
        let hook = |h: &str| err(&format!("interfaces: {{clients: [eth0]}}\nanalysis:\n  webhooks:\n    gate: {h}\n"));
        for (h, says) in [
            ("{ kind: gate, url: \"http://h/\" }", "unknown variant `gate`"),
            (
                "{ kind: event, url: \"h:80/x\" }",
                "analysis.webhooks.gate.url: \"h:80/x\" must start with http:// or https://",
            ),
            (
                "{ kind: event, url: \"http://h/\", timeout: 1x }",
                "analysis.webhooks.gate.timeout: \"1x\" is not a duration",
            ),
            ("{ kind: event, url: \"http://h/\", retries: 99 }", "analysis.webhooks.gate.retries: 99 is too many"),
            (
                "{ kind: event, url: \"http://h/\", ca: /ca.pem }",
                "analysis.webhooks.gate.ca: \"/ca.pem\" is only for an https:// url",
            ),
        ] {
            let e = hook(h);
            assert!(e.contains(says), "{h}: {e}");
        }
        let e = err(
            "interfaces: {clients: [eth0]}\nanalysis:\n  prometheus: { url: \"https://p:9090\", bearer_token_file: token }\n",
        );
        assert!(e.contains("analysis.prometheus.bearer_token_file: \"token\" is not an absolute path"), "{e}");
        let http = |h: &str| err(&format!("interfaces: {{clients: [eth0]}}\ncontrol: {{ http: {h} }}\n"));
        let e = http("{ listen: \"127.0.0.1:9191\", token_file: token }");
        assert!(e.contains("control.http.token_file: \"token\" is not an absolute path"), "{e}");
        let e = http("{ listen: \"127.0.0.1:9191\", token_file: /t, tls: { certificates: [] } }");
        assert!(e.contains("control.http.tls.certificates: the list is empty"), "{e}");
        let e = http("{ listen: nowhere, token_file: /t }");
        assert!(e.contains("listen"), "{e}");
    }

    /// Found by the `config` fuzz target: a file that is one long scalar
    /// was refused with serde's message quoting all of it.
    #[test]
    fn values_serde_quotes_are_cut_short_in_every_error() {
        let huge = "fie#ointerfaci~\n\n\n".repeat(2000);
        let e = err(&huge);
        assert!(e.len() < 400, "{} bytes: {e}", e.len());
        assert!(e.contains("expected struct Config") && e.contains("bytes)"), "{e}");
        let e = err(&format!("interfaces: {{clients: [eth0]}}\nflow_table_size: \"{}\"\n", "9".repeat(5000)));
        assert!(e.len() < 400 && e.contains("flow_table_size"), "{} bytes: {e}", e.len());
        assert_eq!(shorten_quoted(r#"a "short" b "with \" quote""#), r#"a "short" b "with \" quote""#);
        let long = format!("x \"{}\" y", "é".repeat(100));
        assert_eq!(shorten_quoted(&long), format!("x \"{}…\" (200 bytes) y", "é".repeat(64)));
    }

    /// Found by the `config` fuzz target: the regex crate's syntax error
    /// repeats the whole pattern, over as many lines as it has.
    #[test]
    fn a_bad_regex_is_named_in_one_short_line() {
        let pattern = format!("({}", "ab\\n".repeat(300));
        let yaml = L7_EXAMPLE.replace("x-canary: \"true\"", &format!("x-canary: {{ regex: \"{pattern}\" }}"));
        let e = err(&yaml);
        assert!(e.len() < 400, "{} bytes: {e}", e.len());
        assert!(e.contains("bad regex") && e.contains("unclosed group") && !e.contains('\n'), "{e}");
    }

    #[test]
    fn what_the_kernel_or_the_proxy_cannot_serve_is_refused_by_validation() {
        // More l4 services than the kernel's tables hold.
        let many: String = (0..300)
            .map(|i| svc(&format!("s{i}"), &format!("10.0.{}.{}:80", i / 200, i % 200 + 1), "l4", "10.9.0.1:80"))
            .collect();
        let e = err(&format!("{HEAD}{many}"));
        assert!(e.contains("300 l4 services") && e.contains("at most 256"), "{e}");
        // l7 services do not count against it.
        let l7: String = (0..300)
            .map(|i| svc(&format!("s{i}"), &format!("10.0.{}.{}:80", i / 200, i % 200 + 1), "l7", "10.9.0.1:80"))
            .collect();
        Config::from_yaml(&format!("{HEAD}{l7}")).expect("300 l7 services");
        for mode in ["l4", "l7"] {
            let e = err(&format!("{HEAD}{}", svc("s", "203.0.113.10:80", mode, "203.0.113.10:80")));
            assert!(e.contains("is the service's own listen address"), "{mode}: {e}");
        }
        for listen in ["0.0.0.0:80", "255.255.255.255:80", "224.0.0.1:80", "[::]:80"] {
            let e = err(&format!(
                "{HEAD}{}",
                svc("s", listen, "l4", if listen.starts_with('[') { "[2001:db8::1]:80" } else { "10.0.0.1:80" })
            ));
            assert!(e.contains(&format!("listen {listen}")) && e.contains("no single host's"), "{e}");
        }
        let e = err(&format!("{HEAD}{}", svc("s", "203.0.113.10:80", "l4", "0.0.0.0:80")));
        assert!(e.contains("endpoint 0.0.0.0:80") && e.contains("unspecified"), "{e}");
    }

    #[test]
    fn a_key_written_twice_is_refused_not_silently_replaced() {
        let twice = format!(
            "{HEAD}{}{}",
            svc("s", "203.0.113.10:80", "l4", "10.0.0.1:80"),
            svc("s", "203.0.113.11:80", "l4", "10.0.0.2:80")
        );
        let e = err(&twice);
        assert!(e.contains("duplicate entry") && e.contains("line"), "{e}");
        let e = err("interfaces: {clients: [eth0]}\nservices:\n  s: {listen: 10.0.0.1:80, protocol: tcp, versions: {a: [10.0.1.1:80]}, weights: {a: 1, a: 0}}\n");
        assert!(e.contains("duplicate entry"), "{e}");
    }

    #[test]
    fn deep_nesting_huge_values_and_files_that_are_not_files_are_refused_quickly() {
        let started = std::time::Instant::now();
        let e = err(&format!("{HEAD}  s: {}", "[".repeat(100_000)));
        assert!(e.contains("nested 16 levels deep at line 3"), "{e}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "refused before parsing: {:?}",
            started.elapsed()
        );
        // A quoted bracket is not nesting.
        let quoted = format!("{HEAD}  s: {{listen: 10.0.0.1:80, protocol: tcp, versions: {{a: [10.0.1.1:80]}}, weights: {{a: 1}}, routes: []}}  # {}\n", "[".repeat(50));
        Config::from_yaml(&quoted).expect("brackets in a comment");
        // A 10 MB name is quoted cut, with its length: as a value, and as a
        // key (YAML's explicit form; plain keys stop at 1024 characters).
        let huge = "v".repeat(10 << 20);
        let as_value = format!("interfaces: {{clients: [{huge}]}}\n");
        let as_key = format!("{HEAD}  s:\n    listen: 10.0.0.1:80\n    protocol: tcp\n    versions:\n      ? {huge}\n      : [10.0.1.1:80]\n    weights: {{a: 1}}\n");
        for yaml in [as_value, as_key] {
            let e = err(&yaml);
            assert!(e.len() < 1000 && e.contains("(10485760 bytes)"), "{} bytes: {}", e.len(), &e[..e.len().min(300)]);
        }
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo.yaml");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let e = Config::load(&fifo).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let zero = dir.path().join("zero.yaml");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let e = Config::load(&zero).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let big = dir.path().join("big.yaml");
        std::fs::File::create(&big).unwrap().set_len(MAX_CONFIG_BYTES + 1).unwrap();
        let e = Config::load(&big).unwrap_err().to_string();
        assert!(e.contains("is over 4194304 bytes"), "{e}");
    }
}
