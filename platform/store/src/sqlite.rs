//! SQLite backend: one connection owned by one dedicated thread.
//!
//! Every transaction is a closure sent to that thread, so a whole transaction
//! costs one hand-off instead of one per statement, and prepared statements are
//! cached on the connection. SQLite allows one writer at a time anyway, so one
//! connection loses no concurrency for writes.
//!
//! **Group commit.** Closures that queue up while the thread is busy run
//! together in one transaction, each inside a savepoint of its own: a closure
//! that fails (or panics) rolls back only its savepoint and its caller gets its
//! own error, the others keep their changes, and every caller is answered only
//! after the shared `COMMIT` — the same guarantee as a transaction each, with
//! one commit (one WAL append of the pages they share) for the group.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};

use rusqlite::types::{ToSqlOutput, ValueRef};
use tokio::sync::oneshot;

use crate::conn::{Backend, Conn, Row};
use crate::error::{StoreError, StoreErrorKind};
use crate::value::{ToValue, Value};

/// The most closures committed together: bounds how long the first of a
/// group waits for the others (each is a few statements).
const MAX_GROUP: usize = 64;

/// Whether callers wait for the database thread from a blocking task (see
/// `testing::hold_paused_clock`): Tokio does not auto-advance a paused
/// clock while a blocking task runs, so a test on virtual time cannot see
/// its timers fire while a query is still in flight. Only in builds with
/// the `testing` feature (test builds): a release binary has no such switch.
#[cfg(feature = "testing")]
pub(crate) static HOLD_PAUSED_CLOCK: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

#[derive(Clone)]
pub(crate) struct SqliteDb {
    jobs: mpsc::Sender<Box<dyn Queued>>,
    /// `COMMIT`s the thread has made (a group counts once).
    commits: Arc<AtomicU64>,
}

/// One caller's closure, queued for the database thread.
trait Queued: Send {
    /// Runs the closure inside the open transaction and keeps its result;
    /// says whether it succeeded (its changes are to stay).
    fn run(&mut self, conn: &rusqlite::Connection) -> bool;
    /// Answers the caller: with the kept result, or with `failed` when the
    /// transaction its changes were in did not commit.
    fn answer(self: Box<Self>, failed: Option<&StoreError>);
}

struct Call<T, E, F> {
    f: Option<F>,
    result: Option<Result<T, E>>,
    storage_failed: bool,
    done: oneshot::Sender<(Result<T, E>, bool)>,
}

impl<T, E, F> Queued for Call<T, E, F>
where
    T: Send + 'static,
    E: From<StoreError> + Send + 'static,
    F: FnOnce(&mut dyn Conn) -> Result<T, E> + Send + 'static,
{
    fn run(&mut self, conn: &rusqlite::Connection) -> bool {
        let Some(f) = self.f.take() else {
            return false;
        };
        crate::error::take_storage_failure();
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut SqliteConn { conn })))
                .unwrap_or_else(|_| {
                    Err(StoreError::new(StoreErrorKind::Other, "transaction panicked").into())
                });
        self.storage_failed = crate::error::take_storage_failure();
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn answer(self: Box<Self>, failed: Option<&StoreError>) {
        let this = *self;
        let result = match (this.result, failed) {
            // Its own error stands: its changes were rolled back anyway.
            (Some(Err(e)), _) => Err(e),
            (Some(Ok(value)), None) => Ok(value),
            (_, Some(failed)) => Err(failed.replay().into()),
            (None, None) => {
                Err(StoreError::new(StoreErrorKind::Other, "transaction did not run").into())
            }
        };
        let storage_failed =
            this.storage_failed || failed.is_some_and(|e| e.kind() == StoreErrorKind::Storage);
        // The caller may have gone away (request cancelled); the
        // transaction's outcome stands either way.
        let _ = this.done.send((result, storage_failed));
    }
}

