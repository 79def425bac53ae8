//! Opening, recovering and writing the store.
//!
//! Files in the data directory (format in `docs/store.md`):
//! - `manifest`: which generation is current, how many log bytes and audit
//!   entries are committed, and the audit chain's head;
//! - `checkpoint-G`: every live record at the start of generation G;
//! - `log-G`: records appended since, in group-committed batches;
//! - `audit.log`: the hash-chained audit trail;
//! - `lock`: held by the one `ved run` that owns the directory.

use crate::audit::{self, AuditDraft, AuditEntry, GENESIS};
use crate::codec::{JournalEntry, Record, SnapshotRecord};
use crate::frame::{self, FileKind, Header, StoreId, HEADER_LEN, HEADER_LEN_V2};
use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// When a batch counts as durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// After `fsync` of the log and the audit log (the default).
    Fsync,
    /// As soon as the OS has the bytes; survives a crash of `ved`, not of the machine.
    /// For tests and benchmarks.
    None,
}

/// Entries an instance's journal keeps at most.
pub const JOURNAL_MAX: usize = 256;

/// How long opening waits for a store's lock before it says another process holds it.
const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);
/// Records one batch holds at most; more wait for the next batch.
const BATCH_RECORDS_MAX: usize = 16_384;
/// The manifest's length from format 3 on: header, log length, audit count and head, the
/// audit genesis byte, 3 reserved bytes, CRC.
const MANIFEST_LEN: usize = HEADER_LEN + 8 + 8 + 64 + 1 + 3 + 4;
/// The manifest's length in formats 1 and 2 (no identity, no genesis byte).
const MANIFEST_LEN_V2: usize = HEADER_LEN_V2 + 8 + 8 + 64 + 4;

/// Why the store cannot be used.
#[derive(Debug)]
pub enum StoreError {
    Io {
        path: PathBuf,
        err: std::io::Error,
    },
    /// A file is damaged: never loaded silently.
    Corrupt {
        path: PathBuf,
        detail: String,
    },
    /// Another `ved run` holds the directory.
    Locked {
        path: PathBuf,
    },
    /// The directory holds files but is not a Ved store.
    Foreign {
        path: PathBuf,
    },
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Io { path, err } => write!(f, "{}: {err}", path.display()),
            StoreError::Corrupt { path, detail } => write!(f, "{} is corrupt: {detail}", path.display()),
            StoreError::Locked { path } => {
                write!(f, "{} is in use by another `ved run`", path.display())
            }
            StoreError::Foreign { path } => {
                write!(f, "{} holds files but is not a Ved data directory (no manifest)", path.display())
            }
        }
    }
}

impl StoreError {
    pub fn hint(&self) -> &'static str {
        match self {
            StoreError::Corrupt { .. } => {
                "nothing was loaded. To start from the last good snapshot and set the damaged part aside, pass `--recover`"
            }
            StoreError::Locked { .. } => "stop the other process, or give this one its own `--data-dir`",
            StoreError::Foreign { .. } => "point `--data-dir` at an empty or new directory",
            StoreError::Io { .. } => "check that the directory exists and is writable",
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |err| StoreError::Io { path: path.to_path_buf(), err }
}

/// What the store held when it was opened.
#[derive(Debug, Default)]
pub struct Recovered {
    /// The latest snapshot of every instance.
    pub snapshots: crate::Snapshots,
    /// Each instance's retained journal, oldest first.
    pub journals: BTreeMap<String, VecDeque<JournalEntry>>,
    pub audit: Vec<AuditEntry>,
    /// Things noticed and handled, e.g. an unfinished write after a crash.
    pub warnings: Vec<String>,
    pub generation: u64,
    /// Per instance, the snapshot taken just before its oldest retained journal entry:
    /// where `ved replay` starts.
    pub bases: BTreeMap<String, SnapshotRecord>,
    /// The program that wrote the store, when it recorded itself.
    pub program: Option<Vec<(String, String)>>,
    /// Its retry policy: initial ms, factor, cap ms, breaker threshold.
    pub retry: Option<(u64, u32, u64, u32)>,
    /// The confirmation deadline in force, when it was recorded.
    pub confirm_ms: Option<u64>,
    /// The store's identity; `None` for a store from before identities until its next
    /// compaction gives it one.
    pub store_id: Option<StoreId>,
}

/// An instance's snapshots while a store is read: the latest, and older ones, oldest first.
struct Recent {
    older: VecDeque<SnapshotRecord>,
    latest: SnapshotRecord,
}

struct Manifest {
    generation: u64,
    log_len: u64,
    audit_count: u64,
    audit_head: String,
    /// The store's identity, which every file of the current generation carries in its
    /// header. `None` for a store written before identities (format 2 or older).
    id: Option<StoreId>,
    /// The audit chain starts from [`GENESIS`] rather than from the identity's genesis: it
    /// was begun before the store had an identity, and a chain is never rewritten.
    legacy_genesis: bool,
}

impl Manifest {
    /// The `prev` of this store's first audit entry: derived from the identity, so that an
    /// `audit.log` begun by another store breaks at its first line.
    fn genesis(&self) -> String {
        match self.id {
            Some(id) if !self.legacy_genesis => audit_genesis(id),
            _ => GENESIS.to_string(),
        }
    }

    fn encode(&self) -> Vec<u8> {
        // A store without an identity keeps the manifest layout it had (version 2's).
        let mut b = frame::header(FileKind::Manifest, self.generation, self.id);
        let start = b.len();
        b.extend_from_slice(&self.log_len.to_le_bytes());
        b.extend_from_slice(&self.audit_count.to_le_bytes());
        let mut head = [b'0'; 64];
        head[..self.audit_head.len().min(64)]
            .copy_from_slice(&self.audit_head.as_bytes()[..self.audit_head.len().min(64)]);
        b.extend_from_slice(&head);
        if self.id.is_some() {
            b.push(self.legacy_genesis as u8);
            b.extend_from_slice(&[0; 3]);
        }
        let crc = crc32fast::hash(&b[start..]);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(path: &Path, b: &[u8]) -> Result<Manifest, StoreError> {
        let corrupt = |detail: String| StoreError::Corrupt { path: path.to_path_buf(), detail };
        let h = frame::read_header(b, FileKind::Manifest).map_err(|e| corrupt(e.to_string()))?;
        let len = if h.id.is_some() { MANIFEST_LEN } else { MANIFEST_LEN_V2 };
        if b.len() != len {
            return Err(corrupt(format!("it is {} bytes, expected {len}", b.len())));
        }
        let body = &b[h.len..len - 4];
        let crc = u32::from_le_bytes(b[len - 4..].try_into().expect("4 bytes"));
        if crc32fast::hash(body) != crc {
            return Err(corrupt("checksum mismatch".into()));
        }
        let log_len = u64::from_le_bytes(body[..8].try_into().expect("8 bytes"));
        let audit_count = u64::from_le_bytes(body[8..16].try_into().expect("8 bytes"));
        let audit_head = String::from_utf8_lossy(&body[16..80]).into_owned();
        let legacy_genesis = match body.get(80) {
            None | Some(0) => false,
            Some(1) => true,
            Some(x) => return Err(corrupt(format!("{x} is not an audit genesis kind (byte {})", h.len + 80))),
        };
        Ok(Manifest { generation: h.generation, log_len, audit_count, audit_head, id: h.id, legacy_genesis })
    }

    /// Checks that a header read from one of this store's files names this store.
    fn check(&self, path: &Path, h: &Header) -> Result<(), StoreError> {
        frame::check_store(h, self.id)
            .map_err(|e| StoreError::Corrupt { path: path.to_path_buf(), detail: e.to_string() })
    }
}

/// The genesis of the audit chain of the store `id`: the hex SHA-256 of a label and the
/// identity. One-way, so an entry's `prev` does not tell a reader what the identity is;
/// and no store's chain can be taken for another's, even when they record the same events.
fn audit_genesis(id: StoreId) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"ved-store audit genesis\0");
    h.update(id.0);
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// An audit chain that does not start from this store's genesis was begun by another one:
/// say which this one is.
fn name_the_store(mut e: audit::AuditError, m: &Manifest) -> audit::AuditError {
    if e.line == 1 && e.reason.starts_with(audit::FOREIGN_GENESIS) {
        e.reason.push_str(&format!(", not by this one ({})", frame::id_text(m.id)));
    }
    e
}

/// The identity in the header of `name`, when it has a readable header with one.
fn id_in(dir: &Path, name: &str, kind: FileKind) -> Option<StoreId> {
    let mut head = Vec::with_capacity(HEADER_LEN);
    File::open(path_of(dir, name)).and_then(|f| f.take(HEADER_LEN as u64).read_to_end(&mut head)).ok()?;
    frame::read_header(&head, kind).ok()?.id
}

/// A manifest copied in from another store makes every file of this one look foreign. When
/// the checkpoint and the log agree on an identity that is not the manifest's, the manifest
/// is the odd one out and is named, in every mode: `--recover` must not set the store's own
/// files aside for it.
fn check_manifest(dir: &Path, m: &Manifest) -> Result<(), StoreError> {
    if m.generation == 0 {
        return Ok(());
    }
    let checkpoint = id_in(dir, &checkpoint_name(m.generation), FileKind::Checkpoint);
    match (checkpoint, id_in(dir, &log_name(m.generation), FileKind::Log)) {
        (Some(c), Some(l)) if c == l && Some(c) != m.id => Err(StoreError::Corrupt {
            path: path_of(dir, "manifest"),
            detail: format!(
                "its header (byte 0) names a store with {}, but this store's checkpoint and log both carry id {c}: \
                 the manifest belongs to another store",
                frame::id_text(m.id)
            ),
        }),
        _ => Ok(()),
    }
}

/// Checks the headers of the current generation's checkpoint and log: they must be of
/// that generation and of the store the manifest names. Reads only the headers.
fn check_identity(dir: &Path, m: &Manifest) -> Result<(), StoreError> {
    check_manifest(dir, m)?;
    let mut files = vec![(log_name(m.generation), FileKind::Log)];
    if m.generation > 0 {
        files.push((checkpoint_name(m.generation), FileKind::Checkpoint));
    }
    for (name, kind) in files {
        let path = path_of(dir, &name);
        let mut head = Vec::with_capacity(HEADER_LEN);
        File::open(&path).and_then(|f| f.take(HEADER_LEN as u64).read_to_end(&mut head)).map_err(io(&path))?;
        let h = frame::read_header(&head, kind)
            .map_err(|e| StoreError::Corrupt { path: path.clone(), detail: e.to_string() })?;
        m.check(&path, &h)?;
        if h.generation != m.generation {
            let detail = format!("it belongs to generation {}, the manifest says {}", h.generation, m.generation);
            return Err(StoreError::Corrupt { path, detail });
        }
    }
    Ok(())
}

fn path_of(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

fn log_name(g: u64) -> String {
    format!("log-{g}")
}

fn checkpoint_name(g: u64) -> String {
    format!("checkpoint-{g}")
}

/// How to treat damage found while reading.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Refuse to load anything damaged.
    Strict,
    /// Keep what is valid up to the damage; set the rest aside.
    Recover,
    /// Read while a `ved run` may be writing: an unfinished tail is normal; change nothing.
    ReadOnly,
}

/// Reads a store without locking or changing it (`ved inspect`, `ved journal`, `ved audit`).
pub fn read_only(dir: &Path) -> Result<Recovered, StoreError> {
    let manifest_path = path_of(dir, "manifest");
    if !manifest_path.exists() {
        // A store whose creation a crash interrupted holds nothing yet.
        if only_creation_leftovers(dir)? {
            return Ok(Recovered::default());
        }
        return Err(StoreError::Foreign { path: dir.to_path_buf() });
    }
    load(dir, Mode::ReadOnly).map(|(r, _)| r)
}

/// One page of the audit log, as `GET /v1/audit` serves it.
#[derive(Debug, Default)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    /// How many entries the store has committed.
    pub committed: u64,
    /// The `after` of the next page, when there are more entries.
    pub next: Option<u64>,
}

