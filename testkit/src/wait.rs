//! Bounded polling waits and the OS clocks a harness times real processes with.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How often [`poll`] and [`wait_for`] look.
pub const POLL_EVERY: Duration = Duration::from_millis(50);

/// The OS monotonic clock.
#[allow(clippy::disallowed_methods)] // a harness times real processes and calls
pub fn now() -> Instant {
    Instant::now()
}

/// Seconds since the Unix epoch by the OS wall clock (0 before it).
pub fn unix_now_secs() -> u64 {
    #[allow(clippy::disallowed_methods)] // a harness compares certificate times with real time
    let now = SystemTime::now();
    now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Calls `f` every `every` until it returns `Some`, for at most `limit` (one last call after
/// `limit` passed); its answer.
pub fn poll_every<T>(
    limit: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Option<T> {
    let start = now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() >= limit {
            return None;
        }
        std::thread::sleep(every);
    }
}

/// [`poll_every`] [`POLL_EVERY`].
pub fn poll<T>(limit: Duration, f: impl FnMut() -> Option<T>) -> Option<T> {
    poll_every(limit, POLL_EVERY, f)
}

/// Whether `f` holds within `limit`, asked every `every`.
pub fn wait_for_every(limit: Duration, every: Duration, mut f: impl FnMut() -> bool) -> bool {
    poll_every(limit, every, || f().then_some(())).is_some()
}

/// Whether `f` holds within `limit`, asked every [`POLL_EVERY`].
pub fn wait_for(limit: Duration, f: impl FnMut() -> bool) -> bool {
    wait_for_every(limit, POLL_EVERY, f)
}
