//! Listeners that apply the deliveries in hand in one transaction
//! (`Listeners::on_tx`), on the embedded bus (virtual time) and on a real
//! JetStream server (real time): a backlog costs a few commits instead of
//! one per event, an early event waits without holding up the rest, a
//! failing one rolls its batch back and is then retried alone and parked,
//! and nothing is applied twice — also when a batch was committed but its
//! acknowledgements never arrived (a crash between the two).

use std::sync::Arc;
use std::time::Duration;

use bus::embedded::EmbeddedBus;
use bus::jetstream::{JetStreamBus, testing};
use bus::listener::{self, EventContext, ListenerError, ListenerOptions, Listeners, Outcome};
use bus::outbox::{OUTBOX_TABLE_SQL, Outbox, OutboxTx};
use bus::{Acker, Bus, BusError, Message};
use serde::{Deserialize, Serialize};
use shared::events::Event;
use shared::shutdown;
use shared::time::Clock;
use store::{Conn, Db, Migration, StoreError};

static MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "outbox",
        sql: OUTBOX_TABLE_SQL,
    },
    Migration {
        version: 2,
        description: "what the handler applied, and how often",
        sql: "CREATE TABLE applied (n BIGINT PRIMARY KEY, times BIGINT NOT NULL);",
    },
];

/// The event of these tests; its own subject, so a JetStream stream over
/// it overlaps no other test's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
struct Item {
    n: i64,
    /// "ok", "early" (not yet on its first delivery) or "poison" (always fails).
    kind: String,
}
shared::event!(Item, "listenerbatch.item");

/// A service name of its own for each run: the parked stream on a shared
/// server outlives the test's stream.
fn service() -> &'static str {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    Box::leak(format!("batch{}x{nanos}", std::process::id()).into_boxed_str())
}

fn item(n: i64, kind: &str) -> Message {
    Message {
        subject: Item::SUBJECT.into(),
        id: format!("item-{n}"),
        headers: vec![],
        payload: serde_json::to_vec(&Item {
            n,
            kind: kind.into(),
        })
        .unwrap(),
    }
}

/// Applies an item, counting how often: a second application of the same
/// item (a rolled-back batch's work that stood after all) shows as 2.
fn apply(
    _: &(),
    c: &mut OutboxTx<'_>,
    e: Item,
    ctx: &EventContext,
) -> Result<Outcome, ListenerError> {
    match e.kind.as_str() {
        "poison" => {
            return Err(ListenerError::dependency(
                "applying a poison item",
                std::io::Error::other("this one never applies"),
            ));
        }
        "early" if ctx.delivered == 1 => return Ok(Outcome::NotYet("predecessor missing".into())),
        _ => {}
    }
    c.execute(
        "INSERT INTO applied (n, times) VALUES ($1, 1)
         ON CONFLICT (n) DO UPDATE SET times = applied.times + 1",
        &[&e.n],
    )?;
    Ok(Outcome::Done)
}

/// Applies an item once: a duplicate (already applied) is acked and
/// changes nothing, as every replica handler does with versions.
fn apply_once(
    _: &(),
    c: &mut OutboxTx<'_>,
    e: Item,
    _: &EventContext,
) -> Result<Outcome, ListenerError> {
    c.execute(
        "INSERT INTO applied (n, times) VALUES ($1, 1) ON CONFLICT (n) DO NOTHING",
        &[&e.n],
    )?;
    Ok(Outcome::Done)
}

async fn applied(db: &Db) -> Vec<(i64, i64)> {
    db.read(|c| {
        c.query("SELECT n, times FROM applied ORDER BY n", &[])?
            .iter()
            .map(|r| Ok((r.get(0)?, r.get(1)?)))
            .collect::<Result<Vec<(i64, i64)>, StoreError>>()
    })
    .await
    .unwrap()
}

