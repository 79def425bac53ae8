//! Which TCP ports are *effectively* open to a new connection from outside,
//! worked out from a whole ruleset as `nft -j list ruleset` prints it.
//!
//! The packet evaluated is a new IPv4 TCP connection (`ct state new`) to port P
//! arriving on an interface that is not `lo`, from an unknown source. Every
//! base chain of family `ip` or `inet` on the `prerouting` or `input` hook is
//! evaluated, prerouting first, then by ascending priority, with nftables'
//! semantics: a drop or reject in any chain is final, an accept ends only its
//! own chain, and a chain's policy applies when no rule decided. `jump` and
//! `goto` enter regular chains; `return` leaves them.
//!
//! A match is true, false or unknown for this packet (unknown: it depends on
//! something Ved does not know, such as the source address, or Ved cannot read
//! it). A rule whose matches are unknown may or may not apply; when the two
//! paths disagree the outcome is "maybe blocked", which counts as blocked, and
//! the rules responsible are named in a warning. So an uninterpretable rule can
//! hide an open port from the report but never make Ved claim a port is open
//! when it may not be: a false `stable` is worse than a `degraded`.
//!
//! IPv6-only (`ip6`) tables are not evaluated: Ved's own `inet` chain decides
//! for both families, and the report is about IPv4 reachability.

use serde_json::Value as Json;
use std::collections::BTreeSet;

/// Three-valued truth of a match for the packet being evaluated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tri {
    T,
    F,
    U,
}

impl Tri {
    fn and(self, o: Tri) -> Tri {
        match (self, o) {
            (Tri::F, _) | (_, Tri::F) => Tri::F,
            (Tri::T, Tri::T) => Tri::T,
            _ => Tri::U,
        }
    }
    fn not(self) -> Tri {
        match self {
            Tri::T => Tri::F,
            Tri::F => Tri::T,
            Tri::U => Tri::U,
        }
    }
}

/// What a chain (or the rest of one) does with the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// Accepted: this base chain is done, the next one sees the packet.
    Pass,
    /// Dropped or rejected: final.
    Blocked,
    /// A regular chain ran out of rules or said `return`: the caller continues.
    Return,
    /// Depends on something Ved cannot tell; counts as blocked.
    Maybe,
}

fn either(a: Outcome, b: Outcome) -> Outcome {
    if a == b {
        a
    } else {
        Outcome::Maybe
    }
}

/// A base chain on a hook Ved evaluates.
#[derive(Clone, Debug, PartialEq)]
pub struct BaseChain {
    pub family: String,
    pub table: String,
    pub name: String,
    pub hook: String,
    pub prio: i64,
    pub policy_drop: bool,
}

impl BaseChain {
    /// `chain `input` of table `ip filter` (hook input, priority -10)`.
    pub fn describe(&self) -> String {
        format!(
            "chain `{}` of table `{} {}` (hook {}, priority {})",
            self.name, self.family, self.table, self.hook, self.prio
        )
    }
}

/// Why a port is not open: the first chain, in evaluation order, that drops it or may drop it.
#[derive(Clone, Debug, PartialEq)]
pub struct Blocker {
    pub chain: BaseChain,
    /// The chain may drop the port, depending on rules Ved cannot interpret or on the source.
    pub maybe: bool,
}

/// The verdict on one ruleset.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Effective {
    /// Ports open to a new TCP connection from outside: ascending, each once.
    pub open: Vec<i64>,
    /// Rules Ved could not interpret that made it assume a port may be blocked.
    pub warnings: Vec<String>,
}

/// A parsed view of the ruleset, borrowed from the JSON document.
pub struct Ruleset<'a> {
    items: Vec<&'a Json>,
    kinds: Vec<&'a str>,
}

