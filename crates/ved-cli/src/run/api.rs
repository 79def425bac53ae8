//! The daemon's HTTP API (`ved run` without `--stdin`).
//!
//! The server is an edge: axum handlers parse and authenticate a request, then
//! hand a [`Call`] to the driver's single thread through the same channel that
//! carries observations and results, and await its [`Reply`]. Every call is
//! therefore ordered with everything else the runtime sees, and nothing here
//! touches the runtime directly. A call that changes state is answered only once
//! the slices it caused are durable, exactly like an `ack` in `--stdin` mode.

use super::Input;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{Map, Value as Json};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{mpsc, Arc};
use subtle::ConstantTimeEq;
pub use ved_engine::calls::{error, Call, ListQuery, Reply};

/// Largest request body accepted; larger ones get 413 and change nothing.
pub const BODY_LIMIT: usize = 64 * 1024;
/// Largest body of the routes that take a batch (`POST /v1/instances`, `POST
/// /v1/observations`): room for [`ved_engine::calls::BATCH_MAX`] elements of a few hundred
/// bytes each.
pub const BATCH_BODY_LIMIT: usize = 16 * 1024 * 1024;
/// The OpenAPI 3.1 description of every route, served at `/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("../../../../docs/openapi.json");
/// The live page served at `/`: plain HTML and script, built into the binary (nothing for
/// a user to build), reading this same API and its event stream.
pub const PAGE: &str = include_str!("page.html");

pub type Responder = tokio::sync::oneshot::Sender<Reply>;

fn into_response(r: Reply) -> Response {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(r.body)).into_response()
}

/// Where an instance's calls go, in cluster mode.
pub enum Location {
    /// This node owns it: its engine answers.
    Here,
    /// Another node owns it: the call is forwarded to this base URL.
    Node(String),
    /// No node owns it right now (a failover in progress).
    Nobody,
}

/// Cluster mode's routing. The daemon has none: its engine answers everything.
pub trait Routes: Send + Sync {
    fn locate(&self, instance: &str) -> Location;
    /// Answers a read from the shared state (every instance, or one nobody answers for).
    fn read(&self, call: &Call) -> Option<Reply>;
    /// Creates instances in the shared state (one object, or an array).
    fn create(&self, _items: Vec<Json>, _single: bool) -> Option<Reply> {
        None
    }
    /// Deletes an instance from the shared state.
    fn delete(&self, _name: &str) -> Option<Reply> {
        None
    }
}

pub type SharedRoutes = Arc<std::sync::Mutex<Option<Arc<dyn Routes>>>>;

/// Marks a forwarded call, so it is never forwarded twice (ownership may have moved again).
const FORWARDED: &str = "ved-forwarded";

/// A call as it arrived, for forwarding to the node that owns its instance.
struct Original {
    post: bool,
    path: String,
    auth: Option<String>,
    body: Bytes,
    forwarded: bool,
}

impl Original {
    fn of(post: bool, uri: &Uri, headers: &HeaderMap, body: Bytes) -> Original {
        Original {
            post,
            path: uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| uri.path().to_string()),
            auth: headers.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_string),
            body,
            forwarded: headers.contains_key(FORWARDED),
        }
    }
}

/// Sends the call on to `base` (another node's API) and brings its answer back as is.
fn forward(base: &str, o: &Original) -> Result<Reply, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(std::time::Duration::from_secs(5)))
        .http_status_as_error(false)
        .build()
        .into();
    let url = format!("{}{}", base.trim_end_matches('/'), o.path);
    let resp = if o.post {
        let mut r = agent.post(&url).header("content-type", "application/json").header(FORWARDED, "1");
        if let Some(a) = &o.auth {
            r = r.header("authorization", a);
        }
        r.send(&o.body[..])
    } else {
        let mut r = agent.get(&url).header(FORWARDED, "1");
        if let Some(a) = &o.auth {
            r = r.header("authorization", a);
        }
        r.call()
    };
    let mut resp = resp.map_err(|e| format!("{url}: {e}"))?;
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().map_err(|e| format!("{url}: {e}"))?;
    let body = serde_json::from_str(&text).map_err(|e| format!("{url} answered something other than JSON: {e}"))?;
    Ok(Reply { status, body })
}

