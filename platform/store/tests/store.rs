//! Behaviour of the store layer — transactions, constraints, placeholders,
//! migrations, row locks — as one suite run against SQLite and PostgreSQL.

use store::{Db, Migration, StoreError, StoreErrorKind};

static MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "items",
    sql: "CREATE TABLE items (id TEXT PRIMARY KEY, n BIGINT NOT NULL, note TEXT);
          CREATE UNIQUE INDEX items_one_big ON items (n) WHERE n > 100;",
}];

/// Where a test's database lives; kept alive for the test's duration.
pub enum Target {
    Sqlite(tempfile::TempDir),
    Postgres(store::testing::PgSchema),
}

impl Target {
    pub async fn open(&self) -> Db {
        match self {
            Target::Sqlite(dir) => Db::open_sqlite(&dir.path().join("t.db"), MIGRATIONS)
                .await
                .unwrap(),
            Target::Postgres(schema) => {
                Db::open_postgres(&schema.url, 8, MIGRATIONS).await.unwrap()
            }
        }
    }
}

pub async fn sqlite() -> Option<Target> {
    Some(Target::Sqlite(tempfile::tempdir().unwrap()))
}

pub async fn postgres() -> Option<Target> {
    store::testing::postgres_schema()
        .await
        .map(Target::Postgres)
}

async fn count(db: &Db) -> i64 {
    db.read(|c| c.query("SELECT COUNT(*) FROM items", &[])?[0].get(0))
        .await
        .unwrap()
}

pub async fn a_committed_write_is_visible_and_survives_reopening(t: Target) {
    let db = t.open().await;
    db.write(|c| {
        c.execute(
            "INSERT INTO items (id, n, note) VALUES ($1, $2, $3)",
            &[&"a", &7i64, &None::<String>],
        )
    })
    .await
    .unwrap();
    drop(db);
    let db = t.open().await;
    let (n, note): (i64, Option<String>) = db
        .read(|c| {
            let row = c
                .query_opt("SELECT n, note FROM items WHERE id = $1", &[&"a"])?
                .unwrap();
            Ok::<_, StoreError>((row.get(0)?, row.get(1)?))
        })
        .await
        .unwrap();
    assert_eq!((n, note), (7, None));
}

pub async fn an_error_inside_the_closure_rolls_the_whole_transaction_back(t: Target) {
    let db = t.open().await;
    let result: Result<(), StoreError> = db
        .write(|c| {
            c.execute("INSERT INTO items (id, n) VALUES ($1, $2)", &[&"a", &1i64])?;
            Err(StoreError::new(StoreErrorKind::Other, "changed my mind"))
        })
        .await;
    assert!(result.is_err());
    assert_eq!(count(&db).await, 0);
}

/// On PostgreSQL `BEGIN` goes out with a transaction's first statement:
/// a closure that runs none answers without a transaction, and one whose
/// first statement fails is rolled back; the connections serve on after
/// both.
pub async fn a_transaction_without_statements_or_with_a_failing_first_one_leaves_the_connection_usable(
    t: Target,
) {
    let db = t.open().await;
    let nothing: i64 = db.write(|_| Ok::<_, StoreError>(42)).await.unwrap();
    assert_eq!(nothing, 42);
    let refused: Result<(), StoreError> = db
        .write(|c| {
            c.execute("INSERT INTO no_such_table (id) VALUES ($1)", &[&"a"])?;
            Ok(())
        })
        .await;
    assert!(refused.is_err());
    db.write(|c| {
        c.execute("INSERT INTO items (id, n) VALUES ($1, $2)", &[&"a", &1i64])?;
        c.execute("INSERT INTO items (id, n) VALUES ($1, $2)", &[&"b", &2i64])
    })
    .await
    .unwrap();
    let failed_later: Result<(), StoreError> = db
        .write(|c| {
            c.execute("INSERT INTO items (id, n) VALUES ($1, $2)", &[&"c", &3i64])?;
            c.execute("INSERT INTO items (id, n) VALUES ($1, $2)", &[&"a", &4i64])?;
            Ok(())
        })
        .await;
    assert!(failed_later.unwrap_err().is_unique_violation());
    assert_eq!(count(&db).await, 2);
}

