//! Adapters against the real thing: processes, commands, HTTP; and `ved.toml` checks.

mod common;

use serde_json::Value as Json;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ved-adapters-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn ved(args: &[&str], input: &str) -> (i32, Vec<Json>, String) {
    common::ved_events(args, input)
}

use common::processes_running as members;

use common::wait_for;

struct Daemon {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Daemon {
    fn start(program: &Path, config: &Path) -> Daemon {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ved"))
            .arg("run")
            .arg(program)
            .arg("--config")
            .arg(config)
            .arg("--stdin")
            .arg("--ephemeral")
            .current_dir(root())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        Daemon { child, lines: rx }
    }

    fn stop(mut self) -> (Vec<String>, String) {
        drop(self.child.stdin.take());
        let status = self.child.wait().unwrap();
        let mut err = String::new();
        let _ = self.child.stderr.take().unwrap().read_to_string(&mut err);
        assert!(status.success(), "ved run failed: {err}");
        (self.lines.try_iter().collect(), err)
    }
}

#[test]
fn the_worker_pool_keeps_exactly_five_real_processes() {
    let dir = tempdir("pool");
    // A command line no other test uses, so the count is ours alone.
    let secs = format!("86400.{}", std::process::id());
    let argv = ["sleep", secs.as_str()];
    let config = dir.join("ved.toml");
    let toml = std::fs::read_to_string(root().join("examples/demo/worker_pool/ved.toml")).unwrap();
    std::fs::write(&config, toml.replace("86400.5", &secs)).unwrap();
    let program = root().join("examples/demo/worker_pool/worker_pool.ved");
    let daemon = Daemon::start(&program, &config);

    wait_for("the pool to reach 5", Duration::from_secs(120), || members(&argv).len() == 5);

    // Two workers crash.
    let pids = members(&argv);
    for pid in &pids[..2] {
        Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
    }
    wait_for("the pool to heal after two kills", Duration::from_secs(120), || {
        let m = members(&argv);
        m.len() == 5 && !m.contains(&pids[0]) && !m.contains(&pids[1])
    });

    // A junior engineer starts three by hand.
    let mut rogue: Vec<Child> = (0..3).map(|_| Command::new("sleep").arg(&secs).spawn().unwrap()).collect();
    let rogue_pids: Vec<u32> = rogue.iter().map(Child::id).collect();
    wait_for("the three hand-started processes to be stopped", Duration::from_secs(120), || {
        for r in rogue.iter_mut() {
            let _ = r.try_wait();
        }
        let m = members(&argv);
        m.len() == 5 && rogue_pids.iter().all(|p| !m.contains(p))
    });
    // It stays at five: no overshoot while things settle.
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(members(&argv).len(), 5);
    }
    let (events, _) = daemon.stop();
    let stops = events.iter().filter(|l| l.contains("\"action\":\"Stop\"")).count();
    let starts = events.iter().filter(|l| l.contains("\"action\":\"Start\"")).count();
    assert_eq!(stops, 3, "one Stop per rogue process: {events:#?}");
    assert_eq!(starts, 7, "five at boot, two after the crash");
    // The pool outlives Ved (a restarted Ved adopts it); clean up.
    assert_eq!(members(&argv).len(), 5);
    for pid in members(&argv) {
        Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
    }
}

