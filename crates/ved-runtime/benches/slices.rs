//! Slices per second on each seed, against a hand-written Rust function that
//! makes the same state changes, measured in the same run.
//!
//! Each iteration does one full chaos cycle: an observation breaks the goal,
//! the runtime converges back (delivering and acknowledging any intents), and
//! the cycle's slice count is fixed, so time per iteration divides into time
//! per slice. `scripts/bench.sh` turns the results into BENCHMARKS.md's ratios.
//!
//! Three functions per seed: `ved`; `native`, the baseline (the state changes
//! alone); and `reporting`, the same decisions by hand that also build every event Ved
//! reports for the cycle, asserted equal to Ved's, which shows how much of the gap is
//! the report rather than the interpreter.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::hint::black_box;
use std::sync::Arc;
use ved_runtime::{Cause, Event, Intent as VedIntent, IntentId, Runtime, Status};
use ved_syntax::SourceMap;
use ved_vm::{CompiledProgram, Value};

fn compile(src: &str) -> Arc<CompiledProgram> {
    let mut sources = SourceMap::new();
    let id = sources.add("bench.ved", src);
    let ast = ved_syntax::parse_file(id, src).expect("parses");
    let program = ved_check::check_program(&[ast]).program.expect("checks");
    Arc::new(ved_vm::compile_program(&program))
}

/// Runs until idle, acknowledging every intent, and hands each run's events to `each`.
fn drive(rt: &mut Runtime, ev: &mut Vec<Event>, mut each: impl FnMut(&mut Vec<Event>)) {
    loop {
        ev.clear();
        rt.run(ev);
        if ev.is_empty() {
            return;
        }
        for e in ev.iter() {
            if let Event::Intent(i) = e {
                rt.deliver(&i.id, true, None).unwrap();
            }
        }
        each(ev);
    }
}

/// Runs until idle, acknowledging every intent; returns the number of slices.
fn converge(rt: &mut Runtime, ev: &mut Vec<Event>) -> usize {
    let mut slices = 0;
    drive(rt, ev, |ev| slices += ev.iter().filter(|e| matches!(e, Event::Slice { .. })).count());
    slices
}

/// [`converge`], keeping every event of the run.
fn converge_keeping(rt: &mut Runtime) -> Vec<Event> {
    let mut all = Vec::new();
    drive(rt, &mut Vec::new(), |ev| all.append(ev));
    all
}

/// A reporter that continues where the runtime's instance stands.
fn reporter(rt: &Runtime, name: &str) -> Reporter {
    let inst = rt.instance(name).expect("the instance");
    Reporter { name: inst.name.clone(), slice: inst.slice, tick: inst.ticks }
}

fn ints(v: &[i64]) -> Value {
    Value::List(Arc::new(v.iter().map(|i| Value::Int(*i)).collect()))
}

// ---- hand-written baselines: the same state changes, as plain Rust ----

struct Intent {
    _action: &'static str,
    _args: Vec<i64>,
}

/// The pool's controller by hand. Each new state is written to a black box, as Ved's
/// slices report theirs, so the optimiser cannot fold the loop into a constant.
fn worker_pool_native(workers: &mut i64) -> usize {
    let mut slices = 1; // the observation
    while *workers != 5 {
        if *workers < 5 {
            *workers += 1;
            slices += 1;
            black_box(&*workers);
        }
        if *workers > 5 {
            *workers -= 1;
            slices += 1;
            black_box(&*workers);
        }
    }
    slices
}

fn security_native(desired: &[i64], actual: &mut Vec<i64>, out: &mut Vec<Intent>) -> usize {
    let mut slices = 1;
    while actual != desired {
        let rogue: Vec<i64> = actual.iter().copied().filter(|p| !desired.contains(p)).collect();
        if !rogue.is_empty() {
            out.push(Intent { _action: "ClosePorts", _args: rogue.clone() });
            actual.retain(|p| !rogue.contains(p));
            slices += 2; // the step and the result
            continue;
        }
        let missing: Vec<i64> = desired.iter().copied().filter(|p| !actual.contains(p)).collect();
        if !missing.is_empty() {
            out.push(Intent { _action: "OpenPorts", _args: missing.clone() });
            actual.extend(missing);
            slices += 2;
            continue;
        }
        break;
    }
    slices
}

