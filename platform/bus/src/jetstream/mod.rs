//! The bus on NATS JetStream (official `async-nats` client).
//!
//! - Publish: awaited publish-ack, `Nats-Msg-Id` = the message id, so the
//!   stream's duplicate window drops a relay's retry.
//! - Consume: one durable pull consumer per (service, subject), shared by all
//!   replicas (each pull request gets distinct messages); explicit acks,
//!   confirmed by the server (double ack) so an ack is never lost silently.
//! - Nak with delay for early events; progress acks for slow handlers.
//! - Parking: a message terminated, or nak'ed on its last allowed delivery,
//!   is recorded on the parked stream (`parked.<durable>`, de-duplicated by
//!   consumer and sequence) before it is terminated; if it cannot be
//!   recorded it is not terminated either. A message whose last delivery
//!   times out (never nak'ed) is named by the server's max-deliveries
//!   advisory, which every member watches; it is read back from its stream
//!   and recorded the same way.
//!
//! Works on nats-server 2.9 and later: only 2.9-era consumer fields are sent
//! (the client's `server_2_10+` features are off).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, AckKind};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::{
    Acker, Bus, BusError, BusErrorKind, ConsumerConfig, Delivery, DeliverySource, Message,
    ParkedFilter, ParkedMessage, ParkedState, PublishAck, Resolution, Subscription, Watch,
    WatchSource, Watched,
};

/// Subjects under which parked messages are recorded: `parked.<durable>`.
pub const PARKED_PREFIX: &str = "parked";
/// The stream holding parked-message records.
pub const PARKED_STREAM: &str = "PARKED";

struct Inner {
    client: async_nats::Client,
    js: jetstream::Context,
}

/// The JetStream bus. Cheap to clone.
#[derive(Clone)]
pub struct JetStreamBus {
    inner: Arc<Inner>,
}

fn unavailable(e: impl std::fmt::Display) -> BusError {
    BusError::new(BusErrorKind::Unavailable, e.to_string())
}

/// A parked-message record as stored on the parked stream, under
/// `parked.<durable>`; its id is its sequence there. What operators do with
/// it is recorded beside it: a replay is the message itself, published
/// again on `parked.<durable>.replay` (which only that durable's
/// `<durable>-replay` consumer reads), a discard is a note on
/// `parked.<durable>.discard`.
#[derive(Debug, Serialize, Deserialize)]
struct ParkedRecord {
    consumer: String,
    seq: u64,
    subject: String,
    id: String,
    deliveries: u32,
    reason: String,
    payload: String,
    /// The message's headers (records from before they were kept have none).
    #[serde(default)]
    headers: Vec<(String, String)>,
}

/// A discard, as recorded on `parked.<durable>.discard`.
#[derive(Debug, Serialize, Deserialize)]
struct DiscardRecord {
    record: u64,
    reason: String,
}

/// Headers of a replay besides the original message's own: the record it
/// replays, and the original's subject, id and stream sequence.
const REPLAY_RECORD: &str = "Ticketing-Parked-Record";
const REPLAY_SUBJECT: &str = "Ticketing-Replay-Subject";
const REPLAY_ID: &str = "Ticketing-Replay-Id";
const REPLAY_SEQ: &str = "Ticketing-Replay-Seq";

/// How often a connection pings its server. The client gives a connection
/// up after three unanswered pings: with the default minute a process whose
/// node was cut off by the network (not killed: no reset arrives) stayed on
/// it for minutes; with 2 s it moves to another node within about 6 s.
const PING_INTERVAL: Duration = Duration::from_secs(2);

