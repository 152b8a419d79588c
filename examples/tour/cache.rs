//! The response cache: hits with `Age`, 304s from the cache, one upstream call for
//! fifty concurrent misses, and a stale response refreshed in the background.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use tower_toolbox::cache::{CacheLayer, EtagLayer};

use crate::{HttpClient, note, section, serve};

pub async fn run() {
    section("cache: RFC 9111 response cache with an ETag layer inside it");
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let handler = move || {
        let counter = counter.clone();
        async move {
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
            // A slow origin: 50 ms per response.
            tokio::time::sleep(Duration::from_millis(50)).await;
            (
                [("cache-control", "max-age=1, stale-while-revalidate=30")],
                format!("report #{n}\n{}\n", "x".repeat(1000)),
            )
        }
    };
    let app = Router::new()
        .route("/report", get(handler))
        .layer(EtagLayer::new())
        .layer(CacheLayer::new());
    let addr = serve(app).await;
    let client = HttpClient::new();

    let miss = client.get(addr, "/report", &[]).await;
    note(&format!(
        "miss: {} in {:.1} ms, {} bytes, etag {}, age {}",
        miss.status,
        miss.elapsed.as_secs_f64() * 1e3,
        miss.body.len(),
        miss.header("etag"),
        miss.header("age"),
    ));
    let hit = client.get(addr, "/report", &[]).await;
    note(&format!(
        "hit:  {} in {:.1} ms, same body: {}, age {}",
        hit.status,
        hit.elapsed.as_secs_f64() * 1e3,
        hit.body == miss.body,
        hit.header("age"),
    ));
    let etag = miss.header("etag").to_owned();
    let conditional = client
        .get(addr, "/report", &[("if-none-match", etag.as_str())])
        .await;
    note(&format!(
        "If-None-Match {etag}: {} with {} body bytes, answered by the cache",
        conditional.status,
        conditional.body.len()
    ));
    note(&format!(
        "origin calls so far: {}",
        calls.load(Ordering::SeqCst)
    ));

    section("cache: fifty concurrent misses, one upstream request");
    let before = calls.load(Ordering::SeqCst);
    let started = Instant::now();
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.get(addr, "/report?page=2", &[]).await.status })
        })
        .collect();
    let mut ok = 0;
    for task in tasks {
        ok += usize::from(task.await.expect("task") == 200);
    }
    note(&format!(
        "{ok} of 50 got 200 in {:.1} ms; origin calls for them: {}",
        started.elapsed().as_secs_f64() * 1e3,
        calls.load(Ordering::SeqCst) - before
    ));

    section("cache: stale-while-revalidate");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before = calls.load(Ordering::SeqCst);
    let stale = client.get(addr, "/report", &[]).await;
    note(&format!(
        "stale: {} in {:.1} ms, age {}, body {}",
        stale.status,
        stale.elapsed.as_secs_f64() * 1e3,
        stale.header("age"),
        stale.text().lines().next().unwrap_or("")
    ));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let fresh = client.get(addr, "/report", &[]).await;
    note(&format!(
        "then: age {}, body {}; background refreshes: {}",
        fresh.header("age"),
        fresh.text().lines().next().unwrap_or(""),
        calls.load(Ordering::SeqCst) - before
    ));
}
