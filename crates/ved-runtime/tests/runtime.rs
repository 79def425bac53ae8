//! Semantics of the scheduler, driven directly through the pure API.

use std::sync::Arc;
use ved_runtime::scenario::run_scenario;
use ved_runtime::{Cause, Event, IntentId, Runtime, Status};
use ved_syntax::SourceMap;
use ved_vm::{CompiledProgram, Value};

fn compile(src: &str) -> (ved_check::hir::Program, Arc<CompiledProgram>) {
    let mut sources = SourceMap::new();
    let id = sources.add("test.ved", src);
    let ast = ved_syntax::parse_file(id, src).unwrap_or_else(|d| panic!("{}", d.render(&sources)));
    let checked = ved_check::check_program(&[ast]);
    let program =
        checked.program.unwrap_or_else(|| panic!("{}", ved_syntax::diag::render_all(&checked.diagnostics, &sources)));
    let compiled = Arc::new(ved_vm::compile_program(&program));
    (program, compiled)
}

fn intents(events: &[Event]) -> Vec<(IntentId, String)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Intent(i) => Some((i.id.clone(), i.to_string())),
            _ => None,
        })
        .collect()
}

fn last_status(events: &[Event]) -> Option<Status> {
    events.iter().rev().find_map(|e| match e {
        Event::Status { status, .. } => Some(*status),
        _ => None,
    })
}

const ROUTING: &str = include_str!("../../../examples/database_routing.ved");

#[test]
fn state_changes_wait_for_the_intents_and_apply_when_all_succeed() {
    let (_, c) = compile(ROUTING);
    let mut rt = Runtime::new(c, 1).unwrap();
    let mut ev = Vec::new();
    rt.run(&mut ev);
    rt.observe("DatabaseRouting", vec![(0, Value::Str("failed".into()))]).unwrap();
    ev.clear();
    rt.run(&mut ev);
    assert_eq!(last_status(&ev), Some(Status::Waiting));
    // Both intents are out; nothing is applied yet.
    let out = intents(&ev);
    assert_eq!(out.len(), 2);
    let inst = rt.instance("DatabaseRouting").unwrap();
    assert_eq!(inst.state[1], Value::Str("primary".into()));
    assert_eq!(inst.state[2], Value::Bool(false));
    // The intent ids are instance/slice/index.
    assert_eq!(out[0].0.to_string(), "DatabaseRouting/2/0");
    assert_eq!(out[1].0.to_string(), "DatabaseRouting/3/0");
    rt.deliver(&out[0].0, true, None).unwrap();
    rt.run(&mut ev);
    assert_eq!(rt.instance("DatabaseRouting").unwrap().state[1], Value::Str("replica".into()));
    assert_eq!(rt.instance("DatabaseRouting").unwrap().state[2], Value::Bool(false));
    rt.deliver(&out[1].0, true, None).unwrap();
    ev.clear();
    rt.run(&mut ev);
    assert_eq!(rt.instance("DatabaseRouting").unwrap().state[2], Value::Bool(true));
    assert_eq!(last_status(&ev), Some(Status::Stable));
}

#[test]
fn an_observation_supersedes_a_held_write_to_the_same_field() {
    // OpenMissingPorts holds `actual_ports = [80, 443]` while its intent is out. The world then
    // reports port 22 open. The late acknowledgement must not paint over that report.
    let (_, c) = compile(include_str!("../../../examples/security_policy.ved"));
    let mut rt = Runtime::new(c, 1).unwrap();
    let mut ev = Vec::new();
    rt.run(&mut ev);
    let open = intents(&ev);
    assert_eq!(open.len(), 1, "{open:?}");
    let ports = |v: &[i64]| Value::List(Arc::new(v.iter().map(|p| Value::Int(*p)).collect()));
    rt.observe("SecurityPolicy", vec![(1, ports(&[80, 443, 22]))]).unwrap();
    ev.clear();
    rt.run(&mut ev);
    // CloseRoguePorts reads the field OpenMissingPorts holds: it waits for that one to end.
    assert!(intents(&ev).is_empty(), "a conflicting transition fired while another was in flight: {ev:?}");
    assert_eq!(last_status(&ev), Some(Status::Waiting));
    rt.deliver(&open[0].0, true, None).unwrap();
    ev.clear();
    rt.run(&mut ev);
    assert_eq!(rt.instance("SecurityPolicy").unwrap().state[1], ports(&[80, 443, 22]), "the ack applied a stale write");
    let close = intents(&ev);
    assert_eq!(close.len(), 1, "CloseRoguePorts fires on the observed state once Open ended: {close:?}");
    rt.deliver(&close[0].0, true, None).unwrap();
    ev.clear();
    rt.run(&mut ev);
    assert_eq!(rt.instance("SecurityPolicy").unwrap().state[1], ports(&[80, 443]));
    assert_eq!(last_status(&ev), Some(Status::Stable));
}

