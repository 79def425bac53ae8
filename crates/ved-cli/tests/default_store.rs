//! `ved run` is durable by default: without `--data-dir` its state lives in
//! `$XDG_STATE_HOME/ved/NAME` (else `~/.local/state/ved/NAME`), it says where, and a
//! restart without flags resumes from it. `--ephemeral` keeps nothing.
//! Every run here points `XDG_STATE_HOME`/`HOME` at a temporary directory of its own.

mod common;

use common::{root, tempdir};
use serde_json::Value as Json;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// `ved ARGS` with the given state home: exit code, events, stderr.
fn ved(args: &[&str], input: &str, xdg: Option<&Path>, home: &Path) -> (i32, Vec<Json>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ved"));
    cmd.env("HOME", home);
    match xdg {
        Some(x) => cmd.env("XDG_STATE_HOME", x),
        None => cmd.env_remove("XDG_STATE_HOME"),
    };
    let mut child = cmd
        .args(args)
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (
        out.status.code().unwrap_or(-1),
        text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn slices(events: &[Json]) -> usize {
    events.iter().filter(|e| e["event"] == "slice").count()
}

#[test]
fn a_restart_without_flags_resumes_from_the_default_state_directory() {
    let t = tempdir("default-store");
    let xdg = t.join("state");
    let home = t.join("home");
    let run = ["run", "examples/worker_pool.ved", "--stdin"];
    let (code, ev, err) = ved(&run, "{\"instance\":\"WorkerPool\",\"set\":{\"workers\":3}}\n", Some(&xdg), &home);
    assert_eq!(code, 0, "{err}");
    // The first event says where the state lives, and stderr says so too.
    assert_eq!(ev[0]["event"], "store", "{ev:?}");
    let dir = ev[0]["dir"].as_str().unwrap().to_string();
    let parent = Path::new(&dir).parent().unwrap();
    assert_eq!(parent, xdg.join("ved"), "{dir}");
    let name = Path::new(&dir).file_name().unwrap().to_str().unwrap();
    assert!(name.starts_with("worker_pool-") && name.len() == "worker_pool-".len() + 16, "{name}");
    assert!(err.contains(&dir), "{err}");
    assert!(ev.iter().any(|e| e["event"] == "ack"), "a durable run acknowledges its lines: {ev:?}");
    assert!(slices(&ev) > 0);

    // The restart resumes: no slice runs again (an in-memory start would scale up from 0),
    // and inspect shows the state the first run left.
    let (code, ev2, err) = ved(&run, "", Some(&xdg), &home);
    assert_eq!(code, 0, "{err}");
    assert_eq!(ev2[0]["event"], "store");
    assert_eq!(ev2[0]["dir"].as_str(), Some(dir.as_str()));
    assert_eq!(slices(&ev2), 0, "the state was still there: {ev2:?}");
    let out = Command::new(env!("CARGO_BIN_EXE_ved")).args(["inspect", "--data-dir", &dir, "--json"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("WorkerPool") && text.contains("\"workers\":5"), "{text}");

    // Run from elsewhere with an absolute path: the same program, the same directory.
    let abs = root().join("examples/worker_pool.ved");
    let (code, ev3, err) = ved(&["run", abs.to_str().unwrap(), "--stdin"], "", Some(&xdg), &home);
    assert_eq!(code, 0, "{err}");
    assert_eq!(ev3[0]["dir"].as_str(), Some(dir.as_str()));

    // Another program has a directory of its own.
    let (code, ev4, err) = ved(&["run", "examples/security_policy.ved", "--stdin"], "", Some(&xdg), &home);
    assert_eq!(code, 0, "{err}");
    assert_ne!(ev4[0]["dir"].as_str(), Some(dir.as_str()));
    assert!(!home.exists(), "nothing went to HOME while XDG_STATE_HOME was set");
    let _ = std::fs::remove_dir_all(&t);
}

#[test]
fn without_xdg_state_home_the_state_goes_under_home() {
    let t = tempdir("default-store-home");
    let home = t.join("home");
    let (code, ev, err) = ved(&["run", "examples/worker_pool.ved", "--stdin"], "", None, &home);
    assert_eq!(code, 0, "{err}");
    let dir = ev[0]["dir"].as_str().unwrap();
    assert!(Path::new(dir).starts_with(home.join(".local/state/ved")), "{dir}");
    assert!(Path::new(dir).join("manifest").exists());
    let _ = std::fs::remove_dir_all(&t);
}

#[test]
fn ephemeral_keeps_nothing_and_refuses_a_data_dir() {
    let t = tempdir("ephemeral");
    let xdg = t.join("state");
    let home = t.join("home");
    let run = ["run", "examples/worker_pool.ved", "--stdin", "--ephemeral"];
    let (code, ev, err) = ved(&run, "", Some(&xdg), &home);
    assert_eq!(code, 0, "{err}");
    assert!(ev.iter().all(|e| e["event"] != "store" && e["event"] != "ack"), "{ev:?}");
    assert!(slices(&ev) > 0);
    assert!(!xdg.exists() && !home.exists(), "an ephemeral run wrote nothing");
    // Twice: it starts afresh every time.
    let (_, ev2, _) = ved(&run, "", Some(&xdg), &home);
    assert_eq!(slices(&ev), slices(&ev2));

    let d = t.join("data");
    for extra in [vec!["--data-dir", d.to_str().unwrap()], vec!["--recover"], vec!["--durability", "none"]] {
        let mut args = run.to_vec();
        args.extend(extra.iter().copied());
        let (code, _, err) = ved(&args, "", Some(&xdg), &home);
        assert_eq!(code, 64, "a usage error: {args:?}: {err}");
        assert!(err.contains("--ephemeral") && err.contains("cannot be used with"), "{err}");
    }
    assert!(!d.exists() && !xdg.exists());
    let _ = std::fs::remove_dir_all(&t);
}

#[test]
fn with_no_home_at_all_it_asks_for_a_choice() {
    let out = Command::new(env!("CARGO_BIN_EXE_ved"))
        .args(["run", "examples/worker_pool.ved", "--stdin"])
        .env_remove("XDG_STATE_HOME")
        .env_remove("HOME")
        .current_dir(root())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "a usage error: {err}");
    assert!(err.contains("--ephemeral") && err.contains("--data-dir"), "{err}");
}
