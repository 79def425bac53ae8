//! systemd's `Type=notify` protocol for the daemon and cluster nodes: `READY=1` once the
//! API listens and the engine runs, `WATCHDOG=1` from the driver's own loop while it is
//! alive (so a wedged driver stops the pings and systemd restarts it), `STOPPING=1` when a
//! clean stop begins. Without `NOTIFY_SOCKET` (not under systemd) every call does nothing.

use sd_notify::NotifyState;
use std::time::{Duration, Instant};

pub struct Notifier {
    /// How often to ping: half the interval systemd asked for (`WATCHDOG_USEC`).
    every: Option<Duration>,
    last: Instant,
}

impl Notifier {
    pub fn from_env() -> Notifier {
        Notifier { every: sd_notify::watchdog_enabled().map(|d| d / 2), last: Instant::now() }
    }

    pub fn ready(&self) {
        let _ = sd_notify::notify(&[NotifyState::Ready]);
    }

    pub fn stopping(&self) {
        let _ = sd_notify::notify(&[NotifyState::Stopping]);
    }

    /// How long the driver's loop may wait before the next ping is due.
    pub fn wait_at_most(&self) -> Duration {
        self.every.map_or(Duration::MAX, |e| e.saturating_sub(self.last.elapsed()))
    }

    /// Pings if a ping is due; called once per round of the driver's loop.
    pub fn tick(&mut self) {
        if let Some(every) = self.every {
            if self.last.elapsed() >= every {
                let _ = sd_notify::notify(&[NotifyState::Watchdog]);
                self.last = Instant::now();
            }
        }
    }
}
