//! `loadgen`: load scenarios against a running ticketing deployment, each
//! report with throughput, latency percentiles (HDR histogram), answers by
//! status, correctness checks, memory of the processes under test, and —
//! with `--baseline` — the machine's limit measured in the same run beside
//! the figure it bounds.
//!
//! ```text
//! loadgen purchase --url http://127.0.0.1:3000 --duration 10s --baseline
//! loadgen browse --rate 5000 --plot browse.svg
//! loadgen events --bus nats --database-url postgres://postgres@127.0.0.1/postgres
//! ```
#![allow(clippy::print_stdout)]

mod api;
mod baseline;
mod cascade;
mod drive;
mod events;
mod fill;
mod plot;
mod procs;
mod report;
mod revoke;
mod scenarios;
mod stats;

use anyhow::Context as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use serde_json::json;

use crate::drive::Load;
use crate::report::{Comparison, Figure, Report};

#[derive(Parser)]
#[command(
    name = "loadgen",
    version,
    about = "Load and limits for a ticketing deployment"
)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// List and show tickets.
    Browse {
        #[command(flatten)]
        common: Common,
        /// Tickets listed before the load (shown round-robin).
        #[arg(long, default_value_t = 100)]
        tickets: usize,
        /// Every Nth operation lists (GET /api/tickets?limit=50); 0: show only.
        #[arg(long, default_value_t = 10)]
        list_every: u64,
        /// Also run the same reads straight to this URL (the tickets
        /// service behind a gateway at --url) first, and compare.
        #[arg(long)]
        direct: Option<String>,
    },
    /// Signed-up buyers order distinct tickets and pay; every paid order
    /// must complete.
    Purchase {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 50)]
        buyers: usize,
        /// Tickets listed before the load (one per purchase; the run ends
        /// early when they run out).
        #[arg(long, default_value_t = 20_000)]
        tickets: usize,
        /// Order only: measure POST /api/orders without paying.
        #[arg(long)]
        no_pay: bool,
    },
    /// M buyers race for K tickets at once: exactly K must win.
    Contention {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 500)]
        buyers: usize,
        #[arg(long, default_value_t = 50)]
        tickets: usize,
    },
    /// Orders left unpaid: how late each expiration lands after expiresAt
    /// (start the target with a short ORDER_EXPIRATION_SECONDS).
    Expiry {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 1_000)]
        orders: usize,
        /// Orders whose cancellation the client watches.
        #[arg(long, default_value_t = 1_000)]
        sample: usize,
        /// How often the watched orders are polled.
        #[arg(long, default_value = "20ms", value_parser = duration)]
        poll: Duration,
    },
    /// Bans and sign-outs, one at a time: from the answer until every
    /// service rejects the token (start the target with
    /// AUTH_RATE_LIMIT_PER_MINUTE=1000000, sign --admin up and grant it the
    /// role with `ticketing users grant-admin`).
    Revoke {
        /// Auth's base URL (the all-in-one process, or a gateway).
        #[arg(long, default_value = "http://127.0.0.1:3000")]
        url: String,
        /// Where each service is probed, `name=url` comma-separated
        /// (auth, tickets, orders, payments); default: all at --url.
        #[arg(long, value_delimiter = ',')]
        services: Vec<String>,
        /// Bans measured, and as many sign-outs.
        #[arg(long, default_value_t = 200)]
        users: usize,
        /// The admin's e-mail (signed up if new; it must be granted the role).
        #[arg(long, default_value = "admin@loadgen.invalid")]
        admin: String,
        /// How often each service is asked.
        #[arg(long, default_value = "2ms", value_parser = duration)]
        poll: Duration,
        #[arg(long)]
        json: bool,
    },
    /// The bus through the outbox path, in this process, beside raw
    /// JetStream and raw store transactions.
    Events {
        #[command(flatten)]
        args: events::Args,
        #[arg(long)]
        json: bool,
    },
    /// Purchases on stores filled first (100 k users, 1 M tickets, 1 M
    /// orders) against empty ones: two all-in-one marketplaces from
    /// --binary, alternating.
    Fill {
        #[command(flatten)]
        args: fill::Args,
        #[command(flatten)]
        load: LoadArgs,
        #[arg(long)]
        json: bool,
    },
    /// Start the all-in-one binary: time to ready and idle memory.
    Startup {
        /// The `ticketing` binary.
        #[arg(long, default_value = "target/release/ticketing")]
        binary: PathBuf,
        /// Starts (the median is reported).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args, Clone)]
struct Common {
    /// The deployment's base URL (the all-in-one process, or a gateway).
    #[arg(long, default_value = "http://127.0.0.1:3000")]
    url: String,
    /// Workers (closed loop) or most requests in flight (open loop).
    #[arg(long, short = 'c', default_value_t = 32)]
    concurrency: usize,
    /// Operations per second, open loop (latency counts from when each was
    /// due); without it, closed loop.
    #[arg(long)]
    rate: Option<f64>,
    #[arg(long, default_value = "10s", value_parser = duration)]
    duration: Duration,
    #[arg(long, default_value = "2s", value_parser = duration)]
    warmup: Duration,
    /// Also measure the limit beside the figure (store transactions,
    /// a trivial handler) in this run.
    #[arg(long)]
    baseline: bool,
    /// For --baseline when the target stores in PostgreSQL.
    #[arg(long)]
    database_url: Option<String>,
    /// For --baseline of purchase when the target's bus is JetStream
    /// (with --database-url): the purchase cascade's raw minimum runs on
    /// both.
    #[arg(long)]
    nats_url: Option<String>,
    /// Where the service's Prometheus metrics are (default: URL/metrics).
    #[arg(long)]
    metrics_url: Option<String>,
    /// The report as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Write a latency-over-time plot (SVG) here.
    #[arg(long)]
    plot: Option<PathBuf>,
}

/// The load of a scenario that starts its own targets.
#[derive(clap::Args, Clone, Debug)]
struct LoadArgs {
    /// Workers (closed loop).
    #[arg(long, short = 'c', default_value_t = 32)]
    concurrency: usize,
    /// Each run's measured part.
    #[arg(long, default_value = "10s", value_parser = duration)]
    duration: Duration,
    #[arg(long, default_value = "2s", value_parser = duration)]
    warmup: Duration,
}

impl Common {
    fn load(&self) -> Load {
        Load {
            concurrency: self.concurrency,
            rate: self.rate,
            duration: self.duration,
            warmup: self.warmup,
            progress: !self.json && std::io::IsTerminal::is_terminal(&std::io::stderr()),
        }
    }

    fn port(&self) -> Option<u16> {
        reqwest::Url::parse(&self.url).ok()?.port_or_known_default()
    }
}

/// A clap value parser: its error is the message clap shows.
fn duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (n, unit) = s
        .find(|c: char| c.is_ascii_alphabetic())
        .map_or((s, "s"), |i| (&s[..i], &s[i..]));
    let n: f64 = n
        .parse()
        .map_err(|_| format!("{s}: a number and ms, s or m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("{s}: the unit is ms, s or m")),
    };
    Ok(Duration::from_secs_f64(secs))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

/// The purchase cascade's raw minimum: (workers, purchases per batch),
/// from `TICKETING_CASCADE_SQLITE` / `_PG` as `workers,batch` (to try
/// others), else the fastest found on the build machine.
static CASCADE_SQLITE: std::sync::LazyLock<(usize, usize)> =
    std::sync::LazyLock::new(|| cascade_setting("TICKETING_CASCADE_SQLITE", (2, 32)));
static CASCADE_PG: std::sync::LazyLock<(usize, usize)> =
    std::sync::LazyLock::new(|| cascade_setting("TICKETING_CASCADE_PG", (8, 32)));

fn cascade_setting(var: &str, default: (usize, usize)) -> (usize, usize) {
    std::env::var(var)
        .ok()
        .and_then(|v| {
            let (w, b) = v.split_once(',')?;
            Some((w.trim().parse().ok()?, b.trim().parse().ok()?))
        })
        .unwrap_or(default)
}

/// Ok(whether every check passed).
async fn run(cli: Cli) -> anyhow::Result<bool> {
    let (common, name) = match &cli.scenario {
        Scenario::Browse { common, .. } => (common.clone(), "browse"),
        Scenario::Purchase { common, .. } => (common.clone(), "purchase"),
        Scenario::Contention { common, .. } => (common.clone(), "contention"),
        Scenario::Expiry { common, .. } => (common.clone(), "expiry"),
        Scenario::Events { args, json } => return events_report(args, *json).await,
        Scenario::Startup { binary, runs, json } => return startup(binary, *runs, *json).await,
        Scenario::Fill { args, load, json } => return fill_report(args, load, *json).await,
        Scenario::Revoke {
            url,
            services,
            users,
            admin,
            poll,
            json,
        } => return revoke_report(url, services, admin, *users, *poll, *json).await,
    };
    let api = api::Api::new(&common.url, common.concurrency);
    let load = common.load();
    let watch = procs::Watch::start(common.port());
    let metrics_url = common
        .metrics_url
        .clone()
        .unwrap_or_else(|| format!("{}/metrics", common.url.trim_end_matches('/')));
    // The store's limit is measured before the load: afterwards the target
    // is still applying the events the load caused.
    let store_limit = if common.baseline && name == "purchase" {
        eprintln!("limit: raw store transactions (order row + outbox row)…");
        Some(match &common.database_url {
            Some(url) => (
                baseline::postgres_order_tx(url, 8, Duration::from_secs(3)).await?,
                "raw PostgreSQL order + outbox tx (tokio-postgres, 8 connections)",
            ),
            None => (
                baseline::sqlite_order_tx(Duration::from_secs(3))?,
                "raw SQLite order + outbox tx (rusqlite, own thread)",
            ),
        })
    } else {
        None
    };
    // The purchase cascade's raw minimum, on the target's engines.
    let cascade_limit = if common.baseline && name == "purchase" {
        match (&common.database_url, &common.nats_url) {
            (Some(db), Some(nats)) => {
                eprintln!("limit: the purchase cascade's raw minimum on PostgreSQL and JetStream…");
                Some((
                    cascade::engines(
                        db,
                        nats,
                        CASCADE_PG.0,
                        CASCADE_PG.1,
                        common.duration.min(Duration::from_secs(5)),
                    )
                    .await?,
                    format!(
                        "raw minimum of the purchase cascade (tokio-postgres + async-nats, {} workers × {} purchases a step)",
                        CASCADE_PG.0, CASCADE_PG.1
                    ),
                ))
            }
            (None, None) => {
                eprintln!("limit: the purchase cascade's raw minimum on SQLite…");
                Some((
                    tokio::task::spawn_blocking({
                        let d = common.duration.min(Duration::from_secs(5));
                        move || cascade::sqlite(CASCADE_SQLITE.0, CASCADE_SQLITE.1, d)
                    })
                    .await??,
                    format!(
                        "raw minimum of the purchase cascade (rusqlite, bus rows in SQLite, {} threads × {} purchases a step)",
                        CASCADE_SQLITE.0, CASCADE_SQLITE.1
                    ),
                ))
            }
            _ => {
                eprintln!(
                    "the purchase cascade's raw minimum needs both --database-url and --nats-url on the engines: not measured"
                );
                None
            }
        }
    } else {
        None
    };
    let (outcome, extra) = match cli.scenario {
        Scenario::Browse {
            tickets,
            list_every,
            ref direct,
            ..
        } => (
            scenarios::browse(&api, &load, tickets, list_every, direct.as_deref()).await?,
            json!({"tickets": tickets, "list_every": list_every, "direct": direct}),
        ),
        Scenario::Purchase {
            buyers,
            tickets,
            no_pay,
            ..
        } => (
            scenarios::purchase(&api, &load, buyers, tickets, !no_pay).await?,
            json!({"buyers": buyers, "tickets": tickets, "pay": !no_pay}),
        ),
        Scenario::Contention {
            buyers, tickets, ..
        } => (
            scenarios::contention(&api, buyers, tickets).await?,
            json!({"buyers": buyers, "tickets": tickets}),
        ),
        Scenario::Expiry {
            orders,
            sample,
            poll,
            ..
        } => (
            scenarios::expiry(&api, &metrics_url, orders, sample, poll).await?,
            json!({"orders": orders, "sample": sample, "poll_ms": poll.as_millis() as u64}),
        ),
        Scenario::Events { .. }
        | Scenario::Startup { .. }
        | Scenario::Revoke { .. }
        | Scenario::Fill { .. } => {
            unreachable!("handled above")
        }
    };
    let memory = watch.finish().await;
    let mut comparisons = outcome.comparisons;
    let ops = outcome.recorder.summary(Some(outcome.measured));
    let mut figures = outcome.figures;
    // CPU per operation: the time every process under test used in the
    // measured part, over the operations completed in it.
    let cpu_ms: f64 = memory.iter().map(|m| m.cpu_ms).sum();
    if !memory.is_empty() {
        for op in ops.iter().filter(|o| o.ok > 0) {
            figures.push(Figure {
                what: format!("CPU per {} (all processes under test)", op.op),
                value: cpu_ms / op.ok as f64,
                unit: "ms".into(),
                goal: None,
                met: None,
            });
        }
    }
    let rate_of = |op: &str| {
        ops.iter()
            .find(|o| o.op == op)
            .map_or(0.0, |o| o.per_second)
    };
    if common.baseline {
        match name {
            "browse" => {
                let base = baseline::trivial_server()?;
                eprintln!("limit: a trivial handler under the same load…");
                let trivial = scenarios::trivial(&base, &load).await;
                comparisons.push(Comparison::new(
                    "GET /api/tickets/:id",
                    rate_of("show"),
                    "trivial axum handler, same load",
                    trivial,
                    "req/s",
                    Some(("≥", 0.5)),
                ));
            }
            "purchase" => {
                if let Some((limit, what)) = store_limit {
                    comparisons.push(Comparison::new(
                        "POST /api/orders",
                        rate_of("order"),
                        what,
                        limit,
                        "per s",
                        Some(("≥", 0.5)),
                    ));
                }
                if let Some((limit, what)) = cascade_limit {
                    comparisons.push(Comparison::new(
                        "purchases (paid and completed)",
                        rate_of("pay"),
                        &what,
                        limit.per_second,
                        "per s",
                        Some(("≥", 0.5)),
                    ));
                    figures.push(Figure {
                        what: "CPU per purchase of the raw minimum (loadgen's own process; the engines' servers not counted)".into(),
                        value: limit.cpu_ms,
                        unit: "ms".into(),
                        goal: None,
                        met: None,
                    });
                }
            }
            _ => {}
        }
    }
    let report = Report {
        scenario: name.to_owned(),
        target: common.url.clone(),
        settings: scenarios::settings(&load, extra),
        measured_seconds: outcome.measured.as_secs_f64(),
        ops,
        checks: outcome.checks,
        comparisons,
        figures,
        memory,
    };
    emit(&report, common.json);
    if let Some(path) = &common.plot {
        plot::latency_svg(&report, path)?;
        eprintln!("plot: {}", path.display());
    }
    Ok(report.passed())
}

fn emit(report: &Report, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(report).unwrap_or_default()
        );
    } else {
        print!("{}", report.text());
    }
}

