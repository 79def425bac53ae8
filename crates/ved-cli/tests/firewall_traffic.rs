//! Seed 000 against the real Linux firewall with real connections: a server
//! network namespace listens on 22, 80, 443 and 8080; a client namespace,
//! joined to it by a veth pair, tries to connect. After Ved starts, and after
//! each way of tampering with the firewall, 80 and 443 must accept connections
//! from the client, 22 and 8080 must not, and the instance must be `stable`;
//! each tampering must leave an audit entry. A foreign table that drops a
//! wanted port must end `degraded`, naming that table, and `stable` again once
//! it is gone. Every check waits on a condition with a generous deadline:
//! nothing here depends on timing.

mod common;

use common::{security_policy_in, sh, tempdir, wait_for, Daemon};
use serde_json::Value as Json;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(120);
const SERVER_IP: &str = "10.231.7.1";
const CLIENT_IP: &str = "10.231.7.2";
const PORTS: [u16; 4] = [22, 80, 443, 8080];

/// Two namespaces joined by a veth pair, and listeners in the server's; all removed on drop.
struct Net {
    server: String,
    client: String,
    listeners: Option<Child>,
}

impl Net {
    fn new(tag: &str) -> Net {
        let pid = std::process::id();
        let (server, client) = (format!("ved-{tag}s-{pid}"), format!("ved-{tag}c-{pid}"));
        for ns in [&server, &client] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            sh(&["ip", "netns", "add", ns]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        // Interface names live inside the namespaces, so fixed names cannot collide.
        sh(&["ip", "-n", &server, "link", "add", "vfw0", "type", "veth", "peer", "name", "vfw1", "netns", &client]);
        sh(&["ip", "-n", &server, "addr", "add", &format!("{SERVER_IP}/24"), "dev", "vfw0"]);
        sh(&["ip", "-n", &client, "addr", "add", &format!("{CLIENT_IP}/24"), "dev", "vfw1"]);
        sh(&["ip", "-n", &server, "link", "set", "vfw0", "up"]);
        sh(&["ip", "-n", &client, "link", "set", "vfw1", "up"]);
        let script = format!(
            "import socket, threading, sys\n\
             def serve(p):\n    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n    \
             s.bind(('0.0.0.0', p)); s.listen(64)\n    while True:\n        c, _ = s.accept(); c.close()\n\
             for p in {PORTS:?}:\n    threading.Thread(target=serve, args=(p,), daemon=True).start()\n\
             print('ready', flush=True)\nsys.stdin.read()\n"
        );
        let mut listeners = Command::new("ip")
            .args(["netns", "exec", &server, "python3", "-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs the listeners");
        let mut ready = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(listeners.stdout.take().unwrap()), &mut ready)
            .unwrap();
        assert_eq!(ready.trim(), "ready");
        Net { server, client, listeners: Some(listeners) }
    }

    fn nft(&self, args: &[&str]) -> String {
        let mut cmd = vec!["ip", "netns", "exec", &self.server, "nft"];
        cmd.extend_from_slice(args);
        sh(&cmd)
    }

    /// Which of [`PORTS`] accept a TCP connection from the client namespace (1 s per attempt, in parallel).
    fn reachable(&self) -> Vec<u16> {
        let script = format!(
            "import socket, threading\nok = []\n\
             def probe(p):\n    try:\n        socket.create_connection(('{SERVER_IP}', p), timeout=1).close(); ok.append(p)\n    \
             except OSError:\n        pass\n\
             ts = [threading.Thread(target=probe, args=(p,)) for p in {PORTS:?}]\n\
             [t.start() for t in ts]; [t.join() for t in ts]\nprint(sorted(ok))\n"
        );
        let out = sh(&["ip", "netns", "exec", &self.client, "python3", "-c", &script]);
        serde_json::from_str(out.trim()).unwrap()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        if let Some(mut l) = self.listeners.take() {
            let _ = l.kill();
            let _ = l.wait();
        }
        for ns in [&self.server, &self.client] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

fn status(d: &Daemon) -> Json {
    d.get("/v1/instances/SecurityPolicy").1
}

fn audit(d: &Daemon) -> Vec<String> {
    let (_, a) = d.get("/v1/audit");
    a["entries"].as_array().unwrap().iter().map(|e| e["text"].as_str().unwrap_or_default().to_string()).collect()
}

/// Waits until exactly 80 and 443 are reachable and the instance is stable.
fn converged(net: &Net, d: &Daemon, after: &str) {
    wait_for(&format!("80 and 443 reachable, 22 and 8080 not, and stable, after {after}"), DEADLINE, || {
        net.reachable() == vec![80, 443] && status(d)["status"] == "stable"
    });
}

/// Waits for a new audit entry (past the first `seen`) that contains `quote`.
fn audited(d: &Daemon, seen: usize, quote: &str, case: &str) -> usize {
    let mut entries = Vec::new();
    let found = std::time::Instant::now();
    while found.elapsed() < DEADLINE {
        entries = audit(d);
        if entries.iter().skip(seen).any(|t| t.contains(quote)) {
            return entries.len();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("no audit entry quoting `{quote}` after {case}: {entries:#?}");
}

/// Is there an `nft` process in the namespace `ns`? Compared by the namespace's inode,
/// because `ip netns exec` leaves no trace of the name in the command line.
fn nft_in_netns(ns: &str) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let Ok(target) = std::fs::metadata(format!("/run/netns/{ns}")) else { return Vec::new() };
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let cmd = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if !cmd.starts_with("nft ") {
            continue;
        }
        let Ok(ns_meta) = std::fs::metadata(format!("/proc/{pid}/ns/net")) else { continue };
        if ns_meta.ino() == target.ino() && ns_meta.dev() == target.dev() {
            out.push(format!("{pid}: {cmd}"));
        }
    }
    out
}

fn start_ved(net: &Net, dir: &std::path::Path) -> Daemon {
    // A short backoff and breaker, so that a block Ved cannot undo is `degraded` within seconds.
    security_policy_in(&net.server, dir, "\n[retry]\ninitial_ms = 50\nfactor = 2\ncap_ms = 400\nbreaker_after = 3\n")
}

#[test]
fn only_the_wanted_ports_accept_connections_whatever_is_done_to_the_firewall() {
    let net = Net::new("fwt");
    let dir = tempdir("fwtraffic");
    let d = start_ved(&net, &dir);
    converged(&net, &d, "start");
    let mut seen = audit(&d).len();

    let ved_rule = |rule: &str| -> Vec<String> {
        let mut a = vec!["add".to_string(), "rule".into(), "inet".into(), "ved".into(), "input".into()];
        a.extend(rule.split(' ').map(String::from));
        a
    };
    // (what is done, nft arguments, the words the audit entry must quote)
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        (
            "a rogue `tcp dport 22 accept`",
            ved_rule("tcp dport 22 accept"),
            "CloseRoguePorts emitted Firewall.ClosePorts([22])",
        ),
        ("`tcp dport 20-30 accept`", ved_rule("tcp dport 20-30 accept"), "removed rule `tcp dport 20-30 accept`"),
        ("`tcp dport != 80 accept`", ved_rule("tcp dport != 80 accept"), "removed rule `tcp dport != 80 accept`"),
        (
            "`tcp dport 80 drop` inserted at the top",
            ["insert", "rule", "inet", "ved", "input", "tcp", "dport", "80", "drop"].map(String::from).to_vec(),
            "removed rule `tcp dport 80 drop`",
        ),
        (
            "the policy set to accept by hand",
            ["chain", "inet", "ved", "input", "{ policy accept ; }"].map(String::from).to_vec(),
            "set inet ved input back to `type filter hook input priority 0; policy drop;`",
        ),
        ("a flushed table", ["flush", "table", "inet", "ved"].map(String::from).to_vec(), "restored the base rules"),
        ("a deleted table", ["delete", "table", "inet", "ved"].map(String::from).to_vec(), "recreated table inet ved"),
    ];
    for (case, args, quote) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        net.nft(&args);
        converged(&net, &d, case);
        seen = audited(&d, seen, quote, case);
    }

    // Another table, running earlier, drops port 80: Ved cannot undo that and must say so.
    net.nft(&["add", "table", "ip", "filter"]);
    net.nft(&["add", "chain", "ip", "filter", "input", "{ type filter hook input priority -10 ; policy accept ; }"]);
    net.nft(&["add", "rule", "ip", "filter", "input", "tcp", "dport", "80", "drop"]);
    wait_for("the instance to be degraded", DEADLINE, || status(&d)["status"] == "degraded");
    assert_eq!(net.reachable(), vec![443], "the foreign table drops 80");
    let foreign =
        "port 80 is dropped by chain `input` of table `ip filter` (hook input, priority -10), which Ved does not own";
    seen = audited(&d, seen, foreign, "the foreign table");
    // The status itself says why, quoting the driver's last error.
    let reason = status(&d)["reason"].as_str().unwrap_or_default().to_string();
    assert!(reason.contains("table `ip filter`") && reason.contains("chain `input`"), "{reason}");
    net.nft(&["delete", "table", "ip", "filter"]);
    converged(&net, &d, "deleting the foreign table");
    let _ = seen;

    // Ved's own chain is the shape the reference documents.
    let chain = net.nft(&["list", "chain", "inet", "ved", "input"]);
    assert!(chain.contains("policy drop;"), "{chain}");
    let rules: Vec<&str> =
        chain.lines().map(str::trim).filter(|l| !l.is_empty() && !l.contains('{') && *l != "}").collect();
    assert_eq!(
        rules[1..],
        ["ct state established,related accept", "iif \"lo\" accept", "tcp dport 80 accept", "tcp dport 443 accept"],
        "{chain}"
    );

    // No `nft` child outlives a stopped Ved.
    assert!(!nft_in_netns(&net.server).is_empty(), "ved runs `nft monitor` and `nft -i` in the namespace");
    let (code, events) = d.terminate();
    assert_eq!(code, 0);
    wait_for("ved's nft children to end", Duration::from_secs(120), || nft_in_netns(&net.server).is_empty());
    // Seed 000 byte for byte healed every drift without ever passing through `stuck`: no
    // such status event, and no audit entry that says so.
    let stuck: Vec<_> = events.iter().filter(|e| e["event"] == "stuck" || e["status"] == "stuck").collect();
    assert!(stuck.is_empty(), "a heal passed through stuck: {stuck:?}");
    let audit_all: Vec<String> =
        ved_store::read_only(&dir.join("data")).unwrap().audit.into_iter().map(|e| e.text).collect();
    let audit_text = audit_all.join("\n");
    assert!(!audit_text.contains("stuck"), "{audit_text}");
}

#[test]
fn a_killed_ved_leaves_no_nft_behind() {
    let net = Net::new("fwk");
    let dir = tempdir("fwkill");
    let mut d = start_ved(&net, &dir);
    converged(&net, &d, "start");
    assert!(!nft_in_netns(&net.server).is_empty());
    // SIGKILL: no shutdown path runs; PR_SET_PDEATHSIG must end the children.
    d.child.kill().unwrap();
    d.child.wait().unwrap();
    wait_for("ved's nft children to end after SIGKILL", Duration::from_secs(120), || {
        nft_in_netns(&net.server).is_empty()
    });
}
