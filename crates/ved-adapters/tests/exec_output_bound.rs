//! An exec command's output is bounded: 400 MB printed does not grow Ved by 400 MB.
//!
//! This file holds one test on purpose: it measures the peak resident memory of the
//! test process (`VmHWM`), which no other test may share.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use ved_adapters::exec::{run_bounded, run_command, ExecDriver, ExecWatcher, STDOUT_KEPT_BYTES};
use ved_adapters::ActionErrorKind;
use ved_adapters::{Actuator, Inbound, IntentRequest, Watcher};

/// Peak resident memory of this process so far, in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM in /proc/self/status");
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

const PRINTED: u64 = 400_000_000;
/// Far below what was printed, far above what the bounds need (1 MiB plus buffers and threads).
const ALLOWED_GROWTH: u64 = 64 << 20;

fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

#[test]
fn printing_400_mb_grows_ved_by_far_less() {
    let before = peak_rss();
    let huge = sh(&format!("head -c {PRINTED} /dev/zero"));
    let timeout = Duration::from_secs(120);

    // The driver: it succeeds (the exit status is the answer) without holding the output.
    let intent = IntentRequest {
        id: "I/1/0".into(),
        instance: "I".into(),
        adapter: "A".into(),
        action: "Do".into(),
        args: vec![],
        fence: None,
    };
    ExecDriver { command: huge.clone(), timeout }.deliver(&intent).unwrap();

    // The bounded run keeps the first MiB and counts the rest.
    let out = run_bounded(&huge, b"", timeout, None).unwrap();
    assert_eq!(out.stdout.len(), STDOUT_KEPT_BYTES);
    assert_eq!(out.stdout.len() as u64 + out.stdout_dropped, PRINTED);

    // Where the output is read as a document, a cut one is an error, not garbage.
    let err = run_command(&huge, b"", timeout).unwrap_err();
    assert_eq!(err.kind, ActionErrorKind::Failed);
    let err = err.to_string();
    assert!(err.contains(&format!("printed {PRINTED} bytes")) && err.contains("cut"), "{err}");

    // Stderr too: drained and cut, the reason says so.
    let err =
        run_command(&sh(&format!("head -c {PRINTED} /dev/zero | tr '\\0' x >&2; exit 3")), b"", timeout).unwrap_err();
    assert_eq!(err.kind, ActionErrorKind::Failed);
    let err = err.to_string();
    assert!(
        err.contains("exit status 3") && err.contains("stderr cut after 4 KiB") && err.len() < 8192,
        "{}",
        err.len()
    );

    // The periodic watcher: its first probe prints a 400 MB object, the next a small one. The
    // first reading to arrive is the small one: the cut object was never sent as a reading.
    let flag = std::env::temp_dir().join(format!("ved-output-bound-{}", std::process::id()));
    let _ = std::fs::remove_file(&flag);
    let probe = sh(&format!(
        "if [ -e {f} ]; then echo '{{\"a\": 1}}'; else touch {f}; printf '{{\"a\": \"'; head -c {PRINTED} /dev/zero | tr '\\0' x; printf '\"}}'; fi",
        f = flag.display()
    ));
    let (tx, rx) = ved_adapters::sink();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let w = ExecWatcher {
        instance: "I".into(),
        command: probe,
        interval: Some(Duration::from_millis(10)),
        timeout,
        source: "w".into(),
    };
    let t = std::thread::spawn(move || Box::new(w).run(tx, s, None));
    match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(Inbound::Observed(o)) => assert_eq!(o.fields["a"], 1, "the cut object was sent as a reading"),
        other => panic!("expected the small object, got {other:?}"),
    }
    stop.store(true, Ordering::Relaxed);
    t.join().unwrap();
    let _ = std::fs::remove_file(&flag);

    // The long-running watcher: one 400 MB line, then a good one, which still arrives.
    let (tx, rx) = ved_adapters::sink();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let long_line =
        sh(&format!("head -c {PRINTED} /dev/zero | tr '\\0' x; echo; echo '{{\"a\": 1}}'; sleep 600; true"));
    let w = ExecWatcher { instance: "I".into(), command: long_line, interval: None, timeout, source: "w".into() };
    let t = std::thread::spawn(move || Box::new(w).run(tx, s, None));
    match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(Inbound::Observed(o)) => assert_eq!(o.fields["a"], 1),
        other => panic!("expected the line after the long one, got {other:?}"),
    }
    stop.store(true, Ordering::Relaxed);
    t.join().unwrap();

    let growth = peak_rss().saturating_sub(before);
    assert!(growth < ALLOWED_GROWTH, "peak memory grew by {} MiB", growth >> 20);
}
