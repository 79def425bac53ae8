//! Generated programs and observations: a structure-aware generator of Ved programs
//! (well-typed, or nearly: an expression of the wrong type, a mangled token) and of
//! input streams (observations, relative ones, API calls, time, and bad lines: wrong
//! types, unknown instances and fields, huge numbers, broken JSON). Each case goes
//! through the parser and the checker, and a program that checks runs in the in-memory
//! engine, the entry `ved run --stdin` uses for its lines, under tight bounds from its
//! start (8 ticks per input, a mailbox of 16, values of at most 10,000 elements). One checked program in 100, chosen by the
//! seed, keeps its state in a real store instead: the test then stops the engine cleanly
//! (a checkpoint) or as a crash after its last write, reads the store back and compares
//! it with the engine's memory, and in one such case in three damages a file (a flipped
//! byte, a cut) and opens it again, which must give a clean error, never a panic.
//!
//! Every case is caught on its own (`catch_unwind`) and every panic and mismatch is
//! counted; the test fails on any, naming the seed that replays it.
//!
//! - `VED_FUZZ_GEN_CASES=N`: cases to run (default below, a quick run in the debug suite);
//! - `VED_FUZZ_GEN_FROM=K`: the first case's index, for a long run in shards;
//! - `VED_FUZZ_SEED=S`: replays the one case whose seed is S, and prints its program and lines.
//!
//! - `VED_FUZZ_SLOW_MS=M`: names every case that takes M ms or more (default 500).
//!
//! The output ends with the figures: a line that says what went where (programs parsed,
//! checked and run, observation lines and API calls fed, stores reopened and compared,
//! damaged, the time in each phase, the slowest case, peak RSS), and the last line,
//! `N cases, P panics, M mismatches, T s`. A long run prints a progress line every
//! 250,000 cases, and each failure as it happens.

use std::fmt::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use ved_engine::{Adapters, Call, Engine, JsonLines, RunOptions};

const DEFAULT_CASES: u64 = 20_000;
/// One checked program in this many keeps its state in a real store (the rest run in
/// memory): a store costs files, a write, a read back and sometimes a reopen.
const STORE_EVERY: u64 = 100;
/// The scheduler's bounds for every case, from the engine's start: a program that never
/// reaches its goal stops after this many ticks per input instead of 10,000. Eight keeps
/// a program that doubles a value on every tick (`f0 += f0`) small: its cost grows with
/// the value, up to the VM's bound of a million elements, and such cases made most of the
/// time at 50 ticks (see RELIABILITY.md). Values are bounded at ten thousand elements
/// (a stored one at 160,000 through its nested values) instead of a million: the same
/// faults, reached in a few doublings, and a case that writes its largest value into the
/// journal on every slice costs milliseconds, not minutes.
const LIMITS: ved_runtime::Limits =
    ved_runtime::Limits { ticks_per_input_max: 8, mailbox_max: 16, value_size_max: 10_000 };
/// A long advance (an hour or a day: a slice for every retry due in it, up to 1,440)
/// becomes a two-minute one when the instances already hold more than this many elements
/// and string bytes: every slice of such a case writes its large values into the journal
/// and the events, and one case took nine minutes. The bound is on work, not time, so
/// every case still runs the same lines on every machine; a day's advance on a small state
/// is still fed as it is.
const LONG_ADVANCE_STATE_MAX: usize = 10_000;
/// A case that takes this long is named as it ends.
const SLOW_MS: u128 = 500;
/// A progress line every this many cases.
const PROGRESS_EVERY: u64 = 250_000;

// ---------------------------------------------------------------------------------------
// Randomness: one seed per case, nothing else.

use ved_testkit::Rng;

/// The seed of case `i`: a hash of the index, so shards never overlap.
fn case_seed(i: u64) -> u64 {
    Rng(i).next()
}

// ---------------------------------------------------------------------------------------
// Types and the program's names.

#[derive(Clone, Debug, PartialEq)]
enum Ty {
    Int,
    Bool,
    Str,
    List(Box<Ty>),
    Set(Box<Ty>),
    Map(Box<Ty>),
}

impl Ty {
    fn text(&self) -> String {
        match self {
            Ty::Int => "int".into(),
            Ty::Bool => "bool".into(),
            Ty::Str => "string".into(),
            Ty::List(t) => format!("list<{}>", t.text()),
            Ty::Set(t) => format!("set<{}>", t.text()),
            Ty::Map(t) => format!("map<string, {}>", t.text()),
        }
    }
    fn is_coll(&self) -> bool {
        matches!(self, Ty::List(_) | Ty::Set(_))
    }
}

fn random_ty(r: &mut Rng, depth: u32) -> Ty {
    let scalar = |r: &mut Rng| match r.below(3) {
        0 => Ty::Int,
        1 => Ty::Str,
        _ => Ty::Bool,
    };
    match r.below(if depth == 0 { 3 } else { 8 }) {
        0..=2 => scalar(r),
        3 | 4 => Ty::List(Box::new(if r.one_in(8) { random_ty(r, depth - 1) } else { elem_ty(r) })),
        5 | 6 => Ty::Set(Box::new(elem_ty(r))),
        _ => Ty::Map(Box::new(if r.one_in(6) { random_ty(r, depth - 1) } else { scalar(r) })),
    }
}

