//! Scale on the product's own path (issue 12, point 5): the engine API with
//! `Durability::Fsync`, each figure beside a baseline measured in the same run.
//!
//! 1. memory: `VED_SCALE_N` `WorkerPool` instances created in batches of
//!    `calls::BATCH_MAX` through `Call::CreateMany`; RSS per instance of the whole
//!    process, against `Runtime::create_instance` alone;
//! 2. restart: `Engine::start` on that data directory until every instance is
//!    loaded, against reading the directory's bytes, against decoding its records
//!    only, and against the store's own recovery (`ved_store::read_only`);
//! 3. throughput: durable slices/s with `VED_SCALE_BUSY` busy instances through
//!    `Call::ObserveMany`, and fsyncs per batch, against raw `fdatasync`s/s;
//! 4. latency: one observation acknowledged durably (`Engine::observe`, then
//!    `Engine::flush`, which waits for its batch), p50/p99 in units of a raw
//!    `fdatasync` measured alternately in the same process.
//!
//! Every measurement runs in a child process of its own (the binary re-executes
//! itself), so that RSS is not blurred by what an earlier phase freed.
//!
//! `cargo bench -p ved-engine --bench scale`; `VED_SCALE_N=100000` for a quick run;
//! `VED_SCALE_DIR` for where the data directories go (default `target/scale-bench`).