pub async fn unique_constraints_and_partial_indexes_report_a_unique_violation(t: Target) {
    let db = t.open().await;
    db.write(|c| {
        c.execute(
            "INSERT INTO items (id, n) VALUES ($1, $2)",
            &[&"a", &500i64],
        )
    })
    .await
    .unwrap();
    let dup_pk = db
        .write(|c| c.execute("INSERT INTO items (id, n) VALUES ($1, $2)", &[&"a", &1i64]))
        .await
        .unwrap_err();
    assert!(dup_pk.is_unique_violation(), "{dup_pk}");
    let dup_partial = db
        .write(|c| {
            c.execute(
                "INSERT INTO items (id, n) VALUES ($1, $2)",
                &[&"b", &500i64],
            )
        })
        .await
        .unwrap_err();
    assert!(dup_partial.is_unique_violation(), "{dup_partial}");
    // Below the partial index's predicate, duplicates are allowed.
    db.write(|c| {
        c.execute("INSERT INTO items (id, n) VALUES ($1, $2)", &[&"c", &5i64])?;
        c.execute("INSERT INTO items (id, n) VALUES ($1, $2)", &[&"d", &5i64])
    })
    .await
    .unwrap();
}

pub async fn placeholders_bind_by_number_whatever_order_they_appear_in(t: Target) {
    let db = t.open().await;
    db.write(|c| c.execute("INSERT INTO items (n, id) VALUES ($2, $1)", &[&"x", &42i64]))
        .await
        .unwrap();
    let n: i64 = db
        .read(|c| c.query("SELECT n FROM items WHERE id = $1", &[&"x"])?[0].get(0))
        .await
        .unwrap();
    assert_eq!(n, 42);
}

pub async fn migrations_run_once_even_when_the_database_is_opened_again(t: Target) {
    drop(t.open().await);
    let db = t.open().await;
    let applied: i64 = db
        .read(|c| c.query("SELECT COUNT(*) FROM schema_migrations", &[])?[0].get(0))
        .await
        .unwrap();
    assert_eq!(applied, 1);
}

pub async fn a_panicking_transaction_is_an_error_and_the_database_keeps_serving(t: Target) {
    let db = t.open().await;
    let result: Result<(), StoreError> = db
        .write(|_c| -> Result<(), StoreError> { panic!("bug in a query closure") })
        .await;
    assert!(result.is_err());
    db.write(|c| c.execute("INSERT INTO items (id, n) VALUES ($1, $2)", &[&"a", &1i64]))
        .await
        .unwrap();
}

