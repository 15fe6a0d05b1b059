//! Config → plan: the pure step that turns a service's versions, endpoints and
//! weights into the selection table the kernel indexes. No I/O; host-tested.
//!
//! * Weights resolve to basis points by largest remainder (they sum to 10,000).
//! * Versions own basis-point slots. The first table lays them out as
//!   cumulative ranges in version (name) order; every later table is derived
//!   from the previous one by moving the fewest slots: versions that lost
//!   weight give up their highest slots, versions that gained take them. So
//!   raising one version's weight only moves new flows onto it, and a flow
//!   hash that was in the canary's 1 % is still in it at 5 % and 25 %.
//! * Within a version, endpoints share a Maglev ring: each owns about
//!   RING_SIZE/N slots, and adding or removing one endpoint remaps about its
//!   share only.

use std::net::SocketAddr;

use splitter_common::{
    service::{
        Endpoint, SelectionTable, ServiceKey, BPS, MAX_ENDPOINTS, MAX_VERSIONS, RING_SIZE, SVC_AFFINITY_CLIENT_IP,
    },
    FAMILY_V4, FAMILY_V6,
};
use thiserror::Error;

use crate::config::{Affinity, Config, Mode, Service};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("service {service:?} has {n} versions; at most {MAX_VERSIONS} are supported")]
    TooManyVersions { service: String, n: usize },
    #[error("service {service:?} has {n} endpoints over all versions; at most {MAX_ENDPOINTS} are supported")]
    TooManyEndpoints { service: String, n: usize },
    #[error("service {service:?}: every version weighs 0, so new connections would have nowhere to go")]
    NoWeight { service: String },
}

/// The kernel's view of one service, ready to write.
#[derive(Clone)]
pub struct ServicePlan {
    pub name: String,
    pub key: ServiceKey,
    /// `SVC_*` flags for `ServiceRef`.
    pub flags: u32,
    /// Version names, in table index order.
    pub versions: Vec<String>,
    /// Basis points per version (same order), summing to `BPS`.
    pub bps: Vec<u32>,
    /// Where copies of mirrored flows go; the data path resolves it to the
    /// table's `mirror_ifindex` when it writes the table.
    pub mirror_interface: Option<String>,
    pub table: Box<SelectionTable>,
}

/// Address as the kernel stores it: raw network-order bytes read as native
/// `u32` words, IPv4 in word 0.
pub fn addr_words(addr: std::net::IpAddr) -> [u32; 4] {
    match addr {
        std::net::IpAddr::V4(a) => [splitter_common::flow::word(a.octets()), 0, 0, 0],
        std::net::IpAddr::V6(a) => splitter_common::flow::ipv6_words(a.octets()),
    }
}

fn family(addr: &SocketAddr) -> u8 {
    if addr.is_ipv4() {
        FAMILY_V4
    } else {
        FAMILY_V6
    }
}

/// An endpoint of a kernel table as the config writes it.
pub fn endpoint_addr(e: &Endpoint) -> SocketAddr {
    let bytes: Vec<u8> = e.addr.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let ip: std::net::IpAddr = if e.family == FAMILY_V4 {
        std::net::Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).into()
    } else {
        std::net::Ipv6Addr::from(<[u8; 16]>::try_from(bytes).expect("16 bytes")).into()
    };
    SocketAddr::new(ip, u16::from_be(e.port))
}

/// `addr:port/protocol` of a service or endpoint key, for messages.
pub fn describe_key(key: &ServiceKey) -> String {
    let bytes: Vec<u8> = key.addr.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let ip: std::net::IpAddr = if key.family == FAMILY_V4 {
        std::net::Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).into()
    } else {
        std::net::Ipv6Addr::from(<[u8; 16]>::try_from(bytes).expect("16 bytes")).into()
    };
    let proto = match key.proto {
        6 => "tcp".to_owned(),
        17 => "udp".to_owned(),
        p => format!("protocol {p}"),
    };
    format!("{}/{proto}", SocketAddr::new(ip, u16::from_be(key.port)))
}

