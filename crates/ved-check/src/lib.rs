//! `ved-check` resolves names and checks types. It takes the syntax trees of one
//! program (all files given on one command line, in order) and returns either a
//! fully resolved, typed [`hir::Program`] or a list of diagnostics; warnings
//! (lints) come back either way. Top-level goals and transitions are attached to
//! the domain declared above them here. It does no I/O.

pub mod check;
pub mod hir;
pub mod types;

pub use check::{check_program, Checked};
pub use types::Type;
