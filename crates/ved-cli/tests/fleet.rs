//! Issue 12, point 1: instances declared in `ved.toml`, each with its own adapter
//! overrides, on real systems. `examples/fleet/ved.toml` runs two `SecurityPolicy`
//! instances, each enforced in its own network namespace, and two worker pools with
//! different commands; watchers declared once per domain follow each instance's
//! overrides. `ved check --config` validates the declarations with locations.

mod common;

use common::{processes_running, root, tempdir, wait_for, Daemon, Netns};
use std::process::Command;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(120);

/// The example, pointed at this test's namespaces and at command lines no other test uses.
fn fleet_config(dir: &std::path::Path, a: &Netns, b: &Netns, pool_a: &str, pool_b: &str) -> std::path::PathBuf {
    let toml = std::fs::read_to_string(root().join("examples/fleet/ved.toml")).unwrap();
    let toml = toml
        .replace("\"ved-fleet-a\"", &format!("\"{}\"", a.0))
        .replace("\"ved-fleet-b\"", &format!("\"{}\"", b.0))
        .replace("\"86400.31\"", &format!("\"{pool_a}\""))
        .replace("\"86400.32\"", &format!("\"{pool_b}\""));
    let path = dir.join("ved.toml");
    std::fs::write(&path, toml).unwrap();
    path
}

fn ports(ns: &Netns) -> Vec<u16> {
    let chain = ns.nft(&["list", "chain", "inet", "ved", "input"]);
    let mut out: Vec<u16> = chain
        .lines()
        .filter_map(|l| l.trim().strip_prefix("tcp dport ")?.strip_suffix(" accept")?.parse().ok())
        .collect();
    out.sort();
    out
}

fn chain_exists(ns: &Netns) -> bool {
    let out =
        Command::new("ip").args(["netns", "exec", &ns.0, "nft", "list", "chain", "inet", "ved", "input"]).output();
    out.is_ok_and(|o| o.status.success())
}

#[test]
fn declared_instances_run_on_their_own_namespaces_and_commands() {
    let dir = tempdir("fleet");
    let (a, b) = (Netns::new("fla"), Netns::new("flb"));
    let pid = std::process::id();
    let (pool_a, pool_b) = (format!("86400.31{pid}"), format!("86400.32{pid}"));
    let config = fleet_config(&dir, &a, &b, &pool_a, &pool_b);
    let data = dir.join("data");
    let d = Daemon::start(
        &[
            "examples/security_policy.ved",
            "examples/demo/worker_pool/worker_pool.ved",
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ],
        None,
    );
    let members = |secs: &str| processes_running(&["sleep", secs]).len();
    let status = |name: &str| d.get(&format!("/v1/instances/{name}")).1["status"].as_str().unwrap_or("").to_string();
    wait_for("every declared instance to be stable", DEADLINE, || {
        ["edge-a", "edge-b", "pool-a", "pool-b"].iter().all(|n| status(n) == "stable")
    });
    // Each firewall is its own instance's: its own namespace, its own ports.
    assert_eq!(ports(&a), vec![80, 443], "edge-a keeps the default ports");
    assert_eq!(ports(&b), vec![443, 8443], "edge-b's declared state");
    // Each pool runs its own command, five of each.
    assert_eq!(members(&pool_a), 5);
    assert_eq!(members(&pool_b), 5);
    // The declared instances replace the ones named after their domains.
    let (_, list) = d.get("/v1/instances");
    let mut names: Vec<&str> =
        list["instances"].as_array().unwrap().iter().filter_map(|i| i["name"].as_str()).collect();
    names.sort();
    assert_eq!(names, vec!["edge-a", "edge-b", "pool-a", "pool-b"]);

    // Chaos on one instance's resources heals that instance alone.
    a.nft(&["add", "rule", "inet", "ved", "input", "tcp", "dport", "22", "accept"]);
    let victims = processes_running(&["sleep", &pool_b]);
    for pid in &victims[..2] {
        Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
    }
    wait_for("edge-a to close port 22", DEADLINE, || ports(&a) == vec![80, 443]);
    wait_for("pool-b to heal", DEADLINE, || {
        let m = processes_running(&["sleep", &pool_b]);
        m.len() == 5 && !m.contains(&victims[0]) && !m.contains(&victims[1])
    });
    assert_eq!(ports(&b), vec![443, 8443], "edge-b untouched");
    assert_eq!(members(&pool_a), 5, "pool-a untouched");
    let (_, journal) = d.get("/v1/instances/edge-a/journal");
    assert!(journal.to_string().contains("ClosePorts([22])"), "edge-a closed the rogue port: {journal}");
    let (_, journal) = d.get("/v1/instances/edge-b/journal");
    assert!(!journal.to_string().contains("ClosePorts"), "edge-b did nothing: {journal}");

    let (code, _) = d.terminate();
    assert_eq!(code, 0);
    for secs in [&pool_a, &pool_b] {
        for pid in processes_running(&["sleep", secs]) {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
    }
    assert!(chain_exists(&a) && chain_exists(&b));
}

#[test]
fn check_config_locates_bad_instance_declarations() {
    let dir = tempdir("fleet-check");
    let config = dir.join("ved.toml");
    std::fs::write(
        &config,
        "[adapters.Firewall]\ndriver = \"nftables\"\ntable = \"ved\"\nchain = \"input\"\n\n\
         [[instance]]\nname = \"a/b\"\ndomain = \"SecurityPolicy\"\n\n\
         [[instance]]\nname = \"x\"\ndomain = \"Nope\"\n\n\
         [[instance]]\nname = \"y\"\ndomain = \"SecurityPolicy\"\nstate = { desired_ports = \"80\", color = 1 }\n\
         [instance.adapters.Firewall]\nurl = \"http://x\"\n\n\
         [[instance]]\nname = \"y\"\ndomain = \"SecurityPolicy\"\n",
    )
    .unwrap();
    let c = config.to_str().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ved"))
        .args(["check", "examples/security_policy.ved", "--config", c])
        .current_dir(root())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("{c}:7:8: error: `a/b` is not a valid instance name")), "{err}");
    assert!(err.contains(&format!("{c}:12:10: error: no domain named `Nope`")), "{err}");
    assert!(
        err.contains(&format!(
            "{c}:17:27: error: field `desired_ports`: expected an array (`list<int>`), found the string \"80\""
        )),
        "{err}"
    );
    assert!(err.contains(&format!("{c}:17:33: error: `SecurityPolicy` has no field `color`")), "{err}");
    assert!(
        err.contains(&format!("{c}:19:7: error: `url` does not apply to adapter `Firewall` (driver `nftables`)")),
        "{err}"
    );
    assert!(err.contains(&format!("{c}:22:8: error: instance `y` is declared twice")), "{err}");
}
