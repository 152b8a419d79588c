//! In-memory state: one theoretical arrival time per key and quota, in a sharded
//! table with a hard cap on keys.
//!
//! Written on `std` maps rather than `dashmap` because a request checks all the
//! quotas of its plan under one lock (so a refused request consumes none), and
//! because eviction must sweep one shard at a time; `dashmap` locks per entry and
//! exposes its shards only through an `unsafe` raw API.
//!
//! Keys arrive hashed to 64 bits with a per-process random seed (see the module
//! docs of `rate_limit` for what a collision means). All quotas of one key live in
//! the same shard: the shard is picked from bits 40..46 of the key's hash, and each
//! quota's entry is the key's hash with those bits left intact.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::gcra::Check;
use super::quota::{MAX_QUOTAS, Plan};

const SHARDS: usize = 64;
const SHARD_SHIFT: u32 = 40;
const SHARD_MASK: u64 = (SHARDS as u64 - 1) << SHARD_SHIFT;

/// The result of checking a request against a plan.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Verdict {
    /// Whether every quota admitted the request.
    pub(crate) allowed: bool,
    /// Nanoseconds the request waits before it passes (leaky buckets).
    pub(crate) wait: u64,
    /// When refused: nanoseconds until the same request would pass;
    /// `u64::MAX` when it never can (its cost exceeds a quota's capacity).
    pub(crate) retry_after: u64,
    /// Bit `i` set: quota `i` refused the request.
    pub(crate) denied: u8,
    /// Per quota, after the decision.
    pub(crate) quotas: [QuotaState; MAX_QUOTAS],
}

/// What the headers say about one quota.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct QuotaState {
    /// Whole requests available now.
    pub(crate) remaining: u64,
    /// Nanoseconds until the bucket is full again.
    pub(crate) reset: u64,
}

/// A plan compiled for lookups: the salt that separates each quota's entry.
#[derive(Clone, Debug)]
pub(crate) struct CompiledPlan {
    pub(crate) plan: Plan,
    pub(crate) salts: [u64; MAX_QUOTAS],
    pub(crate) leaky: bool,
}

impl CompiledPlan {
    pub(crate) fn new(plan: Plan, index: usize) -> Self {
        let mut salts = [0; MAX_QUOTAS];
        for (quota, salt) in salts.iter_mut().enumerate() {
            // Distinct, well-mixed salts that leave the shard bits alone.
            let id = (index * MAX_QUOTAS + quota) as u64;
            *salt = if id == 0 { 0 } else { mix(id) & !SHARD_MASK };
        }
        let leaky = plan.policies.iter().any(|p| p.limit.free_excess.is_some());
        CompiledPlan { plan, salts, leaky }
    }

    /// Checks a request of `cost` against the TATs `tat(i)` of each quota, and
    /// returns the verdict with the new TATs to store when admitted.
    #[inline]
    pub(crate) fn decide(
        &self,
        now: u64,
        cost: u32,
        may_wait: bool,
        mut tat: impl FnMut(usize) -> u64,
    ) -> (Verdict, [u64; MAX_QUOTAS]) {
        let mut verdict = Verdict {
            allowed: true,
            ..Verdict::default()
        };
        let mut tats = [0; MAX_QUOTAS];
        for (i, policy) in self.plan.policies.iter().enumerate() {
            let old = tat(i);
            tats[i] = old;
            let limit = &policy.limit;
            match limit.check(old, now, cost) {
                Check::Allow { tat: new, wait } if may_wait || wait == 0 => {
                    tats[i] = new;
                    verdict.wait = verdict.wait.max(wait);
                }
                Check::Allow { wait, .. } => {
                    // A leaky bucket would delay it, but no waiting place is free.
                    verdict.allowed = false;
                    verdict.denied |= 1 << i;
                    verdict.retry_after = verdict.retry_after.max(wait);
                }
                Check::Deny { retry_after } => {
                    let never = u64::from(cost).saturating_mul(limit.interval) > limit.capacity;
                    verdict.allowed = false;
                    verdict.denied |= 1 << i;
                    let after = if never { u64::MAX } else { retry_after };
                    verdict.retry_after = verdict.retry_after.max(after);
                }
            }
        }
        if !verdict.allowed {
            // All or nothing: a refused request consumes none of the quotas.
            verdict.wait = 0;
            for (i, policy) in self.plan.policies.iter().enumerate() {
                tats[i] = tat(i);
                verdict.quotas[i] = state(&policy.limit, tats[i], now);
            }
        } else {
            for (i, policy) in self.plan.policies.iter().enumerate() {
                verdict.quotas[i] = state(&policy.limit, tats[i], now);
            }
        }
        (verdict, tats)
    }
}

