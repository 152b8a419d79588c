//! Request decompression: decoding, limits, bombs and refusals.

#![cfg(feature = "compression-full")]

#[path = "compression/support.rs"]
mod support;

use std::convert::Infallible;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::header::{ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{Layer, ServiceExt, service_fn};
use tower_toolbox::compression::{Coding, DecompressedBody, RequestDecompressionLayer};

use support::CountingBody;

/// What the inner service saw: its request headers and body.
#[derive(Debug, Default)]
struct Seen {
    calls: AtomicUsize,
    request: std::sync::Mutex<Option<(http::HeaderMap, Bytes)>>,
}

/// Sends `request` through `layer` to an echoing service; returns the response's
/// status, headers and body, and what the service saw.
async fn send<B>(
    layer: RequestDecompressionLayer,
    request: Request<B>,
) -> (StatusCode, http::HeaderMap, Bytes, Arc<Seen>)
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: std::fmt::Debug,
{
    let seen = Arc::new(Seen::default());
    let recorder = seen.clone();
    let service = layer.layer(service_fn(move |request: Request<DecompressedBody<B>>| {
        let recorder = recorder.clone();
        async move {
            recorder.calls.fetch_add(1, Ordering::SeqCst);
            let (parts, body) = request.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            *recorder.request.lock().unwrap() = Some((parts.headers, body.clone()));
            Ok::<_, Infallible>(Response::new(Full::new(body)))
        }
    }));
    let response = service.oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, body, seen)
}

fn post(coding: &str, body: Vec<u8>) -> Request<Full<Bytes>> {
    Request::post("/upload")
        .header(CONTENT_ENCODING, coding)
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

fn problem(body: &Bytes) -> serde_json::Value {
    serde_json::from_slice(body).expect("a problem+json body")
}

#[tokio::test]
async fn each_coding_is_decoded_before_the_service_sees_the_body() {
    let original = br#"{"items":[1,2,3,4,5,6,7,8,9,10],"note":"decoded before the handler"}"#;
    for coding in Coding::ALL {
        let request = post(coding.as_str(), support::encode(coding, original));
        let (status, _, body, seen) = send(RequestDecompressionLayer::new(), request).await;

        assert_eq!(status, StatusCode::OK, "{coding}");
        assert_eq!(body, &original[..], "{coding}");
        let (headers, _) = seen.request.lock().unwrap().take().unwrap();
        assert!(headers.get(CONTENT_ENCODING).is_none(), "{coding}");
        assert_eq!(headers[CONTENT_LENGTH], original.len().to_string());
        assert_eq!(headers[CONTENT_TYPE], "application/json");
    }
}

#[tokio::test]
async fn uncompressed_requests_pass_through_unchanged() {
    let request = Request::post("/")
        .header(CONTENT_LENGTH, "5")
        .body(Full::new(Bytes::from_static(b"plain")))
        .unwrap();
    let (status, _, body, seen) = send(RequestDecompressionLayer::new(), request).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "plain");
    let (headers, _) = seen.request.lock().unwrap().take().unwrap();
    assert_eq!(headers[CONTENT_LENGTH], "5");

    let request = post("identity", b"as is".to_vec());
    let (status, _, body, _) = send(RequestDecompressionLayer::new(), request).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "as is");
}

#[tokio::test]
async fn unknown_codings_are_refused_with_415_and_the_supported_list() {
    for coding in ["compress", "x-unknown", "gzip, br"] {
        let request = post(coding, b"whatever".to_vec());
        let (status, headers, body, seen) = send(RequestDecompressionLayer::new(), request).await;

        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{coding}");
        assert_eq!(headers[CONTENT_TYPE], "application/problem+json");
        assert_eq!(
            headers[ACCEPT_ENCODING],
            "zstd, br, gzip, deflate, identity"
        );
        assert_eq!(problem(&body)["status"], 415);
        assert_eq!(seen.calls.load(Ordering::SeqCst), 0, "{coding}");
    }
}

