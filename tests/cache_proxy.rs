//! The reverse proxy example over real sockets: faithful forwarding and the
//! shared-mode cache in front of two upstreams.

#[path = "../examples/reverse_proxy.rs"]
#[allow(dead_code, unreachable_pub)]
mod reverse_proxy;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use reverse_proxy::Options;

/// An origin that echoes what it received: method, target and every header
/// (one per line), and counts requests.
async fn origin(name: &'static str, calls: Arc<AtomicUsize>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let calls = calls.clone();
            let service =
                hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                    let calls = calls.clone();
                    async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        let mut echo = format!("{name} {} {}\n", request.method(), request.uri());
                        for (header, value) in request.headers() {
                            echo.push_str(&format!("{header}: {}\n", value.to_str().unwrap()));
                        }
                        let body = request.into_body().collect().await.unwrap().to_bytes();
                        echo.push_str(&format!("body: {}\n", String::from_utf8_lossy(&body)));
                        Ok::<_, Infallible>(
                            Response::builder()
                                .header("cache-control", "max-age=60")
                                .header("connection", "x-upstream-hop")
                                .header("x-upstream-hop", "1")
                                .header("x-end-to-end", "kept")
                                .body(Full::new(Bytes::from(echo)))
                                .unwrap(),
                        )
                    }
                });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    address
}

async fn proxy(upstreams: &[SocketAddr], cache: bool) -> SocketAddr {
    let mut args = vec!["--listen".to_owned(), "127.0.0.1:0".to_owned()];
    for upstream in upstreams {
        args.push("--upstream".to_owned());
        args.push(format!("http://{upstream}"));
    }
    if cache {
        args.push("--cache".to_owned());
    }
    reverse_proxy::start(Options::parse(args).unwrap())
        .await
        .unwrap()
}

async fn send(request: Request<Full<Bytes>>) -> (Response<()>, String) {
    let client = Client::builder(TokioExecutor::new()).build_http();
    let response = client.request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        Response::from_parts(parts, ()),
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

#[tokio::test]
async fn forwards_methods_paths_queries_and_headers_but_not_hop_by_hop_fields() {
    let calls = Arc::new(AtomicUsize::new(0));
    let upstream = origin("o", calls.clone()).await;
    let proxy = proxy(&[upstream], false).await;

    let request = Request::builder()
        .method(Method::from_bytes(b"BREW").unwrap())
        .uri(format!("http://{proxy}/pot/1?milk=yes&sugar=2"))
        .header("x-custom", "a")
        .header("x-custom", "b")
        .header("connection", "x-client-hop")
        .header("x-client-hop", "secret")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic Zm9v")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"payload")))
        .unwrap();
    let (response, echo) = send(request).await;

    assert!(
        echo.starts_with("o BREW /pot/1?milk=yes&sugar=2\n"),
        "{echo}"
    );
    assert!(
        echo.contains(&format!("host: {proxy}\n")),
        "the client's Host: {echo}"
    );
    assert!(echo.contains("x-custom: a\nx-custom: b\n"), "{echo}");
    assert!(echo.contains("body: payload"), "{echo}");
    for hop in ["x-client-hop", "keep-alive", "proxy-authorization", "te:"] {
        assert!(!echo.contains(hop), "{hop} forwarded: {echo}");
    }
    assert_eq!(response.headers()["x-end-to-end"], "kept");
    assert!(!response.headers().contains_key("x-upstream-hop"));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn round_robin_over_upstreams_and_the_cache_answers_repeats() {
    let (calls_a, calls_b) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let a = origin("a", calls_a.clone()).await;
    let b = origin("b", calls_b.clone()).await;

    let plain = proxy(&[a, b], false).await;
    for _ in 0..4 {
        send(
            Request::get(format!("http://{plain}/x"))
                .body(Full::default())
                .unwrap(),
        )
        .await;
    }
    assert_eq!(
        (
            calls_a.load(Ordering::SeqCst),
            calls_b.load(Ordering::SeqCst)
        ),
        (2, 2)
    );

    let cached = proxy(&[a, b], true).await;
    let (first, first_body) = send(
        Request::get(format!("http://{cached}/y"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert!(!first.headers().contains_key("age"));
    for _ in 0..5 {
        let (again, body) = send(
            Request::get(format!("http://{cached}/y"))
                .body(Full::default())
                .unwrap(),
        )
        .await;
        assert_eq!(body, first_body);
        assert!(again.headers().contains_key("age"));
    }
    assert_eq!(
        calls_a.load(Ordering::SeqCst) + calls_b.load(Ordering::SeqCst),
        5
    );
}

#[test]
fn rejects_bad_arguments() {
    let parse = |args: &[&str]| Options::parse(args.iter().map(|s| s.to_string()));
    assert!(parse(&[]).is_err());
    assert!(parse(&["--upstream", "ftp://x"]).is_err());
    assert!(parse(&["--upstream", "http://127.0.0.1:1", "--bogus"]).is_err());
    let options = parse(&["--upstream", "http://127.0.0.1:1", "--cache"]).unwrap();
    assert!(options.cache && !options.etag);
}
