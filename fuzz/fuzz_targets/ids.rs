//! An id from a path or a body: any text; what parses prints back as an id
//! that parses to the same id.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shared::ids::UserId;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(id) = UserId::parse(text) {
        assert_eq!(UserId::parse(&id.to_string()), Some(id));
    }
});
