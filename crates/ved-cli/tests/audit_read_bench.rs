//! Do readers of a long audit log slow the daemon's writes? (issue 13, defect 4: four readers
//! of a 27 MB log once pushed a write's median latency from 1.1 ms to 4.2 s.) Not part of the
//! normal test run:
//!
//! ```sh
//! cargo test --release -p ved-cli --test audit_read_bench -- --ignored --nocapture
//! ```
//!
//! A `ved run --data-dir` daemon gets an audit log of `VED_AUDIT_BENCH_ENTRIES` entries (default
//! 90,000, about 27 MB) from fleets that drift and heal. Then, in the same run, the same writes
//! (one observation each, answered once durable) are timed twice: alone (the baseline), and while
//! four readers page through the whole log with `GET /v1/audit?limit=1000` without pause. It
//! prints both medians and p99s, their ratio, and the readers' pages per second.

mod common;

use common::{tempdir, Daemon};
use serde_json::{json, Value as Json};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const TOKEN: &str = "bench-t0ken";
const PROGRAM: &str = "domain Pool {\n  state {\n    workers: int\n  }\n  goal workers == 5\n  transition up {\n    step {\n      if workers < 5 {\n        workers += 1\n      }\n    }\n  }\n}\n";
const WRITES: usize = 400;

fn post(agent: &ureq::Agent, url: &str, body: &Json) -> u16 {
    let mut r = agent
        .post(url)
        .header("Authorization", &format!("Bearer {TOKEN}"))
        .header("Content-Type", "application/json")
        .send(body.to_string().as_bytes())
        .unwrap();
    let _ = r.body_mut().read_to_string();
    r.status().as_u16()
}

fn timed_writes(d: &Daemon) -> Vec<Duration> {
    let url = format!("{}/v1/instances/Pool/observations", d.base);
    let mut out: Vec<Duration> = (0..WRITES)
        .map(|n| {
            let t = Instant::now();
            assert_eq!(post(&d.agent, &url, &json!({"workers": n % 4})), 200);
            t.elapsed()
        })
        .collect();
    out.sort();
    out
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[test]
#[ignore]
fn readers_of_a_long_audit_log_do_not_slow_writes() {
    let entries: usize = std::env::var("VED_AUDIT_BENCH_ENTRIES").ok().and_then(|v| v.parse().ok()).unwrap_or(90_000);
    let dir = tempdir("audit-bench");
    let prog = dir.join("pool.ved");
    std::fs::write(&prog, PROGRAM).unwrap();
    let data = dir.join("data");
    let d = Daemon::start(&[prog.to_str().unwrap(), "--data-dir", data.to_str().unwrap()], Some(TOKEN));

    // Fleets of 10,000 that each drift once: one audit entry per instance.
    let mut made = 0;
    while made < entries {
        let n = (entries - made).min(10_000);
        let fleet: Vec<Json> =
            (made..made + n).map(|i| json!({"name": format!("p{i:06}"), "domain": "Pool"})).collect();
        assert_eq!(post(&d.agent, &format!("{}/v1/instances", d.base), &Json::Array(fleet)), 201);
        let drift: Vec<Json> =
            (made..made + n).map(|i| json!({"instance": format!("p{i:06}"), "set": {"workers": 1}})).collect();
        assert_eq!(post(&d.agent, &format!("{}/v1/observations", d.base), &Json::Array(drift)), 200);
        made += n;
    }
    let size = std::fs::metadata(data.join("audit.log")).map(|m| m.len()).unwrap_or(0);

    let alone = timed_writes(&d);
    let stop = AtomicBool::new(false);
    let pages = AtomicUsize::new(0);
    let base = d.base.clone();
    let (busy, read_for) = std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
                while !stop.load(Ordering::Relaxed) {
                    let mut after = 0u64;
                    loop {
                        let mut r = agent.get(&format!("{base}/v1/audit?after={after}&limit=1000")).call().unwrap();
                        let page: Json = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
                        pages.fetch_add(1, Ordering::Relaxed);
                        match page["next"].as_u64() {
                            Some(n) if !stop.load(Ordering::Relaxed) => after = n,
                            _ => break,
                        }
                    }
                }
            });
        }
        let t = Instant::now();
        let busy = timed_writes(&d);
        let read_for = t.elapsed();
        stop.store(true, Ordering::Relaxed);
        (busy, read_for)
    });
    let pct = |v: &[Duration], p: usize| v[(v.len() * p / 100).min(v.len() - 1)];
    let pages = pages.load(Ordering::Relaxed);
    println!("audit log: {made} entries, {:.1} MB; {WRITES} writes each way", size as f64 / 1e6);
    println!("writes alone:           median {:.2} ms, p99 {:.2} ms", ms(pct(&alone, 50)), ms(pct(&alone, 99)));
    println!(
        "writes with 4 readers:  median {:.2} ms, p99 {:.2} ms ({pages} pages of 1000 read, {:.0} pages/s)",
        ms(pct(&busy, 50)),
        ms(pct(&busy, 99)),
        pages as f64 / read_for.as_secs_f64()
    );
    println!("median ratio (with readers / alone): {:.2}x", ms(pct(&busy, 50)) / ms(pct(&alone, 50)));
    assert!(pages > 0, "the readers read nothing");
}
