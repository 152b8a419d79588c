//! The generic cell rate algorithm: one "theoretical arrival time" per key.
//!
//! A quota emits one unit every `interval`; the theoretical arrival time (TAT) is
//! when the bucket would be full again if no more requests came. A request of
//! `cost` units at `now` moves the TAT to `max(TAT, now) + cost * interval`, and is
//! admitted when that is at most `capacity` ahead of `now`. A TAT at or before
//! `now` means the bucket is full: such a key carries no information and its state
//! may be dropped.
//!
//! The leaky bucket of nginx's `limit_req` is the same arithmetic with a capacity
//! of `burst + 1` units and a delay: a request that finds `excess = max(TAT, now) -
//! now` waits `excess - delay * interval` before it passes.

/// One quota in nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limit {
    /// Nanoseconds to earn back one unit. At least 1.
    pub(crate) interval: u64,
    /// How far the TAT may run ahead of now, in nanoseconds: units * interval.
    pub(crate) capacity: u64,
    /// Leaky bucket only: the excess (nanoseconds) that passes without waiting.
    /// `None` for a token bucket, which never delays.
    pub(crate) free_excess: Option<u64>,
}

/// The result of checking one request against one quota.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Check {
    /// Admitted: store `tat`; the request waits `wait` nanoseconds first.
    Allow { tat: u64, wait: u64 },
    /// Refused: the same request would be admitted `retry_after` nanoseconds from now.
    Deny { retry_after: u64 },
}

impl Limit {
    /// Checks a request of `cost` units at `now` against a key whose TAT is `tat`
    /// (0 for a key never seen).
    #[inline]
    pub(crate) fn check(&self, tat: u64, now: u64, cost: u32) -> Check {
        let base = tat.max(now);
        let new_tat = base.saturating_add(u64::from(cost).saturating_mul(self.interval));
        let ahead = new_tat - now;
        if ahead > self.capacity {
            return Check::Deny {
                retry_after: ahead - self.capacity,
            };
        }
        let wait = match self.free_excess {
            None => 0,
            Some(free) => (base - now).saturating_sub(free),
        };
        Check::Allow { tat: new_tat, wait }
    }

    /// Whole units available for a key whose bucket is full again in
    /// `until_full` nanoseconds (see [`until_full`](Self::until_full)).
    #[inline]
    pub(crate) fn remaining(&self, until_full: u64) -> u64 {
        self.capacity.saturating_sub(until_full) / self.interval
    }

    /// Nanoseconds from `now` until the bucket is full again.
    #[inline]
    pub(crate) fn until_full(&self, tat: u64, now: u64) -> u64 {
        tat.saturating_sub(now)
    }

    /// The capacity in whole units.
    pub(crate) fn units(&self) -> u64 {
        self.capacity / self.interval
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn token_bucket(per_sec: u64, burst: u64) -> Limit {
        let interval = SEC / per_sec;
        Limit {
            interval,
            capacity: burst * interval,
            free_excess: None,
        }
    }

    fn run(limit: Limit, n: usize, now: u64) -> Vec<Check> {
        let mut tat = 0;
        (0..n)
            .map(|_| {
                let check = limit.check(tat, now, 1);
                if let Check::Allow { tat: t, .. } = check {
                    tat = t;
                }
                check
            })
            .collect()
    }

    #[test]
    fn a_new_key_admits_its_burst_at_once() {
        let checks = run(token_bucket(2, 2), 3, 10 * SEC);
        assert!(matches!(checks[0], Check::Allow { wait: 0, .. }));
        assert!(matches!(checks[1], Check::Allow { wait: 0, .. }));
        assert_eq!(
            checks[2],
            Check::Deny {
                retry_after: SEC / 2
            }
        );
    }

    #[test]
    fn cost_larger_than_capacity_is_never_admitted_and_says_so() {
        let limit = token_bucket(1, 3);
        assert_eq!(limit.check(0, 0, 4), Check::Deny { retry_after: SEC });
    }

    #[test]
    fn remaining_and_until_full() {
        let limit = token_bucket(10, 10);
        let Check::Allow { tat, .. } = limit.check(0, SEC, 3) else {
            panic!()
        };
        assert_eq!(limit.remaining(limit.until_full(tat, SEC)), 7);
        assert_eq!(limit.until_full(tat, SEC), 300_000_000);
        assert_eq!(limit.remaining(limit.until_full(tat, SEC + 100_000_000)), 8);
    }

    fn nginx(burst: u64, delay: Option<u64>) -> Limit {
        Limit {
            interval: SEC,
            capacity: (burst + 1) * SEC,
            free_excess: Some(delay.unwrap_or(burst) * SEC),
        }
    }

    fn waits(checks: &[Check]) -> Vec<Option<u64>> {
        checks
            .iter()
            .map(|c| match c {
                Check::Allow { wait, .. } => Some(wait / SEC),
                Check::Deny { .. } => None,
            })
            .collect()
    }

    #[test]
    fn nginx_burst_5_delays_0_to_5_seconds_and_rejects_the_seventh() {
        let checks = run(nginx(5, Some(0)), 7, 100 * SEC);
        assert_eq!(
            waits(&checks),
            [Some(0), Some(1), Some(2), Some(3), Some(4), Some(5), None]
        );
    }

    #[test]
    fn nginx_delay_2_lets_three_pass_at_once() {
        let checks = run(nginx(5, Some(2)), 7, 100 * SEC);
        assert_eq!(
            waits(&checks),
            [Some(0), Some(0), Some(0), Some(1), Some(2), Some(3), None]
        );
    }

    #[test]
    fn nginx_nodelay_lets_all_six_pass_at_once() {
        let checks = run(nginx(5, None), 7, 100 * SEC);
        assert_eq!(
            waits(&checks),
            [Some(0), Some(0), Some(0), Some(0), Some(0), Some(0), None]
        );
    }
}
