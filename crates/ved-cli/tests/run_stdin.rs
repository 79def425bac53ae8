//! `ved run --stdin`: JSON lines in, JSON events out.

use serde_json::Value as Json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn run(files: &[&str], input: &str) -> (i32, Vec<Json>, String) {
    run_bytes(files, input.as_bytes().to_vec())
}

fn run_bytes(files: &[&str], input: Vec<u8>) -> (i32, Vec<Json>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ved"))
        .arg("run")
        .args(files)
        .arg("--stdin")
        .arg("--ephemeral")
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Written from another thread while the output is read: `ved` reads its input only
    // as fast as it handles it (back-pressure), so writing it all first could wait for ever.
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    let events = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    (out.status.code().unwrap_or(-1), events, String::from_utf8_lossy(&out.stderr).into_owned())
}

fn kinds(events: &[Json]) -> Vec<&str> {
    events.iter().map(|e| e["event"].as_str().unwrap()).collect()
}

#[test]
fn worker_pool_boots_then_heals_a_crash_and_exits_zero_at_end_of_input() {
    let (code, ev, err) = run(&["examples/worker_pool.ved"], "{\"instance\":\"WorkerPool\",\"set\":{\"workers\":3}}\n");
    assert_eq!(code, 0, "{err}");
    // Sequence numbers are 1, 2, 3, ... and every event names its instance.
    for (i, e) in ev.iter().enumerate() {
        assert_eq!(e["seq"].as_u64(), Some(i as u64 + 1), "{e}");
        assert_eq!(e["instance"], "WorkerPool", "{e}");
    }
    let k = kinds(&ev);
    // Boot: five scale_up slices, then stable.
    assert_eq!(k[..6], ["slice", "slice", "slice", "slice", "slice", "stable"]);
    assert_eq!(ev[4]["changes"]["workers"], 5);
    // The observation, two repairs, stable again.
    assert_eq!(k[6..], ["slice", "slice", "slice", "stable"]);
    assert_eq!(ev[6]["cause"]["kind"], "observe");
    assert_eq!(ev[8]["cause"]["transition"], "scale_up");
    assert_eq!(ev[8]["changes"]["workers"], 5);
}

#[test]
fn intents_go_to_the_logging_adapter_and_are_acknowledged() {
    let input = "{\"instance\":\"DatabaseRouting\",\"set\":{\"primary_status\":\"failed\"}}\n";
    let (code, ev, err) = run(&["examples/database_routing.ved"], input);
    assert_eq!(code, 0, "{err}");
    let intents: Vec<&Json> = ev.iter().filter(|e| e["event"] == "intent").collect();
    assert_eq!(intents.len(), 2);
    assert_eq!(intents[0]["adapter"], "Network");
    assert_eq!(intents[0]["action"], "UpdateDNS");
    assert_eq!(intents[0]["args"], serde_json::json!(["replica"]));
    assert_eq!(intents[1]["action"], "PageEngineers");
    let results: Vec<&Json> = ev.iter().filter(|e| e["event"] == "result").collect();
    assert_eq!(results.len(), 2);
    assert!(results.iter().all(|r| r["ok"] == true));
    assert_eq!(results[0]["id"], intents[0]["id"]);
    assert_eq!(ev.last().unwrap()["event"], "stable");
}

