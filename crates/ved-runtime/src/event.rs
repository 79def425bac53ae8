//! What the runtime reports: events, intents and the status of an instance.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;
use ved_vm::{Fault, Value};

/// Identifies an intent: the instance, the slice that emitted it and its index
/// within that slice. Stable across restarts, so adapters use it as an
/// idempotency key. Rendered as `instance/slice/index`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IntentId {
    pub instance: Arc<str>,
    pub slice: u64,
    pub index: u32,
}

impl IntentId {
    /// Reads `instance/slice/index` back, the inverse of `Display`. Instance names may
    /// contain `/`: the last two parts are the numbers.
    pub fn parse(s: &str) -> Option<IntentId> {
        let mut parts = s.rsplitn(3, '/');
        let index = parts.next()?.parse().ok()?;
        let slice = parts.next()?.parse().ok()?;
        let instance = parts.next()?;
        Some(IntentId { instance: Arc::from(instance), slice, index })
    }
}

impl fmt::Display for IntentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.instance, self.slice, self.index)
    }
}

/// How intent ids are stored. The instance is left out: the snapshot holding
/// the id names it, and [`InstanceSnapshot`](crate::InstanceSnapshot)'s
/// `Deserialize` fills it in (until then it is empty).
pub(crate) mod stored_id {
    use super::IntentId;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::sync::Arc;

    fn unnamed(slice: u64, index: u32) -> IntentId {
        IntentId { instance: Arc::from(""), slice, index }
    }

    /// Inside an intent: `"slice": s, "index": i` among its other fields.
    pub mod fields {
        use super::*;

        #[derive(Serialize, Deserialize)]
        struct Fields {
            slice: u64,
            index: u32,
        }

        pub fn serialize<S: Serializer>(id: &IntentId, s: S) -> Result<S::Ok, S::Error> {
            Fields { slice: id.slice, index: id.index }.serialize(s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<IntentId, D::Error> {
            let f = Fields::deserialize(d)?;
            Ok(unnamed(f.slice, f.index))
        }
    }

    /// A list of ids: `[[slice, index], ..]`.
    pub mod pairs {
        use super::*;

        pub fn serialize<S: Serializer>(ids: &[IntentId], s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(ids.iter().map(|id| (id.slice, id.index)))
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IntentId>, D::Error> {
            Ok(Vec::<(u64, u32)>::deserialize(d)?.into_iter().map(|(s, i)| unnamed(s, i)).collect())
        }
    }
}

/// A request for an effect, to be carried out by an adapter.
/// Stored as `{"slice", "index", "transition", "adapter", "action", "args"}`; the id's
/// instance comes from the snapshot that holds the intent.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Intent {
    #[serde(flatten, with = "stored_id::fields")]
    pub id: IntentId,
    /// Index of the emitting transition in its domain.
    pub transition: usize,
    pub adapter: Arc<str>,
    pub action: Arc<str>,
    /// Shared: the same arguments go out in the event and stay in the pending record
    /// (to be sent again after a restart), without a copy.
    pub args: Arc<[Value]>,
}

impl fmt::Display for Intent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}(", self.adapter, self.action)?;
        for (i, a) in self.args.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{a}")?;
        }
        f.write_str(")")
    }
}

/// Where an instance stands once it has nothing left to do for now.
/// Stored as its name ([`Status::as_str`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Every goal holds; the instance sleeps until a message arrives.
    Stable,
    /// Goals are false and work is under way (only seen mid-run).
    Converging,
    /// Goals are false, nothing can run now, but transitions are pending:
    /// intents in flight or retries backing off.
    Waiting,
    /// Goals are false, no transition is enabled and nothing is pending.
    Stuck,
    /// A state repeated (or the tick budget ran out) without the goals holding.
    Livelock,
    /// Waiting, and a transition has failed so often in a row that its retries
    /// only probe, at the backoff cap (a circuit breaker).
    Degraded,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Stable => "stable",
            Status::Converging => "converging",
            Status::Waiting => "waiting",
            Status::Stuck => "stuck",
            Status::Livelock => "livelock",
            Status::Degraded => "degraded",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What caused a slice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cause {
    /// An observation from the outside world.
    Observe,
    /// A transition's step ran.
    Transition(usize),
    /// An intent's result arrived.
    Result(IntentId),
    /// A retry timer came due for a transition.
    Timer(usize),
}

/// Everything the runtime reports, in the order it happened.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A slice committed. `changes` are the fields it changed (new values);
    /// `held` are changes a transition made that wait for its intents to succeed.
    Slice { instance: Arc<str>, slice: u64, cause: Cause, changes: Vec<(u16, Value)>, held: Vec<(u16, Value)> },
    /// A tick began: the scheduler visits the transitions in declaration order.
    Tick { instance: Arc<str>, tick: u64 },
    /// An intent leaves the runtime, to be delivered to its adapter.
    Intent(Intent),
    /// An adapter reported on an intent.
    Result { instance: Arc<str>, id: IntentId, ok: bool, error: Option<String> },
    /// A transition failed (an intent failed, or its step faulted) and will be retried at `at_ms`.
    Retry { instance: Arc<str>, transition: usize, attempt: u32, at_ms: u64 },
    /// A step or a goal hit a runtime error; the slice was aborted and the state is unchanged.
    Fault { instance: Arc<str>, transition: Option<usize>, goal: Option<usize>, fault: Fault },
    /// A versioned observation older than the last one applied from its source was dropped.
    Stale { instance: Arc<str>, source: Arc<str>, version: u64, last: u64 },
    /// The instance reached a resting status: stable, waiting, stuck or livelock.
    Status { instance: Arc<str>, status: Status, reason: Option<String> },
}

impl Event {
    pub fn instance(&self) -> &Arc<str> {
        match self {
            Event::Slice { instance, .. }
            | Event::Tick { instance, .. }
            | Event::Result { instance, .. }
            | Event::Retry { instance, .. }
            | Event::Fault { instance, .. }
            | Event::Stale { instance, .. }
            | Event::Status { instance, .. } => instance,
            Event::Intent(i) => &i.id.instance,
        }
    }
}
