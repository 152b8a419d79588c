//! Request decompression: the layer, its service, future and body.

use std::fmt;
use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::header::{
    ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_LENGTH, HeaderValue, TRANSFER_ENCODING,
};
use http::request::Parts;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::coding::Coding;
use super::decode::{BoundedDecoder, RATIO_GRACE, Refusal};
use crate::body::ResponseBody;
use crate::reject::{Rejection, RequestHead, Responder};

/// Decodes request bodies sent with a `Content-Encoding`, within limits; see the
/// [module docs](super#request-decompression).
#[derive(Clone, Debug)]
pub struct RequestDecompressionLayer {
    config: DecompressConfig,
}

#[derive(Clone, Debug)]
struct DecompressConfig {
    max_size: u64,
    max_ratio: NonZeroU32,
    responder: Responder,
}

impl RequestDecompressionLayer {
    /// The default limit on a decoded body: 2 MiB.
    pub const DEFAULT_MAX_SIZE: u64 = 2 * 1024 * 1024;

    /// The default limit on expansion: 100 decoded bytes per compressed byte.
    pub const DEFAULT_MAX_RATIO: NonZeroU32 = NonZeroU32::new(100).unwrap();

    /// A layer that decodes every enabled coding, refusing bodies that decode to
    /// more than 2 MiB or expand more than 100 times.
    pub fn new() -> Self {
        RequestDecompressionLayer {
            config: DecompressConfig {
                max_size: Self::DEFAULT_MAX_SIZE,
                max_ratio: Self::DEFAULT_MAX_RATIO,
                responder: Responder::default(),
            },
        }
    }

    /// The most bytes a body may decode to (default 2 MiB). The compressed body
    /// may not be larger either. Past it the request is refused with 413.
    pub fn max_size(mut self, bytes: u64) -> Self {
        self.config.max_size = bytes;
        self
    }

    /// The most decoded bytes per compressed byte (default 100), checked once a
    /// body has decoded past 64 KiB. Past it the request is refused with 413.
    pub fn max_ratio(mut self, ratio: NonZeroU32) -> Self {
        self.config.max_ratio = ratio;
        self
    }

    /// How refusals (413, 415, 400) are written.
    pub fn responder(mut self, responder: Responder) -> Self {
        self.config.responder = responder;
        self
    }
}

impl Default for RequestDecompressionLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Layer<S> for RequestDecompressionLayer {
    type Service = RequestDecompression<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestDecompression {
            inner,
            config: self.config.clone(),
        }
    }
}

/// Decodes the request bodies of `S`; made by [`RequestDecompressionLayer`].
#[derive(Clone, Debug)]
pub struct RequestDecompression<S> {
    inner: S,
    config: DecompressConfig,
}

/// What the request's `Content-Encoding` asks for.
enum Declared {
    Identity,
    Coding(Coding),
    Unsupported(String),
}

fn declared(parts: &Parts) -> Declared {
    let mut found = None;
    for value in parts.headers.get_all(CONTENT_ENCODING) {
        for token in value.as_bytes().split(|b| *b == b',') {
            let token = token.trim_ascii();
            if token.is_empty() || token.eq_ignore_ascii_case(b"identity") {
                continue;
            }
            let name = || String::from_utf8_lossy(token).into_owned();
            match Coding::from_token(token) {
                Some(coding) if coding.is_enabled() && found.is_none() => found = Some(coding),
                // Limitation: a body encoded twice (`gzip, br`) is refused rather
                // than decoded twice; no common client sends one.
                Some(_) if found.is_some() => {
                    return Declared::Unsupported(format!("more than one coding ({})", name()));
                }
                _ => return Declared::Unsupported(name()),
            }
        }
    }
    found.map_or(Declared::Identity, Declared::Coding)
}

