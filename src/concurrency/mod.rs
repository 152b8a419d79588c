//! Concurrency limits: at most N requests inside the service at once, with N
//! fixed, per key, or found by an adaptive algorithm.
//!
//! A service slows down once more requests run at once than it has cores,
//! connections or locks for: every request waits on every other one. Beyond that
//! point, admitting more requests only adds latency. A concurrency limit admits
//! up to the limit and answers the rest at once with `503 Service Unavailable`
//! (problem+json with `Retry-After`, or gRPC `UNAVAILABLE` for gRPC requests),
//! or lets them wait a bounded time in a bounded line.
//!
//! # How a request is counted
//!
//! The permit is taken when the request is called, not in `poll_ready`, so an
//! idle keep-alive connection holds nothing. It is released when the response
//! body ends, fails or is dropped, so a slow download still counts, and a
//! cancelled request (its future or body dropped) never leaks a permit.
//!
//! # Adaptive limits
//!
//! The right limit depends on the service and changes with it. An adaptive
//! [`LimitAlgorithm`] learns it from every finished request's latency and
//! outcome ([`Sample`]); errors and `503`/`504` responses count as drops;
//! cancelled requests are not counted at all.
//!
//! | algorithm | idea | reacts to |
//! |---|---|---|
//! | [`Fixed`] | a static limit | nothing |
//! | [`Aimd`] | +1 while busy, x0.9 on a drop (TCP's rule) | drops, timeouts |
//! | [`Vegas`] | keep the estimated queue `L x (1 - rtt0/rtt)` between thresholds | latency, drops |
//! | [`Gradient2`] | shrink by the ratio of long-term to current latency | latency |
//! | [`Gradient`] | Envoy's controller: median latency per window against minRTT measured at pinned concurrency | latency |
//!
//! [`Aimd`], [`Vegas`] and [`Gradient2`] are per-sample rules; wrapped in
//! [`Windowed`] they see one summary per window (average latency, most in
//! flight, any drop), which is how they are meant to run against a busy service:
//! otherwise one slow round trip applies AIMD's x0.9 once per request in it.
//!
//! [`LimitHandle`] reads the current limit; the `tower_toolbox_concurrency_limit`,
//! `_in_flight` and `_queued` gauges and the `_rejected_total` counter report it
//! through the `metrics` facade (labels `layer` and `name`). A per-key limit
//! reports only the counter, summed over its keys: one gauge per key would be
//! one series per client.
//!
//! # Example
//!
//! ```
//! use std::num::NonZeroUsize;
//! use std::time::Duration;
//! use axum::{Router, routing::get};
//! use tower_toolbox::concurrency::{Aimd, ConcurrencyLimitLayer};
//!
//! // A fixed limit of 64, waiting up to 50 ms in a line of 128 when full.
//! let fixed = ConcurrencyLimitLayer::new(NonZeroUsize::new(64).unwrap())
//!     .queue(NonZeroUsize::new(128).unwrap(), Duration::from_millis(50));
//!
//! // An adaptive limit between 10 and 500.
//! let adaptive = ConcurrencyLimitLayer::adaptive(
//!     Aimd::new().bounds(NonZeroUsize::new(10).unwrap(), NonZeroUsize::new(500).unwrap()),
//! );
//! let handle = adaptive.handle();
//!
//! let app: Router = Router::new()
//!     .route("/", get(|| async { "hello" }))
//!     .layer(adaptive)
//!     .layer(fixed);
//! assert_eq!(handle.limit(), 20);
//! # let _ = app;
//! ```
//!
//! # Per key and partitions
//!
//! [`ConcurrencyLimitLayer::per_key`] gives every key (a client IP, a tenant
//! header: see [`key`](crate::key)) its own limit; a request whose key cannot be
//! extracted is refused with the extractor's rejection (or let through with
//! [`MissingKey::Allow`](crate::key::MissingKey)).
//! [`ConcurrencyLimitLayer::partitions`] splits one limit into guaranteed shares
//! per class of request that may borrow each other's idle share.
//!
//! # Behaviour on bad input
//!
//! The layer only counts requests; the one thing it reads from a per-key request
//! is its key, and a request without one gets the extractor's problem+json
//! (400 for a missing header) before it reaches the service. Invalid settings
//! (bounds the wrong way round, shares outside (0, 1] or adding up past 1, more
//! than 255 partitions) panic
//! when the layer is built, with a message naming the setting.
//!
//! # Limitations
//!
//! - Limits are per process: there is no shared concurrency limit across a fleet
//!   (a concurrency count held in Redis would leak permits whenever an instance
//!   died mid-request).
//! - A per-key adaptive limit is forgotten when its key goes idle and is swept.
//! - [`Vegas`] fed every sample reads a backend's own spread of latencies as
//!   queueing: its no-load latency is the fastest request ever seen, so against
//!   a service whose requests take 80 to 120 ms half the samples say the queue is
//!   over beta and it settles below capacity (79 % goodput in the overload
//!   example). Under [`Windowed`] it compares window averages and keeps 99 %.
//! - [`Vegas`] and [`Gradient`] re-measure their baseline on a fixed schedule,
//!   not the jittered one of their published versions, so their sequences of
//!   limits are reproducible; instances started together probe together.
//! - A gate's counts live in a 72-byte block that responses point at without
//!   reference counting, which is never returned to the allocator: once a gate
//!   is dropped and its last response released, the next gate reuses it. A
//!   process holds as many as the most gates it had at once (one per key with
//!   requests in flight, for a per-key limit), plus one for every global limit
//!   it ever built.
//! - Adaptive limits time requests in whole microseconds, wrapping after 71
//!   minutes (a longer request is sampled as its length modulo that), and see
//!   at most 65,535 requests in flight per sample.
//! - The standard refusals are built once and kept for the life of the process
//!   (so a refusal costs no reference counting on shared memory): about two
//!   kilobytes for each distinct `Retry-After` and problem type base a program
//!   configures, however many layers use them. A program that builds layers with
//!   ever new `Retry-After` values keeps one copy of each.

mod admission;
mod aimd;
mod algorithm;
mod future;
pub(crate) mod gate;
mod gradient;
mod gradient2;
mod keyed;
mod layer;
mod line;
mod metrics;
mod permit;
mod service;
mod vegas;
mod windowed;

pub use aimd::Aimd;
pub use algorithm::{Fixed, LimitAlgorithm, Outcome, Sample};
#[cfg(feature = "shed")]
pub(crate) use future::Refuse;
pub use future::{PermitBody, ResponseFuture};
pub use gradient::Gradient;
pub use gradient2::Gradient2;
pub use layer::{ConcurrencyLimitLayer, LimitHandle};
pub use service::ConcurrencyLimit;
pub use vegas::Vegas;
pub use windowed::Windowed;
