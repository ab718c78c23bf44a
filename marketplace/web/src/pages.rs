//! The pages: each handler asks the API, then renders a template. Forms post
//! back to the page's own path, carry the CSRF token, and on an error show
//! the API's messages next to their fields (or at the top) with what the
//! user typed.

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use serde_json::{Value, json};

use crate::api::{ApiFieldError, Order, Payment, Reply, Ticket, Unavailable, User};
use crate::{Ctx, Shared, same_token};
use runtime::parked::ParkedBody;

// ------------------------------------------------------------ page plumbing

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

// ------------------------------------------------------------- formatting

/// `$1,234.50` from a decimal dollar price.
pub(crate) fn money(price: f64) -> String {
    let cents = (price * 100.0).round() as i64;
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
fn price_input(price: f64) -> String {
    let cents = (price * 100.0).round() as i64;
    if cents % 100 == 0 {
        (cents / 100).to_string()
    } else {
        format!("{}.{:02}", cents / 100, cents % 100)
    }
}

fn ticket_status(status: &str) -> &'static str {
    match status {
        "available" => "For sale",
        "reserved" => "Reserved",
        "sold" => "Sold",
        "withdrawn" => "Withdrawn (seller banned)",
        _ => "Unknown",
    }
}

fn order_status(status: &str) -> &'static str {
    match status {
        "created" => "Awaiting payment",
        "complete" => "Paid",
        "cancelled" => "Cancelled",
        _ => "Unknown",
    }
}

/// A ticket as the pages show it.
pub(crate) struct TicketView {
    pub id: String,
    pub title: String,
    pub price: String,
    pub status: String,
    pub status_label: &'static str,
    pub available: bool,
}

impl From<&Ticket> for TicketView {
    fn from(t: &Ticket) -> Self {
        TicketView {
            id: t.id.clone(),
            title: t.title.clone(),
            price: money(t.price),
            status: t.status.clone(),
            status_label: ticket_status(&t.status),
            available: t.status == "available",
        }
    }
}

/// An order as the pages show it.
pub(crate) struct OrderView {
    pub id: String,
    pub title: String,
    pub ticket_id: String,
    pub amount: String,
    pub status: String,
    pub status_label: &'static str,
    pub expires_at: String,
    /// Milliseconds left to pay (0 once expired).
    pub ms_left: i64,
    /// `14:59` left, as rendered by the server.
    pub time_left: String,
}

impl From<&Order> for OrderView {
    fn from(o: &Order) -> Self {
        let ms_left = time::OffsetDateTime::parse(
            &o.expires_at,
            &time::format_description::well_known::Rfc3339,
        )
        .map(|t| (t - time::OffsetDateTime::now_utc()).whole_milliseconds() as i64)
        .unwrap_or(0)
        .max(0);
        let secs = (ms_left + 999) / 1000;
        OrderView {
            id: o.id.clone(),
            title: o.ticket.title.clone(),
            ticket_id: o.ticket.id.clone(),
            amount: money(o.ticket.price),
            status: o.status.clone(),
            status_label: order_status(&o.status),
            expires_at: o.expires_at.clone(),
            ms_left,
            time_left: format!("{}:{:02}", secs / 60, secs % 60),
        }
    }
}

// ------------------------------------------------------------------ landing

const PAGE_SIZE: usize = 20;

#[derive(Template)]
#[template(path = "index.html")]
struct IndexPage {
    layout: Layout,
    tickets: Vec<TicketView>,
    next: Option<String>,
}

#[derive(serde::Deserialize)]
pub(crate) struct After {
    after: Option<String>,
}

pub(crate) async fn index(
    State(web): State<Shared>,
    ctx: Ctx,
    Query(q): Query<After>,
) -> PageResult {
    let mut path = format!("/api/tickets?limit={PAGE_SIZE}");
    if let Some(a) = q.after.as_deref().filter(|a| !a.is_empty()) {
        path.push_str(&format!("&after={}", encode(a)));
    }
    let reply = ctx.call(&web, Method::GET, &path, None).await?;
    if reply.status == StatusCode::BAD_REQUEST {
        return Err(PageError::NotFound);
    }
    let tickets: Vec<Ticket> = reply.parse()?;
    let next = (tickets.len() == PAGE_SIZE)
        .then(|| tickets.last().map(|t| t.id.clone()))
        .flatten();
    page(
        StatusCode::OK,
        &IndexPage {
            layout: ctx.layout(&web, "Tickets for sale").await?,
            tickets: tickets.iter().map(TicketView::from).collect(),
            next,
        },
    )
}

