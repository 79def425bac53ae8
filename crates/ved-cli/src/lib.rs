//! The `ved` command's library half: the clients of `ved-engine` (`ved run --stdin`,
//! the daemon and its HTTP API, cluster nodes), the read-only views of a data
//! directory, `ved check`, `ved fmt`, `ved verify`, `ved replay`, `ved test` and
//! `ved lsp`. `main.rs` only parses arguments and calls in here; it is a library so
//! that tests can drive the same code.

pub mod check_cmd;
pub mod client;
pub mod cluster_run;
pub mod exit;
pub mod fmt_cmd;
pub mod inspect;
pub use ved_adapters::json;
pub mod load;
pub mod logs;
pub mod lsp;
pub mod memory;
pub mod output;
pub mod plan_cmd;
pub mod replay_cmd;
pub mod run;
pub mod systemd;
pub mod test_cmd;
pub mod verify_cmd;
