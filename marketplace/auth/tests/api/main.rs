//! Black-box tests of the auth service over HTTP.

use std::time::Duration;

use marketplace_events::UserCreated;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use testkit::TestApp;

mod admins;
mod emails;
mod sessions;

async fn app() -> TestApp {
    app_with(auth::Config::default()).await
}

async fn app_with(config: auth::Config) -> TestApp {
    TestApp::spawn_for(marketplace_events::PRODUCT, |deps| async move {
        auth::start(&deps, config).await.map(|r| vec![r])
    })
    .await
}

async fn signup(app: &TestApp, email: &str, password: &str) -> reqwest::Response {
    app.send(
        Method::POST,
        "/api/users/signup",
        None,
        Some(json!({"email": email, "password": password})),
    )
    .await
}

async fn signin(app: &TestApp, email: &str, password: &str) -> reqwest::Response {
    app.send(
        Method::POST,
        "/api/users/signin",
        None,
        Some(json!({"email": email, "password": password})),
    )
    .await
}

async fn current_user(app: &TestApp) -> Value {
    app.send(Method::GET, "/api/users/currentuser", None, None)
        .await
        .json()
        .await
        .unwrap()
}

async fn errors(res: reqwest::Response) -> Vec<(Option<String>, String)> {
    let body: Value = res.json().await.unwrap();
    body["errors"]
        .as_array()
        .expect("errors array")
        .iter()
        .map(|e| {
            (
                e["field"].as_str().map(String::from),
                e["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test]
async fn signing_up_creates_the_user_sets_a_session_cookie_and_publishes_user_created() {
    let app = app().await;
    let mut created = app.watch::<UserCreated>().await;
    let res = signup(&app, "  Ann@Example.com ", "password123").await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let cookie = res.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.starts_with("session="), "{cookie}");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax") && cookie.contains("Path=/")
    );
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["email"], "ann@example.com");
    assert!(body.get("password").is_none() && body.get("passwordHash").is_none());
    let event = created.next().await;
    assert_eq!(event.email, "ann@example.com");
    assert_eq!(event.id.to_string(), body["id"].as_str().unwrap());
    assert_eq!(
        current_user(&app).await["currentUser"]["email"],
        "ann@example.com"
    );
}

#[tokio::test]
async fn signing_up_with_bad_fields_lists_each_bad_field() {
    let app = app().await;
    let res = signup(&app, "not-an-email", "short").await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let errs = errors(res).await;
    let fields: Vec<_> = errs.iter().map(|(f, _)| f.clone().unwrap()).collect();
    assert_eq!(fields, ["email", "password"]);
    let res = app
        .send(
            Method::POST,
            "/api/users/signup",
            None,
            Some(json!({"email": 5})),
        )
        .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(errors(res).await.len(), 2);
    let long = "x".repeat(129);
    assert_eq!(
        signup(&app, "a@b.co", &long).await.status(),
        StatusCode::BAD_REQUEST
    );
    // Hidden characters and what the usual address syntax does not allow.
    for email in [
        "ann@exa\u{202E}mple.com",
        "ann\u{200B}@example.com",
        "ann\u{7}@example.com",
        "ann..lee@example.com",
        "ann@example.123",
    ] {
        let res = signup(&app, email, "password123").await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{email:?}");
        assert_eq!(
            errors(res).await,
            [(Some("email".to_owned()), "Email must be valid".to_owned())],
            "{email:?}"
        );
    }
}

#[tokio::test]
async fn an_email_can_be_used_once_whatever_its_case_even_under_concurrent_sign_ups() {
    let app = app().await;
    assert_eq!(
        signup(&app, "dup@example.com", "password123")
            .await
            .status(),
        StatusCode::CREATED
    );
    let res = signup(&app, "DUP@example.com", "password123").await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    assert_eq!(errors(res).await[0].1, "Email in use");

    let body = json!({"email": "race@example.com", "password": "password123"});
    let statuses = app.race("/api/users/signup", vec![(None, body); 8]).await;
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::CREATED)
            .count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::CONFLICT)
            .count(),
        7,
        "{statuses:?}"
    );
}

