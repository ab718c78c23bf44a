//! The embedded bus: a durable, in-process implementation of the bus
//! contract for the all-in-one mode. Its log, consumers and their pending
//! deliveries live in a SQLite database (`bus.db` in the data directory), so a
//! restart loses nothing; waiting members are woken in-process on publish.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shared::time::{Clock, Timestamp};
use store::{Conn, Db, Migration, StoreError};
use tokio::sync::Notify;

use crate::{
    Acker, Bus, BusError, BusErrorKind, ConsumerConfig, Delivery, DeliverySource, Message,
    ParkedFilter, ParkedMessage, ParkedState, PublishAck, Resolution, Subscription, Watch,
    WatchSource, Watched, subject,
};

mod deliveries;
mod parked;
mod watch;

use deliveries::*;
use parked::*;
use watch::*;

static MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "log, consumers, pending deliveries, parked messages",
        sql: "
        CREATE TABLE messages (
            seq INTEGER PRIMARY KEY,
            subject TEXT NOT NULL,
            msg_id TEXT NOT NULL UNIQUE,
            headers TEXT NOT NULL,
            payload BLOB NOT NULL,
            published_at BIGINT NOT NULL
        );
        CREATE TABLE consumers (
            name TEXT PRIMARY KEY,
            filter_subject TEXT NOT NULL,
            ack_wait_ms BIGINT NOT NULL,
            max_deliver BIGINT NOT NULL,
            created_at BIGINT NOT NULL
        );
        CREATE TABLE pending (
            consumer TEXT NOT NULL,
            seq BIGINT NOT NULL,
            deliveries BIGINT NOT NULL,
            visible_at BIGINT NOT NULL,
            PRIMARY KEY (consumer, seq)
        ) WITHOUT ROWID;
        CREATE TABLE parked (
            consumer TEXT NOT NULL,
            seq BIGINT NOT NULL,
            subject TEXT NOT NULL,
            msg_id TEXT NOT NULL,
            deliveries BIGINT NOT NULL,
            reason TEXT NOT NULL,
            parked_at BIGINT NOT NULL,
            PRIMARY KEY (consumer, seq)
        );
    ",
    },
    Migration {
        version: 2,
        description: "messages by publication time, for watches",
        sql: "CREATE INDEX messages_published_at ON messages (published_at);",
    },
    Migration {
        version: 3,
        description: "parked-message records an operator can act on; a delivery's last error",
        sql: "
        ALTER TABLE pending ADD COLUMN last_error TEXT;
        CREATE TABLE parked_records (
            id INTEGER PRIMARY KEY,
            consumer TEXT NOT NULL,
            seq BIGINT NOT NULL,
            subject TEXT NOT NULL,
            msg_id TEXT NOT NULL,
            deliveries BIGINT NOT NULL,
            reason TEXT NOT NULL,
            parked_at BIGINT NOT NULL,
            state TEXT NOT NULL DEFAULT 'parked',
            resolved_at BIGINT,
            resolution TEXT
        );
        INSERT INTO parked_records (consumer, seq, subject, msg_id, deliveries, reason, parked_at)
            SELECT consumer, seq, subject, msg_id, deliveries, reason, parked_at
            FROM parked ORDER BY parked_at, seq;
        DROP TABLE parked;
        ALTER TABLE parked_records RENAME TO parked;
        CREATE UNIQUE INDEX parked_waiting ON parked (consumer, seq) WHERE state = 'parked';
    ",
    },
];

/// How many messages one fetch claims for a member.
const FETCH_BATCH: i64 = 64;

#[derive(Debug, Clone)]
struct ConsumerDef {
    filter: String,
    ack_wait_ms: i64,
    max_deliver: i64,
}