// ------------------------------------------------------------- sign up / in

#[derive(Template)]
#[template(path = "auth.html")]
struct AuthPage {
    layout: Layout,
    signup: bool,
    action: String,
    email: String,
    errors: FormErrors,
}

#[derive(serde::Deserialize)]
pub(crate) struct Next {
    next: Option<String>,
}

async fn auth_form(web: Shared, ctx: Ctx, signup: bool, next: Option<String>) -> PageResult {
    let title = if signup { "Sign up" } else { "Sign in" };
    let path = if signup {
        "/auth/signup"
    } else {
        "/auth/signin"
    };
    let action = match &next {
        Some(n) => format!("{path}?next={}", encode(&safe_next(Some(n)))),
        None => path.to_owned(),
    };
    page(
        StatusCode::OK,
        &AuthPage {
            layout: ctx.layout(&web, title).await?,
            signup,
            action,
            email: String::new(),
            errors: FormErrors::default(),
        },
    )
}

async fn auth_submit(
    web: Shared,
    ctx: Ctx,
    signup: bool,
    next: Option<String>,
    form: HashMap<String, String>,
) -> PageResult {
    ctx.check_csrf(&form)?;
    let email = value(&form, "email").to_owned();
    let api_path = if signup {
        "/api/users/signup"
    } else {
        "/api/users/signin"
    };
    let reply = ctx
        .call(
            &web,
            Method::POST,
            api_path,
            Some(json!({ "email": email, "password": value(&form, "password") })),
        )
        .await?;
    if reply.ok() {
        return see_other(&safe_next(next.as_ref()), &reply.cookies);
    }
    let title = if signup { "Sign up" } else { "Sign in" };
    let path = if signup {
        "/auth/signup"
    } else {
        "/auth/signin"
    };
    page(
        reply.status,
        &AuthPage {
            layout: ctx.layout(&web, title).await?,
            signup,
            action: match &next {
                Some(n) => format!("{path}?next={}", encode(&safe_next(Some(n)))),
                None => path.to_owned(),
            },
            email,
            errors: FormErrors::from_api(reply.errors(), &["email", "password"]),
        },
    )
}

pub(crate) async fn signup_form(
    State(web): State<Shared>,
    ctx: Ctx,
    Query(q): Query<Next>,
) -> PageResult {
    auth_form(web, ctx, true, q.next).await
}

pub(crate) async fn signin_form(
    State(web): State<Shared>,
    ctx: Ctx,
    Query(q): Query<Next>,
) -> PageResult {
    auth_form(web, ctx, false, q.next).await
}

pub(crate) async fn signup(
    State(web): State<Shared>,
    ctx: Ctx,
    Query(q): Query<Next>,
    PageForm(form): PageForm,
) -> PageResult {
    auth_submit(web, ctx, true, q.next, form).await
}

pub(crate) async fn signin(
    State(web): State<Shared>,
    ctx: Ctx,
    Query(q): Query<Next>,
    PageForm(form): PageForm,
) -> PageResult {
    auth_submit(web, ctx, false, q.next, form).await
}

/// Posts the sign-out form to `api_path` and goes home with the cleared cookie.
async fn sign_out_via(
    web: Shared,
    ctx: Ctx,
    form: HashMap<String, String>,
    api_path: &str,
) -> PageResult {
    ctx.check_csrf(&form)?;
    let reply = ctx.call(&web, Method::POST, api_path, None).await?;
    see_other("/", &reply.cookies)
}

pub(crate) async fn signout(
    State(web): State<Shared>,
    ctx: Ctx,
    PageForm(form): PageForm,
) -> PageResult {
    sign_out_via(web, ctx, form, "/api/users/signout").await
}

/// Ends every session of the signed-in user, this one included.
pub(crate) async fn signout_everywhere(
    State(web): State<Shared>,
    ctx: Ctx,
    PageForm(form): PageForm,
) -> PageResult {
    sign_out_via(web, ctx, form, "/api/users/signout-all").await
}

// ------------------------------------------------------------------ account

