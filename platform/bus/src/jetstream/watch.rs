//! Watching on JetStream: an ordered consumer from a start time.

use async_nats::jetstream::consumer::pull;
use futures_util::StreamExt;

use super::*;

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

impl JetStreamBus {
    pub(super) async fn watch_from(
        &self,
        filter: String,
        since: shared::time::Timestamp,
    ) -> Result<Watch, BusError> {
        let (_, stream) = self.stream_holding(&filter).await?;
        let start_time =
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(since.millis()) * 1_000_000)
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
    }
}
