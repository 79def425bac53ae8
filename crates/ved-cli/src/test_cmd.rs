//! `ved test`: runs scenario blocks and reports like a test runner.

use crate::{exit, load};
use std::path::PathBuf;
use std::process::ExitCode;
use ved_runtime::scenario::{run_scenario, ScenarioReport};
use ved_syntax::SourceMap;

pub fn test(files: &[PathBuf], seed: u64, filter: Option<&str>, trace: bool) -> ExitCode {
    let loaded = match load::load_or(files, exit::DATA) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let scenarios: Vec<_> =
        loaded.program.scenarios.iter().filter(|s| filter.is_none_or(|f| s.name.contains(f))).collect();
    if scenarios.is_empty() {
        eprintln!("warning: no scenario to run");
        eprintln!("  = hint: add a `scenario \"name\" {{ ... }}` block, or pass the file that holds them");
    }
    let (mut passed, mut failed) = (0, 0);
    for sc in scenarios {
        let report = run_scenario(&loaded.program, &loaded.compiled, sc, seed);
        if report.passed() {
            passed += 1;
            println!("scenario \"{}\" ... ok", report.name);
            if trace {
                print_trace(&report);
            }
        } else {
            failed += 1;
            println!("scenario \"{}\" ... FAILED", report.name);
            print_failure(&report, &loaded.sources);
        }
    }
    println!();
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        exit::code(exit::FAILED)
    } else {
        ExitCode::SUCCESS
    }
}

fn print_failure(report: &ScenarioReport, sources: &SourceMap) {
    let Some(f) = &report.failure else { return };
    let file = sources.file(f.span.file);
    let (line, col) = file.line_col(f.span.start as usize);
    println!("  {}:{}:{}: {}", file.name, line, col, file.line_text(line).trim());
    println!("    {}", f.message);
    if !f.expected.is_empty() || !f.actual.is_empty() {
        println!("    expected: {}", f.expected);
        println!("    actual:   {}", f.actual);
    }
    print_trace(report);
}

fn print_trace(report: &ScenarioReport) {
    println!("  trace:");
    for line in &report.trace {
        if !line.starts_with("tick ") {
            println!("    {line}");
        } else {
            println!("    -- {line}");
        }
    }
}