#[test]
fn a_failed_intent_drops_the_changes_backs_off_and_does_not_block_others() {
    let (_, c) = compile(ROUTING);
    let mut rt = Runtime::new(c, 1).unwrap();
    let mut ev = Vec::new();
    rt.run(&mut ev);
    rt.observe("DatabaseRouting", vec![(0, Value::Str("failed".into()))]).unwrap();
    ev.clear();
    rt.run(&mut ev);
    let out = intents(&ev);
    rt.deliver(&out[1].0, false, Some("pager down".into())).unwrap();
    rt.deliver(&out[0].0, true, None).unwrap();
    ev.clear();
    rt.run(&mut ev);
    let inst = rt.instance("DatabaseRouting").unwrap();
    assert_eq!(inst.state[1], Value::Str("replica".into()), "the failover is not blocked");
    assert_eq!(inst.state[2], Value::Bool(false), "the failed page's change is dropped");
    assert_eq!(inst.status, Status::Waiting);
    let retry_at = ev
        .iter()
        .find_map(|e| match e {
            Event::Retry { at_ms, attempt: 1, .. } => Some(*at_ms),
            _ => None,
        })
        .expect("a retry is scheduled");
    assert!((100..=200).contains(&retry_at), "first backoff is 200ms with jitter in [100, 200]: {retry_at}");
    // The pending transition is not fired again before its timer.
    rt.advance_time(retry_at - 1);
    ev.clear();
    rt.run(&mut ev);
    assert!(intents(&ev).is_empty());
    rt.advance_time(retry_at);
    ev.clear();
    rt.run(&mut ev);
    let again = intents(&ev);
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].1, "Alerts.PageEngineers(\"Primary DB Down\")");
    // A fresh slice, so a fresh id.
    assert_ne!(again[0].0, out[1].0);
    // Fails again: the second delay is longer.
    rt.deliver(&again[0].0, false, None).unwrap();
    ev.clear();
    rt.run(&mut ev);
    let second = ev
        .iter()
        .find_map(|e| match e {
            Event::Retry { at_ms, attempt, .. } => Some((*attempt, *at_ms)),
            _ => None,
        })
        .unwrap();
    assert_eq!(second.0, 2);
    assert!(second.1 >= retry_at + 200 && second.1 <= retry_at + 400, "{second:?}");
}

