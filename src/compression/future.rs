use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::header::{
    ACCEPT_RANGES, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE, ETAG, HeaderValue, VARY,
};
use http::response::Parts;
use http::{HeaderMap, Response, StatusCode};
use http_body::Body;
use pin_project_lite::pin_project;

use super::body::{Buffered, CompressionBody, poll_sniff};
use super::coding::{Coding, Encoder, Level};
use super::predicate::Predicate;
use crate::body::ResponseBody;

/// What to do with the response, decided from the request.
#[derive(Debug)]
pub(crate) struct Plan<P> {
    /// The negotiated coding; `None` for identity.
    pub(crate) coding: Option<Coding>,
    pub(crate) head: bool,
    pub(crate) levels: [i32; 4],
    pub(crate) min_size: u64,
    pub(crate) predicate: P,
}

pin_project! {
    /// The future of [`Compression`](super::Compression).
    #[derive(Debug)]
    pub struct ResponseFuture<F, P> {
        #[pin]
        state: State<F, P>,
    }
}

pin_project! {
    #[project = StateProj]
    #[derive(Debug)]
    enum State<F, P> {
        Inner { #[pin] future: F, plan: Option<Plan<P>> },
        Ready { response: Option<Response<Bytes>> },
    }
}

impl<F, P> ResponseFuture<F, P> {
    pub(crate) fn new(future: F, plan: Option<Plan<P>>) -> Self {
        ResponseFuture {
            state: State::Inner { future, plan },
        }
    }

    pub(crate) fn ready(response: Response<Bytes>) -> Self {
        ResponseFuture {
            state: State::Ready {
                response: Some(response),
            },
        }
    }
}

impl<F, P, B, E> Future for ResponseFuture<F, P>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body<Data = Bytes>,
    P: Predicate,
{
    type Output = Result<Response<CompressionBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Inner { future, plan } => {
                let response = ready!(future.poll(cx))?;
                let response = match plan.take() {
                    Some(plan) => plan.apply(response, cx),
                    None => response.map(|b| CompressionBody::identity(ResponseBody::new(b))),
                };
                Poll::Ready(Ok(response))
            }
            StateProj::Ready { response } => {
                let response = response
                    .take()
                    .expect("ResponseFuture polled after completion");
                Poll::Ready(Ok(
                    response.map(|b| CompressionBody::identity(ResponseBody::full(b)))
                ))
            }
        }
    }
}