fn retry_later(message: String) -> Response {
    let mut r = into_response(error(503, message));
    r.headers_mut().insert("retry-after", axum::http::HeaderValue::from_static("1"));
    r
}

/// A call the cluster's shared state answers (etcd, blocking): off the async threads.
async fn shared(f: impl FnOnce() -> Option<Reply> + Send + 'static) -> Response {
    match tokio::task::spawn_blocking(f).await {
        Ok(Some(r)) => into_response(r),
        _ => into_response(error(500, "the shared state could not be changed")),
    }
}

struct App {
    inputs: mpsc::SyncSender<Input>,
    tokens: Tokens,
    routes: SharedRoutes,
    /// `[api] max_instances`: how many instances `POST /v1/instances` may make in all.
    max_instances: usize,
    /// The store's audit log, paged off the driver's thread (none with `--ephemeral`).
    audit: Option<Arc<AuditLog>>,
    /// The printed events, for `GET /v1/events`.
    events: Option<Arc<super::events::EventHub>>,
}

/// The audit log as `GET /v1/audit` reads it. Pages are read one at a time: on a machine of two
/// cores, readers each decoding a page at once could take every core from the driver and slow
/// writes, so extra readers wait their turn instead (the page costs milliseconds).
struct AuditLog {
    pages: ved_store::AuditPages,
    one_at_a_time: tokio::sync::Semaphore,
}

impl App {
    fn routes(&self) -> Option<Arc<dyn Routes>> {
        self.routes.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A call that concerns every instance (`instance` None) or one: answered here, by the
    /// owner (forwarded), or from the shared state.
    async fn route(&self, instance: Option<&str>, call: Call, o: Original) -> Response {
        let Some(routes) = self.routes() else { return self.call(call).await };
        let write = matches!(call, Call::Observe { .. } | Call::Create(_));
        let location = match instance {
            None => Location::Nobody,
            Some(name) => routes.locate(name),
        };
        let read = move |routes: Arc<dyn Routes>, call: Call| async move {
            match tokio::task::spawn_blocking(move || routes.read(&call)).await {
                Ok(Some(r)) => into_response(r),
                _ => into_response(error(500, "the shared state could not be read")),
            }
        };
        match location {
            Location::Here => self.call(call).await,
            Location::Node(url) if !o.forwarded => {
                let answer = tokio::task::spawn_blocking(move || forward(&url, &o)).await;
                match answer {
                    Ok(Ok(r)) => into_response(r),
                    Ok(Err(e)) if write => retry_later(format!("the instance's owner did not answer: {e}")),
                    _ if write => retry_later("the instance's owner did not answer".into()),
                    _ => read(routes, call).await,
                }
            }
            _ if write => retry_later(format!(
                "no node owns `{}` right now (a failover in progress?); retry shortly",
                instance.unwrap_or_default()
            )),
            _ => read(routes, call).await,
        }
    }

    /// A call to the engine, its reply as a value (`None`: it could not be queued or answered).
    async fn call_reply(&self, call: Call) -> Option<Reply> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.inputs.try_send(Input::Api(call, tx)).ok()?;
        rx.await.ok()
    }

    async fn call(&self, call: Call) -> Response {
        let (tx, rx) = tokio::sync::oneshot::channel();
        match self.inputs.try_send(Input::Api(call, tx)) {
            Ok(()) => {}
            Err(mpsc::TrySendError::Full(_)) => {
                let mut r = into_response(error(
                    503,
                    format!("ved is busy: {} inputs are queued; retry shortly", super::INPUT_CAPACITY),
                ));
                r.headers_mut().insert("retry-after", axum::http::HeaderValue::from_static("1"));
                return r;
            }
            Err(mpsc::TrySendError::Disconnected(_)) => return into_response(error(503, "ved is shutting down")),
        }
        match rx.await {
            Ok(reply) => into_response(reply),
            Err(_) => into_response(error(503, "ved is shutting down; the call may not have been applied")),
        }
    }

