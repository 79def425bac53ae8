//! Relative observations (`add`): alerts that report an event ("a worker died")
//! rather than a reading. Two that arrive together both count, once each, so a
//! pool of real processes is repaired exactly, without overshoot (seed 003).

mod common;

use common::{tempdir, ved_events, wait_for, Daemon};
use std::time::Duration;

const TOKEN: &str = "relative-t0ken";

use common::processes_running as members;

#[test]
fn two_relative_alerts_on_stdin_are_both_applied_before_the_pool_reacts() {
    let input = concat!(
        r#"{"instance": "WorkerPool", "add": {"workers": -1}}"#,
        "\n",
        r#"{"instance": "WorkerPool", "add": {"workers": -1}}"#,
        "\n",
    );
    let (code, events, err) = ved_events(&["run", "examples/worker_pool.ved", "--stdin", "--ephemeral"], input);
    assert_eq!(code, 0, "{err}");
    let values: Vec<i64> =
        events.iter().filter(|e| e["event"] == "slice").filter_map(|e| e["changes"]["workers"].as_i64()).collect();
    // Boot to 5; then each alert lowers the count by one and the pool is repaired: both
    // alerts count, and the count never goes above 5.
    assert_eq!(&values[..5], &[1, 2, 3, 4, 5], "{events:?}");
    assert!(values.iter().all(|w| *w <= 5), "overshoot: {values:?}");
    let ups = events.iter().filter(|e| e["cause"]["transition"] == "scale_up").count();
    assert_eq!(ups, 7, "5 at boot and one per alert: {events:?}");
    assert_eq!(values.last(), Some(&5));
    assert_eq!(events.last().map(|e| e["event"].clone()), Some("stable".into()), "{events:?}");
}

#[test]
fn bad_relative_observations_are_refused_with_a_reason() {
    let cases: &[(&str, &str)] = &[
        (r#"{"instance": "WorkerPool", "add": {"workers": "one"}}"#, "must be an integer delta"),
        (r#"{"instance": "WorkerPool", "add": {"wrokers": 1}}"#, "has no field `wrokers`"),
        (r#"{"instance": "WorkerPool", "add": {"workers": 1}, "set": {"workers": 2}}"#, "`add` stands without `set`"),
        (r#"{"instance": "WorkerPool", "add": 3}"#, "`add` must be an object"),
        (r#"{"instance": "WorkerPool", "add": {}}"#, "`add` is empty"),
        (r#"{"instance": "WorkerPool", "add": {"workers": 9223372036854775807}}"#, "overflow"),
    ];
    for (line, says) in cases {
        let (code, events, err) =
            ved_events(&["run", "examples/worker_pool.ved", "--stdin", "--ephemeral"], &format!("{line}\n"));
        assert_eq!(code, 0, "{err}");
        let text = serde_json::to_string(&events).unwrap();
        assert!(text.contains(says), "`{line}` should be refused saying `{says}`: {text}");
        // Nothing changed: the pool is still at 5.
        let workers: Vec<i64> = events.iter().filter_map(|e| e["changes"]["workers"].as_i64()).collect();
        assert_eq!(workers.last(), Some(&5), "{text}");
    }
}

#[test]
fn two_alerts_posted_together_to_the_daemon_repair_a_real_pool_without_overshoot() {
    let dir = tempdir("relative");
    // A marker only this test's pool uses, so parallel tests cannot be miscounted. No
    // watcher: the alerts are the only news of deaths, as in seed 003.
    let (d, _cleanup, marker) = common::worker_pool_daemon(&dir, false, Some(TOKEN));
    let member = ["sleep", marker.as_str()];
    let state = |d: &Daemon| d.get("/v1/instances/WorkerPool").1;
    wait_for("the pool to boot to 5", Duration::from_secs(120), || state(&d)["status"] == "stable");
    assert_eq!(members(&member).len(), 5);

    // Two workers die; each monitoring alert says so, both at once.
    let pids = members(&member);
    for pid in &pids[..2] {
        common::sh(&["kill", "-9", &pid.to_string()]);
    }
    wait_for("the two workers to be gone", Duration::from_secs(120), || members(&member).len() == 3);
    let obs = "/v1/instances/WorkerPool/observations";
    let (base, agent) = (&d.base, &d.agent);
    std::thread::scope(|s| {
        let posts: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(move || {
                    agent
                        .post(&format!("{base}{obs}"))
                        .header("Authorization", &format!("Bearer {TOKEN}"))
                        .send(&br#"{"add": {"workers": -1}}"#[..])
                        .unwrap()
                        .status()
                        .as_u16()
                })
            })
            .collect();
        for p in posts {
            assert_eq!(p.join().unwrap(), 200);
        }
    });
    wait_for("the pool to be stable at 5", Duration::from_secs(120), || {
        let s = state(&d);
        s["status"] == "stable" && s["state"]["workers"] == 5
    });
    assert_eq!(members(&member).len(), 5, "exactly two replacements were started");

    // The journal shows the two alerts, then exactly two starts, never above 5.
    let journal = d.get("/v1/instances/WorkerPool/journal").1;
    let entries = journal["entries"].as_array().unwrap();
    let starts = entries
        .iter()
        .flat_map(|e| e["intents"].as_array().cloned().unwrap_or_default())
        .filter(|i| i.to_string().contains("Workers.Start"))
        .count();
    assert_eq!(starts, 7, "5 at boot and 2 replacements: {journal}");
    for e in entries {
        for (field, value) in e["changes"].as_array().into_iter().flatten().filter_map(|c| {
            let c = c.as_array()?;
            Some((c.first()?.as_str()?.to_string(), c.get(1)?.as_str()?.to_string()))
        }) {
            if field == "workers" {
                assert!(value.parse::<i64>().unwrap() <= 5, "overshoot: {e}");
            }
        }
    }
    // Each alert is journaled as what it was, a relative change, with its source.
    let alerts: Vec<&serde_json::Value> =
        entries.iter().filter(|e| e["added"] == serde_json::json!([["workers", -1]])).collect();
    assert_eq!(alerts.len(), 2, "{journal}");
    assert!(alerts.iter().all(|e| e["cause"] == "observe" && e["source"] == "api"), "{journal}");
    let (s, e) = d.post(obs, Some(TOKEN), br#"{"add": {"workers": -1}, "workers": 3}"#);
    assert_eq!((s, e["error"]["message"].as_str().map(|m| m.contains("stands alone"))), (400, Some(true)), "{e}");
    let (s, e) = d.post(obs, Some(TOKEN), br#"{"add": {"workers": "x"}}"#);
    assert_eq!(s, 400, "{e}");
    drop(d);
    // Replay feeds the alerts again as `add`, and reproduces every slice.
    let (code, out, err) =
        common::ved_text(&["replay", "--data-dir", dir.join("data").to_str().unwrap(), "WorkerPool"], "");
    assert_eq!(code, 0, "{out}{err}");
}
