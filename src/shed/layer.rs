//! The load shedder's builder.

use std::fmt;
use std::num::NonZeroUsize;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tower_layer::Layer;

use super::priority::Priority;
use super::service::{LoadShed, Shared};
use crate::clock::{Clock, MonotonicClock};
use crate::concurrency::gate::{Discipline, Gate, GateConfig, Metrics};
use crate::concurrency::{Fixed, LimitAlgorithm, LimitHandle, Refuse};
use crate::reject::{RequestHead, Responder};

pub(crate) type Classify = Arc<dyn Fn(&RequestHead<'_>) -> Priority + Send + Sync>;
pub(crate) type Bypass = Arc<dyn Fn(&RequestHead<'_>) -> bool + Send + Sync>;

/// Keeps the wrapped service at full goodput under any load by queueing what it
/// cannot take yet and shedding what would wait too long; see the
/// [module docs](super).
///
/// Every service this layer produces shares one line and one limit.
pub struct LoadShedLayer<A = Fixed, C = MonotonicClock> {
    algorithm: A,
    clock: C,
    config: GateConfig,
    refuse: Refuse,
    priority: Option<Classify>,
    bypass: Option<Bypass>,
    name: &'static str,
    gate: Arc<OnceLock<Arc<Gate<A, C>>>>,
}

/// The default line length: 1024 waiting requests.
const DEFAULT_CAPACITY: usize = 1024;

impl LoadShedLayer {
    /// Lets `concurrency` requests into the service at once; the rest wait in a
    /// CoDel line (target 5 ms, interval 100 ms, at most 1024 requests).
    pub fn new(concurrency: NonZeroUsize) -> Self {
        Self::adaptive(Fixed::new(concurrency))
    }
}

impl<A: LimitAlgorithm> LoadShedLayer<A> {
    /// Like [`new`](LoadShedLayer::new), with the concurrency set by an adaptive
    /// algorithm (see [`concurrency`](crate::concurrency)).
    pub fn adaptive(algorithm: A) -> Self {
        LoadShedLayer {
            algorithm,
            clock: MonotonicClock::new(),
            config: GateConfig {
                capacity: DEFAULT_CAPACITY,
                discipline: Discipline::CoDel {
                    target: Duration::from_millis(5),
                    interval: Duration::from_millis(100),
                },
                shares: Vec::new(),
            },
            refuse: Refuse::new(Responder::default(), Some(Duration::from_secs(1))),
            priority: None,
            bypass: None,
            name: "default",
            gate: Arc::default(),
        }
    }
}

impl<A, C> LoadShedLayer<A, C> {
    fn reset(mut self) -> Self {
        self.gate = Arc::default();
        self
    }

    /// The CoDel parameters: once the line has not been empty for `interval`
    /// (default 100 ms), waiters older than `target` (default 5 ms) are shed and
    /// the newest waiter is served first. A request never waits longer than
    /// `interval`.
    pub fn codel(mut self, target: Duration, interval: Duration) -> Self {
        self.config.discipline = Discipline::CoDel { target, interval };
        self.reset()
    }

    /// The most requests that wait at once (default 1024). When the line is full,
    /// a request sheds the newest waiter of a lower [`Priority`], or is shed
    /// itself.
    pub fn capacity(mut self, capacity: NonZeroUsize) -> Self {
        self.config.capacity = capacity.get();
        self.reset()
    }

    /// Classifies requests; unclassified requests are [`Priority::Normal`].
    pub fn priority<F>(mut self, classify: F) -> Self
    where
        F: Fn(&RequestHead<'_>) -> Priority + Send + Sync + 'static,
    {
        self.priority = Some(Arc::new(classify));
        self
    }

    /// Requests for which `bypass` returns true skip the layer: never queued,
    /// never shed, not counted.
    pub fn bypass<F>(mut self, bypass: F) -> Self
    where
        F: Fn(&RequestHead<'_>) -> bool + Send + Sync + 'static,
    {
        self.bypass = Some(Arc::new(bypass));
        self
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

    /// The clock for waiting times (default [`MonotonicClock`]).
    pub fn clock<C2: Clock>(self, clock: C2) -> LoadShedLayer<A, C2> {
        LoadShedLayer {
            algorithm: self.algorithm,
            clock,
            config: self.config,
            refuse: self.refuse,
            priority: self.priority,
            bypass: self.bypass,
            name: self.name,
            gate: Arc::default(),
        }
    }
}

impl<A, C> LoadShedLayer<A, C>
where
    A: LimitAlgorithm + Clone,
    C: Clock,
{
    fn shared_gate(&self) -> Arc<Gate<A, C>> {
        self.gate
            .get_or_init(|| {
                Gate::new(
                    self.algorithm.clone(),
                    self.clock.clone(),
                    &self.config,
                    Metrics::register("shed", self.name),
                )
            })
            .clone()
    }

    /// A handle that reads the concurrency limit, in-flight count and line
    /// length.
    pub fn handle(&self) -> LimitHandle {
        LimitHandle {
            gate: self.shared_gate(),
        }
    }
}

impl<S, A, C> Layer<S> for LoadShedLayer<A, C>
where
    A: LimitAlgorithm + Clone,
    C: Clock,
{
    type Service = LoadShed<S, A, C>;

    fn layer(&self, inner: S) -> Self::Service {
        LoadShed::new(
            inner,
            Arc::new(Shared {
                gate: self.shared_gate(),
                refuse: self.refuse.clone(),
                priority: self.priority.clone(),
                bypass: self.bypass.clone(),
            }),
        )
    }
}

impl<A: Clone, C: Clone> Clone for LoadShedLayer<A, C> {
    fn clone(&self) -> Self {
        LoadShedLayer {
            algorithm: self.algorithm.clone(),
            clock: self.clock.clone(),
            config: self.config.clone(),
            refuse: self.refuse.clone(),
            priority: self.priority.clone(),
            bypass: self.bypass.clone(),
            name: self.name,
            gate: self.gate.clone(),
        }
    }
}

impl<A: fmt::Debug, C> fmt::Debug for LoadShedLayer<A, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadShedLayer")
            .field("algorithm", &self.algorithm)
            .field("capacity", &self.config.capacity)
            .field("discipline", &self.config.discipline)
            .finish_non_exhaustive()
    }
}
