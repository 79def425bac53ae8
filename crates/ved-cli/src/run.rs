//! `ved run`: a client of [`ved_engine::Engine`]. It decides where inputs come
//! from and where events go, and nothing else.
//!
//! `--stdin`: observations in as JSON lines, events out as JSON lines, durable in a
//! data directory unless `--ephemeral` (`main.rs` picks the default directory,
//! [`default_data_dir`]; the first event of a durable run names it).
//!
//! Input lines:
//! - `{"instance": "WorkerPool", "set": {"workers": 3}}`: one observation;
//!   `"caused_by": "ID"` names the intent whose effect it reports (lineage);
//! - `{"advance_ms": 500}`: simulated time passes; due retries run.
//!
//! Every output line is an object with `seq` (1, 2, ...), `event` and, where
//! it applies, `instance`. In a durable run, each input line is acknowledged
//! (`ack`) once the slices it caused are durable, and an intent leaves for its
//! adapter only after the slice that emitted it is durable (output commit).
//! Without `--config`, intents go to a logging adapter that prints them and
//! acknowledges them; with it, each adapter name goes to its configured driver
//! on worker threads, and watchers feed observations in. Results and
//! observations come back through one ordered channel.
//! A bad line yields an `error` event and changes nothing. At the end of
//! input, once everything is durable and delivered, the process exits 0.
//!
//! Without `--stdin`, the daemon: the HTTP API ([`api`]) and a wall clock.

use crate::load;
use serde_json::json;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{mpsc, Arc};
pub use ved_engine::{
    build_adapters, for_runtime, journal_entry, watched_fields, Adapters, Builder, Feed, JsonLines, RunOptions,
    StartError,
};
use ved_engine::{Call, Sink, WallClock};

pub mod api;
pub mod events;
pub use api::{BODY_LIMIT, OPENAPI};

/// The engine as `ved run` drives it: events out as JSON lines on `W`.
pub type Driver<W> = ved_engine::Engine<JsonLines<W>>;

/// What the main loop handles, in the order it arrives.
pub(crate) enum Input {
    Line(u64, String),
    ReadError(u64, String),
    /// A line that could not be taken (too long, not UTF-8): reported, and reading goes on.
    BadLine(u64, String),
    Eof,
    /// A result or an observation from the adapters, in the order they reported.
    Inbound(ved_adapters::Inbound),
    /// A batch became durable; the engine reads the store's durable sequence itself.
    Durable,
    /// A call to the HTTP API and where to answer it.
    Api(Call, api::Responder),
    /// SIGTERM or SIGINT: flush and stop.
    Shutdown,
}

/// Where `ved run` takes its input from.
pub enum Mode {
    /// JSON lines on stdin; simulated time (`advance_ms`); exit at the end of input.
    Stdin,
    /// The HTTP API on this address; wall-clock time; exit on SIGTERM or SIGINT.
    Daemon { listen: std::net::SocketAddr },
}

fn obj(j: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    match j {
        serde_json::Value::Object(m) => m,
        _ => serde_json::Map::new(),
    }
}

/// Prints why an engine could not start, with its hint.
pub fn report_start_error(e: &StartError) {
    eprintln!("error: {e}");
    if let Some(h) = e.hint() {
        eprintln!("  = hint: {h}");
    }
}

/// The state directory `ved run` uses without `--data-dir`: `$XDG_STATE_HOME/ved/NAME`
/// (an absolute `XDG_STATE_HOME` only, as the XDG spec says), else
/// `$HOME/.local/state/ved/NAME`. NAME is the first file's stem, a dash and 16 hex digits
/// of a hash (FNV-1a) of the canonical paths of all the program's files, in order: the
/// same files give the same directory wherever they are run from, and two programs that
/// share a file name do not share state.
pub fn default_data_dir(files: &[PathBuf]) -> Result<PathBuf, String> {
    let base = match std::env::var_os("XDG_STATE_HOME").map(PathBuf::from).filter(|p| p.is_absolute()) {
        Some(p) => p,
        None => match std::env::var_os("HOME").map(PathBuf::from).filter(|p| p.is_absolute()) {
            Some(home) => home.join(".local").join("state"),
            None => return Err("neither XDG_STATE_HOME nor HOME is set: no default state directory".into()),
        },
    };
    Ok(base.join("ved").join(program_name(files)))
}

