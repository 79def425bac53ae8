//! Reading, parsing and checking the files of one program.

use std::path::PathBuf;
use std::sync::Arc;
use ved_check::hir;
use ved_syntax::{diag, SourceMap};
use ved_vm::CompiledProgram;

pub struct Loaded {
    pub sources: SourceMap,
    /// The program's source files as read: name, text (recorded in the store for `ved replay`).
    pub files: Vec<(String, String)>,
    pub program: hir::Program,
    pub compiled: Arc<CompiledProgram>,
    /// Lints of a program that checks (`ved check` and `ved run` print them).
    pub warnings: Vec<ved_syntax::Diagnostic>,
}

/// Largest source file accepted; a limit keeps a stray binary from eating memory.
const FILE_BYTES_MAX: u64 = 16 * 1024 * 1024;

/// What is wrong with a source file before any parsing.
#[derive(Debug)]
pub enum FileProblem {
    IsDirectory,
    TooLarge { bytes: u64 },
    NotUtf8 { offset: usize },
    Unreadable(std::io::Error),
}

/// The diagnostics of a program that does not parse or check, with the sources
/// they point into, so that the caller decides how to show them.
pub struct Diagnostics {
    pub sources: SourceMap,
    pub items: Vec<ved_syntax::Diagnostic>,
}

impl Diagnostics {
    pub fn errors(&self) -> usize {
        self.items.iter().filter(|d| d.is_error()).count()
    }

    /// rustc-style text: each diagnostic with its source line and caret.
    pub fn render(&self) -> String {
        diag::render_all(&self.items, &self.sources)
    }
}

impl std::fmt::Debug for Diagnostics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.render())
    }
}

/// Why a program could not be loaded. A value: nothing is printed.
#[derive(Debug)]
pub enum LoadError {
    File { path: String, problem: FileProblem },
    Program(Diagnostics),
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::File { path, problem } => match problem {
                FileProblem::IsDirectory => write!(
                    f,
                    "error: `{path}` is a directory\n  = hint: pass the `.ved` files inside it, e.g. `{path}/*.ved`"
                ),
                FileProblem::TooLarge { bytes } => {
                    write!(f, "error: `{path}` is {bytes} bytes; source files are limited to {FILE_BYTES_MAX}")
                }
                FileProblem::NotUtf8 { offset } => write!(
                    f,
                    "error: `{path}` is not valid UTF-8 (first bad byte at offset {offset})\n  = hint: Ved source files are UTF-8 text"
                ),
                FileProblem::Unreadable(e) => write!(f, "error: cannot read `{path}`: {e}"),
            },
            LoadError::Program(d) => {
                let errors = d.errors();
                let warnings = d.items.len() - errors;
                write!(f, "{}{}", d.render(), summary(errors, warnings).trim_start_matches('\n'))
            }
        }
    }
}

impl std::error::Error for LoadError {}

/// Reads, parses and checks `files` as one program, printing nothing: the typed
/// entry point for programs that embed Ved. Warnings of a program that checks are
/// in [`Loaded::warnings`].
pub fn read_program(files: &[PathBuf]) -> Result<Loaded, LoadError> {
    let mut texts = Vec::new();
    for path in files {
        let name = path.display().to_string();
        let fail = |problem| LoadError::File { path: name.clone(), problem };
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => return Err(fail(FileProblem::IsDirectory)),
            Ok(m) if m.len() > FILE_BYTES_MAX => return Err(fail(FileProblem::TooLarge { bytes: m.len() })),
            _ => {}
        }
        match std::fs::read(path) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => texts.push((name, text)),
                Err(e) => return Err(fail(FileProblem::NotUtf8 { offset: e.utf8_error().valid_up_to() })),
            },
            Err(e) => return Err(fail(FileProblem::Unreadable(e))),
        }
    }
    check_texts(texts)
}

/// Parses and checks source texts (name, text) as one program, printing nothing.
pub fn check_texts(texts: Vec<(String, String)>) -> Result<Loaded, LoadError> {
    let mut sources = SourceMap::new();
    let ids: Vec<_> = texts.iter().map(|(n, t)| sources.add(n.clone(), t.clone())).collect();
    let mut asts = Vec::new();
    let mut parse_errors = Vec::new();
    for &id in &ids {
        match ved_syntax::parse_file(id, &sources.file(id).text) {
            Ok(f) => asts.push(f),
            Err(d) => parse_errors.push(d),
        }
    }
    if !parse_errors.is_empty() {
        return Err(LoadError::Program(Diagnostics { sources, items: parse_errors }));
    }
    let checked = ved_check::check_program(&asts);
    match checked.program {
        Some(program) => {
            let compiled = Arc::new(ved_vm::compile_program(&program));
            Ok(Loaded { sources, files: texts, program, compiled, warnings: checked.diagnostics })
        }
        None => Err(LoadError::Program(Diagnostics { sources, items: checked.diagnostics })),
    }
}

/// `error: found N errors and M warnings`, as the command line ends a report.
pub fn summary(errors: usize, warnings: usize) -> String {
    let mut s = format!("\nerror: found {errors} error{}", if errors == 1 { "" } else { "s" });
    if warnings > 0 {
        s.push_str(&format!(" and {warnings} warning{}", if warnings == 1 { "" } else { "s" }));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_program_comes_back_as_typed_diagnostics() {
        let texts = vec![("p.ved".to_string(), "domain D {\n  state { n: int }\n}\ngoal m == 1\n".to_string())];
        let Err(LoadError::Program(d)) = check_texts(texts) else { panic!("the program should not check") };
        assert_eq!(d.errors(), 1);
        assert!(d.render().starts_with("p.ved:4:6: error: unknown name `m`"), "{}", d.render());
    }

    #[test]
    fn a_missing_file_is_a_typed_error() {
        let e = read_program(&[PathBuf::from("/nonexistent/x.ved")]).err().expect("an error");
        assert!(matches!(e, LoadError::File { problem: FileProblem::Unreadable(_), .. }), "{e:?}");
        assert!(e.to_string().contains("cannot read `/nonexistent/x.ved`"));
    }

    #[test]
    fn lints_of_a_program_that_checks_are_kept_not_printed() {
        let text = "domain D {\n  state {\n    a: list<int>\n    b: list<int>\n  }\n  goal a == b\n}\n";
        let Ok(loaded) = check_texts(vec![("p.ved".into(), text.into())]) else { panic!("the program checks") };
        assert_eq!(loaded.warnings.len(), 1, "the order-sensitive list equality lint");
    }
}
