//! The response cache: hit latency, miss overhead, memory per entry and body
//! copies, beside `http-cache-tower` (with its in-memory moka manager) in the
//! same groups.
//!
//! `cargo bench --bench cache -- --warm-up-time 1 --measurement-time 3`
//!
//! Every contender sees the same origin (a `service_fn` answering
//! `Cache-Control: max-age=3600` with a fixed body) and the same requests (a
//! cloned request head, empty body). The memory and copy figures come from a
//! counting global allocator and are printed before the timings.

use std::alloc::{GlobalAlloc, Layout, System};
use std::convert::Infallible;
use std::future::Future;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, criterion_group};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceExt};
use tower_toolbox::cache::CacheLayer;

/// Counts live and total allocated bytes, allocations, and allocations of at least
/// `LARGE_FROM` bytes: with `LARGE_FROM` set to a body's size, every copy of the
/// body needs one of those, so they count body copies.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static ALLOCATED: AtomicUsize = AtomicUsize::new(0);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
static LARGE_FROM: AtomicUsize = AtomicUsize::new(usize::MAX);
static LARGE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        if layout.size() >= LARGE_FROM.load(Ordering::Relaxed) {
            LARGE.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const CACHE_CONTROL: &str = "max-age=3600";

/// Calls that reached an [`origin`]: a hit must not add one.
static ORIGIN_CALLS: AtomicUsize = AtomicUsize::new(0);

/// Sends one request and checks that it was a hit (the origin was not called).
async fn assert_hit<S, B>(service: &S, label: &str) -> usize
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let before = ORIGIN_CALLS.load(Ordering::Relaxed);
    let len = drain(service.clone().oneshot(request("/hit")).await.unwrap()).await;
    assert_eq!(
        ORIGIN_CALLS.load(Ordering::Relaxed),
        before,
        "{label}: the benchmarked request is not a hit"
    );
    len
}

fn origin(
    size: usize,
) -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl std::future::Future<Output = Result<Response<Full<Bytes>>, Infallible>>
             + Send
             + 'static,
> + Clone
+ Send
+ Sync
+ 'static {
    let body = Bytes::from(vec![b'x'; size]);
    tower::service_fn(move |_: Request<Full<Bytes>>| {
        ORIGIN_CALLS.fetch_add(1, Ordering::Relaxed);
        let body = body.clone();
        async move {
            Ok::<_, Infallible>(
                Response::builder()
                    .header("cache-control", CACHE_CONTROL)
                    .header("content-type", "application/octet-stream")
                    .body(Full::new(body))
                    .unwrap(),
            )
        }
    })
}

/// Like [`origin`], but every response gets its own copy of the body, as from
/// the network.
fn fresh_origin(
    size: usize,
) -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl std::future::Future<Output = Result<Response<Full<Bytes>>, Infallible>>
             + Send
             + 'static,
> + Clone
+ Send
+ Sync
+ 'static {
    tower::service_fn(move |_: Request<Full<Bytes>>| async move {
        Ok::<_, Infallible>(
            Response::builder()
                .header("cache-control", CACHE_CONTROL)
                .header("content-type", "application/octet-stream")
                .body(Full::new(Bytes::from(vec![b'x'; size])))
                .unwrap(),
        )
    })
}

fn request(path: &str) -> Request<Full<Bytes>> {
    Request::get(format!("http://bench.test{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap()
}

fn template(path: &str) -> http::request::Parts {
    request(path).into_parts().0
}

async fn drain<B: http_body::Body<Data = Bytes>>(response: Response<B>) -> usize
where
    B::Error: std::fmt::Debug,
{
    let mut body = std::pin::pin!(response.into_body());
    let mut len = 0;
    while let Some(frame) = body.as_mut().frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            len += data.len();
        }
    }
    len
}

