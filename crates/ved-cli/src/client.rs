//! `ved get`, `ved describe`, `ved watch` and `ved observe`: a client of a running
//! daemon's HTTP API, in kubectl's habits (a table by default, `-o json` for scripts).
//!
//! The server is `--server URL`, else `VED_SERVER`, else `http://127.0.0.1:7410` (the
//! daemon's default address). Writes send a bearer token: `--token-file FILE`, else
//! `VED_TOKEN`, else `VED_API_TOKEN` (the variable the daemon itself reads, so that both
//! ends on one machine share it).

use serde_json::{Map, Value as Json};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7410";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// A table or words, for people.
    Text,
    /// The API's JSON, for scripts.
    Json,
}

/// Where the daemon is and how to authenticate: the options every client command shares.
#[derive(Clone, Debug, clap::Args)]
pub struct Connection {
    /// The daemon's base URL [env: VED_SERVER; default: http://127.0.0.1:7410].
    #[arg(long, value_name = "URL", global = true)]
    pub server: Option<String>,
    /// A file holding the bearer token for writes [else env VED_TOKEN, else VED_API_TOKEN].
    #[arg(long, value_name = "FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "text", global = true)]
    pub output: Output,
}

/// A failed call: what to print, and the exit code.
struct Failure {
    message: String,
    hint: Option<String>,
}

fn fail(message: impl Into<String>) -> Failure {
    Failure { message: message.into(), hint: None }
}

struct Client {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Client {
    fn new(c: &Connection) -> Result<Client, Failure> {
        let base = c
            .server
            .clone()
            .or_else(|| std::env::var("VED_SERVER").ok().filter(|s| !s.is_empty()))
            .unwrap_or_else(|| DEFAULT_SERVER.to_string());
        let base = base.trim_end_matches('/').to_string();
        if !base.starts_with("http://") && !base.starts_with("https://") {
            return Err(Failure {
                message: format!("`{base}` is not a server URL"),
                hint: Some("give one like http://127.0.0.1:7410 (--server or VED_SERVER)".into()),
            });
        }
        let token = match &c.token_file {
            Some(p) => Some(read_token(p)?),
            None => ["VED_TOKEN", "VED_API_TOKEN"].iter().find_map(|v| std::env::var(v).ok().filter(|t| !t.is_empty())),
        };
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .build()
            .into();
        Ok(Client { base, token, agent })
    }

    fn unreachable(&self, e: ureq::Error) -> Failure {
        Failure {
            message: format!("cannot reach the daemon at {}: {e}", self.base),
            hint: Some("is `ved run` running there? Point at it with --server URL or VED_SERVER".into()),
        }
    }

    /// A JSON call; an error reply becomes a [`Failure`] with the server's message.
    fn call(&self, method: &str, path: &str, body: Option<&Json>) -> Result<Json, Failure> {
        let url = format!("{}{path}", self.base);
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let result = match (method, body) {
            ("POST", Some(b)) => {
                let mut req = self.agent.post(&url).header("Content-Type", "application/json");
                if let Some(a) = &auth {
                    req = req.header("Authorization", a);
                }
                req.send(b.to_string().as_bytes())
            }
            _ => {
                let mut req = self.agent.get(&url);
                if let Some(a) = &auth {
                    req = req.header("Authorization", a);
                }
                req.call()
            }
        };
        let mut resp = result.map_err(|e| self.unreachable(e))?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().map_err(|e| self.unreachable(e))?;
        let json: Json = serde_json::from_str(&text)
            .map_err(|_| fail(format!("{method} {path}: the server answered {status} with something not JSON")))?;
        if status >= 400 {
            let message = json["error"]["message"].as_str().unwrap_or("no message").to_string();
            let hint = match status {
                401 | 403 => Some("writes need a token: --token-file FILE, or VED_TOKEN".to_string()),
                _ => None,
            };
            return Err(Failure { message: format!("{message} ({status})"), hint });
        }
        Ok(json)
    }
}

fn read_token(path: &Path) -> Result<String, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| fail(format!("cannot read the token file {}: {e}", path.display())))?;
    let token = text.trim().to_string();
    if token.is_empty() {
        return Err(fail(format!("the token file {} is empty", path.display())));
    }
    Ok(token)
}