/// How long a publish (and any JetStream API request) waits for its answer
/// before it is retried. A publish sent into a partition — to a leader
/// that was cut off, or over a connection to a node that was — is never
/// answered; with the client's default of 5 s each such attempt cost 5 s,
/// and a publish across a partition took two of them (10.2 s). Retrying is
/// safe: the stream drops a second copy of an event id.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// The servers of a `NATS_URL`: one URL or several separated by commas
/// (`nats://a:4222,nats://b:4222`; the scheme may be left out). The client
/// takes only one URL per string, so the list is split here.
pub fn server_list(url: &str) -> Result<Vec<async_nats::ServerAddr>, BusError> {
    let servers = url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| {
            u.parse::<async_nats::ServerAddr>().map_err(|e| {
                BusError::new(
                    BusErrorKind::Config,
                    format!("NATS_URL: {u:?} is not a server address: {e}"),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if servers.is_empty() {
        return Err(BusError::new(
            BusErrorKind::Config,
            "NATS_URL: no server given",
        ));
    }
    Ok(servers)
}

/// The subject `durable`'s replays are published on.
pub fn replay_subject(durable: &str) -> String {
    format!("{PARKED_PREFIX}.{durable}.replay")
}

/// The consumer on the parked stream that delivers `durable`'s replays.
pub fn replay_durable(durable: &str) -> String {
    format!("{durable}-replay")
}

/// The description of [`replay_durable`]'s consumer.
pub fn replay_description(durable: &str) -> String {
    format!("replays of {durable}'s parked messages")
}

/// A message read back from the parked stream.
struct Stored {
    seq: u64,
    subject: String,
    headers: Vec<(String, String)>,
    payload: Vec<u8>,
    at: shared::time::Timestamp,
}

fn timestamp_of(t: time::OffsetDateTime) -> shared::time::Timestamp {
    shared::time::Timestamp::from_millis((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

/// The records among `stored`, each in the state its replay or discard
/// (if any) left it.
fn fold_parked(stored: Vec<Stored>) -> Vec<ParkedMessage> {
    let mut records = std::collections::BTreeMap::new();
    let mut resolutions = Vec::new();
    for s in stored {
        let tokens: Vec<&str> = s.subject.split('.').collect();
        match tokens.as_slice() {
            [_, _] => {
                let Ok(r) = serde_json::from_slice::<ParkedRecord>(&s.payload) else {
                    continue;
                };
                records.insert(
                    s.seq,
                    ParkedMessage {
                        record: s.seq,
                        consumer: r.consumer,
                        seq: r.seq,
                        subject: r.subject,
                        id: r.id,
                        headers: r.headers,
                        payload: r.payload.into_bytes(),
                        deliveries: r.deliveries,
                        reason: r.reason,
                        parked_at: s.at,
                        state: ParkedState::Parked,
                    },
                );
            }
            [_, _, "replay"] => {
                let record = s
                    .headers
                    .iter()
                    .find(|(k, _)| k == REPLAY_RECORD)
                    .and_then(|(_, v)| v.parse::<u64>().ok());
                if let Some(record) = record {
                    resolutions.push((record, ParkedState::Replayed { at: s.at }));
                }
            }
            [_, _, "discard"] => {
                if let Ok(d) = serde_json::from_slice::<DiscardRecord>(&s.payload) {
                    resolutions.push((
                        d.record,
                        ParkedState::Discarded {
                            at: s.at,
                            reason: d.reason,
                        },
                    ));
                }
            }
            _ => {}
        }
    }
    for (record, state) in resolutions {
        if let Some(p) = records.get_mut(&record)
            && p.state == ParkedState::Parked
        {
            p.state = state;
        }
    }
    records.into_values().collect()
}

/// The server's advisory that a message used its last delivery without an
/// ack (its handler hung, or its process died, every time).
#[derive(Debug, Deserialize)]
struct MaxDeliveriesAdvisory {
    stream: String,
    consumer: String,
    stream_seq: u64,
    deliveries: u32,
}

/// The server's advisory that a consumer's message was terminated (an
/// `AckTerm`), from nats-server 2.10.
#[derive(Debug, Deserialize)]
struct TerminatedAdvisory {
    stream: String,
    consumer: String,
}

/// The wait before the `attempts`-th reconnection: at once, then doubling
/// from 2 ms to at most 250 ms.
fn reconnect_delay(attempts: usize) -> Duration {
    let exp = u32::try_from(attempts.saturating_sub(1))
        .unwrap_or(u32::MAX)
        .min(16);
    Duration::from_millis(2_u64.pow(exp)).min(MAX_RECONNECT_DELAY) * u32::from(attempts > 1)
}

/// The longest wait between reconnection attempts.
const MAX_RECONNECT_DELAY: Duration = Duration::from_millis(250);

impl JetStreamBus {
    /// Stores `record` on the parked stream (de-duplicated by `key` —
    /// consumer and sequence, and the replay's for a replayed message — so
    /// replicas and both parking paths record it once) and logs and counts
    /// it the first time.
    async fn record_parked(&self, record: &ParkedRecord, key: &str) -> Result<(), BusError> {
        let parked = Message {
            subject: format!("{PARKED_PREFIX}.{}", record.consumer),
            id: format!("parked-{key}"),
            headers: vec![],
            payload: serde_json::to_vec(record).unwrap_or_default(),
        };
        if !self.publish(parked).await?.duplicate {
            crate::report_parked(
                &record.consumer,
                record.seq,
                &record.subject,
                &record.id,
                record.deliveries,
                &record.reason,
            );
        }
        Ok(())
    }

    /// Every message on the parked stream under `filter`, in order.
    async fn read_parked(&self, filter: String) -> Result<Vec<Stored>, BusError> {
        let stream = self.parked_stream().await?;
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: filter,
                ..Default::default()
            })
            .await
            .map_err(unavailable)?;
        let mut remaining = consumer.cached_info().num_pending;
        let mut out = Vec::new();
        if remaining == 0 {
            return Ok(out);
        }
        let mut messages = consumer.messages().await.map_err(unavailable)?;
        while remaining > 0 {
            let next = tokio::time::timeout(Duration::from_secs(5), messages.next()).await;
            let Ok(Some(Ok(m))) = next else {
                return Err(BusError::new(
                    BusErrorKind::Timeout,
                    "reading parked messages",
                ));
            };
            remaining -= 1;
            let info = m
                .info()
                .map_err(|e| unavailable(format!("parked message: {e}")))?;
            let (seq, at) = (info.stream_sequence, timestamp_of(info.published));
            let message = message_of(&m);
            out.push(Stored {
                seq,
                subject: message.subject,
                headers: message.headers,
                payload: message.payload,
                at,
            });
        }
        Ok(out)
    }

    async fn parked_stream(&self) -> Result<jetstream::stream::Stream, BusError> {
        self.inner.js.get_stream(PARKED_STREAM).await.map_err(|e| {
            BusError::new(
                BusErrorKind::StreamMissing,
                format!("parked stream {PARKED_STREAM}: {e}"),
            )
        })
    }

    /// Replays (`discard` None) or discards the record `record`.
    async fn resolve(&self, record: u64, discard: Option<String>) -> Result<Resolution, BusError> {
        use async_nats::jetstream::stream::RawMessageErrorKind;
        if record == 0 {
            return Ok(Resolution::NotFound); // sequences start at 1
        }
        let stream = self.parked_stream().await?;
        let raw = match stream.get_raw_message(record).await {
            Ok(m) => m,
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => {
                return Ok(Resolution::NotFound);
            }
            Err(e) => return Err(unavailable(format!("parked record {record}: {e}"))),
        };
        let Some(durable) = raw
            .subject
            .strip_prefix(PARKED_PREFIX)
            .and_then(|s| s.strip_prefix('.'))
            .filter(|d| !d.contains('.'))
            .map(str::to_owned)
        else {
            return Ok(Resolution::NotFound); // a replay or discard, not a record
        };
        let mut stored = vec![Stored {
            seq: raw.sequence,
            subject: raw.subject.to_string(),
            headers: Vec::new(),
            payload: raw.payload.to_vec(),
            at: timestamp_of(raw.time),
        }];
        stored.extend(
            self.read_parked(format!("{PARKED_PREFIX}.{durable}.*"))
                .await?,
        );
        let Some(mut p) = fold_parked(stored).into_iter().find(|p| p.record == record) else {
            return Ok(Resolution::NotFound);
        };
        if p.state != ParkedState::Parked {
            return Ok(Resolution::Already(p));
        }
        let now = shared::time::Clock::System.now();
        let message = match &discard {
            None => {
                let mut headers: Vec<(String, String)> = p
                    .headers
                    .iter()
                    .filter(|(k, _)| !k.to_ascii_lowercase().starts_with("nats-"))
                    .cloned()
                    .collect();
                headers.extend([
                    (REPLAY_RECORD.to_owned(), record.to_string()),
                    (REPLAY_SUBJECT.to_owned(), p.subject.clone()),
                    (REPLAY_ID.to_owned(), p.id.clone()),
                    (REPLAY_SEQ.to_owned(), p.seq.to_string()),
                ]);
                Message {
                    subject: replay_subject(&durable),
                    id: format!("replay-{record}"),
                    headers,
                    payload: p.payload.clone(),
                }
            }
            Some(reason) => Message {
                subject: format!("{PARKED_PREFIX}.{durable}.discard"),
                id: format!("discard-{record}"),
                headers: vec![],
                payload: serde_json::to_vec(&DiscardRecord {
                    record,
                    reason: reason.clone(),
                })
                .unwrap_or_default(),
            },
        };
        self.publish(message).await?;
        p.state = match discard {
            None => ParkedState::Replayed { at: now },
            Some(reason) => ParkedState::Discarded { at: now, reason },
        };
        crate::report_resolved(&p);
        Ok(Resolution::Done(p))
    }

    /// Parks the message an advisory names, reading it back from its
    /// stream: one of `durable`'s messages, or a replay of one (an advisory
    /// of its replay consumer), parked again as a record of its own.
    async fn park_from_advisory(
        &self,
        a: MaxDeliveriesAdvisory,
        durable: &str,
    ) -> Result<(), BusError> {
        let stream = self
            .inner
            .js
            .get_stream(&a.stream)
            .await
            .map_err(unavailable)?;
        let m = stream
            .get_raw_message(a.stream_seq)
            .await
            .map_err(unavailable)?;
        let stored = Message {
            subject: m.subject.to_string(),
            id: m
                .headers
                .get("Nats-Msg-Id")
                .map(|v| v.to_string())
                .unwrap_or_default(),
            headers: m
                .headers
                .iter()
                .flat_map(|(k, vs)| vs.iter().map(move |v| (k.to_string(), v.to_string())))
                .collect(),
            payload: m.payload.to_vec(),
        };
        let (message, seq, key) = if a.consumer == replay_durable(durable) {
            let (original, seq) = unwrap_replay(stored).ok_or_else(|| {
                BusError::new(
                    BusErrorKind::Other,
                    format!(
                        "replay {} on {durable} lacks its original's subject, id or sequence",
                        a.stream_seq
                    ),
                )
            })?;
            let key = format!("{durable}-{seq}-replay-{}", a.stream_seq);
            (original, seq, key)
        } else {
            let key = format!("{durable}-{}", a.stream_seq);
            (stored, a.stream_seq, key)
        };
        self.record_parked(
            &ParkedRecord {
                consumer: durable.to_owned(),
                seq,
                subject: message.subject,
                id: message.id,
                deliveries: a.deliveries,
                reason: format!(
                    "not acknowledged within the ack wait on any of its {} deliveries",
                    a.deliveries
                ),
                payload: String::from_utf8_lossy(&message.payload).into_owned(),
                headers: message.headers,
            },
            &key,
        )
        .await
    }

    /// The consumer delivering the replays of `config`'s parked messages
    /// (created if missing), or `None` — logged — without a parked stream.
    async fn replay_consumer(
        &self,
        config: &ConsumerConfig,
    ) -> Option<async_nats::jetstream::consumer::PullConsumer> {
        let name = replay_durable(&config.durable);
        let created = async {
            self.parked_stream()
                .await?
                .get_or_create_consumer(
                    &name,
                    pull::Config {
                        durable_name: Some(name.clone()),
                        description: Some(replay_description(&config.durable)),
                        filter_subject: replay_subject(&config.durable),
                        deliver_policy: DeliverPolicy::All,
                        ack_policy: AckPolicy::Explicit,
                        ack_wait: config.ack_wait,
                        max_deliver: i64::from(config.max_deliver),
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| unavailable(format!("consumer {name}: {e}")))
        };
        match created.await {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(durable = %config.durable, error = %e, "parked messages of this consumer cannot be replayed");
                None
            }
        }
    }

    /// Watches the advisories the server sends about one durable: it parks
    /// what a max-deliveries advisory names, and counts those and the
    /// terminate advisories (nats-server 2.10 and later send them; our own
    /// terms are parked before they are sent, anyone else's are counted).
    /// Every member watches (the record is de-duplicated); an advisory sent
    /// while no member runs is not seen.
    async fn watch_advisories(
        &self,
        stream: &str,
        durable: &str,
    ) -> Result<tokio::task::JoinHandle<()>, BusError> {
        let subscribe = |kind: &str, stream: &str, consumer: String| {
            self.inner.client.subscribe(format!(
                "$JS.EVENT.ADVISORY.CONSUMER.{kind}.{stream}.{consumer}"
            ))
        };
        let max_deliveries = subscribe("MAX_DELIVERIES", stream, durable.to_owned())
            .await
            .map_err(unavailable)?;
        let terminated = subscribe("MSG_TERMINATED", stream, durable.to_owned())
            .await
            .map_err(unavailable)?;
        // A replay that runs out of deliveries is parked again.
        let replay_max_deliveries =
            subscribe("MAX_DELIVERIES", PARKED_STREAM, replay_durable(durable))
                .await
                .map_err(unavailable)?;
        let bus = self.clone();
        let durable = durable.to_owned();
        let mut advisories = futures_util::stream::select(
            futures_util::stream::select(max_deliveries, replay_max_deliveries).map(|m| (true, m)),
            terminated.map(|m| (false, m)),
        );
        Ok(tokio::spawn(async move {
            while let Some((max_deliveries, m)) = advisories.next().await {
                if !max_deliveries {
                    match serde_json::from_slice::<TerminatedAdvisory>(&m.payload) {
                        // Every member sees the advisory: read with `max`.
                        Ok(a) => shared::metrics::inc(
                            "bus_terminated_advisories_total",
                            &[("stream", &a.stream), ("consumer", &a.consumer)],
                        ),
                        Err(e) => tracing::warn!(error = %e, "unreadable terminate advisory"),
                    }
                    continue;
                }
                match serde_json::from_slice::<MaxDeliveriesAdvisory>(&m.payload) {
                    Ok(a) => {
                        shared::metrics::inc(
                            "bus_max_deliveries_advisories_total",
                            &[("stream", &a.stream), ("consumer", &a.consumer)],
                        );
                        let seq = a.stream_seq;
                        if let Err(e) = bus.park_from_advisory(a, &durable).await {
                            tracing::warn!(seq, error = %store::report(&e), "cannot park a message out of deliveries");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "unreadable max-deliveries advisory"),
                }
            }
        }))
    }

    /// Connects to `url` — one server, or a cluster's servers separated by
    /// commas — as `name` (service plus host or pod name). Returns at once:
    /// the client keeps (re)connecting in the background, to any server of
    /// the list or that the cluster announces, so a service starts and
    /// reports not-ready while NATS is down and moves to another node when
    /// its own fails.
    pub async fn connect(url: &str, name: &str) -> Result<JetStreamBus, BusError> {
        let servers = server_list(url)?;
        let client = async_nats::ConnectOptions::new()
            .name(name)
            .ping_interval(PING_INTERVAL)
            .retry_on_initial_connect()
            .max_reconnects(None)
            // async-nats waits up to 4 s between attempts by default: after
            // an outage of a few seconds, a process stayed away that long
            // after the server came back (its deny list among what
            // waited). A refused connection costs nothing to retry.
            .reconnect_delay_callback(reconnect_delay)
            .connection_timeout(Duration::from_secs(5))
            .connect(servers)
            .await
            .map_err(unavailable)?;
        Ok(JetStreamBus::from_client(client))
    }

    pub fn from_client(client: async_nats::Client) -> JetStreamBus {
        let mut js = jetstream::new(client.clone());
        js.set_timeout(REQUEST_TIMEOUT);
        JetStreamBus {
            inner: Arc::new(Inner { client, js }),
        }
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.inner.client
    }

    pub fn context(&self) -> &jetstream::Context {
        &self.inner.js
    }

    /// The stream whose subjects hold `subject`, by name and handle.
    async fn stream_holding(
        &self,
        subject: &str,
    ) -> Result<(String, jetstream::stream::Stream), BusError> {
        let name = self
            .inner
            .js
            .stream_by_subject(subject.to_owned())
            .await
            .map_err(|e| lookup_error(subject, &e))?;
        let stream = self.inner.js.get_stream(&name).await.map_err(unavailable)?;
        Ok((name, stream))
    }

    async fn send(&self, msg: Message) -> Result<jetstream::context::PublishAckFuture, BusError> {
        let mut headers = async_nats::HeaderMap::new();
        for (k, v) in &msg.headers {
            headers.insert(k.as_str(), v.as_str());
        }
        let publish = PublishMessage::build()
            .payload(msg.payload.into())
            .headers(headers)
            .message_id(&msg.id);
        self.inner
            .js
            .send_publish(msg.subject.clone(), publish)
            .await
            .map_err(|e| publish_error(&msg.subject, e))
    }
}

use jetstream::context::{GetStreamByNameError, GetStreamByNameErrorKind};

/// No stream holds `subjects`: the streams were not provisioned.
fn streams_missing(subjects: &[&str]) -> BusError {
    BusError::new(
        BusErrorKind::StreamMissing,
        format!(
            "no stream holds {} (has `ticketing streams apply` run?)",
            subjects.join(", ")
        ),
    )
}

/// Why no stream could be found for `subject`: none holds it, or the
/// question went unanswered — a cluster electing its meta leader, which is
/// no reason to suggest provisioning.
fn lookup_error(subject: &str, e: &GetStreamByNameError) -> BusError {
    if e.kind() == GetStreamByNameErrorKind::NotFound {
        streams_missing(&[subject])
    } else {
        BusError::new(
            BusErrorKind::Unavailable,
            format!("cannot ask which stream holds {subject}: {e}"),
        )
    }
}

fn publish_error(subject: &str, e: jetstream::context::PublishError) -> BusError {
    use jetstream::context::PublishErrorKind;
    match e.kind() {
        PublishErrorKind::StreamNotFound => BusError::new(
            BusErrorKind::StreamMissing,
            // The server's "no responders": no stream takes the subject,
            // or its stream is electing a leader (a node was lost).
            format!(
                "no stream answered for subject {subject} (none holds it, or it has no leader yet)"
            ),
        ),
        PublishErrorKind::TimedOut => BusError::new(BusErrorKind::Timeout, e.to_string()),
        _ => unavailable(e),
    }
}

async fn await_ack(
    subject: &str,
    ack: jetstream::context::PublishAckFuture,
) -> Result<PublishAck, BusError> {
    let ack = ack.await.map_err(|e| publish_error(subject, e))?;
    Ok(PublishAck {
        seq: ack.sequence,
        duplicate: ack.duplicate,
    })
}

impl Bus for JetStreamBus {
    fn publish(&self, msg: Message) -> crate::BoxFuture<'_, Result<PublishAck, BusError>> {
        Box::pin(async move {
            let subject = msg.subject.clone();
            let ack = self.send(msg).await?;
            await_ack(&subject, ack).await
        })
    }

    /// Sends every message first and then awaits the acks, so a batch costs
    /// about one round trip instead of one per message.
    fn publish_batch(
        &self,
        msgs: Vec<Message>,
    ) -> crate::BoxFuture<'_, Result<Vec<PublishAck>, BusError>> {
        Box::pin(async move {
            let mut pending = Vec::with_capacity(msgs.len());
            for m in msgs {
                let subject = m.subject.clone();
                pending.push((subject, self.send(m).await?));
            }
            let mut acks = Vec::with_capacity(pending.len());
            for (subject, ack) in pending {
                acks.push(await_ack(&subject, ack).await?);
            }
            Ok(acks)
        })
    }

    fn subscribe(
        &self,
        config: ConsumerConfig,
    ) -> crate::BoxFuture<'_, Result<Subscription, BusError>> {
        Box::pin(async move {
            let (stream_name, stream) = self.stream_holding(&config.filter_subject).await?;
            let consumer: async_nats::jetstream::consumer::PullConsumer = stream
                .get_or_create_consumer(
                    &config.durable,
                    pull::Config {
                        durable_name: Some(config.durable.clone()),
                        description: Some("ticketing durable consumer".into()),
                        filter_subject: config.filter_subject.clone(),
                        deliver_policy: DeliverPolicy::All,
                        ack_policy: AckPolicy::Explicit,
                        ack_wait: config.ack_wait,
                        max_deliver: i64::from(config.max_deliver),
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| {
                    BusError::new(
                        BusErrorKind::Unavailable,
                        format!("consumer {}: {e}", config.durable),
                    )
                })?;
            let existing = &consumer.cached_info().config.filter_subject;
            if *existing != config.filter_subject {
                return Err(BusError::new(
                    BusErrorKind::Config,
                    format!(
                        "durable {} already filters {existing}, not {}",
                        config.durable, config.filter_subject
                    ),
                ));
            }
            // A provisioned consumer's settings are the spec's, not the
            // caller's: park by the limit the server enforces.
            let max_deliver = match consumer.cached_info().config.max_deliver {
                n if n > 0 => u32::try_from(n).unwrap_or(u32::MAX),
                _ => u32::MAX,
            };
            let watcher = self.watch_advisories(&stream_name, &config.durable).await?;
            let durable: Arc<str> = Arc::from(config.durable.as_str());
            let replay = self.replay_consumer(&config).await.map(|consumer| Puller {
                consumer,
                messages: None,
                name: Arc::from(replay_durable(&config.durable).as_str()),
            });
            Ok(Subscription::new(Box::new(JsSource {
                bus: self.clone(),
                main: Puller {
                    consumer,
                    messages: None,
                    name: durable.clone(),
                },
                replay,
                durable,
                max_deliver,
                watcher,
            })))
        })
    }

    fn watch(
        &self,
        filter_subject: &str,
        since: shared::time::Timestamp,
    ) -> crate::BoxFuture<'_, Result<Watch, BusError>> {
        let filter = filter_subject.to_owned();
        Box::pin(async move {
            let (_, stream) = self.stream_holding(&filter).await?;
            let start_time = time::OffsetDateTime::from_unix_timestamp_nanos(
                i128::from(since.millis()) * 1_000_000,
            )
            .map_err(|e| BusError::new(BusErrorKind::Config, format!("watch start: {e}")))?;
            let consumer = stream
                .create_consumer(pull::OrderedConfig {
                    filter_subject: filter,
                    deliver_policy: DeliverPolicy::ByStartTime { start_time },
                    ..Default::default()
                })
                .await
                .map_err(unavailable)?;
            let remaining = consumer.cached_info().num_pending;
            let messages = consumer.messages().await.map_err(unavailable)?;
            Ok(Watch::new(Box::new(JsWatch {
                messages,
                remaining,
                caught_up: false,
            })))
        })
    }

    fn parked_messages(
        &self,
        filter: &ParkedFilter,
    ) -> crate::BoxFuture<'_, Result<Vec<ParkedMessage>, BusError>> {
        let filter = filter.clone();
        Box::pin(async move {
            let stored = match &filter.consumer {
                // One durable's records and what was done with them.
                Some(durable) => {
                    let mut stored = self
                        .read_parked(format!("{PARKED_PREFIX}.{durable}"))
                        .await?;
                    stored.extend(
                        self.read_parked(format!("{PARKED_PREFIX}.{durable}.*"))
                            .await?,
                    );
                    stored
                }
                None => self.read_parked(format!("{PARKED_PREFIX}.>")).await?,
            };
            Ok(fold_parked(stored)
                .into_iter()
                .filter(|p| filter.matches(p))
                .collect())
        })
    }

    fn replay_parked(&self, record: u64) -> crate::BoxFuture<'_, Result<Resolution, BusError>> {
        Box::pin(self.resolve(record, None))
    }

    fn discard_parked(
        &self,
        record: u64,
        reason: String,
    ) -> crate::BoxFuture<'_, Result<Resolution, BusError>> {
        Box::pin(self.resolve(record, Some(reason)))
    }

    /// JetStream has no way to move a durable's ack floor back, so the
    /// consumer is deleted and created again with the configuration the
    /// server had for it (the provisioning tool's marks included).
    fn rewind(&self, config: &ConsumerConfig) -> crate::BoxFuture<'_, Result<(), BusError>> {
        let (filter, durable) = (config.filter_subject.clone(), config.durable.clone());
        Box::pin(async move {
            let (stream_name, stream) = self.stream_holding(&filter).await?;
            let info = match stream.consumer_info(&durable).await {
                Ok(info) => info,
                Err(e)
                    if e.kind()
                        == async_nats::jetstream::context::ConsumerInfoErrorKind::NotFound =>
                {
                    return Ok(());
                }
                Err(e) => return Err(unavailable(format!("consumer {durable}: {e}"))),
            };
            stream
                .delete_consumer(&durable)
                .await
                .map_err(|e| unavailable(format!("deleting consumer {durable}: {e}")))?;
            stream
                .create_consumer(info.config.clone())
                .await
                .map_err(|e| unavailable(format!("recreating consumer {durable}: {e}")))?;
            tracing::info!(stream = %stream_name, %durable, "consumer rewound to the stream's first message");
            Ok(())
        })
    }

    fn consumer_lag(
        &self,
        config: &ConsumerConfig,
    ) -> crate::BoxFuture<'_, Result<Option<(u64, u64)>, BusError>> {
        let (filter, durable) = (config.filter_subject.clone(), config.durable.clone());
        Box::pin(async move {
            let (_, stream) = self.stream_holding(&filter).await?;
            let info = stream.consumer_info(&durable).await.map_err(unavailable)?;
            Ok(Some((info.num_pending, info.num_ack_pending as u64)))
        })
    }

    fn check_subjects(
        &self,
        subjects: &'static [&'static str],
    ) -> crate::BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async move {
            let (mut missing, mut unanswered) = (Vec::new(), None);
            for subject in subjects {
                match self.inner.js.stream_by_subject(*subject).await {
                    Ok(_) => {}
                    Err(e) if e.kind() == GetStreamByNameErrorKind::NotFound => {
                        missing.push(*subject)
                    }
                    Err(e) => unanswered = Some(lookup_error(subject, &e)),
                }
            }
            if !missing.is_empty() {
                return Err(streams_missing(&missing));
            }
            unanswered.map_or(Ok(()), Err)
        })
    }

    fn check_ready(&self) -> crate::BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async move {
            match self.inner.client.connection_state() {
                async_nats::connection::State::Connected => Ok(()),
                state => Err(BusError::new(
                    BusErrorKind::Unavailable,
                    format!("NATS connection is {state:?}"),
                )),
            }
        })
    }
}

