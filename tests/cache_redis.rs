//! The Redis tier against a real `redis-server`: shared by two layers, and a
//! miss (never an error) when Redis is down or silent.

#![cfg(feature = "redis")]

#[path = "support/redis.rs"]
mod redis_server;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use redis_server::RedisServer;
use tower::ServiceExt;
use tower_toolbox::cache::CacheLayer;
use tower_toolbox::store::RedisStore;

type Origin = tower::util::BoxCloneSyncService<Request<()>, Response<Full<Bytes>>, Infallible>;

fn origin(name: &'static str, calls: Arc<AtomicUsize>) -> Origin {
    Origin::new(tower::service_fn(move |_: Request<()>| {
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            Ok::<_, Infallible>(
                Response::builder()
                    .header("cache-control", "max-age=60")
                    .header("vary", "accept-language")
                    .header("etag", "\"r1\"")
                    .body(Full::new(Bytes::from(format!("{name}{n}"))))
                    .unwrap(),
            )
        }
    }))
}

fn get(language: &str) -> Request<()> {
    Request::get("http://shared.test/doc")
        .header("accept-language", language)
        .body(())
        .unwrap()
}

async fn send(
    service: &tower_toolbox::cache::Cache<Origin>,
    request: Request<()>,
) -> (String, Option<String>) {
    let response = service.clone().oneshot(request).await.unwrap();
    let age = response
        .headers()
        .get("age")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (String::from_utf8(body.to_vec()).unwrap(), age)
}

