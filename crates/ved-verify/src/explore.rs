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
//!
//! How the graph is stored, for speed and memory (none of it changes the graph:
//! `tests/packed.rs` compares it with the general representation on every
//! program `ved verify` is tested on):
//! - **Packed nodes.** When every field's bound is finite (an int range, bools, a
//!   list of values), a node with nothing in flight whose values fit is a
//!   fixed-width key of one to four `u64`s: each field's code (an int's offset
//!   from the bound's least value, in as many bits as the bound needs, so
//!   `0..99` takes 7 bits and holds 0..127; an index into the bound's list), the
//!   cursor, the budget and the backing-off mask. Keys sit in one flat vector;
//!   the hash table holds node numbers and the keys' 32-bit hashes. Any other
//!   node (a value outside its field's code, something in flight) is kept whole,
//!   as a [`Node`], in a second table; the key slot then names it. The same node
//!   is always stored the same way, so each is found once.
//! - **Remembered code.** A goal or a step is pure: what it does depends only on
//!   the fields it loads and stores (`ved_vm::access_sets`, the sets the runtime
//!   serializes on). On a packed node those fields' codes index a table per goal
//!   (true, false) and per step (a no-op, or its writes as codes), so the VM runs
//!   once per combination and a successor's key is its parent's with a few bit
//!   fields replaced. Steps with intents, faults, and writes that do not pack run
//!   the VM every time. A goal of single comparisons joined by `&&` has a table
//!   per comparison instead (`conjuncts`). A packed node whose goals and steps
//!   are all remembered this way is expanded on a fast path that writes its
//!   successors' keys directly (`expand_packed`); any other goes through `expand`.
//! - **A hash with locality.** Keys that differ only in their low bits share a
//!   block of buckets (`hash_key`), and the last field sits lowest: consecutive
//!   nodes, breadth first, are looked up in the same cache lines.
//! - **Per node** besides its key: its kind (one byte; faults on the side), its
//!   parent and edge (eight bytes), its successors (four bytes each, plus an
//!   offset). Node numbers are given in breadth-first order, one at a time, so
//!   they are the same on every run.

use hashbrown::HashTable;
use rustc_hash::{FxHashMap, FxHasher};
use std::hash::{Hash, Hasher};
use ved_vm::{CompiledDomain, CompiledTransition, Fault, Op, StepOutcome, Value, Vm};

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

impl Edge {
    /// Four bytes (as `expand` hands successors on, and as parents are kept): the variant in the top three bits, `ok` in bit 16, `t` or `slot` below.
    fn pack(self) -> u32 {
        match self {
            Edge::Start => 0,
            Edge::Fire { t } => 1 << 29 | u32::from(t),
            Edge::Result { t, ok } => 2 << 29 | u32::from(ok) << 16 | u32::from(t),
            Edge::Observe { slot } => 3 << 29 | u32::from(slot),
            Edge::Timer { t } => 4 << 29 | u32::from(t),
        }
    }

    fn unpack(x: u32) -> Edge {
        let low = x as u16;
        match x >> 29 {
            0 => Edge::Start,
            1 => Edge::Fire { t: low },
            2 => Edge::Result { t: low, ok: x & 1 << 16 != 0 },
            3 => Edge::Observe { slot: low },
            _ => Edge::Timer { t: low },
        }
    }
}

/// What a node is: one byte per node; a fault's details are in [`Graph::faults`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Every goal holds and nothing is in flight.
    Stable,
    /// Every goal holds but something is in flight (R2): not stable yet.
    Waiting,
    Moving,
    /// Goals false, nothing can run, nothing in flight, nothing backing off.
    Stuck,
    /// A goal or a step faulted here.
    Fault,
}

/// A goal or a step that faulted: which one, and the fault.
#[derive(Clone, Debug, PartialEq)]
pub struct Faulted {
    pub what: String,
    pub fault: Fault,
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

/// One bit field of a packed node: in word `word`, `bits` wide from bit `shift`.
#[derive(Clone, Copy, Debug)]
struct Bits {
    word: u8,
    shift: u8,
    bits: u8,
    /// `bits` ones.
    mask: u64,
}

impl Bits {
    fn new(word: usize, shift: u32, bits: u32) -> Bits {
        let mask = if bits == 64 { u64::MAX } else { (1u64 << bits) - 1 };
        Bits { word: word as u8, shift: shift as u8, bits: bits as u8, mask }
    }

    #[inline]
    fn mask(self) -> u64 {
        self.mask
    }

    #[inline]
    fn get(self, key: &[u64]) -> u64 {
        (key[self.word as usize] >> self.shift) & self.mask
    }

    #[inline]
    fn set(self, key: &mut [u64], x: u64) {
        let m = self.mask << self.shift;
        let w = &mut key[self.word as usize];
        *w = (*w & !m) | (x << self.shift & m);
    }
}

/// How one field's value becomes bits.
#[derive(Clone, Debug)]
enum Code {
    /// `lo + n` for `n` that fits the bits.
    Int {
        lo: i64,
    },
    Bool,
    /// The position in the field's bound (strings, lists, sets, a map's one value).
    Index {
        values: Vec<Value>,
        of: FxHashMap<Value, u32>,
    },
}

/// The packed form of a node: when every field's bound is finite (an int range,
/// a bool, or a list of values), a node with nothing in flight is its fields'
/// codes plus cursor, budget and backing-off mask, in one to [`MAX_WORDS`] `u64`s.
/// Bit 63 of word 0 is never used, so that a stored key with it set can name a
/// node kept whole instead (a value outside the bound, or something in flight).
#[derive(Clone, Debug)]
struct Codec {
    fields: Vec<(Code, Bits)>,
    cursor: Bits,
    budget: Bits,
    blocked: Bits,
    words: usize,
}

/// Keys are at most this many words; a domain whose bounds need more keeps whole nodes.
const MAX_WORDS: usize = 4;
/// A stored key whose word 0 has this bit names a whole node: the rest is its index.
const WHOLE: u64 = 1 << 63;

/// Bits to count `n` distinct codes (0 for one).
fn bits_for(n: u128) -> u32 {
    128 - n.saturating_sub(1).leading_zeros()
}

impl Codec {
    fn new(observable: &[Vec<Value>], transitions: usize) -> Option<Codec> {
        let mut widths: Vec<u32> = Vec::new();
        let mut codes = Vec::new();
        for values in observable {
            let ints: Vec<i64> =
                values.iter().filter_map(|v| if let Value::Int(n) = v { Some(*n) } else { None }).collect();
            let bools = values.iter().all(|v| matches!(v, Value::Bool(_)));
            let (code, bits) = if !values.is_empty() && ints.len() == values.len() {
                let (lo, hi) = (*ints.iter().min()?, *ints.iter().max()?);
                (Code::Int { lo }, bits_for((hi as i128 - lo as i128 + 1) as u128))
            } else if !values.is_empty() && bools {
                (Code::Bool, 1)
            } else {
                let mut of = FxHashMap::default();
                for (k, v) in values.iter().enumerate() {
                    of.entry(v.clone()).or_insert(k as u32);
                }
                (Code::Index { values: values.clone(), of }, bits_for(values.len() as u128))
            };
            if bits > 63 {
                return None;
            }
            codes.push(code);
            widths.push(bits);
        }
        // cursor 0..=transitions, budget a u8, one backing-off bit per transition.
        widths.extend([bits_for(transitions as u128 + 1), 8, transitions as u32]);
        // The last field in the lowest bits: start states are made with the last
        // field moving fastest, so consecutive nodes' keys differ in their low bits,
        // which keeps them near one another in the table (see `hash_key`).
        let n = codes.len();
        let order = (0..n).rev().chain(n..widths.len());
        let mut at = vec![Bits::new(0, 0, 0); widths.len()];
        let (mut word, mut used) = (0usize, 0u32);
        for k in order {
            let w = widths[k];
            let room = if word == 0 { 63 } else { 64 };
            if used + w > room {
                word += 1;
                used = 0;
                if w > 64 {
                    return None;
                }
            }
            at[k] = Bits::new(word, if w == 0 { 0 } else { used }, w);
            used += w;
        }
        let words = word + 1;
        if words > MAX_WORDS {
            return None;
        }
        Some(Codec {
            fields: codes.into_iter().zip(at.iter().copied()).collect(),
            cursor: at[n],
            budget: at[n + 1],
            blocked: at[n + 2],
            words,
        })
    }

