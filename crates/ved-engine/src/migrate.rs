//! Program upgrades: carrying a stored instance over to a changed program.
//!
//! A snapshot names its domain and its fields (name and type), so a changed program is
//! noticed when the engine starts. Instead of refusing it, the snapshot is migrated:
//!
//! - the domain is found **by name** (domains may have been reordered);
//! - fields are matched **by name**: a field both versions declare with the same type keeps
//!   its value, a new field gets its declared default (what a new instance gets), a field
//!   the program no longer declares is dropped;
//! - a field whose **type** changed is refused ([`MigrateError::TypeChanged`]): no value
//!   conversion is guessed;
//! - a domain that no longer exists is refused ([`MigrateError::NoDomain`]): dropping an
//!   instance would silently lose its state and whatever it still had in flight;
//! - pending work refers to transitions by index and to fields by slot: both are remapped
//!   by name. A retry (`Backoff`) or a wait for a confirming reading (`Confirming`) of a
//!   transition that no longer exists is dropped, and the migration says so: nothing
//!   outside is left unfinished by either. Intents **in flight** for a transition that no
//!   longer exists are refused ([`MigrateError::InFlight`]): their effects may be under way
//!   and the step's held writes would have nowhere to go, so the safe course is to let the
//!   old program finish them first.
//!
//! Transition names come from the program recorded in the store (the one that wrote the
//! snapshot). A store that does not record it keeps transition indices as they are, as
//! before upgrades were supported; those out of range are dropped.

use std::fmt;
use ved_runtime::{Phase, Status};
use ved_store::{AuditDraft, JournalEntry, SnapshotRecord};
use ved_vm::{CompiledDomain, CompiledProgram, Value};

/// What migrating one stored instance to the current program did.
#[derive(Clone, Debug, PartialEq)]
pub struct Migration {
    pub instance: String,
    pub domain: String,
    /// Fields the program declares and the snapshot lacks: name, type, the default given.
    pub added: Vec<(String, String, Value)>,
    /// Fields the snapshot holds and the program no longer declares: name, type, last value.
    pub removed: Vec<(String, String, Value)>,
    /// What happened to pending work on the way, in words (dropped retries, held writes to
    /// removed fields).
    pub notes: Vec<String>,
    /// The snapshot as the current program reads it. When [`Migration::changed`], its slice
    /// is one past the stored one: the migration is a slice of its own, journaled as such.
    pub snapshot: SnapshotRecord,
}

impl Migration {
    /// Whether the instance's state or pending work changed. Domains reordered, with the
    /// same fields, change nothing the instance can see, and are not recorded.
    pub fn changed(&self) -> bool {
        !self.added.is_empty() || !self.removed.is_empty() || !self.notes.is_empty()
    }

    /// In words: "field `x` added with default 1, field `y` removed (was 3)".
    pub fn summary(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        for (n, t, d) in &self.added {
            parts.push(format!("field `{n}: {t}` added with default {d}"));
        }
        for (n, t, v) in &self.removed {
            parts.push(format!("field `{n}: {t}` removed (was {v})"));
        }
        parts.extend(self.notes.iter().cloned());
        if parts.is_empty() {
            "nothing to change".to_string()
        } else {
            parts.join(", ")
        }
    }

    /// The journal entry that records the migration: cause `migrate`, the added fields as
    /// its changes, and the detail listing what was added and removed.
    pub fn journal_entry(&self, wall_ms: u64) -> JournalEntry {
        let s = &self.snapshot.snapshot;
        let mut detail = Vec::new();
        if !self.added.is_empty() {
            let names: Vec<&str> = self.added.iter().map(|(n, _, _)| n.as_str()).collect();
            detail.push(format!("added {}", names.join(", ")));
        }
        if !self.removed.is_empty() {
            let names: Vec<&str> = self.removed.iter().map(|(n, _, _)| n.as_str()).collect();
            detail.push(format!("removed {}", names.join(", ")));
        }
        if !self.notes.is_empty() {
            detail.push(self.notes.join("; "));
        }
        JournalEntry {
            instance: self.instance.clone(),
            slice: s.slice,
            at_ms: s.now_ms,
            wall_ms: Some(wall_ms),
            cause: "migrate".to_string(),
            detail: Some(detail.join("; ")),
            changes: self.added.iter().map(|(n, _, d)| (n.clone(), d.to_string())).collect(),
            ..JournalEntry::default()
        }
    }

