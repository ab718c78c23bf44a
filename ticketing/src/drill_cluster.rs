//! `ticketing drill cluster`: the marketplace on a three-node NATS cluster
//! (streams with three replicas) and PostgreSQL, under a steady purchase
//! load through the gateway, while NATS nodes fail: the ORDERS stream's
//! leader killed with SIGKILL, a follower killed, the leader and then a
//! follower cut off from everything, every node restarted in turn — and a
//! service process killed with each. Each fault is healed within its
//! phase; then the drill checks what the crash suite checks — every order
//! terminal (paid ones complete, the rest cancelled by expiry), no ticket
//! sold twice, a hold captured exactly when its order completed, every copy
//! converged, outboxes empty, nothing parked, every process alive and ready
//! without a restart — and accounts for every event by id (`ledger`). Per
//! fault it reports the longest request as a buyer saw it (retries
//! included: a 503 while no replica of a service can take it, a 404 while
//! the event a step depends on is on its way), the answers 503 (retried),
//! the longest an event waited in an outbox to be published, how long
//! until every service was ready again, which streams the failed node led
//! (each had to elect a leader) and which process was ready last, and why.
//!
//! Processes: auth, tickets ×2, orders ×2, expiration, payments (the
//! offline test gateway) and the gateway in front of them, which takes each
//! service's replicas in turn and skips one that refuses connections (as a
//! Kubernetes Service drops an endpoint). With each fault one service
//! process is killed (SIGKILL) and started again at the heal: orders-1,
//! tickets-1, orders-2, payments, expiration. The seller and the buyers sign
//! up through the gateway before the load.
//!
//! The partitions: each node runs in a network namespace of its own, joined
//! to the others and to this machine by a bridge; cutting a node's link
//! isolates it from both while it keeps running (`--no-partitions` where
//! namespaces cannot be made).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use store::scratch::ScratchSchema;

use crate::cluster::{Cluster, Logs, ProcId};
use provision::local::NatsCluster;

mod ledger;

#[derive(Debug, Clone, clap::Args)]
pub struct ClusterArgs {
    /// PostgreSQL server for the services' databases (fresh schemas,
    /// dropped afterwards).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// The nats-server binary; the drill starts three of its own.
    #[arg(long, default_value = "nats-server")]
    pub nats_server: String,
    /// Purchases started per second during each phase.
    #[arg(long, default_value_t = 10)]
    pub rate: u32,
    /// Seconds of load per fault: the fault comes a quarter in and is
    /// healed halfway.
    #[arg(long, default_value_t = 20)]
    pub phase: u64,
    /// Seconds an unpaid order holds its ticket (every fourth purchase is
    /// left unpaid, to expire); a payment that comes later is refused.
    #[arg(long, default_value_t = 15)]
    pub expiration: u64,
    /// Leave out the network partitions (they need root, or CAP_NET_ADMIN,
    /// and iproute2: each node runs in a network namespace of its own).
    #[arg(long)]
    pub no_partitions: bool,
    /// Only these faults, in this order (comma-separated): leader,
    /// follower, partition-leader, partition-follower, rolling. Default:
    /// all (the partitions unless `--no-partitions`).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub faults: Vec<Fault>,
    /// Keep the schemas and the processes' logs afterwards.
    #[arg(long)]
    pub keep: bool,
}

/// What one fault cost, as the load saw it.
#[derive(Debug, Default, Clone)]
pub struct Phase {
    pub fault: String,
    pub purchases: usize,
    /// Purchases whose requests failed even after retrying for 30 s.
    pub failed: Vec<String>,
    pub requests: usize,
    /// Answers 503 (and connection errors), each retried.
    pub unavailable: usize,
    /// Payments refused because the order had expired first (its event
    /// reached payments after the hold ran out): correct, and counted.
    pub expired_first: usize,
    pub longest_request: Duration,
    /// The longest an event waited in an outbox to be published (sampled
    /// every 100 ms): the stall of publish acks as the services saw it.
    pub longest_publish_wait: Duration,
    /// From the heal until every service answered `/readyz` 200.
    pub ready_after: Duration,
    /// The streams the failed node led when the fault came (none for a
    /// rolling restart): each had to elect a new leader, which is where a
    /// follower's loss can cost as much as the leader's.
    pub led: Vec<String>,
    /// The process that was the last to be ready after the heal, and what
    /// its `/readyz` said before.
    pub ready_last: Option<(String, String)>,
}

