//! The L7 routing table, pure: a service's routes, weights and affinity
//! compiled into what a request is decided by. Built from the config (and the
//! previous table, so weight changes only move requests onto the versions that
//! gained, as in L4), swapped whole, never mutated.

use std::net::{IpAddr, SocketAddr};

use http::{HeaderMap, Method};
use regex::Regex;
use splitter_common::service::{BPS, RING_SIZE};

use splitter_model::{
    config::{
        l7::{Route, ValueMatch},
        Affinity, Service,
    },
    health,
    plan::{basis_points, slot_table, Previous},
};

/// A service's routing table.
#[derive(Debug)]
pub struct RouteTable {
    /// Version names, in index order (the config's order).
    pub versions: Vec<String>,
    /// Endpoints of each version, with a Maglev ring over them.
    pub targets: Vec<Target>,
    /// Basis points per version (sums to `BPS`).
    pub bps: Vec<u32>,
    /// Version index of every basis-point slot.
    pub slots: Box<[u8; BPS]>,
    routes: Vec<CompiledRoute>,
    affinity: Option<Affinity>,
    /// Which requests are copied to the mirror version, if any.
    pub mirror: Option<MirrorPlan>,
    /// How long an endpoint may take to answer (in the table, so a request
    /// sees the options of the table it was decided on).
    pub response_timeout: std::time::Duration,
    /// Failures in a row of an endpoint's requests that eject it
    /// (`health.passive`), if passive checks are on.
    pub passive_failures: Option<u32>,
}

/// The routing side of `mirror:`.
#[derive(Debug)]
pub struct MirrorPlan {
    /// Index of the mirror version.
    pub version: usize,
    /// Requests sampled, in basis points.
    pub bps: u32,
    pub methods: Vec<Method>,
    /// Largest body (request, and response to compare) copied.
    pub cap: usize,
    pub compare: bool,
}

/// One version's endpoints.
#[derive(Debug)]
pub struct Target {
    pub endpoints: Vec<SocketAddr>,
    /// Whether each endpoint is healthy (all are without `health:`).
    pub up: Vec<bool>,
    /// `RING_SIZE` slots → index into `endpoints`: over the healthy ones
    /// only, while some are down (`health::ring_over_healthy`).
    ring: Vec<u8>,
}

#[derive(Debug)]
struct CompiledRoute {
    headers: Vec<(http::HeaderName, Matcher)>,
    cookies: Vec<(String, Matcher)>,
    query: Vec<(String, Matcher)>,
    path_prefix: Option<String>,
    methods: Vec<Method>,
    version: usize,
}

#[derive(Debug)]
enum Matcher {
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

impl Matcher {
    fn compile(m: &ValueMatch) -> Result<Matcher, regex::Error> {
        Ok(match m {
            ValueMatch::Exact(s) => Matcher::Exact(s.clone()),
            ValueMatch::Prefix(s) => Matcher::Prefix(s.clone()),
            ValueMatch::Regex(re) => Matcher::Regex(Regex::new(re)?),
        })
    }

    fn is_match(&self, value: &str) -> bool {
        match self {
            Matcher::Exact(s) => value == s,
            Matcher::Prefix(s) => value.starts_with(s.as_str()),
            Matcher::Regex(re) => re.is_match(value),
        }
    }
}

/// What the table needs to know of a request.
pub struct RequestView<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub client: IpAddr,
}

/// Why a request went where it went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Route number `n` (0-based) matched.
    Route(usize),
    /// The weights, on the affinity key.
    Sticky,
    /// The weights, per request.
    Weighted,
}

/// Where a request goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub version: usize,
    /// Index into `targets[version].endpoints` (the first to try).
    pub endpoint: usize,
    pub reason: Reason,
}

impl Target {
    /// The endpoints a request tries, in order, from its ring's choice
    /// `first`: the healthy ones (the unhealthy after them, in case every
    /// healthy one fails to connect). `limit` attempts at most.
    pub fn attempts(&self, first: usize, limit: usize) -> impl Iterator<Item = SocketAddr> + '_ {
        let n = self.endpoints.len();
        let order = (0..n).map(move |i| (first + i) % n);
        order
            .clone()
            .filter(|i| self.up[*i])
            .chain(order.filter(|i| !self.up[*i]))
            .take(limit)
            .map(|i| self.endpoints[i])
    }

    /// The endpoint a hash (or random number) lands on.
    pub fn endpoint_for(&self, h: u64) -> SocketAddr {
        let i = self.ring.get(reduce((h >> 32) as u32, RING_SIZE)).map_or(0, |i| usize::from(*i));
        self.endpoints[i.min(self.endpoints.len() - 1)]
    }
}