impl<'a> Ruleset<'a> {
    pub fn new(doc: &'a Json) -> Ruleset<'a> {
        let mut items = Vec::new();
        let mut kinds = Vec::new();
        for item in doc["nftables"].as_array().into_iter().flatten() {
            if let Some((k, o @ Json::Object(_))) = item.as_object().and_then(|m| m.iter().next()) {
                kinds.push(k.as_str());
                items.push(o);
            }
        }
        Ruleset { items, kinds }
    }

    /// Every object of the given kind (`table`, `chain`, `rule`, `set`, ...).
    pub fn of(&self, kind: &str) -> impl Iterator<Item = &'a Json> + '_ {
        let kind = kind.to_string();
        self.kinds.iter().zip(self.items.iter()).filter(move |(k, _)| **k == kind).map(|(_, o)| *o)
    }

    /// Every object with its kind.
    pub fn all(&self) -> impl Iterator<Item = (&'a str, &'a Json)> + '_ {
        self.kinds.iter().copied().zip(self.items.iter().copied())
    }

    /// The rules of one chain, in order.
    pub fn rules(&self, family: &str, table: &str, chain: &str) -> Vec<&'a Json> {
        self.of("rule").filter(|r| r["family"] == family && r["table"] == table && r["chain"] == chain).collect()
    }

    /// The base chains Ved evaluates, in evaluation order.
    pub fn base_chains(&self) -> Vec<BaseChain> {
        let mut out: Vec<BaseChain> = self
            .of("chain")
            .filter(|c| matches!(c["family"].as_str(), Some("ip" | "inet")))
            .filter(|c| matches!(c["hook"].as_str(), Some("prerouting" | "input")))
            .map(|c| BaseChain {
                family: c["family"].as_str().unwrap_or_default().to_string(),
                table: c["table"].as_str().unwrap_or_default().to_string(),
                name: c["name"].as_str().unwrap_or_default().to_string(),
                hook: c["hook"].as_str().unwrap_or_default().to_string(),
                prio: c["prio"].as_i64().unwrap_or(0),
                policy_drop: c["policy"] == "drop",
            })
            .collect();
        // A stable sort: chains of equal priority keep listing order (the kernel's order is unspecified).
        out.sort_by_key(|c| (c.hook != "prerouting", c.prio));
        out
    }

    fn set_elems(&self, family: &str, table: &str, name: &str) -> Option<&'a Json> {
        self.of("set")
            .chain(self.of("map"))
            .find(|s| s["family"] == family && s["table"] == table && s["name"] == name)
            .map(|s| &s["elem"])
    }
}

/// The evaluation of one port, with the rules that made it uncertain.
struct Ctx<'r, 'a> {
    rs: &'r Ruleset<'a>,
    dport: i64,
    family: &'r str,
    table: &'r str,
    /// Rules met whose match or verdict Ved could not decide.
    unknown: Vec<String>,
}

/// Evaluates every base chain for a new connection to `dport`: `None` when it is open,
/// otherwise the first chain that blocks it, and the rules that made it uncertain.
pub fn blocker(rs: &Ruleset, chains: &[BaseChain], dport: i64) -> (Option<Blocker>, Vec<String>) {
    for c in chains {
        let mut cx = Ctx { rs, dport, family: &c.family, table: &c.table, unknown: Vec::new() };
        let policy = if c.policy_drop { Outcome::Blocked } else { Outcome::Pass };
        match cx.chain(&c.name, 0, policy) {
            Outcome::Pass | Outcome::Return => {}
            Outcome::Blocked => return (Some(Blocker { chain: c.clone(), maybe: false }), Vec::new()),
            Outcome::Maybe => {
                let why = cx
                    .unknown
                    .into_iter()
                    .map(|r| {
                        format!(
                            "{}: rule `{r}` may drop port {dport}; Ved cannot tell, so it assumes it does",
                            c.describe()
                        )
                    })
                    .collect();
                return (Some(Blocker { chain: c.clone(), maybe: true }), why);
            }
        }
    }
    (None, Vec::new())
}

