//! End to end over real sockets: an axum server with both layers, a hyper client
//! and a tonic client.

#![cfg(feature = "compression-full")]

#[path = "support/grpc.rs"]
#[allow(dead_code)]
mod grpc;
#[path = "compression/support.rs"]
mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body as AxumBody;
use axum::routing::{get, post};
use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, VARY};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;
use tower_toolbox::compression::{Coding, CompressionLayer, RequestDecompressionLayer};

use support::{ChannelBody, StreamDecoder};

type Senders = mpsc::UnboundedSender<mpsc::UnboundedSender<Frame<Bytes>>>;

fn items() -> String {
    let items: Vec<String> = (0..2_000)
        .map(|i| {
            format!(
                r#"{{"id":{i},"name":"item {i}","price":{}}}"#,
                (i * 7919) % 10_000
            )
        })
        .collect();
    format!("[{}]", items.join(","))
}

async fn serve(senders: Senders) -> SocketAddr {
    let app = Router::new()
        .route(
            "/items",
            get(|| async { ([(CONTENT_TYPE, "application/json")], items()) }),
        )
        .route(
            "/events",
            get(move || {
                let senders = senders.clone();
                async move {
                    let (tx, body) = ChannelBody::new();
                    senders.send(tx).unwrap();
                    Response::builder()
                        .header(CONTENT_TYPE, "text/event-stream")
                        .body(AxumBody::new(body))
                        .unwrap()
                }
            }),
        )
        .route(
            "/upload",
            post(|body: Bytes| async move { format!("received {} bytes", body.len()) }),
        )
        .route("/pkg.Echo/Call", post(grpc_echo))
        .route("/report", get(report_with_trailers))
        .layer(CompressionLayer::new())
        .layer(RequestDecompressionLayer::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// A gRPC unary echo without generated code: the request's message framed back,
/// with `grpc-status: 0` in the trailers.
async fn grpc_echo(body: Bytes) -> Response<AxumBody> {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let frames: Vec<Result<Frame<Bytes>, Infallible>> =
        vec![Ok(Frame::data(body)), Ok(Frame::trailers(trailers))];
    Response::builder()
        .header(CONTENT_TYPE, "application/grpc")
        .body(AxumBody::new(support::Frames::new(frames)))
        .unwrap()
}

/// A text report whose checksum follows in the trailers.
async fn report_with_trailers() -> Response<AxumBody> {
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", HeaderValue::from_static("sha256=abc"));
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
        Ok(Frame::data(Bytes::from(items()))),
        Ok(Frame::trailers(trailers)),
    ];
    Response::builder()
        .header(CONTENT_TYPE, "text/plain")
        .body(AxumBody::new(support::Frames::new(frames)))
        .unwrap()
}

fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_client_gets_each_coding_and_decodes_the_same_json() {
    let (senders, _) = mpsc::unbounded_channel();
    let addr = serve(senders).await;
    let client = client();
    let expected = items();

    for coding in Coding::ALL {
        let request = Request::get(format!("http://{addr}/items"))
            .header(
                "accept-encoding",
                format!("{}, identity;q=0.5", coding.as_str()),
            )
            .body(Full::default())
            .unwrap();
        let response = client.request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[CONTENT_ENCODING], coding.as_str());
        assert_eq!(response.headers()[VARY], "accept-encoding");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert!(body.len() * 4 < expected.len(), "{coding}: {}", body.len());
        assert_eq!(support::decode(coding, &body), expected.as_bytes());
    }

    let request = Request::get(format!("http://{addr}/items"))
        .body(Full::default())
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert!(response.headers().get(CONTENT_ENCODING).is_none());
    assert_eq!(
        response.headers()[CONTENT_LENGTH],
        expected.len().to_string()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_server_sent_event_arrives_compressed_before_the_next_is_produced() {
    let (senders, mut handed) = mpsc::unbounded_channel();
    let addr = serve(senders).await;
    let client = client();

    for coding in Coding::ALL {
        let request = Request::get(format!("http://{addr}/events"))
            .header("accept-encoding", coding.as_str())
            .body(Full::default())
            .unwrap();
        let response = client.request(request).await.unwrap();
        assert_eq!(response.headers()[CONTENT_ENCODING], coding.as_str());
        let events = handed.recv().await.unwrap();
        let mut body = response.into_body();
        let mut decoder = StreamDecoder::new(coding);
        let mut expected = Vec::new();
        let mut latencies = Vec::new();

        for n in 0..20 {
            let event = format!("id: {n}\nevent: tick\ndata: {{\"n\":{n},\"status\":\"ok\"}}\n\n");
            expected.extend_from_slice(event.as_bytes());
            let sent = Instant::now();
            events.send(Frame::data(Bytes::from(event))).unwrap();

            // Read until this event has arrived and decodes in full; the stream is
            // still open, so nothing but a flush can make it arrive.
            loop {
                let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
                    .await
                    .unwrap_or_else(|_| panic!("{coding}: event {n} never arrived"))
                    .unwrap()
                    .unwrap();
                let chunk = frame.into_data().unwrap();
                if decoder.push(&chunk) == expected.as_slice() {
                    break;
                }
            }
            latencies.push(sent.elapsed());
        }
        drop(events);

        latencies.sort();
        let median = latencies[latencies.len() / 2];
        println!(
            "{coding}: event latency median {median:?}, max {:?}",
            latencies.last().unwrap()
        );
        assert!(
            median < Duration::from_millis(1),
            "{coding}: median latency {median:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_uploads_are_decoded_and_bombs_refused_over_a_socket() {
    let (senders, _) = mpsc::unbounded_channel();
    let addr = serve(senders).await;
    let client = client();

    let upload = items();
    let request = Request::post(format!("http://{addr}/upload"))
        .header(CONTENT_ENCODING, "br")
        .body(Full::new(Bytes::from(support::encode(
            Coding::Brotli,
            upload.as_bytes(),
        ))))
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, format!("received {} bytes", upload.len()));

    let bomb = support::encode_at(Coding::Gzip, &vec![0; 10 * 1024 * 1024], 9);
    let request = Request::post(format!("http://{addr}/upload"))
        .header(CONTENT_ENCODING, "gzip")
        .body(Full::new(Bytes::from(bomb)))
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(response.headers()[CONTENT_TYPE], "application/problem+json");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tonic_client_is_answered_uncompressed_through_the_layer() {
    let (senders, _) = mpsc::unbounded_channel();
    let addr = serve(senders).await;

    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = tonic::client::Grpc::new(channel);
    client.ready().await.unwrap();
    let message = b"a gRPC message well over the minimum size, twice over: ".repeat(4);
    let mut request = tonic::Request::new(message.clone());
    request
        .metadata_mut()
        .insert("accept-encoding", "gzip, br".parse().unwrap());
    let response = client
        .unary(
            request,
            http::uri::PathAndQuery::from_static("/pkg.Echo/Call"),
            grpc::RawCodec,
        )
        .await
        .expect("the gRPC call succeeds");

    assert!(response.metadata().get("content-encoding").is_none());
    assert_eq!(response.into_inner(), message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_arrive_after_the_compressed_body_over_http2() {
    let (senders, _) = mpsc::unbounded_channel();
    let addr = serve(senders).await;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();

    let request = Request::get(format!("http://{addr}/report"))
        .header("accept-encoding", "zstd")
        .header("te", "trailers")
        .body(Full::default())
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.headers()[CONTENT_ENCODING], "zstd");
    let collected = response.into_body().collect().await.unwrap();
    assert_eq!(
        collected.trailers().expect("trailers")["x-checksum"],
        "sha256=abc"
    );
    let body = collected.to_bytes();
    assert_eq!(support::decode(Coding::Zstd, &body), items().as_bytes());
}
