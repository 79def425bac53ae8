//! The explorer's model on the seeds: the access sets the runtime serializes on,
//! and the lost update that serialization prevents.

use std::path::Path;
use ved_check::hir;
use ved_verify::explore::{access_sets, Edge, Explorer, Kind};
use ved_verify::{verify_domain_in, Model, Options, Problem, TraceEdge};
use ved_vm::{CompiledDomain, Value};

fn load(file: &str) -> (hir::Domain, CompiledDomain) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(file);
    let src = std::fs::read_to_string(&path).unwrap();
    let mut sources = ved_syntax::SourceMap::new();
    let id = sources.add(file, src.clone());
    let ast = ved_syntax::parse_file(id, &src).expect("the seed parses");
    let program = ved_check::check_program(&[ast]).program.expect("the seed checks");
    let compiled = ved_vm::compile_program(&program);
    (program.domains[0].clone(), compiled.domains[0].clone())
}

/// (name, reads, writes) by field name, for every transition.
fn sets(dom: &CompiledDomain) -> Vec<(String, Vec<String>, Vec<String>)> {
    let name = |s: &u16| dom.fields[*s as usize].0.clone();
    dom.transitions
        .iter()
        .map(|t| {
            let (r, w) = access_sets(t);
            (t.name.clone(), r.iter().map(name).collect(), w.iter().map(name).collect())
        })
        .collect()
}

fn s(name: &str, reads: &[&str], writes: &[&str]) -> (String, Vec<String>, Vec<String>) {
    let own = |v: &[&str]| v.iter().map(|x| x.to_string()).collect();
    (name.to_string(), own(reads), own(writes))
}

#[test]
fn access_sets_of_seed_000() {
    let (_, dom) = load("examples/security_policy.ved");
    assert_eq!(
        sets(&dom),
        vec![
            s("CloseRoguePorts", &["desired_ports", "actual_ports"], &["actual_ports"]),
            s("OpenMissingPorts", &["desired_ports", "actual_ports"], &["actual_ports"]),
        ]
    );
}

#[test]
fn access_sets_of_seed_001() {
    let (_, dom) = load("examples/database_routing.ved");
    // Every branch counts: AutoRestore writes both fields though it reads only two.
    assert_eq!(
        sets(&dom),
        vec![
            s("ExecuteFailover", &["primary_status", "active_route"], &["active_route"]),
            s("TriggerPagerDuty", &["primary_status", "alert_sent"], &["alert_sent"]),
            s("AutoRestore", &["primary_status", "active_route"], &["active_route", "alert_sent"]),
        ]
    );
}

fn verify(file: &str, model: Model) -> ved_verify::Report {
    let (d, dom) = load(file);
    verify_domain_in(&d, &dom, Options::default(), model, &mut |_, _| {}).expect("the seed verifies")
}

fn lost_updates(r: &ved_verify::Report) -> Vec<&Problem> {
    r.runs.iter().flat_map(|run| &run.problems).filter(|p| matches!(p, Problem::LostUpdate { .. })).collect()
}

fn fired(t: &str) -> Option<TraceEdge> {
    Some(TraceEdge::Fired { transition: t.into() })
}

fn result(t: &str) -> Option<TraceEdge> {
    Some(TraceEdge::Result { transition: t.into(), ok: true })
}

#[test]
fn without_serialization_seed_000_loses_an_update() {
    // R1 off: CloseRoguePorts and OpenMissingPorts both compute `actual_ports` from the
    // same old state in one tick; whichever result comes second overwrites the other.
    let r = verify("examples/security_policy.ved", Model { serialize_conflicts: false, ..Model::default() });
    let lost = lost_updates(&r);
    assert!(!lost.is_empty(), "{:#?}", r.runs);
    let Problem::LostUpdate { trace, transition, field, by, at, count } = lost[0] else { unreachable!() };
    assert_eq!(field, "actual_ports");
    assert!(*count >= 1);
    // Shortest: start, both steps fire in one tick, the two results arrive.
    let edges: Vec<Option<TraceEdge>> = trace.iter().map(|s| s.edge.clone()).collect();
    assert_eq!(edges.len(), 5, "{trace:#?}");
    assert_eq!(edges[0], None);
    assert_eq!(edges[1..3], [fired("CloseRoguePorts"), fired("OpenMissingPorts")]);
    let other = if transition == "CloseRoguePorts" { "OpenMissingPorts" } else { "CloseRoguePorts" };
    assert_eq!(edges[3..], [result(other), result(transition)]);
    assert_eq!((*by).clone(), TraceEdge::Result { transition: other.into(), ok: true });
    assert_eq!(*at, 3);
    // The second result wrote its prediction over the first one's effect.
    let start = &trace[0].state[1];
    assert_ne!(trace[3].state[1], *start);
    assert_ne!(trace[4].state[1], trace[3].state[1]);
}

