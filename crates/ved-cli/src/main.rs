//! `ved`: the command-line front end. It reads files, renders diagnostics and
//! events, and wires the pure crates (syntax, check, vm, runtime) to the
//! outside world. All I/O of the project lives at this edge.

use ved_cli::{client, exit, fmt_cmd, inspect, load, plan_cmd, replay_cmd, run, test_cmd, verify_cmd};

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use ved_cli::output::{ColorChoice, Format};

/// mimalloc, not the system allocator: the engine's batch of a busy fleet allocates and
/// frees millions of small records a second, where glibc's malloc spent about a third of
/// the engine thread's time (BENCHMARKS.md, "Scale"). See `ved_cli::memory`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        /// Also check this `ved.toml` against the program: bindings, drivers, watched fields.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// `text` (rustc-style, on stderr) or `json` (one document on stdout).
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
        /// Color the diagnostics: `auto` (on a terminal, unless `NO_COLOR`), `always`, `never`.
        #[arg(long, value_enum, default_value = "auto")]
        color: ColorChoice,
        /// Print the bytecode of every default, goal and transition on stdout, as the
        /// runtime and `ved verify` run it (superinstructions included).
        #[arg(long, conflicts_with = "format")]
        bytecode: bool,
    },
    /// Format files canonically, keeping every comment (rewrites them in place).
    Fmt {
        /// The files to format; `-` formats standard input to standard output.
        #[arg(required_unless_present = "stdin")]
        files: Vec<PathBuf>,
        /// Change nothing: print the files that would change and exit 1 if there are any.
        #[arg(long)]
        check: bool,
        /// Format standard input to standard output (the same as the file `-`).
        #[arg(long, conflicts_with = "files")]
        stdin: bool,
    },
    /// A language server on stdin/stdout (LSP): diagnostics, hover, go to definition,
    /// completion and formatting, for editors.
    Lsp,
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
        /// `text`, or `json`: one JSON object per line, per scenario and a summary.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
        /// Also write a JUnit XML report to this file, for CI systems.
        #[arg(long, value_name = "FILE")]
        junit: Option<PathBuf>,
        /// Color the diagnostics: `auto` (on a terminal, unless `NO_COLOR`), `always`, `never`.
        #[arg(long, value_enum, default_value = "auto")]
        color: ColorChoice,
    },
    /// Prove that every domain converges from every state within a bound, or print a
    /// shortest counterexample. Exit 0 proven, 1 counterexample, 2 inconclusive, 64 a usage
    /// error, 65 the program has errors, 66 a file cannot be read.
    Verify {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Only this domain.
        #[arg(long)]
        domain: Option<String>,
        /// Intents that may fail, in all, in the second run.
        #[arg(long, default_value_t = 2)]
        failures: u8,
        /// Give up after exploring this many states in one run.
        #[arg(long, default_value_t = 20_000_000)]
        max_states: usize,
        /// Derived int bounds: each literal plus and minus this.
        #[arg(long, default_value_t = 2)]
        margin: i64,
        /// Derived list and set bounds: at most this many elements.
        #[arg(long, default_value_t = 3)]
        max_len: usize,
        /// `text`, or `json`: one document with the verdict and any counterexample's trace.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
        /// Color the diagnostics: `auto` (on a terminal, unless `NO_COLOR`), `always`, `never`.
        #[arg(long, value_enum, default_value = "auto")]
        color: ColorChoice,
    },
    /// Run the program: one instance per domain, converging forever. Without `--stdin`
    /// it is a daemon serving the HTTP API until SIGTERM.
    Run {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Read observations as JSON lines on stdin and write events as JSON lines on stdout.
        #[arg(long, conflicts_with = "listen")]
        stdin: bool,
        /// Address of the HTTP API (the daemon, and every cluster node). Port 0 picks a
        /// free port; the `listening` event on stdout says which.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7410")]
        listen: std::net::SocketAddr,
        /// Cluster mode: etcd client URLs, comma-separated. State lives in etcd, and the
        /// program's instances are shared among the nodes.
        #[arg(long, value_name = "URLS", value_delimiter = ',', requires = "node_id", conflicts_with_all = ["stdin", "data_dir", "ephemeral", "durability", "recover", "audit_key"])]
        cluster: Vec<String>,
        /// Cluster mode: this node's name, unique in the cluster.
        #[arg(long, value_name = "N")]
        node_id: Option<String>,
        /// Cluster mode: seconds a node's lease lives without renewal. A dead node's
        /// instances resume elsewhere within this plus about a second.
        #[arg(long, value_name = "SECS", default_value_t = 5)]
        lease_ttl: i64,
        /// Cluster mode: the URL other nodes reach this node's HTTP API at (default:
        /// `http://` and the `--listen` address, 127.0.0.1 for an unspecified one).
        #[arg(long, value_name = "URL", requires = "node_id")]
        advertise: Option<String>,
        /// Cluster mode: key prefix in etcd.
        #[arg(long, value_name = "PREFIX", default_value = "/ved")]
        cluster_prefix: String,
        #[command(flatten)]
        etcd: ved_cli::cluster_run::EtcdFlags,
        /// Seed for retry jitter.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Adapters and watchers (`ved.toml`). Without it, intents go to a logging adapter.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Make every slice durable in this directory, and resume from it after a restart.
        /// Default: `$XDG_STATE_HOME/ved/NAME` (else `~/.local/state/ved/NAME`), where NAME is
        /// the first file's stem and a hash of the program files' canonical paths.
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Keep no state at all: nothing is written, and a restart starts afresh.
        #[arg(long, conflicts_with_all = ["data_dir", "durability", "recover", "audit_key"])]
        ephemeral: bool,
        /// `fsync`: a batch counts as durable once fsynced (default). `none`: once written
        /// (survives a crash of ved, not of the machine; for tests and benchmarks).
        #[arg(long, value_enum)]
        durability: Option<DurabilityArg>,
        /// Start even if the store is damaged: load the last good snapshots and set the damage aside.
        #[arg(long)]
        recover: bool,
        /// Authenticate every new audit entry with the key in this file (an HMAC-SHA256 `mac`,
        /// checked by `ved audit verify --key FILE`). The file must live outside the data
        /// directory. Overrides `[store] audit_key` in the config.
        #[arg(long, value_name = "FILE")]
        audit_key: Option<PathBuf>,
        /// How operational logs are written on stderr: `text` for people, `json` (one object
        /// per line) for a log pipeline. Which ones: `RUST_LOG` (default `info`). The events
        /// on stdout are not logs and do not change.
        #[arg(long, value_enum, default_value = "text")]
        log_format: ved_cli::logs::LogFormat,
    },
    /// Re-execute an instance's journaled messages from its retained snapshot and check
    /// that every state and intent comes out the same; report the first divergence.
    Replay {
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        instance: String,
        /// Replay with these source files instead of the program recorded in the store,
        /// to see where a changed program would have acted differently.
        #[arg(long, value_name = "FILE", num_args = 1..)]
        program: Vec<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Show what running these program files on a data directory would do, acting on
    /// nothing and writing nothing: per instance, the fields added (with their defaults)
    /// and removed, type conflicts (exit 1), and the transitions and intents that would
    /// follow, assuming every intent succeeds.
    Plan {
        #[command(flatten)]
        from: From,
        /// The files of the (changed) program.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[arg(long)]
        json: bool,
        /// With `--cluster`: the nodes' key prefix in etcd.
        #[arg(long, value_name = "PREFIX", default_value = "/ved")]
        cluster_prefix: String,
        #[command(flatten)]
        etcd: ved_cli::cluster_run::EtcdFlags,
    },
    /// List a running daemon's instances (or one): name, domain, status, slice.
    Get {
        /// One instance; all of them if omitted.
        instance: Option<String>,
        #[command(flatten)]
        conn: client::Connection,
    },
    /// Show an instance of a running daemon: its state, goals, pending work and recent journal.
    Describe {
        instance: String,
        /// Journal entries to show, the most recent.
        #[arg(long, default_value_t = 10)]
        recent: usize,
        #[command(flatten)]
        conn: client::Connection,
    },
    /// Follow a running daemon's events as they happen (all instances, or one).
    Watch {
        instance: Option<String>,
        #[command(flatten)]
        conn: client::Connection,
    },
    /// Report an observation to a running daemon: `ved observe WorkerPool workers=3`.
    /// A value is JSON if it reads as JSON, else a string. Needs the write token.
    Observe {
        instance: String,
        #[arg(required = true, value_name = "FIELD=VALUE")]
        values: Vec<String>,
        #[command(flatten)]
        conn: client::Connection,
    },
    /// Print a shell completion script: `ved completions bash > /etc/bash_completion.d/ved`.
    Completions { shell: clap_complete::Shell },
    /// Print the manual page (roff): `ved man > /usr/local/share/man/man1/ved.1`.
    Man,
    /// Print the latest snapshot of each instance in a data directory or a cluster (read-only).
    Inspect {
        #[command(flatten)]
        from: From,
        /// Only this instance.
        instance: Option<String>,
        #[arg(long)]
        json: bool,
        /// With `--cluster`: the nodes' key prefix in etcd.
        #[arg(long, value_name = "PREFIX", default_value = "/ved")]
        cluster_prefix: String,
        #[command(flatten)]
        etcd: ved_cli::cluster_run::EtcdFlags,
    },
    /// Print an instance's causal journal: its recent slices, why, and what they did.
    Journal {
        #[command(flatten)]
        from: From,
        instance: String,
        #[arg(long)]
        json: bool,
        /// With `--cluster`: the nodes' key prefix in etcd.
        #[arg(long, value_name = "PREFIX", default_value = "/ved")]
        cluster_prefix: String,
        #[command(flatten)]
        etcd: ved_cli::cluster_run::EtcdFlags,
    },
    /// Print the audit log, check it with `ved audit verify`, or print its anchor with
    /// `ved audit head`.
    Audit {
        #[command(flatten)]
        from: From,
        #[command(subcommand)]
        action: Option<AuditAction>,
        #[arg(long, global = true)]
        json: bool,
        /// With `--cluster`: the nodes' key prefix in etcd.
        #[arg(long, value_name = "PREFIX", default_value = "/ved", global = true)]
        cluster_prefix: String,
        #[command(flatten)]
        etcd: ved_cli::cluster_run::EtcdFlags,
    },
}