impl SqliteDb {
    pub(crate) async fn open(path: PathBuf) -> Result<SqliteDb, StoreError> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                crate::private_dir(dir).map_err(|e| {
                    StoreError::new(
                        StoreErrorKind::Unavailable,
                        format!("cannot create directory {}: {e}", dir.display()),
                    )
                })?;
            }
        }
        private_files(&path).map_err(|e| {
            StoreError::new(
                StoreErrorKind::Unavailable,
                format!("cannot create {}: {e}", path.display()),
            )
        })?;
        let (jobs, rx) = mpsc::channel::<Box<dyn Queued>>();
        let (ready_tx, ready_rx) = oneshot::channel();
        let commits = Arc::new(AtomicU64::new(0));
        let thread_commits = commits.clone();
        let name = format!(
            "sqlite-{}",
            path.file_stem().and_then(|s| s.to_str()).unwrap_or("db")
        );
        std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                let conn = match open_connection(&path) {
                    Ok(conn) => {
                        let _ = ready_tx.send(Ok(()));
                        conn
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                // Runs until every `SqliteDb` clone (and so every sender) is gone.
                let mut group = Vec::with_capacity(MAX_GROUP);
                while let Ok(first) = rx.recv() {
                    group.push(first);
                    while group.len() < MAX_GROUP {
                        match rx.try_recv() {
                            Ok(next) => group.push(next),
                            Err(_) => break,
                        }
                    }
                    run_group(&conn, &mut group, &thread_commits);
                }
            })
            .map_err(|e| {
                StoreError::caused_by(StoreErrorKind::Other, "cannot spawn the database thread", e)
            })?;
        ready_rx
            .await
            .map_err(|_| StoreError::new(StoreErrorKind::Other, "database thread exited"))??;
        Ok(SqliteDb { jobs, commits })
    }

    /// `COMMIT`s made so far (closures committed together count once).
    pub(crate) fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Runs `f` in a transaction (possibly shared with other callers' closures,
    /// each in a savepoint); also says whether it met a storage error.
    pub(crate) async fn transaction<T, E, F>(&self, f: F) -> (Result<T, E>, bool)
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&mut dyn Conn) -> Result<T, E> + Send + 'static,
    {
        let (done, done_rx) = oneshot::channel();
        let call = Call {
            f: Some(f),
            result: None,
            storage_failed: false,
            done,
        };
        if self.jobs.send(Box::new(call)).is_err() {
            return (
                Err(StoreError::new(StoreErrorKind::Unavailable, "database thread stopped").into()),
                false,
            );
        }
        #[cfg(feature = "testing")]
        let done = if HOLD_PAUSED_CLOCK.load(std::sync::atomic::Ordering::Relaxed) {
            tokio::task::spawn_blocking(move || done_rx.blocking_recv())
                .await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
        } else {
            done_rx.await
        };
        #[cfg(not(feature = "testing"))]
        let done = done_rx.await;
        match done {
            Ok(done) => done,
            // The database thread itself went away mid-transaction.
            Err(_) => (
                Err(StoreError::new(StoreErrorKind::Other, "database thread stopped").into()),
                false,
            ),
        }
    }
}

/// Runs the queued closures of `group` in as few transactions as it can
/// (one, unless SQLite itself rolls a transaction back, which it does on
/// some storage errors) and answers each caller after its commit.
fn run_group(conn: &rusqlite::Connection, group: &mut Vec<Box<dyn Queued>>, commits: &AtomicU64) {
    // A closure alone needs no savepoint: the transaction is its own.
    let alone = group.len() == 1;
    // Closures whose changes wait for the next COMMIT.
    let mut kept: Vec<Box<dyn Queued>> = Vec::new();
    for mut call in group.drain(..) {
        if conn.is_autocommit() {
            if let Err(e) = exec(conn, "BEGIN IMMEDIATE") {
                call.answer(Some(&e));
                continue;
            }
        }
        if !alone {
            if let Err(e) = exec(conn, "SAVEPOINT queued") {
                call.answer(Some(&e));
                continue;
            }
        }
        if call.run(conn) {
            match if alone {
                Ok(())
            } else {
                exec(conn, "RELEASE queued")
            } {
                Ok(()) => kept.push(call),
                Err(e) => {
                    abandon(conn, &mut kept, &e);
                    call.answer(Some(&e));
                }
            }
            continue;
        }
        // The closure's own error: undo its changes only.
        if alone {
            rollback(conn);
        } else if conn.is_autocommit() {
            // SQLite rolled the whole transaction back (it does on some
            // storage errors): the closures before this one lost their
            // changes too, and are told so.
            let lost = StoreError::new(
                StoreErrorKind::Storage,
                "the database rolled the transaction back",
            );
            abandon(conn, &mut kept, &lost);
        } else if let Err(e) =
            exec(conn, "ROLLBACK TO queued").and_then(|()| exec(conn, "RELEASE queued"))
        {
            // Cannot isolate this closure's changes: none of the group's stand.
            abandon(conn, &mut kept, &e);
        }
        call.answer(None);
    }
    if conn.is_autocommit() {
        return;
    }
    match exec(conn, "COMMIT") {
        Ok(()) => {
            commits.fetch_add(1, Ordering::Relaxed);
            for call in kept {
                call.answer(None);
            }
        }
        Err(e) => abandon(conn, &mut kept, &e),
    }
}

