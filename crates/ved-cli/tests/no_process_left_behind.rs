//! No process is left behind, through the real `ved` daemon: a process pool whose
//! command execs into another command line fails its starts, backs off and ends
//! `degraded` instead of starting processes for ever; watchers' commands end with
//! a clean SIGTERM of the daemon; `start_grace_ms` is checked like every key.

mod common;

use common::{root, tempdir, wait_for, Daemon};
use std::time::Duration;

use common::processes_with_arg as with_marker;

/// Waits until no process carries `marker`; otherwise kills the survivors and fails.
fn wait_gone(marker: &str, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !with_marker(marker).is_empty() {
        if std::time::Instant::now() >= deadline {
            let left = with_marker(marker);
            for pid in &left {
                let _ = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            }
            panic!("{what}: processes left behind: {left:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The exit status, if `child` exits within `limit`.
fn wait_for_exit(child: &mut std::process::Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

#[test]
fn a_pool_whose_command_execs_away_ends_degraded_with_a_bounded_number_of_starts() {
    let dir = tempdir("exec-away");
    let marker = format!("86402.{}", std::process::id());
    let starts = dir.join("starts");
    // Every start leaves a line in `starts`, then the shell runs another program in its place:
    // no process ever keeps the pool's command line.
    let script = format!("echo started >> {}; exec sleep {marker}", starts.display());
    let config = dir.join("ved.toml");
    let breaker_after = 3;
    std::fs::write(
        &config,
        format!(
            "[adapters.Workers]\ndriver = \"process\"\ncommand = [\"sh\", \"-c\", \"{script}\"]\nstart_grace_ms = 300\n\n\
             [[watch]]\nfields = [\"workers\"]\ndriver = \"process\"\nadapter = \"Workers\"\n\n\
             [retry]\ninitial_ms = 50\nfactor = 2\ncap_ms = 600000\nbreaker_after = {breaker_after}\n"
        ),
    )
    .unwrap();
    let program = root().join("examples/demo/worker_pool/worker_pool.ved");
    let daemon = Daemon::start(&[program.to_str().unwrap(), "--ephemeral", "--config", config.to_str().unwrap()], None);
    let status = || daemon.get("/v1/instances/WorkerPool").1["status"].as_str().unwrap_or_default().to_string();
    wait_for("the pool to be reported degraded", Duration::from_secs(120), || status() == "degraded");
    // Nothing it started is running, and it started a bounded number of processes: one per
    // attempt until the breaker opened (the next probe is the cap, 10 minutes, away).
    let count = || std::fs::read_to_string(&starts).map(|s| s.lines().count()).unwrap_or(0);
    assert!(count() >= breaker_after, "{} starts", count());
    assert!(count() <= breaker_after + 2, "{} processes started before the breaker opened", count());
    wait_gone(&marker, "while degraded");
    std::thread::sleep(Duration::from_millis(500));
    assert!(count() <= breaker_after + 2, "it went on starting processes: {}", count());
    assert_eq!(status(), "degraded");

    let (code, events) = daemon.terminate();
    assert_eq!(code, 0);
    wait_gone(&marker, "after ved stopped");
    // The failed start says what happened and what to do.
    let failure = events
        .iter()
        .find(|e| e["event"] == "result" && e["ok"] == false)
        .unwrap_or_else(|| panic!("no failed result: {events:?}"));
    let reason = failure["error"].as_str().unwrap_or_default();
    let expected = format!(
        "for `sh -c {script}`, but after 300 ms it does not have that command line (it now runs `sleep {marker}`), \
         so it is not a member and was killed; Ved identifies pool members by their exact command line; avoid \
         `exec` to another program in the command, or point the pool at the final command"
    );
    assert!(reason.starts_with("started pid ") && reason.contains(&expected), "{reason}");
    assert!(events.iter().any(|e| e["event"] == "degraded"), "{events:?}");
}

#[test]
fn a_clean_stop_ends_every_watcher_command_and_what_it_started() {
    let dir = tempdir("watchers-stop");
    let (long, probe) = (format!("86403.{}", std::process::id()), format!("86404.{}", std::process::id()));
    let config = dir.join("ved.toml");
    // A long-running watcher that ignores SIGTERM and has a child, and a periodic probe
    // that never finishes: both are mid-run when the daemon is told to stop.
    std::fs::write(
        &config,
        format!(
            "[adapters.Workers]\ndriver = \"log\"\n\n\
             [[watch]]\nfields = [\"workers\"]\ndriver = \"exec\"\n\
             command = [\"sh\", \"-c\", \"trap '' TERM; echo '{{\\\"workers\\\": 5}}'; sleep {long}; true\"]\n\n\
             [[watch]]\nfields = [\"workers\"]\ndriver = \"exec\"\ninterval_ms = 100\n\
             command = [\"sh\", \"-c\", \"sleep {probe}; true\"]\n"
        ),
    )
    .unwrap();
    let program = root().join("examples/demo/worker_pool/worker_pool.ved");
    let daemon = Daemon::start(&[program.to_str().unwrap(), "--ephemeral", "--config", config.to_str().unwrap()], None);
    wait_for("both watchers' commands to run", Duration::from_secs(120), || {
        !with_marker(&long).is_empty() && !with_marker(&probe).is_empty()
    });
    let (code, _) = daemon.terminate();
    assert_eq!(code, 0);
    wait_gone(&long, "the long-running watcher after SIGTERM");
    wait_gone(&probe, "the periodic probe after SIGTERM");
}

#[test]
fn a_clean_stop_ends_an_intent_command_still_in_flight_with_its_children() {
    let dir = tempdir("intent-in-flight");
    let marker = format!("86405.{}", std::process::id());
    let config = dir.join("ved.toml");
    // The first Start never finishes: its command is still running when the daemon stops.
    std::fs::write(
        &config,
        format!(
            "[adapters.Workers]\ndriver = \"exec\"\ncommand = [\"sh\", \"-c\", \"sleep {marker}; true\"]\n\
             timeout_ms = 600000\n"
        ),
    )
    .unwrap();
    let program = root().join("examples/demo/worker_pool/worker_pool.ved");
    let daemon = Daemon::start(&[program.to_str().unwrap(), "--ephemeral", "--config", config.to_str().unwrap()], None);
    wait_for("the intent's command to run", Duration::from_secs(120), || !with_marker(&marker).is_empty());
    // Before the fix ved waited on that command for its whole timeout on the way out: fail, not hang.
    let mut daemon = daemon;
    std::process::Command::new("kill").args(["-TERM", &daemon.child.id().to_string()]).status().unwrap();
    let exited = wait_for_exit(&mut daemon.child, Duration::from_secs(60));
    if exited.is_none() {
        wait_gone(&marker, "a daemon that did not exit within 60 s");
    }
    assert_eq!(exited.and_then(|s| s.code()), Some(0), "ved did not stop cleanly");
    wait_gone(&marker, "the in-flight intent's command after SIGTERM");
}

#[test]
fn start_grace_ms_is_checked_at_its_place() {
    let dir = tempdir("grace-config");
    let config = dir.join("ved.toml");
    std::fs::write(
        &config,
        "[adapters.Workers]\ndriver = \"process\"\ncommand = [\"sleep\", \"1\"]\nstart_grace_ms = 0\n\n\
         [adapters.Other]\ndriver = \"exec\"\ncommand = [\"true\"]\nstart_grace_ms = 100\n",
    )
    .unwrap();
    let c = config.to_str().unwrap();
    let (code, _, err) = common::ved_text(&["check", "examples/worker_pool.ved", "--config", c], "");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&format!("{c}:4:18: error: `start_grace_ms` must be from 1 to 60000, got 0")), "{err}");
    assert!(
        err.contains(&format!("{c}:9:18: error: `start_grace_ms` applies to the `process` driver, not `exec`")),
        "{err}"
    );
    std::fs::write(
        &config,
        "[adapters.Workers]\ndriver = \"process\"\ncommand = [\"sleep\", \"1\"]\nstart_grace_ms = 1500\n",
    )
    .unwrap();
    let (code, _, err) = common::ved_text(&["check", "examples/worker_pool.ved", "--config", c], "");
    assert_eq!(code, 0, "{err}");
}
