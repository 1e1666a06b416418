//! The `proxy` report: the targets table (ratios mesh-proxy / Envoy in the
//! same run), latency, throughput and memory tables, notes on what limits
//! the numbers, and a plot of added latency and maximum rate. The cell
//! formats, the targets row, the bar chart and the index update are
//! shared with the other data-plane reports (`security`).

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use super::load::{Protocol, REPORTED};
use super::subject::Kind;
use super::telemetry::{self, TelemetryReport};
use super::{
    ADDED_P99_MAX_RATIO, CPU_MAX_RATIO, RSS_MAX_RATIO, Report, Series, THROUGHPUT_MIN_RATIO,
    TargetResult, added_us,
};

/// Below this share of its CPU a proxy was not saturated in the
/// throughput phase.
const SATURATED_PCT: f64 = 90.0;

/// Which way a target ratio must go.
#[derive(Clone, Copy)]
pub(crate) enum Goal {
    /// Ours / Envoy at most this.
    AtMost(f64),
    /// Ours / Envoy at least this.
    AtLeast(f64),
    /// No target: the ratio is shown for information.
    None,
}

/// Microseconds, no decimals.
pub(crate) fn us(d: std::time::Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

/// Signed microseconds (an added latency).
pub(crate) fn signed_us(v: f64) -> String {
    format!("{v:+.0} µs")
}

fn mb(kb: u64) -> String {
    format!("{:.1} MB", kb as f64 / 1024.0)
}

/// The formatted value, or `-`.
pub(crate) fn opt<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map(f).unwrap_or_else(|| "-".into())
}

/// One row of a targets table (`| measure | mesh-proxy | Envoy | ratio |
/// target | met |`); `unit` is appended to both values.
pub(crate) fn target_row(
    md: &mut String,
    what: &str,
    ours: Option<f64>,
    envoy: Option<f64>,
    unit: &str,
    goal: Goal,
) {
    let decimals = if unit.is_empty() || unit == " µs" {
        0
    } else {
        1
    };
    let cell = |v: Option<f64>| opt(v, |v| format!("{v:.decimals$}{unit}"));
    let (ratio, met) = match (ours, envoy) {
        // A ratio of values that may be noise around zero says nothing.
        (Some(o), Some(e)) if matches!(goal, Goal::None) && (o <= 0.0 || e <= 0.0) => {
            ("-".into(), "-".into())
        }
        // Below the direct path: nothing measurable added (noise).
        (Some(o), Some(e)) if e > 0.0 && o <= 0.0 => {
            let met = match goal {
                Goal::AtMost(_) => "yes",
                Goal::AtLeast(_) => "**no**",
                Goal::None => "-",
            };
            ("≤ 0x".to_string(), met.to_string())
        }
        (Some(o), Some(e)) if e > 0.0 => {
            let r = o / e;
            let met = match goal {
                Goal::AtMost(t) if r <= t => "yes",
                Goal::AtLeast(t) if r >= t => "yes",
                Goal::None => "-",
                _ => "**no**",
            };
            (format!("{r:.2}x"), met.to_string())
        }
        (Some(_), Some(_)) => ("-".into(), "n/a (Envoy's value is not positive)".into()),
        _ => ("-".into(), "n/a (not measured)".into()),
    };
    let target = match goal {
        Goal::AtMost(t) => format!("≤ {t}x"),
        Goal::AtLeast(t) => format!("≥ {t}x"),
        Goal::None => "-".to_string(),
    };
    let _ = writeln!(
        md,
        "| {what} | {} | {} | {ratio} | {target} | {met} |",
        cell(ours),
        cell(envoy)
    );
}

