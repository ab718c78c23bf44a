//! Sessions seen from outside: an account signed up through a base URL,
//! and whether each API service accepts or rejects its token (as a bearer
//! token and as the session cookie).

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use testkit::eventually;

/// Signs `email` up through `base`; its id and session token.
pub async fn account(base: &str, email: &str) -> (String, String) {
    let res = reqwest::Client::new()
        .post(format!("{base}/api/users/signup"))
        .json(&json!({"email": email, "password": "password123"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
    let cookie = res.headers()["set-cookie"].to_str().unwrap().to_owned();
    let token = cookie["session=".len()..cookie.find(';').unwrap()].to_owned();
    let body: Value = res.json().await.unwrap();
    (body["id"].as_str().unwrap().to_owned(), token)
}

pub async fn post(url: String, token: &str) -> StatusCode {
    reqwest::Client::new()
        .post(url)
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
}

/// A route of each API service that needs a session, relative to its base
/// (auth's current user is 200 either way, `null` without a session).
pub const GUARDED: &[(&str, &str)] = &[
    ("auth", "/api/users/currentuser"),
    ("tickets", "/api/tickets/mine"),
    ("orders", "/api/orders"),
    (
        "payments",
        "/api/payments/0191d3b2-7c4e-7000-8000-000000000000",
    ),
];

/// `req` carrying `token` as the session cookie, or as a bearer token.
pub fn with_session(
    req: reqwest::RequestBuilder,
    token: &str,
    cookie: bool,
) -> reqwest::RequestBuilder {
    if cookie {
        req.header("cookie", format!("session={token}"))
    } else {
        req.bearer_auth(token)
    }
}

/// The statuses `token` gets from each guarded route at `base(service)`,
/// as a bearer token or (`cookie`) as the session cookie; auth's `null`
/// current user counts as a 401.
pub async fn statuses(
    base: impl Fn(&str) -> Option<String>,
    token: &str,
    cookie: bool,
) -> Vec<StatusCode> {
    let client = reqwest::Client::new();
    let mut out = Vec::new();
    for (service, path) in GUARDED {
        let Some(base) = base(service) else {
            continue; // not running
        };
        let res = with_session(client.get(format!("{base}{path}")), token, cookie)
            .send()
            .await
            .unwrap();
        out.push(if *service == "auth" {
            let body: Value = res.json().await.unwrap();
            if body["currentUser"].is_null() {
                StatusCode::UNAUTHORIZED
            } else {
                StatusCode::OK
            }
        } else {
            res.status()
        });
    }
    out
}

/// Waits until every service rejects `token`, both ways.
pub async fn until_rejected_everywhere(
    base: &(impl Fn(&str) -> Option<String> + Sync),
    token: &str,
) {
    let done = eventually(Duration::from_secs(10), || async {
        let all = [
            statuses(base, token, false).await,
            statuses(base, token, true).await,
        ]
        .concat();
        all.iter()
            .all(|s| *s == StatusCode::UNAUTHORIZED)
            .then_some(())
    })
    .await;
    assert!(
        done.is_some(),
        "still accepted somewhere: {:?}",
        statuses(base, token, false).await
    );
}

pub fn accepted(statuses: &[StatusCode]) -> bool {
    statuses.iter().all(|s| *s != StatusCode::UNAUTHORIZED)
}

/// Three sessions through `base`: one whose user `admin` then bans, one
/// that signs out, one that stays. Their tokens, in that order.
pub async fn ban_one_and_sign_out_one(base: &str, admin: &str) -> (String, String, String) {
    let at = |_: &str| Some(base.to_owned());
    let (banned_id, banned) = account(base, "banned@example.com").await;
    let (_, leaver) = account(base, "leaver@example.com").await;
    let (_, stayer) = account(base, "stayer@example.com").await;
    assert!(accepted(&statuses(at, &banned, false).await));
    assert_eq!(
        post(format!("{base}/api/users/{banned_id}/ban"), admin).await,
        StatusCode::OK
    );
    assert_eq!(
        post(format!("{base}/api/users/signout"), &leaver).await,
        StatusCode::NO_CONTENT
    );
    (banned, leaver, stayer)
}
