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
