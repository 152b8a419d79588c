//! The concurrency limit as a tower layer: admission, queueing, release,
//! refusals and adaptive limits. Keys and partitions are in
//! `concurrency_keys.rs`.

#![cfg(feature = "concurrency")]

#[path = "support/concurrency.rs"]
mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::sync::Semaphore;
use tower::{Layer, Service, ServiceExt};
use tower_toolbox::clock::TokioClock;
use tower_toolbox::concurrency::{Aimd, ConcurrencyLimitLayer, LimitHandle};
use tower_toolbox::key::{HeaderKey, MissingKey};

use support::{Held, get, nz, settle, streaming, tenant};

/// Watches the limiter's own in-flight count from another task until `stop` is
/// set; returns the most it ever saw.
fn watch_in_flight(
    handle: LimitHandle,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut most = 0;
        while !stop.load(Ordering::SeqCst) {
            most = most.max(handle.in_flight());
            tokio::task::yield_now().await;
        }
        most
    })
}

#[tokio::test]
async fn refuses_the_request_past_the_limit_with_503_problem_json_and_retry_after() {
    let held = Held::new();
    let layer = ConcurrencyLimitLayer::new(nz(2));
    let handle = layer.handle();
    let service = layer.layer(held.service());

    let first = tokio::spawn(service.clone().oneshot(get("/a")));
    let second = tokio::spawn(service.clone().oneshot(get("/b")));
    settle().await;
    assert_eq!(handle.in_flight(), 2);

    let refused = service.clone().oneshot(get("/c")).await.unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json"
    );
    assert_eq!(refused.headers()["retry-after"], "1");
    let body = refused.into_body().collect().await.unwrap().to_bytes();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["status"], 503);
    assert_eq!(body["title"], "Service overloaded");
    assert_eq!(body["detail"], "the service is at its concurrency limit");

    held.release.add_permits(2);
    for task in [first, second] {
        let response = task.await.unwrap().unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.into_body().collect().await.unwrap().to_bytes(),
            "done"
        );
    }
    assert_eq!(handle.in_flight(), 0);
    assert_eq!(held.served.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn refuses_grpc_requests_with_unavailable_and_pushback() {
    let held = Held::new();
    let service = ConcurrencyLimitLayer::new(nz(1))
        .retry_after(Some(Duration::from_millis(250)))
        .layer(held.service());
    let _busy = tokio::spawn(service.clone().oneshot(get("/")));
    settle().await;

    let grpc = Request::post("/shop.Orders/List")
        .header("content-type", "application/grpc")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let refused = service.oneshot(grpc).await.unwrap();
    assert_eq!(refused.status(), StatusCode::OK);
    assert_eq!(refused.headers()["grpc-status"], "14");
    assert_eq!(refused.headers()["grpc-retry-pushback-ms"], "250");
    held.release.add_permits(1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_flight_never_exceeds_the_limit_with_64_tasks_waiting_in_line() {
    const TASKS: usize = 64;
    const EACH: usize = 25;
    let held = Held::new();
    let layer = ConcurrencyLimitLayer::new(nz(8)).queue(nz(TASKS), Duration::from_secs(60));
    let handle = layer.handle();
    let service = layer.layer(held.service());

    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let service = service.clone();
            tokio::spawn(async move {
                let mut ok = 0;
                for _ in 0..EACH {
                    let response = service.clone().oneshot(get("/")).await.unwrap();
                    if response.status() == StatusCode::OK {
                        ok += 1;
                    }
                }
                ok
            })
        })
        .collect();

    // Nothing is released yet: exactly 8 run and the other 56 wait.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while held.running.load(Ordering::SeqCst) < 8 || handle.queued() < TASKS - 8 {
        assert!(
            std::time::Instant::now() < deadline,
            "the limiter never filled"
        );
        tokio::task::yield_now().await;
    }
    assert_eq!(held.running.load(Ordering::SeqCst), 8);
    assert_eq!(handle.in_flight(), 8);
    assert_eq!(handle.queued(), TASKS - 8);

    // Let calls finish one at a time while the tasks hammer the limiter.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = watch_in_flight(handle.clone(), stop.clone());
    let release = held.release.clone();
    let releaser = tokio::spawn(async move {
        for _ in 0..TASKS * EACH {
            release.add_permits(1);
            tokio::task::yield_now().await;
        }
    });
    let mut ok = 0;
    for task in tasks {
        ok += task.await.unwrap();
    }
    releaser.await.unwrap();
    stop.store(true, Ordering::SeqCst);
    assert!(watcher.await.unwrap() <= 8);
    assert_eq!(ok, TASKS * EACH);
    assert_eq!(held.served.load(Ordering::SeqCst), TASKS * EACH);
    assert_eq!(held.peak.load(Ordering::SeqCst), 8);
    assert_eq!(handle.in_flight(), 0);
    assert_eq!(handle.queued(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_flight_never_exceeds_the_limit_with_64_tasks_refused_at_once() {
    const TASKS: usize = 64;
    const EACH: usize = 50;
    let held = Held::new();
    held.release.add_permits(TASKS * EACH);
    let layer = ConcurrencyLimitLayer::new(nz(5));
    let handle = layer.handle();
    let service = layer.layer(held.service());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = watch_in_flight(handle.clone(), stop.clone());

    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let service = service.clone();
            tokio::spawn(async move {
                let (mut ok, mut refused) = (0, 0);
                for _ in 0..EACH {
                    match service.clone().oneshot(get("/")).await.unwrap().status() {
                        StatusCode::OK => ok += 1,
                        StatusCode::SERVICE_UNAVAILABLE => refused += 1,
                        other => panic!("unexpected {other}"),
                    }
                }
                (ok, refused)
            })
        })
        .collect();
    let (mut ok, mut refused) = (0, 0);
    for task in tasks {
        let (o, r) = task.await.unwrap();
        ok += o;
        refused += r;
    }
    stop.store(true, Ordering::SeqCst);
    assert!(watcher.await.unwrap() <= 5);
    assert_eq!(ok + refused, TASKS * EACH);
    assert_eq!(held.served.load(Ordering::SeqCst), ok);
    assert!(held.peak.load(Ordering::SeqCst) <= 5);
    assert!(ok >= 5, "at least the first five calls get in");
    assert_eq!(handle.in_flight(), 0);
}

#[tokio::test]
async fn dropping_a_called_future_releases_its_permit() {
    let held = Held::new();
    let layer = ConcurrencyLimitLayer::new(nz(1));
    let handle = layer.handle();
    let mut service = layer.layer(held.service());

    let future = service.ready().await.unwrap().call(get("/"));
    assert_eq!(handle.in_flight(), 1);
    drop(future);
    assert_eq!(handle.in_flight(), 0);

    held.release.add_permits(1);
    let response = service.oneshot(get("/")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn dropping_a_queued_future_leaves_the_line_and_a_granted_one_passes_its_permit_on() {
    let held = Held::new();
    let layer = ConcurrencyLimitLayer::new(nz(1)).queue(nz(4), Duration::from_secs(60));
    let handle = layer.handle();
    let service = layer.layer(held.service());

    let running = tokio::spawn(service.clone().oneshot(get("/1")));
    settle().await;
    let mut waiting = Box::pin(service.clone().oneshot(get("/2")));
    assert!(futures_poll(&mut waiting).await.is_none());
    let third = tokio::spawn(service.clone().oneshot(get("/3")));
    settle().await;
    assert_eq!(handle.queued(), 2);

    // `/2` is granted the permit when `/1` ends, but is dropped before it runs:
    // the permit must go on to `/3`.
    held.release.add_permits(1);
    running.await.unwrap().unwrap();
    drop(waiting);
    settle().await;
    assert_eq!(handle.queued(), 0);
    assert_eq!(handle.in_flight(), 1);

    held.release.add_permits(1);
    let response = third.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // The permit lives in the body until it is read or dropped.
    assert_eq!(handle.in_flight(), 1);
    drop(response);
    assert_eq!(handle.in_flight(), 0);
    assert_eq!(held.served.load(Ordering::SeqCst), 2);

    // A waiter dropped while still in line simply leaves it.
    let running = tokio::spawn(service.clone().oneshot(get("/4")));
    settle().await;
    let mut waiting = Box::pin(service.clone().oneshot(get("/5")));
    assert!(futures_poll(&mut waiting).await.is_none());
    assert_eq!(handle.queued(), 1);
    drop(waiting);
    assert_eq!(handle.queued(), 0);
    held.release.add_permits(1);
    drop(running.await.unwrap().unwrap());
    assert_eq!(handle.in_flight(), 0);
}

/// Polls `future` once.
async fn futures_poll<F: std::future::Future + Unpin>(future: &mut F) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match std::pin::Pin::new(&mut *future).poll(cx) {
            std::task::Poll::Ready(output) => Some(output),
            std::task::Poll::Pending => None,
        })
    })
    .await
}