/// What the drill saw.
#[derive(Debug, Default)]
pub struct Report {
    pub nats_version: String,
    pub phases: Vec<Phase>,
    pub orders: usize,
    pub not_terminal: Vec<String>,
    pub sold_twice: Vec<String>,
    pub unconverged: Vec<String>,
    pub outbox_rows: Vec<String>,
    /// Events read back from the streams, by id.
    pub events: usize,
    /// Where the stored events disagree with their owners (see `ledger`).
    pub ledger: Vec<String>,
    /// Durable consumers not delivered or not acknowledging everything.
    pub consumers_behind: Vec<String>,
    pub parked: u64,
    pub died: Vec<String>,
    pub logs: Option<PathBuf>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.phases.iter().all(|p| p.failed.is_empty())
            && self.not_terminal.is_empty()
            && self.sold_twice.is_empty()
            && self.unconverged.is_empty()
            && self.outbox_rows.is_empty()
            && self.ledger.is_empty()
            && self.consumers_behind.is_empty()
            && self.parked == 0
            && self.died.is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "cluster drill: three nats-server {} nodes, streams with 3 replicas; auth, tickets ×2, orders ×2, expiration, payments behind the gateway",
            self.nats_version
        )?;
        writeln!(
            f,
            "{:<44} {:>9} {:>7} {:>9} {:>14} {:>13} {:>12} {:>14}",
            "fault",
            "purchases",
            "failed",
            "503/retry",
            "longest request",
            "publish wait",
            "ready after",
            "expired first"
        )?;
        for p in &self.phases {
            writeln!(
                f,
                "{:<44} {:>9} {:>7} {:>9} {:>11.0} ms {:>10.0} ms {:>9.0} ms {:>14}",
                p.fault,
                p.purchases,
                p.failed.len(),
                p.unavailable,
                p.longest_request.as_secs_f64() * 1000.0,
                p.longest_publish_wait.as_secs_f64() * 1000.0,
                p.ready_after.as_secs_f64() * 1000.0,
                p.expired_first
            )?;
            if !p.led.is_empty() {
                writeln!(f, "    the node led {}", p.led.join(", "))?;
            }
            if let Some((process, why)) = &p.ready_last {
                let why: String = why.chars().take(240).collect();
                writeln!(f, "    ready last: {process}, which had said {why}")?;
            }
            for e in p.failed.iter().take(3) {
                writeln!(f, "    failed: {e}")?;
            }
        }
        let list = |f: &mut fmt::Formatter<'_>, what: &str, items: &[String]| {
            if items.is_empty() {
                writeln!(f, "{what}: ok")
            } else {
                writeln!(
                    f,
                    "{what}: {} — {}",
                    items.len(),
                    items[..items.len().min(5)].join("; ")
                )
            }
        };
        writeln!(f, "orders placed: {}", self.orders)?;
        list(f, "orders not terminal", &self.not_terminal)?;
        list(f, "tickets sold twice", &self.sold_twice)?;
        list(f, "copies or payments not settled", &self.unconverged)?;
        list(f, "outbox rows left", &self.outbox_rows)?;
        list(
            f,
            &format!("events by id ({} read back from the streams)", self.events),
            &self.ledger,
        )?;
        list(f, "consumers behind", &self.consumers_behind)?;
        writeln!(f, "parked messages: {}", self.parked)?;
        list(f, "processes that died", &self.died)?;
        if let Some(logs) = &self.logs {
            writeln!(f, "logs: {}", logs.display())?;
        }
        write!(f, "{}", if self.passed() { "PASS" } else { "FAIL" })
    }
}

/// Runs the drill with `exe` (this binary) as the services' program.
pub async fn cluster(exe: &Path, args: ClusterArgs) -> Result<Report, String> {
    faults(&args)?;
    let database_url = crate::drill::required_database(&args.database_url)?;
    crate::drill::in_work_dir("ticketing-cluster-drill", args.keep, |work| async move {
        run(exe, &args, &database_url, &work).await
    })
    .await
}

