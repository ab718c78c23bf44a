//! Addresses stored before e-mails were normalised (NFKC, the domain in
//! its IDNA ASCII form) are rewritten once, so their owners' sign-ins —
//! which look the normalised spelling up — find them, and a look-alike
//! spelling cannot sign up beside them.

use std::time::Duration;

use shared::email::Email;
use shared::ids::UserId;
use shared::shutdown::Shutdown;
use shared::time::{Clock, Timestamp};
use store::{Db, StoreError, StoreErrorKind};

/// What one pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Normalised {
    /// Addresses rewritten to their normal spelling.
    pub rewritten: usize,
    /// Addresses whose normal spelling another account holds already
    /// (left as they are; the log names them), or that are no longer valid
    /// addresses (a domain mixing scripts).
    pub left: usize,
}

/// Rewrites every stored address to its normal spelling, unless that was
/// done already; records that it was.
pub async fn normalise_stored(db: &Db, now: Timestamp) -> Result<Normalised, StoreError> {
    let done = db
        .read(|c| {
            Ok::<_, StoreError>(
                c.query_opt("SELECT at FROM emails_normalised", &[])?
                    .is_some(),
            )
        })
        .await?;
    if done {
        return Ok(Normalised::default());
    }
    let rows = db
        .read(|c| {
            c.query("SELECT id, email FROM users", &[])?
                .iter()
                .map(|r| Ok((r.get::<UserId>(0)?, r.get::<String>(1)?)))
                .collect::<Result<Vec<_>, StoreError>>()
        })
        .await?;
    let mut out = Normalised::default();
    for (id, stored) in rows {
        let normal = match Email::parse(&stored) {
            Ok(e) if e.as_str() == stored => continue,
            Ok(e) => e.to_string(),
            Err(reason) => {
                tracing::warn!(user_id = %id, email = %stored, reason, "a stored address is no longer valid; left as it is");
                out.left += 1;
                continue;
            }
        };
        // One transaction each: a clash fails that one alone.
        let to = normal.clone();
        match db
            .write(move |c| c.execute("UPDATE users SET email = $2 WHERE id = $1", &[&id, &to]))
            .await
        {
            Ok(_) => out.rewritten += 1,
            Err(e) if e.is_unique_violation() => {
                tracing::warn!(user_id = %id, email = %stored, normal, "another account holds this address's normal spelling; left as it is");
                out.left += 1;
            }
            Err(e) => return Err(e),
        }
    }
    db.write(move |c| c.execute("INSERT INTO emails_normalised (at) VALUES ($1)", &[&now]))
        .await?;
    Ok(out)
}

/// [`normalise_stored`] once the database is ready, retried while it is
/// unavailable.
pub async fn normalise_when_ready(db: Db, clock: Clock, mut shutdown: Shutdown) {
    db.wait_ready().await;
    loop {
        match normalise_stored(&db, clock.now()).await {
            Ok(n) => {
                if n != Normalised::default() {
                    tracing::info!(
                        rewritten = n.rewritten,
                        left = n.left,
                        "stored e-mail addresses normalised"
                    );
                }
                return;
            }
            Err(e) if e.kind() == StoreErrorKind::Unavailable => {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.wait() => return,
                }
            }
            Err(e) => {
                tracing::warn!(error = %store::report(&e), "cannot normalise the stored e-mail addresses");
                return;
            }
        }
    }
}
