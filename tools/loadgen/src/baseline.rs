//! The machine's limits, measured in the same run as the figures they
//! bound: a store transaction of the purchase path's shape (a row and an
//! outbox row) by the fastest means available, and a trivial HTTP handler
//! on the same stack (tokio, hyper, axum) under the same load.

use anyhow::Context as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS orders (
        id TEXT PRIMARY KEY, user_id TEXT NOT NULL, ticket_id TEXT NOT NULL,
        status TEXT NOT NULL, expires_at BIGINT NOT NULL, version BIGINT NOT NULL);
    CREATE TABLE IF NOT EXISTS outbox (
        id TEXT PRIMARY KEY, subject TEXT NOT NULL, headers TEXT NOT NULL,
        payload TEXT NOT NULL, created_at BIGINT NOT NULL);";

fn payload() -> String {
    json!({"id": uuid::Uuid::now_v7(), "version": 0, "status": "created",
           "userId": uuid::Uuid::now_v7(), "expiresAt": "2026-01-01T00:00:00.000Z",
           "ticket": {"id": uuid::Uuid::now_v7(), "price": 2000}})
    .to_string()
}

/// SQLite, one writer on a thread of its own through rusqlite (WAL,
/// synchronous=NORMAL, as the product opens it): transactions per second of
/// one order row plus one outbox row, for `duration`.
pub fn sqlite_order_tx(duration: Duration) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("limit.db");
    std::thread::spawn(move || -> Result<f64, rusqlite::Error> {
        let mut c = rusqlite::Connection::open(&path)?;
        c.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
        )?;
        c.execute_batch(SCHEMA)?;
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < duration {
            let tx = c.transaction()?;
            {
                let id = uuid::Uuid::now_v7().to_string();
                let mut order = tx.prepare_cached(
                    "INSERT INTO orders (id, user_id, ticket_id, status, expires_at, version) VALUES (?1, ?2, ?3, 'created', ?4, 0)",
                )?;
                order.execute(rusqlite::params![
                    id,
                    uuid::Uuid::now_v7().to_string(),
                    uuid::Uuid::now_v7().to_string(),
                    n as i64
                ])?;
                let mut outbox = tx.prepare_cached(
                    "INSERT INTO outbox (id, subject, headers, payload, created_at) VALUES (?1, 'order.created', '[]', ?2, ?3)",
                )?;
                outbox.execute(rusqlite::params![
                    uuid::Uuid::now_v7().to_string(),
                    payload(),
                    n as i64
                ])?;
            }
            tx.commit()?;
            n += 1;
        }
        Ok(n as f64 / start.elapsed().as_secs_f64())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the SQLite limit thread panicked"))?
    .map_err(anyhow::Error::from)
}

/// PostgreSQL through tokio-postgres, `connections` writers on a fresh
/// schema: transactions per second of the same shape.
pub async fn postgres_order_tx(
    url: &str,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    let schema = format!("loadgen_limit_{}", std::process::id());
    let (admin, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| url.to_string())?;
    tokio::spawn(conn);
    admin
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}; SET search_path = {schema}; {SCHEMA}"
        ))
        .await
        ?;
    let count = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut writers = Vec::new();
    for _ in 0..connections.max(1) {
        let (mut client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        client
            .batch_execute(&format!("SET search_path = {schema}"))
            .await?;
        let count = count.clone();
        writers.push(tokio::spawn(async move {
            let order = client
                .prepare("INSERT INTO orders (id, user_id, ticket_id, status, expires_at, version) VALUES ($1, $2, $3, 'created', $4, 0)")
                .await?;
            let outbox = client
                .prepare("INSERT INTO outbox (id, subject, headers, payload, created_at) VALUES ($1, 'order.created', '[]', $2, $3)")
                .await?;
            while start.elapsed() < duration {
                let tx = client.transaction().await?;
                let n = count.load(Ordering::Relaxed) as i64;
                tx.execute(
                    &order,
                    &[
                        &uuid::Uuid::now_v7().to_string(),
                        &uuid::Uuid::now_v7().to_string(),
                        &uuid::Uuid::now_v7().to_string(),
                        &n,
                    ],
                )
                .await?;
                tx.execute(&outbox, &[&uuid::Uuid::now_v7().to_string(), &payload(), &n])
                    .await?;
                tx.commit().await?;
                count.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, tokio_postgres::Error>(())
        }));
    }
    for w in writers {
        w.await??;
    }
    let rate = count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64();
    let _ = admin
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .await;
    Ok(rate)
}

/// A trivial handler (`GET /hello` → 200 "ok") on axum, on a runtime of
/// its own with as many workers as the machine has cores, as the product's
/// server runs. Returns its base URL; it lives as long as the process.
pub fn trivial_server() -> anyhow::Result<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = tx.send(Err(e.to_string()));
                return;
            }
        };
        rt.block_on(async move {
            let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
                Ok(l) => l,
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                    return;
                }
            };
            let _ = tx.send(
                listener
                    .local_addr()
                    .map(|a| format!("http://{a}"))
                    .map_err(|e| e.to_string()),
            );
            let app = axum::Router::new().route("/hello", axum::routing::get(|| async { "ok" }));
            let _ = axum::serve(listener, app).await;
        });
    });
    rx.recv()?.map_err(anyhow::Error::msg)
}