#[test]
fn backoff_resets_once_the_transition_succeeds() {
    let (_, c) = compile(ROUTING);
    let mut rt = Runtime::new(c, 1).unwrap();
    let mut ev = Vec::new();
    rt.run(&mut ev);
    let retry_of = |ev: &[Event]| {
        ev.iter().find_map(|e| match e {
            Event::Retry { at_ms, attempt, .. } => Some((*attempt, *at_ms)),
            _ => None,
        })
    };
    let page = |ev: &[Event]| intents(ev).into_iter().find(|(_, s)| s.starts_with("Alerts."));
    // An outage: the page fails twice, then gets through.
    rt.observe("DatabaseRouting", vec![(0, Value::Str("failed".into()))]).unwrap();
    ev.clear();
    rt.run(&mut ev);
    for (id, _) in intents(&ev).into_iter().filter(|(_, s)| s.starts_with("Network.")) {
        rt.deliver(&id, true, None).unwrap();
    }
    let mut now = 0;
    let mut last = None;
    for expected_attempt in 1..=2 {
        let (id, _) = page(&ev).expect("a page");
        rt.deliver(&id, false, None).unwrap();
        ev.clear();
        rt.run(&mut ev);
        let (attempt, at) = retry_of(&ev).expect("a retry");
        assert_eq!(attempt, expected_attempt);
        now = at;
        last = Some(at);
        rt.advance_time(now);
        ev.clear();
        rt.run(&mut ev);
    }
    let (id, _) = page(&ev).expect("the third page");
    rt.deliver(&id, true, None).unwrap();
    ev.clear();
    rt.run(&mut ev);
    assert_eq!(rt.instance("DatabaseRouting").unwrap().status, Status::Stable, "{last:?}");
    // Recovery, then a second outage: the first failure backs off from the start again.
    rt.observe("DatabaseRouting", vec![(0, Value::Str("healthy".into()))]).unwrap();
    ev.clear();
    rt.run(&mut ev);
    for (id, _) in intents(&ev) {
        rt.deliver(&id, true, None).unwrap();
    }
    rt.run(&mut ev);
    rt.observe("DatabaseRouting", vec![(0, Value::Str("failed".into()))]).unwrap();
    ev.clear();
    rt.run(&mut ev);
    let (id, _) = page(&ev).expect("a page in the second outage");
    rt.deliver(&id, false, None).unwrap();
    ev.clear();
    rt.run(&mut ev);
    let (attempt, at) = retry_of(&ev).expect("a retry");
    assert_eq!(attempt, 1, "the count was reset by the success");
    assert!((now + 100..=now + 200).contains(&at), "the first delay again: {at} after {now}");
}

#[test]
fn an_optimistic_transition_applies_its_state_at_once() {
    let src = "domain D {\n state { open: bool = true }\n goal open == false\n optimistic transition Close {\n step {\n if open {\n emit Fw.Close()\n open = false\n }\n }\n }\n}\n";
    let (_, c) = compile(src);
    let mut rt = Runtime::new(c, 0).unwrap();
    let mut ev = Vec::new();
    rt.run(&mut ev);
    // Applied before the intent's result arrives: the goal holds already, but the
    // instance is only waiting until the effect is answered.
    assert_eq!(rt.instance("D").unwrap().state[0], Value::Bool(false));
    assert_eq!(last_status(&ev), Some(Status::Waiting));
    let out = intents(&ev);
    assert_eq!(out.len(), 1);
    // A failure is reported and retried later, but the state is not rolled back.
    rt.deliver(&out[0].0, false, None).unwrap();
    ev.clear();
    rt.run(&mut ev);
    assert_eq!(rt.instance("D").unwrap().state[0], Value::Bool(false));
    assert!(ev.iter().any(|e| matches!(e, Event::Retry { .. })));
}

#[test]
fn a_fault_aborts_the_slice_keeps_the_state_and_backs_off() {
    let src = "domain D {\n state { x: int = 9223372036854775806\n y: int }\n goal y == 1\n transition Bump {\n step {\n x += 5\n y = 1\n }\n }\n}\n";
    let (_, c) = compile(src);
    let mut rt = Runtime::new(c, 0).unwrap();
    let mut ev = Vec::new();
    rt.run(&mut ev);
    let faults: Vec<_> = ev.iter().filter(|e| matches!(e, Event::Fault { .. })).collect();
    assert_eq!(faults.len(), 1, "one fault, not a tight loop: {ev:?}");
    if let Event::Fault { fault, .. } = faults[0] {
        assert!(fault.to_string().contains("overflow"), "{fault}");
    }
    let inst = rt.instance("D").unwrap();
    assert_eq!(inst.state, vec![Value::Int(9223372036854775806), Value::Int(0)]);
    assert_eq!(inst.status, Status::Waiting);
    // After the backoff it is tried once more, and faults once more.
    let t = rt.next_timer_ms().unwrap();
    rt.advance_time(t);
    ev.clear();
    rt.run(&mut ev);
    assert_eq!(ev.iter().filter(|e| matches!(e, Event::Fault { .. })).count(), 1);
}

