//! The transactional outbox. A service writes its state change and the event
//! announcing it in one database transaction ([`enqueue`]); the relay
//! publishes outbox rows and deletes them once the bus has acknowledged them.
//! A crash between commit and publish loses nothing (the row is still there)
//! and publishes nothing twice (the event id is the bus's de-duplication id).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use shared::events::{EVENT_TYPE_HEADER, Event, SCHEMA_VERSION_HEADER};
use shared::ids::EventId;
use shared::shutdown::Shutdown;
use shared::time::Timestamp;
use shared::trace::{TRACEPARENT, TraceContext};
use store::{Backend, Conn, Db, Row, StoreError, StoreErrorKind, ToValue};
use tokio::sync::Notify;

use crate::{Bus, BusError, Message};

/// The outbox table; every publishing service includes it in its migrations.
pub const OUTBOX_TABLE_SQL: &str = "
    CREATE TABLE outbox (
        id TEXT PRIMARY KEY,
        subject TEXT NOT NULL,
        headers TEXT NOT NULL,
        payload TEXT NOT NULL,
        created_at BIGINT NOT NULL
    );
";

/// Rows published per round trip.
const BATCH: i64 = 256;

/// A transaction of [`Outbox::write`]: the service's database connection
/// (it is a [`Conn`]), and [`OutboxTx::enqueue`], the only way to
/// write an event — so every event is written in the same transaction as
/// the change it announces, and the relay is woken once that commits.
pub struct OutboxTx<'a> {
    conn: &'a mut dyn Conn,
    after_commit: Vec<AfterCommit>,
}

/// Work that runs once a transaction has committed (and never if it did not).
type AfterCommit = Box<dyn FnOnce() + Send>;

/// Statements run on the transaction's connection, so code written for
/// any [`Conn`] takes an `OutboxTx` too.
impl Conn for OutboxTx<'_> {
    fn execute(&mut self, sql: &str, params: &[&dyn ToValue]) -> Result<u64, StoreError> {
        self.conn.execute(sql, params)
    }

    fn query(&mut self, sql: &str, params: &[&dyn ToValue]) -> Result<Vec<Row>, StoreError> {
        self.conn.query(sql, params)
    }

    fn query_opt(&mut self, sql: &str, params: &[&dyn ToValue]) -> Result<Option<Row>, StoreError> {
        self.conn.query_opt(sql, params)
    }

    fn execute_batch(&mut self, sql: &str) -> Result<(), StoreError> {
        self.conn.execute_batch(sql)
    }

    fn backend(&self) -> Backend {
        self.conn.backend()
    }
}

impl OutboxTx<'_> {
    /// Writes `event` to the outbox in this transaction, as a child of
    /// `trace`; published by the relay once the transaction commits.
    pub fn enqueue<E: Event>(
        &mut self,
        event: &E,
        trace: &TraceContext,
        now: Timestamp,
    ) -> Result<EventId, StoreError> {
        enqueue(self.conn, event, trace, now)
    }

    /// Runs `f` on the caller's runtime once this transaction has committed
    /// — to wake a task or start work the committed rows ask for; dropped
    /// unrun if the transaction rolls back (also when it is part of a
    /// listener's batch that is rolled back and applied again one event at
    /// a time: each attempt registers its own).
    pub fn after_commit(&mut self, f: impl FnOnce() + Send + 'static) {
        self.after_commit.push(Box::new(f));
    }
}

