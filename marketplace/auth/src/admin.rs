//! Admin routes: list users, ban and unban them. Admins are the users an
//! operator granted the role ([`crate::roles`]); a ban revokes every session the user
//! began (`user.banned`, which every process's deny list applies) and keeps
//! them from signing in until it is lifted (`user.unbanned`).

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use marketplace_api as api;
use marketplace_events::{UserBanned, UserUnbanned};
use serde::Deserialize;
use shared::ApiError;
use shared::auth::AuthUser;
use shared::http::{ApiQuery, IdPath, PageQuery};
use shared::ids::UserId;
use shared::time::Timestamp;
use shared::trace::TraceContext;
use store::{Conn, Row, StoreError};

use crate::AppState;

pub fn router() -> utoipa_axum::router::OpenApiRouter<AppState> {
    utoipa_axum::router::OpenApiRouter::default()
        .routes(utoipa_axum::routes!(list))
        .routes(utoipa_axum::routes!(ban, unban))
}

/// The signed-in user, when an admin: 401 without a session, 403 otherwise.
struct Admin(AuthUser);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let user = AuthUser::from_request_parts(parts, state).await?;
        if !crate::roles::is_admin(&state.db, user.id).await? {
            return Err(ApiError::Forbidden("Only an admin may do this".into()));
        }
        Ok(Admin(user))
    }
}

const SELECT: &str =
    "SELECT id, email, version, banned_at, created_at, admin_since, last_session_at FROM users";

struct UserRow {
    id: UserId,
    email: String,
    version: i64,
    banned_at: Option<Timestamp>,
    created_at: Timestamp,
    admin: bool,
    /// When the user's latest session began.
    last_session_at: Timestamp,
}

impl UserRow {
    fn from_row(r: &Row) -> Result<Self, StoreError> {
        Ok(UserRow {
            id: r.get(0)?,
            email: r.get(1)?,
            version: r.get(2)?,
            banned_at: r.get(3)?,
            created_at: r.get(4)?,
            admin: r.get::<Option<i64>>(5)?.is_some(),
            last_session_at: r.get(6)?,
        })
    }

    /// The user `id`, its row locked until the transaction ends.
    fn find_for_update(c: &mut dyn Conn, id: UserId) -> Result<Option<Self>, StoreError> {
        c.query_opt(&format!("{SELECT} WHERE id = $1 FOR UPDATE"), &[&id])?
            .as_ref()
            .map(Self::from_row)
            .transpose()
    }

    fn body(self) -> api::AdminUser {
        api::AdminUser {
            admin: self.admin,
            id: self.id,
            email: self.email,
            version: self.version,
            banned: self.banned_at.is_some(),
            banned_at: self.banned_at,
            created_at: self.created_at,
        }
    }
}

/// A page of users, optionally only those whose e-mail contains `email`.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct UserQuery {
    /// Page size, 1 to 200 (default 50).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 200)]
    limit: Option<String>,
    /// The last id of the previous page.
    #[param(value_type = Option<String>, format = Uuid)]
    after: Option<String>,
    /// Only users whose e-mail contains this (case-insensitive).
    #[param(max_length = 254)]
    email: Option<String>,
}

/// A `LIKE` pattern matching values that contain `needle` literally.
fn contains_pattern(needle: &str) -> String {
    let mut p = String::from("%");
    for ch in needle.chars() {
        if matches!(ch, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(ch);
    }
    p.push('%');
    p
}

/// Users, newest first, a page at a time (`limit`, and `after` = the last
/// id of the previous page), optionally searched by e-mail. Admins only.
#[utoipa::path(get, path = "/api/users", tag = "admin",
    params(UserQuery),
    security(("session" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "Users, newest first", body = Vec<api::AdminUser>),
        (status = 400, description = "A malformed limit, cursor or search", body = shared::openapi::ErrorBody),
        (status = 401, description = "No valid session", body = shared::openapi::ErrorBody),
        (status = 403, description = "Not an admin", body = shared::openapi::ErrorBody),
    ))]
async fn list(
    State(state): State<AppState>,
    _: Admin,
    ApiQuery(q): ApiQuery<UserQuery>,
) -> Result<Json<Vec<api::AdminUser>>, ApiError> {
    let (limit, after) = PageQuery {
        limit: q.limit,
        after: q.after,
    }
    .read(UserId::parse, "a user")?;
    let search = match q.email.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(s) if s.chars().count() > 254 || s.chars().any(char::is_control) => {
            return Err(ApiError::field(
                "email",
                "email must be at most 254 characters, without control characters",
            ));
        }
        Some(s) => Some(contains_pattern(&s.to_lowercase())),
    };
    let rows = state
        .db
        .read(move |c| {
            let mut conditions = Vec::new();
            let mut params: Vec<&dyn store::ToValue> = Vec::new();
            if let Some(pattern) = &search {
                params.push(pattern);
                conditions.push(format!("email LIKE ${} ESCAPE '\\'", params.len()));
            }
            if let Some(after) = &after {
                params.push(after);
                conditions.push(format!("id < ${}", params.len()));
            }
            params.push(&limit);
            let filter = if conditions.is_empty() {
                String::new()
            } else {
                format!("WHERE {}", conditions.join(" AND "))
            };
            let rows = c.query(
                &format!("{SELECT} {filter} ORDER BY id DESC LIMIT ${}", params.len()),
                &params,
            )?;
            rows.iter()
                .map(UserRow::from_row)
                .collect::<Result<Vec<_>, _>>()
        })
        .await?;
    Ok(Json(rows.into_iter().map(UserRow::body).collect()))
}

