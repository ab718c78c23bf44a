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
use store::{Conn, Db, StoreError, StoreErrorKind};
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

/// Writes `event` to the outbox inside the caller's transaction.
pub fn enqueue<E: Event>(
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
    let headers = vec![
        (TRACEPARENT.to_owned(), trace.child().to_string()),
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

struct Inner {
    db: Db,
    service: &'static str,
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
                wake: Notify::new(),
                last_error: Mutex::new(None),
            }),
        }
    }

    /// Runs `f` in one transaction of the service's database and, once it has
    /// committed, wakes the relay: the way to make a state change and
    /// [`enqueue`] the events announcing it.
    pub async fn write<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
        F: FnOnce(&mut dyn Conn) -> Result<T, E> + Send + 'static,
    {
        let result = self.inner.db.write(f).await;
        if result.is_ok() {
            self.wake();
        }
        result
    }

    /// Tells the relay new rows were committed (it also polls, so a missed
    /// wake-up only delays).
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// Rows not yet published.
    pub async fn pending(&self) -> Result<i64, StoreError> {
        self.inner
            .db
            .read(|c| c.query("SELECT COUNT(*) FROM outbox", &[])?[0].get(0))
            .await
    }

    /// `Err` with the reason while the relay cannot reach the bus.
    pub fn health(&self) -> Result<(), String> {
        match &*self
            .inner
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
        {
            Some(e) => Err(format!("outbox relay cannot publish: {e}")),
            None => Ok(()),
        }
    }

    /// Publishes one batch of pending rows, oldest first, and deletes them.
    /// Returns how many were published.
    pub async fn relay_once(&self, bus: &dyn Bus) -> Result<usize, BusError> {
        let rows = self
            .inner
            .db
            .read(|c| {
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
                .collect::<Result<Vec<_>, StoreError>>()
            })
            .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let ids: Vec<String> = rows.iter().map(|m| m.id.clone()).collect();
        let subjects: Vec<String> = rows.iter().map(|m| m.subject.clone()).collect();
        bus.publish_batch(rows).await?;
        self.inner
            .db
            .write(move |c| {
                for id in &ids {
                    c.execute("DELETE FROM outbox WHERE id = $1", &[id])?;
                }
                Ok::<_, StoreError>(())
            })
            .await?;
        for s in &subjects {
            shared::metrics::inc(
                "events_published_total",
                &[("service", self.inner.service), ("subject", s)],
            );
        }
        Ok(subjects.len())
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
            let mut backoff = Duration::from_millis(100);
            loop {
                if shutdown.is_fired() {
                    break;
                }
                match outbox.relay_once(bus.as_ref()).await {
                    Ok(n) if n as i64 == BATCH => continue,
                    Ok(_) => {
                        outbox.set_error(None);
                        backoff = Duration::from_millis(100);
                        tokio::select! {
                            _ = outbox.inner.wake.notified() => {}
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                            _ = shutdown.wait() => {}
                        }
                    }
                    Err(e) => {
                        tracing::warn!(service, error = %e, retry_in_ms = backoff.as_millis() as u64, "outbox relay failed");
                        outbox.set_error(Some(e.to_string()));
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = shutdown.wait() => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
            let drain = async {
                while let Ok(n) = outbox.relay_once(bus.as_ref()).await {
                    if n == 0 {
                        break;
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