    /// Mutating calls need `Authorization: Bearer TOKEN`. Without a configured token
    /// they are refused outright: an open write API is not a safe default.
    fn authorize(&self, headers: &HeaderMap) -> Result<(), Reply> {
        let Some(token) = &self.tokens.write else {
            return Err(error(
                403,
                "writes are disabled: no API token is configured; set VED_API_TOKEN or `[api] token` in ved.toml",
            ));
        };
        match bearer(headers)? {
            Some(given) if token.matches(given) => Ok(()),
            Some(_) => Err(error(401, "the bearer token is not valid")),
            None => Err(error(401, "this call changes state and needs `Authorization: Bearer TOKEN`")),
        }
    }

    /// Reads are open unless a read token is configured; then they need it, or the write token.
    fn authorize_read(&self, headers: &HeaderMap) -> Result<(), Reply> {
        let given = bearer(headers)?;
        let Some(read) = &self.tokens.read else { return Ok(()) };
        match given {
            Some(g) if read.matches(g) || self.tokens.write.as_ref().is_some_and(|w| w.matches(g)) => Ok(()),
            Some(_) => Err(error(401, "the bearer token is not valid")),
            None => Err(error(401, "reads need `Authorization: Bearer TOKEN` (the read token or the write token)")),
        }
    }
}

/// A configured bearer token, kept as its SHA-256 digest. Requests are compared digest to
/// digest in constant time: both sides are 32 bytes whatever the token, so neither the
/// comparison's time nor an early length check tells anything about the token.
#[derive(Clone)]
pub struct Token([u8; 32]);

impl Token {
    pub fn new(token: &str) -> Token {
        Token(Sha256::digest(token.as_bytes()).into())
    }

    fn matches(&self, given: &str) -> bool {
        let d: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        bool::from(d.ct_eq(&self.0))
    }
}

/// The tokens the API checks: `write` for calls that change state, `read` (optional) for the rest.
#[derive(Clone, Default)]
pub struct Tokens {
    pub write: Option<Token>,
    pub read: Option<Token>,
}

impl Tokens {
    /// From `VED_API_TOKEN` and `VED_API_READ_TOKEN`, else `[api] token` and `read_token`.
    pub fn configured(config: Option<&ved_adapters::config::Config>) -> Tokens {
        let pick = |var: &str, from_file: Option<&String>| {
            std::env::var(var).ok().filter(|t| !t.is_empty()).or_else(|| from_file.cloned()).map(|t| Token::new(&t))
        };
        Tokens {
            write: pick("VED_API_TOKEN", config.and_then(|c| c.api.token.as_ref())),
            read: pick("VED_API_READ_TOKEN", config.and_then(|c| c.api.read_token.as_ref())),
        }
    }
}

/// The credentials of a request: `Authorization: Bearer TOKEN`, the scheme in any case
/// (RFC 9110 makes it case-insensitive). Two `Authorization` headers are refused: a proxy
/// and Ved could each pick a different one, so which request was authorized is unclear.
fn bearer(headers: &HeaderMap) -> Result<Option<&str>, Reply> {
    let mut all = headers.get_all("authorization").iter();
    let Some(value) = all.next() else { return Ok(None) };
    if all.next().is_some() {
        return Err(error(400, "the request has more than one `Authorization` header; send exactly one"));
    }
    let value = value.to_str().map_err(|_| error(400, "the `Authorization` header is not printable ASCII"))?;
    match value.trim().split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => {
            Ok(Some(token.trim()))
        }
        _ => Err(error(401, "the `Authorization` header must be `Bearer TOKEN`")),
    }
}

/// Reads a body as a JSON object, turning every way it can be wrong into a JSON error.
fn json_object(body: Result<Bytes, BytesRejection>) -> Result<Map<String, Json>, Reply> {
    match json_value(body, BODY_LIMIT)? {
        Json::Object(m) => Ok(m),
        other => Err(error(400, format!("the body must be a JSON object, not {}", kind(&other)))),
    }
}

