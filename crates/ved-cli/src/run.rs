//! `ved run --stdin`: observations in as JSON lines, events out as JSON lines,
//! durable in a data directory unless `--ephemeral` (`main.rs` picks the default
//! directory, [`default_data_dir`]; the first event of a durable run names it).
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

use crate::json::{from_json, to_json};
use crate::load;
use serde_json::{json, Map, Value as Json};
use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{mpsc, Arc};
use ved_runtime::{Cause, Event, Instance, Intent, Runtime, Status};
use ved_store::{AuditDraft, Durability, JournalEntry, Origin, Record, SnapshotRecord, Store, JOURNAL_MAX};
use ved_syntax::SourceMap;
use ved_vm::CompiledProgram;

mod api;
pub use api::{BODY_LIMIT, OPENAPI};

/// Longest input line accepted; longer lines are refused with an error event.
const LINE_BYTES_MAX: usize = 1 << 20;
/// Journal entries an instance keeps once it is stable again.
const JOURNAL_STABLE_KEEP: usize = 64;
/// Log bytes (estimated) after which the store is compacted into a checkpoint.
const COMPACT_AFTER_RECORDS: usize = 200_000;

pub struct RunOptions {
    pub seed: u64,
    pub data_dir: Option<PathBuf>,
    pub durability: Durability,
    pub recover: bool,
    /// `ved.toml`, already validated against the program.
    pub config: Option<ved_adapters::config::Config>,
    /// `Background` for `ved run`; `Manual` lets a simulation decide when writes happen.
    pub flush: ved_store::Flush,
}

struct Out<W: Write> {
    w: W,
    seq: u64,
}

impl<W: Write> Out<W> {
    fn emit(&mut self, mut obj: Map<String, Json>) {
        self.seq += 1;
        let mut line = Map::new();
        line.insert("seq".into(), json!(self.seq));
        line.append(&mut obj);
        // A closed stdout (e.g. piped into `head`) is not worth a panic.
        let _ = writeln!(self.w, "{}", Json::Object(line));
    }
}

fn obj(j: Json) -> Map<String, Json> {
    match j {
        Json::Object(m) => m,
        _ => Map::new(),
    }
}

enum Input {
    Line(u64, String),
    ReadError(u64, String),
    Eof,
    /// A result or an observation from the adapters, in the order they reported.
    Inbound(ved_adapters::Inbound),
    /// A batch became durable; the driver reads the store's durable sequence itself.
    Durable,
    /// A call to the HTTP API and where to answer it.
    Api(api::Call, api::Responder),
    /// SIGTERM or SIGINT: flush and stop.
    Shutdown,
}

/// What to do once a batch is durable.
enum Ack {
    /// Print an `ack` for this input line.
    Line(u64),
    /// Answer an API call.
    Reply(api::Responder, api::Reply),
}

/// Where `ved run` takes its input from.
pub enum Mode {
    /// JSON lines on stdin; simulated time (`advance_ms`); exit at the end of input.
    Stdin,
    /// The HTTP API on this address; wall-clock time; exit on SIGTERM or SIGINT.
    Daemon { listen: std::net::SocketAddr },
}

/// What the driver knows about an observation it queued beyond what the runtime reports:
/// where it came from, everything it reported (not only what changed), and whether it was
/// relative. The journal records it, and `ved replay` feeds it again from there.
pub(crate) struct Feed {
    instance: String,
    source: String,
    caused_by: Option<String>,
    set: Vec<(String, Json)>,
    add: Vec<(String, i64)>,
}

/// A drift and what was done about it, until the instance rests again.
struct Episode {
    /// What happened, in order: drifts, corrections, failures, later readings.
    log: Vec<String>,
    /// Whether Ved has acted yet: a reading after that reports an effect, not a drift.
    acted: bool,
    ticks_at_start: u64,
}

pub struct Driver<W: Write> {
    rt: Runtime,
    adapters: Adapters,
    program: std::sync::Arc<CompiledProgram>,
    sources: SourceMap,
    store: Option<Store>,
    out: Out<W>,
    /// Intents waiting for the batch that recorded them to be durable.
    outbox: VecDeque<(u64, Intent)>,
    /// Input lines and API calls waiting for their batch to be durable.
    acks: VecDeque<(u64, Ack)>,
    journals: BTreeMap<String, VecDeque<JournalEntry>>,
    episodes: BTreeMap<String, Episode>,
    last_status: BTreeMap<String, Status>,
    /// Why each instance is not stable, when the runtime said (stuck, livelock, degraded).
    reasons: BTreeMap<String, String>,
    /// Records written since the last checkpoint.
    records_since_checkpoint: usize,
    /// Intents handed to the delivery pool whose results have not come back yet.
    in_flight: usize,
    /// Per instance, recent snapshots (oldest first), so that a checkpoint can keep the one
    /// before the oldest journal entry: where `ved replay` starts.
    history: BTreeMap<String, VecDeque<SnapshotRecord>>,
    /// The program's sources, recorded in the store.
    files: Vec<(String, String)>,
    now_ms: u64,
    /// Observations queued and not yet applied, oldest first.
    feeds: VecDeque<Feed>,
    /// Per instance, the last outside input applied: the origin of the ticks that follow.
    last_input: BTreeMap<String, Origin>,
    /// Per instance, the last status journaled.
    journal_status: BTreeMap<String, Status>,
    /// Per instance, observations that changed nothing since the last journal entry.
    quiet: BTreeMap<String, u64>,
}

/// Which driver serves each adapter name, and how intents reach them.
pub struct Adapters {
    pub by_name: BTreeMap<String, Arc<dyn ved_adapters::Actuator>>,
    /// For names not in `by_name` (without a configuration: every name).
    pub fallback: Arc<dyn ved_adapters::Actuator>,
    /// Worker threads; `None` delivers inline, on the driver's own thread.
    pub pool: Option<ved_adapters::DeliveryPool>,
    /// When set, released intents are only queued here, and their results come back
    /// through [`Driver::handle_inbound`]: a simulation decides when, how and how often.
    pub manual: Option<Arc<std::sync::Mutex<Vec<ved_adapters::IntentRequest>>>>,
}

impl Adapters {
    /// Everything acknowledged at once by the logging driver, inline.
    pub fn logging() -> Adapters {
        Adapters { by_name: BTreeMap::new(), fallback: Arc::new(ved_adapters::LogDriver), pool: None, manual: None }
    }

    /// One driver for every name, inline (tests).
    pub fn single(driver: Arc<dyn ved_adapters::Actuator>) -> Adapters {
        Adapters { by_name: BTreeMap::new(), fallback: driver, pool: None, manual: None }
    }

    /// Hands an intent to the driver bound to its adapter name. Returns the outcome when it
    /// was carried out inline; `None` when it went to the worker pool or the manual queue,
    /// whose result comes back later as an `Inbound::Result`.
    pub fn dispatch(&self, req: ved_adapters::IntentRequest) -> Option<ved_adapters::ActionResult> {
        if let Some(queue) = &self.manual {
            queue.lock().unwrap_or_else(|p| p.into_inner()).push(req);
            return None;
        }
        let driver = self.by_name.get(&req.adapter).unwrap_or(&self.fallback).clone();
        match &self.pool {
            Some(pool) => {
                pool.submit(driver, req);
                None
            }
            None => {
                let mut outcome = Ok(());
                driver.deliver_then(&req, &mut |r| outcome = r);
                Some(outcome)
            }
        }
    }

    /// Intents queue up in `queue`; results are fed back by the caller.
    pub fn manual(queue: Arc<std::sync::Mutex<Vec<ved_adapters::IntentRequest>>>) -> Adapters {
        Adapters {
            by_name: BTreeMap::new(),
            fallback: Arc::new(ved_adapters::LogDriver),
            pool: None,
            manual: Some(queue),
        }
    }
}

