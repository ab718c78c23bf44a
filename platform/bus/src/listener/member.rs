//! How one member of a listener runs: it joins its durable consumer (and
//! keeps trying), decodes each delivery into its event type, applies it
//! alone or in a batch inside one transaction, and settles the delivery by
//! the outcome.

use super::*;

/// The longest a listener waits between attempts to join its consumer.
/// Short, as the outbox relay's: a node lost or a stream electing a leader
/// answers at once, and with a 10 s cap a service restarted during a NATS
/// cluster's recovery stayed unready ~20 s after the cluster was back (the
/// cluster drill's "ready after").
const MAX_JOIN_RETRY: Duration = Duration::from_secs(1);

/// Delay before the next delivery: doubling from `base`, capped at 30 s.
fn backoff(base: Duration, delivered: u32) -> Duration {
    let factor = 1u32 << delivered.saturating_sub(1).min(10);
    (base * factor).min(Duration::from_secs(30))
}

/// What each member of a listener runs with.
#[derive(Clone)]
pub(super) struct Member {
    pub(super) bus: Arc<dyn Bus>,
    pub(super) service: &'static str,
    pub(super) options: ListenerOptions,
    pub(super) shutdown: Shutdown,
    pub(super) gate: Option<store::Db>,
    /// Joins its consumer only once this says `true`.
    pub(super) after: Option<tokio::sync::watch::Receiver<bool>>,
    pub(super) health: ListenerHealth,
    /// Where listeners added with [`Listeners::on_tx`] run their transactions.
    pub(super) outbox: Option<Outbox>,
}

/// What a member does with the deliveries it takes from its consumer.
pub(super) trait Handling<E: Event>: Clone + Send + Sync + 'static {
    /// Deliveries taken at once (1: one at a time).
    fn batch(&self, options: &ListenerOptions) -> usize;
    fn settle(
        &self,
        service: &'static str,
        options: &ListenerOptions,
        deliveries: Vec<Delivery>,
    ) -> impl Future<Output = ()> + Send;
}

/// An async handler ([`Listeners::on`]): one delivery at a time, in
/// whatever transactions it opens itself.
#[derive(Clone)]
pub(super) struct OneAtATime<H>(pub(super) H);

impl<E, H, Fut> Handling<E> for OneAtATime<H>
where
    E: Event,
    H: Fn(E, EventContext) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Outcome, ListenerError>> + Send + 'static,
{
    fn batch(&self, _: &ListenerOptions) -> usize {
        1
    }

    async fn settle(
        &self,
        service: &'static str,
        options: &ListenerOptions,
        deliveries: Vec<Delivery>,
    ) {
        for delivery in deliveries {
            settle::<E, H, Fut>(service, options, &self.0, delivery).await;
        }
    }
}

/// A handler of [`Listeners::on_tx`], with the service's state bound in.
pub(super) trait TxHandler<E>:
    Fn(&mut OutboxTx<'_>, E, &EventContext) -> Result<Outcome, ListenerError>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<E, H> TxHandler<E> for H where
    H: Fn(&mut OutboxTx<'_>, E, &EventContext) -> Result<Outcome, ListenerError>
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// A handler that runs inside a transaction it is given
/// ([`Listeners::on_tx`]): the deliveries in hand are applied together.
#[derive(Clone)]
pub(super) struct InTransaction<H> {
    pub(super) outbox: Outbox,
    pub(super) handler: H,
}

impl<E, H> Handling<E> for InTransaction<H>
where
    E: Event,
    H: TxHandler<E>,
{
    fn batch(&self, options: &ListenerOptions) -> usize {
        options.batch.max(1)
    }

    async fn settle(
        &self,
        service: &'static str,
        options: &ListenerOptions,
        deliveries: Vec<Delivery>,
    ) {
        settle_batch::<E, H>(service, options, self, deliveries).await;
    }
}

pub(super) fn spawn_members<E: Event>(
    member: Member,
    handling: impl Handling<E>,
) -> Vec<tokio::task::JoinHandle<()>> {
    member.health.set(
        &durable_name(member.service, E::SUBJECT),
        Some(
            format!(
                "listener {} has not joined its consumer yet",
                durable_name(member.service, E::SUBJECT)
            )
            .into(),
        ),
    );
    let mut tasks: Vec<_> = (0..member.options.concurrency.max(1))
        .map(|_| tokio::spawn(run_member::<E, _>(member.clone(), handling.clone())))
        .collect();
    tasks.push(tokio::spawn(report_lag(
        member.bus.clone(),
        ConsumerConfig::new(durable_name(member.service, E::SUBJECT), E::SUBJECT),
        member.shutdown.clone(),
    )));
    tasks
}

/// After a second and then every ten, what the consumer has not yet delivered and what it
/// awaits acks for, as the gauges `consumer_pending` and
/// `consumer_ack_pending` (where the bus can tell).
async fn report_lag(bus: Arc<dyn Bus>, config: ConsumerConfig, mut shutdown: Shutdown) {
    let mut pause = Duration::from_secs(1);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.wait() => return,
        }
        pause = Duration::from_secs(10);
        match bus.consumer_lag(&config).await {
            Ok(Some((pending, ack_pending))) => {
                let labels = [("durable", config.durable.as_str())];
                shared::metrics::set("consumer_pending", &labels, pending as f64);
                shared::metrics::set("consumer_ack_pending", &labels, ack_pending as f64);
            }
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(durable = %config.durable, error = %store::report(&e), "cannot read consumer lag")
            }
        }
    }
}

