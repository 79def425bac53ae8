//! `ved fmt`: prints a parsed file canonically and keeps every comment.
//!
//! The printer walks the syntax tree, not the tokens, so spacing, indentation and
//! separators come out the same whatever the input looked like. Comments are not
//! in the tree: they come from [`lex_with_comments`] and are woven back in by
//! position, strictly in source order, through one cursor. A comment is always
//! followed by a newline in the source, so it only ever stands where the grammar
//! allows a line break; the printer only emits comments at points where the output
//! may break a line too, and a comment it could not place earlier is emitted at the
//! next such point. No comment can be lost or reordered that way.
//!
//! The rules (documented for users in `docs/reference.md`, §13):
//!
//! - Two spaces of indentation per block level; one item, member, field, statement,
//!   bound or step per line; `{` ends the line that opens a block and `}` stands
//!   alone on its line, except that an empty block is `{}`.
//! - One space around binary operators and `=`, `+=`, `-=`; one after `,` and `:`;
//!   none inside brackets and parentheses; `} else {` on one line.
//! - `state`, `verify` and a named `goal` stay on one line when they were written on
//!   one line (`state { x: int, y: int }`); otherwise one field or bound per line.
//! - A list, set, map or argument list written on one line stays on one line;
//!   written over several lines, it gets one element per line and a trailing comma.
//! - A line break the author put inside an expression, after a binary operator or
//!   before a `.member`, is kept (the break moves after the operator), with the
//!   continuation indented one more level; other breaks inside expressions go. A
//!   predicate written on the line after `predicate` stays there, and the lines of
//!   its outermost operator chain line up under its first operand (the layout §2 of
//!   the reference shows).
//! - Parentheses are printed where the tree has them: the parser records every pair
//!   written, so the printed text parses back to the same tree. (A tree built by
//!   hand without them gets the ones precedence needs.)
//! - Blank lines between items, members, statements, fields, steps and comments are
//!   kept, at most one in a row; none at the start or the end of a block.
//! - Durations are written in the largest exact unit (`60s` becomes `1m`); `fail A.b
//!   1 times` is `fail A.b`; counts are written `N times`; `emit A.b` is `emit A.b()`
//!   (the same tree; `expect emitted A.b` and `A.b()` are not, and stay as written).
//! - A comment keeps its text, less trailing whitespace. One that followed code on its line still does (after
//!   one space); one on a line of its own stays on a line of its own, indented with
//!   the code around it.
//! - The output ends with exactly one newline (an empty file stays empty).
//!
//! Before returning, [`format`] parses its own output and checks that the tree (spans
//! aside) and the sequence of comments are unchanged; if not, it returns an error
//! instead of text, so a printer bug can never rewrite a program into another one.

use crate::ast::*;
use crate::diag::Diagnostic;
use crate::lexer::{lex_with_comments, Comment};
use crate::parser::parse_file;
use crate::span::{FileId, Span};

/// Formats one file. A file that does not lex or parse returns that diagnostic.
pub fn format(file: FileId, source: &str) -> Result<String, Diagnostic> {
    let (_, comments) = lex_with_comments(file, source)?;
    let tree = parse_file(file, source)?;
    let texts: Vec<String> = comments.iter().map(|c| c.text.clone()).collect();
    let mut p = Printer::new(source, comments);
    p.file(&tree);
    let out = p.finish();
    verify_output(file, &tree, &texts, source, &out)?;
    Ok(out)
}

/// The tree's shape with every span erased: two files with the same shape differ
/// only in layout and comments. Used to check the formatter's output.
pub fn tree_shape(tree: &File) -> String {
    erase_spans(&format!("{tree:?}"))
}

