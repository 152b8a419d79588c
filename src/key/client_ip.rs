//! The client's IP address, behind trusted proxies.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::num::NonZeroUsize;

use http::{Request, StatusCode};
use ipnet::IpNet;

use super::KeyExtractor;
pub use super::forwarded::ProxyHeader;
use super::forwarded::addresses_from_right;
use crate::reject::Rejection;

/// The most forwarded addresses read from one request. A longer chain than this of
/// trusted proxies is not a real deployment; the key falls back to the peer.
const MAX_HOPS: usize = 32;

/// The TCP peer address of a request's connection, as a request extension.
///
/// Insert it when accepting connections with plain hyper or tonic; axum's
/// `ConnectInfo<SocketAddr>` is read directly with the `axum` feature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// Keys requests by client IP address.
///
/// By default the key is the TCP peer's address: right when clients connect
/// directly. Behind proxies, say which to trust:
///
/// - [`trust_proxies`](Self::trust_proxies): a list of networks. When the peer is in
///   the list, the forwarded header is read right to left, past every trusted
///   address, and the first untrusted one is the client.
/// - [`trusted_hops`](Self::trusted_hops): a fixed number of proxies in front of the
///   service; the client is that many entries from the right, whatever the peer.
///
/// IPv6 clients are keyed by their /64 prefix by default (one customer usually owns
/// a whole /64 and can pick any address in it); IPv4-mapped IPv6 addresses
/// (`::ffff:192.0.2.1`) count as the IPv4 address.
///
/// When the header is malformed where the client's address should be, the key is
/// the peer address: a client can never pick its own key. A request with no peer
/// address at all is missing its key (500: the server was not set up to record it).
#[derive(Clone, Debug)]
pub struct ClientIp {
    trust: Trust,
    header: ProxyHeader,
    ipv4_prefix: u8,
    ipv6_prefix: u8,
}

#[derive(Clone, Debug)]
enum Trust {
    Nobody,
    Proxies(Vec<IpNet>),
    Hops(NonZeroUsize),
}

impl ClientIp {
    /// Keys by the peer address; forwarded headers are ignored.
    pub fn new() -> Self {
        ClientIp {
            trust: Trust::Nobody,
            header: ProxyHeader::XForwardedFor,
            ipv4_prefix: 32,
            ipv6_prefix: 64,
        }
    }

    /// Trusts proxies in these networks (for example `10.0.0.0/8`, `::1/128`).
    pub fn trust_proxies(mut self, networks: impl IntoIterator<Item = IpNet>) -> Self {
        let networks = networks.into_iter().map(|net| net.trunc()).collect();
        self.trust = Trust::Proxies(networks);
        self
    }

    /// Trusts exactly `hops` proxies in front of the service: the client is the
    /// `hops`-th address from the right of the forwarded header. A header with fewer
    /// entries did not come through all of them, and the peer address is used.
    pub fn trusted_hops(mut self, hops: NonZeroUsize) -> Self {
        self.trust = Trust::Hops(hops);
        self
    }

    /// Which header the proxies write (default `X-Forwarded-For`).
    pub fn header(mut self, header: ProxyHeader) -> Self {
        self.header = header;
        self
    }

    /// Keys IPv6 clients by their first `bits` bits (default 64).
    ///
    /// # Panics
    ///
    /// If `bits` is more than 128.
    pub fn ipv6_prefix(mut self, bits: u8) -> Self {
        assert!(
            bits <= 128,
            "an IPv6 prefix has at most 128 bits, got {bits}"
        );
        self.ipv6_prefix = bits;
        self
    }

    /// Keys IPv4 clients by their first `bits` bits (default 32: each address).
    ///
    /// # Panics
    ///
    /// If `bits` is more than 32.
    pub fn ipv4_prefix(mut self, bits: u8) -> Self {
        assert!(bits <= 32, "an IPv4 prefix has at most 32 bits, got {bits}");
        self.ipv4_prefix = bits;
        self
    }

    /// The client address of a request from `peer` with `headers`, before masking.
    #[inline]
    fn client(&self, peer: IpAddr, headers: &http::HeaderMap) -> IpAddr {
        match &self.trust {
            Trust::Nobody => peer,
            trust => self.client_behind_proxies(trust, peer, headers),
        }
    }

    /// [`client`](Self::client) when some proxies are trusted: out of line, so the
    /// direct case stays small.
    fn client_behind_proxies(
        &self,
        trust: &Trust,
        peer: IpAddr,
        headers: &http::HeaderMap,
    ) -> IpAddr {
        match trust {
            Trust::Nobody => peer,
            Trust::Proxies(networks) => {
                let trusted = |ip: &IpAddr| networks.iter().any(|net| net.contains(ip));
                if !trusted(&peer) {
                    return peer;
                }
                let mut client = peer;
                for (read, address) in addresses_from_right(headers, self.header).enumerate() {
                    let Some(address) = address.filter(|_| read < MAX_HOPS) else {
                        tracing::trace!(%peer, "forwarded header malformed; keying by peer");
                        return peer;
                    };
                    client = canonical(address);
                    if !trusted(&client) {
                        return client;
                    }
                }

                // Every hop was trusted: the left-most is the client, an internal one.
                client
            }
            Trust::Hops(hops) => {
                match addresses_from_right(headers, self.header).nth(hops.get() - 1) {
                    Some(Some(address)) => canonical(address),
                    _ => peer,
                }
            }
        }
    }

    #[inline]
    fn mask(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(v4) => IpAddr::V4(self.mask_v4(v4)),
            IpAddr::V6(v6) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.ipv6_prefix));
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask.unwrap_or(0)))
            }
        }
    }

    #[inline]
    fn mask_v4(&self, v4: Ipv4Addr) -> Ipv4Addr {
        let mask = u32::MAX.checked_shl(32 - u32::from(self.ipv4_prefix));
        Ipv4Addr::from(u32::from(v4) & mask.unwrap_or(0))
    }
}

impl Default for ClientIp {
    fn default() -> Self {
        Self::new()
    }
}

/// IPv4-mapped IPv6 addresses become IPv4.
#[inline]
fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// The peer address recorded in the request's extensions.
#[inline]
fn peer_ip<B>(request: &Request<B>) -> Option<IpAddr> {
    let extensions = request.extensions();

    // axum's first: it is what most services have.
    #[cfg(feature = "axum")]
    if let Some(info) = extensions.get::<axum::extract::ConnectInfo<SocketAddr>>() {
        return Some(info.0.ip());
    }
    if let Some(PeerAddr(addr)) = extensions.get::<PeerAddr>() {
        return Some(addr.ip());
    }
    extensions.get::<SocketAddr>().map(SocketAddr::ip)
}

impl<B> KeyExtractor<B> for ClientIp {
    type Key = IpAddr;

    #[inline]
    fn extract(&self, request: &Request<B>) -> Option<IpAddr> {
        let peer = peer_ip(request)?;

        // The common case, an IPv4 peer keyed directly, kept as one `u32` from
        // start to end: merged with the IPv6 path, the address goes through
        // memory in pieces and is read back whole, which stalls the load.
        if let (IpAddr::V4(v4), Trust::Nobody) = (peer, &self.trust) {
            return Some(IpAddr::V4(self.mask_v4(v4)));
        }
        let peer = canonical(peer);
        Some(self.mask(self.client(peer, request.headers())))
    }

    fn missing(&self) -> Rejection {
        Rejection::missing_key(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the client address is unknown: the server does not record peer addresses \
             (with axum, serve with into_make_service_with_connect_info::<SocketAddr>())",
        )
    }
}
