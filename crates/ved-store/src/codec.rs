//! The records the store writes, as serde types. Runtime values are converted
//! here, at the edge, so the core types carry no serialization.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use ved_runtime::{InstanceSnapshot, Intent, IntentId, Pending, Phase, Status};
use ved_vm::Value;

/// A value, tagged so that lists, sets and maps survive the round trip.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum StoredValue {
    #[serde(rename = "i")]
    Int(i64),
    #[serde(rename = "b")]
    Bool(bool),
    #[serde(rename = "s")]
    Str(String),
    #[serde(rename = "l")]
    List(Vec<StoredValue>),
    #[serde(rename = "set")]
    Set(Vec<StoredValue>),
    #[serde(rename = "m")]
    Map(Vec<(String, StoredValue)>),
}

impl From<&Value> for StoredValue {
    fn from(v: &Value) -> StoredValue {
        match v {
            Value::Int(i) => StoredValue::Int(*i),
            Value::Bool(b) => StoredValue::Bool(*b),
            Value::Str(s) => StoredValue::Str(s.to_string()),
            Value::List(l) => StoredValue::List(l.iter().map(StoredValue::from).collect()),
            Value::Set(s) => StoredValue::Set(s.iter().map(StoredValue::from).collect()),
            Value::Map(m) => StoredValue::Map(m.iter().map(|(k, v)| (k.to_string(), StoredValue::from(v))).collect()),
        }
    }
}

