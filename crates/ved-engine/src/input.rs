//! Typed inputs: what an observation is, how a JSON line becomes one, and why an
//! input is refused ([`InputError`]). The stdin loop, the HTTP API and embedders
//! all hand the engine the same [`Observation`].

use serde_json::{Map, Value as Json};

/// Most simulated time one `advance_ms` line moves: a day.
pub const ADVANCE_MS_MAX: u64 = 86_400_000;

/// Longest input line accepted; longer lines are refused with an error event.
pub const LINE_BYTES_MAX: usize = 1 << 20;

/// Field writes to one instance, as reported from outside.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observation {
    pub instance: String,
    /// Absolute values, field by field.
    pub set: Vec<(String, Json)>,
    /// Relative changes (`{"add": {"workers": -1}}`); stands without `set` and `version`.
    pub add: Vec<(String, Json)>,
    /// A versioned source: an older version than one applied is dropped as stale.
    pub version: Option<(String, u64)>,
    /// Where it came from, for the journal (`stdin`, `api`, a watcher).
    pub source: String,
    /// The intent whose effect it reports (lineage).
    pub caused_by: Option<String>,
}

impl Observation {
    /// `set` on `instance`, from `source`.
    pub fn set(instance: &str, source: &str, set: impl IntoIterator<Item = (String, Json)>) -> Observation {
        Observation {
            instance: instance.to_string(),
            set: set.into_iter().collect(),
            source: source.to_string(),
            ..Observation::default()
        }
    }
}

/// One line of `ved run --stdin`.
#[derive(Clone, Debug, PartialEq)]
pub enum Line {
    Observe(Observation),
    /// Simulated time passes; due retries run on the way.
    Advance(u64),
}

/// Why an input was refused. Nothing changed.
#[derive(Clone, Debug, PartialEq)]
pub enum InputError {
    /// The line or body is not a well-formed input.
    Malformed {
        instance: Option<String>,
        message: String,
    },
    NoInstance {
        name: String,
        known: Vec<String>,
    },
    NoField {
        instance: String,
        domain: String,
        field: String,
        known: Vec<String>,
    },
    /// A value does not fit its field's type.
    BadValue {
        instance: String,
        field: String,
        reason: String,
    },
    /// An `add` delta is not an integer.
    NotDelta {
        instance: String,
        field: String,
        value: String,
    },
    EmptyAdd {
        instance: String,
    },
    /// The runtime refused it (an overflow, a field fed by a watcher, ...).
    Refused {
        instance: String,
        reason: String,
    },
}

impl InputError {
    /// The instance it concerns, when known.
    pub fn instance(&self) -> Option<&str> {
        match self {
            InputError::Malformed { instance, .. } => instance.as_deref(),
            InputError::NoInstance { name, .. } => Some(name),
            InputError::NoField { instance, .. }
            | InputError::BadValue { instance, .. }
            | InputError::NotDelta { instance, .. }
            | InputError::EmptyAdd { instance }
            | InputError::Refused { instance, .. } => Some(instance),
        }
    }

    fn malformed(instance: Option<&str>, message: impl Into<String>) -> InputError {
        InputError::Malformed { instance: instance.map(str::to_string), message: message.into() }
    }
}

fn quoted(names: &[String]) -> String {
    names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
}

impl std::fmt::Display for InputError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InputError::Malformed { message, .. } => f.write_str(message),
            InputError::NoInstance { name, known } => {
                write!(f, "no instance named `{name}`; the instances are {}", quoted(known))
            }
            InputError::NoField { domain, field, known, .. } => {
                write!(f, "`{domain}` has no field `{field}`; its fields are {}", quoted(known))
            }
            InputError::BadValue { field, reason, .. } => write!(f, "field `{field}`: {reason}"),
            InputError::NotDelta { field, value, .. } => {
                write!(f, "`add.{field}` must be an integer delta such as -1, not {value}")
            }
            InputError::EmptyAdd { .. } => f.write_str("`add` is empty: give at least one field and its delta"),
            InputError::Refused { reason, .. } => f.write_str(reason),
        }
    }
}