#[test]
fn exec_passes_the_intent_as_json_and_reports_failures_with_stderr() {
    let dir = tempdir("exec");
    let log = dir.join("intents.jsonl");
    let script = dir.join("firewall.sh");
    // Records each intent; fails the first time it sees port 22 with a message on stderr.
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nread -r line\necho \"$line\" >> {log}\nif echo \"$line\" | grep -q '\\[22\\]' && [ ! -e {flag} ]; then touch {flag}; echo 'iptables: resource busy' >&2; exit 3; fi\nexit 0\n",
            log = log.display(),
            flag = dir.join("failed-once").display()
        ),
    )
    .unwrap();
    Command::new("chmod").args(["+x", script.to_str().unwrap()]).status().unwrap();
    let config = dir.join("ved.toml");
    std::fs::write(
        &config,
        format!("[adapters.Firewall]\ndriver = \"exec\"\ncommand = [\"{}\"]\ntimeout_ms = 5000\n\n[retry]\ninitial_ms = 10\ncap_ms = 100\n", script.display()),
    )
    .unwrap();
    let input = "{\"instance\":\"SecurityPolicy\",\"set\":{\"actual_ports\":[80,443,22]}}\n{\"advance_ms\":1000}\n";
    // `advance_ms` drives retries in simulated time, but the exec driver answers in real time:
    // give the daemon a moment by sending the advance after the first result.
    let mut child = Command::new(env!("CARGO_BIN_EXE_ved"))
        .args(["run", "examples/security_policy.ved", "--stdin", "--config", config.to_str().unwrap()])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = input.lines();
    stdin.write_all(format!("{}\n", lines.next().unwrap()).as_bytes()).unwrap();
    stdin.flush().unwrap();
    let out = child.stdout.take().unwrap();
    let mut reader = BufReader::new(out);
    let mut events: Vec<Json> = Vec::new();
    let mut line = String::new();
    // Read until the failed result arrives, then let time pass so the retry runs.
    while reader.read_line(&mut line).unwrap() > 0 {
        let e: Json = serde_json::from_str(&line).unwrap();
        line.clear();
        let failed = e["event"] == "result" && e["ok"] == false;
        events.push(e);
        if failed {
            stdin.write_all(format!("{}\n", lines.next().unwrap()).as_bytes()).unwrap();
            drop(stdin);
            break;
        }
    }
    for l in reader.lines().map_while(Result::ok) {
        events.push(serde_json::from_str(&l).unwrap());
    }
    assert!(child.wait().unwrap().success());
    let failure = events.iter().find(|e| e["event"] == "result" && e["ok"] == false).expect("a failed result");
    let reason = failure["error"].as_str().unwrap();
    assert!(reason.contains("exit status 3") && reason.contains("iptables: resource busy"), "{reason}");
    assert!(events.iter().any(|e| e["event"] == "retry"));
    assert_eq!(events.last().unwrap()["event"], "stable", "{events:?}");
    // The command saw the intents as JSON on stdin: id, adapter, action, args.
    let seen: Vec<Json> =
        std::fs::read_to_string(&log).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let closes: Vec<&Json> = seen.iter().filter(|i| i["action"] == "ClosePorts").collect();
    assert_eq!(closes.len(), 2, "{seen:?}");
    assert_eq!(closes[0]["args"], serde_json::json!([[22]]));
    assert_eq!(closes[0]["adapter"], "Firewall");
    assert_eq!(closes[0]["instance"], "SecurityPolicy");
    assert_ne!(closes[0]["id"], closes[1]["id"], "a retry is a new slice, so a new id");
    // The command's stderr is in the journal, with the failed result.
    let data = dir.join("data");
    let (code, text, err) = common::ved_text(&["journal", "--data-dir", data.to_str().unwrap(), "SecurityPolicy"], "");
    assert_eq!(code, 0, "{err}");
    assert!(text.contains("failed: `") && text.contains("exit status 3: iptables: resource busy"), "{text}");
}

