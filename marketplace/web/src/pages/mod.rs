//! The pages: each handler asks the API, then renders a template. Forms post
//! back to the page's own path, carry the CSRF token, and on an error show
//! the API's messages next to their fields (or at the top) with what the
//! user typed.

//!
//! This module holds what every page shares (the layout, form errors, the
//! error page, the extractors, the calls to the API); the pages themselves
//! are by subject: [`accounts`] (sign up, in, out, the account),
//! [`tickets`] (the listing, a ticket, selling), [`orders`] (an order,
//! paying), [`admin`] (users, parked messages).

mod accounts;
mod admin;
mod orders;
mod tickets;

pub(crate) use accounts::*;
pub(crate) use admin::*;
pub(crate) use orders::*;
pub(crate) use tickets::*;

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde_json::Value;

use crate::api::{
    self, ApiFieldError, Order, Payment, PublicStatus, Reply, Ticket, Unavailable, User,
};
use crate::{Ctx, Shared, same_token};
use marketplace_events::{OrderStatus, TicketStatus};
use runtime::parked::ParkedBody;
use shared::money::Dollars;
use shared::wire::Field;

// ------------------------------------------------------------ page plumbing

/// How many rows a listing page shows.
const PAGE_SIZE: usize = 20;

/// The API's `list` (a path, perhaps with a query of its own) for one
/// listing page: [`PAGE_SIZE`] rows after the row `after` (none, or empty:
/// from the start).
fn page_of(list: &str, after: Option<&str>) -> String {
    let joiner = if list.contains('?') { '&' } else { '?' };
    let mut path = format!("{list}{joiner}limit={PAGE_SIZE}");
    if let Some(a) = after.filter(|a| !a.is_empty()) {
        path.push_str(&format!("&after={}", encode(a)));
    }
    path
}

/// The API's resource at `path` (`/api/orders/{id}`): the page's 404 when
/// the API has none.
async fn fetch<T: serde::de::DeserializeOwned>(
    web: &Shared,
    ctx: &Ctx,
    path: &str,
) -> Result<T, PageError> {
    let reply = ctx.call(web, Method::GET, path, None).await?;
    if reply.status == StatusCode::NOT_FOUND {
        return Err(PageError::NotFound);
    }
    Ok(reply.parse()?)
}

/// Where the next listing page starts: after the last row of a full page;
/// none after a page that is not full (the list ended).
fn next_after<T>(rows: &[T], id: impl Fn(&T) -> String) -> Option<String> {
    (rows.len() == PAGE_SIZE)
        .then(|| rows.last().map(id))
        .flatten()
}

/// What the layout needs: the title, who is signed in, the CSRF token.
pub(crate) struct Layout {
    pub title: String,
    pub user: Option<User>,
    pub csrf: String,
    pub assets: String,
    /// A fresh idempotency key for the page's write forms (`_key`): the
    /// browser sending a form twice pays or orders once.
    pub form_key: String,
}

/// Errors to show on a form: at the top, and next to fields.
#[derive(Default)]
pub(crate) struct FormErrors {
    pub top: Vec<String>,
    fields: Vec<(String, String)>,
}

impl FormErrors {
    fn from_api(errors: Vec<ApiFieldError>, known_fields: &[&str]) -> FormErrors {
        let mut out = FormErrors::default();
        for e in errors {
            match e.field {
                Some(f) if known_fields.contains(&f.as_str()) => out.fields.push((f, e.message)),
                _ => out.top.push(e.message),
            }
        }
        out
    }

    fn top(message: impl Into<String>) -> FormErrors {
        FormErrors {
            top: vec![message.into()],
            fields: Vec::new(),
        }
    }

    /// The message for `name`, if any.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(f, _)| f == name)
            .map(|(_, m)| m.as_str())
    }
}

