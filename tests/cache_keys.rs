//! Keys, methods, `Vary`, `Authorization` and stored fields, on a manual clock.

mod cache_support;

use cache_support::{Harness, http_date, reply, request, t0};
use std::time::Duration;
use tower_toolbox::cache::Mode;

#[tokio::test]
async fn authorization_is_stored_by_a_shared_cache_only_when_the_response_allows() {
    let allowed = [
        ("max-age=60", false),
        ("public, max-age=60", true),
        ("s-maxage=60", true),
        ("max-age=60, must-revalidate", true),
    ];
    for (cache_control, stored) in allowed {
        let harness = Harness::new(
            |l| l,
            move |call| reply(&call, 200, &[("cache-control", cache_control)]),
        );
        let auth = [("authorization", "Bearer x")];
        harness.get("/", &auth).await;
        harness.advance(1);
        let second = harness.get("/", &auth).await;
        let expected = if stored {
            (1, Some("1"), "v1")
        } else {
            (2, None, "v2")
        };
        assert_eq!(
            (harness.calls(), second.header("age"), second.body.as_ref()),
            (expected.0, expected.1, expected.2.as_bytes()),
            "{cache_control}"
        );
    }

    // A private cache stores them all.
    let harness = Harness::new(
        |l| l.mode(Mode::Private),
        |call| reply(&call, 200, &[("cache-control", "max-age=60")]),
    );
    harness.get("/", &[("authorization", "Bearer x")]).await;
    let second = harness.get("/", &[("authorization", "Bearer x")]).await;
    assert_eq!((harness.calls(), second.header("age")), (1, Some("0")));

    // `no-cache` does not permit it: stored nowhere a shared cache may use.
    let harness = Harness::new(
        |l| l,
        |call| reply(&call, 200, &[("cache-control", "no-cache, max-age=60")]),
    );
    harness.get("/", &[("authorization", "Bearer x")]).await;
    harness.get("/", &[("authorization", "Bearer x")]).await;
    assert_eq!(harness.calls(), 2);
}

#[tokio::test]
async fn vary_selects_by_normalised_request_headers() {
    let harness = Harness::new(
        |l| l,
        |call| {
            reply(
                &call,
                200,
                &[("cache-control", "max-age=60"), ("vary", "Accept-Encoding")],
            )
        },
    );
    assert_eq!(
        harness
            .get("/", &[("accept-encoding", "gzip,br")])
            .await
            .body,
        "v1"
    );
    assert_eq!(
        harness.get("/", &[("accept-encoding", "br")]).await.body,
        "v2"
    );
    let again = harness.get("/", &[("accept-encoding", "gzip, br")]).await;
    assert_eq!(
        (again.body.as_ref(), again.header("age")),
        (&b"v1"[..], Some("0"))
    );
    assert_eq!(
        harness.get("/", &[("accept-encoding", "br")]).await.body,
        "v2"
    );
    assert_eq!(harness.get("/", &[]).await.body, "v3");
    assert_eq!(harness.get("/", &[]).await.body, "v3");
    assert_eq!(harness.calls(), 3);
}

#[tokio::test]
async fn hop_by_hop_fields_are_not_stored() {
    let harness = Harness::new(
        |l| l,
        |call| {
            reply(
                &call,
                200,
                &[
                    ("cache-control", "max-age=60"),
                    ("connection", "x-conn"),
                    ("x-conn", "1"),
                    ("keep-alive", "timeout=5"),
                    ("proxy-authenticate", "Basic"),
                    ("proxy-connection", "keep-alive"),
                    ("upgrade", "h2c"),
                    ("te", "trailers"),
                    ("trailer", "x-checksum"),
                    ("transfer-encoding", "chunked"),
                    ("x-kept", "yes"),
                ],
            )
        },
    );
    harness.get("/", &[]).await;
    let hit = harness.get("/", &[]).await;
    assert_eq!(hit.header("age"), Some("0"));
    for name in [
        "connection",
        "x-conn",
        "keep-alive",
        "proxy-authenticate",
        "proxy-connection",
        "upgrade",
        "te",
        "trailer",
        "transfer-encoding",
    ] {
        assert_eq!(hit.header(name), None, "{name}");
    }
    assert_eq!(hit.header("x-kept"), Some("yes"));
}

#[tokio::test]
async fn head_is_served_from_a_stored_get() {
    let harness = Harness::new(
        |l| l,
        |call| {
            reply(
                &call,
                200,
                &[("cache-control", "max-age=60"), ("etag", "\"a\"")],
            )
        },
    );
    harness.get("/", &[]).await;
    harness.advance(3);
    let head = harness.send(request("HEAD", "/", &[])).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.body, "");
    assert_eq!(head.header("etag"), Some("\"a\""));
    assert_eq!(head.header("age"), Some("3"));
    assert_eq!(harness.calls(), 1);
}

