//! The web client: the marketplace in a browser, rendered on the server with
//! compiled templates (askama) and usable without JavaScript; a small script
//! only runs the order countdown. It knows the services only through their
//! public HTTP API ([`api::Api`]), forwarding the browser's session.
//!
//! Every page carries security headers (a CSP without inline scripts or
//! styles, `nosniff`, `Referrer-Policy`, frame denial); every state-changing
//! form carries a CSRF token checked against a cookie (double submit).

pub mod api;
mod pages;

use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

pub use api::Api;
pub use pages::safe_next;

/// How the web client is set up.
#[derive(Clone)]
pub struct WebConfig {
    pub api: Api,
    /// Show the offline gateway's card tokens on the payment form.
    pub test_card_tokens: bool,
    /// `Secure` on the CSRF cookie (as on the session cookie).
    pub secure_cookies: bool,
    /// The secret the forms' tokens are derived with (every replica of the
    /// web client needs the same one: the session key does).
    pub form_key: Arc<[u8]>,
}

struct Web {
    config: WebConfig,
}

type Shared = Arc<Web>;

/// The pages and their assets, with the security headers and CSRF cookie.
/// No fallback: the caller routes what is left to [`not_found`] (or to the
/// API's JSON 404 under `/api`).
pub fn router(config: WebConfig) -> Router {
    let web: Shared = Arc::new(Web { config });
    Router::new()
        .route("/", get(pages::index))
        .route("/auth/signup", get(pages::signup_form).post(pages::signup))
        .route("/auth/signin", get(pages::signin_form).post(pages::signin))
        .route("/auth/signout", post(pages::signout))
        .route("/auth/signout-all", post(pages::signout_everywhere))
        .route("/account", get(pages::account))
        .route("/account/password", post(pages::change_password))
        .route("/admin/users", get(pages::admin_users))
        .route("/admin/users/{id}/ban", post(pages::ban))
        .route("/admin/users/{id}/unban", post(pages::unban))
        .route("/admin/parked", get(pages::admin_parked))
        .route("/admin/parked/{id}", get(pages::admin_parked_one))
        .route("/admin/parked/{id}/replay", post(pages::replay_parked))
        .route("/admin/parked/{id}/discard", post(pages::discard_parked))
        .route(
            "/tickets/new",
            get(pages::new_ticket_form).post(pages::new_ticket),
        )
        .route("/tickets/mine", get(pages::my_tickets))
        .route("/tickets/{id}", get(pages::show_ticket))
        .route(
            "/tickets/{id}/edit",
            get(pages::edit_ticket_form).post(pages::edit_ticket),
        )
        .route("/tickets/{id}/purchase", post(pages::purchase))
        .route("/orders", get(pages::my_orders))
        .route("/orders/{id}", get(pages::show_order))
        .route("/orders/{id}/pay", post(pages::pay))
        .route("/orders/{id}/cancel", post(pages::cancel))
        .route("/assets/{file}", get(asset))
        .layer(axum::middleware::from_fn_with_state(web.clone(), protect))
        .with_state(web)
}

/// The HTML 404 page, for paths outside the API that match no page.
pub async fn not_found() -> Response {
    status_page(StatusCode::NOT_FOUND).await
}

/// The HTML page for a request no page takes: 404 for a path that matches
/// none, 405 for a method a page does not answer.
pub async fn status_page(status: StatusCode) -> Response {
    let (heading, message) = match status {
        StatusCode::METHOD_NOT_ALLOWED => (
            "Not allowed here",
            "This page does not answer that kind of request.",
        ),
        _ => ("Page not found", "There is nothing at this address."),
    };
    pages::error_page(status, heading, message)
}

/// Ready when the API answers.
pub async fn check_ready(api: &Api) -> Result<(), runtime::NotReady> {
    let reply = api
        .call(
            axum::http::Method::GET,
            "/api/users/currentuser",
            &api::Caller::default(),
            None,
        )
        .await
        .map_err(|e| runtime::NotReady::with_detail("web: the API is unreachable", e.0))?;
    if reply.ok() {
        Ok(())
    } else {
        Err(format!("web: the API answered {}", reply.status).into())
    }
}

// ------------------------------------------------------------------ assets

const APP_CSS: &str = include_str!("../assets/app.css");
const APP_JS: &str = include_str!("../assets/app.js");

