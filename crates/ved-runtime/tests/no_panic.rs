//! No input makes Ved panic or hang. Mutated versions of the example programs
//! and scenarios go through the whole pipeline: parse, check, lower, boot every
//! domain, and run every scenario, with small scheduler limits.
//!
//! `VED_FUZZ_CASES` sets the number of mutated programs (default 20000).

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::sync::Arc;
use ved_runtime::scenario::run_scenario_with_limits;
use ved_runtime::{Limits, Runtime};
use ved_syntax::SourceMap;

const CORPUS: [&str; 7] = [
    include_str!("../../../examples/security_policy.ved"),
    include_str!("../../../examples/database_routing.ved"),
    include_str!("../../../examples/worker_pool.ved"),
    include_str!("../../../examples/coarse_scaler.ved"),
    concat!(include_str!("../../../examples/worker_pool.ved"), include_str!("../../../examples/worker_pool.test.ved")),
    concat!(
        include_str!("../../../examples/database_routing.ved"),
        include_str!("../../../examples/database_routing.test.ved")
    ),
    concat!(
        include_str!("../../../examples/security_policy.ved"),
        include_str!("../../../examples/security_policy.test.ved")
    ),
];

/// Fragments a mutation may splice in: tokens and near-tokens of the language.
const FRAGMENTS: [&str; 48] = [
    "{",
    "}",
    "(",
    ")",
    "[",
    "]",
    ",",
    ":",
    ".",
    "=",
    "==",
    "+=",
    "-=",
    "&&",
    "||",
    "!",
    "-",
    "*",
    "/",
    "%",
    "<",
    ">=",
    "\n",
    " ",
    "//",
    "\"",
    "let x = ",
    "if ",
    "else ",
    "emit A.B(",
    "goal ",
    "transition t { step { ",
    "state {",
    "domain D {",
    "9223372036854775807",
    "0",
    "-1",
    "[:]",
    "set[",
    "[\"k\": 1]",
    ".length",
    ".add(",
    ".remove(",
    ".difference(",
    "list<int>",
    "map<string, int>",
    "expect ",
    "observe ",
];

#[derive(Clone, Debug)]
enum Mutation {
    Delete { at: usize, len: usize },
    Insert { at: usize, fragment: usize },
    Duplicate { at: usize, len: usize },
    Replace { at: usize, byte: u8 },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1usize..12).prop_map(|(at, len)| Mutation::Delete { at, len }),
        (any::<usize>(), 0..FRAGMENTS.len()).prop_map(|(at, fragment)| Mutation::Insert { at, fragment }),
        (any::<usize>(), 1usize..40).prop_map(|(at, len)| Mutation::Duplicate { at, len }),
        (any::<usize>(), 0x20u8..0x7f).prop_map(|(at, byte)| Mutation::Replace { at, byte }),
    ]
}

fn apply(src: &str, muts: &[Mutation]) -> String {
    let mut b = src.as_bytes().to_vec();
    for m in muts {
        let n = b.len().max(1);
        match *m {
            Mutation::Delete { at, len } => {
                let at = at % n;
                let end = (at + len).min(b.len());
                b.drain(at.min(b.len())..end);
            }
            Mutation::Insert { at, fragment } => {
                let at = at % (b.len() + 1);
                b.splice(at..at, FRAGMENTS[fragment].bytes());
            }
            Mutation::Duplicate { at, len } => {
                let at = at % n;
                let end = (at + len).min(b.len());
                let piece: Vec<u8> = b[at.min(b.len())..end].to_vec();
                b.splice(end..end, piece);
            }
            Mutation::Replace { at, byte } => {
                if !b.is_empty() {
                    let at = at % b.len();
                    b[at] = byte;
                }
            }
        }
    }
    // Mutations work on bytes; the pipeline takes text, as `ved` does after its UTF-8 check.
    String::from_utf8_lossy(&b).into_owned()
}

/// The whole pipeline on one text. Returns whether it got as far as running.
fn pipeline(text: &str) -> bool {
    let mut sources = SourceMap::new();
    let id = sources.add("fuzz.ved", text);
    let ast = match ved_syntax::parse_file(id, text) {
        Ok(a) => a,
        Err(d) => {
            // Rendering must not panic either, whatever the span.
            let _ = d.render(&sources);
            return false;
        }
    };
    let checked = ved_check::check_program(&[ast]);
    let _ = ved_syntax::diag::render_all(&checked.diagnostics, &sources);
    let Some(program) = checked.program else {
        return false;
    };
    let compiled = Arc::new(ved_vm::compile_program(&program));
    let limits = Limits { ticks_per_input_max: 200, mailbox_max: 64, ..Default::default() };
    if let Ok(mut rt) = Runtime::new(compiled.clone(), 7) {
        rt.limits = limits;
        let mut ev = Vec::new();
        rt.run(&mut ev);
    }
    for sc in &program.scenarios {
        let _ = run_scenario_with_limits(&program, &compiled, sc, 7, limits);
    }
    true
}

#[test]
fn mutated_programs_never_panic_or_hang() {
    let cases: u32 = std::env::var("VED_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    let ran = std::cell::Cell::new(0u32);
    let executed = std::cell::Cell::new(0u32);
    runner
        .run(&(0..CORPUS.len(), prop::collection::vec(mutation(), 1..6)), |(seed, muts)| {
            let text = apply(CORPUS[seed], &muts);
            ran.set(ran.get() + 1);
            if pipeline(&text) {
                executed.set(executed.get() + 1);
            }
            Ok(())
        })
        .unwrap();
    eprintln!("{} mutated programs, {} of them ran", ran.get(), executed.get());
    assert!(ran.get() >= cases, "only {} of {cases} cases ran", ran.get());
    // The mutations must leave enough programs valid to exercise the runtime too.
    assert!(
        executed.get() > cases / 50,
        "only {} of {} mutated programs reached the runtime",
        executed.get(),
        ran.get()
    );
}

#[test]
fn the_unmutated_corpus_runs() {
    for text in CORPUS {
        assert!(pipeline(text), "{text}");
    }
}
