//! Helpers shared by the compression tests: reference encoders and decoders from
//! the codec crates themselves, bodies that produce frames on cue, and requests,
//! responses and a one-shot service for the layer.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use std::convert::Infallible;

use bytes::Bytes;
use http::header::{ACCEPT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use tokio::sync::mpsc;
use tower::{Layer, ServiceExt, service_fn};
use tower_toolbox::compression::{Coding, CompressionBody, CompressionLayer};

/// Decodes `data` with the reference decoder of `coding`.
pub fn decode(coding: Coding, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match coding {
        Coding::Gzip => {
            flate2::read::MultiGzDecoder::new(data)
                .read_to_end(&mut out)
                .expect("valid gzip");
        }
        Coding::Deflate => {
            flate2::read::ZlibDecoder::new(data)
                .read_to_end(&mut out)
                .expect("valid zlib");
        }
        Coding::Brotli => {
            brotli::Decompressor::new(data, 4096)
                .read_to_end(&mut out)
                .expect("valid brotli");
        }
        Coding::Zstd => {
            out = zstd::stream::decode_all(data).expect("valid zstd");
        }
    }
    out
}

/// Encodes `data` with the reference encoder of `coding` at its default level.
pub fn encode(coding: Coding, data: &[u8]) -> Vec<u8> {
    encode_at(coding, data, coding.default_level())
}

/// Encodes `data` with the reference encoder of `coding` at `level`.
pub fn encode_at(coding: Coding, data: &[u8], level: i32) -> Vec<u8> {
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
            let mut out = Vec::new();
            let params = brotli::enc::BrotliEncoderParams {
                quality: level,
                ..Default::default()
            };
            brotli::BrotliCompress(&mut &data[..], &mut out, &params).unwrap();
            out
        }
        Coding::Zstd => zstd::bulk::compress(data, level).unwrap(),
    }
}

/// A body that yields the given frames, all ready.
pub struct Frames<E> {
    frames: std::vec::IntoIter<Result<Frame<Bytes>, E>>,
}

impl<E> Frames<E> {
    pub fn new(frames: Vec<Result<Frame<Bytes>, E>>) -> Self {
        Frames {
            frames: frames.into_iter(),
        }
    }
}

impl<E> Unpin for Frames<E> {}

impl<E> Body for Frames<E> {
    type Data = Bytes;
    type Error = E;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, E>>> {
        Poll::Ready(self.frames.next())
    }
}

/// A body fed by a channel: each message is one frame, pending until sent.
pub struct ChannelBody {
    rx: mpsc::UnboundedReceiver<Frame<Bytes>>,
}

impl ChannelBody {
    pub fn new() -> (mpsc::UnboundedSender<Frame<Bytes>>, ChannelBody) {
        let (tx, rx) = mpsc::unbounded_channel();
        (tx, ChannelBody { rx })
    }
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.rx.poll_recv(cx).map(|frame| frame.map(Ok))
    }
}

/// A body that yields `chunks` one per poll and counts the bytes pulled.
pub struct CountingBody {
    chunks: std::vec::IntoIter<Bytes>,
    pulled: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl CountingBody {
    pub fn new(
        data: &[u8],
        chunk: usize,
    ) -> (CountingBody, std::sync::Arc<std::sync::atomic::AtomicU64>) {
        let pulled = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let chunks: Vec<Bytes> = data.chunks(chunk).map(Bytes::copy_from_slice).collect();
        (
            CountingBody {
                chunks: chunks.into_iter(),
                pulled: pulled.clone(),
            },
            pulled,
        )
    }
}

impl Body for CountingBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let next = self.chunks.next();
        if let Some(chunk) = &next {
            self.pulled
                .fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::SeqCst);
        }
        Poll::Ready(next.map(|c| Ok(Frame::data(c))))
    }
}

/// A brotli decoder driven through the stream API until it has given out all the
/// output it can. `brotli::DecompressorWriter` stops once its own buffer is full
/// and its input used up, holding back output that a browser's decoder releases.
pub struct BrotliStream {
    state: brotli::BrotliState<
        brotli::enc::StandardAlloc,
        brotli::enc::StandardAlloc,
        brotli::enc::StandardAlloc,
    >,
    out: Vec<u8>,
}

impl Default for BrotliStream {
    fn default() -> Self {
        let alloc = brotli::enc::StandardAlloc::default;
        BrotliStream {
            state: brotli::BrotliState::new(alloc(), alloc(), alloc()),
            out: Vec::new(),
        }
    }
}

impl BrotliStream {
    fn push(&mut self, chunk: &[u8]) -> &[u8] {
        let mut buffer = vec![0u8; 16 * 1024];
        let mut input_offset = 0;
        loop {
            let mut available_in = chunk.len() - input_offset;
            let mut available_out = buffer.len();
            let mut output_offset = 0;
            let mut total = 0;
            let result = brotli::BrotliDecompressStream(
                &mut available_in,
                &mut input_offset,
                chunk,
                &mut available_out,
                &mut output_offset,
                &mut buffer,
                &mut total,
                &mut self.state,
            );
            self.out.extend_from_slice(&buffer[..output_offset]);
            match result {
                brotli::BrotliResult::ResultFailure => panic!("invalid brotli"),
                brotli::BrotliResult::NeedsMoreOutput => continue,
                // A full buffer may hide more output: ask again with no input.
                _ if output_offset == buffer.len() => continue,
                _ => return &self.out,
            }
        }
    }
}

