//! What a run records: per operation an HDR histogram of latencies (µs), the
//! answers by status, and per second of the run a histogram for the
//! latency-over-time plot. Operations finishing during the warm-up run but
//! are not recorded.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies up to an hour, 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

struct Op {
    latency: Histogram<u64>,
    /// "201", "409", "io" (no answer), …
    answers: BTreeMap<String, u64>,
    ok: u64,
    /// One histogram per second since the measured part began.
    per_second: Vec<Histogram<u64>>,
}

struct Inner {
    ops: BTreeMap<&'static str, Op>,
    measured_from: Option<Instant>,
    measured_until: Option<Instant>,
}

/// Shared by every task of a run. Cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<Mutex<Inner>>,
    started: Instant,
    warmup: Duration,
}

impl Recorder {
    pub fn new(warmup: Duration) -> Recorder {
        Recorder {
            inner: Arc::new(Mutex::new(Inner {
                ops: BTreeMap::new(),
                measured_from: None,
                measured_until: None,
            })),
            started: Instant::now(),
            warmup,
        }
    }

    /// When the measured part begins (after the warm-up).
    pub fn measure_from(&self) -> Instant {
        self.started + self.warmup
    }

    /// Records one finished operation: `label`, when it was meant to start
    /// (its latency counts from then: no coordinated omission), its answer
    /// (`Some(status)`, or `None` when no answer came), and whether that
    /// answer was the expected one.
    pub fn record(&self, label: &'static str, intended: Instant, answer: Option<u16>, ok: bool) {
        let now = Instant::now();
        let from = self.measure_from();
        if intended < from {
            return;
        }
        let micros = now.duration_since(intended).as_micros().max(1) as u64;
        let second = now.duration_since(from).as_secs() as usize;
        let mut inner = self.inner.lock().unwrap();
        inner.measured_from.get_or_insert(from);
        inner.measured_until = Some(inner.measured_until.map_or(now, |u| u.max(now)));
        let op = inner.ops.entry(label).or_insert_with(|| Op {
            latency: histogram(),
            answers: BTreeMap::new(),
            ok: 0,
            per_second: Vec::new(),
        });
        op.latency.saturating_record(micros);
        *op.answers
            .entry(answer.map_or_else(|| "io".to_owned(), |s| s.to_string()))
            .or_default() += 1;
        if ok {
            op.ok += 1;
        }
        while op.per_second.len() <= second {
            op.per_second.push(histogram());
        }
        op.per_second[second].saturating_record(micros);
    }

    /// Summaries of every operation over `measured` (the measured part's
    /// length; `None`: first to last recorded completion).
    pub fn summary(&self, measured: Option<Duration>) -> Vec<OpSummary> {
        let inner = self.inner.lock().unwrap();
        let span = measured.unwrap_or_else(|| match (inner.measured_from, inner.measured_until) {
            (Some(f), Some(u)) => u.duration_since(f),
            _ => Duration::ZERO,
        });
        inner
            .ops
            .iter()
            .map(|(label, op)| {
                let q = |p: f64| op.latency.value_at_quantile(p) as f64 / 1000.0;
                let total = op.latency.len();
                OpSummary {
                    op: label.to_string(),
                    count: total,
                    ok: op.ok,
                    errors: total - op.ok,
                    answers: op.answers.clone(),
                    per_second: if span.is_zero() {
                        0.0
                    } else {
                        op.ok as f64 / span.as_secs_f64()
                    },
                    p50_ms: q(0.50),
                    p90_ms: q(0.90),
                    p99_ms: q(0.99),
                    p999_ms: q(0.999),
                    max_ms: op.latency.max() as f64 / 1000.0,
                    timeline: op
                        .per_second
                        .iter()
                        .enumerate()
                        .filter(|(_, h)| !h.is_empty())
                        .map(|(s, h)| Second {
                            second: s as u64,
                            count: h.len(),
                            p50_ms: h.value_at_quantile(0.5) as f64 / 1000.0,
                            p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
                            max_ms: h.max() as f64 / 1000.0,
                        })
                        .collect(),
                }
            })
            .collect()
    }
}

/// One operation's figures.
#[derive(Debug, Clone, Serialize)]
pub struct OpSummary {
    pub op: String,
    pub count: u64,
    pub ok: u64,
    pub errors: u64,
    /// Answers by status (`io`: none came).
    pub answers: BTreeMap<String, u64>,
    /// Expected answers per second of the measured part.
    pub per_second: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub timeline: Vec<Second>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Second {
    pub second: u64,
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Percentiles of a plain list of values (already in ms).
pub fn quantiles(values: &[f64]) -> Option<Quantiles> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
    Some(Quantiles {
        count: v.len(),
        p50: at(0.5),
        p90: at(0.9),
        p99: at(0.99),
        p999: at(0.999),
        max: v[v.len() - 1],
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct Quantiles {
    pub count: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::Recorder;

    #[test]
    fn latency_counts_from_when_the_operation_was_due_and_warm_up_is_left_out() {
        let rec = Recorder::new(Duration::ZERO);
        std::thread::sleep(Duration::from_millis(60));
        // Due 50 ms ago (it waited for a slot): 50 ms, not the moment it took.
        rec.record(
            "op",
            Instant::now() - Duration::from_millis(50),
            Some(200),
            true,
        );
        rec.record("op", Instant::now(), Some(500), false);
        rec.record("op", Instant::now(), None, false);
        let s = &rec.summary(Some(Duration::from_secs(1)))[0];
        assert_eq!((s.count, s.ok, s.errors), (3, 1, 2));
        assert!(s.max_ms >= 50.0, "{}", s.max_ms);
        assert_eq!(s.answers["200"], 1);
        assert_eq!(s.answers["500"], 1);
        assert_eq!(s.answers["io"], 1);
        assert_eq!(s.per_second, 1.0);

        let warm = Recorder::new(Duration::from_secs(60));
        warm.record("op", Instant::now(), Some(200), true);
        assert!(warm.summary(None).is_empty(), "finished during the warm-up");
    }
}
