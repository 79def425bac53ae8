//! A small, blocking etcd v3 client over etcd's gRPC API (KV, Lease, Watch), with
//! the generated message and client code checked in under `src/pb` (see `codegen/`),
//! so that no build of Ved needs `protoc`.
//!
//! One HTTP/2 channel per endpoint. A request goes to the endpoint that answered
//! last; if that one does not answer within the request timeout (a stopped or
//! partitioned member), or answers that it cannot serve (no leader), the same request
//! goes to the next endpoint. An endpoint that let a request time out becomes
//! *suspect* for four timeouts: requests start elsewhere, try it last, and skip it
//! when another member answered. So a stalled member costs one timeout, once, and
//! not one per request. HTTP/2 keepalive pings also close a connection to a member
//! that stopped answering.
//!
//! The calls block; they run on a private tokio runtime, which also carries watches.

#[allow(dead_code, clippy::all, clippy::pedantic, unreachable_pub)]
mod pb {
    pub mod mvccpb {
        include!("pb/mvccpb.rs");
    }
    pub mod authpb {
        include!("pb/authpb.rs");
    }
    pub mod etcdserverpb {
        include!("pb/etcdserverpb.rs");
    }
}

use pb::etcdserverpb as rpc;
use rpc::auth_client::AuthClient;
use rpc::compare::{CompareResult, CompareTarget, TargetUnion};
use rpc::kv_client::KvClient;
use rpc::lease_client::LeaseClient;
use rpc::watch_client::WatchClient;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// A key's value and metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub lease: i64,
}

impl From<pb::mvccpb::KeyValue> for Kv {
    fn from(kv: pb::mvccpb::KeyValue) -> Kv {
        Kv {
            key: String::from_utf8_lossy(&kv.key).into_owned(),
            value: kv.value,
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            lease: kv.lease,
        }
    }
}

/// One comparison of a transaction.
#[derive(Clone, Debug)]
pub enum Compare {
    /// The key exists (its create revision is not 0).
    Exists(String),
    /// The key does not exist.
    Absent(String),
    /// The key's value equals this.
    ValueIs(String, Vec<u8>),
    /// The key is attached to this lease.
    LeaseIs(String, i64),
}

/// One operation of a transaction.
///
/// etcd refuses a transaction that puts one key twice, or puts a key that one of its
/// deletes covers ("duplicate key given in txn request"); [`MemEtcd`](crate::mem::MemEtcd)
/// refuses it too.
#[derive(Clone, Debug)]
pub enum Op {
    Put {
        key: String,
        value: Vec<u8>,
        lease: i64,
    },
    Delete(String),
    /// Deletes every key `k` with `from <= k < to` (etcd's range end); an empty `to`
    /// deletes `from` alone.
    DeleteRange {
        from: String,
        to: String,
    },
}

/// A set of keys to read ([`KvStore::read`]).
#[derive(Clone, Debug, PartialEq)]
pub enum Range {
    /// This key, if it exists.
    Key(String),
    /// Every key that starts with this.
    Prefix(String),
}

impl Range {
    fn bounds(&self) -> (Vec<u8>, Vec<u8>) {
        match self {
            Range::Key(k) => (k.as_bytes().to_vec(), Vec::new()),
            Range::Prefix(p) => (p.as_bytes().to_vec(), prefix_end(p)),
        }
    }
}

/// The etcd operations [`Membership`](crate::Membership) needs, so that it runs on the real
/// client ([`Etcd`]) or on the in-memory [`MemEtcd`](crate::mem::MemEtcd) alike.
pub trait KvStore: Send + Sync {
    /// A lease of `ttl` seconds; keys attached to it vanish when it expires.
    fn grant(&self, ttl: i64) -> Result<i64, EtcdError>;
    /// Renews a lease; returns the seconds left, 0 when it has already expired (or never was).
    fn keepalive(&self, lease: i64) -> Result<i64, EtcdError>;
    /// Ends a lease at once, deleting its keys.
    fn revoke(&self, lease: i64) -> Result<(), EtcdError>;
    fn get(&self, key: &str) -> Result<Option<Kv>, EtcdError>;
    /// Every key with this prefix, in key order.
    fn get_prefix(&self, prefix: &str) -> Result<Vec<Kv>, EtcdError>;
    /// What each range holds, all read at one revision: the keys in key order, range by
    /// range.
    fn read(&self, ranges: &[Range]) -> Result<Vec<Kv>, EtcdError>;
    /// Writes a key; returns the revision after.
    fn put(&self, key: &str, value: &[u8], lease: i64) -> Result<i64, EtcdError>;
    /// Runs `ops` if every comparison holds, all or nothing; returns whether they did, and
    /// the revision after.
    fn txn(&self, compares: &[Compare], ops: &[Op]) -> Result<(bool, i64), EtcdError>;
    /// Watches every key under `prefixes`: `sink` gets their state at a revision
    /// ([`WatchEvent::Reset`]) at the start and whenever the watch had to start again, and
    /// each change in between, in revision order.
    fn watch(&self, prefixes: Vec<String>, sink: Box<dyn Fn(WatchEvent) + Send + Sync>) -> Result<(), EtcdError>;
}

