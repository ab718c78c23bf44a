//! Black-box tests of the auth service over HTTP.

use std::time::Duration;

use marketplace_events::UserCreated;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use testkit::TestApp;

async fn app() -> TestApp {
    app_with(auth::Config::default()).await
}

async fn app_with(config: auth::Config) -> TestApp {
    TestApp::spawn(|deps| async move { auth::start(&deps, config).await.map(|r| vec![r]) }).await
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

#[tokio::test]
async fn signing_out_ends_that_session_only_and_says_so_by_event() {
    let app = app().await;
    let mut signed_out = app.watch::<marketplace_events::UserSignedOut>().await;
    let (id, first) = session(&app, "ann@example.com").await;
    let (_, second) = session(&app, "ann@example.com").await;
    assert_eq!(who(&app, &first).await.as_deref(), Some("ann@example.com"));
    let res = post_with(&app, "/api/users/signout", &first).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert!(
        res.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    assert_eq!(
        who(&app, &first).await,
        None,
        "the signed-out token is dead"
    );
    assert_eq!(who(&app, &second).await.as_deref(), Some("ann@example.com"));
    let event = signed_out.next().await;
    assert_eq!(event.user_id.to_string(), id);
    assert!(event.session_id.is_some() && event.before.is_none());
    // Signing out without a session only clears the cookie.
    let res = reqwest::Client::new()
        .post(app.url("/api/users/signout"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert!(
        signed_out
            .next_within(Duration::from_millis(300))
            .await
            .is_none()
    );
}

#[tokio::test]
async fn signing_out_everywhere_ends_every_session_of_the_caller_and_no_one_elses() {
    let app = app().await;
    let mut signed_out = app.watch::<marketplace_events::UserSignedOut>().await;
    let (_, first) = session(&app, "ann@example.com").await;
    let (_, second) = session(&app, "ann@example.com").await;
    let (_, bobs) = session(&app, "bob@example.com").await;
    let res = post_with(&app, "/api/users/signout-all", &first).await;
    assert_eq!(res.status(), StatusCode::NO_CONTENT);
    assert_eq!(who(&app, &first).await, None);
    assert_eq!(who(&app, &second).await, None);
    assert_eq!(who(&app, &bobs).await.as_deref(), Some("bob@example.com"));
    let event = signed_out.next().await;
    assert!(event.before.is_some() && event.session_id.is_none());
    // Signing in again at once begins a session the cut-off does not cover.
    let (_, again) = session(&app, "ann@example.com").await;
    assert_eq!(who(&app, &again).await.as_deref(), Some("ann@example.com"));
    // Without a session there is nothing to end.
    let res = reqwest::Client::new()
        .post(app.url("/api/users/signout-all"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn only_admins_ban_and_never_themselves_another_admin_or_someone_unknown() {
    let app = app().await;
    let (admin_id, admin) = admin_session(&app, ADMIN).await;
    let (second_id, _) = admin_session(&app, "second@example.com").await;
    let (ann_id, ann) = session(&app, "ann@example.com").await;
    let ban = |token: &str, id: &str| {
        let (url, token) = (app.url(&format!("/api/users/{id}/ban")), token.to_owned());
        async move {
            reqwest::Client::new()
                .post(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(ban(&ann, &admin_id).await.status(), StatusCode::FORBIDDEN);
    let anonymous = reqwest::Client::new()
        .post(app.url(&format!("/api/users/{ann_id}/ban")))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        ban(&admin, &shared::ids::UserId::new().to_string())
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        ban(&admin, "not-an-id").await.status(),
        StatusCode::NOT_FOUND
    );
    let own = ban(&admin, &admin_id).await;
    assert_eq!(own.status(), StatusCode::CONFLICT);
    assert_eq!(errors(own).await[0].1, "You cannot ban yourself");
    let other = ban(&admin, &second_id).await;
    assert_eq!(other.status(), StatusCode::CONFLICT);
    assert_eq!(errors(other).await[0].1, "An admin cannot be banned");
    let list = reqwest::Client::new()
        .get(app.url("/api/users"))
        .bearer_auth(&ann)
        .send()
        .await
        .unwrap();
    assert_eq!(list.status(), StatusCode::FORBIDDEN);
    // The admin flag is in the user's own view.
    assert_eq!(
        current_with(&app, &admin).await["currentUser"]["admin"],
        true
    );
}

#[tokio::test]
async fn a_ban_ends_the_users_sessions_and_sign_ins_until_lifted_and_old_sessions_stay_dead() {
    let app = admin_app().await;
    let mut banned = app.watch::<marketplace_events::UserBanned>().await;
    let mut unbanned = app.watch::<marketplace_events::UserUnbanned>().await;
    let (_, admin) = admin_session(&app, ADMIN).await;
    let (ann_id, ann) = session(&app, "ann@example.com").await;
    let (_, bob) = session(&app, "bob@example.com").await;

    let res = post_with(&app, &format!("/api/users/{ann_id}/ban"), &admin).await;
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        (body["banned"].as_bool(), body["version"].as_i64()),
        (Some(true), Some(1))
    );
    let event = banned.next().await;
    assert_eq!((event.id.to_string(), event.version), (ann_id.clone(), 1));
    assert_eq!(
        who(&app, &ann).await,
        None,
        "currentuser is null for a banned user"
    );
    assert_eq!(who(&app, &bob).await.as_deref(), Some("bob@example.com"));
    let refused = signin(&app, "ann@example.com", "password123").await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        errors(refused).await[0].1,
        "This account is banned; it cannot sign in"
    );
    // A wrong password learns nothing of the ban.
    assert_eq!(
        signin(&app, "ann@example.com", "wrong-password")
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    // Banning again changes nothing and publishes nothing.
    let again: Value = post_with(&app, &format!("/api/users/{ann_id}/ban"), &admin)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again["version"], 1);
    assert!(
        banned
            .next_within(Duration::from_millis(300))
            .await
            .is_none()
    );

    let lifted = reqwest::Client::new()
        .delete(app.url(&format!("/api/users/{ann_id}/ban")))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(lifted.status(), StatusCode::OK);
    let body: Value = lifted.json().await.unwrap();
    assert_eq!(
        (body["banned"].as_bool(), body["version"].as_i64()),
        (Some(false), Some(2))
    );
    assert_eq!(unbanned.next().await.version, 2);
    let (_, fresh) = session(&app, "ann@example.com").await;
    assert_eq!(who(&app, &fresh).await.as_deref(), Some("ann@example.com"));
    assert_eq!(
        who(&app, &ann).await,
        None,
        "a token from before the ban stays dead"
    );
}

#[tokio::test]
async fn admins_list_users_newest_first_a_page_at_a_time_and_search_by_email() {
    let app = admin_app().await;
    let (_, admin) = admin_session(&app, ADMIN).await;
    for name in ["ann", "anna", "bob", "a_b"] {
        session(&app, &format!("{name}@example.com")).await;
    }
    let list = |query: &str| {
        let (url, admin) = (app.url(&format!("/api/users{query}")), admin.clone());
        async move {
            let res = reqwest::Client::new()
                .get(url)
                .bearer_auth(admin)
                .send()
                .await
                .unwrap();
            (res.status(), res.json::<Value>().await.unwrap())
        }
    };
    let emails = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|u| u["email"].as_str().unwrap().to_owned())
            .collect()
    };
    let (status, all) = list("").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        emails(&all),
        [
            "a_b@example.com",
            "bob@example.com",
            "anna@example.com",
            "ann@example.com",
            ADMIN
        ]
    );
    assert_eq!(all[4]["admin"], true);
    assert_eq!(all[0]["banned"], false);
    let (_, page) = list("?limit=2").await;
    assert_eq!(emails(&page), ["a_b@example.com", "bob@example.com"]);
    let after = page[1]["id"].as_str().unwrap();
    let (_, next) = list(&format!("?limit=2&after={after}")).await;
    assert_eq!(emails(&next), ["anna@example.com", "ann@example.com"]);
    let (_, found) = list("?email=ANN").await;
    assert_eq!(emails(&found), ["anna@example.com", "ann@example.com"]);
    // Wildcards in the search are literal characters.
    let (_, literal) = list("?email=a_b").await;
    assert_eq!(emails(&literal), ["a_b@example.com"]);
    let (status, _) = list("?limit=0").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

/// Another process's deny list learns of ends of sessions from the events
/// alone, and one started after them rebuilds it before it reports ready.
#[tokio::test]
async fn another_process_rejects_ended_sessions_from_the_events_even_one_started_later() {
    let app = admin_app().await;
    let (_, admin) = admin_session(&app, ADMIN).await;
    let (ann_id, ann) = session(&app, "ann@example.com").await;
    let (_, bob) = session(&app, "bob@example.com").await;
    let (_, carl) = session(&app, "carl@example.com").await;
    let elsewhere = |bus| {
        let keys =
            shared::auth::AuthKeys::new(testkit::TEST_JWT_KEY, Duration::from_secs(3600), false);
        let follower = auth::sessions::follow(
            bus,
            keys.clone(),
            shared::time::Clock::System,
            None,
            shared::shutdown::Shutdown::never(),
        );
        (keys, follower)
    };
    let (running, follower) = elsewhere(app.deps.bus.clone());
    let ready = testkit::eventually(Duration::from_secs(10), || {
        let check = follower.ready.clone();
        async move { check().await.ok() }
    })
    .await;
    assert!(ready.is_some(), "the deny list caught up");
    assert!(running.verify(&ann).is_some());

    assert!(
        post_with(&app, &format!("/api/users/{ann_id}/ban"), &admin)
            .await
            .status()
            .is_success()
    );
    assert_eq!(
        post_with(&app, "/api/users/signout", &bob).await.status(),
        StatusCode::NO_CONTENT
    );
    let carls_again = session(&app, "carl@example.com").await.1;
    assert_eq!(
        post_with(&app, "/api/users/signout-all", &carl)
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    let rejected = testkit::eventually(Duration::from_secs(10), || {
        let running = running.clone();
        let (ann, bob, carl, again) = (ann.clone(), bob.clone(), carl.clone(), carls_again.clone());
        async move {
            (running.verify(&ann).is_none()
                && running.verify(&bob).is_none()
                && running.verify(&carl).is_none()
                && running.verify(&again).is_none())
            .then_some(())
        }
    })
    .await;
    assert!(
        rejected.is_some(),
        "every ended session is rejected elsewhere"
    );
    assert!(
        running.verify(&admin).is_some(),
        "others' sessions still verify"
    );

    // A process started after all of it: not ready until rebuilt, then
    // rejecting from its first check.
    let (late, follower) = elsewhere(app.deps.bus.clone());
    let ready = testkit::eventually(Duration::from_secs(10), || {
        let check = follower.ready.clone();
        async move { check().await.ok() }
    })
    .await;
    assert!(ready.is_some());
    for token in [&ann, &bob, &carl, &carls_again] {
        assert!(late.verify(token).is_none());
    }
    assert!(late.verify(&admin).is_some());
}

/// An admin's request to `path` (`body`: a JSON body).
async fn admin_call(
    app: &TestApp,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .request(method, app.url(path))
        .bearer_auth(token);
    if let Some(body) = body {
        req = req.json(&body);
    }
    req.send().await.unwrap()
}

/// The operator's API over parked messages (served by auth for the
/// marketplace): admins only; lists with filters, shows a message whole,
/// replays it to the durable that parked it — once — and discards it with
/// a reason.
#[tokio::test]
async fn admins_find_show_replay_and_discard_parked_messages() {
    let app = admin_app().await;
    let (_, admin) = admin_session(&app, ADMIN).await;
    let (_, ann) = session(&app, "ann@example.com").await;
    let res = reqwest::Client::new()
        .get(app.url("/api/admin/parked"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = admin_call(&app, Method::GET, "/api/admin/parked", &ann, None).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);

    // A consumer of the test's own gives up on two messages.
    let durable = "opstest-user-created";
    let mut sub = app
        .bus
        .subscribe(bus::ConsumerConfig::new(durable, "user.created"))
        .await
        .unwrap();
    for id in ["ops-1", "ops-2"] {
        app.bus
            .publish(bus::Message {
                subject: "user.created".into(),
                id: id.into(),
                headers: vec![(
                    "traceparent".into(),
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
                )],
                payload: br#"{"bad":1}"#.to_vec(),
            })
            .await
            .unwrap();
    }
    let mut termed = 0;
    while termed < 2 {
        let d = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("a delivery")
            .unwrap()
            .unwrap();
        if d.message.id.starts_with("ops-") {
            d.term("handler bug").await.unwrap();
            termed += 1;
        } else {
            d.ack().await.unwrap();
        }
    }
    let list = |query: &'static str| {
        let (app, admin) = (&app, &admin);
        async move {
            let res = admin_call(
                app,
                Method::GET,
                &format!("/api/admin/parked?consumer={durable}{query}"),
                admin,
                None,
            )
            .await;
            assert_eq!(res.status(), StatusCode::OK);
            res.json::<Vec<Value>>().await.unwrap()
        }
    };
    // The gauges the alerts read see them (`bus_parked_waiting`).
    let waiting = |n: u64| {
        let app = &app;
        async move {
            testkit::eventually(Duration::from_secs(10), || async {
                let text = testkit::get_text(&app.client, app.url("/metrics")).await;
                let line = format!("bus_parked_waiting{{consumer=\"{durable}\"}} {n}");
                text.lines().any(|l| l == line).then_some(())
            })
            .await
            .unwrap_or_else(|| panic!("bus_parked_waiting never reached {n}"));
        }
    };
    waiting(2).await;
    let parked = list("").await;
    assert_eq!(parked.len(), 2, "{parked:?}");
    assert_eq!(parked[0]["messageId"], "ops-1");
    assert_eq!(parked[0]["state"], "parked");
    assert_eq!(parked[0]["reason"], "terminated: handler bug");
    assert!(
        parked[0].get("payload").is_none(),
        "the list leaves payloads out"
    );
    let (first, second) = (
        parked[0]["id"].as_u64().unwrap(),
        parked[1]["id"].as_u64().unwrap(),
    );

    let shown: Value = admin_call(
        &app,
        Method::GET,
        &format!("/api/admin/parked/{first}"),
        &admin,
        None,
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(shown["payload"], json!({"bad": 1}));
    assert_eq!(shown["traceId"], "0af7651916cd43dd8448eb211c80319c");
    assert_eq!(shown["subject"], "user.created");
    assert_eq!(shown["consumer"], durable);
    for missing in ["/api/admin/parked/987654321", "/api/admin/parked/abc"] {
        let res = admin_call(&app, Method::GET, missing, &admin, None).await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "{missing}");
    }

    // Replayed to this durable, once.
    let path = format!("/api/admin/parked/{first}/replay");
    let res = admin_call(&app, Method::POST, &path, &ann, None).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let res = admin_call(&app, Method::POST, &path, &admin, None).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.json::<Value>().await.unwrap()["state"], "replayed");
    let d = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("the replay")
        .unwrap()
        .unwrap();
    assert_eq!(d.message.id, "ops-1");
    d.ack().await.unwrap();
    let res = admin_call(&app, Method::POST, &path, &admin, None).await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    assert_eq!(
        errors(res).await[0].1,
        format!("Parked message {first} was replayed already")
    );

    // Discarded with a reason, which is required.
    let path = format!("/api/admin/parked/{second}/discard");
    let res = admin_call(&app, Method::POST, &path, &admin, Some(json!({}))).await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let res = admin_call(
        &app,
        Method::POST,
        &path,
        &admin,
        Some(json!({"reason": "refunded by hand"})),
    )
    .await;
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["state"], "discarded");
    assert!(
        body["discardReason"]
            .as_str()
            .unwrap()
            .starts_with("refunded by hand")
    );

    // Nothing waits now; the history is there.
    assert!(list("").await.is_empty());
    waiting(0).await;
    assert_eq!(list("&state=all").await.len(), 2);
    assert_eq!(list("&state=discarded").await.len(), 1);
    assert!(
        list("&state=all&since=2999-01-01T00:00:00Z")
            .await
            .is_empty()
    );
    for bad in [
        format!("consumer={durable}&state=bogus"),
        format!("consumer={durable}&since=yesterday"),
        "consumer=a.%3E".to_owned(),
    ] {
        let res = admin_call(
            &app,
            Method::GET,
            &format!("/api/admin/parked?{bad}"),
            &admin,
            None,
        )
        .await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    for bad in [
        json!({}),
        json!({"consumer": "a b"}),
        json!({"ids": [1], "all": true}),
    ] {
        let res = admin_call(
            &app,
            Method::POST,
            "/api/admin/parked/replay",
            &admin,
            Some(bad.clone()),
        )
        .await;
        assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
    let res = admin_call(
        &app,
        Method::POST,
        "/api/admin/parked/0/replay",
        &admin,
        None,
    )
    .await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let res = admin_call(
        &app,
        Method::POST,
        "/api/admin/parked/replay",
        &admin,
        Some(json!({"ids": [first, second, 987654321u64]})),
    )
    .await;
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({"replayed": [], "skipped": [first, second, 987654321u64]})
    );
}

/// A sign-in reads the ban, checks the password (slow on purpose), then
/// begins its session: a ban that lands between must either refuse it or
/// end its session — and the session stays ended after the unban.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_ins_racing_a_ban_are_refused_or_ended_by_it_and_stay_ended_after_the_unban() {
    let app = app_with(auth::Config {
        attempts_per_window: 1_000,
        ..auth::Config::default()
    })
    .await;
    let (_, admin) = admin_session(&app, ADMIN).await;
    let (ann_id, _) = session(&app, "ann@example.com").await;
    let finished = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut sign_ins = tokio::task::JoinSet::new();
    for _ in 0..60 {
        let (url, finished) = (app.url("/api/users/signin"), finished.clone());
        sign_ins.spawn(async move {
            let res = reqwest::Client::new()
                .post(url)
                .json(&json!({"email": "ann@example.com", "password": "password123"}))
                .send()
                .await
                .unwrap();
            finished.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let token = res.status().is_success().then(|| token_of(&res));
            (res.status(), token)
        });
    }
    // Every sign-in has read the account by now; most are still checking
    // the password (two at a time) when the ban lands.
    while finished.load(std::sync::atomic::Ordering::SeqCst) < 5 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let res = post_with(&app, &format!("/api/users/{ann_id}/ban"), &admin).await;
    assert_eq!(res.status(), StatusCode::OK);
    let mut tokens = Vec::new();
    while let Some(outcome) = sign_ins.join_next().await {
        match outcome.unwrap() {
            (StatusCode::OK, Some(token)) => tokens.push(token),
            (StatusCode::FORBIDDEN, _) => {}
            (other, _) => panic!("a sign-in answered {other}"),
        }
    }
    assert!(tokens.len() >= 5, "{} sessions began", tokens.len());
    let survivors = |tokens: Vec<String>| {
        let app = &app;
        async move {
            let mut alive = 0;
            for t in &tokens {
                if who(app, t).await.is_some() {
                    alive += 1;
                }
            }
            alive
        }
    };
    assert_eq!(survivors(tokens.clone()).await, 0, "of {}", tokens.len());
    let lifted = reqwest::Client::new()
        .delete(app.url(&format!("/api/users/{ann_id}/ban")))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(lifted.status(), StatusCode::OK);
    assert_eq!(survivors(tokens.clone()).await, 0, "after the unban");
}

#[tokio::test]
async fn signing_up_never_makes_an_admin_the_operator_grants_and_revokes_the_role() {
    let app = app().await;
    let mut granted = app.watch::<marketplace_events::UserAdminGranted>().await;
    let mut revoked = app.watch::<marketplace_events::UserAdminRevoked>().await;
    let (id, token) = session(&app, ADMIN).await;
    let list = || async {
        reqwest::Client::new()
            .get(app.url("/api/users"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .status()
    };
    assert_eq!(
        current_with(&app, &token).await["currentUser"]["admin"],
        false
    );
    assert_eq!(list().await, StatusCode::FORBIDDEN);

    let change = set_admin(&app, ADMIN, true).await;
    assert_eq!(
        change,
        auth::roles::RoleChange::Changed {
            id: shared::ids::UserId::parse(&id).unwrap(),
            version: 1
        }
    );
    let event = granted.next().await;
    assert_eq!((event.id.to_string(), event.version), (id.clone(), 1));
    // At once, on the session the user already has.
    assert_eq!(
        current_with(&app, &token).await["currentUser"]["admin"],
        true
    );
    assert_eq!(list().await, StatusCode::OK);
    // Granting again changes nothing.
    assert!(matches!(
        set_admin(&app, ADMIN, true).await,
        auth::roles::RoleChange::Unchanged { .. }
    ));
    assert!(
        granted
            .next_within(Duration::from_millis(300))
            .await
            .is_none()
    );

    set_admin(&app, ADMIN, false).await;
    assert_eq!(revoked.next().await.version, 2);
    assert_eq!(
        current_with(&app, &token).await["currentUser"]["admin"],
        false
    );
    assert_eq!(list().await, StatusCode::FORBIDDEN);

    // Nobody to grant: the command says so.
    let (_, outbox) = auth::roles::open_store(&app.deps.databases).await.unwrap();
    let nobody = shared::email::Email::parse("nobody@example.com").unwrap();
    let err = auth::roles::set_admin(&outbox, &nobody, true, app.deps.clock.now())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "no account has the e-mail address nobody@example.com"
    );
}

async fn change_password(app: &TestApp, token: &str, body: Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(app.url("/api/users/password"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn changing_the_password_ends_every_session_and_gives_the_caller_a_new_one() {
    let app = app().await;
    let mut signed_out = app.watch::<marketplace_events::UserSignedOut>().await;
    let (_, first) = session(&app, "ann@example.com").await;
    let (_, second) = session(&app, "ann@example.com").await;
    let (_, bobs) = session(&app, "bob@example.com").await;

    let wrong = change_password(
        &app,
        &first,
        json!({"currentPassword": "not-the-password", "newPassword": "new-password-1"}),
    )
    .await;
    assert_eq!(wrong.status(), StatusCode::FORBIDDEN);
    assert_eq!(errors(wrong).await[0].1, "Current password is incorrect");
    let invalid = change_password(
        &app,
        &first,
        json!({"currentPassword": "", "newPassword": "short"}),
    )
    .await;
    assert_eq!(invalid.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        errors(invalid).await,
        vec![
            (
                Some("currentPassword".into()),
                "Current password is required".into()
            ),
            (
                Some("newPassword".into()),
                "New password must be between 8 and 128 characters".into()
            ),
        ]
    );
    let anonymous = reqwest::Client::new()
        .post(app.url("/api/users/password"))
        .json(&json!({"currentPassword": "password123", "newPassword": "new-password-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(who(&app, &first).await.as_deref(), Some("ann@example.com"));

    let changed = change_password(
        &app,
        &first,
        json!({"currentPassword": "password123", "newPassword": "new-password-1"}),
    )
    .await;
    assert_eq!(changed.status(), StatusCode::NO_CONTENT);
    let fresh = token_of(&changed);
    assert_eq!(who(&app, &first).await, None);
    assert_eq!(who(&app, &second).await, None);
    assert_eq!(who(&app, &fresh).await.as_deref(), Some("ann@example.com"));
    assert_eq!(who(&app, &bobs).await.as_deref(), Some("bob@example.com"));
    let event = signed_out.next().await;
    assert!(event.before.is_some() && event.session_id.is_none());

    assert_eq!(
        signin(&app, "ann@example.com", "password123")
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        signin(&app, "ann@example.com", "new-password-1")
            .await
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn look_alike_spellings_of_a_taken_address_are_the_same_account_or_refused() {
    let app = app().await;
    assert_eq!(
        signup(&app, "admin@example.com", "password123")
            .await
            .status(),
        StatusCode::CREATED
    );
    for same in [
        "ａｄｍｉｎ@ｅｘａｍｐｌｅ.ｃｏｍ",
        "Admin@EXAMPLE.com",
        "admin@ｅxample.com",
    ] {
        let res = signup(&app, same, "password123").await;
        assert_eq!(res.status(), StatusCode::CONFLICT, "{same}");
        // …and signs in as the one account.
        let res = signin(&app, same, "password123").await;
        assert_eq!(res.status(), StatusCode::OK, "{same}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["email"], "admin@example.com");
    }
    let mixed = signup(&app, "admin@exаmple.com", "password123").await;
    assert_eq!(mixed.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        errors(mixed).await,
        vec![(
            Some("email".into()),
            "Email's domain must not mix scripts (such as Latin and Cyrillic) in one label".into()
        )]
    );
    let idn = signup(&app, "ann@BÜCHER.example", "password123").await;
    assert_eq!(idn.status(), StatusCode::CREATED);
    let body: Value = idn.json().await.unwrap();
    assert_eq!(body["email"], "ann@xn--bcher-kva.example");
}

#[tokio::test]
async fn addresses_stored_before_normalisation_are_rewritten_once() {
    let app = app().await;
    signup(&app, "admin@example.com", "password123").await;
    let (db, _) = auth::roles::open_store(&app.deps.databases).await.unwrap();
    // The service's own pass at start has run.
    let marked = testkit::eventually(Duration::from_secs(10), || async {
        db.read(|c| c.query_opt("SELECT at FROM emails_normalised", &[]))
            .await
            .unwrap()
            .map(|_| ())
    })
    .await;
    assert!(marked.is_some(), "the pass at start never ran");
    // What earlier versions stored: the domain as typed, lower-cased.
    let now = app.deps.clock.now();
    db.write(move |c| {
        for (email, id) in [
            ("ann@bücher.example", shared::ids::UserId::new()),
            ("admin@ｅxample.com", shared::ids::UserId::new()),
        ] {
            c.execute(
                "INSERT INTO users (id, email, password_hash, created_at) VALUES ($1, $2, 'x', $3)",
                &[&id, &email, &now],
            )?;
        }
        c.execute("DELETE FROM emails_normalised", &[])
    })
    .await
    .unwrap();
    let done = auth::emails::normalise_stored(&db, now).await.unwrap();
    assert_eq!(
        done,
        auth::emails::Normalised {
            rewritten: 1,
            left: 1
        }
    );
    let mut emails = db
        .read(|c| {
            c.query("SELECT email FROM users", &[])?
                .iter()
                .map(|r| r.get::<String>(0))
                .collect::<Result<Vec<_>, store::StoreError>>()
        })
        .await
        .unwrap();
    emails.sort();
    assert_eq!(
        emails,
        [
            "admin@example.com",
            "admin@ｅxample.com",
            "ann@xn--bcher-kva.example"
        ]
    );
    // Once done, not again.
    assert_eq!(
        auth::emails::normalise_stored(&db, now).await.unwrap(),
        auth::emails::Normalised::default()
    );
}
