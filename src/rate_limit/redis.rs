//! The Redis backend: one script run per decision, all quotas of the key at once.
//!
//! Each key is one Redis hash, `prefix:rl:{h}`, where `h` is the key's 64-bit hash
//! in hex (the braces make it the cluster hash tag). Its fields hold one TAT per
//! plan and quota, in microseconds of the Redis server's clock (`TIME`), so the
//! instances' clocks never matter. The script applies the same arithmetic as the
//! in-memory state, writes only when the request is admitted, and sets the key to
//! expire when its last bucket is full again.
//!
//! Keys known to be refused until some time are remembered locally, so a client
//! hammering past its quota costs no Redis round trips until it may pass again.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use redis::Script;

use super::future::{Decision, Next, WaitSlot};
use super::memory::{CompiledPlan, Verdict};
use super::service::{Backend, Shared};
use crate::clock::{Clock, Timestamp};
use crate::reject::Rejection;
use crate::store::{FailureMode, RedisStore};

/// The most keys remembered as refused; beyond it, expired ones are dropped first.
const MAX_DENIED: usize = 65_536;

/// A fixed seed: every instance must hash a key to the same Redis key.
const KEY_SEED: u64 = 0x746f_7765_722d_746f;

const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cost = tonumber(ARGV[1])
local may_wait = ARGV[2] == '1'
local n = tonumber(ARGV[3])
local allowed, wait, retry, denied = 1, 0, 0, 0
local tats, news = {}, {}
for i = 1, n do
  local a = 4 + (i - 1) * 4
  local interval, capacity, free = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local tat = tonumber(redis.call('HGET', KEYS[1], ARGV[a]) or '0')
  tats[i] = tat
  local base = math.max(tat, now)
  local new = base + cost * interval
  local ahead = new - now
  if ahead > capacity then
    allowed = 0
    denied = denied + 2 ^ (i - 1)
    if cost * interval > capacity then retry = -1 elseif retry >= 0 then retry = math.max(retry, ahead - capacity) end
  else
    local w = 0
    if free >= 0 then w = math.max(0, base - now - free) end
    if w > 0 and not may_wait then
      allowed = 0
      denied = denied + 2 ^ (i - 1)
      if retry >= 0 then retry = math.max(retry, w) end
    else
      news[i] = new
      wait = math.max(wait, w)
    end
  end
end
if allowed == 1 then
  local last = now
  for i = 1, n do
    redis.call('HSET', KEYS[1], ARGV[4 + (i - 1) * 4], string.format('%d', news[i]))
    tats[i] = news[i]
    last = math.max(last, news[i])
  end
  local ttl = math.ceil((last - now) / 1000) + 1
  if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
else
  wait = 0
end
local reply = {allowed, wait, retry, denied}
for i = 1, n do reply[4 + i] = math.max(0, tats[i] - now) end
return reply
"#;

/// Loaded once per connection, then run by its SHA1 (`EVALSHA`).
static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(GCRA));

/// Rate limit state in Redis.
pub(crate) struct RedisLimiter {
    store: RedisStore,
    hasher: foldhash::fast::FixedState,
    /// Per plan, the script arguments after the first three.
    plan_args: Box<[Vec<String>]>,
    /// Per key hash and plan: when the refusal was seen, and the verdict then.
    denied: Mutex<HashMap<(u64, usize), (Timestamp, Verdict)>>,
}

impl RedisLimiter {
    pub(crate) fn new(store: RedisStore, plans: &[CompiledPlan]) -> Self {
        let plan_args = plans
            .iter()
            .enumerate()
            .map(|(p, plan)| {
                plan.plan
                    .policies
                    .iter()
                    .enumerate()
                    .flat_map(|(q, policy)| {
                        let limit = &policy.limit;
                        let free = limit
                            .free_excess
                            .map_or(-1, |f| i64::try_from(f / 1000).unwrap_or(i64::MAX));
                        [
                            format!("p{p}q{q}"),
                            (limit.interval / 1000).max(1).to_string(),
                            (limit.capacity / 1000).to_string(),
                            free.to_string(),
                        ]
                    })
                    .collect()
            })
            .collect();
        RedisLimiter {
            store,
            hasher: foldhash::fast::FixedState::with_seed(KEY_SEED),
            plan_args,
            denied: Mutex::new(HashMap::new()),
        }
    }

