//! The interpreter: runs [`Code`] against a state it never mutates.

use crate::code::{Code, Op};
use crate::fault::{Fault, FaultKind};
use crate::value::{total_size_exceeds, Value};
use crate::{CompiledDomain, SIZE_MAX, TOTAL_SIZE_MAX};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use ved_check::hir::{ArithOp, Builtin, CmpOp};
use ved_syntax::Span;

/// An effect requested by a step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Intent {
    pub adapter: Arc<str>,
    pub action: Arc<str>,
    pub args: Vec<Value>,
}

/// What a step would do: the fields it changes and the intents it emits.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StepOutcome {
    /// Final values of changed fields, by slot, ascending.
    pub writes: Vec<(u16, Value)>,
    pub intents: Vec<Intent>,
}

impl StepOutcome {
    /// A step that changes nothing and emits nothing: its transition is not enabled.
    pub fn is_noop(&self) -> bool {
        self.writes.is_empty() && self.intents.is_empty()
    }
}

/// Reusable scratch space, so that evaluation in steady state allocates only
/// what the program itself builds.
pub struct Vm {
    /// The bound on one value's elements or bytes ([`SIZE_MAX`] unless set lower).
    size_max: usize,
    /// The bound on a stored or emitted value through its nested values
    /// ([`TOTAL_SIZE_MAX`], sixteen times `size_max`).
    total_size_max: usize,
    stack: Vec<Value>,
    locals: Vec<Value>,
    /// Copy-on-write view: a written field's new value, or `None`.
    overlay: Vec<Option<Value>>,
    /// Where each written field was last assigned, to place a fault on its final value.
    stored_at: Vec<Span>,
    dirty: Vec<u16>,
    intents: Vec<Intent>,
}

type R<T> = Result<T, Fault>;

fn fault(kind: FaultKind, span: Span) -> Fault {
    Fault { kind, span }
}

impl Default for Vm {
    fn default() -> Vm {
        Vm {
            size_max: SIZE_MAX,
            total_size_max: TOTAL_SIZE_MAX,
            stack: Vec::new(),
            locals: Vec::new(),
            overlay: Vec::new(),
            stored_at: Vec::new(),
            dirty: Vec::new(),
            intents: Vec::new(),
        }
    }
}

impl Vm {
    pub fn new() -> Vm {
        Vm::default()
    }

    /// Lowers the size bounds: one value holds at most `n` elements or bytes (at most
    /// [`SIZE_MAX`]), and a stored or emitted one at most `16 n` through its nested values.
    /// A tighter bound makes the same faults happen sooner and cheaper, for a harness that
    /// runs millions of generated programs.
    pub fn set_size_max(&mut self, n: usize) {
        self.size_max = n.min(SIZE_MAX);
        self.total_size_max = self.size_max.saturating_mul(TOTAL_SIZE_MAX / SIZE_MAX);
    }

    /// Evaluates an expression over `state`.
    pub fn eval(&mut self, code: &Code, state: &[Value]) -> R<Value> {
        self.reset(code, 0);
        let r = self.exec(code, state);
        let v = r.map(|()| self.stack.pop().unwrap_or(Value::Bool(false)));
        self.stack.clear();
        v
    }

    /// Evaluates a boolean expression.
    pub fn eval_bool(&mut self, code: &Code, state: &[Value]) -> R<bool> {
        if let Some(b) = self.predicate(code, state) {
            return Ok(b);
        }
        Ok(matches!(self.eval(code, state)?, Value::Bool(true)))
    }

    /// A goal made only of comparisons of fields with constants or fields, joined by `&&`
    /// and `||` (`workers == 5`, `(p == "healthy" && r == "primary") || ...`), answered
    /// without the value stack: in such code the stack never holds more than one bool (each
    /// comparison pushes one; each `&&`/`||` jump keeps it or pops it), so one register is
    /// the whole stack, and nothing in it can fault. `None` for any other op: the caller
    /// runs the interpreter, which computes the same answer.
    fn predicate(&self, code: &Code, state: &[Value]) -> Option<bool> {
        match in_one_register(code, |s| self.field(s, state)) {
            Register::End(top) if !code.ops.is_empty() => Some(top),
            _ => None,
        }
    }

