//! `GET /metrics`: the daemon's figures in the Prometheus text format, scraped and parsed
//! as Prometheus would, while a pool of real processes loses a worker and heals.

mod common;

use common::{processes_running as members, tempdir, wait_for, Daemon};
use prometheus_parse::{Sample, Scrape, Value};
use std::time::Duration;

fn scrape(d: &Daemon, token: Option<&str>) -> (u16, String, String) {
    let mut req = d.agent.get(&format!("{}/metrics", d.base));
    if let Some(t) = token {
        req = req.header("Authorization", &format!("Bearer {t}"));
    }
    let mut r = req.call().unwrap();
    let status = r.status().as_u16();
    let ctype = r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    (status, ctype, r.body_mut().read_to_string().unwrap())
}

fn parse(text: &str) -> Scrape {
    Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap_or_else(|e| panic!("not parseable: {e}\n{text}"))
}

/// The samples named `name` whose labels include every pair of `labels`.
fn samples<'a>(s: &'a Scrape, name: &str, labels: &[(&str, &str)]) -> Vec<&'a Sample> {
    s.samples.iter().filter(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v))).collect()
}

fn number(s: &Sample) -> f64 {
    match s.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
        _ => panic!("{s:?} is not a number"),
    }
}

fn one(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found = samples(s, name, labels);
    assert_eq!(found.len(), 1, "{name} {labels:?}: {found:?}");
    number(found[0])
}

#[test]
fn metrics_report_instances_slices_intents_readings_and_fsyncs_while_a_pool_heals() {
    let dir = tempdir("metrics");
    // A marker only this test's pool uses, so that no other test's processes are counted.
    let (d, _cleanup, marker) = common::worker_pool_daemon(&dir, true, None);
    let member = ["sleep", marker.as_str()];
    let state = |d: &Daemon| d.get("/v1/instances/WorkerPool").1;
    wait_for("the pool to boot to 5", Duration::from_secs(120), || {
        state(&d)["status"] == "stable" && members(&member).len() == 5
    });
    // A worker dies for real; the watcher sees it, and Ved starts another.
    let victim = members(&member)[0];
    common::sh(&["kill", "-9", &victim.to_string()]);
    wait_for("the pool to heal", Duration::from_secs(120), || {
        let s = state(&d);
        s["status"] == "stable"
            && s["state"]["workers"] == 5
            && members(&member).len() == 5
            && !members(&member).contains(&victim)
    });
    let slice = state(&d)["slice"].as_u64().unwrap();

    let (status, ctype, text) = scrape(&d, None);
    assert_eq!(status, 200, "{text}");
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    let m = parse(&text);

    // Instances by domain and status: one, stable, and a zero for every other status.
    assert_eq!(one(&m, "ved_instances", &[("domain", "WorkerPool"), ("status", "stable")]), 1.0);
    for status in ["converging", "waiting", "stuck", "livelock", "degraded"] {
        assert_eq!(one(&m, "ved_instances", &[("domain", "WorkerPool"), ("status", status)]), 0.0, "{status}");
    }
    assert_eq!(one(&m, "ved_breakers_open", &[("domain", "WorkerPool")]), 0.0);
    // Every slice the instance ran since its store was new.
    assert_eq!(one(&m, "ved_slices_total", &[("domain", "WorkerPool")]), slice as f64, "{text}");
    assert_eq!(one(&m, "ved_retries_total", &[("domain", "WorkerPool")]), 0.0);
    // Six workers started (five at boot, one to heal), each an intent that succeeded.
    let started: f64 =
        samples(&m, "ved_intents_total", &[("adapter", "Workers"), ("result", "ok")]).iter().map(|s| number(s)).sum();
    assert_eq!(started, 6.0, "{text}");
    assert!(samples(&m, "ved_intents_total", &[("result", "failed")]).is_empty(), "{text}");
    assert_eq!(one(&m, "ved_intents_in_flight", &[]), 0.0);
    // The watcher's last reading is recent: it read the pool at the death and after.
    let ages = samples(&m, "ved_last_reading_age_seconds", &[]);
    assert_eq!(ages.len(), 1, "{text}");
    let age = number(ages[0]);
    assert!((0.0..600.0).contains(&age), "{age}");
    // Each group commit was an fsync, timed.
    let fsyncs = samples(&m, "ved_store_fsync_seconds", &[]);
    let Value::Histogram(buckets) = &fsyncs.first().unwrap_or_else(|| panic!("no fsync histogram: {text}")).value
    else {
        panic!("{fsyncs:?}")
    };
    let total = buckets.iter().map(|b| b.count).fold(0.0, f64::max);
    assert!(total >= 1.0, "{buckets:?}");
    assert!(buckets.windows(2).all(|w| w[0].count <= w[1].count), "cumulative buckets: {buckets:?}");

    // With a read token, a scrape needs it (or the write token).
    drop(d);
    let d = Daemon::start_with_env(
        &[
            "examples/demo/worker_pool/worker_pool.ved",
            "--config",
            dir.join("ved.toml").to_str().unwrap(),
            "--data-dir",
            dir.join("data").to_str().unwrap(),
        ],
        Some("write-t0ken"),
        &[("VED_API_READ_TOKEN", "read-t0ken")],
    );
    assert_eq!(scrape(&d, None).0, 401);
    assert_eq!(scrape(&d, Some("nope")).0, 401);
    for token in ["read-t0ken", "write-t0ken"] {
        let (status, _, text) = scrape(&d, Some(token));
        assert_eq!(status, 200, "{text}");
        parse(&text);
    }
}