/// FNV-1a of the assets: their URLs change when they do, so they can be
/// cached for a year.
const fn fnv(bytes: &[u8], mut hash: u64) -> u64 {
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x100_0000_01b3);
        i += 1;
    }
    hash
}

const ASSET_HASH: u64 = fnv(
    APP_JS.as_bytes(),
    fnv(APP_CSS.as_bytes(), 0xcbf2_9ce4_8422_2325),
);

/// The assets' version, for their URLs (`/assets/app.css?v=…`).
pub fn asset_version() -> String {
    format!("{:012x}", ASSET_HASH & 0xffff_ffff_ffff)
}

async fn asset(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    let (body, kind) = match file.as_str() {
        "app.css" => (APP_CSS, "text/css; charset=utf-8"),
        "app.js" => (APP_JS, "text/javascript; charset=utf-8"),
        _ => return not_found().await,
    };
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
        ],
        body,
    )
        .into_response()
}

// --------------------------------------------------- headers, cookies, CSRF

/// A cookie's value from the request's `Cookie` headers.
pub(crate) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
        .filter(|v| !v.is_empty())
}

/// The token this request's forms carry and must send back: bound to the
/// session, so it changes when the user signs in or out.
#[derive(Clone)]
pub(crate) struct CsrfToken(pub String);

/// A form token: HMAC-SHA256 of what identifies the browser's session (its
/// session cookie when signed in, else its `csrf` cookie), so a token is
/// good for one session only — signing in rotates it, and a token read
/// before sign-in (or by another visitor) does not work after.
pub(crate) fn form_token(key: &[u8], binding: &str) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key)
        .expect("HMAC takes a key of any length");
    mac.update(b"ticketing form token\0");
    mac.update(binding.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .fold(String::with_capacity(64), |mut hex, b| {
            use std::fmt::Write as _;
            let _ = write!(hex, "{b:02x}");
            hex
        })
}

fn valid_token(t: &str) -> bool {
    t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Gives every browser a CSRF token (a cookie its forms echo). (The HTTP
/// edge gives every response the security headers.)
async fn protect(State(web): State<Shared>, mut req: Request, next: Next) -> Response {
    let existing = cookie(req.headers(), "csrf").filter(|t| valid_token(t));
    let fresh = existing.is_none();
    let token = existing.unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let binding = cookie(req.headers(), "session").unwrap_or_else(|| token.clone());
    req.extensions_mut()
        .insert(CsrfToken(form_token(&web.config.form_key, &binding)));
    let mut res = next.run(req).await;
    if fresh {
        let secure = if web.config.secure_cookies {
            "; Secure"
        } else {
            ""
        };
        if let Ok(v) = HeaderValue::from_str(&format!(
            "csrf={token}; Path=/; HttpOnly; SameSite=Lax{secure}"
        )) {
            res.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    res
}

/// Whether two strings are equal, in time independent of where they differ.
pub(crate) fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// What every page handler knows about the request.
pub(crate) struct Ctx {
    pub caller: api::Caller,
    pub csrf: String,
}

impl FromRequestParts<Shared> for Ctx {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &Shared,
    ) -> Result<Self, Self::Rejection> {
        let addr = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0);
        let csrf = parts
            .extensions
            .get::<CsrfToken>()
            .map(|t| t.0.clone())
            .unwrap_or_default();
        Ok(Ctx {
            caller: api::Caller {
                session: cookie(&parts.headers, "session"),
                addr,
                forwarded_for: parts
                    .headers
                    .get("x-forwarded-for")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
                traceparent: parts
                    .headers
                    .get("traceparent")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
                idempotency_key: None,
            },
            csrf,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_read_from_any_cookie_header() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1; session=abc"));
        h.append(header::COOKIE, HeaderValue::from_static("csrf=x"));
        assert_eq!(cookie(&h, "session").as_deref(), Some("abc"));
        assert_eq!(cookie(&h, "csrf").as_deref(), Some("x"));
        assert_eq!(cookie(&h, "none"), None);
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same_token("abcd", "abcd"));
        let (a, b) = (form_token(b"k", "session-a"), form_token(b"k", "session-b"));
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert_eq!(a, form_token(b"k", "session-a"));
        assert_ne!(a, form_token(b"other key", "session-a"));
        assert!(!same_token("abcd", "abce"));
        assert!(!same_token("abcd", "abc"));
        assert!(valid_token(&uuid::Uuid::new_v4().simple().to_string()));
        assert!(!valid_token("short"));
    }
}