#[tokio::test]
async fn the_permit_is_held_until_the_response_body_ends() {
    let (sender, inner) = streaming();
    let layer = ConcurrencyLimitLayer::new(nz(1));
    let handle = layer.handle();
    let response = layer.layer(inner).oneshot(get("/")).await.unwrap();
    assert_eq!(handle.in_flight(), 1);

    let mut body = response.into_body();
    sender.send(Bytes::from_static(b"part")).await.unwrap();
    let frame = body.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "part");
    assert_eq!(handle.in_flight(), 1);

    drop(sender);
    assert!(body.frame().await.is_none());
    assert_eq!(handle.in_flight(), 0);
}

#[tokio::test]
async fn dropping_the_response_body_releases_the_permit() {
    let (_sender, inner) = streaming();
    let layer = ConcurrencyLimitLayer::new(nz(1));
    let handle = layer.handle();
    let response = layer.layer(inner).oneshot(get("/")).await.unwrap();
    assert_eq!(handle.in_flight(), 1);
    drop(response);
    assert_eq!(handle.in_flight(), 0);
}

#[tokio::test]
async fn a_response_outliving_its_layer_releases_and_later_layers_count_from_zero() {
    let (sender, inner) = streaming();
    let layer = ConcurrencyLimitLayer::new(nz(1));
    let response = layer.layer(inner).oneshot(get("/")).await.unwrap();
    // The layer, its service and its gate are gone; the body still holds the
    // permit, and releases it when it ends.
    drop(layer);
    let mut body = response.into_body();
    sender.send(Bytes::from_static(b"late")).await.unwrap();
    assert_eq!(
        body.frame().await.unwrap().unwrap().into_data().unwrap(),
        "late"
    );
    drop(sender);
    assert!(body.frame().await.is_none());
    drop(body);

    // New gates (which may reuse the old one's counts) start empty.
    for _ in 0..3 {
        let held = Held::new();
        let layer = ConcurrencyLimitLayer::new(nz(1))
            .per_key(HeaderKey::new(HeaderName::from_static("x-tenant")))
            .on_missing_key(MissingKey::Allow);
        let service = layer.layer(held.service());
        let first = tokio::spawn(service.clone().oneshot(tenant("a")));
        settle().await;
        assert_eq!(held.running.load(Ordering::SeqCst), 1);
        let refused = service.clone().oneshot(tenant("a")).await.unwrap();
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        held.release.add_permits(1);
        assert_eq!(first.await.unwrap().unwrap().status(), StatusCode::OK);
    }
}

