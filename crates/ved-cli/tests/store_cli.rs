//! `ved run --data-dir`: output commit, restart, corruption, and the read-only views.

mod common;

use serde_json::Value as Json;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use ved_adapters::IntentRequest;
use ved_cli::run::{Adapters, Driver, RunOptions};
use ved_store::Durability;

use common::root;

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ved-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn ved(args: &[&str], input: &str) -> (i32, Vec<Json>, String) {
    common::ved_events(args, input)
}

/// An adapter that, when called, reads the store from disk and records what it finds.
struct ReadsTheStore {
    dir: PathBuf,
    seen: Arc<Mutex<Vec<(String, u64, u64)>>>,
}

impl ved_adapters::Actuator for ReadsTheStore {
    fn deliver(&self, intent: &IntentRequest) -> ved_adapters::ActionResult {
        let rec = ved_store::read_only(&self.dir).map_err(|e| ved_adapters::ActionError::failed(e.to_string()))?;
        let stored = rec.snapshots.get(&intent.instance).map(|s| s.snapshot.slice).unwrap_or(0);
        let slice: u64 = intent.id.split('/').nth(1).unwrap().parse().unwrap();
        let call = format!(
            "{}.{}({})",
            intent.adapter,
            intent.action,
            intent.args.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")
        );
        self.seen.lock().unwrap().push((call, slice, stored));
        Ok(())
    }
}

