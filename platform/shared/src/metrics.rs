//! Process-wide metrics in the Prometheus text format at `/metrics`, on the
//! Rust ecosystem's standard: the `metrics` facade with its Prometheus
//! exporter as the recorder (lock-free counters, gauges and histograms
//! keyed by name and labels). These functions are the one way the
//! workspace records: they install the recorder on first use, give every
//! histogram the same buckets, and add gauges that are read when scraped
//! ([`collect`]).

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use metrics::Label;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Bucket bounds of every histogram, in seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How often histogram samples are folded into their buckets when nothing
/// scrapes (the exporter queues them until then).
const UPKEEP: Duration = Duration::from_secs(5);

/// The exporter, installed as the process's recorder on first use.
fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&BUCKETS)
            .expect("the bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder was installed first, which nothing
        // in this workspace does; then these functions record nothing.
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics stays empty");
        }
        let upkeep = handle.clone();
        let _ = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(UPKEEP);
                    upkeep.run_upkeep();
                }
            });
        handle
    })
}

fn labels(labels: &[(&str, &str)]) -> Vec<Label> {
    labels
        .iter()
        .map(|(k, v)| Label::new((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Adds `n` to the counter `name{labels}`.
pub fn add(name: &'static str, labels_: &[(&str, &str)], n: u64) {
    handle();
    metrics::counter!(name, labels(labels_)).increment(n);
}

/// Adds one to the counter `name{labels}`.
pub fn inc(name: &'static str, labels: &[(&str, &str)]) {
    add(name, labels, 1);
}

/// Sets the gauge `name{labels}` to `value`.
pub fn set(name: &'static str, labels_: &[(&str, &str)], value: f64) {
    handle();
    metrics::gauge!(name, labels(labels_)).set(value);
}

/// Records `seconds` in the histogram `name{labels}`.
pub fn observe(name: &'static str, labels_: &[(&str, &str)], seconds: f64) {
    handle();
    metrics::histogram!(name, labels(labels_)).record(seconds);
}

/// A gauge a collector reports: name, labels, value.
pub type Sample = (&'static str, Vec<(&'static str, String)>, f64);

type Collector = Box<dyn Fn() -> Vec<Sample> + Send + Sync>;

fn collectors() -> std::sync::MutexGuard<'static, BTreeMap<String, Collector>> {
    static COLLECTORS: OnceLock<Mutex<BTreeMap<String, Collector>>> = OnceLock::new();
    // A poisoned lock only means a collector panicked; the map is usable.
    COLLECTORS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// Registers `f`, called at every render to set gauges that are cheap to
/// read but not worth updating on every change (a pool's use, say). A
/// second registration under the same `key` replaces the first.
pub fn collect(key: impl Into<String>, f: impl Fn() -> Vec<Sample> + Send + Sync + 'static) {
    collectors().insert(key.into(), Box::new(f));
}

/// Every series in the Prometheus text exposition format.
pub fn render() -> String {
    let samples: Vec<Sample> = collectors().values().flat_map(|f| f()).collect();
    for (name, labels, value) in samples {
        let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        set(name, &labels, value);
    }
    handle().render()
}

/// The current value of a counter or gauge (0 if never set), read from
/// [`render`]: for tests and examples, not for hot paths.
pub fn get(name: &'static str, labels: &[(&str, &str)]) -> u64 {
    let series = if labels.is_empty() {
        name.to_owned()
    } else {
        let inner: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
            .collect();
        format!("{name}{{{}}}", inner.join(","))
    };
    render()
        .lines()
        .find_map(|line| {
            line.strip_prefix(&series)?
                .strip_prefix(' ')?
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(0.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_gauges_and_histograms_render_as_prometheus_text() {
        inc("test_things_total", &[("kind", "a\"b")]);
        inc("test_things_total", &[("kind", "a\"b")]);
        set("test_backlog", &[("service", "x")], 7.0);
        observe("test_latency_seconds", &[("route", "/r")], 0.003);
        observe("test_latency_seconds", &[("route", "/r")], 0.2);
        let text = render();
        assert!(text.contains("# TYPE test_things_total counter"), "{text}");
        assert!(
            text.contains("test_things_total{kind=\"a\\\"b\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE test_backlog gauge\ntest_backlog{service=\"x\"} 7"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE test_latency_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains("test_latency_seconds_bucket{route=\"/r\",le=\"0.005\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("test_latency_seconds_bucket{route=\"/r\",le=\"0.25\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("test_latency_seconds_bucket{route=\"/r\",le=\"+Inf\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("test_latency_seconds_count{route=\"/r\"} 2"),
            "{text}"
        );
        assert_eq!(get("test_backlog", &[("service", "x")]), 7);
        collect("test", || {
            vec![("test_collected", vec![("k", "v".to_owned())], 3.0)]
        });
        assert!(render().contains("test_collected{k=\"v\"} 3"));
    }
}
