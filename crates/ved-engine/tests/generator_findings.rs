//! What the program generator (`tests/fuzz.rs`) needed from the engine, or found in it:
//! - the scheduler's bounds given before the start (`RunOptions::limits`) bound the start
//!   itself: a program that never reaches its goal used to run 10,000 ticks at boot, whatever
//!   a caller set afterwards;
//! - `Engine::finish` on a store in manual flush mode writes its checkpoint (it waited for a
//!   batch that only a flush would write: "batch N is queued; manual mode writes it only on flush");
//! - an episode's log is bounded: an intent failing every minute for hours made it grow
//!   without bound, and every status change copied it whole (seed 6130758357573144410 of the
//!   generator ran for minutes on one `advance_ms` of a day).

use std::path::Path;
use ved_engine::{Adapters, Engine, EngineEvent, RunOptions};

/// Never at its goal; each tick grows a list (seed 5412126991504962750 of the generator, reduced).
const GROWER: &str = "domain D {\n  state {\n    f0: list<string> = []\n  }\n  goal false\n  transition t0 {\n    step {\n      f0 = f0.add(\"webk\")\n    }\n  }\n}\n";

/// Reaches its goal in one step that emits: a journal, an intent, an audit entry.
const POOL: &str = "domain Pool {\n  state {\n    workers: int = 0\n  }\n  goal workers == 3\n  transition scale {\n    step {\n      emit Pool.Start()\n      workers = 3\n    }\n  }\n}\n";

fn opts(dir: Option<&Path>, flush: ved_store::Flush, limits: ved_runtime::Limits) -> RunOptions {
    RunOptions {
        seed: 7,
        data_dir: dir.map(Path::to_path_buf),
        durability: ved_store::Durability::None,
        recover: false,
        config: None,
        flush,
        limits,
        wall_ms_at_start: None,
        audit_key: None,
    }
}

