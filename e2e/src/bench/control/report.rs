//! The `control` report: markdown tables against the targets and a
//! plot of convergence by fleet size, one line per mesh size.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use plotters::prelude::*;

use super::{
    CONVERGENCE_TARGET, CONVERGENCE_TARGET_PROXIES, Change, Outcome, Peer, RSS_TARGET_MB,
    RSS_TARGET_PROXIES, RSS_TARGET_SERVICES, Report, Run,
};
use crate::bench::{Percentiles, ms};

/// How a peer timing prints.
pub fn peer_text(p: Peer) -> String {
    match p {
        Peer::NotRun => "not run".to_string(),
        Peer::TimedOut => "timed out".to_string(),
        Peer::Took(d) => ms(d),
    }
}

fn pct(p: &Option<Percentiles>) -> [String; 3] {
    match p {
        Some(p) => [ms(p.p50), ms(p.p99), ms(p.max)],
        None => ["-".into(), "-".into(), "-".into()],
    }
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

fn find(report: &Report, m: usize, n: usize) -> Option<&Run> {
    report
        .meshes
        .iter()
        .filter(|r| r.services == m)
        .flat_map(|r| &r.fleets)
        .filter(|f| f.clients == n)
        .find_map(|f| match &f.outcome {
            Outcome::Ran(run) => Some(run.as_ref()),
            Outcome::Skipped(_) => None,
        })
}

/// The markdown report (`docs/benchmarks/control.md`).
pub fn markdown(report: &Report) -> String {
    let p = &report.params;
    let mut md = String::new();
    md.push_str("# Control plane benchmarks\n\n");
    md.push_str(
        "Written by `cargo run --release -p e2e --bin mesh-bench -- control`; rerun it rather \
         than editing this file. What is measured is described in \
         `e2e/src/bench/control/mod.rs`.\n\n",
    );
    md.push_str("## Machine\n\n| | |\n|---|---|\n");
    md.push_str(&report.machine.markdown_rows());
    let list = |v: &[usize]| {
        v.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = write!(
        md,
        "\n## Parameters\n\n| | |\n|---|---|\n\
         | services (M) | {} — each a Kubernetes Service with one HTTP port (80, 8080 or 9080) and 5 Pods (10.1.x.x, labels app/version) |\n\
         | rules | every 10th service: DestinationRule with subsets v1/v2 and a 90/10 VirtualService |\n\
         | namespaces | {} (services and proxies spread round-robin) |\n\
         | proxies (N) | {} — SotW ADS streams in a child process, Envoy-like: CDS (wildcard), EDS for EDS clusters, LDS, RDS for the port-named routes, every response ACKed; {} streams per HTTP/2 connection; proxy i is the sidecar of a generated pod (own IP) |\n\
         | change (a) | one VirtualService 90/10 -> 80/20: time from publishing the snapshot to each proxy's RDS ACK |\n\
         | change (b) | one Pod added to one service: time to each proxy's EDS ACK |\n\
         | server | the real `AdsServer` + `serve_listener` with `xds::generate`, in this process on 127.0.0.1, fed by a `watch` channel |\n\
         | RSS | this process (`VmRSS`/`VmHWM`): the control plane plus the bench's loaded objects and its 3 snapshots; the proxies run in a child process and are not counted. Peak is reset (`clear_refs`) per fleet |\n\
         | peer | one stock Envoy (`--concurrency 1`) on the same server as the gateway (role router, Gateway bound to 127.0.0.1) — it receives every cluster; timed by polling admin `/ready` and `/stats` every 10 ms |\n\
         | budget | a fleet predicted (from the previous N's measured server time per proxy) to need more than {:.0} s for its three pushes is skipped; every wait times out after {:.0} s |\n",
        list(&p.services),
        p.namespaces,
        list(&p.clients),
        p.per_connection,
        p.budget.as_secs_f64(),
        p.timeout.as_secs_f64(),
    );

    md.push_str("\n## Targets\n\n| target | result | met |\n|---|---|---|\n");
    let target_s = CONVERGENCE_TARGET.as_secs_f64();
    let conv_rows: Vec<(usize, &Run)> = report
        .meshes
        .iter()
        .filter_map(|r| {
            find(report, r.services, CONVERGENCE_TARGET_PROXIES).map(|run| (r.services, run))
        })
        .collect();
    if conv_rows.is_empty() {
        let _ = writeln!(
            md,
            "| {CONVERGENCE_TARGET_PROXIES} proxies converged < {target_s:.0} s after a change | not measured in this run (see below) | n/a |"
        );
    }
    for (m, run) in conv_rows {
        for (what, c) in [
            ("VirtualService change", &run.route_change),
            ("endpoint change", &run.endpoint_change),
        ] {
            let all = c.converged == run.init_done && run.init_done == CONVERGENCE_TARGET_PROXIES;
            let max = c.latency.map(|l| l.max);
            let met = all && max.is_some_and(|d| d < CONVERGENCE_TARGET);
            let _ = writeln!(
                md,
                "| {CONVERGENCE_TARGET_PROXIES} proxies converged < {target_s:.0} s after a {what} (M={m}) | {}/{CONVERGENCE_TARGET_PROXIES} in max {} | {} |",
                c.converged,
                max.map(ms).unwrap_or_else(|| "-".into()),
                if met { "yes" } else { "**no**" }
            );
        }
    }
    match find(report, RSS_TARGET_SERVICES, RSS_TARGET_PROXIES) {
        Some(run) => {
            let peak = mb(run.rss_peak_kb);
            let _ = writeln!(
                md,
                "| RSS < {RSS_TARGET_MB:.0} MB with {RSS_TARGET_SERVICES} services and {RSS_TARGET_PROXIES} proxies | peak {peak:.0} MB | {} |",
                if peak < RSS_TARGET_MB {
                    "yes"
                } else {
                    "**no**"
                }
            );
        }
        None => {
            let _ = writeln!(
                md,
                "| RSS < {RSS_TARGET_MB:.0} MB with {RSS_TARGET_SERVICES} services and {RSS_TARGET_PROXIES} proxies | not measured in this run (see below) | n/a |"
            );
        }
    }

    md.push_str(
        "\n## Translation (one sidecar)\n\n\
         | M | objects | load_str | Snapshot::build | xds::generate (mean) | CDS | EDS | LDS | RDS | bytes per proxy |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in &report.meshes {
        let cell = |(n, b): (usize, usize)| format!("{n} / {:.1} KB", b as f64 / 1024.0);
        let total: usize = r.per_type.iter().map(|t| t.1).sum();
        let _ = writeln!(
            md,
            "| {} | {} | {:.2} s | {:.2} s | {} ({} runs) | {} | {} | {} | {} | {:.2} MB |",
            r.services,
            r.objects,
            r.load.as_secs_f64(),
            r.build.as_secs_f64(),
            ms(r.translate),
            r.translate_runs,
            cell(r.per_type[0]),
            cell(r.per_type[1]),
            cell(r.per_type[2]),
            cell(r.per_type[3]),
            total as f64 / (1024.0 * 1024.0),
        );
    }
    md.push_str(
        "\nType columns: resources / encoded bytes (prost `encoded_len`, before `Any` packing).\n",
    );

    md.push_str(
        "\n## Initial configuration and memory\n\n\
         | M | N | ACKed | all done | p50 | p99 | max | bytes/proxy | RSS before | RSS after | RSS peak | peak - before | Envoy ready |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in &report.meshes {
        for f in &r.fleets {
            match &f.outcome {
                Outcome::Ran(run) => {
                    let [p50, p99, max] = pct(&run.init);
                    let _ = writeln!(
                        md,
                        "| {} | {} | {}{} | {:.2} s | {p50} | {p99} | {max} | {:.2} MB | {:.0} MB | {:.0} MB | {:.0} MB | {:.0} MB | {} |",
                        r.services,
                        f.clients,
                        run.init_done,
                        if run.failed > 0 {
                            format!(" ({} failed)", run.failed)
                        } else {
                            String::new()
                        },
                        run.init_wall.as_secs_f64(),
                        run.init_bytes as f64 / (1024.0 * 1024.0),
                        mb(run.rss_base_kb),
                        mb(run.rss_init_kb),
                        mb(run.rss_peak_kb),
                        mb(run.rss_peak_kb.saturating_sub(run.rss_base_kb)),
                        peer_text(run.envoy_init),
                    );
                }
                Outcome::Skipped(why) => {
                    let _ = writeln!(
                        md,
                        "| {} | {} | skipped: {why} | | | | | | | | | | |",
                        r.services, f.clients
                    );
                }
            }
        }
    }

    md.push_str(
        "\n## Convergence after a change\n\n\
         | M | N | change | converged | p50 | p99 | max | ACKs by type in the window | Envoy peer |\n\
         |---:|---:|---|---:|---:|---:|---:|---|---:|\n",
    );
    for r in &report.meshes {
        for f in &r.fleets {
            let Outcome::Ran(run) = &f.outcome else {
                continue;
            };
            for (what, c) in [
                ("(a) VirtualService weight -> RDS", &run.route_change),
                ("(b) endpoint added -> EDS", &run.endpoint_change),
            ] {
                let [p50, p99, max] = pct(&c.latency);
                let _ = writeln!(
                    md,
                    "| {} | {} | {what} | {}/{} | {p50} | {p99} | {max} | {} | {} |",
                    r.services,
                    f.clients,
                    c.converged,
                    run.init_done,
                    pushed_text(c),
                    peer_text(c.envoy),
                );
            }
        }
    }
    md.push_str("\n![Convergence after a change by number of proxies](control.png)\n");
    md
}

fn pushed_text(c: &Change) -> String {
    if c.pushed.is_empty() {
        return "-".into();
    }
    c.pushed
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Which percentile a plot line shows.
type Pick = fn(&Percentiles) -> Duration;

/// Plots convergence (p50/p99/max) against proxies, one line per mesh
/// size and percentile, change (a) on the left and (b) on the right.
pub fn plot(report: &Report, path: &Path, labelled: bool) -> anyhow::Result<()> {
    let root = BitMapBackend::new(path, (1100, 460)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, 2));
    let palette = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
    let x_max = report
        .params
        .clients
        .iter()
        .copied()
        .max()
        .unwrap_or(1)
        .max(1) as f64
        * 1.5;
    for (panel, (title, pick)) in panels.iter().zip([
        (
            "VirtualService change -> RDS ACK",
            (|r: &Run| &r.route_change) as fn(&Run) -> &Change,
        ),
        ("Endpoint added -> EDS ACK", |r: &Run| &r.endpoint_change),
    ]) {
        let mut series = Vec::new();
        for (mi, r) in report.meshes.iter().enumerate() {
            let color = palette[mi % palette.len()];
            let stats: [(&str, Pick, u32); 3] = [
                ("p50", |p| p.p50, 1),
                ("p99", |p| p.p99, 2),
                ("max", |p| p.max, 3),
            ];
            for (name, f, width) in stats {
                let pts: Vec<(f64, f64)> = r
                    .fleets
                    .iter()
                    .filter_map(|fl| match &fl.outcome {
                        Outcome::Ran(run) => pick(run)
                            .latency
                            .map(|l| (fl.clients as f64, f(&l).as_secs_f64() * 1000.0)),
                        Outcome::Skipped(_) => None,
                    })
                    .collect();
                series.push((format!("M={} {name}", r.services), pts, color, width));
            }
        }
        let y_max = series
            .iter()
            .flat_map(|s| s.1.iter().map(|p| p.1))
            .fold(CONVERGENCE_TARGET.as_secs_f64() * 1000.0, f64::max)
            * 1.15;
        let mut builder = ChartBuilder::on(panel);
        builder
            .margin(16)
            .x_label_area_size(if labelled { 40 } else { 8 })
            .y_label_area_size(if labelled { 64 } else { 8 });
        if labelled {
            builder.caption(title, ("sans-serif", 18));
        }
        let mut chart = builder.build_cartesian_2d((50f64..x_max).log_scale(), 0.0f64..y_max)?;
        let mut mesh = chart.configure_mesh();
        if labelled {
            mesh.x_desc("proxies (N)")
                .y_desc("publish -> ACK (ms)")
                .x_label_formatter(&|x| format!("{x:.0}"))
                .y_label_formatter(&|y| format!("{y:.0}"))
                .label_style(("sans-serif", 13));
        } else {
            mesh.x_labels(0).y_labels(0);
        }
        mesh.draw()?;
        // The target, for reference.
        let target = CONVERGENCE_TARGET.as_secs_f64() * 1000.0;
        let drawn = chart.draw_series(LineSeries::new(
            vec![(50.0, target), (x_max, target)],
            BLACK.mix(0.4).stroke_width(1),
        ))?;
        if labelled {
            drawn.label("target 1 s").legend(|(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], BLACK.mix(0.4).stroke_width(1))
            });
        }
        for (name, pts, color, width) in series {
            let drawn =
                chart.draw_series(LineSeries::new(pts.clone(), color.stroke_width(width)))?;
            if labelled {
                drawn.label(name).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(width))
                });
            }
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
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
    }
    root.present()?;
    Ok(())
}
