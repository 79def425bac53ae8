//! The records the store writes, as serde types. An instance's snapshot is
//! [`ved_runtime::InstanceSnapshot`] itself (its serde form is the stored one);
//! the record adds only what the store checks on recovery: the domain's name and
//! fields.

use serde::ser::{self, Impossible, SerializeMap, SerializeStruct};
use serde::{Deserialize, Serialize, Serializer};
use ved_runtime::InstanceSnapshot;

/// One instance's snapshot, as written after a slice: the snapshot's own fields, with
/// the domain's name and fields (name, type) next to the instance's name, so that a
/// changed program is noticed:
/// `{"instance", "domain", "fields", "domain_index", "slice", ..}`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct SnapshotRecord {
    pub domain: String,
    pub fields: Vec<(String, String)>,
    #[serde(flatten)]
    pub snapshot: InstanceSnapshot,
}

impl SnapshotRecord {
    pub fn from_snapshot(
        snapshot: InstanceSnapshot,
        domain: &str,
        fields: &[(String, ved_check::Type)],
    ) -> SnapshotRecord {
        SnapshotRecord {
            domain: domain.to_string(),
            fields: fields.iter().map(|(n, t)| (n.clone(), t.to_string())).collect(),
            snapshot,
        }
    }
}

impl Serialize for SnapshotRecord {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        self.snapshot.serialize(Splice { map: &mut map, header: self })?;
        map.end()
    }
}

/// Writes the snapshot's fields into the record's map, and the header right after
/// the `instance` key, where stores have always had it.
struct Splice<'a, M> {
    map: &'a mut M,
    header: &'a SnapshotRecord,
}

impl<M: SerializeMap> SerializeStruct for Splice<'_, M> {
    type Ok = ();
    type Error = M::Error;

    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result<(), M::Error> {
        self.map.serialize_entry(key, value)?;
        if key == "instance" {
            self.map.serialize_entry("domain", &self.header.domain)?;
            self.map.serialize_entry("fields", &self.header.fields)?;
        }
        Ok(())
    }

    fn end(self) -> Result<(), M::Error> {
        Ok(())
    }
}

macro_rules! not_a_struct {
    ($($name:ident($($arg:ty),*) -> $ret:ty;)*) => {
        $(fn $name(self, $(_: $arg),*) -> Result<$ret, M::Error> {
            Err(ser::Error::custom("a snapshot serializes as a struct"))
        })*
    };
}

impl<'a, M: SerializeMap> Serializer for Splice<'a, M> {
    type Ok = ();
    type Error = M::Error;
    type SerializeSeq = Impossible<(), M::Error>;
    type SerializeTuple = Impossible<(), M::Error>;
    type SerializeTupleStruct = Impossible<(), M::Error>;
    type SerializeTupleVariant = Impossible<(), M::Error>;
    type SerializeMap = Impossible<(), M::Error>;
    type SerializeStruct = Self;
    type SerializeStructVariant = Impossible<(), M::Error>;

    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self, M::Error> {
        Ok(self)
    }