/// The ports open to a new TCP connection from outside, ascending, each once.
pub fn effective_ports(doc: &Json) -> Effective {
    let rs = Ruleset::new(doc);
    let chains = rs.base_chains();
    let mut out = Effective::default();
    if chains.is_empty() {
        // Nothing filters input: every port is reachable. Ved's chain always exists after
        // a repair, so this is only seen in a namespace Ved has not set up yet.
        out.open = (1..=65535).collect();
        return out;
    }
    // The verdict can change only at a port some rule or set names, or just after one, so
    // one evaluation per segment between such boundaries decides the whole segment.
    let mut bounds = BTreeSet::from([1i64, 65536]);
    for r in rs.of("rule") {
        collect_numbers(&r["expr"], &mut bounds);
    }
    for s in rs.of("set").chain(rs.of("map")) {
        collect_numbers(&s["elem"], &mut bounds);
    }
    let bounds: Vec<i64> = bounds.into_iter().collect();
    let mut warned = BTreeSet::new();
    for w in bounds.windows(2) {
        let (lo, hi) = (w[0], w[1]);
        let (b, why) = blocker(&rs, &chains, lo);
        if b.is_none() {
            out.open.extend(lo..hi);
        }
        for line in why {
            if warned.insert(line.clone()) {
                out.warnings.push(line);
            }
        }
    }
    out
}

fn collect_numbers(j: &Json, out: &mut BTreeSet<i64>) {
    match j {
        Json::Number(n) => {
            if let Some(n) = n.as_i64().filter(|n| (1..=65535).contains(n)) {
                out.insert(n);
                out.insert(n + 1);
            }
        }
        Json::Array(xs) => xs.iter().for_each(|x| collect_numbers(x, out)),
        Json::Object(o) => o.values().for_each(|x| collect_numbers(x, out)),
        _ => {}
    }
}

/// How deep `jump`s may nest before Ved gives up on a path (the kernel allows 16).
const JUMP_DEPTH_MAX: usize = 16;

impl Ctx<'_, '_> {
    /// Runs chain `name`; `fall` is what happens when it ends without a verdict
    /// (the policy for a base chain, back to the caller for a jumped-to one).
    fn chain(&mut self, name: &str, depth: usize, fall: Outcome) -> Outcome {
        if depth > JUMP_DEPTH_MAX {
            self.unknown.push(format!("jump {name} (nested too deep)"));
            return Outcome::Maybe;
        }
        let rules = self.rs.rules(self.family, self.table, name);
        let exprs: Vec<&[Json]> =
            rules.iter().map(|r| r["expr"].as_array().map(Vec::as_slice).unwrap_or(&[])).collect();
        self.rules(&exprs, depth, fall)
    }

    fn rules(&mut self, rules: &[&[Json]], depth: usize, fall: Outcome) -> Outcome {
        let Some((first, rest)) = rules.split_first() else { return fall };
        let mut matched = Tri::T;
        for e in *first {
            if is_verdict(e) {
                break;
            }
            matched = matched.and(self.statement(e));
            if matched == Tri::F {
                return self.rules(rest, depth, fall);
            }
        }
        let when_matched = first.iter().find(|e| is_verdict(e)).map(|v| self.verdict(v, depth, fall));
        if matched == Tri::U {
            self.unknown.push(render_rule(first));
        }
        match (matched, when_matched) {
            // No verdict, or a jump whose chain came back: the next rule decides.
            (_, None) | (_, Some(None)) | (Tri::F, _) => self.rules(rest, depth, fall),
            (Tri::T, Some(Some(o))) => o,
            (Tri::U, Some(Some(o))) => either(o, self.rules(rest, depth, fall)),
        }
    }

