//! Refusals as responses.
//!
//! When a layer refuses a request it does not return an error for the caller to
//! catch: it describes the refusal as a [`Rejection`] and a [`Responder`] turns that
//! into a response. So every layer keeps the inner service's error type and composes
//! with axum (`Infallible` errors) and tonic without a `HandleErrorLayer`.
//!
//! The default responder answers in the protocol of the request:
//!
//! - **HTTP**: an RFC 9457 `application/problem+json` body with `type`, `title`,
//!   `status` and `detail` (plus any extension members the layer adds), the
//!   rejection's status code, and `Retry-After` in whole seconds rounded **up**, so a
//!   client that waits as told is never early.
//! - **gRPC** (a request whose `content-type` starts with `application/grpc`): a
//!   trailers-only response, HTTP 200 with `grpc-status`, a percent-encoded
//!   `grpc-message` and, when the retry time is known, `grpc-retry-pushback-ms`
//!   (milliseconds, rounded up). Quotas map to `RESOURCE_EXHAUSTED` (8), overload to
//!   `UNAVAILABLE` (14).
//!
//! Replace it with [`Responder::from_fn`] to answer in your own format.
//!
//! # Problem types
//!
//! The `type` member is [`Responder::DEFAULT_TYPE_BASE`] followed by one of these
//! names; [`Responder::with_type_base`] points it at your own documentation.
//!
//! ## quota-exceeded
//! 429: the client used its quota; retry after the time given.
//!
//! ## overloaded
//! 503: the service is at capacity; retry after the time given.
//!
//! ## missing-key
//! The request lacks what the layer keys on (a header, a client address).
//!
//! ## bad-request, payload-too-large, unsupported-media-type, not-acceptable, gateway-timeout
//! The request was malformed, too large, in an encoding the service does not accept,
//! asks for a representation the service cannot give, or could not be answered in time.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use http::{Request, StatusCode};
//! use tower_toolbox::reject::{Rejection, RequestHead, Responder};
//!
//! let rejection = Rejection::quota_exceeded("10 requests per minute for this client")
//!     .with_retry_after(Duration::from_millis(1_010));
//!
//! let request = Request::get("/items").body(()).unwrap();
//! let response = Responder::default().respond(&rejection, &RequestHead::of(&request));
//! assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
//! assert_eq!(response.headers()["retry-after"], "2");
//! assert_eq!(response.headers()["content-type"], "application/problem+json");
//!
//! let grpc = Request::post("/pkg.Svc/Call")
//!     .header("content-type", "application/grpc")
//!     .body(())
//!     .unwrap();
//! let response = Responder::default().respond(&rejection, &RequestHead::of(&grpc));
//! assert_eq!(response.status(), StatusCode::OK);
//! assert_eq!(response.headers()["grpc-status"], "8");
//! assert_eq!(response.headers()["grpc-retry-pushback-ms"], "1010");
//! ```

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};

/// A gRPC status code, as sent in `grpc-status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GrpcCode(u8);

impl GrpcCode {
    /// `INVALID_ARGUMENT` (3).
    pub const INVALID_ARGUMENT: GrpcCode = GrpcCode(3);
    /// `DEADLINE_EXCEEDED` (4).
    pub const DEADLINE_EXCEEDED: GrpcCode = GrpcCode(4);
    /// `RESOURCE_EXHAUSTED` (8): a quota or size limit.
    pub const RESOURCE_EXHAUSTED: GrpcCode = GrpcCode(8);
    /// `FAILED_PRECONDITION` (9).
    pub const FAILED_PRECONDITION: GrpcCode = GrpcCode(9);
    /// `UNIMPLEMENTED` (12).
    pub const UNIMPLEMENTED: GrpcCode = GrpcCode(12);
    /// `INTERNAL` (13).
    pub const INTERNAL: GrpcCode = GrpcCode(13);
    /// `UNAVAILABLE` (14): overload; the client may retry.
    pub const UNAVAILABLE: GrpcCode = GrpcCode(14);

    /// The numeric code.
    pub const fn as_u8(self) -> u8 {
        self.0
    }
}

