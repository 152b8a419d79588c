//! Quotas: how many requests, how fast they come back, and how they are named.

use std::borrow::Cow;
use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;

use super::gcra::Limit;
use crate::clock::duration_nanos;

/// The most quotas one plan may hold; each request checks them all at once.
pub const MAX_QUOTAS: usize = 4;

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// A token bucket: `burst` requests at once, refilled at a steady rate.
///
/// The name says what it admits: `Quota::per_second(2)` admits 2 requests every
/// second, and a new client may send both at once. [`burst`](Self::burst) raises
/// how many may come at once without changing the rate.
///
/// ```
/// use std::num::NonZeroU32;
/// use std::time::Duration;
/// use tower_toolbox::rate_limit::Quota;
///
/// let per_ip = Quota::per_minute(NonZeroU32::new(600).unwrap())
///     .burst(NonZeroU32::new(50).unwrap())
///     .named("per-ip");
/// let slow = Quota::with_period(Duration::from_secs(10)).unwrap(); // 1 every 10 s
/// # let _ = (per_ip, slow);
/// ```
///
/// # Zero rates and bursts do not build
///
/// A rate or burst of zero would admit nothing (or, as a period, everything), so
/// they take [`NonZeroU32`] and a zero is refused by the compiler, with an error
/// that names the expected type:
///
/// ```compile_fail,E0308
/// # use tower_toolbox::rate_limit::Quota;
/// let nothing = Quota::per_second(0);
/// ```
///
/// ```compile_fail,E0308
/// # use std::num::NonZeroU32;
/// # use tower_toolbox::rate_limit::Quota;
/// let nothing = Quota::per_minute(NonZeroU32::new(60).unwrap()).burst(0);
/// ```
///
/// A rate written as a constant is checked while compiling too:
///
/// ```compile_fail,E0080
/// # use std::num::NonZeroU32;
/// # use tower_toolbox::rate_limit::Quota;
/// const RATE: NonZeroU32 = NonZeroU32::new(0).unwrap();
/// let nothing = Quota::per_second(RATE);
/// ```
///
/// A rate read from configuration at run time goes through `NonZeroU32::new`,
/// whose `None` the caller must handle; a zero [`with_period`](Self::with_period)
/// is refused with [`ConfigError::ZeroPeriod`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quota {
    interval: u64,
    burst: NonZeroU32,
    name: Cow<'static, str>,
}

impl Quota {
    /// `count` requests per second; a burst of `count`.
    pub fn per_second(count: NonZeroU32) -> Self {
        Self::spread(NANOS_PER_SEC, count)
    }

    /// `count` requests per minute; a burst of `count`.
    pub fn per_minute(count: NonZeroU32) -> Self {
        Self::spread(60 * NANOS_PER_SEC, count)
    }

    /// `count` requests per hour; a burst of `count`.
    pub fn per_hour(count: NonZeroU32) -> Self {
        Self::spread(3600 * NANOS_PER_SEC, count)
    }

    /// One request per `period`; a burst of 1. A zero period is refused.
    pub fn with_period(period: Duration) -> Result<Self, ConfigError> {
        match duration_nanos(period) {
            0 => Err(ConfigError::ZeroPeriod),
            nanos => Ok(Quota {
                interval: nanos,
                burst: NonZeroU32::MIN,
                name: Cow::Borrowed("default"),
            }),
        }
    }

    fn spread(period: u64, count: NonZeroU32) -> Self {
        Quota {
            interval: (period / u64::from(count.get())).max(1),
            burst: count,
            name: Cow::Borrowed("default"),
        }
    }

    /// How many requests may arrive at once (the bucket's size).
    pub fn burst(mut self, burst: NonZeroU32) -> Self {
        self.burst = burst;
        self
    }

    /// The policy name shown in the `RateLimit` headers and problem details
    /// (default `default`). Printable ASCII only.
    pub fn named(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = name.into();
        self
    }

