//! [`MemEtcd`]: an etcd in memory, for deterministic tests of what runs on a
//! [`KvStore`].
//!
//! It keeps what [`Membership`](crate::Membership) relies on: one revision for the
//! whole store, raised once per write or transaction that changed something; per key
//! its creation and modification revisions and lease; transactions whose comparisons
//! decide all or nothing (a missing key's value never compares equal, as in etcd);
//! leases that expire on the fake's own clock ([`MemEtcd::advance_ms`]), deleting
//! every attached key at one revision; watches that report a
//! [`Reset`](WatchEvent::Reset) when they start, then every change, in revision order,
//! before the call that made it returns.
//!
//! There are no threads and no wall clock: time moves only through `advance_ms`.
//!
//! Each handle ([`MemEtcd::client`]) shares the store and has its own reachability, so
//! one node can be cut off while others go on ([`MemEtcd::set_reachable`]). A cut-off
//! handle's calls fail with [`EtcdError::Unavailable`], and its watches miss what
//! happens meanwhile; when it is reachable again, each of them resumes from the first
//! revision it missed, as the real client's watch does, unless the store's history no
//! longer goes back that far (it keeps the last [`HISTORY`] events, or fewer after
//! [`MemEtcd::compact`]): then it gets a fresh `Reset`, a full read.
//!
//! A handle's watches can also be held back ([`MemEtcd::hold_watches`]: their events wait
//! and arrive late, in order) or lost ([`MemEtcd::lose_watches`]: what was on its way is
//! dropped and the watch starts again from a full read). Each handle counts its reads
//! ([`MemEtcd::reads`]), the full reads of its watches included.

use crate::etcd::{Compare, EtcdError, Kv, KvStore, Op, Range, WatchEvent};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// etcd's default `--max-txn-ops`.
const MAX_TXN_OPS: usize = 128;

/// How many events the store keeps for watches that resume: older ones are compacted.
pub const HISTORY: usize = 10_000;

type Sink = Arc<dyn Fn(WatchEvent) + Send + Sync>;

struct Lease {
    ttl: i64,
    expires_ms: u64,
    keys: BTreeSet<String>,
}

struct Watcher {
    prefixes: Vec<String>,
    sink: Sink,
    /// The handle that registered it: its reachability, hold and read counts.
    handle: Handle,
    /// The revision of the first change it missed while its handle was cut off.
    missed_from: Option<i64>,
    /// Events held back while its handle's watches are held.
    delayed: VecDeque<WatchEvent>,
}

impl Watcher {
    fn covers(&self, key: &str) -> bool {
        self.prefixes.iter().any(|p| key.starts_with(p.as_str()))
    }
}

/// What one handle has of its own.
#[derive(Clone, Default)]
struct Handle {
    reachable: Arc<AtomicBool>,
    held: Arc<AtomicBool>,
    /// Read requests, and the keys they returned.
    reads: Arc<AtomicU64>,
    read_keys: Arc<AtomicU64>,
}

impl Handle {
    fn new() -> Handle {
        let h = Handle::default();
        h.reachable.store(true, Ordering::SeqCst);
        h
    }

    fn same(&self, other: &Handle) -> bool {
        Arc::ptr_eq(&self.reachable, &other.reachable)
    }

    fn count(&self, keys: usize) {
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.read_keys.fetch_add(keys as u64, Ordering::SeqCst);
    }
}

#[derive(Default)]
struct State {
    now_ms: u64,
    revision: i64,
    last_lease: i64,
    kvs: BTreeMap<String, Kv>,
    leases: BTreeMap<i64, Lease>,
    watchers: Vec<Watcher>,
    /// Events not yet handed to their watcher: (watcher, event).
    queue: VecDeque<(usize, WatchEvent)>,
    /// Whether some call is handing out the queue; a sink that writes only queues.
    delivering: bool,
    /// The last [`HISTORY`] changes, for watches that resume: (revision, event).
    history: VecDeque<(i64, WatchEvent)>,
    /// Changes at or below this revision are no longer in `history`.
    compacted: i64,
}

