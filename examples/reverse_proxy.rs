//! A reverse proxy built on hyper, with tower-toolbox layers switched on by flags.
//!
//! ```text
//! cargo run --example reverse_proxy -- --listen 127.0.0.1:8080 \
//!     --upstream http://127.0.0.1:9000 --upstream http://127.0.0.1:9001 --cache
//! ```
//!
//! - `--listen ADDR`: where to accept connections (default `127.0.0.1:8080`);
//! - `--upstream URL`: an origin, repeatable; requests go round robin;
//! - `--rate-limit N/s` (or `N/m`, `N/h`): at most N requests per second
//!   (minute, hour) per client IP, the TCP peer, up to N at once; the rest get
//!   429 with `Retry-After`;
//! - `--compress`: responses compressed as the client accepts (gzip, deflate,
//!   br, zstd) when their type is worth it;
//! - `--decompress`: request bodies with a `Content-Encoding` decompressed
//!   before they are forwarded, with a bound on size and ratio;
//! - `--cache`: an RFC 9111 cache in shared mode in front of the upstreams;
//! - `--etag`: strong `ETag`s for upstream responses that lack one (inside the
//!   cache, so stored responses can be revalidated);
//! - `--shed N`: at most N requests to the upstreams at once, the rest in a
//!   CoDel line that sheds them with 503 once it stands;
//! - `--concurrency N`: at most N requests to the upstreams at once, the rest
//!   refused at once with 503.
//!
//! Every layer is off unless named. They apply in the order above, from the
//! client in: a client over its rate costs nothing further; compression sits
//! outside the cache, so the cache keeps one identity copy and each client gets
//! the coding it accepts; shedding and the concurrency limit sit inside the
//! cache, so they guard the upstreams and never hold back a hit.
//!
//! Every method (unknown ones too), path, query and header is forwarded as
//! received, except the hop-by-hop fields, in both directions. An unreachable
//! upstream is a 502.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
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
use tower_toolbox::compression::{CompressionLayer, RequestDecompressionLayer};
use tower_toolbox::concurrency::ConcurrencyLimitLayer;
use tower_toolbox::key::PeerAddr;
use tower_toolbox::rate_limit::{Quota, RateLimitLayer};
use tower_toolbox::shed::LoadShedLayer;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type every stage of the proxy speaks.
pub type ProxyBody = UnsyncBoxBody<Bytes, BodyFailure>;

/// Why a body failed: the error of whichever stage failed it. A type of its
/// own (a boxed error is not itself an `Error`) so that layers wrapping a body
/// can wrap its error too.
#[derive(Debug)]
pub struct BodyFailure(BoxError);

impl std::fmt::Display for BodyFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for BodyFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// The proxy's settings, from the command line.
#[derive(Clone, Debug)]
pub struct Options {
    pub listen: SocketAddr,
    pub upstreams: Vec<Uri>,
    /// `--rate-limit N/s`: the per-client quota.
    pub rate_limit: Option<Rate>,
    pub compress: bool,
    pub decompress: bool,
    pub cache: bool,
    pub etag: bool,
    /// `--shed N`: requests let through to the upstreams at once.
    pub shed: Option<NonZeroUsize>,
    /// `--concurrency N`: requests let through to the upstreams at once.
    pub concurrency: Option<NonZeroUsize>,
}

/// A request rate: `count` per `per`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub count: NonZeroU32,
    pub per: Per,
}

/// The period of a [`Rate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Per {
    Second,
    Minute,
    Hour,
}

impl Rate {
    /// Reads `N/s`, `N/m` or `N/h` with N at least 1.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (count, per) = text
            .split_once('/')
            .ok_or_else(|| format!("--rate-limit {text}: expected N/s, N/m or N/h"))?;
        let count = count
            .parse::<NonZeroU32>()
            .map_err(|e| format!("--rate-limit {text}: {e}"))?;
        let per = match per {
            "s" => Per::Second,
            "m" => Per::Minute,
            "h" => Per::Hour,
            _ => return Err(format!("--rate-limit {text}: the period is s, m or h")),
        };
        Ok(Rate { count, per })
    }

    /// The quota: `count` per period, all of them at once if need be.
    pub fn quota(self) -> Quota {
        let quota = match self.per {
            Per::Second => Quota::per_second(self.count),
            Per::Minute => Quota::per_minute(self.count),
            Per::Hour => Quota::per_hour(self.count),
        };
        quota.burst(self.count)
    }
}

