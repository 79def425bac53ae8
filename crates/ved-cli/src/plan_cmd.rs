//! `ved plan --data-dir DIR FILE...`: what running a (changed) program on a data
//! directory would do, acting on nothing and writing nothing. Per instance: how its
//! stored state would be carried over (fields added with their defaults, fields removed,
//! type conflicts), and what the program would then do until idle: the transitions that
//! would fire and the intents they would emit. The run happens in a throwaway in-memory
//! engine whose adapter acknowledges every intent (the `log` driver), so what is listed
//! assumes every action succeeds. The directory is read as `ved inspect` reads it: no
//! lock, no write. Exit 0, or 1 when an instance could not be carried over.

use crate::load;
use serde_json::{json, Value as Json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use ved_engine::migrate::{self, MigrateError, Migration};
use ved_engine::{Adapters, Engine, EngineEvent, Instances, RunOptions, SliceCause};

/// What the plan says about one instance.
struct Planned {
    instance: String,
    domain: String,
    /// The stored slice, or `None` for an instance the program would create.
    stored_slice: Option<u64>,
    migration: Option<Migration>,
    refused: Option<MigrateError>,
    /// Slices the run would produce: slice, cause in words, changes, changes held until the
    /// slice's intents succeed.
    steps: Vec<Step>,
    /// Intents the run would emit: id, transition, call, whether it is one recorded before
    /// (undelivered) and sent again.
    intents: Vec<(String, Option<String>, String, bool)>,
    status: Option<String>,
    reason: Option<String>,
}

type Step = (u64, String, Vec<(String, String)>, Vec<(String, String)>);

/// A directory that does not exist yet holds nothing: every instance would be created.
fn read_dir(dir: &Path) -> Result<ved_store::Recovered, ExitCode> {
    if !dir.exists() {
        return Ok(ved_store::Recovered::default());
    }
    ved_store::read_only(dir).map_err(|e| fail(format!("cannot read {}: {e}", dir.display()), e.hint()))
}

/// A cluster's instances as etcd has them: each one's last snapshot and journal. The
/// program that wrote them is not recorded there, so transitions keep their positions.
fn read_cluster(
    endpoints: &[String],
    prefix: &str,
    options: &ved_cluster::etcd::Options,
) -> Result<ved_store::Recovered, ExitCode> {
    let hint = "check that etcd is running, that `--cluster` lists its client URLs, and the `--etcd-*` options if it has TLS or authentication";
    let etcd =
        ved_cluster::etcd::Etcd::with_options(endpoints.to_vec(), std::time::Duration::from_secs(2), options.clone())
            .map_err(|e| fail(format!("cannot reach etcd: {e}"), hint))?;
    let names = ved_cluster::list_instances(&etcd, prefix).map_err(|e| fail(format!("cannot read etcd: {e}"), hint))?;
    let mut rec = ved_store::Recovered::default();
    for name in names {
        let s = ved_engine::persist_etcd::load(&etcd, prefix, &name).map_err(|e| fail(e, hint))?;
        if let Some(snap) = s.snapshot {
            rec.snapshots.insert(snap);
            rec.journals.insert(name, s.journal.into_iter().collect());
        }
    }
    Ok(rec)
}

fn fail(msg: impl std::fmt::Display, hint: &str) -> ExitCode {
    eprintln!("error: {msg}");
    if !hint.is_empty() {
        eprintln!("  = hint: {hint}");
    }
    crate::exit::code(crate::exit::NO_INPUT)
}

pub fn plan(src: &crate::inspect::Source, files: &[PathBuf], as_json: bool) -> ExitCode {
    let loaded = match load::load(files) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let mut rec = match src {
        crate::inspect::Source::Dir(dir) => match read_dir(dir) {
            Ok(r) => r,
            Err(code) => return code,
        },
        crate::inspect::Source::Cluster { endpoints, prefix, etcd } => match read_cluster(endpoints, prefix, etcd) {
            Ok(r) => r,
            Err(code) => return code,
        },
    };
    let program = loaded.compiled.clone();
    let old = match &rec.program {
        Some(files) if *files != loaded.files => migrate::recorded_program(Some(files)),
        _ => None,
    };
    let mut planned: BTreeMap<String, Planned> = BTreeMap::new();
    let mut refused_names = Vec::new();
    for (name, snap) in &rec.snapshots {
        let (migration, refused) = match migrate::migrate(&program, old.as_deref(), snap) {
            Ok(m) => (Some(m), None),
            Err(e) => {
                refused_names.push(name.clone());
                (None, Some(e))
            }
        };
        planned.insert(
            name.clone(),
            Planned {
                instance: name.clone(),
                domain: snap.domain().to_string(),
                stored_slice: Some(snap.snapshot.slice),
                migration,
                refused,
                steps: Vec::new(),
                intents: Vec::new(),
                status: None,
                reason: None,
            },
        );
    }
    // The instances that can be carried over run in an engine of their own, in memory: the
    // same migration and the same scheduler as `ved run`, with no store and no real adapter.
    for name in &refused_names {
        rec.snapshots.remove(name);
    }
    let opts = RunOptions {
        seed: 0,
        data_dir: None,
        durability: ved_store::Durability::None,
        recover: false,
        config: None,
        flush: ved_store::Flush::Background,
        limits: Default::default(),
        wall_ms_at_start: None,
        audit_key: None,
    };
    let engine = match Engine::start_with(
        loaded,
        &opts,
        Adapters::logging(),
        Vec::<EngineEvent>::new(),
        None,
        Some(rec),
        Instances::All,
    ) {
        Ok(e) => e,
        Err(e) => return fail(&e, &e.hint().unwrap_or_default()),
    };
    for inst in engine.runtime().instances() {
        let name = inst.name.to_string();
        if refused_names.contains(&name) {
            // The program would not start; the fresh instance this engine made in its place is
            // not what would happen.
            continue;
        }
        let p = planned.entry(name.clone()).or_insert_with(|| Planned {
            instance: name.clone(),
            domain: program.domains[inst.domain].name.clone(),
            stored_slice: None,
            migration: None,
            refused: None,
            steps: Vec::new(),
            intents: Vec::new(),
            status: None,
            reason: None,
        });
        p.status = Some(inst.status.as_str().to_string());
    }
    for ev in engine.output() {
        let Some(p) = ev.instance().and_then(|i| planned.get_mut(i)) else { continue };
        if p.refused.is_some() {
            continue;
        }
        match ev {
            EngineEvent::Slice { slice, cause, changes, held, .. } => {
                let cause = match cause {
                    SliceCause::Observe => "observe".to_string(),
                    SliceCause::Transition(t) => format!("transition {t}"),
                    SliceCause::Result(id) => format!("result {id}"),
                    SliceCause::Timer(t) => format!("timer {t}"),
                };
                let named = |c: &[(String, ved_vm::Value)]| c.iter().map(|(n, v)| (n.clone(), v.to_string())).collect();
                p.steps.push((*slice, cause, named(changes), named(held)));
            }
            EngineEvent::Intent { id, transition, adapter, action, args, .. } => {
                let call = format!(
                    "{adapter}.{action}({})",
                    args.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")
                );
                let again = id_slice(id).zip(p.stored_slice).is_some_and(|(s, stored)| s <= stored);
                p.intents.push((id.clone(), transition.clone(), call, again));
            }
            EngineEvent::Status { status, reason, .. } => {
                p.status = Some(status.as_str().to_string());
                p.reason = reason.clone();
            }
            _ => {}
        }
    }
    let refused = planned.values().any(|p| p.refused.is_some());
    for p in planned.values() {
        if as_json {
            println!("{}", to_json(p));
        } else {
            print_text(p);
        }
    }
    if refused {
        if !as_json {
            eprintln!("error: `ved run` would refuse this data directory (see above)");
        }
        return crate::exit::code(crate::exit::FAILED);
    }
    ExitCode::SUCCESS
}

/// The slice an intent id (`instance/slice/index`) names.
fn id_slice(id: &str) -> Option<u64> {
    ved_runtime::IntentId::parse(id).map(|i| i.slice)
}

fn print_text(p: &Planned) {
    match (&p.refused, &p.stored_slice) {
        (Some(e), _) => {
            println!("{} ({}): refused", p.instance, p.domain);
            println!("  error: {e}");
            println!("  = hint: {}", e.hint());
            return;
        }
        (None, None) => println!("{} ({}): new instance, starting from its defaults", p.instance, p.domain),
        (None, Some(slice)) => match &p.migration {
            Some(m) if m.changed() => println!(
                "{} ({}) at slice {slice}: upgraded at slice {}",
                p.instance, p.domain, m.snapshot.snapshot.slice
            ),
            _ => println!("{} ({}) at slice {slice}: fields unchanged", p.instance, p.domain),
        },
    }
    if let Some(m) = &p.migration {
        for (n, t, d) in &m.added {
            println!("  + {n}: {t} = {d} (added, its default)");
        }
        for (n, t, v) in &m.removed {
            println!("  - {n}: {t} (removed, was {v})");
        }
        for note in &m.notes {
            println!("  ! {note}");
        }
    }
    let pairs = |c: &[(String, String)]| c.iter().map(|(n, v)| format!("{n} = {v}")).collect::<Vec<_>>().join(", ");
    for (slice, cause, changes, held) in &p.steps {
        let mut what = if changes.is_empty() { "no change".to_string() } else { pairs(changes) };
        if !held.is_empty() {
            what.push_str(&format!(" (held until its intents succeed: {})", pairs(held)));
        }
        println!("  would run slice {slice} ({cause}): {what}");
    }
    for (id, transition, call, again) in &p.intents {
        let from = transition.as_deref().map(|t| format!(" from {t}")).unwrap_or_default();
        let again = if *again { " (recorded before, sent again)" } else { "" };
        println!("  would emit {id} {call}{from}{again}");
    }
    if p.steps.is_empty() && p.intents.is_empty() {
        println!("  would do nothing");
    }
    if let Some(s) = &p.status {
        match &p.reason {
            Some(r) => println!("  would rest {s}: {r}"),
            None => println!("  would rest {s}"),
        }
    }
}

fn to_json(p: &Planned) -> Json {
    let m = p.migration.as_ref();
    json!({
        "instance": p.instance,
        "domain": p.domain,
        "new": p.stored_slice.is_none(),
        "slice": p.stored_slice,
        "upgraded": m.is_some_and(|m| m.changed()),
        "added": m.map(|m| m.added.iter().map(|(n, t, d)| json!({"field": n, "type": t, "default": crate::json::to_json(d)})).collect::<Vec<_>>()).unwrap_or_default(),
        "removed": m.map(|m| m.removed.iter().map(|(n, t, v)| json!({"field": n, "type": t, "was": crate::json::to_json(v)})).collect::<Vec<_>>()).unwrap_or_default(),
        "notes": m.map(|m| m.notes.clone()).unwrap_or_default(),
        "error": p.refused.as_ref().map(|e| json!({"message": e.to_string(), "hint": e.hint()})),
        "conflict": match &p.refused {
            Some(MigrateError::TypeChanged { field, old, new, .. }) => json!({"field": field, "old": old, "new": new}),
            _ => Json::Null,
        },
        "steps": p.steps.iter().map(|(s, c, ch, held)| json!({
            "slice": s,
            "cause": c,
            "changes": ch.iter().map(|(n, v)| (n.clone(), Json::String(v.clone()))).collect::<serde_json::Map<_, _>>(),
            "held": held.iter().map(|(n, v)| (n.clone(), Json::String(v.clone()))).collect::<serde_json::Map<_, _>>(),
        })).collect::<Vec<_>>(),
        "intents": p.intents.iter().map(|(id, t, call, again)| json!({"id": id, "transition": t, "intent": call, "again": again})).collect::<Vec<_>>(),
        "status": p.status,
        "reason": p.reason,
    })
}
