//! Cluster mode, simulated: the same [`Node`] that `ved run --cluster` runs (an
//! engine on fenced etcd persistence, membership, rendezvous balancing), on an
//! in-memory etcd with etcd's compare-and-fence semantics, with time, delivery and
//! faults chosen by a seeded schedule. Nodes crash (dropped without a word), pause
//! past their lease (a stale owner that wakes up and writes), are cut off from etcd
//! and come back, and join; instances are created and deleted through the registry
//! while a node's watch is held back (its events arrive late) or lost (it reads
//! everything again), and while etcd compacts the history a watch would resume from.
//! Checked after every step:
//! - the intents the world receives for an instance never go back to an older fencing
//!   token once a newer one arrived (never two owners at once);
//! - each instance's state in etcd never goes back (no stale write landed);
//! - every beat from 0 up to the last one arrived (nothing lost), duplicates allowed;
//! - a stale owner's first write is refused: it reports `fenced_out`;
//! - a deleted instance's state, once gone from etcd, never comes back.
//!
//! After healing, every declared and registered instance is held by exactly one node,
//! and no deleted one by any.
//!
//! `VED_CLUSTER_SIM_SEEDS=N` runs more seeds (default 100); `VED_CLUSTER_SIM_SEED=S`
//! runs one.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use ved_adapters::{Inbound, IntentRequest};
use ved_cli::cluster_run::Node;
use ved_cli::run::{Adapters, RunOptions};
use ved_cluster::mem::MemEtcd;
use ved_cluster::Membership;
use ved_engine::ManualClock;

const INSTANCES: usize = 4;
const TTL_S: i64 = 2;
const PREFIX: &str = "/sim";

fn program() -> String {
    let mut src = String::new();
    for i in 1..=INSTANCES {
        src.push_str(&format!(
            "domain Beat{i} {{\n  state {{ n: int }}\n  goal n == 1000000000\n  transition beat {{\n    step {{\n      if n < 1000000000 {{\n        emit Pulse.Beat(n)\n        n += 1\n      }}\n    }}\n  }}\n}}\n"
        ));
    }
    src
}

struct SimNode {
    name: String,
    kv: MemEtcd,
    node: Node<Vec<u8>>,
    queue: Arc<Mutex<Vec<IntentRequest>>>,
    clock: ManualClock,
    /// Paused: neither renews nor steps (a stopped process).
    paused: bool,
    /// Its watch events are held back.
    held: bool,
}