/// Reads a body as JSON; `limit` is the route's body limit, for the message.
fn json_value(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Json, Reply> {
    let bytes = body.map_err(|r| {
        let status = r.status().as_u16();
        let message = if status == 413 {
            format!("the request body is larger than the limit of {limit} bytes; send a large batch in several calls")
        } else {
            r.body_text()
        };
        error(status, message)
    })?;
    ved_engine::strict_json::parse(&bytes).map_err(|e| error(400, format!("the body is not valid JSON: {e}")))
}

use ved_engine::calls::kind;

type Shared = State<Arc<App>>;

async fn healthz(State(app): Shared) -> Response {
    match app.routes() {
        // A node is healthy when it may act (its lease is alive).
        Some(routes) => match tokio::task::spawn_blocking(move || routes.read(&Call::Health)).await {
            Ok(Some(r)) => into_response(r),
            _ => into_response(error(500, "health unknown")),
        },
        None => app.call(Call::Health).await,
    }
}

/// `GET /v1/instances`'s query: filters and a page.
fn list_query(q: &HashMap<String, String>) -> Result<ListQuery, Reply> {
    use ved_engine::calls::PAGE_MAX;
    let mut out = ListQuery::default();
    for (key, value) in q {
        match key.as_str() {
            "status" => out.status = Some(value.clone()),
            "domain" => out.domain = Some(value.clone()),
            "after" => out.after = Some(value.clone()),
            "limit" => match value.parse() {
                Ok(n) => out.limit = Some(n),
                Err(_) => {
                    let m = format!("`limit` must be a positive integer (at most {PAGE_MAX}), not `{value}`");
                    return Err(error(400, m));
                }
            },
            _ => {
                let m = format!(
                    "unknown query parameter `{key}`; GET /v1/instances takes `status`, `domain`, `limit` and `after`"
                );
                return Err(error(400, m));
            }
        }
    }
    Ok(out)
}

async fn list(State(app): Shared, Query(q): Query<HashMap<String, String>>, uri: Uri, headers: HeaderMap) -> Response {
    if let Err(r) = app.authorize_read(&headers) {
        return into_response(r);
    }
    match list_query(&q) {
        // A cluster's list is etcd's, the same on every node.
        Ok(q) if app.routes().is_some() => {
            app.route(None, Call::Page(q), Original::of(false, &uri, &headers, Bytes::new())).await
        }
        Ok(q) => app.call(Call::Page(q)).await,
        Err(r) => into_response(r),
    }
}

async fn create(State(app): Shared, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    if let Err(r) = app.authorize(&headers) {
        return into_response(r);
    }
    let (items, single) = match json_value(body, BATCH_BODY_LIMIT) {
        Ok(Json::Array(items)) => (items, false),
        Ok(one @ Json::Object(_)) => (vec![one], true),
        Ok(other) => {
            return into_response(error(
                400,
                format!("the body must be an instance (a JSON object) or an array of them, not {}", kind(&other)),
            ))
        }
        Err(r) => return into_response(r),
    };
    if let Some(routes) = app.routes() {
        return shared(move || routes.create(items, single)).await;
    }
    app.call(Call::CreateMany { items, single, max_instances: app.max_instances }).await
}

async fn delete_instance(State(app): Shared, UrlPath(name): UrlPath<String>, headers: HeaderMap) -> Response {
    if let Err(r) = app.authorize(&headers) {
        return into_response(r);
    }
    if let Some(routes) = app.routes() {
        return shared(move || routes.delete(&name)).await;
    }
    app.call(Call::Delete(name)).await
}

async fn observe_many(State(app): Shared, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    if let Err(r) = app.authorize(&headers) {
        return into_response(r);
    }
    let items = match json_value(body, BATCH_BODY_LIMIT) {
        Ok(Json::Array(items)) => items,
        Ok(other) => {
            return into_response(error(
                400,
                format!(
                    "the body must be an array of observations like {{\"instance\": \"web-1\", \"set\": {{\"workers\": 3}}}}, not {}",
                    kind(&other)
                ),
            ))
        }
        Err(r) => return into_response(r),
    };
    match app.routes() {
        Some(routes) => observe_across(&app, routes, items, &headers).await,
        None => app.call(Call::ObserveMany(items)).await,
    }
}

/// `POST /v1/observations` on a cluster node: the batch is split by owner, each part
/// applied by its owner (here, or forwarded) as one batch; the answer says what each part
/// did. Each part is all or nothing; parts are independent of each other.
async fn observe_across(app: &App, routes: Arc<dyn Routes>, items: Vec<Json>, headers: &HeaderMap) -> Response {
    let mut parts: Vec<(Location, Vec<Json>)> = Vec::new();
    for item in items {
        let name = item.get("instance").and_then(Json::as_str).unwrap_or_default().to_string();
        let at = routes.locate(&name);
        let key = |l: &Location| match l {
            Location::Here => "here".to_string(),
            Location::Node(u) => u.clone(),
            Location::Nobody => format!("nobody:{name}"),
        };
        match parts.iter_mut().find(|(l, _)| key(l) == key(&at)) {
            Some((_, v)) => v.push(item),
            None => parts.push((at, vec![item])),
        }
    }
    let forwarded = headers.contains_key(FORWARDED);
    // One owner: its answer is the answer, as from a daemon.
    let single_part = parts.len() == 1;
    let mut answers = Vec::new();
    let mut worst = 200;
    for (at, part) in parts {
        let count = part.len();
        let reply = match at {
            Location::Here => match app.call_reply(Call::ObserveMany(part)).await {
                Some(r) => r,
                None => error(503, "ved is busy or shutting down; retry shortly"),
            },
            Location::Node(url) if !forwarded => {
                let body = Bytes::from(serde_json::to_vec(&Json::Array(part)).unwrap_or_default());
                let o = Original {
                    post: true,
                    path: "/v1/observations".into(),
                    auth: headers.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_string),
                    body,
                    forwarded: false,
                };
                match tokio::task::spawn_blocking(move || forward(&url, &o)).await {
                    Ok(Ok(r)) => r,
                    _ => error(503, "the instances' owner did not answer; retry shortly"),
                }
            }
            _ => error(503, "no node owns these instances right now (a failover in progress?); retry shortly"),
        };
        worst = worst.max(reply.status);
        if answers.is_empty() && single_part {
            return into_response(reply);
        }
        answers.push(serde_json::json!({"observations": count, "status": reply.status, "answer": reply.body}));
    }
    let status = if worst == 200 { 200 } else { 207 };
    into_response(Reply { status, body: serde_json::json!({"parts": answers}) })
}

