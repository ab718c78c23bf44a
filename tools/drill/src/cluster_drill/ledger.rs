//! The cluster drill's per-event accounting: every event the services
//! published, read back from the replicated streams by id, against what the
//! owners' databases say must have been published — and every durable
//! consumer's position on those streams.
//!
//! What it proves, once the system has settled:
//! - no event is stored twice (a publish retried across a leader election
//!   landed once: the stream's de-duplication held);
//! - each ticket's and each order's events carry the versions 0..=v of the
//!   owner's row exactly once each: nothing lost (a gap), nothing published
//!   twice under two ids (a repeat), nothing the owner does not have;
//! - each order's timer fired exactly once, and each payment outcome
//!   (authorized, captured, voided) is published at most once per order,
//!   captured exactly for the completed orders;
//! - every durable consumer was delivered everything on its filter and
//!   acknowledged it: no pending, no unacknowledged.
//!
//! Together with the copies at their owners' versions (checked by the
//! drill), that is "every event reached each consumer exactly once in
//! effect": the consumer saw it (its position), applied it (the copy's
//! version moved through it), and a redelivery changed nothing (the copy
//! is not past its owner).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use futures_util::StreamExt;
use serde_json::Value;

/// One event as its stream holds it.
#[derive(Debug, Clone)]
pub struct Stored {
    pub stream: String,
    pub seq: u64,
    pub subject: String,
    /// `Nats-Msg-Id`: the event's id.
    pub id: String,
    pub payload: Value,
}

/// What the owners' databases hold, settled.
#[derive(Debug, Default)]
pub struct Owners {
    /// Ticket id → version.
    pub tickets: HashMap<String, i64>,
    /// Order id → (version, status).
    pub orders: HashMap<String, (i64, String)>,
}

/// Every way the stored events disagree with the owners (empty: they agree).
pub fn audit(stored: &[Stored], owners: &Owners) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen: HashMap<&str, &Stored> = HashMap::new();
    for e in stored {
        if let Some(first) = seen.insert(e.id.as_str(), e) {
            problems.push(format!(
                "event {} ({}) stored twice: {} #{} and {} #{}",
                e.id, e.subject, first.stream, first.seq, e.stream, e.seq
            ));
        }
    }

    // Versioned entities: their events' versions, by entity.
    let mut versions: HashMap<(&str, String), Vec<i64>> = HashMap::new();
    // Unversioned outcomes: how many of each (subject, order).
    let mut outcomes: HashMap<(&str, String), usize> = HashMap::new();
    for e in stored {
        let family = e.subject.split('.').next().unwrap_or_default();
        let field = |name: &str| e.payload[name].as_str().unwrap_or_default().to_owned();
        match family {
            "ticket" | "order" => match e.payload["version"].as_i64() {
                Some(v) => versions
                    .entry((family_name(family), field("id")))
                    .or_default()
                    .push(v),
                None => problems.push(format!("event {} ({}) has no version", e.id, e.subject)),
            },
            "expiration" | "payment" => {
                *outcomes
                    .entry((subject_name(&e.subject), field("orderId")))
                    .or_default() += 1;
            }
            _ => {}
        }
    }
    let owned = owners
        .tickets
        .iter()
        .map(|(id, v)| ("ticket", id, *v))
        .chain(owners.orders.iter().map(|(id, (v, _))| ("order", id, *v)));
    for (family, id, version) in owned {
        let mut got = versions.remove(&(family, id.clone())).unwrap_or_default();
        got.sort_unstable();
        let mut counts: BTreeMap<i64, usize> = BTreeMap::new();
        for v in &got {
            *counts.entry(*v).or_default() += 1;
        }
        let missing: Vec<i64> = (0..=version).filter(|v| !counts.contains_key(v)).collect();
        let repeated: Vec<i64> = counts
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(v, _)| *v)
            .collect();
        let beyond: Vec<i64> = counts.keys().copied().filter(|v| *v > version).collect();
        if !missing.is_empty() {
            problems.push(format!(
                "{family} {id} at version {version}: no event for versions {missing:?}"
            ));
        }
        if !repeated.is_empty() {
            problems.push(format!(
                "{family} {id}: versions {repeated:?} published more than once"
            ));
        }
        if !beyond.is_empty() {
            problems.push(format!(
                "{family} {id} at version {version}: events for versions {beyond:?}"
            ));
        }
    }
    let mut strays: Vec<_> = versions.into_keys().collect();
    strays.sort();
    for (family, id) in strays {
        problems.push(format!(
            "events for {family} {id}, which its owner does not have"
        ));
    }

    for (order, (_, status)) in &owners.orders {
        let count = |subject: &'static str| {
            outcomes
                .get(&(subject, order.clone()))
                .copied()
                .unwrap_or(0)
        };
        let timers = count("expiration.complete");
        if timers != 1 {
            problems.push(format!(
                "order {order}: its timer fired {timers} times (expiration.complete)"
            ));
        }
        for subject in ["payment.authorized", "payment.captured", "payment.voided"] {
            if count(subject) > 1 {
                problems.push(format!(
                    "order {order}: {subject} published {} times",
                    count(subject)
                ));
            }
        }
        if (status == "complete") != (count("payment.captured") == 1) {
            problems.push(format!(
                "order {order} is {status}, payment.captured published {} times",
                count("payment.captured")
            ));
        }
    }
    problems
}