/// Why a request to etcd failed: the error of every fallible call of this crate.
///
/// Being fenced out is not an error: a fenced transaction answers `Ok(false)` (see
/// [`Membership::save`](crate::Membership::save)), and a lapsed lease shows in
/// [`Membership::acting`](crate::Membership::acting).
#[derive(Debug, Clone, PartialEq)]
pub enum EtcdError {
    /// No endpoint answered (down, partitioned, or no quorum): every endpoint was tried, and
    /// this is what the last one said (`url: reason`, such as no answer within the timeout
    /// or no leader). Trying again later may succeed.
    Unavailable(String),
    /// An endpoint answered with an error that another endpoint would repeat (`url: message`,
    /// or etcd's own error text for a lease it would not grant). Trying again will not help.
    Rejected(String),
}

impl EtcdError {
    /// Whether the request may succeed if tried again later (etcd was unreachable, not refusing).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, EtcdError::Unavailable(_))
    }
}

impl std::error::Error for EtcdError {}

impl std::fmt::Display for EtcdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EtcdError::Unavailable(m) => write!(f, "etcd is unreachable: {m}"),
            EtcdError::Rejected(m) => write!(f, "etcd refused: {m}"),
        }
    }
}

/// What a watch reports: the whole watched state at a revision (at the start, and again
/// whenever the watch had to be re-established), then each change.
#[derive(Clone, Debug, PartialEq)]
pub enum WatchEvent {
    Reset { revision: i64, kvs: Vec<Kv> },
    Put(Kv),
    Delete { key: String, revision: i64 },
}

/// The endpoints and the routing between them; shared with the watch tasks.
struct Router {
    endpoints: Vec<String>,
    channels: Vec<Result<Channel, String>>,
    timeout: Duration,
    /// The endpoint that answered last; tried first.
    preferred: AtomicUsize,
    /// Per endpoint: until when it is suspect (it let a request time out), as milliseconds
    /// since `epoch`. A suspect endpoint is tried last, and not at all when another one answered.
    suspect_until: Vec<AtomicU64>,
    epoch: std::time::Instant,
    auth: Option<Auth>,
}

/// The metadata every request carries: etcd's `hasleader`, which asks the member to refuse
/// at once ("no leader") a request it cannot serve for want of a leader rather than hold
/// it (another member may have one), and, when etcd has authentication enabled, the
/// `token` that [`Auth`] got for the user.
#[derive(Clone)]
pub(crate) struct Meta {
    token: Option<tonic::metadata::AsciiMetadataValue>,
}

impl tonic::service::Interceptor for Meta {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("hasleader", tonic::metadata::MetadataValue::from_static("true"));
        if let Some(t) = &self.token {
            req.metadata_mut().insert("token", t.clone());
        }
        Ok(req)
    }
}

/// TLS to etcd's client URLs (`https://`): the CA that signed etcd's server certificate,
/// and, when etcd asks for client certificates (`--client-cert-auth`), this client's
/// certificate and key, all PEM files.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tls {
    pub ca: PathBuf,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// How to reach an etcd that has TLS or authentication enabled ([`Etcd::with_options`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Options {
    pub tls: Option<Tls>,
    /// A user and its password: the client gets a token with them (etcd's
    /// `Auth.Authenticate`), sends it with every request, and gets a new one when etcd
    /// says it is no longer valid.
    pub auth: Option<(String, String)>,
}

/// What the client knows of its token.
#[derive(Clone)]
enum Token {
    /// None yet, or the last one was refused: authenticate before the next request.
    Unknown,
    /// etcd said authentication is not enabled: send none.
    NotNeeded,
    Valid(tonic::metadata::AsciiMetadataValue),
}

/// The user's credentials and the token they got, shared by requests and watches.
struct Auth {
    user: String,
    password: String,
    token: RwLock<Token>,
    /// How many tokens this client got (a renewal makes it 2 or more).
    authentications: AtomicU64,
}

/// Whether etcd refused a request because its token expired or was never valid (a simple
/// token lapses after `--auth-token-ttl` unused, a JWT at its expiry, and both when the
/// member restarts): authenticating again fixes it.
fn token_refused(s: &tonic::Status) -> bool {
    s.message().contains("invalid auth token") || s.message().contains("auth token is expired")
}