fn state(limit: &super::gcra::Limit, tat: u64, now: u64) -> QuotaState {
    QuotaState {
        remaining: limit.remaining(tat, now),
        reset: limit.until_full(tat, now),
    }
}

/// A 64-bit finaliser (splitmix64) to spread small ids over all bits.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Keys are already uniform 64-bit hashes: use them as they are.
#[derive(Default)]
struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used; fold anything else in for completeness.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Shard = HashMap<u64, u64, BuildHasherDefault<Identity>>;

#[repr(align(128))]
struct Padded(Mutex<Shard>);

/// The in-memory state of a rate limit layer.
pub(crate) struct MemoryState {
    shards: Box<[Padded]>,
    shard_capacity: usize,
}

impl MemoryState {
    /// A table holding at most about `max_entries` entries (one per key and quota).
    pub(crate) fn new(max_entries: usize) -> Self {
        let shard_capacity = max_entries.div_ceil(SHARDS).max(MAX_QUOTAS);
        let shards = (0..SHARDS)
            .map(|_| Padded(Mutex::new(Shard::default())))
            .collect();
        MemoryState {
            shards,
            shard_capacity,
        }
    }

    fn shard(&self, hash: u64) -> MutexGuard<'_, Shard> {
        let index = ((hash & SHARD_MASK) >> SHARD_SHIFT) as usize;
        // A panic under this lock cannot leave a map half-updated in a way that
        // matters: every entry is a plain number.
        self.shards[index]
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Checks and, when admitted, records a request of `cost` from the key with
    /// `hash` against `plan` at `now`.
    #[inline]
    pub(crate) fn check(
        &self,
        hash: u64,
        plan: &CompiledPlan,
        cost: u32,
        now: u64,
        may_wait: bool,
    ) -> Verdict {
        let mut shard = self.shard(hash);
        let n = plan.plan.policies.len();

        // One quota, the common case: one probe, updated in place.
        if n == 1 {
            let key = hash ^ plan.salts[0];
            if shard.len() >= self.shard_capacity && !shard.contains_key(&key) {
                self.evict(&mut shard, now);
            }
            return match shard.entry(key) {
                Entry::Occupied(mut slot) => {
                    let (verdict, tats) = plan.decide(now, cost, may_wait, |_| *slot.get());
                    if verdict.allowed {
                        *slot.get_mut() = tats[0];
                    }
                    verdict
                }
                Entry::Vacant(slot) => {
                    let (verdict, tats) = plan.decide(now, cost, may_wait, |_| 0);
                    if verdict.allowed && tats[0] > now {
                        slot.insert(tats[0]);
                    }
                    verdict
                }
            };
        }

        let (verdict, tats) = plan.decide(now, cost, may_wait, |i| {
            shard.get(&(hash ^ plan.salts[i])).copied().unwrap_or(0)
        });
        if verdict.allowed {
            for (i, &tat) in tats.iter().enumerate().take(n) {
                let key = hash ^ plan.salts[i];
                match shard.get_mut(&key) {
                    Some(slot) => *slot = tat,
                    None if tat > now => self.insert(&mut shard, key, tat, now),
                    None => {}
                }
            }
        }
        verdict
    }

    fn insert(&self, shard: &mut Shard, key: u64, tat: u64, now: u64) {
        if shard.len() >= self.shard_capacity {
            self.evict(shard, now);
        }
        shard.insert(key, tat);
    }

