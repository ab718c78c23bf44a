//! Every process that authenticates requests keeps its own deny list of
//! ended sessions ([`shared::auth::Revocations`]), fed by auth's events and
//! never by a call to auth: [`follow`] watches `user.banned` and
//! `user.signed-out` on the bus, from one token lifetime ago (older
//! revocations can match no token that still verifies), and reports ready
//! once it has applied everything published before it began, so a process
//! that starts after a ban rejects the banned user's tokens from its first
//! request.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
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

/// How long a retry of the watch waits at most while the bus is away: the
/// list must catch up within a second of the bus coming back.
const MAX_RETRY: Duration = Duration::from_secs(1);

/// How often the bus's connection is looked at: a connection that comes
/// back restarts the watch at once, rather than waiting for a stalled one
/// to notice.
const HEALTH_EVERY: Duration = Duration::from_millis(250);

/// How fresh the deny list is, shared between the follower and its
/// readiness check.
#[derive(Default)]
struct Freshness {
    /// The list was rebuilt once (at start).
    rebuilt: AtomicBool,
    /// The watch is caught up and the bus connected: the list is current.
    live: AtomicBool,
    /// When the list was last known current (ms).
    fresh_at: AtomicI64,
}

impl Freshness {
    fn current(&self, now: Timestamp) {
        self.fresh_at.store(now.millis(), Ordering::Release);
        self.live.store(true, Ordering::Release);
    }
}

/// Starts following the revocations on `bus` into `keys`' deny list.
/// Readiness fails until the list is rebuilt, and — with `max_staleness` —
/// whenever it has not been known current for longer than that (the bus
/// away, or the watch catching up after it returned): ended sessions may
/// then be missing from it, and a load balancer that reads `/readyz` stops
/// sending this process requests.
pub fn follow(
    bus: Arc<dyn Bus>,
    keys: Arc<AuthKeys>,
    clock: Clock,
    max_staleness: Option<Duration>,
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
    let fresh = Arc::new(Freshness::default());
    let state = fresh.clone();
    let check_clock = clock.clone();
    let task = tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        let mut prune = tokio::time::interval(Duration::from_secs(60));
        let mut health = tokio::time::interval(HEALTH_EVERY);
        health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
                    state.live.store(false, Ordering::Release);
                    tracing::warn!(error = %e, retry_in = ?backoff, "cannot watch revocations");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.wait() => return,
                    }
                    backoff = (backoff * 2).min(MAX_RETRY);
                    continue;
                }
            };
            let mut caught_up = false;
            let mut bus_away = false;
            loop {
                let next = tokio::select! {
                    n = watch.next() => n,
                    _ = prune.tick() => {
                        keys.revocations.prune(clock.now());
                        continue;
                    }
                    _ = health.tick() => {
                        match bus.check_ready().await {
                            Ok(()) if bus_away => {
                                // Back: watch again now — a watch that lived
                                // through the outage may be stalled.
                                tracing::info!("bus back; watching revocations again");
                                break;
                            }
                            Ok(()) if caught_up => state.current(clock.now()),
                            Ok(()) => {}
                            Err(_) => {
                                bus_away = true;
                                state.live.store(false, Ordering::Release);
                            }
                        }
                        continue;
                    }
                    _ = shutdown.wait() => return,
                };
                match next {
                    Some(Ok(Watched::Message(m))) => {
                        backoff = Duration::from_millis(100);
                        apply(&keys, &m, clock.now());
                    }
                    Some(Ok(Watched::CaughtUp)) => {
                        caught_up = true;
                        state.current(clock.now());
                        if !state.rebuilt.swap(true, Ordering::AcqRel) {
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
            state.live.store(false, Ordering::Release);
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.wait() => return,
            }
            backoff = (backoff * 2).min(MAX_RETRY);
        }
    });
    let ready: ReadyCheck = Arc::new(move || {
        let outcome = if !fresh.rebuilt.load(Ordering::Acquire) {
            Err("the deny list of ended sessions is still being rebuilt".into())
        } else {
            let stale_ms = check_clock.now().millis() - fresh.fresh_at.load(Ordering::Acquire);
            match max_staleness {
                Some(max)
                    if !fresh.live.load(Ordering::Acquire) && stale_ms > max.as_millis() as i64 =>
                {
                    Err(format!(
                        "the deny list of ended sessions is {} s stale (the bus is away or catching up)",
                        stale_ms / 1000
                    )
                    .into())
                }
                _ => Ok(()),
            }
        };
        Box::pin(async move { outcome })
    });
    Follower { task, ready }
}