fn elem_ty(r: &mut Rng) -> Ty {
    if r.one_in(3) {
        Ty::Str
    } else {
        Ty::Int
    }
}

struct Domain {
    name: String,
    fields: Vec<(String, Ty)>,
}

/// Names in scope while a step is generated.
struct Scope<'a> {
    fields: &'a [(String, Ty)],
    lets: Vec<(String, Ty)>,
    /// Defaults are constants: no field may appear.
    constant: bool,
    next_let: usize,
}

const WORDS: [&str; 8] = ["a", "b", "web", "db", "", "x y", "é", "k"];
const ADAPTERS: [&str; 3] = ["Firewall", "Pager", "Pool"];
const ACTIONS: [&str; 4] = ["Open", "Close", "Start", "Page"];

fn int_lit(r: &mut Rng) -> String {
    match r.below(20) {
        0 => "9223372036854775807".into(),
        1 => "-9223372036854775807".into(),
        2 => "4611686018427387904".into(),
        3 => "0".into(),
        _ => format!("{}", r.below(12) as i64 - 3),
    }
}

fn str_lit(r: &mut Rng) -> String {
    match r.below(12) {
        0 => "\"a\\\"b\\\\c\\n\\t\"".into(),
        _ => format!("\"{}\"", r.pick(&WORDS)),
    }
}

/// A name of type `ty` in scope, if any.
fn name_of(r: &mut Rng, s: &Scope, ty: &Ty) -> Option<String> {
    let mut names: Vec<&String> = s.lets.iter().filter(|(_, t)| t == ty).map(|(n, _)| n).collect();
    if !s.constant {
        names.extend(s.fields.iter().filter(|(_, t)| t == ty).map(|(n, _)| n));
    }
    if names.is_empty() {
        None
    } else {
        Some(r.pick(&names).to_string())
    }
}

/// A name of any collection type in scope whose elements (or values) are `elem`.
fn coll_of(r: &mut Rng, s: &Scope, elem: &Ty) -> Option<String> {
    let mut names: Vec<&String> = s
        .lets
        .iter()
        .chain(s.fields.iter().filter(|_| !s.constant))
        .filter_map(|(n, t)| match t {
            Ty::List(e) | Ty::Set(e) if **e == *elem => Some(n),
            _ => None,
        })
        .collect();
    names.sort();
    if names.is_empty() {
        None
    } else {
        Some(r.pick(&names).to_string())
    }
}

fn map_of(r: &mut Rng, s: &Scope, val: &Ty) -> Option<String> {
    let names: Vec<&String> = s
        .lets
        .iter()
        .chain(s.fields.iter().filter(|_| !s.constant))
        .filter_map(|(n, t)| match t {
            Ty::Map(v) if **v == *val => Some(n),
            _ => None,
        })
        .collect();
    if names.is_empty() {
        None
    } else {
        Some(r.pick(&names).to_string())
    }
}

/// A literal of `ty` (possibly empty; the context gives its type).
fn literal(r: &mut Rng, s: &mut Scope, ty: &Ty, depth: u32) -> String {
    match ty {
        Ty::Int => int_lit(r),
        Ty::Bool => if r.one_in(2) { "true" } else { "false" }.into(),
        Ty::Str => str_lit(r),
        Ty::List(e) | Ty::Set(e) => {
            let n = r.below(4);
            let items: Vec<String> = (0..n).map(|_| expr(r, s, e, depth.saturating_sub(1))).collect();
            let prefix = if matches!(ty, Ty::Set(_)) && r.one_in(2) { "set" } else { "" };
            let trailing = if n > 0 && r.one_in(6) { "," } else { "" };
            format!("{prefix}[{}{trailing}]", items.join(", "))
        }
        Ty::Map(v) => {
            let n = r.below(3);
            if n == 0 {
                return "[:]".into();
            }
            let items: Vec<String> =
                (0..n).map(|_| format!("{}: {}", str_lit(r), expr(r, s, v, depth.saturating_sub(1)))).collect();
            format!("[{}]", items.join(", "))
        }
    }
}

