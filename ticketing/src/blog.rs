//! `ticketing blog`: the blog system on the same library and the same
//! modes as the marketplace. `ticketing blog` runs its four services and
//! its page on one port (SQLite and the embedded bus in `./data/blog`);
//! `--services` picks some of them, `NATS_URL` / `DATABASE_URL` put them on
//! JetStream and PostgreSQL; `ticketing blog streams plan|apply` provisions
//! `deploy/blog-streams.yaml`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use runtime::service::{Databases, Deps, Running};
use shared::auth::AuthKeys;
use shared::config::env_var;
use shared::shutdown;
use shared::time::Clock;

use runtime::engines::{BusChoice, engines, open_bus};

use crate::config::SettingsError;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BlogCommand {
    #[command(subcommand)]
    pub command: Option<BlogSubcommand>,
    #[command(flatten)]
    pub run: BlogArgs,
}

#[derive(Debug, Subcommand)]
pub enum BlogSubcommand {
    /// Run the blog's services (the default): all of them and the page, on
    /// one port.
    Run(BlogArgs),
    /// Provision the blog's JetStream streams and consumers
    /// (deploy/blog-streams.yaml, built in): plan shows the difference,
    /// apply makes it so.
    #[command(subcommand)]
    Streams(crate::streams::Streams),
}

#[derive(Debug, Clone, Args)]
pub struct BlogArgs {
    /// Address to listen on.
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on.
    #[arg(long, env = "BLOG_PORT", default_value_t = 4000)]
    pub port: u16,
    /// Where the embedded databases and the bus log live.
    #[arg(long, env = "BLOG_DATA_DIR", default_value = "./data/blog")]
    pub data_dir: PathBuf,
    /// Comma-separated services to run: posts, comments, moderation, query,
    /// web (the page; alone it needs BLOG_API_URL or POSTS_URL, COMMENTS_URL
    /// and QUERY_URL), or all.
    #[arg(
        long,
        env = "BLOG_SERVICES",
        default_value = "all",
        value_delimiter = ','
    )]
    pub services: Vec<String>,
    #[command(flatten)]
    pub engines: crate::cli::EngineArgs,
    /// Words that get a comment rejected, comma-separated (whole words, any
    /// case).
    #[arg(
        long,
        env = "BLOG_BANNED_WORDS",
        default_value = blog_moderation::DEFAULT_BANNED_WORDS
    )]
    pub banned_words: String,
}

impl BlogCommand {
    /// The name this process reports to trace collectors by default.
    pub fn service_name(&self) -> String {
        let run = match &self.command {
            None => &self.run,
            Some(BlogSubcommand::Run(run)) => run,
            Some(BlogSubcommand::Streams(_)) => return "blog".to_owned(),
        };
        let services: Vec<&str> = run
            .services
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .collect();
        if services.is_empty() || services.iter().any(|s| s.eq_ignore_ascii_case("all")) {
            "blog".to_owned()
        } else {
            format!("blog-{}", services.join("+"))
        }
    }
}

/// Everything a blog process needs, validated.
pub struct BlogSettings {
    pub host: String,
    pub port: u16,
    pub data_dir: PathBuf,
    pub config: blog::Config,
    /// Serve the page too.
    pub page: bool,
    /// Where the page finds the API when the services are elsewhere.
    pub upstreams: Option<blog::Upstreams>,
    pub bus: BusChoice,
    pub databases: Databases,
}

fn parse_services(names: &[String]) -> Result<(Vec<&'static str>, bool), SettingsError> {
    let mut services = Vec::new();
    let mut page = false;
    for name in names.iter().map(|n| n.trim().to_ascii_lowercase()) {
        if name == "all" {
            services.extend_from_slice(blog::SERVICES);
            page = true;
        } else if name == blog::WEB {
            page = true;
        } else if let Some(s) = blog::SERVICES.iter().find(|s| **s == name) {
            services.push(*s);
        } else {
            return Err(SettingsError::Invalid(format!(
                "unknown blog service {name:?} in --services / BLOG_SERVICES (expected {}, web or all)",
                blog::SERVICES.join(", ")
            )));
        }
    }
    services.sort_by_key(|s| blog::SERVICES.iter().position(|a| a == s));
    services.dedup();
    if services.is_empty() && !page {
        return Err(SettingsError::Invalid("no blog services to run".into()));
    }
    Ok((services, page))
}

