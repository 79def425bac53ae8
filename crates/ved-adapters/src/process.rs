//! The `process` driver and watcher: a pool of real OS processes.
//!
//! Members are processes whose command line is exactly the configured one,
//! whoever started them: Ved's own children and processes started by hand both
//! count. Actions:
//! - `Start()` or `Start(n)`: start one (or n) members;
//! - `Stop()` or `Stop(n)`: stop one (or n) members with SIGKILL, those not
//!   started by Ved first.
//!
//! Members outlive Ved: a stopped or crashed Ved leaves its workers running,
//! and a restarted one adopts them, because membership is the command line.
//!
//! The watcher reads `/proc` every 50 ms and reports the live count whenever it
//! changes. Actions and readings share a lock and report while holding it, so
//! an intent's result and a reading taken after it reach the runtime in that
//! order: a reading taken before an action can never be mistaken for its effect.

use crate::{Driver, Inbound, IntentRequest, Watcher};
use serde_json::json;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a started member may take to exec its command before the start counts as failed.
const EXEC_WAIT: Duration = Duration::from_secs(5);

/// How often the watcher reads `/proc`.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Members one action may start or stop.
const ACTION_COUNT_MAX: i64 = 1000;

pub struct Pool {
    pub command: Vec<String>,
    children: Mutex<Vec<Child>>,
}

impl Pool {
    pub fn new(command: Vec<String>) -> Arc<Pool> {
        Arc::new(Pool { command, children: Mutex::new(Vec::new()) })
    }

    /// Pids of every live process whose command line is the pool's.
    fn members(&self) -> Vec<u32> {
        let mut out = Vec::new();
        let Ok(dir) = std::fs::read_dir("/proc") else { return out };
        for entry in dir.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else { continue };
            // Zombies and kernel threads have an empty command line.
            let args: Vec<&[u8]> = raw.split(|b| *b == 0).filter(|a| !a.is_empty()).collect();
            if args.len() == self.command.len() && args.iter().zip(&self.command).all(|(a, c)| *a == c.as_bytes()) {
                out.push(pid);
            }
        }
        out.sort_unstable();
        out
    }

    fn reap(children: &mut Vec<Child>) {
        children.retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_))));
    }

    /// The live count, read under the pool's lock.
    pub fn count(&self) -> usize {
        let mut children = self.children.lock().unwrap_or_else(|p| p.into_inner());
        Pool::reap(&mut children);
        self.members().len()
    }

    fn act(&self, intent: &IntentRequest, children: &mut Vec<Child>) -> Result<(), String> {
        let n = match intent.args.first() {
            None => 1,
            Some(v) => v.as_i64().filter(|n| (0..=ACTION_COUNT_MAX).contains(n)).ok_or_else(|| {
                format!("{}.{} takes a count from 0 to {ACTION_COUNT_MAX}, got {v}", intent.adapter, intent.action)
            })?,
        };
        match intent.action.as_str() {
            "Start" => {
                let (prog, args) = self.command.split_first().ok_or("the pool's command is empty")?;
                let mut started = Vec::new();
                for _ in 0..n {
                    let child = Command::new(prog)
                        .args(args)
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .map_err(|e| format!("cannot start `{prog}`: {e}"))?;
                    started.push(child.id());
                    children.push(child);
                }
                // Wait until the new members are visible, so the next reading includes them:
                // between fork and exec a child still shows the parent's command line.
                let deadline = std::time::Instant::now() + EXEC_WAIT;
                loop {
                    let members = self.members();
                    if started.iter().all(|p| members.contains(p)) {
                        return Ok(());
                    }
                    for c in children.iter_mut().filter(|c| started.contains(&c.id())) {
                        if let Ok(Some(status)) = c.try_wait() {
                            return Err(format!("`{prog}` exited at once ({status})"));
                        }
                    }
                    if std::time::Instant::now() >= deadline {
                        return Err(format!("`{prog}` did not start within {} ms", EXEC_WAIT.as_millis()));
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            "Stop" => {
                let ours: Vec<u32> = children.iter().map(Child::id).collect();
                let mut members = self.members();
                // Strangers first: a member started by hand is the drift being corrected.
                members.sort_by_key(|pid| (ours.contains(pid), std::cmp::Reverse(*pid)));
                for pid in members.into_iter().take(n as usize) {
                    let ok = Command::new("kill").args(["-KILL", &pid.to_string()]).status().map(|s| s.success());
                    if !matches!(ok, Ok(true)) {
                        return Err(format!("could not stop process {pid}"));
                    }
                }
                // Reap our own, so they leave /proc before the next reading.
                for c in children.iter_mut() {
                    if !self.members().contains(&c.id()) {
                        let _ = c.wait();
                    }
                }
                Pool::reap(children);
                Ok(())
            }
            other => Err(format!("the process driver has no action `{other}`; it has `Start` and `Stop`")),
        }
    }
}

pub struct ProcessDriver {
    pub pool: Arc<Pool>,
}

impl ProcessDriver {
    /// Performs the intent and calls `report` with the outcome while still holding
    /// the pool's lock (see the module docs for why).
    pub fn deliver_and_report(&self, intent: &IntentRequest, report: &mut dyn FnMut(Result<(), String>)) {
        let mut children = self.pool.children.lock().unwrap_or_else(|p| p.into_inner());
        let r = self.pool.act(intent, &mut children);
        report(r);
    }
}

impl Driver for ProcessDriver {
    fn deliver(&self, intent: &IntentRequest) -> Result<(), String> {
        let mut children = self.pool.children.lock().unwrap_or_else(|p| p.into_inner());
        self.pool.act(intent, &mut children)
    }

    fn deliver_then(&self, intent: &IntentRequest, report: &mut dyn FnMut(Result<(), String>)) {
        self.deliver_and_report(intent, report);
    }
}

pub struct ProcessWatcher {
    pub pool: Arc<Pool>,
    pub instance: String,
    pub field: String,
    pub source: String,
}

impl Watcher for ProcessWatcher {
    fn run(self: Box<Self>, sink: Sender<Inbound>, stop: Arc<AtomicBool>, resync: Option<Duration>) {
        let mut reporter = crate::Reporter::new(&self.instance, &self.source, resync);
        while !stop.load(Ordering::Relaxed) {
            {
                // Read and report under the pool's lock (see the module's comment).
                let mut children = self.pool.children.lock().unwrap_or_else(|p| p.into_inner());
                Pool::reap(&mut children);
                let n = self.pool.members().len();
                if reporter.offer_one(&self.field, json!(n), &sink).is_err() {
                    return;
                }
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }
}
