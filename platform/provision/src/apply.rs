//! Applying: carrying a plan out, checking what the server kept, and
//! planning again to confirm nothing is left.

use super::*;

/// What [`apply`] did.
#[derive(Debug)]
pub struct Applied {
    /// The plan it carried out.
    pub plan: Plan,
    /// One line per change made, in order.
    pub log: Vec<String>,
}

/// Checks that the config the server returned holds what was sent.
pub(crate) fn verify_kept(
    kind: Kind,
    label: &str,
    sent: &Map<String, Value>,
    reply: &Value,
    facts: &ServerFacts,
) -> Result<(), ProvisionError> {
    let kept = object(reply, "config");
    let lost = diff(kind, sent, &kept, facts.version);
    if lost.is_empty() {
        return Ok(());
    }
    let mut msg = format!(
        "nats-server {} did not keep what was set on {label}:",
        facts.version_text
    );
    for c in &lost {
        let _ = write!(msg, " {} is {} (sent {});", c.field, c.old, c.new);
    }
    msg.push_str(" this server version may not support those fields");
    Err(ProvisionError::Drift(msg))
}

/// Makes the server match `spec`: plans, refuses (changing nothing) if the
/// plan needs a flag it was not given or asks what the server cannot do,
/// then deletes, creates and updates, checking each reply, and finally
/// plans again to confirm nothing is left.
pub async fn apply(
    client: &async_nats::Client,
    spec: &Spec,
    options: &Options,
) -> Result<Applied, ProvisionError> {
    // A service starting while this runs creates its durable consumer itself
    // when it finds the stream but not the consumer; if that happens between
    // our write and our check, the consumer has the service's description
    // instead of the spec's. Each consumer can be caught so at most once (the
    // service finds it the next time), so another round puts it right.
    let mut log = Vec::new();
    let mut rounds = 0;
    loop {
        match apply_round(client, spec, options, &mut log).await {
            Err(ProvisionError::Drift(_)) if rounds < 2 => rounds += 1,
            Ok(plan) => return Ok(Applied { plan, log }),
            Err(e) => return Err(e),
        }
    }
}

/// One round of [`apply`]: plan, then carry the plan out (appending what
/// was done to `log`), then plan again; `Drift` if something still differs.
pub(crate) async fn apply_round(
    client: &async_nats::Client,
    spec: &Spec,
    options: &Options,
    log: &mut Vec<String>,
) -> Result<Plan, ProvisionError> {
    let state = read_state(client).await?;
    let plan = plan(spec, &state, options);
    if !plan.problems.is_empty() {
        return Err(ProvisionError::Refused(format!(
            "{plan}\n\nNothing was changed: {}",
            plan.problems.join("; ")
        )));
    }
    let refused = plan.refused();
    if !refused.is_empty() {
        let names: Vec<String> = refused.iter().map(|i| i.label()).collect();
        return Err(ProvisionError::Refused(format!(
            "{plan}\n\nNothing was changed: {} cannot change in place; \
             --allow-recreate deletes and recreates {}, losing what is listed above",
            names.join(", "),
            if names.len() == 1 { "it" } else { "them" }
        )));
    }
    let api = Api { client };
    let facts = &state.facts;
    // Deletions first (consumers before their streams), so recreated and
    // new resources never meet what they replace.
    for item in plan.items.iter().filter(|i| i.consumer) {
        if let Change::Delete { .. } | Change::Recreate { .. } = item.change {
            api.call(
                &format!("CONSUMER.DELETE.{}.{}", item.stream, item.name),
                Value::Null,
            )
            .await?;
            log.push(format!("deleted {}", item.label()));
        }
    }
    for item in plan.items.iter().filter(|i| !i.consumer) {
        if let Change::Delete { .. } | Change::Recreate { .. } = item.change {
            api.call(&format!("STREAM.DELETE.{}", item.name), Value::Null)
                .await?;
            log.push(format!("deleted {}", item.label()));
        }
    }
    for item in plan.items.iter().filter(|i| !i.consumer) {
        let Some(s) = spec.stream(&item.name) else {
            continue;
        };
        let verb = match item.change {
            Change::Create | Change::Recreate { .. } => "CREATE",
            Change::Update(_) => "UPDATE",
            _ => continue,
        };
        let sent = desired_stream(s, facts, options);
        let reply = api
            .call(
                &format!("STREAM.{verb}.{}", s.name),
                Value::Object(sent.clone()),
            )
            .await?;
        verify_kept(Kind::Stream, &item.label(), &sent, &reply, facts)?;
        log.push(format!("{}d {}", verb.to_lowercase(), item.label()));
    }
    for item in plan.items.iter().filter(|i| i.consumer) {
        let Some(c) = spec.consumer(&item.stream, &item.name) else {
            continue;
        };
        let verb = match item.change {
            Change::Create | Change::Recreate { .. } => "created",
            Change::Update(_) => "updated",
            _ => continue,
        };
        let sent = desired_consumer(c, facts);
        let reply = api
            .call(
                &format!("CONSUMER.DURABLE.CREATE.{}.{}", c.stream, c.name),
                json!({ "stream_name": c.stream, "config": sent }),
            )
            .await?;
        verify_kept(Kind::Consumer, &item.label(), &sent, &reply, facts)?;
        log.push(format!("{verb} {}", item.label()));
    }
    let after = self::plan(spec, &read_state(client).await?, options);
    if after.pending() {
        return Err(ProvisionError::Drift(format!(
            "after applying, the server still differs from the spec:\n{after}"
        )));
    }
    Ok(plan)
}

/// Makes the server's streams and consumers match `spec`, creating and
/// updating only (never recreating or deleting), as `streams apply` does
/// with its defaults. Services never call this; drills, benchmarks and
/// tests do.
pub async fn ensure(client: &async_nats::Client, spec: &Spec) -> Result<(), ProvisionError> {
    apply(client, spec, &Options::default()).await.map(|_| ())
}
