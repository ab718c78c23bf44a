//! `loadgen fill`: does a purchase cost the same on stores that already
//! hold a large marketplace? Two all-in-one marketplaces are started from
//! the same binary, one on empty stores and one on stores filled first
//! (100 k users, 1 M tickets, 1 M orders by default); the purchase scenario
//! runs against each in turn, alternating, and the report puts the rate on
//! the full stores beside the rate on the empty ones.
//!
//! The rows are written straight into each service's tables, after the
//! binary has created them: signing 100 k users up through the API alone
//! would take hours of password hashing. That ties this scenario to the
//! services' schemas, so the test that runs it small also runs a purchase
//! and reads the filled rows back through the API on the full stores: a
//! schema change that this file misses fails it. The bus's own store (the
//! event history) is not filled.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::json;

use store::scratch::ScratchSchema;

use crate::api::Api;
use crate::drive::Load;
use crate::procs;
use crate::report::{Check, Comparison, Figure};
use crate::scenarios;

/// What the full stores hold.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Size {
    pub users: u64,
    pub tickets: u64,
    pub orders: u64,
}

/// The services whose stores are filled, as the all-in-one process names
/// their databases (`<service>.db`).
pub const SERVICES: [&str; 5] = ["auth", "tickets", "orders", "expiration", "payments"];

/// A row id of `kind` (1 users, 2 tickets, 3 orders, 4 payments) for the
/// SQL integer expression `n`: a UUID-shaped text, the same in SQLite and
/// PostgreSQL (both concatenate text and integers; the offset keeps the
/// last group at twelve digits).
pub fn id(kind: u8, n: &str) -> String {
    format!("('00000000-0000-7000-800{kind}-' || ({n} + 100000000000))")
}

/// Rows `i` = 0 … `count` − 1 for an `INSERT … SELECT`: a recursive common
/// table expression, which both engines run as written.
pub fn series(count: u64) -> String {
    format!(
        "WITH RECURSIVE n(i) AS (SELECT CAST(0 AS BIGINT) UNION ALL SELECT i + 1 FROM n WHERE i + 1 < {count}) "
    )
}

/// The statements that fill `service`'s tables (its migrations applied,
/// its tables empty), the same text for SQLite and PostgreSQL. The rows
/// are consistent across the services, as if every order had run its
/// course: order `i` is for ticket `i mod tickets` by user `(i + 1) mod
/// users`; the even orders of the first `tickets` completed and sold their
/// ticket (paid, captured), every other order was cancelled and its ticket
/// is available again. Ticket `j` is sold by user `j mod users`. Times lie
/// in the hour before `now_ms`.
pub fn statements(service: &str, size: &Size, now_ms: i64) -> Vec<String> {
    let Size {
        users,
        tickets,
        orders,
    } = *size;
    let (users, tickets) = (users.max(2), tickets.max(1));
    let hour_ago = now_ms - 3_600_000;
    // An order completed: even, and the first order of its ticket.
    let complete = format!("(i % 2 = 0 AND i < {tickets})");
    let order_status = format!("CASE WHEN {complete} THEN 'complete' ELSE 'cancelled' END");
    // A ticket sold: its first order (order j) completed.
    let sold = format!("(i % 2 = 0 AND i < {orders})");
    let ticket_status = format!("CASE WHEN {sold} THEN 'sold' ELSE 'available' END");
    // Created, reserved, then sold or released: version 2 once ordered.
    let ticket_version = format!("CASE WHEN i < {orders} THEN 2 ELSE 0 END");
    let price = "(1000 + (i % 500) * 100)";
    let ticket_of_order = format!("(i % {tickets})");
    let buyer = format!("((i + 1) % {users})");
    let at = |count: u64| format!("({hour_ago} + (i * 3600000) / {})", count.max(1));
    match service {
        "auth" => vec![format!(
            "{}INSERT INTO users (id, email, password_hash, created_at, version, last_session_at) \
             SELECT {}, 'fill-' || i || '@loadgen.invalid', '!', {}, 0, 0 FROM n",
            series(users),
            id(1, "i"),
            at(users),
        )],
        "tickets" => vec![
            format!(
                "{}INSERT INTO tickets (id, title, price_cents, user_id, version, status, order_id, created_at) \
                 SELECT {}, 'Filled ticket ' || i, {price}, {}, {ticket_version}, {ticket_status}, \
                 CASE WHEN {sold} THEN {} END, {} FROM n",
                series(tickets),
                id(2, "i"),
                id(1, &format!("(i % {users})")),
                id(3, "i"),
                at(tickets),
            ),
            format!(
                "{}INSERT INTO orders (id, ticket_id, version, status) \
                 SELECT {}, {}, 1, {order_status} FROM n",
                series(orders),
                id(3, "i"),
                id(2, &ticket_of_order),
            ),
        ],
        "orders" => vec![
            format!(
                "{}INSERT INTO tickets (id, title, price_cents, user_id, version, status) \
                 SELECT {}, 'Filled ticket ' || i, {price}, {}, {ticket_version}, {ticket_status} FROM n",
                series(tickets),
                id(2, "i"),
                id(1, &format!("(i % {users})")),
            ),
            format!(
                "{}INSERT INTO orders (id, user_id, ticket_id, status, expires_at, version, created_at) \
                 SELECT {}, {}, {}, {order_status}, {} + 900000, 1, {} FROM n",
                series(orders),
                id(3, "i"),
                id(1, &buyer),
                id(2, &ticket_of_order),
                at(orders),
                at(orders),
            ),
            format!(
                "{}INSERT INTO buyers (user_id) SELECT {} FROM n",
                series(users.min(orders)),
                id(1, &buyer),
            ),
        ],
        "payments" => vec![
            format!(
                "{}INSERT INTO orders (id, user_id, price_cents, status, version) \
                 SELECT {}, {}, (1000 + ({ticket_of_order} % 500) * 100), {order_status}, 1 FROM n",
                series(orders),
                id(3, "i"),
                id(1, &buyer),
            ),
            format!(
                "{}INSERT INTO payments (id, order_id, authorization_id, amount_cents, created_at, status, attempts, card_declined, user_id) \
                 SELECT {}, {}, 'fill-authorization-' || i, (1000 + ({ticket_of_order} % 500) * 100), {}, 'captured', 1, 0, {} \
                 FROM n WHERE {complete}",
                series(orders),
                id(4, "i"),
                id(3, "i"),
                at(orders),
                id(1, &buyer),
            ),
        ],
        // Every filled order has run its course: no timer is pending, and
        // fired timers are forgotten after a day.
        _ => Vec::new(),
    }
}

