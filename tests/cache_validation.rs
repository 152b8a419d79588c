//! Revalidation, clients' conditionals, invalidation, stale-while-revalidate and
//! stale-if-error, on a manual clock.

mod cache_support;

use bytes::Bytes;
use cache_support::{Call, Harness, http_date, reply, request, t0};
use http::{Response, StatusCode};
use http_body_util::Full;
use std::time::Duration;

fn not_modified(call: &Call<'_>, headers: &[(&str, &str)]) -> Response<Full<Bytes>> {
    let mut response = reply(call, 304, headers);
    *response.body_mut() = Full::new(Bytes::new());
    response
}

/// An origin whose representation has ETag `"e1"` and answers a matching
/// `If-None-Match` with 304 and `max-age=100`.
fn etag_origin(call: Call<'_>) -> Response<Full<Bytes>> {
    let matches = call
        .request
        .headers()
        .get("if-none-match")
        .is_some_and(|v| v == "\"e1\"");
    if matches {
        not_modified(
            &call,
            &[
                ("cache-control", "max-age=100"),
                ("etag", "\"e1\""),
                ("x-version", "2"),
                ("content-length", "999"),
            ],
        )
    } else {
        reply(
            &call,
            200,
            &[
                ("cache-control", "max-age=10"),
                ("etag", "\"e1\""),
                ("x-version", "1"),
            ],
        )
    }
}

#[tokio::test]
async fn stale_entry_is_revalidated_and_a_304_freshens_its_headers() {
    let harness = Harness::new(|l| l, etag_origin);
    assert_eq!(harness.get("/", &[]).await.body, "v1");
    harness.advance(11);

    let revalidated = harness.get("/", &[]).await;
    assert_eq!(revalidated.status, StatusCode::OK);
    assert_eq!(revalidated.body, "v1");
    assert_eq!(revalidated.header("x-version"), Some("2"));
    assert_eq!(revalidated.header("cache-control"), Some("max-age=100"));
    assert_eq!(revalidated.header("age"), Some("0"));
    // The framing field of the 304 is not taken over.
    assert_eq!(revalidated.header("content-length"), None);
    assert_eq!(harness.calls(), 2);
    let sent = harness.seen.lock().unwrap()[1].clone();
    assert_eq!(sent["if-none-match"], "\"e1\"");

    // Fresh again for 100 s from the revalidation.
    harness.advance(99);
    let hit = harness.get("/", &[]).await;
    assert_eq!((hit.header("age"), harness.calls()), (Some("99"), 2));
}

#[tokio::test]
async fn a_304_without_date_is_dated_on_arrival() {
    let harness = Harness::new(
        |l| l,
        |call| {
            if call.request.headers().contains_key("if-none-match") {
                let mut response = not_modified(
                    &call,
                    &[("cache-control", "max-age=100"), ("etag", "\"e1\"")],
                );
                response.headers_mut().remove("date");
                response
            } else {
                reply(
                    &call,
                    200,
                    &[("cache-control", "max-age=10"), ("etag", "\"e1\"")],
                )
            }
        },
    );
    harness.get("/", &[]).await;
    harness.advance(50);

    // Not 50 s old: the 304 is the new generation time.
    let revalidated = harness.get("/", &[]).await;
    assert_eq!(
        (revalidated.status.as_u16(), revalidated.body.as_ref()),
        (200, &b"v1"[..])
    );
    assert_eq!(revalidated.header("age"), Some("0"));
    let dated = http_date(t0() + Duration::from_secs(50));
    assert_eq!(revalidated.header("date"), Some(dated.as_str()));

    harness.advance(99);
    let hit = harness.get("/", &[]).await;
    assert_eq!((hit.header("age"), harness.calls()), (Some("99"), 2));
}

#[tokio::test]
async fn last_modified_is_revalidated_with_if_modified_since() {
    const LM: &str = "Wed, 31 Dec 2025 00:00:00 GMT";
    let harness = Harness::new(
        |l| l,
        |call| {
            if call
                .request
                .headers()
                .get("if-modified-since")
                .is_some_and(|v| v == LM)
            {
                not_modified(&call, &[("cache-control", "max-age=10")])
            } else {
                reply(
                    &call,
                    200,
                    &[("cache-control", "max-age=10"), ("last-modified", LM)],
                )
            }
        },
    );
    harness.get("/", &[]).await;
    harness.advance(20);
    let got = harness.get("/", &[]).await;
    assert_eq!((got.status.as_u16(), got.body.as_ref()), (200, &b"v1"[..]));
    assert_eq!(harness.calls(), 2);
}

