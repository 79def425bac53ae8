//! Runs a checked `scenario` block against one instance with simulated
//! adapters: every intent succeeds unless a `fail` step says otherwise, and its
//! result arrives as soon as the tick that emitted it ends. After `hold intents`
//! results arrive only when an `answer` step says so, in the order it picks, so a
//! scenario can interleave results with observations. Time moves only on
//! `advance`. Everything is deterministic for a given seed.

use crate::event::{Cause, Event, Status};
use crate::instance::{Instance, Limits, Progress};
use crate::{initial_state, RetryPolicy};
use rustc_hash::FxHashMap;
use std::fmt::Write as _;
use ved_check::hir;
use ved_syntax::Span;
use ved_vm::{compile_expr, CompiledDomain, CompiledProgram, Value, Vm};

/// The outcome of one scenario.
#[derive(Clone, Debug)]
pub struct ScenarioReport {
    pub name: String,
    pub failure: Option<Failure>,
    /// Human-readable account of every slice, tick, intent and status, in order.
    pub trace: Vec<String>,
    /// Every event the runtime produced, for determinism checks.
    pub events: Vec<Event>,
    /// The state after every step of the scenario, for determinism checks.
    pub states: Vec<Vec<Value>>,
}

impl ScenarioReport {
    pub fn passed(&self) -> bool {
        self.failure.is_none()
    }
}

/// Why a scenario failed: the step, what it wanted and what it found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub span: Span,
    pub message: String,
    pub expected: String,
    pub actual: String,
}

/// Steps the harness takes between two scenario lines before it declares the
/// scenario hung; far above anything a terminating program needs.
const SETTLE_STEPS_MAX: usize = 1_000_000;
/// Retry timers one `advance` may fire.
const TIMERS_PER_ADVANCE_MAX: usize = 100_000;

struct Harness<'a> {
    dom: &'a CompiledDomain,
    vm: Vm,
    inst: Instance,
    policy: RetryPolicy,
    limits: Limits,
    /// Remaining forced failures per `adapter.action`.
    fails: FxHashMap<(String, String), u32>,
    events: Vec<Event>,
    /// After `hold intents`: intents waiting for an `answer`, oldest first.
    held: Option<std::collections::VecDeque<crate::Intent>>,
    /// Index into `events` where the current observe/advance window starts.
    window_start: usize,
    window_ticks: u64,
    trace: Vec<String>,
}

/// Runs one scenario of a checked program.
pub fn run_scenario(
    program: &hir::Program,
    compiled: &CompiledProgram,
    sc: &hir::Scenario,
    seed: u64,
) -> ScenarioReport {
    run_scenario_with_limits(program, compiled, sc, seed, Limits::default())
}

/// [`run_scenario`] with explicit scheduler limits (the fuzz tests keep them small).
pub fn run_scenario_with_limits(
    program: &hir::Program,
    compiled: &CompiledProgram,
    sc: &hir::Scenario,
    seed: u64,
    limits: Limits,
) -> ScenarioReport {
    let dom = &compiled.domains[sc.domain];
    let mut report = ScenarioReport {
        name: sc.name.clone(),
        failure: None,
        trace: Vec::new(),
        events: Vec::new(),
        states: Vec::new(),
    };
    let _ = program;
    let mut vm = Vm::new();
    let mut state = match initial_state(&mut vm, dom) {
        Ok(s) => s,
        Err(e) => {
            report.failure = Some(Failure {
                span: sc.span,
                message: format!("the initial state cannot be built: {e}"),
                expected: String::new(),
                actual: String::new(),
            });
            return report;
        }
    };
    for (slot, e) in &sc.given {
        match vm.eval(&compile_expr(e), &state) {
            Ok(v) => state[*slot as usize] = v,
            Err(fault) => {
                report.failure = Some(Failure {
                    span: e.span,
                    message: format!("`given` faulted: {fault}"),
                    expected: String::new(),
                    actual: String::new(),
                });
                return report;
            }
        }
    }
    let mut h = Harness {
        dom,
        vm,
        inst: Instance::new(dom.name.as_str(), sc.domain, state, seed),
        policy: RetryPolicy::default(),
        limits,
        fails: FxHashMap::default(),
        events: Vec::new(),
        held: None,
        window_start: 0,
        window_ticks: 0,
        trace: Vec::new(),
    };
    h.trace.push(format!("start: {}", describe_state(dom, &h.inst.state)));
    // Before the first step the runtime runs from the initial state as it would at any other time.
    let mut failure = h.settle(sc.span).err();
    report.states.push(h.inst.state.clone());
    if failure.is_none() {
        for step in &sc.steps {
            if let Err(f) = h.step(step) {
                failure = Some(f);
                break;
            }
            report.states.push(h.inst.state.clone());
        }
    }
    report.failure = failure;
    report.trace = h.trace;
    report.events = h.events;
    report
}

