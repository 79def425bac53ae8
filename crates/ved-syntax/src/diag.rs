//! Diagnostics are plain values; rendering them is a separate step.
//!
//! The rendered form is fixed by the CLI contract:
//!
//! ```text
//! examples/bad.ved:3:12: error: unknown field `worker`
//!   |
//! 3 |   goal worker == 5
//!   |        ^^^^^^ not a field of `WorkerPool`
//!   = hint: did you mean `workers`?
//! ```

use crate::span::{SourceMap, Span};
use std::fmt::Write as _;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub message: String,
    pub span: Span,
    /// Short text printed after the carets.
    pub label: Option<String>,
    /// What the user can do about it.
    pub hint: Option<String>,
    /// Secondary locations, e.g. "first defined here".
    pub notes: Vec<(Span, String)>,
}

impl Diagnostic {
    pub fn error(span: Span, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            severity: Severity::Error,
            message: message.into(),
            span,
            label: None,
            hint: None,
            notes: Vec::new(),
        }
    }

    pub fn warning(span: Span, message: impl Into<String>) -> Diagnostic {
        Diagnostic { severity: Severity::Warning, ..Diagnostic::error(span, message) }
    }

    pub fn with_label(mut self, label: impl Into<String>) -> Diagnostic {
        self.label = Some(label.into());
        self
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Diagnostic {
        self.hint = Some(hint.into());
        self
    }

    pub fn with_note(mut self, span: Span, note: impl Into<String>) -> Diagnostic {
        self.notes.push((span, note.into()));
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    /// Renders the diagnostic as `file:line:col: severity: message`, the source
    /// line with carets under the span, then the label, notes and hint.
    pub fn render(&self, sources: &SourceMap) -> String {
        let mut out = String::new();
        let file = sources.file(self.span.file);
        let (line, col) = file.line_col(self.span.start as usize);
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        let _ = writeln!(out, "{}:{}:{}: {}: {}", file.name, line, col, sev, self.message);
        render_snippet(&mut out, sources, self.span, self.label.as_deref());
        let gutter = line.to_string().len();
        for (span, note) in &self.notes {
            let f = sources.file(span.file);
            let (l, c) = f.line_col(span.start as usize);
            let _ = writeln!(out, "{:gutter$} = note: {}:{}:{}: {}", "", f.name, l, c, note);
        }
        if let Some(hint) = &self.hint {
            let _ = writeln!(out, "{:gutter$} = hint: {hint}", "");
        }
        out
    }
}

fn render_snippet(out: &mut String, sources: &SourceMap, span: Span, label: Option<&str>) {
    let file = sources.file(span.file);
    let (line, col) = file.line_col(span.start as usize);
    let text = file.line_text(line);
    let gutter = line.to_string().len();
    // Carets cover the span, clipped to the first line; an empty span (end of
    // input, a missing token) still gets one caret.
    let line_chars = text.chars().count();
    let (end_line, end_col) = file.line_col(span.end as usize);
    let width = if end_line == line { end_col.saturating_sub(col) } else { line_chars + 1 - col };
    let width = width.max(1);
    let pad: String = text.chars().take(col - 1).map(|c| if c == '\t' { '\t' } else { ' ' }).collect();
    let _ = writeln!(out, "{:gutter$} |", "");
    let _ = writeln!(out, "{line} | {text}");
    let carets = "^".repeat(width);
    match label {
        Some(l) => {
            let _ = writeln!(out, "{:gutter$} | {pad}{carets} {l}", "");
        }
        None => {
            let _ = writeln!(out, "{:gutter$} | {pad}{carets}", "");
        }
    }
}

/// Renders a list of diagnostics, one after another.
pub fn render_all(diags: &[Diagnostic], sources: &SourceMap) -> String {
    diags.iter().map(|d| d.render(sources)).collect::<Vec<_>>().join("\n")
}
