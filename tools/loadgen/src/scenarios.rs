//! The scenarios, each against any running deployment (a base URL).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shared::time::Timestamp;

use crate::api::{Api, User};
use crate::drive::{self, Flow, Load};
use crate::report::{Check, Comparison, Figure};
use crate::stats::Recorder;

/// What a scenario hands to the report.
pub struct Outcome {
    pub recorder: Recorder,
    pub measured: Duration,
    pub checks: Vec<Check>,
    pub comparisons: Vec<Comparison>,
    pub figures: Vec<Figure>,
}

impl Outcome {
    fn new(recorder: Recorder, measured: Duration) -> Outcome {
        Outcome {
            recorder,
            measured,
            checks: Vec::new(),
            comparisons: Vec::new(),
            figures: Vec::new(),
        }
    }
}

/// No answer was a server error (5xx) or went unanswered.
fn no_server_errors(rec: &Recorder, measured: Option<Duration>) -> Check {
    let mut bad = BTreeMap::new();
    for op in rec.summary(measured) {
        for (status, n) in &op.answers {
            if status == "io" || status.starts_with('5') {
                *bad.entry(format!("{} {status}", op.op)).or_insert(0u64) += n;
            }
        }
    }
    Check::new(
        "no server errors",
        bad.is_empty(),
        if bad.is_empty() {
            "no 5xx, every request answered".to_owned()
        } else {
            format!("{bad:?}")
        },
    )
}

/// browse: list and show tickets. Every `list_every`-th operation lists
/// (`GET /api/tickets?limit=50`), the others show one
/// (`GET /api/tickets/:id`).
pub async fn browse(
    api: &Api,
    load: &Load,
    tickets: usize,
    list_every: u64,
    direct: Option<&str>,
) -> anyhow::Result<Outcome> {
    let seller = api.sign_up("seller").await?;
    let ids = Arc::new(api.sell_many(&seller, tickets.max(1), 32).await?);
    // The same reads straight to the service first, so the CPU and memory
    // figures below are the main run's (each run restarts them).
    let straight = match direct {
        Some(url) => {
            eprintln!("the same reads straight to {url}…");
            let direct_api = Api::new(url, load.concurrency);
            let (rec, measured) = reads(&direct_api, load, &ids, list_every, "direct").await;
            Some(rec.summary(Some(measured)))
        }
        None => None,
    };
    let (rec, measured) = reads(api, load, &ids, list_every, "browse").await;
    let mut out = Outcome::new(rec.clone(), measured);
    out.checks.push(no_server_errors(&rec, Some(measured)));
    if let Some(straight) = straight {
        let ours = rec.summary(Some(measured));
        let rate = |ops: &[crate::stats::OpSummary], op: &str| {
            ops.iter()
                .find(|o| o.op == op)
                .map_or(0.0, |o| o.per_second)
        };
        for (op, what) in [
            ("show", "GET /api/tickets/:id"),
            ("list", "GET /api/tickets?limit=50"),
        ] {
            if rate(&straight, op) > 0.0 {
                out.comparisons.push(Comparison::new(
                    &format!("{what} through --url"),
                    rate(&ours, op),
                    &format!("{what} straight to --direct, same load"),
                    rate(&straight, op),
                    "req/s",
                    Some(("≥", 0.8)),
                ));
            }
        }
    }
    Ok(out)
}

/// Shows (and every `list_every`th, lists) the tickets `ids` under `load`.
async fn reads(
    api: &Api,
    load: &Load,
    ids: &Arc<Vec<String>>,
    list_every: u64,
    label: &str,
) -> (Recorder, Duration) {
    let rec = Recorder::new(load.warmup);
    let (a, r, i) = (api.clone(), rec.clone(), ids.clone());
    let measured = drive::run(load, &rec, label, move |n, due| {
        let (api, rec, ids) = (a.clone(), r.clone(), i.clone());
        async move {
            if list_every > 0 && n % list_every == 0 {
                let res = api.get("/api/tickets?limit=50", None).await;
                rec.record("list", due, res.status, res.is(200));
            } else {
                let id = &ids[(n as usize) % ids.len()];
                let res = api.get(&format!("/api/tickets/{id}"), None).await;
                rec.record("show", due, res.status, res.is(200));
            }
            Flow::Continue
        }
    })
    .await;
    (rec, measured)
}

