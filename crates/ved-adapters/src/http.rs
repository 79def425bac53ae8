//! The `http` driver: POSTs each intent as JSON, with its id as the
//! `Idempotency-Key` header. A 2xx answer is success.

use crate::{ActionError, ActionResult, Actuator, IntentRequest};
use std::time::Duration;

pub struct HttpDriver {
    pub url: String,
    agent: ureq::Agent,
}

impl HttpDriver {
    pub fn new(url: String, timeout: Duration) -> HttpDriver {
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            // A non-2xx status is an answer to report, not a transport error.
            .http_status_as_error(false)
            .build();
        HttpDriver { url, agent: config.into() }
    }
}

impl Actuator for HttpDriver {
    fn deliver(&self, intent: &IntentRequest) -> ActionResult {
        let body = serde_json::to_string(&intent.to_json()).map_err(|e| ActionError::rejected(e.to_string()))?;
        let mut req =
            self.agent.post(&self.url).header("Content-Type", "application/json").header("Idempotency-Key", &intent.id);
        if let Some(f) = intent.fence {
            // Cluster mode: the owner's fencing token, for receivers that refuse stale owners.
            req = req.header("Ved-Fence", f.to_string());
        }
        let resp = req.send(body.as_str()).map_err(|e| {
            let message = format!("POST {}: {e}", self.url);
            match e {
                ureq::Error::Timeout(_) => ActionError::timeout(message),
                _ => ActionError::unavailable(message),
            }
        })?;
        let status = resp.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(ActionError::failed(format!("POST {} answered {status}", self.url)))
        }
    }
}
