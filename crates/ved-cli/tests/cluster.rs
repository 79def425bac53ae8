//! Cluster mode on a real etcd: the test starts a 3-member etcd cluster and 3 Ved
//! nodes on loopback ports. A program of six "beat" instances emits one intent
//! per slice to a webhook this test runs; every intent carries its owner's
//! fencing token and its beat number, which is how the test sees who acted when.

mod common;

use common::{tempdir, wait_for, Webhook};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const INSTANCES: usize = 6;

/// How long a step of a scenario may take before the test calls it stuck: generous, so that a
/// verdict never depends on how busy the machine is (on a loaded 2-core machine etcd elections,
/// leases and probes all slow down together; 20 s was seen to run out). A failover that
/// starved would still fail, only later.
const LOADED: Duration = Duration::from_secs(120);

/// The two tests each run three etcd members and several nodes; on a 2-core machine
/// they measure failover more honestly one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A 3-member etcd cluster on loopback.
struct EtcdCluster {
    dir: PathBuf,
    names: Vec<String>,
    client: Vec<u16>,
    peer: Vec<u16>,
    procs: Vec<Option<Child>>,
}

impl EtcdCluster {
    fn start(tag: &str) -> EtcdCluster {
        let dir = tempdir(&format!("etcd-{tag}"));
        let names: Vec<String> = (1..=3).map(|i| format!("e{i}")).collect();
        let client: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let peer: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let mut c = EtcdCluster { dir, names, client, peer, procs: vec![None, None, None] };
        for i in 0..3 {
            c.start_member(i, "new");
        }
        wait_for("etcd to elect a leader", LOADED, || c.healthy());
        c
    }

    fn urls(&self) -> String {
        self.client.iter().map(|p| format!("http://127.0.0.1:{p}")).collect::<Vec<_>>().join(",")
    }

    fn start_member(&mut self, i: usize, state: &str) {
        let initial: Vec<String> =
            (0..3).map(|j| format!("{}=http://127.0.0.1:{}", self.names[j], self.peer[j])).collect();
        let log = std::fs::File::create(self.dir.join(format!("{}.log", self.names[i]))).unwrap();
        let child = Command::new("etcd")
            .args(["--name", &self.names[i]])
            .arg("--data-dir")
            .arg(self.dir.join(&self.names[i]))
            .args(["--listen-client-urls", &format!("http://127.0.0.1:{}", self.client[i])])
            .args(["--advertise-client-urls", &format!("http://127.0.0.1:{}", self.client[i])])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{}", self.peer[i])])
            .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{}", self.peer[i])])
            .args(["--initial-cluster", &initial.join(",")])
            .args(["--initial-cluster-state", state])
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("etcd is installed (.ci/deps installs etcd-server)");
        self.procs[i] = Some(child);
    }

    fn kill_member(&mut self, i: usize) {
        if let Some(mut c) = self.procs[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn pid(&self, i: usize) -> u32 {
        self.procs[i].as_ref().expect("the member runs").id()
    }

    /// The URLs of every member but `i`.
    fn urls_but(&self, i: usize) -> Vec<String> {
        (0..3).filter(|j| *j != i).map(|j| format!("http://127.0.0.1:{}", self.client[j])).collect()
    }

    /// Whether member `i` is the leader, by its own status.
    fn is_leader(&self, i: usize) -> bool {
        let status = self.status(i);
        status["leader"].is_string() && status["leader"] == status["header"]["member_id"]
    }

    /// Member `i`'s own status, through the JSON gateway.
    fn status(&self, i: usize) -> serde_json::Value {
        ureq::post(&format!("http://127.0.0.1:{}/v3/maintenance/status", self.client[i]))
            .send("{}")
            .ok()
            .and_then(|mut r| r.body_mut().read_to_string().ok())
            .and_then(|b| serde_json::from_str(&b).ok())
            .unwrap_or_default()
    }

    /// Makes member `to` the leader (or leaves it so), so a test knows what it stops.
    fn move_leader(&self, to: usize) {
        wait_for("the leadership to move", LOADED, || {
            if self.is_leader(to) {
                return true;
            }
            let target = self.status(to)["header"]["member_id"].clone();
            if let Some(leader) = (0..3).find(|j| self.is_leader(*j)) {
                let _ =
                    ureq::post(&format!("http://127.0.0.1:{}/v3/maintenance/transfer-leadership", self.client[leader]))
                        .send(serde_json::json!({ "targetID": target }).to_string());
            }
            std::thread::sleep(Duration::from_millis(200));
            self.is_leader(to)
        });
    }

    fn healthy(&self) -> bool {
        self.client.iter().enumerate().any(|(i, p)| {
            self.procs[i].is_some()
                && ureq::get(&format!("http://127.0.0.1:{p}/health"))
                    .call()
                    .ok()
                    .and_then(|mut r| r.body_mut().read_to_string().ok())
                    .is_some_and(|b| b.contains("\"true\""))
        })
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..3 {
            self.kill_member(i);
        }
    }
}

/// A SIGSTOPped process, continued when this is dropped (also when the test fails).
struct Stopped(u32);

impl Stopped {
    fn new(pid: u32) -> Stopped {
        assert!(Command::new("kill").args(["-STOP", &pid.to_string()]).status().unwrap().success());
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.0.to_string()]).status();
    }
}