/// An expression of type `ty`, of depth at most `depth`. Now and then, on purpose, an
/// expression of another type: the checker must say so.
fn expr(r: &mut Rng, s: &mut Scope, ty: &Ty, depth: u32) -> String {
    if r.one_in(150) {
        let other = random_ty(r, 1);
        return expr(r, s, &other, depth.saturating_sub(1));
    }
    if depth == 0 || r.one_in(4) {
        if r.one_in(2) {
            if let Some(n) = name_of(r, s, ty) {
                return n;
            }
        }
        return literal(r, s, ty, 1);
    }
    let d = depth - 1;
    match ty {
        Ty::Int => match r.below(14) {
            0 => format!("{} + {}", expr(r, s, ty, d), expr(r, s, ty, d)),
            1 => format!("{} - {}", expr(r, s, ty, d), expr(r, s, ty, d)),
            2 => format!("{} * {}", expr(r, s, ty, d), expr(r, s, ty, d)),
            3 => format!("{} / {}", expr(r, s, ty, d), expr(r, s, ty, d)),
            4 => format!("{} % {}", expr(r, s, ty, d), expr(r, s, ty, d)),
            5 => format!("-{}", paren(expr(r, s, ty, d))),
            6 => format!("({})", expr(r, s, ty, d)),
            7 => {
                let c = random_coll(r, s, d);
                format!("{}.length", paren(c))
            }
            8 => format!("{}.length", paren(expr(r, s, &Ty::Str, d))),
            9 => match coll_of(r, s, &Ty::Int) {
                Some(c) => format!("{c}.{}", r.pick(&["first", "last"])),
                None => int_lit(r),
            },
            10 => match name_of(r, s, &Ty::List(Box::new(Ty::Int))) {
                Some(c) => format!("{c}[{}]", expr(r, s, &Ty::Int, d)),
                None => int_lit(r),
            },
            11 => match map_of(r, s, &Ty::Int) {
                Some(m) if r.one_in(2) => format!("{m}[{}]", expr(r, s, &Ty::Str, d)),
                Some(m) => format!("{m}.get({}, {})", expr(r, s, &Ty::Str, d), expr(r, s, &Ty::Int, d)),
                None => int_lit(r),
            },
            _ => name_of(r, s, ty).unwrap_or_else(|| int_lit(r)),
        },
        Ty::Bool => match r.below(12) {
            0 => format!("{} && {}", expr(r, s, ty, d), expr(r, s, ty, d)),
            1 => format!("{} || {}", expr(r, s, ty, d), expr(r, s, ty, d)),
            2 => format!("!{}", paren(expr(r, s, ty, d))),
            3 | 4 => {
                let op = r.pick(&["<", "<=", ">", ">="]);
                let t = if r.one_in(4) { Ty::Str } else { Ty::Int };
                format!("{} {op} {}", expr(r, s, &t, d), expr(r, s, &t, d))
            }
            5 | 6 => {
                let op = r.pick(&["==", "!="]);
                let t = random_ty(r, 1);
                format!("{} {op} {}", expr(r, s, &t, d), expr(r, s, &t, d))
            }
            7 => {
                let e = elem_ty(r);
                match coll_of(r, s, &e) {
                    Some(c) => format!("{c}.contains({})", expr(r, s, &e, d)),
                    None => "true".into(),
                }
            }
            8 => {
                let c = random_coll(r, s, d);
                format!("{}.is_empty", paren(c))
            }
            9 => match map_of(r, s, &Ty::Int).or_else(|| map_of(r, s, &Ty::Str)) {
                Some(m) => format!("{m}.contains({})", expr(r, s, &Ty::Str, d)),
                None => format!("{}.contains({})", paren(expr(r, s, &Ty::Str, d)), expr(r, s, &Ty::Str, d)),
            },
            10 => format!("({})", expr(r, s, ty, d)),
            _ => name_of(r, s, ty).unwrap_or_else(|| "false".into()),
        },
        Ty::Str => match r.below(6) {
            0 | 1 => format!("{} + {}", expr(r, s, ty, d), expr(r, s, ty, d)),
            2 => match name_of(r, s, &Ty::List(Box::new(Ty::Str))) {
                Some(c) => format!("{c}[{}]", expr(r, s, &Ty::Int, d)),
                None => str_lit(r),
            },
            3 => match map_of(r, s, &Ty::Str) {
                Some(m) => format!("{m}.get({}, {})", expr(r, s, &Ty::Str, d), expr(r, s, &Ty::Str, d)),
                None => str_lit(r),
            },
            _ => name_of(r, s, ty).unwrap_or_else(|| str_lit(r)),
        },
        Ty::List(e) | Ty::Set(e) => {
            let base = name_of(r, s, ty).unwrap_or_else(|| literal(r, s, ty, d));
            match r.below(8) {
                0 | 1 => {
                    let arg = if r.one_in(2) { expr(r, s, e, d) } else { expr(r, s, ty, d) };
                    format!("{base}.add({arg})")
                }
                2 => format!("{base}.remove({})", expr(r, s, e, d)),
                3 => format!("{base}.{}({})", r.pick(&["union", "intersection", "difference"]), expr(r, s, ty, d)),
                4 if matches!(ty, Ty::List(_)) => match map_of(r, s, e) {
                    Some(m) => format!("{m}.values"),
                    None => base,
                },
                5 if **e == Ty::Str && matches!(ty, Ty::Set(_)) => {
                    match map_of(r, s, &Ty::Int).or_else(|| map_of(r, s, &Ty::Str)) {
                        Some(m) => format!("{m}.keys"),
                        None => base,
                    }
                }
                _ => base,
            }
        }
        Ty::Map(v) => {
            let base = name_of(r, s, ty).unwrap_or_else(|| literal(r, s, ty, d));
            match r.below(4) {
                0 => format!("{base}.insert({}, {})", expr(r, s, &Ty::Str, d), expr(r, s, v, d)),
                1 => format!("{base}.remove({})", expr(r, s, &Ty::Str, d)),
                _ => base,
            }
        }
    }
}

fn paren(e: String) -> String {
    if e.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        e
    } else {
        format!("({e})")
    }
}

/// Any collection-typed (or string) expression, for `.length` and `.is_empty`.
fn random_coll(r: &mut Rng, s: &mut Scope, d: u32) -> String {
    let t = loop {
        let t = random_ty(r, 1);
        if t.is_coll() || matches!(t, Ty::Map(_) | Ty::Str) {
            break t;
        }
    };
    expr(r, s, &t, d)
}

