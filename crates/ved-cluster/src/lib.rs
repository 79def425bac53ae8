//! `ved-cluster`: Ved nodes sharing instances through etcd, with no consensus of
//! our own. A node registers under a lease; each instance is owned by one node,
//! recorded as a key attached to the owner's lease, so it vanishes when the owner
//! dies and a survivor takes over. Every write of an instance's state is a transaction
//! that checks the owner key still names this node under this node's lease (fencing):
//! a node that lost its lease can neither write state nor, since intents leave only
//! after their snapshot is written, deliver intents. The owner key's creation
//! revision is the fencing token every intent carries.
//!
//! Membership, ownership and the registry of instances created at run time are watched,
//! not polled: a node keeps a view of the node keys and owner keys, fed by an etcd watch,
//! takes what changed ([`Membership::take_changes`]) and balances by it.
//!
//! # The store
//!
//! [`Membership`] needs only the operations of the [`KvStore`] trait: leases (grant,
//! keep-alive, revoke), reads, puts, transactions of [`Compare`]s and [`Op`]s, and
//! watches. [`etcd::Etcd`] is the real, blocking gRPC client;
//! [`mem::MemEtcd`] is an etcd in memory with its own clock and no threads, where
//! leases expire when the test says time passed and a client can be cut off, so that
//! failover, fencing and standing down are tested deterministically.
//! [`Membership::join`] runs on etcd with the wall clock and a keep-alive thread;
//! [`Membership::join_manual`] runs on any store with a given clock and no thread,
//! the caller calling [`Membership::renew`] (the thread's loop calls it too).
//!
//! # Keys
//!
//! Under the prefix (say `/ved`):
//!
//! | key | value | lease |
//! |---|---|---|
//! | `nodes/{node}` | the node's name, then `\n` and its HTTP API URL if it advertises one | the node's |
//! | `owners/{instance}` | the owner node's name; creation revision = fencing token | the owner's |
//! | `instances/{instance}` | an instance created at run time: its definition | none |
//! | `snapshots/{instance}` | the instance's last snapshot | none |
//! | `journal/{instance}/{slice:020}` | a journal entry, by slice | none |
//! | `audit/{instance}/{seq:020}` | an audit record, by sequence number | none |
//!
//! Snapshots, journals and audit records stay when their owner goes, so they move
//! with the instance to its next owner; [`Membership::save_state`] writes them in one
//! fenced transaction, and [`read_state`], [`list_instances`], [`owners`] and [`nodes`]
//! read them without joining. The bytes are opaque here: the caller serializes.
//!
//! # Errors
//!
//! Every fallible call, of [`Membership`] and of the [`etcd`] client, returns an
//! [`EtcdError`] (`std::error::Error`): `Unavailable` when no endpoint answered, after
//! each was tried (`etcd is unreachable: url: reason`), and `Rejected` when one answered
//! with an error (`etcd refused: url: message`). Losing ownership is not an error:
//! [`Membership::save`], [`Membership::save_state`] and [`Membership::release`] answer
//! `Ok(false)` when fenced out, and [`Membership::acting`] turns false once the lease
//! may have lapsed.

pub mod etcd;
pub mod mem;

pub use etcd::{Compare, EtcdError, Kv, KvStore, Op, Range, WatchEvent};

use etcd::Etcd;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A clock in milliseconds, for leases: only its differences matter.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The wall clock: milliseconds since a fixed point of this process, monotonic.
pub fn wall_clock() -> Clock {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    Arc::new(move || epoch.elapsed().as_millis() as u64)
}

/// An instance's owner key, as last seen.
#[derive(Clone, Debug, PartialEq)]
pub struct Owner {
    pub node: String,
    pub lease: i64,
    /// The key's creation revision: the fencing token.
    pub fence: i64,
}

impl From<Kv> for Owner {
    fn from(kv: Kv) -> Owner {
        Owner { node: String::from_utf8_lossy(&kv.value).into_owned(), lease: kv.lease, fence: kv.create_revision }
    }
}

