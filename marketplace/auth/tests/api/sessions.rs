//! Ended sessions: signing out (here or everywhere), a ban racing sign-ins,
//! a password change, and another process learning of them from events.

use super::*;

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
