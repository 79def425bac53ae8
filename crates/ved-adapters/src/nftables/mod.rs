//! The Linux firewall through `nft`: Ved owns one table with one input chain
//! that drops by default, and opens TCP ports by adding `tcp dport P accept`
//! rules to it, optionally inside a network namespace.
//!
//! The chain is `type filter hook input priority P; policy drop;` and holds, in
//! order: the base rules (`ct state established,related accept`,
//! `iif "lo" accept`, then the `base_rules` of `ved.toml`), then one
//! `tcp dport N accept` rule per open port. Anything else in Ved's table is
//! *structural drift* and is repaired by the adapter itself, at once, in one
//! nft transaction, and reported as [`Inbound::Repaired`] for the audit log. A
//! single-port accept rule added by hand is *port drift*: the adapter keeps it
//! and the watcher reports the port open, so the program decides (seed 000
//! closes it).
//!
//! The watcher reports the ports *effectively* open to a new TCP connection
//! from outside, worked out from every chain on the input path (see [`eval`]),
//! ascending and each once. It reads the ruleset when `nft monitor` prints a
//! change; nothing is polled. All reads and writes go through one long-lived
//! `nft -i` ([`session`]) under one lock, shared by the driver and the
//! watcher, and each reports while holding it: a reading taken before an
//! action's result can never overtake that result.

pub mod eval;
pub mod session;

use crate::{ActionError, ActionResult, Actuator, Inbound, IntentRequest, Watcher};
use eval::{blocker, effective_ports, render_rule, Ruleset};
use serde_json::{json, Value as Json};
use session::Session;
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// The base rules every Ved chain starts with: replies to connections already
/// accepted, and the machine talking to itself. Without them a default-deny
/// chain would cut both.
pub const BUILTIN_BASE_RULES: &[&str] = &["ct state established,related accept", "iif \"lo\" accept"];

/// One managed chain.
#[derive(Clone, Debug)]
pub struct Chain {
    pub family: String,
    pub table: String,
    pub chain: String,
    /// Run `nft` inside this network namespace (`ip netns exec NS nft ...`).
    pub netns: Option<String>,
    pub timeout: Duration,
    /// The chain's priority on the input hook.
    pub priority: i64,
    /// Extra base rules from `ved.toml`, after the built-in ones.
    pub base_rules: Vec<String>,
}

impl Chain {
    fn base_rules(&self) -> Vec<String> {
        BUILTIN_BASE_RULES.iter().map(|r| r.to_string()).chain(self.base_rules.iter().cloned()).collect()
    }

    /// `inet ved input`, as nft names it.
    fn path(&self) -> String {
        format!("{} {} {}", self.family, self.table, self.chain)
    }

    fn spec(&self) -> String {
        format!("type filter hook input priority {}; policy drop;", self.priority)
    }

    /// The commands that make Ved's table from nothing, holding `ports`.
    fn rebuild(&self, ports: &[i64]) -> Vec<String> {
        let (f, t, path) = (&self.family, &self.table, self.path());
        let mut cmds = vec![
            // `add` first, so that `delete` cannot fail on a missing table.
            format!("add table {f} {t}"),
            format!("delete table {f} {t}"),
            format!("add table {f} {t}"),
            format!("add chain {path} {{ {} }}", self.spec()),
        ];
        cmds.extend(self.base_rules().iter().map(|r| format!("add rule {path} {r}")));
        cmds.extend(ports.iter().map(|p| format!("add rule {path} tcp dport {p} accept")));
        cmds
    }
}

/// How a rule of Ved's chain reads.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Base(usize),
    Port(i64),
    Foreign,
}

/// A rule's expressions with counters' numbers blanked, so a rule compares equal to itself later.
fn normalize(exprs: &Json) -> Json {
    match exprs {
        Json::Array(xs) => Json::Array(
            xs.iter().map(|x| if x.get("counter").is_some() { json!({"counter": null}) } else { x.clone() }).collect(),
        ),
        other => other.clone(),
    }
}