    /// The time to earn back one request.
    pub fn replenish_interval(&self) -> Duration {
        Duration::from_nanos(self.interval)
    }
}

/// A leaky bucket with nginx `limit_req` semantics: requests over the rate wait
/// their turn instead of being refused, up to `burst` of them.
///
/// - [`burst`](Self::burst): how many requests beyond the rate may wait (default 0);
///   more than that are refused with 429.
/// - [`delay`](Self::delay): how many of those pass at once without waiting
///   (default 0: every excess request waits its turn); [`nodelay`](Self::nodelay):
///   all of them.
///
/// At 1 request per second with a burst of 5, seven simultaneous requests from a
/// new client pass after 0, 1, 2, 3, 4 and 5 seconds and the seventh is refused;
/// with `delay(2)` they pass after 0, 0, 0, 1, 2 and 3 seconds; with `nodelay()`
/// all six pass at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeakyBucket {
    interval: u64,
    burst: u32,
    delay: Option<u32>,
    name: Cow<'static, str>,
}

impl LeakyBucket {
    /// Leaks `count` requests per second.
    pub fn per_second(count: NonZeroU32) -> Self {
        Self::leak(NANOS_PER_SEC, count)
    }

    /// Leaks `count` requests per minute.
    pub fn per_minute(count: NonZeroU32) -> Self {
        Self::leak(60 * NANOS_PER_SEC, count)
    }

    fn leak(period: u64, count: NonZeroU32) -> Self {
        LeakyBucket {
            interval: (period / u64::from(count.get())).max(1),
            burst: 0,
            delay: Some(0),
            name: Cow::Borrowed("default"),
        }
    }

    /// How many requests beyond the rate may wait (nginx `burst`).
    pub fn burst(mut self, burst: u32) -> Self {
        self.burst = burst;
        self
    }

    /// How many of the waiting requests pass at once (nginx `delay`). A value over
    /// the burst means all of them.
    pub fn delay(mut self, delay: u32) -> Self {
        self.delay = Some(delay);
        self
    }

    /// Every request within the burst passes at once (nginx `nodelay`).
    pub fn nodelay(mut self) -> Self {
        self.delay = None;
        self
    }

    /// The policy name (default `default`).
    pub fn named(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = name.into();
        self
    }
}

/// A quota in the form the layer checks: a token bucket or a leaky bucket, named.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    pub(crate) name: Cow<'static, str>,
    pub(crate) limit: Limit,
}

impl Policy {
    /// The policy's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many requests the bucket holds (`q` in `RateLimit-Policy`).
    pub fn units(&self) -> u64 {
        self.limit.units()
    }

    /// The time to refill the whole bucket, rounded up to whole seconds
    /// (`w` in `RateLimit-Policy`).
    pub fn window_secs(&self) -> u64 {
        self.limit.capacity.div_ceil(NANOS_PER_SEC)
    }
}

impl From<Quota> for Policy {
    fn from(quota: Quota) -> Self {
        Policy {
            name: quota.name,
            limit: Limit {
                interval: quota.interval,
                capacity: u64::from(quota.burst.get()).saturating_mul(quota.interval),
                free_excess: None,
            },
        }
    }
}

impl From<LeakyBucket> for Policy {
    fn from(bucket: LeakyBucket) -> Self {
        let delay = bucket.delay.map_or(bucket.burst, |d| d.min(bucket.burst));
        Policy {
            name: bucket.name,
            limit: Limit {
                interval: bucket.interval,
                capacity: (u64::from(bucket.burst) + 1).saturating_mul(bucket.interval),
                free_excess: Some(u64::from(delay).saturating_mul(bucket.interval)),
            },
        }
    }
}

/// The quotas one request is checked against, all or nothing: a request refused
/// by one consumes none of the others.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub(crate) policies: Vec<Policy>,
}

impl Plan {
    /// An empty plan; add quotas with [`quota`](Self::quota).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a quota (a [`Quota`] or a [`LeakyBucket`]).
    pub fn quota(mut self, quota: impl Into<Policy>) -> Self {
        self.policies.push(quota.into());
        self
    }

