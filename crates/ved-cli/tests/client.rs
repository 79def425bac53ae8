//! `ved get`, `ved describe`, `ved watch` and `ved observe` against a running daemon.

mod common;

use common::Daemon;
use serde_json::Value as Json;
use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const TOKEN: &str = "client-t0ken";

/// `ved ARGS` with `env`, the client's variables cleared first.
fn ved(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ved"));
    cmd.args(args).env_remove("VED_SERVER").env_remove("VED_TOKEN").env_remove("VED_API_TOKEN");
    cmd.envs(env.iter().copied()).output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn get_describe_observe_and_watch_a_running_daemon() {
    let d = Daemon::start(&["examples/worker_pool.ved", "--ephemeral"], Some(TOKEN));
    let server = d.base.clone();
    common::wait_for("the pool to boot", Duration::from_secs(120), || {
        d.get("/v1/instances/WorkerPool").1["status"] == "stable"
    });
    let s = server.as_str();

    // `ved get`: a table, then the same as JSON; the server from the flag or VED_SERVER.
    let o = ved(&["get", "--server", s], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<String> = stdout(&o).lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).collect();
    assert_eq!(lines, ["NAME DOMAIN STATUS SLICE", "WorkerPool WorkerPool stable 5"]);
    let o = ved(&["get", "-o", "json"], &[("VED_SERVER", s)]);
    let v: Json = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["instances"][0]["name"], "WorkerPool");
    let o = ved(&["get", "WorkerPool", "-o", "json", "--server", s], &[]);
    let v: Json = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((v["name"].as_str(), v["state"]["workers"].as_i64()), (Some("WorkerPool"), Some(5)));
    let o = ved(&["get", "Nobody", "--server", s], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("Nobody") && stderr(&o).contains("404"), "{}", stderr(&o));

    // A follower of the pool's events, started before the drift.
    let mut watch = Command::new(env!("CARGO_BIN_EXE_ved"))
        .args(["watch", "WorkerPool", "-o", "json", "--server", s])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut watched = BufReader::new(watch.stdout.take().unwrap()).lines();

    // `ved observe`: refused without a token, with a hint; applied with one (env or file).
    let o = ved(&["observe", "WorkerPool", "workers=3", "--server", s], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("401") && stderr(&o).contains("hint"), "{}", stderr(&o));
    let o = ved(&["observe", "WorkerPool", "workers=3", "--server", s], &[("VED_TOKEN", TOKEN)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("WorkerPool: slice "), "{}", stdout(&o));
    // The watcher saw the drift and the heal.
    let mut seen = Vec::new();
    for l in watched.by_ref() {
        let e: Json = serde_json::from_str(&l.unwrap()).unwrap();
        let stable = e["event"] == "stable";
        seen.push(e);
        if stable {
            break;
        }
    }
    assert_eq!(seen[0]["changes"]["workers"], 3, "{seen:?}");
    assert!(seen.iter().all(|e| e["instance"] == "WorkerPool"), "{seen:?}");
    let _ = watch.kill();
    let _ = watch.wait();

    let token_file = common::tempdir("client").join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let o = ved(
        &[
            "observe",
            "WorkerPool",
            "workers=4",
            "-o",
            "json",
            "--server",
            s,
            "--token-file",
            token_file.to_str().unwrap(),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Json = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["name"], "WorkerPool");
    let o = ved(&["observe", "WorkerPool", "workers", "--server", s], &[("VED_TOKEN", TOKEN)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("FIELD=VALUE"), "{}", stderr(&o));

    // `ved describe`: state, goals, pending, and the recent journal with the drift in it.
    let o = ved(&["describe", "WorkerPool", "--server", s], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    for says in [
        "Name:     WorkerPool",
        "Status:   stable",
        "State:\n  workers: 5",
        "Goals:\n",
        "Pending:  none",
        "Recent journal:",
        "workers = 4",
    ] {
        assert!(text.contains(says), "`{says}` missing from:\n{text}");
    }
    let o = ved(&["describe", "WorkerPool", "-o", "json", "--recent", "3", "--server", s], &[]);
    let v: Json = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["journal"].as_array().unwrap().len(), 3);
    assert!(v["goals"].is_array() && v["pending"].is_array(), "{v}");

    // Nobody there: a clear error and a hint.
    let o = ved(&["get", "--server", "http://127.0.0.1:9"], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("cannot reach the daemon at http://127.0.0.1:9") && stderr(&o).contains("hint"),
        "{}",
        stderr(&o)
    );
}
