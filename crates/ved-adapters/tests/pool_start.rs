//! The process pool's start check: a started process that does not keep the pool's
//! command line is not a member, its `Start` fails with a reason, and nothing it
//! started stays behind.

use std::time::Duration;
use ved_adapters::process::{Pool, ProcessDriver};
use ved_adapters::{Actuator, IntentRequest};

mod common;

use common::{kill_marked as cleanup, wait_gone, wait_until, with_marker};

fn marker(tag: u32) -> String {
    common::marker(3000, tag)
}

/// Kills whatever carries the marker when dropped, so a failed test leaves nothing running.
struct Cleanup<'a>(&'a str);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        cleanup(self.0);
    }
}

fn intent(action: &str, n: i64) -> IntentRequest {
    IntentRequest {
        id: "WorkerPool/1/0".into(),
        instance: "WorkerPool".into(),
        adapter: "Workers".into(),
        action: action.into(),
        args: vec![n.into()],
        fence: None,
    }
}

fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

#[test]
fn a_command_that_execs_into_another_fails_its_start_and_leaves_nothing() {
    let m = marker(1);
    let _cleanup = Cleanup(&m);
    let d = ProcessDriver { pool: Pool::new(sh(&format!("exec sleep {m}")), Duration::from_millis(300)) };
    for attempt in 0..3 {
        let err = d.deliver(&intent("Start", 1)).unwrap_err().to_string();
        assert!(err.contains(&format!("for `sh -c exec sleep {m}`, but after 300 ms it does not have that command line (it now runs `sleep {m}`)")), "{err}");
        assert!(err.contains("exact command line") && err.contains("avoid `exec`"), "{err}");
        assert!(with_marker(&m).is_empty(), "attempt {attempt} left its process running");
    }
    assert_eq!(d.pool.count(), 0);
    cleanup(&m);
}

#[test]
fn a_command_that_keeps_its_line_starts_and_stop_ends_its_children_too() {
    let m = marker(2);
    let _cleanup = Cleanup(&m);
    // The shell stays the member's process and the sleep its child.
    let d = ProcessDriver { pool: Pool::new(sh(&format!("sleep {m}; true")), Duration::from_millis(200)) };
    d.deliver(&intent("Start", 1)).unwrap();
    // Proven now: a later start only waits for its member to appear.
    d.deliver(&intent("Start", 2)).unwrap();
    assert_eq!(d.pool.count(), 3);
    wait_until("three sleeps (the shells carry the marker inside a longer argument)", || with_marker(&m).len() == 3);
    d.deliver(&intent("Stop", 3)).unwrap();
    assert_eq!(d.pool.count(), 0);
    wait_gone(&m, "the members' own children to go with them");
}

#[test]
fn a_member_that_forks_a_copy_of_itself_counts_once() {
    let m = marker(4);
    let _cleanup = Cleanup(&m);
    // The subshell is a fork of the member that keeps its command line for as long as the
    // sleep runs (as every forking member does for a moment, between fork and exec).
    let d =
        ProcessDriver { pool: Pool::new(sh(&format!("(sleep {m}; true) & wait; true")), Duration::from_millis(200)) };
    d.deliver(&intent("Start", 1)).unwrap();
    wait_until("the sleep in the member's subshell", || with_marker(&m).len() == 1);
    assert_eq!(d.pool.count(), 1, "the subshell is not a second member");
    d.deliver(&intent("Stop", 2)).unwrap();
    assert_eq!(d.pool.count(), 0);
    wait_gone(&m, "the member's subshell and sleep to go with it");
}

#[test]
fn a_member_that_execs_away_later_fails_the_next_start_and_is_killed() {
    let m = marker(3);
    let _cleanup = Cleanup(&m);
    let flag = std::env::temp_dir().join(format!("ved-pool-escape-{}", std::process::id()));
    let _ = std::fs::remove_file(&flag);
    // Keeps the command line until the flag appears, then runs another program in its place.
    let script = format!("while [ ! -e {f} ]; do sleep 0.01; done; exec sleep {m}", f = flag.display());
    let d = ProcessDriver { pool: Pool::new(sh(&script), Duration::from_millis(100)) };
    d.deliver(&intent("Start", 1)).unwrap();
    std::fs::write(&flag, "").unwrap();
    wait_until("the member to exec into `sleep`", || !with_marker(&m).is_empty());
    let err = d.deliver(&intent("Start", 1)).unwrap_err().to_string();
    assert!(err.contains(&format!("now runs `sleep {m}`, so it is not a member and was killed")), "{err}");
    assert!(with_marker(&m).is_empty(), "the escaped process was not killed");
    let _ = std::fs::remove_file(&flag);
    cleanup(&m);
}

#[test]
fn a_command_that_exits_at_once_fails_its_start_with_its_status() {
    let d = ProcessDriver { pool: Pool::new(sh("exit 3"), Duration::from_secs(5)) };
    let err = d.deliver(&intent("Start", 1)).unwrap_err().to_string();
    assert!(err.contains("exited within 5 s") && err.contains("exit status: 3"), "{err}");
    // Starting none is done at once, whatever the pool's state.
    d.deliver(&intent("Start", 0)).unwrap();
    assert_eq!(d.pool.count(), 0);
}
