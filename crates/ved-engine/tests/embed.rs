//! The embedding example compiles and does what it says: Ved drives an adapter
//! implemented in Rust through the `Actuator` trait.

#[path = "../examples/embed.rs"]
#[allow(dead_code)]
mod embed;

#[test]
fn an_embedded_adapter_opens_the_wanted_ports_and_closes_a_rogue_one() {
    let open = embed::run().unwrap();
    assert_eq!(open, vec![80, 443]);
}

#[test]
fn the_embedded_engine_reports_typed_events_and_typed_errors() {
    let program = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/security_policy.ved");
    let loaded = ved_engine::load::read_program(&[program]).unwrap();
    let mut ved = ved_engine::Builder::new(loaded).start(Vec::<ved_engine::EngineEvent>::new()).unwrap();
    let bad = ved_engine::Observation::set("Nope", "test", [("x".to_string(), serde_json::json!(1))]);
    let e = ved.observe(bad).unwrap_err();
    assert!(
        matches!(&e, ved_engine::InputError::NoInstance { name, known } if name == "Nope" && known == &["SecurityPolicy"])
    );
    let bad =
        ved_engine::Observation::set("SecurityPolicy", "test", [("actual_ports".to_string(), serde_json::json!("x"))]);
    assert!(matches!(ved.observe(bad), Err(ved_engine::InputError::BadValue { .. })));
    ved.run_until_idle().unwrap();
    let events = ved.finish().unwrap();
    // Opening the wanted ports is an intent, then the instance rests.
    assert!(events
        .iter()
        .any(|e| matches!(e, ved_engine::EngineEvent::Intent { action, .. } if action == "OpenPorts")));
    assert!(matches!(events.last(), Some(ved_engine::EngineEvent::Status { status: ved_runtime::Status::Stable, .. })));
    let missing = ved_engine::load::read_program(&["/nonexistent.ved".into()]).err().unwrap();
    assert!(matches!(missing, ved_engine::LoadError::File { .. }));
}

#[test]
fn an_engine_built_with_a_data_directory_resumes_after_a_restart() {
    let dir = std::env::temp_dir().join(format!("ved-embed-builder-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let program = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/security_policy.ved");
    let firewall = std::sync::Arc::new(embed::MemoryFirewall::default());
    let start = || {
        let loaded = ved_engine::load::read_program(std::slice::from_ref(&program)).unwrap();
        let Ok(ved) = ved_engine::Builder::new(loaded)
            .adapter("Firewall", firewall.clone())
            .data_dir(&dir)
            .retry(ved_runtime::RetryPolicy { breaker_after: 2, ..Default::default() })
            .start(Vec::<ved_engine::EngineEvent>::new())
        else {
            panic!("the engine starts")
        };
        ved
    };
    let mut ved = start();
    // With a data directory, intents wait until their slice is durable (output commit).
    ved.run_until_idle().unwrap();
    let slice = ved.runtime().instance("SecurityPolicy").unwrap().slice;
    assert_eq!(ved.runtime().instance("SecurityPolicy").unwrap().status.as_str(), "stable");
    ved.finish().unwrap();
    assert_eq!(firewall.open.lock().unwrap().iter().copied().collect::<Vec<_>>(), vec![80, 443]);
    // A second engine on the same directory resumes: nothing runs again, nothing is re-sent.
    firewall.open.lock().unwrap().clear();
    let mut ved = start();
    ved.run_until_idle().unwrap();
    assert_eq!(ved.runtime().instance("SecurityPolicy").unwrap().slice, slice);
    assert!(firewall.open.lock().unwrap().is_empty(), "no intent went out twice");
    ved.finish().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
