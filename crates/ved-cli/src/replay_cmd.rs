//! `ved replay --data-dir DIR INSTANCE`: re-executes an instance's journaled
//! messages from the snapshot retained before its oldest journal entry, with
//! the program recorded in the store, and checks that every slice comes out
//! the same: its number, its cause, its state changes, its held changes and
//! its intents, and that it rests where the journal says, in the same status.
//! Messages the live run had queued together (one `batch`) are queued together
//! again. Read-only: the store is never written.

use crate::json::from_json;
use crate::load;
use serde_json::json;
use std::path::Path;
use std::process::ExitCode;
use ved_runtime::{Event, IntentId, Progress, RetryPolicy, Runtime};
use ved_store::JournalEntry;

/// What a slice did, as replay compares it: the journal entry without its time, results
/// and lineage (those describe the messages, which replay feeds from the journal itself).
#[derive(Debug, PartialEq)]
struct Produced {
    slice: u64,
    cause: String,
    detail: Option<String>,
    changes: Vec<(String, String)>,
    held: Vec<(String, String)>,
    intents: Vec<(String, String)>,
}

impl Produced {
    fn of(e: &JournalEntry) -> Produced {
        Produced {
            slice: e.slice,
            cause: e.cause.clone(),
            detail: e.detail.clone(),
            changes: e.changes.clone(),
            held: e.held.clone(),
            intents: e.intents.clone(),
        }
    }
}

/// The slice a step produced, if it produced one, built as the driver journals it.
fn produced(dom: &ved_vm::CompiledDomain, out: &[Event]) -> Option<Produced> {
    crate::run::journal_entry(dom, "", 0, out, None).map(|e| Produced::of(&e))
}

fn fail(msg: impl std::fmt::Display, hint: &str) -> ExitCode {
    // Exit 66: the replay could not run (no such directory, instance or file), which is
    // not a divergence.
    eprintln!("error: {msg}");
    if !hint.is_empty() {
        eprintln!("  = hint: {hint}");
    }
    crate::exit::code(crate::exit::NO_INPUT)
}

/// How a replay ended.
#[derive(Debug)]
pub enum Outcome {
    /// Every journaled slice came out the same: how many, from which snapshot slice.
    Reproduced { slices: usize, from_slice: u64 },
    /// The first slice that did not, and how.
    Diverged { slice: u64, cause: String, what: String, reproduced: usize },
}

/// Why a replay could not run: a message and a hint.
pub type ReplayError = (String, String);

