//! The checked program: names resolved to slots, every expression typed, every
//! member call resolved to a [`Builtin`], compound assignments desugared.
//! A `Program` only exists when checking found no error, so consumers
//! (the VM's lowering, the runtime) may rely on it being well-typed.

use crate::types::Type;
use ved_syntax::Span;

/// Index of a state field within its domain.
pub type FieldSlot = u16;
/// Index of a `let` binding within its transition.
pub type LocalSlot = u16;

#[derive(Clone, Debug)]
pub struct Program {
    pub domains: Vec<Domain>,
    pub scenarios: Vec<Scenario>,
}

impl Program {
    pub fn domain(&self, name: &str) -> Option<(usize, &Domain)> {
        self.domains.iter().enumerate().find(|(_, d)| d.name == name)
    }
}

#[derive(Clone, Debug)]
pub struct Domain {
    pub name: String,
    pub span: Span,
    pub fields: Vec<Field>,
    /// At least zero; a domain with no goal is stable whenever it is idle.
    pub goals: Vec<Goal>,
    /// In declaration order (the order ticks visit them), top-level ones included.
    pub transitions: Vec<Transition>,
    /// The bounds `verify { ... }` gives fields, in declaration order.
    pub verify: Vec<VerifyBound>,
}

/// The values `ved verify` gives one field.
#[derive(Clone, Debug)]
pub struct VerifyBound {
    pub field: FieldSlot,
    pub values: VerifyValues,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub enum VerifyValues {
    /// An int field: every value from `lo` to `hi`, both included.
    Range { lo: i64, hi: i64 },
    /// A constant list literal of values of the field's type (for a list or set
    /// field, of its element type). It refers to no field.
    Values(Expr),
}

impl Domain {
    pub fn field(&self, name: &str) -> Option<(FieldSlot, &Field)> {
        self.fields.iter().enumerate().find(|(_, f)| f.name == name).map(|(i, f)| (i as FieldSlot, f))
    }