/// Where the first data frame of `response` lives in memory.
async fn first_frame_at<B>(response: Response<B>) -> usize
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let mut body = std::pin::pin!(response.into_body());
    let frame = body.as_mut().frame().await.unwrap().unwrap();
    frame.into_data().unwrap().as_ptr() as usize
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn hit(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("cache_hit");
    for size in [1024usize, 100 * 1024] {
        let label = format!("{}KiB", size / 1024);
        let parts = template("/hit");

        let ours = rt.block_on(async {
            let service = CacheLayer::new().layer(origin(size));
            drain(service.clone().oneshot(request("/hit")).await.unwrap()).await;
            assert_eq!(assert_hit(&service, "tower-toolbox").await, size);
            service
        });
        group.bench_function(BenchmarkId::new("tower-toolbox", &label), |b| {
            b.to_async(&rt).iter(|| {
                let mut service = ours.clone();
                let request = Request::from_parts(parts.clone(), Full::new(Bytes::new()));
                async move { drain(service.call(request).await.unwrap()).await }
            })
        });

        // The same hit, polled once with no runtime: the layer's own cost.
        group.bench_function(
            BenchmarkId::new("tower-toolbox, polled once", &label),
            |b| {
                let waker = std::task::Waker::noop();
                let mut cx = std::task::Context::from_waker(waker);
                b.iter(|| {
                    let mut service = ours.clone();
                    let request = Request::from_parts(parts.clone(), Full::new(Bytes::new()));
                    let mut future = std::pin::pin!(service.call(request));
                    let std::task::Poll::Ready(Ok(response)) = future.as_mut().poll(&mut cx) else {
                        panic!("a hit is ready at once");
                    };
                    let mut body = std::pin::pin!(response.into_body());
                    match http_body::Body::poll_frame(body.as_mut(), &mut cx) {
                        std::task::Poll::Ready(Some(Ok(frame))) => frame.into_data().unwrap().len(),
                        _ => panic!("a hit's body is ready at once"),
                    }
                })
            },
        );

        // The harness alone: the origin called directly, same request.
        let bare = origin(size);
        group.bench_function(BenchmarkId::new("origin alone, no cache", &label), |b| {
            b.to_async(&rt).iter(|| {
                let mut service = bare.clone();
                let request = Request::from_parts(parts.clone(), Full::new(Bytes::new()));
                async move { drain(service.call(request).await.unwrap()).await }
            })
        });

        let peer = rt.block_on(async {
            let layer = http_cache_tower::HttpCacheLayer::new(http_cache::MokaManager::default());
            let service = layer.layer(origin(size));
            drain(service.clone().oneshot(request("/hit")).await.unwrap()).await;
            assert_eq!(assert_hit(&service, "http-cache-tower").await, size);
            service
        });
        group.bench_function(BenchmarkId::new("http-cache-tower", &label), |b| {
            b.to_async(&rt).iter(|| {
                let mut service = peer.clone();
                let request = Request::from_parts(parts.clone(), Full::new(Bytes::new()));
                async move { drain(service.call(request).await.unwrap()).await }
            })
        });
    }
    group.finish();
}

/// Both caches hold about the same number of entries during the miss group:
/// ours a byte budget of this many 1 KiB entries (each weighed at about 1.9 KiB,
/// its content and bookkeeping), the peer's moka store this many entries. With
/// the peer's default store (42 entries) it would never grow a large table
/// while ours does, and the comparison would not be of the same work.
const MISS_ENTRIES: u64 = 4096;

