//! The audit log: append-only JSON lines, each carrying the SHA-256 of the one
//! before it, so that an edited, removed or reordered entry breaks the chain.
//!
//! The chain alone proves only that the log is consistent with itself: whoever can write
//! the data directory can rewrite it whole (and the manifest's count and head with it).
//! Two things from outside the directory close that gap (threat model in `docs/store.md`):
//! an [`Anchor`] (`N:HASH`, printed by `ved audit head`) recorded elsewhere, which a
//! rewritten or shortened log no longer matches; and an [`AuditKey`], kept outside the
//! directory, with which every entry carries a `mac` that only the key's holder can make.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::Path;

/// The `prev` of the first entry in a chain not bound to a store (a cluster's per-instance
/// chains, and stores begun before stores had an identity; a store's own genesis is
/// derived from its identity, see `docs/store.md`).
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What the runtime asks to be recorded; the store assigns the sequence and the hashes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditDraft {
    pub at_ms: u64,
    /// Wall-clock time, in Unix milliseconds.
    pub wall_ms: Option<u64>,
    pub instance: String,
    pub text: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    pub at_ms: u64,
    /// Wall-clock time, RFC 3339 in UTC. Part of the hash when present; absent in entries
    /// written before entries had it, whose hashes are checked as they were made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    pub instance: String,
    pub text: String,
    pub prev: String,
    pub hash: String,
    /// HMAC-SHA256 of `hash` under the audit key, in hex, when `ved run` has one. It is not
    /// part of the hash (it is made from it); what it adds is checked with the key alone
    /// ([`check_macs`]). Absent in logs written without a key, which read as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

impl AuditEntry {
    pub fn new(seq: u64, prev: &str, d: &AuditDraft) -> AuditEntry {
        let time = d.wall_ms.map(crate::time::rfc3339);
        let hash = entry_hash(seq, d.at_ms, time.as_deref(), &d.instance, &d.text, prev);
        AuditEntry {
            seq,
            at_ms: d.at_ms,
            time,
            instance: d.instance.clone(),
            text: d.text.clone(),
            prev: prev.to_string(),
            hash,
            mac: None,
        }
    }

    /// [`AuditEntry::new`], authenticated with `key` when there is one.
    pub fn new_keyed(seq: u64, prev: &str, d: &AuditDraft, key: Option<&AuditKey>) -> AuditEntry {
        let mut e = AuditEntry::new(seq, prev, d);
        e.mac = key.map(|k| k.mac(&e.hash));
        e
    }

    pub fn to_line(&self) -> String {
        let mut s = serde_json::to_string(self).expect("audit entries always serialize");
        s.push('\n');
        s
    }
}

fn entry_hash(seq: u64, at_ms: u64, time: Option<&str>, instance: &str, text: &str, prev: &str) -> String {
    // Length-prefixed fields, so that no two different entries hash the same bytes. The
    // time goes in only when the entry has one: an entry from before times hashes as it
    // did, and one with a time cannot lose it unnoticed (the count of parts differs, and
    // each is length-prefixed).
    let mut h = Sha256::new();
    let (seq, at_ms) = (seq.to_string(), at_ms.to_string());
    let parts = [Some(seq.as_str()), Some(at_ms.as_str()), time, Some(instance), Some(text), Some(prev)];
    for part in parts.into_iter().flatten() {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    hex(&h.finalize())
}

fn hex(bytes: &[u8]) -> String {
    // Hex by table: one `format!` per byte was a visible share of the writer's time when
    // thousands of instances converge in one batch.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(HEX[(b >> 4) as usize] as char);
        out.push(HEX[(b & 15) as usize] as char);
    }
    out
}

/// How [`verify_from`] says that the first entry does not start from the genesis asked for.
pub const FOREIGN_GENESIS: &str = "its `prev` is not this chain's genesis: the log was begun by another store";

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    s.as_bytes().chunks(2).map(|p| Some(digit(p[0])? << 4 | digit(p[1])?)).collect()
}

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
        let recomputed = entry_hash(e.seq, e.at_ms, e.time.as_deref(), &e.instance, &e.text, &e.prev);
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