    /// Runs a step against a copy-on-write view of `state`.
    pub fn run_step(&mut self, code: &Code, state: &[Value]) -> R<StepOutcome> {
        if skips_whole(code, state) {
            return Ok(StepOutcome::default());
        }
        self.reset(code, state.len());
        let mut r = self.exec(code, state);
        if r.is_ok() {
            r = self.check_total_sizes();
        }
        let mut out = StepOutcome::default();
        if r.is_ok() {
            // Sized once: the push below would otherwise grow it from nothing.
            out.writes.reserve_exact(self.dirty.len());
            self.dirty.sort_unstable();
            for &slot in &self.dirty {
                if let Some(v) = self.overlay[slot as usize].take() {
                    if state.get(slot as usize) != Some(&v) {
                        out.writes.push((slot, v));
                    }
                }
            }
            out.intents = std::mem::take(&mut self.intents);
        }
        for &slot in &self.dirty {
            self.overlay[slot as usize] = None;
        }
        self.dirty.clear();
        self.intents.clear();
        self.stack.clear();
        r.map(|()| out)
    }

    /// The final value of every field the step wrote must fit [`TOTAL_SIZE_MAX`]: it
    /// goes whole into the journal, the store and the events. Checked once per field
    /// at the step's end, not at every assignment, so a loop that builds a value pays
    /// for the walk once.
    fn check_total_sizes(&self) -> R<()> {
        for &slot in &self.dirty {
            if let Some(Some(v)) = self.overlay.get(slot as usize) {
                // A scalar counts one: nothing to walk.
                if matches!(v, Value::Int(_) | Value::Bool(_)) {
                    continue;
                }
                if total_size_exceeds([v], self.total_size_max) {
                    let span = self.stored_at.get(slot as usize).copied().unwrap_or_default();
                    return Err(fault(FaultKind::TooLargeInAll { limit: self.total_size_max }, span));
                }
            }
        }
        Ok(())
    }

    /// The initial state of an instance: defaults, or zero values.
    pub fn initial_state(&mut self, d: &CompiledDomain) -> R<Vec<Value>> {
        let mut state = Vec::with_capacity(d.fields.len());
        for ((_, ty), default) in d.fields.iter().zip(&d.defaults) {
            state.push(match default {
                Some(code) => {
                    let v = self.eval(code, &[])?;
                    if total_size_exceeds([&v], self.total_size_max) {
                        let span = code.spans.last().copied().unwrap_or_default();
                        return Err(fault(FaultKind::TooLargeInAll { limit: self.total_size_max }, span));
                    }
                    v
                }
                None => Value::zero(ty),
            });
        }
        Ok(state)
    }

    #[inline]
    fn reset(&mut self, code: &Code, fields: usize) {
        self.stack.clear();
        if self.stack.capacity() < code.max_stack as usize {
            self.stack.reserve(code.max_stack as usize);
        }
        self.locals.clear();
        if code.locals > 0 {
            self.locals.resize(code.locals as usize, Value::Int(0));
        }
        if self.overlay.len() < fields {
            self.overlay.resize(fields, None);
            self.stored_at.resize(fields, Span::default());
        }
    }

    fn pop(&mut self) -> Value {
        // The lowering guarantees operands; an empty stack would be a compiler bug,
        // and a harmless value keeps that from becoming a panic.
        self.stack.pop().unwrap_or(Value::Int(0))
    }

    fn pop_int(&mut self) -> i64 {
        match self.pop() {
            Value::Int(i) => i,
            _ => 0,
        }
    }

    fn pop_bool(&mut self) -> bool {
        matches!(self.pop(), Value::Bool(true))
    }

    /// A field's value as the step sees it: its write so far, else the state's.
    #[inline]
    fn field<'a>(&'a self, slot: u16, state: &'a [Value]) -> &'a Value {
        const ZERO: Value = Value::Int(0);
        match self.overlay.get(slot as usize) {
            Some(Some(v)) => v,
            _ => state.get(slot as usize).unwrap_or(&ZERO),
        }
    }

    #[inline]
    fn store(&mut self, slot: u16, v: Value, span: Span) {
        if let Some(cell) = self.overlay.get_mut(slot as usize) {
            if cell.is_none() {
                self.dirty.push(slot);
            }
            *cell = Some(v);
            self.stored_at[slot as usize] = span;
        }
    }

