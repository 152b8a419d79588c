//! In-memory state: one theoretical arrival time per key and quota, in a sharded
//! table with a hard cap on entries.
//!
//! Each shard is a `std` hash map behind a reader-writer lock, and each TAT an
//! `AtomicU64`. A request on a known key of a one-quota plan takes the shared lock
//! and updates its TAT with a compare-and-swap, as `dashmap`'s read path would;
//! inserting, evicting and updating the several quotas of a plan at once (all or
//! nothing, so a refused request consumes none) take the exclusive lock of that
//! one shard. Written on `std` rather than on `dashmap` because eviction sweeps
//! one shard at a time and must see the shard's entries together, and `dashmap`
//! gives access to its shards only behind its `raw-api` feature.
//!
//! Keys arrive hashed to 64 bits with a per-process random seed (see the module
//! docs of `rate_limit` for what a collision means). All quotas of one key live in
//! the same shard: the shard is picked from bits 40..46 of the key's hash, and each
//! quota's entry is the key's hash with those bits left intact.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock};

use super::gcra::{Check, Limit};
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
    /// Per quota, after the decision: nanoseconds until its bucket is full again.
    /// The requests left follow from it, computed only when headers ask
    /// ([`quota`](Self::quota)): a division the hot path does not need.
    pub(crate) reset: [u64; MAX_QUOTAS],
}

impl Verdict {
    /// What the headers say about quota `i`, whose limit is `limit`.
    pub(crate) fn quota(&self, i: usize, limit: &Limit) -> QuotaState {
        let reset = self.reset[i];
        QuotaState {
            remaining: limit.remaining(reset),
            reset,
        }
    }
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
            tats[i] = verdict.judge(i, &policy.limit, tat(i), now, cost, may_wait);
        }
        if !verdict.allowed {
            // All or nothing: a refused request consumes none of the quotas.
            verdict.wait = 0;
            for (i, policy) in self.plan.policies.iter().enumerate() {
                tats[i] = tat(i);
                verdict.reset[i] = policy.limit.until_full(tats[i], now);
            }
        } else {
            for (i, policy) in self.plan.policies.iter().enumerate() {
                verdict.reset[i] = policy.limit.until_full(tats[i], now);
            }
        }
        (verdict, tats)
    }

    /// [`decide`](Self::decide) for a plan of one quota whose TAT is `old`: the
    /// same verdict, without the loops.
    #[inline]
    fn decide_one(&self, now: u64, cost: u32, may_wait: bool, old: u64) -> (Verdict, u64) {
        let limit = &self.plan.policies[0].limit;
        let mut verdict = Verdict {
            allowed: true,
            ..Verdict::default()
        };
        // A refused request leaves the TAT at `old`: nothing to undo.
        let tat = verdict.judge(0, limit, old, now, cost, may_wait);
        verdict.reset[0] = limit.until_full(tat, now);
        (verdict, tat)
    }
}

