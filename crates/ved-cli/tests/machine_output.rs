//! Output for tools: `--format json` of `check`, `test` and `verify`, `ved test --junit`,
//! and diagnostics in color only when asked (or on a terminal), with carets in the right
//! display column after wide characters.

mod common;

use common::root;
use serde_json::Value as Json;
use std::process::{Command, Output};

fn ved(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ved"));
    c.args(args).current_dir(root()).env_remove("NO_COLOR").env_remove("CLICOLOR_FORCE");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn check_json_lists_diagnostics_with_locations_and_keeps_exit_codes() {
    let out = ved(&["check", "--format", "json", "tests/data/errors/unknown_field_in_goal.ved"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let doc: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["ok"], false);
    assert_eq!(doc["errors"], 1);
    let d = &doc["diagnostics"][0];
    assert_eq!(d["severity"], "error");
    assert_eq!(d["message"], "unknown name `worker`");
    assert_eq!(d["file"], "tests/data/errors/unknown_field_in_goal.ved");
    assert_eq!((d["line"].as_u64(), d["column"].as_u64()), (Some(6), Some(6)));
    assert_eq!((d["end"]["line"].as_u64(), d["end"]["column"].as_u64()), (Some(6), Some(12)));
    assert_eq!(d["hints"][0], "did you mean `workers`?");
    assert!(text(&out.stderr).is_empty(), "JSON replaces the text: {}", text(&out.stderr));

    let out = ved(&["check", "--format", "json", "examples/worker_pool.ved"], &[]);
    assert_eq!(out.status.code(), Some(0));
    let doc: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((doc["ok"].as_bool(), doc["domains"].as_u64()), (Some(true), Some(1)));

    let out = ved(&["check", "--format", "json", "examples/nope.ved"], &[]);
    assert_eq!(out.status.code(), Some(66));
    let doc: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert!(doc["error"]["message"].as_str().unwrap().contains("cannot read"), "{doc}");
}

#[test]
fn test_json_is_one_line_per_scenario_and_a_summary() {
    let out =
        ved(&["test", "--format", "json", "examples/worker_pool.ved", "tests/data/scenarios/failing.test.ved"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let lines: Vec<Json> = text(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let summary = lines.last().unwrap();
    assert_eq!(summary["type"], "summary");
    let scenarios = &lines[..lines.len() - 1];
    assert!(scenarios.iter().all(|s| s["type"] == "scenario" && s["duration_ms"].is_number()));
    assert_eq!(summary["passed"].as_u64().unwrap() as usize, scenarios.iter().filter(|s| s["passed"] == true).count());
    assert_eq!(summary["failed"].as_u64().unwrap() as usize, scenarios.iter().filter(|s| s["passed"] == false).count());
    let wrong = scenarios.iter().find(|s| s["name"] == "a wrong expectation").unwrap();
    let f = &wrong["failure"];
    assert_eq!(f["message"], "the expectation does not hold");
    assert_eq!(
        (f["file"].as_str(), f["line"].as_u64(), f["column"].as_u64()),
        (Some("tests/data/scenarios/failing.test.ved"), Some(10), Some(3))
    );
    assert_eq!(f["source"], "expect workers == 4");
    assert!(wrong["trace"].as_array().is_some_and(|t| !t.is_empty()));
    let passes = scenarios.iter().find(|s| s["name"] == "passes").unwrap();
    assert!(passes.get("failure").is_none() && passes.get("trace").is_none(), "{passes}");
}

#[test]
fn text_output_is_unchanged_without_format() {
    let args = ["test", "examples/worker_pool.ved", "tests/data/scenarios/failing.test.ved"];
    let plain = ved(&args, &[]);
    let explicit = ved(&[&args[..], &["--format", "text"]].concat(), &[]);
    assert_eq!(plain.stdout, explicit.stdout);
    let t = text(&plain.stdout);
    assert!(t.contains("scenario \"passes\" ... ok\n") && t.contains("scenario \"a wrong expectation\" ... FAILED\n"));
    assert!(t.contains("  tests/data/scenarios/failing.test.ved:10:3: expect workers == 4\n"), "{t}");
}

#[test]
fn junit_report_names_every_scenario_and_its_failure() {
    let dir = common::tempdir("junit");
    let file = dir.join("report.xml");
    let out = ved(
        &[
            "test",
            "examples/worker_pool.ved",
            "tests/data/scenarios/failing.test.ved",
            "--junit",
            file.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("passed,"), "the normal output is still printed");
    let xml = std::fs::read_to_string(&file).unwrap();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "testsuites");
    let suite = root.children().find(|n| n.has_tag_name("testsuite")).unwrap();
    let cases: Vec<_> = suite.children().filter(|n| n.has_tag_name("testcase")).collect();
    let failed: Vec<_> = cases.iter().filter(|c| c.children().any(|n| n.has_tag_name("failure"))).collect();
    assert_eq!(suite.attribute("tests").unwrap().parse::<usize>().unwrap(), cases.len());
    assert_eq!(suite.attribute("failures").unwrap().parse::<usize>().unwrap(), failed.len());
    let names: Vec<_> = cases.iter().map(|c| c.attribute("name").unwrap()).collect();
    assert!(names.contains(&"passes") && names.contains(&"a wrong expectation"), "{names:?}");
    let passes = cases.iter().find(|c| c.attribute("name") == Some("passes")).unwrap();
    assert!(!passes.children().any(|n| n.has_tag_name("failure")));
    let wrong = cases.iter().find(|c| c.attribute("name") == Some("a wrong expectation")).unwrap();
    let failure = wrong.children().find(|n| n.has_tag_name("failure")).unwrap();
    assert_eq!(failure.attribute("message"), Some("the expectation does not hold"));
    let body = failure.text().unwrap();
    assert!(body.contains("failing.test.ved:10:3") && body.contains("actual:   false, with workers = 5"), "{body}");
}

#[test]
fn verify_json_gives_the_verdict_and_a_structured_trace() {
    let out = ved(&["verify", "--format", "json", "examples/coarse_scaler.ved"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let doc: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["result"], "counterexample");
    let d = &doc["domains"][0];
    assert_eq!(d["domain"], "CoarseScaler");
    assert!(d["states"].as_u64().unwrap() > 0);
    let cx = &d["counterexample"];
    assert_eq!(cx["kind"], "livelock");
    let trace = cx["trace"].as_array().unwrap();
    assert_eq!(trace[0]["edge"]["kind"], "start");
    assert!(trace[0]["state"]["replicas"].is_i64(), "{cx}");
    assert!(cx["cycle"].as_array().unwrap().iter().all(|s| s["edge"]["kind"] == "fired"), "{cx}");

    let out = ved(&["verify", "--format", "json", "examples/worker_pool.ved"], &[]);
    assert_eq!(out.status.code(), Some(0));
    let doc: Json = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((doc["result"].as_str(), doc["domains"][0]["counterexample"].is_null()), (Some("proven"), true));
}

/// A file whose error sits after a CJK string, an emoji and a tab.
fn wide_file() -> std::path::PathBuf {
    let dir = common::tempdir("wide");
    let f = dir.join("wide.ved");
    std::fs::write(
        &f,
        "domain D {\n  state { x: int }\n\t// 日本 🎉\n  goal x == 1 && \"日本🎉\" == \"\" && worker == 5\n}\n",
    )
    .unwrap();
    f
}

#[test]
fn the_caret_sits_under_the_span_after_wide_characters() {
    let f = wide_file();
    let out = ved(&["check", f.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    let src = lines.iter().position(|l| l.starts_with("4 | ")).unwrap_or_else(|| panic!("{err}"));
    let (source, carets) = (lines[src], lines[src + 1]);
    // Display columns: 日, 本 and 🎉 take two each.
    let width = |s: &str| s.chars().map(|c| if c == '日' || c == '本' || c == '🎉' { 2 } else { 1 }).sum::<usize>();
    let at = source.find("worker").unwrap();
    let caret = carets.find('^').unwrap();
    assert_eq!(width(&carets[..caret]), width(&source[..at]), "\n{source}\n{carets}");
    assert!(carets[caret..].starts_with("^^^^^^ "), "{carets}");
    // The location still counts characters, as editors do.
    assert!(err.contains(":4:"), "{err}");
}

#[test]
fn colors_only_when_asked_or_forced() {
    let f = wide_file();
    let f = f.to_str().unwrap();
    let esc = |o: &Output| text(&o.stderr).contains("\x1b[");
    let plain = ved(&["check", f], &[]);
    assert!(!esc(&plain), "not a terminal: no color");
    let always = ved(&["check", "--color", "always", f], &[]);
    assert!(esc(&always));
    assert!(esc(&ved(&["check", f], &[("CLICOLOR_FORCE", "1")])));
    assert!(!esc(&ved(&["check", f], &[("CLICOLOR_FORCE", "1"), ("NO_COLOR", "1")])), "NO_COLOR wins");
    assert!(!esc(&ved(&["check", "--color", "never", f], &[("CLICOLOR_FORCE", "1")])));
    // Without the escape codes, the colored text is the plain text.
    let stripped = strip_ansi(&text(&always.stderr));
    assert_eq!(stripped, text(&plain.stderr));
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c == '\x1b' {
            for d in it.by_ref() {
                if d == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn check_bytecode_lists_the_code_the_runtime_runs_with_its_superinstructions() {
    let out = ved(&["check", "--bytecode", "examples/worker_pool.ved"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let listing = text(&out.stdout);
    assert_eq!(
        listing,
        "domain WorkerPool\n  goal goal#1:\n   0  field_eq 0 5\n  transition scale_up:\n   0  jump_unless_field_lt 0 5 2\n   1  field_add_const 0 1\n  transition scale_down:\n   0  jump_unless_field_gt 0 5 2\n   1  field_sub_const 0 1\n"
    );
    assert!(text(&out.stderr).starts_with("ok: 1 file"), "{}", text(&out.stderr));
    // Defaults are listed too, and plain ops where no shape fuses.
    let out = ved(&["check", "--bytecode", "examples/security_policy.ved"], &[]);
    let listing = text(&out.stdout);
    assert!(listing.contains("  default desired_ports:\n   0  const [80, 443]\n"), "{listing}");
    assert!(listing.contains("field_eq_field 1 0"), "{listing}");
    assert!(listing.contains("call .difference"), "{listing}");
}