async fn get_instance(State(app): Shared, UrlPath(name): UrlPath<String>, uri: Uri, headers: HeaderMap) -> Response {
    if let Err(r) = app.authorize_read(&headers) {
        return into_response(r);
    }
    let o = Original::of(false, &uri, &headers, Bytes::new());
    app.route(Some(&name.clone()), Call::Get(name), o).await
}

async fn observe(
    State(app): Shared,
    UrlPath(name): UrlPath<String>,
    Query(q): Query<HashMap<String, String>>,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if let Err(r) = app.authorize(&headers) {
        return into_response(r);
    }
    let version = match (q.get("source"), q.get("version")) {
        (None, None) => None,
        (Some(s), Some(v)) => match v.parse::<u64>() {
            Ok(v) => Some((s.clone(), v)),
            Err(_) => return into_response(error(400, format!("`version` must be a non-negative integer, not `{v}`"))),
        },
        _ => return into_response(error(400, "the query parameters `source` and `version` go together")),
    };
    let raw = body.as_ref().map(|b| b.clone()).unwrap_or_default();
    match json_object(body) {
        Ok(m) => {
            let o = Original::of(true, &uri, &headers, raw);
            app.route(Some(&name.clone()), Call::Observe { instance: name, body: m, version }, o).await
        }
        Err(r) => into_response(r),
    }
}

async fn journal(State(app): Shared, UrlPath(name): UrlPath<String>, uri: Uri, headers: HeaderMap) -> Response {
    if let Err(r) = app.authorize_read(&headers) {
        return into_response(r);
    }
    let o = Original::of(false, &uri, &headers, Bytes::new());
    app.route(Some(&name.clone()), Call::Journal(name), o).await
}

/// Entries `GET /v1/audit` returns when the query names no `limit`, and at most.
pub const AUDIT_PAGE_DEFAULT: usize = 100;
pub const AUDIT_PAGE_MAX: usize = 1000;

