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
mod sqlite;
mod value;

#[cfg(feature = "testing")]
pub mod testing;

pub use conn::{Backend, Conn, Row};
pub use error::{StoreError, StoreErrorKind};
pub use migrate::Migration;
pub use value::{FromValue, ToValue, Value};

use std::path::Path;

/// A service's database: cheap to clone, shared by its handlers and tasks.
#[derive(Clone)]
pub struct Db {
    backend: Engine,
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
        let db = Db { backend };
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
        })
    }

    pub fn backend(&self) -> Backend {
        match self.backend {
            Engine::Sqlite(_) => Backend::Sqlite,
            Engine::Postgres(_) => Backend::Postgres,
        }
    }

    /// Runs `f` inside one transaction: committed when it returns `Ok`, rolled
    /// back when it returns `Err` (or panics).
    pub async fn write<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&mut dyn Conn) -> Result<T, E> + Send + 'static,
    {
        match &self.backend {
            Engine::Sqlite(db) => db.transaction(f).await,
            Engine::Postgres(db) => db.transaction(f).await,
        }
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

    /// Cheap round trip used by readiness checks.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.read(|c| c.query("SELECT 1", &[]).map(|_| ())).await
    }

    /// Applies the `migrations` that have not run yet.
    pub async fn migrate(&self, migrations: &'static [Migration]) -> Result<(), StoreError> {
        self.write(move |c| migrate::apply(c, migrations)).await
    }
}
