//! `ved.toml`: which driver serves each adapter name used in `emit`, which
//! watcher feeds which fields, and the retry and resync policies. Parsing keeps
//! byte spans so that every mistake is reported at its place in the file.

use serde::Deserialize;
use serde_spanned::Spanned;
use std::collections::BTreeMap;
use ved_check::{hir, Type};
use ved_syntax::{Diagnostic, FileId, Span};

/// The drivers Ved ships.
pub const DRIVERS: &[&str] = &["exec", "http", "process", "nftables", "sim", "log"];

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub adapters: BTreeMap<Spanned<String>, AdapterConfig>,
    #[serde(default)]
    pub watch: Vec<Spanned<WatchConfig>>,
    #[serde(default)]
    pub retry: RetryConfig,
    #[serde(default)]
    pub resync: ResyncConfig,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub store: StoreConfig,
    /// `[[instance]]`: instances declared by name, with their domain, initial state and
    /// per-instance adapter overrides.
    #[serde(default, rename = "instance")]
    pub instances: Vec<Spanned<InstanceConfig>>,
}

/// One declared instance. A domain with declared instances runs those instead of the one
/// instance named after the domain.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceConfig {
    pub name: Spanned<String>,
    pub domain: Spanned<String>,
    /// Initial values, field by field; the rest take their declared defaults.
    #[serde(default)]
    pub state: BTreeMap<Spanned<String>, Spanned<toml::Value>>,
    /// `[instance.adapters.NAME]`: keys of that adapter replaced for this instance alone.
    #[serde(default)]
    pub adapters: BTreeMap<Spanned<String>, AdapterOverride>,
}

/// The adapter keys an instance may override: what tells one instance's resource from another's.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdapterOverride {
    #[serde(default)]
    pub netns: Option<Spanned<String>>,
    #[serde(default)]
    pub table: Option<Spanned<String>>,
    #[serde(default)]
    pub command: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    pub url: Option<Spanned<String>>,
}

impl AdapterConfig {
    /// This adapter as one instance sees it: with the instance's overrides applied.
    pub fn with_override(&self, o: &AdapterOverride) -> AdapterConfig {
        let mut a = self.clone();
        if let Some(n) = &o.netns {
            a.netns = Some(n.get_ref().clone());
        }
        if let Some(t) = &o.table {
            a.table = Some(t.get_ref().clone());
        }
        if let Some(c) = &o.command {
            a.command = c.get_ref().clone();
        }
        if let Some(u) = &o.url {
            a.url = Some(u.get_ref().clone());
        }
        a
    }
}

impl Config {
    /// Every instance the program runs, in order: the declared ones, then one per domain
    /// that has none (named after the domain). Each with its domain's index.
    pub fn instance_names(&self, program_domains: &[String]) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        for i in &self.instances {
            let i = i.get_ref();
            if let Some(d) = program_domains.iter().position(|d| d == i.domain.get_ref()) {
                out.push((i.name.get_ref().clone(), d));
            }
        }
        for (d, name) in program_domains.iter().enumerate() {
            if !self.instances.iter().any(|i| i.get_ref().domain.get_ref() == name) {
                out.push((name.clone(), d));
            }
        }
        out
    }

    /// The instances a watcher feeds: the one it names, every instance of the domain it
    /// names, or every instance of the program's only domain.
    pub fn watch_targets(&self, w: &WatchConfig, program_domains: &[String]) -> Vec<(String, usize)> {
        let all = self.instance_names(program_domains);
        if let Some(i) = &w.instance {
            return all.into_iter().filter(|(n, _)| n == i.get_ref()).collect();
        }
        let domain = match &w.domain {
            Some(d) => program_domains.iter().position(|x| x == d.get_ref()),
            None if program_domains.len() == 1 => Some(0),
            None => None,
        };
        all.into_iter().filter(|(_, d)| Some(*d) == domain).collect()
    }

    /// The overrides one instance declares for one adapter, if any.
    pub fn override_for(&self, instance: &str, adapter: &str) -> Option<&AdapterOverride> {
        let i = self.instances.iter().find(|i| i.get_ref().name.get_ref() == instance)?;
        i.get_ref().adapters.iter().find(|(k, _)| k.get_ref() == adapter).map(|(_, v)| v)
    }
}

