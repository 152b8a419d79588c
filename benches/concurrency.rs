//! The cost of the concurrency limit on the allowed path (admit + release) and
//! on the refusal and shed paths (including building the 503 response), beside
//! tower's own `ConcurrencyLimit` and `LoadShed` in the same groups.
//!
//! Before the timed groups, the bench counts heap allocations per request with
//! a counting global allocator and prints them.

use std::alloc::{GlobalAlloc, Layout, System};
use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::num::NonZeroUsize;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::Empty;
use std::time::Duration;
use tower::{Layer, Service};
use tower_toolbox::clock::ManualClock;
use tower_toolbox::concurrency::{ConcurrencyLimitLayer, Fixed, Gradient2, Windowed};
use tower_toolbox::shed::{LoadShed, LoadShedLayer};

/// Counts every allocation the process makes.
struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller upholds `GlobalAlloc::dealloc`'s contract.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

type Inner = tower::util::ServiceFn<
    fn(Request<()>) -> std::future::Ready<Result<Response<Empty<Bytes>>, Infallible>>,
>;

/// A service that answers at once, so only the layer's cost is measured.
fn inner() -> Inner {
    fn answer(_: Request<()>) -> std::future::Ready<Result<Response<Empty<Bytes>>, Infallible>> {
        std::future::ready(Ok(Response::new(Empty::new())))
    }
    tower::service_fn(answer as fn(_) -> _)
}

/// Polls once: every future here is ready at once.
fn poll_once<F: Future>(future: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(future).poll(&mut cx) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the bench's futures are ready at once"),
    }
}

/// One request through `service`: ready, call, response, drop (release).
fn one<S, B>(service: &mut S, request: Request<B>) -> bool
where
    S: Service<Request<B>>,
{
    let mut cx = Context::from_waker(Waker::noop());
    let ready = service.poll_ready(&mut cx);
    assert!(ready.is_ready(), "the bench's services are always ready");
    let response = poll_once(service.call(request));
    response.is_ok()
}

fn nz(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).unwrap()
}

