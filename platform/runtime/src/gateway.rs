//! The gateway as its own process: a reverse proxy routing each API prefix
//! to the service that owns it (the product's prefix → service table) and
//! everything else to the pages — the role an Ingress plays in Kubernetes.
//! In the all-in-one mode no proxy is needed: the services' routers are
//! merged in process. The same [`Upstreams`] tell the pages' API client
//! where each service is.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use shared::ApiError;
use shared::http::{BODY_LIMIT, PeerAddr};

use crate::client::Api;

/// One service's replicas: the base URLs it answers at, taken in turn (the
/// round-robin a Kubernetes Service does), so a gateway on one machine can
/// spread the load over several processes of a service.
#[derive(Debug)]
pub struct Replicas {
    bases: Vec<String>,
    next: AtomicUsize,
}

impl Replicas {
    /// `urls` is one base URL, or several separated by commas.
    fn parse(urls: &str) -> Replicas {
        let bases = urls
            .split(',')
            .map(|u| u.trim().trim_end_matches('/').to_owned())
            .filter(|u| !u.is_empty())
            .collect::<Vec<_>>();
        Replicas {
            // An empty setting keeps one empty base: requests to it fail as
            // unavailable, as they did before replicas.
            bases: if bases.is_empty() {
                vec![String::new()]
            } else {
                bases
            },
            next: AtomicUsize::new(0),
        }
    }

    /// The replicas in the order this request tries them: starting at the
    /// next in turn, then the others.
    pub fn rotation(&self) -> impl Iterator<Item = &str> {
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.bases.len();
        (0..n).map(move |i| self.bases[(first + i) % n].as_str())
    }

    /// The next replica in turn.
    pub fn pick(&self) -> &str {
        self.rotation().next().unwrap_or_default()
    }
}