#[derive(Template)]
#[template(path = "account.html")]
struct AccountPage {
    layout: Layout,
    /// The password was just changed.
    changed: bool,
    errors: FormErrors,
}

#[derive(serde::Deserialize)]
pub(crate) struct AccountQuery {
    changed: Option<String>,
}

/// The signed-in user's account: the password change form.
pub(crate) async fn account(
    State(web): State<Shared>,
    ctx: Ctx,
    Query(q): Query<AccountQuery>,
) -> PageResult {
    let (layout, _) = ctx.signed_in_layout(&web, "Account", "/account").await?;
    page(
        StatusCode::OK,
        &AccountPage {
            layout,
            changed: q.changed.is_some(),
            errors: FormErrors::default(),
        },
    )
}

/// Changes the password: every session of the user ends, and the browser
/// gets the new one the API answered with.
pub(crate) async fn change_password(
    State(web): State<Shared>,
    ctx: Ctx,
    PageForm(form): PageForm,
) -> PageResult {
    ctx.check_csrf(&form)?;
    let reply = ctx
        .call(
            &web,
            Method::POST,
            "/api/users/password",
            Some(json!({
                "currentPassword": value(&form, "currentPassword"),
                "newPassword": value(&form, "newPassword"),
            })),
        )
        .await?;
    if reply.ok() {
        return see_other("/account?changed=1", &reply.cookies);
    }
    if reply.status == StatusCode::UNAUTHORIZED {
        return Err(PageError::SignIn("/account".into()));
    }
    let (layout, _) = ctx.signed_in_layout(&web, "Account", "/account").await?;
    let mut errors = FormErrors::from_api(reply.errors(), &["currentPassword", "newPassword"]);
    if reply.status == StatusCode::FORBIDDEN {
        // "Current password is incorrect": next to the field it is about.
        errors.fields.extend(
            errors
                .top
                .drain(..)
                .map(|m| ("currentPassword".to_owned(), m)),
        );
    }
    page(
        reply.status,
        &AccountPage {
            layout,
            changed: false,
            errors,
        },
    )
}

// -------------------------------------------------------------------- admin

#[derive(Template)]
#[template(path = "admin_users.html")]
struct AdminUsersPage {
    layout: Layout,
    users: Vec<crate::api::AdminUser>,
    search: String,
    /// The next page's address, when there may be one.
    next: Option<String>,
    /// What the last ban or unban answered, when it was refused.
    notice: Option<String>,
}

#[derive(serde::Deserialize)]
pub(crate) struct UserSearch {
    after: Option<String>,
    email: Option<String>,
    notice: Option<String>,
}

/// Users, newest first, searchable by e-mail, with Ban / Unban: admins only.
pub(crate) async fn admin_users(
    State(web): State<Shared>,
    ctx: Ctx,
    Query(q): Query<UserSearch>,
) -> PageResult {
    let (layout, user) = ctx.signed_in_layout(&web, "Users", "/admin/users").await?;
    if !user.admin {
        return Err(PageError::Forbidden("Only an admin may see the users."));
    }
    let search = q.email.unwrap_or_default().trim().to_owned();
    let mut path = format!("/api/users?limit={PAGE_SIZE}");
    if !search.is_empty() {
        path.push_str(&format!("&email={}", encode(&search)));
    }
    if let Some(a) = q.after.as_deref().filter(|a| !a.is_empty()) {
        path.push_str(&format!("&after={}", encode(a)));
    }
    let reply = ctx.call(&web, Method::GET, &path, None).await?;
    match reply.status {
        StatusCode::BAD_REQUEST => return Err(PageError::NotFound),
        StatusCode::FORBIDDEN => {
            return Err(PageError::Forbidden("Only an admin may see the users."));
        }
        _ => {}
    }
    let users: Vec<crate::api::AdminUser> = reply.parse()?;
    let next = (users.len() == PAGE_SIZE)
        .then(|| users.last())
        .flatten()
        .map(|u| format!("/admin/users?after={}&email={}", u.id, encode(&search)));
    page(
        StatusCode::OK,
        &AdminUsersPage {
            layout,
            users,
            search,
            next,
            notice: q
                .notice
                .filter(|n| n == "refused")
                .map(|_| "That user cannot be banned (an admin, or yourself).".to_owned()),
        },
    )
}

