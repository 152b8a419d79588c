//! The gauges and counters the limiters report through the `metrics` facade.

#![cfg(feature = "shed")]

use std::collections::HashMap;
use std::convert::Infallible;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, Key, KeyName, Metadata, Recorder, SharedString,
    Unit,
};
use tower::{Layer, ServiceExt};
use tower_toolbox::concurrency::ConcurrencyLimitLayer;

/// One metric's latest value (gauges) or running total (counters), as f64 bits.
#[derive(Default)]
struct Cell(AtomicU64);

impl Cell {
    fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::SeqCst))
    }
}

impl GaugeFn for Cell {
    fn increment(&self, value: f64) {
        self.set(self.get() + value);
    }
    fn decrement(&self, value: f64) {
        self.set(self.get() - value);
    }
    fn set(&self, value: f64) {
        self.0.store(value.to_bits(), Ordering::SeqCst);
    }
}

impl CounterFn for Cell {
    fn increment(&self, value: u64) {
        GaugeFn::set(self, self.get() + value as f64);
    }
    fn absolute(&self, value: u64) {
        GaugeFn::set(self, value as f64);
    }
}

/// Records every metric by its name and `layer` label.
#[derive(Default)]
struct Recording(Mutex<HashMap<String, Arc<Cell>>>);

impl Recording {
    fn cell(&self, key: &Key) -> Arc<Cell> {
        let layer = key
            .labels()
            .find(|label| label.key() == "layer")
            .map_or("", |label| label.value());
        let name = format!("{}{{layer={layer}}}", key.name());
        self.0.lock().unwrap().entry(name).or_default().clone()
    }

    fn value(&self, name: &str) -> f64 {
        self.0
            .lock()
            .unwrap()
            .get(name)
            .map_or(f64::NAN, |cell| cell.get())
    }
}

impl Recorder for Recording {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.cell(key))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.cell(key))
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

fn get() -> Request<Full<Bytes>> {
    Request::get("/").body(Full::new(Bytes::new())).unwrap()
}

#[tokio::test]
async fn the_limit_in_flight_and_refusals_are_reported() {
    let recording = Recording::default();
    let layer = ConcurrencyLimitLayer::new(NonZeroUsize::new(1).unwrap());
    // The handles are registered when the gate is built.
    let handle = metrics::with_local_recorder(&recording, || layer.handle());
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let inner = {
        let release = release.clone();
        tower::service_fn(move |_: Request<Full<Bytes>>| {
            let release = release.clone();
            async move {
                release.acquire().await.unwrap().forget();
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
            }
        })
    };
    let service = layer.layer(inner);
    assert_eq!(
        recording.value("tower_toolbox_concurrency_limit{layer=concurrency}"),
        1.0
    );

    let running = tokio::spawn(service.clone().oneshot(get()));
    while handle.in_flight() == 0 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        recording.value("tower_toolbox_concurrency_in_flight{layer=concurrency}"),
        1.0
    );
    for _ in 0..3 {
        let refused = service.clone().oneshot(get()).await.unwrap();
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(
        recording.value("tower_toolbox_concurrency_rejected_total{layer=concurrency}"),
        3.0
    );

    release.add_permits(1);
    drop(running.await.unwrap().unwrap());
    assert_eq!(
        recording.value("tower_toolbox_concurrency_in_flight{layer=concurrency}"),
        0.0
    );
}

fn status(code: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = code;
    response
}

#[tokio::test]
async fn an_adaptive_limit_reports_every_change_of_its_limit() {
    use tower_toolbox::concurrency::Aimd;

    let recording = Recording::default();
    let nz = |n| NonZeroUsize::new(n).unwrap();
    let layer = ConcurrencyLimitLayer::adaptive(Aimd::new().initial(nz(20)).bounds(nz(1), nz(100)));
    let _handle = metrics::with_local_recorder(&recording, || layer.handle());
    let service = layer.layer(tower::service_fn(|_: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(status(StatusCode::SERVICE_UNAVAILABLE))
    }));
    assert_eq!(
        recording.value("tower_toolbox_concurrency_limit{layer=concurrency}"),
        20.0
    );

    // Each 503 is a drop: 20 -> 18 -> 16.
    for expected in [18.0, 16.0] {
        service.clone().oneshot(get()).await.unwrap();
        assert_eq!(
            recording.value("tower_toolbox_concurrency_limit{layer=concurrency}"),
            expected
        );
    }
}