/// One adapter name bound to a driver. Which keys apply depends on the driver.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdapterConfig {
    pub driver: Spanned<String>,
    /// `exec`, `process`: the command line.
    #[serde(default)]
    pub command: Vec<String>,
    /// `http`: where intents are POSTed.
    #[serde(default)]
    pub url: Option<String>,
    /// `exec`, `http`: how long one intent may take.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// `nftables`: the family (default `inet`), table, chain and network namespace whose rules are managed.
    #[serde(default = "default_family")]
    pub family: String,
    #[serde(default)]
    pub table: Option<String>,
    #[serde(default)]
    pub chain: Option<String>,
    #[serde(default)]
    pub netns: Option<String>,
    /// `nftables`: the chain's priority on the input hook.
    #[serde(default)]
    pub priority: i64,
    /// `nftables`: rules placed after the built-in base rules and before the port rules,
    /// in nft's syntax (`"icmp type echo-request accept"`).
    #[serde(default)]
    pub base_rules: Vec<Spanned<String>>,
    /// `process`: how long a started member has to show the pool's command line (and, until
    /// one member has kept it that long, to keep it) before its `Start` counts as failed.
    #[serde(default)]
    pub start_grace_ms: Option<Spanned<u64>>,
    /// `sim`: actions whose intents fail, and how many times each (`{ "PageEngineers" = 2 }`).
    #[serde(default)]
    pub fail: BTreeMap<String, u32>,
    /// `sim`: how long each intent takes.
    #[serde(default)]
    pub delay_ms: u64,
}

fn default_family() -> String {
    "inet".into()
}

fn default_timeout_ms() -> u64 {
    10_000
}

/// `start_grace_ms` when not given: far longer than a fork and exec take, short enough that
/// a pool whose members never show up fails its first `Start` quickly.
pub const DEFAULT_START_GRACE_MS: u64 = 2_000;
/// The longest `start_grace_ms`: the pool's watcher waits while a `Start` is checked.
pub const MAX_START_GRACE_MS: u64 = 60_000;

impl AdapterConfig {
    /// The process pool's start grace, defaulted.
    pub fn start_grace(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.start_grace_ms.as_ref().map_or(DEFAULT_START_GRACE_MS, |g| *g.get_ref()))
    }
}

/// A watcher: turns the outside world into observations of some fields.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchConfig {
    /// The instance it feeds. Without it, every instance of `domain` (or of the program's
    /// only domain), each with its own adapter overrides.
    #[serde(default)]
    pub instance: Option<Spanned<String>>,
    #[serde(default)]
    pub domain: Option<Spanned<String>>,
    pub fields: Vec<Spanned<String>>,
    pub driver: Spanned<String>,
    /// `exec`: the command. Without `interval_ms` it runs for as long as Ved does and prints
    /// one JSON object (field to value) per line; with it, it is run every `interval_ms` and
    /// its output is one such object.
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub interval_ms: Option<u64>,
    /// `process`, `nftables`: the adapter whose resource is watched.
    #[serde(default)]
    pub adapter: Option<Spanned<String>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    #[serde(default = "d_initial")]
    pub initial_ms: u64,
    #[serde(default = "d_factor")]
    pub factor: u32,
    #[serde(default = "d_cap")]
    pub cap_ms: u64,
    /// Consecutive failures after which an instance is reported `degraded`.
    #[serde(default = "d_breaker")]
    pub breaker_after: u32,
    /// How long a watcher has to confirm an effect on a field it feeds before the
    /// transition counts as failed.
    #[serde(default = "d_confirm")]
    pub confirm_ms: u64,
}

