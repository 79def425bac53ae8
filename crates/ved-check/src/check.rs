//! Name resolution and type checking, from `ast` to `hir`.
//!
//! Vocabulary: `check_x` checks an X and returns its `hir` form, recording
//! diagnostics as it goes; on an error it returns a node of type
//! [`Type::Error`] so that checking continues and one mistake yields one
//! diagnostic. `resolve_x` looks a name up.

use crate::hir::{self, ArithOp, Builtin, CmpOp, FieldSlot, LocalSlot};
use crate::types::Type;
use ved_syntax::ast::{self, AssignOp, BinaryOp, ExprKind, UnaryOp};
use ved_syntax::{Diagnostic, Span};

/// The outcome of checking a program: the program when there was no error, and
/// every diagnostic (errors and warnings) in source order.
#[derive(Debug)]
pub struct Checked {
    pub program: Option<hir::Program>,
    pub diagnostics: Vec<Diagnostic>,
}

impl Checked {
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }
}

/// Checks the files of one program, in command-line order.
pub fn check_program(files: &[ast::File]) -> Checked {
    let mut cx = Checker::default();
    let program = cx.check_files(files);
    let mut diagnostics = cx.diags;
    diagnostics.sort_by_key(|d| (d.span.file, d.span.start, d.severity));
    let program = if diagnostics.iter().any(Diagnostic::is_error) { None } else { Some(program) };
    Checked { program, diagnostics }
}

const TYPE_NAMES: &[&str] = &["int", "bool", "string", "list", "set", "map"];

#[derive(Default)]
struct Checker {
    diags: Vec<Diagnostic>,
}

/// The domain being assembled: top-level goals and transitions join the most
/// recently declared domain.
struct DomainDraft<'a> {
    ast: &'a ast::Domain,
    states: Vec<&'a ast::StateBlock>,
    goals: Vec<&'a ast::Goal>,
    transitions: Vec<&'a ast::Transition>,
    verify: Vec<&'a ast::VerifyBlock>,
}

/// What names mean inside one expression or step body.
struct Scope<'d> {
    domain: &'d hir::Domain,
    /// `None` in contexts where fields may not be referenced (defaults).
    fields_visible: bool,
    /// Stack of visible locals: name, slot, type, declaring span.
    locals: Vec<Local>,
    next_local: LocalSlot,
}

struct Local {
    name: String,
    slot: LocalSlot,
    ty: Type,
    span: Span,
    used: bool,
}

impl<'d> Scope<'d> {
    fn new(domain: &'d hir::Domain, fields_visible: bool) -> Scope<'d> {
        Scope { domain, fields_visible, locals: Vec::new(), next_local: 0 }
    }
}

impl Checker {
    fn error(&mut self, span: Span, msg: impl Into<String>) -> &mut Diagnostic {
        self.diags.push(Diagnostic::error(span, msg));
        self.diags.last_mut().expect("just pushed")
    }

    fn warn(&mut self, span: Span, msg: impl Into<String>) -> &mut Diagnostic {
        self.diags.push(Diagnostic::warning(span, msg));
        self.diags.last_mut().expect("just pushed")
    }

    fn check_files(&mut self, files: &[ast::File]) -> hir::Program {
        let mut drafts: Vec<DomainDraft> = Vec::new();
        let mut scenarios: Vec<&ast::Scenario> = Vec::new();
        for file in files {
            for item in &file.items {
                match item {
                    ast::Item::Domain(d) => {
                        if let Some(prev) = drafts.iter().find(|p| p.ast.name.name == d.name.name) {
                            let prev_span = prev.ast.name.span;
                            self.error(d.name.span, format!("domain `{}` is declared twice", d.name.name))
                                .with_label_mut("declared again here")
                                .with_note_mut(prev_span, "first declared here")
                                .with_hint_mut("give each domain a unique name");
                            continue;
                        }
                        let mut draft = DomainDraft {
                            ast: d,
                            states: Vec::new(),
                            goals: Vec::new(),
                            transitions: Vec::new(),
                            verify: Vec::new(),
                        };
                        for member in &d.members {
                            match member {
                                ast::DomainMember::State(s) => draft.states.push(s),
                                ast::DomainMember::Goal(g) => draft.goals.push(g),
                                ast::DomainMember::Transition(t) => draft.transitions.push(t),
                                ast::DomainMember::Verify(v) => draft.verify.push(v),
                            }
                        }
                        drafts.push(draft);
                    }
                    ast::Item::Goal(g) => match drafts.last_mut() {
                        Some(d) => d.goals.push(g),
                        None => {
                            self.error(g.span, "this goal has no domain to belong to")
                                .with_label_mut("top-level goal before any domain")
                                .with_hint_mut(
                                    "a top-level `goal` belongs to the domain declared above it; move it below a `domain` block",
                                );
                        }
                    },
                    ast::Item::Transition(t) => match drafts.last_mut() {
                        Some(d) => d.transitions.push(t),
                        None => {
                            self.error(t.name.span, format!("transition `{}` has no domain to belong to", t.name.name))
                                .with_label_mut("top-level transition before any domain")
                                .with_hint_mut(
                                    "a top-level `transition` belongs to the domain declared above it; move it below a `domain` block",
                                );
                        }
                    },
                    ast::Item::Scenario(s) => scenarios.push(s),
                    ast::Item::Verify(v) => match drafts.last_mut() {
                        Some(d) => d.verify.push(v),
                        None => {
                            self.error(v.span, "this `verify` block has no domain to belong to")
                                .with_label_mut("top-level `verify` before any domain")
                                .with_hint_mut("a top-level `verify` belongs to the domain declared above it; move it below a `domain` block");
                        }
                    },
                }
            }
        }
        let domains: Vec<hir::Domain> = drafts.iter().map(|d| self.check_domain(d)).collect();
        let mut program = hir::Program { domains, scenarios: Vec::new() };
        let mut seen: Vec<(&str, Span)> = Vec::new();
        for s in scenarios {
            if let Some((_, first)) = seen.iter().find(|(n, _)| *n == s.name) {
                let first = *first;
                self.error(s.name_span, format!("scenario \"{}\" is declared twice", s.name))
                    .with_note_mut(first, "first declared here")
                    .with_hint_mut("scenario names identify results; make them unique");
                continue;
            }
            seen.push((&s.name, s.name_span));
            if let Some(sc) = self.check_scenario(&program, s) {
                program.scenarios.push(sc);
            }
        }
        program
    }

    // ---------------------------------------------------------------- domains

