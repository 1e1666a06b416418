//! `mesh-bench`: the mesh's benchmarks, one subcommand per area. Each prints
//! its numbers and writes `docs/benchmarks/<area>.md` and `<area>.png`.
//! Run in release: `cargo run --release -p e2e --bin mesh-bench -- ca`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use e2e::bench;

/// The allocator mesh-control runs with, so the control-plane bench (which
/// serves ADS in this process) measures the same memory behaviour.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "mesh-bench", version, about = "Benchmarks of the mesh")]
struct Args {
    /// Directory the reports are written to.
    #[arg(long, global = true, default_value_os_t = default_out_dir())]
    out_dir: PathBuf,
    #[command(subcommand)]
    area: Area,
}

#[derive(Debug, Subcommand)]
enum Area {
    /// Certificate authority: signing rate and CreateCertificate latency.
    Ca {
        /// Seconds the one-core signing loop runs.
        #[arg(long, default_value_t = 3.0)]
        sign_secs: f64,
        /// Concurrent gRPC clients to measure, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,10,100")]
        clients: Vec<usize>,
        /// Calls per concurrency level, split between its clients.
        #[arg(long, default_value_t = 2000)]
        calls: usize,
    },
    /// Control plane: initial push, convergence after a change, memory.
    Control {
        /// Services in the generated mesh (M), comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
        services: Vec<usize>,
        /// Simulated proxies (N), comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "100,1000,5000")]
        clients: Vec<usize>,
        /// Fast run: N = 100,1000 and M = 1000 (overrides both).
        #[arg(long)]
        quick: bool,
        /// Namespaces services and proxies are spread over.
        #[arg(long, default_value_t = 10)]
        namespaces: usize,
        /// ADS streams sharing one HTTP/2 connection.
        #[arg(long, default_value_t = 100)]
        per_connection: usize,
        /// Skip a fleet predicted to need longer than this (seconds).
        #[arg(long, default_value_t = 150.0)]
        budget_secs: f64,
        /// Longest wait for any one phase (seconds).
        #[arg(long, default_value_t = 120.0)]
        timeout_secs: f64,
        /// Do not run the stock Envoy peer.
        #[arg(long)]
        no_envoy: bool,
        /// Only measure the memory of the real mesh-control binary serving
        /// each M x N (writes control-process.md).
        #[arg(long)]
        process_rss: bool,
    },
    /// Data plane: mesh-proxy against a stock Envoy on the same one-hop
    /// config: added latency, maximum rate, CPU per request, memory.
    Proxy {
        /// Seconds of each measured window.
        #[arg(long, default_value_t = 5.0)]
        duration_secs: f64,
        /// Requests per second of the fixed-rate (latency) phase.
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        /// Windows per target, protocol and phase (targets alternate).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Short smoke run: 1 s windows, 1 round, 0.3 s warm-up.
        #[arg(long)]
        quick: bool,
        /// HTTP/1.1 connections of the throughput phase.
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// HTTP/2 connections of the throughput phase.
        #[arg(long, default_value_t = 2)]
        h2_connections: usize,
        /// HTTP/2 streams in flight per connection in the throughput phase.
        #[arg(long, default_value_t = 64)]
        h2_streams: usize,
        /// Worker threads of the load generator.
        #[arg(long, default_value_t = 1)]
        load_threads: usize,
        /// Do not run the stock Envoy peer.
        #[arg(long)]
        no_envoy: bool,
        /// Do not pin the proxies and the bench to separate CPUs.
        #[arg(long)]
        no_pin: bool,
        /// Skip the telemetry phase (a second mesh-proxy and Envoy tracing
        /// every request over OTLP and scraped for metrics every second,
        /// in the fixed-rate windows).
        #[arg(long)]
        no_telemetry: bool,
    },
    /// Zero trust: added latency and CPU per request with mTLS on both
    /// hops (a pair of mesh-proxy sidecars against a pair of Envoy
    /// sidecars), full handshakes per second, and the cost of a 20-rule
    /// AuthorizationPolicy. Needs root (network namespaces, iptables).
    Security {
        /// Seconds of each measured window.
        #[arg(long, default_value_t = 5.0)]
        duration_secs: f64,
        /// Requests per second of the latency phase.
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        /// Windows per path and phase (paths alternate).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Short smoke run: 1 s windows, 1 round, 0.3 s warm-up.
        #[arg(long)]
        quick: bool,
        /// Keep-alive connections of the application in the latency phase.
        #[arg(long, default_value_t = 16)]
        connections: usize,
        /// New connections in flight in the handshake phase.
        #[arg(long, default_value_t = 16)]
        handshake_connections: usize,
        /// Worker threads of each load generator.
        #[arg(long, default_value_t = 1)]
        load_threads: usize,
        /// Do not run the stock Envoy peer.
        #[arg(long)]
        no_envoy: bool,
        /// Do not pin the sidecars and the bench to separate CPUs.
        #[arg(long)]
        no_pin: bool,
        /// Nice value of the bench and the sidecars (0 leaves them alone).
        #[arg(long, default_value_t = -10, allow_negative_numbers = true)]
        nice: i32,
    },
    /// Reliability: 3 endpoints (mesh-echo processes) behind a gateway,
    /// one killed (SIGKILL) and restarted under a fixed rate; client-visible
    /// errors, p99 latency during the event, ejection and return of the
    /// endpoint, mesh-proxy then stock Envoy.
    /// Needs the release mesh-control, mesh-proxy and mesh-echo binaries.
    Chaos {
        /// Seconds of each data plane's run.
        #[arg(long, default_value_t = 30.0)]
        duration_secs: f64,
        /// Requests per second.
        #[arg(long, default_value_t = 500.0)]
        rate: f64,
        /// When the endpoint is killed, seconds into the run.
        #[arg(long, default_value_t = 10.0)]
        kill_at: f64,
        /// When it is restarted, seconds into the run.
        #[arg(long, default_value_t = 15.0)]
        restart_at: f64,
        /// Length of the event window from the kill, seconds.
        #[arg(long, default_value_t = 5.0)]
        event_secs: f64,
        /// `baseEjectionTime` of the DestinationRule's outlier detection,
        /// seconds.
        #[arg(long, default_value_t = 10.0)]
        base_ejection_secs: f64,
        /// `consecutive5xxErrors` of the outlier detection.
        #[arg(long, default_value_t = 5)]
        consecutive_5xx: u32,
        /// Short dev run: 10 s, kill at 2 s, restart at 4 s, 2 s event
        /// window, 3 s base ejection (overrides those flags).
        #[arg(long)]
        quick: bool,
        /// HTTP/1.1 connections of each one-second segment of the load.
        #[arg(long, default_value_t = 8)]
        connections: usize,
        /// Worker threads of the load generator.
        #[arg(long, default_value_t = 1)]
        load_threads: usize,
        /// Do not run mesh-proxy.
        #[arg(long)]
        no_ours: bool,
        /// Do not run the stock Envoy peer.
        #[arg(long)]
        no_envoy: bool,
    },
    /// Internal: the simulated proxies of `control`, run as its child.
    #[command(hide = true)]
    ControlClients {
        #[arg(long)]
        addr: std::net::SocketAddr,
        #[arg(long)]
        services: usize,
        #[arg(long)]
        namespaces: usize,
        #[arg(long)]
        clients: usize,
        #[arg(long)]
        per_connection: usize,
    },
}

