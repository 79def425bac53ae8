//! How `check`, `test` and `verify` report: text for people (the default, unchanged), or
//! JSON for tools (`--format json`); and whether diagnostics on stderr are colored.

use serde_json::{json, Value as Json};
use std::io::IsTerminal;
use ved_syntax::{Diagnostic, Severity, SourceMap};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    #[default]
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ColorChoice {
    /// Color when stderr is a terminal, unless `NO_COLOR` is set (or `CLICOLOR_FORCE` forces it).
    #[default]
    Auto,
    Always,
    Never,
}

impl ColorChoice {
    /// Whether diagnostics on stderr get ANSI colors. `NO_COLOR` (no-color.org) wins over a
    /// terminal and `CLICOLOR_FORCE` over a pipe, so CI logs can ask for either; the flag,
    /// given explicitly, wins over both.
    pub fn enabled(self) -> bool {
        let set = |v: &str| std::env::var_os(v).is_some_and(|x| !x.is_empty() && x != "0");
        match self {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto if std::env::var_os("NO_COLOR").is_some_and(|x| !x.is_empty()) => false,
            ColorChoice::Auto if set("CLICOLOR_FORCE") => true,
            ColorChoice::Auto => std::io::stderr().is_terminal(),
        }
    }
}

/// One place in a source file, 1-based, the column counted in characters.
fn location(sources: &SourceMap, file: ved_syntax::FileId, offset: u32) -> (String, usize, usize) {
    let f = sources.file(file);
    let (line, column) = f.line_col(offset as usize);
    (f.name.clone(), line, column)
}

/// A diagnostic as `ved check --format json` prints it (schema in docs/reference.md §13).
pub fn diagnostic_json(d: &Diagnostic, sources: &SourceMap) -> Json {
    let (file, line, column) = location(sources, d.span.file, d.span.start);
    let (_, end_line, end_column) = location(sources, d.span.file, d.span.end);
    let notes: Vec<Json> = d
        .notes
        .iter()
        .map(|(span, msg)| {
            let (file, line, column) = location(sources, span.file, span.start);
            json!({"message": msg, "file": file, "line": line, "column": column})
        })
        .collect();
    json!({
        "severity": match d.severity { Severity::Error => "error", Severity::Warning => "warning" },
        // Ved's diagnostics carry no codes yet; the key is there so that tools can rely on it.
        "code": null,
        "message": d.message,
        "file": file,
        "line": line,
        "column": column,
        "end": {"line": end_line, "column": end_column},
        "label": d.label,
        "hints": d.hint.iter().collect::<Vec<_>>(),
        "notes": notes,
    })
}
