//! `ved-verify` proves, before deploy, that a domain's transitions converge: it
//! explores every state reachable from every start state inside a bound, and
//! either proves that the goals are always reached or returns a shortest
//! counterexample: a stuck state, a livelock cycle, a fault, a lost update, or
//! goals that no state satisfies. It runs the program's own compiled steps, with
//! the runtime's scheduling rules, in every order in which intent results and
//! observations can arrive (see [`explore`]), so what it proves is what runs.
//! Like the runtime it is pure: no I/O, no clock; the caller prints.

pub mod bounds;
pub mod explore;

pub use bounds::{FieldBound, Shape};
pub use explore::Model;
use explore::{Edge, Explorer, Graph, Kind};
use ved_check::hir;
use ved_vm::{CompiledDomain, Value, Vm};

/// What `ved verify` may do.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub shape: Shape,
    /// How many intents may fail, in all, in the second run.
    pub failures: u8,
    /// Nodes explored at most, per run, before giving up.
    pub max_states: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options { shape: Shape::default(), failures: 2, max_states: 20_000_000 }
    }
}

/// One step of a trace.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceStep {
    /// `None` for the start state.
    pub edge: Option<TraceEdge>,
    /// The state after the step.
    pub state: Vec<Value>,
    /// Failures still allowed after it.
    pub budget: u8,
    /// Transitions in flight after it, in declaration order.
    pub in_flight: Vec<InFlight>,
}

/// A transition whose intents are out, with the writes it holds until they succeed.
#[derive(Clone, Debug, PartialEq)]
pub struct InFlight {
    pub transition: String,
    pub held: Vec<(String, Value)>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum TraceEdge {
    /// The transition's step ran (with intents, it went in flight).
    Fired { transition: String },
    /// The result of its intents arrived: all succeeded, or one failed.
    Result { transition: String, ok: bool },
    /// The world reported a new value of a field that a write was held for.
    Observed { field: String },
    /// The retry timer of a transition fired.
    Timer { transition: String },
}

/// Why a domain does not converge.
#[derive(Clone, Debug, PartialEq)]
pub enum Problem {
    /// Goals false and no transition can run: `false_goals` names those that do not hold.
    /// `reached`: when the shortest trace is a bare start state, the shortest one that
    /// gets stuck after at least one slice, which shows how such a state arises.
    Stuck { trace: Vec<TraceStep>, false_goals: Vec<String>, count: usize, reached: Option<Vec<TraceStep>> },
    /// A cycle that never reaches the goals: the trace leads to it, `cycle` goes round it once.
    Livelock { trace: Vec<TraceStep>, cycle: Vec<TraceStep> },
    /// A goal or a step faulted.
    Fault { trace: Vec<TraceStep>, what: String, message: String },
    /// No explored state satisfies every goal; `never` lists goals that never hold on their own.
    Unsatisfiable { never: Vec<String> },
    /// A result applied `transition`'s held write to `field` over a change another
    /// slice made after its step ran: that change is lost. The trace ends with the
    /// result; step `at` of it (counting the start as 0) made the change, by `by`.
    LostUpdate { trace: Vec<TraceStep>, transition: String, field: String, by: TraceEdge, at: usize, count: usize },
}

/// One exploration: every intent succeeds, or some may fail.
#[derive(Clone, Debug)]
pub struct Run {
    /// 0 for "every intent succeeds".
    pub failures: u8,
    pub states: usize,
    pub start_states: usize,
    /// When proven: the most slices any start state needs to reach the goals.
    pub depth: u32,
    pub complete: bool,
    pub problems: Vec<Problem>,
}

impl Run {
    pub fn proven(&self) -> bool {
        self.complete && self.problems.is_empty()
    }
}

#[derive(Clone, Debug)]
pub struct Report {
    pub domain: String,
    pub fields: Vec<String>,
    pub bounds: Vec<FieldBound>,
    pub runs: Vec<Run>,
}

impl Report {
    pub fn proven(&self) -> bool {
        self.runs.iter().all(Run::proven)
    }

