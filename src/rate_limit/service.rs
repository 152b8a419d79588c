//! The rate limit service.

use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderValue, Request, Response};
use tower_service::Service;

use super::class::Classify;
use super::future::{Next, ResponseFuture, WaitSlot};
use super::headers::{Headers, Stamp};
use super::memory::{CompiledPlan, MemoryState, Verdict};
use crate::body::ResponseBody;
use crate::clock::{Clock, Timestamp};
use crate::key::{KeyExtractor, MissingKey};
use crate::reject::{Rejection, RequestHead, Responder};

/// The problem type the RateLimit draft registers for refused requests.
const QUOTA_EXCEEDED: &str = "https://iana.org/assignments/http-problem-types#quota-exceeded";

/// Where the layer keeps its state.
#[derive(Debug)]
pub(crate) enum Backend {
    Memory(MemoryState),
    #[cfg(feature = "redis")]
    Redis(super::redis::RedisLimiter),
}

/// Everything the clones of one layer share.
#[derive(Debug)]
pub(crate) struct Shared<K, C, P> {
    pub(crate) key: K,
    pub(crate) clock: C,
    pub(crate) classify: P,
    pub(crate) plans: Box<[CompiledPlan]>,
    pub(crate) policy_values: Box<[HeaderValue]>,
    pub(crate) backend: Backend,
    pub(crate) hasher: foldhash::quality::RandomState,
    pub(crate) headers: Headers,
    pub(crate) responder: Responder,
    pub(crate) missing: MissingKey,
    pub(crate) dry_run: bool,
    pub(crate) waiting: Arc<AtomicUsize>,
    pub(crate) max_waiting: usize,
}

impl<K, C: Clock, P> Shared<K, C, P> {
    /// Turns a verdict into what happens next. `slot` is the waiting place taken
    /// for the request, if it may wait.
    pub(crate) fn settle(
        &self,
        plan: usize,
        verdict: &Verdict,
        now: Timestamp,
        slot: Option<WaitSlot>,
    ) -> Next<C::Sleep> {
        let compiled = &self.plans[plan];
        let stamp = self.stamp(plan, verdict);

        if verdict.allowed {
            let sleep = match slot {
                Some(slot) if verdict.wait > 0 && !self.dry_run => {
                    let deadline = now + Duration::from_nanos(verdict.wait);
                    Some((self.clock.sleep_until(deadline), slot))
                }
                _ => None,
            };
            return Next::Pass { stamp, sleep };
        }

        let violated: Vec<&str> = compiled
            .plan
            .policies
            .iter()
            .enumerate()
            .filter(|(i, _)| verdict.denied & (1 << i) != 0)
            .map(|(_, p)| p.name.as_ref())
            .collect();
        if self.dry_run {
            tracing::debug!(?violated, "rate limit dry run: request would be refused");
            return Next::Pass { stamp, sleep: None };
        }
        tracing::debug!(
            ?violated,
            retry_after_ns = verdict.retry_after,
            "rate limit refused a request"
        );

        let detail = format!("rate limit exceeded for {}", violated.join(", "));
        let mut rejection = Rejection::quota_exceeded(detail)
            .with_type_uri(QUOTA_EXCEEDED)
            .with_member("violated-policies", violated.into());
        if verdict.retry_after != u64::MAX {
            rejection = rejection.with_retry_after(Duration::from_nanos(verdict.retry_after));
        }
        if let Some(stamp) = stamp {
            let mut headers = http::HeaderMap::new();
            stamp.apply(&mut headers);
            for (name, value) in &headers {
                rejection = rejection.with_header(name.clone(), value.clone());
            }
        }
        Next::Reject(rejection)
    }

    /// The headers for `verdict`, when the layer adds any.
    #[inline]
    fn stamp(&self, plan: usize, verdict: &Verdict) -> Option<Box<Stamp>> {
        if self.headers.any() {
            Some(self.new_stamp(plan, verdict))
        } else {
            None
        }
    }

    /// Builds the headers out of line: a layer without headers never runs it.
    #[inline(never)]
    fn new_stamp(&self, plan: usize, verdict: &Verdict) -> Box<Stamp> {
        let compiled = &self.plans[plan];
        Box::new(Stamp::new(
            self.headers,
            compiled,
            &self.policy_values[plan],
            verdict,
        ))
    }

    /// The plan a class names, or the first when there is no such plan.
    #[inline]
    fn plan_index(&self, plan: usize) -> usize {
        if plan < self.plans.len() {
            plan
        } else {
            tracing::debug!(plan, "rate limit: no such plan; using the first");
            0
        }
    }

