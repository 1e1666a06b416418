//! The `mesh-proxy` command line: `run` (the default when no subcommand
//! is given), `iptables` and `version`.
//!
//! `run` wires the pieces together: the bootstrap file (if any) gives the
//! static resources, node, admin address and control plane; flags and the
//! environment override it; the xDS client (if there is a control plane)
//! publishes compiled runtimes; the admin, health and Prometheus servers
//! read them; the data path serves them. SIGTERM, SIGINT or
//! `/quitquitquit` drain (graceful until `--drain-duration`, then forced)
//! and exit 0.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, reload};

use crate::admin::{self, AdminState, LogControl, ShutdownRequest};
use crate::bootstrap::StaticConfig;
use crate::drain;
use crate::runtime::Runtime;
use crate::xds::{self, NodeConfig, Protocol, Role, XdsConfig};

/// Command-line arguments of `mesh-proxy`.
#[derive(Debug, Parser)]
#[command(
    name = "mesh-proxy",
    version,
    about = "Sidecar and gateway proxy of the mesh, configured over xDS or from an Envoy bootstrap file"
)]
pub struct Cli {
    /// What to do (`run` when omitted).
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy (the default).
    Run(Box<RunArgs>),
    /// Install (or with --cleanup remove) Istio's traffic-capture rules in
    /// the current network namespace.
    Iptables(crate::iptables::Args),
    /// Run only the workload-certificate agent: fetch and rotate the SVID
    /// and serve it over SDS on a Unix socket, for a stock Envoy sidecar
    /// (Istio's pilot-agent role).
    Agent(crate::agent::AgentArgs),
    /// Wait until the proxy is ready (`/healthz/ready` answers 200): the
    /// post-start hook that holds the app until the proxy starts.
    Wait(crate::wait::WaitArgs),
    /// Print the version.
    Version,
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Flags of `mesh-proxy run`. Environment variables are Istio's where
/// Istio has one, so an injected pod spec works unchanged.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Control plane ADS address (`host:port` or `http://host:port`);
    /// overrides the bootstrap's `ads_config`.
    #[arg(long, env = "MESH_XDS_ADDRESS")]
    pub xds_address: Option<String>,
    /// Use incremental (delta) xDS instead of state of the world.
    #[arg(long, env = "ISTIO_DELTA_XDS")]
    pub xds_delta: bool,
    /// Envoy bootstrap file (YAML, or JSON if it ends in .json): node,
    /// admin address, static resources, dynamic_resources.
    #[arg(long, env = "MESH_BOOTSTRAP")]
    pub bootstrap: Option<PathBuf>,
    /// Sidecar (workload proxy) or router (gateway).
    #[arg(long, value_enum, env = "MESH_PROXY_ROLE")]
    pub role: Option<Role>,
    /// Pod name, in the node id.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// Pod namespace.
    #[arg(long, env = "POD_NAMESPACE")]
    pub pod_namespace: Option<String>,
    /// Pod IP, in the node id and INSTANCE_IPS.
    #[arg(long, env = "INSTANCE_IP")]
    pub instance_ip: Option<IpAddr>,
    /// Service account.
    #[arg(long, env = "SERVICE_ACCOUNT")]
    pub service_account: Option<String>,
    /// Cluster id (Kubernetes by default).
    #[arg(long, env = "CLUSTER_ID")]
    pub cluster_id: Option<String>,
    /// Cluster DNS domain (cluster.local by default).
    #[arg(long)]
    pub dns_domain: Option<String>,
    /// Workload label sent in the node metadata (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Admin API address [default: the bootstrap's, else 127.0.0.1:15000].
    #[arg(long)]
    pub admin_address: Option<SocketAddr>,
    /// Health server address (/healthz/ready).
    #[arg(long, default_value = "0.0.0.0:15021")]
    pub health_address: SocketAddr,
    /// Prometheus server address (/stats/prometheus).
    #[arg(long, default_value = "0.0.0.0:15090")]
    pub stats_address: SocketAddr,
    /// Status server address (Istio's 15020): the app's probes rewritten
    /// by the injector (`/app-health/<container>/<kind>`, from
    /// `ISTIO_KUBE_APP_PROBERS`) and `/healthz/ready`. Off unless given.
    #[arg(long)]
    pub status_address: Option<SocketAddr>,
    /// How long a drain lets in-flight requests finish before closing.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub drain_duration: Duration,
    /// Worker threads.
    #[arg(long, default_value_t = 2)]
    pub concurrency: usize,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Log level or tracing filter directives (changeable at /logging).
    #[arg(long, env = "MESH_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Access log.
    #[command(flatten)]
    pub telemetry: crate::telemetry::TelemetryArgs,
    /// Request header limits.
    #[command(flatten)]
    pub http_limits: crate::proxy::http::Limits,
    /// The workload certificate (SDS `default` and `ROOTCA`).
    #[command(flatten)]
    pub identity: crate::tls::identity::IdentityArgs,
}

