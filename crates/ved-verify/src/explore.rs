//! The state graph of one domain, explored breadth first from every start state.
//!
//! A node is the domain's state plus what the scheduler knows: where the
//! current tick is (`cursor`), which transitions are backing off after a failed
//! intent (`blocked`), how many more intents may fail (`budget`), and which
//! transitions are in flight with the writes they hold (`flight`). Its
//! successors follow the runtime's rules slice by slice, and every order in
//! which the world can answer:
//!
//! - **Mid-tick** (`cursor` past a transition that fired, and a later one
//!   enabled) the only successor is that transition's slice: the runtime
//!   finishes a tick before it applies any message.
//! - **At a tick boundary** any queued message may come first. For each
//!   transition in flight, its result: success applies its held writes; while
//!   `budget` lasts, failure drops them (an `optimistic` step's writes were
//!   applied at once and stay) and blocks it until its retry timer fires. For
//!   each field with a held write, an observation of a new value: it drops every
//!   held write to that field, as the runtime does. Then the next tick's first
//!   slice, and for each transition backing off, its retry timer (it may come
//!   due at any boundary, each transition's on its own, as the runtime's timer
//!   messages do).
//! - A transition is skipped when it backs off, is in flight, or (R1, unless
//!   [`Model::serialize_conflicts`] is off) another transition in flight writes
//!   a field it reads or writes. Otherwise a step that is not a no-op fires: with
//!   no intents its writes apply; with intents it goes in flight, holding its
//!   writes (or applying them at once, if `optimistic`).
//! - Every goal holding with nothing in flight is **stable** (no successors);
//!   with something in flight it is **waiting** (R2): only messages follow.
//!   A boundary where no transition can run waits for results and, when
//!   something backs off, for its retry timer; with neither it is **stuck**.
//!
//! Simplifications, each an over-approximation or a bound:
//! - a transition's intents are answered together: one result, success when all
//!   succeed, failure at the first failure (the runtime ignores later answers);
//! - time is not measured: a retry timer may fire at any boundary after its
//!   failure, whatever its delay (`crates/ved-cli/tests/one_set_of_rules.rs`
//!   checks that every step of the runtime, time passing at any moment, is an
//!   edge of this graph);
//! - observations arrive only for fields with a held write, and report either a
//!   value a step in flight predicted (the world confirms the effect before the
//!   acknowledgement) or one other value of the field's bound, the first that is
//!   neither (the world moved elsewhere); [`Model::every_observed_value`] tries
//!   every value of the bound instead, at about 20 times the edges on seed 000.
//!   Other observations are a new start state, and every start state is
//!   explored anyway. Observation edges are the world's moves, not the
//!   program's: they are left out of livelock cycles and of the depth (a world
//!   that changes forever is not a livelock).

use hashbrown::HashTable;
use rustc_hash::FxHasher;
use std::hash::{Hash, Hasher};
use ved_vm::{CompiledDomain, CompiledTransition, Fault, Value, Vm};

/// The state fields a transition's step may read and may write, in any branch:
/// every field it loads and every field it assigns, as sorted slots.
///
/// The read and write sets the runtime serializes conflicting transitions on:
/// the ones `ved-vm` computed when it lowered the step (one definition for both).
pub fn access_sets(tr: &CompiledTransition) -> (Vec<u16>, Vec<u16>) {
    (tr.reads.clone(), tr.writes.clone())
}

/// The runtime rules the explorer may leave out, so that tests can show what
/// they prevent. `ved verify` always uses the default: every rule on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Model {
    /// R1: a transition is blocked while another one in flight writes a field it
    /// reads or writes.
    pub serialize_conflicts: bool,
    /// Observations mid-flight report every value of the field's bound, not only
    /// the predictions and one other value (see the module documentation).
    pub every_observed_value: bool,
}

impl Default for Model {
    fn default() -> Model {
        Model { serialize_conflicts: true, every_observed_value: false }
    }
}

/// One write a transition in flight holds until its intents succeed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Held {
    pub slot: u16,
    pub value: Value,
    /// Another slice changed the field since the step ran: applying this write
    /// would overwrite that change (a lost update).
    pub dirty: bool,
}

/// A transition whose intents are out.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Flight {
    pub t: u16,
    /// By slot, ascending; empty for an `optimistic` step or once observations
    /// superseded every write.
    pub held: Vec<Held>,
}

