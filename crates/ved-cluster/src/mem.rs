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
//! happens meanwhile; when it is reachable again, each of them gets a fresh `Reset`, as
//! a real watch that had to start again does.

use crate::etcd::{Compare, EtcdError, Kv, KvStore, Op, Range, WatchEvent};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// etcd's default `--max-txn-ops`.
const MAX_TXN_OPS: usize = 128;

type Sink = Arc<dyn Fn(WatchEvent) + Send + Sync>;

struct Lease {
    ttl: i64,
    expires_ms: u64,
    keys: BTreeSet<String>,
}

struct Watcher {
    prefixes: Vec<String>,
    sink: Sink,
    /// The reachability of the handle that registered it.
    reachable: Arc<AtomicBool>,
    /// Whether it missed a change while its handle was cut off.
    missed: bool,
}

impl Watcher {
    fn covers(&self, key: &str) -> bool {
        self.prefixes.iter().any(|p| key.starts_with(p.as_str()))
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
}

impl State {
    fn notify(&mut self, ev: WatchEvent) {
        let key = match &ev {
            WatchEvent::Put(kv) => kv.key.clone(),
            WatchEvent::Delete { key, .. } => key.clone(),
            WatchEvent::Reset { .. } => return,
        };
        for (i, w) in self.watchers.iter_mut().enumerate() {
            if !w.covers(&key) {
                continue;
            }
            if w.reachable.load(Ordering::SeqCst) {
                self.queue.push_back((i, ev.clone()));
            } else {
                w.missed = true;
            }
        }
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
    reachable: Arc<AtomicBool>,
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
        MemEtcd { state: Arc::new(Mutex::new(state)), reachable: Arc::new(AtomicBool::new(true)) }
    }

    /// Another handle on the same store, reachable, with its own reachability.
    pub fn client(&self) -> MemEtcd {
        MemEtcd { state: self.state.clone(), reachable: Arc::new(AtomicBool::new(true)) }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Cuts this handle off (every call fails with `Unavailable`, its watches miss
    /// changes) or connects it again (each watch that missed something gets a `Reset`).
    pub fn set_reachable(&self, reachable: bool) {
        let was = self.reachable.swap(reachable, Ordering::SeqCst);
        if !reachable || was {
            return;
        }
        {
            let mut s = self.lock();
            let revision = s.revision;
            for i in 0..s.watchers.len() {
                let w = &s.watchers[i];
                if w.missed && Arc::ptr_eq(&w.reachable, &self.reachable) {
                    let kvs = s.under(&w.prefixes);
                    s.watchers[i].missed = false;
                    s.queue.push_back((i, WatchEvent::Reset { revision, kvs }));
                }
            }
        }
        self.deliver();
    }

    pub fn is_reachable(&self) -> bool {
        self.reachable.load(Ordering::SeqCst)
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
        Ok(self.lock().kvs.get(key).cloned())
    }

    fn get_prefix(&self, prefix: &str) -> Result<Vec<Kv>, EtcdError> {
        self.check()?;
        Ok(self.lock().under(&[prefix.to_string()]))
    }

    fn read(&self, ranges: &[Range]) -> Result<Vec<Kv>, EtcdError> {
        self.check()?;
        Ok(self.lock().read(ranges))
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
            let revision = s.revision;
            let kvs = s.under(&prefixes);
            let i = s.watchers.len();
            s.watchers.push(Watcher {
                prefixes,
                sink: Arc::from(sink),
                reachable: self.reachable.clone(),
                missed: false,
            });
            s.queue.push_back((i, WatchEvent::Reset { revision, kvs }));
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
    fn a_cut_off_handle_fails_and_its_watch_starts_again() {
        let m = MemEtcd::new();
        let c = m.client();
        let seen = events(&c, "k/");
        c.set_reachable(false);
        assert!(c.get("k/a").unwrap_err().is_unavailable());
        assert!(c.keepalive(1).unwrap_err().is_unavailable());
        m.put("k/a", b"1", 0).unwrap();
        assert_eq!(seen.lock().unwrap().len(), 1, "only the first reset");
        c.set_reachable(true);
        let seen = seen.lock().unwrap();
        match &seen[1] {
            WatchEvent::Reset { revision, kvs } => {
                assert_eq!(*revision, m.revision());
                assert_eq!(kvs.len(), 1);
            }
            e => panic!("expected a reset, got {e:?}"),
        }
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
