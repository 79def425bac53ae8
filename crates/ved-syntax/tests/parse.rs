//! The parser on the seed programs and on every construct.

use ved_syntax::ast::*;
use ved_syntax::{parse_file, FileId, SourceMap};

fn parse(src: &str) -> File {
    let mut sources = SourceMap::new();
    let id = sources.add("t.ved", src);
    parse_file(id, src).unwrap_or_else(|d| panic!("{}", d.render(&sources)))
}

fn parse_err(src: &str) -> (String, (usize, usize)) {
    let mut sources = SourceMap::new();
    let id = sources.add("t.ved", src);
    let d = parse_file(id, src).expect_err("should not parse");
    (d.message.clone(), sources.file(FileId(0)).line_col(d.span.start as usize))
}

/// Renders an expression back with full parentheses, to check its shape.
fn show(e: &Expr) -> String {
    match &e.kind {
        ExprKind::Int(i) => i.to_string(),
        ExprKind::Bool(b) => b.to_string(),
        ExprKind::Str(s) => format!("{s:?}"),
        ExprKind::Name(n) => n.name.clone(),
        ExprKind::Paren(x) => show(x),
        ExprKind::Unary { op, operand, .. } => {
            format!("({}{})", if *op == UnaryOp::Not { "!" } else { "-" }, show(operand))
        }
        ExprKind::Binary { op, lhs, rhs, .. } => format!("({} {} {})", show(lhs), op.symbol(), show(rhs)),
        ExprKind::Member { receiver, name, args: None } => format!("{}.{}", show(receiver), name.name),
        ExprKind::Member { receiver, name, args: Some(a) } => {
            format!("{}.{}({})", show(receiver), name.name, a.iter().map(show).collect::<Vec<_>>().join(", "))
        }
        ExprKind::Index { receiver, index } => format!("{}[{}]", show(receiver), show(index)),
        ExprKind::List(v) => format!("[{}]", v.iter().map(show).collect::<Vec<_>>().join(", ")),
        ExprKind::SetLit(v) => format!("set[{}]", v.iter().map(show).collect::<Vec<_>>().join(", ")),
        ExprKind::MapLit(v) => {
            format!("[{}]", v.iter().map(|(k, x)| format!("{}: {}", show(k), show(x))).collect::<Vec<_>>().join(", "))
        }
    }
}

fn goal_expr(src: &str) -> String {
    let f = parse(&format!("domain D {{\n goal {src}\n}}\n"));
    let Item::Domain(d) = &f.items[0] else { panic!() };
    let DomainMember::Goal(g) = &d.members[0] else { panic!() };
    show(&g.predicate)
}

