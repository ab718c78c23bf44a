//! The event bus: what every implementation promises ([`Bus`]), the embedded
//! durable implementation, the transactional outbox and its relay, and the
//! typed listener runner services use to consume events.
//!
//! Semantics (the same for the embedded bus and JetStream):
//! - publishing is acknowledged once the message is durable, and a message id
//!   seen before is not stored twice (de-duplication);
//! - a durable consumer is named, filters by subject, starts from the first
//!   message when new, and survives restarts;
//! - every subscriber of the same durable is a member of one group: each
//!   message goes to one member at a time;
//! - a delivery is acked, nak'ed with a delay, or terminated; one neither
//!   acked nor nak'ed within the ack wait is delivered again;
//! - a message delivered `max_deliver` times without an ack, or terminated, is
//!   parked: recorded, logged and counted, and no longer blocks the consumer.

pub mod embedded;
pub mod jetstream;
pub mod listener;
pub mod outbox;
pub mod subject;

#[cfg(feature = "testing")]
pub mod contract;

use std::sync::Arc;
use std::time::Duration;

pub use shared::http::BoxFuture;

/// A message as published and as delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub subject: String,
    /// Unique id; the de-duplication key (`Nats-Msg-Id` on JetStream).
    pub id: String,
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
}

impl Message {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The bus's answer to a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishAck {
    /// Position of the message in its stream.
    pub seq: u64,
    /// True when the id was seen before and nothing new was stored.
    pub duplicate: bool,
}

/// A durable consumer's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerConfig {
    /// Durable name, shared by all members of the group.
    pub durable: String,
    /// Subject filter (`*` matches one token, `>` the rest).
    pub filter_subject: String,
    /// How long a delivery may stay unacknowledged before it is redelivered.
    pub ack_wait: Duration,
    /// Deliveries after which an unacknowledged message is parked.
    pub max_deliver: u32,
}

impl ConsumerConfig {
    pub fn new(durable: impl Into<String>, filter_subject: impl Into<String>) -> Self {
        ConsumerConfig {
            durable: durable.into(),
            filter_subject: filter_subject.into(),
            ack_wait: Duration::from_secs(30),
            max_deliver: 20,
        }
    }
}

/// A message that gave up on one durable consumer — terminated, or out of
/// deliveries — as the bus recorded it: everything needed to understand it
/// and to deliver it again to that consumer alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParkedMessage {
    /// The record's id on this bus: what an operator names to show, replay
    /// or discard it.
    pub record: u64,
    /// The durable consumer it gave up on.
    pub consumer: String,
    /// Its position in its stream.
    pub seq: u64,
    pub subject: String,
    /// The message's own id.
    pub id: String,
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
    pub deliveries: u32,
    /// Why: the handler's last error, or the termination's reason, or that
    /// no delivery was acknowledged in time.
    pub reason: String,
    pub parked_at: shared::time::Timestamp,
    pub state: ParkedState,
}

impl ParkedMessage {
    /// The trace the message belongs to (from its `traceparent` header).
    pub fn trace_id(&self) -> Option<&str> {
        let header = self
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("traceparent"))?;
        header.1.split('-').nth(1)
    }
}

/// Where a parked message stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParkedState {
    /// Waiting for an operator.
    Parked,
    /// Delivered again to its consumer (once; if it fails again, it is
    /// parked again as a new record).
    Replayed { at: shared::time::Timestamp },
    /// Given up on for good, with the operator's reason.
    Discarded {
        at: shared::time::Timestamp,
        reason: String,
    },
}

impl ParkedState {
    pub fn name(&self) -> &'static str {
        match self {
            ParkedState::Parked => "parked",
            ParkedState::Replayed { .. } => "replayed",
            ParkedState::Discarded { .. } => "discarded",
        }
    }
}

/// Which parked messages to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParkedFilter {
    /// One durable consumer's only.
    pub consumer: Option<String>,
    /// Parked at or after this time only.
    pub since: Option<shared::time::Timestamp>,
    /// Still waiting for an operator only (not replayed or discarded).
    pub waiting_only: bool,
}