/// The `SERVICES` key of a service.
pub fn service_key(svc: &Service) -> ServiceKey {
    ServiceKey {
        addr: addr_words(svc.listen.ip()),
        port: svc.listen.port().to_be(),
        proto: svc.protocol.number(),
        family: family(&svc.listen),
    }
}

/// Resolves relative weights to basis points summing to exactly `BPS`
/// (largest remainder; ties go to the earlier version). All-zero → all zero.
pub fn basis_points(weights: &[u32]) -> Vec<u32> {
    let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
    if total == 0 {
        return vec![0; weights.len()];
    }
    let exact: Vec<(u64, u64)> =
        weights.iter().map(|w| (u64::from(*w) * BPS as u64 / total, u64::from(*w) * BPS as u64 % total)).collect();
    let mut bps: Vec<u32> = exact.iter().map(|(q, _)| *q as u32).collect();
    let short = BPS as u32 - bps.iter().sum::<u32>();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    // Largest remainder first; stable sort keeps earlier versions first on ties.
    order.sort_by(|a, b| exact[*b].1.cmp(&exact[*a].1));
    for i in order.into_iter().take(short as usize) {
        bps[i] += 1;
    }
    bps
}

/// Assigns each basis-point slot a version so version `v` owns exactly
/// `bps[v]` slots, moving as few slots as possible from `previous`. Slots of
/// `previous` that name no version of `bps` (a version that is gone) are free.
pub fn slot_table(bps: &[u32], previous: Option<&[u8; BPS]>) -> Box<[u8; BPS]> {
    assert_eq!(bps.iter().sum::<u32>() as usize, BPS, "basis points must sum to {BPS}");
    let mut table = Box::new([0u8; BPS]);
    let Some(prev) = previous else {
        // First layout: cumulative ranges in version order.
        let mut start = 0usize;
        for (v, n) in bps.iter().enumerate() {
            table[start..start + *n as usize].fill(v as u8);
            start += *n as usize;
        }
        return table;
    };
    *table = *prev;
    let mut have = vec![0u32; bps.len()];
    for v in table.iter().filter(|v| usize::from(**v) < bps.len()) {
        have[*v as usize] += 1;
    }
    // Orphaned slots are free; versions over quota release their highest slots.
    let mut free = Vec::new();
    for slot in (0..BPS).rev() {
        let v = table[slot] as usize;
        if v >= bps.len() {
            free.push(slot);
        } else if have[v] > bps[v] {
            have[v] -= 1;
            free.push(slot);
        }
    }
    // Versions under quota take the lowest free slots, in version order.
    free.sort_unstable();
    let mut free = free.into_iter();
    for (v, want) in bps.iter().enumerate() {
        while have[v] < *want {
            let slot = free.next().expect("released slots equal missing slots");
            table[slot] = v as u8;
            have[v] += 1;
        }
    }
    table
}

/// FNV-1a, 64-bit: a stable hash of endpoint names for Maglev permutations.
fn fnv1a(bytes: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A Maglev lookup table of `RING_SIZE` slots over `names` (stable endpoint
/// identities); entry = index into `names`. Empty input → empty table.
pub fn maglev(names: &[String]) -> Vec<u8> {
    let m = RING_SIZE as u64;
    if names.is_empty() {
        return Vec::new();
    }
    let perm: Vec<(u64, u64)> =
        names.iter().map(|n| (fnv1a(n.as_bytes(), 0) % m, fnv1a(n.as_bytes(), 0x5bd1_e995) % (m - 1) + 1)).collect();
    let mut next = vec![0u64; names.len()];
    let mut table = vec![u8::MAX; RING_SIZE];
    let mut filled = 0;
    'fill: loop {
        for (i, (offset, skip)) in perm.iter().enumerate() {
            let mut c = (offset + next[i] * skip) % m;
            while table[c as usize] != u8::MAX {
                next[i] += 1;
                c = (offset + next[i] * skip) % m;
            }
            table[c as usize] = i as u8;
            next[i] += 1;
            filled += 1;
            if filled == RING_SIZE {
                break 'fill;
            }
        }
    }
    table
}

/// The slot table a service has now and the version names its indexes mean.
#[derive(Clone, Copy, Debug)]
pub struct Previous<'a> {
    pub versions: &'a [String],
    pub slots: &'a [u8; BPS],
}

