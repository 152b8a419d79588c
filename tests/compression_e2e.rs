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

/// One open `/events` stream as the client reads it: the response body, the
/// handler's end of the event channel, and what the client has decoded so far.
struct EventStream {
    body: hyper::body::Incoming,
    events: mpsc::UnboundedSender<Frame<Bytes>>,
    decoder: Option<StreamDecoder>,
    /// Every byte received, as sent on the wire.
    received: Vec<u8>,
    expected: Vec<u8>,
}

impl EventStream {
    /// Opens `/events` with `coding`, or with no Accept-Encoding for `None`.
    async fn open(
        client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
        addr: SocketAddr,
        handed: &mut mpsc::UnboundedReceiver<mpsc::UnboundedSender<Frame<Bytes>>>,
        coding: Option<Coding>,
    ) -> EventStream {
        let mut request = Request::get(format!("http://{addr}/events"));
        if let Some(coding) = coding {
            request = request.header("accept-encoding", coding.as_str());
        }
        let response = client
            .request(request.body(Full::default()).unwrap())
            .await
            .unwrap();
        let content_encoding = response.headers().get(CONTENT_ENCODING);
        assert_eq!(
            content_encoding.map(|v| v.to_str().unwrap()),
            coding.map(Coding::as_str)
        );
        EventStream {
            body: response.into_body(),
            events: handed.recv().await.unwrap(),
            decoder: coding.map(StreamDecoder::new),
            received: Vec::new(),
            expected: Vec::new(),
        }
    }

    /// Has the handler produce `event`, then reads until the client has decoded
    /// every event so far. Returns the time from production to decoding. The
    /// stream stays open and nothing else is produced meanwhile, so only a flush
    /// can make the event arrive.
    async fn deliver(&mut self, event: &str) -> Duration {
        self.expected.extend_from_slice(event.as_bytes());
        let produced = Instant::now();
        self.events
            .send(Frame::data(Bytes::from(event.to_owned())))
            .unwrap();
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(5), self.body.frame())
                .await
                .unwrap_or_else(|_| panic!("{event:?} never arrived while the stream was open"))
                .expect("the stream is still open")
                .unwrap();
            let chunk = frame.into_data().unwrap();
            self.received.extend_from_slice(&chunk);
            let decoded = match &mut self.decoder {
                Some(decoder) => decoder.push(&chunk),
                None => &self.received[..],
            };
            if decoded == self.expected.as_slice() {
                return produced.elapsed();
            }
            assert!(
                self.expected.starts_with(decoded),
                "decoded bytes that were never sent"
            );
        }
    }
}

/// The value a quarter of the way up `samples`.
fn lower_quartile(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 4]
}

/// Each event of a compressed stream reaches a real client, decodable, while the
/// stream is open, and within 1 ms of when the same event reaches a client of an
/// uncompressed stream on the same server. The comparison is what makes the
/// bound hold on a loaded machine: the two streams are sampled in alternation,
/// so scheduling delays fall on both, and the lower quartile ignores the rounds
/// a busy CPU stretches. An encoder that waited for more input, or flushed on a
/// timer of a millisecond or more, would fail it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_server_sent_event_arrives_compressed_within_1_ms_of_uncompressed() {
    const ROUNDS: usize = 40;
    let (senders, mut handed) = mpsc::unbounded_channel();
    let addr = serve(senders).await;
    let client = client();

    for coding in Coding::ALL {
        let mut compressed = EventStream::open(&client, addr, &mut handed, Some(coding)).await;
        let mut plain = EventStream::open(&client, addr, &mut handed, None).await;
        let mut compressed_latency = Vec::with_capacity(ROUNDS);
        let mut plain_latency = Vec::with_capacity(ROUNDS);

        for n in 0..ROUNDS {
            let event = format!("id: {n}\nevent: tick\ndata: {{\"n\":{n},\"status\":\"ok\"}}\n\n");
            // Alternate which stream goes first, so neither always runs warm.
            if n % 2 == 0 {
                compressed_latency.push(compressed.deliver(&event).await);
                plain_latency.push(plain.deliver(&event).await);
            } else {
                plain_latency.push(plain.deliver(&event).await);
                compressed_latency.push(compressed.deliver(&event).await);
            }
        }

        let compressed_q1 = lower_quartile(compressed_latency);
        let plain_q1 = lower_quartile(plain_latency);
        eprintln!("{coding}: lower-quartile latency {compressed_q1:?}, uncompressed {plain_q1:?}");
        assert!(
            compressed_q1 <= plain_q1 + Duration::from_millis(1),
            "{coding}: events take {compressed_q1:?} compressed, {plain_q1:?} uncompressed"
        );

        // Ending the stream finishes the encoding: the whole response is one
        // complete stream of the coding, holding exactly the events.
        drop(compressed.events);
        let rest = compressed.body.collect().await.unwrap().to_bytes();
        compressed.received.extend_from_slice(&rest);
        assert_eq!(
            support::decode(coding, &compressed.received),
            compressed.expected,
            "{coding}"
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
