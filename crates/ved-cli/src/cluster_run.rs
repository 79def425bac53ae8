//! `ved run --cluster URLS --node-id N`: a client of the engine whose persistence
//! is etcd. [`Node`] is this node's share of the program's instances: one
//! [`Engine`] started with [`Instances::Adopted`] on
//! [`EtcdPersistence`](ved_engine::persist_etcd::EtcdPersistence), so every slice
//! is written (snapshot, journal entries, audit entries) in a transaction fenced by
//! the owner key before its intents leave, each carrying the owner's fencing token.
//! The node balances by what the watch of the node keys, owner keys and registry reports:
//! it adopts the instances rendezvous hashing gives it, from the state their last owner
//! left in etcd, and hands over the others; it keeps the registry itself, so that a round
//! reads nothing from etcd to decide.
//!
//! [`run_cluster`] is the process around it: the same input channel, HTTP API and
//! JSON-lines events as `ved run`, with a wall clock. The simulation
//! (`tests/cluster_sim.rs`) drives [`Node`] itself on an in-memory etcd.

use crate::load;
use crate::run::{api, build_adapters, report_start_error, Adapters, Input, RunOptions};
use serde_json::{json, Map, Value as Json};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::Write;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;
use ved_cluster::etcd::Etcd;
use ved_cluster::{rendezvous, KvStore, Membership};
use ved_engine::persist_etcd::{self, EtcdPersistence, Owned};
use ved_engine::{Adopted, Call, Engine, Instances, JsonLines, Reply, Sink, StartError, WallClock};

pub struct ClusterOptions {
    pub endpoints: Vec<String>,
    pub node: String,
    /// Lease TTL in seconds.
    pub ttl: i64,
    /// Key prefix in etcd, so several programs can share one etcd.
    pub prefix: String,
    /// Where this node serves the HTTP API.
    pub listen: std::net::SocketAddr,
    /// The URL other nodes use to reach this node's API (default: from `listen`).
    pub advertise: Option<String>,
    /// TLS and credentials for etcd.
    pub etcd: ved_cluster::etcd::Options,
}

/// How to reach an etcd with TLS or authentication: the same flags for `ved run --cluster`
/// and the read-only commands. The password comes from a file or the environment, never
/// from a flag, which every user of the machine could read in `ps`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct EtcdFlags {
    /// With `--cluster`: the CA certificate (PEM) that signed etcd's server certificate;
    /// needed for `https://` URLs.
    #[arg(long, value_name = "FILE", requires = "cluster", global = true)]
    pub etcd_ca: Option<PathBuf>,
    /// With `--cluster`: this client's certificate (PEM), when etcd checks client
    /// certificates (`--client-cert-auth`).
    #[arg(long, value_name = "FILE", requires_all = ["cluster", "etcd_key", "etcd_ca"], global = true)]
    pub etcd_cert: Option<PathBuf>,
    /// With `--cluster`: the key (PEM) of `--etcd-cert`.
    #[arg(long, value_name = "FILE", requires_all = ["cluster", "etcd_cert"], global = true)]
    pub etcd_key: Option<PathBuf>,
    /// With `--cluster`: the etcd user, when etcd has authentication enabled. Its password
    /// comes from `--etcd-password-file` or the environment variable VED_ETCD_PASSWORD.
    #[arg(long, value_name = "USER", requires = "cluster", global = true)]
    pub etcd_user: Option<String>,
    /// With `--etcd-user`: a file holding the user's password (one line).
    #[arg(long, value_name = "FILE", requires = "etcd_user", global = true)]
    pub etcd_password_file: Option<PathBuf>,
}

/// The environment variable `--etcd-user`'s password may come from.
pub const ETCD_PASSWORD_ENV: &str = "VED_ETCD_PASSWORD";

impl EtcdFlags {
    /// The client options these flags say, reading the password (the file wins over the
    /// environment; a trailing newline is not part of it).
    pub fn options(&self) -> Result<ved_cluster::etcd::Options, String> {
        let tls = self.etcd_ca.as_ref().map(|ca| ved_cluster::etcd::Tls {
            ca: ca.clone(),
            cert: self.etcd_cert.clone(),
            key: self.etcd_key.clone(),
        });
        let auth = match &self.etcd_user {
            None => None,
            Some(user) => {
                let password = match &self.etcd_password_file {
                    Some(f) => std::fs::read_to_string(f)
                        .map_err(|e| format!("cannot read the etcd password file {}: {e}", f.display()))?
                        .trim_end_matches(['\n', '\r'])
                        .to_string(),
                    None => std::env::var(ETCD_PASSWORD_ENV).map_err(|_| {
                        format!("`--etcd-user {user}` needs a password: `--etcd-password-file FILE`, or the environment variable {ETCD_PASSWORD_ENV}")
                    })?,
                };
                Some((user.clone(), password))
            }
        };
        Ok(ved_cluster::etcd::Options { tls, auth })
    }
}

