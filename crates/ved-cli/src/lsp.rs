//! `ved lsp`: a language server on stdin/stdout.
//!
//! The editor-facing features are pure functions of a document's text (and, for
//! completion while the text does not parse, of the last version that did):
//! [`diagnostics`], [`hover`], [`definition`], [`completion`] and [`formatting`].
//! They take and return LSP positions (0-based line, UTF-16 column) as JSON values,
//! so that unit tests call them directly. [`run`] is the thin message loop around
//! them, on `lsp-server` (rust-analyzer's synchronous JSON-RPC framing).
//!
//! A document is analysed as a program of its own, except that `NAME.test.ved` is
//! checked after `NAME.ved` from the same directory (the examples' layout: scenarios
//! beside the program they test), so that its domains, fields and transitions
//! resolve. A feature takes the program's files as `(uri, text)` pairs, the
//! document last; only the document's own diagnostics and names are reported.

use serde_json::{json, Value};
use std::collections::HashMap;
use std::process::ExitCode;
use ved_check::Type;
use ved_syntax::ast::{self, ExprKind, StmtKind};
use ved_syntax::{FileId, Severity, Span};

// ------------------------------------------------------------------ positions

/// Line starts of a text, to convert between byte offsets and LSP positions,
/// whose columns count UTF-16 code units (the protocol's default encoding).
pub struct LineIndex<'a> {
    text: &'a str,
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    pub fn new(text: &'a str) -> LineIndex<'a> {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { text, starts }
    }

    /// The LSP position of a byte offset (clamped to the text).
    pub fn position(&self, offset: usize) -> Value {
        let offset = offset.min(self.text.len());
        let line = self.starts.partition_point(|&s| s <= offset) - 1;
        let start = self.starts[line];
        let col: usize =
            self.text[start..].char_indices().take_while(|(i, _)| start + i < offset).map(|(_, c)| c.len_utf16()).sum();
        json!({ "line": line, "character": col })
    }

    pub fn range(&self, span: Span) -> Value {
        json!({ "start": self.position(span.start as usize), "end": self.position(span.end as usize) })
    }

    /// The byte offset of an LSP position. A line past the end gives the end of the
    /// text, a column past the end of its line the end of that line: editors may
    /// send stale positions, and a bad position must not take the server down.
    pub fn offset(&self, pos: &Value) -> usize {
        let line = pos.get("line").and_then(Value::as_u64).unwrap_or(0) as usize;
        let col = pos.get("character").and_then(Value::as_u64).unwrap_or(0) as usize;
        let Some(&start) = self.starts.get(line) else { return self.text.len() };
        let end = self.starts.get(line + 1).map(|e| e - 1).unwrap_or(self.text.len());
        let mut units = 0;
        for (i, c) in self.text[start..end].char_indices() {
            if units >= col {
                return start + i;
            }
            units += c.len_utf16();
        }
        end
    }
}

// ---------------------------------------------------------------- diagnostics

/// The `publishDiagnostics` items of a document: parse and check errors, or the
/// lints of a program that checks. An empty array clears earlier ones.
pub fn diagnostics(files: &[(String, String)]) -> Value {
    let Some(me) = files.len().checked_sub(1) else { return json!([]) };
    let items = match ved_engine::load::check_texts(files.to_vec()) {
        Ok(loaded) => loaded.warnings,
        Err(ved_engine::load::LoadError::Program(d)) => d.items,
        // A file problem cannot happen for text given in memory.
        Err(_) => Vec::new(),
    };
    let indexes: Vec<LineIndex> = files.iter().map(|(_, t)| LineIndex::new(t)).collect();
    let out: Vec<Value> = items
        .iter()
        .filter(|d| d.span.file.0 as usize == me)
        .map(|d| {
            let mut message = d.message.clone();
            if let Some(label) = &d.label {
                message.push_str(&format!("\n{label}"));
            }
            if let Some(hint) = &d.hint {
                message.push_str(&format!("\nhint: {hint}"));
            }
            let related: Vec<Value> = d
                .notes
                .iter()
                .filter_map(|(span, note)| {
                    let (uri, _) = files.get(span.file.0 as usize)?;
                    let range = indexes[span.file.0 as usize].range(*span);
                    Some(json!({ "location": { "uri": uri, "range": range }, "message": note }))
                })
                .collect();
            let severity = match d.severity {
                Severity::Error => 1,
                Severity::Warning => 2,
            };
            let mut v = json!({
                "range": indexes[me].range(d.span),
                "severity": severity,
                "source": "ved",
                "message": message,
            });
            if !related.is_empty() {
                v["relatedInformation"] = Value::Array(related);
            }
            v
        })
        .collect();
    Value::Array(out)
}

// ------------------------------------------------------------------- analysis

