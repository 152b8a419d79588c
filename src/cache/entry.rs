//! A stored response and how it is served.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{
    AGE, CACHE_CONTROL, CONNECTION, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_LOCATION,
    CONTENT_RANGE, DATE, ETAG, EXPIRES, HeaderName, HeaderValue, TE, TRAILER, TRANSFER_ENCODING,
    UPGRADE, VARY,
};
use http::{HeaderMap, Response, StatusCode, Version};

use super::directives::{self, CacheControl};
use super::fields::{Fields, SHARED_BUFFER};
use super::policy::{self, Mode};
use super::vary::Vary;

/// The freshness settings that apply when an entry is built.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Freshness {
    pub(crate) mode: Mode,
    pub(crate) max_heuristic: Duration,
    pub(crate) stale_while_revalidate: Duration,
    pub(crate) stale_if_error: Duration,
}

/// A stored response: head, body, secondary key and the times its age is
/// computed from.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) status: StatusCode,
    pub(crate) version: Version,
    /// The stored fields, without `Age` (a hit sets its own).
    pub(crate) headers: Fields,
    pub(crate) body: Bytes,
    pub(crate) vary: Vary,
    /// When the response arrived (wall time of the cache).
    pub(crate) response_time: SystemTime,
    /// Its age on arrival.
    pub(crate) initial_age: Duration,
    /// How long it is fresh, counted from its generation.
    pub(crate) lifetime: Duration,
    /// `no-cache`: revalidate before every use.
    pub(crate) no_cache: bool,
    /// `must-revalidate` (or `proxy-revalidate` in shared mode): never serve stale.
    pub(crate) must_revalidate: bool,
    pub(crate) stale_while_revalidate: Duration,
    pub(crate) stale_if_error: Duration,
}

