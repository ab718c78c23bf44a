//! `testing::hold_paused_clock`: a test on Tokio's paused clock sees no time
//! pass while an SQLite transaction runs. Its own test binary, because the
//! switch is process-wide.

use std::time::Duration;

use store::{Db, StoreError};

async fn slow_write(db: &Db) -> Result<(), StoreError> {
    db.write(|_| {
        // Real time the database spends; the paused clock must not move.
        std::thread::sleep(Duration::from_millis(50));
        Ok::<_, StoreError>(())
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_paused_clock_stands_still_while_the_database_works() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_sqlite(&dir.path().join("t.db"), &[])
        .await
        .unwrap();

    store::testing::hold_paused_clock();
    let start = tokio::time::Instant::now();
    tokio::select! {
        r = slow_write(&db) => r.unwrap(),
        _ = tokio::time::sleep(Duration::from_secs(1)) => {
            panic!("a one-second timer fired during a 50 ms transaction")
        }
    }
    assert_eq!(start.elapsed(), Duration::ZERO);
}