#[tokio::test]
async fn signing_in_works_with_the_right_password_and_says_only_invalid_credentials_otherwise() {
    let app = app().await;
    signup(&app, "bob@example.com", "password123").await;
    app.send(Method::POST, "/api/users/signout", None, None)
        .await;
    assert_eq!(current_user(&app).await, json!({"currentUser": null}));

    let res = signin(&app, "BOB@example.com", "password123").await;
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers().contains_key("set-cookie"));
    assert_eq!(
        current_user(&app).await["currentUser"]["email"],
        "bob@example.com"
    );

    let wrong = signin(&app, "bob@example.com", "wrong-password").await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let unknown = signin(&app, "nobody@example.com", "password123").await;
    assert_eq!(unknown.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(errors(wrong).await, errors(unknown).await);

    let res = signin(&app, "", "").await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(errors(res).await.len(), 2);
}

#[tokio::test]
async fn signing_out_clears_the_cookie() {
    let app = app().await;
    signup(&app, "c@example.com", "password123").await;
    let res = app
        .send(Method::POST, "/api/users/signout", None, None)
        .await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert!(
        res.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    assert_eq!(current_user(&app).await, json!({"currentUser": null}));
}

#[tokio::test]
async fn the_current_user_comes_from_a_bearer_token_too_and_tampered_tokens_count_as_none() {
    let app = app().await;
    let (id, token) = app.user();
    let body: Value = app
        .send(Method::GET, "/api/users/currentuser", Some(&token), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["currentUser"]["id"], id.to_string());
    let tampered = format!("{token}x");
    let body: Value = app
        .send(Method::GET, "/api/users/currentuser", Some(&tampered), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body, json!({"currentUser": null}));
}

#[tokio::test]
async fn too_many_attempts_from_one_client_get_429_with_retry_after() {
    let app = app_with(auth::Config {
        attempts_per_window: 3,
        window: Duration::from_secs(60),
        trusted_proxies: None,
        ..auth::Config::default()
    })
    .await;
    for _ in 0..3 {
        assert_eq!(
            signin(&app, "x@example.com", "password123").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    let res = signin(&app, "x@example.com", "password123").await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(res.headers().contains_key("retry-after"));
    assert_eq!(
        signup(&app, "y@example.com", "password123").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

/// Behind the real gateway, with the gateway as the trusted proxy: a client
/// that writes its own `X-Forwarded-For` (a new address on every attempt)
/// is still one client, keyed on the address the gateway appended.
#[tokio::test]
async fn a_client_rotating_x_forwarded_for_through_the_gateway_is_still_limited() {
    let app = app_with(auth::Config {
        attempts_per_window: 5,
        window: Duration::from_secs(60),
        trusted_proxies: Some("127.0.0.1".parse().unwrap()),
        ..auth::Config::default()
    })
    .await;
    let auth_url = app.url("");
    let upstreams = runtime::gateway::Upstreams::new(marketplace_events::API_ROUTES, |_| {
        Ok::<_, ()>(auth_url.clone())
    })
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gateway = format!("http://{}", listener.local_addr().unwrap());
    let (stop, signal) = shared::shutdown::channel();
    let served = tokio::spawn(runtime::serve(
        listener,
        runtime::gateway::router(upstreams),
        runtime::Fallback::Own,
        signal,
    ));
    // The attacker's own address differs from the gateway's.
    let attacker = reqwest::Client::builder()
        .local_address(Some("127.0.0.2".parse().unwrap()))
        .build()
        .unwrap();
    let mut statuses = Vec::new();
    for i in 0..40 {
        let res = attacker
            .post(format!("{gateway}/api/users/signin"))
            .header("x-forwarded-for", format!("198.51.100.{i}"))
            .json(&json!({"email": "x@example.com", "password": "password123"}))
            .send()
            .await
            .unwrap();
        statuses.push(res.status());
    }
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::UNAUTHORIZED)
            .count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
            .count(),
        35,
        "{statuses:?}"
    );
    // Another client behind the same gateway has an allowance of its own.
    let neighbour = reqwest::Client::builder()
        .local_address(Some("127.0.0.3".parse().unwrap()))
        .build()
        .unwrap();
    let res = neighbour
        .post(format!("{gateway}/api/users/signin"))
        .json(&json!({"email": "x@example.com", "password": "password123"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    stop.fire();
    served.await.unwrap().unwrap();
}

#[tokio::test]
async fn invalid_and_malformed_attempts_count_against_the_limit_too() {
    let app = app_with(auth::Config {
        attempts_per_window: 2,
        window: Duration::from_secs(60),
        trusted_proxies: None,
        ..auth::Config::default()
    })
    .await;
    // Invalid fields and unreadable bodies are attempts: the limit is
    // checked before the body is read, so a flood of garbage is limited.
    assert_eq!(
        signin(&app, "not-an-email", "").await.status(),
        StatusCode::BAD_REQUEST
    );
    let garbage = || {
        app.client
            .post(app.url("/api/users/signup"))
            .header("content-type", "application/json")
            .body("{nope")
            .send()
    };
    assert_eq!(garbage().await.unwrap().status(), StatusCode::BAD_REQUEST);
    let limited = garbage().await.unwrap();
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        errors(limited).await,
        vec![(None, "Too many attempts, try again later".to_owned())]
    );
}

#[tokio::test]
async fn malformed_requests_get_the_shared_error_shape() {
    let app = app().await;
    let url = app.url("/api/users/signup");
    let bad_json = app
        .client
        .post(&url)
        .header("content-type", "application/json")
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_json.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        errors(bad_json).await[0].1,
        "Request body must be valid JSON"
    );
    let not_json = app
        .client
        .post(&url)
        .header("content-type", "text/plain")
        .body("hi")
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let huge = app
        .client
        .post(&url)
        .header("content-type", "application/json")
        .body(format!("{{\"email\":\"{}\"}}", "a".repeat(70_000)))
        .send()
        .await
        .unwrap();
    assert_eq!(huge.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(errors(huge).await.len(), 1);
    let array = app
        .send(Method::POST, "/api/users/signup", None, Some(json!([1, 2])))
        .await;
    assert_eq!(array.status(), StatusCode::BAD_REQUEST);
    let unknown = app.send(Method::GET, "/api/users/nope", None, None).await;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    assert_eq!(errors(unknown).await[0].1, "Not found");
    let method = app
        .send(Method::DELETE, "/api/users/signup", None, None)
        .await;
    assert_eq!(method.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(errors(method).await[0].1, "Method not allowed");
}

#[tokio::test]
async fn health_and_readiness_report_ok_and_metrics_are_prometheus_text() {
    let app = app().await;
    assert_eq!(
        app.send(Method::GET, "/healthz", None, None).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        app.send(Method::GET, "/readyz", None, None).await.status(),
        StatusCode::OK
    );
    let metrics = app
        .send(Method::GET, "/metrics", None, None)
        .await
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("http_responses_total"), "{metrics}");
    // Readiness is a series too, per check (what TicketingNotReady reads).
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("ready{check=") && l.ends_with(" 1")),
        "{metrics}"
    );
}

// ---- sessions: sign-out, sign-out everywhere, bans -------------------------

/// The session token a sign-up or sign-in answer set as its cookie.
fn token_of(res: &reqwest::Response) -> String {
    let cookie = res.headers()["set-cookie"].to_str().unwrap();
    cookie["session=".len()..cookie.find(';').unwrap()].to_owned()
}

/// Signs `email` up (or in, when it exists) and returns the user's id and token.
async fn session(app: &TestApp, email: &str) -> (String, String) {
    let mut res = signup(app, email, "password123").await;
    if res.status() == StatusCode::CONFLICT {
        res = signin(app, email, "password123").await;
    }
    assert!(res.status().is_success(), "{}", res.status());
    let token = token_of(&res);
    let body: Value = res.json().await.unwrap();
    (body["id"].as_str().unwrap().to_owned(), token)
}

/// Grants (`admin`) or revokes the admin role of `email` as the operator's
/// command does.
async fn set_admin(app: &TestApp, email: &str, admin: bool) -> auth::roles::RoleChange {
    let (_, outbox) = auth::roles::open_store(&app.deps.databases).await.unwrap();
    let email = shared::email::Email::parse(email).unwrap();
    auth::roles::set_admin(&outbox, &email, admin, app.deps.clock.now())
        .await
        .unwrap()
}

/// A session of `email`, signed up and then made an admin by the operator.
async fn admin_session(app: &TestApp, email: &str) -> (String, String) {
    let session = session(app, email).await;
    set_admin(app, email, true).await;
    session
}

/// Auth's current user for `token`, from a client without the cookie jar
/// (only the bearer token speaks).
async fn current_with(app: &TestApp, token: &str) -> Value {
    reqwest::Client::new()
        .get(app.url("/api/users/currentuser"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Who `token` is, to auth: the e-mail, or `None` when it is no session.
async fn who(app: &TestApp, token: &str) -> Option<String> {
    current_with(app, token).await["currentUser"]["email"]
        .as_str()
        .map(String::from)
}

async fn post_with(app: &TestApp, path: &str, token: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(app.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

const ADMIN: &str = "admin@example.com";

async fn admin_app() -> TestApp {
    app_with(auth::Config {
        parked_gauges_every: Duration::from_millis(50),
        ..auth::Config::default()
    })
    .await
}
