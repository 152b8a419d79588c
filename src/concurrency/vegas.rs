//! TCP Vegas applied to request concurrency.

use std::num::NonZeroUsize;
use std::time::Duration;

use super::algorithm::{LimitAlgorithm, Sample, check_bounds};

/// TCP Vegas: estimate the queue from how far latency sits above the no-load
/// latency, and keep that queue small.
///
/// The no-load latency `rtt0` is the lowest latency seen, re-measured every
/// `probe x L` samples, with `L` the fractional limit below (the sample that
/// triggers a probe becomes the new `rtt0`). For every other sample, with `L` the current limit and
/// `lg = max(1, floor(log10(L)))`:
///
/// - `queue = ceil(L x (1 - rtt0 / rtt))`;
/// - dropped: `L - lg`;
/// - otherwise, when fewer than half the limit were in flight: unchanged (the
///   limit is not what holds traffic back);
/// - `queue <= lg` (threshold): `L + 6 lg` (beta);
/// - `queue < 3 lg` (alpha): `L + lg`;
/// - `queue > 6 lg` (beta): `L - lg`;
/// - otherwise unchanged.
///
/// The new value is clamped to `[min, max]` and smoothed:
/// `L = (1 - smoothing) L + smoothing x new`. The limit used is `floor(L)`.
/// Defaults: initial 20, min 1, max 1000, smoothing 1.0, probe every 30 x limit
/// samples: the rules and defaults of Netflix's `concurrency-limits` library.
///
/// Run it under [`Windowed`](super::Windowed) against a service whose requests
/// vary in cost: per sample, every request slower than the fastest one seen
/// looks like queueing, and the limit settles under the service's capacity.
///
/// Limitation: the published algorithm randomises the probe interval (x0.5 to
/// x1) so that a fleet does not probe in step; this one probes exactly every
/// `probe x limit` samples so its sequence of limits is reproducible.
#[derive(Clone, Debug)]
pub struct Vegas {
    limit: f64,
    min: NonZeroUsize,
    max: NonZeroUsize,
    smoothing: f64,
    probe: Probe,
    probe_count: usize,
    rtt_noload: Option<Duration>,
}

impl Vegas {
    /// Vegas with the defaults above.
    pub fn new() -> Self {
        Vegas {
            limit: 20.0,
            min: NonZeroUsize::MIN,
            max: NonZeroUsize::new(1000).unwrap(),
            smoothing: 1.0,
            probe: Probe::PerLimit(30),
            probe_count: 0,
            rtt_noload: None,
        }
    }

    /// The limit before the first sample (default 20).
    pub fn initial(mut self, limit: NonZeroUsize) -> Self {
        self.limit = limit.get() as f64;
        self
    }

    /// The lowest and highest limits (default 1 and 1000).
    ///
    /// # Panics
    ///
    /// If `min > max`.
    pub fn bounds(mut self, min: NonZeroUsize, max: NonZeroUsize) -> Self {
        check_bounds(min, max);
        self.min = min;
        self.max = max;
        self
    }

    /// The weight of a new value against the current limit (default 1.0: no
    /// smoothing).
    ///
    /// # Panics
    ///
    /// Unless `0 < smoothing <= 1`.
    pub fn smoothing(mut self, smoothing: f64) -> Self {
        assert!(
            smoothing > 0.0 && smoothing <= 1.0,
            "the Vegas smoothing must lie in (0, 1], got {smoothing}"
        );
        self.smoothing = smoothing;
        self
    }

    /// Re-measure the no-load latency every `multiplier x limit` samples
    /// (default 30).
    pub fn probe_multiplier(mut self, multiplier: NonZeroUsize) -> Self {
        self.probe = Probe::PerLimit(multiplier.get());
        self
    }

    /// Re-measure the no-load latency every `samples` samples, whatever the
    /// limit. Under [`Windowed`](super::Windowed), where one sample is one
    /// window, this reads "every `samples` windows".
    pub fn probe_every(mut self, samples: NonZeroUsize) -> Self {
        self.probe = Probe::Every(samples.get());
        self
    }

    /// The no-load latency currently assumed, once measured.
    pub fn rtt_noload(&self) -> Option<Duration> {
        self.rtt_noload
    }

    /// `floor(L)`, within the bounds (an initial limit outside them counts as
    /// the nearer bound).
    fn current(&self) -> NonZeroUsize {
        crate::concurrency::algorithm::clamp(self.limit as usize, self.min, self.max)
    }
}

impl Default for Vegas {
    fn default() -> Self {
        Self::new()
    }
}

/// When the no-load latency is measured again.
#[derive(Clone, Copy, Debug)]
enum Probe {
    /// Every `n x limit` samples: about every `n` round trips when every request
    /// is a sample.
    PerLimit(usize),
    /// Every `n` samples.
    Every(usize),
}

/// `max(1, floor(log10(limit)))`.
fn log10(limit: usize) -> f64 {
    (limit.max(1).ilog10().max(1)) as f64
}

impl LimitAlgorithm for Vegas {
    fn initial_limit(&self) -> NonZeroUsize {
        let limit = (self.limit as usize).clamp(self.min.get(), self.max.get());
        NonZeroUsize::new(limit).unwrap_or(NonZeroUsize::MIN)
    }

    fn update(&mut self, sample: &Sample) -> NonZeroUsize {
        let rtt = sample.rtt.max(Duration::from_nanos(1));

        // The per-limit probe compares against the fractional limit, as the
        // published rule does: with smoothing, `L` is rarely a whole number.
        self.probe_count += 1;
        let due = match self.probe {
            Probe::PerLimit(n) => n as f64 * self.limit,
            Probe::Every(n) => n as f64,
        };
        if self.probe_count as f64 >= due {
            self.probe_count = 0;
            self.rtt_noload = Some(rtt);
            return self.current();
        }
        let rtt_noload = match self.rtt_noload {
            Some(noload) if rtt >= noload => noload,
            _ => {
                self.rtt_noload = Some(rtt);
                return self.current();
            }
        };

        let limit = self.limit;
        let lg = log10(limit as usize);
        let queue = (limit * (1.0 - rtt_noload.as_secs_f64() / rtt.as_secs_f64())).ceil();
        let new = if sample.dropped() {
            limit - lg
        } else if ((sample.in_flight * 2) as f64) < limit {
            return self.current();
        } else if queue <= lg {
            limit + 6.0 * lg
        } else if queue < 3.0 * lg {
            limit + lg
        } else if queue > 6.0 * lg {
            limit - lg
        } else {
            return self.current();
        };

        let new = new.clamp(self.min.get() as f64, self.max.get() as f64);
        self.limit = (1.0 - self.smoothing) * limit + self.smoothing * new;
        self.current()
    }
}
