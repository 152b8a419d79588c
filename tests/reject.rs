//! Rejections as responses: exact HTTP problem details and gRPC statuses, and what
//! real clients make of them.

#[path = "support/grpc.rs"]
mod grpc;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tower_toolbox::body::ResponseBody;
use tower_toolbox::reject::{Rejection, RequestHead, Responder};

fn http_request() -> Request<()> {
    Request::get("/orders").body(()).unwrap()
}

fn grpc_request() -> Request<()> {
    Request::post("/shop.Orders/List")
        .header("content-type", "application/grpc+proto")
        .body(())
        .unwrap()
}

#[test]
fn http_quota_rejection_is_exact_problem_json() {
    let rejection = Rejection::quota_exceeded("5 requests per second")
        .with_retry_after(Duration::from_millis(200))
        .with_header(
            http::HeaderName::from_static("ratelimit"),
            HeaderValue::from_static("\"default\";r=0;t=1"),
        )
        .with_member("violated-policies", serde_json::json!(["default"]));
    let response = Responder::default().respond(&rejection, &RequestHead::of(&http_request()));

    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    assert_eq!(response.headers()["retry-after"], "1");
    assert_eq!(response.headers()["ratelimit"], "\"default\";r=0;t=1");
    let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
    assert_eq!(
        body,
        serde_json::json!({
            "type": "https://docs.rs/tower-toolbox/latest/tower_toolbox/reject/index.html#quota-exceeded",
            "title": "Quota exceeded",
            "status": 429,
            "detail": "5 requests per second",
            "violated-policies": ["default"],
        })
    );
}

#[test]
fn retry_after_is_whole_seconds_rounded_up() {
    for (after, expected) in [(200, "1"), (1000, "1"), (1010, "2"), (59_001, "60")] {
        let rejection =
            Rejection::overloaded("busy").with_retry_after(Duration::from_millis(after));
        let response = Responder::default().respond(&rejection, &RequestHead::of(&http_request()));
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            response.headers()["retry-after"],
            expected,
            "for {after} ms"
        );
    }
}

#[test]
fn no_retry_after_when_the_time_is_unknown() {
    let response = Responder::default().respond(
        &Rejection::overloaded("busy"),
        &RequestHead::of(&http_request()),
    );
    assert!(response.headers().get("retry-after").is_none());
}

#[test]
fn type_base_is_configurable() {
    let responder = Responder::with_type_base("https://api.example.com/problems/");
    let response = responder.respond(
        &Rejection::overloaded("busy"),
        &RequestHead::of(&http_request()),
    );
    let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
    assert_eq!(body["type"], "https://api.example.com/problems/overloaded");
}

#[test]
fn grpc_rejection_is_trailers_only_with_exact_headers() {
    let rejection = Rejection::quota_exceeded("100% used: wait ⏳")
        .with_retry_after(Duration::from_micros(1_500_100));
    let response = Responder::default().respond(&rejection, &RequestHead::of(&grpc_request()));

    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.body().is_empty());
    let headers = response.headers();
    assert_eq!(headers["content-type"], "application/grpc+proto");
    assert_eq!(headers["grpc-status"], "8");
    assert_eq!(headers["grpc-message"], "100%25 used: wait %E2%8F%B3");
    assert_eq!(headers["grpc-retry-pushback-ms"], "1501");
    assert!(headers.get("retry-after").is_none());

    let overload = Responder::default().respond(
        &Rejection::overloaded("try later"),
        &RequestHead::of(&grpc_request()),
    );
    assert_eq!(overload.headers()["grpc-status"], "14");
    assert!(overload.headers().get("grpc-retry-pushback-ms").is_none());
}

#[test]
fn a_custom_responder_replaces_the_default() {
    let responder = Responder::from_fn(|rejection, request| {
        let mut response = http::Response::new(Bytes::from(format!(
            "{} {}",
            request.uri.path(),
            rejection.problem()
        )));
        *response.status_mut() = StatusCode::IM_A_TEAPOT;
        response
    });
    let response = responder.respond(
        &Rejection::overloaded("x"),
        &RequestHead::of(&http_request()),
    );
    assert_eq!(response.status(), StatusCode::IM_A_TEAPOT);
    assert_eq!(response.body(), "/orders overloaded");
}

/// Serves a service that rejects every request with `rejection`, over real HTTP/2.
async fn rejecting_server(rejection: Rejection) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = tower::service_fn(move |request: Request<axum::body::Body>| {
        let response = Responder::default().respond(&rejection, &RequestHead::of(&request));
        async move { Ok::<_, Infallible>(response.map(ResponseBody::<Full<Bytes>>::full)) }
    });
    tokio::spawn(async move {
        let app = axum::Router::new().fallback_service(service);
        axum::serve(listener, app).await.unwrap();
    });
    addr
}

#[tokio::test]
async fn a_tonic_client_sees_resource_exhausted_with_the_message() {
    let addr = rejecting_server(
        Rejection::quota_exceeded("quota of 10 per minute used")
            .with_retry_after(Duration::from_secs(3)),
    )
    .await;
    let status = grpc::unary(addr, "/shop.Orders/List", vec![1, 2, 3])
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert_eq!(status.message(), "quota of 10 per minute used");
    assert_eq!(
        status.metadata().get("grpc-retry-pushback-ms").unwrap(),
        "3000"
    );
}

#[tokio::test]
async fn a_tonic_client_sees_unavailable_with_the_message() {
    let addr = rejecting_server(Rejection::overloaded("shedding load: 100% busy")).await;
    let status = grpc::unary(addr, "/shop.Orders/List", vec![])
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(status.message(), "shedding load: 100% busy");
}

#[tokio::test]
async fn a_plain_http_client_reads_the_problem_over_a_socket() {
    let addr = rejecting_server(
        Rejection::quota_exceeded("slow down").with_retry_after(Duration::from_millis(1010)),
    )
    .await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let response = client
        .request(
            Request::get(format!("http://{addr}/x"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "2");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["detail"], "slow down");
    assert_eq!(body["status"], 429);
}
