//! The contract on parking: a message out of deliveries, terminated or
//! failed is parked with its reason and never blocks the rest; a parked
//! message is replayed to the durable that parked it once, or discarded.

use super::*;

pub async fn a_message_out_of_deliveries_is_parked_and_does_not_block_the_rest(env: Env) {
    let mut config = env.config("c", "a");
    config.max_deliver = 2;
    let mut sub = env.bus.subscribe(config.clone()).await.unwrap();
    env.publish("a", "poison", "x").await;
    for attempt in 1..=2 {
        let d = next_within(&mut sub, SOON).await.expect("delivery");
        assert_eq!((d.message.id.as_str(), d.delivered), ("poison", attempt));
        d.nak(Duration::from_millis(50)).await.unwrap();
    }
    env.publish("a", "fine", "x").await;
    let d = next_within(&mut sub, SOON)
        .await
        .expect("the next message flows");
    assert_eq!(d.message.id, "fine");
    d.ack().await.unwrap();
    quiet(&mut sub, "the poison message came back").await;
    let parked = wait_for_parked(&env, &config.durable, 1).await;
    assert_eq!(parked[0].id, "poison");
    assert_eq!(parked[0].deliveries, 2);
}

pub async fn a_terminated_message_is_parked_with_its_reason_and_never_redelivered(env: Env) {
    let mut sub = env.bus.subscribe(env.config("c", "a")).await.unwrap();
    env.publish("a", "bad", "not json").await;
    let d = next_within(&mut sub, SOON).await.expect("delivery");
    d.term("undecodable").await.unwrap();
    quiet(&mut sub, "terminated message came back").await;
    let parked = wait_for_parked(&env, &env.durable("c"), 1).await;
    assert_eq!(parked[0].id, "bad");
    assert!(
        parked[0].reason.contains("undecodable"),
        "{}",
        parked[0].reason
    );
    assert_eq!(
        shared::metrics::get(
            "bus_parked_total",
            &[("consumer", &env.durable("c")), ("cause", "terminated")]
        ),
        1,
        "counted by its cause"
    );
}

pub async fn a_message_whose_last_delivery_times_out_is_parked(env: Env) {
    let mut config = env.config("c", "a");
    config.ack_wait = Duration::from_secs(1);
    config.max_deliver = 2;
    let mut sub = env.bus.subscribe(config.clone()).await.unwrap();
    env.publish("a", "hang", "x").await;
    for attempt in 1..=2 {
        let d = next_within(&mut sub, SOON).await.expect("delivery");
        assert_eq!((d.message.id.as_str(), d.delivered), ("hang", attempt));
        drop(d); // its handler never finishes: the ack wait runs out
    }
    assert!(
        next_within(&mut sub, Duration::from_millis(1500))
            .await
            .is_none(),
        "delivered more than max_deliver times"
    );
    let parked = wait_for_parked(&env, &config.durable, 1).await;
    assert_eq!((parked[0].id.as_str(), parked[0].deliveries), ("hang", 2));
    assert_eq!(
        shared::metrics::get(
            "bus_parked_total",
            &[
                ("consumer", &config.durable),
                ("cause", "out_of_deliveries")
            ]
        ),
        1,
        "counted by its cause"
    );
}

pub async fn a_failed_message_is_parked_with_its_last_error_headers_and_payload(env: Env) {
    let before = shared::time::Clock::System.now().millis();
    let mut config = env.config("c", "a");
    config.max_deliver = 2;
    let mut sub = env.bus.subscribe(config.clone()).await.unwrap();
    env.publish("a", "poison", "{\"n\":1}").await;
    for attempt in 1..=2 {
        let d = next_within(&mut sub, SOON).await.expect("delivery");
        d.fail(Duration::from_millis(50), format!("boom {attempt}"))
            .await
            .unwrap();
    }
    let parked = wait_for_parked(&env, &config.durable, 1).await;
    let p = &parked[0];
    assert_eq!((p.id.as_str(), p.deliveries), ("poison", 2));
    assert_eq!(p.subject, env.subject("a"));
    assert!(p.reason.contains("boom 2"), "reason: {}", p.reason);
    assert_eq!(
        shared::metrics::get(
            "bus_parked_total",
            &[("consumer", &config.durable), ("cause", "failed")]
        ),
        1,
        "counted by its cause"
    );

    assert_eq!(p.payload, b"{\"n\":1}");
    assert_eq!(p.trace_id(), Some("0af7651916cd43dd8448eb211c80319c"));
    assert_eq!(p.state, crate::ParkedState::Parked);
    assert!(
        p.parked_at.millis() >= before - 1_000,
        "parked at {:?}",
        p.parked_at
    );

    // Listing filters by consumer and by time.
    let mine = |since: Option<shared::time::Timestamp>| crate::ParkedFilter {
        consumer: Some(config.durable.clone()),
        since,
        waiting_only: false,
    };
    assert_eq!(env.bus.parked_messages(&mine(None)).await.unwrap(), parked);
    let later = shared::time::Timestamp::from_millis(p.parked_at.millis() + 60_000);
    assert!(
        env.bus
            .parked_messages(&mine(Some(later)))
            .await
            .unwrap()
            .is_empty()
    );
    let others = crate::ParkedFilter {
        consumer: Some(env.durable("nobody")),
        ..Default::default()
    };
    assert!(env.bus.parked_messages(&others).await.unwrap().is_empty());
}

