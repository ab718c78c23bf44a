//! Logging and trace export.
//!
//! Logs: structured `tracing` output to stderr, filtered by `RUST_LOG`
//! (default `info` for services; the binary's own at info, the rest at warn,
//! for one-shot commands,
//! whose output is their report). `LOG_FORMAT=json` writes one JSON object
//! per line with the fields of the current span — the request id and trace
//! id of a request, the subject, durable and trace id of an event — for log
//! pipelines; the default is text for people.
//!
//! Traces: when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, request and event spans are
//! also exported over OTLP/HTTP (protobuf) in batches, with the standard
//! `OTEL_*` variables for headers, timeout and resource attributes.
//! `service.name` is `OTEL_SERVICE_NAME` if set, else the services this
//! process runs. The ids exported are the ones that travel in `traceparent`
//! headers and outbox rows (see [`shared::trace::join`]), so one purchase is
//! one trace across processes.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer;
use tracing_subscriber::Registry;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Flushes and stops trace export; call before the runtime shuts down.
#[must_use = "call shutdown() before exiting so buffered spans are sent"]
pub struct Guard {
    provider: Option<SdkTracerProvider>,
}

impl Guard {
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(e) = provider.shutdown() {
                tracing::warn!(error = %e, "cannot flush the last spans to the OTLP endpoint");
            }
        }
    }
}

/// Installs the global subscriber. `binary` is the binary's crate name
/// (its own logs stay at info in a one-shot command, and it names the
/// tracer); `runtime` carries the exporter's HTTP requests; `service_name`
/// is the default `service.name`.
pub fn init(
    one_shot: bool,
    binary: &str,
    service_name: &str,
    runtime: &tokio::runtime::Handle,
) -> Guard {
    let default = if one_shot {
        format!("warn,{binary}=info,bus=info,provision=info,runtime=info")
    } else {
        "info".to_owned()
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let json = std::env::var("LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (provider, export_error) = if one_shot || !export_configured() {
        (None, None)
    } else {
        match exporter(service_name, runtime) {
            Ok(p) => (Some(p), None),
            Err(e) => (None, Some(e)),
        }
    };
    // The log filter applies to the logs only: spans at info and above are
    // exported whatever RUST_LOG says.
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer(binary.to_owned()))
            .with_filter(tracing_subscriber::filter::LevelFilter::INFO)
    });
    let logs: Box<dyn Layer<Registry> + Send + Sync> = if json {
        Box::new(
            tracing_subscriber::fmt::layer()
                .json()
                .with_current_span(true)
                .with_span_list(false)
                .with_writer(std::io::stderr),
        )
    } else {
        Box::new(
            tracing_subscriber::fmt::layer()
                .with_ansi(ansi)
                .with_writer(std::io::stderr),
        )
    };
    let _ = tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(otel)
        .try_init();
    if let Some(e) = export_error {
        tracing::warn!(error = %e, "OTLP trace export is configured but cannot start; spans are only logged");
    }
    Guard { provider }
}

fn export_configured() -> bool {
    let set = |k: &str| std::env::var(k).is_ok_and(|v| !v.trim().is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

fn exporter(
    service_name: &str,
    runtime: &tokio::runtime::Handle,
) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    let client = RuntimeClient {
        client: reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .unwrap_or_default(),
        runtime: runtime.clone(),
        failing: std::sync::atomic::AtomicBool::new(false),
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .build()?;
    let name = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| service_name.to_owned());
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(name)
        .build();
    Ok(SdkTracerProvider::builder()
        .with_resource(resource)
        .with_batch_exporter(exporter)
        .build())
}

/// The exporter's HTTP client: the batch processor runs on a thread of its
/// own, so each request is handed to the service's Tokio runtime (which
/// reqwest needs) and awaited from there. Says once when export starts
/// failing and once when it recovers.
#[derive(Debug)]
struct RuntimeClient {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
    failing: std::sync::atomic::AtomicBool,
}

impl RuntimeClient {
    fn outcome(&self, problem: Option<String>) {
        use std::sync::atomic::Ordering;
        match problem {
            Some(p) if !self.failing.swap(true, Ordering::Relaxed) => {
                tracing::warn!(problem = %p, "cannot export spans to the OTLP endpoint; dropping them until it answers");
            }
            None if self.failing.swap(false, Ordering::Relaxed) => {
                tracing::info!("exporting spans to the OTLP endpoint again");
            }
            _ => {}
        }
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for RuntimeClient {
    async fn send_bytes(
        &self,
        request: opentelemetry_http::Request<opentelemetry_http::Bytes>,
    ) -> Result<
        opentelemetry_http::Response<opentelemetry_http::Bytes>,
        opentelemetry_http::HttpError,
    > {
        let request = reqwest::Request::try_from(request)?;
        let client = self.client.clone();
        let sent = self.runtime.spawn(async move {
            let response = client.execute(request).await?;
            let status = response.status();
            let headers = response.headers().clone();
            let body = response.bytes().await?;
            Ok::<_, reqwest::Error>((status, headers, body))
        });
        let (status, headers, body) = match sent.await? {
            Ok(sent) => sent,
            Err(e) => {
                self.outcome(Some(e.to_string()));
                return Err(e.into());
            }
        };
        self.outcome((!status.is_success()).then(|| format!("the endpoint answered {status}")));
        let mut response = opentelemetry_http::Response::new(body);
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        Ok(response)
    }
}
