//! The gauges and counters a gate reports through the `metrics` facade.

use metrics::{Counter, Gauge};

/// The gauges and counters of one gate.
#[derive(Clone, Debug)]
pub(crate) struct Metrics {
    /// `tower_toolbox_concurrency_limit`: the current limit.
    pub(crate) limit: Gauge,
    /// `tower_toolbox_concurrency_in_flight`: requests holding a permit.
    pub(crate) in_flight: Gauge,
    /// `tower_toolbox_concurrency_queued`: requests waiting in line.
    pub(crate) queued: Gauge,
    /// `tower_toolbox_concurrency_rejected_total`: requests refused on arrival
    /// (limit reached, line full) or after waiting their whole timeout.
    pub(crate) rejected: Counter,
    /// `tower_toolbox_shed_total`: waiters dropped from the line, by CoDel or to
    /// make room for a higher priority.
    pub(crate) shed: Counter,
    /// Whether the gauges were registered (a global gate) rather than no-ops.
    gauges: bool,
}

impl Metrics {
    /// Handles registered once, labelled with the layer's name.
    pub(crate) fn register(layer: &'static str, name: &'static str) -> Self {
        Metrics {
            limit: metrics::gauge!("tower_toolbox_concurrency_limit", "layer" => layer, "name" => name),
            in_flight: metrics::gauge!("tower_toolbox_concurrency_in_flight", "layer" => layer, "name" => name),
            queued: metrics::gauge!("tower_toolbox_concurrency_queued", "layer" => layer, "name" => name),
            rejected: metrics::counter!("tower_toolbox_concurrency_rejected_total", "layer" => layer, "name" => name),
            shed: metrics::counter!("tower_toolbox_shed_total", "layer" => layer, "name" => name),
            gauges: true,
        }
    }

    /// The handles of a per-key gate: the layer's rejection and shed counters,
    /// shared by every key, and no gauges (one series per key would grow without
    /// bound under a flood of distinct keys).
    pub(crate) fn per_key(layer: &'static str, name: &'static str) -> Self {
        Metrics {
            limit: Gauge::noop(),
            in_flight: Gauge::noop(),
            queued: Gauge::noop(),
            rejected: metrics::counter!("tower_toolbox_concurrency_rejected_total", "layer" => layer, "name" => name),
            shed: metrics::counter!("tower_toolbox_shed_total", "layer" => layer, "name" => name),
            gauges: false,
        }
    }

    /// Handles that record nothing.
    pub(crate) fn noop() -> Self {
        Metrics {
            limit: Gauge::noop(),
            in_flight: Gauge::noop(),
            queued: Gauge::noop(),
            rejected: Counter::noop(),
            shed: Counter::noop(),
            gauges: false,
        }
    }

    /// Whether the gauges report anything.
    pub(crate) fn has_gauges(&self) -> bool {
        self.gauges
    }
}