    /// Frees a quarter of a full shard: first the keys whose bucket is full again
    /// (they carry no information), then those nearest to full.
    #[cold]
    fn evict(&self, shard: &mut Shard, now: u64) {
        let before = shard.len();
        shard.retain(|_, tat| *tat > now);

        let target = self.shard_capacity - self.shard_capacity / 4;
        if shard.len() > target {
            // The `excess` smallest TATs go; ties at the cut are broken arbitrarily
            // so exactly `excess` entries leave.
            let excess = shard.len() - target;
            let mut tats: Vec<u64> = shard.values().copied().collect();
            let (below, &mut cut, _) = tats.select_nth_unstable(excess - 1);
            let mut ties = excess - below.iter().filter(|&&t| t < cut).count();
            shard.retain(|_, tat| match (*tat).cmp(&cut) {
                std::cmp::Ordering::Less => false,
                std::cmp::Ordering::Equal if ties > 0 => {
                    ties -= 1;
                    false
                }
                _ => true,
            });
        }
        tracing::debug!(
            evicted = before - shard.len(),
            kept = shard.len(),
            "rate limit shard full; evicted the keys nearest to a full bucket"
        );
    }

    /// Entries held now, summed over shards.
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.0.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    /// The most entries the table holds.
    pub(crate) fn capacity(&self) -> usize {
        self.shard_capacity * SHARDS
    }
}

impl std::fmt::Debug for MemoryState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryState")
            .field("capacity", &self.capacity())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate_limit::quota::Quota;
    use std::num::NonZeroU32;

    const SEC: u64 = 1_000_000_000;

    fn plan(quotas: Plan) -> CompiledPlan {
        CompiledPlan::new(quotas, 0)
    }

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    #[test]
    fn a_refused_request_consumes_none_of_the_quotas() {
        let plan = plan(
            Plan::new()
                .quota(Quota::per_second(nz(10)).named("fast"))
                .quota(Quota::per_minute(nz(3)).named("slow")),
        );
        let state = MemoryState::new(1000);
        for _ in 0..3 {
            assert!(state.check(42, &plan, 1, SEC, false).allowed);
        }
        let refused = state.check(42, &plan, 1, SEC, false);
        assert!(!refused.allowed);
        assert_eq!(refused.denied, 0b10);
        // "fast" still has the 7 it had: the refusal took nothing from it.
        assert_eq!(refused.quotas[0].remaining, 7);
        assert_eq!(refused.retry_after, 20 * SEC);
    }

    #[test]
    fn full_buckets_are_not_stored() {
        let plan = plan(Plan::from(Quota::per_second(nz(1))));
        let state = MemoryState::new(1000);
        assert!(state.check(7, &plan, 0, SEC, false).allowed);
        assert_eq!(state.len(), 0);
        assert!(state.check(7, &plan, 1, SEC, false).allowed);
        assert_eq!(state.len(), 1);
    }

    #[test]
    fn the_cap_holds_under_a_flood_of_distinct_keys() {
        let plan = plan(Plan::from(Quota::per_hour(nz(5))));
        let state = MemoryState::new(10_000);
        for i in 0..200_000u64 {
            state.check(mix(i), &plan, 1, SEC + i, false);
            assert!(state.len() <= state.capacity());
        }
        assert!(state.len() >= state.capacity() / 2);
    }

    #[test]
    fn eviction_keeps_a_busy_key_and_drops_full_buckets() {
        let plan = plan(Plan::from(Quota::per_second(nz(1)).burst(nz(100_000))));
        let state = MemoryState::new(SHARDS * 8);
        let busy = mix(1);
        assert!(state.check(busy, &plan, 100_000, 100 * SEC, false).allowed);

        // A flood of keys whose buckets are full again two seconds later.
        for i in 2..10_000u64 {
            state.check(mix(i), &plan, 1, 100 * SEC + 2 * SEC * i, false);
            assert!(state.len() <= state.capacity());
        }

        // The busy key still owes what it took, so it was never evicted.
        let now = 100 * SEC + 2 * SEC * 10_000;
        let probe = state.check(busy, &plan, 0, now, false);
        assert_eq!(probe.quotas[0].remaining, 20_000);
    }
}
