//! The outbox relay and typed listeners, on the embedded bus.
//!
//! On virtual time (Tokio's paused clock, which the database calls hold
//! still while they run): relay polls, retry delays and "nothing more
//! arrives" windows cost no real time, and "promptly" means before the
//! next poll, exactly. The test of relays sharing a PostgreSQL outbox runs
//! in real time (network I/O, and several worker threads).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bus::contract::next_within;
use bus::embedded::EmbeddedBus;
use bus::listener::{self, EventContext, ListenerError, ListenerOptions, Listeners, Outcome};
use bus::outbox::{OUTBOX_TABLE_SQL, Outbox};
use bus::{Bus, ConsumerConfig, Message};
use serde::{Deserialize, Serialize};
use shared::events::Event;
use shared::ids::UserId;
use shared::shutdown;
use shared::time::Clock;
use shared::trace::TraceContext;
use store::{Db, Migration, StoreError};

static MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "outbox",
    sql: OUTBOX_TABLE_SQL,
}];

/// The event these tests publish and consume: the bus knows no product, so
/// its tests bring their own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
struct UserCreated {
    id: UserId,
    email: String,
}
shared::event!(UserCreated, "user.created");

struct Fixture {
    _dir: tempfile::TempDir,
    db: Db,
    bus: Arc<dyn Bus>,
    outbox: Outbox,
    clock: Clock,
}

/// A service database, its outbox and an embedded bus, on virtual time.
async fn fixture() -> Fixture {
    tokio::time::pause();
    store::testing::hold_paused_clock();
    let clock = Clock::tokio();
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_sqlite(&dir.path().join("svc.db"), MIGRATIONS)
        .await
        .unwrap();
    let bus: Arc<dyn Bus> = Arc::new(
        EmbeddedBus::open_with_clock(&dir.path().join("bus.db"), clock.clone())
            .await
            .unwrap(),
    );
    let outbox = Outbox::new(db.clone(), "test");
    Fixture {
        _dir: dir,
        db,
        bus,
        outbox,
        clock,
    }
}

fn user(email: &str) -> UserCreated {
    UserCreated {
        id: UserId::new(),
        email: email.into(),
    }
}

async fn enqueue(f: &Fixture, event: UserCreated) {
    let now = f.clock.now();
    f.outbox
        .write(move |c| c.enqueue(&event, &TraceContext::new_root(), now))
        .await
        .unwrap();
}

#[tokio::test]
async fn the_relay_publishes_committed_events_with_type_and_trace_headers_then_forgets_them() {
    let f = fixture().await;
    let mut sub = f
        .bus
        .subscribe(ConsumerConfig::new("c", "user.>"))
        .await
        .unwrap();
    enqueue(&f, user("a@b.co")).await;
    assert_eq!(f.outbox.relay_once(&f.bus).await.unwrap(), 1);
    let d = next_within(&mut sub, Duration::from_secs(5))
        .await
        .expect("published");
    let event: UserCreated = serde_json::from_slice(&d.message.payload).unwrap();
    assert_eq!(event.email, "a@b.co");
    assert_eq!(
        d.message.header("Ticketing-Event"),
        Some(UserCreated::SUBJECT)
    );
    assert!(TraceContext::parse(d.message.header("traceparent").unwrap()).is_some());
    assert_eq!(f.outbox.pending().await.unwrap(), 0);
}

#[tokio::test]
async fn an_event_written_in_a_rolled_back_transaction_is_never_published() {
    let f = fixture().await;
    let event = user("a@b.co");
    let now = f.clock.now();
    let _ = f
        .outbox
        .write(move |c| -> Result<(), StoreError> {
            c.enqueue(&event, &TraceContext::new_root(), now)?;
            Err(StoreError::new(
                store::StoreErrorKind::Other,
                "the state change failed",
            ))
        })
        .await;
    assert_eq!(f.outbox.pending().await.unwrap(), 0);
    assert_eq!(f.outbox.relay_once(&f.bus).await.unwrap(), 0);
}