/// The faults to run, in order: `--faults`, or all of them (the
/// partitions unless `--no-partitions`); refused before anything starts
/// when a partition is asked for without namespaces.
fn faults(args: &ClusterArgs) -> Result<Vec<Fault>, String> {
    let faults = if args.faults.is_empty() {
        let mut all = vec![Fault::Leader, Fault::Follower];
        if !args.no_partitions {
            all.extend([Fault::PartitionLeader, Fault::PartitionFollower]);
        }
        all.push(Fault::RollingRestart);
        all
    } else {
        args.faults.clone()
    };
    if args.no_partitions
        && faults
            .iter()
            .any(|f| matches!(f, Fault::PartitionLeader | Fault::PartitionFollower))
    {
        return Err("the partitions need network namespaces: leave out --no-partitions".into());
    }
    Ok(faults)
}

impl crate::drill::DrillReport for Report {
    fn passed(&self) -> bool {
        Report::passed(self)
    }
    fn set_logs(&mut self, dir: PathBuf) {
        self.logs = Some(dir);
    }
}

const SERVICES: [&str; 5] = ["auth", "tickets", "orders", "expiration", "payments"];

/// Buyers signed up before the load; purchases take them in turn.
const BUYERS: usize = 16;

/// The load's view of the system: the gateway, and the sessions of a
/// seller and of the buyers (signed up through it).
struct Target {
    http: reqwest::Client,
    gateway: String,
    seller: String,
    buyers: Vec<String>,
}

/// One request's outcome after retries, and what it cost.
struct Sent {
    status: u16,
    body: Value,
    elapsed: Duration,
    unavailable: usize,
}

