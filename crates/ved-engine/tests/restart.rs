//! A restart writes nothing for instances that were restored at rest: a fleet created at
//! its goal and never observed is not appended to the log again on every start (it was:
//! its whole state, each time).

use std::collections::BTreeMap;
use std::path::Path;

fn bytes_of(dir: &Path) -> BTreeMap<String, u64> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.metadata().map(|m| m.len()).unwrap_or(0)))
        .collect()
}

/// A program of one pool, created at its goal, on `dir`, run until idle.
fn start_pool(dir: &Path) -> ved_engine::Engine<Vec<ved_engine::EngineEvent>> {
    let src = "domain Pool {\n  state {\n    workers: int = 5\n  }\n  goal workers == 5\n}\n";
    let loaded = ved_engine::load::check_texts(vec![("pool.ved".into(), src.into())]).unwrap();
    let mut ved = ved_engine::Builder::new(loaded)
        .data_dir(dir)
        .start(Vec::<ved_engine::EngineEvent>::new())
        .unwrap_or_else(|e| panic!("{e}"));
    ved.run_until_idle().unwrap();
    ved
}

#[test]
fn restored_instances_at_slice_zero_are_not_recorded_again() {
    let dir = std::env::temp_dir().join(format!("ved-engine-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let start = || start_pool(&dir);
    let ved = start();
    assert_eq!(ved.runtime().instance("Pool").unwrap().slice, 0, "created at its goal, it never ran");
    ved.finish().unwrap();
    let after_first = bytes_of(&dir);
    // Started again (and flushed): the store is exactly as it was.
    let mut ved = start();
    ved.flush().unwrap();
    assert_eq!(bytes_of(&dir), after_first, "the restart appended records");
    // Nothing to tell either: no episode is opened for an instance restored at rest.
    ved.finish().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_fleet_created_at_rest_restarts_without_episodes_or_writes() {
    let dir = std::env::temp_dir().join(format!("ved-engine-fleet-restart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let start = || start_pool(&dir);
    let mut ved = start();
    let items: Vec<serde_json::Value> =
        (0..20).map(|i| serde_json::json!({"name": format!("p{i}"), "domain": "Pool"})).collect();
    ved.call(ved_engine::Call::CreateMany { items, single: false, max_instances: 100 }, Box::new(|_| {}));
    ved.run_until_idle().unwrap();
    ved.finish().unwrap();
    let audit_before = ved_store::read_only(&dir).unwrap().audit.len();
    let mut ved = start();
    ved.flush().unwrap();
    let events = ved.finish().unwrap();
    let statuses = events.iter().filter(|e| matches!(e, ved_engine::EngineEvent::Status { .. })).count();
    assert_eq!(statuses, 0, "restored instances at rest do not run again: {events:?}");
    assert_eq!(ved_store::read_only(&dir).unwrap().audit.len(), audit_before, "no episode was audited");
    let _ = std::fs::remove_dir_all(&dir);
}
