//! The lexer: source text to tokens, with spans. Newlines are tokens because
//! they end statements; other whitespace is dropped. Comments are not tokens
//! either: [`lex`] drops them, and [`lex_with_comments`] hands them back beside the
//! tokens (for `ved fmt`, which must keep them) without changing what the parser sees.

use crate::diag::Diagnostic;
use crate::span::{FileId, Span};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenKind {
    Ident(String),
    Int(i64),
    Str(String),
    /// `500ms`, `10s`, `5m`, `1h`, in milliseconds.
    Duration(u64),
    Newline,
    LBrace,
    RBrace,
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Colon,
    Semi,
    Dot,
    Assign,
    PlusAssign,
    MinusAssign,
    EqEq,
    NotEq,
    Lt,
    Le,
    Gt,
    Ge,
    Plus,
    Minus,
    Star,
    Slash,
    Percent,
    AndAnd,
    OrOr,
    Bang,
    Eof,
}

impl TokenKind {
    /// How the token is named in messages.
    pub fn describe(&self) -> String {
        match self {
            TokenKind::Ident(s) => format!("identifier `{s}`"),
            TokenKind::Int(i) => format!("number `{i}`"),
            TokenKind::Str(s) => format!("string {s:?}"),
            TokenKind::Duration(ms) => format!("duration `{ms}ms`"),
            TokenKind::Newline => "a newline".to_string(),
            TokenKind::Eof => "end of file".to_string(),
            other => format!("`{}`", other.symbol()),
        }
    }

    pub fn symbol(&self) -> &'static str {
        match self {
            TokenKind::LBrace => "{",
            TokenKind::RBrace => "}",
            TokenKind::LParen => "(",
            TokenKind::RParen => ")",
            TokenKind::LBracket => "[",
            TokenKind::RBracket => "]",
            TokenKind::Comma => ",",
            TokenKind::Colon => ":",
            TokenKind::Semi => ";",
            TokenKind::Dot => ".",
            TokenKind::Assign => "=",
            TokenKind::PlusAssign => "+=",
            TokenKind::MinusAssign => "-=",
            TokenKind::EqEq => "==",
            TokenKind::NotEq => "!=",
            TokenKind::Lt => "<",
            TokenKind::Le => "<=",
            TokenKind::Gt => ">",
            TokenKind::Ge => ">=",
            TokenKind::Plus => "+",
            TokenKind::Minus => "-",
            TokenKind::Star => "*",
            TokenKind::Slash => "/",
            TokenKind::Percent => "%",
            TokenKind::AndAnd => "&&",
            TokenKind::OrOr => "||",
            TokenKind::Bang => "!",
            _ => "",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    pub kind: TokenKind,
    pub span: Span,
}

/// A `//` comment: its span runs from the first `/` to the end of the line, line
/// terminator excluded; `text` is that source text with trailing whitespace (a `\r`)
/// removed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Comment {
    pub span: Span,
    pub text: String,
}

/// Splits `text` into tokens, ending with `Eof`. Stops at the first error.
pub fn lex(file: FileId, text: &str) -> Result<Vec<Token>, Diagnostic> {
    lex_with_comments(file, text).map(|(tokens, _)| tokens)
}

