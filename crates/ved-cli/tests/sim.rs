//! Deterministic simulation of the runtime and the store, in the manner of
//! FoundationDB and TigerBeetle: one seed decides everything that happens:
//! random observations (absolute and relative), intents that fail, are delayed,
//! are answered twice, out of order, or several together (queued at once, so
//! the runtime applies them before any tick), clock jumps, and crashes, some of them in the middle of a write that the
//! crash tears. The real driver, runtime and store run it (the store in manual
//! flush mode, so the simulation decides when writes happen).
//!
//! After every step it checks that no state went backwards past what was
//! durable, and that no intent left before the slice that emitted it was
//! durable (output commit). Once the faults stop it checks that every recorded
//! intent gets delivered and that the goals are reached.
//!
//! `cargo test` runs 200 seeds per program; `VED_SIM_SEEDS=N` runs N;
//! `VED_SIM_SEED=S` replays one. A failure prints the command that replays it.

mod common;

use common::{root, Rng};
use serde_json::{json, Value as Json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use ved_adapters::{Inbound, IntentRequest};
use ved_cli::run::{Adapters, Driver, RunOptions};
use ved_runtime::Status;

/// The files of the store that a crash may tear, as they were after the last flush.
#[derive(Clone)]
struct DurableFiles {
    log: PathBuf,
    log_len: u64,
    audit_len: u64,
    manifest: Vec<u8>,
}

/// A field and the values an observation may give it.
type FieldCandidates = (String, Vec<Json>);

struct Sim {
    seed: u64,
    /// The test that runs this program, for the replay command.
    test: &'static str,
    program: PathBuf,
    dir: PathBuf,
    rng: Rng,
    queue: Arc<Mutex<Vec<IntentRequest>>>,
    /// Intents handed over so far (the queue only grows; taken ones are marked).
    seen: usize,
    /// Intents waiting for a result in the simulated world: index into `queue`'s history.
    outstanding: Vec<IntentRequest>,
    driver: Option<Driver<Vec<u8>>>,
    /// Per instance, the highest slice known durable.
    durable: BTreeMap<String, u64>,
    files: Option<DurableFiles>,
    /// Field values an observation may report, per instance: (field, candidates).
    candidates: Vec<(String, Vec<FieldCandidates>)>,
    line: u64,
    log: Vec<String>,
}

fn opts(dir: &Path) -> RunOptions {
    RunOptions {
        seed: 7,
        data_dir: Some(dir.to_path_buf()),
        durability: ved_store::Durability::None,
        recover: false,
        config: None,
        flush: ved_store::Flush::Manual,
        limits: Default::default(),
        wall_ms_at_start: None,
        audit_key: None,
    }
}

impl Sim {
    fn new(program: &str, test: &'static str, seed: u64) -> Sim {
        let program = root().join(program);
        let dir = std::env::temp_dir().join(format!(
            "ved-sim-{}-{}-{seed}",
            std::process::id(),
            program.file_stem().unwrap().to_string_lossy()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let loaded =
            ved_cli::load::load(std::slice::from_ref(&program)).unwrap_or_else(|_| panic!("the program loads"));
        let mut candidates = Vec::new();
        for (d, c) in loaded.program.domains.iter().zip(&loaded.compiled.domains) {
            let bounds = ved_verify::bounds::field_bounds(d, c, ved_verify::Shape { margin: 1, max_len: 2 }).unwrap();
            let fields = bounds
                .into_iter()
                .map(|b| (b.field, b.values.iter().map(ved_cli::json::to_json).collect::<Vec<_>>()))
                .collect();
            candidates.push((d.name.clone(), fields));
        }
        let mut sim = Sim {
            seed,
            test,
            program,
            dir,
            rng: Rng(seed),
            queue: Arc::new(Mutex::new(Vec::new())),
            seen: 0,
            outstanding: Vec::new(),
            driver: None,
            durable: BTreeMap::new(),
            files: None,
            candidates,
            line: 0,
            log: Vec::new(),
        };
        sim.start();
        sim
    }

    fn fail(&self, what: &str) -> ! {
        let tail: Vec<&String> = self.log.iter().rev().take(400).collect::<Vec<_>>().into_iter().rev().collect();
        panic!(
            "simulation seed {} of {} failed: {what}\nlast steps:\n  {}\nreplay: VED_SIM_SEED={} cargo test -p ved-cli --test sim {} -- --nocapture",
            self.seed,
            self.program.display(),
            tail.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n  "),
            self.seed,
            self.test
        )
    }

    fn driver(&mut self) -> &mut Driver<Vec<u8>> {
        self.driver.as_mut().expect("running")
    }

    fn slices(&self) -> BTreeMap<String, u64> {
        let d = self.driver.as_ref().expect("running");
        d.runtime().instances().iter().map(|i| (i.name.to_string(), i.slice)).collect()
    }

    /// Starts (or restarts) the driver on the data directory.
    fn start(&mut self) {
        let loaded =
            ved_cli::load::load(std::slice::from_ref(&self.program)).unwrap_or_else(|_| panic!("the program loads"));
        let driver = match Driver::start(
            loaded,
            &opts(&self.dir),
            Adapters::manual(self.queue.clone()),
            ved_cli::run::JsonLines::new(Vec::new()),
            Box::new(|_| {}),
        ) {
            Ok(d) => d,
            Err(_) => self.fail("the driver refused to start on the simulated disk"),
        };
        self.driver = Some(driver);
        // No state goes backwards: everything durable before the crash is still there.
        let now = self.slices();
        for (inst, durable) in self.durable.clone() {
            let got = now.get(&inst).copied().unwrap_or(0);
            if got < durable {
                self.fail(&format!("`{inst}` restarted at slice {got}, but slice {durable} was durable"));
            }
        }
        // Opening the store syncs what it recovered, so that is durable now (intents re-sent
        // after a restart may belong to any of these slices).
        for (inst, s) in now {
            let e = self.durable.entry(inst).or_insert(0);
            *e = (*e).max(s);
        }
        self.record_files();
        self.check_output_commit();
    }

    /// Output commit: every intent handed over so far belongs to a durable slice.
    fn check_output_commit(&mut self) {
        let new: Vec<IntentRequest> = self.queue.lock().unwrap()[self.seen..].to_vec();
        self.seen += new.len();
        for i in new {
            let slice = ved_runtime::IntentId::parse(&i.id).map_or(u64::MAX, |id| id.slice);
            let durable = self.durable.get(&i.instance).copied().unwrap_or(0);
            if slice > durable {
                self.fail(&format!("intent {} left before its slice was durable (durable: {durable})", i.id));
            }
            self.log.push(format!("handed over {} {}.{}({:?})", i.id, i.adapter, i.action, i.args));
            self.outstanding.push(i);
        }
    }

    fn record_files(&mut self) {
        let mut logs: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                let n = p.file_name().unwrap().to_string_lossy().to_string();
                n.starts_with("log-") && !n.ends_with(".tmp")
            })
            .collect();
        logs.sort();
        let log = logs.pop().expect("a log file");
        let len = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        self.files = Some(DurableFiles {
            log_len: len(&log),
            log,
            audit_len: len(&self.dir.join("audit.log")),
            manifest: std::fs::read(self.dir.join("manifest")).unwrap(),
        });
    }

    fn flush(&mut self) {
        let before = self.slices();
        if let Err(e) = self.driver().flush() {
            self.fail(&format!("flush failed: {e}"));
        }
        for (inst, s) in before {
            let e = self.durable.entry(inst).or_insert(0);
            *e = (*e).max(s);
        }
        self.record_files();
        self.log.push("flush".into());
        self.check_output_commit();
    }

    /// A random observation: instance and the values it reports.
    fn reading(&mut self) -> (String, serde_json::Map<String, Json>) {
        let (inst, fields) = self.candidates[self.rng.below(self.candidates.len())].clone();
        let mut set = serde_json::Map::new();
        for _ in 0..1 + self.rng.below(2) {
            let (f, vals) = &fields[self.rng.below(fields.len())];
            if !vals.is_empty() {
                set.insert(f.clone(), vals[self.rng.below(vals.len())].clone());
            }
        }
        (inst, set)
    }

    fn observe(&mut self) {
        let (inst, fields) = self.candidates[self.rng.below(self.candidates.len())].clone();
        // Sometimes a relative change of an int field (`add`), which replay must feed as such.
        let ints: Vec<&String> =
            fields.iter().filter(|(_, v)| v.first().is_some_and(Json::is_i64)).map(|(f, _)| f).collect();
        if !ints.is_empty() && self.rng.percent(20) {
            let f = ints[self.rng.below(ints.len())].clone();
            let delta = if self.rng.percent(50) { 1 } else { -1 };
            let line = json!({"instance": inst, "add": {f: delta}}).to_string();
            self.line += 1;
            self.log.push(format!("observe {line}"));
            let n = self.line;
            self.driver().handle_line(n, &line);
            self.check_output_commit();
            return;
        }
        let (inst, set) = self.reading();
        let line = json!({"instance": inst, "set": set}).to_string();
        self.line += 1;
        self.log.push(format!("observe {line}"));
        let n = self.line;
        self.driver().handle_line(n, &line);
        self.check_output_commit();
    }

    fn advance(&mut self, ms: u64) {
        self.line += 1;
        self.log.push(format!("advance {ms} ms"));
        let n = self.line;
        self.driver().handle_line(n, &format!("{{\"advance_ms\": {ms}}}"));
        self.check_output_commit();
    }

    /// The world answers one intent: success, failure, or twice.
    fn answer(&mut self, faults: bool) {
        if self.outstanding.is_empty() {
            return;
        }
        let k = self.rng.below(self.outstanding.len());
        let twice = faults && self.rng.percent(20);
        let i = if twice { self.outstanding[k].clone() } else { self.outstanding.remove(k) };
        let ok = !(faults && self.rng.percent(30));
        self.log.push(format!(
            "answer {} {}{}",
            i.id,
            if ok { "ok" } else { "failed" },
            if twice { " (again later)" } else { "" }
        ));
        let outcome = if ok { Ok(()) } else { Err(ved_adapters::ActionError::failed("simulated failure")) };
        self.driver().handle_inbound(Inbound::Result { id: i.id.clone(), outcome });
        self.check_output_commit();
    }

    /// The world answers several intents at once, in any order (reversed, shuffled),
    /// maybe with a watcher's reading among them: all are queued together, so the runtime
    /// applies every one of them before a tick.
    fn answer_together(&mut self) {
        let n = if self.outstanding.is_empty() { 0 } else { 1 + self.rng.below(self.outstanding.len().min(3)) };
        let mut picked = Vec::new();
        for _ in 0..n {
            let k = self.rng.below(self.outstanding.len());
            picked.push(self.outstanding.remove(k));
        }
        if self.rng.percent(50) {
            // Newest first: the reverse of the order they left in.
            let order = |i: &IntentRequest| ved_runtime::IntentId::parse(&i.id).map(|id| (id.slice, id.index));
            picked.sort_by_key(|i| std::cmp::Reverse(order(i)));
        }
        let mut batch = Vec::new();
        for i in picked {
            let ok = !self.rng.percent(30);
            self.log.push(format!("answer {} {} (together)", i.id, if ok { "ok" } else { "failed" }));
            let outcome = if ok { Ok(()) } else { Err(ved_adapters::ActionError::failed("simulated failure")) };
            batch.push(Inbound::Result { id: i.id.clone(), outcome });
        }
        if batch.len() < 2 || self.rng.percent(40) {
            let (instance, fields) = self.reading();
            self.log.push(format!("observe {instance} {fields:?} (together)"));
            let at = self.rng.below(batch.len() + 1);
            let o = ved_adapters::Observation { instance, fields, source: "watch#1".into(), version: None };
            batch.insert(at, Inbound::Observed(o));
        }
        self.driver().handle_inbound_batch(batch);
        self.check_output_commit();
    }

    /// A crash, possibly in the middle of a write, which it tears.
    fn crash(&mut self) {
        let torn = self.rng.percent(50) && self.files.is_some();
        let driver = self.driver.take().expect("running");
        if torn {
            let mut driver = driver;
            if let Err(e) = driver.write_only() {
                self.fail(&format!("write failed: {e}"));
            }
            driver.crash();
            let f = self.files.clone().expect("recorded");
            let cur = std::fs::metadata(&f.log).map(|m| m.len()).unwrap_or(f.log_len);
            let audit = self.dir.join("audit.log");
            let acur = std::fs::metadata(&audit).map(|m| m.len()).unwrap_or(f.audit_len);
            // Either the write completed (log and audit synced) and only the manifest's
            // in-place update may be lost, or it did not, and the unsynced tails of the log
            // and the audit log are cut anywhere, with the manifest as it was before.
            let completed = self.rng.percent(30);
            let (cut, acut) = if completed {
                (cur, acur)
            } else {
                (
                    f.log_len + self.rng.next() % (cur - f.log_len + 1),
                    f.audit_len + self.rng.next() % (acur - f.audit_len + 1),
                )
            };
            let file = std::fs::OpenOptions::new().write(true).open(&f.log).unwrap();
            file.set_len(cut).unwrap();
            if cut < cur && self.rng.percent(50) {
                // A torn sector: garbage where the rest of the write should be.
                let garbage: Vec<u8> = (0..1 + self.rng.below(12)).map(|_| self.rng.next() as u8).collect();
                std::os::unix::fs::FileExt::write_all_at(&file, &garbage, cut).unwrap();
            }
            std::fs::OpenOptions::new().write(true).open(&audit).unwrap().set_len(acut).unwrap();
            if !completed || self.rng.percent(50) {
                std::fs::write(self.dir.join("manifest"), &f.manifest).unwrap();
            }
            self.log.push(format!("crash during a write: log cut at {cut} of {cur} (durable {})", f.log_len));
        } else {
            driver.crash();
            self.log.push("crash".into());
        }
        self.start();
    }

    fn step(&mut self) {
        match self.rng.below(100) {
            0..=29 => self.observe(),
            30..=46 => self.answer(true),
            47..=54 => self.answer_together(),
            55..=64 => {
                let ms = self.rng.next() % 5_000;
                self.advance(ms);
            }
            65..=89 => self.flush(),
            _ => self.crash(),
        }
    }

    /// Faults stop: every intent succeeds, time passes, and everything must converge.
    fn heal(&mut self) {
        for round in 0..200 {
            self.flush();
            // Some answers come one by one, some all at once.
            if self.outstanding.len() > 1 && round % 2 == 1 {
                let all: Vec<IntentRequest> = std::mem::take(&mut self.outstanding);
                self.log.push(format!("answer {} intents together, ok", all.len()));
                let batch = all.iter().map(|i| Inbound::Result { id: i.id.clone(), outcome: Ok(()) }).collect();
                self.driver().handle_inbound_batch(batch);
                self.check_output_commit();
            }
            while !self.outstanding.is_empty() {
                self.answer(false);
            }
            self.flush();
            let d = self.driver.as_ref().expect("running");
            let settled = d.runtime().instances().iter().all(|i| i.pending.is_empty() && i.status == Status::Stable);
            if settled && self.outstanding.is_empty() {
                return;
            }
            // Retries wait out their backoff (up to the 60 s cap).
            self.advance(if round < 20 { 1_000 } else { 60_000 });
        }
        let d = self.driver.as_ref().expect("running");
        let state: Vec<String> = d
            .runtime()
            .instances()
            .iter()
            .map(|i| format!("{} {:?} pending {:?} state {:?}", i.name, i.status, i.pending, i.state))
            .collect();
        self.fail(&format!("did not converge once the faults stopped: {state:?}"));
    }

    /// Returns how many replayed journals held messages queued together.
    fn run(mut self, steps: usize) -> usize {
        for _ in 0..steps {
            self.step();
        }
        self.heal();
        // Every recorded intent was delivered: nothing is in flight, even as read back from disk.
        let batched = self.crash_clean_and_check();
        let _ = std::fs::remove_dir_all(&self.dir);
        batched
    }

    fn crash_clean_and_check(&mut self) -> usize {
        let mut batched = 0;
        self.flush();
        let d = self.driver.take().expect("running");
        d.crash();
        let rec =
            ved_store::read_only(&self.dir).unwrap_or_else(|e| self.fail(&format!("the store is unreadable: {e}")));
        for (name, s) in &rec.snapshots {
            if !s.snapshot.pending.is_empty() {
                self.fail(&format!("`{name}` still has pending transitions on disk: {:?}", s.snapshot.pending));
            }
            // The journal, crashes and all, replays to the same states and intents, with the
            // messages that were queued together queued together again.
            let journal = rec.journals.get(name).cloned().unwrap_or_default();
            if journal.iter().any(|e| e.batch.is_some_and(|b| b != e.slice)) {
                batched += 1;
            }
            match ved_cli::replay_cmd::replay_instance(&self.dir, name, None, |_| {}) {
                Ok(ved_cli::replay_cmd::Outcome::Reproduced { .. }) => {}
                Ok(other) => self.fail(&format!("replay of `{name}` diverged: {other:?}")),
                Err((m, _)) if m.contains("no snapshot") || m.contains("no journal") => {}
                Err((m, h)) => self.fail(&format!("replay of `{name}` could not run: {m} ({h})")),
            }
        }
        batched
    }
}

fn seeds() -> Vec<u64> {
    if let Some(s) = std::env::var("VED_SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        return vec![s];
    }
    let n = std::env::var("VED_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(200);
    (1..=n).collect()
}

fn simulate(program: &str, test: &'static str) {
    let seeds = seeds();
    let mut batched = 0;
    for &seed in &seeds {
        batched += Sim::new(program, test, seed).run(60);
    }
    // Results queued together really reached the journals that were replayed.
    if seeds.len() >= 50 {
        assert!(batched > 0, "no seed of {program} replayed a journal with a batch of messages");
    }
}

#[test]
fn database_routing_survives_every_seed() {
    simulate("examples/database_routing.ved", "database_routing_survives_every_seed");
}

#[test]
fn the_worker_pool_survives_every_seed() {
    simulate("examples/demo/worker_pool/worker_pool.ved", "the_worker_pool_survives_every_seed");
}

#[test]
fn the_set_based_security_policy_survives_every_seed() {
    simulate("tests/data/verify/security_policy_set.ved", "the_set_based_security_policy_survives_every_seed");
}
