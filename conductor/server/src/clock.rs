//! Where the Conductor's "now" comes from. Every decision that depends on
//! the time (bakes, windows, token expiry, ids, recorded instants) asks a
//! [`Clock`] passed in at start-up, never the wall clock directly, so tests
//! can set and advance time.

use chrono::{DateTime, Utc};
use std::sync::Mutex;

/// Where time comes from.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

/// The wall clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock for tests: it starts at a chosen instant and moves with tokio's
/// clock (so a test with paused time moves it with `tokio::time::advance`,
/// or lets the runtime skip ahead), and can be set or moved on by hand.
pub struct TestClock {
    /// (the instant at `base`, tokio's instant then).
    origin: Mutex<(DateTime<Utc>, tokio::time::Instant)>,
}

impl TestClock {
    /// A clock that reads `start` now.
    pub fn new(start: DateTime<Utc>) -> TestClock {
        TestClock {
            origin: Mutex::new((start, tokio::time::Instant::now())),
        }
    }

    /// A clock that reads the wall clock's time now.
    pub fn starting_now() -> TestClock {
        TestClock::new(Utc::now())
    }

    fn origin(&self) -> std::sync::MutexGuard<'_, (DateTime<Utc>, tokio::time::Instant)> {
        self.origin.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Make the clock read `t` now.
    pub fn set(&self, t: DateTime<Utc>) {
        *self.origin() = (t, tokio::time::Instant::now());
    }

    /// Move the clock on by `d` (without moving tokio's timers).
    pub fn advance(&self, d: chrono::Duration) {
        self.origin().0 += d;
    }
}

impl Default for TestClock {
    fn default() -> TestClock {
        TestClock::starting_now()
    }
}

impl Clock for TestClock {
    fn now(&self) -> DateTime<Utc> {
        let (at, base) = *self.origin();
        let since = tokio::time::Instant::now().saturating_duration_since(base);
        at + chrono::Duration::from_std(since).unwrap_or(chrono::Duration::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_test_clock_moves_with_paused_time_and_by_hand() {
        let start = DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default();
        let c = TestClock::new(start);
        assert_eq!(c.now(), start);
        tokio::time::advance(std::time::Duration::from_secs(90)).await;
        assert_eq!(c.now(), start + chrono::Duration::seconds(90));
        c.advance(chrono::Duration::days(1));
        assert_eq!(
            c.now(),
            start + chrono::Duration::days(1) + chrono::Duration::seconds(90)
        );
        c.set(start);
        assert_eq!(c.now(), start);
    }
}