    /// The audit entry: "program upgraded: ...".
    pub fn audit(&self, wall_ms: u64) -> AuditDraft {
        AuditDraft {
            at_ms: self.snapshot.snapshot.now_ms,
            wall_ms: Some(wall_ms),
            instance: self.instance.clone(),
            text: format!("program upgraded: {}", self.summary()),
        }
    }
}

/// Why a stored instance cannot be carried over to the current program.
#[derive(Clone, Debug, PartialEq)]
pub enum MigrateError {
    /// Its domain is not in the program.
    NoDomain { instance: String, domain: String, known: Vec<String> },
    /// A field both versions declare, with another type.
    TypeChanged { instance: String, field: String, old: String, new: String },
    /// Intents are in flight for a transition the program no longer has.
    InFlight { instance: String, transition: String, intents: Vec<String> },
    /// A new field's default could not be computed.
    Default { instance: String, reason: String },
}

impl MigrateError {
    pub fn instance(&self) -> &str {
        match self {
            MigrateError::NoDomain { instance, .. }
            | MigrateError::TypeChanged { instance, .. }
            | MigrateError::InFlight { instance, .. }
            | MigrateError::Default { instance, .. } => instance,
        }
    }

    /// What to do about it.
    pub fn hint(&self) -> String {
        match self {
            MigrateError::NoDomain { domain, known, .. } => format!(
                "keep domain `{domain}` in the program (its domains are {}), or start a new `--data-dir`",
                if known.is_empty() { "none".to_string() } else { known.join(", ") }
            ),
            MigrateError::TypeChanged { field, old, .. } => format!(
                "values are not converted between types: keep `{field}: {old}`, or give the new field \
                 another name (the old one is then dropped and the new one starts from its default)"
            ),
            MigrateError::InFlight { .. } => "run the old program until the instance rests with nothing in flight \
                 (`ved inspect` lists undelivered intents), then upgrade"
                .to_string(),
            MigrateError::Default { .. } => "give the new field a default that evaluates".to_string(),
        }
    }
}

impl fmt::Display for MigrateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MigrateError::NoDomain { instance, domain, .. } => {
                write!(f, "instance `{instance}` belongs to domain `{domain}`, which is not in the program")
            }
            MigrateError::TypeChanged { instance, field, old, new } => write!(
                f,
                "instance `{instance}`: field `{field}` was `{old}` and the program declares it `{new}`"
            ),
            MigrateError::InFlight { instance, transition, intents } => write!(
                f,
                "instance `{instance}` has intents in flight ({}) from transition `{transition}`, which is not in the program",
                intents.join(", ")
            ),
            MigrateError::Default { instance, reason } => {
                write!(f, "instance `{instance}`: a new field's default cannot be computed: {reason}")
            }
        }
    }
}

impl std::error::Error for MigrateError {}

/// The index of the domain of `program` that `schema` describes exactly (same name,
/// same fields and types in the same order) and, when the program that wrote the store
/// differs (`old`: its files changed, or only moved), whose transitions have the same names
/// in the same order there: its snapshots need no migration.
pub fn same_domain(
    program: &CompiledProgram,
    old: Option<&CompiledProgram>,
    schema: &ved_store::Schema,
) -> Option<usize> {
    let d = program.domains.iter().position(|d| d.name == schema.domain)?;
    let dom = &program.domains[d];
    let same = dom.fields.len() == schema.fields.len()
        && dom.fields.iter().zip(&schema.fields).all(|((n, t), (sn, st))| n == sn && t.to_string() == *st);
    let same_transitions = old.is_none_or(|old| {
        old.domains.iter().find(|od| od.name == dom.name).is_some_and(|od| {
            od.transitions.len() == dom.transitions.len()
                && od.transitions.iter().zip(&dom.transitions).all(|(a, b)| a.name == b.name)
        })
    });
    (same && same_transitions).then_some(d)
}

/// Whether every transition and field a snapshot names exists in its domain of
/// `program` (always so when the program that wrote it runs it).
pub fn in_range(program: &CompiledProgram, s: &ved_runtime::InstanceSnapshot) -> bool {
    let Some(dom) = program.domains.get(s.domain) else { return false };
    let t = dom.transitions.len();
    let f = dom.fields.len();
    s.state.len() == f
        && s.pending.iter().all(|p| p.transition < t)
        && s.retry_attempts.iter().all(|(x, _)| *x < t)
        && s.last_errors.iter().all(|(x, _)| *x < t)
        && s.watched.iter().all(|x| (*x as usize) < f)
}