/// `STEM-HASH`: see [`default_data_dir`].
pub fn program_name(files: &[PathBuf]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for f in files {
        let path = std::fs::canonicalize(f).unwrap_or_else(|_| f.clone());
        for b in path.as_os_str().as_encoded_bytes().iter().chain([&0u8]) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    let stem = files.first().and_then(|f| f.file_stem()).map(|s| s.to_string_lossy().into_owned());
    let stem: String = stem
        .unwrap_or_default()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.' { c } else { '_' })
        .collect();
    let stem = if stem.is_empty() || stem.starts_with('.') { format!("program{stem}") } else { stem };
    format!("{stem}-{h:016x}")
}

/// `ved run --stdin`: observations as JSON lines in, events as JSON lines out.
pub fn run_stdin(files: &[PathBuf], config: Option<&Path>, opts: RunOptions) -> ExitCode {
    run(files, config, opts, Mode::Stdin, None)
}

/// `ved run`: loads the program and its configuration, starts adapters and
/// watchers, and feeds everything through one ordered channel to the driver.
/// `audit_key` (`--audit-key`) overrides the config's `[store] audit_key`.
pub fn run(
    files: &[PathBuf],
    config: Option<&Path>,
    mut opts: RunOptions,
    mode: Mode,
    audit_key: Option<&Path>,
) -> ExitCode {
    let mut loaded = match load::load(files) {
        Ok(l) => l,
        Err(code) => return code,
    };
    if let Some(path) = config {
        match load::load_config(&mut loaded, path) {
            Ok(c) => opts.config = Some(c),
            Err(code) => return code,
        }
    }
    // Read before anything starts: a key that cannot be used stops `ved run` at once, rather
    // than leaving it writing entries nobody can authenticate.
    opts.audit_key = match read_audit_key(&opts, audit_key) {
        Ok(k) => k,
        Err(code) => return code,
    };
    // Bounded: a flood of input waits (stdin, watchers) or is told to retry (HTTP)
    // instead of growing memory without end.
    let (tx, rx) = mpsc::sync_channel::<Input>(INPUT_CAPACITY);
    // In daemon mode the port is bound before anything starts, so a busy port
    // is reported at once and the store is never opened for nothing.
    // The daemon streams what it prints (`GET /v1/events`).
    let hub = matches!(mode, Mode::Daemon { .. }).then(|| Arc::new(events::EventHub::new(events::EVENTS_KEPT)));
    let server = match &mode {
        Mode::Stdin => None,
        Mode::Daemon { listen } => {
            let options = api::Options {
                tokens: api::Tokens::configured(opts.config.as_ref()),
                max_instances: opts
                    .config
                    .as_ref()
                    .map_or(ved_adapters::config::MAX_INSTANCES_DEFAULT, |c| c.api.max_instances),
                data_dir: opts.data_dir.clone(),
                events: hub.clone(),
            };
            match api::serve(*listen, options, tx.clone()) {
                Ok(s) => Some(s),
                Err(e) => {
                    eprintln!("error: {e}");
                    eprintln!(
                        "  = hint: choose another address with `--listen ADDR`, e.g. 127.0.0.1:0 for any free port"
                    );
                    return ExitCode::from(1);
                }
            }
        }
    };
    let hook_tx = tx.clone();
    let hook: ved_store::DurableHook = Box::new(move |_| {
        // Never blocks the store's writer (the driver may be waiting for it). A notice
        // dropped because the channel is full loses nothing: durability is a watermark
        // the driver reads as it handles each of the inputs that filled the channel.
        let _ = hook_tx.try_send(Input::Durable);
    });
    let stdout = std::io::BufWriter::new(std::io::stdout().lock());
    let (inbound_tx, inbound_rx) = ved_adapters::sink();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (adapters, watchers) = match &opts.config {
        Some(c) => match build_adapters(c, &loaded.compiled, inbound_tx.clone()) {
            Ok(x) => x,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(1);
            }
        },
        None => (Adapters::logging(), Vec::new()),
    };
    let resync =
        opts.config.as_ref().map(|c| c.resync.interval_ms).filter(|ms| *ms > 0).map(std::time::Duration::from_millis);
    let mut out = JsonLines::new(stdout);
    if let Some(hub) = hub {
        out = out.with_tap(Box::new(move |seq, instance, line| hub.publish(seq, instance, line)));
    }
    let mut driver = match Driver::start(loaded, &opts, adapters, out, hook) {
        Ok(d) => d,
        Err(e) => {
            report_start_error(&e);
            // A key that does not continue the log is a usage error, like a key file that
            // cannot be read.
            return match e {
                StartError::AuditKey { .. } => crate::exit::code(crate::exit::USAGE),
                _ => ExitCode::from(1),
            };
        }
    };
    // The recovery's temporaries are gone: give their pages back before serving.
    crate::memory::return_freed();
    for w in &driver.warnings {
        tracing::warn!("{w}");
    }
    if let Some((addr, _)) = &server {
        // The live page, by an address a browser on this machine can open.
        let page = format!("http://{}/", browsable(addr));
        tracing::info!("the live page: {page}");
        driver.sink_mut().emit(obj(json!({"event": "listening", "addr": addr.to_string(), "page": page})));
        Sink::flush(driver.sink_mut());
    }
    // Results and observations keep their order on the way to the main loop.
    let forward_tx = tx.clone();
    std::thread::spawn(move || {
        for x in inbound_rx {
            if forward_tx.send(Input::Inbound(x)).is_err() {
                break;
            }
        }
    });
    let mut watcher_threads = Vec::new();
    for w in watchers {
        let sink = inbound_tx.clone();
        let stop = stop.clone();
        watcher_threads.push(std::thread::spawn(move || w.run(sink, stop, resync)));
    }
    drop(inbound_tx);
    let code = match mode {
        Mode::Stdin => {
            spawn_stdin_reader(tx);
            stdin_loop(&mut driver, &rx)
        }
        Mode::Daemon { .. } => {
            drop(tx);
            daemon_loop(&mut driver, &rx)
        }
    };
    stop_watchers(&stop, watcher_threads);
    // Intents still in flight stay undelivered (they go out again after a restart); their
    // commands must not run on unsupervised.
    ved_adapters::exec::kill_running_commands();
    if let Some(code) = code {
        return code;
    }
    match driver.finish() {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// The audit key `ved run` authenticates entries with: `--audit-key`, else the config's
/// `[store] audit_key`, else none. Whether it continues the store's log (a log already keyed
/// goes on only with its own key) is the engine's check at start ([`StartError::AuditKey`]).
fn read_audit_key(opts: &RunOptions, flag: Option<&Path>) -> Result<Option<ved_store::AuditKey>, ExitCode> {
    let configured = opts.config.as_ref().and_then(|c| c.store.audit_key.as_deref());
    let path = flag.or(configured);
    let Some(dir) = &opts.data_dir else {
        if path.is_some() {
            // Only `[store] audit_key` gets here (`--audit-key` and `--ephemeral` exclude each other).
            tracing::warn!("`[store] audit_key` is ignored: with `--ephemeral` no audit log is written");
        }
        return Ok(None);
    };
    let key = match path.map(|p| ved_store::AuditKey::read(p, Some(dir))).transpose() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("error: {e}");
            eprintln!("  = hint: {}", e.hint);
            return Err(crate::exit::code(crate::exit::USAGE));
        }
    };
    if let Some(p) = path {
        use std::os::unix::fs::PermissionsExt;
        // Warned, not refused (a key shared with a group of operators may be deliberate): a
        // key anyone on the host can read authenticates nothing.
        let mode = std::fs::metadata(p).map(|m| m.permissions().mode()).unwrap_or(0);
        if mode & 0o077 != 0 {
            eprintln!(
                "warning: the audit key {} is readable or writable by others (mode {:o}); `chmod 400` it",
                p.display(),
                mode & 0o777
            );
        }
    }
    Ok(key)
}

