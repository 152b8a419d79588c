//! Property tests: every coding round-trips any bytes in any chunking, both ways,
//! and negotiation never panics or picks a refused coding.

#![cfg(feature = "compression-full")]

#[path = "compression/support.rs"]
mod support;

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::header::{ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use proptest::prelude::*;
use tower::{Layer, ServiceExt, service_fn};
use tower_toolbox::compression::{
    Coding, CompressionLayer, DecompressedBody, Negotiated, Preference, RequestDecompressionLayer,
    negotiate,
};

fn coding() -> impl Strategy<Value = Coding> {
    prop::sample::select(Coding::ALL.to_vec())
}

/// Bodies that compress well (repeats of a short alphabet) or not at all.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..6_000),
        prop::collection::vec(prop::sample::select(b"{}\":,abc 0123".to_vec()), 0..20_000),
    ]
}

/// Cuts `data` at the given fractions into frames (empty frames included).
fn chunk(data: &[u8], cuts: &[f64]) -> Vec<Bytes> {
    let mut points: Vec<usize> = cuts
        .iter()
        .map(|f| (f * data.len() as f64) as usize)
        .collect();
    points.sort_unstable();
    let mut chunks = Vec::new();
    let mut start = 0;
    for point in points {
        chunks.push(Bytes::copy_from_slice(&data[start..point]));
        start = point;
    }
    chunks.push(Bytes::copy_from_slice(&data[start..]));
    chunks
}

