//! Stopping a process with services: the HTTP server drains first, and only
//! then do the services' tasks stop, so an event written by the last
//! request still in flight is published, not left in the outbox.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::routing::post;
use bus::outbox::{OUTBOX_TABLE_SQL, Outbox};
use runtime::service::{Databases, Deps};
use runtime::{Fallback, HttpLimits, Stopping};
use serde::{Deserialize, Serialize};
use shared::auth::AuthKeys;
use shared::events::ServiceEvents;
use shared::ids::UserId;
use shared::shutdown;
use shared::time::Clock;
use shared::trace::TraceContext;
use store::Migration;

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
struct Noted {
    id: UserId,
}
shared::event!(Noted, "noted.created");

static EVENTS: ServiceEvents = ServiceEvents {
    service: "notes",
    publishes: &["noted.created"],
    consumes: &[],
};

static MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "outbox",
    sql: OUTBOX_TABLE_SQL,
}];

/// Takes its time, then writes an event: a request in flight at shutdown.
async fn slow_write(State(outbox): State<Outbox>) -> &'static str {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let event = Noted { id: UserId::new() };
    outbox
        .write(move |c| c.enqueue(&event, &TraceContext::new_root(), Clock::System.now()))
        .await
        .unwrap();
    "written"
}

#[tokio::test]
async fn an_event_written_by_a_request_in_flight_at_shutdown_is_published() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Arc::new(
        bus::embedded::EmbeddedBus::open(&dir.path().join("bus.db"))
            .await
            .unwrap(),
    );
    let (stop_services, services_shutdown) = shutdown::channel();
    let deps = Deps {
        databases: Databases::Sqlite(dir.path().to_path_buf()),
        bus,
        keys: AuthKeys::new(b"key", Duration::from_secs(60), false),
        clock: Clock::System,
        shutdown: services_shutdown,
    };
    let base = deps.open_service(&EVENTS, MIGRATIONS).await.unwrap();
    let outbox = base.outbox.clone();
    let router = axum::Router::new()
        .route("/notes", post(slow_write))
        .with_state(outbox.clone());
    let running = base.running(router, Vec::new());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/notes", listener.local_addr().unwrap());
    let (stop_http, http_shutdown) = shutdown::channel();
    let served = runtime::serve_running(
        vec![running],
        listener,
        Stopping {
            http: http_shutdown,
            services: stop_services,
        },
        Fallback::Json,
        HttpLimits::default(),
        |r| r,
    );
    let client = async move {
        let request = tokio::spawn(async move {
            let res = reqwest::Client::new().post(url).send().await.unwrap();
            res.status()
        });
        // The signal arrives while the request is in its handler.
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop_http.fire();
        request.await.unwrap()
    };
    let (served, status) = tokio::join!(served, client);
    served.map_err(|e| e.to_string()).unwrap();
    assert_eq!(status, reqwest::StatusCode::OK);
    assert_eq!(
        outbox.pending().await.unwrap(),
        0,
        "the event was left behind"
    );
}
