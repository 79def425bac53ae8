//! `ved check --format json`: the same checks as the text form, as one JSON document on
//! stdout (schema in docs/reference.md §13). Exit codes are the text form's.

use crate::exit;
use crate::load::{self, ConfigError, FileProblem, LoadError};
use crate::output::diagnostic_json;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

pub fn check_json(files: &[PathBuf], config: Option<&Path>) -> ExitCode {
    let (doc, code) = match load::read_program(files) {
        Err(LoadError::File { path, problem }) => {
            let bad_data = matches!(problem, FileProblem::NotUtf8 { .. } | FileProblem::TooLarge { .. });
            let message = LoadError::File { path: path.clone(), problem }.to_string();
            let message = message.lines().next().unwrap_or("").trim_start_matches("error: ").to_string();
            let doc = json!({"ok": false, "error": {"file": path, "message": message}, "diagnostics": []});
            (doc, if bad_data { exit::DATA } else { exit::NO_INPUT })
        }
        Err(LoadError::Program(d)) => {
            let diags: Vec<_> = d.items.iter().map(|x| diagnostic_json(x, &d.sources)).collect();
            let errors = d.errors();
            let doc = json!({"ok": false, "errors": errors, "warnings": d.items.len() - errors, "diagnostics": diags});
            (doc, exit::FAILED)
        }
        Ok(mut loaded) => {
            let mut items = loaded.warnings.clone();
            let mut code = exit::OK;
            let mut error = None;
            if let Some(path) = config {
                match load::read_config(&mut loaded, path) {
                    Ok(_) => {}
                    Err(ConfigError::Unreadable(msg)) => {
                        error = Some(json!({"file": path.display().to_string(), "message": msg}));
                        code = exit::NO_INPUT;
                    }
                    Err(ConfigError::Invalid(diags)) => {
                        items.extend(diags);
                        code = exit::FAILED;
                    }
                }
            }
            let errors = items.iter().filter(|d| d.is_error()).count();
            let p = &loaded.program;
            let transitions: usize = p.domains.iter().map(|d| d.transitions.len()).sum();
            let diags: Vec<_> = items.iter().map(|x| diagnostic_json(x, &loaded.sources)).collect();
            let mut doc = json!({
                "ok": code == exit::OK,
                "errors": errors,
                "warnings": items.len() - errors,
                "files": files.len(),
                "domains": p.domains.len(),
                "transitions": transitions,
                "scenarios": p.scenarios.len(),
                "diagnostics": diags,
            });
            if let Some(e) = error {
                doc["error"] = e;
            }
            (doc, code)
        }
    };
    println!("{doc}");
    exit::code(code)
}
