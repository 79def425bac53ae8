//! The VM through the front end: each case is a Ved expression and its value or fault.

use ved_vm::{compile_program, disassemble, FaultKind, Op, Value, Vm};

fn checked(src: &str) -> ved_check::hir::Program {
    let mut sources = ved_syntax::SourceMap::new();
    let id = sources.add("t.ved", src);
    let ast = ved_syntax::parse_file(id, src).unwrap_or_else(|d| panic!("{}", d.render(&sources)));
    let checked = ved_check::check_program(&[ast]);
    checked.program.unwrap_or_else(|| panic!("{}", ved_syntax::diag::render_all(&checked.diagnostics, &sources)))
}

fn program(src: &str) -> ved_vm::CompiledProgram {
    compile_program(&checked(src))
}

const FIELDS: &str = "    xs: list<int> = [3, 1, 2, 1]\n    s: set<int> = set[5, 1, 3]\n    m: map<string, int> = [\"a\": 1, \"b\": 2]\n    e: list<int>\n    name: string = \"pool\"\n    big: int = 9223372036854775807\n    zero: int\n";

/// Evaluates `expr` (of type `ty`) in a domain with FIELDS; the value, or the fault.
fn eval(ty: &str, expr: &str) -> Result<String, FaultKind> {
    let src = format!("domain D {{\n  state {{\n{FIELDS}    out: {ty}\n  }}\n  goal zero == 0\n  transition T {{\n    step {{\n      out = {expr}\n    }}\n  }}\n}}\n");
    let p = program(&src);
    let d = &p.domains[0];
    let mut vm = Vm::new();
    let state = vm.initial_state(d).unwrap();
    let out_slot = d.fields.len() - 1;
    match vm.run_step(&d.transitions[0].code, &state) {
        Ok(o) => Ok(o
            .writes
            .iter()
            .find(|(s, _)| *s as usize == out_slot)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| state[out_slot].clone())
            .to_string()),
        Err(f) => Err(f.kind),
    }
}

fn ok(ty: &str, expr: &str) -> String {
    eval(ty, expr).unwrap_or_else(|f| panic!("{expr}: {f}"))
}

#[test]
fn arithmetic_and_its_faults() {
    assert_eq!(ok("int", "7 / 2 + 7 % 2 * 10 - -3"), "16");
    assert_eq!(ok("int", "-7 / 2"), "-3");
    assert_eq!(eval("int", "big + 1"), Err(FaultKind::Overflow { op: "+" }));
    assert_eq!(eval("int", "-big - 2"), Err(FaultKind::Overflow { op: "-" }));
    assert_eq!(eval("int", "big * 2"), Err(FaultKind::Overflow { op: "*" }));
    assert_eq!(eval("int", "1 / zero"), Err(FaultKind::DivisionByZero));
    assert_eq!(eval("int", "1 % zero"), Err(FaultKind::DivisionByZero));
    assert_eq!(eval("int", "(-big - 1) / -1"), Err(FaultKind::Overflow { op: "/" }));
}

#[test]
fn logic_short_circuits() {
    assert_eq!(ok("bool", "false && 1 / zero == 1"), "false");
    assert_eq!(ok("bool", "true || 1 / zero == 1"), "true");
    assert_eq!(eval("bool", "true && 1 / zero == 1"), Err(FaultKind::DivisionByZero));
    assert_eq!(ok("bool", "!(1 < 2) || \"a\" < \"b\" && name != \"\""), "true");
}

