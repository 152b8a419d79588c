//! Reading `X-Forwarded-For` and `Forwarded` (RFC 7239) from the right.
//!
//! Written by hand: the crates that parse these headers read them left to right and
//! reject the whole header on the first bad element, while a client controls the
//! left part. Here only the elements actually needed are parsed, starting from the
//! right, so garbage a client put on the left is never looked at.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use http::header::{FORWARDED, HeaderName};

/// The longest `X-Forwarded-For` entry read: a bracketed IPv6 address with a port
/// and zone fits in 64 bytes.
const MAX_XFF_ENTRY: usize = 64;

/// The longest `Forwarded` element read, with its `by`, `proto` and `host` pairs.
const MAX_FORWARDED_ELEMENT: usize = 512;

/// Which header carries the chain of forwarded addresses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ProxyHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2`: the de facto standard.
    #[default]
    XForwardedFor,
    /// `Forwarded: for=client, for=proxy1` (RFC 7239).
    Forwarded,
}

impl ProxyHeader {
    fn name(self) -> HeaderName {
        match self {
            ProxyHeader::XForwardedFor => HeaderName::from_static("x-forwarded-for"),
            ProxyHeader::Forwarded => FORWARDED,
        }
    }
}

/// The addresses in the header, right-most first. `None` marks an element that is
/// not a plain IP address (garbage, `unknown`, an obfuscated node, too long).
pub(super) fn addresses_from_right(
    headers: &HeaderMap,
    header: ProxyHeader,
) -> impl Iterator<Item = Option<IpAddr>> + '_ {
    // Later header lines were appended by later proxies, so they come first.
    headers
        .get_all(header.name())
        .into_iter()
        .rev()
        .flat_map(move |line| {
            ElementsFromRight::new(line.as_bytes()).map(move |element| match header {
                ProxyHeader::XForwardedFor => parse_xff_entry(element),
                ProxyHeader::Forwarded => parse_forwarded_element(element),
            })
        })
}

/// Splits a list header at commas from the right, honouring quoted strings.
struct ElementsFromRight<'a> {
    rest: Option<&'a [u8]>,
}

impl<'a> ElementsFromRight<'a> {
    fn new(line: &'a [u8]) -> Self {
        ElementsFromRight { rest: Some(line) }
    }
}

impl<'a> Iterator for ElementsFromRight<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        loop {
            let rest = self.rest?;
            let mut quoted = false;
            let mut split = None;
            let mut i = rest.len();
            while i > 0 {
                i -= 1;
                match rest[i] {
                    b'"' if !is_escaped(rest, i) => quoted = !quoted,
                    b',' if !quoted => {
                        split = Some(i);
                        break;
                    }
                    _ => {}
                }
            }
            let element = match split {
                Some(i) => {
                    self.rest = Some(&rest[..i]);
                    &rest[i + 1..]
                }
                None => {
                    self.rest = None;
                    rest
                }
            };

            // Empty list elements are allowed by the list syntax and carry nothing.
            let element = trim(element);
            if !element.is_empty() {
                return Some(element);
            }
        }
    }
}

/// Whether the byte at `i` is preceded by an odd number of backslashes.
fn is_escaped(bytes: &[u8], i: usize) -> bool {
    bytes[..i].iter().rev().take_while(|&&b| b == b'\\').count() % 2 == 1
}

fn trim(bytes: &[u8]) -> &[u8] {
    let is_ws = |b: &u8| *b == b' ' || *b == b'\t';
    let start = bytes.iter().position(|b| !is_ws(b)).unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !is_ws(b))
        .map_or(start, |e| e + 1);
    &bytes[start..end]
}

/// An address as proxies write it: `192.0.2.1`, `192.0.2.1:8080`, `2001:db8::1`,
/// `[2001:db8::1]` or `[2001:db8::1]:8080`.
fn parse_node(node: &[u8]) -> Option<IpAddr> {
    if node.len() > MAX_XFF_ENTRY {
        return None;
    }
    let text = std::str::from_utf8(node).ok()?;
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(socket) = text.parse::<SocketAddr>() {
        return Some(socket.ip());
    }
    text.strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .and_then(|t| t.parse::<std::net::Ipv6Addr>().ok())
        .map(IpAddr::V6)
}

fn parse_xff_entry(entry: &[u8]) -> Option<IpAddr> {
    parse_node(entry)
}