/// A node key's value: the name, then the URL if any. A name holds no newline.
fn node_value(node: &str, url: Option<&str>) -> Vec<u8> {
    match url {
        Some(u) => format!("{node}\n{u}").into_bytes(),
        None => node.as_bytes().to_vec(),
    }
}

/// Reads a node key's value; one with no newline (as nodes wrote before URLs) is a name.
fn parse_node(value: &[u8]) -> (String, Option<String>) {
    let v = String::from_utf8_lossy(value);
    match v.split_once('\n') {
        Some((name, url)) => (name.to_string(), Some(url.to_string()).filter(|u| !u.is_empty())),
        None => (v.into_owned(), None),
    }
}

fn key(prefix: &str, kind: &str, name: &str) -> String {
    format!("{prefix}/{kind}/{name}")
}

/// The directory of an instance's numbered keys (journal, audit).
fn numbered_dir(prefix: &str, kind: &str, instance: &str) -> String {
    format!("{prefix}/{kind}/{instance}/")
}

/// Zero-padded, so that key order is number order.
fn numbered_key(prefix: &str, kind: &str, instance: &str, n: u64) -> String {
    format!("{prefix}/{kind}/{instance}/{n:020}")
}

/// The number of a key in `dir`; `None` for a key of another instance whose name
/// extends this one's (`a/b` under `a`).
fn number_in(key: &str, dir: &str) -> Option<u64> {
    let rest = key.strip_prefix(dir)?;
    if rest.len() != 20 || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    rest.parse().ok()
}

/// What an owner writes of one instance, in one transaction: [`Membership::save_state`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InstanceWrite {
    /// The new snapshot, if there is one.
    pub snapshot: Option<Vec<u8>>,
    /// Journal entries, by slice. A slice given twice: the last one counts.
    pub journal: Vec<(u64, Vec<u8>)>,
    /// Deletes every journal entry of a slice below this one (the snapshot covers them);
    /// entries of `journal` below it are not written.
    pub trim_journal_before: Option<u64>,
    /// Audit records, by sequence number. A number given twice: the last one counts.
    pub audit: Vec<(u64, Vec<u8>)>,
}

/// What is stored of one instance: [`Membership::load_state`], [`read_state`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InstanceState {
    pub snapshot: Option<Vec<u8>>,
    /// By slice, ascending.
    pub journal: Vec<(u64, Vec<u8>)>,
    /// By sequence number, ascending.
    pub audit: Vec<(u64, Vec<u8>)>,
}

/// The operations of an [`InstanceWrite`].
fn state_ops(prefix: &str, instance: &str, w: &InstanceWrite) -> Vec<Op> {
    let mut ops = Vec::new();
    if let Some(s) = &w.snapshot {
        ops.push(Op::Put { key: key(prefix, "snapshots", instance), value: s.clone(), lease: 0 });
    }
    let trim = w.trim_journal_before.unwrap_or(0);
    // etcd refuses a transaction that puts a key twice, or puts a key that its delete
    // covers; an entry below the trim would be deleted anyway.
    let journal: BTreeMap<u64, &Vec<u8>> = w.journal.iter().filter(|(s, _)| *s >= trim).map(|(s, b)| (*s, b)).collect();
    for (slice, bytes) in journal {
        ops.push(Op::Put { key: numbered_key(prefix, "journal", instance, slice), value: bytes.clone(), lease: 0 });
    }
    if trim > 0 {
        ops.push(Op::DeleteRange {
            from: numbered_dir(prefix, "journal", instance),
            to: numbered_key(prefix, "journal", instance, trim),
        });
    }
    let audit: BTreeMap<u64, &Vec<u8>> = w.audit.iter().map(|(s, b)| (*s, b)).collect();
    for (seq, bytes) in audit {
        ops.push(Op::Put { key: numbered_key(prefix, "audit", instance, seq), value: bytes.clone(), lease: 0 });
    }
    ops
}

