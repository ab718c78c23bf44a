//! The latency-over-time plot: p50 and p99 of each operation per second of
//! the measured part, as SVG.

use std::path::Path;

use plotters::prelude::*;

use crate::report::Report;

/// An operation's name with its p50 and p99 points.
type Series<'a> = (&'a str, Vec<(f64, f64)>, Vec<(f64, f64)>);

pub fn latency_svg(report: &Report, path: &Path) -> anyhow::Result<()> {
    let series: Vec<Series> = report
        .ops
        .iter()
        .map(|op| {
            let p50 = op
                .timeline
                .iter()
                .map(|s| (s.second as f64, s.p50_ms))
                .collect();
            let p99 = op
                .timeline
                .iter()
                .map(|s| (s.second as f64, s.p99_ms))
                .collect();
            (op.op.as_str(), p50, p99)
        })
        .collect();
    let max_x = series
        .iter()
        .flat_map(|(_, a, _)| a.iter().map(|p| p.0))
        .fold(1.0, f64::max);
    let max_y = series
        .iter()
        .flat_map(|(_, _, b)| b.iter().map(|p| p.1))
        .fold(1.0, f64::max)
        * 1.1;
    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    let e = |e: DrawingAreaErrorKind<_>| anyhow::anyhow!("{e}");
    root.fill(&WHITE).map_err(e)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "{} against {}: latency over time",
                report.scenario, report.target
            ),
            ("sans-serif", 20),
        )
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_x + 1.0, 0.0..max_y)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("second of the measured run")
        .y_desc("latency, ms")
        .draw()
        .map_err(e)?;
    let palette = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
    for (i, (name, p50, p99)) in series.into_iter().enumerate() {
        let colour = palette[i % palette.len()];
        chart
            .draw_series(LineSeries::new(p99, colour.stroke_width(2)))
            .map_err(e)?
            .label(format!("{name} p99"))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
            });
        chart
            .draw_series(LineSeries::new(p50, colour.mix(0.5)))
            .map_err(e)?
            .label(format!("{name} p50"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.mix(0.5)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(e)?;
    root.present().map_err(e)?;
    Ok(())
}
