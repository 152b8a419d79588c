//! Time as the layers see it.
//!
//! Every time-dependent layer reads time through a [`Clock`]: the rate limiter's
//! theoretical arrival times, queue deadlines, cache ages. A clock gives the current
//! [`Timestamp`] and a future that completes at a given one, so the same code runs on
//! real time in production and on exact, hand-driven time in tests.
//!
//! | clock | reads | sleeps with | for |
//! |---|---|---|---|
//! | [`MonotonicClock`] (the default) | the CPU's time-stamp counter through `quanta`, calibrated against the OS monotonic clock | `tokio::time` | production |
//! | [`TokioClock`] | `tokio::time::Instant` | `tokio::time` | tests under `tokio::time::pause()` |
//! | [`ManualClock`] | a counter that only [`ManualClock::advance`] moves | its own timer list | exact unit tests, no runtime needed |
//!
//! Timestamps are nanoseconds since the clock's own origin (the moment it was
//! created); they are only comparable between clones of one clock.
//!
//! # Example
//!
//! A timer driven by a manual clock completes when the test says so, with no real
//! sleeping:
//!
//! ```
//! use std::time::Duration;
//! use tower_toolbox::clock::{Clock, ManualClock};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let clock = ManualClock::new();
//! let deadline = clock.now() + Duration::from_secs(30);
//! let sleeper = tokio::spawn(clock.sleep_until(deadline));
//!
//! tokio::task::yield_now().await;
//! assert!(!sleeper.is_finished());
//!
//! clock.advance(Duration::from_secs(30));
//! sleeper.await.unwrap();
//! assert_eq!(clock.now().as_nanos(), 30_000_000_000);
//! # }
//! ```

use std::future::Future;
use std::ops::{Add, Sub};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// A point in time: nanoseconds since the origin of the clock that produced it.
///
/// 64 bits of nanoseconds cover 584 years; arithmetic saturates rather than wraps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The clock's origin.
    pub const ZERO: Timestamp = Timestamp(0);

    /// A timestamp `nanos` nanoseconds after the origin.
    pub const fn from_nanos(nanos: u64) -> Self {
        Timestamp(nanos)
    }

    /// Nanoseconds since the origin.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// The time from `earlier` to `self`, or zero if `earlier` is later.
    pub const fn saturating_duration_since(self, earlier: Timestamp) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

/// Converts a duration to whole nanoseconds, saturating at `u64::MAX` (584 years).
pub(crate) fn duration_nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

impl Add<Duration> for Timestamp {
    type Output = Timestamp;

    fn add(self, rhs: Duration) -> Timestamp {
        Timestamp(self.0.saturating_add(duration_nanos(rhs)))
    }
}

impl Sub<Duration> for Timestamp {
    type Output = Timestamp;

    fn sub(self, rhs: Duration) -> Timestamp {
        Timestamp(self.0.saturating_sub(duration_nanos(rhs)))
    }
}

/// A monotonic time source and timer.
///
/// Implementations are cheap to clone; clones share one origin and one notion of
/// "now".
pub trait Clock: Clone + Send + Sync + 'static {
    /// The future returned by [`Clock::sleep_until`].
    type Sleep: Future<Output = ()> + Send + 'static;

    /// The current time. Never goes backwards.
    fn now(&self) -> Timestamp;

    /// A future that completes once [`Clock::now`] has reached `deadline`
    /// (at once if it already has).
    fn sleep_until(&self, deadline: Timestamp) -> Self::Sleep;
}

/// The default clock: fast monotonic time, real tokio timers.
///
/// Reading it costs a few nanoseconds where the CPU has an invariant time-stamp
/// counter (`quanta` checks and calibrates it), and falls back to the OS
/// monotonic clock elsewhere. Sleeping uses `tokio::time`, so it needs a tokio
/// runtime with the time driver enabled.
#[derive(Clone, Debug)]
pub struct MonotonicClock {
    clock: quanta::Clock,
    /// The raw counter at the origin: reads subtract it and scale the difference
    /// to nanoseconds in one step, with no `Duration` in between.
    origin: u64,
    tokio_origin: tokio::time::Instant,
}

impl MonotonicClock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        let clock = quanta::Clock::new();
        let origin = clock.raw();
        MonotonicClock {
            clock,
            origin,
            tokio_origin: tokio::time::Instant::now(),
        }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    type Sleep = tokio::time::Sleep;

    #[inline]
    fn now(&self) -> Timestamp {
        Timestamp(self.clock.delta_as_nanos(self.origin, self.clock.raw()))
    }

    fn sleep_until(&self, deadline: Timestamp) -> Self::Sleep {
        tokio::time::sleep_until(self.tokio_origin + Duration::from_nanos(deadline.0))
    }
}

/// A clock that reads `tokio::time::Instant`, so it stops, jumps and advances with
/// tokio's test clock (`tokio::time::pause`, `advance`, auto-advance).
///
/// Create it inside the runtime whose clock it should follow.
#[derive(Clone, Debug)]
pub struct TokioClock {
    origin: tokio::time::Instant,
}

