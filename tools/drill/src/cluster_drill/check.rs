//! What the cluster drill checks once the system has settled: the crash
//! suite's invariants and the ledger of every event.

use super::*;

/// The invariants, once the system has settled (unpaid orders expire).
pub(super) async fn check(
    report: &mut Report,
    schemas: &HashMap<&str, ScratchSchema>,
    nats: &NatsCluster,
    expiration: u64,
) -> anyhow::Result<()> {
    let dbs: HashMap<&str, store::Db> = schemas
        .iter()
        .map(|(s, schema)| Ok((*s, store::Db::postgres_lazy(&schema.url, 2)?)))
        .collect::<anyhow::Result<_>>()?;
    let rows = |service: &'static str, sql: &'static str| {
        let db = dbs[service].clone();
        async move {
            db.read(move |c| {
                c.query(sql, &[])?
                    .iter()
                    .map(|r| Ok(vec![r.get::<String>(0)?, r.get::<String>(1)?]))
                    .collect::<Result<Vec<_>, store::StoreError>>()
            })
            .await
            .with_context(|| service.to_string())
        }
    };
    // Settling: every order terminal, every outbox empty, every copy
    // converged — or the deadline, and what is left is reported.
    let deadline = Instant::now() + Duration::from_secs(60 + expiration);
    let mut owners;
    loop {
        let orders = rows("orders", "SELECT id, status FROM orders").await?;
        report.orders = orders.len();
        report.not_terminal = orders
            .iter()
            .filter(|o| o[1] != "complete" && o[1] != "cancelled")
            .map(|o| format!("{} {}", o[0], o[1]))
            .collect();
        report.sold_twice = rows(
            "orders",
            "SELECT ticket_id, COUNT(*)::text FROM orders WHERE status = 'complete' \
             GROUP BY ticket_id HAVING COUNT(*) > 1",
        )
        .await?
        .into_iter()
        .map(|r| format!("{} sold {} times", r[0], r[1]))
        .collect();
        // Tickets: sold exactly when an order for it completed; orders'
        // copies at the tickets' versions; payments' copies at the orders'.
        let tickets: HashMap<String, String> = rows(
            "tickets",
            "SELECT id, status || '/' || version FROM tickets",
        )
        .await?
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone()))
        .collect();
        let copies: HashMap<String, String> =
            rows("orders", "SELECT id, version::text FROM tickets")
                .await?
                .into_iter()
                .map(|r| (r[0].clone(), r[1].clone()))
                .collect();
        let complete: std::collections::HashSet<String> = rows(
            "orders",
            "SELECT ticket_id, id FROM orders WHERE status = 'complete'",
        )
        .await?
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
        let order_versions: HashMap<String, String> =
            rows("orders", "SELECT id, status || '/' || version FROM orders")
                .await?
                .into_iter()
                .map(|r| (r[0].clone(), r[1].clone()))
                .collect();
        let payment_copies: HashMap<String, String> = rows(
            "payments",
            "SELECT id, status || '/' || version FROM orders",
        )
        .await?
        .into_iter()
        .map(|r| (r[0].clone(), r[1].clone()))
        .collect();
        let mut unconverged = Vec::new();
        for (id, state) in &tickets {
            let (status, version) = state.split_once('/').unwrap_or_default();
            if (status == "sold") != complete.contains(id) || status == "reserved" {
                unconverged.push(format!(
                    "ticket {id} {status} (completed order: {})",
                    complete.contains(id)
                ));
            }
            if copies.get(id).map(String::as_str) != Some(version) {
                unconverged.push(format!(
                    "orders' copy of ticket {id}: {:?}, tickets: {version}",
                    copies.get(id)
                ));
            }
        }
        for (id, state) in &order_versions {
            if payment_copies.get(id) != Some(state) {
                unconverged.push(format!(
                    "payments' copy of order {id}: {:?}, orders: {state}",
                    payment_copies.get(id)
                ));
            }
        }
        // Money: a hold captured exactly when its order completed, every
        // hold settled (captured or voided), nothing else in flight.
        let holds = rows("payments", "SELECT order_id, status FROM payments").await?;
        let mut captured = std::collections::HashSet::new();
        for h in &holds {
            match h[1].as_str() {
                "captured" => {
                    captured.insert(h[0].clone());
                }
                "voided" | "declined" => {}
                other => unconverged.push(format!("payment for order {} still {other}", h[0])),
            }
        }
        for (id, state) in &order_versions {
            let complete = state.starts_with("complete/");
            if complete != captured.contains(id) {
                unconverged.push(format!(
                    "order {id} is {state} but its payment captured: {}",
                    captured.contains(id)
                ));
            }
        }
        report.unconverged = unconverged;
        report.outbox_rows = Vec::new();
        for s in SERVICES {
            let left = rows(s, "SELECT 'outbox', COUNT(*)::text FROM outbox").await?;
            if left[0][1] != "0" {
                report.outbox_rows.push(format!("{s}: {}", left[0][1]));
            }
        }
        // Every order's timer has fired (each order gets one).
        let timers = rows("expiration", "SELECT 'timers', COUNT(*)::text FROM timers").await?;
        let settled = report.not_terminal.is_empty()
            && report.unconverged.is_empty()
            && report.outbox_rows.is_empty()
            && timers[0][1] == "0";
        owners = ledger::Owners {
            tickets: tickets
                .iter()
                .map(|(id, state)| {
                    let version = state.rsplit_once('/').map_or("", |(_, v)| v);
                    (id.clone(), version.parse().unwrap_or(-1))
                })
                .collect(),
            orders: order_versions
                .iter()
                .map(|(id, state)| {
                    let (status, version) = state.rsplit_once('/').unwrap_or_default();
                    (
                        id.clone(),
                        (version.parse().unwrap_or(-1), status.to_owned()),
                    )
                })
                .collect(),
        };
        if settled || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let js = async_nats::jetstream::new(
        provision::connect(&nats.url(), "cluster-drill", Duration::from_secs(30)).await?,
    );
    // Every event, by id, against what the owners say was published; every
    // durable's position.
    let spec = provision::Spec::built_in(&marketplace_events::STREAMS);
    let mut stored = Vec::new();
    let mut holes = Vec::new();
    for stream in spec
        .streams
        .iter()
        .filter(|s| s.name != "PARKED" && s.name != "USERS")
    {
        let (events, problems) = ledger::read_stream(&js, &stream.name).await?;
        stored.extend(events);
        holes.extend(problems);
    }
    report.events = stored.len();
    report.ledger = ledger::audit(&stored, &owners);
    report.ledger.extend(holes);
    if let Some(lost) = ledger::lost_by_servers(&report.ledger, report.unconverged.is_empty()) {
        report.ledger.insert(0, lost);
    }
    // A delivery a killed process held (its work committed, its ack never
    // sent) stays unacknowledged until its ack wait runs out and another
    // member gets it again, applies nothing and acks it: behind is what
    // is still behind after the longest ack wait, twice over.
    let longest_ack_wait = spec
        .consumers
        .iter()
        .map(|c| c.ack_wait)
        .max()
        .unwrap_or(Duration::from_secs(30));
    let behind_by = Instant::now() + 2 * longest_ack_wait + Duration::from_secs(2);
    report.consumers_behind = loop {
        let behind = ledger::behind(&js, &spec).await?;
        if behind.is_empty() || Instant::now() > behind_by {
            break behind;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    report.parked = ledger::retrying(|| async {
        let mut parked = js.get_stream("PARKED").await?;
        Ok(parked.info().await?.state.messages)
    })
    .await?;
    Ok(())
}
