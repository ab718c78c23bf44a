//! The deployment users start with, run for real: the image built, the
//! compose files of `deploy/` brought up as the README gives them (only the
//! third-party images swapped for local stand-ins where no registry can be
//! reached), and the product driven through the port published on
//! 127.0.0.1. The containers talk to each other on the compose network.
//!
//! Needs a Docker engine: these tests run where engines are required
//! (`TICKETING_REQUIRE_ENGINES=1`, CI: they fail without one) or where
//! `TICKETING_TEST_DOCKER=1` asks for them, and skip visibly elsewhere.
//! `TICKETING_TEST_STANDINS=1` uses deploy/standins' images (built by
//! `deploy/standins/build`); `DOCKER` names the docker CLI, which must
//! build with BuildKit (docker 20.10's own, or buildx).

#[path = "../common/mod.rs"]
mod common;
mod faults;
mod helm;
mod stack;

use std::time::Duration;

use common::Shopper;
use common::sessions::{
    accepted, account, ban_one_and_sign_out_one, statuses, until_rejected_everywhere,
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use stack::Docker;
use testkit::eventually;

pub const SERVICES: &[&str] = &[
    "auth",
    "tickets",
    "orders",
    "expiration",
    "payments",
    "web",
    "gateway",
];

/// A ticket sold and bought through `base`: sold, ordered, paid, and the
/// order complete with the ticket sold. The ticket's and the order's ids.
async fn purchase(seller: &Shopper, buyer: &Shopper, title: &str) -> (String, String) {
    let ticket = seller.sell(title, 30.0).await;
    let order = buyer.buy(&ticket).await;
    buyer
        .until_created(
            "/api/payments",
            json!({"orderId": order, "token": "tok_visa"}),
        )
        .await;
    buyer.until_complete_and_sold(&order, &ticket).await;
    (ticket, order)
}

/// Signs `email` in again (after a restart); the new session.
async fn sign_in(base: &str, email: &str) -> Shopper {
    let user = Shopper::new(base);
    let res = user
        .post(
            "/api/users/signin",
            json!({"email": email, "password": "password123"}),
        )
        .await;
    assert_eq!(res.status(), StatusCode::OK, "{email} signs in again");
    user
}

/// After a restart or a re-create: the buyer and the seller sign in again,
/// the order is still complete and the ticket sold, and a new purchase
/// goes through.
async fn kept(base: &str, ticket: &str, order: &str) {
    let buyer = sign_in(base, "buyer@example.com").await;
    assert_eq!(
        buyer.get(&format!("/api/orders/{order}")).await["status"],
        "complete"
    );
    assert_eq!(
        buyer.get(&format!("/api/tickets/{ticket}")).await["status"],
        "sold"
    );
    let seller = sign_in(base, "seller@example.com").await;
    purchase(&seller, &buyer, "Encore").await;
}

/// Waits until `base` answers ready.
async fn until_ready(base: &str) {
    let ready = eventually(Duration::from_secs(60), || async {
        let res = reqwest::get(format!("{base}/readyz")).await.ok()?;
        (res.status() == StatusCode::OK).then_some(())
    })
    .await;
    assert!(ready.is_some(), "{base} never became ready");
}

/// deploy/docker-compose.all-in-one.yaml: non-root on a read-only root, a
/// purchase, and everything kept in the volume across a re-create.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_all_in_one_container_sells_a_ticket_and_keeps_its_data_across_a_re_create() {
    let Some(docker) = Docker::available() else {
        return;
    };
    let port = common::free_port();
    let stack = docker.stack(
        "one",
        &["deploy/docker-compose.all-in-one.yaml"],
        &[("PORT", port.to_string())],
    );
    stack.up();
    stack.until_healthy(&["ticketing"], Duration::from_secs(90));
    // Non-root, on a read-only root filesystem: only the volume is written.
    assert_eq!(
        stack.inspect("ticketing", "{{.Config.User}}"),
        "65532:65532"
    );
    assert_eq!(
        stack.inspect("ticketing", "{{.HostConfig.ReadonlyRootfs}}"),
        "true"
    );

    let base = format!("http://127.0.0.1:{port}");
    let seller = Shopper::sign_up(&base, "seller@example.com").await;
    let buyer = Shopper::sign_up(&base, "buyer@example.com").await;
    let (ticket, order) = purchase(&seller, &buyer, "Festival").await;

    // A new container on the same volume: the accounts, the ticket and the
    // order are there, and the generated JWT key too (the old session holds).
    stack.compose(&["down", "--timeout", "30"]);
    stack.up();
    until_ready(&base).await;
    assert_eq!(
        buyer.get("/api/users/currentuser").await["currentUser"]["email"],
        "buyer@example.com",
        "the session from before the re-create still holds"
    );
    kept(&base, &ticket, &order).await;
    stack.until_healthy(&["ticketing"], Duration::from_secs(60));
}

