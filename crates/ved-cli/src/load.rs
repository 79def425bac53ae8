//! Loading for the command line: [`ved_engine::load`] reads and checks a program
//! and prints nothing; these wrappers print its diagnostics to stderr and give back
//! the exit code.

use crate::exit;
use std::path::PathBuf;
use std::process::ExitCode;
pub use ved_engine::load::*;
use ved_syntax::diag;

/// [`read_program`] for the command line: diagnostics (warnings included) go to
/// stderr; on any error the exit code to return is given back: 66 for a file that
/// cannot be read, 65 for one that is not UTF-8 text, 1 for a program with errors.
pub fn load(files: &[PathBuf]) -> Result<Loaded, ExitCode> {
    load_or(files, exit::FAILED)
}

/// [`load`] for a command whose exit 1 means something else (a failed scenario, a
/// counterexample): a program with errors exits `program_errors` instead.
pub fn load_or(files: &[PathBuf], program_errors: u8) -> Result<Loaded, ExitCode> {
    report(read_program(files), program_errors)
}

/// [`check_texts`] for the command line, as [`load`].
pub fn load_texts(texts: Vec<(String, String)>) -> Result<Loaded, ExitCode> {
    report(check_texts(texts), exit::FAILED)
}

/// Whether diagnostics printed here are colored; set once by `main` from `--color`.
static COLOR: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn set_color(on: bool) {
    COLOR.store(on, std::sync::atomic::Ordering::Relaxed);
}

fn render(diags: &[ved_syntax::Diagnostic], sources: &ved_syntax::SourceMap) -> String {
    diag::render_all_styled(diags, sources, COLOR.load(std::sync::atomic::Ordering::Relaxed))
}

fn report(r: Result<Loaded, LoadError>, program_errors: u8) -> Result<Loaded, ExitCode> {
    match r {
        Ok(loaded) => {
            if !loaded.warnings.is_empty() {
                eprint!("{}", render(&loaded.warnings, &loaded.sources));
            }
            Ok(loaded)
        }
        Err(e @ LoadError::File { .. }) => {
            eprintln!("{e}");
            // A file that is there but is no source text is bad data, not a missing input.
            let bad_data = matches!(
                &e,
                LoadError::File { problem: FileProblem::NotUtf8 { .. } | FileProblem::TooLarge { .. }, .. }
            );
            Err(exit::code(if bad_data { exit::DATA } else { exit::NO_INPUT }))
        }
        Err(LoadError::Program(d)) => {
            eprint!("{}", render(&d.items, &d.sources));
            let errors = d.errors();
            print_summary(errors, d.items.len() - errors);
            Err(exit::code(program_errors))
        }
    }
}

fn print_summary(errors: usize, warnings: usize) {
    eprintln!("{}", ved_engine::load::summary(errors, warnings));
}

/// Why a `ved.toml` was refused, before anything is printed.
pub enum ConfigError {
    /// It cannot be read: the message.
    Unreadable(String),
    /// It does not parse, or does not fit the program: diagnostics into `loaded.sources`.
    Invalid(Vec<ved_syntax::Diagnostic>),
}

/// Reads `ved.toml` and checks it against the loaded program, printing nothing.
pub fn read_config(loaded: &mut Loaded, path: &std::path::Path) -> Result<ved_adapters::config::Config, ConfigError> {
    let name = path.display().to_string();
    let text =
        std::fs::read_to_string(path).map_err(|e| ConfigError::Unreadable(format!("cannot read `{name}`: {e}")))?;
    let id = loaded.sources.add(name, text.clone());
    let mut config = ved_adapters::config::parse_config(id, &text).map_err(|d| ConfigError::Invalid(vec![d]))?;
    let mut diags = ved_adapters::config::validate(&config, id, &loaded.program);
    if !diags.is_empty() {
        diags.sort_by_key(|d| (d.span.file, d.span.start));
        return Err(ConfigError::Invalid(diags));
    }
    if let Some(dir) = path.parent() {
        config.resolve_commands(dir);
    }
    Ok(config)
}

/// Reads `ved.toml` and checks it against the loaded program. Diagnostics go to stderr.
pub fn load_config(loaded: &mut Loaded, path: &std::path::Path) -> Result<ved_adapters::config::Config, ExitCode> {
    match read_config(loaded, path) {
        Ok(c) => Ok(c),
        Err(ConfigError::Unreadable(msg)) => {
            eprintln!("error: {msg}");
            Err(exit::code(exit::NO_INPUT))
        }
        Err(ConfigError::Invalid(diags)) => {
            eprint!("{}", render(&diags, &loaded.sources));
            print_summary(diags.len(), 0);
            Err(exit::code(exit::FAILED))
        }
    }
}
