//! The parser: tokens to the syntax tree, stopping at the first error.
//!
//! Vocabulary: `parse_x` parses an X starting at the current token;
//! `expect_x` consumes a required token or fails with a diagnostic; `eat_x`
//! consumes a token if it is there and says whether it did; `peek_x` looks
//! without consuming. Newlines are tokens: `skip_newlines` is called exactly
//! where the grammar lets a construct run over several lines.

use crate::ast::*;
use crate::diag::Diagnostic;
use crate::lexer::{lex, Token, TokenKind};
use crate::span::{FileId, Span};

/// Words that cannot name a field, a `let` or a transition.
const RESERVED: &[&str] =
    &["domain", "state", "goal", "predicate", "transition", "step", "let", "if", "else", "emit", "true", "false"];

/// How deeply expressions and blocks may nest before the parser refuses.
const NESTING_MAX: u32 = 200;

type PResult<T> = Result<T, Diagnostic>;

/// Parses one file of a program.
pub fn parse_file(file: FileId, text: &str) -> Result<File, Diagnostic> {
    let tokens = lex(file, text)?;
    let mut p = Parser { tokens, pos: 0, depth: 0 };
    p.parse_file()
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    depth: u32,
}

impl Parser {
    // ------------------------------------------------------------ token helpers

    fn peek(&self) -> &TokenKind {
        &self.tokens[self.pos].kind
    }

    fn peek_at(&self, n: usize) -> &TokenKind {
        let i = (self.pos + n).min(self.tokens.len() - 1);
        &self.tokens[i].kind
    }

    fn span(&self) -> Span {
        self.tokens[self.pos].span
    }

    fn prev_span(&self) -> Span {
        self.tokens[self.pos.saturating_sub(1)].span
    }

    fn bump(&mut self) -> Token {
        let t = self.tokens[self.pos].clone();
        if self.pos < self.tokens.len() - 1 {
            self.pos += 1;
        }
        t
    }

    fn eat(&mut self, k: &TokenKind) -> bool {
        if self.peek() == k {
            self.bump();
            true
        } else {
            false
        }
    }

    fn peek_ident(&self, word: &str) -> bool {
        matches!(self.peek(), TokenKind::Ident(s) if s == word)
    }

    fn eat_ident(&mut self, word: &str) -> bool {
        if self.peek_ident(word) {
            self.bump();
            true
        } else {
            false
        }
    }

    fn skip_newlines(&mut self) {
        while matches!(self.peek(), TokenKind::Newline | TokenKind::Semi) {
            self.bump();
        }
    }

    /// The next token that is not a newline, without consuming anything.
    fn peek_past_newlines(&self) -> &TokenKind {
        let mut i = self.pos;
        while matches!(self.tokens[i].kind, TokenKind::Newline) && i < self.tokens.len() - 1 {
            i += 1;
        }
        &self.tokens[i].kind
    }

    fn unexpected(&self, expected: &str) -> Diagnostic {
        let found = self.peek().describe();
        let d = Diagnostic::error(self.span(), format!("expected {expected}, found {found}"));
        match self.peek() {
            TokenKind::Eof => d.with_label("the file ends here").with_hint("something is missing, often a closing `}`"),
            _ => d,
        }
    }

    fn expect(&mut self, k: TokenKind, context: &str) -> PResult<Span> {
        if *self.peek() == k {
            return Ok(self.bump().span);
        }
        Err(self.unexpected(&format!("`{}` {context}", k.symbol())))
    }

    fn expect_ident(&mut self, what: &str) -> PResult<Ident> {
        match self.peek().clone() {
            TokenKind::Ident(name) => {
                let span = self.bump().span;
                Ok(Ident { name, span })
            }
            _ => Err(self.unexpected(what)),
        }
    }

    /// A name the user declares: not a reserved word.
    fn expect_new_name(&mut self, what: &str) -> PResult<Ident> {
        let id = self.expect_ident(what)?;
        if RESERVED.contains(&id.name.as_str()) {
            return Err(Diagnostic::error(
                id.span,
                format!("`{}` is a reserved word and cannot be used as a name", id.name),
            )
            .with_hint(format!("choose another name, e.g. `{}_`", id.name)));
        }
        Ok(id)
    }

