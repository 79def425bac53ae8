//! `ved fmt`: the formatted text of every seed program parses to the same tree,
//! formatting twice changes nothing, and every comment survives in order. Then the
//! same three properties over mutated and generated programs, and the rules one by one.

use proptest::prelude::*;
use std::path::{Path, PathBuf};
use ved_syntax::fmt::{format, tree_shape};
use ved_syntax::lexer::lex_with_comments;
use ved_syntax::{parse_file, FileId};

const F: FileId = FileId(0);

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn ved_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            ved_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "ved") {
            out.push(p);
        }
    }
}

/// Every `.ved` file of the examples, the test data, and the shared seed programs
/// (`../shared/seeds/programs` beside the clone, skipped when absent).
fn corpus() -> Vec<PathBuf> {
    let mut files = Vec::new();
    ved_files(&root().join("examples"), &mut files);
    ved_files(&root().join("tests/data"), &mut files);
    ved_files(&root().join("../shared/seeds/programs"), &mut files);
    files
}

fn comment_texts(src: &str) -> Vec<String> {
    lex_with_comments(F, src).expect("lexes").1.into_iter().map(|c| c.text).collect()
}

/// The three properties for one source text that parses; `Err` says which failed.
fn check_properties(src: &str) -> Result<String, String> {
    let tree = parse_file(F, src).map_err(|d| format!("input does not parse: {}", d.message))?;
    let out = format(F, src).map_err(|d| format!("format failed: {}", d.message))?;
    let again = parse_file(F, &out).map_err(|d| format!("output does not parse: {}\n{out}", d.message))?;
    if tree_shape(&again) != tree_shape(&tree) {
        return Err(format!("output parses to another tree:\n{out}"));
    }
    let twice = format(F, &out).map_err(|d| format!("second format failed: {}", d.message))?;
    if twice != out {
        return Err(format!("not idempotent:\n--- once\n{out}--- twice\n{twice}"));
    }
    if comment_texts(src) != comment_texts(&out) {
        return Err(format!("comments changed:\n{:?}\n{:?}", comment_texts(src), comment_texts(&out)));
    }
    Ok(out)
}

#[test]
fn every_seed_program_formats_to_the_same_tree_idempotently_with_its_comments() {
    let files = corpus();
    assert!(files.len() > 20, "found only {} files", files.len());
    let (mut formatted, mut broken) = (0, 0);
    for path in &files {
        let src = std::fs::read_to_string(path).unwrap();
        match parse_file(F, &src) {
            Ok(_) => {
                if let Err(e) = check_properties(&src) {
                    panic!("{}: {e}", path.display());
                }
                formatted += 1;
            }
            // A file meant not to parse gets the parser's diagnostic back, not text.
            Err(d) => {
                let e = format(F, &src).expect_err("format of a file that does not parse");
                assert_eq!(e.message, d.message, "{}", path.display());
                broken += 1;
            }
        }
    }
    eprintln!("{formatted} files formatted, {broken} files that do not parse refused");
    assert!(formatted > 20);
}

// ---------------------------------------------------------------- rules