#[test]
fn division_by_zero_is_a_fault() {
    let src =
        "domain D {\n state { d: int\n y: int }\n goal y == 1\n transition T {\n step {\n y = 10 / d\n }\n }\n}\n";
    let (_, c) = compile(src);
    let mut rt = Runtime::new(c, 0).unwrap();
    let mut ev = Vec::new();
    rt.run(&mut ev);
    assert!(ev
        .iter()
        .any(|e| matches!(e, Event::Fault { fault, .. } if fault.to_string().contains("division by zero"))));
    assert_eq!(rt.instance("D").unwrap().state[1], Value::Int(0));
}

#[test]
fn ticks_visit_transitions_in_declaration_order_and_stop_when_goals_hold() {
    let src = "domain D {\n state { a: int\n log: list<string> }\n goal a >= 1\n transition First {\n step {\n if a == 0 {\n a = 1\n log = log.add(\"first\")\n }\n }\n }\n transition Second {\n step {\n log = log.add(\"second\")\n }\n }\n}\n";
    let (_, c) = compile(src);
    let mut rt = Runtime::new(c, 0).unwrap();
    let mut ev = Vec::new();
    rt.run(&mut ev);
    // First made the goal hold, so Second never ran in that tick.
    assert_eq!(rt.instance("D").unwrap().state[1].to_string(), "[\"first\"]");
    assert_eq!(last_status(&ev), Some(Status::Stable));
}

#[test]
fn a_diverging_program_is_reported_as_livelock_after_the_tick_budget() {
    let src = "domain D {\n state { xs: list<int> }\n goal xs.length < 0\n transition Grow {\n step {\n xs = xs.add(1)\n }\n }\n}\n";
    let (_, c) = compile(src);
    let mut rt = Runtime::new(c, 0).unwrap();
    rt.limits.ticks_per_input_max = 50;
    let mut ev = Vec::new();
    rt.run(&mut ev);
    assert_eq!(last_status(&ev), Some(Status::Livelock));
    assert_eq!(rt.instance("D").unwrap().ticks, 50);
}

#[test]
fn a_new_observation_wakes_a_stuck_instance() {
    let src = include_str!("../../../examples/security_policy.ved");
    let (_, c) = compile(src);
    let mut rt = Runtime::new(c, 0).unwrap();
    let mut ev = Vec::new();
    // Boot opens the policy's ports; acknowledge that intent.
    rt.run(&mut ev);
    let boot = intents(&ev);
    assert_eq!(boot.len(), 1);
    rt.deliver(&boot[0].0, true, None).unwrap();
    ev.clear();
    rt.run(&mut ev);
    assert_eq!(last_status(&ev), Some(Status::Stable));
    let ports = |v: &[i64]| Value::List(Arc::new(v.iter().map(|p| Value::Int(*p)).collect()));
    rt.observe("SecurityPolicy", vec![(1, ports(&[443, 80]))]).unwrap();
    ev.clear();
    rt.run(&mut ev);
    assert_eq!(last_status(&ev), Some(Status::Stuck));
    rt.observe("SecurityPolicy", vec![(1, ports(&[80, 443]))]).unwrap();
    ev.clear();
    rt.run(&mut ev);
    assert_eq!(last_status(&ev), Some(Status::Stable));
    assert!(matches!(ev[0], Event::Slice { cause: Cause::Observe, .. }));
}

#[test]
fn an_observation_of_the_wrong_type_is_refused_and_changes_nothing() {
    let (_, c) = compile(ROUTING);
    let mut rt = Runtime::new(c, 0).unwrap();
    let err = rt.observe("DatabaseRouting", vec![(2, Value::Int(1))]).unwrap_err();
    assert!(err.to_string().contains("`alert_sent` is `bool`"), "{err}");
    assert_eq!(rt.instance("DatabaseRouting").unwrap().mailbox_len(), 0);
}

