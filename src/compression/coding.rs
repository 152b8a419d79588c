//! Content codings, their levels, and the encoder and decoder behind each one.

use std::fmt;
use std::io;

#[cfg(any(
    feature = "compression-gzip",
    feature = "compression-deflate",
    feature = "compression-br",
    feature = "compression-zstd"
))]
use async_compression::codecs::{DecodeV2, EncodeV2};
use async_compression::core::util::{PartialBuffer, WriteBuffer};
use bytes::BytesMut;
use http::HeaderValue;

/// A content coding (RFC 9110, section 8.4.1) this crate knows.
///
/// Every variant exists whatever the features; [`Coding::is_enabled`] says whether
/// this build can encode and decode it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Coding {
    /// `zstd` (RFC 8878), feature `compression-zstd`.
    Zstd,
    /// `br`, Brotli (RFC 7932), feature `compression-br`.
    Brotli,
    /// `gzip` (RFC 1952), feature `compression-gzip`. `x-gzip` is read as `gzip`.
    Gzip,
    /// `deflate`: the zlib format (RFC 1950), feature `compression-deflate`.
    Deflate,
}

impl Coding {
    /// Every coding, in the default server preference: zstd, br, gzip, deflate.
    pub const ALL: [Coding; 4] = [Coding::Zstd, Coding::Brotli, Coding::Gzip, Coding::Deflate];

    /// The token used in `Content-Encoding` and `Accept-Encoding`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Coding::Zstd => "zstd",
            Coding::Brotli => "br",
            Coding::Gzip => "gzip",
            Coding::Deflate => "deflate",
        }
    }

    /// Whether this build has the coding's feature on.
    pub const fn is_enabled(self) -> bool {
        match self {
            Coding::Zstd => cfg!(feature = "compression-zstd"),
            Coding::Brotli => cfg!(feature = "compression-br"),
            Coding::Gzip => cfg!(feature = "compression-gzip"),
            Coding::Deflate => cfg!(feature = "compression-deflate"),
        }
    }

    /// The coding named by `token` (case-insensitive; `x-gzip` is `gzip`), if known.
    pub fn from_token(token: &[u8]) -> Option<Coding> {
        let is = |name: &str| token.eq_ignore_ascii_case(name.as_bytes());
        if is("zstd") {
            Some(Coding::Zstd)
        } else if is("br") {
            Some(Coding::Brotli)
        } else if is("gzip") || is("x-gzip") {
            Some(Coding::Gzip)
        } else if is("deflate") {
            Some(Coding::Deflate)
        } else {
            None
        }
    }

    /// The coding's index in per-coding tables.
    pub(crate) const fn index(self) -> usize {
        match self {
            Coding::Zstd => 0,
            Coding::Brotli => 1,
            Coding::Gzip => 2,
            Coding::Deflate => 3,
        }
    }

    pub(crate) fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(self.as_str())
    }

    /// The level [`Level::Default`] means for this coding: zstd 3, brotli 4, gzip
    /// and deflate 6. Each is a fast setting that still compresses text well.
    pub const fn default_level(self) -> i32 {
        match self {
            Coding::Zstd => 3,
            Coding::Brotli => 4,
            Coding::Gzip | Coding::Deflate => 6,
        }
    }

    /// The range of precise levels this coding accepts; others are clamped into it.
    ///
    /// zstd stops at 19: higher levels use windows over the 8 MiB that RFC 8878
    /// lets an HTTP decoder refuse.
    pub const fn levels(self) -> (i32, i32) {
        match self {
            Coding::Zstd => (1, 19),
            Coding::Brotli => (0, 11),
            Coding::Gzip | Coding::Deflate => (1, 9),
        }
    }

    /// The precise level `level` stands for with this coding.
    pub fn precise(self, level: Level) -> i32 {
        let (low, high) = self.levels();
        match level {
            Level::Fastest => low,
            Level::Best => high,
            Level::Default => self.default_level(),
            Level::Precise(value) => value.clamp(low, high),
        }
    }
}