/// Instances are balanced whenever the etcd watch reports a change of the node keys, owner
/// keys or registry; a move that could not be made is tried again this often (the balance
/// period).
pub const BALANCE_PERIOD_MS: u64 = 1000;

/// How long one etcd request may take on one endpoint before it goes to the next.
const ETCD_REQUEST_TIMEOUT: Duration = Duration::from_millis(500);

fn obj(j: Json) -> Map<String, Json> {
    match j {
        Json::Object(m) => m,
        _ => Map::new(),
    }
}

/// How many instances a node takes or hands over per round: a large move goes in batches,
/// and the instances already running keep running between them.
pub const MOVES_PER_ROUND: usize = 64;

/// How many instances a round looks at, moved or not: a pass over every instance (after a
/// node joined or left) goes on over several rounds, so that no round takes time in
/// proportion to the fleet.
pub const EXAMINED_PER_ROUND: usize = 4096;

/// One instance the cluster runs: the program's (or `ved.toml`'s), or one created through
/// the API and registered in etcd, with its initial values.
#[derive(Clone)]
struct Target {
    domain: usize,
    initial: Vec<(u16, ved_vm::Value)>,
}

/// One cluster node: membership, and an engine holding what this node owns.
///
/// It balances by change: the registry and the owner keys reach it through the
/// membership's watch ([`Membership::take_changes`]), so a round reads nothing from etcd
/// to decide, and looks only at the instances that changed, plus every instance once
/// after the set of live nodes changed or the watch read everything again.
pub struct Node<W: Write> {
    pub m: Arc<Membership>,
    pub engine: Engine<JsonLines<W>>,
    owned: Arc<Mutex<Owned>>,
    /// Every instance the cluster runs, by name: the declared ones, which do not change
    /// while the node runs, and the registered ones, each parsed once, when the watch
    /// reports it.
    targets: BTreeMap<String, Target>,
    /// The names the program and `ved.toml` declare: a registered definition never
    /// replaces one.
    fixed: HashSet<String>,
    /// Instances to look at in the coming rounds: registered or deleted ones, those whose
    /// owner key changed, those the engine lost.
    todo: BTreeSet<String>,
    /// Moves that could not be made (etcd unreachable, state not yet written): looked at
    /// again once per balance period.
    retry: BTreeSet<String>,
    /// A pass over every instance under way, resuming after this bound.
    sweep: Option<Bound<String>>,
    /// The live nodes and this node's lease the last pass was for.
    nodes: Vec<String>,
    lease: i64,
    last_balance_ms: Option<u64>,
    /// What this node holds, for the API's routes: changed when ownership changes, so the
    /// node loop does not copy its holdings every round.
    here: Arc<Mutex<HashSet<String>>>,
    /// The latest reading of each watcher (by source) for instances this node did not hold
    /// when it came: applied when the node takes the instance. A watcher reports a reading
    /// again only when it changes or at its resync (60 s by default), so a reading dropped
    /// while ownership was moving (a lease that lapsed under load) would otherwise leave the
    /// new owner blind to it that long: a failover starved for a minute.
    unheld: BTreeMap<String, BTreeMap<String, ved_adapters::Observation>>,
}

impl<W: Write> Node<W> {
    /// An engine with no instances on `m`'s etcd; [`Node::step`] adopts this node's share.
    pub fn new(
        m: Arc<Membership>,
        loaded: load::Loaded,
        opts: &RunOptions,
        adapters: Adapters,
        out: JsonLines<W>,
    ) -> Result<Node<W>, StartError> {
        let owned = Arc::new(Mutex::new(Owned::default()));
        let persistence = Box::new(EtcdPersistence::new(m.clone(), owned.clone()));
        let domains: Vec<String> = loaded.compiled.domains.iter().map(|d| d.name.clone()).collect();
        let mut targets: BTreeMap<String, Target> = match &opts.config {
            Some(c) => c.instance_names(&domains),
            None => domains.iter().cloned().enumerate().map(|(d, n)| (n, d)).collect(),
        }
        .into_iter()
        .map(|(name, domain)| (name, Target { domain, initial: Vec::new() }))
        .collect();
        if let Some(c) = &opts.config {
            let declared = ved_engine::adapters::declared_instances(c, &loaded.compiled)
                .map_err(|reason| StartError::Create { instance: "ved.toml".into(), reason })?;
            for (name, _, initial) in declared {
                if let Some(t) = targets.get_mut(&name) {
                    t.initial = initial;
                }
            }
        }
        let fixed = targets.keys().cloned().collect();
        let engine = Engine::start_with(loaded, opts, adapters, out, Some(persistence), None, Instances::Adopted)?;
        // As `ved run` does after its recovery (see `memory`).
        crate::memory::return_freed();
        Ok(Node {
            m,
            engine,
            owned,
            targets,
            fixed,
            todo: BTreeSet::new(),
            retry: BTreeSet::new(),
            sweep: None,
            nodes: Vec::new(),
            lease: 0,
            last_balance_ms: None,
            here: Arc::default(),
            unheld: BTreeMap::new(),
        })
    }

