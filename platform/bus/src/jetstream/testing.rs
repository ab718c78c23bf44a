//! Test support: a stream per test on a real server.

use std::time::Duration;

use async_nats::jetstream::stream;

use super::{JetStreamBus, PARKED_PREFIX, PARKED_STREAM};

/// The server tests use (`TICKETING_TEST_NATS_URL`, default the local one).
pub fn nats_url() -> String {
    std::env::var("TICKETING_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// Connects to the test server, or `None` (after saying why) when it is
/// unreachable and engines are optional; panics when they are required.
pub async fn connect() -> Option<async_nats::Client> {
    let url = nats_url();
    let attempt = tokio::time::timeout(
        Duration::from_secs(3),
        async_nats::ConnectOptions::new()
            .name("bus-tests")
            .connect(&url),
    )
    .await;
    match attempt {
        Ok(Ok(client)) => Some(client),
        other => {
            let why = match other {
                Ok(Err(e)) => e.to_string(),
                _ => "timed out".into(),
            };
            if store::testing::engines_required() {
                panic!(
                    "NATS at {url} is required (TICKETING_REQUIRE_ENGINES=1) but unreachable: {why}"
                );
            }
            store::testing::skipped(&format!(
                "NATS at {url} is unreachable ({why}); set TICKETING_TEST_NATS_URL or start nats-server -js"
            ));
            None
        }
    }
}

/// A stream of its own for one test; deleted when dropped.
pub struct TestStream {
    pub name: String,
    /// Subjects are `{prefix}.…`.
    pub prefix: String,
    url: String,
    /// Whether the prefix is this run's own (`stream`), so that parked
    /// stream consumers named after it are the test's to delete.
    own_prefix: bool,
}

/// A stream called `name` over `subjects` (a test's own, fixed
/// subject), replacing one a previous run left; deleted when dropped.
pub async fn stream_over(bus: &JetStreamBus, name: &str, subjects: &str) -> TestStream {
    let _ = bus.context().delete_stream(name).await;
    create(bus, name.into(), subjects.trim_end_matches(".>").into()).await
}

/// Creates a file-storage stream over `{prefix}.>` with a fresh prefix,
/// and the shared parked stream if missing.
pub async fn stream(bus: &JetStreamBus) -> TestStream {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let prefix = format!("t{}x{nanos}x{n}", std::process::id());
    let mut stream = create(bus, prefix.to_uppercase(), prefix).await;
    stream.own_prefix = true;
    stream
}

/// A file-storage stream `name` over `{prefix}.>`, and the shared
/// parked stream if missing.
async fn create(bus: &JetStreamBus, name: String, prefix: String) -> TestStream {
    let js = bus.context();
    js.create_stream(stream::Config {
        name: name.clone(),
        subjects: vec![format!("{prefix}.>")],
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        max_age: Duration::from_secs(3600),
        ..Default::default()
    })
    .await
    .expect("create test stream");
    let _ = js
        .get_or_create_stream(stream::Config {
            name: PARKED_STREAM.into(),
            subjects: vec![format!("{PARKED_PREFIX}.>")],
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await;
    TestStream {
        name,
        prefix,
        url: nats_url(),
        own_prefix: false,
    }
}

impl Drop for TestStream {
    fn drop(&mut self) {
        let (url, name) = (self.url.clone(), self.name.clone());
        let prefix = self.own_prefix.then(|| self.prefix.replace('.', "-"));
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let client = async_nats::connect(&url).await.ok()?;
                let js = async_nats::jetstream::new(client);
                // The replay consumers its durables made on the shared
                // parked stream go with it (their names begin with the
                // prefix, as the durables' do).
                if let Some(prefix) = prefix
                    && let Ok(parked) = js.get_stream(PARKED_STREAM).await
                {
                    use futures_util::StreamExt as _;
                    let mut names = parked.consumer_names();
                    let mut mine = Vec::new();
                    while let Some(Ok(n)) = names.next().await {
                        if n.starts_with(&prefix) {
                            mine.push(n);
                        }
                    }
                    for n in mine {
                        let _ = parked.delete_consumer(&n).await;
                    }
                }
                js.delete_stream(&name).await.ok()
            })
        })
        .join();
    }
}