impl fmt::Display for Coding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How hard to compress.
///
/// Put one in a response's extensions to choose the level for that response alone
/// (it wins over the layer's per-coding levels):
///
/// ```
/// use tower_toolbox::compression::Level;
///
/// let mut response = http::Response::new("a large export, compressed hard");
/// response.extensions_mut().insert(Level::Best);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Level {
    /// The coding's fastest level (zstd 1, brotli 0, gzip 1).
    Fastest,
    /// The coding's default ([`Coding::default_level`]).
    #[default]
    Default,
    /// The coding's smallest output (zstd 19, brotli 11, gzip 9).
    Best,
    /// A level on the coding's own scale, clamped to [`Coding::levels`].
    Precise(i32),
}

/// The size of the scratch buffer encoders and decoders write into, in bytes.
pub(crate) const SCRATCH: usize = 32 * 1024;

/// A running encoder for one coding.
pub(crate) enum Encoder {
    #[cfg(feature = "compression-zstd")]
    Zstd(async_compression::codecs::ZstdEncoder),
    #[cfg(feature = "compression-br")]
    Brotli(Box<async_compression::codecs::BrotliEncoder>),
    #[cfg(feature = "compression-gzip")]
    Gzip(async_compression::codecs::GzipEncoder),
    #[cfg(feature = "compression-deflate")]
    Deflate(async_compression::codecs::ZlibEncoder),
}

impl Encoder {
    /// An encoder for `coding` at the precise `level`, or `None` when the coding's
    /// feature is off.
    pub(crate) fn new(coding: Coding, level: i32) -> Option<Encoder> {
        // Unused when no coding feature is on.
        let _ = level;
        match coding {
            #[cfg(feature = "compression-zstd")]
            Coding::Zstd => Some(Encoder::Zstd(async_compression::codecs::ZstdEncoder::new(
                level,
            ))),
            #[cfg(feature = "compression-br")]
            Coding::Brotli => {
                let params = async_compression::codecs::brotli::params::EncoderParams::default()
                    .quality(async_compression::Level::Precise(level));
                Some(Encoder::Brotli(Box::new(
                    async_compression::codecs::BrotliEncoder::new(params),
                )))
            }
            #[cfg(feature = "compression-gzip")]
            Coding::Gzip => Some(Encoder::Gzip(async_compression::codecs::GzipEncoder::new(
                async_compression::Level::Precise(level).into(),
            ))),
            #[cfg(feature = "compression-deflate")]
            Coding::Deflate => Some(Encoder::Deflate(
                async_compression::codecs::ZlibEncoder::new(
                    async_compression::Level::Precise(level).into(),
                ),
            )),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    fn codec(&mut self) -> &mut dyn EncodeV2Dyn {
        match *self {
            #[cfg(feature = "compression-zstd")]
            Encoder::Zstd(ref mut e) => e,
            #[cfg(feature = "compression-br")]
            Encoder::Brotli(ref mut e) => &mut **e,
            #[cfg(feature = "compression-gzip")]
            Encoder::Gzip(ref mut e) => e,
            #[cfg(feature = "compression-deflate")]
            Encoder::Deflate(ref mut e) => e,
        }
    }

    /// Compresses all of `input`, appending the output to `out`.
    pub(crate) fn encode(
        &mut self,
        mut input: &[u8],
        scratch: &mut [u8],
        out: &mut BytesMut,
    ) -> io::Result<()> {
        let codec = self.codec();
        while !input.is_empty() {
            let mut partial = PartialBuffer::new(input);
            let mut write = WriteBuffer::new_initialized(scratch);
            codec.encode(&mut partial, &mut write)?;
            out.extend_from_slice(write.written());
            input = &input[partial.written_len()..];
        }
        Ok(())
    }

    /// Emits everything given so far so the client can decode it now.
    pub(crate) fn flush(&mut self, scratch: &mut [u8], out: &mut BytesMut) -> io::Result<()> {
        let codec = self.codec();
        loop {
            let mut write = WriteBuffer::new_initialized(scratch);
            let done = codec.flush(&mut write)?;
            out.extend_from_slice(write.written());
            if done {
                return Ok(());
            }
        }
    }

    /// Ends the stream, appending the final bytes to `out`.
    pub(crate) fn finish(&mut self, scratch: &mut [u8], out: &mut BytesMut) -> io::Result<()> {
        let codec = self.codec();
        loop {
            let mut write = WriteBuffer::new_initialized(scratch);
            let done = codec.finish(&mut write)?;
            out.extend_from_slice(write.written());
            if done {
                return Ok(());
            }
        }
    }
}

impl fmt::Debug for Encoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Encoder")
    }
}