/// The port of an exact `tcp dport N accept` rule.
fn single_port(exprs: &Json) -> Option<i64> {
    let xs = exprs.as_array()?;
    let [m, v] = xs.as_slice() else { return None };
    let m = m.get("match")?;
    let p = m["right"].as_i64()?;
    (m["op"] == "=="
        && m["left"] == json!({"payload": {"protocol": "tcp", "field": "dport"}})
        && *v == json!({"accept": null}))
    .then_some(p)
}

/// What it takes to bring Ved's table back to its shape, holding the wanted ports.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// nft commands, to run as one transaction.
    pub cmds: Vec<String>,
    /// Structural repairs, in words, for the audit log.
    pub what: Vec<String>,
    /// The table was missing altogether.
    pub table_missing: bool,
}

/// Plans the repair of Ved's table in `doc`, keeping its single-port rules except those
/// for `close`, and adding rules for `open`. `base` holds the base rules' expressions.
pub fn plan(c: &Chain, doc: &Json, base: &[Json], open: &[i64], close: &[i64]) -> Plan {
    let rs = Ruleset::new(doc);
    let (f, t, n) = (c.family.as_str(), c.table.as_str(), c.chain.as_str());
    let path = c.path();
    let mut out = Plan::default();
    let mut rebuild = false;
    if !rs.of("table").any(|x| x["family"] == f && x["name"] == t) {
        out.table_missing = true;
        out.what.push(format!("recreated table {f} {t}: it had been deleted"));
        out.cmds = c.rebuild(open);
        return out;
    }
    // Everything in Ved's table besides its chain and that chain's rules.
    for (kind, o) in rs.all().filter(|(_, o)| o["family"] == f && o["table"] == t) {
        let name = o["name"].as_str().unwrap_or("?");
        match kind {
            "rule" | "table" => {}
            "chain" if name == n => {}
            "chain" => {
                rebuild = true;
                let rules: Vec<String> = rs
                    .rules(f, t, name)
                    .iter()
                    .map(|r| format!("`{}`", render_rule(r["expr"].as_array().map(Vec::as_slice).unwrap_or(&[]))))
                    .collect();
                let with =
                    if rules.is_empty() { String::new() } else { format!(" and its rules {}", rules.join(", ")) };
                out.what.push(format!("removed chain `{name}`{with} from {f} {t}: Ved did not create it"));
            }
            other => {
                rebuild = true;
                out.what.push(format!("removed {other} `{name}` from {f} {t}: Ved did not create it"));
            }
        }
    }
    let Some(chain) = rs.of("chain").find(|x| x["family"] == f && x["table"] == t && x["name"] == n) else {
        out.what.push(format!("recreated chain {path}: it had been deleted"));
        out.cmds = c.rebuild(open);
        return out;
    };
    let spec_now = format!(
        "type {} hook {} priority {}; policy {};",
        chain["type"].as_str().unwrap_or("?"),
        chain["hook"].as_str().unwrap_or("none"),
        chain["prio"].as_i64().map(|p| p.to_string()).unwrap_or_else(|| "?".into()),
        chain["policy"].as_str().unwrap_or("?"),
    );
    if spec_now != c.spec() {
        rebuild = true;
        out.what.push(format!("set {path} back to `{}`: it was `{spec_now}`", c.spec()));
    }
    let mut deletes = Vec::new();
    let mut ports: Vec<i64> = Vec::new();
    let mut next_base = 0;
    for r in rs.rules(f, t, n) {
        let exprs = normalize(&r["expr"]);
        let handle = r["handle"].as_u64().unwrap_or(0);
        let kind = if let Some(i) = base.iter().position(|b| *b == exprs) {
            Kind::Base(i)
        } else if let Some(p) = single_port(&exprs) {
            Kind::Port(p)
        } else {
            Kind::Foreign
        };
        let text = || render_rule(exprs.as_array().map(Vec::as_slice).unwrap_or(&[]));
        match kind {
            Kind::Base(i) if i == next_base && ports.is_empty() => next_base += 1,
            Kind::Base(_) | Kind::Foreign => {
                deletes.push(handle);
                out.what.push(format!("removed rule `{}` (handle {handle}) from {path}: Ved did not write it", text()));
            }
            Kind::Port(_) if next_base < base.len() => {
                // A port rule above the base rules: the order is broken, so rebuild.
                rebuild = true;
                deletes.push(handle);
                if let Kind::Port(p) = kind {
                    ports.push(p);
                }
            }
            Kind::Port(p) => {
                if close.contains(&p) {
                    deletes.push(handle);
                }
                ports.push(p);
            }
        }
    }
    if next_base < base.len() {
        rebuild = true;
        out.what.push(format!(
            "restored the base rules at the top of {path}: {}",
            c.base_rules().iter().map(|r| format!("`{r}`")).collect::<Vec<_>>().join(", ")
        ));
    }
    let mut keep: Vec<i64> = Vec::new();
    for p in ports.iter().chain(open) {
        if !close.contains(p) && !keep.contains(p) {
            keep.push(*p);
        }
    }
    if rebuild {
        out.cmds = c.rebuild(&keep);
        return out;
    }
    out.cmds.extend(deletes.iter().map(|h| format!("delete rule {path} handle {h}")));
    out.cmds.extend(
        open.iter()
            .filter(|p| !ports.contains(p) && !close.contains(p))
            .map(|p| format!("add rule {path} tcp dport {p} accept")),
    );
    out
}

