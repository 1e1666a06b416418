//! `docs/benchmarks/chaos.png`: the run over time, both data planes on
//! one axis: the p99 latency of every segment (left) and the answers per
//! second of the killed endpoint (right), the kill and the restart drawn
//! as vertical lines.

use std::path::Path;

use plotters::prelude::*;

use super::{KILLED, PlaneRun, Report};
use crate::bench::proxy::subject::Kind;

/// The colour of a data plane, as the other benches draw it.
fn color(kind: Kind) -> RGBColor {
    match kind {
        Kind::Envoy => RGBColor(200, 40, 40),
        _ => RGBColor(31, 97, 180),
    }
}

/// Draws one panel: a line per run of `points(run)` over the run's time.
fn panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    report: &Report,
    (title, y_desc): (&str, &str),
    points: impl Fn(&PlaneRun) -> Vec<(f64, f64)>,
    labelled: bool,
) -> anyhow::Result<()> {
    let end = report.params.duration.as_secs_f64();
    let lines: Vec<(Kind, Vec<(f64, f64)>)> =
        report.runs.iter().map(|r| (r.kind, points(r))).collect();
    let y_max = lines
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, y)| *y))
        .fold(0.0f64, f64::max)
        .max(1.0)
        * 1.15;
    let mut builder = ChartBuilder::on(area);
    builder
        .margin(16)
        .x_label_area_size(if labelled { 40 } else { 8 })
        .y_label_area_size(if labelled { 60 } else { 8 });
    if labelled {
        builder.caption(title, ("sans-serif", 18));
    }
    let mut chart = builder.build_cartesian_2d(0.0..end, 0.0..y_max)?;
    if labelled {
        chart
            .configure_mesh()
            .x_desc("seconds into the run")
            .y_desc(y_desc)
            .label_style(("sans-serif", 13))
            .draw()?;
    } else {
        chart.configure_mesh().x_labels(0).y_labels(0).draw()?;
    }
    for t in [report.params.kill_at, report.params.restart_at] {
        let t = t.as_secs_f64();
        chart.draw_series(LineSeries::new(
            [(t, 0.0), (t, y_max)],
            BLACK.mix(0.4).stroke_width(1),
        ))?;
    }
    for (kind, points) in lines {
        let c = color(kind);
        let drawn = chart.draw_series(LineSeries::new(points, c.stroke_width(2)))?;
        if labelled {
            drawn
                .label(kind.name())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 14, y)], c.stroke_width(2)));
        }
    }
    if labelled {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 12))
            .draw()?;
    }
    Ok(())
}

/// Writes the plot to `path` (labels only when a font was registered).
pub fn plot(report: &Report, path: &Path, labelled: bool) -> anyhow::Result<()> {
    let root = BitMapBackend::new(path, (1200, 440)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, 2));
    panel(
        &panels[0],
        report,
        (
            "p99 latency per segment (kill and restart: grey lines)",
            "p99 latency (ms)",
        ),
        |run| {
            run.segments
                .iter()
                .filter_map(|s| {
                    let mut l = s.load.latencies.clone();
                    let q = crate::bench::proxy::load::Quantiles::of(&mut l)?;
                    let p99 = q.p99.as_secs_f64() * 1000.0;
                    Some([(s.start, p99), (s.end, p99)])
                })
                .flatten()
                .collect()
        },
        labelled,
    )?;
    panel(
        &panels[1],
        report,
        (
            &format!("Answers per second of backend-{KILLED} (the killed endpoint)"),
            "answers per second",
        ),
        |run| {
            run.per_second
                .iter()
                .enumerate()
                .flat_map(|(i, b)| {
                    let v = b[KILLED] as f64;
                    [(i as f64, v), (i as f64 + 1.0, v)]
                })
                .collect()
        },
        labelled,
    )?;
    root.present()?;
    Ok(())
}
