//! A durable consumer's members on the embedded bus: fetching their
//! deliveries and settling them (ack, nak, term, in progress).

use super::*;

/// One member of a durable consumer on the embedded bus.
pub(super) struct EmbeddedSource {
    pub(super) inner: Arc<Inner>,
    pub(super) consumer: Arc<str>,
    /// The consumer's wake-up for what is published to it.
    pub(super) published: Arc<Notify>,
    pub(super) buffer: VecDeque<Delivery>,
}

pub(super) struct Fetched {
    deliveries: Vec<(Message, i64, u32)>,
    parked: Vec<ParkedMessage>,
    /// When the next invisible pending message becomes visible, if any.
    next_visible: Option<i64>,
}

impl EmbeddedSource {
    async fn fetch(&self) -> Result<Fetched, BusError> {
        let now = self.inner.clock.now().millis();
        let consumer = self.consumer.clone();
        let consumers = self.inner.consumers.clone();
        self.inner
            .db
            .write(move |c| -> Result<Fetched, BusError> {
                let def = lock(&consumers).get(&*consumer).cloned().ok_or_else(|| {
                    BusError::new(BusErrorKind::Config, format!("no consumer {consumer}"))
                })?;
                let rows = c.query(
                    "SELECT p.seq, p.deliveries, m.subject, m.msg_id, m.headers, m.payload
                     FROM pending p JOIN messages m ON m.seq = p.seq
                     WHERE p.consumer = $1 AND p.visible_at <= $2
                     ORDER BY p.seq LIMIT $3",
                    &[&&*consumer, &now, &FETCH_BATCH],
                )?;
                let mut out = Fetched {
                    deliveries: Vec::new(),
                    parked: Vec::new(),
                    next_visible: None,
                };
                for r in rows {
                    let seq: i64 = r.get(0)?;
                    let deliveries: i64 = r.get(1)?;
                    if deliveries >= def.max_deliver {
                        if let Some(p) = park(c, &consumer, seq, None, now)? {
                            out.parked.push(p);
                        }
                        continue;
                    }
                    c.execute(
                        "UPDATE pending SET deliveries = deliveries + 1, visible_at = $3
                         WHERE consumer = $1 AND seq = $2",
                        &[&&*consumer, &seq, &(now + def.ack_wait_ms)],
                    )?;
                    let message = Message {
                        subject: r.get(2)?,
                        id: r.get(3)?,
                        headers: decode_headers(&r.get::<String>(4)?),
                        payload: r.get::<String>(5)?.into_bytes(),
                    };
                    out.deliveries.push((message, seq, (deliveries + 1) as u32));
                }
                if out.deliveries.is_empty() {
                    out.next_visible = c
                        .query_opt(
                            "SELECT MIN(visible_at) FROM pending WHERE consumer = $1",
                            &[&&*consumer],
                        )?
                        .and_then(|r| r.get::<Option<i64>>(0).ok().flatten());
                }
                Ok(out)
            })
            .await
    }
}

impl DeliverySource for EmbeddedSource {
    fn ready(&mut self) -> Option<Delivery> {
        self.buffer.pop_front()
    }

    fn next(&mut self) -> crate::BoxFuture<'_, Option<Result<Delivery, BusError>>> {
        Box::pin(async move {
            loop {
                if let Some(d) = self.buffer.pop_front() {
                    return Some(Ok(d));
                }
                // Register for wake-ups before looking, so a publish that
                // lands between the look and the wait is not missed.
                let (inner, published) = (self.inner.clone(), self.published.clone());
                let woken = inner.wake.notified();
                let arrived = published.notified();
                tokio::pin!(woken, arrived);
                woken.as_mut().enable();
                arrived.as_mut().enable();
                let fetched = match self.fetch().await {
                    Ok(f) => f,
                    Err(e) => return Some(Err(e)),
                };
                fetched.parked.iter().for_each(report_parked);
                for (message, seq, delivered) in fetched.deliveries {
                    let acker = Arc::new(EmbeddedAcker {
                        inner: self.inner.clone(),
                        consumer: self.consumer.clone(),
                        seq,
                    });
                    self.buffer
                        .push_back(Delivery::new(message, seq as u64, delivered, acker));
                }
                if !self.buffer.is_empty() || !fetched.parked.is_empty() {
                    continue;
                }
                let sleep_for = match fetched.next_visible {
                    Some(at) => {
                        Duration::from_millis((at - self.inner.clock.now().millis()).max(1) as u64)
                    }
                    None => Duration::from_secs(3600),
                };
                tokio::select! {
                    _ = woken => {}
                    _ = arrived => {}
                    _ = tokio::time::sleep(sleep_for) => {}
                }
            }
        })
    }
}

