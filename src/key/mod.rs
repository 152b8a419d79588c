//! Request keys: which client, route or tenant a request counts against.
//!
//! Every keyed layer (rate limits, per-key concurrency, deduplication) takes a
//! [`KeyExtractor`]: a request goes in, a key (or none) comes out. The built-ins:
//!
//! | extractor | key | when absent |
//! |---|---|---|
//! | [`ClientIp`] | the client's IP address, from the peer address and, behind trusted proxies, `X-Forwarded-For` or `Forwarded` read right to left | 500: the server was not set up to record peer addresses |
//! | [`HeaderKey`] | a request header's value | 400 naming the header |
//! | [`RouteKey`] | method and matched route (axum's `MatchedPath`), else method and path | never |
//! | [`Global`] | one key for every request | never |
//! | [`from_fn`] | whatever your closure returns | 400 |
//! | `(A, B)` | both keys, for example route and client | either missing |
//!
//! # A key a client cannot choose
//!
//! A client may send any `X-Forwarded-For` it likes. Proxies append the address
//! they received a connection from, so only the right-most entries, written by
//! proxies you run, can be believed. [`ClientIp`] starts from the TCP peer, and only
//! when that peer is a trusted proxy does it read the header, right to left, past
//! trusted proxies, to the first address it does not trust: that is the client.
//! Spoofed entries further left are never read. A malformed entry where the client
//! should be (garbage, `unknown`, an obfuscated `Forwarded` node, an overlong
//! value) makes the key fall back to the peer address, never to a value the client
//! wrote.
//!
//! # Example
//!
//! ```
//! use std::net::SocketAddr;
//! use http::Request;
//! use tower_toolbox::key::{ClientIp, KeyExtractor, PeerAddr};
//!
//! // Our load balancers live in 10.0.0.0/8.
//! let key = ClientIp::new().trust_proxies(["10.0.0.0/8".parse().unwrap()]);
//!
//! let mut request = Request::get("/")
//!     // The client claims to be 1.1.1.1; our balancer appended what it saw.
//!     .header("x-forwarded-for", "1.1.1.1, 203.0.113.9")
//!     .body(())
//!     .unwrap();
//! request.extensions_mut().insert(PeerAddr("10.1.2.3:5000".parse::<SocketAddr>().unwrap()));
//!
//! assert_eq!(key.extract(&request), Some("203.0.113.9".parse().unwrap()));
//! ```
//!
//! # Where the peer address comes from
//!
//! [`ClientIp`] looks in the request extensions for, in order: [`PeerAddr`], a bare
//! `SocketAddr`, and with the `axum` feature axum's `ConnectInfo<SocketAddr>` (serve
//! with `into_make_service_with_connect_info::<SocketAddr>()`). With plain hyper or
//! tonic, insert a [`PeerAddr`] when accepting the connection.

mod client_ip;
mod forwarded;

use std::hash::{Hash, Hasher};

use http::uri::PathAndQuery;
use http::{HeaderName, HeaderValue, Method, Request, StatusCode};

use crate::reject::Rejection;

pub use client_ip::{ClientIp, PeerAddr, ProxyHeader};

/// Derives the key a request counts against.
///
/// `extract` runs on every request and should not allocate: the built-in keys
/// are addresses, header values and route names shared with the request.
pub trait KeyExtractor<B> {
    /// The key. Layers hash it; equal keys share state.
    type Key: Hash + Eq + Clone + Send + Sync + std::fmt::Debug + 'static;

    /// The key of `request`, or `None` when it cannot be derived.
    fn extract(&self, request: &Request<B>) -> Option<Self::Key>;

    /// The rejection a layer answers with when [`extract`](Self::extract) returns
    /// `None` and the layer is set to reject such requests.
    fn missing(&self) -> Rejection {
        Rejection::missing_key(
            StatusCode::BAD_REQUEST,
            "the request lacks the value this service keys on",
        )
    }
}

/// What a keyed layer does with a request whose key cannot be extracted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MissingKey {
    /// Answer with the extractor's [`KeyExtractor::missing`] rejection. The default:
    /// a request that cannot be counted is not let through unchecked.
    #[default]
    Reject,
    /// Let the request through without applying the layer to it.
    Allow,
}

/// One key for every request: a limit on the whole service.
#[derive(Clone, Copy, Debug, Default)]
pub struct Global;

impl<B> KeyExtractor<B> for Global {
    type Key = ();

    #[inline]
    fn extract(&self, _request: &Request<B>) -> Option<()> {
        Some(())
    }
}

/// Keys by the value of one request header (an API key, a tenant id).
///
/// Only the first value counts when the header is repeated. A request without the
/// header is missing its key (400 naming the header).
#[derive(Clone, Debug)]
pub struct HeaderKey {
    name: HeaderName,
}

impl HeaderKey {
    /// Keys by header `name`.
    pub fn new(name: HeaderName) -> Self {
        HeaderKey { name }
    }
}

impl<B> KeyExtractor<B> for HeaderKey {
    type Key = HeaderValue;

    #[inline]
    fn extract(&self, request: &Request<B>) -> Option<HeaderValue> {
        request.headers().get(&self.name).cloned()
    }

    fn missing(&self) -> Rejection {
        Rejection::missing_key(
            StatusCode::BAD_REQUEST,
            format!("the request has no `{}` header", self.name),
        )
    }
}