#[tokio::test]
async fn corrupt_and_truncated_bodies_are_refused_with_400() {
    let valid = support::encode(Coding::Gzip, &[b'x'; 10_000]);
    let truncated = valid[..valid.len() / 2].to_vec();
    let cases = [
        ("gzip", b"definitely not gzip".to_vec()),
        ("gzip", truncated),
        ("br", vec![0xff; 64]),
        ("zstd", b"\x28\xb5\x2f\xfdgarbage".to_vec()),
        ("deflate", vec![0x78, 0x9c, 0xff, 0xff, 0xff]),
    ];
    for (coding, body) in cases {
        let (status, headers, body, seen) =
            send(RequestDecompressionLayer::new(), post(coding, body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{coding}");
        assert_eq!(headers[CONTENT_TYPE], "application/problem+json");
        let problem = problem(&body);
        assert_eq!(problem["status"], 400);
        assert!(
            problem["detail"].as_str().unwrap().contains("corrupt"),
            "{problem}"
        );
        assert_eq!(seen.calls.load(Ordering::SeqCst), 0, "{coding}");
    }
}

const TEN_MIB: usize = 10 * 1024 * 1024;

/// 10 MiB of zeros compressed as hard as `coding` allows.
fn bomb(coding: Coding) -> Vec<u8> {
    support::encode_at(coding, &vec![0; TEN_MIB], coding.levels().1)
}

/// What sending a bomb did: the answer, how much of the body the layer pulled,
/// and the refusal event's counts of compressed and decoded bytes.
struct BombOutcome {
    status: StatusCode,
    detail: String,
    calls: usize,
    pulled: u64,
    encoded: u64,
    decoded: u64,
}

/// Sends `bomb` in `frame`-byte frames through `layer`.
async fn send_bomb(
    layer: RequestDecompressionLayer,
    coding: Coding,
    bomb: &[u8],
    frame: usize,
) -> BombOutcome {
    let events = support::Events::default();
    let _capture = events.capture();
    let (body, pulled) = CountingBody::new(bomb, frame);
    let request = Request::post("/")
        .header(CONTENT_ENCODING, coding.as_str())
        .body(body)
        .unwrap();
    let (status, _, body, seen) = send(layer, request).await;

    let refusals = events.with_message("refusing a compressed request body");
    assert_eq!(refusals.len(), 1, "{coding}: one refusal event");
    let count = |name: &str| refusals[0][name].parse::<u64>().unwrap();
    BombOutcome {
        status,
        detail: problem(&body)["detail"].as_str().unwrap().to_owned(),
        calls: seen.calls.load(Ordering::SeqCst),
        pulled: pulled.load(Ordering::SeqCst),
        encoded: count("encoded"),
        decoded: count("decoded"),
    }
}

#[tokio::test]
async fn ten_mib_zero_bombs_stop_one_byte_past_the_size_limit_having_read_only_what_that_takes() {
    const LIMIT: u64 = 1024 * 1024;
    const FRAME: usize = 16;
    for coding in [Coding::Gzip, Coding::Zstd] {
        let bomb = bomb(coding);
        let layer = RequestDecompressionLayer::new()
            .max_size(LIMIT)
            .max_ratio(NonZeroU32::MAX);
        let outcome = send_bomb(layer, coding, &bomb, FRAME).await;

        assert_eq!(outcome.status, StatusCode::PAYLOAD_TOO_LARGE, "{coding}");
        assert_eq!(
            outcome.detail,
            "the request body decodes to more than 1048576 bytes"
        );
        assert_eq!(outcome.calls, 0, "{coding}");
        // Decoding stopped one byte past the limit, never further.
        assert_eq!(outcome.decoded, LIMIT + 1, "{coding}");
        // Every byte pulled was decoded, and no frame was pulled past the one
        // where the output first exceeds the limit.
        let needed = support::frames_to_exceed(coding, &bomb, FRAME, LIMIT as usize)
            .expect("the bomb exceeds the limit");
        assert_eq!(outcome.pulled, (needed * FRAME) as u64, "{coding}");
        assert_eq!(outcome.encoded, outcome.pulled, "{coding}");
        assert!(outcome.pulled < bomb.len() as u64, "{coding}");
    }
}

#[tokio::test]
async fn ten_mib_zero_bombs_are_refused_by_the_default_ratio_within_96_kib_decoded() {
    for coding in [Coding::Gzip, Coding::Zstd] {
        let bomb = bomb(coding);
        // Small frames, and the whole bomb in one frame as a socket would hand it over.
        for frame in [16, bomb.len()] {
            let outcome = send_bomb(RequestDecompressionLayer::new(), coding, &bomb, frame).await;

            assert_eq!(outcome.status, StatusCode::PAYLOAD_TOO_LARGE, "{coding}");
            assert_eq!(
                outcome.detail,
                "the request body expands more than 100 times (checked past 65536 decoded bytes)"
            );
            assert_eq!(outcome.calls, 0, "{coding}");
            // Stopped in the first 32 KiB of output past the 64 KiB grace, whether
            // the bomb came in one frame or many: far below the 2 MiB limit.
            assert!(
                (65_536 + 1..=98_304).contains(&outcome.decoded),
                "{coding}/{frame}: decoded {}",
                outcome.decoded
            );
            // The ratio binds as soon as the grace is passed (a bomb's first
            // 64 KiB come from a few hundred bytes at most), so exactly the frames
            // that take the output past 64 KiB were pulled, and all were decoded.
            let needed = support::frames_to_exceed(coding, &bomb, frame, 65_536)
                .expect("the bomb exceeds 64 KiB");
            assert_eq!(outcome.pulled, (needed * frame) as u64, "{coding}/{frame}");
            assert_eq!(outcome.encoded, outcome.pulled, "{coding}/{frame}");
        }
    }
}

#[tokio::test]
async fn a_declared_length_over_the_limit_is_refused_before_reading() {
    let (body, pulled) = CountingBody::new(&[0u8; 4096], 1024);
    let request = Request::post("/")
        .header(CONTENT_ENCODING, "gzip")
        .header(CONTENT_LENGTH, "4096")
        .body(body)
        .unwrap();
    let (status, _, _, seen) = send(RequestDecompressionLayer::new().max_size(1024), request).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(pulled.load(Ordering::SeqCst), 0);
    assert_eq!(seen.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_compressed_body_larger_than_the_limit_is_refused_even_if_it_decodes_to_nothing() {
    // Hundreds of empty gzip members: kilobytes of input, zero bytes of output.
    let empty_member = support::encode(Coding::Gzip, b"");
    let members: Vec<u8> = empty_member.repeat(300);
    assert!(members.len() > 4096);
    let (body, pulled) = CountingBody::new(&members, 512);
    let request = Request::post("/")
        .header(CONTENT_ENCODING, "gzip")
        .body(body)
        .unwrap();
    let layer = RequestDecompressionLayer::new().max_size(4096);
    let (status, _, body, _) = send(layer, request).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        problem(&body)["detail"],
        "the compressed request body is larger than 4096 bytes"
    );
    assert!(pulled.load(Ordering::SeqCst) <= 4096 + 512);
}

#[tokio::test]
async fn a_body_exactly_at_the_limit_is_accepted() {
    let data = vec![b'a'; 4096];
    let request = post("zstd", support::encode(Coding::Zstd, &data));
    let layer = RequestDecompressionLayer::new().max_size(4096);
    let (status, _, body, _) = send(layer, request).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.len(), 4096);

    let data = vec![b'a'; 4097];
    let request = post("zstd", support::encode(Coding::Zstd, &data));
    let layer = RequestDecompressionLayer::new().max_size(4096);
    let (status, _, _, _) = send(layer, request).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn an_empty_body_declared_compressed_is_an_empty_body() {
    let (status, _, body, seen) =
        send(RequestDecompressionLayer::new(), post("gzip", vec![])).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.is_empty());
    assert_eq!(seen.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn grpc_requests_are_refused_with_a_grpc_status() {
    let request = Request::post("/pkg.Svc/Call")
        .header(CONTENT_TYPE, "application/grpc")
        .header(CONTENT_ENCODING, "compress")
        .body(Full::new(Bytes::from_static(b"x")))
        .unwrap();
    let (status, headers, _, _) = send(RequestDecompressionLayer::new(), request).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["grpc-status"], "12");
}

#[tokio::test]
async fn a_decoded_chunked_body_is_handed_on_with_a_length_not_chunked() {
    let mut request = post("gzip", support::encode(Coding::Gzip, b"chunked upload"));
    request
        .headers_mut()
        .insert(http::header::TRANSFER_ENCODING, "chunked".parse().unwrap());
    let (status, _, body, seen) = send(RequestDecompressionLayer::new(), request).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "chunked upload");
    let (headers, _) = seen.request.lock().unwrap().take().unwrap();
    assert!(headers.get(http::header::TRANSFER_ENCODING).is_none());
    assert_eq!(headers[CONTENT_LENGTH], "14");
}