/// What a name in the text refers to.
#[derive(Clone, Debug, PartialEq)]
enum Target {
    /// Index into [`Analysis::fields`].
    Field(usize),
    /// Index into [`Analysis::transitions`].
    Transition(usize),
    /// A `let` name, with the span of its value (whose type the checker knows).
    Local { name: String, decl: Span, value: Span },
    /// `.name` on a receiver: the whole member expression's span.
    Member { name: String, expr: Span, receiver: Span },
}

struct FieldDecl {
    domain: String,
    name: String,
    ty: String,
    span: Span,
}

struct TransitionDecl {
    domain: String,
    name: String,
    optimistic: bool,
    span: Span,
}

/// The names of one parsed document: declarations, and every use with its target.
struct Analysis {
    fields: Vec<FieldDecl>,
    transitions: Vec<TransitionDecl>,
    uses: Vec<(Span, Target)>,
    /// Types of checked expressions by span, when the program checks.
    types: HashMap<Span, Type>,
}

/// The file id of a document analysed alone (formatting, parse checks).
const FILE: FileId = FileId(0);

impl Analysis {
    /// `None` when the document (the last file) does not parse. A companion file
    /// that does not parse is left out.
    fn new(files: &[(String, String)]) -> Option<Analysis> {
        let me = files.len().checked_sub(1)?;
        let mine = ved_syntax::parse_file(FileId(me as u32), &files[me].1).ok()?;
        let mut trees: Vec<ast::File> = files[..me]
            .iter()
            .enumerate()
            .filter_map(|(i, (_, t))| ved_syntax::parse_file(FileId(i as u32), t).ok())
            .collect();
        trees.push(mine);
        let mut a = Analysis { fields: Vec::new(), transitions: Vec::new(), uses: Vec::new(), types: HashMap::new() };
        let domains: Vec<String> = trees.iter().flat_map(domain_names).collect();
        let mut domain = String::new();
        for tree in &trees {
            a.declare(tree, &mut domain);
        }
        let mut domain = String::new();
        for tree in &trees {
            a.resolve(tree, &domains, &mut domain);
        }
        a.uses.retain(|(span, _)| span.file.0 as usize == me);
        let checked = ved_check::check_program(&trees);
        if let Some(p) = &checked.program {
            for d in &p.domains {
                for g in &d.goals {
                    collect_types(&g.predicate, &mut a.types);
                }
                for t in &d.transitions {
                    collect_stmt_types(&t.body, &mut a.types);
                }
            }
        }
        Some(a)
    }

    /// `domain`: the domain declared last, to which top-level items belong; it
    /// carries over from one file to the next, as in the checker.
    fn declare(&mut self, tree: &ast::File, domain: &mut String) {
        for item in &tree.items {
            match item {
                ast::Item::Domain(d) => {
                    *domain = d.name.name.clone();
                    for m in &d.members {
                        match m {
                            ast::DomainMember::State(s) => {
                                for f in &s.fields {
                                    self.fields.push(FieldDecl {
                                        domain: domain.clone(),
                                        name: f.name.name.clone(),
                                        ty: type_text(&f.ty),
                                        span: f.name.span,
                                    });
                                }
                            }
                            ast::DomainMember::Transition(t) => self.declare_transition(domain, t),
                            _ => {}
                        }
                    }
                }
                ast::Item::Transition(t) => self.declare_transition(domain, t),
                _ => {}
            }
        }
    }

    fn declare_transition(&mut self, domain: &str, t: &ast::Transition) {
        self.transitions.push(TransitionDecl {
            domain: domain.to_string(),
            name: t.name.name.clone(),
            optimistic: t.optimistic,
            span: t.name.span,
        });
    }

    fn field(&self, domain: &str, name: &str) -> Option<usize> {
        self.fields.iter().position(|f| f.domain == domain && f.name == name)
    }

    fn transition(&self, domain: &str, name: &str) -> Option<usize> {
        self.transitions.iter().position(|t| t.domain == domain && t.name == name)
    }

    fn resolve(&mut self, tree: &ast::File, domains: &[String], domain: &mut String) {
        for item in &tree.items {
            match item {
                ast::Item::Domain(d) => {
                    *domain = d.name.name.clone();
                    for m in &d.members {
                        match m {
                            ast::DomainMember::State(s) => {
                                for f in &s.fields {
                                    if let Some(e) = &f.default {
                                        self.expr(domain, e, &[]);
                                    }
                                }
                            }
                            ast::DomainMember::Goal(g) => self.expr(domain, &g.predicate, &[]),
                            ast::DomainMember::Transition(t) => self.transition_body(domain, t),
                            ast::DomainMember::Verify(v) => self.verify(domain, v),
                        }
                    }
                }
                ast::Item::Goal(g) => self.expr(domain, &g.predicate, &[]),
                ast::Item::Transition(t) => self.transition_body(domain, t),
                ast::Item::Verify(v) => self.verify(domain, v),
                ast::Item::Scenario(s) => {
                    // As the checker: the `domain` step, or the only domain.
                    let mut d = if domains.len() == 1 { domains[0].clone() } else { String::new() };
                    for step in &s.steps {
                        self.step(&mut d, &step.kind);
                    }
                }
            }
        }
    }

