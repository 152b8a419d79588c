//! Where stateful layers keep their state.
//!
//! Every stateful layer keeps its state in memory by default, bounded in size, with
//! no setup. With the `redis` feature a `RedisStore` lets a fleet of instances
//! share one quota, one cache or one idempotency record:
//!
//! - one round trip per decision (scripts loaded once and run by hash);
//! - the server's clock, not the instances', wherever time matters;
//! - keys with a hash tag (`{...}`), so everything one decision touches lives in one
//!   Redis Cluster slot;
//! - a timeout on every call and a [`FailureMode`] for when Redis is slow or down;
//!   the connection is re-established in the background when it returns.

#[cfg(feature = "redis")]
mod redis;

#[cfg(feature = "redis")]
pub use self::redis::{RedisStore, StoreError};

/// What a layer does when its shared store cannot answer in time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FailureMode {
    /// Decide as if the store allowed the request (a rate limit lets it through, a
    /// cache misses). The default: an outage of the store does not become an
    /// outage of the service.
    #[default]
    Open,
    /// Refuse the request (503 problem+json, gRPC `UNAVAILABLE`): for limits that
    /// protect something more important than availability.
    Closed,
}