impl SimNode {
    fn events(&self) -> Vec<serde_json::Value> {
        String::from_utf8_lossy(self.node.engine.output().get_ref())
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

struct World {
    etcd: MemEtcd,
    nodes: Vec<SimNode>,
    rng: common::Rng,
    joined: usize,
    /// Per instance: the fencing tokens of the intents received, in order, and the beats.
    fences: BTreeMap<String, Vec<i64>>,
    beats: BTreeMap<String, Vec<i64>>,
    /// Per instance: the highest slice etcd ever held.
    high: BTreeMap<String, u64>,
    /// Intents in the air: (node index at send time, request).
    in_air: Vec<(String, IntentRequest)>,
    log: Vec<String>,
    seed: u64,
    /// Across the run: instances resumed by a new owner, and writes fenced out.
    resumed: usize,
    fenced_out: usize,
    /// Instances registered through the registry and not deleted, and those deleted.
    registered: Vec<String>,
    deleted: Vec<String>,
    /// Deleted instances whose state has left etcd: it must not come back.
    gone: Vec<String>,
    created: usize,
    /// Across the run: full reads by nodes' watches after the first, and instances a node
    /// forgot because they were deleted.
    rereads: u64,
    forgotten: usize,
}

impl World {
    fn new(seed: u64) -> World {
        World {
            etcd: MemEtcd::new(),
            nodes: Vec::new(),
            rng: common::Rng(seed),
            joined: 0,
            fences: BTreeMap::new(),
            beats: BTreeMap::new(),
            high: BTreeMap::new(),
            in_air: Vec::new(),
            log: Vec::new(),
            seed,
            resumed: 0,
            fenced_out: 0,
            registered: Vec::new(),
            deleted: Vec::new(),
            gone: Vec::new(),
            created: 0,
            rereads: 0,
            forgotten: 0,
        }
    }

    /// Creates an instance through the registry, as the API does.
    fn register(&mut self, name: &str, domain: &str) {
        let def = serde_json::json!({"name": name, "domain": domain});
        match ved_cluster::register_instance(&self.etcd, PREFIX, name, def.to_string().as_bytes()) {
            Ok(true) => {
                self.log.push(format!("{name} is registered"));
                self.registered.push(name.to_string());
            }
            r => self.fail(&format!("registering {name}: {r:?}")),
        }
    }

    fn unregister(&mut self, k: usize) {
        let name = self.registered.remove(k);
        if ved_cluster::unregister_instance(&self.etcd, PREFIX, &name) != Ok(true) {
            self.fail(&format!("{name} could not be unregistered"));
        }
        self.log.push(format!("{name} is deleted"));
        self.deleted.push(name);
    }

    /// The instances whose state in etcd must never go back.
    fn live_instances(&self) -> Vec<String> {
        (1..=INSTANCES).map(|i| format!("Beat{i}")).chain(self.registered.iter().cloned()).collect()
    }

    /// Counts what a node went through (before it crashes, or at the end).
    fn tally(&mut self, n: &SimNode) {
        for e in n.events() {
            match e["event"].as_str() {
                Some("acquired") if e["resumed"] == true => self.resumed += 1,
                Some("fenced_out") => self.fenced_out += 1,
                Some("deleted") => self.forgotten += 1,
                _ => {}
            }
        }
        self.rereads += n.node.m.resets().saturating_sub(1);
    }

    fn fail(&self, why: &str) -> ! {
        panic!(
            "seed {} (rerun with VED_CLUSTER_SIM_SEED={}): {why}\nlast steps:\n  {}",
            self.seed,
            self.seed,
            self.log.iter().rev().take(400).rev().cloned().collect::<Vec<_>>().join("\n  ")
        );
    }

    fn join(&mut self) {
        self.joined += 1;
        let name = format!("n{}", self.joined);
        let kv = self.etcd.client();
        let m = Membership::join_manual(Arc::new(kv.clone()), PREFIX, &name, TTL_S, None, self.etcd.clock())
            .unwrap_or_else(|e| self.fail(&format!("{name} cannot join: {e}")));
        let loaded =
            ved_cli::load::check_texts(vec![("beats.ved".into(), program())]).unwrap_or_else(|e| panic!("{e}"));
        let queue = Arc::new(Mutex::new(Vec::new()));
        let opts = RunOptions {
            seed: self.seed,
            data_dir: None,
            durability: ved_store::Durability::Fsync,
            recover: false,
            config: None,
            flush: ved_store::Flush::Background,
            limits: Default::default(),
            wall_ms_at_start: None,
            audit_key: None,
        };
        let Ok(mut node) =
            Node::new(m, loaded, &opts, Adapters::manual(queue.clone()), ved_engine::JsonLines::new(Vec::new()))
        else {
            self.fail("a node did not start")
        };
        let clock = ManualClock::default();
        clock.set(self.etcd.now_ms());
        node.engine.set_clock(Box::new(clock.clone()));
        self.log.push(format!("{name} joins"));
        self.nodes.push(SimNode { name, kv, node, queue, clock, paused: false, held: false });
    }

    /// One round for node `i`: renew, step, and collect what it sent.
    fn run_node(&mut self, i: usize) {
        let now = self.etcd.now_ms();
        let n = &mut self.nodes[i];
        if n.paused {
            return;
        }
        n.clock.set(now);
        n.node.m.renew();
        n.node.step(now);
        self.collect(i);
    }

    /// What node `i` sent: each intent must leave from the instance's owner in etcd, under
    /// the owner key's fencing token, at the moment it leaves.
    fn collect(&mut self, i: usize) {
        let n = &self.nodes[i];
        let sent: Vec<IntentRequest> = std::mem::take(&mut *n.queue.lock().unwrap());
        let name = n.name.clone();
        if sent.is_empty() {
            return;
        }
        let owners = ved_cluster::owners(&self.etcd, PREFIX).unwrap_or_default();
        for req in sent {
            let owner = owners.get(&req.instance).map(|o| (o.node.clone(), o.fence));
            // Owner when it left: still the owner, or it handed the instance over (or forgot it,
            // deleted) right after, in the same round, after a last write under its ownership.
            let owns = owner == Some((name.clone(), req.fence.unwrap_or(-1)));
            let handed_over = || {
                let events = self.nodes[i].events();
                let sent_at = events.iter().rposition(|e| e["event"] == "intent" && e["id"] == req.id.as_str());
                sent_at.is_some_and(|k| {
                    events[k..].iter().any(|e| {
                        (e["event"] == "handed_over" || e["event"] == "deleted")
                            && e["instance"] == req.instance.as_str()
                    })
                })
            };
            if !owns && !handed_over() {
                let evs: Vec<String> =
                    self.nodes[i].events().iter().rev().take(25).rev().map(|e| e.to_string()).collect();
                let why = format!(
                    "{name} sent {} with fence {:?} while etcd says the owner is {owner:?}; its last events:\n    {}",
                    req.id,
                    req.fence,
                    evs.join("\n    ")
                );
                self.fail(&why);
            }
            self.log.push(format!("{name} sends {} (fence {:?})", req.id, req.fence));
            self.in_air.push((name.clone(), req));
        }
    }

    /// The world receives an intent: it checks its fence, counts the beat, and answers.
    fn deliver(&mut self, k: usize) {
        let (from, req) = self.in_air.remove(k);
        let instance = req.instance.clone();
        let fence = req.fence.unwrap_or_else(|| self.fail("an intent without a fencing token"));
        let seen = self.fences.entry(instance.clone()).or_default();
        let n = req.args.first().and_then(|a| a.as_i64()).unwrap_or(-1);
        // A message from an earlier owner that arrives late (it was sent when that owner
        // was the owner) is refused by its fencing token, as `Ved-Fence` lets a receiver do.
        let stale = seen.last().is_some_and(|&last| fence < last);
        let outcome = if stale {
            self.log.push(format!("world refuses late {} (fence {fence}) from {from}", req.id));
            Err(ved_adapters::ActionError::rejected("stale fencing token"))
        } else {
            seen.push(fence);
            self.beats.entry(instance.clone()).or_default().push(n);
            self.log.push(format!("world gets {} (beat {n}, fence {fence}) from {from}", req.id));
            Ok(())
        };
        if let Some(k) = self.nodes.iter().position(|x| x.name == from) {
            self.nodes[k].node.handle_inbound(Inbound::Result { id: req.id.clone(), outcome });
            self.collect(k);
        }
    }

    fn check(&mut self) {
        for name in self.deleted.clone() {
            let there = ved_cluster::KvStore::get(&self.etcd, &format!("{PREFIX}/snapshots/{name}"));
            let there = there.unwrap_or_else(|e| self.fail(&e.to_string())).is_some();
            if there && self.gone.contains(&name) {
                self.fail(&format!("{name}: deleted, its state left etcd and came back"));
            }
            if !there && !self.gone.contains(&name) {
                self.gone.push(name);
            }
        }
        for name in self.live_instances() {
            let Ok(Some(kv)) = ved_cluster::KvStore::get(&self.etcd, &format!("{PREFIX}/snapshots/{name}")) else {
                continue;
            };
            let Ok(snap) = serde_json::from_slice::<ved_store::SnapshotRecord>(&kv.value) else {
                self.fail(&format!("{name}: an unreadable snapshot in etcd"))
            };
            let high = self.high.entry(name.clone()).or_default();
            if snap.snapshot.slice < *high {
                let why = format!("{name}: etcd went back from slice {high} to {}: a stale write", snap.snapshot.slice);
                self.fail(&why);
            }
            *high = snap.snapshot.slice;
        }
        for (inst, beats) in &self.beats {
            let mut b = beats.clone();
            b.sort();
            b.dedup();
            if b.iter().enumerate().any(|(i, n)| *n != i as i64) {
                self.fail(&format!("{inst}: a beat was lost: {b:?}"));
            }
        }
    }

    fn step(&mut self) {
        match self.rng.below(100) as u64 {
            // Time passes.
            0..=29 => {
                let ms = 50 + self.rng.below(400) as u64;
                self.etcd.advance_ms(ms);
                self.log.push(format!("+{ms} ms (now {})", self.etcd.now_ms()));
            }
            // Intents arrive, in any order.
            30..=64 if !self.in_air.is_empty() => {
                let k = self.rng.below(self.in_air.len());
                self.deliver(k);
            }
            // A node crashes: gone without a word; its lease runs out.
            65..=67 if self.nodes.len() > 1 => {
                let k = self.rng.below(self.nodes.len());
                let n = self.nodes.remove(k);
                self.tally(&n);
                self.log.push(format!("{} crashes holding {:?}", n.name, n.node.holding()));
                self.in_air.retain(|(from, _)| *from != n.name);
            }
            // A node pauses (SIGSTOP) or wakes up.
            68..=71 => {
                let k = self.rng.below(self.nodes.len());
                self.nodes[k].paused = !self.nodes[k].paused;
                let what = if self.nodes[k].paused { "pauses" } else { "wakes up" };
                self.log.push(format!("{} {what}", self.nodes[k].name));
            }
            // A node is cut off from etcd, or reaches it again.
            72..=74 => {
                let k = self.rng.below(self.nodes.len());
                let reach = !self.nodes[k].kv.is_reachable();
                self.nodes[k].kv.set_reachable(reach);
                let what = if reach { "reaches etcd again" } else { "is cut off from etcd" };
                self.log.push(format!("{} {what}", self.nodes[k].name));
            }
            75..=76 if self.nodes.len() < 4 => self.join(),
            // An instance is created or deleted through the registry.
            77..=78 if self.registered.len() < 8 => {
                self.created += 1;
                let (name, domain) = (format!("r{}", self.created), format!("Beat{}", 1 + self.created % INSTANCES));
                self.register(&name, &domain);
            }
            79 if !self.registered.is_empty() => {
                let k = self.rng.below(self.registered.len());
                self.unregister(k);
            }
            // A node's watch falls behind (its events arrive late), or catches up.
            80..=81 => {
                let k = self.rng.below(self.nodes.len());
                let n = &mut self.nodes[k];
                n.held = !n.held;
                n.kv.hold_watches(n.held);
                let what = if n.held { "'s watch falls behind" } else { "'s watch catches up" };
                self.log.push(format!("{}{what}", n.name));
            }
            // A node's watch is lost: what it had on the way is dropped, and it reads everything.
            82 => {
                let k = self.rng.below(self.nodes.len());
                self.nodes[k].kv.lose_watches();
                self.log.push(format!("{} loses its watch", self.nodes[k].name));
            }
            // etcd compacts: a watch cut off meanwhile cannot resume and reads everything.
            83 => {
                self.etcd.compact();
                self.log.push("etcd compacts its history".into());
            }
            _ => {
                let k = self.rng.below(self.nodes.len());
                self.run_node(k);
            }
        }
        self.check();
    }

    /// Everyone wakes, reaches etcd and runs until every instance beats again.
    fn heal(&mut self) {
        for n in &mut self.nodes {
            n.paused = false;
            n.held = false;
            n.kv.set_reachable(true);
            n.kv.hold_watches(false);
        }
        self.log.push("all heal".into());
        for _ in 0..60 {
            self.etcd.advance_ms(100);
            for i in 0..self.nodes.len() {
                self.run_node(i);
            }
            // What is in the air now arrives; what that releases goes next round.
            for _ in 0..self.in_air.len() {
                self.deliver(0);
            }
            self.check();
        }
        // Each instance's journal and audit chain moved with it: the journal is contiguous
        // history up to the snapshot, and the audit chain verifies.
        for i in 1..=INSTANCES {
            let name = format!("Beat{i}");
            let state = ved_engine::persist_etcd::load(&self.etcd, PREFIX, &name)
                .unwrap_or_else(|e| self.fail(&format!("{name}: {e}")));
            let snap = state.snapshot.unwrap_or_else(|| self.fail(&format!("{name}: no snapshot")));
            let slices: Vec<u64> = state.journal.iter().map(|e| e.slice).collect();
            if slices.windows(2).any(|w| w[0] >= w[1]) || slices.last().is_some_and(|l| *l > snap.snapshot.slice) {
                self.fail(&format!("{name}: journal slices out of order or ahead of the snapshot: {slices:?}"));
            }
            if slices.len() < 10 {
                self.fail(&format!("{name}: the journal kept only {} entries", slices.len()));
            }
        }
        let mut held: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for n in &self.nodes {
            for i in n.node.holding() {
                held.entry(i).or_default().push(n.name.clone());
            }
        }
        for name in self.live_instances() {
            match held.remove(&name) {
                Some(by) if by.len() == 1 => {}
                by => self.fail(&format!("after healing, {name} is held by {by:?}, not by one node")),
            }
        }
        if !held.is_empty() {
            self.fail(&format!("after healing, deleted instances are still held: {held:?}"));
        }
    }
}

/// What one seed went through.
#[derive(Default)]
struct Tally {
    resumed: usize,
    fenced_out: usize,
    rereads: u64,
    forgotten: usize,
}

/// Runs one seed.
fn run_seed(seed: u64) -> Tally {
    let mut w = World::new(seed);
    for _ in 0..3 {
        w.join();
    }
    for _ in 0..500 {
        w.step();
    }
    w.heal();
    for n in std::mem::take(&mut w.nodes) {
        w.tally(&n);
    }
    Tally { resumed: w.resumed, fenced_out: w.fenced_out, rereads: w.rereads, forgotten: w.forgotten }
}

#[test]
fn simulated_cluster_runs_keep_one_owner_per_instance_and_lose_nothing() {
    if let Ok(s) = std::env::var("VED_CLUSTER_SIM_SEED") {
        run_seed(s.parse().expect("a seed"));
        return;
    }
    let seeds: u64 = std::env::var("VED_CLUSTER_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(100);
    let mut all = Tally::default();
    for seed in 0..seeds {
        let t = run_seed(seed);
        all.resumed += t.resumed;
        all.fenced_out += t.fenced_out;
        all.rereads += t.rereads;
        all.forgotten += t.forgotten;
    }
    let Tally { resumed, fenced_out, rereads, forgotten } = all;
    eprintln!(
        "{seeds} seeds: {resumed} instances resumed by a new owner, {fenced_out} writes fenced out, \
         {rereads} full reads after a lost watch, {forgotten} deleted instances forgotten by their owner"
    );
    // The schedule must reach the cases it exists for: failovers, stale owners, lost
    // watches that read everything again, and deletions the owner acts on.
    assert!(resumed >= seeds as usize, "only {resumed} failovers in {seeds} seeds");
    assert!(fenced_out > 0, "no stale owner was fenced out in {seeds} seeds");
    assert!(rereads >= seeds, "only {rereads} full reads after a lost watch in {seeds} seeds");
    assert!(forgotten > 0, "no deleted instance was forgotten by its owner in {seeds} seeds");
}

/// The stale owner, step by step: a node paused past its lease wakes up believing it
/// still owns its instances; its first write is refused, it reports `fenced_out`, and
/// nothing it meant to send leaves.
#[test]
fn a_stale_owner_that_wakes_up_is_fenced_out_and_sends_nothing() {
    let mut w = World::new(7);
    w.join();
    for _ in 0..5 {
        w.run_node(0);
        // Leave the last round's intents in the air: their results reach n1 after it wakes.
        if w.in_air.len() > INSTANCES {
            while w.in_air.len() > INSTANCES {
                w.deliver(0);
            }
        }
    }
    assert_eq!(w.nodes[0].node.holding().len(), INSTANCES, "the only node holds everything");
    // n1 stops; n2 joins; the lease of n1 lapses and n2 takes everything.
    w.nodes[0].paused = true;
    w.join();
    for _ in 0..40 {
        w.etcd.advance_ms(200);
        w.run_node(1);
        while let Some(k) = w.in_air.iter().position(|(from, _)| from == "n2") {
            w.deliver(k);
        }
    }
    assert_eq!(w.nodes[1].node.holding().len(), INSTANCES, "the survivor took everything");
    let newest = w.fences.clone();
    // n1 wakes up and, before it renews, runs: a result it was waiting for arrives.
    w.nodes[0].paused = false;
    let n1 = &mut w.nodes[0];
    assert!(n1.node.m.acting(), "n1 has not noticed yet");
    let held = n1.node.holding();
    assert_eq!(held.len(), INSTANCES, "n1 still believes it owns everything");
    let pending: Vec<String> = w.in_air.iter().filter(|(f, _)| f == "n1").map(|(_, r)| r.id.clone()).collect();
    for id in &pending {
        w.nodes[0].node.handle_inbound(Inbound::Result { id: id.clone(), outcome: Ok(()) });
    }
    w.in_air.retain(|(f, _)| f != "n1");
    // Nothing of n1's may be released now: `collect` would fail the test if it were.
    let sent = std::mem::take(&mut *w.nodes[0].queue.lock().unwrap());
    assert!(sent.is_empty(), "the stale owner sent {sent:?}");
    let fenced: Vec<String> = w.nodes[0]
        .events()
        .iter()
        .filter(|e| e["event"] == "fenced_out")
        .filter_map(|e| e["instance"].as_str().map(str::to_string))
        .collect();
    assert!(!pending.is_empty(), "n1 had results in flight");
    assert!(!fenced.is_empty(), "the stale owner's writes were refused and it said so");
    for i in &fenced {
        assert!(!w.nodes[0].node.holding().contains(i), "{i} was dropped");
    }
    w.check();
    assert_eq!(w.fences, newest, "nothing reached the world from the stale owner");
}

#[test]
fn a_reading_that_arrives_before_the_node_holds_its_instance_is_applied_once_it_does() {
    // Every node runs every watcher, and a reading counts only on the instance's owner. A
    // watcher repeats an unchanged reading only at its resync (60 s by default): a reading
    // that reached the next owner just before it took the instance (ownership moving under
    // load) used to be dropped, and the failover it reported waited for the resync.
    let mut w = World::new(11);
    w.join();
    assert!(w.nodes[0].node.holding().is_empty(), "n1 holds nothing before its first round");
    let mut fields = serde_json::Map::new();
    fields.insert("n".into(), serde_json::json!(1_000_000_000));
    let reading =
        ved_adapters::Observation { instance: "Beat1".into(), fields, source: "probe".into(), version: Some(1) };
    w.nodes[0].node.handle_inbound(Inbound::Observed(reading));
    for _ in 0..5 {
        w.run_node(0);
    }
    assert!(w.nodes[0].node.holding().contains(&"Beat1".to_string()), "n1 took Beat1");
    let inst = w.nodes[0].node.engine.runtime().instance("Beat1").expect("Beat1 runs on n1");
    assert_eq!(inst.state[0], ved_vm::Value::Int(1_000_000_000), "the reading was applied once n1 held Beat1");
}

/// Instances created at run time (registered in etcd) are balanced like the program's: a
/// joining node takes its share in batches of at most `MOVES_PER_ROUND`, the instances
/// that stay keep beating between the batches, and a deleted one is forgotten with its state.
#[test]
fn registered_instances_move_in_batches_and_deleted_ones_are_forgotten() {
    let mut w = World::new(11);
    w.join();
    let count = 200;
    for i in 0..count {
        let def = serde_json::json!({"name": format!("r{i}"), "domain": "Beat1"});
        let ok = ved_cluster::register_instance(&w.etcd, PREFIX, &format!("r{i}"), def.to_string().as_bytes());
        assert_eq!(ok, Ok(true));
    }
    let total = count + INSTANCES;
    // One node takes everything, a batch per round.
    let mut rounds = 0;
    while w.nodes[0].node.holding().len() < total {
        let before = w.nodes[0].node.holding().len();
        w.run_node(0);
        let taken = w.nodes[0].node.holding().len() - before;
        assert!(taken <= ved_cli::cluster_run::MOVES_PER_ROUND, "{taken} taken in one round");
        rounds += 1;
        assert!(rounds < 100, "the node never took all {total} instances");
    }
    assert!(rounds >= count / ved_cli::cluster_run::MOVES_PER_ROUND, "the move went in batches: {rounds} rounds");
    // A second node joins: it takes its share in batches while n1 keeps running the rest.
    w.join();
    let mut n2_rounds = 0;
    loop {
        w.etcd.advance_ms(10);
        let before = w.nodes[1].node.holding().len();
        w.run_node(1);
        let taken = w.nodes[1].node.holding().len() - before;
        assert!(taken <= ved_cli::cluster_run::MOVES_PER_ROUND, "{taken} taken in one round");
        // n1 hands over in batches too, and beats what it still holds in between.
        let beats_before = w.beats.values().map(Vec::len).sum::<usize>();
        w.run_node(0);
        for _ in 0..w.in_air.len() {
            w.deliver(0);
        }
        let held = w.nodes[0].node.holding().len() + w.nodes[1].node.holding().len();
        if held == total && w.nodes[1].node.holding().len() > total / 4 {
            break;
        }
        assert!(w.beats.values().map(Vec::len).sum::<usize>() >= beats_before);
        n2_rounds += 1;
        assert!(n2_rounds < 200, "the share never settled");
    }
    w.check();
    // Delete a registered instance: its owner forgets it, state and all.
    let victim = w.nodes[1].node.holding().into_iter().find(|n| n.starts_with('r')).expect("n2 holds a registered one");
    assert_eq!(ved_cluster::unregister_instance(&w.etcd, PREFIX, &victim), Ok(true));
    w.run_node(1);
    assert!(!w.nodes[1].node.holding().contains(&victim), "{victim} was dropped");
    let gone = ved_engine::persist_etcd::load(&w.etcd, PREFIX, &victim).unwrap();
    assert!(gone.snapshot.is_none() && gone.journal.is_empty(), "{victim}'s state is gone");
    assert!(w.nodes[1].events().iter().any(|e| e["event"] == "deleted" && e["instance"] == victim.as_str()));
}

/// A node's rounds read nothing from etcd that grows with the fleet: the registry is read
/// once, by the watch's first full read, and kept from the watch's changes after that. The
/// same rounds (time passing over several balance periods, an instance created, taken and
/// deleted) cost the same reads with 10 registered instances as with 10,000.
#[test]
fn a_nodes_reads_from_etcd_do_not_grow_with_the_registry() {
    fn measure(count: usize) -> (u64, u64) {
        let mut w = World::new(5);
        for i in 0..count {
            w.register(&format!("r{i}"), "Beat1");
        }
        w.join();
        let total = count + INSTANCES;
        let mut rounds = 0;
        while w.nodes[0].node.holding().len() < total {
            w.run_node(0);
            rounds += 1;
            assert!(rounds <= total / ved_cli::cluster_run::MOVES_PER_ROUND + 10, "{total} never all taken");
        }
        assert_eq!(w.nodes[0].node.registered(), count);
        let before = w.nodes[0].kv.reads();
        for round in 0..40 {
            w.etcd.advance_ms(100);
            match round {
                10 => w.register("late", "Beat2"),
                20 => w.unregister(w.registered.iter().position(|n| n == "late").unwrap()),
                _ => {}
            }
            w.run_node(0);
            if (11..20).contains(&round) {
                assert!(w.nodes[0].node.holding().contains(&"late".to_string()), "late was taken");
            }
        }
        assert!(!w.nodes[0].node.holding().contains(&"late".to_string()), "late was forgotten");
        assert_eq!(w.nodes[0].node.m.resets(), 1, "the watch read everything once, at the start");
        let after = w.nodes[0].kv.reads();
        (after.0 - before.0, after.1 - before.1)
    }
    let small = measure(10);
    let large = measure(10_000);
    assert_eq!(small, large, "(reads, keys read) over the same rounds, 10 vs 10,000 registered instances");
    // Taking `late` reads its (empty) state once; nothing else is read.
    assert_eq!(small, (1, 0));
}

/// A node whose watch is late sees creations and deletions late and catches up; one whose
/// watch is lost reads everything once more and replaces its registry with what it read:
/// it takes what was created meanwhile and forgets what was deleted meanwhile.
#[test]
fn a_node_whose_watch_is_late_or_lost_catches_up_with_the_registry() {
    let mut w = World::new(3);
    w.register("a", "Beat1");
    w.register("b", "Beat2");
    w.join();
    for _ in 0..3 {
        w.run_node(0);
    }
    let holds = |w: &World, name: &str| w.nodes[0].node.holding().contains(&name.to_string());
    assert!(holds(&w, "a") && holds(&w, "b"));
    // Late: changes wait in the stream; the node acts on them once they arrive.
    w.nodes[0].kv.hold_watches(true);
    w.register("c", "Beat3");
    w.unregister(0); // a
    for _ in 0..3 {
        w.run_node(0);
    }
    assert!(holds(&w, "a") && !holds(&w, "c"), "nothing seen yet");
    w.nodes[0].kv.hold_watches(false);
    w.run_node(0);
    assert!(!holds(&w, "a") && holds(&w, "c"), "caught up");
    assert_eq!(w.nodes[0].node.m.resets(), 1);
    // Lost: what was on its way is dropped, and the watch reads everything again.
    w.nodes[0].kv.hold_watches(true);
    w.register("d", "Beat4");
    w.unregister(0); // b
    w.nodes[0].kv.lose_watches();
    w.nodes[0].kv.hold_watches(false);
    w.run_node(0);
    assert_eq!(w.nodes[0].node.m.resets(), 2, "one more full read");
    assert!(!holds(&w, "b") && holds(&w, "c") && holds(&w, "d"), "{:?}", w.nodes[0].node.holding());
    assert_eq!(w.nodes[0].node.registered(), 2);
    // Cut off while etcd compacts: no resuming where it stopped, so one more full read.
    w.nodes[0].kv.set_reachable(false);
    w.unregister(0); // c
    w.etcd.compact();
    w.nodes[0].kv.set_reachable(true);
    w.run_node(0);
    assert_eq!(w.nodes[0].node.m.resets(), 3);
    assert!(!holds(&w, "c") && holds(&w, "d"));
    // Cut off without compaction: it resumes from the change it missed, reading nothing.
    w.nodes[0].kv.set_reachable(false);
    w.register("e", "Beat1");
    w.nodes[0].kv.set_reachable(true);
    w.run_node(0);
    assert_eq!(w.nodes[0].node.m.resets(), 3, "resumed, no full read");
    assert!(holds(&w, "e"));
    w.check();
}
