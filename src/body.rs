//! Response bodies and futures shared by the layers.
//!
//! A layer either passes the inner service's response through or answers itself
//! (a rejection, a cached response). [`ResponseBody`] is that choice as a body type:
//! generic over the inner body, which it never boxes, so a passed-through response
//! costs one enum tag, often none. The layer's own bytes are the ones boxed: one
//! small allocation on the rarer path keeps every passed-through response as small
//! as its inner body. Its error type is the inner body's, so stacks keep their
//! error types.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Response;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// The body of a response that went through a tower-toolbox layer: the inner
    /// service's body, or a complete body the layer produced itself.
    #[derive(Debug)]
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<B> {
        Inner { #[pin] body: B },
        // Boxed, and a static variant beside it: a body the layer built is
        // rare next to passed-through ones, and an inline `Bytes` (32 bytes)
        // would make every response bigger than the inner one by that much.
        Full { data: Option<Box<Bytes>> },
        Static { data: Option<&'static Bytes> },
    }
}

impl<B> ResponseBody<B> {
    /// Wraps the inner service's body.
    pub fn new(body: B) -> Self {
        ResponseBody {
            kind: Kind::Inner { body },
        }
    }

    /// A complete body of `data` (no frame at all when `data` is empty).
    pub fn full(data: Bytes) -> Self {
        let data = (!data.is_empty()).then(|| Box::new(data));
        ResponseBody {
            kind: Kind::Full { data },
        }
    }

    /// A complete body of `data`, which lives as long as the program: each
    /// response clones the handle, no allocation.
    #[cfg_attr(not(feature = "concurrency"), allow(dead_code))]
    pub(crate) fn from_static(data: &'static Bytes) -> Self {
        let data = (!data.is_empty()).then_some(data);
        ResponseBody {
            kind: Kind::Static { data },
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        ResponseBody {
            kind: Kind::Full { data: None },
        }
    }
}

impl<B> Default for ResponseBody<B> {
    fn default() -> Self {
        Self::empty()
    }
}

impl<B> Body for ResponseBody<B>
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
        match self.project().kind.project() {
            KindProj::Inner { body } => body.poll_frame(cx),
            KindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(*d)))),
            KindProj::Static { data } => {
                Poll::Ready(data.take().map(|d| Ok(Frame::data(d.clone()))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Full { data } => data.is_none(),
            Kind::Static { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Static { data } => SizeHint::with_exact(data.map_or(0, |d| d.len() as u64)),
        }
    }
}

/// Turns a complete response the layer built into a [`ResponseBody`] response.
pub(crate) fn full_response<B>(response: Response<Bytes>) -> Response<ResponseBody<B>> {
    response.map(ResponseBody::full)
}

pin_project! {
    /// The future of a layer that either calls the inner service or answers at once.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    #[derive(Debug)]
    enum State<F> {
        Inner { #[pin] future: F },
        Ready { response: Option<Response<Bytes>> },
    }
}

impl<F> ResponseFuture<F> {
    /// Waits for the inner service's response.
    pub fn inner(future: F) -> Self {
        ResponseFuture {
            state: State::Inner { future },
        }
    }

    /// Answers with `response` without calling the inner service.
    pub fn ready(response: Response<Bytes>) -> Self {
        ResponseFuture {
            state: State::Ready {
                response: Some(response),
            },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Inner { future } => future
                .poll(cx)
                .map(|result| result.map(|response| response.map(ResponseBody::new))),
            StateProj::Ready { response } => {
                let response = response
                    .take()
                    .expect("ResponseFuture polled after completion");
                Poll::Ready(Ok(full_response(response)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};
    use std::convert::Infallible;

    #[tokio::test]
    async fn full_body_yields_its_bytes_once_then_ends() {
        let body: ResponseBody<Full<Bytes>> = ResponseBody::full(Bytes::from_static(b"hi"));
        assert_eq!(body.size_hint().exact(), Some(2));
        assert!(!body.is_end_stream());
        let collected = body.collect().await.unwrap().to_bytes();
        assert_eq!(collected, Bytes::from_static(b"hi"));
    }

    #[test]
    fn empty_full_body_is_at_end_of_stream() {
        let body: ResponseBody<Full<Bytes>> = ResponseBody::full(Bytes::new());
        assert!(body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(0));
    }

    #[tokio::test]
    async fn static_body_yields_its_bytes_once_then_ends() {
        static DATA: Bytes = Bytes::from_static(b"kept");
        let body: ResponseBody<Full<Bytes>> = ResponseBody::from_static(&DATA);
        assert_eq!(body.size_hint().exact(), Some(4));
        assert!(!body.is_end_stream());
        assert_eq!(body.collect().await.unwrap().to_bytes(), "kept");
    }

    #[tokio::test]
    async fn inner_body_passes_through() {
        let body = ResponseBody::new(Full::new(Bytes::from_static(b"inner")));
        assert_eq!(body.size_hint().exact(), Some(5));
        assert_eq!(body.collect().await.unwrap().to_bytes(), "inner");
    }

    #[tokio::test]
    async fn ready_future_answers_without_the_inner_future() {
        let future: ResponseFuture<
            std::future::Pending<Result<Response<Full<Bytes>>, Infallible>>,
        > = ResponseFuture::ready(Response::new(Bytes::from_static(b"no")));
        let response = future.await.unwrap();
        assert_eq!(
            response.into_body().collect().await.unwrap().to_bytes(),
            "no"
        );
    }
}
