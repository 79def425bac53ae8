//! A small, blocking etcd v3 client over etcd's JSON gateway (`/v3/kv/*`,
//! `/v3/lease/*`), which every etcd 3.4+ server serves on its client port.
//!
//! Why not the `etcd-client` crate: it generates its gRPC code at build time and
//! needs `protoc` for that, so every build of Ved, even one that never joins a
//! cluster, would need a system protobuf compiler. The gateway is part of etcd's
//! documented API and carries the same requests (range, put, delete, txn with
//! compares, leases), encoded as JSON with base64 keys and values.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use serde_json::{json, Value as Json};
use std::sync::Mutex;
use std::time::Duration;

/// A key's value and metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub lease: i64,
}

/// One comparison of a transaction.
#[derive(Clone, Debug)]
pub enum Compare {
    /// The key exists (its create revision is not 0).
    Exists(String),
    /// The key does not exist.
    Absent(String),
    /// The key's value equals this.
    ValueIs(String, Vec<u8>),
    /// The key is attached to this lease.
    LeaseIs(String, i64),
}

/// One operation of a transaction.
#[derive(Clone, Debug)]
pub enum Op {
    Put { key: String, value: Vec<u8>, lease: i64 },
    Delete(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum EtcdError {
    /// No endpoint answered (down, partitioned, or no quorum).
    Unavailable(String),
    /// An endpoint answered with an error.
    Rejected(String),
}

impl std::fmt::Display for EtcdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EtcdError::Unavailable(m) => write!(f, "etcd is unreachable: {m}"),
            EtcdError::Rejected(m) => write!(f, "etcd refused: {m}"),
        }
    }
}

pub struct Etcd {
    endpoints: Vec<String>,
    agent: ureq::Agent,
    /// The endpoint that answered last; tried first.
    preferred: Mutex<usize>,
}

fn b64(s: &[u8]) -> String {
    B64.encode(s)
}