/// One member of a durable pull consumer.
struct JsSource {
    bus: JetStreamBus,
    main: Puller,
    /// Replays of this durable's parked messages (see [`ParkedRecord`]).
    replay: Option<Puller>,
    durable: Arc<str>,
    max_deliver: u32,
    /// Parks what the server gives up on (see `watch_advisories`).
    watcher: tokio::task::JoinHandle<()>,
}

impl Drop for JsSource {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

/// The message a replay carries (its original subject, id and headers) and
/// the original's stream sequence; `None` if a header is missing.
fn unwrap_replay(wrapped: Message) -> Option<(Message, u64)> {
    let header = |name: &str| wrapped.header(name).map(str::to_owned);
    let (Some(subject), Some(id), Some(seq)) = (
        header(REPLAY_SUBJECT),
        header(REPLAY_ID),
        header(REPLAY_SEQ).and_then(|s| s.parse::<u64>().ok()),
    ) else {
        return None;
    };
    let message = Message {
        subject,
        id,
        headers: wrapped
            .headers
            .iter()
            .filter(|(k, _)| {
                ![REPLAY_RECORD, REPLAY_SUBJECT, REPLAY_ID, REPLAY_SEQ]
                    .iter()
                    .any(|h| k.eq_ignore_ascii_case(h))
                    && !k.eq_ignore_ascii_case("Nats-Msg-Id")
            })
            .cloned()
            .collect(),
        payload: wrapped.payload,
    };
    Some((message, seq))
}

/// A JetStream message as the bus's [`Message`] (its id from `Nats-Msg-Id`).
fn message_of(msg: &async_nats::Message) -> Message {
    let mut headers = Vec::new();
    let mut id = String::new();
    if let Some(h) = &msg.headers {
        for (name, values) in h.iter() {
            for v in values {
                if name.to_string().eq_ignore_ascii_case("Nats-Msg-Id") {
                    id = v.to_string();
                }
                headers.push((name.to_string(), v.to_string()));
            }
        }
    }
    Message {
        subject: msg.subject.to_string(),
        id,
        headers,
        payload: msg.payload.to_vec(),
    }
}

/// A watch: an ordered consumer (ephemeral, flow-controlled, recreated by
/// the client from where it was when a message goes missing or the
/// connection drops) starting at the watch's start time.
struct JsWatch {
    messages: pull::Ordered,
    /// Messages still to come from before the watch began.
    remaining: u64,
    caught_up: bool,
}

impl WatchSource for JsWatch {
    fn next(&mut self) -> crate::BoxFuture<'_, Option<Result<Watched, BusError>>> {
        Box::pin(async move {
            if !self.caught_up && self.remaining == 0 {
                self.caught_up = true;
                return Some(Ok(Watched::CaughtUp));
            }
            match self.messages.next().await? {
                Ok(msg) => {
                    self.remaining = self.remaining.saturating_sub(1);
                    Some(Ok(Watched::Message(message_of(&msg))))
                }
                Err(e) => Some(Err(unavailable(format!("watch interrupted: {e}")))),
            }
        })
    }
}