    fn exec(&mut self, code: &Code, state: &[Value]) -> R<()> {
        let mut pc = 0usize;
        let ops = &code.ops;
        while let Some(&op) = ops.get(pc) {
            pc += 1;
            match op {
                Op::Const(i) => self.stack.push(code.consts[i as usize].clone()),
                Op::LoadField(s) => {
                    let v = match self.overlay.get(s as usize) {
                        Some(Some(v)) => v.clone(),
                        _ => state.get(s as usize).cloned().unwrap_or(Value::Int(0)),
                    };
                    self.stack.push(v);
                }
                Op::LoadLocal(s) => {
                    let v = self.locals.get(s as usize).cloned().unwrap_or(Value::Int(0));
                    self.stack.push(v);
                }
                Op::StoreLocal(s) => {
                    let v = self.pop();
                    if let Some(l) = self.locals.get_mut(s as usize) {
                        *l = v;
                    }
                }
                Op::StoreField(s) => {
                    let v = self.pop();
                    self.store(s, v, code.spans[pc - 1]);
                }
                Op::Not => {
                    let b = self.pop_bool();
                    self.stack.push(Value::Bool(!b));
                }
                Op::Neg => {
                    let i = self.pop_int();
                    let v =
                        i.checked_neg().ok_or_else(|| fault(FaultKind::Overflow { op: "-" }, code.spans[pc - 1]))?;
                    self.stack.push(Value::Int(v));
                }
                Op::Arith(a) => {
                    let r = self.pop_int();
                    let l = self.pop_int();
                    let v = arith(a, l, r, code.spans[pc - 1])?;
                    self.stack.push(Value::Int(v));
                }
                Op::Concat => {
                    let r = self.pop();
                    let l = self.pop();
                    let (Value::Str(l), Value::Str(r)) = (l, r) else {
                        continue;
                    };
                    if l.len() + r.len() > self.size_max {
                        return Err(fault(FaultKind::TooLarge { limit: self.size_max }, code.spans[pc - 1]));
                    }
                    let mut s = String::with_capacity(l.len() + r.len());
                    s.push_str(&l);
                    s.push_str(&r);
                    self.stack.push(Value::Str(Arc::from(s)));
                }
                Op::Cmp(c) => {
                    let r = self.pop();
                    let l = self.pop();
                    self.stack.push(Value::Bool(compare(c, &l, &r)));
                }
                Op::FieldCmpConst(s, c, k) => {
                    let b = compare(c, self.field(s, state), &code.consts[k as usize]);
                    self.stack.push(Value::Bool(b));
                }
                Op::FieldCmpField(a, b, c) => {
                    let b = compare(c, self.field(a, state), self.field(b, state));
                    self.stack.push(Value::Bool(b));
                }
                Op::JumpUnlessFieldCmpConst(s, c, k, t) => {
                    if !compare(c, self.field(s, state), &code.consts[k as usize]) {
                        pc = t as usize;
                    }
                }
                Op::FieldArithConst(s, a, k) => {
                    let (&Value::Int(l), &Value::Int(r)) = (self.field(s, state), &code.consts[k as usize]) else {
                        continue;
                    };
                    let span = code.spans[pc - 1];
                    let v = arith(a, l, r, span)?;
                    self.store(s, Value::Int(v), span);
                }
                Op::MakeList(n) => {
                    let at = self.stack.len().saturating_sub(n as usize);
                    let items: Vec<Value> = self.stack.drain(at..).collect();
                    self.stack.push(Value::List(Arc::new(items)));
                }
                Op::MakeSet(n) => {
                    let at = self.stack.len().saturating_sub(n as usize);
                    let items: BTreeSet<Value> = self.stack.drain(at..).collect();
                    self.stack.push(Value::Set(Arc::new(items)));
                }
                Op::MakeMap(n) => {
                    let at = self.stack.len().saturating_sub(2 * n as usize);
                    let mut m = BTreeMap::new();
                    let mut it = self.stack.drain(at..);
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        if let Value::Str(k) = k {
                            m.insert(k, v);
                        }
                    }
                    drop(it);
                    self.stack.push(Value::Map(Arc::new(m)));
                }
                Op::Call(b) => {
                    let span = code.spans[pc - 1];
                    // At most two arguments: popped into place, no vector per call.
                    let argc = crate::code::builtin_argc(b);
                    let second = if argc >= 2 { Some(self.pop()) } else { None };
                    let first = if argc >= 1 { Some(self.pop()) } else { None };
                    let recv = self.pop();
                    let v = call(b, recv, [first, second], span, self.size_max)?;
                    if v.size() > self.size_max {
                        return Err(fault(FaultKind::TooLarge { limit: self.size_max }, span));
                    }
                    self.stack.push(v);
                }
                Op::Index => {
                    let span = code.spans[pc - 1];
                    let idx = self.pop();
                    let recv = self.pop();
                    let v = match (recv, idx) {
                        (Value::List(l), Value::Int(i)) => usize::try_from(i)
                            .ok()
                            .and_then(|u| l.get(u).cloned())
                            .ok_or(fault(FaultKind::IndexOutOfRange { index: i, len: l.len() }, span))?,
                        (Value::Map(m), Value::Str(k)) => m
                            .get(&k)
                            .cloned()
                            .ok_or_else(|| fault(FaultKind::MissingKey { key: k.to_string() }, span))?,
                        _ => Value::Int(0),
                    };
                    self.stack.push(v);
                }
                Op::Emit(i) => {
                    let site = &code.emits[i as usize];
                    let at = self.stack.len().saturating_sub(site.argc as usize);
                    let args: Vec<Value> = self.stack.drain(at..).collect();
                    if total_size_exceeds(&args, self.total_size_max) {
                        let span = code.spans[pc - 1];
                        return Err(fault(FaultKind::TooLargeInAll { limit: self.total_size_max }, span));
                    }
                    self.intents.push(Intent { adapter: site.adapter.clone(), action: site.action.clone(), args });
                }
                Op::Jump(t) => pc = t as usize,
                Op::JumpIfFalse(t) => {
                    if !self.pop_bool() {
                        pc = t as usize;
                    }
                }
                Op::JumpIfFalseOrPop(t) => {
                    if matches!(self.stack.last(), Some(Value::Bool(false))) {
                        pc = t as usize;
                    } else {
                        self.stack.pop();
                    }
                }
                Op::JumpIfTrueOrPop(t) => {
                    if matches!(self.stack.last(), Some(Value::Bool(true))) {
                        pc = t as usize;
                    } else {
                        self.stack.pop();
                    }
                }
            }
        }
        Ok(())
    }
}

