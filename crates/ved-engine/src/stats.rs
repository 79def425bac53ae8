//! What the engine counts for `GET /metrics`, and its rendering in the Prometheus text
//! format (through `prometheus-client`).
//!
//! The driver thread counts in plain integers (a slice costs an array increment, not a
//! labelled lookup behind a lock); a scrape asks the driver for the text, which builds a
//! registry from those counts, from the instances as they are now, and from the
//! histograms that the store's writer and the etcd client fill on their own threads.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use rustc_hash::FxHashMap;
use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use ved_runtime::{Instance, RetryPolicy, Status};
use ved_vm::CompiledProgram;

type Labels = Vec<(&'static str, String)>;

/// The statuses an instance can rest in, each reported for every domain (a zero is a
/// value an alert can compare with; a missing series is not).
const STATUSES: [Status; 6] =
    [Status::Stable, Status::Converging, Status::Waiting, Status::Stuck, Status::Livelock, Status::Degraded];

/// Counts kept by the driver thread.
#[derive(Default)]
pub(crate) struct Stats {
    /// Slices run, by domain index.
    slices: Vec<u64>,
    /// Retries scheduled, by domain index.
    retries: Vec<u64>,
    /// Intents by adapter, action and result (`ok`, `failed`).
    intents: BTreeMap<(Arc<str>, Arc<str>, &'static str), u64>,
    /// Intents handed to a worker or a queue, whose result comes back later: what they were.
    in_flight: FxHashMap<String, (Arc<str>, Arc<str>)>,
    /// Each watcher's (or other source's) last reading, on the engine's time line.
    readings: BTreeMap<String, u64>,
}

fn bump<K: Ord>(map: &mut BTreeMap<K, u64>, key: K) {
    *map.entry(key).or_default() += 1;
}

fn bump_at(v: &mut Vec<u64>, i: usize) {
    if v.len() <= i {
        v.resize(i + 1, 0);
    }
    v[i] += 1;
}

impl Stats {
    pub(crate) fn slice(&mut self, domain: usize) {
        bump_at(&mut self.slices, domain);
    }

    pub(crate) fn retry(&mut self, domain: usize) {
        bump_at(&mut self.retries, domain);
    }

    /// An intent left for its adapter; its result is known at once (`Some`) or later.
    pub(crate) fn intent(&mut self, id: &str, adapter: &Arc<str>, action: &Arc<str>, ok: Option<bool>) {
        match ok {
            Some(ok) => bump(&mut self.intents, (adapter.clone(), action.clone(), result(ok))),
            None => {
                self.in_flight.insert(id.to_string(), (adapter.clone(), action.clone()));
            }
        }
    }

    /// The result of an intent that went to a worker. One sent before a restart is not
    /// known by its id any more, and counts under `unknown`.
    pub(crate) fn result(&mut self, id: &str, ok: bool) {
        let (adapter, action) =
            self.in_flight.remove(id).unwrap_or_else(|| (Arc::from("unknown"), Arc::from("unknown")));
        bump(&mut self.intents, (adapter, action, result(ok)));
    }

    /// A reading from `source` (a watcher, `stdin`, `api`) at the engine's time `now_ms`.
    pub(crate) fn reading(&mut self, source: &str, now_ms: u64) {
        match self.readings.get_mut(source) {
            Some(at) => *at = now_ms,
            None => {
                self.readings.insert(source.to_string(), now_ms);
            }
        }
    }
}

fn result(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "failed"
    }
}

/// Everything one scrape reports, borrowed from the engine.
pub(crate) struct Scrape<'a> {
    pub stats: &'a Stats,
    pub program: &'a CompiledProgram,
    pub instances: &'a [Instance],
    pub policy: &'a RetryPolicy,
    pub now_ms: u64,
    pub in_flight: usize,
    /// Histograms filled elsewhere: (name, help, histogram).
    pub latencies: Vec<(&'static str, &'static str, Histogram)>,
}

impl Scrape<'_> {
    /// The text of `GET /metrics`.
    pub(crate) fn render(self) -> String {
        let mut reg = Registry::default();

        // Counted by index first: a fleet of a million instances costs a pass over an array,
        // not a million labelled lookups.
        let mut by_status = vec![[0i64; STATUSES.len()]; self.program.domains.len()];
        let mut open = vec![0i64; self.program.domains.len()];
        let breaker_after = self.policy.breaker_after.max(1);
        for i in self.instances {
            let Some(row) = by_status.get_mut(i.domain) else { continue };
            if let Some(s) = STATUSES.iter().position(|s| *s == i.status) {
                row[s] += 1;
            }
            open[i.domain] += i.pending.iter().filter(|p| p.attempt >= breaker_after).count() as i64;
        }
        let instances = Family::<Labels, Gauge>::default();
        let breakers = Family::<Labels, Gauge>::default();
        for (d, dom) in self.program.domains.iter().enumerate() {
            for (s, status) in STATUSES.iter().enumerate() {
                instances
                    .get_or_create(&vec![("domain", dom.name.clone()), ("status", status.as_str().into())])
                    .set(by_status[d][s]);
            }
            breakers.get_or_create(&vec![("domain", dom.name.clone())]).set(open[d]);
        }
        reg.register("ved_instances", "Instances by domain and status", instances);
        reg.register(
            "ved_breakers_open",
            "Transitions whose circuit breaker is open (failed breaker_after times in a row: retries only probe)",
            breakers,
        );

        let per_domain = |counts: &[u64]| {
            let f = Family::<Labels, Counter>::default();
            for (d, dom) in self.program.domains.iter().enumerate() {
                f.get_or_create(&vec![("domain", dom.name.clone())]).inc_by(counts.get(d).copied().unwrap_or(0));
            }
            f
        };
        reg.register("ved_slices", "Slices run, by domain", per_domain(&self.stats.slices));
        reg.register(
            "ved_retries",
            "Retries scheduled after a failed intent or a fault, by domain",
            per_domain(&self.stats.retries),
        );

        let intents = Family::<Labels, Counter>::default();
        for ((adapter, action, result), n) in &self.stats.intents {
            let labels =
                vec![("adapter", adapter.to_string()), ("action", action.to_string()), ("result", (*result).into())];
            intents.get_or_create(&labels).inc_by(*n);
        }
        reg.register("ved_intents", "Intents whose result is known, by adapter, action and result", intents);
        let in_flight = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
        in_flight.set(self.in_flight as i64);
        reg.register("ved_intents_in_flight", "Intents handed to an adapter whose result has not come back", in_flight);

        let ages = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        for (source, at) in &self.stats.readings {
            let age = self.now_ms.saturating_sub(*at) as f64 / 1000.0;
            ages.get_or_create(&vec![("source", source.clone())]).set(age);
        }
        reg.register(
            "ved_last_reading_age_seconds",
            "Time since each watcher (or other source) last delivered a reading",
            ages,
        );

        for (name, help, h) in self.latencies {
            reg.register(name, help, h);
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &reg);
        out
    }
}
