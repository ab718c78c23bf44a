//! PostgreSQL backend: a fixed set of connections, each owned by a thread of
//! its own that runs a small single-threaded Tokio runtime driving just that
//! connection. A transaction closure is handed to a free connection thread
//! and runs there start to finish; each statement is a `block_on` on the
//! thread's own runtime, so a round trip costs no hand-off between threads
//! (only the transaction as a whole does: one in, one out). This is the
//! SQLite backend's model, once per connection. Prepared statements are
//! cached per connection.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use bytes::BytesMut;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

use crate::conn::{Backend, Conn, Row};
use crate::error::{StoreError, StoreErrorKind};
use crate::value::{ToValue, Value};

/// A transaction waiting for a connection thread.
type Job = Box<dyn FnOnce(&mut Worker) + Send>;

#[derive(Clone)]
pub(crate) struct PgDb {
    jobs: mpsc::Sender<Job>,
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
            // Insufficient resources (disk full, out of memory), a
            // read-only server, an I/O error.
            Some(code)
                if code.code().starts_with("53") && *code != SqlState::TOO_MANY_CONNECTIONS
                    || *code == SqlState::READ_ONLY_SQL_TRANSACTION
                    || *code == SqlState::IO_ERROR =>
            {
                StoreErrorKind::Storage
            }
            Some(code) if *code == SqlState::TOO_MANY_CONNECTIONS => StoreErrorKind::Unavailable,
            Some(_) => StoreErrorKind::Other,
            // No SQLSTATE: the connection itself failed.
            None => StoreErrorKind::Unavailable,
        };
        // The error is the source (its own `Display` is only "db error"; its
        // source has the server's text, and the chain shows both).
        StoreError::caused_by(kind, "PostgreSQL failed", e)
    }
}

impl PgDb {
    /// Starts `max_connections` connection threads. They connect lazily (and
    /// reconnect after a failure) when a transaction needs them, so a service
    /// starts, and reports not-ready, while PostgreSQL is down.
    pub(crate) fn new(url: &str, max_connections: usize) -> Result<PgDb, StoreError> {
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::caused_by(StoreErrorKind::Other, "bad PostgreSQL URL", e))?;
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..max_connections.max(1) {
            let (config, queue) = (config.clone(), queue.clone());
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| {
                    StoreError::caused_by(
                        StoreErrorKind::Other,
                        "cannot start a connection thread",
                        e,
                    )
                })?;
            std::thread::Builder::new()
                .name(format!("postgres-{i}"))
                .spawn(move || {
                    let mut worker = Worker {
                        config,
                        rt,
                        client: None,
                        statements: HashMap::new(),
                    };
                    loop {
                        // Ends when every sender (every clone of the Db) is gone.
                        let job = match queue.lock().unwrap_or_else(|e| e.into_inner()).recv() {
                            Ok(job) => job,
                            Err(_) => return,
                        };
                        let run = std::panic::AssertUnwindSafe(|| job(&mut worker));
                        if std::panic::catch_unwind(run).is_err() {
                            // The transaction's state is unknown: start afresh.
                            worker.reset();
                        }
                    }
                })
                .map_err(|e| {
                    StoreError::caused_by(
                        StoreErrorKind::Other,
                        "cannot start a connection thread",
                        e,
                    )
                })?;
        }
        Ok(PgDb { jobs })
    }

    /// Runs `f` in a transaction; also says whether it met a storage error.
    pub(crate) async fn transaction<T, E, F>(&self, f: F) -> (Result<T, E>, bool)
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&mut dyn Conn) -> Result<T, E> + Send + 'static,
    {
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |worker: &mut Worker| {
            crate::error::take_storage_failure();
            let result = worker.transaction(f);
            let _ = done.send((result, crate::error::take_storage_failure()));
        });
        if self.jobs.send(job).is_err() {
            return (
                Err(StoreError::new(StoreErrorKind::Other, "database closed").into()),
                false,
            );
        }
        match result.await {
            Ok(done) => done,
            Err(_) => (
                Err(StoreError::new(StoreErrorKind::Other, "transaction panicked").into()),
                false,
            ),
        }
    }
}

/// One connection and the thread-local runtime that drives it.
struct Worker {
    config: tokio_postgres::Config,
    rt: tokio::runtime::Runtime,
    client: Option<tokio_postgres::Client>,
    statements: HashMap<String, tokio_postgres::Statement>,
}

