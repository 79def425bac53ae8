//! An audit episode closes only when the instance is stable with nothing in
//! flight, and it tells every correction made along the way. The real driver and
//! store run it, with intents held by the test (manual delivery), so the order
//! of results and observations is the test's choice, not the scheduler's.

mod common;

use common::root;
use std::sync::{Arc, Mutex};
use ved_adapters::{Inbound, IntentRequest};
use ved_cli::run::{Adapters, Driver, RunOptions};

struct Run {
    driver: Driver<Vec<u8>>,
    queue: Arc<Mutex<Vec<IntentRequest>>>,
    dir: std::path::PathBuf,
    line: u64,
}

impl Run {
    fn start(program: &str, tag: &str) -> Run {
        let dir = std::env::temp_dir().join(format!("ved-audit-ep-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let loaded = ved_cli::load::load(&[root().join(program)]).unwrap_or_else(|_| panic!("the program loads"));
        let queue = Arc::new(Mutex::new(Vec::new()));
        let opts = RunOptions {
            seed: 7,
            data_dir: Some(dir.clone()),
            durability: ved_store::Durability::None,
            recover: false,
            config: None,
            flush: ved_store::Flush::Manual,
            limits: Default::default(),
            wall_ms_at_start: None,
            audit_key: None,
        };
        let Ok(driver) = Driver::start(
            loaded,
            &opts,
            Adapters::manual(queue.clone()),
            ved_cli::run::JsonLines::new(Vec::new()),
            Box::new(|_| {}),
        ) else {
            panic!("the driver starts")
        };
        let mut run = Run { driver, queue, dir, line: 0 };
        run.flush();
        run
    }

    fn line(&mut self, text: &str) {
        self.line += 1;
        self.driver.handle_line(self.line, text);
        self.flush();
    }

    /// Output commit: intents leave once their slice is durable.
    fn flush(&mut self) {
        self.driver.flush().expect("flush");
    }

    /// Takes the intents that left so far, in emission order.
    fn take(&mut self) -> Vec<IntentRequest> {
        std::mem::take(&mut *self.queue.lock().unwrap())
    }

    fn answer(&mut self, i: &IntentRequest, ok: bool) {
        let outcome = if ok { Ok(()) } else { Err(ved_adapters::ActionError::failed("simulated failure")) };
        self.driver.handle_inbound(Inbound::Result { id: i.id.clone(), outcome });
        self.flush();
    }

    fn status(&self, name: &str) -> String {
        self.driver.runtime().instance(name).unwrap().status.to_string()
    }

    /// The audit entries written after boot (boot writes one of its own).
    fn audit(&self) -> Vec<String> {
        let all: Vec<String> =
            ved_store::read_only(&self.dir).expect("the store reads").audit.into_iter().map(|e| e.text).collect();
        all.into_iter().filter(|t| !t.starts_with("started at slice 0")).collect()
    }
}

#[test]
fn seed_001_results_that_land_after_a_recovery_stay_in_the_one_episode() {
    let mut r = Run::start("examples/database_routing.ved", "001");
    assert_eq!(r.status("DatabaseRouting"), "stable");
    r.line(r#"{"instance": "DatabaseRouting", "set": {"primary_status": "failed"}}"#);
    let out = r.take();
    assert_eq!(out.len(), 2, "failover and paging in the same tick: {out:?}");
    // The primary is back before either result: the goals hold, but two effects are out.
    r.line(r#"{"instance": "DatabaseRouting", "set": {"primary_status": "healthy"}}"#);
    assert_eq!(r.status("DatabaseRouting"), "waiting");
    assert!(r.audit().is_empty(), "an episode closed while intents were in flight: {:?}", r.audit());
    for i in &out {
        r.answer(i, true);
    }
    // The failover landed on a healthy primary: AutoRestore puts the route back.
    let restore = r.take();
    assert_eq!(restore.len(), 1, "{restore:?}");
    assert!(restore[0].args.iter().any(|a| a == "primary"), "{restore:?}");
    assert!(r.audit().is_empty(), "closed before the correction landed: {:?}", r.audit());
    r.answer(&restore[0], true);
    assert_eq!(r.status("DatabaseRouting"), "stable");
    let audit = r.audit();
    assert_eq!(audit.len(), 1, "one episode, one entry: {audit:?}");
    let text = &audit[0];
    for says in [
        "primary_status drifted to \"failed\"",
        "ExecuteFailover emitted",
        "TriggerPagerDuty emitted",
        "active_route = \"replica\"",
        "AutoRestore emitted",
        "active_route = \"primary\"",
        "stable again",
    ] {
        assert!(text.contains(says), "the episode should say `{says}`: {text}");
    }
    assert!(text.find("ExecuteFailover emitted").unwrap() < text.find("AutoRestore emitted").unwrap(), "{text}");
}

#[test]
fn a_degraded_instance_is_reported_at_once_and_the_episode_closes_when_stable() {
    let mut r = Run::start("examples/security_policy.ved", "degraded");
    for i in r.take() {
        r.answer(&i, true);
    }
    assert_eq!(r.status("SecurityPolicy"), "stable");
    r.line(r#"{"instance": "SecurityPolicy", "set": {"actual_ports": [80, 443, 22]}}"#);
    // Every close fails; time passes through the backoff until the breaker opens.
    let mut failures = 0;
    while r.status("SecurityPolicy") != "degraded" {
        for i in r.take() {
            r.answer(&i, false);
            failures += 1;
        }
        r.line(r#"{"advance_ms": 60000}"#);
        assert!(failures < 50, "never degraded");
    }
    let audit = r.audit();
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert!(audit[0].contains("not at the goal yet: degraded: CloseRoguePorts failed"), "{audit:?}");
    assert!(audit[0].contains("simulated failure"), "the reason quotes the last error: {audit:?}");
    // The firewall comes back; the next probe succeeds and the episode closes.
    r.line(r#"{"advance_ms": 60000}"#);
    for i in r.take() {
        r.answer(&i, true);
    }
    assert_eq!(r.status("SecurityPolicy"), "stable");
    let audit = r.audit();
    assert_eq!(audit.len(), 2, "{audit:?}");
    assert!(audit[1].contains("succeeded: actual_ports = [80, 443]"), "{audit:?}");
    assert!(audit[1].ends_with("stable again after 1 tick") || audit[1].contains("stable again"), "{audit:?}");
}
