//! The keyed limiter on its own, without HTTP.

use std::hash::{BuildHasher, Hash};
use std::num::NonZeroUsize;
use std::time::Duration;

use super::memory::{CompiledPlan, MemoryState};
use super::quota::{ConfigError, Plan};
use crate::clock::{Clock, MonotonicClock};

/// A keyed rate limiter for anything countable: WebSocket messages, jobs, logins.
///
/// The same in-memory state and arithmetic as [`RateLimitLayer`](super::RateLimitLayer),
/// behind a plain method call.
///
/// ```
/// use std::num::NonZeroU32;
/// use tower_toolbox::rate_limit::{Limiter, Quota};
///
/// let logins = Limiter::new(Quota::per_minute(NonZeroU32::new(5).unwrap())).unwrap();
/// for _ in 0..5 {
///     assert!(logins.check(&"alice").is_ok());
/// }
/// let refused = logins.check(&"alice").unwrap_err();
/// // One login comes back every 12 s.
/// assert!(refused.retry_after().unwrap().as_secs_f64() > 11.9);
/// assert!(logins.check(&"bob").is_ok());
/// ```
#[derive(Debug)]
pub struct Limiter<C = MonotonicClock> {
    plan: CompiledPlan,
    state: MemoryState,
    hasher: foldhash::quality::RandomState,
    clock: C,
}

/// A refused check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused {
    retry_after: Option<Duration>,
}

impl Refused {
    /// When the same check would pass; `None` when it never can (its cost is more
    /// than a quota holds).
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.retry_after {
            Some(after) => write!(f, "rate limited; retry after {after:?}"),
            None => f.write_str("rate limited; the cost exceeds the quota"),
        }
    }
}

impl std::error::Error for Refused {}

impl Limiter {
    /// A limiter for `plan` on the default clock, holding up to 1,048,576 keys.
    pub fn new(plan: impl Into<Plan>) -> Result<Self, ConfigError> {
        Self::with_clock(
            plan,
            MonotonicClock::new(),
            NonZeroUsize::new(1 << 20).expect("non-zero"),
        )
    }
}

impl<C: Clock> Limiter<C> {
    /// A limiter for `plan` reading `clock`, holding up to `max_keys` entries
    /// (keys times quotas).
    pub fn with_clock(
        plan: impl Into<Plan>,
        clock: C,
        max_keys: NonZeroUsize,
    ) -> Result<Self, ConfigError> {
        let plan = plan.into();
        plan.validate()?;
        Ok(Limiter {
            plan: CompiledPlan::new(plan, 0),
            state: MemoryState::new(max_keys.get()),
            hasher: foldhash::quality::RandomState::default(),
            clock,
        })
    }

    /// Takes one unit from every quota of `key`'s plan, or none if any refuses.
    /// `Ok` holds how long to wait before going ahead: zero for token buckets.
    #[inline]
    pub fn check<K: Hash + ?Sized>(&self, key: &K) -> Result<Duration, Refused> {
        self.check_n(key, 1)
    }

    /// Takes `cost` units, all or nothing.
    #[inline]
    pub fn check_n<K: Hash + ?Sized>(&self, key: &K, cost: u32) -> Result<Duration, Refused> {
        let hash = self.hasher.hash_one(key);
        let now = self.clock.now().as_nanos();
        let verdict = self.state.check(hash, &self.plan, cost, now, true);
        if verdict.allowed {
            Ok(Duration::from_nanos(verdict.wait))
        } else {
            Err(Refused {
                retry_after: (verdict.retry_after != u64::MAX)
                    .then(|| Duration::from_nanos(verdict.retry_after)),
            })
        }
    }

    /// Entries held now (keys times quotas; keys with a full bucket are not kept).
    pub fn len(&self) -> usize {
        self.state.len()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