pub async fn concurrent_read_modify_writes_with_for_update_lose_no_update(t: Target) {
    let db = t.open().await;
    db.write(|c| c.execute("INSERT INTO items (id, n) VALUES ($1, 0)", &[&"counter"]))
        .await
        .unwrap();
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let db = db.clone();
            tokio::spawn(async move {
                db.write(|c| {
                    let n: i64 = c.query(
                        "SELECT n FROM items WHERE id = $1 FOR UPDATE",
                        &[&"counter"],
                    )?[0]
                        .get(0)?;
                    c.execute(
                        "UPDATE items SET n = $2 WHERE id = $1",
                        &[&"counter", &(n + 1)],
                    )
                })
                .await
                .unwrap()
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let n: i64 = db
        .read(|c| c.query("SELECT n FROM items WHERE id = $1", &[&"counter"])?[0].get(0))
        .await
        .unwrap();
    assert_eq!(n, 20);
}

pub async fn integers_text_and_nulls_round_trip_including_aggregates(t: Target) {
    let db = t.open().await;
    db.write(|c| {
        c.execute(
            "INSERT INTO items (id, n, note) VALUES ($1, $2, $3)",
            &[&"big", &9_007_199_254_740_993i64, &Some("ünïcode ✓")],
        )
    })
    .await
    .unwrap();
    let (n, note, min, none): (i64, String, Option<i64>, Option<i64>) = db
        .read(|c| {
            let r = c
                .query_opt("SELECT n, note FROM items WHERE id = $1", &[&"big"])?
                .unwrap();
            let agg = c.query("SELECT MIN(n) FROM items", &[])?.remove(0);
            let empty = c
                .query("SELECT MIN(n) FROM items WHERE id = $1", &[&"none"])?
                .remove(0);
            Ok::<_, StoreError>((r.get(0)?, r.get(1)?, agg.get(0)?, empty.get(0)?))
        })
        .await
        .unwrap();
    assert_eq!(
        (n, note.as_str(), min, none),
        (
            9_007_199_254_740_993,
            "ünïcode ✓",
            Some(9_007_199_254_740_993),
            None
        )
    );
}

macro_rules! suite {
    ($target:path) => {
        suite!(@cases $target,
            a_committed_write_is_visible_and_survives_reopening,
            an_error_inside_the_closure_rolls_the_whole_transaction_back,
            a_transaction_without_statements_or_with_a_failing_first_one_leaves_the_connection_usable,
            unique_constraints_and_partial_indexes_report_a_unique_violation,
            placeholders_bind_by_number_whatever_order_they_appear_in,
            migrations_run_once_even_when_the_database_is_opened_again,
            a_panicking_transaction_is_an_error_and_the_database_keeps_serving,
            concurrent_read_modify_writes_with_for_update_lose_no_update,
            integers_text_and_nulls_round_trip_including_aggregates,
        );
    };
    (@cases $target:path, $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                if let Some(t) = $target().await {
                    super::$case(t).await;
                }
            }
        )*
    };
}

mod on_sqlite {
    suite!(super::sqlite);
}