/// The targets table (also printed at the end of a run).
pub fn summary(report: &Report) -> String {
    let mut md = String::new();
    let rate = report.params.rate;
    md.push_str(
        "| measure | mesh-proxy | Envoy | ratio | target | met |\n|---|---:|---:|---:|---:|---|\n",
    );
    let ours = report.target(Kind::Ours);
    let envoy = report.target(Kind::Envoy);
    for protocol in Protocol::ALL {
        let added = |k: Kind| report.added(k, protocol).map(|a| a[2]);
        target_row(
            &mut md,
            &format!("added p99 latency, {} at {rate:.0} req/s", protocol.name()),
            added(Kind::Ours),
            added(Kind::Envoy),
            " µs",
            Goal::AtMost(ADDED_P99_MAX_RATIO),
        );
    }
    for protocol in Protocol::ALL {
        let cpu = |t: Option<&TargetResult>| t?.latency[protocol.index()].cpu_ms_per_1k();
        target_row(
            &mut md,
            &format!(
                "CPU per 1,000 requests, {} at {rate:.0} req/s",
                protocol.name()
            ),
            cpu(ours),
            cpu(envoy),
            " ms",
            Goal::AtMost(CPU_MAX_RATIO),
        );
    }
    for protocol in Protocol::ALL {
        let rps = |t: Option<&TargetResult>| t?.throughput[protocol.index()].mean_rate();
        target_row(
            &mut md,
            &format!("maximum req/s, {}, 1 worker", protocol.name()),
            rps(ours),
            rps(envoy),
            "",
            Goal::AtLeast(THROUGHPUT_MIN_RATIO),
        );
    }
    let mem = |t: Option<&TargetResult>, f: fn(&TargetResult) -> Option<u64>| {
        t.and_then(f).map(|kb| kb as f64 / 1024.0)
    };
    target_row(
        &mut md,
        "RSS idle (configured, before load)",
        mem(ours, |t| t.idle.map(|m| m.rss_kb)),
        mem(envoy, |t| t.idle.map(|m| m.rss_kb)),
        " MB",
        Goal::AtMost(RSS_MAX_RATIO),
    );
    target_row(
        &mut md,
        "RSS under load (peak, VmHWM)",
        mem(ours, |t| t.after.map(|m| m.hwm_kb)),
        mem(envoy, |t| t.after.map(|m| m.hwm_kb)),
        " MB",
        Goal::AtMost(RSS_MAX_RATIO),
    );
    md
}

/// What a data-plane report says about where and how it ran.
pub(crate) struct RunInfo<'a> {
    pub machine: &'a super::Machine,
    /// `/proc/loadavg` before and after.
    pub load_avg: &'a (String, String),
    pub pinning: &'a Result<super::procfs::Pinning, String>,
    /// What the pinned CPU runs, for the placement row.
    pub pinned: &'a str,
    pub source: &'a str,
    pub wall: std::time::Duration,
}

/// The `## Machine` table: the machine, load, CPU placement, the binaries'
/// versions (`(name, version)`), the source and the run time.
pub(crate) fn machine_table(md: &mut String, run: &RunInfo<'_>, versions: &[(&str, String)]) {
    md.push_str("## Machine\n\n| | |\n|---|---|\n");
    md.push_str(&run.machine.markdown_rows());
    let _ = writeln!(
        md,
        "| load average before / after (1, 5, 15 min) | {} / {} |",
        run.load_avg.0, run.load_avg.1
    );
    let _ = writeln!(
        md,
        "| CPU placement | {} |",
        match run.pinning {
            Ok(p) => p.describe_as(run.pinned),
            Err(why) =>
                format!("not pinned: {why}; proxies, load generator and backend share every CPU"),
        }
    );
    for (name, version) in versions {
        let _ = writeln!(md, "| {name} | {version} |");
    }
    let _ = writeln!(md, "| source | {} |", run.source);
    let _ = writeln!(
        md,
        "| run time | {:.1} min |",
        run.wall.as_secs_f64() / 60.0
    );
}

/// The latency cells of `series`: p50, p90, p99, p99.9 and max joined by
/// ` | ` (`-` each when it has no answers).
pub(crate) fn quantile_cells(series: &Series) -> String {
    let cells: Vec<String> = match series.quantiles() {
        Some(q) => q
            .reported()
            .iter()
            .map(|&d| us(d))
            .chain([us(q.max)])
            .collect(),
        None => vec!["-".into(); 5],
    };
    cells.join(" | ")
}

/// The cells of a closed-loop series: mean rate, rate per round, proxy,
/// bench and other CPU busy, p50, p99, errors, proxy CPU per 1,000.
pub(crate) fn closed_loop_cells(s: &Series) -> String {
    let q = s.quantiles();
    let rounds: Vec<String> = s.rates().iter().map(|r| format!("{r:.0}")).collect();
    [
        opt(s.mean_rate(), |r| format!("{r:.0}")),
        rounds.join(", "),
        opt(s.proxy_busy(), |b| format!("{b:.0}%")),
        opt(s.bench_busy(), |b| format!("{b:.0}%")),
        opt(s.other_busy(), |b| format!("{b:.0}%")),
        opt(q, |q| us(q.p50)),
        opt(q, |q| us(q.p99)),
        s.errors().to_string(),
        opt(s.cpu_ms_per_1k(), |v| format!("{v:.2} ms")),
    ]
    .join(" | ")
}

