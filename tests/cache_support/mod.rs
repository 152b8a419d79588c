//! A scripted origin behind a cache on a manual clock.

#![allow(dead_code)]

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::ServiceExt;
use tower_toolbox::cache::{Cache, CacheLayer};
use tower_toolbox::clock::{Clock, ManualClock};

/// 2026-01-01T00:00:00Z: the wall time at which the manual clock reads zero.
pub const T0: u64 = 1_767_225_600;

pub fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(T0)
}

pub fn http_date(at: SystemTime) -> String {
    httpdate::fmt_http_date(at)
}

/// What the origin is told for each call: the request head, the call number (from
/// 1) and the wall time.
pub struct Call<'a> {
    pub request: &'a Request<()>,
    pub n: usize,
    pub now: SystemTime,
}

type Script = dyn Fn(Call<'_>) -> Response<Full<Bytes>> + Send + Sync;

type Origin = tower::util::BoxCloneSyncService<Request<()>, Response<Full<Bytes>>, Infallible>;

pub struct Harness {
    pub clock: ManualClock,
    pub layer: CacheLayer<ManualClock>,
    pub service: Cache<Origin, ManualClock>,
    pub calls: Arc<AtomicUsize>,
    pub seen: Arc<Mutex<Vec<HeaderMap>>>,
}

/// What the client got.
#[derive(Debug)]
pub struct Got {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Got {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

impl Harness {
    pub fn new(
        configure: impl FnOnce(CacheLayer<ManualClock>) -> CacheLayer<ManualClock>,
        script: impl Fn(Call<'_>) -> Response<Full<Bytes>> + Send + Sync + 'static,
    ) -> Self {
        let clock = ManualClock::new();
        let layer = configure(
            CacheLayer::new()
                .clock(clock.clone())
                .wall_clock_origin(t0()),
        );
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<Script> = Arc::new(script);
        let origin = {
            let (calls, seen, clock) = (calls.clone(), seen.clone(), clock.clone());
            tower::service_fn(move |request: Request<()>| {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                seen.lock().unwrap().push(request.headers().clone());
                let now = t0() + Duration::from_nanos(clock.now().as_nanos());
                let response = script(Call {
                    request: &request,
                    n,
                    now,
                });
                async move { Ok::<_, Infallible>(response) }
            })
        };
        let service = tower::Layer::layer(&layer, Origin::new(origin));
        Harness {
            clock,
            layer,
            service,
            calls,
            seen,
        }
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    pub fn advance(&self, secs: u64) {
        self.clock.advance(Duration::from_secs(secs));
    }

    pub async fn send(&self, request: Request<()>) -> Got {
        let response = self.service.clone().oneshot(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        // Let stores and background refreshes spawned by the request run.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        Got {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Got {
        self.send(request("GET", path, headers)).await
    }
}

pub fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> Request<()> {
    let mut builder = Request::builder()
        .method(method)
        .uri(format!("http://origin.test{path}"));
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(()).unwrap()
}

/// A response with `status`, `headers`, `Date` = now (unless given) and body
/// `v{n}`.
pub fn reply(call: &Call<'_>, status: u16, headers: &[(&str, &str)]) -> Response<Full<Bytes>> {
    let mut builder = Response::builder().status(status);
    let mut has_date = false;
    for (name, value) in headers {
        has_date |= name.eq_ignore_ascii_case("date");
        builder = builder.header(*name, *value);
    }
    if !has_date {
        builder = builder.header("date", http_date(call.now));
    }
    builder
        .body(Full::new(Bytes::from(format!("v{}", call.n))))
        .unwrap()
}
