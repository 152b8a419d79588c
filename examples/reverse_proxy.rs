//! A reverse proxy built on hyper, with tower-toolbox layers switched on by flags.
//!
//! ```text
//! cargo run --example reverse_proxy -- --listen 127.0.0.1:8080 \
//!     --upstream http://127.0.0.1:9000 --upstream http://127.0.0.1:9001 --cache
//! ```
//!
//! - `--listen ADDR`: where to accept connections (default `127.0.0.1:8080`);
//! - `--upstream URL`: an origin, repeatable; requests go round robin;
//! - `--cache`: an RFC 9111 cache in shared mode in front of the upstreams;
//! - `--etag`: strong `ETag`s for upstream responses that lack one (inside the
//!   cache, so stored responses can be revalidated).
//!
//! Every layer is off unless named. Every method (unknown ones too), path, query
//! and header is forwarded as received, except the hop-by-hop fields, in both
//! directions. An unreachable upstream is a 502.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tower::util::BoxCloneSyncService;
use tower::{Layer, ServiceExt};
use tower_toolbox::cache::{CacheLayer, EtagLayer, strip_hop_by_hop};

/// The body type every stage of the proxy speaks.
pub type ProxyBody = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// The proxy's settings, from the command line.
#[derive(Clone, Debug)]
pub struct Options {
    pub listen: SocketAddr,
    pub upstreams: Vec<Uri>,
    pub cache: bool,
    pub etag: bool,
}

impl Options {
    /// Reads `--listen`, `--upstream` (repeatable), `--cache` and `--etag`.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Self, String> {
        let mut options = Options {
            listen: "127.0.0.1:8080".parse().expect("a valid address"),
            upstreams: Vec::new(),
            cache: false,
            etag: false,
        };
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--listen" => {
                    let value = args.next().ok_or("--listen needs an address")?;
                    options.listen = value
                        .parse()
                        .map_err(|e| format!("--listen {value}: {e}"))?;
                }
                "--upstream" => {
                    let value = args.next().ok_or("--upstream needs a URL")?;
                    let uri: Uri = value
                        .parse()
                        .map_err(|e| format!("--upstream {value}: {e}"))?;
                    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
                        return Err(format!("--upstream {value}: expected http://host:port"));
                    }
                    options.upstreams.push(uri);
                }
                "--cache" => options.cache = true,
                "--etag" => options.etag = true,
                other => return Err(format!("unknown argument {other}")),
            }
        }
        if options.upstreams.is_empty() {
            return Err("at least one --upstream is needed".into());
        }
        Ok(options)
    }
}

type ProxyService = BoxCloneSyncService<Request<Incoming>, Response<ProxyBody>, Infallible>;

fn boxed<B>(response: Response<B>) -> Response<ProxyBody>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    response.map(|body| body.map_err(Into::into).boxed_unsync())
}

/// The forwarding service: round robin over the upstreams, hop-by-hop fields
/// removed both ways, 502 when an upstream cannot be reached.
fn forward(upstreams: Vec<Uri>) -> ProxyService {
    let client: Client<HttpConnector, Incoming> =
        Client::builder(TokioExecutor::new()).build_http();
    let upstreams = Arc::new(upstreams);
    let next = Arc::new(AtomicUsize::new(0));
    BoxCloneSyncService::new(tower::service_fn(move |request: Request<Incoming>| {
        let (client, upstreams, next) = (client.clone(), upstreams.clone(), next.clone());
        async move {
            let upstream = &upstreams[next.fetch_add(1, Ordering::Relaxed) % upstreams.len()];
            let (mut parts, body) = request.into_parts();
            let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            let base = upstream.path().trim_end_matches('/');
            parts.uri = format!(
                "http://{}{base}{path}",
                upstream.authority().expect("checked when parsed")
            )
            .parse()
            .expect("an authority and a path make a URI");
            parts.version = http::Version::HTTP_11;
            strip_hop_by_hop(&mut parts.headers);

            match client.request(Request::from_parts(parts, body)).await {
                Ok(response) => {
                    let (mut parts, body) = response.into_parts();
                    strip_hop_by_hop(&mut parts.headers);
                    Ok(boxed(Response::from_parts(parts, body)))
                }
                Err(error) => {
                    eprintln!("upstream {upstream}: {error}");
                    let mut response = Response::new(Full::new(Bytes::from("bad gateway\n")));
                    *response.status_mut() = StatusCode::BAD_GATEWAY;
                    Ok(boxed(response))
                }
            }
        }
    }))
}

/// The whole stack for `options`.
pub fn stack(options: &Options) -> ProxyService {
    let mut service = forward(options.upstreams.clone());
    if options.etag {
        service = BoxCloneSyncService::new(EtagLayer::new().layer(service).map_response(boxed));
    }
    if options.cache {
        service = BoxCloneSyncService::new(CacheLayer::new().layer(service).map_response(boxed));
    }
    service
}

/// Binds `options.listen` and serves the proxy in the background; returns the
/// bound address.
pub async fn start(options: Options) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(options.listen).await?;
    let address = listener.local_addr()?;
    let service = stack(&options);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let service = TowerToHyperService::new(service.clone());
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(address)
}

#[allow(dead_code)]
#[tokio::main]
async fn main() {
    let options = match Options::parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(message) => {
            eprintln!(
                "{message}\nusage: reverse_proxy [--listen ADDR] --upstream URL... [--cache] [--etag]"
            );
            std::process::exit(2);
        }
    };
    let address = start(options.clone())
        .await
        .expect("bind the listen address");
    println!(
        "proxying {address} -> {:?} (cache: {}, etag: {})",
        options
            .upstreams
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        options.cache,
        options.etag
    );
    tokio::signal::ctrl_c().await.expect("wait for Ctrl-C");
}
