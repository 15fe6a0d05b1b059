//! systemd's service notifications (`Type=notify`, sd_notify): READY once
//! the data path is programmed and attached and the control socket
//! answers, RELOADING (with the monotonic time) and READY around a reload,
//! STOPPING when the loop ends, and watchdog pings from the loop when
//! `WatchdogSec` is set. Without `$NOTIFY_SOCKET` each is a no-op; a
//! failure to send is logged, never fatal.

use std::time::Duration;

use sd_notify::NotifyState;
use tracing::debug;

fn send(what: &str, states: &[NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(states) {
        debug!("sd_notify {what}: {e}");
    }
}

/// Serving: `status` is the line `systemctl status` shows.
pub(super) fn ready(status: &str) {
    send("READY", &[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A reload starts (READY follows when it is over, applied or refused).
pub(super) fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send("RELOADING", &[NotifyState::Reloading, now]),
        Err(_) => send("RELOADING", &[NotifyState::Reloading]),
    }
}

/// The agent is exiting (the pinned data path may keep serving).
pub(super) fn stopping(status: &str) {
    send("STOPPING", &[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// How often the loop pings the watchdog: half of `WatchdogSec`, when set
/// for this process.
pub(super) fn watchdog_every() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|d| d / 2)
}

pub(super) fn watchdog() {
    send("WATCHDOG", &[NotifyState::Watchdog]);
}
