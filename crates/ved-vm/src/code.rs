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
    let mut l = Lower::default();
    l.expr(e);
    l.finish(0)
}

/// Lowers a transition's step.
pub fn compile_step(t: &hir::Transition) -> Code {
    let mut l = Lower::default();
    l.block(&t.body);
    l.finish(t.locals)
}

#[derive(Default)]
struct Lower {
    code: Code,
    depth: i64,
    max_depth: i64,
}

impl Lower {
    fn finish(mut self, locals: u16) -> Code {
        self.code.locals = locals;
        self.code.max_stack = self.max_depth as u32;
        self.code
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
        };
    }
    out
}

/// Field names and types of a domain, for the runtime's edges.
pub fn field_types(d: &hir::Domain) -> Vec<(String, Type)> {
    d.fields.iter().map(|f| (f.name.clone(), f.ty.clone())).collect()
}