    fn check_domain(&mut self, draft: &DomainDraft) -> hir::Domain {
        let d = draft.ast;
        let mut domain = hir::Domain {
            name: d.name.name.clone(),
            span: d.span,
            fields: Vec::new(),
            goals: Vec::new(),
            transitions: Vec::new(),
            verify: Vec::new(),
        };
        if let Some(second) = draft.states.get(1) {
            let first = draft.states[0].span;
            self.error(second.span, format!("domain `{}` has more than one `state` block", d.name.name))
                .with_note_mut(first, "the first `state` block is here")
                .with_hint_mut("declare every field in a single `state { ... }` block");
        }
        // Fields first, without defaults, so that defaults can be checked in a scope.
        let mut field_asts = Vec::new();
        for state in &draft.states {
            for f in &state.fields {
                if let Some((_, prev)) = domain.field(&f.name.name) {
                    let prev_span = prev.span;
                    self.error(f.name.span, format!("field `{}` is declared twice", f.name.name))
                        .with_note_mut(prev_span, "first declared here")
                        .with_hint_mut("rename or remove one of them");
                    continue;
                }
                let ty = self.resolve_type(&f.ty);
                domain.fields.push(hir::Field { name: f.name.name.clone(), ty, default: None, span: f.span });
                field_asts.push(f);
            }
        }
        let mut defaults = Vec::new();
        {
            let mut scope = Scope::new(&domain, false);
            for f in &field_asts {
                let ty = domain.field(&f.name.name).map(|(_, fl)| fl.ty.clone()).unwrap_or(Type::Error);
                let default = f.default.as_ref().map(|e| {
                    let ex = self.check_expr(&mut scope, e, Some(&ty));
                    self.expect_type(&ex, &ty, || format!("the default of `{}`", f.name.name));
                    ex
                });
                defaults.push(default);
            }
        }
        for (field, default) in domain.fields.iter_mut().zip(defaults) {
            field.default = default;
        }

        let mut goal_names: Vec<(String, Span)> = Vec::new();
        for (i, g) in draft.goals.iter().enumerate() {
            let name = match &g.name {
                Some(n) => {
                    if let Some((_, prev)) = goal_names.iter().find(|(p, _)| *p == n.name) {
                        let prev = *prev;
                        self.error(n.span, format!("goal `{}` is declared twice", n.name))
                            .with_note_mut(prev, "first declared here")
                            .with_hint_mut("give each goal a unique name");
                    }
                    goal_names.push((n.name.clone(), n.span));
                    n.name.clone()
                }
                None => format!("goal#{}", i + 1),
            };
            let mut scope = Scope::new(&domain, true);
            let predicate = self.check_expr(&mut scope, &g.predicate, Some(&Type::Bool));
            if !predicate.ty.accepts(&Type::Bool) {
                self.error(g.predicate.span, format!("a goal's predicate must be `bool`, found `{}`", predicate.ty))
                    .with_label_mut("not a condition")
                    .with_hint_mut("compare it with something, e.g. `workers == 5`");
            }
            self.lint_list_equality(&predicate);
            domain.goals.push(hir::Goal { name, predicate, span: g.span });
        }

        let mut transitions = Vec::new();
        for t in &draft.transitions {
            if let Some(prev) =
                draft.transitions.iter().take_while(|p| !std::ptr::eq(**p, *t)).find(|p| p.name.name == t.name.name)
            {
                let prev = prev.name.span;
                self.error(t.name.span, format!("transition `{}` is declared twice", t.name.name))
                    .with_note_mut(prev, "first declared here")
                    .with_hint_mut("give each transition a unique name");
                continue;
            }
            let mut scope = Scope::new(&domain, true);
            let body = self.check_block(&mut scope, &t.step);
            self.lint_unused(&scope);
            transitions.push(hir::Transition {
                name: t.name.name.clone(),
                optimistic: t.optimistic,
                body,
                locals: scope.next_local,
                span: t.span,
            });
        }
        domain.transitions = transitions;
        domain.verify = self.check_verify(&domain, &draft.verify);
        if domain.goals.is_empty() {
            self.warn(d.name.span, format!("domain `{}` has no goal", d.name.name))
                .with_label_mut("always stable")
                .with_hint_mut("add `goal NAME { predicate ... }` so the runtime knows what to converge to");
        }
        domain
    }

    /// `verify` bounds: each names a field once; a range needs an int field; values are a
    /// constant list of the field's type (of its element type for a list or set).
    fn check_verify(&mut self, domain: &hir::Domain, blocks: &[&ast::VerifyBlock]) -> Vec<hir::VerifyBound> {
        let mut out: Vec<hir::VerifyBound> = Vec::new();
        for b in blocks.iter().flat_map(|v| &v.bounds) {
            let Some((slot, field)) = domain.field(&b.field.name) else {
                let fields: Vec<String> = domain.fields.iter().map(|f| format!("`{}`", f.name)).collect();
                self.error(b.field.span, format!("`{}` has no field `{}`", domain.name, b.field.name))
                    .with_hint_mut(format!("its fields are {}", fields.join(", ")));
                continue;
            };
            if let Some(prev) = out.iter().find(|o| o.field == slot) {
                let prev = prev.span;
                self.error(b.field.span, format!("`{}` is bounded twice", b.field.name))
                    .with_note_mut(prev, "first bounded here")
                    .with_hint_mut("give each field one bound");
                continue;
            }
            let ty = field.ty.clone();
            let values = match &b.values {
                ast::VerifyValues::Range { lo, hi } => {
                    if ty != Type::Int {
                        self.error(b.span, format!("a range bounds an int field, but `{}` is `{ty}`", b.field.name))
                            .with_hint_mut(format!("list the values instead: `{} in [...]`", b.field.name));
                        continue;
                    }
                    if lo > hi {
                        self.error(b.span, format!("the range {lo}..{hi} is empty"))
                            .with_hint_mut(format!("write the smaller end first: `{hi}..{lo}`"));
                        continue;
                    }
                    hir::VerifyValues::Range { lo: *lo, hi: *hi }
                }
                ast::VerifyValues::Values(e) => {
                    let elem = match &ty {
                        Type::List(t) | Type::Set(t) => (**t).clone(),
                        other => other.clone(),
                    };
                    let want = Type::List(Box::new(elem.clone()));
                    let mut scope = Scope::new(domain, false);
                    let ex = self.check_expr(&mut scope, e, Some(&want));
                    if !matches!(ex.kind, hir::ExprKind::List(_)) {
                        self.error(e.span, "the values of a bound are a list literal, such as `[1, 2, 3]`")
                            .with_label_mut("not a list literal");
                        continue;
                    }
                    self.expect_type(&ex, &want, || format!("the values of `{}` (each a `{elem}`)", b.field.name));
                    hir::VerifyValues::Values(ex)
                }
            };
            out.push(hir::VerifyBound { field: slot, values, span: b.span });
        }
        out
    }

    fn resolve_type(&mut self, t: &ast::TypeExpr) -> Type {
        let arity = |want: usize, this: &mut Checker| -> bool {
            if t.args.len() != want {
                let msg = if want == 0 {
                    format!("`{}` takes no type arguments", t.name.name)
                } else {
                    format!(
                        "`{}` takes {} type argument{}, found {}",
                        t.name.name,
                        want,
                        if want == 1 { "" } else { "s" },
                        t.args.len()
                    )
                };
                let hint = match t.name.name.as_str() {
                    "list" => "write `list<int>`",
                    "set" => "write `set<int>`",
                    "map" => "write `map<string, int>`: keys are always strings",
                    _ => "scalar types are written alone, e.g. `int`",
                };
                this.error(t.span, msg).with_hint_mut(hint);
                false
            } else {
                true
            }
        };
        match t.name.name.as_str() {
            "int" if arity(0, self) => Type::Int,
            "bool" if arity(0, self) => Type::Bool,
            "string" if arity(0, self) => Type::Str,
            "list" if arity(1, self) => Type::list(self.resolve_type(&t.args[0])),
            "set" if arity(1, self) => Type::set(self.resolve_type(&t.args[0])),
            "map" if arity(2, self) => {
                let key = self.resolve_type(&t.args[0]);
                if key != Type::Str && !key.is_error() {
                    self.error(t.args[0].span, format!("map keys must be `string`, found `{key}`"))
                        .with_hint_mut("write `map<string, T>`; to key by number, convert the number to a string");
                }
                Type::map(self.resolve_type(&t.args[1]))
            }
            "int" | "bool" | "string" | "list" | "set" | "map" => Type::Error,
            other => {
                let hint = match other {
                    "str" | "String" | "text" => "the string type is spelled `string`".to_string(),
                    "integer" | "i64" | "u64" | "i32" | "usize" | "number" => "the integer type is `int`".to_string(),
                    "boolean" => "the boolean type is `bool`".to_string(),
                    "array" | "vec" | "Vec" => "use `list<T>`".to_string(),
                    "dict" | "HashMap" | "object" => "use `map<string, T>`".to_string(),
                    _ => match suggest(other, TYPE_NAMES.iter().copied()) {
                        Some(s) => format!("did you mean `{s}`?"),
                        None => "the types are `int`, `bool`, `string`, `list<T>`, `set<T>` and `map<string, T>`"
                            .to_string(),
                    },
                };
                self.error(t.name.span, format!("unknown type `{other}`")).with_hint_mut(hint);
                Type::Error
            }
        }
    }