impl TokioClock {
    /// A clock whose origin is tokio's now.
    pub fn new() -> Self {
        TokioClock {
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    type Sleep = tokio::time::Sleep;

    fn now(&self) -> Timestamp {
        Timestamp(duration_nanos(
            tokio::time::Instant::now().saturating_duration_since(self.origin),
        ))
    }

    fn sleep_until(&self, deadline: Timestamp) -> Self::Sleep {
        tokio::time::sleep_until(self.origin + Duration::from_nanos(deadline.0))
    }
}

/// A clock that stands still until the test moves it.
///
/// [`ManualClock::advance`] moves time forward and wakes every sleeper whose
/// deadline has passed, so a test controls exactly when a timer fires. It needs no
/// runtime and no real time passes.
#[derive(Clone, Debug, Default)]
pub struct ManualClock {
    inner: Arc<ManualInner>,
}

#[derive(Debug, Default)]
struct ManualInner {
    now: AtomicU64,
    sleepers: Mutex<Vec<(u64, Waker)>>,
}

impl ManualClock {
    /// A clock at its origin, [`Timestamp::ZERO`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves time forward by `by` and wakes the sleepers that are now due.
    pub fn advance(&self, by: Duration) {
        let now = self
            .inner
            .now
            .fetch_add(duration_nanos(by), Ordering::AcqRel)
            .saturating_add(duration_nanos(by));

        // Wake outside the lock: a woken task may poll its sleep again at once.
        let due: Vec<Waker> = {
            let mut sleepers = self.lock_sleepers();
            let mut due = Vec::new();
            sleepers.retain(|(deadline, waker)| {
                if *deadline <= now {
                    due.push(waker.clone());
                    false
                } else {
                    true
                }
            });
            due
        };
        due.into_iter().for_each(Waker::wake);
    }

    /// How many sleeps are waiting for a deadline that has not come.
    pub fn pending_sleeps(&self) -> usize {
        self.lock_sleepers().len()
    }

    fn lock_sleepers(&self) -> std::sync::MutexGuard<'_, Vec<(u64, Waker)>> {
        // A panic while holding this lock cannot leave the list inconsistent.
        self.inner
            .sleepers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Clock for ManualClock {
    type Sleep = ManualSleep;

    fn now(&self) -> Timestamp {
        Timestamp(self.inner.now.load(Ordering::Acquire))
    }

    fn sleep_until(&self, deadline: Timestamp) -> ManualSleep {
        ManualSleep {
            clock: self.clone(),
            deadline: deadline.0,
            registered: false,
        }
    }
}

/// The future returned by [`ManualClock::sleep_until`].
#[derive(Debug)]
pub struct ManualSleep {
    clock: ManualClock,
    deadline: u64,
    registered: bool,
}

impl Future for ManualSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.clock.inner.now.load(Ordering::Acquire) >= self.deadline {
            return Poll::Ready(());
        }

        let mut sleepers = self.clock.lock_sleepers();

        // Check again under the lock: `advance` may have run since the first check,
        // and it drains the list under this same lock.
        if self.clock.inner.now.load(Ordering::Acquire) >= self.deadline {
            return Poll::Ready(());
        }
        let deadline = self.deadline;
        let waker = cx.waker();
        match sleepers
            .iter_mut()
            .find(|(d, w)| self.registered && *d == deadline && w.will_wake(waker))
        {
            Some(_) => {}
            None => sleepers.push((deadline, waker.clone())),
        }
        drop(sleepers);
        self.registered = true;
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_arithmetic_saturates() {
        let t = Timestamp::from_nanos(5);
        assert_eq!((t - Duration::from_nanos(10)).as_nanos(), 0);
        assert_eq!((t + Duration::MAX).as_nanos(), u64::MAX);
        assert_eq!(
            Timestamp::from_nanos(3).saturating_duration_since(t),
            Duration::ZERO
        );
    }

    #[test]
    fn monotonic_clock_never_goes_backwards() {
        let clock = MonotonicClock::new();
        let mut last = clock.now();
        for _ in 0..10_000 {
            let now = clock.now();
            assert!(now >= last);
            last = now;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_paused_time() {
        let clock = TokioClock::new();
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(clock.now().as_nanos(), 1_500_000_000);
        let start = clock.now();
        clock.sleep_until(start + Duration::from_secs(2)).await;
        assert_eq!(
            clock.now().saturating_duration_since(start),
            Duration::from_secs(2)
        );
    }

    #[tokio::test]
    async fn manual_sleep_fires_only_when_advanced_past_its_deadline() {
        let clock = ManualClock::new();
        let sleeper = tokio::spawn(clock.sleep_until(Timestamp::from_nanos(1_000)));
        tokio::task::yield_now().await;
        assert_eq!(clock.pending_sleeps(), 1);

        clock.advance(Duration::from_nanos(999));
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished());
        assert_eq!(clock.pending_sleeps(), 1);

        clock.advance(Duration::from_nanos(1));
        sleeper.await.unwrap();
        assert_eq!(clock.pending_sleeps(), 0);
    }

    #[tokio::test]
    async fn manual_sleep_in_the_past_is_ready_at_once() {
        let clock = ManualClock::new();
        clock.advance(Duration::from_secs(1));
        clock.sleep_until(Timestamp::from_nanos(10)).await;
        assert_eq!(clock.pending_sleeps(), 0);
    }
}