/// The static name of a family (the map keys borrow nothing from events).
fn family_name(family: &str) -> &'static str {
    if family == "ticket" {
        "ticket"
    } else {
        "order"
    }
}

fn subject_name(subject: &str) -> &'static str {
    [
        "expiration.complete",
        "payment.authorized",
        "payment.captured",
        "payment.voided",
        "payment.refunded",
    ]
    .into_iter()
    .find(|s| *s == subject)
    .unwrap_or("other")
}

/// `attempt` until it succeeds or 30 s have passed: a cluster that has
/// just lost or regained a node answers "temporarily unavailable" while its
/// meta leader settles.
pub(super) async fn retrying<T, F, Fut>(mut attempt: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) if tokio::time::Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// When events are missing from the streams although every service's copy
/// is at its owner's version — the consumers applied them, so they had
/// been published and acknowledged — the servers lost them afterwards:
/// said first, so a failed run reads as what it is.
pub fn lost_by_servers(problems: &[String], copies_converged: bool) -> Option<String> {
    let missing = problems
        .iter()
        .filter(|p| p.contains("no event for versions") || p.contains("missing"))
        .count();
    (copies_converged && missing > 0).then(|| {
        format!(
            "{missing} event(s) applied by the services are missing from the streams: \
             the NATS servers lost them after acknowledging them"
        )
    })
}

/// Every event on `stream`, in order (an ordered consumer from the start),
/// and what is wrong with the stream's sequence: numbers it skipped (a
/// message deleted, or lost by the servers), or a count that differs from
/// what it says it holds.
pub async fn read_stream(
    js: &jetstream::Context,
    stream: &str,
) -> anyhow::Result<(Vec<Stored>, Vec<String>)> {
    let events = retrying(|| read_stream_once(js, stream)).await?;
    let state = retrying(|| async {
        let mut s = js.get_stream(stream).await?;
        Ok(s.info().await?.state.clone())
    })
    .await?;
    let problems = sequence_problems(stream, &events, &state);
    Ok((events, problems))
}

/// What is wrong with `events` as the whole content of a stream in `state`:
/// sequence numbers skipped, or a count other than the stream reports.
fn sequence_problems(
    stream: &str,
    events: &[Stored],
    state: &jetstream::stream::State,
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut expected = state.first_sequence;
    for e in events {
        if e.seq != expected {
            problems.push(format!(
                "stream {stream}: sequences {expected}..{} missing",
                e.seq
            ));
        }
        expected = e.seq + 1;
    }
    if events.len() as u64 != state.messages || state.deleted_count.unwrap_or(0) > 0 {
        problems.push(format!(
            "stream {stream}: {} messages read, it holds {} (first {}, last {}, deleted {:?})",
            events.len(),
            state.messages,
            state.first_sequence,
            state.last_sequence,
            state.deleted_count
        ));
    }
    problems
}