async fn run_member<E: Event, H: Handling<E>>(member: Member, handling: H) {
    let Member {
        bus,
        service,
        options,
        mut shutdown,
        gate,
        after,
        health,
        outbox: _,
    } = member;
    let batch = handling.batch(&options);
    let config = ConsumerConfig {
        durable: durable_name(service, E::SUBJECT),
        filter_subject: E::SUBJECT.to_owned(),
        ack_wait: options.ack_wait,
        max_deliver: options.max_deliver,
    };
    if let Some(db) = gate {
        tokio::select! {
            _ = db.wait_ready() => {}
            _ = shutdown.wait() => return,
        }
    }
    if let Some(mut after) = after {
        tokio::select! {
            r = after.wait_for(|go| *go) => if r.is_err() { return },
            _ = shutdown.wait() => return,
        }
    }
    // A subscription that ends while the process runs (the bus closed it)
    // is joined again: a listener stops only on the shutdown signal.
    while !shutdown.is_fired() {
        let Some(mut sub) = join(&bus, &config, &health, service, E::SUBJECT, &mut shutdown).await
        else {
            break;
        };
        tracing::debug!(service, durable = %config.durable, "listener started");
        loop {
            let next = tokio::select! {
                next = sub.next() => next,
                _ = shutdown.wait() => break,
            };
            match next {
                None => {
                    if !shutdown.is_fired() {
                        tracing::warn!(service, durable = %config.durable, "the subscription ended; joining the consumer again");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                            _ = shutdown.wait() => {}
                        }
                    }
                    break;
                }
                Some(Err(e)) => {
                    tracing::warn!(service, subject = E::SUBJECT, error = %store::report(&e), "cannot fetch events");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.wait() => break,
                    }
                }
                Some(Ok(first)) => {
                    let mut deliveries = vec![first];
                    while deliveries.len() < batch {
                        match sub.ready() {
                            Some(d) => deliveries.push(d),
                            None => break,
                        }
                    }
                    handling.settle(service, &options, deliveries).await;
                }
            }
        }
    }
    tracing::debug!(service, durable = %config.durable, "listener stopped");
}

/// Joins the listener's durable consumer, retrying with back-off (and
/// saying why in readiness) until it can; `None` on the shutdown signal.
async fn join(
    bus: &Arc<dyn Bus>,
    config: &ConsumerConfig,
    health: &ListenerHealth,
    service: &'static str,
    subject: &'static str,
    shutdown: &mut Shutdown,
) -> Option<crate::Subscription> {
    let mut retry = Duration::from_millis(200);
    loop {
        match bus.subscribe(config.clone()).await {
            Ok(sub) => {
                health.set(&config.durable, None);
                return Some(sub);
            }
            Err(e) => {
                tracing::warn!(service, subject, error = %store::report(&e), "cannot join consumer yet");
                let reason = format!("listener {} cannot join its consumer", config.durable);
                health.set(
                    &config.durable,
                    Some(match e.kind {
                        // "no stream holds …": the operator's to fix, said as it is.
                        crate::BusErrorKind::StreamMissing => {
                            format!("{reason}: {}", e.message).into()
                        }
                        _ => NotReady::with_detail(reason, store::report(&e)),
                    }),
                );
                tokio::select! {
                    _ = tokio::time::sleep(retry) => {}
                    _ = shutdown.wait() => return None,
                }
                retry = (retry * 2).min(MAX_JOIN_RETRY);
            }
        }
    }
}