/// How long a stopping Ved waits for its watchers to end their commands: enough for an exec
/// watcher's SIGTERM, grace and SIGKILL.
const WATCHERS_STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Tells the watchers to stop and waits (boundedly) until they have: a watcher ends the
/// commands it runs, with everything they started, and those must not outlive a clean exit.
/// A watcher still blocked after the wait is left to die with the process.
pub(crate) fn stop_watchers(stop: &std::sync::atomic::AtomicBool, threads: Vec<std::thread::JoinHandle<()>>) {
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let deadline = std::time::Instant::now() + WATCHERS_STOP_WAIT;
    for t in threads {
        while !t.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        if t.is_finished() {
            let _ = t.join();
        }
    }
}

/// Inputs the driver loop's channel holds before senders wait (or, over HTTP, are
/// answered 503 and asked to retry).
pub const INPUT_CAPACITY: usize = 1024;

fn spawn_stdin_reader(tx: mpsc::SyncSender<Input>) {
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut input = stdin.lock();
        let mut buf = Vec::new();
        let mut n = 0;
        loop {
            let msg = match read_line(&mut input, &mut buf, ved_engine::input::LINE_BYTES_MAX) {
                Ok(None) => break,
                Ok(Some(line)) => {
                    n += 1;
                    match line {
                        LineRead::Text(l) => Input::Line(n, l),
                        LineRead::TooLong(len) => Input::BadLine(
                            n,
                            format!(
                                "the line is {len} bytes or more; the limit is {} (it was skipped)",
                                ved_engine::input::LINE_BYTES_MAX
                            ),
                        ),
                        LineRead::NotUtf8(at) => Input::BadLine(
                            n,
                            format!("the line is not UTF-8 text (invalid byte at offset {at}); it was skipped"),
                        ),
                    }
                }
                Err(e) => Input::ReadError(n + 1, e.to_string()),
            };
            let stop = matches!(msg, Input::ReadError(..));
            if tx.send(msg).is_err() || stop {
                break;
            }
        }
        let _ = tx.send(Input::Eof);
    });
}

