//! The state every service made by one layer shares: settings, store, flights.

use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, DATE, HOST};
use http::request::Parts;
use http::{HeaderMap, Method, Response, StatusCode, Uri, Version};

use super::body::{Completion, TeeBody};
use super::collapse::{Inflight, Leader, Outcome};
use super::conditional;
use super::directives::{self, CacheControl};
use super::entry::{Entry, Freshness};
use super::policy;
use super::store::MemoryStore;
use crate::clock::{Clock, Timestamp};
use crate::reject::{Rejection, RequestHead, Responder};

/// A hook that adds to the primary key; `None` means "do not cache this request".
pub(crate) type KeyHook = dyn Fn(&Parts) -> Option<String> + Send + Sync;

/// The layer's settings.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) freshness: Freshness,
    pub(crate) max_bytes: u64,
    pub(crate) max_body: usize,
    pub(crate) keep_stale: Duration,
    pub(crate) normalize_query: bool,
    pub(crate) key_hook: Option<Arc<KeyHook>>,
    pub(crate) collapse: bool,
    pub(crate) collapse_timeout: Duration,
    pub(crate) hit_for_miss: Duration,
    pub(crate) responder: Responder,
    pub(crate) wall_origin: Option<SystemTime>,
    /// Whether responses are kept in memory (off only with Redis alone).
    pub(crate) in_memory: bool,
    #[cfg(feature = "redis")]
    pub(crate) redis: Option<crate::store::RedisStore>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("freshness", &self.freshness)
            .field("max_bytes", &self.max_bytes)
            .field("max_body", &self.max_body)
            .field("collapse", &self.collapse)
            .finish_non_exhaustive()
    }
}

/// What the store holds for a request.
pub(crate) enum Lookup {
    /// The key hook declined the request: pass it through.
    Declined,
    /// A stored response to serve as it is, and its age.
    Serve(Arc<Entry>, Duration),
    /// The primary key, and the stored response (its age and what it may be
    /// used for) when there is one.
    Other(Arc<str>, Option<(Arc<Entry>, Duration, Use)>),
}

/// What a stored response can be used for, given the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Use {
    /// Serve it.
    Serve,
    /// Serve it and refresh it once in the background.
    ServeAndRefresh,
    /// Ask the origin first (conditionally when it has a validator).
    Revalidate,
}

pub(crate) struct Shared<C> {
    pub(crate) config: Config,
    pub(crate) clock: C,
    wall_origin: SystemTime,
    /// The in-memory tier; `None` when Redis is the only store.
    pub(crate) memory: Option<MemoryStore>,
    pub(crate) inflight: Arc<Inflight>,
    /// URLs whose last response could not be stored, with the clock time until
    /// which they skip collapsing. moka's own expiry (on real time) only bounds
    /// how long a record takes room; the deadline is what is read.
    hit_for_miss: moka::sync::Cache<Arc<str>, Timestamp>,
    /// Whether any URL was ever marked hit-for-miss: until one is, the lookups
    /// in `hit_for_miss` are skipped (each costs a hash and a table probe).
    any_hit_for_miss: AtomicBool,
    refreshing: Mutex<HashSet<Arc<str>>>,
}

impl<C> fmt::Debug for Shared<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .field("memory", &self.memory)
            .finish_non_exhaustive()
    }
}

impl<C: Clock> Shared<C> {
    pub(crate) fn new(config: Config, clock: C) -> Self {
        let wall_origin = config
            .wall_origin
            .unwrap_or_else(|| SystemTime::now() - Duration::from_nanos(clock.now().as_nanos()));
        let hit_for_miss = moka::sync::Cache::builder()
            .max_capacity(10_000)
            .time_to_live(config.hit_for_miss.max(Duration::from_nanos(1)))
            .build();
        Shared {
            memory: config
                .in_memory
                .then(|| MemoryStore::new(config.max_bytes, config.keep_stale)),
            config,
            clock,
            wall_origin,
            inflight: Arc::default(),
            hit_for_miss,
            any_hit_for_miss: AtomicBool::new(false),
            refreshing: Mutex::default(),
        }
    }

    /// The response stored in memory for `key` that `request` selects.
    #[inline]
    pub(crate) fn memory_get(&self, key: &str, request: &HeaderMap) -> Option<Arc<Entry>> {
        self.memory.as_ref()?.get(key, request)
    }

    /// The cache's wall time: the origin's wall time plus the clock's reading.
    #[inline]
    pub(crate) fn now(&self) -> SystemTime {
        self.wall_origin + Duration::from_nanos(self.clock.now().as_nanos())
    }

