//! Settings from flags and the environment, checked at start-up so a
//! malformed value is an error naming the variable, never a panic later.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use runtime::engines::{BusChoice, EngineError, engines};
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
    pub databases: runtime::service::Databases,
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
    #[error(transparent)]
    Engines(#[from] EngineError),
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
        let (bus, databases) = engines(&args.engines.urls(), "ticketing", &backends, &data_dir)?;
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
