//! `ved verify`: prints what `ved-verify` proved or the counterexample it found.

use crate::output::Format;
use crate::{exit, load};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};
use ved_verify::{Options, Problem, Report, TraceEdge, TraceStep};
use ved_vm::Value;

pub fn verify(files: &[PathBuf], domain: Option<&str>, opts: Options, format: Format) -> ExitCode {
    let loaded = match load::load_or(files, exit::DATA) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let json = format == Format::Json;
    let mut out = std::io::stdout().lock();
    let mut worst = 0u8;
    let mut any = false;
    let mut domains = Vec::new();
    for (d, compiled) in loaded.program.domains.iter().zip(&loaded.compiled.domains) {
        if domain.is_some_and(|n| n != d.name) {
            continue;
        }
        any = true;
        let bounds = ved_verify::bounds::field_bounds(d, compiled, opts.shape).ok();
        if !json {
            let _ = writeln!(out, "verifying {}", d.name);
            // The bound first, so that a long run shows what it is exploring.
            if let Some(bounds) = &bounds {
                print_bound(&mut out, bounds);
            }
            let _ = out.flush();
        }
        let mut progress = Progress::new();
        let report = match ved_verify::verify_domain(d, compiled, opts, &mut |done, seen| progress.show(done, seen)) {
            Ok(r) => r,
            Err(e) => {
                progress.clear();
                eprintln!("error: {e}");
                eprintln!("  = hint: narrow the bound with `verify {{ field in LO..HI }}` inside the domain");
                worst = worst.max(exit::INCONCLUSIVE);
                if json {
                    domains
                        .push(serde_json::json!({"domain": d.name, "result": "inconclusive", "error": e.to_string()}));
                }
                continue;
            }
        };
        progress.clear();
        let verdict = if json {
            let (v, doc) = report_json(&report, opts);
            domains.push(doc);
            v
        } else {
            print_report(&mut out, &report, opts)
        };
        worst = worst.max(verdict);
    }
    if !any {
        let names: Vec<String> = loaded.program.domains.iter().map(|d| format!("`{}`", d.name)).collect();
        eprintln!("error: no domain named `{}`", domain.unwrap_or(""));
        eprintln!("  = hint: the domains are {}", names.join(", "));
        return exit::code(exit::USAGE);
    }
    if json {
        let _ = writeln!(out, "{}", serde_json::json!({"result": verdict_name(worst), "domains": domains}));
    }
    exit::code(worst)
}

fn verdict_name(v: u8) -> &'static str {
    match v {
        exit::OK => "proven",
        exit::FAILED => "counterexample",
        _ => "inconclusive",
    }
}

/// One domain's report as `ved verify --format json` prints it, with its verdict as
/// [`print_report`] computes it (schema in docs/reference.md §13).
fn report_json(r: &Report, opts: Options) -> (u8, serde_json::Value) {
    use serde_json::json;
    let mut verdict = exit::OK;
    let mut runs = Vec::new();
    let mut problem = serde_json::Value::Null;
    for run in &r.runs {
        let status = if run.proven() {
            "proven"
        } else if !run.problems.is_empty() {
            "counterexample"
        } else {
            "inconclusive"
        };
        runs.push(json!({
            "failures": run.failures,
            "result": status,
            "states": run.states,
            "complete": run.complete,
            "depth": if run.proven() { Some(run.depth) } else { None },
        }));
        if !run.complete {
            verdict = verdict.max(exit::INCONCLUSIVE);
        }
        if let Some(p) = run.problems.first() {
            problem = problem_json(r, run.failures, p);
            verdict = exit::FAILED;
            break;
        }
    }
    let doc = json!({
        "domain": r.domain,
        "result": verdict_name(verdict),
        "states": r.states(),
        "start_states": r.runs.first().map_or(0, |run| run.start_states),
        "max_states": opts.max_states,
        "bound": r.bounds.iter().map(|b| b.describe.clone()).collect::<Vec<_>>(),
        "runs": runs,
        "counterexample": problem,
    });
    (verdict, doc)
}

fn edge_json(e: &Option<TraceEdge>) -> serde_json::Value {
    use serde_json::json;
    match e {
        None => json!({"kind": "start"}),
        Some(TraceEdge::Fired { transition }) => json!({"kind": "fired", "transition": transition}),
        Some(TraceEdge::Result { transition, ok }) => json!({"kind": "result", "transition": transition, "ok": ok}),
        Some(TraceEdge::Observed { field }) => json!({"kind": "observed", "field": field}),
        Some(TraceEdge::Timer { transition }) => json!({"kind": "timer", "transition": transition}),
    }
}

