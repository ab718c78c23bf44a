//! A price as a request carries it: any JSON; accepted only as a whole
//! number of cents from 1 to 100 000 000, and what is accepted reads back
//! as the same amount.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shared::money::Money;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    if let Ok(money) = Money::parse_price(&value) {
        let cents = money.cents();
        assert!((1..=100_000_000).contains(&cents), "{value} -> {cents}");
        assert_eq!(Money::parse_price(&money.to_dollars_json()), Ok(money));
    }
});
