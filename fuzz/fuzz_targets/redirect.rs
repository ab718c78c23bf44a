//! Where to go after signing in: any decoded `next` value; the answer is
//! always a local path a browser cannot read as another site.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let next = String::from_utf8_lossy(data).into_owned();
    let to = web::safe_next(Some(&next));
    assert!(to.starts_with('/'), "{to:?}");
    assert!(!to.starts_with("//"), "{to:?}");
    assert!(
        to.bytes().all(|b| b.is_ascii_graphic() && b != b'\\'),
        "{to:?}"
    );
    assert!(to == "/" || to == next, "{to:?}");
});