/// Builds a [`Driver`] for a program that embeds Ved: named adapters, where the
/// state lives (or in memory), the retry policy and the jitter seed.
///
/// ```no_run
/// # use std::sync::Arc;
/// # fn demo(loaded: ved_cli::load::Loaded, firewall: Arc<dyn ved_adapters::Actuator>) {
/// let ved = ved_cli::run::Builder::new(loaded)
///     .adapter("Firewall", firewall)
///     .data_dir("/var/lib/my-app/ved")
///     .retry(ved_runtime::RetryPolicy { breaker_after: 3, ..Default::default() })
///     .start(Vec::new());
/// # }
/// ```
pub struct Builder {
    loaded: load::Loaded,
    adapters: BTreeMap<String, Arc<dyn ved_adapters::Actuator>>,
    data_dir: Option<PathBuf>,
    retry: ved_runtime::RetryPolicy,
    seed: u64,
}

impl Builder {
    pub fn new(loaded: load::Loaded) -> Builder {
        Builder {
            loaded,
            adapters: BTreeMap::new(),
            data_dir: None,
            retry: ved_runtime::RetryPolicy::default(),
            seed: 0,
        }
    }

    /// Serves the program's `emit NAME.Action(...)` with `actuator`. Names with no
    /// adapter are acknowledged at once, as the `log` driver does.
    pub fn adapter(mut self, name: &str, actuator: Arc<dyn ved_adapters::Actuator>) -> Builder {
        self.adapters.insert(name.to_string(), actuator);
        self
    }

    /// Keeps every slice durable in `dir` (fsync); without it the engine runs in memory.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Builder {
        self.data_dir = Some(dir.into());
        self
    }

    pub fn retry(mut self, policy: ved_runtime::RetryPolicy) -> Builder {
        self.retry = policy;
        self
    }

    /// Seeds the retry jitter (reproducible runs).
    pub fn seed(mut self, seed: u64) -> Builder {
        self.seed = seed;
        self
    }

    /// Starts the engine; events go to `out` as JSON lines. Actions run inline, on the
    /// caller's thread, when the engine releases them.
    pub fn start<W: Write>(self, out: W) -> Result<Driver<W>, StartError> {
        let p = self.retry;
        let mut config = ved_adapters::config::Config::default();
        config.retry = ved_adapters::config::RetryConfig {
            initial_ms: p.initial_ms,
            factor: p.factor,
            cap_ms: p.cap_ms,
            breaker_after: p.breaker_after,
            confirm_ms: p.confirm_ms,
        };
        let opts = RunOptions {
            seed: self.seed,
            data_dir: self.data_dir,
            durability: Durability::Fsync,
            recover: false,
            config: Some(config),
            flush: ved_store::Flush::Background,
        };
        let adapters =
            Adapters { by_name: self.adapters, fallback: Arc::new(ved_adapters::LogDriver), pool: None, manual: None };
        Driver::start(self.loaded, &opts, adapters, out, Box::new(|_| {}))
    }
}

/// Why the driver could not start.
pub enum StartError {
    /// Already reported on stderr.
    Reported,
}