    fn verify(&mut self, domain: &str, v: &ast::VerifyBlock) {
        for b in &v.bounds {
            self.name_use(domain, &b.field);
        }
    }

    fn name_use(&mut self, domain: &str, id: &ast::Ident) {
        if let Some(i) = self.field(domain, &id.name) {
            self.uses.push((id.span, Target::Field(i)));
        }
    }

    fn transition_use(&mut self, domain: &str, id: &ast::Ident) {
        if let Some(i) = self.transition(domain, &id.name) {
            self.uses.push((id.span, Target::Transition(i)));
        }
    }

    fn transition_body(&mut self, domain: &str, t: &ast::Transition) {
        let mut locals = Vec::new();
        self.block(domain, &t.step, &mut locals);
    }

    /// `locals`: the `let` names in scope (name, name span, value span), which
    /// shadow fields of the same name.
    fn block(&mut self, domain: &str, b: &ast::Block, locals: &mut Vec<(String, Span, Span)>) {
        let depth = locals.len();
        for s in &b.stmts {
            match &s.kind {
                StmtKind::Let { name, value, .. } => {
                    self.expr(domain, value, locals);
                    locals.push((name.name.clone(), name.span, value.span));
                    self.uses.push((
                        name.span,
                        Target::Local { name: name.name.clone(), decl: name.span, value: value.span },
                    ));
                }
                StmtKind::Assign { target, value, .. } => {
                    self.name_use(domain, target);
                    self.expr(domain, value, locals);
                }
                StmtKind::If { cond, then_block, else_block } => {
                    self.expr(domain, cond, locals);
                    self.block(domain, then_block, locals);
                    if let Some(e) = else_block {
                        self.block(domain, e, locals);
                    }
                }
                StmtKind::Emit { args, .. } => {
                    for a in args {
                        self.expr(domain, a, locals);
                    }
                }
            }
        }
        locals.truncate(depth);
    }

    fn expr(&mut self, domain: &str, e: &ast::Expr, locals: &[(String, Span, Span)]) {
        match &e.kind {
            ExprKind::Int(_) | ExprKind::Bool(_) | ExprKind::Str(_) => {}
            ExprKind::List(xs) | ExprKind::SetLit(xs) => {
                for x in xs {
                    self.expr(domain, x, locals);
                }
            }
            ExprKind::MapLit(kvs) => {
                for (k, v) in kvs {
                    self.expr(domain, k, locals);
                    self.expr(domain, v, locals);
                }
            }
            ExprKind::Name(id) => match locals.iter().rev().find(|l| l.0 == id.name) {
                Some((name, decl, value)) => {
                    self.uses.push((id.span, Target::Local { name: name.clone(), decl: *decl, value: *value }))
                }
                None => self.name_use(domain, id),
            },
            ExprKind::Unary { operand, .. } => self.expr(domain, operand, locals),
            ExprKind::Binary { lhs, rhs, .. } => {
                self.expr(domain, lhs, locals);
                self.expr(domain, rhs, locals);
            }
            ExprKind::Member { receiver, name, args } => {
                self.expr(domain, receiver, locals);
                self.uses.push((
                    name.span,
                    Target::Member { name: name.name.clone(), expr: e.span, receiver: receiver.span },
                ));
                for a in args.iter().flatten() {
                    self.expr(domain, a, locals);
                }
            }
            ExprKind::Index { receiver, index } => {
                self.expr(domain, receiver, locals);
                self.expr(domain, index, locals);
            }
            ExprKind::Paren(inner) => self.expr(domain, inner, locals),
        }
    }

    fn step(&mut self, domain: &mut String, step: &ast::StepKind) {
        use ast::StepKind as S;
        let values = |a: &mut Analysis, d: &str, vs: &[ast::FieldValue]| {
            for v in vs {
                a.name_use(d, &v.field);
                a.expr(d, &v.value, &[]);
            }
        };
        match step {
            S::Domain(id) => *domain = id.name.clone(),
            S::Given(vs) | S::Observe(vs) => values(self, domain, vs),
            S::Simultaneously(msgs) => {
                for vs in msgs {
                    values(self, domain, vs);
                }
            }
            S::Watch(ids) => {
                for id in ids {
                    self.name_use(domain, id);
                }
            }
            S::Expect(x) => match x {
                ast::Expect::Holds(e) => self.expr(domain, e, &[]),
                ast::Expect::Faulted { transition, .. } | ast::Expect::Fired { transition, .. } => {
                    self.transition_use(domain, transition)
                }
                ast::Expect::Emitted { args, .. } | ast::Expect::NotEmitted { args, .. } => {
                    for a in args.iter().flatten() {
                        self.expr(domain, a, &[]);
                    }
                }
                _ => {}
            },
            _ => {}
        }
    }