/// The tables `statements` fills, for counting them afterwards.
fn tables(service: &str) -> &'static [&'static str] {
    match service {
        "auth" => &["users"],
        "tickets" => &["tickets", "orders"],
        "orders" => &["tickets", "orders", "buyers"],
        "payments" => &["orders", "payments"],
        _ => &[],
    }
}

/// Where the stores of one marketplace are.
enum Stores {
    /// SQLite files in the data directory.
    Sqlite,
    /// A PostgreSQL scratch schema per service (`<SERVICE>_DATABASE_URL`),
    /// dropped with the value.
    Postgres(BTreeMap<&'static str, ScratchSchema>),
}

/// One marketplace's data directory and stores.
struct Target {
    name: &'static str,
    dir: tempfile::TempDir,
    stores: Stores,
}

impl Target {
    async fn new(name: &'static str, database_url: Option<&str>) -> anyhow::Result<Target> {
        let dir = tempfile::tempdir()?;
        let stores = match database_url {
            None => Stores::Sqlite,
            Some(base) => {
                let mut schemas = BTreeMap::new();
                for service in SERVICES {
                    let schema = ScratchSchema::create(base, &format!("loadgen_{name}_{service}"))
                        .await
                        .with_context(|| base.to_owned())?;
                    schemas.insert(service, schema);
                }
                Stores::Postgres(schemas)
            }
        };
        Ok(Target { name, dir, stores })
    }

    /// The marketplace on these stores, ready on a free port.
    async fn start(&self, binary: &Path) -> anyhow::Result<Running> {
        let port = provision::local::free_port()?;
        let mut cmd = Command::new(binary);
        cmd.args(["run", "--host", "127.0.0.1", "--port", &port.to_string()])
            .arg("--data-dir")
            .arg(self.dir.path())
            .env_remove("NATS_URL")
            .env_remove("DATABASE_URL")
            .env_remove("TICKETING_SERVICES")
            .env_remove("STRIPE_SECRET_KEY")
            .env("AUTH_RATE_LIMIT_PER_MINUTE", "1000000")
            .env("COOKIE_SECURE", "false")
            .env("JWT_KEY", "loadgen-fill-key-0123456789abcdef")
            .env("RUST_LOG", "error")
            .stdout(Stdio::null());
        if let Stores::Postgres(schemas) = &self.stores {
            // DATABASE_URL chooses PostgreSQL; each service's own URL wins.
            for (service, schema) in schemas {
                cmd.env("DATABASE_URL", &schema.url).env(
                    format!("{}_DATABASE_URL", service.to_ascii_uppercase()),
                    &schema.url,
                );
            }
        }
        let child = cmd.spawn().with_context(|| binary.display().to_string())?;
        let running = Running {
            child,
            url: format!("http://127.0.0.1:{port}"),
            port,
        };
        let (since, within) = (Instant::now(), Duration::from_secs(120));
        if crate::api::wait_ready(&running.url, since, within, Duration::from_millis(20)).await {
            return Ok(running);
        }
        anyhow::bail!(
            "the marketplace on the {} stores never became ready",
            self.name
        )
    }

