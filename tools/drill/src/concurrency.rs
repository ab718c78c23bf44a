//! `ticketing drill concurrency`: the design's concurrency drill, run on a
//! small cluster the command starts itself — replicas of the tickets and
//! orders services as separate processes on NATS JetStream and PostgreSQL.
//!
//! 1. Writes: N parallel clients each sell a ticket at 5, edit it to 10, then
//!    to 15, each request to a different tickets replica than the last, so
//!    the events of one ticket come from different processes.
//! 2. Convergence: every ticket's copy in the orders database must reach
//!    price 15 and version 2 (never a stale price, never a lost update).
//! 3. Delivery: the orders replicas between them handle each event once
//!    (`events_handled_total` summed over replicas equals what the tickets
//!    replicas published).
//! 4. Race: two buyers order each ticket at the same moment through
//!    different orders replicas; exactly one wins, the other gets 409.

use anyhow::Context as _;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shared::auth::{AuthKeys, AuthUser};
use shared::ids::UserId;
use shared::time::Clock;
use store::scratch::ScratchSchema;

use crate::cluster::{Cluster, Logs, NatsServer};

#[derive(Debug, Clone, clap::Args)]
pub struct ConcurrencyArgs {
    /// Parallel clients, each selling one ticket and editing it twice.
    #[arg(long, default_value_t = 200)]
    pub clients: usize,
    /// Processes of the tickets service and of the orders service.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=16))]
    pub replicas: u16,
    /// PostgreSQL server for the services' databases; the drill creates
    /// fresh schemas there and drops them afterwards.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// The nats-server binary the drill starts for itself (own port, own
    /// store in a temporary directory).
    #[arg(long, default_value = "nats-server")]
    pub nats_server: String,
    /// Use this NATS server instead of starting one. Never one a deployment
    /// uses: the drill's replicas join the standard durable consumers.
    #[arg(long)]
    pub nats_url: Option<String>,
    /// Seconds to wait for the replicas to converge.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// Keep the schemas and the processes' logs afterwards.
    #[arg(long)]
    pub keep: bool,
}

/// What the drill saw.
#[derive(Debug, Default)]
pub struct Report {
    pub clients: usize,
    pub replicas: u16,
    pub write_requests: usize,
    pub write_failures: Vec<String>,
    pub write_time: Duration,
    pub converged: usize,
    pub stale: Vec<String>,
    pub converge_time: Duration,
    /// Per subject: published by tickets, handled by each orders replica.
    pub deliveries: Vec<(&'static str, u64, Vec<u64>)>,
    pub race_won: usize,
    pub race_refused: usize,
    pub race_double: usize,
    pub race_other: Vec<String>,
    pub active_orders_per_ticket_max: i64,
    pub logs: Option<PathBuf>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.write_failures.is_empty()
            && self.converged == self.clients
            && self
                .deliveries
                .iter()
                .all(|(_, published, handled)| handled.iter().sum::<u64>() >= *published)
            && self.race_won == self.clients
            && self.race_double == 0
            && self.race_other.is_empty()
            && self.active_orders_per_ticket_max <= 1
    }
}

fn per_second(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.replicas;
        writeln!(
            f,
            "concurrency drill: {} clients, {r} tickets replicas, {r} orders replicas",
            self.clients
        )?;
        writeln!(
            f,
            "writes:      {} requests in {:.2} s ({:.0}/s), {} failed",
            self.write_requests,
            self.write_time.as_secs_f64(),
            per_second(self.write_requests, self.write_time),
            self.write_failures.len()
        )?;
        for e in self.write_failures.iter().take(5) {
            writeln!(f, "             {e}")?;
        }
        writeln!(
            f,
            "converged:   {}/{} tickets at price 15, version 2 in the orders service, {:.2} s after the last write",
            self.converged,
            self.clients,
            self.converge_time.as_secs_f64()
        )?;
        for s in self.stale.iter().take(5) {
            writeln!(f, "             stale: {s}")?;
        }
        for (subject, published, handled) in &self.deliveries {
            let total: u64 = handled.iter().sum();
            let split: Vec<String> = handled.iter().map(u64::to_string).collect();
            let note = match total.cmp(published) {
                std::cmp::Ordering::Equal => "each once",
                std::cmp::Ordering::Less => "LOST",
                std::cmp::Ordering::Greater => "some redelivered, ignored as duplicates",
            };
            writeln!(
                f,
                "events:      {subject}: {published} published, {total} handled by the orders replicas ({}): {note}",
                split.join(" + ")
            )?;
        }
        writeln!(
            f,
            "race:        2 buyers per ticket on different orders replicas: {} won, {} refused with 409, {} tickets with two winners; at most {} active order(s) per ticket",
            self.race_won, self.race_refused, self.race_double, self.active_orders_per_ticket_max
        )?;
        for e in self.race_other.iter().take(5) {
            writeln!(f, "             unexpected: {e}")?;
        }
        if let Some(logs) = &self.logs {
            writeln!(f, "logs:        {}", logs.display())?;
        }
        write!(f, "{}", if self.passed() { "PASS" } else { "FAIL" })
    }
}