/// The transitions in flight, by index, ascending; never empty.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Flights(pub Vec<Flight>);

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Node {
    pub values: Box<[Value]>,
    pub blocked: u64,
    /// `None` when nothing is in flight, so such a node pays one word for it.
    pub flight: Option<Box<Flights>>,
    pub cursor: u8,
    pub budget: u8,
}

impl Node {
    pub fn in_flight(&self) -> &[Flight] {
        self.flight.as_deref().map_or(&[], |f| &f.0)
    }
}

fn pack(f: Vec<Flight>) -> Option<Box<Flights>> {
    (!f.is_empty()).then(|| Box::new(Flights(f)))
}

/// Marks every held write to `slot` as overwritten-to-be: someone else changed it.
fn touch(flights: &mut [Flight], slot: u16) {
    for f in flights {
        for h in &mut f.held {
            if h.slot == slot {
                h.dirty = true;
            }
        }
    }
}

/// How a node was reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Edge {
    Start,
    /// Transition `t`'s step ran: its writes applied, or went in flight held.
    Fire {
        t: u16,
    },
    /// The result of transition `t`'s intents arrived.
    Result {
        t: u16,
        ok: bool,
    },
    /// The world reported a new value of field `slot`, which held a write.
    Observe {
        slot: u16,
    },
    /// The retry timer of transition `t` fired: it may run again.
    Timer {
        t: u16,
    },
}

/// What a node is.
#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    /// Every goal holds and nothing is in flight.
    Stable,
    /// Every goal holds but something is in flight (R2): not stable yet.
    Waiting,
    Moving,
    /// Goals false, nothing can run, nothing in flight, nothing backing off.
    Stuck,
    /// A goal or a step faulted here.
    Fault {
        what: String,
        fault: Fault,
    },
}

/// A result that applied a held write over another slice's change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LostUpdate {
    /// The node where the result arrived, and the node it led to.
    pub from: u32,
    pub to: u32,
    pub t: u16,
    pub slot: u16,
}

/// Set on a successor index in `Graph::succ` when the edge is an observation:
/// the world's move, which livelock cycles and the depth leave out.
pub const WORLD: u32 = 1 << 31;

/// The explored graph. Node 0.. are in breadth-first order, so indices grow with depth.
pub struct Graph {
    pub nodes: Vec<Node>,
    pub kinds: Vec<Kind>,
    pub parent: Vec<(u32, Edge)>,
    pub depth: Vec<u32>,
    /// Successors of node `i`: `succ[succ_off[i]..succ_off[i + 1]]`, observation
    /// edges marked with [`WORLD`].
    pub succ_off: Vec<u32>,
    pub succ: Vec<u32>,
    /// Per goal: whether it held in some node.
    pub goal_ever_true: Vec<bool>,
    /// The first lost update found (breadth first, so on a shortest trace), and how
    /// many results (edges of the graph) overwrote a change.
    pub lost: Option<LostUpdate>,
    pub lost_count: usize,
    /// False when `max_states` cut the exploration short.
    pub complete: bool,
}

fn hash_node(n: &Node) -> u64 {
    let mut h = FxHasher::default();
    n.hash(&mut h);
    h.finish()
}

pub struct Explorer<'a> {
    dom: &'a CompiledDomain,
    vm: Vm,
    table: HashTable<u32>,
    g: Graph,
    /// Per transition: the transitions whose flight blocks it (R1), as a mask.
    conflicts: Vec<u64>,
    model: Model,
    /// Per field: the values an observation may report.
    observable: Vec<Vec<Value>>,
    /// Set by `expand`: the successors (by position) whose result overwrote a
    /// change, with the transition and the field.
    lost_at: Vec<(usize, u16, u16)>,
}