fn miss(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("cache_miss_1KiB");
    let counter = AtomicUsize::new(0);
    let next = || format!("/miss/{}", counter.fetch_add(1, Ordering::Relaxed));
    let budget = NonZeroU64::new(MISS_ENTRIES * 1900).unwrap();

    let bare = origin(1024);
    group.bench_function("no cache", |b| {
        b.to_async(&rt).iter(|| {
            let service = bare.clone();
            let request = request(&next());
            async move { drain(service.oneshot(request).await.unwrap()).await }
        })
    });
    let ours = CacheLayer::new().max_bytes(budget).layer(origin(1024));
    group.bench_function("tower-toolbox", |b| {
        b.to_async(&rt).iter(|| {
            let service = ours.clone();
            let request = request(&next());
            async move { drain(service.oneshot(request).await.unwrap()).await }
        })
    });
    let uncollapsed = CacheLayer::new()
        .max_bytes(budget)
        .collapse(false)
        .layer(origin(1024));
    group.bench_function("tower-toolbox, collapsing off", |b| {
        b.to_async(&rt).iter(|| {
            let service = uncollapsed.clone();
            let request = request(&next());
            async move { drain(service.oneshot(request).await.unwrap()).await }
        })
    });
    let peer = rt.block_on(async {
        let store = moka::future::Cache::new(MISS_ENTRIES);
        http_cache_tower::HttpCacheLayer::new(http_cache::MokaManager::new(store))
            .layer(origin(1024))
    });
    group.bench_function("http-cache-tower", |b| {
        b.to_async(&rt).iter(|| {
            let service = peer.clone();
            let request = request(&next());
            async move { drain(service.oneshot(request).await.unwrap()).await }
        })
    });
    group.finish();
}

/// Memory per stored entry beyond its content, and bytes allocated per hit.
fn report() {
    let rt = runtime();
    rt.block_on(async {
        const ENTRIES: usize = 10_000;
        const BODY: usize = 1024;
        let layer = CacheLayer::new();
        let service = layer.layer(fresh_origin(BODY));
        // One stored response first, so lazily built state is not counted.
        drain(service.clone().oneshot(request("/warm")).await.unwrap()).await;
        let key_len = "http://bench.test/entry/000000".len();
        let before = LIVE.load(Ordering::Relaxed);
        // Each request is built and dropped inside the loop, so what stays live is
        // what the cache keeps.
        for i in 0..ENTRIES {
            let request = request(&format!("/entry/{i:06}"));
            drain(service.clone().oneshot(request).await.unwrap()).await;
        }
        let stats = layer.stats();
        let after = LIVE.load(Ordering::Relaxed);
        assert_eq!(stats.responses as usize, ENTRIES + 1);
        let header_bytes = "cache-control".len()
            + CACHE_CONTROL.len()
            + "content-type".len()
            + "application/octet-stream".len()
            + "date".len()
            + "Thu, 01 Jan 2026 00:00:00 GMT".len();
        let content = BODY + key_len + header_bytes;
        assert!(stats.bytes > 0);
        let per_entry = (after - before) as f64 / ENTRIES as f64;
        eprintln!(
            "memory: {per_entry:.0} B live per stored entry, of which {content} B content \
             (body {BODY}, key {key_len}, header names and values {header_bytes}): \
             {:.0} B beyond content; weighed as {:.0} B against max_bytes",
            per_entry - content as f64,
            stats.bytes as f64 / stats.responses as f64,
        );

        moka_alone(key_len);

        for size in [1024usize, 100 * 1024] {
            let ours = CacheLayer::new().layer(origin(size));
            drain(ours.clone().oneshot(request("/hit")).await.unwrap()).await;
            assert_hit(&ours, "tower-toolbox").await;
            let peer = http_cache_tower::HttpCacheLayer::new(http_cache::MokaManager::default())
                .layer(origin(size));
            drain(peer.clone().oneshot(request("/hit")).await.unwrap()).await;
            assert_hit(&peer, "http-cache-tower").await;
            let parts = template("/hit");
            const HITS: usize = 1000;

            // The stored bytes themselves: every hit hands out the same pointer.
            let first = first_frame_at(ours.clone().oneshot(request("/hit")).await.unwrap()).await;
            let second = first_frame_at(ours.clone().oneshot(request("/hit")).await.unwrap()).await;
            assert_eq!(first, second, "a hit serves the stored bytes");

            let measure = |run: &'static str| {
                let start = (
                    ALLOCATED.load(Ordering::Relaxed),
                    LARGE.load(Ordering::Relaxed),
                    ALLOCATIONS.load(Ordering::Relaxed),
                );
                move || {
                    let bytes = (ALLOCATED.load(Ordering::Relaxed) - start.0) / HITS;
                    let copies = (LARGE.load(Ordering::Relaxed) - start.1) as f64 / HITS as f64;
                    let count =
                        (ALLOCATIONS.load(Ordering::Relaxed) - start.2) as f64 / HITS as f64;
                    (run, bytes, count, copies)
                }
            };
            LARGE_FROM.store(size, Ordering::Relaxed);
            let calls = ORIGIN_CALLS.load(Ordering::Relaxed);

            let done = measure("tower-toolbox");
            for _ in 0..HITS {
                let request = Request::from_parts(parts.clone(), Full::new(Bytes::new()));
                assert_eq!(
                    drain(ours.clone().oneshot(request).await.unwrap()).await,
                    size
                );
            }
            let ours_row = done();

            let done = measure("http-cache-tower");
            for _ in 0..HITS {
                let request = Request::from_parts(parts.clone(), Full::new(Bytes::new()));
                assert_eq!(
                    drain(peer.clone().oneshot(request).await.unwrap()).await,
                    size
                );
            }
            let peer_row = done();

            LARGE_FROM.store(usize::MAX, Ordering::Relaxed);
            assert_eq!(
                ORIGIN_CALLS.load(Ordering::Relaxed),
                calls,
                "every hit was a hit"
            );
            for (run, bytes, count, copies) in [ours_row, peer_row] {
                eprintln!(
                    "hit, {} KiB body, {run}: {bytes} B in {count:.2} allocations per hit \
                     (with the benchmark's own request), {copies:.2} body copies per hit \
                     (allocations of at least {size} B)",
                    size / 1024,
                );
            }
        }
    });
}

