//! Black-box tests of the seed examples through the `ved` binary.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn ved(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ved")).args(args).current_dir(root()).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const SEEDS: [&str; 3] = ["database_routing.ved", "security_policy.ved", "worker_pool.ved"];

/// FNV-1a, to pin the seed bytes even where `../shared` is not checked out.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ *b as u64).wrapping_mul(0x100_0000_01b3))
}

#[test]
fn examples_are_the_seed_programs_byte_for_byte() {
    let pinned = [("database_routing.ved", 1_170usize), ("security_policy.ved", 781), ("worker_pool.ved", 195)];
    let shared = root().join("../shared/seeds/programs");
    for (name, len) in pinned {
        let ours = std::fs::read(root().join("examples").join(name)).unwrap();
        if shared.is_dir() {
            let seed = std::fs::read(shared.join(name)).unwrap();
            assert!(ours == seed, "examples/{name} differs from the seed program");
        }
        assert_eq!(ours.len(), len, "examples/{name} changed length");
        assert_eq!(fnv(&ours), pinned_hash(name), "examples/{name} changed");
    }
}

fn pinned_hash(name: &str) -> u64 {
    match name {
        "database_routing.ved" => 394_773_221_488_966_243,
        "security_policy.ved" => 5_110_336_196_363_777_046,
        _ => 2_001_569_456_295_007_574,
    }
}

#[test]
fn ved_check_accepts_every_seed_program() {
    for seed in SEEDS {
        let (code, _, err) = ved(&["check", &format!("examples/{seed}")]);
        assert_eq!(code, 0, "ved check {seed} failed:\n{err}");
        assert!(!err.contains("error"), "{err}");
    }
}

#[test]
fn ved_check_accepts_the_seeds_together_as_one_program() {
    let files: Vec<String> = SEEDS.iter().map(|s| format!("examples/{s}")).collect();
    let args: Vec<&str> = std::iter::once("check").chain(files.iter().map(String::as_str)).collect();
    let (code, _, err) = ved(&args);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("3 domains"), "{err}");
}

#[test]
fn list_equality_in_the_security_goal_is_linted() {
    let (code, _, err) = ved(&["check", "examples/security_policy.ved"]);
    assert_eq!(code, 0);
    assert!(err.contains("warning: `==` on lists compares order"), "{err}");
    assert!(err.contains("security_policy.ved:10:11"), "{err}");
}

fn run_suite(program: &str, tests: &str, expect_passed: usize) {
    let (code, out, err) = ved(&["test", program, tests]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains(&format!("{expect_passed} passed, 0 failed")), "{out}");
    assert_eq!(out.matches(" ... ok").count(), expect_passed, "{out}");
}

#[test]
fn security_policy_chaos_scenarios_pass() {
    run_suite("examples/security_policy.ved", "examples/security_policy.test.ved", 9);
}

#[test]
fn database_routing_chaos_scenarios_pass() {
    run_suite("examples/database_routing.ved", "examples/database_routing.test.ved", 6);
}

#[test]
fn worker_pool_chaos_scenarios_pass() {
    run_suite("examples/worker_pool.ved", "examples/worker_pool.test.ved", 6);
}

#[test]
fn livelock_example_scenarios_pass() {
    let (code, out, err) = ved(&["test", "examples/coarse_scaler.ved"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("2 passed, 0 failed"), "{out}");
}

#[test]
fn a_failing_scenario_reports_the_line_expected_actual_and_trace_and_exits_1() {
    let (code, out, err) = ved(&["test", "examples/worker_pool.ved", "tests/data/scenarios/failing.test.ved"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("scenario \"passes\" ... ok"), "{out}");
    assert!(out.contains("scenario \"a wrong expectation\" ... FAILED"), "{out}");
    assert!(out.contains("tests/data/scenarios/failing.test.ved:10:3: expect workers == 4"), "{out}");
    assert!(out.contains("expected: true"), "{out}");
    assert!(out.contains("actual:   false, with workers = 5"), "{out}");
    // The trace shows the slices that led there.
    assert!(out.contains("slice 6 [observe]: workers = 2"), "{out}");
    assert!(out.contains("slice 9 [scale_up]: workers = 5"), "{out}");
    assert!(out.contains("tests/data/scenarios/failing.test.ved:15:3: expect stable within 3 ticks"), "{out}");
    assert!(out.contains("stable only after 4 ticks"), "{out}");
    assert!(out.contains("`scale_up` fired 2 time(s), not 1"), "{out}");
    // `answer` with nothing in flight is a scenario error, not a silent no-op.
    assert!(out.contains("tests/data/scenarios/failing.test.ved:26:3: answer oldest"), "{out}");
    assert!(out.contains("`answer oldest`: no intent is in flight"), "{out}");
    assert!(out.contains("`answer newest`: no intent is in flight"), "{out}");
    assert!(out.contains("none: intents are answered at once until a `hold intents` step"), "{out}");
    assert!(out.trim_end().ends_with("1 passed, 5 failed"), "{out}");
}

#[test]
fn check_rejects_a_bad_program_with_exit_1_and_a_located_error() {
    let (code, _, err) = ved(&["check", "tests/data/errors/unknown_field_in_goal.ved"]);
    assert_eq!(code, 1);
    assert!(err.starts_with("tests/data/errors/unknown_field_in_goal.ved:6:6: error: unknown name `worker`"), "{err}");
}

#[test]
fn missing_and_non_utf8_files_are_clear_errors() {
    let (code, _, err) = ved(&["check", "examples/nope.ved"]);
    assert_eq!(code, 66, "no input, not a program with errors");
    assert!(err.contains("error: cannot read `examples/nope.ved`"), "{err}");
    let dir = std::env::temp_dir().join(format!("ved-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = dir.join("bin.ved");
    std::fs::write(&bin, [0x64, 0x6f, 0xff, 0xfe, 0x0a]).unwrap();
    let (code, _, err) = ved(&["check", bin.to_str().unwrap()]);
    assert_eq!(code, 65, "bad data, not a program with errors");
    assert!(err.contains("is not valid UTF-8 (first bad byte at offset 2)"), "{err}");
}

#[test]
fn relative_alerts_shift_a_prediction_in_flight() {
    run_suite("examples/demo/worker_pool/worker_pool.ved", "tests/data/scenarios/pool_alerts.test.ved", 2);
}

#[test]
fn fault_scenarios_pass() {
    let (code, out, err) = ved(&["test", "tests/data/scenarios/faults.ved"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("3 passed, 0 failed"), "{out}");
}