/// Pages through `audit.log` while a `ved run` appends to it, without loading it whole:
/// it remembers where every [`AuditPages::STRIDE`]th entry starts, so a page costs a seek
/// and at most a stride of lines before its first entry, however long the log grew. Only
/// committed entries (the manifest's count) are served: a line written but not yet
/// durable is never shown as history. It does not check the hash chain (`ved audit
/// verify` does); a line it cannot read is an error, never skipped.
pub struct AuditPages {
    dir: PathBuf,
    /// `(seq, byte offset)` of entries 1, 1 + STRIDE, 1 + 2 * STRIDE, ...
    starts: Mutex<Vec<(u64, u64)>>,
}

impl AuditPages {
    const STRIDE: u64 = 256;

    pub fn new(dir: &Path) -> AuditPages {
        AuditPages { dir: dir.to_path_buf(), starts: Mutex::new(vec![(1, 0)]) }
    }

    /// Up to `limit` entries with a sequence number above `after`.
    pub fn page(&self, after: u64, limit: usize) -> Result<AuditPage, StoreError> {
        use std::io::{BufRead, BufReader};
        let committed = self.committed()?;
        let mut page = AuditPage { committed, ..AuditPage::default() };
        if after >= committed || limit == 0 {
            return Ok(page);
        }
        let apath = path_of(&self.dir, "audit.log");
        let file = File::open(&apath).map_err(io(&apath))?;
        let mut starts = self.starts.lock().unwrap_or_else(|p| p.into_inner());
        // The last known start at or before the first wanted entry.
        let from = starts.iter().rev().find(|(seq, _)| *seq <= after + 1).copied().unwrap_or((1, 0));
        let mut reader = BufReader::new(file);
        reader.seek(SeekFrom::Start(from.1)).map_err(io(&apath))?;
        let (mut seq, mut offset) = from;
        let mut line = String::new();
        while seq <= committed && page.entries.len() < limit {
            line.clear();
            let n = reader.read_line(&mut line).map_err(io(&apath))?;
            if n == 0 || !line.ends_with('\n') {
                // The manifest is rewritten after the lines it counts are written: a log shorter
                // than the count was cut or lost its unsynced end (the next `ved run` restores it).
                let detail = format!("it ends after entry {}, but {committed} entries were committed", seq - 1);
                return Err(StoreError::Corrupt { path: apath, detail });
            }
            if (seq - 1) % Self::STRIDE == 0 && starts.last().is_some_and(|(s, _)| *s < seq) {
                starts.push((seq, offset));
            }
            if seq > after {
                let entry: AuditEntry = serde_json::from_str(line.trim_end()).map_err(|e| StoreError::Corrupt {
                    path: apath.clone(),
                    detail: format!("entry {seq} (at byte {offset}) is not a valid audit entry: {e}"),
                })?;
                if entry.seq != seq {
                    let detail = format!("line {seq} holds entry {}: entries were removed or reordered", entry.seq);
                    return Err(StoreError::Corrupt { path: apath, detail });
                }
                page.entries.push(entry);
            }
            offset += n as u64;
            seq += 1;
        }
        let last = page.entries.last().map_or(after, |e| e.seq);
        page.next = (last < committed).then_some(last);
        Ok(page)
    }

