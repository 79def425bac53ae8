//! Packed nodes are a representation, not a model: on every program `ved verify`
//! is tested on, exploring with nodes packed into bit fields (where the bounds
//! allow it) must give exactly the graph and the report of exploring with every
//! node kept whole: the same node numbering, kinds, parents, edges and faults,
//! the same counterexample traces.

use std::path::Path;
use ved_check::hir;
use ved_verify::explore::{Explorer, Graph};
use ved_verify::{verify_domain_in, verify_domain_unpacked, Model, Options, Shape};
use ved_vm::{CompiledDomain, Value};

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

fn load_src(name: &str, src: &str) -> Vec<(hir::Domain, CompiledDomain)> {
    let mut sources = ved_syntax::SourceMap::new();
    let id = sources.add(name, src.to_string());
    let ast = ved_syntax::parse_file(id, src).expect("the program parses");
    let program = ved_check::check_program(&[ast]).program.expect("the program checks");
    let compiled = ved_vm::compile_program(&program);
    program.domains.into_iter().zip(compiled.domains).collect()
}

/// Every program `ved verify` is tested on, and the grid benchmark at two bounds:
/// inside the packed range, and one whose walk to the centre leaves it.
fn programs() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for dir in ["examples", "tests/data/verify"] {
        let mut files: Vec<_> = std::fs::read_dir(root().join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "ved") && !p.to_string_lossy().ends_with(".test.ved"))
            .collect();
        files.sort();
        for f in files {
            out.push((f.display().to_string(), std::fs::read_to_string(&f).unwrap()));
        }
    }
    let grid = std::fs::read_to_string(root().join("benches/verify_grid.ved")).unwrap();
    out.push(("grid 45..54 (packed as 0..63 with the initial 0)".into(), grid.replace("0..99", "45..54")));
    out.push(("grid 0..19, leaving the packed range (0..31)".into(), grid.replace("0..99", "0..19")));
    // Wide fields (0..300 takes nine bits): the goal reads 27 bits and `all_down`
    // touches 27, too many to remember, so the VM runs on unpacked values.
    let wide = grid
        .replace("verify { x in 0..99, y in 0..99, z in 0..99 }", "verify { x in [0, 49, 300], y in [50, 52], z in [51, 300] }")
        .replace(
            "transition x_up",
            "transition all_down { step { if x > 50 && y > 50 && z > 50 { x -= 1\n y -= 1\n z -= 1 } } }\n  transition x_up",
        );
    assert_ne!(wide, grid);
    out.push(("grid with wide fields".into(), wide));
    // Goals of single comparisons joined by `&&` are remembered one comparison at a
    // time: field with field, field with constant, and a goal that does not split.
    let goal = "goal x == 50 && y == 50 && z == 50";
    assert!(grid.contains(goal));
    let split = grid.replace("0..99", "44..53").replace(goal, "goal x == y && y == z && z >= 50 && x <= 50");
    out.push(("grid with a goal of comparisons of fields".into(), split));
    let mixed = grid.replace("0..99", "46..52").replace(goal, "goal x == 50 && y + 0 == 50\n  goal z != 49 && z < 51");
    out.push(("grid with a goal that does not split, and a second goal".into(), mixed));
    out
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Way {
    Packed,
    /// Packed, but the VM runs for every goal and step.
    Forgetful,
    Whole,
}

fn explore(dom: &CompiledDomain, bounds: &[Vec<Value>], budget: u8, model: Model, way: Way) -> Graph {
    let ex = Explorer::new(dom, model, bounds.to_vec());
    let mut ex = match way {
        Way::Packed => ex,
        Way::Forgetful => ex.forgetful(),
        Way::Whole => ex.unpacked(),
    };
    // Every start state of the product, in the product's order.
    let mut starts: Vec<Vec<Value>> = vec![Vec::new()];
    for b in bounds {
        starts = starts.iter().flat_map(|p| b.iter().map(move |v| [p.clone(), vec![v.clone()]].concat())).collect();
    }
    for s in starts {
        ex.add_start(s, budget);
    }
    ex.run(2_000_000, &mut |_, _| {})
}

