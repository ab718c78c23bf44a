//! Settings from flags and the environment, checked at start-up so a
//! malformed value is an error naming the variable, never a panic later.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use shared::config::{ConfigError, env_var};

use crate::cli::RunArgs;

/// The services this binary can run, besides the web client.
pub const ALL_SERVICES: &[&str] = &["auth", "tickets", "orders", "expiration", "payments"];
/// The web client: no database, no bus; it speaks the services' HTTP API.
pub const WEB: &str = "web";

/// How the web client reaches the API.
#[derive(Debug, Clone)]
pub struct WebSettings {
    /// `None`: the API services run in this process and are called in
    /// process; otherwise over HTTP.
    pub upstreams: Option<web::Upstreams>,
    /// Show the offline gateway's test card tokens on the payment form.
    pub test_card_tokens: bool,
}

/// Which event bus the services use.
#[derive(Debug, Clone)]
pub enum BusChoice {
    /// The embedded bus in `<data-dir>/bus.db`.
    Embedded,
    /// NATS JetStream at this URL, connecting as `name`.
    Nats { url: String, name: String },
}

/// Everything `run` needs, validated.
pub struct Settings {
    pub host: String,
    pub port: u16,
    pub data_dir: PathBuf,
    pub services: Vec<&'static str>,
    /// Set when this process is the stand-alone gateway.
    pub gateway: Option<crate::gateway::Upstreams>,
    /// Set when this process serves the web client.
    pub web: Option<WebSettings>,
    pub bus: BusChoice,
    pub databases: bus::service::Databases,
    pub jwt_key: Vec<u8>,
    pub jwt_ttl: Duration,
    pub secure_cookies: bool,
    pub order_expiration: Duration,
    pub auth: auth::Config,
    pub payments: payments::Config,
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Io(String),
}

fn parse_services(names: &[String]) -> Result<Vec<&'static str>, SettingsError> {
    let mut out = Vec::new();
    for name in names.iter().map(|n| n.trim().to_ascii_lowercase()) {
        if name == "gateway" {
            if names.len() != 1 {
                return Err(SettingsError::Invalid(
                    "the gateway runs alone: --services gateway".into(),
                ));
            }
            return Ok(vec!["gateway"]);
        }
        if name == "all" {
            out.extend_from_slice(ALL_SERVICES);
            out.push(WEB);
            continue;
        }
        if name == WEB {
            out.push(WEB);
            continue;
        }
        match ALL_SERVICES.iter().find(|s| **s == name) {
            Some(s) => out.push(*s),
            None => {
                return Err(SettingsError::Invalid(format!(
                    "unknown service {name:?} in --services / TICKETING_SERVICES (expected {}, web, gateway or all)",
                    ALL_SERVICES.join(", ")
                )));
            }
        }
    }
    out.sort_by_key(|s| {
        ALL_SERVICES
            .iter()
            .position(|a| a == s)
            .unwrap_or(usize::MAX)
    });
    out.dedup();
    Ok(out)
}

/// The URL of `service`'s own database: `<SERVICE>_DATABASE_URL`, else
/// `base` itself when it is the only service here, else `base` with the
/// database name `<product>_<service>` (`ticketing_orders`, `blog_query`).
fn database_url(
    base: &str,
    product: &str,
    service: &str,
    alone: bool,
) -> Result<String, SettingsError> {
    let var = format!("{}_DATABASE_URL", service.to_ascii_uppercase());
    if let Some(url) = env_var::<String>(&var)? {
        return Ok(url);
    }
    if alone {
        return Ok(base.to_owned());
    }
    let (head, query) = match base.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (base, None),
    };
    let Some(slash) = head
        .rfind('/')
        .filter(|i| head[..*i].ends_with(|c| c != '/'))
    else {
        return Err(SettingsError::Invalid(format!(
            "DATABASE_URL needs a database name to derive {var} from: {base}"
        )));
    };
    let mut url = format!("{}/{product}_{service}", &head[..slash]);
    if let Some(q) = query {
        url.push('?');
        url.push_str(q);
    }
    Ok(url)
}

