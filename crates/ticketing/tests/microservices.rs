//! The microservices mode as processes: five services, each its own
//! `ticketing` process with its own PostgreSQL schema, on a nats-server of the
//! test's own, behind the stand-alone gateway. The same purchase flow as the
//! all-in-one test, through the gateway.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use testkit::eventually;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Child processes killed when the test ends, however it ends.
struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn(args: &[&str], envs: &[(&str, String)]) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ticketing"));
    cmd.arg("run")
        .args(args)
        .env("RUST_LOG", "warn")
        .env("JWT_KEY", "microservices-test-key-0123456789")
        .env("COOKIE_SECURE", "false");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    for var in ["NATS_URL", "DATABASE_URL", "STRIPE_SECRET_KEY"] {
        if !envs.iter().any(|(k, _)| *k == var) {
            cmd.env_remove(var);
        }
    }
    cmd.stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("ticketing starts")
}

async fn ready(base: &str) -> bool {
    let client = reqwest::Client::new();
    eventually(Duration::from_secs(30), || async {
        client
            .get(format!("{base}/readyz"))
            .send()
            .await
            .ok()
            .filter(|r| r.status() == StatusCode::OK)
            .map(|_| ())
    })
    .await
    .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_purchase_flow_works_with_one_process_per_service_on_nats_and_postgres() {
    // Engines: PostgreSQL (a schema per service) and a nats-server of our own.
    let mut schemas = Vec::new();
    for _ in 0..5 {
        let Some(s) = store::testing::postgres_schema().await else {
            return;
        };
        schemas.push(s);
    }
    let nats_port = free_port();
    let nats_store = tempfile::tempdir().unwrap();
    let binary =
        std::env::var("TICKETING_TEST_NATS_SERVER").unwrap_or_else(|_| "nats-server".into());
    let nats = Command::new(&binary)
        .args([
            "-a",
            "127.0.0.1",
            "-p",
            &nats_port.to_string(),
            "-js",
            "-sd",
        ])
        .arg(nats_store.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let nats = match nats {
        Ok(c) => c,
        Err(e) if store::testing::engines_required() => panic!("cannot start {binary}: {e}"),
        Err(e) => return store::testing::skipped(&format!("cannot start {binary} ({e})")),
    };
    let mut procs = Procs(vec![nats]);
    let nats_url = format!("nats://127.0.0.1:{nats_port}");
    let client = eventually(Duration::from_secs(10), || async {
        async_nats::connect(&nats_url).await.ok()
    })
    .await
    .expect("nats up");
    bus::jetstream::ensure_service_streams(&async_nats::jetstream::new(client))
        .await
        .unwrap();

    // Five services, one process each, then the gateway.
    let names = ["auth", "tickets", "orders", "expiration", "payments"];
    let mut urls = Vec::new();
    for (name, schema) in names.iter().zip(&schemas) {
        let port = free_port();
        procs.0.push(spawn(
            &["--services", name, "--port", &port.to_string()],
            &[
                ("NATS_URL", nats_url.clone()),
                ("DATABASE_URL", schema.url.clone()),
                ("ORDER_EXPIRATION_SECONDS", "3".into()),
            ],
        ));
        urls.push(format!("http://127.0.0.1:{port}"));
    }
    for u in &urls {
        assert!(ready(u).await, "{u} never became ready");
    }
    let gw_port = free_port();
    procs.0.push(spawn(
        &["--services", "gateway", "--port", &gw_port.to_string()],
        &[
            ("AUTH_URL", urls[0].clone()),
            ("TICKETS_URL", urls[1].clone()),
            ("ORDERS_URL", urls[2].clone()),
            ("PAYMENTS_URL", urls[4].clone()),
        ],
    ));
    let gw = format!("http://127.0.0.1:{gw_port}");
    assert!(ready(&gw).await, "gateway never became ready");

    // The flow, through the gateway.
    let user = || {
        reqwest::Client::builder()
            .cookie_store(true)
            .build()
            .unwrap()
    };
    let (seller, buyer) = (user(), user());
    for (c, email) in [
        (&seller, "seller@example.com"),
        (&buyer, "buyer@example.com"),
    ] {
        let res = c
            .post(format!("{gw}/api/users/signup"))
            .json(&json!({"email": email, "password": "password123"}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::CREATED);
    }
    let sell = |title: &'static str| {
        let (seller, gw) = (seller.clone(), gw.clone());
        async move {
            let res = seller
                .post(format!("{gw}/api/tickets"))
                .json(&json!({"title": title, "price": 30}))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::CREATED);
            res.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let buy = |ticket: String| {
        let (buyer, gw) = (buyer.clone(), gw.clone());
        async move {
            eventually(Duration::from_secs(15), || async {
                let res = buyer
                    .post(format!("{gw}/api/orders"))
                    .json(&json!({"ticketId": ticket}))
                    .send()
                    .await
                    .unwrap();
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
            .expect("order placed")
        }
    };
    let until = |path: String, field: &'static str, value: Value| {
        let (buyer, gw) = (buyer.clone(), gw.clone());
        async move {
            eventually(Duration::from_secs(15), || async {
                let v: Value = buyer
                    .get(format!("{gw}{path}"))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                (v[field] == value).then_some(v)
            })
            .await
            .unwrap_or_else(|| panic!("{path} never had {field} = {value}"))
        }
    };

    let ticket = sell("Festival").await;
    let order = buy(ticket.clone()).await;
    until(
        format!("/api/tickets/{ticket}"),
        "status",
        json!("reserved"),
    )
    .await;
    let paid = eventually(Duration::from_secs(15), || async {
        let res = buyer
            .post(format!("{gw}/api/payments"))
            .json(&json!({"orderId": order, "token": "tok_visa"}))
            .send()
            .await
            .unwrap();
        (res.status() == StatusCode::CREATED).then_some(())
    })
    .await;
    assert!(
        paid.is_some(),
        "payment accepted once payments knew the order"
    );
    until(format!("/api/orders/{order}"), "status", json!("complete")).await;
    until(format!("/api/tickets/{ticket}"), "status", json!("sold")).await;

    let other = sell("Matinee").await;
    let unpaid = buy(other.clone()).await;
    until(
        format!("/api/orders/{unpaid}"),
        "status",
        json!("cancelled"),
    )
    .await;
    until(
        format!("/api/tickets/{other}"),
        "status",
        json!("available"),
    )
    .await;
    drop(procs);
}