/// Whether another endpoint may succeed where this answer failed.
fn retryable(s: &tonic::Status) -> bool {
    use tonic::Code::*;
    matches!(s.code(), Unavailable | DeadlineExceeded | Unknown | Cancelled | Internal | Aborted | ResourceExhausted)
        || s.message().contains("leader")
        || s.message().contains("timed out")
}

impl Router {
    /// Sends one request, trying each endpoint in turn from the preferred one, each with
    /// the request timeout.
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, EtcdError>
    where
        F: Fn(Channel, Meta) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let n = self.channels.len();
        let start = self.preferred.load(Ordering::SeqCst);
        let now = self.epoch.elapsed().as_millis() as u64;
        let suspect = |i: usize| self.suspect_until[i].load(Ordering::SeqCst) > now;
        let order: Vec<usize> = (0..n)
            .map(|k| (start + k) % n)
            .filter(|i| !suspect(*i))
            .chain((0..n).map(|k| (start + k) % n).filter(|i| suspect(*i)))
            .collect();
        let mut last = String::from("no endpoints");
        // Whether an etcd member answered at all (say, that it has no leader yet).
        let mut answered = false;
        // A refused token is renewed once per request: a second refusal is etcd's answer.
        let mut renewed = false;
        let mut order = order.into_iter().peekable();
        while let Some(&i) = order.peek() {
            if answered && suspect(i) {
                break;
            }
            let url = &self.endpoints[i];
            let ch = match &self.channels[i] {
                Ok(c) => c.clone(),
                Err(e) => {
                    last = format!("{url}: {e}");
                    order.next();
                    continue;
                }
            };
            let meta = match self.meta(i, &ch).await {
                Ok(m) => m,
                Err(Ok(refused)) => return Err(refused),
                Err(Err(why)) => {
                    last = format!("{url}: authentication: {why}");
                    order.next();
                    continue;
                }
            };
            match tokio::time::timeout(self.timeout, f(ch, meta)).await {
                Ok(Ok(v)) => {
                    self.preferred.store(i, Ordering::SeqCst);
                    return Ok(v);
                }
                Ok(Err(s)) if token_refused(&s) && self.auth.is_some() && !renewed => {
                    // Expired: get a new token, and send the request again to the same endpoint.
                    renewed = true;
                    self.forget_token();
                    continue;
                }
                Ok(Err(s)) if s.message().contains("user name is empty") => {
                    return Err(EtcdError::Rejected(format!(
                        "{url}: etcd has authentication enabled and no user was given ({})",
                        s.message()
                    )))
                }
                Ok(Err(s)) if !retryable(&s) => return Err(EtcdError::Rejected(format!("{url}: {}", s.message()))),
                Ok(Err(s)) => {
                    answered |= s.message().starts_with("etcdserver:");
                    last = format!("{url}: {}", status_text(&s));
                }
                Err(_) => {
                    // Stalled: suspect it for a while, and start the next requests elsewhere.
                    let until = self.epoch.elapsed() + self.timeout * 4;
                    self.suspect_until[i].store(until.as_millis() as u64, Ordering::SeqCst);
                    let _ = self.preferred.compare_exchange(i, (i + 1) % n, Ordering::SeqCst, Ordering::SeqCst);
                    last = format!("{url}: no answer within {} ms", self.timeout.as_millis());
                }
            }
            order.next();
        }
        Err(EtcdError::Unavailable(last))
    }

    /// Forgets a token etcd refused, so the next request authenticates first.
    fn forget_token(&self) {
        if let Some(a) = &self.auth {
            *a.token.write().unwrap_or_else(|p| p.into_inner()) = Token::Unknown;
        }
    }

    /// The metadata for a request to endpoint `i`, authenticating there first when the
    /// client has credentials and no valid token. `Err(Ok(_))`: etcd refused the user (a
    /// wrong password is not worth another endpoint); `Err(Err(why))`: the endpoint did not
    /// answer in time, or not usefully, so another may.
    async fn meta(&self, i: usize, ch: &Channel) -> Result<Meta, Result<EtcdError, String>> {
        let Some(auth) = &self.auth else { return Ok(Meta { token: None }) };
        let known = auth.token.read().unwrap_or_else(|p| p.into_inner()).clone();
        match known {
            Token::Valid(t) => return Ok(Meta { token: Some(t) }),
            Token::NotNeeded => return Ok(Meta { token: None }),
            Token::Unknown => {}
        }
        let req = rpc::AuthenticateRequest { name: auth.user.clone(), password: auth.password.clone() };
        let mut client = AuthClient::new(ch.clone());
        let token = match tokio::time::timeout(self.timeout, client.authenticate(req)).await {
            Ok(Ok(r)) => {
                let t = r.into_inner().token;
                let v = t.parse::<tonic::metadata::AsciiMetadataValue>().map_err(|_| {
                    Ok(EtcdError::Rejected(format!("{}: etcd gave a token that is not ASCII", self.endpoints[i])))
                })?;
                auth.authentications.fetch_add(1, Ordering::SeqCst);
                Token::Valid(v)
            }
            Ok(Err(s)) if s.message().contains("authentication is not enabled") => Token::NotNeeded,
            Ok(Err(s)) if s.message().contains("authentication failed") => {
                return Err(Ok(EtcdError::Rejected(format!(
                    "etcd refused the user `{}`: authentication failed ({}: {})",
                    auth.user,
                    self.endpoints[i],
                    s.message()
                ))))
            }
            Ok(Err(s)) if !retryable(&s) => {
                return Err(Ok(EtcdError::Rejected(format!(
                    "etcd refused to authenticate the user `{}`: {}: {}",
                    auth.user,
                    self.endpoints[i],
                    s.message()
                ))))
            }
            Ok(Err(s)) => return Err(Err(status_text(&s))),
            Err(_) => return Err(Err(format!("no answer within {} ms", self.timeout.as_millis()))),
        };
        *auth.token.write().unwrap_or_else(|p| p.into_inner()) = token.clone();
        Ok(Meta { token: if let Token::Valid(t) = token { Some(t) } else { None } })
    }

    /// What each range holds, read in one transaction (one revision).
    async fn ranges(&self, ranges: &[Range]) -> Result<(i64, Vec<Kv>), EtcdError> {
        let ops: Vec<rpc::RequestOp> = ranges
            .iter()
            .map(|r| {
                let (key, range_end) = r.bounds();
                rpc::RequestOp {
                    request: Some(rpc::request_op::Request::RequestRange(rpc::RangeRequest {
                        key,
                        range_end,
                        ..Default::default()
                    })),
                }
            })
            .collect();
        let r = self
            .call(|ch, meta| {
                let req = rpc::TxnRequest { success: ops.clone(), ..Default::default() };
                async move { KvClient::with_interceptor(ch, meta).txn(req).await }
            })
            .await?
            .into_inner();
        let mut kvs = Vec::new();
        for resp in r.responses {
            if let Some(rpc::response_op::Response::ResponseRange(rr)) = resp.response {
                kvs.extend(rr.kvs.into_iter().map(Kv::from));
            }
        }
        Ok((r.header.map(|h| h.revision).unwrap_or(0), kvs))
    }
}

