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

/// Serves `running` on a port of its own until the returned trigger fires
/// (or a task dies); its base URL, the trigger, and the serving to await.
async fn serve(
    running: runtime::service::Running,
    stop_services: shutdown::ShutdownTrigger,
) -> (
    String,
    shutdown::ShutdownTrigger,
    impl std::future::Future<Output = Result<(), Box<dyn std::error::Error>>>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
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
    (base, stop_http, served)
}

/// A request's way through the handler: it says when it has entered, and
/// waits to be released.
#[derive(Clone, Default)]
struct Gate {
    entered: Arc<tokio::sync::Notify>,
    release: Arc<tokio::sync::Notify>,
}

impl Gate {
    async fn pass(&self) {
        self.entered.notify_one();
        self.release.notified().await;
    }
}

/// Enters, waits for the gate, then writes an event: a request in flight
/// at shutdown.
async fn slow_write(State((outbox, gate)): State<(Outbox, Gate)>) -> &'static str {
    gate.pass().await;
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
        keys: None,
        clock: Clock::System,
        shutdown: services_shutdown,
    };
    let base = deps.open_service(&EVENTS, MIGRATIONS).await.unwrap();
    let outbox = base.outbox.clone();
    let gate = Gate::default();
    let router = axum::Router::new()
        .route("/notes", post(slow_write))
        .with_state((outbox.clone(), gate.clone()));
    let running = base.running(router, Vec::new());

    let (base, stop_http, served) = serve(running, stop_services).await;
    let url = format!("{base}/notes");
    let client = async move {
        let request = tokio::spawn(async move {
            let res = reqwest::Client::new().post(url).send().await.unwrap();
            res.status()
        });
        // The signal arrives while the request is in its handler (a fixed
        // wait here raced a loaded machine: a request the server had not
        // yet read had its connection closed), and the handler goes on
        // after it.
        gate.entered.notified().await;
        stop_http.fire();
        // Time for the server to act on the signal while the request is
        // held (were it slower, the request would only finish first: the
        // test could not fail by it).
        tokio::time::sleep(Duration::from_millis(100)).await;
        gate.release.notify_one();
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

/// A service task that dies while the server runs (a listener's panic)
/// stops the server without a signal (letting the request in flight
/// finish), stops the other tasks, and ends with an error naming it: the
/// process exits non-zero for its supervisor to restart, rather than
/// serving half alive. (That it is not ready in between is
/// `serve::tests::a_death_makes_the_tasks_check_fail`.)
#[tokio::test]
async fn a_task_that_dies_stops_the_process_with_an_error() {
    let (stop_services, mut services_shutdown) = shutdown::channel();
    let (kill, killed) = tokio::sync::oneshot::channel::<()>();
    let doomed = tokio::spawn(async move {
        let _ = killed.await;
        panic!("a listener lost its way");
    });
    let (healthy_stopped_tx, healthy_stopped) = tokio::sync::oneshot::channel();
    let healthy = tokio::spawn(async move {
        services_shutdown.wait().await;
        let _ = healthy_stopped_tx.send(());
    });
    let one_off = tokio::spawn(async {});
    let gate = Gate::default();
    let slow_gate = gate.clone();
    let running = runtime::service::Running {
        name: "notes",
        router: axum::Router::new().route(
            "/slow",
            axum::routing::get(move || async move {
                slow_gate.pass().await;
                "slow"
            }),
        ),
        ready_checks: Vec::new(),
        tasks: vec![doomed, healthy, one_off],
    };
    let (base, _signal, served) = serve(running, stop_services).await;
    let client = async move {
        let client = reqwest::Client::new();
        let ready = client.get(format!("{base}/readyz")).send().await.unwrap();
        assert_eq!(
            ready.status(),
            200,
            "ready while every task runs (a one-off task that finished is fine)"
        );
        let slow = tokio::spawn(async move {
            client
                .get(format!("{base}/slow"))
                .send()
                .await
                .map(|r| r.status())
        });
        // The task dies while the request is in its handler.
        gate.entered.notified().await;
        kill.send(()).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        gate.release.notify_one();
        slow.await.unwrap()
    };
    let (served, slow) = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(served, client)
    })
    .await
    .expect("the process stops by itself");
    let error = served
        .expect_err("a dead task ends the process with an error")
        .to_string();
    assert!(error.contains("a task of notes panicked"), "{error}");
    assert_eq!(slow.unwrap(), 200, "the request in flight finished");
    healthy_stopped
        .await
        .expect("the other tasks were told to stop");
}

/// A product without accounts runs without session keys; a service whose
/// handlers take sessions does not start in such a process, and says why.
#[tokio::test]
async fn a_service_that_takes_sessions_does_not_start_without_session_keys() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Arc::new(
        bus::embedded::EmbeddedBus::open(&dir.path().join("bus.db"))
            .await
            .unwrap(),
    );
    let deps = Deps {
        databases: Databases::Sqlite(dir.path().to_path_buf()),
        bus,
        keys: None,
        clock: Clock::System,
        shutdown: shutdown::Shutdown::never(),
    };
    let base = deps.open_service(&EVENTS, MIGRATIONS).await.unwrap();
    let refused = base.state(&deps, ()).err().expect("no state without keys");
    assert!(
        refused
            .to_string()
            .contains("the notes service takes sessions, and this process has no session keys"),
        "{refused}"
    );
    let deps = Deps {
        keys: Some(AuthKeys::new(b"key", Duration::from_secs(60), false)),
        ..deps
    };
    assert!(base.state(&deps, ()).is_ok());
}