fn d_initial() -> u64 {
    200
}
fn d_factor() -> u32 {
    2
}
fn d_cap() -> u64 {
    60_000
}
fn d_breaker() -> u32 {
    5
}
fn d_confirm() -> u64 {
    10_000
}

impl Default for RetryConfig {
    fn default() -> RetryConfig {
        RetryConfig {
            initial_ms: d_initial(),
            factor: d_factor(),
            cap_ms: d_cap(),
            breaker_after: d_breaker(),
            confirm_ms: d_confirm(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResyncConfig {
    /// Every watcher is re-read this often as a safety net; 0 turns it off.
    #[serde(default = "d_resync")]
    pub interval_ms: u64,
}

fn d_resync() -> u64 {
    60_000
}

impl Default for ResyncConfig {
    fn default() -> ResyncConfig {
        ResyncConfig { interval_ms: d_resync() }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Bearer token for mutating API calls; `VED_API_TOKEN` overrides it.
    #[serde(default)]
    pub token: Option<String>,
    /// Bearer token that reads need (`GET /v1/...`); `VED_API_READ_TOKEN` overrides it.
    /// Without one, reads are open to whoever reaches the port. The write token reads too.
    #[serde(default)]
    pub read_token: Option<String>,
    /// How many instances the daemon holds at most; `POST /v1/instances` past it is refused.
    #[serde(default = "d_max_instances")]
    pub max_instances: usize,
}

/// The default bound on instances: far above one daemon's working set, low enough that a
/// runaway client is refused before memory runs out.
pub const MAX_INSTANCES_DEFAULT: usize = 1_000_000;

fn d_max_instances() -> usize {
    MAX_INSTANCES_DEFAULT
}

impl Default for ApiConfig {
    fn default() -> ApiConfig {
        ApiConfig { token: None, read_token: None, max_instances: MAX_INSTANCES_DEFAULT }
    }
}

/// `[store]`: settings of the data directory.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// A file holding the key that authenticates audit entries (`--audit-key` overrides
    /// it). A relative path is taken from the directory of `ved.toml`.
    #[serde(default)]
    pub audit_key: Option<std::path::PathBuf>,
}

impl Config {
    /// A command given as a relative path with a `/` in it (`./probe.sh`, `scripts/dns.sh`)
    /// is taken relative to the directory of `ved.toml`, so a configuration and its scripts
    /// move together; a bare name (`pg_isready`) is looked up on `PATH` as usual.
    pub fn resolve_commands(&mut self, config_dir: &std::path::Path) {
        let resolve = |cmd: &mut Vec<String>| {
            if let Some(first) = cmd.first_mut() {
                let p = std::path::Path::new(first.as_str());
                if p.is_relative() && first.contains('/') {
                    *first = config_dir.join(p).display().to_string();
                }
            }
        };
        for a in self.adapters.values_mut() {
            resolve(&mut a.command);
        }
        // The audit key too, for the same reason: `ved run` may start from any directory.
        if let Some(k) = &mut self.store.audit_key {
            if k.is_relative() {
                *k = config_dir.join(&*k);
            }
        }
        for w in &mut self.watch {
            resolve(&mut w.get_mut().command);
        }
        for i in &mut self.instances {
            for o in i.get_mut().adapters.values_mut() {
                if let Some(c) = &mut o.command {
                    resolve(c.get_mut());
                }
            }
        }
    }
}

fn span(file: FileId, r: std::ops::Range<usize>) -> Span {
    Span::new(file, r.start, r.end)
}

/// Parses `ved.toml`. A syntax error, an unknown key or a value of the wrong kind is a diagnostic.
pub fn parse_config(file: FileId, text: &str) -> Result<Config, Diagnostic> {
    toml::from_str::<Config>(text).map_err(|e| {
        let at = e.span().map(|r| span(file, r)).unwrap_or_else(|| Span::new(file, 0, 0));
        // toml's message repeats the location; keep its first line, which says what is wrong.
        let msg = e.message().lines().next().unwrap_or("invalid configuration").to_string();
        Diagnostic::error(at, format!("invalid ved.toml: {msg}")).with_hint(
            "the sections are [adapters.NAME], [[watch]], [[instance]], [retry], [resync], [api] and [store]; see docs/reference.md",
        )
    })
}

/// Longest declared instance name.
pub const INSTANCE_NAME_MAX: usize = 128;

/// Whether a name can name an instance: 1 to 128 letters, digits, `_`, `-` or `.`, and not
/// `.` or `..` (names appear in URLs, keys and file names).
pub fn valid_instance_name(name: &str) -> bool {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    !name.is_empty() && name.len() <= INSTANCE_NAME_MAX && name.chars().all(ok) && name != "." && name != ".."
}

/// `[[instance]]`: names valid and unique, domains and fields that exist, initial values of
/// the fields' types, overrides of bound adapters with keys their drivers use.
fn validate_instances(config: &Config, file: FileId, program: &hir::Program, out: &mut Vec<Diagnostic>) {
    let mut seen: BTreeMap<&str, ()> = BTreeMap::new();
    let declared_domains: Vec<&str> = config.instances.iter().map(|i| i.get_ref().domain.get_ref().as_str()).collect();
    for inst in &config.instances {
        let i = inst.get_ref();
        let name = i.name.get_ref();
        let at = span(file, i.name.span());
        if !valid_instance_name(name) {
            out.push(
                Diagnostic::error(at, format!("`{name}` is not a valid instance name")).with_hint(format!(
                    "use 1 to {INSTANCE_NAME_MAX} letters, digits, `_`, `-` or `.` (not `.` or `..`)"
                )),
            );
        }
        if seen.insert(name, ()).is_some() {
            out.push(
                Diagnostic::error(at, format!("instance `{name}` is declared twice"))
                    .with_hint("instance names are unique"),
            );
        }
        // A domain without declared instances still runs one named after it: no clash with it.
        if program.domains.iter().any(|d| d.name == *name && !declared_domains.contains(&d.name.as_str())) {
            out.push(
                Diagnostic::error(at, format!("instance `{name}` has the name of domain `{name}`'s own instance"))
                    .with_hint("choose another name, or declare `{name}`'s instances too"),
            );
        }
        let Some(dom) = program.domains.iter().find(|d| d.name == *i.domain.get_ref()) else {
            out.push(
                Diagnostic::error(span(file, i.domain.span()), format!("no domain named `{}`", i.domain.get_ref()))
                    .with_hint(format!(
                        "the domains are {}",
                        program.domains.iter().map(|d| format!("`{}`", d.name)).collect::<Vec<_>>().join(", ")
                    )),
            );
            continue;
        };
        for (field, value) in &i.state {
            let Some((_, f)) = dom.field(field.get_ref()) else {
                out.push(
                    Diagnostic::error(
                        span(file, field.span()),
                        format!("`{}` has no field `{}`", dom.name, field.get_ref()),
                    )
                    .with_hint(format!(
                        "its fields are {}",
                        dom.fields.iter().map(|f| format!("`{}`", f.name)).collect::<Vec<_>>().join(", ")
                    )),
                );
                continue;
            };
            let json = serde_json::to_value(value.get_ref()).unwrap_or(serde_json::Value::Null);
            if let Err(e) = crate::json::from_json(&json, &f.ty) {
                out.push(
                    Diagnostic::error(span(file, value.span()), format!("field `{}`: {e}", field.get_ref()))
                        .with_hint(format!("`{}` is `{}`", field.get_ref(), describe(&f.ty))),
                );
            }
        }
        for (adapter, o) in &i.adapters {
            let Some(a) = config.adapters.iter().find(|(k, _)| k.get_ref() == adapter.get_ref()).map(|(_, v)| v) else {
                out.push(
                    Diagnostic::error(span(file, adapter.span()), format!("no adapter named `{}`", adapter.get_ref()))
                        .with_hint("an override changes an [adapters.NAME] section for this instance"),
                );
                continue;
            };
            let d = a.driver.get_ref().as_str();
            let wrong = |out: &mut Vec<Diagnostic>, key: &str, at: std::ops::Range<usize>, drivers: &str| {
                out.push(
                    Diagnostic::error(
                        span(file, at),
                        format!("`{key}` does not apply to adapter `{}` (driver `{d}`)", adapter.get_ref()),
                    )
                    .with_hint(format!("`{key}` overrides the {drivers} driver")),
                );
            };
            if let Some(x) = &o.netns {
                if d != "nftables" {
                    wrong(out, "netns", x.span(), "`nftables`");
                }
            }
            if let Some(x) = &o.table {
                if d != "nftables" {
                    wrong(out, "table", x.span(), "`nftables`");
                }
            }
            if let Some(x) = &o.command {
                if !matches!(d, "exec" | "process") {
                    wrong(out, "command", x.span(), "`exec` or `process`");
                } else if x.get_ref().is_empty() {
                    out.push(
                        Diagnostic::error(span(file, x.span()), "an empty command")
                            .with_hint("give the program and its arguments"),
                    );
                }
            }
            if let Some(x) = &o.url {
                if d != "http" {
                    wrong(out, "url", x.span(), "`http`");
                }
            }
        }
    }
}

/// What kind of value a watcher driver produces, if it fixes one.
fn watcher_type(driver: &str) -> Option<&'static [&'static str]> {
    match driver {
        "process" => Some(&["int"]),
        "nftables" => Some(&["list<int>", "set<int>"]),
        _ => None,
    }
}

/// Checks the configuration against the program: every `emit` adapter is bound,
/// every driver is known, every watched field exists with a type its driver can feed.
pub fn validate(config: &Config, file: FileId, program: &hir::Program) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let bound = |name: &str| config.adapters.keys().any(|k| k.get_ref() == name);
    for (name, a) in &config.adapters {
        let d = a.driver.get_ref();
        if !DRIVERS.contains(&d.as_str()) {
            out.push(
                Diagnostic::error(
                    span(file, a.driver.span()),
                    format!("unknown driver `{d}` for adapter `{}`", name.get_ref()),
                )
                .with_hint(format!(
                    "the drivers are {}",
                    DRIVERS.iter().map(|d| format!("`{d}`")).collect::<Vec<_>>().join(", ")
                )),
            );
            continue;
        }
        let need = |what: &str, ok: bool, out: &mut Vec<Diagnostic>| {
            if !ok {
                out.push(
                    Diagnostic::error(
                        span(file, name.span()),
                        format!("adapter `{}` uses driver `{d}`, which needs `{what}`", name.get_ref()),
                    )
                    .with_hint(format!("add `{what} = ...` under [adapters.{}]", name.get_ref())),
                );
            }
        };
        if let Some(g) = &a.start_grace_ms {
            let at = span(file, g.span());
            if d != "process" {
                out.push(
                    Diagnostic::error(at, format!("`start_grace_ms` applies to the `process` driver, not `{d}`"))
                        .with_hint(format!("remove it from [adapters.{}]", name.get_ref())),
                );
            } else if !(1..=MAX_START_GRACE_MS).contains(g.get_ref()) {
                out.push(
                    Diagnostic::error(
                        at,
                        format!("`start_grace_ms` must be from 1 to {MAX_START_GRACE_MS}, got {}", g.get_ref()),
                    )
                    .with_hint(format!("the default is {DEFAULT_START_GRACE_MS}")),
                );
            }
        }
        match d.as_str() {
            "exec" | "process" => need("command", !a.command.is_empty(), &mut out),
            "http" => need("url", a.url.is_some(), &mut out),
            "nftables" => {
                need("table", a.table.is_some(), &mut out);
                need("chain", a.chain.is_some(), &mut out);
                for r in &a.base_rules {
                    if let Some((msg, hint)) = base_rule_problem(r.get_ref()) {
                        out.push(Diagnostic::error(span(file, r.span()), msg).with_hint(hint));
                    }
                }
            }
            _ => {}
        }
        if d != "nftables" {
            if let Some(r) = a.base_rules.first() {
                out.push(
                    Diagnostic::error(
                        span(file, r.span()),
                        format!(
                            "`base_rules` belongs to the `nftables` driver; adapter `{}` uses `{d}`",
                            name.get_ref()
                        ),
                    )
                    .with_hint("remove `base_rules` from this adapter"),
                );
            }
        }
    }
    // Every adapter that a transition emits to must be bound.
    for d in &program.domains {
        for t in &d.transitions {
            let mut emits = Vec::new();
            collect_emits(&t.body, &mut emits);
            for (adapter, action, at) in emits {
                if !bound(adapter) {
                    out.push(
                        Diagnostic::error(
                            at,
                            format!("`emit {adapter}.{action}`: adapter `{adapter}` is not bound to a driver"),
                        )
                        .with_label("not in ved.toml")
                        .with_hint(format!(
                            "add [adapters.{adapter}] with a driver, e.g. `driver = \"exec\"` and a `command`"
                        )),
                    );
                }
            }
        }
    }
    for w in &config.watch {
        let wr = w.get_ref();
        let wspan = span(file, w.span());
        let driver = wr.driver.get_ref();
        if !DRIVERS.contains(&driver.as_str()) || matches!(driver.as_str(), "http" | "log" | "sim") {
            out.push(
                Diagnostic::error(span(file, wr.driver.span()), format!("`{driver}` cannot watch"))
                    .with_hint("watchers use the `exec`, `process` or `nftables` driver"),
            );
            continue;
        }
        let names: Vec<String> = program.domains.iter().map(|d| d.name.clone()).collect();
        let instances = config.instance_names(&names);
        let domain = match (&wr.instance, &wr.domain) {
            (Some(i), Some(d)) => {
                out.push(
                    Diagnostic::error(
                        span(file, d.span()),
                        "a watcher feeds one `instance` or every instance of a `domain`, not both",
                    )
                    .with_hint(format!("remove `domain`: instance `{}` already says which", i.get_ref())),
                );
                continue;
            }
            (Some(i), None) => match instances.iter().find(|(n, _)| n == i.get_ref()) {
                Some((_, d)) => &program.domains[*d],
                None => {
                    out.push(
                        Diagnostic::error(span(file, i.span()), format!("no instance named `{}`", i.get_ref()))
                            .with_hint(format!(
                                "the program runs {}",
                                instances.iter().map(|(n, _)| format!("`{n}`")).collect::<Vec<_>>().join(", ")
                            )),
                    );
                    continue;
                }
            },
            (None, Some(d)) => match program.domains.iter().find(|x| x.name == *d.get_ref()) {
                Some(x) => x,
                None => {
                    out.push(
                        Diagnostic::error(span(file, d.span()), format!("no domain named `{}`", d.get_ref()))
                            .with_hint(format!(
                                "the domains are {}",
                                names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
                            )),
                    );
                    continue;
                }
            },
            (None, None) if program.domains.len() == 1 => &program.domains[0],
            (None, None) => {
                out.push(
                    Diagnostic::error(wspan, "this watcher does not say which instances it feeds")
                        .with_hint("add `instance = \"NAME\"`, or `domain = \"NAME\"` for every instance of a domain: the program has several domains"),
                );
                continue;
            }
        };
        if let Some(a) = &wr.adapter {
            let target = config.adapters.iter().find(|(k, _)| k.get_ref() == a.get_ref()).map(|(_, v)| v);
            match target {
                None => out.push(
                    Diagnostic::error(span(file, a.span()), format!("no adapter named `{}`", a.get_ref()))
                        .with_hint("a watcher's `adapter` names an [adapters.NAME] section"),
                ),
                Some(t) if matches!(driver.as_str(), "process" | "nftables") && t.driver.get_ref() != driver => out
                    .push(
                        Diagnostic::error(
                            span(file, a.span()),
                            format!(
                                "a `{driver}` watcher needs a `{driver}` adapter; `{}` uses `{}`",
                                a.get_ref(),
                                t.driver.get_ref()
                            ),
                        )
                        .with_hint(format!("point `adapter` at an [adapters.NAME] with `driver = \"{driver}\"`")),
                    ),
                Some(_) => {}
            }
        } else if matches!(driver.as_str(), "process" | "nftables") {
            out.push(
                Diagnostic::error(wspan, format!("a `{driver}` watcher needs `adapter = \"NAME\"`"))
                    .with_hint("it watches the resource that adapter manages"),
            );
        }
        if driver == "exec" && wr.command.is_empty() {
            out.push(
                Diagnostic::error(wspan, "an `exec` watcher needs a `command`")
                    .with_hint("e.g. `command = [\"./probe.sh\"]`"),
            );
        }
        for f in &wr.fields {
            let Some((_, field)) = domain.field(f.get_ref()) else {
                out.push(
                    Diagnostic::error(
                        span(file, f.span()),
                        format!("`{}` has no field `{}`", domain.name, f.get_ref()),
                    )
                    .with_hint(format!(
                        "its fields are {}",
                        domain.fields.iter().map(|f| format!("`{}`", f.name)).collect::<Vec<_>>().join(", ")
                    )),
                );
                continue;
            };
            if let Some(types) = watcher_type(driver) {
                let ty = field.ty.to_string();
                if !types.contains(&ty.as_str()) {
                    out.push(
                        Diagnostic::error(
                            span(file, f.span()),
                            format!(
                                "field `{}` is `{ty}`, but a `{driver}` watcher reports {}",
                                f.get_ref(),
                                types.join(" or ")
                            ),
                        )
                        .with_hint(format!("watch a field of type {}", types.join(" or "))),
                    );
                }
            }
        }
        if wr.fields.is_empty() {
            out.push(Diagnostic::error(wspan, "this watcher feeds no field").with_hint("add `fields = [\"name\"]`"));
        }
    }
    validate_instances(config, file, program, &mut out);
    if config.retry.factor == 0 || config.retry.initial_ms == 0 || config.retry.cap_ms < config.retry.initial_ms {
        out.push(
            Diagnostic::error(
                Span::new(file, 0, 0),
                "[retry] needs initial_ms > 0, factor > 0 and cap_ms >= initial_ms",
            )
            .with_hint("the defaults are initial_ms = 200, factor = 2, cap_ms = 60000"),
        );
    }
    out
}

/// Why an nftables base rule cannot be used, if it cannot: nft itself checks the syntax
/// when Ved starts; this catches what would break Ved's one-line transactions or blur
/// the line between base rules and the program's port rules.
fn base_rule_problem(rule: &str) -> Option<(String, String)> {
    let r = rule.trim();
    if r.is_empty() {
        return Some((
            "an empty base rule".into(),
            "write a rule in nft's syntax, e.g. \"icmp type echo-request accept\"".into(),
        ));
    }
    if r.contains(['\n', '\r', ';', '#']) {
        return Some((
            format!("base rule `{r}` holds a newline, `;` or `#`"),
            "give one rule per entry, without comments".into(),
        ));
    }
    let words: Vec<&str> = r.split_whitespace().collect();
    if let ["tcp", "dport", p, "accept"] = words.as_slice() {
        if p.parse::<u16>().is_ok() {
            return Some((
                format!("base rule `{r}` is a port rule"),
                "ports are opened by the program (`OpenPorts`), which the watcher would otherwise report as drift"
                    .into(),
            ));
        }
    }
    None
}

fn collect_emits<'a>(body: &'a [hir::Stmt], out: &mut Vec<(&'a str, &'a str, Span)>) {
    for s in body {
        match &s.kind {
            hir::StmtKind::Emit { adapter, action, .. } => out.push((adapter, action, s.span)),
            hir::StmtKind::If { then_body, else_body, .. } => {
                collect_emits(then_body, out);
                collect_emits(else_body, out);
            }
            _ => {}
        }
    }
}

/// The type a watcher's field must have, for messages.
pub fn describe(ty: &Type) -> String {
    ty.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nftables_base_rules_are_checked_where_they_are_written() {
        for (rule, msg) in [
            ("", "an empty base rule"),
            ("tcp dport 22 accept", "is a port rule"),
            ("icmp accept; tcp dport 1 accept", "holds a newline"),
        ] {
            assert!(base_rule_problem(rule).unwrap().0.contains(msg), "{rule}");
        }
        assert_eq!(base_rule_problem("icmp type echo-request accept"), None);
        assert_eq!(base_rule_problem("tcp dport 1-100 accept"), None, "a range is the user's choice");
        let text = "[adapters.F]\ndriver = \"nftables\"\ntable = \"ved\"\nchain = \"input\"\nbase_rules = [\"icmp type echo-request accept\", \"tcp dport 22 accept\"]\n";
        let c = parse_config(FileId(0), text).unwrap();
        let a = c.adapters.values().next().unwrap();
        assert_eq!(a.priority, 0);
        let bad = &a.base_rules[1];
        assert_eq!(&text[bad.span()], "\"tcp dport 22 accept\"", "the diagnostic points at the entry");
    }

    #[test]
    fn relative_commands_are_taken_from_the_configuration_directory() {
        let text = "[adapters.A]\ndriver = \"exec\"\ncommand = [\"./dns.sh\", \"x\"]\n\n[adapters.B]\ndriver = \"exec\"\ncommand = [\"pg_isready\"]\n\n[[watch]]\nfields = [\"f\"]\ndriver = \"exec\"\ncommand = [\"scripts/probe.sh\"]\n\n[[watch]]\nfields = [\"g\"]\ndriver = \"exec\"\ncommand = [\"/usr/bin/true\"]\n";
        let mut c = parse_config(FileId(0), text).unwrap();
        c.resolve_commands(std::path::Path::new("/etc/ved"));
        let cmd = |n: &str| c.adapters.iter().find(|(k, _)| k.get_ref() == n).unwrap().1.command.clone();
        assert_eq!(cmd("A"), vec!["/etc/ved/./dns.sh".to_string(), "x".into()]);
        assert_eq!(cmd("B"), vec!["pg_isready".to_string()], "a bare name stays for PATH lookup");
        assert_eq!(c.watch[0].get_ref().command, vec!["/etc/ved/scripts/probe.sh".to_string()]);
        assert_eq!(c.watch[1].get_ref().command, vec!["/usr/bin/true".to_string()]);
    }

    #[test]
    fn the_audit_key_path_is_taken_from_the_configuration_directory() {
        let mut c = parse_config(FileId(0), "[store]\naudit_key = \"keys/audit.key\"\n").unwrap();
        c.resolve_commands(std::path::Path::new("/etc/ved"));
        assert_eq!(c.store.audit_key.as_deref(), Some(std::path::Path::new("/etc/ved/keys/audit.key")));
        let mut c = parse_config(FileId(0), "[store]\naudit_key = \"/secure/audit.key\"\n").unwrap();
        c.resolve_commands(std::path::Path::new("/etc/ved"));
        assert_eq!(c.store.audit_key.as_deref(), Some(std::path::Path::new("/secure/audit.key")));
        let e = parse_config(FileId(0), "[store]\naudit_keys = \"k\"\n").unwrap_err();
        assert!(e.message.contains("audit_keys"), "{}", e.message);
        assert_eq!(parse_config(FileId(0), "").unwrap().store.audit_key, None);
    }
}