#[tokio::test]
async fn a_crash_between_publish_and_delete_publishes_nothing_twice() {
    let f = fixture().await;
    enqueue(&f, user("a@b.co")).await;
    // Simulate a relay that published and died before deleting the row.
    let (id, subject, payload): (String, String, String) =
        f.db.read(|c| {
            let r = c
                .query("SELECT id, subject, payload FROM outbox", &[])?
                .remove(0);
            Ok::<_, StoreError>((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .await
        .unwrap();
    f.bus
        .publish(Message {
            subject,
            id,
            headers: vec![],
            payload: payload.into_bytes(),
        })
        .await
        .unwrap();
    // The restarted relay publishes the row again; the bus drops the copy.
    assert_eq!(f.outbox.relay_once(&f.bus).await.unwrap(), 1);
    let mut sub = f
        .bus
        .subscribe(ConsumerConfig::new("late", "user.created"))
        .await
        .unwrap();
    next_within(&mut sub, Duration::from_secs(5))
        .await
        .expect("one copy")
        .ack()
        .await
        .unwrap();
    assert!(
        next_within(&mut sub, Duration::from_millis(500))
            .await
            .is_none(),
        "published twice"
    );
}

#[tokio::test]
async fn the_relay_task_publishes_soon_after_a_wake_and_drains_on_shutdown() {
    let f = fixture().await;
    let (trigger, signal) = shutdown::channel();
    let relay = f.outbox.spawn_relay(f.bus.clone(), signal);
    let mut sub = f
        .bus
        .subscribe(ConsumerConfig::new("c", "user.created"))
        .await
        .unwrap();
    enqueue(&f, user("one@b.co")).await;
    f.outbox.wake();
    next_within(&mut sub, Duration::from_millis(800))
        .await
        .expect("published promptly")
        .ack()
        .await
        .unwrap();
    trigger.fire();
    enqueue(&f, user("two@b.co")).await; // committed while shutting down
    relay.await.unwrap();
    assert_eq!(f.outbox.pending().await.unwrap(), 0, "drained on shutdown");
}

#[tokio::test]
async fn a_listener_gets_typed_events_retries_early_ones_and_parks_undecodable_ones() {
    let f = fixture().await;
    let (trigger, signal) = shutdown::channel();
    let seen = Arc::new(Mutex::new(Vec::<(String, u32)>::new()));
    let handler = |seen: Arc<Mutex<Vec<(String, u32)>>>, e: UserCreated, ctx: EventContext| async move {
        seen.lock().unwrap().push((e.email.clone(), ctx.delivered));
        // The first delivery of "early" pretends its predecessor is missing.
        if e.email == "early@b.co" && ctx.delivered == 1 {
            return Ok(Outcome::NotYet("predecessor missing".into()));
        }
        Ok::<_, ListenerError>(Outcome::Done)
    };
    let tasks = Listeners::new(f.bus.clone(), "svc", ListenerOptions::default(), signal)
        .with_state(seen.clone())
        .on(handler)
        .into_tasks();
    enqueue(&f, user("early@b.co")).await;
    f.outbox.relay_once(&f.bus).await.unwrap();
    f.bus
        .publish(Message {
            subject: UserCreated::SUBJECT.into(),
            id: "garbage".into(),
            headers: vec![],
            payload: b"{\"nope\":true}".to_vec(),
        })
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while seen.lock().unwrap().len() < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        *seen.lock().unwrap(),
        [("early@b.co".to_string(), 1), ("early@b.co".to_string(), 2)]
    );
    let parked = f
        .bus
        .parked(&listener::durable_name("svc", UserCreated::SUBJECT))
        .await
        .unwrap();
    assert_eq!(parked.len(), 1);
    assert!(
        parked[0].reason.contains("undecodable"),
        "{}",
        parked[0].reason
    );
    trigger.fire();
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn an_event_written_through_the_outbox_is_published_without_waiting_for_the_poll() {
    let f = fixture().await;
    let (trigger, signal) = shutdown::channel();
    let relay = f.outbox.spawn_relay(f.bus.clone(), signal);
    let mut sub = f
        .bus
        .subscribe(ConsumerConfig::new("c", "user.created"))
        .await
        .unwrap();
    // Let the relay go idle first, so only a wake-up (not the 1 s poll) can be quick.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let event = user("fast@b.co");
    let now = f.clock.now();
    f.outbox
        .write(move |c| c.enqueue(&event, &TraceContext::new_root(), now))
        .await
        .unwrap();
    let start = tokio::time::Instant::now();
    next_within(&mut sub, Duration::from_millis(500))
        .await
        .expect("published on commit")
        .ack()
        .await
        .unwrap();
    assert!(start.elapsed() < Duration::from_millis(500));
    trigger.fire();
    relay.await.unwrap();
}

/// Replicas on one PostgreSQL database each run a relay over the same outbox:
/// every row goes out exactly once, in the order it was written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_of_replicas_sharing_a_postgres_outbox_publish_each_row_once_in_order() {
    let Some(schema) = store::testing::postgres_schema().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bus: Arc<dyn Bus> = Arc::new(EmbeddedBus::open(&dir.path().join("bus.db")).await.unwrap());
    let mut sub = bus
        .subscribe(ConsumerConfig::new("c", "user.created"))
        .await
        .unwrap();
    let db = Db::open_postgres(&schema.url, 4, MIGRATIONS).await.unwrap();
    let service = "relay-replicas-test";
    let (trigger, signal) = shutdown::channel();
    let mut relays = Vec::new();
    let mut replicas = Vec::new();
    for _ in 0..3 {
        // Each replica has its own pool, as separate processes would.
        let db = Db::open_postgres(&schema.url, 4, MIGRATIONS).await.unwrap();
        let outbox = Outbox::new(db, service);
        relays.push(outbox.spawn_relay(bus.clone(), signal.clone()));
        replicas.push(outbox);
    }
    let total = 600;
    let mut written = Vec::new();
    for i in 0..total {
        let event = user(&format!("u{i}@b.co"));
        let outbox = &replicas[i % replicas.len()];
        let id = outbox
            .write(move |c| c.enqueue(&event, &TraceContext::new_root(), Clock::System.now()))
            .await
            .unwrap();
        written.push(id.to_string());
    }
    let mut received = Vec::new();
    while received.len() < total {
        let d = next_within(&mut sub, Duration::from_secs(10))
            .await
            .expect("every row published");
        received.push(d.message.id.clone());
        d.ack().await.unwrap();
    }
    trigger.fire();
    for r in relays {
        r.await.unwrap();
    }
    assert_eq!(received, written, "each row once, in write order");
    let published = shared::metrics::get(
        "events_published_total",
        &[("service", service), ("subject", "user.created")],
    );
    assert_eq!(published, total as u64, "no relay published a row twice");
    assert_eq!(Outbox::new(db, service).pending().await.unwrap(), 0);
}

/// A service's entry in the event catalogue must say what its listeners
/// consume: starting listeners for anything else is refused at once.
#[tokio::test]
#[should_panic(expected = "says it consumes")]
async fn listeners_for_undeclared_subjects_are_refused() {
    let f = fixture().await;
    let (_trigger, signal) = shutdown::channel();
    let _tasks = listener::Listeners::new(f.bus.clone(), "svc", ListenerOptions::default(), signal)
        .declared(&["order.created"])
        .on(|_, _: UserCreated, _| async { Ok(Outcome::Done) })
        .into_tasks();
}

#[tokio::test]
async fn listeners_for_exactly_the_declared_subjects_start() {
    let f = fixture().await;
    let (trigger, signal) = shutdown::channel();
    let tasks = listener::Listeners::new(f.bus.clone(), "svc", ListenerOptions::default(), signal)
        .declared(&[UserCreated::SUBJECT])
        .on(|_, _: UserCreated, _| async { Ok(Outcome::Done) })
        .into_tasks();
    assert_eq!(tasks.len(), 2, "one member and the lag reporter");
    trigger.fire();
    for t in tasks {
        t.await.unwrap();
    }
}

/// And what its outbox publishes: in debug builds (every test) the relay
/// stops at an undeclared subject.
#[cfg(debug_assertions)]
#[tokio::test]
#[should_panic(expected = "does not declare")]
async fn the_relay_refuses_a_subject_its_service_does_not_declare() {
    let f = fixture().await;
    let outbox = Outbox::new(f.db.clone(), "svc").declaring(&["order.created"]);
    enqueue(&f, user("a@example.com")).await;
    let _ = outbox.relay_once(&f.bus).await;
}

/// Records the fields of every span opened while it is the subscriber.
#[derive(Clone, Default)]
struct SpanCapture(Arc<Mutex<Vec<std::collections::HashMap<String, String>>>>);

struct Fields<'a>(&'a mut std::collections::HashMap<String, String>);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(
            field.name().to_owned(),
            format!("{value:?}").trim_matches('"').to_owned(),
        );
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for SpanCapture {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut fields = std::collections::HashMap::new();
        fields.insert("name".to_owned(), attrs.metadata().name().to_owned());
        fields.insert("id".to_owned(), id.into_u64().to_string());
        attrs.record(&mut Fields(&mut fields));
        self.0.lock().unwrap().push(fields);
    }

    /// Fields recorded after creation (the trace ids are).
    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let id = id.into_u64().to_string();
        let mut spans = self.0.lock().unwrap();
        if let Some(fields) = spans.iter_mut().rev().find(|f| f["id"] == id) {
            values.record(&mut Fields(fields));
        }
    }
}