/// Keys by method and route: axum's matched route template (`/users/{id}`) when the
/// layer runs inside a router with the `axum` feature on, the request path otherwise.
#[derive(Clone, Copy, Debug, Default)]
pub struct RouteKey;

/// The key produced by [`RouteKey`].
#[derive(Clone, Debug)]
pub struct Route {
    method: Method,
    path: RoutePath,
}

#[derive(Clone, Debug)]
enum RoutePath {
    #[cfg(feature = "axum")]
    Matched(axum::extract::MatchedPath),
    Path(Option<PathAndQuery>),
}

impl Route {
    /// The request method.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The route template, or the path when no route was matched.
    pub fn path(&self) -> &str {
        match &self.path {
            #[cfg(feature = "axum")]
            RoutePath::Matched(matched) => matched.as_str(),
            RoutePath::Path(path) => path.as_ref().map_or("/", PathAndQuery::path),
        }
    }
}

impl PartialEq for Route {
    fn eq(&self, other: &Self) -> bool {
        self.method == other.method && self.path() == other.path()
    }
}

impl Eq for Route {}

impl Hash for Route {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.method.hash(state);
        self.path().hash(state);
    }
}

impl<B> KeyExtractor<B> for RouteKey {
    type Key = Route;

    #[inline]
    fn extract(&self, request: &Request<B>) -> Option<Route> {
        #[cfg(feature = "axum")]
        if let Some(matched) = request.extensions().get::<axum::extract::MatchedPath>() {
            return Some(Route {
                method: request.method().clone(),
                path: RoutePath::Matched(matched.clone()),
            });
        }
        Some(Route {
            method: request.method().clone(),
            path: RoutePath::Path(request.uri().path_and_query().cloned()),
        })
    }
}

/// A key extractor from a closure; see [`from_fn`].
#[derive(Clone, Copy, Debug)]
pub struct FromFn<F> {
    f: F,
}

/// Keys by whatever `f` returns (a user id from a verified token, a tenant).
///
/// `None` means the key is missing (400 unless the layer is told to let such
/// requests through).
///
/// ```
/// use http::Request;
/// use tower_toolbox::key::{self, KeyExtractor};
///
/// let tenant = key::from_fn(|req: &Request<()>| {
///     req.uri().host().map(|host| host.split('.').next().unwrap_or(host).to_owned())
/// });
/// let request = Request::get("https://acme.example.com/").body(()).unwrap();
/// assert_eq!(tenant.extract(&request).as_deref(), Some("acme"));
/// ```
pub fn from_fn<F>(f: F) -> FromFn<F> {
    FromFn { f }
}

impl<B, F, K> KeyExtractor<B> for FromFn<F>
where
    F: Fn(&Request<B>) -> Option<K>,
    K: Hash + Eq + Clone + Send + Sync + std::fmt::Debug + 'static,
{
    type Key = K;

    #[inline]
    fn extract(&self, request: &Request<B>) -> Option<K> {
        (self.f)(request)
    }
}

impl<B, X, Y> KeyExtractor<B> for (X, Y)
where
    X: KeyExtractor<B>,
    Y: KeyExtractor<B>,
{
    type Key = (X::Key, Y::Key);

    #[inline]
    fn extract(&self, request: &Request<B>) -> Option<Self::Key> {
        Some((self.0.extract(request)?, self.1.extract(request)?))
    }

    fn missing(&self) -> Rejection {
        // Both parts may be missing; name the first, as the client must fix it first.
        self.0.missing()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_key_takes_the_first_value_and_names_a_missing_header() {
        let key = HeaderKey::new(HeaderName::from_static("x-api-key"));
        let request = Request::get("/")
            .header("x-api-key", "a")
            .header("x-api-key", "b")
            .body(())
            .unwrap();
        assert_eq!(key.extract(&request), Some(HeaderValue::from_static("a")));

        let bare = Request::get("/").body(()).unwrap();
        assert_eq!(key.extract(&bare), None);
        let missing = KeyExtractor::<()>::missing(&key);
        assert_eq!(missing.status(), StatusCode::BAD_REQUEST);
        assert_eq!(missing.detail(), "the request has no `x-api-key` header");
    }

    #[test]
    fn route_key_ignores_the_query_and_separates_methods() {
        let get = |uri| {
            RouteKey
                .extract(&Request::get(uri).body(()).unwrap())
                .unwrap()
        };
        assert_eq!(get("/items?page=1"), get("/items?page=2"));
        assert_ne!(get("/items"), get("/other"));
        let post = RouteKey
            .extract(&Request::post("/items").body(()).unwrap())
            .unwrap();
        assert_ne!(get("/items"), post);
        assert_eq!(post.path(), "/items");
        assert_eq!(post.method(), Method::POST);
    }

    #[test]
    fn pair_key_needs_both_parts() {
        let key = (Global, HeaderKey::new(HeaderName::from_static("x-user")));
        let with = Request::get("/").header("x-user", "u1").body(()).unwrap();
        assert_eq!(
            key.extract(&with),
            Some(((), HeaderValue::from_static("u1")))
        );
        assert_eq!(key.extract(&Request::get("/").body(()).unwrap()), None);
    }
}
