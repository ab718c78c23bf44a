//! The gateway in front of several replicas of a service, over real
//! sockets: requests taken in turn, a replica that is down (its port
//! refuses connections) skipped without the client seeing it, 503 in the
//! shared JSON shape only when every replica is down, and `/readyz` ready
//! while any replica answers.

use axum::routing::get;
use runtime::Fallback;
use runtime::gateway::{Upstreams, router};
use shared::shutdown;

const TABLE: &[(&str, &str)] = &[("/api/tickets", "tickets")];

/// A stand-in replica answering its own name on the tickets prefix.
async fn replica(name: &'static str) -> (String, shutdown::ShutdownTrigger) {
    let app = axum::Router::new()
        .route("/api/tickets", get(move || async move { name }))
        .route("/healthz", get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, signal) = shutdown::channel();
    tokio::spawn(runtime::serve(listener, app, Fallback::Json, signal));
    (url, stop)
}

/// A base URL where nothing listens (a port bound, then released).
fn dead() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", l.local_addr().unwrap())
}

async fn gateway(urls: String) -> (String, shutdown::ShutdownTrigger) {
    let upstreams = Upstreams::new(TABLE, |_| Ok::<_, ()>(urls.clone())).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, signal) = shutdown::channel();
    tokio::spawn(runtime::serve(
        listener,
        router(upstreams),
        Fallback::Own,
        signal,
    ));
    (url, stop)
}

async fn answers(gateway: &str, n: usize) -> Vec<(u16, String)> {
    let http = reqwest::Client::new();
    let mut out = Vec::new();
    for _ in 0..n {
        let res = http
            .get(format!("{gateway}/api/tickets"))
            .send()
            .await
            .unwrap();
        out.push((res.status().as_u16(), res.text().await.unwrap()));
    }
    out
}

#[tokio::test]
async fn replicas_are_taken_in_turn_and_one_that_is_down_is_skipped() {
    let (a, _a) = replica("a").await;
    let (b, _b) = replica("b").await;
    let (gw, _gw) = gateway(format!("{a}, {b}/")).await;
    let got: Vec<String> = answers(&gw, 4).await.into_iter().map(|(_, t)| t).collect();
    assert_eq!(got, ["a", "b", "a", "b"]);

    // One of three down: every request still answered, by the other two
    // (the dead one's turns go to the replica after it).
    let (gw, _gw) = gateway(format!("{a},{},{b}", dead())).await;
    let got: Vec<String> = answers(&gw, 6)
        .await
        .into_iter()
        .map(|(status, text)| format!("{status} {text}"))
        .collect();
    assert_eq!(got, ["200 a", "200 b", "200 b", "200 a", "200 b", "200 b"]);
    let ready = reqwest::get(format!("{gw}/readyz")).await.unwrap();
    assert_eq!(ready.status().as_u16(), 200);
}

#[tokio::test]
async fn every_replica_down_is_a_503_in_the_shared_shape_and_not_ready() {
    let (gw, _gw) = gateway(format!("{},{}", dead(), dead())).await;
    let got = answers(&gw, 1).await;
    assert_eq!(got[0].0, 503);
    let body: serde_json::Value = serde_json::from_str(&got[0].1).unwrap();
    assert_eq!(
        body["errors"][0]["message"],
        "The tickets service is unavailable, try again shortly"
    );
    let ready = reqwest::get(format!("{gw}/readyz")).await.unwrap();
    assert_eq!(ready.status().as_u16(), 503);
}