impl Worker {
    fn reset(&mut self) {
        self.client = None;
        self.statements.clear();
    }

    fn connect(&mut self) -> Result<(), StoreError> {
        if self.client.as_ref().is_some_and(|c| !c.is_closed()) {
            return Ok(());
        }
        self.reset();
        let connecting = self.config.connect(tokio_postgres::NoTls);
        let (client, connection) = self
            .rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(5), connecting).await })
            .map_err(|_| {
                StoreError::new(
                    StoreErrorKind::Unavailable,
                    "connecting to PostgreSQL timed out",
                )
            })??;
        // Polled whenever this thread is inside `block_on`, i.e. while one of
        // its statements waits for an answer.
        self.rt.spawn(connection);
        self.client = Some(client);
        Ok(())
    }

    fn transaction<T, E, F>(&mut self, f: F) -> Result<T, E>
    where
        E: From<StoreError>,
        F: FnOnce(&mut dyn Conn) -> Result<T, E>,
    {
        self.connect()?;
        let result = self.run(f);
        if self.client.as_ref().is_some_and(|c| c.is_closed()) {
            self.reset();
        }
        result
    }

    fn run<T, E, F>(&mut self, f: F) -> Result<T, E>
    where
        E: From<StoreError>,
        F: FnOnce(&mut dyn Conn) -> Result<T, E>,
    {
        let Worker {
            rt,
            client,
            statements,
            ..
        } = self;
        let Some(client) = client.as_ref() else {
            return Err(StoreError::new(StoreErrorKind::Unavailable, "not connected").into());
        };
        let mut conn = PgConn {
            client,
            rt,
            statements,
            begun: false,
        };
        let result = f(&mut conn);
        // A closure that ran no statement had no transaction to end.
        if !conn.begun {
            return result;
        }
        match result {
            Ok(value) => {
                rt.block_on(client.batch_execute("COMMIT"))
                    .map_err(StoreError::from)?;
                Ok(value)
            }
            Err(e) => {
                let _ = rt.block_on(client.batch_execute("ROLLBACK"));
                Err(e)
            }
        }
    }
}

struct PgConn<'a> {
    client: &'a tokio_postgres::Client,
    rt: &'a tokio::runtime::Runtime,
    statements: &'a mut HashMap<String, tokio_postgres::Statement>,
    /// Whether `BEGIN` has been sent. It goes out with the transaction's
    /// first statement, in the same write (pipelined): one round trip, and
    /// one wake-up of this thread, fewer per transaction.
    begun: bool,
}

impl PgConn<'_> {
    fn statement(&mut self, sql: &str) -> Result<tokio_postgres::Statement, StoreError> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.rt.block_on(self.client.prepare(sql))?;
        self.statements.insert(sql.to_owned(), s.clone());
        Ok(s)
    }

    /// Runs `statement` — after `BEGIN` when it is the transaction's first,
    /// both sent before either answer is awaited. tokio-postgres sends a
    /// request when its future is first polled and answers in order, so
    /// `BEGIN` is polled first (`biased`: a fair join could start with the
    /// other).
    fn in_transaction<T, F>(&mut self, statement: F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, tokio_postgres::Error>>,
    {
        if std::mem::replace(&mut self.begun, true) {
            return Ok(self.rt.block_on(statement)?);
        }
        let begin = self.client.batch_execute("BEGIN");
        let (begun, done) = self
            .rt
            .block_on(async { tokio::join!(biased; begin, statement) });
        begun?;
        Ok(done?)
    }
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
        let stmt = self.statement(sql)?;
        let bound = bind(params);
        let client = self.client;
        self.in_transaction(client.execute(&stmt, &refs(&bound)))
    }

    fn query(&mut self, sql: &str, params: &[&dyn ToValue]) -> Result<Vec<Row>, StoreError> {
        let stmt = self.statement(sql)?;
        let bound = bind(params);
        let client = self.client;
        let rows = self.in_transaction(client.query(&stmt, &refs(&bound)))?;
        rows.iter().map(read_row).collect()
    }

    fn execute_batch(&mut self, sql: &str) -> Result<(), StoreError> {
        let client = self.client;
        self.in_transaction(client.batch_execute(sql))
    }

    fn backend(&self) -> Backend {
        Backend::Postgres
    }
}