/// The markdown report (`docs/benchmarks/proxy.md`).
pub fn markdown(report: &Report) -> String {
    let p = &report.params;
    let mut md = String::new();
    md.push_str("# Proxy benchmarks\n\n");
    md.push_str(
        "Written by `cargo run --release -p e2e --bin mesh-bench -- proxy`; rerun it rather \
         than editing this file. What is measured, and how, is described in \
         `e2e/src/bench/proxy/mod.rs`.\n\n",
    );
    let versions: Vec<(&str, String)> = [Kind::Ours, Kind::Envoy]
        .into_iter()
        .map(|kind| {
            let version = match report.target(kind) {
                Some(t) => t.version.clone().unwrap_or_default(),
                None => format!(
                    "not run: {}",
                    report.envoy_skipped.as_deref().unwrap_or("-")
                ),
            };
            (kind.name(), version)
        })
        .collect();
    machine_table(
        &mut md,
        &RunInfo {
            machine: &report.machine,
            load_avg: &report.load_avg,
            pinning: &report.pinning,
            pinned: "proxy under test",
            source: &report.source,
            wall: report.wall,
        },
        &versions,
    );

    let _ = write!(
        md,
        "\n## Parameters\n\n| | |\n|---|---|\n\
         | configuration | one VirtualService (host `bench.local`) routing to one Service (`bench-backend.bench`, port 8080 named `http`) with one endpoint, the backend on 127.0.0.1; a DestinationRule with TLS off; two Gateways on different loopback ports, one selecting each proxy |\n\
         | proxies | both `router` role (gateways), configured over ADS (state of the world) by mesh-control's `AdsServer` running in the bench process; one worker each (`envoy --concurrency 1`, `mesh-proxy run --concurrency 1`), log level warn; both running during the whole run |\n\
         | backend | hyper HTTP/1.1 + h2c server in the bench process answering a fixed 64-byte body; both proxies speak HTTP/1.1 to it (Istio's choice for a port named `http`) |\n\
         | load generator | hyper client in the bench process on its own tokio runtime ({} worker thread(s)); TCP_NODELAY everywhere |\n\
         | fixed rate | {:.0} req/s open loop, latency from each request's scheduled send time (no coordinated omission; the schedule is kept by a dedicated thread); HTTP/1.1: {} keep-alive connections sharing one queue; HTTP/2: 1 connection, one stream per request |\n\
         | throughput | closed loop; HTTP/1.1: {} keep-alive connections, one request in flight each; HTTP/2: {} connection(s) x {} streams in flight |\n\
         | windows | {:.1} s measured after {:.1} s of warm-up traffic; {} round(s) per target, protocol and phase; the order of the targets rotates every round |\n\
         | CPU | `utime + stime` of the proxy process (all threads) from `/proc/<pid>/stat` at the window's edges, divided by the answers in the window (tick: {:.0} ms, so short runs are coarse) |\n\
         | memory | `VmRSS` idle (configured, serving, 1 s after the readiness checks, before any load); highest `VmRSS` sampled every 200 ms under load; `VmHWM` at the end of the run |\n",
        p.load_threads,
        p.rate,
        p.open_connections,
        p.h1_connections,
        p.h2_connections,
        p.h2_streams,
        p.duration.as_secs_f64(),
        p.warmup.as_secs_f64(),
        p.rounds,
        1000.0 / super::procfs::ticks_per_second() as f64,
    );
    md.push_str(if p.telemetry {
        "| telemetry | a second mesh-proxy and a second Envoy on two more Gateways, tracing every request \
         (root-namespace Telemetry selecting them, `opentelemetry` provider, 100 % sampling) over OTLP/gRPC to a \
         collector in the bench, scraped at `/stats/prometheus` every second; in the fixed-rate phase only, \
         rotating with the other targets |\n"
    } else {
        "| telemetry | not measured (`--no-telemetry`) |\n"
    });

    md.push_str("\n## Targets (mesh-proxy / Envoy, same run)\n\n");
    md.push_str(&summary(report));
    md.push_str(
        "\nAdded latency: the proxy's percentile minus the direct path's percentile, both at the fixed rate, \
         samples of all rounds pooled. A negative value means the difference is below this run's noise \
         (the tails of all three paths come mostly from scheduling on a shared machine).\n",
    );

    let _ = write!(
        md,
        "\n## Latency at {:.0} req/s\n\n\
         | protocol | target | p50 | p90 | p99 | p99.9 | max | answers | errors | proxy CPU per 1,000 req | other CPU |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        p.rate
    );
    for protocol in Protocol::ALL {
        let i = protocol.index();
        for t in &report.targets {
            let s = &t.latency[i];
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} |",
                protocol.name(),
                t.kind.name(),
                quantile_cells(s),
                s.ok(),
                s.errors(),
                opt(s.cpu_ms_per_1k(), |v| format!("{v:.1} ms")),
                opt(s.other_busy(), |b| format!("{b:.0}%")),
            );
        }
        let twins = report.telemetry.iter().flat_map(|t| &t.targets);
        for t in twins.clone() {
            let s = &t.latency[i];
            let _ = writeln!(
                md,
                "| {} | {}+telemetry | {} | {} | {} | {} | {} |",
                protocol.name(),
                t.kind.name(),
                quantile_cells(s),
                s.ok(),
                s.errors(),
                opt(s.cpu_ms_per_1k(), |v| format!("{v:.1} ms")),
                opt(s.other_busy(), |b| format!("{b:.0}%")),
            );
        }
        for kind in [Kind::Ours, Kind::Envoy] {
            if let Some(a) = report.added(kind, protocol) {
                let cells: Vec<String> = a.iter().map(|&v| signed_us(v)).collect();
                let _ = writeln!(
                    md,
                    "| {} | added by {} | {} | | | | |",
                    protocol.name(),
                    kind.name(),
                    cells.join(" | ")
                );
            }
        }
        let direct = report.target(Kind::Direct).map(|d| &d.latency[i]);
        for t in twins {
            if let Some(a) = direct.and_then(|d| added_us(&t.latency[i], d)) {
                let cells: Vec<String> = a.iter().map(|&v| signed_us(v)).collect();
                let _ = writeln!(
                    md,
                    "| {} | added by {}+telemetry | {} | | | | |",
                    protocol.name(),
                    t.kind.name(),
                    cells.join(" | ")
                );
            }
        }
    }

    md.push_str(
        "\n## Maximum rate (closed loop, 1 worker)\n\n\
         | protocol | target | mean req/s | per round | proxy CPU busy | bench CPU busy | other CPU | p50 | p99 | errors | proxy CPU per 1,000 req |\n\
         |---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for protocol in Protocol::ALL {
        for t in &report.targets {
            let _ = writeln!(
                md,
                "| {} | {} | {} |",
                protocol.name(),
                t.kind.name(),
                closed_loop_cells(&t.throughput[protocol.index()]),
            );
        }
    }
    md.push_str(
        "\n`proxy CPU busy`: the proxy's CPU time over the windows' wall time (100% = its one CPU). \
         `bench CPU busy`: the same for the bench process (load generator, backend, control plane), \
         whose CPUs are the others. `other CPU`: busy time of everything else on the machine \
         (`/proc/stat` minus the two above: other processes, the idle proxy, the kernel, hypervisor steal), \
         in % of one CPU; on a quiet machine it stays near 0. The `direct` row is the load generator and backend alone: \
         the most this bench can drive.\n",
    );

    telemetry_markdown(&mut md, report);

    md.push_str(
        "\n## Memory\n\n| target | idle VmRSS | under load VmRSS (max sampled) | peak VmHWM | start to admin /ready |\n|---|---:|---:|---:|---:|\n",
    );
    let twins = report.telemetry.iter().flat_map(|t| &t.targets);
    let rows = report
        .targets
        .iter()
        .filter(|t| t.kind != Kind::Direct)
        .map(|t| (t, ""))
        .chain(twins.map(|t| (t, "+telemetry")));
    for (t, suffix) in rows {
        let _ = writeln!(
            md,
            "| {}{suffix} | {} | {} | {} | {} |",
            t.kind.name(),
            opt(t.idle, |m| mb(m.rss_kb)),
            mb(t.rss_load_kb()),
            opt(t.after, |m| mb(m.hwm_kb)),
            opt(t.ready_in, |d| format!(
                "{:.0} ms",
                d.as_secs_f64() * 1000.0
            )),
        );
    }

    let notes = notes(report);
    if !notes.is_empty() {
        md.push_str("\n## Notes on this run\n\n");
        for n in notes {
            let _ = writeln!(md, "- {n}");
        }
    }
    md.push_str("\n![Added latency and maximum rate, mesh-proxy and Envoy](proxy.png)\n");
    md
}

