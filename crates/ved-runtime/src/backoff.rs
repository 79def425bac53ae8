//! Exponential backoff with deterministic jitter.
//!
//! The jitter is not drawn from a stateful generator: it is a hash of the
//! instance's seed, the transition and the attempt. That keeps it reproducible
//! (same seed, same delays) without any generator state to snapshot.

/// How a failed transition is retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Delay before the first retry.
    pub initial_ms: u64,
    /// Each further attempt multiplies the delay by this.
    pub factor: u32,
    /// The delay never exceeds this.
    pub cap_ms: u64,
    /// After this many consecutive failures the instance is degraded and the
    /// transition is only probed, once every `cap_ms`.
    pub breaker_after: u32,
    /// How long a watched field's watcher has to confirm an effect that succeeded
    /// before the transition counts as failed (see `Phase::Confirming`).
    pub confirm_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy { initial_ms: 200, factor: 2, cap_ms: 60_000, breaker_after: 5, confirm_ms: 10_000 }
    }
}

impl RetryPolicy {
    /// The delay before retry number `attempt` (1-based): the exponential
    /// delay `d`, capped, then jittered uniformly into `[d/2, d]`.
    pub fn delay_ms(&self, seed: u64, transition: usize, attempt: u32) -> u64 {
        if attempt >= self.breaker_after.max(1) {
            // Breaker open: probe at the cap, without jitter, so the interval is predictable.
            return self.cap_ms.max(1);
        }
        let exp = attempt.saturating_sub(1).min(63);
        let mut d = self.initial_ms.max(1);
        for _ in 0..exp {
            d = d.saturating_mul(self.factor.max(1) as u64);
            if d >= self.cap_ms {
                break;
            }
        }
        let d = d.min(self.cap_ms.max(1));
        let half = d / 2;
        let r = mix(seed ^ (transition as u64).rotate_left(32) ^ attempt as u64);
        half + r % (d - half + 1)
    }
}

/// SplitMix64's finaliser: a well-distributed 64-bit mix.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_exponentially_within_jitter_bounds_and_cap() {
        let p = RetryPolicy { initial_ms: 100, factor: 2, cap_ms: 1_000, breaker_after: 100, confirm_ms: 10_000 };
        for attempt in 1..=10 {
            let d = p.delay_ms(7, 0, attempt);
            let full = (100u64 << (attempt - 1)).min(1_000);
            assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d} not in [{}, {full}]", full / 2);
        }
    }

    #[test]
    fn jitter_is_deterministic_and_depends_on_the_seed() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay_ms(1, 2, 3), p.delay_ms(1, 2, 3));
        let spread: std::collections::BTreeSet<u64> = (0..50).map(|s| p.delay_ms(s, 0, 4)).collect();
        assert!(spread.len() > 10, "jitter should vary with the seed: {spread:?}");
    }
}
