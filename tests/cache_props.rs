//! Property tests: malformed `Cache-Control`, `Expires`, `Age`, `Date` and
//! `If-None-Match` never panic and never make an unsafe response storable.

mod cache_support;

use cache_support::{Harness, reply};
use proptest::prelude::*;
use tower_toolbox::cache::Mode;

const PIECES: &[&str] = &[
    "max-age=60",
    "max-age=0",
    "max-age=-1",
    "max-age=\"7\"",
    "max-age=99999999999999999999",
    "s-maxage=5",
    "public",
    "private",
    "no-cache",
    "must-revalidate",
    "proxy-revalidate",
    "stale-while-revalidate=10",
    "stale-if-error=5",
    "immutable",
    "x-ext=\"a,b\"",
    "=",
    "\"",
    ",",
    " ",
    ";",
    "max-age",
    "no-store=1",
    "\t",
    "(",
    "private=\"set-cookie\"",
];

fn directive_soup() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            prop::sample::select(PIECES).prop_map(str::to_owned),
            "[ -~]{0,12}",
        ],
        0..6,
    )
    .prop_map(|parts| parts.join(", "))
}

fn text() -> impl Strategy<Value = String> {
    "[ -~\t]{0,40}"
}

fn run(test: impl std::future::Future<Output = ()>) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(test);
}

/// Sends the same request twice; true when the second came from the cache.
async fn stored(
    mode: Mode,
    request: &'static [(&'static str, &'static str)],
    response: Vec<(String, String)>,
) -> bool {
    let harness = Harness::new(
        |l| l.mode(mode),
        move |call| {
            let pairs: Vec<(&str, &str)> = response
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            reply(&call, 200, &pairs)
        },
    );
    harness.get("/", request).await;
    harness.get("/", request).await;
    harness.calls() == 1
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn no_store_is_never_stored_whatever_else_is_said(soup in directive_soup(), mode in prop_oneof![Just(Mode::Shared), Just(Mode::Private)]) {
        let response = vec![
            ("cache-control".to_owned(), soup),
            ("cache-control".to_owned(), "no-store".to_owned()),
        ];
        run(async move { assert!(!stored(mode, &[], response).await) });
    }

    #[test]
    fn private_is_never_stored_by_a_shared_cache(soup in directive_soup()) {
        let response = vec![
            ("cache-control".to_owned(), "private".to_owned()),
            ("cache-control".to_owned(), soup),
        ];
        run(async move { assert!(!stored(Mode::Shared, &[], response).await) });
    }

    #[test]
    fn authorized_responses_are_not_shared_without_permission(soup in directive_soup()) {
        let lower = soup.to_ascii_lowercase();
        prop_assume!(!lower.contains("public") && !lower.contains("s-maxage") && !lower.contains("must-revalidate"));
        let response = vec![("cache-control".to_owned(), soup)];
        run(async move {
            assert!(!stored(Mode::Shared, &[("authorization", "Bearer t")], response).await)
        });
    }

    #[test]
    fn malformed_fields_never_panic(
        cache_control in text(), expires in text(), age in text(), date in text(),
        etag in text(), inm in text(), ims in text(), request_cc in text(), vary in text(),
    ) {
        run(async move {
            let response = [
                ("cache-control".to_owned(), cache_control),
                ("expires".to_owned(), expires),
                ("age".to_owned(), age),
                ("date".to_owned(), date),
                ("etag".to_owned(), etag),
                ("vary".to_owned(), vary),
                ("last-modified".to_owned(), "Wed, 31 Dec 2025 00:00:00 GMT".to_owned()),
            ];
            let harness = Harness::new(|l| l, move |call| {
                let pairs: Vec<(&str, &str)> =
                    response.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
                reply(&call, 200, &pairs)
            });
            let headers = [
                ("if-none-match", inm.as_str()),
                ("if-modified-since", ims.as_str()),
                ("cache-control", request_cc.as_str()),
            ];
            for _ in 0..3 {
                let got = harness.get("/", &headers).await;
                assert!([200, 304, 504].contains(&got.status.as_u16()), "{}", got.status);
                harness.advance(5);
            }
        });
    }
}
