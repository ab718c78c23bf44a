//! Safe retries of writes, as Stripe's API offers them: a client sends an
//! `Idempotency-Key` header with a request; a retry with the same key (by
//! the same user, within 24 hours) gets the first request's answer instead
//! of acting again, and the same key with another request is refused (422).
//!
//! A service keeps its keys in a table of its own ([`TABLE_SQL`]) and
//! claims the key in the transaction that acts ([`claim`]): the claim and
//! the act commit together or not at all. What it stores is the answer
//! ([`answer`]), or — for a request whose answer is only known later, such
//! as a payment awaiting its order's verdict — the resource it created
//! ([`remember_resource`]), from which a retry answers afresh.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use sha2::Digest as _;
use store::{Conn, StoreError};

use crate::error::ApiError;
use crate::ids::UserId;
use crate::time::Timestamp;

/// The request header.
pub const HEADER: &str = "idempotency-key";

/// How long a key is remembered.
pub const KEPT_FOR_MS: i64 = 24 * 3600 * 1000;

/// The keys' table, for a service's migrations.
pub const TABLE_SQL: &str = "CREATE TABLE idempotency_keys (
        user_id TEXT NOT NULL,
        key TEXT NOT NULL,
        request_hash TEXT NOT NULL,
        status BIGINT,
        body TEXT,
        resource_id TEXT,
        created_at BIGINT NOT NULL,
        PRIMARY KEY (user_id, key)
    );
    CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);";

/// The request's `Idempotency-Key`, if it has one: 1 to 255 visible ASCII
/// characters, else 400.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let mut values = parts.headers.get_all(HEADER).iter();
        let Some(value) = values.next() else {
            return Ok(IdempotencyKey(None));
        };
        let bad = || {
            ApiError::BadRequest(
                "Idempotency-Key must be one value of 1 to 255 visible ASCII characters".into(),
            )
        };
        if values.next().is_some() {
            return Err(bad());
        }
        let key = value.to_str().map_err(|_| bad())?;
        if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad());
        }
        Ok(IdempotencyKey(Some(key.to_owned())))
    }
}

/// A digest of what a request asks for (its parameters, in a fixed
/// order), to tell a retry from another request under the same key.
pub fn request_hash(parts: &[&str]) -> String {
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// What a key says about a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The key is new: it is now this request's (act, then [`answer`] or
    /// [`remember_resource`] in the same transaction).
    New,
    /// A retry of a request that was answered: answer the same.
    Answered { status: u16, body: String },
    /// A retry of a request that created this resource and may not have
    /// been answered (it may have died): answer from the resource.
    Resource(String),
    /// A retry of a request that is still acting and left nothing yet.
    InFlight,
}

/// The 422 for a key reused with another request.
pub fn mismatch() -> ApiError {
    ApiError::Unprocessable(
        "This Idempotency-Key was used with another request; use a new key".into(),
    )
}

/// Claims `key` for `user`'s request (`hash`) in the caller's transaction,
/// after forgetting keys older than a day. A key reused with another
/// request is a 422.
pub fn claim(
    c: &mut dyn Conn,
    user: UserId,
    key: &str,
    hash: &str,
    now: Timestamp,
) -> Result<Claim, ApiError> {
    let expired = Timestamp::from_millis(now.millis() - KEPT_FOR_MS);
    c.execute(
        "DELETE FROM idempotency_keys WHERE created_at < $1",
        &[&expired],
    )?;
    let found = c.query_opt(
        "SELECT request_hash, status, body, resource_id FROM idempotency_keys
         WHERE user_id = $1 AND key = $2 FOR UPDATE",
        &[&user, &key],
    )?;
    let Some(row) = found else {
        c.execute(
            "INSERT INTO idempotency_keys (user_id, key, request_hash, created_at)
             VALUES ($1, $2, $3, $4)",
            &[&user, &key, &hash, &now],
        )?;
        return Ok(Claim::New);
    };
    if row.get::<String>(0)? != hash {
        return Err(mismatch());
    }
    Ok(
        match (
            row.get::<Option<i64>>(1)?,
            row.get::<Option<String>>(2)?,
            row.get::<Option<String>>(3)?,
        ) {
            (Some(status), body, _) => Claim::Answered {
                status: u16::try_from(status).unwrap_or(500),
                body: body.unwrap_or_default(),
            },
            (None, _, Some(id)) => Claim::Resource(id),
            (None, _, None) => Claim::InFlight,
        },
    )
}