/// Added p99 (µs) of `t`'s fixed-rate `protocol` series over the direct path.
fn added_p99(report: &Report, t: Option<&TargetResult>, protocol: Protocol) -> Option<f64> {
    let i = protocol.index();
    let direct = &report.target(Kind::Direct)?.latency[i];
    added_us(&t?.latency[i], direct).map(|a| a[2])
}

/// Proxy CPU per 1,000 answers of `t`'s fixed-rate `protocol` series.
fn cpu_1k(t: Option<&TargetResult>, protocol: Protocol) -> Option<f64> {
    t?.latency[protocol.index()].cpu_ms_per_1k()
}

/// The targets with telemetry on (ratios mesh-proxy / Envoy, both
/// tracing and scraped), and what telemetry costs each per request; `None`
/// when the telemetry phase did not run.
pub fn telemetry_summary(report: &Report) -> Option<String> {
    let tel = report.telemetry.as_ref()?;
    let rate = report.params.rate;
    let mut md = String::new();
    md.push_str(
        "| measure, telemetry on | mesh-proxy | Envoy | ratio | target | met |\n|---|---:|---:|---:|---:|---|\n",
    );
    for protocol in Protocol::ALL {
        target_row(
            &mut md,
            &format!("added p99 latency, {} at {rate:.0} req/s", protocol.name()),
            added_p99(report, tel.target(Kind::Ours), protocol),
            added_p99(report, tel.target(Kind::Envoy), protocol),
            " µs",
            Goal::AtMost(ADDED_P99_MAX_RATIO),
        );
    }
    for protocol in Protocol::ALL {
        target_row(
            &mut md,
            &format!(
                "CPU per 1,000 requests, {} at {rate:.0} req/s",
                protocol.name()
            ),
            cpu_1k(tel.target(Kind::Ours), protocol),
            cpu_1k(tel.target(Kind::Envoy), protocol),
            " ms",
            Goal::AtMost(CPU_MAX_RATIO),
        );
    }
    for protocol in Protocol::ALL {
        let cost =
            |k: Kind| Some(cpu_1k(tel.target(k), protocol)? - cpu_1k(report.target(k), protocol)?);
        target_row(
            &mut md,
            &format!(
                "telemetry's CPU per 1,000 requests (on minus off), {}",
                protocol.name()
            ),
            cost(Kind::Ours),
            cost(Kind::Envoy),
            " ms",
            Goal::None,
        );
    }
    Some(md)
}