mod on_postgres {
    suite!(super::postgres);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_database_that_is_down_at_start_reports_unavailable_until_it_is_reachable() {
    // Nothing listens on port 1: the handle exists, transactions say why not.
    let db =
        Db::open_postgres_in_background("postgres://postgres@127.0.0.1:1/postgres", 2, MIGRATIONS)
            .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let err = db.ping().await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::Unavailable, "{err}");
    // Against a reachable server the same constructor becomes ready by itself.
    let Some(schema) = store::testing::postgres_schema().await else {
        return;
    };
    let db = Db::open_postgres_in_background(&schema.url, 2, MIGRATIONS).unwrap();
    let mut ready = false;
    for _ in 0..100 {
        if db.ping().await.is_ok() {
            ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(ready, "became ready");
    assert_eq!(count(&db).await, 0, "migrated");
}

#[cfg(unix)]
#[tokio::test]
async fn a_database_file_is_created_private_and_an_existing_one_is_tightened() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let fresh = dir.path().join("new/deeper/fresh.db");
    Db::open_sqlite(&fresh, &[]).await.unwrap();
    assert_eq!(mode(&fresh), 0o600);
    assert_eq!(mode(fresh.parent().unwrap()), 0o700);
    let old = dir.path().join("old.db");
    std::fs::write(&old, b"").unwrap();
    std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
    Db::open_sqlite(&old, &[]).await.unwrap();
    assert_eq!(mode(&old), 0o600);
}

/// A full server is named for what it is, with what to do about it — not
/// an obscure failure deep inside a multi-process test.
#[tokio::test]
async fn a_server_refusing_connections_for_being_full_is_recognised() {
    let Some(schema) = store::testing::postgres_schema().await else {
        return;
    };
    // A role allowed no connections at all is refused with SQLSTATE 53300,
    // the code of a server that is full.
    let admin = Db::open_postgres(&schema.url, 1, &[]).await.unwrap();
    admin
        .write(|c| {
            c.execute("DROP ROLE IF EXISTS ticketing_test_full", &[])?;
            c.execute(
                "CREATE ROLE ticketing_test_full LOGIN CONNECTION LIMIT 0",
                &[],
            )
        })
        .await
        .unwrap();
    let base = store::testing::postgres_url();
    let full = base.replacen("postgres://postgres@", "postgres://ticketing_test_full@", 1);
    assert_ne!(full, base, "the test expects the default user in {base}");
    let err = store::testing::PgSchema::create(&full, "t")
        .await
        .err()
        .expect("refused");
    assert!(
        store::testing::is_too_many_clients(&err),
        "{}",
        store::report(&err)
    );
    assert!(store::testing::too_many_clients(&full).contains("max_connections"));
    admin
        .write(|c| c.execute("DROP ROLE ticketing_test_full", &[]))
        .await
        .unwrap();
}

/// Group commit (SQLite): writes that queue up while the database thread is
/// busy run in one transaction, each in a savepoint. One that returns an
/// error, one that panics and one that breaks a constraint lose only their
/// own changes and get their own error; every other write is committed, and
/// the whole queue costs one `COMMIT`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_that_queue_up_commit_together_and_fail_alone() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_sqlite(&dir.path().join("t.db"), MIGRATIONS)
        .await
        .unwrap();
    // Holds the database thread until every other write is queued.
    let (release, released) = std::sync::mpsc::channel::<()>();
    let (started, has_started) = tokio::sync::oneshot::channel::<()>();
    let blocker = tokio::spawn({
        let db = db.clone();
        async move {
            db.write(move |c| {
                let _ = started.send(());
                let _ = released.recv();
                c.execute("INSERT INTO items (id, n) VALUES ('first', 0)", &[])
            })
            .await
        }
    });
    has_started.await.unwrap();
    let before = db.stats();
    let writers: Vec<_> = (1..=10i64)
        .map(|i| {
            let db = db.clone();
            tokio::spawn(async move {
                db.write(move |c| {
                    let id = format!("w{i}");
                    c.execute("INSERT INTO items (id, n) VALUES ($1, $2)", &[&id, &i])?;
                    match i {
                        3 => Err(StoreError::new(StoreErrorKind::Other, "changed my mind")),
                        5 => panic!("bug in a query closure"),
                        // The same id as the blocker's row: a unique violation.
                        7 => c
                            .execute("INSERT INTO items (id, n) VALUES ('first', 1)", &[])
                            .map(|_| i),
                        _ => Ok(i),
                    }
                })
                .await
            })
        })
        .collect();
    while db.stats().in_flight < 11 {
        tokio::task::yield_now().await;
    }
    // The counter moves just before each write is handed to the thread.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    release.send(()).unwrap();
    blocker.await.unwrap().unwrap();
    let mut results = Vec::new();
    for writer in writers {
        results.push(writer.await.unwrap());
    }
    for (i, result) in (1..=10i64).zip(&results) {
        match i {
            3 => assert_eq!(
                result.as_ref().unwrap_err().to_string(),
                "store error (Other): changed my mind"
            ),
            5 => assert!(
                result
                    .as_ref()
                    .unwrap_err()
                    .to_string()
                    .contains("panicked"),
                "{result:?}"
            ),
            7 => assert!(
                result.as_ref().unwrap_err().is_unique_violation(),
                "{result:?}"
            ),
            _ => assert_eq!(result.as_ref().unwrap(), &i),
        }
    }
    let ids: Vec<String> = db
        .read(|c| {
            c.query("SELECT id FROM items ORDER BY n, id", &[])?
                .iter()
                .map(|r| r.get(0))
                .collect::<Result<Vec<String>, StoreError>>()
        })
        .await
        .unwrap();
    assert_eq!(
        ids,
        ["first", "w1", "w2", "w4", "w6", "w8", "w9", "w10"],
        "the failed writes left nothing behind, the others everything"
    );
    let after = db.stats();
    assert_eq!(after.transactions - before.transactions, 11);
    assert_eq!(
        after.commits - before.commits,
        3,
        "the blocker's commit, the queued ten's, and the read's"
    );
}