#[test]
fn every_seed_scenario_is_deterministic() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/");
    let pairs = [
        ("security_policy.ved", Some("security_policy.test.ved")),
        ("database_routing.ved", Some("database_routing.test.ved")),
        ("worker_pool.ved", Some("worker_pool.test.ved")),
        ("coarse_scaler.ved", None),
    ];
    let mut ran = 0;
    for (prog, tests) in pairs {
        let mut sources = SourceMap::new();
        let mut asts = Vec::new();
        for f in std::iter::once(prog).chain(tests) {
            let text = std::fs::read_to_string(format!("{root}{f}")).unwrap();
            let id = sources.add(f, text.clone());
            asts.push(ved_syntax::parse_file(id, &text).unwrap());
        }
        let checked = ved_check::check_program(&asts);
        let program = checked.program.unwrap();
        let compiled = ved_vm::compile_program(&program);
        for sc in &program.scenarios {
            let a = run_scenario(&program, &compiled, sc, 42);
            let b = run_scenario(&program, &compiled, sc, 42);
            assert!(a.passed(), "{}: {:?}", sc.name, a.failure);
            assert_eq!(a.events, b.events, "{}: events differ between runs", sc.name);
            assert_eq!(a.states, b.states, "{}: states differ between runs", sc.name);
            assert!(!a.events.is_empty());
            ran += 1;
        }
    }
    assert_eq!(ran, 23);
}

#[test]
fn an_idle_instance_costs_no_more_than_its_state() {
    let (_, c) = compile(ROUTING);
    let mut rt = Runtime::empty(c, 0);
    for i in 0..1_000 {
        rt.create_instance(&format!("db-{i}"), 0, Vec::new()).unwrap();
    }
    let mut ev = Vec::new();
    rt.run(&mut ev);
    // Put one through a failover and back so its scheduler state was used.
    rt.observe("db-7", vec![(0, Value::Str("failed".into()))]).unwrap();
    loop {
        ev.clear();
        rt.run(&mut ev);
        let out = intents(&ev);
        if out.is_empty() {
            break;
        }
        for (id, _) in out {
            rt.deliver(&id, true, None).unwrap();
        }
    }
    for inst in rt.instances() {
        assert_eq!(inst.status, Status::Stable);
        assert_eq!(inst.scheduler_heap_bytes(), 0, "{} holds scheduler memory while idle", inst.name);
    }
    // The instance struct itself is a fixed, small header next to its state (280 bytes on
    // x86-64 since the last errors are kept for the degraded reason).
    assert!(std::mem::size_of::<ved_runtime::Instance>() <= 288, "{}", std::mem::size_of::<ved_runtime::Instance>());
}

#[test]
fn a_restored_snapshot_resumes_at_the_next_slice_exactly() {
    use ved_runtime::{Instance, Limits, Progress, RetryPolicy};
    let (_, c) = compile(include_str!("../../../examples/worker_pool.ved"));
    let dom = &c.domains[0];
    let (policy, limits) = (RetryPolicy::default(), Limits::default());
    // Reference run, one step at a time, with a snapshot before each step.
    let mut vm = ved_vm::Vm::new();
    let mut inst = Instance::new("WorkerPool", 0, vm.initial_state(dom).unwrap(), 3);
    let mut snaps = Vec::new();
    let mut per_step = Vec::new();
    loop {
        snaps.push(inst.snapshot());
        let mut ev = Vec::new();
        let p = inst.step(dom, &mut vm, &policy, &limits, &mut ev);
        per_step.push(ev);
        if matches!(p, Progress::Idle(_)) {
            break;
        }
    }
    assert!(snaps.len() >= 6, "one step per slice: {}", snaps.len());
    // From every snapshot, a restored instance produces exactly the rest of the run.
    for (k, snap) in snaps.into_iter().enumerate() {
        let mut again = Instance::restore(snap);
        let mut ev = Vec::new();
        again.run(dom, &mut vm, &policy, &limits, &mut ev);
        let expected: Vec<Event> = per_step[k..].iter().flatten().cloned().collect();
        assert_eq!(ev, expected, "diverged after restoring snapshot {k}");
        assert_eq!(again.state, inst.state);
        assert_eq!(again.slice, inst.slice);
    }
}

