//! The admins' pages: users (search, ban, unban) and parked messages
//! (list, read, replay, discard).

use super::*;

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
    let list = match search.as_str() {
        "" => "/api/users".to_owned(),
        s => format!("/api/users?email={}", encode(s)),
    };
    let path = page_of(&list, q.after.as_deref());
    let reply = ctx.call(&web, Method::GET, &path, None).await?;
    match reply.status {
        StatusCode::BAD_REQUEST => return Err(PageError::NotFound),
        StatusCode::FORBIDDEN => {
            return Err(PageError::Forbidden("Only an admin may see the users."));
        }
        _ => {}
    }
    let users: Vec<crate::api::AdminUser> = reply.parse()?;
    let next = next_after(&users, |u| u.id.to_string())
        .map(|after| format!("/admin/users?after={after}&email={}", encode(&search)));
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
            Some(body_of(&runtime::parked::DiscardInput {
                reason: reason.to_owned().into(),
            })),
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