impl<'a> Explorer<'a> {
    /// `observable[slot]`: the values the world may report for a field (its bound).
    pub fn new(dom: &'a CompiledDomain, model: Model, observable: Vec<Vec<Value>>) -> Explorer<'a> {
        // R1 is the runtime's own rule (`CompiledTransition::conflicts_with`), not a copy of it.
        let conflicts = dom
            .transitions
            .iter()
            .map(|tr| {
                let mut mask = 0u64;
                if model.serialize_conflicts {
                    for (p, other) in dom.transitions.iter().enumerate() {
                        if tr.conflicts_with(other) {
                            mask |= 1 << p;
                        }
                    }
                }
                mask
            })
            .collect();
        Explorer {
            dom,
            vm: Vm::new(),
            table: HashTable::new(),
            g: Graph {
                nodes: Vec::new(),
                kinds: Vec::new(),
                parent: Vec::new(),
                depth: Vec::new(),
                succ_off: vec![0],
                succ: Vec::new(),
                goal_ever_true: vec![false; dom.goals.len()],
                lost: None,
                lost_count: 0,
                complete: true,
            },
            conflicts,
            model,
            observable,
            lost_at: Vec::new(),
        }
    }

    /// Adds a node if it is new; returns its index.
    fn intern(&mut self, node: Node, parent: (u32, Edge), depth: u32) -> u32 {
        let h = hash_node(&node);
        let nodes = &self.g.nodes;
        if let Some(&i) = self.table.find(h, |&i| nodes[i as usize] == node) {
            return i;
        }
        let i = self.g.nodes.len() as u32;
        self.g.nodes.push(node);
        self.g.parent.push(parent);
        self.g.depth.push(depth);
        let nodes = &self.g.nodes;
        self.table.insert_unique(h, i, |&j| hash_node(&nodes[j as usize]));
        i
    }

    pub fn add_start(&mut self, values: Vec<Value>, budget: u8) {
        let node = Node { values: values.into_boxed_slice(), blocked: 0, flight: None, cursor: 0, budget };
        self.intern(node, (u32::MAX, Edge::Start), 0);
    }

    /// Explores breadth first until done or `max_states`; calls `progress` now and then.
    pub fn run(mut self, max_states: usize, progress: &mut dyn FnMut(usize, usize)) -> Graph {
        assert!(max_states < WORLD as usize, "node indices leave the top bit for observation edges");
        let mut i = 0usize;
        let mut succs: Vec<(Node, Edge)> = Vec::new();
        while i < self.g.nodes.len() {
            if i.is_multiple_of(65_536) {
                progress(i, self.g.nodes.len());
            }
            let node = self.g.nodes[i].clone();
            succs.clear();
            let kind = self.expand(&node, &mut succs);
            self.g.kinds.push(kind);
            let depth = self.g.depth[i] + 1;
            for (k, (n, e)) in succs.drain(..).enumerate() {
                if self.g.nodes.len() >= max_states {
                    self.g.complete = false;
                    break;
                }
                let world = matches!(e, Edge::Observe { .. });
                let j = self.intern(n, (i as u32, e), depth);
                self.g.succ.push(if world { j | WORLD } else { j });
                if let Some(&(_, t, slot)) = self.lost_at.iter().find(|(at, _, _)| *at == k) {
                    self.g.lost_count += 1;
                    if self.g.lost.is_none() {
                        self.g.lost = Some(LostUpdate { from: i as u32, to: j, t, slot });
                    }
                }
            }
            self.g.succ_off.push(self.g.succ.len() as u32);
            if !self.g.complete {
                break;
            }
            i += 1;
        }
        progress(self.g.kinds.len(), self.g.nodes.len());
        self.g
    }

    /// The successors of any node, for reconstructing the edges of a trace.
    pub fn successors_of(&mut self, node: &Node, out: &mut Vec<(Node, Edge)>) {
        self.expand(node, out);
    }

    /// The node's kind; its successors go to `out`.
    fn expand(&mut self, node: &Node, out: &mut Vec<(Node, Edge)>) -> Kind {
        self.lost_at.clear();
        let dom = self.dom;
        let mut all = true;
        for (gi, goal) in dom.goals.iter().enumerate() {
            match self.vm.eval_bool(&goal.code, &node.values) {
                Ok(true) => self.g.goal_ever_true[gi] = true,
                Ok(false) => all = false,
                Err(fault) => return Kind::Fault { what: format!("goal `{}`", goal.name), fault },
            }
        }
        let flying = node.in_flight();
        if all {
            if flying.is_empty() {
                return Kind::Stable;
            }
            // R2: the goals hold, but not yet in the world. No tick runs; messages come.
            self.results(node, out);
            self.timer(node, out);
            self.observations(node, out);
            return Kind::Waiting;
        }
        let in_flight = flying.iter().fold(0u64, |m, f| m | 1 << f.t);
        if node.cursor > 0 {
            match self.scan(node, node.cursor as usize, in_flight, out) {
                Err(kind) => return kind,
                Ok(true) => return Kind::Moving,
                Ok(false) => {}
            }
        }
        // A tick boundary: any message that has arrived is applied before the next tick,
        // a retry timer that came due included, whether or not a transition could run.
        self.results(node, out);
        match self.scan(node, 0, in_flight, out) {
            Err(kind) => {
                out.clear();
                self.lost_at.clear();
                return kind;
            }
            Ok(_) => self.timer(node, out),
        }
        self.observations(node, out);
        if out.is_empty() {
            Kind::Stuck
        } else {
            Kind::Moving
        }
    }

    /// From transition `from` on, the first one that can run fires: its slice
    /// goes to `out`. `Ok(false)` when none can.
    fn scan(&mut self, node: &Node, from: usize, in_flight: u64, out: &mut Vec<(Node, Edge)>) -> Result<bool, Kind> {
        let dom = self.dom;
        for t in from..dom.transitions.len() {
            if (node.blocked | in_flight) & (1 << t) != 0 || in_flight & self.conflicts[t] != 0 {
                continue;
            }
            let tr = &dom.transitions[t];
            let outcome = match self.vm.run_step(&tr.code, &node.values) {
                Ok(o) => o,
                Err(fault) => return Err(Kind::Fault { what: format!("transition `{}`", tr.name), fault }),
            };
            if outcome.is_noop() {
                continue;
            }
            let mut values = node.values.clone();
            let mut flight = node.in_flight().to_vec();
            if outcome.intents.is_empty() || tr.optimistic {
                for (slot, v) in outcome.writes {
                    touch(&mut flight, slot);
                    values[slot as usize] = v;
                }
                if !outcome.intents.is_empty() {
                    flight.push(Flight { t: t as u16, held: Vec::new() });
                }
            } else {
                let held = outcome.writes.into_iter().map(|(slot, value)| Held { slot, value, dirty: false }).collect();
                flight.push(Flight { t: t as u16, held });
            }
            flight.sort_unstable_by_key(|f| f.t);
            let cursor = (t + 1) as u8;
            out.push((
                Node { values, blocked: node.blocked, flight: pack(flight), cursor, budget: node.budget },
                Edge::Fire { t: t as u16 },
            ));
            return Ok(true);
        }
        Ok(false)
    }

    /// Each transition in flight hears back: success, and failure while the budget lasts.
    fn results(&mut self, node: &Node, out: &mut Vec<(Node, Edge)>) {
        let flying = node.in_flight();
        for (k, f) in flying.iter().enumerate() {
            let others = || -> Vec<Flight> {
                flying.iter().enumerate().filter(|(j, _)| *j != k).map(|(_, x)| x.clone()).collect()
            };
            let mut rest = others();
            let mut values = node.values.clone();
            let mut lost = None;
            for h in &f.held {
                let cell = &mut values[h.slot as usize];
                if *cell != h.value {
                    if h.dirty && lost.is_none() {
                        lost = Some(h.slot);
                    }
                    *cell = h.value.clone();
                    touch(&mut rest, h.slot);
                }
            }
            if let Some(slot) = lost {
                self.lost_at.push((out.len(), f.t, slot));
            }
            out.push((
                Node { values, blocked: node.blocked, flight: pack(rest), cursor: 0, budget: node.budget },
                Edge::Result { t: f.t, ok: true },
            ));
            if node.budget > 0 {
                // The held writes are dropped; the field values did not move, so no one else's did either.
                out.push((
                    Node {
                        values: node.values.clone(),
                        blocked: node.blocked | 1 << f.t,
                        flight: pack(others()),
                        cursor: 0,
                        budget: node.budget - 1,
                    },
                    Edge::Result { t: f.t, ok: false },
                ));
            }
        }
    }

    /// With something backing off, a retry timer may come due at any tick boundary,
    /// each transition's on its own (as the runtime's timer messages do).
    fn timer(&mut self, node: &Node, out: &mut Vec<(Node, Edge)>) {
        let mut blocked = node.blocked;
        while blocked != 0 {
            let t = blocked.trailing_zeros() as u16;
            blocked &= blocked - 1;
            out.push((
                Node {
                    values: node.values.clone(),
                    blocked: node.blocked & !(1u64 << t),
                    flight: node.flight.clone(),
                    cursor: 0,
                    budget: node.budget,
                },
                Edge::Timer { t },
            ));
        }
    }

    /// The world reports another value of a field that a transition in flight holds
    /// a write to: that write (and any other to the field) is dropped. The values:
    /// each write held for the field (the world confirms a prediction before the
    /// acknowledgement), and one value of the bound that is neither that nor the
    /// current one (the world moved elsewhere), or every value of the bound with
    /// [`Model::every_observed_value`].
    fn observations(&mut self, node: &Node, out: &mut Vec<(Node, Edge)>) {
        let flying = node.in_flight();
        let mut slots: Vec<u16> = flying.iter().flat_map(|f| f.held.iter().map(|h| h.slot)).collect();
        slots.sort_unstable();
        slots.dedup();
        for slot in slots {
            let s = slot as usize;
            let mut seen: Vec<&Value> = vec![&node.values[s]];
            let predicted = flying.iter().flat_map(|f| f.held.iter().filter(|h| h.slot == slot).map(|h| &h.value));
            let mut elsewhere = self.observable[s].iter();
            let take_all = self.model.every_observed_value;
            let mut others = 0;
            for v in predicted.chain(std::iter::from_fn(|| elsewhere.next())) {
                if seen.contains(&v) {
                    continue;
                }
                seen.push(v);
                let is_prediction = flying.iter().any(|f| f.held.iter().any(|h| h.slot == slot && h.value == *v));
                if !is_prediction {
                    if !take_all && others == 1 {
                        break;
                    }
                    others += 1;
                }
                let mut values = node.values.clone();
                values[s] = v.clone();
                let flight: Vec<Flight> = flying
                    .iter()
                    .map(|f| Flight { t: f.t, held: f.held.iter().filter(|h| h.slot != slot).cloned().collect() })
                    .collect();
                out.push((
                    Node { values, blocked: node.blocked, flight: pack(flight), cursor: 0, budget: node.budget },
                    Edge::Observe { slot },
                ));
            }
        }
    }
}

impl Graph {
    pub fn successors(&self, i: usize) -> &[u32] {
        &self.succ[self.succ_off[i] as usize..self.succ_off[i + 1] as usize]
    }

