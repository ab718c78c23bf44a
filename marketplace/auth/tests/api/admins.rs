//! Admins: granted by the operator, banning and listing users, and the
//! operator's routes over parked messages.

use super::*;

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