/// Waits (up to 5 s) until exactly `count` keys match `pattern` in Redis: writes
/// and deletes run in the background.
async fn until_keys(url: &str, pattern: &str, count: usize) -> Vec<String> {
    let client = redis::Client::open(url).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(pattern)
            .query_async(&mut connection)
            .await
            .unwrap();
        if keys.len() == count {
            return keys;
        }
        assert!(
            Instant::now() < deadline,
            "{pattern}: {keys:?}, expected {count} keys"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn two_layers_share_responses_through_redis() {
    let server = RedisServer::start();
    let store = RedisStore::open(&server.url())
        .unwrap()
        .with_prefix("cache-test");
    let (calls_a, calls_b) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let a = tower::Layer::layer(
        &CacheLayer::new().redis(store.clone()),
        origin("a", calls_a.clone()),
    );
    let b = tower::Layer::layer(
        &CacheLayer::new().redis(store.clone()),
        origin("b", calls_b.clone()),
    );

    assert_eq!(send(&a, get("en")).await, ("a1".to_owned(), None));

    // The write runs in the background: wait until Redis has it.
    let keys = until_keys(&server.url(), "cache-test:cache:*", 1).await;
    assert_eq!(keys[0], "cache-test:cache:{http://shared.test/doc}");

    let (body, age) = send(&b, get("en")).await;
    assert_eq!(body, "a1", "served from Redis, stored by the other layer");
    assert_eq!(age.as_deref(), Some("0"));
    assert_eq!(calls_b.load(Ordering::SeqCst), 0);

    // Now in B's memory too; a different Vary selection is a miss everywhere.
    assert_eq!(send(&b, get("en")).await.0, "a1");
    assert_eq!(send(&b, get("fr")).await.0, "b1");
    assert_eq!(
        (
            calls_a.load(Ordering::SeqCst),
            calls_b.load(Ordering::SeqCst)
        ),
        (1, 1)
    );
}

#[tokio::test]
async fn an_unsafe_request_on_one_layer_invalidates_redis_for_the_other() {
    let server = RedisServer::start();
    let store = RedisStore::open(&server.url()).unwrap().with_prefix("inv");
    let calls = Arc::new(AtomicUsize::new(0));
    let a = tower::Layer::layer(
        &CacheLayer::new().redis(store.clone()),
        origin("a", calls.clone()),
    );
    let b = tower::Layer::layer(
        &CacheLayer::new().redis(store.clone()),
        origin("b", calls.clone()),
    );
    assert_eq!(send(&a, get("en")).await.0, "a1");
    until_keys(&server.url(), "inv:cache:*", 1).await;

    let delete = Request::delete("http://shared.test/doc").body(()).unwrap();
    a.clone().oneshot(delete).await.unwrap();
    until_keys(&server.url(), "inv:cache:*", 0).await;
    // The origin's third call (after the GET and the DELETE) answers B.
    assert_eq!(send(&b, get("en")).await, ("b3".to_owned(), None));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn redis_down_is_a_miss_not_an_error() {
    let mut server = RedisServer::start();
    let store = RedisStore::open(&server.url())
        .unwrap()
        .with_timeout(Duration::from_millis(50));
    server.stop();
    let calls = Arc::new(AtomicUsize::new(0));
    let service = tower::Layer::layer(&CacheLayer::new().redis(store), origin("o", calls.clone()));

    let started = Instant::now();
    assert_eq!(send(&service, get("en")).await.0, "o1");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // Still cached in memory.
    assert_eq!(send(&service, get("en")).await.0, "o1");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_silent_redis_is_a_miss_within_the_timeout() {
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let store = RedisStore::open(&format!("redis://{address}/"))
        .unwrap()
        .with_timeout(Duration::from_millis(100));
    let calls = Arc::new(AtomicUsize::new(0));
    let service = tower::Layer::layer(&CacheLayer::new().redis(store), origin("o", calls.clone()));

    let started = Instant::now();
    assert_eq!(send(&service, get("en")).await.0, "o1");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(100) && elapsed < Duration::from_secs(1),
        "{elapsed:?}"
    );
}

#[tokio::test]
async fn sharing_resumes_when_redis_comes_back() {
    let mut server = RedisServer::start();
    let store = RedisStore::open(&server.url())
        .unwrap()
        .with_timeout(Duration::from_millis(100))
        .with_prefix("back");
    let calls = Arc::new(AtomicUsize::new(0));
    let a = tower::Layer::layer(
        &CacheLayer::new().redis(store.clone()),
        origin("a", calls.clone()),
    );
    server.stop();
    assert_eq!(
        send(&a, get("en")).await.0,
        "a1",
        "down: served from the origin"
    );

    server.restart();
    let b = tower::Layer::layer(
        &CacheLayer::new().redis(store.clone()),
        origin("b", calls.clone()),
    );
    // The first calls after the restart may find the connection still down;
    // within a few seconds a stored response reaches the other layer.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let fr = Request::get("http://shared.test/fresh")
            .header("accept-language", "en")
            .body(())
            .unwrap();
        a.clone()
            .oneshot(fr)
            .await
            .unwrap()
            .into_body()
            .collect()
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let again = Request::get("http://shared.test/fresh")
            .header("accept-language", "en")
            .body(())
            .unwrap();
        let before = calls.load(Ordering::SeqCst);
        b.clone()
            .oneshot(again)
            .await
            .unwrap()
            .into_body()
            .collect()
            .await
            .unwrap();
        if calls.load(Ordering::SeqCst) == before {
            break;
        }
        assert!(Instant::now() < deadline, "Redis sharing never resumed");
        // Start over with a response `b` has not stored itself.
        let purge = Request::delete("http://shared.test/fresh")
            .body(())
            .unwrap();
        a.clone().oneshot(purge).await.unwrap();
        b.clone()
            .oneshot(
                Request::delete("http://shared.test/fresh")
                    .body(())
                    .unwrap(),
            )
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn redis_alone_serves_every_layer_from_redis_and_keeps_nothing_in_memory() {
    let server = RedisServer::start();
    let store = RedisStore::open(&server.url())
        .unwrap()
        .with_prefix("alone");
    let calls = Arc::new(AtomicUsize::new(0));
    let layer_a = CacheLayer::new().redis_only(store.clone());
    let layer_b = CacheLayer::new().redis_only(store.clone());
    let a = tower::Layer::layer(&layer_a, origin("a", calls.clone()));
    let b = tower::Layer::layer(&layer_b, origin("b", calls.clone()));

    assert_eq!(send(&a, get("en")).await, ("a1".to_owned(), None));
    let keys = until_keys(&server.url(), "alone:cache:*", 1).await;
    assert_eq!(keys[0], "alone:cache:{http://shared.test/doc}");

    // Hits on both layers, read from Redis.
    assert_eq!(
        send(&a, get("en")).await,
        ("a1".to_owned(), Some("0".to_owned()))
    );
    assert_eq!(
        send(&b, get("en")).await,
        ("a1".to_owned(), Some("0".to_owned()))
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    for layer in [&layer_a, &layer_b] {
        let stats = layer.stats();
        assert_eq!((stats.responses, stats.bytes), (0, 0), "{stats:?}");
    }

    // Deleted in Redis behind the layers' backs: with no memory tier, both miss.
    let client = redis::Client::open(server.url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let deleted: usize = redis::cmd("DEL")
        .arg(&keys[0])
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    assert_eq!(send(&b, get("en")).await, ("b2".to_owned(), None));
    until_keys(&server.url(), "alone:cache:*", 1).await;
    assert_eq!(
        send(&a, get("en")).await,
        ("b2".to_owned(), Some("0".to_owned()))
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn redis_alone_down_sends_every_request_upstream_without_an_error() {
    let mut server = RedisServer::start();
    let store = RedisStore::open(&server.url())
        .unwrap()
        .with_timeout(Duration::from_millis(50));
    server.stop();
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = CacheLayer::new().redis_only(store);
    let service = tower::Layer::layer(&layer, origin("o", calls.clone()));

    let started = Instant::now();
    assert_eq!(send(&service, get("en")).await, ("o1".to_owned(), None));
    // Nothing was kept anywhere: the next request goes upstream too.
    assert_eq!(send(&service, get("en")).await, ("o2".to_owned(), None));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(layer.stats().responses, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_alone_collapses_concurrent_misses_into_one_upstream_call() {
    let server = RedisServer::start();
    let store = RedisStore::open(&server.url())
        .unwrap()
        .with_prefix("collapse");
    let calls = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Notify::new());
    let origin = {
        let (calls, gate) = (calls.clone(), gate.clone());
        Origin::new(tower::service_fn(move |_: Request<()>| {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            let gate = gate.clone();
            async move {
                gate.notified().await;
                Ok::<_, Infallible>(
                    Response::builder()
                        .header("cache-control", "max-age=60")
                        .body(Full::new(Bytes::from(format!("v{n}"))))
                        .unwrap(),
                )
            }
        }))
    };
    let layer = CacheLayer::new().redis_only(store);
    let service = tower::Layer::layer(&layer, origin);

    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let service = service.clone();
            tokio::spawn(async move { send(&service, get("en")).await.0 })
        })
        .collect();
    // Every other request is parked behind the one upstream call.
    let deadline = Instant::now() + Duration::from_secs(5);
    while layer.stats().waiting != 99 {
        assert!(Instant::now() < deadline, "{:?}", layer.stats());
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    gate.notify_one();

    // The waiters are served the leader's response as it is stored, without
    // waiting for its background write to Redis.
    for task in tasks {
        assert_eq!(task.await.unwrap(), "v1");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(layer.stats().in_flight, 0);
}
