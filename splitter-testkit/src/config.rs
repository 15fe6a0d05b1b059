//! Agent configs for the demo, the tests and the benches, built instead of
//! written out: the interfaces of a topology, settings, and services, each
//! given by its listen address, protocol, mode, versions and weights plus
//! whatever else it needs as YAML. [`Config`] renders the YAML file the agent
//! reads (its `Display`), in a fixed shape, so a test may edit the written
//! file by replacing a line it rendered, e.g. `weights: { blue: 80, green: 20 }`.
//!
//! Only the shape is fixed here: the agent validates the rendered file like
//! any other, and the tests that need it to refuse something write that
//! YAML themselves.

use std::fmt::{self, Display, Write as _};

/// A whole config: comments, interfaces, top-level settings, services.
#[derive(Clone, Debug)]
pub struct Config {
    comments: Vec<String>,
    clients: Vec<String>,
    backends: Vec<String>,
    settings: Vec<String>,
    services: Vec<(String, Service)>,
}

impl Config {
    /// A config whose clients arrive on `clients` and whose backends live
    /// behind `backends` (none: the clients' interfaces serve both ways).
    pub fn new(clients: &[&str], backends: &[&str]) -> Config {
        let owned = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect();
        Config {
            comments: Vec::new(),
            clients: owned(clients),
            backends: owned(backends),
            settings: Vec::new(),
            services: Vec::new(),
        }
    }

    /// Adds `text` as `# ` comment lines at the top of the file.
    pub fn comment(mut self, text: &str) -> Config {
        self.comments.extend(text.lines().map(|l| format!("# {l}").trim_end().to_owned()));
        self
    }

    /// Adds top-level YAML (one or more keys, unindented) after `interfaces`,
    /// e.g. `metrics: { listen: "127.0.0.1:9190" }`.
    pub fn setting(mut self, yaml: &str) -> Config {
        self.settings.extend(yaml.lines().map(str::to_owned));
        self
    }

    /// Adds service `name`.
    pub fn service(mut self, name: &str, service: Service) -> Config {
        self.services.push((name.to_owned(), service));
        self
    }
}

impl Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.comments {
            writeln!(f, "{c}")?;
        }
        writeln!(f, "interfaces:\n  clients: [{}]", self.clients.join(", "))?;
        if !self.backends.is_empty() {
            writeln!(f, "  backends: [{}]", self.backends.join(", "))?;
        }
        for s in &self.settings {
            writeln!(f, "{s}")?;
        }
        if !self.services.is_empty() {
            writeln!(f, "services:")?;
        }
        for (name, service) in &self.services {
            f.write_str(&service.yaml(name))?;
        }
        Ok(())
    }
}

/// One service, rendered under `services:` as
///
/// ```yaml
///   NAME:
///     listen: LISTEN
///     protocol: tcp|udp
///     mode: l4|l7
///     versions:
///       VERSION: [ENDPOINT, ...]
///     weights: { VERSION: W, ... }
///     routes:                  # when `route` added any
///       - match: MATCHES
///         version: VERSION
///     ...what `with` added
/// ```
#[derive(Clone, Debug)]
pub struct Service {
    listen: String,
    protocol: &'static str,
    mode: &'static str,
    versions: Vec<(String, Vec<String>)>,
    weights: Vec<(String, u32)>,
    routes: Vec<(String, String)>,
    more: Vec<String>,
}

impl Service {
    fn new(listen: impl Display, protocol: &'static str, mode: &'static str) -> Service {
        Service {
            listen: yaml_addr(listen),
            protocol,
            mode,
            versions: Vec::new(),
            weights: Vec::new(),
            routes: Vec::new(),
            more: Vec::new(),
        }
    }

    /// A TCP service split in the kernel (`mode: l4`) on `listen` (`ip:port`).
    pub fn tcp(listen: impl Display) -> Service {
        Service::new(listen, "tcp", "l4")
    }

    /// A UDP service split in the kernel.
    pub fn udp(listen: impl Display) -> Service {
        Service::new(listen, "udp", "l4")
    }

    /// An HTTP service proxied by the agent (`mode: l7`).
    pub fn l7(listen: impl Display) -> Service {
        Service::new(listen, "tcp", "l7")
    }