fn finish(r: Result<(), Failure>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("error: {}", f.message);
            if let Some(h) = f.hint {
                eprintln!("  = hint: {h}");
            }
            ExitCode::from(1)
        }
    }
}

/// Writes to stdout; a reader that went away (`| head`) ends the command quietly.
fn out(text: &str) -> Result<(), Failure> {
    let mut o = std::io::stdout().lock();
    match o.write_all(text.as_bytes()).and_then(|_| o.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        _ => Ok(()),
    }
}

fn pretty(v: &Json) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default() + "\n"
}

/// Columns padded to their widest cell, two spaces apart, as kubectl prints them.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut s = String::new();
    let line = |s: &mut String, cells: &mut dyn Iterator<Item = &str>| {
        let cells: Vec<&str> = cells.collect();
        for (i, c) in cells.iter().enumerate() {
            s.push_str(c);
            if i + 1 < cells.len() {
                s.push_str(&" ".repeat(widths[i] - c.chars().count() + 2));
            }
        }
        s.push('\n');
    };
    line(&mut s, &mut header.iter().copied());
    for r in rows {
        line(&mut s, &mut r.iter().map(String::as_str));
    }
    s
}

fn str_of(v: &Json) -> String {
    match v {
        Json::String(s) => s.clone(),
        Json::Null => String::new(),
        other => other.to_string(),
    }
}

/// `ved get [INSTANCE]`.
pub fn get(c: &Connection, instance: Option<&str>) -> ExitCode {
    finish((|| {
        let client = Client::new(c)?;
        let rows: Vec<Json> = match instance {
            Some(name) => vec![client.call("GET", &format!("/v1/instances/{}", encode(name)), None)?],
            None => {
                // Every page, in name order.
                let mut all = Vec::new();
                let mut after: Option<String> = None;
                loop {
                    let path = match &after {
                        Some(a) => format!("/v1/instances?limit=1000&after={}", encode(a)),
                        None => "/v1/instances?limit=1000".to_string(),
                    };
                    let page = client.call("GET", &path, None)?;
                    all.extend(page["instances"].as_array().cloned().unwrap_or_default());
                    match page["next"].as_str() {
                        Some(n) => after = Some(n.to_string()),
                        None => break,
                    }
                }
                all
            }
        };
        match c.output {
            Output::Json if instance.is_some() => out(&pretty(&rows[0])),
            Output::Json => out(&pretty(&serde_json::json!({"instances": rows}))),
            Output::Text => {
                let body: Vec<Vec<String>> = rows
                    .iter()
                    .map(|r| {
                        let name = r.get("name").map(str_of).unwrap_or_default();
                        vec![name, str_of(&r["domain"]), str_of(&r["status"]), str_of(&r["slice"])]
                    })
                    .collect();
                out(&table(&["NAME", "DOMAIN", "STATUS", "SLICE"], &body))
            }
        }
    })())
}

/// `ved describe INSTANCE`: its state, goals, pending work and recent journal.
pub fn describe(c: &Connection, instance: &str, recent: usize) -> ExitCode {
    finish((|| {
        let client = Client::new(c)?;
        let inst = client.call("GET", &format!("/v1/instances/{}", encode(instance)), None)?;
        let journal = client.call("GET", &format!("/v1/instances/{}/journal", encode(instance)), None)?;
        let entries = journal["entries"].as_array().cloned().unwrap_or_default();
        let recent_entries = &entries[entries.len().saturating_sub(recent)..];
        if c.output == Output::Json {
            let mut v = inst.clone();
            v["journal"] = Json::Array(recent_entries.to_vec());
            return out(&pretty(&v));
        }
        out(&describe_text(&inst, recent_entries))
    })())
}