    /// Fills the stores (their tables made by a start of the binary):
    /// the rows written per table.
    async fn fill(&self, size: &Size) -> anyhow::Result<BTreeMap<String, i64>> {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis() as i64;
        let mut counts = BTreeMap::new();
        for service in SERVICES {
            let sql = statements(service, size, now_ms);
            let count: Vec<String> = tables(service)
                .iter()
                .map(|t| format!("SELECT COUNT(*) FROM {t}"))
                .collect();
            let rows: Vec<i64> = match &self.stores {
                Stores::Sqlite => {
                    let path = self.dir.path().join(format!("{service}.db"));
                    tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<i64>> {
                        let mut c = rusqlite::Connection::open(&path)
                            .with_context(|| path.display().to_string())?;
                        let tx = c.transaction()?;
                        for s in &sql {
                            tx.execute_batch(s).with_context(|| s.clone())?;
                        }
                        tx.commit()?;
                        count
                            .iter()
                            .map(|q| Ok(c.query_row(q, [], |r| r.get(0))?))
                            .collect()
                    })
                    .await??
                }
                Stores::Postgres(schemas) => {
                    let (mut c, conn) =
                        tokio_postgres::connect(&schemas[service].url, tokio_postgres::NoTls)
                            .await?;
                    tokio::spawn(conn);
                    let tx = c.transaction().await?;
                    for s in &sql {
                        tx.batch_execute(s).await.with_context(|| s.clone())?;
                    }
                    tx.commit().await?;
                    c.batch_execute("ANALYZE").await?;
                    let mut rows = Vec::new();
                    for q in &count {
                        rows.push(c.query_one(q.as_str(), &[]).await?.get(0));
                    }
                    rows
                }
            };
            for (table, n) in tables(service).iter().zip(rows) {
                counts.insert(format!("{service}.{table}"), n);
            }
        }
        Ok(counts)
    }
}

/// A running marketplace, killed when dropped.
struct Running {
    child: Child,
    url: String,
    port: u16,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The arguments of `loadgen fill`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The `ticketing` binary to run on each set of stores.
    #[arg(long, default_value = "target/release/ticketing")]
    pub binary: PathBuf,
    /// Users in the full stores.
    #[arg(long, default_value_t = 100_000)]
    pub users: u64,
    /// Tickets in the full stores.
    #[arg(long, default_value_t = 1_000_000)]
    pub tickets: u64,
    /// Orders in the full stores.
    #[arg(long, default_value_t = 1_000_000)]
    pub orders: u64,
    /// Purchase runs on each set of stores, alternating.
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// Buyers of each purchase run.
    #[arg(long, default_value_t = 50)]
    pub buyers: usize,
    /// Tickets listed before each purchase run.
    #[arg(long = "listed", default_value_t = 40_000)]
    pub listed: usize,
    /// Store in PostgreSQL (a scratch schema per service and set of
    /// stores, on this server, dropped afterwards) instead of SQLite.
    #[arg(long)]
    pub database_url: Option<String>,
}

/// What `loadgen fill` hands to the report.
pub struct Outcome {
    pub checks: Vec<Check>,
    pub comparisons: Vec<Comparison>,
    pub figures: Vec<Figure>,
    pub settings: serde_json::Value,
}

/// One of a run's figures.
type RunFigure = fn(&Run) -> f64;

/// Pays per second and CPU per pay of one purchase run.
struct Run {
    pays: f64,
    cpu_per_pay: f64,
}

async fn purchase_run(
    running: &Running,
    load: &Load,
    args: &Args,
) -> anyhow::Result<(Run, Vec<Check>)> {
    let api = Api::new(&running.url, load.concurrency);
    let watch = procs::Watch::start(Some(running.port));
    let outcome = scenarios::purchase(&api, load, args.buyers, args.listed, true).await?;
    let memory = watch.finish().await;
    let ops = outcome.recorder.summary(Some(outcome.measured));
    let pay = ops.iter().find(|o| o.op == "pay");
    let (pays, ok) = pay.map_or((0.0, 0), |o| (o.per_second, o.ok));
    let cpu_ms: f64 = memory.iter().map(|m| m.cpu_ms).sum();
    Ok((
        Run {
            pays,
            cpu_per_pay: if ok > 0 { cpu_ms / ok as f64 } else { 0.0 },
        },
        outcome.checks,
    ))
}

