//! `splitter demo`: the embedded default config on a namespace topology the
//! command builds itself (client → lb → blue/green), real traffic, the split
//! it produced, and a clean teardown.

/// The demo's desired state. Interface names match the topology `demo` builds.
pub const DEMO_CONFIG: &str = r#"# splitter demo: one TCP service, 80 % blue / 20 % green.
interfaces:
  clients: [lb-client]
  backends: [lb-blue, lb-green]
services:
  shop:
    listen: 203.0.113.10:80
    protocol: tcp
    mode: l4
    versions:
      blue:  [198.51.100.10:8080]
      green: [198.51.100.20:8080]
    weights: { blue: 80, green: 20 }
"#;
