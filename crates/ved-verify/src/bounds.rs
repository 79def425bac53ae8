//! Which values each field ranges over: a `verify { ... }` annotation where the
//! program gives one, otherwise a bound derived from the program's literals.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use ved_check::hir::{self, ExprKind, StmtKind};
use ved_check::Type;
use ved_vm::{CompiledDomain, Value, Vm};

/// How the derived bounds are shaped.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// An int field ranges over every int literal of the domain, plus and minus this.
    pub margin: i64,
    /// Lists and sets hold at most this many elements.
    pub max_len: usize,
}

impl Default for Shape {
    fn default() -> Shape {
        Shape { margin: 2, max_len: 3 }
    }
}

/// The values one field takes in the start states.
#[derive(Clone, Debug)]
pub struct FieldBound {
    pub field: String,
    pub ty: Type,
    pub values: Vec<Value>,
    /// `true` when a `verify` annotation gave (or widened) the bound.
    pub annotated: bool,
    /// For people: `workers in -2..7`, `status in ["a", "b"]`, `ports: lists of up to 3 of [80, 443, 444]`.
    pub describe: String,
}

/// The literals of a domain, gathered once.
#[derive(Default)]
struct Literals {
    ints: BTreeSet<i64>,
    strings: BTreeSet<Arc<str>>,
    /// String literals compared with or assigned to each field.
    strings_of: BTreeMap<u16, BTreeSet<Arc<str>>>,
}

impl Literals {
    fn gather(d: &hir::Domain) -> Literals {
        let mut l = Literals::default();
        for f in &d.fields {
            if let Some(e) = &f.default {
                l.expr(e);
            }
        }
        for g in &d.goals {
            l.expr(&g.predicate);
        }
        for t in &d.transitions {
            l.stmts(&t.body);
        }
        l
    }

    fn stmts(&mut self, body: &[hir::Stmt]) {
        for s in body {
            match &s.kind {
                StmtKind::Let { value, .. } => self.expr(value),
                StmtKind::Assign { field, value } => {
                    if let ExprKind::Str(x) = &value.kind {
                        self.strings_of.entry(*field).or_default().insert(Arc::from(x.as_str()));
                    }
                    self.expr(value);
                }
                StmtKind::If { cond, then_body, else_body } => {
                    self.expr(cond);
                    self.stmts(then_body);
                    self.stmts(else_body);
                }
                StmtKind::Emit { args, .. } => args.iter().for_each(|a| self.expr(a)),
            }
        }
    }

    fn expr(&mut self, e: &hir::Expr) {
        match &e.kind {
            ExprKind::Int(n) => {
                self.ints.insert(*n);
            }
            ExprKind::Str(s) => {
                self.strings.insert(Arc::from(s.as_str()));
            }
            ExprKind::Bool(_) | ExprKind::Field(_) | ExprKind::Local(_) => {}
            ExprKind::List(xs) | ExprKind::Set(xs) => xs.iter().for_each(|x| self.expr(x)),
            ExprKind::Map(kvs) => kvs.iter().for_each(|(k, v)| {
                self.expr(k);
                self.expr(v);
            }),
            ExprKind::Neg(x) => {
                if let ExprKind::Int(n) = x.kind {
                    self.ints.insert(n.wrapping_neg());
                }
                self.expr(x);
            }
            ExprKind::Not(x) => self.expr(x),
            ExprKind::Compare(_, a, b) => {
                for (f, other) in [(a, b), (b, a)] {
                    if let (ExprKind::Field(slot), ExprKind::Str(s)) = (&f.kind, &other.kind) {
                        self.strings_of.entry(*slot).or_default().insert(Arc::from(s.as_str()));
                    }
                }
                self.expr(a);
                self.expr(b);
            }
            ExprKind::Arith(_, a, b) | ExprKind::Concat(a, b) | ExprKind::And(a, b) | ExprKind::Or(a, b) => {
                self.expr(a);
                self.expr(b);
            }
            ExprKind::Call { receiver, args, .. } => {
                self.expr(receiver);
                args.iter().for_each(|a| self.expr(a));
            }
            ExprKind::Index(a, b) => {
                self.expr(a);
                self.expr(b);
            }
        }
    }
}

