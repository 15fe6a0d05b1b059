//! Recognising a reply: a packet from an endpoint to a client belongs to the
//! client's flow to a VIP the endpoint serves. `BACKENDS` lists those VIPs per
//! endpoint; the flow of (client → VIP) must have this endpoint as its
//! backend. One entry per flow serves both directions: a new flow inserts
//! once, and the flow table holds half the entries a reverse table would.

use splitter_common::{
    service::{FlowState, ServiceKey, MAX_SERVICES_PER_ENDPOINT},
    FlowKey,
};

use crate::maps::{SPLITTER_BACKENDS, SPLITTER_FLOWS};

/// What a packet from an endpoint's port with no flow entry is.
pub enum Orphan {
    /// Its source is no endpoint of any service: not a reply.
    NotEndpoint,
    /// A reply whose flow's entry is gone (evicted, or the table resized):
    /// the endpoint serves this one VIP on that port (copied to `vip`).
    Of,
    /// A reply that cannot be given back its VIP: the endpoint serves
    /// several on that port.
    Ambiguous,
}

/// Classifies a packet [`find`] found no flow for: whether its source is an
/// endpoint, and if so the one VIP it answers for (in `vip`).
#[inline(always)]
pub fn orphan(key: &FlowKey, vip: &mut ServiceKey) -> Orphan {
    // SAFETY: a lookup; the value stays valid for the program run (RCU).
    let Some(backend) = (unsafe { SPLITTER_BACKENDS.get(ServiceKey::of_source(key)) }) else {
        return Orphan::NotEndpoint;
    };
    if backend.count != 1 {
        return Orphan::Ambiguous;
    }
    let only = &backend.vips[0];
    for w in 0..4 {
        vip.addr[w] = only.addr[w];
    }
    vip.port = only.port;
    vip.proto = only.proto;
    vip.family = only.family;
    Orphan::Of
}

/// The flow `key` (endpoint → client) replies to, when its source is an
/// endpoint serving a flow of its destination: a pointer into the flow
/// table, and in `vip` the address its source becomes.
///
/// The VIP is copied out rather than pointed at: whichever candidate
/// matched, the verifier then sees one state after the search (a pointer
/// would differ in its offset), not one per candidate.
#[inline(always)]
pub fn find(key: &FlowKey, vip: &mut ServiceKey) -> Option<*mut FlowState> {
    // SAFETY: a lookup; the value stays valid for the program run (RCU).
    let backend = unsafe { SPLITTER_BACKENDS.get(ServiceKey::of_source(key)) }?;
    let count = backend.count as usize;
    for i in 0..MAX_SERVICES_PER_ENDPOINT {
        if i >= count {
            break;
        }
        let candidate = &backend.vips[i];
        let client = FlowKey {
            src_addr: key.dst_addr,
            dst_addr: candidate.addr,
            src_port: key.dst_port,
            dst_port: candidate.port,
            proto: key.proto,
            family: key.family,
            _pad: [0; 2],
        };
        if let Some(state) = SPLITTER_FLOWS.get_ptr_mut(client) {
            // SAFETY: the map's value, read only here.
            let s = unsafe { &*state };
            if s.backend == key.src_addr && s.backend_port == key.src_port {
                // Field by field: a struct copy becomes a `memmove` call.
                for w in 0..4 {
                    vip.addr[w] = candidate.addr[w];
                }
                vip.port = candidate.port;
                vip.proto = candidate.proto;
                vip.family = candidate.family;
                return Some(state);
            }
        }
    }
    None
}