#[test]
fn with_serialization_seed_000_loses_nothing() {
    let r = verify("examples/security_policy.ved", Model::default());
    assert!(r.runs.iter().all(|run| run.complete));
    assert!(lost_updates(&r).is_empty(), "{:#?}", lost_updates(&r));
    // It still reports what it reported before: the list-order stuck state.
    assert!(matches!(r.runs[0].problems[..], [Problem::Stuck { .. }]), "{:#?}", r.runs[0].problems);
}

#[test]
fn with_serialization_no_observed_value_loses_an_update_on_seeds_000_and_001() {
    // The world may report any value of a held field mid-flight; R1 and the rule that
    // an observation supersedes a held write leave nothing to lose.
    let every = Model { every_observed_value: true, ..Model::default() };
    for seed in ["examples/security_policy.ved", "examples/database_routing.ved"] {
        let r = verify(seed, every);
        assert!(r.runs.iter().all(|run| run.complete), "{seed}");
        assert!(lost_updates(&r).is_empty(), "{seed}: {:#?}", lost_updates(&r));
    }
    assert!(verify("examples/database_routing.ved", every).proven());
}

#[test]
fn serialization_keeps_disjoint_transitions_in_one_tick_on_seed_001() {
    // Failover and paging touch disjoint fields: both are in flight at once, before
    // either result, from the primary's failure.
    let (_, dom) = load("examples/database_routing.ved");
    let mut ex = Explorer::new(&dom, Model::default(), vec![Vec::new(); dom.fields.len()]);
    let failed = vec![Value::Str("failed".into()), Value::Str("primary".into()), Value::Bool(false)];
    ex.add_start(failed, 0);
    let g = ex.run(1_000, &mut |_, _| {});
    let nodes: Vec<_> = (0..g.len() as u32).map(|i| g.node(i)).collect();
    let both = nodes.iter().position(|n| n.in_flight().len() == 2).expect("both in flight at once");
    let path: Vec<Edge> = g.path_to(both as u32).into_iter().map(|(_, e)| e).collect();
    assert_eq!(path, [Edge::Start, Edge::Fire { t: 0 }, Edge::Fire { t: 1 }]);
    // AutoRestore reads `active_route`, which the failover holds: never in flight with it.
    assert!(nodes.iter().all(|n| !(n.in_flight().iter().any(|f| f.t == 0) && n.in_flight().iter().any(|f| f.t == 2))));
    assert!(g.kinds.iter().all(|k| !matches!(k, Kind::Fault | Kind::Stuck)));
    assert!(g.kinds.contains(&Kind::Stable));
}

#[test]
fn an_optimistic_step_is_waiting_until_its_result() {
    let src = "domain D {\n  state { x: int }\n  goal x == 1\n  optimistic transition set {\n    step {\n      if x != 1 {\n        emit A.Set(1)\n        x = 1\n      }\n    }\n  }\n}\n";
    let mut sources = ved_syntax::SourceMap::new();
    let id = sources.add("d.ved", src.to_string());
    let program = ved_check::check_program(&[ved_syntax::parse_file(id, src).unwrap()]).program.unwrap();
    let compiled = ved_vm::compile_program(&program);
    let dom = &compiled.domains[0];
    let mut ex = Explorer::new(dom, Model::default(), vec![Vec::new()]);
    ex.add_start(vec![Value::Int(0)], 1);
    let g = ex.run(1_000, &mut |_, _| {});
    // start (moving), fired: x = 1 at once but in flight (waiting), ok (stable), fails (stable: kept, backing off).
    assert_eq!(g.kinds, [Kind::Moving, Kind::Waiting, Kind::Stable, Kind::Stable]);
    assert_eq!(g.node(1).values[0], Value::Int(1));
    assert_eq!(g.parent(3).1, Edge::Result { t: 0, ok: false });
    assert_eq!(g.node(3).blocked, 1);
    // Two slices to the goals: the step, then its result.
    let r = ved_verify::verify_domain(&program.domains[0], dom, Options::default(), &mut |_, _| {}).unwrap();
    assert!(r.proven());
    assert_eq!(r.runs[0].depth, 2);
}
