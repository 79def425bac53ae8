//! The event stream behind `GET /v1/events`: every line the engine prints, kept for a
//! while so that a client that reconnects with `Last-Event-ID` misses nothing, and
//! broadcast to the clients connected now.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::sync::broadcast;

/// Lines kept for clients that reconnect: at a few hundred bytes each, a few MB.
pub const EVENTS_KEPT: usize = 10_000;
/// Lines a slow client may fall behind the live stream before it is disconnected (it
/// reconnects with `Last-Event-ID` and reads the rest from what is kept).
const LAG_MAX: usize = 4_096;

/// One printed line.
#[derive(Debug)]
pub struct Published {
    pub seq: u64,
    pub instance: Option<String>,
    pub line: String,
}

struct Inner {
    kept: VecDeque<Arc<Published>>,
    /// `None` once closed: the live streams end.
    tx: Option<broadcast::Sender<Arc<Published>>>,
}

pub struct EventHub {
    inner: Mutex<Inner>,
    kept_max: usize,
}

/// What a new client gets: the kept lines after the one it last saw, whether some it asked
/// for are no longer kept (the first kept seq, then), and the live lines after those.
pub struct Subscription {
    pub backlog: Vec<Arc<Published>>,
    pub gap: Option<u64>,
    pub live: Option<broadcast::Receiver<Arc<Published>>>,
}

impl EventHub {
    pub fn new(kept_max: usize) -> EventHub {
        let (tx, _) = broadcast::channel(LAG_MAX);
        EventHub { inner: Mutex::new(Inner { kept: VecDeque::new(), tx: Some(tx) }), kept_max }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps and broadcasts a line. Called on the driver's thread as each line is printed:
    /// it never blocks on a client.
    pub fn publish(&self, seq: u64, instance: Option<&str>, line: &str) {
        let p = Arc::new(Published { seq, instance: instance.map(str::to_string), line: line.to_string() });
        let mut inner = self.lock();
        if inner.kept.len() == self.kept_max {
            inner.kept.pop_front();
        }
        inner.kept.push_back(p.clone());
        if let Some(tx) = &inner.tx {
            // No receiver is not an error: nobody is listening.
            let _ = tx.send(p);
        }
    }

    /// The lines after `after` (all that are kept if `None`), and the live ones after them.
    /// Taken under the same lock as [`EventHub::publish`], so none is seen twice or missed.
    pub fn subscribe(&self, after: Option<u64>) -> Subscription {
        let inner = self.lock();
        let first_kept = inner.kept.front().map(|p| p.seq);
        let backlog: Vec<Arc<Published>> = match after {
            Some(a) => inner.kept.iter().filter(|p| p.seq > a).cloned().collect(),
            None => Vec::new(),
        };
        let gap = match (after, first_kept) {
            (Some(a), Some(first)) if first > a + 1 => Some(first),
            _ => None,
        };
        Subscription { backlog, gap, live: inner.tx.as_ref().map(|tx| tx.subscribe()) }
    }

    /// Ends every live stream (the daemon is stopping: an open stream would hold the
    /// server's graceful shutdown for ever).
    pub fn close(&self) {
        self.lock().tx = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seqs(v: &[Arc<Published>]) -> Vec<u64> {
        v.iter().map(|p| p.seq).collect()
    }

    #[test]
    fn a_client_resumes_after_the_last_line_it_saw_and_is_told_of_a_gap() {
        let hub = EventHub::new(3);
        for seq in 1..=5 {
            hub.publish(seq, Some("I"), &format!("{{\"seq\":{seq}}}"));
        }
        // Kept: 3, 4, 5.
        let s = hub.subscribe(Some(3));
        assert_eq!((seqs(&s.backlog), s.gap), (vec![4, 5], None));
        let s = hub.subscribe(Some(1));
        assert_eq!((seqs(&s.backlog), s.gap), (vec![3, 4, 5], Some(3)));
        // A new client without an id starts with what comes next.
        let mut s = hub.subscribe(None);
        assert!(s.backlog.is_empty());
        hub.publish(6, None, "{}");
        assert_eq!(s.live.as_mut().unwrap().try_recv().unwrap().seq, 6);
        // Closed: the live stream ends.
        hub.close();
        assert!(matches!(s.live.unwrap().try_recv(), Err(broadcast::error::TryRecvError::Closed)));
        assert!(hub.subscribe(None).live.is_none());
    }
}