impl Entry {
    /// Builds an entry from a response head and its complete body.
    ///
    /// `date_set` is the value of the `Date` the caller has just put in
    /// `headers`, which spares reading it back.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        status: StatusCode,
        version: Version,
        mut headers: HeaderMap,
        body: Bytes,
        request_headers: &HeaderMap,
        request_time: SystemTime,
        response_time: SystemTime,
        date_set: Option<SystemTime>,
        freshness: &Freshness,
    ) -> Self {
        strip_hop_by_hop(&mut headers);
        let vary = Vary::new(&headers, request_headers);
        // `Connection` may have named `Date`, which is then gone.
        let date = match date_set {
            Some(date) if headers.contains_key(DATE) => Some(date),
            _ => directives::date(&headers),
        };
        Self::with_date(
            status,
            version,
            headers,
            body,
            vary,
            date,
            request_time,
            response_time,
            freshness,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn with_times(
        status: StatusCode,
        version: Version,
        headers: HeaderMap,
        body: Bytes,
        vary: Vary,
        request_time: SystemTime,
        response_time: SystemTime,
        freshness: &Freshness,
    ) -> Self {
        let date = directives::date(&headers);
        Self::with_date(
            status,
            version,
            headers,
            body,
            vary,
            date,
            request_time,
            response_time,
            freshness,
        )
    }

    /// `date` is the valid `Date` of `headers`, if any.
    #[allow(clippy::too_many_arguments)]
    fn with_date(
        status: StatusCode,
        version: Version,
        headers: HeaderMap,
        body: Bytes,
        vary: Vary,
        date: Option<SystemTime>,
        request_time: SystemTime,
        response_time: SystemTime,
        freshness: &Freshness,
    ) -> Self {
        let cc = CacheControl::parse(&headers);
        let lifetime = policy::freshness_lifetime(
            freshness.mode,
            status,
            &headers,
            &cc,
            date.unwrap_or(response_time),
            freshness.max_heuristic,
        );
        let initial_age =
            policy::corrected_initial_age(&headers, date, request_time, response_time);
        let headers = Fields::new(&headers, &AGE);
        let shared = freshness.mode == Mode::Shared;
        Entry {
            status,
            version,
            headers,
            body,
            vary,
            response_time,
            initial_age,
            lifetime,
            no_cache: cc.no_cache,
            must_revalidate: cc.must_revalidate || (shared && cc.proxy_revalidate),
            stale_while_revalidate: cc
                .stale_while_revalidate
                .seconds()
                .unwrap_or(freshness.stale_while_revalidate),
            stale_if_error: cc
                .stale_if_error
                .seconds()
                .unwrap_or(freshness.stale_if_error),
        }
    }

    /// Rebuilds an entry from its stored parts (a remote store).
    #[cfg(feature = "redis")]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn from_parts(
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        vary: Vary,
        request_time: SystemTime,
        response_time: SystemTime,
        freshness: &Freshness,
    ) -> Self {
        Self::with_times(
            status,
            Version::HTTP_11,
            headers,
            body,
            vary,
            request_time,
            response_time,
            freshness,
        )
    }

    /// The entry a 304 from the origin makes of this one (RFC 9111 4.3.4): its
    /// header fields replace the stored ones, except the framing fields; the body
    /// is the stored one (shared, not copied); age and freshness start again.
    pub(crate) fn freshen(
        &self,
        not_modified: &HeaderMap,
        request_time: SystemTime,
        response_time: SystemTime,
        freshness: &Freshness,
    ) -> Self {
        // The age starts again from what the 304 says (the stored fields have none).
        let mut headers = self.headers.to_map(not_modified.len());
        let mut update = not_modified.clone();
        strip_hop_by_hop(&mut update);
        for name in [CONTENT_LENGTH, CONTENT_ENCODING, CONTENT_RANGE] {
            update.remove(name);
        }
        // A 304 without `Date` is dated on arrival (RFC 9110 6.6.1), or the stored
        // `Date` would make the freshened response as old as the original.
        if directives::date(&update).is_none() {
            update.insert(
                DATE,
                HeaderValue::from_str(&httpdate::fmt_http_date(response_time))
                    .expect("an HTTP date is a valid header value"),
            );
        }
        let mut last: Option<HeaderName> = None;
        for (name, value) in update {
            let name = match name {
                Some(name) => {
                    headers.remove(&name);
                    last = Some(name.clone());
                    name
                }
                None => last.clone().expect("a header map yields a name first"),
            };
            headers.append(name, value);
        }
        Self::with_times(
            self.status,
            self.version,
            headers,
            self.body.clone(),
            self.vary.clone(),
            request_time,
            response_time,
            freshness,
        )
    }

    /// The age of the entry at `now` (RFC 9111 4.2.3).
    pub(crate) fn age(&self, now: SystemTime) -> Duration {
        self.initial_age + now.duration_since(self.response_time).unwrap_or_default()
    }

    /// Its `ETag`, if any.
    pub(crate) fn etag(&self) -> Option<&HeaderValue> {
        self.headers.get(&ETAG)
    }

    /// Its `Last-Modified`, if valid.
    pub(crate) fn last_modified(&self) -> Option<SystemTime> {
        directives::parse_date(self.headers.get(&http::header::LAST_MODIFIED)?)
    }

    /// Its `Date`, if valid.
    pub(crate) fn date(&self) -> Option<SystemTime> {
        directives::parse_date(self.headers.get(&DATE)?)
    }

    /// Whether it can be revalidated with a conditional request.
    pub(crate) fn has_validator(&self) -> bool {
        self.etag().is_some() || self.headers.contains_key(&http::header::LAST_MODIFIED)
    }

    /// How long after arrival the store may keep it: until it is stale past every
    /// window it can still be used in, or `keep_stale` past freshness when it can
    /// be revalidated.
    pub(crate) fn time_to_keep(&self, keep_stale: Duration) -> Duration {
        let fresh_for = self.lifetime.saturating_sub(self.initial_age);
        let mut extra = Duration::ZERO;
        if !self.must_revalidate {
            extra = self.stale_while_revalidate.max(self.stale_if_error);
        }
        if self.has_validator() {
            extra = extra.max(keep_stale);
        }
        fresh_for.saturating_add(extra)
    }

    /// The bytes the entry holds, for the store's weigher: itself in its `Arc`,
    /// its fields, its body buffer and its secondary key.
    pub(crate) fn weight(&self) -> usize {
        let body = match self.body.len() {
            0 => 0,
            len => len + SHARED_BUFFER,
        };
        std::mem::size_of::<Self>()
            + 2 * std::mem::size_of::<usize>()
            + self.headers.heap_size()
            + body
            + self.vary.heap_size()
    }

    /// The response a hit is served as: the stored head with `Age`, and the stored
    /// body (shared, not copied) unless `head_only`.
    pub(crate) fn to_response(&self, age: Duration, head_only: bool) -> Response<Bytes> {
        let body = if head_only {
            Bytes::new()
        } else {
            self.body.clone()
        };
        let mut response = Response::new(body);
        *response.status_mut() = self.status;
        *response.version_mut() = self.version;
        let mut headers = self.headers.to_map(1);
        headers.append(AGE, age_value(age));
        *response.headers_mut() = headers;
        response
    }

    /// A 304 for a client whose conditional matched the stored response, with the
    /// fields RFC 9110 15.4.5 asks for.
    pub(crate) fn to_not_modified(&self, age: Duration) -> Response<Bytes> {
        let mut response = Response::new(Bytes::new());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        let headers = response.headers_mut();
        for name in [
            CACHE_CONTROL,
            CONTENT_LOCATION,
            DATE,
            ETAG,
            EXPIRES,
            VARY,
            http::header::LAST_MODIFIED,
        ] {
            for value in self.headers.get_all(&name) {
                headers.append(name.clone(), value.clone());
            }
        }
        headers.insert(AGE, age_value(age));
        response
    }
}