/// Parses the command line, taking `run` as the subcommand when none is
/// given (`mesh-proxy --bootstrap f.yaml` is `mesh-proxy run --bootstrap f.yaml`).
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Cli {
    let mut args: Vec<OsString> = args.into_iter().collect();
    let first = args.get(1).and_then(|a| a.to_str());
    let explicit = matches!(
        first,
        Some(
            "run"
                | "iptables"
                | "agent"
                | "wait"
                | "version"
                | "help"
                | "-h"
                | "--help"
                | "-V"
                | "--version"
        )
    );
    if !explicit {
        args.insert(1.min(args.len()), "run".into());
    }
    Cli::parse_from(args)
}

/// Runs the parsed command; the process exit code.
pub fn main(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Version => {
            println!("mesh-proxy {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Iptables(args) => crate::iptables::run(&args).map_err(anyhow::Error::from),
        Command::Wait(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")
            .and_then(|rt| rt.block_on(crate::wait::run(&args))),
        Command::Agent(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")
            .and_then(|rt| rt.block_on(crate::agent::run(args))),
        Command::Run(args) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.concurrency.max(1))
            .enable_all()
            .build()
            .context("cannot start the async runtime")
            .and_then(|rt| rt.block_on(run(*args))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mesh-proxy: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `5s`, `250ms`, `1m`, `1h`, or a number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration; write e.g. 5s, 500ms or 1m"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?}; use ms, s, m or h"
            ));
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

/// Installs the global subscriber with a reloadable filter; the control
/// `/logging` uses.
pub(crate) fn init_logging(format: LogFormat, level: &str) -> anyhow::Result<LogControl> {
    let filter = EnvFilter::try_new(level)
        .with_context(|| format!("--log-level {level:?} is not a valid filter"))?;
    let (filter, handle) = reload::Layer::new(filter);
    let json = format == LogFormat::Json;
    let ansi = std::io::stderr().is_terminal();
    let text_layer = (!json).then(|| {
        tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
    });
    let json_layer = json.then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
    });
    // A second init (an embedding test) keeps the first subscriber.
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(text_layer)
        .with(json_layer)
        .try_init();
    Ok(LogControl::new(level, move |directives| {
        let filter = EnvFilter::try_new(directives).map_err(|e| e.to_string())?;
        handle.reload(filter).map_err(|e| e.to_string())
    }))
}

/// The node: the bootstrap's, with flags and environment laid over it.
fn node_config(args: &RunArgs) -> anyhow::Result<NodeConfig> {
    let mut node = NodeConfig {
        role: args.role,
        pod_name: args.pod_name.clone(),
        pod_namespace: args.pod_namespace.clone(),
        instance_ip: args.instance_ip,
        service_account: args.service_account.clone(),
        cluster_id: args.cluster_id.clone(),
        dns_domain: args.dns_domain.clone(),
        ..Default::default()
    };
    node.add_labels(args.labels.iter().map(String::as_str))?;
    node.apply_istio_env(std::env::vars())?;
    Ok(node)
}

/// `mesh-proxy run`.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    // First, so a SIGTERM at any point after start drains instead of killing.
    let mut signals = Signals::new()?;
    let logging = init_logging(args.log_format, &args.log_level)?;
    let started = (Instant::now(), SystemTime::now());
    let statics = match &args.bootstrap {
        Some(path) => StaticConfig::load(path)?,
        None => StaticConfig::default(),
    };
    let node = node_config(&args)?.build(statics.node.as_ref());
    let xds = xds_config(&args, &statics, node.clone())?;
    if xds.is_none() && args.bootstrap.is_none() {
        anyhow::bail!(
            "nothing to serve: give --xds-address (a control plane) or --bootstrap (an Envoy bootstrap file)"
        );
    }
    let admin_address = args
        .admin_address
        .or(statics.admin_address)
        .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 15000)));

    let mut bootstrap = statics.bootstrap.clone();
    bootstrap.node = Some(node.clone());
    let (publisher, config) = xds::channels(statics.resources.clone(), xds.is_none());
    let (lifecycle, mut requests) = admin::lifecycle();
    let registry = Arc::new(RwLock::new(Registry::default()));
    let telemetry = crate::telemetry::Telemetry::start(&args.telemetry, &node, &registry)?;
    let outliers = Arc::new(crate::proxy::outlier::Outliers::default());
    registry
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .register_collector(Box::new(outliers.clone()));
    args.http_limits.apply();
    let identity = crate::tls::identity::start(
        &args.identity,
        args.pod_namespace.as_deref(),
        args.service_account.as_deref(),
    )?;
    let state = AdminState {
        config: config.clone(),
        bootstrap: Arc::new(bootstrap),
        registry,
        logging,
        lifecycle: lifecycle.clone(),
        started,
        identity: identity.clone(),
        outliers: outliers.clone(),
    };

    // Servers stop when `stop` flips; the data path stops through the drain.
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mut status = Vec::new();
    if let Some(addr) = args.status_address {
        let probers = match std::env::var(admin::probes::PROBERS_ENV) {
            Ok(json) => admin::probes::parse(&json).unwrap_or_else(|e| {
                tracing::error!("{e}; the app's probes answer 404");
                Default::default()
            }),
            Err(_) => Default::default(),
        };
        tracing::info!(
            probes = probers.len(),
            "app probes served on the status port"
        );
        let app_metrics = match std::env::var(admin::merged_metrics::ANNOTATIONS_ENV) {
            Ok(json) => admin::merged_metrics::parse(&json).unwrap_or_else(|e| {
                tracing::error!("{e}; /stats/prometheus serves the proxy's metrics only");
                None
            }),
            Err(_) => None,
        };
        if let Some(app) = &app_metrics {
            tracing::info!(
                port = app.port,
                path = %app.path,
                "the app's metrics are merged into the status port's /stats/prometheus"
            );
        }
        status.push((
            "status",
            addr,
            admin::probes::status_router(state.clone(), probers, app_metrics),
        ));
    }
    // Every port is bound before any answers, so a client that saw the
    // admin port answer finds the status port (and the others) bound too.
    let mut bound = Vec::new();
    for (name, addr, router) in [
        ("admin", admin_address, admin::router(state.clone())),
        (
            "health",
            args.health_address,
            admin::health_router(state.clone()),
        ),
        (
            "stats",
            args.stats_address,
            admin::stats_router(state.clone()),
        ),
    ]
    .into_iter()
    .chain(status)
    {
        let listener = admin::bind(name, addr).await?;
        tracing::info!(%addr, "{name} server listening");
        bound.push((listener, router));
    }
    let servers: Vec<_> = bound
        .into_iter()
        .map(|(listener, router)| tokio::spawn(admin::serve(listener, router, stopped())))
        .collect();
    let xds_task = xds.map(|config| {
        tracing::info!(address = %config.address, node = %config.node.id, protocol = ?config.protocol, "connecting to the control plane");
        tokio::spawn(xds::run(config, publisher, stopped()))
    });

    crate::telemetry::otel_log::start(&node, config.runtime.clone());
    let (trigger, drain_watch) = drain::channel();
    let mut data_path = tokio::spawn(serve_data_path(
        config.runtime.clone(),
        config.status.clone(),
        drain_watch,
        crate::proxy::Options {
            observer: telemetry,
            identity: identity.map(|started| started.certs),
            outliers,
            peer_metadata: crate::telemetry::peer::LocalMetadata::from_node(&node).map(Arc::new),
        },
    ));
    let mut trigger = Some(trigger);
    let mut draining: Option<tokio::task::JoinHandle<bool>> = None;
    let deadline = args.drain_duration;
    let result = loop {
        let request = tokio::select! {
            () = signals.next() => ShutdownRequest::Quit,
            r = requests.recv() => r.unwrap_or(ShutdownRequest::Quit),
            r = &mut data_path => {
                break match r {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(e),
                    Err(e) => Err(anyhow::anyhow!("data path task failed: {e}")),
                };
            }
        };
        lifecycle.set_draining();
        if let Some(t) = trigger.take() {
            tracing::info!(?deadline, "draining");
            draining = Some(tokio::spawn(t.drain(deadline)));
        }
        if request == ShutdownRequest::Quit {
            let in_time = match draining.take() {
                Some(d) => tokio::select! {
                    r = d => r.unwrap_or(false),
                    () = signals.next() => {
                        tracing::warn!("second signal: exiting without waiting for the drain");
                        false
                    }
                },
                None => true,
            };
            if !in_time {
                tracing::warn!("drain deadline passed; closing what is left");
            }
            break Ok(());
        }
    };
    flush_spans(SPAN_FLUSH_TIMEOUT).await;
    crate::telemetry::otel_log::flush(SPAN_FLUSH_TIMEOUT).await;
    let _ = stop_tx.send(true);
    if let Some(task) = xds_task {
        let _ = task.await;
    }
    for server in servers {
        let _ = server.await;
    }
    tracing::info!("exiting");
    result
}

