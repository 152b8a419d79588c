//! The shared pieces: a client behind a trusted proxy, and refusals in HTTP and gRPC.

use std::num::NonZeroU32;

use axum::Router;
use axum::extract::Request;
use axum::routing::{get, post};
use bytes::Bytes;
use http_body_util::Full;
use tower_toolbox::key::{ClientIp, KeyExtractor};
use tower_toolbox::rate_limit::{Quota, RateLimitLayer};

use crate::{HttpClient, note, section, serve};

/// The key setup of this scenario: our "load balancer" is the tour's own client on
/// 127.0.0.1, trusted to append the real client to `X-Forwarded-For`.
fn behind_proxy() -> ClientIp {
    ClientIp::new().trust_proxies(["127.0.0.1/32".parse().unwrap()])
}

pub async fn run() {
    section("Keys: the client behind a trusted proxy");
    let whoami = |request: Request| async move {
        match behind_proxy().extract(&request) {
            Some(ip) => format!("keyed as {ip}"),
            None => "no key".to_owned(),
        }
    };
    let limited = RateLimitLayer::builder()
        .quota(Quota::per_minute(NonZeroU32::new(1).unwrap()))
        .key(behind_proxy())
        .build()
        .unwrap();
    let app = Router::new()
        .route("/whoami", get(whoami))
        .route("/orders", get(|| async { "orders" }).layer(limited.clone()))
        .route(
            "/shop.Orders/List",
            post(|| async { "never reached" }).layer(limited),
        );
    let addr = serve(app).await;
    let client = HttpClient::new();

    for xff in [
        "203.0.113.5",
        "6.6.6.6, 203.0.113.5",
        "garbage, 203.0.113.5",
        "not-an-ip",
    ] {
        let seen = client
            .get(addr, "/whoami", &[("x-forwarded-for", xff)])
            .await;
        println!("   X-Forwarded-For: {xff:<24} -> {}", seen.text());
    }
    note("Read right to left from the trusted peer: the forged left-most entries are never");
    note("read, and a malformed client entry falls back to the peer (127.0.0.1), never to");
    note("anything the client wrote.");

    section("Refusals: problem+json for HTTP, a status for gRPC");
    let first = client
        .get(addr, "/orders", &[("x-forwarded-for", "198.51.100.1")])
        .await;
    let refused = client
        .get(addr, "/orders", &[("x-forwarded-for", "198.51.100.1")])
        .await;
    println!(
        "   GET /orders -> {}, then {}",
        first.status, refused.status
    );
    println!(
        "   content-type: {}   retry-after: {}",
        refused.header("content-type"),
        refused.header("retry-after")
    );
    println!("   body: {}", refused.text());

    let grpc = http::Request::post(format!("http://{addr}/shop.Orders/List"))
        .version(http::Version::HTTP_2)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("x-forwarded-for", "198.51.100.1")
        .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
        .unwrap();
    let seen = client.send(grpc).await;
    println!(
        "   gRPC /shop.Orders/List over HTTP/2 -> HTTP {}, grpc-status {}, grpc-message {:?}, grpc-retry-pushback-ms {}",
        seen.status,
        seen.header("grpc-status"),
        seen.header("grpc-message"),
        seen.header("grpc-retry-pushback-ms")
    );
    note("The same refusal, answered in the caller's protocol: a tonic client sees");
    note("Code::ResourceExhausted with that message. The service's error type never changed.");
}
