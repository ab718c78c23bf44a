//! Publishing on JetStream: an awaited publish-ack per message,
//! `Nats-Msg-Id` = the message id (the stream's duplicate window drops a
//! relay's retry), and which stream holds a subject.

use async_nats::jetstream::context::{GetStreamByNameError, GetStreamByNameErrorKind};
use async_nats::jetstream::message::PublishMessage;

use super::*;

impl JetStreamBus {
    pub(super) async fn publish_one(&self, msg: Message) -> Result<PublishAck, BusError> {
        let subject = msg.subject.clone();
        let ack = self.send(msg).await?;
        await_ack(&subject, ack).await
    }

    /// Sends every message first and then awaits the acks.
    pub(super) async fn publish_many(
        &self,
        msgs: Vec<Message>,
    ) -> Result<Vec<PublishAck>, BusError> {
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

    /// The stream whose subjects hold `subject`, by name and handle.
    pub(super) async fn stream_holding(
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

    /// Whether some stream holds each of `subjects`.
    pub(super) async fn streams_hold(&self, subjects: &[&str]) -> Result<(), BusError> {
        let (mut missing, mut unanswered) = (Vec::new(), None);
        for subject in subjects {
            match self.inner.js.stream_by_subject(*subject).await {
                Ok(_) => {}
                Err(e) if e.kind() == GetStreamByNameErrorKind::NotFound => missing.push(*subject),
                Err(e) => unanswered = Some(lookup_error(subject, &e)),
            }
        }
        if !missing.is_empty() {
            return Err(streams_missing(&missing));
        }
        unanswered.map_or(Ok(()), Err)
    }
}

/// No stream holds `subjects`: the streams were not provisioned.
pub(super) fn streams_missing(subjects: &[&str]) -> BusError {
    BusError::new(
        BusErrorKind::StreamMissing,
        format!(
            "no stream holds {} (the streams are not provisioned: run `streams apply`)",
            subjects.join(", ")
        ),
    )
}

/// Why no stream could be found for `subject`: none holds it, or the
/// question went unanswered — a cluster electing its meta leader, which is
/// no reason to suggest provisioning.
pub(super) fn lookup_error(subject: &str, e: &GetStreamByNameError) -> BusError {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Readiness said the streams were not provisioned while a cluster
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
}