fn block(r: &mut Rng, s: &mut Scope, out: &mut String, indent: usize, budget: &mut usize, depth: u32) {
    let lets_before = s.lets.len();
    let n = 1 + r.below(4);
    for _ in 0..n {
        if *budget == 0 {
            break;
        }
        *budget -= 1;
        statement(r, s, out, indent, budget, depth);
    }
    // A `let` inside a block is visible only there.
    s.lets.truncate(lets_before);
}

fn statement(r: &mut Rng, s: &mut Scope, out: &mut String, indent: usize, budget: &mut usize, depth: u32) {
    let pad = "  ".repeat(indent);
    match r.below(10) {
        0 | 1 => {
            let t = random_ty(r, 1);
            let e = expr(r, s, &t, 2);
            let name = format!("l{}", s.next_let);
            s.next_let += 1;
            if r.one_in(2) {
                let _ = writeln!(out, "{pad}let {name}: {} = {e}", t.text());
            } else {
                let _ = writeln!(out, "{pad}let {name} = {e}");
            }
            s.lets.push((name, t));
        }
        2..=4 => {
            let (f, t) = s.fields[r.below(s.fields.len())].clone();
            let op = match t {
                Ty::Int => *r.pick(&["=", "+=", "-="]),
                Ty::Str => *r.pick(&["=", "+="]),
                _ => "=",
            };
            let e = expr(r, s, &t, 2);
            let _ = writeln!(out, "{pad}{f} {op} {e}");
        }
        5 | 6 if depth > 0 => {
            let c = expr(r, s, &Ty::Bool, 2);
            let _ = writeln!(out, "{pad}if {c} {{");
            block(r, s, out, indent + 1, budget, depth - 1);
            match r.below(3) {
                0 => {
                    let _ = writeln!(out, "{pad}}} else {{");
                    block(r, s, out, indent + 1, budget, depth - 1);
                    let _ = writeln!(out, "{pad}}}");
                }
                1 => {
                    let c = expr(r, s, &Ty::Bool, 2);
                    let _ = writeln!(out, "{pad}}} else if {c} {{");
                    block(r, s, out, indent + 1, budget, depth - 1);
                    let _ = writeln!(out, "{pad}}}");
                }
                _ => {
                    let _ = writeln!(out, "{pad}}}");
                }
            }
        }
        _ => {
            let args: Vec<String> = (0..r.below(3))
                .map(|_| {
                    let t = random_ty(r, 1);
                    expr(r, s, &t, 1)
                })
                .collect();
            let call = if args.is_empty() && r.one_in(2) { String::new() } else { format!("({})", args.join(", ")) };
            let _ = writeln!(out, "{pad}emit {}.{}{call}", r.pick(&ADAPTERS), r.pick(&ACTIONS));
        }
    }
}

/// A whole program: its text and its domains.
fn program(r: &mut Rng) -> (String, Vec<Domain>) {
    let mut out = String::new();
    let mut domains = Vec::new();
    for d in 0..1 + r.below(3) {
        let name = format!("D{d}");
        let fields: Vec<(String, Ty)> = (0..1 + r.below(5)).map(|i| (format!("f{i}"), random_ty(r, 1))).collect();
        let _ = writeln!(out, "domain {name} {{");
        let _ = writeln!(out, "  state {{");
        for (f, t) in &fields {
            let mut s = Scope { fields: &fields, lets: Vec::new(), constant: true, next_let: 0 };
            if r.one_in(2) {
                let e = expr(r, &mut s, t, 2);
                let _ = writeln!(out, "    {f}: {} = {e}", t.text());
            } else {
                let _ = writeln!(out, "    {f}: {}", t.text());
            }
        }
        let _ = writeln!(out, "  }}");
        // Some goals and transitions sit at the top level, below their domain.
        let top = r.one_in(4);
        let mut members = String::new();
        for g in 0..r.below(3) {
            let mut s = Scope { fields: &fields, lets: Vec::new(), constant: false, next_let: 0 };
            let p = expr(r, &mut s, &Ty::Bool, 3);
            if r.one_in(2) {
                let _ = writeln!(members, "goal g{g} {{\n  predicate {p}\n}}");
            } else {
                let _ = writeln!(members, "goal {p}");
            }
        }
        for t in 0..r.below(4) {
            let mut s = Scope { fields: &fields, lets: Vec::new(), constant: false, next_let: 0 };
            let opt = if r.one_in(5) { "optimistic " } else { "" };
            let _ = writeln!(members, "{opt}transition t{t} {{\n  step {{");
            let mut budget = 8;
            block(r, &mut s, &mut members, 2, &mut budget, 2);
            let _ = writeln!(members, "  }}\n}}");
        }
        if top {
            let _ = writeln!(out, "}}");
            out.push_str(&members);
        } else {
            out.push_str(&members);
            let _ = writeln!(out, "}}");
        }
        domains.push(Domain { name, fields });
    }
    (out, domains)
}

