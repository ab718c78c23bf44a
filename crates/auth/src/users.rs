//! `/api/users`: sign up, sign in, sign out, current user.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bus::outbox;
use serde_json::json;
use shared::ApiError;
use shared::auth::{AuthUser, MaybeAuthUser};
use shared::email::Email;
use shared::events::UserCreated;
use shared::http::{Fields, JsonBody, PeerAddr};
use shared::ids::UserId;
use shared::trace::TraceContext;
use store::StoreError;

use crate::{AppState, password};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/users/signup", post(sign_up))
        .route("/api/users/signin", post(sign_in))
        .route("/api/users/signout", post(sign_out))
        .route("/api/users/currentuser", get(current_user))
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

    let hash = tokio::task::spawn_blocking(move || password::hash(&password))
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| ApiError::internal(e.to_string()))?;
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
            outbox::enqueue(
                c,
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
    let matches = tokio::task::spawn_blocking(move || password::verify(&password, &hash))
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

async fn sign_out(State(state): State<AppState>) -> Response {
    (
        StatusCode::NO_CONTENT,
        [(header::SET_COOKIE, state.keys.clear_cookie())],
    )
        .into_response()
}

async fn current_user(user: MaybeAuthUser) -> Json<serde_json::Value> {
    Json(json!({
        "currentUser": user.0.map(|u| json!({ "id": u.id, "email": u.email }))
    }))
}