/// A refusal: what went wrong, the status to answer with, when to retry.
///
/// Layers build one and hand it to their [`Responder`]. Cloning is cheap for
/// rejections with static text.
#[derive(Clone, Debug)]
pub struct Rejection {
    problem: &'static str,
    type_uri: Option<&'static str>,
    title: &'static str,
    status: StatusCode,
    grpc: GrpcCode,
    detail: Cow<'static, str>,
    retry_after: Option<Duration>,
    headers: HeaderMap,
    members: Vec<(&'static str, serde_json::Value)>,
}

impl Rejection {
    /// A rejection with every part given: the problem type name (appended to the
    /// responder's type base), its title, the HTTP status, the gRPC code and the
    /// detail for this occurrence.
    pub fn new(
        problem: &'static str,
        title: &'static str,
        status: StatusCode,
        grpc: GrpcCode,
        detail: impl Into<Cow<'static, str>>,
    ) -> Self {
        Rejection {
            problem,
            type_uri: None,
            title,
            status,
            grpc,
            detail: detail.into(),
            retry_after: None,
            headers: HeaderMap::new(),
            members: Vec::new(),
        }
    }

    /// 429 `quota-exceeded`, gRPC `RESOURCE_EXHAUSTED`.
    pub fn quota_exceeded(detail: impl Into<Cow<'static, str>>) -> Self {
        Self::new(
            "quota-exceeded",
            "Quota exceeded",
            StatusCode::TOO_MANY_REQUESTS,
            GrpcCode::RESOURCE_EXHAUSTED,
            detail,
        )
    }

    /// 503 `overloaded`, gRPC `UNAVAILABLE`.
    pub fn overloaded(detail: impl Into<Cow<'static, str>>) -> Self {
        Self::new(
            "overloaded",
            "Service overloaded",
            StatusCode::SERVICE_UNAVAILABLE,
            GrpcCode::UNAVAILABLE,
            detail,
        )
    }

    /// `missing-key` with the given status: the request lacks what a keyed layer
    /// keys on. 4xx statuses map to gRPC `INVALID_ARGUMENT`, others to `INTERNAL`.
    pub fn missing_key(status: StatusCode, detail: impl Into<Cow<'static, str>>) -> Self {
        let grpc = if status.is_client_error() {
            GrpcCode::INVALID_ARGUMENT
        } else {
            GrpcCode::INTERNAL
        };
        Self::new("missing-key", "Missing request key", status, grpc, detail)
    }

    /// 400 `bad-request`, gRPC `INVALID_ARGUMENT`.
    pub fn bad_request(detail: impl Into<Cow<'static, str>>) -> Self {
        Self::new(
            "bad-request",
            "Bad request",
            StatusCode::BAD_REQUEST,
            GrpcCode::INVALID_ARGUMENT,
            detail,
        )
    }

    /// 413 `payload-too-large`, gRPC `RESOURCE_EXHAUSTED`.
    pub fn payload_too_large(detail: impl Into<Cow<'static, str>>) -> Self {
        Self::new(
            "payload-too-large",
            "Payload too large",
            StatusCode::PAYLOAD_TOO_LARGE,
            GrpcCode::RESOURCE_EXHAUSTED,
            detail,
        )
    }

    /// 415 `unsupported-media-type`, gRPC `UNIMPLEMENTED`.
    pub fn unsupported_media_type(detail: impl Into<Cow<'static, str>>) -> Self {
        Self::new(
            "unsupported-media-type",
            "Unsupported media type",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            GrpcCode::UNIMPLEMENTED,
            detail,
        )
    }

    /// 406 `not-acceptable`, gRPC `FAILED_PRECONDITION`.
    pub fn not_acceptable(detail: impl Into<Cow<'static, str>>) -> Self {
        Self::new(
            "not-acceptable",
            "Not acceptable",
            StatusCode::NOT_ACCEPTABLE,
            GrpcCode::FAILED_PRECONDITION,
            detail,
        )
    }

    /// 504 `gateway-timeout`, gRPC `DEADLINE_EXCEEDED`.
    pub fn gateway_timeout(detail: impl Into<Cow<'static, str>>) -> Self {
        Self::new(
            "gateway-timeout",
            "Gateway timeout",
            StatusCode::GATEWAY_TIMEOUT,
            GrpcCode::DEADLINE_EXCEEDED,
            detail,
        )
    }

    /// When the client may retry: `Retry-After` (seconds, rounded up) and
    /// `grpc-retry-pushback-ms` (milliseconds, rounded up).
    pub fn with_retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// Sets the problem `type` URI to `uri` as given, instead of the responder's
    /// base followed by the problem name: for problem types a standard registers.
    pub fn with_type_uri(mut self, uri: &'static str) -> Self {
        self.type_uri = Some(uri);
        self
    }

