//! One set of rules: every step of a seeded random run of the runtime
//! (`ved_runtime::Instance::step`) is an edge of `ved verify`'s graph
//! (`ved_verify::explore::Explorer::successors_of`).
//!
//! Each seed picks a program from `examples/*.ved`, one of its domains, a start
//! state from the verify bounds (`ved_verify::bounds::field_bounds`), and a
//! failure budget, then drives a real `Instance` with random moves: run one
//! step, answer one outstanding intent (success, failure while the budget lasts,
//! or a duplicate of an answered one), observe one field with a value of its
//! bound, or let the retry timers fire. Before and after every step the instance
//! is mapped to a verify `Node`, and the step must be one of the node's edges.
//!
//! **The mapping** (runtime → `Node`):
//! - `values` = the instance's state; `budget` = failures the run may still inject
//!   (an effective failure, one that backs a transition off, spends one).
//! - `flight` = the `InFlight` pending transitions, by index, each with its held
//!   writes; `dirty` is not kept by the runtime, so the test tracks it as verify
//!   defines it: a held write is dirty once a later slice changed its field.
//! - `blocked` = the transitions in `Backoff`.
//! - A stable node (every goal holds, nothing in flight) has no successors in
//!   verify, whatever backs off; the runtime's retry timers there change nothing
//!   that can run, so `blocked` counts as empty on such a node.
//! - `cursor` = the tick cursor, normalized: verify ignores the cursor when every
//!   goal holds, and a cursor past which nothing can fire behaves as a tick
//!   boundary (the runtime spends one more step ending the tick), so both count
//!   as 0. A node is "mid-tick" only when its successors are the single firing of
//!   a transition at or past its cursor.
//!
//! **Where the models differ by design, and how the test maps it:**
//! - *Stutters.* A step that leaves the mapped node unchanged is accepted: a
//!   status settling, a tick that ends having run nothing more, the success of one
//!   of several intents of a transition (verify answers a transition's intents
//!   with one result: success when all succeed, failure at the first failure), a
//!   result for a transition that already failed, an observation that repeats the
//!   committed value.
//! - *Timers.* Time may pass at any moment, up to when one of the backoffs comes
//!   due; each timer message is its own step, and verify has a `Timer { t }` edge
//!   at every tick boundary for each transition backing off. (An earlier verify fired
//!   every timer at once and only where nothing else could run; this test found the
//!   runtime orders that missed, e.g. SecurityPolicy with `actual_ports` = [0, 0, 0]
//!   and `OpenMissingPorts` backing off, and verify now has them.)
//! - *Observations.* Verify models only observations of fields a transition in
//!   flight holds a write to; any other observation leads to a new start state
//!   (every start state is explored anyway). Such steps are the world's move and
//!   are not checked; the run goes on from the node they lead to. The explorer
//!   runs with `Model::every_observed_value`, so any value of the bound counts.
//! - *Faults* end a run: verify's node is a fault with no successors, which is
//!   checked, while the runtime backs the step off and goes on.
//! - Relative observations, versioned sources and watched fields (confirmation)
//!   are not in verify's model and are not generated.
//!
//! The test also checks that it has teeth: with `Model::serialize_conflicts` off,
//! verify fires a transition the runtime holds back, and the first seeds fail. On
//! the seeds no held write ever becomes dirty (R1 keeps every other slice off a
//! held field, and an observation drops the held write), as verify's
//! lost-update check says; the marks are tracked all the same.
//!
//! `VED_RULES_SEEDS` sets the number of seeded runs (default 400); a failure names
//! its seed, and `VED_RULES_SEED=S` replays that one.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use ved_runtime::{Event, Instance, IntentId, Limits, Message, Phase, Progress, RetryPolicy};
use ved_verify::explore::{Edge, Explorer, Flight, Flights, Held, Model, Node};
use ved_vm::{CompiledDomain, Value, Vm};

use ved_testkit::Rng;

/// A domain: its name, its code, each field's bound, its initial state.
type Domain = (String, CompiledDomain, Vec<Vec<Value>>, Vec<Value>);

