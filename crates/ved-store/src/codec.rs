//! The records the store writes, as serde types. An instance's snapshot is
//! [`ved_runtime::InstanceSnapshot`] itself (its serde form is the stored one);
//! the record adds only what the store checks on recovery: the domain's name and
//! fields.

use serde::ser::{self, Impossible, SerializeMap, SerializeStruct};
use serde::{Deserialize, Serialize, Serializer};
use std::sync::Arc;
use ved_runtime::InstanceSnapshot;

/// A domain as a store records it: its name and its fields (name, type), so that a
/// changed program is noticed and migrated by field name. One value per domain is
/// shared by every snapshot of it, in memory and (in the binary format) on disk.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Schema {
    pub domain: String,
    pub fields: Vec<(String, String)>,
}

impl Schema {
    pub fn of(domain: &str, fields: &[(String, ved_check::Type)]) -> Arc<Schema> {
        Arc::new(Schema {
            domain: domain.to_string(),
            fields: fields.iter().map(|(n, t)| (n.clone(), t.to_string())).collect(),
        })
    }
}

/// One instance's snapshot, as written after a slice: the snapshot's own fields, with
/// its domain's [`Schema`]. In JSON the schema's `domain` and `fields` stand next to the
/// instance's name: `{"instance", "domain", "fields", "domain_index", "slice", ..}`.
#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotRecord {
    pub schema: Arc<Schema>,
    pub snapshot: InstanceSnapshot,
}

impl SnapshotRecord {
    pub fn new(snapshot: InstanceSnapshot, schema: &Arc<Schema>) -> SnapshotRecord {
        SnapshotRecord { schema: schema.clone(), snapshot }
    }

    /// The domain's name.
    pub fn domain(&self) -> &str {
        &self.schema.domain
    }

    /// The domain's fields: name, type.
    pub fn fields(&self) -> &[(String, String)] {
        &self.schema.fields
    }
}

/// The JSON form, as stores have always held it.
#[derive(Deserialize)]
struct JsonSnapshot {
    domain: String,
    fields: Vec<(String, String)>,
    #[serde(flatten)]
    snapshot: InstanceSnapshot,
}

