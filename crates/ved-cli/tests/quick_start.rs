//! The README's first command, as a newcomer types it: the daemon on the worker-pool seed
//! against real processes, on the default store. It prints the live page's address; a
//! worker killed with `kill -9` comes back, as the quick start says.

mod common;

use common::{processes_running, tempdir, wait_for};
use serde_json::Value as Json;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(120);
const MEMBER: [&str; 2] = ["sleep", "86400.5"];

/// The daemon, killed however the test ends: left running, it would keep starting workers
/// under the next test's feet.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The arguments after `cargo run -q --` on the README's first line.
fn first_command() -> Vec<String> {
    let readme = std::fs::read_to_string(common::root().join("README.md")).unwrap();
    let first = readme.lines().skip_while(|l| !l.starts_with("```sh")).nth(1).unwrap();
    let cmd = first.split('#').next().unwrap().trim();
    let args = cmd.strip_prefix("cargo run -q -- ").unwrap_or_else(|| panic!("not a `cargo run` line: {cmd}"));
    args.split_whitespace().map(str::to_string).collect()
}

#[test]
fn the_readme_first_command_heals_a_real_pool_and_prints_the_page() {
    let args = first_command();
    assert_eq!(args[0], "run", "{args:?}");
    // Workers left by an earlier run would be counted as this pool's.
    drop(common::Members::of(&MEMBER));
    let _workers = common::Members::of(&MEMBER);
    let state = tempdir("quick-start");
    // As typed, with two changes a shared machine needs: any free port instead of 7410,
    // and the default store under a state directory of its own.
    let child = Command::new(env!("CARGO_BIN_EXE_ved"))
        .args(&args)
        .args(["--listen", "127.0.0.1:0"])
        .current_dir(common::root())
        .env("XDG_STATE_HOME", &state)
        .env_remove("VED_API_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut ved = Running(child);
    let mut lines = BufReader::new(ved.0.stdout.take().unwrap()).lines();
    let mut next = || -> Json { serde_json::from_str(&lines.next().expect("an event").unwrap()).unwrap() };
    // The default store, announced first; then where to look.
    let store = next();
    assert_eq!(store["event"], "store", "{store}");
    assert!(store["dir"].as_str().unwrap().starts_with(state.to_str().unwrap()), "{store}");
    let listening = loop {
        let e = next();
        if e["event"] == "listening" {
            break e;
        }
    };
    // The rest of the events are read as they come: an unread pipe would stall the daemon.
    std::thread::spawn(move || lines.for_each(drop));
    let page = listening["page"].as_str().unwrap().to_string();
    assert_eq!(page, format!("http://{}/", listening["addr"].as_str().unwrap()));
    let agent: ureq::Agent =
        ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(LIMIT)).build().into();
    let html = agent.get(&page).call().unwrap().body_mut().read_to_string().unwrap();
    assert!(html.contains("<title>Ved</title>"));
    let get = |path: &str| -> Json {
        let text = agent.get(&format!("{page}{path}")).call().unwrap().body_mut().read_to_string().unwrap();
        serde_json::from_str(&text).unwrap()
    };
    // Stable with nothing pending: every start has been confirmed (a worker that dies within
    // its first 2 s is a failed start, not a drift).
    wait_for("five real workers", LIMIT, || {
        let i = get("v1/instances/WorkerPool");
        i["status"] == "stable"
            && i["pending"].as_array().is_some_and(Vec::is_empty)
            && processes_running(&MEMBER).len() == 5
    });
    // The quick start: kill -9 a worker; Ved starts another.
    let victim = processes_running(&MEMBER)[0];
    assert!(Command::new("kill").args(["-9", &victim.to_string()]).status().unwrap().success());
    wait_for("the pool to heal", LIMIT, || {
        let now = processes_running(&MEMBER);
        now.len() == 5 && !now.contains(&victim) && get("v1/instances/WorkerPool")["status"] == "stable"
    });
    let journal = get("v1/instances/WorkerPool/journal");
    let drift = journal["entries"].as_array().unwrap().iter().any(|e| {
        e["cause"] == "observe"
            && e["changes"].as_array().is_some_and(|c| c.iter().any(|x| x[0] == "workers" && x[1] == "4"))
    });
    assert!(drift, "the watcher's reading of 4 is in the journal: {journal}");
    Command::new("kill").args(["-TERM", &ved.0.id().to_string()]).status().unwrap();
    assert!(ved.0.wait().unwrap().success());
}