    /// The primary key of a request: scheme, authority, path, query, and the
    /// hook's addition. `None` when the hook declines the request.
    pub(crate) fn key(&self, parts: &Parts) -> Option<String> {
        let mut key = String::new();
        self.write_key(parts, &mut key).then_some(key)
    }

    /// Appends the primary key of a request to `key`; `false` when the hook
    /// declines the request.
    fn write_key(&self, parts: &Parts, key: &mut String) -> bool {
        let authority = parts
            .uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| parts.headers.get(HOST).and_then(|h| h.to_str().ok()))
            .unwrap_or("");
        let scheme = parts.uri.scheme_str().unwrap_or("http");
        self.write_key_for(scheme, authority, &parts.uri, parts, key)
    }

    /// Finds what the store holds for a request, and what it may be used for.
    ///
    /// The key is built in a buffer kept per thread, so a hit allocates none;
    /// it is copied out only when the request goes further than the store.
    pub(crate) fn lookup(&self, parts: &Parts, request_cc: &CacheControl) -> Lookup {
        // Past this many bytes of capacity the buffer is not kept for the next
        // request, so one huge URL does not pin memory in every thread.
        const KEPT_CAPACITY: usize = 4096;
        thread_local! {
            static KEY: RefCell<String> = const { RefCell::new(String::new()) };
        }
        KEY.with(|cell| match cell.try_borrow_mut() {
            Ok(mut key) => {
                key.clear();
                let lookup = self.lookup_in(parts, request_cc, &mut key);
                if key.capacity() > KEPT_CAPACITY {
                    *key = String::new();
                }
                lookup
            }
            // A key hook that sends a request through a cache itself.
            Err(_) => self.lookup_in(parts, request_cc, &mut String::new()),
        })
    }

    fn lookup_in(&self, parts: &Parts, request_cc: &CacheControl, key: &mut String) -> Lookup {
        if !self.write_key(parts, key) {
            return Lookup::Declined;
        }
        let Some(entry) = self.memory_get(key, &parts.headers) else {
            return Lookup::Other(Arc::from(key.as_str()), None);
        };
        let age = entry.age(self.now());
        match self.decide(&entry, request_cc, age) {
            Use::Serve => Lookup::Serve(entry, age),
            other => Lookup::Other(Arc::from(key.as_str()), Some((entry, age, other))),
        }
    }

    fn key_for(&self, scheme: &str, authority: &str, uri: &Uri, parts: &Parts) -> Option<String> {
        let mut key = String::new();
        self.write_key_for(scheme, authority, uri, parts, &mut key)
            .then_some(key)
    }

    fn write_key_for(
        &self,
        scheme: &str,
        authority: &str,
        uri: &Uri,
        parts: &Parts,
        key: &mut String,
    ) -> bool {
        key.reserve(
            scheme.len() + authority.len() + uri.path().len() + uri.query().map_or(0, str::len) + 8,
        );
        key.push_str(scheme);
        key.push_str("://");
        if authority.bytes().any(|b| b.is_ascii_uppercase()) {
            key.extend(authority.chars().map(|c| c.to_ascii_lowercase()));
        } else {
            key.push_str(authority);
        }
        key.push_str(if uri.path().is_empty() {
            "/"
        } else {
            uri.path()
        });
        if let Some(query) = uri.query() {
            key.push('?');
            if self.config.normalize_query {
                let mut pairs: Vec<&str> = query.split('&').filter(|p| !p.is_empty()).collect();
                pairs.sort_unstable();
                key.push_str(&pairs.join("&"));
            } else {
                key.push_str(query);
            }
        }
        if let Some(hook) = &self.config.key_hook {
            let Some(addition) = hook(parts) else {
                return false;
            };
            key.push('\n');
            key.push_str(&addition);
        }
        true
    }

    /// What the stored `entry`, now `age` old, may be used for by a request with
    /// `request` directives (RFC 9111 4.2, 4.3, 5.2.1 and RFC 5861).
    pub(crate) fn decide(&self, entry: &Entry, request: &CacheControl, age: Duration) -> Use {
        if entry.no_cache || request.no_cache {
            return Use::Revalidate;
        }
        match request.max_age {
            directives::Delta::Seconds(max) if age.as_secs() > max => return Use::Revalidate,
            directives::Delta::Invalid | directives::Delta::Bare => return Use::Revalidate,
            _ => {}
        }
        if let Some(min_fresh) = request.min_fresh.seconds() {
            if entry.lifetime < age.saturating_add(min_fresh) {
                return Use::Revalidate;
            }
        }
        if entry.lifetime > age {
            return Use::Serve;
        }
        if entry.must_revalidate {
            return Use::Revalidate;
        }
        let staleness = age - entry.lifetime;
        match request.max_stale {
            directives::Delta::Bare => return Use::Serve,
            directives::Delta::Seconds(max) if staleness.as_secs() <= max => return Use::Serve,
            _ => {}
        }
        if staleness < entry.stale_while_revalidate {
            return Use::ServeAndRefresh;
        }
        Use::Revalidate
    }

    /// Whether `entry`, now `age` old, may stand in for a failed origin.
    pub(crate) fn usable_on_error(&self, entry: &Entry, age: Duration) -> bool {
        !entry.must_revalidate && !entry.no_cache && age < entry.lifetime + entry.stale_if_error
    }

    /// The response to a request answered from `entry`: a 304 when the client's
    /// own conditional matches, else the stored response (no body for `HEAD`).
    pub(crate) fn serve(
        &self,
        entry: &Entry,
        age: Duration,
        method: &Method,
        headers: &HeaderMap,
    ) -> Response<Bytes> {
        tracing::trace!(status = %entry.status, age = age.as_secs(), "cache hit");
        let conditional = headers.contains_key(http::header::IF_NONE_MATCH)
            || headers.contains_key(http::header::IF_MODIFIED_SINCE);
        if conditional
            && conditional::not_modified(
                headers,
                entry.etag(),
                entry
                    .last_modified()
                    .or_else(|| entry.date())
                    .or(Some(entry.response_time)),
            )
        {
            return entry.to_not_modified(age);
        }
        entry.to_response(age, method == Method::HEAD)
    }

    /// The 504 for `only-if-cached` without a usable stored response.
    pub(crate) fn only_if_cached(&self, parts: &Parts) -> Response<Bytes> {
        let rejection = Rejection::gateway_timeout(
            "the request asked for a cached response only (only-if-cached) and none is stored",
        );
        let head = RequestHead {
            method: &parts.method,
            uri: &parts.uri,
            headers: &parts.headers,
        };
        self.config.responder.respond(&rejection, &head)
    }

    /// Stores `entry` under `key` in every tier.
    pub(crate) fn put(self: &Arc<Self>, key: &Arc<str>, entry: Arc<Entry>) {
        tracing::debug!(%key, status = %entry.status, bytes = entry.body.len(), "cache store");
        // A read first: most stores have nothing to undo, and a write costs more.
        if self.any_hit_for_miss.load(Ordering::Acquire)
            && self.hit_for_miss.contains_key(key.as_ref())
        {
            self.hit_for_miss.invalidate(key);
        }
        #[cfg(feature = "redis")]
        self.put_remote(key, &entry);
        if let Some(memory) = &self.memory {
            memory.put(key, entry);
        }
    }

    /// Forgets every stored response for `key` in every tier.
    pub(crate) fn invalidate(self: &Arc<Self>, key: &str) {
        tracing::debug!(%key, "cache invalidate");
        if let Some(memory) = &self.memory {
            memory.invalidate(key);
        }
        #[cfg(feature = "redis")]
        self.invalidate_remote(key);
    }

    /// Invalidates the target and the same-origin `Location` and
    /// `Content-Location` of a successful unsafe request (RFC 9111 4.4).
    pub(crate) fn invalidate_after(
        self: &Arc<Self>,
        parts: &Parts,
        status: StatusCode,
        response: &HeaderMap,
    ) {
        if !(status.is_success() || status.is_redirection()) {
            return;
        }
        if let Some(key) = self.key(parts) {
            self.invalidate(&key);
        }
        let authority = parts
            .uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| parts.headers.get(HOST).and_then(|h| h.to_str().ok()))
            .unwrap_or("");
        let scheme = parts.uri.scheme_str().unwrap_or("http");
        for name in [http::header::LOCATION, http::header::CONTENT_LOCATION] {
            let Some(uri) = response
                .get(&name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<Uri>().ok())
            else {
                continue;
            };
            // Limitation: only absolute URIs and absolute paths are resolved;
            // relative references like `../x` are not invalidated.
            let same_origin = match uri.authority() {
                Some(other) => {
                    other.as_str().eq_ignore_ascii_case(authority)
                        && uri.scheme_str().unwrap_or(scheme) == scheme
                }
                None => uri.path().starts_with('/'),
            };
            if same_origin {
                if let Some(key) = self.key_for(scheme, authority, &uri, parts) {
                    self.invalidate(&key);
                }
            }
        }
    }

    /// Whether `key` recently got an uncacheable response (no collapsing for it).
    pub(crate) fn is_hit_for_miss(&self, key: &Arc<str>) -> bool {
        self.any_hit_for_miss.load(Ordering::Acquire)
            && self
                .hit_for_miss
                .get(key.as_ref())
                .is_some_and(|until| self.clock.now() < until)
    }

    /// Remembers that `key` got an uncacheable response.
    fn mark_hit_for_miss(&self, key: Arc<str>) {
        let until = self.clock.now() + self.config.hit_for_miss;
        self.any_hit_for_miss.store(true, Ordering::Release);
        self.hit_for_miss.insert(key, until);
    }

    /// Claims the one background refresh of `key`; `false` if one is running.
    pub(crate) fn start_refresh(&self, key: &Arc<str>) -> bool {
        self.refreshing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.clone())
    }

    /// Ends the background refresh of `key`.
    pub(crate) fn end_refresh(&self, key: &Arc<str>) {
        self.refreshing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
    }

    /// Takes a response from the origin: streamed through untouched when it
    /// cannot be stored (or is larger than the limit), else streamed while a copy
    /// is kept and stored at its end. Reports to the flight's waiters.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn admit<B>(
        self: &Arc<Self>,
        response: Response<B>,
        method: &Method,
        request_headers: HeaderMap,
        request_cc: &CacheControl,
        request_time: SystemTime,
        key: Arc<str>,
        leader: Option<Leader>,
    ) -> Response<TeeBody<B>>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
    {
        let response_time = self.now();
        let (parts, body) = response.into_parts();
        let cc = CacheControl::parse(&parts.headers);
        let mode = self.config.freshness.mode;
        let mut store = method == Method::GET
            && parts.status != StatusCode::NOT_MODIFIED
            && policy::storable(
                mode,
                &request_headers,
                request_cc,
                parts.status,
                &parts.headers,
                &cc,
            );
        if store {
            // A response that is stale on arrival and cannot be revalidated is of
            // no use later.
            let date = directives::date(&parts.headers);
            let lifetime = policy::freshness_lifetime(
                mode,
                parts.status,
                &parts.headers,
                &cc,
                date.unwrap_or(response_time),
                self.config.freshness.max_heuristic,
            );
            let age =
                policy::corrected_initial_age(&parts.headers, date, request_time, response_time);
            let validator = parts.headers.contains_key(http::header::ETAG)
                || parts.headers.contains_key(http::header::LAST_MODIFIED);
            store = lifetime > age
                || validator
                || cc.stale_while_revalidate.is_present()
                || cc.stale_if_error.is_present();
        }
        let too_large =
            content_length(&parts.headers).is_some_and(|len| len > self.config.max_body as u64);
        if !store || too_large {
            tracing::trace!(%key, status = %parts.status, too_large, "not stored");
            // Not for a 304 to the client's own conditional: the URL may well be
            // cacheable.
            if !request_cc.no_store
                && method == Method::GET
                && parts.status != StatusCode::NOT_MODIFIED
            {
                self.mark_hit_for_miss(key);
            }
            if let Some(leader) = leader {
                leader.finish(Outcome::Released);
            }
            return Response::from_parts(parts, TeeBody::pass(body));
        }
        let completion = Box::new(StoreAtEnd {
            shared: self.clone(),
            key,
            status: parts.status,
            version: parts.version,
            headers: parts.headers.clone(),
            request_headers,
            request_time,
            response_time,
            leader,
        });
        Response::from_parts(parts, TeeBody::tee(body, self.config.max_body, completion))
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Stores a teed response once its body has ended.
struct StoreAtEnd<C> {
    shared: Arc<Shared<C>>,
    key: Arc<str>,
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    request_headers: HeaderMap,
    request_time: SystemTime,
    response_time: SystemTime,
    leader: Option<Leader>,
}

impl<C: Clock> Completion for StoreAtEnd<C> {
    fn complete(self: Box<Self>, body: Option<Bytes>) {
        let this = *self;
        match body {
            Some(body) => {
                let mut headers = this.headers;
                let mut date_set = None;
                if !headers.contains_key(DATE) {
                    let date = httpdate::HttpDate::from(this.response_time);
                    headers.insert(
                        DATE,
                        http::HeaderValue::from_str(&date.to_string())
                            .expect("an HTTP date is a valid header value"),
                    );
                    date_set = Some(SystemTime::from(date));
                }
                let entry = Entry::new(
                    this.status,
                    this.version,
                    headers,
                    body,
                    &this.request_headers,
                    this.request_time,
                    this.response_time,
                    date_set,
                    &this.shared.config.freshness,
                );
                let entry = Arc::new(entry);
                this.shared.put(&this.key, entry.clone());
                if let Some(leader) = this.leader {
                    leader.finish(Outcome::Stored(entry));
                }
            }
            None => {
                tracing::trace!(key = %this.key, "response not stored: failed or too large");
                this.shared.mark_hit_for_miss(this.key.clone());
                if let Some(leader) = this.leader {
                    leader.finish(Outcome::Released);
                }
            }
        }
    }
}