impl<'de> Deserialize<'de> for SnapshotRecord {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<SnapshotRecord, D::Error> {
        let j = JsonSnapshot::deserialize(d)?;
        Ok(SnapshotRecord { schema: Arc::new(Schema { domain: j.domain, fields: j.fields }), snapshot: j.snapshot })
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
            self.map.serialize_entry("domain", &self.header.schema.domain)?;
            self.map.serialize_entry("fields", &self.header.schema.fields)?;
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
    /// Wall-clock time of the slice, in Unix milliseconds; RFC 3339 (`time`) in JSON.
    /// Absent in entries written before entries had it.
    #[serde(rename = "time", default, skip_serializing_if = "Option::is_none", with = "crate::time::opt_rfc3339")]
    pub wall_ms: Option<u64>,
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
    /// Shared: the engine keeps the same snapshot in its recent history (where `ved replay`
    /// starts), so a slice's snapshot is made once, not copied into the batch and the history.
    Snapshot(Arc<SnapshotRecord>),
    /// Shared: the engine keeps the same entry in its in-memory journal, and a checkpoint
    /// copies every retained entry (an entry is also larger than a snapshot).
    Journal(Arc<JournalEntry>),
    /// The instance's journal was trimmed to its last `keep` entries.
    Trim { instance: String, keep_from_slice: u64 },
    /// The source files of the program that wrote the store: name, text. `ved replay`
    /// runs them again.
    /// Ends a batch in the log. Recovery applies a batch's records only when its
    /// `Commit` is there too, so a batch is all or nothing even when a crash tears it.
    /// `at`: the log offset where the batch began.
    Commit { at: u64 },
    Program {
        files: Vec<(String, String)>,
        /// The retry policy in force: initial ms, factor, cap ms, breaker threshold.
        #[serde(default)]
        retry: Option<(u64, u32, u64, u32)>,
        /// How long a watcher has to confirm an effect (absent: the default).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        confirm_ms: Option<u64>,
    },
    /// An audit entry, written into the log's batch as well as to `audit.log`, so that it
    /// is durable with the batch's one fsync: `audit.log` itself is synced at compaction and
    /// on close, and recovery restores from these records any entry it lost.
    Audit(Box<crate::audit::AuditEntry>),
    /// The instance was deleted (`DELETE /v1/instances/{name}`): recovery forgets its
    /// snapshots and journal, so a restart does not bring it back. Its audit entries stay.
    Remove { instance: String },
}

impl Record {
    /// A snapshot record, shared from here on (see [`Record::Snapshot`]).
    pub fn snapshot(s: SnapshotRecord) -> Record {
        Record::Snapshot(Arc::new(s))
    }
}

/// Decodes one payload of either format: a binary schema record defines a number in
/// `schemas` (and gives `None`), a binary snapshot is decoded against them, a binary
/// journal entry on its own, and anything else is a JSON record ([`decode_record`]).
pub fn decode_payload(
    payload: &[u8],
    schemas: &mut crate::bin::Schemas,
    scratch: &mut Vec<u8>,
) -> Result<Option<Record>, String> {
    match payload.first() {
        Some(&crate::bin::SCHEMA) => schemas.define(payload).map(|_| None).map_err(|e| e.to_string()),
        _ => decode_with(payload, schemas, scratch).map(Some),
    }
}

/// Decodes one record (not a schema) against the schemas defined so far.
pub fn decode_with(payload: &[u8], schemas: &crate::bin::Schemas, scratch: &mut Vec<u8>) -> Result<Record, String> {
    match payload.first() {
        Some(&crate::bin::SNAPSHOT) => schemas.snapshot(payload).map(Record::snapshot).map_err(|e| e.to_string()),
        Some(&(crate::bin::JOURNAL | crate::bin::JOURNAL_TIMED)) => {
            crate::bin::decode_journal(payload).map(|j| Record::Journal(Arc::new(j))).map_err(|e| e.to_string())
        }
        _ => decode_record(payload, scratch).map_err(|e| e.to_string()),
    }
}

/// Decodes one record's payload as `serde_json::from_slice::<Record>` does, faster for
/// the records a store is made of (the same record for every payload the writer makes). `Record` is tagged by `kind`, so serde
/// would first buffer the whole object to find the tag, then decode the buffer again.
/// The writer always puts `kind` first; when it is there, the variant is known at once
/// and the rest of the object is decoded straight into it (`scratch` holds that rest).
/// Anything else takes serde's general path, so every payload it accepted is accepted.
pub fn decode_record(payload: &[u8], scratch: &mut Vec<u8>) -> serde_json::Result<Record> {
    const SNAPSHOT: &[u8] = b"{\"kind\":\"snapshot\",";
    const JOURNAL: &[u8] = b"{\"kind\":\"journal\",";
    const COMMIT: &[u8] = b"{\"kind\":\"commit\",";
    let rest = |prefix: &[u8], scratch: &mut Vec<u8>| {
        scratch.clear();
        scratch.push(b'{');
        scratch.extend_from_slice(&payload[prefix.len()..]);
    };
    if payload.starts_with(SNAPSHOT) {
        rest(SNAPSHOT, scratch);
        if let Ok(s) = serde_json::from_slice::<SnapshotRecord>(scratch) {
            return Ok(Record::snapshot(s));
        }
    } else if payload.starts_with(JOURNAL) {
        rest(JOURNAL, scratch);
        if let Ok(j) = serde_json::from_slice::<JournalEntry>(scratch) {
            return Ok(Record::Journal(Arc::new(j)));
        }
    } else if payload.starts_with(COMMIT) {
        #[derive(Deserialize)]
        struct Commit {
            at: u64,
        }
        rest(COMMIT, scratch);
        if let Ok(c) = serde_json::from_slice::<Commit>(scratch) {
            return Ok(Record::Commit { at: c.at });
        }
    }
    // The general path, also for its error message when the fast one refused.
    serde_json::from_slice(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Snapshots (one with an intent in flight, whose ids take the instance's name), journal
    /// entries with every optional field, the other kinds, `kind` not first, and damage.
    const PAYLOADS: &[&str] = &[
        r#"{"kind":"snapshot","instance":"SecurityPolicy","domain":"SecurityPolicy","fields":[["desired_ports","list<int>"],["actual_ports","list<int>"]],"domain_index":0,"slice":1,"ticks":1,"now_ms":0,"seed":2952260901480542029,"status":"converging","state":[{"l":[{"i":80},{"i":443}]},{"l":[]}],"pending":[{"transition":1,"attempt":0,"phase":{"InFlight":{"outstanding":[[1,0]],"held":[[1,{"l":[{"i":80},{"i":443}]}]],"intents":[{"slice":1,"index":0,"transition":1,"adapter":"Firewall","action":"OpenPorts","args":[{"l":[{"i":80},{"i":443}]}]}]}}}],"retry_attempts":[],"tick_cursor":2,"tick_ran":true,"ticks_since_input":1,"sources":[]}"#,
        r#"{"kind":"snapshot","instance":"w7","domain":"WorkerPool","fields":[["workers","int"]],"domain_index":0,"slice":3,"ticks":2,"now_ms":5,"seed":1,"status":"stable","state":[{"i":5}],"pending":[],"retry_attempts":[[0,2]],"last_errors":[[0,"down"]],"tick_cursor":null,"tick_ran":false,"ticks_since_input":0,"sources":[["probe",9]],"watched":[0]}"#,
        r#"{"kind":"snapshot","instance":"old","domain":"WorkerPool","fields":[["workers","int"]],"domain_index":0,"slice":1,"ticks":0,"now_ms":0,"seed":1,"status":"stable","state":[{"i":5}],"pending":[],"retry_attempts":[],"tick_cursor":null,"tick_ran":false,"ticks_since_input":0}"#,
        r#"{"kind":"journal","instance":"WorkerPool","slice":1,"at_ms":0,"cause":"transition","detail":"scale_up","changes":[["workers","1"]]}"#,
        r#"{"kind":"journal","instance":"a","slice":4,"at_ms":9,"cause":"observe","changes":[["x","1"]],"held":[["y","2"]],"intents":[["a/4/0","Ops.Set(2)"]],"results":[["a/3/0",false,"down"]],"caused_by":"a/3/0","observed":[["x",1]],"added":[["x",-1]],"source":"api","batch":4,"origin":{"slice":4,"cause":"observe","detail":null,"source":"api"},"quiet":3,"status":"stuck","reason":"no transition"}"#,
        r#"{"kind":"commit","at":24}"#,
        r#"{"kind":"trim","instance":"a","keep_from_slice":3}"#,
        r#"{"kind":"remove","instance":"a"}"#,
        r#"{"kind":"program","files":[["p.ved","domain D {}"]],"retry":[200,2,60000,5],"confirm_ms":10000}"#,
        r#"{"instance":"a","kind":"remove"}"#,
        r#"{"at":7,"kind":"commit"}"#,
        r#"{"kind":"snapshot","instance":"w","domain":"WorkerPool"}"#,
        r#"{"kind":"journal","instance":"a","slice":"one"}"#,
        r#"{"kind":"commit","at":-1}"#,
        r#"{"kind":"commit"}"#,
        r#"{"kind":"nothing","at":1}"#,
        r#"{"kind":"snapshot","#,
        r#"not json"#,
    ];

    #[test]
    fn the_fast_decoder_gives_what_serde_gives() {
        let mut scratch = Vec::new();
        let mut decoded = 0;
        for p in PAYLOADS {
            let general = serde_json::from_slice::<Record>(p.as_bytes());
            let fast = decode_record(p.as_bytes(), &mut scratch);
            match (general, fast) {
                (Ok(a), Ok(b)) => {
                    assert_eq!(a, b, "{p}");
                    decoded += 1;
                }
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{p}"),
                (a, b) => panic!("{p}: serde gives {a:?}, the fast decoder {b:?}"),
            }
        }
        assert_eq!(decoded, 11);
    }

    #[test]
    fn written_records_decode_fast_to_themselves() {
        let mut scratch = Vec::new();
        for p in PAYLOADS {
            let Ok(r) = serde_json::from_slice::<Record>(p.as_bytes()) else { continue };
            let written = serde_json::to_vec(&r).expect("serializes");
            assert_eq!(decode_record(&written, &mut scratch).expect("decodes"), r, "{p}");
        }
    }
}
