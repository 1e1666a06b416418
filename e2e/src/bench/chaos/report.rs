//! The chaos run as text: the side-by-side table printed at the end and
//! written to `docs/benchmarks/chaos.md` with the per-second timelines,
//! and its section in `docs/benchmarks.md`.

use std::fmt::Write as _;
use std::path::Path;

use super::{Figures, FlagChange, KILLED, PlaneRun, Report};
use crate::bench::ms;
use crate::bench::proxy::report::{index_section, replace_section};
use crate::bench::proxy::subject::Kind;

const SECTION_BEGIN: &str = "<!-- mesh-bench chaos: begin -->";
const SECTION_END: &str = "<!-- mesh-bench chaos: end -->";

/// Seconds, signed, one decimal.
fn s(v: f64) -> String {
    format!("{v:.1} s")
}

/// Milliseconds of a seconds value.
fn ms_of(v: f64) -> String {
    format!("{:.0} ms", v * 1000.0)
}

fn p(
    f: &Figures,
    pick: impl Fn(&crate::bench::proxy::load::Quantiles) -> std::time::Duration,
) -> String {
    f.quantiles
        .as_ref()
        .map(|q| ms(pick(q)))
        .unwrap_or_else(|| "-".into())
}

/// The rows of one data plane, in [`ROWS`] order.
fn cells(run: &PlaneRun, report: &Report) -> Vec<String> {
    let params = &report.params;
    let (kill, restart) = (
        params.kill_at.as_secs_f64(),
        params.restart_at.as_secs_f64(),
    );
    let event_end = kill + params.event.as_secs_f64();
    let end = params.duration.as_secs_f64();
    let all = run.figures(0.0, end);
    let before = run.figures(0.0, kill);
    let event = run.figures(kill, event_end);
    let after = run.figures(event_end, end);
    let restarted = run.restarted();
    let after_restart = |v: Option<f64>| {
        v.map(|t| format!("{} after the restart", ms_of(t - restart)))
            .unwrap_or_else(|| "never".into())
    };
    // The killed endpoint's share once back: from its first answer's
    // second on (skipping that second) to the end.
    let share = restarted
        .and_then(|l| l.first_answer)
        .map(|t| t.floor() as usize + 1)
        .filter(|&from| from < run.per_second.len())
        .map(|from| {
            let bins = &run.per_second[from..];
            let mine: u64 = bins.iter().map(|b| b[KILLED]).sum();
            let total: u64 = bins.iter().map(|b| b.iter().sum::<u64>()).sum();
            format!(
                "{:.0}% (from {} s)",
                100.0 * mine as f64 / total.max(1) as f64,
                from
            )
        })
        .unwrap_or_else(|| "-".into());
    vec![
        all.sent.to_string(),
        bold_unless_zero(all.errors),
        bold_unless_zero(event.errors),
        p(&all, |q| q.p99),
        p(&before, |q| q.p99),
        p(&event, |q| q.p99),
        p(&event, |q| q.max),
        p(&after, |q| q.p99),
        run.ejected
            .as_ref()
            .map(|c| format!("{} after the kill", between(c, kill, ms_of)))
            .unwrap_or_else(|| "never".into()),
        run.returned
            .as_ref()
            .map(|c| format!("{} after the restart", between(c, restart, s)))
            .unwrap_or_else(|| "-".into()),
        after_restart(restarted.and_then(|l| l.listening)),
        after_restart(restarted.and_then(|l| l.first_answer)),
        share,
    ]
}

/// When `change` happened relative to `from`: between the two reads
/// that bracket it (`a-b unit`).
fn between(change: &FlagChange, from: f64, unit: fn(f64) -> String) -> String {
    match change.before {
        Some(b) => {
            let first = unit(b - from);
            let number = first.split(' ').next().unwrap_or(&first).to_string();
            format!("{number}-{}", unit(change.seen - from))
        }
        None => format!("by {}", unit(change.seen - from)),
    }
}

