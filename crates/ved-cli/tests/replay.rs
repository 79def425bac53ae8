//! `ved replay` re-executes journaled messages from a retained snapshot and
//! shows that they reproduce every state and intent, or names the first slice
//! that does not.

mod common;

use common::{root, tempdir};
use std::io::Write;
use std::process::{Command, Stdio};

fn ved(args: &[&str], input: &str) -> (i32, String, String) {
    common::ved_text(args, input)
}

#[test]
fn a_run_with_failures_retries_and_timers_replays_exactly() {
    let dir = tempdir("replay-routing");
    let config = dir.join("ved.toml");
    // Inline delivery (no pool): results come back in a fixed order, so the run is repeatable.
    std::fs::write(&config, "[adapters.Network]\ndriver = \"sim\"\n\n[adapters.Alerts]\ndriver = \"sim\"\nfail = { PageEngineers = 2 }\n\n[retry]\ninitial_ms = 100\n").unwrap();
    let data = dir.join("data");
    let input = [
        r#"{"instance":"DatabaseRouting","set":{"primary_status":"failed"}}"#,
        r#"{"advance_ms":1000}"#,
        r#"{"advance_ms":1000}"#,
        r#"{"instance":"DatabaseRouting","set":{"primary_status":"healthy"}}"#,
    ];
    // Feed the lines slowly so that each result is back before the clock moves.
    let mut child = Command::new(env!("CARGO_BIN_EXE_ved"))
        .args(["run", "examples/database_routing.ved", "--stdin", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(&data)
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for l in input {
        writeln!(stdin, "{l}").unwrap();
        stdin.flush().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(150));
    }
    drop(stdin);
    assert!(child.wait().unwrap().success());
    let (code, out, err) = ved(&["replay", "--data-dir", data.to_str().unwrap(), "DatabaseRouting"], "");
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("replaying") || out.contains("slice 1 (observe) reproduced"), "{out}");
    assert!(
        out.contains("slices replayed from the snapshot at slice 0: every state change and every intent matches"),
        "{out}"
    );
    // The journal really holds failures and timers, so the replay covered them.
    let (_, journal, _) = ved(&["journal", "--data-dir", data.to_str().unwrap(), "DatabaseRouting"], "");
    assert!(journal.contains("[timer TriggerPagerDuty]") && journal.contains("failed: simulated failure"), "{journal}");
    // JSON: one line per slice, then a summary.
    let (code, out, _) = ved(&["replay", "--data-dir", data.to_str().unwrap(), "DatabaseRouting", "--json"], "");
    assert_eq!(code, 0);
    let last: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(last["diverged"], false);
    assert!(last["replayed"].as_u64().unwrap() >= 12, "{last}");
}

#[test]
fn a_changed_program_diverges_at_the_first_different_slice() {
    let dir = tempdir("replay-diverge");
    let data = dir.join("data");
    let (code, _, err) = ved(
        &["run", "examples/worker_pool.ved", "--stdin", "--data-dir", data.to_str().unwrap()],
        "{\"instance\":\"WorkerPool\",\"set\":{\"workers\":2}}\n",
    );
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = ved(
        &[
            "replay",
            "--data-dir",
            data.to_str().unwrap(),
            "WorkerPool",
            "--program",
            "tests/data/replay/worker_pool_changed.ved",
        ],
        "",
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(
            "error: slice 5 (transition) diverges after 4 matching slices: the journal has slice 5, the replay produced none"
        ),
        "{out}"
    );
    // The recorded program itself replays cleanly.
    let (code, out, _) = ved(&["replay", "--data-dir", data.to_str().unwrap(), "WorkerPool"], "");
    assert_eq!(code, 0, "{out}");
}

#[test]
fn a_trimmed_and_compacted_journal_replays_from_its_retained_snapshot() {
    let dir = tempdir("replay-trimmed");
    let data = dir.join("data");
    // Enough drifts that the journal is trimmed while stable, and a clean stop compacts the log.
    let input: String =
        (0..120).map(|i| format!("{{\"instance\":\"WorkerPool\",\"set\":{{\"workers\":{}}}}}\n", i % 9)).collect();
    let (code, _, err) =
        ved(&["run", "examples/worker_pool.ved", "--stdin", "--data-dir", data.to_str().unwrap()], &input);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = ved(&["replay", "--data-dir", data.to_str().unwrap(), "WorkerPool"], "");
    assert_eq!(code, 0, "{out}{err}");
    let from: u64 = out
        .split("from the snapshot at slice ")
        .nth(1)
        .and_then(|s| s.split(':').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!(from > 100, "the retained snapshot is a recent one, not slice 0: {out}");
}

#[test]
fn replay_explains_what_it_cannot_do() {
    let dir = tempdir("replay-errors");
    let data = dir.join("data");
    let (code, _, _) = ved(&["run", "examples/worker_pool.ved", "--stdin", "--data-dir", data.to_str().unwrap()], "");
    assert_eq!(code, 0);
    let (code, _, err) = ved(&["replay", "--data-dir", data.to_str().unwrap(), "Nobody"], "");
    assert_eq!(code, 66, "no such instance: no input, not a divergence");
    assert!(
        err.contains("error: no journal for `Nobody`") && err.contains("= hint: journals exist for `WorkerPool`"),
        "{err}"
    );
    let (code, _, err) = ved(&["replay", "--data-dir", dir.join("nothing-here").to_str().unwrap(), "WorkerPool"], "");
    assert_eq!(code, 66, "{err}");
}

/// The journal entries of `instance`, as `ved journal --json` prints them.
fn journal_json(data: &std::path::Path, instance: &str) -> Vec<serde_json::Value> {
    let (code, out, err) = ved(&["journal", "--data-dir", data.to_str().unwrap(), instance, "--json"], "");
    assert_eq!(code, 0, "{err}");
    out.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn results_queued_together_are_replayed_together() {
    // Without a configuration intents are delivered inline: the two intents of one tick are
    // released together and both results are queued before the next tick, so the live run
    // applies them back to back, and only then does `Finish` (which waits for `a`) run.
    let dir = tempdir("replay-batched");
    let data = dir.join("data");
    let (code, _, err) = ved(
        &["run", "tests/data/replay/batched_results.ved", "--stdin", "--data-dir", data.to_str().unwrap()],
        "{\"instance\":\"Batched\",\"set\":{\"want\":2}}\n",
    );
    assert_eq!(code, 0, "{err}");
    let entries = journal_json(&data, "Batched");
    let summary: Vec<(u64, &str, Option<u64>)> = entries
        .iter()
        .map(|e| (e["slice"].as_u64().unwrap(), e["cause"].as_str().unwrap(), e["batch"].as_u64()))
        .collect();
    assert_eq!(
        summary,
        [
            (1, "observe", None),
            (2, "transition", None),
            (3, "transition", None),
            (4, "result", Some(4)),
            (5, "result", Some(4)),
            (6, "transition", None)
        ],
        "{entries:?}"
    );
    // Replay queues both results before running, as the live driver did: no divergence.
    let (code, out, err) = ved(&["replay", "--data-dir", data.to_str().unwrap(), "Batched"], "");
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ok: 6 slices replayed"), "{out}");
}
