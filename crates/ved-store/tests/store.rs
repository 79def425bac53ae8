//! The store's contract: what it keeps, and that damage is reported, never loaded.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use ved_runtime::{InstanceSnapshot, Status};
use ved_store::codec::{JournalEntry, Record, SnapshotRecord};
use ved_store::{read_only, verify_audit, AuditDraft, Durability, Store, StoreError};
use ved_vm::Value;

fn snap(instance: &str, slice: u64, workers: i64) -> Record {
    Record::snapshot(SnapshotRecord {
        schema: std::sync::Arc::new(ved_store::Schema {
            domain: "WorkerPool".into(),
            fields: vec![("workers".into(), "int".into())],
        }),
        snapshot: InstanceSnapshot {
            name: instance.into(),
            domain: 0,
            slice,
            ticks: slice,
            now_ms: 0,
            seed: 1,
            status: Status::Converging,
            state: vec![Value::Int(workers)],
            pending: Vec::new(),
            retry_attempts: Vec::new(),
            last_errors: Vec::new(),
            tick_cursor: None,
            tick_ran: false,
            ticks_since_input: 0,
            sources: Vec::new(),
            watched: Vec::new(),
        },
    })
}

fn journal(instance: &str, slice: u64) -> Record {
    Record::Journal(std::sync::Arc::new(JournalEntry {
        instance: instance.into(),
        slice,
        at_ms: 0,
        cause: "transition".into(),
        detail: Some("scale_up".into()),
        changes: vec![("workers".into(), slice.to_string())],
        held: Vec::new(),
        intents: Vec::new(),
        results: Vec::new(),
        ..JournalEntry::default()
    }))
}

