//! Ved's types.

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Type {
    Int,
    Bool,
    Str,
    List(Box<Type>),
    Set(Box<Type>),
    /// `map<string, T>`: keys are always strings.
    Map(Box<Type>),
    /// The type of an expression that already produced a diagnostic. It unifies
    /// with everything so that one mistake gives one error, not a cascade.
    Error,
}

impl Type {
    pub fn list(elem: Type) -> Type {
        Type::List(Box::new(elem))
    }

    pub fn set(elem: Type) -> Type {
        Type::Set(Box::new(elem))
    }

    pub fn map(value: Type) -> Type {
        Type::Map(Box::new(value))
    }

    /// The element type of a list or set.
    pub fn elem(&self) -> Option<&Type> {
        match self {
            Type::List(t) | Type::Set(t) => Some(t),
            _ => None,
        }
    }

    pub fn is_error(&self) -> bool {
        matches!(self, Type::Error)
    }

    /// True when a value of type `other` may be used where `self` is expected.
    /// `Error` is compatible with everything.
    pub fn accepts(&self, other: &Type) -> bool {
        match (self, other) {
            (Type::Error, _) | (_, Type::Error) => true,
            (Type::List(a), Type::List(b)) | (Type::Set(a), Type::Set(b)) | (Type::Map(a), Type::Map(b)) => {
                a.accepts(b)
            }
            (a, b) => a == b,
        }
    }

    /// Whether `<`, `<=`, `>`, `>=` are defined.
    pub fn is_ordered(&self) -> bool {
        matches!(self, Type::Int | Type::Str | Type::Error)
    }
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Type::Int => f.write_str("int"),
            Type::Bool => f.write_str("bool"),
            Type::Str => f.write_str("string"),
            Type::List(t) => write!(f, "list<{t}>"),
            Type::Set(t) => write!(f, "set<{t}>"),
            Type::Map(t) => write!(f, "map<string, {t}>"),
            Type::Error => f.write_str("{unknown}"),
        }
    }
}
