//! Test support: a throw-away PostgreSQL schema per test.
//!
//! `TICKETING_TEST_POSTGRES_URL` names the server (default
//! `postgres://postgres@127.0.0.1:5432/postgres`). When it cannot be reached,
//! tests skip with a message — unless `TICKETING_REQUIRE_ENGINES=1` (set by
//! CI), when they fail.

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

pub use crate::scratch::ScratchSchema as PgSchema;

/// For tests on Tokio's paused clock: from now on, in this process, every
/// SQLite transaction is awaited from a blocking task. A paused clock
/// auto-advances to the next timer whenever the runtime has nothing to
/// do — also while it only waits for the database thread, which would let
/// a timer fire "before" a write it should follow. Tokio does not
/// auto-advance while a blocking task runs, so virtual time stands still
/// while the database works. (It costs a thread hand-off per transaction:
/// tests only.)
pub fn hold_paused_clock() {
    crate::sqlite::HOLD_PAUSED_CLOCK.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// A statement's query plan as SQLite explains it, and the most
/// virtual-machine steps one run of it took since [`reset_steps`].
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// `EXPLAIN QUERY PLAN`'s `detail` lines, with the statement's first
    /// parameters.
    pub lines: Vec<String>,
    /// SQLite's `SQLITE_STMTSTATUS_VM_STEP` for the costliest run: a
    /// count of the work done, the same on any machine, which grows with
    /// the rows a statement visits.
    pub steps: u64,
    /// How often it ran since [`reset_steps`].
    pub runs: u64,
}

/// From now on, in this process, every distinct statement a SQLite
/// database runs has its query plan and its cost in steps recorded, for
/// tests that check the hot paths use their indexes and cost no more as
/// the data grows; [`plans`] reads them.
pub fn record_plans() {
    let mut plans = crate::sqlite::PLANS
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    plans.get_or_insert_with(Default::default);
    crate::sqlite::RECORDING.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Forgets the steps and runs recorded so far (the plans stay): the start of a
/// phase to compare with another.
pub fn reset_steps() {
    let mut plans = crate::sqlite::PLANS
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    for plan in plans.iter_mut().flat_map(|p| p.values_mut()) {
        plan.steps = 0;
        plan.runs = 0;
    }
}

/// The statements recorded since [`record_plans`], each as the service
/// wrote it.
pub fn plans() -> std::collections::BTreeMap<String, Plan> {
    crate::sqlite::PLANS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .unwrap_or_default()
}

/// Creates a fresh schema, or `None` (after saying why) when PostgreSQL is
/// unreachable and engines are optional.
pub async fn postgres_schema() -> Option<PgSchema> {
    let base = postgres_url();
    match PgSchema::create(&base, "t").await {
        Ok(s) => Some(s),
        Err(e) if is_too_many_clients(&e) => panic!("{}", too_many_clients(&base)),
        Err(e) if engines_required() => panic!(
            "PostgreSQL at {base} is required (TICKETING_REQUIRE_ENGINES=1) but unreachable: {e}"
        ),
        Err(e) => {
            skipped(&format!(
                "PostgreSQL at {base} is unreachable ({e}); set TICKETING_TEST_POSTGRES_URL or start it"
            ));
            None
        }
    }
}

/// How many connections the test suites open on PostgreSQL at once, at
/// most: a multi-process test runs up to ten service processes of two
/// connections each, plus its own; a service suite four per schema.
pub const CONNECTIONS_NEEDED: usize = 30;

/// Whether `e` is the server refusing a connection because it is full
/// (SQLSTATE 53300: "too many clients already", or the same for a role).
pub fn is_too_many_clients(e: &crate::StoreError) -> bool {
    let text = crate::report(e);
    text.contains("too many clients") || text.contains("too many connections")
}

/// What to say when the server refuses a connection because it is full.
pub fn too_many_clients(base: &str) -> String {
    format!(
        "PostgreSQL at {base} refused a connection: it already serves as many clients as its \
         max_connections allows (100 by default, shared with everything else using the server). \
         The test suites need about {CONNECTIONS_NEEDED} connections at once: raise \
         max_connections, stop other clients, or run fewer test binaries at once \
         (cargo test -j1 / --test-threads=1)"
    )
}

/// Says a test was skipped, on the real stderr (the test harness captures
/// `eprintln!`, which would hide it).
pub fn skipped(why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED: {why}");
}
