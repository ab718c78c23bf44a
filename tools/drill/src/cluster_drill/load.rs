//! The purchase load of the cluster drill: buyers and a seller behind the
//! gateway, each request retried through a fault under one idempotency
//! key, and the outboxes' longest wait sampled meanwhile.

use super::*;

/// Buyers signed up before the load; purchases take them in turn.
pub(super) const BUYERS: usize = 16;

/// The load's view of the system: the gateway, and the sessions of a
/// seller and of the buyers (signed up through it).
pub(super) struct Target {
    pub(super) http: reqwest::Client,
    pub(super) gateway: String,
    pub(super) seller: String,
    pub(super) buyers: Vec<String>,
}

/// One request's outcome after retries, and what it cost.
pub(super) struct Sent {
    pub(super) status: u16,
    pub(super) body: Value,
    pub(super) elapsed: Duration,
    pub(super) unavailable: usize,
}

impl Target {
    /// Sends until an answer that is not 503 / 502 / a connection error (or
    /// one of `retry_on`), for at most 30 s; every try under one
    /// `Idempotency-Key`, so a retry after a lost answer gets that answer
    /// where the API keeps it (orders, payments).
    pub(super) async fn send(
        &self,
        token: &str,
        url: &str,
        body: &Value,
        retry_on: &[u16],
    ) -> Sent {
        let started = Instant::now();
        let mut unavailable = 0;
        let key = uuid::Uuid::new_v4().simple().to_string();
        loop {
            let res = self
                .http
                .post(url)
                .bearer_auth(token)
                .header("idempotency-key", &key)
                .json(body)
                .send()
                .await;
            let (status, body) = match res {
                Ok(r) => {
                    let status = r.status().as_u16();
                    (status, r.json::<Value>().await.unwrap_or(Value::Null))
                }
                Err(_) => (0, Value::Null),
            };
            let retry = matches!(status, 0 | 502 | 503) || retry_on.contains(&status);
            if matches!(status, 0 | 502 | 503) {
                unavailable += 1;
            }
            if !retry || started.elapsed() > Duration::from_secs(30) {
                return Sent {
                    status,
                    body,
                    elapsed: started.elapsed(),
                    unavailable,
                };
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// One purchase: a ticket listed, ordered, and paid unless `unpaid`.
    pub(super) async fn purchase(
        &self,
        n: usize,
        unpaid: bool,
        stats: &Mutex<Phase>,
    ) -> anyhow::Result<()> {
        let buyer = &self.buyers[n % self.buyers.len()];
        let gateway = &self.gateway;
        let record = |s: &Sent| {
            let mut p = stats.lock().unwrap_or_else(|e| e.into_inner());
            p.requests += 1;
            p.unavailable += s.unavailable;
            p.longest_request = p.longest_request.max(s.elapsed);
        };
        let listed = self
            .send(
                &self.seller,
                &format!("{gateway}/api/tickets"),
                &json!({"title": format!("Drill {n}"), "price": 20}),
                &[],
            )
            .await;
        record(&listed);
        if listed.status != 201 {
            anyhow::bail!("listing {n}: {} {}", listed.status, listed.body);
        }
        let ticket = listed.body["id"].as_str().unwrap_or_default().to_owned();
        // 404 until orders has learned of the ticket.
        let ordered = self
            .send(
                buyer,
                &format!("{gateway}/api/orders"),
                &json!({"ticketId": ticket}),
                &[404],
            )
            .await;
        record(&ordered);
        match ordered.status {
            201 => {}
            // A retry after a lost answer: the first attempt reserved it.
            409 if ordered.unavailable > 0 => return Ok(()),
            s => anyhow::bail!("ordering {ticket}: {s} {}", ordered.body),
        }
        if unpaid {
            return Ok(());
        }
        let order = ordered.body["id"].as_str().unwrap_or_default().to_owned();
        // 404 until payments has learned of the order.
        let paid = self
            .send(
                buyer,
                &format!("{gateway}/api/payments"),
                &json!({"orderId": order, "token": "tok_visa"}),
                &[404],
            )
            .await;
        record(&paid);
        let message = paid.body["errors"][0]["message"]
            .as_str()
            .unwrap_or_default();
        match payment_outcome(paid.status, message, paid.unavailable > 0) {
            Paid::Yes => Ok(()),
            Paid::ExpiredFirst => {
                stats
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .expired_first += 1;
                Ok(())
            }
            Paid::No => Err(anyhow::anyhow!(
                "paying {order}: {} {}",
                paid.status,
                paid.body
            )),
        }
    }
}

/// What became of a purchase's payment.
#[derive(Debug, PartialEq, Eq)]
enum Paid {
    Yes,
    /// The hold ran out before the payment: correct, and counted.
    ExpiredFirst,
    No,
}

/// Reads the answer to a payment: `status` and the first error's
/// `message`; `retried`: the request was sent again after a 503 or a lost
/// connection.
fn payment_outcome(status: u16, message: &str, retried: bool) -> Paid {
    match status {
        201 | 202 => Paid::Yes,
        // A retry after a lost answer (the payments process killed after
        // it took the first attempt): the first one counts. (The
        // idempotency key answers such a retry from the first payment;
        // this covers a first attempt that left no key behind.)
        409 if retried
            && (message.starts_with("A payment for this order")
                || message.starts_with("Order is already paid")) =>
        {
            Paid::Yes
        }
        // The order expired while the payment was under way, or before it
        // began (payments had already learned of the cancellation).
        409 if message.starts_with("Order was cancelled")
            || message == "Cannot pay for a cancelled order" =>
        {
            Paid::ExpiredFirst
        }
        _ => Paid::No,
    }
}

/// Samples the services' outboxes every 100 ms until `stop`: the age of
/// the oldest event not yet published, at its longest.
pub(super) async fn publish_waits(
    outboxes: Vec<store::Db>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Duration {
    let mut longest = 0i64;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    while !*stop.borrow() {
        tick.tick().await;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        for db in &outboxes {
            let oldest = db
                .read(|c| {
                    c.query("SELECT COALESCE(MIN(created_at), 0) FROM outbox", &[])?[0]
                        .get::<i64>(0)
                })
                .await;
            if let Ok(oldest) = oldest.map_err(|_: store::StoreError| ()) {
                if oldest > 0 {
                    longest = longest.max(now - oldest);
                }
            }
        }
    }
    Duration::from_millis(u64::try_from(longest).unwrap_or(0))
}

/// Signs a user up through the gateway; their session token.
pub(super) async fn sign_up(
    http: &reqwest::Client,
    gateway: &str,
    email: &str,
) -> anyhow::Result<String> {
    let res = http
        .post(format!("{gateway}/api/users/signup"))
        .json(&json!({"email": email, "password": "drill-password-1"}))
        .send()
        .await
        .with_context(|| format!("signing up {email}"))?;
    let status = res.status();
    let cookie = res
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| c.strip_prefix("session="))
        .map(|c| c.split(';').next().unwrap_or_default().to_owned());
    match cookie {
        Some(token) if status.is_success() => Ok(token),
        _ => Err(anyhow::anyhow!("signing up {email}: {status}")),
    }
}

#[cfg(test)]
mod tests {
    use super::{Paid, payment_outcome};

    /// A rolling restart stalled requests past the hold (21 s); payments
    /// had learned the order expired before the payment came, and the
    /// drill counted its 409 as a failure rather than as expired first.
    #[test]
    fn an_order_that_expired_before_or_during_its_payment_is_expired_first() {
        for message in [
            "Cannot pay for a cancelled order",
            "Order was cancelled; nothing was charged",
        ] {
            assert_eq!(payment_outcome(409, message, false), Paid::ExpiredFirst);
        }
        assert_eq!(payment_outcome(201, "", false), Paid::Yes);
        assert_eq!(
            payment_outcome(409, "Order is already paid", true),
            Paid::Yes,
            "a retry of a payment that went through"
        );
        assert_eq!(
            payment_outcome(409, "Order is already paid", false),
            Paid::No
        );
        assert_eq!(payment_outcome(500, "", false), Paid::No);
    }
}
