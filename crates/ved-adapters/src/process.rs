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
//! Each member Ved starts leads a process group of its own, so a Ctrl-C aimed
//! at Ved does not reach it, and `Stop` ends it with everything it started.
//!
//! A started process that does not keep the command line is not a member: a
//! command that execs into another one (`sh -c "exec sleep 300"`) shows the
//! pool's command line for an instant, then another. Counting it would make
//! the pool start processes for ever, so `Start` waits up to the start grace
//! for its members to show the command line and, until one member of this pool
//! has kept it for a whole grace, for them to keep it. A start that fails that
//! check kills what it started and reports why, and the runtime backs off.
//!
//! The watcher reads `/proc` every 50 ms and reports the live count whenever it
//! changes. Actions and readings share a lock and report while holding it, so
//! an intent's result and a reading taken after it reach the runtime in that
//! order: a reading taken before an action can never be mistaken for its effect.

use crate::exec::{has_exited, in_own_group, kill_group};
use crate::{ActionError, ActionResult, Actuator, IntentRequest, Watcher};
use serde_json::json;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often the watcher reads `/proc`.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Members one action may start or stop.
const ACTION_COUNT_MAX: i64 = 1000;
/// How long a stopped member may take to leave /proc after SIGKILL before the stop counts as failed.
const STOP_WAIT: Duration = Duration::from_secs(5);

pub struct Pool {
    pub command: Vec<String>,
    /// How long a started member has to show (and, until proven, keep) the command line.
    pub start_grace: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The processes this Ved started and has not reaped.
    children: Vec<Child>,
    /// A member Ved started kept the command line for a whole grace: the command does not
    /// exec into another, so a later start needs only to see its member appear.
    proven: bool,
}

/// The arguments of `pid`'s command line; empty for a zombie, a kernel thread or a process gone.
fn cmdline(pid: u32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    raw.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect()
}

/// The parent of `pid`, from `/proc/PID/stat` (`pid (comm) state ppid ...`; the command
/// name may hold spaces and parentheses, so the fields are read after its last `)`).
fn parent_of(pid: u32) -> Option<u32> {
    stat_field(pid, 1)
}

/// The process group of `pid` (the field after the parent).
fn group_of(pid: u32) -> Option<u32> {
    stat_field(pid, 2)
}

/// Field `n` after the command name of `/proc/PID/stat` (0: state, 1: parent, 2: group).
fn stat_field(pid: u32, n: usize) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(n)?.parse().ok()
}

