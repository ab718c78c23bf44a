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

use anyhow::Context as _;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use store::scratch::ScratchSchema;

use crate::cluster::{Cluster, Logs, ProcId};
use provision::local::NatsCluster;

mod check;
mod faults;
mod ledger;
mod load;

use check::check;
pub use faults::Fault;
use faults::faults;
use load::{BUYERS, Target, publish_waits, sign_up};

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
pub async fn cluster(exe: &Path, args: ClusterArgs) -> anyhow::Result<Report> {
    faults(&args)?;
    let database_url = crate::concurrency::required_database(&args.database_url)?;
    crate::concurrency::in_work_dir("ticketing-cluster-drill", args.keep, |work| async move {
        run(exe, &args, &database_url, &work).await
    })
    .await
}

impl crate::concurrency::DrillReport for Report {
    fn passed(&self) -> bool {
        Report::passed(self)
    }
    fn set_logs(&mut self, dir: PathBuf) {
        self.logs = Some(dir);
    }
}

const SERVICES: [&str; 5] = ["auth", "tickets", "orders", "expiration", "payments"];

async fn run(
    exe: &Path,
    args: &ClusterArgs,
    database_url: &str,
    work: &Path,
) -> anyhow::Result<Report> {
    let mut report = Report::default();
    let mut schemas = HashMap::new();
    for s in SERVICES {
        let mut schema = ScratchSchema::create(database_url, &format!("cluster_drill_{s}"))
            .await
            .with_context(|| format!("PostgreSQL at {database_url}"))?;
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
    .context(
        "install nats-server, or pass --nats-server PATH; partitions need root and \
         iproute2, or pass --no-partitions",
    )?;
    nats.wait_ready(Duration::from_secs(30))
        .await
        .map_err(anyhow::Error::msg)?;
    let client = provision::connect(&nats.url(), "cluster-drill", Duration::from_secs(30)).await?;
    report.nats_version = client.server_info().version;
    provision::apply(
        &client,
        &provision::Spec::built_in(&marketplace_events::STREAMS),
        &provision::Options {
            replicas: Some(3),
            ..Default::default()
        },
    )
    .await?;

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
                .with_context(|| format!("cannot start {service}"))?;
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
        .context("cannot start the gateway")?;
    procs.all_ready(Duration::from_secs(60)).await?;

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
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
        .map(|s| store::Db::postgres_lazy(&schemas[s].url, 1))
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
                        Ok(Err(e)) => failed.push(format!("{e:#}")),
                        Err(e) => failed.push(e.to_string()),
                    }
                }
                (n - first, failed)
            })
        };
        tokio::time::sleep(phase / 4).await;
        let led = fault.inject(&mut nats, &mut procs, &ids, phase / 4).await?;
        let heal_time = Instant::now();
        nats.wait_ready(Duration::from_secs(60))
            .await
            .map_err(anyhow::Error::msg)?;
        let ready_last = procs
            .all_ready_last(Duration::from_secs(60))
            .await
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("after {fault}"))?;
        let ready_after = heal_time.elapsed();
        // The next fault comes only once this one is repaired: every node
        // a current replica of every stream again.
        nats.wait_streams_current(stream_names(), Duration::from_secs(60))
            .await
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("after {fault}"))?;
        let (purchases, failed) = load.await?;
        started += purchases;
        let _ = stop_sampling.send(true);
        let longest_publish_wait = sampler.await?;
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

/// The marketplace's streams, by name.
fn stream_names() -> Vec<String> {
    provision::Spec::built_in(&marketplace_events::STREAMS)
        .streams
        .into_iter()
        .map(|s| s.name)
        .collect()
}
