//! Flow aging: which kernel flow entries the agent removes, and what a sweep
//! reports.
//!
//! The kernel stamps every flow with the coarse monotonic time of its last
//! packet either way and marks it closing on a client FIN or an endpoint
//! RST; a client RST removes it at once. Every `flow_aging.sweep_secs` the
//! agent removes flows idle longer than their protocol's timeout (closing
//! TCP flows: `closing_secs`). When the table is full the LRU evicts the
//! least recently used entries anyway; a flow whose entry is gone is placed
//! again by the current tables at its next packet (counted as `adopted`).

use splitter_common::service::{FlowState, FLOW_CLOSING};

use crate::config::FlowAging;

/// Whether a flow of protocol `proto` last seen at `state.last_seen_ns` has
/// expired at `now_ns`.
pub fn expired(state: &FlowState, proto: u8, now_ns: u64, aging: &FlowAging) -> bool {
    let timeout = if proto == 6 {
        if state.flags & FLOW_CLOSING != 0 {
            aging.closing_secs
        } else {
            aging.tcp_idle_secs
        }
    } else {
        aging.udp_idle_secs
    };
    now_ns.saturating_sub(state.last_seen_ns) > timeout * 1_000_000_000
}

/// What one sweep did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sweep {
    pub examined: u64,
    pub removed: u64,
    /// Flows left in the table, by service name.
    pub remaining: std::collections::BTreeMap<String, u64>,
}

/// Fill of the flow table above which the agent warns and `status` says so.
pub const FLOW_TABLE_WARN: f64 = 0.8;

/// Whether `entries` of `capacity` is above [`FLOW_TABLE_WARN`] (false when
/// the capacity is unknown).
pub fn flow_table_high(entries: u64, capacity: u64) -> bool {
    capacity > 0 && entries as f64 / capacity as f64 > FLOW_TABLE_WARN
}

/// What a sweep that found `entries` (of `capacity`) has to say, after the
/// last one found `before`: once on the way above the warning level, once
/// on the way back below. `Some(true)`: it went above; `Some(false)`: below.
pub fn flow_table_crossed(before: Option<u64>, entries: u64, capacity: u64) -> Option<bool> {
    let was = before.is_some_and(|n| flow_table_high(n, capacity));
    let now = flow_table_high(entries, capacity);
    (was != now).then_some(now)
}

#[cfg(test)]
mod tests {
    use bytemuck::Zeroable;

    use super::*;

    #[test]
    fn the_flow_table_warning_is_said_once_each_way() {
        assert_eq!(flow_table_crossed(None, 900, 1000), Some(true), "the first sweep already above");
        assert_eq!(flow_table_crossed(Some(900), 950, 1000), None);
        assert_eq!(flow_table_crossed(Some(950), 700, 1000), Some(false));
        assert_eq!(flow_table_crossed(Some(700), 800, 1000), None, "80 % is not above 80 %");
        assert_eq!(flow_table_crossed(None, 10, 0), None, "unknown capacity");
    }

    const S: u64 = 1_000_000_000;

    fn flow(last_seen_s: u64, flags: u8) -> FlowState {
        FlowState { last_seen_ns: last_seen_s * S, flags, ..FlowState::zeroed() }
    }

    #[test]
    fn timeouts_by_protocol_and_state() {
        let a = FlowAging { tcp_idle_secs: 900, udp_idle_secs: 120, closing_secs: 10, sweep_secs: 5 };
        let now = 10_000 * S;
        assert!(!expired(&flow(10_000 - 899, 0), 6, now, &a), "TCP idle under its timeout");
        assert!(expired(&flow(10_000 - 901, 0), 6, now, &a), "TCP idle past its timeout");
        assert!(!expired(&flow(10_000 - 119, 0), 17, now, &a), "UDP under its timeout");
        assert!(expired(&flow(10_000 - 121, 0), 17, now, &a), "UDP past its timeout");
        assert!(expired(&flow(10_000 - 11, FLOW_CLOSING), 6, now, &a), "closing TCP flow after closing_secs");
        assert!(!expired(&flow(10_000 - 9, FLOW_CLOSING), 6, now, &a));
        // A stamp from the future (clock read races) never expires.
        assert!(!expired(&flow(10_001, 0), 17, now, &a));
    }
}
