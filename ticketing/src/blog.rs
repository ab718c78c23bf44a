//! `ticketing blog`: the blog system on the same library and the same
//! modes as the marketplace. `ticketing blog` runs its four services and
//! its page on one port (SQLite and the embedded bus in `./data/blog`);
//! `--services` picks some of them, `NATS_URL` / `DATABASE_URL` put them on
//! JetStream and PostgreSQL; `ticketing blog streams plan|apply` provisions
//! `deploy/blog-streams.yaml`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use runtime::service::{Databases, Deps, Running};
use shared::config::env_var;
use shared::shutdown;

use runtime::Fallback;
use runtime::engines::{BusChoice, engines};
use runtime::role::{Catalogue, Role};

use crate::cli::{BlogArgs, BlogCommand, BlogSubcommand};
use crate::config::SettingsError;

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
    pub http: runtime::HttpLimits,
    /// The parked-message admin API's token (never printed); none: not
    /// served.
    pub admin_token: Option<secrecy::SecretString>,
    /// How often the parked-message gauges are read
    /// (`BLOG_PARKED_GAUGES_SECONDS`, 15 by default).
    pub parked_gauges_every: Duration,
}

/// How the blog's processes name their databases (`blog_<service>`) and
/// NATS connections (`blog-<services>-<host>`).
const NAMING: runtime::engines::Naming = runtime::engines::Naming {
    database: "blog",
    connection: "blog-",
};

/// The blog's services as `--services` names them (it has no gateway).
pub const CATALOGUE: Catalogue = Catalogue {
    variable: "BLOG_SERVICES",
    services: blog::SERVICES,
    gateway: false,
};

impl BlogSettings {
    pub fn load(args: &BlogArgs) -> Result<BlogSettings, SettingsError> {
        let role =
            Role::parse(&args.process.services, &CATALOGUE).map_err(SettingsError::Invalid)?;
        let (services, page) = (role.services().to_vec(), role.pages());
        let all_in_one = role.runs_all(blog::SERVICES.iter().copied());
        let rules = blog_moderation::Rules::parse(&args.banned_words)
            .map_err(|e| SettingsError::Invalid(format!("BLOG_BANNED_WORDS: {e}")))?;
        let upstreams = if page && !role.runs_all(["posts", "comments", "query"]) {
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
        let (bus, databases) = engines(
            &args.process.engines.urls(),
            &NAMING,
            &services,
            &args.process.data_dir,
        )?;
        Ok(BlogSettings {
            host: args.process.host.clone(),
            port: args.process.port,
            data_dir: args.process.data_dir.clone(),
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
            // `/metrics` on the public port only when one process serves
            // the whole blog.
            http: runtime::HttpLimits::from_env(all_in_one, all_in_one || role == Role::Gateway)?,
            parked_gauges_every: Duration::from_secs(
                env_var::<u64>("BLOG_PARKED_GAUGES_SECONDS")?
                    .unwrap_or(15)
                    .max(1),
            ),
            admin_token: match args.admin_token.as_deref().map(str::trim) {
                None | Some("") => None,
                Some(t) if t.len() < 16 => {
                    return Err(SettingsError::Invalid(
                        "BLOG_ADMIN_TOKEN: use at least 16 characters (e.g. `openssl rand -hex 32`)"
                            .into(),
                    ));
                }
                Some(t) => Some(secrecy::SecretString::from(t)),
            },
        })
    }
}

/// `ticketing blog …`; returns the exit code.
pub async fn main(command: BlogCommand) -> Result<u8, Box<dyn std::error::Error>> {
    let args = match command.command {
        Some(BlogSubcommand::Streams(streams)) => {
            return Ok(crate::streams::run(streams, blog_events::STREAMS).await);
        }
        Some(BlogSubcommand::Events { format, command }) => {
            return crate::events(&crate::catalogue::BLOG, format, command);
        }
        Some(BlogSubcommand::Run(args)) => args,
        None => command.run,
    };
    let settings = BlogSettings::load(&args)?;
    let (listener, signal) = runtime::listen(&settings.host, settings.port).await?;
    run(settings, listener, signal).await.map(|()| 0)
}

/// The page, calling the API through `client`.
fn page(client: runtime::client::Api) -> axum::Router {
    blog::page_router(client)
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
        let client = settings
            .upstreams
            .clone()
            .ok_or("the blog page alone needs BLOG_API_URL or POSTS_URL, COMMENTS_URL, QUERY_URL")?
            .api();
        let ready: shared::http::ReadyCheck = {
            let api = client.clone();
            Arc::new(move || {
                let api = api.clone();
                Box::pin(async move { blog::page::check_ready(&api).await })
            })
        };
        let router = page(client).merge(runtime::edge::health_router(vec![(
            "blog page".into(),
            ready,
        )]));
        tracing::info!(upstreams = ?settings.upstreams, "blog page listening on http://{}", listener.local_addr()?);
        runtime::serve_with(listener, router, Fallback::Json, shutdown, settings.http).await?;
        return Ok(());
    }
    let (bus, data_dir) = (&settings.bus, &settings.data_dir);
    let (config, every) = (&settings.config, settings.parked_gauges_every);
    let admin_token = settings.admin_token.clone();
    let start = async |deps: &Deps| -> Result<Vec<Running>, Box<dyn std::error::Error>> {
        let mut running = blog::start(deps, config).await?;
        // Parked messages: their gauges always (the alerts read them), their
        // admin API with an operator's token.
        let gauges = runtime::parked::spawn_gauges(deps.bus.clone(), every, deps.shutdown.clone());
        let admin = admin_token.as_ref().map(|token| {
            let token = secrecy::ExposeSecret::expose_secret(token);
            runtime::parked::router(runtime::parked::ParkedAdmin::for_operator_token(
                deps.bus.clone(),
                token,
            ))
        });
        running.push(Running {
            name: "parked",
            router: admin.unwrap_or_default(),
            ready_checks: Vec::new(),
            tasks: vec![gauges],
        });
        Ok(running)
    };
    let process = runtime::serve::ServicesProcess {
        bus,
        data_dir,
        databases: settings.databases.clone(),
        // The blog has no accounts: its services take no sessions.
        keys: None,
        fallback: Fallback::Json,
        limits: settings.http.clone(),
    };
    let (with_page, upstreams) = (settings.page, settings.upstreams.clone());
    runtime::serve::run_services(process, listener, shutdown, start, move |api| {
        if !with_page {
            return api;
        }
        // The page beside the API in one router: it calls this process's
        // API in process (through the same edge a request from outside
        // passes), or the services elsewhere.
        let client = match upstreams {
            Some(u) => u.api(),
            None => {
                runtime::client::Api::in_process(runtime::edge::edge(api.clone(), Fallback::Json))
            }
        };
        api.merge(page(client))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_blog_runs_its_four_services_and_the_page_and_has_no_gateway() {
        let role = Role::parse(&["all".to_owned()], &CATALOGUE).unwrap();
        assert_eq!(
            role.services(),
            ["posts", "comments", "moderation", "query"]
        );
        assert!(role.pages());
        assert_eq!(
            Role::parse(&["web".to_owned()], &CATALOGUE).unwrap(),
            Role::Pages
        );
        assert!(Role::parse(&["gateway".to_owned()], &CATALOGUE).is_err());
        assert!(
            Role::parse(&["tickets".to_owned()], &CATALOGUE)
                .unwrap_err()
                .contains("tickets")
        );
    }
}