fn list_text(values: &[Value]) -> String {
    let parts: Vec<String> = values.iter().map(Value::to_string).collect();
    format!("[{}]", parts.join(", "))
}

/// A value that is none of `pool`: for ints one past the largest, for strings a new word.
fn other_than(pool: &BTreeSet<Value>, elem: &Type) -> Option<Value> {
    match elem {
        Type::Int => {
            let max = pool.iter().filter_map(|v| if let Value::Int(n) = v { Some(*n) } else { None }).max();
            Some(Value::Int(max.map_or(1, |m| m.saturating_add(1))))
        }
        Type::Str => {
            let mut i = 0;
            loop {
                let s: Arc<str> = Arc::from(if i == 0 { "other".to_string() } else { format!("other{i}") });
                if !pool.contains(&Value::Str(s.clone())) {
                    return Some(Value::Str(s));
                }
                i += 1;
            }
        }
        // Bools have no third value; other element types get none.
        _ => None,
    }
}

/// The scalar values a derived bound gives an element type.
fn scalar_pool(lits: &Literals, elem: &Type) -> BTreeSet<Value> {
    match elem {
        Type::Int => lits.ints.iter().map(|n| Value::Int(*n)).collect(),
        Type::Str => lits.strings.iter().map(|s| Value::Str(s.clone())).collect(),
        Type::Bool => [Value::Bool(false), Value::Bool(true)].into_iter().collect(),
        _ => BTreeSet::new(),
    }
}

/// Every list of up to `max_len` elements drawn from `pool`, shortest first.
fn lists(pool: &[Value], max_len: usize) -> Vec<Value> {
    let mut out = vec![Value::List(Arc::new(Vec::new()))];
    let mut layer: Vec<Vec<Value>> = vec![Vec::new()];
    for _ in 0..max_len {
        let mut next = Vec::new();
        for prefix in &layer {
            for v in pool {
                let mut l = prefix.clone();
                l.push(v.clone());
                next.push(l);
            }
        }
        out.extend(next.iter().cloned().map(|l| Value::List(Arc::new(l))));
        layer = next;
    }
    out
}

/// Every set of up to `max_len` elements of `pool`, smallest first.
fn sets(pool: &[Value], max_len: usize) -> Vec<Value> {
    fn grow(pool: &[Value], from: usize, cur: &mut Vec<Value>, max_len: usize, out: &mut Vec<Vec<Value>>) {
        out.push(cur.clone());
        if cur.len() == max_len {
            return;
        }
        for i in from..pool.len() {
            cur.push(pool[i].clone());
            grow(pool, i + 1, cur, max_len, out);
            cur.pop();
        }
    }
    let mut all = Vec::new();
    grow(pool, 0, &mut Vec::new(), max_len, &mut all);
    all.sort_by_key(Vec::len);
    all.into_iter().map(|s| Value::Set(Arc::new(s.into_iter().collect()))).collect()
}

/// Evaluates a checked constant list literal.
fn eval_values(vm: &mut Vm, e: &hir::Expr) -> Result<Vec<Value>, String> {
    match vm.eval(&ved_vm::compile_expr(e), &[]) {
        Ok(Value::List(xs)) => Ok(xs.as_ref().clone()),
        Ok(other) => Err(format!("a bound's values must be a list, found {other}")),
        Err(f) => Err(format!("a bound's values cannot be computed: {f}")),
    }
}

