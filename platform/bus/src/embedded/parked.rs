//! Parking on the embedded bus: why a message is parked, the parked
//! records, and their replay or discard.

use super::*;

/// Why a message is parked: `terminated` (the reason it was terminated
/// with), or else it ran out of deliveries — with its handler's last error
/// when one was reported.
pub(super) fn park_reason(
    deliveries: i64,
    terminated: Option<&str>,
    last_error: Option<&str>,
) -> String {
    match (terminated, last_error) {
        (Some(reason), _) => format!("terminated: {reason}"),
        (None, Some(e)) => {
            format!("not acknowledged after {deliveries} deliveries; last error: {e}")
        }
        (None, None) => format!("not acknowledged after {deliveries} deliveries"),
    }
}

pub(super) fn park(
    c: &mut dyn Conn,
    consumer: &str,
    seq: i64,
    terminated: Option<&str>,
    now: i64,
) -> Result<Option<ParkedMessage>, StoreError> {
    let Some(row) = c.query_opt(
        "SELECT deliveries, last_error FROM pending WHERE consumer = $1 AND seq = $2",
        &[&consumer, &seq],
    )?
    else {
        return Ok(None); // already acked or parked
    };
    let deliveries: i64 = row.get(0)?;
    let reason = park_reason(
        deliveries,
        terminated,
        row.get::<Option<String>>(1)?.as_deref(),
    );
    c.execute(
        "DELETE FROM pending WHERE consumer = $1 AND seq = $2",
        &[&consumer, &seq],
    )?;
    let inserted = c.query(
        "INSERT INTO parked (consumer, seq, subject, msg_id, deliveries, reason, parked_at)
         SELECT $1, seq, subject, msg_id, $3, $4, $5 FROM messages WHERE seq = $2
         ON CONFLICT DO NOTHING RETURNING id",
        &[&consumer, &seq, &deliveries, &reason, &now],
    )?;
    match inserted.first() {
        Some(r) => Ok(read_parked(c, Some(r.get(0)?))?.pop()),
        None => Ok(None),
    }
}

/// Parked-message records, oldest first: all of them, or the one `id` names.
pub(super) fn read_parked(
    c: &mut dyn Conn,
    id: Option<i64>,
) -> Result<Vec<ParkedMessage>, StoreError> {
    const SELECT: &str = "SELECT p.id, p.consumer, p.seq, p.subject, p.msg_id, p.deliveries,
            p.reason, p.parked_at, p.state, p.resolved_at, p.resolution, m.headers, m.payload
        FROM parked p LEFT JOIN messages m ON m.seq = p.seq";
    let rows = match id {
        Some(id) => c.query(&format!("{SELECT} WHERE p.id = $1"), &[&id])?,
        None => c.query(&format!("{SELECT} ORDER BY p.id"), &[])?,
    };
    rows.iter()
        .map(|r| {
            let at = || -> Result<Timestamp, StoreError> {
                Ok(Timestamp::from_millis(
                    r.get::<Option<i64>>(9)?.unwrap_or_default(),
                ))
            };
            let state = match r.get::<String>(8)?.as_str() {
                "replayed" => ParkedState::Replayed { at: at()? },
                "discarded" => ParkedState::Discarded {
                    at: at()?,
                    reason: r.get::<Option<String>>(10)?.unwrap_or_default(),
                },
                _ => ParkedState::Parked,
            };
            Ok(ParkedMessage {
                record: r.get::<i64>(0)? as u64,
                consumer: r.get(1)?,
                seq: r.get::<i64>(2)? as u64,
                subject: r.get(3)?,
                id: r.get(4)?,
                headers: decode_headers(&r.get::<Option<String>>(11)?.unwrap_or_default()),
                payload: r
                    .get::<Option<String>>(12)?
                    .unwrap_or_default()
                    .into_bytes(),
                deliveries: r.get::<i64>(5)? as u32,
                reason: r.get(6)?,
                parked_at: Timestamp::from_millis(r.get(7)?),
                state,
            })
        })
        .collect()
}

/// Marks a waiting record replayed (`replay`, making its message pending
/// for its consumer again) or discarded.
pub(super) fn resolve(
    c: &mut dyn Conn,
    id: i64,
    replay: bool,
    reason: &str,
    now: i64,
) -> Result<Resolution, StoreError> {
    let Some(record) = read_parked(c, Some(id))?.pop() else {
        return Ok(Resolution::NotFound);
    };
    if record.state != ParkedState::Parked {
        return Ok(Resolution::Already(record));
    }
    let (state, resolution) = if replay {
        ("replayed", None)
    } else {
        ("discarded", Some(reason))
    };
    c.execute(
        "UPDATE parked SET state = $2, resolved_at = $3, resolution = $4 WHERE id = $1",
        &[&id, &state, &now, &resolution],
    )?;
    if replay {
        c.execute(
            "INSERT INTO pending (consumer, seq, deliveries, visible_at) VALUES ($1, $2, 0, $3)
             ON CONFLICT DO NOTHING",
            &[&record.consumer, &(record.seq as i64), &now],
        )?;
    }
    let record = read_parked(c, Some(id))?
        .pop()
        .expect("the record just updated");
    Ok(Resolution::Done(record))
}

pub(super) fn report_parked(p: &ParkedMessage) {
    crate::report_parked(
        &p.consumer,
        p.seq,
        &p.subject,
        &p.id,
        p.deliveries,
        &p.reason,
    );
}