/// Ved's firewall: the chain, the `nft -i` session and the lock the driver and the watcher share.
pub struct Firewall {
    pub chain: Chain,
    state: Mutex<State>,
    sink: crate::Sink,
    /// Who repairs are reported for: the watcher's instance and source.
    report_as: Mutex<Option<(String, String)>>,
}

struct State {
    session: Session,
    /// The base rules' expressions as nft lists them, learnt once.
    base: Option<Vec<Json>>,
    /// The table has been set up once: a missing table after that is drift, before it is a first start.
    set_up: bool,
    /// The newest ruleset read, and a number that grows with every read: the watcher
    /// evaluates it instead of listing again after a transaction of Ved's own.
    last: Option<(u64, Json)>,
}

impl State {
    fn run(&mut self, line: &str) -> Result<(Option<session::NftError>, Json), String> {
        let (err, doc) = self.session.run(line)?;
        let n = self.last.as_ref().map_or(1, |(n, _)| n + 1);
        self.last = Some((n, doc.clone()));
        Ok((err, doc))
    }
}

/// A new listing of the whole ruleset.
fn list(st: &mut State) -> Result<Json, String> {
    match st.run("")? {
        (None, doc) => Ok(doc),
        (Some(e), _) => Err(format!("nft cannot list the ruleset: {e}")),
    }
}

/// How often Ved retries a plan that nft refused because the ruleset changed under it.
const PLAN_ATTEMPTS: usize = 3;

impl Firewall {
    pub fn new(chain: Chain, sink: crate::Sink) -> Arc<Firewall> {
        let session = Session::new(chain.netns.clone(), chain.timeout);
        Arc::new(Firewall {
            chain,
            state: Mutex::new(State { session, base: None, set_up: false, last: None }),
            sink,
            report_as: Mutex::new(None),
        })
    }

