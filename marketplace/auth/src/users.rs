//! `/api/users`: sign up, sign in, sign out (here or everywhere), current user.

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use marketplace_api::{self as api, Credentials};
use marketplace_events::{UserCreated, UserSignedOut};
use shared::ApiError;
use shared::auth::{AuthUser, MaybeAuthUser, Session};
use shared::http::{PeerAddr, ValidJson};
use shared::ids::UserId;
use shared::time::Timestamp;
use shared::trace::TraceContext;
use store::Conn as _;
use store::StoreError;

use crate::{AppState, password};

/// The routes and their OpenAPI description, registered together.
pub fn router() -> utoipa_axum::router::OpenApiRouter<AppState> {
    utoipa_axum::router::OpenApiRouter::default()
        .routes(utoipa_axum::routes!(sign_up))
        .routes(utoipa_axum::routes!(sign_in))
        .routes(utoipa_axum::routes!(sign_out))
        .routes(utoipa_axum::routes!(sign_out_everywhere))
        .routes(utoipa_axum::routes!(current_user))
        .routes(utoipa_axum::routes!(change_password))
}

/// A user as the API returns it.
fn user_body(u: AuthUser, admin: bool) -> api::User {
    api::User {
        id: u.id,
        admin,
        email: u.email,
    }
}

/// One sign-in or sign-up attempt, counted against the client's allowance
/// before the body is read (a flood of malformed bodies is limited too).
struct Attempt;

impl FromRequestParts<AppState> for Attempt {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let peer = PeerAddr::from_request_parts(parts, state)
            .await
            .unwrap_or(PeerAddr(None));
        let key = client_key(state, &parts.headers, peer);
        state
            .config
            .limiter
            .check(&key)
            .map_err(|retry_after_secs| ApiError::TooManyRequests { retry_after_secs })?;
        Ok(Attempt)
    }
}

/// Who is asking, for rate limiting: the peer, or behind trusted proxies
/// the address they say they received the request from.
fn client_key(state: &AppState, headers: &HeaderMap, peer: PeerAddr) -> String {
    let Some(peer) = peer.0 else {
        return "unknown".into();
    };
    match &state.config.trusted_proxies {
        None => peer.ip(),
        Some(proxies) => proxies.client(
            peer.ip(),
            headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok()),
        ),
    }
    .to_string()
}

/// Answers with a new session of `user`, begun at `begun` (the moment its
/// row's `last_session_at` was set to), in the `session` cookie.
fn signed_in(
    state: &AppState,
    status: StatusCode,
    user: AuthUser,
    begun: Timestamp,
    admin: bool,
) -> Result<Response, ApiError> {
    let token = state.keys.issue(&user, begun)?;
    Ok((
        status,
        [(header::SET_COOKIE, state.keys.session_cookie(&token))],
        Json(user_body(user, admin)),
    )
        .into_response())
}

/// Creates an account and signs it in (sets the `session` cookie);
/// publishes `user.created`.
#[utoipa::path(post, path = "/api/users/signup", tag = "users",
    request_body = api::SignUp,
    responses(
        (status = 201, description = "Signed up and in; the session cookie is set", body = api::User,
            headers(("set-cookie" = String, description = "session=<jwt>; HttpOnly; SameSite=Lax; Path=/"))),
        (status = 409, description = "Email in use", body = shared::openapi::ErrorBody),
        (status = 429, description = "Too many attempts from this client", body = shared::openapi::ErrorBody),
    ))]
async fn sign_up(
    State(state): State<AppState>,
    _: Attempt,
    trace: TraceContext,
    ValidJson(Credentials { email, password }): ValidJson<api::SignUp>,
) -> Result<Response, ApiError> {
    let hash = password::hash_off_runtime(password)
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    let user = AuthUser {
        id: UserId::new(),
        email: email.to_string(),
    };
    let now = state.clock.now();
    let row = user.clone();
    let created = state
        .outbox
        .write(move |c| {
            c.execute(
                "INSERT INTO users (id, email, password_hash, created_at, last_session_at) \
                 VALUES ($1, $2, $3, $4, $4)",
                &[&row.id, &row.email, &hash, &now],
            )?;
            c.enqueue(
                &UserCreated {
                    id: row.id,
                    version: 0,
                    email: row.email.clone(),
                },
                &trace,
                now,
            )?;
            Ok::<_, StoreError>(())
        })
        .await;
    match created {
        Ok(()) => {}
        // The unique index decides, also between concurrent sign-ups.
        Err(e) if e.is_unique_violation() => return Err(ApiError::Conflict("Email in use".into())),
        Err(e) => return Err(e.into()),
    }
    tracing::info!(user_id = %user.id, "user signed up");
    // Signing up never makes an admin: an operator grants the role.
    signed_in(&state, StatusCode::CREATED, user, now, false)
}

