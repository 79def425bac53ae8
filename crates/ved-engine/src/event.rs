//! What the engine reports, as values: [`EngineEvent`]. A client decides how to
//! show them; [`JsonLines`] is the wire format that `ved run` prints (one JSON
//! object per line, numbered by `seq`), shared by every mode so that a tool
//! reading a daemon's output also reads a cluster node's.

use serde_json::{json, Map, Value as Json};
use std::io::Write;
use std::path::PathBuf;
use ved_runtime::Status;
use ved_vm::Value;

/// Why a slice happened, with names resolved.
#[derive(Clone, Debug, PartialEq)]
pub enum SliceCause {
    Observe,
    Transition(String),
    /// An intent's result (its id).
    Result(String),
    /// A retry timer of this transition.
    Timer(String),
}

/// One thing the engine did or saw. Field and transition names are resolved; values
/// are the program's own values.
#[derive(Clone, Debug, PartialEq)]
pub enum EngineEvent {
    /// The data directory of a durable engine: the first event.
    Store {
        dir: PathBuf,
    },
    /// Input line `line` and every slice it caused are durable.
    Ack {
        line: u64,
    },
    /// An intent leaves for its adapter: its slice is durable.
    Intent {
        instance: String,
        id: String,
        transition: Option<String>,
        adapter: String,
        action: String,
        args: Vec<Value>,
    },
    Slice {
        instance: String,
        slice: u64,
        cause: SliceCause,
        changes: Vec<(String, Value)>,
        /// Changes held until a result or a reading confirms them.
        held: Vec<(String, Value)>,
    },
    /// A versioned observation older than one already applied was dropped.
    Stale {
        instance: String,
        source: String,
        version: u64,
        last: u64,
    },
    Result {
        instance: String,
        id: String,
        ok: bool,
        error: Option<String>,
    },
    Retry {
        instance: String,
        transition: String,
        attempt: u32,
        at_ms: u64,
    },
    /// A runtime fault in the program (division by zero, ...), where it happened.
    Fault {
        instance: String,
        message: String,
        at: String,
        transition: Option<String>,
        goal: Option<String>,
    },
    Status {
        instance: String,
        status: Status,
        reason: Option<String>,
    },
    /// An adapter repaired something it owns.
    Repaired {
        instance: String,
        source: String,
        what: Vec<String>,
    },
    /// An instance was created through [`crate::Engine::create`].
    Created {
        instance: String,
        domain: String,
    },
    /// Another node owns the instance now (its write was fenced out): this engine dropped it.
    Lost {
        instance: String,
    },
    /// An input was refused; nothing changed.
    Error {
        line: Option<u64>,
        instance: Option<String>,
        source: Option<String>,
        message: String,
    },
}

impl EngineEvent {
    /// The instance the event concerns, if any.
    pub fn instance(&self) -> Option<&str> {
        match self {
            EngineEvent::Store { .. } | EngineEvent::Ack { .. } => None,
            EngineEvent::Intent { instance, .. }
            | EngineEvent::Slice { instance, .. }
            | EngineEvent::Stale { instance, .. }
            | EngineEvent::Result { instance, .. }
            | EngineEvent::Retry { instance, .. }
            | EngineEvent::Fault { instance, .. }
            | EngineEvent::Status { instance, .. }
            | EngineEvent::Repaired { instance, .. }
            | EngineEvent::Created { instance, .. }
            | EngineEvent::Lost { instance } => Some(instance),
            EngineEvent::Error { instance, .. } => instance.as_deref(),
        }
    }

