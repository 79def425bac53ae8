//! The second [`Persistence`]: fenced writes to etcd, for cluster mode.
//!
//! Each batch is split by instance, and each instance's part (its latest snapshot,
//! journal entries, journal trim and audit entries) is written in one transaction
//! that holds only while the owner key still names this node under its lease
//! ([`Membership::save_state`]). A batch is durable once every part is written or
//! belongs to an instance this node no longer owns. A refused write means another
//! node owns the instance now: it is reported through [`Persistence::take_lost`]
//! and the engine drops it before releasing anything of it. An unreachable etcd
//! keeps the batch pending and tries again on the next flush; intents wait.
//!
//! Journal entries and audit entries are keyed by slice and by a per-instance audit
//! sequence, so they move with the instance: the next owner reads them back
//! ([`load`]) and the audit chain goes on from its last hash.

use crate::persist::Persistence;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use ved_cluster::{EtcdError, InstanceWrite, Membership};
use ved_store::audit::{AuditEntry, GENESIS};
use ved_store::{AuditDraft, JournalEntry, Record, SnapshotRecord};

/// etcd refuses a transaction of more than 128 operations; journal entries beyond
/// this many go in transactions of their own before the snapshot's.
const OPS_PER_TXN: usize = 100;

/// What this node owns, shared between the cluster client (which acquires and
/// hands over) and the persistence (which fences with it).
#[derive(Default)]
pub struct Owned {
    /// Instance -> fencing token (the owner key's creation revision).
    pub fences: BTreeMap<String, i64>,
    /// Instance -> (last audit sequence, its hash), as written.
    pub audit_heads: BTreeMap<String, (u64, String)>,
    /// Instances found fenced out since the cluster client last took this list: the engine
    /// drops them by itself, and the client, which tracks what it holds by change, learns
    /// of it here rather than by scanning everything it holds.
    pub fenced_out: Vec<String>,
}

#[derive(Default)]
struct Part {
    /// The ownership it was recorded under: written only while that ownership lasts, so
    /// a batch left unwritten from an earlier ownership never lands after a re-acquisition.
    fence: Option<i64>,
    snapshot: Option<SnapshotRecord>,
    journal: Vec<JournalEntry>,
    trim: Option<u64>,
    audit: Vec<AuditDraft>,
}

pub struct EtcdPersistence {
    m: Arc<Membership>,
    owned: Arc<Mutex<Owned>>,
    last: u64,
    durable: u64,
    pending: VecDeque<(u64, BTreeMap<String, Part>)>,
    lost: Vec<String>,
    /// The last write error, while etcd is unreachable.
    unreachable: Option<EtcdError>,
    /// How long each instance's fenced write took, for `GET /metrics`.
    txn_seconds: Histogram,
}

/// An instance's state as etcd has it, decoded.
#[derive(Default)]
pub struct Loaded {
    pub snapshot: Option<SnapshotRecord>,
    pub journal: Vec<JournalEntry>,
    pub audit: Vec<AuditEntry>,
}

/// Reads and decodes an instance's snapshot, journal and audit chain (one revision).
pub fn load(kv: &dyn ved_cluster::KvStore, prefix: &str, instance: &str) -> Result<Loaded, String> {
    let s = ved_cluster::read_state(kv, prefix, instance).map_err(|e| e.to_string())?;
    decode(s)
}

pub fn decode(s: ved_cluster::InstanceState) -> Result<Loaded, String> {
    let snapshot = match s.snapshot {
        Some(b) => Some(serde_json::from_slice(&b).map_err(|e| format!("a snapshot in etcd is unreadable: {e}"))?),
        None => None,
    };
    let mut journal = Vec::with_capacity(s.journal.len());
    for (slice, b) in s.journal {
        journal
            .push(serde_json::from_slice(&b).map_err(|e| format!("journal entry {slice} in etcd is unreadable: {e}"))?);
    }
    let mut audit = Vec::with_capacity(s.audit.len());
    for (seq, b) in s.audit {
        audit.push(serde_json::from_slice(&b).map_err(|e| format!("audit entry {seq} in etcd is unreadable: {e}"))?);
    }
    Ok(Loaded { snapshot, journal, audit })
}

impl EtcdPersistence {
    pub fn new(m: Arc<Membership>, owned: Arc<Mutex<Owned>>) -> EtcdPersistence {
        EtcdPersistence {
            m,
            owned,
            last: 0,
            durable: 0,
            pending: VecDeque::new(),
            lost: Vec::new(),
            unreachable: None,
            // 500 µs to about 16 s, doubling: a fenced transaction on a healthy cluster is a
            // few milliseconds; a lost quorum is seconds of timeouts.
            txn_seconds: Histogram::new(exponential_buckets(0.000_5, 2.0, 16)),
        }
    }

