//! The daemon's HTTP API (`ved run` without `--stdin`).
//!
//! The server is an edge: axum handlers parse and authenticate a request, then
//! hand a [`Call`] to the driver's single thread through the same channel that
//! carries observations and results, and await its [`Reply`]. Every call is
//! therefore ordered with everything else the runtime sees, and nothing here
//! touches the runtime directly. A call that changes state is answered only once
//! the slices it caused are durable, exactly like an `ack` in `--stdin` mode.

use super::{obj, Ack, Driver, Input};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Map, Value as Json};
use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{mpsc, Arc};
use ved_runtime::instance::Phase;

/// Largest request body accepted; larger ones get 413 and change nothing.
pub const BODY_LIMIT: usize = 64 * 1024;
/// Longest instance name `POST /v1/instances` accepts.
const NAME_MAX: usize = 128;

/// The OpenAPI 3.1 description of every route, served at `/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("../../../../docs/openapi.json");

/// What a handler asks of the driver.
pub enum Call {
    List,
    Get(String),
    Observe { instance: String, body: Map<String, Json>, version: Option<(String, u64)> },
    Create(Map<String, Json>),
    Journal(String),
    Audit,
    Health,
}

/// The driver's answer: an HTTP status and a JSON body.
pub struct Reply {
    pub status: u16,
    pub body: Json,
}

pub type Responder = tokio::sync::oneshot::Sender<Reply>;

fn error(status: u16, message: impl Into<String>) -> Reply {
    Reply { status, body: json!({"error": {"status": status, "message": message.into()}}) }
}

impl Reply {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, axum::Json(self.body)).into_response()
    }
}

struct App {
    inputs: mpsc::SyncSender<Input>,
    token: Option<String>,
}

impl App {
    async fn call(&self, call: Call) -> Response {
        let (tx, rx) = tokio::sync::oneshot::channel();
        match self.inputs.try_send(Input::Api(call, tx)) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(_)) => {
                let mut r =
                    error(503, format!("ved is busy: {} inputs are queued; retry shortly", super::INPUT_CAPACITY))
                        .into_response();
                r.headers_mut().insert("retry-after", axum::http::HeaderValue::from_static("1"));
                return r;
            }
            Err(mpsc::TrySendError::Disconnected(_)) => return error(503, "ved is shutting down").into_response(),
        }
        match rx.await {
            Ok(reply) => reply.into_response(),
            Err(_) => error(503, "ved is shutting down; the call may not have been applied").into_response(),
        }
    }

    /// Mutating calls need `Authorization: Bearer TOKEN`. Without a configured token
    /// they are refused outright: an open write API is not a safe default.
    fn authorize(&self, headers: &HeaderMap) -> Result<(), Reply> {
        let Some(token) = &self.token else {
            return Err(error(
                403,
                "writes are disabled: no API token is configured; set VED_API_TOKEN or `[api] token` in ved.toml",
            ));
        };
        let given = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        match given {
            Some(g) if constant_time_eq(g.as_bytes(), token.as_bytes()) => Ok(()),
            Some(_) => Err(error(401, "the bearer token is not valid")),
            None => Err(error(401, "this call changes state and needs `Authorization: Bearer TOKEN`")),
        }
    }
}

/// Compares without an early exit, so timing does not reveal a token's prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Reads a body as a JSON object, turning every way it can be wrong into a JSON error.
fn json_object(body: Result<Bytes, BytesRejection>) -> Result<Map<String, Json>, Reply> {
    let bytes = body.map_err(|r| {
        let status = r.status().as_u16();
        let message = if status == 413 {
            format!("the request body is larger than the limit of {BODY_LIMIT} bytes")
        } else {
            r.body_text()
        };
        error(status, message)
    })?;
    let value: Json =
        serde_json::from_slice(&bytes).map_err(|e| error(400, format!("the body is not valid JSON: {e}")))?;
    match value {
        Json::Object(m) => Ok(m),
        other => Err(error(400, format!("the body must be a JSON object, not {}", kind(&other)))),
    }
}

fn kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

type Shared = State<Arc<App>>;

async fn healthz(State(app): Shared) -> Response {
    app.call(Call::Health).await
}

async fn list(State(app): Shared) -> Response {
    app.call(Call::List).await
}

async fn create(State(app): Shared, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    if let Err(r) = app.authorize(&headers) {
        return r.into_response();
    }
    match json_object(body) {
        Ok(m) => app.call(Call::Create(m)).await,
        Err(r) => r.into_response(),
    }
}

async fn get_instance(State(app): Shared, UrlPath(name): UrlPath<String>) -> Response {
    app.call(Call::Get(name)).await
}

async fn observe(
    State(app): Shared,
    UrlPath(name): UrlPath<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if let Err(r) = app.authorize(&headers) {
        return r.into_response();
    }
    let version = match (q.get("source"), q.get("version")) {
        (None, None) => None,
        (Some(s), Some(v)) => match v.parse::<u64>() {
            Ok(v) => Some((s.clone(), v)),
            Err(_) => {
                return error(400, format!("`version` must be a non-negative integer, not `{v}`")).into_response()
            }
        },
        _ => return error(400, "the query parameters `source` and `version` go together").into_response(),
    };
    match json_object(body) {
        Ok(m) => app.call(Call::Observe { instance: name, body: m, version }).await,
        Err(r) => r.into_response(),
    }
}

