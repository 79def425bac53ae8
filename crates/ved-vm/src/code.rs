//! The compact lowered form: a stack bytecode with a constant pool, and the
//! lowering from HIR to it. Constant literals are built once, here.

use crate::value::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::Arc;
use ved_check::hir::{self, ArithOp, Builtin, CmpOp};
use ved_check::Type;
use ved_syntax::Span;

/// One instruction. Operands are indices into the code's tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Push `consts[i]`.
    Const(u32),
    LoadField(u16),
    LoadLocal(u16),
    StoreLocal(u16),
    StoreField(u16),
    Not,
    Neg,
    Arith(ArithOp),
    Concat,
    Cmp(CmpOp),
    /// Pop `n` values into a list / set; pop `2n` (key, value, ...) into a map.
    MakeList(u32),
    MakeSet(u32),
    MakeMap(u32),
    /// Pop the arguments, then the receiver; push the result.
    Call(Builtin),
    Index,
    /// Pop the arguments of `emits[i]` and record an intent.
    Emit(u32),
    Jump(u32),
    /// Pop a bool; jump when false.
    JumpIfFalse(u32),
    /// `&&`: when the top is false, jump and keep it; otherwise pop it.
    JumpIfFalseOrPop(u32),
    /// `||`: when the top is true, jump and keep it; otherwise pop it.
    JumpIfTrueOrPop(u32),
    // Superinstructions: the shapes most goals and guards take, fused by [`fuse`] after
    // lowering. Each does what the ops it replaces do, without cloning the field onto the
    // stack or dispatching three or four times.
    /// `LoadField(slot) Const(c) Cmp(op)`: push `field op consts[c]`.
    FieldCmpConst(u16, CmpOp, u32),
    /// `LoadField(a) LoadField(b) Cmp(op)`: push `a op b`.
    FieldCmpField(u16, u16, CmpOp),
    /// `LoadField(slot) Const(c) Cmp(op) JumpIfFalse(to)`: jump unless `field op consts[c]`.
    JumpUnlessFieldCmpConst(u16, CmpOp, u32, u32),
    /// `LoadField(slot) Const(c) Arith(op) StoreField(slot)` with an int constant:
    /// `field = field op c` (`workers += 1`), faulting on overflow like `Arith`.
    FieldArithConst(u16, ArithOp, u32),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmitSite {
    pub adapter: Arc<str>,
    pub action: Arc<str>,
    pub argc: u32,
}

/// A compiled expression or step.
#[derive(Clone, Debug, Default)]
pub struct Code {
    pub ops: Vec<Op>,
    /// The source span of each op, for fault reports.
    pub spans: Vec<Span>,
    pub consts: Vec<Value>,
    pub emits: Vec<EmitSite>,
    pub locals: u16,
    /// The deepest the value stack gets.
    pub max_stack: u32,
}

/// Lowers a standalone expression (a goal, a default, a scenario expression).
pub fn compile_expr(e: &hir::Expr) -> Code {
    compile_expr_with(e, true)
}

/// Lowers a transition's step.
pub fn compile_step(t: &hir::Transition) -> Code {
    compile_step_with(t, true)
}

pub(crate) fn compile_expr_with(e: &hir::Expr, fused: bool) -> Code {
    let mut l = Lower::default();
    l.expr(e);
    l.finish(0, fused)
}

pub(crate) fn compile_step_with(t: &hir::Transition, fused: bool) -> Code {
    let mut l = Lower::default();
    l.block(&t.body);
    l.finish(t.locals, fused)
}

#[derive(Default)]
struct Lower {
    code: Code,
    depth: i64,
    max_depth: i64,
}

impl Lower {
    fn finish(mut self, locals: u16, fused: bool) -> Code {
        self.code.locals = locals;
        self.code.max_stack = self.max_depth as u32;
        if fused {
            fuse(self.code)
        } else {
            self.code
        }
    }

