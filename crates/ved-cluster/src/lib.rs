//! `ved-cluster`: Ved nodes sharing instances through etcd, with no consensus of
//! our own. A node registers under a lease; each instance is owned by one node,
//! recorded as a key attached to the owner's lease, so it vanishes when the owner
//! dies and a survivor takes over. Every snapshot is written in a transaction that
//! checks the owner key still names this node under this node's lease (fencing):
//! a node that lost its lease can neither write state nor, since intents leave only
//! after their snapshot is written, deliver intents. The owner key's creation
//! revision is the fencing token every intent carries.
//!
//! Membership and ownership are watched, not polled: a node keeps a view of the
//! node keys and owner keys, fed by an etcd watch, and balances when it changes.
//!
//! # Errors
//!
//! Every fallible call, of [`Membership`] and of the [`etcd`] client, returns an
//! [`EtcdError`] (`std::error::Error`): `Unavailable` when no endpoint answered, after
//! each was tried (`etcd is unreachable: url: reason`), and `Rejected` when one answered
//! with an error (`etcd refused: url: message`). Losing ownership is not an error:
//! [`Membership::save`] and [`Membership::release`] answer `Ok(false)` when fenced out,
//! and [`Membership::acting`] turns false once the lease may have lapsed.

pub mod etcd;

pub use etcd::EtcdError;

use etcd::{Compare, Etcd, Kv, Op, WatchEvent};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An instance's owner key, as last seen.
#[derive(Clone, Debug, PartialEq)]
pub struct Owner {
    pub node: String,
    pub lease: i64,
    /// The key's creation revision: the fencing token.
    pub fence: i64,
}

/// The node keys and owner keys, as the watch last reported them.
#[derive(Default)]
struct View {
    revision: i64,
    nodes: BTreeMap<String, String>,
    owners: BTreeMap<String, Owner>,
}

impl View {
    fn apply(&mut self, prefix: &str, ev: WatchEvent) {
        let owners = format!("{prefix}/owners/");
        let nodes = format!("{prefix}/nodes/");
        let put = |v: &mut View, kv: Kv| {
            let value = String::from_utf8_lossy(&kv.value).into_owned();
            if let Some(i) = kv.key.strip_prefix(&owners) {
                v.owners.insert(i.to_string(), Owner { node: value, lease: kv.lease, fence: kv.create_revision });
            } else if kv.key.starts_with(&nodes) {
                v.nodes.insert(kv.key.clone(), value);
            }
        };
        match ev {
            WatchEvent::Reset { revision, kvs } => {
                // A read older than what the watch already showed would step back.
                if revision < self.revision {
                    return;
                }
                self.nodes.clear();
                self.owners.clear();
                self.revision = revision;
                for kv in kvs {
                    put(self, kv);
                }
            }
            WatchEvent::Put(kv) => {
                // Several keys can change at one revision (a revoked lease deletes them all).
                if kv.mod_revision < self.revision {
                    return;
                }
                self.revision = kv.mod_revision;
                put(self, kv);
            }
            WatchEvent::Delete { key, revision } => {
                if revision < self.revision {
                    return;
                }
                self.revision = revision;
                if let Some(i) = key.strip_prefix(&owners) {
                    self.owners.remove(i);
                }
                self.nodes.remove(&key);
            }
        }
    }
}

/// One node's membership: its lease, kept alive in the background.
pub struct Membership {
    pub etcd: Arc<Etcd>,
    prefix: String,
    pub node: String,
    ttl: i64,
    lease: AtomicI64,
    /// Set once the lease may have lapsed: the node must stop acting.
    lost: AtomicBool,
    stop: AtomicBool,
    last_renewed: Mutex<Instant>,
    view: Mutex<View>,
    /// Counts the watch's reports, so the node can balance when something changed.
    changes: AtomicU64,
}

