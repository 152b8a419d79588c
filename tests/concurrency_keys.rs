//! Per-key concurrency limits and partitions: each key's own limit, requests
//! without a key, sweeping idle keys, and shares of one limit.

#![cfg(feature = "concurrency")]

#[path = "support/concurrency.rs"]
mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{HeaderName, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceExt};
use tower_toolbox::concurrency::ConcurrencyLimitLayer;
use tower_toolbox::key::{HeaderKey, MissingKey};

use support::{Held, get, nz, settle, streaming, tenant};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_key_limits_hold_while_idle_gates_are_swept_and_their_counts_reused() {
    const TASKS: usize = 16;
    const EACH: usize = 400;
    const KEYS: u64 = 3_000;
    const LIMIT: usize = 2;
    // The most calls of one key the service saw running at once.
    let running = Arc::new(std::sync::Mutex::new(std::collections::HashMap::<
        String,
        usize,
    >::new()));
    let peak = Arc::new(AtomicUsize::new(0));
    let service = {
        let (running, peak) = (running.clone(), peak.clone());
        ConcurrencyLimitLayer::new(nz(LIMIT))
            .per_key(HeaderKey::new(HeaderName::from_static("x-tenant")))
            .layer(tower::service_fn(move |request: Request<Full<Bytes>>| {
                let key = request.headers()["x-tenant"].to_str().unwrap().to_owned();
                let (running, peak) = (running.clone(), peak.clone());
                async move {
                    let now = {
                        let mut running = running.lock().unwrap();
                        let count = running.entry(key.clone()).or_default();
                        *count += 1;
                        *count
                    };
                    peak.fetch_max(now, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    *running.lock().unwrap().get_mut(&key).unwrap() -= 1;
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
                }
            }))
    };
    let keyed = |key: u64| tenant(&format!("k{key}"));

    // Sixteen tasks over 3,000 keys, a few hot ones among them: gates are
    // created, swept once idle (past 1,024 keys) and their counts reused,
    // while other requests of the same keys are in flight on other threads.
    let tasks: Vec<_> = (0..TASKS as u64)
        .map(|task| {
            let service = service.clone();
            tokio::spawn(async move {
                let (mut ok, mut refused) = (0, 0);
                let mut seed = task.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                for _ in 0..EACH {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let key = if seed % 4 == 0 { seed % 4 } else { seed % KEYS };
                    let response = service.clone().oneshot(keyed(key)).await.unwrap();
                    match response.status() {
                        StatusCode::OK => ok += 1,
                        StatusCode::SERVICE_UNAVAILABLE => refused += 1,
                        other => panic!("unexpected {other}"),
                    }
                    // The body, and with it the permit, ends here.
                    drop(response);
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
    assert_eq!(ok + refused, TASKS * EACH);
    assert!(
        peak.load(Ordering::SeqCst) <= LIMIT,
        "a key ran past its limit"
    );
    assert!(
        ok > TASKS * EACH / 2,
        "only {ok} of {} admitted",
        TASKS * EACH
    );

    // Nothing is left counted: every key admits up to its limit again.
    for key in [0, 1, 2, 3, 17, KEYS - 1] {
        let held: Vec<_> = (0..LIMIT)
            .map(|_| service.clone().call(keyed(key)))
            .collect();
        let mut responses = Vec::new();
        for call in held {
            responses.push(call.await.unwrap());
        }
        for response in &responses {
            assert_eq!(response.status(), StatusCode::OK, "key k{key}");
        }
        let refused = service.clone().oneshot(keyed(key)).await.unwrap();
        assert_eq!(
            refused.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "key k{key}"
        );
    }
}

#[tokio::test]
async fn a_key_with_a_request_in_flight_keeps_its_limit_while_idle_keys_are_swept() {
    let (_sender, inner) = streaming();
    let streaming_once = Arc::new(std::sync::Mutex::new(Some(inner)));
    // Key "busy" goes to the streaming service, every other key to one that
    // answers at once.
    let service = ConcurrencyLimitLayer::new(nz(1))
        .per_key(HeaderKey::new(HeaderName::from_static("x-tenant")))
        .layer(tower::service_fn(move |request: Request<Full<Bytes>>| {
            let busy = request.headers()["x-tenant"] == "busy";
            let streaming = busy
                .then(|| streaming_once.lock().unwrap().take())
                .flatten();
            async move {
                match streaming {
                    Some(mut streaming) => {
                        let response = streaming.call(request).await?;
                        Ok::<_, Infallible>(response.map(http_body_util::Either::Left))
                    }
                    None => Ok(Response::new(http_body_util::Either::Right(Full::new(
                        Bytes::new(),
                    )))),
                }
            }
        }));

    // Only the response body holds "busy"'s permit: its gate is referenced by
    // nothing else once the call has returned.
    let held_body = service.clone().oneshot(tenant("busy")).await.unwrap();
    assert_eq!(held_body.status(), StatusCode::OK);
    // Enough new keys to sweep the idle ones several times over.
    for key in 0..5_000 {
        let response = service
            .clone()
            .oneshot(tenant(&key.to_string()))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    let refused = service.clone().oneshot(tenant("busy")).await.unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);

    drop(held_body);
    let admitted = service.clone().oneshot(tenant("busy")).await.unwrap();
    assert_eq!(admitted.status(), StatusCode::OK);
}

#[tokio::test]
async fn each_key_has_its_own_limit_and_a_request_without_a_key_gets_400() {
    let held = Held::new();
    let service = ConcurrencyLimitLayer::new(nz(1))
        .per_key(HeaderKey::new(HeaderName::from_static("x-tenant")))
        .layer(held.service());

    let _a = tokio::spawn(service.clone().oneshot(tenant("a")));
    let _b = tokio::spawn(service.clone().oneshot(tenant("b")));
    settle().await;
    assert_eq!(held.running.load(Ordering::SeqCst), 2);
    let refused = service.clone().oneshot(tenant("a")).await.unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);

    let missing = service.clone().oneshot(get("/")).await.unwrap();
    assert_eq!(missing.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        missing.headers()["content-type"],
        "application/problem+json"
    );
    let body = missing.into_body().collect().await.unwrap().to_bytes();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["detail"], "the request has no `x-tenant` header");
    held.release.add_permits(2);
}

#[tokio::test]
async fn a_request_without_a_key_passes_unchecked_when_allowed() {
    let held = Held::new();
    held.release.add_permits(1);
    let service = ConcurrencyLimitLayer::new(nz(1))
        .per_key(HeaderKey::new(HeaderName::from_static("x-tenant")))
        .on_missing_key(MissingKey::Allow)
        .layer(held.service());
    let response = service.oneshot(get("/")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_partition_keeps_its_share_and_borrows_idle_share() {
    let held = Held::new();
    // 10 in total: interactive 70 % (7), batch 30 % (3).
    let layer = ConcurrencyLimitLayer::new(nz(10)).partitions([0.7, 0.3], |head| {
        usize::from(head.uri.path().starts_with("/batch"))
    });
    let handle = layer.handle();
    let service = layer.layer(held.service());
    let send = |path: &'static str| tokio::spawn(service.clone().oneshot(get(path)));

    // Batch borrows the idle interactive share up to the whole limit.
    let mut running: Vec<_> = (0..10).map(|_| send("/batch")).collect();
    settle().await;
    assert_eq!(handle.in_flight(), 10);
    let refused = service.clone().oneshot(get("/batch")).await.unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);

    // Interactive is still below its share of 7, so it gets in.
    running.extend((0..7).map(|_| send("/page")));
    settle().await;
    assert_eq!(handle.in_flight(), 17);
    let refused = service.clone().oneshot(get("/page")).await.unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);

    held.release.add_permits(17);
    for task in running {
        assert_eq!(task.await.unwrap().unwrap().status(), StatusCode::OK);
    }
    assert_eq!(handle.in_flight(), 0);
}

#[test]
#[should_panic(expected = "at most 255 partitions")]
fn more_than_255_partitions_are_refused_when_building() {
    let _ = ConcurrencyLimitLayer::new(nz(10)).partitions(vec![0.001; 256], |_| 0);
}

#[test]
#[should_panic(expected = "partition shares must add up to at most 1")]
fn shares_over_one_are_refused_when_building() {
    let _ = ConcurrencyLimitLayer::new(nz(10)).partitions([0.7, 0.4], |_| 0);
}
