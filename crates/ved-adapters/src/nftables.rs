//! The Linux firewall through `nft`: open and close TCP ports by adding and
//! removing `tcp dport P accept` rules in one table and chain, optionally inside
//! a network namespace. The watcher reads the chain as JSON (`nft -j list
//! chain`) once at start and again whenever `nft monitor rules` reports a change,
//! so a rule added by hand is seen at once and nothing is polled.
//!
//! A port counts as open when a rule of the chain accepts `tcp dport` equal to it
//! or to a set holding it, whoever added the rule. Closing a port removes every
//! such rule; a set rule that also opens other ports is replaced, in the same
//! transaction, by single-port rules for the ports that stay open.

use crate::exec::run_command;
use crate::{Driver, Inbound, IntentRequest, Watcher};
use serde_json::{json, Value as Json};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::Duration;

/// One managed chain.
#[derive(Clone, Debug)]
pub struct Chain {
    pub family: String,
    pub table: String,
    pub chain: String,
    /// Run `nft` inside this network namespace (`ip netns exec NS nft ...`).
    pub netns: Option<String>,
    pub timeout: Duration,
}

/// A rule of the chain that accepts some TCP destination ports.
#[derive(Clone, Debug, PartialEq)]
pub struct PortRule {
    pub handle: u64,
    pub ports: Vec<i64>,
}

impl Chain {
    fn nft(&self) -> Vec<String> {
        let mut cmd = Vec::new();
        if let Some(ns) = &self.netns {
            cmd.extend(["ip".to_string(), "netns".into(), "exec".into(), ns.clone()]);
        }
        cmd.push("nft".into());
        cmd
    }

    fn run(&self, args: &[&str], input: &[u8]) -> Result<Vec<u8>, String> {
        let mut cmd = self.nft();
        cmd.extend(args.iter().map(|a| a.to_string()));
        run_command(&cmd, input, self.timeout)
    }

    /// Applies a script of nft commands as one atomic transaction.
    fn apply(&self, script: &str) -> Result<(), String> {
        self.run(&["-f", "-"], script.as_bytes()).map(|_| ())
    }

    /// Creates the table and the chain if they do not exist (an input hook that accepts by default,
    /// so that only the managed rules matter). Existing ones are left as they are.
    pub fn ensure(&self) -> Result<(), String> {
        let (f, t, c) = (&self.family, &self.table, &self.chain);
        self.apply(&format!(
            "add table {f} {t}\nadd chain {f} {t} {c} {{ type filter hook input priority 0 ; policy accept ; }}\n"
        ))
    }