impl Membership {
    /// Registers `node` under a lease of `ttl` seconds and keeps it alive.
    pub fn join(etcd: Arc<Etcd>, prefix: &str, node: &str, ttl: i64) -> Result<Arc<Membership>, EtcdError> {
        let m = Arc::new(Membership {
            etcd,
            prefix: prefix.trim_end_matches('/').to_string(),
            node: node.to_string(),
            ttl,
            lease: AtomicI64::new(0),
            lost: AtomicBool::new(true),
            stop: AtomicBool::new(false),
            last_renewed: Mutex::new(Instant::now()),
            view: Mutex::new(View::default()),
            changes: AtomicU64::new(0),
        });
        m.register()?;
        // The watch holds only a weak reference, so the membership can still be dropped.
        let weak = Arc::downgrade(&m);
        let prefixes = vec![m.key("nodes", ""), m.key("owners", "")];
        m.etcd.watch(prefixes, move |ev| {
            if let Some(m) = weak.upgrade() {
                m.view.lock().unwrap_or_else(|p| p.into_inner()).apply(&m.prefix, ev);
                m.changes.fetch_add(1, Ordering::SeqCst);
            }
        });
        let bg = m.clone();
        std::thread::Builder::new()
            .name("ved-lease".into())
            .spawn(move || bg.keep_alive())
            .map_err(|e| EtcdError::Unavailable(e.to_string()))?;
        Ok(m)
    }

    fn register(&self) -> Result<(), EtcdError> {
        let lease = self.etcd.grant(self.ttl)?;
        self.etcd.put(&self.key("nodes", &self.node), self.node.as_bytes(), lease)?;
        self.lease.store(lease, Ordering::SeqCst);
        *self.last_renewed.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        self.lost.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Renews the lease a few times per TTL. If renewal fails for a whole TTL, or etcd says
    /// the lease expired, the node stops acting; when etcd answers again it registers anew.
    fn keep_alive(self: Arc<Self>) {
        let period = Duration::from_millis((self.ttl as u64 * 1000 / 4).max(100));
        let mut wait = period;
        while !self.stop.load(Ordering::SeqCst) {
            std::thread::sleep(wait);
            // After a failed renewal, try again soon: etcd may have elected a new leader.
            wait = Duration::from_millis(100).min(period);
            if self.stop.load(Ordering::SeqCst) {
                break;
            }
            if self.lost.load(Ordering::SeqCst) {
                if self.register().is_ok() {
                    wait = period;
                }
                continue;
            }
            match self.etcd.keepalive(self.lease()) {
                Ok(left) if left > 0 => {
                    *self.last_renewed.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
                    wait = period;
                }
                Ok(_) => {
                    // Register again only after a period, so the node loop sees that it lost the
                    // lease (and stands down) before a new lease replaces it.
                    self.lost.store(true, Ordering::SeqCst);
                    wait = period;
                }
                Err(_) => {
                    let since = self.last_renewed.lock().unwrap_or_else(|p| p.into_inner()).elapsed();
                    // Stop before the lease can have lapsed on the server, with a margin.
                    if since + period >= Duration::from_secs(self.ttl as u64) {
                        self.lost.store(true, Ordering::SeqCst);
                    }
                }
            }
        }
    }

    pub fn lease(&self) -> i64 {
        self.lease.load(Ordering::SeqCst)
    }

    /// Whether this node may act: its lease is known to be alive.
    pub fn acting(&self) -> bool {
        !self.lost.load(Ordering::SeqCst)
    }

    fn key(&self, kind: &str, name: &str) -> String {
        format!("{}/{kind}/{name}", self.prefix)
    }

    /// The nodes whose leases are alive, as watched (no request to etcd).
    pub fn live_nodes(&self) -> Vec<String> {
        let view = self.view.lock().unwrap_or_else(|p| p.into_inner());
        let mut nodes: Vec<String> = view.nodes.values().cloned().collect();
        nodes.sort();
        nodes.dedup();
        nodes
    }

    /// An instance's owner, as watched (no request to etcd).
    pub fn watched_owner(&self, instance: &str) -> Option<Owner> {
        self.view.lock().unwrap_or_else(|p| p.into_inner()).owners.get(instance).cloned()
    }

    /// Whether this owner key is this node's under its current lease: an acquisition whose
    /// answer was lost (a request that timed out but was applied).
    pub fn is_mine(&self, owner: &Owner) -> bool {
        owner.node == self.node && owner.lease == self.lease() && self.lease() != 0
    }

    /// How many changes the watch has reported so far: balance when it moves.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::SeqCst)
    }

