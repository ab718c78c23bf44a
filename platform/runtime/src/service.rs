//! What the binary hands every service to start it, and what a started
//! service hands back. Keeps the wiring uniform so any subset of services can
//! run in one process.

use std::path::PathBuf;
use std::sync::Arc;

use shared::auth::AuthKeys;
use shared::http::{NotReady, ReadyCheck};
use shared::shutdown::Shutdown;
use shared::time::Clock;
use store::{Db, Migration};

use bus::Bus;
use bus::listener::{ListenerHealth, ListenerOptions, Listeners};
use bus::outbox::Outbox;

/// What a service's handlers and listeners share: its database and outbox,
/// the session keys and the clock, and its own settings `C`. Services name
/// it as their `AppState` (`type AppState = ServiceState<Config>`); the
/// session extractors (`AuthUser`, `MaybeAuthUser`) read the keys from it.
#[derive(Clone)]
pub struct ServiceState<C> {
    pub db: Db,
    pub outbox: Outbox,
    pub keys: Arc<AuthKeys>,
    pub clock: Clock,
    pub config: C,
}

impl<C> axum::extract::FromRef<ServiceState<C>> for Arc<AuthKeys> {
    fn from_ref(s: &ServiceState<C>) -> Self {
        s.keys.clone()
    }
}

/// Where each service keeps its database.
#[derive(Clone, Debug)]
pub enum Databases {
    /// SQLite files `<dir>/<service>.db` (the all-in-one mode).
    Sqlite(PathBuf),
    /// One PostgreSQL database per service: service name → URL.
    Postgres {
        urls: std::collections::BTreeMap<String, String>,
        max_connections: usize,
    },
}

impl Databases {
    fn url<'a>(
        urls: &'a std::collections::BTreeMap<String, String>,
        service: &str,
    ) -> Result<&'a str, store::StoreError> {
        urls.get(service).map(String::as_str).ok_or_else(|| {
            store::StoreError::new(
                store::StoreErrorKind::Other,
                format!("no database URL for {service}"),
            )
        })
    }

    /// A service's database and outbox for an operator's one-shot command
    /// (a refund, granting a role): opened
    /// with its migrations applied, two connections at most. What the
    /// command writes to the outbox, the running service's relay publishes.
    pub async fn operator_store(
        &self,
        events: &'static shared::events::ServiceEvents,
        migrations: &'static [Migration],
    ) -> Result<(Db, Outbox), store::StoreError> {
        let service = events.service;
        let db = match self {
            Databases::Sqlite(dir) => {
                Db::open_sqlite(&dir.join(format!("{service}.db")), migrations).await?
            }
            Databases::Postgres { urls, .. } => {
                Db::open_postgres(Databases::url(urls, service)?, 2, migrations).await?
            }
        };
        let outbox = Outbox::new(db.clone(), service).declaring(events.publishes);
        Ok((db, outbox))
    }
}

/// Everything a service needs from its surroundings.
#[derive(Clone)]
pub struct Deps {
    pub databases: Databases,
    pub bus: Arc<dyn Bus>,
    /// The session keys, for a product with accounts (none for one
    /// without: its services take no sessions).
    pub keys: Option<Arc<AuthKeys>>,
    pub clock: Clock,
    pub shutdown: Shutdown,
}

impl Deps {
    /// Opens the service's own database and applies its migrations. On
    /// PostgreSQL it returns at once and migrates in the background, so the
    /// service starts (not ready) while the database is down.
    pub async fn open_db(
        &self,
        service: &str,
        migrations: &'static [Migration],
    ) -> Result<Db, store::StoreError> {
        match &self.databases {
            Databases::Sqlite(dir) => {
                Db::open_sqlite(&dir.join(format!("{service}.db")), migrations).await
            }
            Databases::Postgres {
                urls,
                max_connections,
            } => Db::open_postgres_in_background(
                Databases::url(urls, service)?,
                *max_connections,
                migrations,
            ),
        }
    }

    /// What every service starts with: its database, its outbox and the
    /// relay that publishes it. `events` is the service's entry in its
    /// product's event catalogue (what it publishes and consumes): its
    /// listeners must register exactly what it consumes, and its outbox
    /// refuses what it does not publish.
    pub async fn open_service(
        &self,
        events: &'static shared::events::ServiceEvents,
        migrations: &'static [Migration],
    ) -> Result<ServiceBase, store::StoreError> {
        let service = events.service;
        let db = self.open_db(service, migrations).await?;
        let pool = db.clone();
        shared::metrics::collect(format!("db {service}"), move || {
            let s = pool.stats();
            let labels = || vec![("service", service.to_owned())];
            vec![
                ("db_connections", labels(), s.connections as f64),
                ("db_transactions_in_flight", labels(), s.in_flight as f64),
            ]
        });
        let outbox = Outbox::new(db.clone(), service).declaring(events.publishes);
        // A service that publishes nothing (a read model) has no outbox
        // table and no relay.
        let tasks = if events.publishes.is_empty() {
            Vec::new()
        } else {
            vec![outbox.spawn_relay(self.bus.clone(), self.shutdown.clone())]
        };
        Ok(ServiceBase {
            name: service,
            events,
            db,
            outbox,
            bus: self.bus.clone(),
            shutdown: self.shutdown.clone(),
            listener_health: ListenerHealth::default(),
            tasks,
        })
    }
}

