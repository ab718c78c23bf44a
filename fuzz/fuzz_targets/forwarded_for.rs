//! `X-Forwarded-For` as a client may write it: any text; the client found
//! is the untrusted peer itself, or an address from the header or the peer.
#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use shared::client_addr::TrustedProxies;

fuzz_target!(|data: &[u8]| {
    let Ok(header) = std::str::from_utf8(data) else {
        return;
    };
    let proxies = TrustedProxies::parse("10.0.0.0/8, 127.0.0.0/8").unwrap();
    let trusted: IpAddr = "10.0.0.1".parse().unwrap();
    let untrusted: IpAddr = "203.0.113.9".parse().unwrap();
    assert_eq!(proxies.client(untrusted, [header]), untrusted);
    let client = proxies.client(trusted, [header]);
    assert!(
        client == trusted || header.contains(&client.to_string()) || header.contains(':'),
        "{header:?} -> {client}"
    );
    let _ = TrustedProxies::parse(header);
});
