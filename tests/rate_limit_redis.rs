//! The rate limit layer on a real redis-server: shared quotas, faults, recovery.
#![cfg(all(feature = "redis", feature = "rate-limit"))]

#[path = "support/redis.rs"]
mod redis_server;
#[path = "support/service.rs"]
mod support;

use std::convert::Infallible;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use redis_server::RedisServer;
use support::{Body, from, grpc_from, ok_service, status};
use tower::{Layer, Service, ServiceExt};
use tower_toolbox::rate_limit::{Headers, LeakyBucket, Quota, RateLimitLayer};
use tower_toolbox::store::{FailureMode, RedisStore};

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

/// The store timeout of these tests.
const TIMEOUT: Duration = Duration::from_millis(200);

/// How long past the timeout a decision may take: scheduling on a loaded machine.
const SLACK: Duration = Duration::from_millis(300);

fn store(server: &RedisServer, prefix: &str) -> RedisStore {
    store_at(&server.url(), prefix)
}

fn store_at(url: &str, prefix: &str) -> RedisStore {
    RedisStore::open(url)
        .unwrap()
        .with_prefix(prefix)
        .with_timeout(TIMEOUT)
}

#[tokio::test]
async fn two_layers_on_one_server_share_one_quota_exactly() {
    let server = RedisServer::start();
    let layer = |store| {
        RateLimitLayer::builder()
            .quota(Quota::per_hour(nz(10)))
            .redis(store)
            .build()
            .unwrap()
    };
    let calls = Arc::new(AtomicUsize::new(0));
    let mut a = layer(store(&server, "shared")).layer(ok_service(calls.clone()));
    let mut b = layer(store(&server, "shared")).layer(ok_service(calls.clone()));

    let mut admitted = 0;
    for i in 0..30 {
        let service_status = if i % 2 == 0 {
            status(&mut a, from("192.0.2.1")).await
        } else {
            status(&mut b, from("192.0.2.1")).await
        };
        if service_status == 200 {
            admitted += 1;
        } else {
            assert_eq!(service_status, 429);
        }
    }
    assert_eq!(admitted, 10);
    assert_eq!(calls.load(Ordering::SeqCst), 10);

    // A different prefix is a different fleet.
    let mut other = layer(store(&server, "other")).layer(ok_service(calls.clone()));
    assert_eq!(status(&mut other, from("192.0.2.1")).await, 200);
}

