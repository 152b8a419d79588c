//! The response future and body of the concurrency and load-shedding layers.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::algorithm::Outcome;
use super::gate::{Permit, Refusal, Wait};
use crate::body::ResponseBody;
use crate::clock::Clock;
use crate::reject::{Rejection, RequestHead, Responder};

/// How a layer words its refusals.
///
/// With the standard responder, the answers to plain HTTP requests and to gRPC
/// requests sent as `application/grpc` (what tonic sends) depend on the refusal
/// alone, so they are built once here and cloned per refusal: two small
/// allocations for the header map (which any map holding a header needs),
/// instead of building the JSON each time. Their body and header values are
/// static bytes, so a clone and its drop touch no reference count that every
/// core refusing at once would contend on.
#[derive(Clone, Debug)]
pub(crate) struct Refuse {
    responder: Responder,
    retry_after: Option<Duration>,
    prebuilt: Option<&'static Prebuilt>,
}

#[derive(Debug)]
struct Prebuilt {
    http: [Response<Bytes>; 4],
    grpc: [Response<Bytes>; 4],
}

/// A refusal as a future holds it until polled: a reference to a prebuilt
/// response, or a response built for this request.
#[derive(Debug)]
pub(crate) enum Answer {
    Prebuilt(&'static Response<Bytes>),
    Built(Box<Response<Bytes>>),
}

impl Prebuilt {
    fn same_as(&self, other: &Prebuilt) -> bool {
        let same = |a: &Response<Bytes>, b: &Response<Bytes>| {
            a.status() == b.status()
                && a.version() == b.version()
                && a.headers() == b.headers()
                && a.body() == b.body()
        };
        let pairs = self.http.iter().zip(&other.http);
        pairs
            .chain(self.grpc.iter().zip(&other.grpc))
            .all(|(a, b)| same(a, b))
    }
}

impl Answer {
    fn into_response<B>(self) -> Response<ResponseBody<B>> {
        match self {
            // The clone's body is a static handle: cloning and dropping it
            // touches no count, and the body handed out is the kept one.
            Answer::Prebuilt(prebuilt) => prebuilt
                .clone()
                .map(|_| ResponseBody::from_static(prebuilt.body())),
            Answer::Built(response) => response.map(ResponseBody::full),
        }
    }
}

const GRPC: &str = "application/grpc";

const REFUSALS: [Refusal; 4] = [
    Refusal::Full,
    Refusal::QueueFull,
    Refusal::TimedOut,
    Refusal::Shed,
];

fn rejection(refusal: Refusal, retry_after: Option<Duration>) -> Rejection {
    let detail = match refusal {
        Refusal::Full => "the service is at its concurrency limit",
        Refusal::QueueFull => "the service is at its concurrency limit and its queue is full",
        Refusal::TimedOut => "the request waited too long for the service to have capacity",
        Refusal::Shed => "the request was shed to keep the service's latency down",
    };
    let rejection = Rejection::overloaded(detail);
    match retry_after {
        Some(after) => rejection.with_retry_after(after),
        None => rejection,
    }
}

impl Refuse {
    pub(crate) fn new(responder: Responder, retry_after: Option<Duration>) -> Self {
        let prebuilt = responder.is_standard().then(|| {
            let build = |request: Request<()>| {
                let head = RequestHead::of(&request);
                REFUSALS.map(|refusal| responder.respond(&rejection(refusal, retry_after), &head))
            };
            let mut grpc = Request::new(());
            grpc.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(GRPC),
            );
            intern_prebuilt(Prebuilt {
                http: build(Request::new(())).map(into_static),
                grpc: build(grpc).map(into_static),
            })
        });
        Refuse {
            responder,
            retry_after,
            prebuilt,
        }
    }

    pub(crate) fn responder(&self) -> &Responder {
        &self.responder
    }

    pub(crate) fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The answer to `head` refused for `refusal`.
    pub(crate) fn answer(&self, refusal: Refusal, head: &RequestHead<'_>) -> Answer {
        tracing::debug!(
            method = %head.method,
            path = head.uri.path(),
            reason = ?refusal,
            "request refused"
        );
        if let Some(prebuilt) = self.prebuilt {
            let index = REFUSALS.iter().position(|r| *r == refusal).unwrap_or(0);
            if !head.is_grpc() {
                return Answer::Prebuilt(&prebuilt.http[index]);
            }
            if head
                .headers
                .get(http::header::CONTENT_TYPE)
                .is_some_and(|ct| ct == GRPC)
            {
                return Answer::Prebuilt(&prebuilt.grpc[index]);
            }
        }
        Answer::Built(Box::new(
            self.responder
                .respond(&rejection(refusal, self.retry_after), head),
        ))
    }
}

