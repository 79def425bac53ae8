//! Adapter dispatch: which [`Actuator`](ved_adapters::Actuator) serves each adapter
//! name, built from `ved.toml` ([`build_adapters`]), and how intents reach it (inline,
//! on worker threads, or queued for a simulation).

use std::collections::BTreeMap;
use std::sync::Arc;
use ved_vm::CompiledProgram;

/// Which driver serves each adapter name, and how intents reach them.
pub struct Adapters {
    pub by_name: BTreeMap<String, Arc<dyn ved_adapters::Actuator>>,
    /// (instance, adapter name): drivers built with an instance's `[instance.adapters.NAME]`
    /// overrides; they take precedence over `by_name` for that instance.
    pub by_instance: BTreeMap<(String, String), Arc<dyn ved_adapters::Actuator>>,
    /// For names not in `by_name` (without a configuration: every name).
    pub fallback: Arc<dyn ved_adapters::Actuator>,
    /// Worker threads; `None` delivers inline, on the driver's own thread.
    pub pool: Option<ved_adapters::DeliveryPool>,
    /// When set, released intents are only queued here, and their results come back
    /// through [`Engine::handle_inbound`]: a simulation decides when, how and how often.
    pub manual: Option<Arc<std::sync::Mutex<Vec<ved_adapters::IntentRequest>>>>,
}

impl Adapters {
    /// Everything acknowledged at once by the logging driver, inline.
    pub fn logging() -> Adapters {
        Adapters {
            by_name: BTreeMap::new(),
            by_instance: BTreeMap::new(),
            fallback: Arc::new(ved_adapters::LogDriver),
            pool: None,
            manual: None,
        }
    }

    /// One driver for every name, inline (tests).
    pub fn single(driver: Arc<dyn ved_adapters::Actuator>) -> Adapters {
        Adapters { by_name: BTreeMap::new(), by_instance: BTreeMap::new(), fallback: driver, pool: None, manual: None }
    }

    /// Hands an intent to the driver bound to its adapter name. Returns the outcome when it
    /// was carried out inline; `None` when it went to the worker pool or the manual queue,
    /// whose result comes back later as an `Inbound::Result`.
    pub fn dispatch(&self, req: ved_adapters::IntentRequest) -> Option<ved_adapters::ActionResult> {
        if let Some(queue) = &self.manual {
            queue.lock().unwrap_or_else(|p| p.into_inner()).push(req);
            return None;
        }
        let driver = self
            .by_instance
            .get(&(req.instance.clone(), req.adapter.clone()))
            .or_else(|| self.by_name.get(&req.adapter))
            .unwrap_or(&self.fallback)
            .clone();
        match &self.pool {
            Some(pool) => {
                pool.submit(driver, req);
                None
            }
            None => {
                let mut outcome = Ok(());
                driver.deliver_then(&req, &mut |r| outcome = r);
                Some(outcome)
            }
        }
    }

    /// Intents queue up in `queue`; results are fed back by the caller.
    pub fn manual(queue: Arc<std::sync::Mutex<Vec<ved_adapters::IntentRequest>>>) -> Adapters {
        Adapters {
            by_name: BTreeMap::new(),
            by_instance: BTreeMap::new(),
            fallback: Arc::new(ved_adapters::LogDriver),
            pool: None,
            manual: Some(queue),
        }
    }
}

pub type Watchers = Vec<Box<dyn ved_adapters::Watcher>>;

/// For each instance, the slots of the fields that `ved.toml`'s watchers feed.
pub fn watched_fields(config: &ved_adapters::config::Config, program: &CompiledProgram) -> BTreeMap<String, Vec<u16>> {
    let names: Vec<String> = program.domains.iter().map(|d| d.name.clone()).collect();
    let mut out: BTreeMap<String, Vec<u16>> = BTreeMap::new();
    for w in &config.watch {
        let w = w.get_ref();
        for (instance, d) in config.watch_targets(w, &names) {
            let dom = &program.domains[d];
            for f in &w.fields {
                if let Some(slot) = dom.fields.iter().position(|(n, _)| n == f.get_ref()) {
                    out.entry(instance.clone()).or_default().push(slot as u16);
                }
            }
        }
    }
    out
}

/// A declared instance: its name, its domain's index, and its initial values by slot.
pub type Declared = (String, usize, Vec<(u16, ved_vm::Value)>);

/// The instances `ved.toml` declares, with their domains and initial values, checked
/// against the program (`ved check --config` reports the same problems with locations).
pub fn declared_instances(
    config: &ved_adapters::config::Config,
    program: &CompiledProgram,
) -> Result<Vec<Declared>, String> {
    let mut out = Vec::new();
    for i in &config.instances {
        let i = i.get_ref();
        let name = i.name.get_ref();
        let d = program
            .domains
            .iter()
            .position(|d| d.name == *i.domain.get_ref())
            .ok_or_else(|| format!("instance `{name}`: no domain named `{}`", i.domain.get_ref()))?;
        let dom = &program.domains[d];
        let mut state = Vec::new();
        for (field, value) in &i.state {
            let slot = dom
                .fields
                .iter()
                .position(|(n, _)| n == field.get_ref())
                .ok_or_else(|| format!("instance `{name}`: `{}` has no field `{}`", dom.name, field.get_ref()))?;
            let json = serde_json::to_value(value.get_ref()).map_err(|e| e.to_string())?;
            let v = crate::json::from_json(&json, &dom.fields[slot].1)
                .map_err(|e| format!("instance `{name}`, field `{}`: {e}", field.get_ref()))?;
            state.push((slot as u16, v));
        }
        out.push((name.clone(), d, state));
    }
    Ok(out)
}