async fn set_ban(
    web: Shared,
    ctx: Ctx,
    id: PageId,
    form: HashMap<String, String>,
    method: Method,
) -> PageResult {
    ctx.check_csrf(&form)?;
    let reply = ctx
        .call(&web, method, &format!("/api/users/{}/ban", id.0), None)
        .await?;
    let back = match form
        .get("email")
        .map(|e| e.trim())
        .filter(|e| !e.is_empty())
    {
        Some(e) => format!("/admin/users?email={}", encode(e)),
        None => "/admin/users".to_owned(),
    };
    match reply.status {
        s if s.is_success() => see_other(&back, &[]),
        StatusCode::CONFLICT => {
            let sep = if back.contains('?') { '&' } else { '?' };
            see_other(&format!("{back}{sep}notice=refused"), &[])
        }
        StatusCode::UNAUTHORIZED => Err(PageError::SignIn("/admin/users".into())),
        StatusCode::FORBIDDEN => Err(PageError::Forbidden("Only an admin may ban users.")),
        _ => Err(PageError::NotFound),
    }
}

pub(crate) async fn ban(
    State(web): State<Shared>,
    ctx: Ctx,
    id: PageId,
    PageForm(form): PageForm,
) -> PageResult {
    set_ban(web, ctx, id, form, Method::POST).await
}

pub(crate) async fn unban(
    State(web): State<Shared>,
    ctx: Ctx,
    id: PageId,
    PageForm(form): PageForm,
) -> PageResult {
    set_ban(web, ctx, id, form, Method::DELETE).await
}

// ------------------------------------------------------- parked messages

#[derive(Template)]
#[template(path = "admin_parked.html")]
struct AdminParkedPage {
    layout: Layout,
    items: Vec<ParkedBody>,
    /// `parked` (waiting) or `all`.
    state: String,
    notice: Option<String>,
}

#[derive(Template)]
#[template(path = "admin_parked_one.html")]
struct AdminParkedOnePage {
    layout: Layout,
    item: ParkedBody,
    payload: String,
}

#[derive(serde::Deserialize)]
pub(crate) struct ParkedSearch {
    state: Option<String>,
    notice: Option<String>,
}

/// The id of a parked-message record in a page's path (404 if not one).
pub(crate) struct RecordId(u64);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for RecordId {
    type Rejection = PageError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, PageError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| PageError::NotFound)?;
        raw.parse().map(RecordId).map_err(|_| PageError::NotFound)
    }
}

const ONLY_ADMINS_PARKED: &str = "Only an admin may see parked messages.";

/// Parked messages — events a service could not apply — with Replay and
/// Discard: admins only.
pub(crate) async fn admin_parked(
    State(web): State<Shared>,
    ctx: Ctx,
    Query(q): Query<ParkedSearch>,
) -> PageResult {
    let (layout, user) = ctx
        .signed_in_layout(&web, "Parked messages", "/admin/parked")
        .await?;
    if !user.admin {
        return Err(PageError::Forbidden(ONLY_ADMINS_PARKED));
    }
    let state = match q.state.as_deref() {
        Some("all") => "all",
        _ => "parked",
    };
    let reply = ctx
        .call(
            &web,
            Method::GET,
            &format!("/api/admin/parked?state={state}"),
            None,
        )
        .await?;
    if reply.status == StatusCode::FORBIDDEN {
        return Err(PageError::Forbidden(ONLY_ADMINS_PARKED));
    }
    if !reply.ok() {
        return Err(PageError::Unavailable(Unavailable(format!(
            "parked messages: {}",
            reply.status
        ))));
    }
    let mut items: Vec<ParkedBody> = reply.parse()?;
    items.reverse(); // newest first
    let notice = match q.notice.as_deref() {
        Some("replayed") => Some("Replayed: delivered again to its consumer."),
        Some("discarded") => Some("Discarded."),
        Some("already") => Some("That message was replayed or discarded already."),
        Some("reason") => Some("Say why the message is discarded."),
        _ => None,
    };
    page(
        StatusCode::OK,
        &AdminParkedPage {
            layout,
            items,
            state: state.to_owned(),
            notice: notice.map(str::to_owned),
        },
    )
}

