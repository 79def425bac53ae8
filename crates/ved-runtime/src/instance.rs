//! One domain instance: its state, its mailbox and the scheduler that drives it.
//!
//! The loop, one unit at a time ([`Instance::step`]):
//! 1. a queued message is applied first, as one slice;
//! 2. otherwise, if every goal holds, the instance is stable and sleeps;
//! 3. otherwise a tick visits the transitions in declaration order and runs
//!    each enabled one as its own slice, stopping early once the goals hold;
//! 4. a tick that ran nothing ends in `waiting` (something pending) or `stuck`;
//!    a tick that leads back to a state already seen since the last outside
//!    input ends in `livelock`.
//!
//! Messages take priority over ticks so that the runtime always acts on the
//! freshest view of the world: two alerts queued together are both applied
//! before any transition reacts to them (seed 003's race).

use crate::backoff::{mix, RetryPolicy};
use crate::event::{Cause, Event, Intent, IntentId, Status};
use rustc_hash::FxHasher;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use ved_vm::{CompiledDomain, Value, Vm};

/// How many versioned observation sources an instance remembers. A client that names a
/// new `source` with every observation must not grow an instance without end; the least
/// recently used is forgotten first, and an observation from a forgotten source is applied
/// as if the source were new (nothing older from it is known to compare with).
pub const SOURCES_MAX: usize = 64;

/// Tunables of the scheduler. Every queue and loop has a bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Ticks allowed between two outside inputs before the instance is
    /// declared livelocked even though no state repeated (a diverging run).
    pub ticks_per_input_max: u64,
    /// Messages a mailbox holds; further observations are refused.
    pub mailbox_max: usize,
    /// Elements (or bytes) one value may hold, at most [`ved_vm::SIZE_MAX`]; a stored
    /// or emitted value may hold sixteen times as many through its nested values. A
    /// step over either bound faults.
    pub value_size_max: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { ticks_per_input_max: 10_000, mailbox_max: 65_536, value_size_max: ved_vm::SIZE_MAX }
    }
}

/// Everything that can change an instance arrives as one of these.
#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    /// New values for some fields, from an adapter's watcher or the API.
    Observe(Vec<(u16, Value)>),
    /// The same, from a source that numbers its readings: a reading older than the
    /// last one applied from that source is stale and is dropped.
    ObserveVersioned { writes: Vec<(u16, Value)>, source: Arc<str>, version: u64 },
    /// Relative changes to integer fields (`{"add": {"workers": -1}}`): events such as
    /// alerts rather than readings. Each delta applies to the value the field has when
    /// the message is applied, so two that arrive together both count.
    Add(Vec<(u16, i64)>),
    /// An adapter's verdict on an intent.
    IntentResult { id: IntentId, ok: bool, error: Option<String> },
    /// A retry timer of a transition came due.
    Timer { transition: usize },
}

/// Why a message was refused before it reached the mailbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RejectReason {
    MailboxFull {
        limit: usize,
    },
    UnknownField {
        slot: u16,
    },
    WrongType {
        field: String,
        expected: String,
        value: String,
    },
    /// A relative change to a field that is not an `int`.
    NotAnInt {
        field: String,
        ty: String,
    },
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RejectReason::MailboxFull { limit } => write!(f, "mailbox is full ({limit} messages)"),
            RejectReason::UnknownField { slot } => write!(f, "no field with slot {slot}"),
            RejectReason::WrongType { field, expected, value } => {
                write!(f, "field `{field}` is `{expected}`, but the observation gives {value}")
            }
            RejectReason::NotAnInt { field, ty } => {
                write!(f, "field `{field}` is `{ty}`; only `int` fields take a relative change (`add`)")
            }
        }
    }
}

/// A transition that cannot be fired now. (Field order is the stored order.)
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Pending {
    pub transition: usize,
    /// Failed attempts so far; reset when the transition succeeds.
    pub attempt: u32,
    pub phase: Phase,
}

/// Stored externally tagged: `{"InFlight": {..}}`, `{"Confirming": {..}}`, `{"Backoff": {..}}`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Phase {
    /// Its intents are out; `held` applies when all of `outstanding` succeed.
    /// `intents` keeps every intent of the step, so that undelivered ones can be
    /// delivered again (same id) after a restart.
    /// `confirm` are the watched fields the step wrote: their new values come from
    /// the watcher, never from the step's prediction (see `Confirming`).
    InFlight {
        #[serde(with = "crate::event::stored_id::pairs")]
        outstanding: Vec<IntentId>,
        held: Vec<(u16, Value)>,
        intents: Vec<Intent>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        confirm: Vec<u16>,
    },
    /// Its intents all succeeded, and it wrote watched fields: it stays pending
    /// until an observation of each of `fields` arrives, so that the status rests
    /// on what the watcher reports (in its canonical form) rather than on the
    /// step's guess. Past `until_ms` the effect counts as failed.
    Confirming { fields: Vec<u16>, until_ms: u64 },
    /// It failed or faulted; it may run again at `until_ms`. A step that
    /// `faulted` may also run again as soon as an observation changes the state,
    /// since a fault is a function of the state; a failed intent waits out its
    /// delay whatever happens, so a struggling API is not hammered. `error` is
    /// the last failure in words, quoted when the instance turns degraded.
    Backoff {
        until_ms: u64,
        faulted: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
}

impl Phase {
    /// In flight or confirming: its effect is not settled yet, so the fields it
    /// writes are held and the instance cannot be stable.
    pub fn is_active(&self) -> bool {
        matches!(self, Phase::InFlight { .. } | Phase::Confirming { .. })
    }
}

/// What one call to [`Instance::step`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Applied a message or ran a tick; call again.
    Ran,
    /// Nothing more to do until a message arrives (or a timer comes due).
    Idle(Status),
}

