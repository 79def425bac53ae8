//! The engine: one main loop's worth of state for running a Ved program. It owns
//! the runtime, persistence (behind [`Persistence`]), adapter dispatch, output
//! commit, journals and audit episodes; time comes from a [`Clock`]. Inputs are
//! typed (observations, results, calls, time) and events come out typed
//! ([`EngineEvent`]) into a [`Sink`].
//!
//! Output commit: every step's snapshot and journal entry are appended as one batch,
//! and an intent leaves for its adapter only after its batch is durable; an input
//! line is acknowledged, and a state-changing API call answered, likewise.

use crate::adapters::{watched_fields, Adapters};
use crate::calls::Reply;
use crate::clock::{Clock, ManualClock};
use crate::event::{EngineEvent, Sink, SliceCause};
use crate::input::{InputError, Line, Observation};
use crate::json::{from_json, to_json};
use crate::load;
use crate::persist::Persistence;
use rustc_hash::{FxHashMap, FxHashSet};
use serde_json::Value as Json;
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use ved_runtime::{Cause, Event, Instance, Intent, Runtime, Status};
use ved_store::{AuditDraft, Durability, JournalEntry, Origin, Record, SnapshotRecord, Store, JOURNAL_MAX};
use ved_syntax::SourceMap;
use ved_vm::CompiledProgram;

/// The engine's per-instance bookkeeping, by instance name. Hashed, not ordered: every
/// step of a busy instance looks itself up in several of these, and a `BTreeMap<String, _>`
/// paid a dozen string comparisons per lookup on a fleet of thousands (BENCHMARKS.md,
/// "Scale"); nothing iterates them in an order that matters.
pub(crate) type ByName<V> = FxHashMap<String, V>;

/// What the engine remembers of an instance's status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Statuses {
    /// The last status the runtime reported (an episode starts when it leaves a resting one).
    pub(crate) last: Option<Status>,
    /// The last status journaled (the next entry records a status only when it differs).
    pub(crate) journaled: Option<Status>,
}

/// Journal entries an instance keeps once it is stable again.
const JOURNAL_STABLE_KEEP: usize = 64;
/// Records written after which the store is compacted into a checkpoint (see [`should_compact`]).
const COMPACT_AFTER_RECORDS: usize = 200_000;
/// Overrides [`COMPACT_AFTER_RECORDS`]: a test that must kill Ved while it compacts sets it low,
/// so that compactions happen every few hundred records instead of every 200,000.
pub const COMPACT_AFTER_RECORDS_VAR: &str = "VED_COMPACT_AFTER_RECORDS";
/// Instances from which a checkpoint's records are copied on two threads (below, a helper
/// thread would cost more than it saves).
const CHECKPOINT_SPLIT_FROM: usize = 4096;

pub struct RunOptions {
    pub seed: u64,
    pub data_dir: Option<PathBuf>,
    pub durability: Durability,
    pub recover: bool,
    /// `ved.toml`, already validated against the program.
    pub config: Option<ved_adapters::config::Config>,
    /// `Background` for `ved run`; `Manual` lets a simulation decide when writes happen.
    pub flush: ved_store::Flush,
    /// The scheduler's bounds (ticks per input, mailbox size), in force from the start: the
    /// instances a start creates or restores already run under them.
    pub limits: ved_runtime::Limits,
    /// The wall-clock time (Unix ms) of the start: what the records a start writes
    /// (migrations) carry, and the epoch of the engine's clock until [`Engine::set_clock`]
    /// replaces it. `None`: the Unix epoch, so that a test's output is the same every time.
    pub wall_ms_at_start: Option<u64>,
    /// The key audit entries are authenticated with (`ved run --audit-key`), set on the store
    /// before its first batch. A data directory whose audit log is keyed starts only with
    /// that same key (see [`StartError::AuditKey`]).
    pub audit_key: Option<ved_store::AuditKey>,
}

/// What to do once a batch is durable.
pub(crate) enum Ack {
    /// Print an `ack` for this input line.
    Line(u64),
    /// Answer an API call.
    Reply(Responder, Reply),
}

/// Where an API call's answer goes, once it can be given.
pub type Responder = Box<dyn FnOnce(Reply) + Send>;

/// What the driver knows about an observation it queued beyond what the runtime reports:
/// where it came from, everything it reported (not only what changed), and whether it was
/// relative. The journal records it, and `ved replay` feeds it again from there.
#[derive(Clone)]
pub struct Feed {
    instance: String,
    source: String,
    caused_by: Option<String>,
    set: Vec<(String, Json)>,
    add: Vec<(String, i64)>,
}

/// One step as the runtime reported it.
struct Step {
    /// The runtime's shared name, not a copy: a busy fleet steps thousands of times per call.
    name: Arc<str>,
    domain: usize,
    ticks: u64,
    /// Whether nothing is pending after it.
    idle: bool,
    events: Vec<Event>,
    /// With a store: the instance after the step.
    snap: Option<Arc<SnapshotRecord>>,
}

/// A drift and what was done about it, until the instance rests again.
pub(crate) struct Episode {
    /// What happened, in order: drifts, corrections, failures, later readings. At most
    /// [`EPISODE_LOG_MAX`]: past that, the first [`EPISODE_LOG_HEAD`] stay and the oldest
    /// of the rest give way (an intent retried every minute for a day made it grow without
    /// bound, and each status change copied it whole into an audit entry).
    log: Vec<String>,
    /// Entries given way, told where they were.
    omitted: u64,
    /// Whether Ved has acted yet: a reading after that reports an effect, not a drift.
    acted: bool,
    ticks_at_start: u64,
}

/// Entries an episode's log keeps (see [`Episode::log`]).
const EPISODE_LOG_MAX: usize = 64;
/// Of those, the first ones, always kept: how the episode began.
const EPISODE_LOG_HEAD: usize = 16;

impl Episode {
    fn new(first: Option<String>, ticks_at_start: u64) -> Episode {
        Episode { log: first.into_iter().collect(), omitted: 0, acted: false, ticks_at_start }
    }

    fn note(&mut self, text: String) {
        if self.log.len() >= EPISODE_LOG_MAX {
            self.log.remove(EPISODE_LOG_HEAD);
            self.omitted += 1;
        }
        self.log.push(text);
    }

    /// The log as an audit entry tells it, `last` at the end.
    fn told(&self, last: String) -> String {
        let mut parts: Vec<&str> = Vec::with_capacity(self.log.len() + 2);
        let gap = (self.omitted > 0).then(|| format!("{} more entries", self.omitted));
        for (i, p) in self.log.iter().enumerate() {
            if i == EPISODE_LOG_HEAD {
                if let Some(g) = &gap {
                    parts.push(g);
                }
            }
            parts.push(p);
        }
        parts.push(&last);
        parts.join("; ")
    }
}

pub struct Engine<S: Sink> {
    pub(crate) rt: Runtime,
    pub(crate) adapters: Adapters,
    pub(crate) program: std::sync::Arc<CompiledProgram>,
    /// Each domain's schema, shared by every snapshot record of it (made once, not per slice).
    pub(crate) schemas: Vec<std::sync::Arc<ved_store::Schema>>,
    pub(crate) sources: SourceMap,
    pub(crate) store: Option<Box<dyn Persistence>>,
    pub(crate) out: S,
    pub(crate) clock: Box<dyn Clock>,
    /// Recovery warnings (a torn tail cut, ...), for the client to show.
    pub warnings: Vec<String>,
    /// Per instance, the fields `ved.toml`'s watchers feed (confirmed by readings).
    pub(crate) watched: BTreeMap<String, Vec<u16>>,
    /// Intents waiting for the batch that recorded them to be durable.
    pub(crate) outbox: VecDeque<(u64, Intent)>,
    /// Input lines and API calls waiting for their batch to be durable.
    pub(crate) acks: VecDeque<(u64, Ack)>,
    pub(crate) journals: ByName<VecDeque<Arc<JournalEntry>>>,
    pub(crate) episodes: ByName<Episode>,
    /// Per instance, the last status reported and the last one journaled, in one map: two
    /// maps that each hold every instance cost a hash table's slots twice.
    pub(crate) statuses: ByName<Statuses>,
    /// Why each instance is not stable, when the runtime said (stuck, livelock, degraded).
    pub(crate) reasons: ByName<String>,
    /// Records written since the last checkpoint.
    pub(crate) records_since_checkpoint: usize,
    /// Records after which a compaction is due: [`COMPACT_AFTER_RECORDS`], or the override.
    pub(crate) compact_after: usize,
    /// Intents handed to the delivery pool whose results have not come back yet.
    pub(crate) in_flight: usize,
    /// Counts for `GET /metrics`.
    stats: crate::stats::Stats,
    /// Per instance, recent snapshots (oldest first), so that a checkpoint can keep the one
    /// before the oldest journal entry: where `ved replay` starts.
    pub(crate) history: ByName<VecDeque<Arc<SnapshotRecord>>>,
    /// The program's sources, recorded in the store.
    pub(crate) files: Vec<(String, String)>,
    pub(crate) now_ms: u64,
    /// Observations queued and not yet applied, oldest first.
    pub(crate) feeds: VecDeque<Feed>,
    /// Per instance, the last outside input applied: the origin of the ticks that follow.
    pub(crate) last_input: ByName<Origin>,
    /// Per instance, observations that changed nothing since the last journal entry.
    pub(crate) quiet: ByName<u64>,
}

