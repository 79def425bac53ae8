//! Time, behind a trait: the engine never reads a clock of its own, so a test or a
//! simulation decides what time it is, and a restarted engine continues from the
//! time its snapshots recorded.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub trait Clock: Send {
    /// Milliseconds on the engine's time line.
    fn now_ms(&self) -> u64;
    /// Moves the clock forward to at least `ms` (an adopted instance's snapshot was taken
    /// on another machine's clock, further along).
    fn at_least(&self, _ms: u64) {}
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
}

/// Time that moves only when told to: `ved run --stdin` (`advance_ms`), tests, and the
/// deterministic simulation. Clones share one time line.
#[derive(Clone, Default)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
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
}