    fn emit(&mut self, j: Json) {
        self.engine.sink_mut().emit(obj(j));
        Sink::flush(self.engine.sink_mut());
    }

    fn owned(&self) -> std::sync::MutexGuard<'_, Owned> {
        self.owned.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn here(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.here.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The instances this node owns now.
    pub fn holding(&self) -> Vec<String> {
        self.engine.instance_names()
    }

    /// Keeps `here` as the set of instances this node holds from now on (the API's routes
    /// read it from another thread).
    pub fn share_holdings(&mut self, here: Arc<Mutex<HashSet<String>>>) {
        *here.lock().unwrap_or_else(|p| p.into_inner()) = self.here().clone();
        self.here = here;
    }

    /// How many registered instances this node knows of (declared ones not counted).
    pub fn registered(&self) -> usize {
        self.targets.len() - self.fixed.len()
    }

    /// One round at time `now_ms`: stand down if the lease may have lapsed; take in what the
    /// watch reported; balance what changed (and, once per balance period, retry the moves
    /// that could not be made); run what came due; retry unwritten batches.
    pub fn step(&mut self, now_ms: u64) {
        if !self.m.acting() {
            self.stand_down();
            return;
        }
        self.absorb();
        if self.last_balance_ms.is_none_or(|t| now_ms >= t + BALANCE_PERIOD_MS) {
            self.last_balance_ms = Some(now_ms);
            self.todo.append(&mut self.retry);
        }
        if !self.todo.is_empty() || self.sweep.is_some() {
            self.rebalance();
        }
        self.engine.tick();
        // Writes refused for want of etcd are tried again; intents wait for them.
        let _ = self.engine.flush();
        self.note_fenced_out();
    }

    /// A result or a reading from the adapters. Every node runs every watcher, so a
    /// reading counts only on the owner, and versions are per source and per node.
    pub fn handle_inbound(&mut self, x: ved_adapters::Inbound) {
        match x {
            ved_adapters::Inbound::Observed(mut o) => {
                if !self.engine.holds(&o.instance) {
                    // Kept only for instances the cluster runs: one reading per watcher.
                    if self.targets.contains_key(&o.instance) {
                        self.unheld.entry(o.instance.clone()).or_default().insert(o.source.clone(), o);
                    }
                    return;
                }
                o.source = format!("{}@{}", o.source, self.m.node);
                self.engine.handle_inbound(ved_adapters::Inbound::Observed(o));
            }
            ved_adapters::Inbound::Repaired { ref instance, .. } if !self.engine.holds(instance) => {}
            x => self.engine.handle_inbound(x),
        }
    }

    /// A registered instance's definition, parsed. `None`: one this program cannot run
    /// (written by another version, or not for this program); it is skipped.
    fn parse(&self, name: &str, def: &[u8]) -> Option<Target> {
        let body = serde_json::from_slice::<Map<String, Json>>(def).unwrap_or_default();
        match ved_engine::calls::parse_new(self.engine.program(), &body) {
            Ok(n) if n.name == name => Some(Target { domain: n.domain, initial: n.overrides }),
            _ => None,
        }
    }

    /// Takes in what the watch reported since the last round: registered instances added or
    /// removed (parsed here, once), owner keys that changed, and whether a pass over every
    /// instance is due (the live nodes or this node's lease changed, or the watch read
    /// everything again, after which the registry is replaced by what it read).
    fn absorb(&mut self) {
        let changes = self.m.take_changes();
        if changes.reset {
            let fixed = &self.fixed;
            self.targets.retain(|name, _| fixed.contains(name));
            // A held instance the full read no longer registers must be forgotten: look at
            // each held one, once per full read.
            self.todo.extend(self.engine.instance_names());
        }
        for (name, def) in changes.registry {
            if self.fixed.contains(&name) {
                continue;
            }
            match def.and_then(|d| self.parse(&name, &d)) {
                Some(t) => self.targets.insert(name.clone(), t),
                None => self.targets.remove(&name),
            };
            self.todo.insert(name);
        }
        for name in changes.owners {
            if self.targets.contains_key(&name) {
                self.todo.insert(name);
            }
        }
        let mut pass = changes.reset;
        if changes.nodes || changes.reset {
            let nodes = self.m.live_nodes();
            pass |= nodes != self.nodes;
            self.nodes = nodes;
        }
        if self.m.lease() != self.lease {
            self.lease = self.m.lease();
            pass = true;
        }
        if pass {
            self.sweep = Some(Bound::Unbounded);
        }
    }

    /// Makes at most [`MOVES_PER_ROUND`] moves, looking at most at [`EXAMINED_PER_ROUND`]
    /// instances: first those that changed, then the pass under way, where it stopped.
    fn rebalance(&mut self) {
        let (mut moves, mut looked) = (0, 0);
        while moves < MOVES_PER_ROUND && looked < EXAMINED_PER_ROUND {
            let Some(name) = self.todo.pop_first() else { break };
            looked += 1;
            moves += self.examine(&name);
        }
        while moves < MOVES_PER_ROUND && looked < EXAMINED_PER_ROUND {
            let Some(from) = self.sweep.take() else { break };
            let from = from.as_ref().map(String::as_str);
            let Some(name) = self.targets.range::<str, _>((from, Bound::Unbounded)).next().map(|(n, _)| n.clone())
            else {
                break;
            };
            looked += 1;
            moves += self.examine(&name);
            self.sweep = Some(Bound::Excluded(name));
        }
    }

    /// Moves one instance if it must move: takes it if rendezvous hashing gives it to this
    /// node and nobody owns it, hands it over if it gives it to another, forgets it if it
    /// was deleted. Returns how many moves it made (0 or 1).
    fn examine(&mut self, name: &str) -> usize {
        let held = self.engine.holds(name);
        let Some(t) = self.targets.get(name) else {
            if !held {
                return 0;
            }
            // Deleted: its state goes with it, under this node's fence.
            match self.m.forget(name) {
                Ok(true) => self.let_go(name, "deleted"),
                // Fenced out: another node owns it; the engine learns so at its next write.
                Ok(false) => {}
                Err(_) => {
                    self.retry.insert(name.to_string());
                }
            }
            return 1;
        };
        let desired = rendezvous(name, &self.nodes);
        if held && desired.is_some_and(|n| n != self.m.node) {
            if !self.hand_over(name) {
                self.retry.insert(name.to_string());
            }
            return 1;
        }
        if held || desired != Some(self.m.node.as_str()) {
            return 0;
        }
        let (domain, initial) = (t.domain, t.initial.clone());
        let fixed = self.fixed.contains(name);
        let fence = match self.m.watched_owner(name) {
            None => match if fixed { self.m.acquire(name) } else { self.m.acquire_registered(name) } {
                Ok(Some(fence)) => fence,
                // Someone has the key now, or it was deleted: the watch will say, and wake
                // this instance.
                Ok(None) => return 1,
                Err(_) => {
                    self.retry.insert(name.to_string());
                    return 1;
                }
            },
            // Acquired by a request whose answer was lost: it is this node's.
            Some(o) if self.m.is_mine(&o) => o.fence,
            // Its owner hands it over, or its lease lapses: the watch will say.
            Some(_) => return 0,
        };
        if !self.take(name, domain, fence, initial) {
            self.retry.insert(name.to_string());
        }
        1
    }

    /// Instances the engine dropped because their writes were fenced out: no longer here,
    /// and looked at again (the node that fenced them out may let them go).
    fn note_fenced_out(&mut self) {
        let lost = std::mem::take(&mut self.owned().fenced_out);
        let mut later = Vec::new();
        for name in lost {
            if !self.engine.holds(&name) {
                self.here().remove(&name);
                self.todo.insert(name);
            } else if !self.owned().fences.contains_key(&name) {
                // Not dropped by the engine yet: it will be, at its next release.
                later.push(name);
            }
        }
        self.owned().fenced_out.extend(later);
    }

    /// Adopts an instance after acquiring it: its snapshot, journal and audit head from etcd.
    /// `false`: it could not, and let the instance go again.
    fn take(&mut self, name: &str, domain: usize, fence: i64, initial: Vec<(u16, ved_vm::Value)>) -> bool {
        let state = match persist_etcd::load(&*self.m.etcd, self.m.prefix(), name) {
            Ok(s) => s,
            Err(e) => {
                let _ = self.m.release(name);
                self.emit(json!({"event": "error", "instance": name, "message": e}));
                return false;
            }
        };
        {
            let mut o = self.owned();
            o.fences.insert(name.to_string(), fence);
            match state.audit.last() {
                Some(e) => o.audit_heads.insert(name.to_string(), (e.seq, e.hash.clone())),
                None => o.audit_heads.remove(name),
            };
        }
        let resumed = state.snapshot.is_some();
        let slice = state.snapshot.as_ref().map_or(0, |s| s.snapshot.slice);
        self.emit(json!({"event": "acquired", "instance": name, "node": self.m.node, "fence": fence,
            "slice": slice, "resumed": resumed}));
        let adopted = state.snapshot.map(|snapshot| Adopted { snapshot, journal: state.journal });
        if let Err(e) = self.engine.adopt(name, domain, adopted, initial) {
            self.owned().fences.remove(name);
            let _ = self.m.release(name);
            self.emit(json!({"event": "error", "instance": name, "message": e.to_string()}));
            self.emit(json!({"event": "handed_over", "instance": name, "node": self.m.node}));
            return false;
        }
        self.here().insert(name.to_string());
        // What this node's watchers saw while it did not hold the instance, newest per watcher.
        for (_, o) in self.unheld.remove(name).unwrap_or_default() {
            self.handle_inbound(ved_adapters::Inbound::Observed(o));
        }
        true
    }

    /// Writes what is pending, then lets the instance go so its new owner need not wait
    /// for a lease to lapse. `false`: not now (etcd unreachable, or the release was fenced
    /// out); the node tries again at the next balance period.
    fn hand_over(&mut self, name: &str) -> bool {
        if self.engine.flush().is_err() || !self.engine.is_durable() {
            return false;
        }
        if self.m.release(name).unwrap_or(false) {
            self.let_go(name, "handed_over");
            return true;
        }
        false
    }

    fn let_go(&mut self, name: &str, why: &str) {
        {
            let mut o = self.owned();
            o.fences.remove(name);
            o.audit_heads.remove(name);
        }
        self.here().remove(name);
        self.engine.drop_instance(name);
        self.emit(json!({"event": why, "instance": name, "node": self.m.node}));
    }

    /// Stops acting: the lease may have lapsed, so another node may own everything now.
    pub fn stand_down(&mut self) {
        for name in self.holding() {
            self.let_go(&name, "stood_down");
        }
    }

    /// Graceful leave: write everything, give every instance up, revoke the lease.
    pub fn leave(&mut self) {
        let _ = self.engine.flush();
        for name in self.holding() {
            let _ = self.m.release(&name);
            self.let_go(&name, "handed_over");
        }
        let _ = self.m.leave();
        let node = self.m.node.clone();
        self.emit(json!({"event": "left", "node": node}));
    }
}

/// A node on the wall clock, for the input loop `ved run` uses too.
struct NodeHost<'a, W: Write> {
    node: &'a mut Node<W>,
    clock: WallClock,
}