    /// Repairs are reported for this instance and source (the watcher's).
    pub fn report_as(&self, instance: &str, source: &str) {
        *self.report_as.lock().unwrap_or_else(|p| p.into_inner()) = Some((instance.to_string(), source.to_string()));
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Learns how nft lists the base rules, by writing them into a scratch regular
    /// chain (no hook: it never sees a packet) and reading them back.
    fn probe(&self, st: &mut State) -> Result<Vec<Json>, String> {
        let f = &self.chain.family;
        let scratch = format!("ved_probe_{}", std::process::id());
        let rules = self.chain.base_rules();
        let mut cmds = vec![format!("add table {f} {scratch}"), format!("add chain {f} {scratch} probe")];
        cmds.extend(rules.iter().map(|r| format!("add rule {f} {scratch} probe {r}")));
        let (err, doc) = st.run(&cmds.join("; "))?;
        let cleanup = st.run(&format!("delete table {f} {scratch}"));
        if let Some(e) = err {
            return Err(format!("a base rule is not valid nft ({}): {e}", rules.join("; ")));
        }
        cleanup?;
        let rs = Ruleset::new(&doc);
        let got: Vec<Json> = rs.rules(f, &scratch, "probe").iter().map(|r| normalize(&r["expr"])).collect();
        if got.len() != rules.len() {
            return Err(format!(
                "nft turned the {} base rules into {} rules; give one rule per entry",
                rules.len(),
                got.len()
            ));
        }
        Ok(got)
    }

    /// Brings Ved's table to its shape (opening `open`, closing `close`) in one
    /// transaction, reports any structural repair, and returns the ruleset after it.
    /// With `fresh` false (an action), the plan may start from the last listing instead
    /// of a new one, but only to make port changes: handles are never reused, so a stale
    /// handle fails the transaction (and Ved lists and plans again) rather than deleting
    /// another rule; a plan that finds nothing to do or something to repair is made again
    /// from a new listing, so that neither a success nor a repair report rests on a stale view.
    fn converge(
        &self,
        st: &mut State,
        open: &[i64],
        close: &[i64],
        instance: &str,
        fresh: bool,
    ) -> Result<Json, String> {
        if st.base.is_none() {
            st.base = Some(self.probe(st)?);
        }
        let base = st.base.clone().unwrap_or_default();
        let cached = if fresh { None } else { st.last.as_ref().map(|(_, d)| d.clone()) };
        let mut listed = cached.is_none();
        let mut doc = match cached {
            Some(d) => d,
            None => list(st)?,
        };
        let mut attempt = 0;
        loop {
            let mut p = plan(&self.chain, &doc, &base, open, close);
            if !listed && (p.cmds.is_empty() || !p.what.is_empty()) {
                doc = list(st)?;
                listed = true;
                continue;
            }
            if p.cmds.is_empty() {
                break;
            }
            if p.table_missing && !st.set_up {
                // Creating the table on the first start is not a repair.
                p.what.clear();
            }
            attempt += 1;
            let (err, after) = st.run(&p.cmds.join("; "))?;
            doc = after;
            listed = true;
            match err {
                None => {
                    self.report_repairs(p.what, instance);
                    break;
                }
                // Someone changed the ruleset between the listing and the change: plan again.
                Some(e) if attempt >= PLAN_ATTEMPTS => return Err(format!("nft refused Ved's change: {e}")),
                Some(_) => {}
            }
        }
        st.set_up = true;
        Ok(doc)
    }

    fn report_repairs(&self, what: Vec<String>, instance: &str) {
        if what.is_empty() {
            return;
        }
        let who = self.report_as.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let (instance, source) =
            who.unwrap_or_else(|| (instance.to_string(), format!("nftables {}", self.chain.path())));
        let _ = self.sink.send(Inbound::Repaired { instance, source, what });
    }

    /// Opens `ports`; fails, naming the chain, when another table drops one of them.
    fn open(&self, st: &mut State, ports: &[i64], instance: &str) -> ActionResult {
        let doc = self.converge(st, ports, &[], instance, false).map_err(ActionError::failed)?;
        let rs = Ruleset::new(&doc);
        let chains = rs.base_chains();
        let mut errors = Vec::new();
        for &p in ports {
            let (b, why) = blocker(&rs, &chains, p);
            let Some(b) = b else { continue };
            let ours = b.chain.family == self.chain.family && b.chain.table == self.chain.table;
            let how = if b.maybe { "may be dropped" } else { "is dropped" };
            let mut e = if ours {
                format!("port {p} {how} by Ved's own {} even after adding `tcp dport {p} accept`", b.chain.describe())
            } else {
                format!("port {p} {how} by {}, which Ved does not own", b.chain.describe())
            };
            if !why.is_empty() {
                e.push_str(&format!(" ({})", why.join("; ")));
            }
            errors.push(e);
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ActionError::failed(errors.join("; ")))
        }
    }

    /// Closes `ports`: every rule for them goes, and the structure is repaired in the same transaction.
    fn close(&self, st: &mut State, ports: &[i64], instance: &str) -> ActionResult {
        let doc = self.converge(st, &[], ports, instance, false).map_err(ActionError::failed)?;
        let rs = Ruleset::new(&doc);
        let chains = rs.base_chains();
        let still: Vec<String> =
            ports.iter().filter(|p| blocker(&rs, &chains, **p).0.is_none()).map(|p| p.to_string()).collect();
        if still.is_empty() {
            Ok(())
        } else {
            Err(ActionError::failed(format!(
                "port(s) {} still accept connections after Ved removed their rules",
                still.join(", ")
            )))
        }
    }

