//! `mesh-bench proxy`: our `mesh-proxy` against a stock Envoy doing the
//! same one-hop job, in one run.
//!
//! Setup ([`mesh`]): mesh-control's ADS server in this process serves one
//! configuration — a VirtualService to one Service whose one endpoint is
//! the bench's [`backend`] on 127.0.0.1 — to both proxies ([`subject`]),
//! each a gateway (role `router`) with one worker, listening on its own
//! loopback port at the same time. Before anything is measured, both must
//! have ACKed every type (no NACK) and answered 200 over HTTP/1.1 and
//! HTTP/2.
//!
//! Measured ([`load`]), for three targets — direct to the backend, through
//! mesh-proxy, through Envoy — in rounds, the targets' order rotating
//! every round so drift (other load, thermal) hits all of them:
//! 1. latency at a fixed rate (open loop, from the scheduled send time),
//!    HTTP/1.1 keep-alive and HTTP/2; a proxy's *added* latency is its
//!    percentile minus the direct path's;
//! 2. maximum rate (closed loop), HTTP/1.1 keep-alive and HTTP/2;
//! 3. CPU time of each proxy process over every window (`/proc/<pid>/stat`)
//!    per request answered, and its memory ([`procfs`]) idle (configured,
//!    before any load) and under load.
//!
//! With telemetry ([`telemetry`], on unless `--no-telemetry`), a second
//! mesh-proxy and a second Envoy run beside the plain pair, tracing every
//! request to an OTLP collector in the bench and scraped for their
//! Prometheus metrics once a second; their fixed-rate windows rotate with
//! the others', and the report gives the cost of telemetry per request
//! (each twin minus its plain peer) and the ratios with telemetry on.
//!
//! The proxies and the bench share the machine; with two or more CPUs
//! each proxy is pinned to one CPU and the bench to the others
//! ([`procfs::Pinning`]). The report states what was done, and whether a
//! proxy was saturated at all during the throughput phase (if its CPU was
//! not busy, the load generator was the limit, and the ratio says little).
//!
//! The security bench ([`crate::bench::security`]) measures with the same
//! pieces: the load generator, `run_window` (CPU of any set of
//! processes over a window), [`procfs`], the backend, the control plane
//! and the report's cells.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::Machine;
use load::{ClosedLoop, Dest, LoadResult, OpenLoop, Protocol, Quantiles, Window};
use procfs::{Memory, Pinning};
use subject::{Kind, Proxy};
use telemetry::{Collector, ScrapeStats, Scraper, TelemetryReport};

pub mod backend;
pub mod load;
pub mod mesh;
pub mod procfs;
pub(crate) mod report;
pub mod subject;
pub mod telemetry;

pub use report::{markdown, plot, section, summary, telemetry_summary, update_index};

/// Added p99 latency, ours / Envoy, at most.
pub const ADDED_P99_MAX_RATIO: f64 = 0.5;
/// CPU time per request, ours / Envoy, at most.
pub const CPU_MAX_RATIO: f64 = 0.5;
/// Maximum requests per second, ours / Envoy, at least.
pub const THROUGHPUT_MIN_RATIO: f64 = 1.5;
/// Resident memory, ours / Envoy, at most.
pub const RSS_MAX_RATIO: f64 = 0.33;

/// Longest wait for a proxy to be configured and serving.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// Time between starting a window's load and the start of its warm-up
/// (connections are opened in it).
const CONNECT_SLACK: Duration = Duration::from_millis(200);
/// How often memory is sampled during a window.
const RSS_SAMPLE: Duration = Duration::from_millis(200);

