//! The interface between the limiter and the algorithms that size it.

use std::num::NonZeroUsize;
use std::time::Duration;

use crate::clock::Timestamp;

/// How a request that held a permit ended, as far as the limit is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The service answered normally (any status other than the ones below).
    Success,
    /// The service was overloaded: it returned an error, `503 Service Unavailable`
    /// or `504 Gateway Timeout`, or answered later than the algorithm's timeout.
    /// Algorithms back off on drops.
    Dropped,
}

/// One finished request: what an adaptive algorithm learns from.
///
/// Cancelled requests (the caller dropped the future or the body before the
/// response head arrived) produce no sample at all: a client that gives up says
/// nothing about the service's capacity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    /// When the response head arrived, on the limiter's clock.
    pub at: Timestamp,
    /// From admission to the response head.
    pub rtt: Duration,
    /// Requests in flight when this one was admitted, itself included.
    pub in_flight: usize,
    /// Whether the service kept up.
    pub outcome: Outcome,
}

impl Sample {
    /// Whether the request was dropped.
    pub fn dropped(&self) -> bool {
        self.outcome == Outcome::Dropped
    }
}

/// An algorithm that sets the concurrency limit from latency and outcome samples.
///
/// The limiter calls [`update`](Self::update) once per finished request, under its
/// lock, and admits up to the returned number of requests at once. Implementations
/// are plain state machines: no clock reads, no I/O, so a test can feed them a
/// table of samples and check every limit they return.
pub trait LimitAlgorithm: Send + Sync + 'static {
    /// The limit before the first sample.
    fn initial_limit(&self) -> NonZeroUsize;

    /// Learns from `sample` and returns the new limit (at least 1).
    fn update(&mut self, sample: &Sample) -> NonZeroUsize;

    /// Whether the algorithm learns from samples at all. A fixed limit returns
    /// `false`, and the limiter then skips reading the clock per request.
    fn is_adaptive(&self) -> bool {
        true
    }
}

/// A limit that never changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fixed {
    limit: NonZeroUsize,
}

impl Fixed {
    /// At most `limit` requests in flight.
    pub const fn new(limit: NonZeroUsize) -> Self {
        Fixed { limit }
    }
}

impl LimitAlgorithm for Fixed {
    fn initial_limit(&self) -> NonZeroUsize {
        self.limit
    }

    fn update(&mut self, _sample: &Sample) -> NonZeroUsize {
        self.limit
    }

    fn is_adaptive(&self) -> bool {
        false
    }
}

/// Bounds shared by the adaptive algorithms.
pub(crate) fn clamp(value: usize, min: NonZeroUsize, max: NonZeroUsize) -> NonZeroUsize {
    let value = value.clamp(min.get(), max.get().max(min.get()));
    NonZeroUsize::new(value).unwrap_or(NonZeroUsize::MIN)
}

/// Checks a builder's `(min, max)` pair.
pub(crate) fn check_bounds(min: NonZeroUsize, max: NonZeroUsize) {
    assert!(
        min <= max,
        "the minimum limit ({min}) must not exceed the maximum ({max})"
    );
}
