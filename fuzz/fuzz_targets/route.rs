//! l7 route matching (`l7::route`): a service whose routes and affinity the
//! fuzzer writes, and a request it makes up. A config that validation accepts
//! always compiles into a table (its regexes included); deciding never panics,
//! always lands on a real endpoint of a real version; a route's verdict and an
//! affinity key's verdict do not depend on the random number.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use arbitrary::Arbitrary;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use libfuzzer_sys::fuzz_target;
use splitter_model::config::Config;
use splitter_user::{
    config_file::ConfigFile as _,
    l7::route::{Reason, RequestView, RouteTable},
};

#[derive(Arbitrary, Debug)]
enum Field {
    Header,
    Cookie,
    Query,
}

#[derive(Arbitrary, Debug)]
enum How {
    Exact,
    Prefix,
    Regex,
}

#[derive(Arbitrary, Debug)]
struct Condition {
    field: Field,
    how: How,
    name: String,
    value: String,
}

#[derive(Arbitrary, Debug)]
struct RouteIn {
    conditions: Vec<Condition>,
    path_prefix: Option<String>,
    methods: Vec<String>,
    /// Which version (of three) the route sends to.
    version: u8,
}

#[derive(Arbitrary, Debug)]
enum AffinityIn {
    None,
    ClientIp,
    Header(String),
    Cookie(String),
}

#[derive(Arbitrary, Debug)]
struct Input {
    routes: Vec<RouteIn>,
    affinity: AffinityIn,
    weights: [u8; 3],
    method: String,
    path: String,
    query: Option<String>,
    headers: Vec<(String, Vec<u8>)>,
    client: Option<[u8; 16]>,
    randoms: [u64; 2],
}

const VERSIONS: [&str; 3] = ["v1", "v2", "v3"];

/// A YAML double-quoted scalar (JSON's escapes are YAML's).
fn quote(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

fn config(input: &Input) -> String {
    let mut y = String::from(
        "interfaces:\n  clients: [lo]\nservices:\n  api:\n    listen: 127.0.0.1:8080\n    protocol: tcp\n    mode: l7\n    versions:\n      \
         v1: [127.0.0.1:9001]\n      v2: [127.0.0.1:9002, 127.0.0.1:9003]\n      v3: [[::1]:9004]\n",
    );
    let w = input.weights;
    y += &format!("    weights: {{ v1: {}, v2: {}, v3: {} }}\n", w[0], w[1], w[2]);
    match &input.affinity {
        AffinityIn::None => {}
        AffinityIn::ClientIp => y += "    affinity: client-ip\n",
        AffinityIn::Header(h) => y += &format!("    affinity: {{ header: {} }}\n", quote(h)),
        AffinityIn::Cookie(c) => y += &format!("    affinity: {{ cookie: {} }}\n", quote(c)),
    }
    if !input.routes.is_empty() {
        y += "    routes:\n";
    }
    for r in input.routes.iter().take(8) {
        let mut parts = Vec::new();
        for (key, field) in [("headers", 0), ("cookies", 1), ("query", 2)] {
            let conds: Vec<String> = r
                .conditions
                .iter()
                .take(8)
                .filter(|c| matches!((&c.field, field), (Field::Header, 0) | (Field::Cookie, 1) | (Field::Query, 2)))
                .map(|c| {
                    let v = match c.how {
                        How::Exact => quote(&c.value),
                        How::Prefix => format!("{{ prefix: {} }}", quote(&c.value)),
                        How::Regex => format!("{{ regex: {} }}", quote(&c.value)),
                    };
                    format!("{}: {v}", quote(&c.name))
                })
                .collect();
            if !conds.is_empty() {
                parts.push(format!("{key}: {{ {} }}", conds.join(", ")));
            }
        }
        if let Some(p) = &r.path_prefix {
            parts.push(format!("path_prefix: {}", quote(p)));
        }
        if !r.methods.is_empty() {
            let m: Vec<String> = r.methods.iter().take(4).map(|m| quote(m)).collect();
            parts.push(format!("methods: [{}]", m.join(", ")));
        }
        y += &format!(
            "      - match: {{ {} }}\n        version: {}\n",
            parts.join(", "),
            VERSIONS[usize::from(r.version) % 3]
        );
    }
    y
}

fuzz_target!(|input: Input| {
    let yaml = config(&input);
    // What validation refuses is the config target's business.
    let Ok(config) = Config::from_yaml(&yaml) else { return };
    let svc = &config.services["api"];
    let table = RouteTable::build(svc, None)
        .unwrap_or_else(|e| panic!("validation accepted a service whose table does not build: {e}\n{yaml}"));

    let Ok(method) = Method::from_bytes(input.method.as_bytes()) else { return };
    let mut headers = HeaderMap::new();
    for (name, value) in input.headers.iter().take(16) {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_bytes(value)) {
            headers.append(n, v);
        }
    }
    let client = match input.client {
        None => IpAddr::V4(Ipv4Addr::LOCALHOST),
        Some(o) if o[0] & 1 == 0 => IpAddr::V4(Ipv4Addr::new(o[1], o[2], o[3], o[4])),
        Some(o) => IpAddr::V6(Ipv6Addr::from(o)),
    };
    let req =
        RequestView { method: &method, path: &input.path, query: input.query.as_deref(), headers: &headers, client };
    let [a, b] = input.randoms.map(|r| table.decide(&req, r));
    for d in [a, b] {
        assert!(d.version < table.versions.len(), "{d:?}");
        assert!(d.endpoint < table.targets[d.version].endpoints.len(), "{d:?}");
        if let Reason::Route(i) = d.reason {
            assert!(i < input.routes.len().min(8), "{d:?}");
        }
        if matches!(d.reason, Reason::Weighted) {
            assert!(table.bps[d.version] > 0, "weighted onto a version with no weight: {d:?}");
        }
    }
    match (a.reason, b.reason) {
        (Reason::Route(i), Reason::Route(j)) => assert!(i == j && a.version == b.version, "{a:?} {b:?}"),
        (Reason::Sticky, Reason::Sticky) => assert_eq!(a, b, "an affinity key's decision moved with the random number"),
        (Reason::Weighted, Reason::Weighted) => {}
        _ => panic!("the reason depends on the random number: {a:?} {b:?}"),
    }
});
