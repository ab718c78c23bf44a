//! Hot paths inside the code, timed by criterion:
//! `cargo bench -p loadgen --bench hot_paths`.
//!
//! - JWT verification (every authenticated request)
//! - event encode and decode (every event, twice)
//! - reading and checking a request body (`ValidJson`: every write)
//! - one outbox relay batch: 256 rows read, published to the embedded bus,
//!   deleted
//! - the expiration scheduler with 100 000 timers pending: firing one due
//!   timer (its event written in the same transaction) and finding the next;
//!   and the count of pending timers it now takes at most once a second

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use marketplace_events::{OrderCreated, OrderStatus, OrderTicket};
use marketplace_events::{OrderId, TicketId};
use shared::auth::{AuthKeys, AuthUser};
use shared::ids::UserId;
use shared::money::Money;
use shared::time::{Clock, Timestamp};
use shared::trace::TraceContext;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn order_created() -> OrderCreated {
    OrderCreated {
        id: OrderId::new(),
        version: 0,
        status: OrderStatus::Created,
        user_id: UserId::new(),
        expires_at: Clock::System.now().plus_secs(900),
        ticket: OrderTicket {
            id: TicketId::new(),
            price_cents: Money::from_cents(2_000),
        },
    }
}

fn jwt(c: &mut Criterion) {
    let keys = AuthKeys::new(
        b"benchmark-key-0123456789",
        Duration::from_secs(3600),
        false,
    );
    let user = AuthUser {
        id: UserId::new(),
        email: "bench@example.com".into(),
    };
    let token = keys.issue(&user, Clock::System.now()).unwrap();
    c.bench_function("jwt verify (HS256)", |b| {
        b.iter(|| std::hint::black_box(keys.verify(std::hint::black_box(&token))))
    });
}

fn events(c: &mut Criterion) {
    let event = order_created();
    let bytes = serde_json::to_vec(&event).unwrap();
    c.bench_function("order.created encode (JSON)", |b| {
        b.iter(|| serde_json::to_vec(std::hint::black_box(&event)).unwrap())
    });
    c.bench_function("order.created decode (JSON)", |b| {
        b.iter(|| serde_json::from_slice::<OrderCreated>(std::hint::black_box(&bytes)).unwrap())
    });
}

static PRODUCER: &[store::Migration] = &[store::Migration {
    version: 1,
    description: "outbox",
    sql: bus::outbox::OUTBOX_TABLE_SQL,
}];

fn bodies(c: &mut Criterion) {
    let payment = serde_json::json!({ "orderId": OrderId::new().to_string(), "token": "tok_visa" });
    c.bench_function("payment request read and checked (ValidJson)", |b| {
        b.iter(|| {
            shared::wire::validate::<marketplace_api::PaymentInput>(std::hint::black_box(
                payment.clone(),
            ))
            .unwrap()
        })
    });
    let ticket = serde_json::json!({ "title": "A concert in the park", "price": 19.99 });
    c.bench_function("ticket request read and checked (ValidJson)", |b| {
        b.iter(|| {
            shared::wire::validate::<marketplace_api::TicketInput>(std::hint::black_box(
                ticket.clone(),
            ))
            .unwrap()
        })
    });
}

fn relay(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (db, bus) = rt.block_on(async {
        let db = store::Db::open_sqlite(&dir.path().join("producer.db"), PRODUCER)
            .await
            .unwrap();
        let bus: Arc<dyn bus::Bus> = Arc::new(
            bus::embedded::EmbeddedBus::open(&dir.path().join("bus.db"))
                .await
                .unwrap(),
        );
        (db, bus)
    });
    let outbox = bus::outbox::Outbox::new(db.clone(), "bench");
    c.bench_function("outbox relay batch (256 rows → embedded bus)", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    outbox
                        .write(|c| {
                            for _ in 0..256 {
                                c.enqueue(
                                    &order_created(),
                                    &TraceContext::new_root(),
                                    Clock::System.now(),
                                )?;
                            }
                            Ok::<_, store::StoreError>(())
                        })
                        .await
                        .unwrap();
                    let started = Instant::now();
                    let sent = outbox.relay_once(&bus).await.unwrap();
                    spent += started.elapsed();
                    assert_eq!(sent, 256);
                }
                spent
            })
        })
    });
}

fn scheduler(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let db = rt.block_on(async {
        store::Db::open_sqlite(&dir.path().join("expiration.db"), expiration::MIGRATIONS)
            .await
            .unwrap()
    });
    let now = Clock::System.now();
    rt.block_on(async {
        // 100 000 pending, due over the next hour.
        for chunk in 0..100 {
            db.write(move |c| {
                for i in 0..1_000i64 {
                    let at = Timestamp::from_millis(now.millis() + 60_000 + (chunk * 1_000 + i) * 36);
                    c.execute(
                        "INSERT INTO timers (order_id, expires_at, traceparent) VALUES ($1, $2, $3)",
                        &[&OrderId::new(), &at, &TraceContext::new_root().to_string()],
                    )?;
                }
                Ok::<_, store::StoreError>(())
            })
            .await
            .unwrap();
        }
    });
    let outbox = bus::outbox::Outbox::new(db.clone(), "expiration");
    let mut group = c.benchmark_group("scheduler, 100 000 timers pending");
    group.bench_function("fire one due timer and find the next", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let due = Timestamp::from_millis(now.millis() - 1);
                    db.write(move |c| {
                        c.execute(
                            "INSERT INTO timers (order_id, expires_at, traceparent) VALUES ($1, $2, $3)",
                            &[&OrderId::new(), &due, &TraceContext::new_root().to_string()],
                        )
                    })
                    .await
                    .unwrap();
                    let started = Instant::now();
                    let fired = expiration::fire_due(&outbox, Clock::System.now()).await.unwrap();
                    expiration::next_due(&db, false).await.unwrap();
                    spent += started.elapsed();
                    assert_eq!(fired, 1);
                }
                // Keep the outbox from growing into the measurement.
                db.write(|c| c.execute("DELETE FROM outbox", &[])).await.unwrap();
                spent
            })
        })
    });
    group.bench_function("count the pending timers", |b| {
        b.iter(|| rt.block_on(expiration::next_due(&db, true)).unwrap())
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = jwt, events, bodies, relay, scheduler
}
criterion_main!(benches);