/// A trace as structured steps: each with its edge, the whole state after it (field to
/// value, as JSON), the fields it changed, and what is in flight.
fn trace_json(r: &Report, trace: &[TraceStep], from: usize, before: Option<&[Value]>) -> serde_json::Value {
    use serde_json::{json, Map};
    let state = |s: &[Value]| -> Map<String, serde_json::Value> {
        r.fields.iter().zip(s).map(|(n, v)| (n.clone(), crate::json::to_json(v))).collect()
    };
    let mut prev = before;
    let steps: Vec<_> = trace
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let changed: Vec<&String> = match prev {
                None => Vec::new(),
                Some(p) => r.fields.iter().zip(p.iter().zip(&s.state)).filter(|(_, (a, b))| a != b).map(|(n, _)| n).collect(),
            };
            prev = Some(&s.state);
            let in_flight: Vec<_> = s
                .in_flight
                .iter()
                .map(|f| {
                    let held: Map<_, _> = f.held.iter().map(|(n, v)| (n.clone(), crate::json::to_json(v))).collect();
                    json!({"transition": f.transition, "held": held})
                })
                .collect();
            json!({"step": from + i, "edge": edge_json(&s.edge), "state": state(&s.state), "changed": changed, "in_flight": in_flight})
        })
        .collect();
    json!(steps)
}

fn problem_json(r: &Report, failures: u8, p: &Problem) -> serde_json::Value {
    use serde_json::json;
    let mut doc = match p {
        Problem::Stuck { trace, false_goals, count, reached } => json!({
            "kind": "stuck", "false_goals": false_goals, "count": count, "trace": trace_json(r, trace, 0, None),
            "reached": reached.as_ref().map(|t| trace_json(r, t, 0, None)),
        }),
        Problem::Livelock { trace, cycle } => json!({
            "kind": "livelock", "trace": trace_json(r, trace, 0, None), "cycle": trace_json(r, cycle, trace.len(), trace.last().map(|s| s.state.as_slice())),
        }),
        Problem::Fault { trace, what, message } => json!({
            "kind": "fault", "what": what, "message": message, "trace": trace_json(r, trace, 0, None),
        }),
        Problem::LostUpdate { trace, transition, field, by, at, count } => json!({
            "kind": "lost_update", "transition": transition, "field": field, "by": edge_json(&Some(by.clone())),
            "at": at, "count": count, "trace": trace_json(r, trace, 0, None),
        }),
        Problem::Unsatisfiable { never } => json!({"kind": "unsatisfiable", "never": never}),
    };
    doc["failures"] = json!(failures);
    doc
}

/// Progress on a terminal for long runs; nothing when stderr is not one.
struct Progress {
    tty: bool,
    started: Instant,
    last: Instant,
    shown: bool,
    /// States explored at the last call: a smaller count means the next run began.
    done: usize,
    /// How often the line is redrawn: 1 s, or `VED_PROGRESS_INTERVAL_MS` (0 draws at every
    /// call, which is how a test sees the line without depending on the machine's speed).
    every: Duration,
}