#[test]
fn a_journal_entry_written_before_sources_and_batches_still_reads() {
    let old = r#"{"instance":"W","slice":3,"at_ms":0,"cause":"observe","changes":[["workers","2"]],"observed":[["workers",{"i":2}]]}"#;
    let e: JournalEntry = serde_json::from_str(old).unwrap();
    assert_eq!((e.slice, e.cause.as_str(), e.batch, e.quiet, e.source.as_deref()), (3, "observe", None, 0, None));
    // The new fields are left out when empty, so an old reader sees what it knows.
    let again = serde_json::to_string(&JournalEntry { batch: Some(3), ..e.clone() }).unwrap();
    assert!(again.contains(r#""batch":3"#) && !again.contains("quiet") && !again.contains("origin"), "{again}");
}

fn draft(text: &str) -> AuditDraft {
    AuditDraft { at_ms: 5, wall_ms: Some(1_796_189_694_005), instance: "WorkerPool".into(), text: text.into() }
}

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ved-store-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn open(dir: &Path) -> Result<(Store, ved_store::Recovered), StoreError> {
    Store::open(dir, Durability::Fsync, false, Box::new(|_| {}))
}

/// A store with a checkpoint (generation 1) and log records after it.
fn populated(tag: &str) -> PathBuf {
    let dir = tempdir(tag);
    let (mut s, _) = open(&dir).unwrap();
    for i in 1..=5 {
        s.append(vec![snap("WorkerPool", i, i as i64), journal("WorkerPool", i)], vec![draft(&format!("step {i}"))]);
    }
    let seq = s.compact(vec![snap("WorkerPool", 5, 5), journal("WorkerPool", 5)]);
    s.wait_durable(seq).unwrap();
    for i in 6..=8 {
        s.append(vec![snap("WorkerPool", i, i as i64), journal("WorkerPool", i)], vec![draft(&format!("step {i}"))]);
    }
    s.close().unwrap();
    dir
}

#[test]
fn a_reopened_store_has_the_latest_snapshot_journal_and_audit() {
    let dir = populated("roundtrip");
    let (s, rec) = open(&dir).unwrap();
    drop(s);
    let snap = &rec.snapshots["WorkerPool"];
    assert_eq!(snap.snapshot.slice, 8);
    assert_eq!(snap.snapshot.state, vec![Value::Int(8)]);
    let slices: Vec<u64> = rec.journals["WorkerPool"].iter().map(|e| e.slice).collect();
    assert_eq!(slices, [5, 6, 7, 8]);
    assert_eq!(rec.audit.len(), 8);
    assert_eq!(rec.audit[7].text, "step 8");
    assert!(rec.warnings.is_empty(), "{:?}", rec.warnings);
    assert_eq!(verify_audit(&dir).unwrap().unwrap(), 8);
}

#[test]
fn only_one_process_may_hold_a_store() {
    let dir = tempdir("lock");
    let (_s, _) = open(&dir).unwrap();
    assert!(matches!(open(&dir), Err(StoreError::Locked { .. })));
    // Readers need no lock.
    assert!(read_only(&dir).is_ok());
}

#[test]
fn a_lock_held_only_for_a_moment_is_waited_for() {
    // As when another thread forks while the store is closed and reopened: the child holds a
    // copy of the lock until it execs. Here a second open file holds it until a signal.
    let dir = tempdir("lock-moment");
    let (s, _) = open(&dir).unwrap();
    s.close().unwrap();
    let held = std::fs::File::open(dir.join("lock")).unwrap();
    held.try_lock().unwrap();
    let opener = std::thread::spawn({
        let dir = dir.clone();
        move || open(&dir).map(|_| ())
    });
    // The moment: the opener finds the lock taken, then free (well within its patience).
    std::thread::sleep(std::time::Duration::from_millis(300));
    drop(held);
    opener.join().unwrap().expect("opened once the moment passed");
    let _ = std::fs::remove_dir_all(&dir);
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap() != "lock")
        .collect();
    v.sort();
    v
}

#[test]
fn a_flipped_bit_anywhere_is_detected_and_nothing_is_loaded() {
    let pristine = populated("flip-src");
    let names: Vec<String> = files(&pristine).iter().map(|p| p.file_name().unwrap().to_string_lossy().into()).collect();
    assert_eq!(names, ["audit.log", "checkpoint-1", "log-1", "manifest"]);
    let dir = tempdir("flip");
    let mut tried = 0;
    for name in &names {
        let original = std::fs::read(pristine.join(name)).unwrap();
        // Every byte of small files; a spread of offsets in larger ones.
        let step = (original.len() / 97).max(1);
        for offset in (0..original.len()).step_by(step) {
            for bit in [0u8, 5] {
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::create_dir_all(&dir).unwrap();
                for n in &names {
                    std::fs::copy(pristine.join(n), dir.join(n)).unwrap();
                }
                let mut bytes = original.clone();
                bytes[offset] ^= 1 << bit;
                std::fs::write(dir.join(name), &bytes).unwrap();
                let r = read_only(&dir);
                assert!(r.is_err(), "{name}: flip at byte {offset} bit {bit} was read without complaint");
                match open(&dir) {
                    Err(StoreError::Corrupt { path, detail }) => {
                        assert!(path.ends_with(name), "{name}@{offset}: blamed {}", path.display());
                        assert!(!detail.is_empty());
                    }
                    Err(other) => panic!("{name}@{offset}: expected a corruption report, got {other}"),
                    Ok(_) => panic!("{name}: flip at byte {offset} bit {bit} was loaded"),
                }
                tried += 1;
            }
        }
    }
    assert!(tried > 400, "{tried}");
}

#[test]
fn truncated_files_are_detected() {
    let pristine = populated("trunc-src");
    for name in ["audit.log", "checkpoint-1", "log-1", "manifest"] {
        let len = std::fs::metadata(pristine.join(name)).unwrap().len();
        for cut in [1, len / 2, len - 1] {
            let dir = tempdir("trunc");
            std::fs::create_dir_all(&dir).unwrap();
            for f in files(&pristine) {
                std::fs::copy(&f, dir.join(f.file_name().unwrap())).unwrap();
            }
            let f = std::fs::OpenOptions::new().write(true).open(dir.join(name)).unwrap();
            f.set_len(cut).unwrap();
            if name == "audit.log" && cut == len - 1 {
                // The last entry is also in the log (written after the checkpoint): a cut there is
                // what a power loss leaves, and it is restored, not refused.
                let (_s, rec) = open(&dir).unwrap();
                assert!(rec.warnings.iter().any(|w| w.contains("restored 1 entry from the log")), "{:?}", rec.warnings);
                continue;
            }
            let err = open(&dir).err().unwrap_or_else(|| panic!("{name} cut to {cut} bytes was loaded"));
            assert!(matches!(err, StoreError::Corrupt { .. }), "{name}@{cut}: {err}");
        }
    }
}

#[test]
fn a_foreign_directory_or_file_is_refused() {
    let dir = tempdir("foreign");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("notes.txt"), "hello").unwrap();
    assert!(matches!(open(&dir), Err(StoreError::Foreign { .. })));
    let dir = populated("foreign2");
    std::fs::write(dir.join("manifest"), b"PK\x03\x04 a zip file, not a manifest").unwrap();
    let err = open(&dir).err().unwrap();
    assert!(err.to_string().contains("not a Ved store file"), "{err}");
}