/// What to measure.
#[derive(Debug, Clone)]
pub struct Params {
    /// Length of each measured window.
    pub duration: Duration,
    /// Traffic before each window, not counted.
    pub warmup: Duration,
    /// Windows per target, per protocol, per phase.
    pub rounds: usize,
    /// Requests per second of the latency phase.
    pub rate: f64,
    /// HTTP/1.1 connections of the latency phase.
    pub open_connections: usize,
    /// HTTP/1.1 connections of the throughput phase.
    pub h1_connections: usize,
    /// HTTP/2 connections of the throughput phase (the latency phase uses one).
    pub h2_connections: usize,
    /// HTTP/2 streams in flight per connection in the throughput phase.
    pub h2_streams: usize,
    /// Worker threads of the load generator's runtime.
    pub load_threads: usize,
    /// Run the stock Envoy peer.
    pub envoy: bool,
    /// Pin the proxies and the bench to separate CPUs (when possible).
    pub pin: bool,
    /// Also measure a telemetry twin of each proxy (tracing at 100 % to
    /// the bench's collector, metrics scraped every second).
    pub telemetry: bool,
    /// The workspace (finds `.venv/` for Envoy).
    pub workspace: PathBuf,
}

/// One measured window.
#[derive(Debug)]
pub struct WindowResult {
    /// What the load generator saw.
    pub load: LoadResult,
    /// Wall time between the two CPU readings.
    pub elapsed: Duration,
    /// CPU time of the proxy in the window (`None` for direct); the sum
    /// of every process measured when a path has several.
    pub proxy_cpu: Option<Duration>,
    /// CPU time of the bench process (load generator, backend, control
    /// plane) in the window.
    pub bench_cpu: Option<Duration>,
    /// CPU time of everything else on the machine in the window (other
    /// processes, the idle proxy, the kernel, hypervisor steal).
    pub other_cpu: Option<Duration>,
    /// The part of `other_cpu` the hypervisor gave to other machines
    /// (steal).
    pub steal_cpu: Option<Duration>,
    /// Highest `VmRSS` of the proxy sampled in the window, kB (summed
    /// over the processes measured).
    pub rss_max_kb: u64,
}

/// All windows of one target, one protocol, one phase.
#[derive(Debug, Default)]
pub struct Series {
    /// In the order they ran.
    pub windows: Vec<WindowResult>,
}

/// Everything measured about one target.
#[derive(Debug)]
pub struct TargetResult {
    /// Direct, ours or Envoy.
    pub kind: Kind,
    /// Binary version (proxies).
    pub version: Option<String>,
    /// Fixed-rate phase, per [`Protocol::index`].
    pub latency: [Series; 2],
    /// Throughput phase, per [`Protocol::index`].
    pub throughput: [Series; 2],
    /// Memory once configured and checked, before any load.
    pub idle: Option<Memory>,
    /// Memory after the last window (`hwm_kb` is the peak of the run).
    pub after: Option<Memory>,
    /// Start to admin `/ready`.
    pub ready_in: Option<Duration>,
}

/// A whole `proxy` run.
#[derive(Debug)]
pub struct Report {
    /// Where it ran.
    pub machine: Machine,
    /// What was asked.
    pub params: Params,
    /// How CPUs were shared, or why they were not pinned.
    pub pinning: Result<Pinning, String>,
    /// `/proc/loadavg` before and after the run.
    pub load_avg: (String, String),
    /// Why the Envoy peer did not run, if it did not.
    pub envoy_skipped: Option<String>,
    /// Direct, ours, Envoy (if run), in that order.
    pub targets: Vec<TargetResult>,
    /// The telemetry twins, when measured.
    pub telemetry: Option<TelemetryReport>,
    /// Wall time of the whole run.
    pub wall: Duration,
    /// The workspace's commit, and whether the proxy's sources differ from it.
    pub source: String,
}

/// The measured target and what it needs while measured.
struct Target {
    kind: Kind,
    addr: std::net::SocketAddr,
    proxy: Option<Proxy>,
    /// A telemetry twin: scraped during its windows into this.
    scrapes: Option<Arc<ScrapeStats>>,
}

// === impl Target ===

impl Target {
    fn new(kind: Kind, addr: std::net::SocketAddr, proxy: Option<Proxy>) -> Self {
        Self {
            kind,
            addr,
            proxy,
            scrapes: None,
        }
    }