impl ParkedFilter {
    pub fn matches(&self, p: &ParkedMessage) -> bool {
        self.consumer.as_ref().is_none_or(|c| *c == p.consumer)
            && self.since.is_none_or(|t| p.parked_at >= t)
            && (!self.waiting_only || p.state == ParkedState::Parked)
    }
}

/// The answer to a replay or a discard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Done: the record as it is now.
    Done(ParkedMessage),
    /// Nothing changed: the record was replayed or discarded before.
    Already(ParkedMessage),
    /// No record has this id.
    NotFound,
}

/// Logs and counts a message parked (once, by the member that parked it).
pub(crate) fn report_parked(
    consumer: &str,
    seq: u64,
    subject: &str,
    id: &str,
    deliveries: u32,
    reason: &str,
) {
    tracing::warn!(
        consumer,
        seq,
        subject,
        msg_id = id,
        deliveries,
        reason,
        "message parked"
    );
    shared::metrics::inc(
        "bus_parked_total",
        &[("consumer", consumer), ("cause", park_cause(reason))],
    );
}

/// Why a message was parked, from its reason, as a metric label (the same
/// on both buses): `terminated` (its handler or decoder refused it),
/// `failed` (its handler failed on every delivery) or `out_of_deliveries`
/// (no delivery was acknowledged, without an error: it timed out, or was
/// never ready).
fn park_cause(reason: &str) -> &'static str {
    if reason.starts_with("terminated:") {
        "terminated"
    } else if reason.contains("last error:") {
        "failed"
    } else {
        "out_of_deliveries"
    }
}

/// Logs and counts an operator's replay or discard of a parked message.
pub(crate) fn report_resolved(p: &ParkedMessage) {
    let (metric, reason) = match &p.state {
        ParkedState::Parked => return,
        ParkedState::Replayed { .. } => ("bus_parked_replayed_total", ""),
        ParkedState::Discarded { reason, .. } => ("bus_parked_discarded_total", reason.as_str()),
    };
    tracing::info!(
        record = p.record, consumer = %p.consumer, seq = p.seq, msg_id = %p.id,
        state = p.state.name(), reason, "parked message resolved"
    );
    shared::metrics::inc(metric, &[("consumer", &p.consumer)]);
}

/// What kind of failure, so callers can choose between retrying and giving up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusErrorKind {
    /// The broker or its storage cannot be reached; retry later.
    Unavailable,
    /// No stream holds this subject (JetStream): provisioning has not run.
    StreamMissing,
    /// A consumer exists with settings that conflict with the request.
    Config,
    /// The operation did not finish in time.
    Timeout,
    Other,
}