#[test]
fn a_creation_cut_short_before_the_manifest_starts_over() {
    // A kill after the first log file was written but before the manifest: nothing was
    // committed, so readers see an empty store and the next open creates it afresh.
    let dir = tempdir("creation");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("lock"), b"").unwrap();
    std::fs::write(dir.join("log-0"), b"half a header").unwrap();
    std::fs::write(dir.join("manifest.tmp"), b"half a manifest").unwrap();
    let rec = read_only(&dir).unwrap();
    assert!(rec.snapshots.is_empty());
    let (mut s, _) = open(&dir).unwrap();
    let seq = s.append(vec![snap("WorkerPool", 1, 1)], Vec::new());
    s.wait_durable(seq).unwrap();
    drop(s);
    assert_eq!(read_only(&dir).unwrap().snapshots["WorkerPool"].snapshot.slice, 1);
}

#[test]
fn a_batch_without_its_commit_is_discarded_whole() {
    // A crash cut the last batch exactly between its records and its commit: every record of
    // it is intact, yet none may be applied, or a snapshot would survive without its journal.
    let dir = populated("uncommitted");
    let (mut s, _) = open(&dir).unwrap();
    let seq = s.append(vec![snap("WorkerPool", 9, 9), journal("WorkerPool", 9)], Vec::new());
    s.wait_durable(seq).unwrap();
    s.close().unwrap();
    let log = dir.join("log-1");
    let bytes = std::fs::read(&log).unwrap();
    let needle = b"{\"kind\":\"commit\"";
    let commit = bytes.windows(needle.len()).rposition(|w| w == needle).expect("a commit record");
    std::fs::OpenOptions::new().write(true).open(&log).unwrap().set_len((commit - 8) as u64).unwrap();
    // The manifest (rewritten after the batch) says it was committed; a real crash at this
    // point never wrote that manifest, so put the one from before the batch back.
    let (s, rec) = open_with_manifest_before(&dir, &bytes[..commit - 8]);
    drop(s);
    assert_eq!(rec.snapshots["WorkerPool"].snapshot.slice, 8, "the uncommitted snapshot was applied");
    assert_eq!(rec.journals["WorkerPool"].back().unwrap().slice, 8);
}

/// Reopens after putting back the manifest of a store whose log was `before_batch`.
fn open_with_manifest_before(dir: &Path, before_batch: &[u8]) -> (Store, ved_store::Recovered) {
    // The manifest before the batch differs only in its committed log length: the length of
    // the log up to the batch's last commit.
    let needle = b"{\"kind\":\"commit\"";
    let last = before_batch.windows(needle.len()).rposition(|w| w == needle).expect("an earlier commit");
    let end = last + before_batch[last..].iter().position(|b| *b == b'}').expect("closed") + 1;
    // The manifest: a 40-byte header, the log length, the audit count and head, the genesis
    // byte, 3 reserved, a CRC (docs/store.md).
    let mut m = std::fs::read(dir.join("manifest")).unwrap();
    assert_eq!(m.len(), 128);
    m[40..48].copy_from_slice(&(end as u64).to_le_bytes());
    let crc = crc32fast::hash(&m[40..124]);
    m[124..128].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(dir.join("manifest"), &m).unwrap();
    open(dir).unwrap()
}

#[test]
fn an_unfinished_write_after_the_committed_end_is_discarded_with_a_warning() {
    let dir = populated("torn");
    // A batch that a crash cut short: half a record past the committed length.
    let mut log = std::fs::OpenOptions::new().append(true).open(dir.join("log-1")).unwrap();
    std::io::Write::write_all(&mut log, &[200, 0, 0, 0, 1, 2, 3, 4, b'{']).unwrap();
    drop(log);
    let (s, rec) = open(&dir).unwrap();
    drop(s);
    assert_eq!(rec.snapshots["WorkerPool"].snapshot.slice, 8);
    assert!(rec.warnings.iter().any(|w| w.contains("unfinished write")), "{:?}", rec.warnings);
    // The tail is gone: a second open is clean.
    let (_s, rec) = open(&dir).unwrap();
    assert!(rec.warnings.is_empty(), "{:?}", rec.warnings);
}

#[test]
fn recover_keeps_the_last_good_snapshot_and_sets_the_damage_aside() {
    let dir = populated("recover");
    let mut bytes = std::fs::read(dir.join("log-1")).unwrap();
    bytes[24 + 20] ^= 0xff; // inside the first record after the checkpoint: the snapshot of slice 6
    std::fs::write(dir.join("log-1"), &bytes).unwrap();
    assert!(matches!(open(&dir), Err(StoreError::Corrupt { .. })));
    let (s, rec) = Store::open(&dir, Durability::Fsync, true, Box::new(|_| {})).unwrap();
    drop(s);
    assert_eq!(rec.snapshots["WorkerPool"].snapshot.slice, 5, "the last good snapshot is the checkpoint's");
    assert!(rec.warnings.iter().any(|w| w.contains("checksum mismatch")), "{:?}", rec.warnings);
    assert!(dir.join("log-1.damaged").exists());
    // Recovered and repaired: a normal open works again.
    assert!(open(&dir).is_ok());
}

