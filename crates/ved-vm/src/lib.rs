//! `ved-vm` lowers a checked program to a compact stack bytecode and runs it.
//! It is pure and deterministic: no I/O, no clock, no randomness. The
//! interpreter never walks the syntax tree; it runs `Op`s with a constant pool,
//! against a state it never mutates: a step's writes go to a copy-on-write
//! overlay and come back as a [`StepOutcome`], which the runtime commits or
//! drops. Values share their collections through `Arc`, so copying a state is
//! cheap. Runtime errors are [`Fault`] values with the span that caused them.

mod code;
mod fault;
mod interp;
mod value;
mod value_serde;

pub use code::{compile_expr, compile_step, disassemble, Code, EmitSite, Op};
pub use fault::{Fault, FaultKind};
pub use interp::{Intent, StepOutcome, Vm};
pub use value::Value;

use ved_check::hir;
use ved_check::Type;
use ved_syntax::Span;

/// The largest collection (elements) or string (bytes) a program may build.
pub const SIZE_MAX: usize = 1_000_000;

/// The most elements and string bytes, counted through every nested value, that a
/// value a step stores in a field or emits may hold. [`SIZE_MAX`] bounds one level
/// only, and values share their parts (`Arc`): a list of a million references to one
/// megabyte string costs 24 MB to hold but is a terabyte to write into the journal,
/// the store and the event stream. The bound keeps every such record below roughly
/// this many bytes of text.
pub const TOTAL_SIZE_MAX: usize = 16_000_000;

#[derive(Clone, Debug)]
pub struct CompiledTransition {
    pub name: String,
    pub optimistic: bool,
    pub code: Code,
    pub span: Span,
    /// The state fields the step loads, in any branch (sorted slots).
    pub reads: Vec<u16>,
    /// The state fields the step assigns, in any branch (sorted slots).
    pub writes: Vec<u16>,
}

impl CompiledTransition {
    /// Whether this step touches (reads or writes) a field that `other` writes.
    /// The runtime holds such a step back while `other` is in flight, so two held
    /// writes computed from the same old state can never overwrite each other.
    pub fn conflicts_with(&self, other: &CompiledTransition) -> bool {
        other.writes.iter().any(|f| self.reads.binary_search(f).is_ok() || self.writes.binary_search(f).is_ok())
    }
}

/// The fields a piece of code loads and stores, each sorted and once.
pub fn access_sets(code: &Code) -> (Vec<u16>, Vec<u16>) {
    let (mut reads, mut writes) = (Vec::new(), Vec::new());
    for op in &code.ops {
        match op {
            Op::LoadField(f) | Op::FieldCmpConst(f, ..) | Op::JumpUnlessFieldCmpConst(f, ..) => reads.push(*f),
            Op::FieldCmpField(a, b, _) => reads.extend([*a, *b]),
            Op::StoreField(f) => writes.push(*f),
            Op::FieldArithConst(f, ..) => {
                reads.push(*f);
                writes.push(*f);
            }
            _ => {}
        }
    }
    for v in [&mut reads, &mut writes] {
        v.sort_unstable();
        v.dedup();
    }
    (reads, writes)
}

#[derive(Clone, Debug)]
pub struct CompiledGoal {
    pub name: String,
    pub code: Code,
    pub span: Span,
}

#[derive(Clone, Debug)]
pub struct CompiledDomain {
    pub name: String,
    pub fields: Vec<(String, Type)>,
    pub defaults: Vec<Option<Code>>,
    pub goals: Vec<CompiledGoal>,
    /// Every field any goal reads, sorted: a slice that changes none of them leaves the
    /// goals' verdict as it was.
    pub goal_reads: Vec<u16>,
    pub transitions: Vec<CompiledTransition>,
}

#[derive(Clone, Debug)]
pub struct CompiledProgram {
    pub domains: Vec<CompiledDomain>,
}

/// Lowers every domain of a checked program (scenarios stay in the HIR).
pub fn compile_program(p: &hir::Program) -> CompiledProgram {
    compile_program_with(p, true)
}

/// The same program without superinstructions: only the plain ops. For tests that show
/// the fused code computes exactly what the plain code does.
#[doc(hidden)]
pub fn compile_program_unfused(p: &hir::Program) -> CompiledProgram {
    compile_program_with(p, false)
}

fn compile_program_with(p: &hir::Program, fused: bool) -> CompiledProgram {
    CompiledProgram {
        domains: p
            .domains
            .iter()
            .map(|d| {
                let goals: Vec<CompiledGoal> = d
                    .goals
                    .iter()
                    .map(|g| CompiledGoal {
                        name: g.name.clone(),
                        code: code::compile_expr_with(&g.predicate, fused),
                        span: g.span,
                    })
                    .collect();
                let mut goal_reads: Vec<u16> = goals.iter().flat_map(|g| access_sets(&g.code).0).collect();
                goal_reads.sort_unstable();
                goal_reads.dedup();
                CompiledDomain {
                    name: d.name.clone(),
                    fields: code::field_types(d),
                    defaults: d
                        .fields
                        .iter()
                        .map(|f| f.default.as_ref().map(|e| code::compile_expr_with(e, fused)))
                        .collect(),
                    goals,
                    goal_reads,
                    transitions: d
                        .transitions
                        .iter()
                        .map(|t| {
                            let code = code::compile_step_with(t, fused);
                            let (reads, writes) = access_sets(&code);
                            CompiledTransition {
                                name: t.name.clone(),
                                optimistic: t.optimistic,
                                code,
                                span: t.span,
                                reads,
                                writes,
                            }
                        })
                        .collect(),
                }
            })
            .collect(),
    }
}