    fn emit(&mut self, op: Op, span: Span) -> usize {
        let effect: i64 = match op {
            Op::Const(_) | Op::LoadField(_) | Op::LoadLocal(_) => 1,
            Op::StoreLocal(_) | Op::StoreField(_) | Op::JumpIfFalse(_) => -1,
            Op::Not | Op::Neg | Op::Jump(_) | Op::JumpIfFalseOrPop(_) | Op::JumpIfTrueOrPop(_) => 0,
            Op::Arith(_) | Op::Concat | Op::Cmp(_) | Op::Index => -1,
            Op::MakeList(n) | Op::MakeSet(n) => 1 - n as i64,
            Op::MakeMap(n) => 1 - 2 * n as i64,
            Op::Call(b) => -(builtin_argc(b) as i64),
            Op::Emit(i) => -(self.code.emits[i as usize].argc as i64),
            Op::FieldCmpConst(..) | Op::FieldCmpField(..) => 1,
            Op::JumpUnlessFieldCmpConst(..) | Op::FieldArithConst(..) => 0,
        };
        self.depth += effect;
        self.max_depth = self.max_depth.max(self.depth).max(self.depth - effect);
        self.code.ops.push(op);
        self.code.spans.push(span);
        self.code.ops.len() - 1
    }

    fn patch(&mut self, at: usize) {
        let target = self.code.ops.len() as u32;
        match &mut self.code.ops[at] {
            Op::Jump(t) | Op::JumpIfFalse(t) | Op::JumpIfFalseOrPop(t) | Op::JumpIfTrueOrPop(t) => *t = target,
            _ => unreachable!("patching a non-jump"),
        }
    }

    fn constant(&mut self, v: Value, span: Span) {
        // Reuse equal scalars; collections are rarely repeated.
        let idx = match self
            .code
            .consts
            .iter()
            .position(|c| *c == v && !matches!(c, Value::List(_) | Value::Set(_) | Value::Map(_)))
        {
            Some(i) => i,
            None => {
                self.code.consts.push(v);
                self.code.consts.len() - 1
            }
        };
        self.emit(Op::Const(idx as u32), span);
    }

    fn block(&mut self, body: &[hir::Stmt]) {
        for s in body {
            self.stmt(s);
        }
    }

    fn stmt(&mut self, s: &hir::Stmt) {
        match &s.kind {
            hir::StmtKind::Let { local, value } => {
                self.expr(value);
                self.emit(Op::StoreLocal(*local), s.span);
            }
            hir::StmtKind::Assign { field, value } => {
                self.expr(value);
                self.emit(Op::StoreField(*field), s.span);
            }
            hir::StmtKind::If { cond, then_body, else_body } => {
                self.expr(cond);
                let to_else = self.emit(Op::JumpIfFalse(0), cond.span);
                self.block(then_body);
                if else_body.is_empty() {
                    self.patch(to_else);
                } else {
                    let to_end = self.emit(Op::Jump(0), s.span);
                    self.patch(to_else);
                    self.block(else_body);
                    self.patch(to_end);
                }
            }
            hir::StmtKind::Emit { adapter, action, args } => {
                for a in args {
                    self.expr(a);
                }
                self.code.emits.push(EmitSite {
                    adapter: Arc::from(adapter.as_str()),
                    action: Arc::from(action.as_str()),
                    argc: args.len() as u32,
                });
                let idx = self.code.emits.len() as u32 - 1;
                self.emit(Op::Emit(idx), s.span);
            }
        }
    }

    fn expr(&mut self, e: &hir::Expr) {
        if let Some(v) = const_value(e) {
            self.constant(v, e.span);
            return;
        }
        match &e.kind {
            hir::ExprKind::Int(_) | hir::ExprKind::Bool(_) | hir::ExprKind::Str(_) => {
                unreachable!("constants are folded")
            }
            hir::ExprKind::List(items) => {
                for i in items {
                    self.expr(i);
                }
                self.emit(Op::MakeList(items.len() as u32), e.span);
            }
            hir::ExprKind::Set(items) => {
                for i in items {
                    self.expr(i);
                }
                self.emit(Op::MakeSet(items.len() as u32), e.span);
            }
            hir::ExprKind::Map(entries) => {
                for (k, v) in entries {
                    self.expr(k);
                    self.expr(v);
                }
                self.emit(Op::MakeMap(entries.len() as u32), e.span);
            }
            hir::ExprKind::Field(slot) => {
                self.emit(Op::LoadField(*slot), e.span);
            }
            hir::ExprKind::Local(slot) => {
                self.emit(Op::LoadLocal(*slot), e.span);
            }
            hir::ExprKind::Not(x) => {
                self.expr(x);
                self.emit(Op::Not, e.span);
            }
            hir::ExprKind::Neg(x) => {
                self.expr(x);
                self.emit(Op::Neg, e.span);
            }
            hir::ExprKind::Arith(op, l, r) => {
                self.expr(l);
                self.expr(r);
                self.emit(Op::Arith(*op), e.span);
            }
            hir::ExprKind::Concat(l, r) => {
                self.expr(l);
                self.expr(r);
                self.emit(Op::Concat, e.span);
            }
            hir::ExprKind::Compare(op, l, r) => {
                self.expr(l);
                self.expr(r);
                self.emit(Op::Cmp(*op), e.span);
            }
            hir::ExprKind::And(l, r) => {
                self.expr(l);
                let j = self.emit(Op::JumpIfFalseOrPop(0), e.span);
                self.depth -= 1; // the popping path
                self.expr(r);
                self.patch(j);
            }
            hir::ExprKind::Or(l, r) => {
                self.expr(l);
                let j = self.emit(Op::JumpIfTrueOrPop(0), e.span);
                self.depth -= 1;
                self.expr(r);
                self.patch(j);
            }
            hir::ExprKind::Call { builtin, receiver, args } => {
                self.expr(receiver);
                for a in args {
                    self.expr(a);
                }
                self.emit(Op::Call(*builtin), e.span);
            }
            hir::ExprKind::Index(recv, idx) => {
                self.expr(recv);
                self.expr(idx);
                self.emit(Op::Index, e.span);
            }
        }
    }
}

