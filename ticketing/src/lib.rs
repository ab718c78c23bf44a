//! The ticketing binary's library: turns settings into running services.
//! Knows every service (it is the only crate that does) and nothing else.

pub mod blog;
pub mod catalogue;
pub mod cli;
pub mod cluster;
pub mod compat;
pub mod config;
pub mod docs;
pub mod drill;
pub mod drill_cluster;
pub mod parked;
pub mod streams;

use std::sync::Arc;
use std::time::Duration;

use bus::listener::ListenerOptions;
use runtime::engines::open_bus;
use runtime::service::{Deps, Running};
use runtime::{Fallback, Role, Stopping, serve_running};
use shared::auth::AuthKeys;
use shared::shutdown::Shutdown;
use shared::time::Clock;

pub use config::Settings;

/// `ticketing [blog] events`: print `product`'s catalogue, or check the code
/// against its committed contract (exit 1 on a breaking change).
pub fn events(
    product: &catalogue::Product,
    format: catalogue::Format,
    command: Option<cli::EventsCommand>,
) -> Result<u8, Box<dyn std::error::Error>> {
    match command {
        Some(cli::EventsCommand::Check { contract }) => {
            let contract = contract.unwrap_or_else(|| product.contract_file.into());
            let committed = std::fs::read_to_string(&contract)
                .map_err(|e| format!("{}: {e}", contract.display()))?;
            let committed: serde_json::Value = serde_json::from_str(&committed)
                .map_err(|e| format!("{}: {e}", contract.display()))?;
            let current: serde_json::Value =
                serde_json::from_str(&catalogue::render(product, catalogue::Format::Json))?;
            let report = compat::check(&committed, &current);
            print_report(&report);
            Ok(u8::from(!report.passed()))
        }
        None => {
            print_report(&catalogue::render(product, format).trim_end());
            Ok(0)
        }
    }
}

/// Entry point after argument parsing; returns the exit code.
pub async fn main(cli: cli::Cli) -> Result<u8, Box<dyn std::error::Error>> {
    let args = match cli.command {
        Some(cli::Command::Run(args)) => args,
        None => cli.run,
        Some(cli::Command::Streams(command)) => {
            return Ok(streams::run(command, marketplace_events::STREAMS).await);
        }
        Some(cli::Command::Blog(command)) => return blog::main(command).await,
        Some(cli::Command::Probe { url }) => return Ok(probe(&url).await),
        Some(cli::Command::Payments(args)) => return payments_command(args).await,
        Some(cli::Command::Users(args)) => return users_command(args).await,
        Some(cli::Command::Parked(args)) => return parked::run(args).await,
        Some(cli::Command::Events { format, command }) => {
            return events(&catalogue::MARKETPLACE, format, command);
        }
        Some(cli::Command::Drill(cli::Drill::Concurrency(args))) => {
            let exe = std::env::current_exe()?;
            let report = drill::concurrency(&exe, args).await?;
            print_report(&report);
            return if report.passed() {
                Ok(0)
            } else {
                Err("the drill failed".into())
            };
        }
        Some(cli::Command::Drill(cli::Drill::Cluster(args))) => {
            let exe = std::env::current_exe()?;
            let report = drill_cluster::cluster(&exe, args).await?;
            print_report(&report);
            return if report.passed() {
                Ok(0)
            } else {
                Err("the drill failed".into())
            };
        }
    };
    let settings = Settings::load(&args)?;
    let (listener, signal) = runtime::listen(&settings.host, settings.port).await?;
    run(settings, listener, signal).await.map(|()| 0)
}

/// `ticketing payments …`, on the payments database the service uses.
async fn payments_command(args: cli::PaymentsArgs) -> Result<u8, Box<dyn std::error::Error>> {
    match args.command {
        cli::PaymentsCommand::Refund { id, data } => {
            let id = marketplace_events::PaymentId::parse(&id)
                .ok_or_else(|| format!("not a payment id: {id}"))?;
            let (db, outbox) = payments_store(&data).await?;
            let gateway = config::payment_gateway()?;
            let refund =
                payments::saga::refund(&db, &outbox, gateway.as_ref(), Clock::System.now(), id)
                    .await?;
            print_report(&format!("payment {id} refunded: {refund}"));
        }
    }
    Ok(0)
}

