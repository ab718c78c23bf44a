//! Which engines a process's services run on: JetStream or the embedded
//! bus, PostgreSQL or SQLite — chosen from two URLs, the same way for every
//! product.

use std::path::Path;
use std::sync::Arc;

use bus::Bus;
use bus::embedded::EmbeddedBus;
use bus::jetstream::JetStreamBus;
use shared::config::{ConfigError, env_var};

use crate::service::Databases;

/// The two URLs that choose the engines (`NATS_URL`, `DATABASE_URL`).
#[derive(Debug, Clone, Default)]
pub struct EngineUrls {
    /// NATS server with JetStream; without it the embedded bus is used.
    pub nats_url: Option<String>,
    /// PostgreSQL; without it each service uses SQLite in the data directory.
    pub database_url: Option<String>,
}

/// Engines that cannot be chosen as configured.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Invalid(String),
}

/// Which event bus the services use.
#[derive(Debug, Clone)]
pub enum BusChoice {
    /// The embedded bus in `<data-dir>/bus.db`.
    Embedded,
    /// NATS JetStream at this URL, connecting as `name`.
    Nats { url: String, name: String },
}

/// How a product's processes name what they open on the engines.
#[derive(Debug, Clone, Copy)]
pub struct Naming {
    /// A service's database, when one server holds several:
    /// `<database>_<service>`.
    pub database: &'static str,
    /// Before a process's NATS connection name, `<services>-<host>` (empty
    /// for none).
    pub connection: &'static str,
}

/// The URL of `service`'s own database: `<SERVICE>_DATABASE_URL`, else
/// `base` itself when it is the only service here, else `base` with the
/// database name `<product>_<service>` (`shop_orders`).
fn database_url(
    base: &str,
    product: &str,
    service: &str,
    alone: bool,
) -> Result<String, EngineError> {
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
        return Err(EngineError::Invalid(format!(
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
pub fn engines(
    args: &EngineUrls,
    naming: &Naming,
    services: &[&str],
    data_dir: &Path,
) -> Result<(BusChoice, Databases), EngineError> {
    let product = naming.database;
    let bus = match &args.nats_url {
        Some(url) => BusChoice::Nats {
            url: url.clone(),
            name: format!("{}{}", naming.connection, connection_name(services)),
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
            Databases::Postgres {
                urls,
                max_connections: env_var::<usize>("DATABASE_POOL_SIZE")?.unwrap_or(8),
            }
        }
        None => Databases::Sqlite(data_dir.to_owned()),
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

/// The bus `choice` names: the embedded one in `data_dir`, or JetStream.
pub async fn open_bus(choice: &BusChoice, data_dir: &Path) -> Result<Arc<dyn Bus>, bus::BusError> {
    Ok(match choice {
        BusChoice::Embedded => Arc::new(EmbeddedBus::open(&data_dir.join("bus.db")).await?),
        BusChoice::Nats { url, name } => {
            tracing::info!(%url, connection = %name, "using NATS JetStream");
            Arc::new(JetStreamBus::connect(url, name).await?)
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn each_service_gets_its_own_database_derived_from_database_url() {
        use super::database_url;
        assert_eq!(
            database_url("postgres://u@h:5432/app", "shop", "orders", true).unwrap(),
            "postgres://u@h:5432/app"
        );
        assert_eq!(
            database_url("postgres://u@h:5432/app", "shop", "orders", false).unwrap(),
            "postgres://u@h:5432/shop_orders"
        );
        assert_eq!(
            database_url("postgres://u@h/app?sslmode=disable", "notes", "auth", false).unwrap(),
            "postgres://u@h/notes_auth?sslmode=disable"
        );
        assert!(database_url("postgres://u@h", "shop", "auth", false).is_err());
    }
}
