//! The allowed path of the rate limit layer allocates nothing: counted by a global
//! allocator that tallies the allocations of the current thread.
#![cfg(feature = "rate-limit")]

#[path = "support/service.rs"]
mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::convert::Infallible;
use std::num::NonZeroU32;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use support::{Body, from};
use tower::{Layer, Service};
use tower_toolbox::clock::ManualClock;
use tower_toolbox::rate_limit::{Headers, Quota, RateLimitLayer};

/// Forwards to the system allocator and counts this thread's allocations.
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded unchanged to `System`, which upholds the
// `GlobalAlloc` contract; the counter is a const-initialised thread local, which
// never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

/// An inner service that allocates nothing: a static body, empty headers.
fn static_ok() -> impl Service<Request<Body>, Response = Response<Body>, Error = Infallible> + Clone
{
    tower::service_fn(|_req: Request<Body>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    })
}

/// Allocations made by `n` allowed requests through `service`, counting the call,
/// the response future and dropping the response; building the requests is not
/// counted.
fn allocations_of_allowed_requests<S, B>(service: &mut S, peer: &str, n: usize) -> usize
where
    S: Service<Request<Body>, Response = Response<B>, Error = Infallible>,
{
    let requests: Vec<_> = (0..n).map(|_| from(peer)).collect();
    let before = allocations();
    for request in requests {
        let mut future = pin!(service.call(request));
        let Poll::Ready(response) = future
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
        else {
            panic!("an allowed request completes at once");
        };
        let response = response.unwrap();
        assert_eq!(response.status(), 200);
        drop(response);
    }
    allocations() - before
}

fn huge() -> NonZeroU32 {
    NonZeroU32::MAX
}

#[test]
fn an_allowed_request_allocates_nothing() {
    // Without a layer: the baseline is zero, so whatever is counted below is the
    // layer's.
    let mut bare = static_ok();
    assert_eq!(
        allocations_of_allowed_requests(&mut bare, "192.0.2.1", 100),
        0
    );

    let layer = RateLimitLayer::builder()
        .quota(Quota::per_second(huge()))
        .clock(ManualClock::new())
        .build()
        .unwrap();
    let mut service = layer.layer(static_ok());
    // The first request stores the key (and may grow the table).
    allocations_of_allowed_requests(&mut service, "192.0.2.1", 1);
    assert_eq!(
        allocations_of_allowed_requests(&mut service, "192.0.2.1", 1000),
        0
    );

    // Several quotas, all checked: still nothing.
    let layer = RateLimitLayer::builder()
        .quota(Quota::per_second(huge()).named("second"))
        .quota(Quota::per_hour(huge()).named("hour"))
        .clock(ManualClock::new())
        .build()
        .unwrap();
    let mut service = layer.layer(static_ok());
    allocations_of_allowed_requests(&mut service, "[2001:db8::1]", 1);
    assert_eq!(
        allocations_of_allowed_requests(&mut service, "[2001:db8::1]", 1000),
        0
    );
}

#[test]
fn headers_are_the_only_allocations_of_an_allowed_request() {
    // Formatting the RateLimit values needs memory, and so does the first header
    // of an empty response (the map's table): six allocations today, counted so a
    // change is noticed.
    let layer = RateLimitLayer::builder()
        .quota(Quota::per_second(huge()))
        .headers(Headers::IETF)
        .clock(ManualClock::new())
        .build()
        .unwrap();
    let mut service = layer.layer(static_ok());
    allocations_of_allowed_requests(&mut service, "192.0.2.1", 1);
    let per_request = allocations_of_allowed_requests(&mut service, "192.0.2.1", 100) / 100;
    assert!((1..=6).contains(&per_request), "{per_request}");
}
