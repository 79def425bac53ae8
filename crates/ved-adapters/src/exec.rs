//! The `exec` driver and watcher: external commands speaking JSON.
//!
//! Driver: for each intent, run the command with the intent as JSON on stdin.
//! Exit status 0 is success; anything else is a failure whose stderr (its first
//! 4 KiB) is the reason. A command that outlives its timeout is killed.
//!
//! Watcher: either a long-running command that prints one JSON object (field to
//! value) per line, or, with `interval_ms`, a command run periodically whose
//! output is one such object.
//!
//! No process is left behind. Every command runs in a process group of its own,
//! so a timeout or a stop kills everything it started (a shell's children
//! included), not just the process Ved spawned; and the kernel kills the command
//! if Ved dies first (`PR_SET_PDEATHSIG`). What a command prints is bounded: Ved
//! keeps the first [`STDOUT_KEPT_BYTES`] of stdout and [`STDERR_KEPT_BYTES`] of
//! stderr and reads and drops the rest, so a chatty command neither blocks on a
//! full pipe nor grows Ved's memory.

use crate::{ActionError, ActionResult, Actuator, Inbound, IntentRequest, Observation, Watcher};
use serde_json::{Map, Value as Json};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Stdout kept from one command, and the longest line a long-running watcher may print:
/// far more than any observation or `nft -j` listing needs, and small enough to hold.
pub const STDOUT_KEPT_BYTES: usize = 1 << 20;
/// Stderr kept from one command: the reason a failed intent gives in the journal.
pub const STDERR_KEPT_BYTES: usize = 4096;
/// How long a stopped long-running watcher's command has between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_millis(500);

/// A command in a process group of its own (its pgid is its pid), so that everything it
/// starts can be signalled at once with [`kill_group`] and a Ctrl-C aimed at Ved's
/// terminal is not delivered to it.
pub(crate) fn in_own_group(prog: &str, args: &[String]) -> Command {
    let mut cmd = Command::new(prog);
    cmd.args(args).process_group(0);
    cmd
}

/// Asks the kernel to SIGKILL the command when the thread that spawns it exits. Correct only
/// where that thread waits for the command (it does for every exec command), because the
/// signal follows the spawning *thread*, not the process.
fn die_with_ved(cmd: &mut Command) {
    let ved = std::process::id();
    // SAFETY: the closure runs between fork and exec and calls only prctl and getppid,
    // which are async-signal-safe; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Ved may have died between fork and prctl; then no signal would ever come.
            if u32::try_from(libc::getppid()).ok() != Some(ved) {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Sends `signal` to the process group `pgid`. Call it only while the group's leader is our
/// unreaped child (running or a zombie): that keeps the id from being reused by a stranger.
pub(crate) fn kill_group(pgid: u32, signal: libc::c_int) -> bool {
    // 0 would be Ved's own group and 1 (as -1) every process it may signal: never.
    let Ok(id) = libc::pid_t::try_from(pgid) else { return false };
    if id <= 1 {
        return false;
    }
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(-id, signal) == 0 }
}

/// Whether our child `pid` has exited, without reaping it (see [`kill_group`] for why).
pub(crate) fn has_exited(pid: u32) -> bool {
    // SAFETY: siginfo_t is plain data, zeroed is a valid value; waitid writes only into it.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let r =
            libc::waitid(libc::P_PID, libc::id_t::from(pid), &mut info, libc::WEXITED | libc::WNOHANG | libc::WNOWAIT);
        // An error (no such child) counts as exited: there is nothing left to wait for.
        r != 0 || info.si_pid() != 0
    }
}

/// Leaders of the exec command groups running now, none of them reaped yet, so that a
/// stopping Ved can end them with [`kill_running_commands`].
static RUNNING: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

/// A running command's entry in [`RUNNING`]. Dropped before the command is reaped, so a group
/// id in the list always belongs to an unreaped leader.
struct Running(u32);

impl Running {
    fn new(pid: u32) -> Running {
        RUNNING.lock().unwrap_or_else(|p| p.into_inner()).push(pid);
        Running(pid)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        RUNNING.lock().unwrap_or_else(|p| p.into_inner()).retain(|p| *p != self.0);
    }
}

/// Kills every exec command still running (intents in flight, probes), each with its process
/// group. For a stopping Ved: such an intent stays undelivered and goes out again, with the
/// same id, after a restart, and nothing it started should keep running meanwhile.
pub fn kill_running_commands() {
    let running = RUNNING.lock().unwrap_or_else(|p| p.into_inner());
    for pid in running.iter() {
        kill_group(*pid, libc::SIGKILL);
    }
}