async fn events_report(args: &events::Args, json: bool) -> anyhow::Result<bool> {
    let started = Instant::now();
    let (comparisons, figures) = events::run(args).await?;
    let report = Report {
        scenario: format!("events ({})", args.bus),
        target: "in process".into(),
        settings: json!(format!("{args:?}")),
        measured_seconds: started.elapsed().as_secs_f64(),
        ops: Vec::new(),
        checks: Vec::new(),
        comparisons,
        figures,
        memory: Vec::new(),
    };
    emit(&report, json);
    Ok(true)
}

async fn fill_report(args: &fill::Args, load: &LoadArgs, json: bool) -> anyhow::Result<bool> {
    let started = Instant::now();
    let load = Load {
        concurrency: load.concurrency,
        rate: None,
        duration: load.duration,
        warmup: load.warmup,
        progress: false,
    };
    let outcome = fill::run(args, &load).await?;
    let report = Report {
        scenario: "fill".into(),
        target: args.binary.display().to_string(),
        settings: scenarios::settings(&load, outcome.settings),
        measured_seconds: started.elapsed().as_secs_f64(),
        ops: Vec::new(),
        checks: outcome.checks,
        comparisons: outcome.comparisons,
        figures: outcome.figures,
        memory: Vec::new(),
    };
    emit(&report, json);
    Ok(report.passed())
}

