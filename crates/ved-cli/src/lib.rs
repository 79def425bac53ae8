//! The `ved` command's library half: loading programs, the run driver (store,
//! output commit, journal, audit), conversions to JSON, and the read-only views
//! of a data directory, `ved verify`, `ved replay`, the daemon's HTTP API and
//! cluster mode. All I/O of the project lives at this edge; `main.rs` only
//! parses arguments and calls in here. It is a library so that tests can
//! drive the runtime with their own adapters.

pub mod cluster_run;
pub mod inspect;
pub use ved_adapters::json;
pub mod load;
pub mod replay_cmd;
pub mod run;
pub mod test_cmd;
pub mod verify_cmd;
