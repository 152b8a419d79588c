//! Response compression negotiated with the client, safe for streams, and request
//! decompression that cannot be turned into a memory bomb.
//!
//! # What it solves
//!
//! Text responses (JSON, HTML, CSS, JavaScript) shrink five to twenty times when
//! compressed. [`CompressionLayer`] picks the coding the client prefers from its
//! `Accept-Encoding` header and compresses the body as it streams, at a level
//! chosen for speed. Two things go wrong with naive compression, and this layer
//! avoids both:
//!
//! - **Streams stall.** An encoder holds data until it has a block worth writing,
//!   so a server-sent event or a long-poll answer can sit in the encoder until the
//!   stream ends. Here, whenever the inner body has nothing ready, the encoder is
//!   flushed: every chunk reaches the client, decodable, as soon as it is
//!   produced.
//! - **Compressed requests explode.** Ten kilobytes of gzip can decode to ten
//!   megabytes, and a few hundred bytes of zstd to far more.
//!   [`RequestDecompressionLayer`] decodes request bodies incrementally, stops one
//!   byte past a size limit and as soon as the body expands more than a ratio
//!   allows, and refuses with a problem+json response.
//!
//! # Example
//!
//! ```
//! use axum::{Router, routing::get};
//! use tower_toolbox::compression::{Coding, CompressionLayer, Level, RequestDecompressionLayer};
//!
//! let app: Router = Router::new()
//!     .route("/items", get(|| async { axum::Json(vec!["an item"; 100]) }))
//!     .layer(
//!         CompressionLayer::new()
//!             .level(Coding::Brotli, Level::Precise(5))
//!             .min_size(256),
//!     )
//!     .layer(RequestDecompressionLayer::new().max_size(8 * 1024 * 1024));
//! # let _ = app;
//! ```
//!
//! # Response compression
//!
//! **Negotiation** follows RFC 9110, section 12.5.3: `Accept-Encoding` members are
//! read with their q-values (case-insensitive tokens, whitespace allowed, malformed
//! members skipped, `x-gzip` read as `gzip`); `*` stands for every coding not listed;
//! `q=0` excludes. The coding with the highest weight wins, and the server's
//! [`Preference`] (default zstd, br, gzip, deflate) breaks ties. Identity is used
//! when nothing has a positive weight or the client weighs identity above every
//! coding. A request with no `Accept-Encoding` gets identity. Only when the client
//! refuses identity (`identity;q=0`, or `*;q=0` without an identity entry) and
//! every coding on offer is the answer `406 Not Acceptable` (problem+json, without
//! calling the inner service).
//!
//! **Levels** default to zstd 3, brotli 4, gzip and deflate 6, set per coding with
//! [`CompressionLayer::level`]. A handler picks the level of one response by
//! putting a [`Level`] in the response's extensions.
//!
//! **What is compressed**: responses whose content type the [`Predicate`] accepts
//! (by default text, JSON, XML, JavaScript, CSS, SVG; see [`DefaultPredicate`]), of
//! at least [`min_size`](CompressionLayer::min_size) bytes (default 32). The size is
//! read from `Content-Length` or the body's exact size hint; a streamed body of
//! unknown length is read ahead while it has data ready, up to the minimum, before
//! the head is sent (it is never waited for). Never compressed: responses to `HEAD`,
//! statuses without content (1xx, 204, 205, 304), partial content (206 or any
//! `Content-Range`), responses that already have a `Content-Encoding`, and gRPC
//! requests and responses (`application/grpc*`; gRPC compresses each message itself).
//! `Cache-Control: no-transform` is not consulted: it binds intermediaries (RFC
//! 9111, section 5.2.2.6; RFC 9110, section 7.7), and this layer is part of the
//! origin server; use a [`Predicate`] to honour it.
//!
//! **Headers** of a compressed response: `Content-Encoding` is set,
//! `Content-Length` and `Accept-Ranges` are removed, and a strong `ETag` becomes
//! weak (`"v1"` to `W/"v1"`), since the bytes differ from the identity
//! representation. `Vary: Accept-Encoding` is added to every response that could
//! be compressed, whatever this client accepted, merged into the existing `Vary`
//! (never duplicated, left alone when it is `*`).
//!
//! **Streaming**: compressed output is sent as soon as the encoder produces it; when
//! the inner body returns `Pending`, the encoder is flushed (a sync flush for
//! gzip and deflate, a block flush for brotli and zstd) and the result sent.
//! Trailers are forwarded after the last data frame.
//!
//! # Request decompression
//!
//! [`RequestDecompressionLayer`] decodes a request body whose `Content-Encoding` is
//! an enabled coding, and hands the inner service the decoded bytes (with
//! `Content-Encoding` removed and `Content-Length` set). It reads the body frame by
//! frame and refuses, with the shared [`Responder`](crate::reject::Responder):
//!
//! - **413** when the body decodes to more than
//!   [`max_size`](RequestDecompressionLayer::max_size) bytes (default 2 MiB): the
//!   decoder is never given room past one byte over the limit, and no further frame
//!   is read. The compressed body may not exceed the limit either, and a
//!   `Content-Length` over it is refused before anything is read.
//! - **413** when, past 64 KiB decoded, the body has expanded more than
//!   [`max_ratio`](RequestDecompressionLayer::max_ratio) times (default 100),
//!   measured on the compressed bytes the decoder has consumed: a zero-filled
//!   bomb is stopped within 96 KiB of output, however large the frames it
//!   arrives in.
//! - **415** for a coding that is unknown or not enabled, with `Accept-Encoding`
//!   listing those that are.
//! - **400** for data that is not valid in its coding, or ends early.
//!
//! Requests without `Content-Encoding` (or with `identity`) pass through untouched
//! and unbuffered. zstd frames may not ask for a window over 8 MiB (RFC 8878).
//!
//! # Limitations
//!
//! - A compressed request body is decoded whole, into memory (at most
//!   [`max_size`](RequestDecompressionLayer::max_size) bytes), before the inner
//!   service is called; its trailers are dropped.
//! - A request body encoded twice (`Content-Encoding: gzip, br`) is refused with
//!   415, and a `deflate` body in raw DEFLATE rather than the zlib format that HTTP
//!   specifies is refused as corrupt (400).
//! - A response to `HEAD` does not announce the `Content-Encoding` a `GET` would get.
//! - Reading ahead a streamed body of unknown length to check the minimum size costs
//!   one allocation for that response.
//!
//! # Codings and their backends
//!
//! Each coding has a feature: `compression-zstd`, `compression-br`,
//! `compression-gzip`, `compression-deflate` (all four: `compression-full`). HTTP's
//! `deflate` is the zlib format. The codecs come from `async-compression`, driven
//! here frame by frame without an I/O adapter. gzip and deflate run on
//! `flate2`'s `zlib-rs` backend, a pure-Rust port of zlib-ng that builds on every
//! target Rust does and needs no C compiler. Measured on a 1 MB JSON document at
//! level 6 it deflates about twice as fast as `flate2`'s default `miniz_oxide`
//! backend (111 against 51 MB/s of CPU time on the machine the benchmarks ran on;
//! `benches/compression.rs` measures both).
//!
//! # Bad input
//!
//! A malformed `Accept-Encoding` never fails a request: bad members are skipped.
//! Unknown request codings get 415, corrupt compressed bodies 400, oversized or
//! over-expanding ones 413; the inner service is not called for any of them. An
//! error of the inner response body is passed on unchanged ([`BodyError::Inner`]).

mod body;
mod coding;
mod decode;
mod future;
mod layer;
mod negotiate;
mod predicate;
mod request;
mod service;

pub use self::body::{BodyError, CompressionBody};
pub use self::coding::{Coding, Level};
pub use self::decode::RATIO_GRACE;
pub use self::future::ResponseFuture;
pub use self::layer::CompressionLayer;
pub use self::negotiate::{Negotiated, Preference, negotiate};
pub use self::predicate::{DefaultPredicate, Predicate, PredicateFn, predicate_fn};
pub use self::request::{
    DecompressedBody, DecompressionFuture, RequestDecompression, RequestDecompressionLayer,
};
pub use self::service::Compression;