    fn encode_value(&self, slot: usize, v: &Value) -> Option<u64> {
        let (code, bits) = &self.fields[slot];
        let x = match (code, v) {
            (Code::Int { lo }, Value::Int(n)) => u64::try_from(*n as i128 - *lo as i128).ok()?,
            (Code::Bool, Value::Bool(b)) => u64::from(*b),
            (Code::Index { of, .. }, v) => u64::from(*of.get(v)?),
            _ => return None,
        };
        (x <= bits.mask()).then_some(x)
    }

    fn set_value(&self, key: &mut [u64], slot: usize, v: &Value) -> Option<()> {
        let x = self.encode_value(slot, v)?;
        self.fields[slot].1.set(key, x);
        Some(())
    }

    #[inline]
    fn set_meta(&self, key: &mut [u64], blocked: u64, cursor: u8, budget: u8) {
        self.blocked.set(key, blocked);
        self.cursor.set(key, u64::from(cursor));
        self.budget.set(key, u64::from(budget));
    }

    /// The key of a node with nothing in flight, if each value fits its field.
    fn encode(&self, values: &[Value], blocked: u64, cursor: u8, budget: u8) -> Option<[u64; MAX_WORDS]> {
        let mut key = [0u64; MAX_WORDS];
        for (slot, v) in values.iter().enumerate() {
            self.set_value(&mut key, slot, v)?;
        }
        self.set_meta(&mut key, blocked, cursor, budget);
        Some(key)
    }

    /// The values of a key, into `out`: in place when `out` holds a node's values
    /// already (an int or a bool is overwritten, nothing allocated or dropped).
    fn decode_values(&self, key: &[u64], out: &mut Vec<Value>) {
        if out.len() == self.fields.len() {
            for ((code, bits), v) in self.fields.iter().zip(out.iter_mut()) {
                let x = bits.get(key);
                match (code, v) {
                    (Code::Int { lo }, Value::Int(n)) => *n = lo.wrapping_add(x as i64),
                    (Code::Bool, Value::Bool(b)) => *b = x != 0,
                    (Code::Index { values, .. }, v) => {
                        if *v != values[x as usize] {
                            *v = values[x as usize].clone();
                        }
                    }
                    (Code::Int { lo }, v) => *v = Value::Int(lo.wrapping_add(x as i64)),
                    (Code::Bool, v) => *v = Value::Bool(x != 0),
                }
            }
            return;
        }
        out.clear();
        out.extend(self.fields.iter().map(|(code, bits)| {
            let x = bits.get(key);
            match code {
                Code::Int { lo } => Value::Int(lo.wrapping_add(x as i64)),
                Code::Bool => Value::Bool(x != 0),
                Code::Index { values, .. } => values[x as usize].clone(),
            }
        }));
    }

    #[inline]
    fn meta(&self, key: &[u64]) -> (u64, u8, u8) {
        (self.blocked.get(key), self.cursor.get(key) as u8, self.budget.get(key) as u8)
    }
}

/// The nodes of a graph: a fixed-width key per node in one flat vector, packed
/// by the [`Codec`] where the node allows it, else naming a whole [`Node`].
struct Store {
    codec: Option<Codec>,
    words: usize,
    /// Nodes stored: `keys.len() / words`, kept so as not to divide.
    n: usize,
    keys: Vec<u64>,
    whole: Vec<Node>,
}

impl Store {
    fn len(&self) -> usize {
        self.n
    }

    fn key(&self, i: usize) -> &[u64] {
        &self.keys[i * self.words..(i + 1) * self.words]
    }

    /// The index into `whole` when node `i` is kept whole.
    fn whole_index(&self, i: usize) -> Option<usize> {
        let k0 = self.keys[i * self.words];
        (k0 & WHOLE != 0).then_some((k0 & !WHOLE) as usize)
    }

    fn node(&self, i: usize) -> Node {
        match (self.whole_index(i), &self.codec) {
            (Some(w), _) => self.whole[w].clone(),
            (None, Some(c)) => {
                let key = self.key(i);
                let mut values = Vec::with_capacity(c.fields.len());
                c.decode_values(key, &mut values);
                let (blocked, cursor, budget) = c.meta(key);
                Node { values: values.into_boxed_slice(), blocked, flight: None, cursor, budget }
            }
            (None, None) => unreachable!("a packed key without a codec"),
        }
    }
}

/// A goal's or a step's result, remembered by the codes of the fields it loads
/// and stores (the VM's own access sets, [`ved_vm::access_sets`]): the code is
/// pure, so on a packed node those bits decide what it does. A dense table of
/// `2^bits` entries; code touching more bits is not remembered.
struct Memo<T> {
    /// Where each touched field sits in a node key, and where in the memo index.
    parts: Vec<(Bits, u8)>,
    table: Vec<T>,
}

/// Memo entries: not yet known; a goal false / true; a step that is a no-op, or
/// whose outcome has no packed form (intents, or a value outside its field's
/// bound): run it. Step entries from `DELTA` on name `Explorer::deltas[e - DELTA]`.
const UNKNOWN: u32 = 0;
const FALSE: u8 = 1;
const TRUE: u8 = 2;
const NOOP: u32 = 1;
const RUN: u32 = 2;
const DELTA: u32 = 3;

impl<T: Copy + Default> Memo<T> {
    fn new(codec: &Codec, slots: &[u16], max_bits: u32) -> Option<Memo<T>> {
        let mut parts = Vec::with_capacity(slots.len());
        let mut bits = 0u32;
        // The last field in the lowest bits, as in the keys (see `Codec::new`):
        // nodes met one after the other then use entries near one another.
        for &slot in slots.iter().rev() {
            let b = codec.fields.get(slot as usize)?.1;
            parts.push((b, bits as u8));
            bits += u32::from(b.bits);
            if bits > max_bits {
                return None;
            }
        }
        // Zeroed pages: only the entries used are ever touched.
        Some(Memo { parts, table: vec![T::default(); 1 << bits] })
    }