async fn read_stream_once(js: &jetstream::Context, stream: &str) -> anyhow::Result<Vec<Stored>> {
    let fail = |e: &dyn std::fmt::Display| anyhow::anyhow!("reading {stream}: {e}");
    let s = js.get_stream(stream).await.map_err(|e| fail(&e))?;
    let consumer = s
        .create_consumer(pull::OrderedConfig::default())
        .await
        .map_err(|e| fail(&e))?;
    let mut remaining = consumer.cached_info().num_pending;
    let mut out = Vec::new();
    if remaining == 0 {
        return Ok(out);
    }
    let mut messages = consumer.messages().await.map_err(|e| fail(&e))?;
    while remaining > 0 {
        let m = match tokio::time::timeout(Duration::from_secs(10), messages.next()).await {
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(e))) => return Err(fail(&e)),
            Ok(None) | Err(_) => return Err(fail(&"the stream stopped answering")),
        };
        remaining -= 1;
        let seq = m.info().map_err(|e| fail(&e))?.stream_sequence;
        let id = m
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id"))
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        out.push(Stored {
            stream: stream.to_owned(),
            seq,
            subject: m.subject.to_string(),
            id,
            payload: serde_json::from_slice(&m.payload).unwrap_or(Value::Null),
        });
    }
    Ok(out)
}

