use tower_layer::Layer;

use super::coding::{Coding, Level};
use super::negotiate::Preference;
use super::predicate::{DefaultPredicate, Predicate};
use super::service::Compression;
use crate::reject::Responder;

/// Compresses responses with the coding the client prefers; see the
/// [module docs](super).
#[derive(Clone, Debug)]
pub struct CompressionLayer<P = DefaultPredicate> {
    pub(crate) config: Config<P>,
}

/// The settings a [`CompressionLayer`] hands to each service and response.
#[derive(Clone, Debug)]
pub(crate) struct Config<P> {
    pub(crate) preference: Preference,
    /// Precise level per coding, by `Coding::index`.
    pub(crate) levels: [i32; 4],
    pub(crate) min_size: u64,
    pub(crate) predicate: P,
    pub(crate) responder: Responder,
}

impl CompressionLayer {
    /// The default bytes below which a response is sent as it is: 32. Smaller
    /// bodies rarely shrink by more than a coding's framing adds.
    pub const DEFAULT_MIN_SIZE: u64 = 32;

    /// A layer with every enabled coding in the default preference (zstd, br, gzip,
    /// deflate), the default levels (zstd 3, brotli 4, gzip and deflate 6), a
    /// 32-byte minimum and the [`DefaultPredicate`].
    pub fn new() -> Self {
        CompressionLayer {
            config: Config {
                preference: Preference::default(),
                levels: Coding::ALL.map(Coding::default_level),
                min_size: Self::DEFAULT_MIN_SIZE,
                predicate: DefaultPredicate,
                responder: Responder::default(),
            },
        }
    }
}

impl Default for CompressionLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<P> CompressionLayer<P> {
    /// The order in which codings the client weighs equally are preferred, and
    /// which codings are offered at all.
    pub fn preference(mut self, preference: Preference) -> Self {
        self.config.preference = preference;
        self
    }

    /// The level `coding` compresses at, unless a response carries its own
    /// [`Level`] extension. Precise levels are clamped to [`Coding::levels`].
    pub fn level(mut self, coding: Coding, level: Level) -> Self {
        self.config.levels[coding.index()] = coding.precise(level);
        self
    }

    /// Responses whose size is known and below `bytes` are sent as they are
    /// (default 32 bytes; 0 compresses everything). The size is read from
    /// `Content-Length` or the body's exact size hint; for a streamed body, from
    /// the data it has ready when the response head is produced.
    pub fn min_size(mut self, bytes: u64) -> Self {
        self.config.min_size = bytes;
        self
    }

    /// Which content types to compress; see [`DefaultPredicate`] for the default.
    pub fn predicate<Q: Predicate>(self, predicate: Q) -> CompressionLayer<Q> {
        let Config {
            preference,
            levels,
            min_size,
            responder,
            ..
        } = self.config;
        CompressionLayer {
            config: Config {
                preference,
                levels,
                min_size,
                predicate,
                responder,
            },
        }
    }

    /// How the 406 answer to a client that refuses every coding and identity is
    /// written (default: problem+json, or a gRPC status for gRPC requests).
    pub fn responder(mut self, responder: Responder) -> Self {
        self.config.responder = responder;
        self
    }
}

impl<S, P: Clone> Layer<S> for CompressionLayer<P> {
    type Service = Compression<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        Compression {
            inner,
            config: self.config.clone(),
        }
    }
}
