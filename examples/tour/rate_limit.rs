//! Rate limiting: a burst past the quota, headers, spoofing, and a leaky bucket.

use std::num::NonZeroU32;
use std::time::Instant;

use axum::Router;
use axum::routing::get;
use tower_toolbox::key::ClientIp;
use tower_toolbox::rate_limit::{Headers, LeakyBucket, Quota, RateLimitLayer};

use crate::{HttpClient, note, section, serve};

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

pub async fn run() {
    section("Rate limit: a token bucket per client");
    let layer = RateLimitLayer::builder()
        .quota(Quota::per_second(nz(2)).burst(nz(3)).named("per-client"))
        .key(ClientIp::new().trust_proxies(["127.0.0.1/32".parse().unwrap()]))
        .headers(Headers::IETF)
        .build()
        .unwrap();
    let app = Router::new().route("/items", get(|| async { "[1,2,3]" }).layer(layer));
    let addr = serve(app).await;
    let client = HttpClient::new();
    let alice = [("x-forwarded-for", "203.0.113.10")];

    println!("   client 203.0.113.10 sends 5 requests at once (2/s, burst 3):");
    for i in 1..=5 {
        let seen = client.get(addr, "/items", &alice).await;
        println!(
            "   #{i} {}  RateLimit: {:<26} Retry-After: {}",
            seen.status,
            seen.header("ratelimit"),
            seen.header("retry-after")
        );
    }
    let policy = client
        .get(addr, "/items", &[("x-forwarded-for", "203.0.113.11")])
        .await;
    println!(
        "   client 203.0.113.11 is unaffected: {}  RateLimit-Policy: {}",
        policy.status,
        policy.header("ratelimit-policy")
    );

    let spoofed = client
        .get(
            addr,
            "/items",
            &[("x-forwarded-for", "1.2.3.4, 203.0.113.10")],
        )
        .await;
    println!(
        "   203.0.113.10 forges \"1.2.3.4, \" in front of its address: {}",
        spoofed.status
    );
    note("The proxy appended the real address on the right; the forged entry is never read.");

    section("Rate limit: a leaky bucket smoothing a burst (nginx limit_req)");
    let smoothing = RateLimitLayer::builder()
        .quota(LeakyBucket::per_second(nz(10)).burst(4))
        .key(ClientIp::new())
        .build()
        .unwrap();
    let app = Router::new().route("/report", get(|| async { "ok" }).layer(smoothing));
    let addr = serve(app).await;
    let started = Instant::now();
    let handles: Vec<_> = (0..6)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                // Stagger the sends by a hair so they arrive in order.
                tokio::time::sleep(std::time::Duration::from_millis(i * 2)).await;
                let seen = client.get(addr, "/report", &[]).await;
                (i, seen.status, started.elapsed())
            })
        })
        .collect();
    for handle in handles {
        let (i, status, at) = handle.await.unwrap();
        println!(
            "   request #{} -> {status} after {:>4} ms",
            i + 1,
            at.as_millis()
        );
    }
    note("10 r/s, burst 4: the first passes at once, the next four are spaced 100 ms apart");
    note("by a timer (not refused), the sixth finds the bucket full and gets 429.");
}
