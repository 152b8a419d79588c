//! The rate limit layer's response future.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::headers::Stamp;
use crate::body::ResponseBody;
use crate::reject::{Rejection, RequestHead, Responder};

/// What happens to a request once its verdict is known.
pub(crate) enum Next<Sl> {
    /// Refuse it with this rejection.
    Reject(Rejection),
    /// Let it through, after `sleep` if it must wait, with these headers.
    Pass {
        stamp: Option<Box<Stamp>>,
        sleep: Option<(Sl, WaitSlot)>,
    },
}

/// A place among the requests waiting in leaky buckets; freed on drop.
#[derive(Debug)]
pub(crate) struct WaitSlot(Arc<AtomicUsize>);

impl WaitSlot {
    /// Takes a place if fewer than `max` are taken.
    pub(crate) fn try_take(waiting: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        let taken = waiting.fetch_add(1, Ordering::AcqRel);
        let slot = WaitSlot(Arc::clone(waiting));
        (taken < max).then_some(slot)
    }
}

impl Drop for WaitSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

pub(crate) type Decision<Sl> = Pin<Box<dyn Future<Output = Next<Sl>> + Send>>;

pin_project! {
    /// Response future of [`RateLimit`](super::RateLimit).
    pub struct ResponseFuture<S, B, F, Sl> {
        #[pin]
        state: State<S, B, F, Sl>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B, F, Sl> {
        // The rare states are boxed so the future of an admitted request stays small.
        Deciding {
            deciding: Option<Box<Deciding<S, B, Sl>>>,
        },
        Waiting {
            waiting: Pin<Box<Waiting<S, B, Sl>>>,
        },
        // Calling the inner service, with no headers to add: the common case,
        // apart from `Stamping` so that it has nothing else to check or drop.
        Calling {
            #[pin]
            future: F,
        },
        // Calling the inner service; its response gets these headers.
        Stamping {
            #[pin]
            future: F,
            stamp: Option<Box<Stamp>>,
        },
        Rejected {
            response: Option<Box<Response<Bytes>>>,
        },
    }
}

impl<S, B, F, Sl> State<S, B, F, Sl> {
    fn calling(future: F, stamp: Option<Box<Stamp>>) -> Self {
        match stamp {
            None => State::Calling { future },
            stamp => State::Stamping { future, stamp },
        }
    }
}

struct Deciding<S, B, Sl> {
    decision: Decision<Sl>,
    service: S,
    request: Request<B>,
    responder: Responder,
}

pin_project! {
    struct Waiting<S, B, Sl> {
        #[pin]
        sleep: Sl,
        slot: Option<WaitSlot>,
        service: Option<S>,
        request: Option<Request<B>>,
        stamp: Option<Box<Stamp>>,
    }
}

impl<S, B, F, Sl> ResponseFuture<S, B, F, Sl> {
    pub(crate) fn calling(future: F, stamp: Option<Box<Stamp>>) -> Self {
        ResponseFuture {
            state: State::calling(future, stamp),
        }
    }

    pub(crate) fn rejected(response: Response<Bytes>) -> Self {
        ResponseFuture {
            state: State::Rejected {
                response: Some(Box::new(response)),
            },
        }
    }

    pub(crate) fn waiting(
        sleep: Sl,
        slot: WaitSlot,
        service: S,
        request: Request<B>,
        stamp: Option<Box<Stamp>>,
    ) -> Self {
        ResponseFuture {
            state: State::Waiting {
                waiting: Box::pin(Waiting {
                    sleep,
                    slot: Some(slot),
                    service: Some(service),
                    request: Some(request),
                    stamp,
                }),
            },
        }
    }

    // Only the Redis backend decides asynchronously.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn deciding(
        decision: Decision<Sl>,
        service: S,
        request: Request<B>,
        responder: Responder,
    ) -> Self {
        ResponseFuture {
            state: State::Deciding {
                deciding: Some(Box::new(Deciding {
                    decision,
                    service,
                    request,
                    responder,
                })),
            },
        }
    }
}

impl<S, B, F, Sl, ResB, E> Future for ResponseFuture<S, B, F, Sl>
where
    S: Service<Request<B>, Future = F>,
    F: Future<Output = Result<Response<ResB>, E>>,
    Sl: Future<Output = ()>,
{
    type Output = Result<Response<ResponseBody<ResB>>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            // The admitted request's state first, mapped in place: the response
            // is the largest value here, and every move of it costs.
            if let StateProj::Calling { future } = self.as_mut().project().state.project() {
                return future
                    .poll(cx)
                    .map(|result| result.map(|response| response.map(ResponseBody::new)));
            }
            if let Some(output) = ready!(self.as_mut().advance(cx)) {
                return Poll::Ready(output);
            }
        }
    }
}

impl<S, B, F, Sl, ResB, E> ResponseFuture<S, B, F, Sl>
where
    S: Service<Request<B>, Future = F>,
    F: Future<Output = Result<Response<ResB>, E>>,
    Sl: Future<Output = ()>,
{
    /// Drives the states other than `Calling`: `Ready(Some(..))` with the
    /// response, `Ready(None)` once the state moved on.
    #[inline(never)]
    fn advance(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Response<ResponseBody<ResB>>, E>>> {
        let mut this = self.project();
        let next = match this.state.as_mut().project() {
            // Polled by `poll` itself.
            StateProj::Calling { .. } => return Poll::Ready(None),
            StateProj::Stamping { future, stamp } => {
                let result = ready!(future.poll(cx));
                let stamp = stamp.take();
                return Poll::Ready(Some(result.map(|response| stamped(response, stamp))));
            }
            StateProj::Rejected { response } => {
                let response = *response.take().expect("polled after completion");
                return Poll::Ready(Some(Ok(response.map(ResponseBody::full))));
            }
            StateProj::Waiting { waiting } => {
                let waiting = waiting.as_mut().project();
                ready!(waiting.sleep.poll(cx));
                drop(waiting.slot.take());
                let mut service = waiting.service.take().expect("polled after completion");
                let request = waiting.request.take().expect("polled after completion");
                State::calling(service.call(request), waiting.stamp.take())
            }
            StateProj::Deciding { deciding } => {
                let pending = deciding.as_mut().expect("polled after completion");
                let next = ready!(pending.decision.as_mut().poll(cx));
                let Deciding {
                    mut service,
                    request,
                    responder,
                    ..
                } = *deciding.take().expect("polled after completion");
                match next {
                    Next::Reject(rejection) => State::Rejected {
                        response: Some(Box::new(
                            responder.respond(&rejection, &RequestHead::of(&request)),
                        )),
                    },
                    Next::Pass {
                        stamp,
                        sleep: Some((sleep, slot)),
                    } => Self::waiting(sleep, slot, service, request, stamp).state,
                    Next::Pass { stamp, sleep: None } => {
                        State::calling(service.call(request), stamp)
                    }
                }
            }
        };
        this.state.set(next);
        Poll::Ready(None)
    }
}

/// `response` with the rate limit headers of `stamp`, if any.
fn stamped<B>(mut response: Response<B>, stamp: Option<Box<Stamp>>) -> Response<ResponseBody<B>> {
    if let Some(stamp) = stamp {
        stamp.apply(response.headers_mut());
    }
    response.map(ResponseBody::new)
}

impl<S, B, F, Sl> std::fmt::Debug for ResponseFuture<S, B, F, Sl> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