    /// The chain's rules that accept TCP destination ports, in chain order.
    /// A missing table or chain has none.
    pub fn port_rules(&self) -> Result<Vec<PortRule>, String> {
        let out = match self.run(&["-j", "-a", "list", "chain", &self.family, &self.table, &self.chain], b"") {
            Ok(o) => o,
            Err(e) if e.contains("No such file or directory") => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let doc: Json = serde_json::from_slice(&out).map_err(|e| format!("nft printed JSON Ved cannot read: {e}"))?;
        Ok(parse_port_rules(&doc))
    }

    /// The open ports, in chain order, each once.
    pub fn open_ports(&self) -> Result<Vec<i64>, String> {
        let mut out = Vec::new();
        for r in self.port_rules()? {
            for p in r.ports {
                if !out.contains(&p) {
                    out.push(p);
                }
            }
        }
        Ok(out)
    }

    /// Adds an accept rule for each port not already open, all in one transaction.
    pub fn open(&self, ports: &[i64]) -> Result<(), String> {
        self.ensure()?;
        let open = self.open_ports()?;
        let (f, t, c) = (&self.family, &self.table, &self.chain);
        let script: String = ports
            .iter()
            .filter(|p| !open.contains(p))
            .map(|p| format!("add rule {f} {t} {c} tcp dport {p} accept\n"))
            .collect();
        if script.is_empty() {
            return Ok(());
        }
        self.apply(&script)
    }

    /// Removes every rule that opens one of `ports`, in one transaction; the other
    /// ports of a set rule stay open through single-port rules.
    pub fn close(&self, ports: &[i64]) -> Result<(), String> {
        let (f, t, c) = (&self.family, &self.table, &self.chain);
        let (doomed, kept): (Vec<PortRule>, Vec<PortRule>) =
            self.port_rules()?.into_iter().partition(|r| r.ports.iter().any(|p| ports.contains(p)));
        let mut still_open: Vec<i64> = kept.into_iter().flat_map(|r| r.ports).collect();
        let mut script = String::new();
        for r in doomed {
            script.push_str(&format!("delete rule {f} {t} {c} handle {}\n", r.handle));
            for keep in r.ports.into_iter().filter(|p| !ports.contains(p)) {
                if !still_open.contains(&keep) {
                    still_open.push(keep);
                    script.push_str(&format!("add rule {f} {t} {c} tcp dport {keep} accept\n"));
                }
            }
        }
        if script.is_empty() {
            return Ok(());
        }
        self.apply(&script)
    }
}

/// Reads `tcp dport P accept` and `tcp dport { P, Q } accept` rules out of `nft -j` output.
pub fn parse_port_rules(doc: &Json) -> Vec<PortRule> {
    let mut out = Vec::new();
    for item in doc["nftables"].as_array().into_iter().flatten() {
        let Some(rule) = item.get("rule") else { continue };
        let Some(handle) = rule["handle"].as_u64() else { continue };
        let exprs = rule["expr"].as_array().map(Vec::as_slice).unwrap_or_default();
        let accepts = exprs.iter().any(|e| e.get("accept").is_some());
        let mut ports = Vec::new();
        for e in exprs {
            let m = &e["match"];
            let payload = &m["left"]["payload"];
            if m["op"] != "==" || payload["protocol"] != "tcp" || payload["field"] != "dport" {
                continue;
            }
            match &m["right"] {
                Json::Number(n) => ports.extend(n.as_i64()),
                Json::Object(o) => {
                    ports.extend(o.get("set").and_then(Json::as_array).into_iter().flatten().filter_map(Json::as_i64))
                }
                _ => {}
            }
        }
        if accepts && !ports.is_empty() {
            out.push(PortRule { handle, ports });
        }
    }
    out
}

/// Ports from an intent's arguments: one list (or set) of ints, or ints.
fn ports_of(intent: &IntentRequest) -> Result<Vec<i64>, String> {
    let mut out = Vec::new();
    for a in &intent.args {
        match a {
            Json::Number(n) => out.extend(n.as_i64()),
            Json::Array(xs) => {
                for x in xs {
                    out.push(x.as_i64().ok_or_else(|| format!("`{x}` is not a port number"))?);
                }
            }
            other => return Err(format!("`{other}` is not a port or a list of ports")),
        }
    }
    if let Some(p) = out.iter().find(|p| !(1..=65535).contains(*p)) {
        return Err(format!("{p} is not a TCP port (1 to 65535)"));
    }
    Ok(out)
}

/// The `nftables` driver: actions `OpenPorts(ports)` and `ClosePorts(ports)`.
pub struct NftDriver {
    pub chain: Chain,
}

impl Driver for NftDriver {
    fn deliver(&self, intent: &IntentRequest) -> Result<(), String> {
        let ports = ports_of(intent)?;
        match intent.action.as_str() {
            "OpenPorts" | "OpenPort" => self.chain.open(&ports),
            "ClosePorts" | "ClosePort" => self.chain.close(&ports),
            other => Err(format!("the nftables driver has no action `{other}`; it has OpenPorts and ClosePorts")),
        }
    }
}

/// Reports the chain's open ports into one field whenever `nft monitor` says the ruleset changed.
pub struct NftWatcher {
    pub chain: Chain,
    pub instance: String,
    pub field: String,
    pub source: String,
}

/// How long a stopped watcher may take to notice.
const STOP_CHECK: Duration = Duration::from_millis(200);
/// A rule change arrives as several monitor lines; the chain is read once they pause.
const SETTLE: Duration = Duration::from_millis(2);

impl NftWatcher {
    /// Starts `nft monitor rules`; each line it prints becomes a unit on `tx`.
    fn monitor(&self, tx: Sender<()>) -> Result<std::process::Child, String> {
        let mut cmd = self.chain.nft();
        cmd.extend(["monitor".to_string(), "rules".into()]);
        let mut child = Command::new(&cmd[0])
            .args(&cmd[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start `{}`: {e}", cmd.join(" ")))?;
        let out = child.stdout.take().ok_or("nft monitor has no stdout")?;
        std::thread::spawn(move || {
            for _ in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(()).is_err() {
                    return;
                }
            }
        });
        Ok(child)
    }
}

impl Watcher for NftWatcher {
    fn run(self: Box<Self>, sink: Sender<Inbound>, stop: Arc<AtomicBool>, resync: Option<Duration>) {
        let mut reporter = crate::Reporter::new(&self.instance, &self.source, resync);
        let mut monitor: Option<std::process::Child> = None;
        let (tx, rx) = mpsc::channel::<()>();
        let mut read_now = true;
        while !stop.load(Ordering::Relaxed) {
            // Listen before reading, so that no change falls between the read and the monitor.
            if monitor.as_mut().is_none_or(|c| c.try_wait().ok().flatten().is_some()) {
                match self.monitor(tx.clone()) {
                    Ok(c) => {
                        monitor = Some(c);
                        read_now = true;
                    }
                    Err(e) => {
                        eprintln!("warning: {}: {e}", self.source);
                        std::thread::sleep(Duration::from_secs(1));
                        continue;
                    }
                }
            }
            let resync_due = reporter.resync_in().is_some_and(|d| d.is_zero());
            if read_now || resync_due {
                read_now = false;
                match self.chain.open_ports() {
                    Ok(ports) => {
                        if reporter.offer_one(&self.field, json!(ports), &sink).is_err() {
                            break;
                        }
                    }
                    Err(e) => eprintln!("warning: {}: cannot read the ruleset: {e}", self.source),
                }
            }
            let wait = reporter.resync_in().map_or(STOP_CHECK, |d| d.min(STOP_CHECK));
            match rx.recv_timeout(wait) {
                Ok(()) => {
                    // Let the rest of the transaction's lines arrive, then read once.
                    std::thread::sleep(SETTLE);
                    while rx.try_recv().is_ok() {}
                    read_now = true;
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => read_now = true,
            }
        }
        if let Some(mut c) = monitor {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_ports_and_sets_are_read_and_other_rules_ignored() {
        let doc = json!({"nftables": [
            {"metainfo": {"version": "1.0.6"}},
            {"chain": {"family": "inet", "table": "ved", "name": "input", "handle": 1}},
            {"rule": {"handle": 2, "expr": [
                {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 22}},
                {"accept": null}]}},
            {"rule": {"handle": 4, "expr": [
                {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": {"set": [80, 443]}}},
                {"accept": null}]}},
            {"rule": {"handle": 5, "expr": [
                {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 8080}},
                {"drop": null}]}},
            {"rule": {"handle": 6, "expr": [
                {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 53}},
                {"accept": null}]}}
        ]});
        assert_eq!(
            parse_port_rules(&doc),
            vec![PortRule { handle: 2, ports: vec![22] }, PortRule { handle: 4, ports: vec![80, 443] }]
        );
    }

    #[test]
    fn intent_arguments_must_be_ports() {
        let req = |args: Json| IntentRequest {
            id: "P/1/0".into(),
            instance: "P".into(),
            adapter: "Firewall".into(),
            action: "ClosePorts".into(),
            args: args.as_array().unwrap().clone(),
            fence: None,
        };
        assert_eq!(ports_of(&req(json!([[22, 80]]))).unwrap(), vec![22, 80]);
        assert_eq!(ports_of(&req(json!([443]))).unwrap(), vec![443]);
        assert!(ports_of(&req(json!([[70000]]))).unwrap_err().contains("not a TCP port"));
        assert!(ports_of(&req(json!(["ssh"]))).unwrap_err().contains("not a port"));
    }
}
