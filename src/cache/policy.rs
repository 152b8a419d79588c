//! Storability, freshness and age: RFC 9111 sections 3 and 4.2.

use std::time::{Duration, SystemTime};

use http::header::{AUTHORIZATION, RANGE};
use http::{HeaderMap, Method, StatusCode};

use super::directives::{self, CacheControl, Delta};

/// Whose responses the cache holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// A shared cache (a proxy, a CDN, a cache in front of a public API): responses
    /// marked `private`, and answers to requests with `Authorization` unless the
    /// response allows it, are never stored; `s-maxage` and `proxy-revalidate` apply.
    /// The default.
    #[default]
    Shared,
    /// A private cache, for one user (a client-side cache): `private` responses are
    /// stored; `s-maxage` and `proxy-revalidate` are ignored.
    Private,
}

/// The status codes whose responses may be given heuristic freshness
/// (RFC 9110 15.1), less 206, which the cache does not store.
pub(crate) fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// The status codes the cache understands well enough to store (the meaning of
/// `must-understand`): the heuristically cacheable ones and the other redirects.
fn understood(status: StatusCode) -> bool {
    heuristically_cacheable(status) || matches!(status.as_u16(), 302 | 303 | 307)
}

/// Whether the request may be answered from, or stored in, the cache at all:
/// `GET` and `HEAD` without `Range`.
pub(crate) fn request_is_cacheable(method: &Method, headers: &HeaderMap) -> bool {
    (method == Method::GET || method == Method::HEAD) && !headers.contains_key(RANGE)
}

/// Whether a response to a `GET` may be stored (RFC 9111 section 3).
///
/// `POST` responses are never stored, and `HEAD` responses are not stored either
/// (a later `GET` could not be served from them).
pub(crate) fn storable(
    mode: Mode,
    request_headers: &HeaderMap,
    request_cc: &CacheControl,
    status: StatusCode,
    response_headers: &HeaderMap,
    cc: &CacheControl,
) -> bool {
    if cc.malformed || request_cc.no_store {
        return false;
    }
    if status.is_informational() || status == StatusCode::PARTIAL_CONTENT {
        return false;
    }
    if cc.must_understand {
        // `must-understand` overrides `no-store` for status codes we understand.
        if !understood(status) {
            return false;
        }
    } else if cc.no_store {
        return false;
    }
    let shared = mode == Mode::Shared;
    if shared && cc.private {
        return false;
    }
    if shared
        && request_headers.contains_key(AUTHORIZATION)
        && !(cc.public || cc.must_revalidate || cc.s_maxage.is_present())
    {
        return false;
    }
    if vary_star(response_headers) {
        return false;
    }
    cc.public
        || (!shared && cc.private)
        || response_headers.contains_key(http::header::EXPIRES)
        || cc.max_age.is_present()
        || (shared && cc.s_maxage.is_present())
        || heuristically_cacheable(status)
}

/// `Vary: *`: no later request can match, so storing is pointless. A `Vary` we
/// cannot read (a member that is not a field name) counts as `*`: ignoring the
/// member would let requests match that the origin told apart.
pub(crate) fn vary_star(headers: &HeaderMap) -> bool {
    headers.get_all(http::header::VARY).iter().any(|line| {
        let Ok(text) = line.to_str() else {
            return true;
        };
        text.split(',').map(str::trim).any(|member| {
            member == "*"
                || (!member.is_empty() && http::HeaderName::from_bytes(member.as_bytes()).is_err())
        })
    })
}

/// The longest heuristic freshness the cache assigns by default: one day.
pub(crate) const DEFAULT_MAX_HEURISTIC: Duration = Duration::from_secs(86_400);