    /// The use or declaration under a byte offset of file `file`: its span and target.
    fn at(&self, file: FileId, offset: usize) -> Option<(Span, Target)> {
        let hit = |s: &Span| s.file == file && (s.start as usize) <= offset && offset <= s.end as usize;
        if let Some((s, t)) = self.uses.iter().find(|(s, _)| hit(s)) {
            return Some((*s, t.clone()));
        }
        if let Some(i) = self.fields.iter().position(|f| hit(&f.span)) {
            return Some((self.fields[i].span, Target::Field(i)));
        }
        let i = self.transitions.iter().position(|t| hit(&t.span))?;
        Some((self.transitions[i].span, Target::Transition(i)))
    }
}

fn domain_names(tree: &ast::File) -> Vec<String> {
    tree.items
        .iter()
        .filter_map(|i| match i {
            ast::Item::Domain(d) => Some(d.name.name.clone()),
            _ => None,
        })
        .collect()
}

fn type_text(t: &ast::TypeExpr) -> String {
    if t.args.is_empty() {
        t.name.name.clone()
    } else {
        let args: Vec<String> = t.args.iter().map(type_text).collect();
        format!("{}<{}>", t.name.name, args.join(", "))
    }
}

fn collect_stmt_types(stmts: &[ved_check::hir::Stmt], out: &mut HashMap<Span, Type>) {
    use ved_check::hir::StmtKind as K;
    for s in stmts {
        match &s.kind {
            K::Let { value, .. } | K::Assign { value, .. } => collect_types(value, out),
            K::If { cond, then_body, else_body } => {
                collect_types(cond, out);
                collect_stmt_types(then_body, out);
                collect_stmt_types(else_body, out);
            }
            K::Emit { args, .. } => args.iter().for_each(|a| collect_types(a, out)),
        }
    }
}

/// Records the type of every checked expression by its span. The first one wins:
/// an outer expression is visited before the inner ones that may share its span.
fn collect_types(e: &ved_check::hir::Expr, out: &mut HashMap<Span, Type>) {
    use ved_check::hir::ExprKind as K;
    out.entry(e.span).or_insert_with(|| e.ty.clone());
    match &e.kind {
        K::Int(_) | K::Bool(_) | K::Str(_) | K::Field(_) | K::Local(_) => {}
        K::List(xs) | K::Set(xs) => xs.iter().for_each(|x| collect_types(x, out)),
        K::Map(kvs) => kvs.iter().for_each(|(k, v)| {
            collect_types(k, out);
            collect_types(v, out);
        }),
        K::Not(x) | K::Neg(x) => collect_types(x, out),
        K::Arith(_, a, b) | K::Concat(a, b) | K::Compare(_, a, b) | K::And(a, b) | K::Or(a, b) | K::Index(a, b) => {
            collect_types(a, out);
            collect_types(b, out);
        }
        K::Call { receiver, args, .. } => {
            collect_types(receiver, out);
            args.iter().for_each(|a| collect_types(a, out));
        }
    }
}

// ---------------------------------------------------------------------- members

/// The members of docs/reference.md §8: name, whether a method, the receiver
/// types (by their head) that accept it, and a one-line signature.
const MEMBERS: &[(&str, bool, &[&str], &str)] = &[
    ("length", false, &["list", "set", "map", "string"], "length: int"),
    ("is_empty", false, &["list", "set", "map", "string"], "is_empty: bool"),
    ("first", false, &["list", "set"], "first: T (faults when empty)"),
    ("last", false, &["list", "set"], "last: T (faults when empty)"),
    ("keys", false, &["map"], "keys: set<string>"),
    ("values", false, &["map"], "values: list<T>"),
    ("contains", true, &["list", "set", "map", "string"], "contains(x): bool"),
    ("add", true, &["list", "set"], "add(x): the collection with x (one or many) added"),
    ("remove", true, &["list", "set", "map"], "remove(x): the collection without x (one or many)"),
    ("union", true, &["list", "set"], "union(c): elements of both"),
    ("intersection", true, &["list", "set"], "intersection(c): elements also in c"),
    ("difference", true, &["list", "set"], "difference(c): elements not in c"),
    ("insert", true, &["map"], "insert(k, v): map<string, T> with that entry set"),
    ("get", true, &["map"], "get(k, d): T, the value or d when absent"),
];

fn code_block(s: &str) -> Value {
    json!({ "contents": { "kind": "markdown", "value": format!("```ved\n{s}\n```") } })
}

// ------------------------------------------------------------------ features

