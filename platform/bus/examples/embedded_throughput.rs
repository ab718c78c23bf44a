//! Throughput of the embedded bus, beside its limit: publish N messages in
//! relay-sized batches, consume and ack them one by one, and run N trivial
//! store transactions on the same kind of SQLite thread.
//!
//! `cargo run --release -p bus --example embedded_throughput -- 20000`
#![allow(clippy::print_stdout)]

use std::time::Instant;

use bus::{Bus, ConsumerConfig, Message};

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let bus = bus::embedded::EmbeddedBus::open(&dir.path().join("bus.db"))
        .await
        .expect("bus");
    let mut sub = bus
        .subscribe(ConsumerConfig::new("c", "t.>"))
        .await
        .expect("subscribe");
    let msgs: Vec<Message> = (0..n)
        .map(|i| Message {
            subject: "t.a".into(),
            id: format!("m{i}"),
            headers: vec![],
            payload: b"{}".to_vec(),
        })
        .collect();

    let t = Instant::now();
    for chunk in msgs.chunks(256) {
        bus.publish_batch(chunk.to_vec()).await.expect("publish");
    }
    report("publish (batches of 256)", n, t);

    let t = Instant::now();
    for _ in 0..n {
        let d = sub.next().await.expect("open").expect("delivery");
        d.ack().await.expect("ack");
    }
    report("consume + ack", n, t);

    let db = store::Db::open_sqlite(&dir.path().join("raw.db"), &[])
        .await
        .expect("db");
    let t = Instant::now();
    for _ in 0..n {
        db.write(|c| c.query("SELECT 1", &[]).map(|_| ()))
            .await
            .expect("tx");
    }
    report("limit: trivial store transactions", n, t);
}

fn report(what: &str, n: usize, t: Instant) {
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{what:<36} {n:>7} in {secs:>6.3} s = {:>8.0}/s",
        n as f64 / secs
    );
}
