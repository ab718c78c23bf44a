//! The gateway as its own process: a reverse proxy routing each API prefix
//! to the service that owns it (the product's prefix → service table) and
//! everything else to the pages — the role an Ingress plays in Kubernetes.
//! In the all-in-one mode no proxy is needed: the services' routers are
//! merged in process. The same [`Upstreams`] tell the pages' API client
//! where each service is.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use shared::ApiError;
use shared::http::{BODY_LIMIT, PeerAddr};

use crate::client::Api;

/// Where each route prefix goes: the product's prefix → service table with
/// a base URL for each service, and where everything else goes (the pages),
/// if anywhere.
#[derive(Debug, Clone)]
pub struct Upstreams {
    routes: Vec<(&'static str, &'static str, String)>,
    rest: Option<(&'static str, String)>,
}

impl Upstreams {
    /// `table` is the product's `(prefix, service)` list; `base` gives each
    /// service's base URL (an error stops at the first service without one).
    pub fn new<E>(
        table: &'static [(&'static str, &'static str)],
        mut base: impl FnMut(&'static str) -> Result<String, E>,
    ) -> Result<Upstreams, E> {
        let mut routes = Vec::with_capacity(table.len());
        for (prefix, service) in table {
            let url = base(service)?;
            routes.push((*prefix, *service, url.trim_end_matches('/').to_owned()));
        }
        Ok(Upstreams { routes, rest: None })
    }

    /// Everything outside the table goes to `name` at `base` (the pages).
    pub fn with_rest(mut self, name: &'static str, base: String) -> Upstreams {
        self.rest = Some((name, base.trim_end_matches('/').to_owned()));
        self
    }

    /// The service that serves `path` (a query string aside), and its base
    /// URL.
    pub fn upstream_for(&self, path: &str) -> Option<(&'static str, &str)> {
        let path = path.split_once('?').map_or(path, |(path, _)| path);
        let under = |prefix: &str| {
            path.strip_prefix(prefix)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        };
        self.routes
            .iter()
            .find(|(prefix, _, _)| under(prefix))
            .map(|(_, service, base)| (*service, base.as_str()))
            .or_else(|| {
                self.rest
                    .as_ref()
                    .map(|(name, base)| (*name, base.as_str()))
            })
    }

    /// Every upstream by name, the rest last.
    fn named(&self) -> Vec<(&'static str, String)> {
        let mut out: Vec<_> = self
            .routes
            .iter()
            .map(|(_, service, base)| (*service, base.clone()))
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

struct Gateway {
    upstreams: Upstreams,
    client: reqwest::Client,
}

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

fn hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name.as_str())
}

async fn proxy(State(gw): State<Arc<Gateway>>, peer: PeerAddr, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let Some((service, base)) = gw.upstreams.upstream_for(&path) else {
        return ApiError::NotFound.into_response();
    };
    let target = format!(
        "{}{}",
        base.trim_end_matches('/'),
        req.uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
    );
    let (parts, body) = req.into_parts();
    let body = match shared::http::read_body(body, BODY_LIMIT).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let mut upstream = gw.client.request(parts.method.clone(), &target).body(body);
    for (name, value) in parts.headers.iter().filter(|(n, _)| !hop_by_hop(n)) {
        upstream = upstream.header(name, value);
    }
    // The host the client addressed, for the services' same-origin check.
    if let Some(host) = parts.headers.get(axum::http::header::HOST) {
        if !parts.headers.contains_key("x-forwarded-host") {
            upstream = upstream.header("x-forwarded-host", host);
        }
    }
    if let Some(ip) = peer.0.map(|p| p.ip().to_string()) {
        let forwarded = match parts
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
        {
            Some(prior) => format!("{prior}, {ip}"),
            None => ip,
        };
        upstream = upstream.header("x-forwarded-for", forwarded);
    }
    match upstream.send().await {
        Ok(res) => {
            let mut out = Response::builder().status(res.status());
            for (name, value) in res.headers().iter().filter(|(n, _)| !hop_by_hop(n)) {
                out = out.header(name, value);
            }
            let bytes = res.bytes().await.unwrap_or_default();
            out.body(Body::from(bytes))
                .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
        }
        Err(e) => {
            tracing::warn!(service, error = %e, "upstream unavailable");
            ApiError::Unavailable(format!(
                "The {service} service is unavailable, try again shortly"
            ))
            .into_response()
        }
    }
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
        client: client.clone(),
    });
    let named = upstreams.named();
    let checks: Vec<(String, shared::http::ReadyCheck)> = named
        .into_iter()
        .map(|(name, base)| {
            let client = client.clone();
            let check: shared::http::ReadyCheck = Arc::new(move || {
                let (client, url) = (
                    client.clone(),
                    format!("{}/healthz", base.trim_end_matches('/')),
                );
                Box::pin(async move {
                    match client.get(&url).send().await {
                        Ok(r) if r.status().is_success() => Ok(()),
                        Ok(r) => Err(format!("answered {}", r.status())),
                        Err(e) => Err(format!("unreachable: {e}")),
                    }
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
