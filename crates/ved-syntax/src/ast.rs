//! The syntax tree, exactly as written. Nothing here is resolved or typed:
//! that is `ved-check`'s job. Every node carries the span it was parsed from.

use crate::span::Span;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

/// One parsed file. Files of one program are checked together, in order.
#[derive(Clone, Debug, PartialEq)]
pub struct File {
    pub items: Vec<Item>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    Domain(Domain),
    /// A `goal` at the top level: it belongs to the domain declared above it.
    Goal(Goal),
    /// A `transition` at the top level: it belongs to the domain declared above it.
    Transition(Transition),
    Scenario(Scenario),
    /// A `verify { ... }` block at the top level: it belongs to the domain declared above it.
    Verify(VerifyBlock),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Domain {
    pub name: Ident,
    pub members: Vec<DomainMember>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum DomainMember {
    State(StateBlock),
    Goal(Goal),
    Transition(Transition),
    Verify(VerifyBlock),
}

/// `verify { workers in 0..20, status in ["up", "down"] }`: the values `ved verify`
/// gives fields, instead of the ones it derives from the program's literals.
#[derive(Clone, Debug, PartialEq)]
pub struct VerifyBlock {
    pub bounds: Vec<VerifyBound>,
    /// The `verify` keyword.
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct VerifyBound {
    pub field: Ident,
    pub values: VerifyValues,
    /// From the field name to the end of the bound.
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub enum VerifyValues {
    /// `lo..hi`, both ends included.
    Range { lo: i64, hi: i64 },
    /// A list literal of values (for a list or set field: of elements).
    Values(Expr),
}

#[derive(Clone, Debug, PartialEq)]
pub struct StateBlock {
    pub fields: Vec<Field>,
    /// The `state` keyword.
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Field {
    pub name: Ident,
    pub ty: TypeExpr,
    pub default: Option<Expr>,
    pub span: Span,
}

/// `int`, `bool`, `string`, `list<int>`, `map<string, list<int>>`, ...
#[derive(Clone, Debug, PartialEq)]
pub struct TypeExpr {
    pub name: Ident,
    pub args: Vec<TypeExpr>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Goal {
    /// `None` for the shorthand form `goal EXPR`.
    pub name: Option<Ident>,
    pub predicate: Expr,
    /// From the `goal` keyword to the end of the goal.
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    pub name: Ident,
    /// `optimistic transition X { ... }`: state changes apply at once instead of
    /// waiting for the intents to succeed.
    pub optimistic: bool,
    pub step: Block,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Block {
    pub stmts: Vec<Stmt>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Stmt {
    pub kind: StmtKind,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AssignOp {
    /// `=`
    Set,
    /// `+=`
    Add,
    /// `-=`
    Sub,
}

#[derive(Clone, Debug, PartialEq)]
pub enum StmtKind {
    /// `let name = value` or `let name: type = value`.
    Let { name: Ident, ty: Option<TypeExpr>, value: Expr },
    /// `target = value`, `target += value`, `target -= value`; `op_span` covers the operator.
    Assign { target: Ident, op: AssignOp, op_span: Span, value: Expr },
    /// `if cond { } else if cond { } else { }`; an `else if` is an `If` nested in `else_block`.
    If { cond: Expr, then_block: Block, else_block: Option<Block> },
    /// `emit Adapter.Action(args...)`; the parentheses may be empty.
    Emit { adapter: Ident, action: Ident, args: Vec<Expr> },
}

#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    /// `!`
    Not,
    /// `-`
    Neg,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
}

impl BinaryOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinaryOp::Add => "+",
            BinaryOp::Sub => "-",
            BinaryOp::Mul => "*",
            BinaryOp::Div => "/",
            BinaryOp::Rem => "%",
            BinaryOp::Eq => "==",
            BinaryOp::Ne => "!=",
            BinaryOp::Lt => "<",
            BinaryOp::Le => "<=",
            BinaryOp::Gt => ">",
            BinaryOp::Ge => ">=",
            BinaryOp::And => "&&",
            BinaryOp::Or => "||",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum ExprKind {
    Int(i64),
    Bool(bool),
    /// The string's value, escapes already processed.
    Str(String),
    /// `[a, b]`: a list, or a set when the context expects one.
    List(Vec<Expr>),
    /// `set[a, b]`: always a set.
    SetLit(Vec<Expr>),
    /// `["k": v, ...]`, or `[:]` for the empty map.
    MapLit(Vec<(Expr, Expr)>),
    /// A state field or a `let` name.
    Name(Ident),
    Unary {
        op: UnaryOp,
        op_span: Span,
        operand: Box<Expr>,
    },
    Binary {
        op: BinaryOp,
        op_span: Span,
        lhs: Box<Expr>,
        rhs: Box<Expr>,
    },
    /// `recv.name` (a property, `args == None`) or `recv.name(args)` (a method).
    Member {
        receiver: Box<Expr>,
        name: Ident,
        args: Option<Vec<Expr>>,
    },
    /// `recv[index]`.
    Index {
        receiver: Box<Expr>,
        index: Box<Expr>,
    },
    /// `(expr)`: kept so that the formatter can round-trip and spans stay honest.
    Paren(Box<Expr>),
}

/// `scenario "name" { steps }`: a chaos scenario, run by `ved test`.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    pub name: String,
    pub name_span: Span,
    pub steps: Vec<Step>,
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub kind: StepKind,
    pub span: Span,
}

/// `FIELD = EXPR` inside `given` and `observe`.
#[derive(Clone, Debug, PartialEq)]
pub struct FieldValue {
    pub field: Ident,
    pub value: Expr,
    /// `F += E` (`Some(false)`) or `F -= E` (`Some(true)`): a relative change, as an
    /// alert reports it; `None` for `F = E`, a reading.
    pub relative: Option<bool>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum StepKind {
    /// `domain NAME`
    Domain(Ident),
    /// `given FIELD = EXPR` (one or more, comma separated)
    Given(Vec<FieldValue>),
    /// `observe FIELD = EXPR, ...`: one mailbox message.
    Observe(Vec<FieldValue>),
    /// `simultaneously { observe ...  observe ... }`: several messages that arrive
    /// together, before the runtime gets to run.
    Simultaneously(Vec<Vec<FieldValue>>),
    /// `fail ADAPTER.ACTION` or `fail ADAPTER.ACTION N times`.
    Fail {
        adapter: Ident,
        action: Ident,
        times: u32,
    },
    /// `advance 500ms`, stored in milliseconds.
    Advance {
        ms: u64,
    },
    /// `hold intents`: from here on, intents stay in flight until an `answer` step.
    HoldIntents,
    /// `answer oldest`, `answer newest`, `answer oldest failed`, `answer newest failed`.
    Answer {
        newest: bool,
        ok: bool,
    },
    /// `watch FIELD, ...`: a watcher feeds these fields, so an effect on them counts
    /// only once an observation confirms it.
    Watch(Vec<Ident>),
    Expect(Expect),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Expect {
    /// `expect EXPR`
    Holds(Expr),
    /// `expect stable`
    Stable,
    /// `expect stuck`
    Stuck,
    /// `expect livelock`
    Livelock,
    /// `expect waiting`: goals false, transitions pending (intents in flight or backing off).
    Waiting,
    /// `expect degraded`
    Degraded,
    /// `expect stable within N ticks`
    StableWithin { ticks: u32 },
    /// `expect emitted A.B(args)`, `expect emitted A.B`, optional `N times`.
    Emitted { adapter: Ident, action: Ident, args: Option<Vec<Expr>>, times: Option<u32> },
    /// `expect not emitted A.B` (optionally with args).
    NotEmitted { adapter: Ident, action: Ident, args: Option<Vec<Expr>> },
    /// `expect faulted TRANSITION` or `expect faulted TRANSITION N times`.
    Faulted { transition: Ident, times: Option<u32> },
    /// `expect fired TRANSITION` or `expect fired TRANSITION N times`: the transition's
    /// step ran and committed (or went pending) since the last observe or advance.
    Fired { transition: Ident, times: Option<u32> },
}
