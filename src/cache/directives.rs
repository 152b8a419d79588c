//! Parsing of the header fields freshness depends on: `Cache-Control`, `Age`,
//! `Date`, `Expires`, `Last-Modified`, `Pragma`.
//!
//! The grammar is RFC 9111 section 5.2 (`#cache-directive`, each `token [ "="
//! ( token / quoted-string ) ]`), read across every field line. Choices where the
//! RFC leaves one:
//!
//! - a directive given twice: the first occurrence wins;
//! - a `delta-seconds` argument may be quoted (`max-age="60"`); one that is negative,
//!   fractional or not a number is invalid, and an invalid freshness directive makes
//!   the response stale (it may still be revalidated); one too large for 31 bits
//!   reads as 2^31 seconds;
//! - a response whose `Cache-Control` cannot be parsed at all (a member that is not
//!   a token, an unterminated quote) is never stored: a directive we could not read
//!   might have been `no-store`;
//! - an invalid `Expires` (including `0`) means already expired; an invalid `Age` is
//!   ignored and a list-valued one uses its first member; an invalid `Date` is
//!   replaced by the time the response arrived.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use http::header::{AGE, CACHE_CONTROL, DATE, EXPIRES, LAST_MODIFIED, PRAGMA};

/// The largest `delta-seconds` value: larger ones read as this (RFC 9111 1.2.2).
pub(crate) const DELTA_SECONDS_MAX: u64 = 1 << 31;

/// The length of the longest directive the cache acts on,
/// `stale-while-revalidate`.
const LONGEST_DIRECTIVE: usize = "stale-while-revalidate".len();

/// A directive's argument as read: absent, a valid number of seconds, or present
/// but invalid.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Delta {
    /// The directive is absent.
    #[default]
    Absent,
    /// The directive is present without an argument (`max-stale`).
    Bare,
    /// A valid argument.
    Seconds(u64),
    /// Present with an argument that is not a non-negative integer.
    Invalid,
}

impl Delta {
    pub(crate) fn is_present(self) -> bool {
        self != Delta::Absent
    }

    /// The valid argument, if any.
    pub(crate) fn seconds(self) -> Option<Duration> {
        match self {
            Delta::Seconds(s) => Some(Duration::from_secs(s)),
            _ => None,
        }
    }
}

/// The `Cache-Control` directives the cache acts on, from a request or a response.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct CacheControl {
    /// A member could not be parsed.
    pub(crate) malformed: bool,
    pub(crate) no_store: bool,
    pub(crate) no_cache: bool,
    pub(crate) private: bool,
    pub(crate) public: bool,
    pub(crate) must_revalidate: bool,
    pub(crate) proxy_revalidate: bool,
    pub(crate) must_understand: bool,
    pub(crate) only_if_cached: bool,
    pub(crate) max_age: Delta,
    pub(crate) s_maxage: Delta,
    pub(crate) max_stale: Delta,
    pub(crate) min_fresh: Delta,
    pub(crate) stale_while_revalidate: Delta,
    pub(crate) stale_if_error: Delta,
}

impl CacheControl {
    /// Parses every `Cache-Control` line of `headers`.
    pub(crate) fn parse(headers: &HeaderMap) -> Self {
        let mut cc = CacheControl::default();
        for line in headers.get_all(CACHE_CONTROL) {
            match line.to_str() {
                Ok(text) => cc.parse_line(text),
                Err(_) => cc.malformed = true,
            }
        }
        cc
    }

