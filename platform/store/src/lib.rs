//! Backend-neutral SQL store shared by every service.
//!
//! Service code writes its queries once, as plain SQL with `$1`-style
//! placeholders, inside synchronous transaction closures over [`Conn`]. The
//! SQLite backend runs every closure on one dedicated thread that owns the
//! connection (no per-statement thread hop, prepared statements cached), which
//! is what makes the embedded mode fast; the PostgreSQL backend runs the same
//! closures on a blocking thread over a pooled connection.

mod conn;
mod error;
mod migrate;
mod postgres;
pub mod scratch;
mod sqlite;
mod value;

#[cfg(feature = "testing")]
pub mod testing;

pub use conn::{Backend, Conn, Row};
pub use error::{BoxError, StoreError, StoreErrorKind, report};
pub use migrate::Migration;
pub use value::{FromValue, ToValue, Value};

use std::path::Path;

/// Creates `dir` and its missing parents, readable by their owner only
/// (0700: the data directory holds the databases and the session key).
/// Directories that exist already are left as they are.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// A service's database: cheap to clone, shared by its handlers and tasks.
#[derive(Clone)]
pub struct Db {
    backend: Engine,
    /// `Some(reason)` while the schema is not ready (migrations pending).
    not_ready: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    /// Transactions submitted and not yet finished (running or queued).
    in_flight: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Transactions started since the handle was opened.
    started: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Set when a transaction met a storage error (disk full, read-only);
    /// cleared when [`Db::ping`]'s probe write succeeds again.
    cannot_write: std::sync::Arc<std::sync::atomic::AtomicBool>,
    connections: usize,
}

/// How busy a database handle is, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DbStats {
    /// Connections (threads) this handle runs transactions on.
    pub connections: usize,
    /// Transactions running or waiting for a connection.
    pub in_flight: usize,
    /// Transactions started since the handle was opened (reads included).
    pub transactions: u64,
    /// `COMMIT`s sent to the engine. On SQLite, closures that queued up
    /// together share one (group commit), so this can be far below
    /// `transactions` under load; on PostgreSQL every transaction is its own.
    pub commits: u64,
}

