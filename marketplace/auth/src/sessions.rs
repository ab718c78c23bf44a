//! Every process that authenticates requests keeps its own deny list of
//! ended sessions ([`shared::auth::Revocations`]), fed by auth's events and
//! never by a call to auth: [`follow`] watches `user.banned` and
//! `user.signed-out` on the bus, from one token lifetime ago (older
//! revocations can match no token that still verifies), and reports ready
//! once it has applied everything published before it began, so a process
//! that starts after a ban rejects the banned user's tokens from its first
//! request.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bus::{Bus, Watched};
use marketplace_events::{Event, SESSION_EVENTS, UserBanned, UserSignedOut};
use shared::auth::AuthKeys;
use shared::http::ReadyCheck;
use shared::shutdown::Shutdown;
use shared::time::{Clock, Timestamp};

/// The deny list's follower: its task, and a readiness check that passes
/// once the list holds every revocation published before it started.
pub struct Follower {
    pub task: tokio::task::JoinHandle<()>,
    pub ready: ReadyCheck,
}

/// Applies one message to the deny list; anything but a revocation (other
/// user events, a payload it cannot read) is passed over.
pub fn apply(keys: &AuthKeys, msg: &bus::Message, now: Timestamp) {
    let revocation = match msg.subject.as_str() {
        UserBanned::SUBJECT => serde_json::from_slice::<UserBanned>(&msg.payload)
            .ok()
            .map(|e| e.revocation()),
        UserSignedOut::SUBJECT => serde_json::from_slice::<UserSignedOut>(&msg.payload)
            .ok()
            .and_then(|e| e.revocation()),
        _ => return,
    };
    match revocation {
        Some(r) => keys.revocations.apply(r, now),
        None => {
            tracing::warn!(subject = %msg.subject, id = %msg.id, "unreadable revocation passed over")
        }
    }
}

/// Starts following the revocations on `bus` into `keys`' deny list.
pub fn follow(
    bus: Arc<dyn Bus>,
    keys: Arc<AuthKeys>,
    clock: Clock,
    mut shutdown: Shutdown,
) -> Follower {
    let counted = keys.clone();
    shared::metrics::collect("sessions revoked", move || {
        vec![(
            "sessions_revoked",
            Vec::new(),
            counted.revocations.len() as f64,
        )]
    });
    let caught_up = Arc::new(AtomicBool::new(false));
    let flag = caught_up.clone();
    let task = tokio::spawn(async move {
        let mut backoff = Duration::from_millis(250);
        let mut prune = tokio::time::interval(Duration::from_secs(60));
        loop {
            // From one token lifetime ago: each time it (re)starts, so a
            // revocation published while the bus was away is not missed.
            let since = Timestamp::from_millis(
                clock.now().millis() - keys.longest_life().as_millis() as i64,
            );
            let watch = tokio::select! {
                w = bus.watch(SESSION_EVENTS, since) => w,
                _ = shutdown.wait() => return,
            };
            let mut watch = match watch {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "cannot watch revocations");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.wait() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    continue;
                }
            };
            loop {
                let next = tokio::select! {
                    n = watch.next() => n,
                    _ = prune.tick() => {
                        keys.revocations.prune(clock.now());
                        continue;
                    }
                    _ = shutdown.wait() => return,
                };
                match next {
                    Some(Ok(Watched::Message(m))) => {
                        backoff = Duration::from_millis(250);
                        apply(&keys, &m, clock.now());
                    }
                    Some(Ok(Watched::CaughtUp)) => {
                        if !flag.swap(true, Ordering::AcqRel) {
                            tracing::info!(
                                revoked = keys.revocations.len(),
                                "deny list rebuilt from the revocations of one token lifetime"
                            );
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "revocation watch interrupted; watching again");
                        break;
                    }
                    None => return,
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.wait() => return,
            }
        }
    });
    let ready: ReadyCheck = Arc::new(move || {
        let caught_up = caught_up.load(Ordering::Acquire);
        Box::pin(async move {
            if caught_up {
                Ok(())
            } else {
                Err("the deny list of ended sessions is still being rebuilt".into())
            }
        })
    });
    Follower { task, ready }
}
