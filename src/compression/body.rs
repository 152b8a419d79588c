//! The response body that compresses as it streams.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::coding::{Coding, Encoder, SCRATCH};
use crate::body::ResponseBody;

pin_project! {
    /// The body of a response that went through [`Compression`](super::Compression):
    /// the inner body as it is, or compressed frame by frame.
    ///
    /// Compressed output is sent as soon as the encoder produces it. When the inner
    /// body has nothing ready (it returned `Pending`), the encoder is flushed first,
    /// so everything the inner body produced so far reaches the client decodable,
    /// without waiting for more. Trailers pass through after the last data frame.
    pub struct CompressionBody<B: Body> {
        #[pin]
        source: Source<B>,
        buffered: Buffered<B::Error>,
        encoding: Option<Encoding>,
    }
}

pin_project! {
    #[project = SourceProj]
    enum Source<B> {
        Direct { #[pin] body: ResponseBody<B> },
        // A body whose first frames were read before the response head was decided.
        Boxed { body: Pin<Box<ResponseBody<B>>> },
    }
}

/// What was read from the inner body before its head was decided, replayed first.
pub(crate) struct Buffered<E> {
    pub(crate) data: Option<Bytes>,
    pub(crate) trailers: Option<HeaderMap>,
    pub(crate) error: Option<E>,
    pub(crate) ended: bool,
}

/// A body read ahead before its head was decided, and what was read.
pub(crate) type Sniffed<B> = (Pin<Box<ResponseBody<B>>>, Buffered<<B as Body>::Error>);

impl<E> Default for Buffered<E> {
    fn default() -> Self {
        Buffered {
            data: None,
            trailers: None,
            error: None,
            ended: false,
        }
    }
}

/// Compressed bytes at which a frame is sent without waiting for the inner body
/// to pause or end: 16 KiB.
const EMIT_AT: usize = 16 * 1024;

struct Encoding {
    coding: Coding,
    encoder: Encoder,
    scratch: Box<[u8]>,
    out: BytesMut,
    /// Input was given to the encoder since the last flush.
    unflushed: bool,
    phase: Phase,
    trailers: Option<HeaderMap>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Streaming,
    Finishing,
    Trailers,
    Done,
}

impl<B: Body> CompressionBody<B> {
    pub(crate) fn identity(body: ResponseBody<B>) -> Self {
        CompressionBody {
            source: Source::Direct { body },
            buffered: Buffered::default(),
            encoding: None,
        }
    }

    pub(crate) fn new(
        body: ResponseBody<B>,
        sniffed: Option<Sniffed<B>>,
        encoder: Option<(Coding, Encoder)>,
    ) -> Self {
        let (source, buffered) = match sniffed {
            Some((boxed, buffered)) => (Source::Boxed { body: boxed }, buffered),
            None => (Source::Direct { body }, Buffered::default()),
        };
        let encoding = encoder.map(|(coding, encoder)| Encoding {
            coding,
            encoder,
            scratch: vec![0; SCRATCH].into_boxed_slice(),
            out: BytesMut::new(),
            unflushed: false,
            phase: Phase::Streaming,
            trailers: None,
        });
        CompressionBody {
            source,
            buffered,
            encoding,
        }
    }

    /// The coding this body is compressed with, if any.
    pub fn coding(&self) -> Option<Coding> {
        self.encoding.as_ref().map(|e| e.coding)
    }
}

/// The next frame of the inner body: what was read ahead first, then the body.
fn poll_source<B>(
    source: Pin<&mut Source<B>>,
    buffered: &mut Buffered<B::Error>,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, B::Error>>>
where
    B: Body<Data = Bytes>,
{
    if let Some(data) = buffered.data.take() {
        return Poll::Ready(Some(Ok(Frame::data(data))));
    }
    if let Some(error) = buffered.error.take() {
        return Poll::Ready(Some(Err(error)));
    }
    if let Some(trailers) = buffered.trailers.take() {
        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
    }
    if buffered.ended {
        return Poll::Ready(None);
    }
    match source.project() {
        SourceProj::Direct { body } => body.poll_frame(cx),
        SourceProj::Boxed { body } => body.as_mut().poll_frame(cx),
    }
}

impl<B> Body for CompressionBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = BodyError<B::Error>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let mut this = self.project();
        let Some(encoding) = this.encoding.as_mut() else {
            return poll_source(this.source, this.buffered, cx).map_err(BodyError::Inner);
        };

        loop {
            match encoding.phase {
                Phase::Streaming => {
                    match poll_source(this.source.as_mut(), this.buffered, cx) {
                        Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                            Ok(data) => {
                                encoding.encode(&data)?;
                                // Keep reading while the body has more ready: fewer,
                                // larger frames. What is held is sent on `Pending`.
                                if encoding.out.len() >= EMIT_AT {
                                    let chunk = encoding.take().expect("output present");
                                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                                }
                            }
                            Err(frame) => {
                                encoding.trailers = frame.into_trailers().ok();
                                encoding.phase = Phase::Finishing;
                            }
                        },
                        Poll::Ready(None) => encoding.phase = Phase::Finishing,
                        Poll::Ready(Some(Err(error))) => {
                            return Poll::Ready(Some(Err(BodyError::Inner(error))));
                        }
                        Poll::Pending => {
                            // Nothing more is coming for now: send what we have, so
                            // a stream's events do not wait for the next one.
                            if encoding.unflushed {
                                encoding.flush()?;
                            }
                            if let Some(chunk) = encoding.take() {
                                tracing::trace!(
                                    coding = %encoding.coding,
                                    bytes = chunk.len(),
                                    "sending compressed data while the body is pending"
                                );
                                return Poll::Ready(Some(Ok(Frame::data(chunk))));
                            }
                            return Poll::Pending;
                        }
                    }
                }
                Phase::Finishing => {
                    encoding.finish()?;
                    encoding.phase = Phase::Trailers;
                    if let Some(chunk) = encoding.take() {
                        return Poll::Ready(Some(Ok(Frame::data(chunk))));
                    }
                }
                Phase::Trailers => {
                    encoding.phase = Phase::Done;
                    if let Some(trailers) = encoding.trailers.take() {
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                }
                Phase::Done => return Poll::Ready(None),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.encoding {
            Some(encoding) => encoding.phase == Phase::Done,
            None => {
                let b = &self.buffered;
                if b.data.is_some() || b.trailers.is_some() || b.error.is_some() {
                    false
                } else if b.ended {
                    true
                } else {
                    match &self.source {
                        Source::Direct { body } => body.is_end_stream(),
                        Source::Boxed { body } => body.is_end_stream(),
                    }
                }
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        if self.encoding.is_some() {
            return SizeHint::default();
        }
        let buffered = self.buffered.data.as_ref().map_or(0, |d| d.len() as u64);
        if self.buffered.ended {
            return SizeHint::with_exact(buffered);
        }
        let inner = match &self.source {
            Source::Direct { body } => body.size_hint(),
            Source::Boxed { body } => body.size_hint(),
        };
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + buffered);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + buffered);
        }
        hint
    }
}

impl Encoding {
    fn encode(&mut self, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.unflushed = true;
        let result = self.encoder.encode(data, &mut self.scratch, &mut self.out);
        self.end_on_error(result)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.unflushed = false;
        let result = self.encoder.flush(&mut self.scratch, &mut self.out);
        self.end_on_error(result)
    }

    fn finish(&mut self) -> io::Result<()> {
        let result = self.encoder.finish(&mut self.scratch, &mut self.out);
        self.end_on_error(result)
    }

    /// An encoder that failed is not used again: the body ends after the error.
    fn end_on_error(&mut self, result: io::Result<()>) -> io::Result<()> {
        if result.is_err() {
            self.phase = Phase::Done;
            self.out.clear();
        }
        result
    }

    fn take(&mut self) -> Option<Bytes> {
        (!self.out.is_empty()).then(|| self.out.split().freeze())
    }
}

/// An error from a [`CompressionBody`]: the inner body failed, or the encoder did.
#[derive(Debug)]
pub enum BodyError<E> {
    /// The inner body's error, unchanged.
    Inner(E),
    /// The encoder failed (it ran out of memory, or met a bug in a codec).
    Encode(io::Error),
}

impl<E> From<io::Error> for BodyError<E> {
    fn from(error: io::Error) -> Self {
        BodyError::Encode(error)
    }
}

impl<E: fmt::Display> fmt::Display for BodyError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyError::Inner(error) => error.fmt(f),
            BodyError::Encode(error) => write!(f, "compressing the response body: {error}"),
        }
    }
}

