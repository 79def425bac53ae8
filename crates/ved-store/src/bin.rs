//! The binary encoding of schemas and snapshots (store format 2).
//!
//! A JSON snapshot spells out every key and the domain's field names and types in
//! every record: 314 bytes for a one-`int` state, and a JSON parse to read it back.
//! Format 2 writes a domain's [`Schema`] once per file, as its own record with a
//! number, and each snapshot names that number. Everything else is positional:
//! unsigned integers as LEB128 varints, signed ones zigzagged, strings as a length
//! and UTF-8 bytes, options and enums behind a one-byte tag. The first byte of a
//! payload tells the kinds apart: `{` is a JSON record (commits and the rest, and
//! every record of a format-1 store), [`SCHEMA`], [`SNAPSHOT`] and [`JOURNAL`] are
//! binary. The layout is in `docs/store.md`; decoding checks every tag, length and
//! string, so damage is reported, never guessed at.

use crate::codec::{JournalEntry, Origin, Schema, SnapshotRecord};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use ved_runtime::{InstanceSnapshot, Intent, IntentId, Pending, Phase, Status};
use ved_vm::Value;

/// First byte of a schema record.
pub const SCHEMA: u8 = 1;
/// First byte of a snapshot record.
pub const SNAPSHOT: u8 = 2;
/// First byte of a journal record written before entries had a wall-clock time.
pub const JOURNAL: u8 = 3;
/// First byte of a journal record with its wall-clock time, as its last field. A kind
/// of its own, rather than an optional tail, so that a record cut before its time is
/// still an error and never reads as an older record.
pub const JOURNAL_TIMED: u8 = 4;

/// Nesting deeper than this is damage, not data: values come from programs whose
/// types nest a few levels at most, and a bound keeps a crafted file from
/// exhausting the stack.
const DEPTH_MAX: usize = 64;

/// Why a binary payload could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError {
    /// Byte offset within the payload.
    pub at: usize,
    pub what: String,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (byte {} of the record)", self.what, self.at)
    }
}

impl std::error::Error for DecodeError {}

// ---------------------------------------------------------------- encoding

fn put_u64(b: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        b.push((v as u8) | 0x80);
        v >>= 7;
    }
    b.push(v as u8);
}

fn put_i64(b: &mut Vec<u8>, v: i64) {
    put_u64(b, ((v << 1) ^ (v >> 63)) as u64);
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    put_u64(b, s.len() as u64);
    b.extend_from_slice(s.as_bytes());
}

fn put_len(b: &mut Vec<u8>, n: usize) {
    put_u64(b, n as u64);
}

fn put_value(b: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Int(i) => {
            b.push(0);
            put_i64(b, *i);
        }
        Value::Bool(false) => b.push(1),
        Value::Bool(true) => b.push(2),
        Value::Str(s) => {
            b.push(3);
            put_str(b, s);
        }
        Value::List(l) => {
            b.push(4);
            put_len(b, l.len());
            l.iter().for_each(|v| put_value(b, v));
        }
        Value::Set(s) => {
            b.push(5);
            put_len(b, s.len());
            s.iter().for_each(|v| put_value(b, v));
        }
        Value::Map(m) => {
            b.push(6);
            put_len(b, m.len());
            for (k, v) in m.iter() {
                put_str(b, k);
                put_value(b, v);
            }
        }
    }
}

fn status_code(s: Status) -> u8 {
    match s {
        Status::Stable => 0,
        Status::Converging => 1,
        Status::Waiting => 2,
        Status::Stuck => 3,
        Status::Livelock => 4,
        Status::Degraded => 5,
    }
}

fn put_id(b: &mut Vec<u8>, id: &IntentId) {
    put_u64(b, id.slice);
    put_u64(b, id.index as u64);
}

fn put_fields(b: &mut Vec<u8>, f: &[u16]) {
    put_len(b, f.len());
    f.iter().for_each(|&x| put_u64(b, x as u64));
}

/// Appends a schema record: `SCHEMA`, its number, the domain's name, then each
/// field's name and type.
pub fn encode_schema(b: &mut Vec<u8>, id: u32, s: &Schema) {
    b.push(SCHEMA);
    put_u64(b, id as u64);
    put_str(b, &s.domain);
    put_len(b, s.fields.len());
    for (n, t) in &s.fields {
        put_str(b, n);
        put_str(b, t);
    }
}

