//! Golden tests of diagnostics. Each `tests/data/errors/NAME.ved` is checked by
//! `ved check`; its expected stderr is `NAME.stderr` beside it.
//!
//! Regenerate the expected files after an intended change with
//! `VED_BLESS=1 cargo test -p ved-cli --test diagnostics`, then review the diff.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

#[test]
fn every_error_case_matches_its_golden_output() {
    let dir = root().join("tests/data/errors");
    let bless = std::env::var_os("VED_BLESS").is_some();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "ved"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 40, "only {} error cases", cases.len());
    let mut mismatches = Vec::new();
    for case in &cases {
        let rel = case.strip_prefix(root()).unwrap().to_str().unwrap().to_string();
        let out = Command::new(env!("CARGO_BIN_EXE_ved")).args(["check", &rel]).current_dir(root()).output().unwrap();
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(1), "{rel}: expected exit status 1\n{stderr}");
        assert!(!stderr.contains("panicked"), "{rel}: {stderr}");
        // Every diagnostic opens with `file:line:col: severity: message`.
        let first = stderr.lines().find(|l| l.contains(": error: ")).unwrap_or("");
        let mut parts = first.splitn(4, ':');
        let (file, line, col) = (parts.next(), parts.next(), parts.next());
        assert_eq!(file, Some(rel.as_str()), "{rel}: bad error line {first:?}");
        assert!(
            line.is_some_and(|l| l.parse::<u32>().is_ok()) && col.is_some_and(|c| c.parse::<u32>().is_ok()),
            "{rel}: {first:?}"
        );
        // A caret line follows the source line.
        assert!(
            stderr.lines().any(|l| l.contains(" | ") && l.trim_end().ends_with('^') || l.contains("^ ")),
            "{rel}: no caret\n{stderr}"
        );
        let golden = case.with_extension("stderr");
        if bless {
            std::fs::write(&golden, &stderr).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&golden)
            .unwrap_or_else(|_| panic!("{rel}: no golden file; run with VED_BLESS=1 to create it"));
        if expected != stderr {
            mismatches.push(format!("--- {rel}\nexpected:\n{expected}\nactual:\n{stderr}"));
        }
    }
    assert!(mismatches.is_empty(), "{} golden mismatches:\n{}", mismatches.len(), mismatches.join("\n"));
}