/// `Runtime::restore_instance` queues only an instance with work to resume (mid-tick or
/// converging); from every snapshot of a run, the restored runtime still produces exactly
/// the rest of it, and one restored at rest has no work at all.
#[test]
fn a_runtime_restores_every_snapshot_of_a_run_and_queues_only_unfinished_ones() {
    use ved_runtime::{Instance, Limits, Progress, RetryPolicy};
    let (_, c) = compile(include_str!("../../../examples/worker_pool.ved"));
    let dom = &c.domains[0];
    let (policy, limits) = (RetryPolicy::default(), Limits::default());
    let mut vm = ved_vm::Vm::new();
    let mut inst = Instance::new("WorkerPool", 0, vm.initial_state(dom).unwrap(), 3);
    let (mut snaps, mut per_step) = (Vec::new(), Vec::new());
    loop {
        snaps.push(inst.snapshot());
        let mut ev = Vec::new();
        let p = inst.step(dom, &mut vm, &policy, &limits, &mut ev);
        per_step.push(ev);
        if matches!(p, Progress::Idle(_)) {
            break;
        }
    }
    // The pool's workers are confirmed by results: answer every intent to reach rest.
    let mut resting = inst.snapshot();
    resting.pending.clear();
    resting.status = Status::Stable;
    resting.tick_cursor = None;
    for (k, snap) in snaps.into_iter().chain([resting]).enumerate() {
        let at_rest = snap.tick_cursor.is_none() && snap.status != Status::Converging;
        let mut rt = Runtime::empty(c.clone(), 1);
        rt.restore_instance(snap).unwrap();
        assert_eq!(rt.has_work(), !at_rest, "snapshot {k}");
        let mut ev = Vec::new();
        rt.run(&mut ev);
        let expected: Vec<Event> = per_step.get(k..).unwrap_or_default().iter().flatten().cloned().collect();
        if at_rest {
            assert!(ev.is_empty(), "snapshot {k} at rest ran: {ev:?}");
        } else {
            assert_eq!(ev, expected, "diverged after restoring snapshot {k}");
        }
    }
}

#[test]
fn undelivered_intents_survive_a_snapshot_with_their_ids() {
    let (_, c) = compile(ROUTING);
    let mut rt = Runtime::new(c, 1).unwrap();
    let mut ev = Vec::new();
    rt.run(&mut ev);
    rt.observe("DatabaseRouting", vec![(0, Value::Str("failed".into()))]).unwrap();
    ev.clear();
    rt.run(&mut ev);
    let sent = intents(&ev);
    let snap = rt.instance("DatabaseRouting").unwrap().snapshot();
    let restored = ved_runtime::Instance::restore(snap);
    let again: Vec<(IntentId, String)> =
        restored.undelivered().into_iter().map(|i| (i.id.clone(), i.to_string())).collect();
    assert_eq!(again, sent);
}

#[test]
fn a_removed_instance_leaves_the_others_working() {
    // Cluster mode hands instances to other nodes: removing one must not disturb the rest.
    let src = "domain A {\n  state { n: int }\n  goal n == 2\n  transition up { step { if n < 2 { n += 1 } } }\n}\ndomain B {\n  state { m: int }\n  goal m == 3\n  transition up { step { if m < 3 { m += 1 } } }\n}\n";
    let (_, c) = compile(src);
    let mut rt = Runtime::new(c, 1).unwrap();
    let snap = rt.remove_instance("A").expect("A exists");
    assert_eq!(snap.name, "A");
    assert!(rt.instance("A").is_none());
    let mut ev = Vec::new();
    rt.run(&mut ev);
    assert_eq!(rt.instance("B").unwrap().state[0], Value::Int(3));
    // And it can come back from its snapshot.
    rt.restore_instance(snap).unwrap();
    rt.run(&mut ev);
    assert_eq!(rt.instance("A").unwrap().state[0], Value::Int(2));
    assert!(rt.remove_instance("nobody").is_none());
}

