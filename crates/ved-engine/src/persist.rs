//! Where an engine keeps its state: behind [`Persistence`], so that the same
//! engine runs on the local store (`ved run`) and on fenced writes to etcd
//! (cluster mode, in `ved-cli`'s cluster client).
//!
//! The contract the engine relies on (output commit): `append` gives each batch a
//! sequence number, increasing; a batch is durable once `durable_seq` reaches it;
//! the engine releases an intent only after the batch that recorded it is durable.

use std::path::Path;
use ved_store::{AuditDraft, Record, Store};

pub trait Persistence: Send {
    /// Queues records and audit drafts as one batch; returns its sequence number.
    fn append(&mut self, records: Vec<Record>, audit: Vec<AuditDraft>) -> u64;
    /// The highest batch that is durable.
    fn durable_seq(&self) -> u64;
    /// The highest batch appended.
    fn last_seq(&self) -> u64;
    /// Writes what is queued now (or waits for the background writer).
    fn flush(&mut self) -> Result<u64, String>;
    /// Replaces everything with `records` (a checkpoint); returns its batch.
    fn compact(&mut self, records: Vec<Record>) -> u64;
    fn wait_durable(&self, seq: u64) -> Result<(), String>;
    /// Why the writer failed, if it did: nothing after the failure is durable.
    fn failure(&self) -> Option<String>;
    /// Why writes are waiting, while the disk has no space for them (they go on by themselves
    /// once it has): nothing is reported durable meanwhile.
    fn stalled(&self) -> Option<String> {
        None
    }
    /// The directory, for a local store (the audit log is read from it).
    fn dir(&self) -> Option<&Path> {
        None
    }
    /// The fencing token intents of `instance` carry (cluster mode).
    fn fence(&self, _instance: &str) -> Option<i64> {
        None
    }
    /// Instances whose writes were refused because another node owns them now. The
    /// engine drops them and never acts on them again.
    fn take_lost(&mut self) -> Vec<String> {
        Vec::new()
    }
    fn close(self: Box<Self>) -> Result<(), String>;
    /// Stops as a crash would: nothing queued is written.
    fn abandon(self: Box<Self>);
    /// Latency histograms for `GET /metrics`: (name, help, histogram).
    fn latencies(&self) -> Vec<(&'static str, &'static str, prometheus_client::metrics::histogram::Histogram)> {
        Vec::new()
    }
}

impl Persistence for Store {
    fn latencies(&self) -> Vec<(&'static str, &'static str, prometheus_client::metrics::histogram::Histogram)> {
        vec![(
            "ved_store_fsync_seconds",
            "Time each fsync or fdatasync of the store took (one per group commit)",
            self.fsync_seconds(),
        )]
    }

    fn append(&mut self, records: Vec<Record>, audit: Vec<AuditDraft>) -> u64 {
        Store::append(self, records, audit)
    }
    fn durable_seq(&self) -> u64 {
        Store::durable_seq(self)
    }
    fn last_seq(&self) -> u64 {
        Store::last_seq(self)
    }
    fn flush(&mut self) -> Result<u64, String> {
        Store::flush(self)
    }
    fn compact(&mut self, records: Vec<Record>) -> u64 {
        Store::compact(self, records)
    }
    fn wait_durable(&self, seq: u64) -> Result<(), String> {
        Store::wait_durable(self, seq)
    }
    fn failure(&self) -> Option<String> {
        Store::failure(self)
    }
    fn stalled(&self) -> Option<String> {
        Store::stalled(self)
    }
    fn dir(&self) -> Option<&Path> {
        Some(Store::dir(self))
    }
    fn close(self: Box<Self>) -> Result<(), String> {
        Store::close(*self)
    }
    fn abandon(self: Box<Self>) {
        Store::abandon(*self)
    }
}