    /// Adds a header to the response (for example the `RateLimit` fields).
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.append(name, value);
        self
    }

    /// Adds an extension member to the problem details body, for example the
    /// policies that were violated.
    pub fn with_member(mut self, name: &'static str, value: serde_json::Value) -> Self {
        self.members.push((name, value));
        self
    }

    /// The problem type's name, such as `quota-exceeded`.
    pub fn problem(&self) -> &'static str {
        self.problem
    }

    /// The short, fixed summary of the problem type.
    pub fn title(&self) -> &'static str {
        self.title
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The gRPC status code.
    pub fn grpc_code(&self) -> GrpcCode {
        self.grpc
    }

    /// The explanation of this occurrence.
    pub fn detail(&self) -> &str {
        &self.detail
    }

    /// When the client may retry, if known.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// Extra headers for the response.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// Extra problem details members.
    pub fn members(&self) -> &[(&'static str, serde_json::Value)] {
        &self.members
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.title, self.detail)
    }
}

/// The parts of a request a responder may look at.
#[derive(Clone, Copy, Debug)]
pub struct RequestHead<'a> {
    /// The request method.
    pub method: &'a Method,
    /// The request target.
    pub uri: &'a Uri,
    /// The request headers.
    pub headers: &'a HeaderMap,
}

impl<'a> RequestHead<'a> {
    /// The head of `request`.
    pub fn of<B>(request: &'a Request<B>) -> Self {
        RequestHead {
            method: request.method(),
            uri: request.uri(),
            headers: request.headers(),
        }
    }

    /// Whether this is a gRPC request (`content-type: application/grpc*`).
    pub fn is_grpc(&self) -> bool {
        is_grpc(self.headers)
    }
}

/// Whether `headers` carry a gRPC content type (`application/grpc`, optionally with
/// a `+proto`-style suffix or parameters).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(CONTENT_TYPE).is_some_and(|ct| {
        let ct = ct.as_bytes();
        ct.len() >= 16
            && ct[..16].eq_ignore_ascii_case(b"application/grpc")
            && matches!(ct.get(16), None | Some(b'+' | b';'))
    })
}

type RespondFn = dyn Fn(&Rejection, &RequestHead<'_>) -> Response<Bytes> + Send + Sync;

/// Turns a [`Rejection`] into a response. Cheap to clone.
#[derive(Clone)]
pub struct Responder {
    kind: ResponderKind,
}

#[derive(Clone)]
enum ResponderKind {
    Standard { type_base: Cow<'static, str> },
    Custom(Arc<RespondFn>),
}

impl Responder {
    /// Where the default responder's problem `type` URIs point.
    pub const DEFAULT_TYPE_BASE: &'static str =
        "https://docs.rs/tower-toolbox/latest/tower_toolbox/reject/index.html#";

    /// The standard responder (problem+json or gRPC status) with problem `type`
    /// URIs formed as `base` + the problem name.
    pub fn with_type_base(base: impl Into<Cow<'static, str>>) -> Self {
        Responder {
            kind: ResponderKind::Standard {
                type_base: base.into(),
            },
        }
    }

    /// A responder that calls `f`.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http::Response;
    /// use tower_toolbox::reject::Responder;
    ///
    /// let plain = Responder::from_fn(|rejection, _request| {
    ///     let mut response = Response::new(Bytes::from(rejection.detail().to_owned()));
    ///     *response.status_mut() = rejection.status();
    ///     response
    /// });
    /// # let _ = plain;
    /// ```
    pub fn from_fn<F>(f: F) -> Self
    where
        F: Fn(&Rejection, &RequestHead<'_>) -> Response<Bytes> + Send + Sync + 'static,
    {
        Responder {
            kind: ResponderKind::Custom(Arc::new(f)),
        }
    }

    /// Whether this is a standard responder, whose answer to a plain HTTP (not
    /// gRPC) request depends on the rejection alone, so a layer may build it once
    /// and clone it.
    #[cfg(feature = "concurrency")]
    pub(crate) fn is_standard(&self) -> bool {
        matches!(self.kind, ResponderKind::Standard { .. })
    }

    /// The response for `rejection` of `request`.
    pub fn respond(&self, rejection: &Rejection, request: &RequestHead<'_>) -> Response<Bytes> {
        match &self.kind {
            ResponderKind::Custom(f) => f(rejection, request),
            ResponderKind::Standard { .. } if request.is_grpc() => {
                grpc_response(rejection, request.headers)
            }
            ResponderKind::Standard { type_base } => problem_response(rejection, type_base),
        }
    }
}

impl Default for Responder {
    fn default() -> Self {
        Self::with_type_base(Self::DEFAULT_TYPE_BASE)
    }
}

impl fmt::Debug for Responder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ResponderKind::Standard { type_base } => f
                .debug_struct("Responder")
                .field("type_base", type_base)
                .finish(),
            ResponderKind::Custom(_) => f.write_str("Responder(custom)"),
        }
    }
}

