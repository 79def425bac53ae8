//! Time, behind a trait: the engine never reads a clock of its own, so a test or a
//! simulation decides what time it is, and a restarted engine continues from the
//! time its snapshots recorded.
//!
//! Two times: the engine's time line (`at_ms`), which the scheduler runs on and which a
//! restart continues, and the wall-clock time (Unix milliseconds) that events, journal
//! and audit entries carry beside it for people and log tools.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub trait Clock: Send {
    /// Milliseconds on the engine's time line.
    fn now_ms(&self) -> u64;
    /// Moves the clock forward to at least `ms` (an adopted instance's snapshot was taken
    /// on another machine's clock, further along).
    fn at_least(&self, _ms: u64) {}
    /// The wall-clock time, in Unix milliseconds, of the engine's time `engine_ms`.
    fn wall_ms(&self, engine_ms: u64) -> u64;
}

/// Wall-clock time, continuing from `base_ms` (the latest snapshot's time).
#[derive(Clone)]
pub struct WallClock {
    base_ms: Arc<AtomicU64>,
    started: std::time::Instant,
}

impl WallClock {
    pub fn starting_at(base_ms: u64) -> WallClock {
        WallClock { base_ms: Arc::new(AtomicU64::new(base_ms)), started: std::time::Instant::now() }
    }
}

impl Clock for WallClock {
    fn now_ms(&self) -> u64 {
        self.base_ms.load(Ordering::SeqCst) + self.started.elapsed().as_millis() as u64
    }

    fn at_least(&self, ms: u64) {
        let now = self.now_ms();
        if ms > now {
            self.base_ms.fetch_add(ms - now, Ordering::SeqCst);
        }
    }

    /// The system clock: the engine reads this clock for its time, so now is its time.
    fn wall_ms(&self, _engine_ms: u64) -> u64 {
        ved_store::time::unix_now_ms()
    }
}

/// Time that moves only when told to: `ved run --stdin` (`advance_ms`), tests, and the
/// deterministic simulation. Clones share one time line. Its wall-clock time is its
/// epoch plus the engine's time: the Unix epoch unless [`ManualClock::with_epoch`] says
/// otherwise, so that a simulated run's output is the same every time.
#[derive(Clone, Default)]
pub struct ManualClock(Arc<AtomicU64>, u64);

impl ManualClock {
    /// A clock whose engine time 0 is the wall-clock time `unix_ms`.
    pub fn with_epoch(unix_ms: u64) -> ManualClock {
        ManualClock(Arc::default(), unix_ms)
    }

    pub fn set(&self, ms: u64) {
        self.0.fetch_max(ms, Ordering::SeqCst);
    }

    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }

    fn at_least(&self, ms: u64) {
        self.set(ms);
    }

    fn wall_ms(&self, engine_ms: u64) -> u64 {
        self.1.saturating_add(engine_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clocks_wall_time_is_its_epoch_plus_the_engines_time() {
        let c = ManualClock::with_epoch(1_796_189_694_000);
        c.advance(500);
        assert_eq!(c.wall_ms(c.now_ms()), 1_796_189_694_500);
        assert_eq!(ManualClock::default().wall_ms(42), 42);
    }

    #[test]
    fn a_wall_clocks_wall_time_is_the_system_clock() {
        let c = WallClock::starting_at(5_000);
        let before = ved_store::time::unix_now_ms();
        let w = c.wall_ms(c.now_ms());
        assert!(w >= before && w <= ved_store::time::unix_now_ms());
    }
}
