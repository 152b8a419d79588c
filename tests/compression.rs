//! Response compression: negotiation, what is and is not compressed, headers and
//! levels, at the service level. Streamed bodies are in `compression_stream.rs`.

#![cfg(feature = "compression-full")]

#[path = "compression/support.rs"]
mod support;

use std::convert::Infallible;

use bytes::Bytes;
use http::header::{
    ACCEPT_ENCODING, ACCEPT_RANGES, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE,
    ETAG, VARY,
};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use support::{accepting, body_bytes, get, json_body, json_response, through};
use tower::{Layer, ServiceExt, service_fn};
use tower_toolbox::compression::{
    Coding, CompressionLayer, Level, Negotiated, Preference, negotiate, predicate_fn,
};

#[test]
fn negotiation_follows_rfc_9110_weights_and_server_preference() {
    use Coding::*;
    use Negotiated::{Coding as C, Identity, NotAcceptable};
    let table: &[(&str, Negotiated)] = &[
        ("gzip", C(Gzip)),
        ("GZIP", C(Gzip)),
        ("x-gzip", C(Gzip)),
        ("gzip, deflate, br, zstd", C(Zstd)),
        ("gzip, br", C(Brotli)),
        ("deflate, gzip", C(Gzip)),
        ("gzip;q=1.0, br;q=0.8", C(Gzip)),
        ("br;q=0.5, gzip;q=0.9, zstd;q=0.1", C(Gzip)),
        (" gzip ;  q=0.5 ,\tbr ; q=0.5 ", C(Brotli)),
        ("*", C(Zstd)),
        ("*;q=0.5, gzip", C(Gzip)),
        ("zstd;q=0, *", C(Brotli)),
        ("zstd;q=0, br;q=0, *", C(Gzip)),
        ("gzip;q=0", Identity),
        ("identity", Identity),
        ("", Identity),
        ("compress, sdch", Identity),
        ("gzip;q=0.5, identity;q=1", Identity),
        ("gzip;q=0.5, identity;q=0.5", C(Gzip)),
        ("identity;q=0", NotAcceptable),
        ("*;q=0", NotAcceptable),
        ("compress, identity;q=0", NotAcceptable),
        ("gzip;q=0, *;q=0", NotAcceptable),
        ("*;q=0, identity", Identity),
        ("*;q=0, gzip", C(Gzip)),
        ("gzip;q=2, br", C(Brotli)),
        ("gzip;q=0.5000, br;q=0.4", C(Brotli)),
        ("gzip;q=0.001", C(Gzip)),
        ("gzip;level=1;q=0.7, br;q=0.6", C(Gzip)),
        (",,gzip,,", C(Gzip)),
        ("gzip;q=0, gzip;q=0.4", C(Gzip)),
        ("IDENTITY;Q=0", NotAcceptable),
        ("identity;q=0, gzip", C(Gzip)),
        ("identity;q=0, *;q=0.1", C(Zstd)),
        (
            "identity;q=0, br;q=0, zstd;q=0, gzip;q=0, deflate;q=0",
            NotAcceptable,
        ),
        ("br;q=0.9, *;q=0", C(Brotli)),
        ("*;q=0.3, identity;q=0.5", Identity),
        ("zstd;q=0.", Identity),
        ("gzip;q=0.8;foo=bar", C(Gzip)),
        ("gzip;q=abc, br;q=0.1", C(Brotli)),
        ("gzip;q=-1, br;q=0.1", C(Brotli)),
        ("gzip q=0.5", Identity),
        ("\tBr\t;\tq=0.7 , DEFLATE", C(Deflate)),
    ];
    for (header, expected) in table {
        assert_eq!(
            negotiate(&accepting(header), &Preference::default()),
            *expected,
            "Accept-Encoding: {header:?}"
        );
    }
    assert_eq!(
        negotiate(&HeaderMap::new(), &Preference::default()),
        Identity,
        "no Accept-Encoding"
    );
}

