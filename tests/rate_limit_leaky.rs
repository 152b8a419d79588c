//! The leaky bucket (nginx `limit_req`) through the layer, on a manual clock:
//! exact delays for nginx's own cases, bounded waiting, dry runs.

#[path = "support/service.rs"]
mod support;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::StatusCode;
use support::{from, ok_service, status};
use tower::{Service, ServiceExt};
use tower_toolbox::clock::ManualClock;
use tower_toolbox::key::Global;
use tower_toolbox::rate_limit::{Headers, LeakyBucket, RateLimitLayer};

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

/// Sends `n` requests from one new client at the same instant, in order, and
/// steps the manual clock a millisecond at a time. Returns each request's status
/// and the milliseconds after which its response was ready; also checks that the
/// delayed requests wait on timers (one pending sleep each), not by polling.
async fn nginx_case(bucket: LeakyBucket, n: usize, delayed: usize) -> Vec<(u16, u64)> {
    let clock = ManualClock::new();
    let layer = RateLimitLayer::builder()
        .quota(bucket)
        .clock(clock.clone())
        .build()
        .unwrap();
    let mut service = tower::Layer::layer(&layer, ok_service(Arc::default()));

    // `call` decides at once, so the arrival order is the order of the calls.
    let mut handles = Vec::new();
    for _ in 0..n {
        let response = service.ready().await.unwrap().call(from("192.0.2.50"));
        handles.push(tokio::spawn(async move {
            response.await.unwrap().status().as_u16()
        }));
    }
    for _ in 0..5 {
        tokio::task::yield_now().await;
    }
    assert_eq!(clock.pending_sleeps(), delayed);

    let mut done: Vec<Option<(u16, u64)>> = vec![None; n];
    for ms in 0..=8_000u64 {
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        for (i, handle) in handles.iter_mut().enumerate() {
            if done[i].is_none() && handle.is_finished() {
                done[i] = Some((handle.await.unwrap(), ms));
            }
        }
        clock.advance(Duration::from_millis(1));
    }
    done.into_iter()
        .map(|d| d.expect("every request finished"))
        .collect()
}

#[tokio::test]
async fn leaky_bucket_matches_nginx_burst_5() {
    let got = nginx_case(LeakyBucket::per_second(nz(1)).burst(5), 7, 5).await;
    assert_eq!(
        got,
        [
            (200, 0),
            (200, 1_000),
            (200, 2_000),
            (200, 3_000),
            (200, 4_000),
            (200, 5_000),
            (429, 0)
        ]
    );
}

#[tokio::test]
async fn leaky_bucket_matches_nginx_burst_5_delay_2() {
    let got = nginx_case(LeakyBucket::per_second(nz(1)).burst(5).delay(2), 7, 3).await;
    assert_eq!(
        got,
        [
            (200, 0),
            (200, 0),
            (200, 0),
            (200, 1_000),
            (200, 2_000),
            (200, 3_000),
            (429, 0)
        ]
    );
}

#[tokio::test]
async fn leaky_bucket_matches_nginx_burst_5_nodelay() {
    let got = nginx_case(LeakyBucket::per_second(nz(1)).burst(5).nodelay(), 7, 0).await;
    assert_eq!(
        got,
        [
            (200, 0),
            (200, 0),
            (200, 0),
            (200, 0),
            (200, 0),
            (200, 0),
            (429, 0)
        ]
    );
}

