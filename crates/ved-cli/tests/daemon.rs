//! `ved run` as a daemon: the HTTP API over a real socket, authentication, bad
//! requests that change nothing, instance creation that survives a restart, and
//! a clean SIGTERM.

mod common;

use common::{root, tempdir, Daemon};
use serde_json::json;
use std::process::Command;
use std::time::{Duration, Instant};

const TOKEN: &str = "t0ken-for-tests";

fn workers(d: &Daemon, name: &str) -> i64 {
    d.get(&format!("/v1/instances/{name}")).1["state"]["workers"].as_i64().unwrap()
}

#[test]
fn the_api_reports_accepts_refuses_and_survives_a_restart() {
    let dir = tempdir("api");
    let data = dir.join("data");
    let data_s = data.to_str().unwrap();
    let d = Daemon::start(&["examples/worker_pool.ved", "--data-dir", data_s], Some(TOKEN));

    let (s, h) = d.get("/healthz");
    assert_eq!((s, h), (200, json!({"status": "ok"})));
    let (s, list) = d.get("/v1/instances");
    assert_eq!(s, 200);
    assert_eq!(
        list["instances"],
        json!([{"name": "WorkerPool", "domain": "WorkerPool", "status": "stable", "slice": 5}])
    );
    let (s, one) = d.get("/v1/instances/WorkerPool");
    assert_eq!(s, 200);
    assert_eq!(one["state"], json!({"workers": 5}));
    assert_eq!(one["goals"], json!([{"name": "goal#1", "holds": true}]));
    assert_eq!(one["pending"], json!([]));

    // Every refusal says what was wrong and changes nothing.
    let obs = "/v1/instances/WorkerPool/observations";
    let refusals: Vec<(Option<&str>, Vec<u8>, u16, &str)> = vec![
        (None, br#"{"workers": 2}"#.to_vec(), 401, "Authorization: Bearer"),
        (Some("wrong"), br#"{"workers": 2}"#.to_vec(), 401, "not valid"),
        (Some(TOKEN), br#"{"workers": 2"#.to_vec(), 400, "not valid JSON"),
        (Some(TOKEN), br#"[1, 2]"#.to_vec(), 400, "must be a JSON object, not an array"),
        (Some(TOKEN), br#"{"workers": "two"}"#.to_vec(), 400, "field `workers`: expected an integer"),
        (Some(TOKEN), br#"{"wrokers": 2}"#.to_vec(), 400, "no field `wrokers`"),
        (Some(TOKEN), br#"{}"#.to_vec(), 400, "empty"),
        (Some(TOKEN), format!(r#"{{"workers": 2, "pad": "{}"}}"#, "x".repeat(70_000)).into_bytes(), 413, "limit"),
    ];
    for (token, body, status, says) in refusals {
        let (s, e) = d.post(obs, token, &body);
        assert_eq!(s, status, "{e}");
        assert_eq!(e["error"]["status"], status);
        let msg = e["error"]["message"].as_str().unwrap();
        assert!(msg.contains(says), "`{msg}` should say `{says}`");
    }
    let (s, e) = d.post("/v1/instances/Nobody/observations", Some(TOKEN), br#"{"workers": 2}"#);
    assert_eq!(s, 404);
    assert!(e["error"]["message"].as_str().unwrap().contains("the instances are `WorkerPool`"));
    assert_eq!(d.get("/v1/instances/WorkerPool").1["slice"], 5, "a refused call changed the instance");

    // A good observation: answered once durable, and the instance converges back.
    let (s, r) = d.post(obs, Some(TOKEN), br#"{"workers": 2}"#);
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["name"], "WorkerPool");
    assert_eq!(workers(&d, "WorkerPool"), 5);
    let (_, j) = d.get("/v1/instances/WorkerPool/journal");
    let entries = j["entries"].as_array().unwrap();
    assert!(entries.iter().any(|e| e["cause"] == "observe" && e["changes"] == json!([["workers", "2"]])), "{j}");
    // The journal names where the observation came from, and the transitions it started.
    let seen = entries.iter().find(|e| e["cause"] == "observe" && e["changes"] == json!([["workers", "2"]])).unwrap();
    assert_eq!(seen["source"], "api", "{seen}");
    let after = entries.iter().find(|e| e["cause"] == "transition" && e["slice"].as_u64() > seen["slice"].as_u64());
    assert_eq!(after.expect("a transition after it")["origin"]["slice"], seen["slice"], "{j}");

    // Creating an instance of a domain with its own initial state.
    let create = "/v1/instances";
    let (s, r) = d.post(create, Some(TOKEN), br#"{"name": "pool-b", "domain": "WorkerPool", "state": {"workers": 9}}"#);
    assert_eq!(s, 201, "{r}");
    assert_eq!(workers(&d, "pool-b"), 5, "the new instance converged from 9");
    let bad: Vec<(&[u8], u16, &str)> = vec![
        (br#"{"name": "pool-b", "domain": "WorkerPool"}"#, 409, "already exists"),
        (br#"{"name": "pool-c", "domain": "Nope"}"#, 400, "the domains are `WorkerPool`"),
        (br#"{"name": "a/b", "domain": "WorkerPool"}"#, 400, "not a valid instance name"),
        (br#"{"name": "pool-c", "domain": "WorkerPool", "state": {"workers": true}}"#, 400, "expected an integer"),
        (br#"{"name": "pool-c", "domain": "WorkerPool", "colour": 1}"#, 400, "unknown key `colour`"),
    ];
    for (body, status, says) in bad {
        let (s, e) = d.post(create, Some(TOKEN), body);
        assert_eq!(s, status, "{e}");
        assert!(e["error"]["message"].as_str().unwrap().contains(says), "{e}");
    }
    assert_eq!(d.get("/v1/instances").1["instances"].as_array().unwrap().len(), 2);

    // The audit log records the drift and its correction.
    let (s, a) = d.get("/v1/audit");
    assert_eq!(s, 200);
    let texts: Vec<&str> = a["entries"].as_array().unwrap().iter().map(|e| e["text"].as_str().unwrap()).collect();
    assert!(texts.iter().any(|t| t.contains("workers drifted to 2")), "{texts:?}");

    // Unknown routes and methods get JSON errors too.
    assert_eq!(d.get("/v1/nothing").0, 404);
    let (s, e) = d.post("/v1/audit", Some(TOKEN), b"{}");
    assert_eq!(s, 405, "{e}");

    // SIGTERM: flush, say so, exit 0. A restart finds the created instance.
    let (code, lines) = d.terminate();
    assert_eq!(code, 0);
    assert!(lines.iter().any(|l| l["event"] == "stopping"));
    let d = Daemon::start(&["examples/worker_pool.ved", "--data-dir", data_s], Some(TOKEN));
    let (s, b) = d.get("/v1/instances/pool-b");
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["state"]["workers"], 5);
    assert_eq!(d.terminate().0, 0);
}

#[test]
fn without_a_token_writes_are_refused_and_a_configured_token_works() {
    let d = Daemon::start(&["examples/worker_pool.ved", "--ephemeral"], None);
    let (s, e) = d.post("/v1/instances/WorkerPool/observations", Some("anything"), br#"{"workers": 1}"#);
    assert_eq!(s, 403);
    assert!(e["error"]["message"].as_str().unwrap().contains("VED_API_TOKEN"));
    assert_eq!(workers(&d, "WorkerPool"), 5);
    drop(d);

    let dir = tempdir("token");
    let config = dir.join("ved.toml");
    std::fs::write(&config, "[api]\ntoken = \"from-the-config\"\n").unwrap();
    let d = Daemon::start(&["examples/worker_pool.ved", "--ephemeral", "--config", config.to_str().unwrap()], None);
    let (s, _) = d.post("/v1/instances/WorkerPool/observations", Some("from-the-config"), br#"{"workers": 1}"#);
    assert_eq!(s, 200);
    // VED_API_TOKEN overrides the file.
    drop(d);
    let d = Daemon::start(
        &["examples/worker_pool.ved", "--ephemeral", "--config", config.to_str().unwrap()],
        Some("from-env"),
    );
    assert_eq!(d.post("/v1/instances/WorkerPool/observations", Some("from-the-config"), br#"{"workers": 1}"#).0, 401);
    assert_eq!(d.post("/v1/instances/WorkerPool/observations", Some("from-env"), br#"{"workers": 1}"#).0, 200);
}

#[test]
fn pending_transitions_and_statuses_show_while_intents_are_in_flight() {
    // Paging is slow: while its intent is out, the instance is `waiting` with the
    // transition pending, and the failover already happened.
    let dir = tempdir("pending");
    let config = dir.join("ved.toml");
    std::fs::write(
        &config,
        "[adapters.Alerts]\ndriver = \"sim\"\ndelay_ms = 1500\n\n[adapters.Network]\ndriver = \"sim\"\n",
    )
    .unwrap();
    let d = Daemon::start(
        &["examples/database_routing.ved", "--ephemeral", "--config", config.to_str().unwrap()],
        Some(TOKEN),
    );
    let (s, _) = d.post("/v1/instances/DatabaseRouting/observations", Some(TOKEN), br#"{"primary_status": "failed"}"#);
    assert_eq!(s, 200);
    let deadline = Instant::now() + Duration::from_secs(120);
    let seen = loop {
        let (_, i) = d.get("/v1/instances/DatabaseRouting");
        if i["state"]["active_route"] == "replica" && !i["pending"].as_array().unwrap().is_empty() {
            break i;
        }
        assert!(Instant::now() < deadline, "never saw the page in flight: {i}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(seen["status"], "waiting");
    assert_eq!(seen["pending"][0]["transition"], "TriggerPagerDuty");
    assert_eq!(seen["pending"][0]["phase"], "in_flight");
    assert_eq!(d.get("/v1/instances").1["instances"][0]["status"], "waiting");
    let deadline = Instant::now() + Duration::from_secs(120);
    while d.get("/v1/instances/DatabaseRouting").1["status"] != "stable" {
        assert!(Instant::now() < deadline, "the page never completed");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(d.get("/v1/instances/DatabaseRouting").1["state"]["alert_sent"], true);
}

#[test]
fn the_openapi_document_describes_every_route() {
    let d = Daemon::start(&["examples/worker_pool.ved", "--ephemeral"], None);
    let (s, doc) = d.get("/v1/openapi.json");
    assert_eq!(s, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    let paths: Vec<&String> = doc["paths"].as_object().unwrap().keys().collect();
    for p in [
        "/healthz",
        "/v1/openapi.json",
        "/v1/instances",
        "/v1/instances/{name}",
        "/v1/instances/{name}/observations",
        "/v1/instances/{name}/journal",
        "/v1/audit",
    ] {
        assert!(paths.iter().any(|x| *x == p), "{p} missing from the OpenAPI document");
        // And the route is really served (not a 404 from the fallback).
        let real = p.replace("{name}", "WorkerPool");
        if real.ends_with("observations") {
            continue;
        }
        assert_ne!(d.get(&real).0, 404, "{real}");
    }
    // The mutating calls declare the bearer token.
    assert!(doc["paths"]["/v1/instances"]["post"]["security"].is_array());
    assert!(doc["paths"]["/v1/instances/{name}/observations"]["post"]["security"].is_array());
}

#[test]
fn a_busy_port_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_ved"))
        .args(["run", "examples/worker_pool.ved", "--ephemeral", "--listen", &addr])
        .current_dir(root())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("cannot listen on {addr}")) && err.contains("--listen"), "{err}");
}

#[test]
fn a_watcher_reading_names_its_source_and_periodic_resyncs_leave_the_journal_alone() {
    let dir = tempdir("resync");
    std::fs::create_dir_all(&dir).unwrap();
    // A probe that reads the primary as failed, re-sent every 100 ms whether it changed or not.
    let probe = dir.join("probe.json");
    std::fs::write(&probe, r#"{"primary_status": "failed"}"#).unwrap();
    let config = dir.join("ved.toml");
    std::fs::write(
        &config,
        format!(
            "[adapters.Network]\ndriver = \"log\"\n\n[adapters.Alerts]\ndriver = \"log\"\n\n[[watch]]\nfields = [\"primary_status\"]\ndriver = \"exec\"\ncommand = [\"cat\", \"{}\"]\ninterval_ms = 20\n\n[resync]\ninterval_ms = 100\n",
            probe.display()
        ),
    )
    .unwrap();
    let data = dir.join("data");
    let d = Daemon::start(
        &["examples/database_routing.ved", "--config", config.to_str().unwrap(), "--data-dir", data.to_str().unwrap()],
        Some(TOKEN),
    );
    let get = |d: &Daemon| d.get("/v1/instances/DatabaseRouting").1;
    let journal = |d: &Daemon| d.get("/v1/instances/DatabaseRouting/journal").1["entries"].as_array().unwrap().clone();
    common::wait_for("the failover to complete", Duration::from_secs(120), || {
        let s = get(&d);
        s["status"] == "stable" && s["state"]["active_route"] == "replica"
    });
    let entries = journal(&d);
    let reading = entries.iter().find(|e| e["cause"] == "observe").expect("the reading");
    assert_eq!(reading["source"], "watch#1", "{entries:?}");
    // The failover's intents name the reading that caused them.
    let failover = entries.iter().find(|e| e["detail"] == "ExecuteFailover").expect("the failover");
    assert_eq!(failover["origin"], json!({"slice": reading["slice"], "cause": "observe", "source": "watch#1"}));
    // Readings keep coming (each one a slice), yet the journal does not grow.
    let slice = get(&d)["slice"].as_u64().unwrap();
    common::wait_for("three more resyncs", Duration::from_secs(120), || {
        get(&d)["slice"].as_u64().unwrap() >= slice + 3
    });
    assert_eq!(get(&d)["status"], "stable");
    assert_eq!(journal(&d), entries, "resyncs that changed nothing used up journal entries");
    let _ = d.terminate();
    // Replay accounts for them.
    let (code, out, err) = common::ved_text(&["replay", "--data-dir", data.to_str().unwrap(), "DatabaseRouting"], "");
    assert_eq!(code, 0, "{out}{err}");
}
