//! The `events` scenario: the bus through the outbox path, each figure
//! beside its limit, measured in the same run (in this process: the bus
//! library with its real engines, not a deployment's HTTP API).
//!
//! On JetStream (`--bus nats`):
//! (a) Transport: publish N messages in pipelined batches of 256 and consume
//!     them with a no-op handler (double ack, as the bus does) — through our
//!     `Bus` interface, and through raw `async-nats` with the same payload
//!     size, batches and ack mode. Then latency: one awaited publish at a time,
//!     publish → handled, p50 and p99. Rounds alternate raw / ours.
//! (b) Full path: W writers each commit a state change with its outbox row;
//!     the relay publishes; a listener (C members) copies each event in a
//!     consumer transaction, the events each member has in hand together
//!     (`--batch`, 1 = a transaction per event) — versus W writers
//!     committing plain transactions on the same PostgreSQL.
//!
//! Embedded (`--bus embedded`): the full path on SQLite and the embedded
//! bus, beside raw rusqlite transactions of the same shape.
//!
//! It starts its own `nats-server` (`--nats-server PATH`) unless given
//! `--nats-url` (use a server nothing else uses).

use anyhow::Context as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use store::Conn as _;

use async_nats::jetstream::{self, consumer::pull, stream};
use bus::jetstream::JetStreamBus;
use bus::listener::{self, ListenerOptions, Outcome};
use bus::outbox::Outbox;
use bus::{Bus, ConsumerConfig, Message};
use futures_util::StreamExt;
use marketplace_events::UserCreated;
use provision::local::{Logs, NatsServer};
use shared::ids::UserId;
use shared::shutdown;
use shared::time::Clock;
use shared::trace::TraceContext;
use store::scratch::ScratchSchema;
use store::{Db, Migration};

use crate::report::{Comparison, Figure};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// nats: JetStream and PostgreSQL; embedded: the embedded bus and SQLite.
    #[arg(long, default_value = "nats")]
    pub bus: String,
    /// Messages per transport round.
    #[arg(long, default_value_t = 20_000)]
    messages: usize,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 256)]
    payload: usize,
    /// Transport rounds of each kind (the median is reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Messages in the latency phase.
    #[arg(long, default_value_t = 5_000)]
    latency_messages: usize,
    /// Events in the full-path phase (and transactions in its limit).
    #[arg(long, default_value_t = 10_000)]
    events: usize,
    /// Concurrent writers in the full-path phase and its limit.
    #[arg(long, default_value_t = 8)]
    writers: usize,
    /// Members of the consumer in the full-path phase.
    #[arg(long, default_value_t = 8)]
    consumers: usize,
    /// The most events a consumer member applies in one transaction in the
    /// full-path phase (`1`: a transaction per event, as before batching).
    #[arg(long, default_value_t = ListenerOptions::default().batch)]
    batch: usize,
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    database_url: String,
    #[arg(long, default_value = "nats-server")]
    nats_server: String,
    #[arg(long)]
    nats_url: Option<String>,
}

