//! No process is left behind by an exec command: a timeout, a stopped watcher or an
//! abandoned periodic probe ends the command's whole process group, a shell's
//! children included.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use ved_adapters::exec::{run_command, ExecWatcher};
use ved_adapters::{Actuator, IntentRequest, Watcher};

mod common;

use common::{wait_gone as wait_until_gone, with_marker};

fn marker(tag: u32) -> String {
    common::marker(1000, tag)
}

/// Waits until some process carries `marker`.
fn wait_until_running(marker: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while with_marker(marker).is_empty() {
        assert!(Instant::now() < deadline, "the command never started its `sleep {marker}`");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `sh -c "sleep M; true"`: the shell stays as the sleep's parent, so killing only the
/// process Ved spawned would leave the sleep running.
fn shell_with_child(m: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), format!("sleep {m}; true")]
}

#[test]
fn a_timeout_kills_the_commands_whole_process_group() {
    let m = marker(1);
    let err = run_command(&shell_with_child(&m), b"", Duration::from_millis(300)).unwrap_err();
    assert_eq!(err.kind, ved_adapters::ActionErrorKind::Timeout);
    let err = err.to_string();
    assert!(err.contains("timed out after 300 ms") && err.contains("process group"), "{err}");
    wait_until_gone(&m, "after an exec timeout");
}

#[test]
fn the_exec_driver_kills_the_group_on_every_timed_out_attempt() {
    let m = marker(2);
    let d = ved_adapters::exec::ExecDriver { command: shell_with_child(&m), timeout: Duration::from_millis(200) };
    let intent = IntentRequest {
        id: "I/1/0".into(),
        instance: "I".into(),
        adapter: "A".into(),
        action: "Do".into(),
        args: vec![],
        fence: None,
    };
    for _ in 0..3 {
        let err = d.deliver(&intent).unwrap_err();
        assert_eq!(err.kind, ved_adapters::ActionErrorKind::Timeout);
        assert!(err.to_string().contains("timed out"), "{err}");
    }
    wait_until_gone(&m, "after three timed-out deliveries");
}

#[test]
fn a_background_process_holding_the_output_is_killed_at_the_timeout() {
    // The shell exits at once, but its background sleep keeps stdout open: the command's
    // output is not complete, so it counts against the timeout like the command itself.
    let m = marker(3);
    let cmd = vec!["sh".into(), "-c".into(), format!("sleep {m} & echo started")];
    let err = run_command(&cmd, b"", Duration::from_millis(300)).unwrap_err().to_string();
    assert!(err.contains("held its output open"), "{err}");
    wait_until_gone(&m, "after the shell exited with a child holding its output");
}

fn watcher(command: Vec<String>, interval: Option<Duration>) -> (Arc<AtomicBool>, std::thread::JoinHandle<()>) {
    let w = ExecWatcher {
        instance: "I".into(),
        command,
        interval,
        timeout: Duration::from_secs(60),
        source: "watch#1".into(),
    };
    let (tx, rx) = ved_adapters::sink();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let t = std::thread::spawn(move || {
        Box::new(w).run(tx, s, None);
        drop(rx);
    });
    (stop, t)
}

#[test]
fn a_stopped_long_running_watcher_ends_its_command_and_its_children() {
    let m = marker(4);
    // `trap '' TERM`: the shell ignores the polite signal, so only the SIGKILL after the grace ends it.
    let cmd = vec!["sh".into(), "-c".into(), format!("trap '' TERM; echo '{{\"a\": 1}}'; sleep {m}; true")];
    let (stop, t) = watcher(cmd, None);
    wait_until_running(&m);
    stop.store(true, Ordering::Relaxed);
    // Survivors are killed before the panic, so a broken stop fails here instead of hanging.
    wait_until_gone(&m, "after the long-running watcher stopped");
    t.join().unwrap();
}

#[test]
fn a_stopped_periodic_watcher_ends_a_probe_in_progress() {
    let m = marker(5);
    let (stop, t) = watcher(shell_with_child(&m), Some(Duration::from_millis(10)));
    wait_until_running(&m);
    stop.store(true, Ordering::Relaxed);
    wait_until_gone(&m, "after the periodic watcher stopped mid-probe");
    t.join().unwrap();
}
