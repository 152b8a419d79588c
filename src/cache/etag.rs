//! Strong `ETag`s from a hash of the content, for handlers that set none.

use std::fmt;
use std::future::Future;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, ETAG, IF_NONE_MATCH};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::conditional;

/// Adds a strong `ETag` (a 128-bit hash of the body) to `200` responses to `GET`
/// that lack one, and answers a matching `If-None-Match` with `304`.
///
/// Responses to `HEAD` pass untouched: they have no body to hash, and a tag
/// computed from nothing would differ from the one the `GET` gets.
/// The body is read whole to hash it, up to [`max_body`](Self::max_body)
/// (default 1 MiB); a larger one (by `Content-Length` or as it streams) is passed
/// on without an `ETag`. Responses that already carry an `ETag` pass untouched.
/// Put it inside [`CacheLayer`](super::CacheLayer) so the cache can revalidate.
///
/// ```
/// use std::convert::Infallible;
/// use bytes::Bytes;
/// use http::{Request, Response};
/// use http_body_util::Full;
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_toolbox::cache::EtagLayer;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let service = ServiceBuilder::new()
///     .layer(EtagLayer::new())
///     .service_fn(|_: Request<()>| async {
///         Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hello"))))
///     });
/// let response = service.oneshot(Request::get("/").body(()).unwrap()).await.unwrap();
/// assert!(response.headers().contains_key("etag"));
/// # }
/// ```
#[derive(Clone, Copy, Debug)]
pub struct EtagLayer {
    max_body: usize,
}

impl EtagLayer {
    /// Hashes bodies of up to 1 MiB.
    pub const fn new() -> Self {
        EtagLayer { max_body: 1 << 20 }
    }

    /// The largest body hashed, in bytes (default 1 MiB).
    pub const fn max_body(mut self, bytes: NonZeroUsize) -> Self {
        self.max_body = bytes.get();
        self
    }
}

impl Default for EtagLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Layer<S> for EtagLayer {
    type Service = Etag<S>;

    fn layer(&self, inner: S) -> Etag<S> {
        Etag {
            inner,
            max_body: self.max_body,
        }
    }
}

/// The service made by [`EtagLayer`].
#[derive(Clone, Debug)]
pub struct Etag<S> {
    inner: S,
    max_body: usize,
}

impl<S, ReqBody, B> Service<Request<ReqBody>> for Etag<S>
where
    S: Service<Request<ReqBody>, Response = Response<B>>,
    B: Body<Data = Bytes>,
{
    type Response = Response<EtagBody<B>>;
    type Error = S::Error;
    type Future = EtagFuture<S::Future, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let applies = request.method() == Method::GET;
        let if_none_match = if applies {
            let mut conditions = HeaderMap::new();
            for value in request.headers().get_all(IF_NONE_MATCH) {
                conditions.append(IF_NONE_MATCH, value.clone());
            }
            Some(conditions)
        } else {
            None
        };
        EtagFuture {
            state: State::Waiting {
                future: self.inner.call(request),
                if_none_match,
                max_body: self.max_body,
            },
        }
    }
}

pin_project! {
    /// The response future of [`Etag`].
    pub struct EtagFuture<F, B> {
        #[pin]
        state: State<F, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B> {
        Waiting {
            #[pin]
            future: F,
            if_none_match: Option<HeaderMap>,
            max_body: usize,
        },
        Reading {
            head: Option<http::response::Parts>,
            body: Option<Pin<Box<B>>>,
            buffer: BytesMut,
            if_none_match: HeaderMap,
            max_body: usize,
        },
    }
}

impl<F, B> fmt::Debug for EtagFuture<F, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EtagFuture")
    }
}

