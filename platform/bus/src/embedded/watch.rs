//! Watches on the embedded bus: the log read after a sequence, woken by
//! publishes.

use super::*;

/// A watch on the embedded bus: reads the log after the last sequence it
/// has looked at, and waits for a publish when it has read it all.
pub(super) struct EmbeddedWatch {
    pub(super) inner: Arc<Inner>,
    /// Woken by publishes its filter matches.
    pub(super) wake: Arc<Notify>,
    pub(super) filter: String,
    /// The last sequence looked at.
    pub(super) after: i64,
    /// The last sequence when the watch began.
    pub(super) history_end: i64,
    pub(super) caught_up: bool,
    pub(super) buffer: VecDeque<Message>,
}

impl Drop for EmbeddedWatch {
    fn drop(&mut self) {
        lock(&self.inner.watches).retain(|(_, w)| !Arc::ptr_eq(w, &self.wake));
    }
}

/// How many logged messages one read of a watch looks at.
pub(super) const WATCH_BATCH: i64 = 512;

impl WatchSource for EmbeddedWatch {
    fn next(&mut self) -> crate::BoxFuture<'_, Option<Result<Watched, BusError>>> {
        Box::pin(async move {
            loop {
                if let Some(m) = self.buffer.pop_front() {
                    return Some(Ok(Watched::Message(m)));
                }
                if !self.caught_up && self.after >= self.history_end {
                    self.caught_up = true;
                    return Some(Ok(Watched::CaughtUp));
                }
                let wake = self.wake.clone();
                let woken = wake.notified();
                tokio::pin!(woken);
                woken.as_mut().enable();
                let after = self.after;
                let rows = self
                    .inner
                    .db
                    .read(move |c| {
                        c.query(
                            "SELECT seq, subject, msg_id, headers, payload FROM messages
                             WHERE seq > $1 ORDER BY seq LIMIT $2",
                            &[&after, &WATCH_BATCH],
                        )?
                        .into_iter()
                        .map(|r| {
                            Ok((
                                r.get::<i64>(0)?,
                                Message {
                                    subject: r.get(1)?,
                                    id: r.get(2)?,
                                    headers: decode_headers(&r.get::<String>(3)?),
                                    payload: r.get::<String>(4)?.into_bytes(),
                                },
                            ))
                        })
                        .collect::<Result<Vec<_>, StoreError>>()
                    })
                    .await;
                let rows = match rows {
                    Ok(rows) => rows,
                    Err(e) => return Some(Err(e.into())),
                };
                if rows.is_empty() {
                    woken.await;
                    continue;
                }
                for (seq, m) in rows {
                    self.after = seq;
                    if subject::matches(&self.filter, &m.subject) {
                        self.buffer.push_back(m);
                    }
                }
            }
        })
    }
}
