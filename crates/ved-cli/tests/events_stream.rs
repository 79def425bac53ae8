//! `GET /v1/events`: the daemon's events as Server-Sent Events, read while an instance
//! drifts and heals, filtered by instance, and resumed with `Last-Event-ID`.

mod common;

use common::Daemon;
use serde_json::Value as Json;
use std::io::{BufRead, BufReader};
use std::sync::mpsc;
use std::time::Duration;

const TOKEN: &str = "events-t0ken";
const LIMIT: Duration = Duration::from_secs(120);

/// One SSE event: its `id`, its `event` type (`message` when unnamed) and its data as JSON.
#[derive(Debug)]
struct Sse {
    id: Option<u64>,
    kind: String,
    data: Json,
}

/// Opens the stream at `path` (with `Last-Event-ID: last` if given) and delivers its events
/// on a channel, parsed as a browser's EventSource would.
fn open(d: &Daemon, path: &str, last: Option<u64>) -> mpsc::Receiver<Sse> {
    let mut req = d.agent.get(&format!("{}{path}", d.base));
    if let Some(id) = last {
        req = req.header("Last-Event-ID", &id.to_string());
    }
    let mut resp = req.call().unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let ctype = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    assert!(ctype.starts_with("text/event-stream"), "{ctype}");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let reader = BufReader::new(resp.body_mut().as_reader());
        let (mut id, mut kind, mut data) = (None, String::from("message"), String::new());
        for line in reader.lines().map_while(Result::ok) {
            if line.is_empty() {
                if !data.is_empty() {
                    let ev = Sse { id, kind: kind.clone(), data: serde_json::from_str(&data).unwrap() };
                    if tx.send(ev).is_err() {
                        return;
                    }
                }
                (id, kind, data) = (None, String::from("message"), String::new());
            } else if let Some(v) = line.strip_prefix("id:") {
                id = v.trim().parse().ok();
            } else if let Some(v) = line.strip_prefix("event:") {
                kind = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.strip_prefix(' ').unwrap_or(v));
            }
            // `:` lines are keep-alive comments.
        }
    });
    rx
}

/// Events from `rx` up to and including the first that `last` accepts.
fn until(rx: &mpsc::Receiver<Sse>, mut last: impl FnMut(&Sse) -> bool) -> Vec<Sse> {
    let mut seen = Vec::new();
    loop {
        let ev = rx.recv_timeout(LIMIT).unwrap_or_else(|e| panic!("{e}; so far: {seen:?}"));
        let done = last(&ev);
        seen.push(ev);
        if done {
            return seen;
        }
    }
}

#[test]
fn the_event_stream_shows_an_instance_heal_and_resumes_from_the_last_event_id() {
    let d = Daemon::start(&["examples/worker_pool.ved", "--ephemeral"], Some(TOKEN));
    let state = |d: &Daemon| d.get("/v1/instances/WorkerPool").1;
    common::wait_for("the pool to boot", LIMIT, || state(&d)["status"] == "stable");
    // A second instance, whose events the filtered stream must not carry.
    let (s, _) = d.post("/v1/instances", Some(TOKEN), br#"{"name": "Other", "domain": "WorkerPool", "state": {}}"#);
    assert_eq!(s, 201);
    let filtered = open(&d, "/v1/events?instance=WorkerPool", None);
    let everything = open(&d, "/v1/events", None);

    // Drift: two workers gone. Ved heals the pool back to five, and the stream shows it.
    let (s, body) = d.post("/v1/instances/WorkerPool/observations", Some(TOKEN), br#"{"workers": 3}"#);
    assert_eq!(s, 200, "{body}");
    let heal = until(&filtered, |e| e.data["event"] == "stable");
    let kinds: Vec<&str> = heal.iter().map(|e| e.data["event"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["slice", "slice", "slice", "stable"], "{heal:?}");
    assert_eq!(heal[0].data["changes"]["workers"], 3, "the drift first");
    assert_eq!(heal[2].data["changes"]["workers"], 5, "then the corrections");
    for e in &heal {
        // The SSE id is the line's `seq`; the data is the line `ved run` prints.
        assert_eq!(e.kind, "message");
        assert_eq!(e.id, e.data["seq"].as_u64(), "{e:?}");
        assert_eq!(e.data["instance"], "WorkerPool");
        assert!(e.data["time"].is_string() && e.data["at_ms"].is_u64(), "{e:?}");
    }
    assert!(heal.windows(2).all(|w| w[0].id < w[1].id), "in order: {heal:?}");

    // Only WorkerPool's events in the filtered stream; the other instance's in the full one.
    let (s, _) = d.post("/v1/instances/Other/observations", Some(TOKEN), br#"{"workers": 4}"#);
    assert_eq!(s, 200);
    let other = until(&everything, |e| e.data["instance"] == "Other" && e.data["event"] == "stable");
    assert!(other.iter().any(|e| e.data["instance"] == "WorkerPool"), "the full stream has both: {other:?}");
    let (s, _) = d.post("/v1/instances/WorkerPool/observations", Some(TOKEN), br#"{"workers": 4}"#);
    assert_eq!(s, 200);
    let next = until(&filtered, |e| e.data["event"] == "stable");
    assert!(next.iter().all(|e| e.data["instance"] == "WorkerPool"), "{next:?}");
    assert_eq!(next[0].data["changes"]["workers"], 4, "nothing of Other's in between: {next:?}");

    // A client that lost its connection after the drift resumes with the rest of the heal.
    let resumed = open(&d, "/v1/events?instance=WorkerPool", heal[0].id);
    let again = until(&resumed, |e| e.id == next.last().unwrap().id);
    let ids = |v: &[Sse]| v.iter().map(|e| e.id).collect::<Vec<_>>();
    let expected: Vec<Option<u64>> = ids(&heal[1..]).into_iter().chain(ids(&next)).collect();
    assert_eq!(ids(&again), expected);

    // A bad id is refused; a read token applies as to any read.
    let r = d.agent.get(&format!("{}/v1/events", d.base)).header("Last-Event-ID", "yesterday").call().unwrap();
    assert_eq!(r.status().as_u16(), 400);
    // The daemon stops cleanly with streams open.
    let (code, _) = d.terminate();
    assert_eq!(code, 0);
}