/// Runs one statement through the connection's statement cache (the
/// transaction control statements run for every queued closure).
fn exec(conn: &rusqlite::Connection, sql: &str) -> Result<(), StoreError> {
    conn.prepare_cached(sql)?.execute([])?;
    Ok(())
}

/// Rolls the open transaction back and tells every closure kept for it
/// that its changes are gone.
fn abandon(conn: &rusqlite::Connection, kept: &mut Vec<Box<dyn Queued>>, why: &StoreError) {
    rollback(conn);
    for call in kept.drain(..) {
        call.answer(Some(why));
    }
}

/// Ends an open transaction without keeping anything (no-op if none is open).
fn rollback(conn: &rusqlite::Connection) {
    if !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
}

/// The database file, created readable by its owner only (it may hold
/// password hashes), and any it already has tightened to that. SQLite
/// gives the `-wal` and `-shm` files it creates the database file's mode.
fn private_files(path: &std::path::Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        for suffix in ["", "-wal", "-shm"] {
            let file = std::path::PathBuf::from(format!("{}{suffix}", path.display()));
            if file.exists() {
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))?;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

fn open_connection(path: &std::path::Path) -> Result<rusqlite::Connection, StoreError> {
    let conn = rusqlite::Connection::open(path)?;
    // WAL + NORMAL survives a process crash without losing committed
    // transactions; only an OS crash or power loss can drop the last ones.
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = NORMAL;
         PRAGMA foreign_keys = ON;
         PRAGMA busy_timeout = 5000;",
    )?;
    conn.set_prepared_statement_cache_capacity(256);
    Ok(conn)
}

struct SqliteConn<'a> {
    conn: &'a rusqlite::Connection,
}

struct Param(Value);

impl rusqlite::ToSql for Param {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match &self.0 {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Int(i) => ToSqlOutput::Borrowed(ValueRef::Integer(*i)),
            Value::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
        })
    }
}

fn params(params: &[&dyn ToValue]) -> Vec<Param> {
    params.iter().map(|p| Param(p.to_value())).collect()
}

/// Adapts portable SQL to SQLite: `$N` placeholders become `?N`, which binds
/// by explicit index (SQLite reads `$N` as a *named* parameter numbered by
/// first appearance, which breaks when `$2` appears before `$1`), and a
/// trailing `FOR UPDATE` (or `FOR UPDATE OF t, …`) is dropped (one writer
/// needs no row locks).
/// Runs `f` on `sql` as SQLite reads it ([`rewrite_placeholders`]),
/// rewritten once per statement text on this (the database's) thread: the
/// rewrite was 3 % of the all-in-one process's CPU under a purchase load,
/// redone for every statement. The cache is keyed by where the text is
/// (services pass their statements as `&'static str`) and checked against
/// the text itself, so a statement built at run time at a reused address
/// is rewritten afresh, never mistaken for another.
fn with_sqlite_text<T>(sql: &str, f: impl FnOnce(&str) -> T) -> T {
    /// Statements remembered at most; past it the cache starts over (only
    /// statements built at run time get there).
    const MOST: usize = 1024;
    type Rewritten = (Box<str>, Box<str>);
    thread_local! {
        static REWRITTEN: std::cell::RefCell<std::collections::HashMap<(usize, usize), Rewritten>> =
            std::cell::RefCell::new(std::collections::HashMap::new());
    }
    REWRITTEN.with(|cache| {
        let key = (sql.as_ptr() as usize, sql.len());
        if let Some((text, rewritten)) = cache.borrow().get(&key) {
            if **text == *sql {
                return f(rewritten);
            }
        }
        let rewritten: Box<str> = rewrite_placeholders(sql).into();
        let out = f(&rewritten);
        let mut cache = cache.borrow_mut();
        if cache.len() >= MOST {
            cache.clear();
        }
        cache.insert(key, (sql.into(), rewritten));
        out
    })
}

fn rewrite_placeholders(sql: &str) -> std::borrow::Cow<'_, str> {
    // Runs for every statement, so it works on bytes and copies runs
    // between placeholders: `$`, `'` and digits are ASCII, and UTF-8 never
    // uses ASCII bytes inside a multi-byte character, so every cut below
    // falls on a character boundary. (The char-by-char rewrite it replaces
    // was 3 % of the all-in-one process's CPU under a purchase load.)
    let sql = without_row_lock(sql);
    let bytes = sql.as_bytes();
    if !bytes.contains(&b'$') {
        return std::borrow::Cow::Borrowed(sql);
    }
    let mut out = String::with_capacity(sql.len());
    let mut copied = 0;
    let mut in_string = false;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\'' => in_string = !in_string,
            b'$' if !in_string && bytes.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                out.push_str(&sql[copied..i]);
                out.push('?');
                copied = i + 1;
            }
            _ => {}
        }
    }
    out.push_str(&sql[copied..]);
    std::borrow::Cow::Owned(out)
}