impl Target {
    /// Sends until an answer that is not 503 / 502 / a connection error (or
    /// one of `retry_on`), for at most 30 s; every try under one
    /// `Idempotency-Key`, so a retry after a lost answer gets that answer
    /// where the API keeps it (orders, payments).
    async fn send(&self, token: &str, url: &str, body: &Value, retry_on: &[u16]) -> Sent {
        let started = Instant::now();
        let mut unavailable = 0;
        let key = uuid::Uuid::new_v4().simple().to_string();
        loop {
            let res = self
                .http
                .post(url)
                .bearer_auth(token)
                .header("idempotency-key", &key)
                .json(body)
                .send()
                .await;
            let (status, body) = match res {
                Ok(r) => {
                    let status = r.status().as_u16();
                    (status, r.json::<Value>().await.unwrap_or(Value::Null))
                }
                Err(_) => (0, Value::Null),
            };
            let retry = matches!(status, 0 | 502 | 503) || retry_on.contains(&status);
            if matches!(status, 0 | 502 | 503) {
                unavailable += 1;
            }
            if !retry || started.elapsed() > Duration::from_secs(30) {
                return Sent {
                    status,
                    body,
                    elapsed: started.elapsed(),
                    unavailable,
                };
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// One purchase: a ticket listed, ordered, and paid unless `unpaid`.
    async fn purchase(&self, n: usize, unpaid: bool, stats: &Mutex<Phase>) -> Result<(), String> {
        let buyer = &self.buyers[n % self.buyers.len()];
        let gateway = &self.gateway;
        let record = |s: &Sent| {
            let mut p = stats.lock().unwrap_or_else(|e| e.into_inner());
            p.requests += 1;
            p.unavailable += s.unavailable;
            p.longest_request = p.longest_request.max(s.elapsed);
        };
        let listed = self
            .send(
                &self.seller,
                &format!("{gateway}/api/tickets"),
                &json!({"title": format!("Drill {n}"), "price": 20}),
                &[],
            )
            .await;
        record(&listed);
        if listed.status != 201 {
            return Err(format!("listing {n}: {} {}", listed.status, listed.body));
        }
        let ticket = listed.body["id"].as_str().unwrap_or_default().to_owned();
        // 404 until orders has learned of the ticket.
        let ordered = self
            .send(
                buyer,
                &format!("{gateway}/api/orders"),
                &json!({"ticketId": ticket}),
                &[404],
            )
            .await;
        record(&ordered);
        match ordered.status {
            201 => {}
            // A retry after a lost answer: the first attempt reserved it.
            409 if ordered.unavailable > 0 => return Ok(()),
            s => return Err(format!("ordering {ticket}: {s} {}", ordered.body)),
        }
        if unpaid {
            return Ok(());
        }
        let order = ordered.body["id"].as_str().unwrap_or_default().to_owned();
        // 404 until payments has learned of the order.
        let paid = self
            .send(
                buyer,
                &format!("{gateway}/api/payments"),
                &json!({"orderId": order, "token": "tok_visa"}),
                &[404],
            )
            .await;
        record(&paid);
        let message = paid.body["errors"][0]["message"]
            .as_str()
            .unwrap_or_default();
        match paid.status {
            201 | 202 => Ok(()),
            // A retry after a lost answer (the payments process killed
            // after it took the first attempt): the first one counts. (The
            // idempotency key answers such a retry from the first payment;
            // this covers a first attempt that left no key behind.)
            409 if paid.unavailable > 0
                && (message.starts_with("A payment for this order")
                    || message.starts_with("Order is already paid")) =>
            {
                Ok(())
            }
            409 if message.starts_with("Order was cancelled") => {
                stats
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .expired_first += 1;
                Ok(())
            }
            s => Err(format!("paying {order}: {s} {}", paid.body)),
        }
    }
}

/// Samples the services' outboxes every 100 ms until `stop`: the age of
/// the oldest event not yet published, at its longest.
async fn publish_waits(
    outboxes: Vec<store::Db>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Duration {
    let mut longest = 0i64;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    while !*stop.borrow() {
        tick.tick().await;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        for db in &outboxes {
            let oldest = db
                .read(|c| {
                    c.query("SELECT COALESCE(MIN(created_at), 0) FROM outbox", &[])?[0]
                        .get::<i64>(0)
                })
                .await;
            if let Ok(oldest) = oldest.map_err(|_: store::StoreError| ()) {
                if oldest > 0 {
                    longest = longest.max(now - oldest);
                }
            }
        }
    }
    Duration::from_millis(u64::try_from(longest).unwrap_or(0))
}

/// Signs a user up through the gateway; their session token.
async fn sign_up(http: &reqwest::Client, gateway: &str, email: &str) -> Result<String, String> {
    let res = http
        .post(format!("{gateway}/api/users/signup"))
        .json(&json!({"email": email, "password": "drill-password-1"}))
        .send()
        .await
        .map_err(|e| format!("signing up {email}: {e}"))?;
    let status = res.status();
    let cookie = res
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| c.strip_prefix("session="))
        .map(|c| c.split(';').next().unwrap_or_default().to_owned());
    match cookie {
        Some(token) if status.is_success() => Ok(token),
        _ => Err(format!("signing up {email}: {status}")),
    }
}

async fn run(
    exe: &Path,
    args: &ClusterArgs,
    database_url: &str,
    work: &Path,
) -> Result<Report, String> {
    let mut report = Report::default();
    let mut schemas = HashMap::new();
    for s in SERVICES {
        let mut schema = ScratchSchema::create(database_url, &format!("cluster_drill_{s}"))
            .await
            .map_err(|e| format!("PostgreSQL at {database_url}: {e}"))?;
        if args.keep {
            schema.keep();
        }
        schemas.insert(s, schema);
    }

    let start = if args.no_partitions {
        NatsCluster::start
    } else {
        NatsCluster::start_partitionable
    };
    let mut nats = start(
        &args.nats_server,
        &work.join("nats"),
        3,
        Logs::Dir(work.to_owned()),
    )
    .map_err(|e| {
        format!(
            "{e} (install nats-server, or pass --nats-server PATH; partitions need root and \
             iproute2, or pass --no-partitions)"
        )
    })?;
    nats.wait_ready(Duration::from_secs(30)).await?;
    let client = provision::connect(&nats.url(), "cluster-drill", Duration::from_secs(30))
        .await
        .map_err(|e| e.to_string())?;
    report.nats_version = client.server_info().version;
    provision::apply(
        &client,
        &marketplace_events::streams(),
        &provision::Options {
            replicas: Some(3),
            ..Default::default()
        },
    )
    .await
    .map_err(|e| e.to_string())?;

    let jwt_key = format!("drill-{}", uuid::Uuid::new_v4().simple());
    let mut procs = Cluster::new(
        exe,
        &[
            ("NATS_URL", nats.url()),
            ("JWT_KEY", jwt_key.clone()),
            ("COOKIE_SECURE", "false".into()),
            ("RUST_LOG", "warn".into()),
            ("DATABASE_POOL_SIZE", "4".into()),
            ("ORDER_EXPIRATION_SECONDS", args.expiration.to_string()),
            ("MAX_ACTIVE_ORDERS_PER_USER", "1000000".into()),
            ("AUTH_RATE_LIMIT_PER_MINUTE", "1000000".into()),
        ],
        Logs::Dir(work.to_owned()),
    );
    let mut ids: HashMap<&str, Vec<ProcId>> = HashMap::new();
    for (service, replicas) in [
        ("auth", 1),
        ("tickets", 2),
        ("orders", 2),
        ("expiration", 1),
        ("payments", 1),
    ] {
        for i in 1..=replicas {
            let id = procs
                .spawn(
                    &format!("{service}-{i}"),
                    service,
                    &[("DATABASE_URL", schemas[service].url.clone())],
                )
                .map_err(|e| format!("cannot start {service}: {e}"))?;
            ids.entry(service).or_default().push(id);
        }
    }
    // The gateway, in front of every replica (each service's URLs listed,
    // taken in turn; a replica that refuses connections is skipped).
    let urls = |service: &str| {
        ids[service]
            .iter()
            .map(|id| procs.url(*id))
            .collect::<Vec<_>>()
            .join(",")
    };
    let upstreams = [
        ("AUTH_URL", urls("auth")),
        ("TICKETS_URL", urls("tickets")),
        ("ORDERS_URL", urls("orders")),
        ("PAYMENTS_URL", urls("payments")),
    ];
    let gateway = procs
        .spawn("gateway", "gateway", &upstreams)
        .map_err(|e| format!("cannot start the gateway: {e}"))?;
    procs.all_ready(Duration::from_secs(60)).await?;

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
    let gateway = procs.url(gateway);
    let seller = sign_up(&http, &gateway, "seller@drill.invalid").await?;
    let mut buyers = Vec::new();
    for i in 0..BUYERS {
        buyers.push(sign_up(&http, &gateway, &format!("buyer-{i}@drill.invalid")).await?);
    }
    let target = Arc::new(Target {
        http,
        gateway,
        seller,
        buyers,
    });

    let phase = Duration::from_secs(args.phase.max(4));
    let mut started = 0usize;
    let faults = faults(args)?;
    let outboxes = SERVICES
        .iter()
        .map(|s| store::Db::postgres_lazy(&schemas[s].url, 1).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    for fault in faults {
        let stats = Arc::new(Mutex::new(Phase {
            fault: fault.to_string(),
            ..Phase::default()
        }));
        let (stop_sampling, sampling) = tokio::sync::watch::channel(false);
        let sampler = tokio::spawn(publish_waits(outboxes.clone(), sampling));
        // The load: `rate` purchases a second for the whole phase.
        let load = {
            let (target, stats, rate) = (target.clone(), stats.clone(), args.rate.max(1));
            let first = started;
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
                let mut flows = Vec::new();
                let end = Instant::now() + phase;
                let mut n = first;
                while Instant::now() < end {
                    tick.tick().await;
                    let (target, stats) = (target.clone(), stats.clone());
                    let unpaid = n % 4 == 3;
                    flows.push(tokio::spawn(async move {
                        target.purchase(n, unpaid, &stats).await
                    }));
                    n += 1;
                }
                let mut failed = Vec::new();
                for f in flows {
                    match f.await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => failed.push(e),
                        Err(e) => failed.push(e.to_string()),
                    }
                }
                (n - first, failed)
            })
        };
        tokio::time::sleep(phase / 4).await;
        let led = fault.inject(&mut nats, &mut procs, &ids, phase / 4).await?;
        let heal_time = Instant::now();
        nats.wait_ready(Duration::from_secs(60)).await?;
        let ready_last = procs
            .all_ready_last(Duration::from_secs(60))
            .await
            .map_err(|e| format!("after {fault}: {e}"))?;
        let ready_after = heal_time.elapsed();
        let (purchases, failed) = load.await.map_err(|e| e.to_string())?;
        started += purchases;
        let _ = stop_sampling.send(true);
        let longest_publish_wait = sampler.await.map_err(|e| e.to_string())?;
        let mut p = stats.lock().unwrap_or_else(|e| e.into_inner()).clone();
        p.longest_publish_wait = longest_publish_wait;
        p.purchases = purchases;
        p.failed = failed;
        p.ready_after = ready_after;
        p.led = led;
        p.ready_last = ready_last;
        report.phases.push(p);
    }

    check(&mut report, &schemas, &nats, args.expiration).await?;
    for (service, replicas) in &ids {
        for (i, id) in replicas.iter().enumerate() {
            if !procs.ready(*id, Duration::from_secs(5)).await {
                report.died.push(format!("{service}-{}", i + 1));
            }
        }
    }
    drop(procs);
    drop(nats);
    Ok(report)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Fault {
    Leader,
    Follower,
    PartitionLeader,
    PartitionFollower,
    #[value(name = "rolling")]
    RollingRestart,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fault::Leader => "kill -9 ORDERS leader + orders-1",
            Fault::Follower => "kill -9 an ORDERS follower + tickets-1",
            Fault::PartitionLeader => "ORDERS leader cut off + orders-2 killed",
            Fault::PartitionFollower => "ORDERS follower cut off + payments killed",
            Fault::RollingRestart => "rolling restart of 3 nodes + expiration",
        })
    }
}

