//! JSON as Ved's inputs take it: like `serde_json`, except that an object with the
//! same key twice is refused. `serde_json::Value` keeps the last of them silently, so
//! `{"workers": 5, "workers": 0}` would mean whatever the last writer of the line
//! chose, and a proxy or a log reader that keeps the first would see another
//! request than the one applied.

use serde::de::{DeserializeSeed, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value as Json};
use std::fmt;

/// Parses one JSON document; trailing characters, and an object that repeats a key, are errors.
/// The message names the key and where the repeat is (`duplicate key `workers` at line 1 column 25`).
pub fn parse(bytes: &[u8]) -> Result<Json, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = Strict.deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

/// Builds a [`Json`] value, refusing repeated keys at every depth.
struct Strict;

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = Json;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Json, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = Json;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Json, E> {
        Ok(Json::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Json, E> {
        Ok(Json::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Json, E> {
        Ok(Json::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Json, E> {
        // JSON text has no NaN or infinity, so every float read here has a `Number`.
        Ok(serde_json::Number::from_f64(v).map_or(Json::Null, Json::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Json, E> {
        Ok(Json::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Json, E> {
        Ok(Json::String(v))
    }

    fn visit_unit<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_none<E>(self) -> Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(v) = seq.next_element_seed(Strict)? {
            items.push(v);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(A::Error::custom(format_args!(
                    "duplicate key `{key}`: a key may appear once in an object"
                )));
            }
            let value = map.next_value_seed(Strict)?;
            out.insert(key, value);
        }
        Ok(Json::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::parse;
    use serde_json::json;

    #[test]
    fn reads_what_serde_json_reads() {
        let text = r#"{"a": [1, -2, 3.5, "x", null, true, {"b": {}}], "c": 18446744073709551615}"#;
        assert_eq!(parse(text.as_bytes()).unwrap(), serde_json::from_str::<serde_json::Value>(text).unwrap());
        assert_eq!(parse(b" [] ").unwrap(), json!([]));
    }

    #[test]
    fn refuses_a_repeated_key_at_any_depth_and_says_where() {
        let e = parse(br#"{"workers": 5, "workers": 0}"#).unwrap_err().to_string();
        assert!(e.contains("duplicate key `workers`") && e.contains("line 1 column"), "{e}");
        let e = parse(br#"{"set": {"a": 1, "b": 2, "a": 3}}"#).unwrap_err().to_string();
        assert!(e.contains("duplicate key `a`"), "{e}");
        let e = parse(br#"[{"x": 1}, {"y": 1, "y": 1}]"#).unwrap_err().to_string();
        assert!(e.contains("duplicate key `y`"), "{e}");
        // Keys differing only in case, or by escapes that decode differently, are different keys;
        // an escape that decodes to the same key is the same key.
        assert!(parse(br#"{"a": 1, "A": 2}"#).is_ok());
        assert!(parse(br#"{"a": 1, "\u0061": 2}"#).is_err());
    }

    #[test]
    fn refuses_trailing_text_and_deep_nesting() {
        assert!(parse(br#"{"a": 1} x"#).is_err());
        let deep = "[".repeat(100_000);
        assert!(parse(deep.as_bytes()).is_err());
    }
}
