//! The connection interface service queries are written against.

use crate::error::StoreError;
use crate::value::{FromValue, ToValue, Value};

/// One row of a result, read by column position.
#[derive(Debug, Clone)]
pub struct Row(pub(crate) Vec<Value>);

impl Row {
    /// The value at column `idx` converted to `T`.
    pub fn get<T: FromValue>(&self, idx: usize) -> Result<T, StoreError> {
        let value = self.0.get(idx).ok_or_else(|| {
            StoreError::new(crate::StoreErrorKind::Decode, format!("no column {idx}"))
        })?;
        T::from_value(value)
    }

    /// Every column, in order.
    pub fn values(&self) -> &[Value] {
        &self.0
    }
}

/// Which database engine a connection talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A connection inside a transaction. SQL uses `$1`, `$2`, … placeholders on
/// every backend. A query that reads a row in order to change it ends with
/// `FOR UPDATE`: PostgreSQL locks the row (its transactions run concurrently);
/// SQLite drops the clause (its one writer already runs them one at a time).
pub trait Conn {
    /// Runs a statement and returns how many rows it changed.
    fn execute(&mut self, sql: &str, params: &[&dyn ToValue]) -> Result<u64, StoreError>;

    /// Runs a query and returns every row.
    fn query(&mut self, sql: &str, params: &[&dyn ToValue]) -> Result<Vec<Row>, StoreError>;

    /// Runs a query expected to return at most one row.
    fn query_opt(&mut self, sql: &str, params: &[&dyn ToValue]) -> Result<Option<Row>, StoreError> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    /// Runs several statements separated by `;` (migrations).
    fn execute_batch(&mut self, sql: &str) -> Result<(), StoreError>;

    /// The engine behind this connection, for the rare statement that must
    /// differ (an advisory lock, say). Queries themselves are portable.
    fn backend(&self) -> Backend;
}