impl Fault {
    /// Injects the fault and heals it after `hold` (for a rolling restart:
    /// each node down for `hold / 3`, the next once the cluster answers);
    /// the streams the failed node led.
    async fn inject(
        self,
        nats: &mut NatsCluster,
        procs: &mut Cluster,
        ids: &HashMap<&str, Vec<ProcId>>,
        hold: Duration,
    ) -> Result<Vec<String>, String> {
        let leader = nats
            .stream_leader("ORDERS")
            .await
            .ok_or("the ORDERS stream has no leader")?;
        let follower = (leader + 1) % nats.size();
        let failed = match self {
            Fault::Leader | Fault::PartitionLeader => Some(leader),
            Fault::Follower | Fault::PartitionFollower => Some(follower),
            Fault::RollingRestart => None,
        };
        let mut led = Vec::new();
        if let Some(node) = failed {
            for stream in &marketplace_events::streams().streams {
                if nats.stream_leader(&stream.name).await == Some(node) {
                    led.push(stream.name.clone());
                }
            }
        }
        // A service replica dies with each fault and comes back with the
        // heal: which one, per fault.
        let (service, replica) = match self {
            Fault::Leader => ("orders", 0),
            Fault::Follower => ("tickets", 0),
            Fault::PartitionLeader => ("orders", 1),
            Fault::PartitionFollower => ("payments", 0),
            Fault::RollingRestart => ("expiration", 0),
        };
        let replica = ids[service][replica];
        procs.kill(replica);
        match (self, failed) {
            (Fault::Leader | Fault::Follower, Some(node)) => {
                nats.kill(node);
                tokio::time::sleep(hold).await;
                nats.restart(node).map_err(|e| e.to_string())?;
            }
            (Fault::PartitionLeader | Fault::PartitionFollower, Some(node)) => {
                nats.partition(node).map_err(|e| e.to_string())?;
                tokio::time::sleep(hold).await;
                nats.heal(node).map_err(|e| e.to_string())?;
            }
            _ => {
                for node in 0..nats.size() {
                    nats.kill(node);
                    tokio::time::sleep(hold / 3).await;
                    nats.restart(node).map_err(|e| e.to_string())?;
                    nats.wait_ready(Duration::from_secs(60)).await?;
                }
            }
        }
        procs.start(replica).map_err(|e| e.to_string())?;
        Ok(led)
    }
}

