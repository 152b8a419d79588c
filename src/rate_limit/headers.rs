//! The rate limit response headers.
//!
//! - IETF (draft-ietf-httpapi-ratelimit-headers, the Structured Fields form):
//!   `RateLimit-Policy: "per-ip";q=100;w=60` says what each policy allows, and
//!   `RateLimit: "per-ip";r=42;t=35` says what is left of it: `r` requests, and `t`
//!   seconds until the bucket is full again.
//! - Legacy: `X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset`
//!   (delta seconds) for the quota with the fewest requests left.
//!
//! Seconds are rounded up: a client that trusts them is never early.

use std::fmt::Write as _;

use http::header::{HeaderMap, HeaderName, HeaderValue};

use super::memory::{CompiledPlan, Verdict};

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// Which rate limit headers responses carry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Headers {
    ietf: bool,
    legacy: bool,
}

impl Headers {
    /// No headers, except `Retry-After` on refusals (the default).
    pub const NONE: Headers = Headers {
        ietf: false,
        legacy: false,
    };
    /// `RateLimit-Policy` and `RateLimit` on every response.
    pub const IETF: Headers = Headers {
        ietf: true,
        legacy: false,
    };
    /// `X-RateLimit-Limit`, `-Remaining` and `-Reset` on every response.
    pub const LEGACY: Headers = Headers {
        ietf: false,
        legacy: true,
    };
    /// Both forms.
    pub const BOTH: Headers = Headers {
        ietf: true,
        legacy: true,
    };

    pub(crate) fn any(self) -> bool {
        self.ietf || self.legacy
    }
}

pub(crate) const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub(crate) const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
const X_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const X_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const X_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// Whole seconds, rounded up.
fn secs_up(nanos: u64) -> u64 {
    nanos.div_ceil(NANOS_PER_SEC)
}

/// Writes `name` as a Structured Fields string (names are printable ASCII).
fn sf_string(out: &mut String, name: &str) {
    out.push('"');
    for c in name.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// The `RateLimit-Policy` value of a plan; the same on every response.
pub(crate) fn policy_value(plan: &CompiledPlan) -> HeaderValue {
    let mut out = String::new();
    for (i, policy) in plan.plan.policies.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        sf_string(&mut out, &policy.name);
        let _ = write!(out, ";q={};w={}", policy.units(), policy.window_secs());
    }
    HeaderValue::try_from(out).expect("policy names are printable ASCII")
}

/// The headers a response carries after `verdict`.
#[derive(Clone, Debug, Default)]
pub(crate) struct Stamp {
    ratelimit: Option<(HeaderValue, HeaderValue)>,
    legacy: Option<[HeaderValue; 3]>,
}

impl Stamp {
    pub(crate) fn new(
        headers: Headers,
        plan: &CompiledPlan,
        policy: &HeaderValue,
        verdict: &Verdict,
    ) -> Self {
        let policies = &plan.plan.policies;
        let mut stamp = Stamp::default();
        if headers.ietf {
            let mut out = String::with_capacity(24 * policies.len());
            for (i, policy) in policies.iter().enumerate() {
                let state = verdict.quota(i, &policy.limit);
                if i > 0 {
                    out.push_str(", ");
                }
                sf_string(&mut out, &policy.name);
                let _ = write!(out, ";r={};t={}", state.remaining, secs_up(state.reset));
            }
            let value = HeaderValue::try_from(out).expect("printable ASCII");
            stamp.ratelimit = Some((policy.clone(), value));
        }
        if headers.legacy {
            // The quota that will refuse first speaks for all.
            let (policy, state) = policies
                .iter()
                .enumerate()
                .map(|(i, policy)| (policy, verdict.quota(i, &policy.limit)))
                .min_by_key(|(_, state)| state.remaining)
                .expect("a plan has at least one quota");
            stamp.legacy = Some([
                HeaderValue::from(policy.units()),
                HeaderValue::from(state.remaining),
                HeaderValue::from(secs_up(state.reset)),
            ]);
        }
        stamp
    }

    /// Adds the headers to `headers`.
    pub(crate) fn apply(self, headers: &mut HeaderMap) {
        if let Some((policy, value)) = self.ratelimit {
            headers.insert(RATELIMIT_POLICY, policy);
            headers.insert(RATELIMIT, value);
        }
        if let Some([limit, remaining, reset]) = self.legacy {
            headers.insert(X_LIMIT, limit);
            headers.insert(X_REMAINING, remaining);
            headers.insert(X_RESET, reset);
        }
    }
}
