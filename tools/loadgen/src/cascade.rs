//! The raw minimum of a purchase's cascade: the transactions, rows and
//! messages a purchase causes in the marketplace, written by hand with no
//! framework (no HTTP, no JSON bodies checked, no outbox relay, no
//! listeners, no spans or metrics), so `loadgen purchase --baseline` can put
//! the marketplace's purchase rate beside the fastest the same work runs on
//! the same engines.
//!
//! What a purchase needs, counted from the services (`cargo test -p
//! ticketing --test query_plans -- --nocapture` lists every statement):
//! 12 transactions in four services' databases, 6 events (`order.created`,
//! `ticket.updated` twice, `payment.authorized`, `order.completed`,
//! `payment.captured`), each written to an outbox in its transaction,
//! published durably and its outbox row deleted, and 8 deliveries, each
//! acknowledged after its transaction:
//!
//! | step | service | on | writes | publishes |
//! |---|---|---|---|---|
//! | place | orders | `POST /api/orders` | buyer, order, outbox | `order.created` |
//! | reserve | tickets | `order.created` | ticket, order replica, outbox | `ticket.updated` |
//! | hold | expiration | `order.created` | timer | |
//! | know the order | payments | `order.created` | order replica | |
//! | replica | orders | `ticket.updated` | ticket replica | |
//! | authorize | payments | `POST /api/payments` | payment (authorizing), then authorized, outbox | `payment.authorized` |
//! | complete | orders | `payment.authorized` | order, outbox | `order.completed` |
//! | sell | tickets | `order.completed` | ticket, order replica, outbox | `ticket.updated` |
//! | capture | payments | `order.completed` | payment (capturing), then captured, outbox | `payment.captured` |
//! | replica | orders | `ticket.updated` | ticket replica | |
//!
//! On SQLite the messages are rows too, as the embedded bus keeps them: a
//! message and a pending row per consumer when published, the pending row
//! claimed when delivered and deleted when acknowledged. On the engines
//! they go through JetStream (publish awaiting its acknowledgement, one
//! durable pull consumer per service and subject, double acknowledgement).
//!
//! Each worker runs purchases one step after another. A delivery takes the
//! consumer's next message, which may be another worker's: the work is the
//! same, and each worker takes as many deliveries as it caused. Since a
//! purchase's messages may then be applied out of order, the statements
//! are written to commute (a reservation only of an available ticket, the
//! order replica upserted), and at the end the rows must agree with the
//! purchases counted: every ticket sold, order complete, payment captured,
//! no outbox row or delivery left.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::StreamExt as _;
use store::scratch::ScratchSchema;

/// The services' tables, as the marketplace makes them (the columns and
/// indexes a purchase touches).
const SCHEMAS: [(&str, &str); 4] = [
    (
        "orders",
        "CREATE TABLE tickets (id TEXT PRIMARY KEY, title TEXT NOT NULL, price_cents BIGINT NOT NULL,
             user_id TEXT NOT NULL, version BIGINT NOT NULL, status TEXT NOT NULL DEFAULT 'available');
         CREATE TABLE orders (id TEXT PRIMARY KEY, user_id TEXT NOT NULL, ticket_id TEXT NOT NULL,
             status TEXT NOT NULL, expires_at BIGINT NOT NULL, version BIGINT NOT NULL, created_at BIGINT NOT NULL);
         CREATE INDEX orders_by_user ON orders (user_id, id);
         CREATE UNIQUE INDEX orders_one_active_per_ticket ON orders (ticket_id) WHERE status IN ('created', 'complete');
         CREATE TABLE buyers (user_id TEXT PRIMARY KEY);
         CREATE INDEX orders_active_by_user ON orders (user_id) WHERE status = 'created';",
    ),
    (
        "tickets",
        "CREATE TABLE tickets (id TEXT PRIMARY KEY, title TEXT NOT NULL, price_cents BIGINT NOT NULL,
             user_id TEXT NOT NULL, version BIGINT NOT NULL, status TEXT NOT NULL, order_id TEXT,
             created_at BIGINT NOT NULL);
         CREATE INDEX tickets_available ON tickets (status, id);
         CREATE INDEX tickets_seller ON tickets (user_id, id);
         CREATE TABLE orders (id TEXT PRIMARY KEY, ticket_id TEXT NOT NULL, version BIGINT NOT NULL,
             status TEXT NOT NULL);",
    ),
    (
        "expiration",
        "CREATE TABLE timers (order_id TEXT PRIMARY KEY, expires_at BIGINT NOT NULL, traceparent TEXT NOT NULL);
         CREATE INDEX timers_due ON timers (expires_at);",
    ),
    (
        "payments",
        "CREATE TABLE orders (id TEXT PRIMARY KEY, user_id TEXT NOT NULL, price_cents BIGINT NOT NULL,
             status TEXT NOT NULL, version BIGINT NOT NULL);
         CREATE INDEX orders_by_user ON orders (user_id);
         CREATE TABLE payments (id TEXT PRIMARY KEY, order_id TEXT NOT NULL, authorization_id TEXT NOT NULL,
             amount_cents BIGINT NOT NULL, created_at BIGINT NOT NULL, status TEXT NOT NULL,
             card_token TEXT, attempts BIGINT NOT NULL DEFAULT 0, next_try_at BIGINT,
             card_declined BIGINT NOT NULL DEFAULT 0, user_id TEXT);
         CREATE UNIQUE INDEX payments_one_live_per_order ON payments (order_id) WHERE status <> 'declined';
         CREATE INDEX payments_card_declines_by_buyer ON payments (user_id, created_at) WHERE card_declined = 1;",
    ),
];

