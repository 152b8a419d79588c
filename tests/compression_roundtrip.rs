//! Property tests: every coding round-trips any bytes in any chunking, both ways,
//! and negotiation never panics or picks a refused coding.

#![cfg(feature = "compression-full")]

#[path = "compression/support.rs"]
mod support;

use std::convert::Infallible;

use bytes::Bytes;
use http::header::{ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::Frame;
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