    /// The ports open now, after repairing the structure; and the evaluator's warnings.
    pub fn effective(&self, instance: &str) -> Result<eval::Effective, String> {
        let mut st = self.lock();
        let doc = self.converge(&mut st, &[], &[], instance, true)?;
        Ok(effective_ports(&doc))
    }
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
    pub fw: Arc<Firewall>,
}

impl Actuator for NftDriver {
    fn deliver(&self, intent: &IntentRequest) -> ActionResult {
        let mut out = Err(ActionError::failed("no outcome"));
        self.deliver_then(intent, &mut |r| out = r);
        out
    }

    /// Acts and reports under the firewall's lock (see the module docs).
    fn deliver_then(&self, intent: &IntentRequest, report: &mut dyn FnMut(ActionResult)) {
        let ports = match ports_of(intent) {
            Ok(p) => p,
            Err(e) => return report(Err(ActionError::rejected(e))),
        };
        let mut st = self.fw.lock();
        let r = match intent.action.as_str() {
            "OpenPorts" | "OpenPort" => self.fw.open(&mut st, &ports, &intent.instance),
            "ClosePorts" | "ClosePort" => self.fw.close(&mut st, &ports, &intent.instance),
            other => Err(ActionError::rejected(format!(
                "the nftables driver has no action `{other}`; it has OpenPorts and ClosePorts"
            ))),
        };
        report(r);
    }
}

/// Reports the effectively open ports into one field whenever `nft monitor` says the ruleset changed.
pub struct NftWatcher {
    pub fw: Arc<Firewall>,
    pub instance: String,
    pub field: String,
    pub source: String,
}

/// How long a stopped watcher may take to notice.
const STOP_CHECK: Duration = Duration::from_millis(100);
/// How long the watcher waits before trying again after nft failed.
const FAILURE_PAUSE: Duration = Duration::from_millis(500);

/// The `nft monitor` child; killed when dropped, so no exit path of the watcher leaves it behind.
struct Monitor {
    child: Child,
    lines: Receiver<String>,
}

