//! Money as integer cents; decimal dollars only at the HTTP edge.

use serde::{Deserialize, Serialize};
use store::{FromValue, StoreError, ToValue, Value};

/// An amount in cents (minor units). Never a float.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Money(i64);

/// The largest price the API accepts, in cents (one million dollars).
pub const MAX_PRICE_CENTS: i64 = 100_000_000;

impl schemars::JsonSchema for Money {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Cents".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "integer",
            "description": "an amount in cents (minor units)"
        })
    }

    fn inline_schema() -> bool {
        true
    }
}

impl Money {
    pub fn from_cents(cents: i64) -> Self {
        Money(cents)
    }

    pub fn cents(self) -> i64 {
        self.0
    }

    /// Parses an API price: a JSON number of dollars, greater than 0, at most
    /// 1 000 000, with at most two decimals. The error is the user-facing message.
    pub fn parse_price(value: &serde_json::Value) -> Result<Money, &'static str> {
        let Some(dollars) = value.as_f64() else {
            return Err("Price must be a number");
        };
        if !dollars.is_finite() || dollars <= 0.0 {
            return Err("Price must be greater than 0");
        }
        if dollars > (MAX_PRICE_CENTS / 100) as f64 {
            return Err("Price must be at most 1000000");
        }
        let scaled = dollars * 100.0;
        let cents = scaled.round();
        // A binary float cannot hold 19.99 exactly; anything within a hair
        // of a whole number of cents had at most two decimals as typed.
        if (scaled - cents).abs() > 1e-6 {
            return Err("Price must have at most two decimals");
        }
        // 0.0000001 passes the checks above but is no cent at all.
        if cents < 1.0 {
            return Err("Price must be greater than 0");
        }
        // In range 1..=MAX_PRICE_CENTS as checked above, so the cast is exact.
        Ok(Money(cents as i64))
    }

    /// The amount as a JSON number of dollars (`1999` → `19.99`).
    pub fn to_dollars_json(self) -> serde_json::Value {
        if self.0 % 100 == 0 {
            serde_json::Value::from(self.0 / 100)
        } else {
            serde_json::Value::from(self.0 as f64 / 100.0)
        }
    }
}

/// An amount as the HTTP API shows it: a JSON number of dollars (`1999` →
/// `19.99`, `2000` → `20`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dollars(pub Money);

/// Reads what [`Dollars`] writes (a client of the API): the nearest cent.
impl<'de> serde::Deserialize<'de> for Dollars {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let dollars = f64::deserialize(deserializer)?;
        Ok(Dollars(Money((dollars * 100.0).round() as i64)))
    }
}

impl serde::Serialize for Dollars {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.to_dollars_json().serialize(serializer)
    }
}

impl ToValue for Money {
    fn to_value(&self) -> Value {
        Value::Int(self.0)
    }
}

impl FromValue for Money {
    fn from_value(value: &Value) -> Result<Self, StoreError> {
        i64::from_value(value).map(Money)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decimal_dollars_become_exact_cents() {
        assert_eq!(Money::parse_price(&json!(19.99)), Ok(Money(1999)));
        assert_eq!(Money::parse_price(&json!(20)), Ok(Money(2000)));
        assert_eq!(Money::parse_price(&json!(0.01)), Ok(Money(1)));
        assert_eq!(Money::parse_price(&json!(1000000)), Ok(Money(100_000_000)));
        assert_eq!(Money::parse_price(&json!(0.29)), Ok(Money(29)));
        assert_eq!(Money::parse_price(&json!(1.15)), Ok(Money(115)));
    }

    #[test]
    fn bad_prices_are_refused_with_a_reason() {
        assert!(Money::parse_price(&json!(0)).is_err());
        assert!(Money::parse_price(&json!(-5)).is_err());
        // Found by fuzzing the API: positive, "two decimals" within the
        // tolerance, and yet zero cents.
        assert_eq!(
            Money::parse_price(&json!(1e-9)),
            Err("Price must be greater than 0")
        );
        assert!(Money::parse_price(&json!(1.401298464324817e-45)).is_err());
        assert!(Money::parse_price(&json!(19.999)).is_err());
        assert!(Money::parse_price(&json!(1000000.01)).is_err());
        assert_eq!(
            Money::parse_price(&json!("20")),
            Err("Price must be a number")
        );
        assert!(Money::parse_price(&json!(null)).is_err());
    }

    #[test]
    fn cents_render_as_dollars() {
        assert_eq!(Money(1999).to_dollars_json(), json!(19.99));
        assert_eq!(Money(2000).to_dollars_json(), json!(20));
        assert_eq!(Money(5).to_dollars_json(), json!(0.05));
    }

    #[test]
    fn dollars_read_back_what_they_write() {
        for cents in [1, 5, 29, 115, 1999, 2000, 123_456_789, MAX_PRICE_CENTS] {
            let written = serde_json::to_string(&Dollars(Money(cents))).unwrap();
            let read: Dollars = serde_json::from_str(&written).unwrap();
            assert_eq!(read, Dollars(Money(cents)), "{written}");
        }
    }
}