async fn wait_until<F, Fut>(what: &str, within: Duration, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !done().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn options() -> ListenerOptions {
    ListenerOptions {
        ack_wait: Duration::from_secs(2),
        max_deliver: 3,
        concurrency: 1,
        batch: 64,
    }
}

/// The whole case, on any bus; `db` is SQLite, whose commits are counted.
async fn a_backlog_is_applied_in_few_transactions_and_a_failure_is_isolated(
    bus: Arc<dyn Bus>,
    db: Db,
) {
    let service = service();
    // A backlog of 40, one of them early.
    let backlog: Vec<Message> = (0..40)
        .map(|n| item(n, if n == 21 { "early" } else { "ok" }))
        .collect();
    bus.publish_batch(backlog).await.unwrap();
    let commits = db.stats().commits;
    let (trigger, signal) = shutdown::channel();
    let tasks = Listeners::new(bus.clone(), service, options(), signal)
        .applying_in(Outbox::new(db.clone(), service))
        .on_tx(apply)
        .into_tasks();
    wait_until(
        "the backlog is applied",
        Duration::from_secs(20),
        || async { applied(&db).await.len() == 40 },
    )
    .await;
    let used = db.stats().commits - commits;
    // Embedded: one batch and the early one's retry. JetStream: the pull
    // batch arrives over the socket, so a batch is what has arrived.
    assert!(used <= 20, "40 events took {used} commits");
    // Then 20 more, one of them poison: the batch holding it is rolled
    // back and its events applied one at a time; the poison one is
    // retried alone and parked, and every other one applied once.
    let more: Vec<Message> = (40..60)
        .map(|n| item(n, if n == 47 { "poison" } else { "ok" }))
        .collect();
    bus.publish_batch(more).await.unwrap();
    let durable = listener::durable_name(service, Item::SUBJECT);
    wait_until(
        "the poison item is parked",
        Duration::from_secs(30),
        || async { bus.parked(&durable).await.unwrap().len() == 1 },
    )
    .await;
    wait_until("the rest are applied", Duration::from_secs(20), || async {
        applied(&db).await.len() == 59
    })
    .await;
    let rows = applied(&db).await;
    assert!(rows.iter().all(|&(_, times)| times == 1), "{rows:?}");
    assert!(
        rows.iter().all(|&(n, _)| n != 47),
        "the poison one left nothing"
    );
    let parked = bus.parked(&durable).await.unwrap();
    assert_eq!(parked[0].id, "item-47");
    trigger.fire();
    for t in tasks {
        t.await.unwrap();
    }
}

/// The crash between a batch's commit and its acks: the acks are lost, the
/// events come back after the ack wait to the restarted listener, and the
/// handler's duplicate check keeps the effect single.
async fn a_batch_committed_but_never_acknowledged_is_applied_once_in_effect(
    bus: Arc<dyn Bus>,
    db: Db,
) {
    let service = service();
    bus.publish_batch((0..10).map(|n| item(n, "ok")).collect())
        .await
        .unwrap();
    // The first run commits and "crashes" before acking: its bus drops acks.
    let (trigger, signal) = shutdown::channel();
    let lossy: Arc<dyn Bus> = Arc::new(Rewired::new(bus.clone(), |sub, _| {
        bus::Subscription::new(Box::new(AcksLost(sub)))
    }));
    let tasks = Listeners::new(lossy, service, options(), signal)
        .applying_in(Outbox::new(db.clone(), service))
        .on_tx(apply_once)
        .into_tasks();
    wait_until(
        "the first run applied all",
        Duration::from_secs(20),
        || async { applied(&db).await.len() == 10 },
    )
    .await;
    trigger.fire();
    for t in tasks {
        t.await.unwrap();
    }
    // The restarted listener gets them again and applies nothing twice.
    let (trigger, signal) = shutdown::channel();
    let tasks = Listeners::new(bus.clone(), service, options(), signal)
        .applying_in(Outbox::new(db.clone(), service))
        .on_tx(apply_once)
        .into_tasks();
    let handled = || {
        shared::metrics::get(
            "events_handled_total",
            &[("service", service), ("subject", Item::SUBJECT)],
        )
    };
    let before = handled();
    wait_until(
        "the redeliveries are acked",
        Duration::from_secs(20),
        || async { handled() >= before + 10 },
    )
    .await;
    assert_eq!(
        applied(&db).await,
        (0..10).map(|n| (n, 1)).collect::<Vec<_>>()
    );
    trigger.fire();
    for t in tasks {
        t.await.unwrap();
    }
}

/// A bus that is `inner` except for its subscriptions, which `wrap` (told
/// how many came before) turns into others: a process whose acks are lost,
/// a connection that ends one.
struct Rewired {
    inner: Arc<dyn Bus>,
    wrap: fn(bus::Subscription, usize) -> bus::Subscription,
    subscribed: std::sync::atomic::AtomicUsize,
}

impl Rewired {
    fn new(
        inner: Arc<dyn Bus>,
        wrap: fn(bus::Subscription, usize) -> bus::Subscription,
    ) -> Rewired {
        Rewired {
            inner,
            wrap,
            subscribed: Default::default(),
        }
    }
}

impl Bus for Rewired {
    fn publish(&self, msg: Message) -> bus::BoxFuture<'_, Result<bus::PublishAck, BusError>> {
        self.inner.publish(msg)
    }

    fn subscribe(
        &self,
        config: bus::ConsumerConfig,
    ) -> bus::BoxFuture<'_, Result<bus::Subscription, BusError>> {
        Box::pin(async move {
            let sub = self.inner.subscribe(config).await?;
            let nth = self
                .subscribed
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok((self.wrap)(sub, nth))
        })
    }

    fn rewind(&self, config: &bus::ConsumerConfig) -> bus::BoxFuture<'_, Result<(), BusError>> {
        self.inner.rewind(config)
    }

    fn watch(
        &self,
        filter_subject: &str,
        since: shared::time::Timestamp,
    ) -> bus::BoxFuture<'_, Result<bus::Watch, BusError>> {
        self.inner.watch(filter_subject, since)
    }

    fn parked_messages(
        &self,
        filter: &bus::ParkedFilter,
    ) -> bus::BoxFuture<'_, Result<Vec<bus::ParkedMessage>, BusError>> {
        self.inner.parked_messages(filter)
    }

    fn replay_parked(&self, record: u64) -> bus::BoxFuture<'_, Result<bus::Resolution, BusError>> {
        self.inner.replay_parked(record)
    }

    fn discard_parked(
        &self,
        record: u64,
        reason: String,
    ) -> bus::BoxFuture<'_, Result<bus::Resolution, BusError>> {
        self.inner.discard_parked(record, reason)
    }

    fn check_ready(&self) -> bus::BoxFuture<'_, Result<(), BusError>> {
        self.inner.check_ready()
    }
}

