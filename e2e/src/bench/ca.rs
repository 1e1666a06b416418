//! `mesh-bench ca`: how fast the certificate authority signs.
//!
//! Two measurements, matching the targets of the CA's issue:
//! 1. signing on one core: CSR parse + signature check + policy + ECDSA
//!    P-256 signing, in a loop on the calling thread (target >= 2,000/s);
//! 2. `CreateCertificate` over gRPC+TLS on loopback with 1, 10 and 100
//!    concurrent clients, each on its own connection: throughput and
//!    p50/p99/max latency. Each client connects (TCP + TLS handshake, one
//!    warm-up call) before the clock starts, so latencies are steady-state
//!    calls, not handshakes. The server, the clients and the authenticator
//!    (local-mode JWT) share the machine's cores.
//!
//! The design asks each area to run its stock peer in the same run; the
//! CA's peer would be istiod's CA, which needs a Kubernetes cluster, so it
//! is not run here (the report says so).

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mesh_api::spiffe::SpiffeId;
use mesh_ca::auth::Authenticator;
use mesh_ca::auth::local::{DEFAULT_AUDIENCE, LocalTokenAuthority};
use mesh_ca::client::generate_key_and_csr;
use mesh_ca::metrics::CaMetrics;
use mesh_ca::service::{CaClient, CaService, serve_tls};
use mesh_ca::{Authority, AuthorityConfig};
use plotters::prelude::*;

use super::{Machine, Percentiles, ms};

/// Signing rate the issue asks for, certificates per second on one core.
pub const SIGN_TARGET_PER_SEC: f64 = 2000.0;
/// Concurrency at which the issue asks for the p99 of `CreateCertificate`.
pub const TARGET_CLIENTS: usize = 100;
/// Distinct CSRs cycled through (generating one per call would measure
/// key generation, not the CA).
const CSR_POOL: usize = 256;

/// What to measure.
#[derive(Debug, Clone)]
pub struct Params {
    /// How long the signing loop runs.
    pub sign_duration: Duration,
    /// Concurrent gRPC clients, one measurement per value.
    pub clients: Vec<usize>,
    /// Calls per concurrency level, split evenly between its clients
    /// (at least `min_calls_per_client` each).
    pub calls: usize,
    /// Floor of calls each client makes.
    pub min_calls_per_client: usize,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            sign_duration: Duration::from_secs(3),
            clients: vec![1, 10, 100],
            calls: 2000,
            min_calls_per_client: 10,
        }
    }
}

/// Result of the one-core signing loop.
#[derive(Debug, Clone, Copy)]
pub struct SignResult {
    /// Certificates signed.
    pub signed: usize,
    /// How long it took.
    pub elapsed: Duration,
}

impl SignResult {
    /// Certificates per second.
    pub fn rate(&self) -> f64 {
        self.signed as f64 / self.elapsed.as_secs_f64()
    }
}

/// Result of one concurrency level over gRPC+TLS.
#[derive(Debug, Clone, Copy)]
pub struct GrpcResult {
    /// Concurrent clients (connections).
    pub clients: usize,
    /// Calls completed.
    pub calls: usize,
    /// Wall time from the first call to the last answer.
    pub wall: Duration,
    /// Per-call latency.
    pub latency: Percentiles,
}

impl GrpcResult {
    /// Certificates issued per second.
    pub fn throughput(&self) -> f64 {
        self.calls as f64 / self.wall.as_secs_f64()
    }
}

/// A whole `ca` run.
#[derive(Debug, Clone)]
pub struct Report {
    /// Where it ran.
    pub machine: Machine,
    /// What was asked.
    pub params: Params,
    /// Signing on one core.
    pub sign: SignResult,
    /// One entry per concurrency level.
    pub grpc: Vec<GrpcResult>,
}