/// How long exiting waits for the spans still batched to be exported.
const SPAN_FLUSH_TIMEOUT: Duration = Duration::from_secs(3);

/// Exports the spans still queued in the OTLP batch processors (they
/// would be lost at exit: the processors are never shut down), waiting
/// at most `timeout`. The export blocks, so it runs on a thread of its
/// own that is left behind if the collector does not answer in time; it
/// never holds up the exit.
async fn flush_spans(timeout: Duration) {
    let (done, flushed) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("span-flush".into())
        .spawn(move || {
            crate::telemetry::trace::flush();
            let _ = done.send(());
        });
    if spawned.is_err() {
        return;
    }
    if tokio::time::timeout(timeout, flushed).await.is_err() {
        tracing::warn!(?timeout, "spans not exported in time; exiting without them");
    }
}

/// The control plane to use, if any: flags first, then the bootstrap's
/// `dynamic_resources`.
fn xds_config(
    args: &RunArgs,
    statics: &StaticConfig,
    node: envoy_types::pb::envoy::config::core::v3::Node,
) -> anyhow::Result<Option<XdsConfig>> {
    let address = match (&args.xds_address, &statics.ads) {
        (Some(a), _) => a.clone(),
        (None, Some(ads)) => ads.address.clone(),
        (None, None) => return Ok(None),
    };
    let mut config = XdsConfig::new(address, node);
    if let Some(ads) = &statics.ads {
        config.protocol = ads.protocol;
        config.cds = ads.cds;
        config.lds = ads.lds;
    }
    if args.xds_delta {
        config.protocol = Protocol::Delta;
    }
    if config.uri().starts_with("https://") {
        let path = &args.identity.ca_root_cert;
        let pem = std::fs::read_to_string(path).with_context(|| {
            format!(
                "xDS over TLS ({}) verifies the control plane with --ca-root-cert {}",
                config.address,
                path.display()
            )
        })?;
        config.tls_roots_pem = Some(pem);
    }
    config.validate()?;
    Ok(Some(config))
}