/// A point in the chain recorded outside the data directory: entry `count` had `hash`
/// (`count` 0 names the empty log, whose `hash` is the genesis, the first entry's `prev`).
/// Written `N:HASH`, as `ved audit head` prints it and `ved audit verify --head` takes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Anchor {
    pub count: u64,
    pub hash: String,
}

impl fmt::Display for Anchor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.count, self.hash)
    }
}

impl std::str::FromStr for Anchor {
    type Err = String;

    fn from_str(s: &str) -> Result<Anchor, String> {
        let s = s.trim();
        let Some((n, hash)) = s.split_once(':') else {
            return Err(format!("`{s}` is not an anchor: expected N:HASH, as `ved audit head` prints it"));
        };
        let count = n
            .parse::<u64>()
            .map_err(|_| format!("`{n}` is not an entry count: expected N:HASH, as `ved audit head` prints it"))?;
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("`{hash}` is not a SHA-256 hash: expected 64 hex digits after `{n}:`"));
        }
        Ok(Anchor { count, hash: hash.to_ascii_lowercase() })
    }
}

/// A verified chain and what the manifest says was committed of it.
pub struct Chain {
    pub entries: Vec<AuditEntry>,
    /// Committed entries: a line past them is written but not yet durable.
    pub committed: u64,
    /// The hash of the last committed entry (the genesis for an empty log).
    pub head: String,
}

impl Chain {
    /// The anchor of what is committed: what `ved audit head` prints.
    pub fn anchor(&self) -> Anchor {
        Anchor { count: self.committed, hash: self.head.clone() }
    }

    /// Whether entry `anchor.count` is still there with the hash it had.
    pub fn check_anchor(&self, anchor: &Anchor) -> Result<(), AuditError> {
        let genesis = self.entries.first().map_or(self.head.as_str(), |e| e.prev.as_str());
        check_anchor(&self.entries, genesis, anchor)
    }
}

fn short(hash: &str) -> &str {
    hash.get(..16).unwrap_or(hash)
}

/// Whether `entries` (a verified chain starting from `genesis`) hold entry `anchor.count`
/// with the anchor's hash. Entries appended after it are fine: the anchor says nothing of
/// them. Since each hash covers the one before, a match vouches for entries 1 to N.
pub fn check_anchor(entries: &[AuditEntry], genesis: &str, anchor: &Anchor) -> Result<(), AuditError> {
    let n = anchor.count as usize;
    if n > entries.len() {
        return Err(AuditError {
            line: entries.len() + 1,
            reason: format!(
                "the anchor names entry {n}, but the log ends after {} entries: entries were removed \
                 (or the anchor was taken from another store)",
                entries.len()
            ),
        });
    }
    let found = if n == 0 { genesis } else { entries[n - 1].hash.as_str() };
    if found != anchor.hash {
        let what = if n == 0 { "the log starts from".to_string() } else { format!("entry {n} has hash") };
        return Err(AuditError {
            line: n.max(1),
            reason: format!(
                "{what} {}…, but the anchor says {}…: the log was rewritten at or before entry {n} \
                 (or the anchor was taken from another store)",
                short(found),
                short(&anchor.hash)
            ),
        });
    }
    Ok(())
}

/// The secret that authenticates entries: HMAC-SHA256 over each entry's hash. Its bytes are
/// never printed, not even by `Debug`.
#[derive(Clone)]
pub struct AuditKey {
    bytes: Vec<u8>,
}

impl fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuditKey(..)")
    }
}

