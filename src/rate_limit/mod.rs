//! Rate limiting: token bucket and leaky bucket quotas per key.
//!
//! [`RateLimitLayer`] counts each request against the quotas of its key (by default
//! the client IP, see [`key`](crate::key)) and refuses it when a quota is used up:
//! 429 `application/problem+json` with `Retry-After`, or for gRPC a
//! `RESOURCE_EXHAUSTED` status with `grpc-retry-pushback-ms`. The inner service's
//! error type is kept, so it drops into axum and tonic as it is.
//!
//! # Example
//!
//! ```
//! use std::net::SocketAddr;
//! use std::num::NonZeroU32;
//! use axum::{Router, routing::get};
//! use tower_toolbox::key::ClientIp;
//! use tower_toolbox::rate_limit::{Headers, Quota, RateLimitLayer};
//!
//! let per_client = RateLimitLayer::builder()
//!     // 10 requests per second, up to 20 at once...
//!     .quota(Quota::per_second(NonZeroU32::new(10).unwrap()).burst(NonZeroU32::new(20).unwrap()).named("burst"))
//!     // ...and 1000 per hour.
//!     .quota(Quota::per_hour(NonZeroU32::new(1000).unwrap()).named("hourly"))
//!     .key(ClientIp::new().trust_proxies(["10.0.0.0/8".parse().unwrap()]))
//!     .headers(Headers::IETF)
//!     .build()
//!     .expect("a valid rate limit");
//!
//! let app: Router = Router::new().route("/", get(|| async { "hello" })).layer(per_client);
//! // Serve with `app.into_make_service_with_connect_info::<SocketAddr>()` so the
//! // client address is known.
//! # let _ = app;
//! ```
//!
//! # Algorithms
//!
//! - [`Quota`]: a token bucket, in its GCRA form: one 64-bit "theoretical arrival
//!   time" per key and quota. `Quota::per_second(2)` admits 2 requests per second,
//!   and a new key may send both at once; `burst` sets how many may come at once.
//! - [`LeakyBucket`]: nginx's `limit_req`. Requests over the rate wait their turn
//!   (a timer, not polling) instead of being refused, up to `burst` of them; `delay`
//!   lets some pass at once, `nodelay` all. At 1 r/s with burst 5, seven requests at
//!   once pass after 0, 1, 2, 3, 4, 5 s and the seventh is refused; with `delay(2)`
//!   after 0, 0, 0, 1, 2, 3 s; with `nodelay` all six at once. The total number of
//!   waiting requests is capped ([`Builder::max_waiting`]); a request that finds no
//!   place is refused.
//!
//! A [`Plan`] holds up to [`MAX_QUOTAS`] quotas, checked all or nothing: a request
//! refused by one consumes none of the others. Several plans may be registered and
//! a [`Classify`] closure picks one per request, with a cost (weight by route or
//! body size), or exempts the request entirely (an allow-list).
//! [`Builder::dry_run`] counts, logs and adds headers but never refuses.
//!
//! # Headers
//!
//! With [`Headers::IETF`] every response carries the fields of the IETF
//! RateLimit draft in Structured Fields form: `RateLimit-Policy: "burst";q=20;w=2`
//! (the bucket holds `q` requests and refills in `w` seconds) and
//! `RateLimit: "burst";r=17;t=1` (`r` left, full again in `t` seconds).
//! [`Headers::LEGACY`] adds `X-RateLimit-Limit`, `-Remaining` and `-Reset` (delta
//! seconds) for the quota with the fewest requests left. Seconds are rounded up, so
//! neither `t` nor `Retry-After` is ever earlier than the moment the request would
//! pass. The problem body names the violated policies in `violated-policies` and
//! uses the draft's problem type,
//! `https://iana.org/assignments/http-problem-types#quota-exceeded`.
//!
//! # State
//!
//! In memory, keys are hashed to 64 bits with a per-process random seed and kept in
//! a table of up to 64 shards, at most [`Builder::max_keys`] entries in all (one
//! per key and quota; default 1,048,576, about 36 bytes each; the cap is never
//! rounded up, but is at least [`MAX_QUOTAS`]). A known key of a one-quota plan is
//! updated lock-free, by a compare-and-swap of its TAT under the shard's shared
//! lock; new keys and plans of several quotas take that shard's exclusive lock for
//! one update. A key whose bucket is full again carries no information and is
//! not stored; when a shard fills up, such keys are dropped first, then the ones
//! nearest to full, one shard at a time (no global pause). Two distinct keys share
//! a bucket only if their 64-bit hashes collide (about one chance in 10^7 among a
//! million keys), and the seed keeps an outsider from aiming for a collision.
//!
//! Limitation: under a flood of distinct keys beyond the cap, the keys evicted last
//! are the busiest ones, but an evicted key starts again with a full bucket.
//!
//! With the `redis` feature, `Builder::redis` keeps the state in Redis, shared by
//! every instance with the same store prefix: one script call per decision for all
//! quotas of the key, Redis's own clock, a hash-tagged key per client (Redis
//! Cluster safe) that expires when its buckets are full, and a local memory of
//! refused keys so a client past its quota costs no round trip until it may pass.
//! When Redis is slow or down, the store's [`FailureMode`](crate::store::FailureMode)
//! decides: let requests through (default) or refuse them with 503.
//!
//! # Bad input and configuration
//!
//! - A request whose key cannot be extracted is refused with the extractor's
//!   problem (500 for a missing peer address, 400 for a missing header), or let
//!   through with [`MissingKey::Allow`](crate::key::MissingKey::Allow).
//! - Forged `X-Forwarded-For` entries buy no fresh quota: see [`ClientIp`](crate::key::ClientIp).
//! - A cost larger than a quota's burst is always refused, without `Retry-After`.
//! - Zero rates and bursts cannot be written (they take `NonZeroU32`); a zero
//!   period, an empty plan, more than [`MAX_QUOTAS`] quotas, duplicate or
//!   non-ASCII names are refused by [`Builder::build`] with a [`ConfigError`].

mod class;
mod future;
mod gcra;
mod headers;
mod layer;
mod limiter;
mod memory;
mod quota;
#[cfg(feature = "redis")]
mod redis;
mod service;

pub use class::{Class, Classify, EveryRequest};
pub use future::ResponseFuture;
pub use headers::Headers;
pub use layer::{Builder, RateLimitLayer};
pub use limiter::{Limiter, Refused};
pub use quota::{ConfigError, LeakyBucket, MAX_QUOTAS, Plan, Policy, Quota};
pub use service::RateLimit;