/// Builds an [`Engine`] for a program that embeds Ved: named adapters, where the
/// state lives (or in memory), the retry policy and the jitter seed.
///
/// ```no_run
/// # use std::sync::Arc;
/// # fn demo(loaded: ved_engine::Loaded, firewall: Arc<dyn ved_adapters::Actuator>) {
/// let ved = ved_engine::Builder::new(loaded)
///     .adapter("Firewall", firewall)
///     .data_dir("/var/lib/my-app/ved")
///     .retry(ved_runtime::RetryPolicy { breaker_after: 3, ..Default::default() })
///     .start(Vec::<ved_engine::EngineEvent>::new());
/// # }
/// ```
pub struct Builder {
    loaded: load::Loaded,
    adapters: BTreeMap<String, Arc<dyn ved_adapters::Actuator>>,
    data_dir: Option<PathBuf>,
    retry: ved_runtime::RetryPolicy,
    seed: u64,
    limits: ved_runtime::Limits,
}

impl Builder {
    pub fn new(loaded: load::Loaded) -> Builder {
        Builder {
            loaded,
            adapters: BTreeMap::new(),
            data_dir: None,
            retry: ved_runtime::RetryPolicy::default(),
            seed: 0,
            limits: ved_runtime::Limits::default(),
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

    /// The scheduler's bounds, from the start (see [`RunOptions::limits`]).
    pub fn limits(mut self, limits: ved_runtime::Limits) -> Builder {
        self.limits = limits;
        self
    }

    /// Starts the engine; events go to `sink` (a `Vec<EngineEvent>` collects them,
    /// [`crate::JsonLines`] prints them). Actions run inline, on the caller's thread,
    /// when the engine releases them.
    pub fn start<S: Sink>(self, sink: S) -> Result<Engine<S>, StartError> {
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
            limits: self.limits,
            wall_ms_at_start: None,
            audit_key: None,
        };
        let adapters = Adapters {
            by_name: self.adapters,
            by_instance: BTreeMap::new(),
            fallback: Arc::new(ved_adapters::LogDriver),
            pool: None,
            manual: None,
        };
        Engine::start(self.loaded, &opts, adapters, sink, Box::new(|_| {}))
    }
}

/// Which instances a new engine holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Instances {
    /// Every domain's instance, restored or created: one node owns everything.
    All,
    /// Only those restored or adopted later (cluster mode: what this node owns).
    Adopted,
}

/// An instance's state as another owner left it: its last snapshot and its journal.
pub struct Adopted {
    pub snapshot: SnapshotRecord,
    pub journal: Vec<JournalEntry>,
}

/// Why a running engine could not go on.
#[derive(Clone, Debug, PartialEq)]
pub enum EngineError {
    /// The store's writer failed: nothing after the last durable batch is durable.
    Store(String),
    /// `run_until_idle` gave up: the program kept stepping (a livelock the runtime did not catch).
    NotIdle { rounds: usize },
}

impl std::fmt::Display for EngineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EngineError::Store(m) => write!(f, "the store failed: {m}"),
            EngineError::NotIdle { rounds } => write!(f, "the engine did not become idle after {rounds} rounds"),
        }
    }
}

impl std::error::Error for EngineError {}

/// Why an engine could not start. Nothing is printed: the caller shows it.
#[derive(Debug)]
pub enum StartError {
    /// The data directory could not be opened or recovered.
    Store(ved_store::StoreError),
    /// An instance in the store was written by a program with other fields.
    Incompatible { instance: String, dir: String, reason: String },
    /// An instance in the store cannot be carried over to this program (a field's type
    /// changed, its domain is gone, ...): see [`crate::migrate`].
    Upgrade { dir: String, error: crate::migrate::MigrateError },
    /// A snapshot could not be restored into the runtime.
    Restore { instance: String, reason: String },
    /// A domain's instance could not be created (its initial state faults).
    Create { instance: String, reason: String },
    /// The audit key does not continue the store's audit chain: the log is keyed and no key,
    /// or another key, was given. Entries written now would fail `ved audit verify --key`
    /// for good, so nothing is.
    AuditKey { dir: String, reason: String },
}

impl StartError {
    /// What to do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            StartError::Store(e) => Some(e.hint().to_string()),
            StartError::Incompatible { .. } => {
                Some("run the program that wrote it, or start a new `--data-dir`".to_string())
            }
            StartError::Upgrade { error, .. } => Some(error.hint()),
            StartError::AuditKey { .. } => Some(
                "pass `--audit-key FILE` (or `[store] audit_key` in ved.toml) with the key the log was written \
                 with; a data directory keeps one key for its lifetime"
                    .to_string(),
            ),
            _ => None,
        }
    }
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Store(e) => write!(f, "{e}"),
            StartError::Incompatible { instance, dir, reason } => {
                write!(f, "instance `{instance}` in {dir} was written by a different program: {reason}")
            }
            StartError::Upgrade { dir, error } => {
                write!(f, "cannot upgrade the state in {dir} to this program: {error}")
            }
            StartError::Restore { instance, reason } => write!(f, "cannot restore `{instance}`: {reason}"),
            StartError::Create { instance, reason } => write!(f, "cannot start `{instance}`: {reason}"),
            StartError::AuditKey { dir, reason } => write!(f, "{dir}: {reason}"),
        }
    }
}

impl std::error::Error for StartError {}

impl<S: Sink> Engine<S> {
    /// Opens the store (if any), restores or creates the instances, and runs them
    /// until idle. `on_durable` is called from the store's writer after each batch.
    pub fn start(
        loaded: load::Loaded,
        opts: &RunOptions,
        adapters: Adapters,
        out: S,
        on_durable: ved_store::DurableHook,
    ) -> Result<Engine<S>, StartError> {
        let (store, recovered): (Option<Box<dyn Persistence>>, _) = match &opts.data_dir {
            Some(dir) => match Store::open_with(dir, opts.durability, opts.recover, opts.flush, on_durable) {
                Ok((mut s, r)) => {
                    // Checked on the chain the store recovered (entries restored from its log after
                    // a crash included), before the first batch: a keyed log goes on only with its key.
                    let refused = |reason| StartError::AuditKey { dir: dir.display().to_string(), reason };
                    ved_store::audit::check_continuity(r.audit.last(), opts.audit_key.as_ref()).map_err(refused)?;
                    if let Some(key) = &opts.audit_key {
                        s.set_audit_key(key.clone()).map_err(refused)?;
                    }
                    (Some(Box::new(s)), Some(r))
                }
                Err(e) => return Err(StartError::Store(e)),
            },
            None => (None, None),
        };
        Engine::start_with(loaded, opts, adapters, out, store, recovered, Instances::All)
    }

