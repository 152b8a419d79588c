//! Response compression of streamed bodies: trailers, small streams, body
//! errors, frames ready together, and a stream with nothing ready yet.

#![cfg(feature = "compression-full")]

#[path = "compression/support.rs"]
mod support;

use std::convert::Infallible;
use std::task::Poll;

use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::Frame;
use http_body_util::BodyExt;
use tower::{Layer, ServiceExt, service_fn};
use tower_toolbox::compression::{Coding, CompressionBody, CompressionLayer};

use support::{get, json_body};

/// Sends a GET accepting `accept` through the default layer to a service that
/// streams `frames` as `content_type`.
async fn streamed<E: Send + 'static>(
    accept: &'static str,
    content_type: &'static str,
    frames: Vec<Result<Frame<Bytes>, E>>,
) -> Response<CompressionBody<support::Frames<E>>> {
    let frames = std::sync::Mutex::new(Some(frames));
    let service = CompressionLayer::new().layer(service_fn(move |_: Request<()>| {
        let body = support::Frames::new(frames.lock().unwrap().take().expect("one request"));
        let response = Response::builder()
            .header(CONTENT_TYPE, content_type)
            .body(body)
            .unwrap();
        async move { Ok::<_, Infallible>(response) }
    }));
    service.oneshot(get(accept)).await.unwrap()
}

#[tokio::test]
async fn trailers_follow_the_compressed_data() {
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", HeaderValue::from_static("abc123"));
    let frames: Vec<Result<_, Infallible>> = vec![
        Ok(Frame::data(Bytes::from(json_body(3_000)))),
        Ok(Frame::data(Bytes::from(json_body(3_000)))),
        Ok(Frame::trailers(trailers.clone())),
    ];
    let response = streamed("zstd", "text/plain", frames).await;
    assert_eq!(response.headers()[CONTENT_ENCODING], "zstd");
    let collected = response.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers(), Some(&trailers));
    let bytes = collected.to_bytes();
    let expected = format!("{}{}", json_body(3_000), json_body(3_000));
    assert_eq!(support::decode(Coding::Zstd, &bytes), expected.as_bytes());
}

#[tokio::test]
async fn small_streamed_bodies_are_sent_as_they_are() {
    let frames: Vec<Result<_, Infallible>> = vec![
        Ok(Frame::data(Bytes::from_static(b"{\"a\":"))),
        Ok(Frame::data(Bytes::from_static(b"1}"))),
    ];
    let response = streamed("gzip", "application/json", frames).await;
    assert!(response.headers().get(CONTENT_ENCODING).is_none());
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(bytes, "{\"a\":1}");
}

#[tokio::test]
async fn an_inner_body_error_reaches_the_client_as_the_inner_error() {
    #[derive(Debug, Clone, PartialEq)]
    struct Broken;
    impl std::fmt::Display for Broken {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("broken")
        }
    }
    impl std::error::Error for Broken {}

    let frames = vec![Ok(Frame::data(Bytes::from(json_body(1_000)))), Err(Broken)];
    let response = streamed("gzip", "application/json", frames).await;
    let error = response.into_body().collect().await.unwrap_err();
    assert!(matches!(
        error,
        tower_toolbox::compression::BodyError::Inner(Broken)
    ));
}

#[tokio::test]
async fn frames_ready_together_are_compressed_together_not_flushed_one_by_one() {
    let chunk = json_body(100);
    let expected = chunk.repeat(200);
    let frames = (0..200)
        .map(|_| Ok::<_, Infallible>(Frame::data(Bytes::from(chunk.clone()))))
        .collect();
    let response = streamed("gzip", "application/x-ndjson", frames).await;
    let mut body = response.into_body();
    let mut frames = 0;
    let mut compressed = Vec::new();
    while let Some(frame) = body.frame().await {
        compressed.extend_from_slice(&frame.unwrap().into_data().unwrap());
        frames += 1;
    }
    // Nothing was pending, so nothing was flushed early: one frame of output.
    assert_eq!(frames, 1);
    assert_eq!(
        support::decode(Coding::Gzip, &compressed),
        expected.as_bytes()
    );
}

#[tokio::test]
async fn a_stream_with_nothing_ready_gets_its_head_at_once_compressed() {
    let (events, body) = support::ChannelBody::new();
    let body = std::sync::Mutex::new(Some(body));
    let service = CompressionLayer::new().layer(service_fn(move |_: Request<()>| {
        let body = body.lock().unwrap().take().unwrap();
        let response = Response::builder()
            .header(CONTENT_TYPE, "text/event-stream")
            .body(body)
            .unwrap();
        async move { Ok::<_, Infallible>(response) }
    }));
    // The head does not wait for the first event.
    let response = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        service.oneshot(get("br")),
    )
    .await
    .expect("the head is not held back")
    .unwrap();
    assert_eq!(response.headers()[CONTENT_ENCODING], "br");

    // Each event is out, decodable, on the first poll after it is produced: the
    // encoder is flushed as soon as the stream has nothing more ready.
    let mut body = Box::pin(response.into_body());
    let mut decoder = support::StreamDecoder::new(Coding::Brotli);
    assert_eq!(poll_once(&mut body), Poll::Pending);
    events
        .send(Frame::data(Bytes::from_static(b"data: first\n\n")))
        .unwrap();
    let Poll::Ready(Some(chunk)) = poll_once(&mut body) else {
        panic!("the first event is held back");
    };
    assert_eq!(decoder.push(&chunk), b"data: first\n\n");
    assert_eq!(poll_once(&mut body), Poll::Pending);
    events
        .send(Frame::data(Bytes::from_static(b"data: second\n\n")))
        .unwrap();
    let Poll::Ready(Some(chunk)) = poll_once(&mut body) else {
        panic!("the second event is held back");
    };
    assert_eq!(decoder.push(&chunk), b"data: first\n\ndata: second\n\n");
    drop(events);
    let mut rest = Vec::new();
    while let Poll::Ready(Some(chunk)) = poll_once(&mut body) {
        rest.extend_from_slice(&chunk);
    }
    assert_eq!(poll_once(&mut body), Poll::Ready(None));
    assert_eq!(decoder.push(&rest), b"data: first\n\ndata: second\n\n");
}

/// Polls `body` once with a waker that does nothing: its next data frame if one
/// is ready now.
fn poll_once<B>(body: &mut std::pin::Pin<Box<B>>) -> Poll<Option<Bytes>>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    body.as_mut()
        .poll_frame(&mut cx)
        .map(|frame| frame.map(|frame| frame.unwrap().into_data().unwrap()))
}
