//! Envoy's adaptive concurrency gradient controller.

use std::num::NonZeroUsize;
use std::time::Duration;

use super::algorithm::{LimitAlgorithm, Sample, check_bounds};
use crate::clock::Timestamp;

/// The gradient controller of Envoy's adaptive concurrency filter: compare the
/// median latency of each time window with the latency the service shows when
/// almost idle.
///
/// - **minRTT**: at start, and every [`probe_interval`](Self::probe_interval),
///   the limit is pinned to `min` (default 3) until
///   [`probe_requests`](Self::probe_requests) (default 50) requests admitted at
///   that concurrency have finished; minRTT is their median latency. The limit
///   then returns to its value before the probe. A limit stuck at `min` for 5
///   windows in a row triggers a probe early (minRTT has gone stale).
/// - **window**: every [`window`](Self::window) (default 100 ms) the median
///   latency of the window's samples, `sample`, gives
///   `gradient = clamp((minRTT x (1 + buffer)) / sample, 0.5, 2.0)` with
///   buffer 25 %, and `L = floor(L x gradient + sqrt(L x gradient))`, clamped
///   to `[min, max]` (default max 1000).
///
/// Windows are driven by the samples' own timestamps: a window closes when the
/// first sample at or after its end arrives, and that sample opens the next one.
/// The median is the nearest-rank one: the `ceil(n / 2)`-th smallest sample.
///
/// Limitation: Envoy jitters the probe interval so a fleet does not probe in
/// step; this controller probes exactly on the interval so its sequence of limits
/// is reproducible. Unlike Envoy it counts toward minRTT only requests admitted
/// while the limit was pinned (in flight at admission at most `min`), so requests
/// still finishing from before the probe do not inflate it. At most 10 000
/// samples count per window; later ones in the same window are ignored.
#[derive(Clone, Debug)]
pub struct Gradient {
    limit: usize,
    min: NonZeroUsize,
    max: NonZeroUsize,
    buffer: f64,
    window: Duration,
    probe_interval: Duration,
    probe_requests: usize,

    /// `Some(limit to restore)` while measuring minRTT.
    probing: Option<usize>,
    min_rtt: Option<Duration>,
    next_probe: Timestamp,
    window_end: Option<Timestamp>,
    samples: Vec<Duration>,
    windows_at_min: usize,
}

const MAX_SAMPLES: usize = 10_000;

impl Gradient {
    /// The controller with the defaults above.
    pub fn new() -> Self {
        let min = NonZeroUsize::new(3).unwrap();
        Gradient {
            limit: min.get(),
            min,
            max: NonZeroUsize::new(1000).unwrap(),
            buffer: 0.25,
            window: Duration::from_millis(100),
            probe_interval: Duration::from_secs(60),
            probe_requests: 50,
            probing: Some(min.get()),
            min_rtt: None,
            next_probe: Timestamp::ZERO,
            window_end: None,
            samples: Vec::new(),
            windows_at_min: 0,
        }
    }

    /// The pinned probe concurrency and the highest limit (default 3 and 1000).
    /// The limit starts at `min`.
    ///
    /// # Panics
    ///
    /// If `min > max`.
    pub fn bounds(mut self, min: NonZeroUsize, max: NonZeroUsize) -> Self {
        check_bounds(min, max);
        self.min = min;
        self.max = max;
        self.limit = min.get();
        self.probing = Some(min.get());
        self
    }

    /// Latency headroom over minRTT before the limit shrinks, as a fraction
    /// (default 0.25).
    ///
    /// # Panics
    ///
    /// If `buffer` is negative.
    pub fn buffer(mut self, buffer: f64) -> Self {
        assert!(
            buffer >= 0.0,
            "the gradient buffer must not be negative, got {buffer}"
        );
        self.buffer = buffer;
        self
    }

    /// How often the limit is recomputed (default 100 ms).
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// How often minRTT is measured again (default 60 s).
    pub fn probe_interval(mut self, interval: Duration) -> Self {
        self.probe_interval = interval;
        self
    }

    /// Requests that make up one minRTT measurement (default 50).
    pub fn probe_requests(mut self, requests: NonZeroUsize) -> Self {
        self.probe_requests = requests.get();
        self
    }

    /// The latency of the idle service as last measured.
    pub fn min_rtt(&self) -> Option<Duration> {
        self.min_rtt
    }

    /// Whether the limit is pinned while minRTT is measured.
    pub fn is_probing(&self) -> bool {
        self.probing.is_some()
    }

    fn current(&self) -> NonZeroUsize {
        NonZeroUsize::new(self.limit).unwrap_or(NonZeroUsize::MIN)
    }

    /// The nearest-rank median of the collected samples; clears them.
    fn median(&mut self) -> Option<Duration> {
        if self.samples.is_empty() {
            return None;
        }
        let rank = self.samples.len().div_ceil(2) - 1;
        let (_, median, _) = self.samples.select_nth_unstable(rank);
        let median = *median;
        self.samples.clear();
        Some(median)
    }

    fn record(&mut self, rtt: Duration) {
        if self.samples.len() < MAX_SAMPLES {
            self.samples.push(rtt);
        }
    }

    fn start_probe(&mut self) {
        self.probing = Some(self.limit);
        self.limit = self.min.get();
        self.samples.clear();
        self.windows_at_min = 0;
    }

    fn close_window(&mut self, min_rtt: Duration) {
        let Some(sample) = self.median() else { return };
        let buffered = min_rtt.as_secs_f64() * (1.0 + self.buffer);
        let gradient = (buffered / sample.as_secs_f64().max(1e-9)).clamp(0.5, 2.0);
        let scaled = self.limit as f64 * gradient;
        let new = (scaled + scaled.sqrt()) as usize;
        let new = new.clamp(self.min.get(), self.max.get());

        if self.limit == self.min.get() && new == self.min.get() {
            self.windows_at_min += 1;
        } else {
            self.windows_at_min = 0;
        }
        self.limit = new;
    }
}

impl Default for Gradient {
    fn default() -> Self {
        Self::new()
    }
}

impl LimitAlgorithm for Gradient {
    fn initial_limit(&self) -> NonZeroUsize {
        self.current()
    }

    fn update(&mut self, sample: &Sample) -> NonZeroUsize {
        if let Some(restore) = self.probing {
            if sample.in_flight <= self.min.get() {
                self.record(sample.rtt);
            }
            if self.samples.len() >= self.probe_requests {
                self.min_rtt = self.median();
                self.limit = restore;
                self.probing = None;
                self.next_probe = sample.at + self.probe_interval;
                self.window_end = Some(sample.at + self.window);
            }
            return self.current();
        }
        let Some(min_rtt) = self.min_rtt else {
            return self.current();
        };

        if sample.at >= self.next_probe || self.windows_at_min >= 5 {
            self.start_probe();
            return self.current();
        }
        match self.window_end {
            Some(end) if sample.at >= end => {
                self.close_window(min_rtt);
                self.window_end = Some(sample.at + self.window);
            }
            None => self.window_end = Some(sample.at + self.window),
            Some(_) => {}
        }
        self.record(sample.rtt);
        self.current()
    }
}
