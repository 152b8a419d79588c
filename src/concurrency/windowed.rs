//! Feeding an algorithm one summary per window instead of every sample.

use std::num::NonZeroUsize;
use std::time::Duration;

use super::algorithm::{LimitAlgorithm, Outcome, Sample};
use crate::clock::Timestamp;

/// Wraps an algorithm so it sees one sample per window: the average latency of
/// the window's requests, the most requests in flight at once, and a drop if any
/// request dropped.
///
/// A per-sample rule such as [`Aimd`](super::Aimd)'s x0.9 applies once per
/// window rather than once per request, so one slow round trip lowers the limit
/// by 10 %, not by 10 % for each of the hundreds of requests in it.
///
/// A window closes with the first sample finishing after its end, and lasts
/// twice the smallest latency seen in it, clamped to
/// [`duration`](Self::duration) (default 1 s to 1 s). A window with fewer than
/// [`min_samples`](Self::min_samples) (default 10) samples is discarded.
/// Samples faster than [`min_rtt`](Self::min_rtt) (default 100 us) are ignored:
/// they are usually answers from a cache or an error path, not work. These are
/// the rules and defaults of the `WindowedLimit` of Netflix's
/// `concurrency-limits` library.
#[derive(Clone, Debug)]
pub struct Windowed<A> {
    inner: A,
    min_window: Duration,
    max_window: Duration,
    min_samples: usize,
    min_rtt: Duration,

    limit: NonZeroUsize,
    next_update: Timestamp,
    count: usize,
    sum: Duration,
    fastest: Duration,
    max_in_flight: usize,
    dropped: bool,
}

impl<A: LimitAlgorithm> Windowed<A> {
    /// Windows over `inner`, with the defaults above.
    pub fn new(inner: A) -> Self {
        let limit = inner.initial_limit();
        Windowed {
            inner,
            min_window: Duration::from_secs(1),
            max_window: Duration::from_secs(1),
            min_samples: 10,
            min_rtt: Duration::from_micros(100),
            limit,
            next_update: Timestamp::ZERO,
            count: 0,
            sum: Duration::ZERO,
            fastest: Duration::MAX,
            max_in_flight: 0,
            dropped: false,
        }
    }
}

impl<A> Windowed<A> {
    /// The shortest and longest window (default 1 s and 1 s).
    ///
    /// # Panics
    ///
    /// If `min > max`.
    pub fn duration(mut self, min: Duration, max: Duration) -> Self {
        assert!(
            min <= max,
            "the shortest window ({min:?}) must not exceed the longest ({max:?})"
        );
        self.min_window = min;
        self.max_window = max;
        self
    }

    /// Samples a window needs to count (default 10).
    pub fn min_samples(mut self, samples: NonZeroUsize) -> Self {
        self.min_samples = samples.get();
        self
    }

    /// Samples faster than this are ignored (default 100 us).
    pub fn min_rtt(mut self, rtt: Duration) -> Self {
        self.min_rtt = rtt;
        self
    }

    /// The wrapped algorithm.
    pub fn get_ref(&self) -> &A {
        &self.inner
    }
}

impl<A: LimitAlgorithm> LimitAlgorithm for Windowed<A> {
    fn initial_limit(&self) -> NonZeroUsize {
        self.inner.initial_limit()
    }

    fn update(&mut self, sample: &Sample) -> NonZeroUsize {
        if sample.rtt < self.min_rtt {
            return self.limit;
        }
        self.count += 1;
        self.sum += sample.rtt;
        self.fastest = self.fastest.min(sample.rtt);
        self.max_in_flight = self.max_in_flight.max(sample.in_flight);
        self.dropped |= sample.dropped();
        if sample.at <= self.next_update {
            return self.limit;
        }

        let length = (self.fastest * 2).clamp(self.min_window, self.max_window);
        self.next_update = sample.at + length;
        if self.count >= self.min_samples {
            let summary = Sample {
                at: sample.at,
                rtt: self.sum / self.count as u32,
                in_flight: self.max_in_flight,
                outcome: if self.dropped {
                    Outcome::Dropped
                } else {
                    Outcome::Success
                },
            };
            self.limit = self.inner.update(&summary);
        }
        self.count = 0;
        self.sum = Duration::ZERO;
        self.fastest = Duration::MAX;
        self.max_in_flight = 0;
        self.dropped = false;
        self.limit
    }

    fn is_adaptive(&self) -> bool {
        self.inner.is_adaptive()
    }
}