fn assert_same_graph(what: &str, a: &Graph, b: &Graph) {
    assert_eq!(a.len(), b.len(), "{what}: states");
    assert_eq!(a.kinds, b.kinds, "{what}: kinds");
    assert_eq!(a.faults, b.faults, "{what}: faults");
    assert_eq!(a.succ_off, b.succ_off, "{what}: successor offsets");
    assert_eq!(a.succ, b.succ, "{what}: successors");
    assert_eq!(a.goal_ever_true, b.goal_ever_true, "{what}: goals");
    assert_eq!(a.lost, b.lost, "{what}: lost update");
    assert_eq!(a.lost_count, b.lost_count, "{what}: lost updates");
    assert_eq!(a.complete, b.complete, "{what}: complete");
    for i in 0..a.len() as u32 {
        assert_eq!(a.node(i), b.node(i), "{what}: node {i}");
        assert_eq!(a.parent(i), b.parent(i), "{what}: parent of {i}");
    }
}

#[test]
fn packed_and_whole_nodes_give_the_same_graph_and_report() {
    let models = [
        Model::default(),
        Model { serialize_conflicts: false, ..Model::default() },
        Model { every_observed_value: true, ..Model::default() },
    ];
    let (mut packed_nodes, mut whole_nodes, mut cycles) = (0, 0, 0);
    for (name, src) in programs() {
        for (d, c) in load_src(&name, &src) {
            let shape = Shape { margin: 1, max_len: 2 };
            let bounds: Vec<Vec<Value>> =
                ved_verify::bounds::field_bounds(&d, &c, shape).unwrap().into_iter().map(|b| b.values).collect();
            for model in models {
                for budget in [0, 2] {
                    let what = format!("{name}, {}, {model:?}, budget {budget}", d.name);
                    let p = explore(&c, &bounds, budget, model, Way::Packed);
                    let w = explore(&c, &bounds, budget, model, Way::Whole);
                    assert_same_graph(&what, &p, &w);
                    // The cycle check and depth in one pass, as the two passes give them.
                    let two_passes = p.topological_order().map(|order| p.longest_path_in(&order));
                    assert_eq!(p.acyclic_depth(), two_passes, "{what}: depth");
                    if two_passes.is_none() {
                        cycles += 1;
                    }
                    let f = explore(&c, &bounds, budget, model, Way::Forgetful);
                    assert_same_graph(&format!("{what}, forgetful"), &f, &w);
                    assert!((0..w.len() as u32).all(|i| !w.is_packed(i)), "{what}: unpacked keeps every node whole");
                    packed_nodes += (0..p.len() as u32).filter(|&i| p.is_packed(i)).count();
                    whole_nodes += (0..p.len() as u32).filter(|&i| !p.is_packed(i)).count();
                }
                let opts = Options { shape, ..Options::default() };
                let a = verify_domain_in(&d, &c, opts, model, &mut |_, _| {});
                let b = verify_domain_unpacked(&d, &c, opts, model, &mut |_, _| {});
                assert_eq!(format!("{a:?}"), format!("{b:?}"), "{name}, {}, {model:?}: report", d.name);
            }
        }
    }
    // Both representations, and nodes of both kinds in one graph, were exercised.
    assert!(packed_nodes > 10_000, "{packed_nodes} packed nodes");
    assert!(whole_nodes > 1_000, "{whole_nodes} whole nodes");
    assert!(cycles > 0, "some graph has a cycle");
}

#[test]
fn the_grid_packs_inside_its_range_and_keeps_whole_outside_it() {
    let grid = std::fs::read_to_string(root().join("benches/verify_grid.ved")).unwrap();
    for (range, all_packed) in [("45..54", true), ("0..19", false)] {
        let doms = load_src("grid", &grid.replace("0..99", range));
        let (d, c) = &doms[0];
        let bounds: Vec<Vec<Value>> =
            ved_verify::bounds::field_bounds(d, c, Shape::default()).unwrap().into_iter().map(|b| b.values).collect();
        let g = explore(c, &bounds, 0, Model::default(), Way::Packed);
        let packed = (0..g.len() as u32).filter(|&i| g.is_packed(i)).count();
        if all_packed {
            assert_eq!(packed, g.len());
        } else {
            // 0..19 packs as 0..31 (five bits): the walk to 50 leaves it.
            assert!(packed > 0 && packed < g.len(), "{packed} of {}", g.len());
        }
    }
}
