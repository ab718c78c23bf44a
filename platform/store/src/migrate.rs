//! Schema migrations: numbered SQL scripts applied once, in order.

use crate::conn::{Backend, Conn};
use crate::error::StoreError;

/// One schema change. The SQL must be portable between SQLite and PostgreSQL
/// (TEXT, BIGINT, INTEGER columns; no backend-specific types).
#[derive(Debug)]
pub struct Migration {
    pub version: i64,
    pub description: &'static str,
    pub sql: &'static str,
}

pub(crate) fn apply(c: &mut dyn Conn, migrations: &[Migration]) -> Result<(), StoreError> {
    if c.backend() == Backend::Postgres {
        // Replicas starting together take turns; the lock ends with the transaction.
        c.execute("SELECT pg_advisory_xact_lock(4242424242)", &[])?;
    }
    c.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version BIGINT PRIMARY KEY,
            description TEXT NOT NULL
        )",
    )?;
    let applied: Vec<i64> = c
        .query("SELECT version FROM schema_migrations", &[])?
        .iter()
        .map(|r| r.get(0))
        .collect::<Result<_, _>>()?;
    for m in migrations {
        if applied.contains(&m.version) {
            continue;
        }
        tracing::info!(
            version = m.version,
            description = m.description,
            "applying migration"
        );
        c.execute_batch(m.sql)?;
        c.execute(
            "INSERT INTO schema_migrations (version, description) VALUES ($1, $2)",
            &[&m.version, &m.description],
        )?;
    }
    Ok(())
}