    /// The owner of an instance and its fencing token, if it has one.
    pub fn owner(&self, instance: &str) -> Result<Option<(String, i64)>, EtcdError> {
        Ok(self
            .etcd
            .get(&self.key("owners", instance))?
            .map(|kv| (String::from_utf8_lossy(&kv.value).into_owned(), kv.create_revision)))
    }

    /// Takes an instance that has no owner; returns its fencing token.
    pub fn acquire(&self, instance: &str) -> Result<Option<i64>, EtcdError> {
        let key = self.key("owners", instance);
        let (ok, rev) = self.etcd.txn(
            &[Compare::Absent(key.clone())],
            &[Op::Put { key, value: self.node.as_bytes().to_vec(), lease: self.lease() }],
        )?;
        Ok(ok.then_some(rev))
    }

    /// Gives an instance up (after saving it), so a successor need not wait for the TTL.
    pub fn release(&self, instance: &str) -> Result<bool, EtcdError> {
        let key = self.key("owners", instance);
        let (ok, _) = self.etcd.txn(&self.fence(&key), &[Op::Delete(key.clone())])?;
        Ok(ok)
    }

    fn fence(&self, owner_key: &str) -> Vec<Compare> {
        vec![
            Compare::ValueIs(owner_key.to_string(), self.node.as_bytes().to_vec()),
            Compare::LeaseIs(owner_key.to_string(), self.lease()),
        ]
    }

    /// Writes an instance's snapshot if this node still owns it under its current lease.
    /// `Ok(false)`: fenced out, another node owns it now.
    pub fn save(&self, instance: &str, snapshot: &[u8]) -> Result<bool, EtcdError> {
        let owner = self.key("owners", instance);
        let (ok, _) = self.etcd.txn(
            &self.fence(&owner),
            &[Op::Put { key: self.key("snapshots", instance), value: snapshot.to_vec(), lease: 0 }],
        )?;
        Ok(ok)
    }

    pub fn load(&self, instance: &str) -> Result<Option<Vec<u8>>, EtcdError> {
        Ok(self.etcd.get(&self.key("snapshots", instance))?.map(|kv| kv.value))
    }

    /// Leaves the cluster: revokes the lease, which deletes the node key and every owner
    /// key under it at once.
    pub fn leave(&self) -> Result<(), EtcdError> {
        self.stop.store(true, Ordering::SeqCst);
        self.lost.store(true, Ordering::SeqCst);
        self.etcd.revoke(self.lease())
    }
}

/// Rendezvous hashing: the node that should own `instance`. Every node computes the
/// same answer from the same live set, and a join or a loss moves only the instances
/// that must move.
pub fn rendezvous<'a>(instance: &str, nodes: &'a [String]) -> Option<&'a str> {
    nodes.iter().max_by_key(|n| score(instance, n)).map(String::as_str)
}

fn score(instance: &str, node: &str) -> u64 {
    // FNV-1a: stable across builds and platforms, unlike the std hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in instance.bytes().chain([0xff]).chain(node.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // A final mix so that similar names spread.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_spreads_and_moves_only_what_it_must() {
        let three: Vec<String> = ["n1", "n2", "n3"].iter().map(|s| s.to_string()).collect();
        let two: Vec<String> = ["n1", "n2"].iter().map(|s| s.to_string()).collect();
        let names: Vec<String> = (0..60).map(|i| format!("instance-{i}")).collect();
        let mut per = std::collections::BTreeMap::new();
        for n in &names {
            *per.entry(rendezvous(n, &three).unwrap().to_string()).or_insert(0) += 1;
        }
        assert_eq!(per.len(), 3, "{per:?}");
        assert!(per.values().all(|c| *c >= 10), "{per:?}");
        // Losing n3 moves only n3's instances.
        for n in &names {
            let before = rendezvous(n, &three).unwrap();
            let after = rendezvous(n, &two).unwrap();
            if before != "n3" {
                assert_eq!(before, after);
            }
        }
    }
}
