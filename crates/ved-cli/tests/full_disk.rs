//! A full disk under the daemon (issue 13, defect 8): writes fail cleanly, `/healthz` says
//! so, nothing acknowledged is lost, no intent leaves without its slice, and Ved goes on once
//! space returns, without a restart and after one. The data directory is a small tmpfs
//! (`mount` needs root; without it the tests say SKIPPED).

mod common;

use common::{root, tempdir, Daemon, Webhook};
use serde_json::Value as Json;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use ved_testkit::{fill, Tmpfs};

const TOKEN: &str = "full-disk";
const LIMIT: Duration = Duration::from_secs(120);

/// Every observation adds one to `count`; each new count is sent to the webhook.
const PROGRAM: &str = "domain Mirror {\nstate {\ncount: int = 0\nsent: int = 0\n}\n}\ngoal sent == count\n\
transition Send {\nstep {\nif sent != count {\nemit Sink.Apply(count)\nsent = count\n}\n}\n}\n";

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < LIMIT, "timed out after {LIMIT:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

struct Setup {
    _fs: Tmpfs,
    mnt: PathBuf,
    data: PathBuf,
    program: PathBuf,
    config: PathBuf,
    hook: Webhook,
}

fn setup(tag: &str) -> Option<Setup> {
    let dir = tempdir(tag);
    let fs = Tmpfs::mount(dir.join("mnt"), "8m")?;
    let hook = Webhook::start(Vec::new());
    let program = dir.join("mirror.ved");
    std::fs::write(&program, PROGRAM).unwrap();
    let config = dir.join("ved.toml");
    std::fs::write(&config, format!("[adapters.Sink]\ndriver = \"http\"\nurl = \"{}\"\ntimeout_ms = 5000\n", hook.url))
        .unwrap();
    let mnt = fs.0.clone();
    Some(Setup { _fs: fs, data: mnt.join("store"), mnt, program, config, hook })
}

/// The daemon on the setup's store, with an agent that waits as long as the test would, and
/// its stderr collected.
fn start(s: &Setup) -> (Daemon, Arc<Mutex<String>>) {
    let args =
        [s.program.to_str().unwrap(), "--config", s.config.to_str().unwrap(), "--data-dir", s.data.to_str().unwrap()];
    let mut d = Daemon::start(&args, Some(TOKEN));
    d.agent = ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(LIMIT)).build().into();
    let err = d.stderr.clone();
    (d, err)
}