/// Why a key file cannot be used, and what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyError {
    pub message: String,
    pub hint: String,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl AuditKey {
    /// Shorter keys are refused: a guessable key authenticates nothing.
    pub const MIN_LEN: usize = 16;

    /// A key from a file's bytes. Trailing whitespace is not part of it, so that a key
    /// written with `echo` (a final newline) and one written with `printf` are the same.
    pub fn from_bytes(raw: &[u8]) -> Result<AuditKey, String> {
        let end = raw.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(0, |i| i + 1);
        let bytes = &raw[..end];
        if bytes.is_empty() {
            return Err("it is empty".into());
        }
        if bytes.len() < Self::MIN_LEN {
            return Err(format!("it holds {} bytes; a key needs at least {}", bytes.len(), Self::MIN_LEN));
        }
        Ok(AuditKey { bytes: bytes.to_vec() })
    }

    /// Reads the key in `path`. It must live outside `data_dir`: whoever can rewrite the
    /// audit log there could read a key kept beside it and sign the forgery.
    pub fn read(path: &Path, data_dir: Option<&Path>) -> Result<AuditKey, KeyError> {
        const MAKE: &str = "make one with `openssl rand -hex 32 > FILE && chmod 400 FILE`, outside the data directory";
        let raw = std::fs::read(path).map_err(|e| KeyError {
            message: format!("cannot read the audit key {}: {e}", path.display()),
            hint: MAKE.into(),
        })?;
        if let Some(dir) = data_dir {
            if is_inside(path, dir) {
                return Err(KeyError {
                    message: format!(
                        "the audit key {} is inside the data directory {}: whoever can rewrite the \
                         audit log there can read the key too",
                        path.display(),
                        dir.display()
                    ),
                    hint: "keep the key outside the data directory, readable only by the user Ved runs as \
                           (e.g. /etc/ved/audit.key, mode 0400)"
                        .into(),
                });
            }
        }
        AuditKey::from_bytes(&raw).map_err(|why| KeyError {
            message: format!("the audit key {} cannot be used: {why}", path.display()),
            hint: MAKE.into(),
        })
    }

    fn hmac(&self) -> Hmac<Sha256> {
        <Hmac<Sha256> as Mac>::new_from_slice(&self.bytes).expect("HMAC takes a key of any length")
    }

    /// The `mac` of the entry with this hash.
    pub fn mac(&self, hash: &str) -> String {
        let mut m = self.hmac();
        m.update(hash.as_bytes());
        hex(&m.finalize().into_bytes())
    }

    /// Whether `mac` is this key's for `hash`, compared in constant time.
    pub fn verify(&self, hash: &str, mac: &str) -> bool {
        let Some(given) = unhex(mac) else { return false };
        let mut m = self.hmac();
        m.update(hash.as_bytes());
        m.verify_slice(&given).is_ok()
    }
}

/// Whether `path` (an existing file) lies within `dir`, symbolic links and `..` resolved.
fn is_inside(path: &Path, dir: &Path) -> bool {
    let (Ok(file), Ok(dir)) = (std::fs::canonicalize(path), std::fs::canonicalize(dir)) else {
        // A directory that does not exist yet holds no file.
        return false;
    };
    file.starts_with(dir)
}

/// Whether the engine may append to a log whose last entry is `last` with `key` (or none):
/// a keyed log must go on with the key it was written with, or `ved audit verify --key`
/// would fail for good from the first entry written otherwise.
pub fn check_continuity(last: Option<&AuditEntry>, key: Option<&AuditKey>) -> Result<(), String> {
    let Some((e, mac)) = last.and_then(|e| e.mac.as_ref().map(|m| (e, m))) else { return Ok(()) };
    match key {
        None => Err(format!(
            "the audit log is keyed (entry {} carries a mac), but no audit key is given: entries written \
             now would carry none, and `ved audit verify --key` would fail from the first of them",
            e.seq
        )),
        Some(k) if !k.verify(&e.hash, mac) => Err(format!(
            "the audit key does not match the one the log was written with (entry {}'s mac): entries \
             written now would fail `ved audit verify` with either key",
            e.seq
        )),
        Some(_) => Ok(()),
    }
}

/// What [`check_macs`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MacReport {
    /// The sequence number of the first entry with a mac; those before it were written
    /// before a key was configured.
    pub first_keyed: Option<u64>,
    /// Entries whose mac was checked.
    pub keyed: usize,
}