/// A bus error: its kind, what failed, and the error that caused it when
/// there is one (kept as the source, so logs show the whole chain).
#[derive(Debug, Clone, thiserror::Error)]
#[error("bus error ({kind:?}): {message}")]
pub struct BusError {
    pub kind: BusErrorKind,
    pub message: String,
    #[source]
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl BusError {
    pub fn new(kind: BusErrorKind, message: impl Into<String>) -> Self {
        BusError {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// An error of `kind` while doing `message`, caused by `source`.
    pub fn caused_by(
        kind: BusErrorKind,
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        BusError {
            kind,
            message: message.into(),
            source: Some(Arc::new(source)),
        }
    }
}

impl From<store::StoreError> for BusError {
    fn from(e: store::StoreError) -> Self {
        let kind = match e.kind() {
            store::StoreErrorKind::Unavailable | store::StoreErrorKind::Storage => {
                BusErrorKind::Unavailable
            }
            _ => BusErrorKind::Other,
        };
        BusError::caused_by(kind, "the bus's store failed", e)
    }
}

/// An event bus. Object-safe so services hold an `Arc<dyn Bus>` and never
/// care which implementation is behind it.
pub trait Bus: Send + Sync + 'static {
    /// Publishes one message; resolves once it is durable.
    fn publish(&self, msg: Message) -> BoxFuture<'_, Result<PublishAck, BusError>>;

    /// Publishes several messages, in order; resolves once all are durable.
    fn publish_batch(
        &self,
        msgs: Vec<Message>,
    ) -> BoxFuture<'_, Result<Vec<PublishAck>, BusError>> {
        Box::pin(async move {
            let mut acks = Vec::with_capacity(msgs.len());
            for m in msgs {
                acks.push(self.publish(m).await?);
            }
            Ok(acks)
        })
    }

    /// Joins (creating if needed) the durable consumer `config.durable`.
    fn subscribe(&self, config: ConsumerConfig) -> BoxFuture<'_, Result<Subscription, BusError>>;

    /// Makes the durable consumer `config.durable` start over: its next
    /// subscriber is given its subject's history again from the first
    /// message, as if the durable were new (a read model rebuilding itself
    /// from the stream). A consumer that does not exist yet is left alone
    /// (it will start from the first message anyway); one that exists keeps
    /// the settings it has. Meant for before a service's listeners join:
    /// members subscribed meanwhile may be cut off or see messages twice.
    fn rewind(&self, config: &ConsumerConfig) -> BoxFuture<'_, Result<(), BusError>>;

    /// Follows `filter_subject` for this caller alone, without a durable
    /// consumer: every message published at or after `since`, then each new
    /// one as it is published. Every watcher sees every message (each
    /// process keeps its own copy of something, such as a deny list), and
    /// nothing is acknowledged. After the messages that were already there
    /// when it began, the watch yields [`Watched::CaughtUp`] once. A message
    /// may be seen twice (after the bus reconnects), so what a watcher does
    /// with it must be idempotent.
    fn watch(
        &self,
        filter_subject: &str,
        since: shared::time::Timestamp,
    ) -> BoxFuture<'_, Result<Watch, BusError>>;

    /// Messages parked on a durable consumer and still waiting for an
    /// operator.
    fn parked(&self, durable: &str) -> BoxFuture<'_, Result<Vec<ParkedMessage>, BusError>> {
        let filter = ParkedFilter {
            consumer: Some(durable.to_owned()),
            since: None,
            waiting_only: true,
        };
        Box::pin(async move { self.parked_messages(&filter).await })
    }

    /// Parked-message records (also those replayed or discarded), oldest
    /// first.
    fn parked_messages(
        &self,
        filter: &ParkedFilter,
    ) -> BoxFuture<'_, Result<Vec<ParkedMessage>, BusError>>;

    /// Delivers a parked message again — with its original id, headers and
    /// payload, to the durable consumer it gave up on and no other — and
    /// marks the record replayed. A record replayed or discarded before is
    /// left as it is.
    fn replay_parked(&self, record: u64) -> BoxFuture<'_, Result<Resolution, BusError>>;

    /// Gives up on a parked message for good, recording `reason`.
    fn discard_parked(
        &self,
        record: u64,
        reason: String,
    ) -> BoxFuture<'_, Result<Resolution, BusError>>;

    /// `Ok` when the bus can take publishes and deliver messages.
    fn check_ready(&self) -> BoxFuture<'_, Result<(), BusError>>;

    /// Messages a durable consumer has not yet been given, and messages
    /// given but not yet acknowledged, where the bus can tell (`None` if not).
    fn consumer_lag(
        &self,
        config: &ConsumerConfig,
    ) -> BoxFuture<'_, Result<Option<(u64, u64)>, BusError>> {
        let _ = config;
        Box::pin(async { Ok(None) })
    }

    /// `Ok` when every one of `subjects` has somewhere to go (a stream on
    /// JetStream; the embedded bus takes any subject).
    fn check_subjects(
        &self,
        subjects: &'static [&'static str],
    ) -> BoxFuture<'_, Result<(), BusError>> {
        let _ = subjects;
        Box::pin(async { Ok(()) })
    }
}