#[tokio::test(start_paused = true)]
async fn a_queued_request_times_out_exactly_at_its_deadline_on_the_paused_clock() {
    let held = Held::new();
    let layer = ConcurrencyLimitLayer::new(nz(1))
        .queue(nz(4), Duration::from_millis(50))
        .clock(TokioClock::new());
    let handle = layer.handle();
    let service = layer.layer(held.service());

    let _running = tokio::spawn(service.clone().oneshot(get("/slow")));
    settle().await;
    let waiting = tokio::spawn(service.clone().oneshot(get("/waits")));
    settle().await;
    assert_eq!(handle.queued(), 1);

    tokio::time::advance(Duration::from_millis(49)).await;
    settle().await;
    assert!(!waiting.is_finished());
    assert_eq!(handle.queued(), 1);

    tokio::time::advance(Duration::from_millis(1)).await;
    let response = waiting.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "1");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        body["detail"],
        "the request waited too long for the service to have capacity"
    );
    assert_eq!(handle.queued(), 0);
    assert_eq!(held.served.load(Ordering::SeqCst), 0);
    held.release.add_permits(1);
}

#[tokio::test]
async fn waiters_are_served_first_in_first_out_and_a_full_line_refuses() {
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let release = Arc::new(Semaphore::new(0));
    let inner = {
        let (order, release) = (order.clone(), release.clone());
        tower::service_fn(move |request: Request<Full<Bytes>>| {
            let (order, release) = (order.clone(), release.clone());
            async move {
                order.lock().unwrap().push(request.uri().path().to_owned());
                release.acquire().await.unwrap().forget();
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
            }
        })
    };
    let service = ConcurrencyLimitLayer::new(nz(1))
        .queue(nz(2), Duration::from_secs(60))
        .layer(inner);

    let tasks: Vec<_> = ["/1", "/2", "/3"]
        .into_iter()
        .map(|path| tokio::spawn(service.clone().oneshot(get(path))))
        .collect();
    settle().await;
    let refused = service.clone().oneshot(get("/4")).await.unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = refused.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("its queue is full"));

    release.add_permits(3);
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap().status(), StatusCode::OK);
    }
    assert_eq!(*order.lock().unwrap(), ["/1", "/2", "/3"]);
}

