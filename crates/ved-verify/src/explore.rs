//! The state graph of one domain, explored breadth first from every start state.
//!
//! A node is the domain's state plus what the scheduler knows: where the
//! current tick is (`cursor`), which transitions are backing off after a failed
//! intent (`blocked`), and how many more intents may fail (`budget`). Its
//! successors follow the runtime's rules exactly, slice by slice:
//!
//! - if every goal holds, the node is stable and has none;
//! - otherwise the first transition from `cursor` on that is not blocked and
//!   whose step is not a no-op fires: one successor where its intents succeed
//!   (its writes apply) and, while `budget` lasts and it emitted, one where an
//!   intent fails (its writes are dropped, unless it is `optimistic`, and it is
//!   blocked);
//! - past the last transition, a tick that fired something starts again from
//!   the first; a tick that fired nothing waits for the retry timers (one
//!   successor that unblocks everything) or, with nothing blocked, is stuck.
//!
//! The one simplification: an intent's result arrives before the next slice.

use hashbrown::HashTable;
use rustc_hash::FxHasher;
use std::hash::{Hash, Hasher};
use ved_vm::{CompiledDomain, CompiledTransition, Fault, Op, Value, Vm};

/// The state fields a transition's step may read and may write, in any branch:
/// every field it loads and every field it assigns, as sorted slots.
///
/// The runtime serializes conflicting transitions on these sets. Until
/// `CompiledTransition` carries them (`reads`, `writes`), they are derived here
/// from the bytecode; this function is the one place to swap for those fields.
pub fn access_sets(tr: &CompiledTransition) -> (Vec<u16>, Vec<u16>) {
    let mut reads = Vec::new();
    let mut writes = Vec::new();
    for op in &tr.code.ops {
        match *op {
            Op::LoadField(slot) => reads.push(slot),
            Op::StoreField(slot) => writes.push(slot),
            _ => {}
        }
    }
    for v in [&mut reads, &mut writes] {
        v.sort_unstable();
        v.dedup();
    }
    (reads, writes)
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Node {
    pub values: Box<[Value]>,
    pub cursor: u8,
    pub blocked: u64,
    pub budget: u8,
}

/// How a node was reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Edge {
    Start,
    /// Transition `t` fired; `failed` when one of its intents failed.
    Fire {
        t: u16,
        failed: bool,
    },
    /// Retry timers fired: blocked transitions may run again.
    Timer,
}

/// What a node is.
#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    Stable,
    Moving,
    /// Goals false, nothing can run, nothing is blocked.
    Stuck,
    /// A goal or a step faulted here.
    Fault {
        what: String,
        fault: Fault,
    },
}

/// The explored graph. Node 0.. are in breadth-first order, so indices grow with depth.
pub struct Graph {
    pub nodes: Vec<Node>,
    pub kinds: Vec<Kind>,
    pub parent: Vec<(u32, Edge)>,
    pub depth: Vec<u32>,
    /// Successors of node `i`: `succ[succ_off[i]..succ_off[i + 1]]`.
    pub succ_off: Vec<u32>,
    pub succ: Vec<u32>,
    /// Per goal: whether it held in some node.
    pub goal_ever_true: Vec<bool>,
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
}

impl<'a> Explorer<'a> {
    pub fn new(dom: &'a CompiledDomain) -> Explorer<'a> {
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
                complete: true,
            },
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
        let node = Node { values: values.into_boxed_slice(), cursor: 0, blocked: 0, budget };
        self.intern(node, (u32::MAX, Edge::Start), 0);
    }

    /// Explores breadth first until done or `max_states`; calls `progress` now and then.
    pub fn run(mut self, max_states: usize, progress: &mut dyn FnMut(usize, usize)) -> Graph {
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
            for (n, e) in succs.drain(..) {
                if self.g.nodes.len() >= max_states {
                    self.g.complete = false;
                    break;
                }
                let j = self.intern(n, (i as u32, e), depth);
                self.g.succ.push(j);
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
        let dom = self.dom;
        let mut all = true;
        for (gi, goal) in dom.goals.iter().enumerate() {
            match self.vm.eval_bool(&goal.code, &node.values) {
                Ok(true) => self.g.goal_ever_true[gi] = true,
                Ok(false) => all = false,
                Err(fault) => return Kind::Fault { what: format!("goal `{}`", goal.name), fault },
            }
        }
        if all {
            return Kind::Stable;
        }
        let mut from = node.cursor as usize;
        loop {
            for t in from..dom.transitions.len() {
                if node.blocked & (1 << t) != 0 {
                    continue;
                }
                let tr = &dom.transitions[t];
                let outcome = match self.vm.run_step(&tr.code, &node.values) {
                    Ok(o) => o,
                    Err(fault) => return Kind::Fault { what: format!("transition `{}`", tr.name), fault },
                };
                if outcome.is_noop() {
                    continue;
                }
                let mut applied = node.values.to_vec();
                for (slot, v) in &outcome.writes {
                    applied[*slot as usize] = v.clone();
                }
                let cursor = (t + 1) as u8;
                // The success first, so that breadth-first traces prefer it.
                let failed = (!outcome.intents.is_empty() && node.budget > 0).then(|| Node {
                    values: if tr.optimistic { applied.clone() } else { node.values.to_vec() }.into_boxed_slice(),
                    cursor,
                    blocked: node.blocked | (1 << t),
                    budget: node.budget - 1,
                });
                out.push((
                    Node { values: applied.into_boxed_slice(), cursor, blocked: node.blocked, budget: node.budget },
                    Edge::Fire { t: t as u16, failed: false },
                ));
                if let Some(f) = failed {
                    out.push((f, Edge::Fire { t: t as u16, failed: true }));
                }
                return Kind::Moving;
            }
            if from == 0 {
                break;
            }
            // The tick fired something; the next one starts from the first transition.
            from = 0;
        }
        if node.blocked != 0 {
            out.push((Node { values: node.values.clone(), cursor: 0, blocked: 0, budget: node.budget }, Edge::Timer));
            return Kind::Moving;
        }
        Kind::Stuck
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