impl<W: Write> crate::run::Host for NodeHost<'_, W> {
    fn handle(&mut self, input: Input) -> bool {
        match input {
            Input::Inbound(x) => self.node.handle_inbound(x),
            Input::Api(call, reply) => self.node.engine.call(
                call,
                Box::new(move |r| {
                    let _ = reply.send(r);
                }),
            ),
            Input::Shutdown | Input::Eof => return true,
            Input::Durable | Input::Line(..) | Input::ReadError(..) | Input::BadLine(..) => {}
        }
        false
    }

    fn round(&mut self) {
        self.node.step(ved_engine::Clock::now_ms(&self.clock));
    }

    /// Membership changes arrive through the watch, not the channel: look often.
    fn wait(&self) -> Duration {
        Duration::from_millis(10)
    }

    /// An unreachable etcd is waited out (writes and intents wait), never fatal.
    fn failed(&mut self) -> Option<ExitCode> {
        None
    }
}

/// Routes API calls in cluster mode: an instance's calls go to its owner; reads of an
/// instance nobody owns right now (a failover in progress) are answered from etcd.
struct ClusterRoutes {
    m: Arc<Membership>,
    program: Arc<ved_vm::CompiledProgram>,
    /// The instances the program and `ved.toml` declare (not created or deleted at run time).
    fixed: Vec<String>,
    /// Instances this node holds, kept by the node as it takes and lets go of them.
    here: Arc<Mutex<HashSet<String>>>,
}