use serde_json::{json, Value as Json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use ved_engine::calls::BATCH_MAX;
use ved_engine::{Adapters, Call, Engine, EngineEvent, Observation, RunOptions, Sink};
use ved_store::Durability;

/// Events go nowhere: the figures are the engine's and the store's, not a printer's.
struct Null;

impl Sink for Null {
    fn event(&mut self, _: EngineEvent) {}
    fn wants_slice_events(&self) -> bool {
        false
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.replace('_', "").parse().ok()).unwrap_or(default)
}

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

/// The allocator the `ved` binary ships with (its main.rs): the figures are the product's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// What `ved run` does once its engine has started (`ved_cli::memory::return_freed`):
/// freed pages go back to the OS, those of ended threads included.
fn return_freed() {
    // SAFETY: `mi_collect` only releases pages with no live allocation, from any thread.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// RSS after giving freed memory back: what the process holds, not what it once used.
fn rss_trimmed_kib() -> u64 {
    return_freed();
    rss_kib()
}

fn base_dir() -> PathBuf {
    match std::env::var_os("VED_SCALE_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/scale-bench"),
    }
}

fn program() -> ved_engine::Loaded {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/worker_pool.ved");
    ved_engine::load::read_program(&[path]).expect("examples/worker_pool.ved loads")
}

/// Prints one figure for the parent: `key value`.
fn out(key: &str, value: impl std::fmt::Display) {
    println!("{key} {value}");
}

/// An engine on `dir` as `ved run` has it (fsync, background writer), counting the
/// writer's group commits: each is one `fdatasync` of the log (and one of the audit log).
fn start(dir: &Path, syncs: Arc<AtomicU64>) -> Engine<Null> {
    let opts = RunOptions {
        seed: 0,
        data_dir: Some(dir.to_path_buf()),
        durability: Durability::Fsync,
        recover: false,
        config: None,
        flush: ved_store::Flush::Background,
        limits: Default::default(),
        wall_ms_at_start: None,
        audit_key: None,
    };
    let hook: ved_store::DurableHook = Box::new(move |_| {
        syncs.fetch_add(1, Ordering::Relaxed);
    });
    Engine::start(program(), &opts, Adapters::logging(), Null, hook).expect("the engine starts")
}

/// Creates `w0`..`w{n-1}` at the goal (`workers = 5`), `BATCH_MAX` per call, and waits
/// until every call is answered (durable).
fn create(engine: &mut Engine<Null>, n: usize) {
    let answered = Arc::new(AtomicU64::new(0));
    let mut calls = 0u64;
    for start in (0..n).step_by(BATCH_MAX) {
        let items: Vec<Json> = (start..(start + BATCH_MAX).min(n))
            .map(|i| json!({"name": format!("w{i}"), "domain": "WorkerPool", "state": {"workers": 5}}))
            .collect();
        let a = answered.clone();
        engine.call(
            Call::CreateMany { items, single: false, max_instances: usize::MAX },
            Box::new(move |r| {
                assert_eq!(r.status, 201, "{}", r.body);
                a.fetch_add(1, Ordering::Relaxed);
            }),
        );
        calls += 1;
    }
    engine.run_until_idle().expect("idle");
    assert_eq!(answered.load(Ordering::Relaxed), calls, "every create call answered");
}

/// Raw `fdatasync`s of a 256-byte append on the same disk: per-call durations.
fn raw_fsyncs(dir: &Path, count: usize) -> Vec<Duration> {
    use std::io::Write;
    let path = dir.join("raw-fsync");
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).expect("raw file");
    let buf = [b'x'; 256];
    let mut times = Vec::with_capacity(count);
    for _ in 0..count {
        let t = Instant::now();
        f.write_all(&buf).expect("write");
        f.sync_data().expect("fdatasync");
        times.push(t.elapsed());
    }
    let _ = std::fs::remove_file(&path);
    times
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn fresh(name: &str) -> PathBuf {
    let dir = base_dir().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("data directory");
    dir
}

// ---- phases (each in its own process) ----

/// 1, runtime alone: `Runtime::create_instance` of N instances, run until idle.
fn phase_rss_runtime(n: usize) {
    let loaded = program();
    let before = rss_kib();
    let t = Instant::now();
    let mut rt = ved_runtime::Runtime::empty(loaded.compiled.clone(), 0);
    for i in 0..n {
        rt.create_instance(&format!("w{i}"), 0, vec![(0, ved_vm::Value::Int(5))]).expect("created");
    }
    let mut evs = Vec::new();
    rt.run(&mut evs);
    let secs = t.elapsed().as_secs_f64();
    let after = rss_kib();
    assert_eq!(rt.instances().len(), n);
    out("runtime_rss_bytes_per_instance", (after - before) as f64 * 1024.0 / n as f64);
    out("runtime_rss_trimmed_bytes_per_instance", (rss_trimmed_kib() - before) as f64 * 1024.0 / n as f64);
    out("runtime_create_per_s", n as f64 / secs);
    drop(evs);
}

/// 1, through the engine: `Call::CreateMany` into a fresh data directory; then a clean
/// stop (checkpoint) that leaves the directory for the restart phase.
fn phase_rss_engine(n: usize) {
    let dir = fresh("fleet");
    let syncs = Arc::new(AtomicU64::new(0));
    let mut engine = start(&dir, syncs.clone());
    let before = rss_kib();
    let t = Instant::now();
    create(&mut engine, n);
    let secs = t.elapsed().as_secs_f64();
    let after = rss_kib();
    assert_eq!(engine.runtime().instances().len(), n + 1);
    out("engine_rss_bytes_per_instance", (after - before) as f64 * 1024.0 / n as f64);
    out("engine_rss_trimmed_bytes_per_instance", (rss_trimmed_kib() - before) as f64 * 1024.0 / n as f64);
    out("engine_create_per_s", n as f64 / secs);
    out("engine_create_syncs", syncs.load(Ordering::Relaxed));
    let t = Instant::now();
    engine.finish().expect("clean stop");
    out("engine_finish_s", t.elapsed().as_secs_f64());
}

/// 2, baselines: the directory's bytes read (every file, as `cat` would), then its records
/// decoded only (frames checked, JSON parsed into `Record`s, nothing applied), then the
/// store's whole recovery without the engine (`ved_store::read_only`).
fn phase_restart_baselines(n: usize) {
    let dir = base_dir().join("fleet");
    let t = Instant::now();
    let mut bytes = 0usize;
    let mut files = Vec::new();
    for e in std::fs::read_dir(&dir).expect("read_dir") {
        let e = e.expect("entry");
        let b = std::fs::read(e.path()).expect("read");
        bytes += b.len();
        files.push((e.file_name().to_string_lossy().into_owned(), b));
    }
    out("read_bytes_s", t.elapsed().as_secs_f64());
    out("dir_bytes", bytes);
    // The store's decoder on one thread: binary snapshots against their file's schemas,
    // JSON for the other records.
    let t = Instant::now();
    let mut records = 0usize;
    let mut scratch = Vec::new();
    for (name, b) in &files {
        if !(name.starts_with("checkpoint-") || name.starts_with("log-")) || name.ends_with(".tmp") {
            continue;
        }
        let mut schemas = ved_store::bin::Schemas::default();
        let mut offset = ved_store::frame::HEADER_LEN;
        while offset < b.len() {
            let (payload, next) = ved_store::frame::read_record(b, offset).expect("intact record");
            // A checkpoint's trailer (`{"end": N}`) is not a record.
            let decoded = ved_store::codec::decode_payload(payload, &mut schemas, &mut scratch);
            records += usize::from(matches!(decoded, Ok(Some(_))));
            offset = next;
        }
    }
    out("decode_only_s", t.elapsed().as_secs_f64());
    out("decoded_records", records);
    drop(files);
    let t = Instant::now();
    let rec = ved_store::read_only(&dir).expect("readable");
    out("store_recovery_s", t.elapsed().as_secs_f64());
    assert_eq!(rec.snapshots.len(), n + 1, "every instance in the store");
}

/// 2: `Engine::start` on the directory, until it returns with every instance loaded.
fn phase_restart(n: usize) {
    let dir = base_dir().join("fleet");
    let before = rss_kib();
    let syncs = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
    let engine = start(&dir, syncs);
    // As `ved run` does before it serves; part of the restart's time.
    return_freed();
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(engine.runtime().instances().len(), n + 1, "every instance loaded");
    out("restart_s", secs);
    out("restart_rss_bytes_per_instance", (rss_kib() - before) as f64 * 1024.0 / n as f64);
    out("restart_rss_trimmed_bytes_per_instance", (rss_trimmed_kib() - before) as f64 * 1024.0 / n as f64);
    // Leave without a checkpoint: the next run starts from a fresh directory anyway.
    drop(engine);
}

/// 3 and 4: `busy` instances, every one observed off its goal in each `Call::ObserveMany`
/// (it then converges: the observation's slice and one transition's), rounds pipelined as
/// the HTTP API would see them; then single observations acknowledged durably.
fn phase_busy(busy: usize, rounds: usize, samples: usize) {
    let dir = fresh("busy");
    // Baseline first: raw fdatasyncs on the same disk.
    let mut raw = raw_fsyncs(&dir, 300);
    let raw_total: Duration = raw.iter().sum();
    raw.sort();
    out("raw_fsync_per_s", raw.len() as f64 / raw_total.as_secs_f64());
    let syncs = Arc::new(AtomicU64::new(0));
    let mut engine = start(&dir, syncs.clone());
    create(&mut engine, busy);
    let slices = |e: &Engine<Null>| e.runtime().instances().iter().map(|i| i.slice).sum::<u64>();
    let (slices0, syncs0) = (slices(&engine), syncs.load(Ordering::Relaxed));
    let answered = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
    for r in 0..rounds {
        let workers = if r % 2 == 0 { 4 } else { 6 };
        for start in (0..busy).step_by(BATCH_MAX) {
            let items: Vec<Json> = (start..(start + BATCH_MAX).min(busy))
                .map(|i| json!({"instance": format!("w{i}"), "set": {"workers": workers}}))
                .collect();
            let a = answered.clone();
            engine.call(
                Call::ObserveMany(items),
                Box::new(move |r| {
                    assert_eq!(r.status, 200, "{}", r.body);
                    a.fetch_add(1, Ordering::Relaxed);
                }),
            );
        }
    }
    engine.run_until_idle().expect("idle");
    let secs = t.elapsed().as_secs_f64();
    let calls = rounds * busy.div_ceil(BATCH_MAX);
    assert_eq!(answered.load(Ordering::Relaxed) as usize, calls, "every call answered, durably");
    let done = slices(&engine) - slices0;
    let commits = syncs.load(Ordering::Relaxed) - syncs0;
    out("busy_slices", done);
    out("busy_slices_per_s", done as f64 / secs);
    out("busy_calls", calls);
    out("busy_group_commits", commits);
    out("busy_observations_per_s", (rounds * busy) as f64 / secs);

    // 4: one observation, acknowledged durably, alternating with a raw fdatasync.
    for (label, drift) in [("drift", true), ("resync", false)] {
        let mut lat = Vec::with_capacity(samples);
        let mut raw = Vec::with_capacity(samples);
        for k in 0..samples {
            let workers = if !drift {
                5
            } else if k % 2 == 0 {
                4
            } else {
                6
            };
            let obs = Observation::set("w0", "bench", [("workers".to_string(), json!(workers))]);
            let t = Instant::now();
            let seq = engine.observe(obs).expect("observed");
            engine.flush().expect("durable");
            lat.push(t.elapsed());
            assert!(engine.is_durable() && seq > 0);
            raw.extend(raw_fsyncs(&dir, 1));
        }
        lat.sort();
        raw.sort();
        let unit = pct(&raw, 0.5).as_secs_f64();
        out(&format!("{label}_raw_fsync_p50_ms"), unit * 1e3);
        out(&format!("{label}_raw_fsync_p99_ms"), pct(&raw, 0.99).as_secs_f64() * 1e3);
        out(&format!("{label}_p50_ms"), pct(&lat, 0.5).as_secs_f64() * 1e3);
        out(&format!("{label}_p99_ms"), pct(&lat, 0.99).as_secs_f64() * 1e3);
    }
    drop(engine);
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- the parent: runs each phase in a child, prints the table ----

fn child(phase: &str) -> BTreeMap<String, f64> {
    let exe = std::env::current_exe().expect("current exe");
    let o = std::process::Command::new(exe)
        .arg("--phase")
        .arg(phase)
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("child runs");
    assert!(o.status.success(), "phase {phase} failed: {}", String::from_utf8_lossy(&o.stdout));
    let text = String::from_utf8_lossy(&o.stdout);
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

fn main() {
    let n = env_usize("VED_SCALE_N", 1_000_000);
    let busy = env_usize("VED_SCALE_BUSY", 10_000);
    let rounds = env_usize("VED_SCALE_ROUNDS", 20);
    let samples = env_usize("VED_SCALE_SAMPLES", 300);
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--phase") {
        match args.get(i + 1).map(String::as_str) {
            Some("rss-runtime") => phase_rss_runtime(n),
            Some("rss-engine") => phase_rss_engine(n),
            Some("restart-baselines") => phase_restart_baselines(n),
            Some("restart") => phase_restart(n),
            Some("busy") => phase_busy(busy, rounds, samples),
            other => panic!("unknown phase {other:?}"),
        }
        return;
    }
    // `cargo bench` passes `--bench`; a filter such as `cargo bench --bench scale -- busy`
    // runs the phases whose names contain it (the restart phases need `rss-engine`'s directory).
    let filter = args.iter().skip(1).find(|a| !a.starts_with("--")).cloned().unwrap_or_default();
    let mut m = BTreeMap::new();
    for phase in ["rss-runtime", "rss-engine", "restart-baselines", "restart", "busy"] {
        if !phase.contains(&filter) {
            continue;
        }
        eprintln!("scale: {phase} (N = {n}, busy = {busy})");
        let t = Instant::now();
        m.extend(child(phase));
        eprintln!("scale: {phase} took {:.1} s", t.elapsed().as_secs_f64());
    }
    let g = |k: &str| m.get(k).copied().unwrap_or(f64::NAN);
    let verdict = |ok: bool| if ok { "met" } else { "not met" };
    println!("| figure | Ved | baseline (same run) | ratio | target | |");
    println!("|---|---:|---:|---:|---|---|");
    if m.contains_key("engine_rss_bytes_per_instance") {
        let (e, r) = (g("engine_rss_bytes_per_instance"), g("runtime_rss_bytes_per_instance"));
        println!(
            "| RSS per instance, {n} instances (engine, fsync) | {e:.0} B | {r:.0} B (runtime alone) | {:.1}x | ≤ 1024 B | {} |",
            e / r,
            verdict(e <= 1024.0)
        );
        let (et, rt) = (g("engine_rss_trimmed_bytes_per_instance"), g("runtime_rss_trimmed_bytes_per_instance"));
        println!(
            "| the same after `mi_collect(true)` (live memory) | {et:.0} B | {rt:.0} B (runtime alone) | {:.1}x | ≤ 1024 B | {} |",
            et / rt,
            verdict(et <= 1024.0)
        );
        println!(
            "| create rate (`CreateMany` × {BATCH_MAX}, durable) | {:.0}/s | {:.0}/s (runtime alone) | {:.1}x | – | |",
            g("engine_create_per_s"),
            g("runtime_create_per_s"),
            g("runtime_create_per_s") / g("engine_create_per_s")
        );
    }
    if m.contains_key("restart_s") {
        let s = g("restart_s");
        println!(
            "| restart, {n} instances (`Engine::start`) | {s:.2} s | {:.3} s read {:.0} MB; {:.2} s decode only (one thread); {:.2} s store recovery | {:.0}x read; {:.1}x decode; {:.1}x recovery | ≤ 2 s | {} |",
            g("read_bytes_s"),
            g("dir_bytes") / 1e6,
            g("decode_only_s"),
            g("store_recovery_s"),
            s / g("read_bytes_s"),
            s / g("decode_only_s"),
            s / g("store_recovery_s"),
            verdict(s <= 2.0)
        );
        println!(
            "| RSS per instance after the restart (trimmed) | {:.0} B ({:.0} B) | – | – | ≤ 1024 B | |",
            g("restart_rss_bytes_per_instance"),
            g("restart_rss_trimmed_bytes_per_instance")
        );
    }
    if m.contains_key("busy_slices_per_s") {
        let s = g("busy_slices_per_s");
        println!(
            "| durable slices/s, {busy} busy instances (`ObserveMany`) | {s:.0}/s | {:.0} fdatasync/s | {:.0} slices per raw fdatasync | ≥ 100,000/s | {} |",
            g("raw_fsync_per_s"),
            s / g("raw_fsync_per_s"),
            verdict(s >= 100_000.0)
        );
        println!(
            "| group commits per `ObserveMany` call | {:.2} ({} commits, {} calls) | – | – | – | |",
            g("busy_group_commits") / g("busy_calls"),
            g("busy_group_commits"),
            g("busy_calls")
        );
        for label in ["drift", "resync"] {
            let unit = g(&format!("{label}_raw_fsync_p50_ms"));
            let (p50, p99) = (g(&format!("{label}_p50_ms")), g(&format!("{label}_p99_ms")));
            let raw99 = g(&format!("{label}_raw_fsync_p99_ms"));
            println!(
                "| one observation durably acknowledged ({label}), p50 / p99 | {p50:.2} / {p99:.2} ms | raw fdatasync p50 {unit:.2} ms, p99 {raw99:.2} ms | p50 {:.2}, p99 {:.2} raw p50s; p99 {:.2} raw p99s | p99 ≤ 2 fsyncs | {} against a raw p50, {} against a raw p99 |",
                p50 / unit,
                p99 / unit,
                p99 / raw99,
                verdict(p99 / unit <= 2.0),
                verdict(p99 / raw99 <= 2.0)
            );
        }
    }
}