impl Previous<'_> {
    /// The slots re-indexed for `versions` (matched by name); slots of
    /// versions that are gone become `u8::MAX` (free).
    pub fn remap(&self, versions: &[&str]) -> Box<[u8; BPS]> {
        let new_index: Vec<u8> = self
            .versions
            .iter()
            .map(|old| versions.iter().position(|v| v == old).map_or(u8::MAX, |i| i as u8))
            .collect();
        let mut out = Box::new([u8::MAX; BPS]);
        for (o, v) in out.iter_mut().zip(self.slots.iter()) {
            *o = new_index.get(usize::from(*v)).copied().unwrap_or(u8::MAX);
        }
        out
    }
}

impl ServicePlan {
    /// This plan as the previous table of the next one.
    pub fn as_previous(&self) -> Previous<'_> {
        Previous { versions: &self.versions, slots: &self.table.slot_version }
    }
}

/// Builds the plan of one service. `previous` is the table it has now, if
/// any, so a change moves the fewest flows (versions are matched by name).
pub fn plan_service(name: &str, svc: &Service, previous: Option<Previous<'_>>) -> Result<ServicePlan, PlanError> {
    let weights = svc.version_weights();
    if weights.len() > MAX_VERSIONS {
        return Err(PlanError::TooManyVersions { service: name.into(), n: weights.len() });
    }
    let n_endpoints: usize = svc.versions.values().map(Vec::len).sum();
    if n_endpoints > MAX_ENDPOINTS {
        return Err(PlanError::TooManyEndpoints { service: name.into(), n: n_endpoints });
    }
    let bps = basis_points(&weights.iter().map(|(_, w)| *w).collect::<Vec<_>>());
    if bps.iter().all(|b| *b == 0) {
        return Err(PlanError::NoWeight { service: name.into() });
    }
    let mut table: Box<SelectionTable> = bytemuck::zeroed_box();
    table.vip = service_key(svc);
    table.n_versions = weights.len() as u8;
    let names: Vec<&str> = weights.iter().map(|(n, _)| *n).collect();
    let previous = previous.map(|p| p.remap(&names));
    table.slot_version = *slot_table(&bps, previous.as_deref());
    let mut idx = 0usize;
    for (v, endpoints) in svc.versions.values().enumerate() {
        let first = idx;
        for ep in endpoints {
            table.endpoints[idx] =
                Endpoint { addr: addr_words(ep.ip()), port: ep.port().to_be(), version: v as u8, family: family(ep) };
            idx += 1;
        }
        let names: Vec<String> = endpoints.iter().map(ToString::to_string).collect();
        for (slot, local) in maglev(&names).into_iter().enumerate() {
            table.rings[v][slot] = (first + local as usize) as u8;
        }
    }
    table.n_endpoints = idx as u16;
    if let Some(m) = svc.l4_mirror() {
        table.mirror_bps = m.bps().min(BPS as u16);
    }
    Ok(ServicePlan {
        name: name.into(),
        key: table.vip,
        flags: if svc.affinity == Some(Affinity::ClientIp) { SVC_AFFINITY_CLIENT_IP } else { 0 },
        versions: weights.iter().map(|(n, _)| (*n).to_owned()).collect(),
        bps,
        mirror_interface: svc.l4_mirror().map(|m| m.interface.clone()),
        table,
    })
}