/// The `for` node of one `Forwarded` element (`for=...;proto=...;by=...`).
/// Elements without exactly one `for`, and `unknown` or obfuscated (`_name`) nodes,
/// are not addresses.
fn parse_forwarded_element(element: &[u8]) -> Option<IpAddr> {
    if element.len() > MAX_FORWARDED_ELEMENT {
        return None;
    }
    let mut found = None;
    for pair in split_unquoted(element, b';') {
        let pair = trim(pair);
        let eq = pair.iter().position(|&b| b == b'=')?;
        let (name, value) = (trim(&pair[..eq]), trim(&pair[eq + 1..]));
        if !name.eq_ignore_ascii_case(b"for") {
            continue;
        }
        if found.is_some() {
            // RFC 7239 section 4: a parameter occurs at most once per element.
            return None;
        }
        found = Some(value);
    }

    let value = found?;
    let mut unquoted = [0u8; MAX_XFF_ENTRY];
    let node = match value {
        [b'"', inner @ .., b'"'] => unescape(inner, &mut unquoted)?,
        [b'"', ..] => return None,
        _ => value,
    };
    if node.first() == Some(&b'_') || node.eq_ignore_ascii_case(b"unknown") {
        return None;
    }
    parse_node(node)
}

/// Removes quoted-pair escapes into `buf`; `None` if the result does not fit.
fn unescape<'b>(quoted: &[u8], buf: &'b mut [u8; MAX_XFF_ENTRY]) -> Option<&'b [u8]> {
    let mut len = 0;
    let mut bytes = quoted.iter();
    while let Some(&b) = bytes.next() {
        let b = if b == b'\\' { *bytes.next()? } else { b };
        *buf.get_mut(len)? = b;
        len += 1;
    }
    Some(&buf[..len])
}

/// Splits at `sep` outside quoted strings.
fn split_unquoted(bytes: &[u8], sep: u8) -> impl Iterator<Item = &[u8]> {
    let mut quoted = false;
    let mut escaped = false;
    bytes.split(move |&b| {
        if escaped {
            escaped = false;
            return false;
        }
        match b {
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            _ => {}
        }
        b == sep && !quoted
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    fn from_right(header: ProxyHeader, lines: &[&'static [u8]]) -> Vec<Option<IpAddr>> {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append(header.name(), HeaderValue::from_bytes(line).unwrap());
        }
        addresses_from_right(&headers, header).collect()
    }

    #[test]
    fn xff_entries_come_right_to_left_across_lines() {
        let got = from_right(
            ProxyHeader::XForwardedFor,
            &[b"1.1.1.1, 2.2.2.2", b" 3.3.3.3 ,,[2001:db8::1]:443 "],
        );
        assert_eq!(
            got,
            vec![
                ip("2001:db8::1"),
                ip("3.3.3.3"),
                ip("2.2.2.2"),
                ip("1.1.1.1")
            ]
        );
    }

    #[test]
    fn xff_accepts_ports_and_brackets() {
        assert_eq!(parse_xff_entry(b"192.0.2.1:8080"), ip("192.0.2.1"));
        assert_eq!(parse_xff_entry(b"[2001:db8::5]"), ip("2001:db8::5"));
        assert_eq!(parse_xff_entry(b"2001:db8::5"), ip("2001:db8::5"));
        assert_eq!(parse_xff_entry(b"not-an-ip"), None);
        assert_eq!(parse_xff_entry(b"300.1.1.1"), None);
        assert_eq!(parse_xff_entry(&[b'1'; 65]), None);
    }

    #[test]
    fn forwarded_reads_for_nodes_and_refuses_obfuscated_ones() {
        let got = from_right(
            ProxyHeader::Forwarded,
            &[b"for=192.0.2.60;proto=http;by=203.0.113.43, For=\"[2001:db8:cafe::17]:4711\", for=_hidden, for=unknown, proto=https"],
        );
        assert_eq!(
            got,
            vec![None, None, None, ip("2001:db8:cafe::17"), ip("192.0.2.60")]
        );
    }

    #[test]
    fn forwarded_quotes_protect_commas_and_unbalanced_quotes_stay_left() {
        // An unbalanced quote written by the client on the left cannot swallow the
        // elements the proxies appended on the right.
        let got = from_right(
            ProxyHeader::Forwarded,
            &[b"for=\"1.1.1.1, for=9.9.9.9;host=\"a,b\", for=\"10.0.0.1:80\""],
        );
        assert_eq!(got[0], ip("10.0.0.1"));
        assert_eq!(got[1], ip("9.9.9.9"));
    }

    #[test]
    fn forwarded_duplicate_for_is_malformed() {
        assert_eq!(parse_forwarded_element(b"for=1.1.1.1;for=2.2.2.2"), None);
        assert_eq!(parse_forwarded_element(b"for=\"1.1.1.1"), None);
        assert_eq!(parse_forwarded_element(b"for=\"1.1.1.\\1\""), ip("1.1.1.1"));
    }
}
