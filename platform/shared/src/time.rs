//! Timestamps (unix milliseconds inside, RFC 3339 UTC outside) and the clock.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use store::{FromValue, StoreError, ToValue, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A point in time with millisecond precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    pub fn from_millis(ms: i64) -> Self {
        Timestamp(ms)
    }

    pub fn millis(self) -> i64 {
        self.0
    }

    pub fn plus_secs(self, secs: u64) -> Self {
        Timestamp(self.0.saturating_add((secs as i64).saturating_mul(1000)))
    }

    /// RFC 3339 in UTC with milliseconds, e.g. `2026-11-23T10:15:00.000Z`.
    pub fn to_rfc3339(self) -> String {
        let dt = OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1_000_000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            dt.year(),
            u8::from(dt.month()),
            dt.day(),
            dt.hour(),
            dt.minute(),
            dt.second(),
            dt.millisecond()
        )
    }

    pub fn parse_rfc3339(s: &str) -> Option<Self> {
        let dt = OffsetDateTime::parse(s, &Rfc3339).ok()?;
        i64::try_from(dt.unix_timestamp_nanos() / 1_000_000)
            .ok()
            .map(Timestamp)
    }
}

impl schemars::JsonSchema for Timestamp {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Timestamp".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "format": "date-time",
            "description": "RFC 3339, UTC, milliseconds"
        })
    }

    fn inline_schema() -> bool {
        true
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Timestamp::parse_rfc3339(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("not an RFC 3339 timestamp: {s}")))
    }
}

impl ToValue for Timestamp {
    fn to_value(&self) -> Value {
        Value::Int(self.0)
    }
}

impl FromValue for Timestamp {
    fn from_value(value: &Value) -> Result<Self, StoreError> {
        i64::from_value(value).map(Timestamp)
    }
}

/// Where "now" comes from. Production reads the system clock; tests use a
/// clock driven by Tokio's (pausable) time so timers can be tested without
/// sleeping.
#[derive(Debug, Clone)]
pub enum Clock {
    System,
    /// `base` plus however much Tokio time has passed since `start`.
    Tokio {
        base: Timestamp,
        start: tokio::time::Instant,
    },
}

impl Clock {
    /// A Tokio-driven clock starting at the current system time.
    pub fn tokio() -> Clock {
        Clock::Tokio {
            base: Clock::System.now(),
            start: tokio::time::Instant::now(),
        }
    }

    pub fn now(&self) -> Timestamp {
        match self {
            Clock::System => {
                let ns = OffsetDateTime::now_utc().unix_timestamp_nanos();
                Timestamp((ns / 1_000_000) as i64)
            }
            Clock::Tokio { base, start } => {
                let elapsed = start.elapsed().as_millis() as i64;
                Timestamp(base.0 + elapsed)
            }
        }
    }

    /// The Tokio instant at which this clock will read `at` (now, if past).
    pub fn instant_at(&self, at: Timestamp) -> tokio::time::Instant {
        let wait = (at.0 - self.now().0).max(0) as u64;
        tokio::time::Instant::now() + std::time::Duration::from_millis(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::{Clock, Timestamp};
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn the_tokio_clock_moves_with_paused_time_and_names_the_instant_of_a_timestamp() {
        let clock = Clock::tokio();
        let start = clock.now();
        let due = Timestamp::from_millis(start.millis() + 60_000);
        let wake = clock.instant_at(due);
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(clock.now().millis(), start.millis() + 59_000);
        assert!(tokio::time::Instant::now() < wake);
        tokio::time::sleep_until(wake).await;
        assert_eq!(clock.now(), due);
        // A timestamp in the past is due now.
        assert_eq!(clock.instant_at(start), tokio::time::Instant::now());
    }

    #[test]
    fn timestamps_round_trip_through_rfc3339() {
        let t = Timestamp::from_millis(1_795_000_000_123);
        let s = t.to_rfc3339();
        assert!(s.ends_with(".123Z"), "{s}");
        assert_eq!(Timestamp::parse_rfc3339(&s), Some(t));
    }
}
