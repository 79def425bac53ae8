//! Operational logs on stderr: `RUST_LOG` chooses which, `--log-format json` writes one
//! object per line, every API request is in the access log without its token, and the
//! events on stdout stay what they were.

mod common;

use common::{wait_for, Daemon};
use serde_json::Value as Json;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

const TOKEN: &str = "s3cret-log-t0ken";

/// Runs the daemon with `args` and `RUST_LOG=filter`, makes `requests` (method, path, body)
/// with the token, stops it, and returns (stdout lines after `listening`, stderr text).
fn run(args: &[&str], filter: &str, requests: &[(&str, &str, &str)]) -> (Vec<Json>, String) {
    let mut argv = vec!["examples/worker_pool.ved", "--ephemeral"];
    argv.extend_from_slice(args);
    let mut d = Daemon::start_with_env(&argv, Some(TOKEN), &[("RUST_LOG", filter)]);
    let auth = format!("Bearer {TOKEN}");
    for (method, path, body) in requests {
        let url = format!("{}{path}", d.base);
        let status = match *method {
            "POST" => d.agent.post(&url).header("Authorization", &auth).send(body.as_bytes()).unwrap().status(),
            _ => d.agent.get(&url).header("Authorization", &auth).call().unwrap().status(),
        };
        assert!(status.as_u16() > 0);
    }
    Command::new("kill").args(["-TERM", &d.child.id().to_string()]).status().unwrap();
    assert!(d.child.wait().unwrap().success());
    // Every line on stdout is an event: logs never go there.
    let events = d
        .lines
        .iter()
        .map(|l| serde_json::from_str(&l).unwrap_or_else(|e| panic!("stdout is events only: {l}: {e}")))
        .collect();
    wait_for("the end of stderr", Duration::from_secs(120), || d.stderr_closed.load(Ordering::SeqCst));
    let err = d.stderr.lock().unwrap().clone();
    (events, err)
}

#[test]
fn json_logs_carry_an_access_line_per_request_and_never_the_token() {
    let requests = [
        ("GET", "/v1/instances", ""),
        ("POST", "/v1/instances/WorkerPool/observations", r#"{"workers": 3}"#),
        ("GET", "/nope?token=x", ""),
    ];
    let (events, err) = run(&["--log-format", "json"], "info", &requests);
    assert!(events.iter().all(|e| e["event"].is_string()), "{events:?}");
    assert!(!err.contains(TOKEN), "the token leaked into the logs:\n{err}");
    let logs: Vec<Json> =
        err.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}"))).collect();
    for l in &logs {
        assert!(l["timestamp"].is_string() && l["level"].is_string() && l["fields"]["message"].is_string(), "{l}");
    }
    let access: Vec<&Json> = logs.iter().filter(|l| l["target"] == "ved::access").collect();
    let seen: Vec<(String, String, u64)> = access
        .iter()
        .map(|l| {
            let f = &l["fields"];
            (f["method"].as_str().unwrap().into(), f["path"].as_str().unwrap().into(), f["status"].as_u64().unwrap())
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("GET".to_string(), "/v1/instances".to_string(), 200),
            ("POST".into(), "/v1/instances/WorkerPool/observations".into(), 200),
            // The path only: a query never reaches the log.
            ("GET".into(), "/nope".into(), 404),
        ]
    );
    assert!(access.iter().all(|l| l["level"] == "INFO" && l["fields"]["ms"].is_f64()), "{access:?}");
}

#[test]
fn rust_log_chooses_which_logs_are_written() {
    let requests = [("GET", "/v1/instances", "")];
    let (_, err) = run(&[], "warn", &requests);
    assert!(!err.contains("/v1/instances"), "an info line passed a warn filter:\n{err}");
    let (_, err) = run(&[], "ved::access=info", &requests);
    assert!(err.contains("GET /v1/instances 200") && err.contains("INFO"), "{err}");
    // A filter that does not parse is reported, and the default is used.
    let (_, err) = run(&[], "=[", &requests);
    assert!(err.contains("RUST_LOG") && err.contains("GET /v1/instances 200"), "{err}");
}
