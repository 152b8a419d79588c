//! Clients' conditional requests answered from a stored response (RFC 9110 13).

use std::time::SystemTime;

use http::header::{IF_MODIFIED_SINCE, IF_NONE_MATCH};
use http::{HeaderMap, HeaderValue};

use super::directives;

/// Whether a `GET` or `HEAD` with `request` headers should get a 304 for a stored
/// response with validator `etag` and `last_modified`.
///
/// `If-None-Match` is evaluated first with the weak comparison (`W/"a"` matches
/// `"a"`), members of a list each count, `*` matches any stored response; when it
/// is present `If-Modified-Since` is ignored. A malformed `If-None-Match` member
/// never matches; an invalid `If-Modified-Since` is ignored.
pub(crate) fn not_modified(
    request: &HeaderMap,
    etag: Option<&HeaderValue>,
    last_modified: Option<SystemTime>,
) -> bool {
    if request.contains_key(IF_NONE_MATCH) {
        return request
            .get_all(IF_NONE_MATCH)
            .iter()
            .any(|line| none_match_line(line.as_bytes(), etag.map(HeaderValue::as_bytes)));
    }
    match (request.get(IF_MODIFIED_SINCE), last_modified) {
        (Some(since), Some(modified)) => {
            directives::parse_date(since).is_some_and(|since| modified <= since)
        }
        _ => false,
    }
}

fn none_match_line(line: &[u8], etag: Option<&[u8]>) -> bool {
    let trimmed = line.trim_ascii();
    if trimmed == b"*" {
        return true;
    }
    let Some(stored) = etag.and_then(opaque_tag) else {
        return false;
    };
    trimmed
        .split(|&b| b == b',')
        .filter_map(|member| opaque_tag(member.trim_ascii()))
        .any(|tag| tag == stored)
}

/// The opaque tag of an entity tag (`W/"x"` and `"x"` both give `"x"`), or `None`
/// when it is not a valid entity tag.
pub(crate) fn opaque_tag(tag: &[u8]) -> Option<&[u8]> {
    let tag = tag.strip_prefix(b"W/").unwrap_or(tag);
    let valid = tag.len() >= 2
        && tag[0] == b'"'
        && tag[tag.len() - 1] == b'"'
        && tag[1..tag.len() - 1]
            .iter()
            .all(|&b| b == 0x21 || (0x23..=0x7e).contains(&b) || b >= 0x80);
    valid.then_some(tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inm(value: &'static str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(IF_NONE_MATCH, HeaderValue::from_static(value));
        map
    }

    #[test]
    fn weak_comparison_lists_and_star() {
        let etag = HeaderValue::from_static("\"v1\"");
        assert!(not_modified(&inm("W/\"v1\""), Some(&etag), None));
        assert!(not_modified(&inm("\"x\", \"v1\""), Some(&etag), None));
        assert!(not_modified(&inm("*"), None, None));
        assert!(!not_modified(&inm("\"v2\""), Some(&etag), None));
        assert!(!not_modified(&inm("v1"), Some(&etag), None));
    }
}
