//! Runtime values. Collections sit behind `Arc`, so copying a state is cheap
//! and a write copies only what it changes (copy-on-write).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use ved_check::Type;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Value {
    Int(i64),
    Bool(bool),
    Str(Arc<str>),
    List(Arc<Vec<Value>>),
    Set(Arc<BTreeSet<Value>>),
    Map(Arc<BTreeMap<Arc<str>, Value>>),
}

impl Value {
    /// The zero value of a type: 0, false, "", or an empty collection.
    pub fn zero(ty: &Type) -> Value {
        match ty {
            Type::Int | Type::Error => Value::Int(0),
            Type::Bool => Value::Bool(false),
            Type::Str => Value::Str(Arc::from("")),
            Type::List(_) => Value::List(Arc::new(Vec::new())),
            Type::Set(_) => Value::Set(Arc::new(BTreeSet::new())),
            Type::Map(_) => Value::Map(Arc::new(BTreeMap::new())),
        }
    }

    /// Whether the value (deeply) has type `ty`; used on values from outside.
    pub fn type_matches(&self, ty: &Type) -> bool {
        match (self, ty) {
            (_, Type::Error) => true,
            (Value::Int(_), Type::Int) | (Value::Bool(_), Type::Bool) | (Value::Str(_), Type::Str) => true,
            (Value::List(l), Type::List(t)) => l.iter().all(|v| v.type_matches(t)),
            (Value::Set(s), Type::Set(t)) => s.iter().all(|v| v.type_matches(t)),
            (Value::Map(m), Type::Map(t)) => m.values().all(|v| v.type_matches(t)),
            _ => false,
        }
    }

    /// Number of elements (collections) or bytes (strings), for size limits.
    pub(crate) fn size(&self) -> usize {
        match self {
            Value::Int(_) | Value::Bool(_) => 1,
            Value::Str(s) => s.len(),
            Value::List(l) => l.len(),
            Value::Set(s) => s.len(),
            Value::Map(m) => m.len(),
        }
    }
}

fn write_str(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    f.write_str("\"")?;
    for c in s.chars() {
        match c {
            '"' => f.write_str("\\\"")?,
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\t' => f.write_str("\\t")?,
            c => write!(f, "{c}")?,
        }
    }
    f.write_str("\"")
}

fn write_seq<'a>(f: &mut fmt::Formatter<'_>, items: impl Iterator<Item = &'a Value>) -> fmt::Result {
    for (i, v) in items.enumerate() {
        if i > 0 {
            f.write_str(", ")?;
        }
        write!(f, "{v}")?;
    }
    Ok(())
}

/// Ved literal syntax, so that traces and messages read like the program.
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(i) => write!(f, "{i}"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Str(s) => write_str(f, s),
            Value::List(l) => {
                f.write_str("[")?;
                write_seq(f, l.iter())?;
                f.write_str("]")
            }
            Value::Set(s) => {
                f.write_str("set[")?;
                write_seq(f, s.iter())?;
                f.write_str("]")
            }
            Value::Map(m) if m.is_empty() => f.write_str("[:]"),
            Value::Map(m) => {
                f.write_str("[")?;
                for (i, (k, v)) in m.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write_str(f, k)?;
                    write!(f, ": {v}")?;
                }
                f.write_str("]")
            }
        }
    }
}

/// Whether `values` hold more than `limit` elements and string bytes in all, counting
/// through nested values (a scalar or an empty collection counts one). The walk stops
/// as soon as the count passes `limit`, so it costs at most `limit` steps however large
/// the values are: they share their parts, and a value that is small to hold can be
/// enormous to write out.
pub(crate) fn total_size_exceeds<'a>(values: impl IntoIterator<Item = &'a Value>, limit: usize) -> bool {
    fn add(v: &Value, acc: &mut usize, limit: usize) -> bool {
        match v {
            Value::Int(_) | Value::Bool(_) => bump(acc, 1, limit),
            Value::Str(s) => bump(acc, s.len().max(1), limit),
            Value::List(l) if l.is_empty() => bump(acc, 1, limit),
            Value::List(l) => l.iter().any(|x| add(x, acc, limit)),
            Value::Set(s) if s.is_empty() => bump(acc, 1, limit),
            Value::Set(s) => s.iter().any(|x| add(x, acc, limit)),
            Value::Map(m) if m.is_empty() => bump(acc, 1, limit),
            Value::Map(m) => m.iter().any(|(k, x)| bump(acc, k.len(), limit) || add(x, acc, limit)),
        }
    }
    fn bump(acc: &mut usize, n: usize, limit: usize) -> bool {
        *acc = acc.saturating_add(n);
        *acc > limit
    }
    let mut acc = 0;
    values.into_iter().any(|v| add(v, &mut acc, limit))
}
