//! The explorer's model on the seeds: the access sets the runtime serializes on,
//! and the lost update that serialization prevents.

use std::path::Path;
use ved_check::hir;
use ved_verify::explore::access_sets;
use ved_vm::CompiledDomain;

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
