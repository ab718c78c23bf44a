//! The bus contract, as a test suite written once and run against every
//! implementation. An implementation's test file calls
//! [`bus_contract_tests!`](crate::bus_contract_tests) with an async function
//! returning a fresh, isolated [`Env`].
//!
//! Timing-based cases use short ack waits and generous margins so they hold on
//! a loaded CI machine as well as against a real broker.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use crate::{Bus, ConsumerConfig, Delivery, Message, Subscription};

mod parking;
mod watch;

pub use parking::*;
pub use watch::*;

/// A fresh bus and a subject prefix no other test uses.
pub struct Env {
    pub bus: Arc<dyn Bus>,
    /// Every subject a test uses starts with `{prefix}.`; a JetStream harness
    /// provides a stream covering `{prefix}.>`.
    pub prefix: String,
    /// Keeps temporary directories or servers alive for the test's duration.
    pub guard: Box<dyn std::any::Any + Send>,
}

impl Env {
    /// Publishes `body` on `{prefix}.{s}` with message id `id`.
    async fn publish(&self, s: &str, id: &str, body: &str) -> crate::PublishAck {
        self.bus
            .publish(msg(self.subject(s), id, body))
            .await
            .unwrap()
    }

    fn subject(&self, s: &str) -> String {
        format!("{}.{s}", self.prefix)
    }

    fn durable(&self, s: &str) -> String {
        format!("{}-{s}", self.prefix.replace('.', "-"))
    }

    fn config(&self, durable: &str, filter: &str) -> ConsumerConfig {
        ConsumerConfig {
            durable: self.durable(durable),
            filter_subject: self.subject(filter),
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
        }
    }
}

fn msg(subject: String, id: &str, body: &str) -> Message {
    Message {
        subject,
        id: id.to_owned(),
        headers: vec![(
            "traceparent".into(),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
        )],
        payload: body.as_bytes().to_vec(),
    }
}

/// The next delivery within `wait`, or `None`.
pub async fn next_within(sub: &mut Subscription, wait: Duration) -> Option<Delivery> {
    match tokio::time::timeout(wait, sub.next()).await {
        Ok(Some(Ok(d))) => Some(d),
        Ok(Some(Err(e))) => panic!("subscription failed: {e}"),
        Ok(None) | Err(_) => None,
    }
}

const SOON: Duration = Duration::from_secs(5);

/// Takes `n` deliveries from `sub`, whichever they are, and acks each.
async fn ack_next(sub: &mut Subscription, n: usize) {
    for _ in 0..n {
        next_within(sub, SOON)
            .await
            .expect("message")
            .ack()
            .await
            .unwrap();
    }
}

/// Takes the deliveries with message ids `ids` from `sub`, in that order,
/// and acks each; `what` names them when one does not come.
async fn ack_in_order(sub: &mut Subscription, ids: impl IntoIterator<Item = String>, what: &str) {
    for id in ids {
        let d = next_within(sub, SOON).await.expect(what);
        assert_eq!(d.message.id, id);
        d.ack().await.unwrap();
    }
}

/// Nothing more comes on `sub` for a while; `what` says what did.
async fn quiet(sub: &mut Subscription, what: &str) {
    if let Some(d) = next_within(sub, QUIET).await {
        panic!("{what}: {} (delivery {})", d.message.id, d.delivered);
    }
}
const QUIET: Duration = Duration::from_millis(700);

