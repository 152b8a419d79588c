//! Composable [`tower`](https://docs.rs/tower) middleware that keeps HTTP and gRPC
//! services fast under load and hard to overload.
//!
//! Add a layer to an axum router, a tonic server or any hyper service. Every layer
//! answers refusals itself ([`reject`]), so the service's error type never changes,
//! and every stateful layer works in memory with no setup.
//!
//! # Layers
//!
//! | module | feature | what it does |
//! |---|---|---|
//! | `rate_limit` | `rate-limit` | token bucket (GCRA) and leaky bucket quotas per key, with the IETF `RateLimit` headers |
//! | `compression` | `compression-gzip`, `-deflate`, `-br`, `-zstd` (`compression-full`) | negotiated response compression that flushes streams, and request decompression with size and ratio limits |
//! | [`cache`] | `cache` | an RFC 9111 response cache (in memory or Redis) with revalidation, request collapsing and an `ETag` layer |
//! | `concurrency` | `concurrency` | concurrency limits: static, per key, adaptive (AIMD, Vegas, Gradient2, Envoy's gradient), partitions |
//! | `shed` | `shed` | load shedding: a CoDel queue with adaptive LIFO, priority classes and a bypass |
//!
//! # Shared building blocks
//!
//! | module | what it gives every layer |
//! |---|---|
//! | [`key`] | the key a request counts against: client IP behind trusted proxies, a header, the route, a closure |
//! | [`reject`] | a refusal as an RFC 9457 problem+json response or a gRPC status |
//! | [`clock`] | time: a fast monotonic default and a manual clock for exact tests |
//! | [`body`] | the response body and future types layers return |
//!
//! # Features
//!
//! Every layer has a feature, all on by default; `full` adds `redis`, which lets
//! stateful layers share their state across instances through Redis. The `axum`
//! feature (default) reads axum's `ConnectInfo` and `MatchedPath` for keys.

#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms,
    clippy::all
)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod body;
#[cfg(feature = "cache")]
pub mod cache;
pub mod clock;
#[cfg(feature = "compression")]
pub mod compression;
#[cfg(feature = "concurrency")]
pub mod concurrency;
pub mod key;
#[cfg(feature = "rate-limit")]
pub mod rate_limit;
pub mod reject;
#[cfg(feature = "shed")]
pub mod shed;
pub mod store;
