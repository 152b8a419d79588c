//! Client IP keys behind proxies: what a client can and cannot make us believe.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;

use http::{HeaderValue, Request, StatusCode};
use proptest::prelude::*;
use tower_toolbox::key::{ClientIp, KeyExtractor, PeerAddr, ProxyHeader};

const PROXY: &str = "10.0.0.7:41000";

fn request(peer: &str, headers: &[(&str, &[u8])]) -> Request<()> {
    let mut builder = Request::get("/");
    for (name, value) in headers {
        builder = builder.header(*name, HeaderValue::from_bytes(value).unwrap());
    }
    let mut request = builder.body(()).unwrap();
    request
        .extensions_mut()
        .insert(PeerAddr(peer.parse::<SocketAddr>().unwrap()));
    request
}

fn ip(s: &str) -> Option<IpAddr> {
    Some(s.parse().unwrap())
}

fn behind_our_proxies() -> ClientIp {
    ClientIp::new().trust_proxies(["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()])
}

#[test]
fn peer_address_is_the_key_when_nothing_is_trusted() {
    let req = request("198.51.100.4:5000", &[("x-forwarded-for", b"1.2.3.4")]);
    assert_eq!(ClientIp::new().extract(&req), ip("198.51.100.4"));
}

#[test]
fn spoofed_left_entries_are_ignored() {
    let key = behind_our_proxies();
    let honest = request(PROXY, &[("x-forwarded-for", b"203.0.113.9")]);
    let spoofed = request(
        PROXY,
        &[("x-forwarded-for", b"1.1.1.1, 8.8.8.8, 203.0.113.9")],
    );
    assert_eq!(key.extract(&honest), ip("203.0.113.9"));
    assert_eq!(key.extract(&spoofed), ip("203.0.113.9"));
}

#[test]
fn trusted_hops_are_skipped_right_to_left() {
    let key = behind_our_proxies();
    let req = request(
        PROXY,
        &[(
            "x-forwarded-for",
            b"6.6.6.6, 203.0.113.9, 10.1.1.1, 10.2.2.2",
        )],
    );
    assert_eq!(key.extract(&req), ip("203.0.113.9"));
}

#[test]
fn headers_from_untrusted_peers_are_ignored() {
    let key = behind_our_proxies();
    let req = request("198.51.100.4:5000", &[("x-forwarded-for", b"203.0.113.9")]);
    assert_eq!(key.extract(&req), ip("198.51.100.4"));
}

#[test]
fn a_trusted_peer_without_header_is_its_own_client() {
    assert_eq!(
        behind_our_proxies().extract(&request(PROXY, &[])),
        ip("10.0.0.7")
    );
}

#[test]
fn malformed_client_entries_fall_back_to_the_peer() {
    let key = behind_our_proxies();
    let long = "9".repeat(5000);
    let cases: Vec<&[u8]> = vec![
        b"garbage",
        b"",
        b" , ,",
        b"999.1.1.1",
        b"203.0.113.9 extra",
        b"unknown",
        long.as_bytes(),
        b"203.0.113.9, \xff\xfe",
    ];
    for value in cases {
        let req = request(PROXY, &[("x-forwarded-for", value)]);
        assert_eq!(
            key.extract(&req),
            ip("10.0.0.7"),
            "for {:?}",
            String::from_utf8_lossy(value)
        );
    }
}

#[test]
fn forwarded_header_is_read_right_to_left_with_obfuscated_nodes_refused() {
    let key = behind_our_proxies().header(ProxyHeader::Forwarded);
    let good = request(
        PROXY,
        &[(
            "forwarded",
            b"for=1.1.1.1, for=\"[2001:db8:cafe::17]:4711\";proto=https, for=10.3.3.3",
        )],
    );
    assert_eq!(key.extract(&good), ip("2001:db8:cafe::"));

    for value in [
        &b"for=_hidden"[..],
        b"for=unknown",
        b"by=10.0.0.1",
        b"for=\"[2001:db8::1",
        b"for=1.1.1.1;for=2.2.2.2",
    ] {
        let req = request(PROXY, &[("forwarded", value)]);
        assert_eq!(
            key.extract(&req),
            ip("10.0.0.7"),
            "for {:?}",
            String::from_utf8_lossy(value)
        );
    }
}

#[test]
fn ipv4_mapped_ipv6_is_normalised_everywhere() {
    let key = ClientIp::new().trust_proxies(["10.0.0.0/8".parse().unwrap()]);
    let mapped_peer = request(
        "[::ffff:10.0.0.7]:4000",
        &[("x-forwarded-for", b"::ffff:203.0.113.9")],
    );
    assert_eq!(key.extract(&mapped_peer), ip("203.0.113.9"));
}

#[test]
fn ipv6_clients_are_keyed_by_prefix() {
    let key = ClientIp::new();
    let a = request("[2001:db8:1:2:aaaa::1]:1", &[]);
    let b = request("[2001:db8:1:2:bbbb::2]:1", &[]);
    let other = request("[2001:db8:1:3::1]:1", &[]);
    assert_eq!(key.extract(&a), ip("2001:db8:1:2::"));
    assert_eq!(key.extract(&a), key.extract(&b));
    assert_ne!(key.extract(&a), key.extract(&other));

    let exact = ClientIp::new().ipv6_prefix(128);
    assert_eq!(exact.extract(&a), ip("2001:db8:1:2:aaaa::1"));
    let v4_24 = ClientIp::new().ipv4_prefix(24);
    assert_eq!(
        v4_24.extract(&request("192.0.2.77:1", &[])),
        ip("192.0.2.0")
    );
}

#[test]
fn hop_count_takes_the_nth_entry_from_the_right() {
    let key = ClientIp::new().trusted_hops(NonZeroUsize::new(2).unwrap());
    let req = request(
        "192.0.2.1:1",
        &[("x-forwarded-for", b"6.6.6.6, 203.0.113.9, 10.9.9.9")],
    );
    assert_eq!(key.extract(&req), ip("203.0.113.9"));

    // Fewer entries than hops: the request skipped a proxy; use the peer.
    let short = request("192.0.2.1:1", &[("x-forwarded-for", b"10.9.9.9")]);
    assert_eq!(key.extract(&short), ip("192.0.2.1"));
}

#[test]
fn later_header_lines_are_nearer_proxies() {
    let key = behind_our_proxies();
    let req = request(
        PROXY,
        &[
            ("x-forwarded-for", b"6.6.6.6"),
            ("x-forwarded-for", b"203.0.113.9, 10.5.5.5"),
        ],
    );
    assert_eq!(key.extract(&req), ip("203.0.113.9"));
}

#[test]
fn a_long_chain_of_trusted_hops_falls_back_to_the_peer() {
    let chain = vec!["10.1.1.1"; 40].join(", ");
    let req = request(PROXY, &[("x-forwarded-for", chain.as_bytes())]);
    assert_eq!(behind_our_proxies().extract(&req), ip("10.0.0.7"));
}

#[test]
fn a_request_without_peer_address_is_missing_its_key_with_a_500() {
    let key = ClientIp::new();
    let req = Request::get("/").body(()).unwrap();
    assert_eq!(key.extract(&req), None);
    let rejection = KeyExtractor::<()>::missing(&key);
    assert_eq!(rejection.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        rejection
            .detail()
            .contains("into_make_service_with_connect_info")
    );
}

#[test]
fn axum_connect_info_is_read() {
    let mut req = Request::get("/").body(()).unwrap();
    req.extensions_mut().insert(axum::extract::ConnectInfo(
        "192.0.2.8:9".parse::<SocketAddr>().unwrap(),
    ));
    assert_eq!(ClientIp::new().extract(&req), ip("192.0.2.8"));
}

proptest! {
    #[test]
    fn never_panics_and_never_leaves_the_header_or_peer(
        xff in proptest::collection::vec(any::<u8>(), 0..300),
        fwd in proptest::collection::vec(any::<u8>(), 0..300),
    ) {
        for header in [ProxyHeader::XForwardedFor, ProxyHeader::Forwarded] {
            let key = behind_our_proxies().header(header);
            let mut req = request(PROXY, &[]);
            if let Ok(v) = HeaderValue::from_bytes(&xff) {
                req.headers_mut().insert("x-forwarded-for", v);
            }
            if let Ok(v) = HeaderValue::from_bytes(&fwd) {
                req.headers_mut().insert("forwarded", v);
            }
            let got = key.extract(&req);
            prop_assert!(got.is_some());
        }
    }

    #[test]
    fn a_client_cannot_change_its_key_by_prepending_entries(
        prefix in "[ -~]{0,200}",
        client in any::<[u8; 4]>(),
    ) {
        let client = IpAddr::from(client);
        prop_assume!(!client.to_canonical().is_ipv4() || !"10.0.0.0/8".parse::<ipnet::IpNet>().unwrap().contains(&client));
        let key = behind_our_proxies();
        let header = format!("{prefix}, {client}");
        if let Ok(value) = HeaderValue::from_str(&header) {
            let mut req = request(PROXY, &[]);
            req.headers_mut().insert("x-forwarded-for", value);
            prop_assert_eq!(key.extract(&req), Some(client));
        }
    }
}

#[tokio::test]
async fn route_key_uses_axum_matched_route_template() {
    use axum::routing::get;
    use tower::ServiceExt;
    use tower_toolbox::key::RouteKey;

    let app = axum::Router::new().route(
        "/users/{id}",
        get(|request: axum::extract::Request| async move {
            let route = RouteKey.extract(&request).unwrap();
            format!("{} {}", route.method(), route.path())
        }),
    );
    for uri in ["/users/1", "/users/2?x=y"] {
        let response = app
            .clone()
            .oneshot(Request::get(uri).body(axum::body::Body::empty()).unwrap())
            .await
            .unwrap();
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(body, "GET /users/{id}");
    }
}