/// The bound of every field of a domain, in field order.
pub fn field_bounds(d: &hir::Domain, compiled: &CompiledDomain, shape: Shape) -> Result<Vec<FieldBound>, String> {
    let lits = Literals::gather(d);
    let mut vm = Vm::new();
    let initial = vm.initial_state(compiled).map_err(|f| format!("the initial state cannot be computed: {f}"))?;
    let mut out = Vec::with_capacity(d.fields.len());
    for (slot, f) in d.fields.iter().enumerate() {
        let annotation = d.verify.iter().find(|b| usize::from(b.field) == slot);
        let default = initial[slot].clone();
        let name = f.name.clone();
        let (mut values, annotated, describe) = match (&f.ty, annotation.map(|a| &a.values)) {
            (Type::Int, Some(hir::VerifyValues::Range { lo, hi })) => {
                ((*lo..=*hi).map(Value::Int).collect::<Vec<_>>(), true, format!("{name} in {lo}..{hi}"))
            }
            (Type::Int, None) => {
                let mut set = BTreeSet::new();
                let anchors: Vec<i64> = lits.ints.iter().copied().chain([0]).collect();
                for n in anchors {
                    for k in -shape.margin..=shape.margin {
                        set.insert(n.saturating_add(k));
                    }
                }
                let v: Vec<Value> = set.into_iter().map(Value::Int).collect();
                let text = format!("{name} in {} (each int literal ± {})", compact_ints(&v), shape.margin);
                (v, false, text)
            }
            (Type::Str, ann) => {
                let mut set: BTreeSet<Value> =
                    lits.strings_of.get(&(slot as u16)).into_iter().flatten().map(|s| Value::Str(s.clone())).collect();
                let annotated = if let Some(hir::VerifyValues::Values(e)) = ann {
                    set.extend(eval_values(&mut vm, e)?);
                    true
                } else {
                    false
                };
                let v: Vec<Value> = set.into_iter().collect();
                let text = format!("{name} in {}", list_text(&v));
                (v, annotated, text)
            }
            (Type::Bool, Some(hir::VerifyValues::Values(e))) => {
                let v = eval_values(&mut vm, e)?;
                let text = format!("{name} in {}", list_text(&v));
                (v, true, text)
            }
            (Type::Bool, _) => (vec![Value::Bool(false), Value::Bool(true)], false, format!("{name} in [false, true]")),
            (Type::List(elem) | Type::Set(elem), ann) => {
                let (pool, annotated) = match ann {
                    Some(hir::VerifyValues::Values(e)) => {
                        (eval_values(&mut vm, e)?.into_iter().collect::<BTreeSet<_>>(), true)
                    }
                    _ => {
                        let mut pool = scalar_pool(&lits, elem);
                        if let Some(o) = other_than(&pool, elem) {
                            pool.insert(o);
                        }
                        (pool, false)
                    }
                };
                let pool: Vec<Value> = pool.into_iter().collect();
                let is_set = matches!(f.ty, Type::Set(_));
                let v = if is_set { sets(&pool, shape.max_len) } else { lists(&pool, shape.max_len) };
                let kind = if is_set { "sets" } else { "lists" };
                let text = format!("{name}: {kind} of up to {} of {}", shape.max_len, list_text(&pool));
                (v, annotated, text)
            }
            (Type::Int, Some(hir::VerifyValues::Values(e))) => {
                let v = eval_values(&mut vm, e)?;
                let text = format!("{name} in {}", list_text(&v));
                (v, true, text)
            }
            (Type::Map(_) | Type::Error, _) => (Vec::new(), false, format!("{name} = its initial value")),
        };
        if !values.contains(&default) {
            values.push(default);
        }
        out.push(FieldBound { field: name, ty: f.ty.clone(), values, annotated, describe });
    }
    Ok(out)
}

/// `-2..7` for a contiguous run, else the list.
fn compact_ints(v: &[Value]) -> String {
    let ints: Vec<i64> = v.iter().filter_map(|x| if let Value::Int(n) = x { Some(*n) } else { None }).collect();
    match (ints.first(), ints.last()) {
        (Some(lo), Some(hi)) if ints.len() as i64 == hi - lo + 1 => format!("{lo}..{hi}"),
        _ => list_text(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_are_every_combination_up_to_the_length() {
        let pool: Vec<Value> = [1, 2, 3, 4].into_iter().map(Value::Int).collect();
        let s = sets(&pool, 3);
        assert_eq!(s.len(), 1 + 4 + 6 + 4);
        let unique: BTreeSet<&Value> = s.iter().collect();
        assert_eq!(unique.len(), s.len());
        assert_eq!(sets(&pool[..2], 3).len(), 1 + 2 + 1);
    }

    #[test]
    fn lists_allow_repeats_and_orders() {
        let pool: Vec<Value> = [1, 2].into_iter().map(Value::Int).collect();
        let l = lists(&pool, 2);
        assert_eq!(l.len(), 1 + 2 + 4);
        assert!(l.contains(&Value::List(Arc::new(vec![Value::Int(2), Value::Int(1)]))));
        assert!(l.contains(&Value::List(Arc::new(vec![Value::Int(1), Value::Int(1)]))));
    }
}