/// How long a response stays fresh from its generation (RFC 9111 4.2.1):
/// `s-maxage` (shared mode) over `max-age` over `Expires` minus `Date`, else 10 %
/// of the time since `Last-Modified` (capped at `max_heuristic`) where allowed,
/// else zero.
///
/// `date` is the response's `Date`, or the time it arrived when it had none.
pub(crate) fn freshness_lifetime(
    mode: Mode,
    status: StatusCode,
    headers: &HeaderMap,
    cc: &CacheControl,
    date: SystemTime,
    max_heuristic: Duration,
) -> Duration {
    let explicit = |delta: Delta| match delta {
        Delta::Seconds(s) => Some(Duration::from_secs(s)),
        Delta::Bare | Delta::Invalid => Some(Duration::ZERO),
        Delta::Absent => None,
    };
    if mode == Mode::Shared {
        if let Some(lifetime) = explicit(cc.s_maxage) {
            return lifetime;
        }
    }
    if let Some(lifetime) = explicit(cc.max_age) {
        return lifetime;
    }
    if let Some(expires) = directives::expires(headers) {
        return expires.duration_since(date).unwrap_or(Duration::ZERO);
    }
    if heuristically_cacheable(status) || cc.public {
        if let Some(modified) = directives::last_modified(headers) {
            let since = date.duration_since(modified).unwrap_or(Duration::ZERO);
            return (since / 10).min(max_heuristic);
        }
    }
    Duration::ZERO
}

/// The age of a response when it arrived (RFC 9111 4.2.3): the larger of the
/// apparent age (`response_time - Date`) and the `Age` it carried (zero when
/// absent or invalid) plus the time the request took.
///
/// `date` is the response's valid `Date`, if any.
pub(crate) fn corrected_initial_age(
    headers: &HeaderMap,
    date: Option<SystemTime>,
    request_time: SystemTime,
    response_time: SystemTime,
) -> Duration {
    let apparent = date
        .and_then(|date| response_time.duration_since(date).ok())
        .unwrap_or(Duration::ZERO);
    let delay = response_time
        .duration_since(request_time)
        .unwrap_or(Duration::ZERO);
    let corrected = Duration::from_secs(directives::parse_age(headers).unwrap_or(0)) + delay;
    apparent.max(corrected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use http::header::{CACHE_CONTROL, DATE, EXPIRES, LAST_MODIFIED};
    use std::time::UNIX_EPOCH;

    fn headers(pairs: &[(http::HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(name.clone(), HeaderValue::from_str(value).unwrap());
        }
        map
    }

    fn lifetime(mode: Mode, map: &HeaderMap) -> Duration {
        let date = directives::date(map).unwrap_or(UNIX_EPOCH);
        let cc = CacheControl::parse(map);
        freshness_lifetime(mode, StatusCode::OK, map, &cc, date, DEFAULT_MAX_HEURISTIC)
    }

    #[test]
    fn s_maxage_beats_max_age_beats_expires_in_shared_mode() {
        let map = headers(&[
            (CACHE_CONTROL, "max-age=60, s-maxage=600"),
            (DATE, "Thu, 01 Jan 2026 00:00:00 GMT"),
            (EXPIRES, "Thu, 01 Jan 2026 01:00:00 GMT"),
        ]);
        assert_eq!(lifetime(Mode::Shared, &map), Duration::from_secs(600));
        assert_eq!(lifetime(Mode::Private, &map), Duration::from_secs(60));
    }

    #[test]
    fn expires_minus_date_when_no_max_age() {
        let map = headers(&[
            (DATE, "Thu, 01 Jan 2026 00:00:00 GMT"),
            (EXPIRES, "Thu, 01 Jan 2026 01:00:00 GMT"),
        ]);
        assert_eq!(lifetime(Mode::Shared, &map), Duration::from_secs(3600));
    }

    #[test]
    fn heuristic_is_a_tenth_of_the_time_since_last_modified() {
        let map = headers(&[
            (DATE, "Thu, 01 Jan 2026 10:00:00 GMT"),
            (LAST_MODIFIED, "Thu, 01 Jan 2026 00:00:00 GMT"),
        ]);
        assert_eq!(lifetime(Mode::Shared, &map), Duration::from_secs(3600));
    }

    #[test]
    fn corrected_initial_age_takes_the_larger_estimate() {
        let map = headers(&[
            (DATE, "Thu, 01 Jan 1970 00:00:10 GMT"),
            (http::header::AGE, "3"),
        ]);
        let request = UNIX_EPOCH + Duration::from_secs(11);
        let response = UNIX_EPOCH + Duration::from_secs(12);
        // apparent 2 s, corrected 3 + 1 = 4 s
        assert_eq!(
            corrected_initial_age(&map, directives::date(&map), request, response),
            Duration::from_secs(4)
        );
    }
}
