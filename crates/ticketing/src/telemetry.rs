//! Logging: structured `tracing` output to stderr, filtered by `RUST_LOG`
//! (default `info` for services; `ticketing=info,warn` for one-shot commands,
//! whose output is their report).

pub fn init(one_shot: bool) {
    let default = if one_shot {
        "warn,ticketing=info,bus=info"
    } else {
        "info,tower_http=warn"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init();
}
