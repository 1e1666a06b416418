//! The `security` report: the targets table (mesh-proxy / Envoy in the
//! same run), latency with mTLS on both hops, full handshakes, the cost of
//! the policy, the checks made before measuring, and a plot. Cell formats,
//! the targets row, the machine table and the bars are the proxy report's.

use std::fmt::Write as _;
use std::path::Path as FsPath;

use plotters::prelude::*;

use super::mesh::{self, MATCHING_RULE, POLICY_RULES};
use super::{Path, Report};
use crate::bench::proxy::load::REPORTED;
use crate::bench::proxy::report::{
    Goal, RunInfo, bars, closed_loop_cells, index_section, machine_table, opt, other_work_note,
    quantile_cells, replace_section, signed_us, target_row,
};
use crate::bench::proxy::subject::Kind;
use crate::bench::proxy::{ADDED_P99_MAX_RATIO, CPU_MAX_RATIO, Series};

/// First line of the security section of `docs/benchmarks.md`.
pub const SECTION_BEGIN: &str = "<!-- mesh-bench security: begin -->";
/// Last line of the security section of `docs/benchmarks.md`.
pub const SECTION_END: &str = "<!-- mesh-bench security: end -->";

/// Below this share of its CPU the destination sidecar was not the limit
/// of the handshake phase.
const SATURATED_PCT: f64 = 90.0;

const DATA_PLANES: [Kind; 2] = [Kind::Ours, Kind::Envoy];

fn mesh_path(kind: Kind) -> Path {
    Path { kind, authz: false }
}

/// The targets table (also printed at the end of a run).
pub fn summary(report: &Report) -> String {
    let rate = report.params.rate;
    let mut md = String::from(
        "| measure | mesh-proxy | Envoy | ratio | target | met |\n|---|---:|---:|---:|---:|---|\n",
    );
    let mut row = |what: &str, f: &dyn Fn(Kind) -> Option<f64>, unit: &str, goal: Goal| {
        target_row(&mut md, what, f(Kind::Ours), f(Kind::Envoy), unit, goal);
    };
    row(
        &format!("added p99 latency, mTLS on both hops, HTTP/1.1 at {rate:.0} req/s"),
        &|k| report.added(mesh_path(k)).map(|a| a[2]),
        " µs",
        Goal::AtMost(ADDED_P99_MAX_RATIO),
    );
    row(
        "added p99 latency, the same, median of the rounds' p99",
        &|k| report.added_p99_median(mesh_path(k)),
        " µs",
        Goal::AtMost(ADDED_P99_MAX_RATIO),
    );
    row(
        &format!("CPU per 1,000 requests, both sidecars, at {rate:.0} req/s"),
        &|k| report.latency(mesh_path(k))?.cpu_ms_per_1k(),
        " ms",
        Goal::AtMost(CPU_MAX_RATIO),
    );
    row(
        "full mTLS handshakes per second (destination sidecar, 1 worker)",
        &|k| report.handshakes(k)?.mean_rate(),
        "",
        Goal::None,
    );
    row(
        "CPU per 1,000 full handshakes, destination sidecar",
        &|k| report.handshakes(k)?.cpu_ms_per_1k(),
        " ms",
        Goal::None,
    );
    let policy = format!("{POLICY_RULES}-rule AuthorizationPolicy");
    row(
        &format!("{policy}: added CPU per 1,000 requests"),
        &|k| report.policy_cpu_added(k),
        " ms",
        Goal::None,
    );
    row(
        &format!("{policy}: added p50 latency"),
        &|k| report.policy_added(k).map(|a| a[0]),
        " µs",
        Goal::None,
    );
    row(
        &format!("{policy}: added p99 latency"),
        &|k| report.policy_added(k).map(|a| a[2]),
        " µs",
        Goal::None,
    );
    md
}