/// One parked message, whole: payload, headers, reason, trace id.
pub(crate) async fn admin_parked_one(
    State(web): State<Shared>,
    ctx: Ctx,
    RecordId(id): RecordId,
) -> PageResult {
    let here = format!("/admin/parked/{id}");
    let (layout, user) = ctx
        .signed_in_layout(&web, format!("Parked message {id}"), &here)
        .await?;
    if !user.admin {
        return Err(PageError::Forbidden(ONLY_ADMINS_PARKED));
    }
    let reply = ctx
        .call(&web, Method::GET, &format!("/api/admin/parked/{id}"), None)
        .await?;
    match reply.status {
        StatusCode::NOT_FOUND => return Err(PageError::NotFound),
        StatusCode::FORBIDDEN => return Err(PageError::Forbidden(ONLY_ADMINS_PARKED)),
        _ => {}
    }
    let item: ParkedBody = reply.parse()?;
    let payload = match &item.payload {
        Some(Value::String(text)) => text.clone(),
        Some(v) => serde_json::to_string_pretty(v).unwrap_or_default(),
        None => String::new(),
    };
    page(
        StatusCode::OK,
        &AdminParkedOnePage {
            layout,
            item,
            payload,
        },
    )
}

/// Replay or discard (with the form's `reason`), then back to the list.
async fn resolve_parked(
    web: Shared,
    ctx: Ctx,
    id: u64,
    form: HashMap<String, String>,
    replay: bool,
) -> PageResult {
    ctx.check_csrf(&form)?;
    let (path, body, done) = if replay {
        (format!("/api/admin/parked/{id}/replay"), None, "replayed")
    } else {
        let reason = value(&form, "reason").trim();
        if reason.is_empty() {
            return see_other("/admin/parked?notice=reason", &[]);
        }
        (
            format!("/api/admin/parked/{id}/discard"),
            Some(json!({ "reason": reason })),
            "discarded",
        )
    };
    let reply = ctx.call(&web, Method::POST, &path, body).await?;
    match reply.status {
        s if s.is_success() => see_other(&format!("/admin/parked?notice={done}"), &[]),
        StatusCode::CONFLICT => see_other("/admin/parked?notice=already", &[]),
        StatusCode::BAD_REQUEST => see_other("/admin/parked?notice=reason", &[]),
        StatusCode::UNAUTHORIZED => Err(PageError::SignIn("/admin/parked".into())),
        StatusCode::FORBIDDEN => Err(PageError::Forbidden(ONLY_ADMINS_PARKED)),
        StatusCode::NOT_FOUND => Err(PageError::NotFound),
        s => Err(PageError::Unavailable(Unavailable(format!(
            "parked message {id}: {s}"
        )))),
    }
}

pub(crate) async fn replay_parked(
    State(web): State<Shared>,
    ctx: Ctx,
    RecordId(id): RecordId,
    PageForm(form): PageForm,
) -> PageResult {
    resolve_parked(web, ctx, id, form, true).await
}

pub(crate) async fn discard_parked(
    State(web): State<Shared>,
    ctx: Ctx,
    RecordId(id): RecordId,
    PageForm(form): PageForm,
) -> PageResult {
    resolve_parked(web, ctx, id, form, false).await
}

// ------------------------------------------------------------------ tickets

#[derive(Template)]
#[template(path = "ticket_form.html")]
struct TicketFormPage {
    layout: Layout,
    heading: String,
    action: String,
    submit: &'static str,
    title: String,
    price: String,
    errors: FormErrors,
}

/// A typed price goes to the API as a JSON number when it reads as one, so
/// the API's own message explains anything else.
fn price_json(typed: &str) -> Value {
    match typed.trim().parse::<f64>() {
        Ok(p) if p.is_finite() => json!(p),
        _ => json!(typed.trim()),
    }
}

pub(crate) async fn new_ticket_form(State(web): State<Shared>, ctx: Ctx) -> PageResult {
    let (layout, _) = ctx
        .signed_in_layout(&web, "Sell a ticket", "/tickets/new")
        .await?;
    page(
        StatusCode::OK,
        &TicketFormPage {
            layout,
            heading: "Sell a ticket".into(),
            action: "/tickets/new".into(),
            submit: "List ticket",
            title: String::new(),
            price: String::new(),
            errors: FormErrors::default(),
        },
    )
}