#[test]
fn no_intent_reaches_an_adapter_before_its_slice_is_durable() {
    let dir = tempdir("output-commit");
    let loaded = ved_cli::load::load(&[root().join("examples/database_routing.ved")]).ok().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let adapter = ReadsTheStore { dir: dir.clone(), seen: seen.clone() };
    let (tx, rx) = mpsc::channel();
    let hook = Box::new(move |_| {
        let _ = tx.send(());
    });
    let opts = RunOptions {
        seed: 0,
        data_dir: Some(dir.clone()),
        durability: Durability::Fsync,
        recover: false,
        config: None,
        flush: ved_store::Flush::Background,
        limits: Default::default(),
        wall_ms_at_start: None,
        audit_key: None,
    };
    let mut d = Driver::start(
        loaded,
        &opts,
        Adapters::single(Arc::new(adapter)),
        ved_cli::run::JsonLines::new(Vec::new()),
        hook,
    )
    .ok()
    .unwrap();
    d.handle_line(1, r#"{"instance":"DatabaseRouting","set":{"primary_status":"failed"}}"#);
    d.handle_line(2, r#"{"instance":"DatabaseRouting","set":{"primary_status":"healthy"}}"#);
    while seen.lock().unwrap().len() < 3 {
        rx.recv_timeout(std::time::Duration::from_secs(120)).expect("durability progresses");
        d.settle();
    }
    let out = String::from_utf8(d.finish().unwrap().into_inner()).unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "{seen:?}\n{out}");
    for (intent, emitted_at, stored) in &seen {
        assert!(
            stored >= emitted_at,
            "{intent} (slice {emitted_at}) reached the adapter while the store held slice {stored}"
        );
    }
    assert_eq!(seen[0].0, "Network.UpdateDNS(\"replica\")");
    // Each intent was printed after the line that caused it was acknowledged as durable.
    let lines: Vec<Json> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let ack1 = lines.iter().position(|e| e["event"] == "ack" && e["line"] == 1).unwrap();
    let first_intent = lines.iter().position(|e| e["event"] == "intent").unwrap();
    assert!(ack1 < first_intent, "{out}");
}

#[test]
fn a_restart_resumes_every_instance_at_its_next_slice() {
    let dir = tempdir("restart");
    let d = dir.to_str().unwrap();
    let (code, ev, err) = ved(
        &["run", "examples/worker_pool.ved", "--stdin", "--data-dir", d],
        "{\"instance\":\"WorkerPool\",\"set\":{\"workers\":2}}\n",
    );
    assert_eq!(code, 0, "{err}");
    let last_slice = ev.iter().filter(|e| e["event"] == "slice").map(|e| e["slice"].as_u64().unwrap()).max().unwrap();
    assert_eq!(last_slice, 9, "boot 5 slices, observe 1, repair 3");
    // The second run boots nothing: it is stable at slice 9 and continues from there.
    let (code, ev, err) = ved(
        &["run", "examples/worker_pool.ved", "--stdin", "--data-dir", d],
        "{\"instance\":\"WorkerPool\",\"set\":{\"workers\":4}}\n",
    );
    assert_eq!(code, 0, "{err}");
    let slices: Vec<u64> = ev.iter().filter(|e| e["event"] == "slice").map(|e| e["slice"].as_u64().unwrap()).collect();
    assert_eq!(slices, [10, 11]);
    // Read-only views.
    let out = Command::new(env!("CARGO_BIN_EXE_ved")).args(["inspect", "--data-dir", d, "--json"]).output().unwrap();
    let snap: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(snap["slice"], 11);
    assert_eq!(snap["state"]["workers"], 5);
    assert_eq!(snap["status"], "stable");
    let out = Command::new(env!("CARGO_BIN_EXE_ved")).args(["inspect", "--data-dir", d]).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("WorkerPool (WorkerPool) at slice 11: stable\n  workers: int = 5"), "{text}");
    let out =
        Command::new(env!("CARGO_BIN_EXE_ved")).args(["journal", "--data-dir", d, "WorkerPool"]).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    // Each entry says when, on the wall clock and on the engine's time line: `slice 10 at
    // 2026-12-02T05:41:34.123Z (0ms) [...]`.
    let (t10, t11) = (wall_time_of(&text, "slice 10 at "), wall_time_of(&text, "slice 11 at "));
    let text = text.replace(&t10, "T").replace(&t11, "T");
    assert!(text.contains("slice 10 at T (0ms) [observe from stdin]: workers = 4"), "{text}");
    assert!(
        text.contains(
            "slice 11 at T (0ms) [transition scale_up] after slice 10 (observe from stdin): workers = 5\n    -> stable"
        ),
        "{text}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_ved")).args(["audit", "--data-dir", d]).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let text = text.replace(&wall_time_of(&text, "#3 "), "T");
    assert!(
        text.contains(
            "#3 T (0ms) WorkerPool: workers drifted to 4; scale_up set workers = 5; stable again after 1 tick"
        ),
        "{text}"
    );
    // The same in JSON: every event, journal entry and audit entry has `time` beside `at_ms`.
    for e in &ev {
        assert!(e["at_ms"].is_u64(), "{e}");
        assert_recent(e["time"].as_str().unwrap_or_else(|| panic!("no time: {e}")));
    }
    for cmd in [&["journal", "--data-dir", d, "WorkerPool", "--json"][..], &["audit", "--data-dir", d, "--json"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_ved")).args(cmd).output().unwrap();
        let lines = String::from_utf8(out.stdout).unwrap();
        assert!(lines.lines().count() >= 2, "{cmd:?}: {lines}");
        for l in lines.lines() {
            let e: Json = serde_json::from_str(l).unwrap();
            assert!(e["at_ms"].is_u64(), "{e}");
            assert_recent(e["time"].as_str().unwrap_or_else(|| panic!("no time: {e}")));
        }
    }
    let out = Command::new(env!("CARGO_BIN_EXE_ved")).args(["audit", "verify", "--data-dir", d]).output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "ok: 3 audit entries, hash chain intact\n");
}

/// The wall-clock time that follows `prefix` in `text` (up to the next space).
fn wall_time_of(text: &str, prefix: &str) -> String {
    let at = text.find(prefix).unwrap_or_else(|| panic!("no `{prefix}` in {text}")) + prefix.len();
    let t = text[at..].split(' ').next().unwrap().to_string();
    assert_recent(&t);
    t
}

/// `t` is an RFC 3339 time in UTC, with milliseconds, within the last hour.
fn assert_recent(t: &str) {
    assert!(t.ends_with('Z') && t.len() == "2026-12-02T05:41:34.123Z".len(), "not RFC 3339 UTC with ms: {t}");
    let ms = ved_store::time::parse_rfc3339(t).unwrap_or_else(|| panic!("not RFC 3339: {t}"));
    let now = ved_store::time::unix_now_ms();
    assert!(ms <= now && now - ms < 3_600_000, "{t} is not the time of this run");
}