/// Decodes a delivery's payload; an undecodable one is parked at once
/// (decoding will never succeed) and `None` returned.
async fn decode<E: Event>(service: &'static str, delivery: Delivery) -> Option<(Delivery, E)> {
    match read_event::<E>(&delivery) {
        Ok(e) => Some((delivery, e)),
        Err(e) => {
            let reason = format!("undecodable {} payload: {e}", E::SUBJECT);
            if let Err(err) = delivery.term(reason).await {
                tracing::warn!(service, subject = E::SUBJECT, error = %store::report(&err), "cannot park message");
            }
            None
        }
    }
}

/// A delivery's event, read at the schema version its header names
/// (upcast to the current one where it is older): the one way every path
/// of a listener reads an event.
fn read_event<E: Event>(delivery: &Delivery) -> Result<E, String> {
    let version = delivery
        .message
        .header(shared::events::SCHEMA_VERSION_HEADER)
        .and_then(|v| v.parse().ok());
    shared::events::decode::<E>(version, &delivery.message.payload)
}

/// The consumer's span for one delivery — in the producer's trace (a child
/// of the span that wrote the event), named by the OpenTelemetry messaging
/// conventions — and the context the handler gets.
fn consumer_span(
    service: &'static str,
    subject: &'static str,
    delivery: &Delivery,
) -> (tracing::Span, EventContext) {
    let parent = delivery
        .message
        .header(TRACEPARENT)
        .and_then(TraceContext::parse);
    let span = tracing::info_span!(
        "process",
        otel.name = %format_args!("process {subject}"),
        otel.kind = "consumer",
        messaging.operation.type = "process",
        messaging.destination.name = subject,
        messaging.consumer.group.name = %durable_name(service, subject),
        messaging.message.id = %delivery.message.id,
        messaging.message.delivery_count = delivery.delivered,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
        parent_span_id = tracing::field::Empty,
    );
    let ctx = EventContext {
        trace: shared::trace::join(&span, parent),
        message_id: delivery.message.id.clone(),
        delivered: delivery.delivered,
    };
    (span, ctx)
}

/// Awaits `work`, telling the bus every half ack wait that `deliveries`
/// are still being worked on, so they are not handed to another member
/// meanwhile.
async fn with_progress<T>(
    options: &ListenerOptions,
    deliveries: &[&Delivery],
    work: impl Future<Output = T>,
) -> T {
    tokio::pin!(work);
    // First tick one period from now: `interval`'s immediate first tick
    // still waits for the timer wheel (≈ 1 ms), which capped throughput.
    let period = options.ack_wait / 2;
    let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        tokio::select! {
            r = &mut work => return r,
            _ = progress.tick() => {
                for d in deliveries {
                    let _ = d.in_progress().await;
                }
            }
        }
    }
}

/// Settles a delivery by its handler's result: ack, or nak with back-off.
async fn finish(
    service: &'static str,
    subject: &'static str,
    delivery: Delivery,
    result: Result<Outcome, ListenerError>,
) {
    let delivered = delivery.delivered;
    let settled = match result {
        Ok(Outcome::Done) => {
            shared::metrics::inc(
                "events_handled_total",
                &[("service", service), ("subject", subject)],
            );
            delivery.ack().await
        }
        Ok(Outcome::NotYet(why)) => {
            tracing::debug!(service, subject, delivered, reason = %why, "event early, retrying later");
            delivery
                .nak(backoff(Duration::from_millis(50), delivered))
                .await
        }
        Err(e) => {
            tracing::warn!(service, subject, delivered, error = %store::report(&e), "event handler failed, retrying later");
            shared::metrics::inc(
                "events_failed_total",
                &[("service", service), ("subject", subject)],
            );
            delivery
                .fail(
                    backoff(Duration::from_millis(200), delivered),
                    store::report(&e),
                )
                .await
        }
    };
    if let Err(e) = settled {
        // The message will come back after the ack wait; handlers are idempotent.
        tracing::warn!(service, subject, error = %store::report(&e), "cannot settle delivery");
    }
}

async fn settle<E, H, Fut>(
    service: &'static str,
    options: &ListenerOptions,
    handler: &H,
    delivery: Delivery,
) where
    E: Event,
    H: Fn(E, EventContext) -> Fut,
    Fut: Future<Output = Result<Outcome, ListenerError>>,
{
    let Some((delivery, event)) = decode::<E>(service, delivery).await else {
        return;
    };
    let (span, ctx) = consumer_span(service, E::SUBJECT, &delivery);
    use tracing::Instrument;
    async move {
        let result = with_progress(options, &[&delivery], handler(event, ctx)).await;
        finish(service, E::SUBJECT, delivery, result).await;
    }
    .instrument(span)
    .await
}

/// Why a batch's transaction did not commit.
enum BatchFailed {
    /// The handler of the delivery at this index failed.
    Handler(usize, ListenerError),
    /// The transaction itself (its commit) failed.
    Store(store::StoreError),
}