/// `prebuilt`, kept for the rest of the process, once per distinct content.
fn intern_prebuilt(prebuilt: Prebuilt) -> &'static Prebuilt {
    static INTERNED: Mutex<Vec<&'static Prebuilt>> = Mutex::new(Vec::new());
    let mut interned = INTERNED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(kept) = interned.iter().find(|kept| kept.same_as(&prebuilt)) {
        return kept;
    }
    let kept: &'static Prebuilt = Box::leak(Box::new(prebuilt));
    interned.push(kept);
    kept
}

/// `response` with its body and headers moved to static bytes, whose clones
/// share no reference count.
fn into_static(response: Response<Bytes>) -> Response<Bytes> {
    let (mut parts, body) = response.into_parts();
    let mut headers = HeaderMap::with_capacity(parts.headers.len());
    for (name, value) in &parts.headers {
        // A map's names are valid lower-case ASCII and its values valid values,
        // so the conversions cannot fail; should one, the original is kept.
        let name = std::str::from_utf8(intern(name.as_str().as_bytes()))
            .map_or_else(|_| name.clone(), HeaderName::from_static);
        let bytes = Bytes::from_static(intern(value.as_bytes()));
        let mut fixed = HeaderValue::from_maybe_shared(bytes).unwrap_or_else(|_| value.clone());
        fixed.set_sensitive(value.is_sensitive());
        headers.append(name, fixed);
    }
    parts.headers = headers;
    Response::from_parts(parts, Bytes::from_static(intern(&body)))
}

/// `bytes`, kept for the rest of the process, once per distinct content.
///
/// Limitation: the prebuilt refusals stay in memory until the process exits,
/// about two kilobytes per combination of responder type base and `Retry-After`
/// that a program configures, however many layers it builds with them.
fn intern(bytes: &[u8]) -> &'static [u8] {
    static INTERNED: Mutex<BTreeSet<&'static [u8]>> = Mutex::new(BTreeSet::new());
    let mut interned = INTERNED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(kept) = interned.get(bytes) {
        return kept;
    }
    let kept: &'static [u8] = Box::leak(Box::from(bytes));
    interned.insert(kept);
    kept
}

pin_project! {
    /// The future of [`ConcurrencyLimit`](super::ConcurrencyLimit) and
    /// [`LoadShed`](crate::shed::LoadShed): waits in line if need be, calls the
    /// inner service, and hands the permit to the response body.
    pub struct ResponseFuture<S, B, C>
    where
        S: Service<Request<B>>,
        C: Clock,
    {
        #[pin]
        state: State<S, B, C>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B, C>
    where
        S: Service<Request<B>>,
        C: Clock,
    {
        Called {
            #[pin]
            future: S::Future,
            permit: Option<Permit>,
        },
        // Boxed: a waiter carries the request, the service and a timer, which
        // would otherwise make every future large, also on the path that never
        // waits.
        Waiting {
            waiting: Pin<Box<Waiting<S, B, C>>>,
        },
        Ready {
            answer: Option<Answer>,
        },
    }
}

pin_project! {
    struct Waiting<S, B, C>
    where
        C: Clock,
    {
        #[pin]
        wait: Wait<C>,
        service: Option<S>,
        request: Option<Request<B>>,
        refuse: Refuse,
    }
}

impl<S, B, C> ResponseFuture<S, B, C>
where
    S: Service<Request<B>>,
    C: Clock,
{
    pub(crate) fn called(future: S::Future, permit: Option<Permit>) -> Self {
        ResponseFuture {
            state: State::Called { future, permit },
        }
    }

    pub(crate) fn waiting(wait: Wait<C>, service: S, request: Request<B>, refuse: Refuse) -> Self {
        ResponseFuture {
            state: State::Waiting {
                waiting: Box::pin(Waiting {
                    wait,
                    service: Some(service),
                    request: Some(request),
                    refuse,
                }),
            },
        }
    }

    pub(crate) fn ready(answer: Answer) -> Self {
        ResponseFuture {
            state: State::Ready {
                answer: Some(answer),
            },
        }
    }
}

impl<S, B, C> std::fmt::Debug for ResponseFuture<S, B, C>
where
    S: Service<Request<B>>,
    C: Clock,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<S, B, C, ResBody> Future for ResponseFuture<S, B, C>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    C: Clock,
{
    type Output = Result<Response<ResponseBody<PermitBody<ResBody>>>, S::Error>;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // The admitted request's state is polled here, inlined; the others out
        // of line.
        match self.as_mut().project().state.project() {
            StateProj::Called { future, permit } => {
                let result = ready!(future.poll(cx));
                let mut permit = permit.take();
                if let Some(permit) = &mut permit {
                    permit.record(outcome(&result));
                }
                Poll::Ready(result.map(|response| {
                    response.map(|body| ResponseBody::new(PermitBody { body, permit }))
                }))
            }
            _ => self.poll_slow(cx),
        }
    }
}