/// Polls `body` once, without waiting: its next data frame if it has one ready,
/// `None` when it is pending or ended.
fn poll_now<B>(body: &mut Pin<Box<B>>) -> Option<Bytes>
where
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    match body.as_mut().poll_frame(&mut cx) {
        Poll::Ready(Some(frame)) => Some(frame.unwrap().into_data().unwrap()),
        Poll::Ready(None) | Poll::Pending => None,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn responses_round_trip_exactly(
        coding in coding(),
        data in body(),
        cuts in prop::collection::vec(0.0..1.0f64, 0..12),
    ) {
        let frames = chunk(&data, &cuts);
        let service = CompressionLayer::new().min_size(0).layer(service_fn(move |_: Request<()>| {
            let frames = frames.iter().cloned().map(|b| Ok::<_, Infallible>(Frame::data(b))).collect();
            let response = Response::builder()
                .header(CONTENT_TYPE, "text/plain")
                .body(support::Frames::new(frames))
                .unwrap();
            async move { Ok::<_, Infallible>(response) }
        }));
        let request = Request::get("/").header(ACCEPT_ENCODING, coding.as_str()).body(()).unwrap();
        let encoded = runtime().block_on(async {
            let response = service.oneshot(request).await.unwrap();
            assert_eq!(response.headers()[CONTENT_ENCODING], coding.as_str());
            response.into_body().collect().await.unwrap().to_bytes()
        });
        prop_assert_eq!(support::decode(coding, &encoded), data);
    }

    /// A stream whose chunks arrive one at a time, with the body pending in
    /// between: after each chunk, what the client received decodes to exactly the
    /// chunks produced so far (the encoder was flushed), and the whole response is
    /// one valid stream of the coding holding exactly the data.
    #[test]
    fn streamed_responses_are_decodable_after_every_chunk(
        coding in coding(),
        data in body(),
        cuts in prop::collection::vec(0.0..1.0f64, 0..12),
        first_ready in any::<bool>(),
    ) {
        let chunks = chunk(&data, &cuts);
        let (tx, channel) = support::ChannelBody::new();
        let channel = std::sync::Mutex::new(Some(channel));
        let service = CompressionLayer::new().layer(service_fn(move |_: Request<()>| {
            let body = channel.lock().unwrap().take().unwrap();
            let response = Response::builder()
                .header(CONTENT_TYPE, "text/event-stream")
                .body(body)
                .unwrap();
            async move { Ok::<_, Infallible>(response) }
        }));
        let mut chunks = chunks.into_iter();
        let mut produced = Vec::new();
        // The first chunk may be ready before the head is decided (the layer
        // reads ahead to check the minimum size) or not.
        if first_ready {
            let first = chunks.next().unwrap();
            produced.extend_from_slice(&first);
            tx.send(Frame::data(first)).unwrap();
        }
        let request = Request::get("/").header(ACCEPT_ENCODING, coding.as_str()).body(()).unwrap();
        let response = runtime().block_on(service.oneshot(request)).unwrap();
        prop_assert_eq!(&response.headers()[CONTENT_ENCODING], coding.as_str());

        let mut body = Box::pin(response.into_body());
        let mut decoder = support::StreamDecoder::new(coding);
        let mut received = Vec::new();
        let mut drain = |body: &mut Pin<Box<_>>, received: &mut Vec<u8>| {
            let mut decoded = Vec::new();
            while let Some(bytes) = poll_now(body) {
                received.extend_from_slice(&bytes);
                decoded = decoder.push(&bytes).to_vec();
            }
            decoded
        };
        let decoded = drain(&mut body, &mut received);
        if !produced.is_empty() {
            prop_assert!(
                decoded == produced,
                "{coding}: {} of the first {} bytes decoded",
                decoded.len(),
                produced.len()
            );
        }
        for next in chunks {
            produced.extend_from_slice(&next);
            let size = next.len();
            tx.send(Frame::data(next)).unwrap();
            let decoded = drain(&mut body, &mut received);
            // An empty chunk may produce no output at all; anything else must
            // decode, in full, before the next chunk is produced.
            if (size > 0 || !decoded.is_empty()) && !produced.is_empty() {
                prop_assert!(
                    decoded == produced,
                    "{coding}: {} of {} bytes decoded after a chunk of {size}",
                    decoded.len(),
                    produced.len()
                );
            }
        }
        drop(tx);
        drain(&mut body, &mut received);
        prop_assert!(body.is_end_stream());
        prop_assert!(
            support::decode(coding, &received) == data,
            "{coding}: the whole stream does not decode to the data"
        );
    }

    #[test]
    fn requests_round_trip_exactly(
        coding in coding(),
        data in body(),
        cuts in prop::collection::vec(0.0..1.0f64, 0..12),
    ) {
        let encoded = support::encode(coding, &data);
        let frames: Vec<_> = chunk(&encoded, &cuts)
            .into_iter()
            .map(|b| Ok::<_, Infallible>(Frame::data(b)))
            .collect();
        let request = Request::post("/")
            .header(CONTENT_ENCODING, coding.as_str())
            .body(support::Frames::new(frames))
            .unwrap();
        let service = RequestDecompressionLayer::new().layer(service_fn(
            |request: Request<DecompressedBody<support::Frames<Infallible>>>| async move {
                let body = request.into_body().collect().await.unwrap().to_bytes();
                Ok::<_, Infallible>(Response::new(http_body_util::Full::new(body)))
            },
        ));
        let (status, decoded) = runtime().block_on(async {
            let response = service.oneshot(request).await.unwrap();
            let status = response.status();
            (status, response.into_body().collect().await.unwrap().to_bytes())
        });
        prop_assert_eq!(status, StatusCode::OK);
        prop_assert_eq!(decoded, data);
    }

    #[test]
    fn negotiation_never_picks_an_excluded_coding(
        members in prop::collection::vec(
            (
                prop::sample::select(vec!["gzip", "GZip", "br", "zstd", "deflate", "identity", "*", "compress", ""]),
                prop::option::of(0u16..=1000),
            ),
            0..6,
        ),
    ) {
        let header: Vec<String> = members
            .iter()
            .map(|(token, q)| match q {
                Some(q) => format!("{token} ; q={}.{:03}", q / 1000, q % 1000),
                None => (*token).to_owned(),
            })
            .collect();
        let header = header.join(" ,");
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT_ENCODING, HeaderValue::from_str(&header).unwrap());
        let chosen = negotiate(&headers, &Preference::default());
        if let Negotiated::Coding(coding) = chosen {
            // The chosen coding has a positive weight, by itself or through `*`.
            let own: Vec<u16> = members
                .iter()
                .filter(|(t, _)| t.eq_ignore_ascii_case(coding.as_str()))
                .map(|(_, q)| q.unwrap_or(1000))
                .collect();
            let weight = own.iter().max().copied().or_else(|| {
                members.iter().filter(|(t, _)| *t == "*").map(|(_, q)| q.unwrap_or(1000)).max()
            });
            prop_assert!(weight.unwrap_or(0) > 0, "{header:?} chose {coding}");
        }
    }
}
