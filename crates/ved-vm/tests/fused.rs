//! The superinstructions compute exactly what the plain ops do. Generated programs
//! (guards, comparisons, `&&`/`||`, `if`/`else`, arithmetic that may overflow or divide
//! by zero, strings, booleans) are lowered twice, fused and plain, and every goal and
//! every step is run by both on the same states, including states the steps lead to: the
//! values, the writes, the intents and every fault with its span must be the same.
//! Deterministic: a fixed seed.

use ved_testkit::Rng;
use ved_vm::{compile_program, compile_program_unfused, CompiledProgram, Op, Value, Vm};

fn int(r: &mut Rng) -> i64 {
    match r.below(6) {
        0 => i64::MAX - r.below(3) as i64,
        1 => i64::MIN + r.below(3) as i64,
        2 => 0,
        _ => r.below(11) as i64 - 5,
    }
}

const CMP: &[&str] = &["==", "!=", "<", "<=", ">", ">="];

fn cond(r: &mut Rng, depth: u32) -> String {
    let atom = |r: &mut Rng| match r.below(7) {
        0 | 1 => format!("{} {} {}", r.pick(&["a", "b"]), r.pick(CMP), int(r)),
        2 => format!("a {} b", r.pick(CMP)),
        3 => format!("s {} {:?}", r.pick(&["==", "!="]), r.pick(&["", "x", "xx"])),
        4 => format!("c == {}", r.pick(&["true", "false"])),
        5 => r.pick(&["c", "!c", "a + 1 > b"]).to_string(),
        _ => format!("{} {} {}", int(r), r.pick(CMP), r.pick(&["a", "b"])),
    };
    if depth == 0 || r.below(3) == 0 {
        return atom(r);
    }
    let op = r.pick(&["&&", "||"]);
    format!("({} {op} {})", cond(r, depth - 1), cond(r, depth - 1))
}

fn stmts(r: &mut Rng, depth: u32, out: &mut String, indent: usize) {
    let pad = " ".repeat(indent);
    for _ in 0..1 + r.below(3) {
        match r.below(if depth == 0 { 6 } else { 8 }) {
            0 => out.push_str(&format!("{pad}{} {} {}\n", r.pick(&["a", "b"]), r.pick(&["+=", "-="]), int(r))),
            1 => out.push_str(&format!(
                "{pad}{} = {} {} {}\n",
                r.pick(&["a", "b"]),
                r.pick(&["a", "b"]),
                r.pick(&["+", "-", "*", "/", "%"]),
                int(r)
            )),
            2 => out.push_str(&format!("{pad}s = s + {:?}\n", r.pick(&["", "x"]))),
            3 => out.push_str(&format!("{pad}c = {}\n", cond(r, 1))),
            4 => out.push_str(&format!("{pad}emit A.b(a, {})\n", cond(r, 1))),
            5 => out.push_str(&format!("{pad}b = a\n")),
            _ => {
                out.push_str(&format!("{pad}if {} {{\n", cond(r, 2)));
                stmts(r, depth - 1, out, indent + 2);
                if r.below(2) == 0 {
                    out.push_str(&format!("{pad}}} else {{\n"));
                    stmts(r, depth - 1, out, indent + 2);
                }
                out.push_str(&format!("{pad}}}\n"));
            }
        }
    }
}

fn source(r: &mut Rng) -> String {
    let mut src = String::from("domain D {\n  state {\n    a: int\n    b: int\n    c: bool\n    s: string\n  }\n");
    for _ in 0..1 + r.below(2) {
        src.push_str(&format!("  goal {}\n", cond(r, 2)));
    }
    for t in 0..1 + r.below(3) {
        src.push_str(&format!("  transition t{t} {{\n    step {{\n"));
        stmts(r, 2, &mut src, 6);
        src.push_str("    }\n  }\n");
    }
    src.push_str("}\n");
    src
}

fn lower(src: &str) -> Option<(CompiledProgram, CompiledProgram)> {
    let mut sources = ved_syntax::SourceMap::new();
    let id = sources.add("gen.ved", src);
    let ast = ved_syntax::parse_file(id, src).ok()?;
    let p = ved_check::check_program(&[ast]).program?;
    Some((compile_program(&p), compile_program_unfused(&p)))
}

