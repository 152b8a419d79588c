//! The paths that go to the inner service: misses (collapsed), revalidation,
//! background refreshes and unsafe requests that invalidate.

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;
use http::header::{ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED};
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use tower_service::Service;

use super::body::TeeBody;
use super::collapse::{Leader, Outcome, Role};
use super::directives::CacheControl;
use super::entry::Entry;
use super::shared::{Shared, Use};
use crate::body::ResponseBody;
use crate::clock::Clock;

/// The response type of the cache service.
pub(crate) type CacheResponse<B> = Response<ResponseBody<TeeBody<B>>>;

/// Calls `inner` once it is ready.
pub(crate) async fn call<S, R>(mut inner: S, request: R) -> Result<S::Response, S::Error>
where
    S: Service<R>,
{
    poll_fn(|cx| inner.poll_ready(cx)).await?;
    inner.call(request).await
}

fn ready<B>(response: Response<Bytes>) -> CacheResponse<B> {
    response.map(ResponseBody::full)
}

fn streamed<B>(response: Response<TeeBody<B>>) -> CacheResponse<B> {
    response.map(ResponseBody::new)
}

/// A request with no usable stored response (`stale` is one that may be
/// revalidated or stand in on error).
pub(crate) async fn miss<S, C, ReqBody, B>(
    shared: Arc<Shared<C>>,
    inner: S,
    request: Request<ReqBody>,
    key: Arc<str>,
    request_cc: CacheControl,
    #[allow(unused_mut)] mut stale: Option<Arc<Entry>>,
) -> Result<CacheResponse<B>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    C: Clock,
{
    #[cfg(feature = "redis")]
    if stale.is_none() {
        if let Some(entry) = shared.get_remote(&key, request.headers()).await {
            let age = entry.age(shared.now());
            if let Some(memory) = &shared.memory {
                memory.put(&key, entry.clone());
            }
            match shared.decide(&entry, &request_cc, age) {
                Use::Serve => {
                    let response = shared.serve(&entry, age, request.method(), request.headers());
                    return Ok(ready(response));
                }
                Use::ServeAndRefresh => {
                    let response = shared.serve(&entry, age, request.method(), request.headers());
                    let mut request = request;
                    // Refresh with a `GET` even when a `HEAD` found the entry.
                    *request.method_mut() = Method::GET;
                    refresh(shared, inner, request, key, entry);
                    return Ok(ready(response));
                }
                Use::Revalidate => stale = Some(entry),
            }
        }
    }

    if request_cc.only_if_cached {
        let (parts, _) = request.into_parts();
        return Ok(ready(shared.only_if_cached(&parts)));
    }
    // Limitation: revalidations are not collapsed; concurrent requests for one
    // stale entry each ask the origin (conditionally, so each answer is small).
    // `stale-while-revalidate` avoids this where the origin allows it.
    if let Some(entry) = stale {
        return revalidate(shared, inner, request, key, request_cc, entry).await;
    }

    let collapse = shared.config.collapse
        && request.method() == Method::GET
        && !request_cc.no_cache
        && !shared.is_hit_for_miss(&key);
    if collapse {
        match shared.inflight.join(&key) {
            Role::Leader(leader) => {
                return lead(shared, inner, request, key, request_cc, leader).await;
            }
            Role::Waiter(receiver) => {
                if let Outcome::Stored(stored) = wait(&shared, receiver).await {
                    // The leader's response, or another stored variant when the
                    // leader's `Vary` selection is not this request's.
                    let entry = if stored.vary.matches(request.headers()) {
                        Some(stored)
                    } else {
                        shared.memory_get(&key, request.headers())
                    };
                    if let Some(entry) = entry {
                        let age = entry.age(shared.now());
                        if shared.decide(&entry, &request_cc, age) == Use::Serve {
                            let response =
                                shared.serve(&entry, age, request.method(), request.headers());
                            return Ok(ready(response));
                        }
                    }
                }
                tracing::trace!(%key, "collapsed request goes upstream itself");
            }
        }
    }
    fetch(shared, inner, request, key, request_cc, None)
        .await
        .map(streamed)
}

/// Parks until the leader reports or the collapse timeout passes.
async fn wait<C: Clock>(
    shared: &Shared<C>,
    mut receiver: tokio::sync::watch::Receiver<Outcome>,
) -> Outcome {
    let deadline = shared.clock.now() + shared.config.collapse_timeout;
    let mut sleep = pin!(shared.clock.sleep_until(deadline));
    let mut outcome = pin!(async move {
        match receiver.wait_for(|o| !matches!(o, Outcome::Pending)).await {
            Ok(outcome) => outcome.clone(),
            Err(_) => Outcome::Released,
        }
    });
    poll_fn(|cx| {
        if let Poll::Ready(outcome) = outcome.as_mut().poll(cx) {
            return Poll::Ready(outcome);
        }
        sleep.as_mut().poll(cx).map(|()| Outcome::Released)
    })
    .await
}

/// Goes upstream for a flight: the request runs in its own task, so it completes
/// (and is stored for the waiters) even if this client goes away.
async fn lead<S, C, ReqBody, B>(
    shared: Arc<Shared<C>>,
    inner: S,
    request: Request<ReqBody>,
    key: Arc<str>,
    request_cc: CacheControl,
    leader: Leader,
) -> Result<CacheResponse<B>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    C: Clock,
{
    let task = tokio::spawn(fetch(shared, inner, request, key, request_cc, Some(leader)));
    match task.await {
        Ok(result) => result.map(streamed),
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Err(_) => panic!("the runtime shut down while a cache miss was in flight"),
    }
}

