//! Throw-away PostgreSQL schemas: a fresh, empty "database" for a drill or a
//! test on a server that may hold other data, dropped when the value is.

use crate::error::StoreError;

/// A schema that exists for as long as this value does (unless kept).
pub struct ScratchSchema {
    /// Connection URL whose `search_path` is the schema.
    pub url: String,
    /// The schema's name.
    pub name: String,
    base: String,
    keep: bool,
}

impl ScratchSchema {
    /// Creates the schema `{prefix}_{pid}_{nanos}_{n}` on the server at `base`.
    pub async fn create(base: &str, prefix: &str) -> Result<ScratchSchema, StoreError> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let client = connect(base).await?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "{prefix}_{}_{nanos}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        client
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .await?;
        let sep = if base.contains('?') { '&' } else { '?' };
        Ok(ScratchSchema {
            url: format!("{base}{sep}options=-csearch_path%3D{name}"),
            name,
            base: base.to_owned(),
            keep: false,
        })
    }

    /// Empties the schema: every table in it is dropped (a database lost).
    pub async fn wipe(&self) -> Result<(), StoreError> {
        let client = connect(&self.base).await?;
        client
            .batch_execute(&format!(
                "DROP SCHEMA {0} CASCADE; CREATE SCHEMA {0}",
                self.name
            ))
            .await?;
        Ok(())
    }

    /// Leaves the schema in place when this value is dropped.
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

async fn connect(url: &str) -> Result<tokio_postgres::Client, StoreError> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

impl Drop for ScratchSchema {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        let (url, name) = (self.base.clone(), self.name.clone());
        // Drop may run outside a runtime, or inside one that must not block:
        // use a small runtime of our own on a thread of our own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let client = connect(&url).await.ok()?;
                // A pool may still hold a transaction in the schema, and its
                // runtime may be the very one blocked in this drop: rather
                // than wait forever, end those sessions and drop again.
                let drop_sql =
                    format!("SET lock_timeout = '500ms'; DROP SCHEMA IF EXISTS {name} CASCADE");
                if client.batch_execute(&drop_sql).await.is_ok() {
                    return Some(());
                }
                client
                    .execute(
                        "SELECT pg_terminate_backend(l.pid) FROM pg_locks l \
                         JOIN pg_class c ON c.oid = l.relation \
                         JOIN pg_namespace n ON n.oid = c.relnamespace \
                         WHERE n.nspname = $1 AND l.pid <> pg_backend_pid()",
                        &[&name],
                    )
                    .await
                    .ok()?;
                client.batch_execute(&drop_sql).await.ok()
            })
        })
        .join();
    }
}