impl<S, B, ResBody> Service<Request<B>> for RequestDecompression<S>
where
    S: Service<Request<DecompressedBody<B>>, Response = Response<ResBody>> + Clone,
    B: Body<Data = Bytes>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = DecompressionFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let (mut parts, body) = request.into_parts();
        let coding = match declared(&parts) {
            Declared::Identity => {
                let request = Request::from_parts(parts, DecompressedBody::inner(body));
                return DecompressionFuture::calling(self.inner.call(request));
            }
            Declared::Coding(coding) => coding,
            Declared::Unsupported(name) => {
                let offered = offered();
                let rejection = Rejection::unsupported_media_type(format!(
                    "the request body's Content-Encoding {name} is not supported; send one \
                     of: {offered}"
                ))
                .with_header(
                    ACCEPT_ENCODING,
                    HeaderValue::try_from(offered).unwrap_or(HeaderValue::from_static("identity")),
                );
                return self.refuse(&rejection, &parts);
            }
        };

        let max_size = self.config.max_size;
        let declared_length = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared_length.is_some_and(|length| length > max_size) {
            return self.refuse(
                &too_large(&Refusal::EncodedTooLarge { limit: max_size }),
                &parts,
            );
        }
        let Some(decoder) = BoundedDecoder::new(coding, max_size, self.config.max_ratio) else {
            return self.refuse(&Rejection::unsupported_media_type(coding.as_str()), &parts);
        };

        parts.headers.remove(CONTENT_LENGTH);
        let ready = self.inner.clone();
        let service = std::mem::replace(&mut self.inner, ready);
        DecompressionFuture {
            state: State::Decoding {
                body,
                decoder: Some(decoder),
                parts: Some(parts),
                service: Some(service),
                responder: self.config.responder.clone(),
            },
        }
    }
}

impl<S> RequestDecompression<S> {
    fn refuse<B>(&self, rejection: &Rejection, parts: &Parts) -> DecompressionFuture<S, B>
    where
        S: Service<Request<DecompressedBody<B>>>,
    {
        let head = RequestHead {
            method: &parts.method,
            uri: &parts.uri,
            headers: &parts.headers,
        };
        DecompressionFuture::ready(self.config.responder.respond(rejection, &head))
    }
}

fn offered() -> String {
    let mut offered = String::new();
    for coding in Coding::ALL.into_iter().filter(|c| c.is_enabled()) {
        offered.push_str(coding.as_str());
        offered.push_str(", ");
    }
    offered.push_str("identity");
    offered
}

fn too_large(refusal: &Refusal) -> Rejection {
    let detail = match refusal {
        Refusal::TooLarge { limit } => {
            format!("the request body decodes to more than {limit} bytes")
        }
        Refusal::EncodedTooLarge { limit } => {
            format!("the compressed request body is larger than {limit} bytes")
        }
        Refusal::Ratio { ratio } => format!(
            "the request body expands more than {ratio} times (checked past {RATIO_GRACE} \
             decoded bytes)"
        ),
        Refusal::Corrupt(reason) => {
            return Rejection::bad_request(format!(
                "the compressed request body is corrupt: {reason}"
            ));
        }
    };
    Rejection::payload_too_large(detail)
}

pin_project! {
    /// The future of [`RequestDecompression`]: reads and decodes the body, then
    /// calls the inner service, or answers a refusal.
    pub struct DecompressionFuture<S, B>
    where
        S: Service<Request<DecompressedBody<B>>>,
    {
        #[pin]
        state: State<S, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B>
    where
        S: Service<Request<DecompressedBody<B>>>,
    {
        Decoding {
            #[pin]
            body: B,
            decoder: Option<BoundedDecoder>,
            parts: Option<Parts>,
            service: Option<S>,
            responder: Responder,
        },
        Calling { #[pin] future: S::Future },
        Ready { response: Option<Response<Bytes>> },
    }
}

impl<S, B> fmt::Debug for DecompressionFuture<S, B>
where
    S: Service<Request<DecompressedBody<B>>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DecompressionFuture")
    }
}

