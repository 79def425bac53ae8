//! `ved-engine`: one engine for every way Ved runs. It owns the runtime, persistence
//! behind a trait ([`Persistence`]: the local store here, fenced etcd writes in
//! cluster mode), adapter dispatch ([`Adapters`]), output commit, journals, audit
//! episodes and time behind a trait ([`Clock`]). Inputs are typed ([`Observation`],
//! adapter results, API [`Call`]s, time) and events come out typed ([`EngineEvent`]).
//! `ved run --stdin`, the HTTP daemon, cluster nodes, the deterministic simulation
//! and programs that embed Ved are all clients of [`Engine`]: they decide where
//! inputs come from and where events go, and nothing else.
//!
//! ```no_run
//! use ved_engine::{load, Builder, EngineEvent, Observation};
//! # fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let program = load::read_program(&["examples/worker_pool.ved".into()])?;
//! let mut ved = Builder::new(program).data_dir("/var/lib/my-app/ved").start(Vec::<EngineEvent>::new())?;
//! ved.observe(Observation::set("WorkerPool", "probe", [("workers".to_string(), serde_json::json!(3))]))?;
//! ved.run_until_idle()?;
//! # Ok(()) }
//! ```

pub mod adapters;
pub mod calls;
pub mod clock;
mod engine;
pub mod event;
pub mod input;
pub mod load;
pub mod migrate;
pub mod persist;
pub mod persist_etcd;
mod stats;
pub mod strict_json;

pub use ved_adapters::json;

pub use adapters::{build_adapters, watched_fields, Adapters, Watchers};
pub use calls::{Call, Reply};
pub use clock::{Clock, ManualClock, WallClock};
pub use engine::*;
pub use event::{EngineEvent, JsonLines, Sink, SliceCause};
pub use input::{InputError, Line, Observation};
pub use load::{LoadError, Loaded};
pub use persist::Persistence;
