//! Parked messages on JetStream: the records on the parked stream, what
//! operators did with them (replays and discards), and the server's
//! advisories that name messages a consumer gave up on.

use async_nats::jetstream;
use async_nats::jetstream::consumer::pull;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::*;

/// A parked-message record as stored on the parked stream, under
/// `parked.<durable>`; its id is its sequence there. What operators do with
/// it is recorded beside it: a replay is the message itself, published
/// again on `parked.<durable>.replay` (which only that durable's
/// `<durable>-replay` consumer reads), a discard is a note on
/// `parked.<durable>.discard`.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct ParkedRecord {
    pub(super) consumer: String,
    pub(super) seq: u64,
    pub(super) subject: String,
    pub(super) id: String,
    pub(super) deliveries: u32,
    pub(super) reason: String,
    pub(super) payload: String,
    /// The message's headers (records from before they were kept have none).
    #[serde(default)]
    pub(super) headers: Vec<(String, String)>,
}

/// A discard, as recorded on `parked.<durable>.discard`.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct DiscardRecord {
    pub(super) record: u64,
    pub(super) reason: String,
}

/// Headers of a replay besides the original message's own: the record it
/// replays, and the original's subject, id and stream sequence.
pub(super) const REPLAY_RECORD: &str = "Ticketing-Parked-Record";
pub(super) const REPLAY_SUBJECT: &str = "Ticketing-Replay-Subject";
pub(super) const REPLAY_ID: &str = "Ticketing-Replay-Id";
pub(super) const REPLAY_SEQ: &str = "Ticketing-Replay-Seq";

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
pub(super) struct Stored {
    pub(super) seq: u64,
    pub(super) subject: String,
    pub(super) headers: Vec<(String, String)>,
    pub(super) payload: Vec<u8>,
    pub(super) at: shared::time::Timestamp,
}

pub(super) fn timestamp_of(t: time::OffsetDateTime) -> shared::time::Timestamp {
    shared::time::Timestamp::from_millis((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

/// The records among `stored`, each in the state its replay or discard
/// (if any) left it.
pub(super) fn fold_parked(stored: Vec<Stored>) -> Vec<ParkedMessage> {
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
pub(super) struct MaxDeliveriesAdvisory {
    pub(super) stream: String,
    pub(super) consumer: String,
    pub(super) stream_seq: u64,
    pub(super) deliveries: u32,
}

/// The server's advisory that a consumer's message was terminated (an
/// `AckTerm`), from nats-server 2.10.
#[derive(Debug, Deserialize)]
pub(super) struct TerminatedAdvisory {
    pub(super) stream: String,
    pub(super) consumer: String,
}

impl JetStreamBus {
    /// Stores `record` on the parked stream (de-duplicated by `key` —
    /// consumer and sequence, and the replay's for a replayed message — so
    /// replicas and both parking paths record it once) and logs and counts
    /// it the first time.
    pub(super) async fn record_parked(
        &self,
        record: &ParkedRecord,
        key: &str,
    ) -> Result<(), BusError> {
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
    pub(super) async fn read_parked(&self, filter: String) -> Result<Vec<Stored>, BusError> {
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

    pub(super) async fn parked_stream(&self) -> Result<jetstream::stream::Stream, BusError> {
        self.inner.js.get_stream(PARKED_STREAM).await.map_err(|e| {
            BusError::new(
                BusErrorKind::StreamMissing,
                format!("parked stream {PARKED_STREAM}: {e}"),
            )
        })
    }

    /// Replays (`discard` None) or discards the record `record`.
    pub(super) async fn resolve(
        &self,
        record: u64,
        discard: Option<String>,
    ) -> Result<Resolution, BusError> {
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
    pub(super) async fn park_from_advisory(
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
    pub(super) async fn replay_consumer(
        &self,
        config: &ConsumerConfig,
    ) -> Option<async_nats::jetstream::consumer::PullConsumer> {
        let name = replay_durable(&config.durable);
        let created = async {
            self.parked_stream()
                .await?
                .get_or_create_consumer(
                    &name,
                    durable_config(
                        &name,
                        replay_description(&config.durable),
                        replay_subject(&config.durable),
                        config,
                    ),
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
    pub(super) async fn watch_advisories(
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
}