    /// The manifest's count of committed entries. It is rewritten in place while Ved runs,
    /// so a read can meet a write half done: its checksum tells, and the read is repeated.
    fn committed(&self) -> Result<u64, StoreError> {
        let mpath = path_of(&self.dir, "manifest");
        let mut last = None;
        for _ in 0..50 {
            let bytes = fs::read(&mpath).map_err(io(&mpath))?;
            match Manifest::decode(&mpath, &bytes) {
                Ok(m) => return Ok(m.audit_count),
                Err(e) => last = Some(e),
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        Err(last.expect("at least one attempt"))
    }
}

/// Verifies the audit chain of a store; returns the number of entries.
pub fn verify_audit(dir: &Path) -> Result<Result<usize, audit::AuditError>, StoreError> {
    verified_audit(dir).map(|r| r.map(|c| c.entries.len()))
}

/// Verifies the audit chain of a store; returns it, with what the manifest committed of it.
pub fn verified_audit(dir: &Path) -> Result<Result<audit::Chain, audit::AuditError>, StoreError> {
    let mpath = path_of(dir, "manifest");
    let bytes = fs::read(&mpath).map_err(io(&mpath))?;
    let m = Manifest::decode(&mpath, &bytes)?;
    // The log holds the latest entries too: a checkpoint or log of another store beside
    // this chain is as untrustworthy as a broken link.
    check_identity(dir, &m)?;
    let apath = path_of(dir, "audit.log");
    let text = match fs::read(&apath) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(StoreError::Io { path: apath, err: e }),
    };
    let found = audit::verify_from(&text, &m.genesis(), m.audit_count, &m.audit_head).map(|v| audit::Chain {
        entries: v.entries,
        committed: m.audit_count,
        head: m.audit_head.clone(),
    });
    Ok(found.map_err(|e| name_the_store(e, &m)).map_err(|mut e| {
        // `audit.log` is synced at compaction and on close; its latest entries are durable in
        // the log first. After a machine crash the file can lack them until the next start.
        let in_log = load(dir, Mode::ReadOnly).map(|(r, _)| r.audit.len() as u64).unwrap_or(0);
        if e.reason.contains("removed from the end") && in_log >= m.audit_count {
            e.reason.push_str(
                "; the store's log still holds them (Ved stopped before audit.log was synced): \
                 the next `ved run` on this directory restores them",
            );
        }
        e
    }))
}

/// Loads manifest, checkpoint, log and audit log. Returns what was recovered and the manifest.
fn load(dir: &Path, mode: Mode) -> Result<(Recovered, Manifest), StoreError> {
    let mpath = path_of(dir, "manifest");
    let bytes = fs::read(&mpath).map_err(io(&mpath))?;
    let mut m = Manifest::decode(&mpath, &bytes)?;
    check_manifest(dir, &m)?;
    let mut rec = Recovered { generation: m.generation, store_id: m.id, ..Recovered::default() };
    let mut loader = Loader::default();

    // The checkpoint: all or nothing; it was written whole and renamed into place.
    if m.generation > 0 {
        let cpath = path_of(dir, &checkpoint_name(m.generation));
        let bytes = fs::read(&cpath).map_err(io(&cpath))?;
        match read_checkpoint(&bytes, m.generation, m.id) {
            Ok(records) => {
                // About one instance per record in a fleet at rest: room for them once.
                loader.reserve(records.len());
                for r in records {
                    loader.apply(&mut rec, r);
                }
            }
            Err(detail) if mode == Mode::Recover => {
                rec.warnings.push(format!(
                    "{} is damaged ({detail}); its records were not loaded, it was set aside as {} and an \
                     empty checkpoint of this store takes its place",
                    cpath.display(),
                    cpath.with_extension("damaged").display()
                ));
                set_aside(&cpath)?;
                // An empty checkpoint in its place keeps the generation whole: the next open (a
                // crash may come before the next compaction) finds a checkpoint of this store,
                // not a missing file.
                let mut empty = frame::header(FileKind::Checkpoint, m.generation, m.id);
                let end = serde_json::to_vec(&CheckpointEnd { end: 0 }).expect("serializes");
                frame::write_record(&mut empty, &end);
                write_atomic(dir, &checkpoint_name(m.generation), &empty)?;
            }
            Err(detail) => return Err(StoreError::Corrupt { path: cpath, detail }),
        }
    }

    // The log: everything up to the committed length must be intact; past it, a crash may
    // have left an unfinished batch, which was never acknowledged.
    let lpath = path_of(dir, &log_name(m.generation));
    let mut bytes = fs::read(&lpath).map_err(io(&lpath))?;
    let corrupt = |detail: String| StoreError::Corrupt { path: lpath.clone(), detail };
    // Whose file it is comes first: another store's file is foreign whatever its generation.
    let header = frame::read_header(&bytes, FileKind::Log).map_err(|e| e.to_string()).and_then(|h| {
        frame::check_store(&h, m.id).map_err(|e| e.to_string())?;
        if h.generation != m.generation {
            return Err(format!("it belongs to generation {}, the manifest says {}", h.generation, m.generation));
        }
        Ok(h)
    });
    let header = match header {
        Ok(h) => h,
        Err(detail) if mode == Mode::Recover => {
            // A log whose header is damaged or names another store: none of its records can be
            // trusted to be this store's. It is set aside whole and an empty log takes its place;
            // the checkpoint's state stands.
            set_aside(&lpath)?;
            bytes = frame::header(FileKind::Log, m.generation, m.id);
            write_atomic(dir, &log_name(m.generation), &bytes)?;
            rec.warnings.push(format!(
                "{} is damaged ({detail}); none of its records were loaded, it was moved to {} and an \
                 empty log starts",
                lpath.display(),
                lpath.with_extension("damaged").display()
            ));
            m.log_len = bytes.len() as u64;
            frame::read_header(&bytes, FileKind::Log).map_err(|e| corrupt(e.to_string()))?
        }
        Err(detail) => return Err(corrupt(detail)),
    };
    if (bytes.len() as u64) < m.log_len && mode != Mode::Recover {
        return Err(corrupt(format!(
            "it is {} bytes long but {} bytes were committed: the file was truncated",
            bytes.len(),
            m.log_len
        )));
    }
    let mut offset = header.len;
    let mut good_end = offset;
    // The records of the batch being read; applied at its `Commit`.
    let mut batch: Vec<Record> = Vec::new();
    let mut scratch = Vec::new();
    // A log's schemas are defined as it goes; a later definition of a number replaces an
    // earlier one (a writer restarted on this log numbers afresh).
    let mut schemas = crate::bin::Schemas::default();
    while offset < bytes.len() {
        let parsed = frame::read_record(&bytes, offset).map_err(|e| e.to_string()).and_then(|(payload, next)| {
            crate::codec::decode_payload(payload, &mut schemas, &mut scratch)
                .map(|r| (r, next))
                .map_err(|e| format!("undecodable record at byte {offset}: {e}"))
        });
        match parsed {
            Ok((None, next)) => offset = next,
            Ok((Some(Record::Commit { .. }), next)) => {
                for r in batch.drain(..) {
                    loader.apply(&mut rec, r);
                }
                offset = next;
                good_end = next;
            }
            Ok((Some(r), next)) => {
                batch.push(r);
                offset = next;
            }
            Err(detail) => {
                // Past the committed length lies at most one batch that a crash cut short:
                // it was never acknowledged, so dropping it loses nothing anyone was told about.
                let committed = (offset as u64) < m.log_len;
                match mode {
                    Mode::Strict | Mode::ReadOnly if committed => return Err(corrupt(detail)),
                    Mode::Recover if committed => rec.warnings.push(format!(
                        "{}: {detail}; kept the records before it, copied the damaged file to {}",
                        lpath.display(),
                        lpath.with_extension("damaged").display()
                    )),
                    _ => rec.warnings.push(format!(
                        "{}: discarded {} bytes of an unfinished write at the end (a crash before it was committed)",
                        lpath.display(),
                        bytes.len() - offset
                    )),
                }
                break;
            }
        }
    }
    if !batch.is_empty() {
        rec.warnings.push(format!(
            "{}: discarded {} records of a batch without its commit at the end (a crash before it was committed)",
            lpath.display(),
            batch.len()
        ));
    }
    if good_end < bytes.len() && mode != Mode::ReadOnly {
        if mode == Mode::Recover {
            let aside = lpath.with_extension("damaged");
            fs::write(&aside, &bytes).map_err(io(&aside))?;
        }
        let f = OpenOptions::new().write(true).open(&lpath).map_err(io(&lpath))?;
        f.set_len(good_end as u64).map_err(io(&lpath))?;
        f.sync_all().map_err(io(&lpath))?;
    }
    m.log_len = good_end as u64;

    // The audit log. Its entries are durable in the log's batches first (`audit.log` is synced
    // only at compaction and on close), so those past its end (the machine went down before
    // the file's own pages reached the disk) are restored from the log, then the whole chain
    // is checked against the manifest.
    let apath = path_of(dir, "audit.log");
    let mut text = match fs::read(&apath) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(StoreError::Io { path: apath, err: e }),
    };
    let genesis = m.genesis();
    let checked = match audit::verify_from(&text, &genesis, 0, &genesis) {
        Ok(v) => {
            if v.torn_tail {
                text.truncate(v.valid_len);
                if mode != Mode::ReadOnly {
                    rec.warnings.push(format!("{}: discarded an unfinished entry at the end", apath.display()));
                    let f = OpenOptions::new().write(true).open(&apath).map_err(io(&apath))?;
                    f.set_len(v.valid_len as u64).map_err(io(&apath))?;
                }
            }
            // Only entries that continue the file's chain are restored. The log can also hold
            // entries of a chain that `--recover` set aside (a damaged or foreign `audit.log`)
            // until the next compaction; appending those would break the new chain. The
            // manifest's count and head still catch any committed entry that is missing.
            let mut want = v.entries.len() as u64 + 1;
            let mut head = v.entries.last().map_or(genesis.as_str(), |e| e.hash.as_str());
            let mut missing = String::new();
            for e in &loader.audit {
                if e.seq == want && e.prev == head {
                    missing.push_str(&e.to_line());
                    want += 1;
                    head = &e.hash;
                }
            }
            if !missing.is_empty() {
                text.push_str(&missing);
                if mode != Mode::ReadOnly {
                    let n = missing.lines().count();
                    let mut f = OpenOptions::new().create(true).append(true).open(&apath).map_err(io(&apath))?;
                    f.write_all(missing.as_bytes()).map_err(io(&apath))?;
                    f.sync_data().map_err(io(&apath))?;
                    rec.warnings.push(format!(
                        "{}: restored {n} {} from the log (written, not yet synced when Ved stopped)",
                        apath.display(),
                        if n == 1 { "entry" } else { "entries" }
                    ));
                }
            }
            audit::verify_from(&text, &genesis, m.audit_count, &m.audit_head)
        }
        Err(e) => Err(e),
    }
    .map_err(|e| name_the_store(e, &m));
    match checked {
        Ok(v) => {
            m.audit_count = v.entries.len() as u64;
            m.audit_head = v.entries.last().map_or(genesis, |e| e.hash.clone());
            rec.audit = v.entries;
        }
        Err(e) if mode == Mode::Recover => {
            let aside = apath.with_extension("damaged");
            fs::rename(&apath, &aside).map_err(io(&apath))?;
            rec.warnings.push(format!(
                "{} is damaged ({e}); it was moved to {} and a new audit log starts",
                apath.display(),
                aside.display()
            ));
            m.audit_count = 0;
            m.audit_head = genesis;
        }
        Err(e) => return Err(StoreError::Corrupt { path: apath, detail: e.to_string() }),
    }
    loader.finish(&mut rec);
    Ok((rec, m))
}

/// What recovery builds while it reads records, before it hands over a [`Recovered`].
#[derive(Default)]
struct Loader {
    // Per instance, its latest snapshot and enough older ones to find the one before the
    // oldest journal entry. Records move in here, uncloned: at a million instances a copy
    // each is a second of work and a heap left full of holes. (A map to an index, not to
    // the entries: a table of a million 270-byte entries would be moved whole at every growth.)
    index: rustc_hash::FxHashMap<String, u32>,
    recent: Vec<Option<Recent>>,
    /// One `Schema` per distinct domain, shared by every snapshot (JSON records bring a copy each).
    interned: Vec<Arc<crate::codec::Schema>>,
    /// The audit entries the log's committed batches hold.
    audit: Vec<AuditEntry>,
}

