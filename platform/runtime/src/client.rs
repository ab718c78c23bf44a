//! A client of a product's public HTTP API, for server-rendered pages
//! (a product's web client): over HTTP to the services
//! (microservices mode), or through the in-process router of the
//! all-in-one process — the same requests and responses without a socket,
//! with the browser's address as the peer. It forwards the browser's
//! session, address and trace.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Method, StatusCode, header};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tower::ServiceExt;

const TRACEPARENT: &str = "traceparent";

/// Which origin serves a request: its method and path → base URL (`None`:
/// no service serves it).
pub type Resolve = Arc<dyn Fn(&Method, &str) -> Option<String> + Send + Sync>;

#[derive(Clone)]
enum Transport {
    Http {
        client: reqwest::Client,
        resolve: Resolve,
    },
    InProcess(axum::Router),
}

/// A client of the public API. Cheap to clone.
#[derive(Clone)]
pub struct Api {
    transport: Transport,
}

/// The API could not be reached or answered nonsense.
#[derive(Debug, Clone)]
pub struct Unavailable(pub String);

/// One API response.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
    /// `Set-Cookie` headers to pass on to the browser (the session).
    pub cookies: Vec<HeaderValue>,
}

/// One entry of the shared error shape.
#[derive(Debug, Clone, Deserialize)]
pub struct ApiFieldError {
    pub message: String,
    pub field: Option<String>,
}

impl Reply {
    pub fn ok(&self) -> bool {
        self.status.is_success()
    }

    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, Unavailable> {
        serde_json::from_value(self.body.clone())
            .map_err(|e| Unavailable(format!("unexpected answer ({}): {e}", self.status)))
    }

    /// The errors of a failed request, in the shared shape.
    pub fn errors(&self) -> Vec<ApiFieldError> {
        #[derive(Deserialize)]
        struct Errors {
            errors: Vec<ApiFieldError>,
        }
        serde_json::from_value::<Errors>(self.body.clone())
            .map(|e| e.errors)
            .unwrap_or_else(|_| {
                vec![ApiFieldError {
                    message: format!("Something went wrong ({})", self.status),
                    field: None,
                }]
            })
    }
}

/// Who is asking: the browser's session and address.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    pub session: Option<String>,
    /// The peer of this request (the browser, or a proxy in front).
    pub addr: Option<SocketAddr>,
    /// `X-Forwarded-For` as it arrived (set by proxies in front).
    pub forwarded_for: Option<String>,
    /// The page request's W3C `traceparent`, passed on so the API calls it
    /// makes are part of its trace.
    pub traceparent: Option<String>,
    /// The `Idempotency-Key` of a write (a form carries one, so sending it
    /// twice acts once).
    pub idempotency_key: Option<String>,
}

impl Caller {
    /// `X-Forwarded-For` to send on: what arrived, then the peer.
    fn forward_chain(&self) -> Option<String> {
        let peer = self.addr.map(|a| a.ip().to_string());
        match (self.forwarded_for.as_deref(), peer) {
            (Some(chain), Some(peer)) => Some(format!("{chain}, {peer}")),
            (Some(chain), None) => Some(chain.to_owned()),
            (None, peer) => peer,
        }
    }
}

impl Api {
    /// Over HTTP, to the origin `resolve` picks for each request.
    pub fn http(resolve: Resolve) -> Api {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Api {
            transport: Transport::Http { client, resolve },
        }
    }

    /// Through `router`, the services' composed API in this process.
    pub fn in_process(router: axum::Router) -> Api {
        Api {
            transport: Transport::InProcess(router),
        }
    }

    /// Sends one request as `caller`.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        caller: &Caller,
        body: Option<Value>,
    ) -> Result<Reply, Unavailable> {
        // What the request carries, the same on either transport.
        let mut headers = Vec::with_capacity(5);
        if let Some(s) = &caller.session {
            headers.push((header::AUTHORIZATION, format!("Bearer {s}")));
        }
        if let Some(t) = &caller.traceparent {
            headers.push((header::HeaderName::from_static(TRACEPARENT), t.clone()));
        }
        if let Some(k) = &caller.idempotency_key {
            headers.push((
                header::HeaderName::from_static(shared::idempotency::HEADER),
                k.clone(),
            ));
        }
        let body = body.map(|b| {
            headers.push((header::CONTENT_TYPE, "application/json".to_owned()));
            serde_json::to_vec(&b).unwrap_or_default()
        });
        let (status, response_headers, bytes) = match &self.transport {
            Transport::Http { client, resolve } => {
                let base = resolve(&method, path)
                    .ok_or_else(|| Unavailable(format!("no service serves {path}")))?;
                let url = format!("{base}{path}");
                // Over a socket the service sees this process as the peer:
                // the browser's address goes on in `X-Forwarded-For`.
                if let Some(chain) = caller.forward_chain() {
                    headers.push((header::HeaderName::from_static("x-forwarded-for"), chain));
                }
                let mut req = client.request(method, &url);
                for (name, value) in headers {
                    req = req.header(name, value);
                }
                if let Some(body) = body {
                    req = req.body(body);
                }
                let res = req
                    .send()
                    .await
                    .map_err(|e| Unavailable(format!("{url}: {e}")))?;
                let (status, response_headers) = (res.status(), res.headers().clone());
                let bytes = res
                    .bytes()
                    .await
                    .map_err(|e| Unavailable(format!("{url}: {e}")))?;
                (status, response_headers, bytes)
            }
            Transport::InProcess(router) => {
                // In process the browser is the peer, as on the page's own
                // request: what proxies in front said goes on as it came.
                if let Some(chain) = &caller.forwarded_for {
                    headers.push((
                        header::HeaderName::from_static("x-forwarded-for"),
                        chain.clone(),
                    ));
                }
                let mut req = axum::http::Request::builder().method(method).uri(path);
                for (name, value) in headers {
                    req = req.header(name, value);
                }
                let mut req = req
                    .body(body.map_or_else(Body::empty, Body::from))
                    .map_err(|e| Unavailable(format!("{path}: {e}")))?;
                if let Some(addr) = caller.addr {
                    req.extensions_mut().insert(ConnectInfo(addr));
                }
                // Counted once, as the page request that made it.
                req.extensions_mut().insert(crate::edge::InProcessCall);
                let res = router
                    .clone()
                    .oneshot(req)
                    .await
                    .map_err(|e| Unavailable(format!("{path}: {e}")))?;
                let (parts, body) = res.into_parts();
                let bytes = axum::body::to_bytes(body, 1 << 20)
                    .await
                    .map_err(|e| Unavailable(format!("{path}: {e}")))?;
                (parts.status, parts.headers, bytes)
            }
        };
        Ok(Reply {
            status,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            cookies: response_headers
                .get_all(header::SET_COOKIE)
                .iter()
                .cloned()
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Caller;

    #[test]
    fn the_forwarded_chain_keeps_what_proxies_said_and_adds_the_peer() {
        let mut c = Caller {
            addr: Some("10.0.0.5:4000".parse().unwrap()),
            ..Caller::default()
        };
        assert_eq!(c.forward_chain().as_deref(), Some("10.0.0.5"));
        c.forwarded_for = Some("203.0.113.7".into());
        assert_eq!(c.forward_chain().as_deref(), Some("203.0.113.7, 10.0.0.5"));
        c.addr = None;
        assert_eq!(c.forward_chain().as_deref(), Some("203.0.113.7"));
    }
}