/// Carries `rec` over to `program`. `old` is the program that wrote it, when the store
/// records it (for transition names). Pure: nothing is written.
pub fn migrate(
    program: &CompiledProgram,
    old: Option<&CompiledProgram>,
    rec: &SnapshotRecord,
) -> Result<Migration, MigrateError> {
    let instance = rec.snapshot.name.clone();
    let Some(d) = program.domains.iter().position(|d| d.name == rec.domain()) else {
        return Err(MigrateError::NoDomain {
            instance,
            domain: rec.domain().to_string(),
            known: program.domains.iter().map(|d| format!("`{}`", d.name)).collect(),
        });
    };
    let dom = &program.domains[d];
    let mut snap = rec.snapshot.clone();
    snap.domain = d;

    // Fields, by name. `slots[old] = new`.
    let mut slots: Vec<Option<u16>> = vec![None; rec.fields().len()];
    let mut state = Vec::with_capacity(dom.fields.len());
    let mut added = Vec::new();
    let mut defaults: Option<Vec<Value>> = None;
    for (j, (name, ty)) in dom.fields.iter().enumerate() {
        let new_ty = ty.to_string();
        match rec.fields().iter().position(|(n, _)| n == name) {
            Some(i) => {
                let old_ty = &rec.fields()[i].1;
                if *old_ty != new_ty {
                    return Err(MigrateError::TypeChanged {
                        instance,
                        field: name.clone(),
                        old: old_ty.clone(),
                        new: new_ty,
                    });
                }
                // A snapshot shorter than its field list is damaged; refuse rather than guess.
                let Some(v) = rec.snapshot.state.get(i) else {
                    return Err(MigrateError::Default {
                        instance,
                        reason: format!("the stored state has no value for field `{name}`"),
                    });
                };
                slots[i] = Some(j as u16);
                state.push(v.clone());
            }
            None => {
                // The same initial values a new instance gets, computed once.
                if defaults.is_none() {
                    let mut vm = ved_vm::Vm::new();
                    let init = ved_runtime::initial_state(&mut vm, dom)
                        .map_err(|e| MigrateError::Default { instance: instance.clone(), reason: e.to_string() })?;
                    defaults = Some(init);
                }
                let v = defaults.as_ref().and_then(|s| s.get(j)).cloned().unwrap_or(Value::Int(0));
                added.push((name.clone(), new_ty, v.clone()));
                state.push(v);
            }
        }
    }
    let removed: Vec<(String, String, Value)> = rec
        .fields()
        .iter()
        .enumerate()
        .filter(|(i, _)| slots[*i].is_none())
        .map(|(i, (n, t))| (n.clone(), t.clone(), rec.snapshot.state.get(i).cloned().unwrap_or(Value::Int(0))))
        .collect();
    snap.state = state;
    let field_name = |s: u16| rec.fields().get(s as usize).map(|f| f.0.clone()).unwrap_or_else(|| format!("#{s}"));
    let remap = |s: u16| slots.get(s as usize).copied().flatten();

    // Transitions, by name when the writing program is known.
    let old_dom: Option<&CompiledDomain> = old.and_then(|p| p.domains.iter().find(|od| od.name == rec.domain()));
    let old_name = |t: usize| match old_dom {
        Some(od) => od.transitions.get(t).map(|t| t.name.clone()).unwrap_or_else(|| format!("#{t}")),
        None => dom.transitions.get(t).map(|t| t.name.clone()).unwrap_or_else(|| format!("#{t}")),
    };
    let tmap = |t: usize| -> Option<usize> {
        match old_dom {
            Some(od) => {
                let name = &od.transitions.get(t)?.name;
                dom.transitions.iter().position(|nt| &nt.name == name)
            }
            None => (t < dom.transitions.len()).then_some(t),
        }
    };
    let transitions_moved = match old_dom {
        Some(od) => {
            od.transitions.len() != dom.transitions.len()
                || od.transitions.iter().zip(&dom.transitions).any(|(a, b)| a.name != b.name)
        }
        None => false,
    };

    let mut notes = Vec::new();
    let mut pending = Vec::with_capacity(snap.pending.len());
    for mut p in std::mem::take(&mut snap.pending) {
        let tname = old_name(p.transition);
        let Some(nt) = tmap(p.transition) else {
            match &p.phase {
                Phase::InFlight { outstanding, intents, .. } if !outstanding.is_empty() => {
                    return Err(MigrateError::InFlight {
                        instance,
                        transition: tname,
                        intents: intents
                            .iter()
                            .filter(|i| outstanding.contains(&i.id))
                            .map(|i| format!("{} {i}", i.id))
                            .collect(),
                    });
                }
                Phase::InFlight { .. } => {}
                Phase::Confirming { .. } => notes.push(format!(
                    "transition `{tname}` no longer exists: its wait for a reading to confirm its effect is dropped"
                )),
                Phase::Backoff { until_ms, .. } => notes
                    .push(format!("transition `{tname}` no longer exists: its retry due at {until_ms}ms is dropped")),
            }
            continue;
        };
        p.transition = nt;
        match &mut p.phase {
            Phase::InFlight { held, intents, confirm, .. } => {
                let mut kept = Vec::with_capacity(held.len());
                for (s, v) in held.drain(..) {
                    match remap(s) {
                        Some(ns) => kept.push((ns, v)),
                        None => notes.push(format!(
                            "the held write `{} = {v}` of transition `{tname}` is dropped with its field",
                            field_name(s)
                        )),
                    }
                }
                *held = kept;
                *confirm = confirm.iter().filter_map(|s| remap(*s)).collect();
                for i in intents.iter_mut() {
                    i.transition = nt;
                }
            }
            Phase::Confirming { fields, .. } => {
                *fields = fields.iter().filter_map(|s| remap(*s)).collect();
                if fields.is_empty() {
                    notes.push(format!(
                        "transition `{tname}` was waiting for readings of removed fields only: the wait is dropped"
                    ));
                    continue;
                }
            }
            Phase::Backoff { .. } => {}
        }
        pending.push(p);
    }
    snap.pending = pending;
    snap.retry_attempts = snap.retry_attempts.iter().filter_map(|(t, n)| tmap(*t).map(|nt| (nt, *n))).collect();
    snap.last_errors = snap.last_errors.iter().filter_map(|(t, e)| tmap(*t).map(|nt| (nt, e.clone()))).collect();
    snap.watched = snap.watched.iter().filter_map(|s| remap(*s)).collect();
    if transitions_moved || !added.is_empty() || !removed.is_empty() {
        // A tick in progress walks transitions by index: restart it on the new list.
        snap.tick_cursor = None;
        snap.tick_ran = false;
    }
    let mut m = Migration {
        instance: instance.clone(),
        domain: dom.name.clone(),
        added,
        removed,
        notes,
        snapshot: SnapshotRecord::new(snap, &ved_store::Schema::of(&dom.name, &dom.fields)),
    };
    if m.changed() {
        // The migration is a slice: the journal entry that records it has a number of its own.
        // A resting instance sleeps until a message comes; the new program's goals must be
        // judged afresh, as after an outside input.
        let s = &mut m.snapshot.snapshot;
        s.slice += 1;
        s.status = Status::Converging;
        s.ticks_since_input = 0;
    }
    Ok(m)
}

