//! Reading, parsing and checking the files of one program.

use std::path::PathBuf;
use std::process::ExitCode;
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
}

/// Largest source file accepted; a limit keeps a stray binary from eating memory.
const FILE_BYTES_MAX: u64 = 16 * 1024 * 1024;

/// Reads, parses and checks `files` as one program. Diagnostics (warnings
/// included) go to stderr; on any error the exit code to return is given back.
pub fn load(files: &[PathBuf]) -> Result<Loaded, ExitCode> {
    let mut texts = Vec::new();
    for path in files {
        let name = path.display().to_string();
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => {
                eprintln!("error: `{name}` is a directory");
                eprintln!("  = hint: pass the `.ved` files inside it, e.g. `{name}/*.ved`");
                return Err(ExitCode::from(1));
            }
            Ok(m) if m.len() > FILE_BYTES_MAX => {
                eprintln!("error: `{name}` is {} bytes; source files are limited to {FILE_BYTES_MAX}", m.len());
                return Err(ExitCode::from(1));
            }
            _ => {}
        }
        match std::fs::read(path) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => texts.push((name, text)),
                Err(e) => {
                    eprintln!(
                        "error: `{name}` is not valid UTF-8 (first bad byte at offset {})",
                        e.utf8_error().valid_up_to()
                    );
                    eprintln!("  = hint: Ved source files are UTF-8 text");
                    return Err(ExitCode::from(1));
                }
            },
            Err(e) => {
                eprintln!("error: cannot read `{name}`: {e}");
                return Err(ExitCode::from(1));
            }
        }
    }
    load_texts(texts)
}

/// Parses and checks source texts (name, text) as one program, as [`load`] does files.
pub fn load_texts(texts: Vec<(String, String)>) -> Result<Loaded, ExitCode> {
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
        eprint!("{}", diag::render_all(&parse_errors, &sources));
        summary(parse_errors.len(), 0);
        return Err(ExitCode::from(1));
    }
    let checked = ved_check::check_program(&asts);
    if !checked.diagnostics.is_empty() {
        eprint!("{}", diag::render_all(&checked.diagnostics, &sources));
    }
    match checked.program {
        Some(program) => {
            let compiled = Arc::new(ved_vm::compile_program(&program));
            Ok(Loaded { sources, files: texts, program, compiled })
        }
        None => {
            let errors = checked.diagnostics.iter().filter(|d| d.is_error()).count();
            summary(errors, checked.diagnostics.len() - errors);
            Err(ExitCode::from(1))
        }
    }
}

fn summary(errors: usize, warnings: usize) {
    let mut s = format!("\nerror: found {errors} error{}", if errors == 1 { "" } else { "s" });
    if warnings > 0 {
        s.push_str(&format!(" and {warnings} warning{}", if warnings == 1 { "" } else { "s" }));
    }
    eprintln!("{s}");
}

/// Reads `ved.toml` and checks it against the loaded program. Diagnostics go to stderr.
pub fn load_config(loaded: &mut Loaded, path: &std::path::Path) -> Result<ved_adapters::config::Config, ExitCode> {
    let name = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot read `{name}`: {e}");
            return Err(ExitCode::from(1));
        }
    };
    let id = loaded.sources.add(name, text.clone());
    let config = match ved_adapters::config::parse_config(id, &text) {
        Ok(c) => c,
        Err(d) => {
            eprint!("{}", d.render(&loaded.sources));
            summary(1, 0);
            return Err(ExitCode::from(1));
        }
    };
    let mut diags = ved_adapters::config::validate(&config, id, &loaded.program);
    if !diags.is_empty() {
        diags.sort_by_key(|d| (d.span.file, d.span.start));
        eprint!("{}", diag::render_all(&diags, &loaded.sources));
        summary(diags.len(), 0);
        return Err(ExitCode::from(1));
    }
    let mut config = config;
    if let Some(dir) = path.parent() {
        config.resolve_commands(dir);
    }
    Ok(config)
}