/// `add one` to `Mirror`'s count, through the API at `base`.
fn add_one_at(agent: &ureq::Agent, base: &str) -> Option<(u16, Json)> {
    let url = format!("{base}/v1/instances/Mirror/observations");
    let req = agent.post(&url).header("Content-Type", "application/json");
    let mut r = req.header("Authorization", &format!("Bearer {TOKEN}")).send(&br#"{"add": {"count": 1}}"#[..]).ok()?;
    let status = r.status().as_u16();
    Some((status, serde_json::from_str(&r.body_mut().read_to_string().ok()?).unwrap()))
}

fn add_one(d: &Daemon) -> (u16, Json) {
    add_one_at(&d.agent, &d.base).expect("the daemon answers")
}

/// Posts `add one` again and again from another thread until `stop`; counts the 200s and the
/// 503s, and fails on any other answer; stops when the daemon does not answer. A POST the
/// store cannot make durable waits.
struct Poster {
    acked: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

fn poster(d: &Daemon, already: u64) -> Poster {
    let (acked, refused, stop) =
        (Arc::new(AtomicU64::new(already)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
    let (a, r, s) = (acked.clone(), refused.clone(), stop.clone());
    let (agent, base) = (d.agent.clone(), d.base.clone());
    let thread = std::thread::spawn(move || {
        while !s.load(Ordering::SeqCst) {
            // No answer at all: the daemon was killed (the crash test); its outcome is unknown.
            let Some(answer) = add_one_at(&agent, &base) else { break };
            match answer {
                (200, _) => a.fetch_add(1, Ordering::SeqCst),
                (503, body) => {
                    let m = body["error"]["message"].as_str().unwrap_or_default().to_string();
                    assert!(m.contains("cannot write") || m.contains("busy") || m.contains("shutting down"), "{body}");
                    r.fetch_add(1, Ordering::SeqCst)
                }
                other => panic!("an observation was answered {other:?}"),
            };
        }
    });
    Poster { acked, refused, stop, thread }
}

/// The store's `Mirror` as on disk (read-only, while the daemon runs or after it died).
fn inspect(data: &Path) -> Json {
    let out = Command::new(env!("CARGO_BIN_EXE_ved"))
        .args(["inspect", "--data-dir", data.to_str().unwrap(), "--json"])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(out.status.success(), "inspect: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().next().unwrap_or_else(|| panic!("no instance on disk in {}", data.display()));
    serde_json::from_str(line).unwrap()
}

/// The slice each delivered intent came from (its id is `instance/slice/index`).
fn delivered_slices(hook: &Webhook) -> Vec<u64> {
    hook.hits().iter().map(|h| h.key.split('/').nth(1).and_then(|s| s.parse().ok()).unwrap()).collect()
}

/// A few acknowledged observations before the disk fills, so that `Mirror` is on disk: a
/// daemon that has acknowledged nothing need not have written its instances yet (a fast
/// machine filled the disk first, and `inspect` rightly showed no instance). Returns how many.
fn durable_start(d: &Daemon) -> u64 {
    for _ in 0..3 {
        let (status, body) = add_one(d);
        assert_eq!(status, 200, "{body}");
    }
    3
}

/// Stalls the store: fills the file system and posts until `/healthz` says it cannot write.
/// Checks what holds meanwhile. Returns the poster, blocked on a POST that waits for space;
/// its count of acknowledged observations starts at `already`.
fn stall(s: &Setup, d: &Daemon, err: &Arc<Mutex<String>>, already: u64) -> Poster {
    fill(&s.mnt.join("ballast"));
    let p = poster(d, already);
    wait_for("/healthz to report the full disk", || d.get("/healthz").0 == 503);
    let (_, health) = d.get("/healthz");
    assert_eq!(health["status"], "degraded", "{health}");
    let store = health["store"].as_str().unwrap();
    assert!(store.contains("No space left on device") && store.contains("writes are waiting for space"), "{health}");
    assert!(store.contains(s.data.to_str().unwrap()), "names the file: {health}");
    // New writes are refused at once, cleanly, and change nothing; reads keep working.
    let (status, body) = add_one(d);
    assert_eq!(status, 503, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("the store cannot write"), "{body}");
    let (status, mirror) = d.get("/v1/instances/Mirror");
    assert_eq!(status, 200, "{mirror}");
    wait_for("the stall on stderr", || {
        let e = err.lock().unwrap();
        e.contains("ERROR") && e.contains("the store cannot write")
    });
    // Every acknowledged observation and the slice of every intent that left are on disk.
    let (acked, sent) = (p.acked.load(Ordering::SeqCst), delivered_slices(&s.hook));
    let disk = inspect(&s.data);
    assert!(disk["state"]["count"].as_u64().unwrap() >= acked, "{acked} acknowledged, on disk {disk}");
    let slice = disk["slice"].as_u64().unwrap();
    assert!(sent.iter().all(|&s| s <= slice), "an intent left before its slice was durable: {sent:?}, on disk {disk}");
    eprintln!("stalled after {acked} acknowledged observations, {} intents delivered", sent.len());
    p
}

#[test]
fn a_full_disk_stalls_writes_cleanly_and_ved_goes_on_once_space_returns() {
    let Some(s) = setup("full-disk") else { return };
    let (d, err) = start(&s);
    wait_for("healthz", || d.get("/healthz").0 == 200);
    let p = stall(&s, &d, &err, durable_start(&d));
    let at_stall = p.acked.load(Ordering::SeqCst);

    // Space returns: the waiting POST completes, /healthz is 200 again, no restart.
    std::fs::remove_file(s.mnt.join("ballast")).unwrap();
    wait_for("/healthz to recover", || d.get("/healthz").0 == 200);
    p.stop.store(true, Ordering::SeqCst);
    p.thread.join().unwrap();
    wait_for("the recovery on stderr", || err.lock().unwrap().contains("the store writes again"));
    for _ in 0..5 {
        assert_eq!(add_one(&d).0, 200);
    }
    let acked = p.acked.load(Ordering::SeqCst) + 5;
    eprintln!(
        "{acked} acknowledged ({} answered after the stall was seen), {} refused while the disk was full",
        p.acked.load(Ordering::SeqCst) - at_stall,
        p.refused.load(Ordering::SeqCst) + 1
    );
    // Every POST was answered 200 or refused unapplied: the count is exactly the 200s.
    let mirror = d.get("/v1/instances/Mirror").1;
    assert_eq!(mirror["state"]["count"].as_u64(), Some(acked), "{mirror}");
    wait_for("the last count to be delivered", || {
        s.hook.hits().iter().any(|h| h.body["args"][0].as_u64() == Some(acked))
    });

    // And after a restart.
    let (code, _) = d.terminate();
    assert_eq!(code, 0, "a clean stop after the stall");
    let (d, _) = start(&s);
    let mirror = d.get("/v1/instances/Mirror").1;
    assert_eq!(mirror["state"]["count"].as_u64(), Some(acked), "{mirror}");
    assert_eq!(d.terminate().0, 0);
    let out = Command::new(env!("CARGO_BIN_EXE_ved"))
        .args(["audit", "--data-dir", s.data.to_str().unwrap(), "verify"])
        .output()
        .unwrap();
    assert!(out.status.success(), "audit verify: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_crash_while_the_disk_is_full_loses_nothing_acknowledged_and_ved_starts_again() {
    let Some(s) = setup("full-disk-crash") else { return };
    let (d, err) = start(&s);
    wait_for("healthz", || d.get("/healthz").0 == 200);
    let p = stall(&s, &d, &err, durable_start(&d));

    // SIGKILL while writes wait for space: the waiting POST gets no answer.
    let acked = p.acked.load(Ordering::SeqCst);
    p.stop.store(true, Ordering::SeqCst);
    let pid = d.child.id();
    Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
    let _ = p.thread.join();
    drop(d);
    let sent = delivered_slices(&s.hook);
    let disk = inspect(&s.data);
    assert!(disk["state"]["count"].as_u64().unwrap() >= acked, "{acked} acknowledged, on disk {disk}");
    let slice = disk["slice"].as_u64().unwrap();
    assert!(sent.iter().all(|&s| s <= slice), "an intent left before its slice was durable: {sent:?}, on disk {disk}");

    // It starts again on the still full disk. A stop while writes wait does not wait for
    // space: it exits 1 and says what was not written (none of it was acknowledged).
    let (d, err) = start(&s);
    let before = d.get("/v1/instances/Mirror").1["state"]["count"].as_u64().unwrap();
    assert!(before >= acked);
    let p = stall(&s, &d, &err, 0);
    let acked = p.acked.load(Ordering::SeqCst);
    p.stop.store(true, Ordering::SeqCst);
    let (code, _) = d.terminate();
    let _ = p.thread.join();
    assert_eq!(code, 1, "{}", err.lock().unwrap());
    wait_for("the reason on stderr", || err.lock().unwrap().contains("is not written"));
    let disk = inspect(&s.data);
    assert!(disk["state"]["count"].as_u64().unwrap() >= before + acked, "{acked} more acknowledged, on disk {disk}");

    // And it goes on once space returns.
    let (d, _err) = start(&s);
    let before = d.get("/v1/instances/Mirror").1["state"]["count"].as_u64().unwrap();
    std::fs::remove_file(s.mnt.join("ballast")).unwrap();
    wait_for("an observation to be acknowledged", || add_one(&d).0 == 200);
    wait_for("/healthz", || d.get("/healthz").0 == 200);
    let after = d.get("/v1/instances/Mirror").1["state"]["count"].as_u64().unwrap();
    assert!(after > before, "{before} -> {after}");
    assert_eq!(d.terminate().0, 0);
}