#[test]
fn server_preference_breaks_ties_and_limits_the_offer() {
    let gzip_first = Preference::new([Coding::Gzip, Coding::Brotli]);
    assert_eq!(
        negotiate(&accepting("br, gzip, zstd"), &gzip_first),
        Negotiated::Coding(Coding::Gzip)
    );
    assert_eq!(
        negotiate(&accepting("zstd"), &gzip_first),
        Negotiated::Identity
    );
    assert_eq!(
        negotiate(&accepting("zstd, identity;q=0"), &gzip_first),
        Negotiated::NotAcceptable
    );
    // Several Accept-Encoding lines are one list.
    let mut headers = accepting("zstd;q=0.2");
    headers.append(ACCEPT_ENCODING, HeaderValue::from_static("br;q=0.3"));
    assert_eq!(
        negotiate(&headers, &Preference::default()),
        Negotiated::Coding(Coding::Brotli)
    );
}

#[tokio::test]
async fn each_coding_round_trips_a_json_body_with_compressed_headers() {
    let body = json_body(20_000);
    for coding in Coding::ALL {
        let request = get(coding.as_str());
        let mut response = json_response(&body);
        response
            .headers_mut()
            .insert(ETAG, HeaderValue::from_static("\"v7\""));
        response
            .headers_mut()
            .insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        let response = through(CompressionLayer::new(), request, response).await;
        let (parts, compressed) = body_bytes(response).await;

        assert_eq!(parts.headers[CONTENT_ENCODING], coding.as_str());
        assert_eq!(parts.headers[VARY], "accept-encoding");
        assert_eq!(parts.headers[ETAG], "W/\"v7\"");
        assert!(parts.headers.get(CONTENT_LENGTH).is_none());
        assert!(parts.headers.get(ACCEPT_RANGES).is_none());
        assert!(
            compressed.len() < body.len() / 5,
            "{coding}: {}",
            compressed.len()
        );
        assert_eq!(
            support::decode(coding, &compressed),
            body.as_bytes(),
            "{coding}"
        );
    }
}

/// The layer is the raw encoder at the coding's default level, framed for HTTP
/// and nothing else: on a 1 MB document its output is as long as the reference
/// encoder's, byte for byte in length, for every coding. (The benchmark relies on
/// this to compare like with like.)
#[tokio::test]
async fn a_1_mb_document_compresses_to_the_raw_encoders_size_at_each_default_level() {
    let body = json_body(1_000_000);
    for coding in Coding::ALL {
        let response = through(
            CompressionLayer::new(),
            get(coding.as_str()),
            json_response(&body),
        )
        .await;
        let (parts, compressed) = body_bytes(response).await;
        assert_eq!(parts.headers[CONTENT_ENCODING], coding.as_str());
        assert_eq!(
            support::decode(coding, &compressed),
            body.as_bytes(),
            "{coding}"
        );
        // zstd's one-shot API writes the content size into the frame header; the
        // streaming API, like a response of unknown length, does not.
        let raw = match coding {
            Coding::Zstd => zstd::stream::encode_all(body.as_bytes(), 3).unwrap(),
            _ => support::encode(coding, body.as_bytes()),
        };
        assert_eq!(compressed.len(), raw.len(), "{coding}");
    }
}

/// tower-http's layer at `CompressionLevel::Precise(level)` compresses at the
/// same level as ours at that level: the same document comes out the same size,
/// to within 0.5% (tower-http's deflate streams carry a few more block
/// boundaries, about 0.1% more bytes; zstd and brotli come out byte for byte the
/// same length). The
/// benchmark compares the two on this footing.
#[tokio::test]
async fn tower_http_at_the_same_precise_level_gives_the_same_size() {
    let body = json_body(1_000_000);
    for coding in Coding::ALL {
        let ours = through(
            CompressionLayer::new(),
            get(coding.as_str()),
            json_response(&body),
        )
        .await;
        let (_, ours) = body_bytes(ours).await;
        let response = std::sync::Mutex::new(Some(json_response(&body)));
        let peer = tower_http::compression::CompressionLayer::new()
            .quality(tower_http::CompressionLevel::Precise(
                coding.default_level(),
            ))
            .layer(service_fn(move |_: Request<()>| {
                let response = response.lock().unwrap().take().unwrap();
                async move { Ok::<_, Infallible>(response) }
            }))
            .oneshot(get(coding.as_str()))
            .await
            .unwrap();
        assert_eq!(peer.headers()[CONTENT_ENCODING], coding.as_str());
        let peer = peer.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(support::decode(coding, &peer), body.as_bytes(), "{coding}");
        let within = |a: usize, b: usize| a.abs_diff(b) * 200 <= b;
        assert!(
            within(peer.len(), ours.len()),
            "{coding}: {} against {}",
            peer.len(),
            ours.len()
        );
    }
}