/// The object-safe codec interface, present even when no codec feature is on.
trait EncodeV2Dyn {
    fn encode(
        &mut self,
        input: &mut PartialBuffer<&[u8]>,
        output: &mut WriteBuffer<'_>,
    ) -> io::Result<()>;
    fn flush(&mut self, output: &mut WriteBuffer<'_>) -> io::Result<bool>;
    fn finish(&mut self, output: &mut WriteBuffer<'_>) -> io::Result<bool>;
}

#[cfg(any(
    feature = "compression-gzip",
    feature = "compression-deflate",
    feature = "compression-br",
    feature = "compression-zstd"
))]
impl<T: EncodeV2> EncodeV2Dyn for T {
    fn encode(
        &mut self,
        input: &mut PartialBuffer<&[u8]>,
        output: &mut WriteBuffer<'_>,
    ) -> io::Result<()> {
        EncodeV2::encode(self, input, output)
    }
    fn flush(&mut self, output: &mut WriteBuffer<'_>) -> io::Result<bool> {
        EncodeV2::flush(self, output)
    }
    fn finish(&mut self, output: &mut WriteBuffer<'_>) -> io::Result<bool> {
        EncodeV2::finish(self, output)
    }
}

/// A running decoder for one coding.
pub(crate) enum Decoder {
    #[cfg(feature = "compression-zstd")]
    Zstd(async_compression::codecs::ZstdDecoder),
    #[cfg(feature = "compression-br")]
    Brotli(Box<async_compression::codecs::BrotliDecoder>),
    #[cfg(feature = "compression-gzip")]
    Gzip(async_compression::codecs::GzipDecoder),
    #[cfg(feature = "compression-deflate")]
    Deflate(async_compression::codecs::ZlibDecoder),
}

/// The largest zstd window a request may ask the decoder to allocate: 2^23 bytes
/// (8 MiB), the limit RFC 8878 sets for the `zstd` content coding.
#[cfg(feature = "compression-zstd")]
const ZSTD_WINDOW_LOG_MAX: u32 = 23;

