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
//!
//! Here: connecting and the [`Bus`] contract; the rest by concept:
//! `publish`, `consume`, `ack`, `watch`, `parked`, and test streams in
//! `testing`.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy};

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

mod ack;
mod consume;
mod parked;
mod publish;
#[cfg(feature = "testing")]
pub mod testing;
mod watch;

use ack::JsAcker;
use consume::{durable_config, message_of, unwrap_replay};
use parked::{ParkedRecord, REPLAY_ID, REPLAY_RECORD, REPLAY_SEQ, REPLAY_SUBJECT, fold_parked};
pub use parked::{replay_description, replay_durable, replay_subject};

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
}

impl Bus for JetStreamBus {
    fn publish(&self, msg: Message) -> crate::BoxFuture<'_, Result<PublishAck, BusError>> {
        Box::pin(self.publish_one(msg))
    }

    /// Sends every message first and then awaits the acks, so a batch costs
    /// about one round trip instead of one per message.
    fn publish_batch(
        &self,
        msgs: Vec<Message>,
    ) -> crate::BoxFuture<'_, Result<Vec<PublishAck>, BusError>> {
        Box::pin(self.publish_many(msgs))
    }

    fn subscribe(
        &self,
        config: ConsumerConfig,
    ) -> crate::BoxFuture<'_, Result<Subscription, BusError>> {
        Box::pin(self.subscribe_durable(config))
    }

    fn watch(
        &self,
        filter_subject: &str,
        since: shared::time::Timestamp,
    ) -> crate::BoxFuture<'_, Result<Watch, BusError>> {
        Box::pin(self.watch_from(filter_subject.to_owned(), since))
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
        Box::pin(self.rewind_durable(config.filter_subject.clone(), config.durable.clone()))
    }

    fn consumer_lag(
        &self,
        config: &ConsumerConfig,
    ) -> crate::BoxFuture<'_, Result<Option<(u64, u64)>, BusError>> {
        Box::pin(self.lag_of(config.filter_subject.clone(), config.durable.clone()))
    }

    fn check_subjects(
        &self,
        subjects: &'static [&'static str],
    ) -> crate::BoxFuture<'_, Result<(), BusError>> {
        Box::pin(self.streams_hold(subjects))
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

#[cfg(test)]
mod tests {
    use super::*;

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