impl api::Routes for ClusterRoutes {
    fn locate(&self, instance: &str) -> api::Location {
        if self.here.lock().unwrap_or_else(|p| p.into_inner()).contains(instance) {
            return api::Location::Here;
        }
        match self.m.watched_owner(instance) {
            Some(o) if o.node == self.m.node => api::Location::Here,
            Some(o) => match self.m.node_url(&o.node) {
                Some(url) => api::Location::Node(url),
                None => api::Location::Nobody,
            },
            None => api::Location::Nobody,
        }
    }

    fn read(&self, call: &Call) -> Option<Reply> {
        Some(read_from_etcd(&*self.m.etcd, self.m.prefix(), call, Some(&self.m)))
    }

    /// Registers new instances in etcd: durable cluster-wide once answered; the node that
    /// rendezvous hashing picks takes each at its next balance (the watch wakes it).
    fn create(&self, items: Vec<Json>, single: bool) -> Option<Reply> {
        let indexed = |i: usize, r: Reply| if single { r } else { ved_engine::calls::at_index(i, r) };
        if items.is_empty() || items.len() > ved_engine::calls::BATCH_MAX {
            return Some(api::error(400, format!("send 1 to {} instances in one call", ved_engine::calls::BATCH_MAX)));
        }
        let mut news = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let Json::Object(body) = item else {
                return Some(indexed(i, api::error(400, "an instance is a JSON object")));
            };
            let new = match ved_engine::calls::parse_new(&self.program, body) {
                Ok(n) => n,
                Err(r) => return Some(indexed(i, r)),
            };
            if self.fixed.contains(&new.name) || news.iter().any(|(n, _): &(String, Json)| *n == new.name) {
                return Some(indexed(i, api::error(409, format!("an instance named `{}` already exists", new.name))));
            }
            news.push((new.name.clone(), Json::Object(body.clone())));
        }
        let mut created = Vec::new();
        for (i, (name, body)) in news.iter().enumerate() {
            let def = serde_json::to_vec(body).unwrap_or_default();
            match ved_cluster::register_instance(&*self.m.etcd, self.m.prefix(), name, &def) {
                Ok(true) => created.push(json!({"name": name, "domain": body["domain"], "status": "pending"})),
                Ok(false) => {
                    let mut r = indexed(i, api::error(409, format!("an instance named `{name}` already exists")));
                    r.body["created"] = json!(created);
                    return Some(r);
                }
                Err(e) => return Some(api::error(503, format!("cannot register `{name}` in etcd: {e}"))),
            }
        }
        Some(match single {
            true => Reply { status: 201, body: created.pop().unwrap_or_default() },
            false => Reply { status: 201, body: json!({"created": created.len(), "instances": created}) },
        })
    }

    /// Unregisters an instance created through the API; its owner forgets its state.
    fn delete(&self, name: &str) -> Option<Reply> {
        if self.fixed.iter().any(|n| n == name) {
            return Some(api::error(
                409,
                format!("`{name}` is declared by the program or ved.toml; remove it there to delete it"),
            ));
        }
        Some(match ved_cluster::unregister_instance(&*self.m.etcd, self.m.prefix(), name) {
            Ok(true) => Reply { status: 200, body: json!({"name": name, "deleted": true}) },
            Ok(false) => api::error(404, format!("no instance named `{name}` in the cluster")),
            Err(e) => api::error(503, format!("cannot reach etcd: {e}")),
        })
    }
}

