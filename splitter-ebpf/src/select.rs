//! Placing a new flow: hash it, index the service's userspace-built tables.
//! No weights or arithmetic on them here; the tables already encode both.

use splitter_common::{
    flow_hash,
    service::{
        ring_slot, version_slot, Endpoint, SelectionTable, ServiceRef, MAX_ENDPOINTS, MAX_VERSIONS, SEED_ENDPOINT,
        SEED_VERSION, SVC_AFFINITY_CLIENT_IP,
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

/// The endpoint a new flow of `svc` goes to, and its index in the table.
#[inline(always)]
pub fn place(key: &FlowKey, svc: &ServiceRef) -> Result<(Endpoint, u8), NoPlace> {
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
    Ok((table.endpoints[idx], idx as u8))
}