/// Signs in (sets the `session` cookie).
#[utoipa::path(post, path = "/api/users/signin", tag = "users",
    request_body = api::SignIn,
    responses(
        (status = 200, description = "Signed in; the session cookie is set", body = api::User,
            headers(("set-cookie" = String, description = "session=<jwt>; HttpOnly; SameSite=Lax; Path=/"))),
        (status = 401, description = "Invalid credentials", body = shared::openapi::ErrorBody),
        (status = 403, description = "The account is banned", body = shared::openapi::ErrorBody),
        (status = 429, description = "Too many attempts from this client", body = shared::openapi::ErrorBody),
    ))]
async fn sign_in(
    State(state): State<AppState>,
    _: Attempt,
    ValidJson(Credentials { email, password }): ValidJson<api::SignIn>,
) -> Result<Response, ApiError> {
    let lookup = email.to_string();
    let found = state
        .db
        .read(move |c| {
            c.query_opt(
                "SELECT id, password_hash, banned_at FROM users WHERE email = $1",
                &[&lookup],
            )?
            .map(|r| {
                Ok::<_, StoreError>((
                    r.get::<UserId>(0)?,
                    r.get::<String>(1)?,
                    r.get::<Option<i64>>(2)?.is_some(),
                ))
            })
            .transpose()
        })
        .await?;
    let (id, hash, banned) = match found {
        Some((id, hash, banned)) => (Some(id), hash, banned),
        None => (None, password::dummy_hash().to_owned(), false),
    };
    // Verify even for an unknown e-mail so both failures cost the same.
    let matches = password::verify_off_runtime(password, hash.clone())
        .await
        .map_err(ApiError::internal)?;
    let banned_error = || ApiError::Forbidden("This account is banned; it cannot sign in".into());
    let id = match id {
        // Only someone who knows the password learns of the ban.
        Some(_) if matches && banned => return Err(banned_error()),
        Some(id) if matches => id,
        _ => return Err(ApiError::InvalidCredentials("Invalid credentials".into())),
    };
    match begin_session(&state, id, hash).await? {
        Begun::Yes { at, admin } => signed_in(
            &state,
            StatusCode::OK,
            AuthUser {
                id,
                email: email.to_string(),
            },
            at,
            admin,
        ),
        Begun::Banned => Err(banned_error()),
        Begun::PasswordChanged => Err(ApiError::InvalidCredentials("Invalid credentials".into())),
    }
}

/// Whether a sign-in whose password checked out may begin its session.
enum Begun {
    Yes {
        at: Timestamp,
        admin: bool,
    },
    /// Banned while the password was being checked.
    Banned,
    /// The password changed while it was being checked.
    PasswordChanged,
}

/// Begins a session of `id` in one write on the user's row, which a ban,
/// a sign-out everywhere and a password change also write: whichever
/// commits first, the other sees it. A ban that lands while the password is
/// checked refuses the sign-in here; one that lands after reaches at least
/// this session's start (`last_session_at`), so the session ends with it.
/// `hash` is the hash the password was checked against: a password changed
/// meanwhile refuses the sign-in.
async fn begin_session(state: &AppState, id: UserId, hash: String) -> Result<Begun, ApiError> {
    let at = state.clock.now();
    let begun = state
        .db
        .write(move |c| {
            let changed = c.execute(
                "UPDATE users SET last_session_at = \
                     CASE WHEN last_session_at > $2 THEN last_session_at ELSE $2 END \
                 WHERE id = $1 AND banned_at IS NULL AND password_hash = $3",
                &[&id, &at, &hash],
            )?;
            let row = c.query_opt(
                "SELECT banned_at, admin_since FROM users WHERE id = $1",
                &[&id],
            )?;
            let Some(row) = row else {
                return Ok::<_, StoreError>(Begun::PasswordChanged);
            };
            Ok(if changed == 1 {
                Begun::Yes {
                    at,
                    admin: row.get::<Option<i64>>(1)?.is_some(),
                }
            } else if row.get::<Option<i64>>(0)?.is_some() {
                Begun::Banned
            } else {
                Begun::PasswordChanged
            })
        })
        .await?;
    Ok(begun)
}

