//! The contract on watches: a watch replays from its start time, marks
//! when it has caught up, then follows.

use super::*;

/// The next item of a watch within [`SOON`].
pub(super) async fn watched(w: &mut crate::Watch) -> crate::Watched {
    match tokio::time::timeout(SOON, w.next()).await {
        Ok(Some(Ok(item))) => item,
        other => panic!(
            "watch gave nothing: {:?}",
            other.map(|o| o.map(|r| r.err()))
        ),
    }
}

pub(super) fn watched_id(item: crate::Watched) -> String {
    match item {
        crate::Watched::Message(m) => m.id,
        crate::Watched::CaughtUp => "caught up".into(),
    }
}

pub async fn a_watch_replays_from_its_start_time_marks_when_caught_up_then_follows(env: Env) {
    use crate::Watched;
    let clock = shared::time::Clock::System;
    env.publish("w", "before", "{}").await;
    // Publication times come from the broker's clock (the same machine's).
    tokio::time::sleep(Duration::from_millis(400)).await;
    let since = clock.now();
    tokio::time::sleep(Duration::from_millis(100)).await;
    for (s, id) in [("w", "h1"), ("other", "x"), ("w", "h2")] {
        env.publish(s, id, "{}").await;
    }
    let mut first = env.bus.watch(&env.subject("w"), since).await.unwrap();
    let mut second = env.bus.watch(&env.subject("w"), since).await.unwrap();
    for w in [&mut first, &mut second] {
        let seen: Vec<String> = [watched(w).await, watched(w).await, watched(w).await]
            .into_iter()
            .map(watched_id)
            .collect();
        assert_eq!(seen, ["h1", "h2", "caught up"]);
    }
    env.publish("w", "live", r#"{"n":1}"#).await;
    // Every watcher gets it (not one member of a group).
    for w in [&mut first, &mut second] {
        match watched(w).await {
            Watched::Message(m) => {
                assert_eq!(
                    (m.id.as_str(), m.payload.as_slice()),
                    ("live", &br#"{"n":1}"#[..])
                );
                assert_eq!(m.subject, env.subject("w"));
            }
            other => panic!("{other:?}"),
        }
    }
    // A watch starting after the last message has no history: caught up at once.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut fresh = env.bus.watch(&env.subject("w"), clock.now()).await.unwrap();
    assert_eq!(watched(&mut fresh).await, Watched::CaughtUp);
    assert!(
        tokio::time::timeout(QUIET, fresh.next()).await.is_err(),
        "nothing more"
    );
}