pub async fn a_published_message_is_delivered_with_its_subject_id_headers_and_payload(env: Env) {
    let mut sub = env.bus.subscribe(env.config("c", "a")).await.unwrap();
    let ack = env.publish("a", "m1", r#"{"n":1}"#).await;
    assert!(!ack.duplicate);
    let d = next_within(&mut sub, SOON)
        .await
        .expect("message delivered");
    assert_eq!(d.message.subject, env.subject("a"));
    assert_eq!(d.message.id, "m1");
    assert_eq!(d.message.payload, br#"{"n":1}"#);
    assert_eq!(
        d.message.header("traceparent"),
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    );
    assert_eq!(d.delivered, 1);
    d.ack().await.unwrap();
    quiet(&mut sub, "an acked message came back").await;
}

pub async fn a_message_id_seen_before_is_not_stored_twice(env: Env) {
    let first = env.publish("a", "same", "1").await;
    let second = env.publish("a", "same", "1").await;
    assert!(!first.duplicate);
    assert!(second.duplicate);
    assert_eq!(first.seq, second.seq);
    let mut sub = env.bus.subscribe(env.config("c", "a")).await.unwrap();
    next_within(&mut sub, SOON)
        .await
        .expect("one copy")
        .ack()
        .await
        .unwrap();
    quiet(&mut sub, "a duplicate was delivered").await;
}

pub async fn a_new_durable_replays_the_stream_from_the_first_message_in_order(env: Env) {
    for i in 0..5 {
        env.publish("a", &format!("m{i}"), &i.to_string()).await;
    }
    let mut sub = env.bus.subscribe(env.config("late", "a")).await.unwrap();
    ack_in_order(
        &mut sub,
        (0..5).map(|i| format!("m{i}")),
        "replayed message",
    )
    .await;
}

/// A read model rebuilding itself: after a rewind the durable hands out its
/// subject's whole history again, in order, then what comes next. A durable
/// that does not exist is no error.
pub async fn a_rewound_durable_replays_the_stream_from_the_first_message(env: Env) {
    env.bus
        .rewind(&env.config("never-made", "a"))
        .await
        .expect("rewinding a durable that does not exist");
    let config = env.config("rebuild", "a");
    let mut sub = env.bus.subscribe(config.clone()).await.unwrap();
    for i in 0..3 {
        env.publish("a", &format!("m{i}"), "x").await;
    }
    env.publish("b", "other", "x").await;
    ack_next(&mut sub, 3).await;
    drop(sub);
    env.bus.rewind(&config).await.expect("rewind");
    env.publish("a", "m3", "x").await;
    let mut again = env.bus.subscribe(config).await.unwrap();
    ack_in_order(
        &mut again,
        (0..4).map(|i| format!("m{i}")),
        "the history again",
    )
    .await;
    quiet(&mut again, "more than the history came back").await;
}

/// A member that goes away may leave a pull request behind on a broker; a
/// message it strands is delivered again within the ack wait, so the wait
/// for the new message covers the ack wait.
pub async fn a_durable_resumes_where_it_left_off(env: Env) {
    let mut config = env.config("c", "a");
    config.ack_wait = Duration::from_secs(2);
    let mut sub = env.bus.subscribe(config.clone()).await.unwrap();
    for i in 0..3 {
        env.publish("a", &format!("m{i}"), "x").await;
    }
    ack_next(&mut sub, 3).await;
    drop(sub);
    env.publish("a", "m3", "x").await;
    let mut again = env.bus.subscribe(config).await.unwrap();
    let d = next_within(&mut again, SOON)
        .await
        .expect("the new message");
    assert_eq!(d.message.id, "m3");
    d.ack().await.unwrap();
    quiet(&mut again, "acked messages came back").await;
}

pub async fn consumers_see_only_subjects_their_filter_matches(env: Env) {
    let mut only_a = env.bus.subscribe(env.config("a", "a")).await.unwrap();
    let mut all = env.bus.subscribe(env.config("all", ">")).await.unwrap();
    env.publish("b", "b1", "x").await;
    env.publish("a", "a1", "x").await;
    let d = next_within(&mut only_a, SOON).await.expect("a1");
    assert_eq!(d.message.id, "a1");
    d.ack().await.unwrap();
    quiet(&mut only_a, "a message came back").await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let d = next_within(&mut all, SOON).await.expect("both");
        ids.push(d.message.id.clone());
        d.ack().await.unwrap();
    }
    assert_eq!(ids, ["b1", "a1"]);
}

pub async fn every_durable_gets_every_message(env: Env) {
    let mut one = env.bus.subscribe(env.config("one", "a")).await.unwrap();
    let mut two = env.bus.subscribe(env.config("two", "a")).await.unwrap();
    env.publish("a", "m", "x").await;
    next_within(&mut one, SOON)
        .await
        .expect("one gets it")
        .ack()
        .await
        .unwrap();
    next_within(&mut two, SOON)
        .await
        .expect("two gets it")
        .ack()
        .await
        .unwrap();
}

pub async fn members_of_one_durable_share_the_messages_without_duplicates(env: Env) {
    const N: usize = 40;
    let members: Vec<Subscription> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(env.bus.subscribe(env.config("group", "a")).await.unwrap());
        }
        v
    };
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut tasks = Vec::new();
    for mut sub in members {
        let seen = seen.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(d) = next_within(&mut sub, Duration::from_secs(2)).await {
                seen.lock().unwrap().push(d.message.id.clone());
                d.ack().await.unwrap();
            }
        }));
    }
    for i in 0..N {
        env.publish("a", &format!("m{i}"), "x").await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    let seen = seen.lock().unwrap().clone();
    let unique: HashSet<_> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), N, "every message handled");
    assert_eq!(seen.len(), N, "no message handled twice: {seen:?}");
}