/// Runs the phases; returns the comparisons and figures for the report.
pub async fn run(args: &Args) -> anyhow::Result<(Vec<Comparison>, Vec<Figure>)> {
    if args.bus == "embedded" {
        return embedded(args).await;
    }
    if args.bus != "nats" {
        anyhow::bail!("--bus {}: nats or embedded", args.bus);
    }
    let dir = std::env::temp_dir().join(format!("ticketing-bench-{}", std::process::id()));
    let mut own = None;
    let url = match &args.nats_url {
        Some(u) => u.clone(),
        None => {
            let server = NatsServer::start(&args.nats_server, &dir, Logs::Inherit)
                .context("start nats-server, or pass --nats-url")?;
            let url = server.url();
            own = Some(server);
            url
        }
    };
    let client = connect(&url).await;
    let js = jetstream::new(client.clone());
    eprintln!(
        "transport: {} messages of {} bytes, batches of 256, double acks, {} rounds each",
        args.messages, args.payload, args.rounds
    );
    let (mut raw_rates, mut our_rates) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        raw_rates.push(raw_throughput(&js, round, args.messages, args.payload).await);
        our_rates.push(our_throughput(&client, round, args.messages, args.payload).await);
    }
    let (raw, ours) = (median(&mut raw_rates), median(&mut our_rates));
    eprintln!(
        "  rounds: raw {} / ours {}",
        list(&raw_rates),
        list(&our_rates)
    );
    let mut comparisons = vec![Comparison::new(
        "transport: our Bus, no-op handler (median)",
        ours,
        "raw async-nats JetStream, same batches and acks",
        raw,
        "msg/s",
        Some(("≥", 0.8)),
    )];

    // Tails are noisy on a shared machine: rounds alternate raw / ours and
    // the median round's percentiles are reported.
    let n = args.latency_messages;
    let (mut raw_rounds, mut our_rounds) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        raw_rounds.push(raw_latency(&js, round, n, args.payload).await);
        our_rounds.push(our_latency(&client, round, n, args.payload).await);
    }
    let median_pair = |v: &mut Vec<(f64, f64)>| {
        v.sort_by(|a, b| a.1.total_cmp(&b.1));
        v[v.len() / 2]
    };
    eprintln!(
        "  latency p99 rounds (µs): raw {} / ours {}",
        list(&raw_rounds.iter().map(|r| r.1).collect::<Vec<_>>()),
        list(&our_rounds.iter().map(|r| r.1).collect::<Vec<_>>())
    );
    let (raw_lat, our_lat) = (median_pair(&mut raw_rounds), median_pair(&mut our_rounds));
    comparisons.push(Comparison::new(
        "publish → handled p99, our Bus, one at a time",
        our_lat.1,
        "the same, raw async-nats",
        raw_lat.1,
        "µs",
        Some(("≤", 2.0)),
    ));
    let mut figures = vec![
        Figure {
            what: "publish → handled p50, our Bus".into(),
            value: our_lat.0,
            unit: "µs".into(),
            goal: None,
            met: None,
        },
        Figure {
            what: "publish → handled p50, raw async-nats".into(),
            value: raw_lat.0,
            unit: "µs".into(),
            goal: None,
            met: None,
        },
    ];

    eprintln!(
        "full path: {} events, {} writers, {} consumer members, PostgreSQL",
        args.events, args.writers, args.consumers
    );
    let limit = raw_store_rate(args).await;
    let bus = JetStreamBus::from_client(client.clone());
    provision::ensure(
        bus.client(),
        &provision::Spec::built_in(&marketplace_events::STREAMS),
    )
    .await?;
    let full = postgres_full_path(args, &bus, true).await;
    let no_tx = postgres_full_path(args, &bus, false).await;
    comparisons.push(Comparison::new(
        "write + outbox → relay → JetStream → consumer tx",
        full,
        "plain one-row PostgreSQL transactions, same writers",
        limit,
        "events/s",
        Some(("≥", 0.5)),
    ));
    figures.push(Figure {
        what: "the same with a no-op consumer (no consumer tx)".into(),
        value: no_tx,
        unit: "events/s".into(),
        goal: None,
        met: None,
    });
    drop(js);
    drop(client);
    drop(own);
    let _ = std::fs::remove_dir_all(&dir);
    Ok((comparisons, figures))
}

/// The full path on SQLite and the embedded bus, beside raw rusqlite
/// transactions of the same shape (an item row and an outbox row).
async fn embedded(args: &Args) -> anyhow::Result<(Vec<Comparison>, Vec<Figure>)> {
    let limit = crate::baseline::sqlite_order_tx(Duration::from_secs(3))?;
    let dir = tempfile::tempdir()?;
    let producer = Db::open_sqlite(&dir.path().join("producer.db"), PRODUCER).await?;
    let consumer = Db::open_sqlite(&dir.path().join("consumer.db"), CONSUMER).await?;
    let bus: Arc<dyn Bus> =
        Arc::new(bus::embedded::EmbeddedBus::open(&dir.path().join("bus.db")).await?);
    eprintln!(
        "full path: {} events, {} writers, {} consumer members, SQLite + embedded bus",
        args.events, args.writers, args.consumers
    );
    let full = full_path_rate(args, producer, consumer, bus, true).await;
    Ok((
        vec![Comparison::new(
            "write + outbox → relay → embedded bus → consumer tx",
            full,
            "raw SQLite row + outbox row transactions (rusqlite, own thread)",
            limit,
            "events/s",
            Some(("≥", 0.5)),
        )],
        Vec::new(),
    ))
}

