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

/// What a client asks of the engine.
#[derive(Clone, Debug)]
pub enum Call {
    List,
    Get(String),
    Observe { instance: String, body: Map<String, Json>, version: Option<(String, u64)> },
    Create(Map<String, Json>),
    Journal(String),
    Audit,
    Health,
}

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

impl<S: Sink> Engine<S> {
    /// Answers one API call on the driver's thread.
    pub fn call(&mut self, call: Call, reply: Responder) {
        match call {
            Call::Health => {
                let r = match self.store_failure() {
                    Some(f) => error(503, format!("the store failed: {f}")),
                    None => Reply { status: 200, body: json!({"status": "ok"}) },
                };
                reply(r);
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
        let names: Vec<String> = self.rt.instances().iter().map(|i| format!("`{}`", i.name)).collect();
        error(404, format!("no instance named `{name}`; the instances are {}", names.join(", ")))
    }

    fn summary(&self, name: &str) -> Json {
        match self.rt.instance(name) {
            Some(i) => json!({"name": name, "status": i.status.as_str(), "slice": i.slice}),
            None => json!({"name": name}),
        }
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
        let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
        if name.is_empty() || name.len() > NAME_MAX || !name.chars().all(valid) {
            return Err(error(
                400,
                format!("`{name}` is not a valid instance name: use 1 to {NAME_MAX} letters, digits, `_`, `-` or `.`"),
            ));
        }
        if self.rt.index_of(&name).is_some() {
            return Err(error(409, format!("an instance named `{name}` already exists")));
        }
        let domains: Vec<String> = self.program.domains.iter().map(|d| format!("`{}`", d.name)).collect();
        let domain = match body.get("domain") {
            Some(Json::String(s)) => s.clone(),
            Some(_) => return Err(error(400, "`domain` must be a string")),
            None => return Err(error(400, format!("missing `domain`; the domains are {}", domains.join(", ")))),
        };
        let Some(d) = self.program.domains.iter().position(|x| x.name == domain) else {
            return Err(error(400, format!("no domain named `{domain}`; the domains are {}", domains.join(", "))));
        };
        let dom = &self.program.domains[d];
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
        self.rt.create_instance(&name, d, overrides).map_err(|e| error(400, e.to_string()))?;
        // Recorded at slice 0, so that `ved replay` can start from its beginning.
        if let (Some(store), Some(inst)) = (self.store.as_mut(), self.rt.instance(&name)) {
            let dom = &self.program.domains[inst.domain];
            let snap = ved_store::SnapshotRecord::from_snapshot(inst.snapshot(), &dom.name, &dom.fields);
            self.history.entry(name.clone()).or_default().push_back(snap.clone());
            store.append(vec![ved_store::Record::Snapshot(snap)], Vec::new());
        }
        self.out.event(EngineEvent::Created { instance: name.clone(), domain });
        Ok(name)
    }
}