/// The consumer's span is in the producer's trace: a child of the span that
/// wrote the event, named by the OpenTelemetry messaging conventions.
#[tokio::test]
async fn the_consumers_span_carries_the_producers_trace_id() {
    use tracing_subscriber::layer::SubscriberExt;
    let capture = SpanCapture::default();
    // Global: the outbox row is written on the database's own thread. The
    // only test here that sets one; spans of other tests are told apart by
    // their trace id.
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(capture.clone()))
        .unwrap();
    let f = fixture().await;
    let producer = TraceContext::new_root();
    let event = user("traced@example.com");
    let now = f.clock.now();
    f.outbox
        .write(move |c| c.enqueue(&event, &producer, now))
        .await
        .unwrap();
    f.outbox.relay_once(&f.bus).await.unwrap();
    let (seen, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (trigger, signal) = shutdown::channel();
    let tasks = Listeners::new(f.bus.clone(), "svc", ListenerOptions::default(), signal)
        .with_state(seen)
        .on(|seen: tokio::sync::mpsc::UnboundedSender<_>, _: UserCreated, ctx: EventContext| async move {
            let _ = seen.send(ctx.trace);
            Ok(Outcome::Done)
        })
        .into_tasks();
    // A listener applying its events in batches (on_tx) makes the same span
    // for each of them.
    let (seen_in_tx, mut rx_tx) = tokio::sync::mpsc::unbounded_channel();
    let (trigger_tx, signal_tx) = shutdown::channel();
    let tasks_tx = Listeners::new(f.bus.clone(), "svcb", ListenerOptions::default(), signal_tx)
        .applying_in(f.outbox.clone())
        .with_state(seen_in_tx)
        .on_tx(
            |seen: &tokio::sync::mpsc::UnboundedSender<_>,
             _: &mut bus::outbox::OutboxTx<'_>,
             _: UserCreated,
             ctx: &EventContext| {
                let _ = seen.send(ctx.trace);
                Ok(Outcome::Done)
            },
        )
        .into_tasks();
    let handled = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        handled.trace_id, producer.trace_id,
        "the handler continues the trace"
    );
    let handled_in_tx = tokio::time::timeout(Duration::from_secs(5), rx_tx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(handled_in_tx.trace_id, producer.trace_id);
    trigger.fire();
    trigger_tx.fire();
    for t in tasks.into_iter().chain(tasks_tx) {
        let _ = t.await;
    }
    let spans = capture.0.lock().unwrap();
    let consumer_span = |group: &str| {
        spans.iter().find(|s| {
            s["name"] == "process"
                && s.get("trace_id") == Some(&producer.trace_id_hex())
                && s.get("messaging.consumer.group.name").map(String::as_str) == Some(group)
        })
    };
    let process = consumer_span("svc-user-created").expect("a consumer span");
    assert_eq!(process["trace_id"], producer.trace_id_hex());
    assert_eq!(process["span_id"], handled.span_id_hex());
    assert_eq!(process["otel.kind"], "consumer");
    assert_eq!(process["messaging.destination.name"], "user.created");
    assert_eq!(process["messaging.consumer.group.name"], "svc-user-created");
    // The event's "create" span is a child of the writer's and the parent
    // of the consumer's.
    let create = spans
        .iter()
        .find(|s| s["name"] == "create" && s.get("trace_id") == Some(&producer.trace_id_hex()))
        .expect("a producer span");
    assert_eq!(create["otel.kind"], "producer");
    assert_eq!(create["trace_id"], producer.trace_id_hex());
    assert_eq!(create["parent_span_id"], producer.span_id_hex());
    assert_eq!(
        process["parent_span_id"], create["span_id"],
        "the producer's span is the parent"
    );
    let batched =
        consumer_span("svcb-user-created").expect("a consumer span of the batched listener");
    assert_eq!(batched["trace_id"], producer.trace_id_hex());
    assert_eq!(batched["span_id"], handled_in_tx.span_id_hex());
    assert_eq!(batched["parent_span_id"], create["span_id"]);
}