/// Decodes a compressed stream as it arrives, the way a browser does.
pub enum StreamDecoder {
    Gzip(flate2::write::GzDecoder<Vec<u8>>),
    Deflate(flate2::write::ZlibDecoder<Vec<u8>>),
    Brotli(Box<BrotliStream>),
    Zstd(zstd::stream::write::Decoder<'static, Vec<u8>>),
}

impl StreamDecoder {
    pub fn new(coding: Coding) -> Self {
        match coding {
            Coding::Gzip => StreamDecoder::Gzip(flate2::write::GzDecoder::new(Vec::new())),
            Coding::Deflate => StreamDecoder::Deflate(flate2::write::ZlibDecoder::new(Vec::new())),
            Coding::Brotli => StreamDecoder::Brotli(Box::default()),
            Coding::Zstd => {
                StreamDecoder::Zstd(zstd::stream::write::Decoder::new(Vec::new()).unwrap())
            }
        }
    }

    /// Feeds `chunk` and returns everything decoded so far.
    pub fn push(&mut self, chunk: &[u8]) -> &[u8] {
        match self {
            StreamDecoder::Gzip(d) => {
                d.write_all(chunk).unwrap();
                d.flush().unwrap();
                d.get_ref()
            }
            StreamDecoder::Deflate(d) => {
                d.write_all(chunk).unwrap();
                d.flush().unwrap();
                d.get_ref()
            }
            StreamDecoder::Brotli(d) => d.push(chunk),
            StreamDecoder::Zstd(d) => {
                d.write_all(chunk).unwrap();
                d.flush().unwrap();
                d.get_ref()
            }
        }
    }
}

/// The fields of the `tracing` events emitted while a capture is installed,
/// numbers as numbers and everything else as its `Debug` text.
#[derive(Clone, Default)]
pub struct Events {
    events: std::sync::Arc<std::sync::Mutex<Vec<Fields>>>,
}

/// One event's fields, by name.
pub type Fields = std::collections::HashMap<&'static str, String>;

impl Events {
    /// Records the events of this thread until the guard is dropped.
    pub fn capture(&self) -> tracing::subscriber::DefaultGuard {
        tracing::subscriber::set_default(self.clone())
    }

    /// The events whose message contains `text`.
    pub fn with_message(&self, text: &str) -> Vec<Fields> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.get("message").is_some_and(|m| m.contains(text)))
            .cloned()
            .collect()
    }
}

struct Visitor<'a>(&'a mut Fields);

impl tracing::field::Visit for Visitor<'_> {
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.0.insert(field.name(), value.to_string());
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name(), format!("{value:?}"));
    }
}

impl tracing::Subscriber for Events {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }

    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        let mut fields = Fields::new();
        event.record(&mut Visitor(&mut fields));
        self.events.lock().unwrap().push(fields);
    }

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}
}

/// How many `frame`-byte frames of `encoded` the reference decoder of `coding`
/// must read before its output exceeds `bytes`: the least a bounded decoder has to
/// read to know the body is too large. `None` when the whole body decodes to no
/// more than `bytes`.
pub fn frames_to_exceed(
    coding: Coding,
    encoded: &[u8],
    frame: usize,
    bytes: usize,
) -> Option<usize> {
    let mut decoder = StreamDecoder::new(coding);
    for (n, chunk) in encoded.chunks(frame).enumerate() {
        if decoder.push(chunk).len() > bytes {
            return Some(n + 1);
        }
    }
    None
}

/// A JSON list of about `bytes` bytes, varied like real data.
pub fn json_body(bytes: usize) -> String {
    const WORDS: [&str; 8] = [
        "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
    ];
    let mut body = String::from("[");
    let mut i: u64 = 0;
    while body.len() < bytes {
        let mix = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
        body.push_str(&format!(
            r#"{{"id":{i},"name":"{} {}","price":{}.{:02},"stock":{}}},"#,
            WORDS[(mix % 8) as usize],
            WORDS[((mix >> 3) % 8) as usize],
            mix % 1000,
            mix % 100,
            mix % 37
        ));
        i += 1;
    }
    body.push_str("{}]");
    body
}

pub fn accepting(value: &'static str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(ACCEPT_ENCODING, HeaderValue::from_static(value));
    headers
}

/// Sends a GET with `accept` through `layer` to a service answering `response`.
pub async fn through(
    layer: CompressionLayer,
    request: Request<()>,
    response: Response<Full<Bytes>>,
) -> Response<CompressionBody<Full<Bytes>>> {
    let response = std::sync::Mutex::new(Some(response));
    let service = layer.layer(service_fn(move |_request: Request<()>| {
        let response = response.lock().unwrap().take().unwrap();
        async move { Ok::<_, Infallible>(response) }
    }));
    service.oneshot(request).await.unwrap()
}

pub fn get(accept: &'static str) -> Request<()> {
    Request::get("/")
        .header(ACCEPT_ENCODING, accept)
        .body(())
        .unwrap()
}

pub fn json_response(body: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .header(CONTENT_TYPE, "application/json")
        .header(CONTENT_LENGTH, body.len())
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap()
}

pub async fn body_bytes<B>(response: Response<B>) -> (http::response::Parts, Bytes)
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let (parts, body) = response.into_parts();
    (parts, body.collect().await.unwrap().to_bytes())
}
