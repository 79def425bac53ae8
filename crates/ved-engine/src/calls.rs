//! The API's calls, answered on the engine's thread: what `GET`, `POST` and the
//! rest mean for the engine, as an HTTP status and a JSON body. The HTTP server
//! itself is a client (`ved-cli`); a cluster node answers the same calls.

use crate::engine::{Ack, Engine, Responder};
use crate::event::{EngineEvent, Sink};
use crate::input::Observation;
use serde_json::{json, Map, Value as Json};
use ved_runtime::instance::Phase;

/// Longest instance name `POST /v1/instances` accepts.
const NAME_MAX: usize = 128;
/// Most instances one `POST /v1/instances`, or observations one `POST /v1/observations`,
/// carries: one engine round and one durable batch each, so a call stays a bounded pause
/// for everything else the engine does.
pub const BATCH_MAX: usize = 10_000;
/// Instances a page of `GET /v1/instances` holds without `limit`, and at most.
pub const PAGE_DEFAULT: usize = 1_000;
pub const PAGE_MAX: usize = 10_000;
/// Instance names an error message lists before it says how many more there are.
const NAMES_SHOWN: usize = 10;

/// What a client asks of the engine.
#[derive(Clone, Debug)]
pub enum Call {
    List,
    Get(String),
    Observe {
        instance: String,
        body: Map<String, Json>,
        version: Option<(String, u64)>,
    },
    Create(Map<String, Json>),
    Journal(String),
    Audit,
    Health,
    /// `GET /metrics`: the Prometheus text, as a JSON string.
    Metrics,
    /// `GET /v1/instances` with paging and filters.
    Page(ListQuery),
    /// `POST /v1/instances`: one object (`single`, answered with the instance) or an array
    /// (answered with the list). Nothing is created past `max_instances` in all.
    CreateMany {
        items: Vec<Json>,
        single: bool,
        max_instances: usize,
    },
    /// `POST /v1/observations`: `[{"instance", "set" | "add", "source"?, "version"?}]`.
    ObserveMany(Vec<Json>),
    /// `DELETE /v1/instances/{name}`.
    Delete(String),
}

/// Filters and a page of `GET /v1/instances`: names in ascending order, after `after`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ListQuery {
    pub status: Option<String>,
    pub domain: Option<String>,
    pub limit: Option<usize>,
    pub after: Option<String>,
}

/// An instance `POST /v1/instances` asked for, checked and not yet created.
/// An instance to create, checked against the program.
pub struct NewInstance {
    pub name: String,
    pub domain: usize,
    /// Initial values by slot; the other fields take their declared defaults.
    pub overrides: Vec<(u16, ved_vm::Value)>,
}

/// Reads `{"name", "domain", "state"}` against the program: a valid name, a domain that
/// exists, fields that exist with values of their types. Whether the name is free is the
/// caller's to check (an engine's instances, or a cluster's registry).
pub fn parse_new(program: &ved_vm::CompiledProgram, body: &Map<String, Json>) -> Result<NewInstance, Reply> {
    for key in body.keys() {
        if !matches!(key.as_str(), "name" | "domain" | "state") {
            return Err(error(400, format!("unknown key `{key}`; an instance has `name`, `domain` and `state`")));
        }
    }
    let name = match body.get("name") {
        Some(Json::String(s)) => s.clone(),
        Some(_) => return Err(error(400, "`name` must be a string")),
        None => return Err(error(400, "missing `name`: what is the new instance called?")),
    };
    check_name(&name).map_err(|e| error(400, e))?;
    let domains: Vec<String> = program.domains.iter().map(|d| format!("`{}`", d.name)).collect();
    let domain = match body.get("domain") {
        Some(Json::String(s)) => s.clone(),
        Some(_) => return Err(error(400, "`domain` must be a string")),
        None => return Err(error(400, format!("missing `domain`; the domains are {}", domains.join(", ")))),
    };
    let Some(d) = program.domains.iter().position(|x| x.name == domain) else {
        return Err(error(400, format!("no domain named `{domain}`; the domains are {}", domains.join(", "))));
    };
    let dom = &program.domains[d];
    let mut overrides = Vec::new();
    match body.get("state") {
        None => {}
        Some(Json::Object(state)) => {
            for (field, value) in state {
                let Some(slot) = dom.fields.iter().position(|(n, _)| n == field) else {
                    let fields: Vec<String> = dom.fields.iter().map(|(n, _)| format!("`{n}`")).collect();
                    return Err(error(
                        400,
                        format!("`{domain}` has no field `{field}`; its fields are {}", fields.join(", ")),
                    ));
                };
                let v = crate::json::from_json(value, &dom.fields[slot].1)
                    .map_err(|e| error(400, format!("field `{field}`: {e}")))?;
                overrides.push((slot as u16, v));
            }
        }
        Some(_) => return Err(error(400, "`state` must be an object of field to value")),
    }
    Ok(NewInstance { name, domain: d, overrides })
}

