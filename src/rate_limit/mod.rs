//! Rate limiting: token bucket and leaky bucket quotas per key.
//!
//! TODO docs
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