fn positive(flag: &str, value: Option<String>) -> Result<NonZeroUsize, String> {
    let value = value.ok_or_else(|| format!("{flag} needs a number"))?;
    value
        .parse()
        .map_err(|e| format!("{flag} {value}: {e} (expected a whole number of at least 1)"))
}

impl Options {
    /// Reads `--listen`, `--upstream` (repeatable) and the layer flags.
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Self, String> {
        let mut options = Options {
            listen: "127.0.0.1:8080".parse().expect("a valid address"),
            upstreams: Vec::new(),
            rate_limit: None,
            compress: false,
            decompress: false,
            cache: false,
            etag: false,
            shed: None,
            concurrency: None,
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
                "--rate-limit" => {
                    let value = args.next().ok_or("--rate-limit needs N/s, N/m or N/h")?;
                    options.rate_limit = Some(Rate::parse(&value)?);
                }
                "--compress" => options.compress = true,
                "--decompress" => options.decompress = true,
                "--cache" => options.cache = true,
                "--etag" => options.etag = true,
                "--shed" => options.shed = Some(positive("--shed", args.next())?),
                "--concurrency" => {
                    options.concurrency = Some(positive("--concurrency", args.next())?);
                }
                other => return Err(format!("unknown argument {other}")),
            }
        }
        if options.upstreams.is_empty() {
            return Err("at least one --upstream is needed".into());
        }
        Ok(options)
    }
}

type ProxyService = BoxCloneSyncService<Request<ProxyBody>, Response<ProxyBody>, Infallible>;

fn boxed<B>(response: Response<B>) -> Response<ProxyBody>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    response.map(|body| body.map_err(|e| BodyFailure(e.into())).boxed_unsync())
}

fn boxed_request<B>(request: Request<B>) -> Request<ProxyBody>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    request.map(|body| body.map_err(|e| BodyFailure(e.into())).boxed_unsync())
}

/// `layer` around `service`, boxed again so every stage has one type.
fn wrap<L, B>(service: ProxyService, layer: L) -> ProxyService
where
    L: Layer<ProxyService>,
    L::Service: tower::Service<Request<ProxyBody>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    <L::Service as tower::Service<Request<ProxyBody>>>::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    BoxCloneSyncService::new(layer.layer(service).map_response(boxed))
}

/// The forwarding service: round robin over the upstreams, hop-by-hop fields
/// removed both ways, 502 when an upstream cannot be reached.
fn forward(upstreams: Vec<Uri>) -> ProxyService {
    let client: Client<HttpConnector, ProxyBody> =
        Client::builder(TokioExecutor::new()).build_http();
    let upstreams = Arc::new(upstreams);
    let next = Arc::new(AtomicUsize::new(0));
    BoxCloneSyncService::new(tower::service_fn(move |request: Request<ProxyBody>| {
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

/// The whole stack for `options`, built from the upstreams out.
pub fn stack(options: &Options) -> ProxyService {
    let mut service = forward(options.upstreams.clone());
    if let Some(limit) = options.concurrency {
        service = wrap(service, ConcurrencyLimitLayer::new(limit));
    }
    if let Some(limit) = options.shed {
        service = wrap(service, LoadShedLayer::new(limit));
    }
    if options.etag {
        service = wrap(service, EtagLayer::new());
    }
    if options.cache {
        service = wrap(service, CacheLayer::new());
    }
    if options.decompress {
        let inner = service.map_request(boxed_request);
        service = BoxCloneSyncService::new(
            RequestDecompressionLayer::new()
                .layer(inner)
                .map_response(boxed),
        );
    }
    if options.compress {
        service = wrap(service, CompressionLayer::new());
    }
    if let Some(rate) = options.rate_limit {
        service = wrap(service, RateLimitLayer::new(rate.quota()));
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
            let Ok((stream, peer)) = listener.accept().await else {
                continue;
            };
            // The client's address, for the per-client rate limit.
            let service = service
                .clone()
                .map_request(move |request: Request<Incoming>| {
                    let mut request = boxed_request(request);
                    request.extensions_mut().insert(PeerAddr(peer));
                    request
                });
            let service = TowerToHyperService::new(service);
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
                "{message}\nusage: reverse_proxy [--listen ADDR] --upstream URL... \
                 [--rate-limit N/s] [--compress] [--decompress] [--cache] [--etag] \
                 [--shed N] [--concurrency N]"
            );
            std::process::exit(2);
        }
    };
    let address = start(options.clone())
        .await
        .expect("bind the listen address");
    println!(
        "proxying {address} -> {:?} ({options:?})",
        options
            .upstreams
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
    );
    tokio::signal::ctrl_c().await.expect("wait for Ctrl-C");
}