/// Runs both measurements, printing each as it completes.
pub fn run(params: Params) -> anyhow::Result<Report> {
    if params.clients.is_empty() || params.clients.contains(&0) {
        bail!("--clients needs one or more counts > 0");
    }
    let machine = Machine::current();
    let authority = Arc::new(
        Authority::generate_in_memory(AuthorityConfig::default()).context("generating the CA")?,
    );
    let identity = SpiffeId::new("cluster.local", "default", "bench");
    let csrs = (0..CSR_POOL)
        .map(|_| generate_key_and_csr(&identity).map(|(_, csr)| csr))
        .collect::<Result<Vec<_>, _>>()
        .context("generating CSRs")?;

    let sign = measure_signing(&authority, &identity, &csrs, params.sign_duration)?;
    println!(
        "sign (ECDSA P-256, 1 core): {} certs in {:.2?} = {:.0} certs/s (target >= {SIGN_TARGET_PER_SEC:.0})",
        sign.signed,
        sign.elapsed,
        sign.rate()
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let grpc = runtime.block_on(measure_grpc(authority, identity, csrs, &params))?;
    Ok(Report {
        machine,
        params,
        sign,
        grpc,
    })
}

fn measure_signing(
    authority: &Authority,
    identity: &SpiffeId,
    csrs: &[String],
    duration: Duration,
) -> anyhow::Result<SignResult> {
    for csr in csrs.iter().take(50) {
        authority
            .sign(csr, identity, None)
            .context("warm-up signing")?;
    }
    let start = Instant::now();
    let mut signed = 0usize;
    for csr in csrs.iter().cycle() {
        if start.elapsed() >= duration {
            break;
        }
        authority.sign(csr, identity, None).context("signing")?;
        signed += 1;
    }
    Ok(SignResult {
        signed,
        elapsed: start.elapsed(),
    })
}

async fn measure_grpc(
    authority: Arc<Authority>,
    identity: SpiffeId,
    csrs: Vec<String>,
    params: &Params,
) -> anyhow::Result<Vec<GrpcResult>> {
    let tokens = Arc::new(
        LocalTokenAuthority::generate("cluster.local", DEFAULT_AUDIENCE)
            .context("local token key")?,
    );
    let serving = authority
        .issue_serving_certificate(&["localhost".into()], Duration::from_secs(3600))
        .context("CA serving certificate")?;
    let tls = mesh_ca::tls::ca_server_config(&serving).context("CA TLS config")?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let authenticators: Vec<Arc<dyn Authenticator>> = vec![tokens.clone()];
    let service = Arc::new(CaService::new(
        authority.clone(),
        authenticators,
        CaMetrics::default(),
    ));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_tls(listener, service, tls, async {
        let _ = stop_rx.await;
    }));
    let token: Arc<str> = tokens
        .issue(&identity, Duration::from_secs(3600))
        .context("issuing the bench token")?
        .into();
    let csrs: Arc<[String]> = csrs.into();
    let endpoint = format!("https://{addr}");

    let mut results = Vec::new();
    for &clients in &params.clients {
        let per_client = (params.calls / clients).max(params.min_calls_per_client);
        let result = one_level(&endpoint, &authority, &token, &csrs, clients, per_client).await?;
        println!(
            "gRPC CreateCertificate over TLS, {clients} concurrent clients x {per_client} calls: \
             {} calls in {:.2?} = {:.0} certs/s; latency p50 {} p99 {} max {}",
            result.calls,
            result.wall,
            result.throughput(),
            ms(result.latency.p50),
            ms(result.latency.p99),
            ms(result.latency.max),
        );
        results.push(result);
    }
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    Ok(results)
}

