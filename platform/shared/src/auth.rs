//! Sessions: HS256 JWTs issued by auth and verified locally by every service,
//! carried in an HttpOnly cookie or an `Authorization: Bearer` header.
//!
//! A token names its user and its session (`sid`). Verifying it needs no call
//! to auth, so a token alone would stay valid until it expires; sign-out and
//! bans end sessions earlier through [`Revocations`], a deny list each process
//! keeps from events and consults on every verification.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::{HeaderValue, header, request::Parts};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::ids::{SessionId, UserId};
use crate::time::Timestamp;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "session";

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    email: String,
    sid: String,
    iat: i64,
    /// When the session began, in milliseconds (`iat` is whole seconds, too
    /// coarse to tell a session begun just after a sign-out everywhere from
    /// one it ended).
    iat_ms: i64,
    exp: i64,
}

/// A verified session: its user, its id and its lifetime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub user: AuthUser,
    pub id: SessionId,
    pub issued: Timestamp,
    pub expires: Timestamp,
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
    /// Sessions ended before their tokens expire; a token they match does
    /// not verify.
    pub revocations: Revocations,
}

/// Seconds of clock difference a token's expiry tolerates.
const LEEWAY_SECS: u64 = 5;

impl AuthKeys {
    pub fn new(secret: &[u8], ttl: Duration, secure_cookie: bool) -> Arc<Self> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Arc::new(AuthKeys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl,
            secure_cookie,
            revocations: Revocations::default(),
        })
    }

    /// How long after its start a session's token may still verify (its
    /// lifetime plus the expiry's leeway): how long a revocation must be
    /// remembered.
    pub fn longest_life(&self) -> Duration {
        self.ttl + Duration::from_secs(LEEWAY_SECS)
    }

    /// The last moment a token of a session begun by `begun` can verify:
    /// until when a revocation of it must be remembered.
    pub fn verifiable_until(&self, begun: Timestamp) -> Timestamp {
        Timestamp::from_millis(begun.millis() + self.longest_life().as_millis() as i64)
    }

    /// The last moment a token that expires at `expires` can verify.
    pub fn verifiable_until_expiry(&self, expires: Timestamp) -> Timestamp {
        Timestamp::from_millis(
            expires.millis() + Duration::from_secs(LEEWAY_SECS).as_millis() as i64,
        )
    }

    /// Signs a token for a new session of `user`, valid from `now` for the TTL.
    pub fn issue(&self, user: &AuthUser, now: Timestamp) -> Result<String, ApiError> {
        let iat = now.millis().div_euclid(1000);
        let claims = Claims {
            sub: user.id.to_string(),
            email: user.email.clone(),
            sid: SessionId::new().to_string(),
            iat,
            iat_ms: now.millis(),
            exp: iat + self.ttl.as_secs() as i64,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(ApiError::internal)
    }

    /// The session a token names, if its signature and expiry check out, it
    /// was issued for no longer than this process's lifetime, and it has
    /// not been revoked.
    ///
    /// The lifetime check keeps the deny list whole: it holds the
    /// revocations of one lifetime (the current setting's), so a token
    /// issued for longer under an earlier setting — its session perhaps
    /// ended longer ago than that — must not verify.
    pub fn verify_session(&self, token: &str) -> Option<Session> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).ok()?;
        let c = data.claims;
        if c.exp.saturating_sub(c.iat) > self.ttl.as_secs() as i64 {
            return None;
        }
        let session = Session {
            user: AuthUser {
                id: UserId::parse(&c.sub)?,
                email: c.email,
            },
            id: SessionId::parse(&c.sid)?,
            issued: Timestamp::from_millis(c.iat_ms),
            expires: Timestamp::from_millis(c.exp.saturating_mul(1000)),
        };
        (!self
            .revocations
            .is_revoked(session.user.id, session.id, session.issued))
        .then_some(session)
    }

    /// The user a token names, if it verifies (see [`AuthKeys::verify_session`]).
    pub fn verify(&self, token: &str) -> Option<AuthUser> {
        self.verify_session(token).map(|s| s.user)
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

/// A session ended before its token expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revocation {
    /// One session (a sign-out).
    Session {
        session: SessionId,
        /// When its token expires: the entry is useless after that.
        until: Timestamp,
    },
    /// Every session of `user` begun at or before `before` (a sign-out
    /// everywhere, a ban).
    Before {
        user: UserId,
        before: Timestamp,
        /// When the last token begun by `before` expires.
        until: Timestamp,
    },
}

