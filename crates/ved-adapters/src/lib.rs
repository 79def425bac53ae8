//! `ved-adapters` is the only code that touches the world on the runtime's
//! behalf. An adapter has two halves: a [`Actuator`] carries out intents and says
//! whether they succeeded, and a [`Watcher`] turns the world into observations.
//! Which driver serves which adapter name, and which watcher feeds which field,
//! is configuration (`ved.toml`, see [`config`]), not code in the program.
//!
//! Built in: `exec` (a command per intent, JSON on stdin), `http` (a POST per
//! intent with an idempotency key), `process` (a pool of real OS processes and
//! a watcher of their live count), `nftables` (firewall rules, watched through
//! `nft monitor`), `sim` (scripted failures and delays, for tests) and `log`
//! (acknowledges everything). Programs that embed Ved add
//! their own by implementing [`Actuator`] and [`Watcher`].
//!
//! # Errors
//!
//! An actuator that fails says so with an [`ActionError`]: a [`kind`](ActionErrorKind)
//! for code that wants to tell failures apart (the intent was refused as malformed, the
//! effect failed, it timed out, the thing that carries it out could not be reached or
//! started, or Ved stopped it), and a message in words. Its `Display` is the message
//! alone, and that text is what reaches the journal and an instance's degraded reason:
//! the driver loop turns an outcome into the runtime's `Option<String>` there.
//! Configuration problems are not `ActionError`s: [`config`] reports them as values
//! with their own diagnostics.

pub mod config;
pub mod exec;
pub mod http;
pub mod json;
pub mod nftables;
pub mod process;
pub mod sim;

use serde_json::{Map, Value as Json};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// An intent as adapters see it: plain JSON-ready data.
#[derive(Clone, Debug, PartialEq)]
pub struct IntentRequest {
    /// `instance/slice/index`: stable across restarts; use it as an idempotency key.
    pub id: String,
    pub instance: String,
    pub adapter: String,
    pub action: String,
    pub args: Vec<Json>,
    /// Cluster mode: the owner's fencing token. It only grows for an instance, so an
    /// adapter that remembers the highest it has seen can refuse a stale owner.
    pub fence: Option<i64>,
}

impl IntentRequest {
    pub fn from_intent(i: &ved_runtime::Intent) -> IntentRequest {
        IntentRequest {
            id: i.id.to_string(),
            instance: i.id.instance.to_string(),
            adapter: i.adapter.to_string(),
            action: i.action.to_string(),
            args: i.args.iter().map(json::to_json).collect(),
            fence: None,
        }
    }

    /// The JSON document a driver sends: `{"id", "instance", "adapter", "action", "args"}`,
    /// and `"fence"` in cluster mode.
    pub fn to_json(&self) -> Json {
        let mut j = serde_json::json!({
            "id": self.id, "instance": self.instance, "adapter": self.adapter,
            "action": self.action, "args": self.args,
        });
        if let Some(f) = self.fence {
            j["fence"] = serde_json::json!(f);
        }
        j
    }
}

/// What kind of failure an [`ActionError`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ActionErrorKind {
    /// The intent cannot be carried out as asked: bad arguments, an action the driver
    /// does not have. Trying again unchanged will fail again.
    Rejected,
    /// The driver tried and the effect failed: a command exited non-zero, a server
    /// answered with an error status, the firewall still drops the port.
    Failed,
    /// No answer within the driver's timeout; whatever was started was ended.
    Timeout,
    /// What carries the effect out could not be reached or started: a command that
    /// cannot be spawned, a server that does not answer the connection.
    Unavailable,
    /// Ved itself is stopping and ended the attempt; the intent goes out again after a restart.
    Interrupted,
}

/// Why an actuator could not carry out an intent. `Display` gives the message alone,
/// which is the text the journal records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActionError {
    pub kind: ActionErrorKind,
    /// Why, in words for the journal and the degraded reason.
    pub message: String,
}

impl ActionError {
    pub fn new(kind: ActionErrorKind, message: impl Into<String>) -> ActionError {
        ActionError { kind, message: message.into() }
    }

    /// [`ActionErrorKind::Rejected`].
    pub fn rejected(message: impl Into<String>) -> ActionError {
        ActionError::new(ActionErrorKind::Rejected, message)
    }

    /// [`ActionErrorKind::Failed`].
    pub fn failed(message: impl Into<String>) -> ActionError {
        ActionError::new(ActionErrorKind::Failed, message)
    }