    /// Starts on a given persistence: what `recovered` holds is restored, and then
    /// (with [`Instances::All`]) every domain's instance is created if missing. Cluster
    /// nodes start with [`Instances::Adopted`] and [`Engine::adopt`] what they own.
    pub fn start_with(
        loaded: load::Loaded,
        opts: &RunOptions,
        adapters: Adapters,
        mut out: S,
        store: Option<Box<dyn Persistence>>,
        recovered: Option<ved_store::Recovered>,
        instances: Instances,
    ) -> Result<Engine<S>, StartError> {
        if let Some(dir) = &opts.data_dir {
            // Where the state lives, given or the default: the first event of a durable run.
            let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.clone());
            out.time(0, opts.wall_ms_at_start.unwrap_or(0));
            out.event(EngineEvent::Store { dir });
        }
        let program = loaded.compiled.clone();
        let mut rt = Runtime::empty(program.clone(), opts.seed);
        // Before any instance is created or restored: the first settle runs under them too.
        rt.set_limits(opts.limits);
        if let Some(c) = &opts.config {
            rt.policy = ved_runtime::RetryPolicy {
                initial_ms: c.retry.initial_ms,
                factor: c.retry.factor,
                cap_ms: c.retry.cap_ms,
                breaker_after: c.retry.breaker_after,
                confirm_ms: c.retry.confirm_ms,
            };
        }
        let mut journals: ByName<VecDeque<Arc<JournalEntry>>> = ByName::default();
        // Each restored instance's status, collected as they are restored: the map is built once, at the end.
        let mut statuses: Vec<(String, Status)> = Vec::new();
        let mut history: ByName<VecDeque<Arc<SnapshotRecord>>> = ByName::default();
        let mut recorded_program = None;
        let mut warnings = Vec::new();
        let program_files = loaded.files.clone();
        // Instances carried over to a changed program, recorded before they run.
        let mut migrations = Vec::new();
        if let Some(rec) = recovered {
            recorded_program = rec.program.clone().map(|p| (p, rec.retry, rec.confirm_ms));
            // A base is where `ved replay` starts: only an instance with a journal needs one.
            for (name, base) in &rec.bases {
                if rec.journals.get(name).is_some_and(|q| !q.is_empty()) {
                    remember_new(&mut history, name, Arc::new(base.clone()));
                }
            }
            warnings = rec.warnings.clone();
            // The program that wrote the snapshots names their transitions (only needed, and
            // only compiled, when this one differs).
            let old = match &rec.program {
                Some(files) if *files != program_files => crate::migrate::recorded_program(Some(files)),
                _ => None,
            };
            // Per schema (recovery shares one per domain): the domain it is in this program,
            // when nothing of it changed (see `migrate::same_domain`).
            let mut same: Vec<(Arc<ved_store::Schema>, Option<usize>)> = Vec::new();
            rt.reserve(rec.snapshots.len());
            for snap in rec.snapshots.into_values() {
                let name = snap.snapshot.name.clone();
                let d = match same.iter().find(|(s, _)| Arc::ptr_eq(s, &snap.schema)) {
                    Some((_, d)) => *d,
                    None => {
                        let d = crate::migrate::same_domain(&program, old.as_deref(), &snap.schema);
                        same.push((snap.schema.clone(), d));
                        d
                    }
                };
                // The common case: the program that wrote it runs it (or the same domain, from
                // files changed elsewhere or moved); nothing to carry over, so the snapshot moves
                // into the runtime as it is.
                if d == Some(snap.snapshot.domain) && crate::migrate::in_range(&program, &snap.snapshot) {
                    statuses.push((name.clone(), snap.snapshot.status));
                    if rec.journals.get(&name).is_some_and(|q| !q.is_empty()) {
                        remember_new(&mut history, &name, Arc::new(snap.clone()));
                    }
                    if let Err(e) = rt.restore_instance(snap.snapshot) {
                        return Err(StartError::Restore { instance: name, reason: e.to_string() });
                    }
                    continue;
                }
                // Matched by name: fields added get their defaults, fields removed are dropped;
                // what cannot be carried over (a type changed) stops the start.
                let m = crate::migrate::migrate(&program, old.as_deref(), &snap)
                    .map_err(|error| StartError::Upgrade { dir: dir_name(opts), error })?;
                let snap = m.snapshot.clone();
                // Only an instance with a journal needs a snapshot in memory (to replay from).
                let keep = m.changed() || rec.journals.get(&name).is_some_and(|q| !q.is_empty());
                if m.changed() {
                    warnings.push(format!("instance `{name}`: program upgraded: {}", m.summary()));
                    migrations.push(m);
                }
                let s = snap.snapshot.clone();
                statuses.push((name.clone(), s.status));
                if keep {
                    remember_new(&mut history, &name, Arc::new(snap.clone()));
                }
                if let Err(e) = rt.restore_instance(s) {
                    return Err(StartError::Restore { instance: name, reason: e.to_string() });
                }
            }
            journals = rec.journals.into_iter().map(|(n, q)| (n, q.into_iter().map(Arc::new).collect())).collect();
        }
        let start_wall_ms = opts.wall_ms_at_start.unwrap_or(0);
        for m in &migrations {
            journals.entry(m.instance.clone()).or_default().push_back(Arc::new(m.journal_entry(start_wall_ms)));
        }
        // Instances `ved.toml` declares come first; a domain with declared instances runs
        // those instead of the one named after it.
        let declared = match &opts.config {
            Some(c) if instances == Instances::All => crate::adapters::declared_instances(c, &program)
                .map_err(|reason| StartError::Create { instance: "ved.toml".into(), reason })?,
            _ => Vec::new(),
        };
        // The instances this start creates (the rest were restored).
        let mut created: Vec<String> = Vec::new();
        for (name, d, state) in &declared {
            if rt.index_of(name).is_none() {
                rt.create_instance(name, *d, state.clone())
                    .map_err(|e| StartError::Create { instance: name.clone(), reason: e.to_string() })?;
                created.push(name.clone());
            }
        }
        for (d, dom) in program.domains.iter().enumerate() {
            if declared.iter().any(|(_, x, _)| *x == d) {
                continue;
            }
            if instances == Instances::All && rt.index_of(&dom.name).is_none() {
                if let Err(e) = rt.create_instance(&dom.name, d, Vec::new()) {
                    return Err(StartError::Create { instance: dom.name.clone(), reason: e.to_string() });
                }
                created.push(dom.name.clone());
            }
        }
        // Fields fed by a watcher take their values from readings only; the runtime
        // waits for a reading to confirm an effect on them.
        let watched = opts.config.as_ref().map(|c| watched_fields(c, &program)).unwrap_or_default();
        for (name, fields) in &watched {
            rt.set_watched(name, fields.clone());
        }
        let compact_after = compact_after_records(std::env::var(COMPACT_AFTER_RECORDS_VAR).ok(), &mut warnings);
        let mut driver = Engine {
            clock: Box::new(ManualClock::default()),
            warnings,
            watched,
            rt,
            schemas: program.domains.iter().map(|d| ved_store::Schema::of(&d.name, &d.fields)).collect(),
            program,
            sources: loaded.sources,
            store,
            out,
            adapters,
            outbox: VecDeque::new(),
            acks: VecDeque::new(),
            journals,
            episodes: ByName::default(),
            statuses: statuses.into_iter().map(|(n, s)| (n, Statuses { last: Some(s), journaled: None })).collect(),
            reasons: ByName::default(),
            records_since_checkpoint: 0,
            compact_after,
            in_flight: 0,
            stats: Default::default(),
            history,
            files: program_files,
            now_ms: 0,
            feeds: VecDeque::new(),
            last_input: ByName::default(),
            quiet: ByName::default(),
        };
        driver.recover_journal_context();
        // Simulated time continues from the snapshots after a restart.
        driver.now_ms = driver.rt.instances().iter().map(|i| i.now_ms).max().unwrap_or(0);
        // Until a real clock is set, the start's wall-clock time is the engine's time now.
        driver.clock = Box::new(ManualClock::with_epoch(start_wall_ms.saturating_sub(driver.now_ms)));
        driver.stamp();
        // A new store records the program; a changed program is recorded again.
        let retry = driver.retry();
        if let Some(store) = driver.store.as_mut() {
            let mut records = Vec::new();
            let confirm_ms = Some(driver.rt.policy.confirm_ms);
            if recorded_program != Some((driver.files.clone(), Some(retry), confirm_ms)) {
                records.push(Record::Program { files: driver.files.clone(), retry: Some(retry), confirm_ms });
            }
            // New instances are recorded at slice 0, so that replay can start from the beginning.
            // Only those this start created: a restored one still at slice 0 is in the store
            // already, and writing a fleet's state again on every start would cost its size.
            for name in &created {
                let Some(inst) = driver.rt.instance(name) else { continue };
                records.push(Record::snapshot(SnapshotRecord::new(inst.snapshot(), &driver.schemas[inst.domain])));
            }
            // A migrated instance: its new snapshot, the journal entry and the audit entry that
            // say what changed, durable before it runs.
            let mut audit = Vec::new();
            for m in &migrations {
                records.push(Record::snapshot(m.snapshot.clone()));
                records.push(Record::Journal(Arc::new(m.journal_entry(start_wall_ms))));
                audit.push(m.audit(start_wall_ms));
            }
            if !records.is_empty() {
                store.append(records, audit);
            }
            if !migrations.is_empty() {
                if let Err(e) = store.flush() {
                    return Err(StartError::Restore {
                        instance: migrations[0].instance.clone(),
                        reason: format!("could not record its migration to the new program: {e}"),
                    });
                }
            }
        }
        // Intents recorded before a restart but never acknowledged go out again, same id.
        let undelivered: Vec<Intent> = driver.rt.instances().iter().flat_map(Instance::undelivered).collect();
        for i in undelivered {
            driver.outbox.push_back((0, i));
        }
        for inst in driver.rt.instances() {
            // A restored instance at rest has no episode to tell; a new one starts one.
            if inst.status == Status::Stable && !created.iter().any(|c| **c == *inst.name) {
                continue;
            }
            let started = if inst.slice == 0 { "started" } else { "resumed" };
            let what = format!("{started} at slice {}", inst.slice);
            driver.episodes.insert(inst.name.to_string(), Episode::new(Some(what), inst.ticks));
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
            Err(e) => {
                let instance = e.instance().map(str::to_string);
                self.out.event(EngineEvent::Error { line: Some(n), instance, source: None, message: e.to_string() });
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
                    self.stats.result(&id, ok);
                    let _ = self.rt.deliver(&iid, ok, error);
                }
                None => self.out.event(EngineEvent::Error {
                    line: None,
                    instance: None,
                    source: None,
                    message: format!("a driver reported on unknown intent `{id}`"),
                }),
            },
            ved_adapters::Inbound::Repaired { instance, source, what } => self.record_repair(instance, source, what),
            ved_adapters::Inbound::Observed(o) => {
                let source = o.source.clone();
                self.stats.reading(&source, self.now_ms);
                let obs = Observation {
                    instance: o.instance,
                    set: crate::input::entries(&o.fields),
                    add: Vec::new(),
                    version: o.version.map(|v| (o.source.clone(), v)),
                    source: o.source,
                    caused_by: None,
                };
                match self.queue_observation(obs) {
                    Ok(()) => return true,
                    Err(e) => {
                        let instance = e.instance().map(str::to_string);
                        let message = e.to_string();
                        self.out.event(EngineEvent::Error { line: None, instance, source: Some(source), message });
                    }
                }
            }
        }
        false
    }

    /// An adapter repaired something it owns (see `Inbound::Repaired`): one audit
    /// entry quoting what it removed or restored, and an event line.
    fn record_repair(&mut self, instance: String, source: String, what: Vec<String>) {
        let text = format!("{source} repaired the firewall: {}", what.join("; "));
        self.out.event(EngineEvent::Repaired { instance: instance.clone(), source, what });
        if let Some(store) = self.store.as_mut() {
            let wall_ms = Some(self.clock.wall_ms(self.now_ms));
            store.append(Vec::new(), vec![AuditDraft { at_ms: self.now_ms, wall_ms, instance, text }]);
        }
    }

    /// The store's writer failed, if it did.
    pub fn store_failure(&self) -> Option<String> {
        self.store.as_ref().and_then(|s| s.failure())
    }

    /// Why the store's writes are waiting for space, while they are.
    pub fn store_stalled(&self) -> Option<String> {
        self.store.as_ref().and_then(|s| s.stalled())
    }

    /// Waits until everything is durable and delivered, writes a checkpoint, and closes the store.
    /// With `Flush::Manual` it flushes what is queued and then the checkpoint itself.
    /// Results still in flight are not awaited: their intents stay recorded as
    /// undelivered and go out again, same id, after a restart.
    pub fn finish(mut self) -> Result<S, EngineError> {
        while !self.durable_and_released() {
            if let Some(store) = self.store.as_mut() {
                store.flush().map_err(EngineError::Store)?;
            }
            self.settle();
        }
        if self.store.is_some() {
            let records = self.all_records();
            if let Some(store) = self.store.as_mut() {
                let seq = store.compact(records);
                // A manual-flush store writes only on flush (a background one waits for its writer).
                let written = store.flush().and_then(|_| store.wait_durable(seq));
                written.map_err(|e| EngineError::Store(format!("could not write the checkpoint: {e}")))?;
            }
        }
        if let Some(store) = self.store.take() {
            store.close().map_err(EngineError::Store)?;
        }
        self.out.flush();
        Ok(self.out)
    }

    /// An instance's status, if it exists.
    pub fn status(&self, instance: &str) -> Option<Status> {
        self.rt.instance(instance).map(|i| i.status)
    }

    pub fn runtime(&self) -> &Runtime {
        &self.rt
    }

    /// Replaces the scheduler's bounds (ticks per input, mailbox size) of a running engine.
    /// The start already ran under [`RunOptions::limits`]: give them there to bound it too.
    pub fn set_limits(&mut self, limits: ved_runtime::Limits) {
        self.rt.set_limits(limits);
    }

    /// With `Flush::Manual`: writes and syncs what is queued, then releases what became
    /// durable (acks, intents). In background mode it waits for the writer instead.
    pub fn flush(&mut self) -> Result<(), EngineError> {
        if let Some(store) = self.store.as_mut() {
            store.flush().map_err(EngineError::Store)?;
        }
        self.settle();
        Ok(())
    }

    /// Flushes and releases until nothing is left to do: every slice durable, every
    /// intent handed out and (with inline actuators) answered. For embedders: call it
    /// after feeding observations to let the engine converge before looking.
    pub fn run_until_idle(&mut self) -> Result<(), EngineError> {
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
        Err(EngineError::NotIdle { rounds: 100_000 })
    }

    /// With `Flush::Manual`: writes and syncs what is queued without releasing anything,
    /// as a crash right after the write would leave it.
    pub fn write_only(&mut self) -> Result<(), EngineError> {
        match self.store.as_mut() {
            Some(store) => store.flush().map(|_| ()).map_err(EngineError::Store),
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
    pub fn output(&self) -> &S {
        &self.out
    }

    /// The sink, for a client's own events in the same stream (`listening`, ...).
    pub fn sink_mut(&mut self) -> &mut S {
        &mut self.out
    }
}

fn dir_name(opts: &RunOptions) -> String {
    opts.data_dir.as_deref().map(Path::display).map(|d| d.to_string()).unwrap_or_default()
}

impl<S: Sink> Engine<S> {
    /// Everything durable, acknowledged and answered.
    pub fn drained(&self) -> bool {
        self.in_flight == 0 && self.durable_and_released()
    }

    /// Everything durable, acknowledged and handed to the adapters.
    fn durable_and_released(&self) -> bool {
        self.outbox.is_empty()
            && self.acks.is_empty()
            && self.store.as_ref().is_none_or(|s| s.durable_seq() >= s.last_seq())
    }

    /// Replaces the engine's clock (a new engine's is a [`ManualClock`] at 0).
    pub fn set_clock(&mut self, clock: Box<dyn Clock>) {
        self.clock = clock;
        self.stamp();
    }

    /// The text of `GET /metrics` (Prometheus format): see `stats.rs`.
    pub fn metrics_text(&self) -> String {
        crate::stats::Scrape {
            stats: &self.stats,
            program: &self.program,
            instances: self.rt.instances(),
            policy: &self.rt.policy,
            now_ms: self.now_ms,
            in_flight: self.in_flight,
            latencies: self.store.as_ref().map(|s| s.latencies()).unwrap_or_default(),
        }
        .render()
    }

    /// Tells the sink the time of the events that follow.
    fn stamp(&mut self) {
        let wall_ms = self.clock.wall_ms(self.now_ms);
        self.out.time(self.now_ms, wall_ms);
    }

    /// The time of the latest snapshot or step: where a wall clock continues from.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// When the next retry or confirmation deadline falls due, if any.
    pub fn next_timer_ms(&self) -> Option<u64> {
        self.rt.next_timer_ms()
    }

    /// Reads the clock and runs what came due since the last tick.
    pub fn tick(&mut self) {
        let now = self.clock.now_ms();
        self.advance_clock(now);
    }

    /// Moves the runtime's clock to `now_ms` and runs the retries that came due.
    fn advance_clock(&mut self, now_ms: u64) {
        if now_ms <= self.now_ms {
            return;
        }
        self.now_ms = now_ms;
        self.stamp();
        let due = self.rt.next_timer_ms().is_some_and(|t| t <= now_ms);
        self.rt.advance_time(now_ms);
        if due {
            self.run_and_persist();
            self.settle();
        }
    }

    fn durable_seq(&self) -> u64 {
        self.store.as_ref().map_or(u64::MAX, |s| s.durable_seq())
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
        self.drop_lost();
        let durable = self.durable_seq();
        while self.acks.front().is_some_and(|(s, _)| *s <= durable) {
            match self.acks.pop_front().expect("checked").1 {
                Ack::Line(line) => {
                    if self.store.is_some() {
                        self.out.event(EngineEvent::Ack { line });
                    }
                }
                Ack::Reply(to, reply) => to(reply),
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
            self.out.event(EngineEvent::Intent {
                instance: intent.id.instance.to_string(),
                id: intent.id.to_string(),
                transition: tname,
                adapter: intent.adapter.to_string(),
                action: intent.action.to_string(),
                args: intent.args.to_vec(),
            });
            // For the log driver the printed line *is* the delivery, and it is acknowledged at
            // once: the line must be out before that acknowledgement can become durable, or a
            // kill could lose an intent that the store no longer lists as undelivered.
            self.out.flush();
            let mut req = ved_adapters::IntentRequest::from_intent(&intent);
            req.fence = self.store.as_ref().and_then(|s| s.fence(&intent.id.instance));
            let id = req.id.clone();
            match self.adapters.dispatch(req) {
                Some(outcome) => {
                    let (ok, error) = for_runtime(outcome);
                    self.stats.intent(&id, &intent.adapter, &intent.action, Some(ok));
                    let _ = self.rt.deliver(&intent.id, ok, error);
                }
                None => {
                    self.stats.intent(&id, &intent.adapter, &intent.action, None);
                    self.in_flight += 1;
                }
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
    pub(crate) fn run_and_persist(&mut self) -> u64 {
        let mut audit = Vec::new();
        let mut intents = Vec::new();
        // Most instances that run take two steps (an input's slice, then a transition's): sized
        // for that, since a batch of thousands of steps would otherwise be copied as it grows.
        let mut steps: Vec<Step> = Vec::with_capacity(2 * self.rt.ready_len());
        let persist = self.store.is_some();
        let schemas = &self.schemas;
        let history = &mut self.history;
        // Instances given a snapshot below: those whose journal stays empty drop it again.
        let mut based: Vec<Arc<str>> = Vec::new();
        self.rt.run_stepwise_with(
            |inst| {
                // An instance at rest with no journal keeps no snapshot in memory; the one
                // `ved replay` will start from is its state now, before it changes.
                if persist && !history.contains_key(&*inst.name) {
                    let snap = Arc::new(SnapshotRecord::new(inst.snapshot(), &schemas[inst.domain]));
                    remember_new(history, &inst.name, snap);
                    based.push(inst.name.clone());
                }
            },
            |inst, evs| {
                steps.push(Step {
                    name: inst.name.clone(),
                    domain: inst.domain,
                    ticks: inst.ticks,
                    idle: inst.pending.is_empty(),
                    // Taken, not copied: the runtime starts the next step with a new vector.
                    events: std::mem::take(evs),
                    snap: persist.then(|| Arc::new(SnapshotRecord::new(inst.snapshot(), &schemas[inst.domain]))),
                });
            },
        );
        let mut stepped: Vec<Arc<str>> = steps.iter().map(|s| s.name.clone()).collect();
        stepped.dedup();
        stepped.extend(based);
        // A snapshot and at most one entry per step (and a few trims): sized once, because a
        // batch of thousands of steps would otherwise copy its records over and over as it grows.
        let mut records: Vec<Option<Record>> = Vec::with_capacity(2 * steps.len() + 8);
        // Per instance: the entry still open and where it goes in `records`. The order in
        // which entries are closed does not matter: each has its place in `records` already.
        let mut open: FxHashMap<Arc<str>, (usize, JournalEntry)> =
            FxHashMap::with_capacity_and_hasher(stepped.len(), Default::default());
        // Instances that ran a tick since their last message in this run.
        let mut ticked: FxHashSet<Arc<str>> = FxHashSet::with_capacity_and_hasher(stepped.len(), Default::default());
        let program = self.program.clone();
        let wall_ms = self.clock.wall_ms(self.now_ms);
        for Step { name, domain, ticks, idle, events: evs, snap } in steps {
            for e in &evs {
                match e {
                    Event::Slice { .. } => self.stats.slice(domain),
                    Event::Retry { .. } => self.stats.retry(domain),
                    _ => {}
                }
            }
            let dom = &program.domains[domain];
            let feed = if evs.iter().any(is_observation_outcome) { self.take_feed(&name) } else { None };
            let mut entry = entry_of(dom, &name, self.now_ms, &evs, feed);
            if let Some(e) = entry.as_mut() {
                e.wall_ms = Some(wall_ms);
            }
            // An observation that changes nothing on a stable instance with nothing pending (a
            // periodic resync) is counted, not journaled: it must not push real history out.
            let quiet = entry.as_ref().is_some_and(|e| {
                e.cause == "observe"
                    && e.changes.is_empty()
                    && e.caused_by.is_none()
                    && e.added.is_empty()
                    && idle
                    && self.statuses.get(&*name).and_then(|s| s.journaled) == Some(Status::Stable)
            });
            if let Some(snap) = snap {
                let last_entry = open
                    .get(&name)
                    .map(|(_, e)| e.slice)
                    .or_else(|| self.journals.get(&*name).and_then(|q| q.back()).map(|e| e.slice))
                    .unwrap_or(0);
                match self.history.get_mut(&*name) {
                    Some(q) => remember(q, snap.clone(), last_entry),
                    None => remember_new(&mut self.history, &name, snap.clone()),
                }
                records.push(Some(Record::Snapshot(snap)));
            }
            if evs.iter().any(|e| matches!(e, Event::Tick { .. })) {
                ticked.insert(name.clone());
            }
            if quiet {
                *slot(&mut self.quiet, &name) += 1;
            } else if let Some(mut e) = entry {
                if e.cause == "transition" {
                    e.origin = self.last_input.get(&*name).cloned();
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
                    slot(&mut self.statuses, &name).journaled = Some(Status::Converging);
                    match self.last_input.get_mut(&*name) {
                        // In place: the cause and source are mostly those of the last input.
                        Some(o) => {
                            o.slice = e.slice;
                            o.cause.clone_from(&e.cause);
                            o.detail.clone_from(&e.detail);
                            o.source.clone_from(&e.source);
                        }
                        None => {
                            let o = Origin {
                                slice: e.slice,
                                cause: e.cause.clone(),
                                detail: e.detail.clone(),
                                source: e.source.clone(),
                            };
                            self.last_input.insert(name.to_string(), o);
                        }
                    }
                }
                e.quiet = self.quiet.remove(&*name).unwrap_or(0);
                self.close_entry(&name, &mut open, &mut records);
                records.push(None);
                open.insert(name.clone(), (records.len() - 1, e));
            }
            for ev in &evs {
                self.track_episode(dom, &name, ticks, ev, &mut audit);
                if let Event::Status { status, reason, .. } = ev {
                    if slot(&mut self.statuses, &name).journaled.replace(*status) != Some(*status) {
                        if let Some((_, e)) = open.get_mut(&name) {
                            e.status = Some(status.as_str().to_string());
                            e.reason = reason.clone();
                        }
                    }
                }
                if let Event::Status { status: Status::Stable, .. } = ev {
                    self.close_entry(&name, &mut open, &mut records);
                    // An instance with no journal has nothing to trim (and needs no empty one).
                    if let Some(q) = self.journals.get_mut(&*name).filter(|q| q.len() > JOURNAL_STABLE_KEEP) {
                        while q.len() > JOURNAL_STABLE_KEEP {
                            q.pop_front();
                        }
                        if let Some(first) = q.front() {
                            records
                                .push(Some(Record::Trim { instance: name.to_string(), keep_from_slice: first.slice }));
                        }
                    }
                }
                if let Event::Intent(i) = ev {
                    intents.push(i.clone());
                } else {
                    self.print_event(domain, ev);
                }
            }
        }
        let still_open: Vec<Arc<str>> = open.keys().cloned().collect();
        for name in still_open {
            self.close_entry(&name, &mut open, &mut records);
        }
        // Every instance ran until idle, so every queued observation was applied: a feed left
        // over would only be mistaken for a later observation's.
        self.feeds.clear();
        // An instance with no journal needs no snapshot to replay from: a fleet at rest keeps
        // none in memory (the store has its state; the next step takes one again first).
        for n in stepped {
            if self.journals.get(&*n).is_none_or(VecDeque::is_empty) {
                self.history.remove(&*n);
            }
        }
        // Every entry was closed, so no slot is empty; reused in place (no second copy of a
        // batch that can hold tens of thousands of records).
        records.retain(Option::is_some);
        let records: Vec<Record> = if persist {
            records.into_iter().map(|r| r.expect("kept only filled slots")).collect()
        } else {
            Vec::new()
        };
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
        if should_compact(self.records_since_checkpoint, self.compact_after, || self.live_records()) {
            self.records_since_checkpoint = 0;
            let all = self.all_records();
            if let Some(store) = self.store.as_mut() {
                store.compact(all);
            }
        }
        seq
    }

    /// How many records a checkpoint would hold now (see [`Engine::all_records`]).
    fn live_records(&self) -> usize {
        let journaled: usize = self.journals.values().filter(|q| !q.is_empty()).map(|q| q.len() + 1).sum();
        1 + self.rt.instances().len() + journaled
    }

    /// Every live record: the latest snapshot of each instance and its retained journal.
    fn all_records(&self) -> Vec<Record> {
        let program = Record::Program {
            files: self.files.clone(),
            retry: Some(self.retry()),
            confirm_ms: Some(self.rt.policy.confirm_ms),
        };
        let insts = self.rt.instances();
        let (journals, history, schemas) = (&self.journals, &self.history, &self.schemas);
        // Sized once: a large fleet's checkpoint holds millions of records.
        let mut records = Vec::with_capacity(self.live_records() + journals.len());
        records.push(program);
        if insts.len() < CHECKPOINT_SPLIT_FROM {
            live_records_of(insts, journals, history, schemas, &mut records);
            return records;
        }
        // Copying every retained journal is most of what a checkpoint costs this thread, and it
        // only reads: a helper copies the second half of the fleet meanwhile (the records keep
        // the instances' order).
        let (front, back) = insts.split_at(insts.len() / 2);
        let rest = std::thread::scope(|s| {
            // About half of all, sized once: grown from nothing it was copied over and over.
            let half = records.capacity() / 2;
            let helper = s.spawn(move || {
                let mut rest = Vec::with_capacity(half);
                live_records_of(back, journals, history, schemas, &mut rest);
                rest
            });
            live_records_of(front, journals, history, schemas, &mut records);
            helper.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
        });
        records.extend(rest);
        records
    }

    /// Completes an instance's open journal entry: into the journal and its place in `records`.
    fn close_entry(
        &mut self,
        name: &str,
        open: &mut FxHashMap<Arc<str>, (usize, JournalEntry)>,
        records: &mut [Option<Record>],
    ) {
        let Some((at, e)) = open.remove(name) else { return };
        // One entry, shared by the record and the in-memory journal.
        let e = Arc::new(e);
        records[at] = Some(Record::Journal(e.clone()));
        match self.journals.get_mut(name) {
            Some(q) => {
                q.push_back(e);
                while q.len() > JOURNAL_MAX {
                    q.pop_front();
                }
            }
            None => {
                self.journals.insert(name.to_string(), VecDeque::from([e]));
            }
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
        // Only an instance with a journal has an input or a status to recall from it; for the
        // others (a fleet at rest) the status to compare with is the one they were restored in.
        let names: Vec<String> = self.journals.keys().cloned().collect();
        for name in names {
            self.recover_context_of(&name);
        }
        for inst in self.rt.instances() {
            if inst.slice > 0 && !self.journals.contains_key(&*inst.name) {
                // Slices without journal entries are observations that changed nothing.
                self.quiet.insert(inst.name.to_string(), inst.slice);
            }
        }
        // The others rest as restored. In place: a restored instance has its entry already, so a
        // restart of a large fleet allocates nothing here.
        let statuses = &mut self.statuses;
        for i in self.rt.instances() {
            let s = slot(statuses, &i.name);
            if s.journaled.is_none() {
                s.journaled = Some(i.status);
            }
        }
    }

    /// [`Engine::recover_journal_context`] for one instance.
    fn recover_context_of(&mut self, name: &str) {
        if let Some(inst) = self.rt.instance(name) {
            let name = name.to_string();
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
            slot(&mut self.statuses, &name).journaled = Some(status.unwrap_or(inst.status));
        }
    }

    /// Takes over an instance (cluster mode: this node acquired it): restores it from the
    /// state its last owner left, or creates it, and runs it until idle. Intents the last
    /// owner recorded but never saw answered go out again, same id.
    /// A new instance (no state yet) starts with `initial` over its declared defaults.
    pub fn adopt(
        &mut self,
        name: &str,
        domain: usize,
        state: Option<Adopted>,
        initial: Vec<(u16, ved_vm::Value)>,
    ) -> Result<(), StartError> {
        let resumed = state.is_some();
        match state {
            Some(Adopted { snapshot, journal }) => {
                // Carried over to this program by field name, as a local start does. etcd does
                // not record the program, so transitions keep their indices.
                let m = crate::migrate::migrate(&self.program, None, &snapshot)
                    .map_err(|error| StartError::Upgrade { dir: "etcd".into(), error })?;
                let snapshot = Arc::new(m.snapshot.clone());
                let mut journal = journal;
                if m.changed() {
                    let wall_ms = self.clock.wall_ms(self.now_ms);
                    journal.push(m.journal_entry(wall_ms));
                    if let Some(store) = self.store.as_mut() {
                        let records = vec![
                            Record::Snapshot(snapshot.clone()),
                            Record::Journal(Arc::new(m.journal_entry(wall_ms))),
                        ];
                        store.append(records, vec![m.audit(wall_ms)]);
                    }
                }
                // Time continues from the snapshot, so retry deadlines still hold.
                self.clock.at_least(snapshot.snapshot.now_ms);
                self.now_ms = self.now_ms.max(snapshot.snapshot.now_ms);
                self.rt
                    .restore_instance(snapshot.snapshot.clone())
                    .map_err(|e| StartError::Restore { instance: name.to_string(), reason: e.to_string() })?;
                remember_new(&mut self.history, name, snapshot);
                self.journals.insert(name.to_string(), journal.into_iter().map(Arc::new).collect());
            }
            None => {
                self.rt
                    .create_instance(name, domain, initial)
                    .map_err(|e| StartError::Create { instance: name.to_string(), reason: e.to_string() })?;
                if let (Some(store), Some(inst)) = (self.store.as_mut(), self.rt.instance(name)) {
                    let snap = SnapshotRecord::new(inst.snapshot(), &self.schemas[inst.domain]);
                    store.append(vec![Record::snapshot(snap)], Vec::new());
                }
            }
        }
        if let Some(fields) = self.watched.get(name) {
            self.rt.set_watched(name, fields.clone());
        }
        self.recover_context_of(name);
        if let Some(inst) = self.rt.instance(name) {
            let undelivered = inst.undelivered();
            let (slice, ticks, stable) = (inst.slice, inst.ticks, inst.status == Status::Stable);
            slot(&mut self.statuses, name).last = Some(inst.status);
            // Intents the last owner never saw answered go out again, but only after a write
            // under this node's ownership succeeded: ownership is proven by a fenced write,
            // not by what this node last heard.
            let snap = SnapshotRecord::new(inst.snapshot(), &self.schemas[inst.domain]);
            let seq = match self.store.as_mut() {
                Some(store) if !undelivered.is_empty() => store.append(vec![Record::snapshot(snap)], Vec::new()),
                _ => 0,
            };
            for i in undelivered {
                self.outbox.push_back((seq, i));
            }
            if !(resumed && stable) {
                let what = format!("{} at slice {slice}", if resumed { "resumed" } else { "started" });
                self.episodes.insert(name.to_string(), Episode::new(Some(what), ticks));
            }
        }
        self.settle();
        Ok(())
    }

    /// Lets an instance go (handed over, or another node owns it now): nothing of it is
    /// run, recorded or released from here on. Results still in flight for it are ignored.
    pub fn drop_instance(&mut self, name: &str) {
        self.rt.remove_instance(name);
        self.outbox.retain(|(_, i)| &*i.id.instance != name);
        self.statuses.remove(name);
        self.journals.remove(name);
        self.episodes.remove(name);
        self.reasons.remove(name);
        self.history.remove(name);
        self.last_input.remove(name);
        self.quiet.remove(name);
        self.feeds.retain(|f| f.instance != name);
    }

    /// The program this engine runs.
    pub fn program(&self) -> &Arc<CompiledProgram> {
        &self.program
    }

    /// Whether every batch appended so far is durable.
    pub fn is_durable(&self) -> bool {
        self.store.as_ref().is_none_or(|s| s.durable_seq() >= s.last_seq())
    }

    /// Whether this engine holds `name`.
    pub fn holds(&self, name: &str) -> bool {
        self.rt.index_of(name).is_some()
    }

    /// The names of the instances this engine holds.
    pub fn instance_names(&self) -> Vec<String> {
        self.rt.instances().iter().map(|i| i.name.to_string()).collect()
    }

    /// Instances the persistence lost to another owner: dropped before anything of
    /// theirs is released.
    fn drop_lost(&mut self) {
        let lost = self.store.as_mut().map(|s| s.take_lost()).unwrap_or_default();
        for name in lost {
            self.drop_instance(&name);
            self.out.event(EngineEvent::Lost { instance: name });
        }
    }

    /// Builds the audit trail: a drift, the corrections, and how it ended. `dom` is the
    /// instance's domain (its field and transition names).
    fn track_episode(
        &mut self,
        dom: &ved_vm::CompiledDomain,
        name: &str,
        ticks: u64,
        ev: &Event,
        audit: &mut Vec<AuditDraft>,
    ) {
        match ev {
            Event::Slice { cause: Cause::Observe, changes, .. } if !changes.is_empty() => {
                let was_resting = self.statuses.get(name).and_then(|s| s.last).is_some_and(|s| s != Status::Converging);
                let acted = self.episodes.get(name).is_some_and(|ep| ep.acted);
                let verb = if acted { "observed as" } else { "drifted to" };
                let text = changes_text(String::new(), dom, changes, verb);
                let ep = slot_with(&mut self.episodes, name, || Episode::new(None, ticks));
                if was_resting && ep.log.is_empty() {
                    ep.ticks_at_start = ticks;
                }
                ep.note(text);
                slot(&mut self.statuses, name).last = Some(Status::Converging);
            }
            Event::Slice { cause: Cause::Transition(t), changes, .. } if !changes.is_empty() => {
                let mut text = String::with_capacity(64);
                text.push_str(transition_name(dom, *t));
                text.push_str(" set ");
                let text = changes_text(text, dom, changes, "=");
                if let Some(ep) = self.episodes.get_mut(name) {
                    ep.note(text);
                    ep.acted = true;
                }
            }
            Event::Intent(i) => {
                let text = format!("{} emitted {i}", transition_name(dom, i.transition));
                if let Some(ep) = self.episodes.get_mut(name) {
                    ep.note(text);
                    ep.acted = true;
                }
            }
            Event::Result { ok: false, id, error, .. } => {
                let text = format!("{id} failed ({})", error.as_deref().unwrap_or("no reason given"));
                if let Some(ep) = self.episodes.get_mut(name) {
                    ep.note(text);
                }
            }
            // A correction lands when its intents succeed: the held changes apply now.
            Event::Slice { cause: Cause::Result(id), changes, .. } if !changes.is_empty() => {
                let text = changes_text(format!("{id} succeeded: "), dom, changes, "=");
                if let Some(ep) = self.episodes.get_mut(name) {
                    ep.note(text);
                }
            }
            Event::Status { status, reason, .. } => {
                let before = slot(&mut self.statuses, name).last.replace(*status);
                match reason {
                    Some(r) => set(&mut self.reasons, name, r.clone()),
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
                            let text = ep.told(format!("not at the goal yet: {note}"));
                            ep.note(note);
                            let wall_ms = Some(self.clock.wall_ms(self.now_ms));
                            audit.push(AuditDraft { at_ms: self.now_ms, wall_ms, instance: name.to_string(), text });
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
                let wall_ms = Some(self.clock.wall_ms(self.now_ms));
                let text = ep.told(end);
                audit.push(AuditDraft { at_ms: self.now_ms, wall_ms, instance: name.to_string(), text });
            }
            _ => {}
        }
    }

    fn apply_line(&mut self, line: &str) -> Result<(), InputError> {
        match crate::input::parse_line(line)? {
            Line::Advance(ms) => {
                self.advance_by(ms);
                Ok(())
            }
            Line::Observe(obs) => self.queue_observation(obs),
        }
    }

    /// Simulated time passes by `ms`, stepping through every retry that comes due on the way.
    pub fn advance_by(&mut self, ms: u64) {
        let target = self.now_ms.saturating_add(ms);
        while let Some(t) = self.rt.next_timer_ms().filter(|t| *t <= target) {
            self.rt.advance_time(t);
            self.now_ms = t;
            self.stamp();
            let before = self.rt.instances().iter().map(|i| i.slice).sum::<u64>();
            self.run_and_persist();
            self.settle();
            if self.rt.instances().iter().map(|i| i.slice).sum::<u64>() == before {
                break;
            }
        }
        self.now_ms = target;
        self.stamp();
        self.rt.advance_time(target);
    }

    /// Applies an observation and runs the program until idle. `Ok` carries the batch
    /// that recorded it: once durable, the observation and all it caused survive a crash.
    pub fn observe(&mut self, obs: Observation) -> Result<u64, InputError> {
        self.queue_observation(obs)?;
        let seq = self.run_and_persist();
        self.settle();
        Ok(seq)
    }

    /// Checks an observation against the instance's fields and queues it.
    pub(crate) fn queue_observation(&mut self, mut obs: Observation) -> Result<(), InputError> {
        // Moved out (the feed keeps it), not copied.
        let name = std::mem::take(&mut obs.instance);
        let Some(idx) = self.rt.index_of(&name) else {
            let known = self.rt.instances().iter().map(|i| i.name.to_string()).collect();
            return Err(InputError::NoInstance { name, known });
        };
        let dom = self.rt.domain_of(idx);
        let slot_of = |field: &str| {
            dom.fields.iter().position(|(n, _)| n == field).ok_or_else(|| InputError::NoField {
                instance: name.clone(),
                domain: dom.name.clone(),
                field: field.to_string(),
                known: dom.fields.iter().map(|(n, _)| n.clone()).collect(),
            })
        };
        if !obs.add.is_empty() {
            let mut deltas = Vec::with_capacity(obs.add.len());
            let mut named = Vec::with_capacity(obs.add.len());
            for (field, value) in &obs.add {
                let slot = slot_of(field)?;
                let Some(d) = value.as_i64() else {
                    return Err(InputError::NotDelta {
                        instance: name,
                        field: field.clone(),
                        value: value.to_string(),
                    });
                };
                deltas.push((slot as u16, d));
                named.push((field.clone(), d));
            }
            self.rt
                .observe_add(&name, deltas)
                .map_err(|e| InputError::Refused { instance: name.clone(), reason: e.to_string() })?;
            self.feeds.push_back(Feed {
                instance: name,
                source: obs.source,
                caused_by: obs.caused_by,
                set: Vec::new(),
                add: named,
            });
            return Ok(());
        }
        let mut writes = Vec::with_capacity(obs.set.len());
        for (field, value) in &obs.set {
            let slot = slot_of(field)?;
            let v = from_json(value, &dom.fields[slot].1).map_err(|reason| InputError::BadValue {
                instance: name.clone(),
                field: field.clone(),
                reason,
            })?;
            writes.push((slot as u16, v));
        }
        let r = match &obs.version {
            Some((source, v)) => self.rt.observe_versioned(&name, writes, source, *v),
            None => self.rt.observe(&name, writes),
        };
        r.map_err(|e| InputError::Refused { instance: name.clone(), reason: e.to_string() })?;
        self.feeds.push_back(Feed {
            instance: name,
            source: obs.source,
            caused_by: obs.caused_by,
            set: obs.set,
            add: Vec::new(),
        });
        Ok(())
    }

    fn print_event(&mut self, domain: usize, ev: &Event) {
        if !self.out.wants_slice_events() {
            return;
        }
        let inst = ev.instance().to_string();
        let d = &self.program.domains[domain];
        let tname = |t: usize| d.transitions.get(t).map(|t| t.name.clone()).unwrap_or_default();
        let named = |changes: &[(u16, ved_vm::Value)]| -> Vec<(String, ved_vm::Value)> {
            changes.iter().map(|(s, v)| (d.fields[*s as usize].0.clone(), v.clone())).collect()
        };
        let event = match ev {
            Event::Slice { slice, cause, changes, held, .. } => EngineEvent::Slice {
                instance: inst,
                slice: *slice,
                cause: match cause {
                    Cause::Observe => SliceCause::Observe,
                    Cause::Transition(t) => SliceCause::Transition(tname(*t)),
                    Cause::Result(id) => SliceCause::Result(id.to_string()),
                    Cause::Timer(t) => SliceCause::Timer(tname(*t)),
                },
                changes: named(changes),
                held: named(held),
            },
            Event::Tick { .. } | Event::Intent(_) => return,
            Event::Stale { source, version, last, .. } => {
                EngineEvent::Stale { instance: inst, source: source.to_string(), version: *version, last: *last }
            }
            Event::Result { id, ok, error, .. } => {
                EngineEvent::Result { instance: inst, id: id.to_string(), ok: *ok, error: error.clone() }
            }
            Event::Retry { transition, attempt, at_ms, .. } => {
                EngineEvent::Retry { instance: inst, transition: tname(*transition), attempt: *attempt, at_ms: *at_ms }
            }
            Event::Fault { transition, goal, fault, .. } => {
                let f = self.sources.file(fault.span.file);
                let (line, col) = f.line_col(fault.span.start as usize);
                EngineEvent::Fault {
                    instance: inst,
                    message: fault.to_string(),
                    at: format!("{}:{line}:{col}", f.name),
                    transition: transition.map(tname),
                    goal: goal.and_then(|g| d.goals.get(g).map(|g| g.name.clone())),
                }
            }
            Event::Status { status, reason, .. } => {
                EngineEvent::Status { instance: inst, status: *status, reason: reason.clone() }
            }
        };
        self.out.event(event);
    }
}

/// `field VERB value, ...` for the audit narrative (`=`, `drifted to`, `observed as`), written
/// after `text` into the same string: it is built for every slice of a busy fleet.
fn changes_text(
    mut text: String,
    dom: &ved_vm::CompiledDomain,
    changes: &[(u16, ved_vm::Value)],
    verb: &str,
) -> String {
    use std::fmt::Write;
    text.reserve(32 * changes.len());
    for (i, (slot, v)) in changes.iter().enumerate() {
        if i > 0 {
            text.push_str(", ");
        }
        match dom.fields.get(usize::from(*slot)) {
            Some((field, _)) => text.push_str(field),
            None => {
                let _ = write!(text, "#{slot}");
            }
        }
        let _ = write!(text, " {verb} {v}");
    }
    text
}

fn transition_name(dom: &ved_vm::CompiledDomain, t: usize) -> &str {
    dom.transitions.get(t).map_or("", |t| t.name.as_str())
}

/// The journal entry for one step's events: its slice, cause, changes, held changes,
/// intents and results, and for an observation what the driver knew of it (`feed`).
/// `ved replay` builds the same entry from its own run to compare.
pub fn journal_entry(
    dom: &ved_vm::CompiledDomain,
    instance: &str,
    at_ms: u64,
    evs: &[Event],
    feed: Option<&Feed>,
) -> Option<JournalEntry> {
    entry_of(dom, instance, at_ms, evs, feed.cloned())
}

/// [`journal_entry`] with the feed handed over: what the driver reported moves into the
/// entry instead of being copied (the engine takes each feed once, when it is applied).
fn entry_of(
    dom: &ved_vm::CompiledDomain,
    instance: &str,
    at_ms: u64,
    evs: &[Event],
    feed: Option<Feed>,
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
    let (caused_by, observed, added, source) = match feed {
        Some(f) => (f.caused_by, if f.add.is_empty() { f.set } else { Vec::new() }, f.add, Some(f.source)),
        None if cause == "observe" => {
            (None, changes.iter().map(|(s, v)| (field(*s), to_json(v))).collect(), Vec::new(), None)
        }
        None => (None, Vec::new(), Vec::new(), None),
    };
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
        caused_by,
        observed,
        added,
        source,
        ..JournalEntry::default()
    })
}

/// Whether a step applied an observation: a slice, a stale version dropped, or a relative
/// change refused for overflow.
/// A driver's outcome as the runtime records it: success, or the error's message (its
/// `Display`), which is what the journal and the degraded reason show. The error's kind
/// stays on this side of the boundary.
pub fn for_runtime(outcome: ved_adapters::ActionResult) -> (bool, Option<String>) {
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

/// Whether the log should be compacted, `since` records after the last checkpoint, when a
/// checkpoint would hold `live()` records: after at least [`COMPACT_AFTER_RECORDS`], and only
/// once the log outgrew a checkpoint. A checkpoint rewrites every live record, so compacting
/// a large busy fleet after a fixed number of records would cost more than the writes it
/// saves, and cost it again and again; this way it costs at most as much as the writes since
/// the last one. `live` is counted only past the fixed threshold.
fn should_compact(since: usize, after: usize, live: impl FnOnce() -> usize) -> bool {
    since > after && since > live()
}

/// The compaction threshold: [`COMPACT_AFTER_RECORDS`] unless [`COMPACT_AFTER_RECORDS_VAR`]
/// names a positive number. A bad value is a warning, not a failure to start: it only tunes
/// when work happens, never what is kept.
fn compact_after_records(var: Option<String>, warnings: &mut Vec<String>) -> usize {
    let Some(v) = var else { return COMPACT_AFTER_RECORDS };
    match v.trim().parse::<usize>() {
        Ok(n) if n > 0 => n,
        _ => {
            warnings.push(format!(
                "{COMPACT_AFTER_RECORDS_VAR}={v:?} is not a positive number of records; using {COMPACT_AFTER_RECORDS}"
            ));
            COMPACT_AFTER_RECORDS
        }
    }
}

/// The live records of `insts`, in order, onto `records`: for each, the snapshot before its
/// oldest journal entry (replay starts there), its retained journal, and its latest snapshot.
fn live_records_of(
    insts: &[Instance],
    journals: &ByName<VecDeque<Arc<JournalEntry>>>,
    history: &ByName<VecDeque<Arc<SnapshotRecord>>>,
    schemas: &[Arc<ved_store::Schema>],
    records: &mut Vec<Record>,
) {
    for inst in insts {
        let journal = journals.get(&*inst.name);
        let first = journal.and_then(|q| q.front()).map(|e| e.slice);
        let base = first.and_then(|f| history.get(&*inst.name)?.iter().rev().find(|s| s.snapshot.slice < f));
        if let Some(b) = base {
            records.push(Record::Snapshot(b.clone()));
        }
        // The journal before the latest snapshot, as in the log: each entry after its slice.
        if let Some(q) = journal {
            records.extend(q.iter().map(|e| Record::Journal(e.clone())));
        }
        records.push(Record::snapshot(SnapshotRecord::new(inst.snapshot(), &schemas[inst.domain])));
    }
}

/// Adds a snapshot to an instance's recent ones. A snapshot after a slice that was not
/// journaled (an observation that changed nothing) is needed only until the next one, so a
/// run of them keeps its last: periodic resyncs never push out the snapshot `ved replay`
/// starts from. `last_entry`: the slice of the instance's latest journal entry.
fn remember(q: &mut VecDeque<Arc<SnapshotRecord>>, snap: Arc<SnapshotRecord>, last_entry: u64) {
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

/// The first snapshot an instance's history holds: room for one, not a deque's default
/// four (a fleet at rest keeps one each; the queue grows when the instance is busy).
pub(crate) fn remember_new(history: &mut ByName<VecDeque<Arc<SnapshotRecord>>>, name: &str, snap: Arc<SnapshotRecord>) {
    history.entry(name.to_string()).or_insert_with(|| VecDeque::with_capacity(1)).push_back(snap);
}

/// `map[name] = value`, allocating the key only for a name not there yet (a busy instance's
/// entries are there already, and this runs for every step); returns the value it replaced.
fn set<V>(map: &mut ByName<V>, name: &str, value: V) -> Option<V> {
    match map.get_mut(name) {
        Some(v) => Some(std::mem::replace(v, value)),
        None => map.insert(name.to_string(), value),
    }
}

/// `map.entry(name).or_default()`, allocating the key only for a name not there yet.
fn slot<'a, V: Default>(map: &'a mut ByName<V>, name: &str) -> &'a mut V {
    slot_with(map, name, V::default)
}

/// `map.entry(name).or_insert_with(make)`, allocating the key only for a name not there yet.
fn slot_with<'a, V>(map: &'a mut ByName<V>, name: &str, make: impl FnOnce() -> V) -> &'a mut V {
    if !map.contains_key(name) {
        map.insert(name.to_string(), make());
    }
    map.get_mut(name).expect("inserted above")
}

fn parse_status(s: &str) -> Option<Status> {
    [Status::Stable, Status::Converging, Status::Waiting, Status::Stuck, Status::Livelock, Status::Degraded]
        .into_iter()
        .find(|st| st.as_str() == s)
}

#[cfg(test)]
mod memory {
    use super::*;

    /// A fleet at rest keeps no snapshot copies in memory: only an instance with a journal
    /// needs one (to replay from), and it takes it just before its first step.
    #[test]
    fn instances_at_rest_without_a_journal_keep_no_history() {
        let dir = std::env::temp_dir().join(format!("ved-engine-history-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let src = "domain Pool {\n  state {\n    workers: int = 5\n  }\n  goal workers == 5\n}\n";
        let loaded = crate::load::check_texts(vec![("pool.ved".into(), src.into())]).unwrap();
        let mut ved = Builder::new(loaded).data_dir(&dir).start(Vec::<EngineEvent>::new()).unwrap();
        let items: Vec<Json> =
            (0..50).map(|i| serde_json::json!({"name": format!("p{i}"), "domain": "Pool"})).collect();
        ved.call(crate::Call::CreateMany { items, single: false, max_instances: 1000 }, Box::new(|_| {}));
        ved.run_until_idle().unwrap();
        assert!(ved.history.is_empty(), "{} histories kept", ved.history.len());
        // A drift gives the instance a journal, and its history starts from before the drift.
        let obs = Observation::set("p7", "test", [("workers".to_string(), serde_json::json!(3))]);
        ved.observe(obs).unwrap();
        ved.run_until_idle().unwrap();
        let h = ved.history.get("p7").expect("p7 has a history now");
        assert_eq!(h.front().map(|s| s.snapshot.slice), Some(0), "the base is the state before the drift");
        assert_eq!(ved.history.len(), 1);
        ved.finish().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[cfg(test)]
mod checkpoint {
    use super::*;

    #[test]
    fn the_log_is_compacted_after_the_fixed_threshold_and_once_it_outgrew_a_checkpoint() {
        // A small fleet: the fixed threshold decides.
        assert!(!should_compact(COMPACT_AFTER_RECORDS, COMPACT_AFTER_RECORDS, || 10));
        assert!(should_compact(COMPACT_AFTER_RECORDS + 1, COMPACT_AFTER_RECORDS, || 10));
        // A large one: not before the log holds more than a checkpoint would.
        let live = 3 * COMPACT_AFTER_RECORDS;
        assert!(!should_compact(COMPACT_AFTER_RECORDS + 1, COMPACT_AFTER_RECORDS, || live));
        assert!(!should_compact(live, COMPACT_AFTER_RECORDS, || live));
        assert!(should_compact(live + 1, COMPACT_AFTER_RECORDS, || live));
        // Below the fixed threshold the fleet is not even counted.
        assert!(!should_compact(5, COMPACT_AFTER_RECORDS, || panic!("counted the live records below the threshold")));
    }

    #[test]
    fn the_threshold_can_be_lowered_and_a_bad_value_is_a_warning() {
        let mut warnings = Vec::new();
        assert_eq!(compact_after_records(None, &mut warnings), COMPACT_AFTER_RECORDS);
        assert_eq!(compact_after_records(Some(" 300 ".into()), &mut warnings), 300);
        assert!(warnings.is_empty());
        for bad in ["0", "-1", "many", ""] {
            assert_eq!(compact_after_records(Some(bad.into()), &mut warnings), COMPACT_AFTER_RECORDS);
        }
        assert_eq!(warnings.len(), 4);
        assert!(warnings[0].contains(COMPACT_AFTER_RECORDS_VAR), "{warnings:?}");
        // With a low threshold a small program compacts every few hundred records.
        assert!(should_compact(301, 300, || 3));
    }

    /// A checkpoint of a fleet large enough to be copied on two threads holds the same
    /// records, in the same order, as one copied on one.
    #[test]
    fn a_checkpoint_copied_on_two_threads_keeps_the_order_of_one() {
        let dir = std::env::temp_dir().join(format!("ved-engine-split-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let src = "domain Pool {\n  state {\n    workers: int = 5\n  }\n  goal workers == 5\n  transition up {\n    step {\n      if workers < 5 {\n        workers += 1\n      }\n    }\n  }\n}\n";
        let loaded = crate::load::check_texts(vec![("pool.ved".into(), src.into())]).unwrap();
        let mut ved = Builder::new(loaded).data_dir(&dir).start(Vec::<EngineEvent>::new()).unwrap();
        let n = CHECKPOINT_SPLIT_FROM + 10;
        let items: Vec<Json> = (0..n).map(|i| serde_json::json!({"name": format!("p{i}"), "domain": "Pool"})).collect();
        ved.call(crate::Call::CreateMany { items, single: false, max_instances: n + 10 }, Box::new(|_| {}));
        ved.run_until_idle().unwrap();
        // Journals (and replay bases) on instances in both halves.
        let items: Vec<Json> = (0..n)
            .step_by(7)
            .map(|i| serde_json::json!({"instance": format!("p{i}"), "set": {"workers": 3}}))
            .collect();
        ved.call(crate::Call::ObserveMany(items), Box::new(|_| {}));
        ved.run_until_idle().unwrap();
        let split = ved.all_records();
        let mut one = Vec::new();
        live_records_of(ved.rt.instances(), &ved.journals, &ved.history, &ved.schemas, &mut one);
        assert_eq!(split.len(), one.len() + 1, "the program record, then the instances'");
        assert!(matches!(split[0], Record::Program { .. }));
        assert!(split[1..] == one[..], "the same records in the same order");
        assert!(one
            .iter()
            .any(|r| matches!(r, Record::Journal(e) if e.instance == format!("p{}", n - 1 - (n - 1) % 7))));
        drop(ved);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[cfg(test)]
mod sink {
    use super::*;

    /// Keeps the events it is given, but says it wants no per-slice ones.
    #[derive(Default)]
    struct Quiet(Vec<EngineEvent>);

    impl Sink for Quiet {
        fn event(&mut self, ev: EngineEvent) {
            self.0.push(ev);
        }
        fn wants_slice_events(&self) -> bool {
            false
        }
    }

    /// A sink that wants no per-slice events gets none, and the engine records the same
    /// journal as for one that keeps them all.
    #[test]
    fn a_sink_that_wants_no_slice_events_gets_none_and_changes_nothing_else() {
        let src = "domain Pool {\n  state {\n    workers: int = 5\n  }\n  goal workers == 5\n  transition up {\n    step {\n      if workers < 5 {\n        workers += 1\n      }\n    }\n  }\n}\n";
        let load = || crate::load::check_texts(vec![("pool.ved".into(), src.into())]).unwrap();
        let mut all = Builder::new(load()).start(Vec::<EngineEvent>::new()).unwrap();
        let mut quiet = Builder::new(load()).start(Quiet::default()).unwrap();
        for _ in 0..3 {
            let obs = || Observation::set("Pool", "test", [("workers".to_string(), serde_json::json!(3))]);
            all.observe(obs()).unwrap();
            quiet.observe(obs()).unwrap();
        }
        let slice_events = |evs: &[EngineEvent]| {
            evs.iter().filter(|e| matches!(e, EngineEvent::Slice { .. } | EngineEvent::Status { .. })).count()
        };
        assert!(slice_events(all.output()) >= 6, "{:?}", all.output());
        assert_eq!(slice_events(&quiet.output().0), 0, "{:?}", quiet.output().0);
        assert_eq!(all.journals, quiet.journals);
        assert!(all.journals.get("Pool").is_some_and(|q| q.len() >= 6), "an observation and its corrections each time");
    }
}