/// One instance of a domain.
#[derive(Clone, Debug)]
pub struct Instance {
    pub name: Arc<str>,
    /// Index of the domain in the compiled program.
    pub domain: usize,
    pub state: Vec<Value>,
    /// Slices committed so far; the next slice gets `slice + 1`.
    pub slice: u64,
    /// Ticks run so far.
    pub ticks: u64,
    pub now_ms: u64,
    /// Seeds the retry jitter.
    pub seed: u64,
    pub status: Status,
    /// Only transitions that are not idle appear here, so an idle instance
    /// carries no scheduler state beyond its fields.
    pub pending: Vec<Pending>,
    mailbox: VecDeque<Message>,
    /// Hashes of (state, pending) after each tick since the last outside input, sorted.
    /// A sorted vector, not a hash set: it is short while an instance converges (one
    /// entry a tick), smaller to hold, and free to drop once stable; at the
    /// ticks-per-input bound (10,000 by default) an insertion moves at most 80 KB.
    seen: Vec<u64>,
    /// What the goals were found to be on the state of slice `n`: `(n + 1) << 1 | holds`,
    /// 0 for not known. The state changes only in [`Instance::commit`], which numbers a
    /// new slice, so a slice number names a state and the goals need evaluating once per
    /// state, not at the end of every slice and again when the next step looks; a commit
    /// that changes no field a goal reads carries the verdict to its new number. A goal
    /// that faulted is not remembered: it is evaluated again, to report the fault.
    goals_known: u64,
    ticks_since_input: u64,
    /// Attempt counts of transitions whose retry timer fired, carried to their next run.
    retry_attempts: Vec<(usize, u32)>,
    /// Each transition's last error: a degraded reason quotes it even while a probe is in
    /// flight (the backoff phase that held it is gone by then).
    last_errors: Vec<(usize, String)>,
    /// The transition a tick in progress visits next; `None` between ticks.
    /// A tick runs one slice per [`Instance::step`], so a snapshot can follow every slice.
    tick_cursor: Option<u32>,
    /// Whether the tick in progress has run anything yet.
    tick_ran: bool,
    /// The last version applied from each versioned source, least recently used first;
    /// at most [`SOURCES_MAX`].
    pub sources: Vec<(Arc<str>, u64)>,
    /// Fields a watcher feeds (sorted). An effect on one counts only once a reading confirms it.
    /// A boxed slice, not a `Vec`, to keep an idle instance's header small.
    pub watched: Box<[u16]>,
}

/// Everything needed to resume an instance after a restart, as plain data.
/// The mailbox is not part of it: a message counts as received only once the
/// slice that applied it is durable. Livelock history restarts empty.
///
/// This is also the persisted shape: `ved-store`'s snapshot record is this struct,
/// flattened, plus the domain's name and fields. Field order is the stored order; the
/// serde attributes keep the JSON that stores have always held (`instance` and
/// `domain_index` keys, intent ids as `[slice, index]`, values tagged, the status as
/// its name). Decoding names every intent id after the instance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self")]
pub struct InstanceSnapshot {
    #[serde(rename = "instance")]
    pub name: String,
    #[serde(rename = "domain_index")]
    pub domain: usize,
    pub slice: u64,
    pub ticks: u64,
    pub now_ms: u64,
    pub seed: u64,
    pub status: Status,
    pub state: Vec<Value>,
    pub pending: Vec<Pending>,
    pub retry_attempts: Vec<(usize, u32)>,
    /// Each transition's last error, for the degraded reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last_errors: Vec<(usize, String)>,
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

impl Serialize for InstanceSnapshot {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        InstanceSnapshot::serialize(self, s)
    }
}

impl<'de> Deserialize<'de> for InstanceSnapshot {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<InstanceSnapshot, D::Error> {
        let mut s = InstanceSnapshot::deserialize(d)?;
        // Stored ids leave the instance out; it is this one.
        let name: Arc<str> = Arc::from(s.name.as_str());
        for p in &mut s.pending {
            if let Phase::InFlight { outstanding, intents, .. } = &mut p.phase {
                for id in outstanding.iter_mut().chain(intents.iter_mut().map(|i| &mut i.id)) {
                    id.instance = name.clone();
                }
            }
        }
        Ok(s)
    }
}

impl Instance {
    pub fn new(name: impl Into<Arc<str>>, domain: usize, state: Vec<Value>, seed: u64) -> Instance {
        let name = name.into();
        Instance {
            seed: mix(seed ^ fx(&name)),
            name,
            domain,
            state,
            slice: 0,
            ticks: 0,
            now_ms: 0,
            status: Status::Converging,
            pending: Vec::new(),
            mailbox: VecDeque::new(),
            seen: Vec::new(),
            goals_known: 0,
            ticks_since_input: 0,
            retry_attempts: Vec::new(),
            last_errors: Vec::new(),
            tick_cursor: None,
            tick_ran: false,
            sources: Vec::new(),
            watched: Box::default(),
        }
    }

    /// Declares which fields a watcher feeds. Effects on them are confirmed by readings.
    pub fn set_watched(&mut self, mut fields: Vec<u16>) {
        fields.sort_unstable();
        fields.dedup();
        self.watched = fields.into_boxed_slice();
    }

    /// Whether the transition that emitted `id` wrote a watched field, so that its
    /// success will wait for a reading of that field.
    pub fn awaits_confirmation(&self, id: &IntentId) -> bool {
        self.pending.iter().any(|p| {
            matches!(&p.phase, Phase::InFlight { outstanding, confirm, .. } if !confirm.is_empty() && outstanding.contains(id))
        })
    }

    /// Whether a transition's effect is still unsettled (in flight or confirming).
    pub fn has_active(&self) -> bool {
        self.pending.iter().any(|p| p.phase.is_active())
    }

    /// The instance as plain data, for the store.
    pub fn snapshot(&self) -> InstanceSnapshot {
        InstanceSnapshot {
            name: self.name.to_string(),
            domain: self.domain,
            state: self.state.clone(),
            slice: self.slice,
            ticks: self.ticks,
            now_ms: self.now_ms,
            seed: self.seed,
            status: self.status,
            pending: self.pending.clone(),
            retry_attempts: self.retry_attempts.clone(),
            last_errors: self.last_errors.clone(),
            tick_cursor: self.tick_cursor,
            tick_ran: self.tick_ran,
            ticks_since_input: self.ticks_since_input,
            sources: self.sources.iter().map(|(s, v)| (s.to_string(), *v)).collect(),
            watched: self.watched.to_vec(),
        }
    }