impl Loader {
    /// Room for about `n` more instances.
    fn reserve(&mut self, n: usize) {
        self.index.reserve(n);
        self.recent.reserve(n);
    }

    fn apply(&mut self, rec: &mut Recovered, r: Record) {
        match r {
            Record::Snapshot(s) => {
                // Just decoded, so not shared: taken out without a copy.
                let mut s = Arc::unwrap_or_clone(s);
                match self.interned.iter().find(|k| Arc::ptr_eq(k, &s.schema) || ***k == *s.schema) {
                    Some(k) => s.schema = k.clone(),
                    None => self.interned.push(s.schema.clone()),
                }
                let slot = self.index.get(&s.snapshot.name).and_then(|&i| self.recent[i as usize].as_mut());
                let Some(r) = slot else {
                    // New, or removed and created again.
                    match self.index.get(&s.snapshot.name) {
                        Some(&i) => self.recent[i as usize] = Some(Recent { older: VecDeque::new(), latest: s }),
                        None => {
                            self.index.insert(s.snapshot.name.clone(), self.recent.len() as u32);
                            self.recent.push(Some(Recent { older: VecDeque::new(), latest: s }));
                        }
                    }
                    return;
                };
                if s.snapshot.slice < r.latest.snapshot.slice {
                    // Slices only move forward; an older one (never written so) is kept as history only.
                    r.older.push_back(s);
                    return;
                }
                // The driver writes each journal entry right after its slice's snapshot, so a stable
                // snapshot past the last entry is of a slice that was not journaled (an observation
                // that changed nothing). Such a snapshot is needed only until the next one: a run of
                // periodic resyncs keeps its last and never pushes out the snapshot replay needs.
                let last_entry = rec.journals.get(&s.snapshot.name).and_then(|j| j.back()).map_or(0, |e| e.slice);
                let last = &r.latest.snapshot;
                let unjournaled = last.slice > last_entry
                    && last.slice + 1 == s.snapshot.slice
                    && last.status == ved_runtime::Status::Stable
                    && last.pending.is_empty();
                let replaced = last.slice == s.snapshot.slice || unjournaled;
                let prev = std::mem::replace(&mut r.latest, s);
                if !replaced {
                    r.older.push_back(prev);
                    while r.older.len() + 1 > JOURNAL_MAX + 2 {
                        r.older.pop_front();
                    }
                }
            }
            Record::Commit { .. } => {}
            Record::Program { files, retry, confirm_ms } => {
                rec.program = Some(files);
                rec.retry = retry;
                rec.confirm_ms = confirm_ms;
            }
            Record::Journal(j) => {
                let q = rec.journals.entry(j.instance.clone()).or_default();
                if q.back().is_none_or(|last| j.slice > last.slice) {
                    q.push_back(Arc::unwrap_or_clone(j));
                    while q.len() > JOURNAL_MAX {
                        q.pop_front();
                    }
                }
            }
            Record::Audit(e) => self.audit.push(*e),
            Record::Trim { instance, keep_from_slice } => {
                if let Some(q) = rec.journals.get_mut(&instance) {
                    while q.front().is_some_and(|e| e.slice < keep_from_slice) {
                        q.pop_front();
                    }
                }
            }
            Record::Remove { instance } => {
                if let Some(&i) = self.index.get(&instance) {
                    self.recent[i as usize] = None;
                }
                rec.journals.remove(&instance);
            }
        }
    }

    /// The latest snapshot of each instance, and the bases replay starts from, into `rec`.
    fn finish(mut self, rec: &mut Recovered) {
        let mut all: Vec<(String, u32)> = self.index.into_iter().collect();
        all.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut latest = Vec::with_capacity(all.len());
        for (instance, i) in all {
            let Some(r) = self.recent[i as usize].take() else { continue };
            let first = rec.journals.get(&instance).and_then(|j| j.front()).map(|e| e.slice);
            let base = first
                .and_then(|f| std::iter::once(&r.latest).chain(r.older.iter().rev()).find(|s| s.snapshot.slice < f));
            if let Some(base) = base {
                rec.bases.insert(instance, base.clone());
            }
            latest.push(r.latest);
        }
        rec.snapshots = crate::Snapshots::from_sorted(latest);
    }
}

fn read_checkpoint(bytes: &[u8], generation: u64, id: Option<StoreId>) -> Result<Vec<Record>, String> {
    let h = frame::read_header(bytes, FileKind::Checkpoint).map_err(|e| e.to_string())?;
    frame::check_store(&h, id).map_err(|e| e.to_string())?;
    if h.generation != generation {
        return Err(format!("it belongs to generation {}, expected {generation}", h.generation));
    }
    // First the frames, their checksums and the schemas, in order; then the records,
    // decoded on every core, since each needs only its bytes and the schemas.
    let mut offset = h.len;
    let mut payloads: Vec<(usize, &[u8])> = Vec::with_capacity(count_frames(bytes, h.len));
    let mut schemas = crate::bin::Schemas::default();
    loop {
        let (payload, next) = frame::read_record(bytes, offset).map_err(|e| e.to_string())?;
        if payload.first() == Some(&crate::bin::SCHEMA) {
            // A checkpoint is written in one go: each schema is defined once.
            let at = offset;
            let (id, again) = schemas.define(payload).map_err(|e| format!("undecodable record at byte {at}: {e}"))?;
            if again {
                return Err(format!("schema {id} is defined twice (at byte {at})"));
            }
            offset = next;
            continue;
        }
        // The trailer counts the records (schemas aside), so a checkpoint cut at a record
        // boundary is caught too. (A JSON record starts with `kind`: the trailer has no such key.)
        let json_record = payload.starts_with(b"{\"kind\":");
        let binary = matches!(payload.first(), Some(&(crate::bin::SNAPSHOT | crate::bin::JOURNAL)));
        if let Some(count) =
            (!json_record && !binary).then(|| serde_json::from_slice::<CheckpointEnd>(payload).ok()).flatten()
        {
            if count.end != payloads.len() as u64 {
                return Err(format!("its trailer counts {} records, found {}", count.end, payloads.len()));
            }
            if next != bytes.len() {
                return Err(format!("{} unexpected bytes after its trailer", bytes.len() - next));
            }
            break;
        }
        payloads.push((offset, payload));
        offset = next;
    }
    let decode = |part: &[(usize, &[u8])]| -> Result<Vec<Record>, String> {
        let mut scratch = Vec::new();
        let mut out = Vec::with_capacity(part.len());
        for (at, p) in part {
            let r = crate::codec::decode_with(p, &schemas, &mut scratch);
            out.push(r.map_err(|e| format!("undecodable record at byte {at}: {e}"))?);
        }
        Ok(out)
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    if threads < 2 || payloads.len() < 4096 {
        return decode(&payloads);
    }
    let chunk = payloads.len().div_ceil(threads);
    let parts: Vec<Result<Vec<Record>, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = payloads.chunks(chunk).map(|c| s.spawn(move || decode(c))).collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("a decoding thread panicked".into()))).collect()
    });
    let mut records = Vec::with_capacity(payloads.len());
    for p in parts {
        records.extend(p?);
    }
    Ok(records)
}

/// About how many framed records follow the header (ending at `start`), by their lengths alone (nothing is
/// checked here; reading checks everything): room for a checkpoint's records is made once,
/// not by doubling a million times over. It stops at the first frame that does not look
/// like a record (a JSON object or a binary record's tag), and never counts more than one record per 32 bytes, so a damaged
/// file cannot make it reserve more than the records it could hold.
fn count_frames(bytes: &[u8], start: usize) -> usize {
    let mut offset = start;
    let mut n = 0;
    while let Some(head) = bytes.get(offset..offset + frame::RECORD_HEADER_LEN) {
        let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes")) as usize;
        let start = offset + frame::RECORD_HEADER_LEN;
        let first = bytes.get(start).copied();
        if len < 2 || !matches!(first, Some(b'{' | crate::bin::SCHEMA | crate::bin::SNAPSHOT | crate::bin::JOURNAL)) {
            break;
        }
        offset = start + len;
        n += 1;
    }
    n.min(bytes.len() / 32)
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckpointEnd {
    end: u64,
}

/// Removes what earlier generations left: a crash between a compaction's commit (the
/// manifest's rename) and its cleanup leaves the old checkpoint and log, and an interrupted
/// write leaves `.tmp` files. Only files of this store's own names are touched; files set
/// aside as damaged stay for a person to look at.
fn remove_old_generations(dir: &Path, generation: u64, warnings: &mut Vec<String>) -> Result<(), StoreError> {
    let entries = fs::read_dir(dir).map_err(io(dir))?;
    let mut removed = Vec::new();
    for e in entries.filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        let base = name.strip_suffix(".tmp").unwrap_or(&name);
        let gen =
            base.strip_prefix("checkpoint-").or_else(|| base.strip_prefix("log-")).and_then(|g| g.parse::<u64>().ok());
        let stale = match gen {
            Some(g) => g != generation || name.ends_with(".tmp"),
            None => name == "manifest.tmp",
        };
        if stale {
            fs::remove_file(e.path()).map_err(io(&e.path()))?;
            removed.push(name);
        }
    }
    if !removed.is_empty() {
        removed.sort();
        warnings.push(format!("removed files of earlier generations: {}", removed.join(", ")));
        sync_dir(dir)?;
    }
    Ok(())
}

