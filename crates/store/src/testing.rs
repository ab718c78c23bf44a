//! Test support: a throw-away PostgreSQL schema per test.
//!
//! `TICKETING_TEST_POSTGRES_URL` names the server (default
//! `postgres://postgres@127.0.0.1:5432/postgres`). When it cannot be reached,
//! tests skip with a message — unless `TICKETING_REQUIRE_ENGINES=1` (set by
//! CI), when they fail.

use std::sync::atomic::{AtomicU64, Ordering};

/// The server tests use.
pub fn postgres_url() -> String {
    std::env::var("TICKETING_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Whether engines are required (CI) rather than optional (a laptop).
pub fn engines_required() -> bool {
    std::env::var("TICKETING_REQUIRE_ENGINES")
        .is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// A schema that exists for as long as this value does.
pub struct PgSchema {
    /// Connection URL whose `search_path` is the schema.
    pub url: String,
    name: String,
}

/// Creates a fresh schema, or `None` (after saying why) when PostgreSQL is
/// unreachable and engines are optional.
pub async fn postgres_schema() -> Option<PgSchema> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let base = postgres_url();
    let client = match connect(&base).await {
        Ok(c) => c,
        Err(e) if engines_required() => panic!(
            "PostgreSQL at {base} is required (TICKETING_REQUIRE_ENGINES=1) but unreachable: {e}"
        ),
        Err(e) => {
            eprintln!(
                "SKIPPED: PostgreSQL at {base} is unreachable ({e}); set TICKETING_TEST_POSTGRES_URL or start it"
            );
            return None;
        }
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let name = format!(
        "t_{}_{}_{}",
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    client
        .batch_execute(&format!("CREATE SCHEMA {name}"))
        .await
        .expect("create schema");
    let sep = if base.contains('?') { '&' } else { '?' };
    Some(PgSchema {
        url: format!("{base}{sep}options=-csearch_path%3D{name}"),
        name,
    })
}

async fn connect(url: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let (url, name) = (postgres_url(), self.name.clone());
        // Drop runs outside any runtime guarantee: use a small one of our own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let client = connect(&url).await.ok()?;
                client
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                    .await
                    .ok()
            })
        })
        .join();
    }
}

/// Says a test was skipped, on the real stderr (the test harness captures
/// `eprintln!`, which would hide it).
pub fn skipped(why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED: {why}");
}