fn bold_unless_zero(n: u64) -> String {
    if n == 0 {
        "0".into()
    } else {
        format!("**{n}**")
    }
}

/// Names of [`cells`]' rows.
fn rows(report: &Report) -> [String; 13] {
    let p = &report.params;
    let kill = p.kill_at.as_secs_f64();
    let event = format!("{}..{}", s(kill), s(kill + p.event.as_secs_f64()));
    [
        format!(
            "requests sent ({:.0} req/s for {})",
            p.rate,
            s(p.duration.as_secs_f64())
        ),
        "client-visible errors, whole run (target 0)".into(),
        format!("client-visible errors, event window {event}"),
        "p99 latency, whole run".into(),
        format!("p99 latency, before the kill (0..{})", s(kill)),
        format!("p99 latency, event window {event}"),
        format!("max latency, event window {event}"),
        "p99 latency, after the event window".into(),
        "killed host seen ejected (`/failed_outlier_check` in `/clusters`)".into(),
        "ejection seen lifted".into(),
        "restarted process accepting connections".into(),
        "restarted process's first proxied request (back in rotation)".into(),
        "restarted endpoint's share of answers once back (1/3 = 33%)".into(),
    ]
}

/// The side-by-side table: one row per figure, one column per data plane.
pub fn summary(report: &Report) -> String {
    let mut md = String::from("| measure |");
    for run in &report.runs {
        let _ = write!(md, " {} |", run.kind.name());
    }
    md.push_str("\n|---|");
    md.push_str(&"---:|".repeat(report.runs.len()));
    md.push('\n');
    let columns: Vec<Vec<String>> = report.runs.iter().map(|r| cells(r, report)).collect();
    for (i, name) in rows(report).iter().enumerate() {
        let _ = write!(md, "| {name} |");
        for c in &columns {
            let _ = write!(md, " {} |", c[i]);
        }
        md.push('\n');
    }
    md
}

/// Whether the run of `kind` saw the host ejected, as a sentence.
fn ejection_sentence(report: &Report, kind: Kind) -> Option<String> {
    let run = report.runs.iter().find(|r| r.kind == kind)?;
    Some(match run.ejected {
        Some(_) => format!(
            "{} ejected the killed host (outlier detection acted)",
            kind.name()
        ),
        None => format!(
            "{} never showed the killed host ejected in {} reads of `/clusters`: no outlier \
             detection acted in this build; its retries alone dealt with the dead host, which \
             stayed in rotation (and was retried around) until it was back",
            kind.name(),
            run.polls
        ),
    })
}