fn read_value(v: ValueRef<'_>) -> Result<Value, StoreError> {
    Ok(match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Int(i),
        ValueRef::Text(t) | ValueRef::Blob(t) => {
            Value::Text(String::from_utf8(t.to_vec()).map_err(|e| {
                StoreError::caused_by(StoreErrorKind::Decode, "text is not UTF-8", e)
            })?)
        }
        ValueRef::Real(r) => {
            return Err(StoreError::new(
                StoreErrorKind::Decode,
                format!("unexpected REAL column value {r}"),
            ));
        }
    })
}

/// Statements recorded (`testing::record_plans`): SQLite's `EXPLAIN QUERY
/// PLAN` of each distinct statement, the first time it runs, and the most
/// virtual-machine steps one run of it took since the last reset.
#[cfg(feature = "testing")]
pub(crate) static PLANS: std::sync::Mutex<
    Option<std::collections::BTreeMap<String, crate::testing::Plan>>,
> = std::sync::Mutex::new(None);

/// Whether [`PLANS`] records (checked before taking its lock).
#[cfg(feature = "testing")]
pub(crate) static RECORDING: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Records `sql`'s plan (the first time) and the steps its run took.
#[cfg(feature = "testing")]
fn record_plan(conn: &rusqlite::Connection, sql: &str, p: &[&dyn ToValue], steps: i32) {
    if !RECORDING.load(Ordering::Relaxed) {
        return;
    }
    let mut plans = PLANS.lock().unwrap_or_else(|e| e.into_inner());
    let Some(plans) = plans.as_mut() else {
        return;
    };
    if let Some(plan) = plans.get_mut(sql) {
        plan.steps = plan.steps.max(steps as u64);
        plan.runs += 1;
        return;
    }
    let explained = conn
        .prepare(&format!("EXPLAIN QUERY PLAN {}", rewrite_placeholders(sql)))
        .and_then(|mut stmt| {
            stmt.query_map(rusqlite::params_from_iter(params(p)), |row| {
                row.get::<_, String>(3)
            })?
            .collect::<Result<Vec<_>, _>>()
        });
    // Statements without a table to search (an INSERT's VALUES, DDL)
    // explain to nothing; they are recorded too, for their runs.
    if let Ok(lines) = explained {
        plans.insert(
            sql.to_owned(),
            crate::testing::Plan {
                lines,
                steps: steps as u64,
                runs: 1,
            },
        );
    }
}

/// The virtual-machine steps the statement took since this was last
/// asked (recorded in test builds only).
fn steps_taken(stmt: &rusqlite::Statement<'_>) -> i32 {
    #[cfg(feature = "testing")]
    return stmt.reset_status(rusqlite::StatementStatus::VmStep);
    #[cfg(not(feature = "testing"))]
    {
        let _ = stmt;
        0
    }
}

impl Conn for SqliteConn<'_> {
    fn execute(&mut self, sql: &str, p: &[&dyn ToValue]) -> Result<u64, StoreError> {
        let mut stmt = with_sqlite_text(sql, |sql| self.conn.prepare_cached(sql))?;
        let n = stmt.execute(rusqlite::params_from_iter(params(p)))?;
        let _steps = steps_taken(&stmt);
        #[cfg(feature = "testing")]
        record_plan(self.conn, sql, p, _steps);
        Ok(n as u64)
    }

    fn query(&mut self, sql: &str, p: &[&dyn ToValue]) -> Result<Vec<Row>, StoreError> {
        let mut stmt = with_sqlite_text(sql, |sql| self.conn.prepare_cached(sql))?;
        let width = stmt.column_count();
        let mut rows = stmt.query(rusqlite::params_from_iter(params(p)))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let mut values = Vec::with_capacity(width);
            for i in 0..width {
                values.push(read_value(row.get_ref(i)?)?);
            }
            out.push(Row(values));
        }
        drop(rows);
        let _steps = steps_taken(&stmt);
        #[cfg(feature = "testing")]
        record_plan(self.conn, sql, p, _steps);
        Ok(out)
    }

    fn execute_batch(&mut self, sql: &str) -> Result<(), StoreError> {
        self.conn.execute_batch(sql)?;
        Ok(())
    }

    fn backend(&self) -> Backend {
        Backend::Sqlite
    }
}