impl Harness<'_> {
    fn new_window(&mut self) {
        self.window_start = self.events.len();
        self.window_ticks = self.inst.ticks;
    }

    /// Runs until idle, delivering intents to the simulated adapters after each unit of work.
    fn settle(&mut self, span: Span) -> Result<(), Failure> {
        let mut buf = Vec::new();
        for _ in 0..SETTLE_STEPS_MAX {
            let progress = self.inst.step(self.dom, &mut self.vm, &self.policy, &self.limits, &mut buf);
            let mut delivered = false;
            for ev in buf.drain(..) {
                self.trace.push(describe_event(self.dom, &ev));
                if let (Event::Intent(intent), Some(held)) = (&ev, &mut self.held) {
                    held.push_back(intent.clone());
                } else if let Event::Intent(intent) = &ev {
                    let key = (intent.adapter.to_string(), intent.action.to_string());
                    let fail = match self.fails.get_mut(&key) {
                        Some(n) if *n > 0 => {
                            *n -= 1;
                            true
                        }
                        _ => false,
                    };
                    let error = fail.then(|| format!("simulated failure of {}.{}", intent.adapter, intent.action));
                    let _ = self.inst.enqueue(
                        crate::Message::IntentResult { id: intent.id.clone(), ok: !fail, error },
                        &self.limits,
                    );
                    delivered = true;
                }
                self.events.push(ev);
            }
            if matches!(progress, Progress::Idle(_)) && !delivered {
                return Ok(());
            }
        }
        Err(Failure {
            span,
            message: format!("the runtime did not become idle within {SETTLE_STEPS_MAX} steps"),
            expected: "idle".into(),
            actual: self.inst.status.to_string(),
        })
    }

    fn step(&mut self, step: &hir::Step) -> Result<(), Failure> {
        match &step.kind {
            hir::StepKind::Observe(messages) => {
                self.new_window();
                for msg in messages {
                    let mut writes = Vec::with_capacity(msg.writes.len());
                    for (slot, e) in &msg.writes {
                        let v = self.vm.eval(&compile_expr(e), &self.inst.state).map_err(|fault| Failure {
                            span: e.span,
                            message: format!("the observed value faulted: {fault}"),
                            expected: String::new(),
                            actual: String::new(),
                        })?;
                        writes.push((*slot, v));
                    }
                    let queued = if msg.relative {
                        // Checked as `int` by `ved check`, so every value is an integer here.
                        let deltas =
                            writes
                                .into_iter()
                                .filter_map(|(s, v)| if let Value::Int(d) = v { Some((s, d)) } else { None });
                        self.inst.observe_add(self.dom, deltas.collect(), &self.limits)
                    } else {
                        self.inst.observe(self.dom, writes, &self.limits)
                    };
                    queued.map_err(|r| Failure {
                        span: step.span,
                        message: format!("the observation was refused: {r}"),
                        expected: String::new(),
                        actual: String::new(),
                    })?;
                    // Apply this message now, so the next one of a `simultaneously` block sees
                    // its effect; no tick runs in between because messages come first.
                    let mut buf = Vec::new();
                    self.inst.step(self.dom, &mut self.vm, &self.policy, &self.limits, &mut buf);
                    for ev in buf {
                        self.trace.push(describe_event(self.dom, &ev));
                        self.events.push(ev);
                    }
                }
                self.settle(step.span)
            }
            hir::StepKind::Fail { adapter, action, times } => {
                *self.fails.entry((adapter.clone(), action.clone())).or_default() += times;
                Ok(())
            }
            hir::StepKind::Advance { ms } => {
                self.new_window();
                let target = self.inst.now_ms.saturating_add(*ms);
                for _ in 0..TIMERS_PER_ADVANCE_MAX {
                    match self.inst.next_timer_ms() {
                        Some(t) if t <= target => {
                            self.trace.push(format!("time: {t}ms"));
                            self.inst.advance_time(t);
                            self.settle(step.span)?;
                        }
                        _ => break,
                    }
                }
                self.inst.advance_time(target);
                self.trace.push(format!("time: {target}ms"));
                self.settle(step.span)
            }
            hir::StepKind::HoldIntents => {
                self.held.get_or_insert_with(Default::default);
                Ok(())
            }
            hir::StepKind::Answer { newest, ok } => {
                self.new_window();
                let which = if *newest { "newest" } else { "oldest" };
                let intent =
                    self.held.as_mut().and_then(|q| if *newest { q.pop_back() } else { q.pop_front() }).ok_or_else(
                        || Failure {
                            span: step.span,
                            message: format!("`answer {which}`: no intent is in flight"),
                            expected: "an intent in flight".into(),
                            actual: if self.held.is_none() {
                                "none: intents are answered at once until a `hold intents` step".into()
                            } else {
                                "none".into()
                            },
                        },
                    )?;
                let error = (!ok).then(|| format!("simulated failure of {}.{}", intent.adapter, intent.action));
                self.trace.push(format!("answer {which}: {} {}", intent.id, if *ok { "succeeds" } else { "fails" }));
                let _ = self
                    .inst
                    .enqueue(crate::Message::IntentResult { id: intent.id.clone(), ok: *ok, error }, &self.limits);
                self.settle(step.span)
            }
            hir::StepKind::Watch(fields) => {
                let mut all = self.inst.watched.to_vec();
                all.extend(fields.iter().copied());
                self.inst.set_watched(all);
                Ok(())
            }
            hir::StepKind::Expect(e) => self.check_expect(e, step.span),
        }
    }

    fn window(&self) -> &[Event] {
        &self.events[self.window_start..]
    }

    fn check_expect(&mut self, e: &hir::Expect, span: Span) -> Result<(), Failure> {
        let fail = |message: String, expected: String, actual: String| Err(Failure { span, message, expected, actual });
        let status = self.inst.status;
        match e {
            hir::Expect::Holds(ex) => match self.vm.eval_bool(&compile_expr(ex), &self.inst.state) {
                Ok(true) => Ok(()),
                Ok(false) => fail(
                    "the expectation does not hold".into(),
                    "true".into(),
                    format!("false, with {}", describe_state(self.dom, &self.inst.state)),
                ),
                Err(fault) => fail(format!("the expectation faulted: {fault}"), "true".into(), "a fault".into()),
            },
            hir::Expect::Stable
            | hir::Expect::Stuck
            | hir::Expect::Livelock
            | hir::Expect::Waiting
            | hir::Expect::Degraded => {
                let want = match e {
                    hir::Expect::Stable => Status::Stable,
                    hir::Expect::Stuck => Status::Stuck,
                    hir::Expect::Livelock => Status::Livelock,
                    hir::Expect::Degraded => Status::Degraded,
                    _ => Status::Waiting,
                };
                if status == want {
                    Ok(())
                } else {
                    fail(
                        format!("the instance is {status}, not {want}"),
                        want.to_string(),
                        format!("{status}, with {}", describe_state(self.dom, &self.inst.state)),
                    )
                }
            }
            hir::Expect::StableWithin { ticks } => {
                let used = self.inst.ticks - self.window_ticks;
                if status != Status::Stable {
                    fail(
                        format!("the instance is {status}, not stable"),
                        format!("stable within {ticks} ticks"),
                        format!("{status} after {used} ticks"),
                    )
                } else if used > *ticks as u64 {
                    fail(
                        format!("stable only after {used} ticks"),
                        format!("stable within {ticks} ticks"),
                        format!("{used} ticks"),
                    )
                } else {
                    Ok(())
                }
            }
            hir::Expect::Emitted { adapter, action, args, .. } | hir::Expect::NotEmitted { adapter, action, args } => {
                let negated = matches!(e, hir::Expect::NotEmitted { .. });
                let times = if let hir::Expect::Emitted { times, .. } = e { *times } else { None };
                let want_args = match args {
                    Some(a) => {
                        let mut vals = Vec::with_capacity(a.len());
                        for x in a {
                            let v = self.vm.eval(&compile_expr(x), &self.inst.state).map_err(|fault| Failure {
                                span: x.span,
                                message: format!("the expected argument faulted: {fault}"),
                                expected: String::new(),
                                actual: String::new(),
                            })?;
                            vals.push(v);
                        }
                        Some(vals)
                    }
                    None => None,
                };
                let mut seen = Vec::new();
                let mut count = 0u32;
                for ev in self.window() {
                    if let Event::Intent(i) = ev {
                        seen.push(i.to_string());
                        if &*i.adapter == adapter
                            && &*i.action == action
                            && want_args.as_ref().is_none_or(|w| w[..] == i.args[..])
                        {
                            count += 1;
                        }
                    }
                }
                let what = match &want_args {
                    Some(a) => format!(
                        "{adapter}.{action}({})",
                        a.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
                    ),
                    None => format!("{adapter}.{action}"),
                };
                let actual = if seen.is_empty() { "no intents".to_string() } else { seen.join(", ") };
                match (negated, times) {
                    (true, _) if count > 0 => {
                        fail(format!("{what} was emitted {count} time(s)"), format!("no {what}"), actual)
                    }
                    (true, _) => Ok(()),
                    (false, None) if count == 0 => fail(format!("{what} was not emitted"), what, actual),
                    (false, Some(n)) if count != n => fail(
                        format!("{what} was emitted {count} time(s), not {n}"),
                        format!("{what} {n} times"),
                        actual,
                    ),
                    (false, _) => Ok(()),
                }
            }
            hir::Expect::Faulted { transition, times } => {
                let name = &self.dom.transitions[*transition].name;
                let count = self
                    .window()
                    .iter()
                    .filter(|ev| matches!(ev, Event::Fault { transition: Some(x), .. } if x == transition))
                    .count() as u32;
                match times {
                    None if count == 0 => {
                        fail(format!("`{name}` did not fault"), format!("a fault in `{name}`"), "no fault".into())
                    }
                    Some(n) if count != *n => fail(
                        format!("`{name}` faulted {count} time(s), not {n}"),
                        format!("{n} times"),
                        format!("{count} times"),
                    ),
                    _ => Ok(()),
                }
            }
            hir::Expect::Fired { transition, times } => {
                let name = &self.dom.transitions[*transition].name;
                let count = self
                    .window()
                    .iter()
                    .filter(|ev| matches!(ev, Event::Slice { cause: Cause::Transition(x), .. } if x == transition))
                    .count() as u32;
                match times {
                    None if count == 0 => {
                        fail(format!("`{name}` did not fire"), format!("`{name}` fired"), "0 times".into())
                    }
                    Some(n) if count != *n => fail(
                        format!("`{name}` fired {count} time(s), not {n}"),
                        format!("{n} times"),
                        format!("{count} times"),
                    ),
                    _ => Ok(()),
                }
            }
        }
    }
}