/// A Ved node; its stdout events are collected.
struct VedNode {
    name: String,
    child: Option<Child>,
    events: Arc<Mutex<Vec<(Instant, serde_json::Value)>>>,
}

impl VedNode {
    fn start(name: &str, program: &Path, config: &Path, etcd: &str, ttl: u32) -> VedNode {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ved"))
            .arg("run")
            .arg(program)
            .arg("--config")
            .arg(config)
            .args(["--cluster", etcd, "--node-id", name, "--lease-ttl", &ttl.to_string(), "--listen", "127.0.0.1:0"])
            .env("VED_API_TOKEN", API_TOKEN)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&l) {
                    // A node's own events (membership, ownership, errors); the engine's per-slice
                    // events would only fill memory here.
                    let engine = ["intent", "slice", "result", "converging", "waiting", "stable", "retry"];
                    if !engine.contains(&v["event"].as_str().unwrap_or("")) {
                        sink.lock().unwrap().push((Instant::now(), v));
                    }
                }
            }
        });
        VedNode { name: name.into(), child: Some(child), events }
    }

    /// The base URL of this node's HTTP API.
    fn url(&self) -> String {
        let ev = self.events.lock().unwrap();
        let addr = ev.iter().find(|(_, e)| e["event"] == "listening").map(|(_, e)| e["addr"].as_str().unwrap_or(""));
        format!("http://{}", addr.unwrap_or(""))
    }

    fn get(&self, path: &str) -> (u16, serde_json::Value) {
        http(&format!("{}{path}", self.url()), None)
    }

    /// Instances this node holds now, by its own account.
    fn holding(&self) -> Vec<String> {
        let mut held = BTreeMap::new();
        for (_, e) in self.events.lock().unwrap().iter() {
            let inst = e["instance"].as_str().unwrap_or("").to_string();
            match e["event"].as_str() {
                Some("acquired") => {
                    held.insert(inst, true);
                }
                Some("handed_over" | "fenced_out" | "stood_down") => {
                    held.remove(&inst);
                }
                _ => {}
            }
        }
        held.into_keys().collect()
    }

    fn signal(&mut self, sig: &str) {
        if let Some(c) = &self.child {
            Command::new("kill").args([sig, &c.id().to_string()]).status().unwrap();
        }
    }

    fn wait(&mut self) -> Option<i32> {
        self.child.take().and_then(|mut c| c.wait().ok()).and_then(|s| s.code())
    }
}

impl Drop for VedNode {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

const API_TOKEN: &str = "cluster-secret";

/// GET (or POST `body`, with the token) and the JSON answer.
/// A node's `GET /metrics`, parsed as Prometheus would.
fn node_metrics(n: &VedNode) -> prometheus_parse::Scrape {
    let agent: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(LOADED)).build().into();
    let text = agent.get(&format!("{}/metrics", n.url())).call().unwrap().body_mut().read_to_string().unwrap();
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap()
}

fn http(url: &str, body: Option<&str>) -> (u16, serde_json::Value) {
    let agent: ureq::Agent =
        ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(LOADED)).build().into();
    let r = match body {
        None => agent.get(url).call(),
        Some(b) => agent
            .post(url)
            .header("Content-Type", "application/json")
            .header("Authorization", &format!("Bearer {API_TOKEN}"))
            .send(b),
    };
    let mut r = r.unwrap_or_else(|e| panic!("{url}: {e}"));
    let status = r.status().as_u16();
    (status, serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap_or_default())
}

/// A beat seen by the webhook.
#[derive(Clone, Debug)]
struct Beat {
    instance: String,
    n: i64,
    fence: i64,
}

fn beats(hook: &Webhook) -> Vec<Beat> {
    hook.hits()
        .into_iter()
        // A request cut off by a SIGKILL mid-send is no beat (the receiver never answered it).
        .filter(|h| h.status == 200 && h.body.is_object())
        .map(|h| Beat {
            instance: h.body["instance"].as_str().unwrap_or("").to_string(),
            n: h.body["args"][0].as_i64().unwrap_or(-1),
            fence: h.body["fence"].as_i64().unwrap_or(-1),
        })
        .collect()
}