/// One line of input, as [`read_line`] found it.
#[derive(Debug, PartialEq)]
pub enum LineRead {
    Text(String),
    /// Longer than the limit: the rest of the line was read and dropped, never held.
    TooLong(usize),
    /// Not UTF-8: the offset of the first invalid byte.
    NotUtf8(usize),
}

/// Reads one line (without its `\n`, or `\r\n`), holding at most `max` bytes of it: a longer
/// line is consumed to its end but not kept. `None` at the end of the input. A bad line is
/// reported and the next one is read as usual.
pub fn read_line(r: &mut impl BufRead, buf: &mut Vec<u8>, max: usize) -> std::io::Result<Option<LineRead>> {
    buf.clear();
    let mut len = 0usize;
    let mut any = false;
    loop {
        let chunk = match r.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            if !any {
                return Ok(None);
            }
            break;
        }
        any = true;
        let (part, done) = match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => (&chunk[..i], true),
            None => (chunk, false),
        };
        len += part.len();
        if len <= max {
            buf.extend_from_slice(part);
        }
        let used = part.len() + usize::from(done);
        r.consume(used);
        if done {
            break;
        }
    }
    if len > max {
        buf.clear();
        return Ok(Some(LineRead::TooLong(len)));
    }
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    match String::from_utf8(std::mem::take(buf)) {
        Ok(s) => Ok(Some(LineRead::Text(s))),
        Err(e) => Ok(Some(LineRead::NotUtf8(e.utf8_error().valid_up_to()))),
    }
}