/// Removing takes the last instance into the hole: names still find their instances, and
/// the instances queued to run (the removed one's place, the moved one's) run exactly once.
#[test]
fn removing_instances_keeps_names_and_the_ready_queue_right() {
    let src = "domain A {\n  state { n: int }\n  goal n == 2\n  transition up { step { if n < 2 { n += 1 } } }\n}\n";
    let (_, c) = compile(src);
    let mut rt = Runtime::empty(c, 1);
    for i in 0..6 {
        rt.create_instance(&format!("a{i}"), 0, Vec::new()).unwrap();
    }
    let mut ev = Vec::new();
    rt.run(&mut ev);
    // a1, a3 and a5 are woken (queued); then a1 (queued) and a2 (not) go, a5 (queued) and
    // a4 (not) move into their places.
    for name in ["a1", "a3", "a5"] {
        rt.observe(name, vec![(0, Value::Int(0))]).unwrap();
    }
    assert_eq!(rt.remove_instance("a1").unwrap().name, "a1");
    assert_eq!(rt.remove_instance("a2").unwrap().name, "a2");
    let names: Vec<&str> = rt.instances().iter().map(|i| &*i.name).collect();
    assert_eq!(names.len(), 4);
    for name in ["a0", "a3", "a4", "a5"] {
        assert_eq!(&*rt.instance(name).unwrap().name, name);
    }
    let before: Vec<u64> = ["a0", "a3", "a4", "a5"].iter().map(|n| rt.instance(n).unwrap().slice).collect();
    ev.clear();
    rt.run(&mut ev);
    let after: Vec<u64> = ["a0", "a3", "a4", "a5"].iter().map(|n| rt.instance(n).unwrap().slice).collect();
    // Woken ones applied their observation and climbed back (1 + 2 slices); the others did nothing.
    assert_eq!(after.iter().zip(&before).map(|(a, b)| a - b).collect::<Vec<_>>(), vec![0, 3, 0, 3]);
    assert!(["a0", "a3", "a4", "a5"].iter().all(|n| rt.instance(n).unwrap().state[0] == Value::Int(2)));
    assert!(!rt.has_work());
}

/// A tick visits only the instances with a timer due (an index by deadline), and one that
/// slept through many ticks steps with the clock caught up.
#[test]
fn timers_fire_from_an_index_and_idle_instances_catch_up_with_the_clock() {
    let src = "domain S {\n  state { want: int = 1\n have: int }\n  goal have == want\n  transition fix {\n    step {\n      if have != want {\n        emit Ops.Set(want)\n        have = want\n      }\n    }\n  }\n}\n";
    let (_, c) = compile(src);
    let mut rt = Runtime::empty(c, 1);
    for i in 0..50 {
        rt.create_instance(&format!("s{i}"), 0, Vec::new()).unwrap();
    }
    let mut ev = Vec::new();
    rt.run(&mut ev);
    // Every instance emitted an intent: all succeed but s7's and s30's, which back off.
    for (id, _) in intents(&ev) {
        let fail = matches!(&*id.instance, "s7" | "s30");
        rt.deliver(&id, !fail, fail.then(|| "down".to_string())).unwrap();
    }
    ev.clear();
    rt.run(&mut ev);
    let due = rt.next_timer_ms().expect("two retries are waiting");
    assert!(due > 0);
    rt.remove_instance("s30").unwrap();
    assert_eq!(rt.next_timer_ms(), Some(due), "s7's timer is still filed");
    rt.advance_time(due - 1);
    assert!(!rt.has_work());
    rt.advance_time(due + 5_000);
    assert!(rt.has_work());
    ev.clear();
    rt.run(&mut ev);
    // Only s7 ran, at the runtime's time; the others slept through and did not move.
    let ran: std::collections::BTreeSet<&str> = ev
        .iter()
        .filter_map(|e| match e {
            Event::Intent(i) => Some(&*i.id.instance),
            _ => None,
        })
        .collect();
    assert_eq!(ran, ["s7"].into_iter().collect());
    assert!(rt.instance("s7").unwrap().now_ms >= due + 5_000);
    assert!(rt.instance("s8").unwrap().now_ms < due);
    // An observation wakes s8: it steps at the runtime's time, not at the time it fell asleep.
    rt.observe("s8", vec![(0, Value::Int(2))]).unwrap();
    ev.clear();
    rt.run(&mut ev);
    assert!(rt.instance("s8").unwrap().now_ms >= due + 5_000);
}