/// The invariants, once the system has settled (unpaid orders expire).
async fn check(
    report: &mut Report,
    schemas: &HashMap<&str, ScratchSchema>,
    nats: &NatsCluster,
    expiration: u64,
) -> Result<(), String> {
    let dbs: HashMap<&str, store::Db> = schemas
        .iter()
        .map(|(s, schema)| {
            Ok((
                *s,
                store::Db::postgres_lazy(&schema.url, 2).map_err(|e| e.to_string())?,
            ))
        })
        .collect::<Result<_, String>>()?;
    let rows = |service: &'static str, sql: &'static str| {
        let db = dbs[service].clone();
        async move {
            db.read(move |c| {
                c.query(sql, &[])?
                    .iter()
                    .map(|r| Ok(vec![r.get::<String>(0)?, r.get::<String>(1)?]))
                    .collect::<Result<Vec<_>, store::StoreError>>()
            })
            .await
            .map_err(|e| format!("{service}: {e}"))
        }
    };
    // Settling: every order terminal, every outbox empty, every copy
    // converged — or the deadline, and what is left is reported.
    let deadline = Instant::now() + Duration::from_secs(60 + expiration);
    let mut owners;
    loop {
        let orders = rows("orders", "SELECT id, status FROM orders").await?;
        report.orders = orders.len();
        report.not_terminal = orders
            .iter()
            .filter(|o| o[1] != "complete" && o[1] != "cancelled")
            .map(|o| format!("{} {}", o[0], o[1]))
            .collect();
        report.sold_twice = rows(
            "orders",
            "SELECT ticket_id, COUNT(*)::text FROM orders WHERE status = 'complete' \
             GROUP BY ticket_id HAVING COUNT(*) > 1",
        )
        .await?
        .into_iter()
        .map(|r| format!("{} sold {} times", r[0], r[1]))
        .collect();
        // Tickets: sold exactly when an order for it completed; orders'
        // copies at the tickets' versions; payments' copies at the orders'.
        let tickets: HashMap<String, String> = rows(
            "tickets",
            "SELECT id, status || '/' || version FROM tickets",
        )
        .await?
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone()))
        .collect();
        let copies: HashMap<String, String> =
            rows("orders", "SELECT id, version::text FROM tickets")
                .await?
                .into_iter()
                .map(|r| (r[0].clone(), r[1].clone()))
                .collect();
        let complete: std::collections::HashSet<String> = rows(
            "orders",
            "SELECT ticket_id, id FROM orders WHERE status = 'complete'",
        )
        .await?
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
        let order_versions: HashMap<String, String> =
            rows("orders", "SELECT id, status || '/' || version FROM orders")
                .await?
                .into_iter()
                .map(|r| (r[0].clone(), r[1].clone()))
                .collect();
        let payment_copies: HashMap<String, String> = rows(
            "payments",
            "SELECT id, status || '/' || version FROM orders",
        )
        .await?
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone()))
        .collect();
        let mut unconverged = Vec::new();
        for (id, state) in &tickets {
            let (status, version) = state.split_once('/').unwrap_or_default();
            if (status == "sold") != complete.contains(id) || status == "reserved" {
                unconverged.push(format!(
                    "ticket {id} {status} (completed order: {})",
                    complete.contains(id)
                ));
            }
            if copies.get(id).map(String::as_str) != Some(version) {
                unconverged.push(format!(
                    "orders' copy of ticket {id}: {:?}, tickets: {version}",
                    copies.get(id)
                ));
            }
        }
        for (id, state) in &order_versions {
            if payment_copies.get(id) != Some(state) {
                unconverged.push(format!(
                    "payments' copy of order {id}: {:?}, orders: {state}",
                    payment_copies.get(id)
                ));
            }
        }
        // Money: a hold captured exactly when its order completed, every
        // hold settled (captured or voided), nothing else in flight.
        let holds = rows("payments", "SELECT order_id, status FROM payments").await?;
        let mut captured = std::collections::HashSet::new();
        for h in &holds {
            match h[1].as_str() {
                "captured" => {
                    captured.insert(h[0].clone());
                }
                "voided" | "declined" => {}
                other => unconverged.push(format!("payment for order {} still {other}", h[0])),
            }
        }
        for (id, state) in &order_versions {
            let complete = state.starts_with("complete/");
            if complete != captured.contains(id) {
                unconverged.push(format!(
                    "order {id} is {state} but its payment captured: {}",
                    captured.contains(id)
                ));
            }
        }
        report.unconverged = unconverged;
        report.outbox_rows = Vec::new();
        for s in SERVICES {
            let left = rows(s, "SELECT 'outbox', COUNT(*)::text FROM outbox").await?;
            if left[0][1] != "0" {
                report.outbox_rows.push(format!("{s}: {}", left[0][1]));
            }
        }
        // Every order's timer has fired (each order gets one).
        let timers = rows("expiration", "SELECT 'timers', COUNT(*)::text FROM timers").await?;
        let settled = report.not_terminal.is_empty()
            && report.unconverged.is_empty()
            && report.outbox_rows.is_empty()
            && timers[0][1] == "0";
        owners = ledger::Owners {
            tickets: tickets
                .iter()
                .map(|(id, state)| {
                    let version = state.rsplit_once('/').map_or("", |(_, v)| v);
                    (id.clone(), version.parse().unwrap_or(-1))
                })
                .collect(),
            orders: order_versions
                .iter()
                .map(|(id, state)| {
                    let (status, version) = state.rsplit_once('/').unwrap_or_default();
                    (
                        id.clone(),
                        (version.parse().unwrap_or(-1), status.to_owned()),
                    )
                })
                .collect(),
        };
        if settled || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let js = async_nats::jetstream::new(
        provision::connect(&nats.url(), "cluster-drill", Duration::from_secs(30))
            .await
            .map_err(|e| e.to_string())?,
    );
    // Every event, by id, against what the owners say was published; every
    // durable's position.
    let spec = marketplace_events::streams();
    let mut stored = Vec::new();
    let mut holes = Vec::new();
    for stream in spec
        .streams
        .iter()
        .filter(|s| s.name != "PARKED" && s.name != "USERS")
    {
        let (events, problems) = ledger::read_stream(&js, &stream.name).await?;
        stored.extend(events);
        holes.extend(problems);
    }
    report.events = stored.len();
    report.ledger = ledger::audit(&stored, &owners);
    report.ledger.extend(holes);
    if let Some(lost) = ledger::lost_by_servers(&report.ledger, report.unconverged.is_empty()) {
        report.ledger.insert(0, lost);
    }
    report.consumers_behind = ledger::behind(&js, &spec).await?;
    report.parked = ledger::retrying(|| async {
        let mut parked = js.get_stream("PARKED").await.map_err(|e| e.to_string())?;
        Ok(parked
            .info()
            .await
            .map_err(|e| e.to_string())?
            .state
            .messages)
    })
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// `ClusterArgs` as the command line gives them.
    #[derive(clap::Parser)]
    struct Line {
        #[command(flatten)]
        args: ClusterArgs,
    }

    fn args(line: &[&str]) -> ClusterArgs {
        Line::try_parse_from(std::iter::once("drill").chain(line.iter().copied()))
            .unwrap()
            .args
    }

    #[test]
    fn faults_are_all_by_default_or_those_listed_in_order() {
        use Fault::*;
        let all = [
            Leader,
            Follower,
            PartitionLeader,
            PartitionFollower,
            RollingRestart,
        ];
        assert_eq!(faults(&args(&[])).unwrap(), all);
        assert_eq!(
            faults(&args(&["--no-partitions"])).unwrap(),
            [Leader, Follower, RollingRestart]
        );
        assert_eq!(
            faults(&args(&["--faults", "rolling,leader,rolling"])).unwrap(),
            [RollingRestart, Leader, RollingRestart]
        );
        let refused = faults(&args(&[
            "--no-partitions",
            "--faults",
            "partition-follower",
        ]));
        assert!(refused.unwrap_err().contains("network namespaces"));
    }
}
