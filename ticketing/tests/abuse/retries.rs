//! A form sent twice — a double click, a browser resending after a lost
//! answer — acts once: the web client sends each form's idempotency key.

use reqwest::StatusCode;

use crate::common::{Proc, Shopper};

/// The `name=value` part of the first cookie an answer sets.
fn set_cookie(res: &reqwest::Response) -> String {
    let header = res.headers()["set-cookie"].to_str().unwrap();
    header.split(';').next().unwrap().to_owned()
}

/// The value of the hidden field `name` in a page's form.
fn hidden(html: &str, name: &str) -> String {
    let marker = format!(r#"name="{name}" value=""#);
    let at = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} in {html}"))
        + marker.len();
    html[at..at + html[at..].find('"').unwrap()].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purchase_or_payment_form_sent_twice_orders_and_pays_once() {
    let dir = tempfile::tempdir().unwrap();
    let p = Proc::start(dir.path(), 900).await;
    let seller = Shopper::sign_up(&p.base, "seller@example.com").await;
    let ticket = seller.sell("Twice", 12.0).await;
    let buyer = Shopper::sign_up(&p.base, "buyer@example.com").await;
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let session = set_cookie(
        &buyer
            .client
            .post(format!("{}/api/users/signin", p.base))
            .json(&serde_json::json!({"email": "buyer@example.com", "password": "password123"}))
            .send()
            .await
            .unwrap(),
    );
    let page = |path: String| {
        let (http, cookie) = (no_redirects.clone(), session.clone());
        async move {
            http.get(path)
                .header("cookie", &cookie)
                .send()
                .await
                .unwrap()
        }
    };
    let res = page(format!("{}/tickets/{ticket}", p.base)).await;
    let csrf_cookie = set_cookie(&res);
    let html = res.text().await.unwrap();
    let (csrf, key) = (hidden(&html, "_csrf"), hidden(&html, "_key"));
    let cookies = format!("{session}; {csrf_cookie}");
    let post = |path: String, form: Vec<(&'static str, String)>| {
        let (http, cookies) = (no_redirects.clone(), cookies.clone());
        async move {
            http.post(path)
                .header("cookie", cookies)
                .form(&form)
                .send()
                .await
                .unwrap()
        }
    };
    let purchase = format!("{}/tickets/{ticket}/purchase", p.base);
    let form = vec![("_csrf", csrf.clone()), ("_key", key.clone())];
    let first = post(purchase.clone(), form.clone()).await;
    let second = post(purchase, form).await;
    for res in [&first, &second] {
        assert_eq!(res.status(), StatusCode::SEE_OTHER);
    }
    assert_eq!(first.headers()["location"], second.headers()["location"]);
    let order_path = first.headers()["location"].to_str().unwrap().to_owned();
    let orders = buyer.get("/api/orders").await;
    assert_eq!(orders.as_array().unwrap().len(), 1, "{orders}");

    let html = page(format!("{}{order_path}", p.base))
        .await
        .text()
        .await
        .unwrap();
    // Payments learns of the order from its event: until then a payment is
    // a 404 (a token the gateway cannot read is a 400 once it knows).
    let order_id = order_path.trim_start_matches("/orders/").to_owned();
    let known = testkit::eventually(std::time::Duration::from_secs(15), || async {
        let res = buyer
            .post(
                "/api/payments",
                serde_json::json!({"orderId": order_id, "token": "tok_probe_unknown"}),
            )
            .await;
        (res.status() == StatusCode::BAD_REQUEST).then_some(())
    })
    .await;
    assert!(known.is_some(), "payments never learned of the order");
    let pay = format!("{}{order_path}/pay", p.base);
    let form = vec![
        ("_csrf", hidden(&html, "_csrf")),
        ("_key", hidden(&html, "_key")),
        ("token", "tok_visa".to_owned()),
    ];
    for _ in 0..2 {
        let res = post(pay.clone(), form.clone()).await;
        assert_eq!(res.status(), StatusCode::SEE_OTHER);
        assert!(
            res.headers()["location"]
                .to_str()
                .unwrap()
                .starts_with(&order_path),
            "{:?}",
            res.headers()["location"]
        );
    }
    let order_id = order_path.trim_start_matches("/orders/");
    buyer
        .until(
            &format!("/api/orders/{order_id}"),
            "status",
            "complete".into(),
        )
        .await;
    p.stop();
}
