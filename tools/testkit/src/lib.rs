//! Test support shared by the services' black-box tests: start a real
//! service on port 0 with its own fresh database and embedded bus, talk to it
//! over HTTP, mint session tokens, and publish events as another service
//! would.
//!
//! With `TICKETING_TEST_ON_ENGINES=1` the same tests run on the engines of
//! the microservices mode instead: each app gets a PostgreSQL schema per
//! service (`TICKETING_TEST_POSTGRES_URL`) and a nats-server of its own
//! (`TICKETING_TEST_NATS_SERVER`, default `nats-server` on the `PATH`) with
//! the services' streams, and starts once its `/readyz` says so.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bus::embedded::EmbeddedBus;
use bus::jetstream::JetStreamBus;
use bus::{Bus, ConsumerConfig, Message};
use provision::local::{Logs, NatsServer};
use runtime::service::{Databases, Deps, Running};
use shared::auth::{AuthKeys, AuthUser};
use shared::events::Event;
use shared::ids::{EventId, UserId};
use shared::shutdown::{self, ShutdownTrigger};
use shared::time::Clock;

/// The signing key every test service shares.
pub const TEST_JWT_KEY: &[u8] = b"test-jwt-key-not-a-secret";

/// A running service (or several) and a client for it.
pub struct TestApp {
    pub addr: SocketAddr,
    /// A client that keeps cookies, like a browser.
    pub client: reqwest::Client,
    pub bus: Arc<dyn Bus>,
    pub keys: Arc<AuthKeys>,
    pub deps: Deps,
    pub dir: tempfile::TempDir,
    engines: Option<Engines>,
    trigger: ShutdownTrigger,
    server: tokio::task::JoinHandle<()>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// The services' databases and bus when tests run on the engines.
pub struct Engines {
    nats: NatsServer,
    product: Product,
    schemas: Vec<store::testing::PgSchema>,
}

/// What a product's services need on the engines: their names (a
/// PostgreSQL schema each) and their streams (the contract crate's
/// `PRODUCT`).
pub use shared::events::Product;

/// A stopped app's state, to start it again (a restart).
pub struct Stopped {
    dir: tempfile::TempDir,
    engines: Option<Engines>,
    clock: Clock,
}

std::thread_local! {
    /// Whether the test on this thread asked for [`virtual_time`].
    static VIRTUAL_TIME: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs the calling test on virtual time, where the engines allow it: call
/// it first thing in a `#[tokio::test]` (a current-thread runtime). On the
/// embedded engines it pauses Tokio's clock, so sleeps, timeouts and the
/// services' timers take no real time, makes database calls hold the clock
/// still while they run (`store::testing::hold_paused_clock`), and gives
/// the apps this test starts a clock that reads Tokio's time
/// ([`Clock::tokio`]) — the services, the embedded bus and the test then
/// share one virtual clock. On PostgreSQL and JetStream (network I/O,
/// during which a paused clock would jump ahead to the next timer) time
/// stays real. Returns whether time is virtual.
pub fn virtual_time() -> bool {
    if on_engines() {
        return false;
    }
    tokio::time::pause();
    store::testing::hold_paused_clock();
    VIRTUAL_TIME.set(true);
    true
}

/// Whether tests run on PostgreSQL and JetStream (`TICKETING_TEST_ON_ENGINES=1`).
pub fn on_engines() -> bool {
    std::env::var("TICKETING_TEST_ON_ENGINES").is_ok_and(|v| v == "1" || v == "true")
}

impl Engines {
    async fn start(dir: &std::path::Path, product: Product) -> Engines {
        let mut schemas = Vec::new();
        for _ in product.services {
            schemas.push(
                store::testing::postgres_schema()
                    .await
                    .expect("TICKETING_TEST_ON_ENGINES=1 needs PostgreSQL"),
            );
        }
        let binary =
            std::env::var("TICKETING_TEST_NATS_SERVER").unwrap_or_else(|_| "nats-server".into());
        let nats = NatsServer::start(&binary, &dir.join("nats"), Logs::Inherit)
            .expect("TICKETING_TEST_ON_ENGINES=1 needs nats-server");
        let js = nats.jetstream().await.expect("nats-server up");
        provision::ensure(&js.client(), &provision::Spec::built_in(&product.streams))
            .await
            .expect("streams");
        Engines {
            nats,
            product,
            schemas,
        }
    }

    fn databases(&self) -> Databases {
        Databases::Postgres {
            urls: self
                .product
                .services
                .iter()
                .zip(&self.schemas)
                .map(|(s, schema)| ((*s).to_owned(), schema.url.clone()))
                .collect(),
            max_connections: 2,
        }
    }
}

impl Stopped {
    /// Loses `service`'s database, as a wiped disk would: its SQLite file,
    /// or every table of its PostgreSQL schema.
    pub async fn wipe(&self, service: &str) {
        match &self.engines {
            None => {
                for suffix in ["", "-wal", "-shm"] {
                    let path = self.dir.path().join(format!("{service}.db{suffix}"));
                    match std::fs::remove_file(&path) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => panic!("cannot remove {}: {e}", path.display()),
                    }
                }
            }
            Some(engines) => {
                let i = engines
                    .product
                    .services
                    .iter()
                    .position(|s| *s == service)
                    .unwrap_or_else(|| panic!("no service {service}"));
                engines.schemas[i].wipe().await.expect("wipe the schema");
            }
        }
    }
}

impl TestApp {
    /// Starts services of `product` that `start` returns, in a fresh data
    /// directory.
    pub async fn spawn_for<F, Fut, E>(product: Product, start: F) -> TestApp
    where
        F: FnOnce(Deps) -> Fut,
        Fut: Future<Output = Result<Vec<Running>, E>>,
        E: std::fmt::Debug,
    {
        let dir = tempfile::tempdir().expect("temp dir");
        let engines = if on_engines() {
            Some(Engines::start(dir.path(), product).await)
        } else {
            None
        };
        let clock = if VIRTUAL_TIME.get() {
            Clock::tokio()
        } else {
            Clock::System
        };
        Self::spawn_in(
            Stopped {
                dir,
                engines,
                clock,
            },
            start,
        )
        .await
    }

