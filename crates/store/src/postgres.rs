//! PostgreSQL backend: a pool of async `tokio-postgres` connections, driven
//! from a blocking thread so the same synchronous transaction closures run
//! here as on SQLite. One closure = one transaction on one pooled connection;
//! prepared statements are cached per connection.

use std::error::Error as StdError;

use bytes::BytesMut;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

use crate::conn::{Backend, Conn, Row};
use crate::error::{StoreError, StoreErrorKind};
use crate::value::{ToValue, Value};

#[derive(Clone)]
pub(crate) struct PgDb {
    pool: Pool,
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        let kind = match e.code() {
            Some(code) if *code == SqlState::UNIQUE_VIOLATION => StoreErrorKind::UniqueViolation,
            Some(code)
                if code.code().starts_with("08")
                    || *code == SqlState::ADMIN_SHUTDOWN
                    || *code == SqlState::CANNOT_CONNECT_NOW =>
            {
                StoreErrorKind::Unavailable
            }
            Some(_) => StoreErrorKind::Other,
            // No SQLSTATE: the connection itself failed.
            None => StoreErrorKind::Unavailable,
        };
        // `Display` of a db error is only "db error"; the source has the text.
        let message = match e.source() {
            Some(source) => format!("{e}: {source}"),
            None => e.to_string(),
        };
        StoreError::new(kind, message)
    }
}

impl PgDb {
    /// Connects lazily: the pool opens connections as transactions need them,
    /// so a service starts (and reports not-ready) while PostgreSQL is down.
    pub(crate) fn new(url: &str, max_connections: usize) -> Result<PgDb, StoreError> {
        let config: tokio_postgres::Config = url.parse().map_err(|e| {
            StoreError::new(StoreErrorKind::Other, format!("bad PostgreSQL URL: {e}"))
        })?;
        let manager = Manager::from_config(
            config,
            tokio_postgres::NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(max_connections)
            .wait_timeout(Some(std::time::Duration::from_secs(10)))
            .create_timeout(Some(std::time::Duration::from_secs(5)))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| {
                StoreError::new(StoreErrorKind::Other, format!("cannot build pool: {e}"))
            })?;
        Ok(PgDb { pool })
    }

    pub(crate) async fn transaction<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&mut dyn Conn) -> Result<T, E> + Send + 'static,
    {
        let mut client = self.pool.get().await.map_err(|e| {
            StoreError::new(
                StoreErrorKind::Unavailable,
                format!("no database connection: {e}"),
            )
        })?;
        let handle = tokio::runtime::Handle::current();
        let job = tokio::task::spawn_blocking(move || -> Result<T, E> {
            let tx = handle
                .block_on(client.transaction())
                .map_err(StoreError::from)?;
            let mut c = PgConn {
                tx: &tx,
                handle: &handle,
            };
            let value = f(&mut c)?; // dropping `tx` on error rolls back
            handle.block_on(tx.commit()).map_err(StoreError::from)?;
            Ok(value)
        });
        match job.await {
            Ok(result) => result,
            Err(_) => Err(StoreError::new(StoreErrorKind::Other, "transaction panicked").into()),
        }
    }
}

struct PgConn<'a> {
    tx: &'a deadpool_postgres::Transaction<'a>,
    handle: &'a tokio::runtime::Handle,
}

/// A parameter that adapts to whatever type PostgreSQL inferred for its
/// placeholder (an integer may bind to `int2`/`int4`/`int8`).
#[derive(Debug)]
struct PgParam(Value);

impl ToSql for PgParam {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        match &self.0 {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(i) => match *ty {
                Type::INT8 => i.to_sql(ty, out),
                Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(*i)?.to_sql(ty, out),
                Type::TEXT | Type::VARCHAR => i.to_string().to_sql(ty, out),
                _ => Err(format!("cannot bind an integer to a {ty} parameter").into()),
            },
            Value::Text(s) => s.as_str().to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

fn bind(params: &[&dyn ToValue]) -> Vec<PgParam> {
    params.iter().map(|p| PgParam(p.to_value())).collect()
}

fn refs(params: &[PgParam]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

fn read_row(row: &tokio_postgres::Row) -> Result<Row, StoreError> {
    let mut values = Vec::with_capacity(row.len());
    for (i, col) in row.columns().iter().enumerate() {
        let v = match *col.type_() {
            Type::INT8 => row.try_get::<_, Option<i64>>(i)?.map(Value::Int),
            Type::INT4 => row
                .try_get::<_, Option<i32>>(i)?
                .map(|v| Value::Int(v.into())),
            Type::INT2 => row
                .try_get::<_, Option<i16>>(i)?
                .map(|v| Value::Int(v.into())),
            Type::BOOL => row
                .try_get::<_, Option<bool>>(i)?
                .map(|v| Value::Int(v.into())),
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => {
                row.try_get::<_, Option<String>>(i)?.map(Value::Text)
            }
            ref other => {
                return Err(StoreError::new(
                    StoreErrorKind::Decode,
                    format!("unsupported column type {other} ({})", col.name()),
                ));
            }
        };
        values.push(v.unwrap_or(Value::Null));
    }
    Ok(Row(values))
}

impl Conn for PgConn<'_> {
    fn execute(&mut self, sql: &str, params: &[&dyn ToValue]) -> Result<u64, StoreError> {
        let stmt = self.handle.block_on(self.tx.prepare_cached(sql))?;
        let bound = bind(params);
        Ok(self
            .handle
            .block_on(self.tx.execute(&stmt, &refs(&bound)))?)
    }

    fn query(&mut self, sql: &str, params: &[&dyn ToValue]) -> Result<Vec<Row>, StoreError> {
        let stmt = self.handle.block_on(self.tx.prepare_cached(sql))?;
        let bound = bind(params);
        let rows = self.handle.block_on(self.tx.query(&stmt, &refs(&bound)))?;
        rows.iter().map(read_row).collect()
    }

    fn execute_batch(&mut self, sql: &str) -> Result<(), StoreError> {
        Ok(self.handle.block_on(self.tx.batch_execute(sql))?)
    }

    fn backend(&self) -> Backend {
        Backend::Postgres
    }
}