struct Routing {
    primary: String,
    route: String,
    alert: bool,
}

fn routing_native(r: &mut Routing, status: &str, out: &mut Vec<String>) -> usize {
    r.primary = status.to_string();
    let mut slices = 1;
    loop {
        let a = r.primary == "healthy" && r.route == "primary";
        let b = r.primary == "failed" && r.route == "replica" && r.alert;
        if a || b {
            return slices;
        }
        if r.primary == "failed" && r.route == "primary" {
            out.push("replica".to_string());
            r.route = "replica".to_string();
            slices += 2;
        }
        if r.primary == "failed" && !r.alert {
            out.push("Primary DB Down".to_string());
            r.alert = true;
            slices += 2;
        }
        if r.primary == "healthy" && r.route == "replica" {
            out.push("primary".to_string());
            r.route = "primary".to_string();
            r.alert = false;
            slices += 2;
        }
    }
}

// ---- the reporting floor: the same controllers by hand, reporting what Ved reports ----
//
// Not the baseline, and not a target: a measure of how much of Ved's time is the
// report itself. A slice's contract includes an event that names the instance and carries
// its changes, a `Tick` per scheduler pass, intents with ids, results and statuses; these
// functions build exactly the events Ved builds for the same cycle (the bench asserts it),
// with the decisions hand-written. What Ved spends beyond them is interpretation and
// scheduling; what they spend beyond the bare baselines is the report.

/// The counters a reporting controller keeps, as Ved's instance does.
struct Reporter {
    name: Arc<str>,
    slice: u64,
    tick: u64,
}

impl Reporter {
    fn slice(
        &mut self,
        cause: Cause,
        changes: Vec<(u16, Value)>,
        held: Vec<(u16, Value)>,
        out: &mut Vec<Event>,
    ) -> u64 {
        self.slice += 1;
        out.push(Event::Slice { instance: self.name.clone(), slice: self.slice, cause, changes, held });
        self.slice
    }

    fn tick(&mut self, out: &mut Vec<Event>) {
        self.tick += 1;
        out.push(Event::Tick { instance: self.name.clone(), tick: self.tick });
    }

    fn status(&self, status: Status, out: &mut Vec<Event>) {
        out.push(Event::Status { instance: self.name.clone(), status, reason: None });
    }

    /// Emits an intent from the slice just committed; returns its id.
    fn intent(
        &self,
        transition: usize,
        adapter: &Arc<str>,
        action: &Arc<str>,
        args: Arc<[Value]>,
        out: &mut Vec<Event>,
    ) -> IntentId {
        let id = IntentId { instance: self.name.clone(), slice: self.slice, index: 0 };
        out.push(Event::Intent(VedIntent {
            id: id.clone(),
            transition,
            adapter: adapter.clone(),
            action: action.clone(),
            args,
        }));
        id
    }

    /// An intent succeeded: the result, then the slice that applies what it held.
    fn result(&mut self, id: IntentId, held: Vec<(u16, Value)>, out: &mut Vec<Event>) {
        out.push(Event::Result { instance: self.name.clone(), id: id.clone(), ok: true, error: None });
        self.slice(Cause::Result(id), held, Vec::new(), out);
    }
}

fn worker_pool_reporting(workers: &mut i64, observed: i64, r: &mut Reporter, out: &mut Vec<Event>) {
    *workers = observed;
    r.slice(Cause::Observe, vec![(0, Value::Int(observed))], Vec::new(), out);
    loop {
        if *workers == 5 {
            return r.status(Status::Stable, out);
        }
        r.tick(out);
        if *workers < 5 {
            *workers += 1;
            r.slice(Cause::Transition(0), vec![(0, Value::Int(*workers))], Vec::new(), out);
        } else {
            *workers -= 1;
            r.slice(Cause::Transition(1), vec![(0, Value::Int(*workers))], Vec::new(), out);
        }
    }
}