/// Sends the request upstream and admits the response.
async fn fetch<S, C, ReqBody, B>(
    shared: Arc<Shared<C>>,
    inner: S,
    request: Request<ReqBody>,
    key: Arc<str>,
    request_cc: CacheControl,
    leader: Option<Leader>,
) -> Result<Response<TeeBody<B>>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<B>>,
    B: Body<Data = Bytes> + Send + 'static,
    C: Clock,
{
    let method = request.method().clone();
    let headers = request.headers().clone();
    let request_time = shared.now();
    tracing::trace!(%key, "cache miss");
    let response = call(inner, request).await?;
    Ok(shared.admit(
        response,
        &method,
        headers,
        &request_cc,
        request_time,
        key,
        leader,
    ))
}

/// Asks the origin whether `entry` is still good: conditionally when it has a
/// validator. A 304 freshens it; a 5xx or an error serves it within
/// `stale-if-error`; anything else replaces it.
pub(crate) async fn revalidate<S, C, ReqBody, B>(
    shared: Arc<Shared<C>>,
    inner: S,
    mut request: Request<ReqBody>,
    key: Arc<str>,
    request_cc: CacheControl,
    entry: Arc<Entry>,
) -> Result<CacheResponse<B>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<B>>,
    B: Body<Data = Bytes> + Send + 'static,
    C: Clock,
{
    let method = request.method().clone();
    let client_headers = request.headers().clone();

    // The client's own validators are answered here from the result; the origin
    // is asked about the stored response's.
    let headers = request.headers_mut();
    headers.remove(IF_NONE_MATCH);
    headers.remove(IF_MODIFIED_SINCE);
    if let Some(etag) = entry.headers.get(&ETAG) {
        headers.insert(IF_NONE_MATCH, etag.clone());
    }
    if let Some(modified) = entry.headers.get(&LAST_MODIFIED) {
        headers.insert(IF_MODIFIED_SINCE, modified.clone());
    }
    let forwarded = request.headers().clone();

    let request_time = shared.now();
    tracing::trace!(%key, "cache revalidate");
    match call(inner, request).await {
        Ok(response) if response.status() == StatusCode::NOT_MODIFIED && entry.has_validator() => {
            let response_time = shared.now();
            let fresh = Arc::new(entry.freshen(
                response.headers(),
                request_time,
                response_time,
                &shared.config.freshness,
            ));
            shared.put(&key, fresh.clone());
            let age = fresh.age(response_time);
            Ok(ready(shared.serve(&fresh, age, &method, &client_headers)))
        }
        Ok(response) if response.status().is_server_error() => {
            let age = entry.age(shared.now());
            if shared.usable_on_error(&entry, age) {
                tracing::debug!(%key, status = %response.status(), "serving stale on error");
                return Ok(ready(shared.serve(&entry, age, &method, &client_headers)));
            }
            Ok(streamed(shared.admit(
                response,
                &method,
                forwarded,
                &request_cc,
                request_time,
                key,
                None,
            )))
        }
        Ok(response) => Ok(streamed(shared.admit(
            response,
            &method,
            forwarded,
            &request_cc,
            request_time,
            key,
            None,
        ))),
        Err(error) => {
            let age = entry.age(shared.now());
            if shared.usable_on_error(&entry, age) {
                tracing::debug!(%key, "serving stale on upstream error");
                return Ok(ready(shared.serve(&entry, age, &method, &client_headers)));
            }
            Err(error)
        }
    }
}

/// Refreshes `entry` in the background (`stale-while-revalidate`), at most one
/// refresh per key at a time.
pub(crate) fn refresh<S, C, ReqBody, B>(
    shared: Arc<Shared<C>>,
    inner: S,
    request: Request<ReqBody>,
    key: Arc<str>,
    entry: Arc<Entry>,
) where
    S: Service<Request<ReqBody>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    C: Clock,
{
    if !shared.start_refresh(&key) {
        return;
    }
    tokio::spawn(async move {
        let request_cc = CacheControl::default();
        let result = revalidate(
            shared.clone(),
            inner,
            request,
            key.clone(),
            request_cc,
            entry,
        )
        .await;
        if let Ok(response) = result {
            // Read to the end so a new response is stored.
            let mut body = pin!(response.into_body());
            while let Some(Ok(_)) = poll_fn(|cx| body.as_mut().poll_frame(cx)).await {}
        }
        shared.end_refresh(&key);
    });
}

/// An unsafe request: passed through, and on success the stored responses it may
/// have changed are invalidated.
pub(crate) async fn unsafe_request<S, C, ReqBody, B>(
    shared: Arc<Shared<C>>,
    inner: S,
    request: Request<ReqBody>,
) -> Result<CacheResponse<B>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<B>>,
    C: Clock,
{
    let (parts, body) = request.into_parts();
    let head = http::request::Parts::clone(&parts);
    let response = call(inner, Request::from_parts(parts, body)).await?;
    shared.invalidate_after(&head, response.status(), response.headers());
    Ok(response.map(|b| ResponseBody::new(TeeBody::pass(b))))
}