/// Each durable in `spec` that was not delivered everything on its filter
/// or has not acknowledged all of it.
pub async fn behind(
    js: &jetstream::Context,
    spec: &provision::Spec,
) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for c in &spec.consumers {
        let fail = |e: &dyn std::fmt::Display| anyhow::anyhow!("consumer {}: {e}", c.name);
        let info = retrying(|| async {
            let stream = js.get_stream(&c.stream).await.map_err(|e| fail(&e))?;
            stream.consumer_info(&c.name).await.map_err(|e| fail(&e))
        })
        .await?;
        if info.num_pending > 0 || info.num_ack_pending > 0 {
            out.push(format!(
                "{}: {} not delivered, {} not acknowledged",
                c.name, info.num_pending, info.num_ack_pending
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(seq: u64, subject: &str, id: &str, payload: Value) -> Stored {
        Stored {
            stream: subject.split('.').next().unwrap().to_uppercase(),
            seq,
            subject: subject.into(),
            id: id.into(),
            payload,
        }
    }

    fn state(first: u64, last: u64, messages: u64, deleted: u64) -> jetstream::stream::State {
        serde_json::from_value(json!({
            "messages": messages, "bytes": 0, "first_seq": first, "last_seq": last,
            "first_ts": "2026-12-06T00:00:00Z", "last_ts": "2026-12-06T00:00:00Z",
            "consumer_count": 0, "num_deleted": deleted,
        }))
        .unwrap()
    }

    #[test]
    fn events_missing_while_every_copy_converged_are_blamed_on_the_servers() {
        let problems = vec![
            "ticket t at version 2: no event for versions [0]".to_string(),
            "stream TICKETS: sequences 4..6 missing".to_string(),
            "order o: its timer fired 2 times (expiration.complete)".to_string(),
        ];
        let said = lost_by_servers(&problems, true).unwrap();
        assert!(said.starts_with("2 event(s)"), "{said}");
        assert_eq!(
            lost_by_servers(&problems, false),
            None,
            "a copy behind: not proven"
        );
        assert_eq!(
            lost_by_servers(&problems[2..], true),
            None,
            "nothing missing"
        );
    }

    #[test]
    fn a_stream_missing_a_sequence_or_a_message_is_reported() {
        let read = |seqs: &[u64]| -> Vec<Stored> {
            seqs.iter()
                .map(|&n| event(n, "order.created", &format!("e{n}"), json!({})))
                .collect()
        };
        assert!(sequence_problems("ORDERS", &read(&[1, 2, 3]), &state(1, 3, 3, 0)).is_empty());
        let gap = sequence_problems("ORDERS", &read(&[1, 3]), &state(1, 3, 2, 1));
        assert!(gap[0].contains("sequences 2..3 missing"), "{gap:?}");
        assert_eq!(gap.len(), 2, "a deleted message is also counted: {gap:?}");
        let short = sequence_problems("ORDERS", &read(&[1, 2]), &state(1, 3, 3, 0));
        assert!(
            short[0].contains("2 messages read, it holds 3"),
            "{short:?}"
        );
    }

    /// A ticket listed, reserved and sold by an order that was paid: every
    /// event it takes, once.
    fn one_sale() -> (Vec<Stored>, Owners) {
        let events = vec![
            event(1, "ticket.created", "e1", json!({"id": "t", "version": 0})),
            event(1, "order.created", "e2", json!({"id": "o", "version": 0})),
            event(2, "ticket.updated", "e3", json!({"id": "t", "version": 1})),
            event(1, "payment.authorized", "e4", json!({"orderId": "o"})),
            event(2, "order.completed", "e5", json!({"id": "o", "version": 1})),
            event(3, "ticket.updated", "e6", json!({"id": "t", "version": 2})),
            event(2, "payment.captured", "e7", json!({"orderId": "o"})),
            event(1, "expiration.complete", "e8", json!({"orderId": "o"})),
        ];
        let owners = Owners {
            tickets: HashMap::from([("t".into(), 2)]),
            orders: HashMap::from([("o".into(), (1, "complete".into()))]),
        };
        (events, owners)
    }

    #[test]
    fn a_full_history_agrees_with_its_owners() {
        let (events, owners) = one_sale();
        assert_eq!(audit(&events, &owners), Vec::<String>::new());
    }

    #[test]
    fn a_lost_event_is_a_gap_in_its_entitys_versions() {
        let (mut events, owners) = one_sale();
        events.retain(|e| e.id != "e3");
        let problems = audit(&events, &owners);
        assert_eq!(
            problems,
            ["ticket t at version 2: no event for versions [1]"]
        );
    }

    #[test]
    fn an_event_stored_twice_or_republished_under_a_new_id_is_caught() {
        let (mut events, owners) = one_sale();
        let mut again = events[4].clone();
        again.seq = 3;
        events.push(again);
        let mut renamed = events[0].clone();
        renamed.id = "e9".into();
        renamed.seq = 4;
        events.push(renamed);
        let problems = audit(&events, &owners);
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("event e5 (order.completed) stored twice")),
            "{problems:?}"
        );
        assert!(
            problems.contains(&"ticket t: versions [0] published more than once".to_owned()),
            "{problems:?}"
        );
        assert!(
            problems.contains(&"order o: versions [1] published more than once".to_owned()),
            "{problems:?}"
        );
    }

    #[test]
    fn outcomes_are_counted_per_order() {
        let (mut events, owners) = one_sale();
        events.retain(|e| e.subject != "expiration.complete" && e.subject != "payment.captured");
        events.push(event(9, "payment.voided", "v1", json!({"orderId": "o"})));
        events.push(event(10, "payment.voided", "v2", json!({"orderId": "o"})));
        let problems = audit(&events, &owners);
        assert_eq!(
            problems,
            [
                "order o: its timer fired 0 times (expiration.complete)",
                "order o: payment.voided published 2 times",
                "order o is complete, payment.captured published 0 times",
            ]
        );
    }

    #[test]
    fn events_beyond_or_outside_the_owners_are_caught() {
        let (mut events, owners) = one_sale();
        events.push(event(
            7,
            "ticket.updated",
            "x1",
            json!({"id": "t", "version": 3}),
        ));
        events.push(event(
            8,
            "ticket.created",
            "x2",
            json!({"id": "u", "version": 0}),
        ));
        let problems = audit(&events, &owners);
        assert_eq!(
            problems,
            [
                "ticket t at version 2: events for versions [3]",
                "events for ticket u, which its owner does not have",
            ]
        );
    }
}