    pub fn states(&self) -> usize {
        self.runs.iter().map(|r| r.states).sum()
    }
}

/// Why verification could not run at all.
#[derive(Clone, Debug, PartialEq)]
pub enum VerifyError {
    TooManyStarts { domain: String, starts: u128, limit: usize },
    TooManyTransitions { domain: String, count: usize },
    Bound(String),
}

impl std::fmt::Display for VerifyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VerifyError::TooManyStarts { domain, starts, limit } => {
                write!(f, "`{domain}` has {starts} start states within its bound, more than the limit of {limit}")
            }
            VerifyError::TooManyTransitions { domain, count } => {
                write!(f, "`{domain}` has {count} transitions; `ved verify` handles at most 64")
            }
            VerifyError::Bound(m) => f.write_str(m),
        }
    }
}

/// Verifies one domain. `progress(explored, discovered)` is called now and then.
pub fn verify_domain(
    d: &hir::Domain,
    compiled: &CompiledDomain,
    opts: Options,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Report, VerifyError> {
    verify_domain_in(d, compiled, opts, Model::default(), progress)
}

/// [`verify_domain`] under a model that may leave out some of the runtime's rules:
/// for tests that show what a rule prevents.
pub fn verify_domain_in(
    d: &hir::Domain,
    compiled: &CompiledDomain,
    opts: Options,
    model: Model,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Report, VerifyError> {
    verify(d, compiled, opts, model, true, progress)
}

/// [`verify_domain_in`] with every node kept whole ([`Explorer::unpacked`]): the
/// general representation, against which tests check the packed one.
pub fn verify_domain_unpacked(
    d: &hir::Domain,
    compiled: &CompiledDomain,
    opts: Options,
    model: Model,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Report, VerifyError> {
    verify(d, compiled, opts, model, false, progress)
}

fn verify(
    d: &hir::Domain,
    compiled: &CompiledDomain,
    opts: Options,
    model: Model,
    packed: bool,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Report, VerifyError> {
    if compiled.transitions.len() > 64 {
        return Err(VerifyError::TooManyTransitions { domain: d.name.clone(), count: compiled.transitions.len() });
    }
    let bounds = bounds::field_bounds(d, compiled, opts.shape).map_err(VerifyError::Bound)?;
    let starts: u128 = bounds.iter().map(|b| b.values.len().max(1) as u128).product();
    if starts > opts.max_states as u128 {
        return Err(VerifyError::TooManyStarts { domain: d.name.clone(), starts, limit: opts.max_states });
    }
    let initial = Vm::new().initial_state(compiled).map_err(|f| VerifyError::Bound(f.to_string()))?;
    let observable: Vec<Vec<Value>> = bounds.iter().map(|b| b.values.clone()).collect();
    let explorer = || {
        let ex = Explorer::new(compiled, model, observable.clone());
        if packed {
            ex
        } else {
            ex.unpacked()
        }
    };
    let mut runs = Vec::new();
    for failures in [0, opts.failures] {
        if failures == 0 && !runs.is_empty() {
            continue;
        }
        let mut ex = explorer();
        ex.reserve(starts as usize);
        let mut count = 0;
        for_each_start(&observable, &initial, &mut |at| {
            ex.add_start_at(at, failures);
            count += 1;
        });
        let g = ex.run(opts.max_states, progress);
        runs.push(judge(compiled, &g, failures, count, &explorer));
        if failures == opts.failures {
            break;
        }
    }
    Ok(Report {
        domain: d.name.clone(),
        fields: compiled.fields.iter().map(|(n, _)| n.clone()).collect(),
        bounds,
        runs,
    })
}

/// Calls `f` on each state of the cartesian product of the bounds, as the
/// position of each field's value in its bound: start states nearest the
/// declared initial state first (those that differ from it in fewer fields;
/// within that, the product's order, the last field moving fastest), so that
/// among equally short counterexamples the one closest to what the program
/// declares is found. The states are made one at a time, never all at once, and
/// each distance visits only the states at that distance.
fn for_each_start(bounds: &[Vec<Value>], initial: &[Value], f: &mut dyn FnMut(&[usize])) {
    if bounds.iter().any(Vec::is_empty) {
        return;
    }
    // Per field and value: whether it differs from the initial value.
    let differs: Vec<Vec<bool>> =
        bounds.iter().zip(initial).map(|(vs, init)| vs.iter().map(|v| v != init).collect()).collect();
    let n = bounds.len();
    // From field k on: how many fields must differ (every value does), and may.
    let mut must = vec![0usize; n + 1];
    let mut may = vec![0usize; n + 1];
    for k in (0..n).rev() {
        must[k] = must[k + 1] + usize::from(differs[k].iter().all(|&d| d));
        may[k] = may[k + 1] + usize::from(differs[k].iter().any(|&d| d));
    }
    struct Walk<'w> {
        differs: &'w [Vec<bool>],
        must: &'w [usize],
        may: &'w [usize],
        at: Vec<usize>,
    }
    /// Fields `k..` with `left` of them still to differ, in the product's order.
    fn walk(w: &mut Walk<'_>, k: usize, left: usize, f: &mut dyn FnMut(&[usize])) {
        if k == w.differs.len() {
            f(&w.at);
            return;
        }
        for (i, &d) in w.differs[k].iter().enumerate() {
            let Some(rest) = left.checked_sub(usize::from(d)) else { continue };
            if w.must[k + 1] <= rest && rest <= w.may[k + 1] {
                w.at[k] = i;
                walk(w, k + 1, rest, f);
            }
        }
    }
    let mut w = Walk { differs: &differs, must: &must, may: &may, at: vec![0; n] };
    for distance in 0..=n {
        if must[0] <= distance && distance <= may[0] {
            walk(&mut w, 0, distance, f);
        }
    }
}

fn trace_of(compiled: &CompiledDomain, g: &Graph, path: &[(u32, Edge)]) -> Vec<TraceStep> {
    let name = |t: u16| compiled.transitions[t as usize].name.clone();
    path.iter()
        .map(|(i, e)| {
            let node = g.node(*i);
            let edge = match *e {
                Edge::Start => None,
                Edge::Timer { t } => Some(TraceEdge::Timer { transition: name(t) }),
                Edge::Fire { t } => Some(TraceEdge::Fired { transition: name(t) }),
                Edge::Result { t, ok } => Some(TraceEdge::Result { transition: name(t), ok }),
                Edge::Observe { slot } => Some(TraceEdge::Observed { field: compiled.fields[slot as usize].0.clone() }),
            };
            let in_flight = node
                .in_flight()
                .iter()
                .map(|f| InFlight {
                    transition: name(f.t),
                    held: f
                        .held
                        .iter()
                        .map(|h| (compiled.fields[h.slot as usize].0.clone(), h.value.clone()))
                        .collect(),
                })
                .collect();
            TraceStep { edge, state: node.values.to_vec(), budget: node.budget, in_flight }
        })
        .collect()
}

fn judge<'a>(
    compiled: &'a CompiledDomain,
    g: &Graph,
    failures: u8,
    start_states: usize,
    explorer: &dyn Fn() -> Explorer<'a>,
) -> Run {
    let mut problems = Vec::new();
    // Goals that no state satisfies come first: every other problem follows from them.
    if g.complete && !g.kinds.contains(&Kind::Stable) {
        let never = compiled
            .goals
            .iter()
            .zip(&g.goal_ever_true)
            .filter(|(_, t)| !**t)
            .map(|(goal, _)| goal.name.clone())
            .collect();
        problems.push(Problem::Unsatisfiable { never });
    }
    if let Some((i, f)) = g.faults.first() {
        let trace = trace_of(compiled, g, &g.path_to(*i));
        problems.push(Problem::Fault { trace, what: f.what.clone(), message: f.fault.to_string() });
    }
    // A lost update is wrong whatever happens next, so it comes before stuck states and cycles.
    if let Some(lost) = g.lost {
        let mut path = g.path_to(lost.from);
        path.push((lost.to, Edge::Result { t: lost.t, ok: true }));
        let trace = trace_of(compiled, g, &path);
        let s = lost.slot as usize;
        // The change it overwrites: the last one to the field since the transition's step ran.
        let fired = path.iter().rposition(|(_, e)| *e == Edge::Fire { t: lost.t }).unwrap_or(0);
        let at =
            (fired + 1..trace.len() - 1).rev().find(|&k| trace[k].state[s] != trace[k - 1].state[s]).unwrap_or(fired);
        problems.push(Problem::LostUpdate {
            by: trace[at].edge.clone().unwrap_or(TraceEdge::Timer { transition: String::new() }),
            trace,
            transition: compiled.transitions[lost.t as usize].name.clone(),
            field: compiled.fields[s].0.clone(),
            at,
            count: g.lost_count,
        });
    }
    let stuck: Vec<usize> = g.kinds.iter().enumerate().filter(|(_, k)| **k == Kind::Stuck).map(|(i, _)| i).collect();
    if let Some(&i) = stuck.first() {
        let trace = trace_of(compiled, g, &g.path_to(i as u32));
        let mut vm = Vm::new();
        let values = &g.node(i as u32).values;
        let false_goals = compiled
            .goals
            .iter()
            .filter(|goal| !vm.eval_bool(&goal.code, values).unwrap_or(false))
            .map(|goal| goal.name.clone())
            .collect();
        // The shortest way into a stuck state by the program's own moves: the shallowest
        // node with a stuck successor (the stuck node itself may be a start state too).
        let reached = (trace.len() == 1)
            .then(|| {
                (0..g.kinds.len()).find_map(|from| {
                    g.successors(from)
                        .iter()
                        .find(|&&j| j as usize != from && g.kinds.get(j as usize) == Some(&Kind::Stuck))
                        .map(|&j| (from as u32, j))
                })
            })
            .flatten()
            .map(|(from, to)| {
                let mut path = g.path_to(from);
                path.push((to, edge_between(&mut explorer(), g, from, to)));
                trace_of(compiled, g, &path)
            });
        problems.push(Problem::Stuck { trace, false_goals, count: stuck.len(), reached });
    }
    let depth = g.acyclic_depth();
    if let Some(cycle) = if depth.is_some() { None } else { g.find_cycle() } {
        let entry = cycle[0];
        let trace = trace_of(compiled, g, &g.path_to(entry));
        // Round the cycle once: each node after the entry, then back to it.
        let mut round = Vec::new();
        for w in cycle.iter().skip(1).chain(std::iter::once(&entry)) {
            let prev = round.last().map(|(i, _): &(u32, Edge)| *i).unwrap_or(entry);
            let edge = edge_between(&mut explorer(), g, prev, *w);
            round.push((*w, edge));
        }
        let cycle = trace_of(compiled, g, &round);
        problems.push(Problem::Livelock { trace, cycle });
    }
    Run {
        failures,
        states: g.len(),
        start_states,
        depth: match depth {
            Some(depth) if problems.is_empty() && g.complete => depth,
            _ => 0,
        },
        complete: g.complete,
        problems,
    }
}

/// The edge by which `to` follows `from` (not an observation: cycles leave those out),
/// found again by expanding `from`.
fn edge_between(ex: &mut Explorer<'_>, g: &Graph, from: u32, to: u32) -> Edge {
    let target = g.node(to);
    let mut out = Vec::new();
    ex.successors_of(&g.node(from), &mut out);
    out.into_iter()
        .find(|(n, e)| *n == target && !matches!(e, Edge::Observe { .. }))
        .map(|(_, e)| e)
        .unwrap_or(Edge::Start)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The start states in order, the slow way: every distance, the whole product.
    fn by_distance(bounds: &[Vec<Value>], initial: &[Value]) -> Vec<Vec<usize>> {
        let mut product: Vec<Vec<usize>> = vec![Vec::new()];
        for b in bounds {
            product = product.iter().flat_map(|p| (0..b.len()).map(move |i| [p.clone(), vec![i]].concat())).collect();
        }
        let distance = |at: &Vec<usize>| at.iter().enumerate().filter(|(k, &i)| bounds[*k][i] != initial[*k]).count();
        (0..=bounds.len()).flat_map(|d| product.iter().filter(move |at| distance(at) == d).cloned()).collect()
    }

    #[test]
    fn start_states_come_nearest_the_initial_state_first_in_the_products_order() {
        let ints = |r: std::ops::Range<i64>| r.map(Value::Int).collect::<Vec<_>>();
        let cases = [
            (vec![ints(0..3), ints(0..4), ints(0..2)], vec![Value::Int(0), Value::Int(2), Value::Int(1)]),
            // The initial value outside one bound: that field always differs.
            (vec![ints(0..3), ints(5..8), ints(0..1)], vec![Value::Int(1), Value::Int(0), Value::Int(0)]),
            // A bound of the initial value alone: that field never differs.
            (vec![ints(4..5), ints(0..3)], vec![Value::Int(4), Value::Int(9)]),
            (vec![ints(0..1)], vec![Value::Int(0)]),
            (vec![ints(0..2), Vec::new()], vec![Value::Int(0), Value::Int(0)]),
        ];
        for (bounds, initial) in cases {
            let mut got = Vec::new();
            for_each_start(&bounds, &initial, &mut |at| got.push(at.to_vec()));
            let want = if bounds.iter().any(Vec::is_empty) { Vec::new() } else { by_distance(&bounds, &initial) };
            assert_eq!(got, want, "{bounds:?} from {initial:?}");
        }
    }
}