    /// Starts the services again on a stopped app's data (a restart).
    pub async fn spawn_in<F, Fut, E>(stopped: Stopped, start: F) -> TestApp
    where
        F: FnOnce(Deps) -> Fut,
        Fut: Future<Output = Result<Vec<Running>, E>>,
        E: std::fmt::Debug,
    {
        let Stopped {
            dir,
            engines,
            clock,
        } = stopped;
        let (bus, databases): (Arc<dyn Bus>, Databases) = match &engines {
            None => (
                Arc::new(
                    EmbeddedBus::open_with_clock(&dir.path().join("bus.db"), clock.clone())
                        .await
                        .expect("bus"),
                ),
                Databases::Sqlite(dir.path().to_path_buf()),
            ),
            Some(e) => (
                Arc::new(
                    JetStreamBus::connect(&e.nats.url(), "test")
                        .await
                        .expect("bus"),
                ),
                e.databases(),
            ),
        };
        let keys = AuthKeys::new(TEST_JWT_KEY, Duration::from_secs(3600), false);
        let (trigger, signal) = shutdown::channel();
        let deps = Deps {
            databases,
            bus: bus.clone(),
            keys: Some(keys.clone()),
            clock,
            shutdown: signal.clone(),
        };
        let mut running = start(deps.clone()).await.expect("service starts");
        let tasks = running
            .iter_mut()
            .flat_map(|r| std::mem::take(&mut r.tasks))
            .collect();
        let router = runtime::service::compose(&mut running);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            runtime::serve(listener, router, runtime::Fallback::Json, signal)
                .await
                .expect("serve");
        });
        let client = reqwest::Client::builder()
            .cookie_store(true)
            .build()
            .expect("client");
        if engines.is_some() {
            // PostgreSQL migrates in the background and listeners join their
            // consumers asynchronously: start when the service says it is ready.
            let ready = eventually(Duration::from_secs(30), || async {
                let r = client
                    .get(format!("http://{addr}/readyz"))
                    .send()
                    .await
                    .ok()?;
                r.status().is_success().then_some(())
            })
            .await;
            assert!(ready.is_some(), "the service never became ready");
        }
        TestApp {
            addr,
            client,
            bus,
            keys,
            deps,
            dir,
            engines,
            trigger,
            server,
            tasks,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// A session token for a new user, as auth would issue it.
    pub fn user(&self) -> (UserId, String) {
        let id = UserId::new();
        let token = self
            .keys
            .issue(
                &AuthUser {
                    id,
                    email: format!("{id}@example.com"),
                },
                Clock::System.now(),
            )
            .expect("token");
        (id, token)
    }

    /// Sends `method path` with an optional bearer token and JSON body.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> reqwest::Response {
        let mut req = self.client.request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send().await.expect("request sent")
    }