#[inline]
fn compare(c: CmpOp, l: &Value, r: &Value) -> bool {
    // Integers, the usual case, without the derived ordering's walk over the variants.
    match (l, r) {
        (Value::Int(a), Value::Int(b)) => compare_as(c, a, b),
        _ => compare_as(c, l, r),
    }
}

/// `l op r` for any ordered type: `==` and `!=` compare for equality, not through the ordering.
#[inline]
fn compare_as<T: PartialOrd + ?Sized>(c: CmpOp, l: &T, r: &T) -> bool {
    match c {
        CmpOp::Eq => l == r,
        CmpOp::Ne => l != r,
        CmpOp::Lt => l < r,
        CmpOp::Le => l <= r,
        CmpOp::Gt => l > r,
        CmpOp::Ge => l >= r,
    }
}

fn arith(a: ArithOp, l: i64, r: i64, span: Span) -> R<i64> {
    let (v, sym) = match a {
        ArithOp::Add => (l.checked_add(r), "+"),
        ArithOp::Sub => (l.checked_sub(r), "-"),
        ArithOp::Mul => (l.checked_mul(r), "*"),
        ArithOp::Div | ArithOp::Rem if r == 0 => return Err(fault(FaultKind::DivisionByZero, span)),
        ArithOp::Div => (l.checked_div(r), "/"),
        ArithOp::Rem => (l.checked_rem(r), "%"),
    };
    v.ok_or_else(|| fault(FaultKind::Overflow { op: sym }, span))
}

/// Elements of a list or set argument.
fn elements(v: &Value) -> Vec<&Value> {
    match v {
        Value::List(l) => l.iter().collect(),
        Value::Set(s) => s.iter().collect(),
        _ => Vec::new(),
    }
}

