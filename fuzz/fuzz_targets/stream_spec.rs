//! A stream spec file: any text; parsing answers with a spec or an error,
//! never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = provision::spec::Spec::parse(text, "fuzz.yaml");
    let _ = provision::spec::parse_duration(text);
});