    /// How the run's output names it.
    fn name(&self) -> String {
        match self.scrapes {
            Some(_) => format!("{}+telemetry", self.kind.name()),
            None => self.kind.name().to_string(),
        }
    }
}

/// The load shape of one window.
#[derive(Clone, Copy)]
enum Shape {
    Open,
    Closed,
}

// === impl Series ===

impl Series {
    /// Answers 200 over all windows.
    pub fn ok(&self) -> u64 {
        self.windows.iter().map(|w| w.load.ok).sum()
    }

    /// Errors over all windows.
    pub fn errors(&self) -> u64 {
        self.windows.iter().map(|w| w.load.errors).sum()
    }

    /// The first error seen.
    pub fn first_error(&self) -> Option<&str> {
        self.windows
            .iter()
            .find_map(|w| w.load.first_error.as_deref())
    }

    /// Quantiles of every window's latencies pooled.
    pub fn quantiles(&self) -> Option<Quantiles> {
        let mut all: Vec<Duration> = self
            .windows
            .iter()
            .flat_map(|w| w.load.latencies.iter().copied())
            .collect();
        Quantiles::of(&mut all)
    }

    /// Answers per second of each window.
    pub fn rates(&self) -> Vec<f64> {
        self.windows
            .iter()
            .map(|w| w.load.ok as f64 / w.elapsed.as_secs_f64().max(1e-9))
            .collect()
    }

    /// Mean of [`Series::rates`].
    pub fn mean_rate(&self) -> Option<f64> {
        let r = self.rates();
        (!r.is_empty()).then(|| r.iter().sum::<f64>() / r.len() as f64)
    }

    /// Proxy CPU milliseconds per 1,000 answers.
    pub fn cpu_ms_per_1k(&self) -> Option<f64> {
        let cpu: Option<Duration> = self.windows.iter().map(|w| w.proxy_cpu).sum();
        let ok = self.ok();
        if ok == 0 {
            return None;
        }
        Some(cpu?.as_secs_f64() * 1000.0 * 1000.0 / ok as f64)
    }

    /// Share of wall time the proxy was on a CPU, percent.
    pub fn proxy_busy(&self) -> Option<f64> {
        let cpu: Option<Duration> = self.windows.iter().map(|w| w.proxy_cpu).sum();
        Some(100.0 * cpu?.as_secs_f64() / self.wall().as_secs_f64().max(1e-9))
    }

    /// CPU time of everything else over wall time, percent of one CPU.
    pub fn other_busy(&self) -> Option<f64> {
        let cpu: Option<Duration> = self.windows.iter().map(|w| w.other_cpu).sum();
        Some(100.0 * cpu?.as_secs_f64() / self.wall().as_secs_f64().max(1e-9))
    }

    /// Hypervisor steal over wall time, percent of one CPU.
    pub fn steal_busy(&self) -> Option<f64> {
        let cpu: Option<Duration> = self.windows.iter().map(|w| w.steal_cpu).sum();
        Some(100.0 * cpu?.as_secs_f64() / self.wall().as_secs_f64().max(1e-9))
    }

    /// Share of wall time the bench process was on a CPU, percent.
    pub fn bench_busy(&self) -> Option<f64> {
        let cpu: Option<Duration> = self.windows.iter().map(|w| w.bench_cpu).sum();
        Some(100.0 * cpu?.as_secs_f64() / self.wall().as_secs_f64().max(1e-9))
    }

    /// Highest `VmRSS` sampled in any window, kB.
    pub fn rss_max_kb(&self) -> u64 {
        self.windows.iter().map(|w| w.rss_max_kb).max().unwrap_or(0)
    }

    fn wall(&self) -> Duration {
        self.windows.iter().map(|w| w.elapsed).sum()
    }
}

// === impl TargetResult ===

impl TargetResult {
    /// Highest `VmRSS` sampled under load in either phase, kB.
    pub fn rss_load_kb(&self) -> u64 {
        self.latency
            .iter()
            .chain(&self.throughput)
            .map(Series::rss_max_kb)
            .max()
            .unwrap_or(0)
    }
}

