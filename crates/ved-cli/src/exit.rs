//! The exit codes of every `ved` command, defined once so that a script can tell the
//! command's answer from a mistake in how it was called or from a missing input. The
//! numbers past 2 are the BSD `sysexits.h` ones that shells and CI already know.
//!
//! | code | meaning |
//! | --- | --- |
//! | 0 | ok |
//! | 1 | the command's "no": errors in the program (`check`), a scenario failed (`test`), a counterexample (`verify`), a file would change (`fmt --check`), a divergence (`replay`), a type conflict (`plan`), a failed audit check |
//! | 2 | `verify` only: inconclusive (the state limit was reached, or the bound is too large) |
//! | 64 | usage: bad arguments or options (clap's errors, a missing `--data-dir`, an unusable anchor or key) |
//! | 65 | the program given to `test`, `verify` or `fmt` does not parse or check (for `check` that is its answer, 1) |
//! | 66 | an input cannot be read: a missing file or data directory, an unknown instance |
//! | 74 | an output cannot be written (`fmt` rewriting a file) |
//!
//! A closed standard output (`ved test | head -1`) is not an error: the command stops
//! quietly, killed by SIGPIPE as other Unix tools are.

use std::process::ExitCode;

pub const OK: u8 = 0;
/// The command's "no".
pub const FAILED: u8 = 1;
/// `ved verify` could not decide.
pub const INCONCLUSIVE: u8 = 2;
/// EX_USAGE: the command was called wrongly.
pub const USAGE: u8 = 64;
/// EX_DATAERR: the program does not parse or check (where 1 means something else).
pub const DATA: u8 = 65;
/// EX_NOINPUT: a file, data directory or instance to read is not there or unreadable.
pub const NO_INPUT: u8 = 66;
/// EX_IOERR: an output could not be written.
pub const IO: u8 = 74;

pub fn code(c: u8) -> ExitCode {
    ExitCode::from(c)
}

/// Restores the default action of SIGPIPE, which the Rust runtime sets to "ignore": a
/// write to a closed pipe then ends the process quietly, as it does `cat` or `grep`,
/// instead of `println!` panicking (exit 101). Only for commands that print a report and
/// end; the daemon keeps ignoring it, so that a client hanging up never kills it.
pub fn die_quietly_on_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: called at the start of `main`, before any thread exists; SIG_DFL is a
    // valid disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