#[test]
fn a_line_that_is_not_utf8_or_too_long_is_an_error_and_the_lines_after_it_are_read() {
    let mut input = b"{\"instance\":\"WorkerPool\",\"set\":{\"workers\":1}}\n".to_vec();
    input.extend_from_slice(b"{\"instance\":\"WorkerPool\",\"set\":{\"workers\":\xff\xfe}}\n");
    input.extend(std::iter::repeat_n(b'x', 2 << 20));
    input.extend_from_slice(b"\n{\"instance\":\"WorkerPool\",\"set\":{\"workers\":2}}\n");
    let (code, ev, err) = run_bytes(&["examples/worker_pool.ved"], input);
    assert_eq!(code, 0, "{err}");
    let errors: Vec<(u64, &str)> = ev
        .iter()
        .filter(|e| e["event"] == "error")
        .map(|e| (e["line"].as_u64().unwrap(), e["message"].as_str().unwrap()))
        .collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert_eq!(errors[0].0, 2);
    assert!(errors[0].1.contains("not UTF-8") && errors[0].1.contains("offset 42"), "{}", errors[0].1);
    assert_eq!(errors[1].0, 3);
    assert!(errors[1].1.contains("the limit is 1048576"), "{}", errors[1].1);
    // Both good lines were applied, the last one after the bad ones were reported.
    let observed: Vec<(u64, i64)> = ev
        .iter()
        .filter(|e| e["event"] == "slice" && e["cause"]["kind"] == "observe")
        .map(|e| (e["seq"].as_u64().unwrap(), e["changes"]["workers"].as_i64().unwrap()))
        .collect();
    let last_error = ev.iter().filter(|e| e["event"] == "error").map(|e| e["seq"].as_u64().unwrap()).max();
    assert_eq!(observed.iter().map(|o| o.1).collect::<Vec<_>>(), [1, 2], "{ev:?}");
    assert!(Some(observed[1].0) > last_error, "{ev:?}");
}

#[test]
fn bad_lines_get_error_events_and_change_nothing() {
    let input = [
        "not json",
        "[1, 2]",
        "{\"set\":{\"workers\":1}}",
        "{\"instance\":\"Nope\",\"set\":{\"workers\":1}}",
        "{\"instance\":\"WorkerPool\",\"set\":{\"wrkers\":1}}",
        "{\"instance\":\"WorkerPool\",\"set\":{\"workers\":\"three\"}}",
        "{\"instance\":\"WorkerPool\",\"set\":{\"workers\":1.5}}",
        "{\"instance\":\"WorkerPool\"}",
        "{\"instance\":\"WorkerPool\",\"set\":{\"workers\":5},\"extra\":1}",
    ]
    .join("\n");
    let (code, ev, err) = run(&["examples/worker_pool.ved"], &input);
    assert_eq!(code, 0, "{err}");
    let errors: Vec<&Json> = ev.iter().filter(|e| e["event"] == "error").collect();
    assert_eq!(errors.len(), 9, "{ev:?}");
    let msgs: Vec<&str> = errors.iter().map(|e| e["message"].as_str().unwrap()).collect();
    assert!(msgs[0].starts_with("invalid JSON"), "{}", msgs[0]);
    assert!(msgs[2].contains("missing `instance`"), "{}", msgs[2]);
    assert!(msgs[3].contains("no instance named `Nope`"), "{}", msgs[3]);
    assert!(msgs[4].contains("no field `wrkers`"), "{}", msgs[4]);
    assert!(msgs[5].contains("expected an integer"), "{}", msgs[5]);
    assert!(msgs[7].contains("missing `set`"), "{}", msgs[7]);
    assert!(msgs[8].contains("unknown key `extra`"), "{}", msgs[8]);
    for (i, e) in errors.iter().enumerate() {
        assert_eq!(e["line"].as_u64(), Some(i as u64 + 1));
    }
    // Nothing but the boot happened: five slices and one stable.
    let slices = ev.iter().filter(|e| e["event"] == "slice").count();
    assert_eq!(slices, 5);
}

#[test]
fn stuck_and_livelock_are_reported_as_events() {
    let (_, ev, _) = run(
        &["examples/security_policy.ved"],
        "{\"instance\":\"SecurityPolicy\",\"set\":{\"actual_ports\":[443,80]}}\n",
    );
    assert_eq!(ev.last().unwrap()["event"], "stuck");
    let (_, ev, _) = run(&["examples/coarse_scaler.ved"], "");
    let last = ev.last().unwrap();
    assert_eq!(last["event"], "livelock");
    assert!(last["reason"].as_str().unwrap().contains("already seen"));
}