async fn journal(State(app): Shared, UrlPath(name): UrlPath<String>) -> Response {
    app.call(Call::Journal(name)).await
}

async fn audit(State(app): Shared) -> Response {
    app.call(Call::Audit).await
}

async fn openapi() -> Response {
    ([("content-type", "application/json")], OPENAPI).into_response()
}

async fn not_found() -> Response {
    error(404, "no such route; see /v1/openapi.json for the API").into_response()
}

async fn not_allowed() -> Response {
    error(405, "this route does not take that method; see /v1/openapi.json").into_response()
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/instances", get(list).post(create))
        .route("/v1/instances/{name}", get(get_instance))
        .route("/v1/instances/{name}/observations", axum::routing::post(observe))
        .route("/v1/instances/{name}/journal", get(journal))
        .route("/v1/audit", get(audit))
        .fallback(not_found)
        .method_not_allowed_fallback(not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(app)
}

/// Binds `listen` now, so that a busy port is reported before anything starts, and
/// serves on a thread of its own until SIGTERM or SIGINT, which it turns into
/// [`Input::Shutdown`].
pub fn serve(
    listen: SocketAddr,
    token: Option<String>,
    inputs: mpsc::SyncSender<Input>,
) -> Result<(SocketAddr, std::thread::JoinHandle<()>), String> {
    let std_listener = std::net::TcpListener::bind(listen).map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let local = std_listener.local_addr().map_err(|e| e.to_string())?;
    std_listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("ved-api")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the HTTP server: {e}"))?;
    let app = Arc::new(App { inputs: inputs.clone(), token });
    let handle = std::thread::Builder::new()
        .name("ved-api".into())
        .spawn(move || {
            rt.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(std_listener) else {
                    let _ = inputs.send(Input::Shutdown);
                    return;
                };
                let shutdown_inputs = inputs.clone();
                let shutdown = async move {
                    wait_for_signal().await;
                    let _ = shutdown_inputs.send(Input::Shutdown);
                };
                let _ = axum::serve(listener, router(app)).with_graceful_shutdown(shutdown).await;
            });
        })
        .map_err(|e| e.to_string())?;
    Ok((local, handle))
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        // Without handlers the default action (exit) applies; nothing better to do.
        _ => std::future::pending::<()>().await,
    }
}

impl<W: Write> Driver<W> {
    /// Answers one API call on the driver's thread.
    pub(super) fn handle_api(&mut self, call: Call, reply: Responder) {
        match call {
            Call::Health => {
                let r = match self.store_failure() {
                    Some(f) => error(503, format!("the store failed: {f}")),
                    None => Reply { status: 200, body: json!({"status": "ok"}) },
                };
                let _ = reply.send(r);
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
                let _ = reply.send(Reply { status: 200, body: json!({"instances": list}) });
            }
            Call::Get(name) => {
                let _ = reply.send(self.describe(&name));
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
                let _ = reply.send(r);
            }
            Call::Audit => {
                let r = match self.store.as_ref().map(|s| ved_store::read_only(s.dir())) {
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
                let _ = reply.send(r);
            }
            Call::Observe { instance, body, version } => {
                if self.rt.index_of(&instance).is_none() {
                    let _ = reply.send(self.no_instance(&instance));
                    return;
                }
                if body.is_empty() {
                    let _ = reply.send(error(400, "the observation is empty: send an object of field to value"));
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
                            let _ = reply.send(error(
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
                let queued = match &relative {
                    Some(add) => self.observe_add(&instance, add, &source, None),
                    None => {
                        self.observe(&instance, &body, version.as_ref().map(|(s, v)| (s.as_str(), *v)), &source, None)
                    }
                };
                match queued {
                    Err((_, message)) => {
                        let _ = reply.send(error(400, message));
                    }
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
                    let _ = reply.send(r);
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
            dom.fields.iter().zip(&inst.state).map(|((n, _), v)| (n.clone(), super::to_json(v))).collect();
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
                    let v = super::from_json(value, &dom.fields[slot].1)
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
        self.out.emit(obj(json!({"event": "created", "instance": name, "domain": domain})));
        Ok(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_input_channel_answers_503_with_retry_after_instead_of_waiting() {
        let (inputs, queued) = mpsc::sync_channel(1);
        inputs.try_send(Input::Eof).unwrap();
        let app = App { inputs, token: None };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let r = rt.block_on(app.call(Call::List));
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers().get("retry-after").map(|v| v.to_str().unwrap()), Some("1"));
        // The call was not queued: only the input that filled the channel is there.
        assert!(matches!(queued.try_recv(), Ok(Input::Eof)));
        assert!(queued.try_recv().is_err());
    }
}
