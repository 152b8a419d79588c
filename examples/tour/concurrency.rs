//! Concurrency limits and load shedding: an overload spike, what is admitted,
//! queued and shed, and an adaptive limit finding the service's capacity.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use http::StatusCode;
use tower_toolbox::concurrency::{Aimd, ConcurrencyLimitLayer, Windowed};
use tower_toolbox::shed::{LoadShedLayer, Priority};

use super::{HttpClient, Seen, note, section, serve};

fn nz(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).expect("non-zero")
}

/// Sends `n` requests to `path` at once and returns what each client saw.
async fn spike(client: &HttpClient, addr: std::net::SocketAddr, path: &str, n: usize) -> Vec<Seen> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (client, path) = (client.clone(), path.to_owned());
            tokio::spawn(async move { client.get(addr, &path, &[]).await })
        })
        .collect();
    let mut seen = Vec::with_capacity(n);
    for task in tasks {
        seen.push(task.await.expect("client task"));
    }
    seen
}

fn count(seen: &[Seen], status: StatusCode) -> usize {
    seen.iter().filter(|s| s.status == status).count()
}

pub async fn run() {
    let client = HttpClient::new();
    static_limit_with_a_queue(&client).await;
    codel_with_priorities(&client).await;
    adaptive_limit(&client).await;
}

async fn static_limit_with_a_queue(client: &HttpClient) {
    section("Concurrency limit: 4 at once, a line of 4 for up to 150 ms");
    let layer = ConcurrencyLimitLayer::new(nz(4)).queue(nz(4), Duration::from_millis(150));
    let handle = layer.handle();
    let app = Router::new()
        .route(
            "/work",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                "done"
            }),
        )
        .layer(layer);
    let addr = serve(app).await;

    let seen = spike(client, addr, "/work", 16).await;
    let mut waited: Vec<_> = seen
        .iter()
        .filter(|s| s.status == StatusCode::OK)
        .map(|s| s.elapsed.as_millis())
        .collect();
    waited.sort();
    note(&format!(
        "16 requests at once (each takes 50 ms): {} answered 200, {} refused 503",
        count(&seen, StatusCode::OK),
        count(&seen, StatusCode::SERVICE_UNAVAILABLE)
    ));
    note(&format!(
        "200 latencies (ms): {waited:?}: the first 4 ran at once, the next waited in line"
    ));
    if let Some(refused) = seen
        .iter()
        .find(|s| s.status == StatusCode::SERVICE_UNAVAILABLE)
    {
        note(&format!(
            "a refusal: Retry-After: {}, {} bytes of {}: {}",
            refused.header("retry-after"),
            refused.body.len(),
            refused.header("content-type"),
            refused.text()
        ));
    }
    note(&format!(
        "afterwards: {} in flight, {} waiting",
        handle.in_flight(),
        handle.queued()
    ));
}

async fn codel_with_priorities(client: &HttpClient) {
    section("Load shedding: CoDel line, /checkout critical, /healthz bypassed");
    let layer = LoadShedLayer::new(nz(4))
        .codel(Duration::from_millis(5), Duration::from_millis(100))
        .capacity(nz(24))
        .priority(|head| match head.uri.path() {
            "/checkout" => Priority::Critical,
            _ => Priority::Normal,
        })
        .bypass(|head| head.uri.path() == "/healthz");
    let slow = || async {
        tokio::time::sleep(Duration::from_millis(40)).await;
        "done"
    };
    let app = Router::new()
        .route("/browse", get(slow))
        .route("/checkout", get(slow))
        .route("/healthz", get(|| async { "ok" }))
        .layer(layer);
    let addr = serve(app).await;

    // A spike of browsing, with a few checkouts and a health check in the middle.
    let browse = {
        let client = client.clone();
        tokio::spawn(async move { spike(&client, addr, "/browse", 60).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let checkout = {
        let client = client.clone();
        tokio::spawn(async move { spike(&client, addr, "/checkout", 4).await })
    };
    let health = client.get(addr, "/healthz", &[]).await;
    let browse = browse.await.expect("browse");
    let checkout = checkout.await.expect("checkout");

    note(&format!(
        "60 x /browse: {} served, {} shed (503); the slowest 200 took {} ms",
        count(&browse, StatusCode::OK),
        count(&browse, StatusCode::SERVICE_UNAVAILABLE),
        browse
            .iter()
            .filter(|s| s.status == StatusCode::OK)
            .map(|s| s.elapsed.as_millis())
            .max()
            .unwrap_or(0)
    ));
    note(&format!(
        "4 x /checkout sent mid-spike: {} served, slowest {} ms (served before waiting /browse)",
        count(&checkout, StatusCode::OK),
        checkout
            .iter()
            .map(|s| s.elapsed.as_millis())
            .max()
            .unwrap_or(0)
    ));
    note(&format!(
        "/healthz during the spike: {} in {} ms (bypasses the line)",
        health.status,
        health.elapsed.as_millis()
    ));
}

async fn adaptive_limit(client: &HttpClient) {
    section("Adaptive limit: AIMD finds a backend that slows down past 8 at once");
    // The backend answers in 20 ms up to 8 requests at once; past that each extra
    // request makes everyone slower.
    let running = Arc::new(AtomicUsize::new(0));
    let backend = {
        let running = running.clone();
        move || {
            let running = running.clone();
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                let load = (now as f64 / 8.0).max(1.0);
                tokio::time::sleep(Duration::from_millis(20).mul_f64(load)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                "done"
            }
        }
    };
    let layer = ConcurrencyLimitLayer::adaptive(
        Windowed::new(
            Aimd::new()
                .initial(nz(2))
                .bounds(nz(1), nz(64))
                .timeout(Duration::from_millis(35)),
        )
        .duration(Duration::from_millis(50), Duration::from_millis(50))
        .min_samples(nz(3)),
    );
    let handle = layer.handle();
    let app = Router::new().route("/work", get(backend)).layer(layer);
    let addr = serve(app).await;

    // 32 clients in a loop for 1.5 s, far more than the backend takes well; a
    // refused client waits 20 ms before trying again.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let counts = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let clients: Vec<_> = (0..32)
        .map(|_| {
            let (client, stop, counts) = (client.clone(), stop.clone(), counts.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let seen = client.get(addr, "/work", &[]).await;
                    let slot = usize::from(seen.status != StatusCode::OK);
                    counts[slot].fetch_add(1, Ordering::Relaxed);
                    if seen.status != StatusCode::OK {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            })
        })
        .collect();
    let mut trace = Vec::new();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        trace.push(handle.limit());
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.expect("client");
    }
    note(&format!(
        "the limit every 150 ms: {trace:?} (+1 per busy 50 ms window, x0.9 when one averages over 35 ms, which this backend reaches at 14 in flight)"
    ));
    note(&format!(
        "{} requests served, {} refused at once with 503 instead of queueing in the backend",
        counts[0].load(Ordering::Relaxed),
        counts[1].load(Ordering::Relaxed)
    ));
}