/// The markdown report (`docs/benchmarks/security.md`).
pub fn markdown(report: &Report) -> String {
    let p = &report.params;
    let mut md = String::from("# Security benchmarks\n\n");
    md.push_str(
        "Written by `cargo run --release -p e2e --bin mesh-bench -- security` (as root); rerun \
         it rather than editing this file. What is measured, and how, is described in \
         `e2e/src/bench/security/mod.rs`.\n\n",
    );
    let versions: Vec<(&str, String)> = DATA_PLANES
        .iter()
        .map(|&kind| {
            let version = report
                .versions
                .iter()
                .find(|(k, _)| *k == kind)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| {
                    format!(
                        "not run: {}",
                        report.envoy_skipped.as_deref().unwrap_or("-")
                    )
                });
            (kind.name(), version)
        })
        .collect();
    machine_table(
        &mut md,
        &RunInfo {
            machine: &report.machine,
            load_avg: &report.load_avg,
            pinning: &report.pinning,
            pinned: "every sidecar (and Envoy's agents)",
            source: &report.source,
            wall: report.wall,
        },
        &versions,
    );

    let _ = write!(
        md,
        "\n## Parameters\n\n| | |\n|---|---|\n\
         | pods | network namespaces on one bridge (in a namespace of their own, nothing in the host's); per data plane a client pod, a server pod and a server pod behind the policy, each with Istio's capture (`mesh-proxy iptables`) and a sidecar running as UID 1337; two pods without sidecars for the direct path |\n\
         | control plane | mesh-control's `AdsServer` (plaintext ADS, state of the world) and embedded CA (`Secure`: `CreateCertificate` + ADS over TLS) in the bench process, on the bridge; every sidecar configured over ADS with role `sidecar`, its SVID (ECDSA P-256) issued by the CA for a token of its pod's service account |\n\
         | sidecars | one worker each (`envoy --concurrency 1`, `mesh-proxy run --concurrency 1`), log level warn; Envoy gets its certificate over SDS from `mesh-proxy agent` on a Unix socket (Istio's pilot-agent part), mesh-proxy fetches its own |\n\
         | security config | PeerAuthentication STRICT for the namespace; no DestinationRule (auto mTLS: the pods carry `security.istio.io/tlsMode: istio`); the policy pods have an ALLOW AuthorizationPolicy of {POLICY_RULES} rules (paths, notPaths, methods, hosts, ports, header conditions, principals, notPrincipals, namespaces, ipBlocks) of which a measured request matches only rule {MATCHING_RULE}, the one both data planes evaluate last (they check a filter's policies in name order, and `rule[{MATCHING_RULE}]` sorts after `rule[19]`) |\n\
         | applications | the bench's hyper backend (HTTP/1.1 + h2c, fixed 64-byte answer) on port {port} of each server pod; the sidecars speak HTTP/1.1 to it (port named `http`) |\n\
         | load generator | hyper HTTP/1.1 client on a tokio runtime whose threads joined the client pod's namespace ({} worker thread(s)): it calls the Service VIP, so its connection is captured by the client sidecar as an application's is; `GET {path}` with the Service's host name |\n\
         | fixed rate | {:.0} req/s open loop, latency from each request's scheduled send time (no coordinated omission); {} keep-alive connections from the application; the sidecars pool their mTLS connections between themselves |\n\
         | handshakes | the bench's own mesh client (SVID `{probe}`, Istio SNI, ALPN `istio`, session resumption disabled and every handshake checked to be full) from the direct client pod straight to the server pod's address (captured into the server sidecar's inbound), a new TCP + TLS 1.3 connection per request (`Connection: close`), {} in flight, closed loop; only the destination sidecar is on this path |\n\
         | windows | {:.1} s measured after {:.1} s of warm-up traffic; {} round(s) per path and phase; the order of the paths rotates every round |\n\
         | priority | {nice} |\n\
         | CPU | `utime + stime` from `/proc/<pid>/stat` at the window's edges: both sidecars of the path (and Envoy's agents) for requests, the destination sidecar (and agent) for handshakes; divided by the answers in the window (tick: {:.0} ms) |\n",
        p.load_threads,
        p.rate,
        p.connections,
        p.handshake_connections,
        p.duration.as_secs_f64(),
        p.warmup.as_secs_f64(),
        p.rounds,
        1000.0 / crate::bench::proxy::procfs::ticks_per_second() as f64,
        port = mesh::APP_PORT,
        path = mesh::REQUEST_PATH,
        probe = mesh::PROBE_IDENTITY,
        nice = if p.nice == 0 {
            "default (not reniced)".to_string()
        } else {
            format!(
                "the bench and every sidecar thread at nice {} (`renice`), so concurrent work on the machine (builds) takes less of their CPU mid-window; the same for both data planes",
                p.nice
            )
        },
    );
    md.push_str(
        "\n## What was measured\n\n```text\n\
         direct:    direct-client ------------------------------------------------> direct-server app\n\
         mTLS:      client-<dp> app -> [capture] -> client sidecar (outbound)\n           \
                    ==== Istio mTLS ====> [capture] -> server sidecar (inbound, STRICT) -> app\n\
         policy:    the same to authz-<dp>, whose inbound also runs the RBAC filter\n\
         handshake: direct-client (bench mesh client, new TLS session per request)\n           \
                    ==== Istio mTLS ====> [capture] -> server sidecar (inbound) -> app\n\
         ```\n\nChecked before measuring:\n\n",
    );
    for c in &report.checks {
        let _ = writeln!(md, "- {c}");
    }

    md.push_str("\n## Targets (mesh-proxy / Envoy, same run)\n\n");
    md.push_str(&summary(report));
    md.push_str(
        "\nAdded latency: the path's percentile minus the direct path's, both at the fixed rate, \
         samples of all rounds pooled; on a shared machine one disturbed window sets the pooled \
         p99, so the median of the rounds' p99 (each path's minus the direct path's) is given too, \
         and every round's p99 is in the latency table. The policy's cost: the path to the server behind the policy \
         minus the path to the one without, same data plane; a negative value means it is below \
         this run's noise. The targets are those of the data plane's issue (at most half of \
         Envoy's added p99 and CPU); handshakes and the policy have none.\n",
    );

    let _ = write!(
        md,
        "\n## Latency at {:.0} req/s, mTLS on both hops (HTTP/1.1)\n\n\
         | path | p50 | p90 | p99 | p99.9 | max | answers | errors | sidecars' CPU per 1,000 req | other CPU | p99 per round |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
        p.rate
    );
    for r in &report.paths {
        let s = &r.latency;
        let rounds: Vec<String> = super::round_p99s_us(s)
            .iter()
            .map(|p| format!("{p:.0}"))
            .collect();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} µs |",
            r.path.name(),
            quantile_cells(s),
            s.ok(),
            s.errors(),
            opt(s.cpu_ms_per_1k(), |v| format!("{v:.1} ms")),
            opt(s.other_busy(), |b| format!("{b:.0}%")),
            rounds.join(", "),
        );
    }
    for r in report.paths.iter().filter(|r| r.path.kind != Kind::Direct) {
        if let Some(a) = report.added(r.path) {
            let cells: Vec<String> = a.iter().map(|&v| signed_us(v)).collect();
            let _ = writeln!(
                md,
                "| added by {} | {} | | | | | |",
                r.path.name(),
                cells.join(" | ")
            );
        }
    }

    let _ = write!(
        md,
        "\n## {POLICY_RULES}-rule AuthorizationPolicy\n\n\
         | data plane | added p50 | added p90 | added p99 | added p99.9 | CPU per 1,000 req without | with | added |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    for kind in DATA_PLANES {
        let Some(a) = report.policy_added(kind) else {
            continue;
        };
        let cpu = |authz| {
            report
                .latency(Path { kind, authz })
                .and_then(Series::cpu_ms_per_1k)
        };
        let cells: Vec<String> = a.iter().map(|&v| signed_us(v)).collect();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            kind.name(),
            cells.join(" | "),
            opt(cpu(false), |v| format!("{v:.1} ms")),
            opt(cpu(true), |v| format!("{v:.1} ms")),
            opt(report.policy_cpu_added(kind), |v| format!("{v:+.1} ms")),
        );
    }

    md.push_str(
        "\n## Full mTLS handshakes (closed loop, destination sidecar with 1 worker)\n\n\
         | data plane | mean handshakes/s | per round | sidecar CPU busy | bench CPU busy | other CPU | p50 | p99 | errors | CPU per 1,000 handshakes |\n\
         |---|---:|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (kind, s) in &report.handshakes {
        let _ = writeln!(md, "| {} | {} |", kind.name(), closed_loop_cells(s));
    }
    md.push_str(
        "\nLatency here is the whole exchange: TCP connect, TLS handshake, request and answer. \
         `sidecar CPU busy`: the destination sidecar's CPU time over the windows' wall time (100% = \
         its one CPU); `bench CPU busy`: the bench process (the mesh client doing its half of every \
         handshake, the backend, the control plane). `other CPU` (here and above): busy time of \
         everything else on the machine (`/proc/stat` minus the sidecars measured and the bench: \
         other processes, the idle sidecars of the other paths, the kernel's network work outside \
         any process (softirq), hypervisor steal), in % of one CPU.\n",
    );

    md.push_str("\n## Sidecar start\n\n| pod | start to admin /ready (configured, certificate in) |\n|---|---:|\n");
    for (pod, d) in &report.ready_in {
        let _ = writeln!(md, "| {pod} | {:.0} ms |", d.as_secs_f64() * 1000.0);
    }

    let notes = notes(report);
    if !notes.is_empty() {
        md.push_str("\n## Notes on this run\n\n");
        for n in notes {
            let _ = writeln!(md, "- {n}");
        }
    }
    md.push_str("\n![Added latency with mTLS and the policy, and full handshakes per second](security.png)\n");
    md
}