const OUTBOX: &str = "CREATE TABLE outbox (id TEXT PRIMARY KEY, subject TEXT NOT NULL,
    headers TEXT NOT NULL, payload TEXT NOT NULL, created_at BIGINT NOT NULL);";

/// The embedded bus's rows, as it keeps them.
const BUS: &str = "CREATE TABLE messages (seq INTEGER PRIMARY KEY, subject TEXT NOT NULL,
        msg_id TEXT NOT NULL UNIQUE, headers TEXT NOT NULL, payload TEXT NOT NULL, published_at BIGINT NOT NULL);
    CREATE TABLE pending (consumer TEXT NOT NULL, seq BIGINT NOT NULL, deliveries BIGINT NOT NULL,
        visible_at BIGINT NOT NULL, PRIMARY KEY (consumer, seq));";

/// A statement's parameter, from the purchase a step works on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum P {
    Order,
    Ticket,
    Buyer,
    Payment,
    Now,
    Outbox,
    Payload,
}

/// The database a step writes in.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Db {
    Orders,
    Tickets,
    Expiration,
    Payments,
}

const DBS: [Db; 4] = [Db::Orders, Db::Tickets, Db::Expiration, Db::Payments];

type Sql = (&'static str, &'static [P]);

/// One step of a purchase.
enum Step {
    /// A transaction in `db`; with `publish`, it also writes an outbox row
    /// that is published afterwards and then deleted.
    Tx {
        db: Db,
        /// Whether it works on the worker's own purchase (the buyer's
        /// requests) rather than the one last delivered.
        own: bool,
        sql: &'static [Sql],
        publish: Option<&'static str>,
    },
    /// The next message of a durable consumer (`service` on `subject`),
    /// whose purchase the following transaction works on; acknowledged
    /// after it.
    Deliver {
        consumer: &'static str,
        subject: &'static str,
    },
}

const OUTBOX_INSERT: Sql = (
    "INSERT INTO outbox (id, subject, headers, payload, created_at) VALUES ($1, 'event', '[]', $2, $3)",
    &[P::Outbox, P::Payload, P::Now],
);

