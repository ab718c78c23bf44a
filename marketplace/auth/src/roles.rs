//! Who is an admin: a user an operator named with `ticketing users
//! grant-admin EMAIL`, until `ticketing users revoke-admin EMAIL`. Nothing a
//! user does over HTTP grants it, signing up with any address included (an
//! attacker could register an admin's address before its owner). Each
//! change is an event like any other (`user.admin-granted`,
//! `user.admin-revoked`) with the user's new version, and takes effect at
//! once: every admin check reads the user's row.

use std::sync::Arc;

use bus::outbox::Outbox;
use marketplace_events::{UserAdminGranted, UserAdminRevoked};
use shared::ApiError;
use shared::email::Email;
use shared::ids::UserId;
use shared::time::Timestamp;
use shared::trace::TraceContext;
use store::{Conn as _, Db, StoreError};

/// Whether the user `id` is an admin now.
pub async fn is_admin(db: &Db, id: UserId) -> Result<bool, StoreError> {
    db.read(move |c| {
        Ok(
            c.query_opt("SELECT admin_since FROM users WHERE id = $1", &[&id])?
                .map(|r| r.get::<Option<i64>>(0))
                .transpose()?
                .flatten()
                .is_some(),
        )
    })
    .await
}

/// The check the operator's routes over parked messages use.
pub fn admin_check(db: Db) -> runtime::parked::AdminCheck {
    Arc::new(move |id| {
        let db = db.clone();
        Box::pin(async move { is_admin(&db, id).await.map_err(ApiError::from) })
    })
}

/// What granting or revoking did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoleChange {
    /// The role changed; the user's record is now at `version`.
    Changed { id: UserId, version: i64 },
    /// The user already had (or already lacked) the role: nothing changed.
    Unchanged { id: UserId },
}

impl std::fmt::Display for RoleChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RoleChange::Changed { id, version } => {
                write!(f, "user {id} changed (version {version})")
            }
            RoleChange::Unchanged { id } => write!(f, "user {id} unchanged: it was so already"),
        }
    }
}

/// Why a role could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum RoleError {
    #[error("no account has the e-mail address {0}")]
    Unknown(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Makes the account with `email` an admin (`admin`) or takes the role
/// away, and records the event in the same transaction. Doing it twice
/// changes nothing the second time.
pub async fn set_admin(
    outbox: &Outbox,
    email: &Email,
    admin: bool,
    now: Timestamp,
) -> Result<RoleChange, RoleError> {
    let address = email.to_string();
    let trace = TraceContext::new_root();
    outbox
        .write(move |c| {
            let Some(row) = c.query_opt(
                "SELECT id, version, admin_since FROM users WHERE email = $1 FOR UPDATE",
                &[&address],
            )?
            else {
                return Ok(Err(address));
            };
            let id: UserId = row.get(0)?;
            let version = row.get::<i64>(1)? + 1;
            if row.get::<Option<i64>>(2)?.is_some() == admin {
                return Ok(Ok(RoleChange::Unchanged { id }));
            }
            let since = admin.then_some(now);
            c.execute(
                "UPDATE users SET admin_since = $2, version = $3 WHERE id = $1",
                &[&id, &since, &version],
            )?;
            if admin {
                c.enqueue(&UserAdminGranted { id, version }, &trace, now)?;
            } else {
                c.enqueue(&UserAdminRevoked { id, version }, &trace, now)?;
            }
            Ok::<_, StoreError>(Ok(RoleChange::Changed { id, version }))
        })
        .await?
        .map_err(RoleError::Unknown)
}

/// The auth service's database (the one its process uses: SQLite in the
/// data directory or its PostgreSQL URL) and its outbox, for operator
/// commands; the running service's relay publishes what they record.
pub async fn open_store(
    databases: &runtime::service::Databases,
) -> Result<(Db, Outbox), StoreError> {
    databases
        .operator_store(
            marketplace_events::service_events(crate::SERVICE),
            crate::MIGRATIONS,
        )
        .await
}