#[tokio::test]
async fn a_client_without_a_usable_coding_gets_identity_with_vary() {
    let body = json_body(2_000);
    for accept in ["identity", "compress", "gzip;q=0"] {
        let response = through(CompressionLayer::new(), get(accept), json_response(&body)).await;
        let (parts, bytes) = body_bytes(response).await;
        assert!(parts.headers.get(CONTENT_ENCODING).is_none(), "{accept}");
        assert_eq!(parts.headers[CONTENT_LENGTH], body.len().to_string());
        assert_eq!(parts.headers[VARY], "accept-encoding");
        assert_eq!(bytes, body.as_bytes());
    }
}

#[tokio::test]
async fn refusing_identity_and_every_coding_is_answered_406_without_the_service() {
    let called = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = called.clone();
    let service = CompressionLayer::new().layer(service_fn(move |_: Request<()>| {
        seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async { Ok::<_, Infallible>(json_response("{}")) }
    }));
    let response = service
        .oneshot(get("compress, identity;q=0"))
        .await
        .unwrap();
    let (parts, body) = body_bytes(response).await;

    assert_eq!(parts.status, StatusCode::NOT_ACCEPTABLE);
    assert_eq!(parts.headers[CONTENT_TYPE], "application/problem+json");
    let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(problem["status"], 406);
    assert_eq!(
        problem["offered"],
        serde_json::json!(["zstd", "br", "gzip", "deflate"])
    );
    assert_eq!(called.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test]
async fn bodies_below_the_minimum_size_are_left_alone_without_vary() {
    let small = "{\"ok\":true,\"n\":1234567890123}"; // 30 bytes
    assert!(small.len() < 32);
    let response = through(CompressionLayer::new(), get("gzip"), json_response(small)).await;
    let (parts, bytes) = body_bytes(response).await;
    assert!(parts.headers.get(CONTENT_ENCODING).is_none());
    assert!(parts.headers.get(VARY).is_none());
    assert_eq!(bytes, small);

    // Exactly the minimum is compressed.
    let exact = "x".repeat(32);
    let response = Response::builder()
        .header(CONTENT_TYPE, "text/plain")
        .body(Full::new(Bytes::from(exact.clone())))
        .unwrap();
    let response = through(CompressionLayer::new(), get("gzip"), response).await;
    let (parts, bytes) = body_bytes(response).await;
    assert_eq!(parts.headers[CONTENT_ENCODING], "gzip");
    assert_eq!(support::decode(Coding::Gzip, &bytes), exact.as_bytes());
}

#[tokio::test]
async fn content_types_outside_the_predicate_are_left_alone() {
    let body = json_body(4_000);
    for content_type in ["image/png", "application/zip", "video/mp4", "font/woff2"] {
        let response = Response::builder()
            .header(CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body.clone())))
            .unwrap();
        let response = through(CompressionLayer::new(), get("gzip, br"), response).await;
        let (parts, bytes) = body_bytes(response).await;
        assert!(
            parts.headers.get(CONTENT_ENCODING).is_none(),
            "{content_type}"
        );
        assert!(parts.headers.get(VARY).is_none(), "{content_type}");
        assert_eq!(bytes, body.as_bytes());
    }

    // No Content-Type at all: unknown content is not guessed at.
    let response = Response::new(Full::new(Bytes::from(body.clone())));
    let response = through(CompressionLayer::new(), get("gzip"), response).await;
    assert!(response.headers().get(CONTENT_ENCODING).is_none());
}