/// Builds the drivers and watchers that `ved.toml` describes.
pub fn build_adapters(
    config: &ved_adapters::config::Config,
    program: &CompiledProgram,
    sink: ved_adapters::Sink,
) -> Result<(Adapters, Watchers), String> {
    use ved_adapters::config::AdapterConfig;
    use ved_adapters::{exec, http, nftables, process, sim};
    // Resources are keyed by (instance, adapter): `None` for the adapter as configured,
    // `Some(instance)` for an instance's overridden copy.
    type Key = (Option<String>, String);
    let mut by_name: BTreeMap<String, Arc<dyn ved_adapters::Actuator>> = BTreeMap::new();
    let mut by_instance: BTreeMap<(String, String), Arc<dyn ved_adapters::Actuator>> = BTreeMap::new();
    let mut pools: BTreeMap<Key, Arc<process::Pool>> = BTreeMap::new();
    let mut firewalls: BTreeMap<Key, Arc<nftables::Firewall>> = BTreeMap::new();
    let mut make = |key: Key, a: &AdapterConfig| -> Result<Arc<dyn ved_adapters::Actuator>, String> {
        let timeout = std::time::Duration::from_millis(a.timeout_ms);
        Ok(match a.driver.get_ref().as_str() {
            "exec" => Arc::new(exec::ExecDriver { command: a.command.clone(), timeout }),
            "http" => Arc::new(http::HttpDriver::new(a.url.clone().unwrap_or_default(), timeout)),
            "process" => {
                let pool = process::Pool::new(a.command.clone(), a.start_grace());
                pools.insert(key, pool.clone());
                Arc::new(process::ProcessDriver { pool })
            }
            "nftables" => {
                let chain = nftables::Chain {
                    family: a.family.clone(),
                    table: a.table.clone().unwrap_or_default(),
                    chain: a.chain.clone().unwrap_or_default(),
                    netns: a.netns.clone(),
                    timeout,
                    priority: a.priority,
                    base_rules: a.base_rules.iter().map(|r| r.get_ref().clone()).collect(),
                };
                let fw = nftables::Firewall::new(chain, sink.clone());
                firewalls.insert(key, fw.clone());
                Arc::new(nftables::NftDriver { fw })
            }
            "sim" => Arc::new(sim::SimDriver::new(a.fail.clone(), a.delay_ms)),
            "log" => Arc::new(ved_adapters::LogDriver),
            other => return Err(format!("adapter `{}`: the `{other}` driver is not available in this build", key.1)),
        })
    };
    for (name, a) in &config.adapters {
        let name = name.get_ref().clone();
        let driver = make((None, name.clone()), a)?;
        by_name.insert(name, driver);
    }
    for inst in &config.instances {
        let inst = inst.get_ref();
        for (adapter, o) in &inst.adapters {
            let Some(a) = config.adapters.iter().find(|(k, _)| k.get_ref() == adapter.get_ref()).map(|(_, v)| v) else {
                return Err(format!(
                    "instance `{}` overrides adapter `{}`, which is not configured",
                    inst.name.get_ref(),
                    adapter.get_ref()
                ));
            };
            let key = (Some(inst.name.get_ref().clone()), adapter.get_ref().clone());
            let driver = make(key, &a.with_override(o))?;
            by_instance.insert((inst.name.get_ref().clone(), adapter.get_ref().clone()), driver);
        }
    }
    let names: Vec<String> = program.domains.iter().map(|d| d.name.clone()).collect();
    let mut watchers: Watchers = Vec::new();
    for (i, w) in config.watch.iter().enumerate() {
        let w = w.get_ref();
        let source = format!("watch#{}", i + 1);
        // A watcher without `instance` feeds every instance of its domain, each through that
        // instance's own adapter (its overrides).
        for (instance, _) in config.watch_targets(w, &names) {
            let adapter = w.adapter.as_ref().map(|a| a.get_ref().clone()).unwrap_or_default();
            let own = (Some(instance.clone()), adapter.clone());
            let shared = (None, adapter.clone());
            let field = w.fields.first().map(|f| f.get_ref().clone()).unwrap_or_default();
            let source = source.clone();
            match w.driver.get_ref().as_str() {
                "exec" => watchers.push(Box::new(exec::ExecWatcher {
                    instance,
                    command: w.command.clone(),
                    interval: w.interval_ms.map(std::time::Duration::from_millis),
                    timeout: std::time::Duration::from_secs(10),
                    source,
                })),
                "process" => {
                    let pool = pools
                        .get(&own)
                        .or_else(|| pools.get(&shared))
                        .cloned()
                        .ok_or_else(|| format!("watch #{}: `{adapter}` is not a process adapter", i + 1))?;
                    watchers.push(Box::new(process::ProcessWatcher { pool, instance, field, source }));
                }
                "nftables" => {
                    let fw = firewalls
                        .get(&own)
                        .or_else(|| firewalls.get(&shared))
                        .cloned()
                        .ok_or_else(|| format!("watch #{}: `{adapter}` is not an nftables adapter", i + 1))?;
                    fw.report_as(&instance, &source);
                    watchers.push(Box::new(nftables::NftWatcher { fw, instance, field, source }));
                }
                other => return Err(format!("watch #{}: the `{other}` watcher is not available in this build", i + 1)),
            }
        }
    }
    let pool = Some(ved_adapters::DeliveryPool::new(sink));
    Ok((Adapters { by_name, by_instance, fallback: Arc::new(ved_adapters::LogDriver), pool, manual: None }, watchers))
}