fn fmt(src: &str) -> String {
    check_properties(src).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn indents_two_spaces_one_statement_per_line() {
    let src = "domain D{state{x:int;y:bool=false}\ntransition t{step{if x<5{x+=1;y=true}else{x-=1}}}}";
    assert_eq!(
        fmt(src),
        "domain D {\n  state { x: int, y: bool = false }\n  transition t {\n    step {\n      if x < 5 {\n        \
         x += 1\n        y = true\n      } else {\n        x -= 1\n      }\n    }\n  }\n}\n"
    );
}

#[test]
fn spaces_operators_commas_and_colons() {
    assert_eq!(fmt("goal a+b*c==d&&!e||f%2!=0\n"), "goal a + b * c == d && !e || f % 2 != 0\n");
    assert_eq!(fmt("goal m[\"k\"].contains(1,2)\n"), "goal m[\"k\"].contains(1, 2)\n");
    assert_eq!(fmt("goal x == [\"a\":1,\"b\":2]\n"), "goal x == [\"a\": 1, \"b\": 2]\n");
    assert_eq!(fmt("goal x == set[ 1 ,2 ] && y == [:]\n"), "goal x == set[1, 2] && y == [:]\n");
    assert_eq!(fmt("goal a - -5 < - b\n"), "goal a - -5 < -b\n");
}

#[test]
fn emit_always_has_parentheses() {
    let wrap = |stmts: &str| format!("domain D {{\n  transition t {{\n    step {{\n{stmts}    }}\n  }}\n}}\n");
    let src = wrap("emit A.b\nemit A.c( )\nemit A.d(1,\"x\")\nemit A.e( // none\n)\n");
    let want = wrap("      emit A.b()\n      emit A.c()\n      emit A.d(1, \"x\")\n      emit A.e( // none\n      )\n");
    assert_eq!(fmt(&src), want);
}

#[test]
fn keeps_the_parentheses_the_tree_records() {
    assert_eq!(fmt("goal (a+b)*c\n"), "goal (a + b) * c\n");
    assert_eq!(fmt("goal a-(b-c)\n"), "goal a - (b - c)\n");
    assert_eq!(fmt("goal ((a))\n"), "goal ((a))\n");
    assert_eq!(fmt("goal (a == b) == c\n"), "goal (a == b) == c\n");
    assert_eq!(fmt("goal !(a && b)\n"), "goal !(a && b)\n");
}

#[test]
fn else_if_chains_and_nested_blocks() {
    let src = "domain D {\nstate { x: int }\ntransition t {\nstep {\nif x == 1 {\nx = 2\n}\nelse if x == 2 \
               {\nif x > 0 { x = 3 }\n} else { if x > 1 { x = 4 } }\n}\n}\n}\n";
    assert_eq!(
        fmt(src),
        "domain D {\n  state { x: int }\n  transition t {\n    step {\n      if x == 1 {\n        x = 2\n      } \
         else if x == 2 {\n        if x > 0 {\n          x = 3\n        }\n      } else {\n        if x > 1 {\n          \
         x = 4\n        }\n      }\n    }\n  }\n}\n"
    );
}

#[test]
fn empty_blocks_close_on_their_line() {
    assert_eq!(
        fmt("domain D {\n  state {\n  }\n  transition t { step { } }\n}\n"),
        "domain D {\n  state {}\n  transition t {\n    step {}\n  }\n}\n"
    );
}

#[test]
fn comment_after_an_opening_brace_stays_on_its_line() {
    let src = "domain D { // the pool\nstate { // fields\nx: int\n}\n}\n";
    assert_eq!(fmt(src), "domain D { // the pool\n  state { // fields\n    x: int\n  }\n}\n");
}

#[test]
fn comment_before_a_closing_brace_is_indented_inside() {
    let src = "domain D {\nstate {\nx: int\n// last field\n}\n    // end of domain\n}\n";
    assert_eq!(fmt(src), "domain D {\n  state {\n    x: int\n    // last field\n  }\n  // end of domain\n}\n");
}

#[test]
fn comments_between_fields_and_at_line_ends() {
    let src = "domain D {\nstate {\n// first\nx: int // x\n\n\n// second\ny: int,   // y\n}\n}\n";
    assert_eq!(
        fmt(src),
        "domain D {\n  state {\n    // first\n    x: int // x\n\n    // second\n    y: int // y\n  }\n}\n"
    );
}

#[test]
fn comment_at_end_of_file_and_file_of_comments() {
    assert_eq!(fmt("goal x\n// bye"), "goal x\n// bye\n");
    assert_eq!(fmt("// only\n\n\n// comments\n"), "// only\n\n// comments\n");
    assert_eq!(fmt(""), "");
    assert_eq!(fmt("\n\n  \n"), "");
}

#[test]
fn comments_in_odd_places_inside_expressions() {
    // After an operator, inside parentheses and brackets, before `.member`, before `else`,
    // between `step` and its `{`: all stay, in order, and the result parses.
    let src = "domain D {\nstate { x: int }\ngoal G { // g\npredicate // p\n x > 1 && // and\n(x < 9 // nine\n)\n}\n\
               transition t // t\n{ step // s\n{\nif x > 0 {\nx = [ // list\n1, // one\n2][0 // idx\n]\n} // then\n\
               else {\nx = x\n// dot\n.abs()\n}\n}\n}\n}\n";
    let out = fmt(src);
    assert!(out.contains("x > 1 && // and\n"), "{out}");
    assert!(out.contains("} // then\n      else {"), "{out}");
}

#[test]
fn comments_inside_empty_brackets() {
    assert_eq!(fmt("goal x.len( // none\n) == 0\n"), "goal x.len( // none\n) == 0\n");
    assert_eq!(fmt("goal m == [ // empty\n: // map\n]\n"), "goal m == [: // empty\n  // map\n]\n");
    assert_eq!(fmt("goal l == [\n// nothing\n]\n"), "goal l == [\n  // nothing\n]\n");
}

#[test]
fn blank_lines_between_items_are_kept_at_most_one() {
    let src = "\n\ngoal a\n\n\n\ngoal b\ngoal c\n\n";
    assert_eq!(fmt(src), "goal a\n\ngoal b\ngoal c\n");
}

#[test]
fn multi_line_literals_get_one_element_per_line() {
    let src = "domain D {\nstate { m: map<string, int> = [\"a\": 1,\n \"b\": 2] }\n}\n";
    assert_eq!(
        fmt(src),
        "domain D {\n  state {\n    m: map<string, int> = [\n      \"a\": 1,\n      \"b\": 2,\n    ]\n  }\n}\n"
    );
}

#[test]
fn line_breaks_after_operators_are_kept() {
    let src = "goal G {\npredicate\n(a && b) ||\n(c && d)\n}\n";
    assert_eq!(fmt(src), "goal G {\n  predicate\n    (a && b) ||\n    (c && d)\n}\n");
    assert_eq!(fmt("goal G { predicate a ||\n b }"), "goal G {\n  predicate a ||\n    b\n}\n");
    assert_eq!(
        fmt("goal G {\npredicate\n a ||\n b &&\n c ||\n d}"),
        "goal G {\n  predicate\n    a ||\n    b &&\n      c ||\n    d\n}\n"
    );
    // A break before the operator moves after it: `||` at a line start also continues.
    assert_eq!(fmt("goal a\n  || b\n"), "goal a ||\n  b\n");
}

#[test]
fn scenarios_print_every_step_canonically() {
    let src = "scenario \"s \\\"q\\\"\" {\ndomain D\ngiven x = 1,y=2\nobserve x-=1\nsimultaneously {\nobserve x = 1\n\
               observe x += 2 }\nfail A.b 1 times\nfail A.c 3 time\nadvance 60000ms\nadvance 1500ms\nhold intents\n\
               answer oldest failed\nanswer newest\nwatch x,y\nexpect stable\nexpect stable within 3 tick\n\
               expect emitted A.b(1,2) 2 times\nexpect emitted A.b()\nexpect not emitted A.c\nexpect fired t 1 time\n\
               expect faulted t\nexpect x == 1; expect stuck\n}\n";
    assert_eq!(
        fmt(src),
        "scenario \"s \\\"q\\\"\" {\n  domain D\n  given x = 1, y = 2\n  observe x -= 1\n  simultaneously {\n    \
         observe x = 1\n    observe x += 2\n  }\n  fail A.b\n  fail A.c 3 times\n  advance 1m\n  advance 1500ms\n  \
         hold intents\n  answer oldest failed\n  answer newest\n  watch x, y\n  expect stable\n  \
         expect stable within 3 ticks\n  expect emitted A.b(1, 2) 2 times\n  expect emitted A.b()\n  \
         expect not emitted A.c\n  expect fired t 1 times\n  expect faulted t\n  expect x == 1\n  expect stuck\n}\n"
    );
}

#[test]
fn verify_blocks_and_optimistic_transitions() {
    let src = "domain D {\nstate { n: int }\nverify { n in -2..20, s in [\"a\"] }\noptimistic transition t { step { n = 1 } }\n}\nverify {\nn in 0..3\n}\n";
    assert_eq!(
        fmt(src),
        "domain D {\n  state { n: int }\n  verify { n in -2..20, s in [\"a\"] }\n  optimistic transition t {\n    \
         step {\n      n = 1\n    }\n  }\n}\nverify {\n  n in 0..3\n}\n"
    );
}

#[test]
fn a_file_that_does_not_parse_returns_the_diagnostic() {
    for src in ["domain {", "goal x = 1", "goal \"open", "domain D { state { x: int }", "goal a & b"] {
        let expected = parse_file(F, src).unwrap_err();
        assert_eq!(format(F, src).unwrap_err().message, expected.message, "{src}");
    }
}

#[test]
fn crlf_input_formats_to_lf() {
    assert_eq!(fmt("goal a // c\r\ngoal b\r\n"), "goal a // c\ngoal b\n");
}

#[test]
fn tree_shape_ignores_spans_but_not_parentheses() {
    let shape = |s: &str| tree_shape(&parse_file(F, s).unwrap());
    assert_eq!(shape("goal a+b\n"), shape("\n\ngoal   a +\n b"));
    assert_ne!(shape("goal (a+b)\n"), shape("goal a+b\n"));
    assert_ne!(shape("goal a+b\n"), shape("goal a-b\n"));
}

// ---------------------------------------------------------------- properties

/// Seed programs to mutate: the ones that parse, read once.
fn parsing_seeds() -> &'static [String] {
    static SEEDS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    SEEDS.get_or_init(|| {
        corpus().iter().filter_map(|p| std::fs::read_to_string(p).ok()).filter(|s| parse_file(F, s).is_ok()).collect()
    })
}

