//! The final report: per operation throughput and latency percentiles,
//! answers by status, the correctness checks, the limits measured beside the
//! figures and their ratios, and memory. Text for people, JSON for machines.

use std::fmt::Write as _;

use serde::Serialize;

use crate::procs::ProcMemory;
use crate::stats::OpSummary;

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

impl Check {
    pub fn new(name: impl Into<String>, ok: bool, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            ok,
            detail: detail.into(),
        }
    }
}

/// A figure beside its limit.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub what: String,
    pub figure: f64,
    pub limit_what: String,
    pub limit: f64,
    pub unit: String,
    /// figure / limit.
    pub ratio: f64,
    /// The goal for the ratio, as text (`≥ 0.5`, `≤ 2`), if there is one.
    pub goal: Option<String>,
    pub met: Option<bool>,
}

impl Comparison {
    pub fn new(
        what: &str,
        figure: f64,
        limit_what: &str,
        limit: f64,
        unit: &str,
        goal: Option<(&str, f64)>,
    ) -> Comparison {
        let ratio = if limit > 0.0 { figure / limit } else { 0.0 };
        let met = goal.map(|(op, g)| if op == "≤" { ratio <= g } else { ratio >= g });
        Comparison {
            what: what.into(),
            figure,
            limit_what: limit_what.into(),
            limit,
            unit: unit.into(),
            ratio,
            goal: goal.map(|(op, g)| format!("{op} {g}")),
            met,
        }
    }
}

/// A named figure with no limit beside it.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub what: String,
    pub value: f64,
    pub unit: String,
    pub goal: Option<String>,
    pub met: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub target: String,
    pub settings: serde_json::Value,
    pub measured_seconds: f64,
    pub ops: Vec<OpSummary>,
    pub checks: Vec<Check>,
    pub comparisons: Vec<Comparison>,
    pub figures: Vec<Figure>,
    pub memory: Vec<ProcMemory>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }

    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} against {} — {:.1} s measured  {}",
            self.scenario, self.target, self.measured_seconds, self.settings
        );
        if !self.ops.is_empty() {
            let _ = writeln!(
                out,
                "\n  {:<10} {:>9} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8}  answers",
                "op", "ok", "per s", "p50 ms", "p90", "p99", "p99.9", "max"
            );
            for op in &self.ops {
                let answers = op
                    .answers
                    .iter()
                    .map(|(k, v)| format!("{k}×{v}"))
                    .collect::<Vec<_>>()
                    .join(" ");
                let _ = writeln!(
                    out,
                    "  {:<10} {:>9} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2}  {answers}",
                    op.op,
                    op.ok,
                    op.per_second,
                    op.p50_ms,
                    op.p90_ms,
                    op.p99_ms,
                    op.p999_ms,
                    op.max_ms
                );
            }
        }
        if !self.comparisons.is_empty() {
            let _ = writeln!(out, "\n  beside the limits measured in this run:");
            for c in &self.comparisons {
                let verdict = match c.met {
                    Some(true) => format!("  goal {} met", c.goal.as_deref().unwrap_or("")),
                    Some(false) => format!("  goal {} NOT met", c.goal.as_deref().unwrap_or("")),
                    None => String::new(),
                };
                let _ = writeln!(
                    out,
                    "  {:<44} {:>10.1} {}\n  {:<44} {:>10.1} {}\n  {:<44} {:>10.2} ×{verdict}",
                    c.what, c.figure, c.unit, c.limit_what, c.limit, c.unit, "ratio", c.ratio
                );
            }
        }
        if !self.figures.is_empty() {
            let _ = writeln!(out);
            for f in &self.figures {
                let verdict = match (f.met, &f.goal) {
                    (Some(true), Some(g)) => format!("  goal {g} met"),
                    (Some(false), Some(g)) => format!("  goal {g} NOT met"),
                    _ => String::new(),
                };
                let _ = writeln!(
                    out,
                    "  {:<44} {:>10.1} {}{verdict}",
                    f.what, f.value, f.unit
                );
            }
        }
        if !self.memory.is_empty() {
            let _ = writeln!(
                out,
                "\n  resident memory, MB    idle   set-up peak   load peak   CPU ms (measured)"
            );
            for m in &self.memory {
                let _ = writeln!(
                    out,
                    "  {:<20} {:>6.1} {:>13.1} {:>11.1} {:>19.0}   (pid {})",
                    m.what, m.idle_mb, m.setup_peak_mb, m.peak_mb, m.cpu_ms, m.pid
                );
            }
        }
        if !self.checks.is_empty() {
            let _ = writeln!(out, "\n  checks:");
            for c in &self.checks {
                let _ = writeln!(
                    out,
                    "  [{}] {}: {}",
                    if c.ok { "ok" } else { "FAIL" },
                    c.name,
                    c.detail
                );
            }
        }
        out
    }
}