struct Inner {
    db: Db,
    clock: Clock,
    /// Consumer definitions, read and changed only inside database closures
    /// (which run one at a time), so they always agree with the tables.
    consumers: Arc<Mutex<HashMap<String, ConsumerDef>>>,
    /// Wakes every waiting member to fetch again (a replay, a rewind).
    wake: Notify,
    /// Each durable consumer's own wake-up, for its members: a publish
    /// wakes only the consumers whose filter it matches, a nak only its
    /// own consumer. (Waking them all made every consumer run a fetch on
    /// the bus's one database thread for every publish, its own or not:
    /// 16 fetches per event.)
    published: Mutex<HashMap<String, Arc<Notify>>>,
    /// Each watch's filter and its own wake-up: a publish wakes only the
    /// watches it concerns (a watch on `user.>` costs the bus's database
    /// nothing when tickets and orders publish).
    watches: Mutex<Vec<(String, Arc<Notify>)>>,
    /// Acknowledgements waiting to be written, committed together.
    acks: AckQueue,
}

/// Group commit of acknowledgements: the first ack to find no flush under
/// way starts one, which deletes every ack queued by then in one
/// transaction, then the ones queued meanwhile, until none is left. Each ack
/// still returns only once its deletion has committed; under load, many
/// share a transaction (one per message cost a transaction of the bus's
/// single database thread for every event every consumer handled).
#[derive(Default)]
struct AckQueue {
    queued: Mutex<Vec<QueuedAck>>,
    flushing: std::sync::atomic::AtomicBool,
}

type QueuedAck = (
    Arc<str>,
    i64,
    tokio::sync::oneshot::Sender<Result<(), BusError>>,
);

impl Inner {
    async fn ack(self: &Arc<Self>, consumer: Arc<str>, seq: i64) -> Result<(), BusError> {
        use std::sync::atomic::Ordering;
        let (done, result) = tokio::sync::oneshot::channel();
        lock(&self.acks.queued).push((consumer, seq, done));
        if self
            .acks
            .flushing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            // On a task of its own: the flush must finish even if this
            // ack's caller stops waiting.
            tokio::spawn(self.clone().flush_acks());
        }
        result.await.unwrap_or_else(|_| {
            Err(BusError::new(
                BusErrorKind::Unavailable,
                "the acknowledgement was not written",
            ))
        })
    }

    async fn flush_acks(self: Arc<Self>) {
        use std::sync::atomic::Ordering;
        loop {
            let batch = std::mem::take(&mut *lock(&self.acks.queued));
            if batch.is_empty() {
                self.acks.flushing.store(false, Ordering::Release);
                // An ack queued after the take but before the release saw a
                // flush under way: take it on, unless another flush has.
                let more = !lock(&self.acks.queued).is_empty();
                if more
                    && self
                        .acks
                        .flushing
                        .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                {
                    continue;
                }
                return;
            }
            let keys: Vec<(Arc<str>, i64)> =
                batch.iter().map(|(c, s, _)| (c.clone(), *s)).collect();
            let written = self
                .db
                .write(move |c| {
                    for (consumer, seq) in &keys {
                        c.execute(
                            "DELETE FROM pending WHERE consumer = $1 AND seq = $2",
                            &[&&**consumer, seq],
                        )?;
                    }
                    Ok::<_, StoreError>(())
                })
                .await
                .map_err(BusError::from);
            for (_, _, done) in batch {
                let _ = done.send(written.clone());
            }
        }
    }
}

/// The embedded durable bus. Cheap to clone.
#[derive(Clone)]
pub struct EmbeddedBus {
    inner: Arc<Inner>,
}