/// Filled rows answer through the API: the first page of tickets lists
/// filled ones, and one filled ticket and its sale read back as filled.
async fn filled_rows_answer(running: &Running, size: &Size) -> Check {
    let api = Api::new(&running.url, 1);
    let list = api.get("/api/tickets?limit=50", None).await;
    let listed = list.body.as_array().map_or(0, Vec::len);
    let ticket = api
        .get(
            &format!(
                "/api/tickets/00000000-0000-7000-8002-{}",
                100_000_000_000u64
            ),
            None,
        )
        .await;
    let status = ticket
        .body
        .get("status")
        .and_then(|s| s.as_str())
        .unwrap_or("");
    let expected = if size.orders > 0 { "sold" } else { "available" };
    Check::new(
        "filled rows answer through the API",
        list.is(200) && listed > 0 && ticket.is(200) && status == expected,
        format!(
            "GET /api/tickets: {:?}, {listed} listed; the first filled ticket: {:?}, status {status:?} (expected {expected:?})",
            list.status, ticket.status
        ),
    )
}

pub async fn run(args: &Args, load: &Load) -> anyhow::Result<Outcome> {
    let size = Size {
        users: args.users,
        tickets: args.tickets,
        orders: args.orders,
    };
    let empty = Target::new("empty", args.database_url.as_deref()).await?;
    let full = Target::new("full", args.database_url.as_deref()).await?;
    rounds(args, load, &size, &empty, &full).await
}

async fn rounds(
    args: &Args,
    load: &Load,
    size: &Size,
    empty: &Target,
    full: &Target,
) -> anyhow::Result<Outcome> {
    // A first start makes every table; then the full stores are filled.
    for t in [empty, full] {
        drop(t.start(&args.binary).await?);
    }
    eprintln!(
        "filling: {} users, {} tickets, {} orders…",
        size.users, size.tickets, size.orders
    );
    let started = Instant::now();
    let counts = full.fill(size).await?;
    let fill_seconds = started.elapsed().as_secs_f64();
    let mut checks = Vec::new();
    let mut runs: BTreeMap<&str, Vec<Run>> = BTreeMap::new();
    for round in 0..args.rounds.max(1) {
        // Alternating which goes first, so a drift of the machine falls
        // on both.
        let order = if round % 2 == 0 {
            [empty, full]
        } else {
            [full, empty]
        };
        for t in order {
            eprintln!("round {}: purchases on the {} stores…", round + 1, t.name);
            let running = t.start(&args.binary).await?;
            if round == 0 && t.name == "full" {
                checks.push(filled_rows_answer(&running, size).await);
            }
            let (r, c) = purchase_run(&running, load, args).await?;
            for mut check in c {
                check.name = format!("{} ({} stores, round {})", check.name, t.name, round + 1);
                checks.push(check);
            }
            runs.entry(t.name).or_default().push(r);
        }
    }
    let median = |name: &str, f: fn(&Run) -> f64| {
        let mut v: Vec<f64> = runs
            .get(name)
            .map(|r| r.iter().map(f).collect())
            .unwrap_or_default();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let list = |name: &str, f: fn(&Run) -> f64| {
        runs.get(name)
            .map(|r| {
                r.iter()
                    .map(|x| format!("{:.3}", f(x)))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    let mut figures = vec![Figure {
        what: format!(
            "filling the full stores ({})",
            counts
                .iter()
                .map(|(t, n)| format!("{t} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        value: fill_seconds,
        unit: "s".into(),
        goal: None,
        met: None,
    }];
    let per_round: [(&str, RunFigure, &str); 2] = [
        ("pays/s", |r| r.pays, "per s (median)"),
        ("CPU per pay", |r| r.cpu_per_pay, "ms (median)"),
    ];
    for name in ["empty", "full"] {
        for (what, f, unit) in per_round {
            figures.push(Figure {
                what: format!(
                    "{what} on the {name} stores, each round ({})",
                    list(name, f)
                ),
                value: median(name, f),
                unit: unit.into(),
                goal: None,
                met: None,
            });
        }
    }
    let comparisons = vec![Comparison::new(
        "purchases (pays/s) on the full stores",
        median("full", |r| r.pays),
        "the same on the empty stores, same run",
        median("empty", |r| r.pays),
        "per s",
        Some(("≥", 0.9)),
    )];
    Ok(Outcome {
        checks,
        comparisons,
        figures,
        settings: json!({"size": size, "rounds": args.rounds, "buyers": args.buyers,
            "listed": args.listed, "binary": args.binary,
            "engine": if args.database_url.is_some() { "postgresql" } else { "sqlite" },
            "rows": counts}),
    })
}
