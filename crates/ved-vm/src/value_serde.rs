//! How a [`Value`] is written to the store: a one-key object whose key tags the
//! kind, so that lists, sets and maps survive the round trip:
//! `{"i":3}`, `{"b":true}`, `{"s":"x"}`, `{"l":[..]}`, `{"set":[..]}` (ascending)
//! and `{"m":[["key",value],..]}` (by key).

use crate::Value;
use serde::de::{self, EnumAccess, VariantAccess, Visitor};
use serde::ser::{Serialize, Serializer};
use serde::{Deserialize, Deserializer};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

const TAGS: &[&str] = &["i", "b", "s", "l", "set", "m"];

/// A map's entries as a list of `[key, value]` pairs.
struct Pairs<'a>(&'a BTreeMap<Arc<str>, Value>);

impl Serialize for Pairs<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|(k, v)| (&**k, v)))
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Int(i) => s.serialize_newtype_variant("Value", 0, "i", i),
            Value::Bool(b) => s.serialize_newtype_variant("Value", 1, "b", b),
            Value::Str(x) => s.serialize_newtype_variant("Value", 2, "s", &**x),
            Value::List(l) => s.serialize_newtype_variant("Value", 3, "l", &**l),
            Value::Set(x) => s.serialize_newtype_variant("Value", 4, "set", &**x),
            Value::Map(m) => s.serialize_newtype_variant("Value", 5, "m", &Pairs(m)),
        }
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a tagged value: {\"i\"|\"b\"|\"s\"|\"l\"|\"set\"|\"m\": ..}")
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Value, A::Error> {
        let (tag, v): (String, _) = data.variant()?;
        Ok(match tag.as_str() {
            "i" => Value::Int(v.newtype_variant()?),
            "b" => Value::Bool(v.newtype_variant()?),
            "s" => Value::Str(Arc::from(v.newtype_variant::<String>()?)),
            "l" => Value::List(Arc::new(v.newtype_variant()?)),
            "set" => Value::Set(Arc::new(v.newtype_variant::<Vec<Value>>()?.into_iter().collect::<BTreeSet<_>>())),
            "m" => Value::Map(Arc::new(
                v.newtype_variant::<Vec<(String, Value)>>()?
                    .into_iter()
                    .map(|(k, v)| (Arc::from(k), v))
                    .collect::<BTreeMap<_, _>>(),
            )),
            other => return Err(de::Error::unknown_variant(other, TAGS)),
        })
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        d.deserialize_enum("Value", TAGS, ValueVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_have_the_stored_tagged_form_and_come_back() {
        let set = Value::Set(Arc::new([Value::Int(3), Value::Int(-1)].into_iter().collect()));
        let map = Value::Map(Arc::new(BTreeMap::from([
            (Arc::from("z"), Value::Bool(true)),
            (Arc::from("a"), Value::List(Arc::new(vec![Value::Str(Arc::from("x\"y")), set.clone()]))),
        ])));
        let cases = [
            (Value::Int(-5), r#"{"i":-5}"#),
            (Value::Bool(false), r#"{"b":false}"#),
            (Value::Str(Arc::from("")), r#"{"s":""}"#),
            (Value::List(Arc::new(Vec::new())), r#"{"l":[]}"#),
            (set, r#"{"set":[{"i":-1},{"i":3}]}"#),
            (map, r#"{"m":[["a",{"l":[{"s":"x\"y"},{"set":[{"i":-1},{"i":3}]}]}],["z",{"b":true}]]}"#),
        ];
        for (v, json) in cases {
            assert_eq!(serde_json::to_string(&v).unwrap(), json);
            assert_eq!(serde_json::from_str::<Value>(json).unwrap(), v);
        }
        // A set written out of order still reads as a set.
        assert_eq!(
            serde_json::from_str::<Value>(r#"{"set":[{"i":3},{"i":-1},{"i":3}]}"#).unwrap(),
            Value::Set(Arc::new([Value::Int(-1), Value::Int(3)].into_iter().collect()))
        );
        assert!(serde_json::from_str::<Value>(r#"{"f":1.5}"#).is_err());
        assert!(serde_json::from_str::<Value>(r#"{"i":"7"}"#).is_err());
    }
}
