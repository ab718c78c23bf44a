//! `/api/users`: sign up, sign in, sign out (here or everywhere), current user.

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use marketplace_events::{UserCreated, UserSignedOut};
use serde::Serialize;
use shared::ApiError;
use shared::auth::{AuthUser, MaybeAuthUser, Session};
use shared::email::Email;
use shared::http::{Fields, FromFields, PeerAddr, ValidJson};
use shared::ids::UserId;
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
}

/// A user as the API returns it.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = User)]
pub struct UserBody {
    #[schema(value_type = String, format = Uuid)]
    id: UserId,
    #[schema(format = Email)]
    email: String,
    /// Whether the user is an admin (may list, ban and unban users).
    admin: bool,
}

impl UserBody {
    fn of(state: &AppState, u: AuthUser) -> Self {
        UserBody {
            id: u.id,
            admin: state.config.is_admin(&u.email),
            email: u.email,
        }
    }
}

/// Sign-up details.
#[derive(utoipa::ToSchema)]
#[schema(as = SignUp)]
pub struct SignUpInput {
    /// Stored trimmed and lower-cased.
    #[schema(value_type = String, format = Email)]
    email: Email,
    #[schema(min_length = 8, max_length = 128)]
    password: String,
}

impl FromFields for SignUpInput {
    fn from_fields(f: &mut Fields<'_>) -> Option<Self> {
        let email = email_field(f);
        let password = f.string("password", "Password").filter(|p| {
            let ok = (8..=128).contains(&p.chars().count());
            if !ok {
                f.fail("password", "Password must be between 8 and 128 characters");
            }
            ok
        });
        Some(SignUpInput {
            email: email?,
            password: password?.to_owned(),
        })
    }
}

/// Sign-in credentials.
#[derive(utoipa::ToSchema)]
#[schema(as = SignIn)]
pub struct SignInInput {
    #[schema(value_type = String, format = Email)]
    email: Email,
    #[schema(min_length = 1)]
    password: String,
}

impl FromFields for SignInInput {
    fn from_fields(f: &mut Fields<'_>) -> Option<Self> {
        let email = email_field(f);
        let password = f.string("password", "Password").filter(|p| {
            if p.is_empty() {
                f.fail("password", "Password is required");
            }
            !p.is_empty()
        });
        Some(SignInInput {
            email: email?,
            password: password?.to_owned(),
        })
    }
}

/// Who the session belongs to, if anyone.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = CurrentUser)]
pub struct CurrentUserBody {
    #[schema(required = true)]
    current_user: Option<UserBody>,
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

fn signed_in(state: &AppState, status: StatusCode, user: AuthUser) -> Result<Response, ApiError> {
    let token = state.keys.issue(&user, state.clock.now())?;
    Ok((
        status,
        [(header::SET_COOKIE, state.keys.session_cookie(&token))],
        Json(UserBody::of(state, user)),
    )
        .into_response())
}

/// The `email` field, normalised; records what is wrong with it otherwise.
fn email_field(f: &mut Fields<'_>) -> Option<Email> {
    let raw = f.non_empty("email", "Email")?;
    Email::parse(raw).map_err(|msg| f.fail("email", msg)).ok()
}

/// Creates an account and signs it in (sets the `session` cookie);
/// publishes `user.created`.
#[utoipa::path(post, path = "/api/users/signup", tag = "users",
    request_body = SignUpInput,
    responses(
        (status = 201, description = "Signed up and in; the session cookie is set", body = UserBody,
            headers(("set-cookie" = String, description = "session=<jwt>; HttpOnly; SameSite=Lax; Path=/"))),
        (status = 409, description = "Email in use", body = shared::openapi::ErrorBody),
        (status = 429, description = "Too many attempts from this client", body = shared::openapi::ErrorBody),
    ))]
async fn sign_up(
    State(state): State<AppState>,
    _: Attempt,
    trace: TraceContext,
    ValidJson(SignUpInput { email, password }): ValidJson<SignUpInput>,
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
                "INSERT INTO users (id, email, password_hash, created_at) VALUES ($1, $2, $3, $4)",
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
    signed_in(&state, StatusCode::CREATED, user)
}

/// Signs in (sets the `session` cookie).
#[utoipa::path(post, path = "/api/users/signin", tag = "users",
    request_body = SignInInput,
    responses(
        (status = 200, description = "Signed in; the session cookie is set", body = UserBody,
            headers(("set-cookie" = String, description = "session=<jwt>; HttpOnly; SameSite=Lax; Path=/"))),
        (status = 401, description = "Invalid credentials", body = shared::openapi::ErrorBody),
        (status = 403, description = "The account is banned", body = shared::openapi::ErrorBody),
        (status = 429, description = "Too many attempts from this client", body = shared::openapi::ErrorBody),
    ))]
async fn sign_in(
    State(state): State<AppState>,
    _: Attempt,
    ValidJson(SignInInput { email, password }): ValidJson<SignInInput>,
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
    let matches = password::verify_off_runtime(password, hash)
        .await
        .map_err(ApiError::internal)?;
    match id {
        // Only someone who knows the password learns of the ban.
        Some(_) if matches && banned => Err(ApiError::Forbidden(
            "This account is banned; it cannot sign in".into(),
        )),
        Some(id) if matches => signed_in(
            &state,
            StatusCode::OK,
            AuthUser {
                id,
                email: email.to_string(),
            },
        ),
        _ => Err(ApiError::InvalidCredentials("Invalid credentials".into())),
    }
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
                until: state.keys.verifiable_until(s.issued),
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
    let now = state.clock.now();
    revoke(
        &state,
        &trace,
        UserSignedOut {
            user_id: session.user.id,
            session_id: None,
            before: Some(now),
            until: state.keys.verifiable_until(now),
        },
    )
    .await?;
    tracing::info!(user_id = %session.user.id, "signed out everywhere");
    Ok(signed_out(&state))
}

/// Who the session belongs to (`null` without a valid session: none, an
/// expired or ended one, or a banned user's).
#[utoipa::path(get, path = "/api/users/currentuser", tag = "users",
    responses((status = 200, description = "The signed-in user, or null", body = CurrentUserBody)))]
async fn current_user(State(state): State<AppState>, user: MaybeAuthUser) -> Json<CurrentUserBody> {
    Json(CurrentUserBody {
        current_user: user.0.map(|u| UserBody::of(&state, u)),
    })
}