/// Whole seconds, rounded up: a client that waits this long is never early.
pub fn retry_after_secs(after: Duration) -> u64 {
    after.as_secs() + u64::from(after.subsec_nanos() > 0)
}

fn ceil_millis(after: Duration) -> u128 {
    let nanos = after.as_nanos();
    nanos.div_ceil(1_000_000)
}

fn problem_response(rejection: &Rejection, type_base: &str) -> Response<Bytes> {
    let mut body = serde_json::Map::with_capacity(4 + rejection.members.len());
    let type_uri = match rejection.type_uri {
        Some(uri) => uri.to_owned(),
        None => format!("{type_base}{}", rejection.problem),
    };
    body.insert("type".into(), type_uri.into());
    body.insert("title".into(), rejection.title.into());
    body.insert("status".into(), rejection.status.as_u16().into());
    body.insert("detail".into(), rejection.detail.as_ref().into());
    for (name, value) in &rejection.members {
        body.insert((*name).to_owned(), value.clone());
    }
    let body = serde_json::Value::Object(body).to_string();

    let mut response = Response::new(Bytes::from(body));
    *response.status_mut() = rejection.status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    if let Some(after) = rejection.retry_after {
        headers.insert(RETRY_AFTER, HeaderValue::from(retry_after_secs(after)));
    }
    for (name, value) in &rejection.headers {
        headers.append(name, value.clone());
    }
    response
}

/// Bytes of a `grpc-message` that must be percent-encoded: everything outside
/// printable ASCII, and `%` itself (the gRPC over HTTP/2 specification).
const GRPC_MESSAGE: &AsciiSet = &CONTROLS.add(b'%');

fn grpc_response(rejection: &Rejection, request_headers: &HeaderMap) -> Response<Bytes> {
    let mut response = Response::new(Bytes::new());
    let headers = response.headers_mut();

    // Echo the request's gRPC content type (`application/grpc+proto` stays so).
    let content_type = request_headers
        .get(CONTENT_TYPE)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("application/grpc"));
    headers.insert(CONTENT_TYPE, content_type);
    headers.insert(
        "grpc-status",
        HeaderValue::from(u16::from(rejection.grpc.0)),
    );
    let message = utf8_percent_encode(&rejection.detail, GRPC_MESSAGE).to_string();
    if let Ok(message) = HeaderValue::try_from(message) {
        headers.insert("grpc-message", message);
    }
    if let Some(after) = rejection.retry_after {
        let millis = u64::try_from(ceil_millis(after)).unwrap_or(u64::MAX);
        headers.insert("grpc-retry-pushback-ms", HeaderValue::from(millis));
    }
    for (name, value) in &rejection.headers {
        headers.append(name, value.clone());
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::from_millis(200)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1010)), 2);
        assert_eq!(retry_after_secs(Duration::from_nanos(1)), 1);
        assert_eq!(retry_after_secs(Duration::ZERO), 0);
    }

    #[test]
    fn pushback_rounds_up_to_whole_milliseconds() {
        assert_eq!(ceil_millis(Duration::from_nanos(1)), 1);
        assert_eq!(ceil_millis(Duration::from_micros(1500)), 2);
        assert_eq!(ceil_millis(Duration::from_millis(7)), 7);
    }

    #[test]
    fn grpc_detection_needs_the_grpc_media_type() {
        let with = |ct: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(CONTENT_TYPE, HeaderValue::from_static(ct));
            is_grpc(&h)
        };
        assert!(with("application/grpc"));
        assert!(with("application/grpc+proto"));
        assert!(with("Application/GRPC"));
        assert!(!with("application/grpc-web"));
        assert!(!with("application/json"));
        assert!(!is_grpc(&HeaderMap::new()));
    }
}
