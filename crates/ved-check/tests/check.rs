//! The checker on the seed programs and on the constructs of VED.md §1.

use ved_check::hir::{Builtin, ExprKind, StmtKind};
use ved_check::{check_program, Checked, Type};
use ved_syntax::{parse_file, SourceMap};

fn check(files: &[&str]) -> (Checked, SourceMap) {
    let mut sources = SourceMap::new();
    let mut asts = Vec::new();
    for (i, text) in files.iter().enumerate() {
        let id = sources.add(format!("f{i}.ved"), *text);
        asts.push(parse_file(id, text).unwrap_or_else(|d| panic!("{}", d.render(&sources))));
    }
    (check_program(&asts), sources)
}

fn ok(files: &[&str]) -> ved_check::hir::Program {
    let (c, sources) = check(files);
    match c.program {
        Some(p) => p,
        None => panic!("{}", ved_syntax::diag::render_all(&c.diagnostics, &sources)),
    }
}

fn errors(src: &str) -> Vec<String> {
    let (c, _) = check(&[src]);
    c.diagnostics.iter().filter(|d| d.is_error()).map(|d| d.message.clone()).collect()
}

const SECURITY: &str = include_str!("../../../examples/security_policy.ved");
const ROUTING: &str = include_str!("../../../examples/database_routing.ved");
const WORKERS: &str = include_str!("../../../examples/worker_pool.ved");

#[test]
fn the_seed_programs_check() {
    let p = ok(&[SECURITY]);
    let d = &p.domains[0];
    assert_eq!(d.name, "SecurityPolicy");
    assert_eq!(d.fields[0].ty, Type::list(Type::Int));
    assert_eq!(d.goals[0].name, "PolicyEnforced");
    assert_eq!(
        d.transitions.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
        ["CloseRoguePorts", "OpenMissingPorts"]
    );
    // `actual_ports.remove(rogue)` removes many; `.add(missing)` adds many.
    let StmtKind::If { then_body, .. } = &d.transitions[0].body[1].kind else { panic!() };
    let StmtKind::Assign { value, .. } = &then_body[1].kind else { panic!() };
    assert!(matches!(value.kind, ExprKind::Call { builtin: Builtin::RemoveAll, .. }));

    let p = ok(&[ROUTING]);
    assert_eq!(p.domains[0].transitions.len(), 3);
    assert_eq!(p.domains[0].fields[2].ty, Type::Bool);

    // Top-level goal and transitions join the domain above them.
    let p = ok(&[WORKERS]);
    let d = &p.domains[0];
    assert_eq!(d.goals.len(), 1);
    assert_eq!(d.goals[0].name, "goal#1");
    assert_eq!(d.transitions.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), ["scale_up", "scale_down"]);
}

#[test]
fn files_on_one_command_line_form_one_program() {
    let p = ok(&[WORKERS, "transition drain {\n step {\n if workers > 100 {\n workers = 5\n }\n }\n}\n"]);
    assert_eq!(p.domains[0].transitions.len(), 3, "a top-level transition in a later file joins the last domain");
}

#[test]
fn every_construct_of_the_language_checks() {
    let src = r#"
domain Everything {
  state {
    n: int
    b: bool
    s: string = "x"
    xs: list<int> = [3, 1, 2]
    tags: set<string> = ["a", "b"]
    more: set<int> = set[1, 2]
    m: map<string, int> = ["a": 1]
    empty_map: map<string, int> = [:]
    nested: list<list<int>>
  }
  goal Named {
    predicate
      n >= 0 &&
      !b
      || s == "y"
  }
  goal n % 2 == 0
  optimistic transition T {
    step {
      let k: int = xs.length * 2 - 1 / 1 + n % 3
      let e: list<int> = []
      if k > 0 && xs.contains(1) || tags.is_empty {
        n += 1
        n -= 1
        s += "!"
        xs = xs.add(4).add([5, 6]).remove(1).remove([2]).union([9]).intersection(xs).difference(e)
        tags = tags.add("c").union(set["d"])
        m = m.insert("b", 2).remove("a")
        n = m.get("b", 0) + m["b"] + xs[0] + xs.first + xs.last + more.first
        b = m.contains("b") && s.contains("!") && m.keys.contains("b") && m.values.length > 0
        nested = nested.add([1])
      } else if n != 1 {
        emit Alerts.Page()
        emit Alerts.Page
        emit Net.Send("x", n, [1, 2])
      } else {
        b = !b
        n = -n
      }
    }
  }
}
"#;
    let p = ok(&[src]);
    let d = &p.domains[0];
    assert_eq!(d.fields.len(), 9);
    assert_eq!(d.fields[4].ty, Type::set(Type::Str));
    // A list literal where a set is expected is a set.
    assert!(matches!(d.fields[4].default.as_ref().unwrap().kind, ExprKind::Set(_)));
    assert_eq!(d.goals.len(), 2);
    assert!(d.transitions[0].optimistic);
    assert_eq!(d.transitions[0].locals, 2);
}

#[test]
fn a_top_level_goal_needs_a_domain_above_it() {
    assert_eq!(errors("goal x == 1\n"), ["this goal has no domain to belong to"]);
}

#[test]
fn one_mistake_gives_one_error() {
    let e = errors("domain D {\n state { x: int }\n goal (y + 1) * 2 == x && y.length > 0\n}\n");
    assert_eq!(e, ["unknown name `y`", "unknown name `y`"]);
}

#[test]
fn lints_are_warnings_and_do_not_block() {
    let (c, _) = check(&[SECURITY]);
    assert!(c.program.is_some());
    let warnings: Vec<_> = c.diagnostics.iter().filter(|d| !d.is_error()).map(|d| d.message.as_str()).collect();
    assert_eq!(warnings, ["`==` on lists compares order as well as elements"]);
}