#[tokio::test]
async fn no_cache_response_is_revalidated_on_every_use() {
    let harness = Harness::new(
        |l| l,
        |call| {
            if call.request.headers().contains_key("if-none-match") {
                not_modified(&call, &[("cache-control", "no-cache"), ("etag", "\"n\"")])
            } else {
                reply(
                    &call,
                    200,
                    &[("cache-control", "no-cache"), ("etag", "\"n\"")],
                )
            }
        },
    );
    harness.get("/", &[]).await;
    for n in 2..5 {
        let got = harness.get("/", &[]).await;
        assert_eq!(got.body, "v1");
        assert_eq!(harness.calls(), n);
    }
}

#[tokio::test]
async fn a_new_200_on_revalidation_replaces_the_entry() {
    let harness = Harness::new(
        |l| l,
        |call| {
            reply(
                &call,
                200,
                &[
                    ("cache-control", "max-age=10"),
                    ("etag", &format!("\"e{}\"", call.n)),
                ],
            )
        },
    );
    harness.get("/", &[]).await;
    harness.advance(11);
    assert_eq!(harness.get("/", &[]).await.body, "v2");
    let hit = harness.get("/", &[]).await;
    assert_eq!(
        (hit.body.as_ref(), hit.header("etag")),
        (&b"v2"[..], Some("\"e2\""))
    );
}

#[tokio::test]
async fn clients_conditionals_are_answered_from_the_cache() {
    let harness = Harness::new(
        |l| l,
        |call| {
            reply(
                &call,
                200,
                &[
                    ("cache-control", "max-age=60"),
                    ("etag", "\"abc\""),
                    ("last-modified", "Wed, 31 Dec 2025 00:00:00 GMT"),
                    ("x-other", "1"),
                ],
            )
        },
    );
    harness.get("/", &[]).await;
    harness.advance(2);

    let cases: &[(&[(&str, &str)], u16)] = &[
        (&[("if-none-match", "\"abc\"")], 304),
        (&[("if-none-match", "W/\"abc\"")], 304),
        (&[("if-none-match", "\"x\", W/\"abc\"")], 304),
        (&[("if-none-match", "*")], 304),
        (&[("if-none-match", "\"x\"")], 200),
        (&[("if-none-match", "garbage, \"\"\"")], 200),
        (
            &[("if-modified-since", "Wed, 31 Dec 2025 00:00:00 GMT")],
            304,
        ),
        (
            &[("if-modified-since", "Tue, 30 Dec 2025 00:00:00 GMT")],
            200,
        ),
        (&[("if-modified-since", "not a date")], 200),
        // If-None-Match wins over If-Modified-Since.
        (
            &[
                ("if-none-match", "\"x\""),
                ("if-modified-since", "Wed, 31 Dec 2025 00:00:00 GMT"),
            ],
            200,
        ),
    ];
    for (headers, status) in cases {
        let got = harness.get("/", headers).await;
        assert_eq!(got.status.as_u16(), *status, "{headers:?}");
        assert_eq!(got.header("age"), Some("2"), "{headers:?}");
        if *status == 304 {
            assert_eq!(got.body, "");
            assert_eq!(got.header("etag"), Some("\"abc\""));
            assert_eq!(got.header("cache-control"), Some("max-age=60"));
            assert_eq!(got.header("x-other"), None);
        }
    }
    assert_eq!(harness.calls(), 1);
}

#[tokio::test]
async fn successful_unsafe_requests_invalidate_target_and_same_origin_locations() {
    let harness = Harness::new(
        |l| l,
        |call| match call.request.method().as_str() {
            "POST" => reply(
                &call,
                201,
                &[
                    ("location", "/b"),
                    ("content-location", "http://origin.test/c"),
                ],
            ),
            "PUT" => reply(&call, 200, &[("location", "http://elsewhere.test/d")]),
            "DELETE" => reply(&call, 500, &[]),
            _ => reply(&call, 200, &[("cache-control", "max-age=600")]),
        },
    );
    for path in ["/a", "/b", "/c", "/d"] {
        harness.get(path, &[]).await;
    }
    assert_eq!(harness.calls(), 4);

    harness.send(request("POST", "/a", &[])).await;
    for path in ["/a", "/b", "/c"] {
        harness.get(path, &[]).await;
    }
    assert_eq!(
        harness.calls(),
        8,
        "target, Location and Content-Location refetched"
    );

    // Another origin's Location is left alone; so is the target of a failed request.
    harness.send(request("PUT", "/d", &[])).await;
    assert_eq!(harness.calls(), 9);
    harness.get("/a", &[]).await;
    assert_eq!(harness.calls(), 9);
    harness.send(request("DELETE", "/a", &[])).await;
    harness.get("/a", &[]).await;
    assert_eq!(harness.calls(), 10);
    harness.get("/d", &[]).await;
    assert_eq!(harness.calls(), 11, "PUT invalidated its own target");
}

