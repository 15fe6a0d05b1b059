//! Rare events worth a line in the agent's log (aya-log), rate-limited per
//! CPU and event kind; every occurrence is counted in `SPLITTER_STATS` anyway.
//!
//! Where an event happens, [`note`] only records it in this CPU's slot of the
//! gate map and marks the verdict with [`PENDING`]; the entry point then calls
//! [`flush`] once. Logging from one call site, where little verifier state is
//! live, keeps the verifier's work (and the normal path) unchanged.

use aya_ebpf::programs::XdpContext;
use aya_log_ebpf::{error, warn};
use splitter_common::service::{LOG_EVENTS, LOG_EVERY_NS};

use crate::maps::SPLITTER_LOG_GATE;

/// A kind of rare event (its slot in the gate map).
#[derive(Clone, Copy)]
#[repr(u32)]
pub enum Event {
    /// A service points at a table that is missing or not its own.
    BadTable = 0,
    /// The flow table refused an insert.
    FlowInsert = 1,
}

/// Gate-map slot holding the event to log: `(kind + 1) << 32 | arg`, 0 = none.
const PENDING_SLOT: u32 = LOG_EVENTS - 1;

/// Bit set in a verdict when an event waits in this CPU's pending slot.
pub const PENDING: u32 = 1 << 31;

/// Records `event` (with `arg`) for [`flush`] unless one of its kind was
/// logged on this CPU less than `LOG_EVERY_NS` ago. Returns [`PENDING`] to OR
/// into the verdict when it was recorded, 0 otherwise.
#[inline(always)]
pub fn note(event: Event, arg: u32, now: u64) -> u32 {
    let Some(last) = SPLITTER_LOG_GATE.get_ptr_mut(event as u32) else { return 0 };
    // SAFETY: this CPU's slot of the gate map.
    let last = unsafe { &mut *last };
    if *last != 0 && now.wrapping_sub(*last) < LOG_EVERY_NS {
        return 0;
    }
    let Some(pending) = SPLITTER_LOG_GATE.get_ptr_mut(PENDING_SLOT) else { return 0 };
    *last = now;
    // SAFETY: as above.
    unsafe { *pending = ((event as u64 + 1) << 32) | u64::from(arg) };
    PENDING
}

/// Logs the event [`note`] recorded on this CPU and clears it.
#[inline(never)]
pub fn flush(ctx: &XdpContext) {
    let Some(pending) = SPLITTER_LOG_GATE.get_ptr_mut(PENDING_SLOT) else { return };
    // SAFETY: this CPU's slot of the gate map.
    let pending = unsafe { &mut *pending };
    let (kind, arg) = ((*pending >> 32) as u32, *pending as u32);
    *pending = 0;
    if kind == Event::BadTable as u32 + 1 {
        error!(ctx, "service table {} is missing or inconsistent: its packets are dropped (no_table)", arg);
    } else if kind == Event::FlowInsert as u32 + 1 {
        warn!(ctx, "flow table insert failed (error -{}): the flow is placed again on its next packet", arg);
    }
}