/// Writes `event` to the outbox inside the caller's transaction.
fn enqueue<E: Event>(
    c: &mut dyn Conn,
    event: &E,
    trace: &TraceContext,
    now: Timestamp,
) -> Result<EventId, StoreError> {
    let id = EventId::new();
    let payload = serde_json::to_string(event).map_err(|e| {
        StoreError::new(
            StoreErrorKind::Other,
            format!("cannot encode {}: {e}", E::SUBJECT),
        )
    })?;
    // The producer's span (OpenTelemetry messaging "create"): a child of
    // the writer's, and the parent of every consumer's span.
    let span = tracing::info_span!(
        "create",
        otel.name = %format_args!("create {}", E::SUBJECT),
        otel.kind = "producer",
        messaging.operation.type = "create",
        messaging.destination.name = E::SUBJECT,
        messaging.message.id = %id,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
        parent_span_id = tracing::field::Empty,
    );
    let produced = shared::trace::join(&span, Some(*trace));
    let headers = vec![
        (TRACEPARENT.to_owned(), produced.to_string()),
        (EVENT_TYPE_HEADER.to_owned(), E::SUBJECT.to_owned()),
        (
            SCHEMA_VERSION_HEADER.to_owned(),
            E::SCHEMA_VERSION.to_string(),
        ),
    ];
    let headers = serde_json::to_string(&headers).unwrap_or_else(|_| "[]".into());
    c.execute(
        "INSERT INTO outbox (id, subject, headers, payload, created_at) VALUES ($1, $2, $3, $4, $5)",
        &[&id, &E::SUBJECT, &headers, &payload, &now],
    )?;
    Ok(id)
}

/// The oldest pending rows, at most one batch.
fn pending_rows(c: &mut dyn Conn) -> Result<Vec<Message>, StoreError> {
    c.query(
        "SELECT id, subject, headers, payload FROM outbox ORDER BY id LIMIT $1",
        &[&BATCH],
    )?
    .into_iter()
    .map(|r| {
        Ok(Message {
            id: r.get(0)?,
            subject: r.get(1)?,
            headers: serde_json::from_str(&r.get::<String>(2)?).unwrap_or_default(),
            payload: r.get::<String>(3)?.into_bytes(),
        })
    })
    .collect()
}

/// Deletes published rows in one statement per batch.
fn delete_rows(c: &mut dyn Conn, ids: &[String]) -> Result<(), StoreError> {
    if ids.is_empty() {
        return Ok(());
    }
    let placeholders: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
    let sql = format!(
        "DELETE FROM outbox WHERE id IN ({})",
        placeholders.join(", ")
    );
    let params: Vec<&dyn store::ToValue> = ids.iter().map(|id| id as &dyn store::ToValue).collect();
    c.execute(&sql, &params)?;
    Ok(())
}

/// Under load, relay rounds start at most this often, so rows gather into
/// batches instead of costing a transaction each; an idle relay still
/// publishes a new row at once.
const MIN_ROUND_INTERVAL: Duration = Duration::from_millis(2);

/// The longest the relay waits between attempts while publishing fails.
const MAX_RELAY_BACKOFF: Duration = Duration::from_secs(1);

enum Relayed {
    Published(usize),
    /// Another replica's relay holds the outbox.
    Busy,
}

struct Inner {
    db: Db,
    service: &'static str,
    /// Subjects the service declares it publishes, if it declares any.
    publishes: Option<&'static [&'static str]>,
    wake: Notify,
    last_error: Mutex<Option<String>>,
}

/// A service's outbox and its relay. Cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

impl Outbox {
    pub fn new(db: Db, service: &'static str) -> Self {
        Outbox {
            inner: Arc::new(Inner {
                db,
                service,
                publishes: None,
                wake: Notify::new(),
                last_error: Mutex::new(None),
            }),
        }
    }