/// `sql` without a trailing `FOR UPDATE` or `FOR UPDATE OF <tables>`.
fn without_row_lock(sql: &str) -> &str {
    const LOCK: &[u8] = b" FOR UPDATE";
    let trimmed = sql.trim_end();
    let bytes = trimmed.as_bytes();
    // The last ` FOR UPDATE`, in any case, without upper-casing a copy.
    let Some(at) = (0..bytes.len().saturating_sub(LOCK.len() - 1))
        .rev()
        .find(|&i| bytes[i..i + LOCK.len()].eq_ignore_ascii_case(LOCK))
    else {
        return sql;
    };
    let rest = trimmed[at + LOCK.len()..].trim_start();
    let of_tables = rest
        .get(..3)
        .is_some_and(|of| of.eq_ignore_ascii_case("OF "))
        && rest[3..].split(',').all(|t| {
            let t = t.trim();
            !t.is_empty() && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        });
    if rest.is_empty() || of_tables {
        &trimmed[..at]
    } else {
        sql
    }
}

#[cfg(test)]
mod tests {
    use super::rewrite_placeholders;

    #[test]
    fn a_trailing_for_update_is_dropped() {
        assert_eq!(
            rewrite_placeholders("SELECT 1 FROM t WHERE id = $1 FOR UPDATE"),
            "SELECT 1 FROM t WHERE id = ?1"
        );
        assert_eq!(
            rewrite_placeholders("SELECT 'for update'"),
            "SELECT 'for update'"
        );
        assert_eq!(
            rewrite_placeholders(
                "SELECT 1 FROM o JOIN t ON t.id = o.t WHERE o.id = $1 FOR UPDATE OF o"
            ),
            "SELECT 1 FROM o JOIN t ON t.id = o.t WHERE o.id = ?1"
        );
        assert_eq!(
            rewrite_placeholders("SELECT 1 FROM o, t for update of o, t"),
            "SELECT 1 FROM o, t"
        );
        assert_eq!(
            rewrite_placeholders("SELECT ' FOR UPDATE OF x' || name FROM t"),
            "SELECT ' FOR UPDATE OF x' || name FROM t"
        );
    }

    #[test]
    fn the_rewrite_is_remembered_per_statement_text_and_checked_against_it() {
        use super::with_sqlite_text;
        let first = String::from("SELECT $1 FROM t FOR UPDATE");
        assert_eq!(with_sqlite_text(&first, str::to_owned), "SELECT ?1 FROM t");
        assert_eq!(with_sqlite_text(&first, str::to_owned), "SELECT ?1 FROM t");
        // Another text at the same address and length is not the first.
        let mut reused = first;
        reused.replace_range(7..9, "$2");
        assert_eq!(with_sqlite_text(&reused, str::to_owned), "SELECT ?2 FROM t");
        static STATIC: &str = "UPDATE t SET a = $2 WHERE id = $1";
        for _ in 0..3 {
            assert_eq!(
                with_sqlite_text(STATIC, str::to_owned),
                "UPDATE t SET a = ?2 WHERE id = ?1"
            );
        }
    }

    #[test]
    fn placeholders_are_rewritten_outside_string_literals_only() {
        assert_eq!(
            rewrite_placeholders("SELECT '$1', $2 WHERE a = $10"),
            "SELECT '$1', ?2 WHERE a = ?10"
        );
        // Text around and between the placeholders is kept, also where it
        // is not ASCII; a `$` without a digit is not a placeholder.
        assert_eq!(
            rewrite_placeholders("SELECT 'é$1ü', $1||'ß' FROM t WHERE a = $2 AND b = '$' AND c=$3"),
            "SELECT 'é$1ü', ?1||'ß' FROM t WHERE a = ?2 AND b = '$' AND c=?3"
        );
        assert_eq!(rewrite_placeholders("SELECT $a, $"), "SELECT $a, $");
        assert_eq!(rewrite_placeholders("$1"), "?1");
        assert_eq!(
            rewrite_placeholders("SELECT 1 FROM t WHERE id = $1 for Update of t"),
            "SELECT 1 FROM t WHERE id = ?1"
        );
        assert_eq!(rewrite_placeholders("FOR UPDATE"), "FOR UPDATE");
        assert_eq!(rewrite_placeholders(""), "");
    }
}