fn set_aside(path: &Path) -> Result<(), StoreError> {
    let aside = path.with_extension("damaged");
    fs::rename(path, &aside).map_err(io(path))
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// Writes `bytes` to `path` atomically: temp file, fsync, rename, fsync the directory.
/// True when `dir` holds nothing but what an interrupted creation of a store leaves
/// behind (or nothing at all): no manifest has been written, so nothing was committed.
fn only_creation_leftovers(dir: &Path) -> Result<bool, StoreError> {
    let log0 = log_name(0);
    let leftovers = ["lock".to_string(), log0.clone(), format!("{log0}.tmp"), "manifest.tmp".to_string()];
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(StoreError::Io { path: dir.to_path_buf(), err: e }),
    };
    Ok(entries.filter_map(Result::ok).all(|e| leftovers.iter().any(|l| e.file_name() == l.as_str())))
}

fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = path_of(dir, &format!("{name}.tmp"));
    let path = path_of(dir, name);
    let mut f = File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    fs::rename(&tmp, &path).map_err(io(&path))?;
    sync_dir(dir)
}

enum Cmd {
    /// A batch, already framed by [`Store::append`] on the caller's thread: the writer only
    /// adds the schema records its file lacks, the audit entries and the commit.
    Batch {
        seq: u64,
        batch: Encoded,
        audit: Vec<AuditDraft>,
    },
    Compact {
        seq: u64,
        records: Vec<Record>,
    },
}

/// Records framed for the log, with the schemas their snapshots name.
#[derive(Default)]
struct Encoded {
    frames: Vec<u8>,
    count: usize,
    /// Schema numbers the snapshots name, each once.
    schemas: Vec<u32>,
    /// Schemas numbered in this batch for the first time: number, encoded schema record.
    new_schemas: Vec<(u32, Vec<u8>)>,
}

/// Frames records on the caller's thread. The caller made them and frees them there, so
/// the writer neither encodes nor frees a million small allocations made by another thread
/// (memory handed across threads is what the allocator is slowest at).
struct Encoder {
    /// Whether the log the next batch goes to takes binary records (format 2).
    binary: bool,
    /// Schema numbers for this store's lifetime; each file defines those it uses.
    numbering: crate::bin::Numbering,
    payload: Vec<u8>,
}

impl Encoder {
    fn encode(&mut self, records: &[Record]) -> Result<Encoded, String> {
        // About what a snapshot or a journal entry takes: one allocation, not a doubling series.
        let mut out =
            Encoded { count: records.len(), frames: Vec::with_capacity(records.len() * 80), ..Encoded::default() };
        for r in records {
            self.payload.clear();
            match r {
                Record::Snapshot(snap) if self.binary => {
                    let (id, new) = self.numbering.number(&snap.schema);
                    if new {
                        let mut schema = Vec::new();
                        crate::bin::encode_schema(&mut schema, id, &snap.schema);
                        out.new_schemas.push((id, schema));
                    }
                    if !out.schemas.contains(&id) {
                        out.schemas.push(id);
                    }
                    crate::bin::encode_snapshot(&mut self.payload, id, &snap.snapshot);
                }
                Record::Journal(j) if self.binary => crate::bin::encode_journal(&mut self.payload, j),
                _ => serde_json::to_writer(&mut self.payload, r).map_err(|e| format!("encoding a record: {e}"))?,
            }
            frame::write_record(&mut out.frames, &self.payload);
        }
        Ok(out)
    }
}

struct Shared {
    durable: Mutex<u64>,
    cond: Condvar,
    failure: Mutex<Option<String>>,
    /// Why writes are waiting, while they find no space: see [`Store::stalled`].
    stalled: Mutex<Option<String>>,
    /// Authenticates the audit entries the writer makes: see [`Store::set_audit_key`].
    audit_key: std::sync::OnceLock<audit::AuditKey>,
    /// How long each fsync and fdatasync took: see [`Store::fsync_seconds`].
    fsync_seconds: prometheus_client::metrics::histogram::Histogram,
}

impl Shared {
    fn new() -> Shared {
        Shared {
            durable: Mutex::new(0),
            cond: Condvar::new(),
            failure: Mutex::new(None),
            stalled: Mutex::new(None),
            audit_key: std::sync::OnceLock::new(),
            // 50 µs to about 3.3 s, doubling: a group commit on an SSD is tens of
            // microseconds to a few milliseconds, and a stalled disk is seconds.
            fsync_seconds: prometheus_client::metrics::histogram::Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.000_05, 2.0, 17),
            ),
        }
    }

    fn stalled(&self) -> Option<String> {
        self.stalled.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_stalled(&self, why: Option<String>) {
        *self.stalled.lock().unwrap_or_else(|p| p.into_inner()) = why;
    }

    /// Batches up to `last` are durable. The watermark only moves forward: a batch once
    /// reported durable (and acted on: intents released, lines acknowledged) stays so.
    fn set_durable(&self, last: u64) {
        let mut d = self.durable.lock().unwrap_or_else(|p| p.into_inner());
        debug_assert!(last >= *d, "the durable sequence went backwards: {} -> {last}", *d);
        *d = (*d).max(last);
    }
}

/// An open, locked store with its writer thread.
pub struct Store {
    dir: PathBuf,
    tx: Option<Sender<Cmd>>,
    thread: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
    next_seq: u64,
    /// Held for the store's lifetime; the OS releases it if the process dies.
    _lock: File,
    /// Manual mode (no writer thread): the writer, the queued commands and the hook.
    manual: Option<Manual>,
    fsyncs: Arc<AtomicU64>,
    encoder: Encoder,
}

struct Manual {
    writer: Writer,
    queued: Vec<Cmd>,
    on_durable: DurableHook,
}

/// When queued batches are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flush {
    /// A writer thread writes them as they come, many batches per fsync (group commit).
    Background,
    /// Only [`Store::flush`] writes them, on the caller's thread. For deterministic
    /// simulation: the caller decides when a write happens, and may crash in between.
    Manual,
}

/// Called by the writer thread with the sequence number of each batch made durable.
pub type DurableHook = Box<dyn Fn(u64) + Send>;

impl Store {
    /// Opens (or creates) the store in `dir`, recovering its contents.
    pub fn open(
        dir: &Path,
        durability: Durability,
        recover: bool,
        on_durable: DurableHook,
    ) -> Result<(Store, Recovered), StoreError> {
        Store::open_with(dir, durability, recover, Flush::Background, on_durable)
    }