impl BatchFailed {
    /// The error the failing delivery is settled with.
    fn into_error(self) -> ListenerError {
        match self {
            BatchFailed::Handler(_, e) => e,
            BatchFailed::Store(e) => e.into(),
        }
    }
}

impl From<store::StoreError> for BatchFailed {
    fn from(e: store::StoreError) -> Self {
        BatchFailed::Store(e)
    }
}

/// Runs the handler for every event in one transaction: every outcome, or
/// why nothing was committed.
async fn apply_together<E, H>(
    handling: &InTransaction<H>,
    items: Vec<(E, EventContext, tracing::Span)>,
) -> Result<Vec<Outcome>, BatchFailed>
where
    E: Event,
    H: TxHandler<E>,
{
    let handler = handling.handler.clone();
    handling
        .outbox
        .write(move |tx| {
            let mut outcomes = Vec::with_capacity(items.len());
            for (i, (event, ctx, span)) in items.into_iter().enumerate() {
                let _entered = span.enter();
                match handler(tx, event, &ctx) {
                    Ok(outcome) => outcomes.push(outcome),
                    // Returning the error rolls the whole batch back.
                    Err(e) => return Err(BatchFailed::Handler(i, e)),
                }
            }
            Ok(outcomes)
        })
        .await
}

/// Applies `deliveries` in one transaction and settles each by its outcome
/// once that has committed (acks together, naks for the early ones). If
/// the transaction fails, nothing of it stands and they are applied again
/// one transaction each, so one failing message (a poison one) holds up
/// only itself: it is nak'ed with back-off and, in the end, parked.
async fn settle_batch<E, H>(
    service: &'static str,
    options: &ListenerOptions,
    handling: &InTransaction<H>,
    deliveries: Vec<Delivery>,
) where
    E: Event,
    H: TxHandler<E>,
{
    use tracing::Instrument;
    let subject = E::SUBJECT;
    let mut taken = Vec::with_capacity(deliveries.len());
    let mut items = Vec::with_capacity(deliveries.len());
    for delivery in deliveries {
        let Some((delivery, event)) = decode::<E>(service, delivery).await else {
            continue;
        };
        let (span, ctx) = consumer_span(service, subject, &delivery);
        items.push((event, ctx.clone(), span.clone()));
        taken.push((delivery, span, ctx));
    }
    if taken.is_empty() {
        return;
    }
    let in_hand: Vec<&Delivery> = taken.iter().map(|(d, _, _)| d).collect();
    let together = with_progress(options, &in_hand, apply_together(handling, items)).await;
    let results: Vec<Result<Outcome, ListenerError>> = match together {
        Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
        Err(failed) if taken.len() == 1 => vec![Err(failed.into_error())],
        Err(failed) => {
            let at = match &failed {
                BatchFailed::Handler(i, _) => Some(*i),
                BatchFailed::Store(_) => None,
            };
            let cause = store::report(&failed.into_error());
            tracing::debug!(service, subject, size = taken.len(), failed_at = ?at, error = %cause,
                "batch rolled back; applying its events one at a time");
            let mut results = Vec::with_capacity(taken.len());
            for (delivery, span, ctx) in &taken {
                // It decoded a moment ago (upcasters included), so it
                // decodes again the same way.
                let event = match read_event::<E>(delivery) {
                    Ok(event) => event,
                    Err(e) => {
                        results.push(Err(ListenerError::dependency(
                            "decoding the event",
                            std::io::Error::other(e),
                        )));
                        continue;
                    }
                };
                let one = vec![(event, ctx.clone(), span.clone())];
                let result = with_progress(options, &[delivery], apply_together(handling, one))
                    .instrument(span.clone())
                    .await;
                results.push(match result {
                    Ok(mut outcomes) => Ok(outcomes.remove(0)),
                    Err(failed) => Err(failed.into_error()),
                });
            }
            results
        }
    };
    // Acks (and naks) of the batch go out together: on the embedded bus
    // they share a transaction, on JetStream they overlap on the wire.
    let settled = taken
        .into_iter()
        .zip(results)
        .map(|((delivery, span, _), result)| {
            finish(service, subject, delivery, result).instrument(span)
        });
    futures_util::future::join_all(settled).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let b = Duration::from_millis(100);
        assert_eq!(backoff(b, 1), Duration::from_millis(100));
        assert_eq!(backoff(b, 2), Duration::from_millis(200));
        assert_eq!(backoff(b, 4), Duration::from_millis(800));
        assert_eq!(backoff(b, 50), Duration::from_secs(30));
    }
}
