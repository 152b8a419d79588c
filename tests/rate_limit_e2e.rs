//! The rate limit layer in a real axum server over real sockets, with a hyper
//! client for HTTP and a tonic client for gRPC.
#![cfg(feature = "rate-limit")]

#[path = "support/grpc.rs"]
mod grpc;

use std::net::SocketAddr;
use std::num::NonZeroU32;

use axum::Router;
use axum::routing::{get, post};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower_toolbox::key::ClientIp;
use tower_toolbox::rate_limit::{Headers, Quota, RateLimitLayer};

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

fn layer(per_minute: u32) -> RateLimitLayer {
    RateLimitLayer::builder()
        .quota(Quota::per_minute(NonZeroU32::new(per_minute).unwrap()).named("per-ip"))
        .key(ClientIp::new().trust_proxies(["127.0.0.1/32".parse().unwrap()]))
        .headers(Headers::IETF)
        .build()
        .unwrap()
}

#[tokio::test]
async fn http_clients_over_a_socket_see_headers_then_a_problem() {
    let app = Router::new().route("/items", get(|| async { "[]" }).layer(layer(2)));
    let addr = serve(app).await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let get = |xff: &'static str| {
        Request::get(format!("http://{addr}/items"))
            .header("x-forwarded-for", xff)
            .body(Full::new(Bytes::new()))
            .unwrap()
    };

    let first = client.request(get("203.0.113.1")).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(first.headers()["ratelimit-policy"], r#""per-ip";q=2;w=60"#);
    assert_eq!(first.headers()["ratelimit"], r#""per-ip";r=1;t=30"#);
    assert_eq!(first.into_body().collect().await.unwrap().to_bytes(), "[]");

    client.request(get("203.0.113.1")).await.unwrap();
    let refused = client.request(get("9.9.9.9, 203.0.113.1")).await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers()["retry-after"], "30");
    assert_eq!(refused.headers()["ratelimit"], r#""per-ip";r=0;t=60"#);
    let body = refused.into_body().collect().await.unwrap().to_bytes();
    let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(problem["violated-policies"], serde_json::json!(["per-ip"]));

    let other = client.request(get("203.0.113.2")).await.unwrap();
    assert_eq!(other.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_tonic_client_sees_resource_exhausted_with_pushback() {
    let app = Router::new().route(
        "/shop.Orders/List",
        post(|| async { "not a grpc answer" }).layer(layer(1)),
    );
    let addr = serve(app).await;

    // The first call reaches the handler (which is not a gRPC server, so tonic
    // reports a protocol error); the second is refused by the layer.
    let first = grpc::unary(addr, "/shop.Orders/List", vec![])
        .await
        .unwrap_err();
    assert_ne!(first.code(), tonic::Code::ResourceExhausted);
    let status = grpc::unary(addr, "/shop.Orders/List", vec![])
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert_eq!(status.message(), "rate limit exceeded for per-ip");
    let pushback: u64 = status
        .metadata()
        .get("grpc-retry-pushback-ms")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((59_000..=60_000).contains(&pushback), "{pushback}");
}