/// Near-well-formed: a few byte-level cuts and splices of language fragments.
fn mangle(r: &mut Rng, text: &str) -> String {
    const FRAGMENTS: [&str; 16] =
        ["{", "}", "(", ")", "[", "]", ",", "\n", "==", "=", "-", "\"", "let ", "if ", "9223372036854775808", "é"];
    let mut b = text.as_bytes().to_vec();
    for _ in 0..1 + r.below(3) {
        let at = r.below(b.len() + 1);
        match r.below(3) {
            0 => {
                let end = (at + 1 + r.below(8)).min(b.len());
                b.drain(at.min(b.len())..end);
            }
            1 => {
                b.splice(at..at, r.pick(&FRAGMENTS).bytes());
            }
            _ => {
                if at < b.len() {
                    b[at] = 0x20 + r.below(0x5f) as u8;
                }
            }
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

// ---------------------------------------------------------------------------------------
// Input lines.

fn json_value(r: &mut Rng, ty: &Ty, depth: u32) -> serde_json::Value {
    use serde_json::json;
    match ty {
        Ty::Int => match r.below(12) {
            0 => json!(i64::MAX),
            1 => json!(i64::MIN),
            _ => json!(r.below(12) as i64 - 3),
        },
        Ty::Bool => json!(r.one_in(2)),
        Ty::Str => json!(*r.pick(&WORDS)),
        Ty::List(e) | Ty::Set(e) => {
            serde_json::Value::Array((0..r.below(4)).map(|_| json_value(r, e, depth.saturating_sub(1))).collect())
        }
        Ty::Map(v) => serde_json::Value::Object(
            (0..r.below(3)).map(|_| (r.pick(&WORDS).to_string(), json_value(r, v, depth.saturating_sub(1)))).collect(),
        ),
    }
}

/// A value that fits no field well: another type, a huge number, a deep nest.
fn bad_value(r: &mut Rng) -> String {
    match r.below(10) {
        0 => "18446744073709551616".into(),
        1 => "1e400".into(),
        2 => "-0.5".into(),
        3 => "null".into(),
        4 => "[[[[[[[[[[1]]]]]]]]]]".into(),
        5 => "{\"a\": {\"b\": [1, \"x\"]}}".into(),
        6 => format!("\"{}\"", "z".repeat(r.below(5000))),
        7 => "[1, \"two\", true]".into(),
        8 => "99999999999999999999999999999".into(),
        _ => "\"\\ud800\"".into(),
    }
}

fn line(r: &mut Rng, domains: &[Domain], extra: &[String]) -> String {
    let d = &domains[r.below(domains.len())];
    let inst = if !extra.is_empty() && r.one_in(3) { r.pick(extra).clone() } else { d.name.clone() };
    match r.below(20) {
        0..=8 => {
            let mut set = serde_json::Map::new();
            for _ in 0..1 + r.below(2) {
                let (f, t) = &d.fields[r.below(d.fields.len())];
                set.insert(f.clone(), json_value(r, t, 2));
            }
            let mut o = serde_json::json!({"instance": inst, "set": set});
            if r.one_in(5) {
                o["source"] = serde_json::json!(r.pick(&["probe", "watch", ""]));
                o["version"] = serde_json::json!(r.below(4));
            }
            if r.one_in(8) {
                o["caused_by"] = serde_json::json!(format!("{inst}/{}/0", r.below(5)));
            }
            o.to_string()
        }
        9 | 10 => {
            let (f, _) = &d.fields[r.below(d.fields.len())];
            let delta = match r.below(6) {
                0 => i64::MAX,
                1 => i64::MIN,
                _ => r.below(7) as i64 - 3,
            };
            serde_json::json!({"instance": inst, "add": {f.as_str(): delta}}).to_string()
        }
        // An hour's or a day's advance runs every retry due in it (up to a minute apart, each
        // a slice, a journal entry and events): one advance in 32 is that long, or longer
        // than allowed.
        11 if r.one_in(32) => {
            format!("{{\"advance_ms\": {}}}", *r.pick(&[3_600_000u64, 86_400_000, 86_400_001, u64::MAX]))
        }
        11 => format!("{{\"advance_ms\": {}}}", *r.pick(&[0u64, 150, 1_000, 30_000, 120_000])),
        12 => {
            let (f, _) = &d.fields[r.below(d.fields.len())];
            format!("{{\"instance\": \"{inst}\", \"set\": {{\"{f}\": {}}}}}", bad_value(r))
        }
        13 => format!("{{\"instance\": \"{inst}\", \"set\": {{\"nope\": 1}}}}"),
        14 => "{\"instance\": \"Nobody\", \"set\": {\"f0\": 1}}".into(),
        15 => {
            // Broken JSON: a valid line cut short.
            let full = format!("{{\"instance\": \"{inst}\", \"set\": {{\"f0\": [1, 2, 3]}}}}");
            full[..r.below(full.len())].to_string()
        }
        16 => r
            .pick(&["[]", "1", "\"x\"", "{}", "{\"instance\": 1}", "{\"add\": {}}", "{\"advance_ms\": -1}"])
            .to_string(),
        17 => format!("{{\"instance\": \"{inst}\", \"add\": {{}}}}"),
        18 => format!("{{\"instance\": \"{inst}\", \"set\": {{}}, \"bogus\": true}}"),
        _ => format!("{{\"instance\": \"{inst}\", \"add\": {{\"f0\": \"1\"}}}}"),
    }
}

// ---------------------------------------------------------------------------------------
// The engine and the store.

/// An actuator that fails some intents, as the case's seed says.
struct Flaky(Mutex<Rng>, usize);

impl ved_adapters::Actuator for Flaky {
    fn deliver(&self, _intent: &ved_adapters::IntentRequest) -> ved_adapters::ActionResult {
        let mut r = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if self.1 > 0 && r.one_in(self.1) {
            Err(ved_adapters::ActionError::failed("the generator said so"))
        } else {
            Ok(())
        }
    }
}

/// What went where, counted as it happened.
#[derive(Default, Clone, Copy)]
struct Tally {
    cases: u64,
    /// Programs that passed the parser and the checker.
    checked: u64,
    /// Checked programs whose engine started (a default that faults refuses the start).
    started: u64,
    /// Observation lines fed (`handle_line`), and API calls.
    lines: u64,
    calls: u64,
    /// Cases that kept a real store, read back and compared.
    stored: u64,
    /// Of those: stopped cleanly (`finish`, a checkpoint) or crashed after the last write.
    checkpointed: u64,
    crashed: u64,
    /// Stores with a byte flipped or a file cut, then opened again.
    damaged: u64,
    panics: u64,
    mismatches: u64,
}

/// Where the time went, summed over cases.
#[derive(Default, Clone, Copy)]
struct Times {
    generate: Duration,
    check: Duration,
    engine: Duration,
    store: Duration,
}

fn opts(dir: Option<&Path>, seed: u64) -> RunOptions {
    RunOptions {
        seed,
        data_dir: dir.map(Path::to_path_buf),
        durability: ved_store::Durability::None,
        recover: false,
        config: None,
        flush: ved_store::Flush::Manual,
        limits: LIMITS,
        wall_ms_at_start: None,
        audit_key: None,
    }
}

fn adapters(r: &mut Rng) -> Adapters {
    let fail_one_in = *r.pick(&[0usize, 0, 2, 5]);
    Adapters::single(Arc::new(Flaky(Mutex::new(Rng(r.next())), fail_one_in)))
}

fn snapshots<S: ved_engine::Sink>(e: &Engine<S>) -> Vec<ved_runtime::InstanceSnapshot> {
    let mut v: Vec<_> = e.runtime().instances().iter().map(|i| i.snapshot()).collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

/// Whether `line` advances the clock by an hour or more (but not past the engine's bound).
fn is_long_advance(line: &str) -> bool {
    let ms = serde_json::from_str::<serde_json::Value>(line).ok().and_then(|v| v.get("advance_ms")?.as_u64());
    ms.is_some_and(|ms| (3_600_000..=86_400_000).contains(&ms))
}

/// Elements and string bytes in all the instances' states, counted through nested values.
fn state_size<S: ved_engine::Sink>(e: &Engine<S>) -> usize {
    fn size(v: &ved_vm::Value) -> usize {
        use ved_vm::Value as V;
        match v {
            V::Int(_) | V::Bool(_) => 1,
            V::Str(s) => s.len().max(1),
            V::List(l) => l.iter().map(size).sum::<usize>().max(1),
            V::Set(s) => s.iter().map(size).sum::<usize>().max(1),
            V::Map(m) => m.iter().map(|(k, v)| k.len() + size(v)).sum::<usize>().max(1),
        }
    }
    e.runtime().instances().iter().flat_map(|i| i.snapshot().state).map(|v| size(&v)).sum()
}

/// Whether case `seed`, if its program checks, keeps its state in a real store: one in
/// [`STORE_EVERY`], chosen by the seed's high bits (the low ones seed the generator).
fn keeps_a_store(seed: u64) -> bool {
    (seed >> 40).is_multiple_of(STORE_EVERY)
}

/// Runs one case. `Err` is a mismatch (a panic unwinds out of it).
fn run_case(seed: u64, store_dir: &Path, tally: &mut Tally, times: &mut Times, show: bool) -> Result<(), String> {
    let t0 = Instant::now();
    let mut r = Rng(seed);
    let (mut text, domains) = program(&mut r);
    if r.one_in(4) {
        text = mangle(&mut r, &text);
    }
    if show {
        eprintln!("program:\n{text}");
    }
    let t1 = Instant::now();
    times.generate += t1 - t0;
    let checked = ved_engine::load::check_texts(vec![("fuzz.ved".into(), text)]);
    let loaded = match checked {
        Ok(l) => {
            let _ = ved_syntax::diag::render_all(&l.warnings, &l.sources);
            l
        }
        Err(e) => {
            // Rendering must hold whatever the spans.
            let _ = e.to_string();
            times.check += t1.elapsed();
            return Ok(());
        }
    };
    tally.checked += 1;
    let t2 = Instant::now();
    times.check += t2 - t1;
    let dir = keeps_a_store(seed).then_some(store_dir);
    if let Some(d) = dir {
        let _ = std::fs::remove_dir_all(d);
    }
    let engine_seed = r.next();
    // The limits are in the options: the start itself runs under them.
    let started = Engine::start(
        loaded,
        &opts(dir, engine_seed),
        adapters(&mut r),
        JsonLines::new(std::io::sink()),
        Box::new(|_| {}),
    );
    let mut ved = match started {
        Ok(e) => e,
        // A default that faults stops the start, cleanly.
        Err(e) => {
            let _ = (e.to_string(), e.hint());
            times.engine += t2.elapsed();
            return Ok(());
        }
    };
    tally.started += 1;
    let mut extra: Vec<String> = Vec::new();
    let n_lines = r.below(13);
    for n in 1..=n_lines as u64 {
        if r.one_in(12) {
            // The API, too: instances made and removed from JSON.
            let d = &domains[r.below(domains.len())];
            let name = format!("i{}", r.below(4));
            let mut state = serde_json::Map::new();
            if let Some((f, t)) = d.fields.first() {
                let v = if r.one_in(4) {
                    serde_json::from_str(&bad_value(&mut r)).unwrap_or_default()
                } else {
                    json_value(&mut r, t, 2)
                };
                state.insert(f.clone(), v);
            }
            let call = match r.below(3) {
                0 => Call::Delete(name.clone()),
                _ => Call::CreateMany {
                    items: vec![serde_json::json!({"name": name, "domain": d.name, "state": state})],
                    single: true,
                    max_instances: 8,
                },
            };
            if show {
                eprintln!("call {n}: {call:?}");
            }
            ved.call(call, Box::new(|_| {}));
            tally.calls += 1;
            if !extra.contains(&name) {
                extra.push(name);
            }
        } else {
            let mut l = line(&mut r, &domains, &extra);
            if is_long_advance(&l) && state_size(&ved) > LONG_ADVANCE_STATE_MAX {
                l = "{\"advance_ms\": 120000}".into();
            }
            if show {
                eprintln!("line {n}: {l}");
            }
            ved.handle_line(n, &l);
            tally.lines += 1;
        }
        if r.one_in(3) {
            ved.run_until_idle().map_err(|e| format!("run_until_idle: {e}"))?;
        }
    }
    ved.run_until_idle().map_err(|e| format!("run_until_idle: {e}"))?;
    let t3 = Instant::now();
    times.engine += t3 - t2;
    let Some(dir) = dir else {
        return ved.finish().map(|_| ()).map_err(|e| format!("finish: {e}"));
    };
    tally.stored += 1;
    let memory = snapshots(&ved);
    let outcome = store_round(&mut r, ved, dir, &memory, tally);
    times.store += t3.elapsed();
    outcome
}

/// Stops the engine cleanly (`finish`: a checkpoint) or as a crash right after its last
/// write, reads the store back and compares every instance with `memory`; in one case of
/// three then damages a file and opens the store again.
fn store_round<S: ved_engine::Sink>(
    r: &mut Rng,
    ved: Engine<S>,
    dir: &Path,
    memory: &[ved_runtime::InstanceSnapshot],
    tally: &mut Tally,
) -> Result<(), String> {
    if r.one_in(2) {
        ved.finish().map_err(|e| format!("finish on a manual-flush store: {e}"))?;
        tally.checkpointed += 1;
    } else {
        ved.crash();
        tally.crashed += 1;
    }
    let rec = ved_store::read_only(dir).map_err(|e| format!("the store does not read back: {e}"))?;
    let mut disk: Vec<_> = rec.snapshots.values().map(|s| s.snapshot.clone()).collect();
    disk.sort_by(|a, b| a.name.cmp(&b.name));
    if disk != memory {
        let names = |v: &[ved_runtime::InstanceSnapshot]| v.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
        let first = memory.iter().zip(&disk).find(|(m, d)| m != d);
        return Err(format!(
            "the store recovered other state than the engine held: memory {:?}, disk {:?}; first difference: {first:?}",
            names(memory),
            names(&disk)
        ));
    }
    if r.one_in(3) {
        damage(r, dir, tally)?;
    }
    Ok(())
}

/// Flips a byte in, or cuts, one file of a closed store; opening it must either work
/// or say what is wrong.
fn damage(r: &mut Rng, dir: &Path, tally: &mut Tally) -> Result<(), String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n != "lock"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Ok(());
    }
    let f = r.pick(&files).clone();
    let mut bytes = std::fs::read(&f).map_err(|e| format!("{}: {e}", f.display()))?;
    if bytes.is_empty() {
        return Ok(());
    }
    if r.one_in(2) {
        let at = r.below(bytes.len());
        bytes[at] ^= 1 << r.below(8);
    } else {
        bytes.truncate(r.below(bytes.len()));
    }
    std::fs::write(&f, &bytes).map_err(|e| format!("{}: {e}", f.display()))?;
    tally.damaged += 1;
    if let Err(e) = ved_store::read_only(dir) {
        let _ = (e.to_string(), e.hint());
    }
    let recover = r.one_in(2);
    match ved_store::Store::open_with(
        dir,
        ved_store::Durability::None,
        recover,
        ved_store::Flush::Manual,
        Box::new(|_| {}),
    ) {
        Ok((store, _)) => store.close().map_err(|e| format!("closing a reopened store: {e}"))?,
        Err(e) => {
            let _ = (e.to_string(), e.hint());
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| v.trim().parse().unwrap_or_else(|_| panic!("{name}={v} is not a number")))
}

/// Peak resident memory of this process, from /proc (0 where there is none).
fn peak_rss_mb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

fn breakdown(t: &Tally, times: &Times, slowest: (u128, u64)) -> String {
    format!(
        "parsed {} programs, checked {}, ran {} in the engine; fed {} observation lines and {} API calls; {} stores reopened and compared ({} after a checkpoint, {} after a crash), {} damaged; time: generate {:.0} s, parse+check {:.0} s, engine {:.0} s, store {:.0} s; slowest case {} ms (VED_FUZZ_SEED={}); peak RSS {} MB",
        t.cases,
        t.checked,
        t.started,
        t.lines,
        t.calls,
        t.stored,
        t.checkpointed,
        t.crashed,
        t.damaged,
        times.generate.as_secs_f64(),
        times.check.as_secs_f64(),
        times.engine.as_secs_f64(),
        times.store.as_secs_f64(),
        slowest.0,
        slowest.1,
        peak_rss_mb()
    )
}

#[test]
fn generated_programs_and_observations_never_panic_and_the_store_agrees() {
    let replay = env_u64("VED_FUZZ_SEED");
    let from = env_u64("VED_FUZZ_GEN_FROM").unwrap_or(0);
    let cases = env_u64("VED_FUZZ_GEN_CASES").unwrap_or(DEFAULT_CASES);
    let seeds: Box<dyn Iterator<Item = u64>> = match replay {
        Some(s) => Box::new(std::iter::once(s)),
        None => Box::new((from..from + cases).map(case_seed)),
    };
    let base = std::env::temp_dir().join(format!("ved-fuzz-{}", std::process::id()));
    let store_dir = base.join("store");
    let mut tally = Tally::default();
    let mut times = Times::default();
    let mut failures: Vec<String> = Vec::new();
    let start = Instant::now();
    let mut slowest = (0u128, 0u64);
    let verbose = std::env::var_os("VED_FUZZ_GEN_VERBOSE").is_some();
    let show = replay.is_some();
    let slow_ms = env_u64("VED_FUZZ_SLOW_MS").map_or(SLOW_MS, u128::from);
    for (k, seed) in seeds.enumerate() {
        if verbose {
            eprintln!("case {k}: VED_FUZZ_SEED={seed}");
        }
        let t0 = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| run_case(seed, &store_dir, &mut tally, &mut times, show)));
        tally.cases += 1;
        let what = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(m)) => {
                tally.mismatches += 1;
                Some(format!("mismatch: {m}"))
            }
            Err(p) => {
                tally.panics += 1;
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                Some(format!("panic: {msg}"))
            }
        };
        if let Some(w) = what {
            let f = format!("{w}\n  replay: VED_FUZZ_SEED={seed} cargo test -p ved-engine --test fuzz -- --nocapture");
            // At once, too: a long run's findings must not wait for its end.
            eprintln!("{f}");
            failures.push(f);
        }
        let ms = t0.elapsed().as_millis();
        if ms >= slow_ms {
            eprintln!("slow case: {ms} ms, VED_FUZZ_SEED={seed}");
        }
        if ms > slowest.0 {
            slowest = (ms, seed);
        }
        if tally.cases.is_multiple_of(PROGRESS_EVERY) {
            eprintln!(
                "progress: {} cases, {} panics, {} mismatches, {:.0} s; {}",
                tally.cases,
                tally.panics,
                tally.mismatches,
                start.elapsed().as_secs_f64(),
                breakdown(&tally, &times, slowest)
            );
        }
    }
    let _ = std::fs::remove_dir_all(&base);
    for f in failures.iter().take(20) {
        eprintln!("{f}");
    }
    let t = tally;
    // The figures: the breakdown, then the last line.
    eprintln!("{}", breakdown(&t, &times, slowest));
    eprintln!(
        "{} cases, {} panics, {} mismatches, {:.0} s",
        t.cases,
        t.panics,
        t.mismatches,
        start.elapsed().as_secs_f64()
    );
    assert!(failures.is_empty(), "{} of {} cases failed; the first: {}", failures.len(), t.cases, failures[0]);
    if replay.is_none() {
        // The generator must reach the engine and the store, not only the parser.
        assert!(t.checked * 8 > t.cases, "only {} of {} programs checked", t.checked, t.cases);
        assert!(t.started * 2 > t.checked, "only {} of {} checked programs started", t.started, t.checked);
        assert!(t.stored > 0, "no case used a store");
    }
}