/// `docs/benchmarks/chaos.md`.
pub fn markdown(report: &Report) -> String {
    let p = &report.params;
    let mut md = String::from("# Chaos: one endpoint killed and restarted under load\n\n");
    let _ = writeln!(
        md,
        "Generated by `mesh-bench chaos`; do not edit by hand. Command:\n\n```sh\n{}\n```\n",
        p.command
    );
    let _ = writeln!(
        md,
        "A Service with three endpoints, each a `mesh-echo` process (127.0.40.1-3, one Pod \
         each), behind a gateway configured over ADS by the release `mesh-control` serving a \
         config directory. HTTP/1.1 keep-alive requests at a fixed {:.0} req/s (open loop, \
         latency from each request's scheduled send time) for {}; at {} the process of \
         `backend-{KILLED}` gets SIGKILL (`kill -9` by PID), at {} a new process starts on the \
         same address. The Pods do not change: the endpoint stays in EDS, as in Kubernetes \
         until the kubelet notices, so what is measured is the proxy's own reaction. Each data \
         plane runs alone, mesh-proxy first, then a stock Envoy, against the same endpoints and \
         the same control plane.\n",
        p.rate,
        s(p.duration.as_secs_f64()),
        s(p.kill_at.as_secs_f64()),
        s(p.restart_at.as_secs_f64())
    );
    md.push_str(
        "Traffic policy (the config directory's VirtualService and DestinationRule):\n\n```yaml\n",
    );
    let _ = writeln!(
        md,
        "retries: {{attempts: {}, retryOn: \"{}\"}}   # Istio's default policy, written out",
        super::mesh::RETRY_ATTEMPTS,
        super::mesh::RETRY_ON
    );
    let _ = writeln!(md, "{}\n```\n", p.outlier.yaml());
    md.push_str(
        "The retry policy is what Istio (and mesh-control) send for a route without \
         `retries`: 2 attempts on connect failure, refused stream, `unavailable`, `cancelled` and \
         503, another host each time (`previous_hosts`). The outlier detection is the shape of \
         Istio's circuit-breaking task (`interval: 1s`, `maxEjectionPercent: 100`, so a \
         three-host service may lose one) with `consecutive5xxErrors` at its API default of 5 \
         and a `baseEjectionTime` that keeps the host out through the outage but brings it \
         back within the run (the task's 3m would not). A refused connection counts as a 5xx \
         for outlier detection (`splitExternalLocalOriginErrors` off, Istio's default).\n\n",
    );
    md.push_str("## Results\n\n");
    md.push_str(&summary(report));
    md.push_str(
        "\n![p99 latency per segment and the killed endpoint's answers per second](chaos.png)\n\n",
    );
    for n in notes(report) {
        let _ = writeln!(md, "- {n}");
    }
    md.push('\n');
    md.push_str("## Machine\n\n| | |\n|---|---|\n");
    md.push_str(&report.machine.markdown_rows());
    let _ = writeln!(
        md,
        "| load average before / after (1, 5, 15 min) | {} / {} |",
        report.load_avg.0, report.load_avg.1
    );
    let _ = writeln!(md, "| mesh-control | {} |", report.control_version);
    for run in &report.runs {
        let _ = writeln!(md, "| {} | {} |", run.kind.name(), run.version);
    }
    let _ = writeln!(md, "| source | {} |", report.source);
    let _ = writeln!(
        md,
        "| load generator | {} HTTP/1.1 connections per segment, {} worker thread(s), not pinned: proxy, endpoints, control plane and load share every CPU |",
        p.connections, p.load_threads
    );
    let _ = writeln!(
        md,
        "| run time | {:.1} min |\n",
        report.wall.as_secs_f64() / 60.0
    );
    for (kind, why) in &report.skipped {
        let _ = writeln!(md, "{} was not run: {why}.\n", kind.name());
    }

    for run in &report.runs {
        timeline(&mut md, run);
    }
    md
}