fn start(src: &str, o: &RunOptions) -> Engine<Vec<EngineEvent>> {
    let loaded = ved_engine::load::check_texts(vec![("p.ved".into(), src.into())]).unwrap();
    let adapters = Adapters::single(std::sync::Arc::new(ved_adapters::LogDriver));
    Engine::start(loaded, o, adapters, Vec::new(), Box::new(|_| {})).unwrap_or_else(|e| panic!("{e}"))
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ved-engine-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn limits_given_in_the_options_bound_the_start() {
    let tight = ved_runtime::Limits { ticks_per_input_max: 20, mailbox_max: 8, ..Default::default() };
    let ved = start(GROWER, &opts(None, ved_store::Flush::Manual, tight));
    let d = ved.runtime().instance("D").unwrap();
    assert!(d.ticks <= 21, "the start ran {} ticks under a bound of 20", d.ticks);
    assert_eq!(ved.runtime().limits, tight);
    // The bound is what stops it: a looser one lets the start run longer (the default, 10,000
    // ticks of a growing list, took the generator 34 s and 2.3 GB).
    let ved = start(
        GROWER,
        &opts(
            None,
            ved_store::Flush::Manual,
            ved_runtime::Limits { ticks_per_input_max: 200, mailbox_max: 8, ..Default::default() },
        ),
    );
    let d = ved.runtime().instance("D").unwrap();
    assert!(d.ticks > 100, "a bound of 200: {} ticks", d.ticks);
}

#[test]
fn the_builder_passes_its_limits_to_the_start() {
    let loaded = ved_engine::load::check_texts(vec![("p.ved".into(), GROWER.into())]).unwrap();
    let ved = ved_engine::Builder::new(loaded)
        .limits(ved_runtime::Limits { ticks_per_input_max: 10, mailbox_max: 8, ..Default::default() })
        .start(Vec::<EngineEvent>::new())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(ved.runtime().instance("D").unwrap().ticks <= 11);
}

#[test]
fn finish_checkpoints_a_store_in_manual_flush_mode() {
    let dir = temp_dir("manual-finish");
    let o = opts(Some(&dir), ved_store::Flush::Manual, ved_runtime::Limits::default());
    let mut ved = start(POOL, &o);
    ved.handle_line(1, "{\"instance\": \"Pool\", \"set\": {\"workers\": 1}}");
    ved.run_until_idle().unwrap();
    let memory = ved.runtime().instance("Pool").unwrap().snapshot();
    assert_eq!(memory.slice, 5, "observed, stepped, emitted and confirmed");
    // The checkpoint is queued by `finish`; in manual mode only a flush writes it.
    ved.finish().unwrap_or_else(|e| panic!("finish on a manual-flush store: {e}"));
    let names: Vec<String> =
        std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert!(names.iter().any(|n| n.starts_with("checkpoint-")), "no checkpoint written: {names:?}");
    let rec = ved_store::read_only(&dir).unwrap();
    assert_eq!(rec.snapshots["Pool"].snapshot, memory, "the checkpoint holds other state than the engine did");
    // And it opens again, at rest.
    let ved = start(POOL, &o);
    assert_eq!(ved.runtime().instance("Pool").unwrap().snapshot(), memory);
    ved.finish().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Fails its first `n` deliveries, then succeeds.
struct FailFirst(std::sync::atomic::AtomicU64);

impl ved_adapters::Actuator for FailFirst {
    fn deliver(&self, _intent: &ved_adapters::IntentRequest) -> ved_adapters::ActionResult {
        let left = self.0.load(std::sync::atomic::Ordering::Relaxed);
        if left > 0 {
            self.0.store(left - 1, std::sync::atomic::Ordering::Relaxed);
            return Err(ved_adapters::ActionError::failed("not yet"));
        }
        Ok(())
    }
}

#[test]
fn a_long_episode_keeps_its_beginning_and_its_end_and_says_what_it_left_out() {
    let dir = temp_dir("long-episode");
    let o = opts(Some(&dir), ved_store::Flush::Manual, ved_runtime::Limits::default());
    let loaded = ved_engine::load::check_texts(vec![("p.ved".into(), POOL.into())]).unwrap();
    let failing = Adapters::single(std::sync::Arc::new(FailFirst(std::sync::atomic::AtomicU64::new(40))));
    let mut ved = Engine::start(loaded, &o, failing, Vec::new(), Box::new(|_| {})).unwrap();
    ved.run_until_idle().unwrap();
    // 40 failures (an entry each, and one per emit), a retry at most a minute after another.
    // In manual flush mode an advance releases the intents of one round: a minute per line.
    for n in 1..=120 {
        ved.handle_line(n, "{\"advance_ms\": 60000}");
        ved.run_until_idle().unwrap();
    }
    let retries = ved.output().iter().filter(|e| matches!(e, EngineEvent::Retry { .. })).count();
    assert_eq!(ved.status("Pool"), Some(ved_runtime::Status::Stable), "after {retries} retries");
    ved.finish().unwrap();
    let audit = ved_store::read_only(&dir).unwrap().audit;
    let closing = audit.iter().find(|e| e.text.contains("stable again")).expect("the episode's closing entry");
    let parts: Vec<&str> = closing.text.split("; ").collect();
    // 64 entries, the gap and the end (a note of its own may hold a "; ").
    assert!(parts.len() <= 70, "{} parts in one audit entry: {}", parts.len(), closing.text);
    assert!(parts[0].starts_with("started at slice 0"), "{}", parts[0]);
    assert!(parts.iter().any(|p| p.ends_with(" more entries")), "no word of what was left out: {}", closing.text);
    assert!(parts.last().unwrap().starts_with("stable again"), "{}", closing.text);
    for e in &audit {
        assert!(e.text.len() < 16_384, "an audit entry of {} bytes", e.text.len());
    }
    let _ = std::fs::remove_dir_all(&dir);
}