#[test]
fn exec_kills_a_command_that_outlives_its_timeout() {
    let start = Instant::now();
    // The command would sleep ten minutes: returning at all, long before, shows it was killed.
    let r = ved_adapters::exec::run_command(&["sleep".into(), "600".into()], b"", Duration::from_millis(200));
    let err = r.unwrap_err();
    assert_eq!(err.kind, ved_adapters::ActionErrorKind::Timeout);
    let err = err.to_string();
    assert!(err.contains("timed out after 200 ms"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(300));
}

#[test]
fn http_posts_the_intent_with_its_idempotency_key_and_treats_non_2xx_as_failure() {
    let hook = common::Webhook::start(vec![500, 204]);
    let d = ved_adapters::http::HttpDriver::new(hook.url.clone(), Duration::from_secs(5));
    let intent = ved_adapters::IntentRequest {
        id: "DatabaseRouting/3/0".into(),
        instance: "DatabaseRouting".into(),
        adapter: "Alerts".into(),
        action: "PageEngineers".into(),
        args: vec![Json::String("Primary DB Down".into())],
        fence: None,
    };
    use ved_adapters::Actuator;
    let err = d.deliver(&intent).unwrap_err();
    assert_eq!(err.kind, ved_adapters::ActionErrorKind::Failed);
    assert!(err.to_string().contains("500"), "{err}");
    d.deliver(&intent).unwrap();
    let hits = hook.hits();
    assert_eq!(hits.iter().map(|h| h.status).collect::<Vec<_>>(), vec![500, 204]);
    assert!(hits.iter().all(|h| h.key == "DatabaseRouting/3/0"), "the same key on a repeat: {hits:?}");
    assert_eq!(hits[1].body["action"], "PageEngineers");
    assert_eq!(hits[1].body["args"][0], "Primary DB Down");
    // An unreachable endpoint is a failure with a reason, not a hang.
    let d = ved_adapters::http::HttpDriver::new("http://127.0.0.1:9/x".into(), Duration::from_secs(2));
    let err = d.deliver(&intent).unwrap_err();
    assert_eq!(err.kind, ved_adapters::ActionErrorKind::Unavailable);
    assert!(err.to_string().contains("POST http://127.0.0.1:9/x"), "{err}");
}

#[test]
fn check_config_reports_unbound_emits_unknown_drivers_and_bad_watchers_with_locations() {
    let dir = tempdir("config");
    let config = dir.join("ved.toml");
    std::fs::write(
        &config,
        "[adapters.Network]\ndriver = \"dns\"\n\n[[watch]]\nfields = [\"primary\"]\ndriver = \"exec\"\ncommand = [\"./probe\"]\n\n[[watch]]\nfields = [\"alert_sent\"]\ndriver = \"process\"\nadapter = \"Network\"\n",
    )
    .unwrap();
    let c = config.to_str().unwrap();
    let (code, _, err) = ved(&["check", "examples/database_routing.ved", "--config", c], "");
    assert_eq!(code, 1, "{err}");
    // An unknown driver, at its value in ved.toml.
    assert!(err.contains(&format!("{c}:2:10: error: unknown driver `dns` for adapter `Network`")), "{err}");
    // An emit whose adapter is not bound, at the emit in the program.
    assert!(err.contains("examples/database_routing.ved:28:1: error: `emit Alerts.PageEngineers`: adapter `Alerts` is not bound to a driver"), "{err}");
    // A watched field that does not exist, and one of the wrong type.
    assert!(err.contains(&format!("{c}:5:11: error: `DatabaseRouting` has no field `primary`")), "{err}");
    assert!(err.contains("= hint: its fields are `primary_status`, `active_route`, `alert_sent`"), "{err}");
    assert!(
        err.contains(&format!("{c}:10:11: error: field `alert_sent` is `bool`, but a `process` watcher reports int")),
        "{err}"
    );
    // Syntax errors and unknown keys are located too.
    std::fs::write(&config, "[adapters.Alerts]\ndriver = \"http\"\nurl = \"http://x\"\ntimeout = 5\n").unwrap();
    let (code, _, err) = ved(&["check", "examples/database_routing.ved", "--config", c], "");
    assert_eq!(code, 1);
    assert!(err.contains(&format!("{c}:4:1: error: invalid ved.toml: unknown field `timeout`")), "{err}");
}

#[test]
fn check_config_requires_a_watcher_to_name_an_adapter_of_its_own_driver() {
    let dir = tempdir("config-kind");
    let config = dir.join("ved.toml");
    std::fs::write(
        &config,
        "[adapters.Firewall]\ndriver = \"exec\"\ncommand = [\"true\"]\n\n[[watch]]\nfields = [\"actual_ports\"]\ndriver = \"nftables\"\nadapter = \"Firewall\"\n\n[[watch]]\nfields = [\"desired_ports\"]\ndriver = \"nftables\"\n",
    )
    .unwrap();
    let c = config.to_str().unwrap();
    let (code, _, err) = ved(&["check", "examples/security_policy.ved", "--config", c], "");
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "{c}:8:11: error: a `nftables` watcher needs a `nftables` adapter; `Firewall` uses `exec`"
        )),
        "{err}"
    );
    assert!(err.contains("error: a `nftables` watcher needs `adapter = \"NAME\"`"), "{err}");
    // The demo configuration is valid.
    let (code, _, err) =
        ved(&["check", "examples/security_policy.ved", "--config", "examples/demo/security_policy/ved.toml"], "");
    assert_eq!(code, 0, "{err}");
}

