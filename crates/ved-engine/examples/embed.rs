//! Embedding Ved in a Rust program with an adapter of your own.
//!
//! The program's `Firewall` adapter is served here by an in-memory firewall
//! that implements `ved_adapters::Actuator`. Ved opens the wanted ports, then an
//! observation reports a rogue port and Ved closes it through the same trait.
//!
//! Run it with `cargo run -p ved-engine --example embed`; the test suite runs it too.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use ved_adapters::{ActionError, ActionResult, Actuator, IntentRequest};
use ved_engine::{EngineEvent, Observation};

/// A firewall that lives in memory: the set of open ports.
#[derive(Default)]
pub struct MemoryFirewall {
    pub open: Mutex<BTreeSet<i64>>,
}

impl Actuator for MemoryFirewall {
    fn deliver(&self, intent: &IntentRequest) -> ActionResult {
        let ports: Vec<i64> = intent
            .args
            .first()
            .and_then(|a| a.as_array())
            .ok_or_else(|| ActionError::rejected(format!("{} takes a list of ports", intent.action)))?
            .iter()
            .filter_map(|p| p.as_i64())
            .collect();
        let mut open = self.open.lock().map_err(|_| ActionError::failed("the firewall's lock is poisoned"))?;
        match intent.action.as_str() {
            "OpenPorts" => open.extend(ports),
            "ClosePorts" => open.retain(|p| !ports.contains(p)),
            other => return Err(ActionError::rejected(format!("no action `{other}`"))),
        }
        Ok(())
    }
}

/// Runs seed 000 against the in-memory firewall; returns the ports left open.
pub fn run() -> Result<Vec<i64>, Box<dyn std::error::Error>> {
    let program = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/security_policy.ved");
    // Typed loading: nothing is printed; a bad program comes back as diagnostics to render.
    let loaded = ved_engine::load::read_program(&[program])?;
    let firewall = Arc::new(MemoryFirewall::default());
    // The engine: the program, its named adapters, and (here) no data directory: in memory.
    // Events are collected as values.
    let mut ved = ved_engine::Builder::new(loaded).adapter("Firewall", firewall.clone()).seed(7).start(Vec::new())?;
    // At start the wanted ports are opened through the trait.
    // Then the outside world reports a rogue port; Ved closes it.
    firewall.open.lock().map_err(|e| e.to_string())?.insert(22);
    let ports = serde_json::json!([80, 443, 22]);
    ved.observe(Observation::set("SecurityPolicy", "probe", [("actual_ports".to_string(), ports)]))?;
    ved.run_until_idle()?;
    let status = ved.status("SecurityPolicy").map(|s| s.as_str()).unwrap_or("missing");
    println!("status: {status}");
    let events: Vec<EngineEvent> = ved.finish()?;
    for ev in &events {
        if let EngineEvent::Intent { action, args, .. } = ev {
            let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
            println!("intent: Firewall.{action}({})", args.join(", "));
        }
    }
    let open: Vec<i64> = firewall.open.lock().map_err(|e| e.to_string())?.iter().copied().collect();
    println!("open ports: {open:?}");
    Ok(open)
}

fn main() {
    match run() {
        Ok(open) if open == [80, 443] => {}
        Ok(open) => {
            eprintln!("error: expected ports [80, 443] open, found {open:?}");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