    fn enter(&mut self) -> PResult<()> {
        self.depth += 1;
        if self.depth > NESTING_MAX {
            return Err(Diagnostic::error(self.span(), "nested too deeply")
                .with_hint(format!("Ved allows {NESTING_MAX} levels of nesting; split the expression with `let`")));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.depth -= 1;
    }

    /// A statement, field or step ends here: a newline, `;`, or a closing `}` (left in place).
    fn expect_end_of_line(&mut self, what: &str) -> PResult<()> {
        match self.peek() {
            TokenKind::Newline | TokenKind::Semi => {
                self.bump();
                Ok(())
            }
            TokenKind::RBrace | TokenKind::Eof => Ok(()),
            TokenKind::Assign => Err(Diagnostic::error(self.span(), "`=` is assignment; use `==` to compare")
                .with_label("assignment is not an expression")),
            _ => Err(self.unexpected(&format!("the end of the line after {what}"))),
        }
    }

    // ------------------------------------------------------------ items

    fn parse_file(&mut self) -> PResult<File> {
        let mut items = Vec::new();
        loop {
            self.skip_newlines();
            match self.peek().clone() {
                TokenKind::Eof => return Ok(File { items }),
                TokenKind::Ident(w) => match w.as_str() {
                    "domain" => items.push(Item::Domain(self.parse_domain()?)),
                    "goal" => items.push(Item::Goal(self.parse_goal()?)),
                    "transition" | "optimistic" => items.push(Item::Transition(self.parse_transition()?)),
                    "scenario" => items.push(Item::Scenario(self.parse_scenario()?)),
                    "verify" => items.push(Item::Verify(self.parse_verify()?)),
                    "state" => {
                        return Err(Diagnostic::error(self.span(), "`state` must be inside a `domain`")
                            .with_hint("write `domain Name { state { ... } }`"))
                    }
                    _ => {
                        return Err(Diagnostic::error(
                            self.span(),
                            format!(
                                "expected `domain`, `goal`, `transition` or `scenario`, found {}",
                                self.peek().describe()
                            ),
                        )
                        .with_hint("statements go inside a transition's `step { ... }`"))
                    }
                },
                _ => {
                    return Err(Diagnostic::error(
                        self.span(),
                        format!(
                            "expected `domain`, `goal`, `transition` or `scenario`, found {}",
                            self.peek().describe()
                        ),
                    )
                    .with_hint("a Ved file is a list of domains, goals, transitions and scenarios"))
                }
            }
        }
    }

    fn parse_domain(&mut self) -> PResult<Domain> {
        let start = self.bump().span;
        let name = self.expect_new_name("a domain name after `domain`")?;
        self.skip_newlines();
        let open = self.expect(TokenKind::LBrace, "to open the domain")?;
        let mut members = Vec::new();
        loop {
            self.skip_newlines();
            match self.peek().clone() {
                TokenKind::RBrace => break,
                TokenKind::Eof => return Err(unclosed(open, "domain")),
                TokenKind::Ident(w) => match w.as_str() {
                    "state" => members.push(DomainMember::State(self.parse_state()?)),
                    "goal" => members.push(DomainMember::Goal(self.parse_goal()?)),
                    "transition" | "optimistic" => members.push(DomainMember::Transition(self.parse_transition()?)),
                    "verify" => members.push(DomainMember::Verify(self.parse_verify()?)),
                    _ => {
                        return Err(self.unexpected("`state`, `goal`, `transition` or `}` inside a domain").with_hint(
                            "fields are declared inside `state { ... }`; statements inside a transition's `step`",
                        ))
                    }
                },
                _ => return Err(self.unexpected("`state`, `goal`, `transition` or `}` inside a domain")),
            }
        }
        let end = self.bump().span;
        Ok(Domain { name, members, span: start.to(end) })
    }

    fn parse_state(&mut self) -> PResult<StateBlock> {
        let span = self.bump().span;
        self.skip_newlines();
        let open = self.expect(TokenKind::LBrace, "after `state`")?;
        let mut fields = Vec::new();
        loop {
            while matches!(self.peek(), TokenKind::Newline | TokenKind::Semi | TokenKind::Comma) {
                self.bump();
            }
            match self.peek() {
                TokenKind::RBrace => {
                    self.bump();
                    break;
                }
                TokenKind::Eof => return Err(unclosed(open, "state block")),
                _ => {}
            }
            let name = self.expect_new_name("a field name")?;
            if !self.eat(&TokenKind::Colon) {
                return Err(self
                    .unexpected(&format!("`:` and a type after field `{}`", name.name))
                    .with_hint(format!("declare it as `{}: int`", name.name)));
            }
            let ty = self.parse_type()?;
            let default = if self.eat(&TokenKind::Assign) { Some(self.parse_expr()?) } else { None };
            let end = default.as_ref().map(|d| d.span).unwrap_or(ty.span);
            fields.push(Field { span: name.span.to(end), name, ty, default });
            match self.peek() {
                TokenKind::Newline | TokenKind::Semi | TokenKind::Comma | TokenKind::RBrace => {}
                _ => return Err(self.unexpected("a newline or `}` after the field")),
            }
        }
        Ok(StateBlock { fields, span })
    }

    fn parse_type(&mut self) -> PResult<TypeExpr> {
        let name = match self.peek().clone() {
            TokenKind::Ident(n) => Ident { name: n, span: self.bump().span },
            _ => {
                return Err(self
                    .unexpected("a type")
                    .with_hint("types are `int`, `bool`, `string`, `list<T>`, `set<T>` and `map<string, T>`"))
            }
        };
        let mut args = Vec::new();
        let mut end = name.span;
        if self.eat(&TokenKind::Lt) {
            self.enter()?;
            loop {
                args.push(self.parse_type()?);
                if !self.eat(&TokenKind::Comma) {
                    break;
                }
            }
            self.leave();
            end = self.expect(TokenKind::Gt, "to close the type arguments")?;
        }
        Ok(TypeExpr { span: name.span.to(end), name, args })
    }

    fn parse_goal(&mut self) -> PResult<Goal> {
        let start = self.bump().span;
        // `goal Name {` is the named form; anything else is a shorthand predicate.
        let named = matches!(self.peek(), TokenKind::Ident(_)) && *self.peek_at(1) == TokenKind::LBrace;
        if named {
            let name = self.expect_new_name("a goal name")?;
            let open = self.expect(TokenKind::LBrace, "after the goal name")?;
            self.skip_newlines();
            if !self.eat_ident("predicate") {
                if *self.peek() == TokenKind::Eof {
                    return Err(unclosed(open, "goal"));
                }
                return Err(Diagnostic::error(self.span(), "a named goal needs a `predicate`")
                    .with_label(format!("found {}", self.peek().describe()))
                    .with_hint(format!("write `goal {} {{ predicate <condition> }}`", name.name)));
            }
            self.skip_newlines();
            let predicate = self.parse_expr()?;
            self.skip_newlines();
            if *self.peek() == TokenKind::Eof {
                return Err(unclosed(open, "goal"));
            }
            let end = self.expect(TokenKind::RBrace, "to close the goal")?;
            return Ok(Goal { name: Some(name), predicate, span: start.to(end) });
        }
        if matches!(self.peek(), TokenKind::Newline | TokenKind::Eof | TokenKind::RBrace) {
            return Err(self
                .unexpected("a condition after `goal`")
                .with_hint("write `goal workers == 5` or `goal Name { predicate ... }`"));
        }
        let predicate = self.parse_expr()?;
        let span = start.to(predicate.span);
        self.expect_end_of_line("the goal")?;
        Ok(Goal { name: None, predicate, span })
    }

    /// `verify { FIELD in LO..HI, FIELD in [V, ...] }`, bounds separated by commas or newlines.
    fn parse_verify(&mut self) -> PResult<VerifyBlock> {
        let span = self.bump().span;
        self.skip_newlines();
        let open = self.expect(TokenKind::LBrace, "after `verify`")?;
        let mut bounds = Vec::new();
        loop {
            while matches!(self.peek(), TokenKind::Newline | TokenKind::Semi | TokenKind::Comma) {
                self.bump();
            }
            match self.peek() {
                TokenKind::RBrace => {
                    self.bump();
                    break;
                }
                TokenKind::Eof => return Err(unclosed(open, "verify block")),
                _ => {}
            }
            let field = self.expect_ident("a field name in `verify`")?;
            if !self.eat_ident("in") {
                return Err(self
                    .unexpected(&format!("`in` after `{}`", field.name))
                    .with_hint(format!("write `{} in 0..20` or `{} in [\"a\", \"b\"]`", field.name, field.name)));
            }
            let values = if *self.peek() == TokenKind::LBracket {
                VerifyValues::Values(self.parse_expr()?)
            } else {
                let lo = self.parse_bound_int()?;
                if !(self.eat(&TokenKind::Dot) && self.eat(&TokenKind::Dot)) {
                    return Err(self.unexpected("`..` in a range such as `0..20`"));
                }
                let hi = self.parse_bound_int()?;
                VerifyValues::Range { lo, hi }
            };
            let end = self.tokens[self.pos.saturating_sub(1)].span;
            bounds.push(VerifyBound { span: field.span.to(end), field, values });
        }
        Ok(VerifyBlock { bounds, span })
    }

    /// An integer literal, possibly negative, in a `verify` range.
    fn parse_bound_int(&mut self) -> PResult<i64> {
        let negative = self.eat(&TokenKind::Minus);
        match self.peek().clone() {
            TokenKind::Int(n) => {
                self.bump();
                Ok(if negative { n.wrapping_neg() } else { n })
            }
            _ => Err(self
                .unexpected("an integer in a range such as `0..20`")
                .with_hint("a bound is `FIELD in LO..HI` (both ends included) or a list of values")),
        }
    }

    fn parse_transition(&mut self) -> PResult<Transition> {
        let start = self.span();
        let optimistic = self.eat_ident("optimistic");
        if !self.eat_ident("transition") {
            return Err(self.unexpected("`transition` after `optimistic`"));
        }
        let name = self.expect_new_name("a transition name")?;
        self.skip_newlines();
        let open = self.expect(TokenKind::LBrace, "after the transition name")?;
        self.skip_newlines();
        if !self.eat_ident("step") {
            if *self.peek() == TokenKind::Eof {
                return Err(unclosed(open, "transition"));
            }
            return Err(Diagnostic::error(self.span(), "a transition needs a `step` block")
                .with_label(format!("found {}", self.peek().describe()))
                .with_hint(format!("write `transition {} {{ step {{ ... }} }}`", name.name)));
        }
        self.skip_newlines();
        let step = self.parse_block()?;
        self.skip_newlines();
        if *self.peek() == TokenKind::Eof {
            return Err(unclosed(open, "transition"));
        }
        let end = self.expect(TokenKind::RBrace, "to close the transition")?;
        Ok(Transition { name, optimistic, step, span: start.to(end) })
    }

    // ------------------------------------------------------------ statements

    fn parse_block(&mut self) -> PResult<Block> {
        let open = self.expect(TokenKind::LBrace, "to open a block")?;
        self.enter()?;
        let mut stmts = Vec::new();
        loop {
            self.skip_newlines();
            match self.peek() {
                TokenKind::RBrace => break,
                TokenKind::Eof => return Err(unclosed(open, "block")),
                _ => {}
            }
            let stmt = self.parse_stmt()?;
            stmts.push(stmt);
            self.expect_end_of_line("the statement")?;
        }
        self.leave();
        let close = self.bump().span;
        Ok(Block { stmts, span: open.to(close) })
    }

    fn parse_stmt(&mut self) -> PResult<Stmt> {
        let start = self.span();
        let word = match self.peek() {
            TokenKind::Ident(w) => w.clone(),
            _ => {
                return Err(self
                    .unexpected("a statement")
                    .with_hint("statements are `let`, assignments, `if` and `emit`"))
            }
        };
        match word.as_str() {
            "let" => {
                self.bump();
                let name = self.expect_new_name("a name after `let`")?;
                let ty = if self.eat(&TokenKind::Colon) { Some(self.parse_type()?) } else { None };
                if !self.eat(&TokenKind::Assign) {
                    return Err(self.unexpected(&format!("`=` and a value for `{}`", name.name)));
                }
                let value = self.parse_expr()?;
                let span = start.to(value.span);
                Ok(Stmt { kind: StmtKind::Let { name, ty, value }, span })
            }
            "if" => self.parse_if(),
            "emit" => {
                self.bump();
                let adapter = self.expect_ident("an adapter name after `emit`")?;
                if !self.eat(&TokenKind::Dot) {
                    return Err(self.unexpected(&format!("`.` and an action after `{}`", adapter.name)).with_hint(
                        format!("an intent names an adapter and an action: `emit {}.Action(...)`", adapter.name),
                    ));
                }
                let action = self.expect_ident("an action name")?;
                let mut end = action.span;
                let args = if *self.peek() == TokenKind::LParen {
                    let (args, close) = self.parse_args()?;
                    end = close;
                    args
                } else {
                    Vec::new()
                };
                Ok(Stmt { kind: StmtKind::Emit { adapter, action, args }, span: start.to(end) })
            }
            "else" => Err(Diagnostic::error(self.span(), "`else` without an `if`")
                .with_hint("`else` follows the `}` of an `if` block")),
            _ => {
                let target = self.expect_ident("a statement")?;
                let op_span = self.span();
                let op = match self.peek() {
                    TokenKind::Assign => AssignOp::Set,
                    TokenKind::PlusAssign => AssignOp::Add,
                    TokenKind::MinusAssign => AssignOp::Sub,
                    TokenKind::EqEq => {
                        return Err(Diagnostic::error(op_span, "`==` compares; use `=` to assign")
                            .with_hint(format!("write `{} = ...`", target.name)))
                    }
                    _ => {
                        return Err(self.unexpected(&format!("`=`, `+=` or `-=` after `{}`", target.name)).with_hint(
                            "a statement is `let`, an assignment, `if` or `emit`; a bare expression does nothing",
                        ))
                    }
                };
                self.bump();
                let value = self.parse_expr()?;
                let span = start.to(value.span);
                Ok(Stmt { kind: StmtKind::Assign { target, op, op_span, value }, span })
            }
        }
    }

    fn parse_if(&mut self) -> PResult<Stmt> {
        let start = self.bump().span;
        self.enter()?;
        let cond = self.parse_expr()?;
        if *self.peek() == TokenKind::Assign {
            return Err(Diagnostic::error(self.span(), "`=` is assignment; use `==` to compare")
                .with_label("in this condition"));
        }
        if *self.peek() != TokenKind::LBrace {
            return Err(self.unexpected("`{` after the `if` condition"));
        }
        let then_block = self.parse_block()?;
        let mut end = then_block.span;
        let else_block = if matches!(self.peek_past_newlines(), TokenKind::Ident(w) if w == "else") {
            self.skip_newlines();
            self.bump();
            if self.peek_ident("if") {
                let nested = self.parse_if()?;
                let span = nested.span;
                end = span;
                Some(Block { stmts: vec![nested], span })
            } else {
                let b = self.parse_block()?;
                end = b.span;
                Some(b)
            }
        } else {
            None
        };
        self.leave();
        Ok(Stmt { kind: StmtKind::If { cond, then_block, else_block }, span: start.to(end) })
    }

    fn parse_args(&mut self) -> PResult<(Vec<Expr>, Span)> {
        let open = self.expect(TokenKind::LParen, "")?;
        let mut args = Vec::new();
        loop {
            self.skip_newlines_in_brackets();
            if *self.peek() == TokenKind::RParen {
                break;
            }
            if *self.peek() == TokenKind::Eof {
                return Err(unclosed(open, "argument list"));
            }
            args.push(self.parse_expr_in_brackets()?);
            self.skip_newlines_in_brackets();
            if !self.eat(&TokenKind::Comma) {
                break;
            }
        }
        self.skip_newlines_in_brackets();
        if *self.peek() == TokenKind::Eof {
            return Err(unclosed(open, "argument list"));
        }
        let close = self.expect(TokenKind::RParen, "to close the arguments")?;
        Ok((args, close))
    }

    fn skip_newlines_in_brackets(&mut self) {
        while *self.peek() == TokenKind::Newline {
            self.bump();
        }
    }

    /// Inside `()` and `[]` newlines mean nothing.
    fn parse_expr_in_brackets(&mut self) -> PResult<Expr> {
        self.skip_newlines_in_brackets();
        let e = self.parse_expr()?;
        self.skip_newlines_in_brackets();
        Ok(e)
    }

    // ------------------------------------------------------------ expressions

    pub(crate) fn parse_expr(&mut self) -> PResult<Expr> {
        self.enter()?;
        let e = self.parse_binary(0);
        self.leave();
        e
    }

    /// Precedence climbing. Levels: 1 `||`, 2 `&&`, 3 equality, 4 ordering, 5 additive, 6 multiplicative.
    fn parse_binary(&mut self, min_level: u8) -> PResult<Expr> {
        let mut lhs = self.parse_unary()?;
        let mut last_level_op: Option<(u8, Span)> = None;
        loop {
            // A binary operator at the start of the next line continues the expression.
            if *self.peek() == TokenKind::Newline {
                if let Some((op, _)) = binary_op(self.peek_past_newlines()) {
                    if op != BinaryOp::Sub {
                        while *self.peek() == TokenKind::Newline {
                            self.bump();
                        }
                    }
                }
            }
            let Some((op, level)) = binary_op(self.peek()) else {
                break;
            };
            if level < min_level.max(1) {
                break;
            }
            let op_span = self.bump().span;
            // Equality and ordering do not chain: `a == b == c` is almost always a mistake.
            if level == 3 || level == 4 {
                if let Some((l, first)) = last_level_op {
                    if l == level {
                        return Err(Diagnostic::error(op_span, "comparison operators cannot be chained")
                            .with_note(first, "the first comparison is here")
                            .with_hint("add parentheses, e.g. `(a == b) == c`, or combine with `&&`"));
                    }
                }
            }
            while *self.peek() == TokenKind::Newline {
                self.bump();
            }
            let rhs = self.parse_binary(level + 1)?;
            let span = lhs.span.to(rhs.span);
            lhs = Expr { kind: ExprKind::Binary { op, op_span, lhs: Box::new(lhs), rhs: Box::new(rhs) }, span };
            last_level_op = Some((level, op_span));
        }
        Ok(lhs)
    }

    fn parse_unary(&mut self) -> PResult<Expr> {
        let op = match self.peek() {
            TokenKind::Bang => UnaryOp::Not,
            TokenKind::Minus => UnaryOp::Neg,
            _ => return self.parse_postfix(),
        };
        let op_span = self.bump().span;
        self.enter()?;
        let operand = self.parse_unary()?;
        self.leave();
        // Fold `-<literal>` so that the smallest int can be written.
        if let (UnaryOp::Neg, ExprKind::Int(v)) = (op, &operand.kind) {
            if let Some(neg) = v.checked_neg() {
                let span = op_span.to(operand.span);
                return Ok(Expr { kind: ExprKind::Int(neg), span });
            }
        }
        let span = op_span.to(operand.span);
        Ok(Expr { kind: ExprKind::Unary { op, op_span, operand: Box::new(operand) }, span })
    }

    fn parse_postfix(&mut self) -> PResult<Expr> {
        let mut e = self.parse_primary()?;
        loop {
            // `.member` at the start of the next line continues a chain.
            if *self.peek() == TokenKind::Newline && *self.peek_past_newlines() == TokenKind::Dot {
                while *self.peek() == TokenKind::Newline {
                    self.bump();
                }
            }
            match self.peek() {
                TokenKind::Dot => {
                    self.bump();
                    let name = self.expect_ident("a member name after `.`")?;
                    let (args, end) = if *self.peek() == TokenKind::LParen {
                        let (a, close) = self.parse_args()?;
                        (Some(a), close)
                    } else {
                        (None, name.span)
                    };
                    let span = e.span.to(end);
                    e = Expr { kind: ExprKind::Member { receiver: Box::new(e), name, args }, span };
                }
                TokenKind::LBracket => {
                    let open = self.bump().span;
                    let index = self.parse_expr_in_brackets()?;
                    if *self.peek() == TokenKind::Eof {
                        return Err(unclosed(open, "index"));
                    }
                    let close = self.expect(TokenKind::RBracket, "to close the index")?;
                    let span = e.span.to(close);
                    e = Expr { kind: ExprKind::Index { receiver: Box::new(e), index: Box::new(index) }, span };
                }
                _ => return Ok(e),
            }
        }
    }

    fn parse_primary(&mut self) -> PResult<Expr> {
        let span = self.span();
        match self.peek().clone() {
            TokenKind::Int(v) => {
                self.bump();
                Ok(Expr { kind: ExprKind::Int(v), span })
            }
            TokenKind::Str(s) => {
                self.bump();
                Ok(Expr { kind: ExprKind::Str(s), span })
            }
            TokenKind::Ident(w) if w == "true" || w == "false" => {
                self.bump();
                Ok(Expr { kind: ExprKind::Bool(w == "true"), span })
            }
            TokenKind::Ident(w) if w == "set" && *self.peek_at(1) == TokenKind::LBracket => {
                self.bump();
                let (kind, close) = self.parse_bracketed()?;
                match kind {
                    ExprKind::List(items) => Ok(Expr { kind: ExprKind::SetLit(items), span: span.to(close) }),
                    _ => Err(Diagnostic::error(span.to(close), "a set literal holds values, not `key: value` pairs")
                        .with_hint("write `set[1, 2]`, or `[\"k\": v]` for a map")),
                }
            }
            TokenKind::Ident(w) => {
                if RESERVED.contains(&w.as_str()) {
                    return Err(Diagnostic::error(span, format!("expected an expression, found keyword `{w}`"))
                        .with_hint("a statement cannot appear where a value is expected"));
                }
                self.bump();
                Ok(Expr { kind: ExprKind::Name(Ident { name: w, span }), span })
            }
            TokenKind::LParen => {
                self.bump();
                let inner = self.parse_expr_in_brackets()?;
                if *self.peek() == TokenKind::Eof || *self.peek() == TokenKind::RBrace {
                    return Err(unclosed(span, "parenthesis"));
                }
                let close = self.expect(TokenKind::RParen, "to close the parenthesis")?;
                Ok(Expr { kind: ExprKind::Paren(Box::new(inner)), span: span.to(close) })
            }
            TokenKind::LBracket => {
                let (kind, close) = self.parse_bracketed()?;
                Ok(Expr { kind, span: span.to(close) })
            }
            TokenKind::Assign => Err(Diagnostic::error(span, "`=` is assignment; use `==` to compare")),
            _ => Err(self.unexpected("an expression")),
        }
    }

    /// `[a, b]`, `[]`, `[:]` or `["k": v, ...]`, starting at `[`.
    fn parse_bracketed(&mut self) -> PResult<(ExprKind, Span)> {
        let open = self.expect(TokenKind::LBracket, "")?;
        self.enter()?;
        self.skip_newlines_in_brackets();
        if *self.peek() == TokenKind::Colon {
            self.bump();
            self.skip_newlines_in_brackets();
            let close = self.expect(TokenKind::RBracket, "after `[:` (the empty map)")?;
            self.leave();
            return Ok((ExprKind::MapLit(Vec::new()), close));
        }
        let mut items = Vec::new();
        let mut entries = Vec::new();
        let mut is_map = None;
        loop {
            self.skip_newlines_in_brackets();
            if *self.peek() == TokenKind::RBracket {
                break;
            }
            if *self.peek() == TokenKind::Eof {
                return Err(unclosed(open, "list"));
            }
            let first = self.parse_expr_in_brackets()?;
            let this_is_map = *self.peek() == TokenKind::Colon;
            match is_map {
                None => is_map = Some(this_is_map),
                Some(m) if m != this_is_map => {
                    return Err(Diagnostic::error(first.span, "a literal mixes list elements and map entries")
                        .with_hint("write `[a, b]` for a list or `[\"k\": v]` for a map"));
                }
                _ => {}
            }
            if this_is_map {
                self.bump();
                let value = self.parse_expr_in_brackets()?;
                entries.push((first, value));
            } else {
                items.push(first);
            }
            self.skip_newlines_in_brackets();
            if !self.eat(&TokenKind::Comma) {
                break;
            }
        }
        self.skip_newlines_in_brackets();
        if *self.peek() == TokenKind::Eof {
            return Err(unclosed(open, "list"));
        }
        let close = self.expect(TokenKind::RBracket, "to close the list")?;
        self.leave();
        Ok((if is_map == Some(true) { ExprKind::MapLit(entries) } else { ExprKind::List(items) }, close))
    }

    // ------------------------------------------------------------ scenarios

    fn parse_scenario(&mut self) -> PResult<Scenario> {
        let start = self.bump().span;
        let (name, name_span) = match self.peek().clone() {
            TokenKind::Str(s) => (s, self.bump().span),
            _ => {
                return Err(self
                    .unexpected("the scenario's name in quotes")
                    .with_hint("write `scenario \"port 22 is closed\" { ... }`"))
            }
        };
        self.skip_newlines();
        let open = self.expect(TokenKind::LBrace, "to open the scenario")?;
        let mut steps = Vec::new();
        loop {
            self.skip_newlines();
            match self.peek() {
                TokenKind::RBrace => break,
                TokenKind::Eof => return Err(unclosed(open, "scenario")),
                _ => {}
            }
            steps.push(self.parse_step()?);
            self.expect_end_of_line("the step")?;
        }
        let end = self.bump().span;
        Ok(Scenario { name, name_span, steps, span: start.to(end) })
    }

    fn parse_step(&mut self) -> PResult<Step> {
        let start = self.span();
        let word = match self.peek() {
            TokenKind::Ident(w) => w.clone(),
            _ => return Err(self.unexpected("a scenario step").with_hint(STEP_HINT)),
        };
        self.bump();
        let kind = match word.as_str() {
            "domain" => StepKind::Domain(self.expect_ident("a domain name")?),
            "given" => StepKind::Given(self.parse_field_values()?),
            "observe" => StepKind::Observe(self.parse_field_values()?),
            "simultaneously" => {
                let open = self.expect(TokenKind::LBrace, "after `simultaneously`")?;
                let mut messages = Vec::new();
                loop {
                    self.skip_newlines();
                    match self.peek() {
                        TokenKind::RBrace => break,
                        TokenKind::Eof => return Err(unclosed(open, "`simultaneously` block")),
                        _ => {}
                    }
                    if !self.eat_ident("observe") {
                        return Err(self.unexpected("`observe` inside `simultaneously`"));
                    }
                    messages.push(self.parse_field_values()?);
                    self.expect_end_of_line("the observation")?;
                }
                self.bump();
                StepKind::Simultaneously(messages)
            }
            "fail" => {
                let (adapter, action) = self.parse_adapter_action()?;
                let times = self.parse_times()?.unwrap_or(1);
                StepKind::Fail { adapter, action, times }
            }
            "advance" => match self.peek().clone() {
                TokenKind::Duration(ms) => {
                    self.bump();
                    StepKind::Advance { ms }
                }
                TokenKind::Int(_) => {
                    return Err(Diagnostic::error(self.span(), "a duration needs a unit")
                        .with_hint("write `500ms`, `10s`, `5m` or `1h`"))
                }
                _ => return Err(self.unexpected("a duration such as `10s`")),
            },
            "hold" => {
                if !self.eat_ident("intents") {
                    return Err(self
                        .unexpected("`intents` after `hold`")
                        .with_hint("write `hold intents`: intents then stay in flight until `answer`"));
                }
                StepKind::HoldIntents
            }
            "answer" => {
                let newest = if self.eat_ident("newest") {
                    true
                } else if self.eat_ident("oldest") {
                    false
                } else {
                    return Err(self
                        .unexpected("`oldest` or `newest` after `answer`")
                        .with_hint("write `answer oldest`, `answer newest`, or either followed by `failed`"));
                };
                let ok = !self.eat_ident("failed");
                StepKind::Answer { newest, ok }
            }
            "watch" => {
                let mut fields = vec![self.expect_ident("a field name")?];
                while self.eat(&TokenKind::Comma) {
                    fields.push(self.expect_ident("a field name")?);
                }
                StepKind::Watch(fields)
            }
            "expect" => StepKind::Expect(self.parse_expect()?),
            _ => {
                return Err(Diagnostic::error(start, format!("unknown scenario step `{word}`")).with_hint(STEP_HINT));
            }
        };
        Ok(Step { kind, span: start.to(self.prev_span()) })
    }

    fn parse_field_values(&mut self) -> PResult<Vec<FieldValue>> {
        let mut out = Vec::new();
        loop {
            let field = self.expect_ident("a field name")?;
            let relative = if self.eat(&TokenKind::Assign) {
                None
            } else if self.eat(&TokenKind::PlusAssign) {
                Some(false)
            } else if self.eat(&TokenKind::MinusAssign) {
                Some(true)
            } else {
                return Err(self.unexpected(&format!("`=` after `{}`", field.name)));
            };
            let value = self.parse_expr()?;
            out.push(FieldValue { field, value, relative });
            if !self.eat(&TokenKind::Comma) {
                return Ok(out);
            }
        }
    }

    fn parse_adapter_action(&mut self) -> PResult<(Ident, Ident)> {
        let adapter = self.expect_ident("an adapter name")?;
        if !self.eat(&TokenKind::Dot) {
            return Err(self.unexpected(&format!("`.` and an action after `{}`", adapter.name)));
        }
        let action = self.expect_ident("an action name")?;
        Ok((adapter, action))
    }

    /// `N times` (or `1 time`), if present.
    fn parse_times(&mut self) -> PResult<Option<u32>> {
        let TokenKind::Int(n) = *self.peek() else {
            return Ok(None);
        };
        let span = self.bump().span;
        if !(self.eat_ident("times") || self.eat_ident("time")) {
            return Err(self.unexpected(&format!("`times` after `{n}`")));
        }
        u32::try_from(n).map(Some).map_err(|_| Diagnostic::error(span, "the count must be between 0 and 4294967295"))
    }

    fn at_step_end(&self) -> bool {
        matches!(self.peek(), TokenKind::Newline | TokenKind::Semi | TokenKind::RBrace | TokenKind::Eof)
    }

    fn parse_expect(&mut self) -> PResult<Expect> {
        // Keywords only when they stand in their own shape; otherwise it is an expression.
        let word = match self.peek() {
            TokenKind::Ident(w) => w.clone(),
            _ => String::new(),
        };
        let next = self.peek_at(1).clone();
        let ends = matches!(next, TokenKind::Newline | TokenKind::Semi | TokenKind::RBrace | TokenKind::Eof);
        match word.as_str() {
            "stable" if ends => {
                self.bump();
                Ok(Expect::Stable)
            }
            "stable" if matches!(&next, TokenKind::Ident(w) if w == "within") => {
                self.bump();
                self.bump();
                let TokenKind::Int(n) = *self.peek() else {
                    return Err(self.unexpected("a number of ticks after `within`"));
                };
                let span = self.bump().span;
                if !(self.eat_ident("ticks") || self.eat_ident("tick")) {
                    return Err(self.unexpected("`ticks` after the number"));
                }
                let ticks = u32::try_from(n)
                    .map_err(|_| Diagnostic::error(span, "the tick count must be between 0 and 4294967295"))?;
                Ok(Expect::StableWithin { ticks })
            }
            "stuck" if ends => {
                self.bump();
                Ok(Expect::Stuck)
            }
            "livelock" if ends => {
                self.bump();
                Ok(Expect::Livelock)
            }
            "waiting" if ends => {
                self.bump();
                Ok(Expect::Waiting)
            }
            "degraded" if ends => {
                self.bump();
                Ok(Expect::Degraded)
            }
            "emitted" if matches!(next, TokenKind::Ident(_)) => {
                self.bump();
                let (adapter, action) = self.parse_adapter_action()?;
                let args = if *self.peek() == TokenKind::LParen { Some(self.parse_args()?.0) } else { None };
                let times = self.parse_times()?;
                Ok(Expect::Emitted { adapter, action, args, times })
            }
            "not" if matches!(&next, TokenKind::Ident(w) if w == "emitted") => {
                self.bump();
                self.bump();
                let (adapter, action) = self.parse_adapter_action()?;
                let args = if *self.peek() == TokenKind::LParen { Some(self.parse_args()?.0) } else { None };
                Ok(Expect::NotEmitted { adapter, action, args })
            }
            "faulted" if matches!(next, TokenKind::Ident(_)) => {
                self.bump();
                let transition = self.expect_ident("a transition name")?;
                let times = self.parse_times()?;
                Ok(Expect::Faulted { transition, times })
            }
            "fired" if matches!(next, TokenKind::Ident(_)) => {
                self.bump();
                let transition = self.expect_ident("a transition name")?;
                let times = self.parse_times()?;
                Ok(Expect::Fired { transition, times })
            }
            _ => {
                if self.at_step_end() {
                    return Err(self.unexpected("what to expect").with_hint(
                        "`expect stable`, `expect stuck`, `expect emitted A.B(...)`, `expect fired T` or a condition",
                    ));
                }
                Ok(Expect::Holds(self.parse_expr()?))
            }
        }
    }
}

const STEP_HINT: &str = "scenario steps are `domain`, `given`, `observe`, `simultaneously`, `fail`, `advance`, \
     `hold intents`, `answer`, `watch` and `expect`";

fn binary_op(k: &TokenKind) -> Option<(BinaryOp, u8)> {
    Some(match k {
        TokenKind::OrOr => (BinaryOp::Or, 1),
        TokenKind::AndAnd => (BinaryOp::And, 2),
        TokenKind::EqEq => (BinaryOp::Eq, 3),
        TokenKind::NotEq => (BinaryOp::Ne, 3),
        TokenKind::Lt => (BinaryOp::Lt, 4),
        TokenKind::Le => (BinaryOp::Le, 4),
        TokenKind::Gt => (BinaryOp::Gt, 4),
        TokenKind::Ge => (BinaryOp::Ge, 4),
        TokenKind::Plus => (BinaryOp::Add, 5),
        TokenKind::Minus => (BinaryOp::Sub, 5),
        TokenKind::Star => (BinaryOp::Mul, 6),
        TokenKind::Slash => (BinaryOp::Div, 6),
        TokenKind::Percent => (BinaryOp::Rem, 6),
        _ => return None,
    })
}

fn unclosed(open: Span, what: &str) -> Diagnostic {
    Diagnostic::error(open, format!("unexpected end of file: this {what} is never closed"))
        .with_label("opened here")
        .with_hint("add the missing closing bracket")
}
