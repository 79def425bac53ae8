//! `ved fmt` as CI sees it: `--check` exits 0 (formatted), 1 (would change) or 65
//! (does not parse); without `--check` files are rewritten in place, only when they
//! change; `-` and `--stdin` format standard input to standard output.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

fn ved(dir: &Path, args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ved"))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const MESSY: &str = "domain D { // the domain\nstate{x:int}\ngoal x==5\ntransition t{step{if x<5{x+=1}}}\n}\n";
const TIDY: &str = "domain D { // the domain\n  state { x: int }\n  goal x == 5\n  transition t {\n    step {\n      \
                    if x < 5 {\n        x += 1\n      }\n    }\n  }\n}\n";
const BROKEN: &str = "domain D {\n  state { x: int }\n";

#[test]
fn check_exits_0_when_formatted_1_when_not_and_65_when_broken() {
    let dir = common::tempdir("fmt-check");
    std::fs::write(dir.join("tidy.ved"), TIDY).unwrap();
    std::fs::write(dir.join("messy.ved"), MESSY).unwrap();
    std::fs::write(dir.join("broken.ved"), BROKEN).unwrap();

    let (code, out, err) = ved(&dir, &["fmt", "--check", "tidy.ved"], "");
    assert_eq!((code, out.as_str()), (0, ""), "{err}");

    let (code, out, _) = ved(&dir, &["fmt", "--check", "tidy.ved", "messy.ved"], "");
    assert_eq!((code, out.as_str()), (1, "messy.ved\n"));
    assert_eq!(std::fs::read_to_string(dir.join("messy.ved")).unwrap(), MESSY, "--check changes nothing");

    let (code, _, err) = ved(&dir, &["fmt", "--check", "messy.ved", "broken.ved"], "");
    assert_eq!(code, 65, "a file that does not parse wins over one that would change");
    assert!(err.contains("broken.ved:") && err.contains("never closed"), "{err}");
}

#[test]
fn rewrites_files_in_place_only_when_they_change() {
    let dir = common::tempdir("fmt-write");
    std::fs::write(dir.join("tidy.ved"), TIDY).unwrap();
    std::fs::write(dir.join("messy.ved"), MESSY).unwrap();
    let before = std::fs::metadata(dir.join("tidy.ved")).unwrap().modified().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));

    let (code, out, err) = ved(&dir, &["fmt", "tidy.ved", "messy.ved"], "");
    assert_eq!((code, out.as_str()), (0, ""), "{err}");
    assert_eq!(std::fs::read_to_string(dir.join("messy.ved")).unwrap(), TIDY);
    assert_eq!(std::fs::metadata(dir.join("tidy.ved")).unwrap().modified().unwrap(), before, "untouched");

    let (code, _, _) = ved(&dir, &["fmt", "--check", "messy.ved"], "");
    assert_eq!(code, 0, "formatted once, nothing left to do");

    // A broken file is left as it is, and the exit status says so.
    std::fs::write(dir.join("broken.ved"), BROKEN).unwrap();
    let (code, _, _) = ved(&dir, &["fmt", "broken.ved"], "");
    assert_eq!(code, 65);
    assert_eq!(std::fs::read_to_string(dir.join("broken.ved")).unwrap(), BROKEN);
}

#[test]
fn stdin_formats_to_stdout() {
    let dir = common::tempdir("fmt-stdin");
    for flag in ["-", "--stdin"] {
        let (code, out, err) = ved(&dir, &["fmt", flag], MESSY);
        assert_eq!((code, out.as_str()), (0, TIDY), "{flag}: {err}");
    }
    let (code, out, _) = ved(&dir, &["fmt", "--check", "-"], MESSY);
    assert_eq!((code, out.as_str()), (1, "<stdin>\n"));
    let (code, out, _) = ved(&dir, &["fmt", "--check", "--stdin"], TIDY);
    assert_eq!((code, out.as_str()), (0, ""));
    let (code, out, err) = ved(&dir, &["fmt", "-"], BROKEN);
    assert_eq!((code, out.as_str()), (65, ""), "nothing on stdout for a broken input");
    assert!(err.contains("<stdin>:"), "{err}");
}

#[test]
fn fmt_check_accepts_its_own_output() {
    let dir = common::tempdir("fmt-examples");
    let src = common::root().join("examples/coarse_scaler.ved");
    let text = std::fs::read_to_string(src).unwrap();
    let (code, formatted, err) = ved(&dir, &["fmt", "-"], &text);
    assert_eq!(code, 0, "{err}");
    let (code, _, _) = ved(&dir, &["fmt", "--check", "-"], &formatted);
    assert_eq!(code, 0);
}