/// Applies one input; true when it asks the process to stop.
fn handle_input<W: Write>(driver: &mut Driver<W>, input: Input) -> bool {
    match input {
        Input::Line(n, line) => driver.handle_line(n, &line),
        Input::BadLine(n, message) => {
            driver.sink_mut().event(ved_engine::EngineEvent::Error {
                line: Some(n),
                instance: None,
                source: None,
                message,
            });
        }
        Input::ReadError(n, e) => {
            let message = format!("cannot read input: {e}");
            driver.sink_mut().event(ved_engine::EngineEvent::Error {
                line: Some(n),
                instance: None,
                source: None,
                message,
            });
        }
        Input::Eof | Input::Shutdown => return true,
        Input::Durable => driver.settle(),
        Input::Inbound(x) => driver.handle_inbound(x),
        Input::Api(call, reply) => driver.call(
            call,
            Box::new(move |r| {
                let _ = reply.send(r);
            }),
        ),
    }
    false
}

/// Whether a stall of the store's writes was reported and its end not yet: one line when it
/// starts and one when it ends, however many rounds see it. (One engine per process.)
static STALL_REPORTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Reports a failed store, and a store waiting for space; `Some` exit code when the process
/// must stop. A full disk is not a reason to stop: the store goes on by itself once space is
/// freed, and acknowledgements and intents wait for it meanwhile.
fn check_store<W: Write>(driver: &mut Driver<W>) -> Option<ExitCode> {
    use std::sync::atomic::Ordering::Relaxed;
    Sink::flush(driver.sink_mut());
    match driver.store_stalled() {
        Some(why) if !STALL_REPORTED.swap(true, Relaxed) => {
            tracing::error!(
                hint = "free space on that file system; writes wait and resume by themselves (nothing is acknowledged, no intent leaves, /healthz answers 503 meanwhile)",
                "the store cannot write: {why}"
            );
        }
        None if driver.store_failure().is_none() && STALL_REPORTED.swap(false, Relaxed) => {
            tracing::info!("the store writes again: space was freed, and what waited for it is being written");
        }
        _ => {}
    }
    let f = driver.store_failure()?;
    tracing::error!(
        hint = "nothing after the last acknowledged input is durable; fix the disk and restart",
        "the store failed: {f}"
    );
    Some(ExitCode::from(1))
}