impl Router {
    /// What each range holds, at one revision, read in pages of `page` keys: a watch's full
    /// read of a registry of a million instances would not fit in one answer (gRPC's 4 MiB,
    /// etcd's own limits). The first page fixes the revision, the others are read at it.
    async fn ranges_paged(&self, ranges: &[Range], page: i64) -> Result<(i64, Vec<Kv>), EtcdError> {
        let mut revision = 0;
        let mut kvs = Vec::new();
        for r in ranges {
            let (mut from, end) = r.bounds();
            loop {
                let req = rpc::RangeRequest {
                    key: from.clone(),
                    range_end: end.clone(),
                    limit: page,
                    revision,
                    ..Default::default()
                };
                let resp = self
                    .call(|ch, meta| {
                        let req = req.clone();
                        async move { KvClient::with_interceptor(ch, meta).range(req).await }
                    })
                    .await?
                    .into_inner();
                if revision == 0 {
                    revision = resp.header.as_ref().map(|h| h.revision).unwrap_or(0);
                }
                let next = resp.kvs.last().map(|kv| kv.key.clone());
                kvs.extend(resp.kvs.into_iter().map(Kv::from));
                match next {
                    // The next page starts just past the last key read.
                    Some(mut last) if resp.more => {
                        last.push(0);
                        from = last;
                    }
                    _ => break,
                }
            }
        }
        Ok((revision, kvs))
    }
}

/// How many keys one page of a watch's full read holds, by default.
const WATCH_READ_PAGE: i64 = 10_000;

/// How a watch stream ended.
enum Ended {
    /// Its endpoint went silent: start again on another, from where it stopped.
    Silent,
    /// The stream broke: start again from where it stopped.
    Broken,
    /// etcd compacted the revision it would resume from, or cancelled it: read everything.
    Lost,
}

pub struct Etcd {
    router: Arc<Router>,
    /// How many keys one page of a watch's full read holds.
    watch_page: i64,
    rt: tokio::runtime::Runtime,
}

/// A gRPC status's message and what caused it: "transport error" alone does not say that
/// the TLS handshake failed, nor why.
fn status_text(s: &tonic::Status) -> String {
    match std::error::Error::source(s) {
        Some(cause) => {
            let cause = source_chain(cause);
            if cause.contains(s.message()) {
                cause
            } else {
                format!("{}: {cause}", s.message())
            }
        }
        None => s.message().to_string(),
    }
}