    /// Rebuilds an instance from a snapshot. It resumes at the next slice.
    pub fn restore(s: InstanceSnapshot) -> Instance {
        Instance {
            name: Arc::from(s.name.as_str()),
            domain: s.domain,
            state: s.state,
            slice: s.slice,
            ticks: s.ticks,
            now_ms: s.now_ms,
            seed: s.seed,
            status: s.status,
            pending: s.pending,
            mailbox: VecDeque::new(),
            seen: Vec::new(),
            goals_known: 0,
            ticks_since_input: s.ticks_since_input,
            retry_attempts: s.retry_attempts,
            last_errors: s.last_errors,
            tick_cursor: s.tick_cursor,
            tick_ran: s.tick_ran,
            // The most recently used sources are last: a snapshot from before the bound
            // existed may hold more, and keeps its newest.
            sources: {
                let skip = s.sources.len().saturating_sub(SOURCES_MAX);
                s.sources.into_iter().skip(skip).map(|(k, v)| (Arc::from(k.as_str()), v)).collect()
            },
            watched: s.watched.into_boxed_slice(),
        }
    }

    /// Finds a versioned source and makes it the most recently used (last); returns
    /// the last version applied from it.
    fn touch_source(&mut self, source: &str) -> Option<u64> {
        let at = self.sources.iter().position(|(s, _)| &**s == source)?;
        let entry = self.sources.remove(at);
        let version = entry.1;
        self.sources.push(entry);
        Some(version)
    }

    /// Adds a source not seen before, evicting the least recently used past [`SOURCES_MAX`].
    fn remember_source(&mut self, source: Arc<str>, version: u64) {
        if self.sources.len() >= SOURCES_MAX {
            self.sources.remove(0);
        }
        self.sources.push((source, version));
    }