#[tokio::test]
async fn query_is_part_of_the_key_and_can_be_normalised() {
    let harness = Harness::new(
        |l| l,
        |call| reply(&call, 200, &[("cache-control", "max-age=60")]),
    );
    assert_eq!(harness.get("/p?a=1&b=2", &[]).await.body, "v1");
    assert_eq!(harness.get("/p?b=2&a=1", &[]).await.body, "v2");
    assert_eq!(harness.get("/p", &[]).await.body, "v3");
    assert_eq!(harness.get("/p?a=1&b=2", &[]).await.body, "v1");

    let harness = Harness::new(
        |l| l.normalize_query(true),
        |call| reply(&call, 200, &[("cache-control", "max-age=60")]),
    );
    assert_eq!(harness.get("/p?a=1&b=2", &[]).await.body, "v1");
    assert_eq!(harness.get("/p?b=2&a=1", &[]).await.body, "v1");
}

#[tokio::test]
async fn key_hook_separates_tenants_and_none_bypasses() {
    let harness = Harness::new(
        |l| {
            l.key_hook(|parts| {
                parts
                    .headers
                    .get("x-tenant")
                    .map(|v| v.to_str().unwrap_or("").to_owned())
            })
        },
        |call| reply(&call, 200, &[("cache-control", "max-age=60")]),
    );
    assert_eq!(harness.get("/", &[("x-tenant", "a")]).await.body, "v1");
    assert_eq!(harness.get("/", &[("x-tenant", "b")]).await.body, "v2");
    assert_eq!(harness.get("/", &[("x-tenant", "a")]).await.body, "v1");
    assert_eq!(harness.get("/", &[]).await.body, "v3");
    assert_eq!(harness.get("/", &[]).await.body, "v4");
}

#[tokio::test]
async fn range_requests_and_206_pass_through_uncached() {
    let harness = Harness::new(
        |l| l,
        |call| {
            if call.request.headers().contains_key("range") {
                reply(
                    &call,
                    206,
                    &[
                        ("cache-control", "max-age=60"),
                        ("content-range", "bytes 0-1/10"),
                    ],
                )
            } else {
                reply(&call, 200, &[("cache-control", "max-age=60")])
            }
        },
    );
    assert_eq!(
        harness.get("/", &[("range", "bytes=0-1")]).await.status,
        206
    );
    assert_eq!(
        harness.get("/", &[("range", "bytes=0-1")]).await.status,
        206
    );
    assert_eq!(harness.calls(), 2);
    assert_eq!(harness.get("/", &[]).await.body, "v3");
    assert_eq!(
        harness.get("/", &[("range", "bytes=0-1")]).await.status,
        206
    );
    assert_eq!(harness.calls(), 4);
}

#[tokio::test]
async fn post_is_never_stored_even_when_the_rfc_would_allow_it() {
    // Explicit freshness and a Content-Location equal to the target: RFC 9111
    // permits storing this; the cache documents that it does not.
    let harness = Harness::new(
        |l| l,
        |call| {
            reply(
                &call,
                200,
                &[
                    ("cache-control", "max-age=60"),
                    ("content-location", "http://origin.test/p"),
                ],
            )
        },
    );
    let first = harness.send(request("POST", "/p", &[])).await;
    let second = harness.send(request("POST", "/p", &[])).await;
    assert_eq!(
        (first.body.as_ref(), second.body.as_ref()),
        (&b"v1"[..], &b"v2"[..])
    );
    assert_eq!((second.header("age"), harness.calls()), (None, 2));
    let get = harness.get("/p", &[]).await;
    assert_eq!((get.body.as_ref(), get.header("age")), (&b"v3"[..], None));
}

#[tokio::test]
async fn only_if_cached_miss_is_a_problem_json_504() {
    let harness = Harness::new(|l| l, |call| reply(&call, 200, &[]));
    let got = harness
        .get("/", &[("cache-control", "only-if-cached")])
        .await;
    assert_eq!(got.status, 504);
    assert_eq!(got.header("content-type"), Some("application/problem+json"));
    assert_eq!(harness.calls(), 0);
}

#[tokio::test]
async fn date_is_added_to_stored_responses_without_one() {
    let harness = Harness::new(
        |l| l,
        |call| {
            let mut response = reply(&call, 200, &[("cache-control", "max-age=60")]);
            response.headers_mut().remove("date");
            response
        },
    );
    harness.advance(7);
    harness.get("/", &[]).await;
    let hit = harness.get("/", &[]).await;
    assert_eq!(
        hit.header("date"),
        Some(http_date(t0() + Duration::from_secs(7)).as_str())
    );
}