    /// Adds version `name` with `endpoints` (`ip:port` each).
    pub fn version<E: Display>(mut self, name: &str, endpoints: impl IntoIterator<Item = E>) -> Service {
        self.versions.push((name.to_owned(), endpoints.into_iter().map(yaml_addr).collect()));
        self
    }

    /// Sets the weights, written in this order.
    pub fn weights(mut self, weights: &[(&str, u32)]) -> Service {
        self.weights = weights.iter().map(|(v, w)| ((*v).to_owned(), *w)).collect();
        self
    }

    /// Adds a route (l7): requests that match `matches` (what follows
    /// `match:`, e.g. `{ headers: { x-canary: "true" } }`) go to `version`.
    /// Routes keep the order they were added in: the first match wins.
    pub fn route(mut self, matches: &str, version: &str) -> Service {
        self.routes.push((matches.to_owned(), version.to_owned()));
        self
    }

    /// Adds more of the service as YAML (one or more keys, unindented), e.g.
    /// `mirror: { interface: lb-mirror, percent: 20 }` or a `routes:` list.
    pub fn with(mut self, yaml: &str) -> Service {
        self.more.extend(yaml.lines().filter(|l| !l.trim().is_empty()).map(str::to_owned));
        self
    }

    /// The service as it stands in a config under `services:`, named `name`.
    pub fn yaml(&self, name: &str) -> String {
        let mut out = format!(
            "  {name}:\n    listen: {}\n    protocol: {}\n    mode: {}\n",
            self.listen, self.protocol, self.mode
        );
        out += "    versions:\n";
        for (version, endpoints) in &self.versions {
            let _ = writeln!(out, "      {version}: [{}]", endpoints.join(", "));
        }
        let weights: Vec<String> = self.weights.iter().map(|(v, w)| format!("{v}: {w}")).collect();
        let _ = writeln!(out, "    weights: {{ {} }}", weights.join(", "));
        if !self.routes.is_empty() {
            out += "    routes:\n";
        }
        for (matches, version) in &self.routes {
            let _ = writeln!(out, "      - match: {matches}\n        version: {version}");
        }
        for line in &self.more {
            let _ = writeln!(out, "    {line}");
        }
        out
    }
}

/// An address as YAML: quoted when it starts with `[` (IPv6 with a port),
/// which YAML would read as a list.
fn yaml_addr(addr: impl Display) -> String {
    let text = addr.to_string();
    if text.starts_with('[') {
        format!("\"{text}\"")
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_interfaces_settings_and_services_in_a_fixed_shape() {
        let config = Config::new(&["c0"], &["b0", "b1"])
            .comment("a test")
            .setting("flow_aging: { sweep_secs: 1 }")
            .service(
                "web",
                Service::tcp("192.0.2.80:443")
                    .version("old", ["10.1.0.1:443"])
                    .version("new", ["10.2.0.1:443", "10.2.0.2:443"])
                    .weights(&[("old", 3), ("new", 1)])
                    .with("mirror: { interface: m0, percent: 5 }"),
            )
            .service(
                "web6",
                Service::l7("[2001:db8::80]:80")
                    .version("old", ["[2001:db8:a::1]:80"])
                    .weights(&[("old", 1)])
                    .route("{ cookies: { beta: \"1\" } }", "old")
                    .with("proxy: { connect_timeout_ms: 500 }\naffinity: client-ip\n"),
            );
        assert_eq!(
            config.to_string(),
            r#"# a test
interfaces:
  clients: [c0]
  backends: [b0, b1]
flow_aging: { sweep_secs: 1 }
services:
  web:
    listen: 192.0.2.80:443
    protocol: tcp
    mode: l4
    versions:
      old: [10.1.0.1:443]
      new: [10.2.0.1:443, 10.2.0.2:443]
    weights: { old: 3, new: 1 }
    mirror: { interface: m0, percent: 5 }
  web6:
    listen: "[2001:db8::80]:80"
    protocol: tcp
    mode: l7
    versions:
      old: ["[2001:db8:a::1]:80"]
    weights: { old: 1 }
    routes:
      - match: { cookies: { beta: "1" } }
        version: old
    proxy: { connect_timeout_ms: 500 }
    affinity: client-ip
"#
        );
        assert_eq!(Config::new(&["c0"], &[]).to_string(), "interfaces:\n  clients: [c0]\n", "no services, no key");
    }
}
