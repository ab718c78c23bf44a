//! `/api/users`: sign up, sign in, sign out, current user.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use marketplace_events::UserCreated;
use serde::Serialize;
use serde_json::json;
use shared::ApiError;
use shared::auth::{AuthUser, MaybeAuthUser};
use shared::email::Email;
use shared::http::{Fields, JsonBody, PeerAddr};
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
        .routes(utoipa_axum::routes!(current_user))
}

/// A user as the API returns it.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = User)]
#[allow(dead_code)]
pub struct UserBody {
    #[schema(format = Uuid)]
    id: String,
    #[schema(format = Email)]
    email: String,
}

/// Sign-up details.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = SignUp)]
#[allow(dead_code)]
pub struct SignUpBody {
    /// Stored trimmed and lower-cased.
    #[schema(format = Email)]
    email: String,
    #[schema(min_length = 8, max_length = 128)]
    password: String,
}

/// Sign-in credentials.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = SignIn)]
#[allow(dead_code)]
pub struct SignInBody {
    #[schema(format = Email)]
    email: String,
    #[schema(min_length = 1)]
    password: String,
}

/// Who the session belongs to, if anyone.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = CurrentUser)]
#[allow(dead_code)]
pub struct CurrentUserBody {
    #[schema(required = true)]
    current_user: Option<UserBody>,
}

/// Who is asking, for rate limiting.
fn client_key(state: &AppState, headers: &HeaderMap, peer: PeerAddr) -> String {
    if state.trust_forwarded_for {
        if let Some(first) = headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
        {
            return first.trim().to_owned();
        }
    }
    peer.0
        .map(|p| p.ip().to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn limit(state: &AppState, headers: &HeaderMap, peer: PeerAddr) -> Result<(), ApiError> {
    let key = client_key(state, headers, peer);
    state
        .limiter
        .check(&key)
        .map_err(|retry_after_secs| ApiError::TooManyRequests { retry_after_secs })
}

fn signed_in(state: &AppState, status: StatusCode, user: AuthUser) -> Result<Response, ApiError> {
    let token = state.keys.issue(&user, state.clock.now())?;
    Ok((
        status,
        [(header::SET_COOKIE, state.keys.session_cookie(&token))],
        Json(json!({ "id": user.id, "email": user.email })),
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
    request_body = SignUpBody,
    responses(
        (status = 201, description = "Signed up and in; the session cookie is set", body = UserBody,
            headers(("set-cookie" = String, description = "session=<jwt>; HttpOnly; SameSite=Lax; Path=/"))),
        (status = 409, description = "Email in use", body = shared::openapi::ErrorBody),
        (status = 429, description = "Too many attempts from this client", body = shared::openapi::ErrorBody),
    ))]
async fn sign_up(
    State(state): State<AppState>,
    peer: PeerAddr,
    trace: TraceContext,
    headers: HeaderMap,
    body: JsonBody,
) -> Result<Response, ApiError> {
    limit(&state, &headers, peer)?;
    let mut f = Fields::new(&body);
    let email = email_field(&mut f);
    let password = f.string("password", "Password").filter(|p| {
        let n = p.chars().count();
        let ok = (8..=128).contains(&n);
        if !ok {
            f.fail("password", "Password must be between 8 and 128 characters");
        }
        ok
    });
    f.finish()?;
    let (email, password) = (
        email.expect("validated"),
        password.expect("validated").to_owned(),
    );

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
    request_body = SignInBody,
    responses(
        (status = 200, description = "Signed in; the session cookie is set", body = UserBody,
            headers(("set-cookie" = String, description = "session=<jwt>; HttpOnly; SameSite=Lax; Path=/"))),
        (status = 401, description = "Invalid credentials", body = shared::openapi::ErrorBody),
        (status = 429, description = "Too many attempts from this client", body = shared::openapi::ErrorBody),
    ))]
async fn sign_in(
    State(state): State<AppState>,
    peer: PeerAddr,
    headers: HeaderMap,
    body: JsonBody,
) -> Result<Response, ApiError> {
    limit(&state, &headers, peer)?;
    let mut f = Fields::new(&body);
    let email = email_field(&mut f);
    let password = f.string("password", "Password").filter(|p| {
        if p.is_empty() {
            f.fail("password", "Password is required");
        }
        !p.is_empty()
    });
    f.finish()?;
    let (email, password) = (
        email.expect("validated"),
        password.expect("validated").to_owned(),
    );

    let lookup = email.to_string();
    let found = state
        .db
        .read(move |c| {
            c.query_opt(
                "SELECT id, password_hash FROM users WHERE email = $1",
                &[&lookup],
            )?
            .map(|r| Ok::<_, StoreError>((r.get::<UserId>(0)?, r.get::<String>(1)?)))
            .transpose()
        })
        .await?;
    let (id, hash) = match found {
        Some((id, hash)) => (Some(id), hash),
        None => (None, password::dummy_hash().to_owned()),
    };
    // Verify even for an unknown e-mail so both failures cost the same.
    let matches = password::verify_off_runtime(password, hash)
        .await
        .map_err(ApiError::internal)?;
    match id {
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

/// Signs out: clears the `session` cookie.
#[utoipa::path(post, path = "/api/users/signout", tag = "users",
    responses((status = 204, description = "Signed out; the cookie is cleared")))]
async fn sign_out(State(state): State<AppState>) -> Response {
    (
        StatusCode::NO_CONTENT,
        [(header::SET_COOKIE, state.keys.clear_cookie())],
    )
        .into_response()
}

/// Who the session belongs to (`null` without a valid session).
#[utoipa::path(get, path = "/api/users/currentuser", tag = "users",
    responses((status = 200, description = "The signed-in user, or null", body = CurrentUserBody)))]
async fn current_user(user: MaybeAuthUser) -> Json<serde_json::Value> {
    Json(json!({
        "currentUser": user.0.map(|u| json!({ "id": u.id, "email": u.email }))
    }))
}