/// Pulls from one durable consumer.
struct Puller {
    consumer: async_nats::jetstream::consumer::PullConsumer,
    messages: Option<pull::Stream>,
    name: Arc<str>,
}

/// What one pull gave.
enum Pulled {
    Message(Box<jetstream::Message>),
    /// The pull stream ended or broke; pull again (after a pause if broken).
    Ended {
        broken: bool,
    },
}

impl Puller {
    /// Starts a pull stream if none is running.
    async fn ensure(&mut self) -> Result<(), BusError> {
        if self.messages.is_none() {
            // Small batches with a short expiry: a member that goes away
            // strands at most a few messages, for at most the ack wait.
            let stream = self
                .consumer
                .stream()
                .max_messages_per_batch(64)
                .expires(Duration::from_secs(5))
                .heartbeat(Duration::from_secs(2))
                .messages()
                .await
                .map_err(|e| unavailable(format!("cannot pull from {}: {e}", self.name)))?;
            self.messages = Some(stream);
        }
        Ok(())
    }

    /// The next message of the running pull stream. Cancel-safe (it only
    /// awaits the stream), so two pullers can race in a `select!`.
    async fn pull(&mut self) -> Pulled {
        let Some(stream) = self.messages.as_mut() else {
            return Pulled::Ended { broken: false };
        };
        match stream.next().await {
            Some(Ok(msg)) => Pulled::Message(Box::new(msg)),
            Some(Err(e)) => {
                tracing::debug!(durable = %self.name, error = %e, "pull stream interrupted; pulling again");
                self.messages = None;
                Pulled::Ended { broken: true }
            }
            None => {
                self.messages = None;
                Pulled::Ended { broken: false }
            }
        }
    }