#[tokio::test]
async fn a_per_key_limit_counts_the_refusals_of_all_its_keys_in_one_series() {
    use tower_toolbox::key::HeaderKey;

    let recording = Recording::default();
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let inner = {
        let release = release.clone();
        tower::service_fn(move |_: Request<Full<Bytes>>| {
            let release = release.clone();
            async move {
                release.acquire().await.unwrap().forget();
                Ok::<_, Infallible>(status(StatusCode::OK))
            }
        })
    };
    let service = metrics::with_local_recorder(&recording, || {
        ConcurrencyLimitLayer::new(NonZeroUsize::new(1).unwrap())
            .per_key(HeaderKey::new(http::HeaderName::from_static("x-tenant")))
            .layer(inner)
    });
    let tenant = |name: &'static str| {
        Request::get("/")
            .header("x-tenant", name)
            .body(Full::new(Bytes::new()))
            .unwrap()
    };

    let running: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|name| tokio::spawn(service.clone().oneshot(tenant(name))))
        .collect();
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    for name in ["a", "b", "b"] {
        let refused = service.clone().oneshot(tenant(name)).await.unwrap();
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(
        recording.value("tower_toolbox_concurrency_rejected_total{layer=concurrency}"),
        3.0
    );
    // No per-key gauges.
    assert!(
        recording
            .value("tower_toolbox_concurrency_in_flight{layer=concurrency}")
            .is_nan()
    );

    release.add_permits(2);
    for task in running {
        task.await.unwrap().unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn the_shedder_reports_its_line_timeouts_and_sheds() {
    use std::time::Duration;
    use tower_toolbox::clock::TokioClock;
    use tower_toolbox::shed::LoadShedLayer;

    let recording = Recording::default();
    let layer = LoadShedLayer::new(NonZeroUsize::new(1).unwrap()).clock(TokioClock::new());
    let handle = metrics::with_local_recorder(&recording, || layer.handle());
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let inner = {
        let release = release.clone();
        tower::service_fn(move |_: Request<Full<Bytes>>| {
            let release = release.clone();
            async move {
                release.acquire().await.unwrap().forget();
                Ok::<_, Infallible>(status(StatusCode::OK))
            }
        })
    };
    let service = layer.layer(inner);
    let settle = || async {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    };
    let value = |name: &str| recording.value(&format!("{name}{{layer=shed}}"));

    // One in the service; `a` waits from 0 ms, `b` from 10 ms.
    let first = tokio::spawn(service.clone().oneshot(get()));
    settle().await;
    let a = tokio::spawn(service.clone().oneshot(get()));
    settle().await;
    tokio::time::advance(Duration::from_millis(10)).await;
    let b = tokio::spawn(service.clone().oneshot(get()));
    settle().await;
    assert_eq!(value("tower_toolbox_concurrency_in_flight"), 1.0);
    assert_eq!(value("tower_toolbox_concurrency_queued"), 2.0);

    // At 100 ms `a` has waited the whole interval: refused, a rejection.
    tokio::time::advance(Duration::from_millis(90)).await;
    settle().await;
    assert_eq!(
        a.await.unwrap().unwrap().status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(value("tower_toolbox_concurrency_rejected_total"), 1.0);
    assert_eq!(value("tower_toolbox_concurrency_queued"), 1.0);
    assert_eq!(value("tower_toolbox_shed_total"), 0.0);

    // At 105 ms the line has not been empty for more than 100 ms: an arrival
    // sheds `b` (95 ms > 5 ms) and takes its place.
    tokio::time::advance(Duration::from_millis(5)).await;
    let c = tokio::spawn(service.clone().oneshot(get()));
    settle().await;
    assert_eq!(
        b.await.unwrap().unwrap().status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(value("tower_toolbox_shed_total"), 1.0);
    assert_eq!(value("tower_toolbox_concurrency_rejected_total"), 1.0);
    assert_eq!(value("tower_toolbox_concurrency_queued"), 1.0);
    assert_eq!(handle.queued(), 1);

    release.add_permits(2);
    drop(first.await.unwrap().unwrap());
    drop(c.await.unwrap().unwrap());
    assert_eq!(value("tower_toolbox_concurrency_in_flight"), 0.0);
    assert_eq!(value("tower_toolbox_concurrency_queued"), 0.0);
}
