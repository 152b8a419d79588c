//! The concurrency limit's builder.

use std::any::Any;
use std::fmt;
use std::num::NonZeroUsize;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tower_layer::Layer;

use super::algorithm::{Fixed, LimitAlgorithm};
use super::future::Refuse;
use super::gate::{Discipline, Gate, GateConfig, Metrics, Observe};
use super::service::{ConcurrencyLimit, Shared};
use crate::clock::{Clock, MonotonicClock};
use crate::key::{Global, MissingKey};
use crate::reject::{RequestHead, Responder};

/// Picks a request's partition: an index into the shares.
pub(crate) type Classify = Arc<dyn Fn(&RequestHead<'_>) -> usize + Send + Sync>;

/// Limits how many requests the wrapped service handles at once; see the
/// [module docs](super).
///
/// Type parameters: `A` the [`LimitAlgorithm`] ([`Fixed`] for a static limit),
/// `K` the key extractor ([`Global`] for one limit for the whole service), `C`
/// the [`Clock`].
///
/// Every service this layer produces shares one limit (or one set of per-key
/// limits), also across clones of the layer made after the last setter call.
pub struct ConcurrencyLimitLayer<A = Fixed, K = Global, C = MonotonicClock> {
    algorithm: A,
    clock: C,
    config: GateConfig,
    extractor: K,
    keyed: bool,
    missing: MissingKey,
    refuse: Refuse,
    partition: Option<Classify>,
    name: &'static str,
    gate: Arc<OnceLock<Arc<Gate<A, C>>>>,
    keys: Arc<OnceLock<Box<dyn Any + Send + Sync>>>,
}

impl ConcurrencyLimitLayer {
    /// At most `limit` requests in flight at once; further requests are refused
    /// at once with `503` (no queue; see [`queue`](Self::queue)).
    pub fn new(limit: NonZeroUsize) -> Self {
        Self::adaptive(Fixed::new(limit))
    }
}

impl<A: LimitAlgorithm> ConcurrencyLimitLayer<A> {
    /// A limit that `algorithm` adjusts from the latency and outcome of every
    /// request: [`Aimd`](super::Aimd), [`Vegas`](super::Vegas),
    /// [`Gradient2`](super::Gradient2), [`Gradient`](super::Gradient) or your own.
    pub fn adaptive(algorithm: A) -> Self {
        ConcurrencyLimitLayer {
            algorithm,
            clock: MonotonicClock::new(),
            config: GateConfig {
                capacity: 0,
                discipline: Discipline::Fifo {
                    timeout: Duration::ZERO,
                },
                shares: Vec::new(),
            },
            extractor: Global,
            keyed: false,
            missing: MissingKey::Reject,
            refuse: Refuse::new(Responder::default(), Some(Duration::from_secs(1))),
            partition: None,
            name: "default",
            gate: Arc::default(),
            keys: Arc::default(),
        }
    }
}

impl<A, K, C> ConcurrencyLimitLayer<A, K, C> {
    fn reset(mut self) -> Self {
        self.gate = Arc::default();
        self.keys = Arc::default();
        self
    }

    /// When the limit is reached, wait up to `timeout` in a first-in, first-out
    /// line of at most `capacity` requests before refusing. Default: no line,
    /// refuse at once.
    pub fn queue(mut self, capacity: NonZeroUsize, timeout: Duration) -> Self {
        self.config.capacity = capacity.get();
        self.config.discipline = Discipline::Fifo { timeout };
        self.reset()
    }

    /// The `Retry-After` sent with refusals (default 1 s; `None` sends none).
    pub fn retry_after(mut self, after: Option<Duration>) -> Self {
        self.refuse = Refuse::new(self.refuse.responder().clone(), after);
        self
    }

    /// How refusals are answered (default: problem+json, or gRPC `UNAVAILABLE`
    /// for gRPC requests).
    pub fn responder(mut self, responder: Responder) -> Self {
        self.refuse = Refuse::new(responder, self.refuse.retry_after());
        self
    }

    /// The `name` label of this layer's metrics (default `"default"`).
    pub fn name(mut self, name: &'static str) -> Self {
        self.name = name;
        self.reset()
    }

    /// Splits the limit into partitions: `shares[i]` is partition `i`'s
    /// guaranteed fraction of the limit (at least one request), and `classify`
    /// picks a request's partition.
    ///
    /// A partition below its share is always admitted; one at or past its share
    /// borrows what the others leave idle, while the whole limit has room. So when
    /// a partition comes back to claim its share, the total may pass the limit by
    /// what others had borrowed, until their requests finish. An index past the
    /// last share counts against the whole limit only.
    ///
    /// # Panics
    ///
    /// If there are more than 255 shares, a share is not in (0, 1] or the
    /// shares add up to more than 1.
    pub fn partitions<F>(mut self, shares: impl IntoIterator<Item = f64>, classify: F) -> Self
    where
        F: Fn(&RequestHead<'_>) -> usize + Send + Sync + 'static,
    {
        let shares: Vec<f64> = shares.into_iter().collect();
        assert!(
            shares.len() <= 255,
            "a limit has at most 255 partitions, got {}",
            shares.len()
        );
        for &share in &shares {
            assert!(
                share > 0.0 && share <= 1.0,
                "a partition's share must lie in (0, 1], got {share}"
            );
        }
        let total: f64 = shares.iter().sum();
        assert!(
            total <= 1.0 + 1e-9,
            "partition shares must add up to at most 1, got {total}"
        );
        self.config.shares = shares;
        self.partition = Some(Arc::new(classify));
        self.reset()
    }

    /// The clock used for latency samples and queue timeouts (default
    /// [`MonotonicClock`]).
    pub fn clock<C2: Clock>(self, clock: C2) -> ConcurrencyLimitLayer<A, K, C2> {
        ConcurrencyLimitLayer {
            algorithm: self.algorithm,
            clock,
            config: self.config,
            extractor: self.extractor,
            keyed: self.keyed,
            missing: self.missing,
            refuse: self.refuse,
            partition: self.partition,
            name: self.name,
            gate: Arc::default(),
            keys: Arc::default(),
        }
    }

    /// One limit per key instead of one for the whole service: each key gets its
    /// own limit (and, with an adaptive algorithm, its own copy of the
    /// algorithm).
    ///
    /// A key's state lives while it has requests in flight or waiting; idle keys
    /// are dropped once the map has doubled since the last sweep, so memory stays
    /// bounded under a flood of distinct keys.
    ///
    /// Limitation: an adaptive limit learned for a key is forgotten when the key
    /// goes idle and is swept; it starts again from the initial limit.
    pub fn per_key<K2>(self, extractor: K2) -> ConcurrencyLimitLayer<A, K2, C> {
        ConcurrencyLimitLayer {
            algorithm: self.algorithm,
            clock: self.clock,
            config: self.config,
            extractor,
            keyed: true,
            missing: self.missing,
            refuse: self.refuse,
            partition: self.partition,
            name: self.name,
            gate: Arc::default(),
            keys: Arc::default(),
        }
    }

    /// What to do with a request whose key cannot be extracted (default
    /// [`MissingKey::Reject`], with the extractor's rejection).
    pub fn on_missing_key(mut self, missing: MissingKey) -> Self {
        self.missing = missing;
        self
    }
}

impl<A, K, C> ConcurrencyLimitLayer<A, K, C>
where
    A: LimitAlgorithm + Clone,
    C: Clock,
{
    fn global_gate(&self) -> Arc<Gate<A, C>> {
        self.gate
            .get_or_init(|| {
                Gate::new(
                    self.algorithm.clone(),
                    self.clock.clone(),
                    &self.config,
                    Metrics::register("concurrency", self.name),
                )
            })
            .clone()
    }
}

impl<A, C> ConcurrencyLimitLayer<A, Global, C>
where
    A: LimitAlgorithm + Clone,
    C: Clock,
{
    /// A handle that reads the current limit, in-flight count and line length.
    pub fn handle(&self) -> LimitHandle {
        LimitHandle {
            gate: self.global_gate(),
        }
    }
}

impl<S, A, K, C> Layer<S> for ConcurrencyLimitLayer<A, K, C>
where
    A: LimitAlgorithm + Clone,
    K: Clone,
    C: Clock,
{
    type Service = ConcurrencyLimit<S, A, K, C>;

    fn layer(&self, inner: S) -> Self::Service {
        let gate = (!self.keyed).then(|| self.global_gate());
        let metrics = if self.keyed {
            Metrics::per_key("concurrency", self.name)
        } else {
            Metrics::noop()
        };
        ConcurrencyLimit::new(
            inner,
            Arc::new(Shared {
                gate,
                keys: self.keys.clone(),
                algorithm: self.algorithm.clone(),
                clock: self.clock.clone(),
                config: self.config.clone(),
                metrics,
                extractor: self.extractor.clone(),
                missing: self.missing,
                refuse: self.refuse.clone(),
                partition: self.partition.clone(),
            }),
        )
    }
}

impl<A: Clone, K: Clone, C: Clone> Clone for ConcurrencyLimitLayer<A, K, C> {
    fn clone(&self) -> Self {
        ConcurrencyLimitLayer {
            algorithm: self.algorithm.clone(),
            clock: self.clock.clone(),
            config: self.config.clone(),
            extractor: self.extractor.clone(),
            keyed: self.keyed,
            missing: self.missing,
            refuse: self.refuse.clone(),
            partition: self.partition.clone(),
            name: self.name,
            gate: self.gate.clone(),
            keys: self.keys.clone(),
        }
    }
}

impl<A: fmt::Debug, K: fmt::Debug, C> fmt::Debug for ConcurrencyLimitLayer<A, K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConcurrencyLimitLayer")
            .field("algorithm", &self.algorithm)
            .field("extractor", &self.extractor)
            .field("keyed", &self.keyed)
            .field("queue", &self.config.capacity)
            .field("partitions", &self.config.shares)
            .finish_non_exhaustive()
    }
}

/// Reads a limiter's state: the current limit (which an adaptive algorithm
/// moves), the requests in flight and the requests waiting. Cheap to clone.
#[derive(Clone)]
pub struct LimitHandle {
    pub(crate) gate: Arc<dyn Observe>,
}

impl LimitHandle {
    /// The current limit.
    pub fn limit(&self) -> usize {
        self.gate.limit()
    }

    /// Requests holding a permit: called, or streaming their response body.
    pub fn in_flight(&self) -> usize {
        self.gate.in_flight()
    }

    /// Requests waiting in line.
    pub fn queued(&self) -> usize {
        self.gate.queued()
    }
}

impl fmt::Debug for LimitHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LimitHandle")
            .field("limit", &self.limit())
            .field("in_flight", &self.in_flight())
            .field("queued", &self.queued())
            .finish()
    }
}
