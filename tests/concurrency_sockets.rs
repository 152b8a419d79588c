//! The concurrency limit over real sockets: a hyper client and a tonic client
//! against an axum server.

#![cfg(feature = "concurrency")]

#[path = "support/grpc.rs"]
mod grpc;

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::sync::Semaphore;
use tower_toolbox::concurrency::ConcurrencyLimitLayer;

fn nz(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).unwrap()
}

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path).body(Full::new(Bytes::new())).unwrap()
}

/// Serves `app` on a free loopback port.
async fn serve(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

#[tokio::test]
async fn over_real_sockets_the_request_past_the_limit_gets_503_and_grpc_gets_unavailable() {
    let release = Arc::new(Semaphore::new(0));
    let handler_release = release.clone();
    let layer = ConcurrencyLimitLayer::new(nz(1));
    let handle = layer.handle();
    let app = axum::Router::new()
        .route(
            "/slow",
            axum::routing::get(move || {
                let release = handler_release.clone();
                async move {
                    release.acquire().await.unwrap().forget();
                    "slow done"
                }
            }),
        )
        .fallback(|| async { "fallback" })
        .layer(layer);
    let addr = serve(app).await;

    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let slow = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .request(get(&format!("http://{addr}/slow")))
                .await
                .unwrap()
        })
    };
    while handle.in_flight() == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    let refused = client
        .request(get(&format!("http://{addr}/other")))
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers()["retry-after"], "1");
    let body = refused.into_body().collect().await.unwrap().to_bytes();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["status"], 503);

    let status = grpc::unary(addr, "/shop.Orders/List", vec![1])
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(status.message(), "the service is at its concurrency limit");
    assert_eq!(
        status.metadata().get("grpc-retry-pushback-ms").unwrap(),
        "1000"
    );

    release.add_permits(1);
    let slow = slow.await.unwrap();
    assert_eq!(slow.status(), StatusCode::OK);
    let body = slow.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "slow done");
    while handle.in_flight() != 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let ok = client
        .request(get(&format!("http://{addr}/other")))
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
}