impl Monitor {
    fn start(netns: Option<&str>) -> Result<Monitor, String> {
        let cmd = session::nft_command(netns, &["monitor"]);
        let mut child = session::spawn_tied(cmd).map_err(|e| format!("cannot start `nft monitor`: {e}"))?;
        let lines = session::read_lines(child.stdout.take().ok_or("nft monitor has no stdout")?);
        Ok(Monitor { child, lines })
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `# new generation 22 by process 4061 (nft)`: the pid of the process that committed
/// the transaction `nft monitor` just printed.
fn generation_author(line: &str) -> Option<Option<u32>> {
    let rest = line.strip_prefix("# new generation ")?;
    Some(rest.split_whitespace().skip_while(|w| *w != "process").nth(1).and_then(|p| p.parse().ok()))
}

/// How long the watcher waits for the end of a transaction `nft monitor` is printing.
const GENERATION_WAIT: Duration = Duration::from_millis(50);

impl NftWatcher {
    /// Evaluates `doc` and reports it, under the lock the caller holds.
    fn report(&self, doc: &Json, reporter: &mut crate::Reporter, sink: &crate::Sink, warned: &mut Vec<String>) -> bool {
        let e = effective_ports(doc);
        if e.warnings != *warned {
            for w in &e.warnings {
                tracing::warn!(source = %self.source, "{w}");
            }
            *warned = e.warnings;
        }
        reporter.offer_one(&self.field, json!(e.open), sink).is_ok()
    }
}

impl Watcher for NftWatcher {
    fn run(self: Box<Self>, sink: crate::Sink, stop: Arc<AtomicBool>, resync: Option<Duration>) {
        let mut reporter = crate::Reporter::new(&self.instance, &self.source, resync);
        let mut monitor: Option<Monitor> = None;
        let mut read_now = true;
        // Set when only Ved's own transactions happened: the listing that followed them is evaluated.
        let mut own_only = false;
        let mut reported = 0u64;
        let mut warned: Vec<String> = Vec::new();
        // Whether this nft names the author of each transaction (nft 1.0 does).
        let mut names_authors = false;
        while !stop.load(Ordering::Relaxed) {
            // Listen before reading, so that no change falls between the read and the monitor.
            if monitor.is_none() {
                match Monitor::start(self.fw.chain.netns.as_deref()) {
                    Ok(m) => {
                        monitor = Some(m);
                        read_now = true;
                    }
                    Err(e) => {
                        tracing::warn!(source = %self.source, "{e}");
                        std::thread::sleep(FAILURE_PAUSE);
                        continue;
                    }
                }
            }
            let resync_due = reporter.resync_in().is_some_and(|d| d.is_zero());
            if read_now || resync_due {
                read_now = false;
                own_only = false;
                // Read and report under the firewall's lock, like the driver.
                let mut st = self.fw.lock();
                match self.fw.converge(&mut st, &[], &[], &self.instance, true) {
                    Ok(doc) => {
                        reported = st.last.as_ref().map_or(0, |(n, _)| *n);
                        if !self.report(&doc, &mut reporter, &sink, &mut warned) {
                            break;
                        }
                    }
                    Err(e) => {
                        drop(st);
                        tracing::warn!(source = %self.source, "{e}");
                        read_now = true;
                        std::thread::sleep(FAILURE_PAUSE);
                        continue;
                    }
                }
            } else if own_only || reporter.reading_requested() {
                // After Ved's own transaction, or when the driver asks for a reading to confirm
                // an effect: the listing that ended Ved's last request is the state after it
                // (any other change since would have come as monitor lines and a full read), so
                // it is sent again even if it is no news, without another round trip to nft.
                let requested = !own_only;
                own_only = false;
                let st = self.fw.lock();
                if let Some((n, doc)) = st.last.as_ref().filter(|(n, _)| *n != reported || requested) {
                    reported = *n;
                    if !self.report(doc, &mut reporter, &sink, &mut warned) {
                        break;
                    }
                }
            }
            let wait = reporter.resync_in().map_or(STOP_CHECK, |d| d.min(STOP_CHECK));
            let Some(m) = monitor.as_ref() else { continue };
            match m.lines.recv_timeout(wait) {
                Ok(first) => {
                    // One read covers every line already printed: a transaction prints several.
                    let mut lines = vec![first];
                    lines.extend(m.lines.try_iter());
                    while names_authors && lines.last().is_none_or(|l| generation_author(l).is_none()) {
                        match m.lines.recv_timeout(GENERATION_WAIT) {
                            Ok(l) => lines.push(l),
                            Err(_) => break,
                        }
                    }
                    let authors: Vec<Option<u32>> = lines.iter().filter_map(|l| generation_author(l)).collect();
                    names_authors |= !authors.is_empty();
                    // A transaction of Ved's own session is already read: the listing that ended
                    // the request came after its commit. Anything else is read again.
                    let own = self.fw.lock().session.pid();
                    let ours = own.is_some()
                        && !authors.is_empty()
                        && authors.iter().all(|a| *a == own)
                        && lines.last().is_some_and(|l| generation_author(l).is_some());
                    if ours {
                        own_only = true;
                    } else {
                        read_now = true;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    tracing::warn!(source = %self.source, "`nft monitor` ended; starting it again");
                    monitor = None;
                    std::thread::sleep(FAILURE_PAUSE.min(STOP_CHECK));
                }
            }
        }
        drop(monitor);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chain() -> Chain {
        Chain {
            family: "inet".into(),
            table: "ved".into(),
            chain: "input".into(),
            netns: None,
            timeout: Duration::from_secs(1),
            priority: 0,
            base_rules: Vec::new(),
        }
    }

    fn base() -> Vec<Json> {
        vec![
            json!([{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, {"accept": null}]),
            json!([{"match": {"op": "==", "left": {"meta": {"key": "iif"}}, "right": "lo"}}, {"accept": null}]),
        ]
    }

    fn rule(handle: u64, expr: Json) -> Json {
        json!({"rule": {"family": "inet", "table": "ved", "chain": "input", "handle": handle, "expr": expr}})
    }

    fn port(p: i64) -> Json {
        json!([{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": p}}, {"accept": null}])
    }

    /// Ved's table as it should be, holding `ports`, then `extra` items.
    fn table(policy: &str, ports: &[i64], extra: Vec<Json>) -> Json {
        let mut items = vec![
            json!({"table": {"family": "inet", "name": "ved", "handle": 1}}),
            json!({"chain": {"family": "inet", "table": "ved", "name": "input", "handle": 1, "type": "filter", "hook": "input", "prio": 0, "policy": policy}}),
            rule(2, base()[0].clone()),
            rule(3, base()[1].clone()),
        ];
        items.extend(ports.iter().enumerate().map(|(i, p)| rule(10 + i as u64, port(*p))));
        items.extend(extra);
        json!({"nftables": items})
    }

    #[test]
    fn nft_monitor_names_the_author_of_a_transaction() {
        assert_eq!(generation_author("# new generation 22 by process 4061 (nft)"), Some(Some(4061)));
        assert_eq!(generation_author("# new generation 22"), Some(None));
        assert_eq!(generation_author("add rule inet ved input tcp dport 22 accept"), None);
    }

    #[test]
    fn a_ved_shaped_table_needs_nothing_and_port_changes_are_targeted() {
        let doc = table("drop", &[80, 443], vec![]);
        assert_eq!(plan(&chain(), &doc, &base(), &[], &[]), Plan::default());
        let p = plan(&chain(), &doc, &base(), &[8080, 80], &[443]);
        assert_eq!(
            p.cmds,
            vec!["delete rule inet ved input handle 11", "add rule inet ved input tcp dport 8080 accept"]
        );
        assert!(p.what.is_empty(), "port changes are not repairs");
    }

    #[test]
    fn stray_rules_are_deleted_by_handle_and_quoted_while_port_drift_is_kept() {
        let mut doc = table("drop", &[80, 443], vec![]);
        let items = doc["nftables"].as_array_mut().unwrap();
        items.insert(2, rule(7, json!([{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 80}}, {"drop": null}])));
        items.push(rule(8, json!([{"match": {"op": "!=", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 80}}, {"accept": null}])));
        items.push(rule(9, port(22)));
        let p = plan(&chain(), &doc, &base(), &[], &[]);
        assert_eq!(p.cmds, vec!["delete rule inet ved input handle 7", "delete rule inet ved input handle 8"]);
        assert_eq!(
            p.what,
            vec![
                "removed rule `tcp dport 80 drop` (handle 7) from inet ved input: Ved did not write it",
                "removed rule `tcp dport != 80 accept` (handle 8) from inet ved input: Ved did not write it",
            ]
        );
    }

    #[test]
    fn a_wrong_shape_is_rebuilt_in_one_transaction_keeping_the_single_port_rules() {
        let c = chain();
        let rebuilt = |ports: &[i64]| c.rebuild(ports);
        // A policy set to accept by hand.
        let p = plan(&c, &table("accept", &[80, 22], vec![]), &base(), &[], &[]);
        assert_eq!(p.cmds, rebuilt(&[80, 22]));
        assert_eq!(p.what, vec!["set inet ved input back to `type filter hook input priority 0; policy drop;`: it was `type filter hook input priority 0; policy accept;`"]);
        // A set in Ved's table, and a flushed chain.
        let mut doc =
            table("drop", &[], vec![json!({"set": {"family": "inet", "table": "ved", "name": "s", "handle": 4}})]);
        doc["nftables"].as_array_mut().unwrap().retain(|i| i.get("rule").is_none());
        let p = plan(&c, &doc, &base(), &[443], &[]);
        assert_eq!(p.cmds, rebuilt(&[443]));
        assert!(p.what[0].starts_with("removed set `s` from inet ved"), "{:?}", p.what);
        assert!(p.what[1].starts_with("restored the base rules at the top of inet ved input"), "{:?}", p.what);
        // A deleted table.
        let p = plan(&c, &json!({"nftables": []}), &base(), &[], &[]);
        assert!(p.table_missing);
        assert_eq!(p.cmds, rebuilt(&[]));
        assert_eq!(
            rebuilt(&[80]).join("; "),
            "add table inet ved; delete table inet ved; add table inet ved; \
             add chain inet ved input { type filter hook input priority 0; policy drop; }; \
             add rule inet ved input ct state established,related accept; add rule inet ved input iif \"lo\" accept; \
             add rule inet ved input tcp dport 80 accept"
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