/// Counts a transaction as in flight until dropped (also on panic).
struct InFlight(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

#[derive(Clone)]
enum Engine {
    Sqlite(sqlite::SqliteDb),
    Postgres(postgres::PgDb),
}

impl Db {
    /// Opens (creating if needed) the SQLite database at `path` and applies
    /// `migrations` that have not run yet.
    pub async fn open_sqlite(
        path: &Path,
        migrations: &'static [Migration],
    ) -> Result<Db, StoreError> {
        let backend = Engine::Sqlite(sqlite::SqliteDb::open(path.to_path_buf()).await?);
        let db = Db {
            backend,
            not_ready: Default::default(),
            in_flight: Default::default(),
            started: Default::default(),
            cannot_write: Default::default(),
            connections: 1,
        };
        db.migrate(migrations).await?;
        Ok(db)
    }

    /// Connects to PostgreSQL at `url` (`postgres://user@host/db`) with a
    /// pool of at most `max_connections`, and applies `migrations`.
    pub async fn open_postgres(
        url: &str,
        max_connections: usize,
        migrations: &'static [Migration],
    ) -> Result<Db, StoreError> {
        let db = Db::postgres_lazy(url, max_connections)?;
        db.migrate(migrations).await?;
        Ok(db)
    }

    /// A PostgreSQL handle that connects on first use and runs no
    /// migrations (call [`Db::migrate`] once the database is reachable).
    pub fn postgres_lazy(url: &str, max_connections: usize) -> Result<Db, StoreError> {
        Ok(Db {
            backend: Engine::Postgres(postgres::PgDb::new(url, max_connections)?),
            not_ready: Default::default(),
            in_flight: Default::default(),
            started: Default::default(),
            cannot_write: Default::default(),
            connections: max_connections.max(1),
        })
    }

    /// Returns at once and migrates in the background, retrying with
    /// back-off while PostgreSQL is unreachable. Until the migrations have
    /// run, every transaction fails as unavailable with the reason, so a
    /// service can start (and report not-ready) before its database is up.
    pub fn open_postgres_in_background(
        url: &str,
        max_connections: usize,
        migrations: &'static [Migration],
    ) -> Result<Db, StoreError> {
        let db = Db::postgres_lazy(url, max_connections)?;
        db.set_not_ready(Some("migrations have not run yet".into()));
        let background = db.clone();
        tokio::spawn(async move {
            let mut wait = std::time::Duration::from_millis(200);
            loop {
                match background.migrate_now(migrations).await {
                    Ok(()) => {
                        background.set_not_ready(None);
                        tracing::info!("database ready");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "database not ready");
                        background.set_not_ready(Some(format!("database not ready: {e}")));
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(std::time::Duration::from_secs(5));
                    }
                }
            }
        });
        Ok(db)
    }

    /// Resolves once the schema is ready (at once unless migrations are
    /// still pending in the background), so background tasks start working
    /// when their transactions can succeed instead of failing noisily.
    pub async fn wait_ready(&self) {
        while self
            .not_ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
        {
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    }

    fn set_not_ready(&self, reason: Option<String>) {
        *self.not_ready.lock().unwrap_or_else(|e| e.into_inner()) = reason;
    }

    pub fn backend(&self) -> Backend {
        match self.backend {
            Engine::Sqlite(_) => Backend::Sqlite,
            Engine::Postgres(_) => Backend::Postgres,
        }
    }

    /// Runs `f` inside one transaction: committed when it returns `Ok`, rolled
    /// back when it returns `Err` (or panics). On SQLite the transaction may
    /// be shared with other callers' closures (group commit), each in a
    /// savepoint of its own: what `f` did stands or falls by its own result,
    /// and this returns only once it is committed.
    pub async fn write<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&mut dyn Conn) -> Result<T, E> + Send + 'static,
    {
        if let Some(reason) = self
            .not_ready
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            return Err(StoreError::new(StoreErrorKind::Unavailable, reason).into());
        }
        self.run(f).await
    }

    /// Connections and transactions in flight.
    pub fn stats(&self) -> DbStats {
        DbStats {
            connections: self.connections,
            in_flight: self.in_flight.load(std::sync::atomic::Ordering::Relaxed),
            transactions: self.started.load(std::sync::atomic::Ordering::Relaxed),
            commits: match &self.backend {
                Engine::Sqlite(db) => db.commits(),
                Engine::Postgres(_) => self.started.load(std::sync::atomic::Ordering::Relaxed),
            },
        }
    }

    async fn run<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&mut dyn Conn) -> Result<T, E> + Send + 'static,
    {
        self.in_flight
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.started
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let _in_flight = InFlight(self.in_flight.clone());
        let (result, storage_failed) = match &self.backend {
            Engine::Sqlite(db) => db.transaction(f).await,
            Engine::Postgres(db) => db.transaction(f).await,
        };
        if storage_failed {
            self.cannot_write
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        result
    }

    /// Runs read-only queries; `f` sees one consistent snapshot.
    pub async fn read<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&mut dyn Conn) -> Result<T, E> + Send + 'static,
    {
        // A read is a transaction that changes nothing; on SQLite's single
        // connection it costs the same.
        self.write(f).await
    }

    /// The readiness check: a cheap round trip — and, once a transaction
    /// has met a storage error (disk full, read-only), a small write, until
    /// one succeeds again: the database is not ready while it cannot write,
    /// and is again by itself when space returns.
    pub async fn ping(&self) -> Result<(), StoreError> {
        if !self.cannot_write.load(std::sync::atomic::Ordering::Relaxed) {
            return self.read(|c| c.query("SELECT 1", &[]).map(|_| ())).await;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let probe = self
            .write(move |c| {
                c.execute(
                    "CREATE TABLE IF NOT EXISTS store_write_probe (id BIGINT PRIMARY KEY, at BIGINT NOT NULL)",
                    &[],
                )?;
                c.execute(
                    "INSERT INTO store_write_probe (id, at) VALUES (1, $1)
                     ON CONFLICT (id) DO UPDATE SET at = excluded.at",
                    &[&now],
                )
            })
            .await;
        match probe {
            Ok(_) => {
                self.cannot_write
                    .store(false, std::sync::atomic::Ordering::Relaxed);
                tracing::info!("the database can write again");
                Ok(())
            }
            Err(e) => Err(StoreError::caused_by(
                e.kind(),
                "the database cannot write (disk full or read-only?)",
                e,
            )),
        }
    }

    /// Applies the `migrations` that have not run yet.
    pub async fn migrate(&self, migrations: &'static [Migration]) -> Result<(), StoreError> {
        self.migrate_now(migrations).await
    }

    async fn migrate_now(&self, migrations: &'static [Migration]) -> Result<(), StoreError> {
        self.run(move |c| migrate::apply(c, migrations)).await
    }
}
