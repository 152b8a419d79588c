//! The response future of [`Cache`](super::Cache).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Response;
use pin_project_lite::pin_project;

use super::body::TeeBody;
use crate::body::ResponseBody;

type Upstream<B, E> =
    Pin<Box<dyn Future<Output = Result<Response<ResponseBody<TeeBody<B>>>, E>> + Send>>;

pin_project! {
    /// The future of a request through the cache.
    ///
    /// A hit is ready at once, with no allocation for the future; a request the
    /// cache never handles (`Range`, `OPTIONS`, ...) polls the inner future
    /// directly; a miss, a revalidation or an unsafe request runs as one boxed
    /// future, since it waits on the network anyway.
    pub struct ResponseFuture<F, B, E> {
        #[pin]
        kind: Kind<F, B, E>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B, E> {
        Ready { response: Option<Response<Bytes>> },
        Pass { #[pin] future: F },
        Upstream { future: Upstream<B, E> },
    }
}

impl<F, B, E> ResponseFuture<F, B, E> {
    pub(crate) fn ready(response: Response<Bytes>) -> Self {
        ResponseFuture {
            kind: Kind::Ready {
                response: Some(response),
            },
        }
    }

    pub(crate) fn pass(future: F) -> Self {
        ResponseFuture {
            kind: Kind::Pass { future },
        }
    }

    pub(crate) fn upstream(future: Upstream<B, E>) -> Self {
        ResponseFuture {
            kind: Kind::Upstream { future },
        }
    }
}

impl<F, B, E> fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Ready { .. } => "ready",
            Kind::Pass { .. } => "pass",
            Kind::Upstream { .. } => "upstream",
        };
        f.debug_struct("ResponseFuture")
            .field("kind", &kind)
            .finish()
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<TeeBody<B>>>, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Ready { response } => {
                let response = response
                    .take()
                    .expect("ResponseFuture polled after completion");
                Poll::Ready(Ok(response.map(ResponseBody::full)))
            }
            KindProj::Pass { future } => future
                .poll(cx)
                .map_ok(|response| response.map(|body| ResponseBody::new(TeeBody::pass(body)))),
            KindProj::Upstream { future } => future.as_mut().poll(cx),
        }
    }
}