impl std::error::Error for InputError {}

/// Parses one input line (the wire format of `ved run --stdin`).
pub fn parse_line(line: &str) -> Result<Line, InputError> {
    if line.len() > LINE_BYTES_MAX {
        return Err(InputError::malformed(
            None,
            format!("line is {} bytes; the limit is {LINE_BYTES_MAX}", line.len()),
        ));
    }
    let j: Json = crate::strict_json::parse(line.as_bytes())
        .map_err(|e| InputError::malformed(None, format!("invalid JSON: {e}")))?;
    let Json::Object(o) = j else {
        return Err(InputError::malformed(
            None,
            "expected a JSON object such as {\"instance\": \"Name\", \"set\": {\"field\": 1}}",
        ));
    };
    if let Some(adv) = o.get("advance_ms") {
        let ms =
            adv.as_u64().ok_or_else(|| InputError::malformed(None, "`advance_ms` must be a non-negative integer"))?;
        if o.len() != 1 {
            return Err(InputError::malformed(None, "`advance_ms` stands alone on its line"));
        }
        // Every retry due on the way runs, one capped backoff (60 s) after another: without a
        // limit one line (`u64::MAX` ms) kept the engine busy for ever.
        if ms > ADVANCE_MS_MAX {
            return Err(InputError::malformed(
                None,
                format!(
                    "`advance_ms` is {ms}; one line advances at most {ADVANCE_MS_MAX} ms (a day): send several lines"
                ),
            ));
        }
        return Ok(Line::Advance(ms));
    }
    for key in o.keys() {
        if !matches!(key.as_str(), "instance" | "set" | "add" | "caused_by" | "source" | "version") {
            return Err(InputError::malformed(
                None,
                format!(
                    "unknown key `{key}`; an observation has `instance`, `set` (or `add`), and optionally `caused_by`, `source` and `version`"
                ),
            ));
        }
    }
    let name = match o.get("instance") {
        Some(Json::String(s)) => s.clone(),
        Some(_) => return Err(InputError::malformed(None, "`instance` must be a string")),
        None => {
            return Err(InputError::malformed(
                None,
                "missing `instance`: which instance does this observation concern?",
            ))
        }
    };
    let at = Some(name.as_str());
    let caused_by = match o.get("caused_by") {
        None => None,
        Some(Json::String(s)) => Some(s.clone()),
        Some(_) => return Err(InputError::malformed(at, "`caused_by` must be an intent id such as \"Name/3/0\"")),
    };
    let version = match (o.get("source"), o.get("version")) {
        (None, None) => None,
        (Some(Json::String(s)), Some(v)) => match v.as_u64() {
            Some(v) => Some((s.clone(), v)),
            None => return Err(InputError::malformed(at, "`version` must be a non-negative integer")),
        },
        _ => return Err(InputError::malformed(at, "`source` (a string) and `version` (an integer) go together")),
    };
    // Where the observation came from, for the journal: the line's own source, or stdin.
    let source = version.as_ref().map_or("stdin".to_string(), |(s, _)| s.clone());
    let mut obs = Observation { instance: name.clone(), source, caused_by, ..Observation::default() };
    if let Some(add) = o.get("add") {
        if o.contains_key("set") || version.is_some() {
            return Err(InputError::malformed(
                at,
                "`add` stands without `set`, `source` and `version`: send the relative change on its own line",
            ));
        }
        let Json::Object(add) = add else {
            return Err(InputError::malformed(at, "`add` must be an object of field to integer delta"));
        };
        if add.is_empty() {
            return Err(InputError::EmptyAdd { instance: name });
        }
        obs.add = entries(add);
        return Ok(Line::Observe(obs));
    }
    obs.set = match o.get("set") {
        Some(Json::Object(s)) => entries(s),
        Some(_) => return Err(InputError::malformed(at, "`set` must be an object of field to value")),
        None => return Err(InputError::malformed(at, "missing `set` (or `add`): an object of field to value")),
    };
    obs.version = version;
    Ok(Line::Observe(obs))
}

pub(crate) fn entries(m: &Map<String, Json>) -> Vec<(String, Json)> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}
