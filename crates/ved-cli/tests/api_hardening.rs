//! The daemon's API against what a penetration tester tries (issue 13, defects 4 and 6): the read
//! token, the `Bearer` scheme in any case, two `Authorization` headers, JSON with duplicate keys,
//! and the audit log read a page at a time while writes go on.

mod common;

use common::{tempdir, ved_events, Daemon};
use serde_json::{json, Value as Json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

const WRITE: &str = "write-t0ken";
const READ: &str = "read-t0ken";

/// `Pool` converges `workers` to 5; every drift healed closes an audit episode, one entry.
const PROGRAM: &str = "domain Pool {\n  state {\n    workers: int\n  }\n  goal workers == 5\n  transition up {\n    step {\n      if workers < 5 {\n        workers += 1\n      }\n    }\n  }\n}\n";

fn start(dir: &Path, env: &[(&str, &str)]) -> Daemon {
    let prog = dir.join("pool.ved");
    std::fs::write(&prog, PROGRAM).unwrap();
    let data = dir.join("data");
    Daemon::start_with_env(&[prog.to_str().unwrap(), "--data-dir", data.to_str().unwrap()], Some(WRITE), env)
}

/// One request over a fresh connection with exactly the header lines given, so that a test can
/// send what an HTTP client library would not (two `Authorization` headers). Returns the status
/// and the JSON body.
fn raw(d: &Daemon, method: &str, path: &str, headers: &[&str], body: &str) -> (u16, Json) {
    raw_at(&d.base, method, path, headers, body)
}

fn raw_at(base: &str, method: &str, path: &str, headers: &[&str], body: &str) -> (u16, Json) {
    let addr = base.trim_start_matches("http://");
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    if !body.is_empty() {
        req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status: u16 = out.split(' ').nth(1).unwrap().parse().unwrap();
    let (head, rest) = out.split_once("\r\n\r\n").unwrap();
    // The body is small and may come chunked; the JSON object is between the first `{` and last `}`.
    let json = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        let start = rest.find('{').unwrap();
        let end = rest.rfind('}').unwrap();
        &rest[start..=end]
    } else {
        rest
    };
    (status, serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {out}")))
}

fn message(e: &Json) -> String {
    e["error"]["message"].as_str().unwrap_or_default().to_string()
}

fn workers(d: &Daemon) -> Json {
    let (s, r) = raw(d, "GET", "/v1/instances/Pool", &[&format!("Authorization: Bearer {READ}")], "");
    assert_eq!(s, 200, "{r}");
    r["state"]["workers"].clone()
}

#[test]
fn a_read_token_closes_reads_to_everyone_without_it() {
    let dir = tempdir("api-read-token");
    let d = start(&dir, &[("VED_API_READ_TOKEN", READ)]);
    for path in ["/v1/instances", "/v1/instances/Pool", "/v1/instances/Pool/journal", "/v1/audit"] {
        let (s, e) = raw(&d, "GET", path, &[], "");
        assert_eq!(s, 401, "{path} without a token: {e}");
        assert!(message(&e).contains("read token"), "{e}");
        let (s, e) = raw(&d, "GET", path, &["Authorization: Bearer wrong"], "");
        assert_eq!(s, 401, "{path} with a wrong token: {e}");
        for t in [READ, WRITE] {
            let (s, r) = raw(&d, "GET", path, &[&format!("Authorization: Bearer {t}")], "");
            assert_eq!(s, 200, "{path} with {t}: {r}");
        }
    }
    // Probes and the API's description stay open.
    assert_eq!(raw(&d, "GET", "/healthz", &[], "").0, 200);
    assert_eq!(raw(&d, "GET", "/v1/openapi.json", &[], "").0, 200);
    // The read token does not write.
    let (s, e) = raw(
        &d,
        "POST",
        "/v1/instances/Pool/observations",
        &[&format!("Authorization: Bearer {READ}")],
        r#"{"workers": 1}"#,
    );
    assert_eq!(s, 401, "{e}");
    assert_eq!(workers(&d), 5);
}

#[test]
fn reads_are_open_without_a_read_token() {
    let dir = tempdir("api-open-reads");
    let d = start(&dir, &[]);
    let (s, r) = raw(&d, "GET", "/v1/instances/Pool", &[], "");
    assert_eq!(s, 200, "{r}");
    let (s, r) = raw(&d, "GET", "/v1/audit", &[], "");
    assert_eq!(s, 200, "{r}");
}

#[test]
fn the_bearer_scheme_is_case_insensitive_and_two_authorization_headers_are_refused() {
    let dir = tempdir("api-bearer");
    let d = start(&dir, &[]);
    let observe = |headers: &[&str], n: i64| {
        raw(&d, "POST", "/v1/instances/Pool/observations", headers, &json!({"workers": n}).to_string())
    };
    for (i, scheme) in ["bearer", "BEARER", "BeArEr"].iter().enumerate() {
        let (s, r) = observe(&[&format!("Authorization: {scheme} {WRITE}")], i as i64);
        assert_eq!(s, 200, "scheme `{scheme}`: {r}");
    }
    let before = workers(&d);
    let auth = format!("Authorization: Bearer {WRITE}");
    let (s, e) = observe(&[&auth, &auth], 1);
    assert_eq!(s, 400, "{e}");
    assert!(message(&e).contains("more than one `Authorization` header"), "{e}");
    let (s, e) = observe(&[&auth, "Authorization: Bearer other"], 1);
    assert_eq!(s, 400, "{e}");
    let (s, e) = observe(&[&format!("Authorization: Basic {WRITE}")], 1);
    assert_eq!(s, 401, "{e}");
    let (s, e) = observe(&[&format!("Authorization: Bearer {WRITE}x")], 1);
    assert_eq!(s, 401, "{e}");
    // A prefix of the token is no better than any other wrong token.
    let (s, e) = observe(&[&format!("Authorization: Bearer {}", &WRITE[..4])], 1);
    assert_eq!(s, 401, "{e}");
    assert_eq!(workers(&d), before, "a refused write changed the state");
}

#[test]
fn a_body_with_a_duplicate_key_is_refused_and_changes_nothing() {
    let dir = tempdir("api-dup-keys");
    let d = start(&dir, &[]);
    let auth = format!("Authorization: Bearer {WRITE}");
    let before = workers(&d);
    let (s, e) = raw(&d, "POST", "/v1/instances/Pool/observations", &[&auth], r#"{"workers": 1, "workers": 9}"#);
    assert_eq!(s, 400, "{e}");
    assert!(message(&e).contains("workers"), "{e}");
    let (s, e) = raw(
        &d,
        "POST",
        "/v1/observations",
        &[&auth],
        r#"[{"instance": "Pool", "set": {"workers": 1}, "instance": "Other"}]"#,
    );
    assert_eq!(s, 400, "{e}");
    assert!(message(&e).contains("instance"), "{e}");
    let (s, e) = raw(
        &d,
        "POST",
        "/v1/instances",
        &[&auth],
        r#"{"name": "p2", "domain": "Pool", "state": {"workers": 1, "workers": 2}}"#,
    );
    assert_eq!(s, 400, "{e}");
    assert_eq!(raw(&d, "GET", "/v1/instances/p2", &[], "").0, 404, "a refused create created");
    assert_eq!(workers(&d), before);
}

#[test]
fn a_stdin_line_with_a_duplicate_key_is_an_error_event_and_the_next_line_applies() {
    let dir = tempdir("stdin-dup-keys");
    let prog = dir.join("pool.ved");
    std::fs::write(&prog, PROGRAM).unwrap();
    let input = "{\"instance\": \"Pool\", \"set\": {\"workers\": 1, \"workers\": 9}}\n{\"instance\": \"Pool\", \"set\": {\"workers\": 2}}\n";
    let (code, events, err) = ved_events(&["run", "--stdin", "--ephemeral", prog.to_str().unwrap()], input);
    assert_eq!(code, 0, "{err}");
    let errors: Vec<&Json> = events.iter().filter(|e| e["event"] == "error").collect();
    assert_eq!(errors.len(), 1, "{events:?}");
    assert!(errors[0]["message"].as_str().unwrap().contains("workers"), "{}", errors[0]);
    assert_eq!(errors[0]["line"], 1, "{}", errors[0]);
    // Only the second line was applied: one observation, of 2, then the pool healed.
    let observed: Vec<&Json> =
        events.iter().filter(|e| e["event"] == "slice" && e["cause"]["kind"] == "observe").collect();
    assert_eq!(observed.len(), 1, "{events:?}");
    assert!(observed[0]["changes"].to_string().contains('2'), "{}", observed[0]);
}

/// Every entry, following `next` from page to page.
fn all_audit(base: &str, limit: usize) -> (Vec<Json>, usize) {
    let mut out = Vec::new();
    let mut after = 0u64;
    let mut pages = 0;
    loop {
        let (s, page) = raw_at(base, "GET", &format!("/v1/audit?after={after}&limit={limit}"), &[], "");
        assert_eq!(s, 200, "{page}");
        pages += 1;
        let entries = page["entries"].as_array().unwrap();
        assert!(entries.len() <= limit);
        out.extend(entries.iter().cloned());
        match page["next"].as_u64() {
            Some(n) => {
                assert_eq!(n, out.last().unwrap()["seq"].as_u64().unwrap(), "{page}");
                after = n;
            }
            None => {
                assert_eq!(page["committed"].as_u64().unwrap(), out.len() as u64);
                return (out, pages);
            }
        }
    }
}

#[test]
fn the_audit_log_is_read_page_by_page_while_writes_go_on() {
    let dir = tempdir("api-audit-pages");
    let d = start(&dir, &[]);
    let auth = format!("Authorization: Bearer {WRITE}");
    let fleet: Vec<Json> = (0..600).map(|n| json!({"name": format!("p{n:03}"), "domain": "Pool"})).collect();
    let (s, r) = raw(&d, "POST", "/v1/instances", &[&auth], &Json::Array(fleet).to_string());
    assert_eq!(s, 201, "{r}");
    // Each pool drifts to 1 and heals: one audit entry per instance.
    let drift: Vec<Json> = (0..600).map(|n| json!({"instance": format!("p{n:03}"), "set": {"workers": 1}})).collect();
    let (s, r) = raw(&d, "POST", "/v1/observations", &[&auth], &Json::Array(drift).to_string());
    assert_eq!(s, 200, "{r}");

    // Readers page through the log while writes go on; every write is answered and applied.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let base = d.base.as_str();
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let (entries, _) = all_audit(base, 1000);
                    assert!(entries.len() >= 600);
                }
            });
        }
        for n in 0..20 {
            let (s, r) =
                raw(&d, "POST", "/v1/instances/Pool/observations", &[&auth], &json!({"workers": n % 4}).to_string());
            assert_eq!(s, 200, "{r}");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    assert_eq!(workers(&d), 5);

    let (entries, pages) = all_audit(&d.base, 100);
    assert!(entries.len() >= 620, "{} entries", entries.len());
    assert!(pages >= 7, "{pages} pages");
    // In order, none skipped, none twice, and chained.
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e["seq"].as_u64().unwrap(), i as u64 + 1, "{e}");
        if i > 0 {
            assert_eq!(e["prev"], entries[i - 1]["hash"], "{e}");
        }
    }
    // A page from the middle starts right after `after`.
    let (_, mid) = raw(&d, "GET", "/v1/audit?after=250&limit=3", &[], "");
    let mid = mid["entries"].as_array().unwrap().clone();
    assert_eq!(mid, entries[250..253].to_vec());
    // Past the end: nothing, and no next page.
    let (_, end) = raw(&d, "GET", &format!("/v1/audit?after={}", entries.len()), &[], "");
    assert_eq!(end["entries"], json!([]));
    assert_eq!(end["next"], Json::Null);
    for bad in ["limit=0", "limit=1001", "after=-1", "after=x", "page=2"] {
        let (s, e) = raw(&d, "GET", &format!("/v1/audit?{bad}"), &[], "");
        assert_eq!(s, 400, "{bad}: {e}");
    }

    // What the API served is what the store holds.
    let (code, lines) = d.terminate();
    assert_eq!(code, 0, "{lines:?}");
    let (code, text, err) =
        common::ved_text(&["audit", "--data-dir", dir.join("data").to_str().unwrap(), "--json"], "");
    assert_eq!(code, 0, "{err}");
    let stored: Vec<Json> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(stored[..entries.len()].to_vec(), entries);
}
