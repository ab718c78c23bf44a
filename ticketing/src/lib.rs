//! The ticketing binary's library: turns settings into running services.
//! Knows every service (it is the only crate that does) and nothing else.

pub mod blog;
pub mod catalogue;
pub mod cli;
pub mod config;
pub mod docs;
pub mod streams;

use std::sync::Arc;
use std::time::Duration;

use bus::listener::ListenerOptions;
use runtime::Fallback;
use runtime::service::{Deps, Running};
use shared::auth::AuthKeys;
use shared::shutdown::Shutdown;
use shared::time::Clock;

pub use config::Settings;
use config::{ApiAt, Process};

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
            let report = ::catalogue::compat::Report {
                regenerate: format!(
                    "{}events --format json > {}",
                    product.command, product.contract_file
                ),
                ..::catalogue::compat::check(&committed, &current)
            };
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
        Some(cli::Command::Parked(args)) => return Ok(operator::run(args).await?),
        Some(cli::Command::Events { format, command }) => {
            return events(&catalogue::MARKETPLACE, format, command);
        }
        Some(cli::Command::Drill(cli::Drill::Concurrency(args))) => {
            let exe = std::env::current_exe()?;
            let report = drill::concurrency::concurrency(&exe, args).await?;
            print_report(&report);
            return if report.passed() {
                Ok(0)
            } else {
                Err("the drill failed".into())
            };
        }
        Some(cli::Command::Drill(cli::Drill::Cluster(args))) => {
            let exe = std::env::current_exe()?;
            let report = drill::cluster_drill::cluster(&exe, args).await?;
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
    let (_, databases) = runtime::engines::engines(
        &data.engines.urls(),
        &config::NAMING,
        &["auth"],
        &data.data_dir,
    )?;
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
        &config::NAMING,
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

/// Starts what this process runs (services, the web client, or the
/// gateway) and serves it on `listener` until `shutdown` fires; then stops
/// accepting, finishes in-flight requests and handlers, and flushes the
/// outbox relays.
pub async fn run(
    settings: Settings,
    listener: tokio::net::TcpListener,
    shutdown: Shutdown,
) -> Result<(), Box<dyn std::error::Error>> {
    let local = listener.local_addr()?;
    let form_key = settings.sessions.form_key();
    match settings.process {
        Process::Gateway(upstreams) => {
            tracing::info!(?upstreams, "ticketing gateway listening on http://{local}");
            let router = runtime::gateway::router(upstreams);
            runtime::serve_with(listener, router, Fallback::Own, shutdown, settings.http).await?;
        }
        Process::Pages {
            upstreams,
            test_card_tokens,
        } => {
            // The web client alone: no database, no bus.
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
            let router = pages(
                api,
                test_card_tokens,
                settings.sessions.secure_cookies,
                form_key,
            )
            .merge(runtime::edge::health_router(vec![(
                "web api".into(),
                ready,
            )]))
            .merge(docs::router());
            runtime::serve_with(listener, router, pages_fallback(), shutdown, settings.http)
                .await?;
        }
        Process::Services { .. } => return run_services(settings, listener, shutdown).await,
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
    use secrecy::ExposeSecret as _;
    let Process::Services {
        services,
        pages: web,
    } = &settings.process
    else {
        return Err("run_services runs services".into());
    };
    let sessions = &settings.sessions;
    let keys = AuthKeys::new(
        sessions.jwt_key.expose_secret(),
        sessions.jwt_ttl,
        sessions.secure_cookies,
    );
    let api_here = marketplace_events::api_services().all(|s| services.contains(&s));
    let docs_here = api_here || web.is_some();
    let start = async |deps: &Deps| -> Result<Vec<Running>, Box<dyn std::error::Error>> {
        let mut running = start_services(&settings, services, deps).await?;
        // Every process with services keeps its own deny list of ended
        // sessions, fed by auth's events (the services in it share it).
        let follower = auth::sessions::follow(
            deps.bus.clone(),
            keys.clone(),
            deps.clock.clone(),
            sessions.revocation_max_staleness,
            deps.shutdown.clone(),
        );
        running.push(Running {
            name: "sessions",
            router: axum::Router::new(),
            ready_checks: vec![("sessions".into(), follower.ready)],
            tasks: vec![follower.task],
        });
        if docs_here {
            running.push(Running {
                name: "docs",
                router: docs::router(),
                ready_checks: Vec::new(),
                tasks: Vec::new(),
            });
        }
        Ok(running)
    };
    let secure_cookies = sessions.secure_cookies;
    let form_key = sessions.form_key();
    let web = web.clone();
    let process = runtime::serve::ServicesProcess {
        bus: &settings.bus,
        data_dir: &settings.data_dir,
        databases: settings.databases.clone(),
        keys: Some(keys.clone()),
        fallback: match web {
            Some(_) => pages_fallback(),
            None => Fallback::Json,
        },
        limits: settings.http.clone(),
    };
    runtime::serve::run_services(process, listener, shutdown, start, move |api| match web {
        // The pages beside the API in one router: the web client calls
        // this process's API in process (through the same edge a request
        // from outside passes), or the API elsewhere.
        Some(web) => {
            let client = match web.api {
                ApiAt::InProcess => {
                    web::Api::in_process(runtime::edge::edge(api.clone(), Fallback::Json))
                }
                ApiAt::Upstreams(u) => u.client(),
            };
            api.merge(pages(
                client,
                web.test_card_tokens,
                secure_cookies,
                form_key,
            ))
        }
        None => api,
    })
    .await
}

/// The web client's pages, calling the API through `api`.
fn pages(
    api: web::Api,
    test_card_tokens: bool,
    secure_cookies: bool,
    form_key: config::Key,
) -> axum::Router {
    use secrecy::ExposeSecret as _;
    web::router(web::WebConfig {
        api,
        test_card_tokens,
        secure_cookies,
        form_key: form_key.expose_secret().into(),
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

/// How one of the marketplace's services starts, given the process's
/// settings, its dependencies and the listeners' options.
type Start = for<'a> fn(
    &'a Settings,
    &'a Deps,
    ListenerOptions,
) -> futures_util::future::BoxFuture<'a, Result<Running, store::StoreError>>;

/// Every service of the marketplace with how it starts, in the order a
/// process starts them (`marketplace_events::SERVICES`'s; a test holds the
/// two equal).
const SERVICES: &[(&str, Start)] = &[
    ("auth", |s, deps, _| {
        Box::pin(auth::start(deps, s.auth.clone()))
    }),
    ("tickets", |_, deps, options| {
        Box::pin(tickets::start(deps, options))
    }),
    ("orders", |s, deps, options| {
        Box::pin(orders::start(deps, s.orders.clone(), options))
    }),
    ("expiration", |_, deps, options| {
        Box::pin(expiration::start(deps, options))
    }),
    ("payments", |s, deps, options| {
        Box::pin(payments::start(deps, s.payments.clone(), options))
    }),
];

/// Starts `names` (some of [`SERVICES`]), in the marketplace's order.
async fn start_services(
    settings: &Settings,
    names: &[&'static str],
    deps: &Deps,
) -> Result<Vec<Running>, store::StoreError> {
    let options = ListenerOptions {
        batch: settings.listener_batch,
        ..ListenerOptions::default()
    };
    let mut running = Vec::new();
    for (_, start) in SERVICES.iter().filter(|(name, _)| names.contains(name)) {
        running.push(start(settings, deps, options.clone()).await?);
    }
    Ok(running)
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_service_of_the_marketplace_has_its_start_in_its_order() {
        let names: Vec<&str> = super::SERVICES.iter().map(|(name, _)| *name).collect();
        assert_eq!(names, marketplace_events::SERVICES);
    }
}
