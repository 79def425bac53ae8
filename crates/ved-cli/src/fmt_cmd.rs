//! `ved fmt`: rewrites files in the canonical layout of `ved_syntax::fmt`, or with
//! `--check` only says which files it would change. Exit status (see `exit.rs`): 0 nothing
//! to do (or done), 1 `--check` found a file to change, 65 a file does not parse, 66 a
//! file cannot be read, 74 one cannot be written: CI can tell "unformatted" from "broken".

use crate::exit;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use ved_syntax::{fmt, SourceMap};

/// What happened to one file.
enum Outcome {
    Unchanged,
    Changed,
    /// With the exit code that says why.
    Broken(u8),
}

/// `ved fmt [--check] FILE...`; a file named `-` is standard input, formatted to
/// standard output.
pub fn fmt(files: &[PathBuf], check: bool) -> ExitCode {
    let mut changed = false;
    let mut broken = None;
    for path in files {
        let outcome = if path.as_os_str() == "-" { stdin(check) } else { file(path, check) };
        match outcome {
            Outcome::Unchanged => {}
            Outcome::Changed => changed = true,
            Outcome::Broken(code) => broken = broken.max(Some(code)),
        }
    }
    if let Some(code) = broken {
        exit::code(code)
    } else if changed && check {
        exit::code(exit::FAILED)
    } else {
        ExitCode::SUCCESS
    }
}

/// Formats `text`, or prints the diagnostic rendered against it.
fn format_text(name: &str, text: String) -> Option<(String, String)> {
    let mut sources = SourceMap::new();
    let id = sources.add(name, text);
    let text = &sources.file(id).text;
    match fmt::format(id, text) {
        Ok(out) => Some((text.clone(), out)),
        Err(d) => {
            eprint!("{}", d.render(&sources));
            None
        }
    }
}

fn file(path: &Path, check: bool) -> Outcome {
    let name = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot read {name}: {e}");
            return Outcome::Broken(exit::NO_INPUT);
        }
    };
    let Some((before, after)) = format_text(&name, text) else { return Outcome::Broken(exit::DATA) };
    if before == after {
        return Outcome::Unchanged;
    }
    if check {
        println!("{name}");
        return Outcome::Changed;
    }
    // Only a file that changes is written, so its modification time means something.
    if let Err(e) = std::fs::write(path, after) {
        eprintln!("error: cannot write {name}: {e}");
        return Outcome::Broken(exit::IO);
    }
    Outcome::Changed
}

fn stdin(check: bool) -> Outcome {
    let mut text = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut text) {
        eprintln!("error: cannot read standard input: {e}");
        return Outcome::Broken(exit::NO_INPUT);
    }
    let Some((before, after)) = format_text("<stdin>", text) else { return Outcome::Broken(exit::DATA) };
    if check {
        if before == after {
            return Outcome::Unchanged;
        }
        println!("<stdin>");
        return Outcome::Changed;
    }
    let mut out = std::io::stdout().lock();
    if out.write_all(after.as_bytes()).and_then(|_| out.flush()).is_err() {
        return Outcome::Broken(exit::IO);
    }
    if before == after {
        Outcome::Unchanged
    } else {
        Outcome::Changed
    }
}