    /// The path from a start node to `i`: node indices with the edge that reached each.
    pub fn path_to(&self, i: u32) -> Vec<(u32, Edge)> {
        let mut path = Vec::new();
        let mut cur = i;
        loop {
            let (p, e) = self.parent[cur as usize];
            path.push((cur, e));
            if e == Edge::Start {
                break;
            }
            cur = p;
        }
        path.reverse();
        path
    }

    /// The most slices any start state can take to come to rest (stable, stuck or
    /// faulted), over every choice of failures. Only meaningful without cycles.
    pub fn longest_path(&self) -> u32 {
        let n = self.kinds.len();
        // Longest distance to a node without successors, computed in post-order.
        let mut dist: Vec<Option<u32>> = vec![None; n];
        let mut on_stack = vec![false; n];
        let mut stack: Vec<(u32, usize)> = Vec::new();
        let mut best = 0;
        for root in 0..n {
            if dist[root].is_some() || self.parent[root].1 != Edge::Start {
                continue;
            }
            stack.push((root as u32, 0));
            on_stack[root] = true;
            while let Some(top) = stack.last_mut() {
                let v = top.0 as usize;
                let succ = self.successors(v);
                if top.1 < succ.len() {
                    let w = succ[top.1] as usize;
                    top.1 += 1;
                    if w < n && dist[w].is_none() && !on_stack[w] {
                        on_stack[w] = true;
                        stack.push((w as u32, 0));
                    }
                } else {
                    let d = succ.iter().filter_map(|w| dist.get(*w as usize).copied().flatten()).map(|d| d + 1).max();
                    dist[v] = Some(d.unwrap_or(0));
                    on_stack[v] = false;
                    stack.pop();
                }
            }
            best = best.max(dist[root].unwrap_or(0));
        }
        best
    }