/// The security section of `docs/benchmarks.md`.
pub fn section(report: &Report) -> String {
    let envoy = report
        .versions
        .iter()
        .find(|(k, _)| *k == Kind::Envoy)
        .map(|(_, v)| format!("Envoy {v}"))
        .unwrap_or_else(|| "no Envoy (not run)".into());
    index_section(
        (SECTION_BEGIN, SECTION_END),
        (&report.machine, &report.source, &report.load_avg.0),
        &format!(
            "a pair of mesh-proxy sidecars against a pair of {envoy} sidecars, one worker each, \
             configured over ADS by mesh-control with SVIDs from its CA, Istio mTLS between them \
             (STRICT), measured in alternating rounds. Full report: \
             [security.md](benchmarks/security.md)."
        ),
        &summary(report),
        &notes(report),
    )
}

/// Replaces the security section of `index` with `section`; `false` when
/// the file or its markers are missing.
pub fn update_index(index: &FsPath, section: &str) -> std::io::Result<bool> {
    replace_section(index, (SECTION_BEGIN, SECTION_END), section)
}

/// What limits or qualifies the numbers of this run.
fn notes(report: &Report) -> Vec<String> {
    let mut notes = Vec::new();
    if report.machine.profile != "release" {
        notes.push("debug build: the numbers are not comparable; rerun with --release".into());
    }
    notes.extend(other_work_note(
        report
            .paths
            .iter()
            .map(|p| &p.latency)
            .chain(report.handshakes.iter().map(|(_, s)| s)),
        "the sidecars under test",
    ));
    if let Some(why) = &report.envoy_skipped {
        notes.push(format!(
            "Envoy was not run ({why}): no ratio can be computed"
        ));
    }
    for (kind, s) in &report.handshakes {
        let Some(busy) = s.proxy_busy().filter(|&b| b < SATURATED_PCT) else {
            continue;
        };
        let bench = s.bench_busy().unwrap_or(0.0);
        notes.push(format!(
            "{}'s destination sidecar used {busy:.0}% of its CPU in the handshake phase, not saturated{}",
            kind.name(),
            if bench >= SATURATED_PCT {
                format!(": the bench's mesh client was the limit (its CPU {bench:.0}% busy), so the sidecar's rate is at least what is shown; its CPU per handshake still holds")
            } else {
                String::new()
            }
        ));
    }
    for r in &report.paths {
        if r.latency.errors() > 0 {
            notes.push(format!(
                "{}: {} errors (first: {})",
                r.path.name(),
                r.latency.errors(),
                r.latency.first_error().unwrap_or("-")
            ));
        }
    }
    for (kind, s) in &report.handshakes {
        if s.errors() > 0 {
            notes.push(format!(
                "{} handshakes: {} errors (first: {})",
                kind.name(),
                s.errors(),
                s.first_error().unwrap_or("-")
            ));
        }
    }
    notes
}