    // ---------------------------------------------------------------- statements

    fn check_block(&mut self, scope: &mut Scope, block: &ast::Block) -> Vec<hir::Stmt> {
        let depth = scope.locals.len();
        let stmts = block.stmts.iter().filter_map(|s| self.check_stmt(scope, s)).collect();
        // Locals leave scope at the end of their block; report the unused ones now.
        let gone: Vec<Local> = scope.locals.drain(depth..).collect();
        for l in gone.iter().filter(|l| !l.used && !l.name.starts_with('_')) {
            self.warn(l.span, format!("`{}` is never used", l.name))
                .with_hint_mut(format!("remove the `let`, or name it `_{}` if that is intended", l.name));
        }
        stmts
    }

    fn check_stmt(&mut self, scope: &mut Scope, stmt: &ast::Stmt) -> Option<hir::Stmt> {
        let kind = match &stmt.kind {
            ast::StmtKind::Let { name, ty, value } => {
                let declared = ty.as_ref().map(|t| self.resolve_type(t));
                let value = self.check_expr(scope, value, declared.as_ref());
                let ty = match declared {
                    Some(d) => {
                        self.expect_type(&value, &d, || format!("`{}`", name.name));
                        d
                    }
                    None => value.ty.clone(),
                };
                if let Some(l) = scope.locals.iter().find(|l| l.name == name.name) {
                    let prev = l.span;
                    self.error(name.span, format!("`{}` is already defined in this step", name.name))
                        .with_note_mut(prev, "first defined here")
                        .with_hint_mut("`let` names cannot be redefined; choose another name");
                } else if let Some((_, f)) = scope.domain.field(&name.name) {
                    let prev = f.span;
                    self.error(name.span, format!("`{}` is already a state field", name.name))
                        .with_note_mut(prev, "the field is declared here")
                        .with_hint_mut("a `let` cannot share a name with a field; choose another name");
                }
                let slot = scope.next_local;
                scope.next_local = scope.next_local.saturating_add(1);
                scope.locals.push(Local { name: name.name.clone(), slot, ty, span: name.span, used: false });
                hir::StmtKind::Let { local: slot, value }
            }
            ast::StmtKind::Assign { target, op, op_span, value } => {
                let Some((slot, field_ty)) = self.resolve_assign_target(scope, target) else {
                    // Still check the value for its own errors.
                    self.check_expr(scope, value, None);
                    return None;
                };
                let value = self.check_expr(scope, value, Some(&field_ty));
                let value = match op {
                    AssignOp::Set => {
                        self.expect_type(&value, &field_ty, || format!("field `{}`", target.name));
                        value
                    }
                    AssignOp::Add | AssignOp::Sub => {
                        let sym = if *op == AssignOp::Add { "+=" } else { "-=" };
                        let ok = match (&field_ty, &value.ty) {
                            (Type::Error, _) | (_, Type::Error) => true,
                            (Type::Int, Type::Int) => true,
                            (Type::Str, Type::Str) => *op == AssignOp::Add,
                            _ => false,
                        };
                        if !ok {
                            let hint = match (&field_ty, op) {
                                (Type::List(_) | Type::Set(_), AssignOp::Add) => {
                                    format!("use `{0} = {0}.add(...)` to add to a collection", target.name)
                                }
                                (Type::List(_) | Type::Set(_), AssignOp::Sub) => {
                                    format!("use `{0} = {0}.remove(...)` to remove from a collection", target.name)
                                }
                                _ => format!(
                                    "`{sym}` works on `int` fields{}",
                                    if sym == "+=" { " and `string` fields" } else { "" }
                                ),
                            };
                            self.error(
                                *op_span,
                                format!(
                                    "`{sym}` cannot apply `{}` to field `{}` of type `{field_ty}`",
                                    value.ty, target.name
                                ),
                            )
                            .with_hint_mut(hint);
                        }
                        let span = stmt.span;
                        let current =
                            hir::Expr { kind: hir::ExprKind::Field(slot), ty: field_ty.clone(), span: target.span };
                        let kind = if field_ty == Type::Str {
                            hir::ExprKind::Concat(Box::new(current), Box::new(value))
                        } else {
                            let aop = if *op == AssignOp::Add { ArithOp::Add } else { ArithOp::Sub };
                            hir::ExprKind::Arith(aop, Box::new(current), Box::new(value))
                        };
                        hir::Expr { kind, ty: field_ty.clone(), span }
                    }
                };
                hir::StmtKind::Assign { field: slot, value }
            }
            ast::StmtKind::If { cond, then_block, else_block } => {
                let cond = self.check_condition(scope, cond, "an `if` condition");
                let then_body = self.check_block(scope, then_block);
                let else_body = else_block.as_ref().map(|b| self.check_block(scope, b)).unwrap_or_default();
                hir::StmtKind::If { cond, then_body, else_body }
            }
            ast::StmtKind::Emit { adapter, action, args } => {
                let args = args.iter().map(|a| self.check_expr(scope, a, None)).collect();
                hir::StmtKind::Emit { adapter: adapter.name.clone(), action: action.name.clone(), args }
            }
        };
        Some(hir::Stmt { kind, span: stmt.span })
    }

    fn resolve_assign_target(&mut self, scope: &mut Scope, target: &ast::Ident) -> Option<(FieldSlot, Type)> {
        if let Some(l) = scope.locals.iter().rev().find(|l| l.name == target.name) {
            let decl = l.span;
            self.error(target.span, format!("cannot assign to `{}`, a `let` binding", target.name))
                .with_label_mut("assignment to an immutable name")
                .with_note_mut(decl, "defined here")
                .with_hint_mut("`let` names are immutable; to keep a value that changes, declare a field in `state`");
            return None;
        }
        match scope.domain.field(&target.name) {
            Some((slot, f)) => Some((slot, f.ty.clone())),
            None => {
                let hint = self.name_hint(scope, &target.name);
                self.error(target.span, format!("unknown field `{}`", target.name))
                    .with_label_mut(format!("not a field of `{}`", scope.domain.name))
                    .with_hint_mut(hint);
                None
            }
        }
    }