    /// The relay checks every row against `subjects`, the service's entry in
    /// the event catalogue: an undeclared subject is a bug that panics in
    /// debug builds (so tests catch it) and is logged in release builds.
    pub fn declaring(self, subjects: &'static [&'static str]) -> Self {
        let mut inner = Arc::try_unwrap(self.inner)
            .unwrap_or_else(|_| panic!("Outbox::declaring is called before the outbox is shared"));
        inner.publishes = Some(subjects);
        Outbox {
            inner: Arc::new(inner),
        }
    }

    /// Runs `f` in one transaction of the service's database and, once it has
    /// committed, wakes the relay: the way to make a state change and
    /// [`OutboxTx::enqueue`] the events announcing it.
    pub async fn write<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&mut OutboxTx<'_>) -> Result<T, E> + Send + 'static,
    {
        let result = self
            .inner
            .db
            .write(move |conn| {
                let mut tx = OutboxTx {
                    conn,
                    after_commit: Vec::new(),
                };
                f(&mut tx).map(|value| (value, tx.after_commit))
            })
            .await;
        let (value, after_commit) = result?;
        self.wake();
        for f in after_commit {
            f();
        }
        Ok(value)
    }

    /// Tells the relay new rows were committed (it also polls, so a missed
    /// wake-up only delays).
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// Sets the gauges `outbox_pending` and `outbox_oldest_age_seconds`.
    async fn report_backlog(&self) {
        let now = shared::time::Clock::System.now();
        let backlog = self
            .inner
            .db
            .read(|c| {
                let row = &c.query("SELECT COUNT(*), MIN(created_at) FROM outbox", &[])?[0];
                Ok::<_, StoreError>((row.get::<i64>(0)?, row.get::<Option<Timestamp>>(1)?))
            })
            .await;
        if let Ok((pending, oldest)) = backlog {
            let labels = [("service", self.inner.service)];
            shared::metrics::set("outbox_pending", &labels, pending as f64);
            let age = oldest.map_or(0, |t| (now.millis() - t.millis()).max(0));
            shared::metrics::set("outbox_oldest_age_seconds", &labels, age as f64 / 1000.0);
        }
    }

    /// Rows not yet published.
    pub async fn pending(&self) -> Result<i64, StoreError> {
        self.inner
            .db
            .read(|c| c.query("SELECT COUNT(*) FROM outbox", &[])?[0].get(0))
            .await
    }

    /// `Err` with the reason while the relay cannot reach the bus.
    pub fn health(&self) -> Result<(), shared::http::NotReady> {
        match &*self
            .inner
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
        {
            Some(e) => Err(shared::http::NotReady::with_detail(
                "outbox relay cannot publish",
                e.to_string(),
            )),
            None => Ok(()),
        }
    }

    /// Publishes one batch of pending rows, oldest first, and deletes them.
    /// Returns how many were published (0 also when another replica's relay
    /// holds the outbox at this moment).
    pub async fn relay_once(&self, bus: &Arc<dyn Bus>) -> Result<usize, BusError> {
        Ok(match self.relay_batch(bus).await? {
            Relayed::Published(n) => n,
            Relayed::Busy => 0,
        })
    }

    async fn relay_batch(&self, bus: &Arc<dyn Bus>) -> Result<Relayed, BusError> {
        let subjects = match self.inner.db.backend() {
            Backend::Sqlite => self.relay_unlocked(bus.as_ref()).await?,
            Backend::Postgres => match self.relay_locked(bus.clone()).await? {
                Some(subjects) => subjects,
                None => return Ok(Relayed::Busy),
            },
        };
        for s in &subjects {
            if let Some(declared) = self.inner.publishes {
                if !declared.contains(&s.as_str()) {
                    tracing::error!(
                        service = self.inner.service, subject = %s,
                        "published a subject its entry in the event catalogue does not declare"
                    );
                    debug_assert!(
                        false,
                        "{} published {s}, which its entry in the event catalogue does not declare",
                        self.inner.service
                    );
                }
            }
            shared::metrics::inc(
                "events_published_total",
                &[("service", self.inner.service), ("subject", s)],
            );
        }
        Ok(Relayed::Published(subjects.len()))
    }

    /// One process owns a SQLite database, so its relay is the only one:
    /// read, publish, delete in three steps.
    async fn relay_unlocked(&self, bus: &dyn Bus) -> Result<Vec<String>, BusError> {
        let rows = self.inner.db.read(|c| pending_rows(c)).await?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = rows.iter().map(|m| m.id.clone()).collect();
        let subjects: Vec<String> = rows.iter().map(|m| m.subject.clone()).collect();
        bus.publish_batch(rows).await?;
        self.inner.db.write(move |c| delete_rows(c, &ids)).await?;
        Ok(subjects)
    }

    /// Replicas share a PostgreSQL database, so their relays take turns: one
    /// transaction takes a transaction-scoped advisory lock on the outbox,
    /// reads a batch, publishes it, deletes it, and commits. A replica that
    /// finds the lock taken publishes nothing (`None`) and tries again soon,
    /// so no row is published twice and rows leave in order.
    async fn relay_locked(&self, bus: Arc<dyn Bus>) -> Result<Option<Vec<String>>, BusError> {
        // The bus's connection lives on this runtime; the transaction runs on
        // a connection thread of the store, which waits on it from there.
        let runtime = tokio::runtime::Handle::current();
        self.inner
            .db
            .write(move |c| {
                let locked: i64 = c.query(
                    "SELECT COUNT(*) FROM (SELECT 1) AS one \
                     WHERE pg_try_advisory_xact_lock(hashtext(current_schema() || '.outbox'))",
                    &[],
                )?[0]
                    .get(0)?;
                if locked == 0 {
                    return Ok(None);
                }
                // Losing this deletion in a crash only republishes rows the
                // bus drops as duplicates (same message id), so it need not
                // wait for the WAL flush.
                c.execute_batch("SET LOCAL synchronous_commit = off")?;
                let rows = pending_rows(c)?;
                let ids: Vec<String> = rows.iter().map(|m| m.id.clone()).collect();
                let subjects: Vec<String> = rows.iter().map(|m| m.subject.clone()).collect();
                if !rows.is_empty() {
                    runtime.block_on(bus.publish_batch(rows))?;
                    delete_rows(c, &ids)?;
                }
                Ok(Some(subjects))
            })
            .await
    }

    fn set_error(&self, e: Option<String>) {
        *self
            .inner
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = e;
    }

    /// Runs the relay until `shutdown` fires, then publishes what is left
    /// (for at most five seconds) and returns.
    pub fn spawn_relay(
        &self,
        bus: Arc<dyn Bus>,
        mut shutdown: Shutdown,
    ) -> tokio::task::JoinHandle<()> {
        let outbox = self.clone();
        tokio::spawn(async move {
            let service = outbox.inner.service;
            tokio::select! {
                _ = outbox.inner.db.wait_ready() => {}
                _ = shutdown.wait() => {}
            }
            let mut backoff = Duration::from_millis(100);
            let mut reported = tokio::time::Instant::now() - Duration::from_secs(60);
            loop {
                if shutdown.is_fired() {
                    break;
                }
                // The backlog gauges, at most once a second.
                if reported.elapsed() >= Duration::from_secs(1) {
                    reported = tokio::time::Instant::now();
                    outbox.report_backlog().await;
                }
                match outbox.relay_batch(&bus).await {
                    Ok(Relayed::Published(n)) if n as i64 == BATCH => continue,
                    Ok(Relayed::Busy) => {
                        // Another replica is relaying; what it does not
                        // take in this turn, we take in the next.
                        outbox.set_error(None);
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                            _ = shutdown.wait() => {}
                        }
                    }
                    Ok(Relayed::Published(_)) => {
                        outbox.set_error(None);
                        backoff = Duration::from_millis(100);
                        let round_ended = tokio::time::Instant::now();
                        tokio::select! {
                            _ = outbox.inner.wake.notified() => {
                                tokio::time::sleep_until(round_ended + MIN_ROUND_INTERVAL).await;
                            }
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                            _ = shutdown.wait() => {}
                        }
                    }
                    Err(e) => {
                        tracing::warn!(service, error = %store::report(&e), retry_in_ms = backoff.as_millis() as u64, "outbox relay failed");
                        outbox.set_error(Some(store::report(&e)));
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = shutdown.wait() => {}
                        }
                        // At most a second between attempts while the bus is
                        // away (a stream electing a leader answers "no
                        // responders" at once): with a 5 s cap the relay
                        // slept through most of a 6 s election's end.
                        backoff = (backoff * 2).min(MAX_RELAY_BACKOFF);
                    }
                }
            }
            let drain = async {
                loop {
                    match outbox.relay_batch(&bus).await {
                        Ok(Relayed::Published(0)) | Err(_) => break,
                        Ok(Relayed::Published(_)) => {}
                        Ok(Relayed::Busy) => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
            };
            if tokio::time::timeout(Duration::from_secs(5), drain)
                .await
                .is_err()
            {
                tracing::warn!(
                    service,
                    "outbox relay stopped before draining; rows stay for the next start"
                );
            }
            tracing::info!(service, "outbox relay stopped");
        })
    }
}