/// The per-segment table and the health-flag changes of one run.
fn timeline(md: &mut String, run: &PlaneRun) {
    let _ = writeln!(md, "## Timeline: {}\n", run.kind.name());
    let lives: Vec<String> = run
        .lives
        .iter()
        .map(|l| {
            let mut t = format!("PID {} spawned at {}", l.pid, s(l.spawned));
            if let Some(v) = l.listening {
                let _ = write!(t, ", accepting at {}", s(v));
            }
            if let Some(v) = l.first_answer {
                let _ = write!(t, ", first answer of the run at {}", s(v));
            }
            if let Some(v) = l.killed {
                let _ = write!(t, ", killed at {}", s(v));
            }
            t
        })
        .collect();
    let _ = writeln!(md, "backend-{KILLED}: {}.\n", lives.join("; "));
    let flags: Vec<String> = run
        .flags
        .iter()
        .map(|c| match c.before {
            Some(b) => format!("`{}` between {b:.2} s and {:.2} s", c.flags, c.seen),
            None => format!("`{}` at {:.2} s", c.flags, c.seen),
        })
        .collect();
    let _ = writeln!(
        md,
        "Its `health_flags` in the proxy's `/clusters` (read every {} ms, {} reads; each change \
         happened between the last read with the old flags and the first with the new, times \
         from the start of the run, negative before it): {}.\n",
        super::watch::POLL.as_millis(),
        run.polls,
        flags.join(", ")
    );
    md.push_str(
        "| from | to | sent | errors | p50 | p99 | max | backend-0 | backend-1 | backend-2 | first error |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for seg in &run.segments {
        let f = run.figures(seg.start, seg.end);
        // Answers per endpoint: the per-second bins this segment covers
        // (a segment shorter than a second shares its bin's count).
        let bin = run.per_second.get(seg.start.floor() as usize).copied();
        let per = |i: usize| bin.map(|b| b[i].to_string()).unwrap_or_else(|| "-".into());
        let whole_second = (seg.end - seg.start - 1.0).abs() < 1e-6;
        let _ = writeln!(
            md,
            "| {:.1} | {:.1} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            seg.start,
            seg.end,
            f.sent,
            bold_unless_zero(f.errors),
            p(&f, |q| q.p50),
            p(&f, |q| q.p99),
            p(&f, |q| q.max),
            if whole_second {
                per(0)
            } else {
                format!("({})", per(0))
            },
            if whole_second {
                per(1)
            } else {
                format!("({})", per(1))
            },
            if whole_second {
                per(2)
            } else {
                format!("({})", per(2))
            },
            f.first_error.as_deref().unwrap_or("")
        );
    }
    md.push_str(
        "\nbackend-N columns: answers the endpoint printed in that second of the run (retried \
         attempts included; in parentheses when the segment is shorter than the second and the \
         count is the whole second's).\n\n",
    );
}

/// What limits or qualifies the numbers.
fn notes(report: &Report) -> Vec<String> {
    let mut notes = Vec::new();
    if report.machine.profile != "release" {
        notes.push("debug build: the numbers are not comparable; rerun with --release".into());
    }
    notes.extend(
        [Kind::Ours, Kind::Envoy]
            .into_iter()
            .filter_map(|k| ejection_sentence(report, k)),
    );
    let event = report.params.event.as_secs_f64();
    notes.push(format!(
        "one run per data plane, one kill each: the error counts are exact for this run, but \
         the p99 of the {event:.0} s event window rests on its slowest ~{:.0} requests and moves \
         between runs; the machine is shared (load average {} before the run)",
        report.params.rate * event / 100.0,
        report.load_avg.0
    ));
    notes.push(format!(
        "ejection times come from reading `/clusters` every {} ms (each an interval that \
         long); the \
         endpoints' answer times are their log lines as the bench read them from a pipe (about \
         a millisecond late)",
        super::watch::POLL.as_millis()
    ));
    for (kind, why) in &report.skipped {
        notes.push(format!("{} was not run: {why}", kind.name()));
    }
    notes
}

/// The `docs/benchmarks.md` section.
pub fn section(report: &Report) -> String {
    let p = &report.params;
    let what = format!(
        "{:.0} req/s for {} through a gateway to a 3-endpoint Service, one endpoint's process \
         killed (SIGKILL) at {} and restarted at {}, Istio's default retries and outlier \
         detection (`consecutive5xxErrors: {}`, `interval: 1s`, `baseEjectionTime: {}`), \
         mesh-proxy then Envoy configured by the same mesh-control. Command: `{}`. Full report \
         with per-second timelines: [chaos.md](benchmarks/chaos.md).",
        p.rate,
        s(p.duration.as_secs_f64()),
        s(p.kill_at.as_secs_f64()),
        s(p.restart_at.as_secs_f64()),
        p.outlier.consecutive_5xx,
        super::mesh::secs(p.outlier.base_ejection),
        p.command
    );
    index_section(
        (SECTION_BEGIN, SECTION_END),
        (&report.machine, &report.source, &report.load_avg.0),
        &what,
        &summary(report),
        &notes(report),
    )
}

/// Replaces the chaos section of `index` with `section`; `false` when the
/// file or its markers are missing.
pub fn update_index(index: &Path, section: &str) -> std::io::Result<bool> {
    replace_section(index, (SECTION_BEGIN, SECTION_END), section)
}