/// deploy/docker-compose.yaml: every container healthy, the streams job
/// (and the chart's) before the services, a purchase, sessions ended
/// everywhere, an alert read from Prometheus, kills under load, and the
/// data kept across `down` and `up`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_microservices_stack_serves_alerts_survives_kills_and_keeps_its_data() {
    let Some(docker) = Docker::available() else {
        return;
    };
    let (port, prometheus_port) = (common::free_port(), common::free_port());
    let stack = docker.stack(
        "services",
        &["deploy/docker-compose.yaml"],
        &[
            ("GATEWAY_PORT", port.to_string()),
            ("PROMETHEUS_PORT", prometheus_port.to_string()),
        ],
    );
    stack.up();
    stack.until_healthy(SERVICES, Duration::from_secs(180));

    // The streams job succeeded, and finished before any service started.
    assert_eq!(stack.inspect("streams", "{{.State.ExitCode}}"), "0");
    let finished = instant(&stack.inspect("streams", "{{.State.FinishedAt}}"));
    for service in SERVICES {
        let started = instant(&stack.inspect(service, "{{.State.StartedAt}}"));
        assert!(
            finished <= started,
            "{service} started at {started}, before the streams job ended at {finished}"
        );
        assert_eq!(
            stack.inspect(service, "{{.HostConfig.ReadonlyRootfs}}"),
            "true"
        );
        assert_eq!(stack.inspect(service, "{{.Config.User}}"), "65532:65532");
        // Their data is in PostgreSQL and NATS: no volume for the image's
        // /data, which every `down` would leave behind.
        let mounts = stack.inspect(
            service,
            "{{range .Mounts}}{{.Type}} {{.Destination}}; {{end}}",
        );
        assert!(!mounts.contains("volume"), "{service} mounts {mounts}");
    }

    // The Helm chart's streams job, run as a container against this NATS.
    helm::chart_streams_job_runs_against(&stack, &format!("{}_default", stack.project()));

    // A purchase through the gateway.
    let gw = format!("http://127.0.0.1:{port}");
    let seller = Shopper::sign_up(&gw, "seller@example.com").await;
    let buyer = Shopper::sign_up(&gw, "buyer@example.com").await;
    let (ticket, order) = purchase(&seller, &buyer, "Festival").await;

    // An admin (granted by the operator's command in auth's container)
    // bans a user, another signs out: every service rejects both sessions.
    let admin_email = "admin@example.com";
    let (_, admin) = account(&gw, admin_email).await;
    stack.exec(
        "auth",
        &[
            "/usr/local/bin/ticketing",
            "users",
            "grant-admin",
            admin_email,
        ],
    );
    let (banned, leaver, stayer) = ban_one_and_sign_out_one(&gw, &admin).await;
    let at = |_: &str| Some(gw.clone());
    until_rejected_everywhere(&at, &banned).await;
    until_rejected_everywhere(&at, &leaver).await;
    assert!(
        accepted(&statuses(at, &stayer, false).await),
        "other sessions hold"
    );

    // Prometheus scrapes every container, with the project's rules: card
    // testing (declines past the per-order limit) fires an alert.
    let prometheus = format!("http://127.0.0.1:{prometheus_port}");
    until_scraped(&prometheus, SERVICES).await;
    card_testing_fires(&gw, &prometheus, &seller).await;

    // Purchases under load while each container is killed in turn, then
    // all restarted: nothing is lost or applied twice, and it sells again.
    faults::kills_under_load(&stack, &gw, SERVICES, 3, &admin).await;
    purchase(&seller, &buyer, "Matinee").await;

    // Down and up again: the volumes keep every account, ticket and order.
    stack.compose(&["down", "--timeout", "30"]);
    stack.up();
    stack.until_healthy(SERVICES, Duration::from_secs(180));
    kept(&gw, &ticket, &order).await;
    assert_eq!(
        sign_in_status(&gw, "banned@example.com").await,
        StatusCode::FORBIDDEN,
        "the ban is kept"
    );
}

