//! A small process-wide registry of counters, gauges and histograms,
//! rendered in the Prometheus text format at `/metrics`. A handful of series
//! does not justify a metrics framework.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Mutex, OnceLock};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

#[derive(Default)]
struct Registry {
    kinds: BTreeMap<&'static str, Kind>,
    /// (family, sample suffix, labels) → value
    samples: BTreeMap<(&'static str, &'static str, String), f64>,
}

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    // A poisoned lock only means another thread panicked mid-update; the
    // maps themselves are still usable.
    REGISTRY
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

fn labels_text(labels: &[(&str, &str)]) -> String {
    let mut s = String::new();
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let v = v
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        let _ = write!(s, "{k}=\"{v}\"");
    }
    s
}

/// Adds `n` to the counter `name{labels}`.
pub fn add(name: &'static str, labels: &[(&str, &str)], n: u64) {
    let mut r = registry();
    r.kinds.insert(name, Kind::Counter);
    *r.samples
        .entry((name, "", labels_text(labels)))
        .or_insert(0.0) += n as f64;
}

/// Adds one to the counter `name{labels}`.
pub fn inc(name: &'static str, labels: &[(&str, &str)]) {
    add(name, labels, 1);
}

/// The current value of a counter or gauge (0 if never set).
pub fn get(name: &'static str, labels: &[(&str, &str)]) -> u64 {
    registry()
        .samples
        .get(&(name, "", labels_text(labels)))
        .copied()
        .unwrap_or(0.0) as u64
}

/// Sets the gauge `name{labels}` to `value`.
pub fn set(name: &'static str, labels: &[(&str, &str)], value: f64) {
    let mut r = registry();
    r.kinds.insert(name, Kind::Gauge);
    r.samples.insert((name, "", labels_text(labels)), value);
}

/// Bucket bounds of every histogram, in seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Records `seconds` in the histogram `name{labels}`.
pub fn observe(name: &'static str, labels: &[(&str, &str)], seconds: f64) {
    let base = labels_text(labels);
    let with_le = |le: &str| {
        if base.is_empty() {
            format!("le=\"{le}\"")
        } else {
            format!("{base},le=\"{le}\"")
        }
    };
    let mut r = registry();
    r.kinds.insert(name, Kind::Histogram);
    for bound in BUCKETS {
        let count = r
            .samples
            .entry((name, "_bucket", with_le(&bound.to_string())))
            .or_insert(0.0);
        if seconds <= bound {
            *count += 1.0;
        }
    }
    *r.samples
        .entry((name, "_bucket", with_le("+Inf")))
        .or_insert(0.0) += 1.0;
    *r.samples.entry((name, "_sum", base.clone())).or_insert(0.0) += seconds;
    *r.samples.entry((name, "_count", base)).or_insert(0.0) += 1.0;
}

/// A gauge a collector reports: name, labels, value.
pub type Sample = (&'static str, Vec<(&'static str, String)>, f64);

type Collector = Box<dyn Fn() -> Vec<Sample> + Send + Sync>;

fn collectors() -> std::sync::MutexGuard<'static, BTreeMap<String, Collector>> {
    static COLLECTORS: OnceLock<Mutex<BTreeMap<String, Collector>>> = OnceLock::new();
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
    let r = registry();
    let mut out = String::new();
    let mut last = "";
    for ((name, suffix, labels), value) in r.samples.iter() {
        if *name != last {
            let kind = r.kinds.get(name).copied().unwrap_or(Kind::Counter);
            let _ = writeln!(out, "# TYPE {name} {}", kind.name());
            last = name;
        }
        if labels.is_empty() {
            let _ = writeln!(out, "{name}{suffix} {value}");
        } else {
            let _ = writeln!(out, "{name}{suffix}{{{labels}}} {value}");
        }
    }
    out
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