    /// A cycle among expanded nodes, if any: the nodes on it, starting from the one
    /// entered first. Stable nodes have no successors, so a cycle never reaches the goals.
    pub fn find_cycle(&self) -> Option<Vec<u32>> {
        let n = self.kinds.len();
        // 0 unvisited, 1 on the stack, 2 done.
        let mut color = vec![0u8; n];
        let mut stack: Vec<(u32, usize)> = Vec::new();
        for root in 0..n {
            if color[root] != 0 {
                continue;
            }
            stack.push((root as u32, 0));
            color[root] = 1;
            while let Some(top) = stack.last_mut() {
                let v = top.0 as usize;
                let succ = self.successors(v);
                if top.1 < succ.len() {
                    let w = succ[top.1] as usize;
                    top.1 += 1;
                    if w >= n {
                        continue;
                    }
                    match color[w] {
                        0 => {
                            color[w] = 1;
                            stack.push((w as u32, 0));
                        }
                        1 => {
                            let from = stack.iter().position(|(x, _)| *x as usize == w).unwrap_or(0);
                            return Some(stack[from..].iter().map(|(x, _)| *x).collect());
                        }
                        _ => {}
                    }
                } else {
                    color[v] = 2;
                    stack.pop();
                }
            }
        }
        None
    }
}