/// The moment an end of every session of `id` reaches, read in the
/// caller's transaction after locking the user's row: now, or the start of
/// the user's latest session if that is later (a clock behind another
/// replica's), so no session begun before the end survives it.
fn cut_off(
    c: &mut dyn store::Conn,
    id: UserId,
    now: Timestamp,
) -> Result<Option<Timestamp>, StoreError> {
    Ok(c.query_opt(
        "SELECT last_session_at FROM users WHERE id = $1 FOR UPDATE",
        &[&id],
    )?
    .map(|r| r.get::<Timestamp>(0))
    .transpose()?
    .map(|last| last.max(now)))
}

/// Records a revocation with its `user.signed-out` event, and applies it to
/// this process's deny list at once (other processes apply it when the event
/// reaches them).
async fn revoke(
    state: &AppState,
    trace: &TraceContext,
    event: UserSignedOut,
) -> Result<(), ApiError> {
    let now = state.clock.now();
    let revocation = event.revocation();
    let trace = *trace;
    state
        .outbox
        .write(move |c| c.enqueue(&event, &trace, now))
        .await?;
    if let Some(r) = revocation {
        state.keys.revocations.apply(r, now);
    }
    Ok(())
}

/// 204 clearing the session cookie.
fn signed_out(state: &AppState) -> Response {
    (
        StatusCode::NO_CONTENT,
        [(header::SET_COOKIE, state.keys.clear_cookie())],
    )
        .into_response()
}

/// Signs out: ends the request's session (its token no longer works
/// anywhere, as a cookie or a bearer token; publishes `user.signed-out`)
/// and clears the `session` cookie. Without a valid session it only clears
/// the cookie.
#[utoipa::path(post, path = "/api/users/signout", tag = "users",
    responses((status = 204, description = "Signed out; the session is ended and the cookie cleared")))]
async fn sign_out(
    State(state): State<AppState>,
    trace: TraceContext,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let session =
        shared::auth::token_from_headers(&headers).and_then(|t| state.keys.verify_session(t));
    if let Some(s) = session {
        revoke(
            &state,
            &trace,
            UserSignedOut {
                user_id: s.user.id,
                session_id: Some(s.id),
                before: None,
                // The token's own expiry: it may have been issued under a
                // longer lifetime than this process's.
                until: state.keys.verifiable_until_expiry(s.expires),
            },
        )
        .await?;
        tracing::info!(user_id = %s.user.id, session_id = %s.id, "signed out");
    }
    Ok(signed_out(&state))
}

/// Signs out everywhere: ends every session of the caller begun until now
/// (publishes `user.signed-out` with `before`) and clears the cookie.
#[utoipa::path(post, path = "/api/users/signout-all", tag = "users",
    security(("session" = []), ("bearer" = [])),
    responses(
        (status = 204, description = "Every session of the caller is ended; the cookie is cleared"),
        (status = 401, description = "No valid session", body = shared::openapi::ErrorBody),
    ))]
async fn sign_out_everywhere(
    State(state): State<AppState>,
    trace: TraceContext,
    session: Session,
) -> Result<Response, ApiError> {
    end_every_session(&state, &trace, session.user.id, None).await?;
    tracing::info!(user_id = %session.user.id, "signed out everywhere");
    Ok(signed_out(&state))
}

