//! Load shedding: CoDel, adaptive LIFO, priorities and the bypass, on a paused
//! tokio clock, and over a real socket.

#![cfg(feature = "shed")]

use std::convert::Infallible;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tower::{Layer, Service, ServiceExt};
use tower_toolbox::clock::TokioClock;
use tower_toolbox::shed::{LimitHandle, LoadShedLayer, Priority};

fn nz(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).unwrap()
}

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path).body(Full::new(Bytes::new())).unwrap()
}

/// A service whose calls each wait for a permit of `release` and record the
/// order in which they started.
#[derive(Clone)]
struct Held {
    release: Arc<Semaphore>,
    started: Arc<Mutex<Vec<String>>>,
}

impl Default for Held {
    fn default() -> Self {
        Held {
            release: Arc::new(Semaphore::new(0)),
            started: Arc::default(),
        }
    }
}

impl Held {
    fn service(
        &self,
    ) -> impl Service<
        Request<Full<Bytes>>,
        Response = Response<Full<Bytes>>,
        Error = Infallible,
        Future = impl Send + 'static,
    > + Clone
    + Send
    + 'static {
        let held = self.clone();
        tower::service_fn(move |request: Request<Full<Bytes>>| {
            let held = held.clone();
            async move {
                held.started
                    .lock()
                    .unwrap()
                    .push(request.uri().path().to_owned());
                held.release.acquire().await.unwrap().forget();
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
            }
        })
    }

    fn started(&self) -> Vec<String> {
        self.started.lock().unwrap().clone()
    }
}

type Shed = tower_toolbox::shed::LoadShed<
    tower::util::BoxCloneService<Request<Full<Bytes>>, Response<Full<Bytes>>, Infallible>,
    tower_toolbox::concurrency::Fixed,
    TokioClock,
>;

fn shed(
    layer: LoadShedLayer<tower_toolbox::concurrency::Fixed, TokioClock>,
    held: &Held,
) -> (Shed, LimitHandle) {
    let handle = layer.handle();
    (
        layer.layer(tower::util::BoxCloneService::new(held.service())),
        handle,
    )
}

/// What a client saw: the status, the headers and the whole body, read as a
/// server would write it out (which ends the body and frees its permit).
struct Seen {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
}

fn send(service: &Shed, path: &str) -> JoinHandle<Seen> {
    let call = service.clone().oneshot(get(path));
    tokio::spawn(async move { read(call.await.unwrap()).await })
}

