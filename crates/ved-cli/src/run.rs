//! `ved run --stdin`: observations in as JSON lines, events out as JSON lines.
//!
//! Input lines:
//! - `{"instance": "WorkerPool", "set": {"workers": 3}}`: one observation;
//! - `{"advance_ms": 500}`: simulated time passes; due retries run.
//!
//! Every output line is an object with `seq` (1, 2, ...), `event` and, where
//! it applies, `instance`. Intents go to a logging adapter that prints them and
//! acknowledges them at once. A bad line yields an `error` event and changes
//! nothing. At the end of input the process exits 0.

use crate::json::{from_json, to_json};
use crate::load;
use serde_json::{json, Map, Value as Json};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use ved_runtime::{Cause, Event, Runtime};
use ved_syntax::SourceMap;
use ved_vm::CompiledProgram;

/// Longest input line accepted; longer lines are refused with an error event.
const LINE_BYTES_MAX: usize = 1 << 20;

struct Out<W: Write> {
    w: W,
    seq: u64,
}

impl<W: Write> Out<W> {
    fn emit(&mut self, mut obj: Map<String, Json>) {
        self.seq += 1;
        let mut line = Map::new();
        line.insert("seq".into(), json!(self.seq));
        line.append(&mut obj);
        // A closed stdout (e.g. piped into `head`) is not worth a panic.
        let _ = writeln!(self.w, "{}", Json::Object(line));
    }
}

pub fn run_stdin(files: &[PathBuf], seed: u64) -> ExitCode {
    let loaded = match load::load(files) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let stdout = std::io::stdout();
    let mut out = Out { w: std::io::BufWriter::new(stdout.lock()), seq: 0 };
    let mut rt = match Runtime::new(loaded.compiled.clone(), seed) {
        Ok(rt) => rt,
        Err(e) => {
            out.emit(obj(json!({"event": "error", "message": format!("cannot start: {e}")})));
            let _ = out.w.flush();
            return ExitCode::from(1);
        }
    };
    let mut now_ms: u64 = 0;
    settle(&mut rt, &loaded.sources, &mut out);
    let stdin = std::io::stdin();
    let mut lineno = 0u64;
    for line in stdin.lock().lines() {
        lineno += 1;
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                out.emit(obj(json!({"event": "error", "line": lineno, "message": format!("cannot read input: {e}")})));
                break;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        match apply_line(&mut rt, &line, &mut now_ms) {
            Ok(()) => {}
            Err((instance, message)) => {
                let mut e = obj(json!({"event": "error", "line": lineno, "message": message}));
                if let Some(i) = instance {
                    e.insert("instance".into(), json!(i));
                }
                out.emit(e);
            }
        }
        settle(&mut rt, &loaded.sources, &mut out);
        let _ = out.w.flush();
    }
    let _ = out.w.flush();
    ExitCode::SUCCESS
}

fn obj(j: Json) -> Map<String, Json> {
    match j {
        Json::Object(m) => m,
        _ => Map::new(),
    }
}

type LineError = (Option<String>, String);

fn apply_line(rt: &mut Runtime, line: &str, now_ms: &mut u64) -> Result<(), LineError> {
    if line.len() > LINE_BYTES_MAX {
        return Err((None, format!("line is {} bytes; the limit is {LINE_BYTES_MAX}", line.len())));
    }
    let j: Json = serde_json::from_str(line).map_err(|e| (None, format!("invalid JSON: {e}")))?;
    let Json::Object(o) = j else {
        return Err((None, "expected a JSON object such as {\"instance\": \"Name\", \"set\": {\"field\": 1}}".into()));
    };
    if let Some(adv) = o.get("advance_ms") {
        let ms = adv.as_u64().ok_or((None, "`advance_ms` must be a non-negative integer".to_string()))?;
        if o.len() != 1 {
            return Err((None, "`advance_ms` stands alone on its line".into()));
        }
        // Step through every retry that comes due on the way.
        let target = now_ms.saturating_add(ms);
        while let Some(t) = rt.next_timer_ms().filter(|t| *t <= target) {
            rt.advance_time(t);
            *now_ms = t;
            let mut buf = Vec::new();
            rt.run(&mut buf);
            if buf.is_empty() {
                break;
            }
        }
        *now_ms = target;
        rt.advance_time(target);
        return Ok(());
    }
    for key in o.keys() {
        if key != "instance" && key != "set" {
            return Err((None, format!("unknown key `{key}`; an observation has `instance` and `set`")));
        }
    }
    let name = match o.get("instance") {
        Some(Json::String(s)) => s.clone(),
        Some(_) => return Err((None, "`instance` must be a string".into())),
        None => return Err((None, "missing `instance`: which instance does this observation concern?".into())),
    };
    let Some(idx) = rt.index_of(&name) else {
        let names: Vec<String> = rt.instances().iter().map(|i| format!("`{}`", i.name)).collect();
        return Err((
            Some(name.clone()),
            format!("no instance named `{name}`; the instances are {}", names.join(", ")),
        ));
    };
    let set = match o.get("set") {
        Some(Json::Object(s)) => s,
        Some(_) => return Err((Some(name), "`set` must be an object of field to value".into())),
        None => return Err((Some(name), "missing `set`: an object of field to value".into())),
    };
    let dom = rt.domain_of(idx);
    let mut writes = Vec::with_capacity(set.len());
    for (field, value) in set {
        let Some(slot) = dom.fields.iter().position(|(n, _)| n == field) else {
            let fields: Vec<String> = dom.fields.iter().map(|(n, _)| format!("`{n}`")).collect();
            return Err((
                Some(name),
                format!("`{}` has no field `{field}`; its fields are {}", dom.name, fields.join(", ")),
            ));
        };
        let v =
            from_json(value, &dom.fields[slot].1).map_err(|e| (Some(name.clone()), format!("field `{field}`: {e}")))?;
        writes.push((slot as u16, v));
    }
    rt.observe(&name, writes).map_err(|e| (Some(name.clone()), e.to_string()))
}