impl<W: Write> Driver<W> {
    /// Opens the store (if any), restores or creates the instances, and runs them
    /// until idle. `on_durable` is called from the store's writer after each batch.
    pub fn start(
        loaded: load::Loaded,
        opts: &RunOptions,
        adapters: Adapters,
        w: W,
        on_durable: ved_store::DurableHook,
    ) -> Result<Driver<W>, StartError> {
        let mut out = Out { w, seq: 0 };
        let (store, recovered) = match &opts.data_dir {
            Some(dir) => match Store::open_with(dir, opts.durability, opts.recover, opts.flush, on_durable) {
                Ok((s, r)) => (Some(s), Some(r)),
                Err(e) => {
                    eprintln!("error: {e}");
                    eprintln!("  = hint: {}", e.hint());
                    return Err(StartError::Reported);
                }
            },
            None => (None, None),
        };
        if let Some(dir) = &opts.data_dir {
            // Where the state lives, given or the default: the first event of a durable run.
            let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.clone());
            out.emit(obj(json!({"event": "store", "dir": dir.display().to_string()})));
        }
        let program = loaded.compiled.clone();
        let mut rt = Runtime::empty(program.clone(), opts.seed);
        if let Some(c) = &opts.config {
            rt.policy = ved_runtime::RetryPolicy {
                initial_ms: c.retry.initial_ms,
                factor: c.retry.factor,
                cap_ms: c.retry.cap_ms,
                breaker_after: c.retry.breaker_after,
                confirm_ms: c.retry.confirm_ms,
            };
        }
        let mut journals = BTreeMap::new();
        let mut last_status = BTreeMap::new();
        let mut history: BTreeMap<String, VecDeque<SnapshotRecord>> = BTreeMap::new();
        let mut recorded_program = None;
        let program_files = loaded.files.clone();
        if let Some(rec) = recovered {
            recorded_program = rec.program.clone().map(|p| (p, rec.retry, rec.confirm_ms));
            for (name, base) in &rec.bases {
                history.entry(name.clone()).or_default().push_back(base.clone());
            }
            for w in &rec.warnings {
                eprintln!("warning: {w}");
            }
            for (name, snap) in rec.snapshots {
                if let Err(msg) = check_compatible(&program, &snap) {
                    eprintln!(
                        "error: instance `{name}` in {} was written by a different program: {msg}",
                        dir_name(opts)
                    );
                    eprintln!("  = hint: run the program that wrote it, or start a new `--data-dir`");
                    return Err(StartError::Reported);
                }
                let s = snap.snapshot.clone();
                last_status.insert(name.clone(), s.status);
                history.entry(name.clone()).or_default().push_back(snap.clone());
                if let Err(e) = rt.restore_instance(s) {
                    eprintln!("error: cannot restore `{name}`: {e}");
                    return Err(StartError::Reported);
                }
            }
            journals = rec.journals;
        }
        for (d, dom) in program.domains.iter().enumerate() {
            if rt.index_of(&dom.name).is_none() {
                if let Err(e) = rt.create_instance(&dom.name, d, Vec::new()) {
                    out.emit(obj(json!({"event": "error", "message": format!("cannot start `{}`: {e}", dom.name)})));
                    let _ = out.w.flush();
                    return Err(StartError::Reported);
                }
            }
        }
        // Fields fed by a watcher take their values from readings only; the runtime
        // waits for a reading to confirm an effect on them.
        if let Some(c) = &opts.config {
            for (name, fields) in watched_fields(c, &program) {
                rt.set_watched(&name, fields);
            }
        }
        let mut driver = Driver {
            rt,
            program,
            sources: loaded.sources,
            store,
            out,
            adapters,
            outbox: VecDeque::new(),
            acks: VecDeque::new(),
            journals,
            episodes: BTreeMap::new(),
            last_status,
            reasons: BTreeMap::new(),
            records_since_checkpoint: 0,
            in_flight: 0,
            history,
            files: program_files,
            now_ms: 0,
            feeds: VecDeque::new(),
            last_input: BTreeMap::new(),
            journal_status: BTreeMap::new(),
            quiet: BTreeMap::new(),
        };
        driver.recover_journal_context();
        // Simulated time continues from the snapshots after a restart.
        driver.now_ms = driver.rt.instances().iter().map(|i| i.now_ms).max().unwrap_or(0);
        // A new store records the program; a changed program is recorded again.
        let retry = driver.retry();
        if let Some(store) = driver.store.as_mut() {
            let mut records = Vec::new();
            let confirm_ms = Some(driver.rt.policy.confirm_ms);
            if recorded_program != Some((driver.files.clone(), Some(retry), confirm_ms)) {
                records.push(Record::Program { files: driver.files.clone(), retry: Some(retry), confirm_ms });
            }
            // New instances are recorded at slice 0, so that replay can start from the beginning.
            for inst in driver.rt.instances().iter().filter(|i| i.slice == 0) {
                let dom = &driver.program.domains[inst.domain];
                let snap = SnapshotRecord::from_snapshot(inst.snapshot(), &dom.name, &dom.fields);
                driver.history.entry(inst.name.to_string()).or_default().push_back(snap.clone());
                records.push(Record::Snapshot(snap));
            }
            if !records.is_empty() {
                store.append(records, Vec::new());
            }
        }
        // Intents recorded before a restart but never acknowledged go out again, same id.
        let undelivered: Vec<Intent> = driver.rt.instances().iter().flat_map(Instance::undelivered).collect();
        for i in undelivered {
            driver.outbox.push_back((0, i));
        }
        for inst in driver.rt.instances() {
            if inst.slice > 0 && inst.status == Status::Stable {
                continue;
            }
            let started = if inst.slice == 0 { "started" } else { "resumed" };
            let what = format!("{started} at slice {}", inst.slice);
            driver
                .episodes
                .insert(inst.name.to_string(), Episode { log: vec![what], acted: false, ticks_at_start: inst.ticks });
        }
        driver.settle();
        Ok(driver)
    }

    /// Handles one input line (1-based number `n`).
    pub fn handle_line(&mut self, n: u64, line: &str) {
        if line.trim().is_empty() {
            return;
        }
        match self.apply_line(line) {
            Ok(()) => {
                let seq = self.run_and_persist();
                self.acks.push_back((seq, Ack::Line(n)));
            }
            Err((instance, message)) => {
                let mut e = obj(json!({"event": "error", "line": n, "message": message}));
                if let Some(i) = instance {
                    e.insert("instance".into(), json!(i));
                }
                self.out.emit(e);
            }
        }
        self.settle();
    }

    /// Applies a result or an observation reported by an adapter.
    pub fn handle_inbound(&mut self, inbound: ved_adapters::Inbound) {
        if self.queue_inbound(inbound) {
            self.run_and_persist();
        }
        self.settle();
    }

    /// Applies results and observations that arrived together: all of them are queued
    /// before the runtime runs, so it applies them back to back before any tick, and the
    /// journal records them as one batch.
    pub fn handle_inbound_batch(&mut self, batch: Vec<ved_adapters::Inbound>) {
        let mut queued = false;
        for inbound in batch {
            queued |= self.queue_inbound(inbound);
        }
        if queued {
            self.run_and_persist();
        }
        self.settle();
    }

    /// Queues a result or an observation; true when an observation was queued.
    fn queue_inbound(&mut self, inbound: ved_adapters::Inbound) -> bool {
        match inbound {
            ved_adapters::Inbound::Result { id, outcome } => match ved_runtime::IntentId::parse(&id) {
                Some(iid) => {
                    self.in_flight = self.in_flight.saturating_sub(1);
                    if outcome.is_ok() && self.rt.instance(&iid.instance).is_some_and(|i| i.awaits_confirmation(&iid)) {
                        // The runtime will wait for a reading to confirm the effect; make sure one comes
                        // even if the effect left the watched value as it was.
                        ved_adapters::request_reading(&iid.instance);
                    }
                    let (ok, error) = for_runtime(outcome);
                    let _ = self.rt.deliver(&iid, ok, error);
                }
                None => self.out.emit(obj(
                    json!({"event": "error", "message": format!("a driver reported on unknown intent `{id}`")}),
                )),
            },
            ved_adapters::Inbound::Repaired { instance, source, what } => self.record_repair(instance, source, what),
            ved_adapters::Inbound::Observed(o) => {
                let r =
                    self.observe(&o.instance, &o.fields, o.version.map(|v| (o.source.as_str(), v)), &o.source, None);
                match r {
                    Ok(()) => return true,
                    Err((instance, message)) => {
                        let mut e = obj(json!({"event": "error", "source": o.source, "message": message}));
                        if let Some(i) = instance {
                            e.insert("instance".into(), json!(i));
                        }
                        self.out.emit(e);
                    }
                }
            }
        }
        false
    }

    /// An adapter repaired something it owns (see `Inbound::Repaired`): one audit
    /// entry quoting what it removed or restored, and an event line.
    fn record_repair(&mut self, instance: String, source: String, what: Vec<String>) {
        self.out.emit(obj(json!({"event": "repaired", "instance": instance, "source": source, "what": what})));
        let text = format!("{source} repaired the firewall: {}", what.join("; "));
        if let Some(store) = self.store.as_mut() {
            store.append(Vec::new(), vec![AuditDraft { at_ms: self.now_ms, instance, text }]);
        }
    }

    /// The store's writer failed, if it did.
    pub fn store_failure(&self) -> Option<String> {
        self.store.as_ref().and_then(Store::failure)
    }

    /// Waits until everything is durable and delivered, writes a checkpoint, and closes the store.
    /// Results still in flight are not awaited: their intents stay recorded as
    /// undelivered and go out again, same id, after a restart.
    pub fn finish(mut self) -> Result<W, String> {
        while !self.durable_and_released() {
            if let Some(store) = self.store.as_mut() {
                store.flush()?;
            }
            self.settle();
        }
        if self.store.is_some() {
            let records = self.all_records();
            if let Some(store) = self.store.as_mut() {
                let seq = store.compact(records);
                store.wait_durable(seq).map_err(|e| format!("could not write the checkpoint: {e}"))?;
            }
        }
        if let Some(store) = self.store.take() {
            store.close()?;
        }
        let _ = self.out.w.flush();
        Ok(self.out.w)
    }

    pub fn runtime(&self) -> &Runtime {
        &self.rt
    }

    /// With `Flush::Manual`: writes and syncs what is queued, then releases what became
    /// durable (acks, intents). In background mode it waits for the writer instead.
    pub fn flush(&mut self) -> Result<(), String> {
        if let Some(store) = self.store.as_mut() {
            store.flush()?;
        }
        self.settle();
        Ok(())
    }

    /// Flushes and releases until nothing is left to do: every slice durable, every
    /// intent handed out and (with inline actuators) answered. For embedders: call it
    /// after feeding observations to let the engine converge before looking.
    pub fn run_until_idle(&mut self) -> Result<(), String> {
        // Each round makes the last round's slices durable and releases their intents;
        // a converging program needs one round per step that emits.
        for _ in 0..100_000 {
            self.flush()?;
            if self.drained() && !self.rt.has_work() {
                return Ok(());
            }
            if self.in_flight > 0 && self.durable_and_released() {
                // Results from worker threads are not this call's to wait for.
                return Ok(());
            }
        }
        Err("the engine did not become idle after 100000 rounds".into())
    }

    /// With `Flush::Manual`: writes and syncs what is queued without releasing anything,
    /// as a crash right after the write would leave it.
    pub fn write_only(&mut self) -> Result<(), String> {
        match self.store.as_mut() {
            Some(store) => store.flush().map(|_| ()),
            None => Ok(()),
        }
    }

    /// The retry policy as recorded in the store.
    fn retry(&self) -> (u64, u32, u64, u32) {
        let p = self.rt.policy;
        (p.initial_ms, p.factor, p.cap_ms, p.breaker_after)
    }

    /// Stops as a crash would: nothing queued is written, nothing is flushed.
    pub fn crash(mut self) {
        if let Some(store) = self.store.take() {
            store.abandon();
        }
    }

    /// The events printed so far (the writer given to [`Driver::start`]).
    pub fn output(&self) -> &W {
        &self.out.w
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
    run(files, config, opts, Mode::Stdin)
}

/// `ved run`: loads the program and its configuration, starts adapters and
/// watchers, and feeds everything through one ordered channel to the driver.
pub fn run(files: &[PathBuf], config: Option<&Path>, mut opts: RunOptions, mode: Mode) -> ExitCode {
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
    // Bounded: a flood of input waits (stdin, watchers) or is told to retry (HTTP)
    // instead of growing memory without end.
    let (tx, rx) = mpsc::sync_channel::<Input>(INPUT_CAPACITY);
    // In daemon mode the port is bound before anything starts, so a busy port
    // is reported at once and the store is never opened for nothing.
    let server = match &mode {
        Mode::Stdin => None,
        Mode::Daemon { listen } => {
            let token = std::env::var("VED_API_TOKEN")
                .ok()
                .filter(|t| !t.is_empty())
                .or_else(|| opts.config.as_ref().and_then(|c| c.api.token.clone()));
            match api::serve(*listen, token, tx.clone()) {
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
    let Ok(mut driver) = Driver::start(loaded, &opts, adapters, stdout, hook) else {
        return ExitCode::from(1);
    };
    if let Some((addr, _)) = &server {
        driver.out.emit(obj(json!({"event": "listening", "addr": addr.to_string()})));
        let _ = driver.out.w.flush();
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
            eprintln!("error: the store failed: {e}");
            ExitCode::from(1)
        }
    }
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
        let mut n = 0;
        for line in stdin.lock().lines() {
            n += 1;
            let msg = match line {
                Ok(l) => Input::Line(n, l),
                Err(e) => Input::ReadError(n, e.to_string()),
            };
            let stop = matches!(msg, Input::ReadError(..));
            if tx.send(msg).is_err() || stop {
                break;
            }
        }
        let _ = tx.send(Input::Eof);
    });
}