    fn check_condition(&mut self, scope: &mut Scope, e: &ast::Expr, what: &str) -> hir::Expr {
        let ex = self.check_expr(scope, e, Some(&Type::Bool));
        if !ex.ty.accepts(&Type::Bool) {
            let hint = match ex.ty {
                Type::Int => "compare it, e.g. `x > 0` or `x != 0`",
                Type::List(_) | Type::Set(_) | Type::Map(_) | Type::Str => "test it, e.g. `.is_empty` or `.length > 0`",
                _ => "conditions must be `bool`",
            };
            self.error(e.span, format!("{what} must be `bool`, found `{}`", ex.ty))
                .with_label_mut("not a condition")
                .with_hint_mut(hint);
        }
        ex
    }

    /// Records a mismatch between an expression and the type its context needs.
    fn expect_type(&mut self, e: &hir::Expr, want: &Type, what: impl FnOnce() -> String) {
        if !want.accepts(&e.ty) {
            let hint = conversion_hint(want, &e.ty);
            self.error(e.span, format!("mismatched types: {} is `{want}`, but this is `{}`", what(), e.ty))
                .with_label_mut(format!("expected `{want}`"))
                .with_hint_mut(hint);
        }
    }

    // ---------------------------------------------------------------- expressions

    fn check_expr(&mut self, scope: &mut Scope, e: &ast::Expr, expected: Option<&Type>) -> hir::Expr {
        let span = e.span;
        let err = |kind| hir::Expr { kind, ty: Type::Error, span };
        match &e.kind {
            ExprKind::Int(v) => hir::Expr { kind: hir::ExprKind::Int(*v), ty: Type::Int, span },
            ExprKind::Bool(b) => hir::Expr { kind: hir::ExprKind::Bool(*b), ty: Type::Bool, span },
            ExprKind::Str(s) => hir::Expr { kind: hir::ExprKind::Str(s.clone()), ty: Type::Str, span },
            ExprKind::Paren(inner) => self.check_expr(scope, inner, expected),
            ExprKind::List(items) => match expected {
                Some(Type::Set(t)) => self.check_collection(scope, items, Some(t), span, true),
                Some(Type::List(t)) => self.check_collection(scope, items, Some(t), span, false),
                _ => self.check_collection(scope, items, None, span, false),
            },
            ExprKind::SetLit(items) => {
                let elem = expected.and_then(Type::elem);
                self.check_collection(scope, items, elem, span, true)
            }
            ExprKind::MapLit(entries) => {
                let want_value = match expected {
                    Some(Type::Map(t)) => Some(&**t),
                    _ => None,
                };
                let mut value_ty = want_value.cloned();
                let mut out = Vec::with_capacity(entries.len());
                for (k, v) in entries {
                    let k = self.check_expr(scope, k, Some(&Type::Str));
                    self.expect_type(&k, &Type::Str, || "a map key".to_string());
                    let v = self.check_expr(scope, v, value_ty.as_ref());
                    match &value_ty {
                        Some(t) => self.expect_type(&v, t, || "this map's values".to_string()),
                        None => value_ty = Some(v.ty.clone()),
                    }
                    out.push((k, v));
                }
                match value_ty {
                    Some(t) => hir::Expr { kind: hir::ExprKind::Map(out), ty: Type::map(t), span },
                    None => {
                        self.error(span, "cannot infer the value type of an empty map")
                            .with_hint_mut("give it a type, e.g. `let m: map<string, int> = [:]`");
                        err(hir::ExprKind::Map(out))
                    }
                }
            }
            ExprKind::Name(id) => self.resolve_name(scope, id),
            ExprKind::Unary { op, op_span, operand } => {
                let (want, ty_name) = match op {
                    UnaryOp::Not => (Type::Bool, "!"),
                    UnaryOp::Neg => (Type::Int, "-"),
                };
                let inner = self.check_expr(scope, operand, Some(&want));
                let mut want = want;
                if !want.accepts(&inner.ty) {
                    let hint = match op {
                        UnaryOp::Not => "`!` negates a `bool`; for a number compare it, e.g. `x == 0`",
                        UnaryOp::Neg => "`-` negates an `int`; for a `bool` use `!`",
                    };
                    self.error(*op_span, format!("`{ty_name}` cannot be applied to `{}`", inner.ty))
                        .with_hint_mut(hint);
                    want = Type::Error;
                }
                let kind = match op {
                    UnaryOp::Not => hir::ExprKind::Not(Box::new(inner)),
                    UnaryOp::Neg => hir::ExprKind::Neg(Box::new(inner)),
                };
                hir::Expr { kind, ty: want, span }
            }
            ExprKind::Binary { op, op_span, lhs, rhs } => self.check_binary(scope, *op, *op_span, lhs, rhs, span),
            ExprKind::Member { receiver, name, args } => {
                self.check_member(scope, receiver, name, args.as_deref(), span)
            }
            ExprKind::Index { receiver, index } => {
                let recv = self.check_expr(scope, receiver, None);
                let (want_index, ty) = match &recv.ty {
                    Type::List(t) => (Type::Int, (**t).clone()),
                    Type::Map(t) => (Type::Str, (**t).clone()),
                    Type::Error => (Type::Error, Type::Error),
                    other => {
                        let hint = match other {
                            Type::Set(_) => "sets have no order; use `.contains(x)`",
                            _ => "only lists (by `int`) and maps (by `string`) can be indexed",
                        };
                        self.error(receiver.span, format!("`{other}` cannot be indexed")).with_hint_mut(hint);
                        (Type::Error, Type::Error)
                    }
                };
                let idx = self.check_expr(scope, index, Some(&want_index));
                self.expect_type(&idx, &want_index, || "the index".to_string());
                hir::Expr { kind: hir::ExprKind::Index(Box::new(recv), Box::new(idx)), ty, span }
            }
        }
    }

    fn check_collection(
        &mut self,
        scope: &mut Scope,
        items: &[ast::Expr],
        elem: Option<&Type>,
        span: Span,
        is_set: bool,
    ) -> hir::Expr {
        let mut elem_ty = elem.cloned();
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            let ex = self.check_expr(scope, item, elem_ty.as_ref());
            match &elem_ty {
                Some(t) => {
                    if !t.accepts(&ex.ty) {
                        self.error(
                            ex.span,
                            format!("mismatched types: this element is `{}`, but the others are `{t}`", ex.ty),
                        )
                        .with_hint_mut("every element of a collection has the same type");
                    }
                }
                None => elem_ty = Some(ex.ty.clone()),
            }
            out.push(ex);
        }
        let kind = if is_set { hir::ExprKind::Set(out) } else { hir::ExprKind::List(out) };
        match elem_ty {
            Some(t) => hir::Expr { kind, ty: if is_set { Type::set(t) } else { Type::list(t) }, span },
            None => {
                let (what, eg) =
                    if is_set { ("set", "let s: set<int> = set[]") } else { ("list", "let xs: list<int> = []") };
                self.error(span, format!("cannot infer the element type of an empty {what}"))
                    .with_hint_mut(format!("give it a type, e.g. `{eg}`, or compare it with a typed value"));
                hir::Expr { kind, ty: Type::Error, span }
            }
        }
    }

