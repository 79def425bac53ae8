//! Kill `ved run --data-dir` with SIGKILL at random moments under load, restart it
//! on the same directory, and check what survived.
//!
//! `VED_CRASH_KILLS` sets the number of kills (default 30); `VED_CRASH_SEED` the
//! seed of the kill moments (a failure prints the seed that replays it).

mod common;

use common::{root, Rng};
use serde_json::Value as Json;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const PROGRAM: &str = "tests/data/crash/mirror.ved";

/// What one run of the child printed.
#[derive(Default)]
struct RunLog {
    acked_lines: Vec<u64>,
    delivered: Vec<(String, i64)>,
}

fn spawn(dir: &str) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_ved"))
        .args(["run", PROGRAM, "--stdin", "--data-dir", dir])
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Reads the child's events to the end; each acknowledged line number also goes to `acks`,
/// so that a kill can wait for a point in the work instead of a moment in time.
fn collect(stdout: std::process::ChildStdout, acks: mpsc::Sender<u64>) -> std::thread::JoinHandle<RunLog> {
    std::thread::spawn(move || {
        let mut log = RunLog::default();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // A kill can cut the last line short; it was never a complete event.
            let Ok(e) = serde_json::from_str::<Json>(&line) else { continue };
            match e["event"].as_str() {
                Some("ack") => {
                    let n = e["line"].as_u64().unwrap();
                    log.acked_lines.push(n);
                    let _ = acks.send(n);
                }
                Some("intent") => {
                    log.delivered.push((e["id"].as_str().unwrap().to_string(), e["args"][0].as_i64().unwrap()))
                }
                _ => {}
            }
        }
        log
    })
}

struct Snapshot {
    slice: u64,
    observed: i64,
    applied: i64,
    status: String,
    undelivered: BTreeSet<String>,
}