/// `textDocument/hover`: `name: type` for fields and `let` names, the kind of a
/// transition, the type of a member expression. `null` elsewhere (keywords too).
pub fn hover(files: &[(String, String)], pos: &Value) -> Value {
    let Some((me, (_, text))) = files.iter().enumerate().next_back() else { return Value::Null };
    let index = LineIndex::new(text);
    let offset = index.offset(pos);
    let Some(a) = Analysis::new(files) else { return Value::Null };
    let Some((span, target)) = a.at(FileId(me as u32), offset) else { return Value::Null };
    let mut v = match target {
        Target::Field(i) => {
            let f = &a.fields[i];
            code_block(&format!("{}: {}\n// state field of {}", f.name, f.ty, f.domain))
        }
        Target::Transition(i) => {
            let t = &a.transitions[i];
            let kind = if t.optimistic { "optimistic transition" } else { "transition" };
            code_block(&format!("{kind} {}\n// in domain {}", t.name, t.domain))
        }
        Target::Local { name, value, .. } => match a.types.get(&value) {
            Some(ty) => code_block(&format!("let {name}: {ty}")),
            None => code_block(&format!("let {name}")),
        },
        Target::Member { name, expr, receiver } => {
            let result = a.types.get(&expr);
            let recv = a.types.get(&receiver);
            match (recv, result) {
                (Some(r), Some(t)) => code_block(&format!("({r}).{name}: {t}")),
                _ => match MEMBERS.iter().find(|m| m.0 == name) {
                    Some(m) => code_block(m.3),
                    None => return Value::Null,
                },
            }
        }
    };
    v["range"] = index.range(span);
    v
}