/// Runs the drill with `exe` (this binary) as the services' program.
pub async fn concurrency(exe: &Path, args: ConcurrencyArgs) -> anyhow::Result<Report> {
    let database_url = required_database(&args.database_url)?;
    in_work_dir("ticketing-drill", args.keep, |work| async move {
        run(exe, &args, &database_url, &work).await
    })
    .await
}

/// What a drill's report must say for [`in_work_dir`].
pub(crate) trait DrillReport {
    fn passed(&self) -> bool;
    fn set_logs(&mut self, dir: PathBuf);
}

impl DrillReport for Report {
    fn passed(&self) -> bool {
        Report::passed(self)
    }
    fn set_logs(&mut self, dir: PathBuf) {
        self.logs = Some(dir);
    }
}

/// The PostgreSQL URL every drill needs, or the error that says so.
pub(crate) fn required_database(url: &Option<String>) -> anyhow::Result<String> {
    url.clone().context(
        "the drill needs PostgreSQL: pass --database-url or set DATABASE_URL \
         (e.g. postgres://postgres@127.0.0.1:5432/postgres)",
    )
}

/// Runs `drill` with a fresh work directory for its logs and stores, kept
/// (and named in the report or the error) when `keep` is set or the drill
/// failed, removed otherwise.
pub(crate) async fn in_work_dir<R, F, Fut>(name: &str, keep: bool, drill: F) -> anyhow::Result<R>
where
    R: DrillReport,
    F: FnOnce(PathBuf) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<R>>,
{
    let work = std::env::temp_dir().join(format!(
        "{name}-{}-{}",
        std::process::id(),
        Clock::System.now().millis()
    ));
    std::fs::create_dir_all(&work).with_context(|| format!("{}", work.display()))?;
    let result = drill(work.clone()).await;
    let failed = !result.as_ref().is_ok_and(R::passed);
    if keep || failed {
        match result {
            Ok(mut r) => {
                r.set_logs(work);
                Ok(r)
            }
            Err(e) => Err(e.context(format!("logs in {}", work.display()))),
        }
    } else {
        let _ = std::fs::remove_dir_all(&work);
        result
    }
}