    #[inline]
    fn slot(&mut self, key: &[u64]) -> &mut T {
        let ix = self.parts.iter().fold(0usize, |ix, (b, at)| ix | (b.get(key) as usize) << at);
        &mut self.table[ix]
    }
}

/// Goals remembered up to this many bits (a table of 4 MiB at most) ...
const GOAL_MEMO_BITS: u32 = 22;
/// ... and steps up to this many (4 MiB each at most).
const STEP_MEMO_BITS: u32 = 20;

/// A goal that is `a && b && ...` of single comparisons of a field with a
/// constant or another field, as the comparisons, each a goal of its own; `None`
/// for any other goal. The goal holds exactly when each of them does, and none
/// can fault (a comparison of values never does), so on a packed node each is
/// remembered over the fields it reads alone: tables of a few entries that fill
/// at once, where one table over every field the goal reads needs the VM once
/// per combination of their values.
///
/// `x == 50 && y == 50 && z == 50` lowers to `FieldCmpConst, JumpIfFalseOrPop,
/// FieldCmpConst, JumpIfFalseOrPop, FieldCmpConst`: each jump, taken on false,
/// keeps the false and lands at the end or on a later such jump.
fn conjuncts(code: &ved_vm::Code) -> Option<Vec<ved_vm::Code>> {
    let ops = &code.ops;
    if ops.len() < 3 || ops.len().is_multiple_of(2) {
        return None;
    }
    let mut parts = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        if i % 2 == 1 {
            let Op::JumpIfFalseOrPop(to) = *op else { return None };
            let to = to as usize;
            if to <= i || !(to == ops.len() || matches!(ops.get(to), Some(Op::JumpIfFalseOrPop(_)))) {
                return None;
            }
            continue;
        }
        let (op, consts) = match *op {
            Op::FieldCmpConst(slot, cmp, k) => {
                (Op::FieldCmpConst(slot, cmp, 0), vec![code.consts.get(k as usize)?.clone()])
            }
            Op::FieldCmpField(a, b, cmp) => (Op::FieldCmpField(a, b, cmp), Vec::new()),
            _ => return None,
        };
        parts.push(ved_vm::Code {
            ops: vec![op],
            spans: vec![*code.spans.get(i)?],
            consts,
            emits: Vec::new(),
            locals: 0,
            max_stack: 1,
        });
    }
    Some(parts)
}

/// A goal's comparisons (see [`conjuncts`]), each with its table.
type GoalParts = Vec<(ved_vm::Code, Memo<u8>)>;

/// What a step does on a node.
enum Stepped {
    Noop,
    /// Its writes, packed: `Explorer::deltas[_]`.
    Packed(u32),
    Ran(StepOutcome),
}