/// Where each route prefix goes: the product's prefix → service table with
/// the base URLs of each service's replicas, and where everything else goes
/// (the pages), if anywhere.
#[derive(Debug, Clone)]
pub struct Upstreams {
    routes: Vec<(&'static str, &'static str, Arc<Replicas>)>,
    rest: Option<(&'static str, Arc<Replicas>)>,
}

impl Upstreams {
    /// `table` is the product's `(prefix, service)` list; `base` gives each
    /// service's base URL, or its replicas' separated by commas (an error
    /// stops at the first service without one).
    pub fn new<E>(
        table: &'static [(&'static str, &'static str)],
        mut base: impl FnMut(&'static str) -> Result<String, E>,
    ) -> Result<Upstreams, E> {
        let mut routes = Vec::with_capacity(table.len());
        for (prefix, service) in table {
            let urls = base(service)?;
            routes.push((*prefix, *service, Arc::new(Replicas::parse(&urls))));
        }
        Ok(Upstreams { routes, rest: None })
    }

    /// Everything outside the table goes to `name` at `base` (the pages).
    pub fn with_rest(mut self, name: &'static str, base: String) -> Upstreams {
        self.rest = Some((name, Arc::new(Replicas::parse(&base))));
        self
    }

    /// The service that serves `path` (a query string aside), and its
    /// replicas.
    pub fn replicas_for(&self, path: &str) -> Option<(&'static str, &Replicas)> {
        let path = path.split_once('?').map_or(path, |(path, _)| path);
        let under = |prefix: &str| {
            path.strip_prefix(prefix)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        };
        self.routes
            .iter()
            .find(|(prefix, _, _)| under(prefix))
            .map(|(_, service, replicas)| (*service, replicas.as_ref()))
            .or_else(|| {
                self.rest
                    .as_ref()
                    .map(|(name, replicas)| (*name, replicas.as_ref()))
            })
    }

    /// The service that serves `path` (a query string aside), and the base
    /// URL of its next replica in turn.
    pub fn upstream_for(&self, path: &str) -> Option<(&'static str, &str)> {
        self.replicas_for(path)
            .map(|(service, replicas)| (service, replicas.pick()))
    }

    /// Every upstream by name, the rest last.
    fn named(&self) -> Vec<(&'static str, Arc<Replicas>)> {
        let mut out: Vec<_> = self
            .routes
            .iter()
            .map(|(_, service, replicas)| (*service, replicas.clone()))
            .collect();
        out.extend(self.rest.clone());
        out
    }

    /// A client of the API over HTTP to these upstreams.
    pub fn client(self) -> Api {
        Api::http(Arc::new(move |_: &Method, path: &str| {
            self.upstream_for(path).map(|(_, base)| base.to_owned())
        }))
    }
}

/// The proxy's HTTP client: hyper's pooled client, without what a general
/// client adds per request (URL parsing, redirect policy, default headers,
/// a timer per request) — the request and the answer pass through with
/// their headers as parsed once, and the answer's body streams through.
type Upstream =
    hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Body>;

struct Gateway {
    upstreams: Upstreams,
    client: Upstream,
}

/// How long an upstream may take to answer with its headers.
const UPSTREAM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
];

/// Removes the hop-by-hop headers, in place.
fn strip_hop_by_hop(headers: &mut axum::http::HeaderMap) {
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
}

/// Why one replica did not answer.
enum Failed {
    /// It refused the connection: it never saw the request.
    Refused(String),
    /// Anything else: it may have seen the request.
    Other(String),
}

async fn send(gw: &Gateway, req: axum::http::Request<Body>) -> Result<Response, Failed> {
    match tokio::time::timeout(UPSTREAM_TIMEOUT, gw.client.request(req)).await {
        Ok(Ok(res)) => {
            let (mut parts, body) = res.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Ok(Response::from_parts(parts, Body::new(body)))
        }
        Ok(Err(e)) if e.is_connect() => Err(Failed::Refused(store::report(&e))),
        Ok(Err(e)) => Err(Failed::Other(store::report(&e))),
        Err(_) => Err(Failed::Other(format!(
            "no answer within {} s",
            UPSTREAM_TIMEOUT.as_secs()
        ))),
    }
}

async fn proxy(State(gw): State<Arc<Gateway>>, peer: PeerAddr, req: Request) -> Response {
    let Some((service, replicas)) = gw.upstreams.replicas_for(req.uri().path()) else {
        return ApiError::NotFound.into_response();
    };
    let (mut parts, body) = req.into_parts();
    // Read whole (and bounded) before it is sent: a replica that refuses
    // the connection is followed by the next, with the same body.
    let body = match shared::http::read_body(body, BODY_LIMIT).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    // The host the client addressed, for the services' same-origin check.
    if let Some(host) = parts.headers.get(axum::http::header::HOST).cloned() {
        if !parts.headers.contains_key("x-forwarded-host") {
            parts.headers.insert("x-forwarded-host", host);
        }
    }
    if let Some(ip) = peer.0.map(|p| p.ip()) {
        let forwarded = match parts
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
        {
            Some(prior) => format!("{prior}, {ip}"),
            None => ip.to_string(),
        };
        if let Ok(value) = forwarded.parse() {
            parts.headers.insert("x-forwarded-for", value);
        }
    }
    strip_hop_by_hop(&mut parts.headers);
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    // A replica that refuses the connection never saw the request, so the
    // next one is tried; any other failure may have reached the service and
    // is answered 503 rather than sent twice.
    let mut last_error = None;
    for base in replicas.rotation() {
        let uri = match format!("{base}{path_and_query}").parse::<axum::http::Uri>() {
            Ok(uri) => uri,
            Err(e) => {
                last_error = Some(format!("{base}: not a URL: {e}"));
                break;
            }
        };
        let mut out = axum::http::Request::new(Body::from(body.clone()));
        *out.method_mut() = parts.method.clone();
        *out.uri_mut() = uri;
        *out.headers_mut() = parts.headers.clone();
        match send(&gw, out).await {
            Ok(res) => return res,
            Err(Failed::Refused(e)) => {
                tracing::warn!(service, replica = base, error = %e, "replica refused the connection, trying the next");
                last_error = Some(e);
            }
            Err(Failed::Other(e)) => {
                last_error = Some(e);
                break;
            }
        }
    }
    if let Some(e) = last_error {
        tracing::warn!(service, error = %e, "upstream unavailable");
    }
    ApiError::Unavailable(format!(
        "The {service} service is unavailable, try again shortly"
    ))
    .into_response()
}

/// The gateway's router, health routes included (`/readyz` checks that every
/// upstream answers its `/healthz`). Its fallback is the proxy:
/// [`crate::serve`] it with [`crate::edge::Fallback::Own`].
pub fn router(upstreams: Upstreams) -> Router {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("a plain HTTP client always builds");
    let gw = Arc::new(Gateway {
        upstreams: upstreams.clone(),
        client: hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http(),
    });
    let named = upstreams.named();
    let checks: Vec<(String, shared::http::ReadyCheck)> = named
        .into_iter()
        .map(|(name, replicas)| {
            let client = client.clone();
            // Ready while any replica of the service answers its `/healthz`.
            let check: shared::http::ReadyCheck = Arc::new(move || {
                let (client, replicas) = (client.clone(), replicas.clone());
                Box::pin(async move {
                    let mut errors = Vec::new();
                    for base in &replicas.bases {
                        match client.get(format!("{base}/healthz")).send().await {
                            Ok(r) if r.status().is_success() => return Ok(()),
                            Ok(r) => errors.push(format!("{base} answered {}", r.status())),
                            Err(e) => errors.push(format!("{base} unreachable: {e}")),
                        }
                    }
                    // Which upstream is away is the operator's business.
                    Err(shared::http::NotReady::with_detail(
                        "no replica answers",
                        errors.join("; "),
                    ))
                })
            });
            (format!("upstream {name}"), check)
        })
        .collect();
    let proxied = Router::new().fallback(proxy).with_state(gw);
    crate::edge::health_router(checks).merge(proxied)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &[(&str, &str)] = &[("/api/users", "auth"), ("/api/tickets", "tickets")];

    fn upstreams() -> Upstreams {
        Upstreams::new(TABLE, |s| Ok::<_, ()>(format!("http://{s}/"))).unwrap()
    }

    #[test]
    fn a_path_goes_to_the_service_whose_prefix_it_is_under() {
        let u = upstreams();
        assert_eq!(u.upstream_for("/api/users"), Some(("auth", "http://auth")));
        assert_eq!(
            u.upstream_for("/api/users/signin"),
            Some(("auth", "http://auth"))
        );
        assert_eq!(
            u.upstream_for("/api/tickets/x"),
            Some(("tickets", "http://tickets"))
        );
        assert_eq!(u.upstream_for("/api/usersx"), None);
        assert_eq!(u.upstream_for("/"), None);
        let u = u.with_rest("web", "http://web".into());
        assert_eq!(u.upstream_for("/orders"), Some(("web", "http://web")));
    }

    #[test]
    fn replicas_separated_by_commas_are_taken_in_turn() {
        let u = Upstreams::new(TABLE, |s| {
            Ok::<_, ()>(format!("http://{s}-1/, http://{s}-2,,"))
        })
        .unwrap();
        let picks: Vec<_> = (0..3)
            .map(|_| u.upstream_for("/api/tickets").unwrap().1.to_owned())
            .collect();
        assert_eq!(
            picks,
            ["http://tickets-1", "http://tickets-2", "http://tickets-1"]
        );
        // A request tries the next in turn first, then the others.
        let (_, replicas) = u.replicas_for("/api/users").unwrap();
        let order: Vec<_> = replicas.rotation().collect();
        assert_eq!(order, ["http://auth-1", "http://auth-2"]);
        let order: Vec<_> = replicas.rotation().collect();
        assert_eq!(order, ["http://auth-2", "http://auth-1"]);
    }

    #[test]
    fn a_missing_base_url_stops_at_that_service() {
        let err = Upstreams::new(TABLE, |s| {
            if s == "tickets" {
                Err(s)
            } else {
                Ok(String::new())
            }
        })
        .unwrap_err();
        assert_eq!(err, "tickets");
    }
}
