//! Additive increase, multiplicative decrease.

use std::num::NonZeroUsize;
use std::time::Duration;

use super::algorithm::{LimitAlgorithm, Sample, check_bounds, clamp};

/// Additive increase, multiplicative decrease: the rule TCP uses for its window.
///
/// Per sample:
/// - dropped, or slower than [`timeout`](Self::timeout): `limit = floor(limit x
///   backoff)`;
/// - otherwise, when the service is busy (in flight at admission at least half
///   the limit): `limit + 1`;
/// - otherwise (the limit is not what holds traffic back): unchanged.
///
/// The result is clamped to `[min, max]`. Defaults: initial 20, min 20, max 200,
/// backoff 0.9, timeout 5 s: the published defaults of Netflix's
/// `concurrency-limits` library, whose update rule this is.
#[derive(Clone, Debug)]
pub struct Aimd {
    limit: usize,
    min: NonZeroUsize,
    max: NonZeroUsize,
    backoff: f64,
    timeout: Duration,
}

impl Aimd {
    /// AIMD with the defaults above.
    pub fn new() -> Self {
        Aimd {
            limit: 20,
            min: NonZeroUsize::new(20).unwrap(),
            max: NonZeroUsize::new(200).unwrap(),
            backoff: 0.9,
            timeout: Duration::from_secs(5),
        }
    }

    /// The limit before the first sample (default 20), clamped to the bounds.
    pub fn initial(mut self, limit: NonZeroUsize) -> Self {
        self.limit = limit.get();
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

    /// The factor applied on a drop (default 0.9).
    ///
    /// # Panics
    ///
    /// Unless `0 < backoff < 1`.
    pub fn backoff(mut self, backoff: f64) -> Self {
        assert!(
            backoff > 0.0 && backoff < 1.0,
            "the AIMD backoff must lie strictly between 0 and 1, got {backoff}"
        );
        self.backoff = backoff;
        self
    }

    /// A response slower than this counts as a drop (default 5 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

impl Default for Aimd {
    fn default() -> Self {
        Self::new()
    }
}

impl LimitAlgorithm for Aimd {
    fn initial_limit(&self) -> NonZeroUsize {
        clamp(self.limit, self.min, self.max)
    }

    fn update(&mut self, sample: &Sample) -> NonZeroUsize {
        let limit = if sample.dropped() || sample.rtt > self.timeout {
            (self.limit as f64 * self.backoff) as usize
        } else if sample.in_flight * 2 >= self.limit {
            self.limit + 1
        } else {
            self.limit
        };
        let limit = clamp(limit, self.min, self.max);
        self.limit = limit.get();
        limit
    }
}