/// The per-proxy table: CPU per 1,000 requests and added p99 without and
/// with telemetry, and the difference.
fn telemetry_cost_table(report: &Report, tel: &TelemetryReport) -> String {
    let mut md = String::from(
        "| protocol | proxy | CPU per 1,000 req, off | on | telemetry's CPU per 1,000 req | per request | added p99, off | on | difference |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for protocol in Protocol::ALL {
        for kind in [Kind::Ours, Kind::Envoy] {
            let (off, on) = (report.target(kind), tel.target(kind));
            if on.is_none() {
                continue;
            }
            let (cpu_off, cpu_on) = (cpu_1k(off, protocol), cpu_1k(on, protocol));
            let cost = cpu_off.zip(cpu_on).map(|(a, b)| b - a);
            let (p99_off, p99_on) = (
                added_p99(report, off, protocol),
                added_p99(report, on, protocol),
            );
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                protocol.name(),
                kind.name(),
                opt(cpu_off, |v| format!("{v:.1} ms")),
                opt(cpu_on, |v| format!("{v:.1} ms")),
                opt(cost, |v| format!("{v:+.1} ms")),
                // ms per 1,000 requests is µs per request.
                opt(cost, |v| format!("{v:+.0} µs")),
                opt(p99_off, signed_us),
                opt(p99_on, signed_us),
                opt(p99_off.zip(p99_on), |(a, b)| signed_us(b - a)),
            );
        }
    }
    md
}

/// The spans the collector got and the scrapes, per telemetry proxy.
fn telemetry_export_table(tel: &TelemetryReport) -> String {
    let mut md = String::from(
        "| proxy | spans received | export calls | spans per measured answer | scrapes ok / failed | scrape size |\n\
         |---|---:|---:|---:|---:|---:|\n",
    );
    for t in &tel.targets {
        let c = tel.spans_of(t.kind);
        let answered: u64 = t.latency.iter().map(Series::ok).sum();
        let scrapes = tel
            .scrapes
            .iter()
            .find(|(k, _)| *k == t.kind)
            .map(|(_, s)| *s)
            .unwrap_or_default();
        let spans = if c.spans == 0 {
            "**0 (no tracing measured)**".to_string()
        } else {
            c.spans.to_string()
        };
        let _ = writeln!(
            md,
            "| {} | {spans} | {} | {} | {} / {} | {:.0} kB |",
            t.kind.name(),
            c.exports,
            if answered > 0 {
                format!("{:.2}", c.spans as f64 / answered as f64)
            } else {
                "-".into()
            },
            scrapes.ok,
            scrapes.failed,
            scrapes.mean_bytes as f64 / 1000.0,
        );
    }
    md
}

