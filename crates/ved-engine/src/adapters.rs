//! Adapter dispatch: which [`Actuator`](ved_adapters::Actuator) serves each adapter
//! name, built from `ved.toml` ([`build_adapters`]), and how intents reach it (inline,
//! on worker threads, or queued for a simulation).

use std::collections::BTreeMap;
use std::sync::Arc;
use ved_vm::CompiledProgram;

/// Which driver serves each adapter name, and how intents reach them.
pub struct Adapters {
    pub by_name: BTreeMap<String, Arc<dyn ved_adapters::Actuator>>,
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
        Adapters { by_name: BTreeMap::new(), fallback: Arc::new(ved_adapters::LogDriver), pool: None, manual: None }
    }

    /// One driver for every name, inline (tests).
    pub fn single(driver: Arc<dyn ved_adapters::Actuator>) -> Adapters {
        Adapters { by_name: BTreeMap::new(), fallback: driver, pool: None, manual: None }
    }

    /// Hands an intent to the driver bound to its adapter name. Returns the outcome when it
    /// was carried out inline; `None` when it went to the worker pool or the manual queue,
    /// whose result comes back later as an `Inbound::Result`.
    pub fn dispatch(&self, req: ved_adapters::IntentRequest) -> Option<ved_adapters::ActionResult> {
        if let Some(queue) = &self.manual {
            queue.lock().unwrap_or_else(|p| p.into_inner()).push(req);
            return None;
        }
        let driver = self.by_name.get(&req.adapter).unwrap_or(&self.fallback).clone();
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
            fallback: Arc::new(ved_adapters::LogDriver),
            pool: None,
            manual: Some(queue),
        }
    }
}

pub type Watchers = Vec<Box<dyn ved_adapters::Watcher>>;

/// For each instance, the slots of the fields that `ved.toml`'s watchers feed.
pub fn watched_fields(config: &ved_adapters::config::Config, program: &CompiledProgram) -> BTreeMap<String, Vec<u16>> {
    let mut out: BTreeMap<String, Vec<u16>> = BTreeMap::new();
    for w in &config.watch {
        let w = w.get_ref();
        let instance = match &w.instance {
            Some(i) => i.get_ref().clone(),
            None => program.domains.first().map(|d| d.name.clone()).unwrap_or_default(),
        };
        let Some(dom) = program.domains.iter().find(|d| d.name == instance) else { continue };
        for f in &w.fields {
            if let Some(slot) = dom.fields.iter().position(|(n, _)| n == f.get_ref()) {
                out.entry(instance.clone()).or_default().push(slot as u16);
            }
        }
    }
    out
}

/// Builds the drivers and watchers that `ved.toml` describes.
pub fn build_adapters(
    config: &ved_adapters::config::Config,
    program: &CompiledProgram,
    sink: ved_adapters::Sink,
) -> Result<(Adapters, Watchers), String> {
    use ved_adapters::{exec, http, nftables, process, sim};
    let mut by_name: BTreeMap<String, Arc<dyn ved_adapters::Actuator>> = BTreeMap::new();
    let mut pools: BTreeMap<String, Arc<process::Pool>> = BTreeMap::new();
    let mut firewalls: BTreeMap<String, Arc<nftables::Firewall>> = BTreeMap::new();
    for (name, a) in &config.adapters {
        let name = name.get_ref().clone();
        let timeout = std::time::Duration::from_millis(a.timeout_ms);
        let driver: Arc<dyn ved_adapters::Actuator> = match a.driver.get_ref().as_str() {
            "exec" => Arc::new(exec::ExecDriver { command: a.command.clone(), timeout }),
            "http" => Arc::new(http::HttpDriver::new(a.url.clone().unwrap_or_default(), timeout)),
            "process" => {
                let pool = process::Pool::new(a.command.clone(), a.start_grace());
                pools.insert(name.clone(), pool.clone());
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
                firewalls.insert(name.clone(), fw.clone());
                Arc::new(nftables::NftDriver { fw })
            }
            "sim" => Arc::new(sim::SimDriver::new(a.fail.clone(), a.delay_ms)),
            "log" => Arc::new(ved_adapters::LogDriver),
            other => return Err(format!("adapter `{name}`: the `{other}` driver is not available in this build")),
        };
        by_name.insert(name, driver);
    }
    let mut watchers: Watchers = Vec::new();
    for (i, w) in config.watch.iter().enumerate() {
        let w = w.get_ref();
        let instance = match &w.instance {
            Some(i) => i.get_ref().clone(),
            None => program.domains.first().map(|d| d.name.clone()).unwrap_or_default(),
        };
        let source = format!("watch#{}", i + 1);
        match w.driver.get_ref().as_str() {
            "exec" => watchers.push(Box::new(exec::ExecWatcher {
                instance,
                command: w.command.clone(),
                interval: w.interval_ms.map(std::time::Duration::from_millis),
                timeout: std::time::Duration::from_secs(10),
                source,
            })),
            "process" => {
                let adapter = w.adapter.as_ref().map(|a| a.get_ref().clone()).unwrap_or_default();
                let pool = pools
                    .get(&adapter)
                    .cloned()
                    .ok_or_else(|| format!("watch #{}: `{adapter}` is not a process adapter", i + 1))?;
                let field = w.fields.first().map(|f| f.get_ref().clone()).unwrap_or_default();
                watchers.push(Box::new(process::ProcessWatcher { pool, instance, field, source }));
            }
            "nftables" => {
                let adapter = w.adapter.as_ref().map(|a| a.get_ref().clone()).unwrap_or_default();
                let fw = firewalls
                    .get(&adapter)
                    .cloned()
                    .ok_or_else(|| format!("watch #{}: `{adapter}` is not an nftables adapter", i + 1))?;
                let field = w.fields.first().map(|f| f.get_ref().clone()).unwrap_or_default();
                fw.report_as(&instance, &source);
                watchers.push(Box::new(nftables::NftWatcher { fw, instance, field, source }));
            }
            other => return Err(format!("watch #{}: the `{other}` watcher is not available in this build", i + 1)),
        }
    }
    let pool = Some(ved_adapters::DeliveryPool::new(sink));
    Ok((Adapters { by_name, fallback: Arc::new(ved_adapters::LogDriver), pool, manual: None }, watchers))
}