/// Names an adapter call, once, as a program's constants are.
struct Calls {
    firewall: Arc<str>,
    close: Arc<str>,
    open: Arc<str>,
}

fn security_reporting(
    desired: &Arc<Vec<Value>>,
    actual: &mut Arc<Vec<Value>>,
    observed: Arc<Vec<Value>>,
    c: &Calls,
    r: &mut Reporter,
    out: &mut Vec<Event>,
) {
    *actual = observed.clone();
    r.slice(Cause::Observe, vec![(1, Value::List(observed))], Vec::new(), out);
    while actual != desired {
        r.tick(out);
        let rogue: Vec<Value> = actual.iter().filter(|p| !desired.contains(p)).cloned().collect();
        let (transition, action, ports, next) = if !rogue.is_empty() {
            let kept: Vec<Value> = actual.iter().filter(|p| !rogue.contains(p)).cloned().collect();
            (0, &c.close, rogue, kept)
        } else {
            let missing: Vec<Value> = desired.iter().filter(|p| !actual.contains(p)).cloned().collect();
            let mut all = actual.to_vec();
            all.extend(missing.iter().cloned());
            (1, &c.open, missing, all)
        };
        let held = vec![(1, Value::List(Arc::new(next)))];
        r.slice(Cause::Transition(transition), Vec::new(), held.clone(), out);
        let id = r.intent(transition, &c.firewall, action, Arc::from([Value::List(Arc::new(ports))]), out);
        r.status(Status::Waiting, out);
        // The adapter answers: the held write applies.
        if let Value::List(l) = &held[0].1 {
            *actual = l.clone();
        }
        r.result(id, held, out);
    }
    r.status(Status::Stable, out);
}

struct RoutingCalls {
    network: Arc<str>,
    dns: Arc<str>,
    alerts: Arc<str>,
    page: Arc<str>,
    replica: Value,
    primary: Value,
    down: Value,
    failed: Value,
    healthy: Value,
}

/// Routing's fields by slot: primary status, active route, alert sent.
fn routing_reporting(f: &mut [Value; 3], observed: &Value, c: &RoutingCalls, r: &mut Reporter, out: &mut Vec<Event>) {
    f[0] = observed.clone();
    r.slice(Cause::Observe, vec![(0, observed.clone())], Vec::new(), out);
    let holds = |f: &[Value; 3]| {
        (f[0] == c.healthy && f[1] == c.primary) || (f[0] == c.failed && f[1] == c.replica && f[2] == Value::Bool(true))
    };
    if holds(f) {
        return r.status(Status::Stable, out);
    }
    r.tick(out);
    let mut sent = Vec::new();
    if f[0] == c.failed && f[1] == c.primary {
        let held = vec![(1, c.replica.clone())];
        r.slice(Cause::Transition(0), Vec::new(), held.clone(), out);
        sent.push((r.intent(0, &c.network, &c.dns, Arc::from([c.replica.clone()]), out), held));
    }
    if f[0] == c.failed && f[2] == Value::Bool(false) {
        let held = vec![(2, Value::Bool(true))];
        r.slice(Cause::Transition(1), Vec::new(), held.clone(), out);
        sent.push((r.intent(1, &c.alerts, &c.page, Arc::from([c.down.clone()]), out), held));
    }
    if f[0] == c.healthy && f[1] == c.replica {
        let held = vec![(1, c.primary.clone()), (2, Value::Bool(false))];
        r.slice(Cause::Transition(2), Vec::new(), held.clone(), out);
        sent.push((r.intent(2, &c.network, &c.dns, Arc::from([c.primary.clone()]), out), held));
    }
    r.status(Status::Waiting, out);
    for (id, held) in sent {
        for (slot, v) in &held {
            f[*slot as usize] = v.clone();
        }
        r.result(id, held, out);
    }
    r.status(Status::Stable, out);
}