/// A purchase, step by step, as the services run it.
const PURCHASE: &[Step] = &[
    Step::Tx {
        db: Db::Orders,
        own: true,
        sql: &[
            (
                "INSERT INTO buyers (user_id) VALUES ($1) ON CONFLICT (user_id) DO UPDATE SET user_id = excluded.user_id",
                &[P::Buyer],
            ),
            (
                "SELECT user_id, price_cents, status FROM tickets WHERE id = $1",
                &[P::Ticket],
            ),
            (
                "SELECT COUNT(*) FROM orders WHERE user_id = $1 AND status = 'created'",
                &[P::Buyer],
            ),
            (
                "INSERT INTO orders (id, user_id, ticket_id, status, expires_at, version, created_at) VALUES ($1, $2, $3, 'created', $4, 0, $4)",
                &[P::Order, P::Buyer, P::Ticket, P::Now],
            ),
            OUTBOX_INSERT,
        ],
        publish: Some("order.created"),
    },
    Step::Deliver {
        consumer: "tickets",
        subject: "order.created",
    },
    Step::Tx {
        db: Db::Tickets,
        own: false,
        sql: &[
            ("SELECT version FROM tickets WHERE id = $1", &[P::Ticket]),
            (
                "UPDATE tickets SET version = version + 1, status = 'reserved', order_id = $2 WHERE id = $1 AND status = 'available'",
                &[P::Ticket, P::Order],
            ),
            (
                "INSERT INTO orders (id, ticket_id, version, status) VALUES ($1, $2, 0, 'created') ON CONFLICT (id) DO NOTHING",
                &[P::Order, P::Ticket],
            ),
            OUTBOX_INSERT,
        ],
        publish: Some("ticket.updated"),
    },
    Step::Deliver {
        consumer: "expiration",
        subject: "order.created",
    },
    Step::Tx {
        db: Db::Expiration,
        own: false,
        sql: &[(
            "INSERT INTO timers (order_id, expires_at, traceparent) VALUES ($1, $2, '') ON CONFLICT (order_id) DO NOTHING",
            &[P::Order, P::Now],
        )],
        publish: None,
    },
    Step::Deliver {
        consumer: "payments",
        subject: "order.created",
    },
    Step::Tx {
        db: Db::Payments,
        own: false,
        sql: &[(
            "INSERT INTO orders (id, user_id, price_cents, status, version) VALUES ($1, $2, 2000, 'created', 0) ON CONFLICT (id) DO NOTHING",
            &[P::Order, P::Buyer],
        )],
        publish: None,
    },
    Step::Deliver {
        consumer: "orders",
        subject: "ticket.updated",
    },
    Step::Tx {
        db: Db::Orders,
        own: false,
        sql: &[
            ("SELECT version FROM tickets WHERE id = $1", &[P::Ticket]),
            (
                "UPDATE tickets SET version = version + 1, status = 'reserved' WHERE id = $1",
                &[P::Ticket],
            ),
        ],
        publish: None,
    },
    // The buyer pays: the payment is written before the card is asked,
    // then marked authorized with the event.
    Step::Tx {
        db: Db::Payments,
        own: true,
        sql: &[
            (
                "SELECT user_id, price_cents, status FROM orders WHERE id = $1",
                &[P::Order],
            ),
            (
                "SELECT COUNT(*), MIN(created_at) FROM payments WHERE user_id = $1 AND card_declined = 1 AND created_at > $2",
                &[P::Buyer, P::Now],
            ),
            (
                "INSERT INTO payments (id, order_id, authorization_id, amount_cents, created_at, status, card_token, user_id) VALUES ($1, $2, '', 2000, $3, 'authorizing', 'tok_visa', $4)",
                &[P::Payment, P::Order, P::Now, P::Buyer],
            ),
        ],
        publish: None,
    },
    Step::Tx {
        db: Db::Payments,
        own: true,
        sql: &[
            (
                "UPDATE payments SET status = 'authorized', authorization_id = $2, card_token = NULL WHERE id = $1",
                &[P::Payment, P::Order],
            ),
            OUTBOX_INSERT,
        ],
        publish: Some("payment.authorized"),
    },
    Step::Deliver {
        consumer: "orders",
        subject: "payment.authorized",
    },
    Step::Tx {
        db: Db::Orders,
        own: false,
        sql: &[
            ("SELECT status FROM orders WHERE id = $1", &[P::Order]),
            (
                "UPDATE orders SET status = 'complete', version = version + 1 WHERE id = $1",
                &[P::Order],
            ),
            OUTBOX_INSERT,
        ],
        publish: Some("order.completed"),
    },
    Step::Deliver {
        consumer: "tickets",
        subject: "order.completed",
    },
    Step::Tx {
        db: Db::Tickets,
        own: false,
        sql: &[
            ("SELECT version FROM orders WHERE id = $1", &[P::Order]),
            (
                "INSERT INTO orders (id, ticket_id, version, status) VALUES ($1, $2, 1, 'complete') ON CONFLICT (id) DO UPDATE SET version = excluded.version, status = excluded.status",
                &[P::Order, P::Ticket],
            ),
            (
                "UPDATE tickets SET version = version + 1, status = 'sold', order_id = $2 WHERE id = $1",
                &[P::Ticket, P::Order],
            ),
            OUTBOX_INSERT,
        ],
        publish: Some("ticket.updated"),
    },
    Step::Deliver {
        consumer: "payments",
        subject: "order.completed",
    },
    Step::Tx {
        db: Db::Payments,
        own: false,
        sql: &[
            (
                "UPDATE orders SET status = 'complete', version = version + 1 WHERE id = $1",
                &[P::Order],
            ),
            (
                "UPDATE payments SET status = 'capturing' WHERE order_id = $1 AND status = 'authorized'",
                &[P::Order],
            ),
        ],
        publish: None,
    },
    Step::Tx {
        db: Db::Payments,
        own: false,
        sql: &[
            (
                "UPDATE payments SET status = 'captured' WHERE order_id = $1 AND status = 'capturing'",
                &[P::Order],
            ),
            OUTBOX_INSERT,
        ],
        publish: Some("payment.captured"),
    },
    Step::Deliver {
        consumer: "orders",
        subject: "ticket.updated",
    },
    Step::Tx {
        db: Db::Orders,
        own: false,
        sql: &[
            ("SELECT version FROM tickets WHERE id = $1", &[P::Ticket]),
            (
                "UPDATE tickets SET version = version + 1, status = 'sold' WHERE id = $1",
                &[P::Ticket],
            ),
        ],
        publish: None,
    },
];