impl Inner {
    /// The wake-up of consumer `name`'s members for what is published.
    fn consumer_wake(&self, name: &str) -> Arc<Notify> {
        lock(&self.published)
            .entry(name.to_owned())
            .or_default()
            .clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Poisoning means a closure panicked mid-update of a plain map; the
    // tables are the truth and the map is only a cache of them.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl EmbeddedBus {
    /// Opens (creating if needed) the bus database at `path`.
    pub async fn open(path: &Path) -> Result<EmbeddedBus, BusError> {
        Self::open_with_clock(path, Clock::System).await
    }

    /// Transactions the bus's database has run (for tests and metrics).
    pub fn database_transactions(&self) -> u64 {
        self.inner.db.stats().transactions
    }

    pub async fn open_with_clock(path: &Path, clock: Clock) -> Result<EmbeddedBus, BusError> {
        let db = Db::open_sqlite(path, MIGRATIONS).await?;
        // Whatever a previous run had in flight (delivered, not yet
        // acknowledged) or was holding back died with it: deliverable now,
        // not when its ack wait would have run out. (Only one process uses
        // the bus's file.)
        let now = clock.now().millis();
        db.write(move |c| {
            c.execute(
                "UPDATE pending SET visible_at = $1 WHERE visible_at > $1",
                &[&now],
            )
        })
        .await?;
        let consumers = Arc::new(Mutex::new(HashMap::new()));
        let loaded = db
            .read(|c| {
                c.query(
                    "SELECT name, filter_subject, ack_wait_ms, max_deliver FROM consumers",
                    &[],
                )?
                .into_iter()
                .map(|r| {
                    Ok((
                        r.get::<String>(0)?,
                        ConsumerDef {
                            filter: r.get(1)?,
                            ack_wait_ms: r.get(2)?,
                            max_deliver: r.get(3)?,
                        },
                    ))
                })
                .collect::<Result<HashMap<_, _>, StoreError>>()
            })
            .await?;
        *lock(&consumers) = loaded;
        Ok(EmbeddedBus {
            inner: Arc::new(Inner {
                db,
                clock,
                consumers,
                wake: Notify::new(),
                published: Mutex::new(HashMap::new()),
                watches: Mutex::new(Vec::new()),
                acks: AckQueue::default(),
            }),
        })
    }

    /// Replays (`discard` None) or discards a parked-message record.
    async fn resolve(&self, record: u64, discard: Option<String>) -> Result<Resolution, BusError> {
        let now = self.inner.clock.now().millis();
        let id = i64::try_from(record).unwrap_or(i64::MAX);
        let resolution = self
            .inner
            .db
            .write(move |c| match &discard {
                None => resolve(c, id, true, "", now),
                Some(reason) => resolve(c, id, false, reason, now),
            })
            .await?;
        if let Resolution::Done(p) = &resolution {
            crate::report_resolved(p);
            if matches!(p.state, ParkedState::Replayed { .. }) {
                self.inner.wake.notify_waiters();
            }
        }
        Ok(resolution)
    }

    async fn publish_all(&self, msgs: Vec<Message>) -> Result<Vec<PublishAck>, BusError> {
        let now = self.inner.clock.now().millis();
        let consumers = self.inner.consumers.clone();
        // Which consumers and watches this concerns.
        let subjects: Vec<String> = msgs.iter().map(|m| m.subject.clone()).collect();
        let acks = self
            .inner
            .db
            .write(move |c| {
                let defs = lock(&consumers).clone();
                msgs.iter()
                    .map(|m| insert_message(c, &defs, m, now))
                    .collect::<Result<Vec<_>, _>>()
            })
            .await
            .map_err(BusError::from)?;
        let new: Vec<&String> = subjects
            .iter()
            .zip(&acks)
            .filter(|(_, a)| !a.duplicate)
            .map(|(s, _)| s)
            .collect();
        if !new.is_empty() {
            let defs = lock(&self.inner.consumers)
                .iter()
                .filter(|(_, def)| new.iter().any(|s| subject::matches(&def.filter, s)))
                .map(|(name, _)| name.clone())
                .collect::<Vec<_>>();
            for name in defs {
                self.inner.consumer_wake(&name).notify_waiters();
            }
            for (filter, wake) in lock(&self.inner.watches).iter() {
                if subjects.iter().any(|s| subject::matches(filter, s)) {
                    wake.notify_waiters();
                }
            }
        }
        Ok(acks)
    }
}

/// Makes every logged message `filter` matches pending, undelivered, for
/// `consumer`: a durable's start from the first message.
fn pend_history(
    c: &mut dyn store::Conn,
    consumer: &str,
    filter: &str,
    now: i64,
) -> Result<(), StoreError> {
    for row in c.query("SELECT seq, subject FROM messages ORDER BY seq", &[])? {
        let (seq, subj): (i64, String) = (row.get(0)?, row.get(1)?);
        if subject::matches(filter, &subj) {
            c.execute(
                "INSERT INTO pending (consumer, seq, deliveries, visible_at) VALUES ($1, $2, 0, $3)",
                &[&consumer, &seq, &now],
            )?;
        }
    }
    Ok(())
}

fn encode_headers(headers: &[(String, String)]) -> String {
    serde_json::to_string(headers).unwrap_or_else(|_| "[]".into())
}

fn decode_headers(s: &str) -> Vec<(String, String)> {
    serde_json::from_str(s).unwrap_or_default()
}

fn insert_message(
    c: &mut dyn Conn,
    defs: &HashMap<String, ConsumerDef>,
    m: &Message,
    now: i64,
) -> Result<PublishAck, StoreError> {
    if let Some(row) = c.query_opt("SELECT seq FROM messages WHERE msg_id = $1", &[&m.id])? {
        return Ok(PublishAck {
            seq: row.get::<i64>(0)? as u64,
            duplicate: true,
        });
    }
    let payload = String::from_utf8_lossy(&m.payload).into_owned();
    let seq: i64 = c.query(
        "INSERT INTO messages (subject, msg_id, headers, payload, published_at)
             VALUES ($1, $2, $3, $4, $5) RETURNING seq",
        &[
            &m.subject,
            &m.id,
            &encode_headers(&m.headers),
            &payload,
            &now,
        ],
    )?[0]
        .get(0)?;
    for (name, def) in defs {
        if subject::matches(&def.filter, &m.subject) {
            c.execute(
                "INSERT INTO pending (consumer, seq, deliveries, visible_at) VALUES ($1, $2, 0, $3)",
                &[name, &seq, &now],
            )?;
        }
    }
    Ok(PublishAck {
        seq: seq as u64,
        duplicate: false,
    })
}

impl Bus for EmbeddedBus {
    fn publish(&self, msg: Message) -> crate::BoxFuture<'_, Result<PublishAck, BusError>> {
        Box::pin(async move { Ok(self.publish_all(vec![msg]).await?.remove(0)) })
    }

