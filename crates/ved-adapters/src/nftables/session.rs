//! One long-lived `nft -j -a -i` process per chain, fed commands on a pipe.
//!
//! Spawning `nft` costs milliseconds of CPU (exec, dynamic linking, reading
//! the ruleset cache); an interactive `nft` that stays up answers a command in
//! about 0.2 ms. Every request is one line (nft runs a line as one atomic
//! transaction, `;` separating its commands) followed by `list ruleset`: nft
//! answers the list with exactly one line that starts with `{"nftables"`, which
//! marks the end of the request's output; whatever came before it is the
//! error text of the command line (stderr is joined to stdout so that both
//! arrive in order). The listing that ends a write is the ruleset just after
//! it, so a change and the reading that confirms it cost one round trip.
//!
//! Children of Ved must not outlive it. Each is killed when its owner is
//! dropped, and as a backstop for SIGKILL it is spawned with
//! `PR_SET_PDEATHSIG = SIGKILL`. That signal fires when the *thread* that
//! spawned the child exits, not the process, so every child is spawned by one
//! thread that lives as long as Ved.

use serde_json::Value as Json;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

type SpawnRequest = (Command, SyncSender<std::io::Result<Child>>);

/// Spawns `cmd` from the process-long spawner thread, with `PR_SET_PDEATHSIG = SIGKILL`,
/// stdin and stdout piped and stderr joined to stdout.
pub fn spawn_tied(mut cmd: Command) -> std::io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<Sender<SpawnRequest>>> = OnceLock::new();
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null());
    // SAFETY: the hook only calls async-signal-safe functions (prctl, dup2).
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::dup2(1, 2) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("ved-nft-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawning the nft spawner thread");
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::sync_channel(1);
    spawner
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send((cmd, reply_tx))
        .map_err(|_| std::io::Error::other("the nft spawner thread is gone"))?;
    reply_rx.recv().map_err(|_| std::io::Error::other("the nft spawner thread is gone"))?
}

/// Lines a child prints, read on their own thread so a wait can time out.
pub fn read_lines(out: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// `nft` itself, or `ip netns exec NS nft`, with `args`.
pub fn nft_command(netns: Option<&str>, args: &[&str]) -> Command {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "nft"]);
            c
        }
        None => Command::new("nft"),
    };
    cmd.args(args);
    cmd
}

struct Live {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

/// An interactive `nft`, started on first use and again after it fails.
pub struct Session {
    netns: Option<String>,
    timeout: Duration,
    live: Option<Live>,
}

/// What a request printed besides the listing: nft's error text for the command line.
pub type NftError = String;

impl Session {
    pub fn new(netns: Option<String>, timeout: Duration) -> Session {
        Session { netns, timeout, live: None }
    }

    /// The process id of the running `nft -i` (`ip netns exec` execs nft in place, so
    /// it is nft's): `nft monitor` names it as the author of Ved's own transactions.
    pub fn pid(&self) -> Option<u32> {
        self.live.as_ref().map(|l| l.child.id())
    }

    fn live(&mut self) -> Result<&mut Live, String> {
        if self.live.is_none() {
            let cmd = nft_command(self.netns.as_deref(), &["-j", "-a", "-i"]);
            let mut child = spawn_tied(cmd).map_err(|e| format!("cannot start `nft -i`: {e}"))?;
            let stdin = child.stdin.take().ok_or("nft -i has no stdin")?;
            let lines = read_lines(child.stdout.take().ok_or("nft -i has no stdout")?);
            self.live = Some(Live { child, stdin, lines });
        }
        Ok(self.live.as_mut().expect("just set"))
    }

    fn kill(&mut self) {
        if let Some(mut l) = self.live.take() {
            let _ = l.child.kill();
            let _ = l.child.wait();
        }
    }

    /// Runs `line` (empty: nothing) as one transaction, then lists the ruleset.
    /// `Ok((Some(error), ruleset))` when nft refused the line: nothing of it was applied.
    pub fn run(&mut self, line: &str) -> Result<(Option<NftError>, Json), String> {
        debug_assert!(!line.contains('\n'), "one line is one transaction");
        let timeout = self.timeout;
        let r = self.exchange(line, timeout);
        if r.is_err() {
            self.kill();
        }
        r
    }

    fn exchange(&mut self, line: &str, timeout: Duration) -> Result<(Option<NftError>, Json), String> {
        let live = self.live()?;
        // Anything left over from a request that timed out belongs to nobody.
        while live.lines.try_recv().is_ok() {}
        let mut req = String::with_capacity(line.len() + 14);
        if !line.is_empty() {
            req.push_str(line);
            req.push('\n');
        }
        req.push_str("list ruleset\n");
        live.stdin
            .write_all(req.as_bytes())
            .and_then(|_| live.stdin.flush())
            .map_err(|e| format!("nft -i stopped ({e}){}", exited(&mut live.child)))?;
        let deadline = Instant::now() + timeout;
        let mut errors = Vec::new();
        loop {
            match live.lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(l) if l.starts_with("{\"nftables\"") => {
                    let doc: Json =
                        serde_json::from_str(&l).map_err(|e| format!("nft printed JSON Ved cannot read: {e}"))?;
                    let err = (!errors.is_empty()).then(|| errors.join("\n"));
                    return Ok((err, doc));
                }
                Ok(l) => errors.push(l),
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!("nft did not answer within {} ms", timeout.as_millis()))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let said = errors.join("\n");
                    return Err(format!(
                        "nft -i ended{}{}",
                        exited(&mut live.child),
                        if said.is_empty() { String::new() } else { format!(": {said}") }
                    ));
                }
            }
        }
    }
}

/// How the child ended, if it has within a moment (it closed its pipes, so it is on its way).
fn exited(child: &mut Child) -> String {
    for _ in 0..50 {
        if let Ok(Some(s)) = child.try_wait() {
            return format!(" ({s})");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    String::new()
}

impl Drop for Session {
    fn drop(&mut self) {
        self.kill();
    }
}