impl BlogSettings {
    pub fn load(args: &BlogArgs) -> Result<BlogSettings, SettingsError> {
        let (services, page) = parse_services(&args.services)?;
        let rules = blog_moderation::Rules::parse(&args.banned_words)
            .map_err(|e| SettingsError::Invalid(format!("BLOG_BANNED_WORDS: {e}")))?;
        let whole_api = ["posts", "comments", "query"]
            .iter()
            .all(|s| services.contains(s));
        let upstreams = if page && !whole_api {
            let api = env_var::<String>("BLOG_API_URL")?;
            let each = |var: &str| -> Result<String, SettingsError> {
                match env_var::<String>(var)?.or_else(|| api.clone()) {
                    Some(u) => Ok(u.trim_end_matches('/').to_owned()),
                    None => Err(SettingsError::Invalid(format!(
                        "the blog page without posts, comments and query in its process needs \
                         BLOG_API_URL (one origin for the whole API) or {var}"
                    ))),
                }
            };
            Some(blog::Upstreams {
                posts: each("POSTS_URL")?,
                comments: each("COMMENTS_URL")?,
                query: each("QUERY_URL")?,
            })
        } else {
            None
        };
        let (bus, databases) = engines(&args.engines.urls(), "blog", &services, &args.data_dir)?;
        Ok(BlogSettings {
            host: args.host.clone(),
            port: args.port,
            data_dir: args.data_dir.clone(),
            config: blog::Config {
                services,
                moderation: blog_moderation::Config {
                    rules: Arc::new(rules),
                },
            },
            page,
            upstreams,
            bus,
            databases,
        })
    }
}

/// `ticketing blog …`; returns the exit code.
pub async fn main(command: BlogCommand) -> Result<u8, Box<dyn std::error::Error>> {
    let args = match command.command {
        Some(BlogSubcommand::Streams(streams)) => {
            return Ok(crate::streams::run(streams, blog_events::streams).await);
        }
        Some(BlogSubcommand::Run(args)) => args,
        None => command.run,
    };
    let settings = BlogSettings::load(&args)?;
    let (listener, signal) = runtime::listen(&settings.host, settings.port).await?;
    run(settings, listener, signal).await.map(|()| 0)
}

/// The page in front of `api` (the composed API of this process, or the
/// services over HTTP): its routes at their paths, and the API's own paths
/// (`/posts…`, health, metrics) passed to `api_router` when there is one.
fn with_page(api_router: Option<axum::Router>, upstreams: Option<blog::Upstreams>) -> axum::Router {
    use tower::ServiceExt;
    let client = match (upstreams, &api_router) {
        (Some(u), _) => u.api(),
        (None, Some(router)) => runtime::client::Api::in_process(router.clone()),
        (None, None) => unreachable!("a page without an API was refused by the settings"),
    };
    let ready_client = client.clone();
    let ready: shared::http::ReadyCheck = Arc::new(move || {
        let api = ready_client.clone();
        Box::pin(async move { blog::page::check_ready(&api).await })
    });
    let page = blog::page_router(client);
    match api_router {
        Some(api) => page.fallback(move |req: axum::extract::Request| {
            let api = api.clone();
            async move {
                match api.oneshot(req).await {
                    Ok(res) => res,
                    Err(never) => match never {},
                }
            }
        }),
        None => shared::http::finish(page.merge(shared::http::health_router(vec![(
            "blog page".into(),
            ready,
        )]))),
    }
}

/// Starts the configured blog services (and the page) and serves them on
/// `listener` until `shutdown` fires.
pub async fn run(
    settings: BlogSettings,
    listener: tokio::net::TcpListener,
    shutdown: shutdown::Shutdown,
) -> Result<(), Box<dyn std::error::Error>> {
    if settings.config.services.is_empty() {
        // The page alone: no database, no bus.
        let router = with_page(None, settings.upstreams.clone());
        tracing::info!(upstreams = ?settings.upstreams, "blog page listening on http://{}", listener.local_addr()?);
        runtime::serve(listener, shared::http::layers(router), shutdown).await?;
        return Ok(());
    }
    let bus = open_bus(&settings.bus, &settings.data_dir).await?;
    // The blog has no accounts; Deps carries keys for services that do.
    let key = uuid::Uuid::new_v4().simple().to_string();
    let deps = Deps {
        databases: settings.databases.clone(),
        bus,
        keys: AuthKeys::new(key.as_bytes(), Duration::from_secs(3600), true),
        clock: Clock::System,
        shutdown: shutdown.clone(),
    };
    let running: Vec<Running> = blog::start(&deps, &settings.config).await?;
    let (page, upstreams) = (settings.page, settings.upstreams.clone());
    runtime::serve_running(
        running,
        listener,
        shutdown,
        &settings.databases,
        move |router| {
            if page {
                with_page(Some(router), upstreams)
            } else {
                router
            }
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::parse_services;

    #[test]
    fn blog_services_are_parsed_deduplicated_and_ordered() {
        let s = |v: &[&str]| parse_services(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(
            s(&["all"]).unwrap(),
            (vec!["posts", "comments", "moderation", "query"], true)
        );
        assert_eq!(
            s(&["query", "Posts", "posts"]).unwrap(),
            (vec!["posts", "query"], false)
        );
        assert_eq!(s(&["web"]).unwrap(), (vec![], true));
        assert!(s(&["tickets"]).unwrap_err().to_string().contains("tickets"));
    }
}