impl Verdict {
    /// Adds quota `i`'s check of a request of `cost` to the verdict, and returns
    /// the quota's TAT after it: the new one if it admits, `old` if it refuses.
    #[inline]
    fn judge(
        &mut self,
        i: usize,
        limit: &Limit,
        old: u64,
        now: u64,
        cost: u32,
        may_wait: bool,
    ) -> u64 {
        match limit.check(old, now, cost) {
            Check::Allow { tat, wait } if may_wait || wait == 0 => {
                self.wait = self.wait.max(wait);
                tat
            }
            Check::Allow { wait, .. } => {
                // A leaky bucket would delay it, but no waiting place is free.
                self.allowed = false;
                self.denied |= 1 << i;
                self.retry_after = self.retry_after.max(wait);
                old
            }
            Check::Deny { retry_after } => {
                let never = u64::from(cost).saturating_mul(limit.interval) > limit.capacity;
                self.allowed = false;
                self.denied |= 1 << i;
                let after = if never { u64::MAX } else { retry_after };
                self.retry_after = self.retry_after.max(after);
                old
            }
        }
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

type Shard = HashMap<u64, AtomicU64, BuildHasherDefault<Identity>>;

#[repr(align(128))]
struct Padded(RwLock<Shard>);

/// The in-memory state of a rate limit layer.
pub(crate) struct MemoryState {
    shards: Box<[Padded]>,
    /// `shards.len() - 1`; the shard count is a power of two.
    shard_mask: usize,
    shard_capacity: usize,
}

impl MemoryState {
    /// A table holding at most `max_entries` entries (one per key and quota), or
    /// [`MAX_QUOTAS`] if that is more: a key's quotas always fit in its shard.
    pub(crate) fn new(max_entries: usize) -> Self {
        // As many shards as keep each one able to hold a whole key, up to 64, so
        // the per-shard caps add up to no more than `max_entries`.
        let mut shards = SHARDS;
        while shards > 1 && max_entries / shards < MAX_QUOTAS {
            shards /= 2;
        }
        let shard_capacity = (max_entries / shards).max(MAX_QUOTAS);
        let shards = (0..shards)
            .map(|_| Padded(RwLock::new(Shard::default())))
            .collect::<Box<[_]>>();
        MemoryState {
            shard_mask: shards.len() - 1,
            shards,
            shard_capacity,
        }
    }

    fn shard(&self, hash: u64) -> &RwLock<Shard> {
        let index = (hash >> SHARD_SHIFT) as usize & self.shard_mask;
        &self.shards[index].0
    }

    /// Checks and, when admitted, records a request of `cost` from the key with
    /// `hash` against `plan` at `now`.
    ///
    /// With one quota (the common case) a known key is updated lock-free: a
    /// compare-and-swap of its TAT under the shard's shared lock, so requests on
    /// one shard never wait for each other. A new key, eviction, and plans of
    /// several quotas (whose all-or-nothing update must be atomic) take the
    /// shard's exclusive lock.
    #[inline]
    pub(crate) fn check(
        &self,
        hash: u64,
        plan: &CompiledPlan,
        cost: u32,
        now: u64,
        may_wait: bool,
    ) -> Verdict {
        let shard = self.shard(hash);
        if plan.plan.policies.len() == 1 {
            let key = hash ^ plan.salts[0];
            {
                // A panic under this lock cannot leave a map half-updated in a
                // way that matters: every entry is a plain number.
                let read = shard.read().unwrap_or_else(PoisonError::into_inner);
                match read.get(&key) {
                    Some(tat) => return compare_and_swap(tat, plan, cost, now, may_wait),
                    None => {
                        let (verdict, tat) = plan.decide_one(now, cost, may_wait, 0);
                        if !verdict.allowed || tat <= now {
                            // Nothing to store: refused, or the bucket stays full.
                            return verdict;
                        }
                    }
                }
            }
            let mut write = shard.write().unwrap_or_else(PoisonError::into_inner);
            if let Some(tat) = write.get(&key) {
                // Another request stored the key in between.
                return compare_and_swap(tat, plan, cost, now, may_wait);
            }
            let (verdict, tat) = plan.decide_one(now, cost, may_wait, 0);
            if verdict.allowed && tat > now {
                self.insert(&mut write, key, tat, now, 1);
            }
            return verdict;
        }

        let mut write = shard.write().unwrap_or_else(PoisonError::into_inner);
        let n = plan.plan.policies.len();
        let (verdict, tats) = plan.decide(now, cost, may_wait, |i| {
            write
                .get_mut(&(hash ^ plan.salts[i]))
                .map_or(0, |tat| *tat.get_mut())
        });
        if verdict.allowed {
            let new = (0..n)
                .filter(|&i| tats[i] > now && !write.contains_key(&(hash ^ plan.salts[i])))
                .count();
            for (i, &tat) in tats.iter().enumerate().take(n) {
                let key = hash ^ plan.salts[i];
                match write.get_mut(&key) {
                    Some(slot) => *slot.get_mut() = tat,
                    None if tat > now => self.insert(&mut write, key, tat, now, new),
                    None => {}
                }
            }
        }
        verdict
    }

    /// Inserts one of `new` entries about to be added for one key, evicting first
    /// if they would not all fit.
    fn insert(&self, shard: &mut Shard, key: u64, tat: u64, now: u64, new: usize) {
        if shard.len() + new > self.shard_capacity {
            self.evict(shard, now, new);
        }
        shard.insert(key, AtomicU64::new(tat));
    }

    /// Frees a quarter of a full shard (and at least room for `room` entries):
    /// first the keys whose bucket is full again (they carry no information),
    /// then those nearest to full.
    #[cold]
    fn evict(&self, shard: &mut Shard, now: u64, room: usize) {
        let before = shard.len();
        shard.retain(|_, tat| *tat.get_mut() > now);

        let target = self.shard_capacity - (self.shard_capacity / 4).max(room);
        if shard.len() > target {
            // The `excess` smallest TATs go; ties at the cut are broken arbitrarily
            // so exactly `excess` entries leave.
            let excess = shard.len() - target;
            let mut tats: Vec<u64> = shard.values_mut().map(|tat| *tat.get_mut()).collect();
            let (below, &mut cut, _) = tats.select_nth_unstable(excess - 1);
            let mut ties = excess - below.iter().filter(|&&t| t < cut).count();
            shard.retain(|_, tat| match (*tat.get_mut()).cmp(&cut) {
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
            .map(|s| s.0.read().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    /// The most entries the table holds.
    pub(crate) fn capacity(&self) -> usize {
        self.shard_capacity * self.shards.len()
    }
}

/// Decides a one-quota request against a stored TAT and, when admitted, swaps
/// the new TAT in, retrying if another request changed it meanwhile.
#[inline]
fn compare_and_swap(
    tat: &AtomicU64,
    plan: &CompiledPlan,
    cost: u32,
    now: u64,
    may_wait: bool,
) -> Verdict {
    let mut old = tat.load(Ordering::Acquire);
    loop {
        let (verdict, new) = plan.decide_one(now, cost, may_wait, old);
        if !verdict.allowed || new == old {
            return verdict;
        }
        match tat.compare_exchange_weak(old, new, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return verdict,
            Err(current) => old = current,
        }
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
        assert_eq!(refused.quota(0, &plan.plan.policies[0].limit).remaining, 7);
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
        assert_eq!(state.capacity(), 64 * (10_000 / 64));
        for i in 0..200_000u64 {
            state.check(mix(i), &plan, 1, SEC + i, false);
            if i % 97 == 0 {
                assert!(state.len() <= 10_000);
            }
        }
        assert!(state.len() <= 10_000);
        assert!(state.len() >= state.capacity() * 3 / 4 - 64);
    }

    #[test]
    fn the_cap_is_never_rounded_up() {
        for max in [4, 5, 100, 255, 256, 1000, 4096, 1 << 20] {
            let state = MemoryState::new(max);
            assert!(state.capacity() <= max, "{max}: {}", state.capacity());
            assert!(state.capacity() > max - max / 2, "{max}");
        }
        // Below one key's worth of quotas the shard still holds a whole key.
        assert_eq!(MemoryState::new(1).capacity(), MAX_QUOTAS);
    }

    #[test]
    fn a_key_with_four_quotas_fits_a_full_shard_of_the_smallest_table() {
        let plan = plan((0..4).fold(Plan::new(), |p, i| {
            p.quota(Quota::per_hour(nz(5)).named(format!("q{i}")))
        }));
        let state = MemoryState::new(4);
        for i in 0..100u64 {
            assert!(state.check(mix(i), &plan, 1, SEC, false).allowed);
            assert!(state.len() <= 4, "{}", state.len());
        }
    }

    #[test]
    fn concurrent_checks_on_one_key_admit_exactly_the_burst() {
        let plan = plan(Plan::from(Quota::per_hour(nz(1000))));
        let state = MemoryState::new(1000);
        let admitted = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..16 {
                scope.spawn(|| {
                    for _ in 0..200 {
                        if state.check(99, &plan, 1, SEC, false).allowed {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(admitted.into_inner(), 1000);
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
        assert_eq!(
            probe.quota(0, &plan.plan.policies[0].limit).remaining,
            20_000
        );
    }
}
