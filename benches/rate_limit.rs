//! Rate limiting beside `governor` and `tower_governor`, in the same groups.
//!
//! Criterion groups, ours beside the peer in each:
//! - `rate_limit/hot_key`: one check on one key;
//! - `rate_limit/100k_keys`: a check on one of 100,000 known keys;
//! - `rate_limit/new_key`: the first sight of a key (tables restart empty every
//!   1,048,576 keys, so neither grows without bound);
//! - `rate_limit/layer_allowed`: the whole layer on an allowed request, beside
//!   `tower_governor` and the bare inner service (the overhead is the difference);
//! - `rate_limit/redis_one_connection` (`redis` feature, `redis-server` on the
//!   PATH): decisions per second on one connection, beside a bare `PING`.
//!
//! Before the groups, with `--bench`, it prints two counts measured by a counting
//! allocator: live bytes per key after inserting 1,000,000 keys, and allocations
//! per allowed request through the layer, for ours and the peer.

use std::alloc::{GlobalAlloc, Layout, System};
use std::convert::Infallible;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group};
use http::{Request, Response};
use http_body_util::Full;
use tower::{Layer, Service};
use tower_toolbox::rate_limit::{Limiter, Quota, RateLimitLayer};

/// Counts allocations and live bytes, delegating to the system allocator.
struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to `System`, which upholds the
// `GlobalAlloc` contract; the counters are plain atomics with no effect on memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` was allocated by `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        LIVE_BYTES.fetch_add(new_size, Ordering::Relaxed);
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const HUGE: NonZeroU32 = NonZeroU32::MAX;

fn ip(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(
        0x0a00_0000u32.wrapping_add(i.wrapping_mul(2_654_435_761)),
    ))
}

fn ours() -> Limiter {
    Limiter::new(Quota::per_second(HUGE)).unwrap()
}

type Governor = governor::DefaultKeyedRateLimiter<IpAddr>;

fn theirs() -> Governor {
    governor::RateLimiter::keyed(governor::Quota::per_second(HUGE))
}

fn hot_key(c: &mut Criterion) {
    let mut group = c.benchmark_group("rate_limit/hot_key");
    let key = ip(7);
    let limiter = ours();
    group.bench_function("tower-toolbox", |b| {
        b.iter(|| black_box(limiter.check(black_box(&key)).is_ok()))
    });
    let governor = theirs();
    group.bench_function("governor", |b| {
        b.iter(|| black_box(governor.check_key(black_box(&key)).is_ok()))
    });
    group.finish();
}

fn many_keys(c: &mut Criterion) {
    let mut group = c.benchmark_group("rate_limit/100k_keys");
    let keys: Vec<IpAddr> = (0..100_000).map(ip).collect();
    let limiter = ours();
    let governor = theirs();
    for key in &keys {
        let _ = limiter.check(key);
        let _ = governor.check_key(key);
    }
    let mut i = 0;
    group.bench_function("tower-toolbox", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(limiter.check(&keys[i]).is_ok())
        })
    });
    let mut i = 0;
    group.bench_function("governor", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(governor.check_key(&keys[i]).is_ok())
        })
    });
    group.finish();
}

/// Keys a table takes before the new-key benchmarks start over with an empty one,
/// so neither table grows without bound however long criterion runs.
const NEW_KEYS_PER_TABLE: u64 = 1 << 20;

/// Times `iters` first sightings of distinct keys, in tables of up to
/// [`NEW_KEYS_PER_TABLE`] keys each; making and dropping the tables is not timed.
fn time_new_keys<L>(
    iters: u64,
    make: impl Fn() -> L,
    check: impl Fn(&L, &IpAddr) -> bool,
) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(NEW_KEYS_PER_TABLE);
        let table = make();
        let started = Instant::now();
        for i in 0..n {
            black_box(check(&table, &ip(i as u32)));
        }
        total += started.elapsed();
        drop(table);
        left -= n;
    }
    total
}

fn new_key(c: &mut Criterion) {
    let mut group = c.benchmark_group("rate_limit/new_key");
    group.bench_function("tower-toolbox", |b| {
        b.iter_custom(|iters| time_new_keys(iters, ours, |l, key| l.check(key).is_ok()))
    });
    group.bench_function("governor", |b| {
        b.iter_custom(|iters| time_new_keys(iters, theirs, |l, key| l.check_key(key).is_ok()))
    });
    group.finish();
}

