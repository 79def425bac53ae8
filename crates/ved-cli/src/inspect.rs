//! Read-only views of a data directory: `ved inspect`, `ved journal`, `ved audit`.
//! They take no lock and change nothing, so they work while `ved run` holds the directory.

use serde_json::json;
use std::path::Path;
use std::process::ExitCode;
use ved_runtime::Phase;
use ved_store::{read_only, verify_audit, Recovered, StoreError};

fn open(dir: &Path) -> Result<Recovered, ExitCode> {
    read_only(dir).map_err(|e| {
        report(&e);
        ExitCode::from(1)
    })
}

fn report(e: &StoreError) {
    eprintln!("error: {e}");
    match e {
        StoreError::Corrupt { .. } => eprintln!("  = hint: `ved run --recover` starts from the last good snapshot"),
        _ => eprintln!("  = hint: {}", e.hint()),
    }
}

pub fn inspect(dir: &Path, instance: Option<&str>, as_json: bool) -> ExitCode {
    let rec = match open(dir) {
        Ok(r) => r,
        Err(c) => return c,
    };
    let snaps: Vec<_> = rec.snapshots.values().filter(|s| instance.is_none_or(|i| s.snapshot.name == i)).collect();
    if let Some(i) = instance {
        if snaps.is_empty() {
            let names: Vec<String> = rec.snapshots.keys().map(|n| format!("`{n}`")).collect();
            eprintln!("error: no instance named `{i}` in {}", dir.display());
            eprintln!(
                "  = hint: the instances are {}",
                if names.is_empty() { "none yet".into() } else { names.join(", ") }
            );
            return ExitCode::from(1);
        }
    }
    for r in snaps {
        let s = &r.snapshot;
        let undelivered: Vec<(String, String)> = s
            .pending
            .iter()
            .flat_map(|p| match &p.phase {
                Phase::InFlight { outstanding, intents, .. } => intents
                    .iter()
                    .filter(|i| outstanding.contains(&i.id))
                    .map(|i| (i.id.to_string(), i.to_string()))
                    .collect::<Vec<_>>(),
                Phase::Confirming { .. } | Phase::Backoff { .. } => Vec::new(),
            })
            .collect();
        let pending: Vec<(usize, String)> = s
            .pending
            .iter()
            .map(|p| {
                let what = match &p.phase {
                    Phase::InFlight { outstanding, .. } => format!("{} intent(s) in flight", outstanding.len()),
                    Phase::Confirming { until_ms, .. } => {
                        format!("effect done, waiting for the watcher's reading until {until_ms}ms")
                    }
                    Phase::Backoff { until_ms, .. } => format!("retry {} at {until_ms}ms", p.attempt),
                };
                (p.transition, what)
            })
            .collect();
        if as_json {
            let state: serde_json::Map<String, serde_json::Value> =
                r.fields.iter().zip(&s.state).map(|((n, _), v)| (n.clone(), crate::json::to_json(v))).collect();
            let line = json!({
                "instance": s.name, "domain": r.domain, "slice": s.slice, "status": s.status.as_str(),
                "ticks": s.ticks, "now_ms": s.now_ms, "state": state,
                "pending": pending.iter().map(|(t, w)| json!({"transition": t, "what": w})).collect::<Vec<_>>(),
                "undelivered": undelivered.iter().map(|(id, call)| json!({"id": id, "intent": call})).collect::<Vec<_>>(),
            });
            println!("{line}");
        } else {
            println!("{} ({}) at slice {}: {}", s.name, r.domain, s.slice, s.status.as_str());
            for ((n, t), v) in r.fields.iter().zip(&s.state) {
                println!("  {n}: {t} = {v}");
            }
            for (t, w) in &pending {
                println!("  pending: transition #{t}: {w}");
            }
            for (id, call) in &undelivered {
                println!("  undelivered: {id} {call}");
            }
        }
    }
    ExitCode::SUCCESS
}

pub fn journal(dir: &Path, instance: &str, as_json: bool) -> ExitCode {
    let rec = match open(dir) {
        Ok(r) => r,
        Err(c) => return c,
    };
    let Some(entries) = rec.journals.get(instance) else {
        eprintln!("error: no journal for `{instance}` in {}", dir.display());
        let names: Vec<String> = rec.journals.keys().map(|n| format!("`{n}`")).collect();
        eprintln!(
            "  = hint: journals exist for {}",
            if names.is_empty() { "no instance yet".into() } else { names.join(", ") }
        );
        return ExitCode::from(1);
    };
    for e in entries {
        if as_json {
            println!("{}", serde_json::to_string(e).unwrap_or_default());
            continue;
        }
        if e.quiet > 0 {
            let s = if e.quiet == 1 { "" } else { "s" };
            println!("({} observation{s} that changed nothing, not journaled)", e.quiet);
        }
        let mut line = format!("slice {} at {}ms [{}", e.slice, e.at_ms, e.cause);
        if let Some(d) = &e.detail {
            line.push_str(&format!(" {d}"));
        }
        if let Some(s) = &e.source {
            line.push_str(&format!(" from {s}"));
        }
        line.push(']');
        if let Some(b) = e.batch {
            line.push_str(&format!(" (batch {b})"));
        }
        if let Some(c) = &e.caused_by {
            line.push_str(&format!(" caused by {c}"));
        }
        if let Some(o) = &e.origin {
            line.push_str(&format!(" after {o}"));
        }
        if !e.added.is_empty() {
            let c: Vec<String> = e.added.iter().map(|(n, d)| format!("{n} {d:+}")).collect();
            line.push_str(&format!(" add {}", c.join(", ")));
        }
        if !e.changes.is_empty() {
            let c: Vec<String> = e.changes.iter().map(|(n, v)| format!("{n} = {v}")).collect();
            line.push_str(&format!(": {}", c.join(", ")));
        }
        if !e.held.is_empty() {
            let c: Vec<String> = e.held.iter().map(|(n, v)| format!("{n} = {v}")).collect();
            line.push_str(&format!(" (held: {})", c.join(", ")));
        }
        println!("{line}");
        for (id, call) in &e.intents {
            println!("    intent {id}: {call}");
        }
        for (id, ok, err) in &e.results {
            let verdict = if *ok { "ok".to_string() } else { format!("failed: {}", err.as_deref().unwrap_or("")) };
            println!("    result {id}: {verdict}");
        }
        if let Some(status) = &e.status {
            match &e.reason {
                Some(r) => println!("    -> {status}: {r}"),
                None => println!("    -> {status}"),
            }
        }
    }
    ExitCode::SUCCESS
}

pub fn audit(dir: &Path, as_json: bool) -> ExitCode {
    let rec = match open(dir) {
        Ok(r) => r,
        Err(c) => return c,
    };
    for e in &rec.audit {
        if as_json {
            println!("{}", serde_json::to_string(e).unwrap_or_default());
        } else {
            println!("#{} {}ms {}: {}", e.seq, e.at_ms, e.instance, e.text);
        }
    }
    ExitCode::SUCCESS
}

pub fn audit_verify(dir: &Path) -> ExitCode {
    match verify_audit(dir) {
        Ok(Ok(n)) => {
            println!("ok: {n} audit entries, hash chain intact");
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => {
            eprintln!("error: {}: {e}", dir.display());
            eprintln!(
                "  = hint: entries from this one on cannot be trusted; compare with a backup or an external copy"
            );
            ExitCode::from(1)
        }
        Err(e) => {
            report(&e);
            ExitCode::from(1)
        }
    }
}