    /// A message of the current pull batch that is there already.
    fn ready(&mut self) -> Option<jetstream::Message> {
        use futures_util::FutureExt as _;
        let stream = self.messages.as_mut()?;
        // Polled once: anything but a message (end of batch, heartbeat,
        // error) is `pull`'s business.
        match stream.next().now_or_never()? {
            Some(Ok(msg)) => Some(msg),
            Some(Err(e)) => {
                tracing::debug!(durable = %self.name, error = %e, "pull stream interrupted; pulling again");
                self.messages = None;
                None
            }
            None => {
                self.messages = None;
                None
            }
        }
    }
}

impl JsSource {
    fn delivery(&self, msg: jetstream::Message) -> Result<Delivery, BusError> {
        let info = msg.info().map_err(|e| {
            BusError::new(BusErrorKind::Other, format!("not a JetStream message: {e}"))
        })?;
        let (seq, delivered) = (info.stream_sequence, info.delivered.max(1) as u32);
        let message = message_of(&msg);
        let park_key = format!("{}-{seq}", self.durable);
        Ok(self.settled_by(msg, message, seq, delivered, park_key))
    }

    /// A replay as the message it replays: its original subject, id,
    /// headers and stream sequence, settled on the replay consumer (a
    /// replay that fails again is parked again, as a record of its own).
    fn replay_delivery(&self, msg: jetstream::Message) -> Result<Delivery, BusError> {
        let info = msg.info().map_err(|e| {
            BusError::new(BusErrorKind::Other, format!("not a JetStream message: {e}"))
        })?;
        let (replay_seq, delivered) = (info.stream_sequence, info.delivered.max(1) as u32);
        let Some((message, seq)) = unwrap_replay(message_of(&msg)) else {
            return Err(BusError::new(
                BusErrorKind::Other,
                format!(
                    "replay {replay_seq} on {} lacks its original's subject, id or sequence",
                    self.durable
                ),
            ));
        };
        let park_key = format!("{}-{seq}-replay-{replay_seq}", self.durable);
        Ok(self.settled_by(msg, message, seq, delivered, park_key))
    }