pub(super) struct EmbeddedAcker {
    inner: Arc<Inner>,
    consumer: Arc<str>,
    seq: i64,
}

impl EmbeddedAcker {
    async fn set_visible_in(&self, delay: Duration) -> Result<(), BusError> {
        let at = self.inner.clock.now().millis() + delay.as_millis() as i64;
        let (consumer, seq) = (self.consumer.clone(), self.seq);
        self.inner
            .db
            .write(move |c| {
                c.execute(
                    "UPDATE pending SET visible_at = $3 WHERE consumer = $1 AND seq = $2",
                    &[&&*consumer, &seq, &at],
                )
            })
            .await?;
        Ok(())
    }

    /// Delivers again after `delay`, keeping `error` for the record — or,
    /// if that was its last delivery, parks it now with `error`.
    async fn retry_after_error(&self, delay: Duration, error: String) -> Result<(), BusError> {
        let now = self.inner.clock.now().millis();
        let at = now + delay.as_millis() as i64;
        let (consumer, seq) = (self.consumer.clone(), self.seq);
        let consumers = self.inner.consumers.clone();
        let parked = self
            .inner
            .db
            .write(move |c| {
                c.execute(
                    "UPDATE pending SET visible_at = $3, last_error = $4 WHERE consumer = $1 AND seq = $2",
                    &[&&*consumer, &seq, &at, &error],
                )?;
                let max_deliver = lock(&consumers).get(&*consumer).map(|d| d.max_deliver);
                let delivered: Option<i64> = c
                    .query_opt(
                        "SELECT deliveries FROM pending WHERE consumer = $1 AND seq = $2",
                        &[&&*consumer, &seq],
                    )?
                    .map(|r| r.get(0))
                    .transpose()?;
                match (delivered, max_deliver) {
                    (Some(d), Some(max)) if d >= max => park(c, &consumer, seq, None, now),
                    _ => Ok(None),
                }
            })
            .await?;
        match parked {
            Some(p) => report_parked(&p),
            // Only this consumer's pending rows changed: its members look
            // again (and sleep until the retry is due).
            None => self.inner.consumer_wake(&self.consumer).notify_waiters(),
        }
        Ok(())
    }
}

impl Acker for EmbeddedAcker {
    fn ack(&self) -> crate::BoxFuture<'_, Result<(), BusError>> {
        Box::pin(self.inner.ack(self.consumer.clone(), self.seq))
    }

    fn nak(&self, delay: Duration) -> crate::BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async move {
            self.set_visible_in(delay).await?;
            self.inner.consumer_wake(&self.consumer).notify_waiters();
            Ok(())
        })
    }

    fn fail(&self, delay: Duration, error: String) -> crate::BoxFuture<'_, Result<(), BusError>> {
        Box::pin(self.retry_after_error(delay, error))
    }

    fn term(&self, reason: String) -> crate::BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async move {
            let now = self.inner.clock.now().millis();
            let (consumer, seq) = (self.consumer.clone(), self.seq);
            let parked = self
                .inner
                .db
                .write(move |c| park(c, &consumer, seq, Some(&reason), now))
                .await?;
            if let Some(p) = parked {
                report_parked(&p);
            }
            Ok(())
        })
    }

    fn in_progress(&self) -> crate::BoxFuture<'_, Result<(), BusError>> {
        Box::pin(async move {
            let ack_wait = lock(&self.inner.consumers)
                .get(&*self.consumer)
                .map(|d| d.ack_wait_ms)
                .unwrap_or(30_000);
            self.set_visible_in(Duration::from_millis(ack_wait as u64))
                .await
        })
    }
}