    not_a_struct! {
        serialize_bool(bool) -> ();
        serialize_i8(i8) -> ();
        serialize_i16(i16) -> ();
        serialize_i32(i32) -> ();
        serialize_i64(i64) -> ();
        serialize_u8(u8) -> ();
        serialize_u16(u16) -> ();
        serialize_u32(u32) -> ();
        serialize_u64(u64) -> ();
        serialize_f32(f32) -> ();
        serialize_f64(f64) -> ();
        serialize_char(char) -> ();
        serialize_str(&str) -> ();
        serialize_bytes(&[u8]) -> ();
        serialize_none() -> ();
        serialize_unit() -> ();
        serialize_unit_struct(&'static str) -> ();
        serialize_unit_variant(&'static str, u32, &'static str) -> ();
        serialize_seq(Option<usize>) -> Self::SerializeSeq;
        serialize_tuple(usize) -> Self::SerializeTuple;
        serialize_tuple_struct(&'static str, usize) -> Self::SerializeTupleStruct;
        serialize_tuple_variant(&'static str, u32, &'static str, usize) -> Self::SerializeTupleVariant;
        serialize_map(Option<usize>) -> Self::SerializeMap;
        serialize_struct_variant(&'static str, u32, &'static str, usize) -> Self::SerializeStructVariant;
    }

    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<(), M::Error> {
        Err(ser::Error::custom("a snapshot serializes as a struct"))
    }

    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, _: &T) -> Result<(), M::Error> {
        Err(ser::Error::custom("a snapshot serializes as a struct"))
    }

    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<(), M::Error> {
        Err(ser::Error::custom("a snapshot serializes as a struct"))
    }
}

/// One entry of an instance's causal journal: what one slice did and why.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct JournalEntry {
    pub instance: String,
    pub slice: u64,
    pub at_ms: u64,
    /// `observe`, `transition`, `result` or `timer`.
    pub cause: String,
    /// The transition, intent id or source the cause names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Fields changed by the slice: name, new value (Ved syntax).
    pub changes: Vec<(String, String)>,
    /// Changes held until the slice's intents succeed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held: Vec<(String, String)>,
    /// Intents emitted: id, call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub intents: Vec<(String, String)>,
    /// Results this slice applied: id, ok, error.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub results: Vec<(String, bool, Option<String>)>,
    /// Lineage: the intent whose effect this observation reports, when the adapter says so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caused_by: Option<String>,
    /// For an observation: the values it reported, as JSON, so that `ved replay` can feed
    /// the same message again. (Before sources were journaled: only the values it changed.)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub observed: Vec<(String, serde_json::Value)>,
    /// For a relative observation (`add`): field, delta. `ved replay` feeds it as an `add`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub added: Vec<(String, i64)>,
    /// For an observation: where it came from: `stdin`, `api`, a watcher (`watch#1`), or the
    /// `source` the input named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Messages queued together (applied back to back, no tick between them) share a batch:
    /// the slice of the batch's first message. Absent for a message applied on its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<u64>,
    /// For a transition slice: the outside input (observation, result or timer) whose run
    /// of ticks it belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
    /// Observations that changed nothing on a stable instance (periodic resyncs), applied
    /// since the previous entry and not journaled. `ved replay` applies as many empty ones.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub quiet: u64,
    /// The status the instance reached after this slice, when it changed: `waiting`,
    /// `stuck`, `livelock`, `degraded` or `stable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Why, for `stuck`, `livelock` and `degraded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The outside input a transition slice descends from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Origin {
    pub slice: u64,
    /// `observe`, `result` or `timer`.
    pub cause: String,
    /// The intent id (result) or transition (timer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// For an observation: its source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "slice {} ({}", self.slice, self.cause)?;
        if let Some(d) = &self.detail {
            write!(f, " {d}")?;
        }
        if let Some(s) = &self.source {
            write!(f, " from {s}")?;
        }
        write!(f, ")")
    }
}

/// What the log holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    Snapshot(SnapshotRecord),
    Journal(JournalEntry),
    /// The instance's journal was trimmed to its last `keep` entries.
    Trim {
        instance: String,
        keep_from_slice: u64,
    },
    /// The source files of the program that wrote the store: name, text. `ved replay`
    /// runs them again.
    /// Ends a batch in the log. Recovery applies a batch's records only when its
    /// `Commit` is there too, so a batch is all or nothing even when a crash tears it.
    /// `at`: the log offset where the batch began.
    Commit {
        at: u64,
    },
    Program {
        files: Vec<(String, String)>,
        /// The retry policy in force: initial ms, factor, cap ms, breaker threshold.
        #[serde(default)]
        retry: Option<(u64, u32, u64, u32)>,
        /// How long a watcher has to confirm an effect (absent: the default).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        confirm_ms: Option<u64>,
    },
    /// The instance was deleted (`DELETE /v1/instances/{name}`): recovery forgets its
    /// snapshots and journal, so a restart does not bring it back. Its audit entries stay.
    Remove {
        instance: String,
    },
}