pub async fn a_nak_redelivers_after_the_delay(env: Env) {
    let mut sub = env.bus.subscribe(env.config("c", "a")).await.unwrap();
    env.publish("a", "m", "x").await;
    let d = next_within(&mut sub, SOON).await.expect("first delivery");
    let start = tokio::time::Instant::now();
    d.nak(Duration::from_millis(500)).await.unwrap();
    let again = next_within(&mut sub, SOON).await.expect("redelivered");
    assert!(
        start.elapsed() >= Duration::from_millis(400),
        "redelivered too early: {:?}",
        start.elapsed()
    );
    assert_eq!(again.message.id, "m");
    assert_eq!(again.delivered, 2);
    again.ack().await.unwrap();
}

pub async fn an_unacknowledged_message_is_redelivered_after_the_ack_wait(env: Env) {
    let mut config = env.config("c", "a");
    config.ack_wait = Duration::from_secs(1);
    let mut sub = env.bus.subscribe(config).await.unwrap();
    env.publish("a", "m", "x").await;
    let first = next_within(&mut sub, SOON).await.expect("first delivery");
    let start = tokio::time::Instant::now();
    drop(first); // neither acked nor nak'ed: as if the handler crashed
    let again = next_within(&mut sub, SOON)
        .await
        .expect("redelivered after ack wait");
    assert!(
        start.elapsed() >= Duration::from_millis(800),
        "redelivered before the ack wait"
    );
    assert_eq!(again.delivered, 2);
    again.ack().await.unwrap();
}

pub async fn progress_acks_keep_a_slow_message_from_being_redelivered(env: Env) {
    let mut config = env.config("c", "a");
    config.ack_wait = Duration::from_secs(1);
    let mut worker = env.bus.subscribe(config.clone()).await.unwrap();
    let mut other = env.bus.subscribe(config).await.unwrap();
    env.publish("a", "slow", "x").await;
    let d = match next_within(&mut worker, SOON).await {
        Some(d) => d,
        None => {
            // The other member won it; swap roles.
            std::mem::swap(&mut worker, &mut other);
            next_within(&mut worker, SOON)
                .await
                .expect("delivered to someone")
        }
    };
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        d.in_progress().await.unwrap();
    }
    assert!(
        next_within(&mut other, Duration::from_millis(300))
            .await
            .is_none(),
        "redelivered while in progress"
    );
    d.ack().await.unwrap();
    assert!(
        next_within(&mut other, Duration::from_millis(1500))
            .await
            .is_none(),
        "redelivered after ack"
    );
}