/// Ends every session of `id` begun until now (publishes `user.signed-out`
/// with `before`) in one transaction on the user's row, and applies it to
/// this process's deny list at once. With `password` (the hash the current
/// password was checked against, and the new one) it also sets the new
/// password — unless it changed meanwhile: then nothing happens and the
/// answer is `None` — and begins the caller's next session just after the
/// cut-off. Returns the cut-off.
pub(crate) async fn end_every_session(
    state: &AppState,
    trace: &TraceContext,
    id: UserId,
    password: Option<(String, String)>,
) -> Result<Option<Timestamp>, ApiError> {
    let now = state.clock.now();
    let trace = *trace;
    let keys = state.keys.clone();
    let event = state
        .outbox
        .write(move |c| {
            let Some(before) = cut_off(c, id, now)? else {
                return Ok::<_, StoreError>(Err(ApiError::Unauthorized));
            };
            if let Some((checked, new)) = &password {
                let next_session = Timestamp::from_millis(before.millis() + 1);
                let changed = c.execute(
                    "UPDATE users SET password_hash = $3, last_session_at = $4 \
                     WHERE id = $1 AND password_hash = $2",
                    &[&id, checked, new, &next_session],
                )?;
                if changed == 0 {
                    return Ok(Ok(None));
                }
            }
            let event = UserSignedOut {
                user_id: id,
                session_id: None,
                before: Some(before),
                until: keys.verifiable_until(before),
            };
            c.enqueue(&event, &trace, now)?;
            Ok(Ok(Some(event)))
        })
        .await??;
    let Some(event) = event else {
        return Ok(None);
    };
    if let Some(r) = event.revocation() {
        state.keys.revocations.apply(r, now);
    }
    Ok(event.before)
}

/// Changes the caller's password: the current one must be given, the new
/// one follows sign-up's rules. Every session of the caller begun until now
/// ends (`user.signed-out` with `before`, as signing out everywhere), this
/// one included; the answer carries a new session in the cookie, so the
/// caller stays signed in (an API client reads its new token there).
/// Attempts count against the sign-in allowance.
#[utoipa::path(post, path = "/api/users/password", tag = "users",
    request_body = api::PasswordChange,
    security(("session" = []), ("bearer" = [])),
    responses(
        (status = 204, description = "Changed; every other session is ended and the cookie holds a new one",
            headers(("set-cookie" = String, description = "session=<jwt>; HttpOnly; SameSite=Lax; Path=/"))),
        (status = 400, description = "A missing current password, or a new one outside the rules", body = shared::openapi::ErrorBody),
        (status = 401, description = "No valid session", body = shared::openapi::ErrorBody),
        (status = 403, description = "The current password is wrong", body = shared::openapi::ErrorBody),
        (status = 409, description = "The password changed meanwhile", body = shared::openapi::ErrorBody),
        (status = 429, description = "Too many attempts from this client", body = shared::openapi::ErrorBody),
    ))]
async fn change_password(
    State(state): State<AppState>,
    _: Attempt,
    trace: TraceContext,
    session: Session,
    ValidJson(input): ValidJson<api::PasswordChange>,
) -> Result<Response, ApiError> {
    let id = session.user.id;
    let stored = state
        .db
        .read(move |c| {
            c.query_opt("SELECT password_hash FROM users WHERE id = $1", &[&id])?
                .map(|r| r.get::<String>(0))
                .transpose()
        })
        .await?
        .ok_or(ApiError::Unauthorized)?;
    let matches = password::verify_off_runtime(input.current, stored.clone())
        .await
        .map_err(ApiError::internal)?;
    if !matches {
        return Err(ApiError::Forbidden("Current password is incorrect".into()));
    }
    let hash = password::hash_off_runtime(input.new)
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    let before = match end_every_session(&state, &trace, id, Some((stored, hash))).await? {
        Some(before) => before,
        None => {
            return Err(ApiError::Conflict(
                "The password was changed meanwhile; sign in again".into(),
            ));
        }
    };
    // The caller's new session begins just after the cut-off (the row's
    // `last_session_at` says so already), so it is not among those ended.
    let begun = Timestamp::from_millis(before.millis() + 1);
    let user = session.user;
    tracing::info!(user_id = %user.id, "password changed; every session ended");
    let token = state.keys.issue(&user, begun)?;
    Ok((
        StatusCode::NO_CONTENT,
        [(header::SET_COOKIE, state.keys.session_cookie(&token))],
    )
        .into_response())
}

/// Who the session belongs to (`null` without a valid session: none, an
/// expired or ended one, or a banned user's).
#[utoipa::path(get, path = "/api/users/currentuser", tag = "users",
    responses((status = 200, description = "The signed-in user, or null", body = api::CurrentUser)))]
async fn current_user(
    State(state): State<AppState>,
    user: MaybeAuthUser,
) -> Result<Json<api::CurrentUser>, ApiError> {
    let current_user = match user.0 {
        Some(u) => {
            let admin = crate::roles::is_admin(&state.db, u.id).await?;
            Some(user_body(u, admin))
        }
        None => None,
    };
    Ok(Json(api::CurrentUser { current_user }))
}