/// The bus and the databases `args` choose for `services` of `product`:
/// JetStream when a NATS URL is given, else the embedded bus; PostgreSQL
/// (a database per service, see [`database_url`]) when a database URL is
/// given, else SQLite files in `data_dir`.
pub(crate) fn engines(
    args: &crate::cli::EngineArgs,
    product: &str,
    services: &[&str],
    data_dir: &Path,
) -> Result<(BusChoice, bus::service::Databases), SettingsError> {
    let bus = match &args.nats_url {
        Some(url) => BusChoice::Nats {
            url: url.clone(),
            name: match product {
                "ticketing" => connection_name(services),
                other => format!("{other}-{}", connection_name(services)),
            },
        },
        None => BusChoice::Embedded,
    };
    let databases = match &args.database_url {
        Some(base) => {
            let mut urls = std::collections::BTreeMap::new();
            for s in services {
                urls.insert(
                    (*s).to_owned(),
                    database_url(base, product, s, services.len() == 1)?,
                );
            }
            bus::service::Databases::Postgres {
                urls,
                max_connections: env_var::<usize>("DATABASE_POOL_SIZE")?.unwrap_or(8),
            }
        }
        None => bus::service::Databases::Sqlite(data_dir.to_owned()),
    };
    Ok((bus, databases))
}

/// `<services>-<host>`: how this process introduces itself to NATS (the pod
/// name in Kubernetes, where `HOSTNAME` is the pod name).
fn connection_name(services: &[&str]) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.trim().is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{}-{host}", services.join("+"))
}

fn upstream(name: &str) -> Result<String, SettingsError> {
    env_var::<String>(name)?
        .ok_or_else(|| SettingsError::Invalid(format!("{name} must be set for --services gateway")))
}

/// `JWT_KEY` if set, else a random key generated once and kept in the data
/// directory so sessions survive restarts.
fn jwt_key(data_dir: &Path) -> Result<Vec<u8>, SettingsError> {
    if let Some(key) = env_var::<String>("JWT_KEY")? {
        if key.len() < 16 {
            return Err(SettingsError::Invalid(
                "JWT_KEY must be at least 16 characters".into(),
            ));
        }
        return Ok(key.into_bytes());
    }
    let path = data_dir.join("jwt.key");
    let io = |e: std::io::Error| SettingsError::Io(format!("cannot use {}: {e}", path.display()));
    if let Ok(existing) = std::fs::read_to_string(&path) {
        if existing.trim().len() >= 32 {
            return Ok(existing.trim().as_bytes().to_vec());
        }
    }
    std::fs::create_dir_all(data_dir).map_err(io)?;
    let key = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    write_private(&path, &key).map_err(io)?;
    tracing::info!(path = %path.display(), "generated a JWT key (set JWT_KEY to choose one)");
    Ok(key.into_bytes())
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        f.write_all(contents.as_bytes())
    }
    #[cfg(not(unix))]
    std::fs::write(path, contents)
}