/// An instance's snapshot, journal and audit records, read at one revision, without
/// joining (for read-only tools). `prefix` as given to [`Membership::join`].
pub fn read_state(kv: &dyn KvStore, prefix: &str, instance: &str) -> Result<InstanceState, EtcdError> {
    let prefix = prefix.trim_end_matches('/');
    let snapshot = key(prefix, "snapshots", instance);
    let journal = numbered_dir(prefix, "journal", instance);
    let audit = numbered_dir(prefix, "audit", instance);
    let kvs = kv.read(&[Range::Key(snapshot.clone()), Range::Prefix(journal.clone()), Range::Prefix(audit.clone())])?;
    let mut state = InstanceState::default();
    for kv in kvs {
        if kv.key == snapshot {
            state.snapshot = Some(kv.value);
        } else if let Some(n) = number_in(&kv.key, &journal) {
            state.journal.push((n, kv.value));
        } else if let Some(n) = number_in(&kv.key, &audit) {
            state.audit.push((n, kv.value));
        }
    }
    Ok(state)
}

/// The instances that have a snapshot, in name order.
pub fn list_instances(kv: &dyn KvStore, prefix: &str) -> Result<Vec<String>, EtcdError> {
    let dir = key(prefix.trim_end_matches('/'), "snapshots", "");
    Ok(kv.get_prefix(&dir)?.into_iter().filter_map(|kv| kv.key.strip_prefix(&dir).map(str::to_string)).collect())
}

/// The first key past every key of `dir` (which ends with `/`).
fn dir_end(dir: &str) -> String {
    let mut end = dir.trim_end_matches('/').to_string();
    end.push('0'); // the character after `/`
    end
}

/// Registers an instance created at run time (`instances/NAME`, its definition as opaque
/// bytes), unless it is registered already or has state. `Ok(false)`: the name is taken.
pub fn register_instance(kv: &dyn KvStore, prefix: &str, name: &str, definition: &[u8]) -> Result<bool, EtcdError> {
    let prefix = prefix.trim_end_matches('/');
    let k = key(prefix, "instances", name);
    let (ok, _) = kv.txn(
        &[Compare::Absent(k.clone()), Compare::Absent(key(prefix, "snapshots", name))],
        &[Op::Put { key: k, value: definition.to_vec(), lease: 0 }],
    )?;
    Ok(ok)
}

/// Removes a registered instance; its owner forgets its state at its next balance.
/// `Ok(false)`: no such registered instance.
pub fn unregister_instance(kv: &dyn KvStore, prefix: &str, name: &str) -> Result<bool, EtcdError> {
    let k = key(prefix.trim_end_matches('/'), "instances", name);
    let (ok, _) = kv.txn(&[Compare::Exists(k.clone())], &[Op::Delete(k)])?;
    Ok(ok)
}