/// moka's own bytes per entry, configured as the layer's store (weigher,
/// per-entry expiry), holding keys of `key_len` bytes and values with no heap:
/// the part of the per-entry cost that is not ours to shrink.
fn moka_alone(key_len: usize) {
    struct Keep;
    impl moka::Expiry<std::sync::Arc<str>, u64> for Keep {
        fn expire_after_create(
            &self,
            _: &std::sync::Arc<str>,
            value: &u64,
            _: std::time::Instant,
        ) -> Option<std::time::Duration> {
            Some(std::time::Duration::from_secs(*value))
        }
    }
    const ENTRIES: usize = 10_000;
    let cache: moka::sync::Cache<std::sync::Arc<str>, u64> = moka::sync::Cache::builder()
        .max_capacity(64 << 20)
        .weigher(|key: &std::sync::Arc<str>, _: &u64| key.len() as u32 + 200)
        .expire_after(Keep)
        .build();
    cache.insert(std::sync::Arc::from("warm"), 3600);
    cache.run_pending_tasks();
    let before = LIVE.load(Ordering::Relaxed);
    for i in 0..ENTRIES {
        let key = format!("http://bench.test/entry/{i:06}");
        assert_eq!(key.len(), key_len);
        cache.insert(std::sync::Arc::from(key), 3600);
    }
    cache.run_pending_tasks();
    assert_eq!(cache.entry_count() as usize, ENTRIES + 1);
    let after = LIVE.load(Ordering::Relaxed);
    // The key itself: its bytes and the `Arc` holding them.
    let key = key_len + 2 * std::mem::size_of::<usize>();
    let per_entry = (after - before) as f64 / ENTRIES as f64;
    eprintln!(
        "memory: moka alone (sync cache, weigher, per-entry expiry): {:.0} B per entry \
         beyond an Arc<str> key of {key_len} B and a value without heap",
        per_entry - key as f64
    );
}

criterion_group!(benches, hit, miss);

fn main() {
    // `cargo bench --no-run` builds this; `cargo test --benches` runs it in test
    // mode, where the report is skipped to keep CI fast.
    if std::env::args().any(|a| a == "--bench") {
        report();
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
