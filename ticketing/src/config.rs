//! Settings from flags and the environment, checked at start-up so a
//! malformed value is an error naming the variable, never a panic later.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bus::listener::ListenerOptions;
use marketplace_events::API_ROUTES;
use runtime::engines::{BusChoice, EngineError, engines};
use runtime::gateway::Upstreams;
use runtime::role::{Catalogue, Role};
use shared::client_addr::TrustedProxies;
use shared::config::{ConfigError, env_var};

use crate::cli::RunArgs;

/// How the marketplace's processes name their databases
/// (`ticketing_<service>`) and NATS connections (`<services>-<host>`).
pub const NAMING: runtime::engines::Naming = runtime::engines::Naming {
    database: "ticketing",
    connection: "",
};

/// The marketplace's services as `--services` names them.
pub const CATALOGUE: Catalogue = Catalogue {
    variable: "TICKETING_SERVICES",
    services: marketplace_events::SERVICES,
    gateway: true,
};

/// Where the web client finds the API.
#[derive(Debug, Clone)]
pub enum ApiAt {
    /// The API services run in this process: called in process.
    InProcess,
    /// Elsewhere, over HTTP.
    Upstreams(Upstreams),
}

/// The web client's settings.
#[derive(Debug, Clone)]
pub struct WebSettings {
    pub api: ApiAt,
    /// Show the offline gateway's test card tokens on the payment form.
    pub test_card_tokens: bool,
}

/// What this process runs, with what each part of it needs: a gateway
/// without its upstreams, or pages alone without the API's address, cannot
/// be written down.
#[derive(Debug, Clone)]
pub enum Process {
    /// Services of the marketplace (at least one, in its order), and the
    /// web client beside them when `pages` is set.
    Services {
        services: Vec<&'static str>,
        pages: Option<WebSettings>,
    },
    /// The web client alone, calling the API over HTTP.
    Pages {
        upstreams: Upstreams,
        test_card_tokens: bool,
    },
    /// The reverse proxy alone, in front of the services.
    Gateway(Upstreams),
}

impl Process {
    /// The services this process runs (none for the pages or the gateway).
    pub fn services(&self) -> &[&'static str] {
        match self {
            Process::Services { services, .. } => services,
            Process::Pages { .. } | Process::Gateway(_) => &[],
        }
    }
}

/// A signing key: never printed (`Debug` shows it redacted), read only
/// where it signs.
pub type Key = secrecy::SecretBox<[u8]>;

/// Everything `run` needs, validated.
pub struct Settings {
    pub host: String,
    pub port: u16,
    pub data_dir: PathBuf,
    /// What this process runs.
    pub process: Process,
    pub bus: BusChoice,
    pub databases: runtime::service::Databases,
    pub sessions: SessionSettings,
    pub orders: orders::Config,
    /// The most events a listener applies in one transaction.
    pub listener_batch: usize,
    pub auth: auth::Config,
    pub payments: payments::Config,
    /// Timeouts, the head limit and the shutdown deadline of the HTTP server.
    pub http: runtime::HttpLimits,
}

/// How sessions are signed, how long they last and how their end is known.
pub struct SessionSettings {
    /// Signs the session tokens (`JWT_KEY`, or one generated and kept in
    /// the data directory).
    pub jwt_key: Key,
    pub jwt_ttl: Duration,
    /// How long the deny list of ended sessions may go without being known
    /// current before the process reports not ready (`None`: never).
    pub revocation_max_staleness: Option<Duration>,
    pub secure_cookies: bool,
}

