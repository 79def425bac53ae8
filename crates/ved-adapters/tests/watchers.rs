//! Watchers against real commands: a long-running one that prints a line per
//! observation, a periodic one that reports changes only, and the resync that
//! re-reports an unchanged reading unless it is turned off.

use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};
use ved_adapters::exec::ExecWatcher;
use ved_adapters::{Inbound, Observation, Watcher};

fn start(w: ExecWatcher, resync: Option<Duration>) -> (Receiver<Inbound>, Arc<AtomicBool>) {
    let (tx, rx) = ved_adapters::sink();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    std::thread::spawn(move || Box::new(w).run(tx, s, resync));
    (rx, stop)
}

fn next(rx: &Receiver<Inbound>, within: Duration) -> Option<Observation> {
    match rx.recv_timeout(within) {
        Ok(Inbound::Observed(o)) => Some(o),
        Ok(other) => panic!("a watcher reported {other:?}"),
        Err(_) => None,
    }
}

fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

fn tempfile(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("ved-watch-{tag}-{}", std::process::id()))
}

/// A periodic probe that prints the file's contents every 20 ms.
fn probe(file: &std::path::Path) -> ExecWatcher {
    ExecWatcher {
        instance: "DatabaseRouting".into(),
        command: sh(&format!("cat {}", file.display())),
        interval: Some(Duration::from_millis(20)),
        timeout: Duration::from_secs(5),
        source: "probe".into(),
    }
}

#[test]
fn a_long_running_command_reports_each_line_and_skips_junk() {
    let w = ExecWatcher {
        instance: "WorkerPool".into(),
        command: sh(r#"echo '{"workers": 3}'; echo 'not json'; echo '{"workers": 4}'; sleep 30"#),
        interval: None,
        timeout: Duration::from_secs(5),
        source: "watch#1".into(),
    };
    let (rx, stop) = start(w, None);
    let a = next(&rx, Duration::from_secs(120)).expect("the first line");
    let b = next(&rx, Duration::from_secs(120)).expect("the third line");
    assert_eq!(a.fields["workers"], json!(3));
    assert_eq!(b.fields["workers"], json!(4));
    assert_eq!((a.instance.as_str(), a.source.as_str()), ("WorkerPool", "watch#1"));
    assert!(a.version < b.version, "versions increase: {:?} {:?}", a.version, b.version);
    stop.store(true, Ordering::Relaxed);
}

#[test]
fn a_periodic_command_reports_changes_and_resyncs_an_unchanged_reading() {
    let file = tempfile("periodic");
    std::fs::write(&file, r#"{"primary_status": "healthy"}"#).unwrap();
    let w = probe(&file);
    let (rx, stop) = start(w, Some(Duration::from_millis(400)));
    let first = next(&rx, Duration::from_secs(120)).expect("a reading at start");
    assert_eq!(first.fields["primary_status"], "healthy");
    // Unchanged readings every 20 ms are not reported ...
    let t = Instant::now();
    let again = next(&rx, Duration::from_secs(120)).expect("the resync");
    assert!(t.elapsed() >= Duration::from_millis(300), "an unchanged reading was reported early");
    assert_eq!(again.fields, first.fields, "... until the resync re-reports it");
    // A change is reported at the next reading.
    std::fs::write(&file, r#"{"primary_status": "failed"}"#).unwrap();
    let changed = next(&rx, Duration::from_secs(120)).expect("the change");
    assert_eq!(changed.fields["primary_status"], "failed");
    stop.store(true, Ordering::Relaxed);
    let _ = std::fs::remove_file(&file);
}

#[test]
fn with_resync_off_an_unchanged_reading_is_reported_once() {
    let file = tempfile("noresync");
    std::fs::write(&file, r#"{"primary_status": "healthy"}"#).unwrap();
    let w = probe(&file);
    let (rx, stop) = start(w, None);
    assert!(next(&rx, Duration::from_secs(120)).is_some());
    assert!(next(&rx, Duration::from_millis(600)).is_none(), "resync is off: nothing more without a change");
    stop.store(true, Ordering::Relaxed);
    let _ = std::fs::remove_file(&file);
}

#[test]
fn the_process_watcher_resyncs_its_count() {
    let pool = ved_adapters::process::Pool::new(
        vec!["sleep".into(), format!("86401.{}", std::process::id())],
        Duration::from_secs(2),
    );
    let w = ved_adapters::process::ProcessWatcher {
        pool,
        instance: "WorkerPool".into(),
        field: "workers".into(),
        source: "pool".into(),
    };
    let (tx, rx) = ved_adapters::sink();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    std::thread::spawn(move || Box::new(w).run(tx, s, Some(Duration::from_millis(300))));
    let a = next(&rx, Duration::from_secs(120)).expect("the count at start");
    assert_eq!(a.fields["workers"], json!(0));
    let t = Instant::now();
    let b = next(&rx, Duration::from_secs(120)).expect("a resync");
    assert!(t.elapsed() >= Duration::from_millis(200));
    assert_eq!(b.fields["workers"], json!(0));
    stop.store(true, Ordering::Relaxed);
}