    /// The plan's quotas.
    pub fn policies(&self) -> &[Policy] {
        &self.policies
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.policies.is_empty() {
            return Err(ConfigError::EmptyPlan);
        }
        if self.policies.len() > MAX_QUOTAS {
            return Err(ConfigError::TooManyQuotas(self.policies.len()));
        }
        for (i, policy) in self.policies.iter().enumerate() {
            let name = policy.name.as_ref();
            if name.is_empty() || !name.bytes().all(|b| (0x20..0x7f).contains(&b)) {
                return Err(ConfigError::InvalidName(name.to_owned()));
            }
            if self.policies[..i].iter().any(|p| p.name == policy.name) {
                return Err(ConfigError::DuplicateName(name.to_owned()));
            }
        }
        Ok(())
    }
}

impl<P: Into<Policy>> From<P> for Plan {
    fn from(quota: P) -> Self {
        Plan::new().quota(quota)
    }
}

/// A rate limit configuration that cannot work.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// A replenish period of zero would admit unlimited requests.
    ZeroPeriod,
    /// A plan without quotas.
    EmptyPlan,
    /// The layer was built without any plan.
    NoPlan,
    /// More than [`MAX_QUOTAS`] quotas in one plan.
    TooManyQuotas(usize),
    /// Two quotas of one plan share a name, so headers could not tell them apart.
    DuplicateName(String),
    /// A policy name that is empty or not printable ASCII.
    InvalidName(String),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::ZeroPeriod => {
                f.write_str("a quota's replenish period must be longer than zero")
            }
            ConfigError::EmptyPlan => f.write_str("a rate limit plan needs at least one quota"),
            ConfigError::NoPlan => f.write_str("a rate limit layer needs at least one quota"),
            ConfigError::TooManyQuotas(n) => {
                write!(
                    f,
                    "a plan holds at most {MAX_QUOTAS} quotas, this one has {n}"
                )
            }
            ConfigError::DuplicateName(name) => {
                write!(f, "two quotas of one plan are named {name:?}")
            }
            ConfigError::InvalidName(name) => {
                write!(f, "quota name {name:?} must be non-empty printable ASCII")
            }
        }
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    #[test]
    fn per_minute_policy_describes_its_window() {
        let policy = Policy::from(Quota::per_minute(nz(100)));
        assert_eq!(policy.units(), 100);
        assert_eq!(policy.window_secs(), 60);
    }

    #[test]
    fn leaky_bucket_holds_burst_plus_one() {
        let policy = Policy::from(LeakyBucket::per_second(nz(1)).burst(5));
        assert_eq!(policy.units(), 6);
        assert_eq!(policy.limit.free_excess, Some(0));
        let nodelay = Policy::from(LeakyBucket::per_second(nz(1)).burst(5).nodelay());
        assert_eq!(nodelay.limit.free_excess, Some(5_000_000_000));
    }

    #[test]
    fn bad_plans_are_refused_with_a_clear_error() {
        assert_eq!(
            Quota::with_period(Duration::ZERO),
            Err(ConfigError::ZeroPeriod)
        );
        assert_eq!(Plan::new().validate(), Err(ConfigError::EmptyPlan));
        let twice = Plan::new()
            .quota(Quota::per_second(nz(1)))
            .quota(Quota::per_hour(nz(9)));
        assert_eq!(
            twice.validate().unwrap_err().to_string(),
            "two quotas of one plan are named \"default\""
        );
        let five = (0..5).fold(Plan::new(), |p, i| {
            p.quota(Quota::per_second(nz(1)).named(format!("q{i}")))
        });
        assert_eq!(five.validate(), Err(ConfigError::TooManyQuotas(5)));
        let bad = Plan::from(Quota::per_second(nz(1)).named("caf\u{e9}"));
        assert!(matches!(bad.validate(), Err(ConfigError::InvalidName(_))));
    }
}
