//! Waiting for a state instead of sleeping a fixed time: [`wait_until`] looks
//! at something (a probe) until what it sees is what was awaited, or a time
//! limit passes; then it says what it waited for and what it saw last. The
//! demo, the agent process, the tests and the benches all wait with it.

use std::{
    fmt::Debug,
    time::{Duration, Instant},
};

use thiserror::Error;

/// How often [`wait_until`] looks.
pub const POLL: Duration = Duration::from_millis(50);

/// A wait that ran out of time.
#[derive(Debug, Error)]
#[error("{what}: not within {limit:?}; last seen: {last}")]
pub struct TimedOut {
    /// What was awaited.
    pub what: String,
    pub limit: Duration,
    /// The probe's last value (`Debug`).
    pub last: String,
}

/// Calls `probe` until `done` accepts its value, every [`POLL`], for at most
/// `limit`; returns the accepted value, or what was seen last.
pub fn wait_until<V: Debug>(
    what: &str,
    limit: Duration,
    probe: impl FnMut() -> V,
    done: impl FnMut(&V) -> bool,
) -> Result<V, TimedOut> {
    wait_until_every(what, limit, POLL, probe, done)
}

/// [`wait_until`] looking every `every` (zero: at once again, for a probe
/// that takes its own time, or a measurement that must not lag).
pub fn wait_until_every<V: Debug>(
    what: &str,
    limit: Duration,
    every: Duration,
    mut probe: impl FnMut() -> V,
    mut done: impl FnMut(&V) -> bool,
) -> Result<V, TimedOut> {
    let start = Instant::now();
    loop {
        let seen = probe();
        if done(&seen) {
            return Ok(seen);
        }
        let elapsed = start.elapsed();
        if elapsed >= limit {
            return Err(TimedOut { what: what.to_owned(), limit, last: format!("{seen:?}") });
        }
        std::thread::sleep(every.min(limit - elapsed));
    }
}

/// [`wait_until`] for tests: the accepted value, or a panic that says what
/// was awaited and what was seen last.
#[track_caller]
pub fn eventually<V: Debug>(what: &str, limit: Duration, probe: impl FnMut() -> V, done: impl FnMut(&V) -> bool) -> V {
    wait_until(what, limit, probe, done).unwrap_or_else(|e| panic!("{e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_first_accepted_value() {
        let mut n = 0;
        let got = wait_until_every(
            "n to reach 3",
            Duration::from_secs(5),
            Duration::ZERO,
            || {
                n += 1;
                n
            },
            |n| *n >= 3,
        );
        assert_eq!(got.unwrap(), 3);
    }

    #[test]
    fn says_what_it_awaited_and_saw_last_when_time_runs_out() {
        let e = wait_until("the impossible", Duration::from_millis(120), || "still no", |_| false).unwrap_err();
        assert_eq!(e.to_string(), "the impossible: not within 120ms; last seen: \"still no\"");
    }

    #[test]
    #[should_panic(expected = "a flip: not within 10ms; last seen: [8000, 2000]")]
    fn eventually_panics_with_the_same_message() {
        eventually("a flip", Duration::from_millis(10), || vec![8000, 2000], |bps| bps == &[0, 10_000]);
    }
}