/// The explored graph. Node 0.. are in breadth-first order, so indices grow with depth.
pub struct Graph {
    store: Store,
    /// Per expanded node.
    pub kinds: Vec<Kind>,
    /// The faulted nodes, ascending, with what faulted.
    pub faults: Vec<(u32, Faulted)>,
    /// Per node: its parent and the edge from it, packed ([`Graph::parent`]).
    parents: Vec<(u32, u32)>,
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

/// Key equality without a call to `bcmp` for the usual one word.
#[inline]
fn same_key(a: &[u64], b: &[u64]) -> bool {
    match (a, b) {
        ([x], [y]) => x == y,
        _ => a == b,
    }
}

fn hash_node(n: &Node) -> u64 {
    let mut h = FxHasher::default();
    n.hash(&mut h);
    h.finish()
}

/// A packed key's 32-bit hash, for a table that keys which differ only in their
/// low four bits share: bits 4..25 are a mix (the finalizer of SplitMix64) of
/// the key without those four bits, bits 0..4 are the four bits themselves, and
/// bits 25..32, the table's control byte, mix them too. Breadth first, nodes met
/// one after the other mostly differ in their low bits (the last field, see
/// [`Codec::new`]), so their lookups land in the same few cache lines instead of
/// one random line each; at most sixteen keys share a block of sixteen buckets,
/// so no cluster grows longer than a probe group.
#[inline]
fn hash_key(key: &[u64]) -> u32 {
    let low = key[0] & 15;
    let mut h = 0u64;
    for (k, &w) in key.iter().enumerate() {
        let w = if k == 0 { w >> 4 } else { w };
        h = (h ^ w).wrapping_add(0x9E37_79B9_7F4A_7C15);
        h = (h ^ (h >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        h ^= h >> 31;
    }
    let tag = ((h >> 57) as u32 ^ low as u32) & 0x7F;
    (h as u32 & 0x01FF_FFF0) | low as u32 | tag << 25
}

/// The table's 64-bit hash from a stored 32-bit one: the same bits give the
/// bucket (the low ones) and the control byte (the top seven).
#[inline]
fn spread(h: u32) -> u64 {
    u64::from(h) << 32 | u64::from(h)
}

/// A successor as `expand` makes it.
#[derive(Clone, Debug)]
enum Succ {
    /// The expanded node's values with these writes, nothing in flight: built
    /// from the expanded node's key without unpacking it.
    Delta {
        writes: Vec<(u16, Value)>,
        blocked: u64,
        cursor: u8,
        budget: u8,
    },
    Whole(Node),
    /// The expanded (packed) node's key with a remembered step's packed writes.
    Packed {
        delta: u32,
        blocked: u64,
        cursor: u8,
        budget: u8,
    },
}

/// The values of the node being expanded: a whole node's, or a packed node's
/// unpacked into `scratch` (once per node).
fn unpacked<'s>(store: &Store, scratch: &'s mut Vec<Value>, ok: &mut bool, node: At<'s>) -> &'s [Value] {
    match (node.key, &store.codec) {
        (Some(key), Some(c)) => {
            if !*ok {
                c.decode_values(key, scratch);
                *ok = true;
            }
            scratch
        }
        _ => node.values,
    }
}

/// The node being expanded.
#[derive(Clone, Copy)]
struct At<'n> {
    /// Its key, when it is packed; then `values` is empty (see [`unpacked`]).
    key: Option<&'n [u64]>,
    values: &'n [Value],
    blocked: u64,
    flight: &'n Option<Box<Flights>>,
    cursor: u8,
    budget: u8,
}

impl<'n> At<'n> {
    fn of(n: &'n Node) -> At<'n> {
        At { key: None, values: &n.values, blocked: n.blocked, flight: &n.flight, cursor: n.cursor, budget: n.budget }
    }

    fn in_flight(&self) -> &'n [Flight] {
        self.flight.as_deref().map_or(&[], |f| &f.0)
    }

    fn whole(&self, s: Succ) -> Node {
        match s {
            Succ::Whole(n) => n,
            Succ::Delta { writes, blocked, cursor, budget } => {
                let mut values: Box<[Value]> = self.values.into();
                for (slot, v) in writes {
                    values[slot as usize] = v;
                }
                Node { values, blocked, flight: None, cursor, budget }
            }
            Succ::Packed { .. } => unreachable!("a packed step on a node kept whole"),
        }
    }
}

pub struct Explorer<'a> {
    dom: &'a CompiledDomain,
    vm: Vm,
    /// Packed nodes, by key: (node, the key's 32-bit hash), so that growing the
    /// table never reads the keys again.
    table: HashTable<(u32, u32)>,
    /// Nodes kept whole, by value.
    whole_table: HashTable<u32>,
    g: Graph,
    /// Per transition: the transitions whose flight blocks it (R1), as a mask.
    conflicts: Vec<u64>,
    model: Model,
    /// Per field: the values an observation may report.
    observable: Vec<Vec<Value>>,
    /// Set by `expand`: the successors (by position) whose result overwrote a
    /// change, with the transition and the field.
    lost_at: Vec<(usize, u16, u16)>,
    /// The values of the node being expanded, when it is packed: unpacked only
    /// when the VM runs (`scratch_ok`), which remembered code makes rare.
    scratch: Vec<Value>,
    scratch_ok: bool,
    /// Per goal and per transition, on packed nodes.
    goal_memo: Vec<Option<Memo<u8>>>,
    /// Per goal that is a conjunction of single comparisons (`x == 50 && y == 50`):
    /// each comparison with its own table, over the one or two fields it reads, in
    /// place of one table over all of them (see [`conjuncts`]).
    goal_parts: Vec<Option<GoalParts>>,
    step_memo: Vec<Option<Memo<u32>>>,
    /// The packed writes of remembered steps: (slot, code).
    deltas: Vec<Box<[(u16, u64)]>>,
    /// Per field and bound value: its bits in a key, `None` when it does not
    /// pack; made at the first [`Explorer::add_start_at`].
    start_codes: Vec<Vec<Option<[u64; MAX_WORDS]>>>,
}

impl<'a> Explorer<'a> {
    /// `observable[slot]`: the values the world may report for a field (its bound).
    /// Nodes are stored packed when the bounds allow it (see [`Explorer::unpacked`]).
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
        let codec = Codec::new(&observable, dom.transitions.len());
        let goal_parts: Vec<Option<GoalParts>> = dom
            .goals
            .iter()
            .map(|g| {
                let c = codec.as_ref()?;
                conjuncts(&g.code)?
                    .into_iter()
                    .map(|part| {
                        let memo = Memo::new(c, &ved_vm::access_sets(&part).0, GOAL_MEMO_BITS)?;
                        Some((part, memo))
                    })
                    .collect()
            })
            .collect();
        let goal_memo = dom
            .goals
            .iter()
            .zip(&goal_parts)
            .map(|(g, parts)| {
                let c = codec.as_ref().filter(|_| parts.is_none())?;
                Memo::new(c, &ved_vm::access_sets(&g.code).0, GOAL_MEMO_BITS)
            })
            .collect();
        let step_memo = dom
            .transitions
            .iter()
            .map(|tr| {
                let mut touched: Vec<u16> = tr.reads.iter().chain(&tr.writes).copied().collect();
                touched.sort_unstable();
                touched.dedup();
                codec.as_ref().and_then(|c| Memo::new(c, &touched, STEP_MEMO_BITS))
            })
            .collect();
        Explorer {
            dom,
            vm: Vm::new(),
            table: HashTable::new(),
            whole_table: HashTable::new(),
            g: Graph {
                store: Store {
                    words: codec.as_ref().map_or(1, |c| c.words),
                    n: 0,
                    codec,
                    keys: Vec::new(),
                    whole: Vec::new(),
                },
                kinds: Vec::new(),
                faults: Vec::new(),
                parents: Vec::new(),
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
            scratch: Vec::new(),
            scratch_ok: false,
            goal_memo,
            goal_parts,
            start_codes: Vec::new(),
            step_memo,
            deltas: Vec::new(),
        }
    }

    /// Keeps every node whole (as a [`Node`]): the general representation, which
    /// the packed one must match exactly (the tests compare the two graphs).
    /// Call before adding start states.
    pub fn unpacked(mut self) -> Explorer<'a> {
        assert_eq!(self.g.store.len(), 0, "unpacked() comes before the start states");
        self.g.store.codec = None;
        self.g.store.words = 1;
        self.goal_memo.iter_mut().for_each(|m| *m = None);
        self.goal_parts.iter_mut().for_each(|m| *m = None);
        self.step_memo.iter_mut().for_each(|m| *m = None);
        self
    }

    fn push(&mut self, parent: (u32, Edge)) -> u32 {
        self.g.parents.push((parent.0, parent.1.pack()));
        self.g.store.n += 1;
        (self.g.store.n - 1) as u32
    }

    /// Adds a packed node if it is new; returns its index.
    fn intern_key(&mut self, key: &[u64], parent: (u32, Edge)) -> u32 {
        let h = hash_key(key);
        let store = &self.g.store;
        if let Some(&(i, _)) = self.table.find(spread(h), |&(i, hi)| hi == h && same_key(store.key(i as usize), key)) {
            return i;
        }
        if let [k] = key {
            self.g.store.keys.push(*k);
        } else {
            self.g.store.keys.extend_from_slice(key);
        }
        let i = self.push(parent);
        self.table.insert_unique(spread(h), (i, h), |&(_, hj)| spread(hj));
        i
    }

    /// Adds a node if it is new; returns its index. Packed when it packs.
    fn intern(&mut self, node: Node, parent: (u32, Edge)) -> u32 {
        if let Some(c) = &self.g.store.codec {
            if node.flight.is_none() {
                if let Some(key) = c.encode(&node.values, node.blocked, node.cursor, node.budget) {
                    let w = c.words;
                    return self.intern_key(&key[..w], parent);
                }
            }
        }
        let h = hash_node(&node);
        let store = &self.g.store;
        let same = |&i: &u32| store.whole_index(i as usize).is_some_and(|w| store.whole[w] == node);
        if let Some(&i) = self.whole_table.find(h, same) {
            return i;
        }
        let words = self.g.store.words;
        let w = self.g.store.whole.len() as u64;
        self.g.store.keys.push(WHOLE | w);
        self.g.store.keys.extend(std::iter::repeat_n(0, words - 1));
        self.g.store.whole.push(node);
        let i = self.push(parent);
        let store = &self.g.store;
        self.whole_table.insert_unique(h, i, |&j| hash_node(&store.whole[store.whole_index(j as usize).unwrap()]));
        i
    }