type Body = Full<Bytes>;

fn request() -> Request<Body> {
    let mut request = Request::get("/").body(Body::default()).unwrap();
    // What axum's `into_make_service_with_connect_info` records: both layers read it.
    let peer = SocketAddr::from(([10, 1, 2, 3], 4000));
    request
        .extensions_mut()
        .insert(axum::extract::ConnectInfo(peer));
    request
}

/// The inner service: answers at once. Its body type is axum's, which
/// `tower_governor` needs for its own refusals.
fn inner() -> impl Service<
    Request<Body>,
    Response = Response<axum::body::Body>,
    Error = Infallible,
    Future: Send + 'static,
> + Clone
+ Send
+ 'static {
    tower::service_fn(|_req: Request<Body>| async {
        Ok::<_, Infallible>(Response::new(axum::body::Body::empty()))
    })
}

/// Polls a future that completes at once.
fn complete<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the allowed path should complete at once"),
    }
}

fn our_layer() -> impl Service<Request<Body>, Response = Response<impl Sized>, Error = Infallible> {
    RateLimitLayer::new(Quota::per_second(HUGE)).layer(inner())
}

fn their_layer() -> impl Service<Request<Body>, Response = Response<impl Sized>, Error = Infallible>
{
    let config = tower_governor::governor::GovernorConfigBuilder::default()
        .per_nanosecond(1)
        .burst_size(u32::MAX)
        .finish()
        .unwrap();
    tower_governor::GovernorLayer::new(config)
        .error_handler(|_| {
            let mut refused = Response::new(axum::body::Body::empty());
            *refused.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
            refused
        })
        .layer(inner())
}