    fn resolve_name(&mut self, scope: &mut Scope, id: &ast::Ident) -> hir::Expr {
        let span = id.span;
        if let Some(l) = scope.locals.iter_mut().rev().find(|l| l.name == id.name) {
            l.used = true;
            return hir::Expr { kind: hir::ExprKind::Local(l.slot), ty: l.ty.clone(), span };
        }
        if let Some((slot, f)) = scope.domain.field(&id.name) {
            if !scope.fields_visible {
                self.error(span, format!("a default value cannot refer to the field `{}`", id.name))
                    .with_hint_mut("defaults are constants, evaluated before any field has a value");
                return hir::Expr { kind: hir::ExprKind::Field(slot), ty: Type::Error, span };
            }
            return hir::Expr { kind: hir::ExprKind::Field(slot), ty: f.ty.clone(), span };
        }
        let hint = self.name_hint(scope, &id.name);
        self.error(span, format!("unknown name `{}`", id.name))
            .with_label_mut(format!("not a field of `{}` or a `let` in scope", scope.domain.name))
            .with_hint_mut(hint);
        hir::Expr { kind: hir::ExprKind::Int(0), ty: Type::Error, span }
    }

    fn name_hint(&self, scope: &Scope, name: &str) -> String {
        let candidates =
            scope.domain.fields.iter().map(|f| f.name.as_str()).chain(scope.locals.iter().map(|l| l.name.as_str()));
        match suggest(name, candidates) {
            Some(s) => format!("did you mean `{s}`?"),
            None if name == "True" || name == "False" => {
                format!("booleans are written `{}`", name.to_lowercase())
            }
            None if scope.domain.fields.is_empty() => {
                format!("`{}` has no fields; declare them in `state {{ ... }}`", scope.domain.name)
            }
            None => format!(
                "the fields of `{}` are: {}",
                scope.domain.name,
                scope.domain.fields.iter().map(|f| format!("`{}`", f.name)).collect::<Vec<_>>().join(", ")
            ),
        }
    }

    fn check_binary(
        &mut self,
        scope: &mut Scope,
        op: BinaryOp,
        op_span: Span,
        lhs: &ast::Expr,
        rhs: &ast::Expr,
        span: Span,
    ) -> hir::Expr {
        let sym = op.symbol();
        match op {
            BinaryOp::And | BinaryOp::Or => {
                let l = self.check_expr(scope, lhs, Some(&Type::Bool));
                let r = self.check_expr(scope, rhs, Some(&Type::Bool));
                for side in [&l, &r] {
                    if !Type::Bool.accepts(&side.ty) {
                        self.error(side.span, format!("`{sym}` needs `bool` operands, found `{}`", side.ty))
                            .with_hint_mut("compare the value first, e.g. `x > 0`");
                    }
                }
                let kind = if op == BinaryOp::And {
                    hir::ExprKind::And(Box::new(l), Box::new(r))
                } else {
                    hir::ExprKind::Or(Box::new(l), Box::new(r))
                };
                hir::Expr { kind, ty: Type::Bool, span }
            }
            BinaryOp::Eq | BinaryOp::Ne | BinaryOp::Lt | BinaryOp::Le | BinaryOp::Gt | BinaryOp::Ge => {
                // An untyped empty literal takes its type from the other side.
                let (l, r) = if is_empty_literal(lhs) && !is_empty_literal(rhs) {
                    let r = self.check_expr(scope, rhs, None);
                    let l = self.check_expr(scope, lhs, Some(&r.ty));
                    (l, r)
                } else {
                    let l = self.check_expr(scope, lhs, None);
                    let r = self.check_expr(scope, rhs, Some(&l.ty));
                    (l, r)
                };
                let cmp = match op {
                    BinaryOp::Eq => CmpOp::Eq,
                    BinaryOp::Ne => CmpOp::Ne,
                    BinaryOp::Lt => CmpOp::Lt,
                    BinaryOp::Le => CmpOp::Le,
                    BinaryOp::Gt => CmpOp::Gt,
                    _ => CmpOp::Ge,
                };
                if !l.ty.accepts(&r.ty) {
                    self.error(op_span, format!("cannot compare `{}` with `{}`", l.ty, r.ty))
                        .with_label_mut("mismatched operand types")
                        .with_hint_mut(conversion_hint(&l.ty, &r.ty));
                } else if !(matches!(cmp, CmpOp::Eq | CmpOp::Ne) || l.ty.is_ordered() && r.ty.is_ordered()) {
                    let bad = if l.ty.is_ordered() { &r.ty } else { &l.ty };
                    self.error(op_span, format!("`{sym}` is not defined for `{bad}`"))
                        .with_hint_mut("ordering works on `int` and `string`; for collections compare `.length`");
                }
                hir::Expr { kind: hir::ExprKind::Compare(cmp, Box::new(l), Box::new(r)), ty: Type::Bool, span }
            }
            BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div | BinaryOp::Rem => {
                let l = self.check_expr(scope, lhs, None);
                let r = self.check_expr(scope, rhs, Some(&l.ty));
                let both = |t: &Type| t.accepts(&l.ty) && t.accepts(&r.ty);
                if op == BinaryOp::Add && (l.ty == Type::Str || r.ty == Type::Str) && both(&Type::Str) {
                    return hir::Expr { kind: hir::ExprKind::Concat(Box::new(l), Box::new(r)), ty: Type::Str, span };
                }
                if !both(&Type::Int) {
                    let hint = match (&l.ty, &r.ty, op) {
                        (Type::List(_) | Type::Set(_), _, BinaryOp::Add) => {
                            "to combine collections use `.add(...)` or `.union(...)`"
                        }
                        (Type::List(_) | Type::Set(_), _, BinaryOp::Sub) => {
                            "to drop elements use `.remove(...)` or `.difference(...)`"
                        }
                        (Type::Str, _, _) | (_, Type::Str, _) => {
                            "only `+` works on strings, and both sides must be `string`"
                        }
                        _ => "arithmetic works on `int`",
                    };
                    self.error(op_span, format!("`{sym}` cannot be applied to `{}` and `{}`", l.ty, r.ty))
                        .with_label_mut("unsupported operand types")
                        .with_hint_mut(hint);
                    return hir::Expr {
                        kind: hir::ExprKind::Arith(ArithOp::Add, Box::new(l), Box::new(r)),
                        ty: Type::Error,
                        span,
                    };
                }
                let aop = match op {
                    BinaryOp::Add => ArithOp::Add,
                    BinaryOp::Sub => ArithOp::Sub,
                    BinaryOp::Mul => ArithOp::Mul,
                    BinaryOp::Div => ArithOp::Div,
                    _ => ArithOp::Rem,
                };
                hir::Expr { kind: hir::ExprKind::Arith(aop, Box::new(l), Box::new(r)), ty: Type::Int, span }
            }
        }
    }