/// A service's database, outbox and relay, opened by [`Deps::open_service`].
pub struct ServiceBase {
    pub name: &'static str,
    /// What it publishes and consumes, from the event catalogue.
    pub events: &'static shared::events::ServiceEvents,
    pub db: Db,
    pub outbox: Outbox,
    bus: Arc<dyn Bus>,
    shutdown: Shutdown,
    listener_health: ListenerHealth,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ServiceBase {
    /// The state its handlers and listeners share, with its settings
    /// `config`. Its handlers take sessions, so the process must have
    /// session keys: without, the service does not start (a wiring error).
    pub fn state<C>(&self, deps: &Deps, config: C) -> Result<ServiceState<C>, store::StoreError> {
        let keys = deps.keys.clone().ok_or_else(|| {
            store::StoreError::new(
                store::StoreErrorKind::Other,
                format!(
                    "the {} service takes sessions, and this process has no session keys",
                    self.name
                ),
            )
        })?;
        Ok(ServiceState {
            db: self.db.clone(),
            outbox: self.outbox.clone(),
            keys,
            clock: deps.clock.clone(),
            config,
        })
    }

    /// The bus the service publishes and consumes on.
    pub fn bus(&self) -> Arc<dyn Bus> {
        self.bus.clone()
    }

    /// The service's listeners: they start once its schema is ready, and
    /// whether they have joined their consumers is part of its readiness.
    pub fn listeners(&self, options: ListenerOptions) -> Listeners {
        Listeners::new(self.bus.clone(), self.name, options, self.shutdown.clone())
            .declared(self.events.consumes)
            .gated_on(self.db.clone())
            .reporting_to(self.listener_health.clone())
            .applying_in(self.outbox.clone())
    }

    /// The started service: `router` plus the standard readiness checks and
    /// the relay along with `tasks` (listeners, schedulers).
    pub fn running(self, router: axum::Router, tasks: Vec<tokio::task::JoinHandle<()>>) -> Running {
        let mut all = self.tasks;
        all.extend(tasks);
        Running {
            name: self.name,
            router,
            ready_checks: {
                let publishes = !self.events.publishes.is_empty();
                let mut checks = standard_checks(
                    self.name,
                    self.db,
                    self.bus.clone(),
                    publishes.then_some(self.outbox),
                );
                let (bus, publishes) = (self.bus.clone(), self.events.publishes);
                checks.push((
                    format!("{} streams", self.name),
                    Arc::new(move || {
                        let bus = bus.clone();
                        Box::pin(async move {
                            bus.check_subjects(publishes)
                                .await
                                .map_err(|e| match e.kind {
                                    // "no stream holds …": the operator's to fix, said as it is.
                                    bus::BusErrorKind::StreamMissing => {
                                        NotReady::from(e.message.clone())
                                    }
                                    _ => NotReady::with_detail(
                                        "the bus cannot say which streams hold its subjects",
                                        store::report(&e),
                                    ),
                                })
                        })
                    }),
                ));
                let health = self.listener_health;
                checks.push((
                    format!("{} listeners", self.name),
                    Arc::new(move || {
                        let health = health.clone();
                        Box::pin(async move { health.check() })
                    }),
                ));
                checks
            },
            tasks: all,
        }
    }
}

/// A started service: its routes, its readiness checks and its tasks.
pub struct Running {
    pub name: &'static str,
    pub router: axum::Router,
    pub ready_checks: Vec<(String, ReadyCheck)>,
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// The checks every service with a database and an outbox has.
pub fn standard_checks(
    service: &'static str,
    db: Db,
    bus: Arc<dyn Bus>,
    outbox: Option<Outbox>,
) -> Vec<(String, ReadyCheck)> {
    let mut checks: Vec<(String, ReadyCheck)> = vec![
        (
            format!("{service} database"),
            Arc::new(move || {
                let db = db.clone();
                Box::pin(async move {
                    db.ping().await.map_err(|e| {
                        let reason = match e.kind() {
                            store::StoreErrorKind::Storage => "the database cannot write",
                            _ => "the database is unavailable",
                        };
                        NotReady::with_detail(reason, store::report(&e))
                    })
                })
            }),
        ),
        (
            format!("{service} bus"),
            Arc::new(move || {
                let bus = bus.clone();
                Box::pin(async move {
                    bus.check_ready().await.map_err(|e| {
                        NotReady::with_detail("the bus is unavailable", store::report(&e))
                    })
                })
            }),
        ),
    ];
    if let Some(outbox) = outbox {
        checks.push((
            format!("{service} outbox"),
            Arc::new(move || {
                let outbox = outbox.clone();
                Box::pin(async move { outbox.health() })
            }),
        ));
    }
    checks
}

/// Merges the routes of started services with the health routes into one
/// router (the all-in-one process, or a lone service); [`crate::serve`]
/// puts the edge around it.
pub fn compose(services: &mut [Running]) -> axum::Router {
    let mut router = axum::Router::new();
    let mut checks = Vec::new();
    for s in services.iter_mut() {
        router = router.merge(std::mem::take(&mut s.router));
        checks.append(&mut s.ready_checks);
    }
    router.merge(crate::edge::health_router(checks))
}