/// `GET /v1/audit?after=SEQ&limit=N`: the entries after `SEQ`, oldest first, and the `after`
/// of the next page. Read from the store's files on a blocking thread, never by the driver,
/// so that a reader paging a long history does not slow a single write.
async fn audit(State(app): Shared, Query(q): Query<HashMap<String, String>>, uri: Uri, headers: HeaderMap) -> Response {
    if let Err(r) = app.authorize_read(&headers) {
        return into_response(r);
    }
    let (after, limit) = match audit_query(&q) {
        Ok(p) => p,
        Err(r) => return into_response(r),
    };
    let Some(pages) = app.audit.clone() else {
        // A cluster's audit log is in etcd; `--ephemeral` keeps none.
        let full = app.route(None, Call::Audit, Original::of(false, &uri, &headers, Bytes::new())).await;
        return full;
    };
    let log = pages.clone();
    let Ok(_turn) = log.one_at_a_time.acquire().await else {
        return into_response(error(503, "ved is shutting down"));
    };
    let read = tokio::task::spawn_blocking(move || pages.pages.page(after, limit)).await;
    match read {
        Ok(Ok(page)) => into_response(Reply {
            status: 200,
            body: serde_json::json!({"entries": page.entries, "committed": page.committed, "next": page.next}),
        }),
        Ok(Err(e)) => into_response(error(500, format!("cannot read the audit log: {e}"))),
        Err(_) => into_response(error(500, "cannot read the audit log")),
    }
}

fn audit_query(q: &HashMap<String, String>) -> Result<(u64, usize), Reply> {
    let mut after = 0;
    let mut limit = AUDIT_PAGE_DEFAULT;
    for (key, value) in q {
        match key.as_str() {
            "after" => {
                after = value.parse().map_err(|_| {
                    error(400, format!("`after` must be an entry's sequence number (0 for the start), not `{value}`"))
                })?
            }
            "limit" => {
                limit = value.parse().ok().filter(|n| (1..=AUDIT_PAGE_MAX).contains(n)).ok_or_else(|| {
                    error(400, format!("`limit` must be between 1 and {AUDIT_PAGE_MAX}, not `{value}`"))
                })?
            }
            _ => {
                return Err(error(
                    400,
                    format!("unknown query parameter `{key}`; GET /v1/audit takes `after` and `limit`"),
                ))
            }
        }
    }
    Ok((after, limit))
}