    /// Runs the VM for every goal and step, remembering nothing: for tests that
    /// check the remembered results against it. Call before adding start states.
    pub fn forgetful(mut self) -> Explorer<'a> {
        self.goal_memo.iter_mut().for_each(|m| *m = None);
        self.goal_parts.iter_mut().for_each(|m| *m = None);
        self.step_memo.iter_mut().for_each(|m| *m = None);
        self
    }

    /// Makes room for `n` more nodes in the tables (the start states, say).
    pub fn reserve(&mut self, n: usize) {
        self.table.reserve(n, |&(_, h)| spread(h));
        self.g.store.keys.reserve(n * self.g.store.words);
        self.g.parents.reserve(n);
    }

    pub fn add_start(&mut self, values: Vec<Value>, budget: u8) {
        self.add_start_from(&values, budget);
    }

    /// [`Explorer::add_start`] from borrowed values.
    pub fn add_start_from(&mut self, values: &[Value], budget: u8) {
        if let Some(c) = &self.g.store.codec {
            if let Some(key) = c.encode(values, 0, 0, budget) {
                let w = c.words;
                self.intern_key(&key[..w], (u32::MAX, Edge::Start));
                return;
            }
        }
        let node = Node { values: values.into(), blocked: 0, flight: None, cursor: 0, budget };
        self.intern(node, (u32::MAX, Edge::Start));
    }

    /// [`Explorer::add_start`] of the state whose field `k` is the `at[k]`th value of
    /// its bound (`observable[k]`): packed without making the values when they pack.
    pub fn add_start_at(&mut self, at: &[usize], budget: u8) {
        if let Some(c) = &self.g.store.codec {
            if self.start_codes.is_empty() {
                // Each bound value's bits, in place in a key.
                self.start_codes = self
                    .observable
                    .iter()
                    .enumerate()
                    .map(|(slot, values)| {
                        values
                            .iter()
                            .map(|v| {
                                let mut key = [0u64; MAX_WORDS];
                                c.set_value(&mut key, slot, v).map(|()| key)
                            })
                            .collect()
                    })
                    .collect();
            }
            let mut key = [0u64; MAX_WORDS];
            let mut fits = true;
            for (codes, &i) in self.start_codes.iter().zip(at) {
                match &codes[i] {
                    Some(bits) => key.iter_mut().zip(bits).for_each(|(k, b)| *k |= b),
                    None => fits = false,
                }
            }
            if fits {
                let w = c.words;
                c.set_meta(&mut key[..w], 0, 0, budget);
                self.intern_key(&key[..w], (u32::MAX, Edge::Start));
                return;
            }
        }
        let values: Vec<Value> = self.observable.iter().zip(at).map(|(vs, &i)| vs[i].clone()).collect();
        self.add_start_from(&values, budget);
    }

    /// Explores breadth first until done or `max_states`; calls `progress` now and then.
    pub fn run(mut self, max_states: usize, progress: &mut dyn FnMut(usize, usize)) -> Graph {
        assert!(max_states < WORLD as usize, "node indices leave the top bit for observation edges");
        let mut i = 0usize;
        let mut succs: Vec<(Succ, u32)> = Vec::new();
        let mut next: Vec<([u64; MAX_WORDS], u32)> = Vec::new();
        let mut key = [0u64; MAX_WORDS];
        let words = self.g.store.words;
        while i < self.g.store.len() {
            if i.is_multiple_of(65_536) {
                progress(i, self.g.store.len());
            }
            succs.clear();
            let whole = self.g.store.whole_index(i).map(|w| self.g.store.whole[w].clone());
            let kind = match &whole {
                Some(node) => self.expand(At::of(node), &mut succs),
                None => {
                    let c = self.g.store.codec.as_ref().expect("a packed key has a codec");
                    match self.g.store.key(i) {
                        [k] => key[0] = *k,
                        k => key[..words].copy_from_slice(k),
                    }
                    let (blocked, cursor, budget) = c.meta(&key[..words]);
                    self.scratch_ok = false;
                    let at = At { key: Some(&key[..words]), values: &[], blocked, flight: &None, cursor, budget };
                    if let Some(kind) = self.expand_packed(at, &mut next) {
                        // The fast path: every successor a packed key, none a result.
                        self.g.kinds.push(kind);
                        for &(k, e) in &next {
                            if self.g.store.len() >= max_states {
                                self.g.complete = false;
                                break;
                            }
                            let j = self.intern_key(&k[..words], (i as u32, Edge::unpack(e)));
                            self.g.succ.push(j);
                        }
                        self.g.succ_off.push(self.g.succ.len() as u32);
                        if !self.g.complete {
                            break;
                        }
                        i += 1;
                        continue;
                    }
                    self.expand(at, &mut succs)
                }
            };
            let kind = match kind {
                Ok(k) => k,
                Err(f) => {
                    self.g.faults.push((i as u32, f));
                    Kind::Fault
                }
            };
            self.g.kinds.push(kind);
            for (k, (s, e)) in succs.drain(..).enumerate() {
                if self.g.store.len() >= max_states {
                    self.g.complete = false;
                    break;
                }
                let e = Edge::unpack(e);
                let world = matches!(e, Edge::Observe { .. });
                let parent = (i as u32, e);
                let j = match (s, &whole) {
                    // The fast path: the expanded key with the step's writes.
                    (Succ::Delta { writes, blocked, cursor, budget }, None) => {
                        let c = self.g.store.codec.as_ref().expect("a packed key has a codec");
                        let mut next = key;
                        c.set_meta(&mut next[..words], blocked, cursor, budget);
                        if writes.iter().all(|(slot, v)| c.set_value(&mut next[..words], *slot as usize, v).is_some()) {
                            self.intern_key(&next[..words], parent)
                        } else {
                            c.decode_values(&key[..words], &mut self.scratch);
                            let at = At {
                                key: None,
                                values: &self.scratch,
                                blocked: 0,
                                flight: &None,
                                cursor: 0,
                                budget: 0,
                            };
                            let node = at.whole(Succ::Delta { writes, blocked, cursor, budget });
                            self.intern(node, parent)
                        }
                    }
                    (Succ::Packed { delta, blocked, cursor, budget }, None) => {
                        let c = self.g.store.codec.as_ref().expect("a packed key has a codec");
                        let mut next = key;
                        c.set_meta(&mut next[..words], blocked, cursor, budget);
                        for &(slot, x) in self.deltas[delta as usize].iter() {
                            c.fields[slot as usize].1.set(&mut next[..words], x);
                        }
                        self.intern_key(&next[..words], parent)
                    }
                    (s, Some(node)) => self.intern(At::of(node).whole(s), parent),
                    (Succ::Whole(n), None) => self.intern(n, parent),
                };
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
        progress(self.g.kinds.len(), self.g.store.len());
        self.g
    }

    /// The successors of any node, for reconstructing the edges of a trace.
    pub fn successors_of(&mut self, node: &Node, out: &mut Vec<(Node, Edge)>) {
        let at = At::of(node);
        let mut succs = Vec::new();
        // A fault leaves no successors.
        let _ = self.expand(at, &mut succs);
        out.extend(succs.into_iter().map(|(s, e)| (at.whole(s), Edge::unpack(e))));
    }

    /// [`Explorer::expand`] of a packed node (so nothing is in flight) whose goals and
    /// steps are all remembered with packed results: its kind, and its successors'
    /// keys with their edges in `out`, made by replacing bit fields of its key. `None`
    /// when it is not that simple (a fault, a step that must run, a goal or step not
    /// remembered): then `expand` does it all again, the same way (remembered results
    /// and `goal_ever_true` come out the same whichever of the two sets them).
    ///
    /// With nothing in flight there are no results and no observations, and no
    /// transition is held back by another's flight (R1): only the tick's slices and
    /// the retry timers, as in `expand`.
    fn expand_packed(&mut self, node: At<'_>, out: &mut Vec<([u64; MAX_WORDS], u32)>) -> Option<Kind> {
        out.clear();
        let mut all = true;
        for gi in 0..self.dom.goals.len() {
            if self.goal_parts[gi].is_none() && self.goal_memo[gi].is_none() {
                return None;
            }
            match self.goal(gi, node) {
                Ok(true) => self.g.goal_ever_true[gi] = true,
                Ok(false) => all = false,
                Err(_) => return None,
            }
        }
        if all {
            return Some(Kind::Stable);
        }
        if node.cursor > 0 && self.scan_packed(node, node.cursor as usize, out)? {
            return Some(Kind::Moving);
        }
        self.scan_packed(node, 0, out)?;
        let c = self.g.store.codec.as_ref()?;
        let key = node.key?;
        let mut blocked = node.blocked;
        while blocked != 0 {
            let t = blocked.trailing_zeros() as u16;
            blocked &= blocked - 1;
            let mut next = [0u64; MAX_WORDS];
            next[..key.len()].copy_from_slice(key);
            c.set_meta(&mut next[..key.len()], node.blocked & !(1u64 << t), 0, node.budget);
            out.push((next, Edge::Timer { t }.pack()));
        }
        Some(if out.is_empty() { Kind::Stuck } else { Kind::Moving })
    }

    /// [`Explorer::scan`] for [`Explorer::expand_packed`]: `None` when a step must
    /// run (its result has no packed form, or it is not remembered) or faults.
    fn scan_packed(&mut self, node: At<'_>, from: usize, out: &mut Vec<([u64; MAX_WORDS], u32)>) -> Option<bool> {
        let key = node.key?;
        for t in from..self.dom.transitions.len() {
            if node.blocked & (1 << t) != 0 {
                continue;
            }
            if *self.step_memo[t].as_mut()?.slot(key) == RUN {
                return None;
            }
            match self.step(t, node) {
                Ok(Stepped::Noop) => continue,
                Ok(Stepped::Packed(delta)) => {
                    let c = self.g.store.codec.as_ref()?;
                    let mut next = [0u64; MAX_WORDS];
                    next[..key.len()].copy_from_slice(key);
                    c.set_meta(&mut next[..key.len()], node.blocked, (t + 1) as u8, node.budget);
                    for &(slot, x) in self.deltas[delta as usize].iter() {
                        c.fields[slot as usize].1.set(&mut next[..key.len()], x);
                    }
                    out.push((next, Edge::Fire { t: t as u16 }.pack()));
                    return Some(true);
                }
                Ok(Stepped::Ran(_)) | Err(_) => return None,
            }
        }
        Some(false)
    }

    /// The node's kind (or its fault); its successors go to `out`.
    fn expand(&mut self, node: At<'_>, out: &mut Vec<(Succ, u32)>) -> Result<Kind, Faulted> {
        self.lost_at.clear();
        let dom = self.dom;
        let mut all = true;
        for (gi, goal) in dom.goals.iter().enumerate() {
            match self.goal(gi, node) {
                Ok(true) => self.g.goal_ever_true[gi] = true,
                Ok(false) => all = false,
                Err(fault) => return Err(Faulted { what: format!("goal `{}`", goal.name), fault }),
            }
        }
        let flying = node.in_flight();
        if all {
            if flying.is_empty() {
                return Ok(Kind::Stable);
            }
            // R2: the goals hold, but not yet in the world. No tick runs; messages come.
            self.results(node, out);
            self.timer(node, out);
            self.observations(node, out);
            return Ok(Kind::Waiting);
        }
        let in_flight = flying.iter().fold(0u64, |m, f| m | 1 << f.t);
        if node.cursor > 0 {
            match self.scan(node, node.cursor as usize, in_flight, out) {
                Err(f) => return Err(f),
                Ok(true) => return Ok(Kind::Moving),
                Ok(false) => {}
            }
        }
        // A tick boundary: any message that has arrived is applied before the next tick,
        // a retry timer that came due included, whether or not a transition could run.
        self.results(node, out);
        match self.scan(node, 0, in_flight, out) {
            Err(f) => {
                out.clear();
                self.lost_at.clear();
                return Err(f);
            }
            Ok(_) => self.timer(node, out),
        }
        self.observations(node, out);
        Ok(if out.is_empty() { Kind::Stuck } else { Kind::Moving })
    }

    /// Goal `gi` on the node, remembered when the node is packed.
    #[inline]
    fn goal(&mut self, gi: usize, node: At<'_>) -> Result<bool, Fault> {
        let code = &self.dom.goals[gi].code;
        if let (Some(key), Some(parts)) = (node.key, &mut self.goal_parts[gi]) {
            for (part, memo) in parts.iter_mut() {
                let entry = memo.slot(key);
                let b = match *entry {
                    FALSE => false,
                    TRUE => true,
                    _ => {
                        let values = unpacked(&self.g.store, &mut self.scratch, &mut self.scratch_ok, node);
                        let b = self.vm.eval_bool(part, values)?;
                        *entry = if b { TRUE } else { FALSE };
                        b
                    }
                };
                if !b {
                    return Ok(false);
                }
            }
            return Ok(true);
        }
        let (Some(key), Some(memo)) = (node.key, &mut self.goal_memo[gi]) else {
            let values = unpacked(&self.g.store, &mut self.scratch, &mut self.scratch_ok, node);
            return self.vm.eval_bool(code, values);
        };
        let entry = memo.slot(key);
        match *entry {
            FALSE => Ok(false),
            TRUE => Ok(true),
            _ => {
                let values = unpacked(&self.g.store, &mut self.scratch, &mut self.scratch_ok, node);
                let r = self.vm.eval_bool(code, values);
                if let Ok(b) = r {
                    *entry = if b { TRUE } else { FALSE };
                }
                r
            }
        }
    }

    /// Transition `t`'s step on the node; on a packed node a no-op or packed writes
    /// are remembered, so the VM runs once per combination of the fields it touches.
    #[inline]
    fn step(&mut self, t: usize, node: At<'_>) -> Result<Stepped, Fault> {
        let code = &self.dom.transitions[t].code;
        let (Some(key), Some(memo)) = (node.key, &mut self.step_memo[t]) else {
            let values = unpacked(&self.g.store, &mut self.scratch, &mut self.scratch_ok, node);
            let o = self.vm.run_step(code, values)?;
            return Ok(if o.is_noop() { Stepped::Noop } else { Stepped::Ran(o) });
        };
        let entry = memo.slot(key);
        match *entry {
            NOOP => return Ok(Stepped::Noop),
            RUN => {}
            UNKNOWN => {
                let values = unpacked(&self.g.store, &mut self.scratch, &mut self.scratch_ok, node);
                let o = self.vm.run_step(code, values)?;
                let codec = self.g.store.codec.as_ref().expect("a packed key has a codec");
                *entry = if o.is_noop() {
                    NOOP
                } else if !o.intents.is_empty() {
                    RUN
                } else {
                    let packed: Option<Box<[(u16, u64)]>> = o
                        .writes
                        .iter()
                        .map(|(slot, v)| Some((*slot, codec.encode_value(*slot as usize, v)?)))
                        .collect();
                    match packed {
                        Some(d) => {
                            self.deltas.push(d);
                            DELTA + (self.deltas.len() - 1) as u32
                        }
                        None => RUN,
                    }
                };
                return Ok(match *entry {
                    NOOP => Stepped::Noop,
                    RUN => Stepped::Ran(o),
                    d => Stepped::Packed(d - DELTA),
                });
            }
            d => return Ok(Stepped::Packed(d - DELTA)),
        }
        let values = unpacked(&self.g.store, &mut self.scratch, &mut self.scratch_ok, node);
        let o = self.vm.run_step(code, values)?;
        Ok(if o.is_noop() { Stepped::Noop } else { Stepped::Ran(o) })
    }

    /// From transition `from` on, the first one that can run fires: its slice
    /// goes to `out`. `Ok(false)` when none can.
    fn scan(&mut self, node: At<'_>, from: usize, in_flight: u64, out: &mut Vec<(Succ, u32)>) -> Result<bool, Faulted> {
        let dom = self.dom;
        for t in from..dom.transitions.len() {
            if (node.blocked | in_flight) & (1 << t) != 0 || in_flight & self.conflicts[t] != 0 {
                continue;
            }
            let tr = &dom.transitions[t];
            let cursor = (t + 1) as u8;
            let outcome = match self.step(t, node) {
                Ok(Stepped::Noop) => continue,
                Ok(Stepped::Packed(delta)) => {
                    let s = Succ::Packed { delta, blocked: node.blocked, cursor, budget: node.budget };
                    out.push((s, Edge::Fire { t: t as u16 }.pack()));
                    return Ok(true);
                }
                Ok(Stepped::Ran(o)) => o,
                Err(fault) => return Err(Faulted { what: format!("transition `{}`", tr.name), fault }),
            };
            if outcome.intents.is_empty() && node.flight.is_none() {
                // Nothing in flight before or after: the writes, as a delta.
                let s = Succ::Delta { writes: outcome.writes, blocked: node.blocked, cursor, budget: node.budget };
                out.push((s, Edge::Fire { t: t as u16 }.pack()));
                return Ok(true);
            }
            let mut values: Box<[Value]> =
                unpacked(&self.g.store, &mut self.scratch, &mut self.scratch_ok, node).into();
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
            out.push((
                Succ::Whole(Node { values, blocked: node.blocked, flight: pack(flight), cursor, budget: node.budget }),
                Edge::Fire { t: t as u16 }.pack(),
            ));
            return Ok(true);
        }
        Ok(false)
    }

    /// Each transition in flight hears back: success, and failure while the budget lasts.
    fn results(&mut self, node: At<'_>, out: &mut Vec<(Succ, u32)>) {
        let flying = node.in_flight();
        if flying.is_empty() {
            return;
        }
        for (k, f) in flying.iter().enumerate() {
            let others = || -> Vec<Flight> {
                flying.iter().enumerate().filter(|(j, _)| *j != k).map(|(_, x)| x.clone()).collect()
            };
            let mut rest = others();
            let mut values: Box<[Value]> = node.values.into();
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
                Succ::Whole(Node { values, blocked: node.blocked, flight: pack(rest), cursor: 0, budget: node.budget }),
                Edge::Result { t: f.t, ok: true }.pack(),
            ));
            if node.budget > 0 {
                // The held writes are dropped; the field values did not move, so no one else's did either.
                out.push((
                    Succ::Whole(Node {
                        values: node.values.into(),
                        blocked: node.blocked | 1 << f.t,
                        flight: pack(others()),
                        cursor: 0,
                        budget: node.budget - 1,
                    }),
                    Edge::Result { t: f.t, ok: false }.pack(),
                ));
            }
        }
    }

    /// With something backing off, a retry timer may come due at any tick boundary,
    /// each transition's on its own (as the runtime's timer messages do).
    fn timer(&mut self, node: At<'_>, out: &mut Vec<(Succ, u32)>) {
        let mut blocked = node.blocked;
        while blocked != 0 {
            let t = blocked.trailing_zeros() as u16;
            blocked &= blocked - 1;
            let unblocked = node.blocked & !(1u64 << t);
            let s = if node.flight.is_none() {
                Succ::Delta { writes: Vec::new(), blocked: unblocked, cursor: 0, budget: node.budget }
            } else {
                Succ::Whole(Node {
                    values: node.values.into(),
                    blocked: unblocked,
                    flight: node.flight.clone(),
                    cursor: 0,
                    budget: node.budget,
                })
            };
            out.push((s, Edge::Timer { t }.pack()));
        }
    }

    /// The world reports another value of a field that a transition in flight holds
    /// a write to: that write (and any other to the field) is dropped. The values:
    /// each write held for the field (the world confirms a prediction before the
    /// acknowledgement), and one value of the bound that is neither that nor the
    /// current one (the world moved elsewhere), or every value of the bound with
    /// [`Model::every_observed_value`].
    fn observations(&mut self, node: At<'_>, out: &mut Vec<(Succ, u32)>) {
        let flying = node.in_flight();
        if flying.is_empty() {
            return;
        }
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
                let mut values: Box<[Value]> = node.values.into();
                values[s] = v.clone();
                let flight: Vec<Flight> = flying
                    .iter()
                    .map(|f| Flight { t: f.t, held: f.held.iter().filter(|h| h.slot != slot).cloned().collect() })
                    .collect();
                out.push((
                    Succ::Whole(Node {
                        values,
                        blocked: node.blocked,
                        flight: pack(flight),
                        cursor: 0,
                        budget: node.budget,
                    }),
                    Edge::Observe { slot }.pack(),
                ));
            }
        }
    }
}