    fn parse_line(&mut self, text: &str) {
        // Every delimiter is ASCII, so the positions found in the bytes are
        // character boundaries of `text`.
        let bytes = text.as_bytes();
        let mut at = 0;
        loop {
            at = skip(bytes, at, |b| matches!(b, b' ' | b'\t' | b','));
            if at == bytes.len() {
                return;
            }
            let name_start = at;
            at = skip(bytes, at, |b| !matches!(b, b'=' | b',' | b' ' | b'\t'));
            let name = &text[name_start..at];
            if name.is_empty() || !name.bytes().all(is_tchar) {
                self.malformed = true;
                return;
            }
            at = skip(bytes, at, is_ows);
            let mut argument: Option<&str> = None;
            let mut quoted = String::new();
            if bytes.get(at) == Some(&b'=') {
                at = skip(bytes, at + 1, is_ows);
                if bytes.get(at) == Some(&b'"') {
                    match read_quoted(&text[at + 1..], &mut quoted) {
                        Some(len) => {
                            at += 1 + len;
                            argument = Some(quoted.as_str());
                        }
                        None => {
                            self.malformed = true;
                            return;
                        }
                    }
                } else {
                    let token_start = at;
                    at = skip(bytes, at, |b| !matches!(b, b',' | b' ' | b'\t'));
                    let token = &text[token_start..at];
                    if token.is_empty() || !token.bytes().all(is_tchar) {
                        self.malformed = true;
                        return;
                    }
                    argument = Some(token);
                }
            }

            // Anything but a separator after a member is garbage.
            at = skip(bytes, at, is_ows);
            if bytes.get(at).is_some_and(|&b| b != b',') {
                self.malformed = true;
                return;
            }
            self.apply(name, argument);
        }
    }

    fn apply(&mut self, name: &str, argument: Option<&str>) {
        let flag = |slot: &mut bool| *slot = true;
        let delta = |slot: &mut Delta| {
            if *slot == Delta::Absent {
                *slot = match argument {
                    None => Delta::Bare,
                    Some(text) => parse_delta(text).map_or(Delta::Invalid, Delta::Seconds),
                };
            }
        };
        // Lowercased on the stack: a name longer than every known directive is
        // one we ignore anyway.
        let mut buffer = [0u8; LONGEST_DIRECTIVE];
        let Some(lower) = buffer.get_mut(..name.len()) else {
            return;
        };
        lower.copy_from_slice(name.as_bytes());
        lower.make_ascii_lowercase();
        match &*lower {
            b"no-store" => flag(&mut self.no_store),
            b"no-cache" => flag(&mut self.no_cache),
            b"private" => flag(&mut self.private),
            b"public" => flag(&mut self.public),
            b"must-revalidate" => flag(&mut self.must_revalidate),
            b"proxy-revalidate" => flag(&mut self.proxy_revalidate),
            b"must-understand" => flag(&mut self.must_understand),
            b"only-if-cached" => flag(&mut self.only_if_cached),
            b"max-age" => delta(&mut self.max_age),
            b"s-maxage" => delta(&mut self.s_maxage),
            b"max-stale" => delta(&mut self.max_stale),
            b"min-fresh" => delta(&mut self.min_fresh),
            b"stale-while-revalidate" => delta(&mut self.stale_while_revalidate),
            b"stale-if-error" => delta(&mut self.stale_if_error),
            _ => {}
        }
    }

    /// Request directives: `Pragma: no-cache` counts as `no-cache` when the request
    /// has no `Cache-Control` (RFC 9111 5.4).
    pub(crate) fn parse_request(headers: &HeaderMap) -> Self {
        // Most requests carry neither field; spare them the lookups.
        if headers.is_empty() {
            return Self::default();
        }
        let mut cc = Self::parse(headers);
        if !headers.contains_key(CACHE_CONTROL)
            && headers
                .get_all(PRAGMA)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|v| v.trim().eq_ignore_ascii_case("no-cache"))
        {
            cc.no_cache = true;
        }
        cc
    }
}

/// Reads a quoted-string body (after the opening quote) into `out`; returns the
/// length consumed including the closing quote.
fn read_quoted(body: &str, out: &mut String) -> Option<usize> {
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some(i + 1),
            '\\' => out.push(chars.next()?.1),
            c => out.push(c),
        }
    }
    None
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

/// RFC 9110 optional whitespace: a space or a tab.
fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// The position of the first byte from `at` on that is not `skipped`.
fn skip(bytes: &[u8], mut at: usize, skipped: impl Fn(u8) -> bool) -> usize {
    while bytes.get(at).is_some_and(|&b| skipped(b)) {
        at += 1;
    }
    at
}

/// Parses `delta-seconds`: digits only, saturating at 2^31.
pub(crate) fn parse_delta(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut value: u64 = 0;
    for b in text.bytes() {
        value = value.saturating_mul(10).saturating_add(u64::from(b - b'0'));
    }
    Some(value.min(DELTA_SECONDS_MAX))
}

