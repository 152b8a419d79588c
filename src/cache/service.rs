//! The cache service.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body::Body;
use tower_service::Service;

use super::directives::CacheControl;
use super::future::ResponseFuture;
use super::policy;
use super::shared::{Lookup, Shared, Use};
use super::upstream;
use crate::body::ResponseBody;
use crate::clock::{Clock, MonotonicClock};

use super::body::TeeBody;

/// Serves responses from an RFC 9111 cache in front of the inner service.
///
/// Made by [`CacheLayer`](super::CacheLayer); see the [module docs](super).
pub struct Cache<S, C = MonotonicClock> {
    inner: S,
    shared: Arc<Shared<C>>,
}

impl<S: Clone, C> Clone for Cache<S, C> {
    fn clone(&self) -> Self {
        Cache {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, C> fmt::Debug for Cache<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("inner", &self.inner)
            .field("store", &self.shared.memory)
            .finish()
    }
}

impl<S, C> Cache<S, C> {
    pub(crate) fn new(inner: S, shared: Arc<Shared<C>>) -> Self {
        Cache { inner, shared }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, C, ReqBody, B> Service<Request<ReqBody>> for Cache<S, C>
where
    S: Service<Request<ReqBody>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    C: Clock,
{
    type Response = Response<ResponseBody<TeeBody<B>>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, B, S::Error>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let Cache { inner, shared } = self;
        let method = request.method();

        if !policy::request_is_cacheable(method, request.headers()) {
            // gRPC calls are `POST`s that change nothing a cache holds.
            if is_safe(method) || crate::reject::is_grpc(request.headers()) {
                return ResponseFuture::pass(inner.call(request));
            }
            let inner = take_ready(inner);
            let shared = shared.clone();
            return ResponseFuture::upstream(Box::pin(upstream::unsafe_request(
                shared, inner, request,
            )));
        }

        let (parts, body) = request.into_parts();
        let request_cc = CacheControl::parse_request(&parts.headers);
        let (key, found) = match shared.lookup(&parts, &request_cc) {
            Lookup::Declined => {
                return ResponseFuture::pass(inner.call(Request::from_parts(parts, body)));
            }
            Lookup::Serve(entry, age) => {
                return ResponseFuture::ready(shared.serve(
                    &entry,
                    age,
                    &parts.method,
                    &parts.headers,
                ));
            }
            Lookup::Other(key, found) => (key, found),
        };

        let mut stale = None;
        match found {
            Some((entry, age, Use::ServeAndRefresh)) => {
                let response = shared.serve(&entry, age, &parts.method, &parts.headers);
                let inner = take_ready(inner);
                let mut parts = parts;
                // Refresh with a `GET` even when a `HEAD` found the entry.
                parts.method = Method::GET;
                upstream::refresh(
                    shared.clone(),
                    inner,
                    Request::from_parts(parts, body),
                    key,
                    entry,
                );
                return ResponseFuture::ready(response);
            }
            Some(_) if request_cc.only_if_cached => {
                return ResponseFuture::ready(shared.only_if_cached(&parts));
            }
            Some((entry, _, _)) => stale = Some(entry),
            None if request_cc.only_if_cached && !cfg!(feature = "redis") => {
                return ResponseFuture::ready(shared.only_if_cached(&parts));
            }
            None => {}
        }

        let inner = take_ready(inner);
        ResponseFuture::upstream(Box::pin(upstream::miss(
            shared.clone(),
            inner,
            Request::from_parts(parts, body),
            key,
            request_cc,
            stale,
        )))
    }
}

/// The service that was driven to readiness, leaving a fresh clone in its place.
fn take_ready<S: Clone>(inner: &mut S) -> S {
    let clone = inner.clone();
    std::mem::replace(inner, clone)
}

fn is_safe(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}
