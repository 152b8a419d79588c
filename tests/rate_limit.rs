//! The rate limit layer, in memory, on a manual clock: exact admissions, waits,
//! headers and refusals.

#[path = "support/service.rs"]
mod support;

use std::convert::Infallible;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use support::{Body, from, grpc_from, ok_service, status};
use tower::{Service, ServiceExt};
use tower_toolbox::clock::ManualClock;
use tower_toolbox::key::{ClientIp, Global, MissingKey};
use tower_toolbox::rate_limit::{
    Class, ConfigError, Headers, LeakyBucket, Plan, Quota, RateLimitLayer,
};

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

async fn body_json(
    response: Response<impl http_body::Body<Data = Bytes, Error = Infallible>>,
) -> serde_json::Value {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn rejects_third_request_of_two_per_second_with_retry_after_rounded_up() {
    let clock = ManualClock::new();
    let layer = RateLimitLayer::builder()
        .quota(Quota::per_second(nz(2)))
        .clock(clock.clone())
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let mut service = tower::ServiceBuilder::new()
        .layer(layer)
        .service(ok_service(calls.clone()));

    for _ in 0..2 {
        let response = service
            .ready()
            .await
            .unwrap()
            .call(from("192.0.2.1"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    clock.advance(Duration::from_millis(100));
    let refused = service
        .ready()
        .await
        .unwrap()
        .call(from("192.0.2.1"))
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    // The next unit comes 0.4 s from now: Retry-After rounds up to 1.
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json"
    );
    let body = body_json(refused).await;
    assert_eq!(
        body["type"],
        "https://iana.org/assignments/http-problem-types#quota-exceeded"
    );
    assert_eq!(body["status"], 429);
    assert_eq!(body["violated-policies"], serde_json::json!(["default"]));
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // Exactly when the unit is back, the request passes.
    clock.advance(Duration::from_millis(399));
    let early = service
        .ready()
        .await
        .unwrap()
        .call(from("192.0.2.1"))
        .await
        .unwrap();
    assert_eq!(early.status(), StatusCode::TOO_MANY_REQUESTS);
    clock.advance(Duration::from_millis(1));
    let back = service
        .ready()
        .await
        .unwrap()
        .call(from("192.0.2.1"))
        .await
        .unwrap();
    assert_eq!(back.status(), StatusCode::OK);
}

#[tokio::test]
async fn another_client_is_unaffected() {
    let clock = ManualClock::new();
    let layer = RateLimitLayer::builder()
        .quota(Quota::per_minute(nz(1)))
        .clock(clock)
        .build()
        .unwrap();
    let mut service = layer.layer_service(ok_service(Arc::default()));
    assert_eq!(status(&mut service, from("192.0.2.1")).await, 200);
    assert_eq!(status(&mut service, from("192.0.2.1")).await, 429);
    assert_eq!(status(&mut service, from("192.0.2.2")).await, 200);
}

trait LayerService {
    fn layer_service<S>(&self, service: S) -> <Self as tower::Layer<S>>::Service
    where
        Self: tower::Layer<S>,
    {
        tower::Layer::layer(self, service)
    }
}

impl<T> LayerService for T {}

#[tokio::test]
async fn spoofed_forwarded_for_buys_no_fresh_quota() {
    let layer = RateLimitLayer::builder()
        .quota(Quota::per_minute(nz(2)))
        .key(ClientIp::new().trust_proxies(["10.0.0.0/8".parse().unwrap()]))
        .clock(ManualClock::new())
        .build()
        .unwrap();
    let mut service = layer.layer_service(ok_service(Arc::default()));
    let via_proxy = |xff: &str| {
        let mut request = from("10.0.0.5");
        request
            .headers_mut()
            .insert("x-forwarded-for", xff.parse().unwrap());
        request
    };
    assert_eq!(status(&mut service, via_proxy("203.0.113.7")).await, 200);
    assert_eq!(
        status(&mut service, via_proxy("1.1.1.1, 203.0.113.7")).await,
        200
    );
    for spoof in [
        "2.2.2.2, 203.0.113.7",
        "3.3.3.3,203.0.113.7",
        "garbage, 203.0.113.7",
    ] {
        assert_eq!(status(&mut service, via_proxy(spoof)).await, 429, "{spoof}");
    }
    // A different real client behind the same proxy has its own quota.
    assert_eq!(status(&mut service, via_proxy("203.0.113.8")).await, 200);
}

#[tokio::test]
async fn several_quotas_are_all_or_nothing() {
    let clock = ManualClock::new();
    let layer = RateLimitLayer::builder()
        .quota(Quota::per_second(nz(5)).named("burst"))
        .quota(Quota::per_minute(nz(6)).named("minute"))
        .headers(Headers::IETF)
        .clock(clock.clone())
        .build()
        .unwrap();
    let mut service = layer.layer_service(ok_service(Arc::default()));

    let mut statuses = Vec::new();
    for _ in 0..7 {
        statuses.push(status(&mut service, from("192.0.2.9")).await);
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429]);

    // One second later "burst" is full again and "minute" has 1 left: the two
    // refused requests above took nothing from "minute".
    clock.advance(Duration::from_secs(1));
    let response = service
        .ready()
        .await
        .unwrap()
        .call(from("192.0.2.9"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let ratelimit = response.headers()["ratelimit"].to_str().unwrap();
    assert_eq!(ratelimit, r#""burst";r=4;t=1, "minute";r=0;t=59"#);
    let refused = service
        .ready()
        .await
        .unwrap()
        .call(from("192.0.2.9"))
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers()["retry-after"], "9");
    let body = body_json(refused).await;
    assert_eq!(body["violated-policies"], serde_json::json!(["minute"]));
}

#[tokio::test]
async fn headers_parse_as_structured_fields() {
    let layer = RateLimitLayer::builder()
        .quota(Quota::per_minute(nz(100)).burst(nz(10)).named("per-ip"))
        .quota(Quota::per_hour(nz(1000)).named("hourly"))
        .headers(Headers::BOTH)
        .clock(ManualClock::new())
        .build()
        .unwrap();
    let mut service = layer.layer_service(ok_service(Arc::default()));
    let response = service
        .ready()
        .await
        .unwrap()
        .call(from("192.0.2.3"))
        .await
        .unwrap();

    use sfv::{BareItem, List, ListEntry, Parser};
    let parse = |name: &str| -> List {
        Parser::new(response.headers()[name].to_str().unwrap())
            .parse::<List>()
            .unwrap()
    };
    let params = |list: &List, index: usize, want: &str| -> Vec<(String, i64)> {
        let ListEntry::Item(item) = &list[index] else {
            panic!("not an item")
        };
        assert_eq!(
            item.bare_item,
            BareItem::String(sfv::String::from_string(want.to_owned()).unwrap())
        );
        item.params
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.as_integer().unwrap().into()))
            .collect()
    };

    let policy = parse("ratelimit-policy");
    assert_eq!(
        params(&policy, 0, "per-ip"),
        [("q".into(), 10), ("w".into(), 6)]
    );
    assert_eq!(
        params(&policy, 1, "hourly"),
        [("q".into(), 1000), ("w".into(), 3600)]
    );
    let state = parse("ratelimit");
    assert_eq!(
        params(&state, 0, "per-ip"),
        [("r".into(), 9), ("t".into(), 1)]
    );
    assert_eq!(
        params(&state, 1, "hourly"),
        [("r".into(), 999), ("t".into(), 4)]
    );

    assert_eq!(response.headers()["x-ratelimit-limit"], "10");
    assert_eq!(response.headers()["x-ratelimit-remaining"], "9");
    assert_eq!(response.headers()["x-ratelimit-reset"], "1");
}

#[tokio::test]
async fn a_refusal_carries_the_same_structured_fields_and_retry_after() {
    use sfv::{BareItem, List, ListEntry, Parser};

    let clock = ManualClock::new();
    let layer = RateLimitLayer::builder()
        .quota(Quota::per_minute(nz(3)).named("per-ip"))
        .headers(Headers::BOTH)
        .clock(clock.clone())
        .build()
        .unwrap();
    let mut service = layer.layer_service(ok_service(Arc::default()));
    for _ in 0..3 {
        assert_eq!(status(&mut service, from("192.0.2.4")).await, 200);
    }
    clock.advance(Duration::from_millis(1500));
    let refused = service
        .ready()
        .await
        .unwrap()
        .call(from("192.0.2.4"))
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);

    let list = Parser::new(refused.headers()["ratelimit"].to_str().unwrap())
        .parse::<List>()
        .unwrap();
    assert_eq!(list.len(), 1);
    let ListEntry::Item(item) = &list[0] else {
        panic!("not an item")
    };
    assert_eq!(
        item.bare_item,
        BareItem::String(sfv::String::from_string("per-ip".to_owned()).unwrap())
    );
    let params: Vec<(String, i64)> = item
        .params
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.as_integer().unwrap().into()))
        .collect();
    // 58.5 s until full, rounded up; nothing left.
    assert_eq!(params, [("r".to_owned(), 0), ("t".to_owned(), 59)]);
    let policy = Parser::new(refused.headers()["ratelimit-policy"].to_str().unwrap())
        .parse::<List>()
        .unwrap();
    assert_eq!(policy.len(), 1);
    // The next request passes in 18.5 s: never announced earlier than that.
    assert_eq!(refused.headers()["retry-after"], "19");
    assert_eq!(refused.headers()["x-ratelimit-remaining"], "0");
    assert_eq!(refused.headers()["x-ratelimit-reset"], "59");
}