/// Membership in a list or set argument, without building anything for a set or a short
/// list (the usual case: ports, hosts), and with one ordered set for a long list.
enum Members<'a> {
    Slice(&'a [Value]),
    Set(&'a BTreeSet<Value>),
    Built(BTreeSet<&'a Value>),
}

impl<'a> Members<'a> {
    fn of(v: &'a Value) -> Members<'a> {
        match v {
            Value::List(l) if l.len() <= 16 => Members::Slice(l),
            Value::List(l) => Members::Built(l.iter().collect()),
            Value::Set(s) => Members::Set(s),
            _ => Members::Slice(&[]),
        }
    }

    fn contains(&self, x: &Value) -> bool {
        match self {
            Members::Slice(l) => l.contains(x),
            Members::Set(s) => s.contains(x),
            Members::Built(s) => s.contains(x),
        }
    }
}

/// `l` with `extra` appended: in place when `l` is not shared, else one allocation of
/// the final size (not a copy that then grows).
fn appended<'a>(mut l: Arc<Vec<Value>>, extra: impl ExactSizeIterator<Item = &'a Value>) -> Arc<Vec<Value>> {
    match Arc::get_mut(&mut l) {
        Some(v) => v.extend(extra.cloned()),
        None => {
            let mut v = Vec::with_capacity(l.len() + extra.len());
            v.extend(l.iter().cloned());
            v.extend(extra.cloned());
            l = Arc::new(v);
        }
    }
    l
}

/// `l` without the elements `drop` holds: unchanged (no copy) when it holds none of them.
fn without(mut l: Arc<Vec<Value>>, drop: &Members) -> Arc<Vec<Value>> {
    if !l.iter().any(|e| drop.contains(e)) {
        return l;
    }
    match Arc::get_mut(&mut l) {
        Some(v) => v.retain(|e| !drop.contains(e)),
        None => l = Arc::new(l.iter().filter(|e| !drop.contains(e)).cloned().collect()),
    }
    l
}

fn call(b: Builtin, recv: Value, mut args: [Option<Value>; 2], span: Span, size_max: usize) -> R<Value> {
    // The next argument, in order.
    let arg = |args: &mut [Option<Value>; 2]| args.iter_mut().find_map(Option::take).unwrap_or(Value::Int(0));
    Ok(match (b, recv) {
        (Builtin::Length, v) => Value::Int(match &v {
            Value::Str(s) => s.chars().count() as i64,
            other => other.size() as i64,
        }),
        (Builtin::IsEmpty, v) => Value::Bool(match &v {
            Value::Str(s) => s.is_empty(),
            other => other.size() == 0,
        }),
        (Builtin::First, Value::List(l)) => {
            l.first().cloned().ok_or(fault(FaultKind::EmptyCollection { member: "first" }, span))?
        }
        (Builtin::Last, Value::List(l)) => {
            l.last().cloned().ok_or(fault(FaultKind::EmptyCollection { member: "last" }, span))?
        }
        (Builtin::First, Value::Set(s)) => {
            s.first().cloned().ok_or(fault(FaultKind::EmptyCollection { member: "first" }, span))?
        }
        (Builtin::Last, Value::Set(s)) => {
            s.last().cloned().ok_or(fault(FaultKind::EmptyCollection { member: "last" }, span))?
        }
        (Builtin::Contains, recv) => {
            let x = arg(&mut args);
            Value::Bool(match (&recv, &x) {
                (Value::List(l), x) => l.contains(x),
                (Value::Set(s), x) => s.contains(x),
                (Value::Map(m), Value::Str(k)) => m.contains_key(k),
                (Value::Str(s), Value::Str(sub)) => s.contains(&**sub),
                _ => false,
            })
        }
        (Builtin::Add, Value::List(mut l)) => {
            Arc::make_mut(&mut l).push(arg(&mut args));
            Value::List(l)
        }
        (Builtin::Add, Value::Set(mut s)) => {
            Arc::make_mut(&mut s).insert(arg(&mut args));
            Value::Set(s)
        }
        (Builtin::AddAll, Value::List(l)) => {
            let more = arg(&mut args);
            let extra = elements(&more);
            if l.len() + extra.len() > size_max {
                return Err(fault(FaultKind::TooLarge { limit: size_max }, span));
            }
            Value::List(appended(l, extra.into_iter()))
        }
        (Builtin::AddAll, Value::Set(mut s)) => {
            let more = arg(&mut args);
            Arc::make_mut(&mut s).extend(elements(&more).into_iter().cloned());
            Value::Set(s)
        }
        (Builtin::Remove, Value::List(mut l)) => {
            let x = arg(&mut args);
            if l.contains(&x) {
                Arc::make_mut(&mut l).retain(|e| *e != x);
            }
            Value::List(l)
        }
        (Builtin::Remove, Value::Set(mut s)) => {
            let x = arg(&mut args);
            if s.contains(&x) {
                Arc::make_mut(&mut s).remove(&x);
            }
            Value::Set(s)
        }
        (Builtin::Remove, Value::Map(mut m)) => {
            if let Value::Str(k) = arg(&mut args) {
                if m.contains_key(&k) {
                    Arc::make_mut(&mut m).remove(&k);
                }
            }
            Value::Map(m)
        }
        (Builtin::RemoveAll | Builtin::Difference, Value::List(l)) => {
            let other = arg(&mut args);
            Value::List(without(l, &Members::of(&other)))
        }
        (Builtin::RemoveAll | Builtin::Difference, Value::Set(mut s)) => {
            let other = arg(&mut args);
            let drop = Members::of(&other);
            if s.iter().any(|e| drop.contains(e)) {
                Arc::make_mut(&mut s).retain(|e| !drop.contains(e));
            }
            Value::Set(s)
        }
        (Builtin::RemoveAll, Value::Map(mut m)) => {
            let other = arg(&mut args);
            let keys: Vec<Arc<str>> = elements(&other)
                .into_iter()
                .filter_map(|k| match k {
                    Value::Str(s) if m.contains_key(s) => Some(s.clone()),
                    _ => None,
                })
                .collect();
            if !keys.is_empty() {
                let mm = Arc::make_mut(&mut m);
                for k in keys {
                    mm.remove(&k);
                }
            }
            Value::Map(m)
        }
        (Builtin::Union, Value::List(mut l)) => {
            let other = arg(&mut args);
            let mut present: BTreeSet<Value> = l.iter().cloned().collect();
            let extra: Vec<Value> =
                elements(&other).into_iter().filter(|e| present.insert((*e).clone())).cloned().collect();
            if l.len() + extra.len() > size_max {
                return Err(fault(FaultKind::TooLarge { limit: size_max }, span));
            }
            if !extra.is_empty() {
                Arc::make_mut(&mut l).extend(extra);
            }
            Value::List(l)
        }
        (Builtin::Union, Value::Set(mut s)) => {
            let other = arg(&mut args);
            Arc::make_mut(&mut s).extend(elements(&other).into_iter().cloned());
            Value::Set(s)
        }
        (Builtin::Intersection, Value::List(mut l)) => {
            let other = arg(&mut args);
            let keep = Members::of(&other);
            Arc::make_mut(&mut l).retain(|e| keep.contains(e));
            Value::List(l)
        }
        (Builtin::Intersection, Value::Set(mut s)) => {
            let other = arg(&mut args);
            let keep = Members::of(&other);
            Arc::make_mut(&mut s).retain(|e| keep.contains(e));
            Value::Set(s)
        }
        (Builtin::Insert, Value::Map(mut m)) => {
            let k = arg(&mut args);
            let v = arg(&mut args);
            if let Value::Str(k) = k {
                Arc::make_mut(&mut m).insert(k, v);
            }
            Value::Map(m)
        }
        (Builtin::Get, Value::Map(m)) => {
            let k = arg(&mut args);
            let d = arg(&mut args);
            match k {
                Value::Str(k) => m.get(&k).cloned().unwrap_or(d),
                _ => d,
            }
        }
        (Builtin::Keys, Value::Map(m)) => Value::Set(Arc::new(m.keys().map(|k| Value::Str(k.clone())).collect())),
        (Builtin::Values, Value::Map(m)) => Value::List(Arc::new(m.values().cloned().collect())),
        // Unreachable for checked programs; a neutral value instead of a panic.
        (_, v) => v,
    })
}

/// Whether a step's opening condition is false and jumps to its end: a step shaped
/// `if <comparisons joined by && and ||> { ... }` (most guards) with the comparison false
/// does nothing, which is what the scheduler's dry run of a disabled transition finds. The
/// condition is evaluated as [`Vm::predicate`] evaluates a goal, on the state itself (no
/// write has happened yet), so the answer needs no VM setup; anything else answers `false`
/// and the step runs in full, which computes the same outcome.
fn skips_whole(code: &Code, state: &[Value]) -> bool {
    const ZERO: Value = Value::Int(0);
    let field = |s: u16| state.get(s as usize).unwrap_or(&ZERO);
    let end = code.ops.len();
    // Only as the first op: it expects an empty stack, which is what the step has there.
    if let Some(&Op::JumpUnlessFieldCmpConst(s, c, k, to)) = code.ops.first() {
        return code.consts.get(k as usize).is_some_and(|k| !compare(c, field(s), k) && to as usize >= end);
    }
    match in_one_register(code, field) {
        Register::At(pc, top) => matches!(code.ops[pc], Op::JumpIfFalse(to) if !top && to as usize >= end),
        Register::End(_) | Register::Unknown => false,
    }
}

/// Where [`in_one_register`] stopped.
enum Register {
    /// It ran off the end of the code; the bool is the value left.
    End(bool),
    /// It reached op `pc`, which is not one it runs, with the bool on top of the stack.
    At(usize, bool),
    /// A constant is missing (not made by the compiler): no answer.
    Unknown,
}

/// Runs code from its start as long as it is comparisons of fields with constants or with
/// fields, joined by the jumps of `&&` and `||`: in such code the stack never holds more than
/// one bool (each comparison pushes one; each jump keeps it or pops it), so one register is the
/// whole stack, and nothing in it can fault. Goals of that shape are answered this way
/// ([`Vm::predicate`]), and so are the guards that open steps ([`skips_whole`]).
fn in_one_register<'a>(code: &Code, field: impl Fn(u16) -> &'a Value) -> Register {
    let (ops, consts) = (&code.ops, &code.consts);
    let mut top = false;
    let mut pc = 0;
    while let Some(&op) = ops.get(pc) {
        match op {
            Op::FieldCmpConst(s, c, k) => match consts.get(k as usize) {
                Some(k) => top = compare(c, field(s), k),
                None => return Register::Unknown,
            },
            Op::FieldCmpField(a, b, c) => top = compare(c, field(a), field(b)),
            Op::JumpIfFalseOrPop(to) if !top => {
                pc = to as usize;
                continue;
            }
            Op::JumpIfTrueOrPop(to) if top => {
                pc = to as usize;
                continue;
            }
            Op::JumpIfFalseOrPop(_) | Op::JumpIfTrueOrPop(_) => {}
            _ => return Register::At(pc, top),
        }
        pc += 1;
    }
    Register::End(top)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps(src: &str) -> Vec<Code> {
        let mut sources = ved_syntax::SourceMap::new();
        let id = sources.add("t.ved", src);
        let ast = ved_syntax::parse_file(id, src).expect("parses");
        let program = ved_check::check_program(&[ast]).program.expect("checks");
        crate::compile_program(&program).domains[0].transitions.iter().map(|t| t.code.clone()).collect()
    }

    #[test]
    fn a_guard_that_is_false_skips_the_step_and_one_that_is_true_does_not() {
        let code = steps(
            "domain D {\nstate {\na: int\ns: string\n}\n}\n\
             transition up { step { if a < 5 { a += 1 } } }\n\
             transition both { step { if s == \"x\" && a > 1 || a == 9 { a = 0 } } }\n\
             transition tail { step { if a < 5 { a += 1 } \n a += 0 } }\n",
        );
        let state = |a: i64, s: &str| vec![Value::Int(a), Value::Str(s.into())];
        assert!(skips_whole(&code[0], &state(5, "")));
        assert!(!skips_whole(&code[0], &state(4, "")));
        assert!(skips_whole(&code[1], &state(2, "y")));
        assert!(skips_whole(&code[1], &state(1, "x")));
        assert!(!skips_whole(&code[1], &state(2, "x")));
        assert!(!skips_whole(&code[1], &state(9, "y")));
        // The condition does not cover the whole step: it always runs.
        assert!(!skips_whole(&code[2], &state(5, "")));
    }
}