/// The deny list: revoked sessions, each kept only while a token it matches
/// could still verify. Its size is bounded by the revocations of one token
/// lifetime (about 60 bytes an entry); expired entries are dropped at most a
/// minute after they expire, by [`Revocations::apply`] and
/// [`Revocations::prune`]. Applying a revocation twice, or revocations of one
/// user in any order, ends in the same list (the latest cutoff wins), so the
/// events that feed it may arrive duplicated and out of order.
#[derive(Default)]
pub struct Revocations {
    list: RwLock<RevokedSet>,
    /// Entries held; lets a verification skip the lock when there are none.
    len: AtomicUsize,
}

#[derive(Default)]
struct RevokedSet {
    /// Session → when its token expires (ms).
    sessions: HashMap<SessionId, i64>,
    /// User → (sessions begun at or before this are revoked, until) in ms.
    users: HashMap<UserId, (i64, i64)>,
    next_prune: i64,
}

/// How often expired entries are looked for.
const PRUNE_EVERY_MS: i64 = 60_000;

impl RevokedSet {
    fn prune(&mut self, now: i64) -> usize {
        let before = self.sessions.len() + self.users.len();
        self.sessions.retain(|_, until| *until > now);
        self.users.retain(|_, (_, until)| *until > now);
        self.next_prune = now + PRUNE_EVERY_MS;
        before - self.sessions.len() - self.users.len()
    }
}

impl Revocations {
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, RevokedSet> {
        // A poisoned lock means a panic mid-insert into a map of plain
        // values; the map is still usable.
        self.list.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Records `r`, unless it has already expired at `now`.
    pub fn apply(&self, r: Revocation, now: Timestamp) {
        let now = now.millis();
        let mut list = self.write();
        if now >= list.next_prune {
            list.prune(now);
        }
        match r {
            Revocation::Session { session, until } if until.millis() > now => {
                let e = list.sessions.entry(session).or_insert(until.millis());
                *e = (*e).max(until.millis());
            }
            Revocation::Before {
                user,
                before,
                until,
            } if until.millis() > now => {
                let e = list
                    .users
                    .entry(user)
                    .or_insert((before.millis(), until.millis()));
                *e = (e.0.max(before.millis()), e.1.max(until.millis()));
            }
            _ => {}
        }
        self.len
            .store(list.sessions.len() + list.users.len(), Ordering::Release);
    }

    /// Whether a session of `user` begun at `issued` has been revoked.
    pub fn is_revoked(&self, user: UserId, session: SessionId, issued: Timestamp) -> bool {
        if self.len.load(Ordering::Acquire) == 0 {
            return false;
        }
        let list = self.list.read().unwrap_or_else(|e| e.into_inner());
        list.sessions.contains_key(&session)
            || list
                .users
                .get(&user)
                .is_some_and(|(before, _)| issued.millis() <= *before)
    }

    /// Drops the entries expired at `now`; returns how many.
    pub fn prune(&self, now: Timestamp) -> usize {
        let mut list = self.write();
        let dropped = list.prune(now.millis());
        self.len
            .store(list.sessions.len() + list.users.len(), Ordering::Release);
        dropped
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
    token_from_headers(&parts.headers)
}

/// The session token among `headers` (see [`token_from_parts`]).
pub fn token_from_headers(headers: &axum::http::HeaderMap) -> Option<&str> {
    bearer_token(headers).or_else(|| session_cookie(headers))
}

impl<S> FromRequestParts<S> for AuthUser
where
    S: Send + Sync,
    Arc<AuthKeys>: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Session::from_request_parts(parts, state)
            .await
            .map(|s| s.user)
    }
}