    /// [`ActionErrorKind::Timeout`].
    pub fn timeout(message: impl Into<String>) -> ActionError {
        ActionError::new(ActionErrorKind::Timeout, message)
    }

    /// [`ActionErrorKind::Unavailable`].
    pub fn unavailable(message: impl Into<String>) -> ActionError {
        ActionError::new(ActionErrorKind::Unavailable, message)
    }

    /// [`ActionErrorKind::Interrupted`].
    pub fn interrupted(message: impl Into<String>) -> ActionError {
        ActionError::new(ActionErrorKind::Interrupted, message)
    }
}

impl std::fmt::Display for ActionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ActionError {}

/// What an actuator reports for one intent.
pub type ActionResult = Result<(), ActionError>;

/// Carries out intents. Called from a worker thread; may block up to its timeout.
///
/// Success means the effect is done *and visible* to the watcher of the same
/// resource: the runtime asks that watcher for a reading to confirm an effect on a
/// watched field, and a reading taken after a success must already show it (the
/// process pool waits until a started member shows its command line and a stopped
/// one has left /proc; the firewall's transaction is committed).
pub trait Actuator: Send + Sync {
    /// Performs the intent. `Err` carries why it failed: its kind, and in words for the journal.
    fn deliver(&self, intent: &IntentRequest) -> ActionResult;

    /// Performs the intent and hands the outcome to `report`. Drivers whose watcher
    /// must not overtake a result (the process pool) report while holding their lock.
    fn deliver_then(&self, intent: &IntentRequest, report: &mut dyn FnMut(ActionResult)) {
        report(self.deliver(intent));
    }
}

/// New values for some fields of an instance, as a watcher saw them.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    pub instance: String,
    pub fields: Map<String, Json>,
    /// Which watcher saw it, for stale-observation checks and the journal.
    pub source: String,
    /// Increases with every reading of the source; an older one than the last applied is stale.
    pub version: Option<u64>,
}

/// What flows back from adapters to the runtime, in one ordered stream.
#[derive(Clone, Debug, PartialEq)]
pub enum Inbound {
    /// A driver finished an intent.
    Result { id: String, outcome: ActionResult },
    /// A watcher saw the world.
    Observed(Observation),
    /// An adapter put back something it owns that others changed (the nftables
    /// adapter's structural repairs), already done; for the audit log. `what`
    /// holds one line per repair, quoting what was removed or restored.
    Repaired { instance: String, source: String, what: Vec<String> },
}

/// Where adapters send what they report: a bounded channel, so that a runtime that
/// falls behind slows its watchers and delivery threads down (they block on a full
/// channel) instead of letting readings pile up in memory.
pub type Sink = std::sync::mpsc::SyncSender<Inbound>;

/// Readings and results the channel from adapters holds before its senders wait.
pub const SINK_CAPACITY: usize = 1024;

/// A new bounded channel from adapters to the driver loop.
pub fn sink() -> (Sink, std::sync::mpsc::Receiver<Inbound>) {
    std::sync::mpsc::sync_channel(SINK_CAPACITY)
}

/// The runtime stopped listening: a watcher should end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gone;

/// Requests for a fresh reading, per instance: a counter the driver loop bumps when
/// an effect on a watched field succeeded. The runtime then waits for a reading to
/// confirm that effect (see `Phase::Confirming` in ved-runtime); when the effect left
/// the reading unchanged, a watcher would otherwise stay silent, so a bumped counter
/// makes the next reading go out even if it is no news. Process-wide, because the
/// watchers and the driver loop of one process share the world they look at.
static READING_REQUESTS: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<String, u64>>> =
    std::sync::LazyLock::new(Default::default);

/// Asks every watcher of `instance` for a fresh reading, even if it brings no news.
pub fn request_reading(instance: &str) {
    let mut m = READING_REQUESTS.lock().unwrap_or_else(|p| p.into_inner());
    *m.entry(instance.to_string()).or_default() += 1;
}

fn reading_epoch(instance: &str) -> u64 {
    READING_REQUESTS.lock().unwrap_or_else(|p| p.into_inner()).get(instance).copied().unwrap_or(0)
}