impl Graph {
    /// How many nodes were found (expanded or not).
    pub fn len(&self) -> usize {
        self.store.len()
    }

    pub fn is_empty(&self) -> bool {
        self.store.len() == 0
    }

    /// Node `i`, unpacked.
    pub fn node(&self, i: u32) -> Node {
        self.store.node(i as usize)
    }

    /// Whether node `i` is stored packed (the rest are kept whole).
    pub fn is_packed(&self, i: u32) -> bool {
        self.store.whole_index(i as usize).is_none()
    }

    /// The node that first reached `i`, and the edge; `(u32::MAX, Edge::Start)` for a start state.
    pub fn parent(&self, i: u32) -> (u32, Edge) {
        let (p, e) = self.parents[i as usize];
        (p, Edge::unpack(e))
    }

    /// What faulted at node `i`, when it is a fault.
    pub fn fault(&self, i: u32) -> Option<&Faulted> {
        self.faults.binary_search_by_key(&i, |(j, _)| *j).ok().map(|k| &self.faults[k].1)
    }

    pub fn successors(&self, i: usize) -> &[u32] {
        &self.succ[self.succ_off[i] as usize..self.succ_off[i + 1] as usize]
    }

    /// The path from a start node to `i`: node indices with the edge that reached each.
    pub fn path_to(&self, i: u32) -> Vec<(u32, Edge)> {
        let mut path = Vec::new();
        let mut cur = i;
        loop {
            let (p, e) = self.parent(cur);
            path.push((cur, e));
            if e == Edge::Start {
                break;
            }
            cur = p;
        }
        path.reverse();
        path
    }