    /// The wire form: `{"event": ..., ...}` without `seq`.
    pub fn to_json(&self) -> Map<String, Json> {
        let to = crate::json::to_json;
        let named =
            |c: &[(String, Value)]| -> Json { Json::Object(c.iter().map(|(n, v)| (n.clone(), to(v))).collect()) };
        let j = match self {
            EngineEvent::Store { dir } => json!({"event": "store", "dir": dir.display().to_string()}),
            EngineEvent::Ack { line } => json!({"event": "ack", "line": line}),
            EngineEvent::Intent { instance, id, transition, adapter, action, args } => {
                json!({"event": "intent", "instance": instance, "id": id, "transition": transition,
                    "adapter": adapter, "action": action, "args": args.iter().map(to).collect::<Vec<_>>()})
            }
            EngineEvent::Slice { instance, slice, cause, changes, held } => {
                let cause = match cause {
                    SliceCause::Observe => json!({"kind": "observe"}),
                    SliceCause::Transition(t) => json!({"kind": "transition", "transition": t}),
                    SliceCause::Result(id) => json!({"kind": "result", "intent": id}),
                    SliceCause::Timer(t) => json!({"kind": "timer", "transition": t}),
                };
                let mut m = json!({"event": "slice", "instance": instance, "slice": slice, "cause": cause,
                    "changes": named(changes)});
                if !held.is_empty() {
                    m["held"] = named(held);
                }
                m
            }
            EngineEvent::Stale { instance, source, version, last } => {
                json!({"event": "stale", "instance": instance, "source": source, "version": version, "last": last})
            }
            EngineEvent::Result { instance, id, ok, error } => {
                let mut m = json!({"event": "result", "instance": instance, "id": id, "ok": ok});
                if let Some(e) = error {
                    m["error"] = json!(e);
                }
                m
            }
            EngineEvent::Retry { instance, transition, attempt, at_ms } => {
                json!({"event": "retry", "instance": instance, "transition": transition, "attempt": attempt, "due_ms": at_ms})
            }
            EngineEvent::Fault { instance, message, at, transition, goal } => {
                let mut m = json!({"event": "fault", "instance": instance, "message": message, "at": at});
                if let Some(t) = transition {
                    m["transition"] = json!(t);
                }
                if let Some(g) = goal {
                    m["goal"] = json!(g);
                }
                m
            }
            EngineEvent::Status { instance, status, reason } => {
                let mut m = json!({"event": status.as_str(), "instance": instance});
                if let Some(r) = reason {
                    m["reason"] = json!(r);
                }
                m
            }
            EngineEvent::Repaired { instance, source, what } => {
                json!({"event": "repaired", "instance": instance, "source": source, "what": what})
            }
            EngineEvent::Created { instance, domain } => {
                json!({"event": "created", "instance": instance, "domain": domain})
            }
            EngineEvent::Lost { instance } => json!({"event": "fenced_out", "instance": instance}),
            EngineEvent::Error { line, instance, source, message } => {
                let mut m = json!({"event": "error"});
                if let Some(l) = line {
                    m["line"] = json!(l);
                }
                if let Some(s) = source {
                    m["source"] = json!(s);
                }
                m["message"] = json!(message);
                if let Some(i) = instance {
                    m["instance"] = json!(i);
                }
                m
            }
        };
        match j {
            Json::Object(m) => m,
            _ => Map::new(),
        }
    }
}

/// Where the engine's events go.
pub trait Sink {
    fn event(&mut self, ev: EngineEvent);
    /// Whether this sink keeps any of the per-slice events (slices, statuses, results,
    /// retries, faults): one that drops them says no, and the engine then does not build
    /// them (naming every field, copying every value, for every slice). Nothing else changes.
    fn wants_slice_events(&self) -> bool {
        true
    }
    /// Called before an intent is handed to an adapter: whatever was reported must be
    /// out first (for the `log` adapter, the printed intent *is* the delivery).
    fn flush(&mut self) {}
    /// The time of the events that follow: the engine's time (`at_ms`) and the wall-clock
    /// time (Unix milliseconds). Called when the engine's time moves.
    fn time(&mut self, _at_ms: u64, _wall_ms: u64) {}
}

/// Collects events in memory: for embedders and tests.
impl Sink for Vec<EngineEvent> {
    fn event(&mut self, ev: EngineEvent) {
        self.push(ev);
    }
}