impl<S, B, C, ResBody> ResponseFuture<S, B, C>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    C: Clock,
{
    /// Polls a future that waits in line or holds its answer; once admitted, it
    /// goes on as the inner service's future.
    #[inline(never)]
    fn poll_slow(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<<Self as Future>::Output> {
        loop {
            let next = match self.as_mut().project().state.project() {
                StateProj::Called { .. } => return self.poll(cx),
                StateProj::Ready { answer } => {
                    let answer = answer
                        .take()
                        .expect("ResponseFuture polled after completion");
                    return Poll::Ready(Ok(answer.into_response()));
                }
                StateProj::Waiting { waiting } => {
                    let waiting = waiting.as_mut().project();
                    match ready!(waiting.wait.poll_permit(cx)) {
                        Ok(permit) => {
                            let mut service = waiting.service.take().expect("service taken once");
                            let request = waiting.request.take().expect("request taken once");
                            State::Called {
                                future: service.call(request),
                                permit: Some(permit),
                            }
                        }
                        Err(refusal) => {
                            let request = waiting.request.as_ref().expect("request still held");
                            State::Ready {
                                answer: Some(
                                    waiting.refuse.answer(refusal, &RequestHead::of(request)),
                                ),
                            }
                        }
                    }
                }
            };
            self.as_mut().project().state.set(next);
        }
    }
}

/// How the limit algorithm reads a finished call: errors and the statuses of an
/// overloaded service (503, 504) are drops.
fn outcome<B, E>(result: &Result<Response<B>, E>) -> Outcome {
    match result {
        Ok(response)
            if !matches!(
                response.status(),
                StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
            ) =>
        {
            Outcome::Success
        }
        _ => Outcome::Dropped,
    }
}

pin_project! {
    /// A response body that holds its request's permit until the body ends, fails
    /// or is dropped, so a slow download still counts against the limit.
    pub struct PermitBody<B> {
        #[pin]
        body: B,
        permit: Option<Permit>,
    }
}

impl<B: std::fmt::Debug> std::fmt::Debug for PermitBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PermitBody")
            .field("body", &self.body)
            .field("holds_permit", &self.permit.is_some())
            .finish()
    }
}

impl<B> Body for PermitBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.body.as_mut().poll_frame(cx));
        match &frame {
            Some(Ok(_)) if !this.body.is_end_stream() => {}
            _ => drop(this.permit.take()),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prebuilt_refusals_equal_the_responses_built_per_request() {
        let retry_after = Some(Duration::from_millis(1500));
        let responder = Responder::default();
        let refuse = Refuse::new(responder.clone(), retry_after);
        let mut grpc = Request::new(());
        grpc.headers_mut()
            .insert(http::header::CONTENT_TYPE, HeaderValue::from_static(GRPC));

        for request in [Request::new(()), grpc] {
            let head = RequestHead::of(&request);
            for refusal in REFUSALS {
                let Answer::Prebuilt(prebuilt) = refuse.answer(refusal, &head) else {
                    panic!("the standard responder's refusals are prebuilt");
                };
                let built = responder.respond(&rejection(refusal, retry_after), &head);
                assert_eq!(prebuilt.status(), built.status());
                assert_eq!(prebuilt.headers(), built.headers());
                assert_eq!(prebuilt.body(), built.body());
            }
            // A second layer with the same settings shares the same responses.
            let again = Refuse::new(responder.clone(), retry_after);
            assert!(std::ptr::eq(
                again.prebuilt.expect("prebuilt"),
                refuse.prebuilt.expect("prebuilt")
            ));
        }
    }

    #[test]
    fn a_permit_and_the_bodies_around_it_stay_within_a_register_pair() {
        // Futures and responses of up to 128 bytes move inline; these sizes
        // keep a limited response as large as an unlimited one plus 16 bytes.
        use std::mem::size_of;
        assert_eq!(size_of::<Permit>(), 16);
        assert_eq!(size_of::<Option<Permit>>(), 16);
        type Body = http_body_util::Empty<Bytes>;
        assert_eq!(size_of::<ResponseBody<PermitBody<Body>>>(), 16);
        assert_eq!(
            size_of::<Response<ResponseBody<PermitBody<Body>>>>(),
            size_of::<Response<Body>>() + 16
        );
    }

    #[test]
    fn interning_keeps_one_copy_per_content() {
        let first = intern(b"application/problem+json; interning test");
        let second = intern(
            b"application/problem+json; interning test"
                .to_vec()
                .as_slice(),
        );
        assert_eq!(first, b"application/problem+json; interning test");
        assert!(std::ptr::eq(first, second));
    }
}
