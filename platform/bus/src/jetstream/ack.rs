//! Settling a delivery on JetStream: explicit acks confirmed by the server
//! (double ack, so an ack is never lost silently), naks with a delay for
//! early events, progress acks for slow handlers, and parking a message
//! before terminating it.

use async_nats::jetstream::{self, AckKind};

use super::*;

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
