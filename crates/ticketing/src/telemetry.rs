//! Logging: structured `tracing` output to stderr, filtered by `RUST_LOG`
//! (default `info` for services; `ticketing=info,warn` for one-shot commands,
//! whose output is their report). `LOG_FORMAT=json` writes one JSON object
//! per line with the fields of the current span — the request id and trace
//! id of a request, the subject, durable and trace id of an event — for log
//! pipelines; the default is text for people.

pub fn init(one_shot: bool) {
    let default = if one_shot {
        "warn,ticketing=info,bus=info"
    } else {
        "info"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    if json {
        let _ = tracing_subscriber::fmt()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init();
    } else {
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .try_init();
    }
}