impl StoredValue {
    pub fn to_value(&self) -> Value {
        match self {
            StoredValue::Int(i) => Value::Int(*i),
            StoredValue::Bool(b) => Value::Bool(*b),
            StoredValue::Str(s) => Value::Str(Arc::from(s.as_str())),
            StoredValue::List(l) => Value::List(Arc::new(l.iter().map(StoredValue::to_value).collect())),
            StoredValue::Set(s) => Value::Set(Arc::new(s.iter().map(StoredValue::to_value).collect::<BTreeSet<_>>())),
            StoredValue::Map(m) => Value::Map(Arc::new(
                m.iter().map(|(k, v)| (Arc::from(k.as_str()), v.to_value())).collect::<BTreeMap<_, _>>(),
            )),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredIntent {
    pub slice: u64,
    pub index: u32,
    pub transition: usize,
    pub adapter: String,
    pub action: String,
    pub args: Vec<StoredValue>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum StoredPhase {
    InFlight {
        outstanding: Vec<(u64, u32)>,
        held: Vec<(u16, StoredValue)>,
        intents: Vec<StoredIntent>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        confirm: Vec<u16>,
    },
    Confirming {
        fields: Vec<u16>,
        until_ms: u64,
    },
    Backoff {
        until_ms: u64,
        faulted: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredPending {
    pub transition: usize,
    pub attempt: u32,
    pub phase: StoredPhase,
}

/// One instance's snapshot, as written after a slice.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub instance: String,
    /// The domain's name and its fields (name, type), so a changed program is noticed.
    pub domain: String,
    pub fields: Vec<(String, String)>,
    pub domain_index: usize,
    pub slice: u64,
    pub ticks: u64,
    pub now_ms: u64,
    pub seed: u64,
    pub status: String,
    pub state: Vec<StoredValue>,
    pub pending: Vec<StoredPending>,
    pub retry_attempts: Vec<(usize, u32)>,
    pub tick_cursor: Option<u32>,
    pub tick_ran: bool,
    pub ticks_since_input: u64,
    /// The last version applied from each versioned observation source.
    #[serde(default)]
    pub sources: Vec<(String, u64)>,
    /// Fields a watcher feeds; effects on them wait for a reading.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub watched: Vec<u16>,
}

fn status_str(s: Status) -> &'static str {
    s.as_str()
}

fn parse_status(s: &str) -> Option<Status> {
    Some(match s {
        "stable" => Status::Stable,
        "converging" => Status::Converging,
        "waiting" => Status::Waiting,
        "stuck" => Status::Stuck,
        "livelock" => Status::Livelock,
        "degraded" => Status::Degraded,
        _ => return None,
    })
}

impl SnapshotRecord {
    pub fn from_snapshot(s: &InstanceSnapshot, domain: &str, fields: &[(String, ved_check::Type)]) -> SnapshotRecord {
        let intent = |i: &Intent| StoredIntent {
            slice: i.id.slice,
            index: i.id.index,
            transition: i.transition,
            adapter: i.adapter.to_string(),
            action: i.action.to_string(),
            args: i.args.iter().map(StoredValue::from).collect(),
        };
        SnapshotRecord {
            instance: s.name.clone(),
            domain: domain.to_string(),
            fields: fields.iter().map(|(n, t)| (n.clone(), t.to_string())).collect(),
            domain_index: s.domain,
            slice: s.slice,
            ticks: s.ticks,
            now_ms: s.now_ms,
            seed: s.seed,
            status: status_str(s.status).to_string(),
            state: s.state.iter().map(StoredValue::from).collect(),
            pending: s
                .pending
                .iter()
                .map(|p| StoredPending {
                    transition: p.transition,
                    attempt: p.attempt,
                    phase: match &p.phase {
                        Phase::InFlight { outstanding, held, intents, confirm } => StoredPhase::InFlight {
                            outstanding: outstanding.iter().map(|id| (id.slice, id.index)).collect(),
                            held: held.iter().map(|(s, v)| (*s, StoredValue::from(v))).collect(),
                            intents: intents.iter().map(intent).collect(),
                            confirm: confirm.clone(),
                        },
                        Phase::Confirming { fields, until_ms } => {
                            StoredPhase::Confirming { fields: fields.clone(), until_ms: *until_ms }
                        }
                        Phase::Backoff { until_ms, faulted, error } => {
                            StoredPhase::Backoff { until_ms: *until_ms, faulted: *faulted, error: error.clone() }
                        }
                    },
                })
                .collect(),
            retry_attempts: s.retry_attempts.clone(),
            tick_cursor: s.tick_cursor,
            tick_ran: s.tick_ran,
            ticks_since_input: s.ticks_since_input,
            sources: s.sources.clone(),
            watched: s.watched.clone(),
        }
    }

    /// Back to a runtime snapshot; `None` if a field is out of range.
    pub fn to_snapshot(&self) -> Option<InstanceSnapshot> {
        let name: Arc<str> = Arc::from(self.instance.as_str());
        let id = |slice: u64, index: u32| IntentId { instance: name.clone(), slice, index };
        let pending = self
            .pending
            .iter()
            .map(|p| Pending {
                transition: p.transition,
                attempt: p.attempt,
                phase: match &p.phase {
                    StoredPhase::InFlight { outstanding, held, intents, confirm } => Phase::InFlight {
                        confirm: confirm.clone(),
                        outstanding: outstanding.iter().map(|(s, i)| id(*s, *i)).collect(),
                        held: held.iter().map(|(s, v)| (*s, v.to_value())).collect(),
                        intents: intents
                            .iter()
                            .map(|i| Intent {
                                id: id(i.slice, i.index),
                                transition: i.transition,
                                adapter: Arc::from(i.adapter.as_str()),
                                action: Arc::from(i.action.as_str()),
                                args: i.args.iter().map(StoredValue::to_value).collect(),
                            })
                            .collect(),
                    },
                    StoredPhase::Confirming { fields, until_ms } => {
                        Phase::Confirming { fields: fields.clone(), until_ms: *until_ms }
                    }
                    StoredPhase::Backoff { until_ms, faulted, error } => {
                        Phase::Backoff { until_ms: *until_ms, faulted: *faulted, error: error.clone() }
                    }
                },
            })
            .collect();
        Some(InstanceSnapshot {
            name: self.instance.clone(),
            domain: self.domain_index,
            state: self.state.iter().map(StoredValue::to_value).collect(),
            slice: self.slice,
            ticks: self.ticks,
            now_ms: self.now_ms,
            seed: self.seed,
            status: parse_status(&self.status)?,
            pending,
            retry_attempts: self.retry_attempts.clone(),
            tick_cursor: self.tick_cursor,
            tick_ran: self.tick_ran,
            ticks_since_input: self.ticks_since_input,
            sources: self.sources.clone(),
            watched: self.watched.clone(),
        })
    }
}

/// One entry of an instance's causal journal: what one slice did and why.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct JournalEntry {
    pub instance: String,
    pub slice: u64,
    pub at_ms: u64,
    /// `observe`, `transition`, `result` or `timer`.
    pub cause: String,
    /// The transition, intent id or source the cause names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Fields changed by the slice: name, new value (Ved syntax).
    pub changes: Vec<(String, String)>,
    /// Changes held until the slice's intents succeed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held: Vec<(String, String)>,
    /// Intents emitted: id, call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub intents: Vec<(String, String)>,
    /// Results this slice applied: id, ok, error.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub results: Vec<(String, bool, Option<String>)>,
    /// Lineage: the intent whose effect this observation reports, when the adapter says so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caused_by: Option<String>,
    /// For an observation: the values it reported, as JSON, so that `ved replay` can feed
    /// the same message again. (Before sources were journaled: only the values it changed.)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub observed: Vec<(String, serde_json::Value)>,
    /// For a relative observation (`add`): field, delta. `ved replay` feeds it as an `add`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub added: Vec<(String, i64)>,
    /// For an observation: where it came from: `stdin`, `api`, a watcher (`watch#1`), or the
    /// `source` the input named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Messages queued together (applied back to back, no tick between them) share a batch:
    /// the slice of the batch's first message. Absent for a message applied on its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<u64>,
    /// For a transition slice: the outside input (observation, result or timer) whose run
    /// of ticks it belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
    /// Observations that changed nothing on a stable instance (periodic resyncs), applied
    /// since the previous entry and not journaled. `ved replay` applies as many empty ones.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub quiet: u64,
    /// The status the instance reached after this slice, when it changed: `waiting`,
    /// `stuck`, `livelock`, `degraded` or `stable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Why, for `stuck`, `livelock` and `degraded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The outside input a transition slice descends from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Origin {
    pub slice: u64,
    /// `observe`, `result` or `timer`.
    pub cause: String,
    /// The intent id (result) or transition (timer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// For an observation: its source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "slice {} ({}", self.slice, self.cause)?;
        if let Some(d) = &self.detail {
            write!(f, " {d}")?;
        }
        if let Some(s) = &self.source {
            write!(f, " from {s}")?;
        }
        write!(f, ")")
    }
}

/// What the log holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    Snapshot(SnapshotRecord),
    Journal(JournalEntry),
    /// The instance's journal was trimmed to its last `keep` entries.
    Trim {
        instance: String,
        keep_from_slice: u64,
    },
    /// The source files of the program that wrote the store: name, text. `ved replay`
    /// runs them again.
    /// Ends a batch in the log. Recovery applies a batch's records only when its
    /// `Commit` is there too, so a batch is all or nothing even when a crash tears it.
    /// `at`: the log offset where the batch began.
    Commit {
        at: u64,
    },
    Program {
        files: Vec<(String, String)>,
        /// The retry policy in force: initial ms, factor, cap ms, breaker threshold.
        #[serde(default)]
        retry: Option<(u64, u32, u64, u32)>,
        /// How long a watcher has to confirm an effect (absent: the default).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        confirm_ms: Option<u64>,
    },
}