impl<F, B, E> Future for EtagFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body<Data = Bytes>,
{
    type Output = Result<Response<EtagBody<B>>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match self.as_mut().project().state.project() {
                StateProj::Waiting {
                    future,
                    if_none_match,
                    max_body,
                } => {
                    let response = ready!(future.poll(cx))?;
                    let max_body = *max_body;
                    let declared: Option<u64> = response
                        .headers()
                        .get(CONTENT_LENGTH)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse().ok());
                    let hashable = response.status() == StatusCode::OK
                        && !response.headers().contains_key(ETAG)
                        && declared.is_none_or(|len| len <= max_body as u64);
                    let Some(conditions) = if_none_match.take().filter(|_| hashable) else {
                        return Poll::Ready(Ok(response.map(EtagBody::pass)));
                    };
                    let (head, body) = response.into_parts();
                    self.set(EtagFuture {
                        state: State::Reading {
                            head: Some(head),
                            body: Some(Box::pin(body)),
                            buffer: BytesMut::new(),
                            if_none_match: conditions,
                            max_body,
                        },
                    });
                }
                StateProj::Reading {
                    head,
                    body,
                    buffer,
                    if_none_match,
                    max_body,
                } => {
                    let polled = body
                        .as_mut()
                        .expect("body taken at the end")
                        .as_mut()
                        .poll_frame(cx);
                    match ready!(polled) {
                        Some(Ok(frame)) => {
                            if let Some(data) = frame.data_ref() {
                                buffer.extend_from_slice(data);
                            }
                            // Trailers or too large: give up hashing, pass the rest on.
                            if frame.is_trailers() || buffer.len() > *max_body {
                                let head = head.take().expect("head taken once");
                                let read = std::mem::take(buffer).freeze();
                                let trailers = frame.into_trailers().ok();
                                return Poll::Ready(Ok(Response::from_parts(
                                    head,
                                    EtagBody::partial(
                                        read,
                                        trailers,
                                        body.take().expect("body taken once"),
                                    ),
                                )));
                            }
                        }
                        Some(Err(error)) => {
                            let head = head.take().expect("head taken once");
                            let read = std::mem::take(buffer).freeze();
                            return Poll::Ready(Ok(Response::from_parts(
                                head,
                                EtagBody::failed(read, error),
                            )));
                        }
                        None => {
                            let mut head = head.take().expect("head taken once");
                            let content = std::mem::take(buffer).freeze();
                            let tag = strong_etag(&content);
                            let matched =
                                conditional::not_modified(if_none_match, Some(&tag), None)
                                    && if_none_match.contains_key(IF_NONE_MATCH);
                            head.headers.insert(ETAG, tag);
                            if matched {
                                head.status = StatusCode::NOT_MODIFIED;
                                head.headers.remove(CONTENT_LENGTH);
                                return Poll::Ready(Ok(Response::from_parts(
                                    head,
                                    EtagBody::full(Bytes::new()),
                                )));
                            }
                            return Poll::Ready(Ok(Response::from_parts(
                                head,
                                EtagBody::full(content),
                            )));
                        }
                    }
                }
            }
        }
    }
}

/// `"<32 hex digits>"`: the XXH3 128-bit hash of `content`.
fn strong_etag(content: &[u8]) -> HeaderValue {
    let hash = xxhash_rust::xxh3::xxh3_128(content);
    HeaderValue::from_str(&format!("\"{hash:032x}\"")).expect("hex is a valid header value")
}

pin_project! {
    /// The body of a response through [`Etag`]: untouched, complete (hashed), or
    /// the part read before hashing was given up followed by the rest.
    pub struct EtagBody<B: Body> {
        #[pin]
        kind: BodyKind<B>,
    }
}

pin_project! {
    #[project = BodyKindProj]
    enum BodyKind<B: Body> {
        Pass { #[pin] body: B },
        Full { data: Option<Bytes> },
        Partial { read: Option<Bytes>, trailers: Option<HeaderMap>, rest: Pin<Box<B>> },
        Failed { read: Option<Bytes>, error: Option<B::Error> },
    }
}

impl<B: Body> EtagBody<B> {
    fn pass(body: B) -> Self {
        EtagBody {
            kind: BodyKind::Pass { body },
        }
    }

    fn full(data: Bytes) -> Self {
        EtagBody {
            kind: BodyKind::Full {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }

    fn partial(read: Bytes, trailers: Option<HeaderMap>, rest: Pin<Box<B>>) -> Self {
        EtagBody {
            kind: BodyKind::Partial {
                read: (!read.is_empty()).then_some(read),
                trailers,
                rest,
            },
        }
    }

    fn failed(read: Bytes, error: B::Error) -> Self {
        EtagBody {
            kind: BodyKind::Failed {
                read: (!read.is_empty()).then_some(read),
                error: Some(error),
            },
        }
    }
}

impl<B: Body> fmt::Debug for EtagBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EtagBody")
    }
}

impl<B> Body for EtagBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            BodyKindProj::Pass { body } => body.poll_frame(cx),
            BodyKindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            BodyKindProj::Partial {
                read,
                trailers,
                rest,
            } => {
                if let Some(read) = read.take() {
                    return Poll::Ready(Some(Ok(Frame::data(read))));
                }
                if let Some(trailers) = trailers.take() {
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                rest.as_mut().poll_frame(cx)
            }
            BodyKindProj::Failed { read, error } => {
                if let Some(read) = read.take() {
                    return Poll::Ready(Some(Ok(Frame::data(read))));
                }
                Poll::Ready(error.take().map(Err))
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            BodyKind::Pass { body } => body.size_hint(),
            BodyKind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            _ => SizeHint::default(),
        }
    }
}
