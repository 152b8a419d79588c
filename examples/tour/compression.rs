//! Compression: one JSON list under each `Accept-Encoding`, a server-sent event
//! stream arriving event by event, and compressed uploads, bombs included.

use std::io::Write;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body as AxumBody;
use axum::routing::{get, post};
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower_toolbox::compression::{CompressionLayer, RequestDecompressionLayer};

use crate::{HttpClient, note, section, serve};

/// The JSON list every request asks for: 3 000 products, about 250 KB.
fn products() -> String {
    let items: Vec<String> = (0..3_000u32)
        .map(|i| {
            format!(
                r#"{{"id":{i},"sku":"SKU-{:06}","name":"product {i}","price":{}.{:02},"in_stock":{}}}"#,
                i.wrapping_mul(7919) % 1_000_000,
                i.wrapping_mul(31) % 500,
                i % 100,
                i % 3 != 0
            )
        })
        .collect();
    format!("[{}]", items.join(","))
}

/// A body producing one server-sent event every 100 ms, five in all.
struct Ticker {
    sleep: Pin<Box<tokio::time::Sleep>>,
    sent: u32,
}

impl http_body::Body for Ticker {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.sent == 5 {
            return Poll::Ready(None);
        }
        std::task::ready!(self.sleep.as_mut().poll(cx));
        self.sent += 1;
        let next = tokio::time::Instant::now() + Duration::from_millis(100);
        self.sleep.as_mut().reset(next);
        let event = format!(
            "event: price\ndata: {{\"tick\":{},\"price\":{}.25}}\n\n",
            self.sent,
            100 + self.sent
        );
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(event)))))
    }
}

fn ticker(content_type: &'static str) -> Response<AxumBody> {
    let body = Ticker {
        sleep: Box::pin(tokio::time::sleep(Duration::from_millis(100))),
        sent: 0,
    };
    Response::builder()
        .header(CONTENT_TYPE, content_type)
        .body(AxumBody::new(body))
        .unwrap()
}

/// Reads `path` at `addr` frame by frame and prints when each event decodes.
async fn watch_stream(addr: std::net::SocketAddr, path: &str) {
    let raw: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let request = Request::get(format!("http://{addr}{path}"))
        .header("accept-encoding", "gzip")
        .body(Full::default())
        .unwrap();
    let start = Instant::now();
    let response = raw.request(request).await.expect("request");
    let coding = response
        .headers()
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    note(&format!(
        "  head after {:>5.1} ms: content-encoding {coding}",
        start.elapsed().as_secs_f64() * 1e3,
    ));
    let mut body = response.into_body();
    let mut decoder = flate2::write::GzDecoder::new(Vec::new());
    let mut shown = 0;
    while let Some(frame) = body.frame().await {
        let Ok(chunk) = frame.expect("frame").into_data() else {
            continue;
        };
        let decoded = if coding == "gzip" {
            decoder.write_all(&chunk).expect("valid gzip");
            decoder.flush().expect("valid gzip");
            &decoder.get_ref()[..]
        } else {
            &chunk[..]
        };
        let text = String::from_utf8_lossy(&decoded[shown..]).into_owned();
        shown = decoded.len();
        let events: Vec<&str> = text.lines().filter(|l| l.starts_with("data:")).collect();
        note(&format!(
            "  chunk at {:>5.1} ms: {:>3} compressed bytes -> {}",
            start.elapsed().as_secs_f64() * 1e3,
            chunk.len(),
            events.join(" | ")
        ));
    }
}

pub async fn run() {
    section("compression: negotiated, streaming-safe, bomb-proof");

    let app = Router::new()
        .route(
            "/products",
            get(|| async { ([(CONTENT_TYPE, "application/json")], products()) }),
        )
        .route("/ticks", get(|| async { ticker("text/event-stream") }))
        .route("/lines", get(|| async { ticker("application/x-ndjson") }))
        .route(
            "/upload",
            post(|body: Bytes| async move { format!("stored {} bytes", body.len()) }),
        )
        .layer(CompressionLayer::new())
        .layer(RequestDecompressionLayer::new());
    let addr = serve(app).await;
    let client = HttpClient::new();

    note("GET /products (the same JSON list) with each Accept-Encoding:");
    for accept in [
        "",
        "gzip",
        "deflate",
        "br",
        "zstd",
        "gzip, deflate, br, zstd",
        "gzip;q=1, br;q=0.5",
        "compress, identity;q=0",
    ] {
        let headers: &[(&str, &str)] = if accept.is_empty() {
            &[]
        } else {
            &[("accept-encoding", accept)]
        };
        let seen = client.get(addr, "/products", headers).await;
        note(&format!(
            "{:<26} -> {} content-encoding {:<7} {:>7} bytes in {:>6.2} ms  vary: {}",
            if accept.is_empty() { "(none)" } else { accept },
            seen.status.as_u16(),
            seen.header("content-encoding"),
            seen.body.len(),
            seen.elapsed.as_secs_f64() * 1e3,
            seen.header("vary"),
        ));
    }
    note("zstd wins a tie (server preference zstd, br, gzip, deflate); q-values win over it;");
    note("refusing identity and everything offered is the only way to get a 406.");

    note("");
    note("GET /ticks, a server-sent event every 100 ms, with Accept-Encoding: gzip:");
    watch_stream(addr, "/ticks").await;
    // tower-http never compresses text/event-stream; compare on a chunked stream
    // of the same events labelled application/x-ndjson.
    let peer = Router::new()
        .route("/lines", get(|| async { ticker("application/x-ndjson") }))
        .layer(tower_http::compression::CompressionLayer::new());
    let peer = serve(peer).await;
    note("the same event text sent as application/x-ndjson, through this crate's layer:");
    watch_stream(addr, "/lines").await;
    note("and through tower-http's CompressionLayer:");
    watch_stream(peer, "/lines").await;
    note("each event arrives compressed about when it is produced, not when the stream ends:");
    note("the encoder is flushed whenever the handler has nothing more ready. tower-http 0.7");
    note("flushes such a stream too, but never compresses text/event-stream itself.");

    note("");
    note("POST /upload with compressed bodies:");
    let json = products();
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gzip.write_all(json.as_bytes()).unwrap();
    let gzip = gzip.finish().unwrap();
    let mut bomb = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    bomb.write_all(&vec![0; 10 * 1024 * 1024]).unwrap();
    let bomb = bomb.finish().unwrap();
    for (label, coding, body) in [
        ("gzip JSON", "gzip", gzip),
        ("gzip bomb (10 MiB of zeros)", "gzip", bomb),
        ("an unknown coding", "compress", b"...".to_vec()),
        ("corrupt gzip", "gzip", b"not gzip at all".to_vec()),
    ] {
        let sent = body.len();
        let request = Request::post(format!("http://{addr}/upload"))
            .header("content-encoding", coding)
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let seen = client.send(request).await;
        let detail = if seen.status.is_success() {
            seen.text()
        } else {
            serde_json::from_slice::<serde_json::Value>(&seen.body)
                .ok()
                .and_then(|p| p["detail"].as_str().map(str::to_owned))
                .unwrap_or_default()
        };
        note(&format!(
            "{label:<28} {sent:>6} bytes -> {} {detail}",
            seen.status.as_u16()
        ));
    }
    note("bombs stop at a 100x expansion (after 64 KiB) or 2 MiB decoded, whichever comes first.");
}
