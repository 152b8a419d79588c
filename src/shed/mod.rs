//! Load shedding: keep a service at full goodput when offered more than it can
//! take, by queueing briefly and refusing early.
//!
//! An overloaded service that queues everything answers everything late: each
//! request waits behind all the others, clients time out, and the work done for
//! them is wasted. [`LoadShedLayer`] lets a bounded number of requests into the
//! service and keeps the rest in a short line run on two rules from the
//! literature on queueing at scale:
//!
//! - **CoDel** (controlled delay): a line that empties now and then is absorbing
//!   a burst, and every waiter is served. Once the line has not been empty for a
//!   whole *interval* (default 100 ms), it is a standing queue: waiters that have
//!   waited longer than the *target* (default 5 ms) are shed with `503`. No
//!   request ever waits longer than the interval.
//! - **Adaptive LIFO**: while the queue stands, the newest waiter is served
//!   first. Its client is most likely still there; the oldest ones are the ones
//!   CoDel sheds.
//!
//! On top: [`Priority`] classes from a predicate (critical routes are served
//! first and shed last; a full line sheds its lowest class first) and a bypass
//! predicate for requests that must never wait or be counted (a load balancer's
//! health check that must see the real service). Shed requests get
//! `503 Service Unavailable` problem+json with `Retry-After`, or gRPC
//! `UNAVAILABLE` for gRPC requests; the inner service's error type is kept.
//!
//! Shedding happens when the line changes (a request arrives or one finishes)
//! and at each waiter's interval deadline, so a shed costs no timer of its own.
//! The gauges and counters are those of [`concurrency`](crate::concurrency),
//! with `layer="shed"`: `tower_toolbox_concurrency_rejected_total` counts the
//! requests refused on arrival (line full) or after waiting the whole interval,
//! and `tower_toolbox_shed_total` the waiters dropped from the line (by CoDel,
//! or to make room for a higher priority).
//!
//! # Example
//!
//! ```
//! use std::num::NonZeroUsize;
//! use std::time::Duration;
//! use axum::{Router, routing::get};
//! use tower_toolbox::shed::{LoadShedLayer, Priority};
//!
//! let shed = LoadShedLayer::new(NonZeroUsize::new(32).unwrap())
//!     .codel(Duration::from_millis(5), Duration::from_millis(100))
//!     .priority(|head| match head.uri.path() {
//!         "/checkout" => Priority::Critical,
//!         path if path.starts_with("/batch/") => Priority::Low,
//!         _ => Priority::Normal,
//!     })
//!     .bypass(|head| head.uri.path() == "/healthz");
//!
//! let app: Router = Router::new()
//!     .route("/", get(|| async { "hello" }))
//!     .layer(shed);
//! # let _ = app;
//! ```
//!
//! # Behaviour on bad input
//!
//! The layer reads only the request head, and only through your predicates;
//! there is nothing a client can send to make it misbehave. A request it sheds
//! is never passed to the service, so nothing is half-done.

mod layer;
mod priority;
mod service;

pub use crate::concurrency::{LimitHandle, PermitBody, ResponseFuture};
pub use layer::LoadShedLayer;
pub use priority::Priority;
pub use service::LoadShed;
