//! Slices per second on each seed, against a hand-written Rust function that
//! makes the same state changes, measured in the same run.
//!
//! Each iteration does one full chaos cycle: an observation breaks the goal,
//! the runtime converges back (delivering and acknowledging any intents), and
//! the cycle's slice count is fixed, so time per iteration divides into time
//! per slice. `scripts/bench.sh` turns the results into BENCHMARKS.md's ratios.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::hint::black_box;
use std::sync::Arc;
use ved_runtime::{Event, Runtime};
use ved_syntax::SourceMap;
use ved_vm::{CompiledProgram, Value};

fn compile(src: &str) -> Arc<CompiledProgram> {
    let mut sources = SourceMap::new();
    let id = sources.add("bench.ved", src);
    let ast = ved_syntax::parse_file(id, src).expect("parses");
    let program = ved_check::check_program(&[ast]).program.expect("checks");
    Arc::new(ved_vm::compile_program(&program))
}

/// Runs until idle, acknowledging every intent; returns the number of slices.
fn converge(rt: &mut Runtime, ev: &mut Vec<Event>) -> usize {
    let mut slices = 0;
    loop {
        ev.clear();
        rt.run(ev);
        if ev.is_empty() {
            return slices;
        }
        for e in ev.iter() {
            match e {
                Event::Slice { .. } => slices += 1,
                Event::Intent(i) => rt.deliver(&i.id, true, None).unwrap(),
                _ => {}
            }
        }
    }
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

criterion_group!(benches, bench_worker_pool, bench_security_policy, bench_database_routing);
criterion_main!(benches);