/// The trivial handler under the same load, for the ratio.
pub async fn trivial(base: &str, load: &Load) -> f64 {
    let api = Api::new(base, load.concurrency);
    let rec = Recorder::new(load.warmup);
    let (a, r) = (api.clone(), rec.clone());
    let measured = drive::run(load, &rec, "trivial", move |_, due| {
        let (api, rec) = (a.clone(), r.clone());
        async move {
            let res = api.get("/hello", None).await;
            rec.record("trivial", due, res.status, res.status == Some(200));
            Flow::Continue
        }
    })
    .await;
    rec.summary(Some(measured))
        .first()
        .map_or(0.0, |s| s.per_second)
}

/// purchase: signed-up buyers each order a distinct ticket and pay for it.
/// Checks that every paid order completes.
///
/// Each buyer pays beside their next order; at most `concurrency` payments
/// are under way, so when payments falls behind, ordering waits for it and
/// the order rate is the rate of whole purchases. With `pay` false only
/// `POST /api/orders` is measured.
pub async fn purchase(
    api: &Api,
    load: &Load,
    buyers: usize,
    tickets: usize,
    pay: bool,
) -> anyhow::Result<Outcome> {
    let seller = api.sign_up("seller").await?;
    let buyers = Arc::new(api.sign_up_many("buyer", buyers.max(1)).await?);
    eprintln!("listing {tickets} tickets…");
    let mut ids = api.sell_many(&seller, tickets + 1, 32).await?;
    let probe_ticket = ids.pop().unwrap_or_default();
    api.wait_until_orderable(&buyers[0], &probe_ticket).await?;
    let ids = Arc::new(ids);
    let paid: Arc<Mutex<Vec<(usize, String)>>> = Arc::default();
    let payments: Arc<Mutex<tokio::task::JoinSet<()>>> = Arc::default();
    let slots = Arc::new(tokio::sync::Semaphore::new(load.concurrency.max(1)));
    let rec = Recorder::new(load.warmup);
    let (a, r, i, b, p, ps) = (
        api.clone(),
        rec.clone(),
        ids.clone(),
        buyers.clone(),
        paid.clone(),
        payments.clone(),
    );
    let measured = drive::run(load, &rec, "purchase", move |n, due| {
        let (api, rec, ids, buyers, paid, paying, slots) = (
            a.clone(),
            r.clone(),
            i.clone(),
            b.clone(),
            p.clone(),
            ps.clone(),
            slots.clone(),
        );
        async move {
            let Some(ticket) = ids.get(n as usize) else {
                return Flow::Exhausted;
            };
            let who = n as usize % buyers.len();
            let buyer = &buyers[who];
            let res = api.order(buyer, ticket).await;
            rec.record("order", due, res.status, res.is(201));
            let Some(order) = res.id().filter(|_| res.is(201) && pay) else {
                return Flow::Continue;
            };
            let Ok(slot) = slots.acquire_owned().await else {
                return Flow::Exhausted;
            };
            // Paying runs beside the next order, so the order rate is the
            // server's, not the length of the order-then-pay chain.
            // Payments learns of the order by event: until it has, it
            // answers 404; the wait counts in the payment's latency.
            let (api, buyer) = (api.clone(), buyer.clone());
            paying.lock().unwrap().spawn(async move {
                let _slot = slot;
                let started = Instant::now();
                let deadline = started + Duration::from_secs(30);
                // Backing off, as a client should: retrying a lagging
                // service at a fixed short interval multiplies its load.
                let mut wait = Duration::from_millis(5);
                loop {
                    let res = api
                        .post(
                            "/api/payments",
                            &buyer,
                            json!({"orderId": order, "token": "tok_visa"}),
                        )
                        .await;
                    if res.is(404) && Instant::now() < deadline {
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(Duration::from_millis(200));
                        continue;
                    }
                    rec.record("pay", started, res.status, res.is(201));
                    if res.is(201) {
                        paid.lock().unwrap().push((who, order));
                    }
                    break;
                }
            });
            Flow::Continue
        }
    })
    .await;
    let pending = std::mem::take(&mut *payments.lock().unwrap());
    pending.join_all().await;
    let mut out = Outcome::new(rec.clone(), measured);
    out.checks.push(no_server_errors(&rec, Some(measured)));
    // Every paid order completes (orders learns of the payment by event).
    let paid = paid.lock().unwrap().clone();
    let started = Instant::now();
    let mut pending: HashMap<usize, Vec<String>> = HashMap::new();
    for (who, order) in &paid {
        pending.entry(*who).or_default().push(order.clone());
    }
    let mut incomplete = paid.len();
    while started.elapsed() < Duration::from_secs(60) {
        incomplete = 0;
        for (who, orders) in &pending {
            let complete = completed_orders(api, &buyers[*who]).await;
            incomplete += orders
                .iter()
                .filter(|o| !complete.contains(o.as_str()))
                .count();
        }
        if incomplete == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    out.checks.push(Check::new(
        "every paid order completes",
        incomplete == 0,
        format!(
            "{} paid, {} complete after {:.1} s",
            paid.len(),
            paid.len() - incomplete,
            started.elapsed().as_secs_f64()
        ),
    ));
    Ok(out)
}

/// The ids of the buyer's complete orders, every page of them
/// (`GET /api/orders` answers 50 by default, at most 200 a page).
async fn completed_orders(api: &Api, buyer: &User) -> std::collections::HashSet<String> {
    let mut complete = std::collections::HashSet::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(id) => format!("/api/orders?limit=200&after={id}"),
            None => "/api/orders?limit=200".to_owned(),
        };
        let page = api.get(&path, Some(buyer)).await;
        let orders = page.body.as_array().cloned().unwrap_or_default();
        complete.extend(
            orders
                .iter()
                .filter(|o| o["status"] == "complete")
                .filter_map(|o| o["id"].as_str().map(str::to_owned)),
        );
        match orders.last().and_then(|o| o["id"].as_str()) {
            Some(last) if orders.len() == 200 => after = Some(last.to_owned()),
            _ => return complete,
        }
    }
}