pub async fn a_replay_goes_to_the_durable_that_parked_it_once_and_marks_the_record(env: Env) {
    let mut failing = env.bus.subscribe(env.config("c", "a")).await.unwrap();
    let mut other = env.bus.subscribe(env.config("d", "a")).await.unwrap();
    let original = msg(env.subject("a"), "m1", "payload");
    env.bus.publish(original.clone()).await.unwrap();
    let d = next_within(&mut failing, SOON).await.expect("delivery");
    d.term("handler bug").await.unwrap();
    let d = next_within(&mut other, SOON).await.expect("delivery");
    d.ack().await.unwrap();
    let durable = env.durable("c");
    let record = wait_for_parked(&env, &durable, 1).await.remove(0);

    let crate::Resolution::Done(replayed) = env.bus.replay_parked(record.record).await.unwrap()
    else {
        panic!("not replayed");
    };
    assert!(matches!(
        replayed.state,
        crate::ParkedState::Replayed { .. }
    ));
    let d = next_within(&mut failing, SOON).await.expect("the replay");
    assert_eq!(d.message.subject, original.subject);
    assert_eq!(d.message.id, original.id);
    assert_eq!(d.message.payload, original.payload);
    assert_eq!(
        d.message.header("traceparent"),
        original.header("traceparent")
    );
    assert_eq!(d.seq, record.seq);
    d.ack().await.unwrap();
    quiet(&mut other, "another durable saw the replay").await;

    // A second replay changes nothing; the record says what happened.
    assert!(matches!(
        env.bus.replay_parked(record.record).await.unwrap(),
        crate::Resolution::Already(p) if matches!(p.state, crate::ParkedState::Replayed { .. })
    ));
    quiet(&mut failing, "replayed twice").await;
    assert!(env.bus.parked(&durable).await.unwrap().is_empty());
    let all = env
        .bus
        .parked_messages(&crate::ParkedFilter {
            consumer: Some(durable),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 1);
    assert!(matches!(all[0].state, crate::ParkedState::Replayed { .. }));
}

pub async fn a_replay_that_fails_again_is_parked_again_as_a_record_of_its_own(env: Env) {
    let mut sub = env.bus.subscribe(env.config("c", "a")).await.unwrap();
    env.publish("a", "m1", "x").await;
    let d = next_within(&mut sub, SOON).await.expect("delivery");
    d.term("first").await.unwrap();
    let durable = env.durable("c");
    let first = wait_for_parked(&env, &durable, 1).await.remove(0);
    env.bus.replay_parked(first.record).await.unwrap();
    let d = next_within(&mut sub, SOON).await.expect("the replay");
    d.term("second").await.unwrap();
    let again = wait_for_parked(&env, &durable, 1).await.remove(0);
    assert_ne!(again.record, first.record);
    assert_eq!((again.id.as_str(), again.seq), ("m1", first.seq));
    assert!(again.reason.contains("second"), "reason: {}", again.reason);
    assert!(matches!(
        env.bus.replay_parked(again.record).await.unwrap(),
        crate::Resolution::Done(_)
    ));
    let d = next_within(&mut sub, SOON)
        .await
        .expect("the second replay");
    assert_eq!(d.message.id, "m1");
    d.ack().await.unwrap();
}

pub async fn a_replay_whose_last_delivery_times_out_is_parked_again(env: Env) {
    let mut config = env.config("c", "a");
    config.ack_wait = Duration::from_secs(1);
    config.max_deliver = 1;
    let mut sub = env.bus.subscribe(config.clone()).await.unwrap();
    env.publish("a", "m1", "x").await;
    let d = next_within(&mut sub, SOON).await.expect("delivery");
    d.term("first").await.unwrap();
    let first = wait_for_parked(&env, &config.durable, 1).await.remove(0);
    env.bus.replay_parked(first.record).await.unwrap();
    let d = next_within(&mut sub, SOON).await.expect("the replay");
    assert_eq!(d.message.id, "m1");
    drop(d); // its handler hangs: the replay's one delivery runs out
    assert!(
        next_within(&mut sub, Duration::from_millis(1500))
            .await
            .is_none(),
        "the replay was delivered more than max_deliver times"
    );
    let again = wait_for_parked(&env, &config.durable, 1).await.remove(0);
    assert_ne!(again.record, first.record);
    assert_eq!((again.id.as_str(), again.seq), ("m1", first.seq));
    assert_eq!(again.subject, first.subject);
    assert!(
        again.reason.contains("not acknowledged"),
        "reason: {}",
        again.reason
    );
}

pub async fn a_discarded_message_keeps_its_reason_and_is_never_replayed(env: Env) {
    let mut sub = env.bus.subscribe(env.config("c", "a")).await.unwrap();
    env.publish("a", "m1", "x").await;
    let d = next_within(&mut sub, SOON).await.expect("delivery");
    d.term("bad").await.unwrap();
    let durable = env.durable("c");
    let record = wait_for_parked(&env, &durable, 1).await.remove(0);
    let done = env
        .bus
        .discard_parked(record.record, "refunded by hand".into())
        .await
        .unwrap();
    let crate::Resolution::Done(p) = done else {
        panic!("not discarded: {done:?}");
    };
    assert!(
        matches!(&p.state, crate::ParkedState::Discarded { reason, .. } if reason == "refunded by hand")
    );
    assert!(matches!(
        env.bus.replay_parked(record.record).await.unwrap(),
        crate::Resolution::Already(_)
    ));
    quiet(&mut sub, "a discarded message came back").await;
    assert!(env.bus.parked(&durable).await.unwrap().is_empty());
    assert_eq!(
        env.bus.replay_parked(1 << 50).await.unwrap(),
        crate::Resolution::NotFound
    );
}

pub(super) async fn wait_for_parked(
    env: &Env,
    durable: &str,
    n: usize,
) -> Vec<crate::ParkedMessage> {
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        let parked = env.bus.parked(durable).await.unwrap();
        if parked.len() >= n || tokio::time::Instant::now() > deadline {
            assert_eq!(parked.len(), n, "parked: {parked:?}");
            return parked;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