impl RouteTable {
    /// Compiles `svc` with every endpoint healthy. `previous` is the table
    /// it replaces, if any.
    pub fn build(svc: &Service, previous: Option<Previous<'_>>) -> Result<RouteTable, regex::Error> {
        RouteTable::build_served(svc, previous, &|_| false)
    }

    /// Compiles `svc` as served with the endpoints `is_down` judges: rings
    /// over the healthy endpoints, and a version with none giving its share
    /// to the others (or keeping it), as the kernel's tables do
    /// (`splitter_model::health`). `bps` are the shares served.
    pub fn build_served(
        svc: &Service,
        previous: Option<Previous<'_>>,
        is_down: &dyn Fn(&SocketAddr) -> bool,
    ) -> Result<RouteTable, regex::Error> {
        let weights = svc.version_weights();
        let versions: Vec<String> = weights.iter().map(|(n, _)| (*n).to_owned()).collect();
        let mut bps = basis_points(&weights.iter().map(|(_, w)| *w).collect::<Vec<_>>());
        if bps.iter().all(|b| *b == 0) {
            // Validation forbids it; keep the table total anyway.
            bps[0] = BPS as u32;
        }
        // Without `health:` every endpoint serves.
        let checked = svc.health.is_some();
        let up: Vec<Vec<bool>> =
            svc.versions.values().map(|eps| eps.iter().map(|e| !(checked && is_down(e))).collect()).collect();
        if let Some(h) = &svc.health {
            let down: Vec<bool> = up.iter().map(|u| !u.iter().any(|x| *x)).collect();
            bps = health::served_bps(&bps, &down, h.when_version_down);
        }
        let names: Vec<&str> = versions.iter().map(String::as_str).collect();
        let previous = previous.map(|p| p.remap(&names));
        let slots = slot_table(&bps, previous.as_deref());
        let targets = svc
            .versions
            .values()
            .zip(up)
            .map(|(eps, up)| Target {
                endpoints: eps.clone(),
                ring: health::ring_over_healthy(&eps.iter().map(ToString::to_string).collect::<Vec<_>>(), &up),
                up,
            })
            .collect();
        let index = |v: &str| versions.iter().position(|n| n == v).expect("validated: routes name known versions");
        let routes = svc
            .routes
            .iter()
            .map(|r: &Route| {
                let m = &r.matches;
                let compile = |map: &std::collections::BTreeMap<String, ValueMatch>| {
                    map.iter().map(|(k, v)| Ok((k.clone(), Matcher::compile(v)?))).collect::<Result<Vec<_>, _>>()
                };
                Ok(CompiledRoute {
                    headers: compile(&m.headers)?
                        .into_iter()
                        .map(|(k, v)| (http::HeaderName::from_bytes(k.as_bytes()).expect("validated header name"), v))
                        .collect(),
                    cookies: compile(&m.cookies)?,
                    query: compile(&m.query)?,
                    path_prefix: m.path_prefix.clone(),
                    methods: m.methods.iter().map(|x| Method::from_bytes(x.as_bytes()).expect("validated")).collect(),
                    version: index(&r.version),
                })
            })
            .collect::<Result<Vec<_>, regex::Error>>()?;
        let mirror = svc.l7_mirror().map(|m| MirrorPlan {
            version: index(&m.version),
            bps: (m.percent * 100.0).round().clamp(1.0, BPS as f64) as u32,
            methods: m.methods.iter().map(|x| Method::from_bytes(x.as_bytes()).expect("validated")).collect(),
            cap: usize::try_from(m.max_body_bytes).unwrap_or(usize::MAX),
            compare: m.compare.enabled,
        });
        let response_timeout =
            std::time::Duration::from_millis(svc.proxy.clone().unwrap_or_default().response_timeout_ms);
        Ok(RouteTable {
            versions,
            targets,
            bps,
            slots,
            routes,
            affinity: svc.affinity.clone(),
            mirror,
            response_timeout,
            passive_failures: svc.health.as_ref().and_then(|h| h.passive.as_ref()).map(|p| p.consecutive_failures),
        })
    }