/// What qualifies the telemetry numbers.
fn telemetry_notes(report: &Report) -> Vec<String> {
    let Some(tel) = &report.telemetry else {
        return Vec::new();
    };
    let mut notes = Vec::new();
    for t in &tel.targets {
        let c = tel.spans_of(t.kind);
        let answered: u64 = t.latency.iter().map(Series::ok).sum();
        if c.spans == 0 {
            notes.push(format!(
                "**{}+telemetry exported no spans to the collector: its telemetry numbers measure no tracing, the comparison is meaningless**",
                t.kind.name()
            ));
        } else if c.spans < answered {
            notes.push(format!(
                "{}+telemetry exported {} spans for {answered} measured answers: it dropped spans (less work than tracing every request)",
                t.kind.name(),
                c.spans
            ));
        }
        for (phase, series) in [("fixed rate", &t.latency)] {
            for protocol in Protocol::ALL {
                let s = &series[protocol.index()];
                if s.errors() > 0 {
                    notes.push(format!(
                        "{}+telemetry {} {phase}: {} errors (first: {})",
                        t.kind.name(),
                        protocol.name(),
                        s.errors(),
                        s.first_error().unwrap_or("-")
                    ));
                }
            }
        }
    }
    if let Some((kind, s)) = tel.scrapes.iter().find(|(_, s)| s.failed > 0) {
        notes.push(format!(
            "{} scrapes of {}+telemetry's `{}` failed",
            s.failed,
            kind.name(),
            telemetry::PROMETHEUS_PATH
        ));
    }
    notes
}

/// The telemetry part of the markdown report.
fn telemetry_markdown(md: &mut String, report: &Report) {
    let Some(tel) = &report.telemetry else {
        md.push_str("\n## Telemetry overhead\n\nNot measured in this run (`--no-telemetry`).\n");
        return;
    };
    let _ = write!(
        md,
        "\n## Telemetry overhead (metrics plus tracing)\n\n\
         A second mesh-proxy and a second Envoy, identical to the first pair but for their labels, \
         selected by a Telemetry resource in the root namespace (`tracing: [{{providers: [{{name: {}}}], \
         randomSamplingPercentage: {}}}]`, the provider an `opentelemetry` extension provider of MeshConfig \
         whose Service is an OTLP/gRPC collector in the bench counting spans). Both export with their \
         defaults (Envoy: a gRPC export every 5 spans or 5 s; mesh-proxy: the OpenTelemetry SDK's batch processor, \
         batches of up to 512 spans, see `export calls`). \
         Both always record metrics (mesh-proxy Istio's standard metrics, Envoy its own stats; stock Envoy has no Istio \
         stats filter); the telemetry pair is also scraped at `{}` once a second during its windows. \
         Their fixed-rate windows rotate with the other targets'; *off* is the plain proxy of the same run.\n\n",
        telemetry::PROVIDER,
        telemetry::SAMPLING,
        telemetry::PROMETHEUS_PATH,
    );
    md.push_str(&telemetry_summary(report).unwrap_or_default());
    md.push('\n');
    md.push_str(&telemetry_cost_table(report, tel));
    md.push_str("\nSpans and scrapes (warm-up traffic is traced too, readiness checks are not counted; each request through a gateway makes a server span and an upstream client span):\n\n");
    md.push_str(&telemetry_export_table(tel));
    md.push_str(
        "\nThe latency rows per percentile of the telemetry pair are in the latency table above \
         (`+telemetry` rows).\n",
    );
}

/// First line of the proxy section of `docs/benchmarks.md`.
pub const SECTION_BEGIN: &str = "<!-- mesh-bench proxy: begin -->";
/// Last line of the proxy section of `docs/benchmarks.md`.
pub const SECTION_END: &str = "<!-- mesh-bench proxy: end -->";

/// The proxy section of `docs/benchmarks.md`: this run's targets table
/// and where the full report is.
pub fn section(report: &Report) -> String {
    let envoy = report
        .target(Kind::Envoy)
        .and_then(|t| t.version.clone())
        .map(|v| format!("Envoy {v}"))
        .unwrap_or_else(|| "no Envoy (not run)".into());
    let mut table = summary(report);
    if let (Some(tel), Some(t)) = (&report.telemetry, telemetry_summary(report)) {
        let _ = write!(
            table,
            "\n### Telemetry overhead\n\n\
             The same run, a second pair tracing every request (Telemetry in the root namespace, \
             `opentelemetry` provider, 100 % sampling, OTLP/gRPC to a collector in the bench) and scraped \
             at `/stats/prometheus` every second; metrics are always on in all four.\n\n{t}\n{}",
            telemetry_cost_table(report, tel)
        );
        let spans: Vec<String> = tel
            .targets
            .iter()
            .map(|t| format!("{} {}", t.kind.name(), tel.spans_of(t.kind).spans))
            .collect();
        let _ = writeln!(
            table,
            "\nSpans received by the collector: {}.",
            spans.join(", ")
        );
    }
    index_section(
        (SECTION_BEGIN, SECTION_END),
        (&report.machine, &report.source, &report.load_avg.0),
        &format!(
            "mesh-proxy against {envoy}, one worker each, the same one-hop configuration \
             from mesh-control, measured in alternating rounds. Full report with latency, \
             throughput, telemetry and memory tables: [proxy.md](benchmarks/proxy.md)."
        ),
        &table,
        &notes(report),
    )
}