#[tokio::test]
async fn concurrent_requests_through_two_layers_admit_exactly_the_quota() {
    let server = RedisServer::start();
    let build = || {
        RateLimitLayer::builder()
            .quota(Quota::per_hour(nz(50)))
            .redis(store(&server, "race"))
            .build()
            .unwrap()
    };
    let admitted = Arc::new(AtomicUsize::new(0));
    let layers = [build(), build()];
    let mut tasks = Vec::new();
    for t in 0..16 {
        let mut service = layers[t % 2].clone().layer(ok_service(Arc::default()));
        let admitted = admitted.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..10 {
                if status(&mut service, from("192.0.2.7")).await == 200 {
                    admitted.fetch_add(1, Ordering::SeqCst);
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(admitted.load(Ordering::SeqCst), 50);
}

#[tokio::test]
async fn state_lives_under_a_hash_tagged_key_that_expires() {
    let server = RedisServer::start();
    let layer = RateLimitLayer::builder()
        .quota(Quota::per_minute(nz(6)))
        .headers(Headers::IETF)
        .redis(store(&server, "tags"))
        .build()
        .unwrap();
    let mut service = layer.layer(ok_service(Arc::default()));
    let response = service
        .ready()
        .await
        .unwrap()
        .call(from("192.0.2.1"))
        .await
        .unwrap();
    assert_eq!(response.headers()["ratelimit"], r#""default";r=5;t=10"#);

    let client = redis::Client::open(server.url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("tags:rl:*")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1);
    let key = &keys[0];
    assert!(key.starts_with("tags:rl:{") && key.ends_with('}'), "{key}");
    let ttl: i64 = redis::cmd("PTTL")
        .arg(key)
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!((9_000..=10_001).contains(&ttl), "ttl {ttl}");
}

#[tokio::test]
async fn redis_down_fails_open_within_the_timeout_and_recovers() {
    let mut server = RedisServer::start();
    let layer = RateLimitLayer::builder()
        .quota(Quota::per_hour(nz(1)))
        .redis(store(&server, "open").with_failure_mode(FailureMode::Open))
        .build()
        .unwrap();
    let mut service = layer.layer(ok_service(Arc::default()));
    assert_eq!(status(&mut service, from("192.0.2.1")).await, 200);

    server.stop();
    for _ in 0..3 {
        let started = Instant::now();
        assert_eq!(status(&mut service, from("192.0.2.2")).await, 200);
        assert!(
            started.elapsed() < TIMEOUT + SLACK,
            "{:?}",
            started.elapsed()
        );
    }

    // The restarted server is empty: the first client gets its quota again.
    server.restart();
    wait_until_enforced(&mut service, "192.0.2.3").await;
}

#[tokio::test]
async fn redis_down_fails_closed_with_503_and_recovers() {
    let mut server = RedisServer::start();
    let layer = RateLimitLayer::builder()
        .quota(Quota::per_hour(nz(1)))
        .redis(store(&server, "closed").with_failure_mode(FailureMode::Closed))
        .build()
        .unwrap();
    let mut service = layer.layer(ok_service(Arc::default()));
    assert_eq!(status(&mut service, from("192.0.2.1")).await, 200);

    server.stop();
    let started = Instant::now();
    let response = service
        .ready()
        .await
        .unwrap()
        .call(from("192.0.2.2"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    assert!(
        started.elapsed() < TIMEOUT + SLACK,
        "{:?}",
        started.elapsed()
    );
    // Every request while it is down gets the same answer, none of them late.
    for _ in 0..3 {
        let started = Instant::now();
        assert_eq!(status(&mut service, from("192.0.2.3")).await, 503);
        assert!(started.elapsed() < TIMEOUT + SLACK);
    }

    server.restart();
    wait_until_enforced(&mut service, "192.0.2.4").await;
}

/// After a restart the connection comes back within a few attempts: polls until a
/// fresh client's second request is refused, which needs Redis to answer twice.
async fn wait_until_enforced<S, B>(service: &mut S, client: &str)
where
    S: Service<Request<Body>, Response = Response<B>, Error = Infallible>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let first = status(service, from(client)).await;
        let second = status(service, from(client)).await;
        if first == 200 && second == 429 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "redis never recovered ({first}, {second})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A server that accepts connections and never answers: Redis hung, not gone.
async fn silent_server() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("redis://{}/", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (url, task)
}

/// One request through `service`, and how long its answer took.
async fn timed<S>(service: &mut S, request: Request<Body>) -> (S::Response, Duration)
where
    S: Service<Request<Body>>,
    S::Error: std::fmt::Debug,
{
    let started = Instant::now();
    let response = service.ready().await.unwrap().call(request).await.unwrap();
    (response, started.elapsed())
}

#[tokio::test]
async fn a_hung_redis_fails_open_at_the_timeout_not_later() {
    let (url, task) = silent_server().await;
    let layer = RateLimitLayer::builder()
        .quota(Quota::per_hour(nz(1)))
        .headers(Headers::IETF)
        .redis(store_at(&url, "hung").with_failure_mode(FailureMode::Open))
        .build()
        .unwrap();
    let mut service = layer.layer(ok_service(Arc::default()));
    for _ in 0..2 {
        let (response, elapsed) = timed(&mut service, from("192.0.2.1")).await;
        assert_eq!(response.status(), StatusCode::OK);
        // The state is unknown, so no RateLimit header claims anything.
        assert!(response.headers().get("ratelimit").is_none());
        assert!(elapsed >= TIMEOUT, "{elapsed:?}");
        assert!(elapsed < TIMEOUT + SLACK, "{elapsed:?}");
    }
    task.abort();
}

#[tokio::test]
async fn a_hung_redis_fails_closed_at_the_timeout_not_later() {
    let (url, task) = silent_server().await;
    let layer = RateLimitLayer::builder()
        .quota(Quota::per_hour(nz(1)))
        .redis(store_at(&url, "hung").with_failure_mode(FailureMode::Closed))
        .build()
        .unwrap();
    let mut service = layer.layer(ok_service(Arc::default()));
    let (response, elapsed) = timed(&mut service, from("192.0.2.1")).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(elapsed >= TIMEOUT, "{elapsed:?}");
    assert!(elapsed < TIMEOUT + SLACK, "{elapsed:?}");

    let (response, elapsed) = timed(&mut service, grpc_from("192.0.2.1")).await;
    assert_eq!(response.headers()["grpc-status"], "14");
    assert!(elapsed < TIMEOUT + SLACK, "{elapsed:?}");
    task.abort();
}

#[tokio::test]
async fn a_known_refusal_is_answered_without_redis() {
    let mut server = RedisServer::start();
    let layer = RateLimitLayer::builder()
        .quota(Quota::per_hour(nz(1)))
        .headers(Headers::IETF)
        .redis(store(&server, "cache").with_failure_mode(FailureMode::Open))
        .build()
        .unwrap();
    let mut service = layer.layer(ok_service(Arc::default()));
    assert_eq!(status(&mut service, from("192.0.2.1")).await, 200);
    let refused = service
        .ready()
        .await
        .unwrap()
        .call(from("192.0.2.1"))
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers()["retry-after"], "3600");
    assert_eq!(refused.headers()["ratelimit"], r#""default";r=0;t=3600"#);

    // With Redis gone a store call would fail open and let it through; the
    // local cache refuses it, so no call was made.
    server.stop();
    let refused = service
        .ready()
        .await
        .unwrap()
        .call(from("192.0.2.1"))
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((3599..=3600).contains(&retry));
    // The headers still describe the bucket, brought forward to now.
    let ratelimit = refused.headers()["ratelimit"].to_str().unwrap();
    assert!(
        ratelimit == r#""default";r=0;t=3600"# || ratelimit == r#""default";r=0;t=3599"#,
        "{ratelimit}"
    );
}

#[tokio::test]
async fn leaky_bucket_on_redis_delays_by_the_servers_arithmetic() {
    let server = RedisServer::start();
    let layer = RateLimitLayer::builder()
        .quota(LeakyBucket::per_second(nz(4)).burst(2))
        .redis(store(&server, "leaky"))
        .build()
        .unwrap();
    let service = layer.layer(ok_service(Arc::default()));
    let started = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..4 {
        let mut service = service.clone();
        handles.push(tokio::spawn(async move {
            let status = status(&mut service, from("192.0.2.1")).await;
            (status, started.elapsed())
        }));
        // Keep the arrival order so the waits are 0, 250 and 500 ms.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut results = Vec::new();
    for handle in handles {
        results.push(handle.await.unwrap());
    }
    let statuses: Vec<u16> = results.iter().map(|r| r.0).collect();
    assert_eq!(statuses, [200, 200, 200, 429]);
    // A sleep never ends early: lower bounds are exact, whatever the load.
    assert!(
        results[1].1 >= Duration::from_millis(230),
        "{:?}",
        results[1].1
    );
    assert!(
        results[2].1 >= Duration::from_millis(480),
        "{:?}",
        results[2].1
    );
}
