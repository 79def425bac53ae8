//! Shared by the integration tests that run `ved` as a daemon.
#![allow(dead_code)]

use serde_json::Value as Json;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// A scratch directory for this test process: `ved-it-TAG-PID` in the temp dir.
/// Kept after the run so a failure can be inspected, but removed by the next run
/// once its process is gone, so that runs (an etcd cluster's data is hundreds of MB)
/// do not fill the disk of a machine that runs the suite again and again.
pub fn tempdir(tag: &str) -> PathBuf {
    sweep_stale_tempdirs();
    let d = std::env::temp_dir().join(format!("ved-it-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Removes `ved-it-*-PID` directories whose process no longer exists.
fn sweep_stale_tempdirs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix("ved-it-") else { continue };
            let Some(pid) = rest.rsplit('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
            if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    });
}

/// `ved run` is durable by default, in the user's state directory. A test that runs
/// without `--data-dir` must say `--ephemeral` (or point `XDG_STATE_HOME` somewhere of its
/// own): this makes a forgotten one fail instead of writing into the real home.
pub fn guard_state_home(cmd: &mut Command) {
    cmd.env("XDG_STATE_HOME", "/dev/null/ved-tests-use-ephemeral-or-data-dir");
    cmd.env("HOME", "/dev/null/ved-tests-use-ephemeral-or-data-dir");
}

pub struct Daemon {
    pub child: Child,
    pub lines: Receiver<String>,
    pub base: String,
    pub agent: ureq::Agent,
    /// Everything the daemon wrote on stderr so far (its logs), read as it comes: a pipe
    /// nobody reads fills up, and the daemon, which logs every request, would block on it.
    pub stderr: std::sync::Arc<std::sync::Mutex<String>>,
    /// Set once stderr reached its end (the daemon exited): `stderr` is then whole.
    pub stderr_closed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Daemon {
    pub fn start(args: &[&str], token: Option<&str>) -> Daemon {
        Daemon::start_with_env(args, token, &[])
    }

    /// As [`Daemon::start`], with more variables in the daemon's environment only.
    pub fn start_with_env(args: &[&str], token: Option<&str>, env: &[(&str, &str)]) -> Daemon {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ved"));
        cmd.arg("run").args(args).args(["--listen", "127.0.0.1:0"]).current_dir(root());
        cmd.env_remove("VED_API_TOKEN").env_remove("VED_API_READ_TOKEN");
        cmd.envs(env.iter().copied());
        guard_state_home(&mut cmd);
        if let Some(t) = token {
            cmd.env("VED_API_TOKEN", t);
        }
        let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        // The logs are read as they come (and dropped): a pipe nobody reads fills up, and the
        // daemon, which logs every request, would block writing to it.
        let err = child.stderr.take().unwrap();
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let keep = stderr.clone();
        let stderr_closed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let closed = stderr_closed.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                keep.lock().unwrap_or_else(|p| p.into_inner()).push_str(&(l + "\n"));
            }
            closed.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let out = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(120);
        let addr = loop {
            let l = lines.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("a listening event");
            let e: Json = serde_json::from_str(&l).unwrap();
            if e["event"] == "listening" {
                break e["addr"].as_str().unwrap().to_string();
            }
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into();
        Daemon { child, lines, base: format!("http://{addr}"), agent, stderr, stderr_closed }
    }

    pub fn get(&self, path: &str) -> (u16, Json) {
        let mut r = self.agent.get(&format!("{}{path}", self.base)).call().unwrap();
        let status = r.status().as_u16();
        (status, serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap())
    }

    pub fn post(&self, path: &str, token: Option<&str>, body: &[u8]) -> (u16, Json) {
        let mut req = self.agent.post(&format!("{}{path}", self.base)).header("Content-Type", "application/json");
        if let Some(t) = token {
            req = req.header("Authorization", &format!("Bearer {t}"));
        }
        let mut r = req.send(body).unwrap();
        let status = r.status().as_u16();
        (status, serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap())
    }

    /// SIGTERM, and the exit status with every line printed.
    pub fn terminate(mut self) -> (i32, Vec<Json>) {
        Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        let status = self.child.wait().unwrap();
        let lines = self.lines.iter().filter_map(|l| serde_json::from_str(&l).ok()).collect();
        (status.code().unwrap_or(-1), lines)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `ok` every few milliseconds until it holds; panics after `limit`. Returns how long it took.
pub fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
    start.elapsed()
}

/// Runs a command that must succeed; returns its stdout.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| {
        panic!("cannot run `{}`: {e} (is it installed? `.ci/deps` installs what the tests need)", args.join(" "))
    });
    assert!(out.status.success(), "`{}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One request the webhook receiver answered.
#[derive(Clone, Debug)]
pub struct Hit {
    pub at: Instant,
    /// The `Idempotency-Key` header, as sent.
    pub key: String,
    pub body: Json,
    pub status: u16,
}

/// A local HTTP receiver: answers with `script`'s statuses in turn, then 200, and
/// records every request.
pub struct Webhook {
    pub url: String,
    pub hits: std::sync::Arc<std::sync::Mutex<Vec<Hit>>>,
}

impl Webhook {
    pub fn start(script: Vec<u16>) -> Webhook {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/page", listener.local_addr().unwrap());
        let hits = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = hits.clone();
        std::thread::spawn(move || {
            let mut script = script.into_iter();
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let (mut key, mut len, mut line) = (String::new(), 0usize, String::new());
                loop {
                    line.clear();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    let l = line.trim_end();
                    if l.is_empty() {
                        break;
                    }
                    if let Some((name, value)) = l.split_once(':') {
                        match name.to_ascii_lowercase().as_str() {
                            "idempotency-key" => key = value.trim().to_string(),
                            "content-length" => len = value.trim().parse().unwrap_or(0),
                            _ => {}
                        }
                    }
                }
                let mut body = vec![0; len];
                if reader.read_exact(&mut body).is_err() {
                    continue;
                }
                let status = script.next().unwrap_or(200);
                let body = serde_json::from_slice(&body).unwrap_or(Json::Null);
                record.lock().unwrap().push(Hit { at: Instant::now(), key, body, status });
                let _ = write!(stream, "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            }
        });
        Webhook { url, hits }
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }
}

/// Runs `ved ARGS` from the repository root with `input` on stdin: exit code, stdout, stderr.
pub fn ved_text(args: &[&str], input: &str) -> (i32, String, String) {
    use std::io::Write;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ved"));
    guard_state_home(&mut cmd);
    let mut child = cmd
        .args(args)
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Written from another thread while the output is read: `ved` reads its input only
    // as fast as it handles it (back-pressure), so writing it all first could wait for ever.
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_string();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// [`ved_text`] with stdout read as JSON lines (events); lines that are not JSON are skipped.
pub fn ved_events(args: &[&str], input: &str) -> (i32, Vec<Json>, String) {
    let (code, out, err) = ved_text(args, input);
    (code, out.lines().filter_map(|l| serde_json::from_str(l).ok()).collect(), err)
}

#[allow(unused_imports)]
pub use ved_testkit::Rng;

/// Pids of live processes whose command line is exactly `argv` (a zombie's is empty).
pub fn processes_running(argv: &[&str]) -> Vec<u32> {
    processes_where(|args| args.len() == argv.len() && args.iter().zip(argv).all(|(a, b)| *a == b.as_bytes()))
}

/// Kills every live process whose command line is exactly these words when dropped, however
/// the test ends: the processes a pool's adapter starts outlive Ved by design.
pub struct Members(pub Vec<String>);

impl Members {
    pub fn of(argv: &[&str]) -> Members {
        Members(argv.iter().map(|s| s.to_string()).collect())
    }
}

impl Drop for Members {
    fn drop(&mut self) {
        let args: Vec<&str> = self.0.iter().map(String::as_str).collect();
        for pid in processes_running(&args) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

/// Pids of live processes with `arg` as one of their arguments.
pub fn processes_with_arg(arg: &str) -> Vec<u32> {
    processes_where(|args| args.contains(&arg.as_bytes()))
}

fn processes_where(mut keep: impl FnMut(&[&[u8]]) -> bool) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return out };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else { continue };
        let args: Vec<&[u8]> = raw.split(|b| *b == 0).filter(|a| !a.is_empty()).collect();
        if keep(&args) {
            out.push(pid);
        }
    }
    out
}

/// A network namespace that is deleted when the test ends, however it ends.
pub struct Netns(pub String);

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = format!("ved-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        sh(&["ip", "netns", "add", &name]);
        Netns(name)
    }

    /// `nft ARGS` inside the namespace; it must succeed.
    pub fn nft(&self, args: &[&str]) -> String {
        let mut cmd = vec!["ip", "netns", "exec", &self.0, "nft"];
        cmd.extend_from_slice(args);
        sh(&cmd)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// Seed 000 as a daemon whose firewall adapter and watcher act in network namespace
/// `netns` (the demo's ved.toml, pointed there, plus `extra_toml`), with its store in `dir`.
pub fn security_policy_in(netns: &str, dir: &Path, extra_toml: &str) -> Daemon {
    let config = dir.join("ved.toml");
    let toml = std::fs::read_to_string(root().join("examples/demo/security_policy/ved.toml")).unwrap();
    std::fs::write(&config, toml.replace("\"ved-demo\"", &format!("\"{netns}\"")) + extra_toml).unwrap();
    let data = dir.join("data");
    Daemon::start(
        &["examples/security_policy.ved", "--config", config.to_str().unwrap(), "--data-dir", data.to_str().unwrap()],
        None,
    )
}

/// Reads `Content-Length`-framed JSON-RPC messages from a language server's stdout into a
/// channel, until the stream ends.
pub fn lsp_messages(out: impl Read + Send + 'static) -> Receiver<Json> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(out);
        loop {
            let mut len = None;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                if let Some(v) = line.strip_prefix("Content-Length: ") {
                    len = v.parse::<usize>().ok();
                }
            }
            let mut body = vec![0; len.expect("a Content-Length header")];
            if r.read_exact(&mut body).is_err() || tx.send(serde_json::from_slice(&body).expect("a JSON body")).is_err()
            {
                return;
            }
        }
    });
    rx
}

/// The pool of `examples/demo/worker_pool` on real `sleep` workers with a marker only this
/// test process uses (so no other test's processes count), on a data directory in `dir`;
/// `watched` adds the process watcher. Returns the daemon, the guard that kills the
/// workers, and the marker.
pub fn worker_pool_daemon(dir: &Path, watched: bool, token: Option<&str>) -> (Daemon, Members, String) {
    let marker = format!("86400.{}", std::process::id());
    let members = Members::of(&["sleep", &marker]);
    let config = dir.join("ved.toml");
    let watch =
        if watched { "\n[[watch]]\nfields = [\"workers\"]\ndriver = \"process\"\nadapter = \"Workers\"\n" } else { "" };
    std::fs::write(
        &config,
        format!("[adapters.Workers]\ndriver = \"process\"\ncommand = [\"sleep\", \"{marker}\"]\n{watch}"),
    )
    .unwrap();
    let data = dir.join("data");
    let args = [
        "examples/demo/worker_pool/worker_pool.ved",
        "--config",
        config.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ];
    (Daemon::start(&args, token), members, marker)
}