/// Version 2 of an event whose version 1 called the field `name`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
struct ProfileChanged {
    display_name: String,
}

impl Event for ProfileChanged {
    const SUBJECT: &'static str = "profile.changed";
    const SCHEMA_VERSION: u32 = 2;
    const READS_FROM: u32 = 1;

    fn upcast(from: u32, mut payload: serde_json::Value) -> Option<serde_json::Value> {
        (from == 1).then_some(())?;
        let o = payload.as_object_mut()?;
        let name = o.remove("name")?;
        o.insert("displayName".into(), name);
        Some(payload)
    }
}

/// A listener reads every version its event type reads: a recorded
/// version-1 payload arrives upcast, the current one as it is, and one of
/// a version it does not know is parked saying so.
#[tokio::test]
async fn a_listener_reads_an_older_schema_version_through_the_upcaster() {
    let f = fixture().await;
    let (trigger, signal) = shutdown::channel();
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let tasks = Listeners::new(f.bus.clone(), "svc", ListenerOptions::default(), signal)
        .with_state(seen.clone())
        .on(
            |seen: Arc<Mutex<Vec<String>>>, e: ProfileChanged, _: EventContext| async move {
                seen.lock().unwrap().push(e.display_name);
                Ok::<_, ListenerError>(Outcome::Done)
            },
        )
        .into_tasks();
    for (id, version, payload) in [
        ("v1", "1", &br#"{"name":"Ann"}"#[..]),
        ("v2", "2", &br#"{"displayName":"Bob"}"#[..]),
        ("v3", "3", &br#"{"displayName":"Cy"}"#[..]),
    ] {
        f.bus
            .publish(Message {
                subject: ProfileChanged::SUBJECT.into(),
                id: id.into(),
                headers: vec![(shared::events::SCHEMA_VERSION_HEADER.into(), version.into())],
                payload: payload.to_vec(),
            })
            .await
            .unwrap();
    }
    let durable = listener::durable_name("svc", ProfileChanged::SUBJECT);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while (seen.lock().unwrap().len() < 2 || f.bus.parked(&durable).await.unwrap().is_empty())
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(*seen.lock().unwrap(), ["Ann", "Bob"]);
    let parked = f.bus.parked(&durable).await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].id, "v3");
    assert!(
        parked[0].reason.contains("schema version 3 is newer"),
        "{}",
        parked[0].reason
    );
    trigger.fire();
    for t in tasks {
        t.await.unwrap();
    }
}

/// A bus that can go away: while `away` is set it refuses to publish and to
/// let a consumer be joined, as a NATS cluster does while it elects a
/// leader or every node a client knows is down.
struct Away {
    inner: Arc<dyn Bus>,
    away: std::sync::atomic::AtomicBool,
}

impl Away {
    fn check(&self) -> Result<(), bus::BusError> {
        if self.away.load(std::sync::atomic::Ordering::SeqCst) {
            Err(bus::BusError::new(
                bus::BusErrorKind::Unavailable,
                "no responders",
            ))
        } else {
            Ok(())
        }
    }

    fn set(&self, away: bool) {
        self.away.store(away, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Bus for Away {
    fn publish(&self, msg: Message) -> bus::BoxFuture<'_, Result<bus::PublishAck, bus::BusError>> {
        Box::pin(async move {
            self.check()?;
            self.inner.publish(msg).await
        })
    }

    fn subscribe(
        &self,
        config: ConsumerConfig,
    ) -> bus::BoxFuture<'_, Result<bus::Subscription, bus::BusError>> {
        Box::pin(async move {
            self.check()?;
            self.inner.subscribe(config).await
        })
    }

    fn rewind(&self, config: &ConsumerConfig) -> bus::BoxFuture<'_, Result<(), bus::BusError>> {
        self.inner.rewind(config)
    }

    fn watch(
        &self,
        filter_subject: &str,
        since: shared::time::Timestamp,
    ) -> bus::BoxFuture<'_, Result<bus::Watch, bus::BusError>> {
        self.inner.watch(filter_subject, since)
    }

    fn parked_messages(
        &self,
        filter: &bus::ParkedFilter,
    ) -> bus::BoxFuture<'_, Result<Vec<bus::ParkedMessage>, bus::BusError>> {
        self.inner.parked_messages(filter)
    }

    fn replay_parked(
        &self,
        record: u64,
    ) -> bus::BoxFuture<'_, Result<bus::Resolution, bus::BusError>> {
        self.inner.replay_parked(record)
    }

    fn discard_parked(
        &self,
        record: u64,
        reason: String,
    ) -> bus::BoxFuture<'_, Result<bus::Resolution, bus::BusError>> {
        self.inner.discard_parked(record, reason)
    }

    fn check_ready(&self) -> bus::BoxFuture<'_, Result<(), bus::BusError>> {
        self.inner.check_ready()
    }
}