fn bench_worker_pool(c: &mut Criterion) {
    let prog = compile(include_str!("../../../examples/worker_pool.ved"));
    let mut rt = Runtime::new(prog, 0).unwrap();
    let mut ev = Vec::new();
    converge(&mut rt, &mut ev);
    // One cycle: workers drop to 0, five scale_up slices bring them back.
    rt.observe("WorkerPool", vec![(0, Value::Int(0))]).unwrap();
    let slices = converge(&mut rt, &mut ev) as u64;
    assert_eq!(slices, 6);
    let mut g = c.benchmark_group("worker_pool");
    g.throughput(Throughput::Elements(slices));
    g.bench_function("ved", |b| {
        b.iter(|| {
            rt.observe("WorkerPool", vec![(0, Value::Int(0))]).unwrap();
            black_box(converge(&mut rt, &mut ev))
        })
    });
    // The reporting floor reports exactly what Ved reports for the cycle.
    let mut r = reporter(&rt, "WorkerPool");
    rt.observe("WorkerPool", vec![(0, Value::Int(0))]).unwrap();
    let ved_events = converge_keeping(&mut rt);
    let (mut w, mut out) = (5, Vec::new());
    worker_pool_reporting(&mut w, 0, &mut r, &mut out);
    assert_eq!(out, ved_events, "the worker pool's reporting floor reports what Ved reports");
    g.bench_function("reporting", |b| {
        b.iter(|| {
            out.clear();
            worker_pool_reporting(&mut w, black_box(0), &mut r, &mut out);
            black_box(out.len())
        })
    });
    g.bench_function("native", |b| {
        // The observation comes out of a black box, and the final state goes into one.
        b.iter(|| {
            let mut w = black_box(0);
            let n = worker_pool_native(&mut w);
            black_box(w);
            black_box(n)
        })
    });
    g.finish();
}