/// What a batching listener relies on: after `next` returns, `ready`
/// hands over deliveries the member already holds, at once and in stream
/// order, and together with later `next` calls every message comes exactly
/// once.
pub async fn deliveries_in_hand_are_taken_at_once_in_order(env: Env) {
    for i in 0..20 {
        env.publish("a", &format!("m{i:02}"), "x").await;
    }
    let mut sub = env.bus.subscribe(env.config("c", "a")).await.unwrap();
    let mut ids = Vec::new();
    while ids.len() < 20 {
        let first = next_within(&mut sub, SOON).await.expect("a delivery");
        let mut batch = vec![first];
        // Never waits: either one is in hand or it is `None` at once.
        let taken = tokio::time::timeout(Duration::from_millis(100), async {
            while let Some(d) = sub.ready() {
                batch.push(d);
            }
        })
        .await;
        assert!(taken.is_ok(), "ready() waited");
        for d in batch {
            ids.push(d.message.id.clone());
            d.ack().await.unwrap();
        }
    }
    let expected: Vec<String> = (0..20).map(|i| format!("m{i:02}")).collect();
    assert_eq!(ids, expected);
    quiet(&mut sub, "an acked message came back").await;
}

/// A member that dies in the middle of a batch (some acked, the rest
/// neither acked nor nak'ed): exactly the unacknowledged ones come back,
/// after the ack wait — nothing lost, nothing acked delivered again.
pub async fn a_batch_abandoned_half_acknowledged_redelivers_exactly_the_rest(env: Env) {
    let mut config = env.config("c", "a");
    config.ack_wait = Duration::from_secs(1);
    for i in 0..6 {
        env.publish("a", &format!("m{i}"), "x").await;
    }
    let mut sub = env.bus.subscribe(config.clone()).await.unwrap();
    let mut held = Vec::new();
    while held.len() < 6 {
        held.push(next_within(&mut sub, SOON).await.expect("a delivery"));
        while let Some(d) = sub.ready() {
            held.push(d);
        }
    }
    let rest = held.split_off(3);
    for d in held {
        d.ack().await.unwrap();
    }
    drop(rest); // the crash: neither acked nor nak'ed
    drop(sub);
    let mut sub = env.bus.subscribe(config).await.unwrap();
    let mut again = Vec::new();
    while let Some(d) = next_within(&mut sub, Duration::from_secs(3)).await {
        again.push((d.message.id.clone(), d.delivered));
        d.ack().await.unwrap();
    }
    assert_eq!(
        again,
        [
            ("m3".to_string(), 2),
            ("m4".to_string(), 2),
            ("m5".to_string(), 2)
        ]
    );
}

/// Expands to one `#[tokio::test]` per contract case, each given a fresh
/// environment from `$fresh` (an async fn returning [`Env`]).
#[macro_export]
macro_rules! bus_contract_tests {
    ($fresh:path) => {
        $crate::bus_contract_tests!(@cases $fresh,
            a_published_message_is_delivered_with_its_subject_id_headers_and_payload,
            a_message_id_seen_before_is_not_stored_twice,
            a_new_durable_replays_the_stream_from_the_first_message_in_order,
            a_durable_resumes_where_it_left_off,
            a_rewound_durable_replays_the_stream_from_the_first_message,
            consumers_see_only_subjects_their_filter_matches,
            every_durable_gets_every_message,
            members_of_one_durable_share_the_messages_without_duplicates,
            a_nak_redelivers_after_the_delay,
            an_unacknowledged_message_is_redelivered_after_the_ack_wait,
            progress_acks_keep_a_slow_message_from_being_redelivered,
            a_message_out_of_deliveries_is_parked_and_does_not_block_the_rest,
            a_terminated_message_is_parked_with_its_reason_and_never_redelivered,
            a_message_whose_last_delivery_times_out_is_parked,
            a_watch_replays_from_its_start_time_marks_when_caught_up_then_follows,
            deliveries_in_hand_are_taken_at_once_in_order,
            a_batch_abandoned_half_acknowledged_redelivers_exactly_the_rest,
            a_failed_message_is_parked_with_its_last_error_headers_and_payload,
            a_replay_goes_to_the_durable_that_parked_it_once_and_marks_the_record,
            a_replay_that_fails_again_is_parked_again_as_a_record_of_its_own,
            a_replay_whose_last_delivery_times_out_is_parked_again,
            a_discarded_message_keeps_its_reason_and_is_never_replayed,
        );
    };
    (@cases $fresh:path, $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                if let Some(env) = $fresh().await {
                    $crate::contract::$case(env).await;
                }
            }
        )*
    };
}