/// An error and its causes, `: `-separated (tonic's transport errors say little at the top).
fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        // Layers often repeat their cause's text; say it once.
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(&format!(": {text}"));
        }
        cause = c.source();
    }
    out
}

/// The key just past every key with this prefix (etcd's range end for a prefix).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn compare(c: &Compare) -> rpc::Compare {
    let (key, result, target, value) = match c {
        Compare::Exists(k) => (k, CompareResult::Greater, CompareTarget::Create, TargetUnion::CreateRevision(0)),
        Compare::Absent(k) => (k, CompareResult::Equal, CompareTarget::Create, TargetUnion::CreateRevision(0)),
        Compare::ValueIs(k, v) => (k, CompareResult::Equal, CompareTarget::Value, TargetUnion::Value(v.clone())),
        Compare::LeaseIs(k, l) => (k, CompareResult::Equal, CompareTarget::Lease, TargetUnion::Lease(*l)),
    };
    rpc::Compare {
        result: result as i32,
        target: target as i32,
        key: key.as_bytes().to_vec(),
        range_end: Vec::new(),
        target_union: Some(value),
    }
}

fn op(o: &Op) -> rpc::RequestOp {
    let request = match o {
        Op::Put { key, value, lease } => rpc::request_op::Request::RequestPut(rpc::PutRequest {
            key: key.as_bytes().to_vec(),
            value: value.clone(),
            lease: *lease,
            ..Default::default()
        }),
        Op::Delete(k) => rpc::request_op::Request::RequestDeleteRange(rpc::DeleteRangeRequest {
            key: k.as_bytes().to_vec(),
            ..Default::default()
        }),
        Op::DeleteRange { from, to } => rpc::request_op::Request::RequestDeleteRange(rpc::DeleteRangeRequest {
            key: from.as_bytes().to_vec(),
            range_end: to.as_bytes().to_vec(),
            ..Default::default()
        }),
    };
    rpc::RequestOp { request: Some(request) }
}

impl Etcd {
    /// `endpoints` are client URLs such as `http://127.0.0.1:2379`; each attempt of a request on
    /// one endpoint has `timeout`.
    pub fn new(endpoints: Vec<String>, timeout: Duration) -> Etcd {
        Etcd::build(endpoints, timeout, None, None)
    }