/// Answers a read from what etcd holds: the instance list, one instance's last written
/// state, its journal, or every instance's audit chain. Also what `ved inspect
/// --cluster` shows.
pub fn read_from_etcd(kv: &dyn KvStore, prefix: &str, call: &Call, m: Option<&Membership>) -> Reply {
    let unreachable = |e: &dyn std::fmt::Display| api::error(503, format!("cannot read etcd: {e}"));
    let owners = match ved_cluster::owners(kv, prefix) {
        Ok(o) => o,
        Err(e) => return unreachable(&e),
    };
    let owner = |name: &str| owners.get(name).map(|o| o.node.clone());
    match call {
        Call::List | Call::Page(_) => {
            let q = match call {
                Call::Page(q) => q.clone(),
                _ => ved_engine::calls::ListQuery::default(),
            };
            let limit = q.limit.unwrap_or(1000);
            if limit == 0 || limit > ved_engine::calls::BATCH_MAX {
                return api::error(
                    400,
                    format!("`limit` must be between 1 and {}, not {limit}", ved_engine::calls::BATCH_MAX),
                );
            }
            // One range read of every snapshot, in name order (etcd's key order).
            let dir = format!("{}/snapshots/", prefix.trim_end_matches('/'));
            let kvs = match kv.get_prefix(&dir) {
                Ok(k) => k,
                Err(e) => return unreachable(&e),
            };
            let mut list = Vec::new();
            let mut next = None;
            for kv in kvs {
                let Some(name) = kv.key.strip_prefix(&dir) else { continue };
                if q.after.as_deref().is_some_and(|a| name <= a) {
                    continue;
                }
                let Ok(snap) = serde_json::from_slice::<ved_store::SnapshotRecord>(&kv.value) else { continue };
                let status = snap.snapshot.status.as_str();
                if q.domain.as_deref().is_some_and(|d| d != snap.domain())
                    || q.status.as_deref().is_some_and(|s| s != status)
                {
                    continue;
                }
                if list.len() == limit {
                    next = list.last().and_then(|l: &Json| l["name"].as_str().map(str::to_string));
                    break;
                }
                list.push(json!({"name": name, "domain": snap.domain(), "status": status,
                    "slice": snap.snapshot.slice, "owner": owner(name)}));
            }
            Reply { status: 200, body: json!({"instances": list, "next": next}) }
        }
        Call::Get(name) | Call::Journal(name) => {
            let state = match persist_etcd::load(kv, prefix, name) {
                Ok(s) => s,
                Err(e) => return unreachable(&e),
            };
            let Some(snap) = state.snapshot else {
                return api::error(404, format!("no instance named `{name}` in the cluster"));
            };
            if let Call::Journal(_) = call {
                let entries: Vec<Json> = state.journal.iter().filter_map(|e| serde_json::to_value(e).ok()).collect();
                return Reply { status: 200, body: json!({"instance": name, "entries": entries}) };
            }
            let s = &snap.snapshot;
            let fields: Map<String, Json> = snap
                .fields()
                .iter()
                .zip(&s.state)
                .map(|((n, _), v)| (n.clone(), ved_engine::json::to_json(v)))
                .collect();
            Reply {
                status: 200,
                body: json!({"name": name, "domain": snap.domain(), "status": s.status.as_str(), "slice": s.slice,
                    "state": fields, "owner": owner(name), "pending": s.pending.len(),
                    "note": "read from etcd: no node answered for this instance"}),
            }
        }
        Call::Audit => {
            let names = match ved_cluster::list_instances(kv, prefix) {
                Ok(n) => n,
                Err(e) => return unreachable(&e),
            };
            let mut entries = Vec::new();
            for name in names {
                if let Ok(s) = persist_etcd::load(kv, prefix, &name) {
                    entries.extend(s.audit.iter().filter_map(|e| serde_json::to_value(e).ok()));
                }
            }
            Reply { status: 200, body: json!({"entries": entries, "chains": "one per instance"}) }
        }
        Call::Health => match m {
            Some(m) if m.acting() => Reply { status: 200, body: json!({"status": "ok", "node": m.node}) },
            Some(m) => api::error(503, format!("node `{}` is not acting: its lease may have lapsed", m.node)),
            None => Reply { status: 200, body: json!({"status": "ok"}) },
        },
        // Never sent here: `GET /metrics` asks the node's own engine.
        Call::Metrics => api::error(404, "metrics are each node's own: GET /metrics on that node"),
        // The API answers batch calls, paging and deletion with 501 in cluster mode for now.
        Call::Observe { .. } | Call::Create(_) | Call::CreateMany { .. } | Call::ObserveMany(_) | Call::Delete(_) => {
            api::error(503, "no node owns this instance right now; retry shortly")
        }
    }
}