    fn publish_batch(
        &self,
        msgs: Vec<Message>,
    ) -> crate::BoxFuture<'_, Result<Vec<PublishAck>, BusError>> {
        Box::pin(self.publish_all(msgs))
    }

    fn subscribe(
        &self,
        config: ConsumerConfig,
    ) -> crate::BoxFuture<'_, Result<Subscription, BusError>> {
        Box::pin(async move {
            let now = self.inner.clock.now().millis();
            let consumers = self.inner.consumers.clone();
            let def = ConsumerDef {
                filter: config.filter_subject.clone(),
                ack_wait_ms: config.ack_wait.as_millis() as i64,
                max_deliver: i64::from(config.max_deliver.max(1)),
            };
            let name = config.durable.clone();
            self.inner
                .db
                .write(move |c| -> Result<(), BusError> {
                    let existing = lock(&consumers).get(&name).cloned();
                    match existing {
                        Some(old) if old.filter != def.filter => Err(BusError::new(
                            BusErrorKind::Config,
                            format!(
                                "durable {name} already filters {}, not {}",
                                old.filter, def.filter
                            ),
                        )),
                        Some(_) => {
                            c.execute(
                                "UPDATE consumers SET ack_wait_ms = $2, max_deliver = $3 WHERE name = $1",
                                &[&name, &def.ack_wait_ms, &def.max_deliver],
                            )?;
                            lock(&consumers).insert(name, def);
                            Ok(())
                        }
                        None => {
                            c.execute(
                                "INSERT INTO consumers (name, filter_subject, ack_wait_ms, max_deliver, created_at)
                                 VALUES ($1, $2, $3, $4, $5)",
                                &[&name, &def.filter, &def.ack_wait_ms, &def.max_deliver, &now],
                            )?;
                            // A new durable replays the log from the first message.
                            pend_history(c, &name, &def.filter, now)?;
                            lock(&consumers).insert(name, def);
                            Ok(())
                        }
                    }
                })
                .await?;
            Ok(Subscription::new(Box::new(EmbeddedSource {
                inner: self.inner.clone(),
                consumer: Arc::from(config.durable.as_str()),
                published: self.inner.consumer_wake(&config.durable),
                buffer: VecDeque::new(),
            })))
        })
    }

    fn rewind(&self, config: &ConsumerConfig) -> crate::BoxFuture<'_, Result<(), BusError>> {
        let name = config.durable.clone();
        Box::pin(async move {
            let Some(filter) = lock(&self.inner.consumers)
                .get(&name)
                .map(|d| d.filter.clone())
            else {
                return Ok(());
            };
            let now = self.inner.clock.now().millis();
            self.inner
                .db
                .write(move |c| -> Result<(), BusError> {
                    // Everything its filter matches is pending again, undelivered.
                    c.execute("DELETE FROM pending WHERE consumer = $1", &[&name])?;
                    pend_history(c, &name, &filter, now)?;
                    Ok(())
                })
                .await?;
            self.inner.wake.notify_waiters();
            Ok(())
        })
    }

    fn watch(
        &self,
        filter_subject: &str,
        since: shared::time::Timestamp,
    ) -> crate::BoxFuture<'_, Result<Watch, BusError>> {
        let filter = filter_subject.to_owned();
        Box::pin(async move {
            let since = since.millis();
            let (after, history_end) = self
                .inner
                .db
                .read(move |c| {
                    let last: i64 = c
                        .query_opt("SELECT COALESCE(MAX(seq), 0) FROM messages", &[])?
                        .map(|r| r.get(0))
                        .transpose()?
                        .unwrap_or(0);
                    let first: Option<i64> = c
                        .query_opt(
                            "SELECT MIN(seq) FROM messages WHERE published_at >= $1",
                            &[&since],
                        )?
                        .and_then(|r| r.get::<Option<i64>>(0).ok().flatten());
                    Ok::<_, StoreError>((first.map_or(last, |f| f - 1), last))
                })
                .await?;
            let wake = Arc::new(Notify::new());
            lock(&self.inner.watches).push((filter.clone(), wake.clone()));
            Ok(Watch::new(Box::new(EmbeddedWatch {
                inner: self.inner.clone(),
                wake,
                filter,
                after,
                history_end,
                caught_up: false,
                buffer: VecDeque::new(),
            })))
        })
    }

    fn parked_messages(
        &self,
        filter: &ParkedFilter,
    ) -> crate::BoxFuture<'_, Result<Vec<ParkedMessage>, BusError>> {
        let filter = filter.clone();
        Box::pin(async move {
            let all = self.inner.db.read(|c| read_parked(c, None)).await?;
            Ok(all.into_iter().filter(|p| filter.matches(p)).collect())
        })
    }

    fn replay_parked(&self, record: u64) -> crate::BoxFuture<'_, Result<Resolution, BusError>> {
        Box::pin(async move { self.resolve(record, None).await })
    }

    fn discard_parked(
        &self,
        record: u64,
        reason: String,
    ) -> crate::BoxFuture<'_, Result<Resolution, BusError>> {
        Box::pin(async move { self.resolve(record, Some(reason)).await })
    }

    fn check_ready(&self) -> crate::BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async move { self.inner.db.ping().await.map_err(BusError::from) })
    }
}