    pub fn transition(&self, name: &str) -> Option<(usize, &Transition)> {
        self.transitions.iter().enumerate().find(|(_, t)| t.name == name)
    }
}

#[derive(Clone, Debug)]
pub struct Field {
    pub name: String,
    pub ty: Type,
    /// The declared default, or `None` for the type's zero value
    /// (int 0, bool false, string "", empty collections).
    /// A default never refers to fields or locals.
    pub default: Option<Expr>,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub struct Goal {
    /// The declared name, or `goal#N` (1-based, among the domain's goals) for the shorthand form.
    pub name: String,
    pub predicate: Expr,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub struct Transition {
    pub name: String,
    pub optimistic: bool,
    pub body: Vec<Stmt>,
    /// How many local slots the body uses.
    pub locals: u16,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub struct Stmt {
    pub kind: StmtKind,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub enum StmtKind {
    Let {
        local: LocalSlot,
        value: Expr,
    },
    /// `x += e` arrives here as `x = x + e`.
    Assign {
        field: FieldSlot,
        value: Expr,
    },
    If {
        cond: Expr,
        then_body: Vec<Stmt>,
        else_body: Vec<Stmt>,
    },
    Emit {
        adapter: String,
        action: String,
        args: Vec<Expr>,
    },
}

#[derive(Clone, Debug)]
pub struct Expr {
    pub kind: ExprKind,
    pub ty: Type,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ArithOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Clone, Debug)]
pub enum ExprKind {
    Int(i64),
    Bool(bool),
    Str(String),
    /// Elements of a list literal (its `ty` is `list<T>`).
    List(Vec<Expr>),
    /// Elements of a set literal (its `ty` is `set<T>`); duplicates collapse.
    Set(Vec<Expr>),
    /// Entries of a map literal; a repeated key keeps the last value.
    Map(Vec<(Expr, Expr)>),
    Field(FieldSlot),
    Local(LocalSlot),
    Not(Box<Expr>),
    /// Integer negation (overflows on `i64::MIN`).
    Neg(Box<Expr>),
    /// Integer arithmetic; overflow and division by zero are runtime faults.
    Arith(ArithOp, Box<Expr>, Box<Expr>),
    /// `string + string`.
    Concat(Box<Expr>, Box<Expr>),
    /// `==`/`!=` on any two values of one type; the ordering ones on int and string.
    Compare(CmpOp, Box<Expr>, Box<Expr>),
    /// Short-circuit.
    And(Box<Expr>, Box<Expr>),
    /// Short-circuit.
    Or(Box<Expr>, Box<Expr>),
    /// A member: `receiver.builtin(args)`; properties have no args.
    Call {
        builtin: Builtin,
        receiver: Box<Expr>,
        args: Vec<Expr>,
    },
    /// `list[int]` (faults when out of range) or `map[string]` (faults when absent).
    Index(Box<Expr>, Box<Expr>),
}

/// Every member the language knows. Which receiver types accept which member is
/// the checker's business (see the language reference); the VM dispatches on the
/// receiver value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Builtin {
    /// `.length`: list, set, map, string.
    Length,
    /// `.is_empty`: list, set, map, string.
    IsEmpty,
    /// `.first` / `.last`: list (fault when empty); set (smallest / largest, fault when empty).
    First,
    Last,
    /// `.contains(x)`: element of list/set, key of map, substring of string.
    Contains,
    /// `.add(elem)`: list appends, set inserts.
    Add,
    /// `.add(list_or_set)`: each element, in order.
    AddAll,
    /// `.remove(elem)`: list drops every occurrence, set drops it, map drops the key.
    Remove,
    /// `.remove(list_or_set)`: each element (or key).
    RemoveAll,
    /// `.union(c)`: list keeps its order then appends what `c` adds that is not already there; set union.
    Union,
    /// `.intersection(c)`: elements of the receiver also in `c`, receiver order kept.
    Intersection,
    /// `.difference(c)`: elements of the receiver not in `c`, receiver order kept.
    Difference,
    /// `map.insert(key, value)`: a new map with that entry set.
    Insert,
    /// `map.get(key, default)`: the value, or `default` when absent.
    Get,
    /// `map.keys`: `set<string>`.
    Keys,
    /// `map.values`: `list<T>` in key order.
    Values,
}

impl Builtin {
    pub fn name(self) -> &'static str {
        match self {
            Builtin::Length => "length",
            Builtin::IsEmpty => "is_empty",
            Builtin::First => "first",
            Builtin::Last => "last",
            Builtin::Contains => "contains",
            Builtin::Add | Builtin::AddAll => "add",
            Builtin::Remove | Builtin::RemoveAll => "remove",
            Builtin::Union => "union",
            Builtin::Intersection => "intersection",
            Builtin::Difference => "difference",
            Builtin::Insert => "insert",
            Builtin::Get => "get",
            Builtin::Keys => "keys",
            Builtin::Values => "values",
        }
    }
}

/// A checked `scenario` block.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: String,
    pub span: Span,
    /// Index into `Program::domains`.
    pub domain: usize,
    /// `given` assignments, applied to the initial state before anything runs.
    pub given: Vec<(FieldSlot, Expr)>,
    pub steps: Vec<Step>,
}

/// One mailbox message of a scenario: readings (`F = E`) or, when `relative`,
/// changes to `int` fields (`F += E`, `F -= E`, with `-=` already negated), as an
/// alert reports them.
#[derive(Clone, Debug)]
pub struct ObserveMsg {
    pub relative: bool,
    pub writes: Vec<(FieldSlot, Expr)>,
}

#[derive(Clone, Debug)]
pub struct Step {
    pub kind: StepKind,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub enum StepKind {
    /// Each inner vec is one mailbox message; an `observe` has one, a
    /// `simultaneously` block has several, all queued before the runtime runs.
    /// The expressions are evaluated against the state when the message is applied.
    Observe(Vec<ObserveMsg>),
    Fail {
        adapter: String,
        action: String,
        times: u32,
    },
    Advance {
        ms: u64,
    },
    HoldIntents,
    Answer {
        newest: bool,
        ok: bool,
    },
    Watch(Vec<FieldSlot>),
    Expect(Expect),
}

#[derive(Clone, Debug)]
pub enum Expect {
    Holds(Expr),
    Stable,
    Stuck,
    Livelock,
    Waiting,
    Degraded,
    StableWithin {
        ticks: u32,
    },
    Emitted {
        adapter: String,
        action: String,
        args: Option<Vec<Expr>>,
        times: Option<u32>,
    },
    NotEmitted {
        adapter: String,
        action: String,
        args: Option<Vec<Expr>>,
    },
    /// Index into the domain's transitions.
    Faulted {
        transition: usize,
        times: Option<u32>,
    },
    Fired {
        transition: usize,
        times: Option<u32>,
    },
}