    /// Takes a waiting place when the plan may delay requests.
    #[inline]
    fn wait_slot(&self, plan: &CompiledPlan) -> Option<WaitSlot> {
        if plan.leaky && !self.dry_run {
            WaitSlot::try_take(&self.waiting, self.max_waiting)
        } else {
            None
        }
    }
}

/// Limits the rate of requests per key; see the [module docs](super).
#[derive(Debug)]
pub struct RateLimit<S, K, C, P> {
    inner: S,
    shared: Arc<Shared<K, C, P>>,
}

impl<S, K, C, P> RateLimit<S, K, C, P> {
    pub(crate) fn new(inner: S, shared: Arc<Shared<K, C, P>>) -> Self {
        RateLimit { inner, shared }
    }
}

impl<S: Clone, K, C, P> Clone for RateLimit<S, K, C, P> {
    fn clone(&self) -> Self {
        RateLimit {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S, K, C, P, ReqB, ResB> Service<Request<ReqB>> for RateLimit<S, K, C, P>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone,
    K: KeyExtractor<ReqB> + Send + Sync + 'static,
    C: Clock,
    P: Classify<ReqB> + Send + Sync + 'static,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqB, S::Future, C::Sleep>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        // Only the admitted request that passes at once stays in this function;
        // everything else is out of line, so the common case stays small.
        let shared = &*self.shared;
        let class = shared.classify.classify(&request);
        if class.exempt {
            return ResponseFuture::calling(self.inner.call(request), None);
        }

        let Some(key) = shared.key.extract(&request) else {
            return self.without_key(request);
        };
        let plan = shared.plan_index(class.plan);
        let compiled = &shared.plans[plan];
        let slot = shared.wait_slot(compiled);

        // Without the `redis` feature the match has one arm.
        #[allow(clippy::infallible_destructuring_match)]
        let state = match &shared.backend {
            Backend::Memory(state) => state,
            #[cfg(feature = "redis")]
            Backend::Redis(redis) => {
                let decision = redis.decide(Arc::clone(&self.shared), &key, plan, class.cost, slot);
                let clone = self.inner.clone();
                let service = std::mem::replace(&mut self.inner, clone);
                return ResponseFuture::deciding(
                    decision,
                    service,
                    request,
                    shared.responder.clone(),
                );
            }
        };
        let hash = shared.hasher.hash_one(&key);
        let now = shared.clock.now();
        // A dry run counts a request that would wait as nginx would (it takes
        // its place in the bucket), but lets it through at once.
        let may_wait = slot.is_some() || shared.dry_run;
        let verdict = state.check(hash, compiled, class.cost, now.as_nanos(), may_wait);

        if verdict.allowed && verdict.wait == 0 {
            let stamp = shared.stamp(plan, &verdict);
            return ResponseFuture::calling(self.inner.call(request), stamp);
        }
        self.settled(request, plan, &verdict, now, slot)
    }
}

impl<S, K, C: Clock, P> RateLimit<S, K, C, P> {
    /// The future of a request whose key could not be derived.
    #[cold]
    #[inline(never)]
    fn without_key<ReqB>(
        &mut self,
        request: Request<ReqB>,
    ) -> ResponseFuture<S, ReqB, S::Future, C::Sleep>
    where
        S: Service<Request<ReqB>>,
        K: KeyExtractor<ReqB>,
    {
        let shared = &*self.shared;
        match shared.missing {
            MissingKey::Allow => ResponseFuture::calling(self.inner.call(request), None),
            MissingKey::Reject => {
                let rejection = shared.key.missing();
                tracing::debug!(%rejection, "rate limit: request has no key");
                let head = RequestHead::of(&request);
                ResponseFuture::rejected(shared.responder.respond(&rejection, &head))
            }
        }
    }

    /// The future of a request that waits or is refused (or would be, in a dry run).
    #[inline(never)]
    fn settled<ReqB>(
        &mut self,
        request: Request<ReqB>,
        plan: usize,
        verdict: &Verdict,
        now: Timestamp,
        slot: Option<WaitSlot>,
    ) -> ResponseFuture<S, ReqB, S::Future, C::Sleep>
    where
        S: Service<Request<ReqB>> + Clone,
    {
        let shared = &*self.shared;
        match shared.settle(plan, verdict, now, slot) {
            Next::Pass { stamp, sleep: None } => {
                ResponseFuture::calling(self.inner.call(request), stamp)
            }
            Next::Pass {
                stamp,
                sleep: Some((sleep, slot)),
            } => {
                let clone = self.inner.clone();
                let service = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::waiting(sleep, slot, service, request, stamp)
            }
            Next::Reject(rejection) => {
                let head = RequestHead::of(&request);
                ResponseFuture::rejected(shared.responder.respond(&rejection, &head))
            }
        }
    }
}