/// Writes `<area>.md` and `<area>.png` (drawn by `plot`, labelled when a
/// font was found) into `out_dir`.
fn write_report(
    out_dir: &Path,
    area: &str,
    markdown: &str,
    plot: impl FnOnce(&Path, bool) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let md = out_dir.join(format!("{area}.md"));
    std::fs::write(&md, markdown).with_context(|| format!("writing {}", md.display()))?;
    let png = out_dir.join(format!("{area}.png"));
    let labelled = bench::register_plot_font();
    if !labelled {
        eprintln!("warning: no TrueType font found (set MESH_BENCH_FONT); plot has no labels");
    }
    plot(&png, labelled).with_context(|| format!("plotting {}", png.display()))?;
    println!("wrote {} and {}", md.display(), png.display());
    Ok(())
}

/// The index one level up from `out_dir` (`docs/benchmarks.md` for the
/// default `--out-dir`) carries each data-plane run's targets table:
/// `update` rewrites `area`'s section there, if it has one.
fn update_index(
    out_dir: &Path,
    area: &str,
    update: impl FnOnce(&Path) -> std::io::Result<bool>,
) -> anyhow::Result<()> {
    if let Some(index) = out_dir.parent().map(|d| d.join("benchmarks.md"))
        && update(&index).with_context(|| format!("updating {}", index.display()))?
    {
        println!("updated the {area} section of {}", index.display());
    }
    Ok(())
}