fn allocations_per_request(mut f: impl FnMut()) -> f64 {
    const N: usize = 10_000;
    f();
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..N {
        f();
    }
    (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / N as f64
}

/// A load shedder of one slot and a line of one, on a clock the bench moves.
/// Returns the shedder, the response holding the slot, and the request waiting
/// in the line.
fn shedder() -> (
    LoadShed<Inner, Fixed, ManualClock>,
    ManualClock,
    impl Sized,
    ResponseFuture,
) {
    let clock = ManualClock::new();
    let mut shed = LoadShedLayer::new(nz(1))
        .capacity(nz(1))
        .clock(clock.clone())
        .layer(inner());
    let holder = poll_once(shed.call(Request::new(()))).unwrap();
    let waiting = shed.call(Request::new(()));
    (shed, clock, holder, waiting)
}

type ResponseFuture = tower_toolbox::shed::ResponseFuture<Inner, (), ManualClock>;

/// One CoDel shed: 10 ms later (past the 5 ms target, in a line busy for more
/// than the 100 ms interval) a new request sheds the waiter and takes its place
/// in line; the shed waiter's future then yields its 503.
fn shed_one(
    shed: &mut LoadShed<Inner, Fixed, ManualClock>,
    clock: &ManualClock,
    waiting: &mut ResponseFuture,
) -> http::StatusCode {
    clock.advance(Duration::from_millis(10));
    let next = shed.call(Request::new(()));
    let response = poll_once(std::mem::replace(waiting, next)).unwrap();
    response.status()
}

fn report_allocations() {
    let mut ours = ConcurrencyLimitLayer::new(nz(1024)).layer(inner());
    let mut tower_limit = tower::limit::ConcurrencyLimit::new(inner(), 1024);
    let mut adaptive =
        ConcurrencyLimitLayer::adaptive(Windowed::new(Gradient2::new())).layer(inner());
    println!(
        "allocations per admit + release: tower-toolbox {}, tower-toolbox Windowed<Gradient2> {}, tower {}",
        allocations_per_request(|| assert!(one(&mut ours, Request::new(())))),
        allocations_per_request(|| assert!(one(&mut adaptive, Request::new(())))),
        allocations_per_request(|| assert!(one(&mut tower_limit, Request::new(())))),
    );

    let layer = ConcurrencyLimitLayer::new(nz(1));
    let mut full = layer.layer(inner());
    let _holder = poll_once(full.call(Request::new(()))).unwrap();
    println!(
        "allocations per refusal (503 problem+json built): tower-toolbox {}",
        allocations_per_request(|| {
            let response = poll_once(full.call(Request::new(()))).unwrap();
            assert_eq!(response.status(), 503);
        }),
    );

    let (mut shed, clock, _holder, mut waiting) = shedder();
    println!(
        "allocations per refusal of a full line (LoadShed, 503 built): tower-toolbox {}",
        allocations_per_request(|| {
            let response = poll_once(shed.call(Request::new(()))).unwrap();
            assert_eq!(response.status(), 503);
        }),
    );
    clock.advance(Duration::from_millis(200));
    println!(
        "allocations per CoDel shed (503 built, the newcomer queued): tower-toolbox {}",
        allocations_per_request(|| {
            assert_eq!(shed_one(&mut shed, &clock, &mut waiting), 503);
        }),
    );
}

fn admit_release(c: &mut Criterion) {
    report_allocations();

    let mut group = c.benchmark_group("concurrency/admit_release");
    let mut ours = ConcurrencyLimitLayer::new(nz(1024)).layer(inner());
    group.bench_function("tower_toolbox::ConcurrencyLimit", |b| {
        b.iter(|| black_box(one(&mut ours, Request::new(()))))
    });
    let mut adaptive =
        ConcurrencyLimitLayer::adaptive(Windowed::new(Gradient2::new())).layer(inner());
    group.bench_function(
        "tower_toolbox::ConcurrencyLimit<Windowed<Gradient2>>",
        |b| b.iter(|| black_box(one(&mut adaptive, Request::new(())))),
    );
    let mut tower_limit = tower::limit::ConcurrencyLimit::new(inner(), 1024);
    group.bench_function("tower::limit::ConcurrencyLimit", |b| {
        b.iter(|| black_box(one(&mut tower_limit, Request::new(()))))
    });
    let mut bare = inner();
    group.bench_function("no layer", |b| {
        b.iter(|| black_box(one(&mut bare, Request::new(()))))
    });
    group.finish();
}

fn refuse(c: &mut Criterion) {
    let mut group = c.benchmark_group("concurrency/refuse");

    // Ours: the limit is held by a live response; each call is refused with a
    // complete 503 problem+json response.
    let mut ours = ConcurrencyLimitLayer::new(nz(1)).layer(inner());
    let _held = poll_once(ours.call(Request::new(()))).unwrap();
    group.bench_function("tower_toolbox 503 problem+json", |b| {
        b.iter(|| {
            let response = poll_once(ours.call(Request::new(()))).unwrap();
            black_box(response.status())
        })
    });
    let grpc = || {
        Request::post("/a.B/C")
            .header("content-type", "application/grpc")
            .body(())
            .unwrap()
    };
    group.bench_function("tower_toolbox gRPC UNAVAILABLE", |b| {
        b.iter(|| {
            let response = poll_once(ours.call(grpc())).unwrap();
            black_box(response.status())
        })
    });
    // Most of the row above is the bench building its gRPC request.
    group.bench_function("the gRPC request alone, no layer", |b| {
        b.iter(|| black_box(grpc()).method().clone())
    });

    // Ours: the load shedder with its one slot taken and its line of one full;
    // the clock stands still, so the waiter is not stale and a newcomer is
    // refused with a complete 503.
    let (mut shed, clock, _holder, mut waiting) = shedder();
    group.bench_function("tower_toolbox LoadShed line full 503", |b| {
        b.iter(|| {
            let response = poll_once(shed.call(Request::new(()))).unwrap();
            black_box(response.status())
        })
    });

    // Ours: CoDel shedding. The line has been busy past the interval; each
    // iteration moves the clock 10 ms, a newcomer sheds the waiter (now past the
    // target) and queues, and the shed waiter's 503 is built. The cost includes
    // queueing the newcomer (its boxed wait state) and moving the manual clock.
    clock.advance(Duration::from_millis(200));
    group.bench_function(
        "tower_toolbox LoadShed CoDel shed 503 + queue newcomer",
        |b| b.iter(|| black_box(shed_one(&mut shed, &clock, &mut waiting))),
    );

    // The floor under every refusal above: the bench's request and a copy of
    // the same 503 problem+json response, built and dropped, with no layer.
    let mut full = ConcurrencyLimitLayer::new(nz(1)).layer(inner());
    let _holder = poll_once(full.call(Request::new(()))).unwrap();
    let (parts, body) = poll_once(full.call(Request::new(()))).unwrap().into_parts();
    let refusal = Response::from_parts(parts, Bytes::from_static(b"{}"));
    assert_eq!(refusal.status(), 503);
    group.bench_function("the same 503 response alone, no layer", |b| {
        b.iter(|| {
            let request = black_box(Request::new(()));
            let response = black_box(&refusal).clone();
            drop(request);
            black_box(response.status())
        })
    });
    drop(body);

    // tower: LoadShed over a ConcurrencyLimit whose one permit is taken; the
    // refusal is an `Overloaded` error, no response.
    let mut limited = tower::limit::ConcurrencyLimit::new(inner(), 1);
    let mut cx = Context::from_waker(Waker::noop());
    assert!(limited.poll_ready(&mut cx).is_ready());
    let _held = limited.call(Request::new(()));
    let mut shed = tower::load_shed::LoadShed::new(limited.clone());
    group.bench_function("tower LoadShed(ConcurrencyLimit) error", |b| {
        b.iter(|| {
            let mut cx = Context::from_waker(Waker::noop());
            let _ = shed.poll_ready(&mut cx);
            let result = poll_once(shed.call(Request::new(())));
            black_box(result.is_err())
        })
    });
    group.finish();
}

criterion_group!(benches, admit_release, refuse);
criterion_main!(benches);