impl Decoder {
    /// A decoder for `coding`, or `None` when the coding's feature is off.
    pub(crate) fn new(coding: Coding) -> Option<Decoder> {
        match coding {
            #[cfg(feature = "compression-zstd")]
            Coding::Zstd => Some(Decoder::Zstd(
                async_compression::codecs::ZstdDecoder::new_with_params(&[
                    async_compression::codecs::zstd::params::DParameter::window_log_max(
                        ZSTD_WINDOW_LOG_MAX,
                    ),
                ]),
            )),
            #[cfg(feature = "compression-br")]
            Coding::Brotli => Some(Decoder::Brotli(Box::new(
                async_compression::codecs::BrotliDecoder::new(),
            ))),
            #[cfg(feature = "compression-gzip")]
            Coding::Gzip => Some(Decoder::Gzip(async_compression::codecs::GzipDecoder::new())),
            #[cfg(feature = "compression-deflate")]
            Coding::Deflate => Some(Decoder::Deflate(
                async_compression::codecs::ZlibDecoder::new(),
            )),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    fn codec(&mut self) -> &mut dyn DecodeV2Dyn {
        match *self {
            #[cfg(feature = "compression-zstd")]
            Decoder::Zstd(ref mut d) => d,
            #[cfg(feature = "compression-br")]
            Decoder::Brotli(ref mut d) => &mut **d,
            #[cfg(feature = "compression-gzip")]
            Decoder::Gzip(ref mut d) => d,
            #[cfg(feature = "compression-deflate")]
            Decoder::Deflate(ref mut d) => d,
        }
    }

    /// Decodes from `input` into `output` until the input is used up, the output is
    /// full or a member ends. Returns the bytes read, the bytes written and whether
    /// a member (a gzip member, a zstd frame, the whole brotli or zlib stream) ended.
    pub(crate) fn decode(
        &mut self,
        input: &[u8],
        output: &mut [u8],
    ) -> io::Result<(usize, usize, bool)> {
        let mut partial = PartialBuffer::new(input);
        let mut write = WriteBuffer::new_initialized(output);
        let ended = self.codec().decode(&mut partial, &mut write)?;
        Ok((partial.written_len(), write.written_len(), ended))
    }

    /// Drains output the decoder holds back. Returns the bytes written and whether
    /// nothing is left.
    pub(crate) fn flush(&mut self, output: &mut [u8]) -> io::Result<(usize, bool)> {
        let mut write = WriteBuffer::new_initialized(output);
        let done = self.codec().flush(&mut write)?;
        Ok((write.written_len(), done))
    }

    /// Prepares to decode a further member (gzip and zstd allow several in a row).
    pub(crate) fn reinit(&mut self) -> io::Result<()> {
        self.codec().reinit()
    }
}

impl fmt::Debug for Decoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Decoder")
    }
}

trait DecodeV2Dyn {
    fn reinit(&mut self) -> io::Result<()>;
    fn decode(
        &mut self,
        input: &mut PartialBuffer<&[u8]>,
        output: &mut WriteBuffer<'_>,
    ) -> io::Result<bool>;
    fn flush(&mut self, output: &mut WriteBuffer<'_>) -> io::Result<bool>;
}

#[cfg(any(
    feature = "compression-gzip",
    feature = "compression-deflate",
    feature = "compression-br",
    feature = "compression-zstd"
))]
impl<T: DecodeV2> DecodeV2Dyn for T {
    fn reinit(&mut self) -> io::Result<()> {
        DecodeV2::reinit(self)
    }
    fn decode(
        &mut self,
        input: &mut PartialBuffer<&[u8]>,
        output: &mut WriteBuffer<'_>,
    ) -> io::Result<bool> {
        DecodeV2::decode(self, input, output)
    }
    fn flush(&mut self, output: &mut WriteBuffer<'_>) -> io::Result<bool> {
        DecodeV2::flush(self, output)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_case_insensitive_and_x_gzip_is_gzip() {
        assert_eq!(Coding::from_token(b"GZIP"), Some(Coding::Gzip));
        assert_eq!(Coding::from_token(b"x-gzip"), Some(Coding::Gzip));
        assert_eq!(Coding::from_token(b"Br"), Some(Coding::Brotli));
        assert_eq!(Coding::from_token(b"compress"), None);
    }

    #[test]
    fn levels_map_to_each_codings_scale() {
        assert_eq!(Coding::Brotli.precise(Level::Default), 4);
        assert_eq!(Coding::Zstd.precise(Level::Default), 3);
        assert_eq!(Coding::Gzip.precise(Level::Default), 6);
        assert_eq!(Coding::Zstd.precise(Level::Precise(22)), 19);
        assert_eq!(Coding::Gzip.precise(Level::Precise(0)), 1);
        assert_eq!(Coding::Brotli.precise(Level::Best), 11);
    }
}
