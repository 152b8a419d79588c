//! Secondary keys: the request header values a response varies on (RFC 9111 4.1).

use http::header::VARY;
use http::{HeaderMap, HeaderName};

/// The request header values a stored response was selected by.
///
/// Values are normalised before comparison: lines are joined, list members are
/// trimmed of whitespace and joined with `", "`, so `gzip,br` matches
/// `gzip, br` and two field lines match one. Names are compared case-insensitively.
/// A response with `Vary: *` is never stored, so it never matches.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Vary {
    fields: Vec<(HeaderName, Option<String>)>,
}

impl Vary {
    /// The secondary key of `request` for a response with `response` headers.
    pub(crate) fn new(response: &HeaderMap, request: &HeaderMap) -> Self {
        let mut fields: Vec<(HeaderName, Option<String>)> = Vec::new();
        for name in names(response) {
            if !fields.iter().any(|(n, _)| *n == name) {
                let value = normalise(request, &name);
                fields.push((name, value));
            }
        }
        Vary { fields }
    }

    /// Rebuilds a secondary key from stored parts.
    #[cfg(feature = "redis")]
    pub(crate) fn from_fields(fields: Vec<(HeaderName, Option<String>)>) -> Self {
        Vary { fields }
    }

    /// The stored parts.
    #[cfg(feature = "redis")]
    pub(crate) fn fields(&self) -> &[(HeaderName, Option<String>)] {
        &self.fields
    }

    /// Whether `request` selects the same response.
    pub(crate) fn matches(&self, request: &HeaderMap) -> bool {
        self.fields
            .iter()
            .all(|(name, value)| normalise(request, name).as_deref() == value.as_deref())
    }

    /// Bytes held beyond the struct itself, for the store's weigher.
    pub(crate) fn heap_size(&self) -> usize {
        self.fields
            .iter()
            .map(|(n, v)| n.as_str().len() + v.as_ref().map_or(0, String::len) + 56)
            .sum()
    }
}

fn names(response: &HeaderMap) -> impl Iterator<Item = HeaderName> + '_ {
    response
        .get_all(VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
}

fn normalise(request: &HeaderMap, name: &HeaderName) -> Option<String> {
    let mut values = request.get_all(name).iter().peekable();
    values.peek()?;
    let mut out = String::new();
    for value in values {
        // Bytes outside visible ASCII are kept (lossily) rather than dropped, so two
        // different values never normalise to the same key by losing their bytes.
        let text = String::from_utf8_lossy(value.as_bytes());
        for member in text.split(',') {
            let member = member.trim();
            if member.is_empty() {
                continue;
            }
            if !out.is_empty() {
                out.push_str(", ");
            }
            out.push_str(member);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn normalised_values_match_across_spacing_and_lines() {
        let mut response = HeaderMap::new();
        response.insert(VARY, HeaderValue::from_static("Accept-Encoding"));
        let mut first = HeaderMap::new();
        first.insert("accept-encoding", HeaderValue::from_static("gzip,br"));
        let vary = Vary::new(&response, &first);

        let mut second = HeaderMap::new();
        second.append("accept-encoding", HeaderValue::from_static("gzip"));
        second.append("accept-encoding", HeaderValue::from_static(" br"));
        assert!(vary.matches(&second));

        let mut third = HeaderMap::new();
        third.insert("accept-encoding", HeaderValue::from_static("br"));
        assert!(!vary.matches(&third));
        assert!(!vary.matches(&HeaderMap::new()));
    }
}
