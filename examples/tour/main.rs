//! The guided tour of tower-toolbox: `cargo run --example tour`.
//!
//! Each scenario starts an axum service with one of the crate's layers on a free
//! loopback port, sends it real HTTP traffic, and prints what the client saw and
//! what the layer did. Needs no configuration and no network; exits 0.

mod basics;
#[cfg(feature = "cache")]
mod cache;
#[cfg(feature = "compression-gzip")]
mod compression;
#[cfg(feature = "concurrency")]
mod concurrency;
mod rate_limit;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

#[tokio::main]
async fn main() {
    let started = Instant::now();
    println!("tower-toolbox tour: every request below is real HTTP over loopback.");

    basics::run().await;
    rate_limit::run().await;
    #[cfg(feature = "compression-gzip")]
    compression::run().await;
    #[cfg(feature = "cache")]
    cache::run().await;
    #[cfg(feature = "concurrency")]
    concurrency::run().await;

    println!(
        "\nTour finished in {:.1} s.",
        started.elapsed().as_secs_f64()
    );
}

/// Serves `app` on a free loopback port, with peer addresses recorded for keys.
pub async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("local address");
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .expect("serve");
    });
    addr
}

/// Prints a scenario's heading.
pub fn section(title: &str) {
    println!("\n== {title} ==");
}

/// Prints a line of what the layer did or why it matters.
pub fn note(text: &str) {
    println!("   {text}");
}

/// What the client saw.
#[derive(Debug)]
pub struct Seen {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub elapsed: Duration,
}

impl Seen {
    /// One header's value as text, or `-`.
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A real HTTP/1.1 client (hyper), with an HTTP/2 prior-knowledge twin for gRPC.
#[derive(Clone)]
pub struct HttpClient {
    http1: Client<HttpConnector, Full<Bytes>>,
    http2: Client<HttpConnector, Full<Bytes>>,
}

impl HttpClient {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Default for HttpClient {
    fn default() -> Self {
        HttpClient {
            http1: Client::builder(TokioExecutor::new()).build_http(),
            http2: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build_http(),
        }
    }
}

impl HttpClient {
    /// Sends `request` and reads the whole response.
    pub async fn send(&self, request: Request<Full<Bytes>>) -> Seen {
        let client = if request.version() == http::Version::HTTP_2 {
            &self.http2
        } else {
            &self.http1
        };
        let start = Instant::now();
        let response = client.request(request).await.expect("request failed");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("read body").to_bytes();
        Seen {
            status: parts.status,
            headers: parts.headers,
            body,
            elapsed: start.elapsed(),
        }
    }

    /// `GET http://addr{path}` with extra headers.
    pub async fn get(&self, addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Seen {
        let mut request = Request::get(format!("http://{addr}{path}"));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.send(request.body(Full::new(Bytes::new())).expect("request"))
            .await
    }
}