    /// The expanded nodes in an order in which every program edge (observations
    /// left out) goes forward, or `None` when those edges make a cycle (Kahn's
    /// algorithm: in-degrees, then a queue, with no stack of the graph's depth).
    pub fn topological_order(&self) -> Option<Vec<u32>> {
        let n = self.kinds.len();
        let mut indegree = vec![0u32; n];
        for &w in &self.succ[..self.succ_off[n] as usize] {
            if let Some(d) = indegree.get_mut(w as usize) {
                *d += 1;
            }
        }
        let mut order: Vec<u32> = (0..n as u32).filter(|&v| indegree[v as usize] == 0).collect();
        let mut head = 0;
        while let Some(&v) = order.get(head) {
            head += 1;
            for &w in self.successors(v as usize) {
                if let Some(d) = indegree.get_mut(w as usize) {
                    *d -= 1;
                    if *d == 0 {
                        order.push(w);
                    }
                }
            }
        }
        (order.len() == n).then_some(order)
    }

    /// [`Graph::longest_path`] when the program edges make no cycle, `None` when they
    /// do: [`Graph::topological_order`] and [`Graph::longest_path_in`] in one pass.
    /// Kahn's algorithm, carrying forward, from each start state, the most slices
    /// taken to reach each node: the longest path from a start state ends at the
    /// node where it comes to rest, so the most over every node is the depth.
    pub fn acyclic_depth(&self) -> Option<u32> {
        let n = self.kinds.len();
        let mut indegree = vec![0u32; n];
        for &w in &self.succ[..self.succ_off[n] as usize] {
            if let Some(d) = indegree.get_mut(w as usize) {
                *d += 1;
            }
        }
        // Per node: 1 + the most slices from a start state to it; 0 when no start
        // state reaches it by the program's moves.
        let start = Edge::Start.pack();
        let mut reach: Vec<u32> = (0..n).map(|v| u32::from(self.parents[v].1 == start)).collect();
        let mut queue: Vec<u32> = (0..n as u32).filter(|&v| indegree[v as usize] == 0).collect();
        let mut head = 0;
        let mut best = 0;
        while let Some(&v) = queue.get(head) {
            head += 1;
            let r = reach[v as usize];
            best = best.max(r);
            for &w in self.successors(v as usize) {
                if let Some(d) = indegree.get_mut(w as usize) {
                    if r > 0 {
                        let rw = &mut reach[w as usize];
                        *rw = (*rw).max(r + 1);
                    }
                    *d -= 1;
                    if *d == 0 {
                        queue.push(w);
                    }
                }
            }
        }
        (queue.len() == n).then(|| best.saturating_sub(1))
    }