/// Found by the generator: one `advance_ms` line of `u64::MAX` made the engine run every
/// retry due on the way, a capped backoff after another, for ever. Such a line is now
/// refused with an error event, and a day's advance still runs its retries.
#[test]
fn an_endless_advance_is_refused_and_a_day_is_run() {
    let src = "domain D {\n  state {\n    n: int\n  }\n  goal n == 1\n  transition t {\n    step {\n      emit Pool.Start()\n      n = 1\n    }\n  }\n}\n";
    let loaded = ved_engine::load::check_texts(vec![("p.ved".into(), src.into())]).unwrap();
    // Every intent fails: the transition backs off and retries for as long as time goes on.
    let always_fail = Adapters::single(Arc::new(Flaky(Mutex::new(Rng(1)), 1)));
    let mut ved = Engine::start(loaded, &opts(None, 1), always_fail, Vec::new(), Box::new(|_| {})).unwrap();
    ved.handle_line(1, "{\"advance_ms\": 18446744073709551615}");
    let refused = ved.output().iter().any(|e| {
        matches!(e, ved_engine::EngineEvent::Error { line: Some(1), message, .. } if message.contains("at most 86400000 ms"))
    });
    assert!(refused, "no error event for the endless advance: {:?}", ved.output());
    assert_eq!(ved.now_ms(), 0, "the refused line moved time");
    ved.handle_line(2, "{\"advance_ms\": 86400000}");
    assert_eq!(ved.now_ms(), 86_400_000);
    let retries = ved.output().iter().filter(|e| matches!(e, ved_engine::EngineEvent::Retry { .. })).count();
    assert!(retries > 1_000, "a day of retries every minute at most: {retries}");
}