/// The kernel plans of every l4 service of `config`, each derived from the
/// table it has now (`previous(name)`, if any) so a change moves the fewest
/// flows. (l7 services are the proxy's.)
pub fn plan_all<'a>(
    config: &Config,
    previous: impl Fn(&str) -> Option<Previous<'a>>,
) -> Result<Vec<ServicePlan>, PlanError> {
    config
        .services
        .iter()
        .filter(|(_, svc)| svc.mode == Mode::L4)
        .map(|(name, svc)| plan_service(name, svc, previous(name)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use splitter_common::{
        flow_hash,
        service::{ring_slot, version_slot, SEED_ENDPOINT, SEED_VERSION},
        FlowKey,
    };

    #[test]
    fn basis_points_are_exact_and_sum_to_10000() {
        assert_eq!(basis_points(&[95, 5]), [9500, 500]);
        assert_eq!(basis_points(&[1, 99]), [100, 9900]);
        assert_eq!(basis_points(&[1, 1, 1]), [3334, 3333, 3333]);
        assert_eq!(basis_points(&[100, 0]), [10000, 0]);
        assert_eq!(basis_points(&[0, 0]), [0, 0]);
        assert_eq!(basis_points(&[u32::MAX, u32::MAX]), [5000, 5000]);
        for w in [[3u32, 7, 11], [1, 1, 10_000_000], [2, 3, 5]] {
            assert_eq!(basis_points(&w).iter().sum::<u32>(), 10_000, "{w:?}");
        }
    }

    #[test]
    fn keys_read_back_as_socket_addresses() {
        let v4 =
            ServiceKey { addr: addr_words("10.0.0.1".parse().unwrap()), port: 8080u16.to_be(), proto: 6, family: 4 };
        assert_eq!(describe_key(&v4), "10.0.0.1:8080/tcp");
        let v6 =
            ServiceKey { addr: addr_words("2001:db8::5".parse().unwrap()), port: 53u16.to_be(), proto: 17, family: 6 };
        assert_eq!(describe_key(&v6), "[2001:db8::5]:53/udp");
    }

    fn owned(table: &[u8; BPS], v: u8) -> usize {
        table.iter().filter(|x| **x == v).count()
    }

    #[test]
    fn first_layout_is_cumulative_ranges() {
        let t = slot_table(&[9500, 500], None);
        assert!(t[..9500].iter().all(|v| *v == 0) && t[9500..].iter().all(|v| *v == 1));
    }

    #[test]
    fn raising_the_canary_only_moves_slots_onto_it() {
        // stable, canary, other: the canary goes 1 % → 5 % → 25 % → 50 %.
        let mut prev = slot_table(&basis_points(&[89, 1, 10]), None);
        for canary in [5u32, 25, 50] {
            let next = slot_table(&basis_points(&[90 - canary, canary, 10]), Some(&prev));
            assert_eq!(owned(&next, 1), canary as usize * 100);
            for slot in 0..BPS {
                if prev[slot] != next[slot] {
                    assert_eq!(
                        next[slot], 1,
                        "slot {slot} moved from {} to {} (not onto the canary)",
                        prev[slot], next[slot]
                    );
                }
                if prev[slot] == 1 {
                    assert_eq!(next[slot], 1, "slot {slot} left the canary while its weight rose");
                }
            }
            // "other" was never touched.
            assert!((0..BPS).all(|s| (prev[s] == 2) == (next[s] == 2)));
            prev = next;
        }
    }

    #[test]
    fn a_flip_and_back_restores_the_layout() {
        let start = slot_table(&[8000, 2000], None);
        let flipped = slot_table(&[0, 10000], Some(&start));
        assert_eq!(owned(&flipped, 1), BPS);
        let back = slot_table(&[8000, 2000], Some(&flipped));
        assert_eq!(owned(&back, 0), 8000);
    }

    #[test]
    fn versions_are_matched_by_name_when_the_version_set_changes() {
        // blue/green at 80/20; then a version "alpha" sorts in front of both
        // (shifting every index) and "green" is removed.
        let start = slot_table(&[8000, 2000], None);
        let before = ["blue".to_owned(), "green".to_owned()];
        let prev = Previous { versions: &before, slots: &start };
        let remapped = prev.remap(&["alpha", "blue"]);
        let next = slot_table(&[2000, 8000], Some(&remapped));
        for slot in 0..BPS {
            if start[slot] == 0 {
                assert_eq!(next[slot], 1, "slot {slot}: blue's flows must stay on blue (now index 1)");
            } else {
                assert_eq!(next[slot], 0, "slot {slot}: green's freed slots go to alpha");
            }
        }
    }

    #[test]
    fn maglev_is_balanced_and_minimally_disrupted() {
        let names: Vec<String> = (0..10).map(|i| format!("198.51.100.{i}:8080")).collect();
        let t = maglev(&names);
        for i in 0..names.len() {
            let n = t.iter().filter(|x| **x as usize == i).count();
            let fair = RING_SIZE / names.len();
            assert!(n.abs_diff(fair) <= fair / 10 + 2, "endpoint {i} owns {n} slots, fair share {fair}");
        }
        // Remove endpoint 3: slots of the others should mostly stay put.
        let fewer: Vec<String> = names.iter().enumerate().filter(|(i, _)| *i != 3).map(|(_, n)| n.clone()).collect();
        let t2 = maglev(&fewer);
        let moved = (0..RING_SIZE).filter(|s| t[*s] != 3 && names[t[*s] as usize] != fewer[t2[*s] as usize]).count();
        assert!(moved < RING_SIZE / 20, "{moved} of {RING_SIZE} slots of surviving endpoints moved");
    }

    fn svc(yaml: &str) -> Service {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn plan_places_flows_in_proportion_to_weights() {
        let s = svc("{listen: 203.0.113.10:80, protocol: tcp, versions: {blue: [198.51.100.10:8080, 198.51.100.11:8080], green: [198.51.100.20:8080]}, weights: {blue: 80, green: 20}}");
        let p = plan_service("shop", &s, None).unwrap();
        assert_eq!(p.versions, ["blue", "green"]);
        assert_eq!(p.bps, [8000, 2000]);
        assert_eq!(p.table.n_endpoints, 3);
        // Place 20k flows exactly as the kernel does and count by endpoint.
        let mut per_ep = [0u32; 3];
        for i in 0..20_000u32 {
            let b = i.to_be_bytes();
            let k = FlowKey::v4([192, 0, b[2], b[3]], 1024 + (i % 60000) as u16, [203, 0, 113, 10], 80, 6);
            let v = p.table.slot_version[version_slot(flow_hash(&k, SEED_VERSION))] as usize;
            let e = p.table.rings[v][ring_slot(flow_hash(&k, SEED_ENDPOINT))] as usize;
            assert_eq!(p.table.endpoints[e].version as usize, v, "ring of version {v} points outside it");
            per_ep[e] += 1;
        }
        let green = per_ep[2] as f64 / 20_000.0;
        assert!((green - 0.2).abs() < 0.015, "green got {green}");
        assert!(per_ep[0].abs_diff(per_ep[1]) < 800, "blue endpoints unbalanced: {per_ep:?}");
        assert_eq!(p.table.endpoints[2].port, 8080u16.to_be());
        assert_eq!(p.key.port, 80u16.to_be());
    }

    #[test]
    fn plan_refuses_what_the_tables_cannot_hold() {
        let many: Vec<String> = (0..65).map(|i| format!("198.51.100.{}:80", i + 1)).collect();
        let s = svc(&format!(
            "{{listen: 203.0.113.10:80, protocol: tcp, versions: {{a: [{}]}}, weights: {{a: 1}}}}",
            many.join(",")
        ));
        assert!(matches!(plan_service("s", &s, None), Err(PlanError::TooManyEndpoints { n: 65, .. })));
    }
}