/// The sign-in's status for `email` with the tests' password.
async fn sign_in_status(base: &str, email: &str) -> StatusCode {
    Shopper::new(base)
        .post(
            "/api/users/signin",
            json!({"email": email, "password": "password123"}),
        )
        .await
        .status()
}

/// Docker's RFC 3339 time with its fraction padded to nanoseconds, so that
/// two compare as text.
fn instant(text: &str) -> String {
    let (whole, rest) = text
        .split_once('.')
        .unwrap_or((text.trim_end_matches('Z'), "Z"));
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    format!("{whole}.{digits:0<9}Z")
}

/// `GET {prometheus}/api/v1/{path}`'s `data`.
async fn prometheus_data(prometheus: &str, path: &str) -> Option<Value> {
    let res = reqwest::get(format!("{prometheus}/api/v1/{path}"))
        .await
        .ok()?;
    let body: Value = res.json().await.ok()?;
    (body["status"] == "success").then(|| body["data"].clone())
}

/// Waits until Prometheus has scraped every service's container.
async fn until_scraped(prometheus: &str, services: &[&str]) {
    let up = eventually(Duration::from_secs(60), || async {
        let data = prometheus_data(prometheus, "query?query=up").await?;
        let healthy: Vec<&str> = data["result"]
            .as_array()?
            .iter()
            .filter(|r| r["value"][1] == "1")
            .filter_map(|r| r["metric"]["service"].as_str())
            .collect();
        services.iter().all(|s| healthy.contains(s)).then_some(())
    })
    .await;
    assert!(up.is_some(), "Prometheus never scraped every service");
}

/// Declines past the per-order limit (3) make payments refuse with 429 and
/// count it; once Prometheus has seen the count rise, `TicketingCardTesting`
/// fires, as read from its `/api/v1/alerts`.
async fn card_testing_fires(gw: &str, prometheus: &str, seller: &Shopper) {
    let tester = Shopper::sign_up(gw, "tester@example.com").await;
    let ticket = seller.sell("Card test", 10.0).await;
    let order = tester.buy(&ticket).await;
    let body = json!({"orderId": order, "token": "tok_chargeDeclined"});
    let limited = || async {
        eventually(Duration::from_secs(30), || async {
            let res = tester.post("/api/payments", body.clone()).await;
            (res.status() == StatusCode::TOO_MANY_REQUESTS).then_some(())
        })
        .await
        .expect("declines past the limit are refused with 429");
    };
    limited().await;
    // The counter's first value is only a starting point for `increase`:
    // once it is scraped, one more refusal makes it rise.
    let seen = eventually(Duration::from_secs(60), || async {
        let data =
            prometheus_data(prometheus, "query?query=payments_decline_limited_total").await?;
        (!data["result"].as_array()?.is_empty()).then_some(())
    })
    .await;
    assert!(
        seen.is_some(),
        "Prometheus never scraped the refusals' count"
    );
    limited().await;
    let firing = eventually(Duration::from_secs(90), || async {
        let data = prometheus_data(prometheus, "alerts").await?;
        data["alerts"]
            .as_array()?
            .iter()
            .any(|a| a["labels"]["alertname"] == "TicketingCardTesting" && a["state"] == "firing")
            .then_some(())
    })
    .await;
    assert!(firing.is_some(), "TicketingCardTesting never fired");
}