async fn revoke_report(
    url: &str,
    services: &[String],
    admin: &str,
    users: usize,
    poll: Duration,
    json: bool,
) -> anyhow::Result<bool> {
    let started = Instant::now();
    let auth = api::Api::new(url, 8);
    let services: Vec<(String, api::Api)> = if services.is_empty() {
        ["auth", "tickets", "orders", "payments"]
            .iter()
            .map(|s| (s.to_string(), auth.clone()))
            .collect()
    } else {
        services
            .iter()
            .map(|s| {
                let (name, u) = s
                    .split_once('=')
                    .with_context(|| format!("--services: {s} is not name=url"))?;
                Ok((name.to_owned(), api::Api::new(u, 8)))
            })
            .collect::<anyhow::Result<_>>()?
    };
    let outcome = revoke::run(&auth, &services, admin, users, poll).await?;
    let report = Report {
        scenario: "revoke".into(),
        target: url.to_owned(),
        settings: json!({"users": users, "poll_ms": poll.as_millis() as u64,
            "services": services.iter().map(|(n, a)| format!("{n}={}", a.base)).collect::<Vec<_>>()}),
        measured_seconds: started.elapsed().as_secs_f64(),
        ops: Vec::new(),
        checks: outcome.checks,
        comparisons: Vec::new(),
        figures: outcome.figures,
        memory: Vec::new(),
    };
    emit(&report, json);
    Ok(report.passed())
}

