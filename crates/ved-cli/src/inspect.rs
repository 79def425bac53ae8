//! Read-only views of a data directory or of a cluster's etcd: `ved inspect`,
//! `ved journal`, `ved audit`. They take no lock and change nothing, so they work
//! while `ved run` holds the directory or the nodes run.

use crate::exit;
use serde_json::json;
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use ved_runtime::Phase;
use ved_store::audit::{check_macs, Chain};
use ved_store::{read_only, verified_audit, Anchor, AuditEntry, AuditKey, JournalEntry, StoreError};

/// Where the state is read from.
pub enum Source {
    Dir(PathBuf),
    /// A cluster: etcd's client URLs and the key prefix the nodes use.
    Cluster {
        endpoints: Vec<String>,
        prefix: String,
        /// TLS and credentials for etcd (`--etcd-ca` and the like).
        etcd: ved_cluster::etcd::Options,
    },
}

impl Source {
    fn name(&self) -> String {
        match self {
            Source::Dir(d) => d.display().to_string(),
            Source::Cluster { endpoints, prefix, .. } => {
                format!("the cluster at {} (prefix {prefix})", endpoints.join(","))
            }
        }
    }
}

/// What the views show, from either source.
struct View {
    snapshots: ved_store::Snapshots,
    journals: BTreeMap<String, VecDeque<JournalEntry>>,
    /// A data directory's one chain, or a cluster's chains, one per instance.
    chains: BTreeMap<String, Vec<AuditEntry>>,
}

fn open(src: &Source) -> Result<View, ExitCode> {
    match src {
        Source::Dir(dir) => {
            require_dir(dir)?;
            let rec = read_only(dir).map_err(|e| {
                report(&e);
                exit::code(exit::FAILED)
            })?;
            let mut chains = BTreeMap::new();
            chains.insert(String::new(), rec.audit);
            Ok(View { snapshots: rec.snapshots, journals: rec.journals, chains })
        }
        Source::Cluster { endpoints, prefix, etcd } => {
            let fail = |e: String| {
                eprintln!("error: cannot read {}: {e}", src.name());
                eprintln!("  = hint: check that etcd is running, that `--cluster` lists its client URLs, and the `--etcd-*` options if it has TLS or authentication");
                exit::code(exit::FAILED)
            };
            let etcd = ved_cluster::etcd::Etcd::with_options(
                endpoints.clone(),
                std::time::Duration::from_secs(2),
                etcd.clone(),
            )
            .map_err(|e| fail(e.to_string()))?;
            let etcd = Arc::new(etcd);
            let names = ved_cluster::list_instances(&*etcd, prefix).map_err(|e| fail(e.to_string()))?;
            let mut view =
                View { snapshots: ved_store::Snapshots::default(), journals: BTreeMap::new(), chains: BTreeMap::new() };
            for name in names {
                let s = ved_engine::persist_etcd::load(&*etcd, prefix, &name).map_err(fail)?;
                if let Some(snap) = s.snapshot {
                    view.snapshots.insert(snap);
                }
                view.journals.insert(name.clone(), s.journal.into_iter().collect());
                view.chains.insert(name, s.audit);
            }
            Ok(view)
        }
    }
}

/// A data directory that is not there is a mistake in the path (or `ved run` never ran),
/// not an empty store: said plainly, exit 66, rather than shown as nothing.
fn require_dir(dir: &Path) -> Result<(), ExitCode> {
    if dir.is_dir() {
        return Ok(());
    }
    let what = if dir.exists() { "is not a directory" } else { "does not exist" };
    eprintln!("error: the data directory {} {what}", dir.display());
    eprintln!("  = hint: check the path; `ved run --data-dir DIR` creates one");
    Err(exit::code(exit::NO_INPUT))
}

fn report(e: &StoreError) {
    eprintln!("error: {e}");
    match e {
        StoreError::Corrupt { .. } => eprintln!("  = hint: `ved run --recover` starts from the last good snapshot"),
        _ => eprintln!("  = hint: {}", e.hint()),
    }
}

