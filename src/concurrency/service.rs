//! The concurrency limit's service.

use std::any::Any;
use std::fmt;
use std::mem;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::algorithm::LimitAlgorithm;
use super::future::{Answer, PermitBody, Refuse, ResponseFuture};
use super::gate::{Acquire, Gate, GateConfig, Metrics, Refusal};
use super::keyed::KeyedGates;
use super::layer::Classify;
use crate::body::ResponseBody;
use crate::clock::Clock;
use crate::key::{KeyExtractor, MissingKey};
use crate::reject::RequestHead;

/// The priority class every request of a plain concurrency limit has.
const NORMAL: usize = 1;

/// Limits how many requests the inner service handles at once; built by
/// [`ConcurrencyLimitLayer`](super::ConcurrencyLimitLayer).
pub struct ConcurrencyLimit<S, A, K, C> {
    inner: S,
    shared: Arc<Shared<A, K, C>>,
}

pub(crate) struct Shared<A, K, C> {
    /// The one gate, unless the limit is per key.
    pub(crate) gate: Option<Arc<Gate<A, C>>>,
    /// `KeyedGates<K::Key, A, C>`, created on the first keyed request (the key
    /// type depends on the request body type, unknown until then).
    pub(crate) keys: Arc<OnceLock<Box<dyn Any + Send + Sync>>>,
    pub(crate) algorithm: A,
    pub(crate) clock: C,
    pub(crate) config: GateConfig,
    /// The handles every per-key gate reports through.
    pub(crate) metrics: Metrics,
    pub(crate) extractor: K,
    pub(crate) missing: MissingKey,
    pub(crate) refuse: Refuse,
    pub(crate) partition: Option<Classify>,
}

impl<S, A, K, C> ConcurrencyLimit<S, A, K, C> {
    pub(crate) fn new(inner: S, shared: Arc<Shared<A, K, C>>) -> Self {
        ConcurrencyLimit { inner, shared }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, A, K, C> Clone for ConcurrencyLimit<S, A, K, C> {
    fn clone(&self) -> Self {
        ConcurrencyLimit {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, A, K, C> fmt::Debug for ConcurrencyLimit<S, A, K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConcurrencyLimit")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, A, K, C, B, ResBody> Service<Request<B>> for ConcurrencyLimit<S, A, K, C>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone,
    A: LimitAlgorithm + Clone,
    K: KeyExtractor<B>,
    C: Clock,
{
    type Response = Response<ResponseBody<PermitBody<ResBody>>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, B, C>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline(always)]
    fn call(&mut self, request: Request<B>) -> Self::Future {
        // The common case, one gate with room and nobody waiting, takes its slot
        // before touching the request, which then goes straight to the inner
        // service; everything else is out of line.
        let shared = &*self.shared;
        if shared.partition.is_none() {
            if let Some(gate) = &shared.gate {
                return match gate.try_acquire_now(0) {
                    Some(permit) => {
                        tracing::trace!(partition = 0, "request admitted");
                        ResponseFuture::called(self.inner.call(request), Some(permit))
                    }
                    // Refused by reference: the request is not moved again.
                    None => match gate.refusal_without_lock(NORMAL) {
                        Some(refusal) => self.refuse(refusal, &request),
                        None => self.call_contended(request),
                    },
                };
            }
        }
        self.call_slow(request)
    }
}

impl<S, A, K, C> ConcurrencyLimit<S, A, K, C> {
    /// The refusal of a request to a full gate.
    #[inline(never)]
    fn refuse<B>(&self, refusal: Refusal, request: &Request<B>) -> ResponseFuture<S, B, C>
    where
        S: Service<Request<B>>,
        C: Clock,
    {
        let head = RequestHead::of(request);
        ResponseFuture::ready(self.shared.refuse.answer(refusal, &head))
    }

    /// A request to one gate without partitions that found no room at once,
    /// and may wait in its line.
    #[inline(never)]
    fn call_contended<B, ResBody>(&mut self, request: Request<B>) -> ResponseFuture<S, B, C>
    where
        S: Service<Request<B>, Response = Response<ResBody>> + Clone,
        A: LimitAlgorithm + Clone,
        C: Clock,
    {
        let gate = self.shared.gate.as_ref().expect("checked by the caller");
        let acquired = gate.acquire_locked(0, NORMAL);
        self.admit(acquired, 0, request)
    }

    /// A request to a partitioned or per-key limit.
    #[inline(never)]
    fn call_slow<B, ResBody>(&mut self, request: Request<B>) -> ResponseFuture<S, B, C>
    where
        S: Service<Request<B>, Response = Response<ResBody>> + Clone,
        A: LimitAlgorithm + Clone,
        K: KeyExtractor<B>,
        C: Clock,
    {
        let shared = &*self.shared;
        let partition = shared
            .partition
            .as_ref()
            .map_or(0, |classify| classify(&RequestHead::of(&request)));

        let acquired = match &shared.gate {
            Some(gate) => gate.acquire(partition, NORMAL),
            None => match shared.extractor.extract(&request) {
                Some(key) => keyed::<K::Key, A, C>(shared)
                    .get(
                        key,
                        &shared.algorithm,
                        &shared.clock,
                        &shared.config,
                        &shared.metrics,
                    )
                    .acquire(partition, NORMAL),
                None => {
                    return match shared.missing {
                        MissingKey::Allow => ResponseFuture::called(self.inner.call(request), None),
                        MissingKey::Reject => {
                            let rejection = shared.extractor.missing();
                            ResponseFuture::ready(Answer::Built(Box::new(
                                shared
                                    .refuse
                                    .responder()
                                    .respond(&rejection, &RequestHead::of(&request)),
                            )))
                        }
                    };
                }
            },
        };

        self.admit(acquired, partition, request)
    }

    /// Carries out the gate's decision on `request`.
    fn admit<B, ResBody>(
        &mut self,
        acquired: Acquire<C>,
        partition: usize,
        request: Request<B>,
    ) -> ResponseFuture<S, B, C>
    where
        S: Service<Request<B>, Response = Response<ResBody>> + Clone,
        C: Clock,
    {
        match acquired {
            Acquire::Admitted(permit) => {
                tracing::trace!(partition, "request admitted");
                ResponseFuture::called(self.inner.call(request), Some(permit))
            }
            Acquire::Queued(wait) => {
                tracing::trace!(partition, "request queued");
                // The ready service waits with the request; this one gets a clone
                // that must be driven to readiness again.
                let clone = self.inner.clone();
                let service = mem::replace(&mut self.inner, clone);
                ResponseFuture::waiting(wait, service, request, self.shared.refuse.clone())
            }
            Acquire::Refused(refusal) => ResponseFuture::ready(
                self.shared
                    .refuse
                    .answer(refusal, &RequestHead::of(&request)),
            ),
        }
    }
}

fn keyed<Key, A, C>(shared: &Shared<A, impl Sized, C>) -> &KeyedGates<Key, A, C>
where
    Key: std::hash::Hash + Eq + Send + Sync + 'static,
    A: LimitAlgorithm + Clone,
    C: Clock,
{
    shared
        .keys
        .get_or_init(|| Box::new(KeyedGates::<Key, A, C>::new()))
        .downcast_ref()
        .expect("a per-key layer serves a single key type")
}
