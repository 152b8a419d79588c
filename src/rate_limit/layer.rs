//! The rate limit layer and its builder.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use http::HeaderValue;
use tower_layer::Layer;

use super::class::EveryRequest;
use super::headers::{Headers, policy_value};
use super::memory::{CompiledPlan, MemoryState};
use super::quota::{ConfigError, Plan};
use super::service::{Backend, RateLimit, Shared};
use crate::clock::{Clock, MonotonicClock};
use crate::key::{ClientIp, MissingKey};
use crate::reject::Responder;

/// Applies [`RateLimit`] to a service. Cheap to clone: clones share state.
#[derive(Debug)]
pub struct RateLimitLayer<K = ClientIp, C = MonotonicClock, P = EveryRequest> {
    shared: Arc<Shared<K, C, P>>,
}

impl<K, C, P> Clone for RateLimitLayer<K, C, P> {
    fn clone(&self) -> Self {
        RateLimitLayer {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl RateLimitLayer {
    /// A layer that limits each client IP (the TCP peer) to `plan`, which may be
    /// one [`Quota`](super::Quota) or [`LeakyBucket`](super::LeakyBucket).
    ///
    /// # Panics
    ///
    /// If the plan is invalid (see [`Plan`]); [`builder`](Self::builder) returns
    /// the error instead.
    pub fn new(plan: impl Into<Plan>) -> Self {
        Self::builder()
            .plan(plan)
            .build()
            .unwrap_or_else(|e| panic!("invalid rate limit: {e}"))
    }

    /// A builder with every option.
    pub fn builder() -> Builder {
        Builder {
            key: ClientIp::new(),
            clock: MonotonicClock::new(),
            classify: EveryRequest,
            settings: Settings {
                plans: Vec::new(),
                headers: Headers::NONE,
                responder: Responder::default(),
                missing: MissingKey::Reject,
                dry_run: false,
                max_keys: NonZeroUsize::new(1 << 20).expect("non-zero"),
                max_waiting: 10_000,
                #[cfg(feature = "redis")]
                redis: None,
            },
        }
    }
}

impl<K, C, P> RateLimitLayer<K, C, P> {
    /// How many entries (keys times quotas) the in-memory state holds now.
    /// Zero with the Redis backend.
    pub fn tracked_entries(&self) -> usize {
        match &self.shared.backend {
            Backend::Memory(state) => state.len(),
            #[cfg(feature = "redis")]
            Backend::Redis(_) => 0,
        }
    }
}

impl<S, K, C, P> Layer<S> for RateLimitLayer<K, C, P> {
    type Service = RateLimit<S, K, C, P>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::new(inner, Arc::clone(&self.shared))
    }
}

/// Configures a [`RateLimitLayer`].
///
/// Defaults: keyed by [`ClientIp`] (the TCP peer), every request costs one unit of
/// the first plan, no rate limit headers besides `Retry-After`, requests without a
/// key are refused, at most 1,048,576 entries in memory (about 36 bytes each) and
/// 10,000 requests waiting in leaky buckets.
#[derive(Debug)]
pub struct Builder<K = ClientIp, C = MonotonicClock, P = EveryRequest> {
    key: K,
    clock: C,
    classify: P,
    settings: Settings,
}

/// The options that do not change the builder's type.
#[derive(Debug)]
struct Settings {
    plans: Vec<Plan>,
    headers: Headers,
    responder: Responder,
    missing: MissingKey,
    dry_run: bool,
    max_keys: NonZeroUsize,
    max_waiting: usize,
    #[cfg(feature = "redis")]
    redis: Option<crate::store::RedisStore>,
}

impl<K, C, P> Builder<K, C, P> {
    /// Adds a quota to the last plan (creating the first plan if there is none).
    pub fn quota(mut self, quota: impl Into<super::Policy>) -> Self {
        match self.settings.plans.last_mut() {
            Some(plan) => plan.policies.push(quota.into()),
            None => self.settings.plans.push(Plan::new().quota(quota)),
        }
        self
    }

    /// Adds a plan. Plans are numbered in the order they are added, from 0; a
    /// classifier picks one per request (per route, per user tier).
    pub fn plan(mut self, plan: impl Into<Plan>) -> Self {
        self.settings.plans.push(plan.into());
        self
    }

    /// What requests are counted by (default [`ClientIp`]).
    pub fn key<K2>(self, key: K2) -> Builder<K2, C, P> {
        Builder {
            key,
            clock: self.clock,
            classify: self.classify,
            settings: self.settings,
        }
    }

    /// The time source (default [`MonotonicClock`]). The Redis backend uses the
    /// server's clock for decisions and this one only for waiting.
    pub fn clock<C2: Clock>(self, clock: C2) -> Builder<K, C2, P> {
        Builder {
            key: self.key,
            clock,
            classify: self.classify,
            settings: self.settings,
        }
    }

    /// Chooses each request's plan and cost, or exempts it (see [`Classify`](super::Classify)).
    pub fn classify<P2>(self, classify: P2) -> Builder<K, C, P2> {
        Builder {
            key: self.key,
            clock: self.clock,
            classify,
            settings: self.settings,
        }
    }

    /// Which rate limit headers every response carries (default none).
    pub fn headers(mut self, headers: Headers) -> Self {
        self.settings.headers = headers;
        self
    }

    /// How refusals are answered (default problem+json or a gRPC status).
    pub fn responder(mut self, responder: Responder) -> Self {
        self.settings.responder = responder;
        self
    }

    /// What to do with requests whose key cannot be extracted (default: refuse).
    pub fn on_missing_key(mut self, missing: MissingKey) -> Self {
        self.settings.missing = missing;
        self
    }

    /// Count, log and add headers, but never refuse or delay: to try a limit in
    /// production before enforcing it.
    pub fn dry_run(mut self, dry_run: bool) -> Self {
        self.settings.dry_run = dry_run;
        self
    }

    /// The most entries (one per key and quota) kept in memory: a hard cap, never
    /// rounded up (but at least [`MAX_QUOTAS`](super::MAX_QUOTAS), so one key always
    /// fits). When full, keys whose bucket is full again are dropped first (they
    /// carry no information), then those nearest to full, a shard at a time.
    pub fn max_keys(mut self, max: NonZeroUsize) -> Self {
        self.settings.max_keys = max;
        self
    }

    /// The most requests waiting in leaky buckets at once, over all keys; a
    /// request that would wait beyond it is refused with 429.
    pub fn max_waiting(mut self, max: usize) -> Self {
        self.settings.max_waiting = max;
        self
    }

    /// Keeps the state in Redis, shared by every instance using the same store
    /// and prefix.
    #[cfg(feature = "redis")]
    pub fn redis(mut self, store: crate::store::RedisStore) -> Self {
        self.settings.redis = Some(store);
        self
    }

    /// Checks the configuration and builds the layer.
    pub fn build(self) -> Result<RateLimitLayer<K, C, P>, ConfigError> {
        let settings = self.settings;
        if settings.plans.is_empty() {
            return Err(ConfigError::NoPlan);
        }
        for plan in &settings.plans {
            plan.validate()?;
        }
        let plans: Box<[CompiledPlan]> = settings
            .plans
            .into_iter()
            .enumerate()
            .map(|(i, plan)| CompiledPlan::new(plan, i))
            .collect();
        let policy_values: Box<[HeaderValue]> = plans.iter().map(policy_value).collect();

        #[cfg(feature = "redis")]
        let backend = match settings.redis {
            Some(store) => Backend::Redis(super::redis::RedisLimiter::new(store, &plans)),
            None => Backend::Memory(MemoryState::new(settings.max_keys.get())),
        };
        #[cfg(not(feature = "redis"))]
        let backend = Backend::Memory(MemoryState::new(settings.max_keys.get()));

        Ok(RateLimitLayer {
            shared: Arc::new(Shared {
                key: self.key,
                clock: self.clock,
                classify: self.classify,
                plans,
                policy_values,
                backend,
                hasher: foldhash::quality::RandomState::default(),
                headers: settings.headers,
                responder: settings.responder,
                missing: settings.missing,
                dry_run: settings.dry_run,
                waiting: Arc::new(AtomicUsize::new(0)),
                max_waiting: settings.max_waiting,
            }),
        })
    }
}