async fn one_level(
    endpoint: &str,
    authority: &Authority,
    token: &Arc<str>,
    csrs: &Arc<[String]>,
    clients: usize,
    calls_per_client: usize,
) -> anyhow::Result<GrpcResult> {
    // Connect everyone first (one warm-up call each), then start together.
    let ready = Arc::new(tokio::sync::Barrier::new(clients + 1));
    let mut tasks = Vec::with_capacity(clients);
    for c in 0..clients {
        let client = CaClient::new(endpoint, authority.trust_bundle(), "localhost")?;
        let (token, csrs, ready) = (token.clone(), csrs.clone(), ready.clone());
        tasks.push(tokio::spawn(async move {
            let warm_up = client
                .create_certificate(&csrs[c % csrs.len()], None, &token)
                .await;
            ready.wait().await;
            warm_up.context("warm-up CreateCertificate")?;
            let mut latencies = Vec::with_capacity(calls_per_client);
            for i in 0..calls_per_client {
                let csr = &csrs[(c * calls_per_client + i) % csrs.len()];
                let t = Instant::now();
                client
                    .create_certificate(csr, None, &token)
                    .await
                    .context("CreateCertificate")?;
                latencies.push(t.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    ready.wait().await;
    let start = Instant::now();
    let mut all = Vec::with_capacity(clients * calls_per_client);
    for task in tasks {
        all.extend(task.await.context("bench client task")??);
    }
    let wall = start.elapsed();
    let latency = Percentiles::of(&mut all).context("no calls were made")?;
    Ok(GrpcResult {
        clients,
        calls: all.len(),
        wall,
        latency,
    })
}

/// The markdown report (`docs/benchmarks/ca.md`).
pub fn markdown(report: &Report) -> String {
    let p = &report.params;
    let mut md = String::new();
    md.push_str("# Certificate authority benchmarks\n\n");
    md.push_str(
        "Written by `cargo run --release -p e2e --bin mesh-bench -- ca`; rerun it rather than \
         editing this file. What is measured is described in `e2e/src/bench/ca.rs`.\n\n",
    );
    md.push_str("## Machine\n\n| | |\n|---|---|\n");
    md.push_str(&report.machine.markdown_rows());
    let levels: Vec<String> = p.clients.iter().map(|c| c.to_string()).collect();
    let _ = write!(
        md,
        "\n## Parameters\n\n| | |\n|---|---|\n\
         | signing loop | {:.1} s on one thread, {CSR_POOL} distinct CSRs cycled |\n\
         | key type | ECDSA P-256 (CA and workloads) |\n\
         | gRPC clients | {} (one TLS connection each, over loopback) |\n\
         | calls per level | {} split between the clients, at least {} each, after one warm-up call per client |\n\
         | authentication | local-mode ES256 JWT |\n",
        p.sign_duration.as_secs_f64(),
        levels.join(", "),
        p.calls,
        p.min_calls_per_client,
    );

    md.push_str("\n## Targets\n\n| target | result | met |\n|---|---|---|\n");
    let rate = report.sign.rate();
    let _ = writeln!(
        md,
        "| signing >= {:.0} certs/s on one core (P-256) | {rate:.0} certs/s | {} |",
        SIGN_TARGET_PER_SEC,
        if rate >= SIGN_TARGET_PER_SEC {
            "yes"
        } else {
            "**no**"
        }
    );
    match report.grpc.iter().find(|g| g.clients == TARGET_CLIENTS) {
        Some(g) => {
            let _ = writeln!(
                md,
                "| p99 of CreateCertificate with {TARGET_CLIENTS} concurrent clients (reported; the issue sets no bound) | {} | n/a |",
                ms(g.latency.p99)
            );
        }
        None => {
            let _ = writeln!(
                md,
                "| p99 of CreateCertificate with {TARGET_CLIENTS} concurrent clients | not measured in this run | n/a |"
            );
        }
    }

    let _ = write!(
        md,
        "\n## Signing (one core)\n\n| signed | time | rate |\n|---:|---:|---:|\n| {} | {:.2} s | {rate:.0} certs/s |\n",
        report.sign.signed,
        report.sign.elapsed.as_secs_f64(),
    );
    md.push_str(
        "\n## CreateCertificate over gRPC+TLS\n\n\
         | clients | calls | throughput | p50 | p99 | max |\n|---:|---:|---:|---:|---:|---:|\n",
    );
    for g in &report.grpc {
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} certs/s | {} | {} | {} |",
            g.clients,
            g.calls,
            g.throughput(),
            ms(g.latency.p50),
            ms(g.latency.p99),
            ms(g.latency.max)
        );
    }
    md.push_str("\n![CreateCertificate latency by concurrent clients](ca.png)\n");
    md.push_str(
        "\n## Peer\n\nThe CA's peer is istiod's CA, which needs a Kubernetes cluster; it is not \
         run by `mesh-bench ca`, so there is no side-by-side column yet.\n",
    );
    md
}

/// Plots p50/p99/max latency against concurrent clients (log x axis) into
/// a PNG at `path`. `labelled` is false when no font could be registered;
/// the plot is then drawn without text.
pub fn plot(report: &Report, path: &Path, labelled: bool) -> anyhow::Result<()> {
    let points = |f: fn(&Percentiles) -> Duration| -> Vec<(f64, f64)> {
        report
            .grpc
            .iter()
            .map(|g| (g.clients as f64, f(&g.latency).as_secs_f64() * 1000.0))
            .collect()
    };
    let series = [
        ("p50", points(|p| p.p50), BLUE),
        ("p99", points(|p| p.p99), RED),
        ("max", points(|p| p.max), BLACK),
    ];
    let y_max = series
        .iter()
        .flat_map(|(_, pts, _)| pts.iter().map(|p| p.1))
        .fold(0.0f64, f64::max)
        .max(0.1)
        * 1.15;
    let x_max = report
        .grpc
        .iter()
        .map(|g| g.clients as f64)
        .fold(1.0f64, f64::max)
        * 1.5;

    let root = BitMapBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut builder = ChartBuilder::on(&root);
    builder
        .margin(16)
        .x_label_area_size(if labelled { 40 } else { 8 })
        .y_label_area_size(if labelled { 64 } else { 8 });
    if labelled {
        builder.caption(
            "CA CreateCertificate latency (gRPC+TLS, loopback)",
            ("sans-serif", 20),
        );
    }
    let mut chart = builder.build_cartesian_2d((0.8f64..x_max).log_scale(), 0.0f64..y_max)?;
    let mut mesh = chart.configure_mesh();
    if labelled {
        mesh.x_desc("concurrent clients")
            .y_desc("latency (ms)")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.0}"))
            .label_style(("sans-serif", 14));
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw()?;
    for (name, pts, color) in series {
        let drawn = chart.draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))?;
        if labelled {
            drawn.label(name).legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
        }
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
    }
    if labelled {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()?;
    }
    root.present()?;
    Ok(())
}
