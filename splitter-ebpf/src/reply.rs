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

/// What a packet that has no flow of its own turned out to be.
pub enum Reply {
    /// Its source is no endpoint of any service: not a reply.
    NotEndpoint,
    /// A reply of the flow at this pointer into the flow table; `vip` holds
    /// the address its source becomes.
    Of(*mut FlowState),
    /// A reply whose flow's entry is gone (evicted, or the table resized):
    /// the endpoint serves this one VIP on that port (copied to `vip`).
    /// (Unless it is addressed to this host: `main.rs` asks the FIB first.)
    Orphan,
    /// An endpoint's packet that answers none of its flows and cannot be
    /// given a VIP: it serves several on that port, none with this flow.
    /// (Unless it is addressed to this host, as for `Orphan`.)
    Ambiguous,
}

/// What `key` (endpoint → client, with no flow of its own) is: the reply
/// of a flow to a VIP the endpoint serves (in `vip` the address its source
/// becomes), an orphan reply, or nothing of ours. One `BACKENDS` lookup.
///
/// The VIP is copied out rather than pointed at: whichever candidate
/// matched, the verifier then sees one state after the search (a pointer
/// would differ in its offset), not one per candidate.
#[inline(always)]
pub fn find(key: &FlowKey, vip: &mut ServiceKey) -> Reply {
    // SAFETY: a lookup; the value stays valid for the program run (RCU).
    let Some(backend) = (unsafe { SPLITTER_BACKENDS.get(ServiceKey::of_source(key)) }) else {
        return Reply::NotEndpoint;
    };
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
                copy(candidate, vip);
                return Reply::Of(state);
            }
        }
    }
    if count != 1 {
        return Reply::Ambiguous;
    }
    copy(&backend.vips[0], vip);
    Reply::Orphan
}

/// Field by field: a struct copy becomes a `memmove` call.
#[inline(always)]
fn copy(from: &ServiceKey, to: &mut ServiceKey) {
    for w in 0..4 {
        to.addr[w] = from.addr[w];
    }
    to.port = from.port;
    to.proto = from.proto;
    to.family = from.family;
}