    /// This table as the previous one of the next.
    pub fn as_previous(&self) -> Previous<'_> {
        Previous { versions: &self.versions, slots: &self.slots }
    }

    /// Decides a request. `random` is a fresh random number, used when the
    /// request has no affinity key.
    pub fn decide(&self, req: &RequestView<'_>, random: u64) -> Decision {
        let key = self.affinity_key(req);
        let h = key.as_ref().map_or(random, |k| fnv1a(k));
        // Two independent draws from one 64-bit hash.
        let (vh, eh) = (h as u32, (h >> 32) as u32);
        let endpoint = |version: usize| {
            let t = &self.targets[version];
            t.ring.get(reduce(eh, RING_SIZE)).map_or(0, |i| usize::from(*i))
        };
        if let Some(i) = self.routes.iter().position(|r| r.matches(req)) {
            let version = self.routes[i].version;
            return Decision { version, endpoint: endpoint(version), reason: Reason::Route(i) };
        }
        let version = usize::from(self.slots[reduce(vh, BPS)]);
        let reason = if key.is_some() { Reason::Sticky } else { Reason::Weighted };
        Decision { version, endpoint: endpoint(version), reason }
    }

    fn affinity_key(&self, req: &RequestView<'_>) -> Option<Vec<u8>> {
        match self.affinity.as_ref()? {
            Affinity::ClientIp => Some(match req.client {
                IpAddr::V4(a) => a.octets().to_vec(),
                IpAddr::V6(a) => a.octets().to_vec(),
            }),
            Affinity::Header(name) => req.headers.get(name.as_str()).map(|v| v.as_bytes().to_vec()),
            Affinity::Cookie(name) => cookies(req.headers).find(|(k, _)| k == name).map(|(_, v)| v.as_bytes().to_vec()),
        }
    }
}

impl CompiledRoute {
    fn matches(&self, req: &RequestView<'_>) -> bool {
        if !self.methods.is_empty() && !self.methods.contains(req.method) {
            return false;
        }
        if let Some(p) = &self.path_prefix {
            if !req.path.starts_with(p.as_str()) {
                return false;
            }
        }
        let headers_ok = self
            .headers
            .iter()
            .all(|(name, m)| req.headers.get_all(name).iter().any(|v| v.to_str().is_ok_and(|v| m.is_match(v))));
        let cookies_ok =
            self.cookies.iter().all(|(name, m)| cookies(req.headers).any(|(k, v)| k == name && m.is_match(v)));
        let query_ok = self.query.iter().all(|(name, m)| {
            req.query.into_iter().flat_map(|q| q.split('&')).any(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                k == name && m.is_match(v)
            })
        });
        headers_ok && cookies_ok && query_ok
    }
}

/// `(name, value)` of every cookie in the `Cookie` headers.
fn cookies(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .map(|(k, v)| (k.trim(), v.trim().trim_matches('"')))
}

/// FNV-1a, 64-bit, finished with a murmur mix so both halves are uniform.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// `h` mapped uniformly onto `0..n` (multiply-shift, as the kernel does).
fn reduce(h: u32, n: usize) -> usize {
    ((u64::from(h) * n as u64) >> 32) as usize
}

#[cfg(test)]
mod tests {
    use splitter_model::config::Config;

    use super::*;
    use crate::config_file::ConfigFile as _;

    fn service(config: &str) -> Service {
        Config::from_yaml(config).unwrap().services["api"].clone()
    }

    /// The example plus a route with regex and prefix matches.
    fn api() -> String {
        crate::config_file::L7_EXAMPLE.replace(
            "    affinity: { cookie: user }",
            "      - match: { headers: { user-agent: { regex: \"^curl/\" }, x-team: { prefix: \"pay\" } } }\n        version: shadow\n    affinity: { cookie: user }",
        )
    }

