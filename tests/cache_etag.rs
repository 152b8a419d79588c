//! The ETag layer: strong content-hash validators and 304s.

use std::convert::Infallible;
use std::num::NonZeroUsize;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use proptest::prelude::*;
use tower::ServiceExt;
use tower_toolbox::cache::EtagLayer;

fn origin(
    body: &'static str,
    etag: Option<&'static str>,
) -> impl tower::Service<Request<()>, Response = Response<Full<Bytes>>, Error = Infallible> + Clone
{
    tower::service_fn(move |_: Request<()>| async move {
        let mut response = Response::builder();
        if let Some(etag) = etag {
            response = response.header("etag", etag);
        }
        Ok::<_, Infallible>(
            response
                .body(Full::new(Bytes::from_static(body.as_bytes())))
                .unwrap(),
        )
    })
}

async fn send(
    layer: EtagLayer,
    body: &'static str,
    etag: Option<&'static str>,
    request: Request<()>,
) -> (StatusCode, Option<String>, Bytes) {
    let service = tower::Layer::layer(&layer, origin(body, etag));
    let response = service.oneshot(request).await.unwrap();
    let tag = response
        .headers()
        .get("etag")
        .map(|v| v.to_str().unwrap().to_owned());
    let status = response.status();
    (
        status,
        tag,
        response.into_body().collect().await.unwrap().to_bytes(),
    )
}

fn get(headers: &[(&str, &str)]) -> Request<()> {
    let mut builder = Request::get("/");
    for (n, v) in headers {
        builder = builder.header(*n, *v);
    }
    builder.body(()).unwrap()
}

#[tokio::test]
async fn adds_a_strong_etag_that_depends_only_on_the_content() {
    let (status, a, body) = send(EtagLayer::new(), "hello", None, get(&[])).await;
    assert_eq!((status, body.as_ref()), (StatusCode::OK, &b"hello"[..]));
    let a = a.unwrap();
    assert!(
        a.starts_with('"') && a.ends_with('"') && a.len() == 34,
        "{a}"
    );
    let (_, again, _) = send(EtagLayer::new(), "hello", None, get(&[])).await;
    let (_, other, _) = send(EtagLayer::new(), "hellp", None, get(&[])).await;
    assert_eq!(again.unwrap(), a);
    assert_ne!(other.unwrap(), a);
}

#[tokio::test]
async fn answers_a_matching_if_none_match_with_304() {
    let (_, tag, _) = send(EtagLayer::new(), "hello", None, get(&[])).await;
    let tag = tag.unwrap();
    let weak = format!("W/{tag}");
    let list = format!("\"nope\", {tag}");
    for inm in [tag.as_str(), weak.as_str(), list.as_str(), "*"] {
        let (status, got, body) = send(
            EtagLayer::new(),
            "hello",
            None,
            get(&[("if-none-match", inm)]),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_MODIFIED, "{inm}");
        assert_eq!(got.as_deref(), Some(tag.as_str()));
        assert!(body.is_empty());
    }
    let (status, _, body) = send(
        EtagLayer::new(),
        "hello",
        None,
        get(&[("if-none-match", "\"other\"")]),
    )
    .await;
    assert_eq!((status, body.as_ref()), (StatusCode::OK, &b"hello"[..]));
}

#[tokio::test]
async fn leaves_existing_etags_and_unsafe_methods_alone() {
    let (_, tag, _) = send(EtagLayer::new(), "x", Some("\"mine\""), get(&[])).await;
    assert_eq!(tag.as_deref(), Some("\"mine\""));
    let post = Request::post("/").body(()).unwrap();
    let (_, tag, _) = send(EtagLayer::new(), "x", None, post).await;
    assert_eq!(tag, None);
}

#[tokio::test]
async fn head_responses_get_no_tag_made_from_their_empty_body() {
    // A handler answering HEAD sends no body: a hash of nothing would be a tag the
    // GET never carries.
    let head = Request::head("/")
        .header("if-none-match", "*")
        .body(())
        .unwrap();
    let (status, tag, _) = send(EtagLayer::new(), "", None, head).await;
    assert_eq!((status, tag), (StatusCode::OK, None));
}

#[tokio::test]
async fn bodies_over_the_limit_pass_without_an_etag_and_intact() {
    let layer = EtagLayer::new().max_body(NonZeroUsize::new(4).unwrap());
    let (status, tag, body) = send(layer, "0123456789", None, get(&[])).await;
    assert_eq!(
        (status, tag, body.as_ref()),
        (StatusCode::OK, None, &b"0123456789"[..])
    );
}

proptest! {
    #[test]
    fn malformed_if_none_match_never_panics(inm in "[ -~\t]{0,60}") {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
            let (status, _, _) = send(EtagLayer::new(), "hello", None, get(&[("if-none-match", &inm)])).await;
            assert!(status == StatusCode::OK || status == StatusCode::NOT_MODIFIED);
        });
    }
}
