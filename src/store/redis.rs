//! The Redis backend shared by the stateful layers.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::FailureMode;

/// A connection to Redis shared by the layers that keep state there.
///
/// Cheap to clone: clones share one multiplexed connection, which reconnects in
/// the background after a failure. Creating one does not connect; the first
/// call does, so a service starts even while Redis is down.
///
/// ```no_run
/// use std::time::Duration;
/// use tower_toolbox::store::{FailureMode, RedisStore};
///
/// let store = RedisStore::open("redis://127.0.0.1:6379/")
///     .unwrap()
///     .with_timeout(Duration::from_millis(20))
///     .with_failure_mode(FailureMode::Closed)
///     .with_prefix("checkout");
/// # let _ = store;
/// ```
#[derive(Clone)]
pub struct RedisStore {
    connection: ConnectionManager,
    timeout: Duration,
    failure_mode: FailureMode,
    prefix: Arc<str>,
}

impl RedisStore {
    /// The default time a decision may wait for Redis: 50 ms.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);

    /// A store on the server at `url` (`redis://host:port/db`), connected on first
    /// use. Fails only on a malformed URL.
    ///
    /// Must be called inside a tokio runtime.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(StoreError::Redis)?;
        Self::from_client(client)
    }

    /// A store using `client`, connected on first use.
    pub fn from_client(client: redis::Client) -> Result<Self, StoreError> {
        // Each call is bounded by `timeout` around it; the connection's own limits
        // only keep a dead server from holding a reconnect attempt for long.
        let timeout = Self::DEFAULT_TIMEOUT;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(None)
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(100));
        let connection =
            ConnectionManager::new_lazy_with_config(client, config).map_err(StoreError::Redis)?;
        Ok(RedisStore {
            connection,
            timeout,
            failure_mode: FailureMode::default(),
            prefix: Arc::from("tower-toolbox"),
        })
    }

    /// How long one decision may wait for Redis before the failure mode applies
    /// (default 50 ms).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// What to do when Redis is slow or down (default [`FailureMode::Open`]).
    pub fn with_failure_mode(mut self, mode: FailureMode) -> Self {
        self.failure_mode = mode;
        self
    }

    /// The prefix of every key this store writes (default `tower-toolbox`), to keep
    /// several services or environments apart on one server.
    pub fn with_prefix(mut self, prefix: &str) -> Self {
        self.prefix = Arc::from(prefix);
        self
    }

    /// The call timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The failure mode.
    pub fn failure_mode(&self) -> FailureMode {
        self.failure_mode
    }

    /// The key for `id` in `layer`'s namespace: `prefix:layer:{id}`. The braces make
    /// `id` the hash tag, so every key of one id lands in one cluster slot.
    pub fn key(&self, layer: &str, id: impl fmt::Display) -> String {
        format!("{}:{layer}:{{{id}}}", self.prefix)
    }

    /// Runs `call` on the shared connection, bounded by the timeout: the building
    /// block of every layer that keeps state in Redis.
    pub async fn call<T, F, Fut>(&self, call: F) -> Result<T, StoreError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        match tokio::time::timeout(self.timeout, call(self.connection.clone())).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(StoreError::Redis(error)),
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        }
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("timeout", &self.timeout)
            .field("failure_mode", &self.failure_mode)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// Why a store call failed.
#[derive(Debug)]
pub enum StoreError {
    /// Redis did not answer within the timeout.
    Timeout(Duration),
    /// Redis answered with an error, or the connection failed.
    Redis(redis::RedisError),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Timeout(after) => write!(f, "redis did not answer within {after:?}"),
            StoreError::Redis(error) => write!(f, "redis: {error}"),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StoreError::Timeout(_) => None,
            StoreError::Redis(error) => Some(error),
        }
    }
}