    /// What a verdict does: `None` when evaluation goes on with the next rule.
    fn verdict(&mut self, v: &Json, depth: usize, fall: Outcome) -> Option<Outcome> {
        let Some((k, arg)) = v.as_object().and_then(|m| m.iter().next()) else { return Some(Outcome::Maybe) };
        Some(match k.as_str() {
            "accept" => Outcome::Pass,
            "drop" | "reject" => Outcome::Blocked,
            "return" => fall,
            "continue" => return None,
            "jump" => match arg["target"].as_str() {
                Some(t) => match self.chain(t, depth + 1, Outcome::Return) {
                    Outcome::Return => return None,
                    o => o,
                },
                None => Outcome::Maybe,
            },
            // After a goto the caller does not resume: its chain ends when the target does.
            "goto" => match arg["target"].as_str() {
                Some(t) => self.chain(t, depth + 1, fall),
                None => Outcome::Maybe,
            },
            _ => Outcome::Maybe,
        })
    }

    /// A statement that is not a verdict: a match, or something that cannot change the verdict.
    fn statement(&mut self, e: &Json) -> Tri {
        let Some((k, arg)) = e.as_object().and_then(|m| m.iter().next()) else { return Tri::U };
        match k.as_str() {
            "match" => self.matches(arg),
            // These count, log or annotate; they never decide.
            "counter" | "log" | "comment" | "notrack" | "mangle" | "meta" | "ct" | "nftrace" => Tri::T,
            // `limit`, `quota`, `xt` ... decide matching in ways Ved does not model.
            _ => Tri::U,
        }
    }

    fn matches(&self, m: &Json) -> Tri {
        let op = m["op"].as_str().unwrap_or("==");
        let left = &m["left"];
        let right = &m["right"];
        let positive = match op {
            "==" | "in" => true,
            "!=" => false,
            "<" | ">" | "<=" | ">=" => {
                let (true, Some(n)) = (is_tcp_dport(left), right.as_i64()) else { return Tri::U };
                let p = self.dport;
                return tri(match op {
                    "<" => p < n,
                    ">" => p > n,
                    "<=" => p <= n,
                    _ => p >= n,
                });
            }
            _ => return Tri::U,
        };
        let t = self.equals(left, right);
        if positive {
            t
        } else if let Some(proto) = left["payload"]["protocol"].as_str().filter(|p| *p != "tcp" && is_l4(p)) {
            // `udp dport != 53` still needs a UDP packet: false for TCP whatever the port.
            let _ = proto;
            Tri::F
        } else {
            t.not()
        }
    }

    /// Whether `left` equals (or is in) `right` for the packet.
    fn equals(&self, left: &Json, right: &Json) -> Tri {
        if let Some(p) = left.get("payload") {
            let proto = p["protocol"].as_str().unwrap_or_default();
            let field = p["field"].as_str().unwrap_or_default();
            return match (proto, field) {
                ("tcp", "dport") => self.port_in(right),
                ("tcp", _) => Tri::U,
                (l4, _) if is_l4(l4) => Tri::F,
                ("ip", "protocol") => names(right, &["tcp", "6"]),
                ("ip", "version") => names(right, &["4"]),
                ("ip6", _) => Tri::F,
                _ => Tri::U,
            };
        }
        if let Some(meta) = left.get("meta") {
            return match meta["key"].as_str().unwrap_or_default() {
                "l4proto" => names(right, &["tcp", "6"]),
                "nfproto" => names(right, &["ipv4", "2"]),
                "protocol" => names(right, &["ip", "2048"]),
                "iif" | "iifname" => {
                    // The packet comes from outside: not `lo`, and Ved does not know which interface.
                    if names(right, &["lo"]) == Tri::T {
                        if right.is_string() {
                            Tri::F
                        } else {
                            Tri::U
                        }
                    } else {
                        Tri::U
                    }
                }
                _ => Tri::U,
            };
        }
        if let Some(ct) = left.get("ct") {
            return match ct["key"].as_str().unwrap_or_default() {
                "state" => names(right, &["new"]),
                _ => Tri::U,
            };
        }
        Tri::U
    }