impl State {
    fn notify(&mut self, ev: WatchEvent) {
        let (key, revision) = match &ev {
            WatchEvent::Put(kv) => (kv.key.clone(), kv.mod_revision),
            WatchEvent::Delete { key, revision } => (key.clone(), *revision),
            WatchEvent::Reset { .. } => return,
        };
        for (i, w) in self.watchers.iter_mut().enumerate() {
            if !w.covers(&key) {
                continue;
            }
            if w.handle.reachable.load(Ordering::SeqCst) {
                self.queue.push_back((i, ev.clone()));
            } else if w.missed_from.is_none() {
                w.missed_from = Some(revision);
            }
        }
        self.history.push_back((revision, ev));
        if self.history.len() > HISTORY {
            if let Some((r, _)) = self.history.pop_front() {
                self.compacted = r;
            }
        }
    }

    /// A full read for watcher `i`, counted as a read of its handle.
    fn reset_for(&self, i: usize) -> WatchEvent {
        let w = &self.watchers[i];
        let kvs = self.under(&w.prefixes);
        w.handle.count(kvs.len());
        WatchEvent::Reset { revision: self.revision, kvs }
    }

    fn under(&self, prefixes: &[String]) -> Vec<Kv> {
        prefixes
            .iter()
            .flat_map(|p| self.kvs.range(p.clone()..).take_while(move |(k, _)| k.starts_with(p.as_str())))
            .map(|(_, kv)| kv.clone())
            .collect()
    }

    fn read(&self, ranges: &[Range]) -> Vec<Kv> {
        let mut kvs = Vec::new();
        for r in ranges {
            match r {
                Range::Key(k) => kvs.extend(self.kvs.get(k).cloned()),
                Range::Prefix(p) => kvs.extend(self.under(std::slice::from_ref(p))),
            }
        }
        kvs
    }

    /// Deletes a key at `revision` (already raised by the caller).
    fn delete(&mut self, key: &str, revision: i64) {
        let Some(kv) = self.kvs.remove(key) else { return };
        if let Some(l) = self.leases.get_mut(&kv.lease) {
            l.keys.remove(key);
        }
        self.notify(WatchEvent::Delete { key: key.to_string(), revision });
    }

    fn put(&mut self, key: &str, value: &[u8], lease: i64, revision: i64) {
        let create_revision = match self.kvs.get(key) {
            Some(old) => {
                if old.lease != lease {
                    if let Some(l) = self.leases.get_mut(&old.lease) {
                        l.keys.remove(key);
                    }
                }
                old.create_revision
            }
            None => revision,
        };
        if let Some(l) = self.leases.get_mut(&lease) {
            l.keys.insert(key.to_string());
        }
        let kv = Kv { key: key.to_string(), value: value.to_vec(), create_revision, mod_revision: revision, lease };
        self.kvs.insert(key.to_string(), kv.clone());
        self.notify(WatchEvent::Put(kv));
    }

    /// Ends a lease, deleting its keys at one revision.
    fn end_lease(&mut self, id: i64) {
        let Some(lease) = self.leases.remove(&id) else { return };
        if lease.keys.is_empty() {
            return;
        }
        self.revision += 1;
        let revision = self.revision;
        for key in lease.keys {
            self.delete(&key, revision);
        }
    }

    fn keys_in(&self, from: &str, to: &str) -> Vec<String> {
        if to.is_empty() {
            return self.kvs.contains_key(from).then(|| from.to_string()).into_iter().collect();
        }
        if to <= from {
            return Vec::new();
        }
        self.kvs.range(from.to_string()..to.to_string()).map(|(k, _)| k.clone()).collect()
    }

    fn holds(&self, c: &Compare) -> bool {
        match c {
            Compare::Exists(k) => self.kvs.contains_key(k),
            Compare::Absent(k) => !self.kvs.contains_key(k),
            // etcd: comparing the value of a missing key always fails.
            Compare::ValueIs(k, v) => self.kvs.get(k).is_some_and(|kv| &kv.value == v),
            Compare::LeaseIs(k, l) => self.kvs.get(k).map_or(0, |kv| kv.lease) == *l,
        }
    }
}