/// Who consumes each subject (a consumer that takes two of a purchase's
/// messages on one subject is still one consumer).
fn consumers(subject: &str) -> std::collections::BTreeSet<&'static str> {
    PURCHASE
        .iter()
        .filter_map(|s| match s {
            Step::Deliver {
                consumer,
                subject: sub,
            } if *sub == subject => Some(*consumer),
            _ => None,
        })
        .collect()
}

/// What a purchase's statements read: the purchase's ids, carried by
/// its messages so that a delivery works on the purchase it delivers.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Purchase {
    order: String,
    ticket: String,
    buyer: String,
    payment: String,
}

impl Purchase {
    fn new(ticket: u64) -> Purchase {
        Purchase {
            order: uuid::Uuid::now_v7().to_string(),
            ticket: ticket_id(ticket),
            buyer: format!("00000000-0000-7000-8001-{:012}", ticket % 50),
            payment: uuid::Uuid::now_v7().to_string(),
        }
    }

    fn text(&self, p: P) -> Option<String> {
        Some(match p {
            P::Order => self.order.clone(),
            P::Ticket => self.ticket.clone(),
            P::Buyer => self.buyer.clone(),
            P::Payment => self.payment.clone(),
            P::Outbox => uuid::Uuid::now_v7().to_string(),
            P::Payload => self.payload(),
            P::Now => return None,
        })
    }