/// The wire format: one JSON object per line, `seq` first (1, 2, ...), then `at_ms` (the
/// engine's time) and `time` (wall-clock, RFC 3339 in UTC) as of the engine's last word on
/// the time ([`Sink::time`]).
pub struct JsonLines<W: Write> {
    w: W,
    /// Also handed each line as it is written: `(seq, instance, line)` (the daemon's event stream).
    tap: Option<Tap>,
    seq: u64,
    at_ms: u64,
    wall_ms: u64,
    /// `wall_ms` formatted, kept until it changes: many lines share one millisecond.
    time: String,
}

/// See [`JsonLines::with_tap`].
pub type Tap = Box<dyn FnMut(u64, Option<&str>, &str) + Send>;

impl<W: Write> JsonLines<W> {
    pub fn new(w: W) -> JsonLines<W> {
        JsonLines { w, tap: None, seq: 0, at_ms: 0, wall_ms: 0, time: ved_store::time::rfc3339(0) }
    }

    /// Hands every line, once written, to `tap` too: its `seq`, its instance (if any) and its
    /// text, without the newline. The line is serialized once for both.
    pub fn with_tap(mut self, tap: Tap) -> JsonLines<W> {
        self.tap = Some(tap);
        self
    }

    /// Writes a line of the client's own (`listening`, `acquired`, ...) in the same numbering.
    pub fn emit(&mut self, mut obj: Map<String, Json>) {
        self.seq += 1;
        let mut line = Map::new();
        line.insert("seq".into(), json!(self.seq));
        line.insert("at_ms".into(), json!(self.at_ms));
        line.insert("time".into(), json!(self.time));
        line.append(&mut obj);
        // A closed stdout (e.g. piped into `head`) is not worth a panic.
        let Some(tap) = self.tap.as_mut() else {
            let _ = writeln!(self.w, "{}", Json::Object(line));
            return;
        };
        let instance = match line.get("instance") {
            Some(Json::String(i)) => Some(i.clone()),
            _ => None,
        };
        let text = Json::Object(line).to_string();
        let _ = writeln!(self.w, "{text}");
        tap(self.seq, instance.as_deref(), &text);
    }

    pub fn get_ref(&self) -> &W {
        &self.w
    }

    pub fn into_inner(self) -> W {
        self.w
    }
}

impl<W: Write> Sink for JsonLines<W> {
    fn event(&mut self, ev: EngineEvent) {
        self.emit(ev.to_json());
    }

    fn flush(&mut self) {
        let _ = self.w.flush();
    }

    fn time(&mut self, at_ms: u64, wall_ms: u64) {
        self.at_ms = at_ms;
        if wall_ms != self.wall_ms {
            self.wall_ms = wall_ms;
            self.time = ved_store::time::rfc3339(wall_ms);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_carries_the_engines_time_and_the_wall_clock_time() {
        let mut out = JsonLines::new(Vec::new());
        out.event(EngineEvent::Ack { line: 1 });
        out.time(13_493, 1_796_189_694_123);
        out.event(EngineEvent::Created { instance: "I".into(), domain: "D".into() });
        out.emit(Map::from_iter([("event".to_string(), json!("listening"))]));
        let text = String::from_utf8(out.into_inner()).unwrap();
        let lines: Vec<Json> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        // Before the engine says what time it is: its time line's start, at the Unix epoch.
        assert_eq!(
            (lines[0]["at_ms"].as_u64(), lines[0]["time"].as_str()),
            (Some(0), Some("1970-01-01T00:00:00.000Z"))
        );
        for l in &lines[1..] {
            assert_eq!(
                (l["at_ms"].as_u64(), l["time"].as_str()),
                (Some(13_493), Some("2026-12-02T05:34:54.123Z")),
                "{l}"
            );
        }
    }

    #[test]
    fn a_retry_says_when_it_is_due_apart_from_when_it_was_reported() {
        let mut out = JsonLines::new(Vec::new());
        out.time(100, 1_000_100);
        out.event(EngineEvent::Retry { instance: "I".into(), transition: "T".into(), attempt: 2, at_ms: 2_100 });
        let line: Json = serde_json::from_slice(&out.into_inner()).unwrap();
        assert_eq!((line["at_ms"].as_u64(), line["due_ms"].as_u64()), (Some(100), Some(2_100)));
    }
}