/// Every registered instance and its definition, in one read (for tools; a node keeps the
/// registry from its watch instead).
pub fn registered_instances(kv: &dyn KvStore, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, EtcdError> {
    let dir = key(prefix.trim_end_matches('/'), "instances", "");
    Ok(kv
        .get_prefix(&dir)?
        .into_iter()
        .filter_map(|kv| Some((kv.key.strip_prefix(&dir)?.to_string(), kv.value)))
        .collect())
}

/// Every instance's owner, as etcd has them now.
pub fn owners(kv: &dyn KvStore, prefix: &str) -> Result<BTreeMap<String, Owner>, EtcdError> {
    let dir = key(prefix.trim_end_matches('/'), "owners", "");
    Ok(kv
        .get_prefix(&dir)?
        .into_iter()
        .filter_map(|kv| Some((kv.key.strip_prefix(&dir)?.to_string(), Owner::from(kv))))
        .collect())
}

/// The live nodes, as etcd has them now, with the HTTP API URL each advertises.
pub fn nodes(kv: &dyn KvStore, prefix: &str) -> Result<BTreeMap<String, Option<String>>, EtcdError> {
    let dir = key(prefix.trim_end_matches('/'), "nodes", "");
    Ok(kv.get_prefix(&dir)?.into_iter().map(|kv| parse_node(&kv.value)).collect())
}

/// What the watch reported since the node last looked ([`Membership::take_changes`]): what a
/// node needs to balance by the change, not by the size of the fleet.
#[derive(Debug, Default, PartialEq)]
pub struct Changes {
    /// The watch read everything again (at the start, or after it was lost or compacted):
    /// the node and owner keys may differ in any way, and `registry` holds every registered
    /// instance (with what changed since), so a node replaces its registry with it.
    pub reset: bool,
    /// A node key was written or deleted.
    pub nodes: bool,
    /// Registered instances written (`Some`, the definition) or deleted (`None`), by name;
    /// several changes of one name count as its last.
    pub registry: BTreeMap<String, Option<Vec<u8>>>,
    /// Instances whose owner key was written or deleted.
    pub owners: BTreeSet<String>,
}

/// The node keys and owner keys, as the watch last reported them, and what changed since
/// the node last looked. The registry itself is not kept here: the node keeps it, parsed.
#[derive(Default)]
struct View {
    /// The highest revision seen: a read older than it would step back.
    revision: i64,
    /// The revision of the last full read: an event at or below it is in that read already.
    /// Events above it are applied in the order they come; each key's come in order (etcd
    /// orders each watch), though those of different prefixes may interleave.
    base: i64,
    /// Node key -> (name, URL).
    nodes: BTreeMap<String, (String, Option<String>)>,
    owners: BTreeMap<String, Owner>,
    pending: Changes,
}

impl View {
    /// Applies a watch event; returns whether it was a full read.
    fn apply(&mut self, prefix: &str, ev: WatchEvent) -> bool {
        let owners = format!("{prefix}/owners/");
        let nodes = format!("{prefix}/nodes/");
        let instances = format!("{prefix}/instances/");
        let put = |v: &mut View, kv: Kv| {
            if let Some(i) = kv.key.strip_prefix(&owners) {
                v.pending.owners.insert(i.to_string());
                v.owners.insert(i.to_string(), Owner::from(kv));
            } else if let Some(i) = kv.key.strip_prefix(&instances) {
                v.pending.registry.insert(i.to_string(), Some(kv.value));
            } else if kv.key.starts_with(&nodes) {
                v.pending.nodes = true;
                v.nodes.insert(kv.key.clone(), parse_node(&kv.value));
            }
        };
        match ev {
            WatchEvent::Reset { revision, kvs } => {
                if revision < self.revision {
                    return false;
                }
                self.nodes.clear();
                self.owners.clear();
                self.revision = revision;
                self.base = revision;
                // Whatever was pending is in this read; the node starts over from it.
                self.pending = Changes { reset: true, nodes: true, ..Changes::default() };
                for kv in kvs {
                    put(self, kv);
                }
                return true;
            }
            WatchEvent::Put(kv) => {
                if kv.mod_revision <= self.base {
                    return false;
                }
                self.revision = self.revision.max(kv.mod_revision);
                put(self, kv);
            }
            WatchEvent::Delete { key, revision } => {
                if revision <= self.base {
                    return false;
                }
                self.revision = self.revision.max(revision);
                if let Some(i) = key.strip_prefix(&owners) {
                    self.owners.remove(i);
                    self.pending.owners.insert(i.to_string());
                } else if let Some(i) = key.strip_prefix(&instances) {
                    self.pending.registry.insert(i.to_string(), None);
                } else if self.nodes.remove(&key).is_some() {
                    self.pending.nodes = true;
                }
            }
        }
        false
    }
}

/// What one keep-alive round did: [`Membership::renew`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Renewal {
    /// The lease was renewed.
    Renewed,
    /// etcd said the lease had expired: the node stopped acting, and the next round
    /// registers it anew.
    Expired,
    /// etcd did not answer (renewing or registering). The node still acts unless the
    /// lease may have lapsed meanwhile.
    Failed,
    /// The node had stopped acting and is registered again, under a new lease.
    Registered,
    /// The node left the cluster: nothing was done.
    Left,
}