/// What a ban or an unban found.
enum Change {
    Done(UserRow),
    /// The user is not there.
    Unknown,
    /// An admin cannot be banned (they would lock each other out).
    Admin,
}

/// Bans a user: they cannot sign in, and every session they began is
/// revoked in every service (publishes `user.banned` with the user's new
/// version; banning a banned user changes nothing). Admins only.
#[utoipa::path(post, path = "/api/users/{id}/ban", tag = "admin",
    params(("id" = String, Path, description = "user id")),
    security(("session" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "The user, banned", body = api::AdminUser),
        (status = 401, description = "No valid session", body = shared::openapi::ErrorBody),
        (status = 403, description = "Not an admin", body = shared::openapi::ErrorBody),
        (status = 404, description = "No such user", body = shared::openapi::ErrorBody),
        (status = 409, description = "The user is an admin, or the caller", body = shared::openapi::ErrorBody),
    ))]
async fn ban(
    State(state): State<AppState>,
    Admin(admin): Admin,
    trace: TraceContext,
    IdPath(id): IdPath<UserId>,
) -> Result<Json<api::AdminUser>, ApiError> {
    if id == admin.id {
        return Err(ApiError::Conflict("You cannot ban yourself".into()));
    }
    let now = state.clock.now();
    let keys = state.keys.clone();
    let change = state
        .outbox
        .write(move |c| {
            let Some(mut user) = UserRow::find_for_update(c, id)? else {
                return Ok::<_, StoreError>((Change::Unknown, None));
            };
            if user.admin {
                return Ok((Change::Admin, None));
            }
            if user.banned_at.is_some() {
                return Ok((Change::Done(user), None));
            }
            // Up to the latest session's start at least (the row is locked,
            // so no sign-in begins one meanwhile): a sign-in that began its
            // session just before this ban is ended by it.
            let banned_at = user.last_session_at.max(now);
            user.version += 1;
            user.banned_at = Some(banned_at);
            c.execute(
                "UPDATE users SET banned_at = $2, version = $3 WHERE id = $1",
                &[&id, &banned_at, &user.version],
            )?;
            let event = UserBanned {
                id,
                version: user.version,
                banned_at,
                until: keys.verifiable_until(banned_at),
            };
            c.enqueue(&event, &trace, now)?;
            Ok((Change::Done(user), Some(event)))
        })
        .await?;
    let user = settled(change.0)?;
    if let Some(event) = change.1 {
        state.keys.revocations.apply(event.revocation(), now);
        tracing::info!(user_id = %id, admin_id = %admin.id, version = event.version, "user banned");
    }
    Ok(Json(user.body()))
}

/// Lifts a user's ban: they may sign in again; sessions from before the ban
/// stay ended (publishes `user.unbanned` with the user's new version;
/// unbanning a user who is not banned changes nothing). Admins only.
#[utoipa::path(delete, path = "/api/users/{id}/ban", tag = "admin",
    params(("id" = String, Path, description = "user id")),
    security(("session" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "The user, not banned", body = api::AdminUser),
        (status = 401, description = "No valid session", body = shared::openapi::ErrorBody),
        (status = 403, description = "Not an admin", body = shared::openapi::ErrorBody),
        (status = 404, description = "No such user", body = shared::openapi::ErrorBody),
    ))]
async fn unban(
    State(state): State<AppState>,
    Admin(admin): Admin,
    trace: TraceContext,
    IdPath(id): IdPath<UserId>,
) -> Result<Json<api::AdminUser>, ApiError> {
    let now = state.clock.now();
    let change = state
        .outbox
        .write(move |c| {
            let Some(mut user) = UserRow::find_for_update(c, id)? else {
                return Ok::<_, StoreError>((Change::Unknown, false));
            };
            if user.banned_at.is_none() {
                return Ok((Change::Done(user), false));
            }
            user.version += 1;
            user.banned_at = None;
            c.execute(
                "UPDATE users SET banned_at = NULL, version = $2 WHERE id = $1",
                &[&id, &user.version],
            )?;
            c.enqueue(
                &UserUnbanned {
                    id,
                    version: user.version,
                },
                &trace,
                now,
            )?;
            Ok((Change::Done(user), true))
        })
        .await?;
    let user = settled(change.0)?;
    if change.1 {
        tracing::info!(user_id = %id, admin_id = %admin.id, version = user.version, "user unbanned");
    }
    Ok(Json(user.body()))
}

fn settled(change: Change) -> Result<UserRow, ApiError> {
    match change {
        Change::Done(user) => Ok(user),
        Change::Unknown => Err(ApiError::NotFound),
        Change::Admin => Err(ApiError::Conflict("An admin cannot be banned".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::contains_pattern;

    #[test]
    fn a_search_matches_its_text_literally() {
        assert_eq!(contains_pattern("ann"), "%ann%");
        assert_eq!(contains_pattern("a_b%c\\"), "%a\\_b\\%c\\\\%");
    }
}