/// Reads `r` to its end, keeping the first `keep` bytes; returns them and how many were dropped.
fn drain(mut r: impl Read, keep: usize) -> (Vec<u8>, u64) {
    let mut kept = Vec::new();
    let mut dropped = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let take = n.min(keep.saturating_sub(kept.len()));
                kept.extend_from_slice(&buf[..take]);
                dropped += (n - take) as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    (kept, dropped)
}

/// What a command printed, bounded.
#[derive(Clone, Debug, Default)]
pub struct Output {
    /// The first [`STDOUT_KEPT_BYTES`] of stdout.
    pub stdout: Vec<u8>,
    /// Bytes of stdout past those, read and dropped.
    pub stdout_dropped: u64,
}

impl Output {
    /// Stdout, or an error saying it was cut: a cut JSON document is not a reading.
    pub fn complete(self, prog: &str) -> Result<Vec<u8>, ActionError> {
        if self.stdout_dropped == 0 {
            return Ok(self.stdout);
        }
        let total = self.stdout.len() as u64 + self.stdout_dropped;
        Err(ActionError::failed(format!(
            "`{prog}` printed {total} bytes on stdout, more than the {} KiB Ved reads; its output was cut and is not used",
            STDOUT_KEPT_BYTES / 1024
        )))
    }
}

/// Runs `command` with `input` on stdin; returns its complete stdout, or why it failed
/// (including output cut at [`STDOUT_KEPT_BYTES`]).
pub fn run_command(command: &[String], input: &[u8], timeout: Duration) -> Result<Vec<u8>, ActionError> {
    let prog = command.first().map(String::as_str).unwrap_or_default();
    run_bounded(command, input, timeout, None)?.complete(prog)
}