/// One node's membership: its lease, kept alive by a thread ([`Membership::join`]) or by
/// the caller ([`Membership::join_manual`]).
pub struct Membership {
    pub etcd: Arc<dyn KvStore>,
    prefix: String,
    pub node: String,
    /// The HTTP API URL the node key carries.
    advertise: Option<String>,
    ttl: i64,
    lease: AtomicI64,
    /// Set once the lease may have lapsed: the node must stop acting.
    lost: AtomicBool,
    stop: AtomicBool,
    /// When the lease was last known alive, on `clock`: taken before the request that
    /// renewed it was sent, since etcd counts the TTL from some time after that.
    last_renewed: AtomicU64,
    clock: Clock,
    view: Mutex<View>,
    /// Counts the watch's reports, so the node can balance when something changed.
    changes: AtomicU64,
    /// Counts the watch's full reads (the first one included).
    resets: AtomicU64,
}

impl Membership {
    /// Registers `node` under a lease of `ttl` seconds and keeps it alive.
    pub fn join(etcd: Arc<Etcd>, prefix: &str, node: &str, ttl: i64) -> Result<Arc<Membership>, EtcdError> {
        Membership::join_with(etcd, prefix, node, ttl, None)
    }

    /// As [`join`](Membership::join), with the node's HTTP API URL (such as
    /// `http://127.0.0.1:7001`) in its node key, for the other nodes to find
    /// ([`node_url`](Membership::node_url)).
    pub fn join_with(
        etcd: Arc<Etcd>,
        prefix: &str,
        node: &str,
        ttl: i64,
        advertise: Option<String>,
    ) -> Result<Arc<Membership>, EtcdError> {
        Membership::join_kv(etcd, prefix, node, ttl, advertise)
    }

    /// As [`join_with`](Membership::join_with), on any store: the wall clock, and a thread
    /// that renews the lease a few times per TTL.
    pub fn join_kv(
        kv: Arc<dyn KvStore>,
        prefix: &str,
        node: &str,
        ttl: i64,
        advertise: Option<String>,
    ) -> Result<Arc<Membership>, EtcdError> {
        let m = Membership::start(kv, prefix, node, ttl, advertise, wall_clock())?;
        let bg = m.clone();
        std::thread::Builder::new()
            .name("ved-lease".into())
            .spawn(move || bg.keep_alive())
            .map_err(|e| EtcdError::Unavailable(e.to_string()))?;
        Ok(m)
    }

    /// Registers `node` with no thread: time is `clock` (milliseconds), and the caller
    /// calls [`renew`](Membership::renew) a few times per TTL (the thread of
    /// [`join`](Membership::join) does every quarter TTL); [`acting`](Membership::acting)
    /// changes only in `renew`. For tests, on [`MemEtcd`](mem::MemEtcd) and its
    /// [clock](mem::MemEtcd::clock).
    pub fn join_manual(
        kv: Arc<dyn KvStore>,
        prefix: &str,
        node: &str,
        ttl: i64,
        advertise: Option<String>,
        clock: Clock,
    ) -> Result<Arc<Membership>, EtcdError> {
        Membership::start(kv, prefix, node, ttl, advertise, clock)
    }

    fn start(
        kv: Arc<dyn KvStore>,
        prefix: &str,
        node: &str,
        ttl: i64,
        advertise: Option<String>,
        clock: Clock,
    ) -> Result<Arc<Membership>, EtcdError> {
        let now = clock();
        let m = Arc::new(Membership {
            etcd: kv,
            prefix: prefix.trim_end_matches('/').to_string(),
            node: node.to_string(),
            advertise,
            ttl,
            lease: AtomicI64::new(0),
            lost: AtomicBool::new(true),
            stop: AtomicBool::new(false),
            last_renewed: AtomicU64::new(now),
            clock,
            view: Mutex::new(View::default()),
            changes: AtomicU64::new(0),
            resets: AtomicU64::new(0),
        });
        m.register()?;
        // The watch holds only a weak reference, so the membership can still be dropped.
        let weak = Arc::downgrade(&m);
        // Registered instances are watched too: the node keeps the registry from this watch
        // (its first full read loads it) and balances by what changed, not by re-reading it.
        let prefixes = vec![m.key("nodes", ""), m.key("owners", ""), m.key("instances", "")];
        let watched = m.etcd.watch(
            prefixes,
            Box::new(move |ev| {
                if let Some(m) = weak.upgrade() {
                    if m.view.lock().unwrap_or_else(|p| p.into_inner()).apply(&m.prefix, ev) {
                        m.resets.fetch_add(1, Ordering::SeqCst);
                    }
                    m.changes.fetch_add(1, Ordering::SeqCst);
                }
            }),
        );
        if let Err(e) = watched {
            let _ = m.etcd.revoke(m.lease());
            return Err(e);
        }
        Ok(m)
    }