fn layer_allowed(c: &mut Criterion) {
    let mut group = c.benchmark_group("rate_limit/layer_allowed");
    // The inner service alone: the layers' overhead is their time minus this.
    let mut bare = inner();
    group.bench_function("no layer", |b| {
        b.iter_batched(
            request,
            |request| {
                let status = complete(bare.call(request)).unwrap().status();
                assert_eq!(status, 200);
            },
            BatchSize::SmallInput,
        )
    });
    let mut ours = our_layer();
    group.bench_function("tower-toolbox", |b| {
        b.iter_batched(
            request,
            |request| {
                let status = complete(ours.call(request)).unwrap().status();
                assert_eq!(status, 200);
            },
            BatchSize::SmallInput,
        )
    });
    let mut theirs = their_layer();
    group.bench_function("tower_governor", |b| {
        b.iter_batched(
            request,
            |request| {
                let status = complete(theirs.call(request)).unwrap().status();
                assert_eq!(status, 200);
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

/// Allocations per allowed request through a service, request construction
/// excluded (the inner service's own allocations included: subtract "no layer").
fn allocations_per_request<S, B>(mut service: S) -> f64
where
    S: Service<Request<Body>, Response = Response<B>, Error = Infallible>,
{
    const N: usize = 10_000;
    let _ = complete(service.call(request()));
    let requests: Vec<_> = (0..N).map(|_| request()).collect();
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for request in requests {
        let response = complete(service.call(request)).unwrap();
        black_box(&response);
        // Dropping the response may free, never allocate; count it too.
        drop(response);
    }
    (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / N as f64
}

/// Live bytes added by one million distinct keys.
fn bytes_per_key(insert: impl FnOnce(&[IpAddr])) -> f64 {
    const N: u32 = 1_000_000;
    let keys: Vec<IpAddr> = (0..N).map(ip).collect();
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    insert(&keys);
    (LIVE_BYTES.load(Ordering::Relaxed) - before) as f64 / f64::from(N)
}

fn report() {
    let mut ours_kept = None;
    let ours_bytes = bytes_per_key(|keys| {
        let limiter = Limiter::with_clock(
            Quota::per_hour(NonZeroU32::new(10).unwrap()),
            tower_toolbox::clock::MonotonicClock::new(),
            std::num::NonZeroUsize::new(2 << 20).unwrap(),
        )
        .unwrap();
        for key in keys {
            let _ = limiter.check(key);
        }
        assert_eq!(limiter.len(), keys.len());
        ours_kept = Some(limiter);
    });
    let mut theirs_kept = None;
    let theirs_bytes = bytes_per_key(|keys| {
        let limiter: Governor =
            governor::RateLimiter::keyed(governor::Quota::per_hour(NonZeroU32::new(10).unwrap()));
        for key in keys {
            let _ = limiter.check_key(key);
        }
        theirs_kept = Some(limiter);
    });
    drop((ours_kept, theirs_kept));
    eprintln!(
        "bytes per key at 1M keys: tower-toolbox {ours_bytes:.1}, governor {theirs_bytes:.1} (ratio {:.2})",
        ours_bytes / theirs_bytes
    );
    let bare = allocations_per_request(inner());
    let ours = allocations_per_request(our_layer());
    let theirs = allocations_per_request(their_layer());
    eprintln!(
        "allocations per allowed request, the inner service's {bare:.2} subtracted: \
         tower-toolbox {:.2}, tower_governor {:.2}",
        ours - bare,
        theirs - bare
    );
}

/// A `redis-server` on a free loopback port, killed on drop.
#[cfg(feature = "redis")]
struct RedisChild(std::process::Child, u16);

#[cfg(feature = "redis")]
impl RedisChild {
    fn start() -> Option<Self> {
        use std::process::{Command, Stdio};

        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .ok()?;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Some(RedisChild(child, port))
    }
}

#[cfg(feature = "redis")]
impl Drop for RedisChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Decisions per second on one Redis connection: one decision at a time, and 64
/// in flight (pipelined on the multiplexed connection). `governor` has no Redis
/// backend; the floor beside them is a bare `PING` on the same connection, the
/// least any one-round-trip decision can cost.
#[cfg(feature = "redis")]
fn redis_decisions(c: &mut Criterion) {
    let Some(server) = RedisChild::start() else {
        eprintln!("rate_limit/redis: skipped (redis-server is not installed)");
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (store, service) = runtime.block_on(async {
        let url = format!("redis://127.0.0.1:{}/", server.1);
        let store = tower_toolbox::store::RedisStore::open(&url)
            .unwrap()
            .with_timeout(Duration::from_secs(1));
        let layer = RateLimitLayer::builder()
            .quota(Quota::per_second(HUGE))
            .redis(store.clone())
            .build()
            .unwrap();
        (store, layer.layer(inner()))
    });

    let mut group = c.benchmark_group("rate_limit/redis_one_connection");
    group.throughput(Throughput::Elements(1));
    group.bench_function("PING round trip", |b| {
        b.to_async(&runtime).iter(|| async {
            let pong: String = store
                .call(|mut connection| async move {
                    redis::cmd("PING").query_async(&mut connection).await
                })
                .await
                .unwrap();
            black_box(pong)
        })
    });
    group.bench_function("tower-toolbox decision", |b| {
        b.to_async(&runtime).iter(|| {
            let mut service = service.clone();
            async move {
                let response = service.call(request()).await.unwrap();
                assert_eq!(response.status(), 200);
            }
        })
    });
    group.throughput(Throughput::Elements(64));
    group.bench_function("tower-toolbox decisions, 64 in flight", |b| {
        b.to_async(&runtime).iter(|| {
            let service = service.clone();
            async move {
                let calls = (0..64).map(|_| {
                    let mut service = service.clone();
                    async move { service.call(request()).await.unwrap().status() }
                });
                for status in futures_join_all(calls).await {
                    assert_eq!(status, 200);
                }
            }
        })
    });
    group.finish();
    drop(server);
}

#[cfg(not(feature = "redis"))]
fn redis_decisions(_: &mut Criterion) {
    eprintln!("rate_limit/redis_one_connection: skipped (built without the `redis` feature)");
}

/// Runs `futures` concurrently on this task and collects their outputs in order.
#[cfg(feature = "redis")]
async fn futures_join_all<F: Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut pinned: Vec<_> = futures.map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in pinned.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => *output = Some(value),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().map(Option::unwrap).collect()
}

criterion_group!(
    benches,
    hot_key,
    many_keys,
    new_key,
    layer_allowed,
    redis_decisions
);

fn main() {
    // `cargo bench --no-run` builds this; `cargo test --benches` runs it in test
    // mode, where the report is skipped to keep CI fast.
    if std::env::args().any(|a| a == "--bench") {
        report();
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