    /// Intents recorded but not yet acknowledged, in emission order.
    pub fn undelivered(&self) -> Vec<Intent> {
        let mut out: Vec<Intent> = self
            .pending
            .iter()
            .flat_map(|p| match &p.phase {
                Phase::InFlight { outstanding, intents, .. } => {
                    intents.iter().filter(|i| outstanding.contains(&i.id)).cloned().collect()
                }
                Phase::Confirming { .. } | Phase::Backoff { .. } => Vec::new(),
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    pub fn mailbox_len(&self) -> usize {
        self.mailbox.len()
    }

    /// Heap bytes held by the scheduler beyond the state itself: mailbox,
    /// pending transitions, livelock hashes. Zero for an idle, stable instance.
    pub fn scheduler_heap_bytes(&self) -> usize {
        self.mailbox.capacity() * std::mem::size_of::<Message>()
            + self.pending.capacity() * std::mem::size_of::<Pending>()
            + self.seen.capacity() * std::mem::size_of::<u64>()
            + self.retry_attempts.capacity() * std::mem::size_of::<(usize, u32)>()
            + self.last_errors.iter().map(|(_, e)| std::mem::size_of::<(usize, String)>() + e.capacity()).sum::<usize>()
    }

    /// Queues an observation after checking its values against the field types.
    pub fn observe(
        &mut self,
        dom: &CompiledDomain,
        writes: Vec<(u16, Value)>,
        limits: &Limits,
    ) -> Result<(), RejectReason> {
        check_writes(dom, &writes)?;
        self.enqueue(Message::Observe(writes), limits)
    }

    /// Queues an observation that carries its source's version.
    pub fn observe_versioned(
        &mut self,
        dom: &CompiledDomain,
        writes: Vec<(u16, Value)>,
        source: &str,
        version: u64,
        limits: &Limits,
    ) -> Result<(), RejectReason> {
        check_writes(dom, &writes)?;
        self.enqueue(Message::ObserveVersioned { writes, source: Arc::from(source), version }, limits)
    }

    /// Queues relative changes to `int` fields.
    pub fn observe_add(
        &mut self,
        dom: &CompiledDomain,
        deltas: Vec<(u16, i64)>,
        limits: &Limits,
    ) -> Result<(), RejectReason> {
        for (slot, _) in &deltas {
            let Some((name, ty)) = dom.fields.get(*slot as usize) else {
                return Err(RejectReason::UnknownField { slot: *slot });
            };
            if *ty != ved_check::Type::Int {
                return Err(RejectReason::NotAnInt { field: name.clone(), ty: ty.to_string() });
            }
        }
        self.enqueue(Message::Add(deltas), limits)
    }

    /// Queues any message. Results and timers are never refused: they come
    /// from the runtime's own work, and dropping one would strand a transition.
    pub fn enqueue(&mut self, msg: Message, limits: &Limits) -> Result<(), RejectReason> {
        if matches!(msg, Message::Observe(_) | Message::ObserveVersioned { .. } | Message::Add(_))
            && self.mailbox.len() >= limits.mailbox_max
        {
            return Err(RejectReason::MailboxFull { limit: limits.mailbox_max });
        }
        self.mailbox.push_back(msg);
        if self.status != Status::Converging {
            self.status = Status::Converging;
        }
        Ok(())
    }

    /// Moves the clock to `now_ms` and queues a timer message for every retry
    /// that has come due.
    pub fn advance_time(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        let due: Vec<usize> = self
            .pending
            .iter()
            .filter_map(|p| match p.phase {
                Phase::Backoff { until_ms, .. } | Phase::Confirming { until_ms, .. } if until_ms <= self.now_ms => {
                    Some(p.transition)
                }
                _ => None,
            })
            .collect();
        for transition in due {
            // Never refused (see `enqueue`).
            let _ = self.enqueue(Message::Timer { transition }, &Limits::default());
        }
    }

    /// The earliest time a retry comes due, if any.
    pub fn next_timer_ms(&self) -> Option<u64> {
        self.pending
            .iter()
            .filter_map(|p| match p.phase {
                Phase::Backoff { until_ms, .. } | Phase::Confirming { until_ms, .. } => Some(until_ms),
                Phase::InFlight { .. } => None,
            })
            .min()
    }

    /// Runs until the instance is idle, reporting into `out`.
    pub fn run(
        &mut self,
        dom: &CompiledDomain,
        vm: &mut Vm,
        policy: &RetryPolicy,
        limits: &Limits,
        out: &mut Vec<Event>,
    ) -> Status {
        loop {
            if let Progress::Idle(s) = self.step(dom, vm, policy, limits, out) {
                return s;
            }
        }
    }

    /// Does one unit of work: one message, or one tick, or settles the status.
    pub fn step(
        &mut self,
        dom: &CompiledDomain,
        vm: &mut Vm,
        policy: &RetryPolicy,
        limits: &Limits,
        out: &mut Vec<Event>,
    ) -> Progress {
        // A tick in progress finishes before any message: a tick sees one state of the world.
        if let Some(next) = self.tick_cursor {
            return self.continue_tick(next as usize, dom, vm, policy, out);
        }
        if let Some(msg) = self.mailbox.pop_front() {
            self.apply_message(dom, policy, msg, out);
            return Progress::Ran;
        }
        if matches!(self.status, Status::Stable | Status::Stuck | Status::Livelock | Status::Waiting | Status::Degraded)
        {
            return Progress::Idle(self.status);
        }
        if self.goals_hold(dom, vm, out) {
            // Goals that hold while an effect is unsettled are a prediction, not a fact.
            let status = if self.has_active() { Status::Waiting } else { Status::Stable };
            return self.settle(status, None, out);
        }
        if self.ticks_since_input >= limits.ticks_per_input_max {
            let reason = format!(
                "the goals still do not hold after {} ticks without new input; the transitions do not converge",
                self.ticks_since_input
            );
            return self.settle(Status::Livelock, Some(reason), out);
        }
        self.ticks += 1;
        self.ticks_since_input += 1;
        self.tick_ran = false;
        out.push(Event::Tick { instance: self.name.clone(), tick: self.ticks });
        self.continue_tick(0, dom, vm, policy, out)
    }

    /// Visits transitions from `next` on until one of them does something (one
    /// slice, or a fault), or the tick ends.
    fn continue_tick(
        &mut self,
        next: usize,
        dom: &CompiledDomain,
        vm: &mut Vm,
        policy: &RetryPolicy,
        out: &mut Vec<Event>,
    ) -> Progress {
        let mut t = next;
        while let Some(tr) = dom.transitions.get(t) {
            t += 1;
            if self.is_pending(t - 1) || self.is_held_back(dom, tr) {
                continue;
            }
            if !self.run_transition(dom, t - 1, tr, vm, policy, out) {
                continue;
            }
            self.tick_ran = true;
            // Once the goals hold the tick stops: no further moves are wanted.
            self.tick_cursor = if self.goals_hold(dom, vm, &mut Vec::new()) { None } else { Some(t as u32) };
            return Progress::Ran;
        }
        self.tick_cursor = None;
        if !self.tick_ran {
            // A pass that found nothing to run is not a tick: it moved nothing.
            self.ticks -= 1;
            self.ticks_since_input -= 1;
            if matches!(out.last(), Some(Event::Tick { .. })) {
                out.pop();
            }
            return if self.pending.is_empty() {
                self.settle(Status::Stuck, Some("no transition is enabled and the goals do not hold".into()), out)
            } else {
                // Past the breaker's threshold the instance is degraded: its retries only probe.
                match self.pending.iter().find(|p| p.attempt >= policy.breaker_after) {
                    Some(p) => {
                        let name = dom.transitions.get(p.transition).map(|t| t.name.as_str()).unwrap_or("?");
                        let last = match &p.phase {
                            Phase::Backoff { error: Some(e), .. } => format!(" (last error: {e})"),
                            _ => self
                                .last_errors
                                .iter()
                                .find(|(t, _)| *t == p.transition)
                                .map(|(_, e)| format!(" (last error: {e})"))
                                .unwrap_or_default(),
                        };
                        let reason = format!(
                            "{name} failed {} times in a row{last}; probing every {} ms until it succeeds",
                            p.attempt, policy.cap_ms
                        );
                        self.settle(Status::Degraded, Some(reason), out)
                    }
                    None => self.settle(Status::Waiting, None, out),
                }
            };
        }
        let print = self.fingerprint();
        let fresh = match self.seen.binary_search(&print) {
            Ok(_) => false,
            Err(at) => {
                self.seen.insert(at, print);
                true
            }
        };
        if !fresh {
            let reason = format!(
                "tick {} returned to a state already seen since the last input, without reaching the goals",
                self.ticks
            );
            return self.settle(Status::Livelock, Some(reason), out);
        }
        Progress::Ran
    }

    fn settle(&mut self, status: Status, reason: Option<String>, out: &mut Vec<Event>) -> Progress {
        // Never stable while an effect is unsettled, nor mid-tick.
        debug_assert!(
            status != Status::Stable || (!self.has_active() && self.tick_cursor.is_none()),
            "`{}` settles stable with an active pending transition or mid-tick: {:?}",
            self.name,
            self.pending
        );
        self.status = status;
        if status == Status::Stable {
            // A stable instance costs only its state: release what converging used.
            self.seen = Vec::new();
            if self.pending.is_empty() {
                self.pending = Vec::new();
            }
            if self.mailbox.is_empty() {
                self.mailbox = VecDeque::new();
            }
            if self.retry_attempts.is_empty() {
                self.retry_attempts = Vec::new();
            }
        }
        out.push(Event::Status { instance: self.name.clone(), status, reason });
        Progress::Idle(status)
    }

    /// A hash of what the scheduler's next move depends on.
    fn fingerprint(&self) -> u64 {
        let mut h = FxHasher::default();
        self.state.hash(&mut h);
        for p in &self.pending {
            p.transition.hash(&mut h);
            std::mem::discriminant(&p.phase).hash(&mut h);
            if let Phase::InFlight { held, .. } = &p.phase {
                held.hash(&mut h);
            }
        }
        h.finish()
    }

    /// Whether every goal holds. A goal that faults does not hold; the fault is reported.
    pub fn goals_hold(&mut self, dom: &CompiledDomain, vm: &mut Vm, out: &mut Vec<Event>) -> bool {
        let key = (self.slice + 1) << 1;
        if self.goals_known & !1 == key {
            let holds = self.goals_known & 1 == 1;
            // The remembered verdict is the one a fresh evaluation gives (checked in debug
            // builds, so the whole test suite holds the cache to it).
            debug_assert_eq!(
                holds,
                dom.goals.iter().all(|g| matches!(vm.eval_bool(&g.code, &self.state), Ok(true))),
                "`{}` slice {}: a remembered goal verdict went stale",
                self.name,
                self.slice
            );
            return holds;
        }
        for (i, g) in dom.goals.iter().enumerate() {
            match vm.eval_bool(&g.code, &self.state) {
                Ok(true) => {}
                Ok(false) => {
                    self.goals_known = key;
                    return false;
                }
                Err(fault) => {
                    self.goals_known = 0;
                    out.push(Event::Fault { instance: self.name.clone(), transition: None, goal: Some(i), fault });
                    return false;
                }
            }
        }
        self.goals_known = key | 1;
        true
    }

    fn next_slice(&mut self) -> u64 {
        self.slice += 1;
        self.slice
    }

    /// Commits one slice: applies `changes`, records `held` (writes waiting on intents).
    ///
    /// Invariants, checked in debug builds (the test suite): slice numbers strictly increase;
    /// every change and held write is to a field of the domain, with a value of the field's
    /// type; the state keeps one value per field.
    fn commit(
        &mut self,
        dom: &CompiledDomain,
        cause: Cause,
        changes: Vec<(u16, Value)>,
        held: Vec<(u16, Value)>,
        out: &mut Vec<Event>,
    ) -> u64 {
        #[cfg(debug_assertions)]
        {
            debug_assert_eq!(self.state.len(), dom.fields.len(), "`{}`: one value per field", self.name);
            for (slot, v) in changes.iter().chain(&held) {
                let field = dom.fields.get(usize::from(*slot));
                debug_assert!(
                    field.is_some_and(|(_, ty)| v.type_matches(ty)),
                    "`{}` slice {}: a write of {v} to slot {slot}, which is {field:?}",
                    self.name,
                    self.slice + 1
                );
            }
        }
        let before = self.slice;
        let slice = self.next_slice();
        debug_assert!(slice > before, "`{}`: slice numbers strictly increase ({before} -> {slice})", self.name);
        // The changes that change something, kept in the vector they came in.
        let mut applied = changes;
        applied.retain(|(slot, v)| {
            let cell = &mut self.state[*slot as usize];
            let changed = cell != v;
            if changed {
                *cell = v.clone();
            }
            changed
        });
        // A slice that changes no field a goal reads (held writes only, a result that moved
        // nothing, a write to a field no goal looks at) leaves the goals' verdict standing:
        // it carries over to the new slice number instead of being evaluated again.
        if self.goals_known != 0
            && self.goals_known & !1 == (before + 1) << 1
            && applied.iter().all(|(s, _)| dom.goal_reads.binary_search(s).is_err())
        {
            self.goals_known = (slice + 1) << 1 | (self.goals_known & 1);
        }
        out.push(Event::Slice { instance: self.name.clone(), slice, cause, changes: applied, held });
        slice
    }

    fn apply_message(&mut self, dom: &CompiledDomain, policy: &RetryPolicy, msg: Message, out: &mut Vec<Event>) {
        match msg {
            Message::ObserveVersioned { writes, source, version } => {
                let last = self.touch_source(&source);
                if let Some(last) = last.filter(|l| version < *l) {
                    out.push(Event::Stale { instance: self.name.clone(), source, version, last });
                    return;
                }
                match self.sources.last_mut() {
                    Some(entry) if last.is_some() => entry.1 = version,
                    _ => self.remember_source(source, version),
                }
                self.apply_message(dom, policy, Message::Observe(writes), out);
            }
            Message::Observe(writes) => {
                self.outside_input();
                // An observation that brings news about a field is newer truth than a step's
                // prediction of it: the held write is superseded, so an acknowledgement that
                // arrives later cannot overwrite what was observed meanwhile. A report that
                // merely repeats the committed value says nothing about the intent in flight
                // (the world has not caught up yet), so the prediction stands.
                // (Asked of the held writes directly: an observation with nothing in flight, the
                // common case, builds no list of news.)
                let state = &self.state;
                let is_news =
                    |slot: u16| writes.iter().any(|(s, v)| *s == slot && state.get(usize::from(*s)) != Some(v));
                for p in &mut self.pending {
                    if let Phase::InFlight { held, .. } = &mut p.phase {
                        held.retain(|(slot, _)| !is_news(*slot));
                    }
                }
                // A reading of a watched field confirms the effects waiting on it, whatever
                // its value: from here on the state says what the world says.
                let mut confirmed = Vec::new();
                for p in &mut self.pending {
                    if let Phase::Confirming { fields, .. } = &mut p.phase {
                        fields.retain(|f| !writes.iter().any(|(slot, _)| slot == f));
                        if fields.is_empty() {
                            confirmed.push(p.transition);
                        }
                    }
                }
                self.pending.retain(|p| !confirmed.contains(&p.transition));
                let slice = self.commit(dom, Cause::Observe, writes, Vec::new(), out);
                let changed = matches!(out.last(), Some(Event::Slice { slice: s, changes, .. }) if *s == slice && !changes.is_empty());
                if changed {
                    self.release_faulted();
                }
            }
            Message::Add(deltas) => {
                // An alert is an event in the world, independent of the effects in flight: it
                // shifts the committed value *and* every held prediction of the field, so that
                // `Start` in flight (held `workers = 5`) plus a second death gives 4 when the
                // start succeeds, not 5 (a lost update), and not a discarded prediction either
                // (which would start one worker too many).
                let overflow =
                    || ved_vm::Fault { kind: ved_vm::FaultKind::Overflow { op: "add" }, span: Default::default() };
                let shift = |v: &Value, d: i64| match v {
                    Value::Int(old) => old.checked_add(d).map(Value::Int),
                    _ => None,
                };
                let mut writes = Vec::with_capacity(deltas.len());
                for (slot, d) in &deltas {
                    let Some(new) = self.state.get(usize::from(*slot)).and_then(|v| shift(v, *d)) else {
                        // Overflow is an error, never a wrap: the whole message is refused.
                        out.push(Event::Fault {
                            instance: self.name.clone(),
                            transition: None,
                            goal: None,
                            fault: overflow(),
                        });
                        return;
                    };
                    writes.push((*slot, new));
                }
                let mut shifted = self.pending.clone();
                for p in &mut shifted {
                    if let Phase::InFlight { held, .. } = &mut p.phase {
                        for (slot, v) in held.iter_mut() {
                            if let Some((_, d)) = deltas.iter().find(|(s, _)| s == slot) {
                                let Some(new) = shift(v, *d) else {
                                    out.push(Event::Fault {
                                        instance: self.name.clone(),
                                        transition: None,
                                        goal: None,
                                        fault: overflow(),
                                    });
                                    return;
                                };
                                *v = new;
                            }
                        }
                    }
                }
                self.pending = shifted;
                self.outside_input();
                self.commit(dom, Cause::Observe, writes, Vec::new(), out);
                self.release_faulted();
            }
            Message::Timer { transition } => {
                let Some(pos) = self.pending.iter().position(|p| p.transition == transition) else {
                    return;
                };
                if let Phase::Confirming { fields, until_ms } = &self.pending[pos].phase {
                    if *until_ms > self.now_ms {
                        return;
                    }
                    // No reading came: the effect is unconfirmed, which counts as a failure.
                    let names: Vec<String> = fields
                        .iter()
                        .map(|f| dom.fields.get(usize::from(*f)).map_or(format!("#{f}"), |(n, _)| format!("`{n}`")))
                        .collect();
                    let error = format!(
                        "no reading of field(s) {} confirmed the effect within {} ms",
                        names.join(", "),
                        policy.confirm_ms
                    );
                    let attempt = self.pending[pos].attempt + 1;
                    self.pending.remove(pos);
                    self.outside_input();
                    self.commit(dom, Cause::Timer(transition), Vec::new(), Vec::new(), out);
                    self.back_off(transition, attempt, false, Some(error), policy, out);
                    return;
                }
                if !matches!(self.pending[pos].phase, Phase::Backoff { until_ms, .. } if until_ms <= self.now_ms) {
                    return;
                }
                // The transition becomes eligible again; it keeps its attempt count
                // until it succeeds, so a second failure backs off further.
                let attempt = self.pending[pos].attempt;
                self.pending.remove(pos);
                self.retry_attempts.push((transition, attempt));
                self.outside_input();
                self.commit(dom, Cause::Timer(transition), Vec::new(), Vec::new(), out);
            }
            Message::IntentResult { id, ok, error } => {
                let Some(pos) = self.pending.iter().position(|p| match &p.phase {
                    Phase::InFlight { outstanding, .. } => outstanding.contains(&id),
                    Phase::Confirming { .. } | Phase::Backoff { .. } => false,
                }) else {
                    // A duplicate or late result (its transition already failed): nothing to do.
                    out.push(Event::Result { instance: self.name.clone(), id, ok, error });
                    return;
                };
                out.push(Event::Result { instance: self.name.clone(), id: id.clone(), ok, error: error.clone() });
                if ok {
                    let done = match &mut self.pending[pos].phase {
                        Phase::InFlight { outstanding, .. } => {
                            outstanding.retain(|o| *o != id);
                            outstanding.is_empty()
                        }
                        Phase::Confirming { .. } | Phase::Backoff { .. } => false,
                    };
                    if done {
                        let p = self.pending.remove(pos);
                        // Its failures are behind it: an idle instance keeps no error text.
                        self.last_errors.retain(|(t, _)| *t != p.transition);
                        let (held, confirm) = match p.phase {
                            Phase::InFlight { held, confirm, .. } => (held, confirm),
                            Phase::Confirming { .. } | Phase::Backoff { .. } => (Vec::new(), Vec::new()),
                        };
                        // Watched fields take their value from the watcher's next reading,
                        // never from the step's prediction; the rest applies now.
                        let applied: Vec<(u16, Value)> =
                            held.into_iter().filter(|(slot, _)| !confirm.contains(slot)).collect();
                        self.commit(dom, Cause::Result(id), applied, Vec::new(), out);
                        if !confirm.is_empty() {
                            let until_ms = self.now_ms.saturating_add(policy.confirm_ms);
                            self.pending.push(Pending {
                                transition: p.transition,
                                phase: Phase::Confirming { fields: confirm, until_ms },
                                attempt: p.attempt,
                            });
                        }
                    } else {
                        self.commit(dom, Cause::Result(id), Vec::new(), Vec::new(), out);
                    }
                } else {
                    // The held changes are dropped; the transition backs off and will be
                    // re-evaluated on the state as it is then.
                    let transition = self.pending[pos].transition;
                    let attempt = self.pending[pos].attempt + 1;
                    self.pending.remove(pos);
                    self.commit(dom, Cause::Result(id), Vec::new(), Vec::new(), out);
                    self.back_off(transition, attempt, false, error, policy, out);
                }
            }
        }
    }

    /// Faulted steps become eligible again once the state they faulted on has changed.
    fn release_faulted(&mut self) {
        let mut i = 0;
        while i < self.pending.len() {
            if matches!(self.pending[i].phase, Phase::Backoff { faulted: true, .. }) {
                let p = self.pending.remove(i);
                self.retry_attempts.push((p.transition, p.attempt));
            } else {
                i += 1;
            }
        }
    }

    /// An observation or a timer: the world moved, so livelock detection starts afresh.
    fn outside_input(&mut self) {
        self.seen.clear();
        self.ticks_since_input = 0;
    }

    fn back_off(
        &mut self,
        transition: usize,
        attempt: u32,
        faulted: bool,
        error: Option<String>,
        policy: &RetryPolicy,
        out: &mut Vec<Event>,
    ) {
        let at_ms = self.now_ms.saturating_add(policy.delay_ms(self.seed, transition, attempt));
        if let Some(e) = &error {
            match self.last_errors.iter_mut().find(|(t, _)| *t == transition) {
                Some(slot) => slot.1 = e.clone(),
                None => self.last_errors.push((transition, e.clone())),
            }
        }
        self.pending.push(Pending { transition, phase: Phase::Backoff { until_ms: at_ms, faulted, error }, attempt });
        out.push(Event::Retry { instance: self.name.clone(), transition, attempt, at_ms });
    }

    fn is_pending(&self, transition: usize) -> bool {
        self.pending.iter().any(|p| p.transition == transition)
    }

    /// Conflicting transitions serialize: a step that reads or writes a field that an
    /// unsettled transition writes waits until that one ends, so that two held writes
    /// computed from the same old state can never overwrite each other.
    fn is_held_back(&self, dom: &CompiledDomain, tr: &ved_vm::CompiledTransition) -> bool {
        self.pending
            .iter()
            .filter(|p| p.phase.is_active())
            .any(|p| dom.transitions.get(p.transition).is_some_and(|other| tr.conflicts_with(other)))
    }

    /// Runs one transition's step. Returns whether it did something: committed,
    /// went pending on its intents, or faulted.
    fn run_transition(
        &mut self,
        dom: &CompiledDomain,
        t: usize,
        tr: &ved_vm::CompiledTransition,
        vm: &mut Vm,
        policy: &RetryPolicy,
        out: &mut Vec<Event>,
    ) -> bool {
        // The dry run and the real run are the same deterministic computation on a
        // copy-on-write view, so the transition runs once: a no-op outcome means
        // "not enabled" and is discarded.
        match vm.run_step(&tr.code, &self.state) {
            Err(fault) => {
                let attempt = self.take_retry_attempt(t);
                let error = Some(fault.to_string());
                out.push(Event::Fault { instance: self.name.clone(), transition: Some(t), goal: None, fault });
                // Aborted: the state is untouched. Back off so a faulting step is not
                // retried in a tight loop.
                self.back_off(t, attempt + 1, true, error, policy, out);
                true
            }
            Ok(outcome) if outcome.is_noop() => {
                // Not enabled: whatever failed before no longer needs doing.
                self.take_retry_attempt(t);
                false
            }
            Ok(outcome) => {
                let attempt = self.take_retry_attempt(t);
                self.fire(dom, t, tr.optimistic, attempt, outcome, out);
                true
            }
        }
    }

    fn take_retry_attempt(&mut self, transition: usize) -> u32 {
        match self.retry_attempts.iter().position(|(t, _)| *t == transition) {
            Some(i) => self.retry_attempts.swap_remove(i).1,
            None => 0,
        }
    }

    fn fire(
        &mut self,
        dom: &CompiledDomain,
        t: usize,
        optimistic: bool,
        attempt: u32,
        outcome: ved_vm::StepOutcome,
        out: &mut Vec<Event>,
    ) {
        if outcome.intents.is_empty() {
            self.commit(dom, Cause::Transition(t), outcome.writes, Vec::new(), out);
            return;
        }
        let confirm: Vec<u16> = outcome
            .writes
            .iter()
            .map(|(slot, _)| *slot)
            .filter(|slot| self.watched.binary_search(slot).is_ok())
            .collect();
        let (changes, held) = if optimistic { (outcome.writes, Vec::new()) } else { (Vec::new(), outcome.writes) };
        let slice = self.commit(dom, Cause::Transition(t), changes, held.clone(), out);
        let mut outstanding = Vec::with_capacity(outcome.intents.len());
        let mut intents = Vec::with_capacity(outcome.intents.len());
        for (index, i) in outcome.intents.into_iter().enumerate() {
            let id = IntentId { instance: self.name.clone(), slice, index: index as u32 };
            outstanding.push(id.clone());
            let intent = Intent { id, transition: t, adapter: i.adapter, action: i.action, args: i.args.into() };
            intents.push(intent.clone());
            out.push(Event::Intent(intent));
        }
        self.pending.push(Pending {
            transition: t,
            phase: Phase::InFlight { outstanding, held, intents, confirm },
            attempt,
        });
    }
}

/// Checks an observation's values against the field types.
fn check_writes(dom: &CompiledDomain, writes: &[(u16, Value)]) -> Result<(), RejectReason> {
    for (slot, v) in writes {
        let Some((name, ty)) = dom.fields.get(*slot as usize) else {
            return Err(RejectReason::UnknownField { slot: *slot });
        };
        if !v.type_matches(ty) {
            return Err(RejectReason::WrongType {
                field: name.clone(),
                expected: ty.to_string(),
                value: v.to_string(),
            });
        }
    }
    Ok(())
}

fn fx(s: &str) -> u64 {
    let mut h = FxHasher::default();
    s.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod sources {
    use super::*;

    fn versioned(i: &mut Instance, dom: &CompiledDomain, source: &str, version: u64, workers: i64) -> Vec<Event> {
        let mut out = Vec::new();
        let msg =
            Message::ObserveVersioned { writes: vec![(0, Value::Int(workers))], source: Arc::from(source), version };
        i.apply_message(dom, &RetryPolicy::default(), msg, &mut out);
        out
    }

    fn stale(out: &[Event]) -> bool {
        out.iter().any(|e| matches!(e, Event::Stale { .. }))
    }

    #[test]
    fn versioned_sources_are_bounded_and_the_least_recently_used_goes_first() {
        let dom = invariants_pool();
        let mut i = Instance::new("p", 0, vec![Value::Int(0)], 0);
        // `keep` is used again and again, so it survives a flood of one-off sources.
        versioned(&mut i, &dom, "keep", 10, 1);
        for n in 0..(SOURCES_MAX * 3) {
            versioned(&mut i, &dom, &format!("once-{n}"), 1, 1);
            if n % 8 == 0 {
                assert!(!stale(&versioned(&mut i, &dom, "keep", 10, 1)));
            }
        }
        assert_eq!(i.sources.len(), SOURCES_MAX);
        // A source kept still refuses an older version, and takes a newer one.
        assert!(stale(&versioned(&mut i, &dom, "keep", 9, 2)));
        assert!(!stale(&versioned(&mut i, &dom, "keep", 11, 2)));
        assert_eq!(i.sources.iter().find(|(s, _)| &**s == "keep").map(|(_, v)| *v), Some(11));
        // The oldest one-off sources were evicted: their history is forgotten.
        assert!(!i.sources.iter().any(|(s, _)| &**s == "once-0"));
        assert!(!stale(&versioned(&mut i, &dom, "once-0", 0, 3)));
        assert_eq!(i.sources.len(), SOURCES_MAX);
        // The bound and the order survive a snapshot.
        let back = Instance::restore(i.snapshot());
        assert_eq!(back.sources, i.sources);
    }

    #[test]
    fn a_snapshot_with_too_many_sources_keeps_the_most_recent() {
        let mut snap = Instance::new("p", 0, vec![Value::Int(0)], 0).snapshot();
        snap.sources = (0..(SOURCES_MAX as u64 + 5)).map(|n| (format!("s{n}"), n)).collect();
        let i = Instance::restore(snap);
        assert_eq!(i.sources.len(), SOURCES_MAX);
        assert_eq!(&*i.sources[0].0, "s5");
    }

    fn invariants_pool() -> CompiledDomain {
        let src = "domain WorkerPool {\nstate {\nworkers: int\n}\n}\ngoal workers == 5\n";
        let mut sources = ved_syntax::SourceMap::new();
        let id = sources.add("t.ved", src);
        let ast = ved_syntax::parse_file(id, src).unwrap();
        let program = ved_check::check_program(&[ast]).program.unwrap();
        ved_vm::compile_program(&program).domains[0].clone()
    }
}

/// The invariants `commit` and `settle` check in debug builds fire when broken.
#[cfg(all(test, debug_assertions))]
mod invariants {
    use super::*;

    fn pool() -> CompiledDomain {
        let src = "domain WorkerPool {\nstate {\nworkers: int\n}\n}\ngoal workers == 5\n";
        let mut sources = ved_syntax::SourceMap::new();
        let id = sources.add("t.ved", src);
        let ast = ved_syntax::parse_file(id, src).unwrap();
        let program = ved_check::check_program(&[ast]).program.unwrap();
        ved_vm::compile_program(&program).domains[0].clone()
    }

    #[test]
    fn a_well_typed_commit_passes() {
        let dom = pool();
        let mut i = Instance::new("p", 0, vec![Value::Int(0)], 0);
        i.commit(&dom, Cause::Observe, vec![(0, Value::Int(5))], Vec::new(), &mut Vec::new());
        assert_eq!((i.slice, i.state[0].clone()), (1, Value::Int(5)));
    }

    #[test]
    #[should_panic(expected = "a write of")]
    fn a_write_of_the_wrong_type_is_caught() {
        let dom = pool();
        let mut i = Instance::new("p", 0, vec![Value::Int(0)], 0);
        i.commit(&dom, Cause::Observe, vec![(0, Value::Bool(true))], Vec::new(), &mut Vec::new());
    }

    #[test]
    #[should_panic(expected = "a write of")]
    fn a_held_write_to_no_field_is_caught() {
        let dom = pool();
        let mut i = Instance::new("p", 0, vec![Value::Int(0)], 0);
        i.commit(&dom, Cause::Observe, Vec::new(), vec![(3, Value::Int(1))], &mut Vec::new());
    }

    #[test]
    #[should_panic(expected = "settles stable with an active pending")]
    fn stable_with_an_effect_in_flight_is_caught() {
        let mut i = Instance::new("p", 0, vec![Value::Int(5)], 0);
        i.pending.push(Pending {
            transition: 0,
            phase: Phase::Confirming { fields: vec![0], until_ms: 10 },
            attempt: 0,
        });
        i.settle(Status::Stable, None, &mut Vec::new());
    }

    #[test]
    fn a_goal_verdict_carries_over_only_a_slice_that_misses_the_goal_fields() {
        let src = "domain D {\nstate {\nworkers: int\nnote: string\n}\n}\ngoal workers == 5\n";
        let mut sources = ved_syntax::SourceMap::new();
        let id = sources.add("t.ved", src);
        let ast = ved_syntax::parse_file(id, src).unwrap();
        let program = ved_check::check_program(&[ast]).program.unwrap();
        let dom = ved_vm::compile_program(&program).domains[0].clone();
        assert_eq!(dom.goal_reads, vec![0]);
        let (mut vm, mut out) = (Vm::new(), Vec::new());
        let mut i = Instance::new("p", 0, vec![Value::Int(5), Value::Str("".into())], 0);
        assert!(i.goals_hold(&dom, &mut vm, &mut out));
        // A change to a field no goal reads: the verdict is carried to slice 1.
        i.commit(&dom, Cause::Observe, vec![(1, Value::Str("x".into()))], Vec::new(), &mut out);
        assert_eq!(i.goals_known, (1 + 1) << 1 | 1);
        // A change to the goal's field: forgotten, and evaluated afresh.
        i.commit(&dom, Cause::Observe, vec![(0, Value::Int(4))], Vec::new(), &mut out);
        assert_eq!(i.goals_known, (1 + 1) << 1 | 1, "still the verdict of slice 1, not carried to 2");
        assert!(!i.goals_hold(&dom, &mut vm, &mut out));
    }

    #[test]
    #[should_panic(expected = "a remembered goal verdict went stale")]
    fn a_stale_goal_verdict_is_caught() {
        let dom = pool();
        let mut i = Instance::new("p", 0, vec![Value::Int(0)], 0);
        // Remember "holds" for slice 0, which is false: `workers` is 0.
        i.goals_known = 1 << 1 | 1;
        i.goals_hold(&dom, &mut Vm::new(), &mut Vec::new());
    }
}