/// A section of `docs/benchmarks.md` between `markers`: when and where
/// the run was (`(machine, source, load average before)`), `what` it
/// compared, its targets table and its notes.
pub(crate) fn index_section(
    markers: (&str, &str),
    run: (&super::Machine, &str, &str),
    what: &str,
    table: &str,
    notes: &[String],
) -> String {
    let (m, source, load_before) = run;
    let mut md = format!(
        "{}\nLast run {} on {} ({} CPUs, {} build of {source}, load average before the run \
         {load_before}): {what}\n\n{table}",
        markers.0, m.date, m.model, m.cpus, m.profile
    );
    if !notes.is_empty() {
        md.push('\n');
        for n in notes {
            let _ = writeln!(md, "- {n}");
        }
    }
    md.push_str(markers.1);
    md
}

/// Replaces the text between `SECTION_BEGIN` and `SECTION_END` of
/// `index` with `section`; `false` (file untouched) when the file or its
/// markers are missing.
pub fn update_index(index: &Path, section: &str) -> std::io::Result<bool> {
    replace_section(index, (SECTION_BEGIN, SECTION_END), section)
}

/// Replaces the text from `markers.0` to the end of `markers.1` in
/// `index` with `section` (which carries both markers again); `false`
/// (file untouched) when the file or its markers are missing.
pub(crate) fn replace_section(
    index: &Path,
    markers: (&str, &str),
    section: &str,
) -> std::io::Result<bool> {
    let (begin_marker, end_marker) = markers;
    let text = match std::fs::read_to_string(index) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let (Some(begin), Some(end)) = (text.find(begin_marker), text.find(end_marker)) else {
        return Ok(false);
    };
    if end < begin {
        return Ok(false);
    }
    let mut out = String::with_capacity(text.len() + section.len());
    out.push_str(&text[..begin]);
    out.push_str(section);
    out.push_str(&text[end + end_marker.len()..]);
    std::fs::write(index, out)?;
    Ok(true)
}

/// What limits or qualifies the numbers of this run.
fn notes(report: &Report) -> Vec<String> {
    let mut notes = telemetry_notes(report);
    if report.machine.profile != "release" {
        notes.push("debug build: the numbers are not comparable; rerun with --release".into());
    }
    let twins = report.telemetry.iter().flat_map(|t| &t.targets);
    notes.extend(other_work_note(
        report
            .targets
            .iter()
            .chain(twins)
            .flat_map(|t| t.latency.iter().chain(&t.throughput)),
        "the proxy under test",
    ));
    if let Some(why) = &report.envoy_skipped {
        notes.push(format!(
            "Envoy was not run ({why}): no ratio can be computed"
        ));
    }
    for protocol in Protocol::ALL {
        let direct = report
            .target(Kind::Direct)
            .and_then(|t| t.throughput[protocol.index()].mean_rate());
        for t in report.targets.iter().filter(|t| t.kind != Kind::Direct) {
            let s: &Series = &t.throughput[protocol.index()];
            let Some(busy) = s.proxy_busy().filter(|&b| b < SATURATED_PCT) else {
                continue;
            };
            let bench = s.bench_busy().unwrap_or(0.0);
            let why = if bench >= SATURATED_PCT {
                format!(
                    "the load generator and backend were the limit (their CPU {bench:.0}% busy; direct path: {} req/s), so its maximum rate is at least what is shown",
                    opt(direct, |d| format!("{d:.0}"))
                )
            } else {
                format!(
                    "the load generator was not the limit either (its CPU {bench:.0}% busy): other processes on the machine took the CPU time, or the proxy waited on something else"
                )
            };
            notes.push(format!(
                "{} over {} used {busy:.0}% of its CPU in the throughput phase, not saturated: {why}",
                t.kind.name(),
                protocol.name(),
            ));
        }
    }
    for t in &report.targets {
        for (phase, series) in [("fixed rate", &t.latency), ("throughput", &t.throughput)] {
            for protocol in Protocol::ALL {
                let s = &series[protocol.index()];
                if s.errors() > 0 {
                    notes.push(format!(
                        "{} {} {phase}: {} errors (first: {})",
                        t.kind.name(),
                        protocol.name(),
                        s.errors(),
                        s.first_error().unwrap_or("-")
                    ));
                }
            }
        }
    }
    notes
}

/// The note for windows in which something outside the bench and
/// `measured` used 10% of a CPU or more; `None` on a quiet machine.
pub(crate) fn other_work_note<'a>(
    series: impl Iterator<Item = &'a Series> + Clone,
    measured: &str,
) -> Option<String> {
    let max = series
        .clone()
        .filter_map(Series::other_busy)
        .reduce(f64::max)
        .filter(|&m| m >= 10.0)?;
    let steal = series
        .filter_map(Series::steal_busy)
        .reduce(f64::max)
        .filter(|&s| s >= 1.0)
        .map(|s| {
            format!(
                "; hypervisor steal, the CPU time the host gave other virtual machines, up to {s:.0}%"
            )
        })
        .unwrap_or_default();
    Some(format!(
        "other work ran during the measured windows (up to {max:.0}% of one CPU outside the bench and {measured}, see `other CPU`{steal}): the numbers are disturbed; rerun on a quiet machine"
    ))
}