/// The data path: serves the listeners of the current runtime until the
/// drain signal, then finishes in-flight work and returns (dropping the
/// drain watch is what completes the drain).
///
/// The listeners. As Envoy does, they open once the first complete
/// configuration is in (a static bootstrap is complete at once), so no
/// connection is accepted against half a config.
async fn serve_data_path(
    runtime: watch::Receiver<Arc<Runtime>>,
    mut status: watch::Receiver<Arc<xds::XdsStatus>>,
    mut drain: drain::Watch,
    options: crate::proxy::Options,
) -> anyhow::Result<()> {
    tokio::select! {
        ready = status.wait_for(|s| s.ready) => {
            if ready.is_err() {
                // The xDS side is gone before any config: nothing to serve.
                return Ok(());
            }
        }
        () = drain.signaled() => return Ok(()),
    }
    crate::proxy::run_with(runtime, drain, options)
        .await
        .map_err(anyhow::Error::from)
}

/// SIGTERM and SIGINT, registered once so none is missed between waits.
pub(crate) struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

// === impl Signals ===

impl Signals {
    pub(crate) fn new() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
        })
    }

    /// Resolves on the next SIGTERM or SIGINT.
    pub(crate) async fn next(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn run_is_the_default_subcommand() {
        let cli = parse(args(&[
            "mesh-proxy",
            "--bootstrap",
            "b.yaml",
            "--role",
            "router",
        ]));
        let Command::Run(run) = cli.command else {
            panic!("not run");
        };
        assert_eq!(run.bootstrap, Some(PathBuf::from("b.yaml")));
        assert_eq!(run.role, Some(Role::Router));
        assert!(matches!(
            parse(args(&["mesh-proxy", "version"])).command,
            Command::Version
        ));
        assert!(matches!(
            parse(args(&["mesh-proxy", "iptables", "--dry-run"])).command,
            Command::Iptables(_)
        ));
    }

    #[test]
    fn durations_read_like_envoy_flags() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5d").is_err());
    }
}