/// Window length, warm-up and rounds: as given, or a short smoke run
/// (`--quick`: 1 s windows after 0.3 s of warm-up, one round).
fn windows(
    quick: bool,
    duration_secs: f64,
    rounds: usize,
) -> anyhow::Result<(Duration, Duration, usize)> {
    let (duration_secs, warmup_secs, rounds) = if quick {
        (1.0, 0.3, 1)
    } else {
        (duration_secs, 1.0, rounds)
    };
    let duration = Duration::try_from_secs_f64(duration_secs)
        .context("--duration-secs must be a positive number of seconds")?;
    Ok((duration, Duration::from_secs_f64(warmup_secs), rounds))
}

/// The workspace this binary was built from.
fn workspace() -> PathBuf {
    let e2e = Path::new(env!("CARGO_MANIFEST_DIR"));
    e2e.parent().unwrap_or(e2e).to_path_buf()
}

/// `docs/benchmarks` of the workspace this binary was built from.
fn default_out_dir() -> PathBuf {
    workspace().join("docs").join("benchmarks")
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Area::ControlClients {
        addr,
        services,
        namespaces,
        clients,
        per_connection,
    } = args.area
    {
        // Writes only to stdout, which the parent reads.
        return bench::control::clients::run(bench::control::clients::ClientParams {
            addr,
            mesh: bench::control::mesh::MeshShape {
                services,
                namespaces,
            },
            clients,
            per_connection,
        });
    }
    if cfg!(debug_assertions) {
        eprintln!("warning: debug build; numbers are not comparable (use --release)");
    }
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("creating {}", args.out_dir.display()))?;
    match args.area {
        Area::Ca {
            sign_secs,
            clients,
            calls,
        } => {
            let sign_duration = Duration::try_from_secs_f64(sign_secs)
                .context("--sign-secs must be a positive number of seconds")?;
            let report = bench::ca::run(bench::ca::Params {
                sign_duration,
                clients,
                calls,
                ..bench::ca::Params::default()
            })?;
            write_report(
                &args.out_dir,
                "ca",
                &bench::ca::markdown(&report),
                |png, labelled| bench::ca::plot(&report, png, labelled),
            )?;
        }
        Area::Control {
            services,
            clients,
            quick,
            namespaces,
            per_connection,
            budget_secs,
            timeout_secs,
            no_envoy,
            process_rss,
        } => {
            if process_rss {
                let mut runs = Vec::new();
                for &m in &services {
                    for &n in &clients {
                        let shape = bench::control::mesh::MeshShape {
                            services: m,
                            namespaces: namespaces.max(1),
                        };
                        let timeout = Duration::try_from_secs_f64(timeout_secs)
                            .context("--timeout-secs must be a positive number of seconds")?;
                        let run =
                            bench::control::process::measure(shape, n, per_connection, timeout)?;
                        println!(
                            "M={m} N={n}: mesh-control process: {}/{n} ACKed in {:.2} s; RSS idle {} MB, serving {} MB, peak {} MB",
                            run.acked,
                            run.init.as_secs_f64(),
                            run.idle_kb / 1024,
                            run.served_kb / 1024,
                            run.peak_kb / 1024
                        );
                        runs.push(run);
                    }
                }
                let md = args.out_dir.join("control-process.md");
                std::fs::write(&md, bench::control::process::markdown(&runs))
                    .with_context(|| format!("writing {}", md.display()))?;
                println!("wrote {}", md.display());
                return Ok(());
            }
            let (services, clients) = if quick {
                (vec![1000], vec![100, 1000])
            } else {
                (services, clients)
            };
            let secs = |s: f64, flag: &str| {
                Duration::try_from_secs_f64(s)
                    .with_context(|| format!("{flag} must be a positive number of seconds"))
            };
            let report = bench::control::run(bench::control::Params {
                services,
                clients,
                namespaces: namespaces.max(1),
                per_connection,
                budget: secs(budget_secs, "--budget-secs")?,
                timeout: secs(timeout_secs, "--timeout-secs")?,
                settle: Duration::from_secs(1),
                envoy: !no_envoy,
                workspace: workspace(),
            })?;
            write_report(
                &args.out_dir,
                "control",
                &bench::control::markdown(&report),
                |png, labelled| bench::control::plot(&report, png, labelled),
            )?;
        }
        Area::Proxy {
            duration_secs,
            rate,
            rounds,
            quick,
            connections,
            h2_connections,
            h2_streams,
            load_threads,
            no_envoy,
            no_pin,
            no_telemetry,
        } => {
            let (duration, warmup, rounds) = windows(quick, duration_secs, rounds)?;
            let report = bench::proxy::run(bench::proxy::Params {
                duration,
                warmup,
                rounds,
                rate,
                open_connections: 16,
                h1_connections: connections,
                h2_connections,
                h2_streams,
                load_threads,
                envoy: !no_envoy,
                pin: !no_pin,
                telemetry: !no_telemetry,
                workspace: workspace(),
            })?;
            println!("\n{}", bench::proxy::summary(&report));
            if let Some(t) = bench::proxy::telemetry_summary(&report) {
                println!("{t}");
            }
            write_report(
                &args.out_dir,
                "proxy",
                &bench::proxy::markdown(&report),
                |png, labelled| bench::proxy::plot(&report, png, labelled),
            )?;
            let section = bench::proxy::section(&report);
            update_index(&args.out_dir, "proxy", |index| {
                bench::proxy::update_index(index, &section)
            })?;
        }
        Area::Security {
            duration_secs,
            rate,
            rounds,
            quick,
            connections,
            handshake_connections,
            load_threads,
            no_envoy,
            no_pin,
            nice,
        } => {
            let (duration, warmup, rounds) = windows(quick, duration_secs, rounds)?;
            let report = bench::security::run(bench::security::Params {
                duration,
                warmup,
                rounds,
                rate,
                connections,
                handshake_connections,
                load_threads,
                envoy: !no_envoy,
                pin: !no_pin,
                nice,
                workspace: workspace(),
            })?;
            println!("\n{}", bench::security::summary(&report));
            write_report(
                &args.out_dir,
                "security",
                &bench::security::markdown(&report),
                |png, labelled| bench::security::plot(&report, png, labelled),
            )?;
            let section = bench::security::section(&report);
            update_index(&args.out_dir, "security", |index| {
                bench::security::update_index(index, &section)
            })?;
        }
        Area::Chaos {
            duration_secs,
            rate,
            kill_at,
            restart_at,
            event_secs,
            base_ejection_secs,
            consecutive_5xx,
            quick,
            connections,
            load_threads,
            no_ours,
            no_envoy,
        } => {
            let (duration_secs, kill_at, restart_at, event_secs, base_ejection_secs) = if quick {
                (10.0, 2.0, 4.0, 2.0, 3.0)
            } else {
                (
                    duration_secs,
                    kill_at,
                    restart_at,
                    event_secs,
                    base_ejection_secs,
                )
            };
            let secs = |s: f64, flag: &str| {
                Duration::try_from_secs_f64(s)
                    .with_context(|| format!("{flag} must be a non-negative number of seconds"))
            };
            let command = std::iter::once("target/release/mesh-bench".to_string())
                .chain(std::env::args().skip(1))
                .collect::<Vec<_>>()
                .join(" ");
            let report = bench::chaos::run(bench::chaos::Params {
                duration: secs(duration_secs, "--duration-secs")?,
                rate,
                kill_at: secs(kill_at, "--kill-at")?,
                restart_at: secs(restart_at, "--restart-at")?,
                event: secs(event_secs, "--event-secs")?,
                warmup: Duration::from_secs(if quick { 1 } else { 2 }),
                connections,
                outlier: bench::chaos::mesh::Outlier {
                    consecutive_5xx,
                    interval: Duration::from_secs(1),
                    base_ejection: secs(base_ejection_secs, "--base-ejection-secs")?,
                    max_ejection_percent: 100,
                },
                load_threads,
                ours: !no_ours,
                envoy: !no_envoy,
                workspace: workspace(),
                command: format!(
                    "cargo build --release -p mesh-proxy -p mesh-control -p e2e --bins && {command}"
                ),
            })?;
            println!("\n{}", bench::chaos::summary(&report));
            write_report(
                &args.out_dir,
                "chaos",
                &bench::chaos::markdown(&report),
                |png, labelled| bench::chaos::plot(&report, png, labelled),
            )?;
            let section = bench::chaos::section(&report);
            update_index(&args.out_dir, "chaos", |index| {
                bench::chaos::update_index(index, &section)
            })?;
        }
        Area::ControlClients { .. } => {}
    }
    Ok(())
}