pub fn run_cluster(files: &[PathBuf], config: Option<&Path>, mut opts: RunOptions, c: ClusterOptions) -> ExitCode {
    let mut loaded = match load::load(files) {
        Ok(l) => l,
        Err(code) => return code,
    };
    if let Some(path) = config {
        match load::load_config(&mut loaded, path) {
            Ok(cfg) => opts.config = Some(cfg),
            Err(code) => return code,
        }
    }
    if opts.config.as_ref().is_some_and(|c| c.store.audit_key.is_some()) {
        // Refused, not ignored: an operator who configured a key expects keyed entries.
        eprintln!("error: `[store] audit_key` applies to a data directory; a cluster's audit chains live in etcd and are not keyed");
        eprintln!("  = hint: remove `[store] audit_key` from the config of cluster nodes");
        return crate::exit::code(crate::exit::USAGE);
    }
    let (tx, rx) = mpsc::sync_channel::<Input>(crate::run::INPUT_CAPACITY);
    let tokens = api::Tokens::configured(opts.config.as_ref());
    let here = Arc::new(Mutex::new(HashSet::new()));
    // The routes need the membership, which needs the advertised URL, which needs the bound
    // port: the server starts first and learns its routes once the node has joined.
    let routes: Arc<Mutex<Option<Arc<dyn api::Routes>>>> = Arc::new(Mutex::new(None));
    let hub = Arc::new(crate::run::events::EventHub::new(crate::run::events::EVENTS_KEPT));
    let (addr, _server) = match api::serve_routed(c.listen, tokens, tx.clone(), routes.clone(), Some(hub.clone())) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            eprintln!("  = hint: choose another address with `--listen ADDR`, e.g. 127.0.0.1:0 for any free port");
            return ExitCode::from(1);
        }
    };
    let advertise = c.advertise.clone().unwrap_or_else(|| {
        let ip = if addr.ip().is_unspecified() { "127.0.0.1".to_string() } else { addr.ip().to_string() };
        format!("http://{ip}:{}", addr.port())
    });
    let etcd = match Etcd::with_options(c.endpoints.clone(), ETCD_REQUEST_TIMEOUT, c.etcd.clone()) {
        Ok(e) => Arc::new(e),
        Err(e) => {
            eprintln!("error: {e}");
            return crate::exit::code(crate::exit::USAGE);
        }
    };
    let m = match Membership::join_with(etcd, &c.prefix, &c.node, c.ttl, Some(advertise.clone())) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: cannot join the cluster at {}: {e}", c.endpoints.join(","));
            eprintln!("  = hint: check that etcd is running, that `--cluster` lists its client URLs, and the `--etcd-*` options if it has TLS or authentication");
            return ExitCode::from(1);
        }
    };
    let domains: Vec<String> = loaded.compiled.domains.iter().map(|d| d.name.clone()).collect();
    let fixed: Vec<String> = match &opts.config {
        Some(c) => c.instance_names(&domains).into_iter().map(|(n, _)| n).collect(),
        None => domains,
    };
    *routes.lock().unwrap_or_else(|p| p.into_inner()) =
        Some(Arc::new(ClusterRoutes { m: m.clone(), program: loaded.compiled.clone(), fixed, here: here.clone() }));
    let (inbound_tx, inbound_rx) = ved_adapters::sink();
    let (adapters, watchers) = match &opts.config {
        Some(cfg) => match build_adapters(cfg, &loaded.compiled, inbound_tx.clone()) {
            Ok(x) => x,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(1);
            }
        },
        None => (Adapters::logging(), Vec::new()),
    };
    let resync = opts.config.as_ref().map(|c| c.resync.interval_ms).filter(|ms| *ms > 0).map(Duration::from_millis);
    let out = JsonLines::new(std::io::stdout())
        .with_tap(Box::new(move |seq, instance, line| hub.publish(seq, instance, line)));
    let mut node = match Node::new(m.clone(), loaded, &opts, adapters, out) {
        Ok(n) => n,
        Err(e) => {
            report_start_error(&e);
            return ExitCode::from(1);
        }
    };
    let clock = WallClock::starting_at(0);
    node.engine.set_clock(Box::new(clock.clone()));
    let page = format!("http://{}/", crate::run::browsable(&addr));
    tracing::info!("the live page: {page}");
    node.emit(json!({"event": "listening", "addr": addr.to_string(), "page": page}));
    node.emit(json!({"event": "joined", "node": c.node, "lease": m.lease(), "ttl_s": c.ttl, "url": advertise}));
    let forward_tx = tx.clone();
    std::thread::spawn(move || {
        for x in inbound_rx {
            if forward_tx.send(Input::Inbound(x)).is_err() {
                break;
            }
        }
    });
    // Every node runs every watcher; a reading counts only on the node that owns its
    // instance (see `Node::handle_inbound`). Suited to watchers that probe something remote.
    let watch_stop = Arc::new(AtomicBool::new(false));
    let mut watcher_threads = Vec::new();
    for w in watchers {
        let sink = inbound_tx.clone();
        let stop = watch_stop.clone();
        watcher_threads.push(std::thread::spawn(move || w.run(sink, stop, resync)));
    }
    drop(inbound_tx);
    drop(tx);
    node.share_holdings(here);
    let mut host = NodeHost { node: &mut node, clock };
    let _ = crate::run::wall_clock_loop(&mut host, &rx);
    node.leave();
    crate::run::stop_watchers(&watch_stop, std::mem::take(&mut watcher_threads));
    // As in `ved run`: a command still running for an intent in flight does not outlive the node.
    ved_adapters::exec::kill_running_commands();
    ExitCode::SUCCESS
}