fn fused_ops(p: &CompiledProgram) -> usize {
    let d = &p.domains[0];
    d.goals
        .iter()
        .map(|g| &g.code)
        .chain(d.transitions.iter().map(|t| &t.code))
        .map(|c| {
            c.ops
                .iter()
                .filter(|o| {
                    matches!(
                        o,
                        Op::FieldCmpConst(..)
                            | Op::FieldCmpField(..)
                            | Op::JumpUnlessFieldCmpConst(..)
                            | Op::FieldArithConst(..)
                    )
                })
                .count()
        })
        .sum()
}

#[test]
fn fused_code_computes_exactly_what_the_plain_ops_do() {
    let mut r = Rng(0x5eed_f00d);
    let (mut programs, mut runs, mut fused, mut predicates) = (0, 0, 0, 0);
    let mut vm_fused = Vm::new();
    let mut vm_plain = Vm::new();
    while programs < 400 {
        let src = source(&mut r);
        let Some((f, p)) = lower(&src) else { continue };
        programs += 1;
        fused += fused_ops(&f);
        // Goals `eval_bool` answers without the interpreter: comparisons joined by `&&`/`||`.
        predicates += f.domains[0]
            .goals
            .iter()
            .filter(|g| {
                g.code.ops.iter().all(|o| {
                    matches!(
                        o,
                        Op::FieldCmpConst(..)
                            | Op::FieldCmpField(..)
                            | Op::JumpIfFalseOrPop(_)
                            | Op::JumpIfTrueOrPop(_)
                    )
                })
            })
            .count();
        let (df, dp) = (&f.domains[0], &p.domains[0]);
        assert_eq!(
            df.transitions.iter().map(|t| (&t.reads, &t.writes)).collect::<Vec<_>>(),
            dp.transitions.iter().map(|t| (&t.reads, &t.writes)).collect::<Vec<_>>(),
            "access sets of\n{src}"
        );
        for _ in 0..8 {
            let mut state = vec![
                Value::Int(int(&mut r)),
                Value::Int(int(&mut r)),
                Value::Bool(r.below(2) == 0),
                Value::Str(["", "x", "xx"][r.below(3)].into()),
            ];
            // Follow the steps for a while, so that states they lead to are compared too.
            for _ in 0..6 {
                for (gf, gp) in df.goals.iter().zip(&dp.goals) {
                    let (a, b) = (vm_fused.eval(&gf.code, &state), vm_plain.eval(&gp.code, &state));
                    assert_eq!(a, b, "goal `{}` on {state:?} in\n{src}", gf.name);
                    // `eval_bool` answers a one-comparison goal without the interpreter.
                    let (a, b) = (vm_fused.eval_bool(&gf.code, &state), vm_plain.eval_bool(&gp.code, &state));
                    assert_eq!(a, b, "goal `{}` (eval_bool) on {state:?} in\n{src}", gf.name);
                    runs += 1;
                }
                let mut next = None;
                for (tf, tp) in df.transitions.iter().zip(&dp.transitions) {
                    let (a, b) = (vm_fused.run_step(&tf.code, &state), vm_plain.run_step(&tp.code, &state));
                    assert_eq!(a, b, "step `{}` on {state:?} in\n{src}", tf.name);
                    runs += 1;
                    if let (None, Ok(o)) = (&next, a) {
                        if !o.writes.is_empty() {
                            next = Some(o.writes);
                        }
                    }
                }
                let Some(writes) = next else { break };
                for (slot, v) in writes {
                    state[slot as usize] = v;
                }
            }
        }
    }
    // The generator reaches the superinstructions, often.
    assert!(fused > 400, "only {fused} fused ops in {programs} programs");
    assert!(predicates > 100, "only {predicates} goals of comparisons joined by && and ||");
    eprintln!("{programs} programs, {fused} fused ops, {predicates} such goals, {runs} goal and step runs compared");
}
