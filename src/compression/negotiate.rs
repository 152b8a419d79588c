//! `Accept-Encoding` negotiation (RFC 9110, section 12.5.3).

use http::HeaderMap;
use http::header::ACCEPT_ENCODING;

use super::coding::Coding;

/// The order in which the server prefers codings the client likes equally.
///
/// The default is zstd, br, gzip, deflate: the fastest to compress well first.
/// Codings left out of the list are never used for responses.
///
/// ```
/// use tower_toolbox::compression::{Coding, Preference};
///
/// // Brotli first for a site that serves mostly static text.
/// let preference = Preference::new([Coding::Brotli, Coding::Zstd, Coding::Gzip]);
/// assert_eq!(preference.codings().next(), Some(Coding::Brotli));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Preference {
    order: [Option<Coding>; 4],
}

impl Preference {
    /// Codings in decreasing preference; repeats are ignored, and codings whose
    /// feature is off are skipped.
    pub fn new(codings: impl IntoIterator<Item = Coding>) -> Self {
        let mut order = [None; 4];
        let mut len = 0;
        for coding in codings {
            if len < order.len() && coding.is_enabled() && !order[..len].contains(&Some(coding)) {
                order[len] = Some(coding);
                len += 1;
            }
        }
        Preference { order }
    }

    /// The codings in order, most preferred first.
    pub fn codings(&self) -> impl Iterator<Item = Coding> + '_ {
        self.order.iter().map_while(|c| *c)
    }
}

impl Default for Preference {
    fn default() -> Self {
        Preference::new(Coding::ALL)
    }
}

/// What the client accepts, by `Accept-Encoding`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Accepted {
    /// q-value (in thousandths) of each coding named explicitly, by `Coding::index`.
    codings: [Option<u16>; 4],
    identity: Option<u16>,
    star: Option<u16>,
}

/// The outcome of negotiation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Negotiated {
    /// Compress with this coding.
    Coding(Coding),
    /// Send the content as it is.
    Identity,
    /// The client refuses identity and every coding on offer: answer 406.
    NotAcceptable,
}

impl Accepted {
    /// Reads every `Accept-Encoding` field line of `headers`. `None` when there is
    /// no such field.
    ///
    /// Malformed members (a bad q-value, an empty token) are skipped, unknown codings
    /// are ignored, tokens are case-insensitive, whitespace around members and
    /// parameters is allowed.
    pub(crate) fn parse(headers: &HeaderMap) -> Option<Accepted> {
        let mut values = headers.get_all(ACCEPT_ENCODING).iter().peekable();
        values.peek()?;
        let mut accepted = Accepted {
            codings: [None; 4],
            identity: None,
            star: None,
        };
        for value in values {
            for member in value.as_bytes().split(|b| *b == b',') {
                if let Some((token, q)) = parse_member(member) {
                    accepted.record(token, q);
                }
            }
        }
        Some(accepted)
    }

    fn record(&mut self, token: &[u8], q: u16) {
        // A coding listed twice keeps its highest weight.
        let keep = |slot: &mut Option<u16>| *slot = Some(slot.map_or(q, |old| old.max(q)));
        if token == b"*" {
            keep(&mut self.star);
        } else if token.eq_ignore_ascii_case(b"identity") {
            keep(&mut self.identity);
        } else if let Some(coding) = Coding::from_token(token) {
            keep(&mut self.codings[coding.index()]);
        }
    }

    /// The weight the client gives `coding`: its own entry, else `*`, else 0.
    fn weight(&self, coding: Coding) -> u16 {
        self.codings[coding.index()].or(self.star).unwrap_or(0)
    }

    /// Picks the coding for a response: the highest weight wins, the server's
    /// preference breaks ties. Identity is used when nothing has a positive weight,
    /// or when the client weighs identity above every coding.
    pub(crate) fn negotiate(&self, preference: &Preference) -> Negotiated {
        let mut best: Option<(Coding, u16)> = None;
        for coding in preference.codings() {
            let q = self.weight(coding);
            if q > 0 && best.is_none_or(|(_, top)| q > top) {
                best = Some((coding, q));
            }
        }

        // Identity is acceptable unless refused by `identity;q=0`, or by `*;q=0`
        // without an entry of its own.
        let identity = self.identity.or(self.star.filter(|q| *q == 0));
        match (best, identity) {
            (Some((_, q)), Some(identity)) if identity > q => Negotiated::Identity,
            (Some((coding, _)), _) => Negotiated::Coding(coding),
            (None, Some(0)) => Negotiated::NotAcceptable,
            (None, _) => Negotiated::Identity,
        }
    }
}

/// Negotiates the coding for a request with these headers. No `Accept-Encoding`
/// means identity: RFC 9110 allows any coding then, but clients that send no
/// field are often ones that cannot decode.
pub fn negotiate(headers: &HeaderMap, preference: &Preference) -> Negotiated {
    match Accepted::parse(headers) {
        Some(accepted) => accepted.negotiate(preference),
        None => Negotiated::Identity,
    }
}

/// One member: `token *( OWS ";" OWS param )`, of which only `q` is read.
fn parse_member(member: &[u8]) -> Option<(&[u8], u16)> {
    let mut parts = member.split(|b| *b == b';');
    let token = trim(parts.next()?);
    if token.is_empty() || !token.iter().all(|b| is_tchar(*b)) {
        return None;
    }
    let mut q = 1000;
    for param in parts {
        let param = trim(param);
        let (name, value) = match param.iter().position(|b| *b == b'=') {
            Some(at) => (trim(&param[..at]), trim(&param[at + 1..])),
            None => return None,
        };
        if name.eq_ignore_ascii_case(b"q") {
            q = parse_qvalue(value)?;
        }
    }
    Some((token, q))
}

/// `qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )`, in thousandths.
fn parse_qvalue(value: &[u8]) -> Option<u16> {
    let (whole, fraction) = match value.iter().position(|b| *b == b'.') {
        Some(at) => (&value[..at], &value[at + 1..]),
        None => (value, &b""[..]),
    };
    if fraction.len() > 3 || !fraction.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut thousandths = 0u16;
    for (i, digit) in fraction.iter().enumerate() {
        thousandths += u16::from(digit - b'0') * [100, 10, 1][i];
    }
    match whole {
        b"0" => Some(thousandths),
        b"1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

fn trim(mut bytes: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = bytes {
        bytes = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = bytes {
        bytes = rest;
    }
    bytes
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qvalues_parse_to_thousandths() {
        assert_eq!(parse_qvalue(b"1"), Some(1000));
        assert_eq!(parse_qvalue(b"1.000"), Some(1000));
        assert_eq!(parse_qvalue(b"0.5"), Some(500));
        assert_eq!(parse_qvalue(b"0.001"), Some(1));
        assert_eq!(parse_qvalue(b"0"), Some(0));
        assert_eq!(parse_qvalue(b"1.5"), None);
        assert_eq!(parse_qvalue(b"0.0001"), None);
        assert_eq!(parse_qvalue(b"2"), None);
        assert_eq!(parse_qvalue(b""), None);
    }

    #[test]
    fn members_allow_whitespace_around_parameters() {
        assert_eq!(parse_member(b" gzip ; q=0.5 "), Some((&b"gzip"[..], 500)));
        assert_eq!(parse_member(b"br;Q=1"), Some((&b"br"[..], 1000)));
        assert_eq!(parse_member(b""), None);
        assert_eq!(parse_member(b"gzip;q"), None);
        assert_eq!(parse_member(b"g zip"), None);
    }
}
