//! Which responses are worth compressing.

use std::fmt;
use std::sync::Arc;

use http::header::CONTENT_TYPE;
use http::response::Parts;

/// Decides, from a response's head, whether its content type is worth compressing.
///
/// The layer checks the rest itself (status, size, existing `Content-Encoding`,
/// ranges, gRPC); a predicate only says yes or no to the representation.
pub trait Predicate: Clone + Send + Sync + 'static {
    /// Whether a response with this head may be compressed.
    fn should_compress(&self, response: &Parts) -> bool;
}

/// The default predicate: compress text, JSON, XML, JavaScript, CSS, SVG and
/// other textual formats; never images, audio, video, fonts that are already
/// compressed, archives, or anything without a `Content-Type`.
///
/// In detail, a content type is compressed when it is:
/// - `text/*` (including `text/event-stream`),
/// - `application/json`, `application/xml`, `application/javascript`,
///   `application/ecmascript`, `application/x-javascript`, `application/wasm`,
///   `application/x-ndjson`, `application/x-www-form-urlencoded`, and any type
///   with a `+json` or `+xml` suffix (`application/problem+json`, `atom+xml`),
/// - `image/svg+xml`, `image/bmp`, `image/x-icon`, `font/ttf`, `font/otf`.
///
/// Everything else is left alone, in particular `image/png`, `image/jpeg`,
/// `video/*`, `audio/*`, `font/woff2`, `application/zip`, `application/gzip`,
/// `application/octet-stream` and `application/grpc*`.
#[derive(Clone, Copy, Debug, Default)]
pub struct DefaultPredicate;

impl DefaultPredicate {
    /// Whether the media type `content_type` (parameters allowed) is compressible.
    pub fn is_compressible(content_type: &str) -> bool {
        let essence = content_type.split(';').next().unwrap_or("").trim();
        let Some((kind, subtype)) = essence.split_once('/') else {
            return false;
        };
        let is = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
        if is(kind, "text") {
            return true;
        }
        let suffix = |s: &str| {
            subtype.len() > s.len()
                && subtype.is_char_boundary(subtype.len() - s.len())
                && is(&subtype[subtype.len() - s.len()..], s)
        };
        if is(kind, "application") {
            const TEXTUAL: [&str; 8] = [
                "json",
                "xml",
                "javascript",
                "ecmascript",
                "x-javascript",
                "wasm",
                "x-ndjson",
                "x-www-form-urlencoded",
            ];
            return TEXTUAL.iter().any(|t| is(subtype, t)) || suffix("+json") || suffix("+xml");
        }
        if is(kind, "image") {
            return is(subtype, "svg+xml") || is(subtype, "bmp") || is(subtype, "x-icon");
        }
        if is(kind, "font") {
            return is(subtype, "ttf") || is(subtype, "otf");
        }
        false
    }
}

impl Predicate for DefaultPredicate {
    fn should_compress(&self, response: &Parts) -> bool {
        response
            .headers
            .get(CONTENT_TYPE)
            .and_then(|ct| ct.to_str().ok())
            .is_some_and(Self::is_compressible)
    }
}

/// A predicate from a closure, made by [`predicate_fn`].
pub struct PredicateFn<F> {
    f: Arc<F>,
}

impl<F> Clone for PredicateFn<F> {
    fn clone(&self) -> Self {
        PredicateFn {
            f: Arc::clone(&self.f),
        }
    }
}

/// A predicate that calls `f` with the response head.
///
/// ```
/// use tower_toolbox::compression::{predicate_fn, CompressionLayer, DefaultPredicate};
///
/// // The default list, but never the metrics endpoint's output.
/// let layer = CompressionLayer::new().predicate(predicate_fn(|response| {
///     response.headers.get("x-no-compress").is_none()
///         && response
///             .headers
///             .get(http::header::CONTENT_TYPE)
///             .and_then(|v| v.to_str().ok())
///             .is_some_and(DefaultPredicate::is_compressible)
/// }));
/// # let _ = layer;
/// ```
pub fn predicate_fn<F>(f: F) -> PredicateFn<F>
where
    F: Fn(&Parts) -> bool + Send + Sync + 'static,
{
    PredicateFn { f: Arc::new(f) }
}

impl<F> Predicate for PredicateFn<F>
where
    F: Fn(&Parts) -> bool + Send + Sync + 'static,
{
    fn should_compress(&self, response: &Parts) -> bool {
        (self.f)(response)
    }
}

impl<F> fmt::Debug for PredicateFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PredicateFn")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn textual_types_compress_and_binary_types_do_not() {
        for yes in [
            "text/html; charset=utf-8",
            "text/event-stream",
            "application/json",
            "Application/JSON",
            "application/problem+json",
            "application/vnd.api+json",
            "application/atom+xml",
            "application/javascript",
            "image/svg+xml",
        ] {
            assert!(DefaultPredicate::is_compressible(yes), "{yes}");
        }
        for no in [
            "image/png",
            "image/jpeg",
            "video/mp4",
            "audio/ogg",
            "font/woff2",
            "application/zip",
            "application/gzip",
            "application/octet-stream",
            "application/grpc",
            "json",
            "",
        ] {
            assert!(!DefaultPredicate::is_compressible(no), "{no}");
        }
    }
}
