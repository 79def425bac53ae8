//! `ved-runtime` runs domain instances. It is pure and deterministic: it does
//! no I/O, reads no clock and draws no randomness. Time enters as
//! [`Runtime::advance_time`], the outside world as observations and intent
//! results, and everything the runtime decides leaves as [`Event`]s, intents
//! included. Drivers (`ved run` on stdin or as the daemon, cluster nodes, the scenario runner) deliver
//! intents to adapters and feed the results back. The same initial state and
//! the same messages always give the same states and the same intents.
//!
//! Components: [`Instance`] (state, mailbox, scheduler), [`Runtime`] (many
//! instances of one program and a ready queue, so idle instances cost nothing
//! but their state), [`scenario`] (the `ved test` harness with simulated
//! adapters), [`backoff`] (retry delays with seeded jitter).

pub mod backoff;
pub mod event;
pub mod instance;
pub mod scenario;

pub use backoff::RetryPolicy;
pub use event::{Cause, Event, Intent, IntentId, Status};
pub use instance::{Instance, InstanceSnapshot, Limits, Message, Pending, Phase, Progress, RejectReason};

use rustc_hash::FxHashMap;
use std::collections::VecDeque;
use std::sync::Arc;
use ved_vm::{CompiledDomain, CompiledProgram, Fault, Value, Vm};

/// Why an instance could not be created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CreateError {
    DuplicateName(String),
    UnknownDomain(usize),
    /// A default value faulted (e.g. overflow in a constant expression).
    Default {
        field: String,
        fault: Fault,
    },
    BadValue(RejectReason),
}

impl std::fmt::Display for CreateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CreateError::DuplicateName(n) => write!(f, "an instance named `{n}` already exists"),
            CreateError::UnknownDomain(d) => write!(f, "no domain with index {d}"),
            CreateError::Default { field, fault } => {
                write!(f, "the default of `{field}` failed: {fault}")
            }
            CreateError::BadValue(r) => write!(f, "{r}"),
        }
    }
}

/// Why an observation or a result was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ObserveError {
    UnknownInstance(String),
    Rejected(RejectReason),
}

impl std::fmt::Display for ObserveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ObserveError::UnknownInstance(n) => write!(f, "no instance named `{n}`"),
            ObserveError::Rejected(r) => write!(f, "{r}"),
        }
    }
}

/// All the instances of one program.
pub struct Runtime {
    program: Arc<CompiledProgram>,
    vm: Vm,
    instances: Vec<Instance>,
    by_name: FxHashMap<Arc<str>, usize>,
    /// The runtime's clock; an instance catches up with it before it steps, so a tick does
    /// not visit instances that have nothing due.
    now_ms: u64,
    /// Every instance's earliest timer, by deadline: a tick visits only those due.
    timers: std::collections::BTreeSet<(u64, Arc<str>)>,
    /// Parallel to `instances`: the deadline each has in `timers`.
    armed: Vec<Option<u64>>,
    /// Instances with work to do, each at most once.
    ready: VecDeque<usize>,
    queued: Vec<bool>,
    pub policy: RetryPolicy,
    pub limits: Limits,
    seed: u64,
}

impl Runtime {
    /// A runtime with no instances.
    pub fn empty(program: Arc<CompiledProgram>, seed: u64) -> Runtime {
        Runtime {
            program,
            vm: Vm::new(),
            instances: Vec::new(),
            by_name: FxHashMap::default(),
            now_ms: 0,
            timers: std::collections::BTreeSet::new(),
            armed: Vec::new(),
            ready: VecDeque::new(),
            queued: Vec::new(),
            policy: RetryPolicy::default(),
            limits: Limits::default(),
            seed,
        }
    }

    /// Sets the scheduler's and the VM's bounds together.
    pub fn set_limits(&mut self, limits: Limits) {
        self.vm.set_size_max(limits.value_size_max);
        self.limits = limits;
    }

    /// Room for `n` more instances, made once (a restart knows how many it restores).
    pub fn reserve(&mut self, n: usize) {
        self.instances.reserve(n);
        self.queued.reserve(n);
        self.armed.reserve(n);
        self.by_name.reserve(n);
    }

