//! Consuming on JetStream: a member of a durable pull consumer (its pulls,
//! and its parked messages' replays), what it hands the listener, how a
//! delivery is settled, and the ordered watches.

use async_nats::jetstream::consumer::pull;
use async_nats::jetstream::{self, AckKind};
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

/// A watch: an ordered consumer (ephemeral, flow-controlled, recreated by
/// the client from where it was when a message goes missing or the
/// connection drops) starting at the watch's start time.
pub(super) struct JsWatch {
    pub(super) messages: pull::Ordered,
    /// Messages still to come from before the watch began.
    pub(super) remaining: u64,
    pub(super) caught_up: bool,
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

pub(super) struct JsAcker {
    pub(super) bus: JetStreamBus,
    pub(super) msg: jetstream::Message,
    pub(super) durable: Arc<str>,
    pub(super) seq: u64,
    pub(super) delivered: u32,
    pub(super) max_deliver: u32,
    pub(super) subject: String,
    pub(super) id: String,
    pub(super) headers: Vec<(String, String)>,
    pub(super) payload: String,
    /// What makes its parked record unique (see `record_parked`).
    pub(super) park_key: String,
}

impl JsAcker {
    /// Records the message on the parked stream, then terminates it.
    pub(super) async fn park(&self, reason: String) -> Result<(), BusError> {
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
    pub(super) async fn retry_or_park(
        &self,
        delay: Duration,
        error: Option<String>,
    ) -> Result<(), BusError> {
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