/// Runs `command` with `input` on stdin, for at most `timeout`, or until `stop` is set; either
/// ends its whole process group. Succeeds with its bounded output when it exits with status 0.
/// Fails with [`ActionErrorKind::Unavailable`](crate::ActionErrorKind) when it cannot be started,
/// `Timeout` when it ran out of time, `Interrupted` when `stop` ended it, and `Failed` otherwise.
pub fn run_bounded(
    command: &[String],
    input: &[u8],
    timeout: Duration,
    stop: Option<&AtomicBool>,
) -> Result<Output, ActionError> {
    let (prog, args) = command.split_first().ok_or_else(|| ActionError::rejected("the command is empty"))?;
    let mut cmd = in_own_group(prog, args);
    die_with_ved(&mut cmd);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| ActionError::unavailable(format!("cannot start `{prog}`: {e}")))?;
    let pid = child.id();
    let running = Running::new(pid);
    // Feed stdin and drain the pipes on threads, so a chatty command cannot deadlock us.
    // None of them is joined unless it has finished: a process that escaped the group could
    // hold a pipe open for ever, and its thread then just ends when it does.
    let mut stdin = child.stdin.take();
    let input = input.to_vec();
    std::thread::spawn(move || {
        if let Some(s) = stdin.as_mut() {
            let _ = s.write_all(&input);
        }
    });
    let out = child.stdout.take();
    let reader = std::thread::spawn(move || out.map(|o| drain(o, STDOUT_KEPT_BYTES)).unwrap_or_default());
    let err = child.stderr.take();
    let err_reader = std::thread::spawn(move || err.map(|e| drain(e, STDERR_KEPT_BYTES)).unwrap_or_default());
    let deadline = Instant::now() + timeout;
    let mut exited = false;
    loop {
        exited = exited || has_exited(pid);
        // Done when the command has exited and its output is closed: a background process
        // that still holds the pipes is still the command's work.
        if exited && reader.is_finished() && err_reader.is_finished() {
            break;
        }
        let stopped = stop.is_some_and(|s| s.load(Ordering::Relaxed));
        if stopped || Instant::now() >= deadline {
            kill_group(pid, libc::SIGKILL);
            // The command itself, even if it left its group (setpgid), so the wait ends.
            let _ = child.kill();
            drop(running);
            let _ = child.wait();
            let ms = timeout.as_millis();
            return Err(if stopped {
                ActionError::interrupted(format!("`{prog}` was stopped with Ved and killed with its process group"))
            } else if exited {
                ActionError::timeout(format!("`{prog}` exited, but a process it started still held its output open after {ms} ms; its process group was killed"))
            } else {
                ActionError::timeout(format!("`{prog}` timed out after {ms} ms and was killed with its process group"))
            });
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    drop(running);
    let status = child.wait().map_err(|e| ActionError::failed(format!("waiting for `{prog}`: {e}")))?;
    let (stdout, stdout_dropped) = reader.join().unwrap_or_default();
    let (stderr, stderr_dropped) = err_reader.join().unwrap_or_default();
    if status.success() {
        Ok(Output { stdout, stdout_dropped })
    } else {
        Err(ActionError::failed(failure(prog, status, &stderr, stderr_dropped)))
    }
}

fn failure(prog: &str, status: ExitStatus, stderr: &[u8], stderr_dropped: u64) -> String {
    let code = status.code().map(|c| format!("exit status {c}")).unwrap_or_else(|| "killed by a signal".into());
    let mut text = String::from_utf8_lossy(stderr).trim().to_string();
    if stderr_dropped > 0 {
        text.push_str(&format!(" [stderr cut after {} KiB]", STDERR_KEPT_BYTES / 1024));
    }
    if text.is_empty() {
        format!("`{prog}` failed: {code}")
    } else {
        format!("`{prog}` failed: {code}: {text}")
    }
}

pub struct ExecDriver {
    pub command: Vec<String>,
    pub timeout: Duration,
}

impl Actuator for ExecDriver {
    fn deliver(&self, intent: &IntentRequest) -> ActionResult {
        let input = serde_json::to_vec(&intent.to_json()).map_err(|e| ActionError::rejected(e.to_string()))?;
        // The exit status is the answer; stdout, cut or not, is not read.
        run_bounded(&self.command, &input, self.timeout, None).map(|_| ())
    }
}

pub struct ExecWatcher {
    pub instance: String,
    pub command: Vec<String>,
    pub interval: Option<Duration>,
    pub timeout: Duration,
    pub source: String,
}

fn parse_object(text: &str) -> Option<Map<String, Json>> {
    match serde_json::from_str::<Json>(text.trim()) {
        Ok(Json::Object(m)) => Some(m),
        _ => None,
    }
}

/// Reads one line into `line` (without its newline), keeping at most `max` bytes and dropping
/// the rest of it. `Ok(None)` at the end; otherwise whether the line was cut.
fn read_line_bounded(r: &mut impl BufRead, line: &mut Vec<u8>, max: usize) -> std::io::Result<Option<bool>> {
    line.clear();
    let (mut cut, mut any) = (false, false);
    loop {
        let buf = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok(any.then_some(cut));
        }
        any = true;
        let newline = buf.iter().position(|b| *b == b'\n');
        let chunk = &buf[..newline.unwrap_or(buf.len())];
        let take = chunk.len().min(max.saturating_sub(line.len()));
        cut |= take < chunk.len();
        line.extend_from_slice(&chunk[..take]);
        let used = newline.map_or(buf.len(), |i| i + 1);
        r.consume(used);
        if newline.is_some() {
            return Ok(Some(cut));
        }
    }
}

