//! How fast and how cheaply Ved heals its firewall. Not part of the normal test run:
//!
//! ```sh
//! cargo test --release -p ved-cli --test firewall_bench -- --ignored --nocapture
//! ```
//!
//! In a network namespace, a separate `nft monitor` (not Ved's) timestamps every change.
//! A heal is the time from the monitor's line for a rogue rule to its line for the rule's
//! removal. CPU per fix is the user+system time of ved and of its `nft` children (the
//! long-lived ones, read live from /proc, plus any reaped ones from cutime/cstime) over
//! the run, divided by the number of fixes. Two kinds of drift:
//! - structural (`tcp dport 20-30 accept`): the adapter removes it by itself;
//! - port drift (`tcp dport 22 accept`): the watcher reports port 22, the program emits
//!   `ClosePorts([22])`, durable in the store before it leaves (output commit), and the driver removes it.
//!
//! The baseline, measured in the same run in a second namespace without Ved, heals the
//! structural case the way the adapter did before: on the monitor's line, spawn
//! `nft -j -a list ruleset`, spawn `nft -f -` to delete the rule, spawn `nft -j -a list ruleset`
//! to confirm (three spawns of `ip netns exec NS nft`; the old adapter needed at least these).

mod common;

use common::{security_policy_in, tempdir, wait_for, Daemon, Netns};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

const FIXES: usize = 200;

impl Netns {
    /// A separate `nft monitor`: every line it prints, with the moment it arrived.
    fn monitor(&self) -> (std::process::Child, Receiver<(Instant, String)>) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.0, "nft", "-a", "monitor"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send((Instant::now(), l));
            }
        });
        (child, rx)
    }
}

fn ticks_per_second() -> f64 {
    let out = Command::new("getconf").arg("CLK_TCK").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(100.0)
}

/// (utime+stime, cutime+cstime) of a process, in clock ticks.
fn cpu_of(pid: u32) -> (u64, u64) {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return (0, 0) };
    // The command name may hold spaces; the fields start after its closing parenthesis.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<u64> = rest.split(' ').map(|x| x.parse().unwrap_or(0)).collect();
    // Fields 14 to 17 of stat(5), counted from `state` (field 3) here.
    (f[11] + f[12], f[13] + f[14])
}

/// CPU ticks of `pid` and every descendant, live or reaped.
fn cpu_tree(pid: u32) -> u64 {
    let (own, reaped) = cpu_of(pid);
    let mut total = own + reaped;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else { continue };
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let ppid: u32 = rest.split(' ').nth(1).and_then(|x| x.parse().ok()).unwrap_or(0);
        if ppid == pid {
            total += cpu_tree(child);
        }
    }
    total
}

/// Waits for a monitor line that satisfies `pred`; its arrival time.
fn next_line(rx: &Receiver<(Instant, String)>, pred: impl Fn(&str) -> bool) -> Instant {
    loop {
        let (at, l) = rx.recv_timeout(Duration::from_secs(30)).expect("a monitor line within 30 s");
        if pred(&l) {
            return at;
        }
    }
}

fn drain(rx: &Receiver<(Instant, String)>) {
    std::thread::sleep(Duration::from_millis(30));
    while rx.try_recv().is_ok() {}
}

struct Figures {
    heal_ms: Vec<f64>,
    cpu_ms_per_fix: f64,
    /// Of which ved's own process (the rest is its `nft` children).
    own_ms_per_fix: f64,
}

impl Figures {
    fn pct(&self, p: f64) -> f64 {
        let mut v = self.heal_ms.clone();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[((v.len() as f64 - 1.0) * p).round() as usize]
    }
    fn line(&self, what: &str) -> String {
        format!(
            "| {what} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            self.heal_ms.len(),
            self.pct(0.5),
            self.pct(0.9),
            self.pct(0.99),
            self.pct(1.0),
            self.cpu_ms_per_fix,
            self.own_ms_per_fix
        )
    }
}

/// Adds `rule` to Ved's chain `FIXES` times; each time waits for the monitor to show its removal.
fn heal_with_ved(ns: &Netns, ved_pid: u32, rule: &[&str], removed: impl Fn(&str) -> bool) -> Figures {
    let (mut mon, rx) = ns.monitor();
    drain(&rx);
    let tck = ticks_per_second();
    let cpu0 = cpu_tree(ved_pid);
    let own0 = cpu_of(ved_pid).0;
    let mut heal_ms = Vec::new();
    let mut args = vec!["add", "rule", "inet", "ved", "input"];
    args.extend_from_slice(rule);
    for _ in 0..FIXES {
        ns.nft(&args);
        let added = next_line(&rx, |l| l.starts_with("add rule inet ved input") && !removed(l));
        let gone = next_line(&rx, &removed);
        heal_ms.push(gone.duration_since(added).as_secs_f64() * 1000.0);
        // Let ved finish what follows a fix (re-reading its own change) inside the measured window.
        drain(&rx);
    }
    let cpu1 = cpu_tree(ved_pid);
    let own1 = cpu_of(ved_pid).0;
    let _ = mon.kill();
    let _ = mon.wait();
    let per_fix = |ticks: u64| ticks as f64 / tck * 1000.0 / FIXES as f64;
    Figures { heal_ms, cpu_ms_per_fix: per_fix(cpu1 - cpu0), own_ms_per_fix: per_fix(own1 - own0) }
}