/// Why a page could not be shown.
pub(crate) enum PageError {
    Unavailable(Unavailable),
    NotFound,
    Forbidden(&'static str),
    SignIn(String),
    BadCsrf,
    /// A form that could not be read: its status and what to tell.
    BadForm(StatusCode, &'static str),
}

impl From<Unavailable> for PageError {
    fn from(e: Unavailable) -> Self {
        PageError::Unavailable(e)
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    heading: &'a str,
    message: &'a str,
    assets: String,
}

pub(crate) fn error_page(status: StatusCode, heading: &str, message: &str) -> Response {
    let page = ErrorPage {
        heading,
        message,
        assets: crate::asset_version(),
    };
    (status, render(&page)).into_response()
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        match self {
            PageError::Unavailable(e) => {
                tracing::warn!(error = %e.0, "web: the API is unavailable");
                error_page(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Temporarily unavailable",
                    "The marketplace cannot answer right now. Please try again in a moment.",
                )
            }
            PageError::NotFound => error_page(
                StatusCode::NOT_FOUND,
                "Page not found",
                "There is nothing at this address.",
            ),
            PageError::Forbidden(why) => error_page(StatusCode::FORBIDDEN, "Not allowed", why),
            PageError::SignIn(next) => {
                Redirect::to(&format!("/auth/signin?next={}", encode(&next))).into_response()
            }
            PageError::BadCsrf => error_page(
                StatusCode::FORBIDDEN,
                "This form has expired",
                "Go back, reload the page and send the form again.",
            ),
            PageError::BadForm(status, why) => {
                error_page(status, "This form could not be read", why)
            }
        }
    }
}

type PageResult = Result<Response, PageError>;

fn render(t: &impl Template) -> Html<String> {
    Html(t.render().unwrap_or_else(|e| {
        tracing::error!(error = %e, "web: a template failed to render");
        "<!doctype html><title>Error</title><p>Something went wrong.</p>".into()
    }))
}

fn page(status: StatusCode, t: &impl Template) -> PageResult {
    Ok((status, render(t)).into_response())
}

/// A submitted form's fields ([`runtime::pages::FormFields`]); what cannot
/// be read is answered with the error page in the site's layout.
pub(crate) struct PageForm(pub HashMap<String, String>);

impl<S: Send + Sync> axum::extract::FromRequest<S> for PageForm {
    type Rejection = PageError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, PageError> {
        runtime::pages::FormFields::from_request(req, state)
            .await
            .map(|f| PageForm(f.0))
            .map_err(|r| PageError::BadForm(r.status, r.message))
    }
}

/// The id in a page's path, canonical (a UUID, lower-case and hyphenated);
/// anything else — not a UUID, not even UTF-8 — is the not-found page. So
/// no page handler puts raw path input into a header or an API path.
pub(crate) struct PageId(String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for PageId {
    type Rejection = PageError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, PageError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| PageError::NotFound)?;
        uuid::Uuid::try_parse(&raw)
            .map(|id| PageId(id.hyphenated().to_string()))
            .map_err(|_| PageError::NotFound)
    }
}

/// A 303 to `to`, passing on the API's `Set-Cookie` headers (the session).
/// `to` is built from canonical ids and checked paths only; should it still
/// not fit in a header, the answer is a redirect home, never a panic.
fn see_other(to: &str, cookies: &[HeaderValue]) -> PageResult {
    let to = if HeaderValue::from_str(to).is_ok() {
        to
    } else {
        tracing::error!(to, "web: a redirect target does not fit in a header");
        "/"
    };
    let mut res = Redirect::to(to).into_response();
    for c in cookies {
        res.headers_mut().append(header::SET_COOKIE, c.clone());
    }
    Ok(res)
}

/// Percent-encodes a query value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A local path to go to after signing in, never another site: an absolute
/// path of printable ASCII (the query string's value, already decoded).
/// Refused, for `/`: anything with a scheme or host (`//`, `https:`),
/// backslashes (browsers read `/\` as `//`), and control characters and
/// spaces (browsers strip a tab or newline, so `/\t/evil.example` would
/// become `//evil.example`; a newline would not fit in a header at all).
pub fn safe_next(next: Option<&String>) -> String {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && n.bytes().all(|b| b.is_ascii_graphic() && b != b'\\') =>
        {
            n.clone()
        }
        _ => "/".into(),
    }
}