pub(crate) async fn new_ticket(
    State(web): State<Shared>,
    ctx: Ctx,
    PageForm(form): PageForm,
) -> PageResult {
    ctx.check_csrf(&form)?;
    let (title, price) = (value(&form, "title"), value(&form, "price"));
    let reply = ctx
        .call(
            &web,
            Method::POST,
            "/api/tickets",
            Some(json!({ "title": title, "price": price_json(price) })),
        )
        .await?;
    if reply.status == StatusCode::UNAUTHORIZED {
        return Err(PageError::SignIn("/tickets/new".into()));
    }
    if reply.ok() {
        let t: Ticket = reply.parse()?;
        return see_other(&format!("/tickets/{}", t.id), &[]);
    }
    page(
        reply.status,
        &TicketFormPage {
            layout: ctx.layout(&web, "Sell a ticket").await?,
            heading: "Sell a ticket".into(),
            action: "/tickets/new".into(),
            submit: "List ticket",
            title: title.to_owned(),
            price: price.to_owned(),
            errors: FormErrors::from_api(reply.errors(), &["title", "price"]),
        },
    )
}

#[derive(Template)]
#[template(path = "ticket.html")]
struct TicketPage {
    layout: Layout,
    ticket: TicketView,
    is_seller: bool,
    errors: FormErrors,
}

async fn fetch_ticket(web: &Shared, ctx: &Ctx, id: &str) -> Result<Ticket, PageError> {
    let reply = ctx
        .call(
            web,
            Method::GET,
            &format!("/api/tickets/{}", encode(id)),
            None,
        )
        .await?;
    if reply.status == StatusCode::NOT_FOUND {
        return Err(PageError::NotFound);
    }
    Ok(reply.parse()?)
}

async fn ticket_page(
    web: &Shared,
    ctx: &Ctx,
    ticket: &Ticket,
    status: StatusCode,
    errors: FormErrors,
) -> PageResult {
    let layout = ctx.layout(web, ticket.title.clone()).await?;
    let is_seller = layout.user.as_ref().is_some_and(|u| u.id == ticket.user_id);
    page(
        status,
        &TicketPage {
            layout,
            ticket: TicketView::from(ticket),
            is_seller,
            errors,
        },
    )
}

pub(crate) async fn show_ticket(
    State(web): State<Shared>,
    ctx: Ctx,
    PageId(id): PageId,
) -> PageResult {
    let ticket = fetch_ticket(&web, &ctx, &id).await?;
    ticket_page(&web, &ctx, &ticket, StatusCode::OK, FormErrors::default()).await
}

pub(crate) async fn purchase(
    State(web): State<Shared>,
    ctx: Ctx,
    PageId(id): PageId,
    PageForm(form): PageForm,
) -> PageResult {
    ctx.check_csrf(&form)?;
    let reply = ctx
        .call_once(&web, &form, "/api/orders", json!({ "ticketId": id }))
        .await?;
    if reply.status == StatusCode::UNAUTHORIZED {
        return Err(PageError::SignIn(format!("/tickets/{id}")));
    }
    if reply.ok() {
        let order: Order = reply.parse()?;
        return see_other(&format!("/orders/{}", order.id), &[]);
    }
    let ticket = fetch_ticket(&web, &ctx, &id).await?;
    ticket_page(
        &web,
        &ctx,
        &ticket,
        reply.status,
        FormErrors::from_api(reply.errors(), &[]),
    )
    .await
}

async fn seller_ticket(web: &Shared, ctx: &Ctx, id: &str) -> Result<(Layout, Ticket), PageError> {
    let ticket = fetch_ticket(web, ctx, id).await?;
    let (layout, user) = ctx
        .signed_in_layout(
            web,
            format!("Edit {}", ticket.title),
            &format!("/tickets/{id}/edit"),
        )
        .await?;
    if user.id != ticket.user_id {
        return Err(PageError::Forbidden(
            "Only the seller can edit this ticket.",
        ));
    }
    Ok((layout, ticket))
}

pub(crate) async fn edit_ticket_form(
    State(web): State<Shared>,
    ctx: Ctx,
    PageId(id): PageId,
) -> PageResult {
    let (layout, ticket) = seller_ticket(&web, &ctx, &id).await?;
    page(
        StatusCode::OK,
        &TicketFormPage {
            layout,
            heading: format!("Edit {}", ticket.title),
            action: format!("/tickets/{}/edit", ticket.id),
            submit: "Save changes",
            title: ticket.title.clone(),
            price: price_input(ticket.price),
            errors: FormErrors::default(),
        },
    )
}