#[test]
fn the_audit_log_records_a_drift_and_its_correction_in_words() {
    let dir = tempdir("audit-words");
    let d = dir.to_str().unwrap();
    let input = "{\"instance\":\"SecurityPolicy\",\"set\":{\"actual_ports\":[80,443]}}\n";
    ved(&["run", "examples/security_policy.ved", "--stdin", "--data-dir", d], input);
    let input = "{\"instance\":\"SecurityPolicy\",\"set\":{\"actual_ports\":[80,443,22]}}\n";
    let (code, _, err) = ved(&["run", "examples/security_policy.ved", "--stdin", "--data-dir", d], input);
    assert_eq!(code, 0, "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_ved")).args(["audit", "--data-dir", d, "--json"]).output().unwrap();
    let entries: Vec<Json> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let last = entries.last().unwrap();
    assert_eq!(
        last["text"],
        "actual_ports drifted to [80, 443, 22]; CloseRoguePorts emitted Firewall.ClosePorts([22]); \
         SecurityPolicy/5/0 succeeded: actual_ports = [80, 443]; stable again after 1 tick"
    );
    assert_eq!(last["prev"], entries[entries.len() - 2]["hash"]);
}

#[test]
fn a_corrupt_store_stops_ved_run_unless_told_to_recover() {
    let dir = tempdir("corrupt");
    let d = dir.to_str().unwrap();
    let input = "{\"instance\":\"WorkerPool\",\"set\":{\"workers\":2}}\n";
    // `--durability none` keeps the log (no checkpoint is taken until a clean stop, which this is),
    // so damage the checkpoint the clean stop wrote.
    let (code, _, err) =
        ved(&["run", "examples/worker_pool.ved", "--stdin", "--data-dir", d, "--durability", "none"], input);
    assert_eq!(code, 0, "{err}");
    let cp = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains("checkpoint-"))
        .unwrap();
    let mut bytes = std::fs::read(&cp).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&cp, bytes).unwrap();
    let (code, ev, err) = ved(&["run", "examples/worker_pool.ved", "--stdin", "--data-dir", d], "");
    assert_eq!(code, 1, "{err}");
    assert!(ev.is_empty());
    assert!(err.contains("is corrupt: checksum mismatch in the record at byte"), "{err}");
    assert!(err.contains("--recover"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_ved")).args(["inspect", "--data-dir", d]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let (code, _, err) = ved(&["run", "examples/worker_pool.ved", "--stdin", "--data-dir", d, "--recover"], "");
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("WARN") && err.contains("set aside"), "{err}");
}