#[tokio::test]
async fn stale_while_revalidate_serves_stale_and_refreshes_once_in_the_background() {
    let harness = Harness::new(
        |l| l,
        |call| {
            reply(
                &call,
                200,
                &[("cache-control", "max-age=10, stale-while-revalidate=30")],
            )
        },
    );
    harness.get("/", &[]).await;
    harness.advance(15);

    let stale = harness.get("/", &[]).await;
    assert_eq!(
        (stale.body.as_ref(), stale.header("age")),
        (&b"v1"[..], Some("15"))
    );
    assert_eq!(harness.calls(), 2, "one background refresh");

    let fresh = harness.get("/", &[]).await;
    assert_eq!(
        (fresh.body.as_ref(), fresh.header("age")),
        (&b"v2"[..], Some("0"))
    );
    assert_eq!(harness.calls(), 2);

    // Past the window: a plain miss.
    harness.advance(45);
    let got = harness.get("/", &[]).await;
    assert_eq!((got.body.as_ref(), harness.calls()), (&b"v3"[..], 3));
}

#[tokio::test]
async fn stale_while_revalidate_starts_one_refresh_for_many_requests() {
    let harness = Harness::new(
        |l| l.stale_while_revalidate(Duration::from_secs(60)),
        |call| reply(&call, 200, &[("cache-control", "max-age=10")]),
    );
    harness.get("/", &[]).await;
    harness.advance(20);
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let service = harness.service.clone();
        tasks.push(tokio::spawn(async move {
            use tower::ServiceExt;
            let response = service.oneshot(request("GET", "/", &[])).await.unwrap();
            response.headers()["age"].to_str().unwrap().to_owned()
        }));
    }
    for task in tasks {
        let age = task.await.unwrap();
        assert!(age == "20" || age == "0", "{age}");
    }
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(harness.calls(), 2);
}

#[tokio::test]
async fn stale_if_error_serves_stale_on_5xx_within_its_window() {
    let harness = Harness::new(
        |l| l,
        |call| {
            if call.n == 1 {
                reply(
                    &call,
                    200,
                    &[("cache-control", "max-age=10, stale-if-error=60")],
                )
            } else {
                reply(&call, 503, &[])
            }
        },
    );
    harness.get("/", &[]).await;
    harness.advance(30);
    let got = harness.get("/", &[]).await;
    assert_eq!(
        (got.status.as_u16(), got.body.as_ref(), got.header("age")),
        (200, &b"v1"[..], Some("30"))
    );

    harness.advance(41);
    let got = harness.get("/", &[]).await;
    assert_eq!((got.status.as_u16(), got.body.as_ref()), (503, &b"v3"[..]));
}

#[tokio::test]
async fn stale_if_error_as_a_configured_default_covers_inner_errors() {
    use tower::ServiceExt;
    use tower_toolbox::cache::CacheLayer;
    use tower_toolbox::clock::ManualClock;

    #[derive(Debug)]
    struct Down;
    let clock = ManualClock::new();
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = calls.clone();
    let origin = tower::service_fn(move |_req: http::Request<()>| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async move {
            if n == 0 {
                Ok(Response::builder()
                    .header("cache-control", "max-age=10")
                    .body(Full::new(Bytes::from_static(b"ok")))
                    .unwrap())
            } else {
                Err(Down)
            }
        }
    });
    let layer = CacheLayer::new()
        .clock(clock.clone())
        .stale_if_error(Duration::from_secs(60));
    let service = tower::Layer::layer(&layer, origin);
    let get = || http::Request::get("http://o/").body(()).unwrap();
    let first = service.clone().oneshot(get()).await.unwrap();
    http_body_util::BodyExt::collect(first.into_body())
        .await
        .unwrap();
    clock.advance(Duration::from_secs(20));
    let stale = service.clone().oneshot(get()).await.unwrap();
    assert_eq!(stale.headers()["age"], "20");
    clock.advance(Duration::from_secs(60));
    assert!(service.clone().oneshot(get()).await.is_err());
}

#[tokio::test]
async fn must_revalidate_is_not_served_on_error() {
    let harness = Harness::new(
        |l| l.stale_if_error(Duration::from_secs(600)),
        |call| {
            if call.n == 1 {
                reply(
                    &call,
                    200,
                    &[("cache-control", "max-age=10, must-revalidate")],
                )
            } else {
                reply(&call, 502, &[])
            }
        },
    );
    harness.get("/", &[]).await;
    harness.advance(11);
    assert_eq!(harness.get("/", &[]).await.status, 502);
}
