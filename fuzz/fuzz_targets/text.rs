//! Titles, comments and e-mail addresses: any text; checks answer without
//! panicking, and what they accept has no control or direction characters.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if shared::text::check(text, false).is_ok() {
        assert!(!text.chars().any(char::is_control), "{text:?}");
    }
    let _ = shared::text::check(text, true);
    if let Ok(email) = shared::email::Email::parse(text) {
        assert!(!email.as_str().chars().any(char::is_control), "{email}");
        assert_eq!(
            shared::email::Email::parse(email.as_str()),
            Ok(email.clone())
        );
    }
});