fn edit_audit(dir: &Path, f: impl FnOnce(&mut Vec<String>)) {
    let text = std::fs::read_to_string(dir.join("audit.log")).unwrap();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    f(&mut lines);
    std::fs::write(dir.join("audit.log"), lines.join("\n") + "\n").unwrap();
}

#[test]
fn audit_verify_names_the_first_edited_removed_or_reordered_entry() {
    let dir = populated("audit-edit");
    edit_audit(&dir, |l| l[2] = l[2].replace("step 3", "step 9"));
    let e = verify_audit(&dir).unwrap().unwrap_err();
    assert_eq!(e.line, 3);
    assert!(e.reason.contains("edited"), "{e}");

    let dir = populated("audit-remove");
    edit_audit(&dir, |l| {
        l.remove(4);
    });
    let e = verify_audit(&dir).unwrap().unwrap_err();
    assert_eq!(e.line, 5);
    assert!(e.reason.contains("removed or reordered"), "{e}");

    let dir = populated("audit-reorder");
    edit_audit(&dir, |l| l.swap(1, 2));
    let e = verify_audit(&dir).unwrap().unwrap_err();
    assert_eq!(e.line, 2);

    let dir = populated("audit-tail");
    edit_audit(&dir, |l| {
        l.pop();
    });
    let e = verify_audit(&dir).unwrap().unwrap_err();
    assert!(e.reason.contains("removed from the end"), "{e}");
}

#[test]
fn batches_queued_while_a_flush_is_under_way_share_one_fsync() {
    // The durable hook blocks the writer after its first batch, standing in for a
    // slow disk. Meanwhile the caller keeps appending without waiting.
    let dir = tempdir("group");
    let (gate_tx, gate_rx) = mpsc::channel::<()>();
    let (seen_tx, seen_rx) = mpsc::channel::<u64>();
    let gate = std::sync::Mutex::new(gate_rx);
    let hook = Box::new(move |seq| {
        seen_tx.send(seq).unwrap();
        let _ = gate.lock().unwrap().recv();
    });
    let (mut s, _) = Store::open(&dir, Durability::Fsync, false, hook).unwrap();
    let first = s.append(vec![snap("WorkerPool", 1, 1)], vec![]);
    assert_eq!(seen_rx.recv().unwrap(), first);
    // The writer is stuck in its hook until the gate opens below; appending does not wait for
    // it (if it did, this loop would never end).
    let mut last = 0;
    for i in 2..=500 {
        last = s.append(vec![snap("WorkerPool", i, i as i64)], vec![]);
    }
    assert!(s.durable_seq() < last, "nothing after the first batch can be durable yet");
    // Release the writer: everything queued goes out in far fewer flushes than batches.
    let mut flushes = 0;
    loop {
        gate_tx.send(()).unwrap();
        let seq = seen_rx.recv().unwrap();
        flushes += 1;
        if seq == last {
            break;
        }
    }
    gate_tx.send(()).unwrap();
    assert!(flushes <= 3, "499 batches took {flushes} flushes");
    drop(s);
    let rec = read_only(&dir).unwrap();
    assert_eq!(rec.snapshots["WorkerPool"].snapshot.slice, 500);
}

/// A domain other than `snap`'s, for logs that hold two schemas.
fn other_snap(instance: &str, slice: u64) -> Record {
    let Record::Snapshot(s) = snap(instance, slice, 1) else { unreachable!() };
    let mut s = std::sync::Arc::unwrap_or_clone(s);
    s.schema = std::sync::Arc::new(ved_store::Schema {
        domain: "SecurityPolicy".into(),
        fields: vec![("ports".into(), "set<int>".into())],
    });
    Record::snapshot(s)
}

fn latest(rec: &ved_store::Recovered) -> Vec<(String, u64, String)> {
    rec.snapshots.iter().map(|(n, s)| (n.clone(), s.snapshot.slice, s.domain().to_string())).collect()
}

/// A header as format 1 wrote it (same layout, version 1, its own checksum).
fn header_v1(kind: u8, generation: u64) -> Vec<u8> {
    // Without an identity `header` writes version 2's 24 bytes.
    let mut h = ved_store::frame::header(ved_store::frame::FileKind::Log, generation, None);
    h[8..10].copy_from_slice(&1u16.to_le_bytes());
    h[10] = kind;
    let crc = crc32fast::hash(&h[..20]);
    h[20..24].copy_from_slice(&crc.to_le_bytes());
    h
}