#[test]
fn a_file_of_another_store_stops_run_inspect_and_audit_verify() {
    // Two stores of the same program: every file of either is intact; only whose it is differs.
    let mut stores = Vec::new();
    for (tag, workers) in [("ident-a", 2), ("ident-b", 3)] {
        let dir = tempdir(tag);
        let input = format!("{{\"instance\":\"WorkerPool\",\"set\":{{\"workers\":{workers}}}}}\n");
        let (code, _, err) =
            ved(&["run", "examples/worker_pool.ved", "--stdin", "--data-dir", dir.to_str().unwrap()], &input);
        assert_eq!(code, 0, "{err}");
        stores.push(dir);
    }
    let (a, b) = (&stores[0], &stores[1]);
    for name in ["checkpoint-1", "log-1", "audit.log"] {
        let dir = tempdir(&format!("ident-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        for e in std::fs::read_dir(a).unwrap() {
            let p = e.unwrap().path();
            if p.file_name().unwrap() != "lock" {
                std::fs::copy(&p, dir.join(p.file_name().unwrap())).unwrap();
            }
        }
        std::fs::copy(b.join(name), dir.join(name)).unwrap();
        let d = dir.to_str().unwrap();
        let named = |what: &str, err: &str| {
            // `ved audit verify` names the chain's file by its line: "DIR: audit.log line 1: ...".
            let file = err.contains(&format!("{d}/{name}")) || err.contains(&format!("{d}: {name} line 1:"));
            assert!(file, "{what} with {name} of another store: {err}");
            assert!(err.contains("another store") && err.contains("this one (id "), "{what}: {err}");
        };

        let (code, out, err) = common::ved_text(&["inspect", "--data-dir", d], "");
        assert_eq!(code, 1, "inspect with {name} of another store: {out}{err}");
        assert!(out.is_empty(), "{out}");
        named("inspect", &err);

        let (code, ev, err) = ved(&["run", "examples/worker_pool.ved", "--stdin", "--data-dir", d], "");
        assert_eq!(code, 1, "run with {name} of another store: {err}");
        assert!(ev.is_empty(), "{ev:?}");
        named("run", &err);
        assert!(err.contains("--recover"), "{err}");

        let (code, out, err) = common::ved_text(&["audit", "verify", "--data-dir", d], "");
        assert_eq!(code, 1, "audit verify with {name} of another store: {out}{err}");
        assert!(!out.contains("ok:"), "{out}");
        named("audit verify", &err);

        // Refusing changed nothing.
        assert_eq!(std::fs::read(dir.join(name)).unwrap(), std::fs::read(b.join(name)).unwrap());
        // `--recover` sets it aside, as a damaged file, and the store is whole again.
        let (code, _, err) = ved(&["run", "examples/worker_pool.ved", "--stdin", "--data-dir", d, "--recover"], "");
        assert_eq!(code, 0, "{err}");
        assert!(err.contains("another store") && err.contains(".damaged"), "{err}");
        let (code, out, err) = common::ved_text(&["audit", "verify", "--data-dir", d], "");
        assert_eq!(code, 0, "after --recover with {name} set aside: {out}{err}");
        let (code, _, err) = common::ved_text(&["inspect", "--data-dir", d], "");
        assert_eq!(code, 0, "{err}");
    }
}

#[test]
fn a_store_written_by_another_program_is_migrated_by_field_name_unless_a_type_changed() {
    let dir = tempdir("other-program");
    let d = dir.to_str().unwrap();
    ved(&["run", "examples/worker_pool.ved", "--stdin", "--data-dir", d], "");
    // Same domain name, a field added and a field removed: carried over (see tests/upgrade.rs).
    let other = dir.join("other.ved");
    std::fs::write(&other, "domain WorkerPool {\n  state {\n    count: int\n  }\n}\ngoal count == 0\n").unwrap();
    let (code, _, err) = ved(&["run", other.to_str().unwrap(), "--stdin", "--data-dir", d], "");
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("program upgraded: field `count: int` added with default 0, field `workers: int` removed (was 5)"),
        "{err}"
    );
    // A field whose type changed is refused, named, with a hint.
    std::fs::write(&other, "domain WorkerPool {\n  state {\n    count: bool\n  }\n}\ngoal count == true\n").unwrap();
    let (code, _, err) = ved(&["run", other.to_str().unwrap(), "--stdin", "--data-dir", d], "");
    assert_eq!(code, 1);
    assert!(err.contains("instance `WorkerPool`: field `count` was `int` and the program declares it `bool`"), "{err}");
    assert!(err.contains("= hint: values are not converted between types"), "{err}");
}

#[test]
fn the_journal_records_lineage_and_is_trimmed_while_the_instance_stays_stable() {
    let dir = tempdir("journal");
    let d = dir.to_str().unwrap();
    // 60 crashes and repairs: 240 slices, far more than a stable instance keeps.
    let mut input = String::new();
    for i in 0..60 {
        input.push_str(&format!("{{\"instance\":\"WorkerPool\",\"set\":{{\"workers\":{}}}}}\n", i % 3 + 2));
    }
    input.push_str("{\"instance\":\"WorkerPool\",\"set\":{\"workers\":4},\"caused_by\":\"WorkerPool/3/0\"}\n");
    let (code, _, err) = ved(&["run", "examples/worker_pool.ved", "--stdin", "--data-dir", d], &input);
    assert_eq!(code, 0, "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_ved"))
        .args(["journal", "--data-dir", d, "WorkerPool", "--json"])
        .output()
        .unwrap();
    let entries: Vec<Json> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(entries.len() <= 64, "{} entries kept", entries.len());
    assert!(entries.len() >= 2);
    // Newest last, slices increasing, and the lineage of the last observation kept.
    assert!(entries.windows(2).all(|w| w[0]["slice"].as_u64() < w[1]["slice"].as_u64()));
    let observe = entries.iter().rev().find(|e| e["cause"] == "observe").unwrap();
    assert_eq!(observe["caused_by"], "WorkerPool/3/0");
    assert_eq!(observe["changes"][0], serde_json::json!(["workers", "4"]));
}