async fn connect(url: &str) -> async_nats::Client {
    for _ in 0..200 {
        if let Ok(c) = async_nats::connect(url).await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("cannot connect to {url}");
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn list(v: &[f64]) -> String {
    v.iter()
        .map(|r| format!("{r:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A payload of `size` bytes starting with the send time.
fn payload(size: usize, epoch: Instant) -> Vec<u8> {
    let mut p = vec![b'x'; size.max(16)];
    p[..16].copy_from_slice(&(epoch.elapsed().as_nanos() as u64).to_be_bytes().repeat(2));
    p
}

fn sent_at(p: &[u8]) -> u64 {
    u64::from_be_bytes(p[..8].try_into().unwrap())
}

async fn make_stream(js: &jetstream::Context, name: &str) -> String {
    let subject = format!("{}.x", name.to_lowercase());
    js.create_stream(stream::Config {
        name: name.into(),
        subjects: vec![subject.clone()],
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .expect("create stream");
    subject
}

async fn raw_consumer(js: &jetstream::Context, stream: &str) -> jetstream::consumer::PullConsumer {
    js.get_stream(stream)
        .await
        .unwrap()
        .create_consumer(pull::Config {
            durable_name: Some("c".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .unwrap()
}

/// Consumes `n` with raw async-nats, double-acking each; returns latencies (ns).
fn spawn_raw_consume(
    consumer: jetstream::consumer::PullConsumer,
    n: usize,
    epoch: Instant,
) -> tokio::task::JoinHandle<Vec<u64>> {
    tokio::spawn(async move {
        let mut msgs = consumer
            .stream()
            .max_messages_per_batch(64)
            .expires(Duration::from_secs(5))
            .messages()
            .await
            .unwrap();
        let mut lat = Vec::with_capacity(n);
        while lat.len() < n {
            let m = msgs.next().await.unwrap().unwrap();
            m.double_ack().await.unwrap();
            lat.push((epoch.elapsed().as_nanos() as u64).saturating_sub(sent_at(&m.payload)));
        }
        lat
    })
}

/// Consumes `n` through our `Bus`, acking each; returns latencies (ns).
fn spawn_our_consume(
    bus: JetStreamBus,
    subject: String,
    n: usize,
    epoch: Instant,
) -> tokio::task::JoinHandle<Vec<u64>> {
    tokio::spawn(async move {
        let mut sub = bus
            .subscribe(ConsumerConfig::new("c", subject))
            .await
            .unwrap();
        let mut lat = Vec::with_capacity(n);
        while lat.len() < n {
            let d = sub.next().await.unwrap().unwrap();
            let sent = sent_at(&d.message.payload);
            d.ack().await.unwrap();
            lat.push((epoch.elapsed().as_nanos() as u64).saturating_sub(sent));
        }
        lat
    })
}

async fn raw_throughput(js: &jetstream::Context, round: usize, n: usize, size: usize) -> f64 {
    let name = format!("RAWT{round}");
    let subject = make_stream(js, &name).await;
    let consumer = raw_consumer(js, &name).await;
    let epoch = Instant::now();
    let consume = spawn_raw_consume(consumer, n, epoch);
    for chunk in (0..n).collect::<Vec<_>>().chunks(256) {
        let mut acks = Vec::with_capacity(chunk.len());
        for i in chunk {
            let publish = jetstream::message::PublishMessage::build()
                .payload(payload(size, epoch).into())
                .message_id(format!("raw-{round}-{i}"));
            acks.push(js.send_publish(subject.clone(), publish).await.unwrap());
        }
        for a in acks {
            a.await.unwrap();
        }
    }
    consume.await.unwrap();
    let rate = n as f64 / epoch.elapsed().as_secs_f64();
    js.delete_stream(&name).await.unwrap();
    rate
}

fn message(subject: &str, id: String, size: usize, epoch: Instant) -> Message {
    Message {
        subject: subject.to_owned(),
        id,
        headers: vec![],
        payload: payload(size, epoch),
    }
}

async fn our_throughput(client: &async_nats::Client, round: usize, n: usize, size: usize) -> f64 {
    let bus = JetStreamBus::from_client(client.clone());
    let name = format!("OURT{round}");
    let subject = make_stream(bus.context(), &name).await;
    let epoch = Instant::now();
    let consume = spawn_our_consume(bus.clone(), subject.clone(), n, epoch);
    for chunk in (0..n).collect::<Vec<_>>().chunks(256) {
        let batch = chunk
            .iter()
            .map(|i| message(&subject, format!("our-{round}-{i}"), size, epoch))
            .collect();
        bus.publish_batch(batch).await.unwrap();
    }
    consume.await.unwrap();
    let rate = n as f64 / epoch.elapsed().as_secs_f64();
    bus.context().delete_stream(&name).await.unwrap();
    rate
}

fn percentiles(mut lat: Vec<u64>) -> (f64, f64) {
    lat.sort_unstable();
    let at = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)] as f64 / 1000.0;
    (at(0.50), at(0.99))
}

async fn raw_latency(js: &jetstream::Context, round: usize, n: usize, size: usize) -> (f64, f64) {
    let name = format!("RAWL{round}");
    let subject = make_stream(js, &name).await;
    let consumer = raw_consumer(js, &name).await;
    let epoch = Instant::now();
    let consume = spawn_raw_consume(consumer, n, epoch);
    for i in 0..n {
        let publish = jetstream::message::PublishMessage::build()
            .payload(payload(size, epoch).into())
            .message_id(format!("rawl-{round}-{i}"));
        js.send_publish(subject.clone(), publish)
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let p = percentiles(consume.await.unwrap());
    js.delete_stream(&name).await.unwrap();
    p
}

async fn our_latency(
    client: &async_nats::Client,
    round: usize,
    n: usize,
    size: usize,
) -> (f64, f64) {
    let bus = JetStreamBus::from_client(client.clone());
    let name = format!("OURL{round}");
    let subject = make_stream(bus.context(), &name).await;
    let epoch = Instant::now();
    let consume = spawn_our_consume(bus.clone(), subject.clone(), n, epoch);
    for i in 0..n {
        bus.publish(message(&subject, format!("ourl-{round}-{i}"), size, epoch))
            .await
            .unwrap();
    }
    let p = percentiles(consume.await.unwrap());
    bus.context().delete_stream(&name).await.unwrap();
    p
}

static PRODUCER: &[Migration] = &[Migration {
    version: 1,
    description: "bench producer",
    sql: "CREATE TABLE items (id TEXT PRIMARY KEY, n BIGINT NOT NULL);
          CREATE TABLE outbox (
              id TEXT PRIMARY KEY, subject TEXT NOT NULL, headers TEXT NOT NULL,
              payload TEXT NOT NULL, created_at BIGINT NOT NULL);",
}];

static CONSUMER: &[Migration] = &[Migration {
    version: 1,
    description: "bench consumer",
    sql: "CREATE TABLE copies (id TEXT PRIMARY KEY, email TEXT NOT NULL);",
}];

async fn schema(args: &Args, what: &str) -> ScratchSchema {
    ScratchSchema::create(&args.database_url, &format!("bench_{what}"))
        .await
        .expect("PostgreSQL (pass --database-url)")
}

/// W writers, each committing plain one-row transactions.
async fn raw_store_rate(args: &Args) -> f64 {
    let s = schema(args, "raw").await;
    let db = Db::open_postgres(&s.url, args.writers, PRODUCER)
        .await
        .unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let writers: Vec<_> = (0..args.writers)
        .map(|_| {
            let (db, next, total) = (db.clone(), next.clone(), args.events);
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    db.write(|c| {
                        c.execute(
                            "INSERT INTO items (id, n) VALUES ($1, 1)",
                            &[&UserId::new().to_string()],
                        )
                    })
                    .await
                    .unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    args.events as f64 / start.elapsed().as_secs_f64()
}

/// The full path on PostgreSQL schemas of their own and JetStream.
async fn postgres_full_path(args: &Args, bus: &JetStreamBus, consumer_tx: bool) -> f64 {
    let (ps, cs) = (
        schema(args, "producer").await,
        schema(args, "consumer").await,
    );
    let producer = Db::open_postgres(&ps.url, args.writers, PRODUCER)
        .await
        .unwrap();
    let consumer = Db::open_postgres(&cs.url, args.consumers, CONSUMER)
        .await
        .unwrap();
    // A fresh durable on an empty stream each run.
    bus.context()
        .get_stream("USERS")
        .await
        .unwrap()
        .purge()
        .await
        .unwrap();
    full_path_rate(args, producer, consumer, Arc::new(bus.clone()), consumer_tx).await
}

/// Writers commit item + outbox row; the relay publishes; a listener with
/// C members copies each event in a transaction of its own database.
async fn full_path_rate(
    args: &Args,
    producer: Db,
    consumer: Db,
    bus: Arc<dyn Bus>,
    consumer_tx: bool,
) -> f64 {
    let service: &'static str =
        Box::leak(format!("bench{}x{consumer_tx}", std::process::id()).into_boxed_str());
    let (trigger, signal) = shutdown::channel();
    let outbox = Outbox::new(producer.clone(), service);
    let relay = outbox.spawn_relay(bus.clone(), signal.clone());

    let handled = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    let total = args.events;
    let options = ListenerOptions {
        concurrency: args.consumers,
        batch: args.batch.max(1),
        ..ListenerOptions::default()
    };
    let listeners = listener::Listeners::new(bus.clone(), service, options, signal.clone())
        .applying_in(Outbox::new(consumer.clone(), service))
        .with_state((handled.clone(), done.clone()));
    let listeners = if consumer_tx {
        // The copy is written in the transaction the listener opens for
        // the events it has in hand (a batch).
        listeners.on_tx(
            move |(h, d): &(Arc<AtomicUsize>, Arc<tokio::sync::Notify>),
                  c: &mut bus::outbox::OutboxTx<'_>,
                  e: UserCreated,
                  _: &listener::EventContext| {
                c.execute(
                    "INSERT INTO copies (id, email) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
                    &[&e.id.to_string(), &e.email],
                )?;
                if h.fetch_add(1, Ordering::Relaxed) + 1 >= total {
                    d.notify_one();
                }
                Ok(Outcome::Done)
            },
        )
    } else {
        listeners.on(
            move |(h, d): (Arc<AtomicUsize>, Arc<tokio::sync::Notify>), _: UserCreated, _| async move {
                if h.fetch_add(1, Ordering::Relaxed) + 1 >= total {
                    d.notify_one();
                }
                Ok(Outcome::Done)
            },
        )
    }
    .into_tasks();
    // Let the consumer members join before the clock starts.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let writers: Vec<_> = (0..args.writers)
        .map(|_| {
            let (outbox, next) = (outbox.clone(), next.clone());
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    let id = UserId::new();
                    let event = UserCreated {
                        id,
                        version: 0,
                        email: format!("{id}@bench.invalid"),
                    };
                    outbox
                        .write(move |c| {
                            c.execute(
                                "INSERT INTO items (id, n) VALUES ($1, 1)",
                                &[&id.to_string()],
                            )?;
                            c.enqueue(&event, &TraceContext::new_root(), Clock::System.now())
                        })
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    while handled.load(Ordering::Relaxed) < total {
        let _ = tokio::time::timeout(Duration::from_millis(100), done.notified()).await;
    }
    let rate = total as f64 / start.elapsed().as_secs_f64();
    trigger.fire();
    let _ = relay.await;
    for l in listeners {
        let _ = l.await;
    }
    rate
}
