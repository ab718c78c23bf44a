//! A small process-wide counter registry rendered in the Prometheus text
//! format at `/metrics`. A handful of counters does not justify a metrics
//! framework.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Mutex, OnceLock};

fn registry() -> &'static Mutex<BTreeMap<(&'static str, String), u64>> {
    static REGISTRY: OnceLock<Mutex<BTreeMap<(&'static str, String), u64>>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

fn labels_text(labels: &[(&str, &str)]) -> String {
    let mut s = String::new();
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let v = v.replace('\\', "\\\\").replace('"', "\\\"");
        let _ = write!(s, "{k}=\"{v}\"");
    }
    s
}

/// Adds `n` to the counter `name{labels}`.
pub fn add(name: &'static str, labels: &[(&str, &str)], n: u64) {
    let key = (name, labels_text(labels));
    // A poisoned lock only means another thread panicked mid-increment;
    // the map itself is still usable.
    let mut map = registry().lock().unwrap_or_else(|e| e.into_inner());
    *map.entry(key).or_insert(0) += n;
}

/// Adds one to the counter `name{labels}`.
pub fn inc(name: &'static str, labels: &[(&str, &str)]) {
    add(name, labels, 1);
}

/// The current value of a counter (0 if never incremented).
pub fn get(name: &'static str, labels: &[(&str, &str)]) -> u64 {
    let map = registry().lock().unwrap_or_else(|e| e.into_inner());
    map.get(&(name, labels_text(labels))).copied().unwrap_or(0)
}

/// Every counter in the Prometheus text exposition format.
pub fn render() -> String {
    let map = registry().lock().unwrap_or_else(|e| e.into_inner());
    let mut out = String::new();
    let mut last = "";
    for ((name, labels), value) in map.iter() {
        if *name != last {
            let _ = writeln!(out, "# TYPE {name} counter");
            last = name;
        }
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
    out
}