/// A duration for a message: `2 s`, `300 ms`.
fn human(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

const MEMBERSHIP_HINT: &str = "Ved identifies pool members by their exact command line; avoid `exec` to another \
                               program in the command, or point the pool at the final command";

impl Pool {
    pub fn new(command: Vec<String>, start_grace: Duration) -> Arc<Pool> {
        Arc::new(Pool { command, start_grace, state: Mutex::new(State::default()) })
    }

    fn is_command(&self, args: &[String]) -> bool {
        args.len() == self.command.len() && args.iter().zip(&self.command).all(|(a, c)| a == c)
    }

    /// Pids of every live process whose command line is the pool's, members or not.
    fn with_command(&self) -> Vec<u32> {
        let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
        dir.flatten()
            .filter_map(|e| {
                let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
                let raw = std::fs::read(e.path().join("cmdline")).ok()?;
                let args: Vec<&[u8]> = raw.split(|b| *b == 0).filter(|a| !a.is_empty()).collect();
                let same =
                    args.len() == self.command.len() && args.iter().zip(&self.command).all(|(a, c)| *a == c.as_bytes());
                same.then_some(pid)
            })
            .collect()
    }

    /// Pids of every live process whose command line is the pool's, except the children of
    /// such processes: a member that forks (a shell running a command) has, between the fork
    /// and the child's exec, a child with the very same command line, which is not a member.
    /// Counting it would read as one worker too many, and the program would stop a real one.
    fn members(&self) -> Vec<u32> {
        // Zombies and kernel threads have an empty command line, so they are never found.
        let found: Vec<(u32, u32)> =
            self.with_command().into_iter().map(|pid| (pid, parent_of(pid).unwrap_or(0))).collect();
        let mut out: Vec<u32> =
            found.iter().filter(|(_, ppid)| !found.iter().any(|(p, _)| p == ppid)).map(|(pid, _)| *pid).collect();
        out.sort_unstable();
        out
    }

    fn reap(children: &mut Vec<Child>) {
        children.retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_))));
    }

    /// The live count, read under the pool's lock.
    pub fn count(&self) -> usize {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        Pool::reap(&mut st.children);
        self.members().len()
    }

    /// Kills the children with these pids, each with its process group, and reaps them.
    fn kill_ours(children: &mut Vec<Child>, pids: &[u32]) {
        for c in children.iter_mut().filter(|c| pids.contains(&c.id())) {
            // Unreaped, so its group id is still its own (see `kill_group`).
            kill_group(c.id(), libc::SIGKILL);
            let _ = c.kill();
            let _ = c.wait();
        }
        children.retain(|c| !pids.contains(&c.id()));
    }

    /// A child of ours that is alive but runs another command line: it execed into another
    /// program after its start was checked.
    fn escaped(&self, children: &[Child]) -> Option<(u32, Vec<String>)> {
        children.iter().find_map(|c| {
            if has_exited(c.id()) {
                return None;
            }
            let now = cmdline(c.id());
            (!now.is_empty() && !self.is_command(&now)).then(|| (c.id(), now))
        })
    }

    fn start(&self, n: i64, st: &mut State) -> ActionResult {
        let (prog, args) =
            self.command.split_first().ok_or_else(|| ActionError::rejected("the pool's command is empty"))?;
        let shown = self.command.join(" ");
        if let Some((pid, now)) = self.escaped(&st.children) {
            st.proven = false;
            Pool::kill_ours(&mut st.children, &[pid]);
            return Err(ActionError::failed(format!(
                "pid {pid}, which Ved started for `{shown}`, now runs `{}`, so it is not a member and was \
                 killed; {MEMBERSHIP_HINT}",
                now.join(" ")
            )));
        }
        let mut started = Vec::new();
        let result = self.spawn_and_check(prog, args, n, st, &mut started);
        if result.is_err() {
            // Nothing a failed start began may stay behind: the runtime will try again.
            Pool::kill_ours(&mut st.children, &started);
        }
        result
    }

    fn spawn_and_check(
        &self,
        prog: &str,
        args: &[String],
        n: i64,
        st: &mut State,
        started: &mut Vec<u32>,
    ) -> ActionResult {
        for _ in 0..n {
            let child = in_own_group(prog, args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| ActionError::unavailable(format!("cannot start `{prog}`: {e}")))?;
            started.push(child.id());
            st.children.push(child);
        }
        // Wait until the new members show the command line, so the next reading includes them
        // (between fork and exec a child still shows Ved's); and, until the pool is proven,
        // that they keep it for the whole grace.
        if started.is_empty() {
            return Ok(());
        }
        let deadline = Instant::now() + self.start_grace;
        loop {
            // Checked without reaping, so the group can still be killed safely (see `kill_group`).
            if let Some(i) = st.children.iter().position(|c| started.contains(&c.id()) && has_exited(c.id())) {
                let mut c = st.children.swap_remove(i);
                let pid = c.id();
                kill_group(pid, libc::SIGKILL);
                started.retain(|p| *p != pid);
                let status = c.wait().map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                return Err(ActionError::failed(format!(
                    "`{prog}` (pid {pid}) exited within {} ({status})",
                    human(self.start_grace)
                )));
            }
            let missing = started.iter().copied().find(|p| !self.is_command(&cmdline(*p)));
            let late = Instant::now() >= deadline;
            match missing {
                None if st.proven || late => {
                    st.proven = true;
                    return Ok(());
                }
                Some(pid) if late => {
                    let now = cmdline(pid);
                    let runs = if now.is_empty() {
                        "its command line cannot be read".to_string()
                    } else {
                        format!("it now runs `{}`", now.join(" "))
                    };
                    return Err(ActionError::failed(format!(
                        "started pid {pid} for `{}`, but after {} it does not have that command line ({runs}), \
                         so it is not a member and was killed; {MEMBERSHIP_HINT}",
                        self.command.join(" "),
                        human(self.start_grace)
                    )));
                }
                // Appearing takes a fork and an exec: check often. Keeping it takes the grace.
                Some(_) => std::thread::sleep(Duration::from_millis(1)),
                None => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    fn act(&self, intent: &IntentRequest, st: &mut State) -> ActionResult {
        // Only unreaped children stay listed: their pids, and so their group ids, are still theirs.
        Pool::reap(&mut st.children);
        let n = match intent.args.first() {
            None => 1,
            Some(v) => v.as_i64().filter(|n| (0..=ACTION_COUNT_MAX).contains(n)).ok_or_else(|| {
                ActionError::rejected(format!(
                    "{}.{} takes a count from 0 to {ACTION_COUNT_MAX}, got {v}",
                    intent.adapter, intent.action
                ))
            })?,
        };
        match intent.action.as_str() {
            "Start" => self.start(n, st),
            "Stop" => {
                let ours: Vec<u32> = st.children.iter().map(Child::id).collect();
                let mut members = self.members();
                // Strangers first: a member started by hand is the drift being corrected.
                members.sort_by_key(|pid| (ours.contains(pid), std::cmp::Reverse(*pid)));
                let doomed: Vec<u32> = members.into_iter().take(n as usize).collect();
                for &pid in &doomed {
                    // Ours lead their own process group: end it all. A stranger's group is not ours to end.
                    let ok = (ours.contains(&pid) && kill_group(pid, libc::SIGKILL)) || kill_one(pid);
                    if !ok {
                        return Err(ActionError::failed(format!("could not stop process {pid}")));
                    }
                }
                // SIGKILL is delivered asynchronously: the stop is done only once the processes are
                // gone from /proc, so that the reading which confirms it (and any reading after the
                // result) counts them out. Reporting success earlier would let a reading taken just
                // after it confirm a stop that has not happened yet, and the pool would stop again.
                // A member's own forks (a subshell) share its command line and its group; one that
                // outlives the member for a moment would read as a member of its own.
                let groups: Vec<u32> = doomed.iter().copied().filter(|p| ours.contains(p)).collect();
                let deadline = std::time::Instant::now() + STOP_WAIT;
                loop {
                    let members = self.members();
                    let mut alive: Vec<u32> = doomed.iter().copied().filter(|p| members.contains(p)).collect();
                    alive.extend(
                        self.with_command().into_iter().filter(|p| group_of(*p).is_some_and(|g| groups.contains(&g))),
                    );
                    alive.sort_unstable();
                    alive.dedup();
                    if alive.is_empty() {
                        break;
                    }
                    // Our own children stay in /proc as zombies until reaped.
                    for c in st.children.iter_mut().filter(|c| alive.contains(&c.id())) {
                        let _ = c.try_wait();
                    }
                    if std::time::Instant::now() >= deadline {
                        return Err(ActionError::timeout(format!(
                            "process(es) {alive:?} still run the pool's command {} ms after SIGKILL",
                            STOP_WAIT.as_millis()
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                // Reap our own, so they leave /proc before the next reading.
                let members = self.members();
                for c in st.children.iter_mut() {
                    if !members.contains(&c.id()) {
                        let _ = c.wait();
                    }
                }
                Pool::reap(&mut st.children);
                Ok(())
            }
            other => Err(ActionError::rejected(format!(
                "the process driver has no action `{other}`; it has `Start` and `Stop`"
            ))),
        }
    }
}

/// SIGKILL to one process; one already gone counts as stopped.
fn kill_one(pid: u32) -> bool {
    let Ok(id) = libc::pid_t::try_from(pid) else { return false };
    if id <= 1 {
        return false;
    }
    // SAFETY: kill has no memory-safety preconditions; `id` is a single process's pid.
    let sent = unsafe { libc::kill(id, libc::SIGKILL) == 0 };
    sent || std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

pub struct ProcessDriver {
    pub pool: Arc<Pool>,
}

impl ProcessDriver {
    /// Performs the intent and calls `report` with the outcome while still holding
    /// the pool's lock (see the module docs for why).
    pub fn deliver_and_report(&self, intent: &IntentRequest, report: &mut dyn FnMut(ActionResult)) {
        let mut st = self.pool.state.lock().unwrap_or_else(|p| p.into_inner());
        let r = self.pool.act(intent, &mut st);
        report(r);
    }
}

impl Actuator for ProcessDriver {
    fn deliver(&self, intent: &IntentRequest) -> ActionResult {
        let mut st = self.pool.state.lock().unwrap_or_else(|p| p.into_inner());
        self.pool.act(intent, &mut st)
    }

    fn deliver_then(&self, intent: &IntentRequest, report: &mut dyn FnMut(ActionResult)) {
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
    fn run(self: Box<Self>, sink: crate::Sink, stop: Arc<AtomicBool>, resync: Option<Duration>) {
        let mut reporter = crate::Reporter::new(&self.instance, &self.source, resync);
        while !stop.load(Ordering::Relaxed) {
            {
                // Read and report under the pool's lock (see the module's comment).
                let mut st = self.pool.state.lock().unwrap_or_else(|p| p.into_inner());
                Pool::reap(&mut st.children);
                let n = self.pool.members().len();
                if reporter.offer_one(&self.field, json!(n), &sink).is_err() {
                    return;
                }
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }
}
