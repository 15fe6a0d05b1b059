//! What `BACKENDS` must hold: for each endpoint address, the VIPs whose flows
//! it answers. The kernel recognises a reply by it (an endpoint's packet to a
//! client belongs to the client's flow to one of these VIPs), so an endpoint
//! stays listed while flows to it live, also after it left the config; a
//! sweep of the flow table finds which. Pure: plans and flows in, the map's
//! content and the writes out.

use std::collections::{BTreeMap, BTreeSet};

use bytemuck::Zeroable;
use splitter_common::{
    service::{BackendVips, FlowState, ServiceKey, MAX_SERVICES_PER_ENDPOINT},
    FlowKey,
};

use crate::plan::ServicePlan;

/// Endpoint address → the VIPs it answers for.
pub type Backends = BTreeMap<ServiceKey, BTreeSet<ServiceKey>>;

/// The endpoints of the planned services and the VIPs each serves.
pub fn of_plans(plans: &[ServicePlan]) -> Backends {
    let mut backends = Backends::new();
    for plan in plans {
        let n = usize::from(plan.table.n_endpoints).min(plan.table.endpoints.len());
        for ep in &plan.table.endpoints[..n] {
            let key = ServiceKey { addr: ep.addr, port: ep.port, proto: plan.key.proto, family: ep.family };
            backends.entry(key).or_default().insert(plan.key);
        }
    }
    backends
}

/// The (endpoint, VIP) pair a live flow needs listed.
pub fn of_flow(key: &FlowKey, state: &FlowState) -> (ServiceKey, ServiceKey) {
    let endpoint = ServiceKey { addr: state.backend, port: state.backend_port, proto: key.proto, family: key.family };
    (endpoint, ServiceKey::of_flow(key))
}

/// What the map should hold: the config's pairs, then those of live flows
/// (endpoints that left the config, or a service that did), at most
/// `MAX_SERVICES_PER_ENDPOINT` VIPs per endpoint. Returns the pairs left out
/// for want of room: replies of their flows are no longer rewritten.
pub fn merge(config: &Backends, live: &Backends) -> (Backends, Vec<(ServiceKey, ServiceKey)>) {
    let mut merged = config.clone();
    let mut left_out = Vec::new();
    for (endpoint, vips) in live {
        let listed = merged.entry(*endpoint).or_default();
        for vip in vips {
            if listed.contains(vip) {
                continue;
            }
            if listed.len() < MAX_SERVICES_PER_ENDPOINT {
                listed.insert(*vip);
            } else {
                left_out.push((*endpoint, *vip));
            }
        }
    }
    (merged, left_out)
}

/// The map value listing `vips` (in order; at most the first
/// `MAX_SERVICES_PER_ENDPOINT`).
pub fn value(vips: &BTreeSet<ServiceKey>) -> BackendVips {
    let mut v = BackendVips::zeroed();
    for (slot, vip) in v.vips.iter_mut().zip(vips) {
        *slot = *vip;
        v.count += 1;
    }
    v
}

/// The VIPs a map value lists (the inverse of [`value`]).
pub fn listed(v: &BackendVips) -> BTreeSet<ServiceKey> {
    v.vips.iter().take(v.count as usize).copied().collect()
}

/// The writes that turn the map's content `have` into `want`: entries to
/// write (new or changed) and endpoints to remove.
pub fn diff(have: &Backends, want: &Backends) -> (Vec<(ServiceKey, BackendVips)>, Vec<ServiceKey>) {
    let writes = want.iter().filter(|(ep, vips)| have.get(ep) != Some(vips)).map(|(ep, vips)| (*ep, value(vips)));
    let removals = have.keys().filter(|ep| !want.contains_key(ep)).copied();
    (writes.collect(), removals.collect())
}

#[cfg(test)]
mod tests {
    use splitter_common::service::FLOW_MIRROR;

    use super::*;
    use crate::plan::plan_all;

    fn key(addr: [u8; 4], port: u16) -> ServiceKey {
        ServiceKey { addr: [u32::from_ne_bytes(addr), 0, 0, 0], port: port.to_be(), proto: 6, family: 4 }
    }

    const CONFIG: &str = r#"
interfaces: { clients: [eth0] }
services:
  web:
    listen: 203.0.113.10:80
    protocol: tcp
    versions: { blue: [10.0.0.1:8080, 10.0.0.2:8080], green: [10.0.0.3:8080] }
    weights: { blue: 1 }
  api:
    listen: 203.0.113.11:80
    protocol: tcp
    versions: { v1: [10.0.0.1:8080] }
    weights: { v1: 1 }
  dns:
    listen: 203.0.113.12:53
    protocol: udp
    versions: { v1: [10.0.0.1:8080] }
    weights: { v1: 1 }
"#;

