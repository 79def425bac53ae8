//! `ved-syntax` turns Ved source text into a syntax tree. It knows nothing of
//! types, instances or effects: it owns source files and spans, diagnostics as
//! values (and their rustc-style rendering), the lexer, the parser for programs
//! and `scenario` blocks, and the syntax tree itself. Parsing a file returns
//! either a tree or the first error found, never a panic.

pub mod ast;
pub mod diag;
pub mod fmt;
pub mod lexer;
pub mod parser;
pub mod span;

pub use diag::{Diagnostic, Severity};
pub use parser::parse_file;
pub use span::{FileId, SourceMap, Span};