/// Checks every `mac` of a verified chain with `key`. The rule: entries written before a
/// key was configured carry none and may only come first; from the first entry with a mac
/// on, each must carry a valid one; and a non-empty log must end with one. Each hash covers
/// the ones before it, so the last entry's mac vouches for the whole log: stripping macs,
/// or rewriting and re-chaining entries (which changes every later hash), is caught without
/// the key. What it cannot tell is entries cut from the end: that is the anchor's job.
pub fn check_macs(entries: &[AuditEntry], key: &AuditKey) -> Result<MacReport, AuditError> {
    let mut report = MacReport { first_keyed: None, keyed: 0 };
    for (i, e) in entries.iter().enumerate() {
        let line = i + 1;
        match (&e.mac, report.first_keyed) {
            (None, None) => {}
            (None, Some(first)) => {
                return Err(AuditError {
                    line,
                    reason: format!(
                        "it carries no mac, but entry {first} before it does: it was written without the \
                         key, or its mac was removed"
                    ),
                });
            }
            (Some(mac), _) => {
                if !key.verify(&e.hash, mac) {
                    return Err(AuditError {
                        line,
                        reason: "its mac does not match the key: the entry was forged or rewritten, or \
                                 written with another key"
                            .into(),
                    });
                }
                report.first_keyed.get_or_insert(e.seq);
                report.keyed += 1;
            }
        }
    }
    if report.first_keyed.is_none() && !entries.is_empty() {
        return Err(AuditError {
            line: entries.len(),
            reason: "no entry carries a mac: the log was written without a key, or the macs were removed".into(),
        });
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draft(i: u64) -> AuditDraft {
        AuditDraft {
            at_ms: i * 10,
            wall_ms: Some(1_796_189_694_000 + i),
            instance: "I".into(),
            text: format!("episode {i}"),
        }
    }

    fn chain(n: u64, key: Option<&AuditKey>) -> Vec<AuditEntry> {
        let mut prev = GENESIS.to_string();
        (1..=n)
            .map(|i| {
                let e = AuditEntry::new_keyed(i, &prev, &draft(i), key);
                prev = e.hash.clone();
                e
            })
            .collect()
    }

    fn text(entries: &[AuditEntry]) -> String {
        entries.iter().map(AuditEntry::to_line).collect()
    }

    fn key() -> AuditKey {
        AuditKey::from_bytes(b"0123456789abcdef0123456789abcdef\n").unwrap()
    }

    #[test]
    fn hmac_sha256_matches_rfc_4231() {
        // Test case 2 of RFC 4231 (a short key is fine for the primitive, not for `from_bytes`).
        let k = AuditKey { bytes: b"Jefe".to_vec() };
        assert_eq!(
            k.mac("what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn anchors_parse_and_print() {
        let h = "AB".repeat(32);
        let a: Anchor = format!(" 12:{h}\n").parse().unwrap();
        assert_eq!(a, Anchor { count: 12, hash: "ab".repeat(32) });
        assert_eq!(a.to_string(), format!("12:{}", "ab".repeat(32)));
        for (bad, says) in [
            ("", "not an anchor"),
            ("12", "not an anchor"),
            (&format!("x:{h}")[..], "not an entry count"),
            (&format!("-1:{h}")[..], "not an entry count"),
            ("3:abc", "not a SHA-256 hash"),
            (&format!("3:{}", "g".repeat(64))[..], "not a SHA-256 hash"),
            (&format!("3:{h}:1")[..], "not a SHA-256 hash"),
        ] {
            let e = bad.parse::<Anchor>().unwrap_err();
            assert!(e.contains(says), "`{bad}`: {e}");
        }
    }

    #[test]
    fn an_anchor_holds_for_later_entries_and_fails_for_a_rewrite_or_a_cut() {
        let all = chain(5, None);
        let at3 = Anchor { count: 3, hash: all[2].hash.clone() };
        check_anchor(&all, GENESIS, &at3).unwrap();
        check_anchor(&all[..3], GENESIS, &at3).unwrap();
        check_anchor(&all, GENESIS, &Anchor { count: 0, hash: GENESIS.into() }).unwrap();
        let cut = check_anchor(&all[..2], GENESIS, &at3).unwrap_err();
        assert_eq!(cut.line, 3);
        assert!(cut.reason.contains("ends after 2 entries"), "{cut}");
        // Entry 2 rewritten and the rest re-chained: a chain that verifies, but not the anchor.
        let mut forged = all[..1].to_vec();
        let mut d = draft(2);
        d.text = "nothing happened".into();
        forged.push(AuditEntry::new(2, &forged[0].hash, &d));
        forged.push(AuditEntry::new(3, &forged[1].hash, &draft(3)));
        verify(&text(&forged), 3, &forged[2].hash.clone()).unwrap();
        let e = check_anchor(&forged, GENESIS, &at3).unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.reason.contains("rewritten at or before entry 3"), "{e}");
    }

    #[test]
    fn macs_verify_with_the_key_and_fail_without_it() {
        let k = key();
        let entries = chain(4, Some(&k));
        assert!(entries.iter().all(|e| e.mac.is_some()));
        // Without the key the chain still verifies: the mac is outside the hash.
        let v = verify(&text(&entries), 4, &entries[3].hash).unwrap();
        assert_eq!(v.entries, entries, "the mac survives a round trip through the line");
        assert_eq!(check_macs(&entries, &k).unwrap(), MacReport { first_keyed: Some(1), keyed: 4 });
        let other = AuditKey::from_bytes(b"another key, long enough").unwrap();
        let e = check_macs(&entries, &other).unwrap_err();
        assert_eq!(e.line, 1);
        assert!(e.reason.contains("does not match the key"), "{e}");
        // A mac moved from another entry, or not hex, does not match either.
        let mut swapped = entries.clone();
        swapped[2].mac = entries[1].mac.clone();
        assert_eq!(check_macs(&swapped, &k).unwrap_err().line, 3);
        swapped[2].mac = Some("zz".into());
        assert_eq!(check_macs(&swapped, &k).unwrap_err().line, 3);
    }

    #[test]
    fn entries_before_the_key_are_allowed_only_first_and_stripping_is_caught() {
        let k = key();
        // Two entries from before a key was configured, then keyed ones.
        let mut entries = chain(2, None);
        let mut prev = entries[1].hash.clone();
        for i in 3..=4 {
            let e = AuditEntry::new_keyed(i, &prev, &draft(i), Some(&k));
            prev = e.hash.clone();
            entries.push(e);
        }
        assert_eq!(check_macs(&entries, &k).unwrap(), MacReport { first_keyed: Some(3), keyed: 2 });
        // One mac removed: caught, since an entry before it has one.
        let mut stripped = entries.clone();
        stripped[3].mac = None;
        let e = check_macs(&stripped, &k).unwrap_err();
        assert_eq!(e.line, 4);
        assert!(e.reason.contains("carries no mac, but entry 3"), "{e}");
        // Every mac removed: caught too.
        for e in &mut stripped {
            e.mac = None;
        }
        let e = check_macs(&stripped, &k).unwrap_err();
        assert!(e.reason.contains("no entry carries a mac"), "{e}");
        // An empty log has nothing to authenticate.
        assert_eq!(check_macs(&[], &k).unwrap(), MacReport { first_keyed: None, keyed: 0 });
    }

    #[test]
    fn a_keyed_log_goes_on_only_with_its_key() {
        let k = key();
        let keyed = chain(3, Some(&k));
        let plain = chain(3, None);
        check_continuity(None, None).unwrap();
        check_continuity(plain.last(), None).unwrap();
        check_continuity(plain.last(), Some(&k)).unwrap();
        check_continuity(keyed.last(), Some(&k)).unwrap();
        let e = check_continuity(keyed.last(), None).unwrap_err();
        assert!(e.contains("the audit log is keyed (entry 3 carries a mac), but no audit key"), "{e}");
        let other = AuditKey::from_bytes(b"another key, long enough").unwrap();
        let e = check_continuity(keyed.last(), Some(&other)).unwrap_err();
        assert!(e.contains("does not match the one the log was written with"), "{e}");
    }

    #[test]
    fn an_entrys_wall_clock_time_is_written_and_part_of_its_hash() {
        let entries = chain(3, None);
        assert_eq!(entries[1].time.as_deref(), Some("2026-12-02T05:34:54.002Z"));
        let text: String = entries.iter().map(|e| e.to_line()).collect();
        assert!(text.lines().nth(1).unwrap().contains("\"time\":\"2026-12-02T05:34:54.002Z\""), "{text}");
        let head = entries[2].hash.clone();
        assert!(verify(&text, 3, &head).is_ok());
        // A time edited, or removed, breaks the chain at that entry.
        for forged in
            [text.replace("05:34:54.002Z", "05:34:59.002Z"), text.replace(",\"time\":\"2026-12-02T05:34:54.002Z\"", "")]
        {
            assert_ne!(forged, text);
            let Err(err) = verify(&forged, 3, &head) else { panic!("a forged time verified") };
            assert_eq!(err.line, 2, "{err:?}");
        }
    }

    #[test]
    fn old_entries_without_a_mac_read_and_verify_as_before() {
        let line = format!(
            "{{\"seq\":1,\"at_ms\":0,\"instance\":\"I\",\"text\":\"t\",\"prev\":\"{GENESIS}\",\"hash\":\"{}\"}}\n",
            entry_hash(1, 0, None, "I", "t", GENESIS)
        );
        let v = verify(&line, 1, &entry_hash(1, 0, None, "I", "t", GENESIS)).unwrap();
        assert_eq!(v.entries[0].mac, None);
        assert_eq!(v.entries[0].to_line(), line, "an entry without a mac is written exactly as before");
    }

    #[test]
    fn key_files_are_refused_when_empty_short_unreadable_or_inside_the_data_directory() {
        assert_eq!(AuditKey::from_bytes(b" \n").unwrap_err(), "it is empty");
        assert!(AuditKey::from_bytes(b"short\n").unwrap_err().contains("at least 16"));
        let a = AuditKey::from_bytes(b"0123456789abcdef\r\n").unwrap();
        let b = AuditKey::from_bytes(b"0123456789abcdef").unwrap();
        assert_eq!(a.mac("h"), b.mac("h"), "a final newline is not part of the key");
        assert_eq!(format!("{a:?}"), "AuditKey(..)", "the key never prints");

        let base = std::env::temp_dir().join(format!("ved-audit-key-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let data = base.join("data");
        std::fs::create_dir_all(data.join("sub")).unwrap();
        let outside = base.join("audit.key");
        std::fs::write(&outside, "0123456789abcdef0123\n").unwrap();
        AuditKey::read(&outside, Some(&data)).unwrap();
        AuditKey::read(&outside, Some(&base.join("not-yet"))).unwrap();
        let inside = data.join("sub").join("audit.key");
        std::fs::write(&inside, "0123456789abcdef0123\n").unwrap();
        let e = AuditKey::read(&inside, Some(&data)).unwrap_err();
        assert!(e.message.contains("inside the data directory"), "{e}");
        // The same file reached through `..` is still inside.
        let e = AuditKey::read(&data.join("sub/../sub/audit.key"), Some(&base.join("data/."))).unwrap_err();
        assert!(e.message.contains("inside the data directory"), "{e}");
        let e = AuditKey::read(&base.join("missing.key"), None).unwrap_err();
        assert!(e.message.contains("cannot read the audit key"), "{e}");
        std::fs::write(&outside, "\n").unwrap();
        let e = AuditKey::read(&outside, Some(&data)).unwrap_err();
        assert!(e.message.contains("it is empty"), "{e}");
        let _ = std::fs::remove_dir_all(&base);
    }
}
