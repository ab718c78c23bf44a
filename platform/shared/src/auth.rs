//! Sessions: HS256 JWTs issued by auth and verified locally by every service,
//! carried in an HttpOnly cookie or an `Authorization: Bearer` header.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::{HeaderValue, header, request::Parts};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::ids::UserId;
use crate::time::Timestamp;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "session";

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    email: String,
    iat: i64,
    exp: i64,
}

/// The signing key and session settings, shared by every service.
pub struct AuthKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    /// How long a session lasts.
    pub ttl: Duration,
    /// Whether cookies carry `Secure` (off only for plain-HTTP local use).
    pub secure_cookie: bool,
}

impl AuthKeys {
    pub fn new(secret: &[u8], ttl: Duration, secure_cookie: bool) -> Arc<Self> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Arc::new(AuthKeys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl,
            secure_cookie,
        })
    }

    /// Signs a session token for `user`, valid from `now` for the TTL.
    pub fn issue(&self, user: &AuthUser, now: Timestamp) -> Result<String, ApiError> {
        let iat = now.millis() / 1000;
        let claims = Claims {
            sub: user.id.to_string(),
            email: user.email.clone(),
            iat,
            exp: iat + self.ttl.as_secs() as i64,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(ApiError::internal)
    }

    /// The user a token names, if its signature and expiry check out.
    pub fn verify(&self, token: &str) -> Option<AuthUser> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).ok()?;
        Some(AuthUser {
            id: UserId::parse(&data.claims.sub)?,
            email: data.claims.email,
        })
    }

    /// `Set-Cookie` value holding a session token.
    pub fn session_cookie(&self, token: &str) -> HeaderValue {
        self.cookie(token, self.ttl.as_secs())
    }

    /// `Set-Cookie` value that clears the session.
    pub fn clear_cookie(&self) -> HeaderValue {
        self.cookie("", 0)
    }

    fn cookie(&self, value: &str, max_age: u64) -> HeaderValue {
        let secure = if self.secure_cookie { "; Secure" } else { "" };
        let s = format!(
            "{SESSION_COOKIE}={value}; HttpOnly; SameSite=Lax; Path=/; Max-Age={max_age}{secure}"
        );
        // A JWT is base64url and dots, always a valid header value.
        HeaderValue::from_str(&s).expect("cookie of token characters is a valid header")
    }
}

/// The signed-in user. Rejects with 401 when there is no valid session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthUser {
    pub id: UserId,
    pub email: String,
}

/// The signed-in user, if any. Never rejects.
#[derive(Debug, Clone)]
pub struct MaybeAuthUser(pub Option<AuthUser>);

/// The bearer token of a request's `Authorization` header, if it has one
/// (other schemes, such as `Basic`, are not ours to read).
pub fn bearer_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    let auth = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = auth.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Whether a request carries a session cookie.
pub fn has_session_cookie(headers: &axum::http::HeaderMap) -> bool {
    session_cookie(headers).is_some()
}

fn session_cookie(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, value)| *name == SESSION_COOKIE && !value.is_empty())
        .map(|(_, value)| value)
}

/// The session token on a request: a bearer token if the `Authorization`
/// header has one, else the session cookie (also when the header uses
/// another scheme, which a browser may send to a site behind basic auth).
pub fn token_from_parts(parts: &Parts) -> Option<&str> {
    bearer_token(&parts.headers).or_else(|| session_cookie(&parts.headers))
}

impl<S> FromRequestParts<S> for AuthUser
where
    S: Send + Sync,
    Arc<AuthKeys>: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let keys = Arc::<AuthKeys>::from_ref(state);
        token_from_parts(parts)
            .and_then(|t| keys.verify(t))
            .ok_or(ApiError::Unauthorized)
    }
}

impl<S> FromRequestParts<S> for MaybeAuthUser
where
    S: Send + Sync,
    Arc<AuthKeys>: FromRef<S>,
{
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let keys = Arc::<AuthKeys>::from_ref(state);
        Ok(MaybeAuthUser(
            token_from_parts(parts).and_then(|t| keys.verify(t)),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::Clock;

    fn parts(headers: &[(&str, &str)]) -> Parts {
        let mut req = axum::http::Request::builder();
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(()).unwrap().into_parts().0
    }

    #[test]
    fn a_bearer_token_wins_and_other_schemes_leave_the_cookie_in_charge() {
        let cookie = ("cookie", "a=1; session=from-cookie");
        assert_eq!(
            token_from_parts(&parts(&[("authorization", "Bearer from-header"), cookie])),
            Some("from-header")
        );
        for other in ["Basic dXNlcjpwYXNz", "Digest x", "garbage"] {
            assert_eq!(
                token_from_parts(&parts(&[("authorization", other), cookie])),
                Some("from-cookie"),
                "{other}"
            );
        }
        assert_eq!(
            token_from_parts(&parts(&[("authorization", "Basic x")])),
            None
        );
        assert_eq!(token_from_parts(&parts(&[("cookie", "session=")])), None);
    }

    fn user() -> AuthUser {
        AuthUser {
            id: UserId::new(),
            email: "a@b.co".into(),
        }
    }

    #[test]
    fn an_issued_token_verifies_and_names_its_user() {
        let keys = AuthKeys::new(b"secret", Duration::from_secs(3600), true);
        let u = user();
        let token = keys.issue(&u, Clock::System.now()).unwrap();
        assert_eq!(keys.verify(&token), Some(u));
    }

    #[test]
    fn tampered_expired_or_foreign_tokens_are_rejected() {
        let keys = AuthKeys::new(b"secret", Duration::from_secs(3600), true);
        let other = AuthKeys::new(b"other", Duration::from_secs(3600), true);
        let u = user();
        let now = Clock::System.now();
        let token = keys.issue(&u, now).unwrap();
        assert!(other.verify(&token).is_none());
        let mut tampered = token.clone();
        tampered.push('x');
        assert!(keys.verify(&tampered).is_none());
        let old = keys
            .issue(&u, Timestamp::from_millis(now.millis() - 7_200_000))
            .unwrap();
        assert!(keys.verify(&old).is_none());
    }

    #[test]
    fn cookies_are_http_only_same_site_and_secure_unless_disabled() {
        let keys = AuthKeys::new(b"s", Duration::from_secs(60), true);
        let c = keys.session_cookie("tok");
        assert_eq!(
            c,
            "session=tok; HttpOnly; SameSite=Lax; Path=/; Max-Age=60; Secure"
        );
        let plain = AuthKeys::new(b"s", Duration::from_secs(60), false);
        assert!(!plain.clear_cookie().to_str().unwrap().contains("Secure"));
        assert!(plain.clear_cookie().to_str().unwrap().contains("Max-Age=0"));
    }
}