// === impl Report ===

impl Report {
    /// The result of `kind`, if it ran.
    pub fn target(&self, kind: Kind) -> Option<&TargetResult> {
        self.targets.iter().find(|t| t.kind == kind)
    }

    /// `proxy` percentile minus the direct path's, per reported
    /// percentile, in the latency phase of `protocol`.
    pub fn added(&self, kind: Kind, protocol: Protocol) -> Option<[f64; 4]> {
        let i = protocol.index();
        added_us(
            &self.target(kind)?.latency[i],
            &self.target(Kind::Direct)?.latency[i],
        )
    }
}

/// Runs the whole benchmark, printing as it goes.
pub fn run(params: Params) -> anyhow::Result<Report> {
    if !(params.rate > 0.0 && params.rate.is_finite()) {
        bail!("--rate must be a positive number of requests per second");
    }
    if params.rounds == 0 || params.duration.is_zero() {
        bail!("--rounds and --duration-secs must be positive");
    }
    if params.open_connections == 0
        || params.h1_connections == 0
        || params.h2_connections == 0
        || params.h2_streams == 0
        || params.load_threads == 0
    {
        bail!("connection, stream and thread counts must be positive");
    }
    let wall = Instant::now();
    let machine = Machine::current();
    // First, while this is the only thread: everything started later
    // inherits the bench CPUs.
    let pinning = Pinning::for_bench(params.pin);
    let load_before = procfs::loadavg();
    println!("load average before: {load_before}");

    let ours_bin = subject::ours_binary()?;
    let (envoy_bin, envoy_skipped) = subject::envoy_binary(&params.workspace, params.envoy);

    // The backend and the control plane share one runtime, the load
    // generator has its own, so neither waits behind the other's tasks.
    let service_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("bench-service")
        .enable_all()
        .build()
        .context("starting the service runtime")?;
    let load_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(params.load_threads)
        .thread_name("bench-load")
        .enable_all()
        .build()
        .context("starting the load runtime")?;

    let backend_listener = service_rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .context("binding the backend")?;
    let backend_addr = backend_listener.local_addr()?;
    let backend = service_rt.spawn(backend::serve(backend_listener));
    let ours_port = crate::envoy::free_port()?;
    let envoy_port = crate::envoy::free_port()?;
    let mut yaml = mesh::config_yaml(backend_addr.port(), ours_port, envoy_port);
    let mut mesh_config = mesh_api::mesh_config::MeshConfig::default();
    // The telemetry twins' gateway ports and the collector they export to.
    let twins = if params.telemetry {
        let (collector, collector_addr) = service_rt.block_on(Collector::start())?;
        let ports = (crate::envoy::free_port()?, crate::envoy::free_port()?);
        yaml.push_str("---\n");
        yaml.push_str(&telemetry::config_yaml(
            collector_addr.port(),
            ports.0,
            ports.1,
        ));
        mesh_config = telemetry::mesh_config()?;
        println!("OTLP collector on {collector_addr}");
        Some((collector, ports))
    } else {
        None
    };
    let snapshot = mesh::snapshot_with(&yaml, mesh_config)?;
    let control = service_rt.block_on(mesh::ControlPlane::start(snapshot))?;
    println!(
        "backend on {backend_addr}, control plane on {}",
        control.addr
    );

    let mut targets = vec![Target::new(Kind::Direct, backend_addr, None)];
    // Envoy first, and its admin bound before anything else connects:
    // `EnvoyProcess` picks its admin port by binding port 0 and releasing
    // it, and Envoy's bind then fails if a connection of ours (e.g. an ADS
    // stream) took that port as its local port in between.
    let envoy = match &envoy_bin {
        Some(bin) => {
            let mut envoy = Proxy::start_envoy(bin, control.addr, envoy_port)?;
            envoy.wait_admin(STARTUP_TIMEOUT)?;
            Some(envoy)
        }
        None => None,
    };
    let envoy_twin = match (&envoy_bin, &twins) {
        (Some(bin), Some((_, (_, port)))) => {
            let mut twin = Proxy::start_envoy_as(
                bin,
                control.addr,
                *port,
                telemetry::ENVOY_POD,
                &telemetry::labels(Kind::Envoy),
            )?;
            twin.wait_admin(STARTUP_TIMEOUT)?;
            Some(twin)
        }
        _ => None,
    };
    let ours = Proxy::start_ours(&ours_bin, control.addr, ours_port)?;
    targets.push(Target::new(Kind::Ours, ours.addr, Some(ours)));
    if let Some(envoy) = envoy {
        targets.push(Target::new(Kind::Envoy, envoy.addr, Some(envoy)));
    }
    if let Some((_, (port, _))) = &twins {
        let twin = Proxy::start_ours_as(
            &ours_bin,
            control.addr,
            *port,
            telemetry::OURS_POD,
            &telemetry::labels(Kind::Ours),
        )?;
        let mut target = Target::new(Kind::Ours, twin.addr, Some(twin));
        target.scrapes = Some(Arc::default());
        targets.push(target);
    }
    if let Some(twin) = envoy_twin {
        let mut target = Target::new(Kind::Envoy, twin.addr, Some(twin));
        target.scrapes = Some(Arc::default());
        targets.push(target);
    }

    let mut results: Vec<TargetResult> = targets
        .iter()
        .map(|t| TargetResult {
            version: t.proxy.as_ref().map(|p| p.version.clone()),
            ..empty_result(t.kind)
        })
        .collect();

    for (target, result) in targets.iter_mut().zip(&mut results) {
        bring_up(target, result, &control, &pinning, &load_rt)?;
    }
    // Let start-up work (and the readiness requests) settle.
    std::thread::sleep(Duration::from_secs(1));
    let spans_at_start = twins.as_ref().map(|(c, _)| c.counts());
    for (target, result) in targets.iter().zip(&mut results) {
        result.idle = target.proxy.as_ref().and_then(|p| procfs::memory(p.pid));
    }

    let ticks = procfs::ticks_per_second();
    // The telemetry twins take part in the fixed-rate phase only.
    let plain = targets.iter().filter(|t| t.scrapes.is_none()).count();
    for (phase, shape) in [("fixed rate", Shape::Open), ("throughput", Shape::Closed)] {
        let n = match shape {
            Shape::Open => targets.len(),
            Shape::Closed => plain,
        };
        for protocol in Protocol::ALL {
            for round in 0..params.rounds {
                for k in 0..n {
                    let i = (round + k) % n;
                    let window =
                        measure(&load_rt, &mut targets[i], shape, protocol, &params, ticks)?;
                    let label = format!(
                        "{phase} {} round {}: {:<21}",
                        protocol.name(),
                        round + 1,
                        targets[i].name()
                    );
                    print_window(&label, &window);
                    let result = &mut results[i];
                    let series = match shape {
                        Shape::Open => &mut result.latency[protocol.index()],
                        Shape::Closed => &mut result.throughput[protocol.index()],
                    };
                    series.windows.push(window);
                }
            }
        }
    }
    for (target, result) in targets.iter().zip(&mut results) {
        result.after = target.proxy.as_ref().and_then(|p| procfs::memory(p.pid));
    }
    let load_after = procfs::loadavg();
    println!("load average after: {load_after}");

    let telemetry = twins.map(|(collector, _)| {
        // Spans of the last windows may still be batched in the proxies.
        collector.wait_flushed(Duration::from_secs(2), telemetry::FLUSH_WAIT);
        let mut spans = collector.counts();
        // Count the measured traffic only, not the readiness checks.
        for (service, before) in spans_at_start.unwrap_or_default() {
            if let Some(c) = spans.get_mut(&service) {
                c.spans = c.spans.saturating_sub(before.spans);
                c.exports = c.exports.saturating_sub(before.exports);
            }
        }
        let scrapes = targets
            .iter()
            .filter_map(|t| Some((t.kind, t.scrapes.as_ref()?.summary())))
            .collect();
        let twins: Vec<TargetResult> = targets
            .iter()
            .zip(&mut results)
            .filter(|(t, _)| t.scrapes.is_some())
            .map(|(_, r)| std::mem::replace(r, empty_result(Kind::Direct)))
            .collect();
        let report = TelemetryReport {
            targets: twins,
            spans,
            scrapes,
        };
        print_spans(&report);
        report
    });
    results.truncate(plain);

    drop(targets);
    drop(control);
    let report_workspace = params.workspace.clone();
    backend.abort();
    Ok(Report {
        machine,
        params,
        pinning,
        load_avg: (load_before, load_after),
        envoy_skipped,
        targets: results,
        telemetry,
        wall: wall.elapsed(),
        source: source_revision(&report_workspace),
    })
}