impl Ctx {
    async fn call(
        &self,
        web: &Shared,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Reply, Unavailable> {
        web.config.api.call(method, path, &self.caller, body).await
    }

    /// A write under the idempotency key its form carried (`_key`; a fresh
    /// one for a form without it), so the form sent twice acts once.
    async fn call_once(
        &self,
        web: &Shared,
        form: &HashMap<String, String>,
        path: &str,
        body: Value,
    ) -> Result<Reply, Unavailable> {
        let key = form
            .get("_key")
            .filter(|k| (1..=64).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_alphanumeric()))
            .cloned()
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
        let caller = crate::api::Caller {
            idempotency_key: Some(key),
            ..self.caller.clone()
        };
        web.config
            .api
            .call(Method::POST, path, &caller, Some(body))
            .await
    }

    async fn current_user(&self, web: &Shared) -> Result<Option<User>, Unavailable> {
        if self.caller.session.is_none() {
            return Ok(None);
        }
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Current {
            current_user: Option<User>,
        }
        let reply = self
            .call(web, Method::GET, "/api/users/currentuser", None)
            .await?;
        Ok(reply.parse::<Current>()?.current_user)
    }

    async fn layout(&self, web: &Shared, title: impl Into<String>) -> Result<Layout, PageError> {
        Ok(Layout {
            title: title.into(),
            user: self.current_user(web).await?,
            csrf: self.csrf.clone(),
            assets: crate::asset_version(),
            form_key: uuid::Uuid::new_v4().simple().to_string(),
        })
    }

    /// The layout of a page that needs a signed-in user (else: sign in).
    async fn signed_in_layout(
        &self,
        web: &Shared,
        title: impl Into<String>,
        here: &str,
    ) -> Result<(Layout, User), PageError> {
        let layout = self.layout(web, title).await?;
        match layout.user.clone() {
            Some(u) => Ok((layout, u)),
            None => Err(PageError::SignIn(here.to_owned())),
        }
    }

    fn check_csrf(&self, form: &HashMap<String, String>) -> Result<(), PageError> {
        match form.get("_csrf") {
            Some(t) if !self.csrf.is_empty() && same_token(t, &self.csrf) => Ok(()),
            _ => Err(PageError::BadCsrf),
        }
    }
}

fn value<'a>(form: &'a HashMap<String, String>, name: &str) -> &'a str {
    form.get(name).map(String::as_str).unwrap_or("")
}

/// A request of the API's as its JSON body.
fn body_of(request: &impl serde::Serialize) -> Value {
    // The API's request types hold strings, numbers and JSON values only,
    // which always serialise.
    serde_json::to_value(request).unwrap_or_default()
}

// ------------------------------------------------------------- formatting

/// `$1,234.50` from a price.
pub(crate) fn money(price: Dollars) -> String {
    let cents = price.0.cents();
    let (dollars, cents) = (cents / 100, cents % 100);
    let digits = dollars.to_string();
    let mut grouped = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    format!("${grouped}.{cents:02}")
}

/// The price as typed back into a form: `20` or `19.99`.
fn price_input(price: Dollars) -> String {
    let cents = price.0.cents();
    if cents % 100 == 0 {
        (cents / 100).to_string()
    } else {
        format!("{}.{:02}", cents / 100, cents % 100)
    }
}

fn ticket_status(status: TicketStatus) -> &'static str {
    match status {
        TicketStatus::Available => "For sale",
        TicketStatus::Reserved => "Reserved",
        TicketStatus::Sold => "Sold",
        TicketStatus::Withdrawn => "Withdrawn (seller banned)",
    }
}

fn order_status(status: OrderStatus) -> &'static str {
    match status {
        OrderStatus::Created => "Awaiting payment",
        OrderStatus::Complete => "Paid",
        OrderStatus::Cancelled => "Cancelled",
    }
}

