//! E-mail addresses: look-alike spellings of one mailbox, and addresses
//! stored before they were normalised.

use super::*;

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