pub(crate) async fn edit_ticket(
    State(web): State<Shared>,
    ctx: Ctx,
    PageId(id): PageId,
    PageForm(form): PageForm,
) -> PageResult {
    ctx.check_csrf(&form)?;
    let (title, price) = (value(&form, "title"), value(&form, "price"));
    let reply = ctx
        .call(
            &web,
            Method::PUT,
            &format!("/api/tickets/{}", encode(&id)),
            Some(json!({ "title": title, "price": price_json(price) })),
        )
        .await?;
    match reply.status {
        s if s.is_success() => return see_other(&format!("/tickets/{id}"), &[]),
        StatusCode::UNAUTHORIZED => return Err(PageError::SignIn(format!("/tickets/{id}/edit"))),
        StatusCode::NOT_FOUND => return Err(PageError::NotFound),
        _ => {}
    }
    let ticket = fetch_ticket(&web, &ctx, &id).await?;
    page(
        reply.status,
        &TicketFormPage {
            layout: ctx.layout(&web, format!("Edit {}", ticket.title)).await?,
            heading: format!("Edit {}", ticket.title),
            action: format!("/tickets/{id}/edit"),
            submit: "Save changes",
            title: title.to_owned(),
            price: price.to_owned(),
            errors: FormErrors::from_api(reply.errors(), &["title", "price"]),
        },
    )
}

#[derive(Template)]
#[template(path = "my_tickets.html")]
struct MyTicketsPage {
    layout: Layout,
    tickets: Vec<TicketView>,
    next: Option<String>,
}

pub(crate) async fn my_tickets(
    State(web): State<Shared>,
    ctx: Ctx,
    Query(q): Query<After>,
) -> PageResult {
    let (layout, _) = ctx
        .signed_in_layout(&web, "My tickets", "/tickets/mine")
        .await?;
    let mut path = format!("/api/tickets/mine?limit={PAGE_SIZE}");
    if let Some(a) = q.after.as_deref().filter(|a| !a.is_empty()) {
        path.push_str(&format!("&after={}", encode(a)));
    }
    let reply = ctx.call(&web, Method::GET, &path, None).await?;
    if reply.status == StatusCode::BAD_REQUEST {
        return Err(PageError::NotFound);
    }
    let tickets: Vec<Ticket> = reply.parse()?;
    let next = (tickets.len() == PAGE_SIZE)
        .then(|| tickets.last().map(|t| t.id.clone()))
        .flatten();
    page(
        StatusCode::OK,
        &MyTicketsPage {
            layout,
            tickets: tickets.iter().map(TicketView::from).collect(),
            next,
        },
    )
}

// ------------------------------------------------------------------- orders

#[derive(Template)]
#[template(path = "orders.html")]
struct OrdersPage {
    layout: Layout,
    orders: Vec<OrderView>,
}

pub(crate) async fn my_orders(State(web): State<Shared>, ctx: Ctx) -> PageResult {
    let (layout, _) = ctx.signed_in_layout(&web, "My orders", "/orders").await?;
    let reply = ctx.call(&web, Method::GET, "/api/orders", None).await?;
    let orders: Vec<Order> = reply.parse()?;
    page(
        StatusCode::OK,
        &OrdersPage {
            layout,
            orders: orders.iter().map(OrderView::from).collect(),
        },
    )
}

#[derive(Template)]
#[template(path = "order.html")]
struct OrderPage {
    layout: Layout,
    order: OrderView,
    test_tokens: bool,
    token: String,
    errors: FormErrors,
    /// A payment for the order awaits its verdict: the page says so and
    /// refreshes itself instead of offering to pay again.
    processing: bool,
}