    fn owned(&self) -> std::sync::MutexGuard<'_, Owned> {
        self.owned.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes pending batches in order until one cannot be written.
    fn write_pending(&mut self) {
        while let Some((seq, mut parts)) = self.pending.pop_front() {
            let names: Vec<String> = parts.keys().cloned().collect();
            for name in names {
                let current = self.owned().fences.get(&name).copied();
                // Handed over or lost (perhaps taken again since): its writes are the new
                // owner's business now.
                let part = &parts[&name];
                let outcome = if current.is_some() && current == part.fence {
                    let t = std::time::Instant::now();
                    let outcome = write_part(&self.m, &self.owned, &name, part);
                    self.txn_seconds.observe(t.elapsed().as_secs_f64());
                    outcome
                } else {
                    Ok(true)
                };
                match outcome {
                    Ok(true) => {
                        parts.remove(&name);
                    }
                    Ok(false) => {
                        parts.remove(&name);
                        let mut o = self.owned();
                        o.fences.remove(&name);
                        o.audit_heads.remove(&name);
                        o.fenced_out.push(name.clone());
                        drop(o);
                        self.lost.push(name);
                    }
                    Err(e) => {
                        self.unreachable = Some(e);
                        self.pending.push_front((seq, parts));
                        return;
                    }
                }
            }
            self.unreachable = None;
            debug_assert!(seq > self.durable, "batches become durable in order");
            self.durable = seq;
        }
    }
}

/// One instance's part of a batch, fenced. `Ok(false)`: fenced out.
fn write_part(m: &Membership, owned: &Mutex<Owned>, name: &str, part: &Part) -> Result<bool, EtcdError> {
    let enc = |e: &JournalEntry| (e.slice, serde_json::to_vec(e).unwrap_or_default());
    let mut journal: Vec<(u64, Vec<u8>)> = part.journal.iter().map(enc).collect();
    // Early chunks first; the snapshot goes with the last one, so a reader never sees a
    // snapshot ahead of the journal that led to it.
    while journal.len() > OPS_PER_TXN {
        let rest = journal.split_off(OPS_PER_TXN);
        let chunk = std::mem::replace(&mut journal, rest);
        let w = InstanceWrite { snapshot: None, journal: chunk, trim_journal_before: None, audit: Vec::new() };
        if !m.save_state(name, &w)? {
            return Ok(false);
        }
    }
    let (mut seq, mut prev) = owned
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .audit_heads
        .get(name)
        .cloned()
        .unwrap_or((0, GENESIS.to_string()));
    let mut audit = Vec::with_capacity(part.audit.len());
    for d in &part.audit {
        seq += 1;
        let e = AuditEntry::new(seq, &prev, d);
        prev = e.hash.clone();
        audit.push((seq, serde_json::to_vec(&e).unwrap_or_default()));
    }
    let w = InstanceWrite {
        snapshot: part.snapshot.as_ref().map(|s| serde_json::to_vec(s).unwrap_or_default()),
        journal,
        trim_journal_before: part.trim,
        audit,
    };
    let ok = m.save_state(name, &w)?;
    if ok && !part.audit.is_empty() {
        owned.lock().unwrap_or_else(|p| p.into_inner()).audit_heads.insert(name.to_string(), (seq, prev));
    }
    Ok(ok)
}

impl Persistence for EtcdPersistence {
    fn append(&mut self, records: Vec<Record>, audit: Vec<AuditDraft>) -> u64 {
        let mut parts: BTreeMap<String, Part> = BTreeMap::new();
        for r in records {
            match r {
                Record::Snapshot(s) => {
                    let name = s.snapshot.name.clone();
                    parts.entry(name).or_default().snapshot = Some(std::sync::Arc::unwrap_or_clone(s));
                }
                Record::Journal(e) => {
                    parts.entry(e.instance.clone()).or_default().journal.push(std::sync::Arc::unwrap_or_clone(e))
                }
                Record::Trim { instance, keep_from_slice } => {
                    parts.entry(instance).or_default().trim = Some(keep_from_slice)
                }
                // The program is every node's own; a checkpoint marker means nothing here.
                // Cluster mode does not delete instances yet (the API answers 501).
                Record::Program { .. } | Record::Commit { .. } | Record::Remove { .. } | Record::Audit(_) => {}
            }
        }
        for d in audit {
            parts.entry(d.instance.clone()).or_default().audit.push(d);
        }
        let owned = self.owned();
        for (name, part) in parts.iter_mut() {
            part.fence = owned.fences.get(name).copied();
        }
        drop(owned);
        self.last += 1;
        self.pending.push_back((self.last, parts));
        self.write_pending();
        self.last
    }

    fn durable_seq(&self) -> u64 {
        self.durable
    }

    fn last_seq(&self) -> u64 {
        self.last
    }

    fn flush(&mut self) -> Result<u64, String> {
        self.write_pending();
        Ok(self.durable)
    }

    /// Every write is already a whole instance's latest state: nothing to compact.
    fn compact(&mut self, _records: Vec<Record>) -> u64 {
        self.last
    }

    fn wait_durable(&self, seq: u64) -> Result<(), String> {
        if self.durable >= seq {
            Ok(())
        } else {
            Err(self.unreachable.as_ref().map_or_else(|| "not written yet".to_string(), |e| e.to_string()))
        }
    }

    /// An unreachable etcd is not a failure: writes wait and are tried again.
    fn failure(&self) -> Option<String> {
        None
    }

    fn fence(&self, instance: &str) -> Option<i64> {
        self.owned().fences.get(instance).copied()
    }

    fn take_lost(&mut self) -> Vec<String> {
        std::mem::take(&mut self.lost)
    }

    fn close(mut self: Box<Self>) -> Result<(), String> {
        self.write_pending();
        match &self.unreachable {
            None => Ok(()),
            Some(e) => Err(e.to_string()),
        }
    }

    fn abandon(self: Box<Self>) {}

    fn latencies(&self) -> Vec<(&'static str, &'static str, Histogram)> {
        vec![(
            "ved_etcd_write_seconds",
            "Time each fenced write of an instance's part of a batch to etcd took",
            self.txn_seconds.clone(),
        )]
    }
}
