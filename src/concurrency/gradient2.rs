//! Gradient2: the ratio of long-term to current latency.

use std::num::NonZeroUsize;

use super::algorithm::{LimitAlgorithm, Sample, check_bounds};

/// Gradient2: shrink the limit in proportion to how far the current latency has
/// drifted above its long-term average, and keep a small queue of headroom.
///
/// Per sample, with `L` the current limit and `rtt` the sample's latency (the
/// short-term latency):
///
/// 1. `long` = exponential average of latency over `window` samples
///    (`2 / (window + 1)` weight; a plain mean for the first 10 samples);
/// 2. when `long / rtt > 2` (latency recovered after long overload), `long` decays
///    by x0.95, so the limit can grow again;
/// 3. when fewer than `L / 2` requests were in flight, `L` stays (the limit is not
///    what holds traffic back);
/// 4. `gradient = clamp(tolerance x long / rtt, 0.5, 1.0)`;
/// 5. `new = L x gradient + queue`; `L = (1 - smoothing) L + smoothing x new`,
///    clamped to `[min, max]`. The limit used is `floor(L)`.
///
/// Defaults: initial 20, min 20, max 200, smoothing 0.2, queue 4, window 600,
/// tolerance 1.5: the rules and defaults of Netflix's `concurrency-limits`
/// library. Like the original, the rule ignores drops: only latency moves it.
#[derive(Clone, Debug)]
pub struct Gradient2 {
    limit: f64,
    min: NonZeroUsize,
    max: NonZeroUsize,
    smoothing: f64,
    queue: f64,
    tolerance: f64,
    long: ExpAverage,
}

/// An exponential moving average that starts as a plain mean.
#[derive(Clone, Debug)]
struct ExpAverage {
    window: usize,
    warmup: usize,
    count: usize,
    sum: f64,
    value: f64,
}

impl ExpAverage {
    fn add(&mut self, sample: f64) -> f64 {
        if self.count < self.warmup {
            self.count += 1;
            self.sum += sample;
            self.value = self.sum / self.count as f64;
        } else {
            let factor = 2.0 / (self.window as f64 + 1.0);
            self.value = self.value * (1.0 - factor) + sample * factor;
        }
        self.value
    }
}

impl Gradient2 {
    /// Gradient2 with the defaults above.
    pub fn new() -> Self {
        Gradient2 {
            limit: 20.0,
            min: NonZeroUsize::new(20).unwrap(),
            max: NonZeroUsize::new(200).unwrap(),
            smoothing: 0.2,
            queue: 4.0,
            tolerance: 1.5,
            long: ExpAverage {
                window: 600,
                warmup: 10,
                count: 0,
                sum: 0.0,
                value: 0.0,
            },
        }
    }

    /// The limit before the first sample (default 20).
    pub fn initial(mut self, limit: NonZeroUsize) -> Self {
        self.limit = limit.get() as f64;
        self
    }

    /// The lowest and highest limits (default 20 and 200).
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

    /// The weight of a new value against the current limit (default 0.2).
    ///
    /// # Panics
    ///
    /// Unless `0 < smoothing <= 1`.
    pub fn smoothing(mut self, smoothing: f64) -> Self {
        assert!(
            smoothing > 0.0 && smoothing <= 1.0,
            "the Gradient2 smoothing must lie in (0, 1], got {smoothing}"
        );
        self.smoothing = smoothing;
        self
    }

    /// Requests of headroom added to every update (default 4).
    pub fn queue_size(mut self, queue: usize) -> Self {
        self.queue = queue as f64;
        self
    }

    /// How far latency may rise above its long-term average before the limit
    /// shrinks (default 1.5: 50 %).
    ///
    /// # Panics
    ///
    /// Unless `tolerance >= 1`.
    pub fn tolerance(mut self, tolerance: f64) -> Self {
        assert!(
            tolerance >= 1.0,
            "the Gradient2 tolerance must be at least 1, got {tolerance}"
        );
        self.tolerance = tolerance;
        self
    }

    /// Samples in the long-term latency average (default 600).
    pub fn long_window(mut self, window: NonZeroUsize) -> Self {
        self.long.window = window.get();
        self
    }

    /// `floor(L)`, within the bounds (an initial limit outside them counts as
    /// the nearer bound).
    fn current(&self) -> NonZeroUsize {
        crate::concurrency::algorithm::clamp(self.limit as usize, self.min, self.max)
    }
}

impl Default for Gradient2 {
    fn default() -> Self {
        Self::new()
    }
}

impl LimitAlgorithm for Gradient2 {
    fn initial_limit(&self) -> NonZeroUsize {
        let limit = (self.limit as usize).clamp(self.min.get(), self.max.get());
        NonZeroUsize::new(limit).unwrap_or(NonZeroUsize::MIN)
    }

    fn update(&mut self, sample: &Sample) -> NonZeroUsize {
        let short = sample.rtt.as_secs_f64().max(1e-9);
        let long = self.long.add(short);

        // The decay applies from the next sample on; this one's gradient is at its
        // cap of 1.0 anyway.
        if long / short > 2.0 {
            self.long.value *= 0.95;
        }
        if (sample.in_flight as f64) < self.limit / 2.0 {
            return self.current();
        }

        let gradient = (self.tolerance * long / short).clamp(0.5, 1.0);
        let new = self.limit * gradient + self.queue;
        let new = self.limit * (1.0 - self.smoothing) + new * self.smoothing;
        self.limit = new.clamp(self.min.get() as f64, self.max.get() as f64);
        self.current()
    }
}
