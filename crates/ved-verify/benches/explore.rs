//! `ved verify`'s exploration speed, against a hand-written Rust explorer of the
//! same model measured in the same run. Run with `cargo bench -p ved-verify`
//! (or `scripts/bench.sh`); it prints a Markdown table row per size, from the
//! fastest of three alternating runs of each explorer.
//!
//! The model is `benches/verify_grid.ved` with a smaller bound: three counters
//! walked to the centre of a cube, one slice at a time, by six transitions.

use rustc_hash::FxHashMap;
use std::time::Instant;

const PROGRAM: &str = include_str!("../../../benches/verify_grid.ved");

fn ved(side: i64) -> (usize, f64) {
    let src = PROGRAM.replace("0..99", &format!("0..{}", side - 1));
    let mut sources = ved_syntax::SourceMap::new();
    let id = sources.add("grid.ved", src.clone());
    let ast = ved_syntax::parse_file(id, &src).expect("the benchmark parses");
    let checked = ved_check::check_program(&[ast]);
    let program = checked.program.expect("the benchmark checks");
    let compiled = ved_vm::compile_program(&program);
    let opts = ved_verify::Options { failures: 0, ..ved_verify::Options::default() };
    let start = Instant::now();
    let report = ved_verify::verify_domain(&program.domains[0], &compiled.domains[0], opts, &mut |_, _| {})
        .expect("the benchmark verifies");
    let secs = start.elapsed().as_secs_f64();
    assert!(report.proven());
    (report.runs[0].states, secs)
}

/// The same model by hand: (x, y, z, cursor), the same six transitions in the same
/// order, the same tick rules, breadth first with parent links.
fn native(side: i64) -> (usize, f64) {
    type Node = (i64, i64, i64, u8);
    let start = Instant::now();
    let mut index: FxHashMap<Node, u32> = FxHashMap::default();
    let mut nodes: Vec<Node> = Vec::new();
    let mut parent: Vec<u32> = Vec::new();
    for x in 0..side {
        for y in 0..side {
            for z in 0..side {
                let n = (x, y, z, 0);
                index.insert(n, nodes.len() as u32);
                nodes.push(n);
                parent.push(u32::MAX);
            }
        }
    }
    let step = |n: Node| -> Option<Node> {
        let (x, y, z, cursor) = n;
        if x == 50 && y == 50 && z == 50 {
            return None;
        }
        let mut from = cursor as usize;
        loop {
            for t in from..6 {
                let v = [x, y, z];
                let axis = t / 2;
                let up = t % 2 == 0;
                let moved = if up && v[axis] < 50 {
                    Some(v[axis] + 1)
                } else if !up && v[axis] > 50 {
                    Some(v[axis] - 1)
                } else {
                    None
                };
                if let Some(nv) = moved {
                    let mut w = v;
                    w[axis] = nv;
                    return Some((w[0], w[1], w[2], (t + 1) as u8));
                }
            }
            if from == 0 {
                return None;
            }
            from = 0;
        }
    };
    let mut i = 0;
    while i < nodes.len() {
        if let Some(next) = step(nodes[i]) {
            if let std::collections::hash_map::Entry::Vacant(e) = index.entry(next) {
                e.insert(nodes.len() as u32);
                nodes.push(next);
                parent.push(i as u32);
            }
        }
        i += 1;
    }
    (nodes.len(), start.elapsed().as_secs_f64())
}

/// The machine is shared and noisy: each explorer runs this many times,
/// alternating, and the fastest run of each counts.
const RUNS: usize = 3;

fn main() {
    println!("| bound | states | Ved states/s | native states/s | Ved / native (time) |");
    println!("|---|---:|---:|---:|---:|");
    // `VERIFY_BENCH_SIDES=40,70` measures only those sizes (for profiling one).
    let sides: Vec<i64> = match std::env::var("VERIFY_BENCH_SIDES") {
        Ok(s) => s.split(',').map(|x| x.trim().parse().expect("VERIFY_BENCH_SIDES: sizes, comma-separated")).collect(),
        Err(_) => vec![40, 70, 100],
    };
    for side in sides {
        let (mut vt, mut nt) = (f64::INFINITY, f64::INFINITY);
        let mut vs = 0;
        for _ in 0..RUNS {
            let (s, t) = ved(side);
            let (ns, n) = native(side);
            assert_eq!(s, ns, "both explorers must see the same graph");
            vs = s;
            vt = vt.min(t);
            nt = nt.min(n);
        }
        let ns = vs;
        println!(
            "| {side}x{side}x{side} starts | {vs} | {:.0} | {:.0} | {:.1}x |",
            vs as f64 / vt,
            ns as f64 / nt,
            vt / nt
        );
    }
}
