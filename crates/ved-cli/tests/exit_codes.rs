//! The exit codes of `crates/ved-cli/src/exit.rs` as a script sees them: a usage error
//! or a missing input never looks like a command's "no" (1) or `verify`'s
//! "inconclusive" (2), and a closed pipe is a quiet stop, never a panic.

mod common;

use common::root;
use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};

fn ved(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ved")).args(args).current_dir(root()).output().unwrap()
}

fn err(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn usage_errors_exit_64_and_help_exits_0() {
    for args in [&["verify", "--bogus", "examples/worker_pool.ved"][..], &["test"], &["nope"], &["inspect"]] {
        let out = ved(args);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {}", err(&out));
    }
    let out = ved(&["verify", "examples/worker_pool.ved", "--domain", "Nope"]);
    assert_eq!(out.status.code(), Some(64), "{}", err(&out));
    assert_eq!(ved(&["--help"]).status.code(), Some(0));
    assert_eq!(ved(&["--version"]).status.code(), Some(0));
}

#[test]
fn a_missing_program_file_exits_66_for_every_command() {
    for cmd in ["check", "test", "verify"] {
        let out = ved(&[cmd, "tests/data/no_such_file.ved"]);
        assert_eq!(out.status.code(), Some(66), "{cmd}: {}", err(&out));
        assert!(err(&out).contains("no_such_file.ved"), "{cmd}: {}", err(&out));
    }
    let out = ved(&["fmt", "--check", "tests/data/no_such_file.ved"]);
    assert_eq!(out.status.code(), Some(66), "{}", err(&out));
}

#[test]
fn a_program_with_errors_is_1_for_check_and_65_where_1_means_something_else() {
    let dir = common::tempdir("exit-bad-program");
    let bad = dir.join("bad.ved");
    std::fs::write(&bad, "domain D {\n  state { x: int }\n  goal y == 1\n}\n").unwrap();
    let bad = bad.to_str().unwrap();
    assert_eq!(ved(&["check", bad]).status.code(), Some(1));
    assert_eq!(ved(&["test", bad]).status.code(), Some(65));
    assert_eq!(ved(&["verify", bad]).status.code(), Some(65));
}

#[test]
fn read_only_views_of_a_missing_data_directory_exit_66_naming_it() {
    let missing = common::tempdir("exit-no-data").join("not-there");
    let d = missing.to_str().unwrap();
    for args in [
        vec!["inspect", "--data-dir", d],
        vec!["journal", "x", "--data-dir", d],
        vec!["audit", "--data-dir", d],
        vec!["audit", "verify", "--data-dir", d],
        vec!["audit", "head", "--data-dir", d],
    ] {
        let out = ved(&args);
        assert_eq!(out.status.code(), Some(66), "{args:?}: {}", err(&out));
        let e = err(&out);
        assert!(e.contains(d) && e.contains("does not exist") && e.contains("= hint:"), "{args:?}: {e}");
    }
}

/// `ved test ... | head -1`: the reader goes away after one line. Before, `println!`
/// panicked on the closed pipe about one run in five (exit 101).
#[test]
fn a_closed_pipe_never_panics() {
    for _ in 0..30 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ved"))
            .args(["test", "examples/worker_pool.ved", "examples/worker_pool.test.ved", "--trace"])
            .current_dir(root())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
        assert!(first.starts_with("scenario "), "{first}");
        // The reader (and with it the pipe) is dropped here.
        let out = child.wait_with_output().unwrap();
        let e = err(&out);
        assert_ne!(out.status.code(), Some(101), "{e}");
        assert!(!e.contains("panicked"), "{e}");
    }
}

/// With `--junit`, a closed pipe stops the printing, not the run: the report is still
/// written and the exit code still says a scenario failed.
#[test]
fn a_closed_pipe_still_gets_the_junit_report_written() {
    let report = common::tempdir("exit-junit-pipe").join("report.xml");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ved"))
        .args(["test", "examples/worker_pool.ved", "tests/data/scenarios/failing.test.ved", "--junit"])
        .arg(&report)
        .current_dir(root())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", err(&out));
    assert!(!err(&out).contains("panicked"), "{}", err(&out));
    let xml = std::fs::read_to_string(&report).unwrap();
    assert!(xml.contains("<testcase name=\"a wrong expectation\""), "{xml}");
}