/// Replays `instance` from the store in `dir`, with the recorded program or with
/// `program` (name, text) instead, to see what a changed program would have done.
pub fn replay_instance(
    dir: &Path,
    instance: &str,
    program: Option<Vec<(String, String)>>,
    mut on_slice: impl FnMut(&JournalEntry),
) -> Result<Outcome, ReplayError> {
    let rec = ved_store::read_only(dir).map_err(|e| (e.to_string(), e.hint().to_string()))?;
    let files = match program.or_else(|| rec.program.clone()) {
        Some(f) => f,
        None => {
            return Err((
                format!("{} does not record the program that wrote it", dir.display()),
                "stores written before `ved replay` existed cannot be replayed; pass the program with `--program`"
                    .into(),
            ))
        }
    };
    let Some(journal) = rec.journals.get(instance) else {
        let names: Vec<String> = rec.journals.keys().map(|n| format!("`{n}`")).collect();
        return Err((
            format!("no journal for `{instance}` in {}", dir.display()),
            format!(
                "journals exist for {}",
                if names.is_empty() { "no instance yet".into() } else { names.join(", ") }
            ),
        ));
    };
    let Some(base) = rec.bases.get(instance) else {
        return Err((
            format!("no snapshot of `{instance}` is retained from before its oldest journal entry"),
            "the journal reaches back further than the retained snapshots".into(),
        ));
    };
    // One replay runs one program: a journal that crosses an upgrade (a `migrate` entry)
    // was written by two, and the store keeps only the newest.
    if let Some(m) = journal.iter().rev().find(|e| e.cause == "migrate") {
        if journal.front().is_some_and(|f| f.slice < m.slice) {
            return Err((
                format!(
                    "the journal of `{instance}` crosses a program upgrade at slice {} ({}): replay runs one program",
                    m.slice,
                    m.detail.as_deref().unwrap_or("fields changed")
                ),
                "the slices after the upgrade replay once the journal no longer reaches back before it; `ved journal` shows both sides".into(),
            ));
        }
    }
    let loaded = load::load_texts(files)
        .map_err(|_| ("the program does not check (errors above)".to_string(), String::new()))?;
    let snap = base.snapshot.clone();
    let mut rt = Runtime::empty(loaded.compiled.clone(), snap.seed);
    if let Some((initial_ms, factor, cap_ms, breaker_after)) = rec.retry {
        rt.policy = RetryPolicy { initial_ms, factor, cap_ms, breaker_after, ..RetryPolicy::default() };
    }
    if let Some(confirm_ms) = rec.confirm_ms {
        rt.policy.confirm_ms = confirm_ms;
    }
    let idx = rt.restore_instance(snap).map_err(|e| (format!("cannot restore `{instance}`: {e}"), String::new()))?;
    let dom = loaded.compiled.domains[rt.instances()[idx].domain].clone();
    for (n, e) in journal.iter().enumerate() {
        let diverged = |what: String| Outcome::Diverged { slice: e.slice, cause: e.cause.clone(), what, reproduced: n };
        let got = match step(&mut rt, idx, &dom, journal, n) {
            Ok(p) => p,
            Err(msg) => return Ok(diverged(msg)),
        };
        let want = Produced::of(e);
        if got != want {
            return Ok(diverged(describe_difference(&want, &got)));
        }
        // The live instance came to rest right after this slice, in this status: so must the replay.
        if let Some(status) = &e.status {
            match rest_status(&mut rt, idx, &dom) {
                Ok(s) if s.as_str() == status => {}
                Ok(s) => {
                    return Ok(diverged(format!("the journal rested `{status}` after it, the replay rested `{s}`")))
                }
                Err(msg) => return Ok(diverged(format!("the journal rested `{status}` after it, but {msg}"))),
            }
        }
        on_slice(e);
    }
    // Resyncs that changed nothing after the last entry are not journaled: a stable latest
    // snapshot past it is reached by as many empty observations.
    let last_slice = journal.back().map_or(0, |e| e.slice);
    if let Some(latest) = rec
        .snapshots
        .get(instance)
        .map(|r| &r.snapshot)
        .filter(|s| s.slice > last_slice && s.status == ved_runtime::Status::Stable && s.pending.is_empty())
    {
        let name = rt.instances()[idx].name.to_string();
        for _ in last_slice..latest.slice {
            if rt.observe(&name, Vec::new()).is_err() {
                break;
            }
            rest_after_quiet(&mut rt, idx);
        }
    }
    // The last replayed state is the latest snapshot's, when the journal reaches it.
    if let Some(latest) = rec.snapshots.get(instance).filter(|s| s.snapshot.slice == rt.instances()[idx].slice) {
        if rt.instances()[idx].state != latest.snapshot.state {
            let last = journal.back().expect("non-empty");
            return Ok(Outcome::Diverged {
                slice: last.slice,
                cause: last.cause.clone(),
                what: "the replayed state differs from the latest snapshot".into(),
                reproduced: journal.len(),
            });
        }
    }
    Ok(Outcome::Reproduced { slices: journal.len(), from_slice: base.snapshot.slice })
}