fn setup(tag: &str) -> (PathBuf, PathBuf, Webhook) {
    let dir = tempdir(&format!("cluster-{tag}"));
    let program = dir.join("beats.ved");
    let mut src = String::new();
    for i in 1..=INSTANCES {
        src.push_str(&format!(
            "domain Beat{i} {{\n  state {{ n: int }}\n  goal n == 1000000000\n  transition beat {{\n    step {{\n      if n < 1000000000 {{\n        emit Pulse.Beat(n)\n        n += 1\n      }}\n    }}\n  }}\n}}\n"
        ));
    }
    std::fs::write(&program, src).unwrap();
    let hook = Webhook::start(Vec::new());
    let config = dir.join("ved.toml");
    std::fs::write(
        &config,
        format!("[adapters.Pulse]\ndriver = \"http\"\nurl = \"{}\"\ntimeout_ms = 2000\n", hook.url),
    )
    .unwrap();
    (program, config, hook)
}

/// Per instance: beats are contiguous from 0 (duplicates allowed), and fencing tokens never go
/// back in the order the webhook saw them: no instance was ever run by two nodes at once.
fn check_history(all: &[Beat]) {
    let mut by: BTreeMap<&str, Vec<&Beat>> = BTreeMap::new();
    for b in all {
        by.entry(&b.instance).or_default().push(b);
    }
    let names: Vec<&&str> = by.keys().collect();
    assert_eq!(by.len(), INSTANCES, "every instance beat, and nothing else reached the webhook: {names:?}");
    for (inst, bs) in by {
        let mut seen: Vec<i64> = bs.iter().map(|b| b.n).collect();
        seen.sort();
        seen.dedup();
        let max = *seen.last().unwrap();
        assert_eq!(seen.len() as i64, max + 1, "{inst}: a beat was lost (saw {} distinct of 0..={max})", seen.len());
        for w in bs.windows(2) {
            assert!(
                w[1].fence >= w[0].fence,
                "{inst}: fence went back from {} to {}: two owners at once",
                w[0].fence,
                w[1].fence
            );
        }
    }
}

#[test]
fn a_killed_node_fails_over_within_the_ttl_and_etcd_member_loss_and_quorum_loss_are_survived() {
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let ttl = 2;
    let mut etcd = EtcdCluster::start("failover");
    let (program, config, hook) = setup("failover");
    let urls = etcd.urls();
    let mut nodes: Vec<VedNode> =
        ["a", "b", "c"].iter().map(|n| VedNode::start(n, &program, &config, &urls, ttl)).collect();
    wait_for("every instance to beat", LOADED, || {
        let b = beats(&hook);
        (1..=INSTANCES).all(|i| b.iter().filter(|x| x.instance == format!("Beat{i}")).count() >= 5)
    });
    // Steady state: throughput with three nodes.
    let before = beats(&hook).len();
    std::thread::sleep(Duration::from_secs(2));
    let rate = (beats(&hook).len() - before) as f64 / 2.0;
    eprintln!("steady state: {rate:.0} intents/s across {INSTANCES} instances on 3 nodes");
    // Only that beats flow: the rate itself depends on how busy the machine is.
    assert!(rate > 1.0, "{rate}");

    // SIGKILL a node that holds instances.
    let victim = nodes.iter().position(|n| !n.holding().is_empty()).expect("a node holds instances");
    let orphans = nodes[victim].holding();
    let last_fence: BTreeMap<String, i64> = orphans
        .iter()
        .map(|i| (i.clone(), beats(&hook).iter().filter(|b| &b.instance == i).map(|b| b.fence).max().unwrap_or(0)))
        .collect();
    let killed = Instant::now();
    nodes[victim].signal("-KILL");
    nodes[victim].wait();
    eprintln!("killed node {} holding {orphans:?}", nodes[victim].name);
    let mut worst = Duration::ZERO;
    for inst in &orphans {
        let took = wait_for(&format!("{inst} to resume on a survivor"), LOADED, || {
            beats(&hook).iter().any(|b| &b.instance == inst && b.fence > last_fence[inst])
        });
        worst = worst.max(took);
    }
    eprintln!("failover: every orphaned instance beat again within {} ms of the kill", worst.as_millis());
    // On a quiet machine this is the TTL plus about a second (the figure above). The bound is
    // loose so that a loaded machine does not fail it, and tight enough to catch a failover that
    // starved until the next resync (60 s), as one did before issue 13.
    assert!(
        killed.elapsed() >= worst && worst <= Duration::from_secs(30),
        "failover took {worst:?}; the TTL is {ttl} s"
    );
    check_history(&beats(&hook));

    // Kill one etcd member: everything continues.
    etcd.kill_member(0);
    let n0 = beats(&hook).len();
    wait_for("beats to continue with one etcd member down", LOADED, || beats(&hook).len() > n0 + 50);

    // Kill the quorum: the nodes stop acting once their leases may have lapsed.
    etcd.kill_member(1);
    let lost = Instant::now();
    std::thread::sleep(Duration::from_millis(ttl as u64 * 1000 + 1500));
    let quiet_from = beats(&hook).len();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(beats(&hook).len(), quiet_from, "nodes acted without quorum ({:?} after the loss)", lost.elapsed());
    // Quorum returns: they resume.
    etcd.start_member(0, "existing");
    etcd.start_member(1, "existing");
    wait_for("etcd to be healthy again", LOADED, || etcd.healthy());
    wait_for("beats to resume with quorum back", LOADED, || beats(&hook).len() > quiet_from + 50);
    check_history(&beats(&hook));
    drop(nodes);
}