/// How long after `since` `done` first held (polled every 10 ms of
/// virtual time, for at most a minute).
async fn until(since: tokio::time::Instant, done: impl Fn() -> bool) -> Duration {
    while !done() {
        assert!(since.elapsed() < Duration::from_secs(60), "never happened");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    since.elapsed()
}

/// A bus away for a minute (a NATS cluster recovering) must not leave a
/// service unready, or its events unpublished, long after it is back: the
/// listeners retry joining, and the relay publishing, at least once a
/// second however long it was away.
#[tokio::test]
async fn listeners_join_and_the_relay_publishes_within_a_second_of_the_bus_coming_back() {
    let f = fixture().await;
    let away = Arc::new(Away {
        inner: f.bus.clone(),
        away: true.into(),
    });
    let bus: Arc<dyn Bus> = away.clone();
    let (trigger, signal) = shutdown::channel();
    let health = listener::ListenerHealth::default();
    let handled = Arc::new(Mutex::new(Vec::<String>::new()));
    let tasks = Listeners::new(
        bus.clone(),
        "svc",
        ListenerOptions::default(),
        signal.clone(),
    )
    .reporting_to(health.clone())
    .with_state(handled.clone())
    .on(
        |handled: Arc<Mutex<Vec<String>>>, e: UserCreated, _| async move {
            handled.lock().unwrap().push(e.email);
            Ok::<_, ListenerError>(Outcome::Done)
        },
    )
    .into_tasks();
    let relay = f.outbox.spawn_relay(bus, signal);
    enqueue(&f, user("waiting@b.co")).await;
    f.outbox.wake();
    let start = tokio::time::Instant::now();
    until(start, || health.check().is_err()).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(health.check().is_err(), "joined a bus that is away");
    assert_eq!(f.outbox.pending().await.unwrap(), 1);

    away.set(false);
    let back = tokio::time::Instant::now();
    let joined = until(back, || health.check().is_ok()).await;
    let published = {
        while f.outbox.pending().await.unwrap() > 0 {
            assert!(back.elapsed() < Duration::from_secs(60), "never published");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        back.elapsed()
    };
    assert!(
        joined <= Duration::from_millis(1100),
        "joined {joined:?} after the bus came back"
    );
    assert!(
        published <= Duration::from_millis(1100),
        "published {published:?} after the bus came back"
    );
    until(back, || !handled.lock().unwrap().is_empty()).await;
    assert_eq!(*handled.lock().unwrap(), ["waiting@b.co"]);
    trigger.fire();
    relay.await.unwrap();
    for t in tasks {
        t.await.unwrap();
    }
}
