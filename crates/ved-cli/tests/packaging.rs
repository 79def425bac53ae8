//! What packaging needs from the binary: shell completions and a man page that cover every
//! command, and a systemd unit whose `ExecStart` the binary accepts.

mod common;

use std::process::Command;

fn ved(args: &[&str]) -> (i32, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_ved")).args(args).output().unwrap();
    (o.status.code().unwrap_or(-1), String::from_utf8_lossy(&o.stdout).into_owned())
}

const COMMANDS: [&str; 8] = ["check", "fmt", "test", "verify", "run", "get", "describe", "observe"];

#[test]
fn completions_for_every_shell_name_every_command() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let (code, text) = ved(&["completions", shell]);
        assert_eq!(code, 0, "{shell}");
        for c in COMMANDS {
            assert!(text.contains(c), "{shell} completions lack `{c}`");
        }
    }
    // bash's script defines its completion function for `ved`.
    assert!(ved(&["completions", "bash"]).1.contains("complete -F _ved"));
}

#[test]
fn the_man_page_is_roff_and_lists_every_command() {
    let (code, page) = ved(&["man"]);
    assert_eq!(code, 0);
    assert!(page.contains(".TH ved 1"), "{page}");
    for section in [".SH NAME", ".SH SYNOPSIS", ".SH SUBCOMMANDS"] {
        assert!(page.contains(section), "{section} missing");
    }
    for c in COMMANDS {
        assert!(
            page.contains(&format!("ved\\-{c}")) || page.contains(&format!("\\fB{c}\\fR")),
            "`{c}` missing from the man page"
        );
    }
}

#[test]
fn the_systemd_unit_is_type_notify_and_its_command_line_is_accepted() {
    let unit = std::fs::read_to_string(common::root().join("packaging/systemd/ved.service")).unwrap();
    assert!(unit.lines().any(|l| l == "Type=notify"));
    assert!(unit.lines().any(|l| l.starts_with("WatchdogSec=")));
    let exec = unit.lines().find_map(|l| l.strip_prefix("ExecStart=")).unwrap();
    let args: Vec<&str> = exec.split_whitespace().skip(1).collect();
    assert_eq!(args[0], "run");
    // The flags parse (the files it names do not exist here: that is the only complaint).
    let o = Command::new(env!("CARGO_BIN_EXE_ved")).args(&args).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("unexpected argument") && !err.contains("Usage:"), "{err}");
    assert!(err.contains("/etc/ved/program.ved"), "{err}");
}
