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
        self.render_styled(sources, false)
    }

    /// [`Diagnostic::render`], with ANSI colors when `color` (for a terminal): the same
    /// text, with escape codes around the severity, the gutter, the carets and the notes.
    pub fn render_styled(&self, sources: &SourceMap, color: bool) -> String {
        let st = Style { on: color };
        let mut out = String::new();
        let file = sources.file(self.span.file);
        let (line, col) = file.line_col(self.span.start as usize);
        let (sev, sev_color) = match self.severity {
            Severity::Error => ("error", RED),
            Severity::Warning => ("warning", YELLOW),
        };
        let _ = writeln!(
            out,
            "{}:{}:{}: {}{}",
            file.name,
            line,
            col,
            st.paint(&format!("{sev}:"), sev_color),
            st.paint(&format!(" {}", self.message), BOLD)
        );
        render_snippet(&mut out, sources, self.span, self.label.as_deref(), st, sev_color);
        let gutter = line.to_string().len();
        for (span, note) in &self.notes {
            let f = sources.file(span.file);
            let (l, c) = f.line_col(span.start as usize);
            let _ = writeln!(out, "{:gutter$} {} {}:{}:{}: {}", "", st.paint("= note:", BOLD), f.name, l, c, note);
        }
        if let Some(hint) = &self.hint {
            let _ = writeln!(out, "{:gutter$} {} {hint}", "", st.paint("= hint:", BOLD));
        }
        out
    }
}

const RED: &str = "\x1b[1;31m";
const YELLOW: &str = "\x1b[1;33m";
const BLUE: &str = "\x1b[1;34m";
const BOLD: &str = "\x1b[1m";
const RESET: &str = "\x1b[0m";

/// ANSI colors, or none: the text between the codes is the same either way.
#[derive(Clone, Copy)]
struct Style {
    on: bool,
}

impl Style {
    fn paint(self, text: &str, code: &str) -> String {
        if self.on {
            format!("{code}{text}{RESET}")
        } else {
            text.to_string()
        }
    }
}

/// Columns a character takes on a terminal: 2 for CJK and most emoji, 0 for combining
/// marks, 1 otherwise. Tabs are copied into the padding instead, so they line up
/// whatever the terminal's tab stops.
fn display_width(c: char) -> usize {
    unicode_width::UnicodeWidthChar::width(c).unwrap_or(0)
}

fn render_snippet(out: &mut String, sources: &SourceMap, span: Span, label: Option<&str>, st: Style, color: &str) {
    let file = sources.file(span.file);
    let (line, col) = file.line_col(span.start as usize);
    let text = file.line_text(line);
    let gutter = line.to_string().len();
    // Carets cover the span, clipped to the first line; an empty span (end of
    // input, a missing token) still gets one caret. Both the padding and the carets
    // are measured in display columns, so that a wide character before or inside the
    // span does not shift the carets off it.
    let (end_line, end_col) = file.line_col(span.end as usize);
    let end_col = if end_line == line { end_col } else { text.chars().count() + 1 };
    let n = end_col.saturating_sub(col);
    let covered: usize = text.chars().skip(col - 1).take(n).map(display_width).sum();
    // A span reaching past the shown text (a `\r` trimmed off) keeps one caret per character.
    let beyond = n.saturating_sub(text.chars().count().saturating_sub(col - 1));
    let width = (covered + beyond).max(1);
    let pad: String = text
        .chars()
        .take(col - 1)
        .flat_map(|c| {
            let (fill, n) = if c == '\t' { ('\t', 1) } else { (' ', display_width(c)) };
            std::iter::repeat_n(fill, n)
        })
        .collect();
    let bar = st.paint("|", BLUE);
    let _ = writeln!(out, "{:gutter$} {bar}", "");
    let _ = writeln!(out, "{} {bar} {text}", st.paint(&line.to_string(), BLUE));
    let carets = st.paint(&"^".repeat(width), color);
    match label {
        Some(l) => {
            let _ = writeln!(out, "{:gutter$} {bar} {pad}{carets} {}", "", st.paint(l, color));
        }
        None => {
            let _ = writeln!(out, "{:gutter$} {bar} {pad}{carets}", "");
        }
    }
}

/// Renders a list of diagnostics, one after another.
pub fn render_all(diags: &[Diagnostic], sources: &SourceMap) -> String {
    render_all_styled(diags, sources, false)
}

/// [`render_all`], colored when `color`.
pub fn render_all_styled(diags: &[Diagnostic], sources: &SourceMap, color: bool) -> String {
    diags.iter().map(|d| d.render_styled(sources, color)).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render_at(text: &str, start: usize, end: usize) -> Vec<String> {
        let mut sources = SourceMap::new();
        let file = sources.add("t.ved", text.to_string());
        let span = Span { file, start: start as u32, end: end as u32 };
        Diagnostic::error(span, "m").render(&sources).lines().map(str::to_string).collect()
    }

    #[test]
    fn carets_count_display_columns_of_wide_characters_and_keep_tabs() {
        let text = "\tx = \"日本\" + 🎉y\n";
        // The span is `日本`: two characters, four columns.
        let start = text.find('日').unwrap();
        let lines = render_at(text, start, start + "日本".len());
        assert_eq!(lines[0], "t.ved:1:7: error: m");
        assert_eq!(lines[3], "  | \t     ^^^^");
        // After an emoji: `y` is one column further right than its character count says.
        let y = text.find('y').unwrap();
        let lines = render_at(text, y, y + 1);
        // `x = "` 5, `日本` 4, `" + ` 4, `🎉` 2 columns.
        assert_eq!(lines[3], format!("  | \t{}^", " ".repeat(5 + 4 + 4 + 2)));
    }

    #[test]
    fn ascii_rendering_is_unchanged_and_color_only_adds_codes() {
        let text = "goal worker == 5\n";
        let mut sources = SourceMap::new();
        let file = sources.add("t.ved", text.to_string());
        let d = Diagnostic::error(Span { file, start: 5, end: 11 }, "unknown").with_label("here").with_hint("h");
        let plain = d.render(&sources);
        assert_eq!(plain, "t.ved:1:6: error: unknown\n  |\n1 | goal worker == 5\n  |      ^^^^^^ here\n  = hint: h\n");
        let colored = d.render_styled(&sources, true);
        assert!(colored.contains("\x1b[1;31m^^^^^^\x1b[0m"), "{colored:?}");
        assert!(!plain.contains('\x1b'));
    }
}