/// A result of `kind` with nothing measured yet.
fn empty_result(kind: Kind) -> TargetResult {
    TargetResult {
        kind,
        version: None,
        latency: Default::default(),
        throughput: Default::default(),
        idle: None,
        after: None,
        ready_in: None,
    }
}

/// Prints the spans the collector received from each telemetry twin,
/// loudly when one sent none (the comparison is meaningless then).
fn print_spans(report: &TelemetryReport) {
    for t in &report.targets {
        let c = report.spans_of(t.kind);
        let answered: u64 = t.latency.iter().map(Series::ok).sum();
        println!(
            "collector: {} spans in {} exports from {}+telemetry ({} answers measured, warm-up not counted)",
            c.spans,
            c.exports,
            t.kind.name(),
            answered
        );
        if c.spans == 0 {
            eprintln!(
                "\n!!! {}+telemetry exported NO spans: its telemetry numbers measure no tracing at all !!!\n",
                t.kind.name()
            );
        }
    }
    for (service, c) in &report.spans {
        let known = report
            .targets
            .iter()
            .any(|t| telemetry::service_name(t.kind) == *service);
        if !known {
            println!(
                "collector: {} spans from unexpected service {service:?}",
                c.spans
            );
        }
    }
}

/// `git rev-parse --short HEAD` of the workspace, noting uncommitted
/// changes under `crates/mesh-proxy` (what was measured is the tree as
/// built, not the commit).
fn source_revision(workspace: &std::path::Path) -> String {
    source_revision_of(workspace, &["crates/mesh-proxy"])
}