/// `ticketing users …`, on the auth database the service uses.
async fn users_command(args: cli::UsersArgs) -> Result<u8, Box<dyn std::error::Error>> {
    let (email, data, admin) = match args.command {
        cli::UsersCommand::GrantAdmin { email, data } => (email, data, true),
        cli::UsersCommand::RevokeAdmin { email, data } => (email, data, false),
    };
    let email = shared::email::Email::parse(&email)
        .map_err(|reason| format!("{email:?} is not an e-mail address: {reason}"))?;
    let (_, databases) =
        runtime::engines::engines(&data.engines.urls(), "ticketing", &["auth"], &data.data_dir)?;
    let (_, outbox) = auth::roles::open_store(&databases).await?;
    let change = auth::roles::set_admin(&outbox, &email, admin, Clock::System.now()).await?;
    let role = if admin { "an admin" } else { "not an admin" };
    print_report(&format!("{email} is {role}: {change}"));
    Ok(0)
}

/// The payments service's database (SQLite in the data directory, or
/// `PAYMENTS_DATABASE_URL` / `DATABASE_URL`) and its outbox.
async fn payments_store(
    data: &cli::PaymentsData,
) -> Result<(store::Db, bus::outbox::Outbox), Box<dyn std::error::Error>> {
    let (_, databases) = runtime::engines::engines(
        &data.engines.urls(),
        "ticketing",
        &["payments"],
        &data.data_dir,
    )?;
    Ok(databases
        .operator_store(
            marketplace_events::service_events(payments::SERVICE),
            payments::MIGRATIONS,
        )
        .await?)
}

/// `ticketing probe`: 0 when `url` answers 2xx, else 1 (and why, on stderr).
async fn probe(url: &str) -> u8 {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("probe: {e}");
            return 1;
        }
    };
    match client.get(url).send().await {
        Ok(res) if res.status().is_success() => 0,
        Ok(res) => {
            let status = res.status();
            let body = res.text().await.unwrap_or_default();
            eprintln!("probe: {url} answered {status}: {body}");
            1
        }
        Err(e) => {
            eprintln!("probe: {url}: {e}");
            1
        }
    }
}

/// A drill's report goes to stdout: it is the command's output.
#[allow(clippy::print_stdout)]
pub(crate) fn print_report(report: &impl std::fmt::Display) {
    println!("{report}");
}

/// Starts the configured services (or the gateway) and serves them on
/// `listener` until `shutdown` fires; then stops accepting, finishes
/// in-flight requests and handlers, and flushes the outbox relays.
pub async fn run(
    settings: Settings,
    listener: tokio::net::TcpListener,
    shutdown: Shutdown,
) -> Result<(), Box<dyn std::error::Error>> {
    let local = listener.local_addr()?;
    match &settings.role {
        Role::Gateway => {
            let upstreams = settings
                .gateway
                .clone()
                .ok_or("the gateway needs its upstreams")?;
            tracing::info!(?upstreams, "ticketing gateway listening on http://{local}");
            let router = runtime::gateway::router(upstreams);
            runtime::serve_with(listener, router, Fallback::Own, shutdown, settings.http).await?;
        }
        Role::Pages => {
            // The web client alone: no database, no bus.
            let web_settings = settings
                .web
                .clone()
                .ok_or("the web client needs its settings")?;
            let upstreams = web_settings
                .upstreams
                .clone()
                .ok_or("the web client alone needs API_URL or AUTH_URL, TICKETS_URL, …")?;
            tracing::info!(
                ?upstreams,
                "ticketing web client listening on http://{local}"
            );
            let api = upstreams.client();
            let ready: shared::http::ReadyCheck = {
                let api = api.clone();
                Arc::new(move || {
                    let api = api.clone();
                    Box::pin(async move { web::check_ready(&api).await })
                })
            };
            let router = pages(api, &web_settings, &PageSettings::of(&settings))
                .merge(runtime::edge::health_router(vec![(
                    "web api".into(),
                    ready,
                )]))
                .merge(docs::router());
            runtime::serve_with(listener, router, pages_fallback(), shutdown, settings.http)
                .await?;
        }
        Role::Services { .. } => return run_services(settings, listener, shutdown).await,
    }
    tracing::info!("stopped");
    Ok(())
}