#[tokio::test]
async fn a_delayed_request_passes_on_the_nanosecond_not_before() {
    let clock = ManualClock::new();
    let layer = RateLimitLayer::builder()
        .quota(LeakyBucket::per_second(nz(1)).burst(5))
        .clock(clock.clone())
        .build()
        .unwrap();
    let mut service = tower::Layer::layer(&layer, ok_service(Arc::default()));
    assert_eq!(status(&mut service, from("192.0.2.51")).await, 200);
    clock.advance(Duration::from_millis(250));
    // The bucket leaked a quarter of a request: the second waits 750 ms.
    let mut second = Box::pin(service.ready().await.unwrap().call(from("192.0.2.51")));
    clock.advance(Duration::from_nanos(749_999_999));
    assert!(futures_poll_once(&mut second).await.is_none());
    clock.advance(Duration::from_nanos(1));
    let response = futures_poll_once(&mut second).await.expect("due now");
    assert_eq!(response.unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn the_leaky_bucket_refusal_says_when_a_place_frees_up() {
    let clock = ManualClock::new();
    let layer = RateLimitLayer::builder()
        .quota(LeakyBucket::per_second(nz(2)).burst(1))
        .clock(clock.clone())
        .build()
        .unwrap();
    let mut service = tower::Layer::layer(&layer, ok_service(Arc::default()));
    assert_eq!(status(&mut service, from("192.0.2.52")).await, 200);
    let _waiting = service.ready().await.unwrap().call(from("192.0.2.52"));
    clock.advance(Duration::from_millis(100));
    let refused = service
        .ready()
        .await
        .unwrap()
        .call(from("192.0.2.52"))
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    // One place frees up 400 ms from now: rounded up, 1 s.
    assert_eq!(refused.headers()["retry-after"], "1");
}

#[tokio::test]
async fn dry_run_counts_a_leaky_bucket_as_nginx_would_but_never_delays() {
    let clock = ManualClock::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = RateLimitLayer::builder()
        .quota(LeakyBucket::per_second(nz(1)).burst(2))
        .headers(Headers::IETF)
        .dry_run(true)
        .clock(clock.clone())
        .build()
        .unwrap();
    let mut service = tower::Layer::layer(&layer, ok_service(calls.clone()));
    let mut seen = Vec::new();
    for _ in 0..5 {
        let response = service
            .ready()
            .await
            .unwrap()
            .call(from("192.0.2.53"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        seen.push(response.headers()["ratelimit"].to_str().unwrap().to_owned());
    }
    assert_eq!(clock.pending_sleeps(), 0);
    assert_eq!(calls.load(Ordering::SeqCst), 5);
    // The two that nginx would delay took their places; the last two would be
    // refused and took nothing.
    assert_eq!(
        seen,
        [
            r#""default";r=2;t=1"#,
            r#""default";r=1;t=2"#,
            r#""default";r=0;t=3"#,
            r#""default";r=0;t=3"#,
            r#""default";r=0;t=3"#,
        ]
    );
}

#[tokio::test]
async fn waiting_requests_are_bounded_in_total() {
    let clock = ManualClock::new();
    let layer = RateLimitLayer::builder()
        .quota(LeakyBucket::per_second(nz(1)).burst(10))
        .key(Global)
        .max_waiting(3)
        .clock(clock.clone())
        .build()
        .unwrap();
    let service = tower::Layer::layer(&layer, ok_service(Arc::default()));
    let mut handles = Vec::new();
    for _ in 0..6 {
        let mut service = service.clone();
        handles.push(tokio::spawn(async move {
            status(&mut service, from("192.0.2.1")).await
        }));
        tokio::task::yield_now().await;
    }
    for _ in 0..5 {
        tokio::task::yield_now().await;
    }
    // The first passes at once; three wait; the rest find no waiting place.
    assert_eq!(clock.pending_sleeps(), 3);
    clock.advance(Duration::from_secs(10));
    let mut statuses = Vec::new();
    for handle in handles {
        statuses.push(handle.await.unwrap());
    }
    statuses.sort();
    assert_eq!(statuses, [200, 200, 200, 200, 429, 429]);
}

#[tokio::test]
async fn a_dropped_waiting_request_frees_its_place() {
    let clock = ManualClock::new();
    let layer = RateLimitLayer::builder()
        .quota(LeakyBucket::per_second(nz(1)).burst(5))
        .key(Global)
        .max_waiting(1)
        .clock(clock.clone())
        .build()
        .unwrap();
    let mut service = tower::Layer::layer(&layer, ok_service(Arc::default()));
    assert_eq!(status(&mut service, from("192.0.2.1")).await, 200);
    let waiting = service.ready().await.unwrap().call(from("192.0.2.1"));
    drop(waiting);
    // The place is free again: the next request may wait (and is not refused).
    let mut next = Box::pin(service.ready().await.unwrap().call(from("192.0.2.1")));
    assert!(futures_poll_once(&mut next).await.is_none());
    clock.advance(Duration::from_secs(5));
    assert_eq!(next.await.unwrap().status(), StatusCode::OK);
}

async fn futures_poll_once<F: std::future::Future + Unpin>(future: &mut F) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match std::pin::Pin::new(&mut *future).poll(cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        })
    })
    .await
}
