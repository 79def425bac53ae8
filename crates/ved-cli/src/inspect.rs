//! Read-only views of a data directory: `ved inspect`, `ved journal`, `ved audit`.
//! They take no lock and change nothing, so they work while `ved run` holds the directory.

use serde_json::json;
use std::path::Path;
use std::process::ExitCode;
use ved_store::codec::StoredPhase;
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

fn value_text(v: &ved_store::StoredValue) -> String {
    v.to_value().to_string()
}

pub fn inspect(dir: &Path, instance: Option<&str>, as_json: bool) -> ExitCode {
    let rec = match open(dir) {
        Ok(r) => r,
        Err(c) => return c,
    };
    let snaps: Vec<_> = rec.snapshots.values().filter(|s| instance.is_none_or(|i| s.instance == i)).collect();
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
    for s in snaps {
        let undelivered: Vec<(String, String)> = s
            .pending
            .iter()
            .flat_map(|p| match &p.phase {
                StoredPhase::InFlight { outstanding, intents, .. } => intents
                    .iter()
                    .filter(|i| outstanding.contains(&(i.slice, i.index)))
                    .map(|i| {
                        let args: Vec<String> = i.args.iter().map(value_text).collect();
                        (
                            format!("{}/{}/{}", s.instance, i.slice, i.index),
                            format!("{}.{}({})", i.adapter, i.action, args.join(", ")),
                        )
                    })
                    .collect::<Vec<_>>(),
                StoredPhase::Confirming { .. } | StoredPhase::Backoff { .. } => Vec::new(),
            })
            .collect();
        let pending: Vec<(usize, String)> = s
            .pending
            .iter()
            .map(|p| {
                let what = match &p.phase {
                    StoredPhase::InFlight { outstanding, .. } => format!("{} intent(s) in flight", outstanding.len()),
                    StoredPhase::Confirming { until_ms, .. } => {
                        format!("effect done, waiting for the watcher's reading until {until_ms}ms")
                    }
                    StoredPhase::Backoff { until_ms, .. } => format!("retry {} at {until_ms}ms", p.attempt),
                };
                (p.transition, what)
            })
            .collect();
        if as_json {
            let state: serde_json::Map<String, serde_json::Value> = s
                .fields
                .iter()
                .zip(&s.state)
                .map(|((n, _), v)| (n.clone(), crate::json::to_json(&v.to_value())))
                .collect();
            let line = json!({
                "instance": s.instance, "domain": s.domain, "slice": s.slice, "status": s.status,
                "ticks": s.ticks, "now_ms": s.now_ms, "state": state,
                "pending": pending.iter().map(|(t, w)| json!({"transition": t, "what": w})).collect::<Vec<_>>(),
                "undelivered": undelivered.iter().map(|(id, call)| json!({"id": id, "intent": call})).collect::<Vec<_>>(),
            });
            println!("{line}");
        } else {
            println!("{} ({}) at slice {}: {}", s.instance, s.domain, s.slice, s.status);
            for ((n, t), v) in s.fields.iter().zip(&s.state) {
                println!("  {n}: {t} = {}", value_text(v));
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
