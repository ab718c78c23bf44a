//! Checks of a spec against a product's event catalogue, and reports by
//! owner.

use super::*;

/// Per service (owner), the streams and consumers of a spec: for reports.
pub fn owners(spec: &Spec) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for s in &spec.streams {
        out.entry(s.owner.clone())
            .or_default()
            .push(format!("stream {}", s.name));
    }
    for c in &spec.consumers {
        out.entry(c.owner.clone())
            .or_default()
            .push(format!("consumer {} > {}", c.stream, c.name));
    }
    out
}

/// Whether `spec` and a product's event catalogue agree: every subject a
/// service publishes is held by a stream that service owns, every subject
/// it consumes has its durable consumer (named as the listeners name it,
/// with their ack wait and delivery limit, delivering all, acking
/// explicitly), the spec declares no consumer the code does not run, and
/// parked messages have their stream. `Err` lists every disagreement.
pub fn check_catalogue(
    spec: &Spec,
    catalogue: &[shared::events::ServiceEvents],
) -> Result<(), Vec<String>> {
    use bus::listener::{ListenerOptions, durable_name};
    let defaults = ListenerOptions::default();
    let mut problems = Vec::new();
    let mut expected = Vec::new();
    for service in catalogue {
        let name = service.service;
        for subject in service.publishes {
            match spec.stream_for_subject(subject) {
                None => problems.push(format!(
                    "{name} publishes {subject}; no stream in the spec holds it"
                )),
                Some(stream) if stream.owner != name => problems.push(format!(
                    "stream {} holds {subject}, published by {name}, but is owned by {}",
                    stream.name, stream.owner
                )),
                Some(_) => {}
            }
        }
        for subject in service.consumes {
            let Some(stream) = spec.stream_for_subject(subject) else {
                problems.push(format!(
                    "{name} consumes {subject}; no stream in the spec holds it"
                ));
                continue;
            };
            let durable = durable_name(name, subject);
            expected.push((stream.name.clone(), durable.clone()));
            let Some(c) = spec.consumer(&stream.name, &durable) else {
                problems.push(format!(
                    "{name} consumes {subject}; the spec has no consumer {} > {durable}",
                    stream.name
                ));
                continue;
            };
            let mut differs = |what: &str, ok: bool| {
                if !ok {
                    problems.push(format!(
                        "consumer {durable}: {what} differs from the code's"
                    ));
                }
            };
            differs("owner", c.owner == name);
            differs("filter_subject", c.filter_subject == *subject);
            differs("ack_wait", c.ack_wait == defaults.ack_wait);
            differs(
                "max_deliver",
                c.max_deliver == i64::from(defaults.max_deliver),
            );
            differs(
                "deliver_policy",
                c.deliver_policy == spec::DeliverPolicy::All,
            );
            differs("ack_policy", c.ack_policy == spec::AckPolicy::Explicit);
        }
    }
    for c in &spec.consumers {
        let replays_one = c.stream == bus::jetstream::PARKED_STREAM
            && expected
                .iter()
                .any(|(_, durable)| bus::jetstream::replay_durable(durable) == c.name);
        if !replays_one && !expected.contains(&(c.stream.clone(), c.name.clone())) {
            problems.push(format!(
                "the spec declares consumer {} > {}, which no service runs",
                c.stream, c.name
            ));
        }
    }
    match spec.stream_for_subject(&format!("{}.x", bus::jetstream::PARKED_PREFIX)) {
        Some(s) if s.name == bus::jetstream::PARKED_STREAM => {}
        _ => problems.push(format!(
            "no stream {} holds parked messages ({}.>)",
            bus::jetstream::PARKED_STREAM,
            bus::jetstream::PARKED_PREFIX
        )),
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}