impl<S> FromRequestParts<S> for Session
where
    S: Send + Sync,
    Arc<AuthKeys>: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let keys = Arc::<AuthKeys>::from_ref(state);
        token_from_parts(parts)
            .and_then(|t| keys.verify_session(t))
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
    fn a_token_issued_for_longer_than_the_current_lifetime_does_not_verify() {
        let long = AuthKeys::new(b"secret", Duration::from_secs(24 * 3600), true);
        let short = AuthKeys::new(b"secret", Duration::from_secs(3600), true);
        let u = user();
        let now = Clock::System.now();
        let token = long.issue(&u, now).unwrap();
        assert_eq!(long.verify(&token), Some(u.clone()));
        assert_eq!(short.verify(&token), None);
        // A shorter lifetime than the setting's is fine.
        assert_eq!(long.verify(&short.issue(&u, now).unwrap()), Some(u));
    }

    #[test]
    fn a_revoked_session_no_longer_verifies_and_other_sessions_still_do() {
        let keys = AuthKeys::new(b"secret", Duration::from_secs(3600), true);
        let u = user();
        let now = Clock::System.now();
        let first = keys.issue(&u, now).unwrap();
        let second = keys.issue(&u, now).unwrap();
        let session = keys.verify_session(&first).unwrap();
        assert_eq!(session.user, u);
        assert_eq!(session.issued, now);
        keys.revocations.apply(
            Revocation::Session {
                session: session.id,
                until: session.expires,
            },
            now,
        );
        assert!(keys.verify(&first).is_none());
        assert_eq!(keys.verify(&second), Some(u));
    }

    #[test]
    fn revoking_a_users_sessions_before_a_moment_spares_later_ones_and_other_users() {
        let keys = AuthKeys::new(b"secret", Duration::from_secs(3600), true);
        let (u, other) = (user(), user());
        let t = Clock::System.now();
        let at = |ms: i64| Timestamp::from_millis(t.millis() + ms);
        let old = keys.issue(&u, t).unwrap();
        let same_ms = keys.issue(&u, at(1)).unwrap();
        let others = keys.issue(&other, t).unwrap();
        let revoke = |before| Revocation::Before {
            user: u.id,
            before,
            until: at(3_600_000),
        };
        keys.revocations.apply(revoke(at(1)), t);
        // Within the same second, one millisecond later: not revoked.
        let later = keys.issue(&u, at(2)).unwrap();
        assert!(keys.verify(&old).is_none());
        assert!(keys.verify(&same_ms).is_none());
        assert!(keys.verify(&later).is_some());
        assert!(keys.verify(&others).is_some());
        // An older cutoff arriving late does not move the newer one back.
        keys.revocations.apply(revoke(t), t);
        assert!(keys.verify(&same_ms).is_none());
        assert!(keys.verify(&later).is_some());
    }

    #[test]
    fn entries_are_dropped_once_no_token_they_match_can_verify() {
        let list = Revocations::default();
        let t = Timestamp::from_millis(1_000_000_000);
        for i in 0..100_000 {
            list.apply(
                Revocation::Session {
                    session: SessionId::new(),
                    until: Timestamp::from_millis(t.millis() + 1000 + i % 1000),
                },
                t,
            );
        }
        list.apply(
            Revocation::Before {
                user: UserId::new(),
                before: t,
                until: Timestamp::from_millis(t.millis() + 5000),
            },
            t,
        );
        assert_eq!(list.len(), 100_001);
        assert_eq!(
            list.prune(Timestamp::from_millis(t.millis() + 1499)),
            50_000
        );
        assert_eq!(
            list.prune(Timestamp::from_millis(t.millis() + 5000)),
            50_001
        );
        assert!(list.is_empty());
        // Already expired when it arrives: not kept at all.
        list.apply(
            Revocation::Session {
                session: SessionId::new(),
                until: t,
            },
            t,
        );
        assert!(list.is_empty());
        // Applying prunes on its own once a minute has passed.
        list.apply(
            Revocation::Session {
                session: SessionId::new(),
                until: Timestamp::from_millis(t.millis() + 10),
            },
            t,
        );
        list.apply(
            Revocation::Session {
                session: SessionId::new(),
                until: Timestamp::from_millis(t.millis() + 200_000),
            },
            Timestamp::from_millis(t.millis() + 100_000),
        );
        assert_eq!(list.len(), 1);
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