/// The spawn-per-change baseline: the bench heals `tcp dport 20-30 accept` itself with `nft` spawns.
fn heal_by_spawning(ns: &Netns) -> Figures {
    ns.nft(&["add", "table", "inet", "base"]);
    ns.nft(&["add", "chain", "inet", "base", "input", "{ type filter hook input priority 0 ; policy drop ; }"]);
    let (mut mon, rx) = ns.monitor();
    drain(&rx);
    let nft = |args: &[&str], input: &str| -> String {
        let mut c = Command::new("ip")
            .args(["netns", "exec", &ns.0, "nft"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // The bench's reaped children (every `nft` it spawned), in seconds.
    let tck = ticks_per_second();
    let usage = || cpu_of(std::process::id()).1 as f64 / tck;
    let before = usage();
    let mut heal_ms = Vec::new();
    for _ in 0..FIXES {
        ns.nft(&["add", "rule", "inet", "base", "input", "tcp", "dport", "20-30", "accept"]);
        let added = next_line(&rx, |l| l.starts_with("add rule inet base input"));
        let doc: serde_json::Value = serde_json::from_str(&nft(&["-j", "-a", "list", "ruleset"], "")).unwrap();
        let handle = doc["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|i| i.get("rule"))
            .find(|r| r["table"] == "base")
            .and_then(|r| r["handle"].as_u64())
            .unwrap();
        nft(&["-f", "-"], &format!("delete rule inet base input handle {handle}\n"));
        let gone = next_line(&rx, |l| l.starts_with("delete rule inet base input"));
        nft(&["-j", "-a", "list", "ruleset"], "");
        heal_ms.push(gone.duration_since(added).as_secs_f64() * 1000.0);
        drain(&rx);
    }
    let after = usage();
    let _ = mon.kill();
    let _ = mon.wait();
    // The `ns.nft(add ...)` spawns that inject the drift are counted too; subtract them by
    // measuring as many of them alone.
    let inject_before = usage();
    for _ in 0..FIXES {
        ns.nft(&["list", "tables"]);
    }
    let inject_after = usage();
    let cpu = (after - before) - (inject_after - inject_before);
    Figures { heal_ms, cpu_ms_per_fix: cpu.max(0.0) * 1000.0 / FIXES as f64, own_ms_per_fix: 0.0 }
}

#[test]
#[ignore = "a benchmark: cargo test --release -p ved-cli --test firewall_bench -- --ignored --nocapture"]
fn heal_latency_and_cpu_per_fix() {
    let base_ns = Netns::new("fwbase");
    let baseline = heal_by_spawning(&base_ns);

    let ns = Netns::new("fwbench");
    let dir = tempdir("fwbench");
    let d = security_policy_in(&ns.0, &dir, "");
    let stable = |d: &Daemon| d.get("/v1/instances/SecurityPolicy").1["status"] == "stable";
    wait_for("stable", Duration::from_secs(30), || stable(&d));
    let pid = d.child.id();
    let structural =
        heal_with_ved(&ns, pid, &["tcp", "dport", "20-30", "accept"], |l| l.starts_with("delete rule inet ved input"));
    wait_for("stable", Duration::from_secs(30), || stable(&d));
    let port =
        heal_with_ved(&ns, pid, &["tcp", "dport", "22", "accept"], |l| l.starts_with("delete rule inet ved input"));
    wait_for("stable", Duration::from_secs(30), || stable(&d));

    println!("| heal | fixes | p50 ms | p90 ms | p99 ms | max ms | CPU ms per fix | of which ved itself |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    println!("{}", baseline.line("baseline: spawn `nft` per step (list, `-f` delete, list)"));
    println!("{}", structural.line("Ved, structural (`tcp dport 20-30 accept`, adapter repair)"));
    println!("{}", port.line("Ved, port drift (`tcp dport 22 accept`, program's `ClosePorts`)"));
    println!(
        "ratios against the baseline: structural p50 {:.1}x faster, p99 {:.1}x, CPU {:.1}x less; port drift p50 {:.1}x, CPU {:.1}x less",
        baseline.pct(0.5) / structural.pct(0.5),
        baseline.pct(0.99) / structural.pct(0.99),
        baseline.cpu_ms_per_fix / structural.cpu_ms_per_fix.max(1e-9),
        baseline.pct(0.5) / port.pct(0.5),
        baseline.cpu_ms_per_fix / port.cpu_ms_per_fix.max(1e-9),
    );
    assert_eq!(d.terminate().0, 0);
}