/// A ticket as the pages show it.
pub(crate) struct TicketView {
    pub id: String,
    pub title: String,
    pub price: String,
    pub status: &'static str,
    pub status_label: &'static str,
    pub available: bool,
}

impl From<&Ticket> for TicketView {
    fn from(t: &Ticket) -> Self {
        TicketView {
            id: t.id.to_string(),
            title: t.title.clone(),
            price: money(t.price),
            status: t.status.into(),
            status_label: ticket_status(t.status),
            available: t.status == TicketStatus::Available,
        }
    }
}

/// An order as the pages show it.
pub(crate) struct OrderView {
    pub id: String,
    pub title: String,
    pub ticket_id: String,
    pub amount: String,
    pub status: &'static str,
    pub status_label: &'static str,
    pub expires_at: String,
    /// Milliseconds left to pay (0 once expired).
    pub ms_left: i64,
    /// `14:59` left, as rendered by the server.
    pub time_left: String,
}

impl From<&Order> for OrderView {
    fn from(o: &Order) -> Self {
        let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
        let ms_left = (i128::from(o.expires_at.millis()) - now).max(0) as i64;
        let secs = (ms_left + 999) / 1000;
        OrderView {
            id: o.id.to_string(),
            title: o.ticket.title.clone(),
            ticket_id: o.ticket.id.to_string(),
            amount: money(o.ticket.price),
            status: o.status.into(),
            status_label: order_status(o.status),
            expires_at: o.expires_at.to_rfc3339(),
            ms_left,
            time_left: format!("{}:{:02}", secs / 60, secs % 60),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::money::Money;

    #[test]
    fn a_listing_page_asks_for_a_page_after_the_last_row_and_stops_at_a_short_one() {
        assert_eq!(page_of("/api/tickets", None), "/api/tickets?limit=20");
        assert_eq!(page_of("/api/tickets", Some("")), "/api/tickets?limit=20");
        assert_eq!(
            page_of("/api/users?email=a%40b", Some("x y")),
            "/api/users?email=a%40b&limit=20&after=x%20y"
        );
        let full: Vec<String> = (0..PAGE_SIZE).map(|i| format!("r{i}")).collect();
        assert_eq!(next_after(&full, Clone::clone), Some("r19".into()));
        assert_eq!(next_after(&full[..5], Clone::clone), None);
        assert_eq!(next_after::<String>(&[], Clone::clone), None);
    }

    #[test]
    fn money_reads_like_money() {
        let cents = |c| Dollars(Money::from_cents(c));
        assert_eq!(money(cents(2000)), "$20.00");
        assert_eq!(money(cents(1999)), "$19.99");
        assert_eq!(money(cents(123456750)), "$1,234,567.50");
        assert_eq!(money(cents(5)), "$0.05");
        assert_eq!(price_input(cents(1999)), "19.99");
        assert_eq!(price_input(cents(2000)), "20");
    }

    #[test]
    fn sign_in_never_sends_anyone_to_another_site() {
        for fine in ["/", "/orders/1", "/tickets/new?x=1", "/orders/1#top"] {
            assert_eq!(safe_next(Some(&fine.to_owned())), fine);
        }
        // Decoded values, as the query string gives them.
        let hostile = [
            "//evil.example",
            "https://evil.example",
            "javascript:alert(1)",
            "evil.example",
            "/\\evil.example",
            "\\/evil.example",
            "/\t/evil.example",
            "/\n/evil.example",
            "/\r\n/x",
            "/\r\nSet-Cookie: a=b",
            " //evil.example",
            "/ /evil.example",
            "/\u{0}/evil.example",
            "/\u{7f}/evil.example",
            "/\u{3000}/evil.example",
            "",
        ];
        for bad in hostile {
            assert_eq!(safe_next(Some(&bad.to_owned())), "/", "{bad:?}");
        }
        assert_eq!(safe_next(None), "/");
        assert_eq!(encode("/a b?c"), "/a%20b%3Fc");
    }
}
