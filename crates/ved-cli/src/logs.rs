//! Operational logs: what the daemon does and meets (its store stalling, a watcher's
//! command failing, every API request), on stderr through `tracing`. Which ones are
//! written is `RUST_LOG`'s (default `info`); how, `--log-format` (`text`, or `json`: one
//! object per line). The events on stdout are the product's interface, not logs, and
//! never go through here.

use tracing_subscriber::EnvFilter;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the subscriber for this process. A `RUST_LOG` that does not parse is reported
/// and the default used: a typo must not silence the logs.
pub fn init(format: LogFormat) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => EnvFilter::try_new(&spec).unwrap_or_else(|e| {
            eprintln!("warning: RUST_LOG={spec:?} is not a valid filter ({e}); using `info`");
            EnvFilter::new("info")
        }),
        _ => EnvFilter::new("info"),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // Errors here mean a subscriber is already set (a test calling twice): keep that one.
    let _ = match format {
        LogFormat::Text => {
            builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).with_target(false).try_init()
        }
        LogFormat::Json => builder.json().with_current_span(false).with_span_list(false).try_init(),
    };
}
