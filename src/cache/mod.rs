//! An HTTP response cache that follows RFC 9111, for a private client cache or a
//! shared cache in front of a public API.
//!
//! [`CacheLayer`] stores responses to `GET` requests and serves them again while
//! they are fresh, revalidates them with the origin when they are not, answers
//! clients' conditional requests with 304, and collapses concurrent misses for one
//! URL into a single upstream request. [`EtagLayer`] gives responses that lack a
//! validator a strong `ETag`, so they can be revalidated at all.
//!
//! ```
//! use std::convert::Infallible;
//! use bytes::Bytes;
//! use http::{Request, Response};
//! use http_body_util::{BodyExt, Full};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_toolbox::cache::CacheLayer;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let service = ServiceBuilder::new()
//!     .layer(CacheLayer::new())
//!     .service_fn(|_request: Request<()>| async {
//!         Ok::<_, Infallible>(
//!             Response::builder()
//!                 .header("cache-control", "max-age=60")
//!                 .body(Full::new(Bytes::from_static(b"hello")))
//!                 .unwrap(),
//!         )
//!     });
//!
//! let first = service.clone().oneshot(Request::get("http://example.com/").body(()).unwrap());
//! let first = first.await.unwrap();
//! assert_eq!(first.into_body().collect().await.unwrap().to_bytes(), "hello");
//!
//! // Served from the cache, with its age.
//! let second = service.oneshot(Request::get("http://example.com/").body(()).unwrap());
//! let second = second.await.unwrap();
//! assert_eq!(second.headers()["age"], "0");
//! # }
//! ```
//!
//! # What is stored
//!
//! A response to a `GET` is stored when RFC 9111 section 3 allows it: a final
//! status other than 206 and 304; no `no-store` (unless `must-understand` is
//! present and the status is one the cache understands); in shared mode
//! ([`Mode::Shared`], the default) no `private`, and for requests with
//! `Authorization` only with `public`, `s-maxage` or `must-revalidate`; no
//! `Vary: *` (nor a `Vary` member that is not a field name, which counts as `*`);
//! and explicit freshness, `public`, or a heuristically cacheable
//! status. A response that would be stale on arrival and has no validator is not
//! stored. Responses to `POST` are never stored (RFC 9111 allows it only with
//! explicit freshness and a matching `Content-Location`; few origins mean it),
//! `HEAD` responses are not stored, but a `HEAD` is served from a stored `GET`.
//! Requests with `Range` pass through uncached. Hop-by-hop fields are never stored.
//!
//! The primary key is the scheme, authority (or `Host`), path and query (sorted
//! with [`CacheLayer::normalize_query`]), plus what a
//! [`key_hook`](CacheLayer::key_hook) adds; `Vary` adds a secondary key of the
//! named request fields, normalised (list members trimmed and joined).
//!
//! # Freshness and age
//!
//! `s-maxage` (shared mode) over `max-age` over `Expires` minus `Date`; without
//! any, 10 % of the time since `Last-Modified` for heuristically cacheable
//! statuses, at most [one day](CacheLayer::max_heuristic_freshness). `Age` is
//! computed as RFC 9111 4.2.3 says (the larger of the apparent age and the
//! received `Age` plus the request's time, plus the time stored) and sent on every
//! hit, in whole seconds. Requests' `no-cache` (and `Pragma: no-cache`),
//! `max-age`, `max-stale`, `min-fresh` and `only-if-cached` (504 when nothing
//! usable is stored) are honoured; responses' `no-cache` forces revalidation on
//! every use and `must-revalidate` (and `proxy-revalidate` in shared mode) forbid
//! serving stale.
//!
//! # Revalidation and stale responses
//!
//! A stale response with an `ETag` or `Last-Modified` is revalidated with
//! `If-None-Match` / `If-Modified-Since`. A 304 replaces the stored header fields
//! (all but `Content-Length`, `Content-Encoding`, `Content-Range` and hop-by-hop
//! fields) and serves the stored body. `stale-while-revalidate` serves the stale
//! response while one background request refreshes it; `stale-if-error` serves
//! it when the origin answers 5xx or fails. Both can be set as defaults for
//! responses that do not name them. A successful unsafe request (`POST`, `PUT`,
//! `DELETE`, ...) invalidates its URL and the same-origin URLs in its `Location`
//! and `Content-Location`.
//!
//! # Bodies
//!
//! A miss streams to the client as it arrives while the frames are kept (shared,
//! not copied) up to [`max_body`](CacheLayer::max_body). A response that cannot
//! be stored, or whose `Content-Length` is over the limit, passes through
//! untouched and nothing is kept; one that grows over the limit while streaming
//! stops being kept. At its end the kept body is copied once into a buffer of
//! its exact size, and the header field values into another: frames and values
//! read from the network are slices of the connection's receive buffer, and
//! storing them would keep that whole buffer alive, unweighed. A hit serves the
//! stored `Bytes`, shared, never copied.
//!
//! # Collapsing
//!
//! Concurrent misses for one URL send one request upstream; the others park until
//! it is stored (then serve it), or until it turns out uncacheable or the wait
//! reaches [`collapse_timeout`](CacheLayer::collapse_timeout) (then go upstream
//! themselves). The upstream request runs in its own task, so it completes for
//! the waiters even if the first client disconnects. A URL whose response could
//! not be stored is remembered [briefly](CacheLayer::hit_for_miss) and its
//! requests go upstream at once, without queueing.
//!
//! # Bad input
//!
//! A malformed `Cache-Control` on a response makes it unstorable (a directive we
//! cannot read might have been `no-store`); on a request, malformed members are
//! skipped. Duplicate directives: the first wins. A `delta-seconds` that is
//! negative, fractional or not a number makes the response stale; one past 2^31
//! reads as 2^31. An invalid `Expires` means already expired; an invalid `Age` is
//! ignored; an invalid `Date` is replaced by the arrival time. A malformed
//! `If-None-Match` member never matches. None of these is an error or a panic.
//!
//! # Stores
//!
//! The in-memory store is a moka cache weighed in bytes
//! ([`max_bytes`](CacheLayer::max_bytes)), each entry kept while fresh plus its
//! stale windows, and [longer](CacheLayer::keep_stale) when it has a validator.
//! An entry's weight counts its key, header fields, body, the entry itself and
//! moka's own bookkeeping, so the budget holds for small entries too.
//!
//! With the `redis` feature there are two more arrangements:
//!
//! - `CacheLayer::redis(store)`: a Redis tier behind the in-memory one, shared by
//!   every instance. A miss in memory asks Redis; what Redis has is copied into
//!   memory, so later hits cost no round trip. An instance may serve its memory
//!   copy until it expires there, even after another instance stored a newer
//!   one (an invalidation reaches the other instances' memory only when they
//!   make it themselves).
//! - `CacheLayer::redis_only(store)`: Redis alone, no in-memory tier. Every
//!   instance sees the same stored responses at once, and holds no cached bytes
//!   itself; every hit costs one Redis round trip.
//!   [`max_bytes`](CacheLayer::max_bytes) does not apply (Redis' `maxmemory`
//!   bounds the store). Collapsed requests are served the leader's response
//!   directly, not through Redis.
//!
//! Either way reads wait at most the store's timeout, and a slow, absent or
//! garbled answer is a miss, never an error; writes and deletes run in the
//! background.
//!
//! # Limitations
//!
//! - Redis holds one variant per URL (the one stored last); other variants of a
//!   `Vary` response are misses there and live in memory only (with
//!   `redis_only`, they are not kept at all).
//! - Memory per stored response: `benches/cache.rs` counts the live bytes of
//!   10,000 stored responses with a counting allocator. For a 1 KiB body with
//!   three header fields, each takes about 690 bytes beyond its content (body,
//!   key, header names and values). Of those, 272 bytes are moka's own per-entry
//!   bookkeeping (its entry, order-queue and timer nodes, and hash table slot),
//!   measured alone in the same configuration (a sync cache with a weigher and
//!   per-entry expiry). A moka-backed store therefore cannot come down to 256
//!   bytes per entry beyond its content, whatever the entry holds.
//! - Revalidations are not collapsed: concurrent requests for one stale response
//!   each ask the origin (conditionally). `stale-while-revalidate` avoids this
//!   where the origin allows it.
//! - `Location` and `Content-Location` are resolved only when absolute or an
//!   absolute path; other relative references are not invalidated.
//! - `private` and `no-cache` with field names are treated as the unqualified
//!   directives (stricter than required).
//!
//! # Why written here
//!
//! The freshness and storability rules are implemented in this module rather
//! than taken from a policy crate such as `http-cache-semantics`: the hit path
//! must decide without allocating or copying, and the layer needs the decisions
//! themselves (serve, serve and refresh, revalidate, usable on error) to drive
//! `stale-while-revalidate`, `stale-if-error`, collapsing and hit-for-miss. HTTP
//! dates are parsed and written by `httpdate`; the store is `moka`.

mod body;
mod collapse;
mod conditional;
mod directives;
mod entry;
mod etag;
mod fields;
mod future;
mod layer;
mod policy;
#[cfg(feature = "redis")]
mod redis;
mod service;
mod shared;
mod store;
mod upstream;
mod vary;

pub use body::TeeBody;
pub use entry::strip_hop_by_hop;
pub use etag::{Etag, EtagBody, EtagLayer};
pub use future::ResponseFuture;
pub use layer::{CacheLayer, CacheStats};
pub use policy::Mode;
pub use service::Cache;