    /// Sends all `requests` (token, JSON body) to `POST path` at once and
    /// returns their statuses, in order.
    pub async fn race(
        &self,
        path: &str,
        requests: Vec<(Option<String>, serde_json::Value)>,
    ) -> Vec<reqwest::StatusCode> {
        let tasks: Vec<_> = requests
            .into_iter()
            .map(|(token, body)| {
                let mut req = self.client.post(self.url(path)).json(&body);
                if let Some(t) = token {
                    req = req.bearer_auth(t);
                }
                tokio::spawn(async move { req.send().await.expect("request sent").status() })
            })
            .collect();
        let mut statuses = Vec::with_capacity(tasks.len());
        for t in tasks {
            statuses.push(t.await.expect("request task"));
        }
        statuses
    }

    /// Publishes `event` on the bus, as its owning service would.
    pub async fn publish<E: Event>(&self, event: &E) {
        self.bus
            .publish(Message {
                subject: E::SUBJECT.to_owned(),
                id: EventId::new().to_string(),
                headers: vec![],
                payload: serde_json::to_vec(event).expect("encode"),
            })
            .await
            .expect("publish");
    }

    /// Subscribes a test consumer to `E`'s subject (replaying from the start).
    pub async fn watch<E: Event>(&self) -> EventWatch<E> {
        let sub = self
            .bus
            .subscribe(ConsumerConfig::new(
                format!("test-{}", EventId::new()),
                E::SUBJECT,
            ))
            .await
            .expect("subscribe");
        EventWatch {
            sub,
            _e: std::marker::PhantomData,
        }
    }

    /// Stops the services gracefully and waits for their tasks.
    pub async fn shutdown(self) -> Stopped {
        self.trigger.fire();
        let _ = self.server.await;
        for t in self.tasks {
            let _ = t.await;
        }
        Stopped {
            dir: self.dir,
            engines: self.engines,
            clock: self.deps.clock,
        }
    }
}

/// Events of one type as a test consumer sees them.
pub struct EventWatch<E> {
    sub: bus::Subscription,
    _e: std::marker::PhantomData<E>,
}

impl<E: Event> EventWatch<E> {
    /// The next event within five seconds, or a panic.
    pub async fn next(&mut self) -> E {
        self.next_within(Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("no {} event", E::SUBJECT))
    }

    /// The next event within `wait`, if any.
    pub async fn next_within(&mut self, wait: Duration) -> Option<E> {
        let d = bus::contract::next_within(&mut self.sub, wait).await?;
        let e = serde_json::from_slice(&d.message.payload).expect("decodes");
        d.ack().await.expect("ack");
        Some(e)
    }
}

/// Polls `check` every 20 ms until it returns `Some` or `wait` passes.
pub async fn eventually<T, F, Fut>(wait: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `GET url` with `client`; the answer's body as text. Panics when the
/// server cannot be reached (a test failure).
pub async fn get_text(client: &reqwest::Client, url: impl reqwest::IntoUrl) -> String {
    client.get(url).send().await.unwrap().text().await.unwrap()
}

/// The `id` of what `res` created; panics unless it is a 201 with one.
pub async fn created_id(res: reqwest::Response) -> String {
    assert_eq!(res.status(), reqwest::StatusCode::CREATED, "{}", res.url());
    let body: serde_json::Value = res.json().await.expect("a JSON body");
    body["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {body}"))
        .to_owned()
}

/// `GET url` with `client`; the answer's body as JSON (`null` if it is
/// not JSON). Panics when the server cannot be reached.
pub async fn get_json(client: &reqwest::Client, url: impl reqwest::IntoUrl) -> serde_json::Value {
    let body = get_text(client, url).await;
    serde_json::from_str(&body).unwrap_or(serde_json::Value::Null)
}