/// Appends a snapshot record whose domain is schema `schema` of the same file.
pub fn encode_snapshot(b: &mut Vec<u8>, schema: u32, s: &InstanceSnapshot) {
    b.push(SNAPSHOT);
    put_u64(b, schema as u64);
    put_str(b, &s.name);
    put_len(b, s.domain);
    put_u64(b, s.slice);
    put_u64(b, s.ticks);
    put_u64(b, s.now_ms);
    put_u64(b, s.seed);
    b.push(status_code(s.status));
    put_len(b, s.state.len());
    s.state.iter().for_each(|v| put_value(b, v));
    put_len(b, s.pending.len());
    for p in &s.pending {
        put_len(b, p.transition);
        put_u64(b, p.attempt as u64);
        match &p.phase {
            Phase::InFlight { outstanding, held, intents, confirm } => {
                b.push(0);
                put_len(b, outstanding.len());
                outstanding.iter().for_each(|id| put_id(b, id));
                put_len(b, held.len());
                for (f, v) in held {
                    put_u64(b, *f as u64);
                    put_value(b, v);
                }
                put_len(b, intents.len());
                for i in intents {
                    put_id(b, &i.id);
                    put_len(b, i.transition);
                    put_str(b, &i.adapter);
                    put_str(b, &i.action);
                    put_len(b, i.args.len());
                    i.args.iter().for_each(|v| put_value(b, v));
                }
                put_fields(b, confirm);
            }
            Phase::Confirming { fields, until_ms } => {
                b.push(1);
                put_fields(b, fields);
                put_u64(b, *until_ms);
            }
            Phase::Backoff { until_ms, faulted, error } => {
                b.push(2);
                put_u64(b, *until_ms);
                b.push(*faulted as u8);
                match error {
                    None => b.push(0),
                    Some(e) => {
                        b.push(1);
                        put_str(b, e);
                    }
                }
            }
        }
    }
    put_len(b, s.retry_attempts.len());
    for (t, n) in &s.retry_attempts {
        put_len(b, *t);
        put_u64(b, *n as u64);
    }
    put_len(b, s.last_errors.len());
    for (t, e) in &s.last_errors {
        put_len(b, *t);
        put_str(b, e);
    }
    match s.tick_cursor {
        None => b.push(0),
        Some(c) => {
            b.push(1);
            put_u64(b, c as u64);
        }
    }
    b.push(s.tick_ran as u8);
    put_u64(b, s.ticks_since_input);
    put_len(b, s.sources.len());
    for (name, v) in &s.sources {
        put_str(b, name);
        put_u64(b, *v);
    }
    put_fields(b, &s.watched);
}

fn put_opt_str(b: &mut Vec<u8>, s: &Option<String>) {
    match s {
        None => b.push(0),
        Some(s) => {
            b.push(1);
            put_str(b, s);
        }
    }
}

fn put_pairs(b: &mut Vec<u8>, pairs: &[(String, String)]) {
    put_len(b, pairs.len());
    for (x, y) in pairs {
        put_str(b, x);
        put_str(b, y);
    }
}

/// Appends a journal record: `JOURNAL`, then the entry's fields in order (an observed
/// value as its JSON text).
pub fn encode_journal(b: &mut Vec<u8>, e: &JournalEntry) {
    b.push(if e.wall_ms.is_some() { JOURNAL_TIMED } else { JOURNAL });
    put_str(b, &e.instance);
    put_u64(b, e.slice);
    put_u64(b, e.at_ms);
    put_str(b, &e.cause);
    put_opt_str(b, &e.detail);
    put_pairs(b, &e.changes);
    put_pairs(b, &e.held);
    put_pairs(b, &e.intents);
    put_len(b, e.results.len());
    for (id, ok, err) in &e.results {
        put_str(b, id);
        b.push(*ok as u8);
        put_opt_str(b, err);
    }
    put_opt_str(b, &e.caused_by);
    put_len(b, e.observed.len());
    for (f, v) in &e.observed {
        put_str(b, f);
        put_str(b, &v.to_string());
    }
    put_len(b, e.added.len());
    for (f, d) in &e.added {
        put_str(b, f);
        put_i64(b, *d);
    }
    put_opt_str(b, &e.source);
    match e.batch {
        None => b.push(0),
        Some(x) => {
            b.push(1);
            put_u64(b, x);
        }
    }
    match &e.origin {
        None => b.push(0),
        Some(o) => {
            b.push(1);
            put_u64(b, o.slice);
            put_str(b, &o.cause);
            put_opt_str(b, &o.detail);
            put_opt_str(b, &o.source);
        }
    }
    put_u64(b, e.quiet);
    put_opt_str(b, &e.status);
    put_opt_str(b, &e.reason);
    if let Some(ms) = e.wall_ms {
        put_u64(b, ms);
    }
}