impl<P: Predicate> Plan<P> {
    /// Decides the response's head and wraps its body.
    fn apply<B>(self, response: Response<B>, cx: &mut Context<'_>) -> Response<CompressionBody<B>>
    where
        B: Body<Data = Bytes>,
    {
        let (mut parts, body) = response.into_parts();
        let body = ResponseBody::new(body);
        let known_size = content_length(&parts.headers).or(body.size_hint().exact());

        if !self.is_candidate(&parts, known_size) {
            return Response::from_parts(parts, CompressionBody::identity(body));
        }

        // Whether this response is compressed depends on Accept-Encoding from here
        // on, whichever coding this client gets.
        merge_vary(&mut parts.headers);
        let Some(coding) = self.coding else {
            return Response::from_parts(parts, CompressionBody::identity(body));
        };

        // A streamed body: look at what it has ready before choosing.
        let mut sniffed = None;
        let mut body = Some(body);
        if known_size.is_none() && self.min_size > 0 {
            let mut boxed = Box::pin(body.take().expect("body present"));
            let mut buffered = Buffered::default();
            let small = poll_sniff(&mut boxed, &mut buffered, self.min_size, cx);
            if small {
                tracing::trace!(min_size = self.min_size, "streamed body too small");
                let body =
                    CompressionBody::new(ResponseBody::empty(), Some((boxed, buffered)), None);
                return Response::from_parts(parts, body);
            }
            sniffed = Some((boxed, buffered));
        }

        let level = match parts.extensions.get::<Level>() {
            Some(level) => coding.precise(*level),
            None => self.levels[coding.index()],
        };
        let Some(encoder) = Encoder::new(coding, level) else {
            let body = body.unwrap_or_default();
            return Response::from_parts(parts, CompressionBody::new(body, sniffed, None));
        };
        tracing::trace!(%coding, level, ?known_size, "compressing response");

        let headers = &mut parts.headers;
        headers.insert(CONTENT_ENCODING, coding.header_value());
        headers.remove(CONTENT_LENGTH);
        // Byte ranges of a representation compressed on the fly would not be stable.
        headers.remove(ACCEPT_RANGES);
        weaken_etag(headers);

        let body = match sniffed {
            Some(sniffed) => CompressionBody::new(
                ResponseBody::empty(),
                Some(sniffed),
                Some((coding, encoder)),
            ),
            None => {
                CompressionBody::new(body.expect("body present"), None, Some((coding, encoder)))
            }
        };
        Response::from_parts(parts, body)
    }

    /// Whether the response may be compressed at all, whatever the client accepts.
    fn is_candidate(&self, parts: &Parts, known_size: Option<u64>) -> bool {
        // Limitation: a HEAD response is left as it is, without the
        // Content-Encoding the same GET would get; caches key on Vary anyway.
        let status = parts.status;
        let headers = &parts.headers;
        !self.head
            && !status.is_informational()
            && status != StatusCode::NO_CONTENT
            && status != StatusCode::RESET_CONTENT
            && status != StatusCode::NOT_MODIFIED
            && status != StatusCode::PARTIAL_CONTENT
            && !headers.contains_key(CONTENT_RANGE)
            && headers
                .get(CONTENT_ENCODING)
                .is_none_or(|v| v.as_bytes().eq_ignore_ascii_case(b"identity"))
            && !crate::reject::is_grpc(headers)
            && known_size.is_none_or(|size| size >= self.min_size)
            && self.predicate.should_compress(parts)
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// Adds `Accept-Encoding` to `Vary` unless it, or `*`, is already listed. All
/// existing `Vary` lines are merged into one.
pub(crate) fn merge_vary(headers: &mut HeaderMap) {
    let mut existing = Vec::new();
    for value in headers.get_all(VARY) {
        for token in value.as_bytes().split(|b| *b == b',') {
            let token = token.trim_ascii();
            if token == b"*" || token.eq_ignore_ascii_case(b"accept-encoding") {
                return;
            }
            if !token.is_empty() {
                existing.push(token.to_vec());
            }
        }
    }
    if existing.is_empty() {
        headers.insert(VARY, HeaderValue::from_static("accept-encoding"));
        return;
    }
    existing.push(b"accept-encoding".to_vec());
    let joined = existing.join(&b", "[..]);
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(VARY, value);
    }
}

/// Makes a strong `ETag` weak: the compressed bytes differ from the identity
/// bytes, so a strong validator would claim a byte-for-byte match that is false.
pub(crate) fn weaken_etag(headers: &mut HeaderMap) {
    let Some(etag) = headers.get(ETAG) else {
        return;
    };
    if etag.as_bytes().starts_with(b"\"") {
        let mut weak = Vec::with_capacity(etag.len() + 2);
        weak.extend_from_slice(b"W/");
        weak.extend_from_slice(etag.as_bytes());
        if let Ok(weak) = HeaderValue::from_bytes(&weak) {
            headers.insert(ETAG, weak);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vary_after(lines: &[&'static str]) -> Vec<String> {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append(VARY, HeaderValue::from_static(line));
        }
        merge_vary(&mut headers);
        headers
            .get_all(VARY)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn vary_gains_accept_encoding_once() {
        assert_eq!(vary_after(&[]), ["accept-encoding"]);
        assert_eq!(vary_after(&["Origin"]), ["Origin, accept-encoding"]);
        assert_eq!(
            vary_after(&["Origin", "Cookie"]),
            ["Origin, Cookie, accept-encoding"]
        );
        assert_eq!(vary_after(&["Accept-Encoding"]), ["Accept-Encoding"]);
        assert_eq!(
            vary_after(&["origin, ACCEPT-ENCODING"]),
            ["origin, ACCEPT-ENCODING"]
        );
        assert_eq!(vary_after(&["*"]), ["*"]);
    }

    #[test]
    fn strong_etags_become_weak_and_weak_ones_stay() {
        let mut headers = HeaderMap::new();
        headers.insert(ETAG, HeaderValue::from_static("\"v1\""));
        weaken_etag(&mut headers);
        assert_eq!(headers[ETAG], "W/\"v1\"");
        weaken_etag(&mut headers);
        assert_eq!(headers[ETAG], "W/\"v1\"");
    }
}