fn describe_text(inst: &Json, journal: &[Json]) -> String {
    let mut s = String::new();
    let field = |s: &mut String, k: &str, v: String| s.push_str(&format!("{k:<10}{v}\n"));
    field(&mut s, "Name:", str_of(&inst["name"]));
    field(&mut s, "Domain:", str_of(&inst["domain"]));
    let mut status = str_of(&inst["status"]);
    if let Some(r) = inst["reason"].as_str() {
        status.push_str(&format!(" ({r})"));
    }
    field(&mut s, "Status:", status);
    field(&mut s, "Slice:", str_of(&inst["slice"]));
    s.push_str("State:\n");
    for (k, v) in inst["state"].as_object().into_iter().flatten() {
        s.push_str(&format!("  {k}: {v}\n"));
    }
    s.push_str("Goals:\n");
    for g in inst["goals"].as_array().into_iter().flatten() {
        let holds = if g["holds"] == true { "holds" } else { "does not hold" };
        s.push_str(&format!("  {}: {holds}\n", str_of(&g["name"])));
    }
    let pending = inst["pending"].as_array().cloned().unwrap_or_default();
    if pending.is_empty() {
        s.push_str("Pending:  none\n");
    } else {
        s.push_str("Pending:\n");
        for p in &pending {
            let mut line = format!("  {} {} (attempt {})", str_of(&p["transition"]), str_of(&p["phase"]), p["attempt"]);
            if let Some(ids) = p["outstanding"].as_array().filter(|a| !a.is_empty()) {
                let ids: Vec<String> = ids.iter().map(str_of).collect();
                line.push_str(&format!(": waiting for {}", ids.join(", ")));
            }
            if let Some(e) = p["error"].as_str() {
                line.push_str(&format!(": {e}"));
            }
            s.push_str(&line);
            s.push('\n');
        }
    }
    s.push_str("Recent journal:\n");
    if journal.is_empty() {
        s.push_str("  (none)\n");
    }
    for e in journal {
        let when = e["time"].as_str().map_or_else(|| format!("{}ms", e["at_ms"]), str::to_string);
        let mut line = format!("  slice {} at {when} [{}", e["slice"], str_of(&e["cause"]));
        if let Some(d) = e["detail"].as_str() {
            line.push_str(&format!(" {d}"));
        }
        line.push(']');
        let changes: Vec<String> = e["changes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| Some(format!("{} = {}", c.get(0)?.as_str()?, c.get(1)?.as_str()?)))
            .collect();
        if !changes.is_empty() {
            line.push_str(&format!(": {}", changes.join(", ")));
        }
        if let Some(st) = e["status"].as_str() {
            line.push_str(&format!(" -> {st}"));
        }
        s.push_str(&line);
        s.push('\n');
    }
    s
}

/// `ved watch [INSTANCE]`: the daemon's events as they happen, until it stops.
pub fn watch(c: &Connection, instance: Option<&str>) -> ExitCode {
    finish((|| {
        let client = Client::new(c)?;
        let path = match instance {
            Some(i) => format!("/v1/events?instance={}", encode(i)),
            None => "/v1/events".to_string(),
        };
        let mut req = client.agent.get(&format!("{}{path}", client.base));
        if let Some(t) = &client.token {
            req = req.header("Authorization", &format!("Bearer {t}"));
        }
        let mut resp = req.call().map_err(|e| client.unreachable(e))?;
        if resp.status().as_u16() >= 400 {
            let text = resp.body_mut().read_to_string().unwrap_or_default();
            let v: Json = serde_json::from_str(&text).unwrap_or_default();
            return Err(fail(format!("{} ({})", v["error"]["message"].as_str().unwrap_or("refused"), resp.status())));
        }
        if c.output == Output::Text {
            out(&table(&["TIME", "INSTANCE", "EVENT", "DETAIL"], &[]))?;
        }
        let reader = BufReader::new(resp.body_mut().as_reader());
        for line in reader.lines() {
            let Ok(line) = line else { break };
            let Some(data) = line.strip_prefix("data:") else { continue };
            let data = data.strip_prefix(' ').unwrap_or(data);
            match c.output {
                Output::Json => out(&format!("{data}\n"))?,
                Output::Text => {
                    let Ok(e) = serde_json::from_str::<Json>(data) else { continue };
                    out(&format!("{}\n", watch_line(&e)))?;
                }
            }
        }
        Ok(())
    })())
}

/// One event in a line: time, instance, event, and what it says.
fn watch_line(e: &Json) -> String {
    let detail = match e["event"].as_str().unwrap_or_default() {
        "slice" => {
            let changes: Vec<String> =
                e["changes"].as_object().into_iter().flatten().map(|(k, v)| format!("{k} = {v}")).collect();
            let cause = &e["cause"];
            let why = cause["transition"]
                .as_str()
                .or(cause["intent"].as_str())
                .unwrap_or(cause["kind"].as_str().unwrap_or(""));
            format!("#{} {why}: {}", e["slice"], changes.join(", "))
        }
        "intent" => format!("{} {}.{}", str_of(&e["id"]), str_of(&e["adapter"]), str_of(&e["action"])),
        "result" => {
            format!("{} {}", str_of(&e["id"]), if e["ok"] == true { "ok".to_string() } else { str_of(&e["error"]) })
        }
        "retry" => format!("{} attempt {}", str_of(&e["transition"]), e["attempt"]),
        _ => e["reason"].as_str().or(e["message"].as_str()).unwrap_or_default().to_string(),
    };
    format!("{}  {}  {}  {detail}", str_of(&e["time"]), str_of(&e["instance"]), str_of(&e["event"]))
}

/// `ved observe INSTANCE field=value...`: each value is JSON if it reads as JSON (`5`,
/// `true`, `[1, 2]`, `"x"`), else a string (`primary=db2`).
pub fn observe(c: &Connection, instance: &str, pairs: &[String]) -> ExitCode {
    finish((|| {
        let mut body = Map::new();
        for p in pairs {
            let Some((k, v)) = p.split_once('=') else {
                return Err(Failure {
                    message: format!("`{p}` is not FIELD=VALUE"),
                    hint: Some("e.g. `ved observe WorkerPool workers=3`".into()),
                });
            };
            if k.is_empty() {
                return Err(fail(format!("`{p}` names no field")));
            }
            let value = serde_json::from_str(v).unwrap_or_else(|_| Json::String(v.to_string()));
            if body.insert(k.to_string(), value).is_some() {
                return Err(fail(format!("`{k}` is given twice")));
            }
        }
        if body.is_empty() {
            return Err(fail("nothing to observe: give FIELD=VALUE pairs"));
        }
        let client = Client::new(c)?;
        let path = format!("/v1/instances/{}/observations", encode(instance));
        let reply = client.call("POST", &path, Some(&Json::Object(body)))?;
        match c.output {
            Output::Json => out(&pretty(&reply)),
            Output::Text => out(&format!(
                "{}: slice {}, {}\n",
                str_of(&reply["name"]),
                str_of(&reply["slice"]),
                str_of(&reply["status"])
            )),
        }
    })())
}

/// Percent-encodes a path segment or query value (instance names are plain, but a typo
/// with a space or `/` must not become another route).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_pad_columns_to_the_widest_cell() {
        let t = table(
            &["NAME", "STATUS"],
            &[vec!["WorkerPool".into(), "stable".into()], vec!["db".into(), "waiting".into()]],
        );
        assert_eq!(t, "NAME        STATUS\nWorkerPool  stable\ndb          waiting\n");
    }

    #[test]
    fn names_are_encoded_as_one_path_segment() {
        assert_eq!(encode("Worker-Pool_1.a"), "Worker-Pool_1.a");
        assert_eq!(encode("a b/c"), "a%20b%2Fc");
    }
}