impl<S, B> DecompressionFuture<S, B>
where
    S: Service<Request<DecompressedBody<B>>>,
{
    fn calling(future: S::Future) -> Self {
        DecompressionFuture {
            state: State::Calling { future },
        }
    }

    fn ready(response: Response<Bytes>) -> Self {
        DecompressionFuture {
            state: State::Ready {
                response: Some(response),
            },
        }
    }
}

impl<S, B, ResBody> Future for DecompressionFuture<S, B>
where
    S: Service<Request<DecompressedBody<B>>, Response = Response<ResBody>>,
    B: Body<Data = Bytes>,
{
    type Output = Result<Response<ResponseBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                StateProj::Decoding {
                    mut body,
                    decoder,
                    parts,
                    service,
                    responder,
                } => {
                    let outcome = loop {
                        let frame = match ready!(body.as_mut().poll_frame(cx)) {
                            Some(Ok(frame)) => frame,
                            Some(Err(_)) => {
                                break Err(Rejection::bad_request(
                                    "the request body could not be read",
                                ));
                            }
                            None => {
                                let decoder = decoder.take().expect("decoder present");
                                break decoder.finish().map_err(|r| too_large(&r));
                            }
                        };
                        // Limitation: request trailers are dropped; the decoded body is
                        // handed on whole, as one frame.
                        if let Ok(data) = frame.into_data() {
                            let decoder = decoder.as_mut().expect("decoder present");
                            if let Err(refusal) = decoder.feed(&data) {
                                tracing::debug!(
                                    encoded = decoder.encoded(),
                                    decoded = decoder.decoded(),
                                    ?refusal,
                                    "refusing a compressed request body"
                                );
                                break Err(too_large(&refusal));
                            }
                        }
                    };

                    let mut parts = parts.take().expect("parts present");
                    match outcome {
                        Ok(decoded) => {
                            // The body is now whole and plain: say so, and only so.
                            parts.headers.remove(CONTENT_ENCODING);
                            parts.headers.remove(TRANSFER_ENCODING);
                            parts
                                .headers
                                .insert(CONTENT_LENGTH, HeaderValue::from(decoded.len()));
                            let request =
                                Request::from_parts(parts, DecompressedBody::full(decoded));
                            let mut service = service.take().expect("service present");
                            let future = service.call(request);
                            state.set(State::Calling { future });
                        }
                        Err(rejection) => {
                            let head = RequestHead {
                                method: &parts.method,
                                uri: &parts.uri,
                                headers: &parts.headers,
                            };
                            let response = responder.respond(&rejection, &head);
                            state.set(State::Ready {
                                response: Some(response),
                            });
                        }
                    }
                }
                StateProj::Calling { future } => {
                    let response = ready!(future.poll(cx))?;
                    return Poll::Ready(Ok(response.map(ResponseBody::new)));
                }
                StateProj::Ready { response } => {
                    let response = response
                        .take()
                        .expect("DecompressionFuture polled after completion");
                    return Poll::Ready(Ok(response.map(ResponseBody::full)));
                }
            }
        }
    }
}

pin_project! {
    /// The request body the inner service of [`RequestDecompression`] receives:
    /// the original body when it was not compressed, else the decoded bytes.
    #[derive(Debug)]
    pub struct DecompressedBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<B> {
        Inner { #[pin] body: B },
        Full { data: Option<Bytes> },
    }
}

impl<B> DecompressedBody<B> {
    fn inner(body: B) -> Self {
        DecompressedBody {
            kind: Kind::Inner { body },
        }
    }

    fn full(data: Bytes) -> Self {
        DecompressedBody {
            kind: Kind::Full {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }
}

impl<B: Body<Data = Bytes>> Body for DecompressedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            KindProj::Inner { body } => body.poll_frame(cx),
            KindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Full { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}