/// `Age` in whole seconds; the first hundred without allocating.
fn age_value(age: Duration) -> HeaderValue {
    const SMALL: [&str; 100] = [
        "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
        "17", "18", "19", "20", "21", "22", "23", "24", "25", "26", "27", "28", "29", "30", "31",
        "32", "33", "34", "35", "36", "37", "38", "39", "40", "41", "42", "43", "44", "45", "46",
        "47", "48", "49", "50", "51", "52", "53", "54", "55", "56", "57", "58", "59", "60", "61",
        "62", "63", "64", "65", "66", "67", "68", "69", "70", "71", "72", "73", "74", "75", "76",
        "77", "78", "79", "80", "81", "82", "83", "84", "85", "86", "87", "88", "89", "90", "91",
        "92", "93", "94", "95", "96", "97", "98", "99",
    ];
    let secs = age.as_secs();
    match usize::try_from(secs).ok().and_then(|i| SMALL.get(i)) {
        Some(text) => HeaderValue::from_static(text),
        None => HeaderValue::from(secs),
    }
}

/// Removes the hop-by-hop fields from `headers`: `Connection` and every field it
/// names, `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`, `Transfer-Encoding`,
/// `Upgrade`, and every `Proxy-*` field. Such fields describe one connection, so
/// a cache never stores them and a proxy never forwards them.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most responses have none of them: one pass over the names, no removal.
    let hop_by_hop = |name: &HeaderName| match name.as_str() {
        "connection" | "te" | "trailer" | "transfer-encoding" | "upgrade" | "keep-alive" => true,
        other => other.starts_with("proxy-"),
    };
    if !headers.keys().any(hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [CONNECTION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    let proxy: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("proxy-"))
        .cloned()
        .collect();
    for name in proxy {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_connection_named_and_proxy_fields() {
        let mut headers = HeaderMap::new();
        headers.insert(CONNECTION, HeaderValue::from_static("x-hop, close"));
        headers.insert("x-hop", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("proxy-authenticate", HeaderValue::from_static("Basic"));
        headers.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        headers.insert("x-end", HeaderValue::from_static("kept"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert_eq!(headers["x-end"], "kept");
    }
}