/// The `Age` value in seconds: the first member of the first line, ignored when
/// invalid.
pub(crate) fn parse_age(headers: &HeaderMap) -> Option<u64> {
    let first = headers.get(AGE)?.to_str().ok()?;
    parse_delta(first.split(',').next()?.trim())
}

/// An HTTP date (IMF-fixdate and the two obsolete forms).
pub(crate) fn parse_date(value: &http::HeaderValue) -> Option<SystemTime> {
    httpdate::parse_http_date(value.to_str().ok()?.trim()).ok()
}

/// `Date`, if present and valid.
pub(crate) fn date(headers: &HeaderMap) -> Option<SystemTime> {
    parse_date(headers.get(DATE)?)
}

/// `Last-Modified`, if present and valid.
pub(crate) fn last_modified(headers: &HeaderMap) -> Option<SystemTime> {
    parse_date(headers.get(LAST_MODIFIED)?)
}

/// `Expires` as read: `None` when absent, `Some(UNIX_EPOCH)` (long past) when
/// invalid.
pub(crate) fn expires(headers: &HeaderMap) -> Option<SystemTime> {
    let value = headers.get(EXPIRES)?;
    Some(parse_date(value).unwrap_or(UNIX_EPOCH))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn cc(lines: &[&str]) -> CacheControl {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append(CACHE_CONTROL, HeaderValue::from_str(line).unwrap());
        }
        CacheControl::parse(&headers)
    }

    #[test]
    fn reads_directives_across_lines_case_insensitively() {
        let parsed = cc(&["Max-Age=60, PUBLIC", "s-maxage=\"120\""]);
        assert_eq!(parsed.max_age, Delta::Seconds(60));
        assert_eq!(parsed.s_maxage, Delta::Seconds(120));
        assert!(parsed.public && !parsed.malformed);
    }

    #[test]
    fn names_longer_than_every_known_directive_are_ignored() {
        let parsed = cc(&["x-an-extension-longer-than-any-directive=1, max-age=5"]);
        assert_eq!(parsed.max_age, Delta::Seconds(5));
        assert!(!parsed.malformed);
    }

    #[test]
    fn first_occurrence_of_a_directive_wins() {
        assert_eq!(cc(&["max-age=5, max-age=500"]).max_age, Delta::Seconds(5));
        assert_eq!(cc(&["max-age=x", "max-age=500"]).max_age, Delta::Invalid);
    }

    #[test]
    fn negative_fractional_and_empty_deltas_are_invalid() {
        for bad in ["max-age=-1", "max-age=1.5", "max-age=\"\"", "max-age=+3"] {
            assert_eq!(cc(&[bad]).max_age, Delta::Invalid, "{bad}");
        }
    }

    #[test]
    fn overflowing_delta_reads_as_two_to_the_thirty_one() {
        let parsed = cc(&["max-age=99999999999999999999999999"]);
        assert_eq!(parsed.max_age, Delta::Seconds(DELTA_SECONDS_MAX));
    }

    #[test]
    fn garbage_marks_the_field_malformed() {
        assert!(cc(&["max-age=60 garbage"]).malformed);
        assert!(cc(&["no-store=\"unterminated"]).malformed);
        assert!(cc(&["(no-store)"]).malformed);
        assert!(!cc(&["private=\"set-cookie, x\", max-age=3"]).malformed);
    }

    #[test]
    fn age_uses_the_first_member_and_ignores_garbage() {
        let mut headers = HeaderMap::new();
        headers.insert(AGE, HeaderValue::from_static("10, 20"));
        assert_eq!(parse_age(&headers), Some(10));
        headers.insert(AGE, HeaderValue::from_static("-3"));
        assert_eq!(parse_age(&headers), None);
    }

    #[test]
    fn invalid_expires_is_in_the_past() {
        let mut headers = HeaderMap::new();
        headers.insert(EXPIRES, HeaderValue::from_static("0"));
        assert_eq!(expires(&headers), Some(UNIX_EPOCH));
    }
}