impl Progress {
    fn new() -> Progress {
        let now = Instant::now();
        let every = std::env::var("VED_PROGRESS_INTERVAL_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map_or(Duration::from_secs(1), Duration::from_millis);
        Progress { tty: std::io::stderr().is_terminal(), started: now, last: now, shown: false, done: 0, every }
    }

    fn show(&mut self, done: usize, seen: usize) {
        if done < self.done {
            self.started = Instant::now();
        }
        self.done = done;
        if !self.tty || self.last.elapsed() < self.every {
            return;
        }
        self.last = Instant::now();
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        eprint!("\r  {done} states explored, {} queued, {:.0} states/s   ", seen - done, done as f64 / secs);
        self.shown = true;
    }

    fn clear(&mut self) {
        if self.shown {
            eprint!("\r{:60}\r", "");
            self.shown = false;
        }
    }
}

fn run_name(failures: u8) -> String {
    match failures {
        0 => "every intent succeeds".into(),
        1 => "up to 1 intent fails".into(),
        n => format!("up to {n} intents fail"),
    }
}

/// Prints one domain's report; returns 0 (proven), 1 (counterexample) or 2 (inconclusive).
fn print_bound(out: &mut impl Write, bounds: &[ved_verify::FieldBound]) {
    let annotated = bounds.iter().any(|b| b.annotated);
    let origin = if annotated {
        "from `verify { ... }` and the program's literals"
    } else {
        "derived from the program's literals; `verify { ... }` changes it"
    };
    let _ = writeln!(out, "  bound ({origin}):");
    for b in bounds {
        let _ = writeln!(out, "    {}", b.describe);
    }
}

fn print_report(out: &mut impl Write, r: &Report, opts: Options) -> u8 {
    let starts = r.runs.first().map_or(0, |run| run.start_states);
    let _ = writeln!(out, "  {starts} start states");
    let mut verdict = 0u8;
    for run in &r.runs {
        let status = if run.proven() {
            "proven"
        } else if !run.problems.is_empty() {
            "FAILED"
        } else {
            "INCONCLUSIVE"
        };
        let detail = if run.proven() {
            format!(", goals reached within {} slice{}", run.depth, if run.depth == 1 { "" } else { "s" })
        } else {
            String::new()
        };
        let _ = writeln!(out, "  {:<26} {:<12} {} states explored{detail}", run_name(run.failures), status, run.states);
        if !run.complete {
            let _ = writeln!(
                out,
                "  = note: stopped after {} states (the limit); some states leave the bound without end",
                opts.max_states
            );
            verdict = verdict.max(2);
        }
        if let Some(p) = run.problems.first() {
            print_problem(out, r, run.failures, p);
            return 1;
        }
    }
    if verdict == 0 {
        let _ = writeln!(
            out,
            "ok: {} converges from every start state within the bound ({} states explored)",
            r.domain,
            r.states()
        );
    }
    verdict
}

fn print_problem(out: &mut impl Write, r: &Report, failures: u8, p: &Problem) {
    let when = if failures == 0 { String::new() } else { format!(" when {}", run_name(failures)) };
    match p {
        Problem::Stuck { trace, false_goals, count, reached } => {
            let goals: Vec<String> = false_goals.iter().map(|g| format!("`{g}`")).collect();
            let _ = writeln!(
                out,
                "error: {} gets stuck{when}: no transition is enabled and {} {} not hold",
                r.domain,
                goals.join(", "),
                if goals.len() == 1 { "does" } else { "do" }
            );
            let _ =
                writeln!(out, "  {count} stuck state{} found; the shortest trace:", if *count == 1 { "" } else { "s" });
            print_trace(out, r, trace, 0);
            if let Some(reached) = reached {
                let _ = writeln!(out, "  the shortest trace that gets stuck after moving:");
                print_trace(out, r, reached, 0);
            }
            let _ =
                writeln!(out, "  = hint: add a transition that moves this state toward the goals, or relax the goals");
        }
        Problem::Livelock { trace, cycle } => {
            let _ = writeln!(
                out,
                "error: {} livelocks{when}: a cycle of {} slice{} never reaches the goals",
                r.domain,
                cycle.len(),
                if cycle.len() == 1 { "" } else { "s" }
            );
            print_trace(out, r, trace, 0);
            let _ = writeln!(out, "  cycle:");
            let last = trace.last().map(|s| s.state.clone()).unwrap_or_default();
            let mut prev = last.clone();
            for (i, s) in cycle.iter().enumerate() {
                let tail = if i + 1 == cycle.len() { "   (back where the cycle began)" } else { "" };
                let _ = writeln!(
                    out,
                    "  {:>4}. {:<22} {}{tail}",
                    trace.len() + i,
                    edge_text(&s.edge),
                    step_text(r, &prev, s)
                );
                prev = s.state.clone();
            }
            let _ = writeln!(
                out,
                "  = hint: the transitions undo each other; make their conditions exclusive or their steps smaller"
            );
        }
        Problem::Fault { trace, what, message } => {
            let _ = writeln!(out, "error: {} faults{when}: {what} fails with {message}", r.domain);
            print_trace(out, r, trace, 0);
            let _ =
                writeln!(out, "  = hint: guard the step (e.g. check a divisor or a length) so no state makes it fail");
        }
        Problem::LostUpdate { trace, transition, field, by, at, count } => {
            let _ = writeln!(
                out,
                "error: {} loses an update{when}: {transition}'s held write to `{field}` overwrites the change made by {} at step {at}",
                r.domain,
                edge_phrase(by)
            );
            let _ =
                writeln!(out, "  {count} lost update{} found; the shortest trace:", if *count == 1 { "" } else { "s" });
            print_trace(out, r, trace, 0);
            let _ = writeln!(
                out,
                "  = hint: both steps computed `{field}` from the same old state; transitions that touch a field another one holds must wait for it"
            );
        }
        Problem::Unsatisfiable { never } => {
            let _ = writeln!(out, "error: {}: no state satisfies the goals", r.domain);
            for g in never {
                let _ = writeln!(out, "  = note: goal `{g}` never holds");
            }
            if never.is_empty() {
                let _ = writeln!(out, "  = note: each goal holds in some state, but never all of them at once");
            }
            let _ =
                writeln!(out, "  = hint: the goals contradict each other or the bound; check them, or widen the bound");
        }
    }
}

fn edge_text(e: &Option<TraceEdge>) -> String {
    match e {
        None => "start".into(),
        Some(TraceEdge::Timer { transition }) => format!("({transition}'s retry timer fires)"),
        Some(TraceEdge::Fired { transition }) => transition.clone(),
        Some(TraceEdge::Result { transition, ok: true }) => format!("{transition} ok"),
        Some(TraceEdge::Result { transition, ok: false }) => format!("{transition} fails"),
        Some(TraceEdge::Observed { .. }) => "(observed)".into(),
    }
}

/// What a step did, for a sentence: "OpenMissingPorts's result", "an observation".
fn edge_phrase(e: &TraceEdge) -> String {
    match e {
        TraceEdge::Fired { transition } => format!("{transition}'s step"),
        TraceEdge::Result { transition, .. } => format!("{transition}'s result"),
        TraceEdge::Observed { field } => format!("an observation of `{field}`"),
        TraceEdge::Timer { transition } => format!("{transition}'s retry timer"),
    }
}

/// The state changes of a step, and for a step that went in flight what it holds.
fn step_text(r: &Report, before: &[Value], s: &TraceStep) -> String {
    let text = changes(r, before, &s.state);
    let Some(TraceEdge::Fired { transition }) = &s.edge else {
        return text;
    };
    let Some(f) = s.in_flight.iter().find(|f| f.transition == *transition) else {
        return text;
    };
    let held: Vec<String> = f.held.iter().map(|(n, v)| format!("{n} = {v}")).collect();
    let flight =
        if held.is_empty() { "in flight".to_string() } else { format!("in flight, holding {}", held.join(", ")) };
    if text == "(no change)" {
        format!("({flight})")
    } else {
        format!("{text} ({flight})")
    }
}

fn changes(r: &Report, before: &[Value], after: &[Value]) -> String {
    let c: Vec<String> = r
        .fields
        .iter()
        .zip(before.iter().zip(after))
        .filter(|(_, (a, b))| a != b)
        .map(|(n, (_, b))| format!("{n} = {b}"))
        .collect();
    if c.is_empty() {
        "(no change)".into()
    } else {
        c.join(", ")
    }
}

fn print_trace(out: &mut impl Write, r: &Report, trace: &[TraceStep], from: usize) {
    let mut prev: Vec<Value> = Vec::new();
    for (i, s) in trace.iter().enumerate() {
        let text = if s.edge.is_none() {
            let all: Vec<String> = r.fields.iter().zip(&s.state).map(|(n, v)| format!("{n} = {v}")).collect();
            all.join(", ")
        } else {
            step_text(r, &prev, s)
        };
        let n = if s.edge.is_none() { "".to_string() } else { format!("{}.", from + i) };
        let _ = writeln!(out, "  {n:>5} {:<22} {text}", edge_text(&s.edge));
        prev = s.state.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lost update cannot happen with the runtime's rules, so no `.ved` file shows
    /// one; this prints seed 000 explored without R1, against
    /// `tests/data/verify/lost_update_without_r1.txt` (`VED_BLESS=1` rewrites it).
    #[test]
    fn a_lost_update_is_printed_with_its_trace() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let loaded = load::load(&[root.join("examples/security_policy.ved")]).unwrap_or_else(|_| panic!("loads"));
        let model = ved_verify::Model { serialize_conflicts: false, ..ved_verify::Model::default() };
        let opts = Options::default();
        let (d, c) = (&loaded.program.domains[0], &loaded.compiled.domains[0]);
        let report = ved_verify::verify_domain_in(d, c, opts, model, &mut |_, _| {}).unwrap();
        let mut out = Vec::new();
        assert_eq!(print_report(&mut out, &report, opts), 1);
        let got = String::from_utf8(out).unwrap();
        let expected = root.join("tests/data/verify/lost_update_without_r1.txt");
        if std::env::var_os("VED_BLESS").is_some() {
            std::fs::write(&expected, &got).unwrap();
            return;
        }
        assert_eq!(got, std::fs::read_to_string(&expected).unwrap_or_default());
    }
}