// ---------------------------------------------------------------- decoding

/// A cursor over one payload.
struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

type R<T> = Result<T, DecodeError>;

impl<'a> Reader<'a> {
    fn err<T>(&self, what: impl Into<String>) -> R<T> {
        Err(DecodeError { at: self.at, what: what.into() })
    }

    fn byte(&mut self) -> R<u8> {
        match self.b.get(self.at) {
            Some(&x) => {
                self.at += 1;
                Ok(x)
            }
            None => self.err("the record ends early"),
        }
    }

    fn u64(&mut self) -> R<u64> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let x = self.byte()?;
            let bits = (x & 0x7f) as u64;
            if shift == 63 && bits > 1 {
                return self.err("an integer overflows 64 bits");
            }
            v |= bits << shift;
            if x & 0x80 == 0 {
                return Ok(v);
            }
        }
        self.err("an integer overflows 64 bits")
    }

    fn i64(&mut self) -> R<i64> {
        let z = self.u64()?;
        Ok(((z >> 1) as i64) ^ -((z & 1) as i64))
    }

    fn u32(&mut self) -> R<u32> {
        let at = self.at;
        u32::try_from(self.u64()?).map_err(|_| DecodeError { at, what: "a number does not fit 32 bits".into() })
    }

    fn u16(&mut self) -> R<u16> {
        let at = self.at;
        u16::try_from(self.u64()?).map_err(|_| DecodeError { at, what: "a field number does not fit 16 bits".into() })
    }

    fn usize(&mut self) -> R<usize> {
        let at = self.at;
        usize::try_from(self.u64()?).map_err(|_| DecodeError { at, what: "a number does not fit".into() })
    }

    /// A count of items that follow, each at least one byte long: a count larger than
    /// the bytes left is damage (and would otherwise reserve memory for nothing).
    fn len(&mut self) -> R<usize> {
        let n = self.usize()?;
        if n > self.b.len() - self.at {
            return self.err(format!("a count of {n} exceeds the bytes left"));
        }
        Ok(n)
    }

    fn bool(&mut self) -> R<bool> {
        match self.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            x => self.err(format!("{x} is not a boolean")),
        }
    }

    fn str(&mut self) -> R<&'a str> {
        let n = self.len()?;
        let bytes = &self.b[self.at..self.at + n];
        match std::str::from_utf8(bytes) {
            Ok(s) => {
                self.at += n;
                Ok(s)
            }
            Err(_) => self.err("a string is not UTF-8"),
        }
    }

    fn string(&mut self) -> R<String> {
        Ok(self.str()?.to_string())
    }

    fn opt_string(&mut self) -> R<Option<String>> {
        Ok(if self.bool()? { Some(self.string()?) } else { None })
    }

    fn pairs(&mut self) -> R<Vec<(String, String)>> {
        let n = self.len()?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push((self.string()?, self.string()?));
        }
        Ok(out)
    }

    fn value(&mut self, depth: usize) -> R<Value> {
        if depth > DEPTH_MAX {
            return self.err("values nest too deeply");
        }
        Ok(match self.byte()? {
            0 => Value::Int(self.i64()?),
            1 => Value::Bool(false),
            2 => Value::Bool(true),
            3 => Value::Str(Arc::from(self.str()?)),
            4 => {
                let n = self.len()?;
                let mut l = Vec::with_capacity(n);
                for _ in 0..n {
                    l.push(self.value(depth + 1)?);
                }
                Value::List(Arc::new(l))
            }
            5 => {
                let n = self.len()?;
                let mut s = BTreeSet::new();
                for _ in 0..n {
                    s.insert(self.value(depth + 1)?);
                }
                Value::Set(Arc::new(s))
            }
            6 => {
                let n = self.len()?;
                let mut m = BTreeMap::new();
                for _ in 0..n {
                    let k: Arc<str> = Arc::from(self.str()?);
                    m.insert(k, self.value(depth + 1)?);
                }
                Value::Map(Arc::new(m))
            }
            x => return self.err(format!("{x} is not a value tag")),
        })
    }

    fn values(&mut self) -> R<Vec<Value>> {
        let n = self.len()?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.value(0)?);
        }
        Ok(out)
    }

    fn id(&mut self, instance: &Arc<str>) -> R<IntentId> {
        Ok(IntentId { instance: instance.clone(), slice: self.u64()?, index: self.u32()? })
    }

    fn fields(&mut self) -> R<Vec<u16>> {
        let n = self.len()?;
        (0..n).map(|_| self.u16()).collect()
    }

    fn status(&mut self) -> R<Status> {
        Ok(match self.byte()? {
            0 => Status::Stable,
            1 => Status::Converging,
            2 => Status::Waiting,
            3 => Status::Stuck,
            4 => Status::Livelock,
            5 => Status::Degraded,
            x => return self.err(format!("{x} is not a status")),
        })
    }

    fn pending(&mut self, instance: &Arc<str>) -> R<Pending> {
        let transition = self.usize()?;
        let attempt = self.u32()?;
        let phase = match self.byte()? {
            0 => {
                let n = self.len()?;
                let outstanding = (0..n).map(|_| self.id(instance)).collect::<R<_>>()?;
                let n = self.len()?;
                let mut held = Vec::with_capacity(n);
                for _ in 0..n {
                    held.push((self.u16()?, self.value(0)?));
                }
                let n = self.len()?;
                let mut intents = Vec::with_capacity(n);
                for _ in 0..n {
                    intents.push(Intent {
                        id: self.id(instance)?,
                        transition: self.usize()?,
                        adapter: Arc::from(self.str()?),
                        action: Arc::from(self.str()?),
                        args: self.values()?.into(),
                    });
                }
                Phase::InFlight { outstanding, held, intents, confirm: self.fields()? }
            }
            1 => Phase::Confirming { fields: self.fields()?, until_ms: self.u64()? },
            2 => Phase::Backoff {
                until_ms: self.u64()?,
                faulted: self.bool()?,
                error: if self.bool()? { Some(self.str()?.to_string()) } else { None },
            },
            x => return self.err(format!("{x} is not a pending phase")),
        };
        Ok(Pending { transition, attempt, phase })
    }
}