/// Removes every `Span { file: FileId(..), start: .., end: .. }` from a `Debug` string.
fn erase_spans(debug: &str) -> String {
    const OPEN: &str = "Span { file: FileId(";
    let mut out = String::with_capacity(debug.len());
    let mut rest = debug;
    while let Some(i) = rest.find(OPEN) {
        out.push_str(&rest[..i]);
        out.push_str("Span");
        let after = &rest[i..];
        match after.find(" }") {
            Some(j) => rest = &after[j + 2..],
            None => {
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// The printer's self-check: the output must parse to the same tree and carry the
/// same comments in the same order.
fn verify_output(file: FileId, tree: &File, comments: &[String], source: &str, out: &str) -> Result<(), Diagnostic> {
    let whole = Span::new(file, 0, source.len().min(1));
    let fail = |what: &str| {
        Diagnostic::error(whole, format!("internal error in `ved fmt`: {what}; the file is left as it is"))
            .with_hint("please report this with the file")
    };
    let (_, after) = lex_with_comments(file, out).map_err(|_| fail("the output does not lex"))?;
    let reparsed = parse_file(file, out).map_err(|_| fail("the output does not parse"))?;
    if tree_shape(&reparsed) != tree_shape(tree) {
        return Err(fail("the output parses to a different tree"));
    }
    if after.iter().map(|c| c.text.as_str()).ne(comments.iter().map(String::as_str)) {
        return Err(fail("the output does not keep the comments as written"));
    }
    Ok(())
}

const INDENT: usize = 2;

struct Printer<'a> {
    src: &'a str,
    comments: Vec<Comment>,
    /// The next comment not yet printed.
    next: usize,
    out: String,
    /// Indentation, in spaces, of the next line started.
    indent: usize,
    /// Source offset of the end of the last node or comment printed, for blank lines.
    last_end: usize,
    /// Nothing has been printed yet in the current block: no blank line may come next.
    at_block_start: bool,
    /// The expression about to be printed begins its own line (a predicate under its
    /// `predicate`): the operands of its outermost chain of binary operators line up
    /// under the first one instead of hanging one level deeper.
    aligned: bool,
    /// For each open block, the output length just after its opening bracket: a block
    /// that ends at the same length is empty and closes as `{}`.
    opens: Vec<usize>,
}

impl<'a> Printer<'a> {
    fn new(src: &'a str, comments: Vec<Comment>) -> Printer<'a> {
        Printer {
            src,
            comments,
            next: 0,
            out: String::new(),
            indent: 0,
            last_end: 0,
            at_block_start: true,
            aligned: false,
            opens: Vec::new(),
        }
    }

    fn finish(mut self) -> String {
        self.comments_before(usize::MAX);
        let trimmed = self.out.trim_end().len();
        self.out.truncate(trimmed);
        if !self.out.is_empty() {
            self.out.push('\n');
        }
        self.out
    }

    // ------------------------------------------------------------ output helpers

    fn at_line_start(&self) -> bool {
        self.out.is_empty() || self.out.ends_with('\n')
    }

    /// Writes `s`, indenting first if it starts a line.
    fn write(&mut self, s: &str) {
        if self.at_line_start() {
            for _ in 0..self.indent {
                self.out.push(' ');
            }
        }
        self.out.push_str(s);
    }

    fn end_line(&mut self) {
        if !self.at_line_start() {
            let trimmed = self.out.trim_end_matches(' ').len();
            self.out.truncate(trimmed);
            self.out.push('\n');
        }
    }

    fn src_slice(&self, from: usize, to: usize) -> &'a str {
        let to = to.min(self.src.len());
        self.src.get(from.min(to)..to).unwrap_or("")
    }

    fn has_newline(&self, from: usize, to: usize) -> bool {
        self.src_slice(from, to).contains('\n')
    }

    /// The offset of the first `ch` at or after `from`, skipping comments. Only used
    /// where nothing but whitespace, separators and comments can come before it.
    fn skip_to(&self, from: usize, ch: u8) -> usize {
        let bytes = self.src.as_bytes();
        let mut i = from;
        while i < bytes.len() {
            if bytes[i] == b'/' && bytes.get(i + 1) == Some(&b'/') {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            if bytes[i] == ch {
                return i;
            }
            i += 1;
        }
        bytes.len()
    }

    fn comment_pending_before(&self, pos: usize) -> bool {
        self.comments.get(self.next).is_some_and(|c| (c.span.start as usize) < pos)
    }

    /// Whether only whitespace precedes the comment on its source line.
    fn own_line(&self, c: &Comment) -> bool {
        let start = c.span.start as usize;
        let line_start = self.src_slice(0, start).rfind('\n').map_or(0, |i| i + 1);
        self.src_slice(line_start, start).trim().is_empty()
    }

    /// Keeps one blank line before something at source offset `pos` if the source had
    /// at least one since the last thing printed.
    fn blank_before(&mut self, pos: usize) {
        if self.at_block_start || self.out.is_empty() || self.out.ends_with("\n\n") {
            return;
        }
        let gap = self.src_slice(self.last_end, pos);
        let mut lines = gap.split('\n');
        lines.next();
        let mut interior: Vec<&str> = lines.collect();
        interior.pop();
        if interior.iter().any(|l| l.trim().is_empty()) {
            self.end_line();
            self.out.push('\n');
        }
    }

    /// Prints every comment that starts before `pos`. One that followed code in the
    /// source follows the current line if it has code; the others get a line each.
    /// Every comment ends its line.
    fn comments_before(&mut self, pos: usize) {
        while self.comment_pending_before(pos) {
            let c = self.comments[self.next].clone();
            self.next += 1;
            if !self.own_line(&c) && !self.at_line_start() {
                self.out.push(' ');
                self.out.push_str(&c.text);
                self.out.push('\n');
            } else {
                self.end_line();
                self.blank_before(c.span.start as usize);
                self.write(&c.text);
                self.out.push('\n');
                self.at_block_start = false;
            }
            self.last_end = c.span.end as usize;
        }
    }

    /// Starts a line for an item, member, field, statement, step or element that
    /// begins at source offset `start`, after the comments before it.
    fn element_start(&mut self, start: usize) {
        self.comments_before(start);
        self.end_line();
        self.blank_before(start);
        self.at_block_start = false;
    }

    fn open_block(&mut self, open: &str) {
        self.write(open);
        self.opens.push(self.out.len());
        self.indent += INDENT;
        self.at_block_start = true;
    }

    /// Closes a block whose closing bracket is at source offset `close`, after the
    /// comments inside it. An empty block closes on the line that opened it: `{}`.
    fn close_block(&mut self, close: usize, s: &str) {
        self.comments_before(close);
        self.indent -= INDENT;
        let empty = self.opens.pop() == Some(self.out.len());
        if !empty {
            self.end_line();
        }
        self.write(s);
        self.last_end = close + 1;
        self.at_block_start = false;
    }

    /// An inline break point before an operand at `pos`: breaks the line when a
    /// comment comes first or the author broke it there. Returns whether it broke;
    /// if so the continuation is one level deeper until [`Self::end_break`].
    fn break_before(&mut self, step: usize, from: usize, pos: usize) -> bool {
        if !self.comment_pending_before(pos) && !self.has_newline(from, pos) {
            return false;
        }
        self.indent += step;
        let was = self.at_block_start;
        self.at_block_start = true;
        self.comments_before(pos);
        self.at_block_start = was;
        self.end_line();
        true
    }

    fn end_break(&mut self, step: usize, broke: bool) {
        if broke {
            self.indent -= step;
        }
    }

    // ------------------------------------------------------------ items

    fn file(&mut self, f: &File) {
        for item in &f.items {
            let (start, end) = match item {
                Item::Domain(d) => (d.span.start as usize, d.span.end as usize),
                Item::Goal(g) => (g.span.start as usize, g.span.end as usize),
                Item::Transition(t) => (t.span.start as usize, t.span.end as usize),
                Item::Scenario(s) => (s.span.start as usize, s.span.end as usize),
                // A verify block's span is its keyword; `verify` records its own end.
                Item::Verify(v) => (v.span.start as usize, 0),
            };
            self.element_start(start);
            match item {
                Item::Domain(d) => self.domain(d),
                Item::Goal(g) => self.goal(g),
                Item::Transition(t) => self.transition(t),
                Item::Scenario(s) => self.scenario(s),
                Item::Verify(v) => self.verify(v),
            }
            if end > 0 {
                self.last_end = end;
            }
        }
    }

    fn domain(&mut self, d: &Domain) {
        self.write("domain ");
        self.write(&d.name.name);
        self.write(" ");
        self.open_block("{");
        for m in &d.members {
            match m {
                DomainMember::State(s) => {
                    self.element_start(s.span.start as usize);
                    self.state(s);
                }
                DomainMember::Goal(g) => {
                    self.element_start(g.span.start as usize);
                    self.goal(g);
                    self.last_end = g.span.end as usize;
                }
                DomainMember::Transition(t) => {
                    self.element_start(t.span.start as usize);
                    self.transition(t);
                    self.last_end = t.span.end as usize;
                }
                DomainMember::Verify(v) => {
                    self.element_start(v.span.start as usize);
                    self.verify(v);
                }
            }
        }
        self.close_block(d.span.end as usize - 1, "}");
    }

    fn state(&mut self, s: &StateBlock) {
        let from = s.fields.last().map_or_else(|| self.skip_to(s.span.end as usize, b'{') + 1, |f| f.span.end as usize);
        let close = self.skip_to(from, b'}');
        self.write("state ");
        if s.fields.is_empty() || self.has_newline(s.span.start as usize, close) {
            self.open_block("{");
            for f in &s.fields {
                self.element_start(f.span.start as usize);
                self.field(f);
                self.last_end = f.span.end as usize;
            }
            self.close_block(close, "}");
        } else {
            self.write("{ ");
            for (i, f) in s.fields.iter().enumerate() {
                if i > 0 {
                    self.write(", ");
                }
                self.field(f);
            }
            self.write(" }");
            self.last_end = close + 1;
        }
    }

    fn field(&mut self, f: &Field) {
        self.write(&f.name.name);
        self.write(": ");
        self.ty(&f.ty);
        if let Some(d) = &f.default {
            self.write(" = ");
            self.expr(d, 0);
        }
    }

    fn ty(&mut self, t: &TypeExpr) {
        self.write(&t.name.name);
        if !t.args.is_empty() {
            self.write("<");
            for (i, a) in t.args.iter().enumerate() {
                if i > 0 {
                    self.write(", ");
                }
                self.ty(a);
            }
            self.write(">");
        }
    }

    fn goal(&mut self, g: &Goal) {
        self.write("goal ");
        let Some(name) = &g.name else {
            self.expr(&g.predicate, 0);
            return;
        };
        self.write(&name.name);
        let close = g.span.end as usize - 1;
        if self.has_newline(g.span.start as usize, close) {
            self.write(" ");
            self.open_block("{");
            let start = g.predicate.span.start as usize;
            // A predicate written under its `predicate` stays there (§2 shows that layout).
            let line_start = self.src_slice(0, start).rfind('\n').map_or(0, |i| i + 1);
            let own_line = self.src_slice(line_start, start).trim().is_empty();
            self.element_start(start);
            if own_line {
                self.write("predicate");
                self.end_line();
                self.indent += INDENT;
                self.aligned = true;
                self.expr(&g.predicate, 0);
                self.indent -= INDENT;
            } else {
                self.write("predicate ");
                self.expr(&g.predicate, 0);
            }
            self.last_end = g.predicate.span.end as usize;
            self.close_block(close, "}");
        } else {
            self.write(" { predicate ");
            self.expr(&g.predicate, 0);
            self.write(" }");
        }
    }

    fn transition(&mut self, t: &Transition) {
        if t.optimistic {
            self.write("optimistic ");
        }
        self.write("transition ");
        self.write(&t.name.name);
        self.write(" ");
        self.open_block("{");
        self.element_start(t.step.span.start as usize);
        self.write("step ");
        self.block(&t.step);
        self.last_end = t.step.span.end as usize;
        self.close_block(t.span.end as usize - 1, "}");
    }

    fn verify(&mut self, v: &VerifyBlock) {
        let from = v.bounds.last().map_or_else(|| self.skip_to(v.span.end as usize, b'{') + 1, |b| b.span.end as usize);
        let close = self.skip_to(from, b'}');
        self.write("verify ");
        if v.bounds.is_empty() || self.has_newline(v.span.start as usize, close) {
            self.open_block("{");
            for b in &v.bounds {
                self.element_start(b.span.start as usize);
                self.bound(b);
                self.last_end = b.span.end as usize;
            }
            self.close_block(close, "}");
        } else {
            self.write("{ ");
            for (i, b) in v.bounds.iter().enumerate() {
                if i > 0 {
                    self.write(", ");
                }
                self.bound(b);
            }
            self.write(" }");
        }
        self.last_end = close + 1;
    }

    fn bound(&mut self, b: &VerifyBound) {
        self.write(&b.field.name);
        self.write(" in ");
        match &b.values {
            VerifyValues::Range { lo, hi } => self.write(&format!("{lo}..{hi}")),
            VerifyValues::Values(e) => self.expr(e, 0),
        }
    }

    // ------------------------------------------------------------ statements

    /// `{ statements }`, the `{` on the current line.
    fn block(&mut self, b: &Block) {
        self.open_block("{");
        for s in &b.stmts {
            self.element_start(s.span.start as usize);
            self.stmt(s);
            self.last_end = s.span.end as usize;
        }
        self.close_block(b.span.end as usize - 1, "}");
    }

    fn stmt(&mut self, s: &Stmt) {
        match &s.kind {
            StmtKind::Let { name, ty, value } => {
                self.write("let ");
                self.write(&name.name);
                if let Some(t) = ty {
                    self.write(": ");
                    self.ty(t);
                }
                self.write(" = ");
                self.expr(value, 0);
            }
            StmtKind::Assign { target, op, value, .. } => {
                self.write(&target.name);
                self.write(match op {
                    AssignOp::Set => " = ",
                    AssignOp::Add => " += ",
                    AssignOp::Sub => " -= ",
                });
                self.expr(value, 0);
            }
            StmtKind::If { cond, then_block, else_block } => {
                self.write("if ");
                self.expr(cond, 0);
                self.write(" ");
                self.block(then_block);
                if let Some(e) = else_block {
                    let start = e.span.start as usize;
                    if self.comment_pending_before(start) {
                        // `}` comment, then `else` on the next line: the parser looks
                        // past newlines for an `else`.
                        self.comments_before(start);
                        self.end_line();
                        self.write("else ");
                    } else {
                        self.write(" else ");
                    }
                    // `else if` is stored as an else block holding just that `if`, with
                    // the `if`'s span; a block the author wrote has its own braces.
                    match e.stmts.as_slice() {
                        [only] if only.span == e.span && matches!(only.kind, StmtKind::If { .. }) => self.stmt(only),
                        _ => self.block(e),
                    }
                }
            }
            StmtKind::Emit { adapter, action, args } => {
                self.write("emit ");
                self.write(&adapter.name);
                self.write(".");
                self.write(&action.name);
                // `emit A.b()` and `emit A.b` are the same tree; the parentheses are
                // canonical, like a call's (and most programs write them).
                let after = action.span.end as usize;
                if self.src_slice(after, s.span.end as usize).contains('(') {
                    self.args(after, args);
                } else {
                    self.write("()");
                }
            }
        }
    }

    /// `(args)` after a name ending at source offset `after`.
    fn args(&mut self, after: usize, args: &[Expr]) {
        let open = self.skip_to(after, b'(');
        let from = args.last().map_or(open + 1, |a| a.span.end as usize);
        let close = self.skip_to(from, b')');
        let elems: Vec<Elem> = args.iter().map(Elem::One).collect();
        self.composite("(", ")", open, close, &elems);
    }

    // ------------------------------------------------------------ expressions

    /// Prints `e`, in parentheses if it binds more loosely than a context of
    /// precedence `ctx` allows (0: any; see [`level`]).
    fn expr(&mut self, e: &Expr, ctx: u8) {
        let aligned = std::mem::take(&mut self.aligned);
        if precedence(e) < ctx {
            self.write("(");
            self.expr(e, 0);
            self.write(")");
            return;
        }
        match &e.kind {
            ExprKind::Int(v) => self.write(&v.to_string()),
            ExprKind::Bool(b) => self.write(if *b { "true" } else { "false" }),
            ExprKind::Str(s) => self.write(&quote(s)),
            ExprKind::Name(id) => self.write(&id.name),
            ExprKind::List(items) => {
                let elems: Vec<Elem> = items.iter().map(Elem::One).collect();
                self.composite("[", "]", e.span.start as usize, e.span.end as usize - 1, &elems);
            }
            ExprKind::SetLit(items) => {
                let elems: Vec<Elem> = items.iter().map(Elem::One).collect();
                let open = self.skip_to(e.span.start as usize, b'[');
                self.composite("set[", "]", open, e.span.end as usize - 1, &elems);
            }
            ExprKind::MapLit(entries) => {
                let elems: Vec<Elem> = entries.iter().map(|(k, v)| Elem::Pair(k, v)).collect();
                let open = if elems.is_empty() { "[:" } else { "[" };
                self.composite(open, "]", e.span.start as usize, e.span.end as usize - 1, &elems);
            }
            ExprKind::Unary { op, operand, .. } => {
                self.write(match op {
                    UnaryOp::Not => "!",
                    UnaryOp::Neg => "-",
                });
                // `- -x` would lex the same as `--x`, but keep it readable.
                if *op == UnaryOp::Neg && starts_with_minus(operand) {
                    self.write(" ");
                }
                self.expr(operand, UNARY);
            }
            ExprKind::Binary { op, lhs, rhs, .. } => {
                let l = level(*op);
                // Equality and ordering do not chain, so both sides must bind tighter.
                let (lctx, rctx) = if l == 3 || l == 4 { (l + 1, l + 1) } else { (l, l + 1) };
                // The left operand of an aligned chain continues the chain.
                self.aligned = aligned && matches!(lhs.kind, ExprKind::Binary { .. }) && precedence(lhs) >= lctx;
                self.expr(lhs, lctx);
                self.aligned = false;
                self.write(" ");
                self.write(op.symbol());
                let step = if aligned { 0 } else { INDENT };
                let broke = self.break_before(step, lhs.span.end as usize, rhs.span.start as usize);
                if !broke {
                    self.write(" ");
                }
                self.expr(rhs, rctx);
                self.end_break(step, broke);
            }
            ExprKind::Member { receiver, name, args } => {
                self.expr(receiver, POSTFIX);
                let broke = self.break_before(INDENT, receiver.span.end as usize, name.span.start as usize);
                self.write(".");
                self.write(&name.name);
                if let Some(args) = args {
                    self.args(name.span.end as usize, args);
                }
                self.end_break(INDENT, broke);
            }
            ExprKind::Index { receiver, index } => {
                self.expr(receiver, POSTFIX);
                self.bracketed("[", index, "]", e.span.end as usize - 1);
            }
            ExprKind::Paren(inner) => self.bracketed("(", inner, ")", e.span.end as usize - 1),
        }
    }

    /// `(inner)` or `[inner]`, with any comment inside kept on its own line.
    fn bracketed(&mut self, open: &str, inner: &Expr, close: &str, close_pos: usize) {
        self.write(open);
        let broke = self.comment_pending_before(inner.span.start as usize);
        if broke {
            self.indent += INDENT;
            self.comments_before(inner.span.start as usize);
        }
        self.expr(inner, 0);
        if broke {
            self.indent -= INDENT;
        }
        if self.comment_pending_before(close_pos) {
            self.indent += INDENT;
            self.comments_before(close_pos);
            self.indent -= INDENT;
            self.end_line();
        } else if broke {
            self.end_line();
        }
        self.write(close);
    }

    /// A bracketed, comma-separated sequence: on one line if the source had it on one
    /// line, otherwise one element per line with a trailing comma.
    fn composite(&mut self, open: &str, close: &str, open_pos: usize, close_pos: usize, elems: &[Elem]) {
        // `[:]`, the empty map, is the one literal with something between its brackets.
        let empty_map = elems.is_empty() && open == "[:";
        let open = if empty_map { "[" } else { open };
        if !self.has_newline(open_pos, close_pos) {
            self.write(open);
            if empty_map {
                self.write(":");
            }
            for (i, el) in elems.iter().enumerate() {
                if i > 0 {
                    self.write(", ");
                }
                self.elem(el);
            }
            self.write(close);
            return;
        }
        self.open_block(open);
        if empty_map {
            self.write(":");
            if let Some(top) = self.opens.last_mut() {
                *top = self.out.len();
            }
        }
        for el in elems {
            self.element_start(el.start());
            self.elem(el);
            self.write(",");
            self.last_end = el.end();
        }
        self.close_block(close_pos, close);
    }

    fn elem(&mut self, el: &Elem) {
        match el {
            Elem::One(e) => self.expr(e, 0),
            Elem::Pair(k, v) => {
                self.expr(k, 0);
                self.write(": ");
                self.expr(v, 0);
            }
        }
    }

    // ------------------------------------------------------------ scenarios

    fn scenario(&mut self, s: &Scenario) {
        self.write("scenario ");
        self.write(&quote(&s.name));
        self.write(" ");
        self.open_block("{");
        for step in &s.steps {
            self.element_start(step.span.start as usize);
            self.step(step);
            self.last_end = step.span.end as usize;
        }
        self.close_block(s.span.end as usize - 1, "}");
    }

    fn step(&mut self, step: &Step) {
        match &step.kind {
            StepKind::Domain(d) => {
                self.write("domain ");
                self.write(&d.name);
            }
            StepKind::Given(fvs) => {
                self.write("given ");
                self.field_values(fvs);
            }
            StepKind::Observe(fvs) => {
                self.write("observe ");
                self.field_values(fvs);
            }
            StepKind::Simultaneously(messages) => {
                self.write("simultaneously ");
                self.open_block("{");
                for m in messages {
                    let start = m.first().map_or(step.span.start as usize, |fv| fv.field.span.start as usize);
                    self.element_start(start);
                    self.write("observe ");
                    self.field_values(m);
                    if let Some(last) = m.last() {
                        self.last_end = last.value.span.end as usize;
                    }
                }
                self.close_block(step.span.end as usize - 1, "}");
            }
            StepKind::Fail { adapter, action, times } => {
                self.write(&format!("fail {}.{}", adapter.name, action.name));
                if *times != 1 {
                    self.write(&format!(" {times} times"));
                }
            }
            StepKind::Advance { ms } => {
                self.write("advance ");
                self.write(&duration(*ms));
            }
            StepKind::HoldIntents => self.write("hold intents"),
            StepKind::Answer { newest, ok } => {
                self.write(if *newest { "answer newest" } else { "answer oldest" });
                if !ok {
                    self.write(" failed");
                }
            }
            StepKind::Watch(fields) => {
                self.write("watch ");
                let names: Vec<&str> = fields.iter().map(|f| f.name.as_str()).collect();
                self.write(&names.join(", "));
            }
            StepKind::Expect(x) => {
                self.write("expect ");
                self.expect(x);
            }
        }
    }

    fn field_values(&mut self, fvs: &[FieldValue]) {
        for (i, fv) in fvs.iter().enumerate() {
            if i > 0 {
                self.write(", ");
            }
            self.write(&fv.field.name);
            self.write(match fv.relative {
                None => " = ",
                Some(false) => " += ",
                Some(true) => " -= ",
            });
            self.expr(&fv.value, 0);
        }
    }

    fn expect(&mut self, x: &Expect) {
        let times = |t: &Option<u32>| t.map(|n| format!(" {n} times")).unwrap_or_default();
        match x {
            Expect::Holds(e) => self.expr(e, 0),
            Expect::Stable => self.write("stable"),
            Expect::Stuck => self.write("stuck"),
            Expect::Livelock => self.write("livelock"),
            Expect::Waiting => self.write("waiting"),
            Expect::Degraded => self.write("degraded"),
            Expect::StableWithin { ticks } => self.write(&format!("stable within {ticks} ticks")),
            Expect::Emitted { adapter, action, args, times: t } => {
                self.write(&format!("emitted {}.{}", adapter.name, action.name));
                if let Some(args) = args {
                    self.args(action.span.end as usize, args);
                }
                self.write(&times(t));
            }
            Expect::NotEmitted { adapter, action, args } => {
                self.write(&format!("not emitted {}.{}", adapter.name, action.name));
                if let Some(args) = args {
                    self.args(action.span.end as usize, args);
                }
            }
            Expect::Faulted { transition, times: t } => {
                self.write(&format!("faulted {}{}", transition.name, times(t)));
            }
            Expect::Fired { transition, times: t } => {
                self.write(&format!("fired {}{}", transition.name, times(t)));
            }
        }
    }
}

/// An element of a list, set, argument list (one expression) or map (a pair).
enum Elem<'e> {
    One(&'e Expr),
    Pair(&'e Expr, &'e Expr),
}

impl Elem<'_> {
    fn start(&self) -> usize {
        match self {
            Elem::One(e) | Elem::Pair(e, _) => e.span.start as usize,
        }
    }

    fn end(&self) -> usize {
        match self {
            Elem::One(e) | Elem::Pair(_, e) => e.span.end as usize,
        }
    }
}

/// Operands of a unary operator bind at this level or tighter.
const UNARY: u8 = 7;
/// Receivers of `.member` and `[index]`.
const POSTFIX: u8 = 8;

/// The parser's binary levels: 1 `||`, 2 `&&`, 3 equality, 4 ordering, 5 additive,
/// 6 multiplicative.
fn level(op: BinaryOp) -> u8 {
    match op {
        BinaryOp::Or => 1,
        BinaryOp::And => 2,
        BinaryOp::Eq | BinaryOp::Ne => 3,
        BinaryOp::Lt | BinaryOp::Le | BinaryOp::Gt | BinaryOp::Ge => 4,
        BinaryOp::Add | BinaryOp::Sub => 5,
        BinaryOp::Mul | BinaryOp::Div | BinaryOp::Rem => 6,
    }
}

/// How tightly an expression binds when printed bare.
fn precedence(e: &Expr) -> u8 {
    match &e.kind {
        ExprKind::Binary { op, .. } => level(*op),
        ExprKind::Unary { .. } => UNARY,
        // `-5` is a literal, but printed it starts with a unary minus.
        ExprKind::Int(v) if *v < 0 => UNARY,
        _ => u8::MAX,
    }
}

fn starts_with_minus(e: &Expr) -> bool {
    match &e.kind {
        ExprKind::Int(v) => *v < 0,
        ExprKind::Unary { op: UnaryOp::Neg, .. } => true,
        ExprKind::Binary { lhs, .. } => starts_with_minus(lhs),
        ExprKind::Member { receiver, .. } | ExprKind::Index { receiver, .. } => starts_with_minus(receiver),
        _ => false,
    }
}

/// A string literal whose value is `s`: the lexer's four escapes, nothing else.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A duration in the largest unit that divides it exactly.
fn duration(ms: u64) -> String {
    for (unit, factor) in [("h", 3_600_000), ("m", 60_000), ("s", 1_000)] {
        if ms != 0 && ms.is_multiple_of(factor) {
            return format!("{}{unit}", ms / factor);
        }
    }
    format!("{ms}ms")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The self-check refuses output that changes the tree, drops or reorders a
    /// comment, or does not parse: `ved fmt` then leaves the file alone.
    #[test]
    fn the_self_check_refuses_output_that_is_not_the_same_program() {
        let f = FileId(0);
        let src = "goal a // one\n// two\n";
        let tree = parse_file(f, src).unwrap();
        let comments = ["// one".to_string(), "// two".to_string()];
        assert!(verify_output(f, &tree, &comments, src, "goal a // one\n// two\n").is_ok());
        for bad in ["goal b // one\n// two\n", "goal a // two\n// one\n", "goal a // one\n", "goal (a // one\n// two\n"]
        {
            let e = verify_output(f, &tree, &comments, src, bad).unwrap_err();
            assert!(e.message.starts_with("internal error in `ved fmt`"), "{bad}: {}", e.message);
        }
    }
}