async fn run(
    exe: &Path,
    args: &ConcurrencyArgs,
    database_url: &str,
    work: &Path,
) -> anyhow::Result<Report> {
    let schema = |what: &'static str| async move {
        ScratchSchema::create(database_url, &format!("drill_{what}"))
            .await
            .with_context(|| format!("PostgreSQL at {database_url}"))
    };
    let (mut tickets_db, mut orders_db) = (schema("tickets").await?, schema("orders").await?);
    if args.keep {
        tickets_db.keep();
        orders_db.keep();
    }

    // NATS: our own server unless told otherwise; the streams provisioned.
    let mut own_nats = None;
    let (nats_url, js) = match &args.nats_url {
        Some(url) => {
            let client = async_nats::connect(url)
                .await
                .with_context(|| format!("NATS at {url}"))?;
            (url.clone(), async_nats::jetstream::new(client))
        }
        None => {
            let server = NatsServer::start(
                &args.nats_server,
                &work.join("nats"),
                Logs::Dir(work.to_owned()),
            )
            .context("install nats-server, or pass --nats-server PATH or --nats-url URL")?;
            let js = server.jetstream().await.map_err(anyhow::Error::msg)?;
            let url = server.url();
            own_nats = Some(server);
            (url, js)
        }
    };
    provision::ensure(
        &js.client(),
        &provision::Spec::built_in(&marketplace_events::STREAMS),
    )
    .await?;

    let jwt_key = format!("drill-{}", uuid::Uuid::new_v4().simple());
    let mut cluster = Cluster::new(
        exe,
        &[
            ("NATS_URL", nats_url),
            ("JWT_KEY", jwt_key.clone()),
            ("COOKIE_SECURE", "false".into()),
            ("RUST_LOG", "warn".into()),
        ],
        Logs::Dir(work.to_owned()),
    );
    let replicas = usize::from(args.replicas);
    let mut tickets = Vec::new();
    let mut orders = Vec::new();
    for i in 1..=replicas {
        let spawn = |c: &mut Cluster, service: &str, url: &str| {
            c.spawn(
                &format!("{service}-{i}"),
                service,
                &[("DATABASE_URL", url.to_owned())],
            )
            .with_context(|| format!("cannot start {service}"))
        };
        tickets.push(spawn(&mut cluster, "tickets", &tickets_db.url)?);
        orders.push(spawn(&mut cluster, "orders", &orders_db.url)?);
    }
    cluster.all_ready(Duration::from_secs(60)).await?;
    let tickets_metrics_urls: Vec<String> =
        tickets.iter().map(|id| cluster.metrics_url(*id)).collect();
    let orders_metrics_urls: Vec<String> =
        orders.iter().map(|id| cluster.metrics_url(*id)).collect();
    let tickets: Vec<String> = tickets.into_iter().map(|id| cluster.url(id)).collect();
    let orders_urls: Vec<String> = orders.iter().map(|id| cluster.url(*id)).collect();

    let keys = AuthKeys::new(jwt_key.as_bytes(), Duration::from_secs(3600), false);
    let token = |email: &str| {
        keys.issue(
            &AuthUser {
                id: UserId::new(),
                email: email.to_owned(),
            },
            Clock::System.now(),
        )
        .map_err(|e| anyhow::anyhow!("cannot sign a session: {e:?}"))
    };
    let seller = Arc::new(token("seller@drill.invalid")?);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;

    let mut report = Report {
        clients: args.clients,
        replicas: args.replicas,
        write_requests: args.clients * 3,
        ..Report::default()
    };

    // 1. Writes.
    let started = Instant::now();
    let mut writers = Vec::new();
    for i in 0..args.clients {
        let (http, seller) = (http.clone(), seller.clone());
        let a = tickets[i % replicas].clone();
        let b = tickets[(i + 1) % replicas].clone();
        writers.push(tokio::spawn(async move {
            let created = send(
                &http,
                &seller,
                "POST",
                &format!("{a}/api/tickets"),
                json!({"title": format!("Drill {i}"), "price": 5}),
                201,
            )
            .await?;
            let id = created["id"]
                .as_str()
                .context("no id in the created ticket")?
                .to_owned();
            for (base, price) in [(&b, 10), (&a, 15)] {
                send(
                    &http,
                    &seller,
                    "PUT",
                    &format!("{base}/api/tickets/{id}"),
                    json!({"title": format!("Drill {i}"), "price": price}),
                    200,
                )
                .await?;
            }
            Ok::<String, anyhow::Error>(id)
        }));
    }
    let mut ids = Vec::new();
    for w in writers {
        match w.await {
            Ok(Ok(id)) => ids.push(id),
            Ok(Err(e)) => report.write_failures.push(format!("{e:#}")),
            Err(e) => report.write_failures.push(e.to_string()),
        }
    }
    report.write_time = started.elapsed();

    // 2. Convergence, read from the orders service's own database.
    let db = store::Db::postgres_lazy(&orders_db.url, 2)?;
    let wanted: HashSet<String> = ids.iter().cloned().collect();
    let waited = Instant::now();
    let deadline = waited + Duration::from_secs(args.timeout);
    loop {
        let rows = db
            .read(|c| {
                c.query("SELECT id, price_cents, version FROM tickets", &[])?
                    .iter()
                    .map(|r| Ok((r.get::<String>(0)?, r.get::<i64>(1)?, r.get::<i64>(2)?)))
                    .collect::<Result<Vec<_>, store::StoreError>>()
            })
            .await
            .context("reading the orders database")?;
        let copies: HashMap<String, (i64, i64)> =
            rows.into_iter().map(|(id, p, v)| (id, (p, v))).collect();
        report.stale = wanted
            .iter()
            .filter(|id| copies.get(*id) != Some(&(1500, 2)))
            .map(|id| match copies.get(id) {
                Some((p, v)) => format!("{id} at {p} cents, version {v}"),
                None => format!("{id} missing"),
            })
            .collect();
        report.converged = wanted.len() - report.stale.len();
        if report.stale.is_empty() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    report.converge_time = waited.elapsed();

    // 3. Delivery counts from the processes' own metrics.
    let published = |text: &str, subject: &str| {
        metric(
            text,
            "events_published_total",
            &format!("service=\"tickets\",subject=\"{subject}\""),
        )
    };
    let handled = |text: &str, subject: &str| {
        metric(
            text,
            "events_handled_total",
            &format!("service=\"orders\",subject=\"{subject}\""),
        )
    };
    let mut tickets_metrics = Vec::new();
    for url in &tickets_metrics_urls {
        tickets_metrics.push(fetch_metrics(&http, url).await?);
    }
    let mut orders_metrics = Vec::new();
    for url in &orders_metrics_urls {
        orders_metrics.push(fetch_metrics(&http, url).await?);
    }
    for subject in ["ticket.created", "ticket.updated"] {
        report.deliveries.push((
            subject,
            tickets_metrics.iter().map(|t| published(t, subject)).sum(),
            orders_metrics.iter().map(|t| handled(t, subject)).collect(),
        ));
    }

    // 4. The race: two buyers per ticket, through different orders replicas.
    // Two buyers of their own for each ticket, as in life (one account may
    // hold only a few unpaid orders at once).
    let mut racers = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let buyers = [
            Arc::new(token(&format!("buyer-a-{i}@drill.invalid"))?),
            Arc::new(token(&format!("buyer-b-{i}@drill.invalid"))?),
        ];
        let mut attempts = Vec::new();
        for (b, buyer) in buyers.iter().enumerate() {
            let (http, buyer, id) = (http.clone(), buyer.clone(), id.clone());
            let base = orders_urls[(i + b) % replicas].clone();
            attempts.push(tokio::spawn(async move {
                let res = http
                    .post(format!("{base}/api/orders"))
                    .bearer_auth(buyer.as_str())
                    .json(&json!({"ticketId": id}))
                    .send()
                    .await?;
                Ok::<_, anyhow::Error>(res.status().as_u16())
            }));
        }
        racers.push((id.clone(), attempts));
    }
    for (id, attempts) in racers {
        let mut won = 0;
        for a in attempts {
            match a.await.map_err(anyhow::Error::from).and_then(|r| r) {
                Ok(201) => won += 1,
                Ok(409) => report.race_refused += 1,
                Ok(status) => report.race_other.push(format!("{id}: status {status}")),
                Err(e) => report.race_other.push(format!("{id}: {e:#}")),
            }
        }
        match won {
            1 => report.race_won += 1,
            0 => {}
            _ => report.race_double += 1,
        }
    }
    report.active_orders_per_ticket_max = db
        .read(|c| {
            c.query_opt(
                "SELECT COUNT(*) FROM orders WHERE status = 'created' \
                 GROUP BY ticket_id ORDER BY COUNT(*) DESC LIMIT 1",
                &[],
            )?
            .map(|r| r.get::<i64>(0))
            .transpose()
        })
        .await
        .context("reading the orders database")?
        .unwrap_or(0);

    drop(cluster);
    drop(js);
    drop(own_nats);
    Ok(report)
}