/// Deliveries whose acks go nowhere: a process that dies right after its
/// transaction committed.
struct DroppedAck;

impl Acker for DroppedAck {
    fn ack(&self) -> bus::BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async { Ok(()) })
    }
    fn nak(&self, _: Duration) -> bus::BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async { Ok(()) })
    }
    fn fail(&self, _: Duration, _: String) -> bus::BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async { Ok(()) })
    }
    fn term(&self, _: String) -> bus::BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async { Ok(()) })
    }
    fn in_progress(&self) -> bus::BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async { Ok(()) })
    }
}

struct AcksLost(bus::Subscription);

fn acks_lost(d: bus::Delivery) -> bus::Delivery {
    bus::Delivery::new(d.message.clone(), d.seq, d.delivered, Arc::new(DroppedAck))
}

impl bus::DeliverySource for AcksLost {
    fn next(&mut self) -> bus::BoxFuture<'_, Option<Result<bus::Delivery, BusError>>> {
        Box::pin(async move { self.0.next().await.map(|r| r.map(acks_lost)) })
    }

    fn ready(&mut self) -> Option<bus::Delivery> {
        self.0.ready().map(acks_lost)
    }
}

async fn embedded() -> (tempfile::TempDir, Arc<dyn Bus>, Db) {
    tokio::time::pause();
    store::testing::hold_paused_clock();
    let dir = tempfile::tempdir().unwrap();
    let bus: Arc<dyn Bus> = Arc::new(
        EmbeddedBus::open_with_clock(&dir.path().join("bus.db"), Clock::tokio())
            .await
            .unwrap(),
    );
    let db = Db::open_sqlite(&dir.path().join("svc.db"), MIGRATIONS)
        .await
        .unwrap();
    (dir, bus, db)
}