impl SessionSettings {
    /// The key the web client's forms are signed with (their CSRF tokens):
    /// derived from the JWT key for that one purpose (HMAC-SHA-256 of a
    /// label), so a form token and a session token never share a key.
    pub fn form_key(&self) -> Key {
        use hmac::{KeyInit as _, Mac as _};
        use secrecy::ExposeSecret as _;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(self.jwt_key.expose_secret())
            .expect("HMAC takes a key of any length");
        mac.update(b"ticketing web form key v1");
        Key::from(mac.finalize().into_bytes().to_vec().into_boxed_slice())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Io(String),
    #[error(transparent)]
    Engines(#[from] EngineError),
}

/// `<SERVICE>_URL`: where the service runs, for the gateway and the web
/// client in front of services in other processes.
fn url_variable(service: &str) -> String {
    format!("{}_URL", service.to_ascii_uppercase())
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
    store::private_dir(data_dir).map_err(io)?;
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
        let role = Role::parse(&args.services, &CATALOGUE).map_err(SettingsError::Invalid)?;
        let data_dir = args.data_dir.clone();
        let test_card_tokens = || -> Result<bool, SettingsError> {
            Ok(match env_var::<bool>("WEB_TEST_CARD_TOKENS")? {
                Some(show) => show,
                None => env_var::<String>("STRIPE_SECRET_KEY")?.is_none(),
            })
        };
        // The web client without the API services in its process calls
        // them over HTTP.
        let api_upstreams =
            || -> Result<Upstreams, SettingsError> {
                let api = env_var::<String>("API_URL")?;
                Upstreams::new(API_ROUTES, |service| {
                    let var = url_variable(service);
                    env_var::<String>(&var)?.or_else(|| api.clone()).ok_or_else(|| {
                    SettingsError::Invalid(format!(
                        "the web client without the API services in its process needs API_URL \
                         (one origin for the whole API) or {var}"
                    ))
                })
                })
            };
        let process = match &role {
            Role::Gateway => {
                // The gateway's hop to the services is plain HTTP inside the
                // deployment (TLS ends in front of the gateway).
                let plain_http = |var: &str, urls: String| {
                    if urls.split(',').all(|u| u.trim().starts_with("http://")) {
                        Ok(urls)
                    } else {
                        Err(SettingsError::Invalid(format!(
                            "{var} must be http:// URLs: the gateway reaches the services over plain \
                             HTTP (end TLS in front of the gateway)"
                        )))
                    }
                };
                let upstreams = Upstreams::new(API_ROUTES, |service| {
                    let var = url_variable(service);
                    let urls = env_var::<String>(&var)?.ok_or_else(|| {
                        SettingsError::Invalid(format!("{var} must be set for --services gateway"))
                    })?;
                    plain_http(&var, urls)
                })?;
                Process::Gateway(match env_var::<String>("WEB_URL")? {
                    Some(web) => upstreams.with_rest("web", plain_http("WEB_URL", web)?),
                    None => upstreams,
                })
            }
            Role::Pages => Process::Pages {
                upstreams: api_upstreams()?,
                test_card_tokens: test_card_tokens()?,
            },
            Role::Services { services, pages } => Process::Services {
                services: services.clone(),
                pages: match pages {
                    false => None,
                    true => Some(WebSettings {
                        api: if role.runs_all(marketplace_events::api_services()) {
                            ApiAt::InProcess
                        } else {
                            ApiAt::Upstreams(api_upstreams()?)
                        },
                        test_card_tokens: test_card_tokens()?,
                    }),
                },
            },
        };
        let (bus, databases) = engines(&args.engines.urls(), &NAMING, role.services(), &data_dir)?;
        let jwt_key = Key::from(jwt_key(&data_dir)?.into_boxed_slice());
        let expiration_secs = env_var::<u64>("ORDER_EXPIRATION_SECONDS")?.unwrap_or(900);
        if expiration_secs == 0 {
            return Err(SettingsError::Invalid(
                "ORDER_EXPIRATION_SECONDS must be at least 1".into(),
            ));
        }
        let listener_batch =
            env_var::<usize>("LISTENER_BATCH")?.unwrap_or(ListenerOptions::default().batch);
        if listener_batch == 0 {
            return Err(SettingsError::Invalid(
                "LISTENER_BATCH must be at least 1".into(),
            ));
        }
        let gateway = payment_gateway()?;
        refuse_admin_emails()?;
        // `/metrics` on the public port only when one process serves the
        // whole marketplace.
        let all_in_one = role.runs_all(marketplace_events::SERVICES.iter().copied());
        let http = runtime::HttpLimits::from_env(all_in_one, all_in_one || role == Role::Gateway)?;
        Ok(Settings {
            host: args.host.clone(),
            port: args.port,
            data_dir,
            process,
            bus,
            databases,
            sessions: SessionSettings {
                jwt_key,
                jwt_ttl: Duration::from_secs(env_var::<u64>("JWT_TTL_SECONDS")?.unwrap_or(3600)),
                // 0 turns the bound off: serve on a stale list rather than
                // not at all.
                revocation_max_staleness: match env_var::<u64>("REVOCATION_MAX_STALENESS_SECONDS")?
                    .unwrap_or(10)
                {
                    0 => None,
                    secs => Some(Duration::from_secs(secs)),
                },
                secure_cookies: env_var::<bool>("COOKIE_SECURE")?.unwrap_or(true),
            },
            orders: orders::Config {
                order_expiration: Duration::from_secs(expiration_secs),
                max_active_orders_per_user: env_var::<u32>("MAX_ACTIVE_ORDERS_PER_USER")?
                    .unwrap_or(10)
                    .max(1)
                    .into(),
            },
            listener_batch,
            auth: auth::Config {
                attempts_per_window: env_var::<u32>("AUTH_RATE_LIMIT_PER_MINUTE")?.unwrap_or(20),
                window: Duration::from_secs(60),
                trusted_proxies: trusted_proxies()?,
                ..auth::Config::default()
            },
            http,
            payments: payments::Config {
                gateway,
                currency: env_var::<String>("PAYMENT_CURRENCY")?
                    .unwrap_or_else(|| "usd".into())
                    .to_lowercase(),
                verdict_wait: Duration::from_secs(
                    env_var::<u64>("PAYMENT_WAIT_SECONDS")?.unwrap_or(5),
                ),
                verdict_timeout: Duration::from_secs(
                    env_var::<u64>("PAYMENT_VERDICT_TIMEOUT_SECONDS")?
                        .unwrap_or(3600)
                        .max(1),
                ),
                authorize_recovery: Duration::from_secs(
                    env_var::<u64>("PAYMENT_AUTHORIZE_RECOVERY_SECONDS")?
                        .unwrap_or(60)
                        .max(1),
                ),
                // A few declines, never more than ten, before card testing
                // is refused.
                max_declines_per_buyer: env_var::<u32>("PAYMENT_MAX_DECLINES")?
                    .unwrap_or(5)
                    .clamp(1, 10),
                max_declines_per_order: env_var::<u32>("PAYMENT_MAX_DECLINES_PER_ORDER")?
                    .unwrap_or(3)
                    .clamp(1, 10),
                decline_window: Duration::from_secs(
                    env_var::<u64>("PAYMENT_DECLINE_WINDOW_SECONDS")?
                        .unwrap_or(3600)
                        .max(1),
                ),
            },
        })
    }
}

/// Stripe when `STRIPE_SECRET_KEY` is set (at `STRIPE_API_BASE`, by
/// default `https://api.stripe.com`), else the offline test gateway.
pub fn payment_gateway() -> Result<Arc<dyn payments::PaymentGateway>, SettingsError> {
    Ok(match env_var::<String>("STRIPE_SECRET_KEY")? {
        Some(key) => {
            let base = env_var::<String>("STRIPE_API_BASE")?
                .unwrap_or_else(|| "https://api.stripe.com".into());
            Arc::new(payments::StripeGateway::new(base, key).map_err(|e| {
                SettingsError::Invalid(format!("cannot set up the Stripe client: {e}"))
            })?)
        }
        None => Arc::new(payments::OfflineGateway),
    })
}

/// `ADMIN_EMAILS` is no longer read: whoever signed up first with one of
/// its addresses became an admin, and addresses were not verified. Refusing
/// to start when it is set tells the operator at once, rather than leaving
/// the admins without their role unnoticed.
fn refuse_admin_emails() -> Result<(), SettingsError> {
    match env_var::<String>("ADMIN_EMAILS")? {
        Some(v) if !v.trim().is_empty() => Err(SettingsError::Invalid(
            "ADMIN_EMAILS is no longer read: unset it and grant admin with \
             `ticketing users grant-admin EMAIL` (docs/operations.md, \"Admins\")"
                .into(),
        )),
        _ => Ok(()),
    }
}

/// Which proxies' `X-Forwarded-For` entries auth believes:
/// `TRUST_FORWARDED_FOR=true` turns it on, `TRUSTED_PROXIES` (networks or
/// addresses, comma-separated) names them — and only them: trusting every
/// private network by default let any client on one write the address it
/// liked. Without `TRUSTED_PROXIES` no proxy is trusted (and the log says
/// so).
fn trusted_proxies() -> Result<Option<TrustedProxies>, ConfigError> {
    if !env_var::<bool>("TRUST_FORWARDED_FOR")?.unwrap_or(false) {
        return Ok(None);
    }
    let proxies =
        env_var::<TrustedProxies>("TRUSTED_PROXIES")?.unwrap_or_else(TrustedProxies::none);
    if proxies.is_empty() {
        tracing::warn!(
            "TRUST_FORWARDED_FOR is set but TRUSTED_PROXIES names no proxy: X-Forwarded-For is not believed"
        );
    }
    Ok(Some(proxies))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_marketplace_service_can_be_named_and_all_runs_them_with_the_pages() {
        let role = Role::parse(&["all".to_owned()], &CATALOGUE).unwrap();
        assert_eq!(role.services(), marketplace_events::SERVICES);
        assert!(role.pages());
        assert!(role.runs_all(marketplace_events::api_services()));
        assert_eq!(
            Role::parse(&["gateway".to_owned()], &CATALOGUE).unwrap(),
            Role::Gateway
        );
    }

    fn sessions(key: &str) -> SessionSettings {
        SessionSettings {
            jwt_key: Key::from(key.as_bytes().to_vec().into_boxed_slice()),
            jwt_ttl: Duration::from_secs(60),
            revocation_max_staleness: None,
            secure_cookies: true,
        }
    }

    #[test]
    fn the_form_key_is_derived_from_the_jwt_key_and_is_not_it() {
        use secrecy::ExposeSecret as _;
        let a = sessions("a-key-of-sixteen-chars-or-more");
        let b = sessions("another-key-of-sixteen-chars");
        let form = a.form_key();
        assert_ne!(form.expose_secret(), a.jwt_key.expose_secret());
        assert_eq!(form.expose_secret(), a.form_key().expose_secret());
        assert_ne!(form.expose_secret(), b.form_key().expose_secret());
        assert_eq!(form.expose_secret().len(), 32);
    }

    #[test]
    fn keys_never_print() {
        let a = sessions("a-key-of-sixteen-chars-or-more");
        let printed = format!("{:?} {:?}", a.jwt_key, a.form_key());
        assert!(!printed.contains("sixteen"), "{printed}");
        assert!(printed.contains("REDACTED"), "{printed}");
    }
}
