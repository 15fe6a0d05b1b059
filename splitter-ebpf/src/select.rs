//! Placing a new flow: hash it, index the service's userspace-built tables.
//! No weights or arithmetic on them here; the tables already encode both.

use splitter_common::{
    flow_hash,
    service::{
        mirror_sampled, ring_slot, version_slot, Endpoint, SelectionTable, ServiceRef, MAX_ENDPOINTS, MAX_VERSIONS,
        SEED_ENDPOINT, SEED_VERSION, SVC_AFFINITY_CLIENT_IP,
    },
    FlowKey,
};

use crate::maps::SPLITTER_TABLES;

/// Why a service packet could not be placed.
pub enum NoPlace {
    /// The service points at a table generation that does not exist or does
    /// not belong to it, or holds an out-of-range index.
    BadTable,
}

/// Where a new flow goes.
pub struct Placed {
    pub endpoint: Endpoint,
    /// The endpoint's index in the table (for its counters).
    pub index: u8,
    /// The interface its copies leave by when the flow is sampled for
    /// mirroring; 0 when it is not.
    pub mirror_ifindex: u32,
}

/// The endpoint a new flow of `svc` goes to, and whether it is mirrored.
#[inline(always)]
pub fn place(key: &FlowKey, svc: &ServiceRef) -> Result<Placed, NoPlace> {
    let table: &SelectionTable = SPLITTER_TABLES.get(svc.table).ok_or(NoPlace::BadTable)?;
    if table.vip.addr != key.dst_addr || table.vip.port != key.dst_port || table.vip.proto != key.proto {
        return Err(NoPlace::BadTable);
    }
    let hkey = if svc.flags & SVC_AFFINITY_CLIENT_IP != 0 {
        // Only the client address (and family) counts.
        FlowKey {
            src_addr: key.src_addr,
            dst_addr: [0; 4],
            src_port: 0,
            dst_port: 0,
            proto: 0,
            family: key.family,
            _pad: [0; 2],
        }
    } else {
        *key
    };
    let slot = version_slot(flow_hash(&hkey, SEED_VERSION));
    let version = table.slot_version[slot] as usize;
    if version >= MAX_VERSIONS {
        return Err(NoPlace::BadTable);
    }
    let ring = ring_slot(flow_hash(&hkey, SEED_ENDPOINT));
    let idx = table.rings[version][ring] as usize;
    if idx >= MAX_ENDPOINTS || idx >= table.n_endpoints as usize {
        return Err(NoPlace::BadTable);
    }
    // Sampled per flow (the 5-tuple even under client-ip affinity).
    let mirror_ifindex =
        if table.mirror_ifindex != 0 && mirror_sampled(key, table.mirror_bps) { table.mirror_ifindex } else { 0 };
    Ok(Placed { endpoint: table.endpoints[idx], index: idx as u8, mirror_ifindex })
}