#[test]
fn a_stale_observation_is_dropped_and_reported() {
    let input = [
        r#"{"instance":"WorkerPool","set":{"workers":4},"source":"alerts","version":7}"#,
        r#"{"instance":"WorkerPool","set":{"workers":4},"source":"alerts","version":6}"#,
        r#"{"instance":"WorkerPool","set":{"workers":4},"source":"other","version":1}"#,
    ]
    .join("\n");
    let (code, ev, err) = ved(&["run", "examples/worker_pool.ved", "--stdin", "--ephemeral"], &input);
    assert_eq!(code, 0, "{err}");
    let stale: Vec<&Json> = ev.iter().filter(|e| e["event"] == "stale").collect();
    assert_eq!(stale.len(), 1, "{ev:?}");
    assert_eq!(stale[0]["version"], 6);
    assert_eq!(stale[0]["last"], 7);
    // Version 7 and the other source's reading were applied: two repairs, not three.
    let ups = ev.iter().filter(|e| e["cause"]["transition"] == "scale_up").count();
    assert_eq!(ups, 5 + 1 + 1);
}

#[test]
fn repeated_failures_open_the_breaker_and_report_degraded() {
    let dir = tempdir("breaker");
    let config = dir.join("ved.toml");
    std::fs::write(
        &config,
        "[adapters.Network]\ndriver = \"sim\"\n\n[adapters.Alerts]\ndriver = \"sim\"\nfail = { PageEngineers = 6 }\n\n[retry]\ninitial_ms = 100\nfactor = 2\ncap_ms = 10000\nbreaker_after = 3\n",
    )
    .unwrap();
    let mut input = String::from("{\"instance\":\"DatabaseRouting\",\"set\":{\"primary_status\":\"failed\"}}\n");
    for _ in 0..12 {
        input.push_str("{\"advance_ms\":5000}\n");
    }
    let c = config.to_str().unwrap();
    // Delivery is asynchronous; feed the advances slowly enough for each result to come back.
    let mut child = Command::new(env!("CARGO_BIN_EXE_ved"))
        .args(["run", "examples/database_routing.ved", "--stdin", "--ephemeral", "--config", c])
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for l in input.lines() {
        stdin.write_all(format!("{l}\n").as_bytes()).unwrap();
        stdin.flush().unwrap();
        std::thread::sleep(Duration::from_millis(60));
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let ev: Vec<Json> =
        String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let degraded = ev.iter().find(|e| e["event"] == "degraded").unwrap_or_else(|| panic!("{ev:?}"));
    assert!(degraded["reason"].as_str().unwrap().contains("TriggerPagerDuty failed 3 times in a row"), "{degraded}");
    // Past the threshold, retries come at the cap interval.
    let retries: Vec<(u64, u64)> = ev
        .iter()
        .filter(|e| e["event"] == "retry" && e["transition"] == "TriggerPagerDuty")
        .map(|e| (e["attempt"].as_u64().unwrap(), e["due_ms"].as_u64().unwrap()))
        .collect();
    let probes: Vec<u64> = retries.iter().filter(|(a, _)| *a >= 3).map(|(_, at)| *at).collect();
    assert!(probes.len() >= 2, "{retries:?}");
    for w in probes.windows(2) {
        assert!(w[1] - w[0] >= 10_000, "probes closer than the cap: {retries:?}");
    }
    // Paging finally succeeds after the sixth failure, and the instance is stable again.
    assert_eq!(ev.last().unwrap()["event"], "stable", "{ev:?}");
}

#[test]
fn check_config_locates_a_bad_nftables_base_rule() {
    let dir = tempdir("config-base-rules");
    let config = dir.join("ved.toml");
    std::fs::write(
        &config,
        "[adapters.Firewall]\ndriver = \"nftables\"\ntable = \"ved\"\nchain = \"input\"\nbase_rules = [\n  \"icmp type echo-request accept\",\n  \"tcp dport 22 accept\",\n]\n",
    )
    .unwrap();
    let c = config.to_str().unwrap();
    let (code, _, err) = ved(&["check", "examples/security_policy.ved", "--config", c], "");
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&format!("{c}:7:3: error: base rule `tcp dport 22 accept` is a port rule")), "{err}");
    assert!(err.contains("ports are opened by the program"), "{err}");
}