/// Replaces the common op sequences with superinstructions (see [`Op`]). A sequence is
/// fused only when no jump lands inside it, so every path through the code runs the same
/// computation; jump targets are renumbered. Each fused op keeps the span of the op in it
/// that can fault (`Arith`) or else of the comparison. The stack bound stays the unfused
/// one, an upper bound.
fn fuse(code: Code) -> Code {
    let ops = &code.ops;
    let mut target = vec![false; ops.len() + 1];
    for op in ops {
        if let Op::Jump(t) | Op::JumpIfFalse(t) | Op::JumpIfFalseOrPop(t) | Op::JumpIfTrueOrPop(t) = *op {
            target[t as usize] = true;
        }
    }
    // Whether none of the ops after `at` in a sequence of `n` is a jump target.
    let whole = |at: usize, n: usize| at + n <= ops.len() && !target[at + 1..at + n].iter().any(|&t| t);
    let int_const = |c: u32| matches!(code.consts.get(c as usize), Some(Value::Int(_)));
    let mut out = Code { ops: Vec::with_capacity(ops.len()), spans: Vec::with_capacity(ops.len()), ..code.clone() };
    // The new index of every old one (and of the end), for renumbering jumps.
    let mut new_at = vec![0u32; ops.len() + 1];
    let mut i = 0;
    while i < ops.len() {
        let at = |k: usize| ops.get(i + k).copied();
        let (op, n, span) = match (at(0), at(1), at(2), at(3)) {
            (Some(Op::LoadField(s)), Some(Op::Const(c)), Some(Op::Cmp(cmp)), Some(Op::JumpIfFalse(t)))
                if whole(i, 4) =>
            {
                (Op::JumpUnlessFieldCmpConst(s, cmp, c, t), 4, code.spans[i + 2])
            }
            (Some(Op::LoadField(s)), Some(Op::Const(c)), Some(Op::Arith(a)), Some(Op::StoreField(d)))
                if s == d && int_const(c) && whole(i, 4) =>
            {
                (Op::FieldArithConst(s, a, c), 4, code.spans[i + 2])
            }
            (Some(Op::LoadField(s)), Some(Op::Const(c)), Some(Op::Cmp(cmp)), _) if whole(i, 3) => {
                (Op::FieldCmpConst(s, cmp, c), 3, code.spans[i + 2])
            }
            (Some(Op::LoadField(a)), Some(Op::LoadField(b)), Some(Op::Cmp(cmp)), _) if whole(i, 3) => {
                (Op::FieldCmpField(a, b, cmp), 3, code.spans[i + 2])
            }
            (Some(op), ..) => (op, 1, code.spans[i]),
            (None, ..) => break,
        };
        for k in 0..n {
            new_at[i + k] = out.ops.len() as u32;
        }
        out.ops.push(op);
        out.spans.push(span);
        i += n;
    }
    new_at[ops.len()] = out.ops.len() as u32;
    for op in &mut out.ops {
        match op {
            Op::Jump(t)
            | Op::JumpIfFalse(t)
            | Op::JumpIfFalseOrPop(t)
            | Op::JumpIfTrueOrPop(t)
            | Op::JumpUnlessFieldCmpConst(_, _, _, t) => *t = new_at[*t as usize],
            _ => {}
        }
    }
    out
}