/// Applies one input; true when it asks the process to stop.
fn handle_input<W: Write>(driver: &mut Driver<W>, input: Input) -> bool {
    match input {
        Input::Line(n, line) => driver.handle_line(n, &line),
        Input::ReadError(n, e) => {
            driver.out.emit(obj(json!({"event": "error", "line": n, "message": format!("cannot read input: {e}")})));
        }
        Input::Eof | Input::Shutdown => return true,
        Input::Durable => driver.settle(),
        Input::Inbound(x) => driver.handle_inbound(x),
        Input::Api(call, reply) => driver.handle_api(call, reply),
    }
    false
}

/// Reports a failed store; `Some` exit code when the process must stop.
fn check_store<W: Write>(driver: &mut Driver<W>) -> Option<ExitCode> {
    let _ = driver.out.w.flush();
    let f = driver.store_failure()?;
    eprintln!("error: the store failed: {f}");
    eprintln!("  = hint: nothing after the last acknowledged input is durable; fix the disk and restart");
    Some(ExitCode::from(1))
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
fn daemon_loop<W: Write>(driver: &mut Driver<W>, rx: &mpsc::Receiver<Input>) -> Option<ExitCode> {
    // Time continues from the snapshots, so retry deadlines written before a restart still hold.
    let base = driver.rt.instances().iter().map(|i| i.now_ms).max().unwrap_or(0);
    let started = std::time::Instant::now();
    let now = || base + started.elapsed().as_millis() as u64;
    loop {
        let wait = match driver.rt.next_timer_ms() {
            Some(t) => std::time::Duration::from_millis(t.saturating_sub(now())).min(DAEMON_IDLE_WAKE),
            None => DAEMON_IDLE_WAKE,
        };
        let input = match rx.recv_timeout(wait) {
            Ok(i) => Some(i),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        driver.advance_clock(now());
        let stop = input.is_some_and(|i| handle_input(driver, i));
        if let Some(code) = check_store(driver) {
            return Some(code);
        }
        if stop {
            break;
        }
    }
    driver.out.emit(obj(json!({"event": "stopping"})));
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

type Watchers = Vec<Box<dyn ved_adapters::Watcher>>;

/// For each instance, the slots of the fields that `ved.toml`'s watchers feed.
pub fn watched_fields(config: &ved_adapters::config::Config, program: &CompiledProgram) -> BTreeMap<String, Vec<u16>> {
    let mut out: BTreeMap<String, Vec<u16>> = BTreeMap::new();
    for w in &config.watch {
        let w = w.get_ref();
        let instance = match &w.instance {
            Some(i) => i.get_ref().clone(),
            None => program.domains.first().map(|d| d.name.clone()).unwrap_or_default(),
        };
        let Some(dom) = program.domains.iter().find(|d| d.name == instance) else { continue };
        for f in &w.fields {
            if let Some(slot) = dom.fields.iter().position(|(n, _)| n == f.get_ref()) {
                out.entry(instance.clone()).or_default().push(slot as u16);
            }
        }
    }
    out
}

/// Builds the drivers and watchers that `ved.toml` describes.
pub fn build_adapters(
    config: &ved_adapters::config::Config,
    program: &CompiledProgram,
    sink: ved_adapters::Sink,
) -> Result<(Adapters, Watchers), String> {
    use ved_adapters::{exec, http, nftables, process, sim};
    let mut by_name: BTreeMap<String, Arc<dyn ved_adapters::Actuator>> = BTreeMap::new();
    let mut pools: BTreeMap<String, Arc<process::Pool>> = BTreeMap::new();
    let mut firewalls: BTreeMap<String, Arc<nftables::Firewall>> = BTreeMap::new();
    for (name, a) in &config.adapters {
        let name = name.get_ref().clone();
        let timeout = std::time::Duration::from_millis(a.timeout_ms);
        let driver: Arc<dyn ved_adapters::Actuator> = match a.driver.get_ref().as_str() {
            "exec" => Arc::new(exec::ExecDriver { command: a.command.clone(), timeout }),
            "http" => Arc::new(http::HttpDriver::new(a.url.clone().unwrap_or_default(), timeout)),
            "process" => {
                let pool = process::Pool::new(a.command.clone(), a.start_grace());
                pools.insert(name.clone(), pool.clone());
                Arc::new(process::ProcessDriver { pool })
            }
            "nftables" => {
                let chain = nftables::Chain {
                    family: a.family.clone(),
                    table: a.table.clone().unwrap_or_default(),
                    chain: a.chain.clone().unwrap_or_default(),
                    netns: a.netns.clone(),
                    timeout,
                    priority: a.priority,
                    base_rules: a.base_rules.iter().map(|r| r.get_ref().clone()).collect(),
                };
                let fw = nftables::Firewall::new(chain, sink.clone());
                firewalls.insert(name.clone(), fw.clone());
                Arc::new(nftables::NftDriver { fw })
            }
            "sim" => Arc::new(sim::SimDriver::new(a.fail.clone(), a.delay_ms)),
            "log" => Arc::new(ved_adapters::LogDriver),
            other => return Err(format!("adapter `{name}`: the `{other}` driver is not available in this build")),
        };
        by_name.insert(name, driver);
    }
    let mut watchers: Watchers = Vec::new();
    for (i, w) in config.watch.iter().enumerate() {
        let w = w.get_ref();
        let instance = match &w.instance {
            Some(i) => i.get_ref().clone(),
            None => program.domains.first().map(|d| d.name.clone()).unwrap_or_default(),
        };
        let source = format!("watch#{}", i + 1);
        match w.driver.get_ref().as_str() {
            "exec" => watchers.push(Box::new(exec::ExecWatcher {
                instance,
                command: w.command.clone(),
                interval: w.interval_ms.map(std::time::Duration::from_millis),
                timeout: std::time::Duration::from_secs(10),
                source,
            })),
            "process" => {
                let adapter = w.adapter.as_ref().map(|a| a.get_ref().clone()).unwrap_or_default();
                let pool = pools
                    .get(&adapter)
                    .cloned()
                    .ok_or_else(|| format!("watch #{}: `{adapter}` is not a process adapter", i + 1))?;
                let field = w.fields.first().map(|f| f.get_ref().clone()).unwrap_or_default();
                watchers.push(Box::new(process::ProcessWatcher { pool, instance, field, source }));
            }
            "nftables" => {
                let adapter = w.adapter.as_ref().map(|a| a.get_ref().clone()).unwrap_or_default();
                let fw = firewalls
                    .get(&adapter)
                    .cloned()
                    .ok_or_else(|| format!("watch #{}: `{adapter}` is not an nftables adapter", i + 1))?;
                let field = w.fields.first().map(|f| f.get_ref().clone()).unwrap_or_default();
                fw.report_as(&instance, &source);
                watchers.push(Box::new(nftables::NftWatcher { fw, instance, field, source }));
            }
            other => return Err(format!("watch #{}: the `{other}` watcher is not available in this build", i + 1)),
        }
    }
    let pool = Some(ved_adapters::DeliveryPool::new(sink));
    Ok((Adapters { by_name, fallback: Arc::new(ved_adapters::LogDriver), pool, manual: None }, watchers))
}

fn dir_name(opts: &RunOptions) -> String {
    opts.data_dir.as_deref().map(Path::display).map(|d| d.to_string()).unwrap_or_default()
}

/// A snapshot fits the program if its domain exists with the same fields and types.
fn check_compatible(program: &CompiledProgram, snap: &SnapshotRecord) -> Result<(), String> {
    let Some(d) = program.domains.get(snap.snapshot.domain).filter(|d| d.name == snap.domain) else {
        return Err(format!("its domain `{}` is not in this program", snap.domain));
    };
    let ours: Vec<(String, String)> = d.fields.iter().map(|(n, t)| (n.clone(), t.to_string())).collect();
    if ours != snap.fields {
        let fmt = |f: &[(String, String)]| f.iter().map(|(n, t)| format!("{n}: {t}")).collect::<Vec<_>>().join(", ");
        return Err(format!("its fields are [{}], the program declares [{}]", fmt(&snap.fields), fmt(&ours)));
    }
    Ok(())
}

type LineError = (Option<String>, String);

impl<W: Write> Driver<W> {
    /// Everything durable, acknowledged and answered.
    fn drained(&self) -> bool {
        self.in_flight == 0 && self.durable_and_released()
    }

    /// Everything durable, acknowledged and handed to the adapters.
    fn durable_and_released(&self) -> bool {
        self.outbox.is_empty()
            && self.acks.is_empty()
            && self.store.as_ref().is_none_or(|s| s.durable_seq() >= s.last_seq())
    }

    /// Moves the runtime's clock to `now_ms` and runs the retries that came due.
    fn advance_clock(&mut self, now_ms: u64) {
        if now_ms <= self.now_ms {
            return;
        }
        self.now_ms = now_ms;
        let due = self.rt.next_timer_ms().is_some_and(|t| t <= now_ms);
        self.rt.advance_time(now_ms);
        if due {
            self.run_and_persist();
            self.settle();
        }
    }

    fn durable_seq(&self) -> u64 {
        self.store.as_ref().map_or(u64::MAX, Store::durable_seq)
    }

    /// Runs what is ready, delivers released intents and feeds their results back,
    /// until nothing moves.
    pub fn settle(&mut self) {
        loop {
            self.release();
            if !self.rt.has_work() {
                return;
            }
            self.run_and_persist();
        }
    }

    /// Acknowledges durable lines and hands durable intents to the logging adapter.
    fn release(&mut self) {
        let durable = self.durable_seq();
        while self.acks.front().is_some_and(|(s, _)| *s <= durable) {
            match self.acks.pop_front().expect("checked").1 {
                Ack::Line(line) => {
                    if self.store.is_some() {
                        self.out.emit(obj(json!({"event": "ack", "line": line})));
                    }
                }
                Ack::Reply(to, reply) => {
                    let _ = to.send(reply);
                }
            }
        }
        while self.outbox.front().is_some_and(|(s, _)| *s <= durable) {
            let (seq, intent) = self.outbox.pop_front().expect("checked");
            // Output commit: an intent leaves only once the batch that recorded it is durable,
            // as the store itself says now (not only the watermark read above).
            debug_assert!(
                self.store.as_ref().is_none_or(|st| st.durable_seq() >= seq && seq <= st.last_seq()),
                "intent {} of batch {seq} released before its batch is durable",
                intent.id
            );
            let d = self.rt.instance(&intent.id.instance).map(|i| i.domain).unwrap_or(0);
            let tname = self.program.domains[d].transitions.get(intent.transition).map(|t| t.name.clone());
            self.out.emit(obj(
                json!({"event": "intent", "instance": &*intent.id.instance, "id": intent.id.to_string(),
                "transition": tname, "adapter": &*intent.adapter, "action": &*intent.action,
                "args": intent.args.iter().map(to_json).collect::<Vec<_>>()}),
            ));
            // For the log driver the printed line *is* the delivery, and it is acknowledged at
            // once: the line must be out before that acknowledgement can become durable, or a
            // kill could lose an intent that the store no longer lists as undelivered.
            let _ = self.out.w.flush();
            match self.adapters.dispatch(ved_adapters::IntentRequest::from_intent(&intent)) {
                Some(outcome) => {
                    let (ok, error) = for_runtime(outcome);
                    let _ = self.rt.deliver(&intent.id, ok, error);
                }
                None => self.in_flight += 1,
            }
        }
    }

    /// Runs the runtime until idle; snapshots and journals every step as one batch.
    /// Returns the batch's sequence number.
    ///
    /// Each step's snapshot is followed by its journal entry, if it has one. An entry is
    /// completed only when the instance's next entry begins (or the run ends): a status the
    /// instance reaches in a later step goes onto it, and so does the batch of a message
    /// applied right after it.
    fn run_and_persist(&mut self) -> u64 {
        let mut records: Vec<Option<Record>> = Vec::new();
        let mut audit = Vec::new();
        let mut intents = Vec::new();
        let mut steps = Vec::new();
        let program = self.program.clone();
        let persist = self.store.is_some();
        self.rt.run_stepwise(|inst, evs| {
            let dom = &program.domains[inst.domain];
            let snap = persist.then(|| SnapshotRecord::from_snapshot(inst.snapshot(), &dom.name, &dom.fields));
            steps.push((inst.name.to_string(), inst.ticks, inst.pending.is_empty(), evs.to_vec(), snap));
        });
        // Per instance: the entry still open and where it goes in `records`.
        let mut open: BTreeMap<String, (usize, JournalEntry)> = BTreeMap::new();
        // Instances that ran a tick since their last message in this run.
        let mut ticked: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
        for (name, ticks, idle, evs, snap) in steps {
            let feed = if evs.iter().any(is_observation_outcome) { self.take_feed(&name) } else { None };
            let entry = self.journal_entry(&name, &evs, feed.as_ref());
            // An observation that changes nothing on a stable instance with nothing pending (a
            // periodic resync) is counted, not journaled: it must not push real history out.
            let quiet = entry.as_ref().is_some_and(|e| {
                e.cause == "observe"
                    && e.changes.is_empty()
                    && e.caused_by.is_none()
                    && e.added.is_empty()
                    && idle
                    && self.journal_status.get(&name) == Some(&Status::Stable)
            });
            if let Some(snap) = snap {
                let last_entry = open
                    .get(&name)
                    .map(|(_, e)| e.slice)
                    .or_else(|| self.journals.get(&name).and_then(|q| q.back()).map(|e| e.slice))
                    .unwrap_or(0);
                remember(self.history.entry(name.clone()).or_default(), snap.clone(), last_entry);
                records.push(Some(Record::Snapshot(snap)));
            }
            if evs.iter().any(|e| matches!(e, Event::Tick { .. })) {
                ticked.insert(name.clone());
            }
            if quiet {
                *self.quiet.entry(name.clone()).or_default() += 1;
            } else if let Some(mut e) = entry {
                if e.cause == "transition" {
                    e.origin = self.last_input.get(&name).cloned();
                } else {
                    // Messages applied back to back, with no tick between them, were queued
                    // together; replay must queue them together too.
                    if !ticked.contains(&name) {
                        if let Some((_, prev)) = open.get_mut(&name).filter(|(_, p)| p.cause != "transition") {
                            e.batch = Some(*prev.batch.get_or_insert(prev.slice));
                        }
                    }
                    ticked.remove(&name);
                    // The input wakes the instance: the status it rests in next is news, even
                    // if it is the one it had before.
                    self.journal_status.insert(name.clone(), Status::Converging);
                    self.last_input.insert(
                        name.clone(),
                        Origin {
                            slice: e.slice,
                            cause: e.cause.clone(),
                            detail: e.detail.clone(),
                            source: e.source.clone(),
                        },
                    );
                }
                e.quiet = self.quiet.remove(&name).unwrap_or(0);
                self.close_entry(&name, &mut open, &mut records);
                records.push(None);
                open.insert(name.clone(), (records.len() - 1, e));
            }
            for ev in &evs {
                self.track_episode(&name, ticks, ev, &mut audit);
                if let Event::Status { status, reason, .. } = ev {
                    if self.journal_status.insert(name.clone(), *status) != Some(*status) {
                        if let Some((_, e)) = open.get_mut(&name) {
                            e.status = Some(status.as_str().to_string());
                            e.reason = reason.clone();
                        }
                    }
                }
                if let Event::Status { status: Status::Stable, .. } = ev {
                    self.close_entry(&name, &mut open, &mut records);
                    let q = self.journals.entry(name.clone()).or_default();
                    if q.len() > JOURNAL_STABLE_KEEP {
                        while q.len() > JOURNAL_STABLE_KEEP {
                            q.pop_front();
                        }
                        if let Some(first) = q.front() {
                            records.push(Some(Record::Trim { instance: name.clone(), keep_from_slice: first.slice }));
                        }
                    }
                }
                if let Event::Intent(i) = ev {
                    intents.push(i.clone());
                } else {
                    self.print_event(ev);
                }
            }
        }
        for name in open.keys().cloned().collect::<Vec<_>>() {
            self.close_entry(&name, &mut open, &mut records);
        }
        // Every instance ran until idle, so every queued observation was applied: a feed left
        // over would only be mistaken for a later observation's.
        self.feeds.clear();
        let records: Vec<Record> = if persist { records.into_iter().flatten().collect() } else { Vec::new() };
        let seq = match self.store.as_mut() {
            Some(store) if !records.is_empty() || !audit.is_empty() => {
                self.records_since_checkpoint += records.len();
                store.append(records, audit)
            }
            Some(store) => store.last_seq(),
            None => 0,
        };
        // The outbox is in batch order, so the durable prefix is a prefix of it.
        debug_assert!(self.outbox.back().is_none_or(|(s, _)| *s <= seq), "the outbox is in batch order");
        for i in intents {
            self.outbox.push_back((seq, i));
        }
        if self.records_since_checkpoint > COMPACT_AFTER_RECORDS {
            self.records_since_checkpoint = 0;
            let all = self.all_records();
            if let Some(store) = self.store.as_mut() {
                store.compact(all);
            }
        }
        seq
    }

    /// Every live record: the latest snapshot of each instance and its retained journal.
    fn all_records(&self) -> Vec<Record> {
        let mut records = vec![Record::Program {
            files: self.files.clone(),
            retry: Some(self.retry()),
            confirm_ms: Some(self.rt.policy.confirm_ms),
        }];
        for inst in self.rt.instances() {
            let dom = &self.program.domains[inst.domain];
            // The snapshot before the oldest journal entry first (replay starts there), then the latest.
            let first = self.journals.get(&*inst.name).and_then(|q| q.front()).map(|e| e.slice);
            let base = first.and_then(|f| self.history.get(&*inst.name)?.iter().rev().find(|s| s.snapshot.slice < f));
            if let Some(b) = base {
                records.push(Record::Snapshot(b.clone()));
            }
            // The journal before the latest snapshot, as in the log: each entry after its slice.
            if let Some(q) = self.journals.get(&*inst.name) {
                records.extend(q.iter().cloned().map(Record::Journal));
            }
            records.push(Record::Snapshot(SnapshotRecord::from_snapshot(inst.snapshot(), &dom.name, &dom.fields)));
        }
        records
    }

    /// Completes an instance's open journal entry: into the journal and its place in `records`.
    fn close_entry(
        &mut self,
        name: &str,
        open: &mut BTreeMap<String, (usize, JournalEntry)>,
        records: &mut [Option<Record>],
    ) {
        let Some((at, e)) = open.remove(name) else { return };
        records[at] = Some(Record::Journal(e.clone()));
        let q = self.journals.entry(name.to_string()).or_default();
        q.push_back(e);
        while q.len() > JOURNAL_MAX {
            q.pop_front();
        }
    }

    /// The oldest queued observation for `instance`, now that the runtime applied it.
    fn take_feed(&mut self, instance: &str) -> Option<Feed> {
        let i = self.feeds.iter().position(|f| f.instance == instance)?;
        self.feeds.remove(i)
    }

    /// After a restart: each instance's last input, last journaled status and the
    /// observations that changed nothing since its last entry, from the journal.
    fn recover_journal_context(&mut self) {
        for inst in self.rt.instances() {
            let name = inst.name.to_string();
            let q = self.journals.get(&name).cloned().unwrap_or_default();
            // Slices past the last entry are observations that changed nothing.
            let last = q.back().map_or(0, |e| e.slice);
            if inst.slice > last {
                self.quiet.insert(name.clone(), inst.slice - last);
            }
            let origin = q.iter().rev().find_map(|e| match e.cause.as_str() {
                "transition" => e.origin.clone(),
                _ => Some(Origin {
                    slice: e.slice,
                    cause: e.cause.clone(),
                    detail: e.detail.clone(),
                    source: e.source.clone(),
                }),
            });
            if let Some(o) = origin {
                self.last_input.insert(name.clone(), o);
            }
            // The last entry's status if it came to rest after it; otherwise what the snapshot says.
            let status = q.back().and_then(|e| e.status.as_deref()).and_then(parse_status);
            self.journal_status.insert(name, status.unwrap_or(inst.status));
        }
        for inst in self.rt.instances() {
            self.journal_status.entry(inst.name.to_string()).or_insert(inst.status);
        }
    }

    fn field_name(&self, instance: &str, slot: u16) -> String {
        let d = self.rt.instance(instance).map(|i| i.domain).unwrap_or(0);
        self.program.domains[d].fields.get(slot as usize).map(|f| f.0.clone()).unwrap_or_else(|| format!("#{slot}"))
    }

    fn transition_name(&self, instance: &str, t: usize) -> String {
        let d = self.rt.instance(instance).map(|i| i.domain).unwrap_or(0);
        self.program.domains[d].transitions.get(t).map(|t| t.name.clone()).unwrap_or_default()
    }

    fn journal_entry(&self, name: &str, evs: &[Event], feed: Option<&Feed>) -> Option<JournalEntry> {
        let d = self.rt.instance(name).map(|i| i.domain).unwrap_or(0);
        journal_entry(&self.program.domains[d], name, self.now_ms, evs, feed)
    }

    /// Builds the audit trail: a drift, the corrections, and how it ended.
    /// `field = value, ...` for the audit narrative.
    fn changes_text(&self, name: &str, changes: &[(u16, ved_vm::Value)]) -> String {
        changes.iter().map(|(s, v)| format!("{} = {v}", self.field_name(name, *s))).collect::<Vec<_>>().join(", ")
    }

    fn track_episode(&mut self, name: &str, ticks: u64, ev: &Event, audit: &mut Vec<AuditDraft>) {
        let was_resting = self.last_status.get(name).is_some_and(|s| *s != Status::Converging);
        match ev {
            Event::Slice { cause: Cause::Observe, changes, .. } if !changes.is_empty() => {
                let acted = self.episodes.get(name).is_some_and(|ep| ep.acted);
                let verb = if acted { "observed as" } else { "drifted to" };
                let text = changes
                    .iter()
                    .map(|(s, v)| format!("{} {verb} {v}", self.field_name(name, *s)))
                    .collect::<Vec<_>>()
                    .join(", ");
                let ep = self.episodes.entry(name.to_string()).or_insert(Episode {
                    log: Vec::new(),
                    acted: false,
                    ticks_at_start: ticks,
                });
                if was_resting && ep.log.is_empty() {
                    ep.ticks_at_start = ticks;
                }
                ep.log.push(text);
                self.last_status.insert(name.to_string(), Status::Converging);
            }
            Event::Slice { cause: Cause::Transition(t), changes, .. } if !changes.is_empty() => {
                let text = format!("{} set {}", self.transition_name(name, *t), self.changes_text(name, changes));
                if let Some(ep) = self.episodes.get_mut(name) {
                    ep.log.push(text);
                    ep.acted = true;
                }
            }
            Event::Intent(i) => {
                let text = format!("{} emitted {i}", self.transition_name(name, i.transition));
                if let Some(ep) = self.episodes.get_mut(name) {
                    ep.log.push(text);
                    ep.acted = true;
                }
            }
            Event::Result { ok: false, id, error, .. } => {
                let text = format!("{id} failed ({})", error.as_deref().unwrap_or("no reason given"));
                if let Some(ep) = self.episodes.get_mut(name) {
                    ep.log.push(text);
                }
            }
            // A correction lands when its intents succeed: the held changes apply now.
            Event::Slice { cause: Cause::Result(id), changes, .. } if !changes.is_empty() => {
                let text = format!("{id} succeeded: {}", self.changes_text(name, changes));
                if let Some(ep) = self.episodes.get_mut(name) {
                    ep.log.push(text);
                }
            }
            Event::Status { status, reason, .. } => {
                let before = self.last_status.insert(name.to_string(), *status);
                match reason {
                    Some(r) => self.reasons.insert(name.to_string(), r.clone()),
                    None => self.reasons.remove(name),
                };
                if matches!(status, Status::Waiting | Status::Converging) {
                    return;
                }
                if *status != Status::Stable {
                    // Not at the goal: say so at once, but keep the episode open. It closes only
                    // when the instance is stable with nothing in flight, and its closing entry
                    // then tells every correction made along the way.
                    if before != Some(*status) {
                        if let Some(ep) = self.episodes.get_mut(name).filter(|ep| !ep.log.is_empty()) {
                            let note = format!(
                                "{status}: {}",
                                reason.as_deref().unwrap_or("no transition can restore the goals")
                            );
                            let mut parts = ep.log.clone();
                            parts.push(format!("not at the goal yet: {note}"));
                            ep.log.push(note);
                            audit.push(AuditDraft {
                                at_ms: self.now_ms,
                                instance: name.to_string(),
                                text: parts.join("; "),
                            });
                        }
                    }
                    return;
                }
                let Some(ep) = self.episodes.remove(name) else { return };
                if ep.log.is_empty() {
                    return;
                }
                let used = ticks.saturating_sub(ep.ticks_at_start);
                let end = format!("stable again after {used} tick{}", if used == 1 { "" } else { "s" });
                let mut parts = ep.log;
                parts.push(end);
                audit.push(AuditDraft { at_ms: self.now_ms, instance: name.to_string(), text: parts.join("; ") });
            }
            _ => {}
        }
    }

    fn apply_line(&mut self, line: &str) -> Result<(), LineError> {
        if line.len() > LINE_BYTES_MAX {
            return Err((None, format!("line is {} bytes; the limit is {LINE_BYTES_MAX}", line.len())));
        }
        let j: Json = serde_json::from_str(line).map_err(|e| (None, format!("invalid JSON: {e}")))?;
        let Json::Object(o) = j else {
            return Err((
                None,
                "expected a JSON object such as {\"instance\": \"Name\", \"set\": {\"field\": 1}}".into(),
            ));
        };
        if let Some(adv) = o.get("advance_ms") {
            let ms = adv.as_u64().ok_or((None, "`advance_ms` must be a non-negative integer".to_string()))?;
            if o.len() != 1 {
                return Err((None, "`advance_ms` stands alone on its line".into()));
            }
            // Step through every retry that comes due on the way.
            let target = self.now_ms.saturating_add(ms);
            while let Some(t) = self.rt.next_timer_ms().filter(|t| *t <= target) {
                self.rt.advance_time(t);
                self.now_ms = t;
                let before = self.rt.instances().iter().map(|i| i.slice).sum::<u64>();
                self.run_and_persist();
                self.settle();
                if self.rt.instances().iter().map(|i| i.slice).sum::<u64>() == before {
                    break;
                }
            }
            self.now_ms = target;
            self.rt.advance_time(target);
            return Ok(());
        }
        for key in o.keys() {
            if !matches!(key.as_str(), "instance" | "set" | "add" | "caused_by" | "source" | "version") {
                return Err((
                    None,
                    format!(
                        "unknown key `{key}`; an observation has `instance`, `set` (or `add`), and optionally `caused_by`, `source` and `version`"
                    ),
                ));
            }
        }
        let name = match o.get("instance") {
            Some(Json::String(s)) => s.clone(),
            Some(_) => return Err((None, "`instance` must be a string".into())),
            None => return Err((None, "missing `instance`: which instance does this observation concern?".into())),
        };
        let caused_by = match o.get("caused_by") {
            None => None,
            Some(Json::String(s)) => Some(s.clone()),
            Some(_) => return Err((Some(name), "`caused_by` must be an intent id such as \"Name/3/0\"".into())),
        };
        let version = match (o.get("source"), o.get("version")) {
            (None, None) => None,
            (Some(Json::String(s)), Some(v)) => match v.as_u64() {
                Some(v) => Some((s.as_str(), v)),
                None => return Err((Some(name), "`version` must be a non-negative integer".into())),
            },
            _ => {
                return Err((Some(name), "`source` (a string) and `version` (an integer) go together".into()));
            }
        };
        // Where the observation came from, for the journal: the line's own source, or stdin.
        let source = version.map_or("stdin", |(s, _)| s);
        if let Some(add) = o.get("add") {
            if o.contains_key("set") || version.is_some() {
                return Err((
                    Some(name),
                    "`add` stands without `set`, `source` and `version`: send the relative change on its own line"
                        .into(),
                ));
            }
            let Json::Object(add) = add else {
                return Err((Some(name), "`add` must be an object of field to integer delta".into()));
            };
            return self.observe_add(&name, add, source, caused_by);
        }
        let set = match o.get("set") {
            Some(Json::Object(s)) => s,
            Some(_) => return Err((Some(name), "`set` must be an object of field to value".into())),
            None => return Err((Some(name), "missing `set` (or `add`): an object of field to value".into())),
        };
        self.observe(&name, set, version, source, caused_by)
    }

    /// Checks a relative observation (`{"add": {"workers": -1}}`) and queues it.
    fn observe_add(
        &mut self,
        name: &str,
        add: &Map<String, Json>,
        source: &str,
        caused_by: Option<String>,
    ) -> Result<(), LineError> {
        let Some(idx) = self.rt.index_of(name) else {
            let names: Vec<String> = self.rt.instances().iter().map(|i| format!("`{}`", i.name)).collect();
            return Err((
                Some(name.to_string()),
                format!("no instance named `{name}`; the instances are {}", names.join(", ")),
            ));
        };
        if add.is_empty() {
            return Err((Some(name.to_string()), "`add` is empty: give at least one field and its delta".into()));
        }
        let dom = self.rt.domain_of(idx);
        let mut deltas = Vec::with_capacity(add.len());
        for (field, value) in add {
            let Some(slot) = dom.fields.iter().position(|(n, _)| n == field) else {
                let fields: Vec<String> = dom.fields.iter().map(|(n, _)| format!("`{n}`")).collect();
                return Err((
                    Some(name.to_string()),
                    format!("`{}` has no field `{field}`; its fields are {}", dom.name, fields.join(", ")),
                ));
            };
            let Some(d) = value.as_i64() else {
                return Err((
                    Some(name.to_string()),
                    format!("`add.{field}` must be an integer delta such as -1, not {value}"),
                ));
            };
            deltas.push((slot as u16, d));
        }
        let named = deltas.iter().map(|(s, d)| (dom.fields[*s as usize].0.clone(), *d)).collect();
        self.rt.observe_add(name, deltas).map_err(|e| (Some(name.to_string()), e.to_string()))?;
        self.feeds.push_back(Feed {
            instance: name.to_string(),
            source: source.to_string(),
            caused_by,
            set: Vec::new(),
            add: named,
        });
        Ok(())
    }

    /// Checks an observation against the instance's fields and queues it. `source`: where
    /// it came from (`stdin`, `api`, a watcher), for the journal.
    fn observe(
        &mut self,
        name: &str,
        set: &Map<String, Json>,
        version: Option<(&str, u64)>,
        source: &str,
        caused_by: Option<String>,
    ) -> Result<(), LineError> {
        let Some(idx) = self.rt.index_of(name) else {
            let names: Vec<String> = self.rt.instances().iter().map(|i| format!("`{}`", i.name)).collect();
            return Err((
                Some(name.to_string()),
                format!("no instance named `{name}`; the instances are {}", names.join(", ")),
            ));
        };
        let dom = self.rt.domain_of(idx);
        let mut writes = Vec::with_capacity(set.len());
        for (field, value) in set {
            let Some(slot) = dom.fields.iter().position(|(n, _)| n == field) else {
                let fields: Vec<String> = dom.fields.iter().map(|(n, _)| format!("`{n}`")).collect();
                return Err((
                    Some(name.to_string()),
                    format!("`{}` has no field `{field}`; its fields are {}", dom.name, fields.join(", ")),
                ));
            };
            let v = from_json(value, &dom.fields[slot].1)
                .map_err(|e| (Some(name.to_string()), format!("field `{field}`: {e}")))?;
            writes.push((slot as u16, v));
        }
        let r = match version {
            Some((source, v)) => self.rt.observe_versioned(name, writes, source, v),
            None => self.rt.observe(name, writes),
        };
        r.map_err(|e| (Some(name.to_string()), e.to_string()))?;
        self.feeds.push_back(Feed {
            instance: name.to_string(),
            source: source.to_string(),
            caused_by,
            set: set.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            add: Vec::new(),
        });
        Ok(())
    }

    fn print_event(&mut self, ev: &Event) {
        let inst = ev.instance().to_string();
        let domain = self.rt.instance(&inst).map(|i| i.domain).unwrap_or(0);
        let d = &self.program.domains[domain];
        let tname = |t: usize| d.transitions.get(t).map(|t| t.name.clone()).unwrap_or_default();
        let fields = |changes: &[(u16, ved_vm::Value)]| -> Json {
            Json::Object(changes.iter().map(|(s, v)| (d.fields[*s as usize].0.clone(), to_json(v))).collect())
        };
        let line = match ev {
            Event::Slice { slice, cause, changes, held, .. } => {
                let cause = match cause {
                    Cause::Observe => json!({"kind": "observe"}),
                    Cause::Transition(t) => json!({"kind": "transition", "transition": tname(*t)}),
                    Cause::Result(id) => json!({"kind": "result", "intent": id.to_string()}),
                    Cause::Timer(t) => json!({"kind": "timer", "transition": tname(*t)}),
                };
                let mut m = obj(json!({"event": "slice", "instance": inst, "slice": slice, "cause": cause,
                    "changes": fields(changes)}));
                if !held.is_empty() {
                    m.insert("held".into(), fields(held));
                }
                m
            }
            Event::Tick { .. } | Event::Intent(_) => return,
            Event::Stale { source, version, last, .. } => obj(json!({"event": "stale", "instance": inst,
                "source": &**source, "version": version, "last": last})),
            Event::Result { id, ok, error, .. } => {
                let mut m = obj(json!({"event": "result", "instance": inst, "id": id.to_string(), "ok": ok}));
                if let Some(e) = error {
                    m.insert("error".into(), json!(e));
                }
                m
            }
            Event::Retry { transition, attempt, at_ms, .. } => obj(json!({"event": "retry", "instance": inst,
                "transition": tname(*transition), "attempt": attempt, "at_ms": at_ms})),
            Event::Fault { transition, goal, fault, .. } => {
                let f = self.sources.file(fault.span.file);
                let (line, col) = f.line_col(fault.span.start as usize);
                let at = format!("{}:{line}:{col}", f.name);
                let mut m = obj(json!({"event": "fault", "instance": inst, "message": fault.to_string(), "at": at}));
                if let Some(t) = transition {
                    m.insert("transition".into(), json!(tname(*t)));
                }
                if let Some(g) = goal {
                    m.insert("goal".into(), json!(d.goals.get(*g).map(|g| g.name.clone())));
                }
                m
            }
            Event::Status { status, reason, .. } => {
                let mut m = obj(json!({"event": status.as_str(), "instance": inst}));
                if let Some(r) = reason {
                    m.insert("reason".into(), json!(r));
                }
                m
            }
        };
        self.out.emit(line);
    }
}

/// The journal entry for one step's events: its slice, cause, changes, held changes,
/// intents and results, and for an observation what the driver knew of it (`feed`).
/// `ved replay` builds the same entry from its own run to compare.
pub(crate) fn journal_entry(
    dom: &ved_vm::CompiledDomain,
    instance: &str,
    at_ms: u64,
    evs: &[Event],
    feed: Option<&Feed>,
) -> Option<JournalEntry> {
    let (slice, cause, changes, held) = evs.iter().find_map(|e| match e {
        Event::Slice { slice, cause, changes, held, .. } => Some((*slice, cause, changes, held)),
        _ => None,
    })?;
    let field = |s: u16| dom.fields.get(s as usize).map(|f| f.0.clone()).unwrap_or_else(|| format!("#{s}"));
    let named = |c: &[(u16, ved_vm::Value)]| c.iter().map(|(s, v)| (field(*s), v.to_string())).collect::<Vec<_>>();
    let tname = |t: usize| Some(dom.transitions.get(t).map(|t| t.name.clone()).unwrap_or_default());
    let (cause, detail) = match cause {
        Cause::Observe => ("observe", None),
        Cause::Transition(t) => ("transition", tname(*t)),
        Cause::Result(id) => ("result", Some(id.to_string())),
        Cause::Timer(t) => ("timer", tname(*t)),
    };
    let feed = feed.filter(|_| cause == "observe");
    Some(JournalEntry {
        instance: instance.to_string(),
        slice,
        at_ms,
        cause: cause.to_string(),
        detail,
        changes: named(changes),
        held: named(held),
        intents: evs
            .iter()
            .filter_map(|e| match e {
                Event::Intent(i) => Some((i.id.to_string(), i.to_string())),
                _ => None,
            })
            .collect(),
        results: evs
            .iter()
            .filter_map(|e| match e {
                Event::Result { id, ok, error, .. } => Some((id.to_string(), *ok, error.clone())),
                _ => None,
            })
            .collect(),
        caused_by: feed.and_then(|f| f.caused_by.clone()),
        observed: match (cause, feed) {
            ("observe", Some(f)) if f.add.is_empty() => f.set.clone(),
            ("observe", Some(_)) => Vec::new(),
            ("observe", None) => changes.iter().map(|(s, v)| (field(*s), to_json(v))).collect(),
            _ => Vec::new(),
        },
        added: feed.map(|f| f.add.clone()).unwrap_or_default(),
        source: feed.map(|f| f.source.clone()),
        ..JournalEntry::default()
    })
}

/// Whether a step applied an observation: a slice, a stale version dropped, or a relative
/// change refused for overflow.
/// A driver's outcome as the runtime records it: success, or the error's message (its
/// `Display`), which is what the journal and the degraded reason show. The error's kind
/// stays on this side of the boundary.
pub(crate) fn for_runtime(outcome: ved_adapters::ActionResult) -> (bool, Option<String>) {
    match outcome {
        Ok(()) => (true, None),
        Err(e) => (false, Some(e.to_string())),
    }
}

fn is_observation_outcome(e: &Event) -> bool {
    matches!(
        e,
        Event::Slice { cause: Cause::Observe, .. }
            | Event::Stale { .. }
            | Event::Fault { transition: None, goal: None, .. }
    )
}

/// Adds a snapshot to an instance's recent ones. A snapshot after a slice that was not
/// journaled (an observation that changed nothing) is needed only until the next one, so a
/// run of them keeps its last: periodic resyncs never push out the snapshot `ved replay`
/// starts from. `last_entry`: the slice of the instance's latest journal entry.
fn remember(q: &mut VecDeque<SnapshotRecord>, snap: SnapshotRecord, last_entry: u64) {
    if q.back().is_some_and(|b| {
        let (b, s) = (&b.snapshot, &snap.snapshot);
        b.slice == s.slice
            || (b.slice > last_entry && b.slice + 1 == s.slice && b.status == Status::Stable && b.pending.is_empty())
    }) {
        q.pop_back();
    }
    q.push_back(snap);
    while q.len() > JOURNAL_MAX + 2 {
        q.pop_front();
    }
}

fn parse_status(s: &str) -> Option<Status> {
    [Status::Stable, Status::Converging, Status::Waiting, Status::Stuck, Status::Livelock, Status::Degraded]
        .into_iter()
        .find(|st| st.as_str() == s)
}