struct Program {
    name: String,
    domains: Vec<Domain>,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn programs() -> Vec<Program> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "ved") && !p.to_string_lossy().ends_with(".test.ved"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "the seed programs are there: {files:?}");
    files
        .into_iter()
        .map(|f| {
            let loaded = ved_cli::load::load(std::slice::from_ref(&f)).unwrap_or_else(|_| panic!("{f:?} loads"));
            let domains = loaded
                .program
                .domains
                .iter()
                .zip(&loaded.compiled.domains)
                .map(|(d, c)| {
                    let shape = ved_verify::Shape { margin: 2, max_len: 3 };
                    let bounds = ved_verify::bounds::field_bounds(d, c, shape).unwrap();
                    let initial = Vm::new().initial_state(c).unwrap();
                    (d.name.clone(), c.clone(), bounds.into_iter().map(|b| b.values).collect(), initial)
                })
                .collect();
            Program { name: f.file_name().unwrap().to_string_lossy().into_owned(), domains }
        })
        .collect()
}

/// What the test knows beyond the instance: verify's `dirty` marks and the budget.
struct Shadow {
    /// (transition, slot) of held writes that a later slice overwrote.
    dirty: Vec<(usize, u16)>,
    budget: u8,
}

fn tick_cursor(inst: &Instance) -> u8 {
    inst.snapshot().tick_cursor.map_or(0, |c| c as u8)
}

/// The instance as a verify node (cursor not yet normalized).
fn node_of(inst: &Instance, shadow: &Shadow) -> Node {
    let mut blocked = 0u64;
    let mut flights = Vec::new();
    for p in &inst.pending {
        match &p.phase {
            Phase::InFlight { held, .. } => flights.push(Flight {
                t: p.transition as u16,
                held: held
                    .iter()
                    .map(|(slot, value)| Held {
                        slot: *slot,
                        value: value.clone(),
                        dirty: shadow.dirty.contains(&(p.transition, *slot)),
                    })
                    .collect(),
            }),
            Phase::Backoff { .. } => blocked |= 1 << p.transition,
            Phase::Confirming { .. } => panic!("no watched fields here"),
        }
    }
    flights.sort_by_key(|f| f.t);
    Node {
        values: inst.state.clone().into_boxed_slice(),
        blocked,
        flight: (!flights.is_empty()).then(|| Box::new(Flights(flights))),
        cursor: tick_cursor(inst),
        budget: shadow.budget,
    }
}

struct Checker<'a> {
    dom: &'a CompiledDomain,
    ex: Explorer<'a>,
    vm: Vm,
    succ: Vec<(Node, Edge)>,
}

impl Checker<'_> {
    fn successors(&mut self, n: &Node) -> Vec<(Node, Edge)> {
        self.succ.clear();
        self.ex.successors_of(n, &mut self.succ);
        std::mem::take(&mut self.succ)
    }

    /// Cursor 0 where it makes no difference: every goal holds, or nothing can fire
    /// from the cursor on (see the module documentation).
    fn normalize(&mut self, mut n: Node) -> Node {
        let all = self.dom.goals.iter().all(|g| self.vm.eval_bool(&g.code, &n.values).unwrap_or(false));
        if all && n.flight.is_none() {
            // Stable: nothing runs, so what backs off makes no difference either.
            n.blocked = 0;
        }
        if n.cursor == 0 {
            return n;
        }
        let mid_tick = !all && {
            let s = self.successors(&n);
            s.len() == 1 && matches!(s[0].1, Edge::Fire { t } if t as u8 >= n.cursor)
        };
        if !mid_tick {
            n.cursor = 0;
        }
        n
    }
}

#[derive(Debug)]
enum Queued {
    /// An observation of one field.
    Observe(u16),
    /// An intent's result; `true` for a first answer that is a failure.
    Result(bool),
    Timer,
}