#[derive(Clone, Debug)]
enum Mutation {
    /// ` // text` at the end of the line holding byte `at`.
    TrailingComment(usize, String),
    /// A comment line after the line holding `at`.
    OwnLineComment(usize, String, usize),
    /// One more newline at the `n`th newline.
    BlankLine(usize),
    /// Spaces or tabs after the `n`th space.
    Spaces(usize, String),
    /// The indentation of the line holding `at` removed.
    Dedent(usize),
    /// A newline after the `n`th binary operator, comma or opening bracket.
    BreakAfter(usize),
    /// The `n`th newline replaced by `;` (two statements, fields or steps on one line).
    Join(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let text = "[ a-zA-Z0-9{}()\\[\\]\"/,.:;=*-]{0,12}";
    prop_oneof![
        (any::<usize>(), text).prop_map(|(a, t)| Mutation::TrailingComment(a, t)),
        (any::<usize>(), text, 0usize..6).prop_map(|(a, t, i)| Mutation::OwnLineComment(a, t, i)),
        any::<usize>().prop_map(Mutation::BlankLine),
        (any::<usize>(), "[ \t]{1,5}").prop_map(|(a, s)| Mutation::Spaces(a, s)),
        any::<usize>().prop_map(Mutation::Dedent),
        any::<usize>().prop_map(Mutation::BreakAfter),
        any::<usize>().prop_map(Mutation::Join),
    ]
}

fn nth_match(src: &str, n: usize, pred: impl Fn(&str, usize) -> bool) -> Option<usize> {
    let hits: Vec<usize> = src.char_indices().map(|(i, _)| i).filter(|&i| pred(src, i)).collect();
    if hits.is_empty() {
        None
    } else {
        Some(hits[n % hits.len()])
    }
}

fn apply(src: &str, m: &Mutation) -> String {
    let mut s = src.to_string();
    let len = s.len().max(1);
    let line_end = |s: &str, at: usize| s[at.min(s.len())..].find('\n').map_or(s.len(), |i| i + at.min(s.len()));
    let line_start = |s: &str, at: usize| s[..at.min(s.len())].rfind('\n').map_or(0, |i| i + 1);
    let boundary = |s: &str, mut at: usize| {
        at = at.min(s.len());
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        at
    };
    match m {
        Mutation::TrailingComment(at, t) => {
            let at = boundary(&s, at % len);
            let e = line_end(&s, at);
            s.insert_str(e, &format!(" //{t}"));
        }
        Mutation::OwnLineComment(at, t, indent) => {
            let at = boundary(&s, at % len);
            let e = line_end(&s, at);
            s.insert_str(e, &format!("\n{}//{t}", " ".repeat(*indent)));
        }
        Mutation::BlankLine(n) => {
            if let Some(i) = nth_match(&s, *n, |s, i| s.as_bytes()[i] == b'\n') {
                s.insert(i, '\n');
            }
        }
        Mutation::Spaces(n, sp) => {
            if let Some(i) = nth_match(&s, *n, |s, i| s.as_bytes()[i] == b' ') {
                s.insert_str(i, sp);
            }
        }
        Mutation::Dedent(at) => {
            let at = boundary(&s, at % len);
            let st = line_start(&s, at);
            let ws = s[st..].len() - s[st..].trim_start_matches([' ', '\t']).len();
            s.replace_range(st..st + ws, "");
        }
        Mutation::Join(n) => {
            if let Some(i) = nth_match(&s, *n, |s, i| s.as_bytes()[i] == b'\n') {
                s.replace_range(i..i + 1, "; ");
            }
        }
        Mutation::BreakAfter(n) => {
            let breakable = |s: &str, i: usize| {
                let rest = &s[i..];
                ["&& ", "|| ", "+ ", "* ", "== ", ", ", "(", "["].iter().any(|p| rest.starts_with(p))
            };
            if let Some(i) = nth_match(&s, *n, breakable) {
                let skip = s[i..].find([' ', '(', '[']).map_or(1, |k| k + 1);
                s.insert(i + skip, '\n');
            }
        }
    }
    s
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Seed programs with comments, blank lines, spaces, lost indentation and line
    /// breaks added: whatever still parses formats to the same tree, idempotently,
    /// with its comments; whatever does not is refused with the parser's message.
    #[test]
    fn mutated_programs_keep_tree_comments_and_idempotence(
        pick in any::<usize>(),
        mutations in prop::collection::vec(mutation(), 1..12),
    ) {
        let seeds = parsing_seeds();
        let mut src = seeds[pick % seeds.len()].clone();
        for m in &mutations {
            src = apply(&src, m);
        }
        match parse_file(F, &src) {
            Ok(_) => {
                if let Err(e) = check_properties(&src) {
                    prop_assert!(false, "{}\n--- input\n{}", e, src);
                }
            }
            Err(d) => prop_assert_eq!(format(F, &src).unwrap_err().message, d.message),
        }
    }

    /// Generated expressions (random operators, parentheses, unary minus and not,
    /// members, indexes and literals, laid out with random spacing) in a goal.
    #[test]
    fn generated_expressions_keep_their_tree(e in expr_text(), sep in "[ \t]{0,2}") {
        let src = format!("goal{sep} {e}\n");
        if parse_file(F, &src).is_ok() {
            if let Err(err) = check_properties(&src) {
                prop_assert!(false, "{}\n--- input\n{}", err, src);
            }
        }
    }
}

fn expr_text() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        (0i64..1000).prop_map(|n| n.to_string()),
        "[a-e]".prop_map(|s| s.to_string()),
        Just("true".to_string()),
        Just("\"s\\\"t\"".to_string()),
        Just("[]".to_string()),
        Just("[:]".to_string()),
    ];
    leaf.prop_recursive(5, 40, 3, |inner| {
        let ops = prop::sample::select(vec!["+", "-", "*", "/", "%", "==", "!=", "<", "<=", ">", ">=", "&&", "||"]);
        prop_oneof![
            (inner.clone(), ops, inner.clone(), "[ \n]{0,2}", " {0,2}")
                .prop_map(|(l, op, r, s1, s2)| format!("{l}{}{op}{s1}{r}", s2)),
            inner.clone().prop_map(|e| format!("({e})")),
            inner.clone().prop_map(|e| format!("-{e}")),
            inner.clone().prop_map(|e| format!("!{e}")),
            (inner.clone(), inner.clone()).prop_map(|(r, i)| format!("{r}[ {i} ]")),
            (inner.clone(), inner.clone()).prop_map(|(r, a)| format!("{r}.f({a},{a})")),
            inner.clone().prop_map(|r| format!("{r}\n.len")),
            prop::collection::vec(inner.clone(), 0..3).prop_map(|v| format!("[{}]", v.join(",\n"))),
            prop::collection::vec(inner, 1..3).prop_map(|v| format!("set[{}]", v.join(" ,"))),
        ]
    })
}

#[test]
fn lex_with_comments_returns_the_tokens_of_lex_and_every_comment() {
    let src = "goal a // one \r\n// two\ngoal \"//not\" == b//three";
    let (tokens, comments) = lex_with_comments(F, src).unwrap();
    assert_eq!(tokens, ved_syntax::lexer::lex(F, src).unwrap());
    let got: Vec<(&str, &str)> =
        comments.iter().map(|c| (c.text.as_str(), &src[c.span.start as usize..c.span.end as usize])).collect();
    assert_eq!(got, [("// one", "// one"), ("// two", "// two"), ("//three", "//three")]);
}