/// Draws grouped bars: `groups` along x, one bar per series in each.
pub(crate) fn bars(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    title: &str,
    y_desc: &str,
    groups: &[String],
    series: &[(String, RGBColor, Vec<f64>)],
    labelled: bool,
) -> anyhow::Result<()> {
    let values = series.iter().flat_map(|s| s.2.iter().copied());
    let y_max = values.clone().fold(0.0f64, f64::max).max(1.0) * 1.15;
    let y_min = values.fold(0.0f64, f64::min) * 1.15;
    let n = groups.len().max(1);
    let mut builder = ChartBuilder::on(area);
    builder
        .margin(16)
        .x_label_area_size(if labelled { 40 } else { 8 })
        .y_label_area_size(if labelled { 70 } else { 8 });
    if labelled {
        builder.caption(title, ("sans-serif", 18));
    }
    let mut chart = builder.build_cartesian_2d(-0.5f64..(n as f64 - 0.5), y_min..y_max)?;
    let mut mesh = chart.configure_mesh();
    mesh.disable_x_mesh();
    if labelled {
        let names = groups.to_vec();
        let formatter = move |x: &f64| {
            let i = x.round();
            if (x - i).abs() < 0.01 && i >= 0.0 {
                names.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        };
        mesh.x_labels(n * 2 + 1)
            .x_label_formatter(&formatter)
            .y_desc(y_desc)
            .y_label_formatter(&|y| format!("{y:.0}"))
            .label_style(("sans-serif", 13))
            .draw()?;
    } else {
        mesh.x_labels(0).y_labels(0).draw()?;
    }
    let width = 0.8 / series.len().max(1) as f64;
    for (k, (name, color, vals)) in series.iter().enumerate() {
        let color = *color;
        let drawn = chart.draw_series(vals.iter().enumerate().map(|(g, &v)| {
            let x0 = g as f64 - 0.4 + k as f64 * width;
            Rectangle::new([(x0, 0.0), (x0 + width * 0.9, v)], color.filled())
        }))?;
        if labelled {
            drawn.label(name.as_str()).legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
            });
        }
    }
    if labelled {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 12))
            .draw()?;
    }
    Ok(())
}

/// Plots added latency per percentile (left) and maximum rate (right),
/// mesh-proxy against Envoy, both protocols.
pub fn plot(report: &Report, path: &Path, labelled: bool) -> anyhow::Result<()> {
    let root = BitMapBackend::new(path, (1200, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, 2));
    let ours_colors = [RGBColor(31, 97, 180), RGBColor(120, 170, 230)];
    let envoy_colors = [RGBColor(200, 40, 40), RGBColor(240, 140, 130)];

    let mut latency = Vec::new();
    for protocol in Protocol::ALL {
        for (kind, colors) in [(Kind::Ours, ours_colors), (Kind::Envoy, envoy_colors)] {
            if let Some(a) = report.added(kind, protocol) {
                latency.push((
                    format!("{} {}", kind.name(), protocol.name()),
                    colors[protocol.index()],
                    a.to_vec(),
                ));
            }
        }
    }
    let groups: Vec<String> = REPORTED.iter().map(|s| s.to_string()).collect();
    bars(
        &panels[0],
        &format!(
            "Added latency over direct at {:.0} req/s",
            report.params.rate
        ),
        "added latency (µs)",
        &groups,
        &latency,
        labelled,
    )?;

    let mut rates = Vec::new();
    for (kind, color) in [
        (Kind::Direct, RGBColor(150, 150, 150)),
        (Kind::Ours, ours_colors[0]),
        (Kind::Envoy, envoy_colors[0]),
    ] {
        if let Some(t) = report.target(kind) {
            let vals = Protocol::ALL
                .iter()
                .map(|p| t.throughput[p.index()].mean_rate().unwrap_or(0.0))
                .collect();
            let name = if kind == Kind::Direct {
                "direct (load generator limit)".to_string()
            } else {
                kind.name().to_string()
            };
            rates.push((name, color, vals));
        }
    }
    let groups: Vec<String> = Protocol::ALL.iter().map(|p| p.name().to_string()).collect();
    bars(
        &panels[1],
        "Maximum rate, 1 worker (closed loop)",
        "requests per second",
        &groups,
        &rates,
        labelled,
    )?;
    root.present()?;
    Ok(())
}