    fn payload(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// A statement's parameters for this purchase (`None`: the time now),
    /// and the outbox row it writes, if it writes one, added to `outbox`.
    fn bind(&self, params: &[P], outbox: &mut Vec<(String, String)>) -> Vec<Option<String>> {
        let texts: Vec<Option<String>> = params.iter().map(|p| self.text(*p)).collect();
        let at = |want: P| {
            params
                .iter()
                .position(|p| *p == want)
                .and_then(|i| texts[i].clone())
        };
        if let (Some(id), Some(payload)) = (at(P::Outbox), at(P::Payload)) {
            outbox.push((id, payload));
        }
        texts
    }
}

/// Ticket `n`'s id, as [`listing`] writes it.
fn ticket_id(n: u64) -> String {
    format!("00000000-0000-7000-8002-{}", n + 100_000_000_000)
}

/// The tickets listed before a run, in `db`'s table of them (tickets owns
/// them, orders keeps a replica), the same text on both engines.
fn listing(db: Db) -> String {
    let (series, id) = (crate::fill::series(TICKETS), crate::fill::id(2, "i"));
    match db {
        Db::Tickets => format!(
            "{series}INSERT INTO tickets (id, title, price_cents, user_id, version, status, created_at) \
             SELECT {id}, 'Raw', 2000, 'seller', 0, 'available', 0 FROM n;"
        ),
        Db::Orders => format!(
            "{series}INSERT INTO tickets (id, title, price_cents, user_id, version) \
             SELECT {id}, 'Raw', 2000, 'seller', 0 FROM n;"
        ),
        Db::Expiration | Db::Payments => String::new(),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A run's figures.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    /// Purchases completed per second.
    pub per_second: f64,
    /// This process's CPU time per purchase, ms.
    pub cpu_ms: f64,
}

fn own_cpu_ms() -> f64 {
    crate::procs::cpu_ms(std::process::id()).unwrap_or(0.0)
}

/// The tickets every run lists first, one per purchase at most.
const TICKETS: u64 = 200_000;

// ---------------------------------------------------------------- SQLite

/// SQLite, a database file per service and one for the bus (WAL,
/// synchronous=NORMAL, as the marketplace opens them), each one connection
/// behind a lock, `workers` threads running purchases for `duration`.
pub fn sqlite(workers: usize, batch: usize, duration: Duration) -> anyhow::Result<Rate> {
    let batch = batch.max(1);
    let dir = tempfile::tempdir()?;
    let open = |name: &str, schema: &str| -> anyhow::Result<Mutex<rusqlite::Connection>> {
        let c = rusqlite::Connection::open(dir.path().join(format!("{name}.db")))?;
        c.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
        )?;
        c.execute_batch(schema)?;
        Ok(Mutex::new(c))
    };
    let mut dbs = HashMap::new();
    for (db, (name, schema)) in DBS.iter().zip(SCHEMAS) {
        dbs.insert(
            *db,
            open(name, &format!("{schema}{OUTBOX}{}", listing(*db)))?,
        );
    }
    let bus = open("bus", BUS)?;
    let shared = Arc::new((dbs, bus, AtomicU64::new(0), AtomicU64::new(0)));
    let cpu = own_cpu_ms();
    let start = Instant::now();
    let threads: Vec<_> = (0..workers.max(1))
        .map(|_| {
            let shared = shared.clone();
            std::thread::spawn(move || -> anyhow::Result<()> {
                let (dbs, bus, next, done) = &*shared;
                while start.elapsed() < duration {
                    let n = next.fetch_add(batch as u64, Ordering::Relaxed);
                    if n + batch as u64 > TICKETS {
                        break;
                    }
                    let own: Vec<Purchase> = (n..n + batch as u64).map(Purchase::new).collect();
                    sqlite_purchases(dbs, bus, &own)?;
                    done.fetch_add(batch as u64, Ordering::Relaxed);
                }
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join()
            .map_err(|_| anyhow::anyhow!("a raw cascade thread panicked"))??;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = own_cpu_ms() - cpu;
    let (dbs, bus, _, done) = &*shared;
    let done = done.load(Ordering::Relaxed);
    let count = |c: &Mutex<rusqlite::Connection>, q: &str| -> anyhow::Result<u64> {
        Ok(c.lock().unwrap().query_row(q, [], |r| r.get::<_, i64>(0))? as u64)
    };
    let each = EACH
        .iter()
        .map(|(what, db, q)| Ok((*what, count(&dbs[db], q)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let outbox_rows = DBS
        .iter()
        .map(|d| count(&dbs[d], OUTBOX_ROWS))
        .sum::<anyhow::Result<u64>>()?;
    let unacked = count(bus, "SELECT COUNT(*) FROM pending")?;
    agree(
        done,
        &each,
        &[
            ("outbox rows", outbox_rows),
            ("unacknowledged deliveries", unacked),
        ],
    )?;
    Ok(Rate {
        per_second: done as f64 / elapsed,
        cpu_ms: cpu / (done as f64).max(1.0),
    })
}

/// The counts that must equal the purchases run: (what, where, query).
const EACH: [(&str, Db, &str); 5] = [
    ("tickets sold", Db::Tickets, SOLD),
    ("orders complete", Db::Orders, COMPLETE),
    ("replicas sold", Db::Orders, REPLICAS_SOLD),
    ("payments captured", Db::Payments, CAPTURED),
    ("timers", Db::Expiration, TIMERS),
];

const SOLD: &str = "SELECT COUNT(*) FROM tickets WHERE status = 'sold' AND order_id IS NOT NULL";
const COMPLETE: &str = "SELECT COUNT(*) FROM orders WHERE status = 'complete'";
const REPLICAS_SOLD: &str = "SELECT COUNT(*) FROM tickets WHERE version = 2";
const CAPTURED: &str = "SELECT COUNT(*) FROM payments WHERE status = 'captured'";
const TIMERS: &str = "SELECT COUNT(*) FROM timers";
const OUTBOX_ROWS: &str = "SELECT COUNT(*) FROM outbox";

/// Every purchase ran its course: each count of `done` is `done`, each
/// of `none` is 0.
fn agree(done: u64, each: &[(&str, u64)], none: &[(&str, u64)]) -> anyhow::Result<()> {
    let wrong: Vec<String> = each
        .iter()
        .filter(|(_, n)| *n != done)
        .chain(none.iter().filter(|(_, n)| *n != 0))
        .map(|(what, n)| format!("{what}: {n}"))
        .collect();
    anyhow::ensure!(
        wrong.is_empty(),
        "the raw cascade's rows disagree with its {done} purchases: {}",
        wrong.join(", ")
    );
    Ok(())
}

/// Runs `sql` for each purchase of `on` in one transaction; the outbox
/// rows it wrote (id, payload).
fn sqlite_tx(
    c: &mut rusqlite::Connection,
    sql: &[Sql],
    on: &[Purchase],
) -> rusqlite::Result<Vec<(String, String)>> {
    let tx = c.transaction()?;
    let now = now_ms();
    let mut outbox = Vec::new();
    for purchase in on {
        for (text, params) in sql {
            let mut stmt = tx.prepare_cached(sqlite_text(text))?;
            let values = purchase
                .bind(params, &mut outbox)
                .into_iter()
                .map(|t| t.map_or(rusqlite::types::Value::from(now), Into::into));
            let mut rows = stmt.query(rusqlite::params_from_iter(values))?;
            while rows.next()?.is_some() {}
        }
    }
    tx.commit()?;
    Ok(outbox)
}

/// `$N` as SQLite's `?N` (a `$N` is a named parameter to SQLite,
/// numbered by where it first appears), converted once per statement.
fn sqlite_text(text: &'static str) -> &'static str {
    static CONVERTED: Mutex<Option<HashMap<&'static str, &'static str>>> = Mutex::new(None);
    let mut map = CONVERTED.lock().unwrap();
    map.get_or_insert_with(HashMap::new)
        .entry(text)
        .or_insert_with(|| Box::leak(text.replace('$', "?").into_boxed_str()))
}

/// The purchases `own`, step by step, each step for all of them at once:
/// one transaction per step and database, one to publish their messages,
/// one to delete their outbox rows, one to claim as many deliveries and
/// one to acknowledge them.
fn sqlite_purchases(
    dbs: &HashMap<Db, Mutex<rusqlite::Connection>>,
    bus: &Mutex<rusqlite::Connection>,
    own: &[Purchase],
) -> anyhow::Result<()> {
    let mut current: Vec<Purchase> = Vec::new();
    let mut delivered: Option<(String, Vec<i64>)> = None;
    for step in PURCHASE {
        match step {
            Step::Tx {
                db,
                own: mine,
                sql,
                publish,
            } => {
                let on = if *mine { own } else { &current[..] };
                let outbox = sqlite_tx(&mut dbs[db].lock().unwrap(), sql, on)?;
                if let Some((consumer, seqs)) = delivered.take() {
                    let mut c = bus.lock().unwrap();
                    let tx = c.transaction()?;
                    for seq in seqs {
                        tx.prepare_cached("DELETE FROM pending WHERE consumer = ?1 AND seq = ?2")?
                            .execute(rusqlite::params![consumer, seq])?;
                    }
                    tx.commit()?;
                }
                if let Some(subject) = publish {
                    {
                        let mut c = bus.lock().unwrap();
                        let tx = c.transaction()?;
                        for (id, payload) in &outbox {
                            let seq: i64 = tx
                                .prepare_cached("INSERT INTO messages (subject, msg_id, headers, payload, published_at) VALUES (?1, ?2, '[]', ?3, ?4) RETURNING seq")?
                                .query_row(rusqlite::params![subject, id, payload, now_ms()], |r| r.get(0))?;
                            for consumer in consumers(subject) {
                                tx.prepare_cached("INSERT INTO pending (consumer, seq, deliveries, visible_at) VALUES (?1, ?2, 0, 0)")?
                                    .execute(rusqlite::params![format!("{consumer}-{subject}"), seq])?;
                            }
                        }
                        tx.commit()?;
                    }
                    let mut c = dbs[db].lock().unwrap();
                    let tx = c.transaction()?;
                    for (id, _) in &outbox {
                        tx.prepare_cached("DELETE FROM outbox WHERE id = ?1")?
                            .execute([id])?;
                    }
                    tx.commit()?;
                }
            }
            Step::Deliver { consumer, subject } => {
                let name = format!("{consumer}-{subject}");
                let mut c = bus.lock().unwrap();
                let tx = c.transaction()?;
                let now = now_ms();
                let mut seqs = Vec::with_capacity(own.len());
                current.clear();
                for _ in own {
                    // Every worker claims as many as it published, after
                    // publishing them, under the bus's lock: they are there.
                    let (seq, payload): (i64, String) = tx
                        .prepare_cached(
                            "UPDATE pending SET deliveries = deliveries + 1, visible_at = ?2 + 30000
                             WHERE consumer = ?1 AND seq = (SELECT MIN(seq) FROM pending WHERE consumer = ?1 AND visible_at <= ?2)
                             RETURNING seq, (SELECT payload FROM messages m WHERE m.seq = pending.seq)",
                        )?
                        .query_row(rusqlite::params![name, now], |r| Ok((r.get(0)?, r.get(1)?)))
                        .with_context(|| format!("no message for {name}"))?;
                    current.push(serde_json::from_str(&payload)?);
                    seqs.push(seq);
                }
                tx.commit()?;
                delivered = Some((name, seqs));
            }
        }
    }
    Ok(())
}

// ------------------------------------------- PostgreSQL and JetStream

/// PostgreSQL (a scratch schema per service on `database_url`'s server)
/// and JetStream at `nats_url` (a stream and a durable pull consumer per
/// service and subject), `workers` tasks each with its own connection to
/// every database, running purchases for `duration`.
pub async fn engines(
    database_url: &str,
    nats_url: &str,
    workers: usize,
    batch: usize,
    duration: Duration,
) -> anyhow::Result<Rate> {
    use async_nats::jetstream::{self, consumer::pull, stream};
    // A scratch schema per service, dropped with it.
    let mut schemas = Vec::new();
    let mut urls = HashMap::new();
    for (db, (name, schema)) in DBS.iter().zip(SCHEMAS) {
        let scratch = ScratchSchema::create(database_url, &format!("loadgen_cascade_{name}"))
            .await
            .with_context(|| database_url.to_owned())?;
        let (c, conn) = tokio_postgres::connect(&scratch.url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        c.batch_execute(&format!("{schema}{OUTBOX}{}", listing(*db)))
            .await?;
        c.batch_execute("ANALYZE").await?;
        urls.insert(*db, scratch.url.clone());
        schemas.push(scratch);
    }
    let nats = async_nats::connect(nats_url)
        .await
        .with_context(|| nats_url.to_owned())?;
    let js = jetstream::new(nats);
    let tag = format!("loadgen_cascade_{}", std::process::id());
    let stream_name = tag.to_uppercase();
    let prefix = format!("{tag}.");
    let _ = js.delete_stream(&stream_name).await;
    let created = js
        .create_stream(stream::Config {
            name: stream_name.clone(),
            subjects: vec![format!("{prefix}>")],
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .context("creating the stream")?;
    let mut pull_consumers = HashMap::new();
    for step in PURCHASE {
        if let Step::Deliver { consumer, subject } = step {
            let name = format!("{consumer}-{}", subject.replace('.', "-"));
            let c = created
                .create_consumer(pull::Config {
                    durable_name: Some(name.clone()),
                    filter_subject: format!("{prefix}{subject}"),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(30),
                    ..Default::default()
                })
                .await
                .context("creating a consumer")?;
            pull_consumers.entry(name).or_insert(c);
        }
    }
    let result = engines_run(
        &urls,
        &js,
        &prefix,
        &pull_consumers,
        (workers, batch.max(1)),
        duration,
    )
    .await;
    let _ = js.delete_stream(&stream_name).await;
    result
}

async fn engines_run(
    urls: &HashMap<Db, String>,
    js: &async_nats::jetstream::Context,
    prefix: &str,
    pull_consumers: &HashMap<String, async_nats::jetstream::consumer::PullConsumer>,
    (workers, batch): (usize, usize),
    duration: Duration,
) -> anyhow::Result<Rate> {
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for _ in 0..workers.max(1) {
        let mut mine = HashMap::new();
        for (db, url) in urls {
            let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            mine.insert(*db, c);
        }
        clients.push(mine);
    }
    let cpu = own_cpu_ms();
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for mut mine in clients {
        let (next, done, js) = (next.clone(), done.clone(), js.clone());
        let prefix = prefix.to_owned();
        let pull_consumers = pull_consumers.clone();
        tasks.spawn(async move {
            let mut statements = HashMap::new();
            while start.elapsed() < duration {
                let n = next.fetch_add(batch as u64, Ordering::Relaxed);
                if n + batch as u64 > TICKETS {
                    break;
                }
                let own: Vec<Purchase> = (n..n + batch as u64).map(Purchase::new).collect();
                engines_purchases(
                    &mut mine,
                    &mut statements,
                    &js,
                    &prefix,
                    &pull_consumers,
                    &own,
                )
                .await?;
                done.fetch_add(batch as u64, Ordering::Relaxed);
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = own_cpu_ms() - cpu;
    let done = done.load(Ordering::Relaxed);
    let mut clients = HashMap::new();
    for (db, url) in urls {
        let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        clients.insert(*db, c);
    }
    let count = async |db: &Db, q: &str| -> anyhow::Result<u64> {
        Ok(clients[db].query_one(q, &[]).await?.get::<_, i64>(0) as u64)
    };
    let mut each = Vec::new();
    for (what, db, q) in &EACH {
        each.push((*what, count(db, q).await?));
    }
    let mut outbox_rows = 0;
    for db in &DBS {
        outbox_rows += count(db, OUTBOX_ROWS).await?;
    }
    let mut unacked = 0;
    for c in pull_consumers.values() {
        let mut c = c.clone();
        let info = c
            .info()
            .await
            .map_err(|e| anyhow::anyhow!("consumer info: {e}"))?;
        unacked += info.num_ack_pending as u64 + info.num_pending;
    }
    agree(
        done,
        &each,
        &[
            ("outbox rows", outbox_rows),
            ("unacknowledged deliveries", unacked),
        ],
    )?;
    Ok(Rate {
        per_second: done as f64 / elapsed,
        cpu_ms: cpu / (done as f64).max(1.0),
    })
}

/// The purchases `own`, step by step, each step for all of them at once:
/// one transaction per step, their messages published together (every
/// acknowledgement awaited), their outbox rows deleted in one statement,
/// as many deliveries fetched and acknowledged.
async fn engines_purchases(
    clients: &mut HashMap<Db, tokio_postgres::Client>,
    statements: &mut HashMap<(Db, &'static str), tokio_postgres::Statement>,
    js: &async_nats::jetstream::Context,
    prefix: &str,
    pull_consumers: &HashMap<String, async_nats::jetstream::consumer::PullConsumer>,
    own: &[Purchase],
) -> anyhow::Result<()> {
    let mut current: Vec<Purchase> = Vec::new();
    let mut delivered: Vec<async_nats::jetstream::Message> = Vec::new();
    for step in PURCHASE {
        match step {
            Step::Tx {
                db,
                own: mine,
                sql,
                publish,
            } => {
                let client = clients.get_mut(db).context("a database")?;
                // Rows locked in one order by every worker (a purchase's
                // buyer, then its ticket, whose order and payment follow),
                // so batches that share a buyer or a ticket never deadlock.
                let mut on: Vec<&Purchase> =
                    if *mine { own.iter() } else { current.iter() }.collect();
                on.sort_by(|a, b| (&a.buyer, &a.ticket).cmp(&(&b.buyer, &b.ticket)));
                let now = now_ms();
                let mut outbox = Vec::new();
                let tx = client.transaction().await?;
                for purchase in on {
                    for (text, params) in *sql {
                        let stmt = match statements.get(&(*db, *text)) {
                            Some(s) => s.clone(),
                            None => {
                                let s = tx.prepare(text).await?;
                                statements.insert((*db, *text), s.clone());
                                s
                            }
                        };
                        let texts = purchase.bind(params, &mut outbox);
                        let values: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = texts
                            .iter()
                            .map(|t| match t {
                                Some(t) => t as &(dyn tokio_postgres::types::ToSql + Sync),
                                None => &now as &(dyn tokio_postgres::types::ToSql + Sync),
                            })
                            .collect();
                        tx.query(&stmt, &values).await?;
                    }
                }
                tx.commit().await?;
                futures_util::future::try_join_all(delivered.drain(..).map(|m| async move {
                    m.double_ack()
                        .await
                        .map_err(|e| anyhow::anyhow!("ack: {e}"))
                }))
                .await?;
                if let Some(subject) = publish {
                    let mut acks = Vec::with_capacity(outbox.len());
                    for (id, payload) in &outbox {
                        let mut headers = async_nats::HeaderMap::new();
                        headers.insert("Nats-Msg-Id", id.as_str());
                        acks.push(
                            js.publish_with_headers(
                                format!("{prefix}{subject}"),
                                headers,
                                payload.clone().into(),
                            )
                            .await?,
                        );
                    }
                    futures_util::future::try_join_all(
                        acks.into_iter().map(std::future::IntoFuture::into_future),
                    )
                    .await?;
                    let ids: Vec<&str> = outbox.iter().map(|(id, _)| id.as_str()).collect();
                    client
                        .execute("DELETE FROM outbox WHERE id = ANY($1)", &[&ids])
                        .await?;
                }
            }
            Step::Deliver { consumer, subject } => {
                let name = format!("{consumer}-{}", subject.replace('.', "-"));
                let c = pull_consumers.get(&name).context("a consumer")?;
                current.clear();
                // They come (each worker fetches as many as it published,
                // after publishing them); a bug that loses one fails here
                // instead of waiting forever.
                let deadline = Instant::now() + Duration::from_secs(60);
                while delivered.len() < own.len() {
                    anyhow::ensure!(
                        Instant::now() < deadline,
                        "{name}: {} of {} messages in a minute",
                        delivered.len(),
                        own.len()
                    );
                    let mut batch = c
                        .fetch()
                        .max_messages(own.len() - delivered.len())
                        .expires(Duration::from_secs(5))
                        .messages()
                        .await
                        .map_err(|e| anyhow::anyhow!("fetch: {e}"))?;
                    while let Some(m) = batch.next().await {
                        let m = m.map_err(|e| anyhow::anyhow!("fetch: {e}"))?;
                        current.push(serde_json::from_slice(&m.payload)?);
                        delivered.push(m);
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The raw cascade runs every purchase to its end on SQLite: the rows
    /// agree with the purchases counted (checked inside), none is left
    /// half-done.
    #[test]
    fn the_raw_cascade_completes_every_purchase_on_sqlite() {
        let rate = sqlite(3, 4, Duration::from_millis(300)).unwrap();
        assert!(rate.per_second > 0.0, "{rate:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_raw_cascade_completes_every_purchase_on_postgres_and_jetstream() {
        let Some(_nats) = bus::jetstream::testing::connect().await else {
            return;
        };
        // A scratch schema as the probe: it skips or fails as the other
        // engine suites do when PostgreSQL is away.
        let Some(_probe) = store::testing::postgres_schema().await else {
            return;
        };
        let pg = store::testing::postgres_url();
        let rate = engines(
            &pg,
            &bus::jetstream::testing::nats_url(),
            3,
            4,
            Duration::from_millis(500),
        )
        .await
        .unwrap();
        assert!(rate.per_second > 0.0, "{rate:?}");
    }
}