    fn check_member(
        &mut self,
        scope: &mut Scope,
        receiver: &ast::Expr,
        name: &ast::Ident,
        args: Option<&[ast::Expr]>,
        span: Span,
    ) -> hir::Expr {
        let recv = self.check_expr(scope, receiver, None);
        let rty = recv.ty.clone();
        let fail = |recv: hir::Expr| hir::Expr {
            kind: hir::ExprKind::Call { builtin: Builtin::Length, receiver: Box::new(recv), args: Vec::new() },
            ty: Type::Error,
            span,
        };
        if rty.is_error() {
            if let Some(args) = args {
                for a in args {
                    self.check_expr(scope, a, None);
                }
            }
            return fail(recv);
        }
        let m = name.name.as_str();
        let members = members_of(&rty);
        let Some(&(_, is_property)) = members.iter().find(|(n, _)| *n == m) else {
            let list = members
                .iter()
                .map(|(n, p)| if *p { format!("`.{n}`") } else { format!("`.{n}(..)`") })
                .collect::<Vec<_>>();
            let hint = match suggest(m, members.iter().map(|(n, _)| *n)) {
                Some(s) => format!("did you mean `.{s}`?"),
                None if list.is_empty() => format!("`{rty}` has no members"),
                None => format!("`{rty}` has {}", list.join(", ")),
            };
            self.error(name.span, format!("`{rty}` has no member `{m}`"))
                .with_label_mut("unknown member")
                .with_hint_mut(hint);
            if let Some(args) = args {
                for a in args {
                    self.check_expr(scope, a, None);
                }
            }
            return fail(recv);
        };
        match (is_property, args) {
            (true, Some(_)) => {
                self.error(name.span.to(span), format!("`.{m}` is a property, not a method"))
                    .with_hint_mut(format!("write `.{m}` without parentheses"));
                return fail(recv);
            }
            (false, None) => {
                self.error(name.span, format!("`.{m}` is a method and needs arguments"))
                    .with_hint_mut(format!("call it, e.g. `.{m}(x)`"));
                return fail(recv);
            }
            _ => {}
        }
        let args = args.unwrap_or(&[]);
        let want_args = match m {
            "insert" | "get" => 2,
            _ if is_property => 0,
            _ => 1,
        };
        if args.len() != want_args {
            self.error(
                span,
                format!(
                    "`.{m}` takes {want_args} argument{}, found {}",
                    if want_args == 1 { "" } else { "s" },
                    args.len()
                ),
            )
            .with_hint_mut(match m {
                "insert" => "write `.insert(key, value)`",
                "get" => "write `.get(key, default)`",
                _ => "pass exactly one value",
            });
            for a in args {
                self.check_expr(scope, a, None);
            }
            return fail(recv);
        }
        let call = |builtin, recv, args, ty| hir::Expr {
            kind: hir::ExprKind::Call { builtin, receiver: Box::new(recv), args },
            ty,
            span,
        };
        let elem = rty.elem().cloned();
        match (m, &rty) {
            ("length", _) => call(Builtin::Length, recv, vec![], Type::Int),
            ("is_empty", _) => call(Builtin::IsEmpty, recv, vec![], Type::Bool),
            ("first", _) => call(Builtin::First, recv, vec![], elem.unwrap_or(Type::Error)),
            ("last", _) => call(Builtin::Last, recv, vec![], elem.unwrap_or(Type::Error)),
            ("keys", Type::Map(_)) => call(Builtin::Keys, recv, vec![], Type::set(Type::Str)),
            ("values", Type::Map(v)) => {
                let t = Type::list((**v).clone());
                call(Builtin::Values, recv, vec![], t)
            }
            ("contains", Type::Str) | ("contains", Type::Map(_)) => {
                let a = self.check_expr(scope, &args[0], Some(&Type::Str));
                let what = if rty == Type::Str { "the substring" } else { "a map key" };
                self.expect_type(&a, &Type::Str, || what.to_string());
                call(Builtin::Contains, recv, vec![a], Type::Bool)
            }
            ("contains", _) => {
                let e = elem.unwrap_or(Type::Error);
                let a = self.check_expr(scope, &args[0], Some(&e));
                self.expect_type(&a, &e, || format!("an element of `{rty}`"));
                call(Builtin::Contains, recv, vec![a], Type::Bool)
            }
            ("add" | "remove", Type::Map(_)) if m == "remove" => {
                let a = self.check_one_or_many(scope, &args[0], &Type::Str);
                let builtin = if a.ty == Type::Str || a.ty.is_error() { Builtin::Remove } else { Builtin::RemoveAll };
                call(builtin, recv, vec![a], rty.clone())
            }
            ("add" | "remove", _) => {
                let e = elem.unwrap_or(Type::Error);
                let a = self.check_one_or_many(scope, &args[0], &e);
                let single = e.accepts(&a.ty);
                let builtin = match (m, single) {
                    ("add", true) => Builtin::Add,
                    ("add", false) => Builtin::AddAll,
                    (_, true) => Builtin::Remove,
                    (_, false) => Builtin::RemoveAll,
                };
                call(builtin, recv, vec![a], rty.clone())
            }
            ("union" | "intersection" | "difference", _) => {
                let e = elem.unwrap_or(Type::Error);
                let a = self.check_expr(scope, &args[0], Some(&rty));
                let ok = match &a.ty {
                    Type::List(t) | Type::Set(t) => e.accepts(t),
                    Type::Error => true,
                    _ => false,
                };
                if !ok {
                    self.error(a.span, format!("`.{m}` needs a `list<{e}>` or `set<{e}>`, found `{}`", a.ty))
                        .with_hint_mut(format!("to use one element, wrap it in brackets: `.{m}([x])`"));
                }
                let builtin = match m {
                    "union" => Builtin::Union,
                    "intersection" => Builtin::Intersection,
                    _ => Builtin::Difference,
                };
                call(builtin, recv, vec![a], rty.clone())
            }
            ("insert", Type::Map(v)) => {
                let v = (**v).clone();
                let k = self.check_expr(scope, &args[0], Some(&Type::Str));
                self.expect_type(&k, &Type::Str, || "a map key".to_string());
                let val = self.check_expr(scope, &args[1], Some(&v));
                self.expect_type(&val, &v, || "a value of this map".to_string());
                call(Builtin::Insert, recv, vec![k, val], rty.clone())
            }
            ("get", Type::Map(v)) => {
                let v = (**v).clone();
                let k = self.check_expr(scope, &args[0], Some(&Type::Str));
                self.expect_type(&k, &Type::Str, || "a map key".to_string());
                let d = self.check_expr(scope, &args[1], Some(&v));
                self.expect_type(&d, &v, || "the default".to_string());
                call(Builtin::Get, recv, vec![k, d], v)
            }
            _ => fail(recv),
        }
    }

    /// Checks the argument of `add`/`remove`: one element, or a list or set of them.
    fn check_one_or_many(&mut self, scope: &mut Scope, arg: &ast::Expr, elem: &Type) -> hir::Expr {
        // A bracketed literal is "many" unless the elements are themselves collections.
        let expect_many = matches!(arg.kind, ExprKind::List(_) | ExprKind::SetLit(_)) && elem.elem().is_none();
        let a = if expect_many {
            self.check_expr(scope, arg, Some(&Type::list(elem.clone())))
        } else {
            self.check_expr(scope, arg, Some(elem))
        };
        let ok = elem.accepts(&a.ty)
            || match &a.ty {
                Type::List(t) | Type::Set(t) => elem.accepts(t),
                _ => false,
            };
        if !ok {
            self.error(a.span, format!("expected `{elem}`, or a list or set of `{elem}`, found `{}`", a.ty))
                .with_hint_mut(conversion_hint(elem, &a.ty));
        }
        a
    }

    // ---------------------------------------------------------------- scenarios