/// Where `ved inspect`, `ved journal` and `ved audit` read: a data directory, or a cluster.
#[derive(clap::Args)]
#[group(multiple = false)]
struct From {
    #[arg(long, value_name = "DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// A cluster's etcd client URLs, comma-separated.
    #[arg(long, value_name = "URLS", value_delimiter = ',', global = true)]
    cluster: Vec<String>,
}

impl From {
    fn source(self, prefix: String, etcd: ved_cli::cluster_run::EtcdFlags) -> Result<inspect::Source, ExitCode> {
        match self.data_dir {
            Some(d) => Ok(inspect::Source::Dir(d)),
            None if !self.cluster.is_empty() => match etcd.options() {
                Ok(etcd) => Ok(inspect::Source::Cluster { endpoints: self.cluster, prefix, etcd }),
                Err(e) => {
                    eprintln!("error: {e}");
                    Err(exit::code(exit::USAGE))
                }
            },
            None => {
                eprintln!("error: say where the state is: `--data-dir DIR`, or `--cluster URLS` for a cluster's etcd");
                Err(exit::code(exit::USAGE))
            }
        }
    }
}

#[derive(Subcommand)]
enum AuditAction {
    /// Check that no entry was edited, removed or reordered. The chain alone cannot show a
    /// log rewritten whole by someone who can write the data directory: `--head` and `--key`
    /// check it against something kept outside. Exit 0 ok, 1 the check failed or the log
    /// cannot be read, 64 a usage error (a bad anchor, an unusable key file), 66 no data directory.
    Verify {
        /// An anchor `N:HASH` printed earlier by `ved audit head` and kept outside the data
        /// directory: entry N must still be there with that hash. Entries after it are fine.
        #[arg(long, value_name = "N:HASH")]
        head: Option<ved_store::Anchor>,
        /// The audit key file `ved run` was given (`--audit-key`, `[store] audit_key`): every
        /// entry's mac is checked.
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
    },
    /// Print the anchor of the committed log, `N:HASH` (its entry count and the hash of its
    /// last entry), once its chain is verified. Record it outside the data directory and
    /// check the log against it later with `ved audit verify --head N:HASH`.
    Head,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum DurabilityArg {
    Fsync,
    None,
}

fn main() -> ExitCode {
    // Usage errors exit 64, not clap's 2, which `ved verify` uses for "inconclusive".
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return exit::code(if e.use_stderr() { exit::USAGE } else { exit::OK });
        }
    };
    // `ved run` serves clients that may hang up; `ved test --junit` still has a file to
    // write after its reader is gone (it stops printing on its own).
    if !matches!(cli.command, Command::Run { .. } | Command::Test { junit: Some(_), .. }) {
        exit::die_quietly_on_closed_pipe();
    }
    match cli.command {
        Command::Check { files, config, format, color, bytecode } => {
            load::set_color(color.enabled());
            match format {
                Format::Text => check(&files, config.as_deref(), bytecode),
                Format::Json => ved_cli::check_cmd::check_json(&files, config.as_deref()),
            }
        }
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "ved", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Man => {
            let cmd = <Cli as clap::CommandFactory>::command();
            // One page: the synopsis, every option, and the subcommands with what they do.
            let mut out = Vec::new();
            let rendered = clap_mangen::Man::new(cmd).render(&mut out);
            match rendered.and_then(|()| std::io::Write::write_all(&mut std::io::stdout(), &out)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Get { instance, conn } => client::get(&conn, instance.as_deref()),
        Command::Describe { instance, recent, conn } => client::describe(&conn, &instance, recent),
        Command::Watch { instance, conn } => client::watch(&conn, instance.as_deref()),
        Command::Observe { instance, values, conn } => client::observe(&conn, &instance, &values),
        Command::Fmt { files, check, stdin } => {
            let files = if stdin { vec![PathBuf::from("-")] } else { files };
            fmt_cmd::fmt(&files, check)
        }
        Command::Lsp => ved_cli::lsp::run(),
        Command::Test { files, seed, filter, trace, format, junit, color } => {
            load::set_color(color.enabled());
            let out = test_cmd::Output { trace, format, junit };
            test_cmd::test(&files, seed, filter.as_deref(), &out)
        }
        Command::Verify { files, domain, failures, max_states, margin, max_len, format, color } => {
            load::set_color(color.enabled());
            let opts = ved_verify::Options { shape: ved_verify::Shape { margin, max_len }, failures, max_states };
            verify_cmd::verify(&files, domain.as_deref(), opts, format)
        }
        Command::Run {
            files,
            stdin,
            listen,
            cluster,
            node_id,
            lease_ttl,
            cluster_prefix,
            etcd,
            advertise,
            seed,
            config,
            data_dir,
            ephemeral,
            durability,
            recover,
            audit_key,
            log_format,
        } => {
            ved_cli::logs::init(log_format);
            if !cluster.is_empty() {
                let opts = run::RunOptions {
                    seed,
                    data_dir: None,
                    durability: ved_store::Durability::Fsync,
                    recover: false,
                    config: None,
                    flush: ved_store::Flush::Background,
                    limits: Default::default(),
                    wall_ms_at_start: Some(ved_store::time::unix_now_ms()),
                    audit_key: None,
                };
                let etcd = match etcd.options() {
                    Ok(o) => o,
                    Err(e) => {
                        eprintln!("error: {e}");
                        return exit::code(exit::USAGE);
                    }
                };
                let c = ved_cli::cluster_run::ClusterOptions {
                    endpoints: cluster,
                    node: node_id.unwrap_or_default(),
                    ttl: lease_ttl.max(1),
                    prefix: cluster_prefix,
                    listen,
                    advertise,
                    etcd,
                };
                return ved_cli::cluster_run::run_cluster(&files, config.as_deref(), opts, c);
            }
            let mode = if stdin { run::Mode::Stdin } else { run::Mode::Daemon { listen } };
            let durability = match durability.unwrap_or(DurabilityArg::Fsync) {
                DurabilityArg::Fsync => ved_store::Durability::Fsync,
                DurabilityArg::None => ved_store::Durability::None,
            };
            // Durable by default: without `--data-dir` the state lives in the user's state
            // directory, under a name derived from the program; `--ephemeral` opts out.
            let data_dir = match (data_dir, ephemeral) {
                (Some(dir), _) => Some(dir),
                (None, true) => None,
                (None, false) => match run::default_data_dir(&files) {
                    Ok(dir) => {
                        eprintln!(
                            "note: state is kept in {} (`--data-dir DIR` to choose, `--ephemeral` for none)",
                            dir.display()
                        );
                        Some(dir)
                    }
                    Err(e) => {
                        eprintln!("error: {e}");
                        eprintln!("  = hint: pass `--data-dir DIR`, or `--ephemeral` to keep no state");
                        return exit::code(exit::USAGE);
                    }
                },
            };
            run::run(
                &files,
                config.as_deref(),
                run::RunOptions {
                    seed,
                    data_dir,
                    durability,
                    recover,
                    config: None,
                    flush: ved_store::Flush::Background,
                    limits: Default::default(),
                    wall_ms_at_start: Some(ved_store::time::unix_now_ms()),
                    audit_key: None,
                },
                mode,
                audit_key.as_deref(),
            )
        }
        Command::Replay { data_dir, instance, program, json } => {
            replay_cmd::replay(&data_dir, &instance, &program, json)
        }
        Command::Plan { from, files, json, cluster_prefix, etcd } => match from.source(cluster_prefix, etcd) {
            Ok(src) => plan_cmd::plan(&src, &files, json),
            Err(code) => code,
        },
        Command::Inspect { from, instance, json, cluster_prefix, etcd } => match from.source(cluster_prefix, etcd) {
            Ok(src) => inspect::inspect(&src, instance.as_deref(), json),
            Err(code) => code,
        },
        Command::Journal { from, instance, json, cluster_prefix, etcd } => match from.source(cluster_prefix, etcd) {
            Ok(src) => inspect::journal(&src, &instance, json),
            Err(code) => code,
        },
        Command::Audit { from, action, json, cluster_prefix, etcd } => {
            match (from.source(cluster_prefix, etcd), action) {
                (Ok(src), Some(AuditAction::Verify { head, key })) => {
                    inspect::audit_verify(&src, head.as_ref(), key.as_deref(), json)
                }
                (Ok(src), Some(AuditAction::Head)) => inspect::audit_head(&src, json),
                (Ok(src), None) => inspect::audit(&src, json),
                (Err(code), _) => code,
            }
        }
    }
}

fn check(files: &[PathBuf], config: Option<&std::path::Path>, bytecode: bool) -> ExitCode {
    match load::load(files) {
        Ok(mut loaded) => {
            if let Some(path) = config {
                if let Err(code) = load::load_config(&mut loaded, path) {
                    return code;
                }
            }
            if bytecode {
                print!("{}", listing(&loaded.compiled));
            }
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

/// `ved check --bytecode`: each domain's code, one block per default, goal and step.
fn listing(p: &ved_vm::CompiledProgram) -> String {
    let mut out = String::new();
    for d in &p.domains {
        out.push_str(&format!("domain {}\n", d.name));
        for ((field, _), code) in d.fields.iter().zip(&d.defaults) {
            if let Some(code) = code {
                out.push_str(&format!("  default {field}:\n{}", ved_vm::disassemble(code)));
            }
        }
        for g in &d.goals {
            out.push_str(&format!("  goal {}:\n{}", g.name, ved_vm::disassemble(&g.code)));
        }
        for t in &d.transitions {
            out.push_str(&format!("  transition {}:\n{}", t.name, ved_vm::disassemble(&t.code)));
        }
    }
    out
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}