/// Decodes a journal record.
pub fn decode_journal(payload: &[u8]) -> Result<JournalEntry, DecodeError> {
    let mut r = Reader { b: payload, at: 0 };
    let timed = match r.byte()? {
        JOURNAL => false,
        JOURNAL_TIMED => true,
        _ => return r.err("not a journal record"),
    };
    let instance = r.string()?;
    let (slice, at_ms) = (r.u64()?, r.u64()?);
    let cause = r.string()?;
    let detail = r.opt_string()?;
    let (changes, held, intents) = (r.pairs()?, r.pairs()?, r.pairs()?);
    let n = r.len()?;
    let mut results = Vec::with_capacity(n);
    for _ in 0..n {
        results.push((r.string()?, r.bool()?, r.opt_string()?));
    }
    let caused_by = r.opt_string()?;
    let n = r.len()?;
    let mut observed = Vec::with_capacity(n);
    for _ in 0..n {
        let f = r.string()?;
        let at = r.at;
        let v = serde_json::from_str(r.str()?)
            .map_err(|e| DecodeError { at, what: format!("an observed value is not JSON ({e})") })?;
        observed.push((f, v));
    }
    let n = r.len()?;
    let mut added = Vec::with_capacity(n);
    for _ in 0..n {
        added.push((r.string()?, r.i64()?));
    }
    let source = r.opt_string()?;
    let batch = if r.bool()? { Some(r.u64()?) } else { None };
    let origin = if r.bool()? {
        Some(Origin { slice: r.u64()?, cause: r.string()?, detail: r.opt_string()?, source: r.opt_string()? })
    } else {
        None
    };
    let quiet = r.u64()?;
    let status = r.opt_string()?;
    let reason = r.opt_string()?;
    let wall_ms = if timed { Some(r.u64()?) } else { None };
    if r.at != payload.len() {
        return r.err("bytes left over after the journal entry");
    }
    Ok(JournalEntry {
        instance,
        slice,
        at_ms,
        wall_ms,
        cause,
        detail,
        changes,
        held,
        intents,
        results,
        caused_by,
        observed,
        added,
        source,
        batch,
        origin,
        quiet,
        status,
        reason,
    })
}