/// `GET /metrics`: this process's engine (a cluster node reports its own), in the
/// Prometheus text format. A read: open unless a read token is configured.
async fn metrics(State(app): Shared, headers: HeaderMap) -> Response {
    if let Err(r) = app.authorize_read(&headers) {
        return into_response(r);
    }
    match app.call_reply(Call::Metrics).await {
        Some(Reply { status: 200, body: Json::String(text) }) => {
            ([(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
                .into_response()
        }
        Some(r) => into_response(r),
        None => into_response(error(503, "ved is busy or shutting down; scrape again")),
    }
}

/// `GET /v1/events?instance=NAME`: the events `ved run` prints, as Server-Sent Events,
/// each with its `seq` as the SSE id and its JSON line as the data. A client that
/// reconnects sends `Last-Event-ID` (or `?after=SEQ`) and first gets the events it
/// missed, from the last 10,000; if some are no longer kept, a `gap` event says from
/// which `seq` on they are. A client that falls far behind the live stream is
/// disconnected, and resumes the same way.
async fn events(State(app): Shared, Query(q): Query<HashMap<String, String>>, headers: HeaderMap) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use futures_util::StreamExt;
    if let Err(r) = app.authorize_read(&headers) {
        return into_response(r);
    }
    let Some(hub) = app.events.clone() else {
        return into_response(error(404, "this server has no event stream"));
    };
    let last = headers.get("last-event-id").and_then(|v| v.to_str().ok()).or(q.get("after").map(String::as_str));
    let after = match last.map(|s| s.trim().parse::<u64>()) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => return into_response(error(400, "`Last-Event-ID` (or `after`) must be an event's `seq`")),
    };
    let instance = q.get("instance").cloned();
    let sub = hub.subscribe(after);
    let wanted = move |p: &super::events::Published| instance.is_none() || p.instance == instance;
    let as_event = |p: &super::events::Published| Event::default().id(p.seq.to_string()).data(p.line.as_str());
    let gap = sub.gap.map(|first| {
        Event::default().event("gap").data(json_line(
            &serde_json::json!({"first_kept": first, "message": "events before this seq are no longer kept"}),
        ))
    });
    let wanted_live = wanted.clone();
    let backlog: Vec<Event> = sub.backlog.iter().filter(|p| wanted(p)).map(|p| as_event(p)).collect();
    let live = match sub.live {
        Some(rx) => tokio_stream::wrappers::BroadcastStream::new(rx)
            // Lagging behind ends the stream; the client resumes from its last id.
            .take_while(|r| std::future::ready(r.is_ok()))
            .filter_map(move |r| std::future::ready(r.ok().filter(|p| wanted_live(p)).map(|p| as_event(&p))))
            .boxed(),
        None => futures_util::stream::empty().boxed(),
    };
    let stream =
        futures_util::stream::iter(gap.into_iter().chain(backlog)).chain(live).map(Ok::<_, std::convert::Infallible>);
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}

fn json_line(v: &Json) -> String {
    v.to_string()
}

/// `GET /`: the live page. It is static; what it shows it reads from the API with the
/// browser's credentials, so it needs no token of its own while reads are open.
async fn page() -> Response {
    axum::response::Html(PAGE).into_response()
}

async fn openapi() -> Response {
    ([("content-type", "application/json")], OPENAPI).into_response()
}

async fn not_found() -> Response {
    into_response(error(404, "no such route; see /v1/openapi.json for the API"))
}

async fn not_allowed() -> Response {
    into_response(error(405, "this route does not take that method; see /v1/openapi.json"))
}

/// The access log: one `info` line per request (target `ved::access`), with its method,
/// path, status and time to the response's head. Never its headers, its query or its
/// body: a bearer token must not end up in a log file.
async fn access_log(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let t = std::time::Instant::now();
    let resp = next.run(req).await;
    tracing::info!(
        target: "ved::access",
        method = %method,
        path = %path,
        status = resp.status().as_u16(),
        ms = t.elapsed().as_secs_f64() * 1000.0,
        "{method} {path} {}",
        resp.status().as_u16()
    );
    resp
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/instances", get(list).post(create).layer(DefaultBodyLimit::max(BATCH_BODY_LIMIT)))
        .route("/v1/instances/{name}", get(get_instance).delete(delete_instance))
        .route("/v1/observations", axum::routing::post(observe_many).layer(DefaultBodyLimit::max(BATCH_BODY_LIMIT)))
        .route("/v1/instances/{name}/observations", axum::routing::post(observe))
        .route("/v1/instances/{name}/journal", get(journal))
        .route("/v1/audit", get(audit))
        .route("/v1/events", get(events))
        .fallback(not_found)
        .method_not_allowed_fallback(not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn(access_log))
        .with_state(app)
}

/// What the server needs besides its address and the driver's channel.
#[derive(Clone, Default)]
pub struct Options {
    pub tokens: Tokens,
    /// `[api] max_instances`: how many instances `POST /v1/instances` may make in all.
    pub max_instances: usize,
    /// The store's directory: `GET /v1/audit` pages through its `audit.log` itself, on the
    /// server's threads, so that reading history never holds up the driver.
    pub data_dir: Option<std::path::PathBuf>,
    /// The events the engine prints, streamed by `GET /v1/events`.
    pub events: Option<Arc<super::events::EventHub>>,
}

/// Binds `listen` now, so that a busy port is reported before anything starts, and
/// serves on a thread of its own until SIGTERM or SIGINT, which it turns into
/// [`Input::Shutdown`].
pub(crate) fn serve(
    listen: SocketAddr,
    options: Options,
    inputs: mpsc::SyncSender<Input>,
) -> Result<(SocketAddr, std::thread::JoinHandle<()>), String> {
    serve_with(listen, options, inputs, Arc::new(std::sync::Mutex::new(None)))
}

/// [`serve`] for a cluster node: calls about instances another node owns go there.
pub(crate) fn serve_routed(
    listen: SocketAddr,
    tokens: Tokens,
    inputs: mpsc::SyncSender<Input>,
    routes: SharedRoutes,
    events: Option<Arc<super::events::EventHub>>,
) -> Result<(SocketAddr, std::thread::JoinHandle<()>), String> {
    // A node creates no instances through the API (501), so the bound is not consulted;
    // its audit log is the cluster's, in etcd.
    let options =
        Options { tokens, max_instances: ved_adapters::config::MAX_INSTANCES_DEFAULT, data_dir: None, events };
    serve_with(listen, options, inputs, routes)
}

fn serve_with(
    listen: SocketAddr,
    options: Options,
    inputs: mpsc::SyncSender<Input>,
    routes: SharedRoutes,
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
    let audit = options.data_dir.as_deref().map(|d| {
        Arc::new(AuditLog { pages: ved_store::AuditPages::new(d), one_at_a_time: tokio::sync::Semaphore::new(1) })
    });
    let hub = options.events.clone();
    let app = Arc::new(App {
        inputs: inputs.clone(),
        tokens: options.tokens,
        routes,
        max_instances: options.max_instances,
        audit,
        events: options.events,
    });
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
                    // Open event streams would hold the graceful shutdown for ever.
                    if let Some(hub) = hub {
                        hub.close();
                    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_input_channel_answers_503_with_retry_after_instead_of_waiting() {
        let (inputs, queued) = mpsc::sync_channel(1);
        inputs.try_send(Input::Eof).unwrap();
        let app = App {
            inputs,
            tokens: Tokens::default(),
            routes: Arc::new(std::sync::Mutex::new(None)),
            max_instances: ved_adapters::config::MAX_INSTANCES_DEFAULT,
            audit: None,
            events: None,
        };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let r = rt.block_on(app.call(Call::List));
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers().get("retry-after").map(|v| v.to_str().unwrap()), Some("1"));
        // The call was not queued: only the input that filled the channel is there.
        assert!(matches!(queued.try_recv(), Ok(Input::Eof)));
        assert!(queued.try_recv().is_err());
    }

    fn app(write: Option<&str>, read: Option<&str>) -> App {
        App {
            inputs: mpsc::sync_channel(1).0,
            tokens: Tokens { write: write.map(Token::new), read: read.map(Token::new) },
            routes: Arc::new(std::sync::Mutex::new(None)),
            max_instances: 1,
            audit: None,
            events: None,
        }
    }

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("authorization", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_the_token_is_not() {
        let app = app(Some("s3cret"), None);
        for ok in ["Bearer s3cret", "bearer s3cret", "BEARER s3cret", "bEaReR   s3cret "] {
            assert!(app.authorize(&headers(&[ok])).is_ok(), "{ok}");
        }
        for bad in ["Bearer S3CRET", "Bearer s3cre", "Bearer s3crett", "Basic s3cret", "Bearer", "s3cret"] {
            assert_eq!(app.authorize(&headers(&[bad])).unwrap_err().status, 401, "{bad}");
        }
        assert_eq!(app.authorize(&headers(&[])).unwrap_err().status, 401);
    }

    #[test]
    fn two_authorization_headers_are_refused_even_when_one_is_right() {
        let app = app(Some("s3cret"), Some("r"));
        for pair in
            [["Bearer s3cret", "Bearer s3cret"], ["Bearer wrong", "Bearer s3cret"], ["Bearer s3cret", "Bearer x"]]
        {
            let e = app.authorize(&headers(&pair)).unwrap_err();
            assert_eq!(e.status, 400, "{pair:?}");
            assert!(e.body.to_string().contains("more than one `Authorization` header"), "{}", e.body);
            assert_eq!(app.authorize_read(&headers(&pair)).unwrap_err().status, 400);
        }
    }

    #[test]
    fn reads_are_open_without_a_read_token_and_need_one_with_it() {
        assert!(app(Some("w"), None).authorize_read(&headers(&[])).is_ok());
        let app = app(Some("w"), Some("r"));
        assert_eq!(app.authorize_read(&headers(&[])).unwrap_err().status, 401);
        assert_eq!(app.authorize_read(&headers(&["Bearer x"])).unwrap_err().status, 401);
        assert!(app.authorize_read(&headers(&["Bearer r"])).is_ok());
        assert!(app.authorize_read(&headers(&["Bearer w"])).is_ok(), "the write token reads too");
        // The read token does not write.
        assert_eq!(app.authorize(&headers(&["Bearer r"])).unwrap_err().status, 401);
    }

    #[test]
    fn tokens_are_compared_as_digests_of_one_length() {
        // A token of any length is held as 32 bytes, and the given one is hashed the same
        // way: the comparison never depends on either length.
        let t = Token::new("x");
        assert_eq!(t.0.len(), 32);
        assert_eq!(Token::new(&"y".repeat(10_000)).0.len(), 32);
        assert!(t.matches("x") && !t.matches("") && !t.matches("xx"));
    }
}