/// One seeded run. Returns the number of steps checked against verify's edges, by
/// kind: fire, success, failure, observation, timer.
fn run_seed(programs: &[Program], seed: u64) -> [usize; 5] {
    let mut rng = Rng(seed.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ 0x5eed);
    let prog = &programs[rng.below(programs.len())];
    let (dname, dom, bounds, initial) = &prog.domains[rng.below(prog.domains.len())];
    let ctx = format!("seed {seed} ({} / {dname}; replay with VED_RULES_SEED={seed})", prog.name);
    let pick = |rng: &mut Rng, slot: usize| -> Option<Value> {
        let vals = &bounds[slot];
        (!vals.is_empty()).then(|| vals[rng.below(vals.len())].clone())
    };
    let start: Vec<Value> = (0..initial.len())
        .map(|s| if rng.percent(20) { None } else { pick(&mut rng, s) }.unwrap_or(initial[s].clone()))
        .collect();
    let mut inst = Instance::new("I", 0, start, seed);
    let policy = RetryPolicy::default();
    let limits = Limits::default();
    let mut vm = Vm::new();
    let model = Model { every_observed_value: true, ..Model::default() };
    let mut ck = Checker { dom, ex: Explorer::new(dom, model, bounds.clone()), vm: Vm::new(), succ: Vec::new() };
    let mut shadow = Shadow { dirty: Vec::new(), budget: rng.below(4) as u8 };
    let mut queue: VecDeque<Queued> = VecDeque::new();
    // Intents out and not answered; intents answered (for duplicates).
    let mut outstanding: Vec<IntentId> = Vec::new();
    let mut answered: Vec<IntentId> = Vec::new();
    let mut idle = false;
    let mut queued_failures = 0u8;
    let mut checked = [0usize; 5];
    let moves = 60 + rng.below(240);
    for _ in 0..moves {
        let r = rng.below(100);
        if r < 55 || (idle && queue.is_empty() && outstanding.is_empty() && r < 80) {
            // One step of the runtime, or (for a timer group) as many as the group takes.
            let before = ck.normalize(node_of(&inst, &shadow));
            let pre_flights: Vec<usize> = inst
                .pending
                .iter()
                .filter(|p| matches!(p.phase, Phase::InFlight { .. }))
                .map(|p| p.transition)
                .collect();
            let applies = inst.snapshot().tick_cursor.is_none() && inst.mailbox_len() > 0;
            let what = if applies { queue.pop_front() } else { None };
            if let Some(Queued::Result(true)) = what {
                queued_failures -= 1;
            }
            let mut events = Vec::new();
            let progress = inst.step(dom, &mut vm, &policy, &limits, &mut events);
            idle = matches!(progress, Progress::Idle(_));
            if events.iter().any(|e| matches!(e, Event::Fault { .. })) {
                // Verify's node faults too: no successors.
                let s = ck.successors(&before);
                assert!(s.is_empty(), "{ctx}: the runtime faulted at {before:?}, verify goes on to {s:?}");
                return checked;
            }
            for e in &events {
                match e {
                    Event::Intent(i) => outstanding.push(i.id.clone()),
                    Event::Retry { .. } => shadow.budget -= 1,
                    Event::Slice { changes, .. } => {
                        // Verify's `touch`: held writes of flights that were out before this
                        // step become dirty when another slice changes their field.
                        for (slot, _) in changes {
                            for p in &inst.pending {
                                if let Phase::InFlight { held, .. } = &p.phase {
                                    if pre_flights.contains(&p.transition)
                                        && held.iter().any(|(s, _)| s == slot)
                                        && !shadow.dirty.contains(&(p.transition, *slot))
                                    {
                                        shadow.dirty.push((p.transition, *slot));
                                    }
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
            // Marks of flights that ended (or held writes dropped) go with them.
            let live: Vec<(usize, u16)> = inst
                .pending
                .iter()
                .filter_map(|p| match &p.phase {
                    Phase::InFlight { held, .. } => {
                        Some(held.iter().map(|(s, _)| (p.transition, *s)).collect::<Vec<_>>())
                    }
                    _ => None,
                })
                .flatten()
                .collect();
            shadow.dirty.retain(|d| live.contains(d));
            let after = ck.normalize(node_of(&inst, &shadow));
            if after == before {
                continue; // a stutter
            }
            if let Some(Queued::Observe(slot)) = what {
                let modelled = before.in_flight().iter().any(|f| f.held.iter().any(|h| h.slot == slot));
                if !modelled {
                    continue; // the world's move: a new start state for verify
                }
            }
            let succ: Vec<(Node, Edge)> =
                ck.successors(&before).into_iter().map(|(n, e)| (ck.normalize(n), e)).collect();
            let hit = succ.iter().find(|(n, _)| *n == after).map(|(_, e)| *e);
            assert!(
                hit.is_some(),
                "{ctx}: the runtime stepped ({what:?}, events {events:?})\n  from {before:?}\n  to   {after:?}\nwhich is not among verify's successors:\n{}",
                succ.iter().map(|(n, e)| format!("  {e:?} -> {n:?}")).collect::<Vec<_>>().join("\n")
            );
            let k = match hit {
                Some(Edge::Fire { .. }) => 0,
                Some(Edge::Result { ok: true, .. }) => 1,
                Some(Edge::Result { ok: false, .. }) => 2,
                Some(Edge::Observe { .. }) => 3,
                _ => 4,
            };
            checked[k] += 1;
        } else if r < 75 {
            // Answer an outstanding intent, or (now and then) repeat an answer.
            if !answered.is_empty() && rng.percent(10) {
                let id = answered[rng.below(answered.len())].clone();
                let ok = rng.percent(50);
                inst.enqueue(Message::IntentResult { id, ok, error: None }, &limits).unwrap();
                queue.push_back(Queued::Result(false));
                continue;
            }
            if outstanding.is_empty() {
                continue;
            }
            let id = outstanding.remove(rng.below(outstanding.len()));
            // A failure is injected only while the budget lasts, counting those queued.
            let ok = shadow.budget <= queued_failures || rng.percent(70);
            if !ok {
                queued_failures += 1;
            }
            answered.push(id.clone());
            inst.enqueue(Message::IntentResult { id, ok, error: (!ok).then(|| "injected".into()) }, &limits).unwrap();
            queue.push_back(Queued::Result(!ok));
        } else if r < 92 {
            let slot = rng.below(initial.len());
            let Some(v) = pick(&mut rng, slot) else { continue };
            inst.enqueue(Message::Observe(vec![(slot as u16, v)]), &limits).unwrap();
            queue.push_back(Queued::Observe(slot as u16));
        } else {
            // Time passes, at any moment, until one of the backoffs (picked at random) is due.
            let due: Vec<u64> = inst
                .pending
                .iter()
                .filter_map(|p| match p.phase {
                    Phase::Backoff { until_ms, .. } => Some(until_ms),
                    _ => None,
                })
                .collect();
            let due = (!due.is_empty()).then(|| due[rng.below(due.len())]);
            if let Some(at) = due {
                let before = inst.mailbox_len();
                inst.advance_time(at);
                for _ in before..inst.mailbox_len() {
                    queue.push_back(Queued::Timer);
                }
            }
        }
    }
    checked
}

#[test]
fn every_runtime_step_is_an_edge_of_the_verify_graph() {
    let programs = programs();
    let seeds: Vec<u64> = match std::env::var("VED_RULES_SEED") {
        Ok(s) => vec![s.parse().expect("VED_RULES_SEED is a number")],
        Err(_) => {
            let n: u64 = std::env::var("VED_RULES_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(400);
            (0..n).collect()
        }
    };
    let mut checked = [0usize; 5];
    for &seed in &seeds {
        for (c, n) in checked.iter_mut().zip(run_seed(&programs, seed)) {
            *c += n;
        }
    }
    let [fire, success, failure, observe, timer] = checked;
    eprintln!(
        "{} seeds; runtime steps found among verify's edges: {fire} fire, {success} success, {failure} failure, \
         {observe} observation, {timer} timer",
        seeds.len()
    );
    // The runs exercise every kind of edge, not only stutters.
    if seeds.len() >= 100 {
        assert!(checked.iter().all(|n| *n >= 10), "too few of some kind of edge: {checked:?}");
    }
}