/// `git rev-parse --short HEAD` of the workspace, noting uncommitted
/// changes under any of `dirs`.
pub(crate) fn source_revision_of(workspace: &std::path::Path, dirs: &[&str]) -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(workspace)
            .args(args)
            .stderr(std::process::Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let Some(commit) = git(&["rev-parse", "--short", "HEAD"]) else {
        return "unknown (not a git checkout)".into();
    };
    let dirty: Vec<&str> = dirs
        .iter()
        .copied()
        .filter(|dir| git(&["status", "--porcelain", "--", dir]).is_some_and(|s| !s.is_empty()))
        .collect();
    if dirty.is_empty() {
        commit
    } else {
        format!("{commit} + uncommitted changes in {}", dirty.join(", "))
    }
}

/// Waits until `target` is configured (admin `/ready`, every xDS type
/// ACKed, no NACK) and answers 200 over both protocols, then pins it.
fn bring_up(
    target: &mut Target,
    result: &mut TargetResult,
    control: &mesh::ControlPlane,
    pinning: &Result<Pinning, String>,
    load_rt: &tokio::runtime::Runtime,
) -> anyhow::Result<()> {
    if let Some(proxy) = target.proxy.as_mut() {
        result.ready_in = Some(proxy.wait_ready(STARTUP_TIMEOUT)?);
    }
    for protocol in Protocol::ALL {
        let dest = Dest::new(target.addr);
        let served = load_rt.block_on(load::wait_serving(dest, protocol, STARTUP_TIMEOUT));
        if let Err(e) = served {
            let log = target
                .proxy
                .as_ref()
                .map(Proxy::log_tail)
                .unwrap_or_default();
            bail!(
                "{} does not answer 200 over {}: {e}\n{log}",
                target.name(),
                protocol.name()
            );
        }
    }
    let name = target.name();
    let Some(proxy) = &target.proxy else {
        return Ok(());
    };
    wait_synced(control, &proxy.node_id, &name)?;
    if let Ok(p) = pinning {
        p.pin_proxy(proxy.pid)
            .map_err(|e| anyhow::anyhow!("pinning {name}: {e}"))?;
    }
    println!(
        "{name} (PID {}, {}) configured, in sync and serving {:.2?} after start",
        proxy.pid,
        proxy.version,
        result.ready_in.unwrap_or_default()
    );
    Ok(())
}

