//! Helpers shared by the compression tests: reference encoders and decoders from
//! the codec crates themselves, and bodies that produce frames on cue.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame};
use tokio::sync::mpsc;
use tower_toolbox::compression::Coding;

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

/// Decodes a compressed stream as it arrives, the way a browser does.
pub enum StreamDecoder {
    Gzip(flate2::write::GzDecoder<Vec<u8>>),
    Deflate(flate2::write::ZlibDecoder<Vec<u8>>),
    Brotli(Box<brotli::DecompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Decoder<'static, Vec<u8>>),
}

impl StreamDecoder {
    pub fn new(coding: Coding) -> Self {
        match coding {
            Coding::Gzip => StreamDecoder::Gzip(flate2::write::GzDecoder::new(Vec::new())),
            Coding::Deflate => StreamDecoder::Deflate(flate2::write::ZlibDecoder::new(Vec::new())),
            Coding::Brotli => {
                StreamDecoder::Brotli(Box::new(brotli::DecompressorWriter::new(Vec::new(), 4096)))
            }
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
            StreamDecoder::Brotli(d) => {
                d.write_all(chunk).unwrap();
                d.flush().unwrap();
                d.get_ref()
            }
            StreamDecoder::Zstd(d) => {
                d.write_all(chunk).unwrap();
                d.flush().unwrap();
                d.get_ref()
            }
        }
    }
}