    fn settled_by(
        &self,
        msg: jetstream::Message,
        message: Message,
        seq: u64,
        delivered: u32,
        park_key: String,
    ) -> Delivery {
        let acker = Arc::new(JsAcker {
            bus: self.bus.clone(),
            msg,
            durable: self.durable.clone(),
            seq,
            delivered,
            max_deliver: self.max_deliver,
            subject: message.subject.clone(),
            id: message.id.clone(),
            headers: message.headers.clone(),
            payload: String::from_utf8_lossy(&message.payload).into_owned(),
            park_key,
        });
        Delivery::new(message, seq, delivered, acker)
    }
}

impl DeliverySource for JsSource {
    fn ready(&mut self) -> Option<Delivery> {
        let msg = self.main.ready()?;
        self.delivery(msg).ok()
    }

    fn next(&mut self) -> crate::BoxFuture<'_, Option<Result<Delivery, BusError>>> {
        Box::pin(async move {
            loop {
                if let Err(e) = self.main.ensure().await {
                    return Some(Err(e));
                }
                if let Some(replay) = &mut self.replay
                    && let Err(e) = replay.ensure().await
                {
                    return Some(Err(e));
                }
                let (pulled, replayed) = match &mut self.replay {
                    None => (self.main.pull().await, false),
                    Some(replay) => tokio::select! {
                        p = self.main.pull() => (p, false),
                        p = replay.pull() => (p, true),
                    },
                };
                match pulled {
                    Pulled::Message(msg) if replayed => return Some(self.replay_delivery(*msg)),
                    Pulled::Message(msg) => return Some(self.delivery(*msg)),
                    Pulled::Ended { broken: true } => {
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                    Pulled::Ended { broken: false } => {}
                }
            }
        })
    }
}