const STATUSES: [&str; 6] = ["stable", "converging", "waiting", "stuck", "livelock", "degraded"];

/// The engine's answer: an HTTP status and a JSON body.
#[derive(Clone, Debug, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub body: Json,
}

/// An error reply: `{"error": {"status": S, "message": M}}`.
pub fn error(status: u16, message: impl Into<String>) -> Reply {
    Reply { status, body: json!({"error": {"status": status, "message": message.into()}}) }
}

/// An error about element `index` of a batch: the message names it, and `index` says it
/// to a program, so a client can fix that element and send the batch again.
pub fn at_index(index: usize, r: Reply) -> Reply {
    let message = r.body["error"]["message"].as_str().unwrap_or_default().to_string();
    let mut r = error(r.status, format!("element {index} of the array: {message}"));
    r.body["error"]["index"] = json!(index);
    r
}

pub fn kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

/// Why `name` cannot name an instance, if it cannot. Names become parts of URLs and of
/// the store's keys, so only a plain, printable alphabet is accepted, and no name that a
/// path would read as a directory.
pub fn check_name(name: &str) -> Result<(), String> {
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    if name.is_empty() || name.len() > NAME_MAX || !name.chars().all(valid) {
        let shown: String = name.chars().take(NAME_MAX).flat_map(char::escape_default).collect();
        return Err(format!(
            "`{shown}` is not a valid instance name: use 1 to {NAME_MAX} letters, digits, `_`, `-` or `.`"
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("`{name}` is not a valid instance name: `.` and `..` read as directories in a path"));
    }
    Ok(())
}

/// What a call is told while the store cannot write: why, that nothing was applied, and what to do.
fn stalled_message(why: &str) -> String {
    format!(
        "the store cannot write ({why}); nothing was applied: retry once space is freed (writes resume by themselves)"
    )
}

impl<S: Sink> Engine<S> {
    /// Answers one API call on the driver's thread.
    pub fn call(&mut self, call: Call, reply: Responder) {
        match call {
            Call::Health => {
                let r = match (self.store_failure(), self.store_stalled()) {
                    (Some(f), _) => error(503, format!("the store failed: {f}")),
                    (None, Some(why)) => {
                        let mut r = error(503, stalled_message(&why));
                        r.body["status"] = json!("degraded");
                        r.body["store"] = json!(format!("{why}: writes are waiting for space"));
                        r
                    }
                    (None, None) => Reply { status: 200, body: json!({"status": "ok"}) },
                };
                reply(r);
            }
            Call::Metrics => {
                let text = self.metrics_text();
                reply(Reply { status: 200, body: Json::String(text) });
            }
            Call::Observe { .. }
            | Call::ObserveMany(_)
            | Call::Create(_)
            | Call::CreateMany { .. }
            | Call::Delete(_)
                if self.store_stalled().is_some() =>
            {
                // Refused at once, unapplied: an answer that waited for space could wait for
                // hours, and the writes it queued would hold memory all that time. The
                // client retries; calls accepted before the stall wait and complete after it.
                let why = self.store_stalled().unwrap_or_default();
                reply(error(503, stalled_message(&why)));
            }
            Call::List => {
                let list: Vec<Json> = self
                    .rt
                    .instances()
                    .iter()
                    .map(|i| {
                        json!({"name": &*i.name, "domain": self.program.domains[i.domain].name,
                            "status": i.status.as_str(), "slice": i.slice})
                    })
                    .collect();
                reply(Reply { status: 200, body: json!({"instances": list}) });
            }
            Call::Get(name) => {
                reply(self.describe(&name));
            }
            Call::Journal(name) => {
                let r = if self.rt.index_of(&name).is_none() {
                    self.no_instance(&name)
                } else {
                    let entries: Vec<Json> = self
                        .journals
                        .get(&name)
                        .map(|q| q.iter().filter_map(|e| serde_json::to_value(e).ok()).collect())
                        .unwrap_or_default();
                    Reply { status: 200, body: json!({"instance": name, "entries": entries}) }
                };
                reply(r);
            }
            Call::Audit => {
                let r = match self.store.as_ref().and_then(|s| s.dir()).map(ved_store::read_only) {
                    None => {
                        Reply { status: 200, body: json!({"entries": [], "note": "--ephemeral: nothing is recorded"}) }
                    }
                    Some(Ok(rec)) => {
                        let entries: Vec<Json> =
                            rec.audit.iter().filter_map(|e| serde_json::to_value(e).ok()).collect();
                        Reply { status: 200, body: json!({"entries": entries}) }
                    }
                    Some(Err(e)) => error(500, format!("cannot read the audit log: {e}")),
                };
                reply(r);
            }
            Call::Observe { instance, body, version } => {
                if self.rt.index_of(&instance).is_none() {
                    reply(self.no_instance(&instance));
                    return;
                }
                if body.is_empty() {
                    reply(error(400, "the observation is empty: send an object of field to value"));
                    return;
                }
                // `{"add": {"workers": -1}}` is a relative observation, unless the domain has a field `add`.
                let has_add_field = self
                    .rt
                    .index_of(&instance)
                    .is_some_and(|i| self.rt.domain_of(i).fields.iter().any(|(n, _)| n == "add"));
                let relative = match body.get("add") {
                    Some(Json::Object(add)) if !has_add_field => {
                        if body.len() != 1 || version.is_some() {
                            reply(error(
                                400,
                                "`add` stands alone: send relative changes in their own observation, without `source` and `version`",
                            ));
                            return;
                        }
                        Some(add.clone())
                    }
                    _ => None,
                };
                // The journal names where an observation came from: the versioned source, or `api`.
                let source = version.as_ref().map_or("api", |(s, _)| s.as_str()).to_string();
                let obs = match relative {
                    Some(add) => Observation {
                        instance: instance.clone(),
                        add: crate::input::entries(&add),
                        source,
                        ..Observation::default()
                    },
                    None => Observation {
                        instance: instance.clone(),
                        set: crate::input::entries(&body),
                        version,
                        source,
                        ..Observation::default()
                    },
                };
                if obs.set.is_empty() && obs.add.is_empty() {
                    reply(error(400, "`add` is empty: give at least one field and its delta"));
                    return;
                }
                let queued = self.queue_observation(obs);
                match queued {
                    Err(e) => reply(error(400, e.to_string())),
                    Ok(()) => {
                        let seq = self.run_and_persist();
                        let body = self.summary(&instance);
                        self.acks.push_back((seq, Ack::Reply(reply, Reply { status: 200, body })));
                        self.settle();
                    }
                }
            }
            Call::Page(q) => reply(self.page(&q)),
            Call::CreateMany { items, single, max_instances } => self.create_many(items, single, max_instances, reply),
            Call::ObserveMany(items) => self.observe_many(items, reply),
            Call::Delete(name) => self.delete(&name, reply),
            Call::Create(body) => match self.create(body) {
                Err(r) => {
                    reply(r);
                }
                Ok(name) => {
                    let seq = self.run_and_persist();
                    let body = self.summary(&name);
                    self.acks.push_back((seq, Ack::Reply(reply, Reply { status: 201, body })));
                    self.settle();
                }
            },
        }
    }

    fn no_instance(&self, name: &str) -> Reply {
        // A fleet has too many names to list: a few, and how to see the rest.
        let all = self.rt.instances();
        let names: Vec<String> = all.iter().take(NAMES_SHOWN).map(|i| format!("`{}`", i.name)).collect();
        let more = match all.len().saturating_sub(NAMES_SHOWN) {
            0 => String::new(),
            n => format!(" and {n} more (see GET /v1/instances)"),
        };
        error(404, format!("no instance named `{name}`; the instances are {}{more}", names.join(", ")))
    }

    fn summary(&self, name: &str) -> Json {
        self.summary_of(name.to_string())
    }

    /// [`Engine::summary`] of a name the caller gives up: built field by field, as `json!`
    /// would, without copying the name (a batch answers for thousands of instances).
    fn summary_of(&self, name: String) -> Json {
        let found = self.rt.instance(&name).map(|i| (i.status.as_str(), i.slice));
        let mut m = Map::new();
        m.insert("name".to_string(), Json::String(name));
        if let Some((status, slice)) = found {
            m.insert("status".to_string(), Json::from(status));
            m.insert("slice".to_string(), Json::from(slice));
        }
        Json::Object(m)
    }

    /// `GET /v1/instances/{name}`: state, each goal's truth, pending transitions.
    fn describe(&mut self, name: &str) -> Reply {
        let Some(idx) = self.rt.index_of(name) else {
            return self.no_instance(name);
        };
        let goals: Vec<Json> =
            self.rt.goal_truths(idx).into_iter().map(|(g, holds)| json!({"name": g, "holds": holds})).collect();
        let inst = &self.rt.instances()[idx];
        let dom = &self.program.domains[inst.domain];
        let state: Map<String, Json> =
            dom.fields.iter().zip(&inst.state).map(|((n, _), v)| (n.clone(), crate::json::to_json(v))).collect();
        let pending: Vec<Json> = inst
            .pending
            .iter()
            .map(|p| {
                let transition = dom.transitions.get(p.transition).map(|t| t.name.clone());
                match &p.phase {
                    Phase::InFlight { outstanding, .. } => json!({"transition": transition, "phase": "in_flight",
                        "attempt": p.attempt,
                        "outstanding": outstanding.iter().map(|o| o.to_string()).collect::<Vec<_>>()}),
                    Phase::Confirming { fields, until_ms } => json!({"transition": transition, "phase": "confirming",
                        "attempt": p.attempt, "until_ms": until_ms,
                        "fields": fields.iter().filter_map(|f| dom.fields.get(usize::from(*f)).map(|(n, _)| n.clone())).collect::<Vec<_>>()}),
                    Phase::Backoff { until_ms, faulted, error } => json!({"transition": transition, "phase": "backoff",
                        "attempt": p.attempt, "until_ms": until_ms, "faulted": faulted, "error": error}),
                }
            })
            .collect();
        Reply {
            status: 200,
            body: json!({"name": name, "domain": dom.name, "status": inst.status.as_str(),
                "reason": self.reasons.get(name), "slice": inst.slice,
                "state": state, "goals": goals, "pending": pending}),
        }
    }

    /// `POST /v1/instances`: `{"name": N, "domain": D, "state": {field: value}}`.
    fn create(&mut self, body: Map<String, Json>) -> Result<String, Reply> {
        let new = self.check_new(&body)?;
        let name = new.name.clone();
        let records = self.make_instances(vec![new]).map_err(|(_, r)| r)?;
        if let Some(store) = self.store.as_mut() {
            store.append(records, Vec::new());
        }
        Ok(name)
    }

    /// Checks one new instance against the program and the instances there are.
    fn check_new(&self, body: &Map<String, Json>) -> Result<NewInstance, Reply> {
        let new = parse_new(&self.program, body)?;
        if self.rt.index_of(&new.name).is_some() {
            return Err(error(409, format!("an instance named `{}` already exists", new.name)));
        }
        Ok(new)
    }

    /// Creates checked instances, all or none; returns the records that make them durable
    /// (each at slice 0, so that `ved replay` can start from its beginning). On an error,
    /// the index of the instance that failed and the reply.
    fn make_instances(&mut self, news: Vec<NewInstance>) -> Result<Vec<ved_store::Record>, (usize, Reply)> {
        let mut made: Vec<String> = Vec::with_capacity(news.len());
        for (i, new) in news.into_iter().enumerate() {
            if let Err(e) = self.rt.create_instance(&new.name, new.domain, new.overrides) {
                // Checked already, so this is the program's own initial state failing:
                // undo the others, so that a batch stays all or nothing.
                for name in &made {
                    self.rt.remove_instance(name);
                }
                return Err((i, error(400, e.to_string())));
            }
            made.push(new.name);
        }
        let mut records = Vec::new();
        for name in made {
            let Some(inst) = self.rt.instance(&name) else { continue };
            let dom = &self.program.domains[inst.domain];
            if self.store.is_some() {
                let snap = ved_store::SnapshotRecord::new(inst.snapshot(), &self.schemas[inst.domain]);
                records.push(ved_store::Record::snapshot(snap));
            }
            let domain = dom.name.clone();
            self.out.event(EngineEvent::Created { instance: name, domain });
        }
        Ok(records)
    }

    /// `POST /v1/instances` with one object or an array: every element is checked before
    /// anything is created; all are recorded in one batch and answered once it is durable.
    fn create_many(&mut self, items: Vec<Json>, single: bool, max_instances: usize, reply: Responder) {
        let indexed = |i: usize, r: Reply| if single { r } else { at_index(i, r) };
        if items.is_empty() {
            return reply(error(400, "the array is empty: send at least one instance to create"));
        }
        if items.len() > BATCH_MAX {
            return reply(error(
                413,
                format!(
                    "{} instances in one call; at most {BATCH_MAX} are accepted: send the rest in another call",
                    items.len()
                ),
            ));
        }
        let mut news = Vec::with_capacity(items.len());
        let mut names = std::collections::HashSet::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let Json::Object(body) = item else {
                return reply(indexed(i, error(400, format!("an instance is an object, not {}", kind(item)))));
            };
            let new = match self.check_new(body) {
                Ok(n) => n,
                Err(r) => return reply(indexed(i, r)),
            };
            if !names.insert(new.name.clone()) {
                return reply(indexed(i, error(409, format!("`{}` appears twice in this call", new.name))));
            }
            news.push(new);
        }
        let total = self.rt.instances().len() + news.len();
        if total > max_instances {
            return reply(error(
                422,
                format!(
                    "creating {} instance(s) would make {total}, past the limit of {max_instances}; delete instances first, or raise `[api] max_instances` in ved.toml",
                    news.len()
                ),
            ));
        }
        let order: Vec<String> = news.iter().map(|n| n.name.clone()).collect();
        let records = match self.make_instances(news) {
            Ok(r) => r,
            Err((i, r)) => return reply(indexed(i, r)),
        };
        if let Some(store) = self.store.as_mut() {
            store.append(records, Vec::new());
        }
        let seq = self.run_and_persist();
        let body = if single {
            self.summary(&order[0])
        } else {
            let list: Vec<Json> = order.iter().map(|n| self.summary(n)).collect();
            json!({"created": list.len(), "instances": list})
        };
        self.acks.push_back((seq, Ack::Reply(reply, Reply { status: 201, body })));
        self.settle();
    }

    /// One element of `POST /v1/observations`, checked against its instance's fields
    /// without queuing anything.
    /// Takes the element apart: what it reports moves into the observation (a batch holds
    /// thousands of them).
    fn check_observation(&self, item: Json) -> Result<Observation, Reply> {
        let mut m = match item {
            Json::Object(m) => m,
            other => return Err(error(400, format!("an observation is an object, not {}", kind(&other)))),
        };
        for key in m.keys() {
            if !matches!(key.as_str(), "instance" | "set" | "add" | "source" | "version") {
                return Err(error(
                    400,
                    format!("unknown key `{key}`; an observation has `instance`, `set` or `add`, and optionally `source` with `version`"),
                ));
            }
        }
        let instance = match m.remove("instance") {
            Some(Json::String(s)) => s,
            Some(_) => return Err(error(400, "`instance` must be a string")),
            None => return Err(error(400, "missing `instance`: which instance was observed?")),
        };
        let Some(idx) = self.rt.index_of(&instance) else {
            let r = self.no_instance(&instance);
            return Err(error(400, r.body["error"]["message"].as_str().unwrap_or_default()));
        };
        let dom = self.rt.domain_of(idx);
        let version = match (m.get("source"), m.get("version")) {
            (None, None) => None,
            (Some(Json::String(s)), Some(v)) if !s.is_empty() => match v.as_u64() {
                Some(v) => Some((s.clone(), v)),
                None => return Err(error(400, format!("`version` must be a non-negative integer, not {v}"))),
            },
            (Some(Json::String(_)), Some(_)) | (Some(_), Some(_)) => {
                return Err(error(400, "`source` must be a non-empty string"))
            }
            _ => return Err(error(400, "`source` and `version` go together")),
        };
        let slot_of = |field: &str| {
            dom.fields.iter().position(|(n, _)| n == field).ok_or_else(|| {
                let fields: Vec<String> = dom.fields.iter().map(|(n, _)| format!("`{n}`")).collect();
                error(400, format!("`{}` has no field `{field}`; its fields are {}", dom.name, fields.join(", ")))
            })
        };
        let source = version.as_ref().map_or("api", |(s, _)| s.as_str()).to_string();
        match (m.remove("set"), m.remove("add")) {
            (Some(Json::Object(set)), None) => {
                if set.is_empty() {
                    return Err(error(400, "`set` is empty: give at least one field and its value"));
                }
                for (field, value) in &set {
                    let slot = slot_of(field)?;
                    crate::json::from_json(value, &dom.fields[slot].1)
                        .map_err(|e| error(400, format!("field `{field}`: {e}")))?;
                }
                Ok(Observation { instance, set: set.into_iter().collect(), version, source, ..Observation::default() })
            }
            (None, Some(Json::Object(add))) => {
                if version.is_some() {
                    return Err(error(400, "`add` stands alone: relative changes carry no `source` and `version`"));
                }
                if add.is_empty() {
                    return Err(error(400, "`add` is empty: give at least one field and its delta"));
                }
                for (field, delta) in &add {
                    let slot = slot_of(field)?;
                    if dom.fields[slot].1 != ved_check::Type::Int {
                        return Err(error(
                            400,
                            format!("field `{field}` is {}: `add` changes `int` fields only", dom.fields[slot].1),
                        ));
                    }
                    if delta.as_i64().is_none() {
                        return Err(error(400, format!("field `{field}`: the delta must be an integer, not {delta}")));
                    }
                }
                Ok(Observation { instance, add: add.into_iter().collect(), source, ..Observation::default() })
            }
            (Some(_), Some(_)) => Err(error(400, "give `set` or `add`, not both: send them as two observations")),
            (Some(_), None) | (None, Some(_)) => Err(error(400, "`set` and `add` are objects of field to value")),
            (None, None) => Err(error(400, "missing `set` (field to value) or `add` (field to delta)")),
        }
    }

    /// `POST /v1/observations`: every element is checked first; all are applied in one
    /// engine round and answered once durable.
    fn observe_many(&mut self, items: Vec<Json>, reply: Responder) {
        if items.is_empty() {
            return reply(error(400, "the array is empty: send at least one observation"));
        }
        if items.len() > BATCH_MAX {
            return reply(error(
                413,
                format!(
                    "{} observations in one call; at most {BATCH_MAX} are accepted: send the rest in another call",
                    items.len()
                ),
            ));
        }
        let mut checked = Vec::with_capacity(items.len());
        let applied = items.len();
        for (i, item) in items.into_iter().enumerate() {
            match self.check_observation(item) {
                Ok(o) => checked.push(o),
                Err(r) => return reply(at_index(i, r)),
            }
        }
        // The instances the answer lists, each once, in the order first observed.
        let mut seen = rustc_hash::FxHashSet::default();
        let touched: Vec<String> =
            checked.iter().filter(|o| seen.insert(o.instance.as_str())).map(|o| o.instance.clone()).collect();
        drop(seen);
        for (i, obs) in checked.into_iter().enumerate() {
            if let Err(e) = self.queue_observation(obs) {
                // Only a full mailbox gets here, after the checks above; what was queued
                // before it is applied, so say so.
                self.run_and_persist();
                self.settle();
                return reply(at_index(
                    i,
                    error(503, format!("{e}; the elements before it were applied, retry from this one")),
                ));
            }
        }
        let seq = self.run_and_persist();
        let list: Vec<Json> = touched.into_iter().map(|n| self.summary_of(n)).collect();
        let body = json!({"applied": applied, "instances": list});
        self.acks.push_back((seq, Ack::Reply(reply, Reply { status: 200, body })));
        self.settle();
    }

    /// `DELETE /v1/instances/{name}`: forgets the instance here and records its removal,
    /// answered once that record is durable.
    fn delete(&mut self, name: &str, reply: Responder) {
        if self.rt.index_of(name).is_none() {
            return reply(self.no_instance(name));
        }
        if self.program.domains.iter().any(|d| d.name == name) {
            return reply(error(
                409,
                format!("`{name}` is the instance the program declares for its domain `{name}`, and every start creates it again; take the domain out of the program instead"),
            ));
        }
        self.drop_instance(name);
        let seq = match self.store.as_mut() {
            Some(store) => store.append(vec![ved_store::Record::Remove { instance: name.to_string() }], Vec::new()),
            None => 0,
        };
        self.acks.push_back((seq, Ack::Reply(reply, Reply { status: 200, body: json!({"deleted": name}) })));
        self.settle();
    }

    /// `GET /v1/instances?status=S&domain=D&limit=N&after=NAME`: names in ascending order.
    fn page(&self, q: &ListQuery) -> Reply {
        let limit = q.limit.unwrap_or(PAGE_DEFAULT);
        if limit == 0 || limit > PAGE_MAX {
            return error(400, format!("`limit` must be between 1 and {PAGE_MAX}, not {limit}"));
        }
        if let Some(s) = q.status.as_deref().filter(|s| !STATUSES.contains(s)) {
            return error(400, format!("no status `{s}`; the statuses are {}", STATUSES.join(", ")));
        }
        let domain = match q.domain.as_deref() {
            None => None,
            Some(d) => match self.program.domains.iter().position(|x| x.name == d) {
                Some(i) => Some(i),
                None => {
                    let domains: Vec<String> = self.program.domains.iter().map(|d| format!("`{}`", d.name)).collect();
                    return error(400, format!("no domain named `{d}`; the domains are {}", domains.join(", ")));
                }
            },
        };
        let mut page: Vec<&ved_runtime::Instance> = self
            .rt
            .instances()
            .iter()
            .filter(|i| q.after.as_deref().is_none_or(|a| &*i.name > a))
            .filter(|i| domain.is_none_or(|d| i.domain == d))
            .filter(|i| q.status.as_deref().is_none_or(|s| i.status.as_str() == s))
            .collect();
        // Only the page is sorted: a fleet's full sort on every request would cost more.
        let more = page.len() > limit;
        if more {
            page.select_nth_unstable_by(limit, |a, b| a.name.cmp(&b.name));
            page.truncate(limit);
        }
        page.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        let next = if more { page.last().map(|i| Json::String(i.name.to_string())) } else { None };
        let list: Vec<Json> = page
            .iter()
            .map(|i| {
                json!({"name": &*i.name, "domain": self.program.domains[i.domain].name,
                    "status": i.status.as_str(), "slice": i.slice})
            })
            .collect();
        Reply { status: 200, body: json!({"instances": list, "next": next}) }
    }
}

#[cfg(test)]
mod tests {
    use crate::{Builder, EngineEvent};
    use serde_json::json;

    /// The batch answer's per-instance summary is built field by field: it must be the
    /// object `json!` made, for an instance that exists and for one that does not.
    #[test]
    fn a_summary_built_field_by_field_is_the_json_of_before() {
        let src = "domain Pool {\n  state {\n    workers: int = 5\n  }\n  goal workers == 5\n}\n";
        let loaded = crate::load::check_texts(vec![("pool.ved".into(), src.into())]).unwrap();
        let ved = Builder::new(loaded).start(Vec::<EngineEvent>::new()).unwrap();
        let i = ved.rt.instance("Pool").unwrap();
        let before = json!({"name": "Pool", "status": i.status.as_str(), "slice": i.slice});
        assert_eq!(ved.summary_of("Pool".to_string()), before);
        assert_eq!(ved.summary("Pool"), before);
        assert_eq!(ved.summary_of("gone".to_string()), json!({"name": "gone"}));
        assert_eq!(serde_json::to_string(&ved.summary_of("Pool".to_string())).unwrap(), before.to_string());
    }
}