#[test]
fn list_members_keep_order() {
    assert_eq!(ok("list<int>", "[80, 443, 22].difference([80, 443])"), "[22]");
    assert_eq!(ok("list<int>", "[80, 443].add([8080])"), "[80, 443, 8080]");
    assert_eq!(ok("list<int>", "xs.add(1)"), "[3, 1, 2, 1, 1]");
    assert_eq!(ok("list<int>", "xs.remove(1)"), "[3, 2]");
    assert_eq!(ok("list<int>", "xs.remove([1, 3])"), "[2]");
    assert_eq!(ok("list<int>", "xs.union([2, 9, 9, 4])"), "[3, 1, 2, 1, 9, 4]");
    assert_eq!(ok("list<int>", "xs.intersection(set[1, 2])"), "[1, 2, 1]");
    assert_eq!(ok("int", "xs.length + xs.first * 10 + xs.last * 100 + xs[2] * 1000"), "2134");
    assert_eq!(ok("bool", "xs.contains(2) && !xs.contains(7) && e.is_empty"), "true");
    assert_eq!(eval("int", "e.first"), Err(FaultKind::EmptyCollection { member: "first" }));
    assert_eq!(eval("int", "xs[4]"), Err(FaultKind::IndexOutOfRange { index: 4, len: 4 }));
    assert_eq!(eval("int", "xs[-1]"), Err(FaultKind::IndexOutOfRange { index: -1, len: 4 }));
    // Order matters for list equality, not for sets.
    assert_eq!(ok("bool", "[443, 80] == [80, 443]"), "false");
    assert_eq!(ok("bool", "set[443, 80] == set[80, 443]"), "true");
}

#[test]
fn set_and_map_members() {
    assert_eq!(ok("set<int>", "s.add(2).remove(5)"), "set[1, 2, 3]");
    assert_eq!(ok("set<int>", "s.union([9]).difference([1])"), "set[3, 5, 9]");
    assert_eq!(ok("set<int>", "[1, 1, 2]"), "set[1, 2]");
    assert_eq!(ok("int", "s.first + s.last * 10"), "51");
    assert_eq!(ok("map<string, int>", "m.insert(\"c\", 3).remove(\"a\")"), "[\"b\": 2, \"c\": 3]");
    assert_eq!(ok("map<string, int>", "m.remove([\"a\", \"b\"])"), "[:]");
    assert_eq!(ok("int", "m[\"b\"] + m.get(\"zz\", 40)"), "42");
    assert_eq!(ok("set<string>", "m.keys"), "set[\"a\", \"b\"]");
    assert_eq!(ok("list<int>", "m.values"), "[1, 2]");
    assert_eq!(ok("map<string, int>", "[\"k\": 1, \"k\": 2]"), "[\"k\": 2]");
    assert_eq!(eval("int", "m[\"zz\"]"), Err(FaultKind::MissingKey { key: "zz".into() }));
    assert_eq!(ok("bool", "name.contains(\"oo\") && name.length == 4"), "true");
    assert_eq!(ok("string", "name + \"-\" + \"1\""), "\"pool-1\"");
}

#[test]
fn building_a_value_over_the_limit_faults() {
    let src = "domain D {\n  state {\n    xs: list<int>\n    n: int\n  }\n  goal n == 1\n  transition Grow {\n    step {\n      xs = xs.add(xs).add(xs).add(xs).add(xs)\n    }\n  }\n}\n";
    let p = program(src);
    let d = &p.domains[0];
    let mut vm = Vm::new();
    let big = Value::List(std::sync::Arc::new(vec![Value::Int(0); 300_000]));
    let state = vec![big, Value::Int(0)];
    let err = vm.run_step(&d.transitions[0].code, &state).unwrap_err();
    assert_eq!(err.kind, FaultKind::TooLarge { limit: 1_000_000 });
}

#[test]
fn a_step_never_mutates_its_input_and_reports_only_real_changes() {
    let src = "domain D {\n  state {\n    a: int = 1\n    b: int\n  }\n  goal b == 1\n  transition T {\n    step {\n      a = 5\n      b = a + 1\n      a = 1\n      emit X.Y(a, b)\n    }\n  }\n}\n";
    let p = program(src);
    let d = &p.domains[0];
    let mut vm = Vm::new();
    let state = vm.initial_state(d).unwrap();
    let before = state.clone();
    let o = vm.run_step(&d.transitions[0].code, &state).unwrap();
    assert_eq!(state, before);
    // `a` was written and restored: not a change. `b` saw the overlay's a = 5.
    assert_eq!(o.writes, vec![(1, Value::Int(6))]);
    assert_eq!(o.intents.len(), 1);
    assert_eq!(o.intents[0].args, vec![Value::Int(1), Value::Int(6)]);
    // The same Vm gives the same answer every time.
    for _ in 0..100 {
        assert_eq!(vm.run_step(&d.transitions[0].code, &state).unwrap(), o);
    }
}

