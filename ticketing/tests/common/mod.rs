//! Multi-process test support: engines of the test's own (a nats-server on a
//! free port, a PostgreSQL schema per service), service processes, signed-in
//! API clients and direct reads of a service's database.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use drill::cluster::{Cluster, Logs, NatsServer};
use reqwest::StatusCode;
use serde_json::{Value, json};
use shared::auth::{AuthKeys, AuthUser};
use shared::ids::UserId;
use shared::time::Clock;
use store::testing::PgSchema;

pub mod otlp;
pub mod sessions;

pub const JWT_KEY: &str = "multi-process-test-key-0123456789";

/// A nats-server and one PostgreSQL schema per service, for one test.
pub struct Engines {
    pub nats: NatsServer,
    pub schemas: HashMap<&'static str, PgSchema>,
    _dir: tempfile::TempDir,
}

/// Starts the engines and provisions the streams, or `None` (after saying
/// why) when they are unavailable and optional.
pub async fn engines(services: &[&'static str]) -> Option<Engines> {
    let engines = engines_without_streams(services).await?;
    engines.provision_streams().await;
    Some(engines)
}

/// [`engines`] before the provisioning job has run: no streams.
pub async fn engines_without_streams(services: &[&'static str]) -> Option<Engines> {
    let mut schemas = HashMap::new();
    for s in services {
        schemas.insert(*s, store::testing::postgres_schema().await?);
    }
    let dir = tempfile::tempdir().unwrap();
    let binary =
        std::env::var("TICKETING_TEST_NATS_SERVER").unwrap_or_else(|_| "nats-server".into());
    let nats = match NatsServer::start(&binary, &dir.path().join("nats"), Logs::Inherit) {
        Ok(n) => n,
        Err(e) if store::testing::engines_required() => panic!("{e}"),
        Err(e) => {
            store::testing::skipped(&e.to_string());
            return None;
        }
    };
    Some(Engines {
        nats,
        schemas,
        _dir: dir,
    })
}

impl Engines {
    /// Runs the provisioning job: `ticketing streams apply` with the
    /// built-in spec, as the Helm hook and docker-compose do.
    pub async fn provision_streams(&self) {
        self.apply_streams(&[]).await;
    }

    /// Runs `ticketing <command…> streams apply` (`&["blog"]`: the blog's).
    pub async fn apply_streams(&self, command: &[&'static str]) {
        let url = self.nats.url();
        let command = command.to_vec();
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_ticketing"))
                .args(command)
                .args(["streams", "apply", "--nats-url", &url, "--wait", "20s"])
                .env("RUST_LOG", "warn")
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "ticketing streams apply failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Service processes on these engines; `env` is set for every one.
    pub fn cluster(&self, env: &[(&str, String)]) -> Cluster {
        let mut common = vec![
            ("NATS_URL", self.nats.url()),
            ("JWT_KEY", JWT_KEY.to_owned()),
            ("COOKIE_SECURE", "false".to_owned()),
            ("RUST_LOG", "warn".to_owned()),
            // Two connections per process: the suites stay well inside a
            // default PostgreSQL's 100 beside its other users.
            ("DATABASE_POOL_SIZE", "2".to_owned()),
        ];
        common.extend(env.iter().cloned());
        Cluster::new(
            std::path::Path::new(env!("CARGO_BIN_EXE_ticketing")),
            &common,
            Logs::Inherit,
        )
    }

    /// Starts one process of `service` on its schema.
    pub fn spawn(&self, cluster: &mut Cluster, name: &str, service: &'static str) -> usize {
        cluster
            .spawn(
                name,
                service,
                &[("DATABASE_URL", self.schemas[service].url.clone())],
            )
            .unwrap()
    }

    /// The marketplace deployed apart: each service in a process of its own
    /// (ids in `marketplace_events::SERVICES` order), the web client reaching
    /// them over HTTP as it would behind an ingress, and the gateway in front
    /// of both; `env` reaches every process. Returns once all are ready.
    pub async fn web_stack(&self, env: &[(&str, String)]) -> WebStack {
        let mut cluster = self.cluster(env);
        let services: Vec<usize> = marketplace_events::SERVICES
            .iter()
            .map(|name| self.spawn(&mut cluster, name, name))
            .collect();
        let urls: Vec<String> = services.iter().map(|id| cluster.url(*id)).collect();
        let upstreams = [
            ("AUTH_URL", urls[0].clone()),
            ("TICKETS_URL", urls[1].clone()),
            ("ORDERS_URL", urls[2].clone()),
            ("PAYMENTS_URL", urls[4].clone()),
        ];
        let web = cluster.spawn("web", "web", &upstreams).unwrap();
        cluster.all_ready(Duration::from_secs(30)).await.unwrap();
        let mut gateway_env = upstreams.to_vec();
        gateway_env.push(("WEB_URL", cluster.url(web)));
        let gateway = cluster.spawn("gateway", "gateway", &gateway_env).unwrap();
        assert!(
            cluster.ready(gateway, Duration::from_secs(30)).await,
            "gateway never became ready"
        );
        let gateway = cluster.url(gateway);
        WebStack {
            cluster,
            services,
            gateway,
        }
    }

    /// Makes `email` an admin with `ticketing users grant-admin`, on auth's
    /// database here.
    pub fn grant_admin(&self, email: &str) {
        users_command(
            &["grant-admin", email],
            &[("DATABASE_URL", self.schemas["auth"].url.clone())],
        );
    }

    /// Rows of `sql` in `service`'s database, each column as text.
    pub async fn query(&self, service: &'static str, sql: &'static str) -> Vec<Vec<String>> {
        let db = store::Db::postgres_lazy(&self.schemas[service].url, 1).unwrap();
        db.read(move |c| {
            Ok::<_, store::StoreError>(
                c.query(sql, &[])?
                    .iter()
                    .map(|r| {
                        r.values()
                            .iter()
                            .map(|v| match v {
                                store::Value::Null => "null".to_owned(),
                                store::Value::Int(n) => n.to_string(),
                                store::Value::Text(t) => t.clone(),
                            })
                            .collect()
                    })
                    .collect::<Vec<Vec<String>>>(),
            )
        })
        .await
        .unwrap()
    }
}

/// What [`Engines::web_stack`] started.
pub struct WebStack {
    pub cluster: Cluster,
    /// The services' processes, in `marketplace_events::SERVICES` order.
    pub services: Vec<usize>,
    /// The gateway's base URL.
    pub gateway: String,
}

/// A signed-in client (a session minted with the processes' JWT key).
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    token: String,
}

impl Api {
    pub fn new(email: &str) -> Api {
        let keys = AuthKeys::new(JWT_KEY.as_bytes(), Duration::from_secs(3600), false);
        let user = AuthUser {
            id: UserId::new(),
            email: email.to_owned(),
        };
        Api {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            token: keys.issue(&user, Clock::System.now()).unwrap(),
        }
    }

    /// Sends a request; a connection error (a killed process) is `None`.
    pub async fn send(
        &self,
        method: &str,
        url: &str,
        body: Option<Value>,
    ) -> Option<(StatusCode, Value)> {
        let mut req = self
            .http
            .request(method.parse().unwrap(), url)
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.ok()?;
        let status = res.status();
        let v = res.json().await.unwrap_or(Value::Null);
        Some((status, v))
    }

    /// Retries until the answer has `status` (or panics after 30 s).
    pub async fn until(
        &self,
        method: &str,
        urls: &[String],
        path: &str,
        body: Option<Value>,
        status: StatusCode,
    ) -> Value {
        let mut i = 0;
        let found = testkit::eventually(Duration::from_secs(30), || {
            i += 1;
            let url = format!("{}{path}", urls[i % urls.len()]);
            let body = body.clone();
            async move {
                match self.send(method, &url, body).await {
                    Some((s, v)) if s == status => Some(v),
                    _ => None,
                }
            }
        })
        .await;
        found.unwrap_or_else(|| panic!("{method} {path} never answered {status}"))
    }
}

/// A user with a browser-like cookie jar, against one base URL (a process,
/// or the gateway in front of several).
#[derive(Clone)]
pub struct Shopper {
    pub client: reqwest::Client,
    base: String,
}

impl Shopper {
    /// A new account, signed up and in.
    pub async fn sign_up(base: &str, email: &str) -> Shopper {
        let user = Shopper::new(base);
        let res = user
            .post(
                "/api/users/signup",
                json!({"email": email, "password": "password123"}),
            )
            .await;
        assert_eq!(res.status(), StatusCode::CREATED);
        user
    }

    /// The base URL it talks to.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// A visitor without a session.
    pub fn new(base: &str) -> Shopper {
        Shopper {
            client: reqwest::Client::builder()
                .cookie_store(true)
                .build()
                .unwrap(),
            base: base.to_owned(),
        }
    }

    pub async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn put(&self, path: &str, body: Value) -> reqwest::Response {
        self.client
            .put(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn get(&self, path: &str) -> Value {
        testkit::get_json(&self.client, format!("{}{path}", self.base)).await
    }

    /// The page at `path`, as HTML.
    pub async fn page(&self, path: &str) -> String {
        testkit::get_text(&self.client, format!("{}{path}", self.base)).await
    }

    /// Lists a ticket; its id.
    pub async fn sell(&self, title: &str, price: f64) -> String {
        let res = self
            .post("/api/tickets", json!({"title": title, "price": price}))
            .await;
        testkit::created_id(res).await
    }

    /// Orders a ticket, waiting for orders to learn about it first; the
    /// order's id.
    pub async fn buy(&self, ticket: &str) -> String {
        self.until_created("/api/orders", json!({"ticketId": ticket}))
            .await
    }

    /// Posts `body` to `path` until it is answered 201 (the service may not
    /// know yet what the body names); the created resource's id.
    pub async fn until_created(&self, path: &str, body: Value) -> String {
        testkit::eventually(Duration::from_secs(15), || async {
            let res = self.post(path, body.clone()).await;
            if res.status() == StatusCode::CREATED {
                Some(
                    res.json::<Value>().await.unwrap()["id"]
                        .as_str()
                        .unwrap()
                        .to_owned(),
                )
            } else {
                None
            }
        })
        .await
        .unwrap_or_else(|| panic!("POST {path} never answered 201"))
    }

    /// The `status` of `path` once it is one of `statuses`.
    pub async fn until_in(&self, path: &str, statuses: &[&str]) -> String {
        testkit::eventually(Duration::from_secs(15), || async {
            let v = self.get(path).await;
            let s = v["status"].as_str().unwrap_or_default().to_owned();
            statuses.contains(&s.as_str()).then_some(s)
        })
        .await
        .unwrap_or_else(|| panic!("{path} never reached one of {statuses:?}"))
    }

    /// Waits until `order` is complete and `ticket` sold.
    pub async fn until_complete_and_sold(&self, order: &str, ticket: &str) {
        self.until(&format!("/api/orders/{order}"), "status", json!("complete"))
            .await;
        self.until(&format!("/api/tickets/{ticket}"), "status", json!("sold"))
            .await;
    }

    /// `path` once its `field` has `value`.
    pub async fn until(&self, path: &str, field: &str, value: Value) -> Value {
        testkit::eventually(Duration::from_secs(15), || async {
            let v = self.get(path).await;
            (v[field] == value).then_some(v)
        })
        .await
        .unwrap_or_else(|| panic!("{path} never had {field} = {value}"))
    }
}

/// A page's form token (the `_csrf` field of its forms).
pub fn form_token(html: &str) -> String {
    let at = html.find(r#"name="_csrf" value=""#).expect("a form token") + 20;
    html[at..at + html[at..].find('"').unwrap()].to_owned()
}

/// Runs `ticketing users <args…>` with `env`; panics unless it succeeds.
pub fn users_command(args: &[&str], env: &[(&str, String)]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ticketing"))
        .arg("users")
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("NATS_URL")
        .env_remove("DATABASE_URL")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ticketing users {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Makes `email` an admin with `ticketing users grant-admin`, on the
/// all-in-one data directory `data_dir`.
pub fn grant_admin(data_dir: &Path, email: &str) {
    users_command(
        &["grant-admin", email],
        &[("TICKETING_DATA_DIR", data_dir.display().to_string())],
    );
}

/// A running `ticketing` process.
pub struct Proc {
    pub child: Child,
    pub base: String,
    pub port: u16,
}

/// The environment a marketplace process runs in under test: cookies
/// over plain HTTP, quiet logs, and none of the caller's keys, Stripe
/// account or trace collector.
pub fn test_environment(command: &mut Command) -> &mut Command {
    command
        .env("COOKIE_SECURE", "false")
        .env("RUST_LOG", "warn")
        .env_remove("JWT_KEY")
        .env_remove("STRIPE_SECRET_KEY")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env_remove("OTEL_SERVICE_NAME")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Proc {
    pub async fn start(data_dir: &Path, expiration_secs: u64) -> Proc {
        Proc::start_on(free_port(), data_dir, expiration_secs).await
    }

    /// Starts on a given port (a restart keeps the address users know).
    pub async fn start_on(port: u16, data_dir: &Path, expiration_secs: u64) -> Proc {
        Proc::start_with(port, data_dir, expiration_secs, &[]).await
    }

    /// Starts with `env` added to the process's environment.
    pub async fn start_with(
        port: u16,
        data_dir: &Path,
        expiration_secs: u64,
        env: &[(&str, String)],
    ) -> Proc {
        Proc::launch(port, data_dir, expiration_secs, env, None).await
    }

    /// Starts with `env` added, and with at most `open_files` file
    /// descriptors (soft and hard limit, set by `prlimit`) when given.
    pub async fn launch(
        port: u16,
        data_dir: &Path,
        expiration_secs: u64,
        env: &[(&str, String)],
        open_files: Option<u64>,
    ) -> Proc {
        let binary = env!("CARGO_BIN_EXE_ticketing");
        let mut command = match open_files {
            None => Command::new(binary),
            Some(n) => {
                // prlimit execs the binary: the child's pid is the server's.
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg("--").arg(binary);
                c
            }
        };
        let child = command
            .args(["run", "--port", &port.to_string(), "--data-dir"])
            .arg(data_dir)
            .env("ORDER_EXPIRATION_SECONDS", expiration_secs.to_string());
        let child = test_environment(child)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("binary starts");
        let base = format!("http://127.0.0.1:{port}");
        let probe = reqwest::Client::new();
        testkit::eventually(Duration::from_secs(20), || async {
            let ok = probe
                .get(format!("{base}/readyz"))
                .send()
                .await
                .map(|r| r.status() == StatusCode::OK)
                .unwrap_or(false);
            ok.then_some(())
        })
        .await
        .expect("process becomes ready");
        Proc { child, base, port }
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(mut self) {
        self.terminate();
        let exit = self.child.wait().unwrap();
        assert!(exit.success(), "graceful shutdown exited with {exit}");
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// SIGKILL: no chance to flush anything.
    pub fn crash(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
