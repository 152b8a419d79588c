//! One gate per key, created on first use and dropped when idle.

use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;

use super::algorithm::LimitAlgorithm;
use super::gate::{Gate, GateConfig, Metrics};
use crate::clock::Clock;

/// Idle keys kept before the first sweep.
const SWEEP_FLOOR: usize = 1024;

pub(crate) struct KeyedGates<K, A, C> {
    gates: DashMap<K, Arc<Gate<A, C>>>,
    /// The map size that triggers the next sweep of idle gates.
    sweep_at: AtomicUsize,
}

impl<K, A, C> KeyedGates<K, A, C>
where
    K: Hash + Eq,
    A: LimitAlgorithm + Clone,
    C: Clock,
{
    pub(crate) fn new() -> Self {
        KeyedGates {
            gates: DashMap::new(),
            sweep_at: AtomicUsize::new(SWEEP_FLOOR),
        }
    }

    /// The gate of `key`, created from the templates when the key is new.
    pub(crate) fn get(
        &self,
        key: K,
        algorithm: &A,
        clock: &C,
        config: &GateConfig,
        metrics: &Metrics,
    ) -> Arc<Gate<A, C>> {
        if let Some(gate) = self.gates.get(&key) {
            return gate.clone();
        }
        let gate = self
            .gates
            .entry(key)
            .or_insert_with(|| Gate::new(algorithm.clone(), clock.clone(), config, metrics.clone()))
            .clone();
        self.sweep_if_large();
        gate
    }

    /// Drops the gates nobody holds (no request in flight or waiting), once the
    /// map has doubled since the last sweep: amortised constant time per new key,
    /// and memory bounded by twice the keys with requests in flight (at least
    /// 1024).
    fn sweep_if_large(&self) {
        let len = self.gates.len();
        if len < self.sweep_at.load(Ordering::Relaxed) {
            return;
        }
        // Permits do not hold their gate: a gate with requests in flight is kept
        // as well. Nobody can take a permit from a gate only the map holds, so
        // under the shard's lock the check cannot go stale.
        self.gates
            .retain(|_, gate| Arc::strong_count(gate) > 1 || gate.in_flight() > 0);
        let kept = self.gates.len();
        self.sweep_at
            .store((kept * 2).max(SWEEP_FLOOR), Ordering::Relaxed);
        tracing::trace!(before = len, after = kept, "swept idle concurrency keys");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::concurrency::Fixed;
    use crate::concurrency::gate::Discipline;
    use std::num::NonZeroUsize;
    use std::time::Duration;

    fn config() -> GateConfig {
        GateConfig {
            capacity: 0,
            discipline: Discipline::Fifo {
                timeout: Duration::ZERO,
            },
            shares: Vec::new(),
        }
    }

    #[test]
    fn idle_keys_are_swept_so_a_flood_of_keys_stays_bounded() {
        let gates = KeyedGates::<u32, Fixed, ManualClock>::new();
        let (algorithm, clock, config) =
            (Fixed::new(NonZeroUsize::MIN), ManualClock::new(), config());
        let metrics = Metrics::noop();

        // One key stays busy: its gate must survive every sweep.
        let busy = gates.get(u32::MAX, &algorithm, &clock, &config, &metrics);
        for key in 0..10_000 {
            drop(gates.get(key, &algorithm, &clock, &config, &metrics));
            assert!(
                gates.gates.len() <= 2 * SWEEP_FLOOR,
                "{} gates kept",
                gates.gates.len()
            );
        }
        assert!(gates.gates.contains_key(&u32::MAX));
        assert!(Arc::ptr_eq(
            &busy,
            &gates.get(u32::MAX, &algorithm, &clock, &config, &metrics)
        ));
    }
}