impl<E: StdError + 'static> StdError for BodyError<E> {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            BodyError::Inner(error) => Some(error),
            BodyError::Encode(error) => Some(error),
        }
    }
}

impl<B: Body> fmt::Debug for CompressionBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompressionBody")
            .field("coding", &self.coding())
            .finish_non_exhaustive()
    }
}

/// Reads ahead from `body` while frames are ready, until `min` bytes of data, the
/// end, an error or a `Pending`. Returns whether the body is known to hold fewer
/// than `min` bytes.
pub(crate) fn poll_sniff<B>(
    body: &mut Pin<Box<ResponseBody<B>>>,
    buffered: &mut Buffered<B::Error>,
    min: u64,
    cx: &mut Context<'_>,
) -> bool
where
    B: Body<Data = Bytes>,
{
    let mut data = Bytes::new();
    let small = loop {
        if data.len() as u64 >= min {
            break false;
        }
        match body.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                // Only small first chunks are copied: at most `min` bytes in all.
                Ok(chunk) if data.is_empty() => data = chunk,
                Ok(chunk) => {
                    let mut joined = BytesMut::with_capacity(data.len() + chunk.len());
                    joined.extend_from_slice(&data);
                    joined.extend_from_slice(&chunk);
                    data = joined.freeze();
                }
                Err(frame) => {
                    buffered.trailers = frame.into_trailers().ok();
                    buffered.ended = true;
                    break true;
                }
            },
            Poll::Ready(None) => {
                buffered.ended = true;
                break true;
            }
            Poll::Ready(Some(Err(error))) => {
                // The client gets the error when it reads this far; the head is
                // left as it is.
                buffered.error = Some(error);
                buffered.ended = true;
                break true;
            }
            Poll::Pending => break false,
        }
    };
    if !data.is_empty() {
        buffered.data = Some(data);
    }
    small
}
