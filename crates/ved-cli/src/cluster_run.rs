//! `ved run --cluster URLS --node-id N`: this node's share of the program's
//! instances, persisted in etcd (see `ved-cluster`). One thread does the work, in
//! this order, again and again: when the watched node and owner keys changed (or
//! a balance period passed), take or hand over instances; apply adapter results; run the runtime; write each changed
//! instance's snapshot in a fenced transaction; and only then release that
//! instance's intents, each carrying the owner's fencing token.

use crate::load;
use crate::run::{build_adapters, Adapters, RunOptions};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use ved_cluster::etcd::Etcd;
use ved_cluster::{rendezvous, Membership};
use ved_runtime::{Event, Intent, Runtime};
use ved_store::SnapshotRecord;

pub struct ClusterOptions {
    pub endpoints: Vec<String>,
    pub node: String,
    /// Lease TTL in seconds.
    pub ttl: i64,
    /// Key prefix in etcd, so several programs can share one etcd.
    pub prefix: String,
}

/// Instances are balanced whenever the etcd watch reports a change of the node or owner
/// keys, and at least this often regardless (the balance period).
const BALANCE_PERIOD: Duration = Duration::from_secs(1);

/// How long one etcd request may take on one endpoint before it goes to the next.
const ETCD_REQUEST_TIMEOUT: Duration = Duration::from_millis(500);