#[tokio::test]
async fn a_custom_predicate_replaces_the_content_type_list() {
    let layer = CompressionLayer::new().predicate(predicate_fn(|response| {
        response.headers.get("x-compress").is_some()
    }));
    let body = json_body(4_000);
    let service = layer.layer(service_fn(move |request: Request<()>| {
        let mut response = Response::builder().header(CONTENT_TYPE, "application/octet-stream");
        if request.uri().path() == "/yes" {
            response = response.header("x-compress", "1");
        }
        let response = response.body(Full::new(Bytes::from(body.clone()))).unwrap();
        async move { Ok::<_, Infallible>(response) }
    }));
    let yes = Request::get("/yes")
        .header(ACCEPT_ENCODING, "gzip")
        .body(())
        .unwrap();
    let no = Request::get("/no")
        .header(ACCEPT_ENCODING, "gzip")
        .body(())
        .unwrap();
    let yes = service.clone().oneshot(yes).await.unwrap();
    let no = service.oneshot(no).await.unwrap();
    assert_eq!(yes.headers()[CONTENT_ENCODING], "gzip");
    assert!(no.headers().get(CONTENT_ENCODING).is_none());
}

#[tokio::test]
async fn bodiless_statuses_head_and_ranges_are_untouched() {
    let body = json_body(4_000);
    let cases: Vec<(Method, StatusCode, Option<&str>)> = vec![
        (Method::GET, StatusCode::NO_CONTENT, None),
        (Method::GET, StatusCode::RESET_CONTENT, None),
        (Method::GET, StatusCode::NOT_MODIFIED, None),
        (Method::HEAD, StatusCode::OK, None),
        (
            Method::GET,
            StatusCode::PARTIAL_CONTENT,
            Some("bytes 0-99/4000"),
        ),
        (Method::GET, StatusCode::OK, Some("bytes 0-3999/4000")),
    ];
    for (method, status, range) in cases {
        let request = Request::builder()
            .method(method.clone())
            .header(ACCEPT_ENCODING, "gzip, br, zstd")
            .body(())
            .unwrap();
        let mut response = json_response(&body);
        *response.status_mut() = status;
        response
            .headers_mut()
            .insert(ETAG, HeaderValue::from_static("\"strong\""));
        if let Some(range) = range {
            response
                .headers_mut()
                .insert(CONTENT_RANGE, HeaderValue::from_str(range).unwrap());
        }
        let expected = response.headers().clone();
        let response = through(CompressionLayer::new(), request, response).await;
        let (parts, bytes) = body_bytes(response).await;
        assert_eq!(parts.headers, expected, "{method} {status}");
        assert_eq!(bytes, body.as_bytes(), "{method} {status}");
    }
}

#[tokio::test]
async fn already_encoded_responses_are_not_encoded_again() {
    let body = support::encode(Coding::Gzip, json_body(4_000).as_bytes());
    let response = Response::builder()
        .header(CONTENT_TYPE, "application/json")
        .header(CONTENT_ENCODING, "gzip")
        .body(Full::new(Bytes::from(body.clone())))
        .unwrap();
    let response = through(CompressionLayer::new(), get("br"), response).await;
    let (parts, bytes) = body_bytes(response).await;
    assert_eq!(parts.headers[CONTENT_ENCODING], "gzip");
    assert_eq!(bytes, body);
}

#[tokio::test]
async fn grpc_requests_and_responses_are_untouched() {
    let body = json_body(4_000);
    let grpc_request = Request::post("/pkg.Svc/Call")
        .header(CONTENT_TYPE, "application/grpc")
        .header(ACCEPT_ENCODING, "gzip")
        .body(())
        .unwrap();
    let response = Response::builder()
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.clone())))
        .unwrap();
    let response = through(CompressionLayer::new(), grpc_request, response).await;
    assert!(response.headers().get(CONTENT_ENCODING).is_none());
    assert!(response.headers().get(VARY).is_none());

    // A gRPC response to a request that did not say so.
    let response = Response::builder()
        .header(CONTENT_TYPE, "application/grpc+proto")
        .body(Full::new(Bytes::from(body.clone())))
        .unwrap();
    let response = through(CompressionLayer::new(), get("gzip"), response).await;
    let (parts, bytes) = body_bytes(response).await;
    assert!(parts.headers.get(CONTENT_ENCODING).is_none());
    assert_eq!(bytes, body.as_bytes());
}

