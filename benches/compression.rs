//! Compression throughput on a 1 MB JSON document, at each coding's default level
//! (zstd 3, brotli 4, gzip and deflate 6).
//!
//! For each coding one group holds the raw encoder (the codec crate called
//! directly on the whole buffer, streaming API, no HTTP), our `CompressionLayer`
//! and tower-http's `CompressionLayer` at the same level, each as a full
//! request-to-collected-body round through the service. Criterion reports
//! throughput in MB/s of input.
//!
//! On Linux the time measured is the CPU time of the benchmark thread (everything
//! here runs on it: the runtime is single-threaded), so that other load on a
//! shared machine does not skew the comparison; elsewhere it is wall time.
//!
//! Criterion measures the three contestants one after another, so a change of load
//! between them shows up in the ratios. Before the groups, the benchmark therefore
//! also prints interleaved medians: 31 rounds, each timing one compression by each
//! contestant in rotating order, and the ratios of those medians. The `gzip_backend` group compares flate2's
//! `zlib-rs` backend, which this crate selects, with `miniz_oxide`, flate2's
//! default. Before anything is timed, the benchmark checks that the three do the
//! same work (each output decodes to the input and is the raw encoder's size, so
//! the same level) and prints the compressed sizes.
//!
//! `cargo bench --bench compression -- --warm-up-time 1 --measurement-time 3`

use std::convert::Infallible;
use std::hint::black_box;
use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::header::{ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_TYPE};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{Layer, ServiceExt, service_fn};
use tower_http::CompressionLevel;
use tower_toolbox::compression::{Coding, CompressionLayer};

#[path = "../tests/compression/support.rs"]
mod support;

/// The time this thread has run on a CPU (Linux), or the wall clock elsewhere.
#[cfg(target_os = "linux")]
fn now() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

#[cfg(not(target_os = "linux"))]
fn now() -> Duration {
    use std::sync::OnceLock;
    use std::time::Instant;
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed()
}

/// Runs `f` `iters` times and returns the time taken by [`now`].
fn timed(iters: u64, mut f: impl FnMut()) -> Duration {
    let start = now();
    for _ in 0..iters {
        f();
    }
    now() - start
}

/// A JSON list of about 1 MB, varied like real API output.
fn json_document() -> Bytes {
    const WORDS: [&str; 8] = [
        "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
    ];
    let mut body = String::from("[");
    let mut i: u64 = 0;
    while body.len() < 1_000_000 {
        let mix = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
        body.push_str(&format!(
            r#"{{"id":{i},"sku":"SKU-{:06}","name":"{} {}","price":{}.{:02},"stock":{},"active":{}}},"#,
            mix % 1_000_000,
            WORDS[(mix % 8) as usize],
            WORDS[((mix >> 3) % 8) as usize],
            mix % 1000,
            mix % 100,
            mix % 37,
            mix % 3 == 0,
        ));
        i += 1;
    }
    body.push_str("{}]");
    Bytes::from(body)
}

/// The codec crate's own streaming encoder, at `coding`'s default level.
fn raw(coding: Coding, data: &[u8]) -> Vec<u8> {
    let level = coding.default_level();
    match coding {
        Coding::Gzip => {
            let mut e =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level as u32));
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        Coding::Deflate => {
            let mut e =
                flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::new(level as u32));
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        Coding::Brotli => {
            let params = brotli::enc::BrotliEncoderParams {
                quality: level,
                ..Default::default()
            };
            let mut out = Vec::new();
            brotli::BrotliCompress(&mut &data[..], &mut out, &params).unwrap();
            out
        }
        Coding::Zstd => zstd::stream::encode_all(data, level).unwrap(),
    }
}

/// Raw DEFLATE at level 6 through flate2, whose backend this crate sets to zlib-rs.
fn deflate_zlib_rs(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::new(6));
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Raw DEFLATE at level 6 through miniz_oxide, flate2's default backend.
fn deflate_miniz_oxide(data: &[u8]) -> Vec<u8> {
    miniz_oxide::deflate::compress_to_vec(data, 6)
}

fn json_response(data: &Bytes) -> Response<Full<Bytes>> {
    Response::builder()
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(data.clone()))
        .unwrap()
}

fn request(coding: Coding) -> Request<()> {
    Request::get("/items")
        .header(ACCEPT_ENCODING, coding.as_str())
        .body(())
        .unwrap()
}

/// A response's `Content-Encoding` and its whole body.
async fn collect<B>(response: Response<B>) -> (http::HeaderValue, Bytes)
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let encoding = response.headers()[CONTENT_ENCODING].clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (encoding, body)
}