/// One member's stream of deliveries from a durable consumer.
pub struct Subscription {
    source: Box<dyn DeliverySource>,
}

impl Subscription {
    pub fn new(source: Box<dyn DeliverySource>) -> Self {
        Subscription { source }
    }

    /// The next delivery; waits until one is available. `None` once the bus
    /// is closed.
    pub async fn next(&mut self) -> Option<Result<Delivery, BusError>> {
        self.source.next().await
    }

    /// A delivery this member already has in hand (fetched with the ones
    /// before it), without waiting: how a listener gathers a batch after
    /// [`Subscription::next`] returned its first message. `None` when
    /// taking one would mean asking the bus again.
    pub fn ready(&mut self) -> Option<Delivery> {
        self.source.ready()
    }
}

/// What a [`Watch`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Watched {
    Message(Message),
    /// Everything published before the watch began has been yielded.
    CaughtUp,
}

/// A watch on a subject, from [`Bus::watch`].
pub struct Watch {
    source: Box<dyn WatchSource>,
}

impl Watch {
    pub fn new(source: Box<dyn WatchSource>) -> Self {
        Watch { source }
    }

    /// The next message (or the caught-up mark); waits until there is one.
    /// `None` once the bus is closed.
    pub async fn next(&mut self) -> Option<Result<Watched, BusError>> {
        self.source.next().await
    }
}

/// Implementation side of a [`Watch`].
pub trait WatchSource: Send {
    fn next(&mut self) -> BoxFuture<'_, Option<Result<Watched, BusError>>>;
}

/// Implementation side of a [`Subscription`].
pub trait DeliverySource: Send {
    fn next(&mut self) -> BoxFuture<'_, Option<Result<Delivery, BusError>>>;

    /// A delivery already in hand, without waiting (see [`Subscription::ready`]).
    fn ready(&mut self) -> Option<Delivery> {
        None
    }
}

/// Implementation side of a [`Delivery`]'s acknowledgements.
pub trait Acker: Send + Sync {
    fn ack(&self) -> BoxFuture<'_, Result<(), BusError>>;
    fn nak(&self, delay: Duration) -> BoxFuture<'_, Result<(), BusError>>;
    /// A nak after a failure: `error` is what the message is parked with if
    /// this was its last delivery.
    fn fail(&self, delay: Duration, error: String) -> BoxFuture<'_, Result<(), BusError>>;
    fn term(&self, reason: String) -> BoxFuture<'_, Result<(), BusError>>;
    fn in_progress(&self) -> BoxFuture<'_, Result<(), BusError>>;
}

/// A message handed to one consumer member, to be settled exactly once.
pub struct Delivery {
    pub message: Message,
    /// Stream sequence.
    pub seq: u64,
    /// 1 on first delivery, 2 on the first redelivery, …
    pub delivered: u32,
    acker: Arc<dyn Acker>,
}

impl Delivery {
    pub fn new(message: Message, seq: u64, delivered: u32, acker: Arc<dyn Acker>) -> Self {
        Delivery {
            message,
            seq,
            delivered,
            acker,
        }
    }

    /// Done: never deliver again.
    pub async fn ack(self) -> Result<(), BusError> {
        self.acker.ack().await
    }

    /// Not now: deliver again after `delay` (counts as a delivery).
    pub async fn nak(self, delay: Duration) -> Result<(), BusError> {
        self.acker.nak(delay).await
    }

    /// Failed: deliver again after `delay`, or — if this was its last
    /// delivery — park it with `error` as the reason.
    pub async fn fail(self, delay: Duration, error: impl Into<String>) -> Result<(), BusError> {
        self.acker.fail(delay, error.into()).await
    }

    /// Never: park it with `reason`.
    pub async fn term(self, reason: impl Into<String>) -> Result<(), BusError> {
        self.acker.term(reason.into()).await
    }

    /// Still working: restart the ack wait.
    pub async fn in_progress(&self) -> Result<(), BusError> {
        self.acker.in_progress().await
    }
}