/// An in-memory etcd; see the [module](self) documentation.
///
/// `clone` gives another reference to the same handle (same reachability);
/// [`client`](MemEtcd::client) gives a new handle on the same store.
#[derive(Clone)]
pub struct MemEtcd {
    state: Arc<Mutex<State>>,
    handle: Handle,
}

impl Default for MemEtcd {
    fn default() -> Self {
        MemEtcd::new()
    }
}

fn unreachable() -> EtcdError {
    EtcdError::Unavailable("mem: unreachable".into())
}

fn lease_not_found() -> EtcdError {
    EtcdError::Rejected("etcdserver: requested lease not found".into())
}

impl MemEtcd {
    /// An empty store at revision 1 (as a fresh etcd) and time 0.
    pub fn new() -> MemEtcd {
        let state = State { revision: 1, ..State::default() };
        MemEtcd { state: Arc::new(Mutex::new(state)), handle: Handle::new() }
    }

    /// Another handle on the same store, reachable, with its own reachability, hold and
    /// read counts.
    pub fn client(&self) -> MemEtcd {
        MemEtcd { state: self.state.clone(), handle: Handle::new() }
    }

    /// How many reads this handle sent (`get`, `get_prefix`, `read`, and its watches' full
    /// reads), and how many keys they returned.
    pub fn reads(&self) -> (u64, u64) {
        (self.handle.reads.load(Ordering::SeqCst), self.handle.read_keys.load(Ordering::SeqCst))
    }

    /// Holds this handle's watch events back (they arrive late, in order, once released),
    /// as a slow watch stream does; `false` delivers what was held.
    pub fn hold_watches(&self, hold: bool) {
        self.handle.held.store(hold, Ordering::SeqCst);
        if hold {
            return;
        }
        {
            let mut s = self.lock();
            for i in 0..s.watchers.len() {
                if s.watchers[i].handle.same(&self.handle) {
                    let delayed = std::mem::take(&mut s.watchers[i].delayed);
                    s.queue.extend(delayed.into_iter().map(|ev| (i, ev)));
                }
            }
        }
        self.deliver();
    }

    /// Loses this handle's watches (the stream broke and its revision was compacted): what
    /// they held back is dropped, and each starts again from a full read, at once if the
    /// handle is reachable, else when it is again.
    pub fn lose_watches(&self) {
        {
            let mut s = self.lock();
            let reachable = self.is_reachable();
            for i in 0..s.watchers.len() {
                if !s.watchers[i].handle.same(&self.handle) {
                    continue;
                }
                s.watchers[i].delayed.clear();
                if reachable {
                    let reset = s.reset_for(i);
                    s.queue.push_back((i, reset));
                } else {
                    s.watchers[i].missed_from = Some(i64::MIN);
                }
            }
        }
        self.deliver();
    }

