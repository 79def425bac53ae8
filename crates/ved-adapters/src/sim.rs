//! The `sim` driver: scripted failures and delays, for tests and demos.

use crate::{ActionError, ActionResult, Actuator, IntentRequest};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

pub struct SimDriver {
    /// Remaining failures per action.
    fail: Mutex<BTreeMap<String, u32>>,
    delay: Duration,
    /// Every intent delivered, in order (for tests to inspect).
    pub delivered: Mutex<Vec<IntentRequest>>,
}

impl SimDriver {
    pub fn new(fail: BTreeMap<String, u32>, delay_ms: u64) -> SimDriver {
        SimDriver { fail: Mutex::new(fail), delay: Duration::from_millis(delay_ms), delivered: Mutex::new(Vec::new()) }
    }
}

impl Actuator for SimDriver {
    fn deliver(&self, intent: &IntentRequest) -> ActionResult {
        if !self.delay.is_zero() {
            std::thread::sleep(self.delay);
        }
        self.delivered.lock().unwrap_or_else(|p| p.into_inner()).push(intent.clone());
        let mut fail = self.fail.lock().unwrap_or_else(|p| p.into_inner());
        match fail.get_mut(&intent.action) {
            Some(n) if *n > 0 => {
                *n -= 1;
                Err(ActionError::failed(format!("simulated failure of {}.{}", intent.adapter, intent.action)))
            }
            _ => Ok(()),
        }
    }
}