/// As [`lex`], and also returns every comment, in source order. The tokens are
/// exactly those [`lex`] returns: a comment never becomes a token.
pub fn lex_with_comments(file: FileId, text: &str) -> Result<(Vec<Token>, Vec<Comment>), Diagnostic> {
    let bytes = text.as_bytes();
    let mut tokens = Vec::new();
    let mut comments = Vec::new();
    let mut i = 0;
    let sp = |s: usize, e: usize| Span::new(file, s, e);
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        let single = |k: TokenKind| (k, 1usize);
        let (kind, len) = match c {
            b' ' | b'\t' | b'\r' => {
                i += 1;
                continue;
            }
            b'\n' => single(TokenKind::Newline),
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                let body = text[start..i].trim_end();
                comments.push(Comment { span: sp(start, start + body.len()), text: body.to_string() });
                continue;
            }
            b'{' => single(TokenKind::LBrace),
            b'}' => single(TokenKind::RBrace),
            b'(' => single(TokenKind::LParen),
            b')' => single(TokenKind::RParen),
            b'[' => single(TokenKind::LBracket),
            b']' => single(TokenKind::RBracket),
            b',' => single(TokenKind::Comma),
            b':' => single(TokenKind::Colon),
            b';' => single(TokenKind::Semi),
            b'.' => single(TokenKind::Dot),
            b'*' => single(TokenKind::Star),
            b'/' => single(TokenKind::Slash),
            b'%' => single(TokenKind::Percent),
            b'=' if bytes.get(i + 1) == Some(&b'=') => (TokenKind::EqEq, 2),
            b'=' => single(TokenKind::Assign),
            b'!' if bytes.get(i + 1) == Some(&b'=') => (TokenKind::NotEq, 2),
            b'!' => single(TokenKind::Bang),
            b'<' if bytes.get(i + 1) == Some(&b'=') => (TokenKind::Le, 2),
            b'<' => single(TokenKind::Lt),
            b'>' if bytes.get(i + 1) == Some(&b'=') => (TokenKind::Ge, 2),
            b'>' => single(TokenKind::Gt),
            b'+' if bytes.get(i + 1) == Some(&b'=') => (TokenKind::PlusAssign, 2),
            b'+' => single(TokenKind::Plus),
            b'-' if bytes.get(i + 1) == Some(&b'=') => (TokenKind::MinusAssign, 2),
            b'-' => single(TokenKind::Minus),
            b'&' if bytes.get(i + 1) == Some(&b'&') => (TokenKind::AndAnd, 2),
            b'|' if bytes.get(i + 1) == Some(&b'|') => (TokenKind::OrOr, 2),
            b'&' => {
                return Err(Diagnostic::error(sp(i, i + 1), "unexpected `&`")
                    .with_label("a lone `&`")
                    .with_hint("logical and is written `&&`"))
            }
            b'|' => {
                return Err(Diagnostic::error(sp(i, i + 1), "unexpected `|`")
                    .with_label("a lone `|`")
                    .with_hint("logical or is written `||`"))
            }
            b'"' => {
                let (s, end) = lex_string(file, text, i)?;
                tokens.push(Token { kind: TokenKind::Str(s), span: sp(start, end) });
                i = end;
                continue;
            }
            b'0'..=b'9' => {
                let mut j = i;
                while j < bytes.len() && bytes[j].is_ascii_digit() {
                    j += 1;
                }
                let digits = &text[i..j];
                let value: i64 = digits.parse().map_err(|_| {
                    Diagnostic::error(sp(i, j), "integer literal is too large")
                        .with_label("does not fit in 64 bits")
                        .with_hint("`int` holds values from -9223372036854775808 to 9223372036854775807")
                })?;
                // A unit glued to the number makes a duration: 500ms, 10s, 5m, 1h.
                let mut k = j;
                while k < bytes.len() && (bytes[k].is_ascii_alphanumeric() || bytes[k] == b'_') {
                    k += 1;
                }
                if k > j {
                    let unit = &text[j..k];
                    let factor: u64 = match unit {
                        "ms" => 1,
                        "s" => 1_000,
                        "m" => 60_000,
                        "h" => 3_600_000,
                        _ => {
                            return Err(Diagnostic::error(sp(j, k), format!("unknown suffix `{unit}` after a number"))
                                .with_hint("durations are written `500ms`, `10s`, `5m` or `1h`; put a space between a number and a name"))
                        }
                    };
                    let ms = (value as u64).checked_mul(factor).ok_or_else(|| {
                        Diagnostic::error(sp(i, k), "duration is too long").with_hint("use a smaller duration")
                    })?;
                    tokens.push(Token { kind: TokenKind::Duration(ms), span: sp(i, k) });
                    i = k;
                    continue;
                }
                tokens.push(Token { kind: TokenKind::Int(value), span: sp(i, j) });
                i = j;
                continue;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let mut j = i;
                while j < bytes.len() && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_') {
                    j += 1;
                }
                tokens.push(Token { kind: TokenKind::Ident(text[i..j].to_string()), span: sp(i, j) });
                i = j;
                continue;
            }
            _ => {
                let ch = text[i..].chars().next().unwrap_or('?');
                let end = i + ch.len_utf8();
                let hint = match ch {
                    '#' => "comments start with `//`",
                    '\'' => "strings are written in double quotes",
                    '@' | '$' | '?' | '~' | '^' | '`' | '\\' => "this character has no meaning in Ved",
                    _ if !ch.is_ascii() => {
                        "identifiers are ASCII letters, digits and `_`; other text belongs in a string"
                    }
                    _ => "remove it",
                };
                return Err(Diagnostic::error(sp(i, end), format!("unexpected character `{}`", ch.escape_default()))
                    .with_hint(hint));
            }
        };
        tokens.push(Token { kind, span: sp(start, start + len) });
        i = start + len;
    }
    tokens.push(Token { kind: TokenKind::Eof, span: sp(bytes.len(), bytes.len()) });
    Ok((tokens, comments))
}

/// Lexes a string starting at the opening quote; returns its value and the end offset.
fn lex_string(file: FileId, text: &str, open: usize) -> Result<(String, usize), Diagnostic> {
    let bytes = text.as_bytes();
    let mut out = String::new();
    let mut i = open + 1;
    loop {
        match bytes.get(i) {
            None | Some(b'\n') => {
                return Err(Diagnostic::error(Span::new(file, open, open + 1), "unterminated string")
                    .with_label("this string is never closed")
                    .with_hint("close it with `\"` on the same line"));
            }
            Some(b'"') => return Ok((out, i + 1)),
            Some(b'\\') => {
                let esc = match bytes.get(i + 1) {
                    Some(b'"') => '"',
                    Some(b'\\') => '\\',
                    Some(b'n') => '\n',
                    Some(b't') => '\t',
                    _ => {
                        let len = text[i + 1..].chars().next().map(char::len_utf8).unwrap_or(0);
                        return Err(Diagnostic::error(Span::new(file, i, i + 1 + len), "unknown escape in string")
                            .with_hint("the escapes are `\\\"`, `\\\\`, `\\n` and `\\t`"));
                    }
                };
                out.push(esc);
                i += 2;
            }
            Some(_) => {
                let ch = text[i..].chars().next().unwrap_or('\u{fffd}');
                out.push(ch);
                i += ch.len_utf8();
            }
        }
    }
}
