//! The reverse proxy example over real sockets: faithful forwarding, the
//! shared-mode cache in front of two upstreams, and each layer's flag.

#![cfg(all(
    feature = "cache",
    feature = "rate-limit",
    feature = "shed",
    feature = "concurrency",
    feature = "compression-gzip"
))]

#[path = "../examples/reverse_proxy.rs"]
#[allow(dead_code, unreachable_pub)]
mod reverse_proxy;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use reverse_proxy::Options;

/// An origin that echoes what it received: method, target and every header
/// (one per line), and counts requests. `/hold` answers one second after it
/// arrives (so the test can send more meanwhile); `/big` pads its answer to
/// several kilobytes.
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
                        let request_path_is_big = request.uri().path() == "/big";
                        calls.fetch_add(1, Ordering::SeqCst);
                        if request.uri().path() == "/hold" {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                        let mut echo = format!("{name} {} {}\n", request.method(), request.uri());
                        for (header, value) in request.headers() {
                            echo.push_str(&format!("{header}: {}\n", value.to_str().unwrap()));
                        }
                        let body = request.into_body().collect().await.unwrap().to_bytes();
                        echo.push_str(&format!("body: {}\n", String::from_utf8_lossy(&body)));
                        if request_path_is_big {
                            echo.push_str(&"padding ".repeat(512));
                        }
                        Ok::<_, Infallible>(
                            Response::builder()
                                .header("cache-control", "max-age=60")
                                .header("content-type", "text/plain")
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

async fn proxy(upstreams: &[SocketAddr], flags: &[&str]) -> SocketAddr {
    let mut args = vec!["--listen".to_owned(), "127.0.0.1:0".to_owned()];
    for upstream in upstreams {
        args.push("--upstream".to_owned());
        args.push(format!("http://{upstream}"));
    }
    args.extend(flags.iter().map(|flag| flag.to_string()));
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
    let proxy = proxy(&[upstream], &[]).await;

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

    let plain = proxy(&[a, b], &[]).await;
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

    let cached = proxy(&[a, b], &["--cache"]).await;
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
    for bad in [
        &["--rate-limit", "0/s"][..],
        &["--rate-limit", "10"],
        &["--rate-limit", "10/d"],
        &["--rate-limit"],
        &["--concurrency", "0"],
        &["--concurrency", "many"],
        &["--shed", "-1"],
        &["--shed"],
    ] {
        let mut args = vec!["--upstream", "http://127.0.0.1:1"];
        args.extend_from_slice(bad);
        assert!(parse(&args).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn every_layer_is_off_unless_named_and_each_flag_sets_its_own() {
    let parse = |args: &[&str]| Options::parse(args.iter().map(|s| s.to_string())).unwrap();
    let none = parse(&["--upstream", "http://127.0.0.1:1"]);
    assert_eq!(none.rate_limit, None);
    assert_eq!((none.shed, none.concurrency), (None, None));
    assert!(!none.compress && !none.decompress && !none.cache && !none.etag);

    let all = parse(&[
        "--upstream",
        "http://127.0.0.1:1",
        "--rate-limit",
        "20/m",
        "--compress",
        "--decompress",
        "--cache",
        "--etag",
        "--shed",
        "8",
        "--concurrency",
        "16",
    ]);
    assert_eq!(
        all.rate_limit,
        Some(reverse_proxy::Rate {
            count: 20.try_into().unwrap(),
            per: reverse_proxy::Per::Minute
        })
    );
    assert_eq!(all.shed.map(|n| n.get()), Some(8));
    assert_eq!(all.concurrency.map(|n| n.get()), Some(16));
    assert!(all.compress && all.decompress && all.cache && all.etag);
    let rates: Vec<_> = ["3/s", "3/m", "3/h"]
        .iter()
        .map(|r| reverse_proxy::Rate::parse(r).unwrap().per)
        .collect();
    use reverse_proxy::Per;
    assert_eq!(rates, [Per::Second, Per::Minute, Per::Hour]);
}

fn get(proxy: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut request = Request::get(format!("http://{proxy}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(Full::default()).unwrap()
}

#[tokio::test]
async fn compresses_responses_only_with_compress() {
    let calls = Arc::new(AtomicUsize::new(0));
    let upstream = origin("o", calls.clone()).await;
    let accepts = [("accept-encoding", "gzip")];

    let plain = proxy(&[upstream], &[]).await;
    let (response, body) = send(get(plain, "/big", &accepts)).await;
    assert!(!response.headers().contains_key("content-encoding"));
    assert!(body.starts_with("o GET /big\n"), "{body}");

    let compressing = proxy(&[upstream], &["--compress"]).await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let response = client
        .request(get(compressing, "/big", &accepts))
        .await
        .unwrap();
    assert_eq!(response.headers()["content-encoding"], "gzip");
    let compressed = response.into_body().collect().await.unwrap().to_bytes();
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::GzDecoder::new(&compressed[..]),
        &mut text,
    )
    .unwrap();
    assert!(text.starts_with("o GET /big\n"), "{text}");
    assert!(
        compressed.len() < text.len() / 4,
        "{} of {}",
        compressed.len(),
        text.len()
    );
}

#[tokio::test]
async fn decompresses_request_bodies_only_with_decompress() {
    let calls = Arc::new(AtomicUsize::new(0));
    let upstream = origin("o", calls.clone()).await;
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gzip, b"payload").unwrap();
    let gzipped = Bytes::from(gzip.finish().unwrap());
    let post = |proxy: SocketAddr| {
        Request::post(format!("http://{proxy}/upload"))
            .header("content-encoding", "gzip")
            .body(Full::new(gzipped.clone()))
            .unwrap()
    };

    let plain = proxy(&[upstream], &[]).await;
    let (_, echo) = send(post(plain)).await;
    assert!(echo.contains("content-encoding: gzip\n"), "{echo}");
    assert!(!echo.contains("body: payload"), "{echo}");

    let decompressing = proxy(&[upstream], &["--decompress"]).await;
    let (_, echo) = send(post(decompressing)).await;
    assert!(echo.contains("body: payload\n"), "{echo}");
    assert!(!echo.contains("content-encoding"), "{echo}");
}

#[tokio::test]
async fn rate_limits_each_client_only_with_rate_limit() {
    let calls = Arc::new(AtomicUsize::new(0));
    let upstream = origin("o", calls.clone()).await;

    let plain = proxy(&[upstream], &[]).await;
    for _ in 0..5 {
        assert_eq!(send(get(plain, "/r", &[])).await.0.status(), 200);
    }

    // Two a minute, both at once: the third within the minute is refused.
    let limited = proxy(&[upstream], &["--rate-limit", "2/m"]).await;
    assert_eq!(send(get(limited, "/r", &[])).await.0.status(), 200);
    assert_eq!(send(get(limited, "/r", &[])).await.0.status(), 200);
    let (refused, _) = send(get(limited, "/r", &[])).await;
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["retry-after"], "30");
    assert_eq!(calls.load(Ordering::SeqCst), 7);
}

/// Sends `/hold` (answered after a second) and, once the origin has it, `/r`:
/// the second request's status and how long it took.
async fn second_while_one_is_held(proxy: SocketAddr, calls: &Arc<AtomicUsize>) -> (u16, Duration) {
    let held = tokio::spawn(send(get(proxy, "/hold", &[])));
    let deadline = Instant::now() + Duration::from_secs(5);
    while calls.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "/hold never reached the origin");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let started = Instant::now();
    let (response, _) = send(get(proxy, "/r", &[])).await;
    let elapsed = started.elapsed();
    assert_eq!(held.await.unwrap().0.status(), 200);
    (response.status().as_u16(), elapsed)
}

#[tokio::test]
async fn limits_requests_in_flight_only_with_concurrency() {
    let calls = Arc::new(AtomicUsize::new(0));
    let upstream = origin("o", calls.clone()).await;
    let plain = proxy(&[upstream], &[]).await;
    let (status, _) = second_while_one_is_held(plain, &calls).await;
    assert_eq!(status, 200);
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    let calls = Arc::new(AtomicUsize::new(0));
    let upstream = origin("o", calls.clone()).await;
    let limited = proxy(&[upstream], &["--concurrency", "1"]).await;
    let (status, elapsed) = second_while_one_is_held(limited, &calls).await;
    assert_eq!(status, 503);
    assert!(
        elapsed < Duration::from_millis(900),
        "refused at once, not after the held one: {elapsed:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn sheds_a_standing_line_only_with_shed() {
    let calls = Arc::new(AtomicUsize::new(0));
    let upstream = origin("o", calls.clone()).await;
    let plain = proxy(&[upstream], &[]).await;
    let (status, _) = second_while_one_is_held(plain, &calls).await;
    assert_eq!(status, 200);

    let calls = Arc::new(AtomicUsize::new(0));
    let upstream = origin("o", calls.clone()).await;
    let shedding = proxy(&[upstream], &["--shed", "1"]).await;
    let (status, elapsed) = second_while_one_is_held(shedding, &calls).await;
    // It waits in the line for at most CoDel's interval (100 ms), not for the
    // held request's whole second.
    assert_eq!(status, 503);
    assert!(elapsed < Duration::from_millis(900), "{elapsed:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}
