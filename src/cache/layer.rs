//! The cache layer and its settings.

use std::fmt;
use std::num::{NonZeroU64, NonZeroUsize};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use http::request::Parts;
use tower_layer::Layer;

use super::entry::Freshness;
use super::policy::{DEFAULT_MAX_HEURISTIC, Mode};
use super::service::Cache;
use super::shared::{Config, Shared};
use crate::clock::{Clock, MonotonicClock};
use crate::reject::Responder;

/// Adds an RFC 9111 response cache in front of a service.
///
/// Every service made by one layer (and by its clones) shares one store. See the
/// [module docs](super) for what is stored and served.
pub struct CacheLayer<C = MonotonicClock> {
    config: Config,
    clock: C,
    shared: Arc<OnceLock<Arc<Shared<C>>>>,
}

impl<C: Clone> Clone for CacheLayer<C> {
    fn clone(&self) -> Self {
        CacheLayer {
            config: self.config.clone(),
            clock: self.clock.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<C> fmt::Debug for CacheLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheLayer")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl CacheLayer {
    /// A shared-mode cache of at most 64 MiB, storing bodies up to 1 MiB, with
    /// request collapsing on.
    pub fn new() -> Self {
        CacheLayer {
            config: Config {
                freshness: Freshness {
                    mode: Mode::Shared,
                    max_heuristic: DEFAULT_MAX_HEURISTIC,
                    stale_while_revalidate: Duration::ZERO,
                    stale_if_error: Duration::ZERO,
                },
                max_bytes: 64 << 20,
                max_body: 1 << 20,
                keep_stale: Duration::from_secs(600),
                normalize_query: false,
                key_hook: None,
                collapse: true,
                collapse_timeout: Duration::from_secs(5),
                hit_for_miss: Duration::from_secs(10),
                responder: Responder::default(),
                wall_origin: None,
                in_memory: true,
                #[cfg(feature = "redis")]
                redis: None,
            },
            clock: MonotonicClock::new(),
            shared: Arc::default(),
        }
    }
}

impl Default for CacheLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<C: Clock> CacheLayer<C> {
    fn with(mut self, change: impl FnOnce(&mut Config)) -> Self {
        change(&mut self.config);
        // New settings, new store: services already made keep the old one.
        self.shared = Arc::default();
        self
    }

    /// Shared (the default) or private caching; see [`Mode`].
    pub fn mode(self, mode: Mode) -> Self {
        self.with(|c| c.freshness.mode = mode)
    }

    /// The most the in-memory store holds, in bytes: URL keys, header fields,
    /// bodies, the stored entries themselves and the store's own bookkeeping
    /// per URL (default 64 MiB). See the [module docs](super#limitations) for
    /// what one entry costs beyond its content.
    /// The least recently and least frequently used responses go first.
    pub fn max_bytes(self, bytes: NonZeroU64) -> Self {
        self.with(|c| c.max_bytes = bytes.get())
    }

    /// The largest body stored, in bytes (default 1 MiB). A larger response, by
    /// its `Content-Length` or as it streams, is passed through and not kept.
    pub fn max_body(self, bytes: NonZeroUsize) -> Self {
        self.with(|c| c.max_body = bytes.get())
    }

    /// The longest heuristic freshness (10 % of the time since `Last-Modified`)
    /// given to a response without explicit freshness (default one day).
    pub fn max_heuristic_freshness(self, limit: Duration) -> Self {
        self.with(|c| c.freshness.max_heuristic = limit)
    }

    /// `stale-while-revalidate` for responses that do not set it (default zero):
    /// for this long after a response goes stale it is served while one
    /// background request refreshes it.
    pub fn stale_while_revalidate(self, window: Duration) -> Self {
        self.with(|c| c.freshness.stale_while_revalidate = window)
    }

    /// `stale-if-error` for responses that do not set it (default zero): for this
    /// long after a response goes stale it is served when the origin answers 5xx
    /// or fails.
    pub fn stale_if_error(self, window: Duration) -> Self {
        self.with(|c| c.freshness.stale_if_error = window)
    }

    /// How long a stale response with a validator (`ETag`, `Last-Modified`) is
    /// kept for revalidation (default 10 minutes).
    pub fn keep_stale(self, duration: Duration) -> Self {
        self.with(|c| c.keep_stale = duration)
    }

    /// Sorts query parameters before keying, so `?b=2&a=1` and `?a=1&b=2` share a
    /// stored response (default off: the origin may care about order).
    pub fn normalize_query(self, on: bool) -> Self {
        self.with(|c| c.normalize_query = on)
    }

    /// Adds to every primary key what `hook` returns for the request (a tenant, a
    /// principal), so responses are only shared between requests with the same
    /// addition. A request for which it returns `None` bypasses the cache.
    pub fn key_hook<F>(self, hook: F) -> Self
    where
        F: Fn(&Parts) -> Option<String> + Send + Sync + 'static,
    {
        self.with(|c| c.key_hook = Some(Arc::new(hook)))
    }

    /// Collapses concurrent misses for one URL into one upstream request
    /// (default on).
    pub fn collapse(self, on: bool) -> Self {
        self.with(|c| c.collapse = on)
    }

    /// How long a collapsed request waits for the one in flight before going
    /// upstream itself (default 5 s).
    pub fn collapse_timeout(self, timeout: Duration) -> Self {
        self.with(|c| c.collapse_timeout = timeout)
    }

    /// How long a URL whose response could not be stored skips collapsing, so
    /// requests for it do not queue one behind another (default 10 s).
    pub fn hit_for_miss(self, duration: Duration) -> Self {
        self.with(|c| c.hit_for_miss = duration)
    }

    /// The responder for the 504 answered to `only-if-cached` requests.
    pub fn responder(self, responder: Responder) -> Self {
        self.with(|c| c.responder = responder)
    }

    /// The wall-clock time at which the clock reads zero (default: computed at
    /// the first use, so the clock tracks real time). Set it with a
    /// [`ManualClock`](crate::clock::ManualClock) to make `Date` and `Age` exact.
    pub fn wall_clock_origin(self, origin: SystemTime) -> Self {
        self.with(|c| c.wall_origin = Some(origin))
    }

    /// Keeps responses in Redis too, behind the in-memory store: shared by every
    /// instance using the same store and prefix. Reads and writes are bounded by
    /// the store's timeout; a slow or absent Redis is a miss, never an error.
    /// Replaces an earlier [`redis_only`](Self::redis_only).
    #[cfg(feature = "redis")]
    pub fn redis(self, store: crate::store::RedisStore) -> Self {
        self.with(|c| {
            c.redis = Some(store);
            c.in_memory = true;
        })
    }

    /// Keeps responses in Redis alone, with no in-memory tier: every instance
    /// sees the same stored responses at once (an invalidation or a new version
    /// on one is at once the others' too), and the instances hold no cached
    /// bytes themselves. Every hit costs a Redis round trip, bounded by the
    /// store's timeout; a slow or absent Redis is a miss, never an error.
    /// [`max_bytes`](Self::max_bytes) does not apply: Redis' own `maxmemory`
    /// policy bounds the store. Replaces an earlier [`redis`](Self::redis).
    #[cfg(feature = "redis")]
    pub fn redis_only(self, store: crate::store::RedisStore) -> Self {
        self.with(|c| {
            c.redis = Some(store);
            c.in_memory = false;
        })
    }

    /// Reads time from `clock` instead.
    pub fn clock<C2: Clock>(self, clock: C2) -> CacheLayer<C2> {
        CacheLayer {
            config: self.config,
            clock,
            shared: Arc::default(),
        }
    }

    /// The in-memory store's occupancy, after pending evictions are applied
    /// (zero responses and bytes with Redis alone, `redis_only`).
    pub fn stats(&self) -> CacheStats {
        let shared = self.shared();
        if let Some(memory) = &shared.memory {
            memory.run_pending_tasks();
        }
        CacheStats {
            responses: shared.memory.as_ref().map_or(0, |m| m.entry_count()),
            bytes: shared.memory.as_ref().map_or(0, |m| m.weighted_size()),
            in_flight: shared.inflight.len(),
            waiting: shared.inflight.waiting(),
        }
    }

    fn shared(&self) -> Arc<Shared<C>> {
        self.shared
            .get_or_init(|| Arc::new(Shared::new(self.config.clone(), self.clock.clone())))
            .clone()
    }
}

/// How full the in-memory store is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// URLs with at least one stored response.
    pub responses: u64,
    /// Their weight in bytes, as counted against [`CacheLayer::max_bytes`].
    pub bytes: u64,
    /// URLs with a collapsed request in flight.
    pub in_flight: usize,
    /// Requests parked behind one of those, waiting for its response.
    pub waiting: usize,
}

impl<S, C: Clock> Layer<S> for CacheLayer<C> {
    type Service = Cache<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Cache::new(inner, self.shared())
    }
}