#[test]
fn a_format_1_store_is_read_and_rewritten_in_the_current_format_with_an_id_at_its_next_compaction() {
    let dir = tempdir("format1");
    std::fs::create_dir_all(&dir).unwrap();
    // A format-1 store, as an older ved left it: JSON records in log-0.
    let mut log = header_v1(3, 0);
    for r in [snap("a", 1, 3), journal("a", 1), Record::Commit { at: 24 }] {
        ved_store::frame::write_record(&mut log, &serde_json::to_vec(&r).unwrap());
    }
    std::fs::write(dir.join("log-0"), &log).unwrap();
    let mut manifest = header_v1(1, 0);
    manifest.extend_from_slice(&(log.len() as u64).to_le_bytes());
    manifest.extend_from_slice(&0u64.to_le_bytes());
    manifest.extend_from_slice(&[b'0'; 64]);
    let crc = crc32fast::hash(&manifest[24..]);
    manifest.extend_from_slice(&crc.to_le_bytes());
    std::fs::write(dir.join("manifest"), &manifest).unwrap();

    let (mut s, rec) = open(&dir).unwrap();
    assert_eq!(latest(&rec), [("a".to_string(), 1, "WorkerPool".to_string())]);
    assert_eq!(rec.store_id, None, "an older store has no identity until its next compaction");
    // Appended to the format-1 log: still JSON there, so the file stays one format.
    let seq = s.append(vec![snap("a", 2, 4)], Vec::new());
    s.wait_durable(seq).unwrap();
    let log = std::fs::read(dir.join("log-0")).unwrap();
    assert_eq!(ved_store::frame::version(&log), 1);
    assert!(log.windows(8).filter(|w| w == b"\"fields\"").count() == 2, "both snapshots in JSON");
    let seq = s.compact(vec![snap("a", 2, 4), journal("a", 1)]);
    s.wait_durable(seq).unwrap();
    s.close().unwrap();
    let cp = std::fs::read(dir.join("checkpoint-1")).unwrap();
    assert_eq!(ved_store::frame::version(&cp), ved_store::frame::VERSION);
    assert!(!cp.windows(8).any(|w| w == b"\"fields\""), "the checkpoint's snapshot is binary");
    // The compaction gave the store its identity: the manifest and both new files carry it.
    let id = |name: &str, kind| {
        let bytes = std::fs::read(dir.join(name)).unwrap();
        ved_store::frame::read_header(&bytes, kind).unwrap().id.expect("an identity")
    };
    use ved_store::frame::FileKind;
    let store = id("manifest", FileKind::Manifest);
    assert_eq!((id("checkpoint-1", FileKind::Checkpoint), id("log-1", FileKind::Log)), (store, store));
    let (_s, rec) = open(&dir).unwrap();
    assert_eq!(rec.store_id, Some(store));
    assert_eq!(latest(&rec), [("a".to_string(), 2, "WorkerPool".to_string())]);
    assert_eq!(rec.snapshots["a"].snapshot.state, vec![Value::Int(4)]);
    assert_eq!(rec.journals["a"].len(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_schema_is_written_once_per_file_and_shared_in_memory() {
    let dir = tempdir("schema-once");
    let (mut s, _) = open(&dir).unwrap();
    let records: Vec<Record> = (0..5000).map(|i| snap(&format!("w{i}"), 1, i)).collect();
    let seq = s.compact(records.clone());
    s.wait_durable(seq).unwrap();
    s.close().unwrap();
    let cp = std::fs::read(dir.join("checkpoint-1")).unwrap();
    assert_eq!(cp.windows(10).filter(|w| w == b"WorkerPool").count(), 1);
    // 5,000 records: decoded on every core, in order, to what was written.
    let (_s, rec) = open(&dir).unwrap();
    assert_eq!(rec.snapshots.len(), 5000);
    let first = rec.snapshots["w0"].schema.clone();
    for (i, r) in records.iter().enumerate() {
        let Record::Snapshot(w) = r else { unreachable!() };
        let got = &rec.snapshots[&format!("w{i}")];
        assert_eq!(got, &**w);
        assert!(std::sync::Arc::ptr_eq(&got.schema, &first), "one schema in memory for the domain");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_writer_reopened_on_a_log_numbers_its_schemas_afresh_and_both_read_back() {
    let dir = tempdir("renumber");
    let (mut s, _) = open(&dir).unwrap();
    s.append(vec![snap("pool", 1, 5)], Vec::new());
    s.close().unwrap();
    // A second writer on the same log: its first schema takes number 0 again, for
    // another domain; records before keep the meaning number 0 had then.
    let (mut s, _) = open(&dir).unwrap();
    s.append(vec![other_snap("fw", 1)], Vec::new());
    s.append(vec![snap("pool", 2, 6)], Vec::new());
    s.close().unwrap();
    let (_s, rec) = open(&dir).unwrap();
    assert_eq!(
        latest(&rec),
        [("fw".to_string(), 1, "SecurityPolicy".to_string()), ("pool".to_string(), 2, "WorkerPool".to_string())]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_checkpoint_that_defines_a_schema_twice_is_refused() {
    let dir = tempdir("schema-twice");
    let (mut s, _) = open(&dir).unwrap();
    let seq = s.compact(vec![snap("a", 1, 1)]);
    s.wait_durable(seq).unwrap();
    s.close().unwrap();
    // Rebuild checkpoint-1 with its schema record repeated (checksums and trailer right).
    let cp = std::fs::read(dir.join("checkpoint-1")).unwrap();
    let mut frames = Vec::new();
    let mut at = ved_store::frame::HEADER_LEN;
    while at < cp.len() {
        let (p, next) = ved_store::frame::read_record(&cp, at).unwrap();
        frames.push(p.to_vec());
        at = next;
    }
    let mut out = cp[..ved_store::frame::HEADER_LEN].to_vec();
    for p in [&frames[0], &frames[0], &frames[1], &frames[2]] {
        ved_store::frame::write_record(&mut out, p);
    }
    std::fs::write(dir.join("checkpoint-1"), &out).unwrap();
    let err = open(&dir).err().expect("refused").to_string();
    assert!(err.contains("schema 0 is defined twice"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_audited_batch_is_durable_in_one_fsync() {
    let dir = tempdir("one-fsync");
    let (mut s, _) = open(&dir).unwrap();
    let before = s.fsyncs();
    let seq = s.append(vec![snap("WorkerPool", 1, 1), journal("WorkerPool", 1)], vec![draft("drifted")]);
    s.wait_durable(seq).unwrap();
    assert_eq!(s.fsyncs() - before, 1, "the log's fsync covers the audit entry too");
    let seq = s.append(vec![snap("WorkerPool", 2, 2)], Vec::new());
    s.wait_durable(seq).unwrap();
    assert_eq!(s.fsyncs() - before, 2);
    s.close().unwrap();
    assert_eq!(verify_audit(&dir).unwrap().unwrap(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn audit_entries_that_audit_log_lost_are_restored_from_the_log() {
    // As after a power loss: the log's batches are durable, audit.log's last pages were not.
    let dir = populated("audit-lost");
    edit_audit(&dir, |l| {
        l.truncate(6);
    });
    let e = verify_audit(&dir).unwrap().unwrap_err();
    assert!(e.reason.contains("removed from the end") && e.reason.contains("restores them"), "{e}");
    // Readers see every entry at once; a start writes them back, synced, and says so.
    assert_eq!(read_only(&dir).unwrap().audit.len(), 8);
    let (s, rec) = open(&dir).unwrap();
    assert_eq!(rec.audit.len(), 8);
    assert!(rec.warnings.iter().any(|w| w.contains("restored 2 entries from the log")), "{:?}", rec.warnings);
    drop(s);
    assert_eq!(verify_audit(&dir).unwrap().unwrap(), 8);
    // An entry the log holds can restore only what continues the chain: an edited one is still caught.
    edit_audit(&dir, |l| l[6] = l[6].replace("step 7", "step 0"));
    let e = verify_audit(&dir).unwrap().unwrap_err();
    assert!(e.reason.contains("edited"), "{e}");
    assert!(open(&dir).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn files_of_earlier_generations_are_removed_when_a_store_opens() {
    // As a crash between a compaction's commit and its cleanup leaves them.
    let dir = populated("stale");
    for name in ["checkpoint-0", "log-0", "log-1.tmp", "checkpoint-2.tmp", "manifest.tmp"] {
        std::fs::write(dir.join(name), b"left over").unwrap();
    }
    std::fs::write(dir.join("log-0.damaged"), b"set aside").unwrap();
    let (s, rec) = open(&dir).unwrap();
    drop(s);
    assert_eq!(rec.snapshots["WorkerPool"].snapshot.slice, 8);
    assert!(rec.warnings.iter().any(|w| w.contains("removed files of earlier generations")), "{:?}", rec.warnings);
    let mut left: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    left.sort();
    assert_eq!(left, ["audit.log", "checkpoint-1", "lock", "log-0.damaged", "log-1", "manifest"]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Copies every file of `from` (but its lock) into a new directory `tag`, then `name` from
/// `other` over it.
fn with_file_of(tag: &str, from: &Path, other: &Path, name: &str) -> PathBuf {
    let dir = tempdir(tag);
    std::fs::create_dir_all(&dir).unwrap();
    for f in files(from) {
        std::fs::copy(&f, dir.join(f.file_name().unwrap())).unwrap();
    }
    std::fs::copy(other.join(name), dir.join(name)).unwrap();
    dir
}

#[test]
fn a_file_copied_in_from_another_store_is_refused_naming_it() {
    // Two stores with the same history: every file of one is intact, checksum for checksum,
    // and the audit entries are the same ones; only the identity tells them apart.
    let a = populated("ident-a");
    let b = populated("ident-b");
    let (ida, idb) = (read_only(&a).unwrap().store_id.unwrap(), read_only(&b).unwrap().store_id.unwrap());
    assert_ne!(ida, idb, "each store draws its own identity");
    for name in ["checkpoint-1", "log-1", "audit.log"] {
        let dir = with_file_of(&format!("ident-{name}"), &a, &b, name);
        let refused = |what: &str, e: StoreError| match e {
            StoreError::Corrupt { path, detail } => {
                assert!(path.ends_with(name), "{what} {name}: blamed {}", path.display());
                assert!(detail.contains("another store") && detail.contains(&format!("id {ida}")), "{what}: {detail}");
                if name != "audit.log" {
                    // The header says whose the file is: both identities are named.
                    assert!(detail.contains("header (byte 0)") && detail.contains(&format!("id {idb}")), "{detail}");
                } else {
                    assert!(detail.contains("line 1"), "{detail}");
                }
            }
            other => panic!("{what} {name}: expected a corruption report, got {other}"),
        };
        refused("open", open(&dir).err().unwrap_or_else(|| panic!("{name} of another store was loaded")));
        refused("read_only", read_only(&dir).err().unwrap_or_else(|| panic!("{name} of another store was read")));
        match verify_audit(&dir) {
            Err(e) => refused("verify_audit", e),
            Ok(Err(e)) => {
                assert_eq!((name, e.line), ("audit.log", 1), "{e}");
                assert!(e.reason.contains("another store") && e.reason.contains(&format!("id {ida}")), "{e}");
            }
            Ok(Ok(n)) => panic!("audit verify passed with {name} of another store ({n} entries)"),
        }
        // Nothing was changed by refusing: every file is as it was.
        assert_eq!(std::fs::read(dir.join(name)).unwrap(), std::fs::read(b.join(name)).unwrap());

        // `--recover` treats it as a damaged file: set aside, none of it loaded, the rest kept.
        let (s, rec) = Store::open(&dir, Durability::Fsync, true, Box::new(|_| {})).unwrap();
        drop(s);
        assert!(rec.warnings.iter().any(|w| w.contains(name) && w.contains("another store")), "{:?}", rec.warnings);
        assert!(dir.join(Path::new(name).with_extension("damaged")).exists(), "{name} set aside");
        let slice = rec.snapshots["WorkerPool"].snapshot.slice;
        match name {
            // The log after it still holds slices 6 to 8.
            "checkpoint-1" => assert_eq!(slice, 8),
            // The checkpoint's state stands; the log starts again, empty, as this store's.
            "log-1" => assert_eq!(slice, 5),
            _ => assert_eq!(slice, 8),
        }
        // Repaired: a strict open works again, before any compaction, and keeps what it had.
        // (After `audit.log` was set aside, the log still holds entries of the old chain: they
        // are not restored onto the new one.)
        let (s, again) = open(&dir).unwrap();
        assert_eq!(again.snapshots["WorkerPool"].snapshot.slice, slice);
        assert_eq!(again.store_id, Some(ida));
        drop(s);
        verify_audit(&dir).unwrap().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
    let _ = std::fs::remove_dir_all(&a);
    let _ = std::fs::remove_dir_all(&b);
}

#[test]
fn a_store_from_before_identities_keeps_its_audit_chain_and_refuses_a_newer_stores_file() {
    // A format-2 store with an audit chain from the constant genesis, as an older ved left it.
    use ved_store::audit::GENESIS;
    use ved_store::frame::{header, write_record, FileKind};
    let dir = tempdir("pre-ident");
    std::fs::create_dir_all(&dir).unwrap();
    let e1 = ved_store::AuditEntry::new(1, GENESIS, &draft("old 1"));
    let e2 = ved_store::AuditEntry::new(2, &e1.hash, &draft("old 2"));
    let mut log = header(FileKind::Log, 0, None);
    for r in [snap("a", 1, 3), Record::Audit(Box::new(e1.clone())), Record::Audit(Box::new(e2.clone()))] {
        write_record(&mut log, &serde_json::to_vec(&r).unwrap());
    }
    write_record(&mut log, &serde_json::to_vec(&Record::Commit { at: 24 }).unwrap());
    std::fs::write(dir.join("log-0"), &log).unwrap();
    std::fs::write(dir.join("audit.log"), e1.to_line() + &e2.to_line()).unwrap();
    let mut manifest = header(FileKind::Manifest, 0, None);
    manifest.extend_from_slice(&(log.len() as u64).to_le_bytes());
    manifest.extend_from_slice(&2u64.to_le_bytes());
    manifest.extend_from_slice(e2.hash.as_bytes());
    let crc = crc32fast::hash(&manifest[24..]);
    manifest.extend_from_slice(&crc.to_le_bytes());
    std::fs::write(dir.join("manifest"), &manifest).unwrap();
    assert_eq!(verify_audit(&dir).unwrap().unwrap(), 2);

    // A file of a store with an identity cannot be one of its own.
    let newer = populated("pre-ident-newer");
    std::fs::copy(newer.join("log-1"), dir.join("log-1")).unwrap();
    std::fs::rename(dir.join("log-0"), dir.join("log-0.mine")).unwrap();
    std::fs::copy(dir.join("log-1"), dir.join("log-0")).unwrap();
    let err = read_only(&dir).expect_err("refused").to_string();
    assert!(err.contains("another store") && err.contains("no id"), "{err}");
    std::fs::rename(dir.join("log-0.mine"), dir.join("log-0")).unwrap();
    std::fs::remove_file(dir.join("log-1")).unwrap();

    // It runs, compacts (and so gets its identity), and its chain goes on from the old genesis.
    let (mut s, rec) = open(&dir).unwrap();
    assert_eq!((rec.store_id, rec.audit.len()), (None, 2));
    s.append(vec![snap("a", 2, 4)], vec![draft("new 3")]);
    let seq = s.compact(vec![snap("a", 2, 4)]);
    s.wait_durable(seq).unwrap();
    s.append(vec![snap("a", 3, 5)], vec![draft("new 4")]);
    s.close().unwrap();
    let (s, rec) = open(&dir).unwrap();
    drop(s);
    assert!(rec.store_id.is_some());
    assert_eq!(rec.audit.iter().map(|e| e.text.as_str()).collect::<Vec<_>>(), ["old 1", "old 2", "new 3", "new 4"]);
    assert_eq!(rec.audit[0].prev, GENESIS);
    assert_eq!(verify_audit(&dir).unwrap().unwrap(), 4);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&newer);
}

#[test]
fn a_new_stores_audit_chain_starts_from_a_genesis_of_its_own() {
    let a = populated("genesis-a");
    let b = populated("genesis-b");
    let first = |d: &Path| read_only(d).unwrap().audit[0].clone();
    let (fa, fb) = (first(&a), first(&b));
    assert_eq!((fa.text.as_str(), fa.at_ms), (fb.text.as_str(), fb.at_ms), "the same event");
    assert_ne!(fa.prev, fb.prev, "two stores' chains never start alike");
    assert_ne!(fa.prev, ved_store::audit::GENESIS);
    let _ = std::fs::remove_dir_all(&a);
    let _ = std::fs::remove_dir_all(&b);
}

#[test]
fn a_manifest_of_another_store_is_named_and_recover_sets_nothing_aside() {
    // The checkpoint and the log agree with each other, not with the manifest: the manifest
    // is the foreign file, and recovering must not set the store's own files aside for it.
    let a = populated("ident-manifest-a");
    let b = populated("ident-manifest-b");
    let dir = with_file_of("ident-manifest", &a, &b, "manifest");
    for e in [open(&dir).err(), read_only(&dir).err(), verify_audit(&dir).err()] {
        match e {
            Some(StoreError::Corrupt { path, detail }) => {
                assert!(path.ends_with("manifest"), "blamed {}", path.display());
                assert!(detail.contains("the manifest belongs to another store"), "{detail}");
            }
            other => panic!("expected the manifest to be named, got {other:?}"),
        }
    }
    assert!(Store::open(&dir, Durability::Fsync, true, Box::new(|_| {})).is_err());
    assert_eq!(files(&dir).len(), 4, "nothing set aside: {:?}", files(&dir));
    for name in ["checkpoint-1", "log-1", "audit.log"] {
        assert_eq!(std::fs::read(dir.join(name)).unwrap(), std::fs::read(a.join(name)).unwrap(), "{name}");
    }
    for d in [a, b, dir] {
        let _ = std::fs::remove_dir_all(d);
    }
}