    /// A runtime with one instance per domain, named after the domain.
    pub fn new(program: Arc<CompiledProgram>, seed: u64) -> Result<Runtime, CreateError> {
        let mut rt = Runtime::empty(program, seed);
        for d in 0..rt.program.domains.len() {
            let name = rt.program.domains[d].name.clone();
            rt.create_instance(&name, d, Vec::new())?;
        }
        Ok(rt)
    }

    pub fn program(&self) -> &Arc<CompiledProgram> {
        &self.program
    }

    /// Creates an instance of `domain` from its defaults, with `overrides` applied.
    pub fn create_instance(
        &mut self,
        name: &str,
        domain: usize,
        overrides: Vec<(u16, Value)>,
    ) -> Result<usize, CreateError> {
        if self.by_name.contains_key(name) {
            return Err(CreateError::DuplicateName(name.to_string()));
        }
        let program = self.program.clone();
        let dom = program.domains.get(domain).ok_or(CreateError::UnknownDomain(domain))?;
        let mut state = initial_state(&mut self.vm, dom)?;
        for (slot, v) in overrides {
            let Some((fname, ty)) = dom.fields.get(slot as usize) else {
                return Err(CreateError::BadValue(RejectReason::UnknownField { slot }));
            };
            if !v.type_matches(ty) {
                return Err(CreateError::BadValue(RejectReason::WrongType {
                    field: fname.clone(),
                    expected: ty.to_string(),
                    value: v.to_string(),
                }));
            }
            state[slot as usize] = v;
        }
        let idx = self.instances.len();
        let name: Arc<str> = name.into();
        self.instances.push(Instance::new(name.clone(), domain, state, self.seed));
        self.by_name.insert(name, idx);
        self.queued.push(false);
        self.armed.push(None);
        self.mark_ready(idx);
        Ok(idx)
    }

    pub fn instances(&self) -> &[Instance] {
        &self.instances
    }

