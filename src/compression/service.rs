use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body::Body;
use tower_service::Service;

use super::body::CompressionBody;
use super::future::{Plan, ResponseFuture};
use super::layer::Config;
use super::negotiate::{Negotiated, negotiate};
use super::predicate::Predicate;
use crate::reject::{self, Rejection, RequestHead};

/// Compresses the responses of `S`; made by
/// [`CompressionLayer`](super::CompressionLayer).
#[derive(Clone, Debug)]
pub struct Compression<S, P> {
    pub(crate) inner: S,
    pub(crate) config: Config<P>,
}

impl<S, P, ReqBody, ResBody> Service<Request<ReqBody>> for Compression<S, P>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body<Data = Bytes>,
    P: Predicate,
{
    type Response = Response<CompressionBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, P>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // gRPC has its own per-message compression (`grpc-encoding`).
        if reject::is_grpc(request.headers()) {
            return ResponseFuture::new(self.inner.call(request), None);
        }

        let coding = match negotiate(request.headers(), &self.config.preference) {
            Negotiated::Coding(coding) => Some(coding),
            Negotiated::Identity => None,
            Negotiated::NotAcceptable => {
                tracing::debug!(
                    accept_encoding = ?request.headers().get(http::header::ACCEPT_ENCODING),
                    "refusing a request that accepts no coding we offer, nor identity"
                );
                let rejection = Rejection::not_acceptable(
                    "the request's Accept-Encoding refuses identity and every coding this \
                     server offers",
                )
                .with_member("offered", self.offered());
                let response = self
                    .config
                    .responder
                    .respond(&rejection, &RequestHead::of(&request));
                return ResponseFuture::ready(response);
            }
        };

        let plan = Plan {
            coding,
            head: request.method() == Method::HEAD,
            levels: self.config.levels,
            min_size: self.config.min_size,
            predicate: self.config.predicate.clone(),
        };
        ResponseFuture::new(self.inner.call(request), Some(plan))
    }
}

impl<S, P> Compression<S, P> {
    fn offered(&self) -> serde_json::Value {
        self.config
            .preference
            .codings()
            .map(|c| serde_json::Value::from(c.as_str()))
            .collect()
    }
}
