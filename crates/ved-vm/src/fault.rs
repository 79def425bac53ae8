//! Runtime errors. A fault aborts the slice; it is a value, never a panic.

use std::fmt;
use ved_syntax::Span;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    pub kind: FaultKind,
    /// The operation that faulted.
    pub span: Span,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultKind {
    Overflow {
        op: &'static str,
    },
    DivisionByZero,
    IndexOutOfRange {
        index: i64,
        len: usize,
    },
    EmptyCollection {
        member: &'static str,
    },
    MissingKey {
        key: String,
    },
    TooLarge {
        limit: usize,
    },
    /// A stored or emitted value over [`crate::TOTAL_SIZE_MAX`], counted through its
    /// nested values.
    TooLargeInAll {
        limit: usize,
    },
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FaultKind::Overflow { op } => write!(f, "integer overflow in `{op}`"),
            FaultKind::DivisionByZero => f.write_str("division by zero"),
            FaultKind::IndexOutOfRange { index, len } => {
                write!(f, "index {index} is out of range for a list of length {len}")
            }
            FaultKind::EmptyCollection { member } => {
                write!(f, "`.{member}` of an empty collection")
            }
            FaultKind::MissingKey { key } => write!(f, "key {key:?} is not in the map"),
            FaultKind::TooLarge { limit } => {
                write!(f, "value exceeds the limit of {limit} elements")
            }
            FaultKind::TooLargeInAll { limit } => {
                write!(f, "value holds more than {limit} elements and string bytes in all, counting nested values")
            }
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.kind.fmt(f)
    }
}
