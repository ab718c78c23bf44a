//! Behaviour of the store layer: transactions, constraints, migrations.

use store::{Db, Migration, StoreError, StoreErrorKind};

static MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "items",
    sql: "CREATE TABLE items (id TEXT PRIMARY KEY, n BIGINT NOT NULL, note TEXT);
          CREATE UNIQUE INDEX items_one_big ON items (n) WHERE n > 100;",
}];

async fn fresh() -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_sqlite(&dir.path().join("t.db"), MIGRATIONS)
        .await
        .unwrap();
    (dir, db)
}

#[tokio::test]
async fn a_committed_write_is_visible_and_survives_reopening() {
    let (dir, db) = fresh().await;
    db.write(|c| {
        c.execute(
            "INSERT INTO items (id, n, note) VALUES ($1, $2, $3)",
            &[&"a", &7i64, &None::<String>],
        )
    })
    .await
    .unwrap();
    drop(db);
    let db = Db::open_sqlite(&dir.path().join("t.db"), MIGRATIONS)
        .await
        .unwrap();
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

#[tokio::test]
async fn an_error_inside_the_closure_rolls_the_whole_transaction_back() {
    let (_dir, db) = fresh().await;
    let result: Result<(), StoreError> = db
        .write(|c| {
            c.execute("INSERT INTO items (id, n) VALUES ($1, $2)", &[&"a", &1i64])?;
            Err(StoreError::new(StoreErrorKind::Other, "changed my mind"))
        })
        .await;
    assert!(result.is_err());
    let count: i64 = db
        .read(|c| c.query("SELECT COUNT(*) FROM items", &[])?[0].get(0))
        .await
        .unwrap();
    assert_eq!(count, 0);
}

#[tokio::test]
async fn unique_constraints_and_partial_indexes_report_a_unique_violation() {
    let (_dir, db) = fresh().await;
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

#[tokio::test]
async fn placeholders_bind_by_number_whatever_order_they_appear_in() {
    let (_dir, db) = fresh().await;
    db.write(|c| c.execute("INSERT INTO items (n, id) VALUES ($2, $1)", &[&"x", &42i64]))
        .await
        .unwrap();
    let n: i64 = db
        .read(|c| c.query("SELECT n FROM items WHERE id = $1", &[&"x"])?[0].get(0))
        .await
        .unwrap();
    assert_eq!(n, 42);
}

#[tokio::test]
async fn migrations_run_once_even_when_the_database_is_opened_again() {
    let (dir, db) = fresh().await;
    drop(db);
    let db = Db::open_sqlite(&dir.path().join("t.db"), MIGRATIONS)
        .await
        .unwrap();
    let applied: i64 = db
        .read(|c| c.query("SELECT COUNT(*) FROM schema_migrations", &[])?[0].get(0))
        .await
        .unwrap();
    assert_eq!(applied, 1);
}

#[tokio::test]
async fn a_panicking_transaction_is_reported_as_an_error_not_a_hang() {
    let (_dir, db) = fresh().await;
    let result: Result<(), StoreError> = db
        .write(|_c| -> Result<(), StoreError> { panic!("bug in a query closure") })
        .await;
    assert!(result.is_err());
}

#[tokio::test]
async fn the_database_keeps_serving_after_a_closure_panics() {
    let (_dir, db) = fresh().await;
    let _ = db
        .write(|_c| -> Result<(), StoreError> { panic!("bug in a query closure") })
        .await;
    db.write(|c| c.execute("INSERT INTO items (id, n) VALUES ($1, $2)", &[&"a", &1i64]))
        .await
        .unwrap();
}