    /// Decides a request of `cost` from `key` against `plan`.
    pub(crate) fn decide<K, C, P>(
        &self,
        shared: Arc<Shared<K, C, P>>,
        key: &impl Hash,
        plan: usize,
        cost: u32,
        slot: Option<WaitSlot>,
    ) -> Decision<C::Sleep>
    where
        K: Send + Sync + 'static,
        C: Clock,
        P: Send + Sync + 'static,
    {
        let hash = self.hasher.hash_one(key);
        let local_now = shared.clock.now();

        if let Some(verdict) = self.known_denial(hash, &shared.plans[plan], plan, local_now) {
            tracing::trace!(
                hash,
                "rate limit: refused from the local cache, no redis call"
            );
            let next = shared.settle(plan, &verdict, local_now, slot);
            return Box::pin(std::future::ready(next));
        }

        let redis_key = self.store.key("rl", format_args!("{hash:016x}"));
        let mut invocation = SCRIPT.prepare_invoke();
        invocation
            .key(redis_key)
            .arg(cost)
            .arg(u8::from(slot.is_some() || shared.dry_run))
            .arg(shared.plans[plan].plan.policies.len());
        for arg in &self.plan_args[plan] {
            invocation.arg(arg.as_str());
        }
        let store = self.store.clone();

        Box::pin(async move {
            let reply: Result<Vec<i64>, _> = store
                .call(
                    |mut connection| async move { invocation.invoke_async(&mut connection).await },
                )
                .await;
            let Backend::Redis(this) = &shared.backend else {
                unreachable!("a Redis decision comes from a Redis backend")
            };
            match reply {
                Ok(reply) => match this.verdict(&shared.plans[plan], &reply) {
                    Some(verdict) => {
                        if !verdict.allowed && verdict.retry_after != u64::MAX {
                            this.remember_denial(hash, plan, local_now, &verdict);
                        }
                        shared.settle(plan, &verdict, local_now, slot)
                    }
                    None => this.failed(&format!("unexpected script reply {reply:?}")),
                },
                Err(error) => this.failed(&error.to_string()),
            }
        })
    }

    fn failed<Sl>(&self, error: &str) -> Next<Sl> {
        match self.store.failure_mode() {
            FailureMode::Open => {
                tracing::warn!(
                    error,
                    "rate limit store failed; letting the request through"
                );
                Next::Pass {
                    stamp: None,
                    sleep: None,
                }
            }
            FailureMode::Closed => {
                tracing::warn!(error, "rate limit store failed; refusing the request");
                Next::Reject(Rejection::overloaded(
                    "the rate limit state is unavailable; try again shortly",
                ))
            }
        }
    }

    fn verdict(&self, plan: &CompiledPlan, reply: &[i64]) -> Option<Verdict> {
        let n = plan.plan.policies.len();
        if reply.len() != 4 + n {
            return None;
        }
        let us = |v: i64| u64::try_from(v).unwrap_or(0).saturating_mul(1000);
        let mut verdict = Verdict {
            allowed: reply[0] == 1,
            wait: us(reply[1]),
            retry_after: if reply[2] < 0 { u64::MAX } else { us(reply[2]) },
            denied: u8::try_from(reply[3]).ok()?,
            reset: Default::default(),
        };
        for (reset, ahead) in verdict.reset.iter_mut().zip(&reply[4..]) {
            *reset = us(*ahead);
        }
        Some(verdict)
    }

    /// The remembered refusal of `hash` under `plan`, brought forward to `now`;
    /// `None` once it has run out.
    fn known_denial(
        &self,
        hash: u64,
        plan: &CompiledPlan,
        index: usize,
        now: Timestamp,
    ) -> Option<Verdict> {
        let denied = self.denied.lock().unwrap_or_else(PoisonError::into_inner);
        let &(seen, ref verdict) = denied.get(&(hash, index))?;
        let elapsed = now.saturating_duration_since(seen).as_nanos() as u64;
        if elapsed >= verdict.retry_after {
            return None;
        }
        let mut verdict = *verdict;
        verdict.retry_after -= elapsed;
        for reset in verdict.reset.iter_mut().take(plan.plan.policies.len()) {
            // The buckets kept refilling since: same arithmetic as the script's.
            *reset = reset.saturating_sub(elapsed);
        }
        Some(verdict)
    }

    fn remember_denial(&self, hash: u64, plan: usize, now: Timestamp, verdict: &Verdict) {
        let mut denied = self.denied.lock().unwrap_or_else(PoisonError::into_inner);
        if denied.len() >= MAX_DENIED {
            denied.retain(|_, (seen, verdict)| {
                now.saturating_duration_since(*seen).as_nanos() < u128::from(verdict.retry_after)
            });
            if denied.len() >= MAX_DENIED {
                denied.clear();
            }
        }
        denied.insert((hash, plan), (now, *verdict));
    }
}

impl std::fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}