#[test]
fn the_bytecode_is_compact_and_constants_are_prebuilt() {
    assert!(std::mem::size_of::<Op>() <= 16, "{}", std::mem::size_of::<Op>());
    let p = program(include_str!("../../../examples/worker_pool.ved"));
    let listing = disassemble(&p.domains[0].transitions[0].code);
    // `if workers < 5 { workers += 1 }`: a guard and an update, one superinstruction each.
    assert_eq!(listing, "   0  jump_unless_field_lt 0 5 2\n   1  field_add_const 0 1\n");
    let plain = ved_vm::compile_program_unfused(&checked(include_str!("../../../examples/worker_pool.ved")));
    assert_eq!(
        disassemble(&plain.domains[0].transitions[0].code),
        "   0  load_field 0\n   1  const 5\n   2  lt\n   3  jump_if_false 8\n   4  load_field 0\n   5  const 1\n   6  add\n   7  store_field 0\n"
    );
    // `[80, 443]` is one constant, not two pushes and a build.
    let p = program(include_str!("../../../examples/security_policy.ved"));
    let default = disassemble(p.domains[0].defaults[0].as_ref().unwrap());
    assert_eq!(default, "   0  const [80, 443]\n");
}

/// Found by the generator (seed 11114397750797388268): a megabyte string inside a list
/// doubled to a million elements is 24 MB to hold, since the elements share one string,
/// but a terabyte to write into the journal and the events. A stored or emitted value is
/// bounded through its nested values too, and a step over that bound faults.
#[test]
fn a_stored_or_emitted_value_is_bounded_through_its_nested_values() {
    let src = "domain D {\n  state {\n    s: string\n    xs: list<string>\n  }\n  goal xs.length == 0\n  transition Store {\n    step {\n      xs = xs.add(xs)\n    }\n  }\n  transition Send {\n    step {\n      emit X.Y(xs, xs)\n    }\n  }\n}\n";
    let p = program(src);
    let d = &p.domains[0];
    let mut vm = Vm::new();
    let mb: std::sync::Arc<str> = std::sync::Arc::from("a".repeat(1_000_000));
    let list = |n: usize| Value::List(std::sync::Arc::new(vec![Value::Str(mb.clone()); n]));

    // Eight megabytes, doubled to sixteen: at the bound, allowed.
    let state = vec![Value::Str(mb.clone()), list(8)];
    let o = vm.run_step(&d.transitions[0].code, &state).unwrap();
    assert_eq!(o.writes.len(), 1);
    // Nine, doubled to eighteen: over it, and the fault points at the assignment.
    let state = vec![Value::Str(mb.clone()), list(9)];
    let err = vm.run_step(&d.transitions[0].code, &state).unwrap_err();
    assert_eq!(err.kind, FaultKind::TooLargeInAll { limit: ved_vm::TOTAL_SIZE_MAX });
    assert_eq!(&src[err.span.start as usize..err.span.end as usize], "xs = xs.add(xs)");
    // An intent's arguments count together: two lists of nine are over the bound.
    let err = vm.run_step(&d.transitions[1].code, &state).unwrap_err();
    assert_eq!(err.kind, FaultKind::TooLargeInAll { limit: ved_vm::TOTAL_SIZE_MAX });
    let state = vec![Value::Str(mb.clone()), list(7)];
    assert_eq!(vm.run_step(&d.transitions[1].code, &state).unwrap().intents.len(), 1);
    // A million references to the string: the walk stops at the bound, and the step faults.
    let state = vec![Value::Str(mb.clone()), list(500_000)];
    let err = vm.run_step(&d.transitions[0].code, &state).unwrap_err();
    assert_eq!(err.kind, FaultKind::TooLargeInAll { limit: ved_vm::TOTAL_SIZE_MAX });
}