fn compression(c: &mut Criterion) {
    let data = json_document();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();

    let ours = CompressionLayer::new().layer(service_fn({
        let data = data.clone();
        move |_: Request<()>| {
            let response = json_response(&data);
            async move { Ok::<_, Infallible>(response) }
        }
    }));
    let peer = |coding: Coding| {
        let data = data.clone();
        tower_http::compression::CompressionLayer::new()
            .quality(CompressionLevel::Precise(coding.default_level()))
            .layer(service_fn(move |_: Request<()>| {
                let response = json_response(&data);
                async move { Ok::<_, Infallible>(response) }
            }))
    };

    // Before timing anything, check the three do the same work: each answer
    // carries the coding, decodes to the input, and is the raw encoder's size
    // (ours exactly; tower-http's to within 0.5%: it hands the same level to the
    // same codecs, zstd and brotli come out identical, and its deflate streams
    // hold a few more block boundaries, about 0.1% more bytes). A contestant at another level, or one that
    // skipped compression, stops the benchmark here.
    println!("input: {} bytes of JSON", data.len());
    for coding in Coding::ALL {
        let (ours_coding, ours_out) = runtime.block_on(async {
            collect(ours.clone().oneshot(request(coding)).await.unwrap()).await
        });
        let (peer_coding, peer_out) = runtime.block_on(async {
            collect(peer(coding).oneshot(request(coding)).await.unwrap()).await
        });
        let raw_out = raw(coding, &data);
        assert_eq!(ours_coding, coding.as_str());
        assert_eq!(peer_coding, coding.as_str());
        for out in [&raw_out[..], &ours_out, &peer_out] {
            assert!(
                support::decode(coding, out) == data,
                "{coding}: output does not decode to the input"
            );
        }
        assert_eq!(
            ours_out.len(),
            raw_out.len(),
            "{coding}: not the raw encoder's level"
        );
        assert!(
            peer_out.len().abs_diff(raw_out.len()) * 200 <= raw_out.len(),
            "{coding}: tower-http is not at the raw encoder's level: {} against {}",
            peer_out.len(),
            raw_out.len()
        );
        println!(
            "{coding} level {}: raw {} bytes, tower-toolbox {} bytes, tower-http {} bytes \
             ({:.1}% of the input)",
            coding.default_level(),
            raw_out.len(),
            ours_out.len(),
            peer_out.len(),
            100.0 * ours_out.len() as f64 / data.len() as f64,
        );
    }

    println!("interleaved medians of 31 rounds (MB/s of input; ratios of the medians):");
    for coding in Coding::ALL {
        let peer = peer(coding);
        let mut times: [Vec<Duration>; 3] = Default::default();
        for round in 0..31 {
            for turn in 0..3 {
                let contestant = (round + turn) % 3;
                let start = now();
                match contestant {
                    0 => {
                        black_box(raw(coding, &data));
                    }
                    1 => runtime.block_on(async {
                        let response = ours.clone().oneshot(request(coding)).await.unwrap();
                        black_box(response.into_body().collect().await.unwrap().to_bytes());
                    }),
                    _ => runtime.block_on(async {
                        let response = peer.clone().oneshot(request(coding)).await.unwrap();
                        black_box(response.into_body().collect().await.unwrap().to_bytes());
                    }),
                }
                times[contestant].push(now() - start);
            }
        }
        let [raw_t, ours_t, peer_t] = times.map(|mut t| {
            t.sort();
            t[t.len() / 2]
        });
        let mbps = |t: Duration| data.len() as f64 / t.as_secs_f64() / 1e6;
        println!(
            "{coding}: raw {:.1}, tower-toolbox {:.1} ({:.1}% of raw), tower-http {:.1} \
             (tower-toolbox / tower-http = {:.3})",
            mbps(raw_t),
            mbps(ours_t),
            100.0 * raw_t.as_secs_f64() / ours_t.as_secs_f64(),
            mbps(peer_t),
            peer_t.as_secs_f64() / ours_t.as_secs_f64(),
        );
    }

    type Backend = fn(&[u8]) -> Vec<u8>;
    let backends: [Backend; 2] = [deflate_zlib_rs, deflate_miniz_oxide];
    let mut times: [Vec<Duration>; 2] = Default::default();
    for round in 0..31 {
        for turn in 0..2 {
            let backend = (round + turn) % 2;
            let start = now();
            black_box(backends[backend](&data));
            times[backend].push(now() - start);
        }
    }
    let [zlib_rs, miniz] = times.map(|mut t| {
        t.sort();
        t[t.len() / 2]
    });
    let mbps = |t: Duration| data.len() as f64 / t.as_secs_f64() / 1e6;
    println!(
        "deflate level 6 backends: flate2 zlib-rs {:.1}, miniz_oxide {:.1} (zlib-rs / miniz_oxide = {:.2})",
        mbps(zlib_rs),
        mbps(miniz),
        miniz.as_secs_f64() / zlib_rs.as_secs_f64()
    );

    for coding in Coding::ALL {
        let mut group = c.benchmark_group(format!("compression/json_1mb/{coding}"));
        group.throughput(Throughput::Bytes(data.len() as u64));
        group.bench_function("raw_encoder", |b| {
            b.iter_custom(|iters| {
                timed(iters, || {
                    black_box(raw(coding, black_box(&data)));
                })
            })
        });
        group.bench_function("tower_toolbox", |b| {
            b.iter_custom(|iters| {
                timed(iters, || {
                    runtime.block_on(async {
                        let response = ours.clone().oneshot(request(coding)).await.unwrap();
                        black_box(response.into_body().collect().await.unwrap().to_bytes());
                    })
                })
            })
        });
        let peer = peer(coding);
        group.bench_function("tower_http", |b| {
            b.iter_custom(|iters| {
                timed(iters, || {
                    runtime.block_on(async {
                        let response = peer.clone().oneshot(request(coding)).await.unwrap();
                        black_box(response.into_body().collect().await.unwrap().to_bytes());
                    })
                })
            })
        });
        group.finish();
    }

    let mut group = c.benchmark_group("compression/gzip_backend");
    group.throughput(Throughput::Bytes(data.len() as u64));
    group.bench_function("flate2_zlib_rs", |b| {
        b.iter(|| {
            let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::new(6));
            e.write_all(black_box(&data)).unwrap();
            black_box(e.finish().unwrap())
        })
    });
    group.bench_function("miniz_oxide", |b| {
        b.iter(|| black_box(miniz_oxide::deflate::compress_to_vec(black_box(&data), 6)))
    });
    group.finish();
}

criterion_group!(benches, compression);
criterion_main!(benches);
