//! Backend-neutral SQL store shared by every service.
//!
//! Service code writes its queries once, as plain SQL with `$1`-style
//! placeholders, inside synchronous transaction closures over [`Conn`]. The
//! SQLite backend runs every closure on one dedicated thread that owns the
//! connection (no per-statement thread hop, prepared statements cached), which
//! is what makes the embedded mode fast; a PostgreSQL backend implements the
//! same [`Conn`] so the same closures run there unchanged.

mod conn;
mod error;
mod migrate;
mod sqlite;
mod value;

pub use conn::{Conn, Row};
pub use error::{StoreError, StoreErrorKind};
pub use migrate::Migration;
pub use value::{FromValue, ToValue, Value};

use std::path::Path;

/// A service's database: cheap to clone, shared by its handlers and tasks.
#[derive(Clone)]
pub struct Db {
    backend: sqlite::SqliteDb,
}

impl Db {
    /// Opens (creating if needed) the SQLite database at `path` and applies
    /// `migrations` that have not run yet.
    pub async fn open_sqlite(
        path: &Path,
        migrations: &'static [Migration],
    ) -> Result<Db, StoreError> {
        let backend = sqlite::SqliteDb::open(path.to_path_buf()).await?;
        let db = Db { backend };
        db.migrate(migrations).await?;
        Ok(db)
    }

    /// Runs `f` inside one transaction: committed when it returns `Ok`, rolled
    /// back when it returns `Err` (or panics).
    pub async fn write<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&mut dyn Conn) -> Result<T, E> + Send + 'static,
    {
        self.backend.transaction(f).await
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
        self.backend.transaction(f).await
    }

    /// Cheap round trip used by readiness checks.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.read(|c| c.query("SELECT 1", &[]).map(|_| ())).await
    }

    async fn migrate(&self, migrations: &'static [Migration]) -> Result<(), StoreError> {
        self.write(move |c| migrate::apply(c, migrations)).await
    }
}