/// Migrates every stored instance; the first refusal stops it. For `ved plan`, which
/// reports every refusal, call [`migrate`] per instance instead.
pub fn migrate_all<'a>(
    program: &CompiledProgram,
    old: Option<&CompiledProgram>,
    recs: impl IntoIterator<Item = &'a SnapshotRecord>,
) -> Result<Vec<Migration>, MigrateError> {
    recs.into_iter().map(|r| migrate(program, old, r)).collect()
}

/// The program a store recorded, compiled, when it still checks (transition names for
/// [`migrate`]). A program that no longer checks (an older language) gives `None`.
pub fn recorded_program(files: Option<&Vec<(String, String)>>) -> Option<std::sync::Arc<CompiledProgram>> {
    let files = files?.clone();
    crate::load::check_texts(files).ok().map(|l| l.compiled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use ved_runtime::{InstanceSnapshot, Intent, IntentId, Pending, Status};

    const OLD: &str = "domain Other {\n  state {\n    x: int = 0\n  }\n  goal x == 0\n}\n\
        domain D {\n  state {\n    a: int = 0\n    b: int = 0\n  }\n  goal a == 1\n\
        transition t1 { step { if a < 1 { a += 1\n emit X.Go(a) } } }\n\
        transition t2 { step { if a > 1 { a -= 1 } } }\n\
        transition gone { step { if b > 1 { b -= 1 } } }\n}\n";

    /// Domains reordered, `b` removed, `c` added with a default, transitions reordered and
    /// `gone` removed.
    const NEW: &str = "domain D {\n  state {\n    c: int = 3\n    a: int = 0\n  }\n  goal a == 1\n\
        transition t2 { step { if a > 1 { a -= 1 } } }\n\
        transition t1 { step { if a < 1 { a += 1\n emit X.Go(a) } } }\n}\n\
        domain Other {\n  state {\n    x: int = 0\n  }\n  goal x == 0\n}\n";

    fn compile(text: &str) -> Arc<CompiledProgram> {
        match crate::load::check_texts(vec![("t.ved".into(), text.into())]) {
            Ok(l) => l.compiled,
            Err(e) => panic!("{e:?}"),
        }
    }

    fn id(slice: u64, index: u32) -> IntentId {
        IntentId { instance: Arc::from("D"), slice, index }
    }

    fn intent(slice: u64, transition: usize) -> Intent {
        Intent {
            id: id(slice, 0),
            transition,
            adapter: Arc::from("X"),
            action: Arc::from("Go"),
            args: vec![Value::Int(1)].into(),
        }
    }

    /// A stored `D` of the old program: `a = 1`, `b = 5`, with pending work.
    fn stored(pending: Vec<Pending>) -> SnapshotRecord {
        let old = compile(OLD);
        let snap = InstanceSnapshot {
            name: "D".into(),
            domain: 1,
            slice: 4,
            ticks: 2,
            now_ms: 100,
            seed: 0,
            status: Status::Waiting,
            state: vec![Value::Int(1), Value::Int(5)],
            pending,
            retry_attempts: vec![(1, 2), (2, 1)],
            last_errors: vec![(1, "down".into())],
            tick_cursor: Some(1),
            tick_ran: true,
            ticks_since_input: 2,
            sources: Vec::new(),
            watched: vec![0, 1],
        };
        SnapshotRecord::new(snap, &ved_store::Schema::of("D", &old.domains[1].fields))
    }

    /// The start's fast path (`same_domain` and `in_range`: restore as is) agrees with
    /// `migrate`: whenever it is taken, migrating would have changed nothing.
    #[test]
    fn the_unchanged_fast_path_agrees_with_migrate() {
        let old = compile(OLD);
        let pending = vec![
            Pending { transition: 1, attempt: 1, phase: Phase::Confirming { fields: vec![0], until_ms: 9 } },
            Pending {
                transition: 0,
                attempt: 0,
                phase: Phase::InFlight {
                    outstanding: vec![id(4, 0)],
                    held: vec![(1, Value::Int(6))],
                    intents: vec![intent(4, 0)],
                    confirm: vec![],
                },
            },
        ];
        for p in [Vec::new(), pending] {
            let rec = stored(p);
            // The same program, or the same text recorded under other file names.
            for writer in [None, Some(&*old)] {
                assert_eq!(same_domain(&old, writer, &rec.schema), Some(1));
                assert!(in_range(&old, &rec.snapshot));
                let m = migrate(&old, writer, &rec).unwrap();
                assert!(!m.changed(), "{}", m.summary());
                assert_eq!(m.snapshot.snapshot, rec.snapshot);
            }
        }
        // Another program: the fields differ, so the fast path is not taken; nor when the
        // writer's transitions differ, even with the same fields.
        let rec = stored(Vec::new());
        assert_eq!(same_domain(&compile(NEW), None, &rec.schema), None);
        assert_eq!(same_domain(&old, Some(&compile(NEW)), &rec.schema), None);
        let mut far = rec.snapshot.clone();
        far.retry_attempts.push((99, 1));
        assert!(!in_range(&old, &far));
    }

    #[test]
    fn fields_and_pending_work_are_carried_over_by_name() {
        let (old, new) = (compile(OLD), compile(NEW));
        let rec = stored(vec![
            // t1 (old index 0) in flight, holding writes to `a` (kept) and `b` (removed).
            Pending {
                transition: 0,
                attempt: 0,
                phase: Phase::InFlight {
                    outstanding: vec![id(4, 0)],
                    held: vec![(0, Value::Int(2)), (1, Value::Int(6))],
                    intents: vec![intent(4, 0)],
                    confirm: vec![0, 1],
                },
            },
            // A retry of `gone`, which the new program does not have.
            Pending { transition: 2, attempt: 1, phase: Phase::Backoff { until_ms: 500, faulted: false, error: None } },
        ]);
        let m = migrate(&new, Some(&old), &rec).unwrap();
        assert!(m.changed());
        let s = &m.snapshot.snapshot;
        // Domain `D` moved from index 1 to 0; `c` is first now, with its default.
        assert_eq!(s.domain, 0);
        assert_eq!(s.state, vec![Value::Int(3), Value::Int(1)]);
        assert_eq!(m.added, vec![("c".to_string(), "int".to_string(), Value::Int(3))]);
        assert_eq!(m.removed, vec![("b".to_string(), "int".to_string(), Value::Int(5))]);
        // t1 is index 1 now; its held write to `a` moved to slot 1, the one to `b` is gone.
        assert_eq!(s.pending.len(), 1);
        assert_eq!(s.pending[0].transition, 1);
        match &s.pending[0].phase {
            Phase::InFlight { held, intents, confirm, outstanding } => {
                assert_eq!(held, &vec![(1, Value::Int(2))]);
                assert_eq!(confirm, &vec![1]);
                assert_eq!(intents[0].transition, 1);
                assert_eq!(outstanding, &vec![id(4, 0)]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s.retry_attempts, vec![(0, 2)]);
        assert_eq!(s.last_errors, vec![(0, "down".to_string())], "last errors follow their transition");
        assert_eq!(s.watched, vec![1]);
        assert_eq!((s.tick_cursor, s.tick_ran), (None, false));
        assert_eq!((s.slice, s.status), (5, Status::Converging));
        assert_eq!(m.notes.len(), 2, "{:?}", m.notes);
        assert!(m.notes[1].contains("`gone` no longer exists: its retry due at 500ms is dropped"), "{:?}", m.notes);
        assert!(m.notes[0].contains("held write `b = 6` of transition `t1` is dropped"), "{:?}", m.notes);
        let e = m.journal_entry(1_796_189_694_123);
        assert_eq!((e.slice, e.cause.as_str(), e.wall_ms), (5, "migrate", Some(1_796_189_694_123)));
        assert_eq!(e.changes, vec![("c".to_string(), "3".to_string())]);
        assert!(m
            .audit(0)
            .text
            .starts_with("program upgraded: field `c: int` added with default 3, field `b: int` removed (was 5)"));
    }

    #[test]
    fn intents_in_flight_for_a_removed_transition_are_refused() {
        let (old, new) = (compile(OLD), compile(NEW));
        let rec = stored(vec![Pending {
            transition: 2,
            attempt: 0,
            phase: Phase::InFlight {
                outstanding: vec![id(4, 0)],
                held: Vec::new(),
                intents: vec![intent(4, 2)],
                confirm: Vec::new(),
            },
        }]);
        let e = migrate(&new, Some(&old), &rec).unwrap_err();
        assert_eq!(
            e.to_string(),
            "instance `D` has intents in flight (D/4/0 X.Go(1)) from transition `gone`, which is not in the program"
        );
        assert!(e.hint().contains("run the old program until the instance rests"));
    }

    #[test]
    fn a_type_change_and_a_missing_domain_are_refused() {
        let old = compile(OLD);
        let changed =
            compile(&OLD.replace("b: int = 0", "b: bool = false").replace("if b > 1 { b -= 1 }", "if b { b = false }"));
        let e = migrate(&changed, Some(&old), &stored(Vec::new())).unwrap_err();
        assert_eq!(
            e,
            MigrateError::TypeChanged {
                instance: "D".into(),
                field: "b".into(),
                old: "int".into(),
                new: "bool".into()
            }
        );
        let only_other = compile("domain Other {\n  state {\n    x: int = 0\n  }\n  goal x == 0\n}\n");
        let e = migrate(&only_other, Some(&old), &stored(Vec::new())).unwrap_err();
        assert!(matches!(e, MigrateError::NoDomain { ref domain, .. } if domain == "D"), "{e:?}");
        assert!(e.hint().contains("keep domain `D`"), "{}", e.hint());
    }

    #[test]
    fn the_same_fields_change_nothing_even_with_domains_reordered() {
        let old = compile(OLD);
        // `D` first now: index 0 instead of 1.
        let at = OLD.find("domain D").unwrap();
        let reordered = compile(&format!("{}{}", &OLD[at..], &OLD[..at]));
        let m = migrate(&reordered, Some(&old), &stored(Vec::new())).unwrap();
        assert!(!m.changed());
        let mut expected = stored(Vec::new());
        expected.snapshot.domain = 0;
        assert_eq!(m.snapshot, expected);
    }
}