pub fn inspect(src: &Source, instance: Option<&str>, as_json: bool) -> ExitCode {
    let rec = match open(src) {
        Ok(r) => r,
        Err(c) => return c,
    };
    let snaps: Vec<_> = rec.snapshots.values().filter(|s| instance.is_none_or(|i| s.snapshot.name == i)).collect();
    if let Some(i) = instance {
        if snaps.is_empty() {
            let names: Vec<String> = rec.snapshots.keys().map(|n| format!("`{n}`")).collect();
            eprintln!("error: no instance named `{i}` in {}", src.name());
            eprintln!(
                "  = hint: the instances are {}",
                if names.is_empty() { "none yet".into() } else { names.join(", ") }
            );
            return exit::code(exit::NO_INPUT);
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
                r.fields().iter().zip(&s.state).map(|((n, _), v)| (n.clone(), crate::json::to_json(v))).collect();
            let line = json!({
                "instance": s.name, "domain": r.domain(), "slice": s.slice, "status": s.status.as_str(),
                "ticks": s.ticks, "now_ms": s.now_ms, "state": state,
                "pending": pending.iter().map(|(t, w)| json!({"transition": t, "what": w})).collect::<Vec<_>>(),
                "undelivered": undelivered.iter().map(|(id, call)| json!({"id": id, "intent": call})).collect::<Vec<_>>(),
            });
            println!("{line}");
        } else {
            println!("{} ({}) at slice {}: {}", s.name, r.domain(), s.slice, s.status.as_str());
            for ((n, t), v) in r.fields().iter().zip(&s.state) {
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

pub fn journal(src: &Source, instance: &str, as_json: bool) -> ExitCode {
    let rec = match open(src) {
        Ok(r) => r,
        Err(c) => return c,
    };
    let Some(entries) = rec.journals.get(instance) else {
        eprintln!("error: no journal for `{instance}` in {}", src.name());
        let names: Vec<String> = rec.journals.keys().map(|n| format!("`{n}`")).collect();
        eprintln!(
            "  = hint: journals exist for {}",
            if names.is_empty() { "no instance yet".into() } else { names.join(", ") }
        );
        return exit::code(exit::NO_INPUT);
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
        let at = match e.wall_ms {
            Some(ms) => format!("{} ({}ms)", ved_store::time::rfc3339(ms), e.at_ms),
            None => format!("{}ms", e.at_ms),
        };
        let mut line = format!("slice {} at {at} [{}", e.slice, e.cause);
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

pub fn audit(src: &Source, as_json: bool) -> ExitCode {
    let rec = match open(src) {
        Ok(r) => r,
        Err(c) => return c,
    };
    for e in rec.chains.values().flatten() {
        if as_json {
            println!("{}", serde_json::to_string(e).unwrap_or_default());
        } else {
            match &e.time {
                Some(t) => println!("#{} {t} ({}ms) {}: {}", e.seq, e.at_ms, e.instance, e.text),
                None => println!("#{} {}ms {}: {}", e.seq, e.at_ms, e.instance, e.text),
            }
        }
    }
    ExitCode::SUCCESS
}

/// A data directory's verified chain, or the exit code after saying why there is none.
fn verified(dir: &Path, as_json: bool) -> Result<Chain, ExitCode> {
    require_dir(dir)?;
    match verified_audit(dir) {
        Ok(Ok(chain)) => Ok(chain),
        Ok(Err(e)) => Err(failed(
            dir,
            &e,
            "entries from this one on cannot be trusted; compare with a backup or an external copy",
            as_json,
        )),
        Err(e) => {
            if as_json {
                println!("{}", json!({"ok": false, "error": e.to_string()}));
            }
            report(&e);
            Err(exit::code(exit::FAILED))
        }
    }
}

/// Reports a check that failed: exit 1.
fn failed(dir: &Path, e: &ved_store::AuditError, hint: &str, as_json: bool) -> ExitCode {
    if as_json {
        println!("{}", json!({"ok": false, "line": e.line, "error": e.reason}));
    }
    eprintln!("error: {}: {e}", dir.display());
    eprintln!("  = hint: {hint}");
    exit::code(exit::FAILED)
}

/// `--head`, `--key` and `ved audit head` read a data directory's one chain.
fn dir_only(src: &Source, what: &str) -> Result<PathBuf, ExitCode> {
    match src {
        Source::Dir(d) => Ok(d.clone()),
        Source::Cluster { .. } => {
            eprintln!(
                "error: {what} reads a data directory's audit log; a cluster keeps one chain per instance in etcd"
            );
            eprintln!("  = hint: pass `--data-dir DIR`, or use `ved audit verify --cluster URLS` without it");
            Err(exit::code(exit::USAGE))
        }
    }
}

/// `ved audit head`: the anchor of the committed log, once its chain is verified.
pub fn audit_head(src: &Source, as_json: bool) -> ExitCode {
    let dir = match dir_only(src, "`ved audit head`") {
        Ok(d) => d,
        Err(c) => return c,
    };
    let chain = match verified(&dir, as_json) {
        Ok(c) => c,
        Err(c) => return c,
    };
    let anchor = chain.anchor();
    if as_json {
        println!("{}", json!({"count": anchor.count, "hash": anchor.hash, "anchor": anchor.to_string()}));
    } else {
        println!("{anchor}");
    }
    ExitCode::SUCCESS
}

/// `ved audit verify`: the hash chain, and with `head` and `key`, what was kept outside
/// the directory. Exit 0 ok, 1 a check failed or the log cannot be read, 64 a usage error,
/// 66 no data directory.
pub fn audit_verify(src: &Source, head: Option<&Anchor>, key: Option<&Path>, as_json: bool) -> ExitCode {
    let dir = match src {
        Source::Dir(d) => d.clone(),
        Source::Cluster { .. } if head.is_none() && key.is_none() => return audit_verify_chains(src, as_json),
        Source::Cluster { .. } => match dir_only(src, "`--head` or `--key`") {
            Ok(d) => d,
            Err(c) => return c,
        },
    };
    // The key first: an unusable one is a usage error, whatever the log holds.
    let key = match key.map(|k| AuditKey::read(k, Some(&dir))).transpose() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("error: {e}");
            eprintln!("  = hint: {}", e.hint);
            return exit::code(exit::USAGE);
        }
    };
    let chain = match verified(&dir, as_json) {
        Ok(c) => c,
        Err(c) => return c,
    };
    let n = chain.entries.len();
    let mut said = format!("ok: {n} audit entries, hash chain intact");
    if let Some(anchor) = head {
        if let Err(e) = chain.check_anchor(anchor) {
            let hint = "the log no longer holds what it held when the anchor was recorded: it was rewritten or \
                        cut since; compare with a backup or an external copy";
            return failed(&dir, &e, hint, as_json);
        }
        said.push_str(&format!(", entry {} matches the anchor", anchor.count));
    }
    let mut keyed = None;
    if let Some(key) = &key {
        match check_macs(&chain.entries, key) {
            Ok(r) => {
                match r.first_keyed {
                    Some(1) | None => said.push_str(&format!(", {} macs valid", r.keyed)),
                    Some(f) => said.push_str(&format!(
                        ", {} macs valid (entries 1-{} predate the key; entry {f}'s mac covers them)",
                        r.keyed,
                        f - 1
                    )),
                }
                keyed = Some(r.keyed);
            }
            Err(e) => {
                let hint = "entries from this one on were not written by a `ved run` holding this key; compare \
                            with a backup or an external copy";
                return failed(&dir, &e, hint, as_json);
            }
        }
    }
    if as_json {
        let line = json!({
            "ok": true, "entries": n, "anchor": chain.anchor().to_string(),
            "head_checked": head.map(|a| a.to_string()), "macs_checked": keyed,
        });
        println!("{line}");
    } else {
        println!("{said}");
    }
    if head.is_none() && key.is_none() {
        // Said every time, because it is what an `ok` here cannot mean.
        let macs = chain.entries.iter().filter(|e| e.mac.is_some()).count();
        eprintln!(
            "note: the chain alone does not show a log rewritten by someone who can write {}; check it \
             against an anchor kept elsewhere (`--head N:HASH`, from `ved audit head`){}",
            dir.display(),
            if macs > 0 { format!(" or the key ({macs} entries carry a mac: `--key FILE`)") } else { String::new() }
        );
    }
    ExitCode::SUCCESS
}

/// A cluster keeps one chain per instance (it moves with the instance): each must link
/// from the genesis hash, sequence by sequence.
fn audit_verify_chains(src: &Source, as_json: bool) -> ExitCode {
    let view = match open(src) {
        Ok(v) => v,
        Err(c) => return c,
    };
    let mut total = 0;
    for (instance, chain) in &view.chains {
        let text: String = chain.iter().map(AuditEntry::to_line).collect();
        let head = chain.last().map_or(ved_store::audit::GENESIS, |e| e.hash.as_str());
        if let Err(e) = ved_store::audit::verify(&text, chain.len() as u64, head) {
            if as_json {
                println!("{}", json!({"ok": false, "instance": instance, "line": e.line, "error": e.reason}));
            }
            eprintln!("error: the audit chain of `{instance}` in {}: {e}", src.name());
            eprintln!("  = hint: entries from this one on cannot be trusted; compare with an etcd backup");
            return exit::code(exit::FAILED);
        }
        total += chain.len();
    }
    if as_json {
        println!("{}", json!({"ok": true, "entries": total, "chains": view.chains.len()}));
    } else {
        println!("ok: {total} audit entries in {} chains, each hash chain intact", view.chains.len());
    }
    ExitCode::SUCCESS
}