impl ExecWatcher {
    /// Runs the command every `every` and reports its object when it changes or a resync is due.
    fn poll(&self, every: Duration, sink: &crate::Sink, stop: &AtomicBool, resync: Option<Duration>) {
        let mut reporter = crate::Reporter::new(&self.instance, &self.source, resync);
        let prog = self.command.first().map(String::as_str).unwrap_or_default();
        while !stop.load(Ordering::Relaxed) {
            match run_bounded(&self.command, b"", self.timeout, Some(stop)).and_then(|o| o.complete(prog)) {
                Ok(out) => match parse_object(&String::from_utf8_lossy(&out)) {
                    Some(m) => {
                        if reporter.offer(m, sink).is_err() {
                            return;
                        }
                    }
                    None => {
                        tracing::warn!(source = %self.source, "the command did not print a JSON object of field to value")
                    }
                },
                Err(_) if stop.load(Ordering::Relaxed) => return,
                Err(e) => tracing::warn!(source = %self.source, "{e}"),
            }
            let until = Instant::now() + every;
            while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(10).min(every));
            }
        }
    }

    /// Runs the command for as long as Ved does and reports each line it prints.
    fn follow(&self, sink: &crate::Sink, stop: &Arc<AtomicBool>) {
        let Some((prog, args)) = self.command.split_first() else { return };
        let mut cmd = in_own_group(prog, args);
        die_with_ved(&mut cmd);
        let mut child = match cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(source = %self.source, "cannot start `{prog}`: {e}");
                return;
            }
        };
        let pid = child.id();
        let done = Arc::new(AtomicBool::new(false));
        // A watcher thread blocked on a read is released by ending its command's process group:
        // SIGTERM, then SIGKILL for whatever is left after a grace. The child is reaped only
        // after this thread is joined, so the group id cannot have been reused when it signals.
        let stopper = {
            let (stop, done) = (stop.clone(), done.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) && !done.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                if done.load(Ordering::Relaxed) {
                    return;
                }
                kill_group(pid, libc::SIGTERM);
                let until = Instant::now() + STOP_GRACE;
                while Instant::now() < until && !done.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                kill_group(pid, libc::SIGKILL);
            })
        };
        if let Some(out) = child.stdout.take() {
            self.report_lines(BufReader::new(out), sink);
        }
        done.store(true, Ordering::Relaxed);
        // The output is closed or nobody listens: a watcher's command has nothing left to do,
        // and neither has anything it started.
        kill_group(pid, libc::SIGKILL);
        let _ = stopper.join();
        reap(&mut child);
    }

    fn report_lines(&self, mut out: impl BufRead, sink: &crate::Sink) {
        let mut version = 0u64;
        let mut line = Vec::new();
        loop {
            match read_line_bounded(&mut out, &mut line, STDOUT_KEPT_BYTES) {
                Ok(None) | Err(_) => return,
                Ok(Some(true)) => tracing::warn!(
                    source = %self.source,
                    "a line longer than {} KiB was cut and is ignored",
                    STDOUT_KEPT_BYTES / 1024
                ),
                Ok(Some(false)) => {
                    let text = String::from_utf8_lossy(&line);
                    match parse_object(&text) {
                        Some(fields) => {
                            version += 1;
                            let obs = Observation {
                                instance: self.instance.clone(),
                                fields,
                                source: self.source.clone(),
                                version: Some(version),
                            };
                            if sink.send(Inbound::Observed(obs)).is_err() {
                                return;
                            }
                        }
                        None if text.trim().is_empty() => {}
                        None => {
                            tracing::warn!(source = %self.source, "not a JSON object of field to value: {text}")
                        }
                    }
                }
            }
        }
    }
}

fn reap(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

impl Watcher for ExecWatcher {
    fn run(self: Box<Self>, sink: crate::Sink, stop: Arc<AtomicBool>, resync: Option<Duration>) {
        // A periodic command reports a reading when it differs from the last one sent, or when
        // a resync is due; a long-running one reports as it sees fit.
        match self.interval {
            Some(every) => self.poll(every, &sink, &stop, resync),
            None => self.follow(&sink, &stop),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_line_is_cut_and_the_next_one_read_whole() {
        let text = format!("{}\n{{\"a\": 1}}\nlast", "x".repeat(100));
        let mut r = BufReader::with_capacity(16, text.as_bytes());
        let mut line = Vec::new();
        assert_eq!(read_line_bounded(&mut r, &mut line, 10).unwrap(), Some(true));
        assert_eq!(line, b"xxxxxxxxxx");
        assert_eq!(read_line_bounded(&mut r, &mut line, 10).unwrap(), Some(false));
        assert_eq!(line, b"{\"a\": 1}");
        assert_eq!(read_line_bounded(&mut r, &mut line, 10).unwrap(), Some(false));
        assert_eq!(line, b"last");
        assert_eq!(read_line_bounded(&mut r, &mut line, 10).unwrap(), None);
    }

    #[test]
    fn the_group_of_nobody_in_particular_is_never_signalled() {
        // 0 and 1 would address Ved's own group and every process.
        assert!(!kill_group(0, 0));
        assert!(!kill_group(1, 0));
        assert!(!kill_group(u32::MAX, 0));
    }

    #[test]
    fn output_past_the_bound_is_counted_and_reported_as_cut() {
        let o = Output { stdout: b"{\"a\":".to_vec(), stdout_dropped: 10 };
        let e = o.complete("probe").unwrap_err();
        assert_eq!(e.kind, crate::ActionErrorKind::Failed);
        let e = e.to_string();
        assert!(e.contains("printed 15 bytes") && e.contains("cut"), "{e}");
        let (kept, dropped) = drain(&b"abcdef"[..], 4);
        assert_eq!((kept.as_slice(), dropped), (&b"abcd"[..], 2));
    }
}