/// What every watcher does with a reading: send it when it differs from the last one
/// sent, when a resync is due, or when a reading was requested; numbered so that a
/// stale one can be recognised.
pub struct Reporter {
    instance: String,
    source: String,
    resync: Option<std::time::Duration>,
    version: u64,
    last: Option<Map<String, Json>>,
    last_sent: std::time::Instant,
    /// The reading-request count already served.
    served: u64,
}

impl Reporter {
    pub fn new(instance: &str, source: &str, resync: Option<std::time::Duration>) -> Reporter {
        Reporter {
            instance: instance.to_string(),
            source: source.to_string(),
            resync,
            version: 0,
            last: None,
            last_sent: std::time::Instant::now(),
            served: reading_epoch(instance),
        }
    }

    /// Whether the driver asked for a fresh reading since the last one sent: a
    /// watcher that polls checks this to read at once instead of at its next turn.
    pub fn reading_requested(&self) -> bool {
        reading_epoch(&self.instance) > self.served
    }

    /// When the next resync is due, if resync is on.
    pub fn resync_in(&self) -> Option<std::time::Duration> {
        self.resync.map(|r| r.saturating_sub(self.last_sent.elapsed()))
    }

    /// Sends `fields` if they are news or a resync is due. `Err` when the runtime is gone.
    pub fn offer(&mut self, fields: Map<String, Json>, sink: &Sink) -> Result<(), Gone> {
        let due = self.resync.is_some_and(|r| self.last_sent.elapsed() >= r);
        let epoch = reading_epoch(&self.instance);
        if self.last.as_ref() == Some(&fields) && !due && epoch <= self.served {
            return Ok(());
        }
        self.served = epoch;
        self.version += 1;
        self.last_sent = std::time::Instant::now();
        self.last = Some(fields.clone());
        let obs = Observation {
            instance: self.instance.clone(),
            fields,
            source: self.source.clone(),
            version: Some(self.version),
        };
        sink.send(Inbound::Observed(obs)).map_err(|_| Gone)
    }

    /// [`Reporter::offer`] for a single field.
    pub fn offer_one(&mut self, field: &str, value: Json, sink: &Sink) -> Result<(), Gone> {
        let mut m = Map::new();
        m.insert(field.to_string(), value);
        self.offer(m, sink)
    }
}

/// Turns the outside world into observations. Runs on its own thread until `stop` is set.
pub trait Watcher: Send {
    /// Sends an observation whenever the watched state changes, at least once at
    /// start, and again at least every `resync` (when set) even if nothing changed.
    fn run(self: Box<Self>, sink: Sink, stop: Arc<AtomicBool>, resync: Option<std::time::Duration>);
}

/// Worker threads that carry out intents, so a slow adapter never stalls the runtime.
pub struct DeliveryPool {
    jobs: Option<std::sync::mpsc::Sender<(Arc<dyn Actuator>, IntentRequest)>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// Intents carried out at once.
pub const DELIVERY_THREADS: usize = 8;

impl DeliveryPool {
    /// Results go to `sink`, in the order the drivers report them.
    pub fn new(sink: Sink) -> DeliveryPool {
        let (tx, rx) = std::sync::mpsc::channel::<(Arc<dyn Actuator>, IntentRequest)>();
        let rx = Arc::new(std::sync::Mutex::new(rx));
        let threads = (0..DELIVERY_THREADS)
            .map(|i| {
                let rx = rx.clone();
                let sink = sink.clone();
                std::thread::Builder::new()
                    .name(format!("ved-deliver-{i}"))
                    .spawn(move || loop {
                        let job = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        let Ok((driver, intent)) = job else { return };
                        driver.deliver_then(&intent, &mut |outcome| {
                            let _ = sink.send(Inbound::Result { id: intent.id.clone(), outcome });
                        });
                    })
                    .expect("spawning a delivery thread")
            })
            .collect();
        DeliveryPool { jobs: Some(tx), threads }
    }

    pub fn submit(&self, driver: Arc<dyn Actuator>, intent: IntentRequest) {
        if let Some(jobs) = &self.jobs {
            let _ = jobs.send((driver, intent));
        }
    }
}

impl Drop for DeliveryPool {
    fn drop(&mut self) {
        drop(self.jobs.take());
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The `log` driver: acknowledges every intent (the driver loop prints it).
pub struct LogDriver;

impl Actuator for LogDriver {
    fn deliver(&self, _intent: &IntentRequest) -> ActionResult {
        Ok(())
    }
}