    fn register(&self) -> Result<(), EtcdError> {
        let sent = (self.clock)();
        let lease = self.etcd.grant(self.ttl)?;
        let value = node_value(&self.node, self.advertise.as_deref());
        if let Err(e) = self.etcd.put(&self.key("nodes", &self.node), &value, lease) {
            // A lease with no node key would only keep owner keys nobody can use.
            let _ = self.etcd.revoke(lease);
            return Err(e);
        }
        self.lease.store(lease, Ordering::SeqCst);
        self.last_renewed.store(sent, Ordering::SeqCst);
        self.lost.store(false, Ordering::SeqCst);
        // `leave` ran meanwhile and revoked the lease before this one: revoke this one too.
        if self.stop.load(Ordering::SeqCst) {
            self.lost.store(true, Ordering::SeqCst);
            let _ = self.etcd.revoke(lease);
        }
        Ok(())
    }

    /// How often the thread renews the lease, in milliseconds; also the margin by which
    /// the node stands down before its lease can have lapsed on the server.
    fn period_ms(&self) -> u64 {
        (self.ttl.max(0) as u64 * 1000 / 4).max(100)
    }

    /// One keep-alive round. If renewal fails for a whole TTL (less a quarter TTL, as a
    /// margin, measured on the clock), or etcd says the lease expired, the node stops
    /// acting; the first round after that registers it anew, under a new lease.
    pub fn renew(&self) -> Renewal {
        if self.stop.load(Ordering::SeqCst) {
            return Renewal::Left;
        }
        if self.lost.load(Ordering::SeqCst) {
            return match self.register() {
                Ok(()) => Renewal::Registered,
                Err(_) => Renewal::Failed,
            };
        }
        let sent = (self.clock)();
        match self.etcd.keepalive(self.lease()) {
            Ok(left) if left > 0 => {
                self.last_renewed.store(sent, Ordering::SeqCst);
                Renewal::Renewed
            }
            Ok(_) => {
                self.lost.store(true, Ordering::SeqCst);
                Renewal::Expired
            }
            Err(_) => {
                let since = (self.clock)().saturating_sub(self.last_renewed.load(Ordering::SeqCst));
                if since + self.period_ms() >= self.ttl.max(0) as u64 * 1000 {
                    self.lost.store(true, Ordering::SeqCst);
                }
                Renewal::Failed
            }
        }
    }

    /// Renews the lease every period until the node leaves.
    fn keep_alive(self: Arc<Self>) {
        let period = Duration::from_millis(self.period_ms());
        let mut wait = period;
        while !self.stop.load(Ordering::SeqCst) {
            std::thread::sleep(wait);
            wait = match self.renew() {
                Renewal::Left => break,
                // Try again soon: etcd may have elected a new leader.
                Renewal::Failed => Duration::from_millis(100).min(period),
                // After `Expired`, register again only after a period, so the node loop sees
                // that it lost the lease (and stands down) before a new lease replaces it.
                Renewal::Renewed | Renewal::Expired | Renewal::Registered => period,
            };
        }
    }

    pub fn lease(&self) -> i64 {
        self.lease.load(Ordering::SeqCst)
    }