fn bench_security_policy(c: &mut Criterion) {
    let prog = compile(include_str!("../../../examples/security_policy.ved"));
    let mut rt = Runtime::new(prog, 0).unwrap();
    let mut ev = Vec::new();
    converge(&mut rt, &mut ev);
    rt.observe("SecurityPolicy", vec![(1, ints(&[80, 443, 22]))]).unwrap();
    let slices = converge(&mut rt, &mut ev) as u64;
    assert_eq!(slices, 3);
    let mut g = c.benchmark_group("security_policy");
    g.throughput(Throughput::Elements(slices));
    g.bench_function("ved", |b| {
        b.iter(|| {
            rt.observe("SecurityPolicy", vec![(1, ints(&[80, 443, 22]))]).unwrap();
            black_box(converge(&mut rt, &mut ev))
        })
    });
    let mut r = reporter(&rt, "SecurityPolicy");
    let list = |v: &[i64]| match ints(v) {
        Value::List(l) => l,
        _ => unreachable!("ints builds a list"),
    };
    rt.observe("SecurityPolicy", vec![(1, ints(&[80, 443, 22]))]).unwrap();
    let ved_events = converge_keeping(&mut rt);
    let calls = Calls { firewall: "Firewall".into(), close: "ClosePorts".into(), open: "OpenPorts".into() };
    let (desired_ports, mut actual, mut out) = (list(&[80, 443]), list(&[80, 443]), Vec::new());
    security_reporting(&desired_ports, &mut actual, list(&[80, 443, 22]), &calls, &mut r, &mut out);
    assert_eq!(out, ved_events, "the security policy's reporting floor reports what Ved reports");
    g.bench_function("reporting", |b| {
        b.iter(|| {
            out.clear();
            security_reporting(&desired_ports, &mut actual, black_box(list(&[80, 443, 22])), &calls, &mut r, &mut out);
            black_box(out.len())
        })
    });
    let desired = vec![80, 443];
    g.bench_function("native", |b| {
        b.iter_batched(
            || (vec![80, 443, 22], Vec::new()),
            |(mut actual, mut out)| black_box(security_native(&desired, &mut actual, &mut out)),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn bench_database_routing(c: &mut Criterion) {
    let prog = compile(include_str!("../../../examples/database_routing.ved"));
    let mut rt = Runtime::new(prog, 0).unwrap();
    let mut ev = Vec::new();
    converge(&mut rt, &mut ev);
    let cycle = |rt: &mut Runtime, ev: &mut Vec<Event>| {
        rt.observe("DatabaseRouting", vec![(0, Value::Str("failed".into()))]).unwrap();
        let a = converge(rt, ev);
        rt.observe("DatabaseRouting", vec![(0, Value::Str("healthy".into()))]).unwrap();
        a + converge(rt, ev)
    };
    let slices = cycle(&mut rt, &mut ev) as u64;
    assert_eq!(slices, 8);
    let mut g = c.benchmark_group("database_routing");
    g.throughput(Throughput::Elements(slices));
    g.bench_function("ved", |b| b.iter(|| black_box(cycle(&mut rt, &mut ev))));
    let mut r = reporter(&rt, "DatabaseRouting");
    rt.observe("DatabaseRouting", vec![(0, Value::Str("failed".into()))]).unwrap();
    let mut ved_events = converge_keeping(&mut rt);
    rt.observe("DatabaseRouting", vec![(0, Value::Str("healthy".into()))]).unwrap();
    ved_events.extend(converge_keeping(&mut rt));
    let str = |s: &str| Value::Str(s.into());
    let calls = RoutingCalls {
        network: "Network".into(),
        dns: "UpdateDNS".into(),
        alerts: "Alerts".into(),
        page: "PageEngineers".into(),
        replica: str("replica"),
        primary: str("primary"),
        down: str("Primary DB Down"),
        failed: str("failed"),
        healthy: str("healthy"),
    };
    let (mut fields, mut out) = ([str("healthy"), str("primary"), Value::Bool(false)], Vec::new());
    let cycle = |f: &mut [Value; 3], r: &mut Reporter, out: &mut Vec<Event>| {
        routing_reporting(f, &str("failed"), &calls, r, out);
        routing_reporting(f, &str("healthy"), &calls, r, out);
    };
    cycle(&mut fields, &mut r, &mut out);
    assert_eq!(out, ved_events, "routing's reporting floor reports what Ved reports");
    g.bench_function("reporting", |b| {
        b.iter(|| {
            out.clear();
            cycle(&mut fields, &mut r, &mut out);
            black_box(out.len())
        })
    });
    g.bench_function("native", |b| {
        let mut r = Routing { primary: "healthy".into(), route: "primary".into(), alert: false };
        let mut out = Vec::new();
        b.iter(|| {
            out.clear();
            let n = routing_native(&mut r, black_box("failed"), &mut out);
            black_box(n + routing_native(&mut r, black_box("healthy"), &mut out))
        })
    });
    g.finish();
}

/// What the report's parts cost one by one on this machine: every event clones the
/// instance's name (an atomic increment, and a decrement when the event is dropped), and
/// a slice's change list is one small allocation.
fn bench_unit_costs(c: &mut Criterion) {
    let mut g = c.benchmark_group("unit_costs");
    let name: Arc<str> = Arc::from("DatabaseRouting");
    g.bench_function("arc_str_clone_and_drop", |b| b.iter(|| drop(black_box(name.clone()))));
    g.bench_function("change_list_alloc_and_free", |b| {
        b.iter(|| drop(black_box(vec![(0u16, Value::Int(black_box(5)))])))
    });
    g.finish();
}

criterion_group!(benches, bench_worker_pool, bench_security_policy, bench_database_routing, bench_unit_costs);
criterion_main!(benches);