/// `addr` as a browser should be pointed at it: an unspecified address (`0.0.0.0`, `::`)
/// is reachable on loopback.
pub fn browsable(addr: &std::net::SocketAddr) -> std::net::SocketAddr {
    let mut a = *addr;
    if a.ip().is_unspecified() {
        a.set_ip(match a {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    a
}

/// `--stdin`: at the end of input, keep going until every intent is durable and answered.
fn stdin_loop<W: Write>(driver: &mut Driver<W>, rx: &mpsc::Receiver<Input>) -> Option<ExitCode> {
    let mut eof = false;
    while !(eof && driver.drained()) {
        let Ok(input) = rx.recv() else { break };
        eof |= handle_input(driver, input);
        if let Some(code) = check_store(driver) {
            return Some(code);
        }
    }
    None
}

/// How long the daemon may sleep when no retry is due: an upper bound on how late
/// a clock-driven step can be noticed.
const DAEMON_IDLE_WAKE: std::time::Duration = std::time::Duration::from_millis(500);
/// How long a stopping daemon waits for results already in flight.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// The daemon: wall-clock time drives retries; SIGTERM or SIGINT stops it after a flush.
/// What the wall-clock loop drives: the daemon's engine, or a cluster node.
pub(crate) trait Host {
    /// Applies one input; true when it asks the process to stop.
    fn handle(&mut self, input: Input) -> bool;
    /// Once per round, before its inputs: run what came due on the clock.
    fn round(&mut self);
    /// How long the loop may wait for an input before the next round.
    fn wait(&self) -> std::time::Duration;
    /// `Some` exit code when the process must stop at once (a failed store).
    fn failed(&mut self) -> Option<ExitCode>;
}

/// Inputs handled per round, at most: inputs that keep arriving (results of intents a
/// round released) must not keep the clock-driven work from running.
const ROUND_INPUTS: usize = 256;

/// The one input loop of the daemon and of cluster nodes: wait for an input (or until the
/// host's next deadline), run what came due, handle a bounded round of inputs.
pub(crate) fn wall_clock_loop(host: &mut impl Host, rx: &mpsc::Receiver<Input>) -> Option<ExitCode> {
    // Under systemd: ready now, and the watchdog pinged from this loop only, so that a
    // driver that stops turning stops the pings.
    let mut notify = crate::systemd::Notifier::from_env();
    notify.ready();
    loop {
        notify.tick();
        let first = match rx.recv_timeout(host.wait().min(notify.wait_at_most())) {
            Ok(i) => Some(i),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => return None,
        };
        host.round();
        let round: Vec<Input> = first.into_iter().chain(rx.try_iter().take(ROUND_INPUTS)).collect();
        let mut stop = false;
        for input in round {
            stop |= host.handle(input);
        }
        if let Some(code) = host.failed() {
            return Some(code);
        }
        if stop {
            notify.stopping();
            return None;
        }
    }
}

/// The daemon's engine on a wall clock.
struct Daemon<'a, W: Write> {
    driver: &'a mut Driver<W>,
    clock: WallClock,
}

impl<W: Write> Host for Daemon<'_, W> {
    fn handle(&mut self, input: Input) -> bool {
        handle_input(self.driver, input)
    }

    fn round(&mut self) {
        self.driver.tick();
    }

    fn wait(&self) -> std::time::Duration {
        match self.driver.next_timer_ms() {
            Some(t) => {
                let now = ved_engine::Clock::now_ms(&self.clock);
                std::time::Duration::from_millis(t.saturating_sub(now)).min(DAEMON_IDLE_WAKE)
            }
            None => DAEMON_IDLE_WAKE,
        }
    }

    fn failed(&mut self) -> Option<ExitCode> {
        check_store(self.driver)
    }
}

fn daemon_loop<W: Write>(driver: &mut Driver<W>, rx: &mpsc::Receiver<Input>) -> Option<ExitCode> {
    // Time continues from the snapshots, so retry deadlines written before a restart still hold.
    let clock = WallClock::starting_at(driver.now_ms());
    driver.set_clock(Box::new(clock.clone()));
    if let Some(code) = wall_clock_loop(&mut Daemon { driver, clock }, rx) {
        return Some(code);
    }
    driver.sink_mut().emit(obj(json!({"event": "stopping"})));
    // Give results already in flight a moment; whatever is still out after that is
    // recorded as undelivered and goes out again after a restart.
    let deadline = std::time::Instant::now() + SHUTDOWN_GRACE;
    while !driver.drained() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            break;
        }
        match rx.recv_timeout(left) {
            Ok(Input::Api(_, reply)) => {
                let _ = reply.send(api::Reply {
                    status: 503,
                    body: json!({"error": {"status": 503, "message": "ved is shutting down"}}),
                });
            }
            Ok(i) => {
                handle_input(driver, i);
            }
            Err(_) => break,
        }
        if let Some(code) = check_store(driver) {
            return Some(code);
        }
    }
    None
}

#[cfg(test)]
mod reading {
    use super::{read_line, LineRead};

    fn lines(input: &[u8], max: usize) -> Vec<LineRead> {
        // A tiny buffer, so that lines span many reads.
        let mut r = std::io::BufReader::with_capacity(3, input);
        let mut buf = Vec::new();
        let mut out = Vec::new();
        while let Some(l) = read_line(&mut r, &mut buf, max).unwrap() {
            assert!(buf.capacity() <= max.max(8) * 2, "held {} bytes", buf.capacity());
            out.push(l);
        }
        out
    }

    #[test]
    fn lines_are_split_kept_within_the_limit_and_checked_for_utf8() {
        let text = |s: &str| LineRead::Text(s.to_string());
        assert_eq!(lines(b"", 8), []);
        assert_eq!(lines(b"a\nbc\r\n\nlast", 8), [text("a"), text("bc"), text(""), text("last")]);
        assert_eq!(
            lines(b"ok\n0123456789abcdef\n\xe2\x9c\x93\nab\xffc\nafter\n", 8),
            [text("ok"), LineRead::TooLong(16), text("\u{2713}"), LineRead::NotUtf8(2), text("after")]
        );
        // Exactly the limit is a line; one byte more is not.
        assert_eq!(lines(b"12345678\n123456789\n", 8), [text("12345678"), LineRead::TooLong(9)]);
    }
}