    /// As [`Etcd::new`], for an etcd with TLS (`https://` endpoints, which need
    /// [`Options::tls`]) or authentication ([`Options::auth`]). Fails when a certificate or
    /// key cannot be read or parsed, or when an `https://` endpoint has no TLS options; a
    /// wrong password shows at the first request, as [`EtcdError::Rejected`].
    pub fn with_options(endpoints: Vec<String>, timeout: Duration, options: Options) -> Result<Etcd, EtcdError> {
        let tls = match &options.tls {
            None => {
                if let Some(url) = endpoints.iter().find(|u| u.starts_with("https://")) {
                    return Err(EtcdError::Rejected(format!(
                        "{url}: an https:// endpoint needs TLS options: the CA of etcd's certificate (--etcd-ca)"
                    )));
                }
                None
            }
            Some(t) => {
                let read = |what: &str, p: &PathBuf| {
                    std::fs::read(p)
                        .map_err(|e| EtcdError::Rejected(format!("cannot read the {what} {}: {e}", p.display())))
                };
                let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read("etcd CA", &t.ca)?));
                match (&t.cert, &t.key) {
                    (Some(cert), Some(key)) => {
                        config = config
                            .identity(Identity::from_pem(read("client certificate", cert)?, read("client key", key)?));
                    }
                    (None, None) => {}
                    _ => return Err(EtcdError::Rejected(
                        "a client certificate needs its key, and a key its certificate (--etcd-cert and --etcd-key)"
                            .into(),
                    )),
                }
                Some(config)
            }
        };
        let auth = options.auth.map(|(user, password)| Auth {
            user,
            password,
            token: RwLock::new(Token::Unknown),
            authentications: AtomicU64::new(0),
        });
        let etcd = Etcd::build(endpoints, timeout, tls, auth);
        // A certificate that does not parse shows here, not at each request.
        if let Some(Err(e)) = etcd.router.channels.iter().find(|c| c.is_err()) {
            if e.starts_with("TLS") {
                return Err(EtcdError::Rejected(e.clone()));
            }
        }
        Ok(etcd)
    }

    fn build(endpoints: Vec<String>, timeout: Duration, tls: Option<ClientTlsConfig>, auth: Option<Auth>) -> Etcd {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("ved-etcd")
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let channels = {
            let _in_rt = rt.enter();
            endpoints
                .iter()
                .map(|url| {
                    let e = Endpoint::from_shared(url.clone()).map_err(|e| format!("not a URL: {e}"))?;
                    let e = match &tls {
                        Some(c) if url.starts_with("https://") => {
                            e.tls_config(c.clone()).map_err(|e| format!("TLS options: {}", source_chain(&e)))?
                        }
                        _ => e,
                    };
                    Ok(e.connect_timeout(timeout)
                        .tcp_nodelay(true)
                        .http2_keep_alive_interval(Duration::from_secs(1))
                        .keep_alive_timeout(timeout)
                        .keep_alive_while_idle(true)
                        .connect_lazy())
                })
                .collect()
        };
        let suspect_until = endpoints.iter().map(|_| AtomicU64::new(0)).collect();
        let router = Router {
            endpoints,
            channels,
            timeout,
            preferred: AtomicUsize::new(0),
            suspect_until,
            epoch: std::time::Instant::now(),
            auth,
        };
        Etcd { router: Arc::new(router), rt, watch_page: WATCH_READ_PAGE }
    }

    /// Turns authentication on in an etcd that has it off, with a `root` user of this
    /// password holding the `root` role (what `etcdctl user add root`, `etcdctl user
    /// grant-role root root` and `etcdctl auth enable` do): for setting up an etcd, and for
    /// tests, without `etcdctl`.
    pub fn enable_auth(&self, root_password: &str) -> Result<(), EtcdError> {
        let password = root_password.to_string();
        self.block(|ch, _| {
            let password = password.clone();
            async move {
                let mut a = AuthClient::new(ch);
                let add = rpc::AuthUserAddRequest { name: "root".into(), password, ..Default::default() };
                a.user_add(add).await?;
                a.user_grant_role(rpc::AuthUserGrantRoleRequest { user: "root".into(), role: "root".into() }).await?;
                a.auth_enable(rpc::AuthEnableRequest {}).await
            }
        })
        .map(|_| ())
    }

    /// How many tokens this client got from etcd: 1 after the first request to an etcd with
    /// authentication, more after each renewal of an expired token; 0 without credentials.
    pub fn authentications(&self) -> u64 {
        self.router.auth.as_ref().map_or(0, |a| a.authentications.load(Ordering::SeqCst))
    }

    /// Reads a watch's full state in pages of `keys` keys (default 10,000).
    pub fn with_watch_page(mut self, keys: i64) -> Etcd {
        self.watch_page = keys.max(1);
        self
    }

    fn block<T, F, Fut>(&self, f: F) -> Result<T, EtcdError>
    where
        F: Fn(Channel, Meta) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        self.rt.block_on(self.router.call(f))
    }

    /// A lease of `ttl` seconds; keys attached to it vanish when it expires.
    pub fn grant(&self, ttl: i64) -> Result<i64, EtcdError> {
        let r = self
            .block(|ch, meta| async move {
                LeaseClient::with_interceptor(ch, meta).lease_grant(rpc::LeaseGrantRequest { ttl, id: 0 }).await
            })?
            .into_inner();
        if !r.error.is_empty() {
            return Err(EtcdError::Rejected(r.error));
        }
        Ok(r.id)
    }

    /// Renews a lease; returns the seconds left, 0 when it has already expired.
    pub fn keepalive(&self, lease: i64) -> Result<i64, EtcdError> {
        self.block(|ch, meta| async move {
            // One renewal on a stream kept open until its answer has come.
            let req = tokio_stream::StreamExt::chain(
                tokio_stream::once(rpc::LeaseKeepAliveRequest { id: lease }),
                tokio_stream::pending(),
            );
            let mut answers = LeaseClient::with_interceptor(ch, meta).lease_keep_alive(req).await?.into_inner();
            match answers.message().await? {
                Some(a) => Ok(a.ttl),
                None => Err(tonic::Status::unavailable("keepalive stream closed")),
            }
        })
    }

    /// Ends a lease at once, deleting its keys.
    pub fn revoke(&self, lease: i64) -> Result<(), EtcdError> {
        self.block(|ch, meta| async move {
            LeaseClient::with_interceptor(ch, meta).lease_revoke(rpc::LeaseRevokeRequest { id: lease }).await
        })
        .map(|_| ())
    }

    fn range(&self, key: &str, range_end: Vec<u8>) -> Result<Vec<Kv>, EtcdError> {
        let r = self
            .block(|ch, meta| {
                let req = rpc::RangeRequest {
                    key: key.as_bytes().to_vec(),
                    range_end: range_end.clone(),
                    ..Default::default()
                };
                async move { KvClient::with_interceptor(ch, meta).range(req).await }
            })?
            .into_inner();
        Ok(r.kvs.into_iter().map(Kv::from).collect())
    }

    pub fn get(&self, key: &str) -> Result<Option<Kv>, EtcdError> {
        Ok(self.range(key, Vec::new())?.into_iter().next())
    }

    pub fn get_prefix(&self, prefix: &str) -> Result<Vec<Kv>, EtcdError> {
        self.range(prefix, prefix_end(prefix))
    }

    /// What each range holds, read in one transaction (one revision).
    pub fn read(&self, ranges: &[Range]) -> Result<Vec<Kv>, EtcdError> {
        Ok(self.rt.block_on(self.router.ranges(ranges))?.1)
    }

    pub fn put(&self, key: &str, value: &[u8], lease: i64) -> Result<i64, EtcdError> {
        let r = self
            .block(|ch, meta| {
                let req = rpc::PutRequest {
                    key: key.as_bytes().to_vec(),
                    value: value.to_vec(),
                    lease,
                    ..Default::default()
                };
                async move { KvClient::with_interceptor(ch, meta).put(req).await }
            })?
            .into_inner();
        Ok(r.header.map(|h| h.revision).unwrap_or(0))
    }

    /// Runs `ops` if every comparison holds; returns whether they did, and the revision after.
    pub fn txn(&self, compares: &[Compare], ops: &[Op]) -> Result<(bool, i64), EtcdError> {
        let req = rpc::TxnRequest {
            compare: compares.iter().map(compare).collect(),
            success: ops.iter().map(op).collect(),
            failure: Vec::new(),
        };
        let r = self
            .block(|ch, meta| {
                let req = req.clone();
                async move { KvClient::with_interceptor(ch, meta).txn(req).await }
            })?
            .into_inner();
        Ok((r.succeeded, r.header.map(|h| h.revision).unwrap_or(0)))
    }

    /// Watches every key under `prefixes` until the process ends: `sink` gets their state at
    /// a revision (read in pages), then each change. The watch runs on the preferred
    /// endpoint and asks it for a progress report a few times per request timeout; an
    /// endpoint that stays silent for three timeouts is left. A watch that ended starts
    /// again from the revision after the last change it reported, on the preferred
    /// endpoint, so a broken stream costs no full read; only when etcd compacted that
    /// revision (or cancelled the watch) does it read everything again, and report a
    /// fresh [`WatchEvent::Reset`].
    pub fn watch(&self, prefixes: Vec<String>, sink: impl Fn(WatchEvent) + Send + Sync + 'static) {
        let router = self.router.clone();
        let page = self.watch_page;
        let ranges: Vec<Range> = prefixes.iter().cloned().map(Range::Prefix).collect();
        self.rt.spawn(async move {
            // Per prefix: the revision to resume from, once there has been a full read.
            let mut resume: Option<Vec<i64>> = None;
            loop {
                let pause = router.timeout / 2;
                let mut from = match resume.take() {
                    Some(from) => from,
                    None => match router.ranges_paged(&ranges, page).await {
                        Ok((revision, kvs)) => {
                            sink(WatchEvent::Reset { revision, kvs });
                            vec![revision + 1; prefixes.len()]
                        }
                        Err(_) => {
                            tokio::time::sleep(pause).await;
                            continue;
                        }
                    },
                };
                let i = router.preferred.load(Ordering::SeqCst);
                match watch_on(&router, i, &prefixes, &mut from, &sink).await {
                    Ended::Silent => {
                        // Prefer the next endpoint, unless a request has moved on already.
                        let n = router.channels.len().max(1);
                        let _ = router.preferred.compare_exchange(i, (i + 1) % n, Ordering::SeqCst, Ordering::SeqCst);
                        resume = Some(from);
                    }
                    Ended::Broken => resume = Some(from),
                    Ended::Lost => {}
                }
                tokio::time::sleep(pause).await;
            }
        });
    }
}