/// The schemas a file has defined so far, by number.
#[derive(Default)]
pub struct Schemas {
    by_id: Vec<Option<Arc<Schema>>>,
}

impl Schemas {
    /// Decodes a schema record and defines its number (a later definition of the same
    /// number replaces the earlier one from that point of the file on). Returns the
    /// number and whether it was defined already.
    pub fn define(&mut self, payload: &[u8]) -> Result<(u32, bool), DecodeError> {
        let mut r = Reader { b: payload, at: 0 };
        if r.byte()? != SCHEMA {
            return r.err("not a schema record");
        }
        let id = r.u32()?;
        let domain = r.str()?.to_string();
        let n = r.len()?;
        let mut fields = Vec::with_capacity(n);
        for _ in 0..n {
            fields.push((r.str()?.to_string(), r.str()?.to_string()));
        }
        if r.at != payload.len() {
            return r.err("bytes left over after the schema");
        }
        // Numbers are small and dense (one per domain); a huge one is damage.
        if id as usize > payload.len() * 1024 + 4096 {
            return Err(DecodeError { at: 1, what: format!("schema number {id} is implausibly large") });
        }
        let i = id as usize;
        if self.by_id.len() <= i {
            self.by_id.resize(i + 1, None);
        }
        let replaced = self.by_id[i].replace(Arc::new(Schema { domain, fields })).is_some();
        Ok((id, replaced))
    }

    /// Decodes a snapshot record against the schemas defined so far.
    pub fn snapshot(&self, payload: &[u8]) -> Result<SnapshotRecord, DecodeError> {
        let mut r = Reader { b: payload, at: 0 };
        if r.byte()? != SNAPSHOT {
            return r.err("not a snapshot record");
        }
        let at = r.at;
        let id = r.u32()?;
        let Some(schema) = self.by_id.get(id as usize).and_then(Option::as_ref) else {
            return Err(DecodeError {
                at,
                what: format!("the snapshot names schema {id}, which no record before it defines"),
            });
        };
        let name: &str = r.str()?;
        let instance: Arc<str> = Arc::from(name);
        let domain = r.usize()?;
        let (slice, ticks, now_ms, seed) = (r.u64()?, r.u64()?, r.u64()?, r.u64()?);
        let status = r.status()?;
        let state = r.values()?;
        let n = r.len()?;
        let mut pending = Vec::with_capacity(n);
        for _ in 0..n {
            pending.push(r.pending(&instance)?);
        }
        let n = r.len()?;
        let mut retry_attempts = Vec::with_capacity(n);
        for _ in 0..n {
            retry_attempts.push((r.usize()?, r.u32()?));
        }
        let n = r.len()?;
        let mut last_errors = Vec::with_capacity(n);
        for _ in 0..n {
            last_errors.push((r.usize()?, r.str()?.to_string()));
        }
        let tick_cursor = if r.bool()? { Some(r.u32()?) } else { None };
        let tick_ran = r.bool()?;
        let ticks_since_input = r.u64()?;
        let n = r.len()?;
        let mut sources = Vec::with_capacity(n);
        for _ in 0..n {
            sources.push((r.str()?.to_string(), r.u64()?));
        }
        let watched = r.fields()?;
        if r.at != payload.len() {
            return r.err("bytes left over after the snapshot");
        }
        let snapshot = InstanceSnapshot {
            name: name.to_string(),
            domain,
            slice,
            ticks,
            now_ms,
            seed,
            status,
            state,
            pending,
            retry_attempts,
            last_errors,
            tick_cursor,
            tick_ran,
            ticks_since_input,
            sources,
            watched,
        };
        Ok(SnapshotRecord { schema: schema.clone(), snapshot })
    }
}

/// The schema numbers a writer has given in the file it writes: each domain's schema is
/// written once per file, before its first snapshot.
#[derive(Default)]
pub struct Numbering {
    known: Vec<Arc<Schema>>,
}

impl Numbering {
    /// The number of `s` in this file, and whether it is new (its record must be
    /// written first). Schemas are few (one per domain): a short scan, by pointer first.
    pub fn number(&mut self, s: &Arc<Schema>) -> (u32, bool) {
        if let Some(i) = self.known.iter().position(|k| Arc::ptr_eq(k, s)) {
            return (i as u32, false);
        }
        if let Some(i) = self.known.iter().position(|k| **k == **s) {
            return (i as u32, false);
        }
        self.known.push(s.clone());
        ((self.known.len() - 1) as u32, true)
    }
}