fn emit(v: serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

struct Node {
    m: Arc<Membership>,
    rt: Runtime,
    program: Arc<ved_vm::CompiledProgram>,
    adapters: Adapters,
    /// Owned instances and their fencing tokens.
    owned: BTreeMap<String, i64>,
    /// Instances whose latest state is not yet written.
    dirty: BTreeSet<String>,
    /// Intents waiting for their instance's snapshot to be written.
    held: BTreeMap<String, Vec<Intent>>,
    clock_base: u64,
    started: Instant,
    /// Per instance, the fields `ved.toml`'s watchers feed (confirmed by readings).
    watched: BTreeMap<String, Vec<u16>>,
}

impl Node {
    fn now(&self) -> u64 {
        self.clock_base + self.started.elapsed().as_millis() as u64
    }

    fn snapshot_bytes(&self, name: &str) -> Option<Vec<u8>> {
        let inst = self.rt.instance(name)?;
        let dom = &self.program.domains[inst.domain];
        serde_json::to_vec(&SnapshotRecord::from_snapshot(inst.snapshot(), &dom.name, &dom.fields)).ok()
    }

    fn drop_instance(&mut self, name: &str, why: &str) {
        self.rt.remove_instance(name);
        self.owned.remove(name);
        self.dirty.remove(name);
        self.held.remove(name);
        emit(json!({"event": why, "instance": name, "node": self.m.node}));
    }

    /// Takes the instances rendezvous hashing gives this node; hands over the others.
    fn rebalance(&mut self) {
        let nodes = self.m.live_nodes();
        let names: Vec<String> = self.program.domains.iter().map(|d| d.name.clone()).collect();
        for (d, name) in names.iter().enumerate() {
            let desired = rendezvous(name, &nodes);
            let mine = self.owned.contains_key(name);
            if mine && desired.is_some_and(|n| n != self.m.node) {
                // A node joined that this instance now belongs to: write it, then let go.
                if let Some(bytes) = self.snapshot_bytes(name) {
                    if self.m.save(name, &bytes).unwrap_or(false) && self.m.release(name).unwrap_or(false) {
                        self.drop_instance(name, "handed_over");
                    }
                }
            } else if !mine && desired == Some(self.m.node.as_str()) {
                match self.m.watched_owner(name) {
                    None => {
                        if let Ok(Some(fence)) = self.m.acquire(name) {
                            self.take(name, d, fence);
                        }
                    }
                    // Acquired by a request whose answer was lost: it is this node's.
                    Some(o) if self.m.is_mine(&o) => self.take(name, d, o.fence),
                    // Its owner hands it over, or its lease lapses: the watch will say.
                    Some(_) => {}
                }
            }
        }
    }

    /// Restores an instance from its last snapshot in etcd (or creates it) after acquiring it.
    fn take(&mut self, name: &str, domain: usize, fence: i64) {
        let snap = match self.m.load(name) {
            Ok(s) => s.and_then(|b| serde_json::from_slice::<SnapshotRecord>(&b).ok()).map(|r| r.snapshot),
            Err(_) => {
                let _ = self.m.release(name);
                return;
            }
        };
        let resumed = snap.is_some();
        let r = match snap {
            Some(s) => {
                // Time continues from the snapshot, so retry deadlines still hold.
                let behind = s.now_ms.saturating_sub(self.now());
                self.clock_base += behind;
                self.rt.restore_instance(s).map(|_| ())
            }
            None => self.rt.create_instance(name, domain, Vec::new()).map(|_| ()),
        };
        if r.is_err() {
            let _ = self.m.release(name);
            return;
        }
        if let Some(fields) = self.watched.get(name) {
            self.rt.set_watched(name, fields.clone());
        }
        self.owned.insert(name.to_string(), fence);
        let slice = self.rt.instance(name).map(|i| i.slice).unwrap_or(0);
        emit(
            json!({"event": "acquired", "instance": name, "node": self.m.node, "fence": fence, "slice": slice, "resumed": resumed}),
        );
        // Intents recorded by the previous owner but never acknowledged go out again, same id.
        let undelivered = self.rt.instance(name).map(|i| i.undelivered()).unwrap_or_default();
        if !undelivered.is_empty() {
            self.release_intents(name, undelivered);
        }
        if !resumed {
            self.dirty.insert(name.to_string());
        }
    }

    fn release_intents(&mut self, name: &str, intents: Vec<Intent>) {
        let fence = self.owned.get(name).copied();
        for i in intents {
            let mut req = ved_adapters::IntentRequest::from_intent(&i);
            req.fence = fence;
            emit(json!({"event": "intent", "instance": name, "id": req.id, "fence": fence, "node": self.m.node}));
            if let Some(outcome) = self.adapters.dispatch(req) {
                let (ok, error) = crate::run::for_runtime(outcome);
                let _ = self.rt.deliver(&i.id, ok, error);
            }
        }
    }

    /// Writes every changed instance; releases its intents once written.
    fn persist(&mut self) {
        for name in std::mem::take(&mut self.dirty) {
            let Some(bytes) = self.snapshot_bytes(&name) else { continue };
            match self.m.save(&name, &bytes) {
                Ok(true) => {
                    let intents = self.held.remove(&name).unwrap_or_default();
                    self.release_intents(&name, intents);
                }
                // Another node owns it now: this one must not act on it again.
                Ok(false) => self.drop_instance(&name, "fenced_out"),
                // etcd is unreachable: keep the intents and try again.
                Err(_) => {
                    self.dirty.insert(name);
                }
            }
        }
    }

    fn run(&mut self) {
        let mut changed: Vec<(String, Vec<Intent>)> = Vec::new();
        self.rt.run_stepwise(|inst, evs| {
            let intents: Vec<Intent> = evs
                .iter()
                .filter_map(|e| match e {
                    Event::Intent(i) => Some(i.clone()),
                    _ => None,
                })
                .collect();
            changed.push((inst.name.to_string(), intents));
        });
        for (name, intents) in changed {
            self.dirty.insert(name.clone());
            self.held.entry(name).or_default().extend(intents);
        }
    }

    /// A watcher's reading, applied if this node owns the instance. Versions are per source
    /// and per node: another node's watcher counts its own readings.
    fn observe(&mut self, o: ved_adapters::Observation) {
        if !self.owned.contains_key(&o.instance) {
            return;
        }
        let Some(idx) = self.rt.index_of(&o.instance) else { return };
        let fields = self.rt.domain_of(idx).fields.clone();
        let mut writes = Vec::new();
        for (field, value) in &o.fields {
            let Some(slot) = fields.iter().position(|(n, _)| n == field) else {
                emit(json!({"event": "error", "instance": o.instance, "message": format!("no field `{field}`")}));
                return;
            };
            match crate::json::from_json(value, &fields[slot].1) {
                Ok(v) => writes.push((slot as u16, v)),
                Err(m) => {
                    emit(json!({"event": "error", "instance": o.instance, "message": format!("field `{field}`: {m}")}));
                    return;
                }
            }
        }
        let source = format!("{}@{}", o.source, self.m.node);
        let r = match o.version {
            Some(v) => self.rt.observe_versioned(&o.instance, writes, &source, v),
            None => self.rt.observe(&o.instance, writes),
        };
        if let Err(e) = r {
            emit(json!({"event": "error", "instance": o.instance, "message": e.to_string()}));
        }
    }

    /// Stops acting: the lease may have lapsed, so another node may own everything now.
    fn stand_down(&mut self) {
        let names: Vec<String> = self.owned.keys().cloned().collect();
        for n in names {
            self.drop_instance(&n, "stood_down");
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
    let etcd = Arc::new(Etcd::new(c.endpoints.clone(), ETCD_REQUEST_TIMEOUT));
    let m = match Membership::join(etcd, &c.prefix, &c.node, c.ttl) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: cannot join the cluster at {}: {e}", c.endpoints.join(","));
            eprintln!("  = hint: check that etcd is running and that `--cluster` lists its client URLs");
            return ExitCode::from(1);
        }
    };
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
    // Every node runs every watcher; a reading counts only on the node that owns its
    // instance (see `observe`). Suited to watchers that probe something remote.
    let resync = opts.config.as_ref().map(|c| c.resync.interval_ms).filter(|ms| *ms > 0).map(Duration::from_millis);
    let watch_stop = Arc::new(AtomicBool::new(false));
    let mut watcher_threads = Vec::new();
    for w in watchers {
        let sink = inbound_tx.clone();
        let stop = watch_stop.clone();
        watcher_threads.push(std::thread::spawn(move || w.run(sink, stop, resync)));
    }
    let mut rt = Runtime::empty(loaded.compiled.clone(), opts.seed);
    if let Some(cfg) = &opts.config {
        rt.policy = ved_runtime::RetryPolicy {
            initial_ms: cfg.retry.initial_ms,
            factor: cfg.retry.factor,
            cap_ms: cfg.retry.cap_ms,
            breaker_after: cfg.retry.breaker_after,
            confirm_ms: cfg.retry.confirm_ms,
        };
    }
    let term = Arc::new(AtomicBool::new(false));
    let t = term.clone();
    std::thread::spawn(move || {
        if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
            rt.block_on(async {
                use tokio::signal::unix::{signal, SignalKind};
                if let (Ok(mut a), Ok(mut b)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
                    tokio::select! { _ = a.recv() => {}, _ = b.recv() => {} }
                    t.store(true, Ordering::SeqCst);
                }
            });
        }
    });
    let mut node = Node {
        m: m.clone(),
        rt,
        program: loaded.compiled.clone(),
        adapters,
        owned: BTreeMap::new(),
        dirty: BTreeSet::new(),
        held: BTreeMap::new(),
        clock_base: 0,
        started: Instant::now(),
        watched: opts.config.as_ref().map(|c| crate::run::watched_fields(c, &loaded.compiled)).unwrap_or_default(),
    };
    emit(json!({"event": "joined", "node": c.node, "lease": m.lease(), "ttl_s": c.ttl}));
    let mut last_balance = Instant::now() - BALANCE_PERIOD;
    let mut balanced_at = u64::MAX;
    loop {
        if term.load(Ordering::SeqCst) {
            // Graceful handover: write everything, give every instance up, revoke the lease.
            node.run();
            node.persist();
            let names: Vec<String> = node.owned.keys().cloned().collect();
            for n in names {
                if let Some(bytes) = node.snapshot_bytes(&n) {
                    let _ = node.m.save(&n, &bytes);
                }
                let _ = node.m.release(&n);
                node.drop_instance(&n, "handed_over");
            }
            crate::run::stop_watchers(&watch_stop, std::mem::take(&mut watcher_threads));
            // As in `ved run`: a command still running for an intent in flight does not outlive the node.
            ved_adapters::exec::kill_running_commands();
            let _ = node.m.leave();
            emit(json!({"event": "left", "node": c.node}));
            return ExitCode::SUCCESS;
        }
        if !node.m.acting() {
            if !node.owned.is_empty() {
                node.stand_down();
            }
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        let changes = node.m.changes();
        if changes != balanced_at || last_balance.elapsed() >= BALANCE_PERIOD {
            balanced_at = changes;
            last_balance = Instant::now();
            node.rebalance();
        }
        // Results from adapters, in the order they came.
        if let Ok(first) = inbound_rx.recv_timeout(Duration::from_millis(10)) {
            let mut batch = vec![first];
            batch.extend(inbound_rx.try_iter());
            for x in batch {
                match x {
                    ved_adapters::Inbound::Result { id, outcome } => {
                        if let Some(iid) = ved_runtime::IntentId::parse(&id) {
                            if node.owned.contains_key(&*iid.instance) {
                                if outcome.is_ok()
                                    && node.rt.instance(&iid.instance).is_some_and(|i| i.awaits_confirmation(&iid))
                                {
                                    ved_adapters::request_reading(&iid.instance);
                                }
                                let (ok, error) = crate::run::for_runtime(outcome);
                                let _ = node.rt.deliver(&iid, ok, error);
                            }
                        }
                    }
                    ved_adapters::Inbound::Observed(o) => node.observe(o),
                    // The audit log is not kept in cluster mode yet: the repair is done, say so.
                    ved_adapters::Inbound::Repaired { instance, source, what } => {
                        eprintln!("{source}: repaired for {instance}: {}", what.join("; "))
                    }
                }
            }
        }
        let now = node.now();
        node.rt.advance_time(now);
        node.run();
        node.persist();
    }
}
