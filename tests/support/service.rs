//! A counting inner service and requests from a given peer, for layer tests.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tower::{Service, ServiceExt};
use tower_toolbox::key::PeerAddr;

pub type Body = Full<Bytes>;

/// `GET /items` from `peer` (an IP address; IPv6 in brackets).
pub fn from(peer: &str) -> Request<Body> {
    let mut request = Request::get("/items").body(Body::default()).unwrap();
    request.extensions_mut().insert(PeerAddr(
        format!("{peer}:4000").parse::<SocketAddr>().unwrap(),
    ));
    request
}

/// A gRPC call (`content-type: application/grpc`) from `peer`.
pub fn grpc_from(peer: &str) -> Request<Body> {
    let mut request = from(peer);
    request
        .headers_mut()
        .insert("content-type", "application/grpc".parse().unwrap());
    request
}

/// Answers `200 ok` at once and counts its calls.
pub fn ok_service(
    calls: Arc<AtomicUsize>,
) -> impl Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future: Send>
+ Clone
+ Send
+ 'static {
    tower::service_fn(move |_req: Request<Body>| {
        calls.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok")))) }
    })
}

/// The status of `service`'s response to `request`.
pub async fn status<S, B>(service: &mut S, request: Request<Body>) -> u16
where
    S: Service<Request<Body>, Response = Response<B>, Error = Infallible>,
{
    let response = service.ready().await.unwrap().call(request).await.unwrap();
    response.status().as_u16()
}
