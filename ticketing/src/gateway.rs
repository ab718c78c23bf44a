//! The gateway as its own process: a reverse proxy routing `/api/users` →
//! auth, `/api/tickets` → tickets, `/api/orders` → orders, `/api/payments` →
//! payments and everything else → web (the role an Ingress plays in
//! Kubernetes). In the all-in-one mode no proxy is needed: the services'
//! routers are merged in process.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use shared::ApiError;
use shared::http::{BODY_LIMIT, PeerAddr};

/// Where each route prefix goes.
#[derive(Debug, Clone)]
pub struct Upstreams {
    pub auth: String,
    pub tickets: String,
    pub orders: String,
    pub payments: String,
    /// The web client; `None` until it exists (then `/` is a 404).
    pub web: Option<String>,
}

impl Upstreams {
    fn route(&self, path: &str) -> Option<(&'static str, &str)> {
        let under = |prefix: &str| path == prefix || path.starts_with(&format!("{prefix}/"));
        if under("/api/users") {
            Some(("auth", &self.auth))
        } else if under("/api/tickets") {
            Some(("tickets", &self.tickets))
        } else if under("/api/orders") {
            Some(("orders", &self.orders))
        } else if under("/api/payments") {
            Some(("payments", &self.payments))
        } else {
            self.web.as_deref().map(|w| ("web", w))
        }
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
    let Some((service, base)) = gw.upstreams.route(&path) else {
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
    let body = match axum::body::to_bytes(body, BODY_LIMIT + 1).await {
        Ok(b) if b.len() <= BODY_LIMIT => b,
        _ => return ApiError::PayloadTooLarge.into_response(),
    };
    let mut upstream = gw.client.request(parts.method.clone(), &target).body(body);
    for (name, value) in parts.headers.iter().filter(|(n, _)| !hop_by_hop(n)) {
        upstream = upstream.header(name, value);
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
/// upstream answers its `/healthz`).
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
    let mut named = vec![
        ("auth", upstreams.auth.clone()),
        ("tickets", upstreams.tickets.clone()),
        ("orders", upstreams.orders.clone()),
        ("payments", upstreams.payments.clone()),
    ];
    if let Some(web) = &upstreams.web {
        named.push(("web", web.clone()));
    }
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
    shared::http::layers(shared::http::health_router(checks).merge(proxied))
}