impl Settings {
    pub fn load(args: &RunArgs) -> Result<Settings, SettingsError> {
        let services = parse_services(&args.services)?;
        let data_dir = args.data_dir.clone();
        let gateway_upstreams = if services == ["gateway"] {
            Some(crate::gateway::Upstreams {
                auth: upstream("AUTH_URL")?,
                tickets: upstream("TICKETS_URL")?,
                orders: upstream("ORDERS_URL")?,
                payments: upstream("PAYMENTS_URL")?,
                web: env_var::<String>("WEB_URL")?,
            })
        } else {
            None
        };
        let backends: Vec<&'static str> = services
            .iter()
            .copied()
            .filter(|s| ALL_SERVICES.contains(s))
            .collect();
        let web = if services.contains(&WEB) {
            let in_process = ["auth", "tickets", "orders", "payments"]
                .iter()
                .all(|s| services.contains(s));
            let upstreams = if in_process {
                None
            } else {
                let api = env_var::<String>("API_URL")?;
                let each = |var: &str| -> Result<String, SettingsError> {
                    match env_var::<String>(var)?.or_else(|| api.clone()) {
                        Some(u) => Ok(u.trim_end_matches('/').to_owned()),
                        None => Err(SettingsError::Invalid(format!(
                            "the web client without the API services in its process needs API_URL \
                             (one origin for the whole API) or {var}"
                        ))),
                    }
                };
                Some(web::Upstreams {
                    auth: each("AUTH_URL")?,
                    tickets: each("TICKETS_URL")?,
                    orders: each("ORDERS_URL")?,
                    payments: each("PAYMENTS_URL")?,
                })
            };
            Some(WebSettings {
                upstreams,
                test_card_tokens: match env_var::<bool>("WEB_TEST_CARD_TOKENS")? {
                    Some(show) => show,
                    None => env_var::<String>("STRIPE_SECRET_KEY")?.is_none(),
                },
            })
        } else {
            None
        };
        let (bus, databases) = engines(&args.engines, "ticketing", &backends, &data_dir)?;
        let jwt_key = jwt_key(&data_dir)?;
        let expiration_secs = env_var::<u64>("ORDER_EXPIRATION_SECONDS")?.unwrap_or(900);
        if expiration_secs == 0 {
            return Err(SettingsError::Invalid(
                "ORDER_EXPIRATION_SECONDS must be at least 1".into(),
            ));
        }
        let gateway: Arc<dyn payments::PaymentGateway> =
            match env_var::<String>("STRIPE_SECRET_KEY")? {
                Some(key) => {
                    let base = env_var::<String>("STRIPE_API_BASE")?
                        .unwrap_or_else(|| "https://api.stripe.com".into());
                    Arc::new(payments::StripeGateway::new(base, key).map_err(|e| {
                        SettingsError::Invalid(format!("cannot set up the Stripe client: {e}"))
                    })?)
                }
                None => Arc::new(payments::OfflineGateway),
            };
        Ok(Settings {
            host: args.host.clone(),
            port: args.port,
            data_dir,
            services,
            gateway: gateway_upstreams,
            web,
            bus,
            databases,
            jwt_key,
            jwt_ttl: Duration::from_secs(env_var::<u64>("JWT_TTL_SECONDS")?.unwrap_or(3600)),
            secure_cookies: env_var::<bool>("COOKIE_SECURE")?.unwrap_or(true),
            order_expiration: Duration::from_secs(expiration_secs),
            auth: auth::Config {
                attempts_per_window: env_var::<u32>("AUTH_RATE_LIMIT_PER_MINUTE")?.unwrap_or(20),
                window: Duration::from_secs(60),
                trust_forwarded_for: env_var::<bool>("TRUST_FORWARDED_FOR")?.unwrap_or(false),
            },
            payments: payments::Config {
                gateway,
                currency: env_var::<String>("PAYMENT_CURRENCY")?
                    .unwrap_or_else(|| "usd".into())
                    .to_lowercase(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::parse_services;

    #[test]
    fn each_service_gets_its_own_database_derived_from_database_url() {
        use super::database_url;
        assert_eq!(
            database_url("postgres://u@h:5432/app", "ticketing", "orders", true).unwrap(),
            "postgres://u@h:5432/app"
        );
        assert_eq!(
            database_url("postgres://u@h:5432/app", "ticketing", "orders", false).unwrap(),
            "postgres://u@h:5432/ticketing_orders"
        );
        assert_eq!(
            database_url("postgres://u@h/app?sslmode=disable", "blog", "auth", false).unwrap(),
            "postgres://u@h/blog_auth?sslmode=disable"
        );
        assert!(database_url("postgres://u@h", "ticketing", "auth", false).is_err());
    }

    #[test]
    fn the_gateway_runs_alone() {
        let s = |v: &[&str]| parse_services(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(s(&["gateway"]).unwrap(), ["gateway"]);
        assert!(s(&["gateway", "auth"]).is_err());
    }

    #[test]
    fn services_are_parsed_deduplicated_and_ordered() {
        let s = |v: &[&str]| parse_services(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(s(&["all"]).unwrap().len(), 6);
        assert_eq!(s(&["web", "auth"]).unwrap(), ["auth", "web"]);
        assert_eq!(
            s(&["payments", "Auth", "auth"]).unwrap(),
            ["auth", "payments"]
        );
        assert!(s(&["billing"]).unwrap_err().to_string().contains("billing"));
    }
}