/// Waits (5 s at most: the ACK may land just after the first answers)
/// until `node_id` ACKed everything it was sent and NACKed nothing.
pub(crate) fn wait_synced(
    control: &mesh::ControlPlane,
    node_id: &str,
    name: &str,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while let Err(e) = control.synced(node_id) {
        if Instant::now() >= deadline {
            bail!("{name} is not in sync: {e}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// `a`'s reported percentiles minus `b`'s, in µs.
pub(crate) fn added_us(a: &Series, b: &Series) -> Option<[f64; 4]> {
    let (a, b) = (a.quantiles()?.reported(), b.quantiles()?.reported());
    Some(std::array::from_fn(|k| {
        a[k].as_secs_f64() * 1e6 - b[k].as_secs_f64() * 1e6
    }))
}

/// Runs one window against `target`, reading the proxy's CPU time at the
/// window's edges and sampling its memory in between.
fn measure(
    load_rt: &tokio::runtime::Runtime,
    target: &mut Target,
    shape: Shape,
    protocol: Protocol,
    params: &Params,
    ticks: u64,
) -> anyhow::Result<WindowResult> {
    if let Some(proxy) = target.proxy.as_mut() {
        proxy.check_running()?;
    }
    let pids: Vec<u32> = target.proxy.iter().map(|p| p.pid).collect();
    let window = next_window(params.warmup, params.duration);
    let dest = Dest::new(target.addr);
    let handle = match shape {
        Shape::Open => load_rt.spawn(load::open_loop(
            dest,
            protocol,
            OpenLoop {
                rate: params.rate,
                connections: match protocol {
                    Protocol::Http1 => params.open_connections,
                    Protocol::Http2 => 1,
                },
                warmup: params.warmup,
                window,
            },
        )),
        Shape::Closed => load_rt.spawn(load::closed_loop(
            dest,
            protocol,
            ClosedLoop {
                connections: match protocol {
                    Protocol::Http1 => params.h1_connections,
                    Protocol::Http2 => params.h2_connections,
                },
                streams: params.h2_streams,
                window,
            },
        )),
    };
    let what = format!("{} {}", target.name(), protocol.name());
    // A telemetry twin is scraped as Prometheus would, from the start of
    // the load to the end of the window.
    let scraper = match (&target.scrapes, &target.proxy) {
        (Some(stats), Some(proxy)) => Some(Scraper::start(proxy.prometheus_port(), stats.clone())),
        _ => None,
    };
    let result = run_window(load_rt, &pids, window, handle, ticks, &what);
    drop(scraper);
    result
}

/// The window of a load started now: it opens its connections, warms up
/// for `warmup`, then counts for `duration`.
pub(crate) fn next_window(warmup: Duration, duration: Duration) -> Window {
    let start = Instant::now() + CONNECT_SLACK + warmup;
    Window {
        start,
        end: start + duration,
    }
}

/// Measures `window` of a load already running on `load_rt` (`handle`):
/// the CPU time of `pids` (summed), of the bench and of the whole machine
/// between the window's edges, their memory sampled in between, and what
/// the load saw. `what` names the load in errors.
pub(crate) fn run_window(
    load_rt: &tokio::runtime::Runtime,
    pids: &[u32],
    window: Window,
    handle: tokio::task::JoinHandle<anyhow::Result<LoadResult>>,
    ticks: u64,
    what: &str,
) -> anyhow::Result<WindowResult> {
    // `None` if any process is gone (or there is none: the direct path).
    let cpu_of = |pids: &[u32]| -> Option<u64> {
        if pids.is_empty() {
            return None;
        }
        pids.iter().map(|&p| procfs::cpu_ticks(p)).sum()
    };
    let to_time = |t: u64| Duration::from_secs_f64(t as f64 / ticks as f64);
    sleep_until(window.start);
    let cpu0 = cpu_of(pids);
    let bench0 = procfs::self_cpu_ticks();
    let machine0 = procfs::machine_busy_ticks();
    let steal0 = procfs::machine_steal_ticks();
    let t0 = Instant::now();
    let mut rss_max_kb = 0;
    while Instant::now() < window.end {
        sleep_until((Instant::now() + RSS_SAMPLE).min(window.end));
        let rss: u64 = pids
            .iter()
            .filter_map(|&p| procfs::memory(p))
            .map(|m| m.rss_kb)
            .sum();
        rss_max_kb = rss_max_kb.max(rss);
    }
    let cpu1 = cpu_of(pids);
    let bench1 = procfs::self_cpu_ticks();
    let machine1 = procfs::machine_busy_ticks();
    let steal1 = procfs::machine_steal_ticks();
    let elapsed = t0.elapsed();
    let delta = |a: Option<u64>, b: Option<u64>| a.zip(b).map(|(a, b)| b.saturating_sub(a));
    let (proxy_ticks, bench_ticks) = (delta(cpu0, cpu1), delta(bench0, bench1));
    let other_ticks = delta(machine0, machine1)
        .and_then(|m| bench_ticks.map(|b| m.saturating_sub(b + proxy_ticks.unwrap_or(0))));
    let grace = load::REQUEST_TIMEOUT + Duration::from_secs(10);
    let load = load_rt
        .block_on(async { tokio::time::timeout(grace, handle).await })
        .map_err(|_| {
            anyhow::anyhow!("{what}: the load did not finish within {grace:?} after its window")
        })?
        .context("the load task panicked")?
        .with_context(|| what.to_string())?;
    Ok(WindowResult {
        load,
        elapsed,
        proxy_cpu: proxy_ticks.map(to_time),
        bench_cpu: bench_ticks.map(to_time),
        other_cpu: other_ticks.map(to_time),
        steal_cpu: delta(steal0, steal1).map(to_time),
        rss_max_kb,
    })
}

pub(crate) fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

/// Prints one window's rate, latencies, CPU and errors after `label`.
pub(crate) fn print_window(label: &str, w: &WindowResult) {
    let rate = w.load.ok as f64 / w.elapsed.as_secs_f64().max(1e-9);
    let mut latencies = w.load.latencies.clone();
    let q = Quantiles::of(&mut latencies)
        .map(|q| {
            format!(
                "p50 {:.0} us p99 {:.0} us p99.9 {:.0} us",
                q.p50.as_secs_f64() * 1e6,
                q.p99.as_secs_f64() * 1e6,
                q.p999.as_secs_f64() * 1e6
            )
        })
        .unwrap_or_else(|| "no answers".into());
    let cpu = w
        .proxy_cpu
        .map(|c| format!(", proxy CPU {:.0} ms", c.as_secs_f64() * 1000.0))
        .unwrap_or_default();
    let errors = if w.load.errors > 0 {
        format!(
            ", {} errors (first: {})",
            w.load.errors,
            w.load.first_error.as_deref().unwrap_or("")
        )
    } else {
        String::new()
    };
    println!("{label} {rate:>8.0} req/s, {q}{cpu}{errors}");
}