async fn read(response: Response<impl http_body::Body<Data = Bytes, Error = Infallible>>) -> Seen {
    let (parts, body) = response.into_parts();
    Seen {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

async fn advance(ms: u64) {
    tokio::time::advance(Duration::from_millis(ms)).await;
    settle().await;
}

fn detail(seen: Seen) -> String {
    assert_eq!(seen.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(seen.headers["content-type"], "application/problem+json");
    assert_eq!(seen.headers["retry-after"], "1");
    let body: serde_json::Value = serde_json::from_slice(&seen.body).unwrap();
    body["detail"].as_str().unwrap().to_owned()
}

fn one_at_a_time() -> LoadShedLayer<tower_toolbox::concurrency::Fixed, TokioClock> {
    LoadShedLayer::new(nz(1)).clock(TokioClock::new())
}

#[tokio::test(start_paused = true)]
async fn a_burst_that_drains_within_the_interval_is_served_in_arrival_order() {
    let held = Held::default();
    let (service, handle) = shed(one_at_a_time(), &held);
    let tasks: Vec<_> = ["/1", "/2", "/3", "/4"]
        .iter()
        .map(|p| send(&service, p))
        .collect();
    settle().await;
    assert_eq!(handle.queued(), 3);

    // Each request takes 20 ms: the last waits 60 ms, far past the 5 ms target,
    // but the line empties within the 100 ms interval, so nothing is shed.
    for _ in 0..4 {
        advance(20).await;
        held.release.add_permits(1);
        settle().await;
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().status, StatusCode::OK);
    }
    assert_eq!(held.started(), ["/1", "/2", "/3", "/4"]);
}

#[tokio::test(start_paused = true)]
async fn a_standing_queue_sheds_stale_waiters_and_serves_the_newest_first() {
    let held = Held::default();
    let (service, handle) = shed(one_at_a_time(), &held);
    let first = send(&service, "/first");
    settle().await;
    let a = send(&service, "/a"); // 0 ms: the line is busy from here on
    settle().await;
    advance(10).await;
    let b = send(&service, "/b"); // 10 ms
    settle().await;
    advance(40).await;
    held.release.add_permits(1); // 50 ms: `/first` ends, `/a` starts, `/b` still waits
    settle().await;
    advance(10).await;
    let stale = send(&service, "/stale"); // 60 ms
    settle().await;
    advance(44).await;
    // 104 ms: the line has not been empty for more than the 100 ms interval, so
    // the arrival of `/older` sheds the waiters past the 5 ms target: `/b`
    // (94 ms) and `/stale` (44 ms).
    let older = send(&service, "/older");
    settle().await;
    for shed in [b, stale] {
        assert_eq!(
            detail(shed.await.unwrap()),
            "the request was shed to keep the service's latency down"
        );
    }
    advance(1).await;
    let newer = send(&service, "/newer"); // 105 ms
    settle().await;
    assert_eq!(handle.queued(), 2);

    // At 107 ms `/a` ends: the queue still stands, so the newest waiter goes first.
    advance(2).await;
    held.release.add_permits(1);
    settle().await;
    assert_eq!(held.started(), ["/first", "/a", "/newer"]);

    held.release.add_permits(2);
    settle().await;
    for task in [first, a, newer, older] {
        assert_eq!(task.await.unwrap().status, StatusCode::OK);
    }
    assert_eq!(held.started(), ["/first", "/a", "/newer", "/older"]);
    assert_eq!(handle.queued(), 0);
    assert_eq!(handle.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_full_line_refuses_newcomers_until_it_has_stood_past_the_interval_then_sheds_for_them() {
    let held = Held::default();
    let (service, handle) = shed(one_at_a_time().capacity(nz(2)), &held);
    let first = send(&service, "/first");
    settle().await;
    let a = send(&service, "/a"); // 0 ms: the line is busy from here on
    settle().await;
    advance(60).await;
    let b = send(&service, "/b"); // 60 ms: the line is full
    settle().await;
    advance(10).await;
    held.release.add_permits(1); // 70 ms: `/first` ends, `/a` starts
    settle().await;
    advance(10).await;
    let c = send(&service, "/c"); // 80 ms: full again, and still busy since 0 ms
    settle().await;

    // 90 ms: within the interval a full line refuses, whatever the waiters' age.
    advance(10).await;
    let refused = read(service.clone().oneshot(get("/early")).await.unwrap()).await;
    assert_eq!(
        detail(refused),
        "the service is at its concurrency limit and its queue is full"
    );
    assert_eq!(handle.queued(), 2);

    // 101 ms: the line has stood past the interval; a newcomer sheds the
    // waiters past the target (`/b`, 41 ms; `/c`, 21 ms) and takes a place.
    advance(11).await;
    let late = send(&service, "/late");
    settle().await;
    for shed in [b, c] {
        assert_eq!(
            detail(shed.await.unwrap()),
            "the request was shed to keep the service's latency down"
        );
    }
    assert_eq!(handle.queued(), 1);

    held.release.add_permits(2);
    settle().await;
    for task in [first, a, late] {
        assert_eq!(task.await.unwrap().status, StatusCode::OK);
    }
    assert_eq!(held.started(), ["/first", "/a", "/late"]);
    assert_eq!(handle.queued(), 0);
    assert_eq!(handle.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn no_request_waits_longer_than_the_interval() {
    let held = Held::default();
    let (service, handle) = shed(
        one_at_a_time().codel(Duration::from_millis(5), Duration::from_millis(100)),
        &held,
    );
    let _first = send(&service, "/first");
    settle().await;
    let waiting = send(&service, "/waiting");
    settle().await;

    advance(99).await;
    assert!(!waiting.is_finished());
    advance(1).await;
    assert!(waiting.is_finished());
    assert_eq!(
        detail(waiting.await.unwrap()),
        "the request waited too long for the service to have capacity"
    );
    assert_eq!(handle.queued(), 0);
    held.release.add_permits(1);
}

#[tokio::test(start_paused = true)]
async fn critical_requests_are_served_first_and_low_ones_shed_first() {
    let held = Held::default();
    let layer = one_at_a_time()
        .capacity(nz(2))
        .priority(|head| match head.uri.path() {
            "/critical" => Priority::Critical,
            "/low" => Priority::Low,
            _ => Priority::Normal,
        });
    let (service, handle) = shed(layer, &held);

    let first = send(&service, "/first");
    settle().await;
    let low = send(&service, "/low");
    let normal = send(&service, "/normal");
    settle().await;
    assert_eq!(handle.queued(), 2);

    // The line is full: a critical request takes the low one's place.
    let critical = send(&service, "/critical");
    settle().await;
    assert_eq!(
        detail(low.await.unwrap()),
        "the request was shed to keep the service's latency down"
    );
    // A normal request finds nothing lower to displace and is refused.
    let refused = read(service.clone().oneshot(get("/normal-2")).await.unwrap()).await;
    assert_eq!(
        detail(refused),
        "the service is at its concurrency limit and its queue is full"
    );

    held.release.add_permits(3);
    settle().await;
    for task in [first, critical, normal] {
        assert_eq!(task.await.unwrap().status, StatusCode::OK);
    }
    assert_eq!(held.started(), ["/first", "/critical", "/normal"]);
}

#[tokio::test(start_paused = true)]
async fn bypassed_requests_skip_the_line_and_are_not_counted() {
    let held = Held::default();
    let layer = one_at_a_time()
        .capacity(nz(1))
        .bypass(|head| head.uri.path() == "/healthz");
    let (service, handle) = shed(layer, &held);
    let _first = send(&service, "/first");
    let _second = send(&service, "/second");
    settle().await;
    assert_eq!((handle.in_flight(), handle.queued()), (1, 1));

    let health = send(&service, "/healthz");
    settle().await;
    assert_eq!(held.started(), ["/first", "/healthz"]);
    assert_eq!((handle.in_flight(), handle.queued()), (1, 1));
    held.release.add_permits(3);
    settle().await;
    assert_eq!(health.await.unwrap().status, StatusCode::OK);
}

#[tokio::test]
async fn over_a_real_socket_the_request_that_finds_the_line_full_gets_503() {
    let release = Arc::new(Semaphore::new(0));
    let handler_release = release.clone();
    let layer = LoadShedLayer::new(nz(1)).capacity(nz(1));
    let handle = layer.handle();
    let app = axum::Router::new()
        .route(
            "/",
            axum::routing::get(move || {
                let release = handler_release.clone();
                async move {
                    release.acquire().await.unwrap().forget();
                    "done"
                }
            }),
        )
        .layer(layer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let url = format!("http://{addr}/");
    let running = tokio::spawn(client.request(get(&url)));
    while handle.in_flight() == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let queued = tokio::spawn(client.request(get(&url)));
    while handle.queued() == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let refused = client.request(get(&url)).await.unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers()["retry-after"], "1");

    release.add_permits(2);
    assert_eq!(running.await.unwrap().unwrap().status(), StatusCode::OK);
    assert_eq!(queued.await.unwrap().unwrap().status(), StatusCode::OK);
}
