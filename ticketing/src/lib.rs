//! The ticketing binary's library: turns settings into running services.
//! Knows every service (it is the only crate that does) and nothing else.

pub mod blog;
pub mod catalogue;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod docs;
pub mod drill;
pub mod gateway;
pub mod streams;

use std::sync::Arc;
use std::time::Duration;

use bus::listener::ListenerOptions;
use runtime::engines::open_bus;
use runtime::serve_running;
use runtime::service::{Deps, Running};
use shared::auth::AuthKeys;
use shared::shutdown::Shutdown;
use shared::time::Clock;

pub use config::Settings;

/// Entry point after argument parsing; returns the exit code.
pub async fn main(cli: cli::Cli) -> Result<u8, Box<dyn std::error::Error>> {
    let args = match cli.command {
        Some(cli::Command::Run(args)) => args,
        None => cli.run,
        Some(cli::Command::Streams(command)) => {
            return Ok(streams::run(command, marketplace_events::streams).await);
        }
        Some(cli::Command::Blog(command)) => return blog::main(command).await,
        Some(cli::Command::Probe { url }) => return Ok(probe(&url).await),
        Some(cli::Command::Events { format }) => {
            print_report(&catalogue::render(format).trim_end());
            return Ok(0);
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
    };
    let settings = Settings::load(&args)?;
    let (listener, signal) = runtime::listen(&settings.host, settings.port).await?;
    run(settings, listener, signal).await.map(|()| 0)
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
fn print_report(report: &impl std::fmt::Display) {
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
    if let Some(upstreams) = settings.gateway.clone() {
        tracing::info!(?upstreams, "ticketing gateway listening on http://{local}");
        runtime::serve(listener, gateway::router(upstreams), shutdown).await?;
        tracing::info!("stopped");
        return Ok(());
    }
    let backends: Vec<&'static str> = settings
        .services
        .iter()
        .copied()
        .filter(|s| config::ALL_SERVICES.contains(s))
        .collect();
    if backends.is_empty() {
        // The web client alone: no database, no bus.
        let Some(web_settings) = settings.web.clone() else {
            return Err("no services to run".into());
        };
        let upstreams = web_settings
            .upstreams
            .clone()
            .ok_or("the web client alone needs API_URL or AUTH_URL, TICKETS_URL, …")?;
        let api = upstreams.clone().client();
        let ready: shared::http::ReadyCheck = {
            let api = api.clone();
            Arc::new(move || {
                let api = api.clone();
                Box::pin(async move { web::check_ready(&api).await })
            })
        };
        let router = web::router(web::WebConfig {
            api,
            test_card_tokens: web_settings.test_card_tokens,
            secure_cookies: settings.secure_cookies,
        })
        .merge(shared::http::health_router(vec![("web api".into(), ready)]))
        .merge(docs::router())
        .fallback(web::not_found);
        tracing::info!(
            ?upstreams,
            "ticketing web client listening on http://{local}"
        );
        runtime::serve(listener, shared::http::layers(router), shutdown).await?;
        tracing::info!("stopped");
        return Ok(());
    }
    let bus = open_bus(&settings.bus, &settings.data_dir).await?;
    let deps = Deps {
        databases: settings.databases.clone(),
        bus,
        keys: AuthKeys::new(&settings.jwt_key, settings.jwt_ttl, settings.secure_cookies),
        clock: Clock::System,
        shutdown: shutdown.clone(),
    };
    let mut running = start_services(&settings, &deps).await?;
    let whole_api = ["auth", "tickets", "orders", "payments"]
        .iter()
        .all(|s| settings.services.contains(s));
    if whole_api || settings.web.is_some() {
        running.push(Running {
            name: "docs",
            router: docs::router(),
            ready_checks: Vec::new(),
            tasks: Vec::new(),
        });
    }
    let web = settings.web.clone();
    let secure_cookies = settings.secure_cookies;
    serve_running(
        running,
        listener,
        shutdown,
        &settings.databases,
        move |router| match &web {
            Some(web_settings) => with_web(router, web_settings, secure_cookies),
            None => router,
        },
    )
    .await
}

/// The web client in front of `api` (this process's composed API): its
/// pages at their paths, everything else to the API, and an HTML 404 for
/// paths that are neither.
fn with_web(
    api: axum::Router,
    settings: &config::WebSettings,
    secure_cookies: bool,
) -> axum::Router {
    use tower::ServiceExt;
    let client = match &settings.upstreams {
        None => web::Api::in_process(api.clone()),
        Some(u) => u.clone().client(),
    };
    let pages = web::router(web::WebConfig {
        api: client,
        test_card_tokens: settings.test_card_tokens,
        secure_cookies,
    });
    pages.fallback(move |req: axum::extract::Request| {
        let api = api.clone();
        async move {
            let path = req.uri().path();
            let for_api = path == "/api"
                || path.starts_with("/api/")
                || matches!(path, "/healthz" | "/readyz" | "/metrics");
            if for_api {
                match api.oneshot(req).await {
                    Ok(res) => res,
                    Err(never) => match never {},
                }
            } else {
                web::not_found().await
            }
        }
    })
}

async fn start_services(
    settings: &Settings,
    deps: &Deps,
) -> Result<Vec<Running>, store::StoreError> {
    let options = ListenerOptions::default();
    let mut running = Vec::new();
    for name in settings.services.iter().filter(|s| **s != config::WEB) {
        running.push(match *name {
            "auth" => auth::start(deps, settings.auth.clone()).await?,
            "tickets" => tickets::start(deps, options.clone()).await?,
            "orders" => {
                orders::start(
                    deps,
                    orders::Config {
                        order_expiration: settings.order_expiration,
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