pub fn replay(dir: &Path, instance: &str, program: &[std::path::PathBuf], as_json: bool) -> ExitCode {
    let files = if program.is_empty() {
        None
    } else {
        let mut v = Vec::new();
        for p in program {
            match std::fs::read_to_string(p) {
                Ok(t) => v.push((p.display().to_string(), t)),
                Err(e) => return fail(format!("cannot read `{}`: {e}", p.display()), ""),
            }
        }
        Some(v)
    };
    let mut shown = 0usize;
    let outcome = replay_instance(dir, instance, files, |e| {
        if as_json {
            println!("{}", json!({"slice": e.slice, "cause": e.cause, "reproduced": true}));
        } else if shown < 3 {
            println!("  slice {} ({}) reproduced", e.slice, e.cause);
        } else if shown == 3 {
            println!("  ...");
        }
        shown += 1;
    });
    match outcome {
        Err((msg, hint)) => fail(msg, &hint),
        Ok(Outcome::Reproduced { slices, from_slice }) => {
            if as_json {
                println!(
                    "{}",
                    json!({"instance": instance, "from_slice": from_slice, "replayed": slices, "diverged": false})
                );
            } else {
                println!(
                    "ok: {slices} slices replayed from the snapshot at slice {from_slice}: every state change and every intent matches the journal"
                );
            }
            ExitCode::SUCCESS
        }
        Ok(Outcome::Diverged { slice, cause, what, reproduced }) => {
            if as_json {
                println!(
                    "{}",
                    json!({"slice": slice, "cause": cause, "reproduced": false, "divergence": what, "matched_before": reproduced})
                );
            } else {
                println!("error: slice {slice} ({cause}) diverges after {reproduced} matching slices: {what}");
                println!(
                    "  = hint: the program, the retry policy or the runtime changed since the journal was written"
                );
            }
            crate::exit::code(crate::exit::FAILED)
        }
    }
}

fn describe_difference(want: &Produced, got: &Produced) -> String {
    let pairs = |v: &[(String, String)]| {
        if v.is_empty() {
            "nothing".to_string()
        } else {
            v.iter().map(|(a, b)| format!("{a} = {b}")).collect::<Vec<_>>().join(", ")
        }
    };
    if want.slice != got.slice {
        return format!("the journal has slice {}, the replay produced slice {}", want.slice, got.slice);
    }
    if (&want.cause, &want.detail) != (&got.cause, &got.detail) {
        return format!(
            "the journal's cause is {} {}, the replay's is {} {}",
            want.cause,
            want.detail.as_deref().unwrap_or(""),
            got.cause,
            got.detail.as_deref().unwrap_or("")
        );
    }
    if want.changes != got.changes {
        return format!("the journal changed {}, the replay changed {}", pairs(&want.changes), pairs(&got.changes));
    }
    if want.held != got.held {
        return format!("the journal held {}, the replay held {}", pairs(&want.held), pairs(&got.held));
    }
    format!("the journal emitted {}, the replay emitted {}", pairs(&want.intents), pairs(&got.intents))
}

/// Steps until the instance is idle; a slice on the way is one the journal does not have.
fn rest(rt: &mut Runtime, idx: usize, dom: &ved_vm::CompiledDomain, before: u64) -> Result<(), String> {
    let mut out = Vec::new();
    for _ in 0..10_000 {
        out.clear();
        let progress = rt.step_instance(idx, &mut out);
        if let Some(p) = produced(dom, &out) {
            return Err(format!(
                "the replay produced slice {} ({}) that the journal does not have before slice {before}",
                p.slice, p.cause
            ));
        }
        if matches!(progress, Progress::Idle(_)) {
            return Ok(());
        }
    }
    Err("the replay ran 10,000 steps without coming to rest".into())
}

/// Steps until the instance rests, without a slice, and returns the status it rests in.
fn rest_status(rt: &mut Runtime, idx: usize, dom: &ved_vm::CompiledDomain) -> Result<ved_runtime::Status, String> {
    let mut out = Vec::new();
    for _ in 0..10_000 {
        out.clear();
        let progress = rt.step_instance(idx, &mut out);
        if let Some(p) = produced(dom, &out) {
            return Err(format!("the replay went on to slice {} ({})", p.slice, p.cause));
        }
        if let Progress::Idle(s) = progress {
            return Ok(s);
        }
    }
    Err("the replay ran 10,000 steps without coming to rest".into())
}

/// Applies an empty observation that stands for one that changed nothing.
fn rest_after_quiet(rt: &mut Runtime, idx: usize) {
    let mut out = Vec::new();
    for _ in 0..10_000 {
        out.clear();
        if matches!(rt.step_instance(idx, &mut out), Progress::Idle(_)) {
            return;
        }
    }
}