#[test]
fn an_intent_id_reads_back_from_its_text() {
    let id = IntentId { instance: Arc::from("team/web"), slice: 42, index: 3 };
    assert_eq!(IntentId::parse(&id.to_string()), Some(id));
    assert_eq!(IntentId::parse("Web/x/0"), None);
    assert_eq!(IntentId::parse("nothing"), None);
}

/// A degraded instance says why, quoting the last error, even when it is woken while its
/// probe is in flight (the backoff that held the error is gone by then).
#[test]
fn a_degraded_reason_quotes_the_last_error_while_a_probe_is_in_flight() {
    let src = "domain D {\n  state {\n    want: int = 1\n    have: int = 0\n    noise: int = 0\n  }\n  goal have == want\n  transition fix {\n    step {\n      if have != want {\n        emit A.Set(want)\n        have = want\n      }\n    }\n  }\n}\n";
    let (_, c) = compile(src);
    let mut rt = Runtime::new(c, 1).unwrap();
    rt.policy = ved_runtime::RetryPolicy { breaker_after: 2, ..Default::default() };
    let mut ev = Vec::new();
    let reason = |ev: &[Event]| {
        ev.iter().rev().find_map(|e| match e {
            Event::Status { status: Status::Degraded, reason, .. } => reason.clone(),
            _ => None,
        })
    };
    for _ in 0..2 {
        ev.clear();
        rt.run(&mut ev);
        let out = intents(&ev);
        assert_eq!(out.len(), 1, "{ev:?}");
        rt.deliver(&out[0].0, false, Some("the API is down".into())).unwrap();
        ev.clear();
        rt.run(&mut ev);
        let next = rt.next_timer_ms().unwrap();
        if last_status(&ev) != Some(Status::Degraded) {
            rt.advance_time(next);
        }
    }
    assert!(reason(&ev).is_some_and(|r| r.contains("the API is down")), "{ev:?}");
    // The probe goes out; while it is in flight an unrelated reading wakes the instance.
    rt.advance_time(rt.next_timer_ms().unwrap());
    ev.clear();
    rt.run(&mut ev);
    assert_eq!(intents(&ev).len(), 1, "the probe");
    rt.observe("D", vec![(2, Value::Int(5))]).unwrap();
    ev.clear();
    rt.run(&mut ev);
    assert_eq!(last_status(&ev), Some(Status::Degraded), "{ev:?}");
    let r = reason(&ev).unwrap();
    assert!(r.contains("last error: the API is down"), "{r}");
}

#[test]
fn a_transition_that_succeeds_again_forgets_its_last_error() {
    let (_, c) = compile(ROUTING);
    let mut rt = Runtime::new(c, 1).unwrap();
    let mut ev = Vec::new();
    rt.run(&mut ev);
    rt.observe("DatabaseRouting", vec![(0, Value::Str("failed".into()))]).unwrap();
    ev.clear();
    rt.run(&mut ev);
    let out = intents(&ev);
    rt.deliver(&out[1].0, false, Some("pager down".into())).unwrap();
    rt.deliver(&out[0].0, true, None).unwrap();
    ev.clear();
    rt.run(&mut ev);
    assert!(rt.instance("DatabaseRouting").unwrap().snapshot().last_errors.len() == 1);
    rt.advance_time(rt.next_timer_ms().unwrap());
    ev.clear();
    rt.run(&mut ev);
    for (id, _) in intents(&ev) {
        rt.deliver(&id, true, None).unwrap();
    }
    ev.clear();
    rt.run(&mut ev);
    let inst = rt.instance("DatabaseRouting").unwrap();
    assert_eq!(inst.status, Status::Stable);
    assert!(inst.snapshot().last_errors.is_empty(), "{:?}", inst.snapshot().last_errors);
    assert_eq!(inst.scheduler_heap_bytes(), 0);
}