/// `field = value, ...` for a whole state.
pub fn describe_state(dom: &CompiledDomain, state: &[Value]) -> String {
    dom.fields.iter().zip(state).map(|((n, _), v)| format!("{n} = {v}")).collect::<Vec<_>>().join(", ")
}

fn describe_changes(dom: &CompiledDomain, changes: &[(u16, Value)]) -> String {
    changes
        .iter()
        .map(|(slot, v)| format!("{} = {v}", dom.fields.get(*slot as usize).map(|f| f.0.as_str()).unwrap_or("?")))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One line of the human-readable trace.
pub fn describe_event(dom: &CompiledDomain, ev: &Event) -> String {
    let tname = |t: usize| dom.transitions.get(t).map(|t| t.name.as_str()).unwrap_or("?");
    let mut s = String::new();
    match ev {
        Event::Slice { slice, cause, changes, held, .. } => {
            let cause = match cause {
                Cause::Observe => "observe".to_string(),
                Cause::Transition(t) => tname(*t).to_string(),
                Cause::Result(id) => format!("result of {id}"),
                Cause::Timer(t) => format!("retry timer of {}", tname(*t)),
            };
            let _ = write!(s, "slice {slice} [{cause}]");
            if !changes.is_empty() {
                let _ = write!(s, ": {}", describe_changes(dom, changes));
            }
            if !held.is_empty() {
                let _ = write!(s, " (held until its intents succeed: {})", describe_changes(dom, held));
            }
        }
        Event::Tick { tick, .. } => {
            let _ = write!(s, "tick {tick}");
        }
        Event::Intent(i) => {
            let _ = write!(s, "intent {}: {i}", i.id);
        }
        Event::Result { id, ok, error, .. } => {
            let _ = write!(
                s,
                "result {id}: {}",
                if *ok { "ok".to_string() } else { format!("failed ({})", error.as_deref().unwrap_or("no reason")) }
            );
        }
        Event::Retry { transition, attempt, at_ms, .. } => {
            let _ = write!(s, "{} will retry (attempt {attempt}) at {at_ms}ms", tname(*transition));
        }
        Event::Fault { transition, goal, fault, .. } => {
            let whose = match (transition, goal) {
                (Some(t), _) => format!("transition {}", tname(*t)),
                (None, Some(g)) => format!("goal {}", dom.goals.get(*g).map(|g| g.name.as_str()).unwrap_or("?")),
                _ => "?".into(),
            };
            let _ = write!(s, "fault in {whose}: {fault}");
        }
        Event::Stale { source, version, last, .. } => {
            let _ = write!(s, "dropped a stale observation from {source}: version {version}, already applied {last}");
        }
        Event::Status { status, reason, .. } => {
            let _ = write!(s, "{status}");
            if let Some(r) = reason {
                let _ = write!(s, ": {r}");
            }
        }
    }
    s
}
