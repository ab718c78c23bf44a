//! Consuming on JetStream: one durable pull consumer per (service,
//! subject), shared by all replicas (each pull request gets distinct
//! messages); a member of it (its pulls, and its parked messages'
//! replays), and what it hands the listener. Settling a delivery is in
//! `ack`, watches in `watch`.

use async_nats::jetstream;
use async_nats::jetstream::consumer::pull;
use futures_util::StreamExt;

use super::*;

/// One member of a durable pull consumer.
pub(super) struct JsSource {
    pub(super) bus: JetStreamBus,
    pub(super) main: Puller,
    /// Replays of this durable's parked messages (see [`ParkedRecord`]).
    pub(super) replay: Option<Puller>,
    pub(super) durable: Arc<str>,
    pub(super) max_deliver: u32,
    /// Parks what the server gives up on (see `watch_advisories`).
    pub(super) watcher: tokio::task::JoinHandle<()>,
}

impl Drop for JsSource {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

/// The message a replay carries (its original subject, id and headers) and
/// the original's stream sequence; `None` if a header is missing.
pub(super) fn unwrap_replay(wrapped: Message) -> Option<(Message, u64)> {
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
pub(super) fn message_of(msg: &async_nats::Message) -> Message {
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

/// Pulls from one durable consumer.
pub(super) struct Puller {
    pub(super) consumer: async_nats::jetstream::consumer::PullConsumer,
    pub(super) messages: Option<pull::Stream>,
    pub(super) name: Arc<str>,
}

/// What one pull gave.
pub(super) enum Pulled {
    Message(Box<jetstream::Message>),
    /// The pull stream ended or broke; pull again (after a pause if broken).
    Ended {
        broken: bool,
    },
}

impl Puller {
    /// Starts a pull stream if none is running.
    pub(super) async fn ensure(&mut self) -> Result<(), BusError> {
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
    pub(super) async fn pull(&mut self) -> Pulled {
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
    pub(super) fn ready(&mut self) -> Option<jetstream::Message> {
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
    pub(super) fn delivery(&self, msg: jetstream::Message) -> Result<Delivery, BusError> {
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
    pub(super) fn replay_delivery(&self, msg: jetstream::Message) -> Result<Delivery, BusError> {
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

    pub(super) fn settled_by(
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

impl JetStreamBus {
    pub(super) async fn subscribe_durable(
        &self,
        config: ConsumerConfig,
    ) -> Result<Subscription, BusError> {
        let (stream_name, stream) = self.stream_holding(&config.filter_subject).await?;
        let consumer: async_nats::jetstream::consumer::PullConsumer = stream
            .get_or_create_consumer(
                &config.durable,
                durable_config(
                    &config.durable,
                    "durable consumer (a listener's)".into(),
                    config.filter_subject.clone(),
                    &config,
                ),
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
    }

    pub(super) async fn rewind_durable(
        &self,
        filter: String,
        durable: String,
    ) -> Result<(), BusError> {
        let (stream_name, stream) = self.stream_holding(&filter).await?;
        let info = match stream.consumer_info(&durable).await {
            Ok(info) => info,
            Err(e)
                if e.kind() == async_nats::jetstream::context::ConsumerInfoErrorKind::NotFound =>
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
    }

    pub(super) async fn lag_of(
        &self,
        filter: String,
        durable: String,
    ) -> Result<Option<(u64, u64)>, BusError> {
        let (_, stream) = self.stream_holding(&filter).await?;
        let info = stream.consumer_info(&durable).await.map_err(unavailable)?;
        Ok(Some((info.num_pending, info.num_ack_pending as u64)))
    }
}

/// A durable pull consumer `name` of `filter`, from the stream's first
/// message, acknowledged one by one with `config`'s ack wait and
/// deliveries (a listener's, or its parked messages' replays).
pub(super) fn durable_config(
    name: &str,
    description: String,
    filter: String,
    config: &ConsumerConfig,
) -> pull::Config {
    pull::Config {
        durable_name: Some(name.to_owned()),
        description: Some(description),
        filter_subject: filter,
        deliver_policy: DeliverPolicy::All,
        ack_policy: AckPolicy::Explicit,
        ack_wait: config.ack_wait,
        max_deliver: i64::from(config.max_deliver),
        ..Default::default()
    }
}