impl KvStore for Etcd {
    fn grant(&self, ttl: i64) -> Result<i64, EtcdError> {
        Etcd::grant(self, ttl)
    }
    fn keepalive(&self, lease: i64) -> Result<i64, EtcdError> {
        Etcd::keepalive(self, lease)
    }
    fn revoke(&self, lease: i64) -> Result<(), EtcdError> {
        Etcd::revoke(self, lease)
    }
    fn get(&self, key: &str) -> Result<Option<Kv>, EtcdError> {
        Etcd::get(self, key)
    }
    fn get_prefix(&self, prefix: &str) -> Result<Vec<Kv>, EtcdError> {
        Etcd::get_prefix(self, prefix)
    }
    fn read(&self, ranges: &[Range]) -> Result<Vec<Kv>, EtcdError> {
        Etcd::read(self, ranges)
    }
    fn put(&self, key: &str, value: &[u8], lease: i64) -> Result<i64, EtcdError> {
        Etcd::put(self, key, value, lease)
    }
    fn txn(&self, compares: &[Compare], ops: &[Op]) -> Result<(bool, i64), EtcdError> {
        Etcd::txn(self, compares, ops)
    }
    /// Never fails: the watch keeps trying until etcd answers.
    fn watch(&self, prefixes: Vec<String>, sink: Box<dyn Fn(WatchEvent) + Send + Sync>) -> Result<(), EtcdError> {
        Etcd::watch(self, prefixes, sink);
        Ok(())
    }
}