    /// [`Graph::longest_path`] given [`Graph::topological_order`]: longest
    /// distances to rest in reverse order, the most from a start state.
    pub fn longest_path_in(&self, order: &[u32]) -> u32 {
        let n = self.kinds.len();
        let mut dist = vec![0u32; n];
        for &v in order.iter().rev() {
            let succ = self.successors(v as usize);
            dist[v as usize] = succ.iter().filter_map(|&w| dist.get(w as usize)).map(|d| d + 1).max().unwrap_or(0);
        }
        let start = Edge::Start.pack();
        (0..n).filter(|&v| self.parents[v].1 == start).map(|v| dist[v]).max().unwrap_or(0)
    }

    /// The most slices any start state can take to come to rest (stable, stuck or
    /// faulted), over every choice of failures. Only meaningful without cycles.
    pub fn longest_path(&self) -> u32 {
        if let Some(order) = self.topological_order() {
            return self.longest_path_in(&order);
        }
        let n = self.kinds.len();
        // Longest distance to a node without successors, computed in post-order.
        let mut dist: Vec<Option<u32>> = vec![None; n];
        let mut on_stack = vec![false; n];
        let mut stack: Vec<(u32, usize)> = Vec::new();
        let mut best = 0;
        for root in 0..n {
            if dist[root].is_some() || self.parents[root].1 != Edge::Start.pack() {
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
    /// Depth first, so the cycle reported is the one this search meets first; call it
    /// only when [`Graph::topological_order`] says there is one (that is cheaper).
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

#[cfg(test)]
mod tests {
    use super::*;

    fn goals(src: &str) -> Vec<ved_vm::Code> {
        let mut sources = ved_syntax::SourceMap::new();
        let id = sources.add("g.ved", src.to_string());
        let ast = ved_syntax::parse_file(id, src).expect("parses");
        let program = ved_check::check_program(&[ast]).program.expect("checks");
        let compiled = ved_vm::compile_program(&program);
        compiled.domains[0].goals.iter().map(|g| g.code.clone()).collect()
    }

    #[test]
    fn conjunctions_of_comparisons_split_and_nothing_else_does() {
        let src = "domain D {\n  state {\n    x: int\n    y: int\n  }\n  goal x == 50 && y == 50 && x <= y\n  goal x == 1\n  goal x == 1 || y == 2\n  goal x + 1 == 2 && y == 1\n  goal x == 1 && (y == 2 || y == 3)\n  transition t { step { if x < 50 { x += 1 } } }\n}\n";
        let parts: Vec<Option<usize>> = goals(src).iter().map(|c| conjuncts(c).map(|p| p.len())).collect();
        assert_eq!(parts, [Some(3), None, None, None, None]);
    }
}