    /// Whether the packet's destination port is `right`: a number, a range, a set, or `@set`.
    fn port_in(&self, right: &Json) -> Tri {
        let p = self.dport;
        match right {
            Json::Number(n) => tri(n.as_i64() == Some(p)),
            Json::String(s) if s.starts_with('@') => match self.rs.set_elems(self.family, self.table, &s[1..]) {
                Some(Json::Array(xs)) => any_port(xs, p),
                // A named set with no elements holds nothing.
                Some(Json::Null) => Tri::F,
                _ => Tri::U,
            },
            Json::Object(o) => {
                if let Some(Json::Array(xs)) = o.get("set") {
                    any_port(xs, p)
                } else if let Some(r) = o.get("range") {
                    range_has(r, p)
                } else {
                    Tri::U
                }
            }
            Json::Array(xs) => any_port(xs, p),
            _ => Tri::U,
        }
    }
}

fn any_port(xs: &[Json], p: i64) -> Tri {
    let mut out = Tri::F;
    for x in xs {
        let t = match x {
            Json::Number(n) => tri(n.as_i64() == Some(p)),
            Json::Object(o) if o.contains_key("range") => range_has(&o["range"], p),
            // A set element with options (timeout, counter): its value is `val`.
            Json::Object(o) if o.contains_key("elem") => any_port(std::slice::from_ref(&o["elem"]["val"]), p),
            _ => Tri::U,
        };
        match t {
            Tri::T => return Tri::T,
            Tri::U => out = Tri::U,
            Tri::F => {}
        }
    }
    out
}

fn range_has(r: &Json, p: i64) -> Tri {
    match (r[0].as_i64(), r[1].as_i64()) {
        (Some(a), Some(b)) => tri(a <= p && p <= b),
        _ => Tri::U,
    }
}

fn tri(b: bool) -> Tri {
    if b {
        Tri::T
    } else {
        Tri::F
    }
}

fn is_l4(p: &str) -> bool {
    matches!(p, "udp" | "udplite" | "sctp" | "dccp" | "icmp" | "icmpv6" | "esp" | "ah" | "comp" | "igmp")
}

/// Whether `right` (a name, a number, a list or a set of them) contains one of `yes`:
/// true when it holds one, false when every element is known and none is, unknown otherwise.
fn names(right: &Json, yes: &[&str]) -> Tri {
    let one = |x: &Json| match x {
        Json::String(s) => tri(yes.contains(&s.as_str())),
        Json::Number(n) => tri(yes.contains(&n.to_string().as_str())),
        _ => Tri::U,
    };
    let list = match right {
        Json::Array(xs) => xs.as_slice(),
        Json::Object(o) => match o.get("set") {
            Some(Json::Array(xs)) => xs.as_slice(),
            _ => return Tri::U,
        },
        other => return one(other),
    };
    let mut out = Tri::F;
    for x in list {
        match one(x) {
            Tri::T => return Tri::T,
            Tri::U => out = Tri::U,
            Tri::F => {}
        }
    }
    out
}

fn is_tcp_dport(left: &Json) -> bool {
    left["payload"]["protocol"] == "tcp" && left["payload"]["field"] == "dport"
}

fn is_verdict(e: &Json) -> bool {
    e.as_object().and_then(|m| m.keys().next()).is_some_and(|k| {
        matches!(k.as_str(), "accept" | "drop" | "reject" | "jump" | "goto" | "return" | "continue" | "queue")
    })
}

/// A rule in nft's own text form, as far as Ved knows the expressions; anything else is
/// shown as its JSON, so the text is always faithful even when it is not pretty.
pub fn render_rule(exprs: &[Json]) -> String {
    exprs.iter().map(render_expr).collect::<Vec<_>>().join(" ")
}