/// The marketplace's services of this process (and the web client, when it
/// runs here too), on its bus and databases.
async fn run_services(
    settings: Settings,
    listener: tokio::net::TcpListener,
    shutdown: Shutdown,
) -> Result<(), Box<dyn std::error::Error>> {
    let bus = open_bus(&settings.bus, &settings.data_dir).await?;
    // The services stop only after the HTTP server has drained.
    let (stop_services, services_shutdown) = shared::shutdown::channel();
    let deps = Deps {
        databases: settings.databases.clone(),
        bus,
        keys: AuthKeys::new(&settings.jwt_key, settings.jwt_ttl, settings.secure_cookies),
        clock: Clock::System,
        shutdown: services_shutdown,
    };
    tracing::info!(databases = ?settings.databases, "starting services");
    let mut running = start_services(&settings, &deps).await?;
    // Every process with services keeps its own deny list of ended
    // sessions, fed by auth's events (the services in it share it).
    let follower = auth::sessions::follow(
        deps.bus.clone(),
        deps.keys.clone(),
        deps.clock.clone(),
        settings.revocation_max_staleness,
        deps.shutdown.clone(),
    );
    running.push(Running {
        name: "sessions",
        router: axum::Router::new(),
        ready_checks: vec![("sessions".into(), follower.ready)],
        tasks: vec![follower.task],
    });
    if settings.role.runs_all(marketplace_events::api_services()) || settings.web.is_some() {
        running.push(Running {
            name: "docs",
            router: docs::router(),
            ready_checks: Vec::new(),
            tasks: Vec::new(),
        });
    }
    let web = settings.web.clone();
    let page_settings = PageSettings::of(&settings);
    let fallback = match web {
        Some(_) => pages_fallback(),
        None => Fallback::Json,
    };
    serve_running(
        running,
        listener,
        Stopping {
            http: shutdown,
            services: stop_services,
        },
        fallback,
        settings.http,
        move |api| match &web {
            // The pages beside the API in one router: the web client calls
            // this process's API in process (through the same edge a
            // request from outside passes), or the API elsewhere.
            Some(web_settings) => {
                let client = match &web_settings.upstreams {
                    None => web::Api::in_process(runtime::edge::edge(api.clone(), Fallback::Json)),
                    Some(u) => u.clone().client(),
                };
                api.merge(pages(client, web_settings, &page_settings))
            }
            None => api,
        },
    )
    .await
}

/// The web client's pages, calling the API through `api`.
/// What the pages take from the process's settings.
struct PageSettings {
    secure_cookies: bool,
    form_key: Arc<[u8]>,
}

impl PageSettings {
    fn of(settings: &Settings) -> PageSettings {
        PageSettings {
            secure_cookies: settings.secure_cookies,
            form_key: settings.jwt_key.clone().into(),
        }
    }
}

fn pages(api: web::Api, web: &config::WebSettings, settings: &PageSettings) -> axum::Router {
    web::router(web::WebConfig {
        api,
        test_card_tokens: web.test_card_tokens,
        secure_cookies: settings.secure_cookies,
        form_key: settings.form_key.clone(),
    })
}

/// Where the web client runs: the API's paths (a service's prefix, the API
/// docs, the health routes) answer in the JSON error shape, everything else
/// with the HTML 404 page.
fn pages_fallback() -> Fallback {
    fn api_path(path: &str) -> bool {
        path == "/api" || path.starts_with("/api/") || runtime::edge::HEALTH_PATHS.contains(&path)
    }
    Fallback::Pages {
        api: api_path,
        page: |status| Box::pin(web::status_page(status)),
    }
}

async fn start_services(
    settings: &Settings,
    deps: &Deps,
) -> Result<Vec<Running>, store::StoreError> {
    let options = ListenerOptions {
        batch: settings.listener_batch,
        ..ListenerOptions::default()
    };
    let mut running = Vec::new();
    for name in settings.role.services() {
        running.push(match *name {
            "auth" => auth::start(deps, settings.auth.clone()).await?,
            "tickets" => tickets::start(deps, options.clone()).await?,
            "orders" => {
                orders::start(
                    deps,
                    orders::Config {
                        order_expiration: settings.order_expiration,
                        max_active_orders_per_user: settings.max_active_orders_per_user,
                    },
                    options.clone(),
                )
                .await?
            }
            "expiration" => expiration::start(deps, options.clone()).await?,
            "payments" => payments::start(deps, settings.payments.clone(), options.clone()).await?,
            other => unreachable!("service {other} passed validation"),
        });
    }
    Ok(running)
}