/// How many arguments (besides the receiver) a builtin pops.
pub(crate) fn builtin_argc(b: Builtin) -> u32 {
    match b {
        Builtin::Length | Builtin::IsEmpty | Builtin::First | Builtin::Last | Builtin::Keys | Builtin::Values => 0,
        Builtin::Insert | Builtin::Get => 2,
        _ => 1,
    }
}

/// The value of an expression made only of literals, built once at lowering.
fn const_value(e: &hir::Expr) -> Option<Value> {
    Some(match &e.kind {
        hir::ExprKind::Int(i) => Value::Int(*i),
        hir::ExprKind::Bool(b) => Value::Bool(*b),
        hir::ExprKind::Str(s) => Value::Str(Arc::from(s.as_str())),
        hir::ExprKind::List(items) if items.len() <= crate::SIZE_MAX => {
            Value::List(Arc::new(items.iter().map(const_value).collect::<Option<Vec<_>>>()?))
        }
        hir::ExprKind::Set(items) => {
            Value::Set(Arc::new(items.iter().map(const_value).collect::<Option<BTreeSet<_>>>()?))
        }
        hir::ExprKind::Map(entries) => {
            let mut m = BTreeMap::new();
            for (k, v) in entries {
                let Value::Str(k) = const_value(k)? else {
                    return None;
                };
                m.insert(k, const_value(v)?);
            }
            Value::Map(Arc::new(m))
        }
        _ => return None,
    })
}

/// A readable listing of the bytecode, one op per line.
pub fn disassemble(code: &Code) -> String {
    let mut out = String::new();
    for (i, op) in code.ops.iter().enumerate() {
        let _ = write!(out, "{i:4}  ");
        let _ = match op {
            Op::Const(c) => writeln!(out, "const {}", code.consts[*c as usize]),
            Op::LoadField(s) => writeln!(out, "load_field {s}"),
            Op::LoadLocal(s) => writeln!(out, "load_local {s}"),
            Op::StoreLocal(s) => writeln!(out, "store_local {s}"),
            Op::StoreField(s) => writeln!(out, "store_field {s}"),
            Op::Not => writeln!(out, "not"),
            Op::Neg => writeln!(out, "neg"),
            Op::Arith(a) => writeln!(out, "{}", format!("{a:?}").to_lowercase()),
            Op::Concat => writeln!(out, "concat"),
            Op::Cmp(c) => writeln!(out, "{}", format!("{c:?}").to_lowercase()),
            Op::MakeList(n) => writeln!(out, "make_list {n}"),
            Op::MakeSet(n) => writeln!(out, "make_set {n}"),
            Op::MakeMap(n) => writeln!(out, "make_map {n}"),
            Op::Call(b) => writeln!(out, "call .{}", b.name()),
            Op::Index => writeln!(out, "index"),
            Op::Emit(e) => {
                let s = &code.emits[*e as usize];
                writeln!(out, "emit {}.{}/{}", s.adapter, s.action, s.argc)
            }
            Op::Jump(t) => writeln!(out, "jump {t}"),
            Op::JumpIfFalse(t) => writeln!(out, "jump_if_false {t}"),
            Op::JumpIfFalseOrPop(t) => writeln!(out, "jump_if_false_or_pop {t}"),
            Op::JumpIfTrueOrPop(t) => writeln!(out, "jump_if_true_or_pop {t}"),
            Op::FieldCmpConst(s, c, k) => {
                writeln!(out, "field_{} {s} {}", format!("{c:?}").to_lowercase(), code.consts[*k as usize])
            }
            Op::FieldCmpField(a, b, c) => writeln!(out, "field_{}_field {a} {b}", format!("{c:?}").to_lowercase()),
            Op::JumpUnlessFieldCmpConst(s, c, k, t) => writeln!(
                out,
                "jump_unless_field_{} {s} {} {t}",
                format!("{c:?}").to_lowercase(),
                code.consts[*k as usize]
            ),
            Op::FieldArithConst(s, a, k) => {
                writeln!(out, "field_{}_const {s} {}", format!("{a:?}").to_lowercase(), code.consts[*k as usize])
            }
        };
    }
    out
}

/// Field names and types of a domain, for the runtime's edges.
pub fn field_types(d: &hir::Domain) -> Vec<(String, Type)> {
    d.fields.iter().map(|f| (f.name.clone(), f.ty.clone())).collect()
}
