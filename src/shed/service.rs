//! The load shedder's service.

use std::fmt;
use std::mem;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::layer::{Bypass, Classify};
use super::priority::Priority;
use crate::body::ResponseBody;
use crate::clock::Clock;
use crate::concurrency::gate::{Acquire, Gate};
use crate::concurrency::{LimitAlgorithm, PermitBody, Refuse, ResponseFuture};
use crate::reject::RequestHead;

/// Queues and sheds requests in front of the inner service; built by
/// [`LoadShedLayer`](super::LoadShedLayer).
pub struct LoadShed<S, A, C> {
    inner: S,
    shared: Arc<Shared<A, C>>,
}

pub(crate) struct Shared<A, C> {
    pub(crate) gate: Arc<Gate<A, C>>,
    pub(crate) refuse: Refuse,
    pub(crate) priority: Option<Classify>,
    pub(crate) bypass: Option<Bypass>,
}

impl<S, A, C> LoadShed<S, A, C> {
    pub(crate) fn new(inner: S, shared: Arc<Shared<A, C>>) -> Self {
        LoadShed { inner, shared }
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

impl<S: Clone, A, C> Clone for LoadShed<S, A, C> {
    fn clone(&self) -> Self {
        LoadShed {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, A, C> fmt::Debug for LoadShed<S, A, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadShed")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, A, C, B, ResBody> Service<Request<B>> for LoadShed<S, A, C>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone,
    A: LimitAlgorithm,
    C: Clock,
{
    type Response = Response<ResponseBody<PermitBody<ResBody>>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, B, C>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let shared = &*self.shared;
        let head = RequestHead::of(&request);
        if shared.bypass.as_ref().is_some_and(|bypass| bypass(&head)) {
            tracing::trace!(path = head.uri.path(), "request bypasses load shedding");
            return ResponseFuture::called(self.inner.call(request), None);
        }
        let priority = shared
            .priority
            .as_ref()
            .map_or(Priority::Normal, |classify| classify(&head));

        let gate = &shared.gate;
        if let Some(permit) = gate.try_acquire_now(0) {
            return ResponseFuture::called(self.inner.call(request), Some(permit));
        }
        if let Some(refusal) = gate.refusal_without_lock(priority.class()) {
            return ResponseFuture::ready(shared.refuse.answer(refusal, &head));
        }
        match gate.acquire_locked(0, priority.class()) {
            Acquire::Admitted(permit) => {
                ResponseFuture::called(self.inner.call(request), Some(permit))
            }
            Acquire::Queued(wait) => {
                tracing::trace!(?priority, "request queued");
                let clone = self.inner.clone();
                let service = mem::replace(&mut self.inner, clone);
                ResponseFuture::waiting(wait, service, request, self.shared.refuse.clone())
            }
            Acquire::Refused(refusal) => {
                ResponseFuture::ready(shared.refuse.answer(refusal, &RequestHead::of(&request)))
            }
        }
    }
}