#[tokio::test]
async fn vary_is_merged_into_the_existing_field_not_duplicated() {
    let body = json_body(4_000);
    let cases = [
        (vec!["Origin"], "Origin, accept-encoding"),
        (vec!["Origin", "Cookie"], "Origin, Cookie, accept-encoding"),
        (vec!["Accept-Encoding, Origin"], "Accept-Encoding, Origin"),
        (vec!["*"], "*"),
    ];
    for (existing, expected) in cases {
        let mut response = json_response(&body);
        for line in &existing {
            response
                .headers_mut()
                .append(VARY, HeaderValue::from_str(line).unwrap());
        }
        let response = through(CompressionLayer::new(), get("gzip"), response).await;
        let vary: Vec<_> = response.headers().get_all(VARY).iter().collect();
        assert_eq!(vary, [expected], "{existing:?}");
    }
}

#[tokio::test]
async fn weak_etags_stay_weak() {
    let mut response = json_response(&json_body(4_000));
    response
        .headers_mut()
        .insert(ETAG, HeaderValue::from_static("W/\"v1\""));
    let response = through(CompressionLayer::new(), get("gzip"), response).await;
    assert_eq!(response.headers()[ETAG], "W/\"v1\"");
}

#[tokio::test]
async fn levels_are_set_per_coding_and_per_response() {
    let body = json_body(200_000);
    let size = |layer: CompressionLayer, level: Option<Level>| {
        let body = body.clone();
        async move {
            let mut response = json_response(&body);
            if let Some(level) = level {
                response.extensions_mut().insert(level);
            }
            let response = through(layer, get("br"), response).await;
            let (_, bytes) = body_bytes(response).await;
            assert_eq!(support::decode(Coding::Brotli, &bytes), body.as_bytes());
            bytes.len()
        }
    };
    let default = size(CompressionLayer::new(), None).await;
    let fastest = size(
        CompressionLayer::new().level(Coding::Brotli, Level::Fastest),
        None,
    )
    .await;
    let best_for_one = size(CompressionLayer::new(), Some(Level::Best)).await;

    // Brotli 0 is raw-ish and larger; brotli 11 is smaller than the default 4.
    assert!(fastest > default, "fastest {fastest} default {default}");
    assert!(
        best_for_one < default,
        "best {best_for_one} default {default}"
    );
    // The layer's level is exactly what a raw encoder at that level gives.
    assert_eq!(
        default,
        support::encode_at(Coding::Brotli, body.as_bytes(), 4).len()
    );
}

#[tokio::test]
async fn the_layer_uses_its_configured_preference() {
    let body = json_body(4_000);
    let layer = CompressionLayer::new().preference(Preference::new([Coding::Gzip, Coding::Brotli]));
    let response = through(layer.clone(), get("br, gzip, zstd"), json_response(&body)).await;
    assert_eq!(response.headers()[CONTENT_ENCODING], "gzip");
    let response = through(layer, get("zstd"), json_response(&body)).await;
    assert!(response.headers().get(CONTENT_ENCODING).is_none());
}

#[tokio::test]
async fn an_identity_content_encoding_is_replaced_by_the_coding() {
    let body = json_body(4_000);
    let mut response = json_response(&body);
    response
        .headers_mut()
        .insert(CONTENT_ENCODING, HeaderValue::from_static("identity"));
    let response = through(CompressionLayer::new(), get("deflate"), response).await;
    let values: Vec<_> = response
        .headers()
        .get_all(CONTENT_ENCODING)
        .iter()
        .collect();
    assert_eq!(values, ["deflate"]);
    let (_, bytes) = body_bytes(response).await;
    assert_eq!(support::decode(Coding::Deflate, &bytes), body.as_bytes());
}