/// `textDocument/definition`: a field use goes to its declaration in `state { }`,
/// a transition name (in `expect fired`/`expect faulted`) to the transition, a
/// `let` name to its `let`. `null` when there is nothing to go to.
pub fn definition(files: &[(String, String)], pos: &Value) -> Value {
    let Some((me, (_, text))) = files.iter().enumerate().next_back() else { return Value::Null };
    let offset = LineIndex::new(text).offset(pos);
    let Some(a) = Analysis::new(files) else { return Value::Null };
    let span = match a.at(FileId(me as u32), offset) {
        Some((_, Target::Field(i))) => a.fields[i].span,
        Some((_, Target::Transition(i))) => a.transitions[i].span,
        Some((_, Target::Local { decl, .. })) => decl,
        _ => return Value::Null,
    };
    let Some((uri, decl_text)) = files.get(span.file.0 as usize) else { return Value::Null };
    json!({ "uri": uri, "range": LineIndex::new(decl_text).range(span) })
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The name of the domain whose text encloses `offset`: the last `domain NAME`
/// before it. A text scan, so that it works while the document does not parse.
fn enclosing_domain(text: &str, offset: usize) -> Option<String> {
    let before = &text[..offset];
    let mut found = None;
    let mut rest = before;
    let mut base = 0;
    while let Some(i) = rest.find("domain") {
        let at = base + i;
        let boundary_before = at == 0 || !before[..at].ends_with(is_ident);
        // Not in a comment or a string ("// the domain sleeps").
        let line_start = before[..at].rfind('\n').map_or(0, |i| i + 1);
        let code = !before[line_start..at].contains(['/', '"']);
        let after = &text[at + "domain".len()..];
        if boundary_before && code && after.starts_with([' ', '\t']) {
            let name: String = after.trim_start_matches([' ', '\t']).chars().take_while(|&c| is_ident(c)).collect();
            if !name.is_empty() {
                found = Some(name);
            }
        }
        base = at + "domain".len();
        rest = &before[base..];
    }
    found
}

/// `textDocument/completion`. After `.`: the members of §8, only those of the
/// receiver's type when the receiver is a field. Elsewhere: the fields of the
/// enclosing domain. `last_good` is the latest version of the document that
/// parsed, used while the current one does not (it rarely does mid-word).
pub fn completion(files: &[(String, String)], last_good: Option<&str>, pos: &Value) -> Value {
    let Some((uri, text)) = files.last() else { return json!({ "isIncomplete": false, "items": [] }) };
    let index = LineIndex::new(text);
    let offset = index.offset(pos);
    let before = &text[..offset];
    let word_start = before.trim_end_matches(is_ident).len();
    let mut program = files.to_vec();
    if ved_syntax::parse_file(FILE, text).is_err() {
        if let Some(good) = last_good {
            *program.last_mut().unwrap() = (uri.clone(), good.to_string());
        }
    }
    let analysis = Analysis::new(&program);
    // The domain named last above the cursor, or the program's only one (a
    // scenario file names none when there is one).
    let known = |d: &String| analysis.as_ref().is_some_and(|a| a.fields.iter().any(|f| &f.domain == d));
    let domain = enclosing_domain(text, offset).filter(known).or_else(|| {
        let a = analysis.as_ref()?;
        let mut names: Vec<&str> = a.fields.iter().map(|f| f.domain.as_str()).collect();
        names.dedup();
        (names.len() == 1).then(|| names[0].to_string())
    });
    let field_type = |name: &str| -> Option<String> {
        let a = analysis.as_ref()?;
        let d = domain.as_deref()?;
        a.field(d, name).map(|i| a.fields[i].ty.clone())
    };
    let items: Vec<Value> = if before[..word_start].ends_with('.') {
        let recv_end = word_start - 1;
        let recv_start = before[..recv_end].trim_end_matches(is_ident).len();
        let head =
            field_type(&before[recv_start..recv_end]).map(|ty| ty.split('<').next().unwrap_or_default().to_string());
        MEMBERS
            .iter()
            .filter(|m| head.as_deref().is_none_or(|h| m.2.contains(&h)))
            .map(|m| json!({ "label": m.0, "kind": if m.1 { 2 } else { 10 }, "detail": m.3 }))
            .collect()
    } else {
        match (&analysis, &domain) {
            (Some(a), Some(d)) => a
                .fields
                .iter()
                .filter(|f| &f.domain == d)
                .map(|f| json!({ "label": f.name, "kind": 5, "detail": f.ty }))
                .collect(),
            _ => Vec::new(),
        }
    };
    json!({ "isIncomplete": false, "items": items })
}

/// `textDocument/formatting`: one edit replacing the whole document with
/// `ved fmt`'s output; no edit when it is already formatted or does not parse.
pub fn formatting(text: &str) -> Value {
    match ved_syntax::fmt::format(FILE, text) {
        Ok(out) if out != text => {
            let index = LineIndex::new(text);
            json!([{ "range": index.range(Span::new(FILE, 0, text.len())), "newText": out }])
        }
        _ => json!([]),
    }
}

// ---------------------------------------------------------------- the loop

pub fn capabilities() -> Value {
    json!({
        "textDocumentSync": 1,
        "hoverProvider": true,
        "definitionProvider": true,
        "completionProvider": { "triggerCharacters": ["."] },
        "documentFormattingProvider": true,
    })
}

struct Doc {
    text: String,
    last_good: Option<String>,
}

/// Serves one client on stdin/stdout until `exit`. Exit status 0 after a
/// `shutdown` then `exit`, 1 otherwise (the protocol's rule), or on a broken stream
/// or a message that is not JSON-RPC.
pub fn run() -> ExitCode {
    use lsp_server::Connection;
    let (conn, io) = Connection::stdio();
    let ok = match conn.initialize(capabilities()) {
        Ok(_) => serve(&conn),
        Err(e) => {
            eprintln!("ved lsp: {e}");
            false
        }
    };
    drop(conn);
    // A malformed message ends lsp-server's reader thread with an error: report it
    // and exit 1 rather than guess where the next message starts.
    let io_ok = match io.join() {
        Ok(()) => true,
        Err(e) => {
            eprintln!("ved lsp: {e}");
            false
        }
    };
    if ok && io_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// The program a document belongs to, as `(uri, text)` pairs, the document last:
/// for `NAME.test.ved`, `NAME.ved` first (its open version, else the file on disk).
fn program_of(uri: &str, text: &str, docs: &HashMap<String, Doc>) -> Vec<(String, String)> {
    let mut files = Vec::new();
    if let Some(stem) = uri.strip_suffix(".test.ved") {
        let main = format!("{stem}.ved");
        let main_text = match docs.get(&main) {
            Some(d) => Some(d.text.clone()),
            None => file_path(&main).and_then(|p| std::fs::read_to_string(p).ok()),
        };
        if let Some(t) = main_text {
            files.push((main, t));
        }
    }
    files.push((uri.to_string(), text.to_string()));
    files
}

/// The path of a `file://` URI, percent-escapes decoded; `None` for other schemes.
fn file_path(uri: &str) -> Option<std::path::PathBuf> {
    let rest = uri.strip_prefix("file://")?;
    let rest = rest.strip_prefix("localhost").unwrap_or(rest);
    let bytes = rest.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes
            .get(i + 1..i + 3)
            .filter(|_| bytes[i] == b'%')
            .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match escaped {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    Some(std::path::PathBuf::from(String::from_utf8(out).ok()?))
}

/// The message loop: true when the client shut down properly.
fn serve(conn: &lsp_server::Connection) -> bool {
    use lsp_server::{ErrorCode, Message, Notification, Response};
    let mut docs: HashMap<String, Doc> = HashMap::new();
    let mut shutdown = false;
    for msg in &conn.receiver {
        match msg {
            Message::Request(req) => {
                if req.method == "shutdown" {
                    shutdown = true;
                    let _ = conn.sender.send(Response::new_ok(req.id, Value::Null).into());
                    continue;
                }
                let p = &req.params;
                let uri = p["textDocument"]["uri"].as_str().unwrap_or_default();
                let pos = &p["position"];
                let doc = docs.get(uri);
                let text = doc.map(|d| d.text.as_str()).unwrap_or_default();
                let files = || program_of(uri, text, &docs);
                let result = match req.method.as_str() {
                    "textDocument/hover" => Some(hover(&files(), pos)),
                    "textDocument/definition" => Some(definition(&files(), pos)),
                    "textDocument/completion" => {
                        Some(completion(&files(), doc.and_then(|d| d.last_good.as_deref()), pos))
                    }
                    "textDocument/formatting" => Some(formatting(text)),
                    _ => None,
                };
                let resp = match result {
                    Some(r) => Response::new_ok(req.id, r),
                    None => Response::new_err(
                        req.id,
                        ErrorCode::MethodNotFound as i32,
                        format!("unknown method `{}`", req.method),
                    ),
                };
                let _ = conn.sender.send(resp.into());
            }
            Message::Notification(n) => {
                let uri = n.params["textDocument"]["uri"].as_str().unwrap_or_default().to_string();
                let text = match n.method.as_str() {
                    "exit" => return shutdown,
                    "textDocument/didOpen" => n.params["textDocument"]["text"].as_str().map(str::to_string),
                    // Full sync: the last change holds the whole text.
                    "textDocument/didChange" => n.params["contentChanges"]
                        .as_array()
                        .and_then(|c| c.last())
                        .and_then(|c| c["text"].as_str())
                        .map(str::to_string),
                    "textDocument/didClose" => {
                        docs.remove(&uri);
                        let params = json!({ "uri": uri, "diagnostics": [] });
                        let _ = conn
                            .sender
                            .send(Notification::new("textDocument/publishDiagnostics".into(), params).into());
                        None
                    }
                    _ => None,
                };
                if let Some(text) = text {
                    let parses = ved_syntax::parse_file(FILE, &text).is_ok();
                    let doc = docs.entry(uri.clone()).or_insert(Doc { text: String::new(), last_good: None });
                    if parses {
                        doc.last_good = Some(text.clone());
                    }
                    doc.text = text;
                    // The document, and its open scenario file, which is checked after it.
                    let dependent = uri.strip_suffix(".ved").map(|stem| format!("{stem}.test.ved"));
                    for u in std::iter::once(uri).chain(dependent.filter(|d| docs.contains_key(d))) {
                        let files = program_of(&u, &docs[&u].text, &docs);
                        let params = json!({ "uri": u, "diagnostics": diagnostics(&files) });
                        let _ = conn
                            .sender
                            .send(Notification::new("textDocument/publishDiagnostics".into(), params).into());
                    }
                }
            }
            Message::Response(_) => {}
        }
    }
    // The client closed the stream without `exit`.
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-file program.
    fn one(text: &str) -> Vec<(String, String)> {
        vec![("file:///p.ved".to_string(), text.to_string())]
    }

    fn pos(line: u64, character: u64) -> Value {
        json!({ "line": line, "character": character })
    }

    const PROG: &str = "domain Pool {\n  state {\n    workers: int\n    names: list<string>\n  }\n  goal workers == 5\n  transition grow {\n    step {\n      let n = names.length\n      if workers < 5 + n {\n        workers += 1\n      }\n    }\n  }\n}\n";

    #[test]
    fn utf16_columns_round_trip() {
        let text = "a\n\u{e9}\u{1F600}x\n";
        let idx = LineIndex::new(text);
        let x = text.find('x').unwrap();
        assert_eq!(idx.position(x), pos(1, 3));
        assert_eq!(idx.offset(&pos(1, 3)), x);
        // Out of range positions are clamped, not a panic.
        assert_eq!(idx.offset(&pos(1, 99)), text.len() - 1);
        assert_eq!(idx.offset(&pos(99, 0)), text.len());
    }

    #[test]
    fn hover_field_transition_member_local() {
        let h = hover(&one(PROG), &pos(9, 10)).to_string();
        assert!(h.contains("workers: int"), "{h}");
        let h = hover(&one(PROG), &pos(3, 5)).to_string();
        assert!(h.contains("names: list<string>"), "{h}");
        let h = hover(&one(PROG), &pos(6, 14)).to_string();
        assert!(h.contains("transition grow"), "{h}");
        let h = hover(&one(PROG), &pos(8, 22)).to_string();
        assert!(h.contains(".length: int"), "{h}");
        let h = hover(&one(PROG), &pos(8, 10)).to_string();
        assert!(h.contains("let n: int"), "{h}");
        // A keyword: nothing.
        assert_eq!(hover(&one(PROG), &pos(0, 2)), Value::Null);
    }

    #[test]
    fn hover_methods_with_arguments() {
        let text = "domain D {\n  state {\n    tags: set<string>\n    conf: map<string, int>\n  }\n  goal tags.contains(\"a\") && conf.get(\"k\", 0) == 1\n}\n";
        let h = hover(&one(text), &pos(5, 13)).to_string();
        assert!(h.contains("(set<string>).contains: bool"), "{h}");
        let h = hover(&one(text), &pos(5, 35)).to_string();
        assert!(h.contains("(map<string, int>).get: int"), "{h}");
        // Completion after `conf.`: map members only.
        let typing = text.replace("conf.get(\"k\", 0) == 1", "conf.");
        let c = completion(&one(&typing), Some(text), &pos(5, 34));
        let labels: Vec<&str> = c["items"].as_array().unwrap().iter().map(|i| i["label"].as_str().unwrap()).collect();
        assert!(labels.contains(&"keys") && labels.contains(&"get") && !labels.contains(&"first"), "{labels:?}");
    }

    #[test]
    fn definition_of_field_and_transition() {
        let d = definition(&one(PROG), &pos(10, 8));
        assert_eq!(d["range"]["start"], pos(2, 4));
        let prog = format!("{PROG}scenario \"s\" {{\n  given workers = 0\n  expect fired grow\n}}\n");
        let d = definition(&one(&prog), &pos(17, 16));
        assert_eq!(d["range"]["start"], pos(6, 13), "{d}");
        let d = definition(&one(&prog), &pos(16, 9));
        assert_eq!(d["range"]["start"], pos(2, 4), "{d}");
    }

    #[test]
    fn completion_members_and_fields() {
        let text = PROG.replace("names.length", "names.");
        let c = completion(&one(&text), Some(PROG), &pos(8, 20));
        let labels: Vec<&str> = c["items"].as_array().unwrap().iter().map(|i| i["label"].as_str().unwrap()).collect();
        assert!(labels.contains(&"length") && labels.contains(&"add"), "{labels:?}");
        assert!(!labels.contains(&"keys"), "a list has no keys: {labels:?}");
        let c = completion(&one(PROG), None, &pos(9, 9));
        let labels: Vec<&str> = c["items"].as_array().unwrap().iter().map(|i| i["label"].as_str().unwrap()).collect();
        assert_eq!(labels, ["workers", "names"]);
    }

    #[test]
    fn a_scenario_file_resolves_against_its_program() {
        let test = "scenario \"s\" {\n  given workers = 0\n  expect fired grow\n  expect nonsense\n}\n";
        let files = vec![
            ("file:///d/p.ved".to_string(), PROG.to_string()),
            ("file:///d/p.test.ved".to_string(), test.to_string()),
        ];
        let d = definition(&files, &pos(2, 16));
        assert_eq!(d["uri"], "file:///d/p.ved");
        assert_eq!(d["range"]["start"], pos(6, 13), "{d}");
        let h = hover(&files, &pos(1, 9)).to_string();
        assert!(h.contains("workers: int"), "{h}");
        let c = completion(&files, None, &pos(1, 8));
        assert_eq!(c["items"].as_array().unwrap().len(), 2, "{c}");
        // A comment that says "domain" names none.
        let commented = vec![files[0].clone(), (files[1].0.clone(), format!("// the domain sleeps\n{test}"))];
        let c = completion(&commented, None, &pos(2, 8));
        assert_eq!(c["items"].as_array().unwrap().len(), 2, "{c}");
        // Only the scenario file's own diagnostic, on its line 3.
        let diags = diagnostics(&files);
        let diags = diags.as_array().unwrap();
        assert!(!diags.is_empty());
        assert!(diags.iter().all(|d| d["range"]["start"]["line"] == 3), "{diags:?}");
    }

    #[test]
    fn file_uris_become_paths() {
        assert_eq!(file_path("file:///a%20b/c.ved"), Some("/a b/c.ved".into()));
        assert_eq!(file_path("file:///x%"), Some("/x%".into()));
        assert_eq!(file_path("untitled:1"), None);
    }

    /// Every position of every example, and every prefix of one (text being typed):
    /// the features answer, never panic.
    #[test]
    fn no_position_or_prefix_panics() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
        let text = std::fs::read_to_string(dir.join("database_routing.ved")).unwrap();
        let test = std::fs::read_to_string(dir.join("database_routing.test.ved")).unwrap();
        let files = vec![("file:///r.ved".to_string(), text.clone()), ("file:///r.test.ved".to_string(), test.clone())];
        for (line, l) in test.lines().enumerate().chain(text.lines().enumerate()) {
            for col in (0..=l.len() + 1).step_by(3) {
                let p = pos(line as u64, col as u64);
                hover(&files, &p);
                definition(&files, &p);
                completion(&files, Some(&test), &p);
            }
        }
        let mut cut = 0;
        while cut < text.len() {
            let prefix = one(&text[..cut]);
            diagnostics(&prefix);
            completion(&prefix, Some(&text), &LineIndex::new(&text[..cut]).position(cut));
            cut += 37;
        }
    }

    #[test]
    fn diagnostics_and_formatting() {
        let bad = PROG.replace("goal workers == 5", "goal workers == \"five\"");
        let d = diagnostics(&one(&bad));
        assert_eq!(d.as_array().unwrap().len(), 1, "{d}");
        assert_eq!(d[0]["severity"], 1);
        assert_eq!(diagnostics(&one(PROG)), json!([]));
        let ugly = "domain A {\nstate {\nx: int\n}\n}\n";
        let edits = formatting(ugly);
        assert_eq!(edits[0]["newText"], ved_syntax::fmt::format(FILE, ugly).unwrap());
        assert_eq!(formatting("domain {"), json!([]));
    }
}