/// A stream over this file's subject on the test server (replacing one a
/// previous run left), or `None` when NATS is optional and unreachable.
async fn jetstream() -> Option<(tempfile::TempDir, Arc<dyn Bus>, Db, testing::TestStream)> {
    let client = testing::connect().await?;
    let bus = JetStreamBus::from_client(client);
    let stream = testing::stream_over(&bus, "LISTENERBATCH", "listenerbatch.>").await;
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_sqlite(&dir.path().join("svc.db"), MIGRATIONS)
        .await
        .unwrap();
    Some((dir, Arc::new(bus), db, stream))
}

#[tokio::test]
async fn on_the_embedded_bus_a_backlog_is_applied_in_few_transactions_and_a_failure_is_isolated() {
    let (_dir, bus, db) = embedded().await;
    a_backlog_is_applied_in_few_transactions_and_a_failure_is_isolated(bus, db).await;
}

#[tokio::test]
async fn on_the_embedded_bus_a_batch_committed_but_never_acknowledged_is_applied_once_in_effect() {
    let (_dir, bus, db) = embedded().await;
    a_batch_committed_but_never_acknowledged_is_applied_once_in_effect(bus, db).await;
}

/// A handler bug parks a message with the handler's error; once the bug is
/// fixed (here: the handler's switch flipped), a replay applies it exactly
/// once and the record says it was replayed; a second replay changes
/// nothing.
async fn a_replayed_message_is_applied_once_by_the_fixed_handler(bus: Arc<dyn Bus>, db: Db) {
    type Fixed = Arc<std::sync::atomic::AtomicBool>;
    fn until_fixed(
        fixed: &Fixed,
        c: &mut OutboxTx<'_>,
        e: Item,
        ctx: &EventContext,
    ) -> Result<Outcome, ListenerError> {
        if fixed.load(std::sync::atomic::Ordering::SeqCst) {
            apply_once(
                &(),
                c,
                Item {
                    kind: "ok".into(),
                    ..e
                },
                ctx,
            )
        } else {
            apply(&(), c, e, ctx)
        }
    }
    bus.publish_batch(vec![item(1, "poison"), item(2, "ok")])
        .await
        .unwrap();
    let fixed = Fixed::default();
    let service = service();
    let (trigger, signal) = shutdown::channel();
    let tasks = Listeners::new(bus.clone(), service, options(), signal)
        .applying_in(Outbox::new(db.clone(), service))
        .with_state(fixed.clone())
        .on_tx(until_fixed)
        .into_tasks();
    let durable = listener::durable_name(service, Item::SUBJECT);
    wait_until(
        "the bad item is parked",
        Duration::from_secs(30),
        || async { bus.parked(&durable).await.unwrap().len() == 1 },
    )
    .await;
    let parked = bus.parked(&durable).await.unwrap().remove(0);
    assert_eq!(parked.id, "item-1");
    assert!(
        parked.reason.contains("this one never applies"),
        "the handler's error is recorded: {}",
        parked.reason
    );
    assert_eq!(applied(&db).await, [(2, 1)]);

    fixed.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(matches!(
        bus.replay_parked(parked.record).await.unwrap(),
        bus::Resolution::Done(_)
    ));
    wait_until("the replay is applied", Duration::from_secs(30), || async {
        applied(&db).await.len() == 2
    })
    .await;
    assert!(matches!(
        bus.replay_parked(parked.record).await.unwrap(),
        bus::Resolution::Already(_)
    ));
    let records = bus
        .parked_messages(&bus::ParkedFilter {
            consumer: Some(durable.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(records.len(), 1);
    assert!(matches!(
        records[0].state,
        bus::ParkedState::Replayed { .. }
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    trigger.fire();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(applied(&db).await, [(1, 1), (2, 1)]);
    assert!(bus.parked(&durable).await.unwrap().is_empty());
}

#[tokio::test]
async fn on_the_embedded_bus_a_replayed_message_is_applied_once_by_the_fixed_handler() {
    let (_dir, bus, db) = embedded().await;
    a_replayed_message_is_applied_once_by_the_fixed_handler(bus, db).await;
}

/// The JetStream cases in one test: they share this file's stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_jetstream_batches_apply_together_isolate_failures_survive_lost_acks_and_replay_once() {
    let Some((_dir, bus, db, stream)) = jetstream().await else {
        return;
    };
    a_backlog_is_applied_in_few_transactions_and_a_failure_is_isolated(bus, db).await;
    drop(stream);
    let Some((_dir, bus, db, _stream)) = jetstream().await else {
        return;
    };
    a_batch_committed_but_never_acknowledged_is_applied_once_in_effect(bus, db).await;
    drop(_stream);
    let Some((_dir, bus, db, _stream)) = jetstream().await else {
        return;
    };
    a_replayed_message_is_applied_once_by_the_fixed_handler(bus, db).await;
}

/// `ListenerOptions::batch` bounds a batch: at 1 every event is a
/// transaction of its own, at 4 a backlog of 12 takes three.
#[tokio::test]
async fn a_batch_of_one_is_a_transaction_per_event() {
    a_backlog_of_12_takes(1, 12).await;
}

#[tokio::test]
async fn batches_of_four_take_a_backlog_of_12_in_three_transactions() {
    a_backlog_of_12_takes(4, 3).await;
}

async fn a_backlog_of_12_takes(batch: usize, commits: u64) {
    let (dir, bus, db) = embedded().await;
    // Polled through a handle of its own: its reads are not the
    // listener's commits.
    let reader = Db::open_sqlite(&dir.path().join("svc.db"), MIGRATIONS)
        .await
        .unwrap();
    bus.publish_batch((0..12).map(|n| item(n, "ok")).collect())
        .await
        .unwrap();
    let before = db.stats().commits;
    let service = service();
    let (trigger, signal) = shutdown::channel();
    let options = ListenerOptions { batch, ..options() };
    let tasks = Listeners::new(bus.clone(), service, options, signal)
        .applying_in(Outbox::new(db.clone(), service))
        .on_tx(apply_once)
        .into_tasks();
    wait_until(
        "the backlog is applied",
        Duration::from_secs(20),
        || async { applied(&reader).await.len() == 12 },
    )
    .await;
    trigger.fire();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(db.stats().commits - before, commits, "batch {batch}");
}

/// Work a handler asks to run after its commit (`OutboxTx::after_commit`)
/// runs once for every event applied — never for an attempt that was rolled
/// back: the batch holding a poison event registers work for all of its
/// events before it fails, and only the retries one at a time that commit
/// run theirs.
#[tokio::test]
async fn work_after_commit_runs_once_per_applied_event_and_never_for_a_rollback() {
    type Ran = Arc<std::sync::Mutex<Vec<i64>>>;
    fn apply_then_note(
        ran: &Ran,
        c: &mut OutboxTx<'_>,
        e: Item,
        ctx: &EventContext,
    ) -> Result<Outcome, ListenerError> {
        let (ran, n) = (ran.clone(), e.n);
        c.after_commit(move || ran.lock().unwrap().push(n));
        apply(&(), c, e, ctx)
    }
    let (_dir, bus, db) = embedded().await;
    bus.publish_batch(
        (0..10)
            .map(|n| item(n, if n == 5 { "poison" } else { "ok" }))
            .collect(),
    )
    .await
    .unwrap();
    let ran: Ran = Default::default();
    let service = service();
    let (trigger, signal) = shutdown::channel();
    let tasks = Listeners::new(bus.clone(), service, options(), signal)
        .applying_in(Outbox::new(db.clone(), service))
        .with_state(ran.clone())
        .on_tx(apply_then_note)
        .into_tasks();
    let durable = listener::durable_name(service, Item::SUBJECT);
    wait_until(
        "the poison item is parked",
        Duration::from_secs(30),
        || async { bus.parked(&durable).await.unwrap().len() == 1 },
    )
    .await;
    trigger.fire();
    for t in tasks {
        t.await.unwrap();
    }
    let mut ran = ran.lock().unwrap().clone();
    ran.sort();
    assert_eq!(ran, [0, 1, 2, 3, 4, 6, 7, 8, 9]);
    assert_eq!(applied(&db).await.len(), 9);
}

/// An event at schema version 2 that reads version 1 through its upcaster
/// (version 1 had `n` under another name).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
struct Renamed {
    n: i64,
    kind: String,
}

impl Event for Renamed {
    const SUBJECT: &'static str = "listenerbatch.renamed";
    const SCHEMA_VERSION: u32 = 2;
    const READS_FROM: u32 = 1;

    fn upcast(from: u32, mut payload: serde_json::Value) -> Option<serde_json::Value> {
        match from {
            1 => {
                let o = payload.as_object_mut()?;
                let n = o.remove("number")?;
                o.insert("n".into(), n);
                Some(payload)
            }
            _ => None,
        }
    }
}

/// A message as a version-1 producer published it.
fn renamed_v1(n: i64, kind: &str) -> Message {
    Message {
        subject: Renamed::SUBJECT.into(),
        id: format!("renamed-{n}"),
        headers: vec![(shared::events::SCHEMA_VERSION_HEADER.into(), "1".into())],
        payload: serde_json::to_vec(&serde_json::json!({ "number": n, "kind": kind })).unwrap(),
    }
}

/// When a batch fails, its other events are applied again one at a time:
/// read the same way as the first time, through the upcaster, so an older
/// version's event is applied on that first delivery rather than failing
/// to decode and waiting for its redelivery.
#[tokio::test]
async fn a_failing_batch_reads_its_older_events_through_the_upcaster_on_the_way_back() {
    fn apply_renamed(
        _: &(),
        c: &mut OutboxTx<'_>,
        e: Renamed,
        ctx: &EventContext,
    ) -> Result<Outcome, ListenerError> {
        if e.kind == "poison" {
            return Err(ListenerError::dependency(
                "applying a poison item",
                std::io::Error::other("this one never applies"),
            ));
        }
        // `times` records the delivery that applied it.
        c.execute(
            "INSERT INTO applied (n, times) VALUES ($1, $2)",
            &[&e.n, &i64::from(ctx.delivered)],
        )?;
        Ok(Outcome::Done)
    }
    let (_dir, bus, db) = embedded().await;
    bus.publish_batch(
        (0..6)
            .map(|n| renamed_v1(n, if n == 3 { "poison" } else { "ok" }))
            .collect(),
    )
    .await
    .unwrap();
    let service = service();
    let (trigger, signal) = shutdown::channel();
    let tasks = Listeners::new(bus.clone(), service, options(), signal)
        .applying_in(Outbox::new(db.clone(), service))
        .on_tx(apply_renamed)
        .into_tasks();
    wait_until(
        "the other five are applied",
        Duration::from_secs(20),
        || async { applied(&db).await.len() == 5 },
    )
    .await;
    assert_eq!(
        applied(&db).await,
        [(0, 1), (1, 1), (2, 1), (4, 1), (5, 1)],
        "each applied on its first delivery"
    );
    trigger.fire();
    for t in tasks {
        t.await.unwrap();
    }
}

struct Ending(bus::Subscription, usize);

impl bus::DeliverySource for Ending {
    fn next(&mut self) -> bus::BoxFuture<'_, Option<Result<bus::Delivery, BusError>>> {
        Box::pin(async move {
            if self.1 == 0 {
                return None;
            }
            self.1 -= 1;
            self.0.next().await
        })
    }

    fn ready(&mut self) -> Option<bus::Delivery> {
        None
    }
}

/// A listener whose subscription ends while the process runs joins its
/// consumer again and goes on: it stops only on the shutdown signal.
#[tokio::test]
async fn a_listener_whose_subscription_ends_joins_again() {
    let (_dir, bus, db) = embedded().await;
    // The first subscription ends (as a closed connection ends one) after
    // two deliveries; later ones are the bus's own.
    let ending = Arc::new(Rewired::new(bus.clone(), |sub, nth| match nth {
        0 => bus::Subscription::new(Box::new(Ending(sub, 2))),
        _ => sub,
    }));
    let service = service();
    let (trigger, signal) = shutdown::channel();
    let tasks = Listeners::new(ending.clone(), service, options(), signal)
        .applying_in(Outbox::new(db.clone(), service))
        .on_tx(apply_once)
        .into_tasks();
    bus.publish_batch((0..10).map(|n| item(n, "ok")).collect())
        .await
        .unwrap();
    wait_until("all ten are applied", Duration::from_secs(60), || async {
        applied(&db).await.len() == 10
    })
    .await;
    assert!(
        ending.subscribed.load(std::sync::atomic::Ordering::SeqCst) >= 2,
        "joined again"
    );
    trigger.fire();
    for t in tasks {
        t.await.unwrap();
    }
}