    /// Drops the history of changes: a watch that missed any of them must read everything.
    pub fn compact(&self) {
        let mut s = self.lock();
        s.compacted = s.revision;
        s.history.clear();
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Cuts this handle off (every call fails with `Unavailable`, its watches miss
    /// changes) or connects it again (each watch that missed something resumes from the
    /// first change it missed, or reads everything if that was compacted).
    pub fn set_reachable(&self, reachable: bool) {
        let was = self.handle.reachable.swap(reachable, Ordering::SeqCst);
        if !reachable || was {
            return;
        }
        {
            let mut s = self.lock();
            for i in 0..s.watchers.len() {
                if !s.watchers[i].handle.same(&self.handle) {
                    continue;
                }
                let Some(from) = s.watchers[i].missed_from.take() else { continue };
                if from > s.compacted {
                    let w = &s.watchers[i];
                    let missed: Vec<WatchEvent> = s
                        .history
                        .iter()
                        .filter(|(r, ev)| {
                            *r >= from
                                && match ev {
                                    WatchEvent::Put(kv) => w.covers(&kv.key),
                                    WatchEvent::Delete { key, .. } => w.covers(key),
                                    WatchEvent::Reset { .. } => false,
                                }
                        })
                        .map(|(_, ev)| ev.clone())
                        .collect();
                    s.queue.extend(missed.into_iter().map(|ev| (i, ev)));
                } else {
                    let reset = s.reset_for(i);
                    s.queue.push_back((i, reset));
                }
            }
        }
        self.deliver();
    }

    pub fn is_reachable(&self) -> bool {
        self.handle.reachable.load(Ordering::SeqCst)
    }

    /// The fake's clock, in milliseconds.
    pub fn now_ms(&self) -> u64 {
        self.lock().now_ms
    }

    /// The fake's clock as a function, for [`Membership::join_manual`](crate::Membership::join_manual).
    pub fn clock(&self) -> Arc<dyn Fn() -> u64 + Send + Sync> {
        let me = self.clone();
        Arc::new(move || me.now_ms())
    }

    /// Moves the clock on; every lease that runs out meanwhile expires, earliest first,
    /// deleting its keys.
    pub fn advance_ms(&self, ms: u64) {
        {
            let mut s = self.lock();
            s.now_ms += ms;
            let now = s.now_ms;
            let mut due: Vec<(u64, i64)> =
                s.leases.iter().filter(|(_, l)| l.expires_ms <= now).map(|(id, l)| (l.expires_ms, *id)).collect();
            due.sort();
            for (_, id) in due {
                s.end_lease(id);
            }
        }
        self.deliver();
    }

    /// The current revision of the store.
    pub fn revision(&self) -> i64 {
        self.lock().revision
    }

    /// The leases alive now.
    pub fn leases(&self) -> Vec<i64> {
        self.lock().leases.keys().copied().collect()
    }

    /// Hands queued events to their watchers, with no lock held so that a sink may call
    /// the store; a call made from a sink only queues, and the outer call delivers it.
    fn deliver(&self) {
        {
            let mut s = self.lock();
            if s.delivering {
                return;
            }
            s.delivering = true;
        }
        loop {
            let next = {
                let mut s = self.lock();
                match s.queue.pop_front() {
                    Some((i, ev)) if s.watchers[i].handle.held.load(Ordering::SeqCst) => {
                        s.watchers[i].delayed.push_back(ev);
                        continue;
                    }
                    Some((i, ev)) => (s.watchers[i].sink.clone(), ev),
                    None => {
                        s.delivering = false;
                        return;
                    }
                }
            };
            (next.0)(next.1);
        }
    }

    fn check(&self) -> Result<(), EtcdError> {
        if self.is_reachable() {
            Ok(())
        } else {
            Err(unreachable())
        }
    }

    /// Refuses what etcd refuses before looking at the comparisons.
    fn validate(compares: &[Compare], ops: &[Op]) -> Result<(), EtcdError> {
        if ops.len() > MAX_TXN_OPS || compares.len() > MAX_TXN_OPS {
            return Err(EtcdError::Rejected("etcdserver: too many operations in txn request".into()));
        }
        let duplicate = || EtcdError::Rejected("etcdserver: duplicate key given in txn request".into());
        let mut puts = BTreeSet::new();
        for o in ops {
            if let Op::Put { key, .. } = o {
                if !puts.insert(key.as_str()) {
                    return Err(duplicate());
                }
            }
        }
        for o in ops {
            let covered = match o {
                Op::Put { .. } => false,
                Op::Delete(k) => puts.contains(k.as_str()),
                Op::DeleteRange { from, to } if to.is_empty() => puts.contains(from.as_str()),
                Op::DeleteRange { from, to } => puts.iter().any(|k| *k >= from.as_str() && *k < to.as_str()),
            };
            if covered {
                return Err(duplicate());
            }
        }
        Ok(())
    }
}

impl KvStore for MemEtcd {
    fn grant(&self, ttl: i64) -> Result<i64, EtcdError> {
        self.check()?;
        if ttl <= 0 {
            return Err(EtcdError::Rejected("etcdserver: lease TTL must be positive".into()));
        }
        let mut s = self.lock();
        s.last_lease += 1;
        let id = s.last_lease;
        let expires_ms = s.now_ms + ttl as u64 * 1000;
        s.leases.insert(id, Lease { ttl, expires_ms, keys: BTreeSet::new() });
        Ok(id)
    }

    fn keepalive(&self, lease: i64) -> Result<i64, EtcdError> {
        self.check()?;
        let mut s = self.lock();
        let now = s.now_ms;
        Ok(match s.leases.get_mut(&lease) {
            Some(l) => {
                l.expires_ms = now + l.ttl as u64 * 1000;
                l.ttl
            }
            None => 0,
        })
    }

    fn revoke(&self, lease: i64) -> Result<(), EtcdError> {
        self.check()?;
        {
            let mut s = self.lock();
            if !s.leases.contains_key(&lease) {
                return Err(lease_not_found());
            }
            s.end_lease(lease);
        }
        self.deliver();
        Ok(())
    }

    fn get(&self, key: &str) -> Result<Option<Kv>, EtcdError> {
        self.check()?;
        let kv = self.lock().kvs.get(key).cloned();
        self.handle.count(kv.iter().len());
        Ok(kv)
    }

    fn get_prefix(&self, prefix: &str) -> Result<Vec<Kv>, EtcdError> {
        self.check()?;
        let kvs = self.lock().under(&[prefix.to_string()]);
        self.handle.count(kvs.len());
        Ok(kvs)
    }

    fn read(&self, ranges: &[Range]) -> Result<Vec<Kv>, EtcdError> {
        self.check()?;
        let kvs = self.lock().read(ranges);
        self.handle.count(kvs.len());
        Ok(kvs)
    }

    fn put(&self, key: &str, value: &[u8], lease: i64) -> Result<i64, EtcdError> {
        let (_, revision) = self.txn(&[], &[Op::Put { key: key.to_string(), value: value.to_vec(), lease }])?;
        Ok(revision)
    }

    fn txn(&self, compares: &[Compare], ops: &[Op]) -> Result<(bool, i64), EtcdError> {
        self.check()?;
        Self::validate(compares, ops)?;
        let answer = {
            let mut s = self.lock();
            if !compares.iter().all(|c| s.holds(c)) {
                return Ok((false, s.revision));
            }
            let lease_missing = ops.iter().any(|o| match o {
                Op::Put { lease, .. } => *lease != 0 && !s.leases.contains_key(lease),
                _ => false,
            });
            if lease_missing {
                return Err(lease_not_found());
            }
            let changes = ops.iter().any(|o| match o {
                Op::Put { .. } => true,
                Op::Delete(k) => s.kvs.contains_key(k),
                Op::DeleteRange { from, to } => !s.keys_in(from, to).is_empty(),
            });
            if changes {
                s.revision += 1;
                let revision = s.revision;
                for o in ops {
                    match o {
                        Op::Put { key, value, lease } => s.put(key, value, *lease, revision),
                        Op::Delete(k) => s.delete(k, revision),
                        Op::DeleteRange { from, to } => {
                            for k in s.keys_in(from, to) {
                                s.delete(&k, revision);
                            }
                        }
                    }
                }
            }
            (true, s.revision)
        };
        self.deliver();
        Ok(answer)
    }

    fn watch(&self, prefixes: Vec<String>, sink: Box<dyn Fn(WatchEvent) + Send + Sync>) -> Result<(), EtcdError> {
        self.check()?;
        {
            let mut s = self.lock();
            let i = s.watchers.len();
            s.watchers.push(Watcher {
                prefixes,
                sink: Arc::from(sink),
                handle: self.handle.clone(),
                missed_from: None,
                delayed: VecDeque::new(),
            });
            let reset = s.reset_for(i);
            s.queue.push_back((i, reset));
        }
        self.deliver();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(m: &MemEtcd, prefix: &str) -> Arc<Mutex<Vec<WatchEvent>>> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        m.watch(vec![prefix.to_string()], Box::new(move |ev| s.lock().unwrap().push(ev))).unwrap();
        seen
    }

    fn put(key: &str, value: &str) -> Op {
        Op::Put { key: key.into(), value: value.into(), lease: 0 }
    }

    #[test]
    fn a_transaction_is_all_or_nothing() {
        let m = MemEtcd::new();
        m.put("a", b"1", 0).unwrap();
        let before = m.revision();
        let (ok, rev) = m.txn(&[Compare::Exists("a".into()), Compare::Absent("a".into())], &[put("b", "2")]).unwrap();
        assert!(!ok);
        assert_eq!(rev, before);
        assert_eq!(m.get("b").unwrap(), None);
        let (ok, rev) = m
            .txn(
                &[Compare::ValueIs("a".into(), b"1".to_vec())],
                &[put("b", "2"), put("c", "3"), Op::Delete("a".into())],
            )
            .unwrap();
        assert!(ok);
        assert_eq!(rev, before + 1, "one revision for the whole transaction");
        let b = m.get("b").unwrap().unwrap();
        assert_eq!((b.create_revision, b.mod_revision), (rev, rev));
        assert_eq!(m.get("a").unwrap(), None);
        // A missing key's value never compares equal, not even to nothing.
        assert!(!m.txn(&[Compare::ValueIs("a".into(), Vec::new())], &[put("d", "4")]).unwrap().0);
        assert!(m.txn(&[Compare::LeaseIs("a".into(), 0)], &[]).unwrap().0);
    }

    #[test]
    fn a_transaction_refuses_what_etcd_refuses() {
        let m = MemEtcd::new();
        let dup = m.txn(&[], &[put("a", "1"), put("a", "2")]);
        assert!(matches!(dup, Err(EtcdError::Rejected(_))), "{dup:?}");
        let covered = m.txn(&[], &[put("j/5", "x"), Op::DeleteRange { from: "j/".into(), to: "j/6".into() }]);
        assert!(matches!(covered, Err(EtcdError::Rejected(_))), "{covered:?}");
        let no_lease = m.txn(&[], &[Op::Put { key: "k".into(), value: vec![], lease: 42 }]);
        assert!(matches!(no_lease, Err(EtcdError::Rejected(_))), "{no_lease:?}");
        let many: Vec<Op> = (0..=MAX_TXN_OPS).map(|i| put(&format!("k{i}"), "v")).collect();
        assert!(m.txn(&[], &many).is_err());
        assert_eq!(m.get_prefix("").unwrap(), vec![], "nothing written");
    }

    #[test]
    fn a_delete_range_takes_keys_from_up_to_to() {
        let m = MemEtcd::new();
        for i in 0..5 {
            m.put(&format!("j/{i:020}"), b"x", 0).unwrap();
        }
        let seen = events(&m, "j/");
        let (ok, rev) = m.txn(&[], &[Op::DeleteRange { from: "j/".into(), to: format!("j/{:020}", 3) }]).unwrap();
        assert!(ok);
        let left: Vec<String> = m.get_prefix("j/").unwrap().into_iter().map(|kv| kv.key).collect();
        assert_eq!(left, vec![format!("j/{:020}", 3), format!("j/{:020}", 4)]);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 4, "a reset, then three deletes: {seen:?}");
        assert!(seen[1..].iter().all(|e| matches!(e, WatchEvent::Delete { revision, .. } if *revision == rev)));
    }

    #[test]
    fn leases_expire_on_the_fake_clock_and_take_their_keys() {
        let m = MemEtcd::new();
        let l = m.grant(2).unwrap();
        m.put("n/a", b"a", l).unwrap();
        m.put("n/b", b"b", l).unwrap();
        m.put("n/c", b"c", 0).unwrap();
        let seen = events(&m, "n/");
        m.advance_ms(1500);
        assert_eq!(m.keepalive(l).unwrap(), 2);
        m.advance_ms(1999);
        assert_eq!(m.get_prefix("n/").unwrap().len(), 3);
        let rev = m.revision();
        m.advance_ms(1);
        assert_eq!(m.get_prefix("n/").unwrap().len(), 1);
        assert_eq!(m.revision(), rev + 1, "one revision for the lease's keys");
        assert_eq!(m.keepalive(l).unwrap(), 0, "an expired lease has no time left");
        assert!(m.revoke(l).is_err());
        let seen = seen.lock().unwrap();
        let deleted: Vec<&str> = seen
            .iter()
            .filter_map(|e| match e {
                WatchEvent::Delete { key, revision } if *revision == rev + 1 => Some(key.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(deleted, vec!["n/a", "n/b"]);
    }

    #[test]
    fn a_cut_off_handle_fails_and_its_watch_resumes_or_reads_everything() {
        let m = MemEtcd::new();
        let c = m.client();
        let seen = events(&c, "k/");
        c.set_reachable(false);
        assert!(c.get("k/a").unwrap_err().is_unavailable());
        assert!(c.keepalive(1).unwrap_err().is_unavailable());
        m.put("k/a", b"1", 0).unwrap();
        m.put("other", b"x", 0).unwrap();
        assert_eq!(seen.lock().unwrap().len(), 1, "only the first reset");
        c.set_reachable(true);
        // Resumed where it stopped: the change it missed, not a full read.
        assert!(matches!(&seen.lock().unwrap()[1..], [WatchEvent::Put(kv)] if kv.key == "k/a"));
        c.set_reachable(false);
        m.put("k/b", b"2", 0).unwrap();
        m.compact();
        let reads = c.reads().0;
        c.set_reachable(true);
        assert_eq!(c.reads().0, reads + 1, "one full read");
        let seen = seen.lock().unwrap();
        match &seen[2] {
            WatchEvent::Reset { revision, kvs } => {
                assert_eq!(*revision, m.revision());
                assert_eq!(kvs.len(), 2);
            }
            e => panic!("expected a reset, got {e:?}"),
        }
    }

    #[test]
    fn held_watches_arrive_late_in_order_and_lost_ones_read_everything() {
        let m = MemEtcd::new();
        let c = m.client();
        let seen = events(&c, "k/");
        c.hold_watches(true);
        m.put("k/a", b"1", 0).unwrap();
        m.put("k/a", b"2", 0).unwrap();
        assert_eq!(seen.lock().unwrap().len(), 1, "held back");
        c.hold_watches(false);
        let values: Vec<Vec<u8>> = seen.lock().unwrap()[1..]
            .iter()
            .filter_map(|e| match e {
                WatchEvent::Put(kv) => Some(kv.value.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(values, vec![b"1".to_vec(), b"2".to_vec()]);
        // Lost: what was held is dropped, and a full read follows.
        c.hold_watches(true);
        m.put("k/b", b"3", 0).unwrap();
        c.lose_watches();
        c.hold_watches(false);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 4, "{seen:?}");
        assert!(matches!(&seen[3], WatchEvent::Reset { kvs, .. } if kvs.len() == 2));
        assert_eq!(m.reads(), (0, 0), "the reads were the other handle's");
        assert_eq!(c.reads(), (2, 2), "two full reads: the watch's start (empty) and after the loss");
    }

    #[test]
    fn a_sink_may_write_and_events_stay_in_revision_order() {
        let m = MemEtcd::new();
        let seen = events(&m, "");
        let w = m.clone();
        m.watch(
            vec!["a".into()],
            Box::new(move |ev| {
                if let WatchEvent::Put(kv) = ev {
                    w.put(&format!("b{}", kv.key), b"echo", 0).unwrap();
                }
            }),
        )
        .unwrap();
        m.put("a1", b"x", 0).unwrap();
        let revisions: Vec<i64> = seen
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                WatchEvent::Put(kv) => Some(kv.mod_revision),
                _ => None,
            })
            .collect();
        assert_eq!(revisions, vec![2, 3]);
        assert!(m.get("ba1").unwrap().is_some());
    }
}