fn inspect(dir: &str) -> Option<Snapshot> {
    let out = Command::new(env!("CARGO_BIN_EXE_ved")).args(["inspect", "--data-dir", dir, "--json"]).output().unwrap();
    assert!(out.status.success(), "inspect failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let j: Json = serde_json::from_str(text.lines().next()?).unwrap();
    Some(Snapshot {
        slice: j["slice"].as_u64().unwrap(),
        observed: j["state"]["observed"].as_i64().unwrap(),
        applied: j["state"]["applied"].as_i64().unwrap(),
        status: j["status"].as_str().unwrap().to_string(),
        undelivered: j["undelivered"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["id"].as_str().unwrap().to_string())
            .collect(),
    })
}

#[test]
fn sigkill_at_random_moments_loses_nothing_acknowledged() {
    let kills: usize = std::env::var("VED_CRASH_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(30);
    let seed: u64 = std::env::var("VED_CRASH_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x5eed);
    let replay = format!("VED_CRASH_SEED={seed} VED_CRASH_KILLS={kills} cargo test -p ved-cli --test crash");
    let mut rng = Rng(seed);
    let dir = std::env::temp_dir().join(format!("ved-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_str().unwrap().to_string();

    let mut next_value: i64 = 1;
    let mut acked_max: i64 = 0;
    let mut prev: Option<Snapshot> = None;
    // Intent id -> how many times delivered, and the ids in flight at each kill.
    let mut deliveries: BTreeMap<String, usize> = BTreeMap::new();
    let mut in_flight_at_kills: BTreeSet<String> = BTreeSet::new();
    let mut recorded: BTreeSet<String> = BTreeSet::new();
    let mut killed_mid_work = 0;
    let mut killed_at_an_ack = 0;

    for round in 0..kills {
        let mut child = spawn(&d);
        let (acks_tx, acks) = mpsc::channel();
        let reader = collect(child.stdout.take().unwrap(), acks_tx);
        let mut stdin = child.stdin.take().unwrap();
        // Load: a burst of observations, each a new value.
        let burst = 50 + (rng.next() % 150) as i64;
        let first = next_value;
        let mut text = String::new();
        for v in first..first + burst {
            text.push_str(&format!("{{\"instance\":\"Mirror\",\"set\":{{\"observed\":{v}}}}}\n"));
        }
        next_value += burst;
        // The pipe may fill up if the child dies first; that is fine.
        if round % 2 == 0 {
            // At a random moment: at start-up, mid-recovery, mid-burst or after it.
            let _ = stdin.write_all(text.as_bytes());
            std::thread::sleep(Duration::from_millis(2 + rng.next() % 40));
        } else {
            // At a point in the work: the first `k` lines, then, once line `k` is acknowledged,
            // the rest of the burst and the kill right behind it, while the child reads,
            // applies and writes it (a deadline only guards against a hung child).
            let k = 1 + rng.next() as usize % (burst as usize / 2);
            let cut = text.match_indices('\n').nth(k - 1).map_or(text.len(), |(i, _)| i + 1);
            let _ = stdin.write_all(&text.as_bytes()[..cut]);
            let deadline = Instant::now() + Duration::from_secs(120);
            while let Ok(n) = acks.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                if n >= k as u64 {
                    break;
                }
            }
            let _ = stdin.write_all(&text.as_bytes()[cut..]);
            killed_at_an_ack += 1;
        }
        child.kill().unwrap(); // SIGKILL
        let _ = child.wait();
        drop(stdin);
        let log = reader.join().unwrap();
        if log.acked_lines.len() < burst as usize {
            killed_mid_work += 1;
        }
        for (id, _) in &log.delivered {
            *deliveries.entry(id.clone()).or_default() += 1;
        }
        if let Some(&max_line) = log.acked_lines.iter().max() {
            acked_max = acked_max.max(first + max_line as i64 - 1);
        }
        let Some(now) = inspect(&d) else {
            // Killed before the first snapshot reached the disk: nothing was acknowledged either.
            assert!(log.acked_lines.is_empty(), "round {round}: acknowledged lines but no snapshot\n{replay}");
            continue;
        };
        // Every acknowledged observation is present.
        assert!(now.observed >= acked_max, "round {round}: acked {acked_max}, store has {}\n{replay}", now.observed);
        // No state goes backwards.
        if let Some(p) = &prev {
            assert!(now.slice >= p.slice, "round {round}: slice went from {} to {}\n{replay}", p.slice, now.slice);
            assert!(now.observed >= p.observed, "round {round}: observed went backwards\n{replay}");
            assert!(now.applied >= p.applied, "round {round}: applied went backwards\n{replay}");
        }
        in_flight_at_kills.extend(now.undelivered.iter().cloned());
        recorded.extend(now.undelivered.iter().cloned());
        prev = Some(now);
    }

    // A last, clean run with no new input: undelivered intents go out again and it converges.
    let mut child = spawn(&d);
    let reader = collect(child.stdout.take().unwrap(), mpsc::channel().0);
    drop(child.stdin.take());
    let status = child.wait().unwrap();
    assert!(status.success(), "{replay}");
    let log = reader.join().unwrap();
    for (id, _) in &log.delivered {
        *deliveries.entry(id.clone()).or_default() += 1;
    }
    let end = inspect(&d).expect("a snapshot");
    assert_eq!(end.status, "stable", "{replay}");
    assert_eq!(end.applied, end.observed, "the domain converged\n{replay}");
    assert!(end.undelivered.is_empty(), "{replay}");
    // Every intent recorded as undelivered at some kill was delivered later.
    for id in &recorded {
        assert!(deliveries.contains_key(id), "{id} was recorded but never delivered\n{replay}");
    }
    // Duplicates only for intents that were in flight at a kill.
    for (id, n) in &deliveries {
        if *n > 1 {
            assert!(
                in_flight_at_kills.contains(id),
                "{id} delivered {n} times but was not in flight at a kill\n{replay}"
            );
        }
    }
    let duplicates = deliveries.values().filter(|n| **n > 1).count();
    eprintln!(
        "{kills} kills ({killed_mid_work} mid-work), highest acknowledged value {}, {} intents delivered, {duplicates} redelivered after a kill, final slice {}",
        acked_max,
        deliveries.len(),
        end.slice
    );
    assert!(acked_max > 0, "{replay}");
    // Half the kills land right behind the second part of a burst: a run in which not one of
    // them caught the child mid-work tested nothing.
    assert!(killed_at_an_ack == 0 || killed_mid_work >= 1, "none of {kills} kills landed mid-work\n{replay}");
    let _ = std::fs::remove_dir_all(&dir);
}