/// Sends a JSON request and expects `status`; the error names what happened.
async fn send(
    http: &reqwest::Client,
    token: &str,
    method: &str,
    url: &str,
    body: Value,
    status: u16,
) -> anyhow::Result<Value> {
    let method = reqwest::Method::from_bytes(method.as_bytes())?;
    let res = http
        .request(method.clone(), url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("{method} {url}"))?;
    let got = res.status().as_u16();
    let text = res.text().await.unwrap_or_default();
    if got != status {
        anyhow::bail!("{method} {url}: {got} {text}");
    }
    serde_json::from_str(&text).with_context(|| format!("{method} {url}"))
}

async fn fetch_metrics(http: &reqwest::Client, url: &str) -> anyhow::Result<String> {
    http.get(url)
        .send()
        .await
        .with_context(|| url.to_string())?
        .text()
        .await
        .with_context(|| url.to_string())
}

/// A counter's value in Prometheus text (0 if absent).
fn metric(text: &str, name: &str, labels: &str) -> u64 {
    let key = format!("{name}{{{labels}}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_reads_one_labelled_counter() {
        let text = "# TYPE events_handled_total counter\n\
                    events_handled_total{service=\"orders\",subject=\"ticket.created\"} 7\n\
                    events_handled_total{service=\"orders\",subject=\"ticket.updated\"} 12\n";
        assert_eq!(
            metric(
                text,
                "events_handled_total",
                "service=\"orders\",subject=\"ticket.updated\""
            ),
            12
        );
        assert_eq!(
            metric(
                text,
                "events_handled_total",
                "service=\"tickets\",subject=\"x\""
            ),
            0
        );
    }
}