/// Queues an entry's message again: its observation (absolute or relative) or its result.
/// A timer needs nothing: moving the clock queued it.
fn feed(rt: &mut Runtime, name: &str, dom: &ved_vm::CompiledDomain, e: &JournalEntry) -> Result<(), String> {
    let slot = |field: &str| dom.fields.iter().position(|(n, _)| n == field).ok_or(format!("no field `{field}`"));
    match e.cause.as_str() {
        "observe" if !e.added.is_empty() => {
            let deltas = e.added.iter().map(|(f, d)| Ok((slot(f)? as u16, *d))).collect::<Result<Vec<_>, String>>()?;
            rt.observe_add(name, deltas).map_err(|e| e.to_string())
        }
        "observe" => {
            let mut writes = Vec::new();
            for (field, value) in &e.observed {
                let s = slot(field)?;
                let v = from_json(value, &dom.fields[s].1).map_err(|m| format!("field `{field}`: {m}"))?;
                writes.push((s as u16, v));
            }
            rt.observe(name, writes).map_err(|e| e.to_string())
        }
        "result" => {
            let id = e.detail.as_deref().ok_or("a result entry without its intent")?;
            let (_, ok, err) = e.results.iter().find(|(i, _, _)| i == id).ok_or("a result entry without its result")?;
            rt.deliver(&IntentId::parse(id).ok_or(format!("`{id}` is not an intent id"))?, *ok, err.clone())
                .map_err(|e| e.to_string())
        }
        _ => Ok(()),
    }
}

/// Replays journal entry `n`: feeds its message (with every message queued together with
/// it, and the observations that changed nothing before it) and steps until the instance
/// produces a slice.
fn step(
    rt: &mut Runtime,
    idx: usize,
    dom: &ved_vm::CompiledDomain,
    journal: &std::collections::VecDeque<JournalEntry>,
    n: usize,
) -> Result<Produced, String> {
    let e = &journal[n];
    let name = rt.instances()[idx].name.to_string();
    // A message queued with the previous entry's is in the mailbox already.
    let queued = e.batch.is_some() && n > 0 && journal[n - 1].batch == e.batch;
    if queued {
        // Fed with the first message of its batch.
    } else {
        if e.cause != "transition" || e.quiet > 0 {
            // An outside message (or the clock) reached an idle instance: the driver runs each
            // input to rest before the next. Resting may change the scheduler without a slice
            // (a stable instance forgets its retry counts), so run it to rest here too.
            rest(rt, idx, dom, e.slice)?;
        }
        // Observations that changed nothing were counted, not journaled: apply as many
        // empty ones (fewer if the snapshot replay started from already has some).
        let mut quiet = e.quiet;
        while quiet > 0 && rt.instances()[idx].slice + 1 < e.slice {
            quiet -= 1;
            rt.observe(&name, Vec::new()).map_err(|e| e.to_string())?;
            rest_after_quiet(rt, idx);
        }
        if e.cause != "transition" {
            rt.advance_time(e.at_ms);
            feed(rt, &name, dom, e)?;
            // Messages queued together go in together, so that none of them sees a tick
            // the live run did not have between them.
            if let Some(b) = e.batch {
                for later in journal.iter().skip(n + 1).take_while(|l| l.batch == Some(b)) {
                    for _ in 0..later.quiet {
                        rt.observe(&name, Vec::new()).map_err(|e| e.to_string())?;
                    }
                    feed(rt, &name, dom, later)?;
                }
            }
        }
    }
    let mut out = Vec::new();
    for _ in 0..10_000 {
        out.clear();
        let progress = rt.step_instance(idx, &mut out);
        if let Some(p) = produced(dom, &out) {
            return Ok(p);
        }
        if matches!(progress, Progress::Idle(_)) {
            return Err(format!("the journal has slice {}, the replay produced none", e.slice));
        }
    }
    Err("the replay ran 10,000 steps without producing a slice".into())
}