    pub fn instance(&self, name: &str) -> Option<&Instance> {
        self.by_name.get(name).map(|&i| &self.instances[i])
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    pub fn domain_of(&self, instance: usize) -> &CompiledDomain {
        &self.program.domains[self.instances[instance].domain]
    }

    /// Instance `idx` beside its domain and the scheduler's parts, borrowed apart from each
    /// other rather than through a clone of the program's `Arc` (an atomic count per call,
    /// as much as a small step costs).
    fn parts(&mut self, idx: usize) -> (&mut Instance, &CompiledDomain, &mut Vm, &RetryPolicy, &Limits) {
        let Runtime { program, instances, vm, policy, limits, .. } = self;
        let inst = &mut instances[idx];
        let dom = &program.domains[inst.domain];
        (inst, dom, vm, policy, limits)
    }

    fn mark_ready(&mut self, idx: usize) {
        if !self.queued[idx] {
            self.queued[idx] = true;
            self.ready.push_back(idx);
        }
    }

    /// Queues an observation for the named instance.
    pub fn observe(&mut self, name: &str, writes: Vec<(u16, Value)>) -> Result<(), ObserveError> {
        let idx = self.index_of(name).ok_or_else(|| ObserveError::UnknownInstance(name.to_string()))?;
        let (inst, dom, _, _, limits) = self.parts(idx);
        inst.observe(dom, writes, limits).map_err(ObserveError::Rejected)?;
        self.mark_ready(idx);
        Ok(())
    }

    /// Queues an observation that carries its source's version (stale ones are dropped when applied).
    pub fn observe_versioned(
        &mut self,
        name: &str,
        writes: Vec<(u16, Value)>,
        source: &str,
        version: u64,
    ) -> Result<(), ObserveError> {
        let idx = self.index_of(name).ok_or_else(|| ObserveError::UnknownInstance(name.to_string()))?;
        let (inst, dom, _, _, limits) = self.parts(idx);
        inst.observe_versioned(dom, writes, source, version, limits).map_err(ObserveError::Rejected)?;
        self.mark_ready(idx);
        Ok(())
    }

    /// Declares which fields of an instance a watcher feeds (see [`Instance::set_watched`]).
    pub fn set_watched(&mut self, name: &str, fields: Vec<u16>) -> bool {
        match self.index_of(name) {
            Some(idx) => {
                self.instances[idx].set_watched(fields);
                true
            }
            None => false,
        }
    }

    /// Queues relative changes to `int` fields of the named instance.
    pub fn observe_add(&mut self, name: &str, deltas: Vec<(u16, i64)>) -> Result<(), ObserveError> {
        let idx = self.index_of(name).ok_or_else(|| ObserveError::UnknownInstance(name.to_string()))?;
        let (inst, dom, _, _, limits) = self.parts(idx);
        inst.observe_add(dom, deltas, limits).map_err(ObserveError::Rejected)?;
        self.mark_ready(idx);
        Ok(())
    }

    /// Queues an adapter's result for an intent.
    pub fn deliver(&mut self, id: &IntentId, ok: bool, error: Option<String>) -> Result<(), ObserveError> {
        let idx = self.index_of(&id.instance).ok_or_else(|| ObserveError::UnknownInstance(id.instance.to_string()))?;
        let _ = self.instances[idx].enqueue(Message::IntentResult { id: id.clone(), ok, error }, &self.limits);
        self.mark_ready(idx);
        Ok(())
    }

    /// Moves every instance's clock to `now_ms`, queuing retries that came due.
    pub fn advance_time(&mut self, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        // Only the instances with a timer due: the others catch up when they next step.
        let due: Vec<Arc<str>> =
            self.timers.iter().take_while(|(t, _)| *t <= self.now_ms).map(|(_, n)| n.clone()).collect();
        for name in due {
            let Some(&idx) = self.by_name.get(&name) else { continue };
            let before = self.instances[idx].mailbox_len();
            self.instances[idx].advance_time(self.now_ms);
            if self.instances[idx].mailbox_len() > before {
                self.mark_ready(idx);
            }
            self.rearm(idx);
        }
    }

    /// Moves instance `idx` to the runtime's clock (time passed while it had nothing due).
    fn catch_up(&mut self, idx: usize) {
        let inst = &mut self.instances[idx];
        inst.now_ms = inst.now_ms.max(self.now_ms);
    }

    /// Files instance `idx` under its earliest timer (after anything that may change it).
    fn rearm(&mut self, idx: usize) {
        let next = self.instances[idx].next_timer_ms();
        if self.armed[idx] == next {
            return;
        }
        let name = self.instances[idx].name.clone();
        if let Some(t) = self.armed[idx] {
            self.timers.remove(&(t, name.clone()));
        }
        if let Some(t) = next {
            self.timers.insert((t, name));
        }
        self.armed[idx] = next;
    }

    /// Whether any instance has something to do.
    pub fn has_work(&self) -> bool {
        !self.ready.is_empty()
    }

    /// The earliest retry timer of any instance.
    pub fn next_timer_ms(&self) -> Option<u64> {
        debug_assert_eq!(
            self.timers.first().map(|(t, _)| *t),
            self.instances.iter().filter_map(Instance::next_timer_ms).min(),
            "the timer index agrees with the instances"
        );
        self.timers.first().map(|(t, _)| *t)
    }

    /// Runs every instance that has work until it is idle.
    pub fn run(&mut self, out: &mut Vec<Event>) {
        while let Some(idx) = self.ready.pop_front() {
            self.queued[idx] = false;
            self.run_instance(idx, out);
        }
    }

    /// Runs every instance with work until it is idle, one step at a time, calling
    /// `after_step` with the instance and the events of each step that ran. A step
    /// commits at most one slice, so this is where a store snapshots every slice.
    pub fn run_stepwise(&mut self, after_step: impl FnMut(&Instance, &[Event])) {
        let mut after_step = after_step;
        self.run_stepwise_with(|_| {}, |inst, evs| after_step(inst, evs))
    }

    /// [`Runtime::run_stepwise`], with `before` called on each instance as it was before its
    /// first step of this run (a caller that keeps no copy of an idle instance's state takes
    /// one there, when the instance is about to change). `after_step` may take the events
    /// out of the vector it is given instead of copying them: each step starts with an
    /// empty one.
    pub fn run_stepwise_with(
        &mut self,
        mut before: impl FnMut(&Instance),
        mut after_step: impl FnMut(&Instance, &mut Vec<Event>),
    ) {
        let mut buf = Vec::new();
        while let Some(idx) = self.ready.pop_front() {
            self.queued[idx] = false;
            self.catch_up(idx);
            before(&self.instances[idx]);
            loop {
                buf.clear();
                let (inst, dom, vm, policy, limits) = self.parts(idx);
                let p = inst.step(dom, vm, policy, limits, &mut buf);
                if !buf.is_empty() {
                    after_step(&self.instances[idx], &mut buf);
                }
                if matches!(p, Progress::Idle(_)) {
                    break;
                }
            }
            self.rearm(idx);
        }
    }

    /// How many instances have work queued: a run steps each of them at least once.
    pub fn ready_len(&self) -> usize {
        self.ready.len()
    }

    /// Puts back an instance from a snapshot; it resumes at its next slice.
    pub fn restore_instance(&mut self, snap: InstanceSnapshot) -> Result<usize, CreateError> {
        if self.by_name.contains_key(snap.name.as_str()) {
            return Err(CreateError::DuplicateName(snap.name));
        }
        if snap.domain >= self.program.domains.len() {
            return Err(CreateError::UnknownDomain(snap.domain));
        }
        let idx = self.instances.len();
        // Only an instance mid-tick or converging has work to resume; one at rest would only
        // answer `Idle` (see `Instance::step`), and a fleet at rest restarts without a pass.
        let busy = snap.tick_cursor.is_some() || snap.status == Status::Converging;
        let inst = Instance::restore(snap);
        self.by_name.insert(inst.name.clone(), idx);
        self.instances.push(inst);
        self.queued.push(false);
        self.armed.push(None);
        self.rearm(idx);
        if busy {
            self.mark_ready(idx);
        }
        Ok(idx)
    }

    /// Takes an instance out (cluster mode hands it to another node); returns its last snapshot.
    pub fn remove_instance(&mut self, name: &str) -> Option<InstanceSnapshot> {
        let idx = self.by_name.remove(name)?;
        // The last instance takes its place, so a removal costs the same in a fleet of a
        // million as in a fleet of ten (a node hands instances over in batches).
        let last = self.instances.len() - 1;
        if let Some(t) = self.armed.swap_remove(idx) {
            self.timers.remove(&(t, self.instances[idx].name.clone()));
        }
        let inst = self.instances.swap_remove(idx);
        let was_queued = self.queued.swap_remove(idx);
        if idx != last {
            if let Some(v) = self.by_name.get_mut(&self.instances[idx].name) {
                *v = idx;
            }
        }
        if was_queued || (idx != last && self.queued[idx]) {
            self.ready.retain(|&i| i != idx);
            for i in self.ready.iter_mut() {
                if *i == last {
                    *i = idx;
                }
            }
        }
        debug_assert!(self.ready.iter().all(|&i| i < self.instances.len() && self.queued[i]));
        Some(inst.snapshot())
    }

    /// Runs one instance until it is idle.
    pub fn run_instance(&mut self, idx: usize, out: &mut Vec<Event>) -> Status {
        self.catch_up(idx);
        let (inst, dom, vm, policy, limits) = self.parts(idx);
        let status = inst.run(dom, vm, policy, limits, out);
        self.rearm(idx);
        status
    }

    /// Does one unit of work on one instance (see [`Instance::step`]).
    pub fn step_instance(&mut self, idx: usize, out: &mut Vec<Event>) -> Progress {
        self.catch_up(idx);
        let (inst, dom, vm, policy, limits) = self.parts(idx);
        let p = inst.step(dom, vm, policy, limits, out);
        self.rearm(idx);
        p
    }

    /// Evaluates every goal of an instance: name and truth (a faulting goal is false).
    pub fn goal_truths(&mut self, idx: usize) -> Vec<(String, bool)> {
        let program = self.program.clone();
        let inst = &self.instances[idx];
        program.domains[inst.domain]
            .goals
            .iter()
            .map(|g| (g.name.clone(), self.vm.eval_bool(&g.code, &inst.state).unwrap_or(false)))
            .collect()
    }
}

/// The initial state of a new instance of `dom`.
pub fn initial_state(vm: &mut Vm, dom: &CompiledDomain) -> Result<Vec<Value>, CreateError> {
    vm.initial_state(dom).map_err(|fault| {
        let field = dom
            .defaults
            .iter()
            .zip(&dom.fields)
            .find(|(code, _)| code.as_ref().is_some_and(|c| vm.eval(c, &[]).is_err()))
            .map(|(_, (name, _))| name.clone())
            .unwrap_or_default();
        CreateError::Default { field, fault }
    })
}