#[test]
fn a_joining_node_takes_its_share_and_sigterm_hands_over_without_waiting_for_the_ttl() {
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    // A TTL far longer than a handover takes, even on a loaded machine: a handover that waited
    // for the lease to lapse would take all of it.
    let ttl = 60;
    let etcd = EtcdCluster::start("handover");
    let (program, config, hook) = setup("handover");
    let urls = etcd.urls();
    let mut a = VedNode::start("a", &program, &config, &urls, ttl);
    wait_for("node a to hold every instance", LOADED, || a.holding().len() == INSTANCES);
    // A node's /metrics are its own engine's: every instance it holds, and the time of each
    // fenced write to etcd.
    let metrics = node_metrics(&a);
    let held: f64 = metrics
        .samples
        .iter()
        .filter(|s| s.metric == "ved_instances")
        .map(|s| match s.value {
            prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum();
    assert_eq!(held, INSTANCES as f64);
    let writes = metrics.samples.iter().find(|s| s.metric == "ved_etcd_write_seconds").map(|s| match &s.value {
        prometheus_parse::Value::Histogram(b) => b.iter().map(|b| b.count).fold(0.0, f64::max),
        _ => 0.0,
    });
    assert!(writes.unwrap_or(0.0) >= 1.0, "no timed etcd write: {writes:?}");
    // A second node joins: instances rebalance onto it.
    let mut b = VedNode::start("b", &program, &config, &urls, ttl);
    wait_for("node b to take its share", LOADED, || !b.holding().is_empty());
    wait_for("the share to settle", LOADED, || a.holding().len() + b.holding().len() == INSTANCES);
    assert!(!a.holding().is_empty(), "node a kept its share");
    // SIGTERM on b: it writes, releases and leaves; a takes over long before the 15 s TTL.
    let moved = b.holding();
    let last: BTreeMap<String, i64> = moved
        .iter()
        .map(|i| (i.clone(), beats(&hook).iter().filter(|x| &x.instance == i).map(|x| x.fence).max().unwrap_or(0)))
        .collect();
    b.signal("-TERM");
    assert_eq!(b.wait(), Some(0), "a clean exit");
    let took = wait_for("node a to take b's instances back", LOADED, || {
        moved.iter().all(|i| beats(&hook).iter().any(|x| &x.instance == i && x.fence > last[i]))
    });
    eprintln!("graceful handover took {} ms (TTL {ttl} s)", took.as_millis());
    assert!(took < Duration::from_secs(ttl as u64 / 2), "{took:?}");
    wait_for("node a to report every instance", LOADED, || a.holding().len() == INSTANCES);
    check_history(&beats(&hook));
    a.signal("-TERM");
    assert_eq!(a.wait(), Some(0));
}

#[test]
fn an_unreachable_etcd_is_a_clear_error_at_start() {
    let (program, config, _hook) = setup("unreachable");
    let out = Command::new(env!("CARGO_BIN_EXE_ved"))
        .arg("run")
        .arg(&program)
        .arg("--config")
        .arg(&config)
        .args(["--cluster", "http://127.0.0.1:9", "--node-id", "x", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot join the cluster at http://127.0.0.1:9") && err.contains("= hint:"), "{err}");
    // --cluster needs a node id.
    let out = Command::new(env!("CARGO_BIN_EXE_ved"))
        .arg("run")
        .arg(&program)
        .args(["--cluster", "http://127.0.0.1:9"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "a usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--node-id"));
}

/// The node that alone holds instances now, waited for: during a handover both or neither may.
fn holder(nodes: &[VedNode]) -> usize {
    let mut found = 0;
    wait_for("one node to hold the routing", LOADED, || {
        let holding: Vec<usize> = (0..nodes.len()).filter(|i| !nodes[*i].holding().is_empty()).collect();
        found = holding.first().copied().unwrap_or(0);
        holding.len() == 1
    });
    found
}

#[test]
fn watched_observations_reach_the_owner_and_its_state_survives_a_failover() {
    // Seed 001 on two nodes: a probe (a command reading a file) feeds `primary_status`.
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let etcd = EtcdCluster::start("routing");
    let dir = tempdir("cluster-routing");
    let status = dir.join("status.json");
    std::fs::write(&status, r#"{"primary_status": "healthy"}"#).unwrap();
    let hook = Webhook::start(Vec::new());
    let config = dir.join("ved.toml");
    std::fs::write(
        &config,
        format!(
            "[adapters.Network]\ndriver = \"http\"\nurl = \"{u}\"\n\n[adapters.Alerts]\ndriver = \"http\"\nurl = \"{u}\"\n\n[[watch]]\nfields = [\"primary_status\"]\ndriver = \"exec\"\ncommand = [\"cat\", \"{s}\"]\ninterval_ms = 100\n",
            u = hook.url,
            s = status.display()
        ),
    )
    .unwrap();
    let program = common::root().join("examples/database_routing.ved");
    let urls = etcd.urls();
    let mut nodes: Vec<VedNode> = ["a", "b"].iter().map(|n| VedNode::start(n, &program, &config, &urls, 2)).collect();
    wait_for("a node to own the routing", LOADED, || nodes.iter().any(|n| !n.holding().is_empty()));
    let calls = |action: &str| -> Vec<(String, i64)> {
        hook.hits()
            .iter()
            .filter(|h| h.status == 200 && h.body["action"] == action)
            .map(|h| (h.body["args"][0].as_str().unwrap_or("").to_string(), h.body["fence"].as_i64().unwrap_or(-1)))
            .collect()
    };
    // The primary fails: the owner's probe sees it; DNS moves and one page goes out.
    std::fs::write(&status, r#"{"primary_status": "failed"}"#).unwrap();
    let took = wait_for("the failover", LOADED, || calls("UpdateDNS").iter().any(|(a, _)| a == "replica"));
    eprintln!("the failover took {took:?}");
    wait_for("the page", LOADED, || !calls("PageEngineers").is_empty());
    let first_fence = calls("UpdateDNS")[0].1;
    // Under load a lease can lapse and the routing move to the other node with no node dying
    // (fenced, as it should be): who owns it is asked again wherever it matters.
    let owner = holder(&nodes);
    let other = 1 - owner;
    // Every node serves the API: health, the list, and the instance (the other node forwards).
    for n in &nodes {
        assert_eq!(n.get("/healthz").0, 200, "{} is healthy", n.name);
    }
    wait_for("the failover episode to be audited", LOADED, || {
        nodes[other].get("/v1/audit").1["entries"].as_array().is_some_and(|e| !e.is_empty())
    });
    let (code, inst) = nodes[other].get("/v1/instances/DatabaseRouting");
    assert_eq!(code, 200, "{inst}");
    assert_eq!(inst["state"]["active_route"], "replica", "{inst}");
    assert!(inst["goals"].is_array(), "answered by the owner, forwarded: {inst}");
    wait_for("the list to name the node that holds the routing", LOADED, || {
        let (code, list) = nodes[other].get("/v1/instances");
        let owner = holder(&nodes);
        code == 200 && list["instances"][0]["owner"] == nodes[owner].name.as_str()
    });
    // A write to the node that does not own the instance is forwarded to the one that does:
    // someone points the route back at the failed primary, and Ved fails over again.
    let (code, body) = http(
        &format!("{}/v1/instances/DatabaseRouting/observations", nodes[other].url()),
        Some(r#"{"active_route": "primary"}"#),
    );
    assert_eq!(code, 200, "{body}");
    wait_for("the drift to be corrected", LOADED, || {
        let (_, i) = nodes[other].get("/v1/instances/DatabaseRouting");
        i["status"] == "stable" && i["state"]["active_route"] == "replica"
    });
    let (code, journal) = nodes[other].get("/v1/instances/DatabaseRouting/journal");
    assert_eq!(code, 200);
    let before: Vec<u64> = journal["entries"].as_array().unwrap().iter().filter_map(|e| e["slice"].as_u64()).collect();
    assert!(
        journal["entries"].as_array().unwrap().iter().any(|e| e["source"] == "api"),
        "the forwarded observation reached the owner's journal: {journal}"
    );
    let audit_before = nodes[other].get("/v1/audit").1["entries"].as_array().unwrap().clone();
    // No pause for the owner to record the page's acknowledgement: killed before that, the page
    // is in flight and rightly sent again (same id), which the check below allows. A pause here
    // made the verdict depend on how busy the machine was.
    // Kill the owner; the survivor resumes from etcd with the failover and the page remembered.
    let owner = holder(&nodes);
    nodes[owner].signal("-KILL");
    nodes[owner].wait();
    let survivor = 1 - owner;
    let took = wait_for("the survivor to take the routing", LOADED, || !nodes[survivor].holding().is_empty());
    eprintln!("the survivor took the routing after {took:?}");
    // The primary comes back: the survivor's probe sees it and restores the route.
    std::fs::write(&status, r#"{"primary_status": "healthy"}"#).unwrap();
    wait_for("the route to be restored", LOADED, || {
        calls("UpdateDNS").iter().any(|(a, f)| a == "primary" && *f > first_fence)
    });
    // At least once: a page whose acknowledgement had not reached etcd when its owner was killed
    // is rightly sent again by the survivor, with the same intent id. What must not happen is a
    // second page (another intent): the survivor knew the failover had paged already.
    let page_ids: std::collections::BTreeSet<String> = hook
        .hits()
        .iter()
        .filter(|h| h.status == 200 && h.body["action"] == "PageEngineers")
        .map(|h| h.body["id"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(page_ids.len(), 1, "the page was not sent again after the failover: {page_ids:?}");
    // The journal moved with the instance: the survivor shows the slices from before the kill.
    let (_, journal) = nodes[survivor].get("/v1/instances/DatabaseRouting/journal");
    let after: Vec<u64> = journal["entries"].as_array().unwrap().iter().filter_map(|e| e["slice"].as_u64()).collect();
    for s in &before {
        assert!(after.contains(s), "slice {s} from before the kill is in the survivor's journal: {after:?}");
    }
    // The audit chain goes on: the entries from before, then the restore's, linked by hash.
    wait_for("the restore to be audited", LOADED, || {
        nodes[survivor].get("/v1/audit").1["entries"].as_array().is_some_and(|e| e.len() > audit_before.len())
    });
    let audit_after = nodes[survivor].get("/v1/audit").1["entries"].as_array().unwrap().clone();
    assert_eq!(&audit_after[..audit_before.len()], &audit_before[..], "the chain kept what it had");
    let n = audit_before.len();
    assert_eq!(audit_after[n]["prev"], audit_before[n - 1]["hash"], "the survivor's entry links to the last one");
    let verify =
        Command::new(env!("CARGO_BIN_EXE_ved")).args(["audit", "verify", "--cluster", &urls]).output().unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stderr));
    let journal_cli = Command::new(env!("CARGO_BIN_EXE_ved"))
        .args(["journal", "--cluster", &urls, "DatabaseRouting"])
        .output()
        .unwrap();
    assert!(journal_cli.status.success());
    assert!(String::from_utf8_lossy(&journal_cli.stdout).contains("PageEngineers"), "ved journal --cluster");
    let inspect = Command::new(env!("CARGO_BIN_EXE_ved")).args(["inspect", "--cluster", &urls]).output().unwrap();
    assert!(String::from_utf8_lossy(&inspect.stdout).contains("DatabaseRouting (DatabaseRouting) at slice"));
    // `ved plan` against the cluster: what a changed program would do, acting on nothing.
    let changed = dir.join("routing_v2.ved");
    let text = std::fs::read_to_string(&program).unwrap();
    std::fs::write(
        &changed,
        text.replace("alert_sent: bool = false", "alert_sent: bool = false\nescalations: int = 0"),
    )
    .unwrap();
    let before = owner_keys(&ved_cluster::etcd::Etcd::new(etcd.urls_but(99), Duration::from_secs(2)));
    let plan = Command::new(env!("CARGO_BIN_EXE_ved"))
        .args(["plan", "--cluster", &urls, "--json"])
        .arg(&changed)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&plan.stdout);
    assert!(plan.status.success(), "{}", String::from_utf8_lossy(&plan.stderr));
    assert!(out.contains("escalations") && out.contains("DatabaseRouting"), "{out}");
    let after = owner_keys(&ved_cluster::etcd::Etcd::new(etcd.urls_but(99), Duration::from_secs(2)));
    assert_eq!(before, after, "planning moved nothing");
    let fences: Vec<i64> = hook.hits().iter().filter_map(|h| h.body["fence"].as_i64()).collect();
    assert!(fences.windows(2).all(|w| w[1] >= w[0]), "fencing tokens went back: {fences:?}");
}

/// The owner keys as etcd has them: instance -> (owner, creation revision = fencing token).
fn owner_keys(etcd: &ved_cluster::etcd::Etcd) -> Owners {
    etcd.get_prefix("/ved/owners/")
        .expect("etcd answers")
        .into_iter()
        .map(|kv| {
            (
                kv.key.trim_start_matches("/ved/owners/").to_string(),
                (String::from_utf8_lossy(&kv.value).into(), kv.create_revision),
            )
        })
        .collect()
}

/// Owner keys: instance -> (node, creation revision = fencing token).
type Owners = BTreeMap<String, (String, i64)>;

/// What stopping a member did.
struct StallOutcome {
    /// The longest pause of an instance's beats at the webhook while the member was stopped
    /// (from just before the stop to the SIGCONT).
    worst_pause: Duration,
    /// The same from the SIGCONT to a second later, while the member catches up.
    worst_pause_after: Duration,
    /// Events of nodes that changed what they hold (stood down, fenced out, acquired...).
    moves: Vec<serde_json::Value>,
    /// The owner keys before and after: instance -> (node, fencing token).
    owners: (Owners, Owners),
}

/// SIGSTOPs etcd member 0 (the first URL) for 6 s, then SIGCONTs it, and waits for beats to
/// go on.
fn stop_first_member(etcd: &EtcdCluster, nodes: &[VedNode], hook: &Webhook) -> StallOutcome {
    // Read etcd through the members that stay up.
    let observer = ved_cluster::etcd::Etcd::new(etcd.urls_but(0), Duration::from_secs(2));
    let owners = owner_keys(&observer);
    assert_eq!(owners.len(), INSTANCES, "{owners:?}");
    let events_before: Vec<usize> = nodes.iter().map(|n| n.events.lock().unwrap().len()).collect();
    // Moving the leadership pauses writes: let beats flow again before the stop.
    let n = beats(hook).len();
    wait_for("beats to flow before the stop", LOADED, || beats(hook).len() > n + 100);
    let stopped_at = Instant::now();
    let stopped = Stopped::new(etcd.pid(0));
    std::thread::sleep(Duration::from_secs(6));
    drop(stopped);
    let continued_at = Instant::now();
    let n = beats(hook).len();
    wait_for("beats to go on after SIGCONT", LOADED, || beats(hook).len() > n + 20);
    let mut moves = Vec::new();
    for (node, from) in nodes.iter().zip(events_before) {
        let ev = node.events.lock().unwrap();
        moves.extend(ev[from..].iter().map(|(_, e)| e.clone()).filter(|e| e["instance"].is_string()));
    }
    // The webhook's arrival times of each instance's beats.
    let hits = hook.hits();
    let longest_pause = |from: Instant, to: Instant| {
        let mut worst = Duration::ZERO;
        for i in 1..=INSTANCES {
            let name = format!("Beat{i}");
            let at: Vec<Instant> = hits
                .iter()
                .filter(|h| h.status == 200 && h.body["instance"] == name.as_str())
                .map(|h| h.at)
                .filter(|t| *t >= from && *t <= to)
                .collect();
            let gap = at.windows(2).map(|w| w[1].saturating_duration_since(w[0])).max().unwrap_or(Duration::MAX);
            worst = worst.max(gap);
        }
        worst
    };
    let worst_pause = longest_pause(stopped_at - Duration::from_millis(200), continued_at);
    let worst_pause_after = longest_pause(continued_at, continued_at + Duration::from_secs(1));
    StallOutcome { worst_pause, worst_pause_after, moves, owners: (owners, owner_keys(&observer)) }
}

/// Issue 11: a stopped etcd member (the first URL, the one every node tries first) stalls
/// nothing. Stopped as a follower: no node stands down or changes what it holds, every owner
/// key stays as it was (same fencing token), and no instance pauses for the stop's length (about
/// one balance period, 1 s, on a quiet machine; printed, and bounded at 5 s so that load does not
/// decide the verdict).
///
/// Stopped as the leader, writes wait for etcd to elect another leader, and etcd 3.4.23 (the
/// one installed here) then revokes every lease when the old leader resumes (etcd-io/etcd#15247),
/// so the nodes stand down and take their instances again: that part checks only that they
/// recover with one owner at a time.
#[test]
fn a_stopped_etcd_member_stalls_no_node_and_moves_no_instance() {
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let ttl = 2;
    let balance_period = Duration::from_secs(1);
    let etcd = EtcdCluster::start("stall");
    let (program, config, hook) = setup("stall");
    let urls = etcd.urls();
    let nodes: Vec<VedNode> = ["a", "b"].iter().map(|n| VedNode::start(n, &program, &config, &urls, ttl)).collect();
    let settled = || {
        let b = beats(&hook);
        nodes.iter().map(|n| n.holding().len()).sum::<usize>() == INSTANCES
            && (1..=INSTANCES).all(|i| b.iter().filter(|x| x.instance == format!("Beat{i}")).count() >= 5)
    };
    wait_for("every instance to be held and beat", LOADED, settled);
    etcd.move_leader(1);
    let f = stop_first_member(&etcd, &nodes, &hook);
    eprintln!(
        "first etcd member stopped for 6 s as a follower: longest pause of an instance {} ms ({} ms in the second after SIGCONT)",
        f.worst_pause.as_millis(),
        f.worst_pause_after.as_millis()
    );
    assert!(f.moves.is_empty(), "a node changed what it holds: {:?}", f.moves);
    assert_eq!(f.owners.0, f.owners.1, "an instance changed owner while a follower was stopped");
    // Within a balance period on a quiet machine (the figure above); a node that waited on the
    // stopped member would pause for the whole 6 s stop, so the bound allows for load and
    // still tells the two apart.
    assert!(
        f.worst_pause < 5 * balance_period,
        "an instance paused for {:?} while a follower was stopped",
        f.worst_pause
    );
    check_history(&beats(&hook));

    wait_for("etcd to be healthy again", LOADED, || etcd.healthy());
    etcd.move_leader(0);
    let l = stop_first_member(&etcd, &nodes, &hook);
    eprintln!(
        "first etcd member stopped for 6 s as the leader: longest pause of an instance {} ms, {} node events, owners {}",
        l.worst_pause.as_millis(),
        l.moves.len(),
        if l.owners.0 == l.owners.1 { "unchanged" } else { "changed" }
    );
    wait_for("every instance to be held and beat again", LOADED, settled);
    check_history(&beats(&hook));
    drop(nodes);
}

/// Instances created through any node's API are registered in etcd, spread over the nodes
/// and run; a deleted one stops, and its state leaves etcd.
#[test]
fn instances_created_through_the_api_are_distributed_and_deleted_cluster_wide() {
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let etcd = EtcdCluster::start("registry");
    let (program, config, hook) = setup("registry");
    let urls = etcd.urls();
    let nodes: Vec<VedNode> = ["a", "b"].iter().map(|n| VedNode::start(n, &program, &config, &urls, 2)).collect();
    wait_for("the nodes to share the program's instances", LOADED, || {
        nodes.iter().map(|n| n.holding().len()).sum::<usize>() == INSTANCES
            && nodes.iter().all(|n| !n.url().ends_with("//"))
    });
    let batch: Vec<String> = (0..10).map(|i| format!(r#"{{"name": "extra-{i}", "domain": "Beat1"}}"#)).collect();
    let (code, body) = http(&format!("{}/v1/instances", nodes[0].url()), Some(&format!("[{}]", batch.join(","))));
    assert_eq!(code, 201, "{body}");
    assert_eq!(body["created"], 10, "{body}");
    // A name that exists is refused, wherever it was created.
    let (code, _) =
        http(&format!("{}/v1/instances", nodes[1].url()), Some(r#"{"name": "extra-3", "domain": "Beat1"}"#));
    assert_eq!(code, 409);
    let beating = |name: &str| beats(&hook).iter().filter(|b| b.instance == name).count();
    wait_for("every created instance to beat", LOADED, || (0..10).all(|i| beating(&format!("extra-{i}")) >= 3));
    for n in &nodes {
        assert!(
            n.holding().iter().any(|i| i.starts_with("extra-")),
            "node {} runs some of them: {:?}",
            n.name,
            n.holding()
        );
    }
    // The list is etcd's, paged and filtered the same on every node.
    let mut seen = Vec::new();
    let mut after = String::new();
    loop {
        let q = if after.is_empty() { String::new() } else { format!("&after={after}") };
        let (code, page) = nodes[1].get(&format!("/v1/instances?domain=Beat1&limit=4{q}"));
        assert_eq!(code, 200, "{page}");
        let items = page["instances"].as_array().unwrap();
        assert!(items.len() <= 4);
        seen.extend(items.iter().map(|i| i["name"].as_str().unwrap().to_string()));
        match page["next"].as_str() {
            Some(n) => after = n.to_string(),
            None => break,
        }
    }
    let mut want: Vec<String> = (0..10).map(|i| format!("extra-{i}")).collect();
    want.push("Beat1".into());
    want.sort();
    assert_eq!(seen, want, "every Beat1 instance once, in name order");
    // A batch of observations to instances on both nodes: split by owner, each part applied there.
    let obs: Vec<String> = (0..10).map(|i| format!(r#"{{"instance": "extra-{i}", "set": {{"n": 0}}}}"#)).collect();
    let (code, body) = http(&format!("{}/v1/observations", nodes[0].url()), Some(&format!("[{}]", obs.join(","))));
    assert_eq!(code, 200, "{body}");
    let parts = body["parts"].as_array().expect("a part per owner");
    assert_eq!(parts.len(), 2, "{body}");
    assert!(parts.iter().all(|p| p["status"] == 200), "{body}");
    assert_eq!(parts.iter().map(|p| p["observations"].as_u64().unwrap()).sum::<u64>(), 10);
    // Deleted through the other node: it stops, and etcd forgets it.
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let r = agent
        .delete(&format!("{}/v1/instances/extra-3", nodes[1].url()))
        .header("Authorization", &format!("Bearer {API_TOKEN}"))
        .call()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let observer = ved_cluster::etcd::Etcd::new(etcd.urls_but(99), Duration::from_secs(2));
    wait_for("extra-3's state to leave etcd", LOADED, || {
        ved_cluster::read_state(&observer, "/ved", "extra-3")
            .is_ok_and(|s| s.snapshot.is_none() && s.journal.is_empty())
    });
    let after_delete = beating("extra-3");
    let others = beating("extra-4");
    wait_for("the others to go on", LOADED, || beating("extra-4") > others + 20);
    assert!(beating("extra-3") <= after_delete + 1, "a deleted instance kept beating");
    check_history(&beats(&hook).into_iter().filter(|b| !b.instance.starts_with("extra-")).collect::<Vec<_>>());
}