    /// Whether this node may act: its lease is known to be alive.
    pub fn acting(&self) -> bool {
        !self.lost.load(Ordering::SeqCst)
    }

    /// The key prefix, without a trailing `/`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn key(&self, kind: &str, name: &str) -> String {
        key(&self.prefix, kind, name)
    }

    fn view(&self) -> std::sync::MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The nodes whose leases are alive, as watched (no request to etcd).
    pub fn live_nodes(&self) -> Vec<String> {
        let mut nodes: Vec<String> = self.view().nodes.values().map(|(name, _)| name.clone()).collect();
        nodes.sort();
        nodes.dedup();
        nodes
    }

    /// The HTTP API URL a live node advertises, as watched (no request to etcd).
    pub fn node_url(&self, node: &str) -> Option<String> {
        self.view().nodes.values().find(|(name, _)| name == node).and_then(|(_, url)| url.clone())
    }

    /// An instance's owner, as watched (no request to etcd).
    pub fn watched_owner(&self, instance: &str) -> Option<Owner> {
        self.view().owners.get(instance).cloned()
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

    /// What the watch reported since the last call: registered instances written or deleted,
    /// owner keys changed, whether a node key changed or the watch read everything again.
    pub fn take_changes(&self) -> Changes {
        std::mem::take(&mut self.view().pending)
    }

    /// How many times the watch read every watched key (at the start, then each time it was
    /// lost and could not resume where it stopped).
    pub fn resets(&self) -> u64 {
        self.resets.load(Ordering::SeqCst)
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
        self.acquire_if(instance, Vec::new())
    }

    /// Takes a registered instance that has no owner, only while it is still registered:
    /// a node whose watch is late to report a deletion cannot bring the instance back.
    pub fn acquire_registered(&self, instance: &str) -> Result<Option<i64>, EtcdError> {
        self.acquire_if(instance, vec![Compare::Exists(self.key("instances", instance))])
    }

    fn acquire_if(&self, instance: &str, mut compares: Vec<Compare>) -> Result<Option<i64>, EtcdError> {
        let key = self.key("owners", instance);
        compares.push(Compare::Absent(key.clone()));
        let (ok, rev) =
            self.etcd.txn(&compares, &[Op::Put { key, value: self.node.as_bytes().to_vec(), lease: self.lease() }])?;
        Ok(ok.then_some(rev))
    }

    /// Deletes a deleted instance's state (snapshot, journal, audit) and its owner key, in
    /// one transaction fenced like [`save_state`](Membership::save_state).
    pub fn forget(&self, instance: &str) -> Result<bool, EtcdError> {
        let owner = self.key("owners", instance);
        let journal = numbered_dir(&self.prefix, "journal", instance);
        let audit = numbered_dir(&self.prefix, "audit", instance);
        let ops = vec![
            Op::Delete(key(&self.prefix, "snapshots", instance)),
            Op::DeleteRange { to: dir_end(&journal), from: journal },
            Op::DeleteRange { to: dir_end(&audit), from: audit },
            Op::Delete(owner.clone()),
        ];
        let (ok, _) = self.etcd.txn(&self.fence(&owner), &ops)?;
        Ok(ok)
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

    /// Writes an instance's snapshot, journal entries and audit records, and trims its
    /// journal, in one transaction fenced as [`save`](Membership::save): all of it, or,
    /// with `Ok(false)` (fenced out), none. etcd takes at most 128 operations per
    /// transaction by default (`--max-txn-ops`): one per snapshot, entry and record, and
    /// one for the trim.
    pub fn save_state(&self, instance: &str, write: &InstanceWrite) -> Result<bool, EtcdError> {
        let owner = self.key("owners", instance);
        let (ok, _) = self.etcd.txn(&self.fence(&owner), &state_ops(&self.prefix, instance, write))?;
        Ok(ok)
    }

    /// What is stored of an instance: [`read_state`].
    pub fn load_state(&self, instance: &str) -> Result<InstanceState, EtcdError> {
        read_state(&*self.etcd, &self.prefix, instance)
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