/// The order page; `payment`: a payment just made for it (after a 202).
async fn order_page(
    web: &Shared,
    ctx: &Ctx,
    id: &str,
    status: StatusCode,
    token: String,
    errors: FormErrors,
    payment: Option<&str>,
) -> PageResult {
    let (layout, _) = ctx
        .signed_in_layout(web, "Your order", &format!("/orders/{id}"))
        .await?;
    let reply = ctx
        .call(
            web,
            Method::GET,
            &format!("/api/orders/{}", encode(id)),
            None,
        )
        .await?;
    if reply.status == StatusCode::NOT_FOUND {
        return Err(PageError::NotFound);
    }
    let order: Order = reply.parse()?;
    // Only a payment id that is a payment id reaches the API.
    let payment = payment
        .filter(|p| uuid::Uuid::parse_str(p).is_ok_and(|u| u.hyphenated().to_string() == *p));
    let processing = match payment {
        Some(p) if order.status == "created" => {
            let reply = ctx
                .call(web, Method::GET, &format!("/api/payments/{p}"), None)
                .await?;
            reply.status == StatusCode::OK
                && reply
                    .parse::<Payment>()
                    .is_ok_and(|p| p.status == "pending")
        }
        _ => false,
    };
    page(
        status,
        &OrderPage {
            layout,
            order: OrderView::from(&order),
            test_tokens: web.config.test_card_tokens,
            token,
            errors,
            processing,
        },
    )
}

/// `?payment=<id>`: the payment just made, still pending when the page
/// was asked for (after a 202).
pub(crate) async fn show_order(
    State(web): State<Shared>,
    ctx: Ctx,
    PageId(id): PageId,
    Query(query): Query<HashMap<String, String>>,
) -> PageResult {
    order_page(
        &web,
        &ctx,
        &id,
        StatusCode::OK,
        String::new(),
        FormErrors::default(),
        query.get("payment").map(String::as_str),
    )
    .await
}

pub(crate) async fn pay(
    State(web): State<Shared>,
    ctx: Ctx,
    PageId(id): PageId,
    PageForm(form): PageForm,
) -> PageResult {
    ctx.check_csrf(&form)?;
    let token = value(&form, "token").trim().to_owned();
    let reply = ctx
        .call_once(
            &web,
            &form,
            "/api/payments",
            json!({ "orderId": id, "token": token }),
        )
        .await?;
    match reply.status {
        // No verdict yet: the order page shows "Processing…" until it comes.
        StatusCode::ACCEPTED => {
            let payment = reply.parse::<Payment>().map(|p| p.id).unwrap_or_default();
            return see_other(&format!("/orders/{id}?payment={}", encode(&payment)), &[]);
        }
        s if s.is_success() => return see_other(&format!("/orders/{id}"), &[]),
        StatusCode::UNAUTHORIZED => return Err(PageError::SignIn(format!("/orders/{id}"))),
        StatusCode::NOT_FOUND => return Err(PageError::NotFound),
        _ => {}
    }
    let errors = if reply.status == StatusCode::PAYMENT_REQUIRED {
        FormErrors::top(
            reply
                .errors()
                .first()
                .map(|e| format!("Your card was declined: {}", e.message))
                .unwrap_or_else(|| "Your card was declined.".into()),
        )
    } else {
        FormErrors::from_api(reply.errors(), &["token"])
    };
    order_page(&web, &ctx, &id, reply.status, token, errors, None).await
}

pub(crate) async fn cancel(
    State(web): State<Shared>,
    ctx: Ctx,
    PageId(id): PageId,
    PageForm(form): PageForm,
) -> PageResult {
    ctx.check_csrf(&form)?;
    let reply = ctx
        .call(
            &web,
            Method::DELETE,
            &format!("/api/orders/{}", encode(&id)),
            None,
        )
        .await?;
    match reply.status {
        s if s.is_success() => see_other(&format!("/orders/{id}"), &[]),
        StatusCode::UNAUTHORIZED => Err(PageError::SignIn(format!("/orders/{id}"))),
        StatusCode::NOT_FOUND => Err(PageError::NotFound),
        status => {
            order_page(
                &web,
                &ctx,
                &id,
                status,
                String::new(),
                FormErrors::from_api(reply.errors(), &[]),
                None,
            )
            .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_reads_like_money() {
        assert_eq!(money(20.0), "$20.00");
        assert_eq!(money(19.99), "$19.99");
        assert_eq!(money(1234567.5), "$1,234,567.50");
        assert_eq!(money(0.05), "$0.05");
        assert_eq!(price_input(19.99), "19.99");
        assert_eq!(price_input(20.0), "20");
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
