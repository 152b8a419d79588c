//! Bodies (tee, size limit, shared bytes), the byte budget, and request
//! collapsing with exact upstream call counts on real tasks.

use std::convert::Infallible;
use std::num::{NonZeroU64, NonZeroUsize};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use tokio::sync::{Notify, mpsc};
use tower::ServiceExt;
use tower_toolbox::cache::CacheLayer;
use tower_toolbox::clock::ManualClock;

#[path = "support/channel_body.rs"]
mod channel_body;
use channel_body::ChannelBody;

type Body = BoxBody<Bytes, Infallible>;

fn full(data: &'static [u8]) -> Body {
    Full::new(Bytes::from_static(data)).boxed()
}

fn get(path: &str) -> Request<()> {
    Request::get(format!("http://o.test{path}"))
        .body(())
        .unwrap()
}

/// An origin that counts calls and, when gated, holds every response until the
/// gate opens.
#[derive(Clone)]
struct Origin {
    calls: Arc<AtomicUsize>,
    gate: Arc<Notify>,
    gated: bool,
    cache_control: &'static str,
}

impl Origin {
    fn new(cache_control: &'static str, gated: bool) -> Self {
        Origin {
            calls: Arc::default(),
            gate: Arc::new(Notify::new()),
            gated,
            cache_control,
        }
    }

