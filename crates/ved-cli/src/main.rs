//! `ved`: the command-line front end. It reads files, renders diagnostics and
//! events, and wires the pure crates (syntax, check, vm, runtime) to the
//! outside world. All I/O of the project lives at this edge.

mod json;
mod load;
mod run;
mod test_cmd;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "ved", version, about = "Ved: declare the goal, the runtime converges reality to it")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Parse and type-check programs; print errors and lints.
    Check {
        /// The files of one program, in order.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Run the `scenario` blocks of a program as deterministic chaos tests.
    Test {
        /// The files of one program (scenarios may live in separate files).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Seed for retry jitter.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Run only scenarios whose name contains this text.
        #[arg(long)]
        filter: Option<String>,
        /// Print the trace of every scenario, not only of failures.
        #[arg(long)]
        trace: bool,
    },
    /// Run the program: one instance per domain, converging forever.
    Run {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Read observations as JSON lines on stdin and write events as JSON lines on stdout.
        #[arg(long)]
        stdin: bool,
        /// Seed for retry jitter.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { files } => check(&files),
        Command::Test { files, seed, filter, trace } => test_cmd::test(&files, seed, filter.as_deref(), trace),
        Command::Run { files, stdin, seed } => {
            if !stdin {
                eprintln!("error: `ved run` needs an input source");
                eprintln!(
                    "  = hint: pass `--stdin` to read observations as JSON lines; the daemon mode comes with adapters"
                );
                return ExitCode::from(2);
            }
            run::run_stdin(&files, seed)
        }
    }
}

fn check(files: &[PathBuf]) -> ExitCode {
    match load::load(files) {
        Ok(loaded) => {
            let p = &loaded.program;
            let transitions: usize = p.domains.iter().map(|d| d.transitions.len()).sum();
            eprintln!(
                "ok: {} file{}, {} domain{}, {} transition{}, {} scenario{}",
                files.len(),
                plural(files.len()),
                p.domains.len(),
                plural(p.domains.len()),
                transitions,
                plural(transitions),
                p.scenarios.len(),
                plural(p.scenarios.len())
            );
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}