fn num(v: &Json) -> i64 {
    match v {
        Json::String(s) => s.parse().unwrap_or(0),
        Json::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn kv_of(j: &Json) -> Kv {
    let dec = |v: &Json| v.as_str().and_then(|s| B64.decode(s).ok()).unwrap_or_default();
    Kv {
        key: String::from_utf8_lossy(&dec(&j["key"])).into_owned(),
        value: dec(&j["value"]),
        create_revision: num(&j["create_revision"]),
        mod_revision: num(&j["mod_revision"]),
        lease: num(&j["lease"]),
    }
}

/// The key just past every key with this prefix (etcd's range end for a prefix).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl Etcd {
    /// `endpoints` are client URLs such as `http://127.0.0.1:2379`; each request has `timeout`.
    pub fn new(endpoints: Vec<String>, timeout: Duration) -> Etcd {
        let agent: ureq::Agent =
            ureq::Agent::config_builder().timeout_global(Some(timeout)).http_status_as_error(false).build().into();
        Etcd { endpoints, agent, preferred: Mutex::new(0) }
    }

    /// Sends one request, trying each endpoint in turn from the last one that answered.
    fn call(&self, path: &str, body: Json) -> Result<Json, EtcdError> {
        let n = self.endpoints.len();
        let start = *self.preferred.lock().unwrap_or_else(|p| p.into_inner());
        let mut last_err = String::from("no endpoints");
        for k in 0..n {
            let i = (start + k) % n;
            let url = format!("{}{path}", self.endpoints[i].trim_end_matches('/'));
            let resp = self.agent.post(&url).header("Content-Type", "application/json").send(body.to_string());
            match resp {
                Ok(mut r) => {
                    let status = r.status().as_u16();
                    let text = r.body_mut().read_to_string().unwrap_or_default();
                    let j: Json = serde_json::from_str(&text).unwrap_or(Json::Null);
                    if status == 200 && j.get("error").is_none() {
                        *self.preferred.lock().unwrap_or_else(|p| p.into_inner()) = i;
                        return Ok(j);
                    }
                    let msg = j["error"].as_str().or(j["message"].as_str()).unwrap_or(&text).to_string();
                    // Without a leader an endpoint cannot serve; another one may.
                    if status >= 500 || msg.contains("leader") || msg.contains("timed out") {
                        last_err = format!("{url}: {msg}");
                        continue;
                    }
                    return Err(EtcdError::Rejected(format!("{url}: {msg}")));
                }
                Err(e) => last_err = format!("{url}: {e}"),
            }
        }
        Err(EtcdError::Unavailable(last_err))
    }

    /// A lease of `ttl` seconds; keys attached to it vanish when it expires.
    pub fn grant(&self, ttl: i64) -> Result<i64, EtcdError> {
        let j = self.call("/v3/lease/grant", json!({"TTL": ttl}))?;
        Ok(num(&j["ID"]))
    }

    /// Renews a lease; returns the seconds left, 0 when it has already expired.
    pub fn keepalive(&self, lease: i64) -> Result<i64, EtcdError> {
        let j = self.call("/v3/lease/keepalive", json!({"ID": lease.to_string()}))?;
        Ok(num(&j["result"]["TTL"]))
    }

    /// Ends a lease at once, deleting its keys.
    pub fn revoke(&self, lease: i64) -> Result<(), EtcdError> {
        self.call("/v3/lease/revoke", json!({"ID": lease.to_string()})).map(|_| ())
    }

    pub fn get(&self, key: &str) -> Result<Option<Kv>, EtcdError> {
        let j = self.call("/v3/kv/range", json!({"key": b64(key.as_bytes())}))?;
        Ok(j["kvs"].as_array().and_then(|a| a.first()).map(kv_of))
    }

    pub fn get_prefix(&self, prefix: &str) -> Result<Vec<Kv>, EtcdError> {
        let j =
            self.call("/v3/kv/range", json!({"key": b64(prefix.as_bytes()), "range_end": b64(&prefix_end(prefix))}))?;
        Ok(j["kvs"].as_array().map(|a| a.iter().map(kv_of).collect()).unwrap_or_default())
    }

    pub fn put(&self, key: &str, value: &[u8], lease: i64) -> Result<i64, EtcdError> {
        let mut body = json!({"key": b64(key.as_bytes()), "value": b64(value)});
        if lease != 0 {
            body["lease"] = json!(lease.to_string());
        }
        let j = self.call("/v3/kv/put", body)?;
        Ok(num(&j["header"]["revision"]))
    }

    /// Runs `ops` if every comparison holds; returns whether they did, and the revision after.
    pub fn txn(&self, compares: &[Compare], ops: &[Op]) -> Result<(bool, i64), EtcdError> {
        let cmp: Vec<Json> = compares
            .iter()
            .map(|c| match c {
                Compare::Exists(k) => {
                    json!({"key": b64(k.as_bytes()), "target": "CREATE", "result": "GREATER", "create_revision": "0"})
                }
                Compare::Absent(k) => {
                    json!({"key": b64(k.as_bytes()), "target": "CREATE", "result": "EQUAL", "create_revision": "0"})
                }
                Compare::ValueIs(k, v) => {
                    json!({"key": b64(k.as_bytes()), "target": "VALUE", "result": "EQUAL", "value": b64(v)})
                }
                Compare::LeaseIs(k, l) => {
                    json!({"key": b64(k.as_bytes()), "target": "LEASE", "result": "EQUAL", "lease": l.to_string()})
                }
            })
            .collect();
        let success: Vec<Json> = ops
            .iter()
            .map(|o| match o {
                Op::Put { key, value, lease } => {
                    let mut p = json!({"key": b64(key.as_bytes()), "value": b64(value)});
                    if *lease != 0 {
                        p["lease"] = json!(lease.to_string());
                    }
                    json!({"requestPut": p})
                }
                Op::Delete(k) => json!({"requestDeleteRange": {"key": b64(k.as_bytes())}}),
            })
            .collect();
        let j = self.call("/v3/kv/txn", json!({"compare": cmp, "success": success}))?;
        Ok((j["succeeded"].as_bool().unwrap_or(false), num(&j["header"]["revision"])))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_ends_just_past_its_last_key() {
        assert_eq!(prefix_end("ved/nodes/"), b"ved/nodes0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
    }
}