/// Starts the binary `runs` times on fresh data directories: time from
/// spawn to `/readyz` answering 200, and resident memory once idle.
async fn startup(binary: &PathBuf, runs: usize, json: bool) -> anyhow::Result<bool> {
    let mut ready = Vec::new();
    let mut idle = Vec::new();
    for _ in 0..runs.max(1) {
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())?
            .port();
        let started = Instant::now();
        let mut child = std::process::Command::new(binary)
            .args(["run", "--port", &port.to_string(), "--data-dir"])
            .arg(dir.path())
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("{}", binary.display()))?;
        let base = format!("http://127.0.0.1:{port}");
        let took = api::wait_ready(
            &base,
            started,
            Duration::from_secs(30),
            Duration::from_millis(2),
        )
        .await
        .then(|| started.elapsed());
        tokio::time::sleep(Duration::from_secs(2)).await;
        if let Some(mb) = procs::rss_mb(child.id()) {
            idle.push(mb);
        }
        let _ = child.kill();
        let _ = child.wait();
        ready.push(
            took.context("the process never became ready")?
                .as_secs_f64()
                * 1000.0,
        );
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let (r, m) = (median(&mut ready), median(&mut idle));
    let report = Report {
        scenario: "startup".into(),
        target: binary.display().to_string(),
        settings: json!({"runs": runs}),
        measured_seconds: 0.0,
        ops: Vec::new(),
        checks: Vec::new(),
        comparisons: Vec::new(),
        figures: vec![
            Figure {
                what: "spawn → /readyz 200 (median)".into(),
                value: r,
                unit: "ms".into(),
                goal: Some("< 1000 ms".into()),
                met: Some(r < 1000.0),
            },
            Figure {
                what: "resident memory, idle, all five services + web (median)".into(),
                value: m,
                unit: "MB".into(),
                goal: Some("≤ 20 MB".into()),
                met: Some(m <= 20.0),
            },
        ],
        memory: Vec::new(),
    };
    emit(&report, json);
    Ok(true)
}