#[test]
fn a_fault_is_an_event_with_its_location_and_the_state_is_kept() {
    let dir = std::env::temp_dir().join(format!("ved-fault-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let prog = dir.join("div.ved");
    std::fs::write(&prog, "domain D {\n  state {\n    d: int\n    y: int\n  }\n  goal y == 10\n  transition T {\n    step {\n      y = 100 / d\n    }\n  }\n}\n").unwrap();
    let p = prog.to_str().unwrap();
    let (code, ev, err) = run(&[p], "{\"instance\":\"D\",\"set\":{\"d\":10}}\n");
    assert_eq!(code, 0, "{err}");
    let fault = ev.iter().find(|e| e["event"] == "fault").expect("a fault event");
    assert_eq!(fault["message"], "division by zero");
    assert_eq!(fault["transition"], "T");
    assert_eq!(fault["at"], format!("{p}:9:11"));
    // Boot faulted and waited; the observation of d = 10 then lets T succeed.
    assert_eq!(ev.iter().filter(|e| e["event"] == "retry").count(), 1);
    let last_slice = ev.iter().rev().find(|e| e["event"] == "slice").unwrap();
    assert_eq!(last_slice["changes"]["y"], 10);
}

#[test]
fn a_flood_of_lines_waits_for_the_runtime_and_every_line_is_applied_in_order() {
    // Many times the input channel's capacity: the reader waits (back-pressure) rather
    // than queueing without bound, and nothing is lost or reordered.
    let n = 10 * ved_cli::run::INPUT_CAPACITY;
    let mut input = String::new();
    for i in 0..n {
        input.push_str(&format!("{{\"instance\":\"WorkerPool\",\"set\":{{\"workers\":{}}}}}\n", i % 7));
    }
    let (code, events, err) = run(&["examples/worker_pool.ved"], &input);
    assert_eq!(code, 0, "{err}");
    let observed: Vec<i64> = events
        .iter()
        .filter(|e| e["event"] == "slice" && e["cause"]["kind"] == "observe")
        .filter_map(|e| e["changes"]["workers"].as_i64())
        .collect();
    // Each line whose value differs from the state changes it; 5 (the goal) never does.
    let expected: Vec<i64> = (0..n as i64).map(|i| i % 7).filter(|v| *v != 5).collect();
    assert_eq!(observed.len(), expected.len());
    assert_eq!(observed, expected);
}

/// Every event says when: `at_ms` on the engine's time line and `time` on the wall clock
/// (RFC 3339, UTC). With `--stdin` time moves only by `advance_ms`, and the wall time moves
/// with it from the moment the run started.
#[test]
fn every_event_carries_the_engines_time_and_the_wall_clock_time() {
    let before = ved_store::time::unix_now_ms();
    let input = "{\"instance\":\"WorkerPool\",\"set\":{\"workers\":3}}\n{\"advance_ms\": 60000}\n{\"instance\":\"WorkerPool\",\"set\":{\"workers\":4}}\n";
    let (code, ev, err) = run(&["examples/worker_pool.ved"], input);
    assert_eq!(code, 0, "{err}");
    let after = ved_store::time::unix_now_ms();
    let mut offsets = std::collections::BTreeSet::new();
    for e in &ev {
        let at = e["at_ms"].as_u64().unwrap_or_else(|| panic!("no at_ms: {e}"));
        let time = e["time"].as_str().unwrap_or_else(|| panic!("no time: {e}"));
        assert!(time.ends_with('Z'), "not UTC: {time}");
        let wall = ved_store::time::parse_rfc3339(time).unwrap_or_else(|| panic!("not RFC 3339: {time}"));
        offsets.insert(wall - at);
    }
    // One start time for the whole run, taken while it ran.
    assert_eq!(offsets.len(), 1, "{offsets:?}");
    let start = *offsets.first().unwrap();
    assert!(before <= start && start <= after, "{start} not in {before}..{after}");
    // The events after the advance are a minute later, on both clocks.
    let last = ev.iter().rev().find(|e| e["event"] == "slice").unwrap();
    assert_eq!(last["at_ms"], 60_000, "{last}");
}