/// One watch per prefix on endpoint `i`, prefix `k` from revision `from[k]`, until the
/// stream ends; `from` is kept past each change reported, so a new watch resumes there.
async fn watch_on(
    router: &Router,
    i: usize,
    prefixes: &[String],
    from: &mut [i64],
    sink: &impl Fn(WatchEvent),
) -> Ended {
    let Ok(ch) = router.channels[i].clone() else { return Ended::Silent };
    // The token the watch streams carry; a refused one ends the watch (below), and the
    // full read that follows gets a new one.
    let meta = match router.meta(i, &ch).await {
        Ok(m) => m,
        Err(_) => return Ended::Silent,
    };
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    for (p, start) in prefixes.iter().zip(from.iter()) {
        let create = rpc::WatchCreateRequest {
            key: p.as_bytes().to_vec(),
            range_end: prefix_end(p),
            start_revision: *start,
            ..Default::default()
        };
        let _ = tx.try_send(rpc::WatchRequest {
            request_union: Some(rpc::watch_request::RequestUnion::CreateRequest(create)),
        });
    }
    let mut client = WatchClient::with_interceptor(ch, meta);
    let started = client.watch(tokio_stream::wrappers::ReceiverStream::new(rx));
    let mut answers = match tokio::time::timeout(router.timeout, started).await {
        Ok(Ok(r)) => r.into_inner(),
        // Refused or unreachable: as for silence, try another endpoint next.
        Ok(Err(s)) if token_refused(&s) => {
            router.forget_token();
            return Ended::Lost;
        }
        Ok(Err(_)) | Err(_) => return Ended::Silent,
    };
    // etcd creates the watches in the order asked: the k-th created is prefix k's.
    let mut ids: Vec<i64> = Vec::with_capacity(prefixes.len());
    let silence = router.timeout * 3;
    let mut tick = tokio::time::interval(router.timeout / 2);
    let mut heard = tokio::time::Instant::now();
    loop {
        tokio::select! {
            m = answers.message() => match m {
                Ok(Some(resp)) => {
                    heard = tokio::time::Instant::now();
                    if resp.canceled || resp.compact_revision > 0 {
                        if resp.cancel_reason.contains("auth token") {
                            router.forget_token();
                        }
                        return Ended::Lost;
                    }
                    if resp.created {
                        ids.push(resp.watch_id);
                    }
                    let k = ids.iter().position(|id| *id == resp.watch_id);
                    for ev in resp.events {
                        let Some(kv) = ev.kv else { continue };
                        if let Some(k) = k {
                            from[k] = from[k].max(kv.mod_revision + 1);
                        }
                        if ev.r#type == pb::mvccpb::event::EventType::Delete as i32 {
                            sink(WatchEvent::Delete { key: String::from_utf8_lossy(&kv.key).into_owned(), revision: kv.mod_revision });
                        } else {
                            sink(WatchEvent::Put(kv.into()));
                        }
                    }
                }
                Err(s) if token_refused(&s) => {
                    router.forget_token();
                    return Ended::Lost;
                }
                _ => return Ended::Broken,
            },
            _ = tick.tick() => {
                if heard.elapsed() > silence {
                    return Ended::Silent;
                }
                let progress = rpc::WatchRequest {
                    request_union: Some(rpc::watch_request::RequestUnion::ProgressRequest(rpc::WatchProgressRequest {})),
                };
                let _ = tx.try_send(progress);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_ends_just_past_its_last_key() {
        assert_eq!(prefix_end("ved/nodes/"), b"ved/nodes0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
    }

    #[test]
    fn errors_say_whether_etcd_was_unreachable_or_refused() {
        let down = EtcdError::Unavailable("http://127.0.0.1:2379: no answer within 2000 ms".into());
        let no: Box<dyn std::error::Error> =
            Box::new(EtcdError::Rejected("http://127.0.0.1:2379: lease not found".into()));
        assert_eq!(down.to_string(), "etcd is unreachable: http://127.0.0.1:2379: no answer within 2000 ms");
        assert_eq!(no.to_string(), "etcd refused: http://127.0.0.1:2379: lease not found");
        assert!(down.is_unavailable());
    }
}
