//! A held inner service, a streamed body and small helpers for the concurrency
//! tests.
#![allow(dead_code)]

use std::convert::Infallible;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tokio::sync::Semaphore;
use tower::Service;

#[path = "channel_body.rs"]
mod channel_body;
pub use channel_body::ChannelBody;

pub fn nz(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).unwrap()
}

pub fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path).body(Full::new(Bytes::new())).unwrap()
}

/// A service whose calls each wait for one permit of `release`, counting how
/// many run at once and the most that ever did.
#[derive(Clone)]
pub struct Held {
    pub release: Arc<Semaphore>,
    pub running: Arc<AtomicUsize>,
    pub peak: Arc<AtomicUsize>,
    pub served: Arc<AtomicUsize>,
}

impl Held {
    pub fn new() -> Self {
        Held {
            release: Arc::new(Semaphore::new(0)),
            running: Arc::default(),
            peak: Arc::default(),
            served: Arc::default(),
        }
    }

    pub fn service(
        &self,
    ) -> impl Service<
        Request<Full<Bytes>>,
        Response = Response<Full<Bytes>>,
        Error = Infallible,
        Future = impl Send,
    > + Clone
    + Send
    + 'static {
        let held = self.clone();
        tower::service_fn(move |_request: Request<Full<Bytes>>| {
            let held = held.clone();
            async move {
                let now = held.running.fetch_add(1, Ordering::SeqCst) + 1;
                held.peak.fetch_max(now, Ordering::SeqCst);
                held.release.acquire().await.unwrap().forget();
                held.running.fetch_sub(1, Ordering::SeqCst);
                held.served.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"done"))))
            }
        })
    }
}

pub async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

/// A service answering one request with a body the test feeds.
pub fn streaming() -> (
    tokio::sync::mpsc::Sender<Bytes>,
    impl Service<Request<Full<Bytes>>, Response = Response<ChannelBody>, Error = Infallible> + Clone,
) {
    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    let receiver = Arc::new(std::sync::Mutex::new(Some(receiver)));
    let service = tower::service_fn(move |_request: Request<Full<Bytes>>| {
        let receiver = receiver.lock().unwrap().take().expect("one request");
        async move { Ok::<_, Infallible>(Response::new(ChannelBody(receiver))) }
    });
    (sender, service)
}

/// `GET /` with `x-tenant: name`.
pub fn tenant(name: &str) -> Request<Full<Bytes>> {
    Request::get("/")
        .header("x-tenant", name)
        .body(Full::new(Bytes::new()))
        .unwrap()
}
