//! A full file system: the writer takes back what it could not write, keeps it, waits, and
//! goes on by itself once space is freed (issue 13, defect 8). Runs on a tiny tmpfs, so it
//! needs root (`mount`); without it the test says so and passes nothing off as checked.

use std::path::Path;
use std::time::{Duration, Instant};
use ved_runtime::{InstanceSnapshot, Status};
use ved_store::codec::{JournalEntry, Record, SnapshotRecord};
use ved_store::{read_only, verify_audit, AuditDraft, Durability, Store};
use ved_testkit::{fill, Tmpfs};
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
        cause: "observe".into(),
        changes: vec![("workers".into(), slice.to_string())],
        ..JournalEntry::default()
    }))
}

fn draft(text: &str) -> AuditDraft {
    AuditDraft { at_ms: 5, wall_ms: Some(1_796_189_694_005), instance: "WorkerPool".into(), text: text.into() }
}

/// A tmpfs for one test, at a directory of its own under the temp dir.
fn tmpfs(tag: &str, size: &str) -> Option<Tmpfs> {
    Tmpfs::mount(std::env::temp_dir().join(format!("ved-store-{tag}-{}", std::process::id())), size)
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let limit = Duration::from_secs(120);
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

#[test]
fn a_write_that_finds_no_space_is_taken_back_kept_and_written_once_space_returns() {
    let Some(fs) = tmpfs("full", "1m") else { return };
    let dir = fs.0.join("store");
    let (mut s, _) = Store::open(&dir, Durability::Fsync, false, Box::new(|_| {})).unwrap();
    for i in 1..=3 {
        s.append(vec![snap("W0", i, i as i64), journal("W0", i)], vec![draft(&format!("step {i}"))]);
    }
    let before = s.append(Vec::new(), vec![draft("before the disk filled")]);
    s.wait_durable(before).unwrap();
    let (log, audit) = (dir.join("log-0"), dir.join("audit.log"));
    let (log_len, audit_len) = (size(&log), size(&audit));

    let ballast = fs.0.join("ballast");
    assert!(fill(&ballast) > 0);
    // Many instances in one batch, with an audit entry: more than any page already allocated holds.
    let records: Vec<Record> =
        (0..400).flat_map(|i| [snap(&format!("W{i}"), 10, i), journal(&format!("W{i}"), 10)]).collect();
    let stuck = s.append(records, vec![draft("written once space returns")]);
    wait_for("the writer to report that it has no space", || s.stalled().is_some());
    let why = s.stalled().unwrap();
    assert!(why.contains("No space left on device") && why.contains("store"), "{why}");
    assert!(s.failure().is_none(), "no space is not a failure: {:?}", s.failure());
    assert!(s.durable_seq() < stuck, "nothing is reported durable while it cannot be written");
    assert!(s.wait_durable(stuck).unwrap_err().contains("No space left on device"), "a waiter is told, not kept");
    // What could not be written whole was cut back: the files are as they were, nothing is
    // half-written for recovery to trip on, and a reader sees the committed store.
    assert_eq!((size(&log), size(&audit)), (log_len, audit_len), "the log and audit.log are cut back");
    let seen = read_only(&dir).unwrap();
    assert_eq!((seen.snapshots.len(), seen.audit.len()), (1, 4));
    // A compaction and a batch after it wait their turn, and a compaction that finds no
    // space leaves no file of the next generation behind.
    let compacted = s.compact((0..400).map(|i| snap(&format!("W{i}"), 10, i)).collect());
    let after = s.append(vec![snap("W0", 11, 99), journal("W0", 11)], vec![draft("after the compaction")]);
    wait_for("the writer to try again", || s.stalled().is_some() && s.durable_seq() < stuck);
    assert!(
        names(&dir).iter().all(|n| !n.ends_with(".tmp") && n != "checkpoint-1" && n != "log-1"),
        "{:?}",
        names(&dir)
    );

    // Space returns: everything queued is written, in order, without a restart.
    std::fs::remove_file(&ballast).unwrap();
    wait_for("the queued writes to become durable", || s.durable_seq() >= after);
    assert!(s.stalled().is_none() && s.failure().is_none());
    assert!(compacted > stuck);
    s.close().unwrap();

    let (s, rec) = Store::open(&dir, Durability::Fsync, false, Box::new(|_| {})).unwrap();
    assert_eq!(rec.generation, 1, "the compaction happened once space returned");
    assert_eq!(rec.snapshots.len(), 400);
    assert_eq!(rec.snapshots.get("W0").unwrap().snapshot.state, vec![Value::Int(99)]);
    let texts: Vec<&str> = rec.audit.iter().map(|e| e.text.as_str()).collect();
    assert_eq!(texts[3..], ["before the disk filled", "written once space returns", "after the compaction"]);
    assert!(rec.warnings.is_empty(), "{:?}", rec.warnings);
    drop(s);
    assert_eq!(verify_audit(&dir).unwrap().unwrap(), 6);
}
