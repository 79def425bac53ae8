//! Conversions between runtime values and JSON, at the edge only.

use serde_json::{Map, Number, Value as Json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use ved_check::Type;
use ved_vm::Value;

pub fn to_json(v: &Value) -> Json {
    match v {
        Value::Int(i) => Json::Number(Number::from(*i)),
        Value::Bool(b) => Json::Bool(*b),
        Value::Str(s) => Json::String(s.to_string()),
        Value::List(l) => Json::Array(l.iter().map(to_json).collect()),
        Value::Set(s) => Json::Array(s.iter().map(to_json).collect()),
        Value::Map(m) => Json::Object(m.iter().map(|(k, v)| (k.to_string(), to_json(v))).collect::<Map<_, _>>()),
    }
}

/// Converts a JSON value to a value of type `ty`, or says what is wrong with it.
pub fn from_json(j: &Json, ty: &Type) -> Result<Value, String> {
    match (ty, j) {
        (Type::Int, Json::Number(n)) => {
            n.as_i64().map(Value::Int).ok_or_else(|| format!("{n} is not a 64-bit integer"))
        }
        (Type::Bool, Json::Bool(b)) => Ok(Value::Bool(*b)),
        (Type::Str, Json::String(s)) => Ok(Value::Str(Arc::from(s.as_str()))),
        (Type::List(t), Json::Array(items)) => {
            let vals = items.iter().map(|i| from_json(i, t)).collect::<Result<Vec<_>, _>>()?;
            Ok(Value::List(Arc::new(vals)))
        }
        (Type::Set(t), Json::Array(items)) => {
            let vals = items.iter().map(|i| from_json(i, t)).collect::<Result<BTreeSet<_>, _>>()?;
            Ok(Value::Set(Arc::new(vals)))
        }
        (Type::Map(t), Json::Object(obj)) => {
            let mut m = BTreeMap::new();
            for (k, v) in obj {
                m.insert(Arc::from(k.as_str()), from_json(v, t).map_err(|e| format!("at key \"{k}\": {e}"))?);
            }
            Ok(Value::Map(Arc::new(m)))
        }
        (ty, j) => Err(format!("expected {}, found {}", describe_type(ty), describe_json(j))),
    }
}

fn describe_type(ty: &Type) -> String {
    match ty {
        Type::Int => "an integer".into(),
        Type::Bool => "true or false".into(),
        Type::Str => "a string".into(),
        Type::List(_) | Type::Set(_) => format!("an array (`{ty}`)"),
        Type::Map(_) => format!("an object (`{ty}`)"),
        Type::Error => "a value".into(),
    }
}

fn describe_json(j: &Json) -> String {
    match j {
        Json::Null => "null".into(),
        Json::Bool(b) => format!("`{b}`"),
        Json::Number(n) => format!("the number {n}"),
        Json::String(s) => format!("the string {s:?}"),
        Json::Array(_) => "an array".into(),
        Json::Object(_) => "an object".into(),
    }
}