/// A service that answers after `delay` with `status`, or fails.
fn answering(
    status: StatusCode,
    fail: bool,
) -> impl Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = &'static str> + Clone
{
    tower::service_fn(move |_request: Request<Full<Bytes>>| async move {
        if fail {
            return Err("backend down");
        }
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = status;
        Ok(response)
    })
}

fn aimd_layer() -> (ConcurrencyLimitLayer<Aimd>, LimitHandle) {
    let layer = ConcurrencyLimitLayer::adaptive(Aimd::new().initial(nz(20)).bounds(nz(1), nz(100)));
    let handle = layer.handle();
    (layer, handle)
}

#[tokio::test]
async fn inner_errors_pass_through_unchanged_and_count_as_drops() {
    let (layer, handle) = aimd_layer();
    let error = layer
        .layer(answering(StatusCode::OK, true))
        .oneshot(get("/"))
        .await
        .unwrap_err();
    assert_eq!(error, "backend down");
    assert_eq!(handle.limit(), 18); // floor(20 x 0.9)
    assert_eq!(handle.in_flight(), 0);
}

#[tokio::test]
async fn a_503_from_the_service_counts_as_a_drop_and_a_404_does_not() {
    let (layer, handle) = aimd_layer();
    let service = layer.layer(answering(StatusCode::SERVICE_UNAVAILABLE, false));
    let response = service.oneshot(get("/")).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(handle.limit(), 18);

    let (layer, handle) = aimd_layer();
    let service = layer.layer(answering(StatusCode::NOT_FOUND, false));
    service.oneshot(get("/")).await.unwrap();
    // One in flight of 20 is not busy: no change either way.
    assert_eq!(handle.limit(), 20);
}

#[tokio::test]
async fn cancelled_requests_leave_an_adaptive_limit_unchanged() {
    let (layer, handle) = aimd_layer();
    let held = Held::new();
    let mut service = layer.layer(held.service());
    for _ in 0..30 {
        let future = service.ready().await.unwrap().call(get("/"));
        drop(future);
    }
    assert_eq!(handle.limit(), 20);
    assert_eq!(handle.in_flight(), 0);
}

#[tokio::test]
async fn a_custom_responder_words_the_refusal() {
    let held = Held::new();
    let responder = tower_toolbox::reject::Responder::from_fn(|rejection, request| {
        let mut response = Response::new(Bytes::from(format!(
            "{} for {}",
            rejection.status(),
            request.uri.path()
        )));
        *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        response
    });
    let service = ConcurrencyLimitLayer::new(nz(1))
        .responder(responder)
        .layer(held.service());
    let _busy = tokio::spawn(service.clone().oneshot(get("/busy")));
    settle().await;
    let refused = service.oneshot(get("/orders")).await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let body = refused.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "503 Service Unavailable for /orders");
    held.release.add_permits(1);
}
