//! Properties of the rate limit arithmetic, over random request sequences on a
//! manual clock.
#![cfg(feature = "rate-limit")]

use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use proptest::prelude::*;
use tower_toolbox::clock::ManualClock;
use tower_toolbox::rate_limit::{Limiter, Plan, Quota};

fn limiter(plan: impl Into<Plan>, clock: &ManualClock) -> Limiter<ManualClock> {
    Limiter::with_clock(plan, clock.clone(), NonZeroUsize::new(1024).unwrap()).unwrap()
}

fn quota(rate: u32, burst: u32) -> Quota {
    Quota::per_second(NonZeroU32::new(rate).unwrap()).burst(NonZeroU32::new(burst).unwrap())
}

proptest! {
    /// Whatever the arrivals, what is admitted by time t is at most the burst plus
    /// what the rate earned since the first request.
    #[test]
    fn admitted_never_exceeds_burst_plus_rate(
        rate in 1u32..50,
        burst in 1u32..20,
        steps in proptest::collection::vec((0u64..300, 1u32..4), 1..200),
    ) {
        let clock = ManualClock::new();
        let limiter = limiter(quota(rate, burst), &clock);
        let interval_ns = 1_000_000_000 / u64::from(rate);
        let mut elapsed_ns = 0u64;
        let mut admitted = 0u64;
        for (advance_ms, cost) in steps {
            clock.advance(Duration::from_millis(advance_ms));
            elapsed_ns += advance_ms * 1_000_000;
            if limiter.check_n(&"k", cost).is_ok() {
                admitted += u64::from(cost);
            }
            prop_assert!(admitted <= u64::from(burst) + elapsed_ns / interval_ns);
        }
    }

    /// Retry-After is exact: one nanosecond early is refused, on time is admitted.
    #[test]
    fn retry_after_is_the_exact_moment_the_request_passes(
        rate in 1u32..50,
        burst in 1u32..10,
        cost in 1u32..10,
        used in 0u32..10,
    ) {
        prop_assume!(cost <= burst);
        let clock = ManualClock::new();
        let limiter = limiter(quota(rate, burst), &clock);
        let _ = limiter.check_n(&"k", used.min(burst));
        for _ in 0..3 {
            match limiter.check_n(&"k", cost) {
                Ok(_) => continue,
                Err(refused) => {
                    let after = refused.retry_after().unwrap();
                    prop_assert!(after > Duration::ZERO);
                    clock.advance(after - Duration::from_nanos(1));
                    prop_assert!(limiter.check_n(&"k", cost).is_err());
                    clock.advance(Duration::from_nanos(1));
                    prop_assert!(limiter.check_n(&"k", cost).is_ok());
                    break;
                }
            }
        }
    }

    /// A refused check changes nothing: the same sequence with the refused checks
    /// removed gives the same answers to the admitted ones.
    #[test]
    fn refused_checks_leave_no_trace(
        steps in proptest::collection::vec((0u64..200, 1u32..6), 1..100),
    ) {
        let plan = || Plan::new().quota(quota(5, 5).named("a")).quota(Quota::per_minute(NonZeroU32::new(20).unwrap()).named("b"));
        let clock = ManualClock::new();
        let first = limiter(plan(), &clock);
        let mut outcomes = Vec::new();
        for &(advance, cost) in &steps {
            clock.advance(Duration::from_millis(advance));
            outcomes.push(first.check_n(&"k", cost).is_ok());
        }

        let clock = ManualClock::new();
        let second = limiter(plan(), &clock);
        let mut pending = Duration::ZERO;
        for (&(advance, cost), &ok) in steps.iter().zip(&outcomes) {
            pending += Duration::from_millis(advance);
            if ok {
                clock.advance(pending);
                pending = Duration::ZERO;
                prop_assert!(second.check_n(&"k", cost).is_ok());
            }
        }
    }
}