struct JsAcker {
    bus: JetStreamBus,
    msg: jetstream::Message,
    durable: Arc<str>,
    seq: u64,
    delivered: u32,
    max_deliver: u32,
    subject: String,
    id: String,
    headers: Vec<(String, String)>,
    payload: String,
    /// What makes its parked record unique (see `record_parked`).
    park_key: String,
}

impl JsAcker {
    /// Records the message on the parked stream, then terminates it.
    async fn park(&self, reason: String) -> Result<(), BusError> {
        self.bus
            .record_parked(
                &ParkedRecord {
                    consumer: self.durable.to_string(),
                    seq: self.seq,
                    subject: self.subject.clone(),
                    id: self.id.clone(),
                    deliveries: self.delivered,
                    reason,
                    payload: self.payload.clone(),
                    headers: self.headers.clone(),
                },
                &self.park_key,
            )
            .await?;
        self.msg
            .double_ack_with(AckKind::Term)
            .await
            .map_err(unavailable)
    }
}

impl JsAcker {
    /// Delivers again after `delay` — or, on its last delivery, parks it
    /// (with the handler's `error`, when it failed).
    async fn retry_or_park(&self, delay: Duration, error: Option<String>) -> Result<(), BusError> {
        if self.delivered >= self.max_deliver {
            let mut reason = format!("not acknowledged after {} deliveries", self.delivered);
            if let Some(e) = error {
                reason.push_str(&format!("; last error: {e}"));
            }
            return self.park(reason).await;
        }
        self.msg
            .ack_with(AckKind::Nak(Some(delay)))
            .await
            .map_err(unavailable)
    }
}

impl Acker for JsAcker {
    fn ack(&self) -> crate::BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async move { self.msg.double_ack().await.map_err(unavailable) })
    }

    fn nak(&self, delay: Duration) -> crate::BoxFuture<'_, Result<(), BusError>> {
        Box::pin(self.retry_or_park(delay, None))
    }

    fn fail(&self, delay: Duration, error: String) -> crate::BoxFuture<'_, Result<(), BusError>> {
        Box::pin(self.retry_or_park(delay, Some(error)))
    }

    fn term(&self, reason: String) -> crate::BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async move { self.park(format!("terminated: {reason}")).await })
    }

    fn in_progress(&self) -> crate::BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async move {
            self.msg
                .ack_with(AckKind::Progress)
                .await
                .map_err(unavailable)
        })
    }
}

/// Test support: a stream per test on a real server.
#[cfg(feature = "testing")]
pub mod testing {
    use std::time::Duration;

    use async_nats::jetstream::stream;

    use super::{JetStreamBus, PARKED_PREFIX, PARKED_STREAM};