#[test]
fn the_seed_programs_parse_as_written() {
    let f = parse(include_str!("../../../examples/database_routing.ved"));
    let Item::Domain(d) = &f.items[0] else { panic!() };
    assert_eq!(d.name.name, "DatabaseRouting");
    let DomainMember::State(s) = &d.members[0] else { panic!() };
    let names: Vec<&str> = s.fields.iter().map(|f| f.name.name.as_str()).collect();
    assert_eq!(names, ["primary_status", "active_route", "alert_sent"]);
    let DomainMember::Goal(g) = &d.members[1] else { panic!() };
    assert_eq!(g.name.as_ref().unwrap().name, "RoutingStable");
    assert_eq!(
        show(&g.predicate),
        "(((primary_status == \"healthy\") && (active_route == \"primary\")) || (((primary_status == \"failed\") && (active_route == \"replica\")) && (alert_sent == true)))"
    );
    let transitions: Vec<&str> = d
        .members
        .iter()
        .filter_map(|m| match m {
            DomainMember::Transition(t) => Some(t.name.name.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(transitions, ["ExecuteFailover", "TriggerPagerDuty", "AutoRestore"]);

    let f = parse(include_str!("../../../examples/security_policy.ved"));
    let Item::Domain(d) = &f.items[0] else { panic!() };
    let DomainMember::State(s) = &d.members[0] else { panic!() };
    assert_eq!(s.fields[0].ty.name.name, "list");
    assert_eq!(show(s.fields[0].default.as_ref().unwrap()), "[80, 443]");
    assert!(s.fields[1].default.is_none());

    let f = parse(include_str!("../../../examples/worker_pool.ved"));
    assert_eq!(f.items.len(), 4);
    assert!(matches!(&f.items[1], Item::Goal(g) if g.name.is_none() && show(&g.predicate) == "(workers == 5)"));
    assert!(matches!(&f.items[2], Item::Transition(t) if t.name.name == "scale_up" && !t.optimistic));
}

#[test]
fn precedence_and_associativity() {
    assert_eq!(goal_expr("a + b * c - d"), "((a + (b * c)) - d)");
    assert_eq!(goal_expr("!a && b || c"), "(((!a) && b) || c)");
    assert_eq!(goal_expr("a || b && c"), "(a || (b && c))");
    assert_eq!(goal_expr("x.length > 0 == ok"), "((x.length > 0) == ok)");
    assert_eq!(goal_expr("-x % 3 <= y[0]"), "(((-x) % 3) <= y[0])");
    assert_eq!(goal_expr("-5 == x"), "(-5 == x)");
    assert_eq!(goal_expr("xs.add([1, 2]).difference(set[3]).is_empty"), "xs.add([1, 2]).difference(set[3]).is_empty");
    assert_eq!(goal_expr("m == [\"a\": 1, \"b\": 2] || m == [:]"), "((m == [\"a\": 1, \"b\": 2]) || (m == []))");
    assert_eq!(goal_expr("a - b - c"), "((a - b) - c)");
}

#[test]
fn expressions_continue_over_lines() {
    assert_eq!(goal_expr("a ||\n   b"), "(a || b)");
    assert_eq!(goal_expr("a\n   || b\n   && c"), "(a || (b && c))");
    assert_eq!(goal_expr("(a\n ==\n b)"), "(a == b)");
    assert_eq!(goal_expr("[1,\n 2,\n]\n  .length == 2"), "([1, 2].length == 2)");
    // A leading `-` starts a new line: `goal x` then a parse error for the stray `- 1`.
    let (msg, _) = parse_err("domain D {\n goal x\n - 1\n}\n");
    assert!(msg.contains("expected `state`, `goal`, `transition` or `}`"), "{msg}");
}

#[test]
fn statements() {
    let f = parse(
        "domain D {\n  state { x: int; ok: bool, m: map<string, list<int>> }\n  optimistic transition T {\n    step {\n      let k: int = x + 1\n      x += k; x -= 1\n      if ok { emit A.B() } else if x > 1 {\n        emit A.C\n      }\n      else {\n        emit A.D(1, \"two\", [3])\n      }\n    }\n  }\n}\n",
    );
    let Item::Domain(d) = &f.items[0] else { panic!() };
    let DomainMember::State(s) = &d.members[0] else { panic!() };
    assert_eq!(s.fields.len(), 3);
    assert_eq!(s.fields[2].ty.args[1].args[0].name.name, "int");
    let DomainMember::Transition(t) = &d.members[1] else { panic!() };
    assert!(t.optimistic);
    let kinds: Vec<&StmtKind> = t.step.stmts.iter().map(|s| &s.kind).collect();
    assert!(matches!(kinds[0], StmtKind::Let { ty: Some(_), .. }));
    assert!(matches!(kinds[1], StmtKind::Assign { op: AssignOp::Add, .. }));
    assert!(matches!(kinds[2], StmtKind::Assign { op: AssignOp::Sub, .. }));
    let StmtKind::If { then_block, else_block: Some(else_block), .. } = kinds[3] else { panic!() };
    assert!(matches!(&then_block.stmts[0].kind, StmtKind::Emit { args, .. } if args.is_empty()));
    let StmtKind::If { then_block, else_block: Some(last), .. } = &else_block.stmts[0].kind else { panic!() };
    assert!(
        matches!(&then_block.stmts[0].kind, StmtKind::Emit { action, args, .. } if action.name == "C" && args.is_empty())
    );
    assert!(matches!(&last.stmts[0].kind, StmtKind::Emit { args, .. } if args.len() == 3));
}

#[test]
fn every_scenario_step() {
    let f = parse(
        "scenario \"all\" {\n  domain D\n  given a = 1, b = 2\n  observe a = a - 1\n  simultaneously {\n    observe a = 1\n    observe a = 2, b = 3\n  }\n  fail A.B\n  fail A.B 3 times\n  advance 500ms\n  advance 2h\n  expect a == 1\n  expect stable\n  expect stuck\n  expect livelock\n  expect waiting\n  expect stable within 5 ticks\n  expect emitted A.B(1) 2 times\n  expect emitted A.B\n  expect not emitted A.B(\"x\")\n  expect faulted T\n  expect faulted T 2 times\n  expect fired T\n  expect fired T 1 time\n  expect stable_count == 2\n}\n",
    );
    let Item::Scenario(s) = &f.items[0] else { panic!() };
    assert_eq!(s.name, "all");
    let k: Vec<&StepKind> = s.steps.iter().map(|s| &s.kind).collect();
    assert_eq!(k.len(), 22);
    assert!(matches!(k[0], StepKind::Domain(d) if d.name == "D"));
    assert!(matches!(k[1], StepKind::Given(v) if v.len() == 2));
    assert!(matches!(k[3], StepKind::Simultaneously(m) if m.len() == 2 && m[1].len() == 2));
    assert!(matches!(k[4], StepKind::Fail { times: 1, .. }));
    assert!(matches!(k[5], StepKind::Fail { times: 3, .. }));
    assert!(matches!(k[6], StepKind::Advance { ms: 500 }));
    assert!(matches!(k[7], StepKind::Advance { ms: 7_200_000 }));
    assert!(matches!(k[9], StepKind::Expect(Expect::Stable)));
    assert!(matches!(k[13], StepKind::Expect(Expect::StableWithin { ticks: 5 })));
    assert!(matches!(k[14], StepKind::Expect(Expect::Emitted { args: Some(a), times: Some(2), .. }) if a.len() == 1));
    assert!(matches!(k[15], StepKind::Expect(Expect::Emitted { args: None, times: None, .. })));
    assert!(matches!(k[16], StepKind::Expect(Expect::NotEmitted { args: Some(_), .. })));
    assert!(matches!(k[18], StepKind::Expect(Expect::Faulted { times: Some(2), .. })));
    assert!(matches!(k[20], StepKind::Expect(Expect::Fired { times: Some(1), .. })));
    // `stable_count` is a field, not the keyword.
    assert!(matches!(k[21], StepKind::Expect(Expect::Holds(_))));
}

#[test]
fn errors_point_at_the_problem() {
    let cases: [(&str, &str, (usize, usize)); 8] = [
        ("domain D {\n state { x: int }\n", "this domain is never closed", (1, 10)),
        ("domain D {\n goal (a\n}\n", "this parenthesis is never closed", (2, 7)),
        ("domain D {\n goal a == b == c\n}\n", "comparison operators cannot be chained", (2, 14)),
        ("domain D {\n transition T {\n step {\n if x = 1 {\n }\n }\n }\n}\n", "`=` is assignment", (4, 7)),
        ("domain D {\n transition T {\n step {\n x == 1\n }\n }\n}\n", "`==` compares; use `=` to assign", (4, 4)),
        ("domain D {\n state { let: int }\n}\n", "`let` is a reserved word", (2, 10)),
        ("scenario \"s\" {\n  advance 5\n}\n", "a duration needs a unit", (2, 11)),
        ("scenario \"s\" {\n  expect\n}\n", "expected what to expect", (2, 9)),
    ];
    for (src, want, at) in cases {
        let (msg, pos) = parse_err(src);
        assert!(msg.contains(want), "{src:?}: {msg}");
        assert_eq!(pos, at, "{src:?}: {msg}");
    }
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    let src = format!("domain D {{\n goal {}x{}\n}}\n", "(".repeat(5000), ")".repeat(5000));
    let (msg, _) = parse_err(&src);
    assert!(msg.contains("nested too deeply"), "{msg}");
    let src = format!("domain D {{\n goal {}x\n}}\n", "!".repeat(5000));
    let (msg, _) = parse_err(&src);
    assert!(msg.contains("nested too deeply"), "{msg}");
}