fn render_expr(e: &Json) -> String {
    let raw = || e.to_string();
    let Some((k, arg)) = e.as_object().and_then(|m| m.iter().next()) else { return raw() };
    match k.as_str() {
        "match" => {
            let left = match (arg["left"].get("payload"), arg["left"].get("meta"), arg["left"].get("ct")) {
                (Some(p), _, _) => match (p["protocol"].as_str(), p["field"].as_str()) {
                    (Some(a), Some(b)) => format!("{a} {b}"),
                    _ => return raw(),
                },
                (_, Some(m), _) => match m["key"].as_str() {
                    Some(k @ ("iif" | "iifname" | "oif" | "oifname")) => k.to_string(),
                    Some(k) => format!("meta {k}"),
                    None => return raw(),
                },
                (_, _, Some(c)) => match c["key"].as_str() {
                    Some(k) => format!("ct {k}"),
                    None => return raw(),
                },
                _ => return raw(),
            };
            let Some(right) = render_value(&arg["right"], true) else { return raw() };
            match arg["op"].as_str() {
                Some("==" | "in") => format!("{left} {right}"),
                Some(op) => format!("{left} {op} {right}"),
                None => raw(),
            }
        }
        "accept" | "drop" | "return" | "continue" | "counter" | "log" => k.to_string(),
        "reject" => "reject".into(),
        "jump" | "goto" => match arg["target"].as_str() {
            Some(t) => format!("{k} {t}"),
            None => raw(),
        },
        _ => raw(),
    }
}

