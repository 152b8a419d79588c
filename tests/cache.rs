//! RFC 9111 semantics of the cache, on a manual clock, with exact headers.

mod cache_support;

use cache_support::{Harness, reply};
use std::time::Duration;
use tower_toolbox::cache::Mode;

/// One request of a scenario: wait `after` seconds, send `headers`, expect the
/// status, the body (`v{n}` is the origin's n-th response), the `Age` header and
/// the origin's call count so far.
struct Step {
    after: u64,
    headers: &'static [(&'static str, &'static str)],
    status: u16,
    body: &'static str,
    age: Option<&'static str>,
    calls: usize,
}

const fn step(
    after: u64,
    status: u16,
    body: &'static str,
    age: Option<&'static str>,
    calls: usize,
) -> Step {
    Step {
        after,
        headers: &[],
        status,
        body,
        age,
        calls,
    }
}

const fn with(headers: &'static [(&'static str, &'static str)], s: Step) -> Step {
    Step { headers, ..s }
}

struct Case {
    name: &'static str,
    mode: Mode,
    status: u16,
    response: &'static [(&'static str, &'static str)],
    steps: &'static [Step],
}

const SHARED: Mode = Mode::Shared;
const PRIVATE: Mode = Mode::Private;

static CASES: &[Case] = &[
    Case {
        name: "max-age: fresh for 60 s, then fetched again",
        mode: SHARED,
        status: 200,
        response: &[("cache-control", "max-age=60")],
        steps: &[
            step(0, 200, "v1", None, 1),
            step(10, 200, "v1", Some("10"), 1),
            step(49, 200, "v1", Some("59"), 1),
            step(1, 200, "v2", None, 2),
        ],
    },
    Case {
        name: "s-maxage beats max-age in shared mode",
        mode: SHARED,
        status: 200,
        response: &[("cache-control", "max-age=10, s-maxage=100")],
        steps: &[
            step(0, 200, "v1", None, 1),
            step(50, 200, "v1", Some("50"), 1),
        ],
    },
    Case {
        name: "s-maxage is ignored in private mode",
        mode: PRIVATE,
        status: 200,
        response: &[("cache-control", "max-age=10, s-maxage=100")],
        steps: &[step(0, 200, "v1", None, 1), step(50, 200, "v2", None, 2)],
    },
    Case {
        name: "Expires minus Date when there is no max-age",
        mode: SHARED,
        status: 200,
        response: &[
            ("date", "Thu, 01 Jan 2026 00:00:00 GMT"),
            ("expires", "Thu, 01 Jan 2026 00:00:30 GMT"),
        ],
        steps: &[
            step(0, 200, "v1", None, 1),
            step(29, 200, "v1", Some("29"), 1),
            step(1, 200, "v2", None, 2),
        ],
    },
    Case {
        name: "max-age beats Expires",
        mode: SHARED,
        status: 200,
        response: &[
            ("cache-control", "max-age=100"),
            ("expires", "Thu, 01 Jan 2026 00:00:30 GMT"),
        ],
        steps: &[
            step(0, 200, "v1", None, 1),
            step(50, 200, "v1", Some("50"), 1),
        ],
    },
    Case {
        name: "heuristic freshness is 10 % of the time since Last-Modified",
        mode: SHARED,
        status: 200,
        // 1000 s before the response's Date: 100 s of freshness.
        response: &[("last-modified", "Wed, 31 Dec 2025 23:43:20 GMT")],
        steps: &[
            step(0, 200, "v1", None, 1),
            step(99, 200, "v1", Some("99"), 1),
            step(1, 200, "v2", None, 2),
        ],
    },
    Case {
        name: "no heuristic freshness for a status that is not heuristically cacheable",
        mode: SHARED,
        status: 302,
        response: &[("last-modified", "Wed, 31 Dec 2025 23:43:20 GMT")],
        steps: &[step(0, 302, "v1", None, 1), step(1, 302, "v2", None, 2)],
    },
    Case {
        name: "a 404 with max-age is stored",
        mode: SHARED,
        status: 404,
        response: &[("cache-control", "max-age=60")],
        steps: &[
            step(0, 404, "v1", None, 1),
            step(5, 404, "v1", Some("5"), 1),
        ],
    },
    Case {
        name: "a 500 without explicit freshness is not stored",
        mode: SHARED,
        status: 500,
        response: &[],
        steps: &[step(0, 500, "v1", None, 1), step(1, 500, "v2", None, 2)],
    },
    Case {
        name: "no-store is never stored",
        mode: SHARED,
        status: 200,
        response: &[("cache-control", "max-age=60, no-store")],
        steps: &[step(0, 200, "v1", None, 1), step(1, 200, "v2", None, 2)],
    },
    Case {
        name: "private is not stored by a shared cache",
        mode: SHARED,
        status: 200,
        response: &[("cache-control", "private, max-age=60")],
        steps: &[step(0, 200, "v1", None, 1), step(1, 200, "v2", None, 2)],
    },
    Case {
        name: "private is stored by a private cache",
        mode: PRIVATE,
        status: 200,
        response: &[("cache-control", "private, max-age=60")],
        steps: &[
            step(0, 200, "v1", None, 1),
            step(1, 200, "v1", Some("1"), 1),
        ],
    },
    Case {
        name: "received Age counts towards the age",
        mode: SHARED,
        status: 200,
        response: &[("cache-control", "max-age=60"), ("age", "30")],
        steps: &[
            step(0, 200, "v1", Some("30"), 1),
            step(0, 200, "v1", Some("30"), 1),
            step(29, 200, "v1", Some("59"), 1),
            step(1, 200, "v2", Some("30"), 2),
        ],
    },
    Case {
        name: "apparent age from an old Date counts towards the age",
        mode: SHARED,
        status: 200,
        response: &[
            ("cache-control", "max-age=60"),
            ("date", "Wed, 31 Dec 2025 23:59:20 GMT"),
        ],
        steps: &[
            step(0, 200, "v1", None, 1),
            step(0, 200, "v1", Some("40"), 1),
            step(19, 200, "v1", Some("59"), 1),
            step(1, 200, "v2", None, 2),
        ],
    },
    Case {
        name: "request max-age refuses a response older than it",
        mode: SHARED,
        status: 200,
        response: &[("cache-control", "max-age=600")],
        steps: &[
            step(0, 200, "v1", None, 1),
            with(
                &[("cache-control", "max-age=10")],
                step(10, 200, "v1", Some("10"), 1),
            ),
            with(
                &[("cache-control", "max-age=10")],
                step(1, 200, "v2", None, 2),
            ),
        ],
    },
    Case {
        name: "request min-fresh refuses a response about to go stale",
        mode: SHARED,
        status: 200,
        response: &[("cache-control", "max-age=60")],
        steps: &[
            step(0, 200, "v1", None, 1),
            with(
                &[("cache-control", "min-fresh=20")],
                step(40, 200, "v1", Some("40"), 1),
            ),
            with(
                &[("cache-control", "min-fresh=20")],
                step(1, 200, "v2", None, 2),
            ),
        ],
    },
    Case {
        name: "request max-stale accepts a stale response within its bound",
        mode: SHARED,
        status: 200,
        response: &[("cache-control", "max-age=10")],
        steps: &[
            step(0, 200, "v1", None, 1),
            with(
                &[("cache-control", "max-stale=5")],
                step(15, 200, "v1", Some("15"), 1),
            ),
            with(
                &[("cache-control", "max-stale")],
                step(100, 200, "v1", Some("115"), 1),
            ),
            with(
                &[("cache-control", "max-stale=5")],
                step(0, 200, "v2", None, 2),
            ),
        ],
    },
    Case {
        name: "must-revalidate forbids serving stale even with max-stale",
        mode: SHARED,
        status: 200,
        response: &[("cache-control", "max-age=10, must-revalidate")],
        steps: &[
            step(0, 200, "v1", None, 1),
            with(
                &[("cache-control", "max-stale")],
                step(11, 200, "v2", None, 2),
            ),
        ],
    },
    Case {
        name: "proxy-revalidate forbids serving stale in shared mode",
        mode: SHARED,
        status: 200,
        response: &[("cache-control", "max-age=10, proxy-revalidate")],
        steps: &[
            step(0, 200, "v1", None, 1),
            with(
                &[("cache-control", "max-stale")],
                step(11, 200, "v2", None, 2),
            ),
        ],
    },
    Case {
        name: "proxy-revalidate does not bind a private cache",
        mode: PRIVATE,
        status: 200,
        response: &[("cache-control", "max-age=10, proxy-revalidate")],
        steps: &[
            step(0, 200, "v1", None, 1),
            with(
                &[("cache-control", "max-stale")],
                step(11, 200, "v1", Some("11"), 1),
            ),
        ],
    },
    Case {
        name: "request no-cache goes to the origin",
        mode: SHARED,
        status: 200,
        response: &[("cache-control", "max-age=60")],
        steps: &[
            step(0, 200, "v1", None, 1),
            with(
                &[("cache-control", "no-cache")],
                step(1, 200, "v2", None, 2),
            ),
            step(1, 200, "v2", Some("1"), 2),
        ],
    },
    Case {
        name: "Pragma: no-cache counts when the request has no Cache-Control",
        mode: SHARED,
        status: 200,
        response: &[("cache-control", "max-age=60")],
        steps: &[
            step(0, 200, "v1", None, 1),
            with(&[("pragma", "no-cache")], step(1, 200, "v2", None, 2)),
        ],
    },
    Case {
        name: "request no-store: the response is not stored",
        mode: SHARED,
        status: 200,
        response: &[("cache-control", "max-age=60")],
        steps: &[
            with(
                &[("cache-control", "no-store")],
                step(0, 200, "v1", None, 1),
            ),
            step(1, 200, "v2", None, 2),
            with(
                &[("cache-control", "no-store")],
                step(1, 200, "v2", Some("1"), 2),
            ),
        ],
    },
    Case {
        name: "only-if-cached with nothing stored is a 504",
        mode: SHARED,
        status: 200,
        response: &[("cache-control", "max-age=60")],
        steps: &[
            with(
                &[("cache-control", "only-if-cached")],
                step(0, 504, "", None, 0),
            ),
            step(0, 200, "v1", None, 1),
            with(
                &[("cache-control", "only-if-cached")],
                step(5, 200, "v1", Some("5"), 1),
            ),
            with(
                &[("cache-control", "only-if-cached")],
                step(60, 504, "", None, 1),
            ),
        ],
    },
    Case {
        name: "duplicate max-age: the first wins",
        mode: SHARED,
        status: 200,
        response: &[("cache-control", "max-age=100, max-age=1")],
        steps: &[
            step(0, 200, "v1", None, 1),
            step(50, 200, "v1", Some("50"), 1),
        ],
    },
    Case {
        name: "quoted max-age is read",
        mode: SHARED,
        status: 200,
        response: &[("cache-control", "max-age=\"100\"")],
        steps: &[
            step(0, 200, "v1", None, 1),
            step(50, 200, "v1", Some("50"), 1),
        ],
    },
    Case {
        name: "negative max-age makes the response stale",
        mode: SHARED,
        status: 200,
        response: &[("cache-control", "max-age=-5")],
        steps: &[step(0, 200, "v1", None, 1), step(0, 200, "v2", None, 2)],
    },
    Case {
        name: "invalid Expires means already expired",
        mode: SHARED,
        status: 200,
        response: &[("expires", "0")],
        steps: &[step(0, 200, "v1", None, 1), step(0, 200, "v2", None, 2)],
    },
    Case {
        name: "an invalid Date is replaced by the arrival time",
        mode: SHARED,
        status: 200,
        response: &[("cache-control", "max-age=60"), ("date", "yesterday-ish")],
        steps: &[
            step(0, 200, "v1", None, 1),
            step(10, 200, "v1", Some("10"), 1),
            step(50, 200, "v2", None, 2),
        ],
    },
    Case {
        name: "an invalid Age is ignored",
        mode: SHARED,
        status: 200,
        response: &[("cache-control", "max-age=60"), ("age", "abc")],
        // The miss passes the origin's response through as it came.
        steps: &[
            step(0, 200, "v1", Some("abc"), 1),
            step(3, 200, "v1", Some("3"), 1),
        ],
    },
    Case {
        name: "a list-valued Age uses its first member",
        mode: SHARED,
        status: 200,
        response: &[("cache-control", "max-age=60"), ("age", "10, 50")],
        steps: &[
            step(0, 200, "v1", Some("10, 50"), 1),
            step(3, 200, "v1", Some("13"), 1),
        ],
    },
    Case {
        name: "malformed Cache-Control is never stored",
        mode: SHARED,
        status: 200,
        response: &[("cache-control", "max-age=60 no-store")],
        steps: &[step(0, 200, "v1", None, 1), step(1, 200, "v2", None, 2)],
    },
    Case {
        name: "Vary: * is never served from the cache",
        mode: SHARED,
        status: 200,
        response: &[("cache-control", "max-age=60"), ("vary", "*")],
        steps: &[step(0, 200, "v1", None, 1), step(1, 200, "v2", None, 2)],
    },
    Case {
        name: "a Vary member that is not a field name counts as Vary: *",
        mode: SHARED,
        status: 200,
        response: &[("cache-control", "max-age=60"), ("vary", "accept, (bad)")],
        steps: &[step(0, 200, "v1", None, 1), step(1, 200, "v2", None, 2)],
    },
    Case {
        name: "an empty Vary member is ignored",
        mode: SHARED,
        status: 200,
        response: &[("cache-control", "max-age=60"), ("vary", "accept,,")],
        steps: &[
            step(0, 200, "v1", None, 1),
            step(1, 200, "v1", Some("1"), 1),
        ],
    },
    Case {
        name: "no heuristic freshness when max-age=0 is explicit",
        mode: SHARED,
        status: 200,
        response: &[
            ("cache-control", "max-age=0"),
            ("last-modified", "Wed, 31 Dec 2025 23:43:20 GMT"),
        ],
        // Stored (it has a validator) but stale at once; the origin ignores the
        // conditional and answers 200.
        steps: &[step(0, 200, "v1", None, 1), step(0, 200, "v2", None, 2)],
    },
    Case {
        name: "heuristic freshness for a 404, a heuristically cacheable status",
        mode: SHARED,
        status: 404,
        response: &[("last-modified", "Wed, 31 Dec 2025 23:43:20 GMT")],
        steps: &[
            step(0, 404, "v1", None, 1),
            step(99, 404, "v1", Some("99"), 1),
            step(1, 404, "v2", None, 2),
        ],
    },
    Case {
        name: "public allows heuristic freshness for any status",
        mode: SHARED,
        status: 302,
        response: &[
            ("cache-control", "public"),
            ("last-modified", "Wed, 31 Dec 2025 23:43:20 GMT"),
        ],
        steps: &[
            step(0, 302, "v1", None, 1),
            step(99, 302, "v1", Some("99"), 1),
            step(1, 302, "v2", None, 2),
        ],
    },
    Case {
        name: "heuristic freshness is capped at one day",
        mode: SHARED,
        status: 200,
        // Modified a year before: 10 % would be 36.5 days.
        response: &[("last-modified", "Wed, 01 Jan 2025 00:00:00 GMT")],
        steps: &[
            step(0, 200, "v1", None, 1),
            step(86_399, 200, "v1", Some("86399"), 1),
            step(1, 200, "v2", None, 2),
        ],
    },
    Case {
        name: "a 500 with max-age is stored",
        mode: SHARED,
        status: 500,
        response: &[("cache-control", "max-age=30")],
        steps: &[
            step(0, 500, "v1", None, 1),
            step(29, 500, "v1", Some("29"), 1),
        ],
    },
    Case {
        name: "a 500 with Last-Modified gets no heuristic freshness",
        mode: SHARED,
        status: 500,
        response: &[("last-modified", "Wed, 31 Dec 2025 23:43:20 GMT")],
        steps: &[step(0, 500, "v1", None, 1), step(1, 500, "v2", None, 2)],
    },
    Case {
        name: "invalid s-maxage makes the response stale in shared mode",
        mode: SHARED,
        status: 200,
        response: &[("cache-control", "max-age=60, s-maxage=abc")],
        steps: &[step(0, 200, "v1", None, 1), step(1, 200, "v2", None, 2)],
    },
    Case {
        name: "the first Cache-Control line wins over a later duplicate",
        mode: SHARED,
        status: 200,
        response: &[
            ("cache-control", "max-age=100"),
            ("cache-control", "max-age=1"),
        ],
        steps: &[
            step(0, 200, "v1", None, 1),
            step(50, 200, "v1", Some("50"), 1),
        ],
    },
    Case {
        name: "a quoted no-store argument still forbids storing",
        mode: SHARED,
        status: 200,
        response: &[("cache-control", "max-age=60, no-store=\"x\"")],
        steps: &[step(0, 200, "v1", None, 1), step(1, 200, "v2", None, 2)],
    },
    Case {
        name: "Expires in the past with a Date: stale at once",
        mode: SHARED,
        status: 200,
        response: &[("expires", "Wed, 31 Dec 2025 00:00:00 GMT")],
        steps: &[step(0, 200, "v1", None, 1), step(0, 200, "v2", None, 2)],
    },
    Case {
        name: "must-understand with an understood status overrides no-store",
        mode: SHARED,
        status: 200,
        response: &[("cache-control", "max-age=60, must-understand, no-store")],
        steps: &[
            step(0, 200, "v1", None, 1),
            step(1, 200, "v1", Some("1"), 1),
        ],
    },
    Case {
        name: "must-understand with an unknown status is not stored",
        mode: SHARED,
        status: 299,
        response: &[("cache-control", "max-age=60, must-understand")],
        steps: &[step(0, 299, "v1", None, 1), step(1, 299, "v2", None, 2)],
    },
    Case {
        name: "an overflowing max-age reads as 2^31 seconds",
        mode: SHARED,
        status: 200,
        response: &[("cache-control", "max-age=999999999999999999999")],
        steps: &[
            step(0, 200, "v1", None, 1),
            step(2_000_000_000, 200, "v1", Some("2000000000"), 1),
        ],
    },
];

#[tokio::test]
async fn rfc_9111_table() {
    for case in CASES {
        let (status, response) = (case.status, case.response);
        let harness = Harness::new(
            |layer| {
                layer
                    .mode(case.mode)
                    .keep_stale(Duration::from_secs(3_000_000_000))
            },
            move |call| reply(&call, status, response),
        );
        for (i, step) in case.steps.iter().enumerate() {
            harness.advance(step.after);
            let got = harness.get("/r", step.headers).await;
            let what = format!("{} (step {i})", case.name);
            assert_eq!(got.status.as_u16(), step.status, "{what}");
            if step.status != 504 {
                assert_eq!(got.body, step.body, "{what}");
            }
            assert_eq!(got.header("age"), step.age, "{what}");
            assert_eq!(harness.calls(), step.calls, "{what}");
        }
    }
}