/// Sixteen worker threads, released together by a barrier, race on one key: the
/// one-quota path (a compare-and-swap under a shared lock) admits exactly 1000.
#[tokio::test(flavor = "multi_thread", worker_threads = 16)]
async fn sixteen_tasks_on_one_key_admit_exactly_the_quota() {
    let layer = RateLimitLayer::builder()
        .quota(Quota::per_hour(nz(1000)))
        .key(Global)
        .clock(ManualClock::new())
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let service = layer.layer_service(ok_service(calls.clone()));

    let admitted = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(tokio::sync::Barrier::new(16));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let mut service = service.clone();
            let (admitted, refused) = (admitted.clone(), refused.clone());
            let start = start.clone();
            tokio::spawn(async move {
                start.wait().await;
                for _ in 0..200 {
                    match status(&mut service, from("192.0.2.1")).await {
                        200 => admitted.fetch_add(1, Ordering::SeqCst),
                        429 => refused.fetch_add(1, Ordering::SeqCst),
                        other => panic!("status {other}"),
                    };
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(admitted.load(Ordering::SeqCst), 1000);
    assert_eq!(refused.load(Ordering::SeqCst), 16 * 200 - 1000);
    assert_eq!(calls.load(Ordering::SeqCst), 1000);
}

/// The same race on a plan of two quotas (all or nothing under the shard's
/// exclusive lock): exactly the smaller quota is admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 16)]
async fn sixteen_threads_on_one_key_admit_exactly_the_quota() {
    let layer = RateLimitLayer::builder()
        .quota(Quota::per_hour(nz(500)).named("a"))
        .quota(Quota::per_hour(nz(700)).named("b"))
        .key(Global)
        .clock(ManualClock::new())
        .build()
        .unwrap();
    let service = layer.layer_service(ok_service(Arc::default()));
    let admitted = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(tokio::sync::Barrier::new(16));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let mut service = service.clone();
            let admitted = admitted.clone();
            let start = start.clone();
            tokio::spawn(async move {
                start.wait().await;
                for _ in 0..100 {
                    if status(&mut service, from("192.0.2.1")).await == 200 {
                        admitted.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(admitted.load(Ordering::SeqCst), 500);
}

#[tokio::test]
async fn classify_picks_plan_and_cost_and_exempts() {
    let layer = RateLimitLayer::builder()
        .plan(Quota::per_minute(nz(10)).named("free"))
        .plan(Quota::per_minute(nz(100)).named("pro"))
        .classify(|request: &Request<Body>| {
            if request.uri().path() == "/health" {
                return Class::exempt();
            }
            let pro = request.headers().contains_key("x-pro");
            let cost = if request.uri().path() == "/upload" {
                4
            } else {
                1
            };
            Class::new().plan(usize::from(pro)).cost(cost)
        })
        .headers(Headers::IETF)
        .clock(ManualClock::new())
        .build()
        .unwrap();
    let mut service = layer.layer_service(ok_service(Arc::default()));
    let with = |path: &str, pro: bool| {
        let mut request = from("192.0.2.1");
        *request.uri_mut() = path.parse().unwrap();
        if pro {
            request.headers_mut().insert("x-pro", "1".parse().unwrap());
        }
        request
    };

    // Free: 10 units; two uploads of 4 leave 2, a third upload is refused.
    assert_eq!(status(&mut service, with("/upload", false)).await, 200);
    assert_eq!(status(&mut service, with("/upload", false)).await, 200);
    assert_eq!(status(&mut service, with("/upload", false)).await, 429);
    assert_eq!(status(&mut service, with("/a", false)).await, 200);
    assert_eq!(status(&mut service, with("/a", false)).await, 200);
    assert_eq!(status(&mut service, with("/a", false)).await, 429);
    // Health checks are never limited and carry no headers.
    for _ in 0..50 {
        assert_eq!(status(&mut service, with("/health", false)).await, 200);
    }
    let health = service
        .ready()
        .await
        .unwrap()
        .call(with("/health", false))
        .await
        .unwrap();
    assert!(health.headers().get("ratelimit").is_none());
    // The pro plan is a separate bucket for the same client.
    let pro = service
        .ready()
        .await
        .unwrap()
        .call(with("/a", true))
        .await
        .unwrap();
    assert_eq!(pro.status(), StatusCode::OK);
    assert_eq!(pro.headers()["ratelimit"], r#""pro";r=99;t=1"#);
}

#[tokio::test]
async fn a_cost_above_the_burst_is_refused_without_retry_after() {
    let layer = RateLimitLayer::builder()
        .quota(Quota::per_second(nz(3)))
        .classify(|_: &Request<Body>| Class::new().cost(4))
        .clock(ManualClock::new())
        .build()
        .unwrap();
    let mut service = layer.layer_service(ok_service(Arc::default()));
    let response = service
        .ready()
        .await
        .unwrap()
        .call(from("192.0.2.1"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(response.headers().get("retry-after").is_none());
}

#[tokio::test]
async fn dry_run_counts_and_adds_headers_but_never_refuses() {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = RateLimitLayer::builder()
        .quota(Quota::per_minute(nz(2)))
        .headers(Headers::IETF)
        .dry_run(true)
        .clock(ManualClock::new())
        .build()
        .unwrap();
    let mut service = layer.layer_service(ok_service(calls.clone()));
    let mut remaining = Vec::new();
    for _ in 0..4 {
        let response = service
            .ready()
            .await
            .unwrap()
            .call(from("192.0.2.1"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        remaining.push(response.headers()["ratelimit"].to_str().unwrap().to_owned());
    }
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    assert_eq!(
        remaining,
        [
            r#""default";r=1;t=30"#,
            r#""default";r=0;t=60"#,
            r#""default";r=0;t=60"#,
            r#""default";r=0;t=60"#
        ]
    );
}

#[tokio::test]
async fn a_request_without_peer_address_is_refused_with_500_or_allowed() {
    let request = || Request::get("/").body(Body::default()).unwrap();
    let strict = RateLimitLayer::new(Quota::per_second(nz(1)));
    let mut service = strict.layer_service(ok_service(Arc::default()));
    let response = service
        .ready()
        .await
        .unwrap()
        .call(request())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body = body_json(response).await;
    assert_eq!(body["title"], "Missing request key");

    let lenient = RateLimitLayer::builder()
        .quota(Quota::per_second(nz(1)))
        .on_missing_key(MissingKey::Allow)
        .build()
        .unwrap();
    let mut service = lenient.layer_service(ok_service(Arc::default()));
    for _ in 0..3 {
        assert_eq!(status(&mut service, request()).await, 200);
    }
}

#[test]
fn bad_configuration_is_refused_at_build_time() {
    assert_eq!(
        RateLimitLayer::builder().build().unwrap_err(),
        ConfigError::NoPlan
    );
    assert_eq!(
        Quota::with_period(Duration::ZERO).unwrap_err().to_string(),
        "a quota's replenish period must be longer than zero"
    );
    assert_eq!(
        RateLimitLayer::builder()
            .plan(Plan::new())
            .build()
            .unwrap_err()
            .to_string(),
        "a rate limit plan needs at least one quota"
    );
    let twice = RateLimitLayer::builder()
        .quota(Quota::per_second(nz(1)).named("a"))
        .quota(Quota::per_hour(nz(9)).named("a"))
        .build()
        .unwrap_err();
    assert_eq!(twice, ConfigError::DuplicateName("a".into()));
    assert_eq!(twice.to_string(), "two quotas of one plan are named \"a\"");
    let five = (0..5).fold(RateLimitLayer::builder(), |b, i| {
        b.quota(Quota::per_second(nz(1)).named(format!("q{i}")))
    });
    assert_eq!(
        five.build().unwrap_err().to_string(),
        "a plan holds at most 4 quotas, this one has 5"
    );
    assert_eq!(
        RateLimitLayer::builder()
            .quota(LeakyBucket::per_second(nz(1)).named("a\"b\n"))
            .build()
            .unwrap_err(),
        ConfigError::InvalidName("a\"b\n".into())
    );
    // A zero rate or burst does not compile (they take `NonZeroU32`): see the
    // `compile_fail` examples on `Quota`, run by `cargo test --doc`.
}

#[tokio::test]
async fn memory_stays_under_the_cap_during_a_flood_of_random_ipv6_clients() {
    let layer = RateLimitLayer::builder()
        .quota(Quota::per_hour(nz(10)))
        .key(ClientIp::new())
        .max_keys(NonZeroUsize::new(4096).unwrap())
        .clock(ManualClock::new())
        .build()
        .unwrap();
    let mut service = layer.clone().layer_service(ok_service(Arc::default()));
    let mut seed = 0x1234_5678_9abc_def0_u64;
    for i in 0..50_000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let ip = std::net::Ipv6Addr::from((u128::from(seed) << 64) | 1);
        assert_eq!(status(&mut service, from(&format!("[{ip}]"))).await, 200);
        if i % 64 == 0 {
            assert!(
                layer.tracked_entries() <= 4096,
                "{i}: {}",
                layer.tracked_entries()
            );
        }
    }
    assert!(
        layer.tracked_entries() <= 4096,
        "{}",
        layer.tracked_entries()
    );
    // Each shard, once full, keeps three quarters of its share: nothing more is lost.
    assert!(
        layer.tracked_entries() >= 3072,
        "{}",
        layer.tracked_entries()
    );
}

#[tokio::test]
async fn grpc_requests_get_resource_exhausted_with_pushback() {
    let layer = RateLimitLayer::builder()
        .quota(Quota::per_minute(nz(1)))
        .clock(ManualClock::new())
        .build()
        .unwrap();
    let mut service = layer.layer_service(ok_service(Arc::default()));
    let grpc = || grpc_from("192.0.2.1");
    assert_eq!(status(&mut service, grpc()).await, 200);
    let refused = service.ready().await.unwrap().call(grpc()).await.unwrap();
    assert_eq!(refused.status(), StatusCode::OK);
    assert_eq!(refused.headers()["grpc-status"], "8");
    assert_eq!(refused.headers()["grpc-retry-pushback-ms"], "60000");
}