    fn plans(text: &str) -> Vec<ServicePlan> {
        let config = crate::config::from_yaml(text).expect("config");
        plan_all(&config, |_| None).expect("plans")
    }

    #[test]
    fn every_endpoint_of_every_version_lists_its_services() {
        let b = of_plans(&plans(CONFIG));
        let (web, api) = (key([203, 0, 113, 10], 80), key([203, 0, 113, 11], 80));
        // Weight 0 (green) still has its endpoint listed: weights move, flows stay.
        assert_eq!(b[&key([10, 0, 0, 3], 8080)], BTreeSet::from([web]));
        assert_eq!(b[&key([10, 0, 0, 2], 8080)], BTreeSet::from([web]));
        assert_eq!(b[&key([10, 0, 0, 1], 8080)], BTreeSet::from([web, api]), "shared by two tcp services");
        // The udp service's endpoint is another key (the protocol differs).
        let udp = ServiceKey { proto: 17, ..key([10, 0, 0, 1], 8080) };
        assert_eq!(b[&udp], BTreeSet::from([ServiceKey { proto: 17, ..key([203, 0, 113, 12], 53) }]));
        assert_eq!(b.len(), 4);
    }

    #[test]
    fn a_flow_names_its_endpoint_and_vip() {
        let flow = FlowKey::v4([192, 0, 2, 1], 40000, [203, 0, 113, 10], 80, 6);
        let state = FlowState {
            backend: [u32::from_ne_bytes([10, 0, 0, 9]), 0, 0, 0],
            backend_port: 8080u16.to_be(),
            flags: FLOW_MIRROR,
            ..bytemuck::Zeroable::zeroed()
        };
        assert_eq!(of_flow(&flow, &state), (key([10, 0, 0, 9], 8080), key([203, 0, 113, 10], 80)));
    }

    #[test]
    fn live_flows_keep_a_removed_endpoint_until_they_are_gone() {
        let config = of_plans(&plans(CONFIG));
        let gone = key([10, 0, 0, 9], 8080);
        let web = key([203, 0, 113, 10], 80);
        let live = Backends::from([(gone, BTreeSet::from([web])), (key([10, 0, 0, 1], 8080), BTreeSet::from([web]))]);
        let (want, left_out) = merge(&config, &live);
        assert!(left_out.is_empty());
        assert_eq!(want[&gone], BTreeSet::from([web]));
        assert_eq!(want.len(), config.len() + 1);
        // The kernel has it; the last flow goes: the next sweep removes it.
        let (writes, removals) = diff(&want, &merge(&config, &Backends::new()).0);
        assert!(writes.is_empty());
        assert_eq!(removals, vec![gone]);
    }

    #[test]
    fn the_config_wins_when_an_endpoint_runs_out_of_room() {
        let ep = key([10, 0, 0, 1], 8080);
        let vip = |i: u8| key([203, 0, 113, i], 80);
        let config = Backends::from([(ep, (1..=4).map(vip).collect())]);
        let live = Backends::from([(ep, BTreeSet::from([vip(1), vip(9)]))]);
        let (want, left_out) = merge(&config, &live);
        assert_eq!(want[&ep], config[&ep]);
        assert_eq!(left_out, vec![(ep, vip(9))]);
    }

    #[test]
    fn values_list_the_vips_in_order_and_diffs_write_only_changes() {
        let ep = key([10, 0, 0, 1], 8080);
        let vips: BTreeSet<_> = [key([203, 0, 113, 11], 80), key([203, 0, 113, 10], 80)].into();
        let v = value(&vips);
        assert_eq!(v.count, 2);
        assert_eq!(v.vips[0], key([203, 0, 113, 10], 80));
        assert_eq!(v.vips[1], key([203, 0, 113, 11], 80));
        assert_eq!(v.vips[2], bytemuck::Zeroable::zeroed());
        assert_eq!(listed(&v), vips);
        let have = Backends::from([(ep, vips.clone())]);
        assert_eq!(diff(&have, &have), (vec![], vec![]));
        let mut want = have.clone();
        want.get_mut(&ep).unwrap().insert(key([203, 0, 113, 12], 80));
        let (writes, removals) = diff(&have, &want);
        assert_eq!((writes.len(), writes[0].0, writes[0].1.count), (1, ep, 3));
        assert!(removals.is_empty());
    }
}