/// contention: M buyers race for K tickets at once; exactly K win.
pub async fn contention(api: &Api, buyers: usize, tickets: usize) -> anyhow::Result<Outcome> {
    let seller = api.sign_up("seller").await?;
    let buyers = api.sign_up_many("racer", buyers.max(1)).await?;
    let mut ids = api.sell_many(&seller, tickets.max(1) + 1, 32).await?;
    let probe_ticket = ids.pop().unwrap_or_default();
    api.wait_until_orderable(&buyers[0], &probe_ticket).await?;
    // Every ticket known to orders: the probe was listed last.
    let rec = Recorder::new(Duration::ZERO);
    crate::procs::load_started();
    let start = Arc::new(tokio::sync::Barrier::new(buyers.len()));
    let mut set = tokio::task::JoinSet::new();
    for (i, buyer) in buyers.iter().enumerate() {
        let (api, rec, start) = (api.clone(), rec.clone(), start.clone());
        let (buyer, ticket) = (buyer.clone(), ids[i % ids.len()].clone());
        set.spawn(async move {
            start.wait().await;
            let due = Instant::now();
            let res = api.order(&buyer, &ticket).await;
            rec.record("order", due, res.status, res.is(201) || res.is(409));
            (ticket, res.status, res.id(), buyer)
        });
    }
    let began = Instant::now();
    let mut winners: HashMap<String, Vec<String>> = HashMap::new();
    let mut others = BTreeMap::new();
    while let Some(r) = set.join_next().await {
        let (ticket, status, id, _) = r?;
        match status {
            Some(201) => winners
                .entry(ticket)
                .or_default()
                .push(id.unwrap_or_default()),
            s => *others.entry(format!("{s:?}")).or_insert(0u64) += 1,
        }
    }
    let measured = began.elapsed();
    let mut out = Outcome::new(rec.clone(), measured);
    let won: usize = winners.values().map(Vec::len).sum();
    let expected = ids.len().min(buyers.len());
    out.checks.push(Check::new(
        "exactly one winner per ticket",
        won == expected && winners.values().all(|w| w.len() == 1),
        format!(
            "{} buyers for {} tickets: {won} orders placed (expected {expected}); the others: {others:?}",
            buyers.len(),
            ids.len()
        ),
    ));
    out.checks.push(Check::new(
        "every loser told 409",
        others.keys().all(|k| k == "Some(409)"),
        format!("{others:?}"),
    ));
    // Each ticket ends reserved by its winner (tickets learns by event).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut wrong = winners.len();
    while Instant::now() < deadline {
        wrong = 0;
        for (ticket, orders) in &winners {
            let t = api.get(&format!("/api/tickets/{ticket}"), None).await;
            if t.body["orderId"].as_str() != orders.first().map(String::as_str) {
                wrong += 1;
            }
        }
        if wrong == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    out.checks.push(Check::new(
        "each ticket reserved by its winner",
        wrong == 0,
        format!(
            "{} of {} tickets show the winning order",
            winners.len() - wrong,
            winners.len()
        ),
    ));
    out.checks.push(no_server_errors(&rec, None));
    Ok(out)
}

/// The server's histogram `name` from `/metrics`: (upper bound, cumulative count).
async fn histogram_buckets(metrics_url: &str, name: &str) -> Option<Vec<(f64, u64)>> {
    let text = reqwest::get(metrics_url).await.ok()?.text().await.ok()?;
    let prefix = format!("{name}_bucket{{le=\"");
    Some(
        text.lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .filter_map(|rest| {
                let (le, count) = rest.split_once("\"} ")?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                Some((le, count.trim().parse().ok()?))
            })
            .collect(),
    )
}

async fn gauge(metrics_url: &str, name: &str) -> Option<f64> {
    let text = reqwest::get(metrics_url).await.ok()?.text().await.ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

/// The bucket bound under which `q` of the observations between `before`
/// and `after` fall.
fn bucket_quantile(before: &[(f64, u64)], after: &[(f64, u64)], q: f64) -> Option<(f64, u64)> {
    let mut deltas: Vec<(f64, u64)> = after
        .iter()
        .map(|(le, n)| {
            let was = before.iter().find(|(l, _)| l == le).map_or(0, |(_, c)| *c);
            (*le, n.saturating_sub(was))
        })
        .collect();
    deltas.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = deltas.last()?.1;
    if total == 0 {
        return None;
    }
    let want = (total as f64 * q).ceil() as u64;
    deltas
        .iter()
        .find(|(_, n)| *n >= want)
        .map(|(le, _)| (*le, total))
}

/// expiry: `orders` orders left unpaid; measures how late each expiration
/// lands after the order's `expiresAt`: as the service's scheduler saw it
/// (its `expiration_lateness_seconds` histogram) and as a client sees it
/// (the order reads `cancelled`; `sample` orders polled every `poll`).
pub async fn expiry(
    api: &Api,
    metrics_url: &str,
    orders: usize,
    sample: usize,
    poll: Duration,
) -> anyhow::Result<Outcome> {
    let seller = api.sign_up("seller").await?;
    // Sampled orders belong to buyers of their own (100 each), so polling
    // their lists stays light; the rest to bulk buyers.
    let sample = sample.min(orders);
    let sample_buyers = api
        .sign_up_many("watched", sample.div_ceil(100).max(1))
        .await?;
    let bulk_buyers = api.sign_up_many("bulk", 20).await?;
    eprintln!("listing {orders} tickets…");
    let mut ids = api.sell_many(&seller, orders + 1, 32).await?;
    let probe_ticket = ids.pop().unwrap_or_default();
    api.wait_until_orderable(&bulk_buyers[0], &probe_ticket)
        .await?;
    let before = histogram_buckets(metrics_url, "expiration_lateness_seconds").await;
    eprintln!("placing {orders} orders…");
    crate::procs::load_started();
    let rec = Recorder::new(Duration::ZERO);
    let placed_at = Instant::now();
    let expires: Arc<Mutex<Vec<(usize, String, Timestamp)>>> = Arc::default();
    let ids = Arc::new(ids);
    let mut set = tokio::task::JoinSet::new();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for _ in 0..32 {
        let (api, rec, ids, next, expires) = (
            api.clone(),
            rec.clone(),
            ids.clone(),
            next.clone(),
            expires.clone(),
        );
        let (sample_buyers, bulk_buyers) = (sample_buyers.clone(), bulk_buyers.clone());
        set.spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(ticket) = ids.get(i) else { return };
                let (buyer, watched): (&User, Option<usize>) = if i < sample {
                    (&sample_buyers[i / 100], Some(i / 100))
                } else {
                    (&bulk_buyers[i % bulk_buyers.len()], None)
                };
                let due = Instant::now();
                let res = api.order(buyer, ticket).await;
                rec.record("order", due, res.status, res.is(201));
                if let (Some(w), Some(id)) = (watched, res.id()) {
                    let at = res.body["expiresAt"]
                        .as_str()
                        .and_then(Timestamp::parse_rfc3339);
                    if let Some(at) = at {
                        expires.lock().unwrap().push((w, id, at));
                    }
                }
            }
        });
    }
    let mut peak_pending = 0.0f64;
    while !set.is_empty() {
        tokio::select! {
            _ = set.join_next() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                if let Some(p) = gauge(metrics_url, "expiration_timers_pending").await {
                    peak_pending = peak_pending.max(p);
                }
            }
        }
    }
    let placing = placed_at.elapsed();
    if let Some(p) = gauge(metrics_url, "expiration_timers_pending").await {
        peak_pending = peak_pending.max(p);
    }
    // Poll the watched buyers' orders until each reads cancelled.
    let watched = expires.lock().unwrap().clone();
    let mut due_at: HashMap<String, Timestamp> = HashMap::new();
    for (_, id, at) in &watched {
        due_at.insert(id.clone(), *at);
    }
    let last_due = watched.iter().map(|w| w.2.millis()).max().unwrap_or(0);
    let mut seen: HashMap<String, f64> = HashMap::new();
    let give_up = Instant::now()
        + Duration::from_millis((last_due - now_millis()).max(0) as u64)
        + Duration::from_secs(60);
    eprintln!(
        "{} orders placed in {:.1} s; waiting for {} watched expirations…",
        orders,
        placing.as_secs_f64(),
        watched.len()
    );
    let mut polled_gauge = Instant::now();
    while seen.len() < watched.len() && Instant::now() < give_up {
        if polled_gauge.elapsed() >= Duration::from_millis(500) {
            polled_gauge = Instant::now();
            if let Some(p) = gauge(metrics_url, "expiration_timers_pending").await {
                peak_pending = peak_pending.max(p);
            }
        }
        let mut polls = tokio::task::JoinSet::new();
        for buyer in &sample_buyers {
            let (api, buyer) = (api.clone(), buyer.clone());
            polls.spawn(async move { api.get("/api/orders", Some(&buyer)).await });
        }
        while let Some(Ok(list)) = polls.join_next().await {
            let now = now_millis();
            for o in list.body.as_array().into_iter().flatten() {
                let Some(id) = o["id"].as_str() else { continue };
                if o["status"] == "cancelled" && !seen.contains_key(id) {
                    if let Some(at) = due_at.get(id) {
                        seen.insert(id.to_owned(), (now - at.millis()) as f64);
                    }
                }
            }
        }
        tokio::time::sleep(poll).await;
    }
    // Then every other order's timer: the scheduler's histogram covers all
    // of them, and the pending count is watched until none is left.
    let drained = Instant::now() + Duration::from_secs(600);
    while Instant::now() < drained {
        match gauge(metrics_url, "expiration_timers_pending").await {
            Some(p) if p > 0.0 => peak_pending = peak_pending.max(p),
            _ => break,
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let after = histogram_buckets(metrics_url, "expiration_lateness_seconds").await;
    let mut out = Outcome::new(rec.clone(), placing);
    out.checks.push(no_server_errors(&rec, None));
    out.checks.push(Check::new(
        "every watched order expires",
        seen.len() == watched.len(),
        format!("{} of {} read cancelled", seen.len(), watched.len()),
    ));
    let lateness: Vec<f64> = seen.values().copied().collect();
    if let Some(q) = crate::stats::quantiles(&lateness) {
        for (name, v) in [("p50", q.p50), ("p99", q.p99), ("max", q.max)] {
            out.figures.push(Figure {
                what: format!(
                    "client-seen lateness {name} (poll every {} ms)",
                    poll.as_millis()
                ),
                value: v,
                unit: "ms".into(),
                goal: None,
                met: None,
            });
        }
    }
    out.figures.push(Figure {
        what: "timers pending at most".into(),
        value: peak_pending,
        unit: "timers".into(),
        goal: None,
        met: None,
    });
    match (before, after) {
        (Some(b), Some(a)) => {
            if let Some((le, total)) = bucket_quantile(&b, &a, 0.99) {
                out.figures.push(Figure {
                    what: format!("scheduler lateness p99 (of {total}, bucket bound)"),
                    value: le * 1000.0,
                    unit: "ms".into(),
                    goal: Some("< 100 ms".into()),
                    met: Some(le <= 0.1),
                });
            }
            if let Some((le, _)) = bucket_quantile(&b, &a, 0.5) {
                out.figures.push(Figure {
                    what: "scheduler lateness p50 (bucket bound)".into(),
                    value: le * 1000.0,
                    unit: "ms".into(),
                    goal: None,
                    met: None,
                });
            }
        }
        _ => out.checks.push(Check::new(
            "the scheduler's lateness histogram",
            false,
            format!("{metrics_url} has no expiration_lateness_seconds (point --metrics-url at the expiration service)"),
        )),
    }
    Ok(out)
}

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Settings as JSON, for the report.
pub fn settings(load: &Load, extra: Value) -> Value {
    let mut v = json!({
        "concurrency": load.concurrency,
        "rate": load.rate,
        "duration_s": load.duration.as_secs_f64(),
        "warmup_s": load.warmup.as_secs_f64(),
    });
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        o.extend(e.clone());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::bucket_quantile;

    #[test]
    fn quantiles_come_from_the_bucket_deltas_in_bound_order() {
        // As /metrics lists them: +Inf first, then by text.
        let before = [
            (f64::INFINITY, 10),
            (0.001, 10),
            (0.1, 10),
            (10.0, 10),
            (2.5, 10),
        ];
        let after = [
            (f64::INFINITY, 110),
            (0.001, 60),
            (0.1, 108),
            (10.0, 110),
            (2.5, 110),
        ];
        assert_eq!(bucket_quantile(&before, &after, 0.5), Some((0.001, 100)));
        assert_eq!(bucket_quantile(&before, &after, 0.99), Some((2.5, 100)));
        assert_eq!(bucket_quantile(&after, &after, 0.99), None, "nothing new");
    }
}
