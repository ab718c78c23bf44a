//! Sign-in and sign-up attempts per client, limited with `governor` (the
//! generic cell rate algorithm): a client may make `limit` attempts at
//! once, and gets one more every `window / limit` — so never more than
//! `limit` per window on average, and, unlike a fixed window, never twice
//! that across a window's edge.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter as Gcra};

/// How many clients the limiter remembers before it forgets those whose
/// attempts have all been paid back.
const MAX_CLIENTS: usize = 100_000;

pub struct RateLimiter<C: Clock = DefaultClock> {
    clients: Gcra<String, HashMapStateStore<String>, C, NoOpMiddleware<C::Instant>>,
    clock: C,
}

impl RateLimiter {
    pub fn new(limit: u32, window: Duration) -> Self {
        RateLimiter::with_clock(limit, window, DefaultClock::default())
    }
}

impl<C: Clock + Clone> RateLimiter<C> {
    /// A limiter reading time from `clock` (a fake one in tests).
    pub fn with_clock(limit: u32, window: Duration, clock: C) -> Self {
        let limit = NonZeroU32::new(limit.max(1)).expect("at least 1");
        let every = (window / limit.get()).max(Duration::from_nanos(1));
        let quota = Quota::with_period(every)
            .expect("a non-zero period")
            .allow_burst(limit);
        RateLimiter {
            clients: Gcra::new(quota, HashMapStateStore::default(), clock.clone()),
            clock,
        }
    }

    /// Counts one attempt by `client`; `Err(seconds until the next attempt is
    /// allowed)` once the client is over the limit.
    pub fn check(&self, client: &str) -> Result<(), u64> {
        if self.clients.len() > MAX_CLIENTS {
            self.clients.retain_recent();
        }
        self.clients
            .check_key(&client.to_owned())
            .map_err(|not_until| {
                let wait = not_until.wait_time_from(self.clock.now());
                wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    #[test]
    fn a_client_over_the_limit_waits_others_do_not() {
        let clock = FakeRelativeClock::default();
        let limiter = RateLimiter::with_clock(2, Duration::from_secs(60), clock.clone());
        assert!(limiter.check("a").is_ok());
        assert!(limiter.check("a").is_ok());
        // One attempt comes back every 30 s.
        assert_eq!(limiter.check("a"), Err(30));
        assert!(limiter.check("b").is_ok());
        clock.advance(Duration::from_secs(31));
        assert!(limiter.check("a").is_ok());
        assert!(limiter.check("a").is_err());
    }

    #[test]
    fn after_a_full_burst_attempts_come_back_one_per_window_share() {
        let clock = FakeRelativeClock::default();
        let limiter = RateLimiter::with_clock(20, Duration::from_secs(60), clock.clone());
        for _ in 0..20 {
            assert!(limiter.check("a").is_ok());
        }
        assert_eq!(limiter.check("a"), Err(3));
        // A fixed window would start afresh at its edge and allow 20 more
        // at once; here one comes back every 3 s.
        clock.advance(Duration::from_secs(1));
        assert!(limiter.check("a").is_err());
        clock.advance(Duration::from_secs(2));
        assert!(limiter.check("a").is_ok());
        assert!(limiter.check("a").is_err());
    }
}