fn render_value(v: &Json, top: bool) -> Option<String> {
    Some(match v {
        Json::Number(n) => n.to_string(),
        Json::String(s) if s.starts_with('@') => s.clone(),
        Json::String(s) if matches!(s.as_str(), "lo") => format!("\"{s}\""),
        Json::String(s) => s.clone(),
        Json::Array(xs) if top => xs.iter().map(|x| render_value(x, false)).collect::<Option<Vec<_>>>()?.join(","),
        Json::Object(o) if o.contains_key("range") => {
            format!("{}-{}", render_value(&o["range"][0], false)?, render_value(&o["range"][1], false)?)
        }
        Json::Object(o) if o.contains_key("set") => {
            let xs = o["set"].as_array()?;
            format!("{{ {} }}", xs.iter().map(|x| render_value(x, false)).collect::<Option<Vec<_>>>()?.join(", "))
        }
        Json::Object(o) if o.contains_key("prefix") => {
            format!("{}/{}", o["prefix"]["addr"].as_str()?, o["prefix"]["len"].as_i64()?)
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(items: Json) -> Json {
        json!({ "nftables": items })
    }

    fn chain(family: &str, table: &str, name: &str, prio: i64, policy: &str) -> Json {
        json!({"chain": {"family": family, "table": table, "name": name, "handle": 1,
            "type": "filter", "hook": "input", "prio": prio, "policy": policy}})
    }

    fn rule(family: &str, table: &str, chain: &str, expr: Json) -> Json {
        json!({"rule": {"family": family, "table": table, "chain": chain, "handle": 9, "expr": expr}})
    }

    fn dport(op: &str, right: Json) -> Json {
        json!({"match": {"op": op, "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": right}})
    }

    fn ved(extra: Vec<Json>) -> Vec<Json> {
        let mut v = vec![
            chain("inet", "ved", "input", 0, "drop"),
            rule(
                "inet",
                "ved",
                "input",
                json!([{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, {"accept": null}]),
            ),
            rule(
                "inet",
                "ved",
                "input",
                json!([{"match": {"op": "==", "left": {"meta": {"key": "iif"}}, "right": "lo"}}, {"accept": null}]),
            ),
            rule("inet", "ved", "input", json!([dport("==", json!(443)), {"accept": null}])),
            rule("inet", "ved", "input", json!([dport("==", json!(80)), {"accept": null}])),
        ];
        v.extend(extra);
        v
    }

    #[test]
    fn with_no_chain_on_the_input_path_every_port_is_open() {
        assert_eq!(effective_ports(&doc(json!([]))).open.len(), 65535);
    }

    #[test]
    fn veds_chain_alone_opens_exactly_its_port_rules_in_canonical_order() {
        let e = effective_ports(&doc(json!(ved(vec![]))));
        assert_eq!(e.open, vec![80, 443]);
        assert!(e.warnings.is_empty());
    }

    #[test]
    fn ranges_negations_and_sets_in_veds_chain_open_what_they_say() {
        let e = effective_ports(&doc(json!(ved(vec![
            rule("inet", "ved", "input", json!([dport("==", json!({"range": [20, 22]})), {"accept": null}])),
            rule(
                "inet",
                "ved",
                "input",
                json!([dport("==", json!({"set": [8080, {"range": [9000, 9001]}]})), {"accept": null}])
            ),
        ]))));
        assert_eq!(e.open, vec![20, 21, 22, 80, 443, 8080, 9000, 9001]);
        let e = effective_ports(&doc(json!(ved(vec![rule(
            "inet",
            "ved",
            "input",
            json!([dport("!=", json!(80)), {"accept": null}])
        )]))));
        assert_eq!(e.open.len(), 65535, "`tcp dport != 80 accept` opens every port");
    }

    #[test]
    fn a_drop_at_the_top_of_veds_chain_closes_the_port() {
        let mut items = ved(vec![]);
        items.insert(1, rule("inet", "ved", "input", json!([dport("==", json!(80)), {"drop": null}])));
        assert_eq!(effective_ports(&doc(json!(items))).open, vec![443]);
    }

    #[test]
    fn a_foreign_chain_that_runs_earlier_and_drops_wins_and_is_named() {
        let mut items = ved(vec![]);
        items.push(chain("ip", "filter", "input", -10, "accept"));
        items.push(rule("ip", "filter", "input", json!([dport("==", json!(80)), {"drop": null}])));
        let d = doc(json!(items));
        assert_eq!(effective_ports(&d).open, vec![443]);
        let rs = Ruleset::new(&d);
        let (b, _) = blocker(&rs, &rs.base_chains(), 80);
        let b = b.unwrap();
        assert!(!b.maybe);
        assert_eq!(b.chain.describe(), "chain `input` of table `ip filter` (hook input, priority -10)");
    }

    #[test]
    fn an_accept_ends_only_its_own_chain_and_a_foreign_policy_drop_blocks() {
        // A foreign chain accepting 22 cannot open what Ved's chain drops.
        let mut items = ved(vec![]);
        items.push(chain("ip", "filter", "input", 10, "drop"));
        items.push(rule("ip", "filter", "input", json!([dport("==", json!(22)), {"accept": null}])));
        items.push(rule("ip", "filter", "input", json!([dport("==", json!(443)), {"accept": null}])));
        assert_eq!(effective_ports(&doc(json!(items))).open, vec![443], "80 falls to the foreign policy drop");
    }

    #[test]
    fn jumps_returns_other_protocols_and_loopback_are_followed() {
        let mut items = ved(vec![]);
        items.push(chain("ip", "filter", "input", -10, "accept"));
        items.push(json!({"chain": {"family": "ip", "table": "filter", "name": "sub", "handle": 2}}));
        items.push(rule("ip", "filter", "input", json!([{"jump": {"target": "sub"}}])));
        items.push(rule("ip", "filter", "input", json!([{"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 80}}, {"drop": null}])));
        items.push(rule("ip", "filter", "input", json!([{"match": {"op": "!=", "left": {"meta": {"key": "iif"}}, "right": "lo"}}, dport("==", json!(443)), {"counter": {"packets": 0, "bytes": 0}}, {"drop": null}])));
        items.push(rule("ip", "filter", "sub", json!([dport("==", json!(80)), {"return": null}])));
        items.push(rule("ip", "filter", "sub", json!([{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}}, dport("==", json!({"set": [80, 8080]})), {"drop": null}])));
        let e = effective_ports(&doc(json!(items)));
        assert_eq!(e.open, vec![80], "443 is dropped for non-loopback traffic; 80 returns before the sub-chain's drop");
        assert!(e.warnings.is_empty(), "{:?}", e.warnings);
    }

    #[test]
    fn an_uninterpretable_foreign_rule_that_may_drop_is_assumed_to_drop_with_a_warning() {
        let mut items = ved(vec![]);
        items.push(chain("ip", "filter", "input", -10, "accept"));
        // Depends on the source address, which Ved does not know.
        items.push(rule("ip", "filter", "input", json!([{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "10.0.0.0", "len": 8}}}}, dport("==", json!(80)), {"drop": null}])));
        // Something Ved cannot read at all.
        items.push(rule("ip", "filter", "input", json!([{"xt": {"type": "match", "name": "recent"}}, {"drop": null}])));
        let d = doc(json!(items));
        let e = effective_ports(&d);
        assert_eq!(e.open, Vec::<i64>::new(), "every port may be dropped by the unreadable rule");
        assert!(e.warnings.iter().any(|w| w.contains("ip saddr 10.0.0.0/8 tcp dport 80 drop")), "{:?}", e.warnings);
        assert!(e.warnings.iter().any(|w| w.contains("may drop port 443")), "{:?}", e.warnings);
        let rs = Ruleset::new(&d);
        assert!(blocker(&rs, &rs.base_chains(), 443).0.unwrap().maybe);
    }

    #[test]
    fn an_uninterpretable_foreign_accept_is_harmless_when_both_paths_pass() {
        let mut items = ved(vec![]);
        items.push(chain("ip", "filter", "input", -10, "accept"));
        items.push(rule(
            "ip",
            "filter",
            "input",
            json!([{"xt": {"type": "match", "name": "recent"}}, {"accept": null}]),
        ));
        let e = effective_ports(&doc(json!(items)));
        assert_eq!(e.open, vec![80, 443]);
    }

    #[test]
    fn a_real_tampered_ruleset_from_nft_is_read() {
        // `nft -j -a list ruleset` after every tampering the issue names, and a foreign
        // `ip filter` table at priority -10 that drops 80 and jumps to a sub-chain.
        let d: Json = serde_json::from_str(include_str!("fixtures/tampered.json")).unwrap();
        let e = effective_ports(&d);
        // Ved's chain drops 80 first; `tcp dport != 80 accept` opens everything else, but
        // the foreign chain's `tcp flags syn return` is unknown (it may skip the drops in `foo`),
        // and its `tcp dport { 1-5, 7 } log drop` drops those.
        assert!(!e.open.contains(&80));
        assert!(!e.open.contains(&3) && !e.open.contains(&7));
        assert!(e.open.contains(&22) && e.open.contains(&443) && e.open.contains(&8080));
        assert!(e.open.windows(2).all(|w| w[0] < w[1]), "ascending, each once");
    }

    #[test]
    fn rules_render_in_nfts_words() {
        let r = |e: Json| render_rule(e.as_array().unwrap());
        assert_eq!(r(json!([dport("==", json!({"range": [20, 30]})), {"accept": null}])), "tcp dport 20-30 accept");
        assert_eq!(r(json!([dport("!=", json!(80)), {"accept": null}])), "tcp dport != 80 accept");
        assert_eq!(
            r(json!([dport("==", json!({"set": [{"range": [1, 5]}, 7]})), {"log": null}, {"drop": null}])),
            "tcp dport { 1-5, 7 } log drop"
        );
        assert_eq!(
            r(
                json!([{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, {"accept": null}])
            ),
            "ct state established,related accept"
        );
        assert_eq!(
            r(json!([{"match": {"op": "==", "left": {"meta": {"key": "iif"}}, "right": "lo"}}, {"accept": null}])),
            "iif \"lo\" accept"
        );
        assert_eq!(r(json!([{"weird": 1}])), "{\"weird\":1}");
    }
}