#[test]
fn inspect_works_while_ved_run_holds_the_directory() {
    let dir = tempdir("inspect-live");
    let d = dir.to_str().unwrap().to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ved"))
        .args(["run", "examples/worker_pool.ved", "--stdin", "--data-dir", &d])
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"{\"instance\":\"WorkerPool\",\"set\":{\"workers\":1}}\n").unwrap();
    stdin.flush().unwrap();
    // Wait for the acknowledgement: the line's slices are durable.
    let mut reader = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(std::io::BufRead::read_line(&mut reader, &mut line).unwrap() > 0, "ved run ended early");
        if line.contains("\"event\":\"ack\"") {
            break;
        }
    }
    // A second owner is refused, a reader is not.
    let (code, _, err) = ved(&["run", "examples/worker_pool.ved", "--stdin", "--data-dir", &d], "");
    assert_eq!(code, 1);
    assert!(err.contains("is in use by another `ved run`"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_ved"))
        .args(["inspect", "--data-dir", &d, "WorkerPool", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let snap: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(snap["instance"], "WorkerPool");
    assert!(snap["slice"].as_u64().unwrap() >= 6);
    drop(stdin);
    assert!(child.wait().unwrap().success());
}

/// The driver on `dir` with `program`, intents queued in `queue` for the test to answer.
fn manual_driver(dir: &std::path::Path, program: &str, queue: Arc<Mutex<Vec<IntentRequest>>>) -> Driver<Vec<u8>> {
    let loaded = ved_cli::load::load(&[root().join(program)]).ok().unwrap();
    let opts = RunOptions {
        seed: 0,
        data_dir: Some(dir.to_path_buf()),
        durability: Durability::None,
        recover: false,
        config: None,
        flush: ved_store::Flush::Manual,
        limits: Default::default(),
        wall_ms_at_start: None,
        audit_key: None,
    };
    match Driver::start(
        loaded,
        &opts,
        Adapters::manual(queue),
        ved_cli::run::JsonLines::new(Vec::new()),
        Box::new(|_| {}),
    ) {
        Ok(d) => d,
        Err(e) => panic!("{e}"),
    }
}

fn observed(fields: Json, source: &str) -> ved_adapters::Inbound {
    let Json::Object(fields) = fields else { panic!("an object") };
    ved_adapters::Inbound::Observed(ved_adapters::Observation {
        instance: "Batched".into(),
        fields,
        source: source.into(),
        version: None,
    })
}

#[test]
fn the_journal_names_sources_origins_and_statuses_and_resyncs_cost_nothing() {
    let dir = tempdir("journal-lineage");
    let queue = Arc::new(Mutex::new(Vec::new()));
    let mut d = manual_driver(&dir, "tests/data/replay/batched_results.ved", queue.clone());
    d.handle_line(1, r#"{"instance":"Batched","set":{"want":2}}"#);
    d.flush().unwrap();
    // While the intents are out, a watcher reports the same value: journaled (it is no resync of a
    // resting instance), with its source.
    d.handle_inbound(observed(serde_json::json!({"want": 2}), "watch#1"));
    d.flush().unwrap();
    // Both results come back together, newest first.
    let sent: Vec<IntentRequest> = std::mem::take(&mut *queue.lock().unwrap());
    assert_eq!(sent.len(), 2);
    d.handle_inbound_batch(
        sent.iter().rev().map(|i| ved_adapters::Inbound::Result { id: i.id.clone(), outcome: Ok(()) }).collect(),
    );
    d.flush().unwrap();
    // A relative observation, from a named source on stdin.
    d.handle_line(2, r#"{"instance":"Batched","add":{"want":1}}"#);
    d.flush().unwrap();
    let sent: Vec<IntentRequest> = std::mem::take(&mut *queue.lock().unwrap());
    d.handle_inbound_batch(
        sent.iter().map(|i| ved_adapters::Inbound::Result { id: i.id.clone(), outcome: Ok(()) }).collect(),
    );
    d.flush().unwrap();
    assert_eq!(d.runtime().instances()[0].status, ved_runtime::Status::Stable);
    let journal = |d: &Path| ved_store::read_only(d).unwrap().journals["Batched"].clone();
    let before = journal(&dir);
    // Periodic resyncs that change nothing, from a watcher and from stdin: no journal entry.
    for n in 0..5 {
        d.handle_inbound(observed(serde_json::json!({"want": 3, "done": 3}), "watch#1"));
        d.handle_line(3 + n, r#"{"instance":"Batched","set":{"want":3}}"#);
    }
    d.flush().unwrap();
    assert_eq!(journal(&dir), before, "resyncs that changed nothing used up journal entries");
    assert_eq!(d.runtime().instances()[0].slice, before.back().unwrap().slice + 10);

    let e = |slice: u64| before.iter().find(|e| e.slice == slice).unwrap_or_else(|| panic!("slice {slice}"));
    assert_eq!((e(1).cause.as_str(), e(1).source.as_deref()), ("observe", Some("stdin")));
    // Transitions name the input whose ticks they belong to, with no help from the caller.
    let origin = e(2).origin.clone().expect("an origin");
    assert_eq!((origin.slice, origin.cause.as_str(), origin.source.as_deref()), (1, "observe", Some("stdin")));
    assert_eq!(e(3).origin, e(2).origin);
    assert_eq!((e(3).status.as_deref(), e(3).reason.as_deref()), (Some("waiting"), None));
    assert_eq!((e(4).source.as_deref(), e(4).observed.len()), (Some("watch#1"), 1));
    // The results were queued together (newest first), so they are one batch.
    assert_eq!((e(5).cause.as_str(), e(5).detail.as_deref(), e(5).batch), ("result", Some("Batched/3/0"), Some(5)));
    assert_eq!((e(6).detail.as_deref(), e(6).batch), (Some("Batched/2/0"), Some(5)));
    assert_eq!((e(7).detail.as_deref(), e(7).origin.as_ref().map(|o| o.slice)), (Some("Finish"), Some(6)));
    assert_eq!(e(7).status.as_deref(), Some("stable"));
    let add = e(8);
    assert_eq!(
        (add.added.clone(), add.changes.clone()),
        (vec![("want".to_string(), 1)], vec![("want".into(), "3".into())])
    );
    // After a restart the resyncs are still accounted for, and more of them cost nothing either.
    d.crash();
    let mut d = manual_driver(&dir, "tests/data/replay/batched_results.ved", queue.clone());
    for n in 0..3 {
        d.handle_inbound(observed(serde_json::json!({"done": 3}), "watch#1"));
        d.handle_line(20 + n, r#"{"instance":"Batched","set":{"b":3}}"#);
    }
    d.handle_line(30, r#"{"instance":"Batched","set":{"a":0}}"#);
    d.flush().unwrap();
    let after = journal(&dir);
    let last = after.back().unwrap();
    assert_eq!((last.cause.as_str(), last.quiet), ("transition", 0));
    let drift = after.iter().find(|e| e.changes == [("a".to_string(), "0".to_string())]).unwrap();
    assert_eq!(drift.quiet, 16, "ten resyncs before the restart, six after: {drift:?}");
    let _ = d.finish();
    // And the whole history replays exactly, resyncs, batch, `add` and all.
    match ved_cli::replay_cmd::replay_instance(&dir, "Batched", None, |_| {}) {
        Ok(ved_cli::replay_cmd::Outcome::Reproduced { .. }) => {}
        other => panic!("{other:?}"),
    }
    // `ved journal` shows it in words.
    let out = Command::new(env!("CARGO_BIN_EXE_ved"))
        .args(["journal", "--data-dir", dir.to_str().unwrap(), "Batched"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    for says in [
        "slice 1 at 1970-01-01T00:00:00.000Z (0ms) [observe from stdin]: want = 2",
        "slice 2 at 1970-01-01T00:00:00.000Z (0ms) [transition SetA] after slice 1 (observe from stdin) (held: a = 2)",
        "    -> waiting",
        "slice 4 at 1970-01-01T00:00:00.000Z (0ms) [observe from watch#1]",
        "slice 6 at 1970-01-01T00:00:00.000Z (0ms) [result Batched/2/0] (batch 5)",
        "[transition Finish] after slice 6 (result Batched/2/0): done = 2",
        "    -> stable",
        "[observe from stdin] add want +1: want = 3",
        "(16 observations that changed nothing, not journaled)",
    ] {
        assert!(text.contains(says), "`ved journal` should say `{says}`:\n{text}");
    }
}

#[test]
fn the_journal_records_why_an_instance_is_stuck() {
    let dir = tempdir("journal-stuck");
    let d = dir.to_str().unwrap();
    let (code, _, err) = ved(
        &["run", "examples/security_policy.ved", "--stdin", "--data-dir", d],
        "{\"instance\":\"SecurityPolicy\",\"set\":{\"actual_ports\":[443,80]}}\n",
    );
    assert_eq!(code, 0, "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_ved"))
        .args(["journal", "--data-dir", d, "SecurityPolicy", "--json"])
        .output()
        .unwrap();
    let entries: Vec<Json> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let last = entries.last().expect("entries");
    assert_eq!(last["status"], "stuck", "{entries:?}");
    assert!(last["reason"].as_str().unwrap().contains("no transition is enabled"), "{last}");
}