    fn service(&self) -> tower::util::BoxCloneSyncService<Request<()>, Response<Body>, Infallible> {
        let this = self.clone();
        tower::util::BoxCloneSyncService::new(tower::service_fn(move |_request: Request<()>| {
            let this = this.clone();
            async move {
                let n = this.calls.fetch_add(1, Ordering::SeqCst) + 1;
                if this.gated {
                    this.gate.notified().await;
                }
                Ok::<_, Infallible>(
                    Response::builder()
                        .header("cache-control", this.cache_control)
                        .body(Full::new(Bytes::from(format!("v{n}"))).boxed())
                        .unwrap(),
                )
            }
        }))
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

async fn body_of<B: http_body::Body<Data = Bytes>>(response: Response<B>) -> Bytes
where
    B::Error: std::fmt::Debug,
{
    response.into_body().collect().await.unwrap().to_bytes()
}

async fn until(mut done: impl FnMut() -> bool) {
    for _ in 0..10_000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("condition not reached");
}

#[tokio::test]
async fn hits_share_the_stored_bytes_without_copying() {
    let origin = tower::service_fn(|_: Request<()>| async {
        Ok::<_, Infallible>(
            Response::builder()
                .header("cache-control", "max-age=60")
                .body(full(&[7u8; 1024]))
                .unwrap(),
        )
    });
    let service = tower::Layer::layer(&CacheLayer::new(), origin);
    body_of(service.clone().oneshot(get("/")).await.unwrap()).await;

    let mut pointers = Vec::new();
    for _ in 0..3 {
        let response = service.clone().oneshot(get("/")).await.unwrap();
        let mut body = response.into_body();
        let frame = body.frame().await.unwrap().unwrap();
        let data = frame.into_data().unwrap();
        assert_eq!(data.len(), 1024);
        pointers.push(data.as_ptr());
    }
    assert!(pointers.windows(2).all(|w| w[0] == w[1]), "{pointers:?}");
}

#[tokio::test]
async fn a_miss_streams_to_the_client_as_it_arrives_and_is_stored_at_its_end() {
    let (sender, receiver) = mpsc::channel::<Bytes>(4);
    let receiver = Arc::new(std::sync::Mutex::new(Some(receiver)));
    let origin = tower::service_fn(move |_: Request<()>| {
        let receiver = receiver.lock().unwrap().take();
        async move {
            let body: Body = match receiver {
                Some(receiver) => ChannelBody(receiver).boxed(),
                None => full(b"second call"),
            };
            Ok::<_, Infallible>(
                Response::builder()
                    .header("cache-control", "max-age=60")
                    .body(body)
                    .unwrap(),
            )
        }
    });
    let service = tower::Layer::layer(&CacheLayer::new().collapse(false), origin);
    let response = service.clone().oneshot(get("/s")).await.unwrap();
    let mut body = response.into_body();

    sender.send(Bytes::from_static(b"first ")).await.unwrap();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(
        first, "first ",
        "the first chunk arrives before the origin finishes"
    );
    sender.send(Bytes::from_static(b"second")).await.unwrap();
    drop(sender);
    let second = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(second, "second");
    assert!(body.frame().await.is_none());

    let hit = service.clone().oneshot(get("/s")).await.unwrap();
    assert_eq!(hit.headers()["age"], "0");
    assert_eq!(body_of(hit).await, "first second");
}

#[tokio::test]
async fn over_the_size_limit_nothing_is_kept_and_the_response_is_untouched() {
    // Declared too large: passed through as is.
    let origin = tower::service_fn(|_: Request<()>| async {
        Ok::<_, Infallible>(
            Response::builder()
                .header("cache-control", "max-age=60")
                .header("content-length", "2048")
                .body(full(&[1u8; 2048]))
                .unwrap(),
        )
    });
    let layer = CacheLayer::new().max_body(NonZeroUsize::new(1024).unwrap());
    let service = tower::Layer::layer(&layer, origin);
    for _ in 0..2 {
        let response = service.clone().oneshot(get("/big")).await.unwrap();
        assert_eq!(response.headers()["content-length"], "2048");
        assert!(!response.headers().contains_key("age"));
        assert_eq!(body_of(response).await.len(), 2048);
    }
    assert_eq!(layer.stats().responses, 0);

    // Undeclared, grows too large while streaming: the client still gets it all.
    let (sender, receiver) = mpsc::channel::<Bytes>(8);
    let receiver = Arc::new(std::sync::Mutex::new(Some(receiver)));
    let origin = tower::service_fn(move |_: Request<()>| {
        let receiver = receiver.lock().unwrap().take().unwrap();
        async move {
            Ok::<_, Infallible>(
                Response::builder()
                    .header("cache-control", "max-age=60")
                    .body(ChannelBody(receiver).boxed())
                    .unwrap(),
            )
        }
    });
    let layer = CacheLayer::new().max_body(NonZeroUsize::new(1024).unwrap());
    let service = tower::Layer::layer(&layer, origin);
    for _ in 0..3 {
        sender.send(Bytes::from(vec![2u8; 600])).await.unwrap();
    }
    drop(sender);
    let response = service.clone().oneshot(get("/grow")).await.unwrap();
    assert_eq!(body_of(response).await.len(), 1800);
    assert_eq!(layer.stats().responses, 0);
}

#[tokio::test]
async fn the_byte_budget_holds_with_large_and_small_entries() {
    const BUDGET: u64 = 256 * 1024;
    let origin = tower::service_fn(|request: Request<()>| async move {
        let size: usize = request.uri().path()[1..]
            .split('-')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        Ok::<_, Infallible>(
            Response::builder()
                .header("cache-control", "max-age=600")
                .body(Full::new(Bytes::from(vec![0u8; size])).boxed())
                .unwrap(),
        )
    });
    let layer = CacheLayer::new().max_bytes(NonZeroU64::new(BUDGET).unwrap());
    let service = tower::Layer::layer(&layer, origin);
    for i in 0..400 {
        let size = if i % 10 == 0 { 60_000 } else { 100 };
        let response = service
            .clone()
            .oneshot(get(&format!("/{size}-{i}")))
            .await
            .unwrap();
        body_of(response).await;
        let stats = layer.stats();
        assert!(stats.bytes <= BUDGET, "{stats:?} after {i}");
    }
    let stats = layer.stats();
    assert!(stats.responses > 10, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_misses_make_one_upstream_call() {
    let origin = Origin::new("max-age=60", true);
    let layer = CacheLayer::new();
    let service = tower::Layer::layer(&layer, origin.service());
    let entered = Arc::new(AtomicUsize::new(0));

    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let (service, entered) = (service.clone(), entered.clone());
        tasks.push(tokio::spawn(async move {
            let future = service.oneshot(get("/hot"));
            entered.fetch_add(1, Ordering::SeqCst);
            body_of(future.await.unwrap()).await
        }));
    }
    // Every other request is parked behind the one upstream call.
    until(|| entered.load(Ordering::SeqCst) == 1000 && layer.stats().waiting == 999).await;
    assert_eq!(origin.calls(), 1);
    assert_eq!(layer.stats().in_flight, 1);
    origin.gate.notify_one();

    for task in tasks {
        assert_eq!(task.await.unwrap(), "v1");
    }
    assert_eq!(origin.calls(), 1);
    assert_eq!(layer.stats().in_flight, 0);
}

#[tokio::test]
async fn a_waiter_goes_upstream_itself_after_the_collapse_timeout() {
    let origin = Origin::new("max-age=60", true);
    let clock = ManualClock::new();
    let layer = CacheLayer::new()
        .clock(clock.clone())
        .collapse_timeout(Duration::from_secs(2));
    let service = tower::Layer::layer(&layer, origin.service());

    let leader = tokio::spawn(service.clone().oneshot(get("/slow")));
    until(|| origin.calls() == 1).await;
    let waiter = tokio::spawn(service.clone().oneshot(get("/slow")));
    until(|| clock.pending_sleeps() == 1).await;
    assert_eq!(origin.calls(), 1, "parked, not upstream");

    clock.advance(Duration::from_millis(1999));
    tokio::task::yield_now().await;
    assert_eq!(origin.calls(), 1);
    clock.advance(Duration::from_millis(1));
    until(|| origin.calls() == 2).await;

    origin.gate.notify_waiters();
    until(|| leader.is_finished() && waiter.is_finished()).await;
    assert_eq!(body_of(leader.await.unwrap().unwrap()).await, "v1");
    assert_eq!(body_of(waiter.await.unwrap().unwrap()).await, "v2");
}

#[tokio::test]
async fn the_leaders_request_completes_for_waiters_when_its_client_goes_away() {
    let origin = Origin::new("max-age=60", true);
    let layer = CacheLayer::new();
    let service = tower::Layer::layer(&layer, origin.service());

    let leader = tokio::spawn(service.clone().oneshot(get("/l")));
    until(|| origin.calls() == 1).await;
    let waiters: Vec<_> = (0..5)
        .map(|_| {
            let service = service.clone();
            tokio::spawn(async move { body_of(service.oneshot(get("/l")).await.unwrap()).await })
        })
        .collect();
    until(|| layer.stats().waiting == 5).await;
    leader.abort();
    assert!(leader.await.unwrap_err().is_cancelled());
    assert_eq!(layer.stats().waiting, 5, "the waiters stay parked");

    origin.gate.notify_one();
    for waiter in waiters {
        assert_eq!(waiter.await.unwrap(), "v1");
    }
    assert_eq!(origin.calls(), 1);
    assert_eq!(layer.stats().responses, 1);
}

#[tokio::test]
async fn the_rest_of_the_body_is_read_when_the_leader_leaves_mid_stream() {
    let (sender, receiver) = mpsc::channel::<Bytes>(4);
    let receiver = Arc::new(std::sync::Mutex::new(Some(receiver)));
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let origin = tower::service_fn(move |_: Request<()>| {
        counter.fetch_add(1, Ordering::SeqCst);
        let receiver = receiver.lock().unwrap().take().unwrap();
        async move {
            Ok::<_, Infallible>(
                Response::builder()
                    .header("cache-control", "max-age=60")
                    .body(ChannelBody(receiver).boxed())
                    .unwrap(),
            )
        }
    });
    let layer = CacheLayer::new();
    let service = tower::Layer::layer(&layer, origin);

    let response = service.clone().oneshot(get("/m")).await.unwrap();
    let waiter = {
        let service = service.clone();
        tokio::spawn(async move { body_of(service.oneshot(get("/m")).await.unwrap()).await })
    };
    let mut body = response.into_body();
    sender.send(Bytes::from_static(b"abc")).await.unwrap();
    body.frame().await.unwrap().unwrap();
    drop(body);

    sender.send(Bytes::from_static(b"def")).await.unwrap();
    drop(sender);
    assert_eq!(waiter.await.unwrap(), "abcdef");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_uncacheable_response_releases_waiters_and_later_requests_do_not_queue() {
    let origin = Origin::new("no-store", true);
    let layer = CacheLayer::new();
    let service = tower::Layer::layer(&layer, origin.service());

    let leader = tokio::spawn(service.clone().oneshot(get("/u")));
    until(|| origin.calls() == 1).await;
    let waiters: Vec<_> = (0..9)
        .map(|_| tokio::spawn(service.clone().oneshot(get("/u"))))
        .collect();
    until(|| layer.stats().waiting == 9).await;
    assert_eq!(origin.calls(), 1, "waiters parked behind the leader");

    // The leader's answer is `no-store`: every waiter goes upstream at once.
    origin.gate.notify_one();
    until(|| origin.calls() == 10).await;
    origin.gate.notify_waiters();
    leader.await.unwrap().unwrap();
    // Waiters that reached the gate after `notify_waiters` need their own permit.
    for _ in 0..9 {
        origin.gate.notify_one();
    }
    for waiter in waiters {
        waiter.await.unwrap().unwrap();
    }

    // Hit-for-miss: five concurrent requests all reach the origin together.
    let later: Vec<_> = (0..5)
        .map(|_| tokio::spawn(service.clone().oneshot(get("/u"))))
        .collect();
    until(|| origin.calls() == 15).await;
    assert_eq!(layer.stats().in_flight, 0);
    for _ in 0..5 {
        origin.gate.notify_one();
    }
    for request in later {
        request.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn hit_for_miss_lasts_its_duration_on_the_layers_clock() {
    // Each response waits for one permit, so the test lets exactly n through.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    let origin = {
        let (gate, calls) = (gate.clone(), calls.clone());
        tower::service_fn(move |_: Request<()>| {
            let (gate, calls) = (gate.clone(), calls.clone());
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                gate.acquire().await.unwrap().forget();
                Ok::<_, Infallible>(
                    Response::builder()
                        .header("cache-control", "no-store")
                        .body(full(b"u"))
                        .unwrap(),
                )
            }
        })
    };
    let clock = ManualClock::new();
    let layer = CacheLayer::new()
        .clock(clock.clone())
        .hit_for_miss(Duration::from_secs(10));
    let service = tower::Layer::layer(&layer, origin);
    let spawn = |n: usize| -> Vec<_> {
        (0..n)
            .map(|_| tokio::spawn(service.clone().oneshot(get("/h"))))
            .collect()
    };
    let calls = move || calls.load(Ordering::SeqCst);

    gate.add_permits(1);
    body_of(service.clone().oneshot(get("/h")).await.unwrap()).await;
    assert_eq!(calls(), 1);

    // Within the window: three requests all go upstream at once, none waits.
    clock.advance(Duration::from_millis(9_999));
    let within = spawn(3);
    until(|| calls() == 4).await;
    assert_eq!((layer.stats().in_flight, layer.stats().waiting), (0, 0));
    gate.add_permits(3);
    for request in within {
        request.await.unwrap().unwrap();
    }

    // Those answers renewed the record until 19.999 s; from then on, requests
    // collapse again: one goes upstream, two wait.
    clock.advance(Duration::from_secs(10));
    let after = spawn(3);
    until(|| calls() == 5 && layer.stats().waiting == 2).await;
    assert_eq!(layer.stats().in_flight, 1);

    // Its answer is uncacheable too: both waiters are released upstream.
    gate.add_permits(1);
    until(|| calls() == 7).await;
    gate.add_permits(2);
    for request in after {
        request.await.unwrap().unwrap();
    }
    assert_eq!(calls(), 7);
}

#[tokio::test]
async fn a_response_that_cannot_be_stored_is_passed_through_and_never_buffered() {
    for (cache_control, stored) in [
        ("no-store", false),
        ("private", false),
        ("max-age=60", true),
    ] {
        let (sender, receiver) = mpsc::channel::<Bytes>(4);
        let receiver = Arc::new(std::sync::Mutex::new(Some(receiver)));
        let origin = tower::service_fn(move |_: Request<()>| {
            let receiver = receiver.lock().unwrap().take().unwrap();
            async move {
                Ok::<_, Infallible>(
                    Response::builder()
                        .header("cache-control", cache_control)
                        .body(ChannelBody(receiver).boxed())
                        .unwrap(),
                )
            }
        });
        let layer = CacheLayer::new();
        let service = tower::Layer::layer(&layer, origin);
        let response = service.oneshot(get("/p")).await.unwrap();
        let kind = format!("{:?}", response.body());
        assert_eq!(
            kind.contains("TeeBody::Tee"),
            stored,
            "{cache_control}: {kind}"
        );
        assert_eq!(
            kind.contains("TeeBody::Pass"),
            !stored,
            "{cache_control}: {kind}"
        );

        // The client reads one chunk and leaves.
        let mut body = response.into_body();
        sender.send(Bytes::from_static(b"one")).await.unwrap();
        body.frame().await.unwrap().unwrap();
        drop(body);
        tokio::task::yield_now().await;

        // Untouched, the origin's body goes with the client's; kept for the store,
        // it is read on in the background.
        assert_eq!(sender.is_closed(), !stored, "{cache_control}");
        if stored {
            sender.send(Bytes::from_static(b"two")).await.unwrap();
            drop(sender);
            until(|| layer.stats().responses == 1).await;
        } else {
            assert_eq!(layer.stats().responses, 0);
        }
    }
}