    fn check_scenario(&mut self, program: &hir::Program, s: &ast::Scenario) -> Option<hir::Scenario> {
        // Which domain: an explicit `domain` step, or the only one.
        let mut domain_idx = None;
        for (i, step) in s.steps.iter().enumerate() {
            if let ast::StepKind::Domain(name) = &step.kind {
                if domain_idx.is_some() {
                    self.error(step.span, "a scenario names its domain once")
                        .with_hint_mut("remove the second `domain` line");
                    continue;
                }
                if i != 0 {
                    self.error(step.span, "`domain` must be the first line of a scenario")
                        .with_hint_mut("move it above the other steps");
                }
                match program.domain(&name.name) {
                    Some((idx, _)) => domain_idx = Some(idx),
                    None => {
                        let hint = match suggest(&name.name, program.domains.iter().map(|d| d.name.as_str())) {
                            Some(s) => format!("did you mean `{s}`?"),
                            None => format!(
                                "the program declares: {}",
                                program.domains.iter().map(|d| format!("`{}`", d.name)).collect::<Vec<_>>().join(", ")
                            ),
                        };
                        self.error(name.span, format!("unknown domain `{}`", name.name)).with_hint_mut(hint);
                        return None;
                    }
                }
            }
        }
        let domain_idx = match domain_idx {
            Some(i) => i,
            None if program.domains.len() == 1 => 0,
            None if program.domains.is_empty() => {
                self.error(s.name_span, "this scenario has no domain to run")
                    .with_hint_mut("declare a `domain` in one of the files given on the command line");
                return None;
            }
            None => {
                self.error(
                    s.name_span,
                    format!("the program has {} domains; say which one this scenario runs", program.domains.len()),
                )
                .with_hint_mut(format!("add `domain {}` as the scenario's first line", program.domains[0].name));
                return None;
            }
        };
        let domain = &program.domains[domain_idx];
        let mut scope = Scope::new(domain, true);
        let mut given = Vec::new();
        let mut steps = Vec::new();
        let mut started = false;
        for step in &s.steps {
            let kind = match &step.kind {
                ast::StepKind::Domain(_) => continue,
                ast::StepKind::Given(fvs) => {
                    if started {
                        self.error(step.span, "`given` sets the initial state and must come before the other steps")
                            .with_hint_mut("use `observe` to change the state once the scenario has started");
                    }
                    given.extend(self.check_field_values(&mut scope, fvs));
                    continue;
                }
                ast::StepKind::Observe(fvs) => hir::StepKind::Observe(vec![self.check_message(&mut scope, fvs)]),
                ast::StepKind::Simultaneously(msgs) => {
                    hir::StepKind::Observe(msgs.iter().map(|fvs| self.check_message(&mut scope, fvs)).collect())
                }
                ast::StepKind::Fail { adapter, action, times } => {
                    self.lint_unknown_action(domain, adapter, action);
                    hir::StepKind::Fail { adapter: adapter.name.clone(), action: action.name.clone(), times: *times }
                }
                ast::StepKind::Advance { ms } => hir::StepKind::Advance { ms: *ms },
                ast::StepKind::HoldIntents => hir::StepKind::HoldIntents,
                ast::StepKind::Answer { newest, ok } => hir::StepKind::Answer { newest: *newest, ok: *ok },
                ast::StepKind::Watch(fields) => {
                    let mut slots = Vec::with_capacity(fields.len());
                    for f in fields {
                        match scope.domain.field(&f.name) {
                            Some((slot, _)) => slots.push(slot),
                            None => {
                                let hint = self.name_hint(&scope, &f.name);
                                self.error(f.span, format!("unknown field `{}`", f.name)).with_hint_mut(hint);
                            }
                        }
                    }
                    hir::StepKind::Watch(slots)
                }
                ast::StepKind::Expect(e) => hir::StepKind::Expect(self.check_expect(&mut scope, domain, e)?),
            };
            started = true;
            steps.push(hir::Step { kind, span: step.span });
        }
        Some(hir::Scenario { name: s.name.clone(), span: s.span, domain: domain_idx, given, steps })
    }

    /// One `observe` message: readings, or relative changes when any value uses `+=`/`-=`.
    fn check_message(&mut self, scope: &mut Scope, fvs: &[ast::FieldValue]) -> hir::ObserveMsg {
        if fvs.iter().any(|f| f.relative.is_some()) {
            hir::ObserveMsg { relative: true, writes: self.check_relative_values(scope, fvs) }
        } else {
            hir::ObserveMsg { relative: false, writes: self.check_field_values(scope, fvs) }
        }
    }

    /// `observe F += E, G -= E`: relative changes to `int` fields.
    fn check_relative_values(&mut self, scope: &mut Scope, fvs: &[ast::FieldValue]) -> Vec<(FieldSlot, hir::Expr)> {
        let mut out: Vec<(FieldSlot, hir::Expr)> = Vec::new();
        for fv in fvs {
            let Some(negate) = fv.relative else {
                self.error(fv.field.span, "a message is either readings (`=`) or relative changes (`+=`, `-=`)")
                    .with_hint_mut("put the reading and the relative change in two `observe` lines");
                continue;
            };
            let Some((slot, f)) = scope.domain.field(&fv.field.name) else {
                let hint = self.name_hint(scope, &fv.field.name);
                self.error(fv.field.span, format!("unknown field `{}`", fv.field.name)).with_hint_mut(hint);
                continue;
            };
            if f.ty != Type::Int {
                let ty = f.ty.to_string();
                self.error(
                    fv.field.span,
                    format!("field `{}` is `{ty}`; only `int` fields take `+=` or `-=`", fv.field.name),
                )
                .with_hint_mut("observe a new value with `=`");
                continue;
            }
            if out.iter().any(|(s, _)| *s == slot) {
                self.error(fv.field.span, format!("field `{}` is changed twice in one message", fv.field.name))
                    .with_hint_mut("add the deltas up, or use two `observe` lines for two alerts");
            }
            let e = self.check_expr(scope, &fv.value, Some(&Type::Int));
            self.expect_type(&e, &Type::Int, || format!("the change to `{}`", fv.field.name));
            let e = if negate {
                hir::Expr { ty: Type::Int, span: e.span, kind: hir::ExprKind::Neg(Box::new(e)) }
            } else {
                e
            };
            out.push((slot, e));
        }
        out
    }

    fn check_field_values(&mut self, scope: &mut Scope, fvs: &[ast::FieldValue]) -> Vec<(FieldSlot, hir::Expr)> {
        let mut out: Vec<(FieldSlot, hir::Expr)> = Vec::new();
        for fv in fvs {
            if fv.relative.is_some() {
                self.error(fv.field.span, "a relative change (`+=`, `-=`) is not allowed here")
                    .with_hint_mut("`given` sets the initial state with `=`; use `observe F += N` for an alert");
                continue;
            }
            let Some((slot, f)) = scope.domain.field(&fv.field.name) else {
                let hint = self.name_hint(scope, &fv.field.name);
                self.error(fv.field.span, format!("unknown field `{}`", fv.field.name))
                    .with_label_mut(format!("not a field of `{}`", scope.domain.name))
                    .with_hint_mut(hint);
                continue;
            };
            let ty = f.ty.clone();
            if out.iter().any(|(s, _)| *s == slot) {
                self.error(fv.field.span, format!("field `{}` is set twice in one message", fv.field.name))
                    .with_hint_mut("set each field once; use two `observe` lines for two messages");
            }
            let e = self.check_expr(scope, &fv.value, Some(&ty));
            self.expect_type(&e, &ty, || format!("field `{}`", fv.field.name));
            out.push((slot, e));
        }
        out
    }