/// Plots the latency each path adds over direct, per percentile (left),
/// and full handshakes per second (right).
pub fn plot(report: &Report, path: &FsPath, labelled: bool) -> anyhow::Result<()> {
    let root = BitMapBackend::new(path, (1200, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, 2));
    let color = |kind: Kind, authz: bool| match (kind, authz) {
        (Kind::Envoy, false) => RGBColor(200, 40, 40),
        (Kind::Envoy, true) => RGBColor(240, 140, 130),
        (_, false) => RGBColor(31, 97, 180),
        (_, true) => RGBColor(120, 170, 230),
    };
    let latency: Vec<(String, RGBColor, Vec<f64>)> = report
        .paths
        .iter()
        .filter(|r| r.path.kind != Kind::Direct)
        .filter_map(|r| {
            let a = report.added(r.path)?;
            Some((r.path.name(), color(r.path.kind, r.path.authz), a.to_vec()))
        })
        .collect();
    let groups: Vec<String> = REPORTED.iter().map(|s| s.to_string()).collect();
    bars(
        &panels[0],
        &format!(
            "Added latency over direct, mTLS both hops, {:.0} req/s",
            report.params.rate
        ),
        "added latency (µs)",
        &groups,
        &latency,
        labelled,
    )?;
    let rates: Vec<(String, RGBColor, Vec<f64>)> = report
        .handshakes
        .iter()
        .map(|(kind, s)| {
            (
                kind.name().to_string(),
                color(*kind, false),
                vec![s.mean_rate().unwrap_or(0.0)],
            )
        })
        .collect();
    bars(
        &panels[1],
        "Full mTLS handshakes per second, 1 worker",
        "handshakes per second",
        &["new TLS session per request".to_string()],
        &rates,
        labelled,
    )?;
    root.present()?;
    Ok(())
}