    /// The server tests use (`TICKETING_TEST_NATS_URL`, default the local one).
    pub fn nats_url() -> String {
        std::env::var("TICKETING_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
    }

    /// Connects to the test server, or `None` (after saying why) when it is
    /// unreachable and engines are optional; panics when they are required.
    pub async fn connect() -> Option<async_nats::Client> {
        let url = nats_url();
        let attempt = tokio::time::timeout(
            Duration::from_secs(3),
            async_nats::ConnectOptions::new()
                .name("ticketing-tests")
                .connect(&url),
        )
        .await;
        match attempt {
            Ok(Ok(client)) => Some(client),
            other => {
                let why = match other {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".into(),
                };
                if store::testing::engines_required() {
                    panic!(
                        "NATS at {url} is required (TICKETING_REQUIRE_ENGINES=1) but unreachable: {why}"
                    );
                }
                store::testing::skipped(&format!(
                    "NATS at {url} is unreachable ({why}); set TICKETING_TEST_NATS_URL or start nats-server -js"
                ));
                None
            }
        }
    }

    /// A stream of its own for one test; deleted when dropped.
    pub struct TestStream {
        pub name: String,
        /// Subjects are `{prefix}.…`.
        pub prefix: String,
        url: String,
        /// Whether the prefix is this run's own (`stream`), so that parked
        /// stream consumers named after it are the test's to delete.
        own_prefix: bool,
    }

    /// A stream called `name` over `subjects` (a test's own, fixed
    /// subject), replacing one a previous run left; deleted when dropped.
    pub async fn stream_over(bus: &JetStreamBus, name: &str, subjects: &str) -> TestStream {
        let _ = bus.context().delete_stream(name).await;
        create(bus, name.into(), subjects.trim_end_matches(".>").into()).await
    }

    /// Creates a file-storage stream over `{prefix}.>` with a fresh prefix,
    /// and the shared parked stream if missing.
    pub async fn stream(bus: &JetStreamBus) -> TestStream {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let prefix = format!("t{}x{nanos}x{n}", std::process::id());
        let mut stream = create(bus, prefix.to_uppercase(), prefix).await;
        stream.own_prefix = true;
        stream
    }

    /// A file-storage stream `name` over `{prefix}.>`, and the shared
    /// parked stream if missing.
    async fn create(bus: &JetStreamBus, name: String, prefix: String) -> TestStream {
        let js = bus.context();
        js.create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![format!("{prefix}.>")],
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            max_age: Duration::from_secs(3600),
            ..Default::default()
        })
        .await
        .expect("create test stream");
        let _ = js
            .get_or_create_stream(stream::Config {
                name: PARKED_STREAM.into(),
                subjects: vec![format!("{PARKED_PREFIX}.>")],
                storage: stream::StorageType::File,
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await;
        TestStream {
            name,
            prefix,
            url: nats_url(),
            own_prefix: false,
        }
    }

    impl Drop for TestStream {
        fn drop(&mut self) {
            let (url, name) = (self.url.clone(), self.name.clone());
            let prefix = self.own_prefix.then(|| self.prefix.replace('.', "-"));
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .ok()?;
                rt.block_on(async {
                    let client = async_nats::connect(&url).await.ok()?;
                    let js = async_nats::jetstream::new(client);
                    // The replay consumers its durables made on the shared
                    // parked stream go with it (their names begin with the
                    // prefix, as the durables' do).
                    if let Some(prefix) = prefix
                        && let Ok(parked) = js.get_stream(PARKED_STREAM).await
                    {
                        use futures_util::StreamExt as _;
                        let mut names = parked.consumer_names();
                        let mut mine = Vec::new();
                        while let Some(Ok(n)) = names.next().await {
                            if n.starts_with(&prefix) {
                                mine.push(n);
                            }
                        }
                        for n in mine {
                            let _ = parked.delete_consumer(&n).await;
                        }
                    }
                    js.delete_stream(&name).await.ok()
                })
            })
            .join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Readiness said "has `ticketing streams apply` run?" while a cluster
    /// only elected its meta leader: a question unanswered is not a stream
    /// missing.
    #[test]
    fn a_stream_lookup_unanswered_is_unavailable_not_missing() {
        let missing = lookup_error(
            "a.b",
            &GetStreamByNameError::new(GetStreamByNameErrorKind::NotFound),
        );
        assert_eq!(missing.kind, BusErrorKind::StreamMissing);
        assert!(missing.message.contains("no stream holds a.b"), "{missing}");
        assert!(missing.message.contains("streams apply"), "{missing}");
        let several = streams_missing(&["a.b", "c.d"]);
        assert!(
            several.message.contains("no stream holds a.b, c.d"),
            "{several}"
        );

        let unanswered = lookup_error(
            "a.b",
            &GetStreamByNameError::new(GetStreamByNameErrorKind::Request),
        );
        assert_eq!(unanswered.kind, BusErrorKind::Unavailable);
        assert!(
            !unanswered.message.contains("streams apply"),
            "{unanswered}"
        );
    }

    #[test]
    fn nats_url_takes_one_server_or_a_comma_separated_list() {
        assert_eq!(server_list("nats://127.0.0.1:4222").unwrap().len(), 1);
        let three = server_list("nats://a:4222, nats://b:4222,c:4222,").unwrap();
        let ports: Vec<u16> = three.iter().map(|s| s.port()).collect();
        assert_eq!(ports, [4222, 4222, 4222]);
        assert_eq!(three[2].host(), "c");
        for bad in ["", " , ", "nats://a:4222,http://b:80"] {
            let e = server_list(bad).unwrap_err();
            assert_eq!(e.kind, BusErrorKind::Config, "{bad:?}: {e}");
            assert!(e.to_string().contains("NATS_URL"), "{e}");
        }
    }
}

#[cfg(test)]
mod reconnect_tests {
    use super::*;

    #[test]
    fn reconnections_are_tried_at_once_then_at_most_every_quarter_second() {
        assert_eq!(reconnect_delay(0), Duration::ZERO);
        assert_eq!(reconnect_delay(1), Duration::ZERO);
        assert_eq!(reconnect_delay(2), Duration::from_millis(2));
        assert_eq!(reconnect_delay(5), Duration::from_millis(16));
        assert_eq!(reconnect_delay(9), MAX_RECONNECT_DELAY);
        assert_eq!(reconnect_delay(usize::MAX), MAX_RECONNECT_DELAY);
    }
}