    fn check_expect(&mut self, scope: &mut Scope, domain: &hir::Domain, e: &ast::Expect) -> Option<hir::Expect> {
        Some(match e {
            ast::Expect::Holds(ex) => hir::Expect::Holds(self.check_condition(scope, ex, "an `expect`")),
            ast::Expect::Stable => hir::Expect::Stable,
            ast::Expect::Stuck => hir::Expect::Stuck,
            ast::Expect::Livelock => hir::Expect::Livelock,
            ast::Expect::Waiting => hir::Expect::Waiting,
            ast::Expect::Degraded => hir::Expect::Degraded,
            ast::Expect::StableWithin { ticks } => hir::Expect::StableWithin { ticks: *ticks },
            ast::Expect::Emitted { adapter, action, args, times } => {
                self.lint_unknown_action(domain, adapter, action);
                let args = args.as_ref().map(|a| a.iter().map(|x| self.check_expr(scope, x, None)).collect());
                hir::Expect::Emitted { adapter: adapter.name.clone(), action: action.name.clone(), args, times: *times }
            }
            ast::Expect::NotEmitted { adapter, action, args } => {
                self.lint_unknown_action(domain, adapter, action);
                let args = args.as_ref().map(|a| a.iter().map(|x| self.check_expr(scope, x, None)).collect());
                hir::Expect::NotEmitted { adapter: adapter.name.clone(), action: action.name.clone(), args }
            }
            ast::Expect::Faulted { transition, times } => {
                hir::Expect::Faulted { transition: self.resolve_transition(domain, transition)?, times: *times }
            }
            ast::Expect::Fired { transition, times } => {
                hir::Expect::Fired { transition: self.resolve_transition(domain, transition)?, times: *times }
            }
        })
    }

    fn resolve_transition(&mut self, domain: &hir::Domain, t: &ast::Ident) -> Option<usize> {
        match domain.transition(&t.name) {
            Some((i, _)) => Some(i),
            None => {
                let hint = match suggest(&t.name, domain.transitions.iter().map(|t| t.name.as_str())) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => format!(
                        "the transitions of `{}` are: {}",
                        domain.name,
                        domain.transitions.iter().map(|t| format!("`{}`", t.name)).collect::<Vec<_>>().join(", ")
                    ),
                };
                self.error(t.span, format!("unknown transition `{}`", t.name)).with_hint_mut(hint);
                None
            }
        }
    }

    // ---------------------------------------------------------------- lints

    fn lint_unknown_action(&mut self, domain: &hir::Domain, adapter: &ast::Ident, action: &ast::Ident) {
        let mut all = Vec::new();
        for t in &domain.transitions {
            collect_emits(&t.body, &mut all);
        }
        if !all.iter().any(|(a, b)| *a == adapter.name && *b == action.name) {
            let span = adapter.span.to(action.span);
            let hint = if all.is_empty() {
                format!("no transition of `{}` emits anything", domain.name)
            } else {
                let mut names: Vec<String> = all.iter().map(|(a, b)| format!("`{a}.{b}`")).collect();
                names.dedup();
                format!("`{}` emits {}", domain.name, names.join(", "))
            };
            self.warn(span, format!("no transition of `{}` emits `{}.{}`", domain.name, adapter.name, action.name))
                .with_hint_mut(hint);
        }
    }

    fn lint_list_equality(&mut self, e: &hir::Expr) {
        match &e.kind {
            hir::ExprKind::Compare(CmpOp::Eq | CmpOp::Ne, l, r)
                if matches!(l.ty, Type::List(_)) && matches!(r.ty, Type::List(_)) =>
            {
                self.warn(e.span, "`==` on lists compares order as well as elements")
                    .with_label_mut("`[443, 80] == [80, 443]` is false")
                    .with_hint_mut(
                        "if order does not matter, declare the fields as `set<...>` so the goal cannot be stuck on a reordering",
                    );
            }
            hir::ExprKind::And(l, r) | hir::ExprKind::Or(l, r) => {
                self.lint_list_equality(l);
                self.lint_list_equality(r);
            }
            hir::ExprKind::Not(x) => self.lint_list_equality(x),
            _ => {}
        }
    }

    fn lint_unused(&mut self, _scope: &Scope) {
        // Unused locals are reported as their block closes (`check_block`).
    }
}

fn collect_emits<'a>(body: &'a [hir::Stmt], out: &mut Vec<(&'a str, &'a str)>) {
    for s in body {
        match &s.kind {
            hir::StmtKind::Emit { adapter, action, .. } => out.push((adapter, action)),
            hir::StmtKind::If { then_body, else_body, .. } => {
                collect_emits(then_body, out);
                collect_emits(else_body, out);
            }
            _ => {}
        }
    }
}

fn is_empty_literal(e: &ast::Expr) -> bool {
    match &e.kind {
        ExprKind::List(v) | ExprKind::SetLit(v) => v.is_empty(),
        ExprKind::MapLit(v) => v.is_empty(),
        ExprKind::Paren(inner) => is_empty_literal(inner),
        _ => false,
    }
}

/// The members a type has: name and whether it is a property (no parentheses).
fn members_of(t: &Type) -> &'static [(&'static str, bool)] {
    match t {
        Type::List(_) | Type::Set(_) => &[
            ("length", true),
            ("is_empty", true),
            ("first", true),
            ("last", true),
            ("contains", false),
            ("add", false),
            ("remove", false),
            ("union", false),
            ("intersection", false),
            ("difference", false),
        ],
        Type::Map(_) => &[
            ("length", true),
            ("is_empty", true),
            ("keys", true),
            ("values", true),
            ("contains", false),
            ("remove", false),
            ("insert", false),
            ("get", false),
        ],
        Type::Str => &[("length", true), ("is_empty", true), ("contains", false)],
        Type::Int | Type::Bool | Type::Error => &[],
    }
}

fn conversion_hint(want: &Type, got: &Type) -> String {
    match (want, got) {
        (Type::Int, Type::Str) => "remove the quotes to write a number".to_string(),
        (Type::Str, Type::Int) => "put the value in quotes to make it a string".to_string(),
        (Type::Bool, Type::Str) => "write `true` or `false` without quotes".to_string(),
        (Type::Set(a), Type::List(b)) if a.accepts(b) => {
            "a list literal becomes a set where a set is expected; a list value does not".to_string()
        }
        (Type::List(a), _) if a.accepts(got) => "wrap the value in brackets to make a list: `[x]`".to_string(),
        (Type::Set(a), _) if a.accepts(got) => "wrap the value in brackets to make a set: `[x]`".to_string(),
        (Type::Bool, Type::Int) => "write `true` or `false`, or compare the number, e.g. `x > 0`".to_string(),
        _ => format!("convert the value, or change the declared type to `{got}`"),
    }
}

/// The closest candidate by edit distance, if it is close enough to be a typo.
fn suggest<'a>(name: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .filter(|c| *c != name)
        .map(|c| (strsim::damerau_levenshtein(name, c), c))
        // One- and two-letter names are too short for a typo to be told from another name.
        .filter(|(d, c)| name.len() >= 3 && *d <= (name.len().max(c.len()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Builder-style helpers on `&mut Diagnostic`, so a diagnostic can be pushed
/// first and decorated after.
trait DiagMut {
    fn with_label_mut(&mut self, label: impl Into<String>) -> &mut Self;
    fn with_hint_mut(&mut self, hint: impl Into<String>) -> &mut Self;
    fn with_note_mut(&mut self, span: Span, note: impl Into<String>) -> &mut Self;
}

impl DiagMut for Diagnostic {
    fn with_label_mut(&mut self, label: impl Into<String>) -> &mut Self {
        self.label = Some(label.into());
        self
    }
    fn with_hint_mut(&mut self, hint: impl Into<String>) -> &mut Self {
        self.hint = Some(hint.into());
        self
    }
    fn with_note_mut(&mut self, span: Span, note: impl Into<String>) -> &mut Self {
        self.notes.push((span, note.into()));
        self
    }
}