/// Runs the runtime until idle, printing events and acknowledging intents.
fn settle<W: Write>(rt: &mut Runtime, sources: &SourceMap, out: &mut Out<W>) {
    let program = rt.program().clone();
    let mut buf = Vec::new();
    loop {
        rt.run(&mut buf);
        if buf.is_empty() {
            return;
        }
        for ev in buf.drain(..) {
            print_event(rt, &program, sources, &ev, out);
            if let Event::Intent(i) = &ev {
                // The logging adapter: the intent was printed; acknowledge it.
                let _ = rt.deliver(&i.id, true, None);
            }
        }
    }
}

fn field_map(program: &CompiledProgram, domain: usize, changes: &[(u16, ved_vm::Value)]) -> Json {
    let d = &program.domains[domain];
    Json::Object(changes.iter().map(|(s, v)| (d.fields[*s as usize].0.clone(), to_json(v))).collect())
}

fn print_event<W: Write>(rt: &Runtime, program: &CompiledProgram, sources: &SourceMap, ev: &Event, out: &mut Out<W>) {
    let inst = ev.instance().to_string();
    let domain = rt.instance(&inst).map(|i| i.domain).unwrap_or(0);
    let d = &program.domains[domain];
    let tname = |t: usize| d.transitions.get(t).map(|t| t.name.clone()).unwrap_or_default();
    let line = match ev {
        Event::Slice { slice, cause, changes, held, .. } => {
            let cause = match cause {
                Cause::Observe => json!({"kind": "observe"}),
                Cause::Transition(t) => json!({"kind": "transition", "transition": tname(*t)}),
                Cause::Result(id) => json!({"kind": "result", "intent": id.to_string()}),
                Cause::Timer(t) => json!({"kind": "timer", "transition": tname(*t)}),
            };
            let mut m = obj(json!({"event": "slice", "instance": inst, "slice": slice, "cause": cause,
                "changes": field_map(program, domain, changes)}));
            if !held.is_empty() {
                m.insert("held".into(), field_map(program, domain, held));
            }
            m
        }
        Event::Tick { .. } => return,
        Event::Intent(i) => obj(json!({"event": "intent", "instance": inst, "id": i.id.to_string(),
            "transition": tname(i.transition), "adapter": &*i.adapter, "action": &*i.action,
            "args": i.args.iter().map(to_json).collect::<Vec<_>>()})),
        Event::Result { id, ok, error, .. } => {
            let mut m = obj(json!({"event": "result", "instance": inst, "id": id.to_string(), "ok": ok}));
            if let Some(e) = error {
                m.insert("error".into(), json!(e));
            }
            m
        }
        Event::Retry { transition, attempt, at_ms, .. } => obj(json!({"event": "retry", "instance": inst,
            "transition": tname(*transition), "attempt": attempt, "at_ms": at_ms})),
        Event::Fault { transition, goal, fault, .. } => {
            let f = sources.file(fault.span.file);
            let (line, col) = f.line_col(fault.span.start as usize);
            let at = format!("{}:{line}:{col}", f.name);
            let mut m = obj(json!({"event": "fault", "instance": inst, "message": fault.to_string(), "at": at}));
            if let Some(t) = transition {
                m.insert("transition".into(), json!(tname(*t)));
            }
            if let Some(g) = goal {
                m.insert("goal".into(), json!(d.goals.get(*g).map(|g| g.name.clone())));
            }
            m
        }
        Event::Status { status, reason, .. } => {
            let mut m = obj(json!({"event": status.as_str(), "instance": inst}));
            if let Some(r) = reason {
                m.insert("reason".into(), json!(r));
            }
            m
        }
    };
    out.emit(line);
}
