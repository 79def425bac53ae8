//! The audit log: append-only JSON lines, each carrying the SHA-256 of the one
//! before it, so that an edited, removed or reordered entry breaks the chain.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

/// The `prev` of the first entry in a chain not bound to a store (a cluster's per-instance
/// chains, and stores begun before stores had an identity; a store's own genesis is
/// derived from its identity, see `docs/store.md`).
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What the runtime asks to be recorded; the store assigns the sequence and the hashes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditDraft {
    pub at_ms: u64,
    pub instance: String,
    pub text: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    pub at_ms: u64,
    pub instance: String,
    pub text: String,
    pub prev: String,
    pub hash: String,
}

impl AuditEntry {
    pub fn new(seq: u64, prev: &str, d: &AuditDraft) -> AuditEntry {
        let hash = entry_hash(seq, d.at_ms, &d.instance, &d.text, prev);
        AuditEntry {
            seq,
            at_ms: d.at_ms,
            instance: d.instance.clone(),
            text: d.text.clone(),
            prev: prev.to_string(),
            hash,
        }
    }

    pub fn to_line(&self) -> String {
        let mut s = serde_json::to_string(self).expect("audit entries always serialize");
        s.push('\n');
        s
    }
}

fn entry_hash(seq: u64, at_ms: u64, instance: &str, text: &str, prev: &str) -> String {
    // Length-prefixed fields, so that no two different entries hash the same bytes.
    let mut h = Sha256::new();
    for part in [seq.to_string().as_str(), at_ms.to_string().as_str(), instance, text, prev] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    // Hex by table: one `format!` per byte was a visible share of the writer's time when
    // thousands of instances converge in one batch.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(64);
    for b in h.finalize() {
        out.push(HEX[(b >> 4) as usize] as char);
        out.push(HEX[(b & 15) as usize] as char);
    }
    out
}

/// How [`verify_from`] says that the first entry does not start from the genesis asked for.
pub const FOREIGN_GENESIS: &str = "its `prev` is not this chain's genesis: the log was begun by another store";

/// The first entry that breaks the chain, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditError {
    /// 1-based line in `audit.log`.
    pub line: usize,
    pub reason: String,
}

impl fmt::Display for AuditError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "audit.log line {}: {}", self.line, self.reason)
    }
}

/// The verified entries, and the length of the text they came from (a
/// final line without its newline is an unfinished write and is left out).
pub struct Verified {
    pub entries: Vec<AuditEntry>,
    pub valid_len: usize,
    pub torn_tail: bool,
}

/// Checks the whole chain from [`GENESIS`]; `expect_count` and `expect_head` come from
/// the manifest and catch entries removed from the end.
pub fn verify(text: &str, expect_count: u64, expect_head: &str) -> Result<Verified, AuditError> {
    verify_from(text, GENESIS, expect_count, expect_head)
}

/// [`verify`] for a chain whose first `prev` is `genesis`.
pub fn verify_from(text: &str, genesis: &str, expect_count: u64, expect_head: &str) -> Result<Verified, AuditError> {
    let mut entries: Vec<AuditEntry> = Vec::new();
    let mut prev = genesis.to_string();
    let mut offset = 0;
    let mut torn_tail = false;
    for (i, raw) in text.split_inclusive('\n').enumerate() {
        let line = i + 1;
        if !raw.ends_with('\n') {
            torn_tail = true;
            break;
        }
        let e: AuditEntry = serde_json::from_str(raw.trim_end())
            .map_err(|err| AuditError { line, reason: format!("not a valid audit entry ({err})") })?;
        let want_seq = entries.len() as u64 + 1;
        if e.seq != want_seq {
            return Err(AuditError {
                line,
                reason: format!("entry has sequence {}, expected {want_seq}: an entry was removed or reordered", e.seq),
            });
        }
        if e.prev != prev && line == 1 {
            // The genesis names the chain's owner: a log begun elsewhere starts from another.
            return Err(AuditError { line, reason: format!("{FOREIGN_GENESIS} ({})", e.prev) });
        }
        if e.prev != prev {
            return Err(AuditError {
                line,
                reason: "its `prev` does not match the hash of the entry before it: the chain is broken here".into(),
            });
        }
        let recomputed = entry_hash(e.seq, e.at_ms, &e.instance, &e.text, &e.prev);
        if recomputed != e.hash {
            return Err(AuditError { line, reason: "its contents do not match its hash: the entry was edited".into() });
        }
        prev = e.hash.clone();
        offset += raw.len();
        entries.push(e);
    }
    if (entries.len() as u64) < expect_count {
        return Err(AuditError {
            line: entries.len() + 1,
            reason: format!(
                "the log ends after {} entries, but {expect_count} were committed: entries were removed from the end",
                entries.len()
            ),
        });
    }
    if expect_count > 0 {
        let at = &entries[expect_count as usize - 1];
        if at.hash != expect_head {
            return Err(AuditError {
                line: expect_count as usize,
                reason: "this entry's hash differs from the one the store committed: the log was rewritten".into(),
            });
        }
    }
    Ok(Verified { entries, valid_len: offset, torn_tail })
}