/// Records the answer to a claimed key.
pub fn answer(
    c: &mut dyn Conn,
    user: UserId,
    key: &str,
    status: u16,
    body: &str,
) -> Result<(), StoreError> {
    c.execute(
        "UPDATE idempotency_keys SET status = $3, body = $4 WHERE user_id = $1 AND key = $2",
        &[&user, &key, &i64::from(status), &body],
    )?;
    Ok(())
}

/// Records the resource a claimed key's request created.
pub fn remember_resource(
    c: &mut dyn Conn,
    user: UserId,
    key: &str,
    id: &str,
) -> Result<(), StoreError> {
    c.execute(
        "UPDATE idempotency_keys SET resource_id = $3 WHERE user_id = $1 AND key = $2",
        &[&user, &key, &id],
    )?;
    Ok(())
}

/// A stored answer, as the response it was.
pub fn replay(status: u16, body: String) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let status = axum::http::StatusCode::from_u16(status)
        .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [
            (axum::http::header::CONTENT_TYPE, "application/json"),
            (
                axum::http::HeaderName::from_static("idempotent-replayed"),
                "true",
            ),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    static MIGRATIONS: &[store::Migration] = &[store::Migration {
        version: 1,
        description: "keys",
        sql: TABLE_SQL,
    }];

    #[tokio::test]
    async fn a_key_answers_its_retries_for_a_day_then_is_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let db = store::Db::open_sqlite(&dir.path().join("keys.db"), MIGRATIONS)
            .await
            .unwrap();
        let (user, other) = (UserId::new(), UserId::new());
        let at = |ms: i64| Timestamp::from_millis(1_000_000_000 + ms);
        let claim_at = |who: UserId, hash: &'static str, ms: i64| {
            let db = db.clone();
            async move {
                db.write(move |c| claim(c, who, "k", hash, at(ms)))
                    .await
                    .map_err(|e: ApiError| e.to_string())
            }
        };
        assert_eq!(claim_at(user, "h", 0).await, Ok(Claim::New));
        assert_eq!(claim_at(user, "h", 1).await, Ok(Claim::InFlight));
        db.write(move |c| answer(c, user, "k", 201, "{}"))
            .await
            .unwrap();
        let answered = Claim::Answered {
            status: 201,
            body: "{}".into(),
        };
        assert_eq!(claim_at(user, "h", 2).await, Ok(answered.clone()));
        assert_eq!(claim_at(user, "h", KEPT_FOR_MS).await, Ok(answered));
        // Another request under the key: 422.
        assert_eq!(
            claim_at(user, "other", 3).await,
            Err(mismatch().to_string())
        );
        // Another user's key of the same name is theirs.
        assert_eq!(claim_at(other, "other", 3).await, Ok(Claim::New));
        // A day later the key is forgotten: a new request.
        assert_eq!(
            claim_at(user, "other", KEPT_FOR_MS + 1).await,
            Ok(Claim::New)
        );
    }

    #[test]
    fn a_request_hash_tells_its_parameters_apart() {
        assert_eq!(request_hash(&["a", "b"]), request_hash(&["a", "b"]));
        assert_ne!(request_hash(&["a", "b"]), request_hash(&["ab", ""]));
        assert_ne!(request_hash(&["a", "b"]), request_hash(&["b", "a"]));
        assert_eq!(request_hash(&["x"]).len(), 64);
    }
}
