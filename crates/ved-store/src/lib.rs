//! `ved-store` makes instances durable. After every slice the runtime's driver
//! appends the instance's snapshot (state, pending transitions, undelivered
//! intents, slice number) and its journal entry; a writer thread group-commits
//! whatever is queued with one write and one fsync, and reports each batch as
//! durable so that intents leave only after the slice that emitted them is on
//! disk. Recovery loads the latest snapshot of every instance: the last
//! checkpoint plus the records appended since, each of which is itself a
//! snapshot, so no history is replayed. Every byte is covered by a checksum, and
//! a damaged store is reported, never loaded silently. The audit log is a
//! separate hash chain. The on-disk format is in `docs/store.md`.

pub mod audit;
pub mod bin;
pub mod codec;
pub mod frame;
mod snapshots;
mod store;
pub mod time;

pub use audit::{Anchor, AuditDraft, AuditEntry, AuditError, AuditKey};
pub use codec::{JournalEntry, Origin, Record, Schema, SnapshotRecord};
pub use snapshots::Snapshots;
pub use store::{
    read_only, verified_audit, verify_audit, AuditPage, AuditPages, Durability, DurableHook, Flush, Recovered, Store,
    StoreError, JOURNAL_MAX,
};