    /// [`Store::open`] with a choice of [`Flush`] mode.
    pub fn open_with(
        dir: &Path,
        durability: Durability,
        recover: bool,
        flush: Flush,
        on_durable: DurableHook,
    ) -> Result<(Store, Recovered), StoreError> {
        fs::create_dir_all(dir).map_err(io(dir))?;
        let lpath = path_of(dir, "lock");
        let lock = OpenOptions::new().create(true).truncate(false).write(true).open(&lpath).map_err(io(&lpath))?;
        // A lock is refused only after it stayed taken for a while: an `flock` belongs to the
        // open file, and a process that forks (to run any command) holds a copy of every open
        // file until its child execs. A store closed and reopened in one process can meet that
        // copy for a moment; another `ved run` holds it for good.
        let deadline = std::time::Instant::now() + LOCK_PATIENCE;
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(fs::TryLockError::WouldBlock) => return Err(StoreError::Locked { path: dir.to_path_buf() }),
                Err(fs::TryLockError::Error(e)) => return Err(StoreError::Io { path: lpath, err: e }),
            }
        }
        let mpath = path_of(dir, "manifest");
        if !mpath.exists() {
            // Creation writes the log, then the manifest: a crash in between leaves only
            // our own leftovers, and creation simply starts over.
            if !only_creation_leftovers(dir)? {
                return Err(StoreError::Foreign { path: dir.to_path_buf() });
            }
            // A new store: its identity, an empty log, then the manifest that makes it real.
            let id = StoreId::generate()
                .map_err(|e| StoreError::Io { path: dir.to_path_buf(), err: std::io::Error::other(e) })?;
            write_atomic(dir, &log_name(0), &frame::header(FileKind::Log, 0, Some(id)))?;
            let mut m = Manifest {
                generation: 0,
                log_len: HEADER_LEN as u64,
                audit_count: 0,
                audit_head: String::new(),
                id: Some(id),
                legacy_genesis: false,
            };
            m.audit_head = m.genesis();
            write_atomic(dir, "manifest", &m.encode())?;
        }
        let (mut rec, manifest) = load(dir, if recover { Mode::Recover } else { Mode::Strict })?;
        remove_old_generations(dir, manifest.generation, &mut rec.warnings)?;
        let shared = Arc::new(Shared::new());
        let fsyncs = Arc::new(AtomicU64::new(0));
        let writer = Writer::new(dir, manifest, durability, fsyncs.clone(), shared.clone())?;
        let encoder =
            Encoder { binary: writer.binary, numbering: crate::bin::Numbering::default(), payload: Vec::new() };
        if flush == Flush::Manual {
            let manual = Some(Manual { writer, queued: Vec::new(), on_durable });
            let store = Store {
                dir: dir.to_path_buf(),
                tx: None,
                thread: None,
                shared,
                next_seq: 0,
                _lock: lock,
                manual,
                fsyncs,
                encoder,
            };
            return Ok((store, rec));
        }
        let (tx, rx) = mpsc::channel();
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("ved-store-writer".into())
            .spawn(move || writer.run(rx, thread_shared, on_durable))
            .map_err(io(dir))?;
        Ok((
            Store {
                dir: dir.to_path_buf(),
                tx: Some(tx),
                thread: Some(thread),
                shared,
                next_seq: 0,
                _lock: lock,
                manual: None,
                fsyncs,
                encoder,
            },
            rec,
        ))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// From now on every audit entry carries a `mac` made with `key`. Only before the first
    /// batch: a key that arrived mid-run would leave entries of one run on both sides of it.
    pub fn set_audit_key(&mut self, key: audit::AuditKey) -> Result<(), String> {
        if self.next_seq > 0 {
            return Err("the audit key must be set before the first batch".into());
        }
        self.shared.audit_key.set(key).map_err(|_| "the audit key is already set".to_string())
    }

    /// Queues records and audit entries as one batch; returns its sequence number.
    /// It does not wait: [`Store::durable_seq`] says when the batch is on disk.
    pub fn append(&mut self, records: Vec<Record>, audit: Vec<AuditDraft>) -> u64 {
        self.next_seq += 1;
        let batch = match self.encoder.encode(&records) {
            Ok(b) => b,
            Err(e) => {
                // Nothing is written after a record that cannot be: the batch never becomes durable.
                let mut f = self.shared.failure.lock().unwrap_or_else(|p| p.into_inner());
                f.get_or_insert(e);
                return self.next_seq;
            }
        };
        drop(records);
        let cmd = Cmd::Batch { seq: self.next_seq, batch, audit };
        match (&mut self.manual, &self.tx) {
            (Some(m), _) => m.queued.push(cmd),
            (None, Some(tx)) => {
                let _ = tx.send(cmd);
            }
            (None, None) => {}
        }
        self.next_seq
    }

    /// Manual mode: writes and syncs everything queued, as one group commit.
    /// Returns the durable sequence number. In background mode it only waits.
    pub fn flush(&mut self) -> Result<u64, String> {
        if self.manual.is_none() {
            self.wait_durable(self.next_seq)?;
            return Ok(self.durable_seq());
        }
        if let Some(f) = self.failure() {
            return Err(f);
        }
        let Some(m) = self.manual.as_mut() else { return Ok(0) };
        let mut pending: VecDeque<Cmd> = std::mem::take(&mut m.queued).into();
        let mut last = None;
        while !pending.is_empty() {
            match m.writer.write_group(&mut pending) {
                Ok(seq) => {
                    self.shared.set_stalled(None);
                    self.shared.set_durable(seq);
                    last = Some(seq);
                }
                Err(WriteError::NoSpace(e)) => {
                    // Kept, in order, for the next flush: nothing of them was left written.
                    m.queued = pending.into();
                    self.shared.set_stalled(Some(e.clone()));
                    if let Some(seq) = last {
                        (m.on_durable)(seq);
                    }
                    return Err(e);
                }
                Err(WriteError::Fatal(e)) => {
                    *self.shared.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.clone());
                    return Err(e);
                }
            }
        }
        match last {
            Some(seq) => {
                (m.on_durable)(seq);
                Ok(seq)
            }
            None => Ok(self.durable_seq()),
        }
    }

    /// Replaces the log with a checkpoint holding `records` (every live record).
    pub fn compact(&mut self, records: Vec<Record>) -> u64 {
        self.next_seq += 1;
        // The generation the checkpoint starts has a format-2 log.
        self.encoder.binary = true;
        let cmd = Cmd::Compact { seq: self.next_seq, records };
        match (&mut self.manual, &self.tx) {
            (Some(m), _) => m.queued.push(cmd),
            (None, Some(tx)) => {
                let _ = tx.send(cmd);
            }
            (None, None) => {}
        }
        self.next_seq
    }

    /// How many fsync and fdatasync calls the writer has made (none with `Durability::None`):
    /// one per group commit, plus those of compactions and of `audit.log` at compaction and close.
    pub fn fsyncs(&self) -> u64 {
        self.fsyncs.load(Ordering::Relaxed)
    }

    /// The time each of those calls took, in seconds (a handle on the writer's histogram,
    /// for `GET /metrics`).
    pub fn fsync_seconds(&self) -> prometheus_client::metrics::histogram::Histogram {
        self.shared.fsync_seconds.clone()
    }

    /// The highest batch known durable.
    pub fn durable_seq(&self) -> u64 {
        *self.shared.durable.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The sequence number the next batch will get, minus one.
    pub fn last_seq(&self) -> u64 {
        self.next_seq
    }

    /// A write that failed: the store stops accepting work after one.
    pub fn failure(&self) -> Option<String> {
        self.shared.failure.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Why writes are waiting, while the file system (or the quota) has no space for them.
    /// Nothing is reported durable meanwhile; what could not be written was taken back from
    /// the files, is kept, and is tried again (every 100 ms at first, then less often, up to
    /// every 5 s), so that the store goes on by itself once space is freed.
    pub fn stalled(&self) -> Option<String> {
        self.shared.stalled()
    }

    /// Blocks until batch `seq` is durable or the writer failed, or finds no space: a
    /// caller that waits (at exit, above all) is told so rather than kept waiting for space.
    pub fn wait_durable(&self, seq: u64) -> Result<(), String> {
        if self.manual.is_some() {
            // Nothing else writes in manual mode: what is not durable now waits for `flush`.
            return match self.failure() {
                Some(f) => Err(f),
                None if self.durable_seq() >= seq => Ok(()),
                None => Err(format!("batch {seq} is queued; manual mode writes it only on flush")),
            };
        }
        let mut d = self.shared.durable.lock().unwrap_or_else(|p| p.into_inner());
        while *d < seq {
            if let Some(f) = self.failure() {
                return Err(f);
            }
            if let Some(s) = self.stalled() {
                return Err(format!("batch {seq} is not written: {s}"));
            }
            d = self
                .shared
                .cond
                .wait_timeout(d, std::time::Duration::from_millis(50))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Ok(())
    }

    /// Manual mode: drops the store as a crash would, without writing what is queued.
    /// (In background mode the writer still finishes what it was given.)
    pub fn abandon(mut self) {
        if let Some(m) = self.manual.as_mut() {
            m.queued.clear();
        }
        self.manual = None;
    }

    /// Flushes everything queued and stops the writer.
    pub fn close(mut self) -> Result<(), String> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), String> {
        if self.manual.is_some() {
            self.flush()?;
            if let Some(m) = self.manual.as_mut() {
                m.writer.sync_audit().map_err(WriteError::message)?;
            }
            self.manual = None;
        }
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        match self.failure() {
            Some(f) => Err(f),
            None => Ok(()),
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

struct Writer {
    dir: PathBuf,
    manifest: Manifest,
    manifest_file: File,
    log: File,
    audit: File,
    /// `audit.log`'s length as far as the writer wrote it whole: where a batch that could not
    /// be written cuts it back to.
    audit_len: u64,
    /// Audit entries written since the last sync: an audit log that did not grow needs no
    /// `fdatasync` (one per batch saved for every batch without an episode).
    audit_unsynced: bool,
    durability: Durability,
    /// Whether the log it opened takes binary records (read once, by the store's encoder): a
    /// format-1 log (from an older store) keeps JSON until a compaction starts a format-2 one.
    binary: bool,
    /// Every schema record the encoder made, by number.
    schemas: rustc_hash::FxHashMap<u32, Vec<u8>>,
    /// The schema numbers the log in use has defined.
    defined: Vec<u32>,
    /// Reused for each record's payload.
    payload: Vec<u8>,
    /// fsync and fdatasync calls made, for [`Store::fsyncs`].
    fsyncs: Arc<AtomicU64>,
    /// What it shares with the store; the writer reads the audit key there.
    shared: Arc<Shared>,
}

/// Why the writer could not write a group of commands.
#[derive(Debug)]
enum WriteError {
    /// The file system (or the quota) is full. What was written of the group has been taken
    /// back, so the files are as before it; the same commands are tried again later.
    NoSpace(String),
    /// Anything else, above all a failed fsync: the store stops taking work.
    Fatal(String),
}

impl WriteError {
    /// `what` failed on `path` with `err`: no space is worth waiting for, the rest is not.
    fn of(what: &str, path: &Path, err: std::io::Error) -> WriteError {
        let message = format!("{what} {}: {err}", path.display());
        if no_space(&err) {
            WriteError::NoSpace(message)
        } else {
            WriteError::Fatal(message)
        }
    }

    fn message(self) -> String {
        match self {
            WriteError::NoSpace(m) | WriteError::Fatal(m) => m,
        }
    }
}

/// ENOSPC or EDQUOT: the write may succeed once space is freed.
fn no_space(err: &std::io::Error) -> bool {
    matches!(err.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded)
}

/// The writer's position before a group: what it goes back to when the group cannot be written.
struct Mark {
    log_len: u64,
    audit_len: u64,
    audit_count: u64,
    audit_head: String,
    defined: usize,
}

/// How long the writer waits before it tries a write that found no space again: the first
/// wait, and the longest. Short at first (a log rotated away frees space within moments),
/// and never so long that Ved lags far behind once an operator has freed space.
const NO_SPACE_RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(100);
const NO_SPACE_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(5);

impl Writer {
    fn new(
        dir: &Path,
        manifest: Manifest,
        durability: Durability,
        fsyncs: Arc<AtomicU64>,
        shared: Arc<Shared>,
    ) -> Result<Writer, StoreError> {
        let lpath = path_of(dir, &log_name(manifest.generation));
        let mut log = OpenOptions::new().read(true).write(true).open(&lpath).map_err(io(&lpath))?;
        // The version is in the first bytes of every header, long or short.
        let mut head = [0u8; HEADER_LEN_V2];
        log.read_exact_at(&mut head, 0).map_err(io(&lpath))?;
        let binary = frame::version(&head) >= 2;
        log.seek(SeekFrom::Start(manifest.log_len)).map_err(io(&lpath))?;
        let apath = path_of(dir, "audit.log");
        let audit = OpenOptions::new().create(true).append(true).open(&apath).map_err(io(&apath))?;
        let audit_len = audit.metadata().map_err(io(&apath))?.len();
        let mpath = path_of(dir, "manifest");
        let manifest_file = OpenOptions::new().write(true).open(&mpath).map_err(io(&mpath))?;
        let mut w = Writer {
            dir: dir.to_path_buf(),
            manifest,
            manifest_file,
            log,
            audit,
            audit_len,
            audit_unsynced: false,
            durability,
            binary,
            schemas: rustc_hash::FxHashMap::default(),
            defined: Vec::new(),
            payload: Vec::new(),
            fsyncs,
            shared,
        };
        // Recovery may have accepted intact records that were written but never synced
        // before the crash, and trimmed a torn tail. Make what was recovered durable before
        // anything acts on it (re-sent intents, acknowledgements), then make the manifest
        // say what is really there.
        w.sync().map_err(|e| StoreError::Io { path: mpath.clone(), err: std::io::Error::other(e.message()) })?;
        Ok(w)
    }

    fn write_manifest(&self) -> std::io::Result<()> {
        // Rewritten in place without fsync: it may lag the log after a power loss, and
        // recovery accepts intact records past the committed length for that reason.
        self.manifest_file.write_all_at(&self.manifest.encode(), 0)
    }

    fn mark(&self) -> Mark {
        Mark {
            log_len: self.manifest.log_len,
            audit_len: self.audit_len,
            audit_count: self.manifest.audit_count,
            audit_head: self.manifest.audit_head.clone(),
            defined: self.defined.len(),
        }
    }

    /// Takes back a group that could not be written whole: the log and `audit.log` are cut
    /// back to where the group began (a batch cut short past the committed length would be
    /// dropped by recovery, but a later batch written after it would be lost with it), and
    /// the chain and the schemas the file defines are as before.
    fn roll_back(&mut self, mark: Mark) -> Result<(), WriteError> {
        let lpath = path_of(&self.dir, &log_name(self.manifest.generation));
        let apath = path_of(&self.dir, "audit.log");
        // Shrinking a file needs no space; should it fail all the same, nothing more is written.
        let fatal =
            |what: &str, path: &Path, e: std::io::Error| WriteError::Fatal(format!("{what} {}: {e}", path.display()));
        self.log.set_len(mark.log_len).map_err(|e| fatal("cutting back", &lpath, e))?;
        self.log.seek(SeekFrom::Start(mark.log_len)).map_err(|e| fatal("seeking in", &lpath, e))?;
        self.audit.set_len(mark.audit_len).map_err(|e| fatal("cutting back", &apath, e))?;
        self.manifest.log_len = mark.log_len;
        self.audit_len = mark.audit_len;
        self.manifest.audit_count = mark.audit_count;
        self.manifest.audit_head = mark.audit_head;
        self.defined.truncate(mark.defined);
        Ok(())
    }

    /// Writes one group commit from the front of `pending` (batches up to the record limit,
    /// or one compaction), syncs it, and removes it from `pending`; returns its last sequence
    /// number. On an error nothing of the group stays written and `pending` is unchanged.
    fn write_group(&mut self, pending: &mut VecDeque<Cmd>) -> Result<u64, WriteError> {
        if let Some(Cmd::Compact { seq, records }) = pending.front() {
            // The batches before it were synced as their own group.
            let seq = *seq;
            self.compact(records)?;
            pending.pop_front();
            return Ok(seq);
        }
        let mark = self.mark();
        let mut taken = 0;
        let mut count = 0;
        let mut last = 0;
        let mut written = Ok(());
        for cmd in pending.iter() {
            let Cmd::Batch { seq, batch, audit } = cmd else { break };
            if taken > 0 && count + batch.count > BATCH_RECORDS_MAX {
                break;
            }
            debug_assert!(*seq > last, "batches are written in sequence: {seq} after {last}");
            written = self.write_batch(batch, audit);
            if written.is_err() {
                break;
            }
            taken += 1;
            count += batch.count;
            last = *seq;
        }
        if let Err(e) = written.and_then(|()| self.sync()) {
            return match e {
                WriteError::NoSpace(_) => self.roll_back(mark).and(Err(e)),
                WriteError::Fatal(_) => Err(e),
            };
        }
        pending.drain(..taken);
        Ok(last)
    }

    fn run(mut self, rx: Receiver<Cmd>, shared: Arc<Shared>, on_durable: DurableHook) {
        let mut pending: VecDeque<Cmd> = VecDeque::new();
        // While writes find no space: how long to wait before the next try.
        let mut retry: Option<std::time::Duration> = None;
        let mut closed = false;
        loop {
            if let Some(wait) = retry {
                // Commands keep coming while the writer waits: they join the queue, in order.
                let deadline = std::time::Instant::now() + wait;
                while !closed {
                    match rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())) {
                        Ok(c) => pending.push_back(c),
                        Err(mpsc::RecvTimeoutError::Timeout) => break,
                        Err(mpsc::RecvTimeoutError::Disconnected) => closed = true,
                    }
                }
            } else if pending.is_empty() {
                match rx.recv() {
                    Ok(c) => pending.push_back(c),
                    Err(_) => break,
                }
            }
            // Group commit: everything already queued shares the writes and the fsyncs.
            pending.extend(rx.try_iter());
            while !pending.is_empty() {
                match self.write_group(&mut pending) {
                    Ok(last) => {
                        retry = None;
                        shared.set_stalled(None);
                        shared.set_durable(last);
                        shared.cond.notify_all();
                        on_durable(last);
                    }
                    Err(WriteError::NoSpace(e)) => {
                        retry = Some(retry.map_or(NO_SPACE_RETRY_FIRST, |w| (w * 2).min(NO_SPACE_RETRY_MAX)));
                        shared.set_stalled(Some(e));
                        shared.cond.notify_all();
                        break;
                    }
                    Err(WriteError::Fatal(e)) => {
                        *shared.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                        shared.cond.notify_all();
                        return;
                    }
                }
            }
            if closed && !pending.is_empty() {
                // Closed while the disk is full: what is left was never reported durable, so
                // nothing anyone was told about is lost; it is said, not waited for.
                let stall = shared.stalled().unwrap_or_default();
                *shared.failure.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(format!("closed with {} writes not done: {stall}", pending.len()));
                shared.cond.notify_all();
                break;
            }
            if closed {
                break;
            }
        }
        // Closed: `audit.log` is made durable on its own too.
        if let Err(e) = self.sync_audit() {
            *shared.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.message());
        }
    }

    fn write_batch(&mut self, batch: &Encoded, drafts: &[AuditDraft]) -> Result<(), WriteError> {
        let mut buf = Vec::with_capacity(batch.frames.len() + 64);
        for (id, schema) in &batch.new_schemas {
            // A batch tried again brings its schemas again.
            self.schemas.entry(*id).or_insert_with(|| schema.clone());
        }
        // Each schema once per file, before the first snapshot that names it.
        for &id in &batch.schemas {
            if !self.defined.contains(&id) {
                let Some(schema) = self.schemas.get(&id) else {
                    return Err(WriteError::Fatal(format!("internal error: schema {id} was never encoded")));
                };
                frame::write_record(&mut buf, schema);
                self.defined.push(id);
            }
        }
        buf.extend_from_slice(&batch.frames);
        // Audit entries go into the batch too: durable with the log's fsync, so a batch costs
        // one fsync whether or not it audits. `audit.log` gets the same lines, synced later.
        let mut text = String::new();
        for d in drafts {
            let key = self.shared.audit_key.get();
            let e = AuditEntry::new_keyed(self.manifest.audit_count + 1, &self.manifest.audit_head, d, key);
            self.manifest.audit_count += 1;
            self.manifest.audit_head = e.hash.clone();
            text.push_str(&e.to_line());
            self.payload.clear();
            serde_json::to_writer(&mut self.payload, &Record::Audit(Box::new(e)))
                .map_err(|e| WriteError::Fatal(format!("encoding a record: {e}")))?;
            frame::write_record(&mut buf, &self.payload);
        }
        let commit = serde_json::to_vec(&Record::Commit { at: self.manifest.log_len }).expect("serializes");
        frame::write_record(&mut buf, &commit);
        // One write call per batch keeps a crash from interleaving partial records.
        if let Err(e) = self.log.write_all(&buf) {
            return Err(WriteError::of("writing", &path_of(&self.dir, &log_name(self.manifest.generation)), e));
        }
        self.manifest.log_len += buf.len() as u64;
        if !text.is_empty() {
            if let Err(e) = self.audit.write_all(text.as_bytes()) {
                return Err(WriteError::of("writing", &path_of(&self.dir, "audit.log"), e));
            }
            self.audit_len += text.len() as u64;
            self.audit_unsynced = true;
        }
        Ok(())
    }

    /// Makes what was written durable: the log (which holds the audit entries too).
    fn sync(&mut self) -> Result<(), WriteError> {
        if self.durability == Durability::Fsync {
            // A failed fsync is never tried again: the kernel may have dropped the dirty
            // pages it could not write and marked them clean, so a second fsync can succeed
            // without the data ever reaching the disk. Only a new process, reading the file
            // back from the disk, knows what is there.
            let lpath = path_of(&self.dir, &log_name(self.manifest.generation));
            let t = std::time::Instant::now();
            self.log.sync_data().map_err(|e| WriteError::Fatal(format!("fsync of {}: {e}", lpath.display())))?;
            self.shared.fsync_seconds.observe(t.elapsed().as_secs_f64());
            self.fsyncs.fetch_add(1, Ordering::Relaxed);
        }
        self.write_manifest().map_err(|e| WriteError::of("writing", &path_of(&self.dir, "manifest"), e))
    }

    /// Syncs `audit.log` when it grew: before a compaction drops the log records that back
    /// its entries, and on close.
    fn sync_audit(&mut self) -> Result<(), WriteError> {
        if self.durability == Durability::Fsync && self.audit_unsynced {
            // Fatal when it fails, as the log's fsync (see `sync`).
            let t = std::time::Instant::now();
            self.audit.sync_data().map_err(|e| WriteError::Fatal(format!("fsync of the audit log: {e}")))?;
            self.shared.fsync_seconds.observe(t.elapsed().as_secs_f64());
            self.fsyncs.fetch_add(1, Ordering::Relaxed);
        }
        self.audit_unsynced = false;
        Ok(())
    }

    /// Writes `bytes` to `dir/NAME.tmp` and syncs it; returns the temp file's path.
    fn stage(&self, name: &str, bytes: &[u8]) -> Result<PathBuf, WriteError> {
        let tmp = path_of(&self.dir, &format!("{name}.tmp"));
        let mut f = File::create(&tmp).map_err(|e| WriteError::of("creating", &tmp, e))?;
        f.write_all(bytes).map_err(|e| WriteError::of("writing", &tmp, e))?;
        // A temp file's failed fsync may be retried: the file is removed and written afresh,
        // so no page the kernel gave up on is ever relied upon.
        f.sync_all().map_err(|e| WriteError::of("fsync of", &tmp, e))?;
        Ok(tmp)
    }

    /// Renames a staged file into place and syncs the directory.
    fn commit_file(&self, tmp: &Path, name: &str) -> Result<(), WriteError> {
        let path = path_of(&self.dir, name);
        fs::rename(tmp, &path).map_err(|e| WriteError::of("renaming to", &path, e))?;
        // The directory's fsync: fatal when it fails, as any fsync of what is kept.
        sync_dir(&self.dir).map_err(|e| WriteError::Fatal(e.to_string()))
    }

    fn compact(&mut self, records: &[Record]) -> Result<(), WriteError> {
        // The new generation's log holds no audit entries: `audit.log` must hold them first.
        self.sync_audit()?;
        let next = self.manifest.generation + 1;
        // A store from before identities gets one here, where every file of the generation
        // it starts is written anew; its audit chain, if begun, keeps the genesis it has.
        let id = match self.manifest.id {
            Some(id) => id,
            None => StoreId::generate().map_err(WriteError::Fatal)?,
        };
        let legacy_genesis = match self.manifest.id {
            Some(_) => self.manifest.legacy_genesis,
            None => self.manifest.audit_count > 0,
        };
        let mut buf = frame::header(FileKind::Checkpoint, next, Some(id));
        // The same encoding as a batch's, with numbers of its own: every schema first.
        let mut encoder = Encoder { binary: true, numbering: crate::bin::Numbering::default(), payload: Vec::new() };
        let encoded = encoder.encode(records).map_err(WriteError::Fatal)?;
        for (_, schema) in &encoded.new_schemas {
            frame::write_record(&mut buf, schema);
        }
        buf.extend_from_slice(&encoded.frames);
        let end = serde_json::to_vec(&CheckpointEnd { end: records.len() as u64 }).expect("serializes");
        frame::write_record(&mut buf, &end);
        let mut m = Manifest {
            generation: next,
            log_len: HEADER_LEN as u64,
            audit_count: self.manifest.audit_count,
            audit_head: self.manifest.audit_head.clone(),
            id: Some(id),
            legacy_genesis,
        };
        if m.audit_count == 0 {
            m.audit_head = m.genesis();
        }
        let (checkpoint, log) = (checkpoint_name(next), log_name(next));
        // Everything is written and synced before anything is renamed, and the manifest's
        // rename is the commit point of the new generation: until then nothing refers to the
        // new files, and a compaction that finds no space removes them all (opening would
        // too, but a long wait for space should not keep holding what they took).
        let staged = self.stage(&checkpoint, &buf).and_then(|c| {
            let l = self.stage(&log, &frame::header(FileKind::Log, next, Some(id)))?;
            let mtmp = self.stage("manifest", &m.encode())?;
            self.commit_file(&c, &checkpoint)?;
            self.commit_file(&l, &log)?;
            Ok(mtmp)
        });
        let mpath = path_of(&self.dir, "manifest");
        let committed =
            staged.and_then(|mtmp| fs::rename(&mtmp, &mpath).map_err(|e| WriteError::of("renaming to", &mpath, e)));
        if let Err(e) = committed {
            for name in [format!("{checkpoint}.tmp"), format!("{log}.tmp"), "manifest.tmp".into(), checkpoint, log] {
                let _ = fs::remove_file(path_of(&self.dir, &name));
            }
            return Err(e);
        }
        // Committed. The directory's fsync makes it durable: fatal when it fails, as any fsync
        // of what is kept.
        sync_dir(&self.dir).map_err(|e| WriteError::Fatal(e.to_string()))?;
        if self.durability == Durability::Fsync {
            // Each of the three: the file, then its directory.
            self.fsyncs.fetch_add(6, Ordering::Relaxed);
        }
        let old = self.manifest.generation;
        self.manifest = m;
        let lpath = path_of(&self.dir, &log_name(next));
        let fatal = |path: &Path, e: std::io::Error| WriteError::Fatal(format!("{}: {e}", path.display()));
        self.log = OpenOptions::new().write(true).open(&lpath).map_err(|e| fatal(&lpath, e))?;
        self.log.seek(SeekFrom::End(0)).map_err(|e| fatal(&lpath, e))?;
        self.defined.clear();
        self.manifest_file = OpenOptions::new().write(true).open(&mpath).map_err(|e| fatal(&mpath, e))?;
        let _ = fs::remove_file(path_of(&self.dir, &log_name(old)));
        let _ = fs::remove_file(path_of(&self.dir, &checkpoint_name(old)));
        Ok(())
    }
}

#[cfg(all(test, debug_assertions))]
mod invariants {
    use super::*;

    #[test]
    fn the_durable_watermark_moves_forward() {
        let s = Shared::new();
        s.set_durable(3);
        s.set_durable(3);
        s.set_durable(7);
        assert_eq!(*s.durable.lock().unwrap(), 7);
    }

    #[test]
    #[should_panic(expected = "the durable sequence went backwards")]
    fn a_watermark_going_backwards_is_caught() {
        let s = Shared::new();
        s.set_durable(7);
        s.set_durable(6);
    }
}

#[cfg(test)]
mod sizing {
    use super::*;

    #[test]
    fn counting_frames_reserves_for_the_records_and_never_for_damage() {
        let mut b = frame::header(FileKind::Checkpoint, 1, Some(StoreId([7; 16])));
        for i in 0..5 {
            frame::write_record(&mut b, format!("{{\"kind\":\"commit\",\"at\":{i}}}").as_bytes());
        }
        frame::write_record(&mut b, b"{\"end\":5}");
        assert_eq!(count_frames(&b, HEADER_LEN), 6);
        // Zeros, garbage, a cut file: a bounded guess; reading reports the damage.
        assert_eq!(count_frames(&vec![0; 1 << 20], HEADER_LEN), 0);
        assert!(count_frames(&vec![0xff; 1 << 20], HEADER_LEN) <= (1 << 20) / 32);
        assert_eq!(count_frames(&b[..b.len() - 3], HEADER_LEN), 6);
        assert_eq!(count_frames(&b[..10], HEADER_LEN), 0);
    }
}