    fn req<'a>(method: &'a Method, path: &'a str, query: Option<&'a str>, headers: &'a HeaderMap) -> RequestView<'a> {
        RequestView { method, path, query, headers, client: "192.0.2.1".parse().unwrap() }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (http::HeaderName::from_static(k), v.parse().unwrap())).collect()
    }

    #[test]
    fn routes_match_headers_cookies_query_path_and_methods() {
        let t = RouteTable::build(&service(&api()), None).unwrap();
        let v2 = t.versions.iter().position(|v| v == "v2").unwrap();
        let shadow = t.versions.iter().position(|v| v == "shadow").unwrap();
        let get = Method::GET;
        let post = Method::POST;
        let none = HeaderMap::new();
        let canary = headers(&[("x-canary", "true")]);
        let not_canary = headers(&[("x-canary", "yes")]);
        let beta = headers(&[("cookie", "a=b; beta=1; c=d")]);
        let curl = headers(&[("user-agent", "curl/8.0"), ("x-team", "payments")]);
        let curl_other_team = headers(&[("user-agent", "curl/8.0"), ("x-team", "search")]);
        let cases: Vec<(RequestView<'_>, Option<Reason>, Option<usize>)> = vec![
            (req(&get, "/", None, &canary), Some(Reason::Route(0)), Some(v2)),
            (req(&get, "/", None, &not_canary), None, None),
            (req(&get, "/checkout/cart", None, &beta), Some(Reason::Route(1)), Some(v2)),
            (req(&get, "/home", None, &beta), None, None),
            (req(&get, "/x", Some("a=1&preview=on"), &none), Some(Reason::Route(2)), Some(v2)),
            (req(&post, "/x", Some("preview=on"), &none), None, None),
            (req(&get, "/x", Some("preview=off"), &none), None, None),
            (req(&get, "/", None, &curl), Some(Reason::Route(3)), Some(shadow)),
            (req(&get, "/", None, &curl_other_team), None, None),
        ];
        for (i, (r, reason, version)) in cases.iter().enumerate() {
            let d = t.decide(r, 12345);
            match reason {
                Some(reason) => {
                    assert_eq!(d.reason, *reason, "case {i}");
                    assert_eq!(Some(d.version), *version, "case {i}");
                }
                None => assert_eq!(d.reason, Reason::Weighted, "case {i} must fall through to the weights"),
            }
        }
    }

    #[test]
    fn unmatched_requests_split_by_weight() {
        let t = RouteTable::build(&service(&api()), None).unwrap();
        let none = HeaderMap::new();
        let mut counts = [0usize; 3];
        let mut x = 1u64;
        for _ in 0..100_000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            counts[t.decide(&req(&Method::GET, "/", None, &none), x).version] += 1;
        }
        let v2 = t.versions.iter().position(|v| v == "v2").unwrap();
        let share = counts[v2] as f64 / 100_000.0;
        assert!((share - 0.05).abs() < 0.005, "v2 share {share}");
        let shadow = t.versions.iter().position(|v| v == "shadow").unwrap();
        assert_eq!(counts[shadow], 0, "weight 0 gets nothing");
    }

    #[test]
    fn sticky_users_stay_in_the_canary_as_it_grows() {
        let base = api();
        let mut prev: Option<RouteTable> = None;
        let users: Vec<HeaderMap> = (0..5000).map(|i| headers(&[("cookie", &format!("user=u{i}"))])).collect();
        let mut in_canary: Vec<bool> = vec![false; users.len()];
        for canary in [1, 5, 25, 50, 100] {
            let svc =
                service(&base.replace(
                    "weights: { v1: 95, v2: 5 }",
                    &format!("weights: {{ v1: {}, v2: {canary} }}", 100 - canary),
                ));
            let t = RouteTable::build(&svc, prev.as_ref().map(RouteTable::as_previous)).unwrap();
            let v2 = t.versions.iter().position(|v| v == "v2").unwrap();
            let mut n = 0;
            for (i, h) in users.iter().enumerate() {
                let d = t.decide(&req(&Method::GET, "/", None, h), i as u64);
                assert_eq!(d.reason, Reason::Sticky);
                // Deterministic per user (the random input is ignored).
                assert_eq!(t.decide(&req(&Method::GET, "/", None, h), 999), d);
                let now = d.version == v2;
                assert!(!in_canary[i] || now, "user {i} left the canary when it grew to {canary}%");
                in_canary[i] = now;
                n += usize::from(now);
            }
            let share = n as f64 / users.len() as f64;
            assert!((share - canary as f64 / 100.0).abs() < 0.03, "{canary}%: observed {share}");
            prev = Some(t);
        }
    }
}
